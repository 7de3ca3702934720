/*
 * check_replica - unit tests of the multi-Raft driver (kvnode/replica.c) on
 * what it reads back from its store.
 *
 * A one-node cluster of one shard on a LevelDB store in a temp dir, with
 * records written into the store before the replica opens (as another
 * node's snapshot or a peer's call would have left them); and a follower
 * of three fed a leader's batches by hand. Most of the
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

/* A follower (node 2 of 3) is sent a snapshot of shard 0 at index 10, and,
 * before its loop takes raft's output, an append of entry 11 with the
 * commit point at 11: the output that installs the snapshot also commits
 * entry 11. The entry must be applied once the snapshot's data is in
 * place, not on the old data and not lost (a restart would find it
 * applied). This cannot be arranged on a real cluster, where the leader
 * appends only after the follower acknowledged the snapshot. */
START_TEST(an_entry_committed_with_a_snapshot_is_applied_after_its_install)
{
    static const char text[] = "cluster = t\nshards = 1\nreplicas = 3\n"
                               "[node 1]\naddress = tcp://127.0.0.1:7101\n"
                               "[node 2]\naddress = tcp://127.0.0.1:7102\n"
                               "[node 3]\naddress = tcp://127.0.0.1:7103\n";
    char err[256] = "";
    conf_free(conf);
    conf = NULL;
    ck_assert_int_eq(
        conf_parse(text, strlen(text), "t.conf", &conf, err, sizeof(err)),
        KV_OK);
    struct replica_env env = {.send = env_send, .reply = env_reply};
    ck_assert_int_eq(replica_open(conf, 2, st, &env, 7, &rep, err, sizeof(err)),
                     KV_OK);

    /* The snapshot: key "old" at version 4, in one chunk. */
    unsigned char sk[5 + 3] = {'D', 0, 0, 0, 0, 'o', 'l', 'd'};
    unsigned char sv[1 + 8 + 2] = {1};
    put_u64(sv + 1, 4);
    memcpy(sv + 9, "v4", 2);
    Kv__Entry rec = KV__ENTRY__INIT, *recs[1] = {&rec};
    rec.key.data = sk;
    rec.key.len = sizeof(sk);
    rec.value.data = sv;
    rec.value.len = sizeof(sv);
    Kv__SnapshotChunk ch = KV__SNAPSHOT_CHUNK__INIT, *chs[1] = {&ch};
    ch.shard = 0;
    ch.index = 10;
    ch.term = 2;
    ch.seq = 0;
    ch.n_records = 1;
    ch.records = recs;
    ch.last = true;
    ch.leader_term = 2;
    ch.to = 2;
    Kv__PeerBatch b1 = KV__PEER_BATCH__INIT;
    b1.from = 1;
    b1.cluster = "t";
    b1.boot_id = 5;
    b1.n_chunks = 1;
    b1.chunks = chs;
    replica_peer(rep, &b1);

    /* Entry 11: put "new" = "v11", committed. */
    Kv__PutRequest put = KV__PUT_REQUEST__INIT;
    put.key.data = (uint8_t *)"new";
    put.key.len = 3;
    put.value.data = (uint8_t *)"v11";
    put.value.len = 3;
    Kv__Command cmd = KV__COMMAND__INIT;
    cmd.op_case = KV__COMMAND__OP_PUT;
    cmd.put = &put;
    size_t clen = kv__command__get_packed_size(&cmd);
    uint8_t *cbuf = malloc(clen);
    ck_assert_ptr_nonnull(cbuf);
    kv__command__pack(&cmd, cbuf);
    Kv__LogEntry le = KV__LOG_ENTRY__INIT, *les[1] = {&le};
    le.term = 2;
    le.index = 11;
    le.type = 0;
    le.data.data = cbuf;
    le.data.len = clen;
    Kv__RaftMessage m = KV__RAFT_MESSAGE__INIT, *ms[1] = {&m};
    m.shard = 0;
    m.type = 1; /* RAFT_MSG_APPEND */
    m.from = 1;
    m.to = 2;
    m.term = 2;
    m.log_term = 2;
    m.index = 10;
    m.n_entries = 1;
    m.entries = les;
    m.commit = 11;
    Kv__PeerBatch b2 = KV__PEER_BATCH__INIT;
    b2.from = 1;
    b2.cluster = "t";
    b2.boot_id = 5;
    b2.n_msgs = 1;
    b2.msgs = ms;
    replica_peer(rep, &b2);
    free(cbuf);

    /* The install takes a few iterations; the group is held meanwhile. */
    ck_assert_int_eq(replica_flush(rep), KV_OK);
    ck_assert_int_ne(replica_installing(rep, 0), 0);
    for (int i = 0; i < 20 && replica_installing(rep, 0); i++)
        ck_assert_int_eq(replica_flush(rep), KV_OK);
    ck_assert_int_eq(replica_installing(rep, 0), 0);
    ck_assert_int_eq(replica_flush(rep), KV_OK);

    /* What is stored: both keys, the applied index 11. */
    replica_close(rep);
    rep = NULL;
    struct engine *e = NULL;
    ck_assert_int_eq(engine_open(st, 1, &e), KV_OK);
    ck_assert_uint_eq(engine_applied(e, 0), 11);
    void *v = NULL;
    size_t vlen = 0;
    uint64_t ver = 0;
    ck_assert_int_eq(engine_get(e, 0, "old", 3, &v, &vlen, &ver), KV_OK);
    ck_assert_uint_eq(ver, 4);
    ck_assert(vlen == 2 && memcmp(v, "v4", 2) == 0);
    free(v);
    ck_assert_int_eq(engine_get(e, 0, "new", 3, &v, &vlen, &ver), KV_OK);
    ck_assert_uint_eq(ver, 11);
    ck_assert(vlen == 3 && memcmp(v, "v11", 3) == 0);
    free(v);
    engine_close(e);
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
    tc = tcase_create("install");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(
        tc, an_entry_committed_with_a_snapshot_is_applied_after_its_install);
    suite_add_tcase(s, tc);
    return s;
}
