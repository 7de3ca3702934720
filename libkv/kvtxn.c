/*
 * kvtxn - optimistic transactions of kv.h (kv_txn_*): the buffer of ops,
 * reads that record the version they saw, commit and kv_txn_run's retries.
 *
 * A transaction is a list of ops (conditions and writes) with a copy of each
 * key and value, plus a table from key to the ops that name it, so that a
 * read finds the transaction's own last write of a key and a repeated read
 * records its condition once. Nothing is sent before kv_txn_commit(), which
 * hands the whole list to the mode (struct kv_ops.txn): embedded mode stages
 * it in the shared engine's group commit, cluster mode sends it to the home
 * shard's leader. This module must never talk to a node or the engine
 * itself, and never lets a transaction grow past the handle's limits.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kvimpl.h"
#include "shard.h"

#define NO_OP SIZE_MAX
#define BACKOFF_FIRST_US 2000u /* kv_txn_run: first pause */
#define MIN_ATTEMPT_US 100000u /* kv_txn_run: least time for an attempt */
#define BACKOFF_MAX_US 200000u /* and its cap */
#define SHOW_KEY_MAX 64        /* key bytes quoted in a conflict message */

/* One op; its key and value share one allocation. */
struct txn_op {
    enum engine_txn_kind kind;
    unsigned char *buf; /* key, then value (ENGINE_TXN_PUT) */
    size_t klen, vlen;
    uint64_t version; /* ENGINE_TXN_IF_VERSION */
    bool from_read;   /* a condition recorded by kv_txn_get */
};

/* What the transaction holds about one key (open addressing by hash). */
struct key_slot {
    size_t first;      /* the first op naming the key (its key bytes);
                          NO_OP: the slot is free */
    size_t last_write; /* the last put or delete of the key, or NO_OP */
    bool has_read;     /* kv_txn_get recorded a condition on it */
    uint64_t read_version;
};

struct kv_txn {
    kv *db;
    uint32_t timeout_ms;
    bool in_run; /* handed to kv_txn_run's function: it commits */
    struct txn_op *ops;
    size_t nops, cap;
    size_t nwrites;
    uint64_t bytes; /* key and value bytes over every op */
    struct key_slot *slots;
    size_t nslots, used; /* nslots is 0 or a power of two */
};

/* --- the key table ------------------------------------------------------ */

static uint64_t key_hash(const void *key, size_t klen)
{
    const unsigned char *p = key;
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < klen; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* The slot of KEY, or the free slot where it would go. The table is never
 * full (see table_reserve). */
static struct key_slot *slot_find(const kv_txn *t, const void *key, size_t klen)
{
    size_t mask = t->nslots - 1;
    for (size_t i = (size_t)key_hash(key, klen) & mask;; i = (i + 1) & mask) {
        struct key_slot *s = &t->slots[i];
        if (s->first == NO_OP)
            return s;
        const struct txn_op *op = &t->ops[s->first];
        if (op->klen == klen && memcmp(op->buf, key, klen) == 0)
            return s;
    }
}

/* The slot of KEY when the transaction names it, else NULL. */
static struct key_slot *slot_get(const kv_txn *t, const void *key, size_t klen)
{
    if (t->nslots == 0)
        return NULL;
    struct key_slot *s = slot_find(t, key, klen);
    return s->first == NO_OP ? NULL : s;
}

/* Makes room for one more key: the table stays at most half full. */
static int table_reserve(kv_txn *t)
{
    if ((t->used + 1) * 2 <= t->nslots)
        return KV_OK;
    size_t n = t->nslots ? t->nslots * 2 : 16;
    struct key_slot *old = t->slots;
    size_t nold = t->nslots;
    t->slots = malloc(n * sizeof(*t->slots));
    if (!t->slots) {
        t->slots = old;
        return KV_ENOMEM;
    }
    t->nslots = n;
    for (size_t i = 0; i < n; i++)
        t->slots[i] = (struct key_slot){.first = NO_OP, .last_write = NO_OP};
    for (size_t i = 0; i < nold; i++) {
        if (old[i].first == NO_OP)
            continue;
        const struct txn_op *op = &t->ops[old[i].first];
        *slot_find(t, op->buf, op->klen) = old[i];
    }
    free(old);
    return KV_OK;
}

/* --- adding ops --------------------------------------------------------- */

static bool is_write(enum engine_txn_kind k)
{
    return k == ENGINE_TXN_PUT || k == ENGINE_TXN_DEL;
}

/* Whether one more op of KLEN + VLEN bytes fits the limits; sets the
 * errmsg when not. */
static int check_room(kv_txn *t, size_t klen, size_t vlen)
{
    kv *db = t->db;
    if (t->nops + 1 > db->max_txn_ops)
        return kv_fail(db, KV_ETOOBIG,
                       "transaction over max_txn_ops: it holds %zu ops, the "
                       "limit is %u",
                       t->nops, db->max_txn_ops);
    uint64_t more = (uint64_t)klen + vlen;
    if (more > db->max_txn_bytes || t->bytes > db->max_txn_bytes - more)
        return kv_fail(db, KV_ETOOBIG,
                       "transaction over max_txn_bytes: %llu bytes of keys "
                       "and values plus %llu, the limit is %llu",
                       (unsigned long long)t->bytes, (unsigned long long)more,
                       (unsigned long long)db->max_txn_bytes);
    return KV_OK;
}

/* Appends an op with copies of KEY and VAL (already validated). Leaves the
 * transaction as it was on error (KV_ETOOBIG, KV_ENOMEM). */
static int add_op(kv_txn *t, enum engine_txn_kind kind, const void *key,
                  size_t klen, const void *val, size_t vlen, uint64_t version,
                  bool from_read)
{
    int rc = check_room(t, klen, vlen);
    if (rc != KV_OK)
        return rc;
    if (t->nops == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 8;
        struct txn_op *ops = realloc(t->ops, cap * sizeof(*ops));
        if (!ops)
            return kv_fail(t->db, KV_ENOMEM, "no memory for a transaction op");
        t->ops = ops;
        t->cap = cap;
    }
    if (table_reserve(t) != KV_OK)
        return kv_fail(t->db, KV_ENOMEM, "no memory for a transaction op");
    unsigned char *buf = malloc(klen + vlen);
    if (!buf)
        return kv_fail(t->db, KV_ENOMEM, "no memory for a transaction op");
    memcpy(buf, key, klen);
    if (vlen)
        memcpy(buf + klen, val, vlen);
    size_t i = t->nops++;
    t->ops[i] = (struct txn_op){.kind = kind,
                                .buf = buf,
                                .klen = klen,
                                .vlen = vlen,
                                .version = version,
                                .from_read = from_read};
    struct key_slot *s = slot_find(t, key, klen);
    if (s->first == NO_OP) {
        s->first = i;
        t->used++;
    }
    if (is_write(kind)) {
        s->last_write = i;
        t->nwrites++;
    }
    if (from_read) {
        s->has_read = true;
        s->read_version = version;
    }
    t->bytes += (uint64_t)klen + vlen;
    return KV_OK;
}

/* Checks the common arguments of an op and clears the errmsg. */
static int op_args(kv_txn *t, const void *key, size_t klen)
{
    if (!t)
        return KV_EINVAL;
    t->db->errmsg[0] = '\0';
    return kv_check_key(t->db, key, klen);
}

static void txn_free(kv_txn *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nops; i++)
        free(t->ops[i].buf);
    free(t->ops);
    free(t->slots);
    free(t);
}

/* --- kv.h --------------------------------------------------------------- */

int kv_txn_begin(kv *db, const kv_opts *opts, kv_txn **txn)
{
    if (!db || !txn)
        return KV_EINVAL;
    db->errmsg[0] = '\0';
    if (opts && (opts->if_version || opts->if_absent || opts->stale))
        return kv_fail(db, KV_EINVAL,
                       "a transaction takes only timeout_ms from kv_opts "
                       "(conditions are ops: kv_txn_if_version/if_absent)");
    kv_txn *t = calloc(1, sizeof(*t));
    if (!t)
        return KV_ENOMEM;
    t->db = db;
    t->timeout_ms = kv_call_timeout(db, opts);
    *txn = t;
    return KV_OK;
}

int kv_txn_put(kv_txn *txn, const void *key, size_t klen, const void *val,
               size_t vlen)
{
    int rc = op_args(txn, key, klen);
    if (rc == KV_OK)
        rc = kv_check_value(txn->db, val, vlen);
    if (rc == KV_OK)
        rc = add_op(txn, ENGINE_TXN_PUT, key, klen, val, vlen, 0, false);
    return rc;
}

int kv_txn_del(kv_txn *txn, const void *key, size_t klen)
{
    int rc = op_args(txn, key, klen);
    if (rc == KV_OK)
        rc = add_op(txn, ENGINE_TXN_DEL, key, klen, NULL, 0, 0, false);
    return rc;
}

int kv_txn_if_version(kv_txn *txn, const void *key, size_t klen,
                      uint64_t version)
{
    int rc = op_args(txn, key, klen);
    if (rc == KV_OK && version == 0)
        rc = kv_fail(txn->db, KV_EINVAL,
                     "version 0 never names an existing key (use "
                     "kv_txn_if_absent)");
    if (rc == KV_OK)
        rc = add_op(txn, ENGINE_TXN_IF_VERSION, key, klen, NULL, 0, version,
                    false);
    return rc;
}

int kv_txn_if_absent(kv_txn *txn, const void *key, size_t klen)
{
    int rc = op_args(txn, key, klen);
    if (rc == KV_OK)
        rc = add_op(txn, ENGINE_TXN_IF_ABSENT, key, klen, NULL, 0, 0, false);
    return rc;
}

int kv_txn_get(kv_txn *txn, const void *key, size_t klen, void **val,
               size_t *vlen, uint64_t *version)
{
    if (!txn || !val || !vlen)
        return txn ? kv_fail(txn->db, KV_EINVAL, "val and vlen are required")
                   : KV_EINVAL;
    int rc = op_args(txn, key, klen);
    if (rc != KV_OK)
        return rc;
    kv *db = txn->db;
    struct key_slot *s = slot_get(txn, key, klen);
    if (s && s->last_write != NO_OP) {
        /* Our own write: what the key will be if we commit. */
        const struct txn_op *w = &txn->ops[s->last_write];
        if (w->kind == ENGINE_TXN_DEL)
            return KV_ENOTFOUND;
        void *copy = NULL;
        if (w->vlen) {
            copy = malloc(w->vlen);
            if (!copy)
                return KV_ENOMEM;
            memcpy(copy, w->buf + w->klen, w->vlen);
        }
        *val = copy;
        *vlen = w->vlen;
        if (version)
            *version = 0;
        return KV_OK;
    }
    /* Refuse before reading when the condition could not be recorded. */
    if (!(s && s->has_read)) {
        rc = check_room(txn, klen, 0);
        if (rc != KV_OK)
            return rc;
    }
    kv_opts o = {.timeout_ms = txn->timeout_ms};
    void *v = NULL;
    size_t vl = 0;
    uint64_t ver = 0;
    rc = kv_get(db, key, klen, &o, &v, &vl, &ver);
    if (rc != KV_OK && rc != KV_ENOTFOUND)
        return rc;
    int found = rc;
    if (!(s && s->has_read && s->read_version == ver))
        rc = add_op(
            txn, found == KV_OK ? ENGINE_TXN_IF_VERSION : ENGINE_TXN_IF_ABSENT,
            key, klen, NULL, 0, ver, true);
    else
        rc = KV_OK;
    if (rc != KV_OK) {
        kv_free(v);
        return rc;
    }
    if (found != KV_OK)
        return found;
    *val = v;
    *vlen = vl;
    if (version)
        *version = ver;
    return KV_OK;
}

/* Quotes KEY for a message: printable ASCII as is, other bytes as \xNN,
 * cut after SHOW_KEY_MAX bytes. */
static void show_key(char *out, size_t len, const unsigned char *key,
                     size_t klen)
{
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < klen && i < SHOW_KEY_MAX && o + 8 < len; i++) {
        unsigned char ch = key[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\')
            out[o++] = (char)ch;
        else
            o += (size_t)snprintf(out + o, len - o, "\\x%02x", ch);
    }
    out[o++] = '"';
    if (klen > SHOW_KEY_MAX && o + 4 < len) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

/* Sets the errmsg of a conflict on op FAILED (1-based; 0 unknown), whose
 * key had version CURRENT (0: absent). Keeps a mode's message when the op
 * is not known. */
static void conflict_message(kv_txn *t, size_t failed, uint64_t current)
{
    kv *db = t->db;
    if (failed == 0 || failed > t->nops) {
        if (!db->errmsg[0])
            kv_fail(db, KV_ECONFLICT,
                    "condition failed (the first outcome of a retried "
                    "transaction)");
        return;
    }
    const struct txn_op *op = &t->ops[failed - 1];
    char key[SHOW_KEY_MAX * 4 + 8];
    show_key(key, sizeof key, op->buf, op->klen);
    const char *why = op->from_read ? " (the version kv_txn_get read)" : "";
    if (op->kind == ENGINE_TXN_IF_ABSENT)
        kv_fail(db, KV_ECONFLICT,
                "condition failed: %s exists (version %llu), expected "
                "absent%s",
                key, (unsigned long long)current,
                op->from_read ? " (as kv_txn_get found it)" : "");
    else if (current == 0)
        kv_fail(db, KV_ECONFLICT,
                "condition failed: %s is absent, expected version %llu%s", key,
                (unsigned long long)op->version, why);
    else
        kv_fail(db, KV_ECONFLICT,
                "condition failed: %s has version %llu, expected %llu%s", key,
                (unsigned long long)current, (unsigned long long)op->version,
                why);
}

/* Commits T's ops; see kv_txn_commit. Does not free T. */
static int txn_commit(kv_txn *t, uint64_t **versions, size_t *n)
{
    kv *db = t->db;
    if (versions && !n)
        return kv_fail(db, KV_EINVAL, "versions needs n");
    if (t->nops == 0) {
        if (versions) {
            *versions = NULL;
            *n = 0;
        }
        return KV_OK;
    }
    /* Defensive: add_op keeps a transaction within the limits. */
    if (t->nops > db->max_txn_ops || t->bytes > db->max_txn_bytes)
        return kv_fail(db, KV_ETOOBIG, "transaction over its limits");
    struct engine_txn_op *eops = calloc(t->nops, sizeof(*eops));
    uint64_t *results = calloc(t->nops, sizeof(*results));
    /* Allocated before committing: a committed transaction must not fail
     * for want of memory to report it. */
    uint64_t *out =
        versions ? calloc(t->nwrites ? t->nwrites : 1, sizeof(*out)) : NULL;
    int rc = KV_OK;
    if (!eops || !results || (versions && !out)) {
        rc = KV_ENOMEM;
        goto out;
    }
    size_t home = NO_OP;
    for (size_t i = 0; i < t->nops; i++) {
        const struct txn_op *op = &t->ops[i];
        eops[i] = (struct engine_txn_op){.kind = op->kind,
                                         .key = op->buf,
                                         .klen = op->klen,
                                         .val = op->buf + op->klen,
                                         .vlen = op->vlen,
                                         .version = op->version};
        if (home == NO_OP && is_write(op->kind))
            home = i;
    }
    if (home == NO_OP)
        home = 0;
    struct engine_txn et = {
        .shard = shard_of(t->ops[home].buf, t->ops[home].klen, db->nshards),
        .ops = eops,
        .nops = t->nops};
    size_t failed = 0;
    uint64_t current = 0;
    rc = db->ops->txn(db, &et, t->timeout_ms, results, &failed, &current);
    if (rc == KV_ECONFLICT)
        conflict_message(t, failed, current);
    if (rc != KV_OK)
        goto out;
    if (versions) {
        size_t k = 0;
        for (size_t i = 0; i < t->nops; i++)
            if (is_write(t->ops[i].kind))
                out[k++] = t->ops[i].kind == ENGINE_TXN_PUT ? results[i] : 0;
        if (t->nwrites == 0) {
            free(out);
            out = NULL;
        }
        *versions = out;
        *n = t->nwrites;
        out = NULL; /* the caller's now */
    }
out:
    free(out);
    free(results);
    free(eops);
    return rc;
}

int kv_txn_commit(kv_txn *txn, uint64_t **versions, size_t *n)
{
    if (!txn)
        return KV_EINVAL;
    kv *db = txn->db;
    db->errmsg[0] = '\0';
    if (txn->in_run)
        return kv_fail(db, KV_EINVAL,
                       "kv_txn_run commits the transaction it hands to its "
                       "function: return KV_OK instead");
    int rc = txn_commit(txn, versions, n);
    txn_free(txn);
    return rc;
}

void kv_txn_abort(kv_txn *txn)
{
    if (txn && !txn->in_run)
        txn_free(txn);
}

/* --- kv_txn_run --------------------------------------------------------- */

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void sleep_us(uint64_t us)
{
    struct timespec ts = {.tv_sec = (time_t)(us / 1000000),
                          .tv_nsec = (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* A per-thread generator for the jitter (xorshift64*), seeded from the
 * clock and the thread's own address so that threads that conflicted
 * together do not retry together. */
static uint64_t jitter_next(void)
{
    static _Thread_local uint64_t state;
    if (state == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        state = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^
                (uint64_t)(uintptr_t)&state;
        if (state == 0)
            state = 0x9e3779b97f4a7c15ULL;
    }
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
}

int kv_txn_run(kv *db, const kv_opts *opts, int (*fn)(kv_txn *txn, void *arg),
               void *arg)
{
    if (!db)
        return KV_EINVAL;
    if (!fn)
        return kv_fail(db, KV_EINVAL, "kv_txn_run needs a function");
    uint64_t total = (uint64_t)kv_call_timeout(db, opts) * 1000;
    uint64_t deadline = now_us() + total;
    /* Another attempt starts only with this much time left: one that is
     * bound to run out of time would turn a conflict into a timeout. */
    uint64_t min_left = total / 4 < MIN_ATTEMPT_US ? total / 4 : MIN_ATTEMPT_US;
    uint64_t backoff = BACKOFF_FIRST_US;
    for (;;) {
        /* Each attempt gets what is left of the call's time. */
        kv_opts o = opts ? *opts : (kv_opts){0};
        uint64_t now = now_us();
        uint64_t left_ms = deadline > now ? (deadline - now + 999) / 1000 : 1;
        o.timeout_ms = left_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)left_ms;
        kv_txn *t = NULL;
        int rc = kv_txn_begin(db, &o, &t);
        if (rc != KV_OK)
            return rc;
        t->in_run = true;
        rc = fn(t, arg);
        t->in_run = false;
        if (rc == KV_OK)
            rc = kv_txn_commit(t, NULL, NULL);
        else
            kv_txn_abort(t);
        if (rc != KV_ECONFLICT)
            return rc;
        /* Another writer got there first: pause (backoff +-50%), retry. */
        uint64_t pause = backoff / 2 + jitter_next() % (backoff + 1);
        now = now_us();
        if (now >= deadline || deadline - now <= min_left)
            return rc;
        if (pause > deadline - now - min_left) /* leave the attempt its time */
            pause = deadline - now - min_left;
        sleep_us(pause);
        if (backoff < BACKOFF_MAX_US)
            backoff =
                backoff * 2 < BACKOFF_MAX_US ? backoff * 2 : BACKOFF_MAX_US;
    }
}
