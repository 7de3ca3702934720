/*
 * bench - the load generator behind `kvclient bench` (see bench.h).
 *
 * Each client is a thread with its own kv handle. Work is split up front:
 * client i runs ops/N operations (the first ops%N clients one more) and
 * writes each latency into its own slice of one array, so the timed loop
 * shares nothing but a relaxed progress counter. Setup (opening handles and,
 * for the read workload, writing the key space once) is untimed: every
 * client reports ready, then the main thread starts the clock and lets them
 * go, or stops them all if any setup failed. It never runs more than the
 * configured number of operations.
 *
 * The txn workload runs one transaction of two puts per operation, so it
 * needs a blocking thread per client (libkv's pipeline carries gets and
 * puts only). Its two keys share a hash tag (--txn-keys same: one shard,
 * committed in one step) or are picked on two different shards (cross: two-
 * phase commit); for cross, the shard count is asked from the cluster
 * before the clients start.
 *
 * The incr workloads increment --keys hot keys under a prefix drawn at
 * random per run ("bench/incr/RUN/kN"), so runs never add up. incr-proc is
 * one kv_call of the built-in incr per operation; incr-rmw is what a client
 * does without procedures: kv_get (absent = 0), then kv_put of value+1 on
 * the condition that the key is still at the version read (or still
 * absent), starting again from the get whenever another client won the
 * race (KV_ECONFLICT). Both block their thread, so they run a thread per
 * client. Each operation ends acknowledged (KV_OK), failed with nothing
 * written, or unknown (a write or call that timed out may have been
 * applied); after the run the keys are read back with a scan of the prefix
 * and their sum must lie between the acknowledged count and that plus the
 * unknown ones.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "bench.h"
#include "kv.h"

#define PRELOAD_ATTEMPTS 3
#define TXN_NAME_TRIES 64      /* names tried for a key on another shard */
#define SHARDS_TIMEOUT_MS 1000 /* asking a node for the shard count */
#define PROGRESS_NS 250000000L /* progress line refresh: 4 times a second */
/* incr-rmw gives up an increment (counted as a KV_ECONFLICT error) after
 * this many attempts or this long: the loop is bounded even if some client
 * kept winning every race. */
#define RMW_MAX_ATTEMPTS 100000
#define RMW_MAX_NS 60000000000ULL
#define VERIFY_ATTEMPTS 3 /* reading the keys back: transient errors */
#define INCR_PREFIX_MAX 48

/* What every client thread shares. */
struct bench_shared {
    const struct bench_config *cfg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned ready;               /* clients done with setup (under mu) */
    int go;                       /* 0 wait, 1 run, -1 stop (under mu) */
    atomic_uint_fast64_t done;    /* timed operations finished */
    unsigned char *value;         /* what every put writes (read-only) */
    uint32_t nshards;             /* txn workload: the target's shard count */
    char prefix[INCR_PREFIX_MAX]; /* incr workloads: "bench/incr/RUN/" */
    size_t prefix_len;
};

/* One client thread. */
struct bench_client {
    pthread_t tid;
    unsigned index;
    struct bench_shared *sh;
    uint64_t nops; /* timed operations to run */
    uint64_t *lat; /* nops latencies in ns: a slice of the shared array */
    uint64_t first_key, end_key; /* the preload slice of the key space */
    uint64_t rng;
    uint64_t errors, not_found;
    uint64_t by_code[BENCH_NCODES];
    uint64_t increments, timed_out, retries; /* incr workloads */
    unsigned slots;      /* clients this thread carries (pipelined if > 1) */
    struct timespec end; /* when its timed loop ended */
    int setup_rc;        /* KV_OK or why its setup failed */
    char setup_err[256];
};

/* Nanoseconds of the monotonic clock. */
static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: a small per-thread generator, good enough to pick keys. */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* Formats key number K into BUF; returns its length. */
static size_t bench_key(char *buf, size_t len, uint64_t k)
{
    int n = snprintf(buf, len, "bench-%08llu", (unsigned long long)k);
    return n > 0 ? (size_t)n : 0;
}

/* Writes the two keys of transaction number K into A and B (48 bytes
 * each) and their lengths: one hash tag for BENCH_TXN_SAME; for CROSS, B is
 * the first of K's names on another shard than A. */
static void txn_keys(const struct bench_shared *sh, uint64_t k, char *a,
                     size_t *alen, char *b, size_t *blen)
{
    unsigned long long kk = (unsigned long long)k;
    int n;

    if (sh->cfg->txn_keys == BENCH_TXN_SAME) {
        n = snprintf(a, 48, "bench-{%08llu}-1", kk);
        *alen = n > 0 ? (size_t)n : 0;
        n = snprintf(b, 48, "bench-{%08llu}-2", kk);
        *blen = n > 0 ? (size_t)n : 0;
        return;
    }
    n = snprintf(a, 48, "bench-%08llu-1", kk);
    *alen = n > 0 ? (size_t)n : 0;
    uint32_t sa = kv_shard_of(a, *alen, sh->nshards);
    for (unsigned u = 0; u < TXN_NAME_TRIES; u++) {
        n = snprintf(b, 48, "bench-%08llu-2.%u", kk, u);
        *blen = n > 0 ? (size_t)n : 0;
        if (kv_shard_of(b, *blen, sh->nshards) != sa)
            break;
    }
}

struct txn_puts {
    const char *a, *b;
    size_t alen, blen;
    const void *val;
    size_t vlen;
};

static int txn_fill(kv_txn *t, void *arg)
{
    const struct txn_puts *p = arg;
    int rc = kv_txn_put(t, p->a, p->alen, p->val, p->vlen);
    return rc == KV_OK ? kv_txn_put(t, p->b, p->blen, p->val, p->vlen) : rc;
}

/* One transaction of two puts: A and B = VAL, run as an application runs
 * one (kv_txn_run: one that lost a race for a key to another client's
 * transaction starts again after a short backoff). Returns its code. */
static int txn_op(kv *db, const kv_opts *o, const char *a, size_t alen,
                  const char *b, size_t blen, const void *val, size_t vlen)
{
    struct txn_puts p = {
        .a = a, .b = b, .alen = alen, .blen = blen, .val = val, .vlen = vlen};
    return kv_txn_run(db, o, txn_fill, &p);
}

/* Whether the workload runs a blocking thread per client. */
static int blocking_workload(enum bench_workload w)
{
    return w == BENCH_TXN || bench_is_incr(w);
}

/* Writes hot key number K of the incr workloads into BUF (LEN bytes);
 * returns its length. */
static size_t incr_key(const struct bench_shared *sh, char *buf, size_t len,
                       uint64_t k)
{
    int n = snprintf(buf, len, "%sk%llu", sh->prefix, (unsigned long long)k);
    return n > 0 && (size_t)n < len ? (size_t)n : 0;
}

/* Parses the N bytes at P as a decimal int64 (an optional '-', then 1 to 19
 * digits, nothing else). Returns 0 and *OUT, or -1. */
static int parse_i64(const void *p, size_t n, int64_t *out)
{
    const unsigned char *s = p;
    uint64_t v = 0, max = INT64_MAX;
    size_t i = 0;
    int neg = 0;

    if (n > 0 && s[0] == '-') {
        neg = 1;
        max = (uint64_t)INT64_MAX + 1;
        i = 1;
    }
    if (i == n || n - i > 19)
        return -1;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0'); /* 19 digits fit in 64 bits */
    }
    if (v > max)
        return -1;
    *out = neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v)
               : (int64_t)v;
    return 0;
}

/* Whether an operation that ended with RC may have written anyway. */
static int outcome_unknown(int rc)
{
    return rc == KV_ETIMEDOUT || rc == KV_EUNAVAILABLE;
}

/* One increment through the built-in procedure: kv_call(incr, KEY) with an
 * empty argument (+1). *UNKNOWN is set when it may have been applied
 * although it failed. Returns its code. */
static int incr_proc_op(kv *db, const kv_opts *o, const char *key, size_t klen,
                        int *unknown)
{
    void *reply = NULL;
    size_t rlen = 0;
    int rc = kv_call(db, "incr", key, klen, NULL, 0, o, &reply, &rlen);

    kv_free(reply);
    *unknown = outcome_unknown(rc);
    return rc;
}

/* One increment done by the client: read KEY, write value+1 on the
 * condition that KEY is still at the version read (or still absent), and
 * from the read again when it no longer is; each new attempt is counted in
 * cl->retries. A value that is no decimal int64 fails with KV_EINVAL, one
 * at INT64_MAX with KV_ERANGE, and an increment that lost the race
 * RMW_MAX_ATTEMPTS times or for RMW_MAX_NS with KV_ECONFLICT. *UNKNOWN is
 * set when the last put may have been applied although it failed. Returns
 * the code of the increment. */
static int incr_rmw_op(struct bench_client *cl, kv *db, const kv_opts *base,
                       const char *key, size_t klen, int *unknown)
{
    uint64_t t0 = now_ns();
    unsigned attempt;
    int rc = KV_ECONFLICT;

    *unknown = 0;
    for (attempt = 0; attempt < RMW_MAX_ATTEMPTS; attempt++) {
        kv_opts o = *base;
        void *val = NULL;
        size_t vlen = 0;
        uint64_t version = 0;
        int64_t n = 0;
        char buf[24];
        int len;

        if (attempt > 0) {
            if (now_ns() - t0 > RMW_MAX_NS)
                break;
            cl->retries++;
        }
        rc = kv_get(db, key, klen, base, &val, &vlen, &version);
        if (rc == KV_ENOTFOUND) {
            o.if_absent = 1;
        } else if (rc != KV_OK) {
            return rc;
        } else {
            int bad = parse_i64(val, vlen, &n) != 0;
            kv_free(val);
            if (bad)
                return KV_EINVAL;
            if (n == INT64_MAX)
                return KV_ERANGE;
            o.if_version = version;
        }
        len = snprintf(buf, sizeof buf, "%lld", (long long)(n + 1));
        rc = kv_put(db, key, klen, buf, (size_t)len, &o, NULL);
        if (rc != KV_ECONFLICT) {
            *unknown = outcome_unknown(rc);
            return rc;
        }
    }
    return KV_ECONFLICT;
}

/* Counts a failed operation of code RC. */
static void count_error(struct bench_client *cl, int rc)
{
    int idx = -rc;

    if (idx <= 0 || idx >= BENCH_NCODES)
        idx = 0;
    cl->errors++;
    cl->by_code[idx]++;
}

/* Writes the client's slice of the key space once, untimed (read workload).
 * Transient failures (timeouts, no serving node yet) are retried a few
 * times. Returns KV_OK or the code of the put that failed. */
static int preload(struct bench_client *cl, kv *db, const void *val,
                   size_t vlen)
{
    const struct bench_config *cfg = cl->sh->cfg;
    kv_opts o = {0};
    char key[48];
    uint64_t k;
    int rc = KV_OK, attempt;

    o.timeout_ms = cfg->timeout_ms;
    for (k = cl->first_key; k < cl->end_key; k++) {
        size_t klen = bench_key(key, sizeof key, k);
        for (attempt = 0; attempt < PRELOAD_ATTEMPTS; attempt++) {
            rc = kv_put(db, key, klen, val, vlen, &o, NULL);
            if (rc != KV_ETIMEDOUT && rc != KV_EUNAVAILABLE)
                break;
        }
        if (rc != KV_OK) {
            snprintf(cl->setup_err, sizeof cl->setup_err,
                     "client %u: preload put %s: %s", cl->index, key,
                     kv_errmsg(db));
            return rc;
        }
    }
    return KV_OK;
}

/* The timed loop of one client. */
static void run_ops(struct bench_client *cl, kv *db, const void *val,
                    size_t vlen)
{
    const struct bench_config *cfg = cl->sh->cfg;
    kv_opts o = {0};
    char key[48];
    uint64_t i;

    o.timeout_ms = cfg->timeout_ms;
    for (i = 0; i < cl->nops; i++) {
        uint64_t r = next_rand(&cl->rng);
        size_t klen = bench_key(key, sizeof key, (r >> 1) % cfg->keys);
        int is_read = cfg->workload == BENCH_READ ||
                      (cfg->workload == BENCH_MIXED && (r & 1));
        int incr = bench_is_incr(cfg->workload), unknown = 0;
        uint64_t t0, t1;
        int rc;

        if (incr)
            klen = incr_key(cl->sh, key, sizeof key, (r >> 1) % cfg->keys);
        t0 = now_ns();
        if (cfg->workload == BENCH_INCR_PROC) {
            rc = incr_proc_op(db, &o, key, klen, &unknown);
        } else if (cfg->workload == BENCH_INCR_RMW) {
            rc = incr_rmw_op(cl, db, &o, key, klen, &unknown);
        } else if (cfg->workload == BENCH_TXN) {
            char key2[48];
            size_t klen2 = 0;
            txn_keys(cl->sh, (r >> 1) % cfg->keys, key, &klen, key2, &klen2);
            rc = txn_op(db, &o, key, klen, key2, klen2, val, vlen);
        } else if (is_read) {
            void *got = NULL;
            size_t glen = 0;
            rc = kv_get(db, key, klen, &o, &got, &glen, NULL);
            if (rc == KV_OK)
                kv_free(got);
        } else {
            rc = kv_put(db, key, klen, val, vlen, &o, NULL);
        }
        t1 = now_ns();
        cl->lat[i] = t1 - t0;
        if (incr && rc == KV_OK)
            cl->increments++;
        if (incr && unknown)
            cl->timed_out++;
        if (rc == KV_ENOTFOUND && is_read)
            cl->not_found++;
        else if (rc != KV_OK)
            count_error(cl, rc);
        atomic_fetch_add_explicit(&cl->sh->done, 1, memory_order_relaxed);
    }
}

/* Fills OP with the next operation of a pipelined thread. */
static void next_op(struct bench_client *cl, struct admin_op *op, char *key,
                    size_t keycap, const void *val, size_t vlen, uint64_t k,
                    int preload_op)
{
    const struct bench_config *cfg = cl->sh->cfg;
    uint64_t r = next_rand(&cl->rng);
    int is_read = !preload_op && (cfg->workload == BENCH_READ ||
                                  (cfg->workload == BENCH_MIXED && (r & 1)));
    memset(op, 0, sizeof *op);
    op->kind = is_read ? ADMIN_GET : ADMIN_PUT;
    op->klen = bench_key(key, keycap, preload_op ? k : (r >> 1) % cfg->keys);
    op->key = key;
    op->val = val;
    op->vlen = vlen;
    op->timeout_ms = cfg->timeout_ms;
}

/* Runs COUNT operations with up to cl->slots in flight on DB; with LAT,
 * records each latency (timed phase), else preloads keys from FIRST. */
static int run_pipelined(struct bench_client *cl, kv *db, const void *val,
                         size_t vlen, uint64_t count, uint64_t *lat,
                         uint64_t first)
{
    unsigned n = cl->slots;
    struct admin_op *ops = calloc(n, sizeof *ops);
    char(*keys)[48] = calloc(n, sizeof *keys);
    uint64_t *t0 = calloc(n, sizeof *t0);
    unsigned *done = calloc(n, sizeof *done);
    uint64_t issued = 0, finished = 0;
    int rc = ops && keys && t0 && done ? admin_pipeline(db, n) : KV_ENOMEM;
    for (unsigned s = 0; rc == KV_OK && s < n && issued < count; s++) {
        next_op(cl, &ops[s], keys[s], sizeof keys[s], val, vlen, first + issued,
                lat == NULL);
        t0[s] = now_ns();
        rc = admin_submit(db, s, &ops[s]);
        issued++;
    }
    while (rc == KV_OK && finished < issued) {
        int got = admin_poll(db, 100, done, n);
        if (got < 0) {
            rc = got;
            break;
        }
        for (int j = 0; j < got; j++) {
            unsigned s = done[j];
            int orc = ops[s].rc;
            if (lat) {
                lat[finished] = now_ns() - t0[s];
                if (orc == KV_ENOTFOUND && ops[s].kind == ADMIN_GET)
                    cl->not_found++;
                else if (orc != KV_OK)
                    count_error(cl, orc);
                atomic_fetch_add_explicit(&cl->sh->done, 1,
                                          memory_order_relaxed);
            } else if (orc != KV_OK) {
                snprintf(cl->setup_err, sizeof cl->setup_err,
                         "client %u: preload put: %s", cl->index,
                         kv_strerror(orc));
                rc = orc;
            }
            finished++;
            if (rc == KV_OK && issued < count) {
                next_op(cl, &ops[s], keys[s], sizeof keys[s], val, vlen,
                        first + issued, lat == NULL);
                t0[s] = now_ns();
                rc = admin_submit(db, s, &ops[s]);
                issued++;
            }
        }
    }
    /* On an error, wait for what is in flight (bounded by its timeouts). */
    while (finished < issued) {
        int got = admin_poll(db, 100, done, n);
        if (got < 0)
            break;
        finished += (uint64_t)got;
    }
    free(ops);
    free(keys);
    free(t0);
    free(done);
    return rc;
}

/* A client thread: setup, wait for the start, run, report. */
static void *client_main(void *arg)
{
    struct bench_client *cl = arg;
    struct bench_shared *sh = cl->sh;
    const struct bench_config *cfg = sh->cfg;
    kv_open_opts oo = {0};
    kv *db = NULL;
    int go;

    oo.timeout_ms = cfg->timeout_ms;
    cl->setup_rc = kv_open(cfg->target, &oo, &db);
    if (cl->setup_rc != KV_OK) {
        db = NULL;
        snprintf(cl->setup_err, sizeof cl->setup_err, "client %u: open %s: %s",
                 cl->index, cfg->target, kv_errmsg(NULL));
    } else if (cfg->workload == BENCH_READ) {
        cl->setup_rc = cl->slots > 1
                           ? run_pipelined(cl, db, sh->value, cfg->value_size,
                                           cl->end_key - cl->first_key, NULL,
                                           cl->first_key)
                           : preload(cl, db, sh->value, cfg->value_size);
    }

    pthread_mutex_lock(&sh->mu);
    sh->ready++;
    pthread_cond_broadcast(&sh->cv);
    while (sh->go == 0)
        pthread_cond_wait(&sh->cv, &sh->mu);
    go = sh->go;
    pthread_mutex_unlock(&sh->mu);

    if (go > 0 && cl->setup_rc == KV_OK && cl->slots > 1)
        run_pipelined(cl, db, sh->value, cfg->value_size, cl->nops, cl->lat, 0);
    else if (go > 0 && cl->setup_rc == KV_OK)
        run_ops(cl, db, sh->value, cfg->value_size);
    clock_gettime(CLOCK_MONOTONIC, &cl->end);
    kv_close(db);
    return NULL;
}

/* Seconds between A and B. */
static double elapsed(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) +
           (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

/* Sorts latencies ascending. */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

/* The nearest-rank Q-quantile of the N sorted values V, in ms. */
static double quantile_ms(const uint64_t *v, uint64_t n, double q)
{
    uint64_t rank;

    if (n == 0)
        return 0.0;
    rank = (uint64_t)(q * (double)n);
    if ((double)rank < q * (double)n)
        rank++;
    if (rank == 0)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)v[rank - 1] / 1e6;
}

/* Prints a progress line on stderr until every operation is done. */
static void show_progress(struct bench_shared *sh, uint64_t total, uint64_t t0)
{
    struct timespec nap = {0, PROGRESS_NS};
    uint64_t done;

    for (;;) {
        double secs;
        done = atomic_load_explicit(&sh->done, memory_order_relaxed);
        secs = (double)(now_ns() - t0) / 1e9;
        fprintf(stderr, "\rbench: %llu/%llu ops, %.0f ops/s   ",
                (unsigned long long)done, (unsigned long long)total,
                secs > 0 ? (double)done / secs : 0.0);
        if (done >= total)
            break;
        nanosleep(&nap, NULL);
    }
    fprintf(stderr, "\r%60s\r", "");
}

/* Asks the target of CFG how many shards it has (an embedded database is
 * one). Returns KV_OK and *N, or the code of the failure (then ERR says
 * what failed). */
static int shard_count(const struct bench_config *cfg, uint32_t *n, char *err,
                       size_t errlen)
{
    kv_open_opts oo = {0};
    kv *db = NULL;
    int rc;

    oo.timeout_ms = cfg->timeout_ms;
    rc = kv_open(cfg->target, &oo, &db);
    if (rc != KV_OK) {
        snprintf(err, errlen, "open %s: %s", cfg->target, kv_errmsg(NULL));
        return rc;
    }
    if (admin_is_embedded(db)) {
        *n = 1;
        goto out;
    }
    rc = KV_EUNAVAILABLE;
    for (size_t i = 0; i < admin_node_count(db) && rc != KV_OK; i++) {
        Kv__StatusResult *st = NULL;
        if (admin_status(db, i, SHARDS_TIMEOUT_MS, &st) != KV_OK)
            continue;
        if (st->shards > 0) {
            *n = st->shards;
            rc = KV_OK;
        }
        admin_status_free(st);
    }
    if (rc != KV_OK)
        snprintf(err, errlen, "no node of %s told its shard count",
                 cfg->target);
out:
    kv_close(db);
    return rc;
}

/* Checks the txn workload's settings and finds the shard count for
 * cross-shard keys. Returns KV_OK or KV_EINVAL (ERR says why), or the code
 * of shard_count(). */
static int txn_setup(const struct bench_config *cfg, struct bench_shared *sh,
                     char *err, size_t errlen)
{
    int rc;

    sh->nshards = 1;
    if (cfg->txn_keys != BENCH_TXN_SAME && cfg->txn_keys != BENCH_TXN_CROSS) {
        snprintf(err, errlen, "one run measures same or cross keys");
        return KV_EINVAL;
    }
    if (cfg->threads != 0 && cfg->threads != cfg->clients) {
        snprintf(err, errlen,
                 "the txn workload needs a thread per client (--threads "
                 "equal to --clients, or no --threads)");
        return KV_EINVAL;
    }
    if (cfg->txn_keys == BENCH_TXN_SAME)
        return KV_OK;
    rc = shard_count(cfg, &sh->nshards, err, errlen);
    if (rc == KV_OK && sh->nshards < 2) {
        snprintf(err, errlen,
                 "%s has one shard: --txn-keys cross needs a cluster of "
                 "several",
                 cfg->target);
        rc = KV_EINVAL;
    }
    return rc;
}

/* Reads the incr workload's keys back (a scan of the run's prefix, again
 * from the start after a transient error) into res->verify_*: their sum,
 * how many exist, and whether the sum is what the run acknowledged (at
 * least res->increments, at most that plus res->timed_out). A key outside
 * the run's N or a value that is no decimal int64 fails the check too. */
static void incr_verify(const struct bench_config *cfg,
                        const struct bench_shared *sh, struct bench_result *res)
{
    kv_open_opts oo = {0};
    kv_scan_opts so = {0};
    kv_opts o = {0};
    kv *db = NULL;
    int rc, attempt;

    res->verified = 1;
    oo.timeout_ms = cfg->timeout_ms;
    o.timeout_ms = cfg->timeout_ms;
    so.prefix = sh->prefix;
    so.prefix_len = sh->prefix_len;
    rc = kv_open(cfg->target, &oo, &db);
    if (rc != KV_OK) {
        snprintf(res->verify_msg, sizeof res->verify_msg, "open %s: %s",
                 cfg->target, kv_errmsg(NULL));
        res->verify_rc = rc;
        return;
    }
    for (attempt = 0; attempt < VERIFY_ATTEMPTS; attempt++) {
        kv_iter *it = NULL;
        const void *k, *v;
        size_t klen, vlen;
        int64_t sum = 0, n;

        res->verify_found = 0;
        rc = kv_scan(db, &so, &o, &it);
        while (rc == KV_OK &&
               (rc = kv_iter_next(it, &k, &klen, &v, &vlen, NULL)) == KV_OK) {
            const char *ks = k; /* "PREFIX" "k" N, N < cfg->keys */
            size_t at = sh->prefix_len + 1;
            int64_t i;
            if (klen <= at || ks[at - 1] != 'k' || ks[at] == '-' ||
                parse_i64(ks + at, klen - at, &i) != 0 ||
                (uint64_t)i >= cfg->keys) {
                snprintf(res->verify_msg, sizeof res->verify_msg,
                         "a key of the run that it never wrote (%.*s)",
                         (int)(klen > 64 ? 64 : klen), (const char *)k);
                rc = KV_ECORRUPT;
                break;
            }
            if (parse_i64(v, vlen, &n) != 0 || n < 0 || n > INT64_MAX - sum) {
                snprintf(res->verify_msg, sizeof res->verify_msg,
                         "key %.*s holds %.*s, not a count",
                         (int)(klen > 64 ? 64 : klen), (const char *)k,
                         (int)(vlen > 24 ? 24 : vlen), (const char *)v);
                rc = KV_ECORRUPT;
                break;
            }
            sum += n;
            res->verify_found++;
        }
        kv_iter_free(it);
        if (rc == KV_EOF) {
            res->verify_sum = sum;
            rc = KV_OK;
            break;
        }
        if (rc != KV_ETIMEDOUT && rc != KV_EUNAVAILABLE)
            break;
    }
    if (rc != KV_OK && res->verify_msg[0] == '\0')
        snprintf(res->verify_msg, sizeof res->verify_msg,
                 "reading the keys back: %s", kv_errmsg(db));
    kv_close(db);
    if (rc == KV_OK) {
        uint64_t s = (uint64_t)res->verify_sum;
        if (s < res->increments)
            snprintf(res->verify_msg, sizeof res->verify_msg,
                     "sum %llu < acknowledged %llu: increments were lost",
                     (unsigned long long)s,
                     (unsigned long long)res->increments);
        else if (s - res->increments > res->timed_out)
            snprintf(res->verify_msg, sizeof res->verify_msg,
                     "sum %llu > acknowledged %llu + %llu timed out: "
                     "increments were applied twice",
                     (unsigned long long)s, (unsigned long long)res->increments,
                     (unsigned long long)res->timed_out);
        if (res->verify_msg[0] != '\0')
            rc = KV_ECORRUPT;
    }
    res->verify_rc = rc;
}

/* Runs the benchmark (see bench.h). */
int bench_run(const struct bench_config *cfg, struct bench_result *res,
              char *err, size_t errlen)
{
    struct bench_shared sh;
    struct bench_client *cls = NULL;
    uint64_t *lat = NULL, off = 0, seed;
    unsigned i, created = 0, nthreads;
    struct timespec start, end;
    int rc = KV_OK, go;

    memset(res, 0, sizeof *res);
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (cfg->clients == 0 || cfg->clients > BENCH_MAX_CLIENTS ||
        cfg->ops == 0 || cfg->ops > BENCH_MAX_OPS || cfg->keys == 0 ||
        cfg->keys > BENCH_MAX_KEYS || cfg->value_size > BENCH_MAX_VALUE) {
        snprintf(err, errlen, "settings out of range");
        return KV_EINVAL;
    }
    memset(&sh, 0, sizeof sh);
    sh.cfg = cfg;
    atomic_init(&sh.done, 0);
    if (pthread_mutex_init(&sh.mu, NULL) != 0) {
        snprintf(err, errlen, "mutex");
        return KV_ENOMEM;
    }
    if (pthread_cond_init(&sh.cv, NULL) != 0) {
        snprintf(err, errlen, "condition variable");
        rc = KV_ENOMEM;
        goto out_mutex;
    }
    if (cfg->workload == BENCH_TXN &&
        (rc = txn_setup(cfg, &sh, err, errlen)) != KV_OK)
        goto out_cond;
    if (bench_is_incr(cfg->workload) && cfg->threads != 0 &&
        cfg->threads != cfg->clients) {
        snprintf(err, errlen,
                 "the %s workload needs a thread per client (--threads "
                 "equal to --clients, or no --threads)",
                 bench_workload_name(cfg->workload));
        rc = KV_EINVAL;
        goto out_cond;
    }
    nthreads = blocking_workload(cfg->workload) ? cfg->clients : cfg->threads;
    if (nthreads == 0)
        /* Embedded: one thread per client (each call blocks). Cluster:
         * one thread pipelines up to 64 clients; requests queued together
         * on a connection share its system calls, so more threads than
         * that only add wake-ups (on 2 cores, 4 threads ran reads 45%
         * slower than 1). */
        nthreads = strncmp(cfg->target, "embedded:", 9) == 0
                       ? cfg->clients
                       : (cfg->clients + 63) / 64;
    if (nthreads > cfg->clients)
        nthreads = cfg->clients;
    if (nthreads < cfg->clients && strncmp(cfg->target, "embedded:", 9) == 0) {
        snprintf(err, errlen, "an embedded target needs a thread per client");
        rc = KV_EINVAL;
        goto out_cond;
    }
    cls = calloc(nthreads, sizeof *cls);
    lat = malloc(cfg->ops * sizeof *lat);
    sh.value = malloc(cfg->value_size ? cfg->value_size : 1);
    if (cls == NULL || lat == NULL || sh.value == NULL) {
        snprintf(err, errlen, "memory for %llu latencies and the value",
                 (unsigned long long)cfg->ops);
        rc = KV_ENOMEM;
        goto out_mem;
    }
    seed = (now_ns() ^ (uint64_t)getpid() << 32) | 1;
    for (off = 0; off < cfg->value_size; off++)
        sh.value[off] = (unsigned char)('a' + next_rand(&seed) % 26);
    off = 0;
    snprintf(sh.prefix, sizeof sh.prefix, "bench/incr/%016llx/",
             (unsigned long long)next_rand(&seed));
    sh.prefix_len = strlen(sh.prefix);
    for (i = 0; i < nthreads; i++) {
        struct bench_client *cl = &cls[i];
        cl->index = i;
        cl->sh = &sh;
        cl->slots = cfg->clients / nthreads + (i < cfg->clients % nthreads);
        cl->nops = cfg->ops / nthreads + (i < cfg->ops % nthreads);
        cl->lat = lat + off;
        off += cl->nops;
        cl->first_key = cfg->keys * i / nthreads;
        cl->end_key = cfg->keys * (i + 1) / nthreads;
        cl->rng = (seed + (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ULL) | 1;
    }

    for (i = 0; i < nthreads; i++) {
        if (pthread_create(&cls[i].tid, NULL, client_main, &cls[i]) != 0) {
            snprintf(err, errlen, "cannot start client thread %u", i);
            rc = KV_ENOMEM;
            break;
        }
        created++;
    }
    if (created > 0 && cfg->workload == BENCH_READ && isatty(2))
        fprintf(stderr, "bench: writing %llu keys first...\r",
                (unsigned long long)cfg->keys);
    pthread_mutex_lock(&sh.mu);
    while (sh.ready < created)
        pthread_cond_wait(&sh.cv, &sh.mu);
    for (i = 0; i < created && rc == KV_OK; i++) {
        if (cls[i].setup_rc != KV_OK) {
            rc = cls[i].setup_rc;
            snprintf(err, errlen, "%s", cls[i].setup_err);
        }
    }
    sh.go = rc == KV_OK ? 1 : -1;
    go = sh.go;
    clock_gettime(CLOCK_MONOTONIC, &start);
    pthread_cond_broadcast(&sh.cv);
    pthread_mutex_unlock(&sh.mu);

    if (go > 0 && isatty(2))
        show_progress(&sh, cfg->ops, now_ns());
    for (i = 0; i < created; i++)
        pthread_join(cls[i].tid, NULL);
    if (rc != KV_OK)
        goto out_mem;

    end = start;
    for (i = 0; i < nthreads; i++) {
        unsigned c;
        if (elapsed(&end, &cls[i].end) > 0)
            end = cls[i].end;
        res->errors += cls[i].errors;
        res->not_found += cls[i].not_found;
        res->increments += cls[i].increments;
        res->timed_out += cls[i].timed_out;
        res->retries += cls[i].retries;
        for (c = 0; c < BENCH_NCODES; c++)
            res->by_code[c] += cls[i].by_code[c];
    }
    res->ops = cfg->ops;
    res->seconds = elapsed(&start, &end);
    if (bench_is_incr(cfg->workload))
        res->ops_per_sec =
            res->seconds > 0 ? (double)res->increments / res->seconds : 0.0;
    else
        res->ops_per_sec =
            res->seconds > 0 ? (double)res->ops / res->seconds : 0.0;
    qsort(lat, cfg->ops, sizeof *lat, cmp_u64);
    res->p50_ms = quantile_ms(lat, cfg->ops, 0.50);
    res->p95_ms = quantile_ms(lat, cfg->ops, 0.95);
    res->p99_ms = quantile_ms(lat, cfg->ops, 0.99);
    res->max_ms = (double)lat[cfg->ops - 1] / 1e6;
    if (bench_is_incr(cfg->workload))
        incr_verify(cfg, &sh, res);

out_mem:
    free(sh.value);
    free(lat);
    free(cls);
out_cond:
    pthread_cond_destroy(&sh.cv);
out_mutex:
    pthread_mutex_destroy(&sh.mu);
    return rc;
}

/* Prints the result (see bench.h). */
void bench_print(FILE *out, const struct bench_config *cfg,
                 const struct bench_result *res)
{
    int c, first = 1;
    int txn = cfg->workload == BENCH_TXN;
    int incr = bench_is_incr(cfg->workload);
    int rmw = cfg->workload == BENCH_INCR_RMW;

    if (cfg->json) {
        fprintf(out, "{\"workload\":\"%s\",",
                bench_workload_name(cfg->workload));
        if (txn)
            fprintf(out, "\"txn_keys\":\"%s\",",
                    bench_txn_keys_name(cfg->txn_keys));
        fprintf(out,
                "\"clients\":%u,\"ops\":%llu,"
                "\"errors\":%llu,\"seconds\":%.6f,\"ops_per_sec\":%.1f,"
                "\"p50_ms\":%.4f,\"p95_ms\":%.4f,\"p99_ms\":%.4f,"
                "\"max_ms\":%.4f,\"not_found\":%llu,\"value_size\":%zu,"
                "\"keys\":%llu,\"errors_by_code\":{",
                cfg->clients, (unsigned long long)res->ops,
                (unsigned long long)res->errors, res->seconds, res->ops_per_sec,
                res->p50_ms, res->p95_ms, res->p99_ms, res->max_ms,
                (unsigned long long)res->not_found, cfg->value_size,
                (unsigned long long)cfg->keys);
        for (c = 0; c < BENCH_NCODES; c++) {
            if (res->by_code[c] == 0)
                continue;
            fprintf(out, "%s\"%s\":%llu", first ? "" : ",",
                    c ? cli_code_name(-c) : "unknown",
                    (unsigned long long)res->by_code[c]);
            first = 0;
        }
        fputc('}', out);
        if (incr) {
            fprintf(out, ",\"increments\":%llu,\"timed_out\":%llu",
                    (unsigned long long)res->increments,
                    (unsigned long long)res->timed_out);
            if (rmw)
                fprintf(out, ",\"retries\":%llu",
                        (unsigned long long)res->retries);
            fprintf(out, ",\"verify\":{\"ok\":%s",
                    res->verify_rc == KV_OK ? "true" : "false");
            if (res->verify_rc == KV_OK || res->verify_rc == KV_ECORRUPT)
                fprintf(out, ",\"sum\":%lld,\"found\":%llu",
                        (long long)res->verify_sum,
                        (unsigned long long)res->verify_found);
            fprintf(out, ",\"keys\":%llu,\"acknowledged\":%llu",
                    (unsigned long long)cfg->keys,
                    (unsigned long long)res->increments);
            if (res->verify_rc != KV_OK) {
                fprintf(out, ",\"error\":\"%s\",\"message\":\"",
                        cli_code_name(res->verify_rc));
                for (const char *m = res->verify_msg; *m != '\0'; m++) {
                    unsigned char ch = (unsigned char)*m;
                    if (ch == '"' || ch == '\\')
                        fprintf(out, "\\%c", ch);
                    else if (ch < 0x20 || ch >= 0x7f)
                        fprintf(out, "\\u%04x", ch);
                    else
                        fputc(ch, out);
                }
                fputc('"', out);
            }
            fputc('}', out);
        }
        fputs("}\n", out);
        return;
    }
    fprintf(out, "workload %s\n", bench_workload_name(cfg->workload));
    if (txn)
        fprintf(out, "txn_keys %s\n", bench_txn_keys_name(cfg->txn_keys));
    fprintf(out,
            "clients %u\nops %llu\nerrors %llu\n"
            "not_found %llu\nseconds %.3f\nops_per_sec %.1f\n"
            "p50_ms %.3f\np95_ms %.3f\np99_ms %.3f\nmax_ms %.3f\n",
            cfg->clients, (unsigned long long)res->ops,
            (unsigned long long)res->errors, (unsigned long long)res->not_found,
            res->seconds, res->ops_per_sec, res->p50_ms, res->p95_ms,
            res->p99_ms, res->max_ms);
    for (c = 0; c < BENCH_NCODES; c++)
        if (res->by_code[c] != 0)
            fprintf(out, "error %s %llu\n", c ? cli_code_name(-c) : "unknown",
                    (unsigned long long)res->by_code[c]);
    if (!incr)
        return;
    fprintf(out, "keys %llu\nincrements %llu\ntimed_out %llu\n",
            (unsigned long long)cfg->keys, (unsigned long long)res->increments,
            (unsigned long long)res->timed_out);
    if (rmw)
        fprintf(out, "retries %llu\n", (unsigned long long)res->retries);
    if (res->verify_rc == KV_OK || res->verify_rc == KV_ECORRUPT)
        fprintf(out, "verify: sum %lld of %llu keys = acknowledged %llu\n",
                (long long)res->verify_sum, (unsigned long long)cfg->keys,
                (unsigned long long)res->increments);
}

/* The most frequent error code (see bench.h). */
int bench_top_error(const struct bench_result *res)
{
    uint64_t best = 0;
    int c, code = KV_OK;

    for (c = 0; c < BENCH_NCODES; c++) {
        if (res->by_code[c] > best) {
            best = res->by_code[c];
            code = c ? -c : KV_EINTERNAL;
        }
    }
    return code;
}

/* Parses a workload name (see bench.h). */
int bench_parse_workload(const char *s, enum bench_workload *out)
{
    if (strcmp(s, "write") == 0)
        *out = BENCH_WRITE;
    else if (strcmp(s, "read") == 0)
        *out = BENCH_READ;
    else if (strcmp(s, "mixed") == 0)
        *out = BENCH_MIXED;
    else if (strcmp(s, "txn") == 0)
        *out = BENCH_TXN;
    else if (strcmp(s, "incr-proc") == 0)
        *out = BENCH_INCR_PROC;
    else if (strcmp(s, "incr-rmw") == 0)
        *out = BENCH_INCR_RMW;
    else
        return -1;
    return 0;
}

/* The name of a workload (see bench.h). */
const char *bench_workload_name(enum bench_workload w)
{
    switch (w) {
    case BENCH_READ:
        return "read";
    case BENCH_MIXED:
        return "mixed";
    case BENCH_TXN:
        return "txn";
    case BENCH_INCR_PROC:
        return "incr-proc";
    case BENCH_INCR_RMW:
        return "incr-rmw";
    case BENCH_WRITE:
    default:
        return "write";
    }
}

/* Whether W is an incr workload (see bench.h). */
int bench_is_incr(enum bench_workload w)
{
    return w == BENCH_INCR_PROC || w == BENCH_INCR_RMW;
}

/* Parses where a transaction's keys live (see bench.h). */
int bench_parse_txn_keys(const char *s, enum bench_txn_keys *out)
{
    if (strcmp(s, "same") == 0)
        *out = BENCH_TXN_SAME;
    else if (strcmp(s, "cross") == 0)
        *out = BENCH_TXN_CROSS;
    else if (strcmp(s, "both") == 0)
        *out = BENCH_TXN_BOTH;
    else
        return -1;
    return 0;
}

/* The name of where a transaction's keys live (see bench.h). */
const char *bench_txn_keys_name(enum bench_txn_keys k)
{
    switch (k) {
    case BENCH_TXN_SAME:
        return "same";
    case BENCH_TXN_CROSS:
        return "cross";
    case BENCH_TXN_BOTH:
    default:
        return "both";
    }
}
