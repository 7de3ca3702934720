/*
 * bank - the bank workload of chaos: transactions under kill -9 and
 * SIGSTOP must conserve money.
 *
 * The bank has A accounts (--accounts), account i on shard i % 8, each
 * starting with START_BALANCE; an account that does not exist yet holds its
 * starting balance, so nothing is written before the run and the first
 * transfers create the keys. Balances are decimal text.
 *
 * Each client thread, with its own kv handle, loops on two kinds of
 * kv_txn_run transactions:
 *   - a transfer (9 in 10): read two distinct random accounts with
 *     kv_txn_get and put both new balances, moving 1..MAX_AMOUNT from one
 *     with money to the other; never below 0;
 *   - an audit (1 in 10): a read-only transaction of kv_txn_get on every
 *     account. When it commits, the balances it read were all current at
 *     one point, so they must sum to the total and none may be negative.
 * A commit that ends KV_ETIMEDOUT or KV_EUNAVAILABLE has an unknown outcome
 * (counted): the total is conserved whether it took effect or not. A read
 * that fails inside the transaction aborts it with nothing written.
 *
 * At the end (every node running, the clients stopped) a final audit must
 * commit with the right total and no negative balance, and within
 * INTENT_WAIT_MS no shard leader may list a transaction in flight
 * (ShardInfo.txns of admin_status, what `kvclient txn --list` shows):
 * recovery must finish everything the faults interrupted.
 *
 * It never signals a node: only chaos.c's main thread does.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admin.h"
#include "chaos.h"
#include "kv.h"

#define START_BALANCE 100
#define MAX_AMOUNT 50
#define AUDIT_ONE_IN 10
#define ACCOUNT_LEN 32
#define NAME_TRIES 100000 /* names tried to find one on a shard */
#define FINAL_AUDIT_MS BANK_FINAL_AUDIT_MS /* the final audit may take this */
#define FINAL_TXN_MS 5000 /* timeout of one final audit attempt */
#define INTENT_WAIT_MS BANK_INTENT_WAIT_MS /* then nothing may be in flight */
#define INTENT_POLL_MS 250                 /* how often the leaders are asked */
#define STATUS_MS 500                      /* one admin_status call */
#define FAST_FAIL_NS 5000000u              /* a call that failed this fast: */
#define FAST_FAIL_PAUSE_MS 10              /* pause before the next one */
#define MAX_REPORTS 10                     /* wrong totals printed in detail */

struct bank_client {
    struct bank *b;
    int idx;
    int started;
    pthread_t th;
    uint64_t rng;
    long *bal; /* an audit's balances (accounts entries) */
    int open_failed;
    /* transfers */
    unsigned long committed;   /* moved money */
    unsigned long empty;       /* both accounts at 0: committed reads only */
    unsigned long conflicted;  /* still conflicting when time ran out */
    unsigned long retries;     /* attempts kv_txn_run repeated on conflict */
    unsigned long unknown;     /* commit timed out or unavailable */
    unsigned long read_failed; /* a read failed: aborted, nothing written */
    /* audits */
    unsigned long audits, audit_conflicts, audit_unknown, audit_failed;
    /* what must never happen */
    unsigned long wrong_totals, negatives, bad_values;
    unsigned long errs[NERR]; /* unexpected codes, by -code */
    char errmsg[NERR][160];
};

struct bank {
    struct run *r;
    int n; /* accounts */
    char (*acct)[ACCOUNT_LEN];
    size_t *alen;
    long total;
    atomic_int reports; /* wrong totals printed so far */
    struct bank_client *cs;
    int started; /* client threads started */
};

/* --- balances ------------------------------------------------------------- */

/* Parses a balance this workload writes: an optional '-' and 1..18
 * digits. Returns 0 or -1. */
static int balance_parse(const void *buf, size_t len, long *out)
{
    const char *p = buf;
    size_t i = 0;
    long v = 0;
    int neg = 0;
    if (buf == NULL || len == 0 || len > 19)
        return -1;
    if (p[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i == len)
        return -1;
    for (; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    *out = neg ? -v : v;
    return 0;
}

/* Reads account A in T into *BAL (an absent account holds its starting
 * balance). A value the workload never writes sets *BAD and returns
 * KV_ECORRUPT. Returns KV_OK or the code of the read. */
static int read_balance(const struct bank *b, kv_txn *t, int a, long *bal,
                        int *bad)
{
    void *v = NULL;
    size_t n = 0;
    int rc = kv_txn_get(t, b->acct[a], b->alen[a], &v, &n, NULL);
    if (rc == KV_ENOTFOUND) {
        *bal = START_BALANCE;
        return KV_OK;
    }
    if (rc != KV_OK)
        return rc;
    if (balance_parse(v, n, bal) != 0) {
        *bad = 1;
        rc = KV_ECORRUPT;
    }
    kv_free(v);
    return rc;
}

/* --- transfers ------------------------------------------------------------ */

struct transfer {
    const struct bank *b;
    int acct[2];   /* two distinct accounts */
    uint64_t pick; /* chooses the amount */
    /* of the last attempt */
    int reads_ok; /* both balances read: a failure after is the commit's */
    int moved;    /* both new balances buffered */
    int bad;      /* a balance was not one we write */
    int negative; /* a balance read was negative */
    unsigned long attempts; /* calls of transfer_fn */
};

/* One attempt of a transfer inside kv_txn_run (no effect but on T). */
static int transfer_fn(kv_txn *t, void *arg)
{
    struct transfer *x = arg;
    long bal[2];
    x->reads_ok = x->moved = x->bad = x->negative = 0;
    x->attempts++;
    for (int i = 0; i < 2; i++) {
        int rc = read_balance(x->b, t, x->acct[i], &bal[i], &x->bad);
        if (rc != KV_OK)
            return rc;
        if (bal[i] < 0) {
            x->negative = 1;
            return KV_ECORRUPT;
        }
    }
    x->reads_ok = 1;
    int src = bal[0] > 0 ? 0 : 1; /* the one with money pays */
    if (bal[src] == 0)
        return KV_OK; /* nobody has money: commits the reads only */
    long most = bal[src] < MAX_AMOUNT ? bal[src] : MAX_AMOUNT;
    long amount = 1 + (long)(x->pick % (uint64_t)most);
    for (int i = 0; i < 2; i++) {
        char buf[24];
        long nb = i == src ? bal[i] - amount : bal[i] + amount;
        int n = snprintf(buf, sizeof buf, "%ld", nb);
        int a = x->acct[i];
        int rc = kv_txn_put(t, x->b->acct[a], x->b->alen[a], buf, (size_t)n);
        if (rc != KV_OK)
            return rc;
    }
    x->moved = 1;
    return KV_OK;
}

/* --- audits --------------------------------------------------------------- */

struct audit {
    const struct bank *b;
    long *bal; /* b->n balances of the last attempt */
    int reads_ok;
    int bad;
};

/* One attempt of an audit: reads every account (no effect but on T). */
static int audit_fn(kv_txn *t, void *arg)
{
    struct audit *x = arg;
    x->reads_ok = x->bad = 0;
    for (int a = 0; a < x->b->n; a++) {
        int rc = read_balance(x->b, t, a, &x->bal[a], &x->bad);
        if (rc != KV_OK)
            return rc;
    }
    x->reads_ok = 1;
    return KV_OK;
}

/* Checks the balances of a committed audit: WHO names it in what is
 * printed. Returns the number of negative balances and adds 1 to *WRONG
 * when the sum is not the total. */
static unsigned long audit_check(struct bank *b, const long *bal,
                                 const char *who, unsigned long *wrong)
{
    long sum = 0;
    unsigned long neg = 0;
    for (int a = 0; a < b->n; a++) {
        sum += bal[a];
        neg += bal[a] < 0;
    }
    if (sum == b->total && neg == 0)
        return 0;
    if (sum != b->total)
        (*wrong)++;
    if (atomic_fetch_add(&b->reports, 1) < MAX_REPORTS) {
        char line[4096];
        size_t len = 0;
        for (int a = 0; a < b->n && len < sizeof line - 32; a++)
            len +=
                (size_t)snprintf(line + len, sizeof line - len, " %ld", bal[a]);
        printf("chaos: %s audit committed with total %ld (want %ld), %lu "
               "negative; balances:%s\n",
               who, sum, b->total, neg, line);
    }
    return neg;
}

/* --- client threads ------------------------------------------------------- */

static int outcome_unknown(int rc)
{
    return rc == KV_ETIMEDOUT || rc == KV_EUNAVAILABLE;
}

/* One transfer between two distinct random accounts. Returns its code. */
static int do_transfer(struct bank_client *c, kv *db, const kv_opts *o)
{
    struct bank *b = c->b;
    struct transfer x;
    memset(&x, 0, sizeof x);
    x.b = b;
    x.acct[0] = (int)chaos_rng_below(&c->rng, (uint64_t)b->n);
    x.acct[1] =
        (x.acct[0] + 1 + (int)chaos_rng_below(&c->rng, (uint64_t)b->n - 1)) %
        b->n;
    x.pick = chaos_rng_next(&c->rng);
    int rc = kv_txn_run(db, o, transfer_fn, &x);
    if (x.attempts > 1)
        c->retries += x.attempts - 1;
    if (x.bad)
        c->bad_values++;
    if (x.negative)
        c->negatives++;
    if (x.bad || x.negative)
        return rc;
    if (rc == KV_OK && x.moved)
        c->committed++;
    else if (rc == KV_OK)
        c->empty++;
    else if (rc == KV_ECONFLICT)
        c->conflicted++;
    else if (outcome_unknown(rc) && x.reads_ok)
        c->unknown++;
    else if (outcome_unknown(rc))
        c->read_failed++;
    else
        chaos_note_error(c->errs, c->errmsg, db, rc);
    return rc;
}

/* One audit of every account. Returns its code. */
static int do_audit(struct bank_client *c, kv *db, const kv_opts *o)
{
    struct audit x = {.b = c->b, .bal = c->bal, .reads_ok = 0, .bad = 0};
    int rc = kv_txn_run(db, o, audit_fn, &x);
    if (x.bad) {
        c->bad_values++;
        return rc;
    }
    if (rc == KV_OK) {
        c->audits++;
        c->negatives += audit_check(c->b, c->bal, "an", &c->wrong_totals);
    } else if (rc == KV_ECONFLICT) {
        c->audit_conflicts++;
    } else if (outcome_unknown(rc) && x.reads_ok) {
        c->audit_unknown++;
    } else if (outcome_unknown(rc)) {
        c->audit_failed++;
    } else {
        chaos_note_error(c->errs, c->errmsg, db, rc);
    }
    return rc;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *bank_client_main(void *arg)
{
    struct bank_client *c = arg;
    struct run *r = c->b->r;
    kv *db = NULL;
    kv_open_opts oo = {.timeout_ms = (uint32_t)r->o.op_timeout_ms};
    kv_opts o = {.timeout_ms = (uint32_t)r->o.op_timeout_ms};
    if (kv_open(r->conf, &oo, &db) != KV_OK) {
        fprintf(stderr, "chaos: bank client %d: kv_open: %s\n", c->idx,
                kv_errmsg(NULL));
        c->open_failed = 1;
        goto out;
    }
    int64_t opened = 0;
    while (!atomic_load(&r->stop_clients)) {
        uint64_t t0 = mono_ns();
        int rc = chaos_rng_below(&c->rng, AUDIT_ONE_IN) == 0
                     ? do_audit(c, db, &o)
                     : do_transfer(c, db, &o);
        /* A call that failed at once (no node reachable) must not spin. */
        if (rc != KV_OK && rc != KV_ECONFLICT && mono_ns() - t0 < FAST_FAIL_NS)
            harness_sleep_ms(FAST_FAIL_PAUSE_MS);
        db = chaos_next_call(r, db, &oo, &opened);
    }
    kv_close(db);
out:
    chaos_client_done(r);
    return NULL;
}

/* --- the bank ------------------------------------------------------------- */

/* Makes the bank (see chaos.h). */
struct bank *bank_new(struct run *r)
{
    struct bank *b = calloc(1, sizeof *b);
    if (b == NULL)
        return NULL;
    b->r = r;
    b->n = r->o.accounts;
    b->total = (long)b->n * START_BALANCE;
    atomic_init(&b->reports, 0);
    b->acct = calloc((size_t)b->n, sizeof *b->acct);
    b->alen = calloc((size_t)b->n, sizeof *b->alen);
    b->cs = calloc((size_t)r->o.clients, sizeof *b->cs);
    if (b->acct == NULL || b->alen == NULL || b->cs == NULL)
        goto fail;
    for (int i = 0; i < r->o.clients; i++) {
        b->cs[i].bal = calloc((size_t)b->n, sizeof *b->cs[i].bal);
        if (b->cs[i].bal == NULL)
            goto fail;
    }
    /* Account i lives on shard i % NSHARDS: a name is tried until one
     * hashes there. */
    for (int a = 0; a < b->n; a++) {
        uint32_t want = (uint32_t)(a % NSHARDS);
        for (unsigned t = 0; t < NAME_TRIES && b->alen[a] == 0; t++) {
            char k[ACCOUNT_LEN];
            int kl = snprintf(k, sizeof k, "bank/%03d-%u", a, t);
            if (kl <= 0 || (size_t)kl >= sizeof k)
                break;
            if (kv_shard_of(k, (size_t)kl, NSHARDS) == want) {
                memcpy(b->acct[a], k, (size_t)kl + 1);
                b->alen[a] = (size_t)kl;
            }
        }
        if (b->alen[a] == 0)
            goto fail;
    }
    return b;
fail:
    bank_free(b);
    return NULL;
}

/* Frees the bank (see chaos.h). */
void bank_free(struct bank *b)
{
    if (b == NULL)
        return;
    for (int i = 0; b->cs != NULL && i < b->r->o.clients; i++)
        free(b->cs[i].bal);
    free(b->cs);
    free(b->acct);
    free(b->alen);
    free(b);
}

/* Starts the client threads (see chaos.h). */
int bank_start(struct bank *b)
{
    struct run *r = b->r;
    for (int i = 0; i < r->o.clients; i++) {
        struct bank_client *c = &b->cs[i];
        c->b = b;
        c->idx = i;
        c->rng = r->o.seed + 0x9e3779b97f4a7c15u * (uint64_t)(i + 1);
        if (pthread_create(&c->th, NULL, bank_client_main, c) != 0)
            return -1;
        c->started = 1;
        b->started++;
    }
    return 0;
}

/* The number of client threads started (see chaos.h). */
int bank_started(const struct bank *b)
{
    return b->started;
}

/* Joins the client threads (see chaos.h). */
void bank_join(struct bank *b)
{
    for (int i = 0; i < b->r->o.clients; i++)
        if (b->cs[i].started) {
            pthread_join(b->cs[i].th, NULL);
            b->cs[i].started = 0;
        }
}

/* Sums the clients' counters into *T (errs and the first messages too). */
static void bank_sum(const struct bank *b, struct bank_client *t,
                     const char *msg[NERR])
{
    memset(t, 0, sizeof *t);
    for (int e = 0; e < NERR; e++)
        msg[e] = NULL;
    for (int i = 0; i < b->r->o.clients; i++) {
        const struct bank_client *c = &b->cs[i];
        t->committed += c->committed;
        t->empty += c->empty;
        t->conflicted += c->conflicted;
        t->retries += c->retries;
        t->unknown += c->unknown;
        t->read_failed += c->read_failed;
        t->audits += c->audits;
        t->audit_conflicts += c->audit_conflicts;
        t->audit_unknown += c->audit_unknown;
        t->audit_failed += c->audit_failed;
        t->wrong_totals += c->wrong_totals;
        t->negatives += c->negatives;
        t->bad_values += c->bad_values;
        for (int e = 0; e < NERR; e++) {
            t->errs[e] += c->errs[e];
            if (msg[e] == NULL && c->errs[e] != 0)
                msg[e] = c->errmsg[e];
        }
    }
}

/* Prints what the clients did (see chaos.h). */
void bank_report(struct bank *b)
{
    struct bank_client t;
    const char *msg[NERR];
    bank_sum(b, &t, msg);
    for (int i = 0; i < b->r->o.clients; i++)
        if (b->cs[i].open_failed)
            chaos_problem(b->r, "client %d could not open a handle", i);
    printf("chaos: transfers: committed=%lu conflicted=%lu unknown=%lu "
           "read-failed=%lu nothing-to-move=%lu (conflicts retried: %lu)\n",
           t.committed, t.conflicted, t.unknown, t.read_failed, t.empty,
           t.retries);
    printf("chaos: audits: committed=%lu conflicted=%lu unknown=%lu "
           "read-failed=%lu; wrong totals=%lu, negative balances=%lu, "
           "values never written=%lu\n",
           t.audits, t.audit_conflicts, t.audit_unknown, t.audit_failed,
           t.wrong_totals, t.negatives, t.bad_values);
    chaos_print_errors(t.errs, msg);
}

/* Runs the final audit until it commits (at most FINAL_AUDIT_MS). Returns
 * whether it committed; adds what it found to *WRONG and *NEG. */
static int final_audit(struct bank *b, unsigned long *wrong, unsigned long *neg,
                       unsigned long *bad)
{
    struct run *r = b->r;
    kv *db = NULL;
    long *bal = calloc((size_t)b->n, sizeof *bal);
    kv_open_opts oo = {.timeout_ms = FINAL_TXN_MS};
    kv_opts o = {.timeout_ms = FINAL_TXN_MS};
    int rc = KV_ENOMEM, tries = 0, done = 0;
    if (bal == NULL)
        goto out;
    rc = kv_open(r->conf, &oo, &db);
    if (rc != KV_OK) {
        printf("chaos: final audit: kv_open: %s\n", kv_errmsg(NULL));
        goto out;
    }
    int64_t until = harness_now_ms() + FINAL_AUDIT_MS;
    while (!done && harness_now_ms() < until) {
        struct audit x = {.b = b, .bal = bal, .reads_ok = 0, .bad = 0};
        int64_t left = until - harness_now_ms();
        o.timeout_ms = left < FINAL_TXN_MS ? (uint32_t)left : FINAL_TXN_MS;
        tries++;
        rc = kv_txn_run(db, &o, audit_fn, &x);
        if (x.bad) {
            (*bad)++;
            printf("chaos: final audit read a value never written\n");
            break;
        }
        if (rc == KV_OK) {
            done = 1;
            *neg += audit_check(b, bal, "the final", wrong);
        } else {
            harness_sleep_ms(200);
        }
    }
    if (done) {
        long sum = 0;
        for (int a = 0; a < b->n; a++)
            sum += bal[a];
        printf("chaos: final audit committed (attempt %d): total %ld of %ld "
               "over %d accounts\n",
               tries, sum, b->total, b->n);
    } else {
        printf("chaos: final audit did not commit in %d ms (%d attempts; "
               "last: %s: %s)\n",
               FINAL_AUDIT_MS, tries, kv_strerror(rc), kv_errmsg(db));
    }
out:
    kv_close(db);
    free(bal);
    return done;
}

/* One look at every shard leader's list of transactions in flight. Fills
 * LED[s] (a leader answered for shard s) and returns the number of
 * transactions listed; with PRINT, prints each. */
static unsigned long txns_in_flight(struct run *r, int led[NSHARDS], int print)
{
    unsigned long n = 0;
    for (int s = 0; s < NSHARDS; s++)
        led[s] = 0;
    size_t nodes = admin_node_count(r->adm);
    for (size_t j = 0; j < nodes; j++) {
        Kv__StatusResult *st = NULL;
        if (admin_status(r->adm, j, STATUS_MS, &st) != KV_OK)
            continue;
        for (size_t k = 0; k < st->n_shard_info; k++) {
            const Kv__ShardInfo *si = st->shard_info[k];
            if (si == NULL || si->shard >= NSHARDS || si->role == NULL ||
                strcmp(si->role, "leader") != 0)
                continue;
            led[si->shard] = 1;
            n += si->n_txns;
            for (size_t t = 0; print && t < si->n_txns; t++) {
                const Kv__TxnInfo *x = si->txns[t];
                char hex[2 * 16 + 1] = "";
                for (size_t i = 0; i < x->txn_id.len && i < 16; i++)
                    snprintf(hex + 2 * i, 3, "%02x", x->txn_id.data[i]);
                printf("chaos: intent left after healing: shard %u (node "
                       "%u): txn %s %s, home %u, age %" PRId64 " ms, %" PRIu64
                       " keys\n",
                       si->shard, admin_node_id(r->adm, j), hex,
                       x->state != NULL ? x->state : "?", x->home, x->age_ms,
                       x->keys);
            }
        }
        admin_status_free(st);
    }
    return n;
}

/* Waits at most INTENT_WAIT_MS until every shard has a leader that lists
 * no transaction in flight. Returns the number still listed then. */
static unsigned long wait_no_txns(struct bank *b, int *unled)
{
    struct run *r = b->r;
    int led[NSHARDS];
    int64_t t0 = harness_now_ms(), until = t0 + INTENT_WAIT_MS;
    unsigned long n;
    for (;;) {
        n = txns_in_flight(r, led, 0);
        *unled = 0;
        for (int s = 0; s < NSHARDS; s++)
            *unled += !led[s];
        if ((n == 0 && *unled == 0) || harness_now_ms() >= until)
            break;
        harness_sleep_ms(INTENT_POLL_MS);
    }
    if (n != 0)
        n = txns_in_flight(r, led, 1); /* print what is left */
    if (n == 0 && *unled == 0)
        printf("chaos: no transaction in flight %" PRId64
               " ms after the final audit\n",
               harness_now_ms() - t0);
    return n;
}

/* The end of a bank run (see chaos.h). */
void bank_finish(struct bank *b, struct bank_verdict *v)
{
    struct bank_client t;
    const char *msg[NERR];
    unsigned long wrong = 0, neg = 0, bad = 0;
    int unled = 0;
    memset(v, 0, sizeof *v);
    int committed = final_audit(b, &wrong, &neg, &bad);
    unsigned long left = wait_no_txns(b, &unled);
    if (unled != 0)
        chaos_problem(b->r, "%d shards had no leader answering at the end",
                      unled);
    bank_sum(b, &t, msg);
    v->wrong_totals = t.wrong_totals + wrong;
    v->negatives = t.negatives + neg;
    v->intents_left = left;
    v->pass_total =
        committed && v->wrong_totals == 0 && t.bad_values == 0 && bad == 0;
    v->pass_negative = v->negatives == 0;
    v->pass_intents = left == 0 && unled == 0;
    printf("chaos: bank: transfers committed=%lu conflicted=%lu unknown=%lu; "
           "audits=%lu; wrong totals=%lu; negative balances=%lu; intents "
           "left=%lu\n",
           t.committed, t.conflicted, t.unknown, t.audits + (committed != 0),
           v->wrong_totals, v->negatives, left);
}
