/*
 * datadir - the DAMAGED marker and --rebuild (see datadir.h).
 *
 * Only directory operations and one small text file: the store itself is
 * opened through store.h, and the rebuilt replicas are marked through
 * replica.h, which owns that record.
 */
#include "datadir.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "kv.h"
#include "log.h"
#include "replica.h"
#include "store.h"

#define PATH_BYTES 4096

int datadir_path(const struct conf *conf, uint32_t id, char *buf, size_t len)
{
    int n = snprintf(buf, len, "%s/%u", conf->data_dir, id);
    return n > 0 && (size_t)n < len ? KV_OK : KV_EINVAL;
}

static bool exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Makes the rename of an entry of PATH's parent directory durable. */
static int sync_parent(const char *path)
{
    char parent[PATH_BYTES];
    snprintf(parent, sizeof(parent), "%s", path);
    char *slash = strrchr(parent, '/');
    if (slash == parent)
        slash[1] = '\0'; /* "/x": the root */
    else if (slash)
        *slash = '\0';
    else
        snprintf(parent, sizeof(parent), ".");
    int fd = open(parent, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* The current UTC time as YYYYmmddTHHMMSS (COMPACT) or ISO 8601. */
static void utc_now(char *buf, size_t len, bool compact)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(buf, len, compact ? "%Y%m%dT%H%M%S" : "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int datadir_check(const char *dir, char *err, size_t errlen)
{
    char tmp[PATH_BYTES], marker[PATH_BYTES];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.rebuild", dir) >= sizeof(tmp) ||
        (size_t)snprintf(marker, sizeof(marker), "%s/%s", dir,
                         DATADIR_DAMAGED) >= sizeof(marker)) {
        snprintf(err, errlen, "data directory path too long: %s", dir);
        return KV_EIO;
    }
    if (!exists(dir) && exists(tmp)) {
        /* --rebuild moved the old directory aside and stopped before it
         * put the new one in place: finish it. */
        if (rename(tmp, dir) != 0 || sync_parent(dir) != 0) {
            snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, dir,
                     strerror(errno));
            return KV_EIO;
        }
        log_msg(LOG_WARN, "finished an interrupted rebuild", "dir=%s", dir);
    }
    FILE *f = fopen(marker, "r");
    if (!f) {
        if (errno == ENOENT)
            return KV_OK;
        snprintf(err, errlen, "cannot read %s: %s", marker, strerror(errno));
        return KV_EIO;
    }
    char line[2048] = "";
    char when[64] = "an unknown time";
    bool said = false;
    /* "time: ...", then "reason: ..." (see datadir_mark_damaged) */
    for (int i = 0; i < 16 && !said && fgets(line, sizeof(line), f); i++) {
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "time: ", 6) == 0) {
            snprintf(when, sizeof(when), "%.40s", line + 6);
        } else if (strncmp(line, "reason: ", 8) == 0) {
            snprintf(err, errlen, "%s, written at %s, says: %s", marker, when,
                     line + 8);
            said = true;
        }
    }
    fclose(f);
    if (!said)
        snprintf(err, errlen, "%s exists", marker);
    return KV_ECORRUPT;
}

int datadir_mark_damaged(const char *dir, const char *reason, char *err,
                         size_t errlen)
{
    char path[PATH_BYTES], when[32];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, DATADIR_DAMAGED) >=
        sizeof(path)) {
        snprintf(err, errlen, "data directory path too long: %s", dir);
        return KV_EIO;
    }
    utc_now(when, sizeof(when), false);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
        return KV_EIO;
    }
    char text[4096];
    int n = snprintf(text, sizeof(text),
                     "time: %s\nreason: %s\n"
                     "The node refuses to start while this file exists. "
                     "Rebuild it from the other replicas with kvnode "
                     "--rebuild (docs/security.md).\n",
                     when, reason);
    size_t len = n < 0                      ? 0
                 : (size_t)n < sizeof(text) ? (size_t)n
                                            : sizeof(text) - 1;
    int rc = KV_OK;
    if (write(fd, text, len) != (ssize_t)len || fsync(fd) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        rc = KV_EIO;
    }
    close(fd);
    if (rc == KV_OK && sync_parent(path) != 0) {
        snprintf(err, errlen, "cannot sync %s: %s", dir, strerror(errno));
        rc = KV_EIO;
    }
    return rc;
}

/* Whether a process holds DIR's LevelDB lock (a node runs on it); *PID
 * gets its id. */
static bool locked(const char *dir, long *pid)
{
    char path[PATH_BYTES];
    snprintf(path, sizeof(path), "%s/LOCK", dir);
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return false; /* no lock file: no LevelDB was ever opened there */
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    bool held = fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
    *pid = held ? (long)fl.l_pid : 0;
    close(fd);
    return held;
}

/* Prepares TMP: an empty store whose replicas of node ID are marked
 * rebuilt. An earlier attempt's TMP is reused (marking is idempotent). */
static int prepare(const struct conf *conf, uint32_t id, const char *tmp,
                   char *err, size_t errlen)
{
    struct store *s = NULL;
    int rc = store_open(tmp, &s, err, errlen);
    if (rc != KV_OK)
        return rc;
    rc = replica_mark_rebuilt(s, conf, id, err, errlen);
    store_close(s);
    return rc;
}

int datadir_rebuild(const struct conf *conf, uint32_t id, const char *dir,
                    char *aside, size_t asidelen, char *err, size_t errlen)
{
    char tmp[PATH_BYTES], stamp[32];
    aside[0] = '\0';
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.rebuild", dir) >= sizeof(tmp)) {
        snprintf(err, errlen, "data directory path too long: %s", dir);
        return KV_EINVAL;
    }
    long pid = 0;
    if (locked(dir, &pid)) {
        snprintf(err, errlen,
                 "%s is in use by process %ld (a running node?): stop it "
                 "first",
                 dir, pid);
        return KV_EINVAL;
    }
    int rc = prepare(conf, id, tmp, err, errlen);
    if (rc != KV_OK)
        return rc;
    if (exists(dir)) {
        utc_now(stamp, sizeof(stamp), true);
        bool named = false;
        for (int i = 0; i < 100 && !named; i++) {
            int n =
                i ? snprintf(aside, asidelen, "%s.damaged-%s-%d", dir, stamp, i)
                  : snprintf(aside, asidelen, "%s.damaged-%s", dir, stamp);
            if (n < 0 || (size_t)n >= asidelen) {
                snprintf(err, errlen, "data directory path too long: %s", dir);
                aside[0] = '\0';
                return KV_EINVAL;
            }
            named = !exists(aside);
        }
        if (!named || rename(dir, aside) != 0) {
            snprintf(err, errlen, "cannot move %s aside to %s: %s", dir, aside,
                     named ? strerror(errno) : "every name is taken");
            aside[0] = '\0';
            return KV_EIO;
        }
    }
    if (rename(tmp, dir) != 0 || sync_parent(dir) != 0) {
        /* The next start finishes it (datadir_check). */
        snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, dir,
                 strerror(errno));
        return KV_EIO;
    }
    return KV_OK;
}
