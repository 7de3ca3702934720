/*
 * store - the LevelDB adapter (see store.h). The only file that includes
 * <leveldb/c.h>. Reads verify checksums, so damaged tables are reported as
 * KV_ECORRUPT instead of being served, and the first such report is kept
 * in the store (store_damage).
 */
#include "store.h"

#include <errno.h>
#include <leveldb/c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kv.h"
#include "log.h"

struct store {
    leveldb_t *db;
    leveldb_options_t *opts;
    leveldb_cache_t *cache;
    leveldb_filterpolicy_t *filter;
    leveldb_readoptions_t *ropts;
    leveldb_writeoptions_t *wsync;
    leveldb_writeoptions_t *wnosync;
    char damage[512]; /* the first corruption met ("": none) */
};

struct store_batch {
    leveldb_writebatch_t *wb;
};

struct store_iter {
    leveldb_iterator_t *it;
    leveldb_readoptions_t *ropts;
    const leveldb_snapshot_t *snap;
    struct store *s;
    int failed; /* the error that ended the iteration (0: none) */
};

/* Maps a LevelDB error string to a code, logs it, remembers the first
 * corruption in S (NULL: no store yet) and frees it. */
static int leveldb_error(struct store *s, char *msg, const char *what)
{
    int code = strstr(msg, "Corruption") ? KV_ECORRUPT : KV_EIO;
    log_msg(LOG_ERROR, "leveldb error", "op=%s error=\"%s\"", what, msg);
    if (code == KV_ECORRUPT && s && !s->damage[0])
        snprintf(s->damage, sizeof(s->damage), "%s", msg);
    leveldb_free(msg);
    return code;
}

int store_mkdirs(const char *dir)
{
    char path[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof(path)) {
        errno = n ? ENAMETOOLONG : ENOENT;
        return -1;
    }
    memcpy(path, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] == '/' || path[i] == '\0') {
            char c = path[i];
            path[i] = '\0';
            if (mkdir(path, 0755) != 0 && errno != EEXIST)
                return -1;
            path[i] = c;
        }
    }
    return 0;
}

int store_open(const char *dir, struct store **out, char *err, size_t errlen)
{
    struct store *s = calloc(1, sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    if (store_mkdirs(dir) != 0) {
        snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        free(s);
        return KV_EIO;
    }
    s->opts = leveldb_options_create();
    s->cache = leveldb_cache_create_lru(64u << 20);
    s->filter = leveldb_filterpolicy_create_bloom(10);
    leveldb_options_set_create_if_missing(s->opts, 1);
    leveldb_options_set_paranoid_checks(s->opts, 1);
    leveldb_options_set_cache(s->opts, s->cache);
    leveldb_options_set_filter_policy(s->opts, s->filter);
    leveldb_options_set_write_buffer_size(s->opts, 16u << 20);
    leveldb_options_set_max_open_files(s->opts, 512);
    s->ropts = leveldb_readoptions_create();
    leveldb_readoptions_set_verify_checksums(s->ropts, 1);
    s->wsync = leveldb_writeoptions_create();
    leveldb_writeoptions_set_sync(s->wsync, 1);
    s->wnosync = leveldb_writeoptions_create();
    leveldb_writeoptions_set_sync(s->wnosync, 0);

    char *lerr = NULL;
    s->db = leveldb_open(s->opts, dir, &lerr);
    if (lerr) {
        snprintf(err, errlen, "cannot open %s: %s", dir, lerr);
        int code = leveldb_error(NULL, lerr, "open");
        s->db = NULL;
        store_close(s);
        return code;
    }
    *out = s;
    return KV_OK;
}

const char *store_damage(const struct store *s)
{
    return s && s->damage[0] ? s->damage : NULL;
}

void store_close(struct store *s)
{
    if (!s)
        return;
    if (s->db)
        leveldb_close(s->db);
    leveldb_writeoptions_destroy(s->wnosync);
    leveldb_writeoptions_destroy(s->wsync);
    leveldb_readoptions_destroy(s->ropts);
    leveldb_options_destroy(s->opts);
    leveldb_filterpolicy_destroy(s->filter);
    leveldb_cache_destroy(s->cache);
    free(s);
}

int store_get(struct store *s, const void *key, size_t klen, void **val,
              size_t *vlen)
{
    char *lerr = NULL;
    size_t n = 0;
    char *v = leveldb_get(s->db, s->ropts, key, klen, &n, &lerr);
    if (lerr)
        return leveldb_error(s, lerr, "get");
    if (!v)
        return KV_ENOTFOUND;
    void *copy = NULL;
    if (n) {
        copy = malloc(n);
        if (!copy) {
            leveldb_free(v);
            return KV_ENOMEM;
        }
        memcpy(copy, v, n);
    }
    leveldb_free(v);
    *val = copy;
    *vlen = n;
    return KV_OK;
}

struct store_batch *store_batch_new(void)
{
    struct store_batch *b = malloc(sizeof(*b));
    if (!b)
        return NULL;
    b->wb = leveldb_writebatch_create();
    return b;
}

void store_batch_put(struct store_batch *b, const void *key, size_t klen,
                     const void *val, size_t vlen)
{
    leveldb_writebatch_put(b->wb, key, klen, val, vlen);
}

void store_batch_del(struct store_batch *b, const void *key, size_t klen)
{
    leveldb_writebatch_delete(b->wb, key, klen);
}

void store_batch_clear(struct store_batch *b)
{
    leveldb_writebatch_clear(b->wb);
}

void store_batch_free(struct store_batch *b)
{
    if (!b)
        return;
    leveldb_writebatch_destroy(b->wb);
    free(b);
}

int store_write(struct store *s, struct store_batch *b, bool sync)
{
    char *lerr = NULL;
    leveldb_write(s->db, sync ? s->wsync : s->wnosync, b->wb, &lerr);
    if (lerr)
        return leveldb_error(s, lerr, "write");
    return KV_OK;
}

struct store_iter *store_iter_new(struct store *s)
{
    struct store_iter *it = calloc(1, sizeof(*it));
    if (!it)
        return NULL;
    it->s = s;
    it->snap = leveldb_create_snapshot(s->db);
    it->ropts = leveldb_readoptions_create();
    leveldb_readoptions_set_verify_checksums(it->ropts, 1);
    leveldb_readoptions_set_fill_cache(it->ropts, 0);
    leveldb_readoptions_set_snapshot(it->ropts, it->snap);
    it->it = leveldb_create_iterator(s->db, it->ropts);
    return it;
}

/* Ends the iteration at the first error: LevelDB would skip a damaged
 * block and go on, and a caller that checks the status only at the end
 * would have used what came after the gap. */
static void iter_check(struct store_iter *it)
{
    char *lerr = NULL;
    leveldb_iter_get_error(it->it, &lerr);
    if (lerr)
        it->failed = leveldb_error(it->s, lerr, "iterate");
}

void store_iter_seek(struct store_iter *it, const void *key, size_t klen)
{
    if (it->failed)
        return;
    leveldb_iter_seek(it->it, key, klen);
    iter_check(it);
}

bool store_iter_valid(const struct store_iter *it)
{
    return !it->failed && leveldb_iter_valid(it->it) != 0;
}

void store_iter_next(struct store_iter *it)
{
    if (it->failed)
        return;
    leveldb_iter_next(it->it);
    iter_check(it);
}

const void *store_iter_key(const struct store_iter *it, size_t *klen)
{
    return leveldb_iter_key(it->it, klen);
}

const void *store_iter_value(const struct store_iter *it, size_t *vlen)
{
    return leveldb_iter_value(it->it, vlen);
}

int store_iter_status(const struct store_iter *it)
{
    return it->failed; /* every move checked for errors */
}

void store_iter_free(struct store_iter *it)
{
    if (!it)
        return;
    leveldb_iter_destroy(it->it);
    leveldb_readoptions_destroy(it->ropts);
    leveldb_release_snapshot(it->s->db, it->snap);
    free(it);
}
