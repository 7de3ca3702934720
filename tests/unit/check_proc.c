/*
 * check_proc - unit tests of procedures: libkv/proc.c (registry, ctx,
 * budgets, confinement, results, merging, lists), the built-ins of
 * libkv/proc_builtin.c and the example plugins of procs/.
 *
 * Calls run against a fake reader: an in-memory shard map (key -> value,
 * version) that can be told to answer PROC_EWAIT or ENGINE_ELOCKED for a
 * key or a scan, and that fails the test if asked about a key of another
 * shard. fake_apply() applies a result's ops the way engine_stage_txn()
 * does (every condition checked first, then the writes), so a test can
 * chain calls. Most ctx behaviour is driven through the test plugin
 * tests/unit/procs/script.c, which runs a list of commands (get, put, del,
 * scan, reply, fail) and answers one list item per command, so each test
 * goes through the real plugin path (dlopen, kv_proc_* exported by this
 * program).
 *
 * Plugins are found in KV_PROC_DIR and KV_TESTPROC_DIR: environment
 * variables, else the build folders the Makefile compiles in.
 */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kv.h"
#include "kvproc.h"
#include "proc.h"
#include "shard.h"

#ifndef KV_PROC_DIR
#define KV_PROC_DIR "build/procs"
#endif
#ifndef KV_TESTPROC_DIR
#define KV_TESTPROC_DIR "build/testprocs"
#endif

Suite *proc_suite(void);

#define NSHARDS 4
#define MAX_RECS 256

/* ---- plugin paths ------------------------------------------------------- */

/* The path of plugin NAME (".so" added) in the examples' (TEST false) or
 * the test plugins' folder, in a static buffer (one of 8 in turn). */
static const char *plugin(const char *name, bool test)
{
    static char bufs[8][1024];
    static unsigned next;
    char *b = bufs[next++ % 8];
    const char *dir = getenv(test ? "KV_TESTPROC_DIR" : "KV_PROC_DIR");

    if (dir == NULL || dir[0] == '\0')
        dir = test ? KV_TESTPROC_DIR : KV_PROC_DIR;
    snprintf(b, sizeof bufs[0], "%s/%s.so", dir, name);
    return b;
}

/* ---- the fake reader ---------------------------------------------------- */

struct rec {
    char *key, *val;
    size_t klen, vlen;
    uint64_t version;
    bool live;  /* holds a value */
    int answer; /* non-zero: what a get of the key returns */
};

struct fake {
    struct rec recs[MAX_RECS];
    size_t n;
    uint64_t version; /* the shard's last version */
    int scan_answer;  /* non-zero: what a scan returns */
    unsigned gets, scans;
};

static struct fake *fake_new(void)
{
    struct fake *f = calloc(1, sizeof *f);
    ck_assert_ptr_nonnull(f);
    return f;
}

static void fake_free(struct fake *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->recs[i].key);
        free(f->recs[i].val);
    }
    free(f);
}

static struct rec *fake_find(struct fake *f, const void *key, size_t klen)
{
    for (size_t i = 0; i < f->n; i++)
        if (f->recs[i].klen == klen && memcmp(f->recs[i].key, key, klen) == 0)
            return &f->recs[i];
    return NULL;
}

static struct rec *fake_slot(struct fake *f, const void *key, size_t klen)
{
    struct rec *r = fake_find(f, key, klen);
    if (r != NULL)
        return r;
    ck_assert_uint_lt(f->n, MAX_RECS);
    r = &f->recs[f->n++];
    memset(r, 0, sizeof *r);
    r->key = malloc(klen + 1);
    ck_assert_ptr_nonnull(r->key);
    memcpy(r->key, key, klen);
    r->key[klen] = '\0';
    r->klen = klen;
    return r;
}

/* Writes KEY = VAL (VAL NULL: deletes) at version V. */
static void fake_write(struct fake *f, const void *key, size_t klen,
                       const void *val, size_t vlen, uint64_t v)
{
    struct rec *r = fake_slot(f, key, klen);
    free(r->val);
    r->val = NULL;
    r->vlen = 0;
    r->live = val != NULL;
    r->version = val != NULL ? v : 0;
    if (val != NULL) {
        r->val = malloc(vlen + 1);
        ck_assert_ptr_nonnull(r->val);
        memcpy(r->val, val, vlen);
        r->val[vlen] = '\0';
        r->vlen = vlen;
    }
}

/* Sets KEY = VAL (a C string) at the next version; returns it. */
static uint64_t fake_set(struct fake *f, const char *key, const char *val)
{
    f->version++;
    fake_write(f, key, strlen(key), val, val != NULL ? strlen(val) : 0,
               f->version);
    return f->version;
}

/* KEY's value as a C string, or NULL when absent. */
static const char *fake_value(struct fake *f, const char *key)
{
    struct rec *r = fake_find(f, key, strlen(key));
    return r != NULL && r->live ? r->val : NULL;
}

static uint64_t fake_version(struct fake *f, const char *key)
{
    struct rec *r = fake_find(f, key, strlen(key));
    return r != NULL && r->live ? r->version : 0;
}

static void fake_answer(struct fake *f, const char *key, int answer)
{
    fake_slot(f, key, strlen(key))->answer = answer;
}

static int fake_get(void *arg, uint32_t shard, const void *key, size_t klen,
                    void **val, size_t *vlen, uint64_t *version)
{
    struct fake *f = arg;
    struct rec *r;

    f->gets++;
    ck_assert_msg(klen > 0, "the reader was asked for an empty key");
    ck_assert_msg(shard_of(key, klen, NSHARDS) == shard,
                  "the reader was asked for a key of another shard");
    r = fake_find(f, key, klen);
    if (r != NULL && r->answer != 0)
        return r->answer;
    if (r == NULL || !r->live)
        return KV_ENOTFOUND;
    *val = NULL;
    if (r->vlen > 0) {
        *val = malloc(r->vlen);
        ck_assert_ptr_nonnull(*val);
        memcpy(*val, r->val, r->vlen);
    }
    *vlen = r->vlen;
    *version = r->version;
    return KV_OK;
}

static int rec_cmp(const void *a, const void *b)
{
    const struct rec *x = *(const struct rec *const *)a;
    const struct rec *y = *(const struct rec *const *)b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->key, y->key, n);
    if (c != 0)
        return c;
    return (x->klen > y->klen) - (x->klen < y->klen);
}

static int fake_scan(void *arg, const struct engine_scan *sc, engine_emit_fn fn,
                     void *fnarg)
{
    struct fake *f = arg;
    struct rec *sorted[MAX_RECS];
    size_t n = 0;
    uint64_t sent = 0;

    f->scans++;
    if (f->scan_answer != 0)
        return f->scan_answer;
    ck_assert_ptr_null(sc->start);
    ck_assert_ptr_null(sc->end);
    ck_assert(!sc->has_after);
    for (size_t i = 0; i < f->n; i++) {
        struct rec *r = &f->recs[i];
        if (!r->live || shard_of(r->key, r->klen, NSHARDS) != sc->shard)
            continue;
        if (sc->prefix_len > 0 &&
            (r->klen < sc->prefix_len ||
             memcmp(r->key, sc->prefix, sc->prefix_len) != 0))
            continue;
        sorted[n++] = r;
    }
    qsort(sorted, n, sizeof sorted[0], rec_cmp);
    for (size_t i = 0; i < n; i++) {
        int rc;
        if (sc->limit > 0 && sent == sc->limit)
            break;
        sent++;
        rc = fn(fnarg, sorted[i]->key, sorted[i]->klen, sorted[i]->val,
                sorted[i]->vlen, sorted[i]->version);
        if (rc != 0)
            return rc;
    }
    return KV_OK;
}

/* Applies R's ops as engine_stage_txn does: KV_ECONFLICT (nothing written)
 * when a condition fails, else every write at one new version. */
static int fake_apply(struct fake *f, const struct proc_result *r)
{
    for (size_t i = 0; i < r->nops; i++) {
        const struct engine_txn_op *op = &r->ops[i];
        struct rec *rec = fake_find(f, op->key, op->klen);
        bool live = rec != NULL && rec->live;
        if (op->kind == ENGINE_TXN_IF_VERSION &&
            (!live || rec->version != op->version))
            return KV_ECONFLICT;
        if (op->kind == ENGINE_TXN_IF_ABSENT && live)
            return KV_ECONFLICT;
    }
    f->version++;
    for (size_t i = 0; i < r->nops; i++) {
        const struct engine_txn_op *op = &r->ops[i];
        if (op->kind == ENGINE_TXN_PUT)
            fake_write(f, op->key, op->klen, op->vlen > 0 ? op->val : "",
                       op->vlen, f->version);
        else if (op->kind == ENGINE_TXN_DEL)
            fake_write(f, op->key, op->klen, NULL, 0, f->version);
    }
    return KV_OK;
}

/* ---- calls ----------------------------------------------------------------
 */

static struct proc_registry *reg;

static const struct proc_limits std_limits = {
    .max_keys = 50,
    .max_write_bytes = 2000,
    .max_reply_bytes = 2000,
    .max_key_bytes = 64,
    .max_value_bytes = 1000,
};

static void open_registry(void)
{
    char err[512] = "";
    const char *paths[] = {plugin("ratelimit", false),
                           plugin("sum_prefix", false), plugin("move", false),
                           plugin("script", true)};
    int rc = proc_registry_open(paths, 4, &reg, err, sizeof err);
    ck_assert_msg(rc == KV_OK, "proc_registry_open: %d %s", rc, err);
}

static void close_registry(void)
{
    proc_registry_close(reg);
    reg = NULL;
}

/* Runs NAME on KEY's shard (shard 0 for an empty key) with LIM. */
static int run_lim(struct fake *f, const struct proc_limits *lim,
                   const char *name, const char *key, const void *arg,
                   size_t alen, struct proc_result *r)
{
    struct proc_reader rd = {f, fake_get, fake_scan};
    size_t klen = strlen(key);
    uint32_t shard = klen > 0 ? shard_of(key, klen, NSHARDS) : 0;
    return proc_run(reg, name, strlen(name), shard, NSHARDS, key, klen, arg,
                    alen, &rd, lim, r);
}

static int run(struct fake *f, const char *name, const char *key,
               const char *arg, struct proc_result *r)
{
    return run_lim(f, &std_limits, name, key, arg, strlen(arg), r);
}

/* A list argument. */
struct list {
    unsigned char b[16384];
    size_t n;
};

static void list_add(struct list *l, const void *item, size_t len)
{
    uint32_t h = item == NULL ? KV_LIST_MISSING : (uint32_t)len;
    ck_assert_uint_le(l->n + 4 + len, sizeof l->b);
    l->b[l->n++] = (unsigned char)(h >> 24);
    l->b[l->n++] = (unsigned char)(h >> 16);
    l->b[l->n++] = (unsigned char)(h >> 8);
    l->b[l->n++] = (unsigned char)h;
    if (item != NULL && len > 0)
        memcpy(l->b + l->n, item, len);
    l->n += item != NULL ? len : 0;
}

static void list_str(struct list *l, const char *s)
{
    list_add(l, s, strlen(s));
}

/* Runs NAME with a list argument of the C strings ITEMS (NULL: missing). */
static int run_list(struct fake *f, const struct proc_limits *lim,
                    const char *name, const char *key, const char *const *items,
                    size_t n, struct proc_result *r)
{
    struct list *l = calloc(1, sizeof *l);
    int rc;

    ck_assert_ptr_nonnull(l);
    for (size_t i = 0; i < n; i++)
        list_add(l, items[i], items[i] != NULL ? strlen(items[i]) : 0);
    rc = run_lim(f, lim, name, key, l->b, l->n, r);
    free(l);
    return rc;
}

#define SCRIPT(f, lim, name, key, r, ...)                                      \
    run_list(f, lim, name, key, (const char *const[]){__VA_ARGS__},            \
             sizeof((const char *const[]){__VA_ARGS__}) / sizeof(char *), r)

/* The reply's list items as C strings ("(missing)" for missing ones). */
struct items {
    char s[32][1100];
    size_t n;
};

static void parse_items(const void *reply, size_t rlen, struct items *it)
{
    const void *p = reply, *item;
    size_t left = rlen, ilen;
    int rc;

    it->n = 0;
    while ((rc = kv_list_next(&p, &left, &item, &ilen)) == KV_OK) {
        ck_assert_uint_lt(it->n, 32);
        if (item == NULL)
            snprintf(it->s[it->n], sizeof it->s[0], "(missing)");
        else
            snprintf(it->s[it->n], sizeof it->s[0], "%.*s", (int)ilen,
                     (const char *)item);
        it->n++;
    }
    ck_assert_int_eq(rc, KV_EOF);
}

static void expect_items(const struct proc_result *r, size_t n,
                         const char *const *want)
{
    struct items it;
    parse_items(r->reply, r->rlen, &it);
    ck_assert_msg(it.n == n, "expected %zu items, got %zu", n, it.n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(strcmp(it.s[i], want[i]) == 0,
                      "item %zu: expected '%s', got '%s'", i, want[i], it.s[i]);
}

#define ITEMS(r, ...)                                                          \
    expect_items(r,                                                            \
                 sizeof((const char *const[]){__VA_ARGS__}) / sizeof(char *),  \
                 (const char *const[]){__VA_ARGS__})

static void expect_reply(const struct proc_result *r, const char *want)
{
    ck_assert_msg(r->rlen == strlen(want) &&
                      (r->rlen == 0 || memcmp(r->reply, want, r->rlen) == 0),
                  "expected reply '%s', got '%.*s'", want, (int)r->rlen,
                  r->reply != NULL ? (const char *)r->reply : "");
}

static void expect_op(const struct proc_result *r, size_t i,
                      enum engine_txn_kind kind, const char *key,
                      const char *val, uint64_t version)
{
    const struct engine_txn_op *op;
    ck_assert_uint_lt(i, r->nops);
    op = &r->ops[i];
    ck_assert_msg(op->kind == kind, "op %zu: kind %d, expected %d", i,
                  (int)op->kind, (int)kind);
    ck_assert_msg(op->klen == strlen(key) &&
                      memcmp(op->key, key, op->klen) == 0,
                  "op %zu: key '%.*s', expected '%s'", i, (int)op->klen,
                  (const char *)op->key, key);
    if (kind == ENGINE_TXN_PUT)
        ck_assert_msg(
            op->vlen == strlen(val) &&
                (op->vlen == 0 || memcmp(op->val, val, op->vlen) == 0),
            "op %zu: value '%.*s', expected '%s'", i, (int)op->vlen,
            (const char *)op->val, val);
    if (kind == ENGINE_TXN_IF_VERSION)
        ck_assert_uint_eq(op->version, version);
}

static void expect_fail(const struct proc_result *r, int code, const char *word)
{
    ck_assert_msg(r->code == code, "expected code %d, got %d (%s)", code,
                  r->code, r->msg);
    ck_assert_uint_eq(r->nops, 0);
    ck_assert_uint_eq(r->nwrites, 0);
    ck_assert_ptr_null(r->ops);
    ck_assert_msg(strstr(r->msg, word) != NULL, "expected '%s' in '%s'", word,
                  r->msg);
}

static void expect_ok(const struct proc_result *r)
{
    ck_assert_msg(r->code == KV_OK, "expected KV_OK, got %d (%s)", r->code,
                  r->msg);
}

/* A key of the form "{oN}.k" whose shard is not SHARD, in BUF. */
static const char *other_key(char *buf, size_t cap, uint32_t shard)
{
    for (int i = 0; i < 1000; i++) {
        snprintf(buf, cap, "{o%d}.k", i);
        if (shard_of(buf, strlen(buf), NSHARDS) != shard)
            return buf;
    }
    ck_abort_msg("no key on another shard");
    return NULL;
}

static uint32_t shard_a(void)
{
    return shard_of("{a}", 3, NSHARDS);
}

/* ---- the ctx: reads, writes, effects ------------------------------------ */

START_TEST(gets_see_the_calls_own_puts_and_deletes)
{
    struct fake *f = fake_new();
    struct proc_result r;
    char want[64];
    uint64_t v = fake_set(f, "{a}.x", "1");

    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "get {a}.x", "put {a}.x 2",
           "get {a}.x", "del {a}.x", "get {a}.x", "put {a}.y new", "get {a}.y",
           "get {a}.x");
    expect_ok(&r);
    snprintf(want, sizeof want, "=1@%" PRIu64, v);
    /* a value the call wrote has version 0: it has none yet */
    ITEMS(&r, want, "ok", "=2@0", "ok", "-", "ok", "=new@0", "-");
    /* nothing is written until the caller applies the ops */
    ck_assert_str_eq(fake_value(f, "{a}.x"), "1");
    ck_assert_ptr_null(fake_value(f, "{a}.y"));
    ck_assert_uint_eq(f->gets, 1); /* later gets of {a}.x: the ctx */
    ck_assert_uint_eq(r.nops, 3);
    ck_assert_uint_eq(r.nwrites, 2);
    expect_op(&r, 0, ENGINE_TXN_IF_VERSION, "{a}.x", NULL, v);
    expect_op(&r, 1, ENGINE_TXN_DEL, "{a}.x", NULL, 0);
    expect_op(&r, 2, ENGINE_TXN_PUT, "{a}.y", "new", 0);
    ck_assert(!r.readonly);
    ck_assert(!r.scanned);
    ck_assert_int_eq(fake_apply(f, &r), KV_OK);
    ck_assert_ptr_null(fake_value(f, "{a}.x"));
    ck_assert_str_eq(fake_value(f, "{a}.y"), "new");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(reads_become_conditions_and_last_writes_become_ops)
{
    struct fake *f = fake_new();
    struct proc_result r;
    uint64_t vr = fake_set(f, "{a}.r", "v");
    char want[64];

    fake_set(f, "{a}.w", "old");
    SCRIPT(f, &std_limits, "script", "{a}.r", &r, "get {a}.absent", "get {a}.r",
           "put {a}.new 1", "get {a}.new", "put {a}.w a", "put {a}.w b",
           "get {a}.w", "get {a}.r", "put {a}.e ");
    expect_ok(&r);
    snprintf(want, sizeof want, "=v@%" PRIu64, vr);
    ITEMS(&r, "-", want, "ok", "=1@0", "ok", "ok", "=b@0", want, "ok");
    /* one condition per key read (the first read only; none for a key
     * first written), then one op per key written (its last write) */
    ck_assert_uint_eq(r.nops, 5);
    ck_assert_uint_eq(r.nwrites, 3);
    expect_op(&r, 0, ENGINE_TXN_IF_ABSENT, "{a}.absent", NULL, 0);
    expect_op(&r, 1, ENGINE_TXN_IF_VERSION, "{a}.r", NULL, vr);
    expect_op(&r, 2, ENGINE_TXN_PUT, "{a}.new", "1", 0);
    expect_op(&r, 3, ENGINE_TXN_PUT, "{a}.w", "b", 0);
    expect_op(&r, 4, ENGINE_TXN_PUT, "{a}.e", "", 0);
    /* the effects hold only while what was read is unchanged */
    fake_set(f, "{a}.r", "changed");
    ck_assert_int_eq(fake_apply(f, &r), KV_ECONFLICT);
    ck_assert_ptr_null(fake_value(f, "{a}.new"));
    fake_set(f, "{a}.r", NULL);
    ck_assert_int_eq(fake_apply(f, &r), KV_ECONFLICT);
    proc_result_free(&r);
    /* run again on the new state: applies */
    fake_set(f, "{a}.r", "v");
    SCRIPT(f, &std_limits, "script", "{a}.r", &r, "get {a}.absent", "get {a}.r",
           "put {a}.w b", "put {a}.e ");
    expect_ok(&r);
    ck_assert_int_eq(fake_apply(f, &r), KV_OK);
    ck_assert_str_eq(fake_value(f, "{a}.w"), "b");
    ck_assert_str_eq(fake_value(f, "{a}.e"), "");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(a_call_that_only_reads_has_only_conditions)
{
    struct fake *f = fake_new();
    struct proc_result r;

    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "get {a}.x", "key");
    expect_ok(&r);
    ck_assert_uint_eq(r.nops, 1);
    ck_assert_uint_eq(r.nwrites, 0);
    expect_op(&r, 0, ENGINE_TXN_IF_ABSENT, "{a}.x", NULL, 0);
    {
        char want[32];
        snprintf(want, sizeof want, "{a}.x@%" PRIu32, shard_a());
        ITEMS(&r, "-", want);
    }
    proc_result_free(&r);
    /* a call that touches nothing has no ops at all */
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "key");
    expect_ok(&r);
    ck_assert_uint_eq(r.nops, 0);
    ck_assert_ptr_null(r.ops);
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(bad_keys_and_values_fail_the_write_only)
{
    struct fake *f = fake_new();
    struct proc_result r;
    char ks[62], vs[1002], longkey[128], big[1100], toolong[128];

    /* "{a}." and 61 bytes: a 65-byte key, one over max_key_bytes */
    memset(ks, 'k', 61);
    ks[61] = '\0';
    memset(vs, 'v', 1001);
    vs[1001] = '\0';
    snprintf(longkey, sizeof longkey, "put {a}.%s v", ks);
    snprintf(toolong, sizeof toolong, "get {a}.%s", ks);
    snprintf(big, sizeof big, "put {a}.big %s", vs);
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "ignore", "put  v", longkey,
           big, "get ", toolong, "del ", "put {a}.ok 1");
    expect_ok(&r);
    ITEMS(&r, "ok", "!-6", "!-7", "!-7", "!-6", "!-7", "!-6", "ok");
    ck_assert_uint_eq(r.nops, 1);
    expect_op(&r, 0, ENGINE_TXN_PUT, "{a}.ok", "1", 0);
    proc_result_free(&r);
    /* without `ignore`, the procedure returns the error and its message */
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, big);
    expect_fail(&r, KV_ETOOBIG, "max_value_bytes = 1000");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

/* ---- budgets --------------------------------------------------------------
 */

START_TEST(the_keys_budget_counts_distinct_keys)
{
    struct fake *f = fake_new();
    struct proc_limits lim = std_limits;
    struct proc_result r;

    lim.max_keys = 3;
    SCRIPT(f, &lim, "script", "{a}.x", &r, "get {a}.1", "get {a}.2",
           "put {a}.3 x", "get {a}.1", "put {a}.2 y", "del {a}.3", "get {a}.3");
    expect_ok(&r);
    proc_result_free(&r);
    SCRIPT(f, &lim, "script", "{a}.x", &r, "get {a}.1", "get {a}.2",
           "put {a}.3 x", "get {a}.4");
    expect_fail(&r, KV_EBUDGET, "cluster.conf proc_max_keys = 3");
    ck_assert_ptr_nonnull(strstr(r.msg, "script"));
    proc_result_free(&r);
    /* a procedure that ignores the error still fails, and every later
     * ctx call gets the same error */
    SCRIPT(f, &lim, "script", "{a}.x", &r, "ignore", "get {a}.1", "get {a}.2",
           "get {a}.3", "put {a}.4 x", "get {a}.1", "put {a}.1 z");
    expect_fail(&r, KV_EBUDGET, "proc_max_keys");
    ITEMS(&r, "ok", "-", "-", "-", "!-17", "!-17", "!-17");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(each_key_a_scan_visits_counts_against_the_keys_budget)
{
    struct fake *f = fake_new();
    struct proc_limits lim = std_limits;
    struct proc_result r;

    lim.max_keys = 3;
    fake_set(f, "{a}.s1", "1");
    fake_set(f, "{a}.s2", "2");
    fake_set(f, "{a}.s3", "3");
    SCRIPT(f, &lim, "script_ro", "{a}.x", &r, "scan 0 0 {a}.s");
    expect_ok(&r);
    ITEMS(&r, "#{a}.s1=1,{a}.s2=2,{a}.s3=3;0");
    proc_result_free(&r);
    /* one get and three visits: four keys */
    SCRIPT(f, &lim, "script_ro", "{a}.x", &r, "get {a}.s1", "scan 0 0 {a}.s");
    expect_fail(&r, KV_EBUDGET, "proc_max_keys = 3");
    proc_result_free(&r);
    /* a scan limited to what the budget leaves is fine */
    SCRIPT(f, &lim, "script_ro", "{a}.x", &r, "get {a}.s1", "scan 2 0 {a}.s");
    expect_ok(&r);
    proc_result_free(&r);
    fake_set(f, "{a}.s4", "4");
    SCRIPT(f, &lim, "script_ro", "{a}.x", &r, "ignore", "scan 0 0 {a}.s");
    expect_fail(&r, KV_EBUDGET, "proc_max_keys = 3");
    ITEMS(&r, "ok", "#{a}.s1=1,{a}.s2=2,{a}.s3=3;-17");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(the_write_budget_counts_every_write)
{
    struct fake *f = fake_new();
    struct proc_limits lim = std_limits;
    struct proc_result r;

    lim.max_write_bytes = 20;
    /* 5 + 10 bytes, then the 5-byte key deleted: 20 */
    SCRIPT(f, &lim, "script", "{a}.x", &r, "put {a}.k 0123456789", "del {a}.k");
    expect_ok(&r);
    ck_assert_uint_eq(r.nops, 1);
    expect_op(&r, 0, ENGINE_TXN_DEL, "{a}.k", NULL, 0);
    proc_result_free(&r);
    /* a key written twice counts twice */
    SCRIPT(f, &lim, "script", "{a}.x", &r, "ignore", "put {a}.k 0123456789",
           "put {a}.k 0123456789", "put {a}.j 1");
    expect_fail(&r, KV_EBUDGET, "cluster.conf proc_max_write_bytes = 20");
    ITEMS(&r, "ok", "ok", "!-17", "!-17");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(the_reply_budget_bounds_the_reply)
{
    struct fake *f = fake_new();
    struct proc_limits lim = std_limits;
    struct proc_result r;

    lim.max_reply_bytes = 10;
    SCRIPT(f, &lim, "script", "{a}.x", &r, "reply 10");
    expect_ok(&r);
    expect_reply(&r, "xxxxxxxxxx");
    proc_result_free(&r);
    SCRIPT(f, &lim, "script", "{a}.x", &r, "put {a}.x 1", "reply 7");
    expect_fail(&r, KV_EBUDGET, "cluster.conf proc_max_reply_bytes = 10");
    ck_assert_uint_le(r.rlen, 10);
    proc_result_free(&r);
    /* ignored: still a failure, and the reply never passes the budget */
    SCRIPT(f, &lim, "script", "{a}.x", &r, "ignore", "reply 9", "reply 2",
           "put {a}.x 1");
    expect_fail(&r, KV_EBUDGET, "proc_max_reply_bytes");
    ck_assert_uint_le(r.rlen, 10);
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

/* ---- confinement, read-only, reader answers ------------------------------ */

START_TEST(a_key_on_another_shard_fails_the_call)
{
    struct fake *f = fake_new();
    struct proc_result r;
    char other[32], cmd[64], want[64];

    other_key(other, sizeof other, shard_a());
    fake_set(f, other, "7");
    snprintf(cmd, sizeof cmd, "get %s", other);
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "put {a}.x 1", cmd);
    expect_fail(&r, KV_EINVAL, other);
    snprintf(want, sizeof want, "is on shard %" PRIu32,
             shard_of(other, strlen(other), NSHARDS));
    ck_assert_ptr_nonnull(strstr(r.msg, want));
    snprintf(want, sizeof want, "call's shard %" PRIu32, shard_a());
    ck_assert_ptr_nonnull(strstr(r.msg, want));
    ck_assert_ptr_nonnull(strstr(r.msg, "hash tag"));
    proc_result_free(&r);
    /* remembered: ignoring it does not make the call succeed */
    snprintf(cmd, sizeof cmd, "put %s 8", other);
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "ignore", cmd, "put {a}.x 1");
    expect_fail(&r, KV_EINVAL, "hash tag");
    ITEMS(&r, "ok", "!-6", "!-6");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(a_read_only_procedure_cannot_write)
{
    struct fake *f = fake_new();
    struct proc_result r;

    SCRIPT(f, &std_limits, "script_ro", "{a}.x", &r, "put {a}.x 1");
    expect_fail(&r, KV_EINVAL, "procedure script_ro is read-only");
    ck_assert(r.readonly);
    proc_result_free(&r);
    SCRIPT(f, &std_limits, "script_ro", "{a}.x", &r, "ignore", "del {a}.x",
           "get {a}.x");
    expect_ok(&r);
    ck_assert(r.readonly);
    ITEMS(&r, "ok", "!-6", "-");
    ck_assert_uint_eq(r.nwrites, 0);
    ck_assert_uint_eq(r.nops, 1);
    expect_op(&r, 0, ENGINE_TXN_IF_ABSENT, "{a}.x", NULL, 0);
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(wait_and_locked_answers_of_the_reader_end_the_call)
{
    struct fake *f = fake_new();
    struct proc_result r;

    fake_answer(f, "{a}.w", PROC_EWAIT);
    fake_answer(f, "{a}.l", ENGINE_ELOCKED);
    fake_answer(f, "{a}.io", KV_EIO);
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "ignore", "put {a}.x 1",
           "get {a}.w", "put {a}.y 2");
    expect_fail(&r, PROC_EWAIT, "{a}.w");
    ITEMS(&r, "ok", "ok", "!-101", "!-101");
    proc_result_free(&r);
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "get {a}.l");
    expect_fail(&r, ENGINE_ELOCKED, "locked");
    proc_result_free(&r);
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "ignore", "get {a}.io");
    expect_fail(&r, KV_EIO, "i/o error");
    proc_result_free(&r);
    f->scan_answer = PROC_EWAIT;
    SCRIPT(f, &std_limits, "script_ro", "{a}.x", &r, "ignore", "scan 0 0 {a}");
    expect_fail(&r, PROC_EWAIT, "scan");
    ck_assert(r.scanned);
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(scans_visit_the_shards_keys_in_order)
{
    struct fake *f = fake_new();
    struct proc_result r;
    char other[32];

    fake_set(f, "{a}.s3", "3");
    fake_set(f, "{a}.s1", "1");
    fake_set(f, "{a}.t", "x");
    fake_set(f, "{a}.s2", "2");
    fake_set(f, other_key(other, sizeof other, shard_a()), "o");
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "put {a}.s0 0",
           "scan 0 0 {a}.s", "scan 2 0 {a}.s", "scan 0 2 {a}.s", "scan 0 0 ");
    expect_ok(&r);
    /* the call's own writes are not seen by a scan; a stop code is
     * returned as it is */
    ITEMS(&r, "ok", "#{a}.s1=1,{a}.s2=2,{a}.s3=3;0", "#{a}.s1=1,{a}.s2=2;0",
          "#{a}.s1=1,{a}.s2=2;42", "#{a}.s1=1,{a}.s2=2,{a}.s3=3,{a}.t=x;0");
    ck_assert(r.scanned);
    /* scanned keys are not conditions: the caller re-evaluates scans */
    ck_assert_uint_eq(r.nops, 1);
    expect_op(&r, 0, ENGINE_TXN_PUT, "{a}.s0", "0", 0);
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

/* ---- results and codes ----------------------------------------------------
 */

START_TEST(error_codes_and_messages_reach_the_result)
{
    struct fake *f = fake_new();
    struct proc_result r;
    char want[32];

    /* the message of kv_proc_error, and the reply so far */
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "put {a}.x 1", "key",
           "fail -3 custom text");
    expect_fail(&r, KV_ECONFLICT, "custom text");
    snprintf(want, sizeof want, "{a}.x@%" PRIu32, shard_a());
    ITEMS(&r, "ok", want);
    proc_result_free(&r);
    /* a default message naming the procedure and the code */
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "fail -9");
    expect_fail(&r, KV_EIO, "procedure script failed: i/o error");
    proc_result_free(&r);
    /* codes a procedure may not return become KV_EPROC */
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "fail 5");
    expect_fail(&r, KV_EPROC, "procedure script returned 5");
    proc_result_free(&r);
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "fail -101 wait for me");
    expect_fail(&r, KV_EPROC, "returned -101");
    proc_result_free(&r);
    SCRIPT(f, &std_limits, "script", "{a}.x", &r, "fail -100");
    expect_fail(&r, KV_EPROC, "returned -100");
    proc_result_free(&r);
    /* unknown procedure */
    ck_assert_int_eq(run(f, "nope", "{a}.x", "", &r), KV_ENOPROC);
    expect_fail(&r, KV_ENOPROC, "no procedure 'nope'");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(a_call_on_every_shard_needs_a_read_only_procedure)
{
    struct fake *f = fake_new();
    struct proc_result r;
    struct proc_reader rd = {f, fake_get, fake_scan};
    struct list l = {.n = 0};

    SCRIPT(f, &std_limits, "script_ro", "", &r, "key");
    expect_ok(&r);
    ITEMS(&r, "@0");
    proc_result_free(&r);
    SCRIPT(f, &std_limits, "script", "", &r, "key");
    expect_fail(&r, KV_EINVAL, "needs a key");
    proc_result_free(&r);
    /* the call's key must be on the call's shard */
    list_str(&l, "key");
    ck_assert_int_eq(proc_run(reg, "script", 6, (shard_a() + 1) % NSHARDS,
                              NSHARDS, "{a}.x", 5, l.b, l.n, &rd, &std_limits,
                              &r),
                     KV_EINVAL);
    proc_result_free(&r);
    ck_assert_int_eq(
        proc_run(reg, "script", 6, 0, 0, "", 0, l.b, l.n, &rd, &std_limits, &r),
        KV_EINVAL);
    proc_result_free(&r);
    ck_assert_int_eq(proc_run(reg, "script", 6, 0, NSHARDS, "{a}", 3, l.b, l.n,
                              &rd, NULL, &r),
                     KV_EINVAL);
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(ctx_functions_refuse_bad_arguments)
{
    const void *p = NULL, *item;
    size_t left = 0, ilen;
    struct proc_result r;

    ck_assert_int_eq(kv_proc_get(NULL, "k", 1, &item, &ilen, NULL), KV_EINVAL);
    ck_assert_int_eq(kv_proc_put(NULL, "k", 1, "v", 1), KV_EINVAL);
    ck_assert_int_eq(kv_proc_del(NULL, "k", 1), KV_EINVAL);
    ck_assert_int_eq(kv_proc_reply(NULL, "k", 1), KV_EINVAL);
    ck_assert_int_eq(kv_proc_reply_item(NULL, "k", 1), KV_EINVAL);
    ck_assert_int_eq(kv_proc_error(NULL, KV_EIO, "x"), KV_EIO);
    ck_assert_int_eq(kv_proc_define(NULL, "x", NULL, NULL, 0), KV_EINVAL);
    ck_assert_int_eq(kv_list_next(&p, &left, &item, &ilen), KV_EOF);
    ck_assert_int_eq(kv_list_next(NULL, &left, &item, &ilen), KV_EINVAL);
    ck_assert_int_eq(
        proc_run(NULL, "incr", 4, 0, 1, "k", 1, "", 0, NULL, NULL, &r),
        KV_EINVAL);
    ck_assert_int_eq(r.code, KV_EINVAL);
    proc_result_free(&r);
    proc_result_free(NULL);
}
END_TEST

/* ---- built-ins ------------------------------------------------------------
 */

static void expect_incr(struct fake *f, const char *key, const char *arg,
                        const char *want)
{
    struct proc_result r;
    run(f, "incr", key, arg, &r);
    expect_ok(&r);
    expect_reply(&r, want);
    ck_assert_uint_eq(r.nwrites, 1);
    ck_assert_int_eq(fake_apply(f, &r), KV_OK);
    ck_assert_str_eq(fake_value(f, key), want);
    proc_result_free(&r);
}

static void expect_incr_fails(struct fake *f, const char *key, const char *arg,
                              int code, const char *word)
{
    struct proc_result r;
    ck_assert_int_eq(run(f, "incr", key, arg, &r), code);
    expect_fail(&r, code, word);
    proc_result_free(&r);
}

START_TEST(incr_adds_to_a_decimal_counter)
{
    struct fake *f = fake_new();
    struct proc_result r;
    uint64_t v;

    expect_incr(f, "c", "", "1"); /* absent = 0 */
    expect_incr(f, "c", "", "2");
    expect_incr(f, "c", "40", "42");
    expect_incr(f, "c", "+8", "50");
    expect_incr(f, "c", "-60", "-10");
    expect_incr(f, "c", "0010", "0");
    expect_incr(f, "d", "-5", "-5");
    /* a counter stored by someone else with a sign and leading zeros */
    fake_set(f, "e", "+007");
    expect_incr(f, "e", "", "8");
    /* the effects: the read version as a condition, then the put */
    v = fake_version(f, "c");
    run(f, "incr", "c", "", &r);
    ck_assert_uint_eq(r.nops, 2);
    expect_op(&r, 0, ENGINE_TXN_IF_VERSION, "c", NULL, v);
    expect_op(&r, 1, ENGINE_TXN_PUT, "c", "1", 0);
    proc_result_free(&r);
    run(f, "incr", "new", "", &r);
    expect_op(&r, 0, ENGINE_TXN_IF_ABSENT, "new", NULL, 0);
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(incr_refuses_what_is_not_an_int64)
{
    struct fake *f = fake_new();

    expect_incr_fails(f, "c", "1x", KV_EINVAL,
                      "incr: the argument '1x' is not a decimal int64");
    expect_incr_fails(f, "c", " 1", KV_EINVAL, "not a decimal int64");
    expect_incr_fails(f, "c", "-", KV_EINVAL, "not a decimal int64");
    expect_incr_fails(f, "c", "9223372036854775808", KV_EINVAL,
                      "not a decimal int64");
    fake_set(f, "c", "abc");
    expect_incr_fails(f, "c", "", KV_EINVAL, "incr: c holds 'abc'");
    fake_set(f, "c", "");
    expect_incr_fails(f, "c", "1", KV_EINVAL, "not a decimal int64");
    ck_assert_str_eq(fake_value(f, "c"), "");
    fake_free(f);
}
END_TEST

START_TEST(incr_fails_on_overflow_both_ways)
{
    struct fake *f = fake_new();

    fake_set(f, "hi", "9223372036854775806");
    expect_incr(f, "hi", "", "9223372036854775807");
    expect_incr_fails(f, "hi", "", KV_ERANGE, "incr: hi would overflow int64");
    expect_incr_fails(f, "hi", "9223372036854775807", KV_ERANGE, "overflow");
    ck_assert_str_eq(fake_value(f, "hi"), "9223372036854775807");
    expect_incr(f, "lo", "-9223372036854775808", "-9223372036854775808");
    expect_incr_fails(f, "lo", "-1", KV_ERANGE,
                      "incr: lo would overflow int64");
    expect_incr(f, "lo", "9223372036854775807", "-1");
    fake_free(f);
}
END_TEST

START_TEST(append_grows_a_value_up_to_the_value_limit)
{
    struct fake *f = fake_new();
    struct proc_result r;
    char big[1000];

    run(f, "append", "s", "ab", &r);
    expect_ok(&r);
    expect_reply(&r, "2");
    ck_assert_int_eq(fake_apply(f, &r), KV_OK);
    proc_result_free(&r);
    run(f, "append", "s", "cd", &r);
    expect_reply(&r, "4");
    ck_assert_int_eq(fake_apply(f, &r), KV_OK);
    ck_assert_str_eq(fake_value(f, "s"), "abcd");
    proc_result_free(&r);
    run(f, "append", "empty", "", &r); /* an absent key becomes "" */
    expect_ok(&r);
    expect_reply(&r, "0");
    expect_op(&r, 1, ENGINE_TXN_PUT, "empty", "", 0);
    proc_result_free(&r);
    memset(big, 'b', 990);
    big[990] = '\0';
    fake_set(f, "s", big);
    ck_assert_int_eq(run(f, "append", "s", "0123456789", &r), KV_OK); /* 1000 */
    proc_result_free(&r);
    ck_assert_int_eq(run(f, "append", "s", "0123456789x", &r), KV_ETOOBIG);
    expect_fail(&r, KV_ETOOBIG, "append: s would hold 1001 bytes");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(cas_writes_only_over_the_expected_value)
{
    struct fake *f = fake_new();
    struct proc_result r;

    fake_set(f, "k", "old");
    run_list(f, &std_limits, "cas", "k", (const char *const[]){"old", "new"}, 2,
             &r);
    expect_ok(&r);
    ck_assert_uint_eq(r.rlen, 0);
    ck_assert_int_eq(fake_apply(f, &r), KV_OK);
    ck_assert_str_eq(fake_value(f, "k"), "new");
    proc_result_free(&r);
    /* another value: a conflict, replying the current value */
    run_list(f, &std_limits, "cas", "k", (const char *const[]){"old", "x"}, 2,
             &r);
    expect_fail(&r, KV_ECONFLICT, "cas: k holds another value");
    ITEMS(&r, "new");
    proc_result_free(&r);
    /* a missing expected item: the key must be absent */
    run_list(f, &std_limits, "cas", "n", (const char *const[]){NULL, "v"}, 2,
             &r);
    expect_ok(&r);
    expect_op(&r, 0, ENGINE_TXN_IF_ABSENT, "n", NULL, 0);
    expect_op(&r, 1, ENGINE_TXN_PUT, "n", "v", 0);
    ck_assert_int_eq(fake_apply(f, &r), KV_OK);
    proc_result_free(&r);
    run_list(f, &std_limits, "cas", "n", (const char *const[]){NULL, "w"}, 2,
             &r);
    expect_fail(&r, KV_ECONFLICT, "holds another value");
    ITEMS(&r, "v");
    proc_result_free(&r);
    /* an expected value for an absent key: the reply is a missing item */
    run_list(f, &std_limits, "cas", "none", (const char *const[]){"", "w"}, 2,
             &r);
    expect_fail(&r, KV_ECONFLICT, "absent");
    ITEMS(&r, "(missing)");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(cas_wants_a_list_of_two_items)
{
    struct fake *f = fake_new();
    struct proc_result r;

    run_list(f, &std_limits, "cas", "k", (const char *const[]){"a"}, 1, &r);
    expect_fail(&r, KV_EINVAL, "list of 2 items");
    proc_result_free(&r);
    run_list(f, &std_limits, "cas", "k", (const char *const[]){"a", "b", "c"},
             3, &r);
    expect_fail(&r, KV_EINVAL, "list of 2 items");
    proc_result_free(&r);
    run_list(f, &std_limits, "cas", "k", (const char *const[]){"a", NULL}, 2,
             &r);
    expect_fail(&r, KV_EINVAL, "may not be missing");
    proc_result_free(&r);
    run(f, "cas", "k", "old new", &r);
    expect_fail(&r, KV_EINVAL, "list of 2 items");
    proc_result_free(&r);
    run(f, "cas", "k", "", &r);
    expect_fail(&r, KV_EINVAL, "list of 2 items");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(mget_replies_a_list_of_values)
{
    struct fake *f = fake_new();
    struct proc_result r;
    uint64_t v1 = fake_set(f, "{a}.1", "one");
    uint64_t v3 = fake_set(f, "{a}.3", "three");
    char other[32];

    run_list(f, &std_limits, "mget", "{a}.1",
             (const char *const[]){"{a}.2", "{a}.3", "{a}.1"}, 3, &r);
    expect_ok(&r);
    ck_assert(r.readonly);
    ITEMS(&r, "one", "(missing)", "three", "one");
    ck_assert_uint_eq(r.nwrites, 0);
    ck_assert_uint_eq(r.nops, 3);
    expect_op(&r, 0, ENGINE_TXN_IF_VERSION, "{a}.1", NULL, v1);
    expect_op(&r, 1, ENGINE_TXN_IF_ABSENT, "{a}.2", NULL, 0);
    expect_op(&r, 2, ENGINE_TXN_IF_VERSION, "{a}.3", NULL, v3);
    proc_result_free(&r);
    run(f, "mget", "{a}.2", "", &r); /* just the call's key */
    expect_ok(&r);
    ITEMS(&r, "(missing)");
    proc_result_free(&r);
    run_list(f, &std_limits, "mget", "{a}.1",
             (const char *const[]){"{a}.2",
                                   other_key(other, sizeof other, shard_a())},
             2, &r);
    expect_fail(&r, KV_EINVAL, "hash tag");
    proc_result_free(&r);
    run_list(f, &std_limits, "mget", "{a}.1",
             (const char *const[]){"{a}.2", NULL}, 2, &r);
    expect_fail(&r, KV_EINVAL, "key 3 of the argument is missing");
    proc_result_free(&r);
    run(f, "mget", "{a}.1", "\x01", &r);
    expect_fail(&r, KV_EINVAL, "not a list");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

/* ---- lists and merging ----------------------------------------------------
 */

START_TEST(list_items_round_trip_through_a_reply)
{
    const void *replies[] = {"a", NULL, "xyz", "\xff\xff\xff\xff"};
    const size_t lens[] = {1, 0, 3, 4};
    struct proc_result r;
    const void *p, *item;
    size_t left, ilen;

    ck_assert_int_eq(
        proc_merge(reg, "mget", 4, replies, lens, 4, &std_limits, &r), KV_OK);
    ck_assert_uint_eq(r.rlen, 4 * 4 + 1 + 0 + 3 + 4);
    p = r.reply;
    left = r.rlen;
    ck_assert_int_eq(kv_list_next(&p, &left, &item, &ilen), KV_OK);
    ck_assert_uint_eq(ilen, 1);
    ck_assert_int_eq(memcmp(item, "a", 1), 0);
    ck_assert_int_eq(kv_list_next(&p, &left, &item, &ilen), KV_OK);
    ck_assert_ptr_nonnull(item); /* empty, not missing */
    ck_assert_uint_eq(ilen, 0);
    ck_assert_int_eq(kv_list_next(&p, &left, &item, &ilen), KV_OK);
    ck_assert_uint_eq(ilen, 3);
    ck_assert_int_eq(kv_list_next(&p, &left, &item, &ilen), KV_OK);
    ck_assert_uint_eq(ilen, 4);
    ck_assert_int_eq(memcmp(item, "\xff\xff\xff\xff", 4), 0);
    ck_assert_int_eq(kv_list_next(&p, &left, &item, &ilen), KV_EOF);
    ck_assert_uint_eq(left, 0);
    proc_result_free(&r);
}
END_TEST

START_TEST(truncated_lists_are_refused_and_missing_items_are_null)
{
    static const unsigned char missing[] = {0xff, 0xff, 0xff, 0xff, 0,
                                            0,    0,    1,    'z'};
    static const unsigned char shortlen[] = {0, 0, 0, 5, 'a', 'b'};
    static const unsigned char shorthdr[] = {0, 0, 0};
    const void *p = missing, *item = "sentinel";
    size_t left = sizeof missing, ilen = 99;

    ck_assert_int_eq(kv_list_next(&p, &left, &item, &ilen), KV_OK);
    ck_assert_ptr_null(item);
    ck_assert_uint_eq(ilen, 0);
    ck_assert_int_eq(kv_list_next(&p, &left, &item, &ilen), KV_OK);
    ck_assert_uint_eq(ilen, 1);
    ck_assert_int_eq(kv_list_next(&p, &left, &item, &ilen), KV_EOF);
    /* a length past the end, or a cut header: not a list; *p stays */
    p = shortlen;
    left = sizeof shortlen;
    ck_assert_int_eq(kv_list_next(&p, &left, &item, &ilen), KV_EINVAL);
    ck_assert_ptr_eq(p, shortlen);
    ck_assert_uint_eq(left, sizeof shortlen);
    p = shorthdr;
    left = sizeof shorthdr;
    ck_assert_int_eq(kv_list_next(&p, &left, &item, &ilen), KV_EINVAL);
    /* every prefix of a valid list either ends cleanly or is refused */
    for (size_t cut = 0; cut <= sizeof missing; cut++) {
        int rc;
        size_t steps = 0;
        p = missing;
        left = cut;
        while ((rc = kv_list_next(&p, &left, &item, &ilen)) == KV_OK)
            ck_assert_uint_lt(++steps, 3);
        ck_assert(rc == KV_EOF || rc == KV_EINVAL);
        ck_assert_int_eq(rc,
                         cut == 0 || cut == 4 || cut == 9 ? KV_EOF : KV_EINVAL);
    }
}
END_TEST

START_TEST(merging_uses_the_merge_function_or_makes_a_list)
{
    const void *replies[] = {"1 5 0", "2 -3 1", "0 0 0"};
    const size_t lens[] = {5, 6, 5};
    const void *big[] = {"9 9223372036854775807 0", "1 1 0"};
    const size_t biglens[] = {23, 5};
    const void *bad[] = {"1 5"};
    const size_t badlens[] = {3};
    struct proc_limits lim = std_limits;
    struct proc_result r;

    ck_assert_int_eq(
        proc_merge(reg, "sum_prefix", 10, replies, lens, 3, &std_limits, &r),
        KV_OK);
    expect_reply(&r, "3 2 1");
    ck_assert(r.readonly);
    ck_assert_uint_eq(r.nops, 0);
    proc_result_free(&r);
    ck_assert_int_eq(
        proc_merge(reg, "sum_prefix", 10, big, biglens, 2, &std_limits, &r),
        KV_ERANGE);
    expect_fail(&r, KV_ERANGE, "overflows");
    proc_result_free(&r);
    ck_assert_int_eq(
        proc_merge(reg, "sum_prefix", 10, bad, badlens, 1, &std_limits, &r),
        KV_EINVAL);
    proc_result_free(&r);
    /* the merge ctx only replies: get, put, del and scan are refused */
    ck_assert_int_eq(
        proc_merge(reg, "script_ro", 9, replies, lens, 2, &std_limits, &r),
        KV_OK);
    ITEMS(&r, "get=-6 put=-6 del=-6 scan=-6 key=0", "1 5 0", "2 -3 1");
    proc_result_free(&r);
    /* no merge function: a list, within the reply budget */
    ck_assert_int_eq(
        proc_merge(reg, "mget", 4, replies, lens, 3, &std_limits, &r), KV_OK);
    ITEMS(&r, "1 5 0", "2 -3 1", "0 0 0");
    proc_result_free(&r);
    lim.max_reply_bytes = 20;
    ck_assert_int_eq(proc_merge(reg, "mget", 4, replies, lens, 3, &lim, &r),
                     KV_EBUDGET);
    expect_fail(&r, KV_EBUDGET, "proc_max_reply_bytes = 20");
    proc_result_free(&r);
    ck_assert_int_eq(proc_merge(reg, "mget", 4, replies, lens, 0, &lim, &r),
                     KV_OK);
    ck_assert_uint_eq(r.rlen, 0);
    proc_result_free(&r);
    /* only read-only procedures run on every shard */
    ck_assert_int_eq(
        proc_merge(reg, "incr", 4, replies, lens, 3, &std_limits, &r),
        KV_EINVAL);
    proc_result_free(&r);
    ck_assert_int_eq(
        proc_merge(reg, "none", 4, replies, lens, 3, &std_limits, &r),
        KV_ENOPROC);
    proc_result_free(&r);
}
END_TEST

/* ---- the registry ---------------------------------------------------------
 */

static void file_hash(const char *path, unsigned char *out)
{
    FILE *fp = fopen(path, "rb");
    unsigned char buf[4096];
    crypto_generichash_state st;
    size_t n;

    ck_assert_ptr_nonnull(fp);
    crypto_generichash_init(&st, NULL, 0, PROC_HASH_LEN);
    while ((n = fread(buf, 1, sizeof buf, fp)) > 0)
        crypto_generichash_update(&st, buf, n);
    fclose(fp);
    crypto_generichash_final(&st, out, PROC_HASH_LEN);
}

START_TEST(the_registry_holds_builtins_and_plugins_with_their_hashes)
{
    static const char *const names[] = {"ratelimit", "sum_prefix", "move",
                                        "script"};
    const struct proc_plugin *pl;
    unsigned char want[PROC_HASH_LEN];
    bool ro = true;
    int which = 7;
    size_t n;

    pl = proc_plugins(reg, &n);
    ck_assert_uint_eq(n, 4);
    for (size_t i = 0; i < n; i++) {
        char file[32];
        snprintf(file, sizeof file, "%s.so", names[i]);
        ck_assert_str_eq(pl[i].name, file);
        file_hash(plugin(names[i], i == 3), want);
        ck_assert_int_eq(memcmp(pl[i].hash, want, PROC_HASH_LEN), 0);
    }
    ck_assert(proc_lookup(reg, "incr", 4, &ro, &which));
    ck_assert(!ro);
    ck_assert_int_eq(which, -1);
    ck_assert(proc_lookup(reg, "mget", 4, &ro, &which));
    ck_assert(ro);
    ck_assert(proc_lookup(reg, "sum_prefix", 10, &ro, &which));
    ck_assert(ro);
    ck_assert_int_eq(which, 1);
    ck_assert(proc_lookup(reg, "move", 4, &ro, NULL));
    ck_assert(!ro);
    ck_assert(!proc_lookup(reg, "mov", 3, &ro, &which));
    ck_assert(!proc_lookup(reg, "movee", 5, &ro, &which));
    ck_assert(!proc_lookup(reg, "append", 5, &ro, &which)); /* "appen" */
}
END_TEST

/* Opens a registry of PATHS that must fail with CODE and WORDS in the
 * message; the output pointer stays untouched. */
static void expect_open_fails(const char *const *paths, size_t n, int code,
                              const char *word1, const char *word2)
{
    struct proc_registry *sentinel = (struct proc_registry *)&sentinel;
    struct proc_registry *out = sentinel;
    char err[512] = "";
    int rc = proc_registry_open(paths, n, &out, err, sizeof err);

    ck_assert_msg(rc == code, "expected %d, got %d (%s)", code, rc, err);
    ck_assert_ptr_eq(out, sentinel);
    ck_assert_msg(strstr(err, word1) != NULL, "expected '%s' in '%s'", word1,
                  err);
    ck_assert_msg(word2 == NULL || strstr(err, word2) != NULL,
                  "expected '%s' in '%s'", word2, err);
}

START_TEST(a_missing_plugin_file_is_an_error_naming_it)
{
    const char *paths[] = {plugin("ratelimit", false),
                           "/nonexistent-kv-dir/x.so"};
    const char *bare[] = {"libc.so.6"}; /* never searched for */

    expect_open_fails(paths, 2, KV_EIO, "/nonexistent-kv-dir/x.so",
                      strerror(ENOENT));
    expect_open_fails(bare, 1, KV_EIO, "libc.so.6", strerror(ENOENT));
}
END_TEST

START_TEST(a_file_that_is_not_a_shared_object_is_an_error)
{
    char path[] = "/tmp/kv-check-proc-XXXXXX";
    const char *paths[] = {path};
    int fd = mkstemp(path);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, "not a plugin\n", 13), 13);
    close(fd);
    expect_open_fails(paths, 1, KV_EINVAL, path, "cannot load");
    unlink(path);
}
END_TEST

START_TEST(a_plugin_without_kv_proc_register_is_an_error)
{
    const char *paths[] = {plugin("nosym", true)};
    expect_open_fails(paths, 1, KV_EINVAL, "nosym.so", "no kv_proc_register");
}
END_TEST

START_TEST(a_name_defined_twice_names_both_definers)
{
    const char *two[] = {plugin("sum_prefix", false), plugin("dup", true)};
    const char *builtin[] = {plugin("shadow", true)};
    const char *same[] = {plugin("move", false), plugin("move", false)};

    expect_open_fails(
        two, 2, KV_EINVAL,
        "procedure 'sum_prefix' is defined by sum_prefix.so and by dup.so",
        NULL);
    /* the plugin ignored the error and returned KV_OK: still refused */
    expect_open_fails(
        builtin, 1, KV_EINVAL,
        "procedure 'incr' is defined by the built-ins and by shadow.so", NULL);
    expect_open_fails(same, 2, KV_EINVAL, "procedure 'move' is defined by",
                      NULL);
}
END_TEST

START_TEST(a_failing_register_or_a_bad_name_is_an_error)
{
    const char *failing[] = {plugin("failing", true)};
    const char *badname[] = {plugin("badname", true)};
    struct proc_registry *r2 = NULL;
    char err[512] = "x";

    expect_open_fails(failing, 1, KV_EINVAL, "failing.so",
                      "kv_proc_register returned -9");
    expect_open_fails(badname, 1, KV_EINVAL, "badname.so",
                      "bad procedure name 'bad name'");
    /* nothing but the built-ins */
    ck_assert_int_eq(proc_registry_open(NULL, 0, &r2, err, sizeof err), KV_OK);
    ck_assert_str_eq(err, "");
    ck_assert(proc_lookup(r2, "cas", 3, NULL, NULL));
    ck_assert(!proc_lookup(r2, "move", 4, NULL, NULL));
    proc_registry_close(r2);
    proc_registry_close(NULL);
}
END_TEST

/* ---- the example plugins --------------------------------------------------
 */

static void expect_limit(struct fake *f, const char *arg, const char *want,
                         bool writes)
{
    struct proc_result r;
    run(f, "ratelimit", "rl.user", arg, &r);
    expect_ok(&r);
    expect_reply(&r, want);
    ck_assert_uint_eq(r.nwrites, writes ? 1 : 0);
    ck_assert_int_eq(fake_apply(f, &r), KV_OK);
    proc_result_free(&r);
}

START_TEST(ratelimit_allows_then_denies_then_allows_after_time_passes)
{
    struct fake *f = fake_new();
    struct proc_result r;

    expect_limit(f, "2 1 1000", "allowed 1", true);
    ck_assert_str_eq(fake_value(f, "rl.user"), "1000 1000");
    expect_limit(f, "2 1 1000", "allowed 0", true);
    expect_limit(f, "2 1 1000", "denied 1000", false); /* writes nothing */
    expect_limit(f, "2 1 1400", "denied 600", false);
    expect_limit(f, "2 1 2000", "allowed 0", true);
    ck_assert_str_eq(fake_value(f, "rl.user"), "0 2000");
    /* a clock going backwards refills nothing */
    expect_limit(f, "2 1 1500", "denied 1000", false);
    /* a long pause refills the bucket, never above its capacity */
    expect_limit(f, "2 1 999999999", "allowed 1", true);
    /* several tokens at once; 4 per second: 250 ms per token */
    expect_limit(f, "10 4 1000010001 5", "allowed 5", true);
    expect_limit(f, "10 4 1000010001 6", "denied 250", false);
    /* bad arguments and a key holding something else */
    run(f, "ratelimit", "rl.user", "2 1", &r);
    expect_fail(&r, KV_EINVAL, "CAPACITY RATE_PER_S NOW_MS [COST]");
    proc_result_free(&r);
    run(f, "ratelimit", "rl.user", "2 1 5 3", &r);
    expect_fail(&r, KV_EINVAL, "COST 1..CAPACITY");
    proc_result_free(&r);
    run(f, "ratelimit", "rl.user", "2  1 5", &r);
    expect_fail(&r, KV_EINVAL, "CAPACITY");
    proc_result_free(&r);
    fake_set(f, "rl.other", "lots");
    run(f, "ratelimit", "rl.other", "2 1 5", &r);
    expect_fail(&r, KV_EINVAL, "TOKENS_MILLI LAST_MS");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

START_TEST(sum_prefix_adds_the_integers_under_a_prefix_of_one_shard)
{
    struct fake *f = fake_new();
    struct proc_result r;
    char other[32];

    fake_set(f, "{a}.n1", "5");
    fake_set(f, "{a}.n2", "-2");
    fake_set(f, "{a}.n3", "x");
    fake_set(f, "{a}.n4", "");
    fake_set(f, "{a}.m", "100");
    fake_set(f, other_key(other, sizeof other, shard_a()), "7");
    run(f, "sum_prefix", "{a}", "{a}.n", &r);
    expect_ok(&r);
    expect_reply(&r, "2 3 2");
    ck_assert(r.readonly);
    ck_assert(r.scanned);
    ck_assert_uint_eq(r.nops, 0);
    proc_result_free(&r);
    run(f, "sum_prefix", "{a}", "", &r); /* every key of the shard */
    expect_reply(&r, "3 103 2");
    proc_result_free(&r);
    run(f, "sum_prefix", "{a}", "{a}.zzz", &r);
    expect_reply(&r, "0 0 0");
    proc_result_free(&r);
    fake_set(f, "{a}.n5", "9223372036854775807");
    run(f, "sum_prefix", "{a}", "{a}.n", &r);
    expect_fail(&r, KV_ERANGE, "sum_prefix: the sum overflows int64");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

static int run_move(struct fake *f, const char *src, const char *dst,
                    const char *amount, struct proc_result *r)
{
    return run_list(f, &std_limits, "move", src,
                    (const char *const[]){dst, amount}, 2, r);
}

START_TEST(move_moves_an_amount_inside_one_hash_tag)
{
    struct fake *f = fake_new();
    struct proc_result r;

    fake_set(f, "{acme}.alice", "100");
    run_move(f, "{acme}.alice", "{acme}.bob", "30", &r);
    expect_ok(&r);
    expect_reply(&r, "70 30");
    ck_assert_uint_eq(r.nwrites, 2);
    ck_assert_int_eq(fake_apply(f, &r), KV_OK);
    ck_assert_str_eq(fake_value(f, "{acme}.alice"), "70");
    ck_assert_str_eq(fake_value(f, "{acme}.bob"), "30");
    proc_result_free(&r);
    run_move(f, "{acme}.bob", "{acme}.alice", "30", &r);
    expect_reply(&r, "0 100");
    ck_assert_int_eq(fake_apply(f, &r), KV_OK);
    proc_result_free(&r);
    ck_assert_str_eq(fake_value(f, "{acme}.bob"), "0");
    fake_free(f);
}
END_TEST

START_TEST(move_with_insufficient_funds_writes_nothing)
{
    struct fake *f = fake_new();
    struct proc_result r;
    char other[32];
    uint64_t before;

    fake_set(f, "{acme}.alice", "100");
    before = f->version;
    /* the destination was credited (buffered) before the check failed */
    ck_assert_int_eq(run_move(f, "{acme}.alice", "{acme}.bob", "101", &r),
                     KV_ECONFLICT);
    expect_fail(&r, KV_ECONFLICT, "insufficient funds");
    proc_result_free(&r);
    ck_assert_str_eq(fake_value(f, "{acme}.alice"), "100");
    ck_assert_ptr_null(fake_value(f, "{acme}.bob"));
    ck_assert_uint_eq(f->version, before);
    /* an account outside the tag is on another shard (or refused) */
    other_key(other, sizeof other, shard_of("{acme}", 6, NSHARDS));
    run_move(f, "{acme}.alice", other, "1", &r);
    expect_fail(&r, KV_EINVAL, "hash tag");
    proc_result_free(&r);
    run_move(f, "{acme}.alice", "{acme}.alice", "1", &r);
    expect_fail(&r, KV_EINVAL, "the destination is the source");
    proc_result_free(&r);
    run_move(f, "{acme}.alice", "{acme}.bob", "0", &r);
    expect_fail(&r, KV_EINVAL, "amount");
    proc_result_free(&r);
    run(f, "move", "{acme}.alice", "{acme}.bob 5", &r);
    expect_fail(&r, KV_EINVAL, "list of 2 items");
    proc_result_free(&r);
    fake_free(f);
}
END_TEST

/* ---- suite ----------------------------------------------------------------
 */

/* The proc suite: ctx semantics, budgets, built-ins, lists, merging, the
 * registry and the example plugins. */
Suite *proc_suite(void)
{
    Suite *s = suite_create("proc");
    TCase *tc;

    tc = tcase_create("ctx");
    tcase_add_unchecked_fixture(tc, open_registry, close_registry);
    tcase_add_test(tc, gets_see_the_calls_own_puts_and_deletes);
    tcase_add_test(tc, reads_become_conditions_and_last_writes_become_ops);
    tcase_add_test(tc, a_call_that_only_reads_has_only_conditions);
    tcase_add_test(tc, bad_keys_and_values_fail_the_write_only);
    tcase_add_test(tc, the_keys_budget_counts_distinct_keys);
    tcase_add_test(tc, each_key_a_scan_visits_counts_against_the_keys_budget);
    tcase_add_test(tc, the_write_budget_counts_every_write);
    tcase_add_test(tc, the_reply_budget_bounds_the_reply);
    tcase_add_test(tc, a_key_on_another_shard_fails_the_call);
    tcase_add_test(tc, a_read_only_procedure_cannot_write);
    tcase_add_test(tc, wait_and_locked_answers_of_the_reader_end_the_call);
    tcase_add_test(tc, scans_visit_the_shards_keys_in_order);
    tcase_add_test(tc, error_codes_and_messages_reach_the_result);
    tcase_add_test(tc, a_call_on_every_shard_needs_a_read_only_procedure);
    tcase_add_test(tc, ctx_functions_refuse_bad_arguments);
    suite_add_tcase(s, tc);

    tc = tcase_create("builtins");
    tcase_add_unchecked_fixture(tc, open_registry, close_registry);
    tcase_add_test(tc, incr_adds_to_a_decimal_counter);
    tcase_add_test(tc, incr_refuses_what_is_not_an_int64);
    tcase_add_test(tc, incr_fails_on_overflow_both_ways);
    tcase_add_test(tc, append_grows_a_value_up_to_the_value_limit);
    tcase_add_test(tc, cas_writes_only_over_the_expected_value);
    tcase_add_test(tc, cas_wants_a_list_of_two_items);
    tcase_add_test(tc, mget_replies_a_list_of_values);
    suite_add_tcase(s, tc);

    tc = tcase_create("lists");
    tcase_add_unchecked_fixture(tc, open_registry, close_registry);
    tcase_add_test(tc, list_items_round_trip_through_a_reply);
    tcase_add_test(tc, truncated_lists_are_refused_and_missing_items_are_null);
    tcase_add_test(tc, merging_uses_the_merge_function_or_makes_a_list);
    suite_add_tcase(s, tc);

    tc = tcase_create("registry");
    tcase_add_unchecked_fixture(tc, open_registry, close_registry);
    tcase_add_test(tc,
                   the_registry_holds_builtins_and_plugins_with_their_hashes);
    tcase_add_test(tc, a_missing_plugin_file_is_an_error_naming_it);
    tcase_add_test(tc, a_file_that_is_not_a_shared_object_is_an_error);
    tcase_add_test(tc, a_plugin_without_kv_proc_register_is_an_error);
    tcase_add_test(tc, a_name_defined_twice_names_both_definers);
    tcase_add_test(tc, a_failing_register_or_a_bad_name_is_an_error);
    suite_add_tcase(s, tc);

    tc = tcase_create("plugins");
    tcase_add_unchecked_fixture(tc, open_registry, close_registry);
    tcase_add_test(tc,
                   ratelimit_allows_then_denies_then_allows_after_time_passes);
    tcase_add_test(tc,
                   sum_prefix_adds_the_integers_under_a_prefix_of_one_shard);
    tcase_add_test(tc, move_moves_an_amount_inside_one_hash_tag);
    tcase_add_test(tc, move_with_insufficient_funds_writes_nothing);
    suite_add_tcase(s, tc);
    return s;
}
