/*
 * pending - see pending.h. A chained hash map of keys to their newest
 * prediction, and a queue of (index, key) notes in index order, so the
 * apply of an index forgets exactly the keys no later entry writes.
 */
#include "pending.h"

#include <stdlib.h>
#include <string.h>

#include "kv.h"

struct pnode {
    struct pnode *next; /* in its bucket */
    uint64_t hash;
    uint64_t index; /* the newest entry writing the key */
    enum pending_kind kind;
    unsigned char *val;
    size_t vlen;
    size_t refs; /* notes in the queue naming this node */
    size_t klen;
    unsigned char key[];
};

struct note {
    uint64_t index;
    struct pnode *node;
};

struct pending {
    struct pnode **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
    struct note *q; /* ring buffer */
    size_t qcap, qhead, qlen;
};

static uint64_t hash_key(const void *key, size_t klen)
{
    const unsigned char *p = key;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < klen; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

struct pending *pending_new(void)
{
    struct pending *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->nbuckets = 64;
    p->buckets = calloc(p->nbuckets, sizeof(*p->buckets));
    if (!p->buckets) {
        free(p);
        return NULL;
    }
    return p;
}

static void node_free(struct pnode *n)
{
    free(n->val);
    free(n);
}

void pending_clear(struct pending *p)
{
    for (size_t i = 0; i < p->nbuckets; i++) {
        struct pnode *n = p->buckets[i];
        while (n) {
            struct pnode *next = n->next;
            node_free(n);
            n = next;
        }
        p->buckets[i] = NULL;
    }
    p->count = 0;
    p->qhead = p->qlen = 0;
}

void pending_free(struct pending *p)
{
    if (!p)
        return;
    pending_clear(p);
    free(p->buckets);
    free(p->q);
    free(p);
}

static struct pnode **find(const struct pending *p, const void *key,
                           size_t klen, uint64_t h)
{
    struct pnode **at = &p->buckets[h & (p->nbuckets - 1)];
    while (*at && ((*at)->hash != h || (*at)->klen != klen ||
                   (klen && memcmp((*at)->key, key, klen) != 0)))
        at = &(*at)->next;
    return at;
}

static void grow_buckets(struct pending *p)
{
    size_t n = p->nbuckets * 2;
    struct pnode **b = calloc(n, sizeof(*b));
    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < p->nbuckets; i++) {
        struct pnode *x = p->buckets[i];
        while (x) {
            struct pnode *next = x->next;
            x->next = b[x->hash & (n - 1)];
            b[x->hash & (n - 1)] = x;
            x = next;
        }
    }
    free(p->buckets);
    p->buckets = b;
    p->nbuckets = n;
}

static int queue_push(struct pending *p, uint64_t index, struct pnode *node)
{
    if (p->qlen == p->qcap) {
        size_t cap = p->qcap ? p->qcap * 2 : 64;
        struct note *q = malloc(cap * sizeof(*q));
        if (!q)
            return KV_ENOMEM;
        for (size_t i = 0; i < p->qlen; i++)
            q[i] = p->q[(p->qhead + i) % p->qcap];
        free(p->q);
        p->q = q;
        p->qcap = cap;
        p->qhead = 0;
    }
    p->q[(p->qhead + p->qlen) % p->qcap] =
        (struct note){.index = index, .node = node};
    p->qlen++;
    return KV_OK;
}

int pending_note(struct pending *p, uint64_t index, const void *key,
                 size_t klen, enum pending_kind kind, const void *val,
                 size_t vlen)
{
    uint64_t h = hash_key(key, klen);
    struct pnode **at = find(p, key, klen, h);
    unsigned char *copy = NULL;
    if (kind == PENDING_PUT && vlen) {
        copy = malloc(vlen);
        if (!copy)
            return KV_ENOMEM;
        memcpy(copy, val, vlen);
    }
    struct pnode *n = *at;
    bool fresh = n == NULL;
    if (fresh) {
        n = calloc(1, sizeof(*n) + (klen ? klen : 1));
        if (!n) {
            free(copy);
            return KV_ENOMEM;
        }
        n->hash = h;
        n->klen = klen;
        if (klen) /* an empty key may come with no bytes at all */
            memcpy(n->key, key, klen);
    }
    if (queue_push(p, index, n) != KV_OK) {
        free(copy);
        if (fresh)
            free(n);
        return KV_ENOMEM;
    }
    n->refs++;
    n->index = index;
    n->kind = kind;
    free(n->val);
    n->val = copy;
    n->vlen = kind == PENDING_PUT ? vlen : 0;
    if (fresh) {
        *at = n;
        p->count++;
        if (p->count > p->nbuckets)
            grow_buckets(p);
    }
    return KV_OK;
}

bool pending_lookup(const struct pending *p, const void *key, size_t klen,
                    enum pending_kind *kind, uint64_t *index, const void **val,
                    size_t *vlen)
{
    if (!p->count)
        return false;
    struct pnode *n = *find(p, key, klen, hash_key(key, klen));
    if (!n)
        return false;
    *kind = n->kind;
    *index = n->index;
    *val = n->val;
    *vlen = n->vlen;
    return true;
}

void pending_applied(struct pending *p, uint64_t applied)
{
    while (p->qlen && p->q[p->qhead].index <= applied) {
        struct pnode *n = p->q[p->qhead].node;
        p->qhead = (p->qhead + 1) % p->qcap;
        p->qlen--;
        if (--n->refs == 0 && n->index <= applied) {
            struct pnode **at = find(p, n->key, n->klen, n->hash);
            *at = n->next;
            node_free(n);
            p->count--;
        }
    }
}

size_t pending_count(const struct pending *p)
{
    return p->count;
}
