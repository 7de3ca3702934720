/*
 * inflight - unanswered requests per client connection (see inflight.h).
 *
 * A hash table of connections (chained, FNV-1a of the routing id, doubled
 * when it holds more connections than buckets), each with a small array of
 * (request id, expiry). Answers come back roughly in the order requests
 * arrived, so the search for an answered one starts at the oldest. A
 * connection with nothing left is removed at once: the table only ever
 * holds connections with work in the node.
 */
#include "inflight.h"

#include <stdlib.h>
#include <string.h>

#include "kv.h"

#define MAX_ID_LEN 255
#define FIRST_BUCKETS 64

struct req {
    uint64_t id;
    uint64_t expires;
    bool batched;
};

struct conn {
    struct conn *next;
    uint64_t hash;
    struct req *reqs;
    uint32_t n, cap;
    size_t idlen;
    unsigned char id[];
};

struct inflight {
    uint32_t cap;
    struct conn **buckets;
    size_t nbuckets; /* a power of two */
    size_t nconns;
};

static uint64_t hash_id(const void *id, size_t len)
{
    const unsigned char *p = id;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

struct inflight *inflight_new(uint32_t cap)
{
    struct inflight *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->cap = cap ? cap : 1;
    t->nbuckets = FIRST_BUCKETS;
    t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
    if (!t->buckets) {
        free(t);
        return NULL;
    }
    return t;
}

static void conn_free(struct conn *c)
{
    free(c->reqs);
    free(c);
}

void inflight_free(struct inflight *t)
{
    if (!t)
        return;
    for (size_t b = 0; b < t->nbuckets; b++) {
        struct conn *c = t->buckets[b];
        while (c) {
            struct conn *next = c->next;
            conn_free(c);
            c = next;
        }
    }
    free(t->buckets);
    free(t);
}

/* The slot pointing at connection ID (which may hold NULL: not there). */
static struct conn **find(const struct inflight *t, const void *id,
                          size_t idlen, uint64_t h)
{
    struct conn **pp = &t->buckets[h & (t->nbuckets - 1)];
    while (*pp && !((*pp)->hash == h && (*pp)->idlen == idlen &&
                    memcmp((*pp)->id, id, idlen) == 0))
        pp = &(*pp)->next;
    return pp;
}

/* Doubles the buckets when there are more connections than buckets. A
 * failed allocation keeps the table as it is (only slower). */
static void maybe_grow(struct inflight *t)
{
    if (t->nconns <= t->nbuckets)
        return;
    size_t nb = t->nbuckets * 2;
    struct conn **nbk = calloc(nb, sizeof(*nbk));
    if (!nbk)
        return;
    for (size_t b = 0; b < t->nbuckets; b++) {
        struct conn *c = t->buckets[b];
        while (c) {
            struct conn *next = c->next;
            c->next = nbk[c->hash & (nb - 1)];
            nbk[c->hash & (nb - 1)] = c;
            c = next;
        }
    }
    free(t->buckets);
    t->buckets = nbk;
    t->nbuckets = nb;
}

/* Unlinks and frees the connection at *PP. */
static void remove_at(struct inflight *t, struct conn **pp)
{
    struct conn *c = *pp;
    *pp = c->next;
    conn_free(c);
    t->nconns--;
}

int inflight_add(struct inflight *t, const void *id, size_t idlen,
                 uint64_t req_id, uint64_t expires, bool batched)
{
    if (!id || idlen == 0 || idlen > MAX_ID_LEN)
        return KV_EINVAL;
    uint64_t h = hash_id(id, idlen);
    struct conn **pp = find(t, id, idlen, h);
    struct conn *c = *pp;
    bool fresh = false;
    if (!c) {
        c = calloc(1, sizeof(*c) + idlen);
        if (!c)
            return KV_ENOMEM;
        c->hash = h;
        c->idlen = idlen;
        memcpy(c->id, id, idlen);
        fresh = true;
    }
    if (c->n >= t->cap)
        return KV_EUNAVAILABLE; /* an existing connection: nothing to undo */
    if (c->n == c->cap) {
        uint32_t ncap = c->cap ? c->cap * 2 : 4;
        if (ncap > t->cap)
            ncap = t->cap;
        struct req *r = realloc(c->reqs, ncap * sizeof(*r));
        if (!r) {
            if (fresh)
                conn_free(c);
            return KV_ENOMEM;
        }
        c->reqs = r;
        c->cap = ncap;
    }
    c->reqs[c->n++] =
        (struct req){.id = req_id, .expires = expires, .batched = batched};
    if (fresh) {
        c->next = *pp;
        *pp = c;
        t->nconns++;
        maybe_grow(t);
    }
    return KV_OK;
}

bool inflight_done(struct inflight *t, const void *id, size_t idlen,
                   uint64_t req_id, bool *batched)
{
    if (!id || idlen == 0 || idlen > MAX_ID_LEN)
        return false;
    struct conn **pp = find(t, id, idlen, hash_id(id, idlen));
    struct conn *c = *pp;
    if (!c)
        return false;
    for (uint32_t i = 0; i < c->n; i++) {
        if (c->reqs[i].id != req_id)
            continue;
        if (batched)
            *batched = c->reqs[i].batched;
        /* Keep the order (oldest first): answers mostly match early. */
        memmove(&c->reqs[i], &c->reqs[i + 1],
                (c->n - i - 1) * sizeof(c->reqs[0]));
        c->n--;
        if (c->n == 0)
            remove_at(t, pp);
        return true;
    }
    return false;
}

size_t inflight_expire(struct inflight *t, uint64_t now)
{
    size_t forgot = 0;
    for (size_t b = 0; b < t->nbuckets; b++) {
        struct conn **pp = &t->buckets[b];
        while (*pp) {
            struct conn *c = *pp;
            uint32_t keep = 0;
            for (uint32_t i = 0; i < c->n; i++) {
                if (c->reqs[i].expires < now)
                    forgot++;
                else
                    c->reqs[keep++] = c->reqs[i];
            }
            c->n = keep;
            if (c->n == 0)
                remove_at(t, pp);
            else
                pp = &c->next;
        }
    }
    return forgot;
}

size_t inflight_count(const struct inflight *t, const void *id, size_t idlen)
{
    if (!id || idlen == 0 || idlen > MAX_ID_LEN)
        return 0;
    struct conn **pp = find(t, id, idlen, hash_id(id, idlen));
    return *pp ? (*pp)->n : 0;
}

size_t inflight_connections(const struct inflight *t)
{
    return t->nconns;
}
