/*
 * check_replica - unit tests of the multi-Raft driver (kvnode/replica.c) on
 * what it reads back from its store.
 *
 * A one-node cluster of one shard on a LevelDB store in a temp dir, with
 * records written into the store before the replica opens (as another
 * node's snapshot or a peer's call would have left them). Most of the
 * driver is tested end to end by the simulator (tests/sim) and the
 * cluster tests; the fuzz targets of tests/fuzz feed it any input.
 */
#define _XOPEN_SOURCE 700 /* nftw() */

#include <check.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bytes.h"
#include "conf.h"
#include "engine.h"
#include "kv.h"
#include "replica.h"
#include "store.h"

Suite *replica_suite(void);

static char tmpdir[64];
static struct conf *conf;
static struct store *st;
static struct replica *rep;

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void env_send(void *arg, uint32_t to, const void *buf, size_t len)
{
    (void)arg;
    (void)to;
    (void)buf;
    (void)len;
}

static void env_reply(void *arg, const void *client, size_t clen,
                      const Kv__Response *resp)
{
    (void)arg;
    (void)client;
    (void)clen;
    (void)resp;
}

static void setup(void)
{
    static const char text[] = "cluster = t\nshards = 1\nreplicas = 1\n"
                               "[node 1]\naddress = tcp://127.0.0.1:7101\n";
    char err[256] = "", db[128];
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/kv-replica.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    snprintf(db, sizeof(db), "%s/db", tmpdir);
    ck_assert_int_eq(
        conf_parse(text, strlen(text), "t.conf", &conf, err, sizeof(err)),
        KV_OK);
    ck_assert_int_eq(store_open(db, &st, err, sizeof(err)), KV_OK);
}

static void teardown(void)
{
    replica_close(rep);
    rep = NULL;
    store_close(st);
    st = NULL;
    conf_free(conf);
    conf = NULL;
    nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Opens the replica and lets its group of one elect itself. */
static void start(void)
{
    struct replica_env env = {.send = env_send, .reply = env_reply};
    char err[256] = "";
    ck_assert_int_eq(replica_open(conf, 1, st, &env, 7, &rep, err, sizeof(err)),
                     KV_OK);
    for (int i = 0; i < 20 && replica_leader(rep, 0) != 1; i++) {
        ck_assert_int_eq(replica_flush(rep), KV_OK);
        replica_tick(rep);
    }
    ck_assert_uint_eq(replica_leader(rep, 0), 1);
}

/* A transaction record (engine.h: state, deadline, participants) stored
 * on shard 0 under txn id ID. */
static void put_record(const char *id, uint64_t deadline)
{
    unsigned char k[5 + ENGINE_TXN_ID_LEN] = {'X', 0, 0, 0, 0};
    unsigned char v[17];
    memcpy(k + 5, id, ENGINE_TXN_ID_LEN);
    v[0] = ENGINE_TXN_PENDING;
    put_u64(v + 1, deadline);
    put_u32(v + 9, 1);
    put_u32(v + 13, 0);
    struct store_batch *b = store_batch_new();
    ck_assert_ptr_nonnull(b);
    store_batch_put(b, k, sizeof(k), v, sizeof(v));
    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    store_batch_free(b);
}

/* The status lists a record's age from its deadline, which comes from the
 * store or a peer's call: any deadline gives an age in range, a negative
 * one for a transaction that begins later. Once computed in signed
 * arithmetic, a deadline past INT64_MAX overflowed (undefined behaviour,
 * found by tests/fuzz/fuzz_records.c) and UINT64_MAX read as 54 years old. */
START_TEST(a_far_deadline_lists_a_transaction_as_not_begun)
{
    put_record("txn-far-deadline", UINT64_MAX);
    start();
    Kv__StatusResult res = KV__STATUS_RESULT__INIT;
    ck_assert_int_eq(replica_status(rep, &res), KV_OK);
    ck_assert_uint_ge(res.n_shard_info, 1);
    const Kv__ShardInfo *si = res.shard_info[0];
    ck_assert_uint_eq(si->shard, 0);
    ck_assert_uint_eq(si->n_txns, 1);
    ck_assert_str_eq(si->txns[0]->state, "pending");
    ck_assert_uint_eq(si->txns[0]->deadline_ms, UINT64_MAX);
    ck_assert_int_eq(si->txns[0]->age_ms, -INT64_MAX);
    replica_status_free(&res);
}
END_TEST

/* A store whose snapshot point is at the top of the index space (a peer's
 * snapshot could put it there) is refused when the replica opens: taken,
 * it made compaction add to the snapshot point, wrap and divide by zero,
 * killing the node with SIGFPE at its first loop iteration (found by
 * tests/fuzz/fuzz_records.c; tests/fuzz/corpus/peer/
 * snapshot-at-the-last-index does it with a snapshot chunk). */
START_TEST(a_snapshot_point_at_the_top_index_is_refused)
{
    const uint64_t top = UINT64_MAX - 1;
    unsigned char hk[5] = {'H', 0, 0, 0, 0}, hv[36];
    unsigned char ak[5] = {'A', 0, 0, 0, 0}, av[16];
    put_u64(hv, 1);        /* term */
    put_u32(hv + 8, 0);    /* vote */
    put_u64(hv + 12, top); /* commit */
    put_u64(hv + 20, top); /* snapshot index */
    put_u64(hv + 28, 1);   /* snapshot term */
    put_u64(av, top);      /* applied */
    put_u64(av + 8, 0);    /* keys */
    struct store_batch *b = store_batch_new();
    ck_assert_ptr_nonnull(b);
    store_batch_put(b, hk, sizeof(hk), hv, sizeof(hv));
    store_batch_put(b, ak, sizeof(ak), av, sizeof(av));
    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    store_batch_free(b);
    struct replica_env env = {.send = env_send, .reply = env_reply};
    char err[256] = "";
    int rc = replica_open(conf, 1, st, &env, 7, &rep, err, sizeof(err));
    for (int i = 0; rc == KV_OK && i < 5; i++) {
        ck_assert_int_eq(replica_flush(rep), KV_OK);
        replica_tick(rep);
    }
    ck_assert_int_ne(rc, KV_OK);
    ck_assert_ptr_null(rep);
}
END_TEST

/* The replica suite. */
Suite *replica_suite(void)
{
    Suite *s = suite_create("replica");
    TCase *tc = tcase_create("status");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, a_far_deadline_lists_a_transaction_as_not_begun);
    suite_add_tcase(s, tc);
    tc = tcase_create("open");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, a_snapshot_point_at_the_top_index_is_refused);
    suite_add_tcase(s, tc);
    return s;
}
