/*
 * replication - what Raft replication promises, checked on real processes.
 *
 * Each test starts its own cluster of 3 kvnode processes (replicas = 3) on
 * 127.0.0.1 and checks one promise of docs/replication.md from outside:
 * a write needs a majority; a killed leader loses nothing acknowledged and
 * is replaced; a wiped replica catches up through a snapshot in bounded
 * memory; a retried write of one session applies once; SIGTERM hands
 * leadership away before the node exits; a follower serves stale reads
 * while the leader is stopped. Leaders are found the way `kvclient status`
 * finds them: the node that says role "leader" with the highest term.
 *
 * Timings (failover, catch-up, hand-off) are printed on stderr. Only the
 * hand-off after SIGTERM has a bound, a generous one; the machine running
 * the tests may be loaded.
 */
#include <check.h>
#include <glob.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "admin.h"
#include "harness.h"
#include "kv.h"
#include "wire.h"

#define NNODES 3
#define NSHARDS 8
#define STATUS_MS 1000
#define SESSION_ID_LEN 16

/* The wiped-replica test: two shards, each well past the point where
 * kvnode/replica.c first compacts a shard's log (12,000 applied entries:
 * COMPACT_EVERY + COMPACT_KEEP) and many times its 256 KiB snapshot
 * chunk. */
#define SNAP_SHARDS 2
#define SNAP_KEYS 32000
#define SNAP_VALUE 512
#define SNAP_SLOTS 64
#define SNAP_CHECK_EVERY 8 /* keys read back from the wiped node: 1 in 8 */
/* What a node's store may hold in memory whatever the data's size: the
 * LevelDB options of libkv/store.c (a 64 MiB block cache, a 16 MiB write
 * buffer, two of them while one is flushed) plus 16 MiB for the process
 * itself (ZeroMQ, protobuf, the driver). */
#define STORE_BUDGET ((64u + 2 * 16u + 16u) << 20)

#define HANDOFF_LIMIT_MS 1000
#define KV_XSTR(x) #x
#define KV_STR(x) KV_XSTR(x)

static struct cluster *cl;
static pid_t stopped_pid; /* a node this process SIGSTOPped, or 0 */

/* --- fixtures ------------------------------------------------------------- */

static void start_cluster(uint32_t shards, const char *log_level)
{
    struct cluster_opts o = {.log_level = log_level};
    stopped_pid = 0;
    int rc = cluster_start_opts(&cl, NNODES, shards, 3, &o);
    ck_assert_msg(rc == 0, "cluster did not start: %s", kv_strerror(rc));
}

static void cluster_up(void)
{
    start_cluster(NSHARDS, NULL);
}

static void cluster_up_snapshot(void)
{
    /* info: the wiped node logs "installed a snapshot". */
    start_cluster(SNAP_SHARDS, "info");
}

static void cluster_down(void)
{
    /* Only reached with the cluster still up when a test failed. A node
     * left stopped must run again to exit on SIGTERM. */
    if (stopped_pid > 0 && cl != NULL)
        kill(stopped_pid, SIGCONT);
    stopped_pid = 0;
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

/* The index on handle H of harness node I (by id, not by position). */
static size_t admin_of(kv *h, int i)
{
    uint32_t id = cluster_node_id(cl, i);
    size_t n = admin_node_count(h);
    for (size_t j = 0; j < n; j++)
        if (admin_node_id(h, j) == id)
            return j;
    ck_abort_msg("node %u is not known to the handle", id);
    return 0;
}

/* The answer of ST about SHARD, or NULL. */
static const Kv__ShardInfo *info_of(const Kv__StatusResult *st, uint32_t shard)
{
    for (size_t k = 0; st != NULL && k < st->n_shard_info; k++)
        if (st->shard_info[k] != NULL && st->shard_info[k]->shard == shard)
            return st->shard_info[k];
    return NULL;
}

static int is_leader(const Kv__ShardInfo *si)
{
    return si != NULL && si->local && si->role != NULL &&
           strcmp(si->role, "leader") == 0;
}

/* The statuses of every running node (NULL for the others and for nodes
 * that do not answer in STATUS_MS). Free with free_statuses(). */
static void get_statuses(kv *h, Kv__StatusResult *sts[NNODES])
{
    for (int i = 0; i < NNODES; i++) {
        sts[i] = NULL;
        if (!cluster_node_running(cl, i) ||
            cluster_node_pid(cl, i) == stopped_pid)
            continue;
        if (admin_status(h, admin_of(h, i), STATUS_MS, &sts[i]) != KV_OK)
            sts[i] = NULL;
    }
}

static void free_statuses(Kv__StatusResult *sts[NNODES])
{
    for (int i = 0; i < NNODES; i++) {
        admin_status_free(sts[i]);
        sts[i] = NULL;
    }
}

/* The harness index of the leader of SHARD in STS (the node that says
 * role "leader" with the highest term), or -1. */
static int leader_in(Kv__StatusResult *sts[NNODES], uint32_t shard)
{
    int best = -1;
    uint64_t term = 0;
    for (int i = 0; i < NNODES; i++) {
        const Kv__ShardInfo *si = info_of(sts[i], shard);
        if (is_leader(si) && (best < 0 || si->term > term)) {
            best = i;
            term = si->term;
        }
    }
    return best;
}

/* Waits at most TIMEOUT_MS for SHARD to have a leader other than node
 * index EXCEPT (-1: any). Returns its harness index, or -1. */
static int wait_leader(kv *h, uint32_t shard, int except, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    for (;;) {
        Kv__StatusResult *sts[NNODES];
        get_statuses(h, sts);
        int l = leader_in(sts, shard);
        free_statuses(sts);
        if (l >= 0 && l != except)
            return l;
        if (harness_now_ms() >= deadline)
            return -1;
        harness_sleep_ms(20);
    }
}

/* A key of SHARD (among NSH shards), the WHICH-th one of PREFIX. */
static size_t key_in_shard(const char *prefix, uint32_t shard, uint32_t nsh,
                           int which, char *buf, size_t cap)
{
    int found = 0;
    for (int i = 0; i < 1000000; i++) {
        size_t kl = (size_t)snprintf(buf, cap, "%s%d", prefix, i);
        if (kv_shard_of(buf, kl, nsh) == shard && found++ == which)
            return kl;
    }
    ck_abort_msg("no key for shard %u", shard);
    return 0;
}

/* Acknowledged writes of a test: key i holds value_of(i, gen[i]) at
 * version ver[i] (gen 0: never acknowledged). */
#define MAX_ACK 1024
struct acked {
    unsigned n;
    char key[MAX_ACK][32];
    size_t klen[MAX_ACK];
    unsigned gen[MAX_ACK];
    uint64_t ver[MAX_ACK];
};

static struct acked ack;

/* The value of entry I at generation GEN: 1..300 bytes, all byte values. */
static size_t value_of(unsigned i, unsigned gen, unsigned char *buf)
{
    size_t len = 1 + (i * 31u + gen * 17u) % 300u;
    for (size_t j = 0; j < len; j++)
        buf[j] = (unsigned char)(i * 5u + gen * 11u + j * 3u);
    return len;
}

/* Adds key K (KL bytes) to the table, returning its entry. */
static unsigned ack_add(const char *k, size_t kl)
{
    ck_assert_uint_lt(ack.n, MAX_ACK);
    ck_assert_uint_lt(kl, sizeof ack.key[0]);
    unsigned i = ack.n++;
    memcpy(ack.key[i], k, kl);
    ack.klen[i] = kl;
    ack.gen[i] = 0;
    ack.ver[i] = 0;
    return i;
}

/* Writes entry I at generation GEN with options O. Returns the result;
 * on KV_OK the write is recorded as acknowledged. */
static int ack_put(kv *h, unsigned i, unsigned gen, const kv_opts *o)
{
    unsigned char v[512];
    size_t vl = value_of(i, gen, v);
    uint64_t ver = 0;
    int rc = kv_put(h, ack.key[i], ack.klen[i], v, vl, o, &ver);
    if (rc == KV_OK) {
        ck_assert_msg(ver > ack.ver[i],
                      "%s: version %" PRIu64 " after %" PRIu64, ack.key[i], ver,
                      ack.ver[i]);
        ack.gen[i] = gen;
        ack.ver[i] = ver;
    }
    return rc;
}

/* Writes N new keys "PREFIX<n>" (each must be acknowledged). */
static void ack_write_new(kv *h, const char *prefix, unsigned n)
{
    for (unsigned j = 0; j < n; j++) {
        char k[32];
        int kl = snprintf(k, sizeof k, "%s%u", prefix, j);
        unsigned i = ack_add(k, (size_t)kl);
        int rc = ack_put(h, i, 1, NULL);
        ck_assert_msg(rc == KV_OK, "put %s: %s (%s)", k, kv_strerror(rc),
                      kv_errmsg(h));
    }
}

/* Reads every acknowledged key through a fresh handle: the value and the
 * version acknowledged last. */
static void ack_verify(void)
{
    kv *h = open_handle(10000);
    for (unsigned i = 0; i < ack.n; i++) {
        if (ack.gen[i] == 0)
            continue;
        unsigned char v[512];
        size_t vl = value_of(i, ack.gen[i], v);
        void *got = NULL;
        size_t glen = 0;
        uint64_t gver = 0;
        int rc = kv_get(h, ack.key[i], ack.klen[i], NULL, &got, &glen, &gver);
        ck_assert_msg(rc == KV_OK, "get %s: %s (%s)", ack.key[i],
                      kv_strerror(rc), kv_errmsg(h));
        int same = glen == vl && memcmp(got, v, vl) == 0;
        kv_free(got);
        ck_assert_msg(same, "%s lost its acknowledged value", ack.key[i]);
        ck_assert_msg(gver == ack.ver[i],
                      "%s has version %" PRIu64 ", acknowledged %" PRIu64,
                      ack.key[i], gver, ack.ver[i]);
    }
    kv_close(h);
}

/* Retries a put of entry I (timeout PER_MS each) until it is acknowledged
 * or LIMIT_MS pass. Returns the milliseconds it took, or -1. */
static int64_t put_until_ok(kv *h, unsigned i, unsigned gen, uint32_t per_ms,
                            int64_t limit_ms)
{
    kv_opts o = {.timeout_ms = per_ms};
    int64_t t0 = harness_now_ms();
    int rc;
    do {
        rc = ack_put(h, i, gen, &o);
        if (rc == KV_OK)
            return harness_now_ms() - t0;
    } while (harness_now_ms() - t0 < limit_ms);
    fprintf(stderr, "put %s: still %s after %" PRId64 " ms (%s)\n", ack.key[i],
            kv_strerror(rc), limit_ms, kv_errmsg(h));
    return -1;
}

/* Encodes a put of K=V with session CID/SEQ and a timeout of TIMEOUT_MS
 * into *buf (free() it). */
static size_t encode_put_within(const char *k, const char *v,
                                const unsigned char *cid, uint64_t seq,
                                uint64_t id, uint32_t timeout_ms, void **buf)
{
    Kv__Request req = KV__REQUEST__INIT;
    Kv__PutRequest p = KV__PUT_REQUEST__INIT;
    p.key.data = (uint8_t *)k;
    p.key.len = strlen(k);
    p.value.data = (uint8_t *)v;
    p.value.len = strlen(v);
    req.id = id;
    req.timeout_ms = timeout_ms;
    req.client_id.data = (uint8_t *)cid;
    req.client_id.len = SESSION_ID_LEN;
    req.seq = seq;
    req.op_case = KV__REQUEST__OP_PUT;
    req.put = &p;
    size_t len = 0;
    ck_assert_int_eq(wire_encode_request(&req, buf, &len), KV_OK);
    return len;
}

/* The same with a timeout of 5 s. */
static size_t encode_put(const char *k, const char *v, const unsigned char *cid,
                         uint64_t seq, uint64_t id, void **buf)
{
    return encode_put_within(k, v, cid, seq, id, 5000, buf);
}

/* Encodes a get of K (stale or not) into *buf (free() it). */
static size_t encode_get(const void *k, size_t kl, int stale, uint64_t id,
                         void **buf)
{
    Kv__Request req = KV__REQUEST__INIT;
    Kv__GetRequest g = KV__GET_REQUEST__INIT;
    g.key.data = (uint8_t *)k;
    g.key.len = kl;
    g.stale = stale;
    req.id = id;
    req.timeout_ms = 5000;
    req.op_case = KV__REQUEST__OP_GET;
    req.get = &g;
    size_t len = 0;
    ck_assert_int_eq(wire_encode_request(&req, buf, &len), KV_OK);
    return len;
}

/* Sends the encoded write BUF to the leader of SHARD until one answers it
 * with something other than KV_ENOTLEADER/KV_EUNAVAILABLE (bounded). On
 * return *code and *version are that answer's. */
static void send_write(kv *h, uint32_t shard, const void *buf, size_t len,
                       int *code, uint64_t *version)
{
    int64_t deadline = harness_now_ms() + 20000;
    for (;;) {
        int l = wait_leader(h, shard, -1, 10000);
        ck_assert_msg(l >= 0, "shard %u has no leader", shard);
        Kv__Envelope *e = NULL;
        int rc = admin_raw(h, admin_of(h, l), buf, len, 5000, &e);
        if (rc == KV_OK) {
            ck_assert_int_eq(e->body_case, KV__ENVELOPE__BODY_RESPONSE);
            Kv__Response *r = e->response;
            if (r->code != KV_ENOTLEADER && r->code != KV_EUNAVAILABLE) {
                *code = r->code;
                *version = r->result_case == KV__RESPONSE__RESULT_WRITE
                               ? r->write->version
                               : 0;
                wire_free(e);
                return;
            }
            wire_free(e);
        }
        ck_assert_msg(harness_now_ms() < deadline,
                      "no leader of shard %u took the write: %s", shard,
                      kv_strerror(rc));
        harness_sleep_ms(50);
    }
}

/* Reads K through H and checks its value and version. */
static void expect_value(kv *h, const char *k, const char *want,
                         uint64_t want_ver)
{
    void *got = NULL;
    size_t glen = 0;
    uint64_t gver = 0;
    int rc = kv_get(h, k, strlen(k), NULL, &got, &glen, &gver);
    ck_assert_msg(rc == KV_OK, "get %s: %s (%s)", k, kv_strerror(rc),
                  kv_errmsg(h));
    int same = glen == strlen(want) && memcmp(got, want, glen) == 0;
    kv_free(got);
    ck_assert_msg(same, "%s does not hold \"%s\"", k, want);
    ck_assert_msg(gver == want_ver, "%s: version %" PRIu64 ", want %" PRIu64, k,
                  gver, want_ver);
}

/* Sends a stale get of K to node I alone, which answers from its own
 * copy. Returns the reply (free with wire_free), checked to be a
 * Response. */
static Kv__Envelope *stale_ask(kv *h, int node, const void *k, size_t kl)
{
    static uint64_t next_id = 90000;
    void *buf = NULL;
    size_t len = encode_get(k, kl, 1, ++next_id, &buf);
    Kv__Envelope *e = NULL;
    int rc = admin_raw(h, admin_of(h, node), buf, len, 5000, &e);
    free(buf);
    ck_assert_msg(rc == KV_OK, "stale get %.*s from node %u: %s", (int)kl,
                  (const char *)k, cluster_node_id(cl, node), kv_strerror(rc));
    ck_assert(e->body_case == KV__ENVELOPE__BODY_RESPONSE);
    return e;
}

/* The same, checked to be a value. */
static Kv__Envelope *stale_get_from(kv *h, int node, const void *k, size_t kl)
{
    Kv__Envelope *e = stale_ask(h, node, k, kl);
    ck_assert_msg(e->response->code == KV_OK &&
                      e->response->result_case == KV__RESPONSE__RESULT_GET,
                  "stale get %.*s from node %u: code %d", (int)kl,
                  (const char *)k, cluster_node_id(cl, node),
                  e->response->code);
    return e;
}

/* The value of the stale get answer E, or NULL. */
static const ProtobufCBinaryData *got_value(const Kv__Envelope *e)
{
    return e->response->code == KV_OK &&
                   e->response->result_case == KV__RESPONSE__RESULT_GET
               ? &e->response->get->value
               : NULL;
}

/* Reads every acknowledged key from node I alone: its own copy holds the
 * acknowledged value at the acknowledged version. */
static void ack_verify_on(kv *h, int node)
{
    for (unsigned i = 0; i < ack.n; i++) {
        if (ack.gen[i] == 0)
            continue;
        unsigned char v[512];
        size_t vl = value_of(i, ack.gen[i], v);
        Kv__Envelope *e = stale_get_from(h, node, ack.key[i], ack.klen[i]);
        const Kv__GetResult *g = e->response->get;
        int same = g->value.len == vl && memcmp(g->value.data, v, vl) == 0;
        uint64_t gver = g->version;
        wire_free(e);
        ck_assert_msg(same, "node %u lacks the acknowledged value of %s",
                      cluster_node_id(cl, node), ack.key[i]);
        ck_assert_msg(gver == ack.ver[i],
                      "node %u has %s at version %" PRIu64
                      ", acknowledged %" PRIu64,
                      cluster_node_id(cl, node), ack.key[i], gver, ack.ver[i]);
    }
}

/* Waits at most TIMEOUT_MS until node I has applied, in each of the NSH
 * shards, what the shard's leader has applied, with as many keys (and,
 * when KEYS is not NULL, KEYS[s] keys). APPLIED (may be NULL) gets the
 * applied indexes. Returns the milliseconds it took, or -1. */
static int64_t wait_caught_up(kv *h, int node, uint32_t nsh,
                              const uint64_t *keys, uint64_t *applied,
                              int timeout_ms)
{
    int64_t t0 = harness_now_ms();
    for (;;) {
        Kv__StatusResult *sts[NNODES];
        get_statuses(h, sts);
        int caught = sts[node] != NULL;
        for (uint32_t s = 0; caught && s < nsh; s++) {
            int l = leader_in(sts, s);
            const Kv__ShardInfo *lsi = l >= 0 ? info_of(sts[l], s) : NULL;
            const Kv__ShardInfo *nsi = info_of(sts[node], s);
            caught = lsi != NULL && nsi != NULL && nsi->local &&
                     nsi->applied == lsi->applied && nsi->keys == lsi->keys &&
                     (keys == NULL || lsi->keys == keys[s]);
            if (caught && applied != NULL)
                applied[s] = nsi->applied;
        }
        free_statuses(sts);
        int64_t took = harness_now_ms() - t0;
        if (caught)
            return took;
        if (took >= timeout_ms)
            return -1;
        harness_sleep_ms(100);
    }
}

/* --- a write needs a majority --------------------------------------------- */

START_TEST(a_write_is_acknowledged_only_by_a_majority_of_replicas)
{
    memset(&ack, 0, sizeof ack);
    kv *h = open_handle(10000);
    ack_write_new(h, "maj/a/", 100);

    /* One of three down: a majority is left, writes go on. */
    ck_assert_int_eq(cluster_kill(cl, 1, SIGKILL), 0);
    ack_write_new(h, "maj/b/", 100);

    /* Two of three down: no shard can commit, no write is acknowledged. */
    ck_assert_int_eq(cluster_kill(cl, 2, SIGKILL), 0);
    unsigned doubt[4];
    kv_opts o = {.timeout_ms = 1500};
    for (uint32_t j = 0; j < 4; j++) {
        char k[32];
        size_t kl = key_in_shard("maj/c/", j * 2, NSHARDS, 0, k, sizeof k);
        doubt[j] = ack_add(k, kl);
        int64_t t0 = harness_now_ms();
        int rc = ack_put(h, doubt[j], 1, &o);
        fprintf(stderr,
                "put with 2 of 3 nodes down (shard %u): %s after "
                "%" PRId64 " ms\n",
                j * 2, kv_strerror(rc), harness_now_ms() - t0);
        ck_assert_msg(rc == KV_ETIMEDOUT || rc == KV_EUNAVAILABLE,
                      "a put without a majority returned %s", kv_strerror(rc));
    }

    /* A majority again: writes are acknowledged, nothing was lost. */
    ck_assert_int_eq(cluster_restart_node(cl, 2), 0);
    for (unsigned j = 0; j < 4; j++) {
        int64_t took = put_until_ok(h, doubt[j], 2, 2000, 30000);
        ck_assert_msg(took >= 0, "no write acknowledged with 2 of 3 nodes up");
        fprintf(stderr,
                "put with 2 of 3 nodes up again: ok after %" PRId64 " ms\n",
                took);
    }
    ack_write_new(h, "maj/d/", 50);
    ack_verify();

    /* And with every node back, the one that missed it all has it too. */
    ck_assert_int_eq(cluster_restart_node(cl, 1), 0);
    ck_assert_msg(wait_caught_up(h, 1, NSHARDS, NULL, NULL, 60000) >= 0,
                  "node 2 did not catch up");
    ack_verify_on(h, 1);
    ack_verify();
    kv_close(h);
    stop_cluster_cleanly();
}
END_TEST

/* --- a killed leader ------------------------------------------------------ */

START_TEST(killing_a_shard_leader_keeps_every_acknowledged_write)
{
    memset(&ack, 0, sizeof ack);
    kv *h = open_handle(10000);
    ack_write_new(h, "lead/any/", 200);
    const uint32_t shard = 3;
    unsigned mine[50];
    for (int j = 0; j < 50; j++) {
        char k[32];
        size_t kl = key_in_shard("lead/s/", shard, NSHARDS, j, k, sizeof k);
        mine[j] = ack_add(k, kl);
        ck_assert_int_eq(ack_put(h, mine[j], 1, NULL), KV_OK);
    }

    int old = wait_leader(h, shard, -1, 10000);
    ck_assert_msg(old >= 0, "shard %u has no leader", shard);
    fprintf(stderr, "shard %u is led by node %u: kill -9\n", shard,
            cluster_node_id(cl, old));
    ck_assert_int_eq(cluster_kill(cl, old, SIGKILL), 0);
    int64_t t0 = harness_now_ms();

    /* The first write acknowledged after the kill, with short attempts. */
    int64_t took = put_until_ok(h, mine[0], 2, 500, 30000);
    ck_assert_msg(took >= 0, "no write acknowledged after the leader died");
    int now = wait_leader(h, shard, old, 10000);
    ck_assert_msg(now >= 0, "shard %u got no new leader", shard);
    fprintf(stderr,
            "leader of shard %u killed: node %u leads, first write "
            "acknowledged %" PRId64 " ms after the kill\n",
            shard, cluster_node_id(cl, now), took);
    (void)t0;
    for (int j = 1; j < 50; j++)
        ck_assert_int_eq(ack_put(h, mine[j], 2, NULL), KV_OK);
    ack_verify();

    /* The old leader returns as a follower and gets the same data. */
    ck_assert_int_eq(cluster_restart_node(cl, old), 0);
    ck_assert_msg(wait_caught_up(h, old, NSHARDS, NULL, NULL, 60000) >= 0,
                  "node %u did not catch up", cluster_node_id(cl, old));
    ack_verify_on(h, old);
    ack_verify();
    kv_close(h);
    stop_cluster_cleanly();
}
END_TEST

/* --- a wiped replica catches up ------------------------------------------- */

/* Value bytes of snapshot key I: not compressible, so the data's size on
 * disk and in flight is what the test says it is. */
static void snap_value(unsigned i, unsigned char *buf)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (i + 1);
    for (size_t j = 0; j < SNAP_VALUE; j++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[j] = (unsigned char)x;
    }
}

static size_t snap_key(unsigned i, char *buf, size_t cap)
{
    return (size_t)snprintf(buf, cap, "snap/%06u", i);
}

/* The peak resident set (VmHWM) of PID in KiB, or 0. */
static uint64_t vm_hwm_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    uint64_t kib = 0;
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmHWM: %" SCNu64 " kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* Whether PID runs with AddressSanitizer (its memory use is then not the
 * program's). */
static int runs_asan(pid_t pid)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    int yes = 0;
    if (f == NULL)
        return 0;
    while (!yes && fgets(line, sizeof line, f) != NULL)
        yes = strstr(line, "libasan") != NULL;
    fclose(f);
    return yes;
}

/* Whether the file PATH contains TEXT (reads at most 64 MiB). */
static int file_contains(const char *path, const char *text)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    char line[4096];
    int yes = 0;
    for (int n = 0; !yes && n < 1000000 && fgets(line, sizeof line, f); n++)
        yes = strstr(line, text) != NULL;
    fclose(f);
    return yes;
}

/* Writes keys 0..N-1 (KEYF names key I; its value is snap_value(I))
 * through the pipeline; VERS gets their versions. */
static void snap_write(kv *h, unsigned n,
                       size_t (*keyf)(unsigned, char *, size_t), uint64_t *vers)
{
    static char keys[SNAP_SLOTS][32];
    static unsigned char vals[SNAP_SLOTS][SNAP_VALUE];
    static struct admin_op ops[SNAP_SLOTS];
    unsigned which[SNAP_SLOTS];
    int used[SNAP_SLOTS] = {0};
    unsigned done[SNAP_SLOTS];
    unsigned next = 0, acked = 0;
    ck_assert_int_eq(admin_pipeline(h, SNAP_SLOTS), KV_OK);
    int64_t t0 = harness_now_ms();
    int64_t deadline = t0 + 400000;
    while (acked < n) {
        for (unsigned s = 0; s < SNAP_SLOTS && next < n; s++) {
            if (used[s])
                continue;
            memset(&ops[s], 0, sizeof ops[s]);
            ops[s].kind = ADMIN_PUT;
            ops[s].klen = keyf(next, keys[s], sizeof keys[s]);
            ops[s].key = keys[s];
            snap_value(next, vals[s]);
            ops[s].val = vals[s];
            ops[s].vlen = SNAP_VALUE;
            ops[s].timeout_ms = 30000;
            ck_assert_int_eq(admin_submit(h, s, &ops[s]), KV_OK);
            which[s] = next++;
            used[s] = 1;
        }
        int got = admin_poll(h, 100, done, SNAP_SLOTS);
        ck_assert_msg(got >= 0, "admin_poll: %s", kv_strerror(got));
        for (int d = 0; d < got; d++) {
            unsigned s = done[d];
            ck_assert_uint_lt(s, SNAP_SLOTS);
            ck_assert_msg(ops[s].rc == KV_OK, "put %s: %s", keys[s],
                          kv_strerror(ops[s].rc));
            vers[which[s]] = ops[s].version;
            used[s] = 0;
            acked++;
        }
        ck_assert_msg(harness_now_ms() < deadline,
                      "only %u of %u writes acknowledged in time", acked, n);
    }
    int64_t ms = harness_now_ms() - t0;
    fprintf(stderr, "wrote %u keys of %u bytes in %" PRId64 " ms (%.0f/s)\n", n,
            SNAP_VALUE, ms, ms > 0 ? n * 1000.0 / (double)ms : 0.0);
}

/* Stops node I and deletes its data, as after a disk loss. */
static void wipe_node(int i)
{
    ck_assert_int_eq(cluster_kill(cl, i, SIGTERM), 0);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/data/%u", cluster_dir(cl),
             cluster_node_id(cl, i));
    ck_assert_msg(file_contains(cluster_conf_path(cl), "data_dir = data"),
                  "the test expects data_dir = data");
    ck_assert_int_eq(harness_rmtree(dir), 0);
}

START_TEST(a_wiped_replica_catches_up_through_a_snapshot_in_bounded_memory)
{
    const int wiped = 2;
    static uint64_t vers[SNAP_KEYS];
    kv *h = open_handle(10000);

    wipe_node(wiped);

    /* Meanwhile the other two take enough writes that each shard's log is
     * compacted: the wiped node can only catch up from a snapshot. */
    snap_write(h, SNAP_KEYS, snap_key, vers);
    uint64_t bytes[SNAP_SHARDS] = {0}, count[SNAP_SHARDS] = {0};
    uint64_t biggest = 0, total = 0;
    for (unsigned i = 0; i < SNAP_KEYS; i++) {
        char k[32];
        size_t kl = snap_key(i, k, sizeof k);
        uint32_t s = kv_shard_of(k, kl, SNAP_SHARDS);
        bytes[s] += kl + SNAP_VALUE;
        count[s]++;
    }
    for (uint32_t s = 0; s < SNAP_SHARDS; s++) {
        fprintf(stderr, "shard %u: %" PRIu64 " keys, %.1f MB\n", s, count[s],
                (double)bytes[s] / 1e6);
        ck_assert_msg(count[s] > 13000, "shard %u has only %" PRIu64 " keys", s,
                      count[s]);
        if (bytes[s] > biggest)
            biggest = bytes[s];
        total += bytes[s];
    }

    /* Back with an empty data dir: it catches up with every shard. */
    ck_assert_int_eq(cluster_restart_node(cl, wiped), 0);
    uint64_t applied[SNAP_SHARDS] = {0};
    int64_t took =
        wait_caught_up(h, wiped, SNAP_SHARDS, count, applied, 300000);
    ck_assert_msg(took >= 0, "the wiped node did not catch up in 300 s");
    fprintf(stderr, "the wiped node caught up in %" PRId64 " ms", took);
    for (uint32_t s = 0; s < SNAP_SHARDS; s++)
        fprintf(stderr, "%s shard %u applied %" PRIu64, s ? "," : ":", s,
                applied[s]);
    fputc('\n', stderr);

    /* Memory: measured now, before the reads below fill the block cache.
     * The snapshots were streamed, so the node's peak is the store's fixed
     * budget plus a little, not a multiple of the data (see STORE_BUDGET).
     * The healthy nodes, which took the same data through the log, are
     * printed for comparison. */
    pid_t pid = cluster_node_pid(cl, wiped);
    uint64_t hwm = vm_hwm_kib(pid);
    int asan = runs_asan(pid);
    ck_assert_msg(hwm > 0, "no VmHWM for pid %d", (int)pid);
    for (int i = 0; i < NNODES; i++)
        fprintf(stderr, "node %u peak RSS (VmHWM): %.1f MB%s\n",
                cluster_node_id(cl, i),
                (double)vm_hwm_kib(cluster_node_pid(cl, i)) * 1024 / 1e6,
                i == wiped ? " (the wiped one)" : "");
    fprintf(stderr, "biggest shard %.1f MB, all shards %.1f MB%s\n",
            (double)biggest / 1e6, (double)total / 1e6,
            asan ? " (AddressSanitizer build: the bound is not checked)" : "");
    if (!asan)
        ck_assert_msg(hwm * 1024 < STORE_BUDGET + 3 * biggest,
                      "peak RSS %" PRIu64 " KiB is not below the store's "
                      "budget plus 3x the biggest shard (%" PRIu64 " bytes)",
                      hwm, biggest);

    /* ... through a snapshot of each shard, as its log says. */
    char logpath[512];
    snprintf(logpath, sizeof logpath, "%s/node-%u.log", cluster_dir(cl),
             cluster_node_id(cl, wiped));
    for (uint32_t s = 0; s < SNAP_SHARDS; s++) {
        char want[64];
        snprintf(want, sizeof want, "\"installed a snapshot\" shard=%u ", s);
        ck_assert_msg(file_contains(logpath, want),
                      "node %u did not install a snapshot of shard %u",
                      cluster_node_id(cl, wiped), s);
    }

    /* Its own copy holds every key at its acknowledged version: read from
     * that node alone (a stale read is served from the local copy). */
    static unsigned char want[SNAP_VALUE];
    unsigned checked = 0;
    for (unsigned i = 0; i < SNAP_KEYS; i += SNAP_CHECK_EVERY) {
        char k[32];
        size_t kl = snap_key(i, k, sizeof k);
        Kv__Envelope *e = stale_get_from(h, wiped, k, kl);
        Kv__Response *r = e->response;
        snap_value(i, want);
        int same = r->get->value.len == SNAP_VALUE &&
                   memcmp(r->get->value.data, want, SNAP_VALUE) == 0;
        uint64_t gver = r->get->version;
        wire_free(e);
        ck_assert_msg(same, "the wiped node has a wrong value for %s", k);
        ck_assert_msg(gver == vers[i],
                      "the wiped node has %s at version %" PRIu64
                      ", acknowledged %" PRIu64,
                      k, gver, vers[i]);
        checked++;
    }
    fprintf(stderr, "the wiped node returned %u sampled keys correctly\n",
            checked);

    kv_close(h);
    stop_cluster_cleanly();
}
END_TEST

/* --- an install does not stop the node ------------------------------------ */

#define INST_KEYS 16000 /* into shard 0 alone: its log is compacted */
#define INST_OTHER 50   /* into shard 1, which stays on the log */
#define INST_POLLS 200000

static unsigned
    inst_idx[INST_KEYS]; /* key I of the test: snap key INST_IDX[I] */

static size_t inst_key(unsigned i, char *buf, size_t cap)
{
    return snap_key(inst_idx[i], buf, cap);
}

START_TEST(a_replica_putting_a_snapshot_in_place_serves_its_other_shards)
{
    const int wiped = 2;
    const uint32_t big = 0, other = 1;
    static uint64_t vers[INST_KEYS];
    kv *h = open_handle(10000);
    for (unsigned i = 0, j = 0; i < INST_KEYS; j++) {
        char k[32];
        size_t kl = snap_key(j, k, sizeof k);
        if (kv_shard_of(k, kl, SNAP_SHARDS) == big)
            inst_idx[i++] = j;
    }
    /* Shard 1 gets a few keys and keeps its whole log. */
    static char okeys[INST_OTHER][32];
    for (int i = 0; i < INST_OTHER; i++) {
        size_t kl = key_in_shard("other/", other, SNAP_SHARDS, i, okeys[i],
                                 sizeof okeys[i]);
        ck_assert_int_eq(kv_put(h, okeys[i], kl, okeys[i], kl, NULL, NULL),
                         KV_OK);
    }
    /* Shard 0 takes enough writes while the node is gone that it can only
     * catch up from a snapshot. */
    wipe_node(wiped);
    snap_write(h, INST_KEYS, inst_key, vers);
    ck_assert_int_eq(cluster_restart_node(cl, wiped), 0);

    /* While it reports shard 0 being put in place, the node answers: its
     * copy of shard 1 serves stale reads, and a stale read of shard 0 is
     * sent to the leader, never served from the part in place. */
    unsigned seen = 0, other_served = 0, redirected = 0, after = 0;
    int64_t deadline = harness_now_ms() + 300000;
    for (unsigned n = 0; n < INST_POLLS; n++) {
        Kv__StatusResult *st = NULL;
        int rc = admin_status(h, admin_of(h, wiped), STATUS_MS, &st);
        const Kv__ShardInfo *si = rc == KV_OK ? info_of(st, big) : NULL;
        int installing = si != NULL && si->installing;
        int done =
            si != NULL && si->local && !si->installing && si->keys == INST_KEYS;
        admin_status_free(st);
        if (done)
            break;
        ck_assert_msg(harness_now_ms() < deadline,
                      "the wiped node did not install shard 0 in 300 s");
        if (!installing) {
            harness_sleep_ms(1);
            continue;
        }
        seen++;
        unsigned i = (seen * 7919u) % INST_KEYS;
        char k[32];
        inst_key(i, k, sizeof k);
        Kv__Envelope *e = stale_ask(h, wiped, k, strlen(k));
        int code = e->response->code;
        const ProtobufCBinaryData *v = got_value(e);
        if (code == KV_ENOTLEADER) {
            redirected++;
        } else {
            /* The install ended in between: all of it is in place. */
            unsigned char want[SNAP_VALUE];
            snap_value(i, want);
            ck_assert_msg(code == KV_OK,
                          "a stale read of %s during the install: %s", k,
                          kv_strerror(code));
            ck_assert_msg(v && v->len == SNAP_VALUE &&
                              memcmp(v->data, want, SNAP_VALUE) == 0,
                          "a stale read of %s during the install has a "
                          "wrong value",
                          k);
            after++;
        }
        wire_free(e);
        const char *ok = okeys[seen % INST_OTHER];
        e = stale_ask(h, wiped, ok, strlen(ok));
        code = e->response->code;
        v = got_value(e);
        ck_assert_msg(code == KV_OK || code == KV_ENOTFOUND,
                      "node %u did not serve a stale read of shard 1 during "
                      "the install: %s",
                      cluster_node_id(cl, wiped), kv_strerror(code));
        if (code == KV_OK) {
            ck_assert_msg(v && v->len == strlen(ok) &&
                              memcmp(v->data, ok, v->len) == 0,
                          "wrong value of %s", ok);
            other_served++;
        }
        wire_free(e);
    }
    fprintf(stderr,
            "during the install: %u status answers, %u stale reads of "
            "shard 1 served, %u of shard 0 sent to the leader, %u after it\n",
            seen, other_served, redirected, after);
    ck_assert_msg(seen > 0, "no status answer came while shard 0 was put in "
                            "place");
    ck_assert_msg(other_served > 0, "no stale read of shard 1 was served "
                                    "while shard 0 was put in place");
    ck_assert_msg(redirected > 0, "no stale read of shard 0 was sent to the "
                                  "leader during the install");

    /* Then it holds every key at its acknowledged version. */
    uint64_t count[SNAP_SHARDS] = {INST_KEYS, INST_OTHER};
    ck_assert_msg(wait_caught_up(h, wiped, SNAP_SHARDS, count, NULL, 60000) >=
                      0,
                  "the wiped node did not catch up");
    for (unsigned i = 0; i < INST_KEYS; i += SNAP_CHECK_EVERY) {
        char k[32];
        size_t kl = inst_key(i, k, sizeof k);
        Kv__Envelope *e = stale_get_from(h, wiped, k, kl);
        unsigned char want[SNAP_VALUE];
        snap_value(i, want);
        ck_assert_msg(
            e->response->get->value.len == SNAP_VALUE &&
                memcmp(e->response->get->value.data, want, SNAP_VALUE) == 0 &&
                e->response->get->version == vers[i],
            "the wiped node has a wrong copy of %s", k);
        wire_free(e);
    }
    kv_close(h);
    stop_cluster_cleanly();
}
END_TEST

/* --- exactly once -----------------------------------------------------------
 */

START_TEST(a_retried_write_of_one_session_is_applied_once)
{
    kv *h = open_handle(10000);
    const char *k = "once/key";
    uint32_t shard = kv_shard_of(k, strlen(k), NSHARDS);
    unsigned char cid[SESSION_ID_LEN];
    for (int j = 0; j < SESSION_ID_LEN; j++)
        cid[j] = (unsigned char)(0xa0 + j * 7);
    int code = 0;
    uint64_t v1 = 0, again = 0, v2 = 0, v3 = 0;

    /* The same frame twice: one write, two identical answers. */
    void *b1 = NULL;
    size_t l1 = encode_put(k, "first", cid, 1, 1001, &b1);
    send_write(h, shard, b1, l1, &code, &v1);
    ck_assert_msg(code == KV_OK, "first put: %s", kv_strerror(code));
    ck_assert_uint_gt(v1, 0);
    send_write(h, shard, b1, l1, &code, &again);
    ck_assert_msg(code == KV_OK, "repeated put: %s", kv_strerror(code));
    ck_assert_msg(again == v1,
                  "the repeated put answered version %" PRIu64
                  ", the first %" PRIu64,
                  again, v1);
    expect_value(h, k, "first", v1);

    /* The session's next write applies normally. */
    void *b2 = NULL;
    size_t l2 = encode_put(k, "second", cid, 2, 1002, &b2);
    send_write(h, shard, b2, l2, &code, &v2);
    ck_assert_msg(code == KV_OK, "seq 2: %s", kv_strerror(code));
    ck_assert_uint_gt(v2, v1);
    expect_value(h, k, "second", v2);

    /* A late copy of seq 1 does not apply again over seq 2. */
    send_write(h, shard, b1, l1, &code, &again);
    expect_value(h, k, "second", v2);

    /* Sequence numbers belong to a session: another one starts at 1. */
    cid[0] ^= 0xff;
    void *b3 = NULL;
    size_t l3 = encode_put(k, "third", cid, 1, 1003, &b3);
    send_write(h, shard, b3, l3, &code, &v3);
    ck_assert_msg(code == KV_OK, "another session's seq 1: %s",
                  kv_strerror(code));
    ck_assert_uint_gt(v3, v2);
    expect_value(h, k, "third", v3);
    free(b1);
    free(b2);
    free(b3);
    kv_close(h);
    stop_cluster_cleanly();
}
END_TEST

/* --- SIGTERM hands leadership away ------------------------------------------
 */

START_TEST(sigterm_of_a_leader_hands_its_shards_over_before_it_exits)
{
    kv *h = open_handle(10000);
    int led_by[NSHARDS], per_node[NNODES] = {0};
    for (uint32_t s = 0; s < NSHARDS; s++) {
        led_by[s] = wait_leader(h, s, -1, 10000);
        ck_assert_msg(led_by[s] >= 0, "shard %u has no leader", s);
        per_node[led_by[s]]++;
    }
    int victim = 0;
    for (int i = 1; i < NNODES; i++)
        if (per_node[i] > per_node[victim])
            victim = i;
    char list[128] = "";
    uint32_t first = NSHARDS;
    for (uint32_t s = 0; s < NSHARDS; s++)
        if (led_by[s] == victim) {
            size_t n = strlen(list);
            snprintf(list + n, sizeof list - n, " %u", s);
            if (first == NSHARDS)
                first = s;
        }
    fprintf(stderr, "node %u leads shards%s: SIGTERM\n",
            cluster_node_id(cl, victim), list);

    int64_t t_sig = harness_now_ms();
    ck_assert_msg(cluster_kill(cl, victim, SIGTERM) == 0,
                  "node %u did not exit 0 on SIGTERM",
                  cluster_node_id(cl, victim));
    int64_t t_exit = harness_now_ms();

    /* The others name new leaders for all of them, at once. */
    int64_t deadline = t_exit + 15000;
    int all = 0;
    while (!all) {
        Kv__StatusResult *sts[NNODES];
        get_statuses(h, sts);
        all = 1;
        for (uint32_t s = 0; s < NSHARDS; s++) {
            int l = leader_in(sts, s);
            if (led_by[s] == victim && (l < 0 || l == victim))
                all = 0;
        }
        free_statuses(sts);
        ck_assert_msg(all || harness_now_ms() < deadline,
                      "the shards of node %u have no new leader",
                      cluster_node_id(cl, victim));
        if (!all)
            harness_sleep_ms(10);
    }
    int64_t took = harness_now_ms() - t_exit;
    fprintf(stderr,
            "node %u exited %" PRId64 " ms after SIGTERM; its shards had "
            "new leaders %" PRId64 " ms after it exited\n",
            cluster_node_id(cl, victim), t_exit - t_sig, took);
    char logpath[512];
    snprintf(logpath, sizeof logpath, "%s/node-%u.log", cluster_dir(cl),
             cluster_node_id(cl, victim));
    ck_assert_msg(!file_contains(logpath, "stopping while still leading"),
                  "node %u exited while still leading a shard",
                  cluster_node_id(cl, victim));
    ck_assert_msg(took <= HANDOFF_LIMIT_MS,
                  "new leaders only %" PRId64 " ms after the exit", took);

    /* A write to one of those shards goes through promptly. */
    kv *fresh = open_handle(10000);
    char k[32];
    size_t kl = key_in_shard("term/", first, NSHARDS, 0, k, sizeof k);
    int64_t t0 = harness_now_ms();
    int rc = kv_put(fresh, k, kl, "after", 5, NULL, NULL);
    fprintf(stderr,
            "a put to shard %u after the hand-off: %s in %" PRId64 " ms\n",
            first, kv_strerror(rc), harness_now_ms() - t0);
    ck_assert_msg(rc == KV_OK, "put after the hand-off: %s (%s)",
                  kv_strerror(rc), kv_errmsg(fresh));
    kv_close(fresh);

    ck_assert_int_eq(cluster_restart_node(cl, victim), 0);
    kv_close(h);
    stop_cluster_cleanly();
}
END_TEST

/* --- session expiry ----------------------------------------------------------
 */

#define SESSION_TTL_S 2

static void cluster_up_sessions(void)
{
    struct cluster_opts o = {.extra = "session_ttl_s = 2\n"};
    stopped_pid = 0;
    int rc = cluster_start_opts(&cl, NNODES, NSHARDS, 3, &o);
    ck_assert_msg(rc == 0, "cluster did not start: %s", kv_strerror(rc));
}

/* The sessions the running nodes expired, summed. */
static uint64_t sessions_expired(kv *h)
{
    Kv__StatusResult *sts[NNODES];
    get_statuses(h, sts);
    uint64_t n = 0;
    for (int i = 0; i < NNODES; i++)
        n += sts[i] ? sts[i]->sessions_expired : 0;
    free_statuses(sts);
    return n;
}

/* Three clients write with session_ttl_s = 2: one once and then goes
 * quiet, one keeps writing, one writes once with a 10 s timeout (its
 * session is kept twice that). The quiet one's session goes on every
 * replica (a copy of its write sent after that is a new write, as
 * docs/replication.md says); the others still answer a copy of their last
 * write with its first outcome. */
START_TEST(an_idle_session_expires_and_the_others_keep_their_outcomes)
{
    kv *h = open_handle(10000);
    const char *k = "ttl/key";
    uint32_t shard = kv_shard_of(k, strlen(k), NSHARDS);
    unsigned char quiet[SESSION_ID_LEN], busy[SESSION_ID_LEN],
        patient[SESSION_ID_LEN];
    for (int j = 0; j < SESSION_ID_LEN; j++) {
        quiet[j] = (unsigned char)(0x10 + j);
        busy[j] = (unsigned char)(0x40 + j);
        patient[j] = (unsigned char)(0x70 + j);
    }
    int code = 0;
    uint64_t vq = 0, vp = 0, vb = 0, again = 0;
    void *bq = NULL, *bp = NULL, *bb = NULL;
    size_t lq = encode_put_within(k, "quiet", quiet, 1, 2001, 500, &bq);
    send_write(h, shard, bq, lq, &code, &vq);
    ck_assert_msg(code == KV_OK, "quiet put: %s", kv_strerror(code));
    size_t lp = encode_put_within(k, "patient", patient, 1, 2002, 10000, &bp);
    send_write(h, shard, bp, lp, &code, &vp);
    ck_assert_msg(code == KV_OK, "patient put: %s", kv_strerror(code));
    ck_assert_uint_eq(sessions_expired(h), 0);

    /* Twice the lifetime, the busy client writing every 250 ms. */
    int64_t until = harness_now_ms() + 2 * SESSION_TTL_S * 1000;
    uint64_t seq = 0;
    size_t lb = 0;
    while (harness_now_ms() < until) {
        free(bb);
        seq++;
        lb = encode_put_within(k, "busy", busy, seq, 3000 + seq, 500, &bb);
        send_write(h, shard, bb, lb, &code, &vb);
        ck_assert_msg(code == KV_OK, "busy put %" PRIu64 ": %s", seq,
                      kv_strerror(code));
        harness_sleep_ms(250);
    }
    send_write(h, shard, bb, lb, &code, &again);
    ck_assert_msg(code == KV_OK && again == vb,
                  "busy's last write again: %s, version %" PRIu64
                  ", the first %" PRIu64,
                  kv_strerror(code), again, vb);
    send_write(h, shard, bp, lp, &code, &again);
    ck_assert_msg(code == KV_OK && again == vp,
                  "patient's write again: %s, version %" PRIu64
                  ", the first %" PRIu64,
                  kv_strerror(code), again, vp);

    /* The quiet session went on the three replicas. */
    int64_t deadline = harness_now_ms() + 10000;
    uint64_t n;
    while ((n = sessions_expired(h)) < NNODES && harness_now_ms() < deadline)
        harness_sleep_ms(100);
    ck_assert_msg(n == NNODES, "%" PRIu64 " sessions expired, want %d", n,
                  NNODES);
    send_write(h, shard, bq, lq, &code, &again);
    ck_assert_msg(code == KV_OK && again > vb,
                  "quiet's write again: %s, version %" PRIu64
                  " (busy's last %" PRIu64 ")",
                  kv_strerror(code), again, vb);
    expect_value(h, k, "quiet", again);
    free(bq);
    free(bp);
    free(bb);
    kv_close(h);
    stop_cluster_cleanly();
}
END_TEST

/* Every node remembers which peers announced session expiry: with one
 * replica down and both others restarted since (so neither has heard from
 * it in this run), leaders still date sessions and expire them. */
/* Whether node I leads a shard whose every member acknowledged its appends:
 * they heard from it, and kept what it announced (its features, stored
 * with the batch before the acknowledgement leaves). Waits at most
 * TIMEOUT_MS. */
static int wait_heard_from(kv *h, int node, int timeout_ms)
{
    int64_t deadline = harness_now_ms() + timeout_ms;
    for (;;) {
        Kv__StatusResult *sts[NNODES];
        get_statuses(h, sts);
        int heard = 0;
        for (size_t k = 0; !heard && sts[node] && k < sts[node]->n_shard_info;
             k++) {
            const Kv__ShardInfo *si = sts[node]->shard_info[k];
            if (!is_leader(si) || si->n_members != NNODES)
                continue;
            heard = 1;
            for (size_t m = 0; m < si->n_members; m++)
                heard &= si->members[m]->match > 0;
        }
        free_statuses(sts);
        if (heard)
            return 1;
        if (harness_now_ms() >= deadline)
            return 0;
        harness_sleep_ms(50);
    }
}

START_TEST(sessions_expire_with_a_replica_down_after_the_others_restarted)
{
    kv *h = open_handle(10000);
    /* The others must know node 3's features before it goes: a leader
     * dates sessions only once every replica announced it can. */
    ck_assert_msg(wait_heard_from(h, 2, 15000),
                  "node 3 led no shard whose members answered it");
    ck_assert_int_eq(cluster_kill(cl, 2, SIGKILL), 0);
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(cluster_kill(cl, i, SIGTERM), 0);
        ck_assert_int_eq(cluster_restart_node(cl, i), 0);
    }
    const char *k = "ttl/down";
    uint32_t shard = kv_shard_of(k, strlen(k), NSHARDS);
    unsigned char cid[SESSION_ID_LEN];
    memset(cid, 0x33, sizeof cid);
    int code = 0;
    uint64_t v = 0;
    void *b = NULL;
    size_t l = encode_put_within(k, "quiet", cid, 1, 5001, 500, &b);
    send_write(h, shard, b, l, &code, &v);
    free(b);
    ck_assert_msg(code == KV_OK, "put: %s", kv_strerror(code));
    int64_t deadline = harness_now_ms() + 15000;
    uint64_t n;
    while ((n = sessions_expired(h)) < 2 && harness_now_ms() < deadline)
        harness_sleep_ms(100);
    ck_assert_msg(n == 2,
                  "%" PRIu64 " sessions expired, want 2 (one per "
                  "running replica)",
                  n);
    ck_assert_int_eq(cluster_restart_node(cl, 2), 0);
    kv_close(h);
    stop_cluster_cleanly();
}
END_TEST

/* A sequence number of 2^63 or more cannot be recorded in a session: a
 * write and a cross-shard transaction carrying one get KV_EINVAL from the
 * leader and write nothing. */
START_TEST(a_sequence_number_of_2_63_or_more_is_refused)
{
    kv *h = open_handle(10000);
    unsigned char cid[SESSION_ID_LEN];
    memset(cid, 0x5a, sizeof cid);
    const uint64_t big = (uint64_t)1 << 63;
    char k[2][32];
    key_in_shard("big/", 0, NSHARDS, 0, k[0], sizeof k[0]);
    key_in_shard("big/", 1, NSHARDS, 0, k[1], sizeof k[1]);
    int code = 0;
    uint64_t v = 0;
    void *b = NULL;
    size_t l = encode_put_within(k[0], "x", cid, big, 4001, 5000, &b);
    send_write(h, 0, b, l, &code, &v);
    free(b);
    ck_assert_msg(code == KV_EINVAL, "put: %s", kv_strerror(code));

    l = harness_encode_txn_puts(k, "x", cid, sizeof cid, big, 4002, 5000, &b);
    send_write(h, 0, b, l, &code, &v);
    free(b);
    ck_assert_msg(code == KV_EINVAL, "transaction: %s", kv_strerror(code));
    for (int i = 0; i < 2; i++) {
        size_t vlen = 0;
        void *val = NULL;
        int rc = kv_get(h, k[i], strlen(k[i]), NULL, &val, &vlen, NULL);
        free(val);
        ck_assert_msg(rc == KV_ENOTFOUND, "%s: %s", k[i], kv_strerror(rc));
    }
    kv_close(h);
    stop_cluster_cleanly();
}
END_TEST

/* --- stale reads ------------------------------------------------------------
 */

START_TEST(a_follower_serves_stale_reads_while_the_leader_is_stopped)
{
    kv *h = open_handle(10000);
    const char *k = "stale/key";
    size_t kl = strlen(k);
    uint32_t shard = kv_shard_of(k, kl, NSHARDS);
    uint64_t ver = 0;
    ck_assert_int_eq(kv_put(h, k, kl, "v1", 2, NULL, &ver), KV_OK);

    /* A follower that has applied the write, and that answers a plain get
     * with a redirect (so it is a follower when the leader stops). */
    void *plain = NULL, *stale = NULL;
    size_t plen = encode_get(k, kl, 0, 3001, &plain);
    size_t slen = encode_get(k, kl, 1, 3002, &stale);
    int l = -1, f = -1;
    for (int attempt = 0; attempt < 10 && f < 0; attempt++) {
        l = wait_leader(h, shard, -1, 10000);
        ck_assert_msg(l >= 0, "shard %u has no leader", shard);
        int cand = (l + 1) % NNODES;
        int64_t deadline = harness_now_ms() + 10000;
        uint64_t applied = 0;
        while (applied < ver && harness_now_ms() < deadline) {
            Kv__StatusResult *st = NULL;
            if (admin_status(h, admin_of(h, cand), STATUS_MS, &st) == KV_OK) {
                const Kv__ShardInfo *si = info_of(st, shard);
                applied = si != NULL ? si->applied : 0;
                admin_status_free(st);
            }
            if (applied < ver)
                harness_sleep_ms(20);
        }
        ck_assert_msg(applied >= ver, "node %u did not apply version %" PRIu64,
                      cluster_node_id(cl, cand), ver);
        Kv__Envelope *e = NULL;
        int rc = admin_raw(h, admin_of(h, cand), plain, plen, 3000, &e);
        if (rc == KV_OK && e->body_case == KV__ENVELOPE__BODY_RESPONSE &&
            e->response->code == KV_ENOTLEADER &&
            e->response->leader_id == cluster_node_id(cl, l))
            f = cand;
        wire_free(e);
    }
    ck_assert_msg(f >= 0, "no stable follower of shard %u", shard);

    pid_t pid = cluster_node_pid(cl, l);
    ck_assert_int_gt(pid, 0);
    stopped_pid = pid;
    ck_assert_int_eq(kill(pid, SIGSTOP), 0);
    fprintf(stderr, "leader node %u of shard %u stopped (SIGSTOP)\n",
            cluster_node_id(cl, l), shard);

    /* The follower answers from its own copy. */
    int64_t t0 = harness_now_ms();
    Kv__Envelope *e = NULL;
    int rc = admin_raw(h, admin_of(h, f), stale, slen, 3000, &e);
    ck_assert_msg(rc == KV_OK, "stale get from node %u: %s",
                  cluster_node_id(cl, f), kv_strerror(rc));
    Kv__Response *r = e->response;
    ck_assert_int_eq(e->body_case, KV__ENVELOPE__BODY_RESPONSE);
    ck_assert_msg(
        r->code == KV_OK && r->result_case == KV__RESPONSE__RESULT_GET,
        "stale get from node %u: code %d", cluster_node_id(cl, f), r->code);
    ck_assert(r->get->value.len == 2 &&
              memcmp(r->get->value.data, "v1", 2) == 0);
    ck_assert_uint_eq(r->get->version, ver);
    wire_free(e);
    fprintf(stderr, "stale get from follower node %u: %" PRId64 " ms\n",
            cluster_node_id(cl, f), harness_now_ms() - t0);

    /* Through libkv: any member may answer a stale get; the stopped one
     * never does, and the call still succeeds. */
    for (int j = 0; j < NNODES; j++) {
        kv_opts o = {.stale = 1, .timeout_ms = 5000};
        void *got = NULL;
        size_t glen = 0;
        uint64_t gver = 0;
        t0 = harness_now_ms();
        rc = kv_get(h, k, kl, &o, &got, &glen, &gver);
        fprintf(stderr, "kv_get stale #%d: %s in %" PRId64 " ms\n", j,
                kv_strerror(rc), harness_now_ms() - t0);
        ck_assert_msg(rc == KV_OK, "kv_get stale: %s (%s)", kv_strerror(rc),
                      kv_errmsg(h));
        int same = glen == 2 && memcmp(got, "v1", 2) == 0;
        kv_free(got);
        ck_assert(same);
        ck_assert_uint_eq(gver, ver);
    }

    ck_assert_int_eq(kill(pid, SIGCONT), 0);
    stopped_pid = 0;
    /* The cluster is whole again: a write and a linearizable read. */
    uint64_t v2 = 0;
    kv_opts o = {.timeout_ms = 15000};
    ck_assert_int_eq(kv_put(h, k, kl, "v2", 2, &o, &v2), KV_OK);
    ck_assert_uint_gt(v2, ver);
    expect_value(h, k, "v2", v2);
    free(plain);
    free(stale);
    kv_close(h);
    stop_cluster_cleanly();
}
END_TEST

/* --- clocks ------------------------------------------------------------------
 */

#define SKEW_S 3 /* node 3's clock runs this far ahead (libfaketime) */

/* Sets NAME to VALUE (NULL: unsets it). */
static void put_env(const char *name, const char *value)
{
    if (value)
        ck_assert_int_eq(setenv(name, value, 1), 0);
    else
        ck_assert_int_eq(unsetenv(name), 0);
}

START_TEST(a_node_whose_clock_runs_ahead_is_reported_by_its_peers)
{
    const int fast = 2;
    kv *h = open_handle(10000);
    glob_t g;
    int grc = glob("/usr/lib/*/faketime/libfaketimeMT.so.1", 0, NULL, &g);
    ck_assert_msg(grc == 0 && g.gl_pathc > 0,
                  "libfaketime is missing (make deps installs it)");
    char asan[512];
    const char *a = getenv("ASAN_OPTIONS");
    /* The preloaded library comes before AddressSanitizer's runtime. */
    snprintf(asan, sizeof asan, "%s%sverify_asan_link_order=0", a ? a : "",
             a ? ":" : "");
    /* The node starts with these in its environment (and only it). */
    const char *names[] = {"LD_PRELOAD", "FAKETIME",
                           "FAKETIME_DONT_FAKE_MONOTONIC", "ASAN_OPTIONS"};
    const char *values[] = {g.gl_pathv[0], "+" KV_STR(SKEW_S) "s", "1", asan};
    char *old[4];
    ck_assert_int_eq(cluster_kill(cl, fast, SIGTERM), 0);
    for (int i = 0; i < 4; i++) {
        const char *v = getenv(names[i]);
        old[i] = v ? strdup(v) : NULL;
        put_env(names[i], values[i]);
    }
    int rc = cluster_restart_node(cl, fast);
    for (int i = 0; i < 4; i++) {
        put_env(names[i], old[i]);
        free(old[i]);
    }
    globfree(&g);
    ck_assert_int_eq(rc, 0);

    /* The two others see its clock ahead, by at most the skew (a batch's
     * delay only hides some of it); it sees no one ahead of itself. */
    uint32_t fid = cluster_node_id(cl, fast);
    int64_t deadline = harness_now_ms() + 30000;
    int seen = 0;
    while (!seen && harness_now_ms() < deadline) {
        Kv__StatusResult *sts[NNODES];
        get_statuses(h, sts);
        seen = 1;
        for (int i = 0; i < NNODES; i++) {
            ck_assert_msg(sts[i] == NULL ||
                              sts[i]->peer_clock_ahead_ms <= SKEW_S * 1000,
                          "node %u reads a clock %" PRIu64 " ms ahead",
                          cluster_node_id(cl, i), sts[i]->peer_clock_ahead_ms);
            if (i == fast)
                seen &= sts[i] != NULL && sts[i]->peer_clock_ahead_ms == 0 &&
                        sts[i]->peer_clock_ahead_node == 0;
            else
                seen &= sts[i] != NULL &&
                        sts[i]->peer_clock_ahead_node == fid &&
                        sts[i]->peer_clock_ahead_ms > (SKEW_S - 1) * 1000;
        }
        free_statuses(sts);
        if (!seen)
            harness_sleep_ms(100);
    }
    ck_assert_msg(seen, "the nodes did not report node %u's clock %d s ahead",
                  fid, SKEW_S);
    /* ... and say so in their logs. */
    for (int i = 0; i < NNODES; i++) {
        char path[512], want[64];
        snprintf(path, sizeof path, "%s/node-%u.log", cluster_dir(cl),
                 cluster_node_id(cl, i));
        snprintf(want, sizeof want, "clock is ahead of this node's\" peer=%u",
                 fid);
        ck_assert_msg(file_contains(path, want) == (i != fast),
                      "node %u's log %s the warning", cluster_node_id(cl, i),
                      i != fast ? "lacks" : "has");
    }
    kv_close(h);
    stop_cluster_cleanly();
}
END_TEST

static Suite *replication_suite(void)
{
    Suite *s = suite_create("replication");
    /* Checked fixtures: each test owns its cluster, in the process that
     * runs it. */
    TCase *tc = tcase_create("replication");
    tcase_add_checked_fixture(tc, cluster_up, cluster_down);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, a_write_is_acknowledged_only_by_a_majority_of_replicas);
    tcase_add_test(tc, killing_a_shard_leader_keeps_every_acknowledged_write);
    tcase_add_test(tc, a_retried_write_of_one_session_is_applied_once);
    tcase_add_test(tc,
                   sigterm_of_a_leader_hands_its_shards_over_before_it_exits);
    tcase_add_test(tc,
                   a_follower_serves_stale_reads_while_the_leader_is_stopped);
    suite_add_tcase(s, tc);

    TCase *clk = tcase_create("clocks");
    tcase_add_checked_fixture(clk, cluster_up_snapshot, cluster_down);
    tcase_set_timeout(clk, 120);
    tcase_add_test(clk, a_node_whose_clock_runs_ahead_is_reported_by_its_peers);
    suite_add_tcase(s, clk);

    TCase *ttl = tcase_create("sessions");
    tcase_add_checked_fixture(ttl, cluster_up_sessions, cluster_down);
    tcase_set_timeout(ttl, 120);
    tcase_add_test(ttl,
                   an_idle_session_expires_and_the_others_keep_their_outcomes);
    tcase_add_test(ttl, a_sequence_number_of_2_63_or_more_is_refused);
    tcase_add_test(
        ttl, sessions_expire_with_a_replica_down_after_the_others_restarted);
    suite_add_tcase(s, ttl);

    TCase *snap = tcase_create("snapshot");
    tcase_add_checked_fixture(snap, cluster_up_snapshot, cluster_down);
    tcase_set_timeout(snap, 480);
    tcase_add_test(
        snap, a_wiped_replica_catches_up_through_a_snapshot_in_bounded_memory);
    tcase_add_test(
        snap, a_replica_putting_a_snapshot_in_place_serves_its_other_shards);
    suite_add_tcase(s, snap);
    return s;
}

int main(void)
{
    if (harness_init() != 0)
        return EXIT_FAILURE;
    SRunner *sr = srunner_create(replication_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return harness_fini(failed);
}
