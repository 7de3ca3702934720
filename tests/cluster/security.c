/*
 * security - CurveZMQ, protected mode and the per-connection request cap on
 * real processes (docs/security.md).
 *
 * A curve cluster (keys made by `kvnode keygen` through the harness) must
 * serve libkv, kvclient and its own peers with the allowed client key,
 * survive the loss of a leader, and refuse everybody else quickly with
 * KV_EAUTH and a message that says why: an unknown key, a plaintext
 * client, a client without a key, a peer batch over a client's connection.
 * Key files are created 0600 and never overwritten. A node on a
 * non-loopback address with curve off refuses to start unless
 * insecure = yes (tested on 0.0.0.0: nothing leaves the machine). A
 * connection holding max_inflight_per_client unanswered requests gets
 * KV_EUNAVAILABLE for more while another connection is served.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "admin.h"
#include "harness.h"
#include "keys.h"
#include "kv.h"
#include "wire.h"

#define NNODES 3
#define NSHARDS 4
#define STATUS_MS 1000
#define CALL_MS 5000
/* A refused call must end well under its timeout: the handshake verdict
 * takes a few reconnects (100 ms apart) at most. */
#define REFUSED_WITHIN_MS 2000
#define CAP 8    /* max_inflight_per_client of the cap test */
#define BURST 20 /* puts sent at once on one connection */
#define RUN_MS 10000
#define HELD_MS 3000 /* timeout of the writes held in the cap test */

static struct cluster *cl;
static pid_t stopped[NNODES]; /* nodes this process SIGSTOPped */

/* --- fixtures ------------------------------------------------------------- */

static void start(int curve, const char *extra, const char *security,
                  const char *host, uint32_t shards)
{
    struct cluster_opts o = {
        .curve = curve, .extra = extra, .security = security, .host = host};
    memset(stopped, 0, sizeof stopped);
    int rc = cluster_start_opts(&cl, NNODES, shards, 3, &o);
    ck_assert_msg(rc == 0, "cluster did not start: %s", kv_strerror(rc));
}

static void curve_up(void)
{
    start(1, NULL, NULL, NULL, NSHARDS);
}

static void cap_up(void)
{
    start(0, "max_inflight_per_client = 8\n", NULL, NULL, 1);
}

static void cluster_down(void)
{
    for (int i = 0; i < NNODES; i++)
        if (stopped[i] > 0)
            kill(stopped[i], SIGCONT);
    memset(stopped, 0, sizeof stopped);
    cluster_stop(cl);
    cl = NULL;
}

/* Every cluster test ends here: the nodes must exit cleanly. */
static void stop_cleanly(void)
{
    struct cluster *c = cl;
    cl = NULL;
    ck_assert_msg(cluster_stop(c) == 0,
                  "a node crashed or did not exit 0 on SIGTERM");
}

/* --- helpers -------------------------------------------------------------- */

static kv *open_with(const char *target, const char *key_file)
{
    kv_open_opts oo = {.timeout_ms = CALL_MS, .key_file = key_file};
    kv *h = NULL;
    int rc = kv_open(target, &oo, &h);
    ck_assert_msg(rc == KV_OK, "kv_open %s: %s (%s)", target, kv_strerror(rc),
                  kv_errmsg(NULL));
    return h;
}

static const char *kvclient_path(void)
{
    const char *p = getenv("KVCLIENT");
    return p != NULL && p[0] != '\0' ? p : "build/kvclient";
}

/* Runs kvclient ARGS... (NULL-terminated, at most 16) and returns its exit
 * code; OUT and ERR get its output. */
static int run_kvclient(const char *const *args, char *out, size_t outlen,
                        char *err, size_t errlen)
{
    const char *argv[20];
    size_t n = 0;
    argv[n++] = kvclient_path();
    for (; args[n - 1] != NULL && n < 18; n++)
        argv[n] = args[n - 1];
    argv[n] = NULL;
    int code = -1;
    int rc = harness_run(argv, 30000, &code, out, outlen, err, errlen);
    ck_assert_msg(rc == 0, "kvclient did not finish: %s", kv_strerror(rc));
    return code;
}

/* A path in a new temp dir (under the harness root). */
static void temp_path(const char *name, char *buf, size_t len)
{
    char dir[256];
    ck_assert_int_eq(harness_tempdir(dir, sizeof dir), 0);
    ck_assert_int_lt(snprintf(buf, len, "%s/%s", dir, name), (int)len);
}

/* Reads a whole small file into a new NUL-terminated string. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "open %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    ck_assert_ptr_nonnull(buf);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
            ck_assert_ptr_nonnull(buf);
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        if (r == 0)
            break;
        n += r;
    }
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* How many times NEEDLE occurs in the logs of every node of the cluster. */
static int count_in_logs(const char *needle)
{
    int count = 0;
    for (int i = 0; i < NNODES; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/node-%d.log", cluster_dir(cl), i + 1);
        char *text = slurp(path);
        for (const char *p = text; (p = strstr(p, needle)) != NULL; p++)
            count++;
        free(text);
    }
    return count;
}

/* A copy of the cluster's cluster.conf without its lines that contain
 * DROP, written next to it as NAME. Returns its path (static). */
static const char *conf_without(const char *drop, const char *name)
{
    static char path[512];
    char *text = slurp(cluster_conf_path(cl));
    size_t o = 0;
    char *copy = malloc(strlen(text) + 1);
    ck_assert_ptr_nonnull(copy);
    for (char *line = strtok(text, "\n"); line != NULL;
         line = strtok(NULL, "\n")) {
        if (strstr(line, drop) != NULL)
            continue;
        size_t len = strlen(line);
        memcpy(copy + o, line, len);
        copy[o + len] = '\n';
        o += len + 1;
    }
    snprintf(path, sizeof path, "%s/%s", cluster_dir(cl), name);
    ck_assert_int_eq(harness_write_file(path, copy, o), 0);
    free(copy);
    free(text);
    return path;
}

static void expect_value(kv *h, const char *key, const char *want)
{
    void *got = NULL;
    size_t glen = 0;
    int rc = kv_get(h, key, strlen(key), NULL, &got, &glen, NULL);
    ck_assert_msg(rc == KV_OK, "get %s: %s (%s)", key, kv_strerror(rc),
                  kv_errmsg(h));
    int same = glen == strlen(want) && memcmp(got, want, glen) == 0;
    kv_free(got);
    ck_assert_msg(same, "get %s: wrong value", key);
}

static void put_ok(kv *h, const char *key, const char *val)
{
    kv_opts o = {.timeout_ms = 15000};
    int rc = kv_put(h, key, strlen(key), val, strlen(val), &o, NULL);
    ck_assert_msg(rc == KV_OK, "put %s: %s (%s)", key, kv_strerror(rc),
                  kv_errmsg(h));
}

/* The statuses' bad frame counters summed over every node of H. */
static uint64_t bad_frames(kv *h)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < admin_node_count(h); i++) {
        Kv__StatusResult *st = NULL;
        int rc = admin_status(h, i, STATUS_MS, &st);
        ck_assert_msg(rc == KV_OK, "status of node %zu: %s (%s)", i,
                      kv_strerror(rc), kv_errmsg(h));
        sum += st->bad_frames;
        admin_status_free(st);
    }
    return sum;
}

/* The harness index of the node leading SHARD (highest term), or -1. */
static int leader_of(kv *h, uint32_t shard)
{
    int best = -1;
    uint64_t term = 0;
    for (int i = 0; i < NNODES; i++) {
        if (!cluster_node_running(cl, i) ||
            cluster_node_pid(cl, i) == stopped[i])
            continue;
        Kv__StatusResult *st = NULL;
        size_t j = admin_node_count(h);
        for (size_t k = 0; k < admin_node_count(h); k++)
            if (admin_node_id(h, k) == cluster_node_id(cl, i))
                j = k;
        if (j == admin_node_count(h) ||
            admin_status(h, j, STATUS_MS, &st) != KV_OK)
            continue;
        for (size_t k = 0; k < st->n_shard_info; k++) {
            const Kv__ShardInfo *si = st->shard_info[k];
            if (si != NULL && si->shard == shard && si->local &&
                si->role != NULL && strcmp(si->role, "leader") == 0 &&
                (best < 0 || si->term > term)) {
                best = i;
                term = si->term;
            }
        }
        admin_status_free(st);
    }
    return best;
}

/* What harness node I says it applied of SHARD (0 when it does not
 * answer). */
static uint64_t applied_of(kv *h, int i, uint32_t shard)
{
    uint64_t applied = 0;
    Kv__StatusResult *st = NULL;
    for (size_t k = 0; i >= 0 && k < admin_node_count(h); k++)
        if (admin_node_id(h, k) == cluster_node_id(cl, i) &&
            admin_status(h, k, STATUS_MS, &st) == KV_OK)
            break;
    for (size_t k = 0; st != NULL && k < st->n_shard_info; k++) {
        const Kv__ShardInfo *si = st->shard_info[k];
        if (si != NULL && si->shard == shard && si->local)
            applied = si->applied;
    }
    admin_status_free(st);
    return applied;
}

/* A key of SHARD: "PREFIX<n>" for the first such n. */
static void key_in_shard(const char *prefix, uint32_t shard, uint32_t nsh,
                         char *buf, size_t cap)
{
    for (int i = 0; i < 1000000; i++) {
        size_t kl = (size_t)snprintf(buf, cap, "%s%d", prefix, i);
        if (kv_shard_of(buf, kl, nsh) == shard)
            return;
    }
    ck_abort_msg("no key of shard %u", shard);
}

/* --- an encrypted cluster ------------------------------------------------- */

static int add_one(kv_txn *t, void *arg)
{
    (void)arg;
    int rc = kv_txn_put(t, "txn/a", 5, "A", 1);
    if (rc == KV_OK)
        rc = kv_txn_put(t, "txn/b", 5, "B", 1);
    return rc;
}

START_TEST(an_encrypted_cluster_serves_libkv_with_an_allowed_key)
{
    kv *h = open_with(cluster_conf_path(cl), cluster_client_key(cl));
    uint64_t before = bad_frames(h);
    for (int i = 0; i < 16; i++) {
        char k[32], v[32];
        snprintf(k, sizeof k, "curve/%d", i);
        snprintf(v, sizeof v, "value %d", i);
        put_ok(h, k, v);
    }
    for (int i = 0; i < 16; i++) {
        char k[32], v[32];
        snprintf(k, sizeof k, "curve/%d", i);
        snprintf(v, sizeof v, "value %d", i);
        expect_value(h, k, v);
    }
    /* A scan merges every shard. */
    kv_scan_opts so = {.prefix = "curve/", .prefix_len = 6};
    kv_iter *it = NULL;
    ck_assert_int_eq(kv_scan(h, &so, NULL, &it), KV_OK);
    int n = 0, rc;
    while ((rc = kv_iter_next(it, NULL, NULL, NULL, NULL, NULL)) == KV_OK)
        n++;
    ck_assert_int_eq(rc, KV_EOF);
    ck_assert_int_eq(n, 16);
    kv_iter_free(it);
    /* A transaction (its keys may span shards: two-phase commit over the
     * nodes' encrypted peer connections). */
    ck_assert_int_eq(kv_txn_run(h, NULL, add_one, NULL), KV_OK);
    expect_value(h, "txn/a", "A");
    expect_value(h, "txn/b", "B");
    /* A procedure call. */
    void *reply = NULL;
    size_t rlen = 0;
    for (int i = 0; i < 3; i++) {
        kv_free(reply);
        reply = NULL;
        rc = kv_call(h, "incr", "hits", 4, NULL, 0, NULL, &reply, &rlen);
        ck_assert_msg(rc == KV_OK, "incr: %s (%s)", kv_strerror(rc),
                      kv_errmsg(h));
    }
    ck_assert(rlen == 1 && memcmp(reply, "3", 1) == 0);
    kv_free(reply);
    ck_assert_int_eq(kv_del(h, "curve/0", 7, NULL), KV_OK);
    /* The nodes took every peer batch: each came over a connection
     * authenticated as the node it names. */
    ck_assert_uint_eq(bad_frames(h), before);
    ck_assert_int_eq(count_in_logs("not authenticated as the node"), 0);
    kv_close(h);
    stop_cleanly();
}
END_TEST

START_TEST(peers_replicate_and_a_killed_leader_is_replaced_under_curve)
{
    kv *h = open_with(cluster_conf_path(cl), cluster_client_key(cl));
    char key[32];
    key_in_shard("failover/", 0, NSHARDS, key, sizeof key);
    put_ok(h, key, "before");
    int leader = leader_of(h, 0);
    ck_assert_int_ge(leader, 0);
    ck_assert_int_eq(cluster_kill(cl, leader, SIGKILL), 0);
    int64_t t0 = harness_now_ms();
    put_ok(h, key, "after"); /* a new leader, elected over curve */
    fprintf(stderr,
            "security: shard 0 wrote again %lld ms after its leader "
            "(node %u) was killed\n",
            (long long)(harness_now_ms() - t0), cluster_node_id(cl, leader));
    expect_value(h, key, "after");
    uint64_t commit = applied_of(h, leader_of(h, 0), 0);
    ck_assert_int_eq(cluster_restart_node(cl, leader), 0);
    /* The restarted node catches up over its encrypted connections. */
    int64_t deadline = harness_now_ms() + RUN_MS;
    while (applied_of(h, leader, 0) < commit && harness_now_ms() < deadline)
        harness_sleep_ms(50);
    ck_assert_msg(applied_of(h, leader, 0) >= commit,
                  "the restarted node did not catch up on shard 0");
    kv_close(h);
    stop_cleanly();
}
END_TEST

START_TEST(kvclient_with_key_works_and_without_it_is_refused)
{
    char out[4096], err[4096];
    const char *conf = cluster_conf_path(cl);
    const char *key = cluster_client_key(cl);
    const char *put[] = {"-c", conf, "--key", key, "put", "cli/k", "v1", NULL};
    int code = run_kvclient(put, out, sizeof out, err, sizeof err);
    ck_assert_msg(code == 0, "kvclient put exited %d: %s", code, err);
    const char *get[] = {"-c", conf, "--key", key, "get", "cli/k", NULL};
    code = run_kvclient(get, out, sizeof out, err, sizeof err);
    ck_assert_msg(code == 0, "kvclient get exited %d: %s", code, err);
    ck_assert_str_eq(out, "v1\n");
    const char *status[] = {"-c", conf, "--key", key, "status", NULL};
    code = run_kvclient(status, out, sizeof out, err, sizeof err);
    ck_assert_msg(code == 0, "kvclient status exited %d: %s", code, err);
    /* Without a key: KV_EAUTH (exit 5) before anything is sent. */
    const char *nokey[] = {"-c", conf, "get", "cli/k", NULL};
    code = run_kvclient(nokey, out, sizeof out, err, sizeof err);
    ck_assert_int_eq(code, 5);
    ck_assert_msg(strstr(err, "requires CurveZMQ") != NULL &&
                      strstr(err, "--key") != NULL,
                  "got: %s", err);
    /* --key with a seed list is a usage error. */
    char seed[128];
    snprintf(seed, sizeof seed, "%s", cluster_node_addr(cl, 0));
    const char *seeds[] = {"-c", seed, "--key", key, "get", "cli/k", NULL};
    code = run_kvclient(seeds, out, sizeof out, err, sizeof err);
    ck_assert_int_eq(code, 2);
    ck_assert_msg(strstr(err, "cluster.conf") != NULL, "got: %s", err);
    stop_cleanly();
}
END_TEST

START_TEST(an_unknown_client_key_is_refused_quickly_with_eauth)
{
    char key[512], out[256], err[1024];
    temp_path("stranger.key", key, sizeof key);
    const char *gen[] = {"keygen", key, NULL};
    int code = run_kvclient(gen, out, sizeof out, err, sizeof err);
    ck_assert_msg(code == 0, "kvclient keygen exited %d: %s", code, err);
    out[KEYS_Z85_LEN] = '\0';
    kv *h = open_with(cluster_conf_path(cl), key);
    for (int i = 0; i < 5; i++) {
        int64_t t0 = harness_now_ms();
        void *v = NULL;
        size_t vl = 0;
        int rc = kv_get(h, "k", 1, NULL, &v, &vl, NULL);
        int64_t took = harness_now_ms() - t0;
        ck_assert_msg(rc == KV_EAUTH, "get with an unknown key: %s (%s)",
                      kv_strerror(rc), kv_errmsg(h));
        ck_assert_msg(took < REFUSED_WITHIN_MS,
                      "refused after %lld ms (timeout %d)", (long long)took,
                      CALL_MS);
        ck_assert_msg(strstr(kv_errmsg(h), "refused this client's key") &&
                          strstr(kv_errmsg(h), out),
                      "message: %s", kv_errmsg(h));
        if (i == 0)
            fprintf(stderr, "security: unknown key refused in %lld ms: %s\n",
                    (long long)took, kv_errmsg(h));
    }
    /* A write is refused the same way, and nothing was written. */
    ck_assert_int_eq(kv_put(h, "k", 1, "x", 1, NULL, NULL), KV_EAUTH);
    kv_close(h);
    /* Each refused key is logged once (rate limited), however often it
     * knocks: the gets above all went to the node of shard(k). */
    harness_sleep_ms(100);
    char needle[300];
    snprintf(needle, sizeof needle, "key=%s", out);
    ck_assert_int_eq(count_in_logs(needle), 1);
    kv *ok = open_with(cluster_conf_path(cl), cluster_client_key(cl));
    void *v = NULL;
    size_t vl = 0;
    ck_assert_int_eq(kv_get(ok, "k", 1, NULL, &v, &vl, NULL), KV_ENOTFOUND);
    kv_close(ok);
    stop_cleanly();
}
END_TEST

START_TEST(a_plaintext_client_is_refused_with_eauth)
{
    /* The same file without "curve = on": a plaintext client. */
    const char *plain = conf_without("curve = on", "plain.conf");
    kv *h = open_with(plain, NULL);
    int64_t t0 = harness_now_ms();
    int rc = kv_put(h, "p", 1, "x", 1, NULL, NULL);
    int64_t took = harness_now_ms() - t0;
    ck_assert_msg(rc == KV_EAUTH, "plaintext put: %s (%s)", kv_strerror(rc),
                  kv_errmsg(h));
    ck_assert_msg(took < REFUSED_WITHIN_MS, "refused after %lld ms",
                  (long long)took);
    ck_assert_msg(strstr(kv_errmsg(h), "CurveZMQ") != NULL, "message: %s",
                  kv_errmsg(h));
    fprintf(stderr, "security: plaintext client refused in %lld ms: %s\n",
            (long long)took, kv_errmsg(h));
    kv_close(h);
    /* A seed list is plaintext too: kv_open itself is refused. */
    kv_open_opts oo = {.timeout_ms = CALL_MS};
    t0 = harness_now_ms();
    rc = kv_open(cluster_node_addr(cl, 1), &oo, &h);
    took = harness_now_ms() - t0;
    ck_assert_msg(rc == KV_EAUTH, "seed list: %s (%s)", kv_strerror(rc),
                  kv_errmsg(NULL));
    ck_assert_msg(took < REFUSED_WITHIN_MS, "refused after %lld ms",
                  (long long)took);
    ck_assert_msg(strstr(kv_errmsg(NULL), "CurveZMQ") != NULL, "message: %s",
                  kv_errmsg(NULL));
    stop_cleanly();
}
END_TEST

/* A client's connection (an allowed client key) cannot pass for a node:
 * its peer batch, with node 2's routing id and name, is dropped and
 * counted. */
START_TEST(a_peer_batch_over_a_client_connection_is_dropped)
{
    kv *h = open_with(cluster_conf_path(cl), cluster_client_key(cl));
    uint64_t before = bad_frames(h);
    struct keys_pair pair;
    char err[512];
    ck_assert_int_eq(
        keys_load_pair(cluster_client_key(cl), &pair, err, sizeof err), KV_OK);
    /* Node 1's public key, from the file the harness wrote. */
    char *conf = slurp(cluster_conf_path(cl));
    char *pk = strstr(conf, "public_key = ");
    ck_assert_ptr_nonnull(pk);
    pk += strlen("public_key = ");
    pk[KEYS_Z85_LEN] = '\0';
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_ROUTING_ID, "n2", 2);
    ck_assert_int_eq(zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, pk, 41), 0);
    ck_assert_int_eq(zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pair.pub, 41), 0);
    ck_assert_int_eq(zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, pair.sec, 41), 0);
    ck_assert_int_eq(zmq_connect(s, cluster_node_addr(cl, 0)), 0);
    Kv__PeerBatch b = KV__PEER_BATCH__INIT;
    b.from = 2;
    b.cluster = "kvtest";
    Kv__Envelope env = KV__ENVELOPE__INIT;
    env.version = WIRE_VERSION;
    env.body_case = KV__ENVELOPE__BODY_PEER;
    env.peer = &b;
    size_t len = kv__envelope__get_packed_size(&env);
    unsigned char *buf = malloc(len);
    ck_assert_ptr_nonnull(buf);
    kv__envelope__pack(&env, buf);
    ck_assert_int_eq(zmq_send(s, buf, len, 0), (int)len);
    int64_t deadline = harness_now_ms() + RUN_MS;
    while (bad_frames(h) == before && harness_now_ms() < deadline)
        harness_sleep_ms(20);
    ck_assert_uint_gt(bad_frames(h), before);
    ck_assert_int_ge(count_in_logs("not authenticated as the node it names"),
                     1);
    free(buf);
    zmq_close(s);
    zmq_ctx_term(ctx);
    free(conf);
    /* The cluster still works (node 2 took its connection back). */
    put_ok(h, "after/peer", "ok");
    expect_value(h, "after/peer", "ok");
    kv_close(h);
    stop_cleanly();
}
END_TEST

/* client_keys_file: more client keys, one a line, '#' comments. */
START_TEST(a_key_listed_in_client_keys_file_is_admitted)
{
    char key[512], list[512], out[256], err[1024];
    temp_path("listed.key", key, sizeof key);
    const char *gen[] = {"keygen", key, NULL};
    ck_assert_int_eq(run_kvclient(gen, out, sizeof out, err, sizeof err), 0);
    out[KEYS_Z85_LEN] = '\0';
    temp_path("clients.keys", list, sizeof list);
    char text[256];
    int n = snprintf(text, sizeof text,
                     "# the clients of the tests\n%s   # listed\n", out);
    ck_assert_int_eq(harness_write_file(list, text, (size_t)n), 0);
    char sec[600];
    snprintf(sec, sizeof sec, "client_keys_file = %s\n", list);
    start(1, NULL, sec, NULL, NSHARDS);
    kv *h = open_with(cluster_conf_path(cl), key);
    put_ok(h, "listed", "yes");
    expect_value(h, "listed", "yes");
    kv_close(h);
    stop_cleanly();
}
END_TEST

/* --- key files ------------------------------------------------------------ */

static void keygen_checks(const char *prog)
{
    char path[512], out[256], err[1024];
    temp_path("k.key", path, sizeof path);
    const char *argv[] = {prog, "keygen", path, NULL};
    int code = -1;
    ck_assert_int_eq(
        harness_run(argv, 10000, &code, out, sizeof out, err, sizeof err), 0);
    ck_assert_msg(code == 0, "%s keygen exited %d: %s", prog, code, err);
    /* stdout: the public key and a newline, nothing else. */
    ck_assert_uint_eq(strlen(out), KEYS_Z85_LEN + 1);
    ck_assert(keys_z85_valid(out, KEYS_Z85_LEN));
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0600);
    struct keys_pair pair;
    ck_assert_int_eq(keys_load_pair(path, &pair, err, sizeof err), KV_OK);
    ck_assert(memcmp(pair.pub, out, KEYS_Z85_LEN) == 0);
    ck_assert(!pair.loose_mode);
    char *before = slurp(path);
    /* A second run refuses, and leaves the file as it was. */
    ck_assert_int_eq(
        harness_run(argv, 10000, &code, out, sizeof out, err, sizeof err), 0);
    ck_assert_int_eq(code, 2);
    ck_assert_msg(strstr(err, "refusing to overwrite") != NULL, "got: %s", err);
    ck_assert_str_eq(out, "");
    char *after = slurp(path);
    ck_assert_str_eq(before, after);
    free(before);
    free(after);
}

START_TEST(kvnode_keygen_writes_mode_0600_and_refuses_to_overwrite)
{
    keygen_checks(harness_kvnode());
}
END_TEST

START_TEST(kvclient_keygen_writes_mode_0600_and_refuses_to_overwrite)
{
    keygen_checks(kvclient_path());
}
END_TEST

/* A curve file with made-up nodes (nothing listens): what kv_open checks
 * before it sends anything. */
START_TEST(kv_open_wants_a_key_for_curve_and_no_key_with_a_seed_list)
{
    char key[512], conf[512], out[256], err[1024];
    temp_path("c.key", key, sizeof key);
    const char *gen[] = {"keygen", key, NULL};
    ck_assert_int_eq(run_kvclient(gen, out, sizeof out, err, sizeof err), 0);
    out[KEYS_Z85_LEN] = '\0';
    temp_path("cluster.conf", conf, sizeof conf);
    char text[1024];
    int n = snprintf(text, sizeof text,
                     "cluster = x\n[security]\ncurve = on\n"
                     "[node 1]\naddress = tcp://127.0.0.1:1\n"
                     "public_key = %s\nsecret_key_file = n1.key\n",
                     out);
    ck_assert_int_eq(harness_write_file(conf, text, (size_t)n), 0);
    kv_open_opts oo = {.timeout_ms = 1000};
    kv *h = NULL;
    unsetenv("KV_CLIENT_KEY");
    ck_assert_int_eq(kv_open(conf, &oo, &h), KV_EAUTH);
    ck_assert_msg(strstr(kv_errmsg(NULL), "requires CurveZMQ") != NULL &&
                      strstr(kv_errmsg(NULL), "KV_CLIENT_KEY") != NULL,
                  "got: %s", kv_errmsg(NULL));
    /* $KV_CLIENT_KEY stands in for key_file. */
    ck_assert_int_eq(setenv("KV_CLIENT_KEY", key, 1), 0);
    ck_assert_int_eq(kv_open(conf, &oo, &h), KV_OK);
    kv_close(h);
    oo.key_file = key;
    ck_assert_int_eq(kv_open("tcp://127.0.0.1:1", &oo, &h), KV_EINVAL);
    ck_assert_msg(strstr(kv_errmsg(NULL), "seed list") != NULL, "got: %s",
                  kv_errmsg(NULL));
    unsetenv("KV_CLIENT_KEY");
    /* A key file that is not one. */
    oo.key_file = conf;
    ck_assert_int_eq(kv_open(conf, &oo, &h), KV_EINVAL);
    ck_assert_msg(strstr(kv_errmsg(NULL), "client key") != NULL, "got: %s",
                  kv_errmsg(NULL));
}
END_TEST

/* Bad security lines: "FILE:LINE: problem" from kvnode --check. */
START_TEST(bad_security_lines_are_reported_with_file_and_line)
{
    static const struct {
        const char *body;
        unsigned line;
        const char *word;
    } bad[] = {
        {"[security]\ncurve = maybe\n", 3, "curve must be on or off"},
        {"[security]\ninsecure = 1\n", 3, "insecure must be yes or no"},
        {"[security]\nclient_keys = short\n", 3, "not a Z85 public key"},
        {"[security]\nhandshake_timeout_ms = 5\n", 3, "handshake_timeout_ms"},
        {"[security]\nshards = 2\n", 3, "before the first section"},
        {"curve = on\n", 2, "belongs in the [security] section"},
        {"[security]\ncurve = on\n", 4, "has no public_key"},
        {"[security]\n[security]\n", 3, "duplicate section [security]"},
    };
    char conf[512], out[512], err[1024];
    temp_path("bad.conf", conf, sizeof conf);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[512];
        int n = snprintf(text, sizeof text,
                         "cluster = x\n%s[node 1]\naddress = tcp://h:1\n",
                         bad[i].body);
        ck_assert_int_eq(harness_write_file(conf, text, (size_t)n), 0);
        const char *args[] = {"-c", conf, "--check", NULL};
        int code = -1;
        ck_assert_int_eq(harness_run_kvnode(args, 10000, &code, out, sizeof out,
                                            err, sizeof err),
                         0);
        char want[600];
        snprintf(want, sizeof want, "%s:%u: ", conf, bad[i].line);
        ck_assert_msg(code == 2 && strstr(err, want) != NULL &&
                          strstr(err, bad[i].word) != NULL,
                      "case %zu: exit %d, want '%s...%s', got: %s", i, code,
                      want, bad[i].word, err);
    }
}
END_TEST

/* --- protected mode ------------------------------------------------------- */

START_TEST(a_node_on_a_non_loopback_address_without_curve_refuses_to_start)
{
    char conf[512], out[512], err[2048];
    temp_path("cluster.conf", conf, sizeof conf);
    const char text[] = "cluster = open\n[node 1]\n"
                        "address = tcp://0.0.0.0:1\n";
    ck_assert_int_eq(harness_write_file(conf, text, sizeof text - 1), 0);
    const char *args[] = {"-c", conf, "-n", "1", NULL};
    int code = -1;
    ck_assert_int_eq(harness_run_kvnode(args, 10000, &code, out, sizeof out,
                                        err, sizeof err),
                     0);
    ck_assert_int_eq(code, 2);
    ck_assert_msg(strstr(err, "protected mode") != NULL &&
                      strstr(err, "not a loopback address") != NULL &&
                      strstr(err, "curve = on") != NULL &&
                      strstr(err, "insecure = yes") != NULL,
                  "got: %s", err);
    /* The data directory was not even created. */
    char data[600];
    snprintf(data, sizeof data, "%.*s/data", (int)(strrchr(conf, '/') - conf),
             conf);
    struct stat st;
    ck_assert_int_ne(stat(data, &st), 0);
}
END_TEST

START_TEST(insecure_yes_lets_a_node_listen_on_a_non_loopback_address)
{
    start(0, NULL, "insecure = yes\n", "0.0.0.0", NSHARDS);
    kv *h = open_with(cluster_conf_path(cl), NULL);
    put_ok(h, "open", "yes");
    expect_value(h, "open", "yes");
    kv_close(h);
    stop_cleanly();
}
END_TEST

/* --- the cap on requests in flight ---------------------------------------- */

static void *raw_socket(void *ctx, const char *addr)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    ck_assert_ptr_nonnull(s);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    ck_assert_int_eq(zmq_connect(s, addr), 0);
    return s;
}

static void send_request(void *s, Kv__Request *req)
{
    void *buf = NULL;
    size_t len = 0;
    ck_assert_int_eq(wire_encode_request(req, &buf, &len), KV_OK);
    ck_assert_int_eq(zmq_send(s, buf, len, 0), (int)len);
    free(buf);
}

static void send_put(void *s, uint64_t id, const char *key, uint32_t timeout_ms)
{
    Kv__Request req = KV__REQUEST__INIT;
    Kv__PutRequest p = KV__PUT_REQUEST__INIT;
    p.key.data = (uint8_t *)key;
    p.key.len = strlen(key);
    p.value.data = (uint8_t *)"v";
    p.value.len = 1;
    req.id = id;
    req.timeout_ms = timeout_ms;
    req.op_case = KV__REQUEST__OP_PUT;
    req.put = &p;
    send_request(s, &req);
}

/* Waits at most MS for a response on S; NULL when none came. */
static Kv__Envelope *recv_response(void *s, int ms)
{
    int64_t deadline = harness_now_ms() + ms;
    for (;;) {
        int64_t left = deadline - harness_now_ms();
        if (left <= 0)
            return NULL;
        zmq_pollitem_t it = {.socket = s, .events = ZMQ_POLLIN};
        if (zmq_poll(&it, 1, (long)left) <= 0)
            continue;
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) < 0) {
            zmq_msg_close(&m);
            continue;
        }
        Kv__Envelope *env = NULL;
        char err[128];
        int rc = wire_decode(zmq_msg_data(&m), zmq_msg_size(&m), 1u << 26, &env,
                             err, sizeof err);
        zmq_msg_close(&m);
        if (rc == KV_OK && env->body_case == KV__ENVELOPE__BODY_RESPONSE)
            return env;
        wire_free(env);
    }
}

static int is_cap_refusal(const Kv__Response *r)
{
    return r->code == KV_EUNAVAILABLE && r->message != NULL &&
           strstr(r->message, "too many requests in flight") != NULL;
}

START_TEST(a_connection_over_the_cap_gets_eunavailable_while_others_are_served)
{
    kv *h = open_with(cluster_conf_path(cl), NULL);
    put_ok(h, "cap/warm", "up");
    int leader = leader_of(h, 0);
    ck_assert_int_ge(leader, 0);
    void *ctx = zmq_ctx_new();
    void *a = raw_socket(ctx, cluster_node_addr(cl, leader));
    void *b = raw_socket(ctx, cluster_node_addr(cl, leader));
    /* Both connections up before the quorum goes (a status is answered
     * at once and holds nothing). */
    for (int k = 0; k < 2; k++) {
        Kv__Request req = KV__REQUEST__INIT;
        Kv__StatusRequest sr = KV__STATUS_REQUEST__INIT;
        req.id = 1;
        req.op_case = KV__REQUEST__OP_STATUS;
        req.status = &sr;
        send_request(k == 0 ? a : b, &req);
        Kv__Envelope *env = recv_response(k == 0 ? a : b, RUN_MS);
        ck_assert_ptr_nonnull(env);
        wire_free(env);
    }
    /* The followers stop: the leader's writes wait for a commit that
     * cannot come, each one held against connection A. */
    for (int i = 0; i < NNODES; i++)
        if (i != leader) {
            stopped[i] = cluster_node_pid(cl, i);
            ck_assert_int_eq(kill(stopped[i], SIGSTOP), 0);
        }
    for (int k = 0; k < BURST; k++)
        send_put(a, 100 + (uint64_t)k, "cap/held", HELD_MS);
    /* The excess is refused at once; the first CAP get no answer. */
    int refused = 0, other = 0;
    uint64_t first_refused = 0;
    for (Kv__Envelope *env; (env = recv_response(a, 500)) != NULL;) {
        if (is_cap_refusal(env->response)) {
            if (refused++ == 0)
                first_refused = env->response->id;
        } else {
            other++;
        }
        wire_free(env);
    }
    ck_assert_int_eq(refused, BURST - CAP);
    ck_assert_int_eq(other, 0);
    ck_assert_uint_eq(first_refused, 100 + CAP);
    /* Another connection is served (a stale read needs no quorum). */
    Kv__Request req = KV__REQUEST__INIT;
    Kv__GetRequest g = KV__GET_REQUEST__INIT;
    g.key.data = (uint8_t *)"cap/warm";
    g.key.len = 8;
    g.stale = 1;
    req.id = 7;
    req.timeout_ms = 5000;
    req.op_case = KV__REQUEST__OP_GET;
    req.get = &g;
    send_request(b, &req);
    Kv__Envelope *env = recv_response(b, RUN_MS);
    ck_assert_ptr_nonnull(env);
    ck_assert_int_eq(env->response->code, KV_OK);
    ck_assert_uint_eq(env->response->id, 7);
    wire_free(env);
    /* A is still full. */
    send_put(a, 500, "cap/more", HELD_MS);
    env = recv_response(a, RUN_MS);
    ck_assert_ptr_nonnull(env);
    ck_assert(is_cap_refusal(env->response));
    wire_free(env);
    /* The quorum comes back. The held writes are answered (those whose
     * entries a new leader overwrote, once the log passes them) or, past
     * their timeout, no longer count: either way A is admitted again. */
    for (int i = 0; i < NNODES; i++)
        if (stopped[i] > 0) {
            kill(stopped[i], SIGCONT);
            stopped[i] = 0;
        }
    int admitted = 0;
    int64_t deadline = harness_now_ms() + 30000;
    for (uint64_t id = 600; !admitted && harness_now_ms() < deadline; id++) {
        send_put(a, id, "cap/free", 5000);
        while ((env = recv_response(a, 500)) != NULL) {
            admitted |=
                env->response->id >= 600 && !is_cap_refusal(env->response);
            wire_free(env);
        }
    }
    ck_assert_msg(admitted, "A is still refused after the quorum came back");
    zmq_close(a);
    zmq_close(b);
    zmq_ctx_term(ctx);
    kv_close(h);
    stop_cleanly();
}
END_TEST

static Suite *security_suite(void)
{
    Suite *s = suite_create("security");
    TCase *tc = tcase_create("curve");
    tcase_add_checked_fixture(tc, curve_up, cluster_down);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, an_encrypted_cluster_serves_libkv_with_an_allowed_key);
    tcase_add_test(tc,
                   peers_replicate_and_a_killed_leader_is_replaced_under_curve);
    tcase_add_test(tc, kvclient_with_key_works_and_without_it_is_refused);
    tcase_add_test(tc, an_unknown_client_key_is_refused_quickly_with_eauth);
    tcase_add_test(tc, a_plaintext_client_is_refused_with_eauth);
    tcase_add_test(tc, a_peer_batch_over_a_client_connection_is_dropped);
    suite_add_tcase(s, tc);

    TCase *own = tcase_create("own cluster");
    tcase_add_checked_fixture(own, NULL, cluster_down);
    tcase_set_timeout(own, 120);
    tcase_add_test(own, a_key_listed_in_client_keys_file_is_admitted);
    tcase_add_test(own,
                   insecure_yes_lets_a_node_listen_on_a_non_loopback_address);
    suite_add_tcase(s, own);

    TCase *keys = tcase_create("keys and config");
    tcase_set_timeout(keys, 60);
    tcase_add_test(keys,
                   kvnode_keygen_writes_mode_0600_and_refuses_to_overwrite);
    tcase_add_test(keys,
                   kvclient_keygen_writes_mode_0600_and_refuses_to_overwrite);
    tcase_add_test(keys,
                   kv_open_wants_a_key_for_curve_and_no_key_with_a_seed_list);
    tcase_add_test(keys, bad_security_lines_are_reported_with_file_and_line);
    tcase_add_test(
        keys, a_node_on_a_non_loopback_address_without_curve_refuses_to_start);
    suite_add_tcase(s, keys);

    TCase *cap = tcase_create("inflight cap");
    tcase_add_checked_fixture(cap, cap_up, cluster_down);
    tcase_set_timeout(cap, 120);
    tcase_add_test(
        cap,
        a_connection_over_the_cap_gets_eunavailable_while_others_are_served);
    suite_add_tcase(s, cap);
    return s;
}

int main(void)
{
    if (harness_init() != 0)
        return EXIT_FAILURE;
    SRunner *sr = srunner_create(security_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return harness_fini(failed);
}
