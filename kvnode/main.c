/*
 * kvnode - the kv server: `kvnode -c cluster.conf -n ID`, and
 * `kvnode keygen FILE` (a CurveZMQ key pair for a node, docs/security.md).
 *
 * main() alone maps errors to exit codes: 0 clean stop, 1 runtime failure
 * (cannot open data, cannot bind, cannot write a key file), 2 usage or
 * configuration error (including a key file that already exists).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "keys.h"
#include "kv.h"
#include "log.h"
#include "node.h"
#include "proc.h"

static struct node *running;

static void on_signal(int sig)
{
    (void)sig;
    if (running)
        node_stop(running);
}

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: kvnode -c FILE -n ID [--log-level LEVEL]\n"
        "       kvnode -c FILE --check\n"
        "       kvnode keygen FILE\n"
        "  -c FILE            cluster configuration (cluster.conf)\n"
        "  -n ID              which [node ID] of FILE to run\n"
        "  --log-level LEVEL  debug, info, warn or error (default: "
        "the file's log_level)\n"
        "  --check            validate FILE and load its plugins; print "
        "data_dir,\n"
        "                     nodes and plugin hashes\n"
        "  keygen FILE        write a new CurveZMQ key pair to FILE (mode "
        "0600,\n"
        "                     never replacing a file); print its public key\n");
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
    int check = 0;
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
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "kvnode: unknown argument \"%s\"\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!path || (!check && !id)) {
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

    struct node *n = NULL;
    rc = node_open(conf, id, &n, err, sizeof(err));
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
    node_close(n);
    conf_free(conf);
    return rc == KV_OK ? 0 : 1;
}
