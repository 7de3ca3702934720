/*
 * store_sim - the simulated store (see store_sim.h).
 *
 * Each store is a sorted array of records plus an undo log of the writes
 * not yet durable; a crash replays the undo log backwards. An iterator is a
 * snapshot: it reads the records in place until the store first changes,
 * and takes a copy of them then.
 */
#include "store_sim.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"
#include "store.h"

struct rec {
    unsigned char *k;
    size_t klen;
    unsigned char *v;
    size_t vlen;
};

struct undo {
    unsigned char *k;
    size_t klen;
    unsigned char *v; /* previous value, NULL if absent */
    size_t vlen;
    bool existed;
};

struct simdb {
    char *dir;
    struct rec *recs;
    size_t n, cap;
    struct undo *undo;
    size_t nundo, capundo;
    bool open;
    int fail_writes;
    struct store_iter *lazy; /* iterators still reading recs in place */
    struct simdb *next;
};

struct store {
    struct simdb *db;
};

struct op {
    bool del;
    unsigned char *k;
    size_t klen;
    unsigned char *v;
    size_t vlen;
};

struct store_batch {
    struct op *ops;
    size_t n, cap;
};

/* An iterator reads the records in place (lazy) until the store is about
 * to change; only then does it take its own copy, so the many short scans
 * between two writes cost no copy of the store. */
struct store_iter {
    struct rec *recs; /* lazy: the store's own; else copies */
    size_t n;
    size_t pos;
    struct simdb *db;        /* lazy: the store it reads */
    struct store_iter *next; /* lazy: the store's other lazy iterators */
};

static struct simdb *all;

static void *dup_bytes(const void *p, size_t n)
{
    unsigned char *d = malloc(n ? n : 1);
    if (!d) {
        fprintf(stderr, "store_sim: out of memory\n");
        abort();
    }
    if (n)
        memcpy(d, p, n);
    return d;
}

static int cmp(const void *a, size_t alen, const void *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen;
}

/* Index of the first record >= key. */
static size_t lower_bound(const struct simdb *db, const void *k, size_t klen)
{
    size_t lo = 0, hi = db->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cmp(db->recs[mid].k, db->recs[mid].klen, k, klen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct simdb *find_db(const char *dir, bool create)
{
    for (struct simdb *d = all; d; d = d->next)
        if (strcmp(d->dir, dir) == 0)
            return d;
    if (!create)
        return NULL;
    struct simdb *d = calloc(1, sizeof(*d));
    if (!d)
        abort();
    d->dir = dup_bytes(dir, strlen(dir) + 1);
    d->next = all;
    all = d;
    return d;
}

/* The store DB is about to change: every lazy iterator takes its copy. */
static void materialize(struct simdb *db)
{
    while (db->lazy) {
        struct store_iter *it = db->lazy;
        db->lazy = it->next;
        struct rec *copy = calloc(it->n ? it->n : 1, sizeof(*copy));
        if (!copy) {
            fprintf(stderr, "store_sim: out of memory\n");
            abort();
        }
        for (size_t i = 0; i < it->n; i++)
            copy[i] = (struct rec){.k = dup_bytes(it->recs[i].k, it->recs[i].klen),
                                   .klen = it->recs[i].klen,
                                   .v = dup_bytes(it->recs[i].v, it->recs[i].vlen),
                                   .vlen = it->recs[i].vlen};
        it->recs = copy;
        it->db = NULL;
        it->next = NULL;
    }
}

/* Sets (or deletes, V NULL) a record; logs the old value for undo unless
 * DURABLE. */
static void set_rec(struct simdb *db, const void *k, size_t klen,
                    const void *v, size_t vlen, bool durable)
{
    materialize(db);
    size_t i = lower_bound(db, k, klen);
    bool exists = i < db->n && cmp(db->recs[i].k, db->recs[i].klen, k, klen) == 0;
    if (!durable) {
        if (db->nundo == db->capundo) {
            db->capundo = db->capundo ? db->capundo * 2 : 64;
            db->undo = realloc(db->undo, db->capundo * sizeof(*db->undo));
            if (!db->undo)
                abort();
        }
        struct undo *u = &db->undo[db->nundo++];
        u->k = dup_bytes(k, klen);
        u->klen = klen;
        u->existed = exists;
        u->v = exists ? dup_bytes(db->recs[i].v, db->recs[i].vlen) : NULL;
        u->vlen = exists ? db->recs[i].vlen : 0;
    }
    if (!v) {
        if (exists) {
            free(db->recs[i].k);
            free(db->recs[i].v);
            memmove(&db->recs[i], &db->recs[i + 1],
                    (db->n - i - 1) * sizeof(*db->recs));
            db->n--;
        }
        return;
    }
    if (exists) {
        free(db->recs[i].v);
        db->recs[i].v = dup_bytes(v, vlen);
        db->recs[i].vlen = vlen;
        return;
    }
    if (db->n == db->cap) {
        db->cap = db->cap ? db->cap * 2 : 64;
        db->recs = realloc(db->recs, db->cap * sizeof(*db->recs));
        if (!db->recs)
            abort();
    }
    memmove(&db->recs[i + 1], &db->recs[i], (db->n - i) * sizeof(*db->recs));
    db->recs[i] = (struct rec){.k = dup_bytes(k, klen),
                               .klen = klen,
                               .v = dup_bytes(v, vlen),
                               .vlen = vlen};
    db->n++;
}

static void clear_undo(struct simdb *db)
{
    for (size_t i = 0; i < db->nundo; i++) {
        free(db->undo[i].k);
        free(db->undo[i].v);
    }
    db->nundo = 0;
}

void store_sim_crash(const char *dir)
{
    struct simdb *db = find_db(dir, false);
    if (!db)
        return;
    for (size_t i = db->nundo; i-- > 0;) {
        struct undo *u = &db->undo[i];
        set_rec(db, u->k, u->klen, u->existed ? u->v : NULL, u->vlen, true);
    }
    clear_undo(db);
}

void store_sim_wipe(const char *dir)
{
    struct simdb *db = find_db(dir, false);
    if (!db)
        return;
    materialize(db);
    clear_undo(db);
    for (size_t i = 0; i < db->n; i++) {
        free(db->recs[i].k);
        free(db->recs[i].v);
    }
    db->n = 0;
}

void store_sim_fail_writes(const char *dir, int n)
{
    find_db(dir, true)->fail_writes = n;
}

void store_sim_reset(void)
{
    while (all) {
        struct simdb *d = all;
        all = d->next;
        materialize(d);
        clear_undo(d);
        free(d->undo);
        for (size_t i = 0; i < d->n; i++) {
            free(d->recs[i].k);
            free(d->recs[i].v);
        }
        free(d->recs);
        free(d->dir);
        free(d);
    }
}

uint64_t store_sim_digest(const char *dir, const void *prefix, size_t plen)
{
    struct simdb *db = find_db(dir, false);
    uint64_t h = 1469598103934665603ull;
    if (!db)
        return h;
    for (size_t i = lower_bound(db, prefix, plen); i < db->n; i++) {
        const struct rec *r = &db->recs[i];
        if (r->klen < plen || memcmp(r->k, prefix, plen) != 0)
            break;
        for (size_t j = 0; j < r->klen; j++)
            h = (h ^ r->k[j]) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull;
        for (size_t j = 0; j < r->vlen; j++)
            h = (h ^ r->v[j]) * 1099511628211ull;
        h = (h ^ 0xfe) * 1099511628211ull;
    }
    return h;
}

size_t store_sim_count(const char *dir, const void *prefix, size_t plen)
{
    struct simdb *db = find_db(dir, false);
    size_t n = 0;
    if (!db)
        return 0;
    for (size_t i = lower_bound(db, prefix, plen); i < db->n; i++, n++) {
        const struct rec *r = &db->recs[i];
        if (r->klen < plen || memcmp(r->k, prefix, plen) != 0)
            break;
    }
    return n;
}

/* --- store.h ------------------------------------------------------------ */

int store_open(const char *dir, struct store **out, char *err, size_t errlen)
{
    struct simdb *db = find_db(dir, true);
    if (db->open) {
        snprintf(err, errlen, "%s is already open", dir);
        return KV_EIO;
    }
    struct store *s = malloc(sizeof(*s));
    if (!s)
        return KV_ENOMEM;
    db->open = true;
    s->db = db;
    *out = s;
    return KV_OK;
}

void store_close(struct store *s)
{
    if (!s)
        return;
    s->db->open = false;
    free(s);
}

/* Simulated records carry no checksums to fail. */
const char *store_damage(const struct store *s)
{
    (void)s;
    return NULL;
}

int store_get(struct store *s, const void *key, size_t klen, void **val,
              size_t *vlen)
{
    struct simdb *db = s->db;
    size_t i = lower_bound(db, key, klen);
    if (i >= db->n || cmp(db->recs[i].k, db->recs[i].klen, key, klen) != 0)
        return KV_ENOTFOUND;
    *vlen = db->recs[i].vlen;
    *val = db->recs[i].vlen ? dup_bytes(db->recs[i].v, db->recs[i].vlen)
                            : NULL;
    return KV_OK;
}

struct store_batch *store_batch_new(void)
{
    return calloc(1, sizeof(struct store_batch));
}

static void batch_add(struct store_batch *b, bool del, const void *k,
                      size_t klen, const void *v, size_t vlen)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 16;
        b->ops = realloc(b->ops, b->cap * sizeof(*b->ops));
        if (!b->ops)
            abort();
    }
    b->ops[b->n++] = (struct op){.del = del,
                                 .k = dup_bytes(k, klen),
                                 .klen = klen,
                                 .v = del ? NULL : dup_bytes(v, vlen),
                                 .vlen = vlen};
}

void store_batch_put(struct store_batch *b, const void *key, size_t klen,
                     const void *val, size_t vlen)
{
    batch_add(b, false, key, klen, val, vlen);
}

void store_batch_del(struct store_batch *b, const void *key, size_t klen)
{
    batch_add(b, true, key, klen, NULL, 0);
}

void store_batch_clear(struct store_batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        free(b->ops[i].k);
        free(b->ops[i].v);
    }
    b->n = 0;
}

void store_batch_free(struct store_batch *b)
{
    if (!b)
        return;
    store_batch_clear(b);
    free(b->ops);
    free(b);
}

int store_write(struct store *s, struct store_batch *b, bool sync)
{
    struct simdb *db = s->db;
    if (db->fail_writes > 0) {
        db->fail_writes--;
        return KV_EIO;
    }
    for (size_t i = 0; i < b->n; i++) {
        struct op *o = &b->ops[i];
        set_rec(db, o->k, o->klen, o->del ? NULL : o->v, o->vlen, false);
    }
    if (sync)
        clear_undo(db); /* everything so far is durable */
    return KV_OK;
}

struct store_iter *store_iter_new(struct store *s)
{
    struct simdb *db = s->db;
    struct store_iter *it = calloc(1, sizeof(*it));
    if (!it)
        return NULL;
    it->recs = db->recs;
    it->n = db->n;
    it->pos = it->n;
    it->db = db;
    it->next = db->lazy;
    db->lazy = it;
    return it;
}

void store_iter_seek(struct store_iter *it, const void *key, size_t klen)
{
    size_t lo = 0, hi = it->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cmp(it->recs[mid].k, it->recs[mid].klen, key, klen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    it->pos = lo;
}

bool store_iter_valid(const struct store_iter *it)
{
    return it->pos < it->n;
}

void store_iter_next(struct store_iter *it)
{
    if (it->pos < it->n)
        it->pos++;
}

const void *store_iter_key(const struct store_iter *it, size_t *klen)
{
    *klen = it->recs[it->pos].klen;
    return it->recs[it->pos].k;
}

const void *store_iter_value(const struct store_iter *it, size_t *vlen)
{
    *vlen = it->recs[it->pos].vlen;
    return it->recs[it->pos].v;
}

int store_iter_status(const struct store_iter *it)
{
    (void)it;
    return KV_OK;
}

void store_iter_free(struct store_iter *it)
{
    if (!it)
        return;
    if (it->db) { /* lazy: unlink it */
        struct store_iter **pp = &it->db->lazy;
        while (*pp && *pp != it)
            pp = &(*pp)->next;
        if (*pp)
            *pp = it->next;
        free(it);
        return;
    }
    for (size_t i = 0; i < it->n; i++) {
        free(it->recs[i].k);
        free(it->recs[i].v);
    }
    free(it->recs);
    free(it);
}

int store_mkdirs(const char *dir)
{
    (void)dir; /* simulated stores need no folders */
    return 0;
}
