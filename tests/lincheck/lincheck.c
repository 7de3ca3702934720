/*
 * lincheck - decides whether a history of kv operations is linearizable.
 *
 * The search is Wing & Gong's, with Lowe's just-in-time linearization and
 * memoization as Porcupine does it: the history is split by key (each key is
 * an independent register, so the checks compose), the call and return
 * events of one key are put in a doubly linked list by time, and a
 * depth-first search linearizes, at each point, one of the calls that come
 * before the first remaining return, lifting it (and its return) out of the
 * list, and backtracks when no candidate works. A cache of configurations
 * (set of linearized operations, model state) already explored prunes
 * repeated work.
 *
 * Refinements, each a pruning that keeps the search exact (an argument is
 * next to each) and makes long histories of a correct store cost about one
 * configuration per operation:
 *   - an op that succeeds without changing the state (a read, a failed
 *     condition) is taken at once, with no alternative tried;
 *   - ops that create versions are taken in version order, as late as
 *     possible (after other state changes such as deletes);
 *   - pending ops (unknown outcome: may take effect any time after their
 *     call, or never) have no return, are tried only when no completed op
 *     can go, and not right after another pending op they would overwrite;
 *     pending ops that no read can tell apart form a class of which only the
 *     first unused is tried; a configuration that used a superset of the
 *     pending ops of an explored one (same completed set and state) counts
 *     as explored, since a pending op can always be left out;
 *   - cached sets store only the window of completed ops between the first
 *     not linearized and the last linearized, so memory per configuration
 *     stays small on long histories.
 * Before searching, a sweep looks for two ops that contradict each other on
 * versions (a key's versions only grow; a version names one record): it
 * proves most real bugs (stale reads, lost writes) in O(n log n) however
 * long the history.
 *
 * When a key fails, a binary search over return times finds the shortest
 * failing prefix of its history (prefixes of a linearizable history are
 * linearizable, so failure is monotone in the prefix length).
 *
 * This module must never hang on a pathological history (every search obeys
 * a budget of states, time and memory) and never trust its input.
 */
#include "lincheck.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

/* ------------------------------------------------------------------------ */
/* Allocation, with a seam for tests                                        */
/* ------------------------------------------------------------------------ */

static long alloc_countdown = -1; /* allocations before one fails; -1: none */

void lin_fail_alloc_after(long n)
{
    alloc_countdown = n < 0 ? -1 : n;
}

/* Whether this allocation is the one to fail. */
static int alloc_fails(void)
{
    if (alloc_countdown < 0)
        return 0;
    return alloc_countdown-- == 0;
}

static void *xmalloc(size_t n)
{
    return alloc_fails() ? NULL : malloc(n);
}

static void *xcalloc(size_t n, size_t size)
{
    return alloc_fails() ? NULL : calloc(n, size);
}

static void *xrealloc(void *p, size_t n)
{
    return alloc_fails() ? NULL : realloc(p, n);
}

/* ------------------------------------------------------------------------ */
/* Histories                                                                */
/* ------------------------------------------------------------------------ */

struct lin_history {
    struct lin_op *ops;
    size_t n, cap;
};

struct lin_history *lin_new(void)
{
    return xcalloc(1, sizeof(struct lin_history));
}

void lin_free(struct lin_history *h)
{
    if (h == NULL)
        return;
    free(h->ops);
    free(h);
}

size_t lin_count(const struct lin_history *h)
{
    return h->n;
}

const struct lin_op *lin_get(const struct lin_history *h, size_t i)
{
    return i < h->n ? &h->ops[i] : NULL;
}

/* A version an operation reports: >= 1 (kv never names a key with version
 * 0) and below UINT64_MAX (so "the next version" always exists). */
static int version_ok(uint64_t v)
{
    return v >= 1 && v < UINT64_MAX;
}

const char *lin_op_problem(const struct lin_op *op)
{
    int o = op->outcome;

    if (op->kind < LIN_READ || op->kind > LIN_DELETE)
        return "unknown kind";
    if (o < LIN_OUT_OK || o > LIN_OUT_UNKNOWN)
        return "unknown outcome";
    if (op->client < 0)
        return "negative client";
    if (op->call == LIN_PENDING)
        return "call time is the reserved value LIN_PENDING";
    if ((o == LIN_OUT_UNKNOWN) != (op->ret == LIN_PENDING))
        return "ret must be LIN_PENDING exactly when the outcome is unknown";
    if (op->ret < op->call)
        return "returned before it was called";
    switch (op->kind) {
    case LIN_READ:
        if (o == LIN_OUT_FAILED)
            return "a read cannot fail a condition";
        if (o == LIN_OUT_OK && !version_ok(op->out_version))
            return "a read returned version 0 or UINT64_MAX";
        break;
    case LIN_WRITE:
        if (o == LIN_OUT_ABSENT || o == LIN_OUT_FAILED)
            return "a plain write is ok or unknown";
        break;
    case LIN_CAS:
        if (!version_ok(op->expect_version))
            return "cas needs an expected version >= 1";
        if (o == LIN_OUT_ABSENT)
            return "a cas is ok, failed or unknown";
        break;
    case LIN_INSERT:
        if (o == LIN_OUT_ABSENT)
            return "an insert is ok, failed or unknown";
        break;
    default: /* LIN_DELETE */
        if (op->expect_version == UINT64_MAX)
            return "expected version UINT64_MAX";
        if (o == LIN_OUT_FAILED && op->expect_version == 0)
            return "an unconditional delete cannot fail a condition";
        break;
    }
    if (o == LIN_OUT_OK && op->kind != LIN_READ && op->kind != LIN_DELETE &&
        !version_ok(op->out_version))
        return "a write returned version 0 or UINT64_MAX";
    return NULL;
}

/* Returns a copy of OP (valid) with the fields its kind ignores zeroed. */
static struct lin_op normalized(const struct lin_op *op)
{
    struct lin_op n = *op;
    int ok = op->outcome == LIN_OUT_OK;

    if (op->kind == LIN_READ || op->kind == LIN_DELETE)
        n.value = 0;
    if (op->kind != LIN_CAS && op->kind != LIN_DELETE)
        n.expect_version = 0;
    if (!(op->kind == LIN_READ && ok))
        n.out_value = 0;
    if (!ok || op->kind == LIN_DELETE)
        n.out_version = 0;
    return n;
}

int lin_add(struct lin_history *h, const struct lin_op *op)
{
    if (lin_op_problem(op) != NULL)
        return LIN_EINVAL;
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct lin_op *ops;
        if (cap > SIZE_MAX / sizeof *ops)
            return LIN_ENOMEM;
        ops = xrealloc(h->ops, cap * sizeof *ops);
        if (ops == NULL)
            return LIN_ENOMEM;
        h->ops = ops;
        h->cap = cap;
    }
    h->ops[h->n++] = normalized(op);
    return LIN_OK;
}

/* ------------------------------------------------------------------------ */
/* The model                                                                */
/* ------------------------------------------------------------------------ */

/* The model's state of one key. When the record was made by a pending
 * write whose version nobody has seen (!known), `version` is the least it
 * can be and excl[] holds up to EXCL_MAX larger versions it cannot be (it
 * failed a condition on them); beyond that the model forgets exclusions,
 * erring towards "linearizable". `next` is the least version the next write
 * can create. Unused fields are 0, so states compare field by field. */
#define EXCL_MAX 4
struct mst {
    uint64_t value, version, next;
    uint64_t excl[EXCL_MAX]; /* sorted, all > version */
    uint8_t present, known, nexcl;
};

static const struct mst initial_state = {0, 0, 1, {0}, 0, 1, 0};

static void clear_excl(struct mst *s)
{
    memset(s->excl, 0, sizeof s->excl);
    s->nexcl = 0;
}

static void drop_first_excl(struct mst *s)
{
    memmove(s->excl, s->excl + 1, (EXCL_MAX - 1) * sizeof s->excl[0]);
    s->excl[EXCL_MAX - 1] = 0;
    s->nexcl--;
}

/* The unseen version of S cannot be E: raise the least version past
 * excluded ones, or remember E. Returns 0 when no version is left (all up
 * to UINT64_MAX excluded), else 1. */
static int exclude(struct mst *s, uint64_t e)
{
    size_t i;
    if (e < s->version)
        return 1;
    if (e == s->version) {
        s->version++;
        while (s->nexcl > 0 && s->excl[0] == s->version) {
            drop_first_excl(s);
            s->version++;
        }
        if (s->version == UINT64_MAX)
            return 0;
        s->next = s->version + 1;
        return 1;
    }
    for (i = 0; i < s->nexcl && s->excl[i] < e; i++)
        ;
    if ((i < s->nexcl && s->excl[i] == e) || s->nexcl == EXCL_MAX)
        return 1; /* known, or no room: forget it (lenient) */
    memmove(s->excl + i + 1, s->excl + i, (s->nexcl - i) * sizeof s->excl[0]);
    s->excl[i] = e;
    s->nexcl++;
    return 1;
}

/* The record of S may be at version E: true if its version is E, or if it
 * is unseen and E is allowed, in which case it is fixed to E. */
static int version_may_be(struct mst *s, uint64_t e)
{
    size_t i;
    if (s->known)
        return s->version == e;
    if (e < s->version || e == UINT64_MAX)
        return 0;
    for (i = 0; i < s->nexcl; i++) {
        if (s->excl[i] == e)
            return 0;
    }
    s->version = e;
    s->known = 1;
    s->next = e + 1;
    clear_excl(s);
    return 1;
}

/* Whether the record's version may differ from E; remembers it does. */
static int version_may_differ(struct mst *s, uint64_t e)
{
    if (s->known)
        return s->version != e;
    return exclude(s, e);
}

/* A write of VALUE that created version V. */
static int write_known(struct mst *s, uint64_t value, uint64_t v)
{
    if (v < s->next)
        return 0;
    s->present = 1;
    s->known = 1;
    s->value = value;
    s->version = v;
    s->next = v + 1;
    clear_excl(s);
    return 1;
}

/* A write of VALUE whose version nobody saw: it is at least next. */
static int write_unknown(struct mst *s, uint64_t value)
{
    if (s->next >= UINT64_MAX - 1)
        return 0;
    s->present = 1;
    s->known = 0;
    s->value = value;
    s->version = s->next;
    s->next++;
    clear_excl(s);
    return 1;
}

/* A delete: absent; later versions still exceed the deleted one's least
 * possible version (next is kept). */
static void remove_record(struct mst *s)
{
    s->present = 0;
    s->known = 1;
    s->value = 0;
    s->version = 0;
    clear_excl(s);
}

/* Applies OP to IN, into OUT. PENDING: its outcome counts as unknown, and
 * the step is the one where it takes effect (the other possibility, no
 * effect, is the search leaving it out). Returns 1 when OP's result is
 * possible in state IN, else 0 (OUT is then garbage). */
static int model_step(const struct mst *in, const struct lin_op *op,
                      int pending, struct mst *out)
{
    int o = pending ? LIN_OUT_UNKNOWN : op->outcome;
    uint64_t e = op->expect_version;

    *out = *in;
    switch (op->kind) {
    case LIN_READ:
        if (o == LIN_OUT_ABSENT)
            return !in->present;
        if (o != LIN_OUT_OK) /* pending reads are never searched */
            return 0;
        return in->present && in->value == op->out_value &&
               version_may_be(out, op->out_version);
    case LIN_WRITE:
        if (o == LIN_OUT_UNKNOWN)
            return write_unknown(out, op->value);
        return write_known(out, op->value, op->out_version);
    case LIN_CAS:
        if (o == LIN_OUT_FAILED)
            return !in->present || version_may_differ(out, e);
        if (!in->present || !version_may_be(out, e))
            return 0;
        if (o == LIN_OUT_UNKNOWN)
            return write_unknown(out, op->value);
        return write_known(out, op->value, op->out_version);
    case LIN_INSERT:
        if (o == LIN_OUT_FAILED)
            return in->present;
        if (in->present)
            return 0;
        if (o == LIN_OUT_UNKNOWN)
            return write_unknown(out, op->value);
        return write_known(out, op->value, op->out_version);
    default: /* LIN_DELETE */
        if (o == LIN_OUT_ABSENT)
            return !in->present;
        if (o == LIN_OUT_FAILED)
            return !in->present || version_may_differ(out, e);
        if (!in->present || (e != 0 && !version_may_be(out, e)))
            return 0;
        remove_record(out);
        return 1;
    }
}

static int state_eq(const struct mst *a, const struct mst *b)
{
    return a->present == b->present && a->known == b->known &&
           a->nexcl == b->nexcl && a->value == b->value &&
           a->version == b->version && a->next == b->next &&
           memcmp(a->excl, b->excl, sizeof a->excl) == 0;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t state_hash(const struct mst *s)
{
    uint64_t h = mix64(s->value + 0x9e3779b97f4a7c15ULL);
    size_t i;
    h = mix64(h ^ s->version);
    h = mix64(h ^ s->next);
    for (i = 0; i < s->nexcl; i++)
        h = mix64(h ^ s->excl[i]);
    return mix64(h ^ (uint64_t)(s->present * 2 + s->known));
}

/* The public view of a model state. */
static struct lin_state public_state(const struct mst *s)
{
    struct lin_state p;
    p.present = s->present;
    p.version_known = s->known;
    p.value = s->value;
    p.version = s->version;
    p.next_version = s->next;
    return p;
}

/* ------------------------------------------------------------------------ */
/* The search over one key                                                  */
/* ------------------------------------------------------------------------ */

/* An operation as one search sees it. */
struct sop {
    const struct lin_op *op;
    size_t id;   /* index in the history */
    int pending; /* outcome counts as unknown (no return event) */
};

/* An event of a list: a call, a return, or a sentinel (not a call). */
struct ent {
    struct ent *prev, *next;
    struct ent *match; /* of a completed op's call: its return */
    uint64_t t;
    uint32_t op;
    int is_call;
};

/* A cached configuration. Its set of linearized completed ops is every op
 * below f, none from maxlin on, and in between the words stored at `off` in
 * the arena (from word f / 64); the pending ops' set follows them. */
struct centry {
    uint64_t hash;
    struct mst st;
    size_t off;
    uint32_t f, maxlin;
    uint32_t next; /* chain in its bucket */
};

/* How an op was chosen, which is also what to try next on backtracking:
 * PH_PURE: a completed op that leaves the state as it was, forced (no
 * alternative is tried: if the configuration after it fails, so does the
 * one before); PH_WRITE: the completed op that creates the next version;
 * PH_DONE: another completed op that changes the state; PH_PENDING: a
 * pending op taking effect, tried when no completed op can go next. */
enum { PH_PURE, PH_WRITE, PH_DONE, PH_PENDING };

struct frame {
    uint32_t op;
    int phase;
    struct mst saved; /* the state before */
    uint32_t f, maxlin;
};

#define NO_ENTRY UINT32_MAX

struct search {
    const struct sop *ops;
    size_t n;
    size_t nc, np;         /* completed and pending ops */
    size_t cwords, pwords; /* words of their bitsets */
    uint32_t *sub;         /* op -> its index among completed or pending */
    uint32_t *vpos;        /* op -> rank by version among the completed ops
                              that create one, or NO_ENTRY */
    uint32_t *vorder;      /* rank -> op */
    size_t nv, vnext;      /* how many; rank of the next to linearize */
    uint32_t *cls, *crank; /* pending op -> its class, its rank in it */
    uint32_t *cnext;       /* class -> rank of its next op to linearize */
    struct ent *ents;
    struct ent *head, *tail;   /* completed ops' calls and returns */
    struct ent *phead, *ptail; /* pending ops' calls */
    struct ent **calls;        /* op -> its call event */
    uint64_t *zob;             /* completed index -> random key */
    uint64_t *cbits, *pbits;   /* the current sets */
    uint32_t f, maxlin;        /* as in struct centry, for the current set */
    uint64_t curzob;
    uint32_t *buckets;
    size_t nbuckets;
    struct centry *ce;
    size_t nce, cap;
    uint64_t *arena;
    size_t alen, acap;
    struct frame *stack;
    size_t depth;
    struct mst final; /* the state after a successful search */
    uint64_t max_states, max_bytes, deadline; /* deadline 0: none */
    uint64_t states;
    int limit;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int past(uint64_t deadline)
{
    return deadline != 0 && now_ms() >= deadline;
}

/* Orders events by time; at equal times calls come first (so operations
 * that touch at one instant overlap), then by operation. */
struct evt {
    uint64_t t;
    uint32_t op;
    int is_ret;
};

static int evt_cmp(const void *pa, const void *pb)
{
    const struct evt *a = pa, *b = pb;
    if (a->t != b->t)
        return a->t < b->t ? -1 : 1;
    if (a->is_ret != b->is_ret)
        return a->is_ret - b->is_ret;
    return a->op < b->op ? -1 : a->op > b->op;
}

/* Orders the ops that create a version by it (then by op). */
struct vrank {
    uint64_t v;
    uint32_t op;
};

static int vrank_cmp(const void *pa, const void *pb)
{
    const struct vrank *a = pa, *b = pb;
    if (a->v != b->v)
        return a->v < b->v ? -1 : 1;
    return a->op < b->op ? -1 : a->op > b->op;
}

static int creates_version(const struct sop *p)
{
    int k = p->op->kind;
    return !p->pending && p->op->outcome == LIN_OUT_OK &&
           (k == LIN_WRITE || k == LIN_CAS || k == LIN_INSERT);
}

/* The memory of a cache of CAP entries, NB buckets, ACAP arena words. */
static uint64_t cache_bytes(size_t cap, size_t nb, size_t acap)
{
    return (uint64_t)nb * sizeof(uint32_t) +
           (uint64_t)cap * sizeof(struct centry) +
           (uint64_t)acap * sizeof(uint64_t);
}

static void search_release(struct search *s)
{
    free(s->sub);
    free(s->vpos);
    free(s->vorder);
    free(s->cls);
    free(s->crank);
    free(s->cnext);
    free(s->ents);
    free(s->calls);
    free(s->zob);
    free(s->cbits);
    free(s->pbits);
    free(s->buckets);
    free(s->ce);
    free(s->arena);
    free(s->stack);
    memset(s, 0, sizeof *s);
}

/* Pending ops of one class are interchangeable: same kind, same expected
 * version, and the same value, or values no completed read returned (so no
 * op can tell them apart). Both being candidates, any valid order that
 * uses one can use the other in its place, so the search only ever takes
 * the first unused op of a class (by call time). */
struct pclass {
    int kind, observed;
    uint64_t expect, value;
    uint32_t op;
};

static int pclass_cmp(const void *pa, const void *pb)
{
    const struct pclass *a = pa, *b = pb;
    if (a->kind != b->kind)
        return a->kind - b->kind;
    if (a->expect != b->expect)
        return a->expect < b->expect ? -1 : 1;
    if (a->observed != b->observed)
        return a->observed - b->observed;
    if (a->observed && a->value != b->value)
        return a->value < b->value ? -1 : 1;
    return a->op < b->op ? -1 : a->op > b->op;
}

static int same_class(const struct pclass *a, const struct pclass *b)
{
    return a->kind == b->kind && a->expect == b->expect &&
           a->observed == b->observed && (!a->observed || a->value == b->value);
}

static int u64_cmp(const void *pa, const void *pb)
{
    uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;
    return a < b ? -1 : a > b;
}

/* Fills s->cls, s->crank, s->cnext. Returns LIN_OK or LIN_ENOMEM. */
static int classify_pending(struct search *s)
{
    const struct sop *ops = s->ops;
    uint64_t *seen = xmalloc((s->n + 1) * sizeof *seen);
    struct pclass *pc = xmalloc((s->np + 1) * sizeof *pc);
    size_t nseen = 0, npc = 0, i, ncls = 0;
    int rc = LIN_ENOMEM;

    s->cls = xmalloc((s->n + 1) * sizeof *s->cls);
    s->crank = xmalloc((s->n + 1) * sizeof *s->crank);
    s->cnext = xcalloc(s->np + 1, sizeof *s->cnext);
    if (seen == NULL || pc == NULL || !s->cls || !s->crank || !s->cnext)
        goto out;
    for (i = 0; i < s->n; i++) {
        const struct lin_op *op = ops[i].op;
        if (!ops[i].pending && op->kind == LIN_READ &&
            op->outcome == LIN_OUT_OK)
            seen[nseen++] = op->out_value;
    }
    qsort(seen, nseen, sizeof *seen, u64_cmp);
    for (i = 0; i < s->n; i++) {
        const struct lin_op *op = ops[i].op;
        struct pclass *c;
        if (!ops[i].pending)
            continue;
        c = &pc[npc++];
        c->kind = op->kind;
        c->expect = op->expect_version;
        c->value = op->kind == LIN_DELETE ? 0 : op->value;
        c->observed =
            op->kind != LIN_DELETE &&
            bsearch(&c->value, seen, nseen, sizeof *seen, u64_cmp) != NULL;
        c->op = (uint32_t)i;
    }
    qsort(pc, npc, sizeof *pc, pclass_cmp);
    for (i = 0; i < npc; i++) {
        int same = i > 0 && same_class(&pc[i - 1], &pc[i]);
        if (i > 0 && !same)
            ncls++;
        s->cls[pc[i].op] = (uint32_t)ncls;
        s->crank[pc[i].op] = same ? s->crank[pc[i - 1].op] + 1 : 0;
    }
    rc = LIN_OK;
out:
    free(pc);
    free(seen);
    return rc;
}

/* Links the events EV[0..N) (sorted) from EVS between HEAD and TAIL. */
static void link_events(struct search *s, const struct evt *ev, size_t n,
                        struct ent *evs, struct ent *head, struct ent *tail)
{
    struct ent *prev = head;
    size_t i;
    head->op = tail->op = NO_ENTRY;
    head->is_call = tail->is_call = 0;
    for (i = 0; i < n; i++) {
        struct ent *e = &evs[i];
        e->op = ev[i].op;
        e->t = ev[i].t;
        e->is_call = !ev[i].is_ret;
        e->prev = prev;
        prev->next = e;
        prev = e;
        if (e->is_call)
            s->calls[e->op] = e;
        else
            s->calls[e->op]->match = e; /* a return follows its call */
    }
    prev->next = tail;
    tail->prev = prev;
}

/* Sets up S for the N operations OPS (sorted by call time). Returns LIN_OK,
 * LIN_ENOMEM, or LIN_UNKNOWN (limit set) when N is beyond what the search
 * can index or the first cache exceeds max_bytes. */
static int search_init(struct search *s, const struct sop *ops, size_t n,
                       uint64_t max_states, uint64_t max_bytes,
                       uint64_t deadline)
{
    struct evt *ev = NULL, *pev = NULL;
    struct vrank *vr = NULL;
    size_t nev = 0, npev = 0, nv = 0, i;
    int rc = LIN_ENOMEM;

    memset(s, 0, sizeof *s);
    s->ops = ops;
    s->n = n;
    s->max_states = max_states;
    s->max_bytes = max_bytes;
    s->deadline = deadline;
    if (n >= (UINT32_MAX - 8) / 2) {
        s->limit = LIN_LIMIT_BYTES;
        return LIN_UNKNOWN;
    }
    for (i = 0; i < n; i++) {
        if (ops[i].pending)
            s->np++;
        else
            s->nc++;
    }
    s->cwords = s->nc / 64 + 1;
    s->pwords = s->np / 64 + 1;
    s->nbuckets = 1024;
    s->cap = 1024;
    s->acap = 1024 * (s->pwords + 4);
    if (cache_bytes(s->cap, s->nbuckets, s->acap) > max_bytes) {
        s->limit = LIN_LIMIT_BYTES;
        return LIN_UNKNOWN;
    }
    s->sub = xmalloc((n + 1) * sizeof *s->sub);
    s->vpos = xmalloc((n + 1) * sizeof *s->vpos);
    s->ents = xcalloc(2 * n + 4, sizeof *s->ents);
    s->calls = xcalloc(n + 1, sizeof *s->calls);
    s->zob = xmalloc((s->nc + 1) * sizeof *s->zob);
    s->cbits = xcalloc(s->cwords, sizeof *s->cbits);
    s->pbits = xcalloc(s->pwords, sizeof *s->pbits);
    s->buckets = xmalloc(s->nbuckets * sizeof *s->buckets);
    s->ce = xmalloc(s->cap * sizeof *s->ce);
    s->arena = xmalloc(s->acap * sizeof *s->arena);
    s->stack = xmalloc((n + 1) * sizeof *s->stack);
    ev = xmalloc((2 * n + 1) * sizeof *ev);
    pev = xmalloc((n + 1) * sizeof *pev);
    vr = xmalloc((n + 1) * sizeof *vr);
    if (!s->sub || !s->vpos || !s->ents || !s->calls || !s->zob || !s->cbits ||
        !s->pbits || !s->buckets || !s->ce || !s->arena || !s->stack || !ev ||
        !pev || !vr)
        goto fail;
    memset(s->buckets, 0xff, s->nbuckets * sizeof *s->buckets);

    for (i = 0; i < n; i++) {
        const struct sop *p = &ops[i];
        s->vpos[i] = NO_ENTRY;
        if (p->pending) {
            s->sub[i] = (uint32_t)npev;
            pev[npev++] = (struct evt){p->op->call, (uint32_t)i, 0};
            continue;
        }
        s->sub[i] = (uint32_t)(nev / 2);
        s->zob[nev / 2] = mix64((uint64_t)i * 0x9e3779b97f4a7c15ULL + 12345u);
        ev[nev++] = (struct evt){p->op->call, (uint32_t)i, 0};
        ev[nev++] = (struct evt){p->op->ret, (uint32_t)i, 1};
        if (creates_version(p))
            vr[nv++] = (struct vrank){p->op->out_version, (uint32_t)i};
    }
    qsort(ev, nev, sizeof *ev, evt_cmp);
    qsort(vr, nv, sizeof *vr, vrank_cmp);
    s->vorder = xmalloc((nv + 1) * sizeof *s->vorder);
    if (s->vorder == NULL)
        goto fail;
    s->nv = nv;
    for (i = 0; i < nv; i++) {
        s->vpos[vr[i].op] = (uint32_t)i;
        s->vorder[i] = vr[i].op;
    }

    s->head = &s->ents[2 * n];
    s->tail = &s->ents[2 * n + 1];
    s->phead = &s->ents[2 * n + 2];
    s->ptail = &s->ents[2 * n + 3];
    link_events(s, ev, nev, s->ents, s->head, s->tail);
    link_events(s, pev, npev, s->ents + nev, s->phead, s->ptail);
    s->ptail->t = UINT64_MAX;
    if (classify_pending(s) != LIN_OK)
        goto fail;
    rc = LIN_OK;
    goto done;
fail:
    search_release(s);
done:
    free(vr);
    free(pev);
    free(ev);
    return rc;
}

static void lift(struct ent *c)
{
    struct ent *r = c->match;
    c->prev->next = c->next;
    c->next->prev = c->prev;
    if (r != NULL) {
        r->prev->next = r->next;
        r->next->prev = r->prev;
    }
}

static void unlift(struct ent *c)
{
    struct ent *r = c->match;
    if (r != NULL) {
        r->prev->next = r;
        r->next->prev = r;
    }
    c->prev->next = c;
    c->next->prev = c;
}

static void bit_set(uint64_t *b, uint32_t i)
{
    b[i / 64] |= (uint64_t)1 << (i % 64);
}

static void bit_clear(uint64_t *b, uint32_t i)
{
    b[i / 64] &= ~((uint64_t)1 << (i % 64));
}

static int bit_get(const uint64_t *b, uint32_t i)
{
    return (int)((b[i / 64] >> (i % 64)) & 1u);
}

/* The words of the current completed set that a cache entry stores. */
static void window(const struct search *s, size_t *w0, size_t *nwin)
{
    *w0 = s->f / 64;
    *nwin = s->maxlin > s->f ? (s->maxlin - 1) / 64 + 1 - *w0 : 0;
}

/* Doubles the buckets and rehashes. Returns 0 or -1 (out of memory). */
static int cache_rehash(struct search *s)
{
    size_t nb = s->nbuckets * 2, i;
    uint32_t *b;
    if (cache_bytes(s->cap, nb, s->acap) > s->max_bytes)
        return 1;
    b = xmalloc(nb * sizeof *b);
    if (b == NULL)
        return -1;
    memset(b, 0xff, nb * sizeof *b);
    for (i = 0; i < s->nce; i++) {
        size_t k = s->ce[i].hash & (nb - 1);
        s->ce[i].next = b[k];
        b[k] = (uint32_t)i;
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
    return 0;
}

/* Does cached entry C cover the current configuration with state ST? Same
 * completed set, and no pending op the current one lacks (a configuration
 * that used more pending ops can do no more than one that used fewer,
 * since an unused pending op may be left out). */
static int covered(const struct search *s, const struct centry *c,
                   const struct mst *st, size_t w0, size_t nwin)
{
    const uint64_t *cw = s->arena + c->off, *cp = cw + nwin;
    size_t w;
    if (c->f != s->f || c->maxlin != s->maxlin || !state_eq(&c->st, st))
        return 0;
    if (memcmp(cw, s->cbits + w0, nwin * sizeof *cw) != 0)
        return 0;
    for (w = 0; w < s->pwords; w++) {
        if ((cp[w] & ~s->pbits[w]) != 0)
            return 0;
    }
    return 1;
}

/* Records the current configuration with state ST: *ISNEW is 1 if it is
 * new, 0 if an explored one covers it. Returns LIN_OK, LIN_UNKNOWN when a
 * budget ran out (s->limit says which) or LIN_ENOMEM. */
static int cache_add(struct search *s, const struct mst *st, int *isnew)
{
    uint64_t h = mix64(s->curzob ^ state_hash(st));
    size_t k = h & (s->nbuckets - 1), w0, nwin, need;
    struct centry *c;
    uint32_t i;
    int r;

    *isnew = 0;
    window(s, &w0, &nwin);
    for (i = s->buckets[k]; i != NO_ENTRY; i = s->ce[i].next) {
        if (s->ce[i].hash == h && covered(s, &s->ce[i], st, w0, nwin))
            return LIN_OK;
    }
    if (s->states >= s->max_states || s->nce >= NO_ENTRY - 1) {
        s->limit = LIN_LIMIT_STATES;
        return LIN_UNKNOWN;
    }
    need = nwin + s->pwords;
    if (s->alen + need > s->acap) {
        size_t acap = s->acap * 2 + need;
        uint64_t *a;
        if (cache_bytes(s->cap, s->nbuckets, acap) > s->max_bytes) {
            s->limit = LIN_LIMIT_BYTES;
            return LIN_UNKNOWN;
        }
        a = xrealloc(s->arena, acap * sizeof *a);
        if (a == NULL)
            return LIN_ENOMEM;
        s->arena = a;
        s->acap = acap;
    }
    if (s->nce == s->cap) {
        size_t cap = s->cap * 2;
        struct centry *ce;
        if (cache_bytes(cap, s->nbuckets, s->acap) > s->max_bytes) {
            s->limit = LIN_LIMIT_BYTES;
            return LIN_UNKNOWN;
        }
        ce = xrealloc(s->ce, cap * sizeof *ce);
        if (ce == NULL)
            return LIN_ENOMEM;
        s->ce = ce;
        s->cap = cap;
    }
    c = &s->ce[s->nce];
    c->hash = h;
    c->st = *st;
    c->off = s->alen;
    c->f = s->f;
    c->maxlin = s->maxlin;
    c->next = s->buckets[k];
    memcpy(s->arena + s->alen, s->cbits + w0, nwin * sizeof *s->arena);
    memcpy(s->arena + s->alen + nwin, s->pbits, s->pwords * sizeof *s->pbits);
    s->alen += need;
    s->buckets[k] = (uint32_t)s->nce;
    s->nce++;
    s->states++;
    *isnew = 1;
    if (s->nce > s->nbuckets) {
        r = cache_rehash(s);
        if (r < 0)
            return LIN_ENOMEM;
        /* r > 0: over the memory budget; longer chains, still correct */
    }
    return LIN_OK;
}

/* Marks op O (from state ST, chosen in PHASE) linearized: pushes a frame
 * and updates the sets. */
static void push(struct search *s, uint32_t o, int phase, const struct mst *st)
{
    struct frame *fr = &s->stack[s->depth++];
    uint32_t c = s->sub[o];

    fr->op = o;
    fr->phase = phase;
    fr->saved = *st;
    fr->f = s->f;
    fr->maxlin = s->maxlin;
    lift(s->calls[o]);
    if (s->ops[o].pending) {
        bit_set(s->pbits, c);
        s->cnext[s->cls[o]]++;
        return;
    }
    bit_set(s->cbits, c);
    s->curzob ^= s->zob[c];
    if (c + 1 > s->maxlin)
        s->maxlin = c + 1;
    while (s->f < s->nc && bit_get(s->cbits, s->f))
        s->f++;
    if (s->vpos[o] != NO_ENTRY)
        s->vnext++;
}

/* Undoes the last push. Returns its frame. */
static const struct frame *pop(struct search *s)
{
    const struct frame *fr = &s->stack[--s->depth];
    uint32_t o = fr->op, c = s->sub[o];

    unlift(s->calls[o]);
    if (s->ops[o].pending) {
        bit_clear(s->pbits, c);
        s->cnext[s->cls[o]]--;
        return fr;
    }
    bit_clear(s->cbits, c);
    s->curzob ^= s->zob[c];
    s->f = fr->f;
    s->maxlin = fr->maxlin;
    if (s->vpos[o] != NO_ENTRY)
        s->vnext--;
    return fr;
}

/* Is linearizing the pending op O now pointless? When O overwrites the
 * record whatever it was (a write, an unconditional delete) and the last
 * op linearized is pending too, that one's effect is lost: the
 * configuration is no better than linearizing O without it, which the
 * search tries from the configuration before (O is a candidate there too).
 * Without this, a dead end would try every chain of pending writes. */
static int redundant(const struct search *s, uint32_t o)
{
    const struct lin_op *op = s->ops[o].op;
    int blind = op->kind == LIN_WRITE ||
                (op->kind == LIN_DELETE && op->expect_version == 0);
    return blind && s->depth > 0 && s->ops[s->stack[s->depth - 1].op].pending;
}

/* The time of the first return still in the list (UINT64_MAX if none). */
static uint64_t first_return(const struct search *s)
{
    const struct ent *e = s->head->next;
    while (e->is_call)
        e = e->next;
    return e == s->tail ? UINT64_MAX : e->t;
}

/* Can op O go next, from ST, in PHASE? Sets *NS to the state after it. */
static int can_go(const struct search *s, uint32_t o, int phase,
                  const struct mst *st, struct mst *ns)
{
    const struct sop *p = &s->ops[o];
    if (phase == PH_PENDING) {
        return s->crank[o] == s->cnext[s->cls[o]] && !redundant(s, o) &&
               model_step(st, p->op, 1, ns);
    }
    /* Completed ops that create versions go in version order: only the
     * next one can go, and PH_WRITE tries it before the PH_DONE scan. */
    if (s->vpos[o] != NO_ENTRY && (phase != PH_WRITE || s->vpos[o] != s->vnext))
        return 0;
    if (!model_step(st, p->op, 0, ns))
        return 0;
    return phase != PH_PURE || state_eq(st, ns);
}

/* The op creating the next version, if it is a candidate (called no later
 * than LIM, the first remaining return), else NO_ENTRY. */
static uint32_t next_write(const struct search *s, uint64_t lim)
{
    uint32_t w;
    if (s->vnext >= s->nv)
        return NO_ENTRY;
    w = s->vorder[s->vnext];
    return s->ops[w].op->call <= lim ? w : NO_ENTRY;
}

/* Runs the search. Returns LIN_OK (s->stack[0..depth) is a linearization of
 * the operations that take effect, s->final the state after it),
 * LIN_VIOLATION, LIN_UNKNOWN (s->limit) or LIN_ENOMEM.
 *
 * At each configuration the candidates are the calls before the first
 * remaining return (and pending calls no later than it), tried in this
 * order, each scan resumed where it left off on backtracking: PH_PURE
 * looks for a completed op that succeeds without changing the state and
 * takes it as forced (moving it first keeps any valid order valid);
 * PH_WRITE tries the op creating the next version; PH_DONE the other
 * completed ops; PH_PENDING pending ops taking effect here. */
static int search_run(struct search *s)
{
    struct mst st = initial_state, ns;
    size_t remaining = s->nc, pending_left = s->np;
    struct ent *e = s->head->next;
    int phase = PH_PURE, tried, rc, isnew;
    uint64_t iter = 0, lim = 0;

    if (remaining > 0 && past(s->deadline)) {
        s->limit = LIN_LIMIT_TIME;
        return LIN_UNKNOWN;
    }
    while (remaining > 0) {
        uint32_t o;
        const struct frame *fr;

        if ((++iter & 4095) == 0 && past(s->deadline)) {
            s->limit = LIN_LIMIT_TIME;
            return LIN_UNKNOWN;
        }
        if (phase == PH_WRITE) {
            /* One candidate at most; then pending ops. */
            o = next_write(s, lim);
            phase = PH_PENDING;
            e = s->phead->next;
            if (o == NO_ENTRY || !can_go(s, o, PH_WRITE, &st, &ns))
                continue;
            tried = PH_WRITE;
        } else {
            if (phase == PH_PENDING) {
                if (e == s->ptail || e->t > lim)
                    goto backtrack;
            } else if (!e->is_call) {
                /* The first return: no more candidates for this scan. */
                lim = e->t;
                if (phase == PH_PURE) {
                    phase = PH_DONE;
                    e = s->head->next;
                    continue;
                }
                phase = PH_WRITE;
                continue;
            }
            o = e->op;
            if (!can_go(s, o, phase, &st, &ns)) {
                e = e->next;
                continue;
            }
            tried = phase;
        }
        push(s, o, tried, &st);
        rc = cache_add(s, &ns, &isnew);
        if (rc != LIN_OK)
            return rc;
        if (!isnew) {
            pop(s);
            /* A forced op's configuration failed: so does this one. */
            if (tried == PH_PURE)
                goto backtrack;
            if (tried != PH_WRITE)
                e = e->next;
            continue;
        }
        st = ns;
        if (s->ops[o].pending)
            pending_left--;
        else
            remaining--;
        e = s->head->next;
        phase = PH_PURE;
        continue;
    backtrack:
        do {
            if (s->depth == 0)
                return LIN_VIOLATION;
            fr = pop(s);
            st = fr->saved;
            if (s->ops[fr->op].pending)
                pending_left++;
            else
                remaining++;
        } while (fr->phase == PH_PURE);
        if (fr->phase == PH_WRITE) {
            phase = PH_PENDING;
            e = s->phead->next;
            lim = first_return(s);
        } else {
            phase = fr->phase;
            e = s->calls[fr->op]->next;
            if (phase == PH_PENDING)
                lim = first_return(s);
        }
    }
    s->final = st;
    return LIN_OK;
}

/* ------------------------------------------------------------------------ */
/* Quick proofs                                                             */
/* ------------------------------------------------------------------------ */

/* A pair of operations (indices into the search's ops) that refutes it. */
struct qproof {
    int kind; /* enum lin_proof */
    size_t a, b;
};

/* The version op P shows exists at its linearization point or right after
 * it (created or seen), or 0. Later records all have greater versions. */
static uint64_t shown_version(const struct sop *p)
{
    const struct lin_op *op = p->op;
    if (p->pending || op->outcome != LIN_OUT_OK)
        return 0;
    if (op->kind == LIN_DELETE)
        return op->expect_version;
    return op->out_version;
}

/* The version the record must have right at P's point (seen), or 0. */
static uint64_t seen_version(const struct sop *p)
{
    const struct lin_op *op = p->op;
    if (p->pending || op->outcome != LIN_OUT_OK)
        return 0;
    if (op->kind == LIN_READ)
        return op->out_version;
    if (op->kind == LIN_CAS || op->kind == LIN_DELETE)
        return op->expect_version;
    return 0;
}

/* The version P creates, or 0. */
static uint64_t made_version(const struct sop *p)
{
    const struct lin_op *op = p->op;
    if (p->pending || op->outcome != LIN_OUT_OK || op->kind == LIN_READ ||
        op->kind == LIN_DELETE)
        return 0;
    return op->out_version;
}

struct tv {
    uint64_t t, v, w;
    uint32_t op;
    int made; /* for version groups: creates it (sorts first) */
};

static int tv_cmp(const void *pa, const void *pb)
{
    const struct tv *a = pa, *b = pb;
    if (a->t != b->t)
        return a->t < b->t ? -1 : 1;
    if (a->made != b->made)
        return b->made - a->made;
    return a->op < b->op ? -1 : a->op > b->op;
}

/* Looks for a pair of the N ops OPS contradicting each other on versions
 * (enum lin_proof). Returns 1 and fills *PF, 0 when none, or LIN_ENOMEM. */
static int quick_proof(const struct sop *ops, size_t n, struct qproof *pf)
{
    struct tv *x = xmalloc((n + 1) * sizeof *x);
    struct tv *y = xmalloc((n + 1) * sizeof *y);
    size_t nx = 0, ny = 0, i, j;
    uint64_t shown = 0, floor = 0;
    uint32_t shown_op = 0, floor_op = 0;
    int rc = LIN_ENOMEM;

    if (x == NULL || y == NULL)
        goto out;
    rc = 0;
    /* Versions never go back: x = what each op shows (v) and the least
     * version a record can have after it (w: v, or v + 1 past a delete),
     * by return time; y = ops that see or create a version, by call time. */
    for (i = 0; i < n; i++) {
        uint64_t v = shown_version(&ops[i]);
        if (v != 0)
            x[nx++] = (struct tv){ops[i].op->ret, v,
                                  v + (ops[i].op->kind == LIN_DELETE),
                                  (uint32_t)i, 0};
        if (seen_version(&ops[i]) != 0 || made_version(&ops[i]) != 0)
            y[ny++] = (struct tv){ops[i].op->call, 0, 0, (uint32_t)i, 0};
    }
    qsort(x, nx, sizeof *x, tv_cmp);
    qsort(y, ny, sizeof *y, tv_cmp);
    for (i = 0, j = 0; i < ny; i++) {
        const struct sop *b = &ops[y[i].op];
        uint64_t seen = seen_version(b), made = made_version(b);
        for (; j < nx && x[j].t < y[i].t; j++) {
            if (x[j].v > shown) {
                shown = x[j].v;
                shown_op = x[j].op;
            }
            if (x[j].w > floor) {
                floor = x[j].w;
                floor_op = x[j].op;
            }
        }
        if (seen != 0 && floor > seen) {
            *pf = (struct qproof){LIN_PROOF_WENT_BACK, floor_op, y[i].op};
            rc = 1;
            goto out;
        }
        if (made != 0 && shown >= made) {
            *pf = (struct qproof){LIN_PROOF_NOT_NEW, shown_op, y[i].op};
            rc = 1;
            goto out;
        }
    }

    /* A version names one record: x = (version, creator first) for every
     * op that creates or reads one with its value. */
    nx = 0;
    for (i = 0; i < n; i++) {
        const struct lin_op *op = ops[i].op;
        uint64_t m = made_version(&ops[i]);
        if (m != 0)
            x[nx++] = (struct tv){m, op->value, 0, (uint32_t)i, 1};
        else if (op->kind == LIN_READ && seen_version(&ops[i]) != 0)
            x[nx++] =
                (struct tv){op->out_version, op->out_value, 0, (uint32_t)i, 0};
    }
    qsort(x, nx, sizeof *x, tv_cmp);
    for (i = 1; i < nx; i++) {
        if (x[i].t != x[i - 1].t)
            continue;
        if (x[i].made) {
            *pf = (struct qproof){LIN_PROOF_TWICE, x[i - 1].op, x[i].op};
            rc = 1;
            goto out;
        }
        if (x[i].v != x[i - 1].v) {
            *pf = (struct qproof){LIN_PROOF_TWO_VALUES, x[i - 1].op, x[i].op};
            rc = 1;
            goto out;
        }
    }
out:
    free(y);
    free(x);
    return rc;
}

/* Copies the linearization S found into *ORDER (malloc'd, *N steps).
 * Returns LIN_OK or LIN_ENOMEM. */
static int search_order(const struct search *s, struct lin_step **order,
                        size_t *n)
{
    size_t i;
    struct lin_step *o = xmalloc((s->depth + 1) * sizeof *o);
    if (o == NULL)
        return LIN_ENOMEM;
    for (i = 0; i < s->depth; i++) {
        const struct sop *p = &s->ops[s->stack[i].op];
        o[i].id = p->id;
        o[i].unknown = p->pending;
        o[i].after =
            public_state(i + 1 < s->depth ? &s->stack[i + 1].saved : &s->final);
    }
    *order = o;
    *n = s->depth;
    return LIN_OK;
}

/* Checks the N operations OPS of one key: a quick proof first (unless
 * FLAGS has LIN_SEARCH_ONLY), then the search. Adds the states explored to
 * *STATES, sets *LIMIT on LIN_UNKNOWN, *PF on a violation found by a quick
 * proof (else PF->kind is LIN_PROOF_NONE), and on LIN_OK when ORDER is not NULL
 * returns the linearization in *ORDER / *NORDER and the state *FINAL. */
static int check_ops(const struct sop *ops, size_t n,
                     const struct lin_budget *b, int flags, uint64_t deadline,
                     uint64_t *states, int *limit, struct qproof *pf,
                     struct lin_step **order, size_t *norder, struct mst *final)
{
    struct search s;
    int rc;

    pf->kind = LIN_PROOF_NONE;
    if (!(flags & LIN_SEARCH_ONLY)) {
        rc = quick_proof(ops, n, pf);
        if (rc != 0)
            return rc == 1 ? LIN_VIOLATION : rc;
    }
    rc = search_init(&s, ops, n, b->max_states, b->max_bytes, deadline);
    if (rc != LIN_OK) {
        *limit = s.limit;
        return rc;
    }
    rc = search_run(&s);
    *states += s.states;
    if (rc == LIN_UNKNOWN)
        *limit = s.limit;
    if (rc == LIN_OK && order != NULL) {
        rc = search_order(&s, order, norder);
        *final = s.final;
    }
    search_release(&s);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Checking a history                                                       */
/* ------------------------------------------------------------------------ */

struct kidx {
    uint64_t key, call;
    size_t id;
};

static int kidx_cmp(const void *pa, const void *pb)
{
    const struct kidx *a = pa, *b = pb;
    if (a->key != b->key)
        return a->key < b->key ? -1 : 1;
    if (a->call != b->call)
        return a->call < b->call ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* The operations of KOPS (N, of one key, by call time) called by time T,
 * those not returned by T counted as unknown, into OUT. Returns how many. */
static size_t prefix_ops(const struct sop *kops, size_t n, uint64_t t,
                         struct sop *out)
{
    size_t i, m = 0;
    for (i = 0; i < n && kops[i].op->call <= t; i++) {
        struct sop p = kops[i];
        if (p.op->ret > t)
            p.pending = 1;
        if (p.pending && p.op->kind == LIN_READ)
            continue;
        out[m++] = p;
    }
    return m;
}

/* For a key whose N operations KOPS are not linearizable, finds the
 * shortest failing prefix and fills the violation fields of R. Returns
 * LIN_OK or LIN_ENOMEM. */
static int shrink(const struct sop *kops, size_t n, const struct lin_budget *b,
                  int flags, uint64_t deadline, struct qproof proof,
                  struct lin_report *r)
{
    uint64_t *t = xmalloc((n + 1) * sizeof *t);
    struct sop *buf = xmalloc((n + 1) * sizeof *buf);
    struct lin_step *order = NULL;
    size_t m = 0, i, norder = 0, k;
    ptrdiff_t lo = -1, hi;
    int rc = LIN_ENOMEM, lo_known = 1;
    struct mst before = initial_state;

    if (t == NULL || buf == NULL)
        goto out;
    for (i = 0; i < n; i++) {
        if (!kops[i].pending)
            t[m++] = kops[i].op->ret;
    }
    qsort(t, m, sizeof *t, u64_cmp);
    for (i = 0, k = 0; i < m; i++) {
        if (k == 0 || t[k - 1] != t[i])
            t[k++] = t[i];
    }
    m = k;
    /* The prefix at the last return fails because the whole history does.
     * (A key with no completed operation is linearizable: m >= 1.) */
    if (m == 0) {
        rc = LIN_OK;
        goto out;
    }
    hi = (ptrdiff_t)m - 1;
    while (hi - lo > 1) {
        ptrdiff_t mid = lo + (hi - lo) / 2;
        struct lin_step *o = NULL;
        size_t no = 0;
        struct mst fin = initial_state;
        int limit = 0;
        size_t pn = prefix_ops(kops, n, t[mid], buf);
        struct qproof pf;

        rc = check_ops(buf, pn, b, flags, deadline, &r->states, &limit, &pf, &o,
                       &no, &fin);
        if (rc == LIN_VIOLATION) {
            hi = mid;
            proof = pf;
            if (pf.kind != LIN_PROOF_NONE) { /* indices into buf */
                proof.a = buf[pf.a].id;
                proof.b = buf[pf.b].id;
            }
        } else if (rc == LIN_OK || rc == LIN_UNKNOWN) {
            lo = mid;
            free(order);
            order = o;
            norder = no;
            before = fin;
            lo_known = rc == LIN_OK;
        } else {
            goto out;
        }
    }

    /* The failing prefix, with roles. */
    r->fail_time = t[hi];
    r->prefix = xcalloc(n + 1, sizeof *r->prefix);
    if (r->prefix == NULL) {
        rc = LIN_ENOMEM;
        goto out;
    }
    for (i = 0; i < n && kops[i].op->call <= t[hi]; i++) {
        struct lin_report_op *p = &r->prefix[r->nprefix++];
        p->op = *kops[i].op;
        p->id = kops[i].id;
        if (kops[i].op->ret > t[hi])
            p->role = LIN_ROLE_RUNNING;
        else if (kops[i].op->ret == t[hi])
            p->role = LIN_ROLE_FAILING;
        else
            p->role = LIN_ROLE_DONE;
    }
    r->before_known = lo_known;
    r->before_time = lo >= 0 ? t[lo] : 0;
    r->before_done = 0;
    for (i = 0; lo >= 0 && i < n; i++) {
        if (!kops[i].pending && kops[i].op->ret <= t[lo])
            r->before_done++;
    }
    r->order = lo_known ? order : NULL;
    r->norder = lo_known ? norder : 0;
    r->before = public_state(lo_known ? &before : &initial_state);
    r->proof = proof.kind;
    r->proof_a = proof.a;
    r->proof_b = proof.b;
    if (lo_known)
        order = NULL;
    rc = LIN_OK;
out:
    free(order);
    free(buf);
    free(t);
    return rc;
}

void lin_report_release(struct lin_report *r)
{
    if (r == NULL)
        return;
    free(r->prefix);
    free(r->order);
    memset(r, 0, sizeof *r);
}

static uint64_t pick(uint64_t v, uint64_t dflt)
{
    return v != 0 ? v : dflt;
}

int lin_check(const struct lin_history *h, const struct lin_budget *budget,
              struct lin_report *r)
{
    return lin_check_with(h, budget, 0, r);
}

int lin_check_with(const struct lin_history *h, const struct lin_budget *budget,
                   int flags, struct lin_report *r)
{
    struct lin_budget b = {0, 0, 0};
    struct lin_report rep;
    struct kidx *ki = NULL;
    struct sop *kops = NULL;
    size_t nk = 0, i, a;
    uint64_t start = now_ms(), deadline;
    int rc = LIN_ENOMEM;

    memset(&rep, 0, sizeof rep);
    if (budget != NULL)
        b = *budget;
    b.max_states = pick(b.max_states, LIN_DEFAULT_MAX_STATES);
    b.max_ms = pick(b.max_ms, LIN_DEFAULT_MAX_MS);
    b.max_bytes = pick(b.max_bytes, LIN_DEFAULT_MAX_BYTES);
    deadline = b.max_ms >= UINT64_MAX - start ? UINT64_MAX : start + b.max_ms;

    ki = xmalloc((h->n + 1) * sizeof *ki);
    kops = xmalloc((h->n + 1) * sizeof *kops);
    if (ki == NULL || kops == NULL)
        goto out;
    for (i = 0; i < h->n; i++) {
        const struct lin_op *op = &h->ops[i];
        if (op->kind == LIN_READ && op->outcome == LIN_OUT_UNKNOWN)
            continue; /* a pending read tells nothing */
        ki[nk].key = op->key;
        ki[nk].call = op->call;
        ki[nk].id = i;
        nk++;
    }
    qsort(ki, nk, sizeof *ki, kidx_cmp);
    rep.ops = nk;

    for (a = 0; a < nk;) {
        size_t e = a, n;
        int limit = 0, v;
        struct qproof pf;
        while (e < nk && ki[e].key == ki[a].key)
            e++;
        n = e - a;
        for (i = 0; i < n; i++) {
            kops[i].op = &h->ops[ki[a + i].id];
            kops[i].id = ki[a + i].id;
            kops[i].pending = kops[i].op->outcome == LIN_OUT_UNKNOWN;
        }
        rep.keys++;
        v = check_ops(kops, n, &b, flags, deadline, &rep.states, &limit, &pf,
                      NULL, NULL, NULL);
        if (v == LIN_VIOLATION) {
            if (rep.keys_violating++ == 0) {
                rep.key = ki[a].key;
                if (pf.kind != LIN_PROOF_NONE) { /* history indices */
                    pf.a = kops[pf.a].id;
                    pf.b = kops[pf.b].id;
                }
                rc = shrink(kops, n, &b, flags, deadline, pf, &rep);
                if (rc != LIN_OK)
                    goto out;
            }
        } else if (v == LIN_UNKNOWN) {
            if (rep.keys_unknown++ == 0) {
                rep.unknown_key = ki[a].key;
                rep.unknown_reason = limit;
            }
        } else if (v != LIN_OK) {
            rc = v;
            goto out;
        }
        a = e;
    }
    if (rep.keys_violating > 0)
        rc = LIN_VIOLATION;
    else if (rep.keys_unknown > 0)
        rc = LIN_UNKNOWN;
    else
        rc = LIN_OK;
out:
    rep.result = rc;
    rep.elapsed_ms = now_ms() - start;
    if (r != NULL)
        *r = rep;
    else
        lin_report_release(&rep);
    free(kops);
    free(ki);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Text                                                                     */
/* ------------------------------------------------------------------------ */

static const char *const kind_names[] = {NULL,  "read",   "write",
                                         "cas", "insert", "delete"};
static const char *const outcome_names[] = {NULL, "ok", "absent", "failed",
                                            "unknown"};

/* Formats OP (valid) as a history line without newline into BUF. */
static void format_op(const struct lin_op *op, char *buf, size_t len)
{
    size_t n;
    char ret[24];
    int ok = op->outcome == LIN_OUT_OK;

    if (op->ret == LIN_PENDING)
        snprintf(ret, sizeof ret, "pending");
    else
        snprintf(ret, sizeof ret, "%llu", (unsigned long long)op->ret);
    n = (size_t)snprintf(buf, len, "%s key=%llu client=%d call=%llu ret=%s",
                         kind_names[op->kind], (unsigned long long)op->key,
                         op->client, (unsigned long long)op->call, ret);
    if (n < len && (op->kind == LIN_CAS ||
                    (op->kind == LIN_DELETE && op->expect_version != 0)))
        n += (size_t)snprintf(buf + n, len - n, " expect=%llu",
                              (unsigned long long)op->expect_version);
    if (n < len && op->kind != LIN_READ && op->kind != LIN_DELETE)
        n += (size_t)snprintf(buf + n, len - n, " value=%llu",
                              (unsigned long long)op->value);
    if (n < len)
        n += (size_t)snprintf(buf + n, len - n, " result=%s",
                              outcome_names[op->outcome]);
    if (n < len && ok && op->kind == LIN_READ)
        n += (size_t)snprintf(buf + n, len - n, " value=%llu",
                              (unsigned long long)op->out_value);
    if (n < len && ok && op->kind != LIN_DELETE)
        snprintf(buf + n, len - n, " version=%llu",
                 (unsigned long long)op->out_version);
}

#define LINE_MAX_LEN 512

int lin_write_op(FILE *f, const struct lin_op *op)
{
    char line[LINE_MAX_LEN];
    if (lin_op_problem(op) != NULL)
        return LIN_EINVAL;
    format_op(op, line, sizeof line);
    return fprintf(f, "%s\n", line) < 0 ? LIN_EIO : LIN_OK;
}

int lin_write(FILE *f, const struct lin_history *h)
{
    size_t i;
    for (i = 0; i < h->n; i++) {
        int rc = lin_write_op(f, &h->ops[i]);
        if (rc != LIN_OK)
            return rc;
    }
    return fflush(f) == 0 ? LIN_OK : LIN_EIO;
}

/* Parses a decimal uint64 of exactly the string S. Returns 0 or -1. */
static int parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (*s == '\0')
        return -1;
    for (; *s != '\0'; s++) {
        unsigned d;
        if (*s < '0' || *s > '9')
            return -1;
        d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Fields of a line, each at most once. */
enum {
    F_KEY,
    F_CLIENT,
    F_CALL,
    F_RET,
    F_VALUE,
    F_EXPECT,
    F_RESULT,
    F_VERSION,
    F_COUNT
};
static const char *const field_names[F_COUNT] = {
    "key", "client", "call", "ret", "value", "expect", "result", "version"};

static int name_index(const char *const *names, size_t n, const char *s)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (names[i] != NULL && strcmp(names[i], s) == 0)
            return (int)i;
    }
    return -1;
}

/* Parses one line (comments stripped, NUL-terminated, at least one token)
 * into OP. Returns NULL or a static sentence saying what is wrong. */
static const char *parse_line(char *line, struct lin_op *op)
{
    static const char sep[] = " \t\r\n";
    char *save = NULL, *tok;
    uint64_t num[F_COUNT];
    int have[F_COUNT] = {0};
    int kind, outcome = 0;

    memset(op, 0, sizeof *op);
    tok = strtok_r(line, sep, &save);
    kind = name_index(kind_names, 6, tok);
    if (kind < 0)
        return "unknown operation (read, write, cas, insert, delete)";
    while ((tok = strtok_r(NULL, sep, &save)) != NULL) {
        char *eq = strchr(tok, '=');
        int f;
        if (eq == NULL)
            return "expected field=value";
        *eq = '\0';
        f = name_index(field_names, F_COUNT, tok);
        if (f < 0)
            return "unknown field";
        if (have[f])
            return "field given twice";
        have[f] = 1;
        if (f == F_RESULT) {
            outcome = name_index(outcome_names, 5, eq + 1);
            if (outcome < 0)
                return "result must be ok, absent, failed or unknown";
        } else if (f == F_RET && strcmp(eq + 1, "pending") == 0) {
            num[f] = LIN_PENDING;
        } else if (parse_u64(eq + 1, &num[f]) != 0) {
            return "a value is not a decimal number below 2^64";
        }
    }
    if (!have[F_KEY] || !have[F_CALL] || !have[F_RET] || !have[F_RESULT])
        return "key=, call=, ret= and result= are required";
    if (have[F_CLIENT] && num[F_CLIENT] > INT_MAX)
        return "client too large";
    op->kind = kind;
    op->outcome = outcome;
    op->key = num[F_KEY];
    op->client = have[F_CLIENT] ? (int)num[F_CLIENT] : 0;
    op->call = num[F_CALL];
    op->ret = num[F_RET];
    if (have[F_EXPECT] && kind != LIN_CAS && kind != LIN_DELETE)
        return "expect= only for cas and delete";
    if (kind == LIN_CAS && !have[F_EXPECT])
        return "cas needs expect=";
    op->expect_version = have[F_EXPECT] ? num[F_EXPECT] : 0;
    if (kind == LIN_READ) {
        if (have[F_VALUE] != (outcome == LIN_OUT_OK) ||
            have[F_VERSION] != (outcome == LIN_OUT_OK))
            return "a read has value= and version= exactly when ok";
        op->out_value = have[F_VALUE] ? num[F_VALUE] : 0;
    } else if (kind == LIN_DELETE) {
        if (have[F_VALUE] || have[F_VERSION])
            return "a delete has no value= or version=";
    } else {
        if (!have[F_VALUE])
            return "value= is required";
        if (have[F_VERSION] != (outcome == LIN_OUT_OK))
            return "version= exactly when ok";
        op->value = num[F_VALUE];
    }
    op->out_version = have[F_VERSION] ? num[F_VERSION] : 0;
    return lin_op_problem(op);
}

int lin_read(FILE *f, struct lin_history *h, char *err, size_t errlen)
{
    char *line = NULL;
    size_t cap = 0, lineno = 0, start = h->n;
    ssize_t len;
    int rc = LIN_OK;
    const char *why = NULL;

    while ((len = getline(&line, &cap, f)) >= 0) {
        char *hash;
        struct lin_op op;
        lineno++;
        if ((size_t)len != strlen(line)) {
            why = "NUL byte in line";
            break;
        }
        if (len > LINE_MAX_LEN) {
            why = "line too long";
            break;
        }
        hash = strchr(line, '#');
        if (hash != NULL)
            *hash = '\0';
        if (line[strspn(line, " \t\r\n")] == '\0')
            continue;
        why = parse_line(line, &op);
        if (why != NULL)
            break;
        rc = lin_add(h, &op);
        if (rc != LIN_OK)
            break;
    }
    if (why != NULL) {
        rc = LIN_EINVAL;
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "line %zu: %s", lineno, why);
    } else if (rc == LIN_OK && ferror(f)) {
        rc = LIN_EIO;
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "line %zu: read error", lineno + 1);
    } else if (rc != LIN_OK && err != NULL && errlen > 0) {
        snprintf(err, errlen, "line %zu: out of memory", lineno);
    }
    if (rc != LIN_OK)
        h->n = start;
    free(line);
    return rc;
}

/* Formats S into BUF. */
static void format_state(const struct lin_state *s, char *buf, size_t len)
{
    if (!s->present)
        snprintf(buf, len, "absent (next version >= %llu)",
                 (unsigned long long)s->next_version);
    else if (s->version_known)
        snprintf(buf, len, "value=%llu version=%llu",
                 (unsigned long long)s->value, (unsigned long long)s->version);
    else
        snprintf(buf, len, "value=%llu version>=%llu (not yet seen)",
                 (unsigned long long)s->value, (unsigned long long)s->version);
}

static const char *limit_name(int l)
{
    switch (l) {
    case LIN_LIMIT_STATES:
        return "the budget of states";
    case LIN_LIMIT_TIME:
        return "the time budget";
    case LIN_LIMIT_BYTES:
        return "the memory budget";
    default:
        return "a budget";
    }
}

/* The op of history index ID in R's prefix, or NULL. */
static const struct lin_op *prefix_op(const struct lin_report *r, size_t id)
{
    size_t i;
    for (i = 0; i < r->nprefix; i++) {
        if (r->prefix[i].id == id)
            return &r->prefix[i].op;
    }
    return NULL;
}

/* Writes the sentence of R's quick proof. */
static int print_proof(const struct lin_report *r, FILE *f)
{
    const struct lin_op *a = prefix_op(r, r->proof_a);
    const struct lin_op *b = prefix_op(r, r->proof_b);
    unsigned long long ia = r->proof_a, ib = r->proof_b;
    int n;

    if (a == NULL || b == NULL)
        return LIN_OK;
    switch (r->proof) {
    case LIN_PROOF_WENT_BACK:
    case LIN_PROOF_NOT_NEW:
        n = fprintf(f,
                    "Proof: op %llu %s version %llu and returned at "
                    "t=%llu, before op %llu was called (t=%llu), which %s "
                    "version %llu; a key's versions only grow.\n",
                    ia, a->kind == LIN_DELETE ? "deleted" : "showed",
                    (unsigned long long)(a->kind == LIN_DELETE
                                             ? a->expect_version
                                             : a->out_version),
                    (unsigned long long)a->ret, ib, (unsigned long long)b->call,
                    r->proof == LIN_PROOF_NOT_NEW ? "then created" : "then saw",
                    (unsigned long long)(r->proof == LIN_PROOF_NOT_NEW ||
                                                 b->kind == LIN_READ
                                             ? b->out_version
                                             : b->expect_version));
        break;
    case LIN_PROOF_TWO_VALUES:
        n = fprintf(f,
                    "Proof: ops %llu and %llu show version %llu with "
                    "different values; a version names one record.\n",
                    ia, ib, (unsigned long long)b->out_version);
        break;
    case LIN_PROOF_TWICE:
        n = fprintf(f,
                    "Proof: ops %llu and %llu both created version %llu; "
                    "each write creates a new one.\n",
                    ia, ib, (unsigned long long)b->out_version);
        break;
    default:
        n = 0;
        break;
    }
    return n < 0 ? LIN_EIO : LIN_OK;
}

/* How many prefix ops and order steps a report prints at most (the last
 * ones, nearest the failure); the report structure holds all of them. */
#define PRINT_OPS 200
#define PRINT_STEPS 40

int lin_report_print(const struct lin_report *r, FILE *f)
{
    const char *verdict = r->result == LIN_OK          ? "yes"
                          : r->result == LIN_VIOLATION ? "no"
                          : r->result == LIN_UNKNOWN   ? "unknown"
                                                       : "error";
    char line[LINE_MAX_LEN], st[128];
    size_t i, from;
    int e = 0;

    e |= fprintf(f, "linearizable: %s\n", verdict) < 0;
    e |= fprintf(f,
                 "%zu ops on %zu keys: %zu violating, %zu undecided; "
                 "%llu states explored in %llu ms\n",
                 r->ops, r->keys, r->keys_violating, r->keys_unknown,
                 (unsigned long long)r->states,
                 (unsigned long long)r->elapsed_ms) < 0;
    if (r->keys_unknown > 0)
        e |= fprintf(f, "key %llu (the first undecided) ran out of %s\n",
                     (unsigned long long)r->unknown_key,
                     limit_name(r->unknown_reason)) < 0;
    if (r->result != LIN_VIOLATION || r->nprefix == 0)
        return e ? LIN_EIO : LIN_OK;

    e |= fprintf(f,
                 "\nkey %llu: the ops called by t=%llu have no valid order "
                 "once the op marked FAILS returns.\n"
                 "Its %zu ops by call time, as history lines ('running': "
                 "not returned at t=%llu, so counted as unknown):\n",
                 (unsigned long long)r->key, (unsigned long long)r->fail_time,
                 r->nprefix, (unsigned long long)r->fail_time) < 0;
    from = r->nprefix > PRINT_OPS ? r->nprefix - PRINT_OPS : 0;
    if (from > 0)
        e |= fprintf(f, "# (%zu earlier ops not shown)\n", from) < 0;
    for (i = from; i < r->nprefix; i++) {
        const struct lin_report_op *p = &r->prefix[i];
        format_op(&p->op, line, sizeof line);
        e |= fprintf(f, "%s  # op %zu%s\n", line, p->id,
                     p->role == LIN_ROLE_FAILING   ? " FAILS"
                     : p->role == LIN_ROLE_RUNNING ? " running"
                                                   : "") < 0;
    }
    if (r->proof != LIN_PROOF_NONE)
        e |= print_proof(r, f) != LIN_OK;
    if (!r->before_known) {
        e |= fprintf(f,
                     "Whether the ops before t=%llu have a valid order was "
                     "not decided within the budget.\n",
                     (unsigned long long)r->before_time) < 0;
    } else if (r->before_done == 0) {
        e |= fprintf(f, "No op of the key returned before it.\n") < 0;
    } else {
        e |= fprintf(f,
                     "Up to t=%llu (the return before), the %zu returned ops "
                     "have a valid order; one, with the state after each "
                     "op:\n",
                     (unsigned long long)r->before_time, r->before_done) < 0;
        from = r->norder > PRINT_STEPS ? r->norder - PRINT_STEPS : 0;
        if (from > 0)
            e |= fprintf(f, "  (%zu earlier steps not shown)\n", from) < 0;
        for (i = from; i < r->norder; i++) {
            format_state(&r->order[i].after, st, sizeof st);
            e |= fprintf(f, "  op %zu%s -> %s\n", r->order[i].id,
                         r->order[i].unknown ? " (unknown outcome, takes "
                                               "effect here)"
                                             : "",
                         st) < 0;
        }
    }
    return e ? LIN_EIO : LIN_OK;
}
