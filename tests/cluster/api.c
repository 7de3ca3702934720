/*
 * api - the kv.h contract, checked the same way in both modes.
 *
 * One list of tests runs twice: against "embedded:DIR" and against a real
 * 3-node cluster (8 shards, 3 replicas) opened through its cluster.conf. The
 * cluster case adds the seed-list ways of opening it. Only kv.h is used by
 * the tests themselves (admin.h only to see every node still answers).
 *
 * Tests share one database per mode, so each test uses keys under its own
 * prefix and never scans outside it.
 */
#include <check.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "admin.h"
#include "harness.h"
#include "kv.h"

#define MIB (1024u * 1024u)
#define MAX_KEY 4096u

/* A string literal as a (pointer, length) pair, without its NUL. */
#define S(lit) (lit), (sizeof(lit) - 1)

static char target[600]; /* what kv_open() gets in this mode */
static char embedded_dir[256];
static struct cluster *cl; /* the cluster mode's nodes */
static int problems;       /* a fixture failed where it cannot assert */
static kv *db;             /* this test's handle */

/* --- fixtures ------------------------------------------------------------- */

static void embedded_up(void)
{
    int rc = harness_tempdir(embedded_dir, sizeof embedded_dir);
    ck_assert_msg(rc == 0, "no temp dir: %s", kv_strerror(rc));
    snprintf(target, sizeof target, "embedded:%s", embedded_dir);
}

static void embedded_down(void)
{
    /* No assertions here: in fork mode an unchecked teardown runs in the
     * runner itself. */
    if (embedded_dir[0] != '\0' && harness_rmtree(embedded_dir) != 0)
        problems++;
    embedded_dir[0] = '\0';
}

static void cluster_up(void)
{
    int rc = cluster_start(&cl, 3, 8, 3);
    ck_assert_msg(rc == 0, "cluster did not start: %s", kv_strerror(rc));
    snprintf(target, sizeof target, "%s", cluster_conf_path(cl));
}

static void cluster_down(void)
{
    if (cl != NULL && cluster_stop(cl) != 0) {
        fprintf(stderr, "api: a node crashed or did not exit cleanly\n");
        problems++;
    }
    cl = NULL;
}

static void open_db(void)
{
    kv_open_opts oo = {.timeout_ms = 10000};
    int rc = kv_open(target, &oo, &db);
    ck_assert_msg(rc == KV_OK, "kv_open(%s): %s (%s)", target, kv_strerror(rc),
                  kv_errmsg(NULL));
}

static void close_db(void)
{
    kv_close(db);
    db = NULL;
}

/* --- helpers -------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t must_put(kv *h, const void *k, size_t kl, const void *v,
                         size_t vl)
{
    uint64_t ver = 0;
    int rc = kv_put(h, k, kl, v, vl, NULL, &ver);
    ck_assert_msg(rc == KV_OK, "put of a %zu-byte key: %s (%s)", kl,
                  kv_strerror(rc), kv_errmsg(h));
    ck_assert_msg(ver != 0, "a put created version 0");
    return ver;
}

/* Checks that K reads back as V (VL bytes) at version VER (0: any). */
static void expect_value(kv *h, const void *k, size_t kl, const void *v,
                         size_t vl, uint64_t ver)
{
    void *got = NULL;
    size_t glen = 0;
    uint64_t gver = 0;
    int rc = kv_get(h, k, kl, NULL, &got, &glen, &gver);
    ck_assert_msg(rc == KV_OK, "get of a %zu-byte key: %s (%s)", kl,
                  kv_strerror(rc), kv_errmsg(h));
    int same = glen == vl && (vl == 0 || memcmp(got, v, vl) == 0);
    int null_when_empty = vl != 0 || got == NULL;
    kv_free(got);
    ck_assert_msg(same, "read %zu bytes, wrote %zu (or other bytes)", glen, vl);
    ck_assert_msg(null_when_empty, "an empty value came back non-NULL");
    if (ver != 0)
        ck_assert_uint_eq(gver, ver);
    ck_assert_uint_ne(gver, 0);
}

static void expect_missing(kv *h, const void *k, size_t kl)
{
    void *got = NULL;
    size_t glen = 0;
    int rc = kv_get(h, k, kl, NULL, &got, &glen, NULL);
    if (rc == KV_OK)
        kv_free(got);
    ck_assert_msg(rc == KV_ENOTFOUND, "get of a deleted/unwritten key: %s",
                  kv_strerror(rc));
}

struct ent {
    unsigned char *k;
    size_t kl;
    unsigned char *v;
    size_t vl;
    uint64_t ver;
};

static int ent_cmp(const void *a, const void *b)
{
    const struct ent *x = a, *y = b;
    size_t n = x->kl < y->kl ? x->kl : y->kl;
    int c = memcmp(x->k, y->k, n);
    if (c != 0)
        return c;
    return x->kl < y->kl ? -1 : x->kl > y->kl;
}

/* Scans with SO and checks the result is exactly WANT[0..N) in order. */
static void expect_scan(kv *h, const kv_scan_opts *so, const struct ent *want,
                        size_t n)
{
    kv_iter *it = NULL;
    int rc = kv_scan(h, so, NULL, &it);
    ck_assert_msg(rc == KV_OK, "kv_scan: %s (%s)", kv_strerror(rc),
                  kv_errmsg(h));
    size_t i = 0;
    for (;;) {
        const void *k = NULL, *v = NULL;
        size_t kl = 0, vl = 0;
        uint64_t ver = 0;
        rc = kv_iter_next(it, &k, &kl, &v, &vl, &ver);
        if (rc == KV_EOF)
            break;
        ck_assert_msg(rc == KV_OK, "kv_iter_next at %zu: %s (%s)", i,
                      kv_strerror(rc), kv_errmsg(h));
        ck_assert_msg(i < n, "the scan returned more than %zu entries", n);
        ck_assert_msg(kl == want[i].kl && memcmp(k, want[i].k, kl) == 0,
                      "entry %zu has the wrong key (%zu bytes, want %zu)", i,
                      kl, want[i].kl);
        ck_assert_msg(vl == want[i].vl &&
                          (vl == 0 || memcmp(v, want[i].v, vl) == 0),
                      "entry %zu has the wrong value", i);
        if (want[i].ver != 0)
            ck_assert_uint_eq(ver, want[i].ver);
        i++;
    }
    ck_assert_msg(i == n, "the scan returned %zu entries, want %zu", i, n);
    rc = kv_iter_next(it, NULL, NULL, NULL, NULL, NULL);
    ck_assert_msg(rc == KV_EOF, "an ended scan returned %s", kv_strerror(rc));
    kv_iter_free(it);
}

static struct ent *ents_new(size_t n)
{
    struct ent *e = calloc(n, sizeof *e);
    ck_assert_ptr_nonnull(e);
    return e;
}

static void ents_free(struct ent *e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(e[i].k);
        free(e[i].v);
    }
    free(e);
}

static void ent_set(struct ent *e, const void *k, size_t kl, const void *v,
                    size_t vl)
{
    e->k = malloc(kl);
    e->v = malloc(vl + 1);
    ck_assert(e->k != NULL && e->v != NULL);
    memcpy(e->k, k, kl);
    if (vl != 0)
        memcpy(e->v, v, vl);
    e->kl = kl;
    e->vl = vl;
}

/* Writes every entry of E (recording versions). */
static void put_all(struct ent *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        e[i].ver = must_put(db, e[i].k, e[i].kl, e[i].v, e[i].vl);
}

/* Fills E[0..N) with "PREFIX%04zu" keys and "value-%zu" values. */
static void ents_numbered(struct ent *e, size_t n, const char *prefix)
{
    for (size_t i = 0; i < n; i++) {
        char k[64], v[64];
        int kl = snprintf(k, sizeof k, "%s%04zu", prefix, i);
        int vl = snprintf(v, sizeof v, "value-%zu", i);
        ent_set(&e[i], k, (size_t)kl, v, (size_t)vl);
    }
}

/* --- reads and writes ----------------------------------------------------- */

START_TEST(a_put_value_is_read_back)
{
    uint64_t v1 = must_put(db, S("rt/one"), S("first value"));
    expect_value(db, S("rt/one"), S("first value"), v1);
    uint64_t v2 = must_put(db, S("rt/two"), S("second"));
    expect_value(db, S("rt/two"), S("second"), v2);
    expect_value(db, S("rt/one"), S("first value"), v1);
    /* A NULL version pointer is allowed on both calls. */
    ck_assert_int_eq(kv_put(db, S("rt/three"), S("3"), NULL, NULL), KV_OK);
    void *val = NULL;
    size_t vlen = 0;
    ck_assert_int_eq(kv_get(db, S("rt/three"), NULL, &val, &vlen, NULL), KV_OK);
    ck_assert_uint_eq(vlen, 1);
    ck_assert_int_eq(((char *)val)[0], '3');
    kv_free(val);
}
END_TEST

START_TEST(binary_keys_and_values_with_nul_bytes_roundtrip)
{
    unsigned char val[512];
    for (size_t i = 0; i < sizeof val; i++)
        val[i] = (unsigned char)(i * 7); /* every byte value, NULs too */
    static const unsigned char k1[] = {0, 'b', 0};
    static const unsigned char k2[] = {0, 'b', 0, 0};
    static const unsigned char k3[] = {0xff, 0, 0xfe, 0x80, 0x7f};
    static const unsigned char k4[] = {0};
    uint64_t v1 = must_put(db, k1, sizeof k1, val, sizeof val);
    uint64_t v2 = must_put(db, k2, sizeof k2, val, 3);
    uint64_t v3 = must_put(db, k3, sizeof k3, "\0\0\0", 3);
    uint64_t v4 = must_put(db, k4, sizeof k4, "\0", 1);
    expect_value(db, k1, sizeof k1, val, sizeof val, v1);
    expect_value(db, k2, sizeof k2, val, 3, v2);
    expect_value(db, k3, sizeof k3, "\0\0\0", 3, v3);
    expect_value(db, k4, sizeof k4, "\0", 1, v4);
    /* A key is all of its bytes: a shorter one is another key. */
    static const unsigned char k5[] = {0, 'b'};
    expect_missing(db, k5, sizeof k5);
}
END_TEST

START_TEST(an_empty_value_roundtrips)
{
    uint64_t v1 = must_put(db, S("empty/a"), "", 0);
    expect_value(db, S("empty/a"), "", 0, v1);
    uint64_t v2 = must_put(db, S("empty/b"), NULL, 0);
    expect_value(db, S("empty/b"), NULL, 0, v2);
    /* An empty value is a value, not a deletion. */
    struct ent want[2] = {{(unsigned char *)"empty/a", 7, NULL, 0, v1},
                          {(unsigned char *)"empty/b", 7, NULL, 0, v2}};
    kv_scan_opts so = {.prefix = "empty/", .prefix_len = 6};
    expect_scan(db, &so, want, 2);
}
END_TEST

START_TEST(getting_a_missing_key_returns_enotfound)
{
    void *val = &val;
    size_t vlen = 12345;
    uint64_t ver = 777;
    int rc = kv_get(db, S("missing/never-written"), NULL, &val, &vlen, &ver);
    ck_assert_int_eq(rc, KV_ENOTFOUND);
    /* On error, outputs are left untouched. */
    ck_assert_ptr_eq(val, &val);
    ck_assert_uint_eq(vlen, 12345);
    ck_assert_uint_eq(ver, 777);
    ck_assert_str_ne(kv_strerror(rc), "");
}
END_TEST

START_TEST(versions_strictly_increase_on_rewrite)
{
    uint64_t last = 0;
    for (int i = 0; i < 20; i++) {
        char v[16];
        int n = snprintf(v, sizeof v, "v%d", i);
        uint64_t ver = must_put(db, S("ver/k"), v, (size_t)n);
        ck_assert_msg(ver > last, "write %d got version %llu after %llu", i,
                      (unsigned long long)ver, (unsigned long long)last);
        expect_value(db, S("ver/k"), v, (size_t)n, ver);
        last = ver;
    }
    /* A write to another key of any shard does not lower it either. */
    must_put(db, S("ver/other"), S("x"));
    ck_assert_uint_gt(must_put(db, S("ver/k"), S("again")), last);
}
END_TEST

START_TEST(if_absent_succeeds_once_then_conflicts)
{
    kv_opts o = {.if_absent = 1};
    uint64_t v1 = 0, v2 = 0;
    ck_assert_int_eq(kv_put(db, S("absent/k"), S("first"), &o, &v1), KV_OK);
    ck_assert_uint_ne(v1, 0);
    ck_assert_int_eq(kv_put(db, S("absent/k"), S("second"), &o, &v2),
                     KV_ECONFLICT);
    expect_value(db, S("absent/k"), S("first"), v1);
    /* After a delete the key is absent again. */
    ck_assert_int_eq(kv_del(db, S("absent/k"), NULL), KV_OK);
    ck_assert_int_eq(kv_put(db, S("absent/k"), S("third"), &o, &v2), KV_OK);
    ck_assert_uint_gt(v2, v1);
    expect_value(db, S("absent/k"), S("third"), v2);
}
END_TEST

START_TEST(if_version_writes_only_at_that_version)
{
    uint64_t v1 = must_put(db, S("ifv/k"), S("one"));
    kv_opts wrong = {.if_version = v1 + 1000};
    ck_assert_int_eq(kv_put(db, S("ifv/k"), S("bad"), &wrong, NULL),
                     KV_ECONFLICT);
    expect_value(db, S("ifv/k"), S("one"), v1);
    kv_opts right = {.if_version = v1};
    uint64_t v2 = 0;
    ck_assert_int_eq(kv_put(db, S("ifv/k"), S("two"), &right, &v2), KV_OK);
    ck_assert_uint_gt(v2, v1);
    expect_value(db, S("ifv/k"), S("two"), v2);
    /* The old version is stale now. */
    ck_assert_int_eq(kv_put(db, S("ifv/k"), S("three"), &right, NULL),
                     KV_ECONFLICT);
    expect_value(db, S("ifv/k"), S("two"), v2);
}
END_TEST

START_TEST(if_version_on_a_missing_key_conflicts)
{
    kv_opts o = {.if_version = 1};
    ck_assert_int_eq(kv_put(db, S("ifv/missing"), S("x"), &o, NULL),
                     KV_ECONFLICT);
    expect_missing(db, S("ifv/missing"));
    uint64_t v = must_put(db, S("ifv/gone"), S("y"));
    ck_assert_int_eq(kv_del(db, S("ifv/gone"), NULL), KV_OK);
    o.if_version = v;
    ck_assert_int_eq(kv_put(db, S("ifv/gone"), S("z"), &o, NULL), KV_ECONFLICT);
    expect_missing(db, S("ifv/gone"));
}
END_TEST

START_TEST(delete_removes_the_key_once)
{
    uint64_t keep = must_put(db, S("del/keep"), S("k"));
    must_put(db, S("del/k"), S("v"));
    ck_assert_int_eq(kv_del(db, S("del/k"), NULL), KV_OK);
    expect_missing(db, S("del/k"));
    ck_assert_int_eq(kv_del(db, S("del/k"), NULL), KV_ENOTFOUND);
    ck_assert_int_eq(kv_del(db, S("del/never"), NULL), KV_ENOTFOUND);
    struct ent want[1] = {
        {(unsigned char *)"del/keep", 8, (unsigned char *)"k", 1, keep}};
    kv_scan_opts so = {.prefix = "del/", .prefix_len = 4};
    expect_scan(db, &so, want, 1);
}
END_TEST

START_TEST(delete_with_a_wrong_version_conflicts_and_keeps_the_key)
{
    uint64_t v1 = must_put(db, S("delv/k"), S("v1"));
    uint64_t v2 = must_put(db, S("delv/k"), S("v2"));
    kv_opts stale = {.if_version = v1};
    ck_assert_int_eq(kv_del(db, S("delv/k"), &stale), KV_ECONFLICT);
    expect_value(db, S("delv/k"), S("v2"), v2);
    kv_opts right = {.if_version = v2};
    ck_assert_int_eq(kv_del(db, S("delv/k"), &right), KV_OK);
    expect_missing(db, S("delv/k"));
}
END_TEST

/* --- scans ---------------------------------------------------------------- */

START_TEST(a_scan_returns_every_key_once_in_byte_order)
{
    enum { N = 500 };
    struct ent *e = ents_new(N);
    rng_state = 0x5eed0001u;
    size_t n = 0;
    unsigned shards_hit = 0;
    for (int tries = 0; n < N && tries < 100 * N; tries++) {
        /* "scan/" then 1..9 random bytes of any value (NUL, 0xff...). */
        unsigned char k[16] = "scan/";
        size_t kl = 5 + 1 + rng_next() % 9;
        for (size_t j = 5; j < kl; j++)
            k[j] = (unsigned char)rng_next();
        int dup = 0;
        for (size_t j = 0; j < n && !dup; j++)
            dup = e[j].kl == kl && memcmp(e[j].k, k, kl) == 0;
        if (dup)
            continue;
        unsigned char v[24];
        size_t vl = rng_next() % sizeof v;
        for (size_t j = 0; j < vl; j++)
            v[j] = (unsigned char)rng_next();
        ent_set(&e[n], k, kl, v, vl);
        shards_hit |= 1u << kv_shard_of(k, kl, 8);
        n++;
    }
    ck_assert_uint_eq(n, N);
    ck_assert_uint_eq(shards_hit, 0xffu); /* the keys cover all 8 shards */
    put_all(e, N);
    qsort(e, N, sizeof *e, ent_cmp);
    kv_scan_opts so = {.prefix = "scan/", .prefix_len = 5};
    expect_scan(db, &so, e, N);
    ents_free(e, N);
}
END_TEST

START_TEST(a_scan_by_prefix_returns_only_that_prefix)
{
    static const char *const keys[] = {"pfx/a",  "pfx/a/1",   "pfx/a/2",
                                       "pfx/ab", "pfx/a\xff", "pfx/b",
                                       "pfx/",   "pfw/a",     "pfx0"};
    enum { NK = sizeof keys / sizeof keys[0] };
    struct ent *e = ents_new(NK);
    for (size_t i = 0; i < NK; i++)
        ent_set(&e[i], keys[i], strlen(keys[i]), keys[i], strlen(keys[i]));
    put_all(e, NK);
    qsort(e, NK, sizeof *e, ent_cmp);
    /* Sorted: "pfw/a" "pfx/" "pfx/a" "pfx/a/1" "pfx/a/2" "pfx/ab"
     * "pfx/a\xff" "pfx/b" "pfx0". */
    ck_assert_uint_eq(e[2].kl, 5);
    kv_scan_opts so = {.prefix = "pfx/a", .prefix_len = 5};
    expect_scan(db, &so, &e[2], 5);
    so.prefix = "pfx/";
    so.prefix_len = 4;
    expect_scan(db, &so, &e[1], 7);
    so.prefix = "pfx/a/";
    so.prefix_len = 6;
    expect_scan(db, &so, &e[3], 2);
    so.prefix = "pfx/zzz";
    so.prefix_len = 7;
    expect_scan(db, &so, NULL, 0);
    ents_free(e, NK);
}
END_TEST

START_TEST(a_scan_between_start_and_end_is_half_open)
{
    enum { N = 20 };
    struct ent *e = ents_new(N);
    ents_numbered(e, N, "rng/");
    put_all(e, N);
    kv_scan_opts so = {.prefix = "rng/",
                       .prefix_len = 4,
                       .start = "rng/0005",
                       .start_len = 8,
                       .end = "rng/0012",
                       .end_len = 8};
    expect_scan(db, &so, &e[5], 7); /* 5..11 */
    so.end = NULL;
    so.end_len = 0;
    expect_scan(db, &so, &e[5], 15); /* from 5 to the prefix's end */
    so.start = NULL;
    so.start_len = 0;
    so.end = "rng/0003";
    so.end_len = 8;
    expect_scan(db, &so, e, 3);
    /* Without a prefix: bounds alone select the range. */
    kv_scan_opts r = {
        .start = "rng/0010", .start_len = 8, .end = "rng/0015", .end_len = 8};
    expect_scan(db, &r, &e[10], 5);
    /* Bounds between keys. */
    r.start = "rng/0010x";
    r.start_len = 9;
    r.end = "rng/0013\x01";
    r.end_len = 9;
    expect_scan(db, &r, &e[11], 3);
    /* An empty range. */
    r.start = "rng/0007";
    r.start_len = 8;
    r.end = "rng/0007";
    r.end_len = 8;
    expect_scan(db, &r, NULL, 0);
    ents_free(e, N);
}
END_TEST

START_TEST(a_scan_stops_at_its_limit)
{
    enum { N = 20 };
    struct ent *e = ents_new(N);
    ents_numbered(e, N, "lim/");
    put_all(e, N);
    kv_scan_opts so = {.prefix = "lim/", .prefix_len = 4, .limit = 7};
    expect_scan(db, &so, e, 7);
    so.limit = 1;
    expect_scan(db, &so, e, 1);
    so.limit = N;
    expect_scan(db, &so, e, N);
    so.limit = 1000;
    expect_scan(db, &so, e, N);
    so.limit = 0; /* no limit */
    expect_scan(db, &so, e, N);
    so.start = "lim/0015";
    so.start_len = 8;
    so.limit = 3;
    expect_scan(db, &so, &e[15], 3);
    ents_free(e, N);
}
END_TEST

START_TEST(a_scan_larger_than_a_page_returns_everything)
{
    /* One hash tag puts every key in one shard, so the shard alone must
     * page (pages hold at most a few hundred entries). */
    enum { N = 700 };
    struct ent *e = ents_new(N);
    ents_numbered(e, N, "{page}/");
    uint32_t shard = kv_shard_of(S("{page}/x"), 8);
    for (size_t i = 0; i < N; i++)
        ck_assert_uint_eq(kv_shard_of(e[i].k, e[i].kl, 8), shard);
    put_all(e, N);
    kv_scan_opts so = {.prefix = "{page}/", .prefix_len = 7};
    expect_scan(db, &so, e, N);
    so.limit = 300;
    expect_scan(db, &so, e, 300);
    so.limit = 0;
    so.start = "{page}/0255";
    so.start_len = 11;
    so.end = "{page}/0520";
    so.end_len = 11;
    expect_scan(db, &so, &e[255], 265);
    ents_free(e, N);
}
END_TEST

START_TEST(a_scan_returns_values_of_the_largest_size)
{
    enum { N = 3 };
    struct ent *e = ents_new(N);
    unsigned char *big = malloc(MIB);
    ck_assert_ptr_nonnull(big);
    for (size_t i = 0; i < N; i++) {
        char k[32];
        int kl = snprintf(k, sizeof k, "{big}/%zu", i);
        for (size_t j = 0; j < MIB; j++)
            big[j] = (unsigned char)(j * 31 + i);
        ent_set(&e[i], k, (size_t)kl, big, MIB);
    }
    free(big);
    put_all(e, N);
    kv_scan_opts so = {.prefix = "{big}/", .prefix_len = 6};
    expect_scan(db, &so, e, N);
    ents_free(e, N);
}
END_TEST

/* --- limits --------------------------------------------------------------- */

START_TEST(an_empty_key_is_einval)
{
    void *val = NULL;
    size_t vlen = 0;
    ck_assert_int_eq(kv_put(db, "", 0, S("v"), NULL, NULL), KV_EINVAL);
    ck_assert_str_ne(kv_errmsg(db), "");
    ck_assert_int_eq(kv_put(db, NULL, 0, S("v"), NULL, NULL), KV_EINVAL);
    ck_assert_int_eq(kv_get(db, "", 0, NULL, &val, &vlen, NULL), KV_EINVAL);
    ck_assert_int_eq(kv_del(db, "", 0, NULL), KV_EINVAL);
}
END_TEST

START_TEST(a_key_over_4096_bytes_is_etoobig_and_not_stored)
{
    char *k = malloc(MAX_KEY + 2);
    ck_assert_ptr_nonnull(k);
    memcpy(k, "bigkey/", 7);
    memset(k + 7, 'a', MAX_KEY + 2 - 7);
    /* Exactly the limit is fine. */
    uint64_t v = must_put(db, k, MAX_KEY, S("at the limit"));
    expect_value(db, k, MAX_KEY, S("at the limit"), v);
    k[7] = 'b';
    int rc = kv_put(db, k, MAX_KEY + 1, S("over"), NULL, NULL);
    ck_assert_int_eq(rc, KV_ETOOBIG);
    ck_assert_str_ne(kv_errmsg(db), "");
    void *val = NULL;
    size_t vlen = 0;
    ck_assert_int_eq(kv_get(db, k, MAX_KEY + 1, NULL, &val, &vlen, NULL),
                     KV_ETOOBIG);
    ck_assert_int_eq(kv_del(db, k, MAX_KEY + 1, NULL), KV_ETOOBIG);
    free(k);
    kv_scan_opts so = {.prefix = "bigkey/b", .prefix_len = 8};
    expect_scan(db, &so, NULL, 0);
}
END_TEST

START_TEST(a_value_over_the_limit_is_etoobig_and_not_stored)
{
    unsigned char *big = calloc(1, MIB + 1);
    ck_assert_ptr_nonnull(big);
    int rc = kv_put(db, S("bigval/new"), big, MIB + 1, NULL, NULL);
    ck_assert_int_eq(rc, KV_ETOOBIG);
    ck_assert_str_ne(kv_errmsg(db), "");
    expect_missing(db, S("bigval/new"));
    /* An existing key keeps its value and version. */
    uint64_t v = must_put(db, S("bigval/old"), S("small"));
    rc = kv_put(db, S("bigval/old"), big, MIB + 1, NULL, NULL);
    ck_assert_int_eq(rc, KV_ETOOBIG);
    kv_opts o = {.if_version = v};
    rc = kv_put(db, S("bigval/old"), big, 4 * MIB, &o, NULL);
    ck_assert_int_eq(rc, KV_ETOOBIG);
    free(big);
    expect_value(db, S("bigval/old"), S("small"), v);
}
END_TEST

START_TEST(a_value_of_exactly_1_mib_roundtrips)
{
    unsigned char *big = malloc(MIB);
    ck_assert_ptr_nonnull(big);
    for (size_t i = 0; i < MIB; i++)
        big[i] = (unsigned char)(i ^ (i >> 8) ^ (i >> 16));
    uint64_t v = must_put(db, S("mib/k"), big, MIB);
    expect_value(db, S("mib/k"), big, MIB, v);
    big[MIB - 1] ^= 0xff;
    uint64_t v2 = must_put(db, S("mib/k"), big, MIB);
    ck_assert_uint_gt(v2, v);
    expect_value(db, S("mib/k"), big, MIB, v2);
    free(big);
}
END_TEST

START_TEST(null_arguments_are_einval)
{
    void *val = NULL;
    size_t vlen = 0;
    kv *h = NULL;
    ck_assert_int_eq(kv_open(NULL, NULL, &h), KV_EINVAL);
    ck_assert_int_eq(kv_open(target, NULL, NULL), KV_EINVAL);
    ck_assert_ptr_null(h);
    ck_assert_int_eq(kv_get(db, S("null/k"), NULL, NULL, &vlen, NULL),
                     KV_EINVAL);
    ck_assert_int_eq(kv_get(db, S("null/k"), NULL, &val, NULL, NULL),
                     KV_EINVAL);
    ck_assert_int_eq(kv_put(db, S("null/k"), NULL, 5, NULL, NULL), KV_EINVAL);
    expect_missing(db, S("null/k"));
    ck_assert_int_eq(kv_scan(db, NULL, NULL, NULL), KV_EINVAL);
    ck_assert_int_eq(kv_iter_next(NULL, NULL, NULL, NULL, NULL, NULL),
                     KV_EINVAL);
    kv_close(NULL);
    kv_iter_free(NULL);
    kv_free(NULL);
}
END_TEST

/* --- pure functions ------------------------------------------------------- */

START_TEST(keys_with_the_same_hash_tag_share_a_shard)
{
    static const uint32_t counts[] = {1, 2, 8, 1000, 4096};
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        uint32_t n = counts[i];
        uint32_t s = kv_shard_of(S("{t}a"), n);
        ck_assert_uint_lt(s, n);
        ck_assert_uint_eq(kv_shard_of(S("{t}b"), n), s);
        ck_assert_uint_eq(kv_shard_of(S("x{t}y"), n), s);
        ck_assert_uint_eq(kv_shard_of(S("{t}{u}"), n), s);
        ck_assert_uint_eq(kv_shard_of(S("t"), n), s); /* the tag is hashed */
    }
    /* Without a (non-empty) tag the whole key is hashed: keys spread. */
    unsigned hit_plain = 0, hit_empty_tag = 0, hit_open = 0;
    for (int i = 0; i < 1000; i++) {
        char k[32];
        int n = snprintf(k, sizeof k, "key%d", i);
        hit_plain |= 1u << kv_shard_of(k, (size_t)n, 8);
        n = snprintf(k, sizeof k, "{}key%d", i);
        hit_empty_tag |= 1u << kv_shard_of(k, (size_t)n, 8);
        n = snprintf(k, sizeof k, "{key%d", i);
        hit_open |= 1u << kv_shard_of(k, (size_t)n, 8);
    }
    ck_assert_uint_eq(hit_plain, 0xffu);
    ck_assert_uint_eq(hit_empty_tag, 0xffu);
    ck_assert_uint_eq(hit_open, 0xffu);
    /* Deterministic. */
    ck_assert_uint_eq(kv_shard_of(S("same"), 4096),
                      kv_shard_of(S("same"), 4096));
}
END_TEST

START_TEST(kv_strerror_names_every_code)
{
    static const int codes[] = {KV_OK,        KV_ENOTFOUND, KV_ENOTLEADER,
                                KV_ECONFLICT, KV_ETIMEDOUT, KV_EUNAVAILABLE,
                                KV_EINVAL,    KV_ETOOBIG,   KV_EPROTO,
                                KV_EIO,       KV_ECORRUPT,  KV_ENOMEM,
                                KV_EAUTH,     KV_EOF,       KV_EINTERNAL};
    enum { NC = sizeof codes / sizeof codes[0] };
    for (size_t i = 0; i < NC; i++) {
        const char *s = kv_strerror(codes[i]);
        ck_assert_ptr_nonnull(s);
        ck_assert_msg(s[0] != '\0', "code %d has an empty name", codes[i]);
        for (size_t j = 0; j < i; j++)
            ck_assert_msg(strcmp(s, kv_strerror(codes[j])) != 0,
                          "codes %d and %d share the name \"%s\"", codes[i],
                          codes[j], s);
    }
    const char *unknown = kv_strerror(-9999);
    ck_assert_ptr_nonnull(unknown);
    ck_assert_str_ne(unknown, "");
    ck_assert_ptr_nonnull(kv_strerror(12345));
}
END_TEST

/* --- handles -------------------------------------------------------------- */

START_TEST(a_reopened_handle_keeps_the_data)
{
    uint64_t v1 = must_put(db, S("reopen/a"), S("alpha"));
    uint64_t v2 = must_put(db, S("reopen/b"), S("beta"));
    ck_assert_int_eq(kv_del(db, S("reopen/b"), NULL), KV_OK);
    kv_close(db);
    db = NULL;
    open_db();
    expect_value(db, S("reopen/a"), S("alpha"), v1);
    expect_missing(db, S("reopen/b"));
    /* Versions keep increasing across the reopen. */
    uint64_t v3 = must_put(db, S("reopen/a"), S("gamma"));
    ck_assert_uint_gt(v3, v1);
    ck_assert_uint_gt(v3, v2);
}
END_TEST

START_TEST(two_handles_see_each_others_writes)
{
    kv *other = NULL;
    int rc = kv_open(target, NULL, &other);
    ck_assert_msg(rc == KV_OK, "second kv_open: %s (%s)", kv_strerror(rc),
                  kv_errmsg(NULL));
    uint64_t v1 = must_put(db, S("two/a"), S("from one"));
    expect_value(other, S("two/a"), S("from one"), v1);
    uint64_t v2 = must_put(other, S("two/b"), S("from two"));
    expect_value(db, S("two/b"), S("from two"), v2);
    kv_opts o = {.if_version = v1};
    uint64_t v3 = 0;
    ck_assert_int_eq(kv_put(other, S("two/a"), S("changed"), &o, &v3), KV_OK);
    expect_value(db, S("two/a"), S("changed"), v3);
    ck_assert_int_eq(kv_put(db, S("two/a"), S("stale"), &o, NULL),
                     KV_ECONFLICT);
    ck_assert_int_eq(kv_del(db, S("two/b"), NULL), KV_OK);
    expect_missing(other, S("two/b"));
    kv_close(other);
}
END_TEST

/* --- transactions --------------------------------------------------------
 * Every key of a test shares one hash tag, so in cluster mode the whole
 * transaction is on one shard. */

/* Commits T, asserting KV_OK, and returns the versions (kv_free them). */
static uint64_t *must_commit(kv_txn *t, size_t want_n)
{
    uint64_t *vers = NULL;
    size_t n = 12345;
    int rc = kv_txn_commit(t, &vers, &n);
    ck_assert_msg(rc == KV_OK, "kv_txn_commit: %s (%s)", kv_strerror(rc),
                  kv_errmsg(db));
    ck_assert_uint_eq(n, want_n);
    ck_assert(want_n == 0 ? vers == NULL : vers != NULL);
    return vers;
}

static kv_txn *must_begin(kv *h)
{
    kv_txn *t = NULL;
    int rc = kv_txn_begin(h, NULL, &t);
    ck_assert_msg(rc == KV_OK, "kv_txn_begin: %s", kv_strerror(rc));
    ck_assert_ptr_nonnull(t);
    return t;
}

START_TEST(a_transaction_commits_several_writes_at_one_version)
{
    uint64_t old = must_put(db, S("{t1}gone"), S("x"));
    kv_txn *t = must_begin(db);
    ck_assert_int_eq(kv_txn_put(t, S("{t1}a"), S("alpha")), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t1}b"), S("beta")), KV_OK);
    ck_assert_int_eq(kv_txn_del(t, S("{t1}gone")), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t1}empty"), NULL, 0), KV_OK);
    uint64_t *v = must_commit(t, 4);
    ck_assert_uint_gt(v[0], old);
    ck_assert_uint_eq(v[1], v[0]); /* one version for every write */
    ck_assert_uint_eq(v[2], 0);    /* a delete */
    ck_assert_uint_eq(v[3], v[0]);
    expect_value(db, S("{t1}a"), S("alpha"), v[0]);
    expect_value(db, S("{t1}b"), S("beta"), v[0]);
    expect_value(db, S("{t1}empty"), NULL, 0, v[0]);
    expect_missing(db, S("{t1}gone"));
    kv_free(v);
    /* Versions may be left out; deleting a missing key is no error. */
    t = must_begin(db);
    ck_assert_int_eq(kv_txn_del(t, S("{t1}never")), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t1}a"), S("again")), KV_OK);
    ck_assert_int_eq(kv_txn_commit(t, NULL, NULL), KV_OK);
    expect_value(db, S("{t1}a"), S("again"), 0);
}
END_TEST

START_TEST(ops_on_one_key_check_the_state_before_and_the_last_write_wins)
{
    kv_txn *t = must_begin(db);
    /* The key is absent before the transaction, whatever it writes. */
    ck_assert_int_eq(kv_txn_if_absent(t, S("{t2}k")), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t2}k"), S("1")), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t2}k"), S("2")), KV_OK);
    ck_assert_int_eq(kv_txn_del(t, S("{t2}k")), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t2}k"), S("3")), KV_OK);
    ck_assert_int_eq(kv_txn_if_absent(t, S("{t2}k")), KV_OK);
    uint64_t *v = must_commit(t, 4);
    expect_value(db, S("{t2}k"), S("3"), v[3]);
    uint64_t ver = v[3];
    kv_free(v);
    /* A final delete wins too. */
    t = must_begin(db);
    ck_assert_int_eq(kv_txn_if_version(t, S("{t2}k"), ver), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t2}k"), S("4")), KV_OK);
    ck_assert_int_eq(kv_txn_del(t, S("{t2}k")), KV_OK);
    ck_assert_int_eq(kv_txn_if_version(t, S("{t2}k"), ver), KV_OK);
    ck_assert_int_eq(kv_txn_commit(t, NULL, NULL), KV_OK);
    expect_missing(db, S("{t2}k"));
}
END_TEST

START_TEST(conditions_that_hold_let_the_writes_through)
{
    uint64_t va = must_put(db, S("{t3}a"), S("a1"));
    kv_txn *t = must_begin(db);
    ck_assert_int_eq(kv_txn_if_version(t, S("{t3}a"), va), KV_OK);
    ck_assert_int_eq(kv_txn_if_absent(t, S("{t3}b")), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t3}b"), S("b1")), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t3}a"), S("a2")), KV_OK);
    uint64_t *v = must_commit(t, 2);
    ck_assert_uint_gt(v[0], va);
    expect_value(db, S("{t3}a"), S("a2"), v[0]);
    expect_value(db, S("{t3}b"), S("b1"), v[0]);
    kv_free(v);
    /* A transaction of conditions alone commits and writes nothing. */
    t = must_begin(db);
    ck_assert_int_eq(kv_txn_if_absent(t, S("{t3}c")), KV_OK);
    v = must_commit(t, 0);
    expect_missing(db, S("{t3}c"));
}
END_TEST

/* Commits T expecting KV_ECONFLICT with a message holding every WORDS. */
static void expect_conflict(kv_txn *t, const char *const *words, size_t n)
{
    uint64_t *vers = (uint64_t *)&vers;
    size_t nv = 777;
    int rc = kv_txn_commit(t, &vers, &nv);
    ck_assert_msg(rc == KV_ECONFLICT, "commit: %s (%s), want a conflict",
                  kv_strerror(rc), kv_errmsg(db));
    ck_assert_ptr_eq(vers, (uint64_t *)&vers); /* outputs untouched */
    ck_assert_uint_eq(nv, 777);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(strstr(kv_errmsg(db), words[i]) != NULL,
                      "'%s' not in the message '%s'", words[i], kv_errmsg(db));
}

START_TEST(a_failed_condition_writes_nothing_and_names_the_key)
{
    uint64_t va = must_put(db, S("{t4}a"), S("a1"));
    char want[64], got[64];
    snprintf(want, sizeof want, "expected %llu", (unsigned long long)va + 1000);
    snprintf(got, sizeof got, "has version %llu", (unsigned long long)va);
    /* A wrong version. */
    kv_txn *t = must_begin(db);
    ck_assert_int_eq(kv_txn_put(t, S("{t4}new"), S("n")), KV_OK);
    ck_assert_int_eq(kv_txn_if_version(t, S("{t4}a"), va + 1000), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t4}a"), S("a2")), KV_OK);
    const char *const w1[] = {"condition failed", "\"{t4}a\"", got, want};
    expect_conflict(t, w1, 4);
    expect_value(db, S("{t4}a"), S("a1"), va);
    expect_missing(db, S("{t4}new"));
    /* A key that exists where absence was wanted. */
    t = must_begin(db);
    ck_assert_int_eq(kv_txn_put(t, S("{t4}new"), S("n")), KV_OK);
    ck_assert_int_eq(kv_txn_if_absent(t, S("{t4}a")), KV_OK);
    const char *const w2[] = {"\"{t4}a\"", "exists"};
    expect_conflict(t, w2, 2);
    expect_missing(db, S("{t4}new"));
    /* A version on a key that does not exist. */
    t = must_begin(db);
    ck_assert_int_eq(kv_txn_if_version(t, S("{t4}nothere"), 5), KV_OK);
    ck_assert_int_eq(kv_txn_del(t, S("{t4}a")), KV_OK);
    const char *const w3[] = {"\"{t4}nothere\"", "is absent",
                              "expected version 5"};
    expect_conflict(t, w3, 3);
    expect_value(db, S("{t4}a"), S("a1"), va);
    /* Binary keys are quoted printably. */
    t = must_begin(db);
    ck_assert_int_eq(kv_txn_if_version(t, S("{t4}\x01\xff"), 9), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t4}new"), S("n")), KV_OK);
    const char *const w4[] = {"\"{t4}\\x01\\xff\""};
    expect_conflict(t, w4, 1);
    expect_missing(db, S("{t4}new"));
}
END_TEST

START_TEST(a_change_between_read_and_commit_is_a_conflict)
{
    kv *other = NULL;
    ck_assert_int_eq(kv_open(target, NULL, &other), KV_OK);
    uint64_t va = must_put(db, S("{t5}a"), S("10"));
    kv_txn *t = must_begin(db);
    void *val = NULL;
    size_t vlen = 0;
    uint64_t ver = 0;
    ck_assert_int_eq(kv_txn_get(t, S("{t5}a"), &val, &vlen, &ver), KV_OK);
    ck_assert_uint_eq(ver, va);
    ck_assert_uint_eq(vlen, 2);
    ck_assert_int_eq(memcmp(val, "10", 2), 0);
    kv_free(val);
    /* Someone else writes the key in between. */
    uint64_t vb = must_put(other, S("{t5}a"), S("20"));
    ck_assert_int_eq(kv_txn_put(t, S("{t5}a"), S("11")), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t5}log"), S("10->11")), KV_OK);
    char got[64];
    snprintf(got, sizeof got, "has version %llu", (unsigned long long)vb);
    const char *const w[] = {"\"{t5}a\"", got, "kv_txn_get"};
    expect_conflict(t, w, 3);
    expect_value(db, S("{t5}a"), S("20"), vb);
    expect_missing(db, S("{t5}log"));
    /* Reading an absent key records its absence. */
    t = must_begin(db);
    val = &val;
    ck_assert_int_eq(kv_txn_get(t, S("{t5}b"), &val, &vlen, &ver),
                     KV_ENOTFOUND);
    ck_assert_ptr_eq(val, &val); /* untouched on error */
    must_put(other, S("{t5}b"), S("created"));
    ck_assert_int_eq(kv_txn_put(t, S("{t5}b"), S("mine")), KV_OK);
    const char *const w2[] = {"\"{t5}b\"", "exists"};
    expect_conflict(t, w2, 2);
    expect_value(db, S("{t5}b"), S("created"), 0);
    /* Without a change in between, the same pattern commits. */
    t = must_begin(db);
    ck_assert_int_eq(kv_txn_get(t, S("{t5}a"), &val, &vlen, &ver), KV_OK);
    kv_free(val);
    ck_assert_int_eq(kv_txn_get(t, S("{t5}a"), &val, &vlen, &ver), KV_OK);
    kv_free(val); /* a second read of the same version: one condition */
    ck_assert_int_eq(kv_txn_put(t, S("{t5}a"), S("21")), KV_OK);
    uint64_t *v = must_commit(t, 1);
    expect_value(db, S("{t5}a"), S("21"), v[0]);
    kv_free(v);
    kv_close(other);
}
END_TEST

START_TEST(a_transaction_reads_its_own_writes)
{
    kv *other = NULL;
    ck_assert_int_eq(kv_open(target, NULL, &other), KV_OK);
    uint64_t vb = must_put(db, S("{t6}b"), S("old b"));
    kv_txn *t = must_begin(db);
    void *val = NULL;
    size_t vlen = 0;
    uint64_t ver = 99;
    ck_assert_int_eq(kv_txn_put(t, S("{t6}a"), S("mine")), KV_OK);
    ck_assert_int_eq(kv_txn_get(t, S("{t6}a"), &val, &vlen, &ver), KV_OK);
    ck_assert_uint_eq(vlen, 4);
    ck_assert_int_eq(memcmp(val, "mine", 4), 0);
    ck_assert_uint_eq(ver, 0); /* not written yet */
    kv_free(val);
    ck_assert_int_eq(kv_txn_put(t, S("{t6}a"), NULL, 0), KV_OK);
    val = &val;
    ck_assert_int_eq(kv_txn_get(t, S("{t6}a"), &val, &vlen, NULL), KV_OK);
    ck_assert_ptr_null(val); /* empty, as kv_get */
    ck_assert_uint_eq(vlen, 0);
    ck_assert_int_eq(kv_txn_del(t, S("{t6}b")), KV_OK);
    ck_assert_int_eq(kv_txn_get(t, S("{t6}b"), &val, &vlen, &ver),
                     KV_ENOTFOUND);
    /* Own writes record no condition: changes by others do not conflict
     * (the transaction's writes win). */
    must_put(other, S("{t6}a"), S("theirs"));
    must_put(other, S("{t6}b"), S("new b"));
    uint64_t *v = must_commit(t, 3);
    ck_assert_uint_gt(v[0], vb);
    expect_value(db, S("{t6}a"), NULL, 0, v[0]);
    expect_missing(db, S("{t6}b"));
    kv_free(v);
    kv_close(other);
}
END_TEST

START_TEST(an_aborted_transaction_writes_nothing)
{
    uint64_t va = must_put(db, S("{t7}a"), S("kept"));
    kv_txn *t = must_begin(db);
    ck_assert_int_eq(kv_txn_put(t, S("{t7}a"), S("lost")), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t7}b"), S("lost")), KV_OK);
    ck_assert_int_eq(kv_txn_if_version(t, S("{t7}a"), va), KV_OK);
    kv_txn_abort(t);
    kv_txn_abort(NULL);
    expect_value(db, S("{t7}a"), S("kept"), va);
    expect_missing(db, S("{t7}b"));
    /* A transaction with no op commits trivially. */
    t = must_begin(db);
    must_commit(t, 0);
    t = must_begin(db);
    ck_assert_int_eq(kv_txn_commit(t, NULL, NULL), KV_OK);
}
END_TEST

START_TEST(transaction_limits_are_etoobig_and_leave_it_usable)
{
    kv_txn *t = must_begin(db);
    char k[32];
    /* 1000 ops is the default limit; the 1001st is refused. */
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(k, sizeof k, "{t8}k%04d", i);
        ck_assert_int_eq(kv_txn_put(t, k, (size_t)n, "v", 1), KV_OK);
    }
    ck_assert_int_eq(kv_txn_put(t, S("{t8}over"), S("v")), KV_ETOOBIG);
    ck_assert_ptr_nonnull(strstr(kv_errmsg(db), "max_txn_ops"));
    ck_assert_int_eq(kv_txn_if_absent(t, S("{t8}over")), KV_ETOOBIG);
    void *val = NULL;
    size_t vlen = 0;
    ck_assert_int_eq(kv_txn_get(t, S("{t8}other"), &val, &vlen, NULL),
                     KV_ETOOBIG);
    /* A key it already wrote is still read from the transaction. */
    ck_assert_int_eq(kv_txn_get(t, S("{t8}k0007"), &val, &vlen, NULL), KV_OK);
    kv_free(val);
    uint64_t *v = must_commit(t, 1000);
    expect_value(db, S("{t8}k0999"), S("v"), v[999]);
    kv_free(v);
    expect_missing(db, S("{t8}over"));

    /* 1 MiB of keys and values is the default byte limit. */
    unsigned char *big = calloc(1, MIB);
    ck_assert_ptr_nonnull(big);
    t = must_begin(db);
    /* 7 + MIB - 12 bytes: 5 left. */
    ck_assert_int_eq(kv_txn_put(t, S("{t8}big"), big, MIB - 12), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("{t8}b"), S("x")), KV_ETOOBIG);
    ck_assert_ptr_nonnull(strstr(kv_errmsg(db), "max_txn_bytes"));
    ck_assert_int_eq(kv_txn_put(t, S("{t8}x"), "", 0), KV_OK); /* exactly */
    ck_assert_int_eq(kv_txn_del(t, S("{t8}")), KV_ETOOBIG);
    ck_assert_int_eq(kv_txn_commit(t, NULL, NULL), KV_OK);
    expect_value(db, S("{t8}big"), big, MIB - 12, 0);
    expect_value(db, S("{t8}x"), "", 0, 0);
    /* Keys and values over their own limits, as for kv_put. */
    t = must_begin(db);
    ck_assert_int_eq(kv_txn_put(t, S("{t8}huge"), big, MIB), KV_ETOOBIG);
    free(big);
    char *longkey = malloc(MAX_KEY + 1);
    ck_assert_ptr_nonnull(longkey);
    memset(longkey, 'k', MAX_KEY + 1);
    ck_assert_int_eq(kv_txn_put(t, longkey, MAX_KEY + 1, S("v")), KV_ETOOBIG);
    ck_assert_int_eq(kv_txn_del(t, longkey, MAX_KEY + 1), KV_ETOOBIG);
    ck_assert_int_eq(kv_txn_if_absent(t, longkey, MAX_KEY + 1), KV_ETOOBIG);
    ck_assert_int_eq(kv_txn_if_version(t, longkey, MAX_KEY + 1, 1), KV_ETOOBIG);
    ck_assert_int_eq(kv_txn_get(t, longkey, MAX_KEY + 1, &val, &vlen, NULL),
                     KV_ETOOBIG);
    free(longkey);
    ck_assert_int_eq(kv_txn_put(t, S("{t8}small"), S("ok")), KV_OK);
    ck_assert_int_eq(kv_txn_commit(t, NULL, NULL), KV_OK);
    expect_value(db, S("{t8}small"), S("ok"), 0);
    expect_missing(db, S("{t8}huge"));
}
END_TEST

static int refuse_commit(kv_txn *t, void *arg)
{
    (void)arg;
    /* Inside kv_txn_run, commit and abort are not the function's to call. */
    kv_txn_abort(t);
    ck_assert_int_eq(kv_txn_commit(t, NULL, NULL), KV_EINVAL);
    return kv_txn_put(t, S("{t9}run"), S("by run"));
}

START_TEST(bad_transaction_arguments_are_einval)
{
    kv_txn *t = NULL;
    kv_opts cond = {.if_version = 3};
    kv_opts absent = {.if_absent = 1};
    ck_assert_int_eq(kv_txn_begin(NULL, NULL, &t), KV_EINVAL);
    ck_assert_int_eq(kv_txn_begin(db, NULL, NULL), KV_EINVAL);
    ck_assert_int_eq(kv_txn_begin(db, &cond, &t), KV_EINVAL);
    ck_assert_int_eq(kv_txn_begin(db, &absent, &t), KV_EINVAL);
    ck_assert_ptr_null(t);
    void *val = NULL;
    size_t vlen = 0;
    ck_assert_int_eq(kv_txn_put(NULL, S("{t9}k"), S("v")), KV_EINVAL);
    ck_assert_int_eq(kv_txn_del(NULL, S("{t9}k")), KV_EINVAL);
    ck_assert_int_eq(kv_txn_if_version(NULL, S("{t9}k"), 1), KV_EINVAL);
    ck_assert_int_eq(kv_txn_if_absent(NULL, S("{t9}k")), KV_EINVAL);
    ck_assert_int_eq(kv_txn_get(NULL, S("{t9}k"), &val, &vlen, NULL),
                     KV_EINVAL);
    ck_assert_int_eq(kv_txn_commit(NULL, NULL, NULL), KV_EINVAL);
    ck_assert_int_eq(kv_txn_run(NULL, NULL, refuse_commit, NULL), KV_EINVAL);
    ck_assert_int_eq(kv_txn_run(db, NULL, NULL, NULL), KV_EINVAL);
    ck_assert_int_eq(kv_txn_run(db, &cond, refuse_commit, NULL), KV_EINVAL);

    t = must_begin(db);
    ck_assert_int_eq(kv_txn_put(t, "", 0, S("v")), KV_EINVAL);
    ck_assert_str_ne(kv_errmsg(db), "");
    ck_assert_int_eq(kv_txn_put(t, NULL, 3, S("v")), KV_EINVAL);
    ck_assert_int_eq(kv_txn_put(t, S("{t9}k"), NULL, 5), KV_EINVAL);
    ck_assert_int_eq(kv_txn_del(t, "", 0), KV_EINVAL);
    ck_assert_int_eq(kv_txn_if_absent(t, "", 0), KV_EINVAL);
    ck_assert_int_eq(kv_txn_if_version(t, S("{t9}k"), 0), KV_EINVAL);
    ck_assert_int_eq(kv_txn_get(t, "", 0, &val, &vlen, NULL), KV_EINVAL);
    ck_assert_int_eq(kv_txn_get(t, S("{t9}k"), NULL, &vlen, NULL), KV_EINVAL);
    ck_assert_int_eq(kv_txn_get(t, S("{t9}k"), &val, NULL, NULL), KV_EINVAL);
    /* None of these added an op: the transaction commits one write. */
    ck_assert_int_eq(kv_txn_put(t, S("{t9}k"), S("v")), KV_OK);
    uint64_t *vers = NULL;
    /* versions without n: refused, and the transaction still ends. */
    ck_assert_int_eq(kv_txn_commit(t, &vers, NULL), KV_EINVAL);
    expect_missing(db, S("{t9}k"));
    /* The function of kv_txn_run can neither commit nor abort. */
    ck_assert_int_eq(kv_txn_run(db, NULL, refuse_commit, NULL), KV_OK);
    expect_value(db, S("{t9}run"), S("by run"), 0);
}
END_TEST

/* kv_txn_run: a function that reads {t10}n, lets another handle change it
 * on its first call, then writes n+1. */
struct bump {
    kv *other;
    const char *key;
    size_t klen;
    int calls;
    int interfere; /* calls on which the other handle writes in between */
    int fail_with; /* returned instead of writing, when not 0 */
};

static int parse_count(const void *val, size_t vlen)
{
    char buf[32];
    ck_assert_uint_lt(vlen, sizeof buf);
    memcpy(buf, val, vlen);
    buf[vlen] = '\0';
    return atoi(buf);
}

static int bump_fn(kv_txn *t, void *arg)
{
    struct bump *b = arg;
    void *val = NULL;
    size_t vlen = 0;
    int n = 0;
    b->calls++;
    int rc = kv_txn_get(t, b->key, b->klen, &val, &vlen, NULL);
    if (rc == KV_OK) {
        n = parse_count(val, vlen);
        kv_free(val);
    } else if (rc != KV_ENOTFOUND) {
        return rc;
    }
    if (b->calls <= b->interfere)
        must_put(b->other, b->key, b->klen, S("100"));
    if (b->fail_with)
        return b->fail_with;
    char out[32];
    int len = snprintf(out, sizeof out, "%d", n + 1);
    return kv_txn_put(t, b->key, b->klen, out, (size_t)len);
}

START_TEST(kv_txn_run_retries_a_conflict_and_hands_back_other_errors)
{
    kv *other = NULL;
    ck_assert_int_eq(kv_open(target, NULL, &other), KV_OK);
    struct bump b = {
        .other = other, .key = "{t10}n", .klen = 6, .interfere = 1};
    must_put(db, S("{t10}n"), S("1"));
    /* The first attempt conflicts with the other handle's write of 100;
     * the second reads 100 and writes 101. */
    ck_assert_int_eq(kv_txn_run(db, NULL, bump_fn, &b), KV_OK);
    ck_assert_int_eq(b.calls, 2);
    expect_value(db, S("{t10}n"), S("101"), 0);
    /* A function error is returned at once, nothing written. */
    b = (struct bump){
        .other = other, .key = "{t10}n", .klen = 6, .fail_with = KV_ENOTFOUND};
    ck_assert_int_eq(kv_txn_run(db, NULL, bump_fn, &b), KV_ENOTFOUND);
    ck_assert_int_eq(b.calls, 1);
    expect_value(db, S("{t10}n"), S("101"), 0);
    /* A conflict every time: retried with backoff until the timeout. */
    b = (struct bump){
        .other = other, .key = "{t10}n", .klen = 6, .interfere = 1000000};
    kv_opts o = {.timeout_ms = 600};
    int64_t t0 = harness_now_ms();
    ck_assert_int_eq(kv_txn_run(db, &o, bump_fn, &b), KV_ECONFLICT);
    int64_t took = harness_now_ms() - t0;
    ck_assert_str_ne(kv_errmsg(db), "");
    ck_assert_msg(b.calls >= 3, "only %d attempts in %lld ms", b.calls,
                  (long long)took);
    ck_assert_msg(took >= 300 && took < 5000, "gave up after %lld ms",
                  (long long)took);
    expect_value(db, S("{t10}n"), S("100"), 0);
    kv_close(other);
}
END_TEST

#define INCREMENTS 25

struct incr_thread {
    int done;    /* increments that committed */
    int calls;   /* function calls, retries included */
    int last_rc; /* the first failure, or KV_OK */
};

static int incr_fn(kv_txn *t, void *arg)
{
    struct incr_thread *it = arg;
    void *val = NULL;
    size_t vlen = 0;
    int n = 0;
    it->calls++;
    int rc = kv_txn_get(t, S("{t11}ctr"), &val, &vlen, NULL);
    if (rc == KV_OK) {
        char buf[32];
        if (vlen >= sizeof buf) {
            kv_free(val);
            return KV_EINTERNAL;
        }
        memcpy(buf, val, vlen);
        buf[vlen] = '\0';
        n = atoi(buf);
        kv_free(val);
    } else if (rc != KV_ENOTFOUND) {
        return rc;
    }
    /* Widen the window between read and commit so the threads collide. */
    harness_sleep_ms(1);
    char out[32];
    int len = snprintf(out, sizeof out, "%d", n + 1);
    return kv_txn_put(t, S("{t11}ctr"), out, (size_t)len);
}

static void *incr_main(void *arg)
{
    struct incr_thread *it = arg;
    kv *h = NULL;
    kv_open_opts oo = {.timeout_ms = 20000};
    it->last_rc = kv_open(target, &oo, &h);
    for (int i = 0; i < INCREMENTS && it->last_rc == KV_OK; i++) {
        it->last_rc = kv_txn_run(h, NULL, incr_fn, it);
        if (it->last_rc == KV_OK)
            it->done++;
    }
    kv_close(h);
    return NULL;
}

START_TEST(kv_txn_run_from_two_threads_lands_every_increment)
{
    struct incr_thread th[2];
    pthread_t tid[2];
    memset(th, 0, sizeof th);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(pthread_create(&tid[i], NULL, incr_main, &th[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(tid[i], NULL);
    for (int i = 0; i < 2; i++)
        ck_assert_msg(th[i].last_rc == KV_OK && th[i].done == INCREMENTS,
                      "thread %d: %d increments, %s", i, th[i].done,
                      kv_strerror(th[i].last_rc));
    char want[16];
    int n = snprintf(want, sizeof want, "%d", 2 * INCREMENTS);
    expect_value(db, S("{t11}ctr"), want, (size_t)n, 0);
    fprintf(stderr, "api: %d increments took %d + %d calls\n", 2 * INCREMENTS,
            th[0].calls, th[1].calls);
}
END_TEST

START_TEST(any_keys_commit_together_in_an_embedded_database)
{
    /* One shard: keys with no common tag form one transaction. */
    uint64_t va = must_put(db, S("xs/a"), S("1"));
    kv_txn *t = must_begin(db);
    ck_assert_int_eq(kv_txn_if_version(t, S("xs/a"), va), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("xs/b"), S("2")), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("xs/c"), S("3")), KV_OK);
    ck_assert_int_eq(kv_txn_del(t, S("xs/a")), KV_OK);
    uint64_t *v = must_commit(t, 3);
    uint64_t vb = v[0];
    kv_free(v);
    expect_value(db, S("xs/b"), S("2"), vb);
    expect_value(db, S("xs/c"), S("3"), vb);
    expect_missing(db, S("xs/a"));
    t = must_begin(db);
    ck_assert_int_eq(kv_txn_if_version(t, S("xs/b"), vb), KV_OK);
    ck_assert_int_eq(kv_txn_if_absent(t, S("xs/c")), KV_OK);
    ck_assert_int_eq(kv_txn_put(t, S("xs/d"), S("4")), KV_OK);
    const char *const w[] = {"\"xs/c\"", "exists"};
    expect_conflict(t, w, 2);
    expect_missing(db, S("xs/d"));
}
END_TEST

/* --- cluster only --------------------------------------------------------- */

/* Opens the cluster from SEEDS and checks it sees and makes writes. */
static void check_seed_handle(const char *seeds, const char *key)
{
    kv_open_opts oo = {.timeout_ms = 2000};
    kv *h = NULL;
    int rc = kv_open(seeds, &oo, &h);
    ck_assert_msg(rc == KV_OK, "kv_open(%s): %s (%s)", seeds, kv_strerror(rc),
                  kv_errmsg(NULL));
    uint64_t v1 = must_put(db, key, strlen(key), S("via conf"));
    expect_value(h, key, strlen(key), S("via conf"), v1);
    uint64_t v2 = must_put(h, key, strlen(key), S("via seeds"));
    expect_value(db, key, strlen(key), S("via seeds"), v2);
    /* The seed handle knows every node and shard, not only the seeds. */
    ck_assert_uint_eq(admin_node_count(h), 3);
    for (int i = 0; i < 40; i++) {
        char k[48];
        int n = snprintf(k, sizeof k, "%s/%d", key, i);
        uint64_t v = must_put(h, k, (size_t)n, k, (size_t)n);
        expect_value(db, k, (size_t)n, k, (size_t)n, v);
    }
    kv_close(h);
}

START_TEST(a_seed_list_opens_the_cluster)
{
    char seeds[256];
    snprintf(seeds, sizeof seeds, "tcp://127.0.0.1:%u,tcp://127.0.0.1:%u",
             (unsigned)cluster_node_port(cl, 1),
             (unsigned)cluster_node_port(cl, 2));
    check_seed_handle(seeds, "seed/two");
    snprintf(seeds, sizeof seeds, "%s", cluster_node_addr(cl, 0));
    check_seed_handle(seeds, "seed/one");
}
END_TEST

START_TEST(a_seed_list_skips_a_seed_that_does_not_answer)
{
    /* A port bound but not listening: connections to it are refused, and
     * nobody else can take it while the test runs. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    char seeds[256];
    snprintf(seeds, sizeof seeds, "tcp://127.0.0.1:%u,%s",
             (unsigned)ntohs(a.sin_port), cluster_node_addr(cl, 2));
    check_seed_handle(seeds, "seed/dead-first");
    close(fd);
}
END_TEST

START_TEST(every_node_still_answers_at_the_end)
{
    for (size_t i = 0; i < admin_node_count(db); i++) {
        Kv__StatusResult *st = NULL;
        int rc = admin_status(db, i, 3000, &st);
        ck_assert_msg(rc == KV_OK, "node %u: %s", admin_node_id(db, i),
                      kv_strerror(rc));
        ck_assert_uint_eq(st->node_id, admin_node_id(db, i));
        ck_assert_uint_eq(st->shards, 8);
        ck_assert_uint_gt(st->requests, 0);
        admin_status_free(st);
    }
}
END_TEST

/* --- suites --------------------------------------------------------------- */

static void add_common_tests(TCase *tc)
{
    tcase_add_test(tc, a_put_value_is_read_back);
    tcase_add_test(tc, binary_keys_and_values_with_nul_bytes_roundtrip);
    tcase_add_test(tc, an_empty_value_roundtrips);
    tcase_add_test(tc, getting_a_missing_key_returns_enotfound);
    tcase_add_test(tc, versions_strictly_increase_on_rewrite);
    tcase_add_test(tc, if_absent_succeeds_once_then_conflicts);
    tcase_add_test(tc, if_version_writes_only_at_that_version);
    tcase_add_test(tc, if_version_on_a_missing_key_conflicts);
    tcase_add_test(tc, delete_removes_the_key_once);
    tcase_add_test(tc, delete_with_a_wrong_version_conflicts_and_keeps_the_key);
    tcase_add_test(tc, a_scan_returns_every_key_once_in_byte_order);
    tcase_add_test(tc, a_scan_by_prefix_returns_only_that_prefix);
    tcase_add_test(tc, a_scan_between_start_and_end_is_half_open);
    tcase_add_test(tc, a_scan_stops_at_its_limit);
    tcase_add_test(tc, a_scan_larger_than_a_page_returns_everything);
    tcase_add_test(tc, a_scan_returns_values_of_the_largest_size);
    tcase_add_test(tc, an_empty_key_is_einval);
    tcase_add_test(tc, a_key_over_4096_bytes_is_etoobig_and_not_stored);
    tcase_add_test(tc, a_value_over_the_limit_is_etoobig_and_not_stored);
    tcase_add_test(tc, a_value_of_exactly_1_mib_roundtrips);
    tcase_add_test(tc, null_arguments_are_einval);
    tcase_add_test(tc, keys_with_the_same_hash_tag_share_a_shard);
    tcase_add_test(tc, kv_strerror_names_every_code);
    tcase_add_test(tc, a_reopened_handle_keeps_the_data);
    tcase_add_test(tc, two_handles_see_each_others_writes);
    tcase_add_test(tc, a_transaction_commits_several_writes_at_one_version);
    tcase_add_test(
        tc, ops_on_one_key_check_the_state_before_and_the_last_write_wins);
    tcase_add_test(tc, conditions_that_hold_let_the_writes_through);
    tcase_add_test(tc, a_failed_condition_writes_nothing_and_names_the_key);
    tcase_add_test(tc, a_change_between_read_and_commit_is_a_conflict);
    tcase_add_test(tc, a_transaction_reads_its_own_writes);
    tcase_add_test(tc, an_aborted_transaction_writes_nothing);
    tcase_add_test(tc, transaction_limits_are_etoobig_and_leave_it_usable);
    tcase_add_test(tc, bad_transaction_arguments_are_einval);
    tcase_add_test(tc,
                   kv_txn_run_retries_a_conflict_and_hands_back_other_errors);
    tcase_add_test(tc, kv_txn_run_from_two_threads_lands_every_increment);
}

static Suite *embedded_suite(void)
{
    Suite *s = suite_create("api_embedded");
    TCase *tc = tcase_create("embedded");
    tcase_add_unchecked_fixture(tc, embedded_up, embedded_down);
    tcase_add_checked_fixture(tc, open_db, close_db);
    tcase_set_timeout(tc, 60);
    add_common_tests(tc);
    tcase_add_test(tc, any_keys_commit_together_in_an_embedded_database);
    suite_add_tcase(s, tc);
    return s;
}

static Suite *cluster_suite(void)
{
    Suite *s = suite_create("api_cluster");
    TCase *tc = tcase_create("cluster");
    tcase_add_unchecked_fixture(tc, cluster_up, cluster_down);
    tcase_add_checked_fixture(tc, open_db, close_db);
    tcase_set_timeout(tc, 120);
    add_common_tests(tc);
    tcase_add_test(tc, a_seed_list_opens_the_cluster);
    tcase_add_test(tc, a_seed_list_skips_a_seed_that_does_not_answer);
    tcase_add_test(tc, every_node_still_answers_at_the_end);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (harness_init() != 0)
        return EXIT_FAILURE;
    SRunner *sr = srunner_create(embedded_suite());
    srunner_add_suite(sr, cluster_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (problems != 0) {
        fprintf(stderr, "api: %d fixture problem(s)\n", problems);
        failed += problems;
    }
    return harness_fini(failed);
}
