/*
 * corpus_gen - writes the seed corpus of the fuzz targets.
 *
 *   build/fuzz-replay/corpus_gen tests/fuzz/corpus     (make fuzz-corpus)
 *
 * One file per seed in DIR/TARGET/NAME: valid inputs of every kind each
 * target takes (every request and its variants, every peer message and
 * Raft message type, every stored record kind, every Command, configs
 * good and bad, every procedure) and a few malformed ones. The keys are
 * the ones the harness seeds (fuzz.h), so the seeds reach the code behind
 * the checks. Inputs a fuzzer found (crashes fixed since) are kept in the
 * corpus folders by hand, under names starting with "found-"; this
 * program never touches those. It is deterministic: running it again
 * rewrites the same files.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bytes.h"
#include "engine.h"
#include "fuzz.h"
#include "kv.h"
#include "raft.h"
#include "wire.h"

static const char *root;
static int written;

/* --- output ----------------------------------------------------------------
 */

static void put_file(const char *target, const char *name, const void *buf,
                     size_t len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", root, target);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        fuzz_fail("corpus_gen: cannot create %s", path);
    snprintf(path, sizeof(path), "%s/%s/%s", root, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(buf, 1, len, f) != len) || fclose(f) != 0)
        fuzz_fail("corpus_gen: cannot write %s", path);
    written++;
}

/* A growable byte buffer for the binary formats. */
struct buf {
    unsigned char b[65536];
    size_t n;
};

static void b_u8(struct buf *b, unsigned v)
{
    if (b->n >= sizeof(b->b))
        fuzz_fail("corpus_gen: a seed outgrew its buffer");
    b->b[b->n++] = (unsigned char)v;
}

static void b_u16(struct buf *b, unsigned v)
{
    b_u8(b, (v >> 8) & 0xff);
    b_u8(b, v & 0xff);
}

static void b_mem(struct buf *b, const void *p, size_t n)
{
    if (b->n + n > sizeof(b->b))
        fuzz_fail("corpus_gen: a seed outgrew its buffer");
    memcpy(b->b + b->n, p, n);
    b->n += n;
}

/* --- keys --------------------------------------------------------------------
 */

static char arena[65536]; /* keys live until the program ends */
static size_t arena_used;

/* "{tag}SUFFIX", a key on SHARD of NSHARDS. */
static const char *key(uint32_t shard, uint32_t nshards, const char *suffix)
{
    char tag[16];
    fuzz_tag(shard, nshards, tag);
    char *k = arena + arena_used;
    int n = snprintf(k, sizeof(arena) - arena_used, "{%s}%s", tag, suffix);
    if (n < 0 || (size_t)n + 1 > sizeof(arena) - arena_used)
        fuzz_fail("corpus_gen: out of key space");
    arena_used += (size_t)n + 1;
    return k;
}

static ProtobufCBinaryData bin(const char *s)
{
    return (ProtobufCBinaryData){.data = (uint8_t *)s, .len = strlen(s)};
}

/* --- request -----------------------------------------------------------------
 */

/* The last request encoded with no target (kept for a peer's call). */
static unsigned char kept[4096];
static size_t kept_len;

/* Writes R as a frame to TARGET/NAME, or with no TARGET keeps it. */
static void req_file(const char *target, const char *name, Kv__Request *r)
{
    void *out;
    size_t len;
    if (wire_encode_request(r, &out, &len) != KV_OK)
        fuzz_fail("corpus_gen: out of memory");
    if (target) {
        put_file(target, name, out, len);
    } else {
        if (len > sizeof(kept))
            fuzz_fail("corpus_gen: a call outgrew its buffer");
        memcpy(kept, out, len);
        kept_len = len;
    }
    free(out);
}

static Kv__Request mk_req(uint64_t id)
{
    Kv__Request r = KV__REQUEST__INIT;
    r.id = id;
    return r;
}

static void get_seed(const char *target, const char *name, const char *k,
                     bool stale)
{
    Kv__GetRequest g = KV__GET_REQUEST__INIT;
    g.key = bin(k);
    g.stale = stale;
    Kv__Request r = mk_req(11);
    r.op_case = KV__REQUEST__OP_GET;
    r.get = &g;
    req_file(target, name, &r);
}

static void put_seed(const char *name, const char *k, const char *v,
                     uint64_t if_version, bool if_absent, uint64_t seq,
                     const char *client)
{
    Kv__PutRequest p = KV__PUT_REQUEST__INIT;
    p.key = bin(k);
    p.value = bin(v);
    p.if_version = if_version;
    p.if_absent = if_absent;
    Kv__Request r = mk_req(12);
    r.op_case = KV__REQUEST__OP_PUT;
    r.put = &p;
    r.seq = seq;
    if (client)
        r.client_id = bin(client);
    req_file("request", name, &r);
}

static void del_seed(const char *name, const char *k, uint64_t if_version)
{
    Kv__DeleteRequest d = KV__DELETE_REQUEST__INIT;
    d.key = bin(k);
    d.if_version = if_version;
    Kv__Request r = mk_req(13);
    r.op_case = KV__REQUEST__OP_DEL;
    r.del = &d;
    req_file("request", name, &r);
}

static void scan_seed(const char *name, uint32_t shard, const char *start,
                      const char *end, const char *prefix, const char *after,
                      uint32_t limit, bool stale)
{
    Kv__ScanRequest s = KV__SCAN_REQUEST__INIT;
    s.shard = shard;
    s.start = bin(start);
    s.end = bin(end);
    s.prefix = bin(prefix);
    s.after = bin(after ? after : "");
    s.has_after = after != NULL;
    s.limit = limit;
    s.stale = stale;
    Kv__Request r = mk_req(14);
    r.op_case = KV__REQUEST__OP_SCAN;
    r.scan = &s;
    req_file("request", name, &r);
}

struct op {
    int kind;
    const char *key;
    const char *value;
    uint64_t version;
};

static void txn_seed(const char *target, const char *name, const struct op *ops,
                     size_t n, uint64_t seq)
{
    Kv__TxnOp o[16], *op[16];
    for (size_t i = 0; i < n; i++) {
        kv__txn_op__init(&o[i]);
        o[i].kind = (Kv__TxnOp__Kind)ops[i].kind;
        o[i].key = bin(ops[i].key);
        o[i].value = bin(ops[i].value ? ops[i].value : "");
        o[i].version = ops[i].version;
        op[i] = &o[i];
    }
    Kv__TxnRequest t = KV__TXN_REQUEST__INIT;
    t.ops = op;
    t.n_ops = n;
    Kv__Request r = mk_req(15);
    r.op_case = KV__REQUEST__OP_TXN;
    r.txn = &t;
    r.seq = seq;
    if (seq)
        r.client_id = bin(FUZZ_CLIENT_ID);
    req_file(target, name, &r);
}

static void call_seed(const char *target, const char *name, const char *proc,
                      const char *k, const void *arg, size_t alen, bool all,
                      bool part, uint32_t shard, uint64_t seq)
{
    Kv__CallRequest c = KV__CALL_REQUEST__INIT;
    c.name = (char *)proc;
    c.key = bin(k);
    c.arg.data = (uint8_t *)arg;
    c.arg.len = alen;
    c.all = all;
    c.part = part;
    c.shard = shard;
    Kv__Request r = mk_req(16);
    r.op_case = KV__REQUEST__OP_CALL;
    r.call = &c;
    r.seq = seq;
    if (seq)
        r.client_id = bin(FUZZ_CLIENT_ID);
    req_file(target, name, &r);
}

/* A list argument (kvproc.h): each item a 4-byte BE length and bytes. */
static size_t list(unsigned char *out, const char *const *items, size_t n)
{
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t len = items[i] ? (uint32_t)strlen(items[i]) : UINT32_MAX;
        put_u32(out + off, len);
        off += 4;
        if (items[i]) {
            memcpy(out + off, items[i], len);
            off += len;
        }
    }
    return off;
}

static void step_seed(const char *target, const char *name, int which,
                      uint32_t shard, uint32_t home, const char *k)
{
    unsigned char id[16];
    fuzz_txn_id(shard, false, id);
    Kv__Request r = mk_req(17);
    Kv__TxnOp o = KV__TXN_OP__INIT, *op = &o;
    o.kind = KV__TXN_OP__KIND__PUT;
    o.key = bin(k);
    o.value = bin("two-phase");
    Kv__TxnPrepare p = KV__TXN_PREPARE__INIT;
    Kv__TxnResolve rs = KV__TXN_RESOLVE__INIT;
    Kv__TxnRecord rec = KV__TXN_RECORD__INIT;
    Kv__TxnDecide d = KV__TXN_DECIDE__INIT;
    uint32_t parts[2] = {shard, home};
    switch (which) {
    case 0:
        memcpy(id, "fuzz-txn-newone!", 16);
        p.txn_id = (ProtobufCBinaryData){.data = id, .len = 16};
        p.shard = shard;
        p.home = home;
        p.deadline_ms = FUZZ_WALL_BASE + 100000;
        p.ops = &op;
        p.n_ops = 1;
        r.op_case = KV__REQUEST__OP_TXN_PREPARE;
        r.txn_prepare = &p;
        break;
    case 1:
    case 2:
        rs.txn_id = (ProtobufCBinaryData){.data = id, .len = 16};
        rs.shard = shard;
        rs.commit = which == 1;
        r.op_case = KV__REQUEST__OP_TXN_RESOLVE;
        r.txn_resolve = &rs;
        break;
    case 3:
        memcpy(id, "fuzz-txn-record!", 16);
        rec.txn_id = (ProtobufCBinaryData){.data = id, .len = 16};
        rec.shard = home;
        rec.deadline_ms = FUZZ_WALL_BASE + 100000;
        rec.parts = parts;
        rec.n_parts = 2;
        r.op_case = KV__REQUEST__OP_TXN_RECORD;
        r.txn_record = &rec;
        break;
    default: /* 4..7: decide with want 0..3 */
        d.txn_id = (ProtobufCBinaryData){.data = id, .len = 16};
        d.shard = home;
        d.want = (uint32_t)(which - 4);
        r.op_case = KV__REQUEST__OP_TXN_DECIDE;
        r.txn_decide = &d;
        break;
    }
    req_file(target, name, &r);
}

/* Copies the kept request into BUF (CAP bytes) as frame F. */
static void keep_frame(ProtobufCBinaryData *f, unsigned char *buf, size_t cap)
{
    if (kept_len > cap)
        fuzz_fail("corpus_gen: a batched request outgrew its buffer");
    memcpy(buf, kept, kept_len);
    *f = (ProtobufCBinaryData){.len = kept_len, .data = buf};
}

/* A pipelined client's Batch frame: a get of K, a status request, a frame
 * that does not decode, and a response (not a request). */
static void batch_seed(const char *k)
{
    unsigned char got[4][256];
    ProtobufCBinaryData frames[4];
    get_seed(NULL, NULL, k, false);
    keep_frame(&frames[0], got[0], sizeof(got[0]));
    Kv__StatusRequest st = KV__STATUS_REQUEST__INIT;
    Kv__Request r = mk_req(19);
    r.op_case = KV__REQUEST__OP_STATUS;
    r.status = &st;
    req_file(NULL, NULL, &r);
    keep_frame(&frames[1], got[1], sizeof(got[1]));
    memcpy(got[2], "\x0a\xff", 2);
    frames[2] = (ProtobufCBinaryData){.len = 2, .data = got[2]};
    Kv__Response resp = KV__RESPONSE__INIT;
    resp.id = 20;
    void *out;
    size_t len;
    if (wire_encode_response(&resp, &out, &len) != KV_OK ||
        len > sizeof(got[3]))
        fuzz_fail("corpus_gen: out of memory");
    memcpy(got[3], out, len);
    free(out);
    frames[3] = (ProtobufCBinaryData){.len = len, .data = got[3]};
    if (wire_encode_batch(frames, 4, &out, &len) != KV_OK)
        fuzz_fail("corpus_gen: out of memory");
    put_file("request", "batch", out, len);
    free(out);
}

static void request_seeds(void)
{
    const uint32_t S = 4; /* node 1 leads shards 0 and 2 */
    get_seed("request", "get-local", key(0, S, "s"), false);
    get_seed("request", "get-stale", key(2, S, "n"), true);
    get_seed("request", "get-remote-shard", key(1, S, "s"), false);
    get_seed("request", "get-locked-key", key(0, S, "l"), false);
    get_seed("request", "get-missing", key(0, S, "zz"), false);
    get_seed("request", "get-empty-key", "", false);
    get_seed("request", "get-key-too-long",
             "0123456789012345678901234567890123456789"
             "0123456789012345678901234",
             false);
    put_seed("put-new", key(0, S, "a"), "v", 0, false, FUZZ_CLIENT_SEQ + 1,
             FUZZ_CLIENT_ID);
    put_seed("put-retry-of-recorded-write", key(0, S, "a"), "v", 0, false,
             FUZZ_CLIENT_SEQ, FUZZ_CLIENT_ID);
    put_seed("put-if-version-holds", key(0, S, "s"), "w", 4, false, 0, NULL);
    put_seed("put-if-version-fails", key(0, S, "s"), "w", 99, false, 0, NULL);
    put_seed("put-if-absent-fails", key(2, S, "n"), "w", 0, true, 0, NULL);
    put_seed("put-both-conditions", key(0, S, "n"), "w", 3, true, 0, NULL);
    char big[300];
    memset(big, 'b', 257);
    big[257] = '\0';
    put_seed("put-value-too-big", key(0, S, "a"), big, 0, false, 0, NULL);
    put_seed("put-locked-key", key(0, S, "l"), "w", 0, false, 0, NULL);
    put_seed("put-remote-shard", key(1, S, "x"), "w", 0, false, 0, NULL);
    put_seed("put-seq-without-client", key(0, S, "a"), "w", 0, false, 9, NULL);
    del_seed("del", key(0, S, "s"), 0);
    del_seed("del-missing", key(0, S, "zz"), 0);
    del_seed("del-if-version", key(2, S, "n"), 3);
    scan_seed("scan-shard", 0, "", "", "", NULL, 0, false);
    scan_seed("scan-prefix", 2, "", "", key(2, S, ""), NULL, 0, false);
    scan_seed("scan-after-limit", 0, "", "", "", key(0, S, "l"), 1, false);
    scan_seed("scan-range", 0, key(0, S, "a"), key(0, S, "p"), "", NULL, 2,
              false);
    scan_seed("scan-stale", 2, "", "", "", NULL, 0, true);
    scan_seed("scan-remote-shard", 1, "", "", "", NULL, 0, false);
    scan_seed("scan-no-such-shard", 9, "", "", "", NULL, 0, false);
    Kv__StatusRequest st = KV__STATUS_REQUEST__INIT;
    Kv__Request r = mk_req(18);
    r.op_case = KV__REQUEST__OP_STATUS;
    r.status = &st;
    req_file("request", "status", &r);
    batch_seed(key(0, S, "a"));

    const char *a0 = key(0, S, "a"), *n0 = key(0, S, "n"), *s0 = key(0, S, "s"),
               *z0 = key(0, S, "zz"), *l0 = key(0, S, "l"),
               *b1 = key(1, S, "b"), *b2 = key(2, S, "b");
    struct op single[] = {{KV__TXN_OP__KIND__IF_VERSION, n0, NULL, 3},
                          {KV__TXN_OP__KIND__PUT, a0, "x", 0},
                          {KV__TXN_OP__KIND__DEL, s0, NULL, 0},
                          {KV__TXN_OP__KIND__IF_ABSENT, z0, NULL, 0}};
    txn_seed("request", "txn-single-shard", single, 4, 0);
    struct op conflict[] = {{KV__TXN_OP__KIND__IF_VERSION, n0, NULL, 7},
                            {KV__TXN_OP__KIND__PUT, a0, "x", 0}};
    txn_seed("request", "txn-condition-fails", conflict, 2, 0);
    struct op local2[] = {{KV__TXN_OP__KIND__PUT, a0, "x", 0},
                          {KV__TXN_OP__KIND__PUT, b2, "y", 0},
                          {KV__TXN_OP__KIND__IF_VERSION, n0, NULL, 3}};
    txn_seed("request", "txn-two-local-shards", local2, 3, FUZZ_CLIENT_SEQ + 1);
    txn_seed("request", "txn-two-local-shards-retry", local2, 3,
             FUZZ_CLIENT_SEQ);
    struct op remote[] = {{KV__TXN_OP__KIND__PUT, a0, "x", 0},
                          {KV__TXN_OP__KIND__PUT, b1, "y", 0}};
    txn_seed("request", "txn-with-a-remote-shard", remote, 2,
             FUZZ_CLIENT_SEQ + 1);
    struct op home_remote[] = {{KV__TXN_OP__KIND__PUT, b1, "y", 0},
                               {KV__TXN_OP__KIND__PUT, a0, "x", 0}};
    txn_seed("request", "txn-home-elsewhere", home_remote, 2, 0);
    struct op locked[] = {{KV__TXN_OP__KIND__PUT, l0, "x", 0},
                          {KV__TXN_OP__KIND__PUT, b2, "y", 0}};
    txn_seed("request", "txn-locked-key", locked, 2, 0);
    txn_seed("request", "txn-empty", NULL, 0, 0);
    struct op bad_kind[] = {{7, a0, "x", 0}};
    txn_seed("request", "txn-unknown-kind", bad_kind, 1, 0);
    struct op zero_ver[] = {{KV__TXN_OP__KIND__IF_VERSION, a0, NULL, 0}};
    txn_seed("request", "txn-if-version-zero", zero_ver, 1, 0);
    struct op many[9];
    for (int i = 0; i < 9; i++)
        many[i] = (struct op){KV__TXN_OP__KIND__PUT, a0, "x", 0};
    txn_seed("request", "txn-too-many-ops", many, 9, 0);
    struct op bulky[] = {{KV__TXN_OP__KIND__PUT, a0, big, 0},
                         {KV__TXN_OP__KIND__PUT, b2, "y", 0}};
    txn_seed("request", "txn-value-too-big", bulky, 2, 0);

    unsigned char arg[256];
    const char *cas_ok[] = {"hello", "bye"};
    const char *cas_absent[] = {NULL, "new"};
    const char *mget[] = {key(0, S, "s"), key(0, S, "zz")};
    const char *mget_far[] = {key(1, S, "s")};
    const char *move[] = {key(0, S, "a"), "2"};
    call_seed("request", "call-incr", "incr", key(0, S, "n"), "2", 1, false,
              false, 0, FUZZ_CLIENT_SEQ + 1);
    call_seed("request", "call-incr-retry", "incr", key(0, S, "n"), "2", 1,
              false, false, 0, FUZZ_CLIENT_SEQ);
    call_seed("request", "call-incr-not-a-number", "incr", key(0, S, "s"), NULL,
              0, false, false, 0, 0);
    call_seed("request", "call-incr-bad-arg", "incr", key(0, S, "n"), "x", 1,
              false, false, 0, 0);
    call_seed("request", "call-append", "append", key(2, S, "s"), "!", 1, false,
              false, 0, 0);
    call_seed("request", "call-cas", "cas", key(0, S, "s"), arg,
              list(arg, cas_ok, 2), false, false, 0, 0);
    call_seed("request", "call-cas-absent", "cas", key(0, S, "q"), arg,
              list(arg, cas_absent, 2), false, false, 0, 0);
    call_seed("request", "call-mget", "mget", key(0, S, "n"), arg,
              list(arg, mget, 2), false, false, 0, 0);
    call_seed("request", "call-mget-other-shard", "mget", key(0, S, "n"), arg,
              list(arg, mget_far, 1), false, false, 0, 0);
    call_seed("request", "call-move", "move", key(0, S, "n"), arg,
              list(arg, move, 2), false, false, 0, 0);
    call_seed("request", "call-ratelimit", "ratelimit", key(0, S, "r"),
              "10 5 1700000000000 2", 20, false, false, 0, 0);
    call_seed("request", "call-sum-prefix", "sum_prefix", key(0, S, "x"),
              key(0, S, ""), strlen(key(0, S, "")), false, false, 0, 0);
    call_seed("request", "call-sum-prefix-all", "sum_prefix", "", NULL, 0, true,
              false, 0, 0);
    call_seed("request", "call-mget-all", "mget", "", NULL, 0, true, false, 0,
              0);
    call_seed("request", "call-incr-all", "incr", "", NULL, 0, true, false, 0,
              0);
    call_seed("request", "call-part-from-client", "mget", "", NULL, 0, false,
              true, 0, 0);
    call_seed("request", "call-locked-key", "incr", key(0, S, "l"), NULL, 0,
              false, false, 0, 0);
    call_seed("request", "call-remote-shard", "incr", key(1, S, "n"), NULL, 0,
              false, false, 0, 0);
    call_seed("request", "call-unknown", "no_such_proc", key(0, S, "n"), NULL,
              0, false, false, 0, 0);
    call_seed("request", "call-no-name", "", key(0, S, "n"), NULL, 0, false,
              false, 0, 0);
    for (int w = 0; w < 8; w += 3) { /* prepare, resolve abort, decide ask */
        char name[40];
        snprintf(name, sizeof(name), "node-only-step-%d", w);
        step_seed("request", name, w, 0, 0, key(0, S, "a"));
    }

    /* Malformed frames. */
    put_file("request", "empty", "", 0);
    Kv__PutRequest p = KV__PUT_REQUEST__INIT;
    p.key = bin("k");
    p.value = bin("v");
    r = mk_req(19);
    r.op_case = KV__REQUEST__OP_PUT;
    r.put = &p;
    void *out;
    size_t len;
    if (wire_encode_request(&r, &out, &len) != KV_OK)
        fuzz_fail("corpus_gen: out of memory");
    put_file("request", "truncated", out, len - 2);
    ((unsigned char *)out)[1] = 2; /* the version field's value */
    put_file("request", "version-2", out, len);
    free(out);
    r = mk_req(20); /* no operation */
    req_file("request", "no-operation", &r);
    Kv__Envelope env = KV__ENVELOPE__INIT;
    env.version = WIRE_VERSION; /* no body */
    len = kv__envelope__get_packed_size(&env);
    unsigned char tiny[16];
    kv__envelope__pack(&env, tiny);
    put_file("request", "no-body", tiny, len);
    Kv__Response resp = KV__RESPONSE__INIT;
    resp.id = 3;
    if (wire_encode_response(&resp, &out, &len) != KV_OK)
        fuzz_fail("corpus_gen: out of memory");
    put_file("request", "a-response", out, len);
    free(out);
}

/* --- peer --------------------------------------------------------------------
 */

static void peer_file(const char *name, Kv__PeerBatch *b)
{
    void *out;
    size_t len;
    if (!b->cluster || !b->cluster[0])
        b->cluster = "fuzz";
    if (!b->from)
        b->from = 2;
    if (!b->boot_id)
        b->boot_id = FUZZ_PEER_BOOT(b->from);
    if (wire_encode_peer(b, &out, &len) != KV_OK)
        fuzz_fail("corpus_gen: out of memory");
    put_file("peer", name, out, len);
    free(out);
}

static Kv__RaftMessage raft_msg(uint32_t shard, uint32_t type, uint32_t from,
                                uint64_t term)
{
    Kv__RaftMessage m = KV__RAFT_MESSAGE__INIT;
    m.shard = shard;
    m.type = type;
    m.from = from;
    m.to = 1;
    m.term = term;
    return m;
}

static void one_msg(const char *name, Kv__RaftMessage *m)
{
    Kv__PeerBatch b = KV__PEER_BATCH__INIT;
    b.from = m->from;
    b.msgs = &m;
    b.n_msgs = 1;
    peer_file(name, &b);
}

/* A Command packed into BUF (for log entries). */
static size_t pack_command(const Kv__Command *c, unsigned char *buf)
{
    size_t n = kv__command__get_packed_size(c);
    if (n > 4096)
        fuzz_fail("corpus_gen: a command outgrew its buffer");
    kv__command__pack(c, buf);
    return n;
}

/* Every kind of Command, for shard SHARD of NSHARDS (keys from SLOT);
 * returns how many were written into CMDS/LENS. */
static size_t commands(uint32_t shard, uint32_t nshards,
                       unsigned char cmds[][4096], size_t *lens,
                       const char **names)
{
    size_t n = 0;
    const char *a = key(shard, nshards, "a");
    const char *nk = key(shard, nshards, "n");
    const char *lk = key(shard, nshards, "l");
    Kv__Command c = KV__COMMAND__INIT;
    Kv__PutRequest put = KV__PUT_REQUEST__INIT;
    put.key = bin(a);
    put.value = bin("from-the-log");
    c.op_case = KV__COMMAND__OP_PUT;
    c.put = &put;
    c.client_id = bin(FUZZ_CLIENT_ID);
    c.seq = FUZZ_CLIENT_SEQ + 1;
    c.session_until_ms = FUZZ_WALL_BASE + 1000; /* gone by session-gc */
    names[n] = "put";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    c.session_until_ms = 0;
    put.if_version = 3;
    put.key = bin(nk);
    c.seq = 0;
    c.client_id = bin("");
    names[n] = "put-if-version";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    put.if_version = 0;
    put.key = bin(lk);
    names[n] = "put-locked";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    Kv__DeleteRequest del = KV__DELETE_REQUEST__INIT;
    del.key = bin(nk);
    c.op_case = KV__COMMAND__OP_DEL;
    c.del = &del;
    names[n] = "del";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    Kv__TxnOp o[3], *op[3];
    for (int i = 0; i < 3; i++) {
        kv__txn_op__init(&o[i]);
        op[i] = &o[i];
    }
    o[0].kind = KV__TXN_OP__KIND__IF_VERSION;
    o[0].key = bin(nk);
    o[0].version = 3;
    o[1].kind = KV__TXN_OP__KIND__PUT;
    o[1].key = bin(a);
    o[1].value = bin("t");
    o[2].kind = KV__TXN_OP__KIND__IF_ABSENT;
    o[2].key = bin(a);
    Kv__TxnRequest t = KV__TXN_REQUEST__INIT;
    t.ops = op;
    t.n_ops = 2;
    c.op_case = KV__COMMAND__OP_TXN;
    c.txn = &t;
    names[n] = "txn";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    unsigned char id[16];
    memcpy(id, "fuzz-txn-fromlog", 16);
    Kv__TxnPrepare p = KV__TXN_PREPARE__INIT;
    p.txn_id = (ProtobufCBinaryData){.data = id, .len = 16};
    p.shard = shard;
    p.home = shard;
    p.deadline_ms = FUZZ_WALL_BASE + 100000;
    p.now_ms = FUZZ_WALL_BASE;
    p.ops = op;
    p.n_ops = 3;
    c.op_case = KV__COMMAND__OP_TXN_PREPARE;
    c.txn_prepare = &p;
    names[n] = "txn-prepare";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    unsigned char held[16];
    fuzz_txn_id(shard, false, held);
    Kv__TxnResolve rs = KV__TXN_RESOLVE__INIT;
    rs.txn_id = (ProtobufCBinaryData){.data = held, .len = 16};
    rs.shard = shard;
    rs.commit = true;
    rs.now_ms = FUZZ_WALL_BASE;
    c.op_case = KV__COMMAND__OP_TXN_RESOLVE;
    c.txn_resolve = &rs;
    names[n] = "txn-resolve-commit";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    rs.commit = false;
    names[n] = "txn-resolve-abort";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    uint32_t parts[2] = {0, 1};
    Kv__TxnRecord rec = KV__TXN_RECORD__INIT;
    rec.txn_id = (ProtobufCBinaryData){.data = id, .len = 16};
    rec.shard = shard;
    rec.deadline_ms = FUZZ_WALL_BASE + 100000;
    rec.parts = parts;
    rec.n_parts = 2;
    c.op_case = KV__COMMAND__OP_TXN_RECORD;
    c.txn_record = &rec;
    c.client_id = bin(FUZZ_CLIENT_ID);
    c.seq = FUZZ_CLIENT_SEQ + 2;
    names[n] = "txn-record";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    c.seq = 0;
    c.client_id = bin("");
    Kv__TxnDecide d = KV__TXN_DECIDE__INIT;
    d.txn_id = (ProtobufCBinaryData){.data = held, .len = 16};
    d.shard = shard;
    d.now_ms = FUZZ_WALL_BASE;
    c.op_case = KV__COMMAND__OP_TXN_DECIDE;
    c.txn_decide = &d;
    static const char *const decides[] = {"txn-decide-ask", "txn-decide-commit",
                                          "txn-decide-abort",
                                          "txn-decide-forget"};
    for (uint32_t w = 0; w < 4; w++) {
        d.want = w;
        names[n] = decides[w];
        lens[n] = pack_command(&c, cmds[n]);
        n++;
    }
    Kv__TxnGc gc = KV__TXN_GC__INIT;
    gc.now_ms = FUZZ_WALL_BASE + 10000000;
    c.op_case = KV__COMMAND__OP_TXN_GC;
    c.txn_gc = &gc;
    names[n] = "txn-gc";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    Kv__SessionGc sg = KV__SESSION_GC__INIT;
    sg.now_ms = FUZZ_WALL_BASE + 10000000;
    sg.ttl_ms = 3600000;
    c.op_case = KV__COMMAND__OP_SESSION_GC;
    c.session_gc = &sg;
    names[n] = "session-gc";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    sg.after = bin(FUZZ_CLIENT_ID);
    names[n] = "session-gc-after";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    Kv__ProcEffect fx = KV__PROC_EFFECT__INIT;
    o[0].kind = KV__TXN_OP__KIND__IF_VERSION;
    o[0].version = 3;
    o[1].kind = KV__TXN_OP__KIND__PUT;
    o[1].key = bin(nk);
    o[1].value = bin("6");
    fx.ops = op;
    fx.n_ops = 2;
    fx.reply = bin("6");
    c.op_case = KV__COMMAND__OP_EFFECT;
    c.effect = &fx;
    c.client_id = bin(FUZZ_CLIENT_ID);
    c.seq = FUZZ_CLIENT_SEQ + 3;
    names[n] = "effect";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    fx.after_index = 10;
    names[n] = "effect-after-index";
    lens[n] = pack_command(&c, cmds[n]);
    n++;
    return n;
}

static void peer_seeds(void)
{
    const uint32_t S =
        2; /* node 1 leads shard 0 (term 2), follows node 2 on 1 */
    Kv__RaftMessage m;
    /* Leader side (shard 0): answers from the followers. */
    m = raft_msg(0, RAFT_MSG_APPEND_RESP, 2, 2);
    m.index = 11;
    one_msg("append-resp", &m);
    m = raft_msg(0, RAFT_MSG_APPEND_RESP, 3, 2);
    m.index = 11;
    m.reject = true;
    m.reject_hint = 5;
    m.log_term = 1;
    one_msg("append-resp-reject", &m);
    m = raft_msg(0, RAFT_MSG_HEARTBEAT_RESP, 3, 2);
    m.context = 1;
    one_msg("heartbeat-resp", &m);
    m = raft_msg(0, RAFT_MSG_VOTE, 3, 3);
    m.index = 11;
    m.log_term = 2;
    one_msg("vote-higher-term", &m);
    m = raft_msg(0, RAFT_MSG_PREVOTE, 3, 3);
    m.index = 11;
    m.log_term = 2;
    one_msg("prevote", &m);
    m = raft_msg(0, RAFT_MSG_APPEND, 3, 3);
    m.index = 11;
    m.log_term = 2;
    one_msg("append-from-new-leader", &m);
    m = raft_msg(0, RAFT_MSG_TIMEOUT_NOW, 2, 2);
    one_msg("timeout-now", &m);
    /* Follower side (shard 1): entries from node 2 carrying every kind of
     * Command, committed at once. */
    static unsigned char cmds[24][4096];
    size_t lens[24];
    const char *names[24];
    size_t n = commands(1, S, cmds, lens, names);
    for (size_t i = 0; i < n; i++) {
        Kv__LogEntry le = KV__LOG_ENTRY__INIT, *lp = &le;
        le.term = 2;
        le.index = 11;
        le.data.data = cmds[i];
        le.data.len = lens[i];
        m = raft_msg(1, RAFT_MSG_APPEND, 2, 2);
        m.index = 10;
        m.log_term = 1;
        m.commit = 11;
        m.entries = &lp;
        m.n_entries = 1;
        char name[64];
        snprintf(name, sizeof(name), "append-%s", names[i]);
        one_msg(name, &m);
    }
    m = raft_msg(1, RAFT_MSG_HEARTBEAT, 2, 2);
    m.commit = 10;
    m.context = 7;
    one_msg("heartbeat", &m);
    m = raft_msg(1, RAFT_MSG_APPEND, 2, 2);
    m.index = 15; /* a gap: rejected with a hint */
    m.log_term = 2;
    one_msg("append-gap", &m);
    m = raft_msg(1, RAFT_MSG_SNAPSHOT, 2, 2);
    m.index = 20;
    m.log_term = 2;
    one_msg("snapshot-type-from-peer", &m);
    /* Two Raft messages for two shards in one batch, and noise. */
    Kv__RaftMessage two[2] = {raft_msg(0, RAFT_MSG_APPEND_RESP, 2, 2),
                              raft_msg(1, RAFT_MSG_HEARTBEAT, 2, 2)};
    two[0].index = 11;
    two[1].commit = 10;
    Kv__RaftMessage *tp[2] = {&two[0], &two[1]};
    Kv__PeerBatch b = KV__PEER_BATCH__INIT;
    b.msgs = tp;
    b.n_msgs = 2;
    peer_file("two-shards", &b);
    b.cluster = "other";
    peer_file("wrong-cluster", &b);
    b.cluster = NULL;
    b.from = 9;
    peer_file("unknown-node", &b);
    b.from = 1;
    peer_file("from-itself", &b);

    /* A snapshot of shard 1 in two chunks: data, a session, an intent,
     * its participant record and its transaction record. */
    char sk[5][64];
    size_t sklen[5];
    unsigned char sv[5][64];
    size_t svlen[5];
    const char *d = key(1, S, "snap");
    sk[0][0] = 'D';
    put_u32((unsigned char *)sk[0] + 1, 1);
    memcpy(sk[0] + 5, d, strlen(d));
    sklen[0] = 5 + strlen(d);
    sv[0][0] = 1;
    put_u64(sv[0] + 1, 18);
    memcpy(sv[0] + 9, "snapped", 7);
    svlen[0] = 16;
    sk[1][0] = 'S';
    put_u32((unsigned char *)sk[1] + 1, 1);
    memcpy(sk[1] + 5, FUZZ_CLIENT_ID, 16);
    sklen[1] = 21;
    put_u64(sv[1], 9);
    put_u32(sv[1] + 8, 0);
    put_u64(sv[1] + 12, 18);
    svlen[1] = 20;
    unsigned char tid[16];
    memcpy(tid, "fuzz-txn-snapped", 16);
    const char *ik = key(1, S, "i");
    sk[2][0] = 'I';
    put_u32((unsigned char *)sk[2] + 1, 1);
    memcpy(sk[2] + 5, ik, strlen(ik));
    sklen[2] = 5 + strlen(ik);
    memcpy(sv[2], tid, 16);
    sv[2][16] = ENGINE_TXN_PUT;
    put_u64(sv[2] + 17, 19);
    put_u32(sv[2] + 25, 1);
    put_u64(sv[2] + 29, FUZZ_WALL_BASE + 1000);
    memcpy(sv[2] + 37, "iv", 2);
    svlen[2] = 39;
    sk[3][0] = 'P';
    put_u32((unsigned char *)sk[3] + 1, 1);
    memcpy(sk[3] + 5, tid, 16);
    sklen[3] = 21;
    put_u32(sv[3], 1);
    put_u64(sv[3] + 4, FUZZ_WALL_BASE + 1000);
    put_u64(sv[3] + 12, 19);
    put_u32(sv[3] + 20, 1);
    put_u32(sv[3] + 24, (uint32_t)strlen(ik));
    memcpy(sv[3] + 28, ik, strlen(ik));
    svlen[3] = 28 + strlen(ik);
    sk[4][0] = 'X';
    put_u32((unsigned char *)sk[4] + 1, 1);
    memcpy(sk[4] + 5, tid, 16);
    sklen[4] = 21;
    sv[4][0] = ENGINE_TXN_PENDING;
    put_u64(sv[4] + 1, FUZZ_WALL_BASE + 1000);
    put_u32(sv[4] + 9, 1);
    put_u32(sv[4] + 13, 1);
    svlen[4] = 17;
    Kv__Entry e[5], *ep[5];
    for (int i = 0; i < 5; i++) {
        kv__entry__init(&e[i]);
        e[i].key =
            (ProtobufCBinaryData){.data = (uint8_t *)sk[i], .len = sklen[i]};
        e[i].value = (ProtobufCBinaryData){.data = sv[i], .len = svlen[i]};
        ep[i] = &e[i];
    }
    Kv__SnapshotChunk c0 = KV__SNAPSHOT_CHUNK__INIT,
                      c1 = KV__SNAPSHOT_CHUNK__INIT;
    c0.shard = c1.shard = 1;
    c0.index = c1.index = 20;
    c0.term = c1.term = 2;
    c0.leader_term = c1.leader_term = 2;
    c0.to = c1.to = 1;
    c0.seq = 0;
    c0.records = ep;
    c0.n_records = 2;
    c1.seq = 1;
    c1.records = ep + 2;
    c1.n_records = 3;
    c1.last = true;
    Kv__SnapshotChunk *cp[2] = {&c0, &c1};
    Kv__PeerBatch sb = KV__PEER_BATCH__INIT;
    sb.chunks = cp;
    sb.n_chunks = 2;
    peer_file("snapshot-two-chunks", &sb);
    sb.n_chunks = 1;
    peer_file("snapshot-first-chunk", &sb);
    c0.last = true;
    c0.records = ep;
    c0.n_records = 5;
    peer_file("snapshot-one-chunk", &sb);
    /* At the top of the index space: its Raft log has no room left, and
     * compaction once divided by zero there (found by fuzz_records). */
    c0.index = UINT64_MAX - 1;
    peer_file("snapshot-at-the-last-index", &sb);
    c0.index = 20;
    sk[0][0] = 'A'; /* not a record a snapshot carries */
    peer_file("snapshot-bad-record", &sb);
    Kv__SnapshotAck ack = KV__SNAPSHOT_ACK__INIT, *ap = &ack;
    ack.shard = 0;
    ack.index = 11;
    ack.seq = 0;
    ack.ok = true;
    Kv__PeerBatch ab = KV__PEER_BATCH__INIT;
    ab.from = 3;
    ab.acks = &ap;
    ab.n_acks = 1;
    peer_file("snapshot-ack", &ab);

    /* Internal calls from node 2 (the two-phase commit steps on shard 0,
     * which node 1 leads; a part of a call on every shard) and answers. */
    static const char *const steps[] = {
        "call-txn-prepare",       "call-txn-resolve-commit",
        "call-txn-resolve-abort", "call-txn-record",
        "call-txn-decide-ask",    "call-txn-decide-commit",
        "call-txn-decide-abort",  "call-txn-decide-forget"};
    for (int w = 0; w < 8; w++) {
        step_seed(NULL, NULL, w, 0, 0, key(0, S, "a"));
        ProtobufCBinaryData one = {.data = kept, .len = kept_len};
        Kv__PeerBatch cb = KV__PEER_BATCH__INIT;
        cb.calls = &one;
        cb.n_calls = 1;
        peer_file(steps[w], &cb);
    }
    Kv__CallRequest call = KV__CALL_REQUEST__INIT;
    call.name = "sum_prefix";
    call.part = true;
    call.shard = 0;
    Kv__Request cr = mk_req(0x8000000000000001ull);
    cr.op_case = KV__REQUEST__OP_CALL;
    cr.call = &call;
    void *out;
    size_t len;
    if (wire_encode_request(&cr, &out, &len) != KV_OK)
        fuzz_fail("corpus_gen: out of memory");
    ProtobufCBinaryData one = {.data = out, .len = len};
    Kv__PeerBatch cb = KV__PEER_BATCH__INIT;
    cb.calls = &one;
    cb.n_calls = 1;
    peer_file("call-part-sum-prefix", &cb);
    free(out);
    Kv__TxnState ts = KV__TXN_STATE__INIT;
    ts.state = ENGINE_TXN_COMMITTED;
    Kv__Response resp = KV__RESPONSE__INIT;
    resp.id = 0xc000000000000001ull; /* a parked read's call */
    resp.result_case = KV__RESPONSE__RESULT_TXN_STATE;
    resp.txn_state = &ts;
    if (wire_encode_response(&resp, &out, &len) != KV_OK)
        fuzz_fail("corpus_gen: out of memory");
    one = (ProtobufCBinaryData){.data = out, .len = len};
    Kv__PeerBatch rb = KV__PEER_BATCH__INIT;
    rb.replies = &one;
    rb.n_replies = 1;
    peer_file("reply-txn-state", &rb);
    free(out);
    /* Plugin hashes: one that differs from this build's. */
    Kv__PluginHash ph = KV__PLUGIN_HASH__INIT, *pp = &ph;
    unsigned char hash[32];
    memset(hash, 0xab, sizeof(hash));
    ph.name = "move.so";
    ph.hash = (ProtobufCBinaryData){.data = hash, .len = 32};
    Kv__PeerBatch pb = KV__PEER_BATCH__INIT;
    pb.has_plugins = true;
    pb.plugins = &pp;
    pb.n_plugins = 1;
    peer_file("plugins-differ", &pb);
    /* A client's request in the peer target's frame. */
    get_seed("peer", "client-get-locked", key(0, S, "l"), false);
}

/* --- raft --------------------------------------------------------------------
 */

/* Operations of fuzz_raft.c. */
enum {
    R_TICK,
    R_STEP,
    R_PROPOSE,
    R_READ,
    R_HOLD,
    R_RELEASE,
    R_COMPACT,
    R_TRANSFER,
    R_CAMPAIGN,
    R_REPORT,
    R_RESTARTED,
    R_QUERY
};

static void r_step(struct buf *b, unsigned type, unsigned from, unsigned term,
                   unsigned log_term, unsigned index, unsigned commit,
                   bool reject, unsigned nentries, unsigned eterm)
{
    b_u8(b, R_STEP);
    b_u8(b, reject ? 2 : 0);
    b_u8(b, type);
    b_u8(b, from);
    b_u8(b, term);
    b_u8(b, log_term);
    b_u8(b, index);
    b_u8(b, commit);
    b_u8(b, index); /* reject hint */
    b_u8(b, 1);     /* context */
    b_u8(b, nentries);
    for (unsigned k = 0; k < nentries; k++) {
        b_u8(b, 3);
        b_mem(b, "cmd", 3);
        b_u8(b, eterm);
        b_u8(b, 0); /* normal */
    }
}

static void raft_seeds(void)
{
    struct buf b;
    /* A follower of 3 that takes appends, commits, then a snapshot. */
    b.n = 0;
    b_u8(&b, 2);    /* 3 members, nothing stored */
    b_u8(&b, 0x07); /* pre-vote, check-quorum, boot-quiet */
    b_u8(&b, 1);    /* seed */
    r_step(&b, RAFT_MSG_APPEND, 2, 1, 0, 0, 0, false, 3, 1);
    r_step(&b, RAFT_MSG_HEARTBEAT, 2, 1, 0, 0, 3, false, 0, 0);
    r_step(&b, RAFT_MSG_APPEND, 2, 2, 1, 3, 3, false, 2, 2);
    r_step(&b, RAFT_MSG_SNAPSHOT, 2, 2, 2, 9, 0, false, 0, 0);
    b_u8(&b, R_QUERY);
    b_u8(&b, 3);
    put_file("raft", "follower-appends-commits-snapshot", b.b, b.n);
    /* An election won with pre-vote, proposals, acks, reads, compaction,
     * transfer. */
    b.n = 0;
    b_u8(&b, 2);
    b_u8(&b, 0x01); /* pre-vote */
    b_u8(&b, 2);
    b_u8(&b, R_CAMPAIGN);
    r_step(&b, RAFT_MSG_PREVOTE_RESP, 2, 1, 0, 0, 0, false, 0, 0);
    r_step(&b, RAFT_MSG_VOTE_RESP, 2, 1, 0, 0, 0, false, 0, 0);
    b_u8(&b, R_PROPOSE);
    b_u8(&b, 4);
    b_mem(&b, "data", 4);
    b_u8(&b, R_HOLD);
    r_step(&b, RAFT_MSG_APPEND_RESP, 2, 1, 0, 2, 0, false, 0, 0);
    b_u8(&b, R_RELEASE);
    b_u8(&b, R_READ);
    b_u8(&b, 5);
    b_u8(&b, R_TICK);
    b_u8(&b, 3);
    r_step(&b, RAFT_MSG_HEARTBEAT_RESP, 3, 1, 0, 0, 0, false, 0, 0);
    r_step(&b, RAFT_MSG_APPEND_RESP, 3, 1, 0, 2, 0, true, 0, 0);
    b_u8(&b, R_COMPACT);
    b_u8(&b, 1);
    b_u8(&b, R_REPORT);
    b_u8(&b, 3);
    b_u8(&b, 1);
    b_u8(&b, R_RESTARTED);
    b_u8(&b, 3);
    b_u8(&b, R_TRANSFER);
    b_u8(&b, 2);
    b_u8(&b, R_TICK);
    b_u8(&b, 31);
    put_file("raft", "leader-elected-proposes-reads-transfers", b.b, b.n);
    /* A restarted member with a stored log and snapshot point, votes. */
    b.n = 0;
    b_u8(&b, 0x80 | 4); /* 5 members, stored state */
    b_u8(&b, 0x02);
    b_u8(&b, 3);
    b_u8(&b, 3); /* hard state: term */
    b_u8(&b, 2); /* vote */
    b_u8(&b, 6); /* commit */
    b_u8(&b, 4); /* snapshot index */
    b_u8(&b, 1); /* snapshot term */
    b_u8(&b, 5); /* applied */
    b_u8(&b, 4); /* entries */
    for (int k = 0; k < 4; k++) {
        b_u8(&b, k & 1); /* term step */
        b_u8(&b, 2);
        b_mem(&b, "ab", 2);
        b_u8(&b, 0);
    }
    r_step(&b, RAFT_MSG_VOTE, 3, 4, 3, 8, 0, false, 0, 0);
    r_step(&b, RAFT_MSG_PREVOTE, 4, 5, 3, 8, 0, false, 0, 0);
    b_u8(&b, R_TICK);
    b_u8(&b, 20);
    r_step(&b, RAFT_MSG_APPEND, 5, 5, 2, 7, 8, false, 2, 5);
    r_step(&b, RAFT_MSG_TIMEOUT_NOW, 5, 5, 0, 0, 0, false, 0, 0);
    put_file("raft", "restart-with-log-votes", b.b, b.n);
    /* A single member group. */
    b.n = 0;
    b_u8(&b, 0);
    b_u8(&b, 0x07);
    b_u8(&b, 4);
    b_u8(&b, R_CAMPAIGN);
    b_u8(&b, R_PROPOSE);
    b_u8(&b, 0);
    b_u8(&b, R_READ);
    b_u8(&b, 1);
    b_u8(&b, R_TICK);
    b_u8(&b, 10);
    put_file("raft", "single-member", b.b, b.n);
    /* A rebuilt replica: no vote, no campaign until a leader is heard. */
    b.n = 0;
    b_u8(&b, 0x40 | 2);
    b_u8(&b, 0x07);
    b_u8(&b, 5);
    r_step(&b, RAFT_MSG_VOTE, 3, 2, 0, 0, 0, false, 0, 0);
    b_u8(&b, R_TICK);
    b_u8(&b, 31);
    r_step(&b, RAFT_MSG_HEARTBEAT, 2, 2, 0, 0, 0, false, 0, 0);
    r_step(&b, RAFT_MSG_APPEND, 2, 2, 0, 0, 2, false, 2, 2);
    b_u8(&b, R_QUERY);
    b_u8(&b, 1);
    put_file("raft", "rebuilt-waits-for-a-leader", b.b, b.n);
}

/* --- records -----------------------------------------------------------------
 */

static void rec(struct buf *b, char tag, unsigned shard, const void *k,
                size_t klen, const void *v, size_t vlen)
{
    b_u8(b, (unsigned char)tag);
    b_u8(b, shard);
    b_u8(b, (unsigned)klen);
    b_mem(b, k, klen);
    b_u16(b, (unsigned)vlen);
    b_mem(b, v, vlen);
}

/* A whole healthy state of shard 0 of 2: applied index, hard state, a
 * log, data, a session, a prepared transaction (intent, participant
 * record, transaction record), a tombstone, a decided record. DAMAGE 1
 * gives the intent a kind that is none, 2 the decided record a state
 * that is none (both read as corrupt since fuzz_records found them taken
 * for a lock-only intent and an abort). */
static void healthy_state(struct buf *b, bool with_log, int damage)
{
    unsigned char v[128];
    put_u64(v, 12);
    put_u64(v + 8, 2);
    rec(b, 'A', 0, NULL, 0, v, 16);
    put_u64(v, 2);
    put_u32(v + 8, 1);
    put_u64(v + 12, with_log ? 14 : 12);
    put_u64(v + 20, 12);
    put_u64(v + 28, 1);
    rec(b, 'H', 0, NULL, 0, v, 36);
    const char *k1 = key(0, 2, "n"), *k2 = key(0, 2, "l");
    v[0] = 1;
    put_u64(v + 1, 5);
    memcpy(v + 9, "41", 2);
    rec(b, 'D', 0xff, k1, strlen(k1), v, 11);
    put_u64(v + 1, 6);
    memcpy(v + 9, "old", 3);
    rec(b, 'D', 0xff, k2, strlen(k2), v, 12);
    put_u64(v, 3);
    put_u32(v + 8, 0);
    put_u64(v + 12, 5);
    memcpy(v + 20, "reply", 5);
    rec(b, 'S', 0, FUZZ_CLIENT_ID, 16, v, 25);
    unsigned char tid[16];
    memcpy(tid, "fuzz-txn-records", 16);
    memcpy(v, tid, 16);
    v[16] = damage == 1 ? 9 : ENGINE_TXN_PUT;
    put_u64(v + 17, 11);
    put_u32(v + 25, 0);
    put_u64(v + 29, FUZZ_WALL_BASE - 5000); /* past: recovery runs */
    memcpy(v + 37, "new", 3);
    rec(b, 'I', 0xff, k2, strlen(k2), v, 40);
    put_u32(v, 0);
    put_u64(v + 4, FUZZ_WALL_BASE - 5000);
    put_u64(v + 12, 11);
    put_u32(v + 20, 1);
    put_u32(v + 24, (uint32_t)strlen(k2));
    memcpy(v + 28, k2, strlen(k2));
    rec(b, 'P', 0, tid, 16, v, 28 + strlen(k2));
    v[0] = ENGINE_TXN_PENDING;
    put_u64(v + 1, FUZZ_WALL_BASE - 5000);
    put_u32(v + 9, 2);
    put_u32(v + 13, 0);
    put_u32(v + 17, 1);
    rec(b, 'X', 0, tid, 16, v, 21);
    memcpy(tid, "fuzz-txn-decided", 16);
    v[0] = damage == 2 ? 9 : ENGINE_TXN_COMMITTED;
    rec(b, 'X', 0, tid, 16, v, 21);
    memcpy(tid, "fuzz-txn-tombstn", 16);
    put_u32(v, 1);
    put_u64(v + 4, FUZZ_WALL_BASE - 100000);
    put_u64(v + 12, 9);
    put_u32(v + 20, UINT32_MAX);
    v[24] = ENGINE_TXN_ABORTED;
    rec(b, 'P', 0, tid, 16, v, 25);
    rec(b, 'M', 0, "cluster", 7, "fuzz", 4);
    if (!with_log)
        return;
    static unsigned char cmds[24][4096];
    size_t lens[24];
    const char *names[24];
    size_t n = commands(0, 2, cmds, lens, names);
    for (uint64_t i = 0; i < 2 && i < n; i++) {
        Kv__LogEntry le = KV__LOG_ENTRY__INIT;
        le.term = 2;
        le.index = 13 + i;
        le.data.data = cmds[i == 0 ? 0 : 4];
        le.data.len = lens[i == 0 ? 0 : 4];
        unsigned char ev[4200], lk[8];
        size_t elen = kv__log_entry__get_packed_size(&le);
        kv__log_entry__pack(&le, ev);
        put_u64(lk, le.index);
        rec(b, 'L', 0, lk, 8, ev, elen);
    }
}

static void records_seeds(void)
{
    struct buf b;
    unsigned char v[64];
    b.n = 0;
    healthy_state(&b, false, 0);
    put_file("records", "healthy-state", b.b, b.n);
    b.n = 0;
    healthy_state(&b, true, 0);
    put_file("records", "healthy-state-with-log", b.b, b.n);
    b.n = 0;
    healthy_state(&b, false, 1);
    put_file("records", "intent-of-no-kind", b.b, b.n);
    b.n = 0;
    healthy_state(&b, false, 2);
    put_file("records", "decided-record-of-no-state", b.b, b.n);
    const char *k = key(0, 2, "n");
    struct {
        const char *name;
        char tag;
        unsigned shard;
        const void *key;
        size_t klen;
        const void *val;
        size_t vlen;
    } bad[] = {
        {"data-short", 'D', 0xff, k, strlen(k), "\x01\0\0", 3},
        {"data-version-0", 'D', 0xff, k, strlen(k), "\x01\0\0\0\0\0\0\0\0v",
         10},
        {"data-bad-tag", 'D', 0xff, k, strlen(k), "\x02\0\0\0\0\0\0\0\x05v",
         10},
        {"applied-short", 'A', 0, NULL, 0, "\0\0\0\0", 4},
        {"applied-huge", 'A', 0, NULL, 0,
         "\xff\xff\xff\xff\xff\xff\xff\xff\0\0\0\0\0\0\0\x01", 16},
        {"hardstate-short", 'H', 1, NULL, 0, "\0\0\0\0\0\0\0\x01", 8},
        {"session-short", 'S', 0, FUZZ_CLIENT_ID, 16, "\0\0\0\x01", 4},
        {"intent-short", 'I', 0xff, k, strlen(k), "fuzz-txn", 8},
        {"participant-short", 'P', 0, "fuzz-txn-records", 16, "\0\0\0\0", 4},
        {"participant-keys-overrun", 'P', 0, "fuzz-txn-records", 16,
         "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x05\0\0\0\x09"
         "ab",
         30},
        {"tombstone-bad-outcome", 'P', 0, "fuzz-txn-records", 16,
         "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\xff\xff\xff\xff\x07", 25},
        {"record-short", 'X', 0, "fuzz-txn-records", 16, "\0\0\0", 3},
        {"record-parts-overrun", 'X', 0, "fuzz-txn-records", 16,
         "\x01\0\0\0\0\0\0\0\0\0\0\0\x09\0\0\0\x01", 17},
        {"record-bad-state", 'X', 0, "fuzz-txn-records", 16,
         "\x09\0\0\0\0\0\0\0\0\0\0\0\x01\0\0\0\x01", 17},
        {"txn-id-wrong-length", 'X', 0, "short-id", 8,
         "\x01\0\0\0\0\0\0\0\0\0\0\0\x01\0\0\0\x01", 17},
        {"install-marker-short", 'N', 0, NULL, 0, "\0\0\0\0\0\0\0\x01", 8},
        {"install-marker-phase2", 'N', 0, NULL, 0,
         "\0\0\0\0\0\0\0\x14\0\0\0\0\0\0\0\x02\x02", 17},
        {"log-entry-garbage", 'L', 0, "\0\0\0\0\0\0\0\x01", 8, "\xff\xff", 2},
        {"metadata-other-cluster", 'M', 0, "cluster", 7, "someone", 7},
        {"metadata-other-shards", 'M', 0, "shards", 6, "9", 1},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        b.n = 0;
        rec(&b, bad[i].tag, bad[i].shard, bad[i].key, bad[i].klen, bad[i].val,
            bad[i].vlen);
        put_file("records", bad[i].name, b.b, b.n);
    }
    /* An install interrupted in phase 2 with staged records. */
    b.n = 0;
    unsigned char z[64];
    z[0] = 'D';
    put_u32(z + 1, 0);
    memcpy(z + 5, k, strlen(k));
    v[0] = 1;
    put_u64(v + 1, 20);
    memcpy(v + 9, "7", 1);
    rec(&b, 'Z', 0, z, 5 + strlen(k), v, 10);
    put_u64(v, 20);
    put_u64(v + 8, 2);
    v[16] = 2;
    rec(&b, 'N', 0, NULL, 0, v, 17);
    put_u64(v, 2);
    put_u32(v + 8, 0);
    put_u64(v + 12, 20);
    put_u64(v + 20, 20);
    put_u64(v + 28, 2);
    rec(&b, 'H', 0, NULL, 0, v, 36);
    put_file("records", "install-interrupted", b.b, b.n);
}

/* --- command -----------------------------------------------------------------
 */

static void command_seeds(void)
{
    static unsigned char cmds[24][4096];
    size_t lens[24];
    const char *names[24];
    size_t n = commands(0, 2, cmds, lens, names);
    struct buf b;
    for (size_t i = 0; i < n; i++) {
        b.n = 0;
        b_u8(&b, 0);
        b_u16(&b, (unsigned)lens[i]);
        b_mem(&b, cmds[i], lens[i]);
        put_file("command", names[i], b.b, b.n);
    }
    /* Everything in one log, on both shards, with no-ops between. */
    b.n = 0;
    for (size_t i = 0; i < n && i < 15; i++) {
        b_u8(&b, (unsigned)(i & 1));
        b_u16(&b, (unsigned)lens[i]);
        b_mem(&b, cmds[i], lens[i]);
    }
    b_u8(&b, 0x80);
    b_u16(&b, 0);
    put_file("command", "all-kinds-both-shards", b.b, b.n);
    b.n = 0;
    b_u8(&b, 0);
    b_u16(&b, 3);
    b_mem(&b, "\xff\xff\xff", 3);
    put_file("command", "undecodable", b.b, b.n);
    b.n = 0;
    b_u8(&b, 0);
    b_u16(&b, 0);
    put_file("command", "empty-command", b.b, b.n);
}

/* --- conf --------------------------------------------------------------------
 */

static void conf_seeds(void)
{
    static const char nodes[] = "[node 1]\naddress = tcp://127.0.0.1:7101\n"
                                "[node 2]\naddress = tcp://127.0.0.1:7102\n"
                                "[node 3]\naddress = tcp://127.0.0.1:7103\n";
    FILE *f = fopen("cluster.conf", "rb");
    if (!f)
        fuzz_fail("corpus_gen: run me from the repository's root");
    static char text[65536];
    size_t n = fread(text, 1, sizeof(text), f);
    fclose(f);
    put_file("conf", "cluster.conf", text, n);
    static const char *const good[][2] = {
        {"minimal", "cluster = a\n[node 9]\naddress = tcp://h:9\n"},
        {"every-key",
         "cluster = prod-eu.1_a   # the name\nshards = 64\nreplicas = 2\n"
         "data_dir = /var/lib/kv\nmax_key_bytes = 1024\n"
         "max_value_bytes = 2097152\nmax_message_bytes = 8388608\n"
         "request_timeout_ms = 250\ntxn_timeout_ms = 10000\nlog_level = "
         "debug\nmax_txn_ops = 5000\nmax_txn_bytes = 2000000\n"
         "procedures = a.so /x/b.so\nproc_max_keys = 10\n"
         "proc_max_write_bytes = 100\nproc_max_reply_bytes = 100\n\n"
         "[node 30]\naddress = tcp://10.0.0.3:7000\n[node 7]\n"
         "address = tcp://10.0.0.1:7000\n[node 12]   # middle\n"
         "  address   =   tcp://node-12.example.com:7000  \n"},
        {"odd-spacing",
         "\xef\xbb\xbf# bom\r\n\r\n   # indented\n\tcluster\t=\tx\t# tabs\r\n"
         "shards=2#no spaces\n[ node   5 ]  # spaced\r\n"
         "address=tcp://h:1\r\n   \t  \n# no newline at the end"},
        {"limits",
         "cluster = a\nshards = 4096\nreplicas = 1\nmax_key_bytes = 4096\n"
         "max_value_bytes = 67108864\nmax_message_bytes = 67113984\n"
         "request_timeout_ms = 3600000\ntxn_timeout_ms = 1\n"
         "max_txn_ops = 100000\nmax_txn_bytes = 67109888\n"
         "[node 65535]\naddress = tcp://h:65535\n[node 1]\n"
         "address = tcp://h:1\n"},
        {"ipv6", "cluster = a\n[node 1]\naddress = tcp://[::1]:7101\n[node 2]\n"
                 "address = tcp://[fe80::1:AB]:7101\n[node 3]\n"
                 "address = tcp://my_host.local:7101\n"},
        {"small-message",
         "cluster = a\nmax_key_bytes = 1\nmax_value_bytes = 0\n"
         "max_message_bytes = 1025\n[node 1]\n"
         "address = tcp://h:1\n"},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        put_file("conf", good[i][0], good[i][1], strlen(good[i][1]));
    /* Bad files: each with the three nodes unless it is about them. */
    static const char *const bad[][2] = {
        {"bad-unknown-key", "shard_count = 8\n"},
        {"bad-duplicate-key", "shards = 8\nshards = 9\n"},
        {"bad-number", "shards = 8x\n"},
        {"bad-range", "shards = 4097\n"},
        {"bad-huge-number", "shards = 99999999999999999999999\n"},
        {"bad-replicas", "replicas = 4\n"},
        {"bad-message-small", "max_message_bytes = 100\n"},
        {"bad-txn-bytes", "max_message_bytes = 5000\nmax_txn_bytes = 1000\n"
                          "max_key_bytes = 100\nmax_value_bytes = 100\n"},
        {"bad-log-level", "log_level = loud\n"},
        {"bad-data-dir", "data_dir = a\x01z\n"},
        {"bad-procedures-twice", "procedures = a.so a.so\n"},
        {"bad-no-equals", "shards\n"},
        {"bad-empty-value", "shards =\n"},
        {"bad-section", "[nodes 1]\n"},
        {"bad-section-unclosed", "[node 4\n"},
        {"bad-address-in-global", "address = tcp://h:1\n"},
        {"bad-nul", "shards = 8\0\n"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char t[1024];
        size_t blen = strlen(bad[i][1]);
        if (strcmp(bad[i][0], "bad-nul") == 0)
            blen = 12;
        size_t off = (size_t)snprintf(t, sizeof(t), "cluster = a\n");
        memcpy(t + off, bad[i][1], blen);
        off += blen;
        memcpy(t + off, nodes, sizeof(nodes) - 1);
        off += sizeof(nodes) - 1;
        put_file("conf", bad[i][0], t, off);
    }
    static const char *const bad_nodes[][2] = {
        {"bad-no-cluster", "shards = 2\n[node 1]\naddress = tcp://h:1\n"},
        {"bad-no-nodes", "cluster = a\n"},
        {"bad-name", "cluster = a b\n[node 1]\naddress = tcp://h:1\n"},
        {"bad-node-no-address", "cluster = a\n[node 1]\n"},
        {"bad-node-id", "cluster = a\n[node 0]\naddress = tcp://h:1\n"},
        {"bad-node-twice", "cluster = a\n[node 1]\naddress = tcp://h:1\n"
                           "[node 1]\naddress = tcp://h:2\n"},
        {"bad-address-twice", "cluster = a\n[node 1]\naddress = tcp://h:1\n"
                              "[node 2]\naddress = tcp://H:01\n"},
        {"bad-address-scheme", "cluster = a\n[node 1]\naddress = udp://h:1\n"},
        {"bad-address-port",
         "cluster = a\n[node 1]\naddress = tcp://h:70000\n"},
        {"bad-address-ipv6",
         "cluster = a\n[node 1]\naddress = tcp://[::g]:1\n"},
        {"bad-key-in-node", "cluster = a\n[node 1]\nshards = 2\n"},
    };
    for (size_t i = 0; i < sizeof(bad_nodes) / sizeof(bad_nodes[0]); i++)
        put_file("conf", bad_nodes[i][0], bad_nodes[i][1],
                 strlen(bad_nodes[i][1]));
        /* [security]: CurveZMQ keys (Z85, '#' among their characters). */
#define KA "40Vpe(eUZAXw-r[8rL/@r&o3y1Z*enq@f#KFYsA5"
#define KB ")e2CZe7J^=3I1Mg[p4GoE9jqftr2>S4OG4[U#u/D"
#define KC "C+J!7xp(5s-CgyLU1on+<Ix7M5$tTn5unJ+e}>-v"
    static const char *const sec[][2] = {
        {"security-curve",
         "cluster = s\nmax_inflight_per_client = 64\n[node 2]\n"
         "address = tcp://10.0.0.2:7000\npublic_key = " KA " # its key\n"
         "secret_key_file = keys/n2.key\n[security]\ncurve = on\n"
         "insecure = no\nclient_keys = " KC "\t# a client\n"
         "client_keys_file = /etc/kv/clients\nhandshake_timeout_ms = 2500\n"
         "[node 1]\naddress = tcp://[::1]:7000\npublic_key = " KB "\n"
         "secret_key_file = /etc/kv/n1.key\n"},
        {"security-insecure", "cluster = s\n[security]\ninsecure = yes\n"
                              "[node 1]\naddress = tcp://0.0.0.0:7000\n"},
        {"bad-security-key-short",
         "cluster = s\n[security]\nclient_keys = abc\n[node 1]\n"
         "address = tcp://h:1\n"},
        {"bad-security-curve-no-keys", "cluster = s\n[security]\ncurve = on\n"
                                       "[node 1]\naddress = tcp://h:1\n"},
        {"bad-security-client-is-node",
         "cluster = s\n[security]\nclient_keys = " KA "\n[node 1]\n"
         "address = tcp://h:1\npublic_key = " KA "\n"},
        {"bad-security-two-nodes-one-key",
         "cluster = s\n[node 1]\naddress = tcp://h:1\npublic_key = " KA
         "\n[node 2]\naddress = tcp://h:2\npublic_key = " KA "\n"},
        {"bad-security-twice", "cluster = s\n[security]\n[security]\n"
                               "[node 1]\naddress = tcp://h:1\n"},
        {"bad-security-handshake", "cluster = s\n[security]\n"
                                   "handshake_timeout_ms = 5\n[node 1]\n"
                                   "address = tcp://h:1\n"},
        {"bad-security-key-outside", "cluster = s\ncurve = on\n[node 1]\n"
                                     "address = tcp://h:1\n"},
        {"bad-inflight", "cluster = s\nmax_inflight_per_client = 0\n"
                         "[node 1]\naddress = tcp://h:1\n"},
    };
#undef KA
#undef KB
#undef KC
    for (size_t i = 0; i < sizeof(sec) / sizeof(sec[0]); i++)
        put_file("conf", sec[i][0], sec[i][1], strlen(sec[i][1]));
}

/* --- proc --------------------------------------------------------------------
 */

/* SELECT, LIMITS, NSHARDS, KEY, ARG, then stored keys (KEY, VALUE, WHAT). */
static void proc_seed(const char *name, unsigned select, unsigned limits,
                      const char *k, const void *arg, size_t alen,
                      const char *const *stored, size_t nstored)
{
    struct buf b;
    b.n = 0;
    b_u8(&b, select);
    b_u8(&b, limits);
    b_u8(&b, 0); /* one shard */
    b_u8(&b, (unsigned)strlen(k));
    b_mem(&b, k, strlen(k));
    b_u16(&b, (unsigned)alen);
    b_mem(&b, arg, alen);
    for (size_t i = 0; i + 2 < nstored; i += 3) {
        b_u8(&b, (unsigned)strlen(stored[i]));
        b_mem(&b, stored[i], strlen(stored[i]));
        b_u16(&b, (unsigned)strlen(stored[i + 1]));
        b_mem(&b, stored[i + 1], strlen(stored[i + 1]));
        b_u8(&b, (unsigned)atoi(stored[i + 2]));
    }
    put_file("proc", name, b.b, b.n);
}

static void proc_seeds(void)
{
    unsigned char arg[256];
    const char *st[] = {"n",    "41", "3",   "s",    "hello", "4",
                        "{a}x", "5",  "1",   "{a}y", "7",     "2",
                        "w",    "x",  "250", "lk",   "x",     "251"};
    const size_t nst = sizeof(st) / sizeof(st[0]);
    proc_seed("incr", 0, 0, "n", "2", 1, st, nst);
    proc_seed("incr-absent", 0, 0, "q", NULL, 0, st, nst);
    proc_seed("incr-not-a-number", 0, 0, "s", NULL, 0, st, nst);
    proc_seed("incr-overflow", 0, 0, "n", "9223372036854775807", 19, st, nst);
    proc_seed("incr-waits", 0, 0, "w", NULL, 0, st, nst);
    proc_seed("incr-locked", 0, 0, "lk", NULL, 0, st, nst);
    proc_seed("append", 1, 0, "s", " world", 6, st, nst);
    proc_seed("append-tight-budget", 1, 0x0b, "s", " world", 6, st, nst);
    const char *cas_ok[] = {"hello", "bye"};
    const char *cas_absent[] = {NULL, "new"};
    const char *cas_bad[] = {"hello"};
    proc_seed("cas", 2, 0, "s", arg, list(arg, cas_ok, 2), st, nst);
    proc_seed("cas-absent", 2, 0, "q", arg, list(arg, cas_absent, 2), st, nst);
    proc_seed("cas-mismatch", 2, 0, "n", arg, list(arg, cas_ok, 2), st, nst);
    proc_seed("cas-one-item", 2, 0, "s", arg, list(arg, cas_bad, 1), st, nst);
    const char *mget[] = {"s", "q", "{a}x"};
    proc_seed("mget", 3, 0, "n", arg, list(arg, mget, 3), st, nst);
    proc_seed("mget-bad-list", 3, 0, "n", "\0\0\0\x09x", 5, st, nst);
    const char *move[] = {"{a}y", "2"};
    proc_seed("move", 4, 0, "{a}x", arg, list(arg, move, 2), st, nst);
    proc_seed("ratelimit", 5, 0, "r", "10 5 1700000000000 2", 20, st, nst);
    proc_seed("sum-prefix", 6, 0, "{a}", "{a}", 3, st, nst);
    proc_seed("sum-prefix-budget", 6, 0x03, "{a}", "", 0, st, nst);
    proc_seed("name-from-key", 230, 0, "no_such", NULL, 0, st, nst);
    proc_seed("another-shard", 0x10, 0, "n", NULL, 0, st, nst);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR   (from the repository's root)\n",
                argv[0]);
        return 2;
    }
    fuzz_init();
    root = argv[1];
    if (mkdir(root, 0755) != 0 && errno != EEXIST) {
        perror(root);
        return 1;
    }
    request_seeds();
    peer_seeds();
    raft_seeds();
    records_seeds();
    command_seeds();
    conf_seeds();
    proc_seeds();
    printf("corpus_gen: %d files written under %s\n", written, root);
    return 0;
}
