/*
 * kvnode - the kv server: `kvnode -c cluster.conf -n ID [--rebuild]`, and
 * `kvnode keygen FILE` (a CurveZMQ key pair for a node, docs/security.md).
 *
 * main() alone maps errors to exit codes: 0 clean stop, 1 runtime failure
 * (cannot open data, cannot bind, the store failed, cannot write a key
 * file), 2 usage or configuration error, which includes a data directory
 * marked DAMAGED (the node refuses to start until it is rebuilt), a key
 * file that already exists and protected mode, 3 the node found its data
 * damaged (checksums, paranoid checks) and stopped: it wrote the DAMAGED
 * marker (kvnode/datadir.h, docs/security.md).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "datadir.h"
#include "keys.h"
#include "kv.h"
#include "log.h"
#include "node.h"
#include "proc.h"

#define EXIT_DAMAGED 3

static struct node *running;

static void on_signal(int sig)
{
    (void)sig;
    if (running)
        node_stop(running);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvnode -c FILE -n ID [--log-level LEVEL] [--rebuild]\n"
            "       kvnode -c FILE --check\n"
            "       kvnode keygen FILE\n"
            "  -c FILE            cluster configuration (cluster.conf)\n"
            "  -n ID              which [node ID] of FILE to run\n"
            "  --log-level LEVEL  debug, info, warn or error (default: "
            "the file's log_level)\n"
            "  --rebuild          move the node's data directory aside "
            "(DIR.damaged-TIME)\n"
            "                     and start empty: every shard catches up "
            "from its leader\n"
            "  --check            validate FILE and load its plugins; print "
            "data_dir,\n"
            "                     nodes and plugin hashes\n"
            "  keygen FILE        write a new CurveZMQ key pair to FILE (mode "
            "0600,\n"
            "                     never replacing a file); print its public "
            "key\n"
            "exit status: 0 stopped, 1 runtime failure, 2 usage or "
            "configuration error\n"
            "  or a data directory marked DAMAGED, 3 found damaged data "
            "(docs/security.md)\n");
}

/* kvnode keygen FILE: prints the public key on stdout, so that
 * `echo "public_key = $(kvnode keygen n1.key)"` works. */
static int keygen(int argc, char **argv)
{
    if (argc != 3 || argv[2][0] == '\0' || argv[2][0] == '-') {
        fprintf(stderr, "usage: kvnode keygen FILE\n");
        return 2;
    }
    char pub[KEYS_Z85_LEN + 1], err[512];
    int rc = keys_generate(argv[2], pub, err, sizeof(err));
    if (rc != KV_OK) {
        fprintf(stderr, "kvnode keygen: %s\n", err);
        return rc == KV_EINVAL ? 2 : 1;
    }
    printf("%s\n", pub);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* --check: what a node would refuse at start that the parser cannot see:
 * the client key file, and protected mode. Returns 0 or 2. */
static int check_security(const struct conf *conf)
{
    const struct conf_security *sec = &conf->security;
    if (sec->curve) {
        size_t n = 0;
        char(*keys)[KEYS_Z85_LEN + 1] = NULL;
        char err[512];
        if (sec->client_keys_file &&
            keys_load_list(sec->client_keys_file, &keys, &n, err,
                           sizeof(err)) != KV_OK) {
            fprintf(stderr, "kvnode: client_keys_file: %s\n", err);
            return 2;
        }
        free(keys);
        printf("curve on, %zu client keys\n", sec->nclient_keys + n);
        return 0;
    }
    for (size_t i = 0; !sec->insecure && i < conf->nnodes; i++)
        if (!conf_address_is_loopback(conf->nodes[i].address))
            fprintf(stderr,
                    "kvnode: note: node %u (%s) will refuse to start: not a "
                    "loopback address and curve is off (protected mode; "
                    "docs/security.md)\n",
                    conf->nodes[i].id, conf->nodes[i].address);
    return 0;
}

/* The node found its data directory DIR damaged (DETAIL says how): one
 * error line, the DAMAGED marker, and the exit status for it. */
static int stop_damaged(const char *path, uint32_t id, const char *dir,
                        const char *detail)
{
    char msg[2048], err[512];
    snprintf(msg, sizeof(msg),
             "data directory %s is damaged (%s); node %u stops; rebuild it: "
             "kvnode -c %s -n %u --rebuild, docs/security.md",
             dir, detail, id, path, id);
    log_msg(LOG_ERROR, msg, NULL);
    if (!log_enabled(LOG_ERROR))
        fprintf(stderr, "kvnode: %s\n", msg);
    if (datadir_mark_damaged(dir, msg, err, sizeof(err)) != KV_OK)
        log_msg(LOG_ERROR, "cannot write the DAMAGED marker", "error=\"%s\"",
                err);
    return EXIT_DAMAGED;
}

/* --rebuild, then the checks every start makes of the data directory.
 * Returns 0 to go on, else the exit status. */
static int prepare_dir(const struct conf *conf, const char *path, uint32_t id,
                       const char *dir, int rebuild)
{
    char err[1024], aside[4096];
    int rc;
    if (rebuild) {
        rc = datadir_rebuild(conf, id, dir, aside, sizeof(aside), err,
                             sizeof(err));
        if (rc != KV_OK) {
            log_msg(LOG_ERROR, "cannot rebuild", "dir=%s error=\"%s\"", dir,
                    err);
            fprintf(stderr, "kvnode: cannot rebuild %s: %s\n", dir, err);
            return rc == KV_EINVAL ? 2 : 1;
        }
        if (aside[0])
            log_msg(LOG_WARN,
                    "rebuilding: the old data directory was moved aside; "
                    "it is kept for inspection and can be deleted once "
                    "every shard caught up",
                    "dir=%s moved_to=%s", dir, aside);
        else
            log_msg(LOG_WARN, "rebuilding: there was no data directory",
                    "dir=%s", dir);
    }
    rc = datadir_check(dir, err, sizeof(err));
    if (rc == KV_ECORRUPT) {
        log_msg(LOG_ERROR, "refusing to start on a damaged data directory",
                "error=\"%s\" rebuild=\"kvnode -c %s -n %u --rebuild\"", err,
                path, id);
        if (!log_enabled(LOG_ERROR))
            fprintf(stderr,
                    "kvnode: refusing to start: %s\nkvnode: rebuild it: "
                    "kvnode -c %s -n %u --rebuild (docs/security.md)\n",
                    err, path, id);
        return 2;
    }
    if (rc != KV_OK) {
        log_msg(LOG_ERROR, "cannot start", "error=\"%s\"", err);
        fprintf(stderr, "kvnode: %s\n", err);
        return 1;
    }
    return 0;
}

static int parse_id(const char *s, uint32_t *out)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || v == 0 || v > 65535)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL, *level = NULL;
    uint32_t id = 0;
    int check = 0, rebuild = 0;
    if (argc >= 2 && strcmp(argv[1], "keygen") == 0)
        return keygen(argc, argv);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-c") == 0 && i + 1 < argc) {
            path = argv[++i];
        } else if (strcmp(a, "-n") == 0 && i + 1 < argc) {
            if (parse_id(argv[++i], &id) != 0) {
                fprintf(stderr, "kvnode: bad node id \"%s\"\n", argv[i]);
                return 2;
            }
        } else if (strcmp(a, "--log-level") == 0 && i + 1 < argc) {
            level = argv[++i];
        } else if (strcmp(a, "--check") == 0) {
            check = 1;
        } else if (strcmp(a, "--rebuild") == 0) {
            rebuild = 1;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "kvnode: unknown argument \"%s\"\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!path || (!check && !id) || (check && rebuild)) {
        usage(stderr);
        return 2;
    }
    char err[512];
    struct conf *conf = NULL;
    int rc = conf_load(path, &conf, err, sizeof(err));
    if (rc != KV_OK) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    if (check) {
        printf("data_dir %s\n", conf->data_dir);
        for (size_t i = 0; i < conf->nnodes; i++)
            printf("node %u %s\n", conf->nodes[i].id, conf->nodes[i].address);
        /* The plugins load as a node would load them. */
        struct proc_registry *reg = NULL;
        rc = proc_registry_open((const char *const *)conf->procedures,
                                conf->nprocedures, &reg, err, sizeof(err));
        if (rc != KV_OK) {
            fprintf(stderr, "kvnode: procedures: %s\n", err);
            conf_free(conf);
            return 2;
        }
        size_t np = 0;
        const struct proc_plugin *pl = proc_plugins(reg, &np);
        for (size_t i = 0; i < np; i++) {
            printf("plugin %s blake2b ", pl[i].name);
            for (size_t j = 0; j < PROC_HASH_LEN; j++)
                printf("%02x", pl[i].hash[j]);
            printf("\n");
        }
        proc_registry_close(reg);
        rc = check_security(conf);
        conf_free(conf);
        return rc;
    }
    enum log_level lv;
    if (log_parse_level(level ? level : conf->log_level, &lv) != 0) {
        fprintf(stderr, "kvnode: bad log level \"%s\"\n", level);
        conf_free(conf);
        return 2;
    }
    char tag[32];
    snprintf(tag, sizeof(tag), "node=%u", id);
    log_setup(lv, tag);

    char dir[4096];
    if (!conf_node_by_id(conf, id) ||
        datadir_path(conf, id, dir, sizeof(dir)) != KV_OK) {
        fprintf(stderr,
                "kvnode: node %u is not in %s (or its data "
                "directory path is too long)\n",
                id, path);
        conf_free(conf);
        return 2;
    }
    /* Protected mode, before the data directory is touched. */
    if (node_check_protected(conf, id, err, sizeof(err)) != KV_OK) {
        log_msg(LOG_ERROR, "cannot start", "error=\"%s\"", err);
        fprintf(stderr, "kvnode: %s\n", err);
        conf_free(conf);
        return 2;
    }
    int status = prepare_dir(conf, path, id, dir, rebuild);
    if (status != 0) {
        conf_free(conf);
        return status;
    }
    struct node *n = NULL;
    rc = node_open(conf, id, &n, err, sizeof(err));
    if (rc == KV_ECORRUPT) {
        status = stop_damaged(path, id, dir, err);
        conf_free(conf);
        return status;
    }
    if (rc != KV_OK) {
        log_msg(LOG_ERROR, "cannot start", "error=\"%s\"", err);
        fprintf(stderr, "kvnode: %s\n", err);
        conf_free(conf);
        return rc == KV_EINVAL ? 2 : 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    running = n;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    rc = node_run(n);
    running = NULL;
    status = rc == KV_OK ? 0 : 1;
    if (rc == KV_ECORRUPT) {
        char detail[1024];
        const char *why = node_damage(n);
        snprintf(detail, sizeof(detail), "LevelDB: %s",
                 why ? why : "a record that does not decode");
        status = stop_damaged(path, id, dir, detail);
    }
    node_close(n);
    conf_free(conf);
    return status;
}
