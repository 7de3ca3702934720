/*
 * incr - the incr workload of chaos: procedure calls under kill -9 and
 * SIGSTOP must be applied exactly once when acknowledged and at most once
 * otherwise.
 *
 * The workload has K counters (--keys, default 50) under a prefix unique
 * to the run, counter i on shard i % 8 so that every shard serves some.
 * Each client thread, with its own kv handle, loops on kv_call(db, "incr",
 * key) on a random counter (an empty argument, or "1" one time in four:
 * both add 1) and counts, per counter:
 *   - acknowledged increments (KV_OK). The reply must be a decimal number
 *     greater than the last reply this client had for the counter: the
 *     client's calls follow each other, so each is applied after the last.
 *   - unknown outcomes (KV_ETIMEDOUT, KV_EUNAVAILABLE): possibly applied.
 *   - calls that failed for sure (KV_ENOPROC, KV_EINVAL, KV_EBUDGET,
 *     KV_ERANGE, KV_EPROC): nothing written, and none should happen.
 *   - any other code: unexpected (it fails the run too); counted as
 *     possibly applied so that the counts check stays about the counts.
 *
 * At the end (every node running, the clients stopped) every counter is
 * read with a linearizable kv_get (absent reads as 0). Since only +1 is
 * ever applied, a counter's value is the number of increments applied to
 * it, so acknowledged <= value <= acknowledged + unknown (+ unexpected).
 * Moreover the k-th increment applied replies k, so the acknowledged
 * replies of a counter, from all clients, must be distinct and in
 * 1..value: a duplicate means two calls were evaluated on one state (an
 * increment lost), a reply above the value an increment undone.
 *
 * It never signals a node: only chaos.c's main thread does.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chaos.h"
#include "kv.h"

#define KEY_LEN 48
#define NAME_TRIES 100000 /* names tried to find one on a shard */
#define ARG_ONE_IN 4      /* calls that pass "1" rather than no argument */
#define MAX_REPLIES_PER_CLIENT 2000000u /* memory bound of one client */
#define FINAL_TRY_MS 2000               /* timeout of one final read */
#define FINAL_PAUSE_MS 200              /* between final read attempts */
#define FAST_FAIL_NS 5000000u           /* a call that failed this fast: */
#define FAST_FAIL_PAUSE_MS 10           /* pause before the next one */
#define MAX_REPORTS 10                  /* problems of a kind printed */

/* An acknowledged reply: counter KEY became VAL. */
struct incr_reply {
    uint32_t key;
    int64_t val;
};

struct incr_client {
    struct incr *w;
    int idx;
    int started;
    pthread_t th;
    uint64_t rng;
    /* per counter */
    int64_t *last;          /* the last reply seen, 0 none */
    unsigned long *acked;   /* KV_OK */
    unsigned long *unknown; /* timed out, unavailable */
    unsigned long *other;   /* unexpected codes: possibly applied */
    /* acknowledged replies, for the distinctness check */
    struct incr_reply *replies;
    size_t nreplies, cap;
    int open_failed;
    int log_full;
    /* totals */
    unsigned long failed_sure; /* codes that promise nothing was written */
    unsigned long unexpected;  /* any other code but OK or unknown */
    unsigned long bad_replies; /* not a number */
    unsigned long disorder;    /* not above this client's last reply */
    unsigned long errs[NERR];  /* failed-for-sure and unexpected codes */
    char errmsg[NERR][160];    /* the first message of each */
};

struct incr {
    struct run *r;
    int n; /* counters */
    char (*key)[KEY_LEN];
    size_t *klen;
    char prefix[32];
    atomic_int reports; /* disorder lines printed so far */
    struct incr_client *cs;
    int started; /* client threads started */
};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Parses decimal int64 text (an optional '-', 1..19 digits, no overflow
 * check beyond the length: incr never writes more). Returns 0 or -1. */
static int number_parse(const void *buf, size_t len, int64_t *out)
{
    const char *p = buf;
    size_t i = 0;
    uint64_t v = 0;
    int neg = 0;
    if (buf == NULL || len == 0 || len > 20)
        return -1;
    if (p[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i == len || len - i > 18)
        return -1;
    for (; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *out = neg ? -(int64_t)v : (int64_t)v;
    return 0;
}

/* --- client threads ------------------------------------------------------- */

static int outcome_unknown(int rc)
{
    return rc == KV_ETIMEDOUT || rc == KV_EUNAVAILABLE;
}

/* Whether RC promises that nothing was written and names a fault of the
 * call itself (kv.h, kv_call). */
static int failed_for_sure(int rc)
{
    return rc == KV_ENOPROC || rc == KV_EINVAL || rc == KV_EBUDGET ||
           rc == KV_ERANGE || rc == KV_EPROC;
}

/* Records an acknowledged reply (room is reserved). */
static void note_reply(struct incr_client *c, int key, const void *reply,
                       size_t rlen)
{
    struct incr *w = c->w;
    int64_t v = 0;
    if (number_parse(reply, rlen, &v) != 0) {
        c->bad_replies++;
        if (atomic_fetch_add(&w->reports, 1) < MAX_REPORTS)
            printf("chaos: client %d: incr %s replied %zu bytes that are "
                   "not a number\n",
                   c->idx, w->key[key], rlen);
        return;
    }
    c->replies[c->nreplies].key = (uint32_t)key;
    c->replies[c->nreplies].val = v;
    c->nreplies++;
    if (v <= c->last[key]) {
        c->disorder++;
        if (atomic_fetch_add(&w->reports, 1) < MAX_REPORTS)
            printf("chaos: t=%.1fs: client %d: incr %s replied %" PRId64
                   ", not above its last reply %" PRId64 "\n",
                   chaos_rel_s(w->r), c->idx, w->key[key], v, c->last[key]);
        return;
    }
    c->last[key] = v;
}

/* Makes room for one more reply. Returns 0, or -1 at the bound or out of
 * memory (the client then stops: a reply that could not be recorded must
 * not be asked for). */
static int replies_reserve(struct incr_client *c)
{
    if (c->nreplies < c->cap)
        return 0;
    if (c->cap >= MAX_REPLIES_PER_CLIENT)
        return -1;
    size_t cap = c->cap != 0 ? c->cap * 2 : 4096;
    struct incr_reply *p = realloc(c->replies, cap * sizeof *p);
    if (p == NULL)
        return -1;
    c->replies = p;
    c->cap = cap;
    return 0;
}

/* One increment of a random counter. Returns its code. */
static int do_incr(struct incr_client *c, kv *db, const kv_opts *o)
{
    struct incr *w = c->w;
    int key = (int)chaos_rng_below(&c->rng, (uint64_t)w->n);
    int one = chaos_rng_below(&c->rng, ARG_ONE_IN) == 0;
    void *reply = NULL;
    size_t rlen = 0;
    int rc = kv_call(db, "incr", w->key[key], w->klen[key], one ? "1" : NULL,
                     one ? 1 : 0, o, &reply, &rlen);
    if (rc == KV_OK) {
        c->acked[key]++;
        note_reply(c, key, reply, rlen);
    } else if (outcome_unknown(rc)) {
        c->unknown[key]++;
    } else if (failed_for_sure(rc)) {
        c->failed_sure++;
        chaos_note_error(c->errs, c->errmsg, db, rc);
    } else {
        c->unexpected++;
        c->other[key]++;
        chaos_note_error(c->errs, c->errmsg, db, rc);
    }
    kv_free(reply);
    return rc;
}

static void *incr_client_main(void *arg)
{
    struct incr_client *c = arg;
    struct run *r = c->w->r;
    kv *db = NULL;
    kv_open_opts oo = {.timeout_ms = (uint32_t)r->o.op_timeout_ms};
    kv_opts o = {.timeout_ms = (uint32_t)r->o.op_timeout_ms};
    if (kv_open(r->conf, &oo, &db) != KV_OK) {
        fprintf(stderr, "chaos: incr client %d: kv_open: %s\n", c->idx,
                kv_errmsg(NULL));
        c->open_failed = 1;
        goto out;
    }
    int64_t opened = 0;
    while (!atomic_load(&r->stop_clients)) {
        if (replies_reserve(c) != 0) {
            c->log_full = 1;
            break;
        }
        uint64_t t0 = mono_ns();
        int rc = do_incr(c, db, &o);
        /* A call that failed at once (no node reachable) must not spin. */
        if (rc != KV_OK && mono_ns() - t0 < FAST_FAIL_NS)
            harness_sleep_ms(FAST_FAIL_PAUSE_MS);
        db = chaos_next_call(r, db, &oo, &opened);
    }
    kv_close(db);
out:
    chaos_client_done(r);
    return NULL;
}

/* --- the workload --------------------------------------------------------- */

/* Makes the workload (see chaos.h). */
struct incr *incr_new(struct run *r)
{
    struct incr *w = calloc(1, sizeof *w);
    if (w == NULL)
        return NULL;
    w->r = r;
    w->n = r->o.keys;
    atomic_init(&w->reports, 0);
    w->key = calloc((size_t)w->n, sizeof *w->key);
    w->klen = calloc((size_t)w->n, sizeof *w->klen);
    w->cs = calloc((size_t)r->o.clients, sizeof *w->cs);
    if (w->key == NULL || w->klen == NULL || w->cs == NULL)
        goto fail;
    for (int i = 0; i < r->o.clients; i++) {
        struct incr_client *c = &w->cs[i];
        c->last = calloc((size_t)w->n, sizeof *c->last);
        c->acked = calloc((size_t)w->n, sizeof *c->acked);
        c->unknown = calloc((size_t)w->n, sizeof *c->unknown);
        c->other = calloc((size_t)w->n, sizeof *c->other);
        if (c->last == NULL || c->acked == NULL || c->unknown == NULL ||
            c->other == NULL)
            goto fail;
    }
    /* The prefix is unique to the run (the seed fixes choices, not names),
     * so a counter never starts from a value of another run. */
    uint64_t id = mono_ns() ^ ((uint64_t)getpid() << 32) ^ r->o.seed;
    snprintf(w->prefix, sizeof w->prefix, "incr-%012" PRIx64,
             id & 0xffffffffffffu);
    /* Counter i lives on shard i % NSHARDS: a name is tried until one
     * hashes there. */
    for (int a = 0; a < w->n; a++) {
        uint32_t want = (uint32_t)(a % NSHARDS);
        for (unsigned t = 0; t < NAME_TRIES && w->klen[a] == 0; t++) {
            char k[KEY_LEN];
            int kl = snprintf(k, sizeof k, "%s/%04d-%u", w->prefix, a, t);
            if (kl <= 0 || (size_t)kl >= sizeof k)
                break;
            if (kv_shard_of(k, (size_t)kl, NSHARDS) == want) {
                memcpy(w->key[a], k, (size_t)kl + 1);
                w->klen[a] = (size_t)kl;
            }
        }
        if (w->klen[a] == 0)
            goto fail;
    }
    return w;
fail:
    incr_free(w);
    return NULL;
}

/* Frees the workload (see chaos.h). */
void incr_free(struct incr *w)
{
    if (w == NULL)
        return;
    for (int i = 0; w->cs != NULL && i < w->r->o.clients; i++) {
        struct incr_client *c = &w->cs[i];
        free(c->last);
        free(c->acked);
        free(c->unknown);
        free(c->other);
        free(c->replies);
    }
    free(w->cs);
    free(w->key);
    free(w->klen);
    free(w);
}

/* The run's prefix of the counters' names (see chaos.h). */
const char *incr_prefix(const struct incr *w)
{
    return w->prefix;
}

/* Starts the client threads (see chaos.h). */
int incr_start(struct incr *w)
{
    struct run *r = w->r;
    for (int i = 0; i < r->o.clients; i++) {
        struct incr_client *c = &w->cs[i];
        c->w = w;
        c->idx = i;
        c->rng = r->o.seed + 0x9e3779b97f4a7c15u * (uint64_t)(i + 1);
        if (pthread_create(&c->th, NULL, incr_client_main, c) != 0)
            return -1;
        c->started = 1;
        w->started++;
    }
    return 0;
}

/* The number of client threads started (see chaos.h). */
int incr_started(const struct incr *w)
{
    return w->started;
}

/* Joins the client threads (see chaos.h). */
void incr_join(struct incr *w)
{
    for (int i = 0; i < w->r->o.clients; i++)
        if (w->cs[i].started) {
            pthread_join(w->cs[i].th, NULL);
            w->cs[i].started = 0;
        }
}

/* The clients' totals. */
struct incr_sum {
    unsigned long acked, unknown, other, failed_sure, unexpected, bad_replies,
        disorder, errs[NERR];
    size_t replies;
    const char *msg[NERR];
};

static void incr_sum(const struct incr *w, struct incr_sum *t)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < w->r->o.clients; i++) {
        const struct incr_client *c = &w->cs[i];
        for (int k = 0; k < w->n; k++) {
            t->acked += c->acked[k];
            t->unknown += c->unknown[k];
            t->other += c->other[k];
        }
        t->failed_sure += c->failed_sure;
        t->unexpected += c->unexpected;
        t->bad_replies += c->bad_replies;
        t->disorder += c->disorder;
        t->replies += c->nreplies;
        for (int e = 0; e < NERR; e++) {
            t->errs[e] += c->errs[e];
            if (t->msg[e] == NULL && c->errs[e] != 0)
                t->msg[e] = c->errmsg[e];
        }
    }
}

/* Prints what the clients did (see chaos.h). */
void incr_report(struct incr *w)
{
    struct incr_sum t;
    incr_sum(w, &t);
    for (int i = 0; i < w->r->o.clients; i++) {
        if (w->cs[i].open_failed)
            chaos_problem(w->r, "client %d could not open a handle", i);
        if (w->cs[i].log_full)
            printf("chaos: client %d stopped early: its reply log is full\n",
                   i);
    }
    printf("chaos: incr calls: acknowledged=%lu unknown=%lu "
           "failed-for-sure=%lu unexpected=%lu; replies not a number=%lu, "
           "not increasing=%lu\n",
           t.acked, t.unknown, t.failed_sure, t.unexpected, t.bad_replies,
           t.disorder);
    chaos_print_errors(t.errs, t.msg);
}

/* --- the end -------------------------------------------------------------- */

/* Reads every counter into VAL (absent: 0) within INCR_FINAL_READ_MS.
 * Returns the number of counters that could not be read (VAL -1). */
static int final_reads(struct incr *w, int64_t *val)
{
    struct run *r = w->r;
    kv *db = NULL;
    kv_open_opts oo = {.timeout_ms = FINAL_TRY_MS};
    int unread = 0;
    for (int k = 0; k < w->n; k++)
        val[k] = -1;
    if (kv_open(r->conf, &oo, &db) != KV_OK) {
        printf("chaos: final reads: kv_open: %s\n", kv_errmsg(NULL));
        return w->n;
    }
    int64_t until = harness_now_ms() + INCR_FINAL_READ_MS;
    for (int k = 0; k < w->n; k++) {
        int rc = KV_OK, done = 0;
        while (!done) {
            kv_opts o = {.timeout_ms = FINAL_TRY_MS};
            void *v = NULL;
            size_t vl = 0;
            rc = kv_get(db, w->key[k], w->klen[k], &o, &v, &vl, NULL);
            if (rc == KV_ENOTFOUND) {
                val[k] = 0;
                done = 1;
            } else if (rc == KV_OK) {
                int bad = number_parse(v, vl, &val[k]) != 0 || val[k] < 0;
                kv_free(v);
                if (bad) {
                    printf("chaos: final read of %s: %zu bytes that are "
                           "not a count\n",
                           w->key[k], vl);
                    val[k] = -1;
                    break;
                }
                done = 1;
            } else if (harness_now_ms() + FINAL_PAUSE_MS < until) {
                harness_sleep_ms(FINAL_PAUSE_MS);
            } else {
                printf("chaos: final read of %s failed: %s (%s)\n", w->key[k],
                       kv_strerror(rc), kv_errmsg(db));
                break;
            }
        }
        unread += !done;
    }
    kv_close(db);
    return unread;
}

static int cmp_reply(const void *a, const void *b)
{
    const struct incr_reply *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return (x->val > y->val) - (x->val < y->val);
}

/* Checks that the acknowledged replies of each counter are distinct and in
 * 1..VAL[counter] (counters not read are skipped). Returns the number of
 * replies that are not. Frees the clients' reply logs. */
static unsigned long check_replies(struct incr *w, const int64_t *val)
{
    size_t n = 0, at = 0;
    unsigned long bad = 0;
    for (int i = 0; i < w->r->o.clients; i++)
        n += w->cs[i].nreplies;
    struct incr_reply *all = malloc((n > 0 ? n : 1) * sizeof *all);
    if (all == NULL) {
        printf("chaos: out of memory checking the replies\n");
        return 1;
    }
    for (int i = 0; i < w->r->o.clients; i++) {
        struct incr_client *c = &w->cs[i];
        if (c->nreplies > 0)
            memcpy(all + at, c->replies, c->nreplies * sizeof *all);
        at += c->nreplies;
        free(c->replies);
        c->replies = NULL;
        c->nreplies = c->cap = 0;
    }
    qsort(all, n, sizeof *all, cmp_reply);
    for (size_t i = 0; i < n; i++) {
        int64_t fin = val[all[i].key];
        const char *why = NULL;
        if (fin < 0)
            continue;
        if (all[i].val < 1 || all[i].val > fin)
            why = all[i].val < 1 ? "below 1" : "above the final value";
        else if (i > 0 && all[i - 1].key == all[i].key &&
                 all[i - 1].val == all[i].val)
            why = "acknowledged to more than one call";
        if (why == NULL)
            continue;
        if (bad++ < MAX_REPORTS)
            printf("chaos: incr %s: reply %" PRId64 " %s (final value "
                   "%" PRId64 ")\n",
                   w->key[all[i].key], all[i].val, why, fin);
    }
    if (bad > MAX_REPORTS)
        printf("chaos: incr: ... and %lu more bad replies\n",
               bad - MAX_REPORTS);
    free(all);
    return bad;
}

/* The end of an incr run (see chaos.h). */
void incr_finish(struct incr *w, struct incr_verdict *v)
{
    struct incr_sum t;
    unsigned long out = 0;
    int64_t sum = 0;
    int64_t *val = calloc((size_t)w->n, sizeof *val);
    memset(v, 0, sizeof *v);
    incr_sum(w, &t);
    if (val == NULL) {
        printf("chaos: out of memory for the final reads\n");
        v->unread = (unsigned long)w->n;
        goto out;
    }
    v->unread = (unsigned long)final_reads(w, val);
    for (int k = 0; k < w->n; k++) {
        unsigned long acked = 0, unknown = 0;
        for (int i = 0; i < w->r->o.clients; i++) {
            acked += w->cs[i].acked[k];
            unknown += w->cs[i].unknown[k] + w->cs[i].other[k];
        }
        if (val[k] < 0)
            continue;
        sum += val[k];
        if ((uint64_t)val[k] >= acked && (uint64_t)val[k] <= acked + unknown)
            continue;
        if (out++ >= MAX_REPORTS)
            continue;
        printf("chaos: incr %s: acknowledged %lu, final value %" PRId64
               ", unknown %lu: %s\n",
               w->key[k], acked, val[k], unknown,
               (uint64_t)val[k] < acked
                   ? "an acknowledged increment was lost"
                   : "more applied than acknowledged + unknown (applied "
                     "twice?)");
    }
    if (out > MAX_REPORTS)
        printf("chaos: incr: ... and %lu more counters out of bounds\n",
               out - MAX_REPORTS);
    v->out_of_bounds = out;
    v->bad_replies = check_replies(w, val);
    uint64_t most = (uint64_t)t.acked + t.unknown + t.other;
    printf("chaos: incr: increments acknowledged=%lu unknown=%lu; final "
           "sum=%" PRId64 " over %d counters (%lu unread): %s\n",
           t.acked, t.unknown + t.other, sum, w->n - (int)v->unread, v->unread,
           (uint64_t)sum >= t.acked && (uint64_t)sum <= most
               ? "acknowledged <= sum <= acknowledged + unknown"
               : "NOT acknowledged <= sum <= acknowledged + unknown");
out:
    v->failed_sure = t.failed_sure;
    v->unexpected = t.unexpected;
    v->disorder = t.disorder + t.bad_replies;
    v->pass_counts =
        val != NULL && v->unread == 0 && out == 0 && v->bad_replies == 0;
    v->pass_order = v->disorder == 0;
    v->pass_errors = v->failed_sure == 0 && v->unexpected == 0;
    free(val);
}
