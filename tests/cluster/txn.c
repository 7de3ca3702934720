/*
 * txn - cross-shard transactions on real processes (docs/transactions.md).
 *
 * Each test starts a cluster of 3 kvnode processes (replicas = 3, 8 shards,
 * txn_timeout_ms = 2000) and checks from outside: a transaction over keys
 * of several shards commits everywhere or nowhere; concurrent transfers
 * between accounts on different shards keep the total; and, with the
 * failpoints of kvnode/txn.c (KV_FAILPOINT in the nodes' environment), a
 * coordinator that dies between the votes and the decision leaves every
 * participant aborted, and one that dies right after the commit point
 * leaves every participant committed, once the survivors recover it. The
 * time from the start of the transaction until nothing of it is left in
 * flight is printed; the bound checked is generous (the test machine may
 * be loaded): the promise is txn_timeout_ms plus one election timeout.
 */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "harness.h"
#include "kv.h"
#include "kv.pb-c.h"

#define NNODES 3
#define NSHARDS 8
#define TXN_TIMEOUT_MS 2000
#define ELECTION_MS 1000 /* the longest election timeout */
#define STATUS_MS 1000

static struct cluster *cl;

static void cluster_up_env(const char *failpoint)
{
    struct cluster_opts o = {.extra = "txn_timeout_ms = 2000\n"};
    static char once[256];
    if (failpoint) {
        /* Only the first node to get there dies: the client's retry of the
         * transaction reaches the next coordinator. */
        ck_assert_int_eq(harness_tempdir(once, sizeof once - 8), 0);
        strcat(once, "/once");
        setenv("KV_FAILPOINT", failpoint, 1);
        setenv("KV_FAILPOINT_ONCE", once, 1);
    }
    int rc = cluster_start_opts(&cl, NNODES, NSHARDS, 3, &o);
    unsetenv("KV_FAILPOINT");
    unsetenv("KV_FAILPOINT_ONCE");
    ck_assert_msg(rc == 0, "cluster did not start: %s", kv_strerror(rc));
}

static void cluster_up(void)
{
    cluster_up_env(NULL);
}

static void cluster_up_prepared(void)
{
    cluster_up_env("txn-prepared");
}

static void cluster_up_committed(void)
{
    cluster_up_env("txn-committed");
}

static void cluster_down(void)
{
    cluster_stop(cl);
    cl = NULL;
}

static kv *open_handle(uint32_t timeout_ms)
{
    kv_open_opts oo = {.timeout_ms = timeout_ms};
    kv *h = NULL;
    int rc = kv_open(cluster_conf_path(cl), &oo, &h);
    ck_assert_msg(rc == KV_OK, "kv_open: %s (%s)", kv_strerror(rc),
                  kv_errmsg(NULL));
    return h;
}

/* Fills KEYS[i] (NAME-i-...) with keys of N different shards. */
static void keys_on_shards(const char *name, char keys[][32], int n)
{
    uint32_t used[NSHARDS] = {0};
    int found = 0;
    for (int c = 0; found < n && c < 100000; c++) {
        char k[32];
        int len = snprintf(k, sizeof k, "%s-%d", name, c);
        uint32_t s = kv_shard_of(k, (size_t)len, NSHARDS);
        if (used[s])
            continue;
        used[s] = 1;
        memcpy(keys[found++], k, (size_t)len + 1);
    }
    ck_assert_int_eq(found, n);
}

static void put_str(kv *h, const char *k, const char *v)
{
    uint64_t ver = 0;
    int rc = kv_put(h, k, strlen(k), v, strlen(v), NULL, &ver);
    ck_assert_msg(rc == KV_OK, "put %s: %s (%s)", k, kv_strerror(rc),
                  kv_errmsg(h));
}

/* Asserts that K holds V (NULL: absent); returns its version. */
static uint64_t expect_str(kv *h, const char *k, const char *v)
{
    void *got = NULL;
    size_t n = 0;
    uint64_t ver = 0;
    int rc = kv_get(h, k, strlen(k), NULL, &got, &n, &ver);
    if (!v) {
        ck_assert_msg(rc == KV_ENOTFOUND, "get %s: %s, want not found", k,
                      kv_strerror(rc));
        return 0;
    }
    ck_assert_msg(rc == KV_OK, "get %s: %s (%s)", k, kv_strerror(rc),
                  kv_errmsg(h));
    ck_assert_msg(n == strlen(v) && memcmp(got, v, n) == 0,
                  "get %s: '%.*s', want '%s'", k, (int)n, (char *)got, v);
    kv_free(got);
    return ver;
}

/* Transactions the live nodes' shard leaders report (records and
 * prepared parts); -1 when no node answered. */
static int in_flight(kv *h)
{
    int total = 0, up = 0;
    for (size_t i = 0; i < admin_node_count(h); i++) {
        Kv__StatusResult *st = NULL;
        if (admin_status(h, i, STATUS_MS, &st) != KV_OK)
            continue;
        up++;
        for (size_t j = 0; j < st->n_shard_info; j++) {
            const Kv__ShardInfo *si = st->shard_info[j];
            if (si->role && strcmp(si->role, "leader") == 0)
                total += (int)si->n_txns;
        }
        kv__status_result__free_unpacked(st, NULL);
    }
    return up ? total : -1;
}

/* Waits until nothing is in flight; returns when (ms), or -1. */
static int64_t wait_settled(kv *h, int64_t limit_ms)
{
    int64_t until = harness_now_ms() + limit_ms;
    while (harness_now_ms() < until) {
        if (in_flight(h) == 0)
            return harness_now_ms();
        harness_sleep_ms(50);
    }
    return -1;
}

/* The harness index of a node that is not running, or -1. */
static int dead_node(void)
{
    for (int i = 0; i < NNODES; i++)
        if (!cluster_node_running(cl, i))
            return i;
    return -1;
}

/* --- commit everywhere or nowhere ---------------------------------------- */

START_TEST(a_cross_shard_transaction_commits_on_every_shard_or_none)
{
    kv *h = open_handle(5000);
    char k[3][32];
    keys_on_shards("x", k, 3);
    put_str(h, k[0], "a0");
    uint64_t v0 = expect_str(h, k[0], "a0");

    kv_txn *t = NULL;
    ck_assert_int_eq(kv_txn_begin(h, NULL, &t), KV_OK);
    ck_assert_int_eq(kv_txn_if_version(t, k[0], strlen(k[0]), v0), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, k[0], strlen(k[0]), "a1", 2), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, k[1], strlen(k[1]), "b1", 2), KV_OK);
    ck_assert_int_eq(kv_txn_if_absent(t, k[2], strlen(k[2])), KV_OK);
    ck_assert_int_eq(kv_txn_del(t, k[2], strlen(k[2])), KV_OK);
    uint64_t *vers = NULL;
    size_t nv = 0;
    int rc = kv_txn_commit(t, &vers, &nv);
    ck_assert_msg(rc == KV_OK, "commit: %s (%s)", kv_strerror(rc),
                  kv_errmsg(h));
    ck_assert_uint_eq(nv, 3);
    ck_assert_uint_eq(expect_str(h, k[0], "a1"), vers[0]);
    ck_assert_uint_eq(expect_str(h, k[1], "b1"), vers[1]);
    ck_assert_uint_eq(vers[2], 0);
    expect_str(h, k[2], NULL);
    kv_free(vers);

    /* a condition on one shard fails: nothing is written on any shard */
    ck_assert_int_eq(kv_txn_begin(h, NULL, &t), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, k[1], strlen(k[1]), "b2", 2), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, k[2], strlen(k[2]), "c2", 2), KV_OK);
    ck_assert_int_eq(kv_txn_if_version(t, k[0], strlen(k[0]), v0), KV_OK);
    rc = kv_txn_commit(t, NULL, NULL);
    ck_assert_msg(rc == KV_ECONFLICT, "commit: %s, want a conflict",
                  kv_strerror(rc));
    ck_assert_msg(strstr(kv_errmsg(h), k[0]) != NULL,
                  "the message names the key: %s", kv_errmsg(h));
    expect_str(h, k[1], "b1");
    expect_str(h, k[2], NULL);

    /* reads across shards, validated at commit */
    ck_assert_int_eq(kv_txn_begin(h, NULL, &t), KV_OK);
    void *val = NULL;
    size_t vlen = 0;
    ck_assert_int_eq(kv_txn_get(t, k[0], strlen(k[0]), &val, &vlen, NULL),
                     KV_OK);
    kv_free(val);
    ck_assert_int_eq(kv_txn_get(t, k[1], strlen(k[1]), &val, &vlen, NULL),
                     KV_OK);
    kv_free(val);
    ck_assert_int_eq(kv_txn_commit(t, NULL, NULL), KV_OK);
    ck_assert_int_ge(wait_settled(h, 5000), 0);
    kv_close(h);
    ck_assert_int_eq(cluster_stop(cl), 0);
    cl = NULL;
}
END_TEST

/* --- concurrent transfers ------------------------------------------------- */

#define ACCOUNTS 4
#define START_BALANCE 1000
#define TRANSFERS 40

static char accounts[ACCOUNTS][32];

struct transfer {
    int from, to, amount;
    uint64_t seed;
};

static long balance_of(const void *v, size_t n)
{
    char buf[32];
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, v, n);
    buf[n] = '\0';
    return strtol(buf, NULL, 10);
}

/* One transfer inside kv_txn_run: read both balances, move AMOUNT if the
 * source has it. */
static int transfer_fn(kv_txn *t, void *arg)
{
    const struct transfer *tr = arg;
    long bal[2];
    const int who[2] = {tr->from, tr->to};
    for (int i = 0; i < 2; i++) {
        void *v = NULL;
        size_t n = 0;
        int rc = kv_txn_get(t, accounts[who[i]], strlen(accounts[who[i]]), &v,
                            &n, NULL);
        if (rc != KV_OK)
            return rc;
        bal[i] = balance_of(v, n);
        kv_free(v);
    }
    if (bal[0] < tr->amount)
        return KV_OK; /* nothing to move: commits the reads only */
    for (int i = 0; i < 2; i++) {
        char buf[32];
        long nb = i == 0 ? bal[0] - tr->amount : bal[1] + tr->amount;
        int n = snprintf(buf, sizeof buf, "%ld", nb);
        int rc = kv_txn_put(t, accounts[who[i]], strlen(accounts[who[i]]), buf,
                            (size_t)n);
        if (rc != KV_OK)
            return rc;
    }
    return KV_OK;
}

static void *transfer_thread(void *arg)
{
    uint64_t seed = *(uint64_t *)arg;
    kv *h = NULL;
    kv_open_opts oo = {.timeout_ms = 10000};
    if (kv_open(cluster_conf_path(cl), &oo, &h) != KV_OK)
        return (void *)1;
    intptr_t bad = 0;
    for (int i = 0; i < TRANSFERS && !bad; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        struct transfer tr = {.from = (int)((seed >> 33) % ACCOUNTS),
                              .amount = (int)((seed >> 40) % 300) + 1};
        tr.to = (tr.from + 1 + (int)((seed >> 50) % (ACCOUNTS - 1))) % ACCOUNTS;
        int rc = kv_txn_run(h, NULL, transfer_fn, &tr);
        if (rc != KV_OK) {
            fprintf(stderr, "transfer: %s (%s)\n", kv_strerror(rc),
                    kv_errmsg(h));
            bad = 1;
        }
    }
    kv_close(h);
    return (void *)bad;
}

START_TEST(concurrent_transfers_across_shards_keep_the_total)
{
    kv *h = open_handle(5000);
    keys_on_shards("acct", accounts, ACCOUNTS);
    char buf[32];
    snprintf(buf, sizeof buf, "%d", START_BALANCE);
    for (int i = 0; i < ACCOUNTS; i++)
        put_str(h, accounts[i], buf);
    pthread_t th[3];
    uint64_t seeds[3] = {11, 22, 33};
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(
            pthread_create(&th[i], NULL, transfer_thread, &seeds[i]), 0);
    int bad = 0;
    for (int i = 0; i < 3; i++) {
        void *r = NULL;
        pthread_join(th[i], &r);
        bad |= r != NULL;
    }
    ck_assert_msg(!bad, "a transfer failed (see above)");
    long total = 0;
    for (int i = 0; i < ACCOUNTS; i++) {
        void *v = NULL;
        size_t n = 0;
        ck_assert_int_eq(
            kv_get(h, accounts[i], strlen(accounts[i]), NULL, &v, &n, NULL),
            KV_OK);
        long b = balance_of(v, n);
        kv_free(v);
        ck_assert_msg(b >= 0, "account %d is negative: %ld", i, b);
        total += b;
    }
    ck_assert_int_eq(total, (long)ACCOUNTS * START_BALANCE);
    ck_assert_int_ge(wait_settled(h, 5000), 0);
    kv_close(h);
    ck_assert_int_eq(cluster_stop(cl), 0);
    cl = NULL;
}
END_TEST

/* --- a coordinator that dies --------------------------------------------- */

/* The admin index of the node leading SHARD (by status), or -1. */
static int leader_of(kv *h, uint32_t shard)
{
    for (size_t i = 0; i < admin_node_count(h); i++) {
        Kv__StatusResult *st = NULL;
        if (admin_status(h, i, STATUS_MS, &st) != KV_OK)
            continue;
        int yes = 0;
        for (size_t j = 0; j < st->n_shard_info; j++) {
            const Kv__ShardInfo *si = st->shard_info[j];
            yes |= si->shard == shard && si->role &&
                   strcmp(si->role, "leader") == 0;
        }
        kv__status_result__free_unpacked(st, NULL);
        if (yes)
            return (int)i;
    }
    return -1;
}

/* Sends one transaction writing K[0..1]=VAL straight to its home shard's
 * leader, once (no client retry, as from a client that died too), and
 * waits until a node died at the failpoint. Returns when it was sent. */
static int64_t doomed_txn(kv *h, char k[][32], const char *val)
{
    void *buf = NULL;
    size_t n = harness_encode_txn_puts(k, val, "txn-test-client!", 16, 1, 77,
                                       1500, &buf);
    int home = -1;
    for (int i = 0; i < 100 && home < 0; i++) {
        home = leader_of(h, kv_shard_of(k[0], strlen(k[0]), NSHARDS));
        if (home < 0)
            harness_sleep_ms(50);
    }
    ck_assert_int_ge(home, 0);
    int64_t t0 = harness_now_ms();
    Kv__Envelope *out = NULL;
    int rc = admin_raw(h, (size_t)home, buf, n, 1500, &out);
    free(buf);
    if (rc == KV_OK) {
        ck_abort_msg("the coordinator answered (%d: %s) instead of dying",
                     out->response ? out->response->code : 0,
                     out->response && out->response->message
                         ? out->response->message
                         : "");
        kv__envelope__free_unpacked(out, NULL);
    }
    int dead = -1;
    for (int i = 0; i < 50 && dead < 0; i++) {
        dead = dead_node();
        if (dead < 0)
            harness_sleep_ms(20);
    }
    ck_assert_msg(dead >= 0, "no node reached the failpoint");
    return t0;
}

/* Waits for the survivors to settle it, prints how long it took, and
 * restarts the dead node. */
static void settle_and_restart(kv *h, int64_t t0, const char *what)
{
    int64_t done = wait_settled(h, 30000);
    ck_assert_msg(done >= 0, "%s: still in flight after 30 s", what);
    int64_t ms = done - t0;
    fprintf(stderr,
            "%s: settled %" PRId64 " ms after the transaction began "
            "(promise: txn_timeout %d + one election timeout %d = %d ms)\n",
            what, ms, TXN_TIMEOUT_MS, ELECTION_MS,
            TXN_TIMEOUT_MS + ELECTION_MS);
    /* Generous: the promise, plus the status polling and a loaded host. */
    ck_assert_int_le(ms, 3 * (TXN_TIMEOUT_MS + ELECTION_MS));
    int dead = dead_node();
    ck_assert_int_ge(dead, 0);
    ck_assert_int_eq(cluster_restart_node(cl, dead), 0);
}

START_TEST(a_coordinator_killed_before_the_decision_leaves_every_part_aborted)
{
    kv *h = open_handle(5000);
    char k[2][32];
    keys_on_shards("fp", k, 2);
    put_str(h, k[0], "old");
    put_str(h, k[1], "old");
    int64_t t0 = doomed_txn(h, k, "new");
    /* Undecided: a read sees the value from before the transaction. */
    expect_str(h, k[1], "old");
    settle_and_restart(h, t0, "coordinator killed after the votes");
    expect_str(h, k[0], "old");
    expect_str(h, k[1], "old");
    /* nothing stays locked */
    put_str(h, k[0], "after");
    put_str(h, k[1], "after");
    ck_assert_int_eq(in_flight(h), 0);
    kv_close(h);
}
END_TEST

/* The same failpoint with libkv's retries: the retry reaches the next
 * coordinator, which finds the record and carries on from it. Whatever the
 * client was told, both shards agree, and a commit it was told of holds. */
START_TEST(a_client_retry_after_the_coordinator_died_finds_one_outcome)
{
    kv *h = open_handle(5000);
    char k[2][32];
    keys_on_shards("fr", k, 2);
    put_str(h, k[0], "old");
    put_str(h, k[1], "old");
    kv_opts o = {.timeout_ms = 8000};
    kv_txn *t = NULL;
    ck_assert_int_eq(kv_txn_begin(h, &o, &t), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, k[0], strlen(k[0]), "new", 3), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, k[1], strlen(k[1]), "new", 3), KV_OK);
    int64_t t0 = harness_now_ms();
    int rc = kv_txn_commit(t, NULL, NULL);
    fprintf(stderr, "commit through a dying coordinator: %s (%s)\n",
            kv_strerror(rc), rc == KV_OK ? "" : kv_errmsg(h));
    ck_assert_int_ge(dead_node(), 0);
    settle_and_restart(h, t0, "client retry after the coordinator died");
    void *v0 = NULL, *v1 = NULL;
    size_t n0 = 0, n1 = 0;
    ck_assert_int_eq(kv_get(h, k[0], strlen(k[0]), NULL, &v0, &n0, NULL),
                     KV_OK);
    ck_assert_int_eq(kv_get(h, k[1], strlen(k[1]), NULL, &v1, &n1, NULL),
                     KV_OK);
    ck_assert_msg(n0 == n1 && memcmp(v0, v1, n0) == 0,
                  "the shards disagree: '%.*s' and '%.*s'", (int)n0, (char *)v0,
                  (int)n1, (char *)v1);
    if (rc == KV_OK)
        ck_assert_msg(n0 == 3 && memcmp(v0, "new", 3) == 0,
                      "a commit the client was told of is missing");
    kv_free(v0);
    kv_free(v1);
    kv_close(h);
}
END_TEST

START_TEST(
    a_coordinator_killed_after_the_commit_point_leaves_every_part_committed)
{
    kv *h = open_handle(5000);
    char k[2][32];
    keys_on_shards("fq", k, 2);
    put_str(h, k[0], "old");
    put_str(h, k[1], "old");
    int64_t t0 = doomed_txn(h, k, "new");
    /* Committed (its record says so), even before any intent is resolved:
     * a read asks the record and sees the transaction's write. */
    expect_str(h, k[1], "new");
    expect_str(h, k[0], "new");
    settle_and_restart(h, t0, "coordinator killed after the commit point");
    expect_str(h, k[0], "new");
    expect_str(h, k[1], "new");
    put_str(h, k[0], "after");
    ck_assert_int_eq(in_flight(h), 0);
    kv_close(h);
}
END_TEST

static Suite *txn_suite(void)
{
    Suite *s = suite_create("txn");
    TCase *tc = tcase_create("commit");
    tcase_add_checked_fixture(tc, cluster_up, cluster_down);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc,
                   a_cross_shard_transaction_commits_on_every_shard_or_none);
    tcase_add_test(tc, concurrent_transfers_across_shards_keep_the_total);
    suite_add_tcase(s, tc);

    tc = tcase_create("failpoint prepared");
    tcase_add_checked_fixture(tc, cluster_up_prepared, cluster_down);
    tcase_set_timeout(tc, 120);
    tcase_add_test(
        tc, a_coordinator_killed_before_the_decision_leaves_every_part_aborted);
    tcase_add_test(tc,
                   a_client_retry_after_the_coordinator_died_finds_one_outcome);
    suite_add_tcase(s, tc);

    tc = tcase_create("failpoint committed");
    tcase_add_checked_fixture(tc, cluster_up_committed, cluster_down);
    tcase_set_timeout(tc, 120);
    tcase_add_test(
        tc,
        a_coordinator_killed_after_the_commit_point_leaves_every_part_committed);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (harness_init() != 0)
        return EXIT_FAILURE;
    SRunner *sr = srunner_create(txn_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return harness_fini(failed);
}
