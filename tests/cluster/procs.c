/*
 * procs - procedures on real processes (docs/procedures.md).
 *
 * A cluster of 3 kvnode processes (replicas = 3, 8 shards) loads the
 * example plugins of procs/ (from the directory of $KVNODE: build/procs or
 * build/san/procs). Checked from outside through libkv: every built-in
 * (incr, append, cas, mget) and example plugin (ratelimit, sum_prefix with
 * kv_call_all, move), that an error or an exceeded budget leaves the store
 * unchanged, that concurrent increments on hot keys are each applied once,
 * that an unknown procedure is named in the error, and that a node whose
 * plugin file differs from its peers' makes calls of its procedures fail
 * with a message naming both nodes. The same procedures in embedded mode.
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include <check.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "kv.h"
#include "kvproc.h"

#define NNODES 3
#define NSHARDS 8

static struct cluster *cl;
static char procdir[PATH_MAX + 16];

/* DIR/procs next to the kvnode binary. */
static void find_procs(void)
{
    char buf[1024], real[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", harness_kvnode());
    const char *dir = dirname(buf);
    if (realpath(dir, real))
        dir = real;
    snprintf(procdir, sizeof procdir, "%s/procs", dir);
}

static void start_with(const char *extra)
{
    char conf[3 * PATH_MAX + 256];
    find_procs();
    snprintf(conf, sizeof conf,
             "procedures = %s/ratelimit.so %s/sum_prefix.so %s/move.so\n%s",
             procdir, procdir, procdir, extra ? extra : "");
    struct cluster_opts o = {.extra = conf};
    int rc = cluster_start_opts(&cl, NNODES, NSHARDS, 3, &o);
    ck_assert_msg(rc == 0, "cluster did not start: %s", kv_strerror(rc));
}

static void cluster_up(void)
{
    start_with(NULL);
}

static void cluster_up_small_budgets(void)
{
    start_with("proc_max_keys = 4\nproc_max_write_bytes = 64\n");
}

static void cluster_down(void)
{
    cluster_stop(cl);
    cl = NULL;
}

static kv *open_handle(void)
{
    kv_open_opts oo = {.timeout_ms = 10000};
    kv *h = NULL;
    int rc = kv_open(cluster_conf_path(cl), &oo, &h);
    ck_assert_msg(rc == KV_OK, "kv_open: %s (%s)", kv_strerror(rc),
                  kv_errmsg(NULL));
    return h;
}

static void put_str(kv *h, const char *k, const char *v)
{
    int rc = kv_put(h, k, strlen(k), v, strlen(v), NULL, NULL);
    ck_assert_msg(rc == KV_OK, "put %s: %s (%s)", k, kv_strerror(rc),
                  kv_errmsg(h));
}

/* Asserts that K holds V (NULL: absent). */
static void expect_str(kv *h, const char *k, const char *v)
{
    void *got = NULL;
    size_t n = 0;
    int rc = kv_get(h, k, strlen(k), NULL, &got, &n, NULL);
    if (!v) {
        ck_assert_msg(rc == KV_ENOTFOUND, "get %s: %s, want absent", k,
                      kv_strerror(rc));
        return;
    }
    ck_assert_msg(rc == KV_OK, "get %s: %s (%s)", k, kv_strerror(rc),
                  kv_errmsg(h));
    ck_assert_msg(n == strlen(v) && memcmp(got, v, n) == 0,
                  "get %s: '%.*s', want '%s'", k, (int)n, (char *)got, v);
    kv_free(got);
}

/* Calls NAME on K with ARG (text); expects CODE and, when WANT is not
 * NULL, that reply. */
static void call_expect(kv *h, const char *name, const char *k, const void *arg,
                        size_t alen, int code, const char *want)
{
    void *rep = NULL;
    size_t rlen = 0;
    int rc = kv_call(h, name, k, strlen(k), arg, alen, NULL, &rep, &rlen);
    ck_assert_msg(rc == code, "%s %s: %s (%s), want %s", name, k,
                  kv_strerror(rc), kv_errmsg(h), kv_strerror(code));
    if (want)
        ck_assert_msg(rlen == strlen(want) && memcmp(rep, want, rlen) == 0,
                      "%s %s replied '%.*s', want '%s'", name, k, (int)rlen,
                      rep ? (char *)rep : "", want);
    kv_free(rep);
}

static void call_text(kv *h, const char *name, const char *k, const char *arg,
                      int code, const char *want)
{
    call_expect(h, name, k, arg, arg ? strlen(arg) : 0, code, want);
}

/* Appends a list item to BUF at *N. */
static void list_add(unsigned char *buf, size_t *n, const char *item)
{
    uint32_t len = item ? (uint32_t)strlen(item) : KV_LIST_MISSING;
    buf[(*n)++] = (unsigned char)(len >> 24);
    buf[(*n)++] = (unsigned char)(len >> 16);
    buf[(*n)++] = (unsigned char)(len >> 8);
    buf[(*n)++] = (unsigned char)len;
    if (item) {
        memcpy(buf + *n, item, strlen(item));
        *n += strlen(item);
    }
}

static void check_incr(kv *h)
{
    call_text(h, "incr", "p/counter", NULL, KV_OK, "1");
    call_text(h, "incr", "p/counter", NULL, KV_OK, "2");
    call_text(h, "incr", "p/counter", "5", KV_OK, "7");
    call_text(h, "incr", "p/counter", "-10", KV_OK, "-3");
    expect_str(h, "p/counter", "-3");
    /* Errors change nothing. */
    put_str(h, "p/text", "hello");
    call_text(h, "incr", "p/text", NULL, KV_EINVAL, NULL);
    expect_str(h, "p/text", "hello");
    call_text(h, "incr", "p/counter", "x1", KV_EINVAL, NULL);
    put_str(h, "p/big", "9223372036854775806");
    call_text(h, "incr", "p/big", NULL, KV_OK, "9223372036854775807");
    call_text(h, "incr", "p/big", NULL, KV_ERANGE, NULL);
    expect_str(h, "p/big", "9223372036854775807");
}

START_TEST(builtins_do_what_they_say_and_errors_change_nothing)
{
    kv *h = open_handle();
    check_incr(h);
    call_text(h, "append", "p/log", "ab", KV_OK, "2");
    call_text(h, "append", "p/log", "cde", KV_OK, "5");
    expect_str(h, "p/log", "abcde");

    unsigned char arg[256], want[64];
    size_t n = 0, wn = 0;
    list_add(arg, &n, "abcde");
    list_add(arg, &n, "xyz");
    call_expect(h, "cas", "p/log", arg, n, KV_OK, NULL);
    expect_str(h, "p/log", "xyz");
    /* A mismatch: KV_ECONFLICT with the current value, nothing written. */
    void *rep = NULL;
    size_t rlen = 0;
    int rc = kv_call(h, "cas", "p/log", 5, arg, n, NULL, &rep, &rlen);
    ck_assert_int_eq(rc, KV_ECONFLICT);
    list_add(want, &wn, "xyz");
    ck_assert_msg(rlen == wn && memcmp(rep, want, wn) == 0,
                  "cas conflict reply of %zu bytes", rlen);
    kv_free(rep);
    expect_str(h, "p/log", "xyz");
    /* Expected absent. */
    n = 0;
    list_add(arg, &n, NULL);
    list_add(arg, &n, "new");
    call_expect(h, "cas", "p/fresh", arg, n, KV_OK, NULL);
    expect_str(h, "p/fresh", "new");

    /* mget within a hash tag, one key absent. */
    put_str(h, "{t}a", "A");
    put_str(h, "{t}c", "C");
    n = 0;
    list_add(arg, &n, "{t}b");
    list_add(arg, &n, "{t}c");
    wn = 0;
    list_add(want, &wn, "A");
    list_add(want, &wn, NULL);
    list_add(want, &wn, "C");
    rep = NULL;
    rc = kv_call(h, "mget", "{t}a", 4, arg, n, NULL, &rep, &rlen);
    ck_assert_msg(rc == KV_OK, "mget: %s (%s)", kv_strerror(rc), kv_errmsg(h));
    ck_assert_msg(rlen == wn && memcmp(rep, want, wn) == 0,
                  "mget reply of %zu bytes", rlen);
    kv_free(rep);

    /* Unknown procedures are named. */
    call_text(h, "no_such_proc", "p/x", NULL, KV_ENOPROC, NULL);
    ck_assert_msg(strstr(kv_errmsg(h), "no_such_proc") != NULL, "message: %s",
                  kv_errmsg(h));
    kv_close(h);
}
END_TEST

START_TEST(plugins_run_and_a_failing_one_writes_nothing)
{
    kv *h = open_handle();
    /* ratelimit: capacity 2, 1 token/s, at a fixed time. */
    call_text(h, "ratelimit", "p/rl", "2 1 1000000", KV_OK, NULL);
    call_text(h, "ratelimit", "p/rl", "2 1 1000000", KV_OK, NULL);
    void *rep = NULL;
    size_t rlen = 0;
    const char *arg = "2 1 1000000";
    int rc =
        kv_call(h, "ratelimit", "p/rl", 4, arg, strlen(arg), NULL, &rep, &rlen);
    ck_assert_int_eq(rc, KV_OK);
    ck_assert_msg(rlen >= 6 && memcmp(rep, "denied", 6) == 0,
                  "third call: '%.*s'", (int)rlen, (char *)rep);
    kv_free(rep);
    arg = "2 1 1002000"; /* two seconds later: allowed again */
    rc =
        kv_call(h, "ratelimit", "p/rl", 4, arg, strlen(arg), NULL, &rep, &rlen);
    ck_assert_int_eq(rc, KV_OK);
    ck_assert_msg(rlen >= 7 && memcmp(rep, "allowed", 7) == 0,
                  "after a refill: '%.*s'", (int)rlen, (char *)rep);
    kv_free(rep);

    /* move within a hash tag; insufficient funds change nothing, though
     * the plugin buffered the destination's write first. */
    put_str(h, "{acme}.alice", "100");
    put_str(h, "{acme}.bob", "5");
    unsigned char a[64];
    size_t n = 0;
    list_add(a, &n, "{acme}.bob");
    list_add(a, &n, "30");
    call_expect(h, "move", "{acme}.alice", a, n, KV_OK, NULL);
    expect_str(h, "{acme}.alice", "70");
    expect_str(h, "{acme}.bob", "35");
    n = 0;
    list_add(a, &n, "{acme}.bob");
    list_add(a, &n, "1000");
    call_expect(h, "move", "{acme}.alice", a, n, KV_ECONFLICT, NULL);
    expect_str(h, "{acme}.alice", "70");
    expect_str(h, "{acme}.bob", "35");
    /* A key outside the call's shard is refused. */
    n = 0;
    list_add(a, &n, "elsewhere.carol");
    list_add(a, &n, "1");
    if (kv_shard_of("elsewhere.carol", 15, NSHARDS) !=
        kv_shard_of("{acme}.alice", 12, NSHARDS)) {
        call_expect(h, "move", "{acme}.alice", a, n, KV_EINVAL, NULL);
        expect_str(h, "elsewhere.carol", NULL);
        expect_str(h, "{acme}.alice", "70");
    }

    /* sum_prefix on every shard. */
    long long sum = 0;
    for (int i = 0; i < 60; i++) {
        char k[32], v[32];
        snprintf(k, sizeof k, "sum/k%d", i);
        snprintf(v, sizeof v, "%d", i);
        put_str(h, k, v);
        sum += i;
    }
    put_str(h, "sum/not-a-number", "abc");
    rep = NULL;
    rc = kv_call_all(h, "sum_prefix", "sum/", 4, NULL, &rep, &rlen);
    ck_assert_msg(rc == KV_OK, "call-all: %s (%s)", kv_strerror(rc),
                  kv_errmsg(h));
    char want[64];
    snprintf(want, sizeof want, "60 %lld 1", sum);
    ck_assert_msg(rlen == strlen(want) && memcmp(rep, want, rlen) == 0,
                  "sum_prefix: '%.*s', want '%s'", (int)rlen, (char *)rep,
                  want);
    kv_free(rep);
    /* call-all runs only read-only procedures. */
    rep = NULL;
    rc = kv_call_all(h, "incr", NULL, 0, NULL, &rep, &rlen);
    ck_assert_int_eq(rc, KV_EINVAL);
    kv_close(h);
}
END_TEST

START_TEST(a_call_over_a_budget_fails_and_writes_nothing)
{
    kv *h = open_handle();
    put_str(h, "{b}1", "one");
    /* mget of 6 keys: over proc_max_keys = 4. */
    unsigned char arg[128];
    size_t n = 0;
    for (int i = 2; i <= 6; i++) {
        char k[16];
        snprintf(k, sizeof k, "{b}%d", i);
        list_add(arg, &n, k);
    }
    call_expect(h, "mget", "{b}1", arg, n, KV_EBUDGET, NULL);
    ck_assert_msg(strstr(kv_errmsg(h), "proc_max_keys") != NULL, "message: %s",
                  kv_errmsg(h));
    /* append past proc_max_write_bytes = 64: nothing written. */
    char big[100];
    memset(big, 'x', sizeof big);
    call_expect(h, "append", "{b}1", big, sizeof big, KV_EBUDGET, NULL);
    expect_str(h, "{b}1", "one");
    kv_close(h);
}
END_TEST

#define HOT_THREADS 8
#define HOT_CALLS 150
#define HOT_KEYS 4

static int hot_failures;
static pthread_mutex_t hot_mu = PTHREAD_MUTEX_INITIALIZER;

static void *hot_worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    kv *h = NULL;
    kv_open_opts oo = {.timeout_ms = 10000};
    if (kv_open(cluster_conf_path(cl), &oo, &h) != KV_OK)
        return NULL;
    for (int i = 0; i < HOT_CALLS; i++) {
        char k[32];
        snprintf(k, sizeof k, "hot/%d", (i + id) % HOT_KEYS);
        void *rep = NULL;
        size_t rlen = 0;
        int rc = kv_call(h, "incr", k, strlen(k), NULL, 0, NULL, &rep, &rlen);
        kv_free(rep);
        if (rc != KV_OK) {
            pthread_mutex_lock(&hot_mu);
            if (!hot_failures)
                fprintf(stderr, "incr %s: %s (%s)\n", k, kv_strerror(rc),
                        kv_errmsg(h));
            hot_failures++;
            pthread_mutex_unlock(&hot_mu);
        }
    }
    kv_close(h);
    return NULL;
}

START_TEST(concurrent_increments_on_hot_keys_each_count_once)
{
    pthread_t t[HOT_THREADS];
    hot_failures = 0;
    for (int i = 0; i < HOT_THREADS; i++)
        ck_assert_int_eq(
            pthread_create(&t[i], NULL, hot_worker, (void *)(intptr_t)i), 0);
    for (int i = 0; i < HOT_THREADS; i++)
        pthread_join(t[i], NULL);
    ck_assert_int_eq(hot_failures, 0);
    kv *h = open_handle();
    long long total = 0;
    for (int i = 0; i < HOT_KEYS; i++) {
        char k[32];
        snprintf(k, sizeof k, "hot/%d", i);
        void *v = NULL;
        size_t n = 0;
        ck_assert_int_eq(kv_get(h, k, strlen(k), NULL, &v, &n, NULL), KV_OK);
        char text[32];
        snprintf(text, sizeof text, "%.*s", (int)n, (char *)v);
        total += atoll(text);
        kv_free(v);
    }
    ck_assert_msg(total == HOT_THREADS * HOT_CALLS,
                  "the hot keys sum to %lld, want %d", total,
                  HOT_THREADS * HOT_CALLS);
    kv_close(h);
}
END_TEST

/* Copies SRC to DST, appending EXTRA bytes (an ELF file still loads with
 * bytes after its end, but hashes differently). */
static void copy_file(const char *src, const char *dst, const char *extra)
{
    FILE *in = fopen(src, "rb");
    ck_assert_msg(in != NULL, "cannot read %s", src);
    FILE *out = fopen(dst, "wb");
    ck_assert_msg(out != NULL, "cannot write %s", dst);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        ck_assert_uint_eq(fwrite(buf, 1, n, out), n);
    if (extra)
        fputs(extra, out);
    fclose(in);
    ck_assert_int_eq(fclose(out), 0);
}

START_TEST(a_plugin_that_differs_between_nodes_is_refused_by_name)
{
    char dir[512], so[600], extra[700], src[PATH_MAX + 64];
    find_procs();
    ck_assert_int_eq(harness_tempdir(dir, sizeof dir), 0);
    snprintf(so, sizeof so, "%s/move.so", dir);
    snprintf(src, sizeof src, "%s/move.so", procdir);
    copy_file(src, so, NULL);
    snprintf(extra, sizeof extra, "procedures = %s\n", so);
    struct cluster_opts o = {.extra = extra};
    ck_assert_int_eq(cluster_start_opts(&cl, NNODES, NSHARDS, 3, &o), 0);
    kv *h = open_handle();
    put_str(h, "{z}.a", "10");
    unsigned char a[64];
    size_t n = 0;
    list_add(a, &n, "{z}.b");
    list_add(a, &n, "1");
    call_expect(h, "move", "{z}.a", a, n, KV_OK, NULL);
    /* Node 3 restarts with another build of the plugin, installed as a
     * new file (rename), as an install does: the running nodes keep the
     * old file mapped. */
    ck_assert_int_eq(cluster_kill(cl, 2, SIGTERM), 0);
    char tmp[700];
    snprintf(tmp, sizeof tmp, "%s.new", so);
    copy_file(src, tmp, "another build");
    ck_assert_int_eq(rename(tmp, so), 0);
    ck_assert_int_eq(cluster_restart_node(cl, 2), 0);
    harness_sleep_ms(2500); /* every node hears every other's list */
    void *rep = NULL;
    size_t rlen = 0;
    int rc = kv_call(h, "move", "{z}.a", 5, a, n, NULL, &rep, &rlen);
    kv_free(rep);
    ck_assert_msg(rc == KV_EPROC, "move after the change: %s (%s)",
                  kv_strerror(rc), kv_errmsg(h));
    ck_assert_msg(strstr(kv_errmsg(h), "move.so") &&
                      strstr(kv_errmsg(h), "node 3"),
                  "message: %s", kv_errmsg(h));
    expect_str(h, "{z}.a", "9");
    /* Built-ins are part of kvnode: not affected. */
    call_text(h, "incr", "{z}.n", NULL, KV_OK, "1");
    kv_close(h);
    ck_assert_int_eq(cluster_stop(cl), 0);
    cl = NULL;
}
END_TEST

START_TEST(embedded_mode_runs_the_same_procedures)
{
    char dir[512], env[2 * PATH_MAX + 64], path[600];
    find_procs();
    ck_assert_int_eq(harness_tempdir(dir, sizeof dir), 0);
    snprintf(env, sizeof env, "%s/move.so %s/sum_prefix.so", procdir, procdir);
    setenv("KV_PROCEDURES", env, 1);
    snprintf(path, sizeof path, "embedded:%s/db", dir);
    kv *h = NULL;
    int rc = kv_open(path, NULL, &h);
    unsetenv("KV_PROCEDURES");
    ck_assert_msg(rc == KV_OK, "kv_open: %s (%s)", kv_strerror(rc),
                  kv_errmsg(NULL));
    check_incr(h);
    put_str(h, "{e}.a", "3");
    unsigned char a[64];
    size_t n = 0;
    list_add(a, &n, "{e}.b");
    list_add(a, &n, "5");
    call_expect(h, "move", "{e}.a", a, n, KV_ECONFLICT, NULL);
    expect_str(h, "{e}.a", "3");
    expect_str(h, "{e}.b", NULL);
    void *rep = NULL;
    size_t rlen = 0;
    put_str(h, "sum/1", "4");
    put_str(h, "sum/2", "5");
    rc = kv_call_all(h, "sum_prefix", "sum/", 4, NULL, &rep, &rlen);
    ck_assert_int_eq(rc, KV_OK);
    ck_assert_msg(rlen == 5 && memcmp(rep, "2 9 0", 5) == 0,
                  "sum_prefix: '%.*s'", (int)rlen, (char *)rep);
    kv_free(rep);
    kv_close(h);
    harness_rmtree(dir);
}
END_TEST

/* The script test plugin (tests/unit/procs/script.c) writes and replies
 * what its argument says: effects (writes and reply together) that do not
 * fit in one message are refused before they are proposed, since no peer
 * could take the entry. */
START_TEST(effects_too_big_for_one_message_are_refused)
{
    char conf[PATH_MAX + 512];
    find_procs();
    snprintf(conf, sizeof conf,
             "procedures = %s/../testprocs/script.so\n"
             "max_message_bytes = 16384\nmax_value_bytes = 8192\n"
             "max_key_bytes = 1024\nmax_txn_bytes = 12288\n"
             "proc_max_write_bytes = 12288\nproc_max_reply_bytes = 12288\n",
             procdir);
    struct cluster_opts o = {.extra = conf};
    ck_assert_int_eq(cluster_start_opts(&cl, NNODES, NSHARDS, 3, &o), 0);
    kv *h = open_handle();
    unsigned char arg[8192];
    char cmd[1100], fill[1001];
    memset(fill, 'v', 1000);
    fill[1000] = '\0';
    for (int big = 0; big <= 1; big++) {
        size_t n = 0;
        int puts = big ? 6 : 2;
        for (int i = 0; i < puts; i++) {
            snprintf(cmd, sizeof cmd, "put {s}%d.%d %s", big, i, fill);
            list_add(arg, &n, cmd);
        }
        list_add(arg, &n, big ? "reply 12000" : "reply 2000");
        char key[32];
        snprintf(key, sizeof key, "{s}%d.0", big);
        void *rep = NULL;
        size_t rlen = 0;
        int rc =
            kv_call(h, "script", key, strlen(key), arg, n, NULL, &rep, &rlen);
        kv_free(rep);
        ck_assert_msg(rc == (big ? KV_ETOOBIG : KV_OK), "%s: %s (%s)",
                      big ? "too big" : "fits", kv_strerror(rc), kv_errmsg(h));
        for (int i = 0; i < puts; i++) {
            snprintf(key, sizeof key, "{s}%d.%d", big, i);
            if (big)
                expect_str(h, key, NULL);
            else
                expect_str(h, key, fill);
        }
    }
    kv_close(h);
    ck_assert_int_eq(cluster_stop(cl), 0);
    cl = NULL;
}
END_TEST

static Suite *procs_suite(void)
{
    Suite *s = suite_create("procs");
    TCase *tc = tcase_create("cluster");
    tcase_add_checked_fixture(tc, cluster_up, cluster_down);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, builtins_do_what_they_say_and_errors_change_nothing);
    tcase_add_test(tc, plugins_run_and_a_failing_one_writes_nothing);
    tcase_add_test(tc, concurrent_increments_on_hot_keys_each_count_once);
    suite_add_tcase(s, tc);

    tc = tcase_create("budgets");
    tcase_add_checked_fixture(tc, cluster_up_small_budgets, cluster_down);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, a_call_over_a_budget_fails_and_writes_nothing);
    suite_add_tcase(s, tc);

    tc = tcase_create("plugins");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, a_plugin_that_differs_between_nodes_is_refused_by_name);
    tcase_add_test(tc, embedded_mode_runs_the_same_procedures);
    tcase_add_test(tc, effects_too_big_for_one_message_are_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (harness_init() != 0)
        return EXIT_FAILURE;
    SRunner *sr = srunner_create(procs_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return harness_fini(failed);
}
