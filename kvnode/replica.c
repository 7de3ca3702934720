/*
 * replica - the multi-Raft driver (see replica.h).
 *
 * Store records owned here, per shard (u32 BE) of a hosted group:
 *   "H" shard            hard state: term, vote, commit, snap index, snap term
 *   "L" shard index(u64) a log entry (kv.LogEntry)
 *   "Z" shard store-key  a record of a snapshot being received (staging)
 *   "N" shard            a snapshot install in progress: index, term, phase
 *   "R" shard            the replica was rebuilt (kvnode --rebuild) and may
 *                        not vote yet (raft_init.no_vote_until_leader):
 *                        removed in the first batch after raft says it may
 *                        (it heard a current leader, recorded it as its
 *                        vote in a hard state stored before, and caught up)
 * The engine owns "A", "D", "S", "I", "P" and "X" (see engine.h).
 *
 * A snapshot is the shard's applied state read through a LevelDB snapshot
 * and streamed in chunks; the receiver stages the chunks under "Z" and only
 * once the whole snapshot is there and Raft accepted it replaces the
 * shard's records, in bounded batches, behind an "N" marker that lets a
 * restart finish an interrupted install. Memory never grows with the size
 * of the shard.
 */
#include "replica.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "conf.h"
#include "engine.h"
#include "kv.h"
#include "log.h"
#include "pending.h"
#include "proc.h"
#include "raft.h"
#include "shard.h"
#include "store.h"
#include "txn.h"
#include "wire.h"

#define ELECTION_TICKS 50 /* x 10 ms: 500-1000 ms, randomized by raft */
#define HEARTBEAT_TICKS 5
#define MAX_INFLIGHT 256
#define MAX_MSG_BYTES (1u << 20)
#define COMPACT_BYTES (64u << 20) /* compact a log holding this many bytes */
#define SNAP_CHUNK_BYTES (256u << 10)
#define SNAP_WINDOW 4        /* chunks in flight per stream */
#define SNAP_STALL_TICKS 500 /* 5 s without an ack ends a stream */
#define INSTALL_BATCH 1000   /* records per batch while installing */
#define HS_LEN 36
#define PLUGINS_EVERY_TICKS 100 /* each peer hears our plugins every 1 s */
#define MAX_WAITERS 100000 /* writes in flight per node before EUNAVAILABLE */
#define BALANCE_TICKS                                                          \
    200 /* how often a leader checks it is the preferred one */

enum { W_WRITE, W_TXN, W_PREPARE, W_STATE, W_RESOLVE, W_CALL };

struct waiter {
    uint64_t index;
    uint64_t term;
    unsigned char *client;
    size_t clen;
    uint64_t req_id;
    int code;
    uint64_t version;
    bool done;
    int kind;           /* W_* : what the answer carries */
    uint64_t *versions; /* txn: one per op (malloc()ed), NULL until applied */
    size_t nversions;
    size_t failed_op;     /* txn conflict: 1-based op index (0: unknown) */
    int state;            /* W_STATE: the transaction record's state */
    Kv__Envelope *env;    /* W_CALL: the call, evaluated again if stale */
    unsigned char *reply; /* W_CALL: the recorded reply (malloc()ed) */
    size_t rlen;
    int attempts; /* W_CALL: evaluations found stale so far */
};

/* A procedure call waiting to be evaluated on a shard this node leads. */
struct qcall {
    Kv__Envelope *env;
    unsigned char *client;
    size_t clen;
    uint64_t wait;  /* evaluate once the shard applied this index */
    uint64_t until; /* tick after which the client gave up */
    int attempts;
};

struct pending_read {
    Kv__Envelope *env;
    unsigned char *client;
    size_t clen;
    uint64_t ctx; /* 0: no ReadIndex asked yet */
    uint64_t index;
    bool indexed;
};

/* The record kinds of a shard's state, in the order a snapshot streams
 * them: data, sessions, then what transactions in flight hold (intents,
 * participant records, transaction records). */
static const char SNAP_TAGS[] = "DSIPX";
#define SNAP_NTAGS ((int)sizeof(SNAP_TAGS) - 1)

struct snap_out {
    bool active;
    uint32_t peer;
    uint64_t index, term;
    uint64_t next_seq; /* next chunk to send */
    uint64_t acked;    /* chunks acknowledged (seq < acked) */
    bool sent_last;
    int idle;
    struct store_iter *it;
    int phase; /* index into SNAP_TAGS of the records being sent */
};

struct snap_in {
    bool active;
    uint32_t from;
    uint64_t index, term;
    uint64_t next_seq;
    bool complete;
};

/* Where a walk of one key prefix in slices goes on: the first key not
 * visited yet (len 0: the prefix's first). Seeking there spares each slice
 * the tombstones of the records the slices before deleted or moved. */
struct cursor {
    unsigned char *key;
    size_t len;
};

/* A snapshot install under way (see install_step). */
struct install {
    bool active;
    int phase; /* INSTALL_DELETE .. INSTALL_COUNT */
    int tag;   /* INSTALL_DELETE: the SNAP_TAGS record kind being deleted */
    uint64_t index, term;
    uint64_t keys;                 /* INSTALL_COUNT: data keys counted */
    struct cursor cur;             /* of the phase's walk */
    struct raft_entry *deferred;   /* committed with the snapshot: applied */
    size_t ndeferred, capdeferred; /* once it is in place */
    uint64_t moved, deleted;       /* records, for the log */
    uint64_t started_ms;
};

struct group {
    uint32_t shard;
    struct raft *raft;
    uint32_t members[CONF_MAX_NODES];
    size_t nmembers;
    struct raft_hardstate hs;
    uint64_t snap_index, snap_term;
    uint64_t log_bytes; /* entry bytes stored since the last compaction */
    int balance_ticks;  /* ticks since the last leader balance check */
    uint64_t heard[CONF_MAX_NODES]; /* by member: tick of its last message */
    enum raft_role role;
    uint32_t leader;
    struct waiter *waiters;
    size_t nwaiters, capwaiters;
    struct pending_read *reads;
    size_t nreads, capreads;
    uint64_t read_ctx;
    struct { /* when recent heartbeat rounds were sent, for the lease */
        uint64_t term, round, at;
    } hb_sent[16];
    struct snap_out *out; /* one per member */
    struct snap_in in;
    struct install inst; /* active: the group is held (install_step) */
    bool clearing;       /* a stream's leftover staged records go first */
    struct cursor clear_cur;
    bool rebuilt;      /* the "R" marker is stored: no vote yet */
    uint64_t gc_index; /* the tombstone GC proposed last (until applied) */
    /* Session expiry: the GC entry proposed last (until applied), where
     * the pass under way goes on (after_len 0: none under way), and when
     * the next pass starts (the clock of the last entry that ended one). */
    uint64_t sgc_index;
    unsigned char sgc_after[ENGINE_MAX_CLIENT_ID];
    size_t sgc_after_len;
    uint64_t sgc_next_ms;
    /* Procedure calls (leader only): predictions of what is proposed and
     * not applied, the index from which they cover the log, and calls
     * waiting for an apply before they can be evaluated. */
    struct pending *pend;
    uint64_t lead_from;
    struct qcall *calls;
    size_t ncalls, capcalls;
};

struct replica {
    const struct conf *conf;
    uint32_t id;
    struct store *store;
    struct engine *engine;
    struct replica_env env;
    struct group **groups; /* by shard; NULL where this node is no member */
    struct raft_ready *rd; /* by shard: the Ready being processed */
    bool *has_rd;
    bool *early; /* by shard: its appends go out before the fsync */
    size_t total_waiters;
    uint64_t ticks;          /* replica_tick calls so far */
    uint64_t boot_id;        /* random per start: peers notice our restarts */
    uint64_t *peer_boot;     /* by node index: the boot id last seen */
    uint32_t *peer_features; /* by node index: the features it announced */
    struct replica_stats stats;
    unsigned char *scratch;
    size_t scratch_cap;
    struct txns *txns;   /* coordinators of cross-shard transactions */
    uint32_t *hint;      /* by shard: the leader last named (not hosted) */
    struct local *local; /* calls to and answers from this node itself */
    size_t nlocal, caplocal;
    struct parked *parked; /* gets waiting for a transaction's state */
    size_t nparked, capparked;
    uint64_t parked_calls;
    struct fanout *fanouts; /* calls on every shard this node merges */
    size_t nfanouts, capfanouts;
    uint64_t fanout_calls;
    struct peer_plugins *peer_plugins; /* by node index */
    struct peer_clock *peer_clocks;    /* by node index */
    uint64_t *plugins_sent;            /* by node index: tick last sent */
};

/* How far a peer's wall clock runs ahead of this node's, at least: each
 * PeerBatch carries its sender's clock, and (sent - now) is the skew minus
 * the batch's delay, so the largest value seen is a lower bound that the
 * fastest batches make tight. Readings count for two windows. */
#define CLOCK_WINDOW_TICKS 1000 /* 10 s */
#define CLOCK_WARN_MS 1000      /* a peer this far ahead is logged... */
#define CLOCK_WARN_TICKS 6000   /* ...at most once a minute */
struct peer_clock {
    bool seen;
    uint64_t since;    /* tick the current window began */
    int64_t cur, prev; /* the largest reading of this window, the last */
    uint32_t readings; /* ticks of this window with a reading */
    uint64_t last;     /* tick of the last reading */
    uint64_t warned;   /* tick of the last warning, plus 1 */
};

/* The procedure plugins a peer reported loading. */
struct peer_plugins {
    bool known;
    struct proc_plugin *list;
    size_t n;
};

/* A call a coordinator made to a shard this node leads, or the answer to
 * one: handled at the end of the flush, never inside the code that made
 * it. */
struct local {
    bool answer;
    unsigned char *buf; /* an encoded Envelope */
    size_t len;
};

/* The client address of an internal call from node N: it begins with a
 * zero byte and is 6 bytes long, which no ZeroMQ routing id is. */
#define PEER_ADDR_LEN 6
static void peer_addr(unsigned char a[PEER_ADDR_LEN], uint32_t node)
{
    a[0] = 0;
    a[1] = 'p';
    put_u32(a + 2, node);
}

static bool is_peer_addr(const void *client, size_t clen, uint32_t *node)
{
    const unsigned char *c = client;
    if (clen != PEER_ADDR_LEN || c[0] != 0 || c[1] != 'p')
        return false;
    *node = get_u32(c + 2);
    return true;
}

static const char *role_name(enum raft_role role);
static int apply_entry(struct replica *r, struct group *g,
                       const struct raft_entry *e);

/* --- small helpers ------------------------------------------------------ */

static void shard_key(unsigned char *k, char tag, uint32_t shard)
{
    k[0] = (unsigned char)tag;
    put_u32(k + 1, shard);
}

static void log_key(unsigned char k[13], uint32_t shard, uint64_t index)
{
    shard_key(k, 'L', shard);
    put_u64(k + 5, index);
}

static void *grow(void *p, size_t *cap, size_t elem)
{
    size_t n = *cap ? *cap * 2 : 16;
    void *q = realloc(p, n * elem);
    if (q)
        *cap = n;
    return q;
}

static bool is_member(const struct group *g, uint32_t id)
{
    for (size_t i = 0; i < g->nmembers; i++)
        if (g->members[i] == id)
            return true;
    return false;
}

/* What this version does that older ones do not, announced to peers in
 * every PeerBatch: a leader uses one only once every member of the group
 * announced it, so that the replicas of a shard running two versions
 * during a rolling upgrade still apply its log alike. What a peer
 * announced is kept in the store ("F" + node id: u32), so that a restarted
 * leader does not wait to hear from every member again: a peer cannot go
 * back, since an older kvnode refuses the data directory (format 2). */
#define FEATURE_SESSION_EXPIRY 1u /* dated sessions, SessionGc entries */
#define FEATURES FEATURE_SESSION_EXPIRY

static const struct conf_node *node_of(const struct replica *r, uint32_t id);

/* The store key of what node ID announced: "F" + id. */
static void feature_key(unsigned char k[5], uint32_t id)
{
    k[0] = 'F';
    put_u32(k + 1, id);
}

/* Whether every other member of G announced feature F. */
static bool group_has(const struct replica *r, const struct group *g,
                      uint32_t f)
{
    for (size_t i = 0; i < g->nmembers; i++) {
        const struct conf_node *n = node_of(r, g->members[i]);
        if (g->members[i] != r->id &&
            (!n || !(r->peer_features[n - r->conf->nodes] & f)))
            return false;
    }
    return true;
}

static const struct conf_node *node_of(const struct replica *r, uint32_t id)
{
    return conf_node_by_id(r->conf, id);
}

/* --- replies ------------------------------------------------------------ */

static void send_peer(struct replica *r, uint32_t to, Kv__PeerBatch *b);
static void local_push(struct replica *r, bool answer, const void *buf,
                       size_t len);
static uint64_t txn_wall(void *arg);
static void txn_call(void *arg, uint32_t shard, const Kv__Request *req);
static void note_pending(struct group *g, uint64_t index,
                         const Kv__Command *cmd);
static bool fanout_answer(struct replica *r, const Kv__Response *resp);
static bool applied_outcome(int rc);
static void handle_call(struct replica *r, const void *client, size_t clen,
                        Kv__Envelope *env);
static void serve_call(struct replica *r, const void *client, size_t clen,
                       const Kv__Request *req);
static void take_answer(struct replica *r, const void *buf, size_t len);
static void take_call(struct replica *r, const void *buf, size_t len,
                      uint32_t from);

/* Sends ENV (a call, or the ANSWER to one) to node TO inside a
 * PeerBatch, or through the local queue when TO is this node. Dropped when
 * out of memory: the caller repeats its call. */
static void send_internal(struct replica *r, uint32_t to, Kv__Envelope *env,
                          bool answer)
{
    env->version = WIRE_VERSION;
    size_t n = kv__envelope__get_packed_size(env);
    unsigned char *buf = malloc(n ? n : 1);
    if (!buf)
        return;
    kv__envelope__pack(env, buf);
    if (to == r->id) {
        local_push(r, answer, buf, n);
    } else {
        Kv__PeerBatch b = KV__PEER_BATCH__INIT;
        ProtobufCBinaryData one = {.len = n, .data = buf};
        if (answer) {
            b.replies = &one;
            b.n_replies = 1;
        } else {
            b.calls = &one;
            b.n_calls = 1;
        }
        send_peer(r, to, &b);
    }
    free(buf);
}

/* Answers a client, or a peer's (or this node's) internal call. */
static void answer_to(struct replica *r, const void *client, size_t clen,
                      const Kv__Response *resp)
{
    uint32_t node;
    if (!is_peer_addr(client, clen, &node)) {
        r->env.reply(r->env.arg, client, clen, resp);
        return;
    }
    Kv__Envelope env = KV__ENVELOPE__INIT;
    env.body_case = KV__ENVELOPE__BODY_RESPONSE;
    env.response = (Kv__Response *)resp;
    send_internal(r, node, &env, true);
}

static void reply_code(struct replica *r, const void *client, size_t clen,
                       uint64_t req_id, int code, const char *msg)
{
    Kv__Response resp = KV__RESPONSE__INIT;
    resp.id = req_id;
    resp.code = code;
    resp.message = (char *)(msg ? msg : "");
    answer_to(r, client, clen, &resp);
}

/* Answers KV_ENOTLEADER, naming the leader of SHARD if this node knows one,
 * else the first member of its placement. */
static void reply_redirect(struct replica *r, const void *client, size_t clen,
                           uint64_t req_id, uint32_t shard)
{
    struct group *g = r->groups[shard];
    uint32_t hint = RAFT_NONE;
    if (g && g->leader != RAFT_NONE && g->leader != r->id)
        hint = g->leader;
    if (!g)
        hint = r->conf->nodes[conf_replica(r->conf, shard, 0)].id;
    Kv__Response resp = KV__RESPONSE__INIT;
    char msg[80];
    if (hint)
        snprintf(msg, sizeof(msg), "shard %u: ask node %u", shard, hint);
    else
        snprintf(msg, sizeof(msg), "shard %u has no known leader", shard);
    resp.id = req_id;
    resp.code = KV_ENOTLEADER;
    resp.message = msg;
    resp.leader_id = hint;
    const struct conf_node *n = hint ? node_of(r, hint) : NULL;
    resp.leader_addr = n ? n->address : "";
    answer_to(r, client, clen, &resp);
}

/* --- persistence ------------------------------------------------------- */

/* The "H" record of G: hard state and snapshot point. */
static void encode_hardstate(const struct group *g, unsigned char k[5],
                             unsigned char v[HS_LEN])
{
    shard_key(k, 'H', g->shard);
    put_u64(v, g->hs.term);
    put_u32(v + 8, g->hs.vote);
    put_u64(v + 12, g->hs.commit);
    put_u64(v + 20, g->snap_index);
    put_u64(v + 28, g->snap_term);
}

static void stage_hardstate(struct replica *r, struct group *g)
{
    unsigned char k[5], v[HS_LEN];
    encode_hardstate(g, k, v);
    engine_stage_raw(r->engine, k, sizeof(k), v, sizeof(v));
}

static int scratch_reserve(struct replica *r, size_t n)
{
    return buf_reserve(&r->scratch, &r->scratch_cap, n) ? KV_OK : KV_ENOMEM;
}

static int stage_entry(struct replica *r, uint32_t shard,
                       const struct raft_entry *e)
{
    r->groups[shard]->log_bytes += e->len;
    Kv__LogEntry le = KV__LOG_ENTRY__INIT;
    le.term = e->term;
    le.index = e->index;
    le.type = e->type;
    le.data.data = e->data;
    le.data.len = e->len;
    size_t n = kv__log_entry__get_packed_size(&le);
    if (scratch_reserve(r, n) != KV_OK)
        return KV_ENOMEM;
    kv__log_entry__pack(&le, r->scratch);
    unsigned char k[13];
    log_key(k, shard, e->index);
    engine_stage_raw(r->engine, k, sizeof(k), r->scratch, n);
    return KV_OK;
}

/* Loads a group's Raft state from the store. */
static int load_group(struct replica *r, struct group *g,
                      struct raft_init *init, struct raft_entry **entries,
                      size_t *n)
{
    unsigned char k[13];
    void *v = NULL;
    size_t vlen = 0;
    shard_key(k, 'H', g->shard);
    int rc = store_get(r->store, k, 5, &v, &vlen);
    if (rc == KV_OK) {
        if (vlen != HS_LEN) {
            free(v);
            return KV_ECORRUPT;
        }
        const unsigned char *p = v;
        g->hs.term = get_u64(p);
        g->hs.vote = get_u32(p + 8);
        g->hs.commit = get_u64(p + 12);
        g->snap_index = get_u64(p + 20);
        g->snap_term = get_u64(p + 28);
        free(v);
    } else if (rc != KV_ENOTFOUND) {
        return rc;
    }
    uint64_t applied = engine_applied(r->engine, g->shard);
    struct raft_entry *es = NULL;
    size_t ne = 0, cap = 0;
    struct store_iter *it = store_iter_new(r->store);
    if (!it)
        return KV_ENOMEM;
    log_key(k, g->shard, g->snap_index + 1);
    rc = KV_OK;
    for (store_iter_seek(it, k, sizeof(k)); store_iter_valid(it);
         store_iter_next(it)) {
        size_t klen, elen;
        const unsigned char *key = store_iter_key(it, &klen);
        if (klen != 13 || memcmp(key, k, 5) != 0)
            break;
        const unsigned char *val = store_iter_value(it, &elen);
        Kv__LogEntry *le = kv__log_entry__unpack(NULL, elen, val);
        if (!le || le->index != get_u64(key + 5) ||
            (ne && le->index != es[ne - 1].index + 1)) {
            if (le)
                kv__log_entry__free_unpacked(le, NULL);
            rc = KV_ECORRUPT;
            break;
        }
        if (ne == cap) {
            struct raft_entry *x = grow(es, &cap, sizeof(*es));
            if (!x) {
                kv__log_entry__free_unpacked(le, NULL);
                rc = KV_ENOMEM;
                break;
            }
            es = x;
        }
        void *data = NULL;
        if (le->data.len) {
            data = malloc(le->data.len);
            if (!data) {
                kv__log_entry__free_unpacked(le, NULL);
                rc = KV_ENOMEM;
                break;
            }
            memcpy(data, le->data.data, le->data.len);
        }
        es[ne++] = (struct raft_entry){.term = le->term,
                                       .index = le->index,
                                       .type = le->type,
                                       .data = data,
                                       .len = le->data.len};
        kv__log_entry__free_unpacked(le, NULL);
    }
    if (rc == KV_OK)
        rc = store_iter_status(it);
    store_iter_free(it);
    if (rc == KV_OK && ne && es[0].index != g->snap_index + 1)
        rc = KV_ECORRUPT;
    if (rc != KV_OK) {
        for (size_t i = 0; i < ne; i++)
            free(es[i].data);
        free(es);
        return rc;
    }
    init->hs = g->hs;
    init->snap_index = g->snap_index;
    init->snap_term = g->snap_term;
    init->entries = es;
    init->n_entries = ne;
    init->applied = applied > g->snap_index ? applied : g->snap_index;
    if (init->hs.commit < init->applied)
        init->hs.commit = init->applied;
    *entries = es;
    *n = ne;
    return KV_OK;
}

/* --- snapshot install (receiver) --------------------------------------- */

/* A snapshot's records are put in place a slice per loop iteration, so the
 * node goes on serving its other shards meanwhile. The group is held for
 * the whole install: it takes no Ready, so it sends, persists and applies
 * nothing of its own (raft goes on stepping what arrives and answers once
 * the install is over, like a follower that was slow for a while), and its
 * stale reads go to the leader. The marker ("N" + shard: index, term,
 * phase) makes every step safe to redo after a crash. */
enum {
    INSTALL_DELETE = 1, /* delete the shard's records (marker phase 1) */
    INSTALL_MOVE,       /* move the staged ones in (marker phase 2) */
    INSTALL_COUNT       /* count the data keys now in place, then finish */
};

#define INSTALL_COUNT_SLICE (8 * INSTALL_BATCH) /* keys counted per slice */

/* What to do with one record in rewrite_slice(): add ops to B that remove
 * it (delete or move it). */
typedef void (*rewrite_fn)(void *arg, struct store_batch *b,
                           const unsigned char *k, size_t klen, const void *v,
                           size_t vlen);

/* Points C at key K (LEN bytes). */
static int cursor_set(struct cursor *c, const unsigned char *k, size_t len)
{
    unsigned char *x = realloc(c->key, len ? len : 1);
    if (!x)
        return KV_ENOMEM;
    memcpy(x, k, len);
    c->key = x;
    c->len = len;
    return KV_OK;
}

/* Seeks IT to C, or to PREFIX (PLEN bytes) when C is at the start. */
static void cursor_seek(struct store_iter *it, const struct cursor *c,
                        const unsigned char *prefix, size_t plen)
{
    if (c->len)
        store_iter_seek(it, c->key, c->len);
    else
        store_iter_seek(it, prefix, plen);
}

/* Visits up to LIMIT of the records whose keys start with PREFIX (PLEN
 * bytes), from cursor CUR on, with FN (which may add ops to B); *N gets how
 * many, *DONE whether none are left (CUR then points at the start
 * again). */
static int walk_slice(struct replica *r, const unsigned char *prefix,
                      size_t plen, size_t limit, rewrite_fn fn, void *arg,
                      struct store_batch *b, struct cursor *cur, size_t *n,
                      bool *done)
{
    struct store_iter *it = store_iter_new(r->store);
    if (!it)
        return KV_ENOMEM;
    int rc = KV_OK;
    *n = 0;
    *done = true;
    for (cursor_seek(it, cur, prefix, plen); store_iter_valid(it);
         store_iter_next(it)) {
        size_t klen, vlen;
        const unsigned char *k = store_iter_key(it, &klen);
        if (klen < plen || memcmp(k, prefix, plen) != 0)
            break;
        if (*n == limit) {
            rc = cursor_set(cur, k, klen);
            *done = false;
            break;
        }
        const void *v = store_iter_value(it, &vlen);
        fn(arg, b, k, klen, v, vlen);
        (*n)++;
    }
    if (rc == KV_OK)
        rc = store_iter_status(it);
    store_iter_free(it);
    if (*done)
        cur->len = 0;
    return rc;
}

/* Rewrites up to INSTALL_BATCH of the records under PREFIX from CUR on
 * (walk_slice) in one synced write. Synced, not left for a later synced
 * write to cover: LevelDB closes a full log file without syncing it, so
 * after a machine crash a later synced write (the next phase's marker) can
 * survive an earlier unsynced one, and a marker past deletes or moves that
 * were lost would leave the replica with other data than its peers. */
static int rewrite_slice(struct replica *r, const unsigned char *prefix,
                         size_t plen, rewrite_fn fn, void *arg,
                         struct cursor *cur, bool *done)
{
    struct store_batch *b = store_batch_new();
    if (!b)
        return KV_ENOMEM;
    size_t n;
    int rc =
        walk_slice(r, prefix, plen, INSTALL_BATCH, fn, arg, b, cur, &n, done);
    if (rc == KV_OK && n)
        rc = store_write(r->store, b, true);
    store_batch_free(b);
    return rc;
}

static void delete_record(void *arg, struct store_batch *b,
                          const unsigned char *k, size_t klen, const void *v,
                          size_t vlen)
{
    (void)v;
    (void)vlen;
    store_batch_del(b, k, klen);
    (*(uint64_t *)arg)++;
}

/* Moves a staged "Z" shard storekey record to storekey. */
static void move_staged(void *arg, struct store_batch *b,
                        const unsigned char *k, size_t klen, const void *v,
                        size_t vlen)
{
    store_batch_put(b, k + 5, klen - 5, v, vlen);
    store_batch_del(b, k, klen);
    (*(uint64_t *)arg)++;
}

static int write_install_marker(struct replica *r, uint32_t shard,
                                uint64_t index, uint64_t term, int phase)
{
    unsigned char k[5], v[17];
    shard_key(k, 'N', shard);
    put_u64(v, index);
    put_u64(v + 8, term);
    v[16] = (unsigned char)phase;
    struct store_batch *b = store_batch_new();
    if (!b)
        return KV_ENOMEM;
    store_batch_put(b, k, 5, v, sizeof(v));
    int rc = store_write(r->store, b, true);
    store_batch_free(b);
    return rc;
}

/* The monotonic clock in ms (the ticks' when the node gives none). */
static uint64_t mono_ms(const struct replica *r)
{
    return r->env.now_ms ? r->env.now_ms(r->env.arg)
                         : r->ticks * REPLICA_TICK_MS;
}

static void install_begin(struct replica *r, struct group *g, uint64_t index,
                          uint64_t term, int phase)
{
    g->inst = (struct install){.active = true,
                               .phase = phase,
                               .index = index,
                               .term = term,
                               .started_ms = mono_ms(r)};
    /* Snapshot streams are refused until this one is in place. */
    g->in = (struct snap_in){
        .complete = true, .from = 0, .index = index, .term = term};
}

static void count_record(void *arg, struct store_batch *b,
                         const unsigned char *k, size_t klen, const void *v,
                         size_t vlen)
{
    (void)b;
    (void)k;
    (void)klen;
    (void)v;
    (void)vlen;
    (*(uint64_t *)arg)++;
}

/* The data is in place: one synced write says so (the shard's applied
 * index and key count), removes the marker and the log entries the
 * snapshot covers (at most the replica's log before it: compaction keeps
 * that to about 1.2 x compact_log_entries entries), and the engine
 * starts over from it. */
static int install_finish(struct replica *r, struct group *g)
{
    struct install *in = &g->inst;
    struct store_batch *b = store_batch_new();
    struct store_iter *it = store_iter_new(r->store);
    if (!b || !it) {
        store_batch_free(b);
        store_iter_free(it);
        return KV_ENOMEM;
    }
    unsigned char ak[5], av[16], nk[5], lp[5];
    shard_key(ak, 'A', g->shard);
    put_u64(av, in->index);
    put_u64(av + 8, in->keys);
    store_batch_put(b, ak, 5, av, sizeof(av));
    shard_key(nk, 'N', g->shard);
    store_batch_del(b, nk, 5);
    shard_key(lp, 'L', g->shard);
    for (store_iter_seek(it, lp, 5); store_iter_valid(it);
         store_iter_next(it)) {
        size_t klen;
        const unsigned char *k = store_iter_key(it, &klen);
        if (klen != 13 || memcmp(k, lp, 5) != 0 || get_u64(k + 5) > in->index)
            break;
        store_batch_del(b, k, klen);
    }
    int rc = store_iter_status(it);
    store_iter_free(it);
    if (rc == KV_OK)
        rc = store_write(r->store, b, true);
    store_batch_free(b);
    if (rc == KV_OK)
        engine_reset_shard(r->engine, g->shard, in->index, in->keys);
    return rc;
}

/* Frees what an install holds (it may have ended or not). */
static void install_free(struct install *in)
{
    free(in->cur.key);
    for (size_t i = 0; i < in->ndeferred; i++)
        free(in->deferred[i].data);
    free(in->deferred);
    *in = (struct install){0};
}

/* Keeps a copy of committed entry E, applied once the install is over. */
static int install_defer(struct group *g, const struct raft_entry *e)
{
    struct install *in = &g->inst;
    if (in->ndeferred == in->capdeferred) {
        struct raft_entry *x = grow(in->deferred, &in->capdeferred, sizeof(*x));
        if (!x)
            return KV_ENOMEM;
        in->deferred = x;
    }
    void *data = NULL;
    if (e->len) {
        data = malloc(e->len);
        if (!data)
            return KV_ENOMEM;
        memcpy(data, e->data, e->len);
    }
    in->deferred[in->ndeferred] = *e;
    in->deferred[in->ndeferred++].data = data;
    return KV_OK;
}

/* One slice of G's install. A failure stops the node; a restart resumes
 * from the marker. */
static int install_step(struct replica *r, struct group *g)
{
    struct install *in = &g->inst;
    unsigned char p[5];
    bool done = false;
    int rc = KV_OK;
    switch (in->phase) {
    case INSTALL_DELETE:
        shard_key(p, SNAP_TAGS[in->tag], g->shard);
        rc = rewrite_slice(r, p, 5, delete_record, &in->deleted, &in->cur,
                           &done);
        if (rc != KV_OK || !done || ++in->tag < SNAP_NTAGS)
            return rc;
        rc = write_install_marker(r, g->shard, in->index, in->term, 2);
        in->phase = INSTALL_MOVE;
        return rc;
    case INSTALL_MOVE:
        shard_key(p, 'Z', g->shard);
        rc = rewrite_slice(r, p, 5, move_staged, &in->moved, &in->cur, &done);
        if (rc == KV_OK && done)
            in->phase = INSTALL_COUNT;
        return rc;
    default:
        shard_key(p, 'D', g->shard);
        size_t n;
        rc = walk_slice(r, p, 5, INSTALL_COUNT_SLICE, count_record, &in->keys,
                        NULL, &in->cur, &n, &done);
        if (rc != KV_OK || !done)
            return rc;
        rc = install_finish(r, g);
        if (rc != KV_OK)
            return rc;
        break;
    }
    /* Entries committed in the Ready that brought the snapshot. */
    for (size_t i = 0; i < in->ndeferred && rc == KV_OK; i++)
        rc = apply_entry(r, g, &in->deferred[i]);
    if (rc != KV_OK)
        return rc;
    uint64_t ms = mono_ms(r) - in->started_ms;
    log_msg(LOG_INFO, "installed a snapshot",
            "shard=%u index=%llu keys=%llu moved=%llu deleted=%llu ms=%llu",
            g->shard, (unsigned long long)in->index,
            (unsigned long long)in->keys, (unsigned long long)in->moved,
            (unsigned long long)in->deleted, (unsigned long long)ms);
    install_free(in);
    g->in = (struct snap_in){0};
    r->stats.snapshots_installed++;
    return KV_OK;
}

/* An install a crash interrupted goes on from its marker, if any. */
static int resume_install(struct replica *r, struct group *g)
{
    unsigned char k[5];
    shard_key(k, 'N', g->shard);
    void *v = NULL;
    size_t vlen = 0;
    int rc = store_get(r->store, k, 5, &v, &vlen);
    if (rc == KV_ENOTFOUND)
        return KV_OK;
    if (rc != KV_OK)
        return rc;
    if (vlen != 17) {
        free(v);
        return KV_ECORRUPT;
    }
    const unsigned char *p = v;
    uint64_t index = get_u64(p), term = get_u64(p + 8);
    int phase = p[16] == 2 ? INSTALL_MOVE : INSTALL_DELETE;
    free(v);
    log_msg(LOG_WARN, "resuming an interrupted snapshot install",
            "shard=%u index=%llu phase=%d", g->shard, (unsigned long long)index,
            phase);
    install_begin(r, g, index, term, phase);
    return KV_OK;
}

/* Raft accepted the staged snapshot: from one synced write on, the node's
 * state is "snapshot at INDEX" (the hard state with this Ready's term and
 * vote, the log without stale entries past it, the marker saying that the
 * data still has to be moved in), which a restart resumes from. The data
 * then moves in slices (install_step). */
static int install_snapshot(struct replica *r, struct group *g,
                            const struct raft_ready *rd)
{
    uint64_t index = rd->snap_index, term = rd->snap_term;
    if (!g->in.complete || g->in.index != index) {
        log_msg(LOG_ERROR, "raft installed a snapshot that is not staged",
                "shard=%u index=%llu", g->shard, (unsigned long long)index);
        return KV_EINTERNAL;
    }
    struct store_batch *b = store_batch_new();
    if (!b)
        return KV_ENOMEM;
    unsigned char hk[5], hv[HS_LEN], nk[5], nv[17];
    /* Entries past INDEX that this Ready brings are stored only with the
     * iteration's batch: until then the commit point stored is INDEX, and
     * no stale entry past it stays (stage_entry writes the new ones). The
     * Ready's whole hard state goes with that batch (replica_flush). */
    if (rd->hs_changed)
        g->hs = rd->hs;
    g->hs.commit = index;
    g->snap_index = index;
    g->snap_term = term;
    encode_hardstate(g, hk, hv);
    store_batch_put(b, hk, 5, hv, sizeof(hv));
    shard_key(nk, 'N', g->shard);
    put_u64(nv, index);
    put_u64(nv + 8, term);
    nv[16] = 1;
    store_batch_put(b, nk, 5, nv, sizeof(nv));
    for (uint64_t i = index + 1; i <= rd->truncate_after; i++) {
        unsigned char lk[13];
        log_key(lk, g->shard, i);
        store_batch_del(b, lk, sizeof(lk));
    }
    int rc = store_write(r->store, b, true);
    store_batch_free(b);
    if (rc != KV_OK)
        return rc;
    install_begin(r, g, index, term, INSTALL_DELETE);
    log_msg(LOG_INFO, "installing a snapshot", "shard=%u index=%llu", g->shard,
            (unsigned long long)index);
    return KV_OK;
}

/* Whether a stream left records staged for G's shard. */
static bool staged_left(struct replica *r, struct group *g)
{
    unsigned char z[5];
    shard_key(z, 'Z', g->shard);
    struct store_iter *it = store_iter_new(r->store);
    if (!it)
        return true; /* cleared in slices then, which tells the error */
    store_iter_seek(it, z, sizeof(z));
    bool left = false;
    if (store_iter_valid(it)) {
        size_t klen;
        const unsigned char *k = store_iter_key(it, &klen);
        left = klen >= 5 && memcmp(k, z, 5) == 0;
    }
    store_iter_free(it);
    return left;
}

/* Deletes the records a stream left staged ("Z" + shard) a slice per
 * iteration; a new stream waits until none are left (handle_chunk). */
static int clear_staged(struct replica *r, struct group *g)
{
    unsigned char z[5];
    uint64_t n = 0;
    bool done = false;
    shard_key(z, 'Z', g->shard);
    int rc = rewrite_slice(r, z, 5, delete_record, &n, &g->clear_cur, &done);
    if (rc == KV_OK && done)
        g->clearing = false;
    return rc;
}

/* --- snapshot streaming (sender) --------------------------------------- */

static void snap_out_end(struct replica *r, struct group *g, struct snap_out *o,
                         bool ok)
{
    store_iter_free(o->it);
    o->it = NULL;
    if (o->active)
        raft_report_snapshot(g->raft, o->peer, ok);
    o->active = false;
    (void)r;
}

static void send_peer(struct replica *r, uint32_t to, Kv__PeerBatch *b)
{
    b->from = r->id;
    b->cluster = r->conf->cluster;
    b->boot_id = r->boot_id;
    b->features = FEATURES;
    b->sent_ms = txn_wall(r);
    /* Now and then, the plugins this node loaded (their hashes). */
    const struct conf_node *node = node_of(r, to);
    size_t pi = node ? (size_t)(node - r->conf->nodes) : 0;
    size_t np = 0;
    const struct proc_plugin *pl =
        r->env.procs ? proc_plugins(r->env.procs, &np) : NULL;
    Kv__PluginHash hs[PROC_MAX_PLUGINS], *hp[PROC_MAX_PLUGINS];
    if (node && r->env.procs &&
        (!r->plugins_sent[pi] ||
         r->ticks >= r->plugins_sent[pi] + PLUGINS_EVERY_TICKS)) {
        for (size_t i = 0; i < np && i < PROC_MAX_PLUGINS; i++) {
            kv__plugin_hash__init(&hs[i]);
            hs[i].name = (char *)pl[i].name;
            hs[i].hash.data = (uint8_t *)pl[i].hash;
            hs[i].hash.len = PROC_HASH_LEN;
            hp[i] = &hs[i];
        }
        b->has_plugins = true;
        b->plugins = hp;
        b->n_plugins = np < PROC_MAX_PLUGINS ? np : PROC_MAX_PLUGINS;
        r->plugins_sent[pi] = r->ticks + 1;
    }
    void *buf;
    size_t len;
    int rc = wire_encode_peer(b, &buf, &len);
    b->has_plugins = false;
    b->plugins = NULL;
    b->n_plugins = 0;
    if (rc != KV_OK)
        return;
    r->env.send(r->env.arg, to, buf, len);
    free(buf);
}

/* Starts streaming the shard's applied state to PEER. */
static void snap_out_start(struct replica *r, struct group *g,
                           struct snap_out *o, uint32_t peer)
{
    if (o->active)
        return;
    struct store_iter *it = store_iter_new(r->store);
    if (!it) {
        raft_report_snapshot(g->raft, peer, false);
        return;
    }
    /* The applied index that this store snapshot reflects. */
    unsigned char ak[5];
    shard_key(ak, 'A', g->shard);
    store_iter_seek(it, ak, 5);
    uint64_t index = 0;
    size_t klen, vlen;
    if (store_iter_valid(it)) {
        const unsigned char *k = store_iter_key(it, &klen);
        const unsigned char *v = store_iter_value(it, &vlen);
        if (klen == 5 && memcmp(k, ak, 5) == 0 && vlen == 16)
            index = get_u64(v);
    }
    uint64_t term = raft_term_at(g->raft, index);
    if (index == 0 || term == 0) {
        store_iter_free(it);
        raft_report_snapshot(g->raft, peer, false);
        return;
    }
    *o = (struct snap_out){
        .active = true, .peer = peer, .index = index, .term = term, .it = it};
    unsigned char dk[5];
    shard_key(dk, 'D', g->shard);
    store_iter_seek(it, dk, 5);
    r->stats.snapshots_sent++;
    log_msg(LOG_INFO, "streaming a snapshot", "shard=%u to=%u index=%llu",
            g->shard, peer, (unsigned long long)index);
}

/* Sends the next chunks of a stream, within its window. */
static void snap_out_pump(struct replica *r, struct group *g,
                          struct snap_out *o)
{
    while (o->active && !o->sent_last && o->next_seq < o->acked + SNAP_WINDOW) {
        Kv__Entry *recs = NULL, **ptrs = NULL;
        size_t n = 0, cap = 0, bytes = 0;
        bool ok = true;
        size_t target = r->conf->max_message_bytes / 4 < SNAP_CHUNK_BYTES
                            ? r->conf->max_message_bytes / 4
                            : SNAP_CHUNK_BYTES;
        size_t limit = r->conf->max_message_bytes - 1024;
        while (o->phase < SNAP_NTAGS && bytes < target) {
            unsigned char want[5];
            shard_key(want, SNAP_TAGS[o->phase], g->shard);
            size_t klen, vlen;
            if (!store_iter_valid(o->it) ||
                (store_iter_key(o->it, &klen), klen < 5) ||
                memcmp(store_iter_key(o->it, &klen), want, 5) != 0) {
                if (store_iter_status(o->it) != KV_OK) {
                    ok = false;
                    break;
                }
                o->phase++;
                if (o->phase < SNAP_NTAGS) {
                    shard_key(want, SNAP_TAGS[o->phase], g->shard);
                    store_iter_seek(o->it, want, 5);
                }
                continue;
            }
            if (n == cap) {
                size_t c2 = cap;
                Kv__Entry *x = grow(recs, &c2, sizeof(*recs));
                if (!x) {
                    ok = false;
                    break;
                }
                recs = x;
                cap = c2;
            }
            const void *k = store_iter_key(o->it, &klen);
            const void *v = store_iter_value(o->it, &vlen);
            if (n > 0 && bytes + klen + vlen + 16 > limit)
                break; /* the next chunk takes it */
            kv__entry__init(&recs[n]);
            /* Copies: the iterator's memory moves on with next(). */
            void *copy = malloc(klen + vlen + 1);
            if (!copy) {
                ok = false;
                break;
            }
            memcpy(copy, k, klen);
            memcpy((char *)copy + klen, v, vlen);
            recs[n].key.data = copy;
            recs[n].key.len = klen;
            recs[n].value.data = (uint8_t *)copy + klen;
            recs[n].value.len = vlen;
            n++;
            bytes += klen + vlen + 16;
            store_iter_next(o->it);
        }
        if (ok && n)
            ok = (ptrs = malloc(n * sizeof(*ptrs))) != NULL;
        if (ok) {
            for (size_t i = 0; i < n; i++)
                ptrs[i] = &recs[i];
            Kv__SnapshotChunk c = KV__SNAPSHOT_CHUNK__INIT;
            Kv__SnapshotChunk *cp = &c;
            c.shard = g->shard;
            c.index = o->index;
            c.term = o->term;
            c.seq = o->next_seq++;
            c.n_records = n;
            c.records = ptrs;
            c.last = o->phase >= SNAP_NTAGS;
            c.leader_term = g->hs.term;
            c.to = o->peer;
            Kv__PeerBatch b = KV__PEER_BATCH__INIT;
            b.n_chunks = 1;
            b.chunks = &cp;
            send_peer(r, o->peer, &b);
            o->sent_last = c.last;
        }
        for (size_t i = 0; i < n; i++)
            free(recs[i].key.data);
        free(recs);
        free(ptrs);
        if (!ok) {
            log_msg(LOG_WARN, "snapshot stream failed", "shard=%u to=%u",
                    g->shard, o->peer);
            snap_out_end(r, g, o, false);
        }
    }
}

/* --- groups ------------------------------------------------------------- */

static void group_free(struct group *g)
{
    if (!g)
        return;
    raft_free(g->raft);
    for (size_t i = 0; i < g->nwaiters; i++) {
        free(g->waiters[i].client);
        free(g->waiters[i].versions);
        free(g->waiters[i].reply);
        wire_free(g->waiters[i].env);
    }
    free(g->waiters);
    for (size_t i = 0; i < g->ncalls; i++) {
        free(g->calls[i].client);
        wire_free(g->calls[i].env);
    }
    free(g->calls);
    pending_free(g->pend);
    for (size_t i = 0; i < g->nreads; i++) {
        free(g->reads[i].client);
        wire_free(g->reads[i].env);
    }
    free(g->reads);
    for (size_t i = 0; g->out && i < g->nmembers; i++)
        store_iter_free(g->out[i].it);
    free(g->out);
    install_free(&g->inst);
    free(g->clear_cur.key);
    free(g);
}

static int group_open(struct replica *r, uint32_t shard, uint64_t seed,
                      struct group **out)
{
    struct group *g = calloc(1, sizeof(*g));
    if (!g)
        return KV_ENOMEM;
    g->shard = shard;
    for (uint32_t i = 0; i < r->conf->replicas; i++)
        g->members[g->nmembers++] =
            r->conf->nodes[conf_replica(r->conf, shard, i)].id;
    g->out = calloc(g->nmembers, sizeof(*g->out));
    g->pend = pending_new();
    if (!g->out || !g->pend) {
        free(g->out);
        pending_free(g->pend);
        free(g);
        return KV_ENOMEM;
    }
    int rc = resume_install(r, g);
    struct raft_init init = {0};
    struct raft_entry *es = NULL;
    size_t ne = 0;
    if (rc == KV_OK)
        rc = load_group(r, g, &init, &es, &ne);
    if (rc == KV_OK) {
        unsigned char rk[5];
        void *v = NULL;
        size_t vlen = 0;
        shard_key(rk, 'R', shard);
        rc = store_get(r->store, rk, sizeof(rk), &v, &vlen);
        free(v);
        g->rebuilt = rc == KV_OK;
        if (rc == KV_ENOTFOUND)
            rc = KV_OK;
    }
    if (rc != KV_OK) {
        for (size_t i = 0; i < ne; i++)
            free(es[i].data);
        free(es);
        group_free(g);
        return rc;
    }
    init.no_vote_until_leader = g->rebuilt;
    if (g->rebuilt)
        log_msg(LOG_INFO, "rebuilt replica: no vote until a current leader",
                "shard=%u term=%llu", shard, (unsigned long long)g->hs.term);
    struct raft_config cfg = {.id = r->id,
                              .peers = g->members,
                              .npeers = g->nmembers,
                              .election_ticks = ELECTION_TICKS,
                              .heartbeat_ticks = HEARTBEAT_TICKS,
                              .seed = seed ^ ((uint64_t)shard << 32),
                              .max_inflight = MAX_INFLIGHT,
                              .max_msg_bytes =
                                  r->conf->max_message_bytes / 4 < MAX_MSG_BYTES
                                      ? r->conf->max_message_bytes / 4
                                      : MAX_MSG_BYTES,
                              .pre_vote = true,
                              .check_quorum = true,
                              .boot_quiet = true};
    g->raft = raft_new(&cfg, &init);
    for (size_t i = 0; i < ne; i++)
        free(es[i].data);
    free(es);
    if (!g->raft) {
        group_free(g);
        return KV_ENOMEM;
    }
    /* A group of one elects itself at once. */
    if (g->nmembers == 1)
        raft_campaign(g->raft);
    *out = g;
    return KV_OK;
}

/* --- client requests ---------------------------------------------------- */

static int add_waiter(struct replica *r, struct group *g, uint64_t index,
                      uint64_t term, const void *client, size_t clen,
                      uint64_t req_id)
{
    if (g->nwaiters == g->capwaiters) {
        struct waiter *w = grow(g->waiters, &g->capwaiters, sizeof(*w));
        if (!w)
            return KV_ENOMEM;
        g->waiters = w;
    }
    unsigned char *c = malloc(clen ? clen : 1);
    if (!c)
        return KV_ENOMEM;
    memcpy(c, client, clen);
    g->waiters[g->nwaiters++] = (struct waiter){.index = index,
                                                .term = term,
                                                .client = c,
                                                .clen = clen,
                                                .req_id = req_id};
    r->total_waiters++;
    return KV_OK;
}

static bool key_ok(struct replica *r, const void *client, size_t clen,
                   uint64_t req_id, const ProtobufCBinaryData *key)
{
    char msg[96];
    if (key->len == 0) {
        reply_code(r, client, clen, req_id, KV_EINVAL, "empty key");
        return false;
    }
    if (key->len > r->conf->max_key_bytes) {
        snprintf(msg, sizeof(msg), "key of %zu bytes over the limit of %llu",
                 key->len, (unsigned long long)r->conf->max_key_bytes);
        reply_code(r, client, clen, req_id, KV_ETOOBIG, msg);
        return false;
    }
    return true;
}

/* Whether REQ's session can be recorded (engine_session_ok), checked
 * before anything is proposed; SESSION_RULE says why not. */
#define SESSION_RULE                                                           \
    "a sequence number needs a client id of 1 to 64 bytes and must be "        \
    "below 2^63"
static bool session_ok(const Kv__Request *req)
{
    return engine_session_ok(req->client_id.data, req->client_id.len, req->seq);
}

/* Until when a write proposed now keeps its session: session_ttl_s, or
 * twice the write's own timeout (TIMEOUT_MS, 0: request_timeout_ms) when
 * that is longer, so that no copy of the write that its client sends can
 * come after the session went (docs/replication.md, "Sessions expire"). */
static uint64_t session_until(struct replica *r, uint32_t timeout_ms)
{
    if (!timeout_ms)
        timeout_ms = r->conf->request_timeout_ms;
    uint64_t keep = (uint64_t)r->conf->session_ttl_s * 1000;
    if (2 * (uint64_t)timeout_ms > keep)
        keep = 2 * (uint64_t)timeout_ms;
    return txn_wall(r) + keep;
}

/* Gives CMD, proposed on G for REQ, the client's session: its id and
 * sequence number, and until when the shard keeps it (once every replica
 * of G knows session expiry). */
static void set_session(struct replica *r, const struct group *g,
                        const Kv__Request *req, Kv__Command *cmd)
{
    cmd->client_id = req->client_id;
    cmd->seq = req->seq;
    if (req->seq && group_has(r, g, FEATURE_SESSION_EXPIRY))
        cmd->session_until_ms = session_until(r, req->timeout_ms);
}

/* How often a leader starts a pass of session expiry over a shard: every
 * half session lifetime, at least once a minute. */
#define SESSION_GC_MAX_EVERY_MS 60000
static uint64_t session_gc_every(const struct replica *r)
{
    uint64_t half = (uint64_t)r->conf->session_ttl_s * 500;
    return half < SESSION_GC_MAX_EVERY_MS ? half : SESSION_GC_MAX_EVERY_MS;
}

/* Proposes CMD (a client's write or single-shard transaction) on SHARD's
 * group and registers the client to be answered when it is applied: the
 * waiter, or NULL when the client was answered already. */
static struct waiter *propose_command(struct replica *r, const void *client,
                                      size_t clen, const Kv__Request *req,
                                      uint32_t shard, Kv__Command *cmd)
{
    if (!session_ok(req)) {
        reply_code(r, client, clen, req->id, KV_EINVAL, SESSION_RULE);
        return NULL;
    }
    struct group *g = r->groups[shard];
    if (!g || g->role != RAFT_LEADER) {
        reply_redirect(r, client, clen, req->id, shard);
        return NULL;
    }
    if (r->total_waiters >= MAX_WAITERS) {
        reply_code(r, client, clen, req->id, KV_EUNAVAILABLE,
                   "too many writes in flight; retry");
        return NULL;
    }
    set_session(r, g, req, cmd);
    size_t n = kv__command__get_packed_size(cmd);
    if (scratch_reserve(r, n ? n : 1) != KV_OK) {
        reply_code(r, client, clen, req->id, KV_ENOMEM, "out of memory");
        return NULL;
    }
    kv__command__pack(cmd, r->scratch);
    uint64_t index = 0;
    int rc = raft_propose(g->raft, r->scratch, n, &index);
    if (rc == RAFT_ENOTLEADER || rc == RAFT_EBUSY) {
        reply_redirect(r, client, clen, req->id, shard);
        return NULL;
    }
    if (rc != RAFT_OK || add_waiter(r, g, index, raft_term_at(g->raft, index),
                                    client, clen, req->id) != KV_OK) {
        /* Proposed (perhaps) but nobody will be told the outcome: the
         * client retries, and its session makes the retry safe. */
        reply_code(r, client, clen, req->id, KV_EUNAVAILABLE,
                   "out of memory here; outcome unknown, retry");
        return NULL;
    }
    note_pending(g, index, cmd);
    struct waiter *w = &g->waiters[g->nwaiters - 1];
    w->kind = cmd->op_case == KV__COMMAND__OP_EFFECT        ? W_CALL
              : cmd->op_case == KV__COMMAND__OP_TXN         ? W_TXN
              : cmd->op_case == KV__COMMAND__OP_TXN_PREPARE ? W_PREPARE
              : cmd->op_case == KV__COMMAND__OP_TXN_RESOLVE ? W_RESOLVE
              : cmd->op_case == KV__COMMAND__OP_TXN_RECORD ||
                      cmd->op_case == KV__COMMAND__OP_TXN_DECIDE
                  ? W_STATE
                  : W_WRITE;
    r->stats.proposals++;
    return w;
}

static void handle_write(struct replica *r, const void *client, size_t clen,
                         const Kv__Request *req)
{
    const ProtobufCBinaryData *key;
    Kv__Command cmd = KV__COMMAND__INIT;
    if (req->op_case == KV__REQUEST__OP_PUT) {
        const Kv__PutRequest *p = req->put;
        key = &p->key;
        if (p->if_version && p->if_absent) {
            reply_code(r, client, clen, req->id, KV_EINVAL,
                       "if_version and if_absent exclude each other");
            return;
        }
        if (p->value.len > r->conf->max_value_bytes) {
            char msg[96];
            snprintf(msg, sizeof(msg),
                     "value of %zu bytes over the limit of %llu", p->value.len,
                     (unsigned long long)r->conf->max_value_bytes);
            reply_code(r, client, clen, req->id, KV_ETOOBIG, msg);
            return;
        }
        cmd.op_case = KV__COMMAND__OP_PUT;
        cmd.put = req->put;
    } else {
        key = &req->del->key;
        cmd.op_case = KV__COMMAND__OP_DEL;
        cmd.del = req->del;
    }
    if (!key_ok(r, client, clen, req->id, key))
        return;
    propose_command(r, client, clen, req,
                    shard_of(key->data, key->len, r->conf->shards), &cmd);
}

/* Checks a transaction's ops (keys, values, condition versions); on a
 * problem answers the client and returns false. *SHARD is the home shard:
 * that of the first write (of the first op when nothing is written), and
 * *SINGLE whether every key is on it. */
static bool txn_ok(struct replica *r, const void *client, size_t clen,
                   const Kv__Request *req, uint32_t *shard, bool *single)
{
    const Kv__TxnRequest *t = req->txn;
    char msg[128];
    if (t->n_ops == 0) {
        reply_code(r, client, clen, req->id, KV_EINVAL,
                   "a transaction needs at least one op");
        return false;
    }
    if (t->n_ops > r->conf->max_txn_ops) {
        snprintf(msg, sizeof(msg),
                 "a transaction of %zu ops is over the limit of %llu", t->n_ops,
                 (unsigned long long)r->conf->max_txn_ops);
        reply_code(r, client, clen, req->id, KV_ETOOBIG, msg);
        return false;
    }
    size_t bytes = 0;
    for (size_t i = 0; i < t->n_ops; i++)
        bytes += t->ops[i]->key.len + t->ops[i]->value.len;
    if (bytes > r->conf->max_txn_bytes) {
        snprintf(msg, sizeof(msg),
                 "a transaction of %zu key and value bytes is over the "
                 "limit of %llu",
                 bytes, (unsigned long long)r->conf->max_txn_bytes);
        reply_code(r, client, clen, req->id, KV_ETOOBIG, msg);
        return false;
    }
    size_t home = 0;
    bool found = false;
    for (size_t i = 0; i < t->n_ops; i++) {
        const Kv__TxnOp *op = t->ops[i];
        if (!key_ok(r, client, clen, req->id, &op->key))
            return false;
        if (op->kind == KV__TXN_OP__KIND__PUT &&
            op->value.len > r->conf->max_value_bytes) {
            snprintf(msg, sizeof(msg),
                     "op %zu: value of %zu bytes over the limit of %llu", i + 1,
                     op->value.len,
                     (unsigned long long)r->conf->max_value_bytes);
            reply_code(r, client, clen, req->id, KV_ETOOBIG, msg);
            return false;
        }
        if ((op->kind == KV__TXN_OP__KIND__IF_VERSION && op->version == 0) ||
            op->kind < KV__TXN_OP__KIND__PUT ||
            op->kind > KV__TXN_OP__KIND__IF_ABSENT) {
            snprintf(msg, sizeof(msg), "op %zu: %s", i + 1,
                     op->kind == KV__TXN_OP__KIND__IF_VERSION
                         ? "if-version needs a version above 0"
                         : "unknown kind");
            reply_code(r, client, clen, req->id, KV_EINVAL, msg);
            return false;
        }
        if (!found && (op->kind == KV__TXN_OP__KIND__PUT ||
                       op->kind == KV__TXN_OP__KIND__DEL)) {
            home = i;
            found = true;
        }
    }
    *shard = shard_of(t->ops[home]->key.data, t->ops[home]->key.len,
                      r->conf->shards);
    *single = true;
    for (size_t i = 0; i < t->n_ops; i++)
        if (shard_of(t->ops[i]->key.data, t->ops[i]->key.len,
                     r->conf->shards) != *shard)
            *single = false;
    return true;
}

/* A two-phase commit step from a coordinator: checked, then proposed on
 * the shard it names (the clock of this leader goes into the entry where
 * a deadline is compared, so every replica decides alike). */
static void handle_txn_step(struct replica *r, const void *client, size_t clen,
                            const Kv__Request *req)
{
    Kv__Command cmd = KV__COMMAND__INIT;
    const ProtobufCBinaryData *id;
    uint32_t shard;
    switch (req->op_case) {
    case KV__REQUEST__OP_TXN_PREPARE: {
        Kv__TxnPrepare *p = req->txn_prepare;
        id = &p->txn_id;
        shard = p->shard;
        if (p->n_ops == 0 || p->home >= r->conf->shards) {
            reply_code(r, client, clen, req->id, KV_EINVAL,
                       "bad prepare: no ops or no such home shard");
            return;
        }
        for (size_t i = 0; i < p->n_ops; i++) {
            const Kv__TxnOp *op = p->ops[i];
            if (!key_ok(r, client, clen, req->id, &op->key))
                return;
            if (shard_of(op->key.data, op->key.len, r->conf->shards) != shard ||
                op->kind < KV__TXN_OP__KIND__PUT ||
                op->kind > KV__TXN_OP__KIND__IF_ABSENT ||
                (op->kind == KV__TXN_OP__KIND__IF_VERSION && !op->version) ||
                op->value.len > r->conf->max_value_bytes) {
                reply_code(r, client, clen, req->id, KV_EINVAL,
                           "bad prepare: an op is not of this shard or "
                           "malformed");
                return;
            }
        }
        p->now_ms = txn_wall(r);
        cmd.op_case = KV__COMMAND__OP_TXN_PREPARE;
        cmd.txn_prepare = p;
        break;
    }
    case KV__REQUEST__OP_TXN_RESOLVE:
        id = &req->txn_resolve->txn_id;
        shard = req->txn_resolve->shard;
        /* dates the tombstone when nothing was prepared */
        req->txn_resolve->now_ms = txn_wall(r);
        cmd.op_case = KV__COMMAND__OP_TXN_RESOLVE;
        cmd.txn_resolve = req->txn_resolve;
        break;
    case KV__REQUEST__OP_TXN_RECORD:
        id = &req->txn_record->txn_id;
        shard = req->txn_record->shard;
        if (req->txn_record->n_parts == 0 ||
            req->txn_record->n_parts > r->conf->shards) {
            reply_code(r, client, clen, req->id, KV_EINVAL,
                       "bad record: participants");
            return;
        }
        cmd.op_case = KV__COMMAND__OP_TXN_RECORD;
        cmd.txn_record = req->txn_record;
        break;
    default: /* KV__REQUEST__OP_TXN_DECIDE */
        id = &req->txn_decide->txn_id;
        shard = req->txn_decide->shard;
        if (req->txn_decide->want > 3) {
            reply_code(r, client, clen, req->id, KV_EINVAL, "bad decide: want");
            return;
        }
        req->txn_decide->now_ms = txn_wall(r);
        cmd.op_case = KV__COMMAND__OP_TXN_DECIDE;
        cmd.txn_decide = req->txn_decide;
        break;
    }
    if (id->len != ENGINE_TXN_ID_LEN || shard >= r->conf->shards) {
        reply_code(r, client, clen, req->id, KV_EINVAL,
                   "bad transaction id or shard");
        return;
    }
    propose_command(r, client, clen, req, shard, &cmd);
}

static void handle_txn(struct replica *r, const void *client, size_t clen,
                       const Kv__Request *req)
{
    uint32_t shard;
    bool single;
    if (!txn_ok(r, client, clen, req, &shard, &single))
        return;
    if (!single) {
        struct group *g = r->groups[shard];
        if (!g || g->role != RAFT_LEADER) {
            reply_redirect(r, client, clen, req->id, shard);
            return;
        }
        if (!session_ok(req)) {
            reply_code(r, client, clen, req->id, KV_EINVAL, SESSION_RULE);
            return;
        }
        uint64_t seq = 0, ver = 0;
        int code = 0;
        if (req->seq &&
            engine_session(r->engine, shard, req->client_id.data,
                           req->client_id.len, &seq, &code, &ver) == KV_OK &&
            seq >= req->seq) {
            /* Decided before (and forgotten since): the same outcome. The
             * versions of that first answer are not kept: 0 (unknown). */
            Kv__Response resp = KV__RESPONSE__INIT;
            Kv__TxnResult res = KV__TXN_RESULT__INIT;
            uint64_t *zeros = calloc(req->txn->n_ops, sizeof(*zeros));
            if (!zeros) {
                reply_code(r, client, clen, req->id, KV_ENOMEM,
                           "out of memory");
                return;
            }
            resp.id = req->id;
            resp.code = code;
            resp.message = code == KV_OK ? "" : "aborted";
            if (code == KV_OK) {
                res.versions = zeros;
                res.n_versions = req->txn->n_ops;
            }
            resp.result_case = KV__RESPONSE__RESULT_TXN;
            resp.txn = &res;
            answer_to(r, client, clen, &resp);
            free(zeros);
            return;
        }
        txns_start(r->txns, client, clen, req, shard);
        return;
    }
    Kv__Command cmd = KV__COMMAND__INIT;
    cmd.op_case = KV__COMMAND__OP_TXN;
    cmd.txn = req->txn;
    propose_command(r, client, clen, req, shard, &cmd);
}

/* Serves a read (get or scan) from this node's applied state. */ /* Serves a
                                                                     read (get
                                                                     or scan)
                                                                     from this
                                                                     node's
                                                                     applied
                                                                     state. */
static void serve_read(struct replica *r, const void *client, size_t clen,
                       const Kv__Request *req);

/* Remembers when a leader's heartbeat rounds go out (before they are
 * sent, so the lease counts from no later than a follower's receipt). */
static void note_heartbeats(struct replica *r, struct group *g,
                            const struct raft_ready *rd)
{
    if (!r->env.now_ms || rd->role != RAFT_LEADER)
        return;
    uint64_t now = 0;
    for (size_t i = 0; i < rd->n_msgs; i++) {
        const struct raft_msg *m = &rd->msgs[i];
        if (m->type != RAFT_MSG_HEARTBEAT || !m->context)
            continue;
        size_t slot = m->context % (sizeof(g->hb_sent) / sizeof(g->hb_sent[0]));
        if (g->hb_sent[slot].term == m->term &&
            g->hb_sent[slot].round == m->context)
            continue;
        if (!now)
            now = r->env.now_ms(r->env.arg);
        g->hb_sent[slot].term = m->term;
        g->hb_sent[slot].round = m->context;
        g->hb_sent[slot].at = now;
    }
}

/* The read point of a linearizable read served under the leader's lease,
 * or 0 when there is no lease now (the read takes a ReadIndex round). */
static uint64_t lease_read_index(struct replica *r, struct group *g)
{
    uint64_t term, round, commit;
    if (!r->env.now_ms || !raft_lease(g->raft, &term, &round, &commit))
        return 0;
    size_t slot = round % (sizeof(g->hb_sent) / sizeof(g->hb_sent[0]));
    if (g->hb_sent[slot].term != term || g->hb_sent[slot].round != round)
        return 0;
    if (r->env.now_ms(r->env.arg) >= g->hb_sent[slot].at + REPLICA_LEASE_MS)
        return 0;
    return commit;
}

static void handle_read(struct replica *r, const void *client, size_t clen,
                        Kv__Envelope *env)
{
    const Kv__Request *req = env->request;
    uint32_t shard;
    bool stale;
    if (req->op_case == KV__REQUEST__OP_GET) {
        if (!key_ok(r, client, clen, req->id, &req->get->key))
            goto done;
        shard =
            shard_of(req->get->key.data, req->get->key.len, r->conf->shards);
        stale = req->get->stale;
    } else if (req->op_case == KV__REQUEST__OP_CALL) {
        const Kv__CallRequest *c = req->call;
        shard = c->part ? c->shard
                        : shard_of(c->key.data, c->key.len, r->conf->shards);
        stale = false;
    } else {
        shard = req->scan->shard;
        if (shard >= r->conf->shards) {
            reply_code(r, client, clen, req->id, KV_EINVAL, "no such shard");
            goto done;
        }
        stale = req->scan->stale;
    }
    struct group *g = r->groups[shard];
    /* A replica installing a snapshot has part of the shard's data only. */
    if (!g || (!stale && g->role != RAFT_LEADER) || g->inst.active) {
        reply_redirect(r, client, clen, req->id, shard);
        goto done;
    }
    uint64_t at = stale ? 0 : lease_read_index(r, g);
    if (stale || (at && at <= engine_applied(r->engine, shard))) {
        serve_read(r, client, clen, req);
        if (at)
            r->stats.lease_reads++;
        goto done;
    }
    if (g->nreads == g->capreads) {
        struct pending_read *p = grow(g->reads, &g->capreads, sizeof(*p));
        if (!p) {
            reply_code(r, client, clen, req->id, KV_ENOMEM, "out of memory");
            goto done;
        }
        g->reads = p;
    }
    unsigned char *c = malloc(clen ? clen : 1);
    if (!c) {
        reply_code(r, client, clen, req->id, KV_ENOMEM, "out of memory");
        goto done;
    }
    memcpy(c, client, clen);
    /* Under a lease a read waits only for the apply of its read point;
     * otherwise it waits for a ReadIndex round (start_reads). */
    g->reads[g->nreads++] = (struct pending_read){.env = env,
                                                  .client = c,
                                                  .clen = clen,
                                                  .ctx = at ? UINT64_MAX : 0,
                                                  .index = at,
                                                  .indexed = at != 0};
    return; /* the read owns ENV now */
done:
    wire_free(env);
}

void replica_request(struct replica *r, const void *client, size_t clen,
                     Kv__Envelope *env)
{
    const Kv__Request *req = env->request;
    switch (req->op_case) {
    case KV__REQUEST__OP_PUT:
    case KV__REQUEST__OP_DEL:
        handle_write(r, client, clen, req);
        break;
    case KV__REQUEST__OP_TXN:
        handle_txn(r, client, clen, req);
        break;
    case KV__REQUEST__OP_TXN_PREPARE:
    case KV__REQUEST__OP_TXN_RESOLVE:
    case KV__REQUEST__OP_TXN_RECORD:
    case KV__REQUEST__OP_TXN_DECIDE: {
        /* Steps of two-phase commit come only from nodes (their calls
         * travel in PeerBatch); a client cannot name such an address. */
        uint32_t from;
        if (!is_peer_addr(client, clen, &from))
            reply_code(r, client, clen, req->id, KV_EINVAL,
                       "transaction steps are for nodes only");
        else
            handle_txn_step(r, client, clen, req);
        break;
    }
    case KV__REQUEST__OP_GET:
    case KV__REQUEST__OP_SCAN:
        handle_read(r, client, clen, env);
        return;
    case KV__REQUEST__OP_CALL:
        handle_call(r, client, clen, env);
        return;
    default:
        reply_code(r, client, clen, req->id, KV_EPROTO, "unknown operation");
        break;
    }
    wire_free(env);
}

/* --- reads -------------------------------------------------------------- */

struct scan_reply {
    Kv__Entry *entries;
    unsigned char **copies;
    size_t n, cap;
    size_t bytes, budget;
};

static int scan_collect(void *arg, const void *key, size_t klen,
                        const void *val, size_t vlen, uint64_t version)
{
    struct scan_reply *s = arg;
    if (s->n > 0 && s->bytes + klen + vlen + 32 > s->budget)
        return 1; /* the reply would outgrow a message */
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        Kv__Entry *e = realloc(s->entries, cap * sizeof(*e));
        if (!e)
            return KV_ENOMEM;
        s->entries = e;
        unsigned char **c = realloc(s->copies, cap * sizeof(*c));
        if (!c)
            return KV_ENOMEM;
        s->copies = c;
        s->cap = cap;
    }
    unsigned char *copy = malloc(klen + vlen + 1);
    if (!copy)
        return KV_ENOMEM;
    memcpy(copy, key, klen);
    if (vlen)
        memcpy(copy + klen, val, vlen);
    Kv__Entry e = KV__ENTRY__INIT;
    e.key.data = copy;
    e.key.len = klen;
    e.value.data = copy + klen;
    e.value.len = vlen;
    e.version = version;
    s->entries[s->n] = e;
    s->copies[s->n] = copy;
    s->n++;
    s->bytes += klen + vlen + 32;
    return 0;
}

static void serve_scan(struct replica *r, const void *client, size_t clen,
                       const Kv__Request *req)
{
    const Kv__ScanRequest *q = req->scan;
    uint64_t limit = q->limit && q->limit < 4096 ? q->limit : 4096;
    struct engine_scan sc = {.shard = q->shard,
                             .start = q->start.data,
                             .start_len = q->start.len,
                             .end = q->end.data,
                             .end_len = q->end.len,
                             .prefix = q->prefix.data,
                             .prefix_len = q->prefix.len,
                             .after = q->after.data,
                             .after_len = q->after.len,
                             .has_after = q->has_after,
                             .limit = limit};
    struct scan_reply s = {.budget = r->conf->max_message_bytes - 1024};
    if (s.budget > (1u << 20))
        s.budget = 1u << 20;
    bool more = false;
    Kv__Entry **ptrs = NULL;
    int rc = engine_scan(r->engine, &sc, scan_collect, &s, &more);
    if (rc == 1) {
        more = true;
        rc = KV_OK;
    }
    if (rc == KV_OK && !(ptrs = malloc((s.n ? s.n : 1) * sizeof(*ptrs))))
        rc = KV_ENOMEM;
    if (rc != KV_OK) {
        reply_code(r, client, clen, req->id, rc, "scan failed");
    } else {
        for (size_t i = 0; i < s.n; i++)
            ptrs[i] = &s.entries[i];
        Kv__ScanResult res = KV__SCAN_RESULT__INIT;
        res.n_entries = s.n;
        res.entries = ptrs;
        res.more = more;
        Kv__Response resp = KV__RESPONSE__INIT;
        resp.id = req->id;
        resp.result_case = KV__RESPONSE__RESULT_SCAN;
        resp.scan = &res;
        answer_to(r, client, clen, &resp);
    }
    for (size_t i = 0; i < s.n; i++)
        free(s.copies[i]);
    free(s.copies);
    free(s.entries);
    free(ptrs);
}

/* Answers a get with VAL/VLEN at VER, or not found when VER is 0. */
static void answer_get(struct replica *r, const void *client, size_t clen,
                       uint64_t id, const void *val, size_t vlen, uint64_t ver)
{
    if (!ver) {
        reply_code(r, client, clen, id, KV_ENOTFOUND, "");
        return;
    }
    Kv__Response resp = KV__RESPONSE__INIT;
    Kv__GetResult res = KV__GET_RESULT__INIT;
    res.value.data = (uint8_t *)val;
    res.value.len = vlen;
    res.version = ver;
    resp.id = id;
    resp.result_case = KV__RESPONSE__RESULT_GET;
    resp.get = &res;
    answer_to(r, client, clen, &resp);
}

/* A get that met an intent waits for the transaction's state. */
struct parked {
    unsigned char *client;
    size_t clen;
    unsigned char *req; /* the packed Request */
    size_t reqlen;
    unsigned char txn_id[ENGINE_TXN_ID_LEN];
    uint32_t shard, home;
    uint64_t call;
    int wait;       /* ticks until the question is asked again */
    uint64_t until; /* tick after which the client gave up */
};

#define PARKED_CALL_BIT (1ull << 62)

static uint64_t next_parked_call(struct replica *r)
{
    r->parked_calls = (r->parked_calls + 1) & ((1ull << 61) - 1);
    return CALL_BIT_OF_TXN | PARKED_CALL_BIT | r->parked_calls;
}

static void ask_for_parked(struct replica *r, struct parked *p)
{
    Kv__TxnDecide d = KV__TXN_DECIDE__INIT;
    d.txn_id.data = p->txn_id;
    d.txn_id.len = ENGINE_TXN_ID_LEN;
    d.shard = p->home;
    d.want = 0; /* ask (a PENDING record past its deadline is aborted) */
    Kv__Request req = KV__REQUEST__INIT;
    req.id = p->call = next_parked_call(r);
    req.op_case = KV__REQUEST__OP_TXN_DECIDE;
    req.txn_decide = &d;
    txn_call(r, p->home, &req);
    p->wait = TXN_RETRY_TICKS;
}

static void park_read(struct replica *r, const void *client, size_t clen,
                      const Kv__Request *req, uint32_t shard,
                      const struct engine_intent *in)
{
    if (r->nparked == r->capparked) {
        struct parked *x = grow(r->parked, &r->capparked, sizeof(*x));
        if (!x) {
            reply_code(r, client, clen, req->id, KV_ENOMEM, "out of memory");
            return;
        }
        r->parked = x;
    }
    struct parked *p = &r->parked[r->nparked];
    *p = (struct parked){.clen = clen, .shard = shard, .home = in->home};
    p->reqlen = kv__request__get_packed_size(req);
    p->client = malloc(clen ? clen : 1);
    p->req = malloc(p->reqlen ? p->reqlen : 1);
    if (!p->client || !p->req || in->home >= r->conf->shards) {
        free(p->client);
        free(p->req);
        if (in->home >= r->conf->shards)
            reply_code(r, client, clen, req->id, KV_ECORRUPT,
                       "an intent names no such home shard");
        else
            reply_code(r, client, clen, req->id, KV_ENOMEM, "out of memory");
        return;
    }
    memcpy(p->client, client, clen);
    kv__request__pack(req, p->req);
    memcpy(p->txn_id, in->txn_id, ENGINE_TXN_ID_LEN);
    uint32_t timeout =
        req->timeout_ms ? req->timeout_ms : r->conf->request_timeout_ms;
    p->until = r->ticks + timeout / REPLICA_TICK_MS + 1;
    r->nparked++;
    ask_for_parked(r, p);
}

static void parked_free(struct parked *p)
{
    free(p->client);
    free(p->req);
}

/* The state of the transaction a parked read waits for is known: serve
 * the read, seeing the transaction's write when it committed. */
static void serve_parked(struct replica *r, struct parked *p, int state)
{
    Kv__Request *req = kv__request__unpack(NULL, p->reqlen, p->req);
    if (!req)
        return;
    const struct group *grp = r->groups[p->shard];
    if (!grp || grp->role != RAFT_LEADER || grp->inst.active) {
        /* Deposed meanwhile: its copy may be behind (or being replaced). */
        reply_redirect(r, p->client, p->clen, req->id, p->shard);
        kv__request__free_unpacked(req, NULL);
        return;
    }
    const Kv__GetRequest *g = req->get;
    struct engine_intent in = {0};
    int rc =
        engine_get_intent(r->engine, p->shard, g->key.data, g->key.len, &in);
    bool mine =
        rc == KV_OK && memcmp(in.txn_id, p->txn_id, ENGINE_TXN_ID_LEN) == 0;
    if (mine && state == ENGINE_TXN_COMMITTED &&
        (in.kind == ENGINE_TXN_PUT || in.kind == ENGINE_TXN_DEL)) {
        answer_get(r, p->client, p->clen, req->id, in.val, in.vlen,
                   in.kind == ENGINE_TXN_PUT ? in.version : 0);
        /* and have the intent resolved now rather than at the sweep */
        Kv__TxnResolve rs = KV__TXN_RESOLVE__INIT;
        rs.txn_id.data = p->txn_id;
        rs.txn_id.len = ENGINE_TXN_ID_LEN;
        rs.shard = p->shard;
        rs.commit = true;
        Kv__Request q = KV__REQUEST__INIT;
        q.id = next_parked_call(r);
        q.op_case = KV__REQUEST__OP_TXN_RESOLVE;
        q.txn_resolve = &rs;
        txn_call(r, p->shard, &q);
    } else if (rc != KV_OK && rc != KV_ENOTFOUND) {
        reply_code(r, p->client, p->clen, req->id, rc, "storage error");
    } else {
        /* Not committed (the read comes before it), another transaction's
         * intent by now, or resolved: the record is what counts. */
        void *val = NULL;
        size_t vlen = 0;
        uint64_t ver = 0;
        rc = engine_get(r->engine, p->shard, g->key.data, g->key.len, &val,
                        &vlen, &ver);
        if (rc == KV_OK || rc == KV_ENOTFOUND)
            answer_get(r, p->client, p->clen, req->id, val, vlen,
                       rc == KV_OK ? ver : 0);
        else
            reply_code(r, p->client, p->clen, req->id, rc, "storage error");
        free(val);
    }
    free(in.val);
    kv__request__free_unpacked(req, NULL);
}

/* An answer for a parked read; false when it is not one. */
static bool parked_answer(struct replica *r, const Kv__Response *resp)
{
    if (!(resp->id & PARKED_CALL_BIT) || !(resp->id & CALL_BIT_OF_TXN))
        return false;
    for (size_t i = 0; i < r->nparked; i++) {
        struct parked *p = &r->parked[i];
        if (p->call != resp->id)
            continue;
        p->call = 0;
        if (resp->result_case != KV__RESPONSE__RESULT_TXN_STATE ||
            resp->txn_state->state == ENGINE_TXN_PENDING) {
            p->wait = resp->result_case == KV__RESPONSE__RESULT_TXN_STATE
                          ? 2
                          : 5; /* ask again soon */
            return true;
        }
        serve_parked(r, p, (int)resp->txn_state->state);
        parked_free(p);
        r->parked[i] = r->parked[--r->nparked];
        return true;
    }
    return true;
}

static void tick_parked(struct replica *r)
{
    for (size_t i = 0; i < r->nparked;) {
        struct parked *p = &r->parked[i];
        if (r->ticks > p->until || !r->groups[p->shard] ||
            r->groups[p->shard]->role != RAFT_LEADER) {
            parked_free(p); /* the client gave up or retries elsewhere */
            r->parked[i] = r->parked[--r->nparked];
            continue;
        }
        if (--p->wait <= 0)
            ask_for_parked(r, p);
        i++;
    }
}

static void serve_read(struct replica *r, const void *client, size_t clen,
                       const Kv__Request *req)
{
    r->stats.reads++;
    if (req->op_case == KV__REQUEST__OP_SCAN) {
        serve_scan(r, client, clen, req);
        return;
    }
    if (req->op_case == KV__REQUEST__OP_CALL) {
        serve_call(r, client, clen, req);
        return;
    }
    const Kv__GetRequest *g = req->get;
    uint32_t shard = shard_of(g->key.data, g->key.len, r->conf->shards);
    if (!g->stale && engine_has_intents(r->engine, shard)) {
        /* A key locked by a transaction: its record says which value a
         * linearizable read sees (docs/transactions.md). */
        struct engine_intent in = {0};
        int irc =
            engine_get_intent(r->engine, shard, g->key.data, g->key.len, &in);
        free(in.val);
        if (irc == KV_OK) {
            park_read(r, client, clen, req, shard, &in);
            return;
        }
    }
    void *val = NULL;
    size_t vlen = 0;
    uint64_t ver = 0;
    int rc = engine_get(r->engine, shard, g->key.data, g->key.len, &val, &vlen,
                        &ver);
    if (rc != KV_OK) {
        reply_code(r, client, clen, req->id, rc,
                   rc == KV_ENOTFOUND ? "" : "storage error");
        return;
    }
    answer_get(r, client, clen, req->id, val, vlen, ver);
    free(val);
}

/* Asks Raft for one read index covering every read that has none yet. */
static void start_reads(struct replica *r, struct group *g)
{
    bool need = false;
    for (size_t i = 0; i < g->nreads; i++)
        need |= g->reads[i].ctx == 0;
    if (!need)
        return;
    uint64_t ctx = ++g->read_ctx;
    if (raft_read_index(g->raft, ctx) != RAFT_OK) {
        /* Lost leadership: every waiting read goes elsewhere. */
        for (size_t i = 0; i < g->nreads; i++) {
            struct pending_read *p = &g->reads[i];
            reply_redirect(r, p->client, p->clen, p->env->request->id,
                           g->shard);
            free(p->client);
            wire_free(p->env);
        }
        g->nreads = 0;
        return;
    }
    for (size_t i = 0; i < g->nreads; i++)
        if (g->reads[i].ctx == 0)
            g->reads[i].ctx = ctx;
}

/* Serves the reads whose read index is applied. */
static void finish_reads(struct replica *r, struct group *g)
{
    uint64_t applied = engine_applied(r->engine, g->shard);
    size_t keep = 0;
    for (size_t i = 0; i < g->nreads; i++) {
        struct pending_read *p = &g->reads[i];
        if (p->indexed && p->index <= applied) {
            serve_read(r, p->client, p->clen, p->env->request);
            free(p->client);
            wire_free(p->env);
        } else {
            g->reads[keep++] = *p;
        }
    }
    g->nreads = keep;
}

/* A group that lost leadership sends its waiting reads elsewhere. */
static void bounce_reads(struct replica *r, struct group *g)
{
    for (size_t i = 0; i < g->nreads; i++) {
        struct pending_read *p = &g->reads[i];
        reply_redirect(r, p->client, p->clen, p->env->request->id, g->shard);
        free(p->client);
        wire_free(p->env);
    }
    g->nreads = 0;
}

/* --- procedures ----------------------------------------------------------
 *
 * A call of a procedure that writes is evaluated on the leader of its key's
 * shard, against the state everything proposed before it will leave (the
 * group's pending predictions); its effects (the versions it read as
 * conditions, its writes, its reply) are proposed as one entry. A call that
 * reads a key whose pending outcome cannot be predicted waits in the
 * group's queue for that entry's apply. An effect whose conditions no
 * longer hold at apply (a prediction was wrong) is evaluated again.
 * Read-only procedures are served like linearizable reads, and a call on
 * every shard fans out one such read per shard and merges the replies. */

#define CALL_STALE_MAX 8 /* evaluations found stale before giving up */
#define FANOUT_CALL_BIT (1ull << 61)
#define FANOUT_RETRY_TICKS 20 /* 200 ms before a shard is asked again */

enum { EVAL_DONE, EVAL_WAIT };

static struct proc_limits call_limits(const struct replica *r)
{
    const struct conf *c = r->conf;
    return (struct proc_limits){.max_keys = c->proc_max_keys,
                                .max_write_bytes = c->proc_max_write_bytes,
                                .max_reply_bytes = c->proc_max_reply_bytes,
                                .max_key_bytes = c->max_key_bytes,
                                .max_value_bytes = c->max_value_bytes};
}

static void answer_call(struct replica *r, const void *client, size_t clen,
                        uint64_t req_id, int code, const char *msg,
                        const void *reply, size_t rlen, uint64_t version)
{
    Kv__Response resp = KV__RESPONSE__INIT;
    Kv__CallResult cr = KV__CALL_RESULT__INIT;
    resp.id = req_id;
    resp.code = code;
    resp.message = (char *)(msg ? msg : "");
    if (code == KV_OK || rlen) {
        cr.reply.data = (uint8_t *)reply;
        cr.reply.len = rlen;
        cr.version = version;
        resp.result_case = KV__RESPONSE__RESULT_CALL;
        resp.call = &cr;
    }
    answer_to(r, client, clen, &resp);
}

static void hex_prefix(char out[17], const unsigned char *h)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 8; i++) {
        out[2 * i] = digits[h[i] >> 4];
        out[2 * i + 1] = digits[h[i] & 15];
    }
    out[16] = '\0';
}

/* Whether the plugin (index PLUGIN; -1 for a built-in) defining NAME is the
 * same file on every node that reported its plugins; if not, MSG says how
 * they differ. */
static bool plugin_agrees(const struct replica *r, int plugin, const char *name,
                          char *msg, size_t msglen)
{
    if (plugin < 0 || !r->env.procs)
        return true;
    size_t n;
    const struct proc_plugin *all = proc_plugins(r->env.procs, &n);
    if ((size_t)plugin >= n)
        return true;
    const struct proc_plugin *mine = &all[plugin];
    for (size_t ni = 0; ni < r->conf->nnodes; ni++) {
        const struct peer_plugins *pp = &r->peer_plugins[ni];
        uint32_t id = r->conf->nodes[ni].id;
        if (!pp->known || id == r->id)
            continue;
        const struct proc_plugin *theirs = NULL;
        for (size_t j = 0; j < pp->n && !theirs; j++)
            if (strcmp(pp->list[j].name, mine->name) == 0)
                theirs = &pp->list[j];
        if (!theirs) {
            snprintf(msg, msglen,
                     "procedure %s: plugin %s is loaded on node %u but not on "
                     "node %u; load the same plugins everywhere",
                     name, mine->name, r->id, id);
            return false;
        }
        if (memcmp(theirs->hash, mine->hash, PROC_HASH_LEN) != 0) {
            char a[17], b[17];
            hex_prefix(a, mine->hash);
            hex_prefix(b, theirs->hash);
            snprintf(msg, msglen,
                     "procedure %s: plugin %s differs between nodes: BLAKE2b "
                     "%s... on node %u, %s... on node %u; deploy one build "
                     "everywhere",
                     name, mine->name, a, r->id, b, id);
            return false;
        }
    }
    return true;
}

/* The view a write call is evaluated against on a leader. */
struct eval_view {
    struct replica *r;
    struct group *g;
    uint64_t wait; /* PROC_EWAIT: the index to wait for */
};

static int view_get(void *arg, uint32_t shard, const void *key, size_t klen,
                    void **val, size_t *vlen, uint64_t *version)
{
    struct eval_view *v = arg;
    enum pending_kind kind;
    uint64_t index;
    const void *pv;
    size_t pvlen;
    *val = NULL;
    *vlen = 0;
    if (pending_lookup(v->g->pend, key, klen, &kind, &index, &pv, &pvlen)) {
        if (kind == PENDING_UNKNOWN) {
            if (index > v->wait)
                v->wait = index;
            return PROC_EWAIT;
        }
        if (kind == PENDING_DEL)
            return KV_ENOTFOUND;
        if (pvlen) {
            *val = malloc(pvlen);
            if (!*val)
                return KV_ENOMEM;
            memcpy(*val, pv, pvlen);
        }
        *vlen = pvlen;
        *version = index; /* a write's version is its entry's index */
        return KV_OK;
    }
    if (engine_has_intents(v->r->engine, shard)) {
        struct engine_intent in = {0};
        int rc = engine_get_intent(v->r->engine, shard, key, klen, &in);
        free(in.val);
        if (rc == KV_OK)
            return ENGINE_ELOCKED;
        if (rc != KV_ENOTFOUND)
            return rc;
    }
    return engine_get(v->r->engine, shard, key, klen, val, vlen, version);
}

static int view_scan(void *arg, const struct engine_scan *sc, engine_emit_fn fn,
                     void *fnarg)
{
    struct eval_view *v = arg;
    /* A scan sees the applied state, so nothing may be in flight: the
     * effects are then valid only as the very next entry (after_index). */
    uint64_t last = raft_last_index(v->g->raft);
    if (last > engine_applied(v->r->engine, sc->shard)) {
        if (last > v->wait)
            v->wait = last;
        return PROC_EWAIT;
    }
    return engine_scan(v->r->engine, sc, fn, fnarg, NULL);
}

/* What a read-only call reads: the applied state. */
static int applied_get(void *arg, uint32_t shard, const void *key, size_t klen,
                       void **val, size_t *vlen, uint64_t *version)
{
    struct replica *r = arg;
    return engine_get(r->engine, shard, key, klen, val, vlen, version);
}

static int applied_scan(void *arg, const struct engine_scan *sc,
                        engine_emit_fn fn, void *fnarg)
{
    struct replica *r = arg;
    return engine_scan(r->engine, sc, fn, fnarg, NULL);
}

/* Notes in G's predictions what the entry CMD proposed at INDEX writes. */
static void note_pending(struct group *g, uint64_t index,
                         const Kv__Command *cmd)
{
    int rc = KV_OK;
    switch (cmd->op_case) {
    case KV__COMMAND__OP_PUT: {
        const Kv__PutRequest *p = cmd->put;
        bool cond = p->if_version || p->if_absent;
        rc = pending_note(g->pend, index, p->key.data, p->key.len,
                          cond ? PENDING_UNKNOWN : PENDING_PUT, p->value.data,
                          p->value.len);
        break;
    }
    case KV__COMMAND__OP_DEL:
        rc = pending_note(g->pend, index, cmd->del->key.data, cmd->del->key.len,
                          cmd->del->if_version ? PENDING_UNKNOWN : PENDING_DEL,
                          NULL, 0);
        break;
    case KV__COMMAND__OP_TXN:
    case KV__COMMAND__OP_TXN_PREPARE: {
        size_t n = cmd->op_case == KV__COMMAND__OP_TXN
                       ? cmd->txn->n_ops
                       : cmd->txn_prepare->n_ops;
        Kv__TxnOp **ops = cmd->op_case == KV__COMMAND__OP_TXN
                              ? cmd->txn->ops
                              : cmd->txn_prepare->ops;
        for (size_t i = 0; i < n && rc == KV_OK; i++)
            rc = pending_note(g->pend, index, ops[i]->key.data, ops[i]->key.len,
                              PENDING_UNKNOWN, NULL, 0);
        break;
    }
    case KV__COMMAND__OP_EFFECT:
        for (size_t i = 0; i < cmd->effect->n_ops && rc == KV_OK; i++) {
            const Kv__TxnOp *op = cmd->effect->ops[i];
            if (op->kind == KV__TXN_OP__KIND__PUT)
                rc = pending_note(g->pend, index, op->key.data, op->key.len,
                                  PENDING_PUT, op->value.data, op->value.len);
            else if (op->kind == KV__TXN_OP__KIND__DEL)
                rc = pending_note(g->pend, index, op->key.data, op->key.len,
                                  PENDING_DEL, NULL, 0);
        }
        break;
    default:
        break;
    }
    if (rc != KV_OK) {
        /* Out of memory: predict nothing; calls wait for this apply. */
        pending_clear(g->pend);
        g->lead_from = index;
    }
}

/* Adds a call to G's queue (taking ENV and a copy of CLIENT). */
static int push_call(struct replica *r, struct group *g, const void *client,
                     size_t clen, Kv__Envelope *env, uint64_t wait,
                     uint64_t until, int attempts)
{
    if (g->ncalls == g->capcalls) {
        struct qcall *q = grow(g->calls, &g->capcalls, sizeof(*q));
        if (!q)
            return KV_ENOMEM;
        g->calls = q;
    }
    unsigned char *c = malloc(clen ? clen : 1);
    if (!c)
        return KV_ENOMEM;
    memcpy(c, client, clen);
    if (!until) {
        uint32_t t = env->request->timeout_ms ? env->request->timeout_ms
                                              : r->conf->request_timeout_ms;
        until = r->ticks + t / REPLICA_TICK_MS + 1;
    }
    g->calls[g->ncalls++] = (struct qcall){.env = env,
                                           .client = c,
                                           .clen = clen,
                                           .wait = wait,
                                           .until = until,
                                           .attempts = attempts};
    return KV_OK;
}

/* Evaluates a write call on G (led here): answers it, or proposes its
 * effects (the waiter then owns ENV), or returns EVAL_WAIT with *WAIT the
 * index to be applied first (ENV stays the caller's). */
static int eval_call(struct replica *r, struct group *g, const void *client,
                     size_t clen, Kv__Envelope *env, int attempts,
                     uint64_t *wait)
{
    const Kv__Request *req = env->request;
    const Kv__CallRequest *c = req->call;
    uint64_t applied = engine_applied(r->engine, g->shard);
    if (applied < g->lead_from) {
        *wait = g->lead_from; /* a new leader's log is not predicted yet */
        return EVAL_WAIT;
    }
    if (req->seq) {
        uint64_t seq = 0, ver = 0;
        int code = 0;
        void *rep = NULL;
        size_t rlen = 0;
        int rc = engine_session_reply(r->engine, g->shard, req->client_id.data,
                                      req->client_id.len, &seq, &code, &ver,
                                      &rep, &rlen);
        if (rc == KV_OK && seq >= req->seq) { /* a retry: as the first time */
            answer_call(r, client, clen, req->id, code, "", rep, rlen, ver);
            free(rep);
            wire_free(env);
            return EVAL_DONE;
        }
        free(rep);
        if (rc != KV_OK && rc != KV_ENOTFOUND) {
            reply_code(r, client, clen, req->id, rc, "storage error");
            wire_free(env);
            return EVAL_DONE;
        }
    }
    struct eval_view v = {.r = r, .g = g};
    struct proc_reader rd = {.arg = &v, .get = view_get, .scan = view_scan};
    struct proc_limits lim = call_limits(r);
    struct proc_result res;
    int rc = proc_run(r->env.procs, c->name, strlen(c->name), g->shard,
                      r->conf->shards, c->key.data, c->key.len, c->arg.data,
                      c->arg.len, &rd, &lim, &res);
    if (rc == PROC_EWAIT) {
        proc_result_free(&res);
        *wait = v.wait > applied ? v.wait : applied + 1;
        return EVAL_WAIT;
    }
    if (rc != KV_OK) {
        answer_call(r, client, clen, req->id, rc,
                    rc == ENGINE_ELOCKED
                        ? "a key is locked by a transaction in progress; retry"
                        : res.msg,
                    res.reply, res.rlen, 0);
        proc_result_free(&res);
        wire_free(env);
        return EVAL_DONE;
    }
    Kv__TxnOp *ops = calloc(res.nops ? res.nops : 1, sizeof(*ops));
    Kv__TxnOp **opp = calloc(res.nops ? res.nops : 1, sizeof(*opp));
    if (!ops || !opp) {
        free(ops);
        free(opp);
        proc_result_free(&res);
        reply_code(r, client, clen, req->id, KV_ENOMEM, "out of memory");
        wire_free(env);
        return EVAL_DONE;
    }
    for (size_t i = 0; i < res.nops; i++) {
        const struct engine_txn_op *o = &res.ops[i];
        kv__txn_op__init(&ops[i]);
        ops[i].kind = (Kv__TxnOp__Kind)o->kind;
        ops[i].key.data = (uint8_t *)o->key;
        ops[i].key.len = o->klen;
        ops[i].value.data = (uint8_t *)o->val;
        ops[i].value.len = o->vlen;
        ops[i].version = o->version;
        opp[i] = &ops[i];
    }
    Kv__ProcEffect fx = KV__PROC_EFFECT__INIT;
    fx.ops = opp;
    fx.n_ops = res.nops;
    fx.reply.data = res.reply;
    fx.reply.len = res.rlen;
    fx.after_index = res.scanned ? raft_last_index(g->raft) : 0;
    Kv__Command cmd = KV__COMMAND__INIT;
    cmd.op_case = KV__COMMAND__OP_EFFECT;
    cmd.effect = &fx;
    set_session(r, g, req, &cmd);
    /* One entry travels in one peer frame: it must fit with room for the
     * frame around it (budgets can add up to more than that). */
    size_t size = kv__command__get_packed_size(&cmd);
    struct waiter *w = NULL;
    if (size + CONF_TXN_SLACK > r->conf->max_message_bytes) {
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "procedure %.64s: its writes and reply take %zu bytes, over "
                 "what one message carries (max_message_bytes - %u)",
                 c->name, size, CONF_TXN_SLACK);
        reply_code(r, client, clen, req->id, KV_ETOOBIG, msg);
    } else {
        w = propose_command(r, client, clen, req, g->shard, &cmd);
    }
    free(ops);
    free(opp);
    proc_result_free(&res);
    if (!w) {
        wire_free(env); /* answered */
        return EVAL_DONE;
    }
    w->env = env;
    w->attempts = attempts;
    return EVAL_DONE;
}

/* Sends every queued call of G elsewhere (it no longer leads). */
static void bounce_calls(struct replica *r, struct group *g)
{
    for (size_t i = 0; i < g->ncalls; i++) {
        struct qcall *q = &g->calls[i];
        reply_redirect(r, q->client, q->clen, q->env->request->id, g->shard);
        free(q->client);
        wire_free(q->env);
    }
    g->ncalls = 0;
}

/* Evaluates the queued calls whose wait is over. */
static void run_calls(struct replica *r)
{
    for (uint32_t s = 0; s < r->conf->shards; s++) {
        struct group *g = r->groups[s];
        if (!g || !g->ncalls)
            continue;
        if (g->role != RAFT_LEADER) {
            bounce_calls(r, g);
            continue;
        }
        uint64_t applied = engine_applied(r->engine, s);
        struct qcall *q = g->calls;
        size_t n = g->ncalls;
        g->calls = NULL;
        g->ncalls = g->capcalls = 0;
        for (size_t i = 0; i < n; i++) {
            uint64_t wait = q[i].wait;
            if (wait <= applied &&
                eval_call(r, g, q[i].client, q[i].clen, q[i].env, q[i].attempts,
                          &wait) == EVAL_DONE) {
                free(q[i].client);
                continue;
            }
            if (push_call(r, g, q[i].client, q[i].clen, q[i].env, wait,
                          q[i].until, q[i].attempts) != KV_OK) {
                reply_code(r, q[i].client, q[i].clen, q[i].env->request->id,
                           KV_ENOMEM, "out of memory");
                wire_free(q[i].env);
            }
            free(q[i].client);
        }
        free(q);
    }
}

/* Ends the queued calls whose client gave up. */
static void tick_calls(struct replica *r)
{
    for (uint32_t s = 0; s < r->conf->shards; s++) {
        struct group *g = r->groups[s];
        if (!g)
            continue;
        size_t keep = 0;
        for (size_t i = 0; i < g->ncalls; i++) {
            struct qcall *q = &g->calls[i];
            if (r->ticks <= q->until) {
                g->calls[keep++] = *q;
                continue;
            }
            reply_code(r, q->client, q->clen, q->env->request->id, KV_ETIMEDOUT,
                       "the call waited too long for writes in flight");
            free(q->client);
            wire_free(q->env);
        }
        g->ncalls = keep;
    }
}

/* Serves a read-only call (or one shard's part of a call on every shard)
 * from the applied state: a linearizable read. */
static void serve_call(struct replica *r, const void *client, size_t clen,
                       const Kv__Request *req)
{
    const Kv__CallRequest *c = req->call;
    uint32_t shard =
        c->part ? c->shard : shard_of(c->key.data, c->key.len, r->conf->shards);
    struct proc_reader rd = {
        .arg = r, .get = applied_get, .scan = applied_scan};
    struct proc_limits lim = call_limits(r);
    struct proc_result res;
    int rc =
        proc_run(r->env.procs, c->name, strlen(c->name), shard, r->conf->shards,
                 c->part ? NULL : c->key.data, c->part ? 0 : c->key.len,
                 c->arg.data, c->arg.len, &rd, &lim, &res);
    answer_call(r, client, clen, req->id, rc, rc == KV_OK ? "" : res.msg,
                res.reply, res.rlen, 0);
    proc_result_free(&res);
}

/* A call on every shard, fanned out by this node. */
struct fanout {
    unsigned char *client;
    size_t clen;
    uint64_t req_id;
    char *name;
    unsigned char *arg;
    size_t alen;
    uint64_t base; /* call ids: base | shard */
    unsigned char **replies;
    size_t *lens;
    bool *done;
    int *wait; /* by shard: ticks until it is asked again */
    size_t left;
    uint64_t until;
};

static void fanout_release(struct replica *r, struct fanout *f)
{
    for (uint32_t s = 0; f->replies && s < r->conf->shards; s++)
        free(f->replies[s]);
    free(f->replies);
    free(f->client);
    free(f->name);
    free(f->arg);
    free(f->lens);
    free(f->done);
    free(f->wait);
}

static void fanout_ask(struct replica *r, struct fanout *f, uint32_t shard)
{
    Kv__CallRequest c = KV__CALL_REQUEST__INIT;
    c.name = f->name;
    c.arg.data = f->arg;
    c.arg.len = f->alen;
    c.part = true;
    c.shard = shard;
    Kv__Request req = KV__REQUEST__INIT;
    req.id = f->base | shard;
    req.op_case = KV__REQUEST__OP_CALL;
    req.call = &c;
    txn_call(r, shard, &req);
    f->wait[shard] = FANOUT_RETRY_TICKS;
}

static void start_fanout(struct replica *r, const void *client, size_t clen,
                         const Kv__Request *req)
{
    uint32_t n = r->conf->shards;
    if (r->nfanouts == r->capfanouts) {
        struct fanout *x = grow(r->fanouts, &r->capfanouts, sizeof(*x));
        if (!x) {
            reply_code(r, client, clen, req->id, KV_ENOMEM, "out of memory");
            return;
        }
        r->fanouts = x;
    }
    struct fanout *f = &r->fanouts[r->nfanouts];
    *f = (struct fanout){.clen = clen, .req_id = req->id, .left = n};
    size_t nlen = strlen(req->call->name);
    f->client = malloc(clen ? clen : 1);
    f->name = malloc(nlen + 1);
    f->alen = req->call->arg.len;
    f->arg = malloc(f->alen ? f->alen : 1);
    f->replies = calloc(n, sizeof(*f->replies));
    f->lens = calloc(n, sizeof(*f->lens));
    f->done = calloc(n, sizeof(*f->done));
    f->wait = calloc(n, sizeof(*f->wait));
    if (!f->client || !f->name || !f->arg || !f->replies || !f->lens ||
        !f->done || !f->wait) {
        fanout_release(r, f);
        reply_code(r, client, clen, req->id, KV_ENOMEM, "out of memory");
        return;
    }
    memcpy(f->client, client, clen);
    memcpy(f->name, req->call->name, nlen + 1);
    if (f->alen)
        memcpy(f->arg, req->call->arg.data, f->alen);
    r->fanout_calls = (r->fanout_calls + 1) & ((1ull << 48) - 1);
    f->base = CALL_BIT_OF_TXN | FANOUT_CALL_BIT | r->fanout_calls << 12;
    uint32_t timeout =
        req->timeout_ms ? req->timeout_ms : r->conf->request_timeout_ms;
    f->until = r->ticks + timeout / REPLICA_TICK_MS + 1;
    r->nfanouts++;
    for (uint32_t s = 0; s < n; s++)
        fanout_ask(r, f, s);
}

/* Every shard answered: merge and answer the client. */
static void finish_fanout(struct replica *r, struct fanout *f)
{
    uint32_t n = r->conf->shards;
    struct proc_limits lim = call_limits(r);
    struct proc_result res;
    int rc =
        proc_merge(r->env.procs, f->name, strlen(f->name),
                   (const void *const *)f->replies, f->lens, n, &lim, &res);
    answer_call(r, f->client, f->clen, f->req_id, rc,
                rc == KV_OK ? "" : res.msg, res.reply, res.rlen, 0);
    proc_result_free(&res);
}

/* An answer to a fan-out's call; false when it is not one. */
static bool fanout_answer(struct replica *r, const Kv__Response *resp)
{
    if (!(resp->id & CALL_BIT_OF_TXN) || !(resp->id & FANOUT_CALL_BIT) ||
        (resp->id & PARKED_CALL_BIT))
        return false;
    uint64_t base = resp->id & ~(uint64_t)0xfff;
    uint32_t shard = (uint32_t)(resp->id & 0xfff);
    for (size_t i = 0; i < r->nfanouts; i++) {
        struct fanout *f = &r->fanouts[i];
        if (f->base != base || shard >= r->conf->shards || f->done[shard])
            continue;
        if (resp->code == KV_ENOTLEADER || resp->code == KV_EUNAVAILABLE ||
            resp->code == KV_ETIMEDOUT) {
            if (resp->code == KV_ENOTLEADER && resp->leader_id &&
                node_of(r, resp->leader_id))
                r->hint[shard] = resp->leader_id;
            f->wait[shard] = 1; /* ask again at the next tick */
            return true;
        }
        bool ok = resp->code == KV_OK &&
                  resp->result_case == KV__RESPONSE__RESULT_CALL;
        if (!ok) { /* the procedure failed on a shard: so does the call */
            char msg[300];
            snprintf(msg, sizeof(msg), "shard %u: %s", shard,
                     resp->message && *resp->message
                         ? resp->message
                         : kv_strerror(resp->code ? resp->code : KV_EPROTO));
            reply_code(r, f->client, f->clen, f->req_id,
                       resp->code ? resp->code : KV_EPROTO, msg);
        } else {
            size_t len = resp->call->reply.len;
            f->replies[shard] = malloc(len ? len : 1);
            if (!f->replies[shard]) {
                reply_code(r, f->client, f->clen, f->req_id, KV_ENOMEM,
                           "out of memory");
                ok = false;
            } else {
                if (len)
                    memcpy(f->replies[shard], resp->call->reply.data, len);
                f->lens[shard] = len;
                f->done[shard] = true;
                if (--f->left > 0)
                    return true;
                finish_fanout(r, f);
            }
        }
        fanout_release(r, f);
        r->fanouts[i] = r->fanouts[--r->nfanouts];
        return true;
    }
    return true; /* late: its fan-out is over */
}

static void tick_fanouts(struct replica *r)
{
    for (size_t i = 0; i < r->nfanouts;) {
        struct fanout *f = &r->fanouts[i];
        if (r->ticks > f->until) {
            char msg[128];
            uint32_t first = 0;
            while (first < r->conf->shards && f->done[first])
                first++;
            snprintf(msg, sizeof(msg),
                     "%zu shard(s) did not answer in time (shard %u first)",
                     f->left, first);
            reply_code(r, f->client, f->clen, f->req_id, KV_ETIMEDOUT, msg);
            fanout_release(r, f);
            r->fanouts[i] = r->fanouts[--r->nfanouts];
            continue;
        }
        for (uint32_t s = 0; s < r->conf->shards; s++)
            if (!f->done[s] && --f->wait[s] <= 0)
                fanout_ask(r, f, s);
        i++;
    }
}

static void handle_read(struct replica *r, const void *client, size_t clen,
                        Kv__Envelope *env);

/* A procedure call from a client (or a node's part of a call on every
 * shard). Takes ENV. */
static void handle_call(struct replica *r, const void *client, size_t clen,
                        Kv__Envelope *env)
{
    const Kv__Request *req = env->request;
    const Kv__CallRequest *c = req->call;
    bool readonly = false;
    int plugin = -1;
    char msg[320];
    size_t nlen = c->name ? strlen(c->name) : 0;
    if (!r->env.procs || nlen == 0 ||
        !proc_lookup(r->env.procs, c->name, nlen, &readonly, &plugin)) {
        snprintf(msg, sizeof(msg),
                 "no procedure named \"%.64s\" (the built-ins are incr, "
                 "append, cas and mget; plugins are listed in cluster.conf)",
                 c->name ? c->name : "");
        reply_code(r, client, clen, req->id, KV_ENOPROC, msg);
        goto done;
    }
    if (!plugin_agrees(r, plugin, c->name, msg, sizeof(msg))) {
        reply_code(r, client, clen, req->id, KV_EPROC, msg);
        goto done;
    }
    if (c->part || c->all) {
        uint32_t from;
        if (!readonly) {
            snprintf(msg, sizeof(msg),
                     "procedure %.64s writes; only read-only procedures run "
                     "on every shard",
                     c->name);
            reply_code(r, client, clen, req->id, KV_EINVAL, msg);
        } else if (c->part && !is_peer_addr(client, clen, &from)) {
            reply_code(r, client, clen, req->id, KV_EINVAL,
                       "parts of a call on every shard are for nodes only");
        } else if (c->part && c->shard >= r->conf->shards) {
            reply_code(r, client, clen, req->id, KV_EINVAL, "no such shard");
        } else if (c->part) {
            handle_read(r, client, clen, env);
            return;
        } else {
            start_fanout(r, client, clen, req);
        }
        goto done;
    }
    if (!key_ok(r, client, clen, req->id, &c->key))
        goto done;
    if (readonly) {
        handle_read(r, client, clen, env);
        return;
    }
    if (!session_ok(req)) {
        reply_code(r, client, clen, req->id, KV_EINVAL, SESSION_RULE);
        goto done;
    }
    uint32_t shard = shard_of(c->key.data, c->key.len, r->conf->shards);
    struct group *g = r->groups[shard];
    if (!g || g->role != RAFT_LEADER) {
        reply_redirect(r, client, clen, req->id, shard);
        goto done;
    }
    if (r->total_waiters >= MAX_WAITERS) {
        reply_code(r, client, clen, req->id, KV_EUNAVAILABLE,
                   "too many writes in flight; retry");
        goto done;
    }
    uint64_t wait = 0;
    if (eval_call(r, g, client, clen, env, 0, &wait) == EVAL_DONE)
        return;
    if (push_call(r, g, client, clen, env, wait, 0, 0) == KV_OK)
        return;
    reply_code(r, client, clen, req->id, KV_ENOMEM, "out of memory");
done:
    wire_free(env);
}

/* On the leader of G: the effects F, just applied, did not write what G
 * predicted when they were proposed (a condition no longer held, or the
 * entry was a retry answered from the session). Entries proposed after
 * them on the same keys were evaluated on that prediction and will be
 * stale too, and so would every call evaluated on theirs: a stale call
 * evaluated again at once reads the newest prediction, itself from a
 * doomed entry, and the chain renews itself as long as calls keep coming.
 * Until everything proposed so far is applied, the keys it wrote (and with
 * ALL_KEYS the keys it read) are unknown: calls on them wait for that
 * apply, and the doomed entries cost one re-evaluation each. */
static void forget_predictions(struct group *g, const Kv__ProcEffect *f,
                               bool all_keys)
{
    uint64_t last = raft_last_index(g->raft);
    for (size_t i = 0; i < f->n_ops; i++) {
        const Kv__TxnOp *op = f->ops[i];
        if (!all_keys && op->kind != KV__TXN_OP__KIND__PUT &&
            op->kind != KV__TXN_OP__KIND__DEL)
            continue;
        if (pending_note(g->pend, last, op->key.data, op->key.len,
                         PENDING_UNKNOWN, NULL, 0) != KV_OK) {
            /* Out of memory: predict nothing; calls wait for this apply. */
            pending_clear(g->pend);
            g->lead_from = last;
            return;
        }
    }
}

/* Applies a procedure's effects; W (if any) gets the outcome. */
static int apply_effect(struct replica *r, struct group *g, uint64_t index,
                        const Kv__Command *cmd, struct waiter *w)
{
    const Kv__ProcEffect *f = cmd->effect;
    size_t n = f->n_ops;
    struct engine_txn_op *ops = calloc(n ? n : 1, sizeof(*ops));
    if (!ops)
        return KV_ENOMEM; /* the node stops: it cannot apply the log */
    for (size_t i = 0; i < n; i++) {
        const Kv__TxnOp *op = f->ops[i];
        ops[i] = (struct engine_txn_op){.kind = (enum engine_txn_kind)op->kind,
                                        .key = op->key.data,
                                        .klen = op->key.len,
                                        .val = op->value.data,
                                        .vlen = op->value.len,
                                        .version = op->version};
    }
    struct engine_effect ef = {
        .txn = {.shard = g->shard,
                .ops = ops,
                .nops = n,
                .index = index,
                .client_id = cmd->seq ? cmd->client_id.data : NULL,
                .client_id_len = cmd->seq ? cmd->client_id.len : 0,
                .seq = cmd->seq},
        .reply = f->reply.data,
        .rlen = f->reply.len,
        .after_index = f->after_index};
    uint64_t version = 0;
    void *reply = NULL;
    size_t rlen = 0;
    int rc = engine_stage_effect(r->engine, &ef, &version, &reply, &rlen);
    free(ops);
    if (rc == KV_EINVAL) /* a command no replica can apply: a no-op */
        engine_stage_applied(r->engine, g->shard, index);
    else if (!applied_outcome(rc)) {
        free(reply);
        return rc; /* storage failure: the node stops */
    }
    /* Written as predicted: with the outcome KV_OK and the entry's own
     * index as the version (a retry answered from the session carries the
     * first call's version). */
    if (g->role == RAFT_LEADER && (rc != KV_OK || version != index))
        forget_predictions(g, f, rc == ENGINE_ESTALE);
    r->stats.applied++;
    if (w) {
        w->done = true;
        w->code = rc;
        w->version = version;
        w->reply = reply;
        w->rlen = rlen;
    } else {
        free(reply);
    }
    return KV_OK;
}

/* Answers a call's waiter, or queues the call again when its effects were
 * stale. */
static void finish_call(struct replica *r, struct group *g, struct waiter *w)
{
    if (w->code == ENGINE_ESTALE && w->env && g->role == RAFT_LEADER &&
        w->attempts + 1 < CALL_STALE_MAX &&
        push_call(r, g, w->client, w->clen, w->env, 0, 0, w->attempts + 1) ==
            KV_OK) {
        w->env = NULL; /* evaluated again at the end of this flush */
        return;
    }
    uint64_t id = w->req_id;
    switch (w->code) {
    case KV_OK:
        answer_call(r, w->client, w->clen, id, KV_OK, "", w->reply, w->rlen,
                    w->version);
        break;
    case ENGINE_ESTALE:
        reply_code(r, w->client, w->clen, id, KV_EUNAVAILABLE,
                   "the call kept meeting concurrent writes; retry");
        break;
    case ENGINE_ELOCKED:
        reply_code(r, w->client, w->clen, id, ENGINE_ELOCKED,
                   "a key is locked by a transaction in progress; retry");
        break;
    case KV_ENOTLEADER:
        reply_redirect(r, w->client, w->clen, id, g->shard);
        break;
    case KV_EUNAVAILABLE:
        reply_code(r, w->client, w->clen, id, KV_EUNAVAILABLE,
                   "outcome unknown here; retry");
        break;
    default:
        answer_call(r, w->client, w->clen, id, w->code, "", w->reply, w->rlen,
                    w->version);
        break;
    }
}

/* Peers' plugin lists: what they loaded, to compare before each call. */
static void take_plugins(struct replica *r, size_t pi, const Kv__PeerBatch *b)
{
    struct peer_plugins *pp = &r->peer_plugins[pi];
    struct proc_plugin *list =
        calloc(b->n_plugins ? b->n_plugins : 1, sizeof(*list));
    if (!list)
        return;
    size_t n = 0;
    for (size_t i = 0; i < b->n_plugins; i++) {
        const Kv__PluginHash *h = b->plugins[i];
        if (!h->name || h->hash.len != PROC_HASH_LEN ||
            strlen(h->name) > PROC_MAX_NAME)
            continue;
        memcpy(list[n].name, h->name, strlen(h->name) + 1);
        memcpy(list[n].hash, h->hash.data, PROC_HASH_LEN);
        n++;
    }
    free(pp->list);
    pp->list = list;
    pp->n = n;
    pp->known = true;
}

/* --- apply ---------------------------------------------------------------- */

/* Whether RC, from an engine_stage* call, is an outcome of the entry
 * (the same on every replica) rather than a failure of this node's
 * storage or memory, which stops the node. */
static bool applied_outcome(int rc)
{
    return rc == KV_OK || rc == KV_ECONFLICT || rc == KV_ENOTFOUND ||
           rc == KV_EINVAL || rc == KV_ETIMEDOUT || rc == ENGINE_ELOCKED ||
           rc == ENGINE_ESTALE;
}

/* Applies a single-shard transaction; W (if any) gets its outcome. */
static int apply_txn(struct replica *r, struct group *g, uint64_t index,
                     const Kv__Command *cmd, struct waiter *w)
{
    const Kv__TxnRequest *t = cmd->txn;
    size_t n = t->n_ops;
    struct engine_txn_op *ops = calloc(n ? n : 1, sizeof(*ops));
    uint64_t *versions = calloc(n ? n : 1, sizeof(*versions));
    if (!ops || !versions) {
        free(ops);
        free(versions);
        return KV_ENOMEM; /* the node stops: it cannot apply the log */
    }
    for (size_t i = 0; i < n; i++) {
        const Kv__TxnOp *op = t->ops[i];
        ops[i] = (struct engine_txn_op){.kind = (enum engine_txn_kind)op->kind,
                                        .key = op->key.data,
                                        .klen = op->key.len,
                                        .val = op->value.data,
                                        .vlen = op->value.len,
                                        .version = op->version};
    }
    struct engine_txn et = {.shard = g->shard,
                            .ops = ops,
                            .nops = n,
                            .index = index,
                            .client_id = cmd->seq ? cmd->client_id.data : NULL,
                            .client_id_len = cmd->seq ? cmd->client_id.len : 0,
                            .seq = cmd->seq};
    size_t failed = 0;
    uint64_t current = 0;
    int rc = engine_stage_txn(r->engine, &et, versions, &failed, &current);
    free(ops);
    if (rc == KV_EINVAL) /* a command no replica can apply: a no-op */
        engine_stage_applied(r->engine, g->shard, index);
    if (!applied_outcome(rc)) {
        free(versions);
        return rc; /* storage failure: the node stops */
    }
    r->stats.applied++;
    if (w) {
        w->done = true;
        w->code = rc;
        w->versions = versions;
        w->nversions = n;
        w->failed_op = failed;
        w->version = current;
    } else {
        free(versions);
    }
    return KV_OK;
}

/* Applies a two-phase commit step; W (if any) gets its outcome. */
static int apply_txn_step(struct replica *r, struct group *g, uint64_t index,
                          const Kv__Command *cmd, struct waiter *w)
{
    int rc, state = ENGINE_TXN_UNKNOWN;
    uint64_t version = 0, current = 0;
    size_t failed = 0;
    const ProtobufCBinaryData *id =
        cmd->op_case == KV__COMMAND__OP_TXN_PREPARE ? &cmd->txn_prepare->txn_id
        : cmd->op_case == KV__COMMAND__OP_TXN_RESOLVE
            ? &cmd->txn_resolve->txn_id
        : cmd->op_case == KV__COMMAND__OP_TXN_RECORD ? &cmd->txn_record->txn_id
                                                     : &cmd->txn_decide->txn_id;
    if (id->len != ENGINE_TXN_ID_LEN) {
        rc = KV_EINVAL;
    } else if (cmd->op_case == KV__COMMAND__OP_TXN_PREPARE) {
        const Kv__TxnPrepare *p = cmd->txn_prepare;
        struct engine_txn_op *ops =
            calloc(p->n_ops ? p->n_ops : 1, sizeof(*ops));
        if (!ops)
            return KV_ENOMEM;
        for (size_t i = 0; i < p->n_ops; i++)
            ops[i] = (struct engine_txn_op){
                .kind = (enum engine_txn_kind)p->ops[i]->kind,
                .key = p->ops[i]->key.data,
                .klen = p->ops[i]->key.len,
                .val = p->ops[i]->value.data,
                .vlen = p->ops[i]->value.len,
                .version = p->ops[i]->version};
        struct engine_prepare ep = {.txn = {.shard = g->shard,
                                            .ops = ops,
                                            .nops = p->n_ops,
                                            .index = index},
                                    .txn_id = id->data,
                                    .home = p->home,
                                    .deadline_ms = p->deadline_ms,
                                    .now_ms = p->now_ms};
        rc = engine_stage_prepare(r->engine, &ep, &version, &failed, &current);
        free(ops);
    } else if (cmd->op_case == KV__COMMAND__OP_TXN_RESOLVE) {
        rc = engine_stage_resolve(r->engine, g->shard, index, id->data,
                                  cmd->txn_resolve->commit,
                                  cmd->txn_resolve->now_ms);
    } else if (cmd->op_case == KV__COMMAND__OP_TXN_RECORD) {
        const Kv__TxnRecord *x = cmd->txn_record;
        rc = engine_stage_record_for(
            r->engine, g->shard, index, id->data, x->deadline_ms, x->parts,
            x->n_parts, cmd->seq ? cmd->client_id.data : NULL,
            cmd->seq ? cmd->client_id.len : 0, cmd->seq, &state);
    } else if (cmd->txn_decide->want == 3) {
        rc = engine_stage_forget(r->engine, g->shard, index, id->data);
        state = ENGINE_TXN_UNKNOWN;
    } else {
        const Kv__TxnDecide *d = cmd->txn_decide;
        rc = engine_stage_decide_for(
            r->engine, g->shard, index, id->data, (int)d->want, d->now_ms,
            cmd->seq ? cmd->client_id.data : NULL,
            cmd->seq ? cmd->client_id.len : 0, cmd->seq, &state);
    }
    if (rc == KV_EINVAL) /* a command no replica can apply: a no-op */
        engine_stage_applied(r->engine, g->shard, index);
    else if (!applied_outcome(rc))
        return rc; /* storage failure: the node stops */
    r->stats.applied++;
    if (w) {
        w->done = true;
        w->code = rc;
        w->version = cmd->op_case == KV__COMMAND__OP_TXN_PREPARE && rc == KV_OK
                         ? version
                         : current;
        w->failed_op = failed;
        w->state = state;
    }
    return KV_OK;
}

/* Applies a session GC entry: where it stopped is where the next one goes
 * on, and after a pass that went through, the next starts
 * session_gc_every() after this one's date. */
static int apply_session_gc(struct replica *r, struct group *g, uint64_t index,
                            const Kv__SessionGc *sg)
{
    struct engine_session_gc out;
    int rc = engine_stage_session_gc(r->engine, g->shard, index, sg->now_ms,
                                     sg->ttl_ms, sg->after.data, sg->after.len,
                                     &out);
    if (rc == KV_EINVAL) /* a command no replica can apply: a no-op */
        return engine_stage_applied(r->engine, g->shard, index);
    if (rc != KV_OK)
        return rc; /* storage failure: the node stops */
    r->stats.applied++;
    r->stats.sessions_expired += out.removed;
    memcpy(g->sgc_after, out.after, out.after_len);
    g->sgc_after_len = out.after_len;
    if (!out.after_len)
        g->sgc_next_ms = sg->now_ms + session_gc_every(r);
    if (out.removed || out.dated)
        log_msg(LOG_DEBUG, "sessions expired", "shard=%u count=%zu dated=%zu",
                g->shard, out.removed, out.dated);
    return KV_OK;
}

static int apply_entry(struct replica *r, struct group *g,
                       const struct raft_entry *e)
{
    if (e->index <= engine_applied(r->engine, g->shard))
        return KV_OK; /* applied before a restart */
    /* Waiters at this index of another term: another leader's entry took
     * the index, so theirs was never committed; a retry is safe. Only the
     * waiter of the entry's own term (if any) gets its outcome. */
    struct waiter *w = NULL;
    for (size_t i = 0; i < g->nwaiters; i++) {
        struct waiter *x = &g->waiters[i];
        if (x->done || x->index != e->index)
            continue;
        if (x->term == e->term) {
            w = x;
        } else {
            x->done = true;
            x->code = KV_ENOTLEADER;
        }
    }
    Kv__Command *cmd = NULL;
    if (e->type == RAFT_ENTRY_NORMAL && e->len)
        cmd = kv__command__unpack(NULL, e->len, e->data);
    if (!cmd || cmd->op_case == KV__COMMAND__OP__NOT_SET) {
        if (e->type == RAFT_ENTRY_NORMAL)
            log_msg(LOG_ERROR, "undecodable log entry applied as a no-op",
                    "shard=%u index=%llu", g->shard,
                    (unsigned long long)e->index);
        if (cmd)
            kv__command__free_unpacked(cmd, NULL);
        int rc = engine_stage_applied(r->engine, g->shard, e->index);
        if (w) {
            w->done = true;
            w->code = KV_EINTERNAL;
        }
        return rc == KV_EINVAL ? KV_OK : rc;
    }
    /* The sessions this entry writes are kept until its proposer said. */
    engine_session_until(r->engine, cmd->seq ? cmd->session_until_ms : 0);
    if (cmd->op_case == KV__COMMAND__OP_SESSION_GC) {
        int rc = apply_session_gc(r, g, e->index, cmd->session_gc);
        kv__command__free_unpacked(cmd, NULL);
        if (w) { /* defensive: no waiter is ever registered for a GC */
            w->done = true;
            w->code = KV_EINTERNAL;
        }
        return rc;
    }
    if (cmd->op_case == KV__COMMAND__OP_EFFECT) {
        int rc = apply_effect(r, g, e->index, cmd, w);
        kv__command__free_unpacked(cmd, NULL);
        return rc;
    }
    if (cmd->op_case == KV__COMMAND__OP_TXN) {
        int rc = apply_txn(r, g, e->index, cmd, w);
        kv__command__free_unpacked(cmd, NULL);
        return rc;
    }
    if (cmd->op_case == KV__COMMAND__OP_TXN_PREPARE ||
        cmd->op_case == KV__COMMAND__OP_TXN_RESOLVE ||
        cmd->op_case == KV__COMMAND__OP_TXN_RECORD ||
        cmd->op_case == KV__COMMAND__OP_TXN_DECIDE) {
        int rc = apply_txn_step(r, g, e->index, cmd, w);
        kv__command__free_unpacked(cmd, NULL);
        return rc;
    }
    if (cmd->op_case == KV__COMMAND__OP_TXN_GC) {
        size_t removed = 0;
        int rc = engine_stage_gc(r->engine, g->shard, e->index,
                                 cmd->txn_gc->now_ms, &removed);
        kv__command__free_unpacked(cmd, NULL);
        if (rc == KV_EINVAL) /* cannot happen: the index is checked above */
            rc = engine_stage_applied(r->engine, g->shard, e->index);
        if (rc != KV_OK)
            return rc; /* storage failure: the node stops */
        if (removed)
            log_msg(LOG_DEBUG, "transaction tombstones removed",
                    "shard=%u count=%zu", g->shard, removed);
        r->stats.applied++;
        if (w) { /* defensive: no waiter is ever registered for a GC */
            w->done = true;
            w->code = KV_EINTERNAL;
        }
        return KV_OK;
    }
    struct engine_write wr = {.shard = g->shard,
                              .index = e->index,
                              .client_id = cmd->client_id.data,
                              .client_id_len = cmd->client_id.len,
                              .seq = cmd->seq};
    if (cmd->op_case == KV__COMMAND__OP_PUT) {
        wr.op = ENGINE_PUT;
        wr.key = cmd->put->key.data;
        wr.klen = cmd->put->key.len;
        wr.val = cmd->put->value.data;
        wr.vlen = cmd->put->value.len;
        wr.if_version = cmd->put->if_version;
        wr.if_absent = cmd->put->if_absent;
    } else {
        wr.op = ENGINE_DEL;
        wr.key = cmd->del->key.data;
        wr.klen = cmd->del->key.len;
        wr.if_version = cmd->del->if_version;
    }
    if (!wr.seq) {
        wr.client_id = NULL;
        wr.client_id_len = 0;
    }
    uint64_t version = 0;
    int rc = engine_stage(r->engine, &wr, &version);
    kv__command__free_unpacked(cmd, NULL);
    if (!applied_outcome(rc))
        return rc;       /* storage failure: the node stops */
    if (rc == KV_EINVAL) /* a command no replica can apply: a no-op */
        engine_stage_applied(r->engine, g->shard, e->index);
    r->stats.applied++;
    if (w) {
        w->done = true;
        w->code = rc;
        w->version = version;
    }
    return KV_OK;
}

static void answer_waiters(struct replica *r, struct group *g)
{
    size_t keep = 0;
    uint64_t applied = engine_applied(r->engine, g->shard);
    for (size_t i = 0; i < g->nwaiters; i++) {
        struct waiter *w = &g->waiters[i];
        if (!w->done && w->index <= applied) {
            /* Skipped by a snapshot: the outcome is unknown here; the
             * client retries and its session answers. */
            w->done = true;
            w->code = KV_EUNAVAILABLE;
        }
        if (!w->done) {
            g->waiters[keep++] = *w;
            continue;
        }
        if (w->kind == W_CALL) {
            finish_call(r, g, w);
            free(w->client);
            free(w->reply);
            wire_free(w->env);
            r->total_waiters--;
            continue;
        }
        Kv__Response resp = KV__RESPONSE__INIT;
        Kv__WriteResult res = KV__WRITE_RESULT__INIT;
        Kv__TxnResult tres = KV__TXN_RESULT__INIT;
        Kv__TxnState sres = KV__TXN_STATE__INIT;
        resp.id = w->req_id;
        bool vote_no = w->kind == W_PREPARE &&
                       (w->code == KV_ECONFLICT || w->code == ENGINE_ELOCKED ||
                        w->code == KV_ETIMEDOUT);
        if (w->kind == W_STATE && w->code == KV_OK) {
            sres.state = (uint32_t)w->state;
            resp.result_case = KV__RESPONSE__RESULT_TXN_STATE;
            resp.txn_state = &sres;
        } else if (vote_no) {
            /* A NO vote carries a TxnResult, so the coordinator tells it
             * from a failure to reach the shard. */
            resp.code = w->code;
            tres.failed_op = (uint32_t)w->failed_op;
            tres.current_version = w->version;
            resp.message = w->code == KV_ECONFLICT ? "condition failed"
                           : w->code == KV_ETIMEDOUT
                               ? "transaction deadline passed, or aborted "
                                 "already"
                               : "a key is locked by another transaction";
            resp.result_case = KV__RESPONSE__RESULT_TXN;
            resp.txn = &tres;
        } else if (w->kind == W_RESOLVE) {
            resp.code = w->code; /* a bare code: never taken for a vote */
        } else if (w->code == ENGINE_ELOCKED) {
            resp.code = w->code;
            resp.message = "a key is locked by a transaction in progress; "
                           "retry";
        } else if (w->kind == W_TXN &&
                   (w->code == KV_OK || w->code == KV_ECONFLICT)) {
            tres.versions = w->versions;
            tres.n_versions = w->versions ? w->nversions : 0;
            if (w->code == KV_ECONFLICT) {
                tres.n_versions = 0;
                tres.failed_op = (uint32_t)w->failed_op;
                tres.current_version = w->version;
                resp.code = KV_ECONFLICT;
                resp.message = "condition failed";
            }
            resp.result_case = KV__RESPONSE__RESULT_TXN;
            resp.txn = &tres;
        } else if (w->code == KV_OK) {
            res.version = w->version;
            resp.result_case = KV__RESPONSE__RESULT_WRITE;
            resp.write = &res;
        } else {
            resp.code = w->code;
            resp.message = w->code == KV_ECONFLICT ? "condition failed"
                           : w->code == KV_ENOTLEADER
                               ? "leadership changed before commit; retry"
                           : w->code == KV_EUNAVAILABLE
                               ? "outcome unknown here; retry"
                               : "";
            if (w->code == KV_ENOTLEADER)
                resp.leader_id = g->leader != r->id ? g->leader : 0;
        }
        answer_to(r, w->client, w->clen, &resp);
        free(w->client);
        free(w->versions);
        r->total_waiters--;
    }
    g->nwaiters = keep;
}

/* --- messages ----------------------------------------------------------- */

static void to_raft_msg(const Kv__RaftMessage *m, struct raft_msg *out,
                        struct raft_entry *es)
{
    *out = (struct raft_msg){.type = (enum raft_msg_type)m->type,
                             .from = m->from,
                             .to = m->to,
                             .term = m->term,
                             .log_term = m->log_term,
                             .index = m->index,
                             .entries = es,
                             .n_entries = m->n_entries,
                             .commit = m->commit,
                             .reject = m->reject,
                             .reject_hint = m->reject_hint,
                             .context = m->context};
    for (size_t i = 0; i < m->n_entries; i++) {
        const Kv__LogEntry *le = m->entries[i];
        es[i] = (struct raft_entry){.term = le->term,
                                    .index = le->index,
                                    .type = le->type,
                                    .data = le->data.data,
                                    .len = le->data.len};
    }
}

/* Answers chunk C of a snapshot stream from FROM: OK, or refused (the
 * sender then ends the stream). */
static void send_ack(struct replica *r, uint32_t from,
                     const Kv__SnapshotChunk *c, bool ok)
{
    Kv__SnapshotAck ack = KV__SNAPSHOT_ACK__INIT;
    Kv__SnapshotAck *ap = &ack;
    ack.shard = c->shard;
    ack.index = c->index;
    ack.seq = c->seq;
    ack.ok = ok;
    Kv__PeerBatch b = KV__PEER_BATCH__INIT;
    b.n_acks = 1;
    b.acks = &ap;
    send_peer(r, from, &b);
}

static void handle_chunk(struct replica *r, uint32_t from,
                         const Kv__SnapshotChunk *c)
{
    struct group *g = c->shard < r->conf->shards ? r->groups[c->shard] : NULL;
    if (!g || c->to != r->id || !is_member(g, from)) {
        r->stats.dropped_msgs++;
        return;
    }
    struct raft_status rs;
    raft_get_status(g->raft, &rs);
    if (c->leader_term < rs.term || g->in.complete) {
        /* From a deposed leader, or a snapshot is already complete and
         * waiting for this iteration's install: keep what is staged. */
        r->stats.dropped_msgs++;
        send_ack(r, from, c, false);
        return;
    }
    if (c->seq == 0) {
        /* A stream that ended early left records staged: they are deleted
         * in slices (clear_staged) while the leader retries. */
        if (!g->clearing && staged_left(r, g)) {
            g->clearing = true;
            log_msg(LOG_INFO, "deleting what an ended snapshot stream staged",
                    "shard=%u", g->shard);
        }
        if (g->clearing)
            goto refuse;
        g->in = (struct snap_in){
            .active = true, .from = from, .index = c->index, .term = c->term};
    }
    if (!g->in.active || g->in.from != from || g->in.index != c->index ||
        g->in.term != c->term || g->in.next_seq != c->seq)
        goto refuse;
    /* Only records of this shard's state may be staged. */
    for (size_t i = 0; i < c->n_records; i++) {
        const Kv__Entry *e = c->records[i];
        if (e->key.len < 5 || e->key.data[0] == 0 ||
            !strchr(SNAP_TAGS, e->key.data[0]) ||
            get_u32(e->key.data + 1) != g->shard)
            goto refuse;
    }
    /* Staged records go straight to the store, synced: an install reads
     * them from there, possibly within this same loop iteration. */
    struct store_batch *zb = store_batch_new();
    if (!zb)
        goto refuse;
    for (size_t i = 0; i < c->n_records; i++) {
        const Kv__Entry *e = c->records[i];
        if (scratch_reserve(r, e->key.len + 5) != KV_OK) {
            store_batch_free(zb);
            goto refuse;
        }
        shard_key(r->scratch, 'Z', g->shard);
        memcpy(r->scratch + 5, e->key.data, e->key.len);
        store_batch_put(zb, r->scratch, e->key.len + 5, e->value.data,
                        e->value.len);
    }
    int zrc = store_write(r->store, zb, true);
    store_batch_free(zb);
    if (zrc != KV_OK)
        goto refuse;
    g->in.next_seq++;
    send_ack(r, from, c, true);
    if (c->last) {
        g->in.complete = true;
        struct raft_msg m = {.type = RAFT_MSG_SNAPSHOT,
                             .from = from,
                             .to = r->id,
                             .term = c->leader_term,
                             .log_term = c->term,
                             .index = c->index};
        raft_step(g->raft, &m);
    }
    return;
refuse:
    g->in = (struct snap_in){0};
    send_ack(r, from, c, false);
}

static void handle_ack(struct replica *r, uint32_t from,
                       const Kv__SnapshotAck *a)
{
    struct group *g = a->shard < r->conf->shards ? r->groups[a->shard] : NULL;
    if (!g)
        return;
    for (size_t i = 0; i < g->nmembers; i++) {
        struct snap_out *o = &g->out[i];
        if (!o->active || o->peer != from || o->index != a->index)
            continue;
        if (!a->ok) {
            snap_out_end(r, g, o, false);
            return;
        }
        if (a->seq + 1 > o->acked)
            o->acked = a->seq + 1;
        o->idle = 0;
        if (o->sent_last && o->acked == o->next_seq) {
            snap_out_end(r, g, o, true);
            log_msg(LOG_INFO, "snapshot delivered", "shard=%u to=%u", g->shard,
                    from);
        }
        return;
    }
}

/* Whether peer PI's clock reading is current; *AHEAD gets it. */
static bool clock_ahead(const struct replica *r, size_t pi, int64_t *ahead)
{
    const struct peer_clock *c = &r->peer_clocks[pi];
    if (!c->seen || r->ticks >= c->since + 2 * CLOCK_WINDOW_TICKS)
        return false;
    *ahead = r->ticks >= c->since + CLOCK_WINDOW_TICKS ? c->cur
             : c->cur > c->prev                        ? c->cur
                                                       : c->prev;
    return true;
}

/* Takes the clock reading of a batch peer PI (node FROM) sent at SENT_MS
 * of its wall clock. */
static void note_clock(struct replica *r, size_t pi, uint32_t from,
                       uint64_t sent_ms)
{
    struct peer_clock *c = &r->peer_clocks[pi];
    int64_t d = (int64_t)(sent_ms - txn_wall(r));
    if (!c->seen || r->ticks >= c->since + 2 * CLOCK_WINDOW_TICKS) {
        *c = (struct peer_clock){.seen = true,
                                 .since = r->ticks,
                                 .cur = d,
                                 .prev = d,
                                 .warned = c->warned};
    } else if (r->ticks >= c->since + CLOCK_WINDOW_TICKS) {
        c->prev = c->cur;
        c->cur = d;
        c->since = r->ticks;
        c->readings = 0;
    } else if (d > c->cur) {
        c->cur = d;
    }
    if (!c->readings || c->last != r->ticks)
        c->readings++;
    c->last = r->ticks;
    int64_t ahead;
    if (clock_ahead(r, pi, &ahead) && ahead > CLOCK_WARN_MS &&
        (!c->warned || r->ticks + 1 >= c->warned + CLOCK_WARN_TICKS)) {
        c->warned = r->ticks + 1;
        log_msg(LOG_WARN, "a peer's clock is ahead of this node's",
                "peer=%u ahead_ms=%lld hint=\"check NTP on both nodes: "
                "session expiry and transaction deadlines use wall clocks\"",
                from, (long long)ahead);
    }
}

bool replica_peer_clock(const struct replica *r, uint32_t peer,
                        int64_t *ahead_ms, uint32_t *readings)
{
    const struct conf_node *n = node_of(r, peer);
    if (!n || peer == r->id ||
        !clock_ahead(r, (size_t)(n - r->conf->nodes), ahead_ms))
        return false;
    *readings = r->peer_clocks[n - r->conf->nodes].readings;
    return true;
}

void replica_peer(struct replica *r, const Kv__PeerBatch *b)
{
    if (!node_of(r, b->from) || b->from == r->id || !b->cluster ||
        strcmp(b->cluster, r->conf->cluster) != 0) {
        r->stats.dropped_msgs += b->n_msgs + b->n_chunks + b->n_acks;
        return;
    }
    /* A peer that restarted may have lost its data: probe it afresh. */
    const struct conf_node *from = node_of(r, b->from);
    size_t pi = (size_t)(from - r->conf->nodes);
    if (b->boot_id && r->peer_boot[pi] != b->boot_id) {
        if (r->peer_boot[pi])
            for (uint32_t s = 0; s < r->conf->shards; s++) {
                struct group *g = r->groups[s];
                if (!g || !is_member(g, b->from))
                    continue;
                raft_peer_restarted(g->raft, b->from);
                /* A stream to it lost its place with the restart: end it
                 * now rather than after SNAP_STALL_TICKS of silence. */
                for (size_t j = 0; j < g->nmembers; j++)
                    if (g->out[j].active && g->out[j].peer == b->from)
                        snap_out_end(r, g, &g->out[j], false);
            }
        r->peer_boot[pi] = b->boot_id;
    }
    if (b->features & ~r->peer_features[pi]) {
        r->peer_features[pi] |= b->features;
        unsigned char fk[5], fv[4];
        feature_key(fk, b->from);
        put_u32(fv, r->peer_features[pi]);
        engine_stage_raw(r->engine, fk, sizeof(fk), fv, sizeof(fv));
    }
    if (b->has_plugins)
        take_plugins(r, pi, b);
    if (b->sent_ms)
        note_clock(r, pi, b->from, b->sent_ms);
    struct raft_entry *es = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < b->n_msgs; i++) {
        const Kv__RaftMessage *m = b->msgs[i];
        struct group *g =
            m->shard < r->conf->shards ? r->groups[m->shard] : NULL;
        if (!g || m->from != b->from || m->to != r->id ||
            m->type == RAFT_MSG_SNAPSHOT) {
            r->stats.dropped_msgs++;
            continue;
        }
        if (m->n_entries > cap) {
            struct raft_entry *x = realloc(es, m->n_entries * sizeof(*es));
            if (!x) {
                r->stats.dropped_msgs++;
                continue;
            }
            es = x;
            cap = m->n_entries;
        }
        for (size_t j = 0; j < g->nmembers; j++)
            if (g->members[j] == b->from)
                g->heard[j] = r->ticks;
        struct raft_msg rm;
        to_raft_msg(m, &rm, es);
        if (raft_step(g->raft, &rm) != RAFT_OK)
            r->stats.dropped_msgs++;
    }
    free(es);
    for (size_t i = 0; i < b->n_chunks; i++)
        handle_chunk(r, b->from, b->chunks[i]);
    for (size_t i = 0; i < b->n_acks; i++)
        handle_ack(r, b->from, b->acks[i]);
    for (size_t i = 0; i < b->n_replies; i++)
        take_answer(r, b->replies[i].data, b->replies[i].len);
    for (size_t i = 0; i < b->n_calls; i++)
        take_call(r, b->calls[i].data, b->calls[i].len, b->from);
}

/* Whether message M of shard S is sent in this phase: EARLY sends a
 * leader's appends and heartbeats before its own synced write (its entries
 * count for commit only once stored: raft.c self_stored); everything else
 * waits for the write, as Raft requires of votes and acknowledgements. */
static bool send_now(const struct replica *r, uint32_t s,
                     const struct raft_msg *m, bool early)
{
    if (m->type == RAFT_MSG_SNAPSHOT)
        return false;
    bool leader_msg =
        m->type == RAFT_MSG_APPEND || m->type == RAFT_MSG_HEARTBEAT;
    bool in_early = r->early[s] && leader_msg;
    return early ? in_early : !in_early;
}

/* Sends the Raft messages of this flush for one phase, one PeerBatch per
 * peer node. */
static void send_messages(struct replica *r, bool early)
{
    const struct conf *c = r->conf;
    for (size_t ni = 0; ni < c->nnodes; ni++) {
        uint32_t peer = c->nodes[ni].id;
        if (peer == r->id)
            continue;
        size_t count = 0, nent = 0;
        for (uint32_t s = 0; s < c->shards; s++) {
            if (!r->has_rd[s])
                continue;
            for (size_t i = 0; i < r->rd[s].n_msgs; i++) {
                const struct raft_msg *m = &r->rd[s].msgs[i];
                if (m->to == peer && send_now(r, s, m, early)) {
                    count++;
                    nent += m->n_entries;
                }
            }
        }
        if (!count)
            continue;
        Kv__RaftMessage *ms = calloc(count, sizeof(*ms));
        Kv__RaftMessage **mp = calloc(count, sizeof(*mp));
        Kv__LogEntry *les = calloc(nent ? nent : 1, sizeof(*les));
        Kv__LogEntry **lp = calloc(nent ? nent : 1, sizeof(*lp));
        if (!ms || !mp || !les || !lp)
            goto next; /* dropped: Raft retries */
        /* Frames stay well under max_message_bytes: a peer's ZeroMQ drops
         * (and disconnects) anything larger. */
        size_t budget = c->max_message_bytes / 2;
        size_t k = 0, e = 0, start = 0, bytes = 0;
        for (uint32_t s = 0; s < c->shards; s++) {
            if (!r->has_rd[s])
                continue;
            for (size_t i = 0; i < r->rd[s].n_msgs; i++) {
                const struct raft_msg *m = &r->rd[s].msgs[i];
                if (m->to != peer || !send_now(r, s, m, early))
                    continue;
                size_t mbytes = 96;
                for (size_t j = 0; j < m->n_entries; j++)
                    mbytes += m->entries[j].len + 32;
                if (k > start && bytes + mbytes > budget) {
                    Kv__PeerBatch part = KV__PEER_BATCH__INIT;
                    part.n_msgs = k - start;
                    part.msgs = &mp[start];
                    send_peer(r, peer, &part);
                    start = k;
                    bytes = 0;
                }
                bytes += mbytes;
                Kv__RaftMessage *pm = &ms[k];
                kv__raft_message__init(pm);
                pm->shard = s;
                pm->type = m->type;
                pm->from = m->from;
                pm->to = m->to;
                pm->term = m->term;
                pm->log_term = m->log_term;
                pm->index = m->index;
                pm->commit = m->commit;
                pm->reject = m->reject;
                pm->reject_hint = m->reject_hint;
                pm->context = m->context;
                pm->n_entries = m->n_entries;
                pm->entries = &lp[e];
                for (size_t j = 0; j < m->n_entries; j++) {
                    kv__log_entry__init(&les[e]);
                    les[e].term = m->entries[j].term;
                    les[e].index = m->entries[j].index;
                    les[e].type = m->entries[j].type;
                    les[e].data.data = m->entries[j].data;
                    les[e].data.len = m->entries[j].len;
                    lp[e] = &les[e];
                    e++;
                }
                mp[k] = pm;
                k++;
            }
        }
        Kv__PeerBatch b = KV__PEER_BATCH__INIT;
        b.n_msgs = k - start;
        b.msgs = &mp[start];
        if (b.n_msgs)
            send_peer(r, peer, &b);
    next:
        free(ms);
        free(mp);
        free(les);
        free(lp);
    }
}

/* --- internal calls (cross-shard transactions) ------------------------- */

static void local_push(struct replica *r, bool answer, const void *buf,
                       size_t len)
{
    if (r->nlocal == r->caplocal) {
        size_t cap = r->caplocal ? r->caplocal * 2 : 16;
        struct local *l = realloc(r->local, cap * sizeof(*l));
        if (!l)
            return; /* dropped: the caller repeats its call */
        r->local = l;
        r->caplocal = cap;
    }
    unsigned char *copy = malloc(len ? len : 1);
    if (!copy)
        return;
    memcpy(copy, buf, len);
    r->local[r->nlocal++] =
        (struct local){.answer = answer, .buf = copy, .len = len};
}

/* Where a call to SHARD goes: its leader as this node knows it, else the
 * leader some answer named, else its preferred replica. */
static uint32_t call_target(const struct replica *r, uint32_t shard)
{
    const struct group *g = r->groups[shard];
    if (g && g->leader != RAFT_NONE)
        return g->leader;
    if (r->hint[shard] != RAFT_NONE)
        return r->hint[shard];
    return r->conf->nodes[conf_replica(r->conf, shard, 0)].id;
}

/* txn_env.call: sends REQ to SHARD's leader inside a PeerBatch (or, for
 * this node, through the local queue). Unanswered calls are repeated by
 * the coordinator, each time to the replica after the last one tried. */
static void txn_call(void *arg, uint32_t shard, const Kv__Request *req)
{
    struct replica *r = arg;
    if (shard >= r->conf->shards)
        return;
    uint32_t to = call_target(r, shard);
    Kv__Envelope env = KV__ENVELOPE__INIT;
    env.body_case = KV__ENVELOPE__BODY_REQUEST;
    env.request = (Kv__Request *)req;
    send_internal(r, to, &env, false);
    /* Next time, if this one goes unanswered, try another replica. */
    if (to != r->id &&
        (!r->groups[shard] || r->groups[shard]->leader == RAFT_NONE)) {
        size_t i = 0;
        while (i < r->conf->replicas &&
               r->conf->nodes[conf_replica(r->conf, shard, i)].id != to)
            i++;
        r->hint[shard] =
            r->conf
                ->nodes[conf_replica(r->conf, shard,
                                     (uint32_t)((i + 1) % r->conf->replicas))]
                .id;
    }
}

static bool txn_leads(void *arg, uint32_t shard)
{
    struct replica *r = arg;
    return shard < r->conf->shards && r->groups[shard] &&
           r->groups[shard]->role == RAFT_LEADER;
}

static void txn_failpoint(void *arg, const char *name)
{
    struct replica *r = arg;
    r->env.failpoint(r->env.arg, name);
}

static void txn_reply(void *arg, const void *client, size_t clen,
                      const Kv__Response *resp)
{
    answer_to(arg, client, clen, resp);
}

static uint64_t txn_wall(void *arg)
{
    struct replica *r = arg;
    return r->env.wall_ms  ? r->env.wall_ms(r->env.arg)
           : r->env.now_ms ? r->env.now_ms(r->env.arg)
                           : r->ticks * REPLICA_TICK_MS;
}

/* Decodes an internal frame (a call or an answer, from a peer or the local
 * queue); NULL unless it is a valid Envelope of body BODY. */
static Kv__Envelope *decode_internal(struct replica *r, const void *buf,
                                     size_t len, Kv__Envelope__BodyCase body)
{
    Kv__Envelope *env = NULL;
    char err[64];
    if (wire_decode(buf, len, r->conf->max_message_bytes + 4096, &env, err,
                    sizeof(err)) != KV_OK)
        return NULL;
    if (env->body_case != body) {
        wire_free(env);
        return NULL;
    }
    return env;
}

/* An answer to one of this node's calls: a parked read's or a
 * coordinator's. */
static void take_answer(struct replica *r, const void *buf, size_t len)
{
    Kv__Envelope *env =
        decode_internal(r, buf, len, KV__ENVELOPE__BODY_RESPONSE);
    if (!env)
        return;
    if (!parked_answer(r, env->response) && !fanout_answer(r, env->response))
        txns_reply(r->txns, env->response);
    wire_free(env);
}

/* A call from node FROM (this node itself for the local queue). */
static void take_call(struct replica *r, const void *buf, size_t len,
                      uint32_t from)
{
    Kv__Envelope *env =
        decode_internal(r, buf, len, KV__ENVELOPE__BODY_REQUEST);
    if (!env)
        return;
    unsigned char a[PEER_ADDR_LEN];
    peer_addr(a, from);
    replica_request(r, a, sizeof(a), env); /* takes ENV */
}

/* Runs the local queue (what it runs may queue more: bounded per call). */
static void run_local(struct replica *r)
{
    size_t n = r->nlocal;
    struct local *l = r->local;
    r->local = NULL;
    r->nlocal = r->caplocal = 0;
    for (size_t i = 0; i < n; i++) {
        if (l[i].answer)
            take_answer(r, l[i].buf, l[i].len);
        else
            take_call(r, l[i].buf, l[i].len, r->id);
        free(l[i].buf);
    }
    free(l);
}

/* --- the driver step ------------------------------------------------------ */

/* Compacts G's log once it holds compact_log_entries applied entries past
 * a kept tail of a fifth of that (for slow followers), or COMPACT_BYTES. */
static void maybe_compact(struct replica *r, struct group *g)
{
    uint64_t applied = engine_applied(r->engine, g->shard);
    uint64_t every = r->conf->compact_log_entries, keep = every / 5;
    uint64_t to;
    if (g->log_bytes >= COMPACT_BYTES && applied > g->snap_index) {
        /* Big values: memory matters more than sparing a slow follower a
         * snapshot. */
        to = applied;
        g->log_bytes = 0;
    } else if (applied >= g->snap_index + every + keep) {
        to = applied - keep;
        g->log_bytes = g->log_bytes * keep / (applied - g->snap_index);
    } else {
        return;
    }
    uint64_t term = raft_term_at(g->raft, to);
    if (!term || raft_compact(g->raft, to) != RAFT_OK)
        return;
    for (uint64_t i = g->snap_index + 1; i <= to; i++) {
        unsigned char k[13];
        log_key(k, g->shard, i);
        engine_stage_raw(r->engine, k, sizeof(k), NULL, 0);
    }
    g->snap_index = to;
    g->snap_term = term;
    stage_hardstate(r, g);
}

int replica_flush(struct replica *r)
{
    const struct conf *c = r->conf;
    int rc = KV_OK;
    run_local(r); /* calls queued since the last flush: proposed now */
    for (uint32_t s = 0; s < c->shards; s++) {
        struct group *g = r->groups[s];
        r->has_rd[s] = false;
        if (!g)
            continue;
        if (g->clearing && (rc = clear_staged(r, g)) != KV_OK)
            return rc;
        if (g->inst.active) {
            rc = install_step(r, g);
            if (rc != KV_OK)
                return rc;
            if (g->inst.active)
                continue; /* held until its data is in place */
        }
        if (g->role == RAFT_LEADER)
            start_reads(r, g);
        if (!raft_ready(g->raft, &r->rd[s])) {
            if (g->in.complete)
                g->in = (struct snap_in){0}; /* refused: nothing to do */
            continue;
        }
        r->has_rd[s] = true;
        struct raft_ready *rd = &r->rd[s];
        note_heartbeats(r, g, rd);
        /* A leader whose term and vote are already on disk may send its
         * appends before this iteration's fsync. */
        r->early[s] = rd->role == RAFT_LEADER &&
                      (!rd->hs_changed || (rd->hs.term == g->hs.term &&
                                           rd->hs.vote == g->hs.vote));
        if (rd->soft_changed) {
            if (g->role == RAFT_LEADER && rd->role != RAFT_LEADER) {
                bounce_reads(r, g);
                bounce_calls(r, g);
                pending_clear(g->pend);
            }
            if (g->role != RAFT_LEADER && rd->role == RAFT_LEADER)
                g->lead_from = raft_last_index(g->raft);
            if (rd->role != g->role || rd->leader != g->leader)
                log_msg(rd->role == RAFT_LEADER ? LOG_INFO : LOG_DEBUG,
                        "role changed", "shard=%u role=%s leader=%u term=%llu",
                        s, role_name(rd->role), rd->leader,
                        (unsigned long long)rd->hs.term);
            if (rd->role != g->role)
                g->balance_ticks = 0; /* a new leader settles in first */
            g->role = rd->role;
            g->leader = rd->leader;
        }
        if (rd->has_snapshot) {
            rc = install_snapshot(r, g, rd);
            if (rc != KV_OK)
                return rc;
        }
        if (rd->hs_changed) {
            g->hs = rd->hs;
            stage_hardstate(r, g);
        }
        if (g->rebuilt && !raft_awaits_leader(g->raft)) {
            /* with this Ready's hard state: a restart must not find the
             * marker gone and the vote not yet stored */
            unsigned char rk[5];
            shard_key(rk, 'R', s);
            engine_stage_raw(r->engine, rk, sizeof(rk), NULL, 0);
            g->rebuilt = false;
            log_msg(LOG_INFO, "rebuilt replica votes again",
                    "shard=%u leader=%u term=%llu", s, rd->leader,
                    (unsigned long long)rd->hs.term);
        }
        for (size_t i = 0; i < rd->n_entries; i++) {
            rc = stage_entry(r, s, &rd->entries[i]);
            if (rc != KV_OK)
                return rc;
        }
        if (rd->truncate_after && (rd->n_entries || rd->has_snapshot)) {
            /* Stored entries past the new log end are stale: past the last
             * new entry, or past an installed snapshot that replaced a
             * conflicting log. */
            uint64_t last = rd->n_entries ? rd->entries[rd->n_entries - 1].index
                                          : rd->snap_index;
            for (uint64_t i = last + 1; i <= rd->truncate_after; i++) {
                unsigned char k[13];
                log_key(k, s, i);
                engine_stage_raw(r->engine, k, sizeof(k), NULL, 0);
            }
        }
        for (size_t i = 0; i < rd->n_committed; i++) {
            rc = g->inst.active ? install_defer(g, &rd->committed[i])
                                : apply_entry(r, g, &rd->committed[i]);
            if (rc != KV_OK)
                return rc;
        }
        pending_applied(g->pend, engine_applied(r->engine, s));
        for (size_t i = 0; i < rd->n_reads; i++)
            for (size_t j = 0; j < g->nreads; j++)
                if (g->reads[j].ctx == rd->reads[i].ctx) {
                    g->reads[j].indexed = true;
                    g->reads[j].index = rd->reads[i].index;
                }
        if (g->in.complete && !rd->has_snapshot)
            g->in = (struct snap_in){0}; /* raft refused it (stale) */
        for (size_t i = 0; i < rd->n_msgs; i++) {
            const struct raft_msg *m = &rd->msgs[i];
            if (m->type != RAFT_MSG_SNAPSHOT)
                continue;
            for (size_t j = 0; j < g->nmembers; j++)
                if (g->members[j] == m->to)
                    snap_out_start(r, g, &g->out[j], m->to);
        }
    }
    /* 2. A leader's appends go out first. Writes applied now are answered
     * before the fsync below: they are committed, so stored on a majority
     * already, and no read is served before this batch is written (reads
     * are answered after it, and the next requests are read after it). */
    send_messages(r, true);
    for (uint32_t s = 0; s < c->shards; s++)
        if (r->groups[s])
            answer_waiters(r, r->groups[s]);
    if (r->env.flush)
        r->env.flush(r->env.arg);
    /* 3. One synced batch for every group. */
    rc = engine_commit(r->engine);
    if (rc != KV_OK) {
        log_msg(LOG_ERROR, "cannot persist raft state", "error=\"%s\"",
                kv_strerror(rc));
        return rc;
    }
    /* 3. Send. */
    send_messages(r, false);
    /* 4. Answer. 5. Advance. */
    for (uint32_t s = 0; s < c->shards; s++) {
        struct group *g = r->groups[s];
        if (!g)
            continue;
        finish_reads(r, g);
        if (r->has_rd[s])
            raft_advance(g->raft, &r->rd[s]);
        r->has_rd[s] = false;
        for (size_t j = 0; j < g->nmembers; j++)
            if (g->out[j].active)
                snap_out_pump(r, g, &g->out[j]);
        if (!g->inst.active)
            maybe_compact(r, g);
    }
    run_local(r);
    run_calls(r);
    return KV_OK;
}

/* Whether member ID answered within the last four heartbeat rounds (one
 * putting a snapshot in place, say, does not). */
static bool heard_lately(const struct replica *r, const struct group *g,
                         uint32_t id)
{
    for (size_t j = 0; j < g->nmembers; j++)
        if (g->members[j] == id)
            return r->ticks - g->heard[j] <= 4 * HEARTBEAT_TICKS;
    return false;
}

/* Leaders drift to whichever node won the last election; the placement's
 * first member is the preferred leader of each shard, which spreads
 * leadership (and so the work of serving) evenly over the nodes. A leader
 * that is not the preferred one hands over to it once it is active and
 * fully caught up, so the hand-over costs no election timeout. */
static void balance_leader(const struct replica *r, struct group *g)
{
    uint32_t preferred = g->members[0];
    if (g->role != RAFT_LEADER || preferred == r->id ||
        ++g->balance_ticks < BALANCE_TICKS)
        return;
    g->balance_ticks = 0;
    if (!heard_lately(r, g, preferred))
        return; /* down, or busy putting a snapshot in place */
    struct raft_status st;
    raft_get_status(g->raft, &st);
    for (size_t i = 0; i < st.n_progress; i++) {
        const struct raft_progress *p = &st.progress[i];
        if (p->id == preferred && p->match == st.last_index)
            raft_transfer_leader(g->raft, preferred);
    }
}

/* Every RECOVER_TICKS, a leader looks for transactions nobody drives:
 * records on its home shards, intents past their deadline on the shards
 * it participates in; and for tombstones old enough to go. */
#define RECOVER_TICKS 25     /* 250 ms: cheap when nothing is in flight */
#define RECOVER_GRACE_MS 500 /* after a deadline, before a participant asks */

struct sweep {
    struct replica *r;
    uint32_t shard;
    uint64_t now;
};

static int adopt_one(void *arg, const struct engine_txn_info *t)
{
    struct sweep *sw = arg;
    txns_adopt(sw->r->txns, sw->shard, t);
    return 0;
}

static int check_one(void *arg, const struct engine_txn_info *t)
{
    struct sweep *sw = arg;
    if (sw->now > t->deadline_ms + RECOVER_GRACE_MS)
        txns_check_prepared(sw->r->txns, sw->shard, t);
    return 0;
}

/* Proposes CMD, an entry of G's leader's own that nobody waits for; *INDEX
 * gets its index (left as it was when it could not be proposed). */
static void propose_own(struct replica *r, struct group *g,
                        const Kv__Command *cmd, uint64_t *index)
{
    size_t n = kv__command__get_packed_size(cmd);
    if (scratch_reserve(r, n ? n : 1) != KV_OK)
        return;
    kv__command__pack(cmd, r->scratch);
    if (raft_propose(g->raft, r->scratch, n, index) == RAFT_OK)
        r->stats.proposals++;
}

/* Proposes the removal of G's old tombstones (engine_stage_gc), dated
 * NOW by this leader's clock, unless the last one proposed here is not
 * applied yet. Nobody waits for it: the next sweep proposes again if
 * some are left, or if it was lost. */
static void propose_gc(struct replica *r, struct group *g, uint64_t now)
{
    if (g->gc_index > engine_applied(r->engine, g->shard))
        return;
    Kv__TxnGc gc = KV__TXN_GC__INIT;
    gc.now_ms = now;
    Kv__Command cmd = KV__COMMAND__INIT;
    cmd.op_case = KV__COMMAND__OP_TXN_GC;
    cmd.txn_gc = &gc;
    propose_own(r, g, &cmd, &g->gc_index);
}

/* Proposes the next session GC entry of G (apply_session_gc), dated NOW
 * by this leader's clock: at once while a pass is under way, else once
 * the next pass is due and the shard has sessions. Not while the last one
 * proposed here is unapplied; nobody waits for it. */
static void propose_session_gc(struct replica *r, struct group *g, uint64_t now)
{
    if (g->sgc_index > engine_applied(r->engine, g->shard) ||
        !group_has(r, g, FEATURE_SESSION_EXPIRY))
        return;
    if (g->sgc_next_ms > now + session_gc_every(r))
        g->sgc_next_ms = now + session_gc_every(r); /* a clock gone wrong */
    if (!g->sgc_after_len) {
        if (now < g->sgc_next_ms)
            return;
        if (!engine_has_sessions(r->engine, g->shard)) {
            g->sgc_next_ms = now + session_gc_every(r);
            return;
        }
    }
    Kv__SessionGc sg = KV__SESSION_GC__INIT;
    sg.now_ms = now;
    sg.ttl_ms = (uint64_t)r->conf->session_ttl_s * 1000;
    sg.after.data = g->sgc_after;
    sg.after.len = g->sgc_after_len;
    Kv__Command cmd = KV__COMMAND__INIT;
    cmd.op_case = KV__COMMAND__OP_SESSION_GC;
    cmd.session_gc = &sg;
    propose_own(r, g, &cmd, &g->sgc_index);
}

static void recover_txns(struct replica *r)
{
    struct sweep sw = {.r = r, .now = txn_wall(r)};
    for (uint32_t s = 0; s < r->conf->shards; s++) {
        struct group *g = r->groups[s];
        if (!g || g->role != RAFT_LEADER)
            continue;
        sw.shard = s;
        if (engine_has_txn_records(r->engine, s))
            engine_list_txns(r->engine, s, 'X', adopt_one, &sw);
        if (engine_has_intents(r->engine, s))
            engine_list_txns(r->engine, s, 'P', check_one, &sw);
        if (engine_gc_due(r->engine, s, sw.now))
            propose_gc(r, g, sw.now);
        propose_session_gc(r, g, sw.now);
    }
}

void replica_tick(struct replica *r)
{
    r->ticks++;
    txns_tick(r->txns);
    tick_parked(r);
    tick_calls(r);
    tick_fanouts(r);
    if (r->ticks % RECOVER_TICKS == 0)
        recover_txns(r);
    for (uint32_t s = 0; s < r->conf->shards; s++) {
        struct group *g = r->groups[s];
        if (!g)
            continue;
        raft_tick(g->raft);
        balance_leader(r, g);
        for (size_t j = 0; j < g->nmembers; j++) {
            struct snap_out *o = &g->out[j];
            if (o->active && ++o->idle > SNAP_STALL_TICKS) {
                log_msg(LOG_WARN, "snapshot stream stalled", "shard=%u to=%u",
                        s, o->peer);
                snap_out_end(r, g, o, false);
            }
        }
    }
}

size_t replica_transfer_all(struct replica *r)
{
    size_t led = 0;
    for (uint32_t s = 0; s < r->conf->shards; s++) {
        struct group *g = r->groups[s];
        if (!g || g->role != RAFT_LEADER || g->nmembers < 2)
            continue;
        led++;
        struct raft_status st;
        raft_get_status(g->raft, &st);
        uint32_t best = RAFT_NONE;
        uint64_t best_match = 0;
        for (size_t i = 0; i < st.n_progress; i++) {
            const struct raft_progress *p = &st.progress[i];
            if (p->id == r->id || !p->active || !heard_lately(r, g, p->id))
                continue;
            if (best == RAFT_NONE || p->match > best_match) {
                best = p->id;
                best_match = p->match;
            }
        }
        if (best != RAFT_NONE)
            raft_transfer_leader(g->raft, best);
    }
    return led;
}

/* --- status ------------------------------------------------------------- */

static const char *role_name(enum raft_role role)
{
    switch (role) {
    case RAFT_LEADER:
        return "leader";
    case RAFT_CANDIDATE:
        return "candidate";
    case RAFT_PRECANDIDATE:
        return "precandidate";
    default:
        return "follower";
    }
}

#define STATUS_MAX_TXNS 100

struct txn_list {
    struct replica *r;
    Kv__ShardInfo *si;
    uint64_t now;
    bool failed;
};

/* How long ago (ms, negative: ahead) a transaction of DEADLINE began, at
 * NOW: the deadline comes from a stored record or a peer's call, so any
 * value must give an answer, saturated to the range of an int64. */
static int64_t age_since(uint64_t now, uint64_t deadline, uint32_t timeout)
{
    uint64_t began = deadline > timeout ? deadline - timeout : 0;
    if (now >= began)
        return now - began > INT64_MAX ? INT64_MAX : (int64_t)(now - began);
    return began - now > INT64_MAX ? -INT64_MAX : -(int64_t)(began - now);
}

/* Adds one transaction to a shard's status. */
static int list_txn(void *arg, const struct engine_txn_info *t)
{
    struct txn_list *tl = arg;
    Kv__ShardInfo *si = tl->si;
    if (si->n_txns >= STATUS_MAX_TXNS)
        return 1;
    Kv__TxnInfo **p = realloc(si->txns, (si->n_txns + 1) * sizeof(*p));
    Kv__TxnInfo *x = malloc(sizeof(*x) + ENGINE_TXN_ID_LEN);
    if (!p || !x) {
        if (p)
            si->txns = p;
        free(x);
        tl->failed = true;
        return 1;
    }
    si->txns = p;
    kv__txn_info__init(x);
    unsigned char *id = (unsigned char *)(x + 1);
    memcpy(id, t->txn_id, ENGINE_TXN_ID_LEN);
    x->txn_id.data = id;
    x->txn_id.len = ENGINE_TXN_ID_LEN;
    x->state = t->state < 0                       ? "prepared"
               : t->state == ENGINE_TXN_PENDING   ? "pending"
               : t->state == ENGINE_TXN_COMMITTED ? "committed"
                                                  : "aborted";
    x->home = t->state < 0 ? t->home : si->shard;
    x->deadline_ms = t->deadline_ms;
    x->age_ms = age_since(tl->now, t->deadline_ms, tl->r->conf->txn_timeout_ms);
    x->keys = t->nkeys;
    si->txns[si->n_txns++] = x;
    return 0;
}

int replica_status(struct replica *r, Kv__StatusResult *st)
{
    const struct conf *c = r->conf;
    Kv__NodeInfo *nodes = calloc(c->nnodes, sizeof(*nodes));
    Kv__NodeInfo **nptr = calloc(c->nnodes, sizeof(*nptr));
    Kv__ShardInfo *shards = calloc(c->shards, sizeof(*shards));
    Kv__ShardInfo **sptr = calloc(c->shards, sizeof(*sptr));
    if (!nodes || !nptr || !shards || !sptr) {
        free(nodes);
        free(nptr);
        free(shards);
        free(sptr);
        return KV_ENOMEM;
    }
    for (size_t i = 0; i < c->nnodes; i++) {
        kv__node_info__init(&nodes[i]);
        nodes[i].id = c->nodes[i].id;
        nodes[i].address = c->nodes[i].address;
        nptr[i] = &nodes[i];
    }
    for (uint32_t sh = 0; sh < c->shards; sh++) {
        kv__shard_info__init(&shards[sh]);
        shards[sh].shard = sh;
        sptr[sh] = &shards[sh];
    }
    st->cluster = c->cluster;
    st->node_id = r->id;
    st->shards = c->shards;
    st->replicas = c->replicas;
    st->n_nodes = c->nnodes;
    st->nodes = nptr;
    st->n_shard_info = c->shards;
    st->shard_info = sptr;
    st->txn_coordinators = txns_active(r->txns);
    st->sessions_expired = r->stats.sessions_expired;
    st->snapshots_installed = r->stats.snapshots_installed;
    for (size_t i = 0; i < r->conf->nnodes; i++) {
        int64_t ahead;
        if (r->conf->nodes[i].id != r->id && clock_ahead(r, i, &ahead) &&
            ahead > 0 && (uint64_t)ahead > st->peer_clock_ahead_ms) {
            st->peer_clock_ahead_ms = (uint64_t)ahead;
            st->peer_clock_ahead_node = r->conf->nodes[i].id;
        }
    }
    for (size_t i = 0; i < st->n_shard_info; i++) {
        Kv__ShardInfo *si = st->shard_info[i];
        struct group *g =
            si->shard < r->conf->shards ? r->groups[si->shard] : NULL;
        if (!g)
            continue;
        struct raft_status rs;
        raft_get_status(g->raft, &rs);
        si->local = true;
        si->leader = rs.leader;
        si->term = rs.term;
        si->commit = rs.commit;
        si->role = (char *)role_name(rs.role);
        si->installing = g->inst.active;
        engine_shard_info(r->engine, g->shard, &si->keys, &si->applied);
        if (rs.role != RAFT_LEADER || rs.n_progress == 0)
            continue;
        Kv__MemberInfo *mi = calloc(rs.n_progress, sizeof(*mi));
        Kv__MemberInfo **mp = calloc(rs.n_progress, sizeof(*mp));
        if (!mi || !mp) {
            free(mi);
            free(mp);
            return KV_ENOMEM;
        }
        for (size_t j = 0; j < rs.n_progress; j++) {
            kv__member_info__init(&mi[j]);
            mi[j].id = rs.progress[j].id;
            mi[j].match = rs.progress[j].match;
            mi[j].active = rs.progress[j].active || rs.progress[j].id == r->id;
            mp[j] = &mi[j];
        }
        si->n_members = rs.n_progress;
        si->members = mp;
        struct txn_list tl = {.r = r, .si = si, .now = txn_wall(r)};
        if (engine_has_txn_records(r->engine, g->shard))
            engine_list_txns(r->engine, g->shard, 'X', list_txn, &tl);
        if (engine_has_intents(r->engine, g->shard))
            engine_list_txns(r->engine, g->shard, 'P', list_txn, &tl);
        if (tl.failed)
            return KV_ENOMEM;
    }
    return KV_OK;
}

void replica_status_free(Kv__StatusResult *st)
{
    for (size_t i = 0; st->shard_info && i < st->n_shard_info; i++) {
        Kv__ShardInfo *si = st->shard_info[i];
        if (si->n_members) {
            free(si->members[0]);
            free(si->members);
            si->members = NULL;
            si->n_members = 0;
        }
        for (size_t j = 0; j < si->n_txns; j++)
            free(si->txns[j]);
        free(si->txns);
        si->txns = NULL;
        si->n_txns = 0;
    }
    if (st->n_nodes)
        free(st->nodes[0]);
    free(st->nodes);
    if (st->n_shard_info)
        free(st->shard_info[0]);
    free(st->shard_info);
    st->nodes = NULL;
    st->n_nodes = 0;
    st->shard_info = NULL;
    st->n_shard_info = 0;
}

int replica_check_invariants(const struct replica *r, char *why, size_t whylen)
{
    for (uint32_t s = 0; s < r->conf->shards; s++) {
        const struct group *g = r->groups[s];
        if (!g)
            continue;
        char buf[200];
        if (raft_check_invariants(g->raft, buf, sizeof(buf)) != 0) {
            snprintf(why, whylen, "node %u shard %u: %s", r->id, s, buf);
            return -1;
        }
    }
    return 0;
}

uint32_t replica_leader(const struct replica *r, uint32_t shard)
{
    const struct group *g = shard < r->conf->shards ? r->groups[shard] : NULL;
    return g ? g->leader : 0;
}

bool replica_has_work(const struct replica *r)
{
    if (r->nlocal > 0)
        return true;
    for (uint32_t s = 0; s < r->conf->shards; s++) {
        const struct group *g = r->groups[s];
        if (g && (g->inst.active || g->clearing))
            return true; /* the next slice waits for no message */
    }
    return false;
}

int replica_installing(const struct replica *r, uint32_t shard)
{
    const struct group *g = shard < r->conf->shards ? r->groups[shard] : NULL;
    return g && g->inst.active ? g->inst.phase : 0;
}

void replica_get_stats(const struct replica *r, struct replica_stats *st)
{
    *st = r->stats;
}

/* --- open / close ------------------------------------------------------- */

int replica_open(const struct conf *conf, uint32_t id, struct store *store,
                 const struct replica_env *env, uint64_t seed,
                 struct replica **out, char *err, size_t errlen)
{
    struct replica *r = calloc(1, sizeof(*r));
    if (!r)
        return KV_ENOMEM;
    r->conf = conf;
    r->id = id;
    r->store = store;
    r->env = *env;
    r->groups = calloc(conf->shards, sizeof(*r->groups));
    r->rd = calloc(conf->shards, sizeof(*r->rd));
    r->has_rd = calloc(conf->shards, sizeof(*r->has_rd));
    r->early = calloc(conf->shards, sizeof(*r->early));
    r->peer_boot = calloc(conf->nnodes, sizeof(*r->peer_boot));
    r->peer_features = calloc(conf->nnodes, sizeof(*r->peer_features));
    r->peer_clocks = calloc(conf->nnodes, sizeof(*r->peer_clocks));
    r->boot_id = seed * 0x9e3779b97f4a7c15ull + 1;
    r->hint = calloc(conf->shards, sizeof(*r->hint));
    r->peer_plugins = calloc(conf->nnodes, sizeof(*r->peer_plugins));
    r->plugins_sent = calloc(conf->nnodes, sizeof(*r->plugins_sent));
    struct txn_env tenv = {.arg = r,
                           .call = txn_call,
                           .reply = txn_reply,
                           .wall_ms = txn_wall,
                           .leads = txn_leads,
                           .failpoint = env->failpoint ? txn_failpoint : NULL};
    r->txns = txns_new(conf->shards, conf->txn_timeout_ms, &tenv, seed);
    /* Random start: an answer meant for an earlier run matches nothing. */
    r->parked_calls = (seed * 0x9e3779b97f4a7c15ull) >> 4;
    r->fanout_calls = (seed * 0xc2b2ae3d27d4eb4full) >> 20;
    int rc = r->groups && r->rd && r->has_rd && r->early && r->peer_boot &&
                     r->peer_features && r->hint && r->txns &&
                     r->peer_plugins && r->plugins_sent && r->peer_clocks
                 ? KV_OK
                 : KV_ENOMEM;
    if (rc == KV_OK)
        rc = engine_open(store, conf->shards, &r->engine);
    if (rc == KV_OK)
        rc = engine_check_meta(r->engine, conf->cluster, id, err, errlen);
    for (size_t i = 0; rc == KV_OK && i < conf->nnodes; i++) {
        unsigned char fk[5];
        feature_key(fk, conf->nodes[i].id);
        void *v = NULL;
        size_t vlen = 0;
        int frc = store_get(store, fk, sizeof(fk), &v, &vlen);
        if (frc == KV_OK && vlen == 4)
            r->peer_features[i] = get_u32(v);
        else if (frc != KV_ENOTFOUND && frc != KV_OK)
            rc = frc;
        free(v);
    }
    for (uint32_t s = 0; rc == KV_OK && s < conf->shards; s++) {
        bool member = false;
        for (uint32_t i = 0; i < conf->replicas; i++)
            member |= conf->nodes[conf_replica(conf, s, i)].id == id;
        if (member) {
            rc = group_open(r, s, seed, &r->groups[s]);
            if (rc != KV_OK)
                snprintf(err, errlen, "cannot restore shard %u: %s", s,
                         kv_strerror(rc));
        }
    }
    if (rc != KV_OK) {
        replica_close(r);
        return rc;
    }
    *out = r;
    return KV_OK;
}

int replica_mark_rebuilt(struct store *store, const struct conf *conf,
                         uint32_t id, char *err, size_t errlen)
{
    if (conf->replicas < 3) {
        snprintf(err, errlen,
                 "replicas = %u: a rebuilt replica votes again only once "
                 "every other replica of its shards follows one leader, "
                 "and with fewer than 3 replicas no leader could be "
                 "elected meanwhile",
                 conf->replicas);
        return KV_EINVAL;
    }
    struct store_batch *b = store_batch_new();
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return KV_ENOMEM;
    }
    size_t n = 0;
    for (uint32_t s = 0; s < conf->shards; s++) {
        for (uint32_t i = 0; i < conf->replicas; i++) {
            if (conf->nodes[conf_replica(conf, s, i)].id != id)
                continue;
            unsigned char k[5];
            shard_key(k, 'R', s);
            store_batch_put(b, k, sizeof(k), "", 0);
            n++;
        }
    }
    int rc = store_write(store, b, true);
    store_batch_free(b);
    if (rc != KV_OK)
        snprintf(err, errlen, "cannot mark %zu shards rebuilt: %s", n,
                 kv_strerror(rc));
    return rc;
}

void replica_close(struct replica *r)
{
    if (!r)
        return;
    for (uint32_t s = 0; r->groups && s < r->conf->shards; s++)
        group_free(r->groups[s]);
    free(r->groups);
    free(r->rd);
    free(r->has_rd);
    free(r->early);
    free(r->peer_boot);
    free(r->peer_features);
    free(r->peer_clocks);
    free(r->hint);
    txns_free(r->txns);
    for (size_t i = 0; i < r->nlocal; i++)
        free(r->local[i].buf);
    free(r->local);
    for (size_t i = 0; i < r->nparked; i++)
        parked_free(&r->parked[i]);
    free(r->parked);
    for (size_t i = 0; i < r->nfanouts; i++)
        fanout_release(r, &r->fanouts[i]);
    free(r->fanouts);
    for (size_t i = 0; r->peer_plugins && i < r->conf->nnodes; i++)
        free(r->peer_plugins[i].list);
    free(r->peer_plugins);
    free(r->plugins_sent);
    engine_close(r->engine);
    free(r->scratch);
    free(r);
}
