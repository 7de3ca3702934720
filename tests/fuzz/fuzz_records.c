/*
 * fuzz_records - a node's store holds whatever the input says: the engine
 * and the replica read it.
 *
 * The input is a list of store records, each
 *
 *   TAG(1) SHARD(1) KLEN(1) KEY(KLEN) VLEN(2, big-endian) VALUE(VLEN)
 *
 * stored under TAG + SHARD (u32 BE) + KEY for the tags that carry a shard
 * (A D S I P X H L N Z: engine.h and replica.c describe each), SHARD 0xff
 * meaning the shard of KEY (so data and intents are where reads look),
 * and under TAG + KEY for any other tag (M: metadata). Up to 64 records.
 *
 * Then, on that store, for a one-node cluster of 2 shards:
 *   1. the engine alone: engine_open; for every shard its state, a scan,
 *      the transaction records and participants listed; for every record
 *      read back by kind (engine_get, engine_get_intent, engine_session,
 *      and the two-phase commit steps on its transaction id: prepare,
 *      decide, record, resolve, forget, the tombstone GC); a write, a
 *      transaction and a procedure's effects on its key (staged only:
 *      the node then finds the store as the input left it);
 *   2. the node: replica_open (which checks the metadata, finishes an
 *      interrupted snapshot install and loads each shard's Raft state and
 *      log, whose entries it then applies), then client requests for the
 *      keys read above, a scan per shard, a status, and 60 iterations of
 *      its loop (the recovery sweep adopts transaction records and checks
 *      prepared participants).
 *
 * Damaged records must be refused (KV_ECORRUPT, a node that does not
 * start or stops), never crash anything or be served as data. Findings:
 * crashes, leaks, undefined behaviour, broken Raft invariants, a record
 * served with version 0, answers to requests nobody made or answered twice.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "conf.h"
#include "engine.h"
#include "fuzz.h"
#include "kv.h"
#include "log.h"
#include "shard.h"
#include "store.h"

#define NSHARDS 2
#define MAX_RECORDS 64
#define SHARD_TAGS "ADSIPXHLNZ"

static const char conf_text[] = "cluster = fuzz\n"
                                "shards = 2\n"
                                "replicas = 1\n"
                                "max_key_bytes = 255\n"
                                "max_value_bytes = 65535\n"
                                "max_message_bytes = 262144\n"
                                "request_timeout_ms = 300\n"
                                "txn_timeout_ms = 400\n"
                                "[node 1]\naddress = tcp://127.0.0.1:7101\n";

static struct conf *conf;

struct rec {
    uint8_t tag;
    uint32_t shard;
    const uint8_t *key; /* without tag and shard */
    size_t klen;
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    fuzz_procs();
    conf = fuzz_conf(conf_text);
    return 0;
}

/* Reads the records of the input into STORE; *N of them in RECS. */
static void load(struct store *store, struct fuzz_in *in, struct rec *recs,
                 size_t *n)
{
    struct store_batch *b = store_batch_new();
    unsigned char key[5 + 255];
    if (!b)
        fuzz_fail("harness: out of memory");
    *n = 0;
    while (in->left && *n < MAX_RECORDS) {
        struct rec *r = &recs[*n];
        size_t vlen, got;
        r->tag = fuzz_u8(in);
        uint8_t shard = fuzz_u8(in);
        r->key = fuzz_bytes(in, fuzz_u8(in), &r->klen);
        vlen = fuzz_u16(in);
        const uint8_t *val = fuzz_bytes(in, vlen, &got);
        r->shard = shard == 0xff ? shard_of(r->key, r->klen, NSHARDS) : shard;
        size_t klen = 0;
        key[klen++] = r->tag;
        if (r->tag && strchr(SHARD_TAGS, r->tag)) {
            put_u32(key + 1, r->shard);
            klen += 4;
        }
        memcpy(key + klen, r->key, r->klen);
        klen += r->klen;
        store_batch_put(b, key, klen, got ? val : (const uint8_t *)"", got);
        (*n)++;
    }
    if (store_write(store, b, true) != KV_OK)
        fuzz_fail("harness: the simulated store refused a write");
    store_batch_free(b);
}

static int check_entry(void *arg, const void *key, size_t klen, const void *val,
                       size_t vlen, uint64_t version)
{
    (void)arg;
    (void)key;
    (void)klen;
    (void)val;
    (void)vlen;
    if (version == 0)
        fuzz_fail("engine_scan served a record of version 0");
    return 0;
}

static int check_txn(void *arg, const struct engine_txn_info *t)
{
    size_t *count = arg;
    (*count)++;
    if (!t->txn_id || (t->nparts && !t->parts))
        fuzz_fail("engine_list_txns listed a transaction without its id or "
                  "parts");
    uint64_t sum = 0;
    for (size_t i = 0; i < t->nparts; i++)
        sum += t->parts[i]; /* every part is readable */
    (void)sum;
    return *count > 1000; /* bounded */
}

/* Reads the state back through the engine and applies a few entries. */
static void engine_pass(struct store *store, const struct rec *recs, size_t n)
{
    struct engine *e = NULL;
    if (engine_open(store, NSHARDS, &e) != KV_OK)
        return; /* refused: the node would not start either */
    char err[256];
    engine_check_meta(e, "fuzz", 1, err, sizeof(err));
    for (uint32_t s = 0; s < NSHARDS; s++) {
        uint64_t keys, applied;
        size_t count = 0;
        bool more;
        engine_shard_info(e, s, &keys, &applied);
        struct engine_scan sc = {.shard = s, .limit = 200};
        engine_scan(e, &sc, check_entry, NULL, &more);
        engine_list_txns(e, s, 'X', check_txn, &count);
        engine_list_txns(e, s, 'P', check_txn, &count);
        engine_has_intents(e, s);
        engine_gc_due(e, s, FUZZ_WALL_BASE);
        engine_tombstones(e, s);
    }
    for (size_t i = 0; i < n; i++) {
        const struct rec *r = &recs[i];
        uint32_t s = r->shard;
        uint64_t next = engine_applied(e, s < NSHARDS ? s : 0) + 1;
        if (r->tag == 'D' || r->tag == 'I') {
            void *val = NULL;
            size_t vlen = 0;
            uint64_t ver = 0;
            if (engine_get(e, s, r->key, r->klen, &val, &vlen, &ver) == KV_OK &&
                ver == 0)
                fuzz_fail("engine_get served a record of version 0");
            free(val);
            struct engine_intent in = {0};
            engine_get_intent(e, s, r->key, r->klen, &in);
            free(in.val);
            struct engine_write w = {.op = ENGINE_PUT,
                                     .shard = s,
                                     .key = r->key,
                                     .klen = r->klen,
                                     .val = "v",
                                     .vlen = 1,
                                     .index = next};
            uint64_t version;
            engine_stage(e, &w, &version);
            struct engine_txn_op ops[2] = {
                {.kind = ENGINE_TXN_IF_VERSION,
                 .key = r->key,
                 .klen = r->klen,
                 .version = 1},
                {.kind = ENGINE_TXN_DEL, .key = r->key, .klen = r->klen}};
            struct engine_txn t = {
                .shard = s, .ops = ops, .nops = 2, .index = next + 1};
            uint64_t versions[2];
            size_t failed;
            uint64_t current;
            engine_stage_txn(e, &t, versions, &failed, &current);
            ops[0].kind = ENGINE_TXN_IF_ABSENT;
            struct engine_effect f = {
                .txn = {.shard = s, .ops = ops, .nops = 2, .index = next + 2},
                .reply = "r",
                .rlen = 1};
            void *reply = NULL;
            size_t rlen;
            engine_stage_effect(e, &f, &version, &reply, &rlen);
            free(reply);
        } else if (r->tag == 'S' && r->klen > 0) {
            uint64_t seq;
            int code;
            uint64_t ver;
            void *reply = NULL;
            size_t rlen;
            engine_session_reply(e, s, r->key, r->klen, &seq, &code, &ver,
                                 &reply, &rlen);
            free(reply);
            struct engine_write w = {.op = ENGINE_DEL,
                                     .shard = s,
                                     .key = "k",
                                     .klen = 1,
                                     .index = next,
                                     .client_id = r->key,
                                     .client_id_len = r->klen,
                                     .seq = 1};
            uint64_t version;
            engine_stage(e, &w, &version);
        } else if ((r->tag == 'P' || r->tag == 'X') &&
                   r->klen == ENGINE_TXN_ID_LEN) {
            const unsigned char *id = r->key;
            struct engine_txn_op op = {
                .kind = ENGINE_TXN_PUT, .key = "k", .klen = 1, .val = "v"};
            struct engine_prepare p = {
                .txn = {.shard = s, .ops = &op, .nops = 1, .index = next},
                .txn_id = id,
                .home = 0,
                .deadline_ms = FUZZ_WALL_BASE + 1000,
                .now_ms = FUZZ_WALL_BASE};
            uint64_t version, current;
            size_t failed;
            int state;
            uint32_t parts[2] = {0, 1};
            engine_stage_prepare(e, &p, &version, &failed, &current);
            engine_stage_decide_for(e, s, next + 1, id, ENGINE_TXN_COMMITTED,
                                    FUZZ_WALL_BASE, FUZZ_CLIENT_ID, 16, 9,
                                    &state);
            engine_stage_record_for(e, s, next + 2, id, FUZZ_WALL_BASE, parts,
                                    2, FUZZ_CLIENT_ID, 16, 10, &state);
            engine_stage_resolve(e, s, next + 3, id, (r->klen & 1) != 0,
                                 FUZZ_WALL_BASE);
            engine_stage_forget(e, s, next + 4, id);
            engine_stage_gc(e, s, next + 5, FUZZ_WALL_BASE + 10000000, NULL);
        }
    }
    /* Not committed: the node must find the store as the input left it. */
    engine_close(e);
}

/* Client requests for what the records hold. */
static void ask(struct fuzz_node *n, const struct rec *recs, size_t nrecs)
{
    uint64_t id = 1;
    for (size_t i = 0; i < nrecs && n->rep && !n->stopped; i++) {
        const struct rec *r = &recs[i];
        if ((r->tag != 'D' && r->tag != 'I') || r->klen == 0)
            continue;
        ProtobufCBinaryData key = {.data = (uint8_t *)r->key, .len = r->klen};
        Kv__GetRequest get = KV__GET_REQUEST__INIT;
        get.key = key;
        Kv__Request req = KV__REQUEST__INIT;
        req.id = id++;
        req.op_case = KV__REQUEST__OP_GET;
        req.get = &get;
        fuzz_node_request(n, &req);
        Kv__CallRequest call = KV__CALL_REQUEST__INIT;
        call.name = "incr";
        call.key = key;
        req.id = id++;
        req.op_case = KV__REQUEST__OP_CALL;
        req.call = &call;
        fuzz_node_request(n, &req);
        Kv__PutRequest put = KV__PUT_REQUEST__INIT;
        put.key = key;
        put.if_version = 2;
        req.id = id++;
        req.op_case = KV__REQUEST__OP_PUT;
        req.put = &put;
        fuzz_node_request(n, &req);
        fuzz_node_run(n, 2);
    }
    for (uint32_t s = 0; s < NSHARDS; s++) {
        Kv__ScanRequest scan = KV__SCAN_REQUEST__INIT;
        scan.shard = s;
        Kv__Request req = KV__REQUEST__INIT;
        req.id = id++;
        req.op_case = KV__REQUEST__OP_SCAN;
        req.scan = &scan;
        fuzz_node_request(n, &req);
    }
    Kv__CallRequest sum = KV__CALL_REQUEST__INIT;
    sum.name = "sum_prefix";
    sum.all = true;
    Kv__StatusRequest st = KV__STATUS_REQUEST__INIT;
    Kv__Request req = KV__REQUEST__INIT;
    req.id = id++;
    req.op_case = KV__REQUEST__OP_CALL;
    req.call = &sum;
    fuzz_node_request(n, &req);
    req.id = id++;
    req.op_case = KV__REQUEST__OP_STATUS;
    req.status = &st;
    fuzz_node_request(n, &req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {.p = data, .left = size};
    struct rec recs[MAX_RECORDS];
    size_t nrecs = 0;
    struct fuzz_node n;
    fuzz_node_init(&n, conf, 1);
    load(n.store, &in, recs, &nrecs);
    engine_pass(n.store, recs, nrecs);
    char err[256];
    int rc = fuzz_node_start(&n, err, sizeof(err));
    if (rc == KV_OK) {
        fuzz_node_run(&n, 3);
        ask(&n, recs, nrecs);
        fuzz_node_run(&n, 60);
    } else {
        log_msg(LOG_DEBUG, "the node refuses to start", "error=\"%s: %s\"",
                kv_strerror(rc), err);
    }
    fuzz_node_close(&n);
    return 0;
}
