/*
 * engine - the shard state machine (see engine.h).
 *
 * Staged writes live in one store batch plus an overlay: a small hash table
 * from (shard, key) to the version a staged write left (0 = deleted), so
 * that conditions evaluated before the next commit see every earlier staged
 * write. Committed reads never look at the overlay.
 *
 * A committed generation's session ("S") slots move on into the session
 * cache, a table of the same kind holding each session's record as the
 * store has it. Every client write reads its session, and a client's
 * writes come one after another: with the cache, they read no LevelDB
 * record for it. (Data keys are not cached: most writes of a large key
 * space would only fill the cache; measured, it cost more than it saved.)
 * The cache holds what the store holds: filled only from generations that
 * committed, emptied when a commit fails, when a generation wrote "S" keys
 * around the overlay (engine_stage_raw) and when a shard is reset (a
 * snapshot installed); bounded by CACHE_MAX_ENTRIES and CACHE_MAX_BYTES
 * (emptied when full).
 */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "kv.h"
#include "store.h"

#define REC_TAG 0x01
#define REC_HDR 9    /* tag + u64 version */
#define PREFIX_LEN 5 /* 'D' + u32 shard */
#define CACHE_MAX_ENTRIES 65536
#define CACHE_MAX_BYTES (16u << 20) /* keys, replies and slots */

struct overlay_slot {
    unsigned char *key; /* store key ("D" shard key); NULL = empty slot */
    size_t klen;
    uint64_t version; /* 0: the staged write deleted the key */
    uint64_t seq;     /* session slots ("S" keys): the recorded write */
    uint64_t until;   /* session slots: kept until (ms; 0: not dated) */
    int code;
    unsigned char *val; /* "I", "P", "X" slots: the staged value */
    size_t vlen;
    bool gone; /* "I", "P", "X" slots: the staged change is a delete */
};

/* What the "A" record of a shard holds: its last version and key count. */
struct shard_state {
    uint64_t version;
    uint64_t keys;
    uint64_t intents;     /* not stored: counted at open, kept up to date */
    uint64_t records;     /* transaction records ("X"): likewise */
    uint64_t tombs;       /* tombstones among the "P" records: likewise */
    uint64_t tomb_oldest; /* with tombs > 0: no tombstone's deadline is
                             earlier (exact after open and after a GC
                             that went through every "P" record) */
};

/* A generation of staged writes: the batch and the overlay that mirrors it. */
struct gen {
    struct store_batch *batch;
    size_t nstaged;
    uint32_t *dirty; /* shards whose "A" record this gen must write */
    size_t ndirty;
    bool *is_dirty; /* by shard */
    struct overlay_slot *slots;
    size_t nslots; /* power of two */
    size_t used;
    bool raw_s; /* engine_stage_raw() wrote an "S" key */
};

struct engine {
    struct store *store;
    uint32_t nshards;
    struct shard_state *applied;  /* per shard: as committed */
    struct shard_state *staged;   /* per shard: after the last staged write */
    struct shard_state *flushing; /* per shard: as the flushing gen leaves it */
    struct gen gens[2];
    struct gen *cur;      /* where engine_stage() adds writes */
    struct gen *inflight; /* between commit_begin and commit_end, or NULL */
    struct gen cache;     /* committed "S" slots (no batch) */
    size_t cache_bytes;
    unsigned char *scratch;
    size_t scratch_cap;
    uint64_t session_until; /* sessions written now: kept until (ms) */
};

/* Makes sure the scratch buffer holds N bytes. */
static int scratch_reserve(struct engine *e, size_t n)
{
    return buf_reserve(&e->scratch, &e->scratch_cap, n) ? KV_OK : KV_ENOMEM;
}

/* Builds "D" shard key into a malloc()ed buffer. */
static unsigned char *data_key(uint32_t shard, const void *key, size_t klen,
                               size_t *out_len)
{
    unsigned char *k = malloc(PREFIX_LEN + klen);
    if (!k)
        return NULL;
    k[0] = 'D';
    put_u32(k + 1, shard);
    if (klen)
        memcpy(k + PREFIX_LEN, key, klen);
    *out_len = PREFIX_LEN + klen;
    return k;
}

static void applied_key(uint32_t shard, unsigned char out[5])
{
    out[0] = 'A';
    put_u32(out + 1, shard);
}

/* Decodes a stored record. Returns KV_ECORRUPT when it is not one. */
static int decode_record(const unsigned char *rec, size_t len,
                         uint64_t *version, const unsigned char **val,
                         size_t *vlen)
{
    if (len < REC_HDR || rec[0] != REC_TAG)
        return KV_ECORRUPT;
    *version = get_u64(rec + 1);
    *val = rec + REC_HDR;
    *vlen = len - REC_HDR;
    return *version ? KV_OK : KV_ECORRUPT;
}

/* --- overlay ---------------------------------------------------------- */

static uint64_t hash_bytes(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static struct overlay_slot *overlay_find(struct gen *g,
                                         const unsigned char *key, size_t klen)
{
    size_t mask = g->nslots - 1;
    size_t i = (size_t)hash_bytes(key, klen) & mask;
    for (;;) {
        struct overlay_slot *s = &g->slots[i];
        if (!s->key || (s->klen == klen && memcmp(s->key, key, klen) == 0))
            return s;
        i = (i + 1) & mask;
    }
}

static int overlay_grow(struct gen *g)
{
    size_t n = g->nslots * 2;
    struct overlay_slot *old = g->slots;
    size_t oldn = g->nslots;
    struct overlay_slot *slots = calloc(n, sizeof(*slots));
    if (!slots)
        return KV_ENOMEM;
    g->slots = slots;
    g->nslots = n;
    for (size_t i = 0; i < oldn; i++) {
        if (old[i].key)
            *overlay_find(g, old[i].key, old[i].klen) = old[i];
    }
    free(old);
    return KV_OK;
}

/* The slot of KEY (KLEN bytes, a malloc()ed store key) in G, taking KEY:
 * it becomes the slot's key, or is freed when the slot has one already.
 * The caller made room in G. */
static struct overlay_slot *overlay_claim(struct gen *g, unsigned char *key,
                                          size_t klen)
{
    struct overlay_slot *o = overlay_find(g, key, klen);
    if (o->key) {
        free(key);
    } else {
        o->key = key;
        o->klen = klen;
        g->used++;
    }
    return o;
}

/* Records that KEY (a store key, whose ownership passes to the overlay when
 * the slot is new) now has VERSION. Frees KEY if the slot existed. */
static void overlay_set(struct gen *g, struct overlay_slot *s,
                        unsigned char *key, size_t klen, uint64_t version)
{
    if (s->key) {
        free(key);
    } else {
        s->key = key;
        s->klen = klen;
        g->used++;
    }
    s->version = version;
}

/* Empties a generation: its batch and its overlay. */
static void gen_clear(struct gen *g)
{
    for (size_t i = 0; i < g->nslots && g->used; i++) {
        if (g->slots[i].key) {
            free(g->slots[i].key);
            free(g->slots[i].val);
            g->slots[i].val = NULL;
            g->slots[i].key = NULL;
            g->used--;
        }
    }
    g->used = 0;
    g->nstaged = 0;
    g->raw_s = false;
    for (size_t i = 0; i < g->ndirty; i++)
        g->is_dirty[g->dirty[i]] = false;
    g->ndirty = 0;
    if (g->batch)
        store_batch_clear(g->batch);
}

static int gen_init(struct gen *g, uint32_t nshards)
{
    g->batch = store_batch_new();
    g->nslots = 64;
    g->slots = calloc(g->nslots, sizeof(*g->slots));
    g->dirty = calloc(nshards, sizeof(*g->dirty));
    g->is_dirty = calloc(nshards, sizeof(*g->is_dirty));
    return g->batch && g->slots && g->dirty && g->is_dirty ? KV_OK : KV_ENOMEM;
}

static void gen_release(struct gen *g)
{
    if (g->slots && g->is_dirty)
        gen_clear(g);
    free(g->slots);
    free(g->dirty);
    free(g->is_dirty);
    store_batch_free(g->batch);
}

/* --- session cache ---------------------------------------------------------
 */

static void cache_clear(struct engine *e)
{
    gen_clear(&e->cache);
    e->cache_bytes = 0;
}

static size_t slot_bytes(const struct overlay_slot *s)
{
    return s->klen + s->vlen + sizeof(*s);
}

/* Moves the "S" slots of G, which just committed, into the cache (newer
 * than what it holds). Out of memory, it empties the cache. */
static void cache_absorb(struct engine *e, struct gen *g)
{
    struct gen *c = &e->cache;
    for (size_t i = 0; i < g->nslots && g->used; i++) {
        struct overlay_slot *s = &g->slots[i];
        if (!s->key || s->key[0] != 'S')
            continue;
        if (c->used >= CACHE_MAX_ENTRIES ||
            e->cache_bytes + slot_bytes(s) > CACHE_MAX_BYTES)
            cache_clear(e);
        if (c->used * 2 >= c->nslots && overlay_grow(c) != KV_OK) {
            cache_clear(e);
            return; /* the rest is freed with G */
        }
        struct overlay_slot *o = overlay_find(c, s->key, s->klen);
        if (o->key) {
            e->cache_bytes -= slot_bytes(o);
            free(o->key);
            free(o->val);
        } else {
            c->used++;
        }
        *o = *s;
        e->cache_bytes += slot_bytes(o);
        s->key = NULL;
        s->val = NULL;
        g->used--;
    }
}

static int count_intents(struct engine *e, uint32_t shard,
                         struct shard_state *st);
static int key_locked(struct engine *e, uint32_t shard, const void *key,
                      size_t klen, bool *locked, unsigned char *txn);
static void stage_index(struct engine *e, uint32_t shard, uint64_t index);

/* --- open / close ------------------------------------------------------- */

int engine_open(struct store *s, uint32_t nshards, struct engine **out)
{
    int rc = KV_ENOMEM;
    struct engine *e = calloc(1, sizeof(*e));
    if (!e)
        return KV_ENOMEM;
    e->store = s;
    e->nshards = nshards;
    e->applied = calloc(nshards, sizeof(*e->applied));
    e->staged = calloc(nshards, sizeof(*e->staged));
    e->flushing = calloc(nshards, sizeof(*e->flushing));
    e->cur = &e->gens[0];
    e->cache.nslots = 64;
    e->cache.slots = calloc(e->cache.nslots, sizeof(*e->cache.slots));
    if (!e->applied || !e->staged || !e->flushing || !e->cache.slots ||
        gen_init(&e->gens[0], nshards) != KV_OK ||
        gen_init(&e->gens[1], nshards) != KV_OK)
        goto fail;
    for (uint32_t i = 0; i < nshards; i++) {
        unsigned char k[5];
        void *v = NULL;
        size_t vlen = 0;
        applied_key(i, k);
        rc = store_get(s, k, sizeof(k), &v, &vlen);
        if (rc == KV_ENOTFOUND)
            continue;
        if (rc != KV_OK)
            goto fail;
        if (vlen != 16) {
            free(v);
            rc = KV_ECORRUPT;
            goto fail;
        }
        e->applied[i].version = get_u64(v);
        e->applied[i].keys = get_u64((unsigned char *)v + 8);
        e->staged[i] = e->applied[i];
        free(v);
    }
    for (uint32_t i = 0; i < nshards; i++) {
        rc = count_intents(e, i, &e->applied[i]);
        if (rc != KV_OK)
            goto fail;
        e->staged[i] = e->applied[i];
    }
    *out = e;
    return KV_OK;
fail:
    engine_close(e);
    return rc;
}

void engine_close(struct engine *e)
{
    if (!e)
        return;
    gen_release(&e->gens[0]);
    gen_release(&e->gens[1]);
    if (e->cache.slots)
        cache_clear(e);
    free(e->cache.slots);
    free(e->applied);
    free(e->staged);
    free(e->flushing);
    free(e->scratch);
    free(e);
}

/* Reads metadata NAME; compares with WANT or writes it into the batch. */
static int meta_check_one(struct engine *e, struct store_batch *b,
                          const char *name, const char *want, int *writes,
                          char *err, size_t errlen)
{
    char key[64];
    int klen = snprintf(key, sizeof(key), "M%s", name);
    void *v = NULL;
    size_t vlen = 0;
    int rc = store_get(e->store, key, (size_t)klen, &v, &vlen);
    if (rc == KV_ENOTFOUND) {
        store_batch_put(b, key, (size_t)klen, want, strlen(want));
        (*writes)++;
        return KV_OK;
    }
    if (rc != KV_OK) {
        snprintf(err, errlen, "cannot read metadata %s: %s", name,
                 kv_strerror(rc));
        return rc;
    }
    if (vlen != strlen(want) || memcmp(v, want, vlen) != 0) {
        snprintf(err, errlen,
                 "data directory belongs to %s \"%.*s\", not \"%s\"", name,
                 (int)(vlen > 200 ? 200 : vlen), (const char *)v, want);
        free(v);
        return KV_EINVAL;
    }
    free(v);
    return KV_OK;
}

/* The data format: 2 since session records carry the time they are kept
 * until (a format 1 directory is read as it is and becomes format 2; a
 * kvnode of format 1 refuses format 2, whose sessions it would misread). */
#define FORMAT "2"
#define FORMAT_BEFORE_DATED_SESSIONS "1"

/* Upgrades a format 1 directory: from now on it may hold dated sessions. */
static int meta_upgrade_format(struct engine *e, struct store_batch *b,
                               int *writes)
{
    void *v = NULL;
    size_t vlen = 0;
    int rc = store_get(e->store, "Mformat", 7, &v, &vlen);
    if (rc == KV_OK && vlen == 1 &&
        memcmp(v, FORMAT_BEFORE_DATED_SESSIONS, 1) == 0) {
        store_batch_put(b, "Mformat", 7, FORMAT, 1);
        (*writes)++;
        rc = KV_OK;
    } else if (rc == KV_ENOTFOUND) {
        rc = KV_OK;
    }
    free(v);
    return rc;
}

int engine_check_meta(struct engine *e, const char *cluster, uint32_t node_id,
                      char *err, size_t errlen)
{
    char node[16], shards[16];
    snprintf(node, sizeof(node), "%u", node_id);
    snprintf(shards, sizeof(shards), "%u", e->nshards);
    struct store_batch *b = store_batch_new();
    if (!b)
        return KV_ENOMEM;
    int writes = 0;
    int rc = meta_upgrade_format(e, b, &writes);
    if (rc == KV_OK && !writes)
        rc = meta_check_one(e, b, "format", FORMAT, &writes, err, errlen);
    else if (rc != KV_OK)
        snprintf(err, errlen, "cannot read metadata format: %s",
                 kv_strerror(rc));
    if (rc == KV_OK)
        rc = meta_check_one(e, b, "cluster", cluster, &writes, err, errlen);
    if (rc == KV_OK)
        rc = meta_check_one(e, b, "node", node, &writes, err, errlen);
    if (rc == KV_OK)
        rc = meta_check_one(e, b, "shards", shards, &writes, err, errlen);
    if (rc == KV_OK && writes)
        rc = store_write(e->store, b, true);
    store_batch_free(b);
    return rc;
}

/* --- reads -------------------------------------------------------------- */

int engine_get(struct engine *e, uint32_t shard, const void *key, size_t klen,
               void **val, size_t *vlen, uint64_t *version)
{
    if (shard >= e->nshards)
        return KV_EINVAL;
    size_t dlen;
    unsigned char *dk = data_key(shard, key, klen, &dlen);
    if (!dk)
        return KV_ENOMEM;
    void *rec = NULL;
    size_t rlen = 0;
    int rc = store_get(e->store, dk, dlen, &rec, &rlen);
    free(dk);
    if (rc != KV_OK)
        return rc;
    uint64_t ver;
    const unsigned char *v;
    size_t n;
    rc = decode_record(rec, rlen, &ver, &v, &n);
    if (rc != KV_OK)
        goto out;
    if (val) {
        void *copy = NULL;
        if (n) {
            copy = malloc(n);
            if (!copy) {
                rc = KV_ENOMEM;
                goto out;
            }
            memcpy(copy, v, n);
        }
        *val = copy;
    }
    if (vlen)
        *vlen = n;
    if (version)
        *version = ver;
out:
    free(rec);
    return rc;
}

/* The latest version of a store key, staged writes included (0: absent). */
static int latest_version(struct engine *e, const unsigned char *dk,
                          size_t dlen, struct overlay_slot *slot,
                          uint64_t *version)
{
    if (slot->key) {
        *version = slot->version;
        return KV_OK;
    }
    if (e->inflight) {
        struct overlay_slot *f = overlay_find(e->inflight, dk, dlen);
        if (f->key) {
            *version = f->version;
            return KV_OK;
        }
    }
    void *rec = NULL;
    size_t rlen = 0;
    int rc = store_get(e->store, dk, dlen, &rec, &rlen);
    if (rc == KV_ENOTFOUND) {
        *version = 0;
        return KV_OK;
    }
    if (rc != KV_OK)
        return rc;
    const unsigned char *v;
    size_t n;
    rc = decode_record(rec, rlen, version, &v, &n);
    free(rec);
    return rc;
}

/* --- writes ------------------------------------------------------------- */

/* A session record: seq (u64), code (i32 as u32), version (u64), then, when
 * bit 63 of the stored seq is set, the time it is kept until (u64 ms), then
 * the procedure reply, if any. Records written before sessions expired
 * have no date; the session GC dates them (engine_stage_session_gc). */
#define SESSION_LEN 20
#define SESSION_DATED ((uint64_t)1 << 63)

/* What a session records. */
struct session {
    bool found;
    uint64_t seq;
    int code;
    uint64_t version;
    uint64_t until; /* 0: not dated */
};

static unsigned char *session_key(uint32_t shard, const void *cid, size_t len,
                                  size_t *out_len)
{
    unsigned char *k = data_key(shard, cid, len, out_len);
    if (k)
        k[0] = 'S';
    return k;
}

/* Decodes a stored session record into *S; *REPLY and *RLEN (REPLY may be NULL)
 * point at its reply inside V. */
static int session_decode(const unsigned char *v, size_t vlen,
                          struct session *s, const unsigned char **reply,
                          size_t *rlen)
{
    if (vlen < SESSION_LEN)
        return KV_ECORRUPT;
    uint64_t seq = get_u64(v);
    size_t hdr = SESSION_LEN + (seq & SESSION_DATED ? 8 : 0);
    if (vlen < hdr)
        return KV_ECORRUPT;
    s->found = true;
    s->seq = seq & ~SESSION_DATED;
    s->code =
        (int)(int32_t)(uint32_t)((uint32_t)v[8] << 24 | (uint32_t)v[9] << 16 |
                                 (uint32_t)v[10] << 8 | v[11]);
    s->version = get_u64(v + 12);
    s->until = seq & SESSION_DATED ? get_u64(v + SESSION_LEN) : 0;
    if (reply) {
        *reply = v + hdr;
        *rlen = vlen - hdr;
    }
    return KV_OK;
}

bool engine_session_ok(const void *client_id, size_t len, uint64_t seq)
{
    return !seq || (client_id && len > 0 && len <= ENGINE_MAX_CLIENT_ID &&
                    seq < SESSION_DATED);
}

/* Looks up the session of a client into *S, from the staged generations
 * first (a retry can be applied in the same batch as the first attempt),
 * then the cache, then the store. With REPLY, also a malloc()ed copy of the
 * recorded procedure reply (NULL when there is none). */
static int session_get(struct engine *e, const unsigned char *sk, size_t sklen,
                       struct session *s, void **reply, size_t *rlen)
{
    if (reply) {
        *reply = NULL;
        *rlen = 0;
    }
    *s = (struct session){0};
    struct gen *gens[3] = {e->cur, e->inflight,
                           e->cache.used ? &e->cache : NULL};
    for (int i = 0; i < 3; i++) {
        if (!gens[i])
            continue;
        struct overlay_slot *o = overlay_find(gens[i], sk, sklen);
        if (!o->key)
            continue;
        if (o->gone)
            return KV_OK; /* expired: deleted by a staged GC */
        *s = (struct session){.found = true,
                              .seq = o->seq,
                              .code = o->code,
                              .version = o->version,
                              .until = o->until};
        if (reply && o->vlen) {
            *reply = malloc(o->vlen);
            if (!*reply)
                return KV_ENOMEM;
            memcpy(*reply, o->val, o->vlen);
            *rlen = o->vlen;
        }
        return KV_OK;
    }
    void *v = NULL;
    size_t vlen = 0;
    int rc = store_get(e->store, sk, sklen, &v, &vlen);
    if (rc == KV_ENOTFOUND)
        return KV_OK;
    if (rc != KV_OK)
        return rc;
    const unsigned char *r = NULL;
    size_t n = 0;
    rc = session_decode(v, vlen, s, &r, &n);
    if (rc == KV_OK && reply && n) {
        memmove(v, r, n);
        *reply = v;
        *rlen = n;
        return KV_OK;
    }
    free(v);
    return rc;
}

/* Stages session record S (with UNTIL its date, 0 for none), and mirrors
 * it in the overlay (taking SK). REPLY (RLEN bytes, a procedure's reply)
 * is recorded with it. Cannot fail without a reply (the caller made room
 * in the overlay); with one it may fail for memory, leaving SK freed and
 * nothing staged. */
static int session_put(struct gen *g, unsigned char *sk, size_t sklen,
                       const struct session *s, const void *reply, size_t rlen)
{
    size_t hdr = SESSION_LEN + (s->until ? 8 : 0);
    unsigned char *copy = NULL, *v = NULL;
    unsigned char fixed[SESSION_LEN + 8];
    if (rlen) {
        copy = malloc(rlen);
        v = malloc(hdr + rlen);
        if (!copy || !v) {
            free(copy);
            free(v);
            free(sk);
            return KV_ENOMEM;
        }
        memcpy(copy, reply, rlen);
        memcpy(v + hdr, reply, rlen);
    }
    struct overlay_slot *o = overlay_claim(g, sk, sklen);
    o->seq = s->seq;
    o->code = s->code;
    o->version = s->version;
    o->until = s->until;
    o->gone = false;
    free(o->val);
    o->val = copy;
    o->vlen = rlen;
    unsigned char *p = v ? v : fixed;
    put_u64(p, s->seq | (s->until ? SESSION_DATED : 0));
    put_u32(p + 8, (uint32_t)(int32_t)s->code);
    put_u64(p + 12, s->version);
    if (s->until)
        put_u64(p + SESSION_LEN, s->until);
    store_batch_put(g->batch, o->key, sklen, p, hdr + rlen);
    free(v);
    return KV_OK;
}

/* session_put of a client write's outcome, dated as engine_session_until
 * said. */
static int session_record(struct engine *e, unsigned char *sk, size_t sklen,
                          uint64_t seq, int code, uint64_t version,
                          const void *reply, size_t rlen)
{
    struct session s = {.seq = seq,
                        .code = code,
                        .version = version,
                        .until = e->session_until};
    return session_put(e->cur, sk, sklen, &s, reply, rlen);
}

/* Stages the delete of session SK (taking it), mirrored in the overlay as
 * gone. The caller made room in the overlay. */
static void session_del(struct gen *g, unsigned char *sk, size_t sklen)
{
    struct overlay_slot *o = overlay_claim(g, sk, sklen);
    free(o->val);
    o->val = NULL;
    o->vlen = 0;
    o->seq = 0;
    o->until = 0;
    o->gone = true;
    store_batch_del(g->batch, o->key, sklen);
}

/* Notes that SHARD's "A" record changed in G. It is written once, when G
 * starts its commit, with the shard's state after all of G's writes: one
 * record per shard and batch instead of one per write. */
static void stage_shard_state(struct engine *e, struct gen *g, uint32_t shard)
{
    (void)e;
    if (!g->is_dirty[shard]) {
        g->is_dirty[shard] = true;
        g->dirty[g->ndirty++] = shard;
    }
}

/* Writes the "A" records of G's dirty shards (state as of now). */
static void write_shard_states(struct engine *e, struct gen *g)
{
    for (size_t i = 0; i < g->ndirty; i++) {
        uint32_t shard = g->dirty[i];
        unsigned char ak[5], av[16];
        applied_key(shard, ak);
        put_u64(av, e->staged[shard].version);
        put_u64(av + 8, e->staged[shard].keys);
        store_batch_put(g->batch, ak, sizeof(ak), av, sizeof(av));
        g->is_dirty[shard] = false;
    }
    g->ndirty = 0;
}

int engine_stage_applied(struct engine *e, uint32_t shard, uint64_t index)
{
    if (shard >= e->nshards || index <= e->staged[shard].version)
        return KV_EINVAL;
    e->staged[shard].version = index;
    stage_shard_state(e, e->cur, shard);
    e->cur->nstaged++;
    return KV_OK;
}

void engine_stage_raw(struct engine *e, const void *key, size_t klen,
                      const void *val, size_t vlen)
{
    if (val)
        store_batch_put(e->cur->batch, key, klen, val, vlen);
    else
        store_batch_del(e->cur->batch, key, klen);
    e->cur->nstaged++;
    if (klen && ((const unsigned char *)key)[0] == 'S')
        e->cur->raw_s = true; /* the cache cannot follow: emptied at commit */
}

void engine_reset_shard(struct engine *e, uint32_t shard, uint64_t index,
                        uint64_t keys)
{
    if (shard >= e->nshards)
        return;
    cache_clear(e); /* the shard's records were replaced in the store */
    struct shard_state st = {.version = index, .keys = keys};
    /* Unknown after a failed count: assume some, so writes look them up
     * (and the next GC, which goes through them, counts the tombstones). */
    if (count_intents(e, shard, &st) != KV_OK) {
        st.intents = UINT64_MAX / 2;
        st.records = UINT64_MAX / 2;
        st.tombs = UINT64_MAX / 2;
        st.tomb_oldest = 0;
    }
    e->applied[shard] = e->staged[shard] = e->flushing[shard] = st;
}

uint64_t engine_applied(const struct engine *e, uint32_t shard)
{
    return shard < e->nshards ? e->staged[shard].version : 0;
}

int engine_stage(struct engine *e, const struct engine_write *w,
                 uint64_t *version)
{
    if (w->shard >= e->nshards)
        return KV_EINVAL;
    if (w->index && w->index <= e->staged[w->shard].version)
        return KV_EINVAL;
    if (!engine_session_ok(w->client_id, w->client_id_len, w->seq))
        return KV_EINVAL;
    struct gen *g = e->cur;
    if (g->used * 2 >= g->nslots && overlay_grow(g) != KV_OK)
        return KV_ENOMEM;
    struct shard_state *st = &e->staged[w->shard];
    uint64_t ver = w->index ? w->index : st->version + 1;
    unsigned char *sk = NULL;
    size_t sklen = 0;
    size_t dlen;
    unsigned char *dk = data_key(w->shard, w->key, w->klen, &dlen);
    if (!dk)
        return KV_ENOMEM;
    struct overlay_slot *slot = overlay_find(g, dk, dlen);
    int rc = KV_OK;
    if (w->seq) {
        sk = session_key(w->shard, w->client_id, w->client_id_len, &sklen);
        if (!sk) {
            rc = KV_ENOMEM;
            goto fail;
        }
        struct session ss;
        /* Sessions are written only at commit time in one generation per
         * client write: a client has one write in flight, so the store
         * holds every earlier one by the time a retry arrives. */
        rc = session_get(e, sk, sklen, &ss, NULL, NULL);
        if (rc != KV_OK)
            goto fail;
        if (ss.found && ss.seq >= w->seq) {
            /* A retry of a write already applied: answer as the first time. */
            free(sk);
            free(dk);
            if (w->index) {
                st->version = w->index;
                stage_shard_state(e, g, w->shard);
                g->nstaged++;
            }
            *version = ss.code == KV_OK ? ss.version : 0;
            return ss.code;
        }
    }
    bool locked;
    rc = key_locked(e, w->shard, w->key, w->klen, &locked, NULL);
    if (rc != KV_OK)
        goto fail;
    if (locked) {
        /* Not applied, and no session record: a retry is evaluated anew
         * once the transaction holding the key resolved it. */
        if (w->index)
            stage_index(e, w->shard, w->index);
        rc = ENGINE_ELOCKED;
        goto fail;
    }
    uint64_t cur = 0;
    /* Always read: the shard's key count depends on whether KEY exists. */
    rc = latest_version(e, dk, dlen, slot, &cur);
    if (rc != KV_OK)
        goto fail;
    if (w->if_version && cur != w->if_version)
        rc = KV_ECONFLICT;
    else if (w->op == ENGINE_PUT && w->if_absent && cur != 0)
        rc = KV_ECONFLICT;
    else if (w->op == ENGINE_DEL && cur == 0)
        rc = KV_ENOTFOUND;
    if (rc != KV_OK) {
        if (!w->index) /* nothing to record: the write did not happen */
            goto fail;
        /* Replicated: the entry is applied (as a no-op) whatever happens. */
        st->version = ver;
        stage_shard_state(e, g, w->shard);
        if (sk)
            session_record(e, sk, sklen, w->seq, rc, 0, NULL, 0);
        g->nstaged++;
        free(dk);
        return rc;
    }
    if (w->op == ENGINE_PUT) {
        rc = scratch_reserve(e, REC_HDR + w->vlen);
        if (rc != KV_OK)
            goto fail;
        e->scratch[0] = REC_TAG;
        put_u64(e->scratch + 1, ver);
        if (w->vlen)
            memcpy(e->scratch + REC_HDR, w->val, w->vlen);
        store_batch_put(g->batch, dk, dlen, e->scratch, REC_HDR + w->vlen);
    } else {
        store_batch_del(g->batch, dk, dlen);
    }
    st->version = ver;
    if (w->op == ENGINE_PUT && cur == 0)
        st->keys++;
    else if (w->op == ENGINE_DEL)
        st->keys--;
    stage_shard_state(e, g, w->shard);
    g->nstaged++;
    overlay_set(g, slot, dk, dlen, w->op == ENGINE_PUT ? ver : 0);
    if (sk) /* no overlay growth between the two inserts: see the check above */
        session_record(e, sk, sklen, w->seq, KV_OK,
                       w->op == ENGINE_PUT ? ver : 0, NULL, 0);
    *version = w->op == ENGINE_PUT ? ver : 0;
    return KV_OK;
fail:
    free(dk);
    free(sk);
    return rc;
}

/* Stages the write of one transaction op at VER, taking DK (its store
 * key). PRE is the key's version before the transaction; the overlay gives
 * what earlier ops of the transaction (or of the generation) wrote. Cannot
 * fail: the caller made room in the overlay and the scratch buffer. */
static void stage_txn_write(struct engine *e, struct gen *g, uint32_t shard,
                            const struct engine_txn_op *op, unsigned char *dk,
                            size_t dlen, uint64_t pre, uint64_t ver)
{
    struct shard_state *st = &e->staged[shard];
    struct overlay_slot *slot = overlay_find(g, dk, dlen);
    uint64_t cur = slot->key ? slot->version : pre;
    if (op->kind == ENGINE_TXN_PUT) {
        e->scratch[0] = REC_TAG;
        put_u64(e->scratch + 1, ver);
        if (op->vlen)
            memcpy(e->scratch + REC_HDR, op->val, op->vlen);
        store_batch_put(g->batch, dk, dlen, e->scratch, REC_HDR + op->vlen);
        if (cur == 0)
            st->keys++;
    } else {
        if (cur == 0) { /* deleting a missing key: nothing to do */
            free(dk);
            return;
        }
        store_batch_del(g->batch, dk, dlen);
        st->keys--;
    }
    overlay_set(g, slot, dk, dlen, op->kind == ENGINE_TXN_PUT ? ver : 0);
}

/* Makes room for N more overlay slots in G. */
static int overlay_reserve(struct gen *g, size_t n)
{
    while ((g->used + n) * 2 >= g->nslots)
        if (overlay_grow(g) != KV_OK)
            return KV_ENOMEM;
    return KV_OK;
}

/* What a procedure's effects add to a transaction's apply. */
struct effect_io {
    const void *reply; /* recorded in the session */
    size_t rlen;
    uint64_t after_index;
    uint64_t version; /* out: the writes' version (0: none) */
    void *out;        /* out: the recorded reply (malloc()ed) */
    size_t outlen;
};

/* engine_stage_txn, and with FX engine_stage_effect: a failed condition is
 * then ENGINE_ESTALE, nothing recorded. */
static int stage_txn(struct engine *e, const struct engine_txn *t,
                     struct effect_io *fx, uint64_t *versions, size_t *failed,
                     uint64_t *current)
{
    *failed = 0;
    *current = 0;
    if (t->shard >= e->nshards || (t->nops == 0 && !fx))
        return KV_EINVAL;
    if (t->index && t->index <= e->staged[t->shard].version)
        return KV_EINVAL;
    if (!engine_session_ok(t->client_id, t->client_id_len, t->seq))
        return KV_EINVAL;
    size_t maxv = 0;
    for (size_t i = 0; i < t->nops; i++) {
        const struct engine_txn_op *op = &t->ops[i];
        if (op->klen == 0 || op->kind > ENGINE_TXN_IF_ABSENT ||
            (op->kind == ENGINE_TXN_IF_VERSION && !op->version))
            return KV_EINVAL;
        if (op->kind == ENGINE_TXN_PUT && op->vlen > maxv)
            maxv = op->vlen;
    }
    struct gen *g = e->cur;
    struct shard_state *st = &e->staged[t->shard];
    uint64_t ver = t->index ? t->index : st->version + 1;
    unsigned char *sk = NULL;
    size_t sklen = 0;
    size_t nalloc = t->nops ? t->nops : 1;
    unsigned char **dks = calloc(nalloc, sizeof(*dks));
    size_t *dlens = calloc(nalloc, sizeof(*dlens));
    uint64_t *pre = calloc(nalloc, sizeof(*pre));
    int rc = dks && dlens && pre ? KV_OK : KV_ENOMEM;
    if (rc == KV_OK && t->seq) {
        sk = session_key(t->shard, t->client_id, t->client_id_len, &sklen);
        rc = sk ? KV_OK : KV_ENOMEM;
    }
    if (rc == KV_OK && sk) {
        struct session ss;
        rc = session_get(e, sk, sklen, &ss, fx ? &fx->out : NULL,
                         fx ? &fx->outlen : NULL);
        if (fx && !(rc == KV_OK && ss.found && ss.seq >= t->seq)) {
            free(fx->out); /* an earlier call's reply: not this one's */
            fx->out = NULL;
            fx->outlen = 0;
        }
        if (rc == KV_OK && ss.found && ss.seq >= t->seq) {
            if (fx)
                fx->version = ss.code == KV_OK ? ss.version : 0;
            /* A retry: the first outcome again. Every write of a committed
             * transaction got its version; conditions held as asked. */
            if (t->index) {
                st->version = t->index;
                stage_shard_state(e, g, t->shard);
                g->nstaged++;
            }
            for (size_t i = 0; i < t->nops; i++) {
                const struct engine_txn_op *op = &t->ops[i];
                versions[i] = ss.code != KV_OK                    ? 0
                              : op->kind == ENGINE_TXN_PUT        ? ss.version
                              : op->kind == ENGINE_TXN_IF_VERSION ? op->version
                                                                  : 0;
            }
            rc = ss.code;
            goto out;
        }
    }
    for (size_t i = 0; i < t->nops && rc == KV_OK; i++) {
        bool locked;
        rc = key_locked(e, t->shard, t->ops[i].key, t->ops[i].klen, &locked,
                        NULL);
        if (rc == KV_OK && locked) {
            /* As for engine_stage: not applied, no session record. */
            if (t->index)
                stage_index(e, t->shard, t->index);
            rc = ENGINE_ELOCKED;
            goto out;
        }
    }
    /* Everything that can fail comes before anything is staged: the store
     * keys, the versions before the transaction, room to stage. */
    for (size_t i = 0; i < t->nops && rc == KV_OK; i++) {
        const struct engine_txn_op *op = &t->ops[i];
        dks[i] = data_key(t->shard, op->key, op->klen, &dlens[i]);
        if (!dks[i]) {
            rc = KV_ENOMEM;
            break;
        }
        rc = latest_version(e, dks[i], dlens[i],
                            overlay_find(g, dks[i], dlens[i]), &pre[i]);
    }
    if (rc == KV_OK && fx && fx->after_index && t->index != fx->after_index + 1)
        *failed = 1; /* what it scanned may have changed */
    if (rc == KV_OK)
        rc = overlay_reserve(g, t->nops + 1);
    if (rc == KV_OK)
        rc = scratch_reserve(e, REC_HDR + maxv);
    if (rc != KV_OK)
        goto out;
    /* Conditions, against the state before the transaction. */
    for (size_t i = 0; i < t->nops; i++) {
        const struct engine_txn_op *op = &t->ops[i];
        if (op->kind != ENGINE_TXN_IF_VERSION &&
            op->kind != ENGINE_TXN_IF_ABSENT)
            continue;
        versions[i] = pre[i];
        if (!*failed &&
            ((op->kind == ENGINE_TXN_IF_VERSION && pre[i] != op->version) ||
             (op->kind == ENGINE_TXN_IF_ABSENT && pre[i] != 0))) {
            *failed = i + 1;
            *current = pre[i];
        }
    }
    if (*failed && fx) {
        /* The evaluation's view is out of date: nothing applied, nothing
         * recorded; the leader evaluates the call again. */
        if (t->index)
            stage_index(e, t->shard, t->index);
        rc = ENGINE_ESTALE;
        goto out;
    }
    if (*failed) {
        rc = KV_ECONFLICT;
        if (!t->index) /* nothing to record: the transaction did not happen */
            goto out;
    } else {
        for (size_t i = 0; i < t->nops; i++) {
            const struct engine_txn_op *op = &t->ops[i];
            if (op->kind != ENGINE_TXN_PUT && op->kind != ENGINE_TXN_DEL)
                continue;
            stage_txn_write(e, g, t->shard, op, dks[i], dlens[i], pre[i], ver);
            dks[i] = NULL; /* taken */
            versions[i] = op->kind == ENGINE_TXN_PUT ? ver : 0;
            if (fx)
                fx->version = ver;
        }
    }
    st->version = ver;
    stage_shard_state(e, g, t->shard);
    g->nstaged++;
    if (sk) {
        int prc = session_record(e, sk, sklen, t->seq, rc,
                                 rc == KV_OK && (!fx || fx->version) ? ver : 0,
                                 fx ? fx->reply : NULL, fx ? fx->rlen : 0);
        sk = NULL; /* taken */
        if (prc != KV_OK) {
            rc = prc; /* half staged: the caller stops (as for storage) */
            goto out;
        }
    }
    if (fx && fx->rlen && rc == KV_OK) {
        fx->out = malloc(fx->rlen);
        if (!fx->out) {
            rc = KV_ENOMEM;
            goto out;
        }
        memcpy(fx->out, fx->reply, fx->rlen);
        fx->outlen = fx->rlen;
    }
out:
    if (dks)
        for (size_t i = 0; i < t->nops; i++)
            free(dks[i]);
    free(dks);
    free(dlens);
    free(pre);
    free(sk);
    return rc;
}

int engine_stage_txn(struct engine *e, const struct engine_txn *t,
                     uint64_t *versions, size_t *failed, uint64_t *current)
{
    return stage_txn(e, t, NULL, versions, failed, current);
}

int engine_stage_effect(struct engine *e, const struct engine_effect *f,
                        uint64_t *version, void **reply, size_t *rlen)
{
    *version = 0;
    *reply = NULL;
    *rlen = 0;
    for (size_t i = 0; i < f->txn.nops; i++)
        if (f->txn.ops[i].kind > ENGINE_TXN_IF_ABSENT)
            return KV_EINVAL;
    struct effect_io fx = {
        .reply = f->reply, .rlen = f->rlen, .after_index = f->after_index};
    size_t n = f->txn.nops ? f->txn.nops : 1, failed;
    uint64_t *versions = calloc(n, sizeof(*versions)), current;
    if (!versions)
        return KV_ENOMEM;
    int rc = stage_txn(e, &f->txn, &fx, versions, &failed, &current);
    free(versions);
    *version = fx.version;
    *reply = fx.out;
    *rlen = fx.outlen;
    return rc;
}

/* --- two-phase commit ----------------------------------------------------- */

/* The version of KEY now, staged writes included (0: absent). */
static int current_version(struct engine *e, uint32_t shard, const void *key,
                           size_t klen, uint64_t *version)
{
    size_t dlen;
    unsigned char *dk = data_key(shard, key, klen, &dlen);
    if (!dk)
        return KV_ENOMEM;
    int rc =
        latest_version(e, dk, dlen, overlay_find(e->cur, dk, dlen), version);
    free(dk);
    return rc;
}

#define INTENT_HDR (ENGINE_TXN_ID_LEN + 1 + 8 + 4 + 8)
#define PART_HDR (4 + 8 + 8 + 4)
#define XREC_HDR (1 + 8 + 4)

/* Whether V (VLEN bytes) is an intent: a whole header whose kind is one of
 * enum engine_txn_kind. Anything else is damage (KV_ECORRUPT): taken for
 * a lock-only intent, a commit would drop the write it held. */
static bool intent_ok(const unsigned char *v, size_t vlen)
{
    return vlen >= INTENT_HDR && v[ENGINE_TXN_ID_LEN] <= ENGINE_TXN_IF_ABSENT;
}

/* A participant record ("P") is a header: home (u32), deadline (u64),
 * version (u64), key count (u32), then, while prepared, the keys it holds
 * intents on (u32 length, bytes each). Once resolved it is a tombstone:
 * the header with the key count PART_TOMB, then one byte, the outcome
 * (ENGINE_TXN_COMMITTED or ENGINE_TXN_ABORTED). A prepared record's key
 * count is the number of keys that follow, at least 4 bytes each, so it is
 * never PART_TOMB, and records written before tombstones existed read as
 * prepared ones. A tombstone resolved without a prepare has home
 * PART_NO_HOME and version 0. */
#define PART_TOMB UINT32_MAX
#define PART_TOMB_LEN (PART_HDR + 1)
#define PART_NO_HOME UINT32_MAX

struct part_rec {
    uint32_t home;
    uint64_t deadline;
    uint64_t version;
    uint32_t nkeys; /* prepared: the keys after the header */
    int outcome;    /* tombstone: ENGINE_TXN_COMMITTED or _ABORTED; else -1 */
};

/* Decodes the header of a participant record. KV_ECORRUPT when it is none. */
static int part_decode(const unsigned char *v, size_t len, struct part_rec *out)
{
    if (len < PART_HDR)
        return KV_ECORRUPT;
    out->home = get_u32(v);
    out->deadline = get_u64(v + 4);
    out->version = get_u64(v + 12);
    out->nkeys = get_u32(v + 20);
    out->outcome = -1;
    if (out->nkeys != PART_TOMB)
        return KV_OK;
    if (len != PART_TOMB_LEN || (v[PART_HDR] != ENGINE_TXN_COMMITTED &&
                                 v[PART_HDR] != ENGINE_TXN_ABORTED))
        return KV_ECORRUPT;
    out->outcome = v[PART_HDR];
    return KV_OK;
}

/* Whether a tombstone of DEADLINE is old enough to go at NOW. */
static bool tomb_expired(uint64_t deadline, uint64_t now)
{
    return now > ENGINE_TOMB_KEEP_MS && deadline < now - ENGINE_TOMB_KEEP_MS;
}

/* Counts a new tombstone of DEADLINE in ST. */
static void tomb_added(struct shard_state *st, uint64_t deadline)
{
    if (st->tombs == 0 || deadline < st->tomb_oldest)
        st->tomb_oldest = deadline;
    st->tombs++;
}

/* A store key TAG shard BYTES (malloc()ed). */
static unsigned char *tagged_key(char tag, uint32_t shard, const void *b,
                                 size_t n, size_t *out_len)
{
    unsigned char *k = data_key(shard, b, n, out_len);
    if (k)
        k[0] = (unsigned char)tag;
    return k;
}

/* Reads an "I", "P" or "X" record, staged changes first. */
static int rec_get(struct engine *e, const unsigned char *k, size_t klen,
                   void **val, size_t *vlen)
{
    struct gen *gens[2] = {e->cur, e->inflight};
    for (int i = 0; i < 2; i++) {
        if (!gens[i])
            continue;
        struct overlay_slot *o = overlay_find(gens[i], k, klen);
        if (!o->key)
            continue;
        if (o->gone)
            return KV_ENOTFOUND;
        void *copy = malloc(o->vlen ? o->vlen : 1);
        if (!copy)
            return KV_ENOMEM;
        memcpy(copy, o->val, o->vlen);
        *val = copy;
        *vlen = o->vlen;
        return KV_OK;
    }
    return store_get(e->store, k, klen, val, vlen);
}

/* Stages record K (taken) = VAL, or its delete when VAL is NULL. */
static int rec_put(struct engine *e, unsigned char *k, size_t klen,
                   const void *val, size_t vlen)
{
    struct gen *g = e->cur;
    unsigned char *copy = NULL;
    if (overlay_reserve(g, 1) != KV_OK ||
        (val && !(copy = malloc(vlen ? vlen : 1)))) {
        free(k);
        return KV_ENOMEM;
    }
    if (val)
        memcpy(copy, val, vlen);
    struct overlay_slot *o = overlay_claim(g, k, klen);
    k = o->key;
    free(o->val);
    o->val = copy;
    o->vlen = val ? vlen : 0;
    o->gone = val == NULL;
    if (val)
        store_batch_put(g->batch, k, klen, val, vlen);
    else
        store_batch_del(g->batch, k, klen);
    return KV_OK;
}

bool engine_has_intents(const struct engine *e, uint32_t shard)
{
    return shard < e->nshards && e->staged[shard].intents > 0;
}

/* Whether KEY of SHARD holds an intent (staged state); *TXN gets its
 * transaction id when it does and TXN is not NULL. */
static int key_locked(struct engine *e, uint32_t shard, const void *key,
                      size_t klen, bool *locked, unsigned char *txn)
{
    *locked = false;
    if (!engine_has_intents(e, shard))
        return KV_OK;
    size_t ilen;
    unsigned char *ik = tagged_key('I', shard, key, klen, &ilen);
    if (!ik)
        return KV_ENOMEM;
    void *v = NULL;
    size_t vlen = 0;
    int rc = rec_get(e, ik, ilen, &v, &vlen);
    free(ik);
    if (rc == KV_ENOTFOUND)
        return KV_OK;
    if (rc != KV_OK)
        return rc;
    if (!intent_ok(v, vlen)) {
        free(v);
        return KV_ECORRUPT;
    }
    *locked = true;
    if (txn)
        memcpy(txn, v, ENGINE_TXN_ID_LEN);
    free(v);
    return KV_OK;
}

/* Moves SHARD's applied index to INDEX for an entry that wrote nothing. */
static void stage_index(struct engine *e, uint32_t shard, uint64_t index)
{
    e->staged[shard].version = index;
    stage_shard_state(e, e->cur, shard);
    e->cur->nstaged++;
}

static int check_index(struct engine *e, uint32_t shard, uint64_t index)
{
    if (shard >= e->nshards || index == 0 || index <= e->staged[shard].version)
        return KV_EINVAL;
    return KV_OK;
}

int engine_stage_prepare(struct engine *e, const struct engine_prepare *p,
                         uint64_t *version, size_t *failed, uint64_t *current)
{
    const struct engine_txn *t = &p->txn;
    *failed = 0;
    *current = 0;
    *version = 0;
    int rc = check_index(e, t->shard, t->index);
    if (rc != KV_OK || t->nops == 0 || !p->txn_id)
        return KV_EINVAL;
    for (size_t i = 0; i < t->nops; i++)
        if (t->ops[i].klen == 0 || t->ops[i].kind > ENGINE_TXN_IF_ABSENT ||
            (t->ops[i].kind == ENGINE_TXN_IF_VERSION && !t->ops[i].version))
            return KV_EINVAL;
    size_t plen;
    unsigned char *pk =
        tagged_key('P', t->shard, p->txn_id, ENGINE_TXN_ID_LEN, &plen);
    if (!pk)
        return KV_ENOMEM;
    void *pv = NULL;
    size_t pvlen = 0;
    rc = rec_get(e, pk, plen, &pv, &pvlen);
    if (rc == KV_OK) { /* prepared before, or resolved already */
        free(pk);
        struct part_rec pr;
        rc = part_decode(pv, pvlen, &pr);
        free(pv);
        if (rc != KV_OK)
            return rc;
        stage_index(e, t->shard, t->index);
        if (pr.outcome == ENGINE_TXN_ABORTED)
            return KV_ETIMEDOUT; /* a NO, and nothing locked */
        /* prepared: the same YES; committed: the YES it was, harmless */
        *version = pr.version;
        return KV_OK;
    }
    if (rc != KV_ENOTFOUND) {
        free(pk);
        return rc;
    }
    rc = KV_OK;
    if (p->now_ms > p->deadline_ms)
        rc = KV_ETIMEDOUT;
    /* Locks first (a NO without looking further), then conditions. */
    for (size_t i = 0; i < t->nops && rc == KV_OK; i++) {
        bool locked;
        rc = key_locked(e, t->shard, t->ops[i].key, t->ops[i].klen, &locked,
                        NULL);
        if (rc == KV_OK && locked)
            rc = ENGINE_ELOCKED;
    }
    for (size_t i = 0; i < t->nops && rc == KV_OK; i++) {
        const struct engine_txn_op *op = &t->ops[i];
        if (op->kind != ENGINE_TXN_IF_VERSION &&
            op->kind != ENGINE_TXN_IF_ABSENT)
            continue;
        uint64_t cur = 0;
        rc = current_version(e, t->shard, op->key, op->klen, &cur);
        if (rc == KV_OK &&
            ((op->kind == ENGINE_TXN_IF_VERSION && cur != op->version) ||
             (op->kind == ENGINE_TXN_IF_ABSENT && cur != 0))) {
            rc = KV_ECONFLICT;
            *failed = i + 1;
            *current = cur;
        }
    }
    if (rc == KV_ETIMEDOUT || rc == ENGINE_ELOCKED || rc == KV_ECONFLICT) {
        free(pk);
        stage_index(e, t->shard, t->index);
        return rc;
    }
    if (rc != KV_OK) {
        free(pk);
        return rc;
    }
    /* YES: one intent per key (the last op on a key decides what it
     * does; a condition alone only locks), and the participant record. */
    size_t keybytes = 0;
    for (size_t i = 0; i < t->nops; i++)
        keybytes += 4 + t->ops[i].klen;
    unsigned char *prec = malloc(PART_HDR + keybytes);
    if (!prec) {
        free(pk);
        return KV_ENOMEM;
    }
    put_u32(prec, p->home);
    put_u64(prec + 4, p->deadline_ms);
    put_u64(prec + 12, t->index);
    size_t off = PART_HDR, nkeys = 0;
    for (size_t i = 0; i < t->nops && rc == KV_OK; i++) {
        const struct engine_txn_op *op = &t->ops[i];
        size_t ilen;
        unsigned char *ik = tagged_key('I', t->shard, op->key, op->klen, &ilen);
        if (!ik) {
            rc = KV_ENOMEM;
            break;
        }
        bool seen = false; /* a later op on the same key replaces this one */
        void *old = NULL;
        size_t oldlen = 0;
        int grc = rec_get(e, ik, ilen, &old, &oldlen);
        if (grc == KV_OK) {
            seen = oldlen >= INTENT_HDR &&
                   memcmp(old, p->txn_id, ENGINE_TXN_ID_LEN) == 0;
            free(old);
        }
        enum engine_txn_kind kind = op->kind;
        if (seen && kind != ENGINE_TXN_PUT && kind != ENGINE_TXN_DEL) {
            free(ik); /* a condition after a write keeps the write */
            continue;
        }
        size_t vlen = kind == ENGINE_TXN_PUT ? op->vlen : 0;
        rc = scratch_reserve(e, INTENT_HDR + vlen);
        if (rc != KV_OK) {
            free(ik);
            break;
        }
        unsigned char *iv = e->scratch;
        memcpy(iv, p->txn_id, ENGINE_TXN_ID_LEN);
        iv[ENGINE_TXN_ID_LEN] = (unsigned char)kind;
        put_u64(iv + ENGINE_TXN_ID_LEN + 1, t->index);
        put_u32(iv + ENGINE_TXN_ID_LEN + 9, p->home);
        put_u64(iv + ENGINE_TXN_ID_LEN + 13, p->deadline_ms);
        if (vlen)
            memcpy(iv + INTENT_HDR, op->val, vlen);
        rc = rec_put(e, ik, ilen, iv, INTENT_HDR + vlen);
        if (rc == KV_OK && !seen) {
            e->staged[t->shard].intents++;
            put_u32(prec + off, (uint32_t)op->klen);
            memcpy(prec + off + 4, op->key, op->klen);
            off += 4 + op->klen;
            nkeys++;
        }
    }
    if (rc == KV_OK) {
        put_u32(prec + 20, (uint32_t)nkeys);
        rc = rec_put(e, pk, plen, prec, off);
        pk = NULL;
    }
    free(pk);
    free(prec);
    if (rc != KV_OK)
        return rc;
    stage_index(e, t->shard, t->index);
    *version = t->index;
    return KV_OK;
}

/* Commits or drops the intents on the NKEYS keys listed in PREC (a
 * prepared participant record of PRLEN bytes) that TXN_ID holds. */
static int resolve_intents(struct engine *e, uint32_t shard,
                           const unsigned char *txn_id, bool commit,
                           const unsigned char *prec, size_t prlen,
                           uint32_t nkeys)
{
    int rc = KV_OK;
    size_t off = PART_HDR;
    struct shard_state *st = &e->staged[shard];
    for (uint32_t i = 0; i < nkeys && rc == KV_OK; i++) {
        if (off + 4 > prlen || off + 4 + get_u32(prec + off) > prlen) {
            rc = KV_ECORRUPT;
            break;
        }
        size_t klen = get_u32(prec + off);
        const unsigned char *key = prec + off + 4;
        off += 4 + klen;
        size_t ilen;
        unsigned char *ik = tagged_key('I', shard, key, klen, &ilen);
        if (!ik) {
            rc = KV_ENOMEM;
            break;
        }
        unsigned char *iv = NULL;
        size_t ivlen = 0;
        rc = rec_get(e, ik, ilen, (void **)&iv, &ivlen);
        if (rc == KV_ENOTFOUND ||
            (rc == KV_OK && (!intent_ok(iv, ivlen) ||
                             memcmp(iv, txn_id, ENGINE_TXN_ID_LEN)))) {
            rc = rc == KV_OK && !intent_ok(iv, ivlen) ? KV_ECORRUPT : KV_OK;
            free(ik);
            free(iv);
            continue; /* not ours (cannot happen) */
        }
        if (rc != KV_OK) {
            free(ik);
            break;
        }
        int kind = iv[ENGINE_TXN_ID_LEN];
        uint64_t ver = get_u64(iv + ENGINE_TXN_ID_LEN + 1);
        if (commit && (kind == ENGINE_TXN_PUT || kind == ENGINE_TXN_DEL)) {
            struct engine_txn_op op = {.kind = (enum engine_txn_kind)kind,
                                       .key = key,
                                       .klen = klen,
                                       .val = iv + INTENT_HDR,
                                       .vlen = ivlen - INTENT_HDR};
            size_t dlen;
            unsigned char *dk = data_key(shard, key, klen, &dlen);
            uint64_t pre = 0;
            rc = dk ? latest_version(e, dk, dlen,
                                     overlay_find(e->cur, dk, dlen), &pre)
                    : KV_ENOMEM;
            if (rc == KV_OK)
                rc = overlay_reserve(e->cur, 2);
            if (rc == KV_OK)
                rc = scratch_reserve(e, REC_HDR + op.vlen);
            if (rc == KV_OK) {
                stage_txn_write(e, e->cur, shard, &op, dk, dlen, pre, ver);
                dk = NULL;
            }
            free(dk);
        }
        free(iv);
        if (rc == KV_OK) {
            rc = rec_put(e, ik, ilen, NULL, 0);
            if (rc == KV_OK && st->intents > 0)
                st->intents--;
        } else {
            free(ik);
        }
    }
    return rc;
}

int engine_stage_resolve(struct engine *e, uint32_t shard, uint64_t index,
                         const unsigned char *txn_id, bool commit,
                         uint64_t now_ms)
{
    int rc = check_index(e, shard, index);
    if (rc != KV_OK || !txn_id)
        return KV_EINVAL;
    size_t plen;
    unsigned char *pk =
        tagged_key('P', shard, txn_id, ENGINE_TXN_ID_LEN, &plen);
    if (!pk)
        return KV_ENOMEM;
    unsigned char *prec = NULL;
    size_t prlen = 0;
    /* Never prepared here: a tombstone all the same, dated by the entry. */
    struct part_rec pr = {
        .home = PART_NO_HOME, .deadline = now_ms, .outcome = -1};
    rc = rec_get(e, pk, plen, (void **)&prec, &prlen);
    if (rc == KV_OK) {
        rc = part_decode(prec, prlen, &pr);
        if (rc == KV_OK && pr.outcome < 0)
            rc = resolve_intents(e, shard, txn_id, commit, prec, prlen,
                                 pr.nkeys);
    } else if (rc == KV_ENOTFOUND) {
        rc = KV_OK;
    }
    free(prec);
    if (rc == KV_OK && pr.outcome >= 0) {
        free(pk); /* resolved before: its tombstone stays as it is */
    } else if (rc == KV_OK) {
        unsigned char tv[PART_TOMB_LEN];
        put_u32(tv, pr.home);
        put_u64(tv + 4, pr.deadline);
        put_u64(tv + 12, pr.version);
        put_u32(tv + 20, PART_TOMB);
        tv[PART_HDR] = commit ? ENGINE_TXN_COMMITTED : ENGINE_TXN_ABORTED;
        rc = rec_put(e, pk, plen, tv, sizeof(tv));
        if (rc == KV_OK)
            tomb_added(&e->staged[shard], pr.deadline);
    } else {
        free(pk);
    }
    if (rc != KV_OK)
        return rc;
    stage_index(e, shard, index);
    return KV_OK;
}

/* Reads TXN_ID's record on SHARD: KV_OK with *STATE and *DEADLINE, and
 * optionally the whole value (*REC, *RLEN), or KV_ENOTFOUND. */
static int xrec_get(struct engine *e, uint32_t shard,
                    const unsigned char *txn_id, unsigned char **key,
                    size_t *klen, int *state, uint64_t *deadline)
{
    *key = tagged_key('X', shard, txn_id, ENGINE_TXN_ID_LEN, klen);
    if (!*key)
        return KV_ENOMEM;
    unsigned char *v = NULL;
    size_t vlen = 0;
    int rc = rec_get(e, *key, *klen, (void **)&v, &vlen);
    if (rc == KV_OK && (vlen < XREC_HDR || v[0] > ENGINE_TXN_ABORTED))
        rc = KV_ECORRUPT; /* a state that is none: never taken as an abort */
    if (rc == KV_OK) {
        *state = v[0];
        *deadline = get_u64(v + 1);
    }
    free(v);
    return rc;
}

/* Stages TXN_ID's record with a new STATE (keeping the rest). */
static int xrec_set_state(struct engine *e, unsigned char *key, size_t klen,
                          int state)
{
    unsigned char *v = NULL;
    size_t vlen = 0;
    int rc = rec_get(e, key, klen, (void **)&v, &vlen);
    if (rc != KV_OK) {
        free(key);
        return rc;
    }
    v[0] = (unsigned char)state;
    rc = rec_put(e, key, klen, v, vlen);
    free(v);
    return rc;
}

int engine_stage_record(struct engine *e, uint32_t shard, uint64_t index,
                        const unsigned char *txn_id, uint64_t deadline_ms,
                        const uint32_t *parts, size_t nparts, int *state)
{
    int rc = check_index(e, shard, index);
    if (rc != KV_OK || !txn_id || nparts == 0 || nparts > e->nshards)
        return KV_EINVAL;
    unsigned char *k;
    size_t klen;
    uint64_t dl;
    rc = xrec_get(e, shard, txn_id, &k, &klen, state, &dl);
    if (rc == KV_OK) {
        free(k);
        stage_index(e, shard, index);
        return KV_OK;
    }
    if (rc != KV_ENOTFOUND) {
        free(k);
        return rc;
    }
    size_t vlen = XREC_HDR + 4 * nparts;
    unsigned char *v = malloc(vlen);
    if (!v) {
        free(k);
        return KV_ENOMEM;
    }
    e->staged[shard].records++;
    v[0] = ENGINE_TXN_PENDING;
    put_u64(v + 1, deadline_ms);
    put_u32(v + 9, (uint32_t)nparts);
    for (size_t i = 0; i < nparts; i++)
        put_u32(v + XREC_HDR + 4 * i, parts[i]);
    rc = rec_put(e, k, klen, v, vlen);
    free(v);
    if (rc != KV_OK)
        return rc;
    *state = ENGINE_TXN_PENDING;
    stage_index(e, shard, index);
    return KV_OK;
}

int engine_stage_decide(struct engine *e, uint32_t shard, uint64_t index,
                        const unsigned char *txn_id, int want, uint64_t now_ms,
                        int *state)
{
    int rc = check_index(e, shard, index);
    if (rc != KV_OK || !txn_id || want < ENGINE_TXN_PENDING ||
        want > ENGINE_TXN_ABORTED)
        return KV_EINVAL;
    unsigned char *k;
    size_t klen;
    uint64_t deadline = 0;
    rc = xrec_get(e, shard, txn_id, &k, &klen, state, &deadline);
    if (rc == KV_ENOTFOUND) {
        free(k);
        *state = ENGINE_TXN_UNKNOWN;
        stage_index(e, shard, index);
        return KV_OK;
    }
    if (rc != KV_OK) {
        free(k);
        return rc;
    }
    int next = *state;
    if (*state == ENGINE_TXN_PENDING) {
        if (now_ms > deadline)
            next = ENGINE_TXN_ABORTED;
        else if (want != ENGINE_TXN_PENDING)
            next = want;
    }
    if (next != *state) {
        rc = xrec_set_state(e, k, klen, next);
        if (rc != KV_OK)
            return rc;
    } else {
        free(k);
    }
    *state = next;
    stage_index(e, shard, index);
    return KV_OK;
}

int engine_stage_decide_for(struct engine *e, uint32_t shard, uint64_t index,
                            const unsigned char *txn_id, int want,
                            uint64_t now_ms, const void *client_id,
                            size_t client_id_len, uint64_t seq, int *state)
{
    if (!engine_session_ok(client_id, client_id_len, seq))
        return KV_EINVAL;
    unsigned char *sk = NULL;
    size_t sklen = 0;
    if (seq && want != ENGINE_TXN_PENDING) {
        sk = session_key(shard, client_id, client_id_len, &sklen);
        if (!sk || overlay_reserve(e->cur, 2) != KV_OK) {
            free(sk);
            return KV_ENOMEM;
        }
    }
    int rc = engine_stage_decide(e, shard, index, txn_id, want, now_ms, state);
    if (rc != KV_OK || !sk ||
        (*state != ENGINE_TXN_COMMITTED && *state != ENGINE_TXN_ABORTED)) {
        free(sk);
        return rc;
    }
    struct session ss;
    rc = session_get(e, sk, sklen, &ss, NULL, NULL);
    if (rc != KV_OK || (ss.found && ss.seq >= seq)) {
        free(sk); /* a later write of the session is recorded: keep it */
        return rc;
    }
    session_record(e, sk, sklen, seq,
                   *state == ENGINE_TXN_COMMITTED ? KV_OK : KV_ECONFLICT, 0,
                   NULL, 0);
    return KV_OK;
}

int engine_stage_record_for(struct engine *e, uint32_t shard, uint64_t index,
                            const unsigned char *txn_id, uint64_t deadline_ms,
                            const uint32_t *parts, size_t nparts,
                            const void *client_id, size_t client_id_len,
                            uint64_t seq, int *state)
{
    if (!engine_session_ok(client_id, client_id_len, seq))
        return KV_EINVAL;
    if (seq && check_index(e, shard, index) == KV_OK && txn_id) {
        /* A record that exists is what counts; only when there is none
         * does the session tell a forgotten transaction from a new one. */
        unsigned char *k;
        size_t klen;
        uint64_t dl;
        int rc = xrec_get(e, shard, txn_id, &k, &klen, state, &dl);
        free(k);
        if (rc != KV_OK && rc != KV_ENOTFOUND)
            return rc;
        if (rc == KV_ENOTFOUND) {
            uint64_t had = 0, ver = 0;
            int code = 0;
            rc = engine_session(e, shard, client_id, client_id_len, &had, &code,
                                &ver);
            if (rc != KV_OK && rc != KV_ENOTFOUND)
                return rc;
            if (rc == KV_OK && had >= seq) {
                /* Decided and forgotten (HAD == SEQ: the session holds its
                 * decision), or superseded by a later write of the client:
                 * never made again. */
                *state = had == seq && code == KV_OK ? ENGINE_TXN_COMMITTED
                                                     : ENGINE_TXN_ABORTED;
                stage_index(e, shard, index);
                return KV_OK;
            }
        }
    }
    return engine_stage_record(e, shard, index, txn_id, deadline_ms, parts,
                               nparts, state);
}

int engine_session_reply(struct engine *e, uint32_t shard,
                         const void *client_id, size_t client_id_len,
                         uint64_t *seq, int *code, uint64_t *version,
                         void **reply, size_t *rlen)
{
    if (reply) {
        *reply = NULL;
        *rlen = 0;
    }
    if (shard >= e->nshards || !client_id || client_id_len == 0 ||
        client_id_len > ENGINE_MAX_CLIENT_ID)
        return KV_EINVAL;
    size_t sklen;
    unsigned char *sk = session_key(shard, client_id, client_id_len, &sklen);
    if (!sk)
        return KV_ENOMEM;
    struct session ss;
    int rc = session_get(e, sk, sklen, &ss, reply, rlen);
    free(sk);
    if (rc == KV_OK && !ss.found)
        rc = KV_ENOTFOUND;
    if (rc == KV_OK) {
        *seq = ss.seq;
        *code = ss.code;
        *version = ss.version;
    }
    return rc;
}

int engine_session(struct engine *e, uint32_t shard, const void *client_id,
                   size_t client_id_len, uint64_t *seq, int *code,
                   uint64_t *version)
{
    return engine_session_reply(e, shard, client_id, client_id_len, seq, code,
                                version, NULL, NULL);
}

int engine_stage_forget(struct engine *e, uint32_t shard, uint64_t index,
                        const unsigned char *txn_id)
{
    int rc = check_index(e, shard, index);
    if (rc != KV_OK || !txn_id)
        return KV_EINVAL;
    unsigned char *k;
    size_t klen;
    int state;
    uint64_t deadline;
    rc = xrec_get(e, shard, txn_id, &k, &klen, &state, &deadline);
    if (rc == KV_OK && state != ENGINE_TXN_PENDING) {
        rc = rec_put(e, k, klen, NULL, 0);
        if (rc == KV_OK && e->staged[shard].records > 0)
            e->staged[shard].records--;
    } else {
        free(k);
        if (rc == KV_ENOTFOUND || rc == KV_OK)
            rc = KV_OK; /* gone already, or undecided: kept */
    }
    if (rc != KV_OK)
        return rc;
    stage_index(e, shard, index);
    return KV_OK;
}

int engine_get_intent(struct engine *e, uint32_t shard, const void *key,
                      size_t klen, struct engine_intent *out)
{
    if (shard >= e->nshards)
        return KV_EINVAL;
    if (e->applied[shard].intents == 0)
        return KV_ENOTFOUND;
    size_t ilen;
    unsigned char *ik = tagged_key('I', shard, key, klen, &ilen);
    if (!ik)
        return KV_ENOMEM;
    unsigned char *v = NULL;
    size_t vlen = 0;
    int rc = store_get(e->store, ik, ilen, (void **)&v, &vlen);
    free(ik);
    if (rc != KV_OK)
        return rc;
    if (!intent_ok(v, vlen)) {
        free(v);
        return KV_ECORRUPT;
    }
    memcpy(out->txn_id, v, ENGINE_TXN_ID_LEN);
    out->kind = (enum engine_txn_kind)v[ENGINE_TXN_ID_LEN];
    out->version = get_u64(v + ENGINE_TXN_ID_LEN + 1);
    out->home = get_u32(v + ENGINE_TXN_ID_LEN + 9);
    out->deadline_ms = get_u64(v + ENGINE_TXN_ID_LEN + 13);
    out->vlen = vlen - INTENT_HDR;
    out->val = NULL;
    if (out->vlen) {
        out->val = malloc(out->vlen);
        if (!out->val) {
            free(v);
            return KV_ENOMEM;
        }
        memcpy(out->val, v + INTENT_HDR, out->vlen);
    }
    free(v);
    return KV_OK;
}

int engine_list_txns(struct engine *e, uint32_t shard, char which,
                     engine_txn_fn fn, void *arg)
{
    if (shard >= e->nshards || (which != 'P' && which != 'X'))
        return KV_EINVAL;
    unsigned char prefix[PREFIX_LEN];
    prefix[0] = (unsigned char)which;
    put_u32(prefix + 1, shard);
    struct store_iter *it = store_iter_new(e->store);
    if (!it)
        return KV_ENOMEM;
    int rc = KV_OK;
    uint32_t *parts = NULL;
    for (store_iter_seek(it, prefix, sizeof(prefix)); store_iter_valid(it);
         store_iter_next(it)) {
        size_t klen, vlen;
        const unsigned char *k = store_iter_key(it, &klen);
        const unsigned char *v = store_iter_value(it, &vlen);
        if (klen < PREFIX_LEN || memcmp(k, prefix, PREFIX_LEN) != 0)
            break;
        if (klen != PREFIX_LEN + ENGINE_TXN_ID_LEN) {
            rc = KV_ECORRUPT;
            break;
        }
        struct engine_txn_info t = {.txn_id = k + PREFIX_LEN, .state = -1};
        if (which == 'X') {
            if (vlen < XREC_HDR || v[0] > ENGINE_TXN_ABORTED ||
                (vlen - XREC_HDR) / 4 < get_u32(v + 9)) {
                rc = KV_ECORRUPT;
                break;
            }
            t.state = v[0];
            t.deadline_ms = get_u64(v + 1);
            t.nparts = get_u32(v + 9);
            free(parts);
            parts = calloc(t.nparts ? t.nparts : 1, sizeof(*parts));
            if (!parts) {
                rc = KV_ENOMEM;
                break;
            }
            for (size_t i = 0; i < t.nparts; i++)
                parts[i] = get_u32(v + XREC_HDR + 4 * i);
            t.parts = parts;
        } else {
            struct part_rec pr;
            rc = part_decode(v, vlen, &pr);
            if (rc != KV_OK)
                break;
            if (pr.outcome >= 0)
                continue; /* a tombstone: resolved, nothing to list */
            t.home = pr.home;
            t.deadline_ms = pr.deadline;
            t.version = pr.version;
            t.nkeys = pr.nkeys;
        }
        rc = fn(arg, &t);
        if (rc != 0)
            break;
    }
    if (rc == KV_OK)
        rc = store_iter_status(it);
    free(parts);
    store_iter_free(it);
    return rc;
}

/* Counts the records of prefix TAG stored for SHARD (at open and after an
 * install). */
static int count_tagged(struct engine *e, char tag, uint32_t shard, uint64_t *n)
{
    unsigned char prefix[PREFIX_LEN];
    prefix[0] = (unsigned char)tag;
    put_u32(prefix + 1, shard);
    struct store_iter *it = store_iter_new(e->store);
    if (!it)
        return KV_ENOMEM;
    *n = 0;
    for (store_iter_seek(it, prefix, sizeof(prefix)); store_iter_valid(it);
         store_iter_next(it)) {
        size_t klen;
        const unsigned char *k = store_iter_key(it, &klen);
        if (klen < PREFIX_LEN || memcmp(k, prefix, PREFIX_LEN) != 0)
            break;
        (*n)++;
    }
    int rc = store_iter_status(it);
    store_iter_free(it);
    return rc;
}

/* Counts the tombstones among SHARD's stored "P" records and finds the
 * earliest deadline among them. A record that does not decode counts as
 * none: whatever reads it reports it. */
static int count_tombs(struct engine *e, uint32_t shard, struct shard_state *st)
{
    unsigned char prefix[PREFIX_LEN];
    prefix[0] = 'P';
    put_u32(prefix + 1, shard);
    struct store_iter *it = store_iter_new(e->store);
    if (!it)
        return KV_ENOMEM;
    st->tombs = 0;
    st->tomb_oldest = 0;
    for (store_iter_seek(it, prefix, sizeof(prefix)); store_iter_valid(it);
         store_iter_next(it)) {
        size_t klen, vlen;
        const unsigned char *k = store_iter_key(it, &klen);
        if (klen < PREFIX_LEN || memcmp(k, prefix, PREFIX_LEN) != 0)
            break;
        struct part_rec pr;
        const unsigned char *v = store_iter_value(it, &vlen);
        if (part_decode(v, vlen, &pr) == KV_OK && pr.outcome >= 0)
            tomb_added(st, pr.deadline);
    }
    int rc = store_iter_status(it);
    store_iter_free(it);
    return rc;
}

static int count_intents(struct engine *e, uint32_t shard,
                         struct shard_state *st)
{
    int rc = count_tagged(e, 'I', shard, &st->intents);
    if (rc == KV_OK)
        rc = count_tagged(e, 'X', shard, &st->records);
    if (rc == KV_OK)
        rc = count_tombs(e, shard, st);
    return rc;
}

/* --- tombstones ----------------------------------------------------------- */

bool engine_gc_due(const struct engine *e, uint32_t shard, uint64_t now_ms)
{
    return shard < e->nshards && e->staged[shard].tombs > 0 &&
           tomb_expired(e->staged[shard].tomb_oldest, now_ms);
}

uint64_t engine_tombstones(const struct engine *e, uint32_t shard)
{
    return shard < e->nshards ? e->staged[shard].tombs : 0;
}

/* A walk through the records under a prefix as staged: the store's records
 * merged with the keys staged (changed or deleted) in the current and the
 * flushing generation, in store key order. Every replica that applied the
 * same entries walks the same keys, whatever its store has committed. */
struct staged_walk {
    struct store_iter *it;
    const unsigned char *prefix;
    size_t plen;
    struct walk_key {
        unsigned char *k;
        size_t klen;
    } * keys; /* copies of the staged keys, sorted */
    size_t nkeys, next;
    bool step; /* the store's key was handed out: step past it first */
};

/* Store key order (LevelDB's bytewise comparator). */
static int cmp_bytes(const void *a, size_t alen, const void *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen;
}

static int cmp_walk_keys(const void *a, const void *b)
{
    const struct walk_key *x = a, *y = b;
    return cmp_bytes(x->k, x->klen, y->k, y->klen);
}

/* Adds to W the keys under its prefix staged in G that come after AFTER. */
static int walk_add_staged(struct staged_walk *w, const struct gen *g,
                           const unsigned char *after, size_t alen, size_t *cap)
{
    for (size_t i = 0; g && i < g->nslots; i++) {
        const struct overlay_slot *o = &g->slots[i];
        if (!o->key || o->klen < w->plen ||
            memcmp(o->key, w->prefix, w->plen) != 0 ||
            (after && cmp_bytes(o->key, o->klen, after, alen) <= 0))
            continue;
        if (w->nkeys == *cap) {
            size_t n = *cap ? *cap * 2 : 16;
            struct walk_key *k = realloc(w->keys, n * sizeof(*k));
            if (!k)
                return KV_ENOMEM;
            w->keys = k;
            *cap = n;
        }
        unsigned char *k = malloc(o->klen);
        if (!k)
            return KV_ENOMEM;
        memcpy(k, o->key, o->klen);
        w->keys[w->nkeys++] = (struct walk_key){k, o->klen};
    }
    return KV_OK;
}

/* Starts W at the first key under PREFIX (PLEN bytes, kept by the caller)
 * after AFTER (ALEN bytes; NULL: from the first). */
static int staged_walk_start(struct engine *e, struct staged_walk *w,
                             const unsigned char *prefix, size_t plen,
                             const unsigned char *after, size_t alen)
{
    *w = (struct staged_walk){.prefix = prefix, .plen = plen};
    size_t cap = 0;
    int rc = walk_add_staged(w, e->cur, after, alen, &cap);
    if (rc == KV_OK)
        rc = walk_add_staged(w, e->inflight, after, alen, &cap);
    if (rc == KV_OK && !(w->it = store_iter_new(e->store)))
        rc = KV_ENOMEM;
    if (rc != KV_OK)
        return rc;
    if (w->nkeys > 1)
        qsort(w->keys, w->nkeys, sizeof(*w->keys), cmp_walk_keys);
    if (!after) {
        store_iter_seek(w->it, prefix, plen);
        return KV_OK;
    }
    store_iter_seek(w->it, after, alen);
    if (store_iter_valid(w->it)) {
        size_t klen;
        const unsigned char *k = store_iter_key(w->it, &klen);
        w->step = cmp_bytes(k, klen, after, alen) == 0;
    }
    return KV_OK;
}

static void staged_walk_end(struct staged_walk *w)
{
    store_iter_free(w->it);
    for (size_t i = 0; i < w->nkeys; i++)
        free(w->keys[i].k);
    free(w->keys);
}

/* The next key of W (*K, *KLEN: valid until the next call, as *VAL). When it is
 * not staged, *VAL and *VLEN are the store's value, the latest; when it is,
 * *VAL is NULL and the caller reads it as staged (it may be deleted there).
 * KV_ENOTFOUND at the end. */
static int staged_walk_next(struct staged_walk *w, const unsigned char **k,
                            size_t *klen, const void **val, size_t *vlen)
{
    const unsigned char *sk = NULL;
    size_t sklen = 0;
    if (w->step)
        store_iter_next(w->it);
    w->step = false;
    if (store_iter_valid(w->it)) {
        sk = store_iter_key(w->it, &sklen);
        if (sklen < w->plen || memcmp(sk, w->prefix, w->plen) != 0)
            sk = NULL;
    } else {
        int rc = store_iter_status(w->it);
        if (rc != KV_OK)
            return rc;
    }
    const struct walk_key *o = w->next < w->nkeys ? &w->keys[w->next] : NULL;
    if (!sk && !o)
        return KV_ENOTFOUND;
    int c = !sk ? 1 : !o ? -1 : cmp_bytes(sk, sklen, o->k, o->klen);
    if (c < 0) { /* not staged: the store's value is the latest */
        *k = sk;
        *klen = sklen;
        *val = store_iter_value(w->it, vlen);
        w->step = true;
        return KV_OK;
    }
    /* Staged (in one generation or both): past its copies and the store's. */
    *k = o->k;
    *klen = o->klen;
    *val = NULL;
    *vlen = 0;
    while (w->next < w->nkeys && cmp_walk_keys(&w->keys[w->next], o) == 0)
        w->next++;
    if (c == 0)
        store_iter_next(w->it);
    return KV_OK;
}

/* The next "P" record of W, as staged: its txn id (into ID) and header
 * *PR; *OK false when it does not decode (whatever reads it reports it).
 * KV_ENOTFOUND at the end. */
static int part_walk_next(struct engine *e, struct staged_walk *w,
                          unsigned char id[ENGINE_TXN_ID_LEN],
                          struct part_rec *pr, bool *ok)
{
    for (;;) {
        const unsigned char *k;
        size_t klen, vlen;
        const void *sv;
        int rc = staged_walk_next(w, &k, &klen, &sv, &vlen);
        if (rc != KV_OK)
            return rc;
        if (klen != PREFIX_LEN + ENGINE_TXN_ID_LEN)
            return KV_ECORRUPT;
        memcpy(id, k + PREFIX_LEN, ENGINE_TXN_ID_LEN);
        if (sv) {
            *ok = part_decode(sv, vlen, pr) == KV_OK;
            return KV_OK;
        }
        void *v = NULL;
        rc = rec_get(e, k, klen, &v, &vlen);
        if (rc == KV_ENOTFOUND)
            continue; /* deleted by a staged write */
        if (rc != KV_OK)
            return rc;
        *ok = part_decode(v, vlen, pr) == KV_OK;
        free(v);
        return KV_OK;
    }
}

int engine_stage_gc(struct engine *e, uint32_t shard, uint64_t index,
                    uint64_t now_ms, size_t *removed)
{
    if (removed)
        *removed = 0;
    int rc = check_index(e, shard, index);
    if (rc != KV_OK)
        return KV_EINVAL;
    unsigned char prefix[PREFIX_LEN] = {'P'};
    put_u32(prefix + 1, shard);
    struct staged_walk w;
    rc = staged_walk_start(e, &w, prefix, sizeof(prefix), NULL, 0);
    if (rc != KV_OK)
        goto out;
    struct shard_state *st = &e->staged[shard];
    struct shard_state left = {0}; /* the tombstones that stay */
    size_t gone = 0;
    bool whole = true; /* went through every record */
    for (;;) {
        unsigned char id[ENGINE_TXN_ID_LEN];
        struct part_rec pr;
        bool ok = false;
        rc = part_walk_next(e, &w, id, &pr, &ok);
        if (rc == KV_ENOTFOUND) {
            rc = KV_OK;
            break;
        }
        if (rc != KV_OK)
            break;
        if (!ok || pr.outcome < 0)
            continue; /* prepared (or unreadable): not the GC's */
        if (!tomb_expired(pr.deadline, now_ms)) {
            tomb_added(&left, pr.deadline);
            continue;
        }
        if (gone == ENGINE_TOMB_GC_MAX) {
            whole = false; /* the next GC goes on from here */
            break;
        }
        size_t klen;
        unsigned char *k = tagged_key('P', shard, id, ENGINE_TXN_ID_LEN, &klen);
        rc = k ? rec_put(e, k, klen, NULL, 0) : KV_ENOMEM;
        if (rc != KV_OK)
            break;
        gone++;
        if (st->tombs > 0)
            st->tombs--;
    }
    if (rc != KV_OK)
        goto out;
    if (whole) { /* exact again */
        st->tombs = left.tombs;
        st->tomb_oldest = left.tomb_oldest;
    } /* else the oldest deadline known stays a lower bound */
    stage_index(e, shard, index);
    if (removed)
        *removed = gone;
out:
    staged_walk_end(&w);
    return rc;
}

/* --- session expiry ------------------------------------------------------- */

void engine_session_until(struct engine *e, uint64_t until_ms)
{
    e->session_until = until_ms;
}

bool engine_has_sessions(struct engine *e, uint32_t shard)
{
    unsigned char prefix[PREFIX_LEN] = {'S'};
    put_u32(prefix + 1, shard);
    struct store_iter *it = store_iter_new(e->store);
    if (!it)
        return true; /* let the GC find out */
    store_iter_seek(it, prefix, sizeof(prefix));
    bool any = false;
    if (store_iter_valid(it)) {
        size_t klen;
        const unsigned char *k = store_iter_key(it, &klen);
        any = klen >= sizeof(prefix) && memcmp(k, prefix, sizeof(prefix)) == 0;
    }
    store_iter_free(it);
    return any;
}

/* What the session GC does with session K (KLEN bytes) of what it reads
 * from the store (SV, VLEN; NULL when staged): nothing, or delete it when
 * its date passed, or date it when it has none. */
static int session_gc_one(struct engine *e, const unsigned char *k, size_t klen,
                          const void *sv, size_t vlen, uint64_t now_ms,
                          uint64_t ttl_ms, struct engine_session_gc *out,
                          bool *live)
{
    struct session ss;
    const unsigned char *sreply = NULL;
    void *reply = NULL;
    size_t rlen = 0;
    int rc = sv ? session_decode(sv, vlen, &ss, &sreply, &rlen)
                : session_get(e, k, klen, &ss, &reply, &rlen);
    *live = rc == KV_ECORRUPT || (rc == KV_OK && ss.found);
    if (rc == KV_ECORRUPT)
        return KV_OK; /* left for whatever reads it to report */
    if (rc != KV_OK || !ss.found || (ss.until && ss.until >= now_ms)) {
        free(reply);
        return rc;
    }
    unsigned char *copy = malloc(klen);
    rc = copy && overlay_reserve(e->cur, 1) == KV_OK ? KV_OK : KV_ENOMEM;
    if (rc == KV_OK)
        memcpy(copy, k, klen);
    if (rc == KV_OK && ss.until) {
        session_del(e->cur, copy, klen);
        out->removed++;
    } else if (rc == KV_OK) {
        ss.until = now_ms + ttl_ms >= now_ms ? now_ms + ttl_ms : UINT64_MAX;
        rc = session_put(e->cur, copy, klen, &ss, sv ? sreply : reply, rlen);
        out->dated += rc == KV_OK;
    } else {
        free(copy);
    }
    free(reply);
    return rc;
}

int engine_stage_session_gc(struct engine *e, uint32_t shard, uint64_t index,
                            uint64_t now_ms, uint64_t ttl_ms, const void *after,
                            size_t alen, struct engine_session_gc *out)
{
    *out = (struct engine_session_gc){0};
    if (alen > ENGINE_MAX_CLIENT_ID || check_index(e, shard, index) != KV_OK)
        return KV_EINVAL;
    unsigned char prefix[PREFIX_LEN] = {'S'};
    put_u32(prefix + 1, shard);
    unsigned char *from = NULL;
    size_t flen = 0;
    if (alen && !(from = session_key(shard, after, alen, &flen)))
        return KV_ENOMEM;
    struct staged_walk w;
    int rc = staged_walk_start(e, &w, prefix, sizeof(prefix), from, flen);
    /* Sessions deleted by a staged write are passed over uncounted: a
     * replica that committed the delete does not see them at all. */
    size_t seen = 0;
    while (rc == KV_OK && seen < ENGINE_SESSION_GC_SCAN) {
        const unsigned char *k;
        size_t klen, vlen;
        const void *sv;
        bool live = false;
        rc = staged_walk_next(&w, &k, &klen, &sv, &vlen);
        if (rc == KV_ENOTFOUND) {
            out->after_len = 0; /* through: the next one starts over */
            rc = KV_OK;
            break;
        }
        if (rc == KV_OK &&
            (klen <= PREFIX_LEN || klen > PREFIX_LEN + ENGINE_MAX_CLIENT_ID))
            rc = KV_ECORRUPT;
        if (rc != KV_OK)
            break;
        rc = session_gc_one(e, k, klen, sv, vlen, now_ms, ttl_ms, out, &live);
        if (live) {
            seen++;
            out->after_len = klen - PREFIX_LEN;
            memcpy(out->after, k + PREFIX_LEN, out->after_len);
        }
    }
    if (rc == KV_OK)
        stage_index(e, shard, index);
    staged_walk_end(&w);
    free(from);
    return rc;
}

bool engine_has_txn_records(const struct engine *e, uint32_t shard)
{
    return shard < e->nshards && e->staged[shard].records > 0;
}

bool engine_has_staged(const struct engine *e)
{
    return e->cur->nstaged > 0;
}

struct store_batch *engine_commit_begin(struct engine *e)
{
    if (e->inflight || !e->cur->nstaged)
        return NULL;
    write_shard_states(e, e->cur);
    e->inflight = e->cur;
    e->cur = e->cur == &e->gens[0] ? &e->gens[1] : &e->gens[0];
    memcpy(e->flushing, e->staged, e->nshards * sizeof(*e->staged));
    return e->inflight->batch;
}

void engine_commit_end(struct engine *e, int rc)
{
    if (!e->inflight)
        return;
    if (rc == KV_OK) {
        memcpy(e->applied, e->flushing, e->nshards * sizeof(*e->applied));
        if (e->inflight->raw_s)
            cache_clear(e);
        else
            cache_absorb(e, e->inflight);
    } else {
        cache_clear(e);
        /* Later staged writes were evaluated against the failed ones:
         * drop them too, so that nothing depends on a write that failed. */
        memcpy(e->staged, e->applied, e->nshards * sizeof(*e->staged));
        gen_clear(e->cur);
    }
    gen_clear(e->inflight);
    e->inflight = NULL;
}

int engine_commit(struct engine *e)
{
    if (e->inflight)
        return KV_EINTERNAL; /* a two-step commit is under way */
    struct store_batch *b = engine_commit_begin(e);
    if (!b)
        return KV_OK;
    int rc = store_write(e->store, b, true);
    engine_commit_end(e, rc);
    return rc;
}

/* --- scans -------------------------------------------------------------- */

/* Whether user key K (KLEN) is inside the scan's range (not the cursor). */
static int in_range(const struct engine_scan *sc, const unsigned char *k,
                    size_t klen)
{
    if (sc->prefix_len &&
        (klen < sc->prefix_len || memcmp(k, sc->prefix, sc->prefix_len) != 0))
        return 0;
    if (sc->end_len && cmp_bytes(k, klen, sc->end, sc->end_len) >= 0)
        return 0;
    return 1;
}

int engine_scan(struct engine *e, const struct engine_scan *sc,
                engine_emit_fn emit, void *arg, bool *more)
{
    if (sc->shard >= e->nshards)
        return KV_EINVAL;
    if (more)
        *more = false;
    /* Seek to the greatest of start, prefix and the cursor. */
    const void *lo = sc->start;
    size_t lolen = sc->start_len;
    if (sc->prefix_len &&
        cmp_bytes(sc->prefix, sc->prefix_len, lo, lolen) > 0) {
        lo = sc->prefix;
        lolen = sc->prefix_len;
    }
    if (sc->has_after && cmp_bytes(sc->after, sc->after_len, lo, lolen) >= 0) {
        lo = sc->after;
        lolen = sc->after_len;
    }
    size_t seek_len;
    unsigned char *seek = data_key(sc->shard, lo, lolen, &seek_len);
    if (!seek)
        return KV_ENOMEM;
    struct store_iter *it = store_iter_new(e->store);
    if (!it) {
        free(seek);
        return KV_ENOMEM;
    }
    int rc = KV_OK;
    uint64_t n = 0;
    for (store_iter_seek(it, seek, seek_len); store_iter_valid(it);
         store_iter_next(it)) {
        size_t klen, rlen;
        const unsigned char *k = store_iter_key(it, &klen);
        if (klen < PREFIX_LEN || memcmp(k, seek, PREFIX_LEN) != 0)
            break; /* past the shard */
        const unsigned char *uk = k + PREFIX_LEN;
        size_t uklen = klen - PREFIX_LEN;
        if (sc->has_after &&
            cmp_bytes(uk, uklen, sc->after, sc->after_len) <= 0)
            continue;
        if (!in_range(sc, uk, uklen))
            break; /* keys are ordered: nothing later is in range either */
        if (sc->limit && n == sc->limit) {
            if (more)
                *more = true;
            break;
        }
        const unsigned char *rec = store_iter_value(it, &rlen);
        uint64_t ver;
        const unsigned char *v;
        size_t vlen;
        rc = decode_record(rec, rlen, &ver, &v, &vlen);
        if (rc != KV_OK)
            break;
        rc = emit(arg, uk, uklen, v, vlen, ver);
        if (rc != 0)
            break;
        n++;
    }
    if (rc == KV_OK)
        rc = store_iter_status(it);
    store_iter_free(it);
    free(seek);
    return rc;
}

int engine_shard_info(struct engine *e, uint32_t shard, uint64_t *keys,
                      uint64_t *applied)
{
    if (shard >= e->nshards)
        return KV_EINVAL;
    if (applied)
        *applied = e->applied[shard].version;
    if (keys)
        *keys = e->applied[shard].keys;
    return KV_OK;
}
