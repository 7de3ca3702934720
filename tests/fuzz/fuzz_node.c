/*
 * fuzz_node - the harness the fuzz targets share (see fuzz.h): a node's
 * replica over the simulated store, a fake clock, a seeded generator, and
 * checks on everything the node says (every frame it sends must decode,
 * every answer must encode and go to the client that asked, at most once,
 * and Raft's invariants must hold after every step of its loop).
 */
#include "fuzz.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "conf.h"
#include "inflight.h"
#include "kv.h"
#include "log.h"
#include "proc.h"
#include "replica.h"
#include "shard.h"
#include "store.h"
#include "store_sim.h"
#include "wire.h"

/* --- determinism -----------------------------------------------------------
 */

static uint64_t rng_state = 0x6a09e667f3bcc909ull;

static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static const char *rng_name(void)
{
    return "kv-fuzz-splitmix64";
}

static uint32_t rng_random(void)
{
    return (uint32_t)rng_next();
}

static void rng_buf(void *const buf, const size_t size)
{
    unsigned char *p = buf;
    for (size_t i = 0; i < size; i++)
        p[i] = (unsigned char)rng_next();
}

static randombytes_implementation fixed_rng = {
    .implementation_name = rng_name,
    .random = rng_random,
    .buf = rng_buf,
};

void fuzz_init(void)
{
    static bool done;
    if (done)
        return;
    done = true;
    randombytes_set_implementation(&fixed_rng);
    enum log_level level = LOG_OFF;
    const char *want = getenv("KV_FUZZ_LOG");
    if (want && log_parse_level(want, &level) != 0)
        level = LOG_OFF;
    log_setup(level, "fuzz");
}

void fuzz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz: finding: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

const struct proc_registry *fuzz_procs(void)
{
    static struct proc_registry *reg;
    if (reg)
        return reg;
    fuzz_init();
#ifdef KV_FUZZ_PROC_DIR
    static const char *const names[] = {"move.so", "ratelimit.so",
                                        "sum_prefix.so"};
    char paths[3][512];
    const char *ptrs[3];
    for (int i = 0; i < 3; i++) {
        snprintf(paths[i], sizeof(paths[i]), "%s/%s", KV_FUZZ_PROC_DIR,
                 names[i]);
        ptrs[i] = paths[i];
    }
    size_t npaths = 3;
#else
    const char *const *ptrs = NULL;
    size_t npaths = 0;
#endif
    char err[512] = "";
    if (proc_registry_open(ptrs, npaths, &reg, err, sizeof(err)) != KV_OK)
        fuzz_fail("harness: cannot open the procedure registry: %s", err);
    return reg;
}

struct conf *fuzz_conf(const char *text)
{
    struct conf *c = NULL;
    char err[256] = "";
    if (conf_parse(text, strlen(text), "fuzz.conf", &c, err, sizeof(err)) !=
        KV_OK)
        fuzz_fail("harness: bad built-in configuration: %s", err);
    return c;
}

/* --- the seeded state ------------------------------------------------------
 */

void fuzz_tag(uint32_t shard, uint32_t nshards, char tag[16])
{
    for (unsigned i = 0; i < 1000000; i++) {
        int n = snprintf(tag, 16, "t%u", i);
        if (shard_of(tag, (size_t)n, nshards) == shard)
            return;
    }
    fuzz_fail("harness: no hash tag for shard %u of %u", shard, nshards);
}

void fuzz_txn_id(uint32_t shard, bool resolved, unsigned char id[16])
{
    memcpy(id, resolved ? "fuzz-txn-resolvd" : "fuzz-txn-prepard", 16);
    id[15] = (unsigned char)shard;
}

static void put_rec(struct store_batch *b, char tag, uint32_t shard,
                    const void *rest, size_t rlen, const void *val, size_t vlen)
{
    unsigned char k[5 + 64];
    k[0] = (unsigned char)tag;
    put_u32(k + 1, shard);
    if (rlen)
        memcpy(k + 5, rest, rlen);
    store_batch_put(b, k, 5 + rlen, val, vlen);
}

static void put_data(struct store_batch *b, uint32_t shard, const char *tag,
                     const char *suffix, uint64_t version, const char *value)
{
    char key[40];
    int klen = snprintf(key, sizeof(key), "{%s}%s", tag, suffix);
    unsigned char v[64];
    size_t vlen = strlen(value);
    v[0] = 0x01;
    put_u64(v + 1, version);
    memcpy(v + 9, value, vlen);
    put_rec(b, 'D', shard, key, (size_t)klen, v, 9 + vlen);
}

void fuzz_seed_state(struct store *store, const bool *hosted, uint32_t nshards,
                     uint64_t deadline_ms)
{
    struct store_batch *b = store_batch_new();
    if (!b)
        fuzz_fail("harness: out of memory");
    const uint64_t later = deadline_ms;
    for (uint32_t s = 0; s < nshards; s++) {
        if (!hosted[s])
            continue;
        char tag[16];
        fuzz_tag(s, nshards, tag);
        unsigned char v[128];
        /* applied index 10 with 3 keys; snapshot point 10 of term 1 */
        put_u64(v, 10);
        put_u64(v + 8, 3);
        put_rec(b, 'A', s, NULL, 0, v, 16);
        put_u64(v, 1);
        put_u32(v + 8, 0);
        put_u64(v + 12, 10);
        put_u64(v + 20, 10);
        put_u64(v + 28, 1);
        put_rec(b, 'H', s, NULL, 0, v, 36);
        put_data(b, s, tag, "n", 3, "5");
        put_data(b, s, tag, "s", 4, "hello");
        put_data(b, s, tag, "l", 5, "old");
        /* a prepared transaction, home on this shard, locking {tag}l */
        unsigned char id[16];
        fuzz_txn_id(s, false, id);
        char lk[40];
        int lklen = snprintf(lk, sizeof(lk), "{%s}l", tag);
        memcpy(v, id, 16);
        v[16] = ENGINE_TXN_PUT;
        put_u64(v + 17, 9);
        put_u32(v + 25, s);
        put_u64(v + 29, later);
        memcpy(v + 37, "new", 3);
        put_rec(b, 'I', s, lk, (size_t)lklen, v, 40);
        put_u32(v, s);
        put_u64(v + 4, later);
        put_u64(v + 12, 9);
        put_u32(v + 20, 1);
        put_u32(v + 24, (uint32_t)lklen);
        memcpy(v + 28, lk, (size_t)lklen);
        put_rec(b, 'P', s, id, 16, v, 28 + (size_t)lklen);
        v[0] = ENGINE_TXN_PENDING;
        put_u64(v + 1, later);
        put_u32(v + 9, 1);
        put_u32(v + 13, s);
        put_rec(b, 'X', s, id, 16, v, 17);
        /* a tombstone old enough for the GC */
        fuzz_txn_id(s, true, id);
        put_u32(v, s);
        put_u64(v + 4, FUZZ_WALL_BASE - 120000);
        put_u64(v + 12, 7);
        put_u32(v + 20, UINT32_MAX);
        v[24] = ENGINE_TXN_COMMITTED;
        put_rec(b, 'P', s, id, 16, v, 25);
        /* the session of FUZZ_CLIENT_ID: its write 5 made version 4 */
        put_u64(v, FUZZ_CLIENT_SEQ);
        put_u32(v + 8, 0);
        put_u64(v + 12, 4);
        put_rec(b, 'S', s, FUZZ_CLIENT_ID, 16, v, 20);
    }
    int rc = store_write(store, b, true);
    store_batch_free(b);
    if (rc != KV_OK)
        fuzz_fail("harness: cannot seed the store: %s", kv_strerror(rc));
}

/* --- the node's environment ------------------------------------------------
 */

static void env_send(void *arg, uint32_t to, const void *buf, size_t len)
{
    struct fuzz_node *n = arg;
    n->frames_sent++;
    if (to == n->id || !conf_node_by_id(n->conf, to))
        fuzz_fail("node %u sent a frame to node %u, which is no peer", n->id,
                  to);
    /* What a node sends must be what its peers can read. */
    Kv__Envelope *env = NULL;
    char err[160];
    if (wire_decode(buf, len, n->conf->max_message_bytes, &env, err,
                    sizeof(err)) != KV_OK)
        fuzz_fail("node %u sent node %u a frame it cannot decode: %s", n->id,
                  to, err);
    bool ok =
        env->body_case == KV__ENVELOPE__BODY_PEER && env->peer->from == n->id;
    wire_free(env);
    if (!ok)
        fuzz_fail("node %u sent node %u a frame that is no batch of its own",
                  n->id, to);
    if (!n->keep_sent)
        return;
    if (n->nsent == n->capsent) {
        size_t cap = n->capsent ? n->capsent * 2 : 16;
        struct fuzz_frame *x = realloc(n->sent, cap * sizeof(*x));
        if (!x)
            fuzz_fail("harness: out of memory");
        n->sent = x;
        n->capsent = cap;
    }
    unsigned char *copy = malloc(len ? len : 1);
    if (!copy)
        fuzz_fail("harness: out of memory");
    memcpy(copy, buf, len);
    n->sent[n->nsent++] =
        (struct fuzz_frame){.to = to, .buf = copy, .len = len};
}

static void env_reply(void *arg, const void *client, size_t clen,
                      const Kv__Response *resp)
{
    struct fuzz_node *n = arg;
    if (clen != FUZZ_ROUTING_ID_LEN ||
        memcmp(client, FUZZ_ROUTING_ID, FUZZ_ROUTING_ID_LEN) != 0)
        fuzz_fail("node %u answered a client that never asked (%zu bytes)",
                  n->id, clen);
    void *buf = NULL;
    size_t len = 0;
    if (wire_encode_response(resp, &buf, &len) != KV_OK)
        fuzz_fail("harness: out of memory");
    free(buf);
    inflight_done(n->inflight, client, clen, resp->id, NULL);
    n->replies++;
    log_msg(LOG_DEBUG, "answer",
            "node=%u id=%llu code=%d result=%d message=\"%s\"", n->id,
            (unsigned long long)resp->id, (int)resp->code,
            (int)resp->result_case, resp->message ? resp->message : "");
    for (size_t i = 0; i < n->nasked; i++) {
        if (n->asked[i].id != resp->id)
            continue;
        n->asked[i].code = resp->code;
        if (++n->asked[i].answers > n->asked[i].fed)
            fuzz_fail("node %u answered request %llu %d times, asked %d times "
                      "(the last answer with code %d)",
                      n->id, (unsigned long long)resp->id, n->asked[i].answers,
                      n->asked[i].fed, (int)resp->code);
        return;
    }
    if (n->nasked < FUZZ_MAX_ASKED)
        fuzz_fail("node %u answered request %llu, which nobody made (code %d)",
                  n->id, (unsigned long long)resp->id, (int)resp->code);
}

static uint64_t env_now(void *arg)
{
    const struct fuzz_node *n = arg;
    return n->ticks * REPLICA_TICK_MS;
}

static uint64_t env_wall(void *arg)
{
    const struct fuzz_node *n = arg;
    return FUZZ_WALL_BASE + n->ticks * REPLICA_TICK_MS;
}

/* --- one node --------------------------------------------------------------
 */

void fuzz_node_init(struct fuzz_node *n, const struct conf *conf, uint32_t id)
{
    memset(n, 0, sizeof(*n));
    n->conf = conf;
    n->id = id;
    snprintf(n->dir, sizeof(n->dir), "fuzz/%u", id);
    n->inflight = inflight_new(conf->max_inflight_per_client);
    if (!n->inflight)
        fuzz_fail("harness: out of memory");
    char err[256] = "";
    if (store_open(n->dir, &n->store, err, sizeof(err)) != KV_OK)
        fuzz_fail("harness: cannot open the simulated store: %s", err);
}

int fuzz_node_start(struct fuzz_node *n, char *err, size_t errlen)
{
    struct replica_env env = {.arg = n,
                              .send = env_send,
                              .reply = env_reply,
                              .now_ms = env_now,
                              .wall_ms = env_wall,
                              .procs = fuzz_procs()};
    return replica_open(n->conf, n->id, n->store, &env, 42, &n->rep, err,
                        errlen);
}

static void check_invariants(const struct fuzz_node *n)
{
    char why[300];
    if (replica_check_invariants(n->rep, why, sizeof(why)) != 0)
        fuzz_fail("raft invariant broken: %s", why);
}

static void flush(struct fuzz_node *n)
{
    int rc = replica_flush(n->rep);
    if (rc != KV_OK) {
        n->stopped = true;
        n->stop_rc = rc;
        return;
    }
    check_invariants(n);
}

void fuzz_node_run(struct fuzz_node *n, int rounds)
{
    for (int i = 0; i < rounds && !n->stopped && n->rep; i++) {
        flush(n);
        if (n->stopped)
            break;
        replica_tick(n->rep);
        n->ticks++;
        inflight_expire(n->inflight, n->ticks * REPLICA_TICK_MS);
    }
    if (!n->stopped && n->rep)
        flush(n);
}

/* kvnode's status answer (node.c handle_status), minus its own counters
 * and limits. */
static void status(struct fuzz_node *n, const Kv__Request *req)
{
    Kv__StatusResult st = KV__STATUS_RESULT__INIT;
    Kv__Response r = KV__RESPONSE__INIT;
    r.id = req->id;
    if (replica_status(n->rep, &st) != KV_OK) {
        r.code = KV_ENOMEM;
        r.message = "out of memory";
    } else {
        r.result_case = KV__RESPONSE__RESULT_STATUS;
        r.status = &st;
    }
    env_reply(n, FUZZ_ROUTING_ID, FUZZ_ROUTING_ID_LEN, &r);
    replica_status_free(&st);
}

static void take_request(struct fuzz_node *n, const void *id, size_t idlen,
                         Kv__Envelope *env, bool batched);

void fuzz_node_frame(struct fuzz_node *n, const void *id, size_t idlen,
                     const void *data, size_t len)
{
    if (!n->rep || n->stopped)
        return;
    char err[160];
    Kv__Envelope *env = NULL;
    int rc = wire_decode(data, len, n->conf->max_message_bytes, &env, err,
                         sizeof(err));
    if (rc != KV_OK)
        return; /* kvnode answers KV_EPROTO with id 0 */
    if (env->body_case == KV__ENVELOPE__BODY_PEER) {
        char want[16];
        int wlen = snprintf(want, sizeof(want), "n%u", env->peer->from);
        if ((size_t)wlen == idlen && memcmp(id, want, idlen) == 0)
            replica_peer(n->rep, env->peer);
        wire_free(env);
        return;
    }
    if ((env->body_case != KV__ENVELOPE__BODY_REQUEST &&
         env->body_case != KV__ENVELOPE__BODY_BATCH) ||
        idlen != FUZZ_ROUTING_ID_LEN ||
        memcmp(id, FUZZ_ROUTING_ID, FUZZ_ROUTING_ID_LEN) != 0) {
        wire_free(env);
        return;
    }
    if (env->body_case == KV__ENVELOPE__BODY_REQUEST) {
        take_request(n, id, idlen, env, false);
        return;
    }
    /* A Batch: each frame that holds a request, as kvnode takes it. */
    const Kv__Batch *b = env->batch;
    for (size_t i = 0; i < b->n_frames && n->rep && !n->stopped; i++) {
        Kv__Envelope *one = NULL;
        if (wire_decode(b->frames[i].data, b->frames[i].len,
                        n->conf->max_message_bytes, &one, err,
                        sizeof(err)) != KV_OK)
            continue; /* kvnode answers KV_EPROTO with id 0 */
        if (one->body_case != KV__ENVELOPE__BODY_REQUEST) {
            wire_free(one);
            continue;
        }
        take_request(n, id, idlen, one, true);
    }
    wire_free(env);
}

/* A client's request (ENV, taken), as kvnode's handle_request takes it;
 * BATCHED: it came in a Batch frame. */
static void take_request(struct fuzz_node *n, const void *id, size_t idlen,
                         Kv__Envelope *env, bool batched)
{
    size_t a = 0;
    while (a < n->nasked && n->asked[a].id != env->request->id)
        a++;
    if (a == n->nasked && a < FUZZ_MAX_ASKED)
        n->asked[n->nasked++].id = env->request->id;
    if (a < n->nasked)
        n->asked[a].fed++;
    if (env->request->op_case == KV__REQUEST__OP_STATUS) {
        status(n, env->request);
        wire_free(env);
        return;
    }
    uint64_t timeout = env->request->timeout_ms ? env->request->timeout_ms
                                                : n->conf->request_timeout_ms;
    int rc = inflight_add(n->inflight, id, idlen, env->request->id,
                          n->ticks * REPLICA_TICK_MS + timeout + 1000, batched);
    if (rc != KV_OK) { /* kvnode answers at once, KV_EUNAVAILABLE */
        Kv__Response r = KV__RESPONSE__INIT;
        r.id = env->request->id;
        r.code = rc == KV_EUNAVAILABLE ? rc : KV_EPROTO;
        r.message = "too many requests in flight on this connection";
        env_reply(n, id, idlen, &r);
        wire_free(env);
        return;
    }
    replica_request(n->rep, id, idlen, env); /* takes env */
}

void fuzz_node_request(struct fuzz_node *n, const Kv__Request *req)
{
    void *buf = NULL;
    size_t len = 0;
    if (wire_encode_request(req, &buf, &len) != KV_OK)
        fuzz_fail("harness: out of memory");
    fuzz_node_frame(n, FUZZ_ROUTING_ID, FUZZ_ROUTING_ID_LEN, buf, len);
    free(buf);
}

void fuzz_node_peer(struct fuzz_node *n, const Kv__PeerBatch *b)
{
    void *buf = NULL;
    size_t len = 0;
    if (wire_encode_peer(b, &buf, &len) != KV_OK)
        fuzz_fail("harness: out of memory");
    char id[16];
    int idlen = snprintf(id, sizeof(id), "n%u", b->from);
    fuzz_node_frame(n, id, (size_t)idlen, buf, len);
    free(buf);
}

int fuzz_node_answers(const struct fuzz_node *n, uint64_t id, int *code)
{
    for (size_t i = 0; i < n->nasked; i++) {
        if (n->asked[i].id != id)
            continue;
        if (code)
            *code = n->asked[i].code;
        return n->asked[i].answers;
    }
    return -1;
}

void fuzz_node_drop_sent(struct fuzz_node *n)
{
    for (size_t i = 0; i < n->nsent; i++)
        free(n->sent[i].buf);
    n->nsent = 0;
}

void fuzz_node_close(struct fuzz_node *n)
{
    if (n->rep && log_enabled(LOG_DEBUG)) {
        struct replica_stats st;
        replica_get_stats(n->rep, &st);
        log_msg(LOG_DEBUG, "node stats",
                "node=%u ticks=%llu proposals=%llu applied=%llu reads=%llu "
                "dropped=%llu snapshots_installed=%llu frames_sent=%llu "
                "answers=%llu stopped=%d",
                n->id, (unsigned long long)n->ticks,
                (unsigned long long)st.proposals,
                (unsigned long long)st.applied, (unsigned long long)st.reads,
                (unsigned long long)st.dropped_msgs,
                (unsigned long long)st.snapshots_installed,
                (unsigned long long)n->frames_sent,
                (unsigned long long)n->replies, n->stopped ? n->stop_rc : 0);
    }
    replica_close(n->rep);
    n->rep = NULL;
    store_close(n->store);
    n->store = NULL;
    inflight_free(n->inflight);
    n->inflight = NULL;
    fuzz_node_drop_sent(n);
    free(n->sent);
    n->sent = NULL;
    n->capsent = 0;
    store_sim_reset();
}

/* --- a scripted peer -------------------------------------------------------
 */

void fuzz_node_answer_as(struct fuzz_node *n, uint32_t peer, uint32_t shard)
{
    Kv__RaftMessage ms[64], *mp[64];
    size_t k = 0;
    Kv__Envelope *envs[64];
    size_t nenv = 0;
    for (size_t i = 0; i < n->nsent && nenv < 64; i++) {
        if (n->sent[i].to != peer)
            continue;
        Kv__Envelope *env = NULL;
        char err[160];
        if (wire_decode(n->sent[i].buf, n->sent[i].len, SIZE_MAX, &env, err,
                        sizeof(err)) != KV_OK)
            continue;
        envs[nenv++] = env;
        const Kv__PeerBatch *b = env->peer;
        for (size_t j = 0; j < b->n_msgs && k < 64; j++) {
            const Kv__RaftMessage *m = b->msgs[j];
            if (m->shard != shard)
                continue;
            Kv__RaftMessage *a = &ms[k];
            kv__raft_message__init(a);
            a->shard = shard;
            a->from = peer;
            a->to = n->id;
            a->term = m->term;
            switch (m->type) {
            case 5: /* RAFT_MSG_PREVOTE */
                a->type = 6;
                break;
            case 3: /* RAFT_MSG_VOTE */
                a->type = 4;
                break;
            case 1: /* RAFT_MSG_APPEND */
                a->type = 2;
                a->index = m->index + m->n_entries;
                break;
            case 7: /* RAFT_MSG_HEARTBEAT */
                a->type = 8;
                a->context = m->context;
                break;
            default:
                continue;
            }
            mp[k] = a;
            k++;
        }
    }
    if (k) {
        Kv__PeerBatch b = KV__PEER_BATCH__INIT;
        b.from = peer;
        b.cluster = n->conf->cluster;
        b.boot_id = FUZZ_PEER_BOOT(peer);
        b.msgs = mp;
        b.n_msgs = k;
        fuzz_node_peer(n, &b);
    }
    for (size_t i = 0; i < nenv; i++)
        wire_free(envs[i]);
    fuzz_node_drop_sent(n);
}

/* --- input reading ----------------------------------------------------------
 */

uint8_t fuzz_u8(struct fuzz_in *in)
{
    if (!in->left)
        return 0;
    in->left--;
    return *in->p++;
}

uint16_t fuzz_u16(struct fuzz_in *in)
{
    uint16_t hi = fuzz_u8(in);
    return (uint16_t)(hi << 8 | fuzz_u8(in));
}

uint32_t fuzz_u32(struct fuzz_in *in)
{
    uint32_t hi = fuzz_u16(in);
    return hi << 16 | fuzz_u16(in);
}

uint64_t fuzz_u64(struct fuzz_in *in)
{
    uint64_t hi = fuzz_u32(in);
    return hi << 32 | fuzz_u32(in);
}

const uint8_t *fuzz_bytes(struct fuzz_in *in, size_t n, size_t *got)
{
    const uint8_t *p = in->p;
    *got = n < in->left ? n : in->left;
    in->p += *got;
    in->left -= *got;
    return p;
}
