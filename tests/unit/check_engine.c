/*
 * check_engine - unit tests of the shard state machine (libkv/engine.c).
 *
 * Versions, staging and group commit, conditional writes (conditions see
 * staged writes), per-shard key counts and applied versions, recovery by
 * reopening the store, node metadata checks, scans with every bound, and
 * the rollback of a failed commit; replicated mode: Raft indexes as versions
 * and applied index, exactly-once sessions (also past what the session
 * cache holds, and after a reset replaced them), engine_stage_applied, raw
 * records and engine_reset_shard; two-phase commit: intents, participant
 * and transaction records, the tombstones of resolved participants and
 * their GC. Every test runs on a real store in its own directory under
 * /tmp that the fixture removes.
 */
#define _XOPEN_SOURCE 700 /* nftw() */

#include <check.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine.h"
#include "kv.h"
#include "log.h"
#include "store.h"

Suite *engine_suite(void);

#define NSHARDS 4

static char rootdir[64]; /* per test case, made and removed by the parent */
static char tmpdir[128]; /* per test, inside rootdir */
static char dbdir[160];
static struct store *st;
static struct engine *eng;

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes PATH and everything below it (never follows symlinks). */
static void rm_tree(const char *path)
{
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Opens the store of the fixture and an engine of N shards over it. */
static void open_engine(uint32_t n)
{
    char err[256] = "";

    ck_assert_msg(store_open(dbdir, &st, err, sizeof err) == KV_OK,
                  "store_open: %s", err);
    ck_assert_int_eq(engine_open(st, n, &eng), KV_OK);
    ck_assert_ptr_nonnull(eng);
}

static void close_engine(void)
{
    engine_close(eng);
    eng = NULL;
    store_close(st);
    st = NULL;
}

/* What a restart does: close everything, then store_open + engine_open. */
static void reopen(uint32_t n)
{
    close_engine();
    open_engine(n);
}

/* The unchecked fixture runs in the parent process: even when a failed test
 * ends its forked child before the checked teardown, this removes its
 * directory. */
static void root_setup(void)
{
    snprintf(rootdir, sizeof rootdir, "/tmp/kv-check-engine-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(rootdir));
}

static void root_teardown(void)
{
    if (rootdir[0])
        rm_tree(rootdir);
    rootdir[0] = '\0';
}

static void setup(void)
{
    snprintf(tmpdir, sizeof tmpdir, "%s/t-XXXXXX", rootdir);
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    snprintf(dbdir, sizeof dbdir, "%s/db", tmpdir);
    st = NULL;
    eng = NULL;
    open_engine(NSHARDS);
}

static void teardown(void)
{
    close_engine();
    log_setup(LOG_WARN, NULL);
    if (tmpdir[0])
        rm_tree(tmpdir);
    tmpdir[0] = '\0';
}

/* ---- helpers ---------------------------------------------------------- */

static int stage_put(uint32_t shard, const char *k, const char *v,
                     uint64_t if_version, bool if_absent, uint64_t *version)
{
    struct engine_write w = {
        .op = ENGINE_PUT,
        .shard = shard,
        .key = k,
        .klen = strlen(k),
        .val = v,
        .vlen = strlen(v),
        .if_version = if_version,
        .if_absent = if_absent,
    };
    uint64_t ver = 0xdead;
    int rc = engine_stage(eng, &w, &ver);
    if (version)
        *version = ver;
    return rc;
}

static int stage_del(uint32_t shard, const char *k, uint64_t if_version)
{
    struct engine_write w = {
        .op = ENGINE_DEL,
        .shard = shard,
        .key = k,
        .klen = strlen(k),
        .if_version = if_version,
    };
    uint64_t ver = 0xdead;
    int rc = engine_stage(eng, &w, &ver);
    if (rc == KV_OK)
        ck_assert_uint_eq(ver, 0); /* a delete reports version 0 */
    return rc;
}

/* Puts K=V on SHARD and commits; returns the new version. */
static uint64_t put_ok(uint32_t shard, const char *k, const char *v)
{
    uint64_t ver = 0;

    ck_assert_int_eq(stage_put(shard, k, v, 0, false, &ver), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_uint_gt(ver, 0);
    return ver;
}

static void del_ok(uint32_t shard, const char *k)
{
    ck_assert_int_eq(stage_del(shard, k, 0), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
}

/* Asserts that K on SHARD holds V at VERSION (0: any version). */
static void expect_value(uint32_t shard, const char *k, const char *v,
                         uint64_t version)
{
    void *got = NULL;
    size_t n = 0;
    uint64_t ver = 0;
    int rc = engine_get(eng, shard, k, strlen(k), &got, &n, &ver);

    ck_assert_msg(rc == KV_OK, "get %u/'%s': %d", shard, k, rc);
    ck_assert_uint_eq(n, strlen(v));
    if (n)
        ck_assert_mem_eq(got, v, n);
    else
        ck_assert_ptr_null(got);
    if (version)
        ck_assert_uint_eq(ver, version);
    else
        ck_assert_uint_gt(ver, 0);
    free(got);
}

static void expect_missing(uint32_t shard, const char *k)
{
    void *got = NULL;
    size_t n = 0;
    uint64_t ver = 0;

    ck_assert_int_eq(engine_get(eng, shard, k, strlen(k), &got, &n, &ver),
                     KV_ENOTFOUND);
}

static void expect_info(uint32_t shard, uint64_t keys, uint64_t applied)
{
    uint64_t k = 0xdead, a = 0xdead;

    ck_assert_int_eq(engine_shard_info(eng, shard, &k, &a), KV_OK);
    ck_assert_msg(k == keys, "shard %u has %llu keys, expected %llu", shard,
                  (unsigned long long)k, (unsigned long long)keys);
    ck_assert_msg(a == applied, "shard %u applied %llu, expected %llu", shard,
                  (unsigned long long)a, (unsigned long long)applied);
}

static int count_entries(void *arg, const void *key, size_t klen,
                         const void *val, size_t vlen, uint64_t version)
{
    (void)key;
    (void)klen;
    (void)val;
    (void)vlen;
    (void)version;
    (*(int *)arg)++;
    return 0;
}

/* The applied version of SHARD. */
static uint64_t applied_of(uint32_t shard)
{
    uint64_t a = 0;

    ck_assert_int_eq(engine_shard_info(eng, shard, NULL, &a), KV_OK);
    return a;
}

/* ---- versions --------------------------------------------------------- */

START_TEST(versions_strictly_increase_within_a_shard)
{
    uint64_t v1 = put_ok(0, "a", "1");
    uint64_t v2 = put_ok(0, "b", "2");
    uint64_t v3 = put_ok(0, "a", "3"); /* an overwrite */
    del_ok(0, "b");
    uint64_t v4 = put_ok(0, "b", "4");

    ck_assert_uint_gt(v1, 0);
    ck_assert_uint_gt(v2, v1);
    ck_assert_uint_gt(v3, v2);
    ck_assert_uint_gt(v4, v3);
    expect_value(0, "a", "3", v3);
    expect_value(0, "b", "4", v4);

    /* Versions staged together before one commit increase as well. */
    uint64_t s1 = 0, s2 = 0;
    ck_assert_int_eq(stage_put(0, "c", "x", 0, false, &s1), KV_OK);
    ck_assert_int_eq(stage_put(0, "d", "y", 0, false, &s2), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_uint_gt(s1, v4);
    ck_assert_uint_gt(s2, s1);
    expect_value(0, "c", "x", s1);
    expect_value(0, "d", "y", s2);
}
END_TEST

START_TEST(versions_of_different_shards_are_independent)
{
    uint64_t a1 = put_ok(0, "k", "a");
    uint64_t a2 = put_ok(0, "k", "b");
    uint64_t a3 = put_ok(0, "k", "c");

    /* Writes to shard 0 do not advance shard 1: its sequence starts where
     * shard 0's did. */
    uint64_t b1 = put_ok(1, "k", "x");
    uint64_t b2 = put_ok(1, "other", "y");
    ck_assert_uint_eq(b1, a1);
    ck_assert_uint_eq(b2, a2);

    /* And shard 1's writes do not advance shard 0: its fourth version is
     * the one shard 2 gets for its fourth write with no other shard busy. */
    uint64_t a4 = put_ok(0, "k", "d");
    ck_assert_uint_gt(a4, a3);
    ck_assert_uint_eq(put_ok(2, "k", "1"), a1);
    ck_assert_uint_eq(put_ok(2, "k", "2"), a2);
    ck_assert_uint_eq(put_ok(2, "k", "3"), a3);
    ck_assert_uint_eq(put_ok(2, "k", "4"), a4);

    /* The same key lives separately in each shard. */
    expect_value(0, "k", "d", a4);
    expect_value(1, "k", "x", b1);
    expect_value(2, "k", "4", a4);
    expect_missing(3, "k");
}
END_TEST

/* ---- staging and commit ----------------------------------------------- */

START_TEST(staged_writes_are_invisible_until_commit)
{
    uint64_t v0 = put_ok(0, "old", "committed");
    uint64_t v = 0;

    ck_assert(!engine_has_staged(eng));
    ck_assert_int_eq(stage_put(0, "new", "staged", 0, false, &v), KV_OK);
    ck_assert_int_eq(stage_put(0, "old", "overwritten", 0, false, NULL), KV_OK);
    ck_assert_int_eq(stage_del(0, "old", 0), KV_OK);
    ck_assert(engine_has_staged(eng));

    expect_missing(0, "new");
    expect_value(0, "old", "committed", v0);
    expect_info(0, 1, v0);

    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert(!engine_has_staged(eng));
    expect_value(0, "new", "staged", v);
    expect_missing(0, "old");
    /* The overwrite and the delete came after the put. */
    uint64_t applied = applied_of(0);
    ck_assert_uint_gt(applied, v + 1);
    expect_info(0, 1, applied);
    /* Committing with nothing staged is a no-op. */
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_info(0, 1, applied);
}
END_TEST

START_TEST(conditions_see_staged_writes)
{
    uint64_t v1 = 0, v2 = 0, v3 = 0;

    /* Two if_absent puts of one key before one commit: the second loses. */
    ck_assert_int_eq(stage_put(0, "k", "first", 0, true, &v1), KV_OK);
    ck_assert_int_eq(stage_put(0, "k", "second", 0, true, NULL), KV_ECONFLICT);
    /* if_version matches the staged version, not the committed one. */
    ck_assert_int_eq(stage_put(0, "k", "third", v1, false, &v2), KV_OK);
    ck_assert_int_eq(stage_put(0, "k", "stale", v1, false, NULL), KV_ECONFLICT);
    /* A staged delete makes the key absent for what follows. */
    ck_assert_int_eq(stage_del(0, "k", v2), KV_OK);
    ck_assert_int_eq(stage_del(0, "k", 0), KV_ENOTFOUND);
    ck_assert_int_eq(stage_put(0, "k", "fourth", 0, true, &v3), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);

    expect_value(0, "k", "fourth", v3);
    expect_info(0, 1, v3);
}
END_TEST

START_TEST(if_version_succeeds_only_on_the_current_version)
{
    uint64_t v1 = put_ok(0, "k", "one");
    uint64_t v2 = 0;

    /* Wrong version: conflict, nothing changes. */
    ck_assert_int_eq(stage_put(0, "k", "x", v1 + 1, false, NULL), KV_ECONFLICT);
    ck_assert(!engine_has_staged(eng));
    expect_value(0, "k", "one", v1);

    /* Right version: a new version. */
    ck_assert_int_eq(stage_put(0, "k", "two", v1, false, &v2), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_uint_gt(v2, v1);
    expect_value(0, "k", "two", v2);

    /* The old version no longer matches. */
    ck_assert_int_eq(stage_put(0, "k", "x", v1, false, NULL), KV_ECONFLICT);

    /* A missing key has no version to match. */
    ck_assert_int_eq(stage_put(0, "missing", "x", v2, false, NULL),
                     KV_ECONFLICT);
    ck_assert_int_eq(stage_put(0, "missing", "x", 1, false, NULL),
                     KV_ECONFLICT);
    ck_assert(!engine_has_staged(eng));
    expect_missing(0, "missing");
    expect_info(0, 1, v2);
}
END_TEST

START_TEST(if_absent_fails_on_an_existing_key)
{
    uint64_t v1 = put_ok(0, "k", "one");
    uint64_t v2 = 0;

    ck_assert_int_eq(stage_put(0, "k", "x", 0, true, NULL), KV_ECONFLICT);
    ck_assert(!engine_has_staged(eng));
    expect_value(0, "k", "one", v1);
    ck_assert_int_eq(stage_put(0, "fresh", "y", 0, true, &v2), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "fresh", "y", v2);
    /* After a delete the key is absent again. */
    del_ok(0, "k");
    ck_assert_int_eq(stage_put(0, "k", "back", 0, true, NULL), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "k", "back", 0);
}
END_TEST

START_TEST(deleting_a_missing_key_is_not_found)
{
    ck_assert_int_eq(stage_del(0, "nothing", 0), KV_ENOTFOUND);
    ck_assert(!engine_has_staged(eng));
    put_ok(1, "elsewhere", "x");
    ck_assert_int_eq(stage_del(0, "elsewhere", 0), KV_ENOTFOUND);
    expect_info(0, 0, 0);
}
END_TEST

START_TEST(deleting_with_a_wrong_version_conflicts_and_changes_nothing)
{
    uint64_t v1 = put_ok(0, "k", "keep");

    ck_assert_int_eq(stage_del(0, "k", v1 + 5), KV_ECONFLICT);
    ck_assert(!engine_has_staged(eng));
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "k", "keep", v1);
    expect_info(0, 1, v1);

    /* The right version deletes. */
    ck_assert_int_eq(stage_del(0, "k", v1), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_missing(0, "k");
    ck_assert_uint_gt(applied_of(0), v1); /* a delete takes a version */
    expect_info(0, 0, applied_of(0));
}
END_TEST

START_TEST(empty_and_binary_values_and_keys_are_kept_exactly)
{
    static const unsigned char key[] = {'k', 0, 0xff};
    static const unsigned char val[] = {0, 1, 0, 0xff};
    struct engine_write w = {.op = ENGINE_PUT,
                             .shard = 3,
                             .key = key,
                             .klen = sizeof key,
                             .val = val,
                             .vlen = sizeof val};
    uint64_t ver = 0, got_ver = 0;
    void *got = NULL;
    size_t n = 0;

    ck_assert_int_eq(engine_stage(eng, &w, &ver), KV_OK);
    ck_assert_int_eq(stage_put(3, "empty", "", 0, false, NULL), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_int_eq(engine_get(eng, 3, key, sizeof key, &got, &n, &got_ver),
                     KV_OK);
    ck_assert_uint_eq(n, sizeof val);
    ck_assert_mem_eq(got, val, sizeof val);
    ck_assert_uint_eq(got_ver, ver);
    free(got);
    /* A key that differs after the NUL byte is another key. */
    ck_assert_int_eq(engine_get(eng, 3, "k\0", 2, NULL, NULL, NULL),
                     KV_ENOTFOUND);
    expect_value(3, "empty", "", 0);
    /* Every out pointer may be NULL. */
    ck_assert_int_eq(engine_get(eng, 3, "empty", 5, NULL, NULL, NULL), KV_OK);
}
END_TEST

START_TEST(a_shard_beyond_the_count_is_invalid)
{
    uint64_t ver = 0, k = 0, a = 0;
    struct engine_scan sc = {.shard = NSHARDS};
    bool more = false;

    ck_assert_int_eq(stage_put(NSHARDS, "k", "v", 0, false, &ver), KV_EINVAL);
    ck_assert_int_eq(stage_put(UINT32_MAX, "k", "v", 0, false, &ver),
                     KV_EINVAL);
    ck_assert_int_eq(stage_del(NSHARDS, "k", 0), KV_EINVAL);
    ck_assert(!engine_has_staged(eng));
    ck_assert_int_eq(engine_get(eng, NSHARDS, "k", 1, NULL, NULL, NULL),
                     KV_EINVAL);
    ck_assert_int_eq(engine_shard_info(eng, NSHARDS, &k, &a), KV_EINVAL);
    ck_assert_int_eq(engine_scan(eng, &sc, NULL, NULL, &more), KV_EINVAL);
    /* The last valid shard works. */
    put_ok(NSHARDS - 1, "k", "v");
    expect_value(NSHARDS - 1, "k", "v", 0);
}
END_TEST

/* ---- shard info and recovery ------------------------------------------ */

START_TEST(shard_info_counts_keys_and_tracks_the_applied_version)
{
    expect_info(0, 0, 0);
    uint64_t v = put_ok(0, "a", "1");
    expect_info(0, 1, v);
    v = put_ok(0, "b", "2");
    expect_info(0, 2, v);
    v = put_ok(0, "a", "overwrite"); /* an overwrite adds no key */
    expect_info(0, 2, v);
    del_ok(0, "a");
    uint64_t d = applied_of(0);
    ck_assert_uint_gt(d, v); /* a delete takes a version too */
    expect_info(0, 1, d);
    uint64_t w = put_ok(2, "z", "on another shard");
    expect_info(0, 1, d);
    expect_info(2, 1, w);
    expect_info(1, 0, 0);

    /* Failed conditions change nothing. */
    ck_assert_int_eq(stage_put(0, "b", "x", 0, true, NULL), KV_ECONFLICT);
    ck_assert_int_eq(stage_del(0, "a", 0), KV_ENOTFOUND);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_info(0, 1, d);

    /* Either out pointer may be NULL. */
    ck_assert_int_eq(engine_shard_info(eng, 0, NULL, NULL), KV_OK);
}
END_TEST

START_TEST(state_survives_close_and_reopen)
{
    uint64_t a = put_ok(0, "a", "1");
    uint64_t b = put_ok(0, "b", "2");
    del_ok(0, "a");
    uint64_t c = put_ok(1, "c", "3");
    uint64_t applied0 = 0, keys0 = 0;
    ck_assert_int_eq(engine_shard_info(eng, 0, &keys0, &applied0), KV_OK);
    ck_assert_uint_gt(applied0, b);

    reopen(NSHARDS);

    expect_missing(0, "a");
    expect_value(0, "b", "2", b);
    expect_value(1, "c", "3", c);
    expect_info(0, keys0, applied0);
    expect_info(1, 1, c);
    expect_info(2, 0, 0);

    /* Versions continue after the restart, they never go back. */
    uint64_t d = put_ok(0, "d", "4");
    ck_assert_uint_gt(d, applied0);
    ck_assert_uint_gt(put_ok(1, "e", "5"), c);
    /* And conditions see the recovered versions. */
    uint64_t e = 0;
    ck_assert_int_eq(stage_put(0, "b", "x", a, false, NULL), KV_ECONFLICT);
    ck_assert_int_eq(stage_put(0, "b", "x", b, false, &e), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_uint_gt(e, d);
    expect_info(0, 2, e);
}
END_TEST

START_TEST(staged_writes_are_lost_when_closed_before_commit)
{
    uint64_t v = put_ok(0, "kept", "yes");

    ck_assert_int_eq(stage_put(0, "lost", "no", 0, false, NULL), KV_OK);
    reopen(NSHARDS);
    expect_value(0, "kept", "yes", v);
    expect_missing(0, "lost");
    expect_info(0, 1, v);
}
END_TEST

/* Writes a raw store record KIND shard(u32 BE) KEY = VAL, bypassing the
 * engine, as damage on disk would look (layout: engine.h). */
static void put_raw(char kind, uint32_t shard, const char *key, const void *val,
                    size_t vlen)
{
    unsigned char k[64];
    size_t klen = strlen(key);
    struct store_batch *b = store_batch_new();

    ck_assert_ptr_nonnull(b);
    ck_assert_uint_lt(klen + 5, sizeof k);
    k[0] = (unsigned char)kind;
    k[1] = (unsigned char)(shard >> 24);
    k[2] = (unsigned char)(shard >> 16);
    k[3] = (unsigned char)(shard >> 8);
    k[4] = (unsigned char)shard;
    memcpy(k + 5, key, klen);
    store_batch_put(b, k, 5 + klen, val, vlen);
    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    store_batch_free(b);
}

START_TEST(a_damaged_record_is_reported_as_corrupt)
{
    static const unsigned char bad_tag[] = {0x02, 0, 0, 0, 0, 0, 0, 0, 1, 'v'};
    static const unsigned char zero_ver[] = {0x01, 0, 0, 0, 0, 0, 0, 0, 0};
    static const unsigned char short_rec[] = {0x01, 0, 0};
    struct engine_scan sc = {.shard = 1};
    uint64_t v = put_ok(1, "a", "fine");

    put_raw('D', 1, "b", bad_tag, sizeof bad_tag);
    put_raw('D', 1, "c", zero_ver, sizeof zero_ver);
    put_raw('D', 1, "d", short_rec, sizeof short_rec);
    ck_assert_int_eq(engine_get(eng, 1, "b", 1, NULL, NULL, NULL), KV_ECORRUPT);
    ck_assert_int_eq(engine_get(eng, 1, "c", 1, NULL, NULL, NULL), KV_ECORRUPT);
    ck_assert_int_eq(engine_get(eng, 1, "d", 1, NULL, NULL, NULL), KV_ECORRUPT);
    expect_value(1, "a", "fine", v);
    /* A condition cannot be evaluated against a damaged record. */
    ck_assert_int_eq(stage_put(1, "b", "x", 1, false, NULL), KV_ECORRUPT);
    ck_assert_int_eq(stage_del(1, "d", 0), KV_ECORRUPT);
    ck_assert(!engine_has_staged(eng));
    /* A scan stops at the damage and reports it, after the intact "a". */
    int n = 0;
    ck_assert_int_eq(engine_scan(eng, &sc, count_entries, &n, NULL),
                     KV_ECORRUPT);
    ck_assert_int_eq(n, 1);
}
END_TEST

START_TEST(a_damaged_shard_state_fails_engine_open)
{
    struct engine *e2 = NULL;

    put_ok(2, "k", "v");
    put_raw('A', 2, "", "short", 5);
    engine_close(eng);
    eng = NULL;
    ck_assert_int_eq(engine_open(st, NSHARDS, &e2), KV_ECORRUPT);
    ck_assert_ptr_null(e2);
}
END_TEST

/* ---- metadata --------------------------------------------------------- */

START_TEST(metadata_is_written_once_and_then_checked)
{
    char err[256] = "";

    ck_assert_int_eq(engine_check_meta(eng, "local", 1, err, sizeof err),
                     KV_OK);
    ck_assert_int_eq(engine_check_meta(eng, "local", 1, err, sizeof err),
                     KV_OK);
    reopen(NSHARDS);
    ck_assert_msg(engine_check_meta(eng, "local", 1, err, sizeof err) == KV_OK,
                  "after reopen: %s", err);
    /* Metadata is not user data. */
    expect_info(0, 0, 0);
}
END_TEST

/* Writes metadata record NAME = VALUE straight into the store. */
static void put_meta(const char *name, const char *value)
{
    char key[32];
    int klen = snprintf(key, sizeof key, "M%s", name);
    struct store_batch *b = store_batch_new();
    ck_assert_ptr_nonnull(b);
    store_batch_put(b, key, (size_t)klen, value, strlen(value));
    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    store_batch_free(b);
}

/* A directory of format 1 (sessions without dates) is read as it is and
 * becomes format 2, which a kvnode of format 1 refuses; a format this
 * build does not know is refused naming it. */
START_TEST(a_format_1_directory_is_upgraded_and_an_unknown_format_refused)
{
    char err[256] = "";
    put_meta("format", "1");
    ck_assert_int_eq(engine_check_meta(eng, "local", 1, err, sizeof err),
                     KV_OK);
    void *v = NULL;
    size_t vlen = 0;
    ck_assert_int_eq(store_get(st, "Mformat", 7, &v, &vlen), KV_OK);
    ck_assert_uint_eq(vlen, 1);
    ck_assert_mem_eq(v, "2", 1);
    free(v);
    reopen(NSHARDS);
    ck_assert_int_eq(engine_check_meta(eng, "local", 1, err, sizeof err),
                     KV_OK);

    put_meta("format", "3");
    ck_assert_int_eq(engine_check_meta(eng, "local", 1, err, sizeof err),
                     KV_EINVAL);
    ck_assert_msg(strstr(err, "format \"3\", not \"2\"") != NULL, "%s", err);
}
END_TEST

START_TEST(metadata_of_another_cluster_is_refused_naming_it)
{
    char err[256] = "";

    ck_assert_int_eq(engine_check_meta(eng, "alpha", 1, err, sizeof err),
                     KV_OK);
    reopen(NSHARDS);
    ck_assert_int_eq(engine_check_meta(eng, "beta", 1, err, sizeof err),
                     KV_EINVAL);
    ck_assert_msg(strstr(err, "cluster") && strstr(err, "alpha") &&
                      strstr(err, "beta"),
                  "message '%s' should name the cluster", err);
    /* The refusal did not overwrite what the directory belongs to. */
    ck_assert_int_eq(engine_check_meta(eng, "alpha", 1, err, sizeof err),
                     KV_OK);
}
END_TEST

START_TEST(metadata_of_another_node_is_refused_naming_it)
{
    char err[256] = "";

    ck_assert_int_eq(engine_check_meta(eng, "local", 1, err, sizeof err),
                     KV_OK);
    ck_assert_int_eq(engine_check_meta(eng, "local", 2, err, sizeof err),
                     KV_EINVAL);
    ck_assert_msg(strstr(err, "node") && strstr(err, "1") && strstr(err, "2"),
                  "message '%s' should name the node", err);
    ck_assert_int_eq(engine_check_meta(eng, "local", 1, err, sizeof err),
                     KV_OK);
}
END_TEST

START_TEST(metadata_of_another_shard_count_is_refused_naming_it)
{
    char err[256] = "";

    ck_assert_int_eq(engine_check_meta(eng, "local", 1, err, sizeof err),
                     KV_OK);
    reopen(8);
    ck_assert_int_eq(engine_check_meta(eng, "local", 1, err, sizeof err),
                     KV_EINVAL);
    ck_assert_msg(strstr(err, "shards") && strstr(err, "4") && strstr(err, "8"),
                  "message '%s' should name the shard count", err);
    reopen(NSHARDS);
    ck_assert_int_eq(engine_check_meta(eng, "local", 1, err, sizeof err),
                     KV_OK);
}
END_TEST

/* ---- scans ------------------------------------------------------------ */

#define MAX_SEEN 64

struct seen {
    unsigned n;
    char keys[MAX_SEEN][16];
    char vals[MAX_SEEN][16];
    uint64_t versions[MAX_SEEN];
    unsigned stop_after; /* return 42 after this many entries; 0: never */
};

static int collect(void *arg, const void *key, size_t klen, const void *val,
                   size_t vlen, uint64_t version)
{
    struct seen *s = arg;

    ck_assert_uint_lt(s->n, MAX_SEEN);
    ck_assert_uint_lt(klen, sizeof s->keys[0]);
    ck_assert_uint_lt(vlen, sizeof s->vals[0]);
    memcpy(s->keys[s->n], key, klen);
    s->keys[s->n][klen] = '\0';
    if (vlen)
        memcpy(s->vals[s->n], val, vlen);
    s->vals[s->n][vlen] = '\0';
    s->versions[s->n] = version;
    s->n++;
    return s->stop_after && s->n == s->stop_after ? 42 : 0;
}

/* Shard 1 holds a, ab, abc, b, ba, c (values are the key in upper case);
 * shards 0 and 2 hold keys that must never show up in its scans. */
static void put_scan_keys(void)
{
    static const char *keys[] = {"ba", "a", "c", "abc", "b", "ab"};
    for (size_t i = 0; i < 6; i++) {
        char up[8];
        size_t n = strlen(keys[i]);
        for (size_t j = 0; j <= n; j++)
            up[j] = keys[i][j] ? (char)(keys[i][j] - 'a' + 'A') : '\0';
        ck_assert_int_eq(stage_put(1, keys[i], up, 0, false, NULL), KV_OK);
    }
    ck_assert_int_eq(stage_put(0, "aa", "shard0", 0, false, NULL), KV_OK);
    ck_assert_int_eq(stage_put(0, "zz", "shard0", 0, false, NULL), KV_OK);
    ck_assert_int_eq(stage_put(2, "a", "shard2", 0, false, NULL), KV_OK);
    ck_assert_int_eq(stage_put(2, "\x01", "shard2", 0, false, NULL), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
}

/* Runs SC (on shard 1 when its shard is 0) and asserts it emits exactly WANT (a
 * space-separated key list, "" for none) with *more equal to WANT_MORE. */
static void expect_scan(struct engine_scan sc, const char *want, bool want_more)
{
    struct seen s;
    bool more = !want_more;
    char got[256] = "";

    memset(&s, 0, sizeof s);
    if (!sc.shard)
        sc.shard = 1;
    ck_assert_int_eq(engine_scan(eng, &sc, collect, &s, &more), KV_OK);
    for (unsigned i = 0; i < s.n; i++) {
        if (i)
            strcat(got, " ");
        strcat(got, s.keys[i]);
        /* Values and versions come with each key. */
        for (size_t j = 0; s.keys[i][j]; j++)
            ck_assert_int_eq(s.vals[i][j], s.keys[i][j] - 'a' + 'A');
        ck_assert_uint_gt(s.versions[i], 0);
    }
    ck_assert_msg(strcmp(got, want) == 0, "scan gave '%s', expected '%s'", got,
                  want);
    ck_assert_msg(more == want_more, "more is %d after '%s'", more, got);
}

/* A literal as a bound and its length: .start = B("ab") sets start and
 * start_len (the next member), and likewise for end, prefix and after. */
#define B(s) (s), (sizeof(s) - 1)

START_TEST(a_scan_returns_a_shards_keys_in_order)
{
    struct engine_scan sc = {.shard = 1};

    put_scan_keys();
    expect_scan(sc, "a ab abc b ba c", false);
}
END_TEST

START_TEST(a_scan_reports_each_entrys_value_and_version)
{
    struct engine_scan sc = {.shard = 1};
    struct seen s;
    uint64_t v1 = put_ok(1, "x", "X1");
    uint64_t v2 = put_ok(1, "y", "Y2");
    bool more = true;

    memset(&s, 0, sizeof s);
    ck_assert_int_eq(engine_scan(eng, &sc, collect, &s, &more), KV_OK);
    ck_assert_uint_eq(s.n, 2);
    ck_assert_str_eq(s.vals[0], "X1");
    ck_assert_uint_eq(s.versions[0], v1);
    ck_assert_str_eq(s.vals[1], "Y2");
    ck_assert_uint_eq(s.versions[1], v2);
    ck_assert(!more);
}
END_TEST

START_TEST(a_scan_honours_start_and_end)
{
    put_scan_keys();
    expect_scan((struct engine_scan){.start = B("ab")}, "ab abc b ba c", false);
    expect_scan((struct engine_scan){.start = B("abd")}, "b ba c", false);
    expect_scan((struct engine_scan){.end = B("b")}, "a ab abc", false);
    expect_scan((struct engine_scan){.end = B("ba")}, "a ab abc b", false);
    expect_scan((struct engine_scan){.start = B("ab"), .end = B("ba")},
                "ab abc b", false);
    expect_scan((struct engine_scan){.start = B("c"), .end = B("d")}, "c",
                false);
    expect_scan((struct engine_scan){.start = B("b"), .end = B("b")}, "",
                false);
    expect_scan((struct engine_scan){.start = B("c"), .end = B("a")}, "",
                false);
    expect_scan((struct engine_scan){.start = B("d")}, "", false);
}
END_TEST

START_TEST(a_scan_honours_a_prefix)
{
    put_scan_keys();
    expect_scan((struct engine_scan){.prefix = B("a")}, "a ab abc", false);
    expect_scan((struct engine_scan){.prefix = B("ab")}, "ab abc", false);
    expect_scan((struct engine_scan){.prefix = B("b")}, "b ba", false);
    expect_scan((struct engine_scan){.prefix = B("abcd")}, "", false);
    expect_scan((struct engine_scan){.prefix = B("z")}, "", false);
    /* With start: the greater bound wins. */
    expect_scan((struct engine_scan){.prefix = B("a"), .start = B("ab")},
                "ab abc", false);
    expect_scan((struct engine_scan){.prefix = B("b"), .start = B("a")}, "b ba",
                false);
    expect_scan((struct engine_scan){.prefix = B("a"), .start = B("b")}, "",
                false);
    /* With end. */
    expect_scan((struct engine_scan){.prefix = B("a"), .end = B("abc")}, "a ab",
                false);
}
END_TEST

START_TEST(a_scan_resumes_strictly_after_the_cursor)
{
    put_scan_keys();
    expect_scan((struct engine_scan){.after = B("ab"), .has_after = true},
                "abc b ba c", false);
    expect_scan((struct engine_scan){.after = B("abz"), .has_after = true},
                "b ba c", false);
    expect_scan((struct engine_scan){.after = B("c"), .has_after = true}, "",
                false);
    /* An empty cursor is before every key. */
    expect_scan((struct engine_scan){.after = "", .has_after = true},
                "a ab abc b ba c", false);
    /* The cursor is ignored unless has_after is set. */
    expect_scan((struct engine_scan){.after = B("b")}, "a ab abc b ba c",
                false);
    /* Cursor and start: the greater one wins. */
    expect_scan((struct engine_scan){.start = B("b"),
                                     .after = B("a"),
                                     .has_after = true},
                "b ba c", false);
    expect_scan((struct engine_scan){.start = B("a"),
                                     .after = B("b"),
                                     .has_after = true},
                "ba c", false);
    /* Cursor with prefix and end. */
    expect_scan((struct engine_scan){.prefix = B("a"),
                                     .after = B("a"),
                                     .has_after = true},
                "ab abc", false);
    expect_scan((struct engine_scan){.end = B("c"),
                                     .after = B("ab"),
                                     .has_after = true},
                "abc b ba", false);
}
END_TEST

START_TEST(a_scan_stops_at_the_limit_and_says_whether_more_remain)
{
    put_scan_keys();
    expect_scan((struct engine_scan){.limit = 2}, "a ab", true);
    expect_scan((struct engine_scan){.limit = 5}, "a ab abc b ba", true);
    /* Exactly the rest of the shard: nothing more. */
    expect_scan((struct engine_scan){.limit = 6}, "a ab abc b ba c", false);
    expect_scan((struct engine_scan){.limit = 100}, "a ab abc b ba c", false);
    /* Exactly the rest of the range: keys after it do not count. */
    expect_scan((struct engine_scan){.prefix = B("a"), .limit = 3}, "a ab abc",
                false);
    expect_scan((struct engine_scan){.prefix = B("a"), .limit = 2}, "a ab",
                true);
    expect_scan((struct engine_scan){.end = B("b"), .limit = 3}, "a ab abc",
                false);
    expect_scan(
        (struct engine_scan){.start = B("b"), .end = B("c"), .limit = 1}, "b",
        true);
    /* more may be NULL. */
    struct engine_scan sc = {.shard = 1, .limit = 1};
    struct seen s;
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(engine_scan(eng, &sc, collect, &s, NULL), KV_OK);
    ck_assert_uint_eq(s.n, 1);
}
END_TEST

START_TEST(paging_with_limit_and_cursor_visits_every_key_once)
{
    char last[16] = "";
    char all[256] = "";
    bool more = true;
    int pages = 0;

    put_scan_keys();
    while (more && pages < 10) {
        struct engine_scan sc = {.shard = 1, .limit = 2};
        struct seen s;
        memset(&s, 0, sizeof s);
        if (pages) {
            sc.after = last;
            sc.after_len = strlen(last);
            sc.has_after = true;
        }
        ck_assert_int_eq(engine_scan(eng, &sc, collect, &s, &more), KV_OK);
        for (unsigned i = 0; i < s.n; i++) {
            strcat(all, s.keys[i]);
            strcat(all, " ");
        }
        if (s.n)
            strcpy(last, s.keys[s.n - 1]);
        pages++;
    }
    ck_assert_str_eq(all, "a ab abc b ba c ");
    ck_assert_int_eq(pages, 3);
}
END_TEST

START_TEST(a_non_zero_emit_result_stops_the_scan_and_is_returned)
{
    struct engine_scan sc = {.shard = 1};
    struct seen s;
    bool more = true;

    put_scan_keys();
    memset(&s, 0, sizeof s);
    s.stop_after = 2;
    ck_assert_int_eq(engine_scan(eng, &sc, collect, &s, &more), 42);
    ck_assert_uint_eq(s.n, 2);
    ck_assert_str_eq(s.keys[1], "ab");
    /* A stop on the very first entry. */
    memset(&s, 0, sizeof s);
    s.stop_after = 1;
    ck_assert_int_eq(engine_scan(eng, &sc, collect, &s, &more), 42);
    ck_assert_uint_eq(s.n, 1);
}
END_TEST

START_TEST(scans_never_cross_into_another_shard)
{
    struct engine_scan sc = {.shard = 0};
    struct seen s;

    put_scan_keys();
    /* Shard 0 sits before shard 1 in the store: its scan stops in time. */
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(engine_scan(eng, &sc, collect, &s, NULL), KV_OK);
    ck_assert_uint_eq(s.n, 2);
    ck_assert_str_eq(s.keys[0], "aa");
    ck_assert_str_eq(s.keys[1], "zz");
    ck_assert_str_eq(s.vals[1], "shard0");
    /* Shard 2 starts right after shard 1's keys. */
    sc.shard = 2;
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(engine_scan(eng, &sc, collect, &s, NULL), KV_OK);
    ck_assert_uint_eq(s.n, 2);
    ck_assert_str_eq(s.keys[0], "\x01");
    ck_assert_str_eq(s.keys[1], "a");
    ck_assert_str_eq(s.vals[1], "shard2");
    /* The last shard is empty, with nothing after it to run into. */
    expect_scan((struct engine_scan){.shard = 3}, "", false);
}
END_TEST

START_TEST(scans_see_committed_state_only)
{
    put_scan_keys();
    ck_assert_int_eq(stage_put(1, "aa", "AA", 0, false, NULL), KV_OK);
    ck_assert_int_eq(stage_del(1, "c", 0), KV_OK);
    expect_scan((struct engine_scan){.shard = 1}, "a ab abc b ba c", false);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_scan((struct engine_scan){.shard = 1}, "a aa ab abc b ba", false);
}
END_TEST

START_TEST(a_scan_handles_keys_with_high_bytes)
{
    static const unsigned char k1[] = {0xff};
    static const unsigned char k2[] = {0xff, 0xff};
    static const unsigned char k3[] = {0xff, 0x00};
    const unsigned char *keys[] = {k2, k1, k3};
    size_t lens[] = {2, 1, 2};
    struct seen s;
    bool more = true;

    for (int i = 0; i < 3; i++) {
        struct engine_write w = {.op = ENGINE_PUT,
                                 .shard = NSHARDS - 1,
                                 .key = keys[i],
                                 .klen = lens[i],
                                 .val = "",
                                 .vlen = 0};
        uint64_t ver;
        ck_assert_int_eq(engine_stage(eng, &w, &ver), KV_OK);
    }
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    struct engine_scan sc = {
        .shard = NSHARDS - 1, .prefix = k1, .prefix_len = 1};
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(engine_scan(eng, &sc, collect, &s, &more), KV_OK);
    ck_assert_uint_eq(s.n, 3);
    ck_assert_mem_eq(s.keys[0], k1, 1);
    ck_assert_mem_eq(s.keys[1], k3, 2);
    ck_assert_mem_eq(s.keys[2], k2, 2);
    ck_assert_str_eq(s.vals[0], "");
    ck_assert(!more);
}
END_TEST

/* ---- two-step commit and rollback ------------------------------------- */

START_TEST(writes_staged_during_a_flush_go_to_the_next_commit)
{
    uint64_t va = 0, vb = 0;

    ck_assert_ptr_null(engine_commit_begin(eng)); /* nothing staged */
    ck_assert_int_eq(stage_put(0, "a", "A", 0, true, &va), KV_OK);
    struct store_batch *b = engine_commit_begin(eng);
    ck_assert_ptr_nonnull(b);
    ck_assert(!engine_has_staged(eng));

    /* During the flush: conditions see the flushing writes... */
    ck_assert_int_eq(stage_put(0, "a", "again", 0, true, NULL), KV_ECONFLICT);
    ck_assert_int_eq(stage_put(0, "b", "B", 0, false, &vb), KV_OK);
    ck_assert_uint_gt(vb, va);
    ck_assert(engine_has_staged(eng));
    /* ...and only one flush runs at a time. */
    ck_assert_ptr_null(engine_commit_begin(eng));

    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    engine_commit_end(eng, KV_OK);
    expect_value(0, "a", "A", va);
    expect_missing(0, "b");
    expect_info(0, 1, va);
    ck_assert(engine_has_staged(eng));

    /* The next commit carries the write staged during the flush. */
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "b", "B", vb);
    expect_info(0, 2, vb);
    ck_assert(!engine_has_staged(eng));

    /* Both are durable. */
    reopen(NSHARDS);
    expect_value(0, "a", "A", va);
    expect_value(0, "b", "B", vb);
    expect_info(0, 2, vb);
}
END_TEST

START_TEST(a_failed_flush_rolls_back_versions_and_drops_later_writes)
{
    uint64_t v0 = put_ok(0, "base", "0");
    uint64_t w0 = put_ok(1, "other", "1");
    uint64_t va = 0, vbase = 0, vb = 0, vc = 0, vd = 0;

    ck_assert_int_eq(stage_put(0, "a", "A", 0, false, &va), KV_OK);
    ck_assert_int_eq(stage_put(0, "base", "changed", v0, false, &vbase), KV_OK);
    struct store_batch *b = engine_commit_begin(eng);
    ck_assert_ptr_nonnull(b);
    /* Staged during the flush, evaluated against the failing writes. */
    ck_assert_int_eq(stage_put(0, "b", "B", 0, false, &vb), KV_OK);
    ck_assert_int_eq(stage_put(1, "c", "C", 0, false, &vc), KV_OK);
    ck_assert_int_eq(stage_put(0, "base", "again", vbase, false, NULL), KV_OK);
    ck_assert_int_eq(stage_del(0, "a", 0), KV_OK);

    /* The batch never reaches the disk. */
    engine_commit_end(eng, KV_EIO);

    ck_assert(!engine_has_staged(eng));
    expect_missing(0, "a");
    expect_missing(0, "b");
    expect_missing(1, "c");
    expect_value(0, "base", "0", v0);
    expect_info(0, 1, v0);
    expect_info(1, 1, w0);
    /* A commit now writes nothing of the dropped writes. */
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_missing(0, "b");

    /* Conditions see the rolled back state: base is at v0 again, a and b
     * are absent. */
    ck_assert_int_eq(stage_put(0, "base", "x", vbase, false, NULL),
                     KV_ECONFLICT);
    ck_assert_int_eq(stage_del(0, "a", 0), KV_ENOTFOUND);
    ck_assert_int_eq(stage_put(0, "b", "B2", 0, true, &vd), KV_OK);
    /* The next version reuses the rolled back numbers. */
    ck_assert_uint_eq(vd, va);
    uint64_t ve = 0, vf = 0;
    ck_assert_int_eq(stage_put(1, "c", "C2", 0, true, &ve), KV_OK);
    ck_assert_uint_eq(ve, vc);
    ck_assert_int_eq(stage_put(0, "base", "1", v0, false, &vf), KV_OK);
    ck_assert_uint_eq(vf, vbase);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "b", "B2", vd);
    expect_value(1, "c", "C2", ve);
    expect_value(0, "base", "1", vf);
    expect_info(0, 2, vf);
    expect_info(1, 2, ve);

    /* After a restart the same state comes back. */
    reopen(NSHARDS);
    expect_missing(0, "a");
    expect_value(0, "base", "1", vf);
    expect_value(0, "b", "B2", vd);
    expect_info(0, 2, vf);
    expect_info(1, 2, ve);
}
END_TEST

START_TEST(a_failed_flush_with_nothing_staged_after_it_rolls_back)
{
    uint64_t v0 = put_ok(2, "k", "v");
    uint64_t v1 = 0, v2 = 0;

    ck_assert_int_eq(stage_put(2, "k", "lost", 0, false, &v1), KV_OK);
    struct store_batch *b = engine_commit_begin(eng);
    ck_assert_ptr_nonnull(b);
    engine_commit_end(eng, KV_EIO);
    expect_value(2, "k", "v", v0);
    expect_info(2, 1, v0);
    ck_assert_int_eq(stage_put(2, "k", "w", v0, false, &v2), KV_OK);
    ck_assert_uint_eq(v2, v1);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(2, "k", "w", v2);
    /* commit_end without a flush under way is a no-op. */
    engine_commit_end(eng, KV_EIO);
    expect_value(2, "k", "w", v2);
}
END_TEST

START_TEST(many_staged_writes_commit_together)
{
    /* Enough keys to grow the overlay several times. */
    char k[16], v[16];
    uint64_t last[NSHARDS] = {0}, first = 0;

    for (int i = 0; i < 1000; i++) {
        uint32_t shard = (uint32_t)i % NSHARDS;
        uint64_t ver = 0;
        snprintf(k, sizeof k, "k%04d", i);
        snprintf(v, sizeof v, "v%d", i);
        ck_assert_int_eq(stage_put(shard, k, v, 0, true, &ver), KV_OK);
        ck_assert_uint_gt(ver, last[shard]);
        last[shard] = ver;
        if (i == 0)
            first = ver;
        /* Every key is new, and the overlay remembers each one. */
        ck_assert_int_eq(stage_put(shard, k, v, 0, true, NULL), KV_ECONFLICT);
    }
    /* Nothing is visible before the commit. */
    expect_missing(0, "k0000");
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    for (uint32_t s = 0; s < NSHARDS; s++)
        expect_info(s, 250, last[s]);
    expect_value(3, "k0999", "v999", last[3]);
    expect_value(0, "k0000", "v0", first);
    expect_value(1, "k0501", "v501", 0);
}
END_TEST

/* ---- replicated mode: Raft indexes ------------------------------------ */

/* Stages a put of K=V on SHARD as Raft entry INDEX (0: unreplicated) from
 * client CID (NULL: no session) with SEQ; *version gets the outcome's. */
static int rput(uint32_t shard, const char *k, const char *v,
                uint64_t if_version, uint64_t index, const char *cid,
                uint64_t seq, uint64_t *version)
{
    struct engine_write w = {
        .op = ENGINE_PUT,
        .shard = shard,
        .key = k,
        .klen = strlen(k),
        .val = v,
        .vlen = strlen(v),
        .if_version = if_version,
        .index = index,
        .client_id = cid,
        .client_id_len = cid ? strlen(cid) : 0,
        .seq = seq,
    };
    uint64_t ver = 0xdead;
    int rc = engine_stage(eng, &w, &ver);
    if (version)
        *version = ver;
    return rc;
}

/* The same for a delete of K. */
static int rdel(uint32_t shard, const char *k, uint64_t index, const char *cid,
                uint64_t seq, uint64_t *version)
{
    struct engine_write w = {
        .op = ENGINE_DEL,
        .shard = shard,
        .key = k,
        .klen = strlen(k),
        .index = index,
        .client_id = cid,
        .client_id_len = cid ? strlen(cid) : 0,
        .seq = seq,
    };
    uint64_t ver = 0xdead;
    int rc = engine_stage(eng, &w, &ver);
    if (version)
        *version = ver;
    return rc;
}

START_TEST(a_write_with_an_index_takes_the_index_as_its_version)
{
    uint64_t v = 0;

    ck_assert_int_eq(rput(0, "a", "A", 0, 10, NULL, 0, &v), KV_OK);
    ck_assert_uint_eq(v, 10);
    ck_assert_uint_eq(engine_applied(eng, 0), 10);
    expect_info(0, 0, 0); /* not committed yet */
    ck_assert_int_eq(rput(0, "b", "B", 0, 15, NULL, 0, &v), KV_OK);
    ck_assert_uint_eq(v, 15);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "a", "A", 10);
    expect_value(0, "b", "B", 15);
    expect_info(0, 2, 15);
    expect_info(1, 0, 0);

    /* Gaps are fine: a delete at index 40 leaves the shard at 40. */
    ck_assert_int_eq(rdel(0, "a", 40, NULL, 0, &v), KV_OK);
    ck_assert_uint_eq(v, 0);
    ck_assert_uint_eq(engine_applied(eng, 0), 40);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_missing(0, "a");
    expect_info(0, 1, 40);
    /* A conditional put on the exact version of its key succeeds. */
    ck_assert_int_eq(rput(0, "b", "B2", 15, 41, NULL, 0, &v), KV_OK);
    ck_assert_uint_eq(v, 41);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "b", "B2", 41);
    expect_info(0, 1, 41);
}
END_TEST

START_TEST(a_failed_condition_changes_no_data_but_moves_the_applied_index)
{
    uint64_t v = 0;

    ck_assert_int_eq(rput(0, "a", "A", 0, 5, NULL, 0, &v), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);

    ck_assert_int_eq(rput(0, "a", "X", 4, 6, NULL, 0, &v), KV_ECONFLICT);
    ck_assert_uint_eq(engine_applied(eng, 0), 6);
    ck_assert(engine_has_staged(eng));
    ck_assert_int_eq(rdel(0, "missing", 7, NULL, 0, &v), KV_ENOTFOUND);
    ck_assert_uint_eq(engine_applied(eng, 0), 7);
    /* The failed writes staged no data: a condition still sees "a" at 5. */
    ck_assert_int_eq(rput(0, "a", "Y", 6, 8, NULL, 0, &v), KV_ECONFLICT);
    ck_assert_uint_eq(engine_applied(eng, 0), 8);
    expect_info(0, 1, 5);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "a", "A", 5);
    expect_missing(0, "missing");
    expect_info(0, 1, 8);

    /* A failed condition alone is still a committed entry. */
    ck_assert_int_eq(rdel(0, "a", 9, NULL, 0, NULL), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_int_eq(rdel(0, "a", 12, NULL, 0, NULL), KV_ENOTFOUND);
    ck_assert(engine_has_staged(eng));
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_info(0, 0, 12);
    reopen(NSHARDS);
    expect_info(0, 0, 12);
    ck_assert_uint_eq(engine_applied(eng, 0), 12);
    expect_missing(0, "a");
}
END_TEST

START_TEST(an_index_not_above_the_applied_index_is_invalid_and_stages_nothing)
{
    uint64_t v = 0;

    ck_assert_int_eq(rput(0, "a", "A", 0, 5, NULL, 0, &v), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);

    ck_assert_int_eq(rput(0, "b", "B", 0, 5, NULL, 0, &v), KV_EINVAL);
    ck_assert_int_eq(rput(0, "a", "old", 0, 3, NULL, 0, &v), KV_EINVAL);
    ck_assert_int_eq(rdel(0, "a", 5, NULL, 0, &v), KV_EINVAL);
    ck_assert(!engine_has_staged(eng));
    ck_assert_uint_eq(engine_applied(eng, 0), 5);

    /* The bound is the staged applied index, not only the committed one. */
    ck_assert_int_eq(rput(0, "c", "C", 0, 8, NULL, 0, &v), KV_OK);
    ck_assert_int_eq(rput(0, "d", "D", 0, 7, NULL, 0, &v), KV_EINVAL);
    ck_assert_int_eq(rput(0, "c", "C2", 0, 8, NULL, 0, &v), KV_EINVAL);
    ck_assert_uint_eq(engine_applied(eng, 0), 8);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "a", "A", 5);
    expect_value(0, "c", "C", 8);
    expect_missing(0, "b");
    expect_missing(0, "d");
    expect_info(0, 2, 8);
}
END_TEST

/* ---- replicated mode: exactly-once sessions --------------------------- */

static const char cid_a[] = "client-a";
static const char cid_b[] = "client-b";

START_TEST(a_retry_staged_before_the_commit_gets_the_first_outcome)
{
    uint64_t v1 = 0, v2 = 0;

    ck_assert_int_eq(rput(0, "k", "v1", 0, 3, cid_a, 1, &v1), KV_OK);
    ck_assert_uint_eq(v1, 3);
    /* Same client and seq: not applied again (else "k" would be at 4). */
    ck_assert_int_eq(rput(0, "k", "v1", 0, 4, cid_a, 1, &v2), KV_OK);
    ck_assert_uint_eq(v2, v1);
    ck_assert_uint_eq(engine_applied(eng, 0), 4);
    /* A first outcome of KV_ECONFLICT is answered again, even though the
     * retry's condition would now hold. */
    ck_assert_int_eq(rput(0, "c", "x", 99, 5, cid_b, 1, NULL), KV_ECONFLICT);
    ck_assert_int_eq(rput(0, "c", "x", 0, 6, cid_b, 1, NULL), KV_ECONFLICT);
    ck_assert_uint_eq(engine_applied(eng, 0), 6);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "k", "v1", 3);
    expect_missing(0, "c");
    expect_info(0, 1, 6);
}
END_TEST

START_TEST(a_retry_after_the_commit_gets_the_first_outcome)
{
    uint64_t v1 = 0, v2 = 0;

    ck_assert_int_eq(rput(0, "k", "v1", 0, 3, cid_a, 1, &v1), KV_OK);
    ck_assert_int_eq(rput(0, "c", "x", 99, 4, cid_b, 1, NULL), KV_ECONFLICT);
    ck_assert_int_eq(engine_commit(eng), KV_OK);

    ck_assert_int_eq(rput(0, "k", "v1", 0, 5, cid_a, 1, &v2), KV_OK);
    ck_assert_uint_eq(v2, v1);
    ck_assert_int_eq(rput(0, "c", "x", 0, 6, cid_b, 1, NULL), KV_ECONFLICT);
    ck_assert_uint_eq(engine_applied(eng, 0), 6);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "k", "v1", 3);
    expect_missing(0, "c");
    expect_info(0, 1, 6);

    /* The next seq of each client is applied. */
    ck_assert_int_eq(rput(0, "k", "v2", 3, 7, cid_a, 2, &v2), KV_OK);
    ck_assert_uint_eq(v2, 7);
    ck_assert_int_eq(rput(0, "c", "x", 0, 8, cid_b, 2, &v2), KV_OK);
    ck_assert_uint_eq(v2, 8);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "k", "v2", 7);
    expect_value(0, "c", "x", 8);
    expect_info(0, 2, 8);
}
END_TEST

START_TEST(a_retry_during_the_flush_of_the_first_gets_the_first_outcome)
{
    uint64_t v1 = 0, v2 = 0;

    ck_assert_int_eq(rput(0, "k", "v1", 0, 3, cid_a, 1, &v1), KV_OK);
    ck_assert_int_eq(rput(0, "c", "x", 99, 4, cid_b, 1, NULL), KV_ECONFLICT);
    struct store_batch *b = engine_commit_begin(eng);
    ck_assert_ptr_nonnull(b);

    /* The first attempts are in the flushing generation only. */
    ck_assert_int_eq(rput(0, "k", "v1", 0, 5, cid_a, 1, &v2), KV_OK);
    ck_assert_uint_eq(v2, v1);
    ck_assert_int_eq(rput(0, "c", "x", 0, 6, cid_b, 1, NULL), KV_ECONFLICT);
    ck_assert_uint_eq(engine_applied(eng, 0), 6);

    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    engine_commit_end(eng, KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "k", "v1", 3);
    expect_missing(0, "c");
    expect_info(0, 1, 6);
    /* And the sessions the flush wrote still answer later retries. */
    ck_assert_int_eq(rput(0, "k", "v1", 0, 7, cid_a, 1, &v2), KV_OK);
    ck_assert_uint_eq(v2, v1);
    ck_assert_int_eq(rput(0, "c", "x", 0, 8, cid_b, 1, NULL), KV_ECONFLICT);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "k", "v1", 3);
    expect_missing(0, "c");
    expect_info(0, 1, 8);
}
END_TEST

START_TEST(an_older_seq_gets_the_newer_outcome_and_changes_nothing)
{
    uint64_t v = 0, vold = 0;

    ck_assert_int_eq(rput(0, "k", "new", 0, 10, cid_a, 5, &v), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);

    ck_assert_int_eq(rput(0, "k", "old", 0, 11, cid_a, 3, &vold), KV_OK);
    ck_assert_uint_eq(vold, v);
    ck_assert_int_eq(rput(0, "other", "o", 0, 12, cid_a, 4, &vold), KV_OK);
    ck_assert_uint_eq(vold, v);
    ck_assert_int_eq(rdel(0, "k", 13, cid_a, 1, &vold), KV_OK);
    ck_assert_uint_eq(vold, v);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "k", "new", 10);
    expect_missing(0, "other");
    expect_info(0, 1, 13);

    /* A newer outcome of KV_ECONFLICT is what older seqs get too. */
    ck_assert_int_eq(rput(0, "k", "x", 1, 14, cid_b, 9, NULL), KV_ECONFLICT);
    ck_assert_int_eq(rput(0, "fresh", "f", 0, 15, cid_b, 8, NULL),
                     KV_ECONFLICT);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_missing(0, "fresh");
    expect_info(0, 1, 15);
}
END_TEST

START_TEST(another_client_with_the_same_seq_is_applied_normally)
{
    static const char cid_prefix[] = "client"; /* a prefix of cid_a */
    uint64_t va = 0, vb = 0, vp = 0;

    ck_assert_int_eq(rput(0, "a", "A", 0, 1, cid_a, 1, &va), KV_OK);
    ck_assert_int_eq(rput(0, "b", "B", 0, 2, cid_b, 1, &vb), KV_OK);
    ck_assert_uint_eq(vb, 2);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_int_eq(rput(0, "p", "P", 0, 3, cid_prefix, 1, &vp), KV_OK);
    ck_assert_uint_eq(vp, 3);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "a", "A", va);
    expect_value(0, "b", "B", 2);
    expect_value(0, "p", "P", 3);
    expect_info(0, 3, 3);
}
END_TEST

START_TEST(sessions_survive_close_and_reopen)
{
    uint64_t v1 = 0, v2 = 0;

    ck_assert_int_eq(rput(0, "k", "v1", 0, 3, cid_a, 1, &v1), KV_OK);
    ck_assert_int_eq(rput(0, "c", "x", 99, 4, cid_b, 1, NULL), KV_ECONFLICT);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    reopen(NSHARDS);

    ck_assert_int_eq(rput(0, "k", "v1", 0, 5, cid_a, 1, &v2), KV_OK);
    ck_assert_uint_eq(v2, v1);
    ck_assert_int_eq(rput(0, "c", "x", 0, 6, cid_b, 1, NULL), KV_ECONFLICT);
    ck_assert_int_eq(rput(0, "k", "v2", 0, 7, cid_a, 2, &v2), KV_OK);
    ck_assert_uint_eq(v2, 7);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    reopen(NSHARDS);
    ck_assert_int_eq(rput(0, "k", "v2", 0, 8, cid_a, 2, &v2), KV_OK);
    ck_assert_uint_eq(v2, 7);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "k", "v2", 7);
    expect_missing(0, "c");
    expect_info(0, 1, 8);
    /* Session records are not data: a scan of the shard sees one key. */
    struct engine_scan sc = {.shard = 0};
    int n = 0;
    ck_assert_int_eq(engine_scan(eng, &sc, count_entries, &n, NULL), KV_OK);
    ck_assert_int_eq(n, 1);
}
END_TEST

START_TEST(a_seq_without_a_valid_client_id_is_invalid)
{
    char long_id[ENGINE_MAX_CLIENT_ID + 2];
    uint64_t v = 0;

    memset(long_id, 'x', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = '\0'; /* ENGINE_MAX_CLIENT_ID + 1 bytes */
    struct engine_write w = {
        .op = ENGINE_PUT,
        .shard = 0,
        .key = "k",
        .klen = 1,
        .val = "v",
        .vlen = 1,
        .index = 5,
        .seq = 1,
    };
    ck_assert_int_eq(engine_stage(eng, &w, &v), KV_EINVAL); /* no id */
    w.client_id_len = 4;
    ck_assert_int_eq(engine_stage(eng, &w, &v), KV_EINVAL); /* NULL id */
    w.client_id = "abcd";
    w.client_id_len = 0;
    ck_assert_int_eq(engine_stage(eng, &w, &v), KV_EINVAL); /* empty id */
    w.client_id = long_id;
    w.client_id_len = ENGINE_MAX_CLIENT_ID + 1;
    ck_assert_int_eq(engine_stage(eng, &w, &v), KV_EINVAL); /* too long */
    w.client_id_len = 4;
    w.seq = (uint64_t)1 << 63;
    ck_assert_int_eq(engine_stage(eng, &w, &v), KV_EINVAL); /* seq too big */
    w.seq = 1;
    w.client_id = long_id;
    ck_assert(!engine_has_staged(eng));
    ck_assert_uint_eq(engine_applied(eng, 0), 0);

    /* The longest id is fine, and so is no id without a seq. */
    w.client_id_len = ENGINE_MAX_CLIENT_ID;
    ck_assert_int_eq(engine_stage(eng, &w, &v), KV_OK);
    ck_assert_uint_eq(v, 5);
    ck_assert_int_eq(rput(0, "n", "N", 0, 6, NULL, 0, &v), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "k", "v", 5);
    expect_value(0, "n", "N", 6);
    /* The long id's session is recorded under all its bytes. */
    w.index = 7;
    w.val = "w";
    ck_assert_int_eq(engine_stage(eng, &w, &v), KV_OK);
    ck_assert_uint_eq(v, 5);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "k", "v", 5);
}
END_TEST

/* ---- replicated mode: applied index, raw records, snapshot reset ------ */

START_TEST(stage_applied_moves_the_index_without_data_and_survives_reopen)
{
    ck_assert_int_eq(rput(0, "a", "A", 0, 2, NULL, 0, NULL), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);

    ck_assert_int_eq(engine_stage_applied(eng, 0, 5), KV_OK);
    ck_assert_uint_eq(engine_applied(eng, 0), 5);
    ck_assert(engine_has_staged(eng));
    expect_info(0, 1, 2); /* until the commit */
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert(!engine_has_staged(eng));
    expect_info(0, 1, 5);
    expect_value(0, "a", "A", 2);
    expect_info(1, 0, 0);

    reopen(NSHARDS);
    expect_info(0, 1, 5);
    ck_assert_uint_eq(engine_applied(eng, 0), 5);
    expect_value(0, "a", "A", 2);
    ck_assert_int_eq(rput(0, "b", "B", 0, 5, NULL, 0, NULL), KV_EINVAL);
    ck_assert_int_eq(rput(0, "b", "B", 0, 6, NULL, 0, NULL), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_info(0, 2, 6);
}
END_TEST

START_TEST(stage_applied_rejects_an_index_not_above_the_applied_one)
{
    ck_assert_int_eq(engine_stage_applied(eng, 1, 0), KV_EINVAL);
    ck_assert(!engine_has_staged(eng));
    ck_assert_int_eq(engine_stage_applied(eng, 1, 5), KV_OK);
    ck_assert_int_eq(engine_stage_applied(eng, 1, 5), KV_EINVAL);
    ck_assert_int_eq(engine_stage_applied(eng, 1, 4), KV_EINVAL);
    ck_assert_uint_eq(engine_applied(eng, 1), 5);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_int_eq(engine_stage_applied(eng, 1, 5), KV_EINVAL);
    ck_assert_int_eq(engine_stage_applied(eng, 1, 1), KV_EINVAL);
    ck_assert_int_eq(engine_stage_applied(eng, NSHARDS, 9), KV_EINVAL);
    ck_assert(!engine_has_staged(eng));
    expect_info(1, 0, 5);
    ck_assert_int_eq(engine_stage_applied(eng, 1, 6), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_info(1, 0, 6);
}
END_TEST

/* Asserts that store key K holds V (NULL: is absent). */
static void expect_raw(const char *k, const char *v)
{
    void *got = NULL;
    size_t n = 0;
    int rc = store_get(st, k, strlen(k), &got, &n);

    if (!v) {
        ck_assert_int_eq(rc, KV_ENOTFOUND);
        return;
    }
    ck_assert_int_eq(rc, KV_OK);
    ck_assert_uint_eq(n, strlen(v));
    if (n)
        ck_assert_mem_eq(got, v, n);
    free(got);
}

START_TEST(a_raw_record_staged_is_written_by_the_next_commit)
{
    engine_stage_raw(eng, "Rlog1", 5, "entry-1", 7);
    engine_stage_raw(eng, "Rhard", 5, "", 0);
    ck_assert(engine_has_staged(eng));
    expect_raw("Rlog1", NULL);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert(!engine_has_staged(eng));
    expect_raw("Rlog1", "entry-1");
    expect_raw("Rhard", "");

    /* With an apply in the same batch; raw records are not shard data. */
    engine_stage_raw(eng, "Rlog2", 5, "entry-2", 7);
    ck_assert_int_eq(rput(0, "a", "A", 0, 2, NULL, 0, NULL), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_raw("Rlog2", "entry-2");
    expect_value(0, "a", "A", 2);
    expect_info(0, 1, 2);

    /* A raw delete removes the record at the next commit. */
    engine_stage_raw(eng, "Rlog1", 5, NULL, 0);
    ck_assert(engine_has_staged(eng));
    expect_raw("Rlog1", "entry-1");
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_raw("Rlog1", NULL);
    reopen(NSHARDS);
    expect_raw("Rlog1", NULL);
    expect_raw("Rlog2", "entry-2");
    expect_raw("Rhard", "");
}
END_TEST

START_TEST(reset_shard_sets_the_applied_index_and_key_count)
{
    ck_assert_int_eq(rput(1, "a", "A", 0, 3, NULL, 0, NULL), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_info(1, 1, 3);

    engine_reset_shard(eng, 1, 100, 42);
    expect_info(1, 42, 100);
    ck_assert_uint_eq(engine_applied(eng, 1), 100);
    expect_info(0, 0, 0);
    ck_assert_uint_eq(engine_applied(eng, 0), 0);

    /* Later entries follow the reset state. */
    ck_assert_int_eq(rput(1, "z", "Z", 0, 100, NULL, 0, NULL), KV_EINVAL);
    ck_assert_int_eq(rput(1, "z", "Z", 0, 101, NULL, 0, NULL), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_info(1, 43, 101);
    reopen(NSHARDS);
    expect_info(1, 43, 101);
}
END_TEST

/* A snapshot install replaces a shard's records in the store (sessions
 * included) and then resets the shard: what the engine remembered of the
 * old sessions must not answer the new state's writes. */
START_TEST(a_shard_reset_forgets_the_sessions_it_replaced)
{
    uint64_t v = 0;

    ck_assert_int_eq(rput(1, "k", "v1", 0, 3, cid_a, 5, &v), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_int_eq(rput(1, "k", "v1", 0, 4, cid_a, 5, &v), KV_OK);
    ck_assert_uint_eq(v, 3); /* a retry: the session answers */
    ck_assert_int_eq(engine_commit(eng), KV_OK);

    /* The install: the snapshot has neither the key nor the session. */
    unsigned char dk[5 + 1] = {'D', 0, 0, 0, 1, 'k'};
    unsigned char sk[5 + sizeof(cid_a) - 1] = {'S', 0, 0, 0, 1};
    memcpy(sk + 5, cid_a, sizeof(cid_a) - 1);
    struct store_batch *b = store_batch_new();
    ck_assert_ptr_nonnull(b);
    store_batch_del(b, dk, sizeof(dk));
    store_batch_del(b, sk, sizeof(sk));
    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    store_batch_free(b);
    engine_reset_shard(eng, 1, 100, 0);

    /* The same client and seq is a new write there. */
    ck_assert_int_eq(rput(1, "k", "v2", 0, 101, cid_a, 5, &v), KV_OK);
    ck_assert_uint_eq(v, 101);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(1, "k", "v2", 101);
    expect_info(1, 1, 101);
}
END_TEST

/* More sessions than the engine keeps in memory (65,536): every retry is
 * still answered with its first outcome, from memory or from the store. */
START_TEST(retries_of_more_sessions_than_memory_keeps_get_their_outcome)
{
    enum { CLIENTS = 70000, PER_COMMIT = 1000 };
    char cid[32], key[32];
    uint64_t v = 0, index = 1;

    for (unsigned c = 0; c < CLIENTS; c++) {
        snprintf(cid, sizeof cid, "client-%u", c);
        snprintf(key, sizeof key, "k%u", c % 100);
        ck_assert_int_eq(rput(2, key, "v", 0, index, cid, 1, &v), KV_OK);
        ck_assert_uint_eq(v, index);
        index++;
        if (c % PER_COMMIT == PER_COMMIT - 1)
            ck_assert_int_eq(engine_commit(eng), KV_OK);
    }
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    /* The first clients' sessions were dropped from memory, the last ones'
     * were not: both kinds answer. */
    for (unsigned c = 0; c < CLIENTS; c += 97) {
        snprintf(cid, sizeof cid, "client-%u", c);
        snprintf(key, sizeof key, "k%u", c % 100);
        ck_assert_int_eq(rput(2, key, "again", 0, index++, cid, 1, &v), KV_OK);
        ck_assert_msg(v == c + 1, "client %u: version %llu, first %u", c,
                      (unsigned long long)v, c + 1);
    }
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_info(2, 100, index - 1);
    expect_value(2, "k99", "v", CLIENTS);
}
END_TEST

/* ---- session expiry ---------------------------------------------------- */

/* The session of CID on SHARD: its seq, or 0 when there is none. */
static uint64_t session_seq(uint32_t shard, const char *cid)
{
    uint64_t seq = 0, ver = 0;
    int code = 0;
    int rc = engine_session(eng, shard, cid, strlen(cid), &seq, &code, &ver);
    ck_assert(rc == KV_OK || rc == KV_ENOTFOUND);
    return rc == KV_OK ? seq : 0;
}

static struct engine_session_gc session_gc(uint32_t shard, uint64_t index,
                                           uint64_t now, uint64_t ttl,
                                           const char *after)
{
    struct engine_session_gc out;
    ck_assert_int_eq(engine_stage_session_gc(eng, shard, index, now, ttl, after,
                                             after ? strlen(after) : 0, &out),
                     KV_OK);
    return out;
}

/* A session goes once the time it was kept until passed, not before; a
 * copy of its write arriving after that is a new write. */
START_TEST(a_session_goes_once_its_date_passed_and_then_a_copy_applies_again)
{
    uint64_t v = 0;
    engine_session_until(eng, 1000);
    ck_assert_int_eq(rput(0, "k", "a", 0, 1, cid_a, 1, &v), KV_OK);
    engine_session_until(eng, 5000);
    ck_assert_int_eq(rput(0, "j", "b", 0, 2, cid_b, 1, &v), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);

    struct engine_session_gc gc = session_gc(0, 3, 1000, 60000, NULL);
    ck_assert_uint_eq(gc.removed, 0);
    ck_assert_uint_eq(gc.dated, 0);
    ck_assert_uint_eq(gc.after_len, 0); /* went through */
    gc = session_gc(0, 4, 1001, 60000, NULL);
    ck_assert_uint_eq(gc.removed, 1);
    ck_assert_uint_eq(engine_applied(eng, 0), 4);
    /* gone as staged already, and after the commit and a reopen */
    ck_assert_uint_eq(session_seq(0, cid_a), 0);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    reopen(NSHARDS);
    ck_assert_uint_eq(session_seq(0, cid_a), 0);
    ck_assert_uint_eq(session_seq(0, cid_b), 1);

    /* cid_b's retry still gets its first outcome; cid_a's is applied */
    engine_session_until(eng, 9000);
    ck_assert_int_eq(rput(0, "j", "b", 0, 5, cid_b, 1, &v), KV_OK);
    ck_assert_uint_eq(v, 2);
    ck_assert_int_eq(rput(0, "k", "a", 0, 6, cid_a, 1, &v), KV_OK);
    ck_assert_uint_eq(v, 6);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "k", "a", 6);
    expect_value(0, "j", "b", 2);
    ck_assert_uint_eq(session_seq(0, cid_a), 1);
    /* an index not above the applied one is refused, staging nothing */
    ck_assert_int_eq(engine_stage_session_gc(eng, 0, 6, 99999, 1, NULL, 0, &gc),
                     KV_EINVAL);
    ck_assert(!engine_has_staged(eng));
}
END_TEST

/* Sessions written before they had dates (and a procedure's reply with
 * one) are dated by the GC, keep their outcome, and go after that date. */
START_TEST(an_undated_session_is_dated_first_and_keeps_its_outcome)
{
    uint64_t v = 0;
    ck_assert_int_eq(rput(1, "k", "a", 0, 1, cid_a, 4, &v), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    /* the earlier format, with a reply: seq 7, code 0, version 9, "hi" */
    const unsigned char old[] = {0, 0, 0, 0, 0, 0, 0, 7, 0, 0,   0,
                                 0, 0, 0, 0, 0, 0, 0, 0, 9, 'h', 'i'};
    put_raw('S', 1, cid_b, old, sizeof old);

    struct engine_session_gc gc = session_gc(1, 2, 100, 50, NULL);
    ck_assert_uint_eq(gc.dated, 2);
    ck_assert_uint_eq(gc.removed, 0);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    reopen(NSHARDS);
    ck_assert_int_eq(rput(1, "k", "again", 0, 3, cid_a, 4, &v), KV_OK);
    ck_assert_uint_eq(v, 1);
    uint64_t seq = 0, ver = 0;
    int code = -1;
    void *reply = NULL;
    size_t rlen = 0;
    ck_assert_int_eq(engine_session_reply(eng, 1, cid_b, strlen(cid_b), &seq,
                                          &code, &ver, &reply, &rlen),
                     KV_OK);
    ck_assert_uint_eq(seq, 7);
    ck_assert_int_eq(code, 0);
    ck_assert_uint_eq(ver, 9);
    ck_assert_uint_eq(rlen, 2);
    ck_assert_mem_eq(reply, "hi", 2);
    free(reply);

    gc = session_gc(1, 4, 150, 50, NULL); /* dated 150: kept */
    ck_assert_uint_eq(gc.removed + gc.dated, 0);
    gc = session_gc(1, 5, 151, 50, NULL);
    ck_assert_uint_eq(gc.removed, 2);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_uint_eq(session_seq(1, cid_a), 0);
    ck_assert_uint_eq(session_seq(1, cid_b), 0);
    expect_value(1, "k", "a", 1);
}
END_TEST

/* One GC looks at ENGINE_SESSION_GC_SCAN sessions at most, in client id
 * order, counting the staged ones with the stored (so replicas that
 * committed their entries in other batches do the same), and the next
 * goes on after the last it saw. */
START_TEST(the_session_gc_is_bounded_resumes_and_sees_staged_sessions)
{
    enum { STORED = 1200, STAGED = 300 };
    char cid[16];
    uint64_t idx = 0, v = 0;
    engine_session_until(eng, 10);
    for (unsigned i = 0; i < STORED + STAGED; i++) {
        if (i == STORED)
            ck_assert_int_eq(engine_commit(eng), KV_OK);
        snprintf(cid, sizeof cid, "c%05u", i);
        ck_assert_int_eq(rput(2, "k", "v", 0, ++idx, cid, 1, &v), KV_OK);
    }
    /* a stored session renewed by a staged write: kept */
    engine_session_until(eng, 1000);
    ck_assert_int_eq(rput(2, "k", "w", 0, ++idx, "c00005", 2, &v), KV_OK);

    struct engine_session_gc gc = session_gc(2, ++idx, 11, 1, NULL);
    ck_assert_uint_eq(gc.removed, ENGINE_SESSION_GC_SCAN - 1);
    ck_assert_uint_eq(gc.after_len, 6);
    snprintf(cid, sizeof cid, "c%05u", ENGINE_SESSION_GC_SCAN - 1);
    ck_assert_mem_eq(gc.after, cid, 6);
    ck_assert_uint_eq(session_seq(2, cid), 0);
    snprintf(cid, sizeof cid, "c%05u", ENGINE_SESSION_GC_SCAN);
    ck_assert_uint_eq(session_seq(2, cid), 1); /* not seen yet */

    char after[8];
    memcpy(after, gc.after, gc.after_len);
    after[gc.after_len] = '\0';
    gc = session_gc(2, ++idx, 11, 1, after);
    ck_assert_uint_eq(gc.removed, STORED + STAGED - ENGINE_SESSION_GC_SCAN);
    ck_assert_uint_eq(gc.after_len, 0);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    reopen(NSHARDS);
    ck_assert_uint_eq(session_seq(2, "c00005"), 2);
    ck_assert_uint_eq(session_seq(2, "c00004"), 0);
    ck_assert_uint_eq(session_seq(2, "c01499"), 0);
    /* the one left is all the next pass finds */
    gc = session_gc(2, ++idx, 11, 1, NULL);
    ck_assert_uint_eq(gc.removed, 0);
    ck_assert_uint_eq(gc.after_len, 0);
}
END_TEST

/* Two replicas apply the same entries, one committing between two GCs
 * and one not: the second GC passes over what the first deleted whether
 * the delete is committed or still staged, so both end alike. */
START_TEST(replicas_that_commit_at_other_points_expire_the_same_sessions)
{
    enum { SESSIONS = 1100 };
    char cid[16];
    struct engine_session_gc gc[2][2];
    for (int replica = 0; replica < 2; replica++) {
        if (replica == 1) { /* a fresh store for the second replica */
            close_engine();
            rm_tree(dbdir);
            open_engine(NSHARDS);
        }
        uint64_t idx = 0, v = 0;
        engine_session_until(eng, 10);
        for (unsigned i = 0; i < SESSIONS; i++) {
            snprintf(cid, sizeof cid, "c%05u", i);
            ck_assert_int_eq(rput(2, "k", "v", 0, ++idx, cid, 1, &v), KV_OK);
        }
        ck_assert_int_eq(engine_commit(eng), KV_OK);
        gc[replica][0] = session_gc(2, ++idx, 11, 1, NULL);
        if (replica == 0)
            ck_assert_int_eq(engine_commit(eng), KV_OK);
        gc[replica][1] = session_gc(2, ++idx, 11, 1, NULL);
        ck_assert_int_eq(engine_commit(eng), KV_OK);
        snprintf(cid, sizeof cid, "c%05u", SESSIONS - 1);
        ck_assert_uint_eq(session_seq(2, cid), 0);
        ck_assert_uint_eq(session_seq(2, "c00000"), 0);
    }
    for (int g = 0; g < 2; g++) {
        ck_assert_uint_eq(gc[0][g].removed, gc[1][g].removed);
        ck_assert_uint_eq(gc[0][g].after_len, gc[1][g].after_len);
        ck_assert_mem_eq(gc[0][g].after, gc[1][g].after, gc[0][g].after_len);
    }
    ck_assert_uint_eq(gc[0][0].removed, ENGINE_SESSION_GC_SCAN);
    ck_assert_uint_eq(gc[0][1].removed, SESSIONS - ENGINE_SESSION_GC_SCAN);
    ck_assert_uint_eq(gc[0][1].after_len, 0);
}
END_TEST

/* ---- suite ------------------------------------------------------------ */

/* ---- transactions on one shard (engine_stage_txn) ----------------------- */

#define TPUT(k, v)                                                             \
    {                                                                          \
        ENGINE_TXN_PUT, k, sizeof(k) - 1, v, sizeof(v) - 1, 0                  \
    }
#define TDEL(k)                                                                \
    {                                                                          \
        ENGINE_TXN_DEL, k, sizeof(k) - 1, NULL, 0, 0                           \
    }
#define TIFV(k, ver)                                                           \
    {                                                                          \
        ENGINE_TXN_IF_VERSION, k, sizeof(k) - 1, NULL, 0, ver                  \
    }
#define TIFA(k)                                                                \
    {                                                                          \
        ENGINE_TXN_IF_ABSENT, k, sizeof(k) - 1, NULL, 0, 0                     \
    }

static int stage_txn(uint32_t shard, const struct engine_txn_op *ops, size_t n,
                     uint64_t index, uint64_t seq, uint64_t *versions,
                     size_t *failed, uint64_t *current)
{
    struct engine_txn t = {.shard = shard,
                           .ops = ops,
                           .nops = n,
                           .index = index,
                           .client_id = seq ? "client-a" : NULL,
                           .client_id_len = seq ? 8 : 0,
                           .seq = seq};
    return engine_stage_txn(eng, &t, versions, failed, current);
}

/* "All or nothing": every write of a transaction whose conditions hold
 * appears at once, with one version. */
START_TEST(a_transaction_applies_every_write_with_one_version)
{
    uint64_t v1 = put_ok(0, "a", "old");
    put_ok(0, "gone", "x");
    struct engine_txn_op ops[] = {TIFV("a", v1), TPUT("a", "new"),
                                  TPUT("b", "bee"), TDEL("gone"),
                                  TIFA("never")};
    uint64_t vers[5] = {0};
    size_t failed = 99;
    uint64_t cur = 99;
    ck_assert_int_eq(stage_txn(0, ops, 5, 0, 0, vers, &failed, &cur), KV_OK);
    ck_assert_uint_eq(failed, 0);
    expect_value(0, "a", "old", v1); /* staged: not visible yet */
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    uint64_t ver = applied_of(0);
    ck_assert_uint_gt(ver, v1);
    ck_assert_uint_eq(vers[0], v1);  /* the checked version */
    ck_assert_uint_eq(vers[1], ver); /* the new version */
    ck_assert_uint_eq(vers[2], ver);
    ck_assert_uint_eq(vers[3], 0);
    ck_assert_uint_eq(vers[4], 0);
    expect_value(0, "a", "new", ver);
    expect_value(0, "b", "bee", ver);
    expect_missing(0, "gone");
    expect_missing(0, "never");
    expect_info(0, 2, ver); /* a and b; gone went away */
}
END_TEST

/* A failed condition writes nothing and names the condition and what the
 * key held; conditions see the state before the transaction. */
START_TEST(a_failed_condition_writes_nothing_and_names_the_condition)
{
    uint64_t v1 = put_ok(1, "k", "v");
    struct engine_txn_op ops[] = {TPUT("x", "1"), TIFA("x"), TIFV("k", v1 + 7),
                                  TDEL("k")};
    uint64_t vers[4];
    size_t failed = 0;
    uint64_t cur = 0;
    /* IF_ABSENT x holds: x is written by the transaction itself, but the
     * condition sees the state before it. */
    ck_assert_int_eq(stage_txn(1, ops, 4, 0, 0, vers, &failed, &cur),
                     KV_ECONFLICT);
    ck_assert_uint_eq(failed, 3);
    ck_assert_uint_eq(cur, v1);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_missing(1, "x");
    expect_value(1, "k", "v", v1);
    expect_info(1, 1, v1);

    struct engine_txn_op absent[] = {TIFA("k"), TPUT("y", "1")};
    ck_assert_int_eq(stage_txn(1, absent, 2, 0, 0, vers, &failed, &cur),
                     KV_ECONFLICT);
    ck_assert_uint_eq(failed, 1);
    ck_assert_uint_eq(cur, v1);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_missing(1, "y");
}
END_TEST

/* Several ops on one key: the last write wins, and the key count follows. */
START_TEST(a_later_write_of_the_same_key_in_a_transaction_wins)
{
    struct engine_txn_op ops[] = {TPUT("k", "1"), TDEL("k"), TPUT("k", "3"),
                                  TPUT("j", "1"), TDEL("j")};
    uint64_t vers[5];
    size_t failed;
    uint64_t cur;
    ck_assert_int_eq(stage_txn(2, ops, 5, 0, 0, vers, &failed, &cur), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(2, "k", "3", vers[2]);
    expect_missing(2, "j");
    expect_info(2, 1, vers[2]);
}
END_TEST

/* Replicated: the Raft index is the version; a failed transaction still
 * moves the applied index; a retry gets the first outcome again. */
START_TEST(a_replicated_transaction_is_applied_once_and_retries_get_its_outcome)
{
    struct engine_txn_op ops[] = {TIFA("a"), TPUT("a", "1"), TPUT("b", "2")};
    uint64_t vers[3];
    size_t failed;
    uint64_t cur;
    ck_assert_int_eq(stage_txn(3, ops, 3, 10, 1, vers, &failed, &cur), KV_OK);
    ck_assert_uint_eq(vers[1], 10);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    /* the same seq again at a later index: not applied twice */
    memset(vers, 0, sizeof(vers));
    ck_assert_int_eq(stage_txn(3, ops, 3, 11, 1, vers, &failed, &cur), KV_OK);
    ck_assert_uint_eq(vers[1], 10);
    ck_assert_uint_eq(vers[2], 10);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(3, "a", "1", 10);
    expect_info(3, 2, 11);
    /* the next seq: its condition fails now; data unchanged, index moves */
    ck_assert_int_eq(stage_txn(3, ops, 3, 12, 2, vers, &failed, &cur),
                     KV_ECONFLICT);
    ck_assert_uint_eq(failed, 1);
    ck_assert_uint_eq(cur, 10);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_info(3, 2, 12);
    /* its retry: the conflict again, without the detail */
    ck_assert_int_eq(stage_txn(3, ops, 3, 13, 2, vers, &failed, &cur),
                     KV_ECONFLICT);
    ck_assert_uint_eq(failed, 0);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(3, "a", "1", 10);
    reopen(NSHARDS); /* sessions survive a restart */
    ck_assert_int_eq(stage_txn(3, ops, 3, 14, 2, vers, &failed, &cur),
                     KV_ECONFLICT);
    ck_assert_uint_eq(failed, 0);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(3, "a", "1", 10);
    expect_info(3, 2, 14);
}
END_TEST

START_TEST(malformed_transactions_are_invalid_and_stage_nothing)
{
    uint64_t vers[2];
    size_t failed;
    uint64_t cur;
    struct engine_txn_op empty_key[] = {{ENGINE_TXN_PUT, "", 0, "v", 1, 0}};
    struct engine_txn_op zero_version[] = {TIFV("k", 0)};
    struct engine_txn_op bad_kind[] = {
        {(enum engine_txn_kind)9, "k", 1, NULL, 0, 0}};
    ck_assert_int_eq(stage_txn(0, empty_key, 1, 0, 0, vers, &failed, &cur),
                     KV_EINVAL);
    ck_assert_int_eq(stage_txn(0, zero_version, 1, 0, 0, vers, &failed, &cur),
                     KV_EINVAL);
    ck_assert_int_eq(stage_txn(0, bad_kind, 1, 0, 0, vers, &failed, &cur),
                     KV_EINVAL);
    ck_assert_int_eq(stage_txn(0, empty_key, 0, 0, 0, vers, &failed, &cur),
                     KV_EINVAL);
    ck_assert_int_eq(
        stage_txn(NSHARDS, zero_version, 1, 0, 0, vers, &failed, &cur),
        KV_EINVAL);
    put_ok(0, "k", "v");
    struct engine_txn_op ok[] = {TPUT("z", "1")};
    uint64_t a = applied_of(0);
    ck_assert_int_eq(stage_txn(0, ok, 1, a, 0, vers, &failed, &cur),
                     KV_EINVAL); /* index not above the applied one */
    ck_assert(!engine_has_staged(eng));
}
END_TEST

/* ---- two-phase commit: intents, participant and transaction records ----- */

static const unsigned char txn_a[ENGINE_TXN_ID_LEN] = "txn-a-0123456789";
static const unsigned char txn_b[ENGINE_TXN_ID_LEN] = "txn-b-0123456789";

static int prepare(uint32_t shard, const unsigned char *id,
                   const struct engine_txn_op *ops, size_t n, uint64_t index,
                   uint64_t now, uint64_t *version)
{
    struct engine_prepare p = {
        .txn = {.shard = shard, .ops = ops, .nops = n, .index = index},
        .txn_id = id,
        .home = 7,
        .deadline_ms = 1000,
        .now_ms = now};
    size_t failed;
    uint64_t cur;
    return engine_stage_prepare(eng, &p, version, &failed, &cur);
}

static int count_txns(void *arg, const struct engine_txn_info *t)
{
    (void)t;
    (*(int *)arg)++;
    return 0;
}

/* A prepared transaction locks every key it names: plain writes, single
 * shard transactions and other prepares are refused (and record no
 * session), until it is resolved; commit writes at the prepare's version. */
START_TEST(prepared_intents_lock_keys_until_a_commit_applies_them)
{
    ck_assert_int_eq(stage_put(0, "keep", "k0", 0, false, NULL), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    uint64_t i0 = applied_of(0);
    struct engine_txn_op ops[] = {TPUT("a", "1"), TDEL("keep"), TIFA("c")};
    uint64_t ver = 0;
    ck_assert_int_eq(prepare(0, txn_a, ops, 3, i0 + 1, 10, &ver), KV_OK);
    ck_assert_uint_eq(ver, i0 + 1);
    ck_assert(engine_has_intents(eng, 0));
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_missing(0, "a"); /* nothing visible before the commit */
    expect_value(0, "keep", "k0", i0);

    struct engine_write w = {.op = ENGINE_PUT,
                             .shard = 0,
                             .key = "c",
                             .klen = 1,
                             .val = "x",
                             .vlen = 1,
                             .index = i0 + 2,
                             .client_id = "cl",
                             .client_id_len = 2,
                             .seq = 1};
    uint64_t v;
    ck_assert_int_eq(engine_stage(eng, &w, &v), ENGINE_ELOCKED);
    struct engine_txn_op one[] = {TPUT("zz", "1"), TPUT("a", "2")};
    uint64_t vers[2];
    size_t failed;
    uint64_t cur;
    ck_assert_int_eq(stage_txn(0, one, 2, i0 + 3, 0, vers, &failed, &cur),
                     ENGINE_ELOCKED);
    struct engine_txn_op other[] = {TPUT("keep", "b")};
    ck_assert_int_eq(prepare(0, txn_b, other, 1, i0 + 4, 10, &v),
                     ENGINE_ELOCKED);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_info(0, 1, i0 + 4); /* the index moved; nothing else */
    expect_missing(0, "zz");
    /* the refused write recorded no session: after the resolve, the same
     * seq is applied */
    ck_assert_int_eq(engine_stage_resolve(eng, 0, i0 + 5, txn_a, true, 20),
                     KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert(!engine_has_intents(eng, 0));
    expect_value(0, "a", "1", i0 + 1);
    expect_missing(0, "keep");
    expect_missing(0, "c"); /* a condition only locked it */
    expect_info(0, 1, i0 + 5);
    w.index = i0 + 6;
    ck_assert_int_eq(engine_stage(eng, &w, &v), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "c", "x", i0 + 6);
}
END_TEST

START_TEST(an_aborted_prepare_leaves_the_data_as_it_was)
{
    uint64_t v1 = put_ok(1, "a", "old");
    struct engine_txn_op ops[] = {TPUT("a", "new"), TPUT("b", "new")};
    uint64_t ver;
    ck_assert_int_eq(prepare(1, txn_a, ops, 2, v1 + 1, 10, &ver), KV_OK);
    /* resolved in the same batch as the prepare (a follower catching up) */
    ck_assert_int_eq(engine_stage_resolve(eng, 1, v1 + 2, txn_a, false, 20),
                     KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(1, "a", "old", v1);
    expect_missing(1, "b");
    ck_assert(!engine_has_intents(eng, 1));
    int n = 0;
    ck_assert_int_eq(engine_list_txns(eng, 1, 'P', count_txns, &n), KV_OK);
    ck_assert_int_eq(n, 0);
    /* resolving again, or something never prepared: nothing to do */
    ck_assert_int_eq(engine_stage_resolve(eng, 1, v1 + 3, txn_a, true, 20),
                     KV_OK);
    ck_assert_int_eq(engine_stage_resolve(eng, 1, v1 + 4, txn_b, true, 20),
                     KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(1, "a", "old", v1);
}
END_TEST

START_TEST(prepare_votes_no_on_a_failed_condition_or_a_passed_deadline)
{
    uint64_t v1 = put_ok(2, "a", "x");
    struct engine_txn_op ops[] = {TIFV("a", v1 + 1), TPUT("b", "1")};
    struct engine_prepare p = {
        .txn = {.shard = 2, .ops = ops, .nops = 2, .index = v1 + 1},
        .txn_id = txn_a,
        .home = 0,
        .deadline_ms = 1000,
        .now_ms = 5};
    uint64_t ver;
    size_t failed;
    uint64_t cur;
    ck_assert_int_eq(engine_stage_prepare(eng, &p, &ver, &failed, &cur),
                     KV_ECONFLICT);
    ck_assert_uint_eq(failed, 1);
    ck_assert_uint_eq(cur, v1);
    ops[0].version = v1;
    p.txn.index = v1 + 2;
    p.now_ms = 1001;
    ck_assert_int_eq(engine_stage_prepare(eng, &p, &ver, &failed, &cur),
                     KV_ETIMEDOUT);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert(!engine_has_intents(eng, 2));
    expect_info(2, 1, v1 + 2);
    /* in time, it holds; preparing again answers the first YES */
    p.txn.index = v1 + 3;
    p.now_ms = 999;
    ck_assert_int_eq(engine_stage_prepare(eng, &p, &ver, &failed, &cur), KV_OK);
    ck_assert_uint_eq(ver, v1 + 3);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    p.txn.index = v1 + 4;
    ck_assert_int_eq(engine_stage_prepare(eng, &p, &ver, &failed, &cur), KV_OK);
    ck_assert_uint_eq(ver, v1 + 3);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    struct engine_intent in;
    ck_assert_int_eq(engine_get_intent(eng, 2, "b", 1, &in), KV_OK);
    ck_assert_mem_eq(in.txn_id, txn_a, ENGINE_TXN_ID_LEN);
    ck_assert_uint_eq(in.version, v1 + 3);
    ck_assert_int_eq(in.kind, ENGINE_TXN_PUT);
    ck_assert_uint_eq(in.vlen, 1);
    ck_assert_mem_eq(in.val, "1", 1);
    ck_assert_uint_eq(in.deadline_ms, 1000);
    free(in.val);
    ck_assert_int_eq(engine_get_intent(eng, 2, "zz", 2, &in), KV_ENOTFOUND);
    /* intents and participant records survive a restart */
    reopen(NSHARDS);
    ck_assert(engine_has_intents(eng, 2));
    int n = 0;
    ck_assert_int_eq(engine_list_txns(eng, 2, 'P', count_txns, &n), KV_OK);
    ck_assert_int_eq(n, 1);
    ck_assert_int_eq(engine_stage_resolve(eng, 2, v1 + 5, txn_a, true, 20),
                     KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(2, "b", "1", v1 + 3);
}
END_TEST

/* The record: PENDING until decided; a decision is final; past the deadline
 * it can only become ABORTED; forgotten only once decided. */
START_TEST(a_transaction_record_is_decided_once_and_aborts_past_its_deadline)
{
    uint32_t parts[] = {0, 3};
    int state = -1;
    ck_assert_int_eq(
        engine_stage_record(eng, 3, 1, txn_a, 1000, parts, 2, &state), KV_OK);
    ck_assert_int_eq(state, ENGINE_TXN_PENDING);
    ck_assert_int_eq(
        engine_stage_decide(eng, 3, 2, txn_a, ENGINE_TXN_PENDING, 500, &state),
        KV_OK);
    ck_assert_int_eq(state, ENGINE_TXN_PENDING);
    ck_assert_int_eq(engine_stage_forget(eng, 3, 3, txn_a), KV_OK); /* kept */
    ck_assert_int_eq(engine_stage_decide(eng, 3, 4, txn_a, ENGINE_TXN_COMMITTED,
                                         900, &state),
                     KV_OK);
    ck_assert_int_eq(state, ENGINE_TXN_COMMITTED);
    ck_assert_int_eq(
        engine_stage_decide(eng, 3, 5, txn_a, ENGINE_TXN_ABORTED, 950, &state),
        KV_OK);
    ck_assert_int_eq(state, ENGINE_TXN_COMMITTED);
    ck_assert_int_eq(engine_stage_record(eng, 3, 6, txn_a, 5, parts, 2, &state),
                     KV_OK);
    ck_assert_int_eq(state, ENGINE_TXN_COMMITTED); /* not recreated */
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    int n = 0;
    ck_assert_int_eq(engine_list_txns(eng, 3, 'X', count_txns, &n), KV_OK);
    ck_assert_int_eq(n, 1);
    ck_assert(engine_has_txn_records(eng, 3));
    ck_assert_int_eq(engine_stage_forget(eng, 3, 7, txn_a), KV_OK);
    ck_assert(!engine_has_txn_records(eng, 3));
    ck_assert_int_eq(
        engine_stage_decide(eng, 3, 8, txn_a, ENGINE_TXN_PENDING, 1, &state),
        KV_OK);
    ck_assert_int_eq(state, ENGINE_TXN_UNKNOWN);
    /* past its deadline, asking or committing aborts */
    ck_assert_int_eq(
        engine_stage_record(eng, 3, 9, txn_b, 1000, parts, 2, &state), KV_OK);
    ck_assert_int_eq(engine_stage_decide(eng, 3, 10, txn_b,
                                         ENGINE_TXN_COMMITTED, 1001, &state),
                     KV_OK);
    ck_assert_int_eq(state, ENGINE_TXN_ABORTED);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    n = 0;
    ck_assert_int_eq(engine_list_txns(eng, 3, 'X', count_txns, &n), KV_OK);
    ck_assert_int_eq(n, 1);
    expect_info(3, 0, 10);
    reopen(NSHARDS); /* counted again at open */
    ck_assert(engine_has_txn_records(eng, 3));
    ck_assert(!engine_has_txn_records(eng, 2));
}
END_TEST

/* The decision goes into the client's session, never lowering it; once the
 * record is forgotten, a late request to make it again (a retry of the
 * same write, or an older one) makes nothing and gets the decision. */
START_TEST(a_forgotten_transaction_is_never_recorded_again)
{
    uint32_t parts[] = {0, 1};
    int state = -1;
    const char *cid = "client-x";
    ck_assert_int_eq(engine_stage_record_for(eng, 1, 1, txn_a, 1000, parts, 2,
                                             cid, 8, 5, &state),
                     KV_OK);
    ck_assert_int_eq(state, ENGINE_TXN_PENDING);
    ck_assert_int_eq(engine_stage_decide_for(eng, 1, 2, txn_a,
                                             ENGINE_TXN_COMMITTED, 10, cid, 8,
                                             5, &state),
                     KV_OK);
    ck_assert_int_eq(engine_stage_forget(eng, 1, 3, txn_a), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    /* the same write again: no record, the session's decision */
    ck_assert_int_eq(engine_stage_record_for(eng, 1, 4, txn_a, 1000, parts, 2,
                                             cid, 8, 5, &state),
                     KV_OK);
    ck_assert_int_eq(state, ENGINE_TXN_COMMITTED);
    ck_assert(!engine_has_txn_records(eng, 1));
    /* an older write of the session: superseded, never made */
    ck_assert_int_eq(engine_stage_record_for(eng, 1, 5, txn_b, 1000, parts, 2,
                                             cid, 8, 4, &state),
                     KV_OK);
    ck_assert_int_eq(state, ENGINE_TXN_ABORTED);
    ck_assert(!engine_has_txn_records(eng, 1));
    /* a late decision of an older write does not lower the session */
    ck_assert_int_eq(
        engine_stage_record(eng, 1, 6, txn_b, 1000, parts, 2, &state), KV_OK);
    ck_assert_int_eq(engine_stage_decide_for(eng, 1, 7, txn_b,
                                             ENGINE_TXN_ABORTED, 10, cid, 8, 4,
                                             &state),
                     KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    uint64_t seq = 0, ver = 0;
    int code = -1;
    ck_assert_int_eq(engine_session(eng, 1, cid, 8, &seq, &code, &ver), KV_OK);
    ck_assert_uint_eq(seq, 5);
    ck_assert_int_eq(code, KV_OK);
    /* an existing record wins over the session */
    ck_assert_int_eq(engine_stage_record_for(eng, 1, 8, txn_b, 1000, parts, 2,
                                             cid, 8, 9, &state),
                     KV_OK);
    ck_assert_int_eq(state, ENGINE_TXN_ABORTED);
}
END_TEST

/* ---- tombstones of resolved participants -------------------------------- */

/* The participant records of SHARD that engine_list_txns shows. */
static int listed_parts(uint32_t shard)
{
    int n = 0;
    ck_assert_int_eq(engine_list_txns(eng, shard, 'P', count_txns, &n), KV_OK);
    return n;
}

/* Whether a plain put of K on SHARD at INDEX is applied (the key is not
 * locked); commits it. */
static int put_at(uint32_t shard, const char *k, const char *v, uint64_t index)
{
    struct engine_write w = {.op = ENGINE_PUT,
                             .shard = shard,
                             .key = k,
                             .klen = strlen(k),
                             .val = v,
                             .vlen = strlen(v),
                             .index = index};
    uint64_t ver = 0;
    int rc = engine_stage(eng, &w, &ver);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    return rc;
}

/* A prepare of a transaction this shard committed (a duplicated or late
 * message) is the YES it was, at the same version, and locks nothing:
 * the data is written once, and a later write to the key stays. */
START_TEST(a_prepare_after_a_commit_votes_yes_again_and_locks_nothing)
{
    uint64_t v0 = put_ok(0, "a", "old");
    struct engine_txn_op ops[] = {TPUT("a", "new"), TIFA("b")};
    uint64_t ver = 0;
    ck_assert_int_eq(prepare(0, txn_a, ops, 2, v0 + 1, 10, &ver), KV_OK);
    ck_assert_uint_eq(ver, v0 + 1);
    ck_assert_int_eq(engine_stage_resolve(eng, 0, v0 + 2, txn_a, true, 20),
                     KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "a", "new", v0 + 1);
    ck_assert(!engine_has_intents(eng, 0));
    ck_assert(!engine_has_txn_records(eng, 0));
    ck_assert_int_eq(listed_parts(0), 0);
    ck_assert_uint_eq(engine_tombstones(eng, 0), 1);
    /* another write changes the key; then the prepare comes again */
    ck_assert_int_eq(put_at(0, "a", "later", v0 + 3), KV_OK);
    ver = 0;
    ck_assert_int_eq(prepare(0, txn_a, ops, 2, v0 + 4, 10, &ver), KV_OK);
    ck_assert_uint_eq(ver, v0 + 1);
    ck_assert(!engine_has_intents(eng, 0));
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    struct engine_intent in;
    ck_assert_int_eq(engine_get_intent(eng, 0, "a", 1, &in), KV_ENOTFOUND);
    ck_assert_int_eq(engine_get_intent(eng, 0, "b", 1, &in), KV_ENOTFOUND);
    /* and so does its resolve: nothing is written a second time */
    ck_assert_int_eq(engine_stage_resolve(eng, 0, v0 + 5, txn_a, true, 30),
                     KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(0, "a", "later", v0 + 3);
    expect_missing(0, "b");
    expect_info(0, 1, v0 + 5);
    ck_assert_int_eq(put_at(0, "b", "free", v0 + 6), KV_OK);
    ck_assert_uint_eq(engine_tombstones(eng, 0), 1);
    ck_assert_int_eq(listed_parts(0), 0);
}
END_TEST

/* An abort that arrives before the prepare ever did leaves a tombstone:
 * the late prepare votes NO and locks nothing. */
START_TEST(a_prepare_after_an_abort_it_never_saw_votes_no_and_locks_nothing)
{
    ck_assert_int_eq(engine_stage_resolve(eng, 1, 1, txn_a, false, 500), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_uint_eq(engine_tombstones(eng, 1), 1);
    ck_assert(!engine_has_intents(eng, 1));
    ck_assert_int_eq(listed_parts(1), 0);
    struct engine_txn_op ops[] = {TPUT("k", "v"), TIFA("c")};
    uint64_t ver = 99;
    ck_assert_int_eq(prepare(1, txn_a, ops, 2, 2, 10, &ver), KV_ETIMEDOUT);
    ck_assert_uint_eq(ver, 0);
    ck_assert(!engine_has_intents(eng, 1));
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_info(1, 0, 2);
    ck_assert_int_eq(put_at(1, "k", "plain", 3), KV_OK);
    ck_assert_int_eq(put_at(1, "c", "plain", 4), KV_OK);
    expect_value(1, "k", "plain", 3);
    /* resolving again, even the other way, changes nothing */
    ck_assert_int_eq(engine_stage_resolve(eng, 1, 5, txn_a, true, 600), KV_OK);
    ck_assert_int_eq(engine_stage_resolve(eng, 1, 6, txn_a, false, 700), KV_OK);
    ck_assert_int_eq(prepare(1, txn_a, ops, 2, 7, 10, &ver), KV_ETIMEDOUT);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_uint_eq(engine_tombstones(eng, 1), 1);
    expect_value(1, "k", "plain", 3);
    expect_info(1, 2, 7);
    /* a commit that never met a prepare: a YES of unknown version (0) */
    ck_assert_int_eq(engine_stage_resolve(eng, 1, 8, txn_b, true, 800), KV_OK);
    ver = 99;
    ck_assert_int_eq(prepare(1, txn_b, ops, 2, 9, 10, &ver), KV_OK);
    ck_assert_uint_eq(ver, 0);
    ck_assert(!engine_has_intents(eng, 1));
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(1, "k", "plain", 3);
    ck_assert_uint_eq(engine_tombstones(eng, 1), 2);
}
END_TEST

/* The GC removes a tombstone once its deadline is more than
 * ENGINE_TOMB_KEEP_MS before the entry's clock, and nothing else: not a
 * younger tombstone, not a prepared part however old. */
START_TEST(gc_removes_only_tombstones_past_their_keep_time)
{
    struct engine_txn_op ops[] = {TPUT("x", "1")};
    uint64_t ver;
    /* txn_a: prepared (deadline 1000) then aborted: a tombstone of 1000 */
    ck_assert_int_eq(prepare(2, txn_a, ops, 1, 1, 10, &ver), KV_OK);
    ck_assert_int_eq(engine_stage_resolve(eng, 2, 2, txn_a, false, 5000),
                     KV_OK);
    /* txn_b: never prepared, committed at 50000: a tombstone of 50000 */
    ck_assert_int_eq(engine_stage_resolve(eng, 2, 3, txn_b, true, 50000),
                     KV_OK);
    /* txn_c: prepared (deadline 1000), never resolved */
    static const unsigned char txn_c[ENGINE_TXN_ID_LEN] = "txn-c-0123456789";
    struct engine_txn_op other[] = {TPUT("y", "2")};
    ck_assert_int_eq(prepare(2, txn_c, other, 1, 4, 10, &ver), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_uint_eq(engine_tombstones(eng, 2), 2);
    ck_assert_int_eq(listed_parts(2), 1);
    uint64_t keep = ENGINE_TOMB_KEEP_MS;
    ck_assert(!engine_gc_due(eng, 2, 1000 + keep));
    size_t removed = 99;
    ck_assert_int_eq(engine_stage_gc(eng, 2, 5, 1000 + keep, &removed), KV_OK);
    ck_assert_uint_eq(removed, 0);
    ck_assert(engine_gc_due(eng, 2, 1001 + keep));
    ck_assert_int_eq(engine_stage_gc(eng, 2, 6, 1001 + keep, &removed), KV_OK);
    ck_assert_uint_eq(removed, 1);
    ck_assert_uint_eq(engine_tombstones(eng, 2), 1);
    ck_assert(!engine_gc_due(eng, 2, 1001 + keep)); /* 50000 is left */
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_info(2, 0, 6);
    /* txn_a's tombstone is gone: a prepare now would lock again */
    ck_assert_int_eq(prepare(2, txn_a, ops, 1, 7, 10, &ver), KV_OK);
    ck_assert_uint_eq(ver, 7);
    /* far later: txn_b's goes too; prepared parts stay */
    ck_assert(engine_gc_due(eng, 2, 1000000));
    ck_assert_int_eq(engine_stage_gc(eng, 2, 8, 1000000, &removed), KV_OK);
    ck_assert_uint_eq(removed, 1);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_uint_eq(engine_tombstones(eng, 2), 0);
    ck_assert(!engine_gc_due(eng, 2, UINT64_MAX));
    ck_assert_int_eq(listed_parts(2), 2);
    ck_assert(engine_has_intents(eng, 2));
    ck_assert_int_eq(engine_stage_resolve(eng, 2, 9, txn_c, true, 10), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(2, "y", "2", 4);
    /* an index not above the applied one is refused */
    ck_assert_int_eq(engine_stage_gc(eng, 2, 9, 1000000, &removed), KV_EINVAL);
}
END_TEST

/* An id of 16 bytes, distinct per N. */
static void tomb_id(unsigned n, unsigned char id[ENGINE_TXN_ID_LEN])
{
    char buf[ENGINE_TXN_ID_LEN + 1];
    snprintf(buf, sizeof(buf), "tomb-%011u", n);
    memcpy(id, buf, ENGINE_TXN_ID_LEN);
}

/* One GC removes at most ENGINE_TOMB_GC_MAX, in txn id order, counting
 * what is staged as well as what is stored (so a replica that commits
 * its entries in other batches removes the same ones). */
START_TEST(gc_is_bounded_per_entry_and_sees_staged_tombstones)
{
    const unsigned stored = 300, staged = 10;
    uint64_t idx = 0;
    unsigned char id[ENGINE_TXN_ID_LEN];
    for (unsigned i = 0; i < stored + staged; i++) {
        if (i == stored)
            ck_assert_int_eq(engine_commit(eng), KV_OK);
        /* staged ones interleave with the stored in id order */
        tomb_id(i < stored ? 2 * i : 2 * (i - stored) + 1, id);
        ck_assert_int_eq(engine_stage_resolve(eng, 3, ++idx, id, i % 2, 100),
                         KV_OK);
    }
    ck_assert_uint_eq(engine_tombstones(eng, 3), stored + staged);
    ck_assert(engine_gc_due(eng, 3, 100 + ENGINE_TOMB_KEEP_MS + 1));
    size_t removed = 0;
    ck_assert_int_eq(engine_stage_gc(eng, 3, ++idx, 200000, &removed), KV_OK);
    ck_assert_uint_eq(removed, ENGINE_TOMB_GC_MAX);
    ck_assert_uint_eq(engine_tombstones(eng, 3),
                      stored + staged - ENGINE_TOMB_GC_MAX);
    /* the first ids went: the staged odd ones among them */
    tomb_id(1, id);
    uint64_t ver = 0;
    struct engine_txn_op ops[] = {TPUT("z", "1")};
    ck_assert_int_eq(prepare(3, id, ops, 1, ++idx, 10, &ver), KV_OK);
    ck_assert_int_eq(engine_stage_resolve(eng, 3, ++idx, id, false, 100),
                     KV_OK); /* a tombstone again, staged */
    /* the next one, in the same batch, takes the rest (its own deletes
     * staged before it are not counted twice) */
    ck_assert_int_eq(engine_stage_gc(eng, 3, ++idx, 200000, &removed), KV_OK);
    ck_assert_uint_eq(removed, stored + staged - ENGINE_TOMB_GC_MAX + 1);
    ck_assert_uint_eq(engine_tombstones(eng, 3), 0);
    ck_assert(!engine_gc_due(eng, 3, 200000));
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    reopen(NSHARDS);
    ck_assert_uint_eq(engine_tombstones(eng, 3), 0);
    ck_assert(!engine_has_intents(eng, 3));
    ck_assert_int_eq(listed_parts(3), 0);
}
END_TEST

/* Tombstones are stored state: a restart finds them, their count and the
 * oldest deadline again, and they still answer late prepares; a snapshot
 * install (engine_reset_shard) counts them too. */
START_TEST(tombstones_and_their_count_survive_a_reopen)
{
    struct engine_txn_op ops[] = {TPUT("a", "1")};
    uint64_t ver;
    ck_assert_int_eq(prepare(1, txn_a, ops, 1, 1, 10, &ver), KV_OK);
    ck_assert_int_eq(engine_stage_resolve(eng, 1, 2, txn_a, true, 30), KV_OK);
    ck_assert_int_eq(engine_stage_resolve(eng, 1, 3, txn_b, false, 2000),
                     KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    reopen(NSHARDS);
    ck_assert_uint_eq(engine_tombstones(eng, 1), 2);
    ck_assert_uint_eq(engine_tombstones(eng, 0), 0);
    ck_assert(!engine_has_intents(eng, 1));
    ck_assert(!engine_has_txn_records(eng, 1));
    ck_assert_int_eq(listed_parts(1), 0);
    ck_assert(!engine_gc_due(eng, 1, 1000 + ENGINE_TOMB_KEEP_MS));
    ck_assert(engine_gc_due(eng, 1, 1001 + ENGINE_TOMB_KEEP_MS));
    ver = 0;
    ck_assert_int_eq(prepare(1, txn_a, ops, 1, 4, 10, &ver), KV_OK);
    ck_assert_uint_eq(ver, 1);
    ck_assert_int_eq(prepare(1, txn_b, ops, 1, 5, 10, &ver), KV_ETIMEDOUT);
    ck_assert(!engine_has_intents(eng, 1));
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    expect_value(1, "a", "1", 1);
    engine_reset_shard(eng, 1, 5, 1);
    ck_assert_uint_eq(engine_tombstones(eng, 1), 2);
    ck_assert(engine_gc_due(eng, 1, 1001 + ENGINE_TOMB_KEEP_MS));
}
END_TEST

/* A participant record written before tombstones existed (a header and
 * its keys) still reads as prepared; a tombstone of the wrong length or
 * outcome is corrupt. */
START_TEST(participant_records_and_tombstones_are_told_apart)
{
    struct engine_txn_op ops[] = {TPUT("a", "1")};
    uint64_t ver;
    ck_assert_int_eq(prepare(2, txn_a, ops, 1, 1, 10, &ver), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    unsigned char pk[5 + ENGINE_TXN_ID_LEN] = {'P', 0, 0, 0, 2};
    memcpy(pk + 5, txn_a, ENGINE_TXN_ID_LEN);
    void *v = NULL;
    size_t vlen = 0;
    ck_assert_int_eq(store_get(st, pk, sizeof(pk), &v, &vlen), KV_OK);
    /* home 7, deadline 1000, version 1, one key "a" */
    static const unsigned char want[] = {0, 0,    0, 7, 0, 0, 0, 0, 0,  0,
                                         3, 0xe8, 0, 0, 0, 0, 0, 0, 0,  1,
                                         0, 0,    0, 1, 0, 0, 0, 1, 'a'};
    ck_assert_uint_eq(vlen, sizeof(want));
    ck_assert_mem_eq(v, want, sizeof(want));
    free(v);
    ck_assert_int_eq(engine_stage_resolve(eng, 2, 2, txn_a, true, 30), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    ck_assert_int_eq(store_get(st, pk, sizeof(pk), &v, &vlen), KV_OK);
    static const unsigned char tomb[] = {
        0,    0,    0,    7,    0,
        0,    0,    0,    0,    0,
        3,    0xe8, 0,    0,    0,
        0,    0,    0,    0,    1,
        0xff, 0xff, 0xff, 0xff, ENGINE_TXN_COMMITTED};
    ck_assert_uint_eq(vlen, sizeof(tomb));
    ck_assert_mem_eq(v, tomb, sizeof(tomb));
    free(v);
    /* damaged: one byte more, or an outcome that is none */
    unsigned char bad[sizeof(tomb) + 1];
    memcpy(bad, tomb, sizeof(tomb));
    bad[sizeof(tomb)] = 0;
    struct store_batch *b = store_batch_new();
    ck_assert_ptr_nonnull(b);
    store_batch_put(b, pk, sizeof(pk), bad, sizeof(bad));
    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    ck_assert_int_eq(prepare(2, txn_a, ops, 1, 3, 10, &ver), KV_ECORRUPT);
    int n = 0;
    ck_assert_int_eq(engine_list_txns(eng, 2, 'P', count_txns, &n),
                     KV_ECORRUPT);
    bad[sizeof(tomb) - 1] = ENGINE_TXN_PENDING;
    store_batch_clear(b);
    store_batch_put(b, pk, sizeof(pk), bad, sizeof(tomb));
    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    store_batch_free(b);
    ck_assert_int_eq(engine_stage_resolve(eng, 2, 3, txn_a, true, 30),
                     KV_ECORRUPT);
}
END_TEST

/* A damaged intent kind or transaction record state is corruption, never
 * a lock-only intent or a decision: read as such, a commit dropped the
 * write the intent held, and the record was resolved as an abort and then
 * forgotten (found by tests/fuzz/fuzz_records.c). */
START_TEST(a_damaged_intent_or_transaction_record_is_reported_as_corrupt)
{
    struct engine_txn_op ops[] = {TPUT("a", "1")};
    uint64_t ver;
    uint32_t parts[] = {1, 2};
    int state = -1;
    ck_assert_int_eq(prepare(2, txn_a, ops, 1, 1, 10, &ver), KV_OK);
    ck_assert_int_eq(
        engine_stage_record(eng, 1, 1, txn_b, 1000, parts, 2, &state), KV_OK);
    ck_assert_int_eq(engine_commit(eng), KV_OK);
    unsigned char ik[6] = {'I', 0, 0, 0, 2, 'a'};
    unsigned char xk[5 + ENGINE_TXN_ID_LEN] = {'X', 0, 0, 0, 1};
    memcpy(xk + 5, txn_b, ENGINE_TXN_ID_LEN);
    void *iv = NULL, *xv = NULL;
    size_t ivlen = 0, xvlen = 0;
    ck_assert_int_eq(store_get(st, ik, sizeof(ik), &iv, &ivlen), KV_OK);
    ck_assert_int_eq(store_get(st, xk, sizeof(xk), &xv, &xvlen), KV_OK);
    ((unsigned char *)iv)[ENGINE_TXN_ID_LEN] = 9; /* no kind */
    ((unsigned char *)xv)[0] = 9;                 /* no state */
    struct store_batch *b = store_batch_new();
    ck_assert_ptr_nonnull(b);
    store_batch_put(b, ik, sizeof(ik), iv, ivlen);
    store_batch_put(b, xk, sizeof(xk), xv, xvlen);
    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    store_batch_free(b);
    free(iv);
    free(xv);
    struct engine_intent in = {0};
    ck_assert_int_eq(engine_get_intent(eng, 2, "a", 1, &in), KV_ECORRUPT);
    ck_assert_int_eq(stage_put(2, "a", "x", 0, false, NULL), KV_ECORRUPT);
    ck_assert_int_eq(engine_stage_resolve(eng, 2, 2, txn_a, true, 30),
                     KV_ECORRUPT);
    ck_assert_int_eq(
        engine_stage_decide(eng, 1, 2, txn_b, ENGINE_TXN_PENDING, 1, &state),
        KV_ECORRUPT);
    ck_assert_int_eq(engine_stage_forget(eng, 1, 3, txn_b), KV_ECORRUPT);
    int n = 0;
    ck_assert_int_eq(engine_list_txns(eng, 1, 'X', count_txns, &n),
                     KV_ECORRUPT);
    ck_assert_int_eq(n, 0);
}
END_TEST

/* The engine suite: versions, conditions, recovery, metadata, scans and the
 * two-step commit, each test on its own store under /tmp. */
Suite *engine_suite(void)
{
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("writes");

    tcase_add_unchecked_fixture(tc, root_setup, root_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, versions_strictly_increase_within_a_shard);
    tcase_add_test(tc, versions_of_different_shards_are_independent);
    tcase_add_test(tc, staged_writes_are_invisible_until_commit);
    tcase_add_test(tc, conditions_see_staged_writes);
    tcase_add_test(tc, if_version_succeeds_only_on_the_current_version);
    tcase_add_test(tc, if_absent_fails_on_an_existing_key);
    tcase_add_test(tc, deleting_a_missing_key_is_not_found);
    tcase_add_test(tc,
                   deleting_with_a_wrong_version_conflicts_and_changes_nothing);
    tcase_add_test(tc, empty_and_binary_values_and_keys_are_kept_exactly);
    tcase_add_test(tc, a_shard_beyond_the_count_is_invalid);
    tcase_add_test(tc, many_staged_writes_commit_together);
    suite_add_tcase(s, tc);

    tc = tcase_create("recovery");
    tcase_add_unchecked_fixture(tc, root_setup, root_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, shard_info_counts_keys_and_tracks_the_applied_version);
    tcase_add_test(tc, state_survives_close_and_reopen);
    tcase_add_test(tc, staged_writes_are_lost_when_closed_before_commit);
    tcase_add_test(tc, a_damaged_record_is_reported_as_corrupt);
    tcase_add_test(tc, a_damaged_shard_state_fails_engine_open);
    suite_add_tcase(s, tc);

    tc = tcase_create("metadata");
    tcase_add_unchecked_fixture(tc, root_setup, root_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, metadata_is_written_once_and_then_checked);
    tcase_add_test(tc, metadata_of_another_cluster_is_refused_naming_it);
    tcase_add_test(tc, metadata_of_another_node_is_refused_naming_it);
    tcase_add_test(tc, metadata_of_another_shard_count_is_refused_naming_it);
    tcase_add_test(
        tc, a_format_1_directory_is_upgraded_and_an_unknown_format_refused);
    suite_add_tcase(s, tc);

    tc = tcase_create("scans");
    tcase_add_unchecked_fixture(tc, root_setup, root_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, a_scan_returns_a_shards_keys_in_order);
    tcase_add_test(tc, a_scan_reports_each_entrys_value_and_version);
    tcase_add_test(tc, a_scan_honours_start_and_end);
    tcase_add_test(tc, a_scan_honours_a_prefix);
    tcase_add_test(tc, a_scan_resumes_strictly_after_the_cursor);
    tcase_add_test(tc, a_scan_stops_at_the_limit_and_says_whether_more_remain);
    tcase_add_test(tc, paging_with_limit_and_cursor_visits_every_key_once);
    tcase_add_test(tc, a_non_zero_emit_result_stops_the_scan_and_is_returned);
    tcase_add_test(tc, scans_never_cross_into_another_shard);
    tcase_add_test(tc, scans_see_committed_state_only);
    tcase_add_test(tc, a_scan_handles_keys_with_high_bytes);
    suite_add_tcase(s, tc);

    tc = tcase_create("commit");
    tcase_add_unchecked_fixture(tc, root_setup, root_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, writes_staged_during_a_flush_go_to_the_next_commit);
    tcase_add_test(tc,
                   a_failed_flush_rolls_back_versions_and_drops_later_writes);
    tcase_add_test(tc, a_failed_flush_with_nothing_staged_after_it_rolls_back);
    suite_add_tcase(s, tc);

    tc = tcase_create("replicated");
    tcase_add_unchecked_fixture(tc, root_setup, root_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, a_write_with_an_index_takes_the_index_as_its_version);
    tcase_add_test(
        tc, a_failed_condition_changes_no_data_but_moves_the_applied_index);
    tcase_add_test(
        tc, an_index_not_above_the_applied_index_is_invalid_and_stages_nothing);
    tcase_add_test(tc, a_retry_staged_before_the_commit_gets_the_first_outcome);
    tcase_add_test(tc, a_retry_after_the_commit_gets_the_first_outcome);
    tcase_add_test(
        tc, a_retry_during_the_flush_of_the_first_gets_the_first_outcome);
    tcase_add_test(tc, an_older_seq_gets_the_newer_outcome_and_changes_nothing);
    tcase_add_test(tc, another_client_with_the_same_seq_is_applied_normally);
    tcase_add_test(tc, sessions_survive_close_and_reopen);
    tcase_add_test(tc, a_seq_without_a_valid_client_id_is_invalid);
    tcase_add_test(
        tc, stage_applied_moves_the_index_without_data_and_survives_reopen);
    tcase_add_test(tc,
                   stage_applied_rejects_an_index_not_above_the_applied_one);
    tcase_add_test(tc, a_raw_record_staged_is_written_by_the_next_commit);
    tcase_add_test(tc, reset_shard_sets_the_applied_index_and_key_count);
    tcase_add_test(tc, a_shard_reset_forgets_the_sessions_it_replaced);
    tcase_add_test(
        tc, retries_of_more_sessions_than_memory_keeps_get_their_outcome);
    tcase_add_test(
        tc, a_session_goes_once_its_date_passed_and_then_a_copy_applies_again);
    tcase_add_test(tc, an_undated_session_is_dated_first_and_keeps_its_outcome);
    tcase_add_test(tc,
                   the_session_gc_is_bounded_resumes_and_sees_staged_sessions);
    tcase_add_test(
        tc, replicas_that_commit_at_other_points_expire_the_same_sessions);
    suite_add_tcase(s, tc);

    tc = tcase_create("transactions");
    tcase_add_unchecked_fixture(tc, root_setup, root_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, a_transaction_applies_every_write_with_one_version);
    tcase_add_test(tc,
                   a_failed_condition_writes_nothing_and_names_the_condition);
    tcase_add_test(tc, a_later_write_of_the_same_key_in_a_transaction_wins);
    tcase_add_test(
        tc,
        a_replicated_transaction_is_applied_once_and_retries_get_its_outcome);
    tcase_add_test(tc, malformed_transactions_are_invalid_and_stage_nothing);
    tcase_add_test(tc, prepared_intents_lock_keys_until_a_commit_applies_them);
    tcase_add_test(tc, an_aborted_prepare_leaves_the_data_as_it_was);
    tcase_add_test(tc,
                   prepare_votes_no_on_a_failed_condition_or_a_passed_deadline);
    tcase_add_test(
        tc, a_transaction_record_is_decided_once_and_aborts_past_its_deadline);
    tcase_add_test(tc, a_forgotten_transaction_is_never_recorded_again);
    tcase_add_test(tc,
                   a_prepare_after_a_commit_votes_yes_again_and_locks_nothing);
    tcase_add_test(
        tc, a_prepare_after_an_abort_it_never_saw_votes_no_and_locks_nothing);
    tcase_add_test(tc, gc_removes_only_tombstones_past_their_keep_time);
    tcase_add_test(tc, gc_is_bounded_per_entry_and_sees_staged_tombstones);
    tcase_add_test(tc, tombstones_and_their_count_survive_a_reopen);
    tcase_add_test(tc, participant_records_and_tombstones_are_told_apart);
    tcase_add_test(
        tc, a_damaged_intent_or_transaction_record_is_reported_as_corrupt);
    suite_add_tcase(s, tc);
    return s;
}
