/*
 * restart - acknowledged writes survive kill -9 and SIGTERM of nodes, and a
 * request to a shard whose node is down fails within its timeout.
 *
 * Each test starts its own 3-node cluster (8 shards, 3 replicas), writes
 * through libkv until every write is acknowledged, kills nodes by PID,
 * starts them again on the same data and reads everything back through a
 * fresh handle: every acknowledged value with its version, every
 * acknowledged delete still deleted, and versions that keep increasing.
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "harness.h"
#include "kv.h"

#define NNODES 3
#define NSHARDS 8
#define NKEYS 2000
#define DOWN_TIMEOUT_MS 500
#define DOWN_SLACK_MS 500 /* scheduling and sanitizer slack on a timeout */

static struct cluster *cl;

/* What the cluster acknowledged, per key: the generation of its value
 * (0: deleted or never written) and its version. */
struct expect {
    unsigned gen[NKEYS];
    uint64_t ver[NKEYS];
};

static struct expect want;

/* --- fixtures ------------------------------------------------------------- */

static void cluster_up(void)
{
    memset(&want, 0, sizeof want);
    int rc = cluster_start(&cl, NNODES, NSHARDS, 3);
    ck_assert_msg(rc == 0, "cluster did not start: %s", kv_strerror(rc));
}

static void cluster_down(void)
{
    /* Only reached with the cluster still up when a test failed (a passing
     * test stops it itself and checks how the nodes exited). */
    cluster_stop(cl);
    cl = NULL;
}

/* Every test ends here: the nodes must exit cleanly. */
static void stop_cluster_cleanly(void)
{
    struct cluster *c = cl;
    cl = NULL;
    ck_assert_msg(cluster_stop(c) == 0,
                  "a node crashed or did not exit 0 on SIGTERM");
}

/* --- helpers -------------------------------------------------------------- */

static kv *open_handle(uint32_t timeout_ms)
{
    kv_open_opts oo = {.timeout_ms = timeout_ms};
    kv *h = NULL;
    int rc = kv_open(cluster_conf_path(cl), &oo, &h);
    ck_assert_msg(rc == KV_OK, "kv_open: %s (%s)", kv_strerror(rc),
                  kv_errmsg(NULL));
    return h;
}

static size_t key_of(unsigned i, char *buf, size_t cap)
{
    return (size_t)snprintf(buf, cap, "ack/%05u", i);
}

/* The value of key I at generation GEN: 1..400 bytes, all byte values. */
static size_t value_of(unsigned i, unsigned gen, unsigned char *buf)
{
    size_t len = 1 + (i * 37u + gen * 101u) % 400u;
    for (size_t j = 0; j < len; j++)
        buf[j] = (unsigned char)(i * 7u + gen * 13u + j);
    return len;
}

static void put_key(kv *h, unsigned i, unsigned gen)
{
    char k[32];
    unsigned char v[512];
    size_t kl = key_of(i, k, sizeof k);
    size_t vl = value_of(i, gen, v);
    uint64_t ver = 0;
    int rc = kv_put(h, k, kl, v, vl, NULL, &ver);
    ck_assert_msg(rc == KV_OK, "put %s: %s (%s)", k, kv_strerror(rc),
                  kv_errmsg(h));
    ck_assert_msg(ver > want.ver[i],
                  "put %s: version %" PRIu64 " after %" PRIu64, k, ver,
                  want.ver[i]);
    want.gen[i] = gen;
    want.ver[i] = ver;
}

static void del_key(kv *h, unsigned i)
{
    char k[32];
    size_t kl = key_of(i, k, sizeof k);
    int rc = kv_del(h, k, kl, NULL);
    ck_assert_msg(rc == KV_OK, "del %s: %s (%s)", k, kv_strerror(rc),
                  kv_errmsg(h));
    want.gen[i] = 0;
}

/* Writes N keys, rewrites every 10th and deletes every 7th: everything
 * acknowledged is recorded in want. */
static void write_keys(unsigned n)
{
    kv *h = open_handle(10000);
    for (unsigned i = 0; i < n; i++)
        put_key(h, i, 1);
    for (unsigned i = 0; i < n; i += 10)
        put_key(h, i, 2);
    for (unsigned i = 3; i < n; i += 7)
        del_key(h, i);
    kv_close(h);
}

/* Reads every key of want back through a fresh handle, then scans them. */
static void verify_keys(unsigned n)
{
    kv *h = open_handle(10000);
    unsigned live = 0;
    for (unsigned i = 0; i < n; i++) {
        char k[32];
        unsigned char v[512];
        size_t kl = key_of(i, k, sizeof k);
        void *got = NULL;
        size_t glen = 0;
        uint64_t gver = 0;
        int rc = kv_get(h, k, kl, NULL, &got, &glen, &gver);
        if (want.gen[i] == 0) {
            if (rc == KV_OK)
                kv_free(got);
            ck_assert_msg(rc == KV_ENOTFOUND, "%s was deleted, get returned %s",
                          k, kv_strerror(rc));
            continue;
        }
        ck_assert_msg(rc == KV_OK, "get %s: %s (%s)", k, kv_strerror(rc),
                      kv_errmsg(h));
        size_t vl = value_of(i, want.gen[i], v);
        int same = glen == vl && memcmp(got, v, vl) == 0;
        kv_free(got);
        ck_assert_msg(same, "%s has the wrong value after the restart", k);
        ck_assert_msg(gver == want.ver[i],
                      "%s has version %" PRIu64 ", acknowledged %" PRIu64, k,
                      gver, want.ver[i]);
        live++;
    }
    /* A scan sees exactly the live keys, in order, once. */
    kv_iter *it = NULL;
    kv_scan_opts so = {.prefix = "ack/", .prefix_len = 4};
    ck_assert_int_eq(kv_scan(h, &so, NULL, &it), KV_OK);
    unsigned seen = 0, next = 0;
    for (;;) {
        const void *k = NULL;
        size_t kl = 0;
        uint64_t ver = 0;
        int rc = kv_iter_next(it, &k, &kl, NULL, NULL, &ver);
        if (rc == KV_EOF)
            break;
        ck_assert_msg(rc == KV_OK, "scan: %s", kv_strerror(rc));
        ck_assert_uint_lt(seen, live);
        while (next < n && want.gen[next] == 0)
            next++;
        ck_assert_uint_lt(next, n);
        char w[32];
        size_t wl = key_of(next, w, sizeof w);
        ck_assert_msg(kl == wl && memcmp(k, w, wl) == 0,
                      "scan entry %u is not %s", seen, w);
        ck_assert_uint_eq(ver, want.ver[next]);
        next++;
        seen++;
    }
    kv_iter_free(it);
    ck_assert_uint_eq(seen, live);
    kv_close(h);
}

/* New writes after a restart get versions above everything before. */
static void rewrite_some(unsigned n)
{
    kv *h = open_handle(10000);
    for (unsigned i = 0; i < n; i += n / 16)
        put_key(h, i, 3); /* put_key checks the version grew */
    kv_close(h);
}

static void restart_all(void)
{
    for (int i = 0; i < NNODES; i++)
        ck_assert_int_eq(cluster_spawn_node(cl, i), 0);
    int rc = cluster_wait_ready(cl, 15000);
    ck_assert_msg(rc == 0, "the restarted nodes are not ready: %s",
                  kv_strerror(rc));
}

/* A key whose shard is served by node index NODE (placement: shard s is
 * first served by node s mod N). */
static size_t key_on_node(int node, int which, char *buf, size_t cap)
{
    int found = 0;
    for (int i = 0; i < 10000; i++) {
        size_t kl = (size_t)snprintf(buf, cap, "down/%d", i);
        uint32_t s = kv_shard_of(buf, kl, NSHARDS);
        if ((int)(s % NNODES) == node && found++ == which)
            return kl;
    }
    ck_abort_msg("no key for node %d", node);
    return 0;
}

/* --- tests ---------------------------------------------------------------- */

START_TEST(acknowledged_writes_survive_kill_9_of_every_node)
{
    write_keys(NKEYS);
    for (int i = 0; i < NNODES; i++)
        ck_assert_int_eq(cluster_kill(cl, i, SIGKILL), 0);
    restart_all();
    verify_keys(NKEYS);
    rewrite_some(NKEYS);
    verify_keys(NKEYS);
    /* And once more: the rewritten state survives a second crash. */
    for (int i = 0; i < NNODES; i++)
        ck_assert_int_eq(cluster_kill(cl, i, SIGKILL), 0);
    restart_all();
    verify_keys(NKEYS);
    stop_cluster_cleanly();
}
END_TEST

START_TEST(acknowledged_writes_survive_kill_9_of_one_node)
{
    write_keys(NKEYS);
    for (int node = 0; node < NNODES; node++) {
        ck_assert_int_eq(cluster_kill(cl, node, SIGKILL), 0);
        ck_assert_int_eq(cluster_restart_node(cl, node), 0);
        verify_keys(NKEYS);
    }
    rewrite_some(NKEYS);
    verify_keys(NKEYS);
    stop_cluster_cleanly();
}
END_TEST

START_TEST(acknowledged_writes_survive_sigterm_and_restart)
{
    write_keys(NKEYS);
    for (int i = 0; i < NNODES; i++)
        ck_assert_msg(cluster_kill(cl, i, SIGTERM) == 0,
                      "node %d did not exit 0 on SIGTERM", i + 1);
    restart_all();
    verify_keys(NKEYS);
    rewrite_some(NKEYS);
    for (int i = 0; i < NNODES; i++)
        ck_assert_int_eq(cluster_kill(cl, i, SIGINT), 0);
    restart_all();
    verify_keys(NKEYS);
    stop_cluster_cleanly();
}
END_TEST

/* Runs OP on a key served by a down node and checks it fails with
 * KV_ETIMEDOUT or KV_EUNAVAILABLE within the timeout. */
static void expect_fast_failure(kv *h, const char *what, int op, const char *k,
                                size_t kl, const kv_opts *o, int64_t limit_ms)
{
    int64_t t0 = harness_now_ms();
    int rc;
    if (op == 0) {
        rc = kv_put(h, k, kl, "v", 1, o, NULL);
    } else if (op == 1) {
        void *got = NULL;
        size_t glen = 0;
        rc = kv_get(h, k, kl, o, &got, &glen, NULL);
        if (rc == KV_OK)
            kv_free(got);
    } else {
        rc = kv_del(h, k, kl, o);
    }
    int64_t took = harness_now_ms() - t0;
    fprintf(stderr, "%s on a down shard: %s after %" PRId64 " ms\n", what,
            kv_strerror(rc), took);
    ck_assert_msg(rc == KV_ETIMEDOUT || rc == KV_EUNAVAILABLE,
                  "%s on a down shard returned %s", what, kv_strerror(rc));
    ck_assert_msg(took <= limit_ms, "%s took %" PRId64 " ms, limit %" PRId64,
                  what, took, limit_ms);
    ck_assert_str_ne(kv_errmsg(h), "");
}

START_TEST(a_request_to_a_down_shard_fails_within_its_timeout)
{
    /* Keys on node 2's shards, written while it is up. */
    kv *h = open_handle(10000);
    char k[5][32];
    size_t kl[5];
    for (int j = 0; j < 5; j++) {
        kl[j] = key_on_node(1, j, k[j], sizeof k[j]);
        ck_assert_int_eq(kv_put(h, k[j], kl[j], "before", 6, NULL, NULL),
                         KV_OK);
    }
    /* Two of three nodes down: no shard served by them (nor, once
     * replication lands, any shard at all) can take a write. */
    ck_assert_int_eq(cluster_kill(cl, 1, SIGKILL), 0);
    ck_assert_int_eq(cluster_kill(cl, 2, SIGKILL), 0);

    kv_opts o = {.timeout_ms = DOWN_TIMEOUT_MS};
    const int64_t limit = DOWN_TIMEOUT_MS + DOWN_SLACK_MS;
    for (int j = 0; j < 5; j++) {
        expect_fast_failure(h, "put", 0, k[j], kl[j], &o, limit);
        expect_fast_failure(h, "get", 1, k[j], kl[j], &o, limit);
        expect_fast_failure(h, "del", 2, k[j], kl[j], &o, limit);
    }
    /* The handle's default timeout bounds calls without their own. */
    kv *fast = open_handle(DOWN_TIMEOUT_MS);
    expect_fast_failure(fast, "put (handle timeout)", 0, k[0], kl[0], NULL,
                        limit);
    expect_fast_failure(fast, "get (handle timeout)", 1, k[0], kl[0], NULL,
                        limit);
    /* A scan needs every shard: it fails too, and does not hang. */
    kv_iter *it = NULL;
    int64_t t0 = harness_now_ms();
    int rc = kv_scan(fast, NULL, NULL, &it);
    for (int n = 0; rc == KV_OK && n < 100000; n++)
        rc = kv_iter_next(it, NULL, NULL, NULL, NULL, NULL);
    kv_iter_free(it);
    int64_t took = harness_now_ms() - t0;
    ck_assert_msg(rc == KV_ETIMEDOUT || rc == KV_EUNAVAILABLE,
                  "a scan with nodes down ended with %s", kv_strerror(rc));
    ck_assert_msg(took <= NSHARDS * limit, "the scan took %" PRId64 " ms",
                  took);
    kv_close(fast);

    /* Back up: the same handle works again (bounded retries while the
     * nodes reconnect) and the acknowledged values are there. */
    ck_assert_int_eq(cluster_restart_node(cl, 1), 0);
    ck_assert_int_eq(cluster_restart_node(cl, 2), 0);
    int64_t deadline = harness_now_ms() + 15000;
    do {
        rc = kv_put(h, k[0], kl[0], "after", 5, &o, NULL);
    } while (rc != KV_OK && harness_now_ms() < deadline);
    ck_assert_msg(rc == KV_OK, "put after the restart: %s (%s)",
                  kv_strerror(rc), kv_errmsg(h));
    for (int j = 1; j < 5; j++) {
        void *got = NULL;
        size_t glen = 0;
        rc = kv_get(h, k[j], kl[j], NULL, &got, &glen, NULL);
        ck_assert_msg(rc == KV_OK, "get after the restart: %s",
                      kv_strerror(rc));
        int same = glen == 6 && memcmp(got, "before", 6) == 0;
        kv_free(got);
        ck_assert(same);
    }
    kv_close(h);
    stop_cluster_cleanly();
}
END_TEST

static Suite *restart_suite(void)
{
    Suite *s = suite_create("restart");
    TCase *tc = tcase_create("restart");
    /* Checked: each test owns its cluster, in the process that runs it. */
    tcase_add_checked_fixture(tc, cluster_up, cluster_down);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, acknowledged_writes_survive_kill_9_of_every_node);
    tcase_add_test(tc, acknowledged_writes_survive_kill_9_of_one_node);
    tcase_add_test(tc, acknowledged_writes_survive_sigterm_and_restart);
    tcase_add_test(tc, a_request_to_a_down_shard_fails_within_its_timeout);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (harness_init() != 0)
        return EXIT_FAILURE;
    SRunner *sr = srunner_create(restart_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return harness_fini(failed);
}
