/*
 * chaos - kills and pauses real kvnode processes under load, then checks
 * that no acknowledged write was lost and that everything the clients saw
 * is linearizable (register workload), that transactions conserved the
 * bank's money and left nothing in flight (bank workload, bank.c), or that
 * procedure calls were applied exactly once when acknowledged and at most
 * once otherwise (incr workload, incr.c).
 *
 *   chaos [--duration S] [--clients N] [--keys N] [--seed S]
 *         [--kill-every MS] [--op-timeout MS] [--session-ttl S]
 *         [--compact-entries N] [--workload register|bank|incr]
 *         [--accounts N] [--keep]
 *
 * This file is the driver (cluster, nemesis, probe, watchdog, options) and
 * the register workload; chaos.h is what the other workloads share with
 * it. With --workload bank or incr, the clients and the end checks are
 * bank.c's or incr.c's and everything else below is the same.
 *
 * It starts a 3-node cluster (8 shards, 3 replicas) with the test harness
 * (tests/cluster/harness.h). N client threads, each with its own kv handle,
 * run a register workload on K keys (get, put, put if_version, put
 * if_absent, delete, delete if_version) and record every call and its result
 * with CLOCK_MONOTONIC times in a lincheck history (tests/lincheck). A write
 * that ends in KV_ETIMEDOUT or KV_EUNAVAILABLE has an unknown outcome; a read
 * that fails carries no information and is left out.
 *
 * The nemesis is the main thread. Every few seconds it kills a node with
 * SIGKILL (a random one, or the leader of a random shard) and restarts it
 * 1-3 s later; every fourth action it instead stops a shard leader with
 * SIGSTOP for longer than an election timeout and resumes it. It must be the
 * main thread: the harness ties each node's life to the thread that forked
 * it (PR_SET_PDEATHSIG), so nodes are only ever started by a thread that
 * lives until they are stopped. A probe thread writes to the failed leader's
 * shard every 10 ms and reports how long the shard stayed unwritable.
 *
 * At the end every node runs again, each key is read once more into the
 * history, the nodes are stopped with SIGTERM, and three checks run:
 * linearizable (lin_check), no lost writes (an independent look at the final
 * reads), cluster healthy (every restart worked, no node died on its own,
 * every node exited 0, every failed shard became writable again). The
 * history is written to DIR/history.txt; DIR is kept on failure or --keep.
 * The last line printed is "N passed, M failed" (3 checks for register;
 * 4 for bank: total conserved, no negative balance, no transaction left in
 * flight after healing, cluster healthy; 4 for incr: counts within bounds,
 * replies increasing, no call failed for sure, cluster healthy).
 *
 * It must never leave a process or a directory behind: nodes are signalled
 * by PID only, every wait is bounded, and a watchdog thread kills the nodes
 * and removes the temp directory when the run exceeds duration + 60 s (bank:
 * + 105 s, for its final audit and wait for transactions in flight; incr:
 * + 90 s, for its final reads) or on SIGINT/SIGTERM.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "../cluster/harness.h"
#include "../lincheck/lincheck.h"
#include "admin.h"
#include "chaos.h"
#include "kv.h"

#ifndef WATCHDOG_SLACK_MS
#define WATCHDOG_SLACK_MS 60000 /* the run may take duration + this */
#endif
#define MAX_CLIENTS 64
#define MAX_KEYS 10000
#define MAX_OPS_PER_CLIENT 2000000u /* memory bound of one client's log */
#define VALUE_LEN 16                /* values are 16 hex digits */

#define STATUS_TIMEOUT_MS 500  /* one admin_status call */
#define REOPEN_MS 1000         /* with --session-ttl: life of a kv handle */
#define READY_TIMEOUT_MS 20000 /* every shard has a leader again */
#define PROBE_PERIOD_MS 10     /* the probe writes this often */
#define PROBE_TIMEOUT_MS 1000  /* timeout of one probe write */
#define PROBE_GIVE_UP_MS 30000 /* a shard unwritable this long: unhealthy */
#define WARM_TIMEOUT_MS 5000   /* the shard must be writable before a fault */
#define KILL_DOWN_MIN_MS 1000  /* a killed node stays down 1-3 s */
#define KILL_DOWN_SPAN_MS 2000
#define PAUSE_MIN_MS 1500 /* a paused leader stays stopped 1.5-2.5 s */
#define PAUSE_SPAN_MS 1000
#define STOP_SLACK_MS 10000   /* client threads stop within timeout + this */
#define FINAL_READ_TRIES 50   /* final read of one key: attempts, */
#define FINAL_READ_MS 30000   /* and time */
#define CHECK_MIN_MS 10000    /* lin_check gets at least this long */
#define CHECK_MARGIN_MS 15000 /* and leaves this before the watchdog */
#define MAX_LOG_COPY (64L * 1024 * 1024)
#define MIN_ACCOUNTS 2
#define MAX_ACCOUNTS 500

/* One thread's record of operations (lincheck form). */
struct oplog {
    struct lin_op *ops;
    size_t n, cap;
};

struct client {
    struct run *run;
    int idx;
    int started; /* its thread was created */
    pthread_t th;
    uint64_t rng;
    uint64_t seq;
    uint64_t *known; /* per key: the last version this client saw, 0 none */
    struct oplog log;
    int open_failed;
    int log_full;
    unsigned long read_errors; /* reads dropped (timeout, unavailable) */
    unsigned long bad_values;  /* reads of a value we never write */
    unsigned long errs[NERR];  /* unexpected codes, by -code */
    char errmsg[NERR][160];    /* the first message of each */
};

/* --- small helpers -------------------------------------------------------- */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Nanoseconds since the run began (always >= 1). */
static uint64_t rel_ns(const struct run *r)
{
    return mono_ns() - r->base_ns;
}

/* Seconds since the run began (see chaos.h). */
double chaos_rel_s(const struct run *r)
{
    return (double)(harness_now_ms() - r->start_ms) / 1000.0;
}

/* splitmix64 (see chaos.h). */
uint64_t chaos_rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* A number in [0, N) (see chaos.h). */
uint64_t chaos_rng_below(uint64_t *s, uint64_t n)
{
    return n == 0 ? 0 : chaos_rng_next(s) % n;
}

/* MS jittered uniformly into [MS/2, 3*MS/2]. */
static int jitter(uint64_t *s, int ms)
{
    return ms / 2 + (int)chaos_rng_below(s, (uint64_t)ms + 1);
}

/* Waits on r->cv (r->mu held) for at most MS milliseconds (see
 * chaos.h). */
void chaos_cv_wait_ms(struct run *r, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
}

static size_t key_text(int k, char *buf, size_t cap)
{
    return (size_t)snprintf(buf, cap, "chaos/%05d", k);
}

static void value_text(uint64_t v, char out[VALUE_LEN + 1])
{
    snprintf(out, VALUE_LEN + 1, "%016" PRIx64, v);
}

/* Parses a value this workload writes. Returns 0 or -1. */
static int value_parse(const void *buf, size_t len, uint64_t *v)
{
    const unsigned char *p = buf;
    uint64_t x = 0;
    if (len != VALUE_LEN || buf == NULL)
        return -1;
    for (size_t i = 0; i < len; i++) {
        unsigned d;
        if (p[i] >= '0' && p[i] <= '9')
            d = p[i] - '0';
        else if (p[i] >= 'a' && p[i] <= 'f')
            d = (unsigned)(p[i] - 'a') + 10;
        else
            return -1;
        x = x << 4 | d;
    }
    *v = x;
    return 0;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Sorts the N samples in V and writes their median and max. */
static void median_max(int *v, int n, int *med, int *max)
{
    *med = 0;
    *max = 0;
    if (n <= 0)
        return;
    qsort(v, (size_t)n, sizeof *v, cmp_int);
    *med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    *max = v[n - 1];
}

/* Copies the file SRC to DST (at most MAX_LOG_COPY bytes). Returns 0/-1. */
static int copy_file(const char *src, const char *dst)
{
    int rc = -1;
    long total = 0;
    char buf[65536];
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -1;
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0)
        goto out_in;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto out_out;
        if (n == 0 || total >= MAX_LOG_COPY)
            break;
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out, buf + done, (size_t)(n - done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                goto out_out;
            done += w;
        }
        total += n;
    }
    rc = 0;
out_out:
    close(out);
out_in:
    close(in);
    return rc;
}

/* --- process bookkeeping for the watchdog --------------------------------- */

/* Copies the node PIDs from the harness into r->pids (main thread only). */
static void pids_refresh(struct run *r)
{
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < NNODES; i++)
        r->pids[i] = r->cl != NULL ? cluster_node_pid(r->cl, i) : 0;
    pthread_mutex_unlock(&r->mu);
}

/* The number of checks a run of R's workload makes (each printed as an
 * "ok:"/"FAIL:" line and counted in the last line). */
static int nchecks(const struct run *r)
{
    return r->o.workload == WORKLOAD_REGISTER ? 3 : 4;
}

/* Ends the run at once from any thread: kills every node it knows with
 * SIGKILL (a node it does not know yet dies with this process through
 * PR_SET_PDEATHSIG), removes the harness root unless --keep, and exits 1. */
static void abort_run(struct run *r, const char *why)
{
    pid_t pids[CLUSTER_MAX_NODES];
    fflush(stdout);
    fprintf(stderr, "chaos: ABORT: %s\n", why);
    pthread_mutex_lock(&r->mu);
    memcpy(pids, r->pids, sizeof pids);
    pthread_mutex_unlock(&r->mu);
    for (int i = 0; i < NNODES; i++)
        if (pids[i] > 0)
            kill(pids[i], SIGKILL);
    harness_sleep_ms(200);
    if (r->root[0] != '\0') {
        if (r->o.keep)
            fprintf(stderr, "chaos: kept %s\n", r->root);
        else
            harness_rmtree(r->root);
    }
    printf("chaos: aborted (%s)\n0 passed, %d failed\n", why, nchecks(r));
    fflush(stdout);
    _exit(1);
}

/* The watchdog: aborts the run past its deadline or on SIGINT/SIGTERM;
 * returns when the main thread sets r->finished (and sends SIGUSR1). Those
 * signals are blocked in every thread, so only sigtimedwait here takes
 * them. */
static void *watchdog_main(void *arg)
{
    struct run *r = arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    for (;;) {
        pthread_mutex_lock(&r->mu);
        int finished = r->finished;
        pthread_mutex_unlock(&r->mu);
        if (finished)
            return NULL;
        int64_t left = r->watchdog_ms - harness_now_ms();
        if (left <= 0)
            abort_run(r, "watchdog: the run exceeded its time");
        if (left > 1000)
            left = 1000;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)left * 1000000L};
        if (left == 1000) {
            ts.tv_sec = 1;
            ts.tv_nsec = 0;
        }
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM)
            abort_run(r, "interrupted by a signal");
    }
}

/* --- the workload --------------------------------------------------------- */

enum wop { OP_GET, OP_PUT, OP_CAS, OP_INSERT, OP_DEL, OP_CDEL };

/* Makes room for one more operation. Returns 0, or -1 when the log is at
 * its bound or memory ran out (the client then stops: an operation that
 * could not be recorded must not be made). */
static int oplog_reserve(struct oplog *l)
{
    if (l->n < l->cap)
        return 0;
    if (l->cap >= MAX_OPS_PER_CLIENT)
        return -1;
    size_t cap = l->cap != 0 ? l->cap * 2 : 4096;
    struct lin_op *p = realloc(l->ops, cap * sizeof *p);
    if (p == NULL)
        return -1;
    l->ops = p;
    l->cap = cap;
    return 0;
}

static void oplog_release(struct oplog *l)
{
    free(l->ops);
    l->ops = NULL;
    l->n = l->cap = 0;
}

static int outcome_unknown(int rc)
{
    return rc == KV_ETIMEDOUT || rc == KV_EUNAVAILABLE;
}

static int pick_op(struct client *c, int key)
{
    uint64_t x = chaos_rng_below(&c->rng, 100);
    if (x < 30)
        return OP_GET;
    if (x < 55)
        return OP_PUT;
    if (x < 75)
        return c->known[key] != 0 ? OP_CAS : OP_GET;
    if (x < 85)
        return OP_INSERT;
    if (x < 95)
        return OP_DEL;
    return c->known[key] != 0 ? OP_CDEL : OP_DEL;
}

/* Marks OP as of unknown outcome. */
static void set_unknown(struct lin_op *op)
{
    op->outcome = LIN_OUT_UNKNOWN;
    op->ret = LIN_PENDING;
    op->out_version = 0;
}

/* One read. Returns whether OP is to be recorded. */
static int do_get(struct client *c, kv *db, const char *k, size_t kl,
                  const kv_opts *o, struct lin_op *op)
{
    struct run *r = c->run;
    void *val = NULL;
    size_t vl = 0;
    uint64_t ver = 0, v = 0;
    op->kind = LIN_READ;
    op->call = rel_ns(r);
    int rc = kv_get(db, k, kl, o, &val, &vl, &ver);
    op->ret = rel_ns(r);
    if (rc == KV_OK) {
        int bad = value_parse(val, vl, &v) != 0;
        kv_free(val);
        if (bad) {
            if (c->bad_values++ == 0)
                fprintf(stderr,
                        "chaos: client %d read a value it cannot "
                        "parse from %s\n",
                        c->idx, k);
            return 0;
        }
        op->outcome = LIN_OUT_OK;
        op->out_value = v;
        op->out_version = ver;
        c->known[op->key] = ver;
        return 1;
    }
    if (rc == KV_ENOTFOUND) {
        op->outcome = LIN_OUT_ABSENT;
        c->known[op->key] = 0;
        return 1;
    }
    if (outcome_unknown(rc))
        c->read_errors++;
    else
        chaos_note_error(c->errs, c->errmsg, db, rc);
    return 0;
}

/* One put: plain, if_version (CAS) or if_absent (INSERT). */
static void do_put(struct client *c, kv *db, int kind, const char *k, size_t kl,
                   kv_opts *o, struct lin_op *op)
{
    struct run *r = c->run;
    uint64_t ver = 0;
    char vt[VALUE_LEN + 1];
    op->value = ((uint64_t)(c->idx + 1) << 40) | ++c->seq;
    value_text(op->value, vt);
    op->kind = kind == OP_CAS      ? LIN_CAS
               : kind == OP_INSERT ? LIN_INSERT
                                   : LIN_WRITE;
    if (kind == OP_CAS) {
        o->if_version = c->known[op->key];
        op->expect_version = o->if_version;
    }
    o->if_absent = kind == OP_INSERT;
    op->call = rel_ns(r);
    int rc = kv_put(db, k, kl, vt, VALUE_LEN, o, &ver);
    op->ret = rel_ns(r);
    if (rc == KV_OK) {
        op->outcome = LIN_OUT_OK;
        op->out_version = ver;
        c->known[op->key] = ver;
        return;
    }
    c->known[op->key] = 0;
    if (rc == KV_ECONFLICT && kind != OP_PUT) {
        op->outcome = LIN_OUT_FAILED;
        return;
    }
    if (!outcome_unknown(rc))
        chaos_note_error(c->errs, c->errmsg, db, rc);
    set_unknown(op);
}

/* One delete: unconditional, or if_version. */
static void do_del(struct client *c, kv *db, int kind, const char *k, size_t kl,
                   kv_opts *o, struct lin_op *op)
{
    struct run *r = c->run;
    op->kind = LIN_DELETE;
    if (kind == OP_CDEL) {
        o->if_version = c->known[op->key];
        op->expect_version = o->if_version;
    }
    op->call = rel_ns(r);
    int rc = kv_del(db, k, kl, o);
    op->ret = rel_ns(r);
    c->known[op->key] = 0;
    if (rc == KV_OK) {
        op->outcome = LIN_OUT_OK;
        return;
    }
    if (rc == KV_ENOTFOUND) {
        op->outcome = LIN_OUT_ABSENT;
        return;
    }
    if (rc == KV_ECONFLICT && kind == OP_CDEL) {
        op->outcome = LIN_OUT_FAILED;
        return;
    }
    if (!outcome_unknown(rc))
        chaos_note_error(c->errs, c->errmsg, db, rc);
    set_unknown(op);
}

/* Makes one operation on a random key and records it (room is reserved). */
static void client_step(struct client *c, kv *db)
{
    struct run *r = c->run;
    int key = (int)chaos_rng_below(&c->rng, (uint64_t)r->o.keys);
    char k[32];
    size_t kl = key_text(key, k, sizeof k);
    kv_opts o = {.timeout_ms = (uint32_t)r->o.op_timeout_ms};
    struct lin_op op;
    memset(&op, 0, sizeof op);
    op.key = (uint64_t)key;
    op.client = c->idx;
    int kind = pick_op(c, key);
    int record = 1;
    uint64_t t0 = mono_ns();
    switch (kind) {
    case OP_GET:
        record = do_get(c, db, k, kl, &o, &op);
        break;
    case OP_PUT:
    case OP_CAS:
    case OP_INSERT:
        do_put(c, db, kind, k, kl, &o, &op);
        break;
    default:
        do_del(c, db, kind, k, kl, &o, &op);
        break;
    }
    if (record)
        c->log.ops[c->log.n++] = op;
    /* A call that failed at once (no node reachable) must not spin. */
    if ((op.outcome == LIN_OUT_UNKNOWN || !record) && mono_ns() - t0 < 5000000u)
        harness_sleep_ms(10);
}

static void *client_main(void *arg)
{
    struct client *c = arg;
    struct run *r = c->run;
    kv *db = NULL;
    kv_open_opts oo = {.timeout_ms = (uint32_t)r->o.op_timeout_ms};
    if (kv_open(r->conf, &oo, &db) != KV_OK) {
        fprintf(stderr, "chaos: client %d: kv_open: %s\n", c->idx,
                kv_errmsg(NULL));
        c->open_failed = 1;
        goto out;
    }
    int64_t opened = 0;
    while (!atomic_load(&r->stop_clients)) {
        if (oplog_reserve(&c->log) != 0) {
            c->log_full = 1;
            break;
        }
        client_step(c, db);
        db = chaos_next_call(r, db, &oo, &opened);
    }
    kv_close(db);
out:
    chaos_client_done(r);
    return NULL;
}

/* See chaos.h. */
kv *chaos_next_call(struct run *r, kv *db, const kv_open_opts *oo,
                    int64_t *opened_ms)
{
    int64_t now = harness_now_ms();
    if (!*opened_ms)
        *opened_ms = now;
    if (!r->o.session_ttl_s || now - *opened_ms < REOPEN_MS)
        return db;
    kv *fresh = NULL;
    if (kv_open(r->conf, oo, &fresh) != KV_OK)
        return db;
    kv_close(db);
    *opened_ms = now;
    return fresh;
}

/* One client thread finished (see chaos.h). */
void chaos_client_done(struct run *r)
{
    pthread_mutex_lock(&r->mu);
    r->clients_done++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* --- the failover probe --------------------------------------------------- */

/* Writes to the armed shard's probe key every PROBE_PERIOD_MS. The first
 * write called after the fault (probe_t0) that succeeds gives the sample:
 * its return time minus the fault time. */
static void *probe_main(void *arg)
{
    struct run *r = arg;
    kv *db = NULL;
    uint64_t n = 0;
    kv_open_opts oo = {.timeout_ms = PROBE_TIMEOUT_MS};
    if (kv_open(r->conf, &oo, &db) != KV_OK) {
        fprintf(stderr, "chaos: probe: kv_open: %s\n", kv_errmsg(NULL));
        db = NULL;
    }
    pthread_mutex_lock(&r->mu);
    while (!atomic_load(&r->stop_probe)) {
        int s = r->probe_shard;
        if (s < 0 || db == NULL) {
            chaos_cv_wait_ms(r, 100);
            continue;
        }
        pthread_mutex_unlock(&r->mu);
        kv_opts o = {.timeout_ms = PROBE_TIMEOUT_MS};
        char v[32];
        int vl = snprintf(v, sizeof v, "%" PRIu64, ++n);
        uint64_t call = rel_ns(r);
        int rc = kv_put(db, r->probe_key[s], strlen(r->probe_key[s]), v,
                        (size_t)vl, &o, NULL);
        uint64_t ret = rel_ns(r);
        pthread_mutex_lock(&r->mu);
        if (rc == KV_OK && r->probe_shard == s) {
            r->probe_warm = 1;
            if (r->probe_t0 != 0 && call >= r->probe_t0 && !r->probe_have) {
                r->probe_ms = (int64_t)((ret - r->probe_t0) / 1000000u);
                r->probe_have = 1;
            }
            pthread_cond_broadcast(&r->cv);
        }
        if (!atomic_load(&r->stop_probe))
            chaos_cv_wait_ms(r, PROBE_PERIOD_MS);
    }
    r->probe_done = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    kv_close(db);
    return NULL;
}

/* Points the probe at shard S and waits (at most WARM_TIMEOUT_MS) until a
 * write to it succeeds. Returns whether one did. */
static int probe_arm(struct run *r, int s)
{
    int64_t until = harness_now_ms() + WARM_TIMEOUT_MS;
    pthread_mutex_lock(&r->mu);
    r->probe_shard = s;
    r->probe_t0 = 0;
    r->probe_warm = 0;
    r->probe_have = 0;
    pthread_cond_broadcast(&r->cv);
    while (!r->probe_warm && harness_now_ms() < until)
        chaos_cv_wait_ms(r, 50);
    int warm = r->probe_warm;
    if (!warm)
        r->probe_shard = -1;
    pthread_mutex_unlock(&r->mu);
    return warm;
}

/* Marks now as the fault time of the armed shard. */
static void probe_fault(struct run *r)
{
    pthread_mutex_lock(&r->mu);
    r->probe_t0 = rel_ns(r);
    pthread_mutex_unlock(&r->mu);
}

/* Waits until the probe has a sample or PROBE_GIVE_UP_MS passed since the
 * fault, and disarms it. Returns the sample in ms, or -1. */
static int probe_result(struct run *r)
{
    int64_t ms = -1;
    pthread_mutex_lock(&r->mu);
    uint64_t give_up = r->probe_t0 + (uint64_t)PROBE_GIVE_UP_MS * 1000000u;
    while (!r->probe_have && rel_ns(r) < give_up)
        chaos_cv_wait_ms(r, 50);
    if (r->probe_have)
        ms = r->probe_ms;
    r->probe_shard = -1;
    pthread_mutex_unlock(&r->mu);
    return (int)ms;
}

/* Finds, for every shard, a key of the probe that hashes to it. */
static int probe_keys(struct run *r)
{
    int found = 0;
    for (unsigned n = 0; n < 100000 && found < NSHARDS; n++) {
        char k[48];
        int kl = snprintf(k, sizeof k, "chaos-probe/%u", n);
        uint32_t s = kv_shard_of(k, (size_t)kl, NSHARDS);
        if (s < NSHARDS && r->probe_key[s][0] == '\0') {
            memcpy(r->probe_key[s], k, (size_t)kl + 1);
            found++;
        }
    }
    return found == NSHARDS ? 0 : -1;
}

/* --- the nemesis ---------------------------------------------------------- */

/* Counts a health problem and prints it (see chaos.h). */
void chaos_note_error(unsigned long errs[NERR], char errmsg[NERR][160], kv *db,
                      int rc)
{
    int i = -rc;
    if (i <= 0 || i >= NERR)
        i = 0;
    if (errs[i]++ == 0)
        snprintf(errmsg[i], 160, "%s: %s", kv_strerror(rc), kv_errmsg(db));
}

void chaos_print_errors(const unsigned long errs[NERR],
                        const char *const msg[NERR])
{
    for (int e = 0; e < NERR; e++)
        if (errs[e] != 0)
            printf("chaos: unexpected result %s: %lu times (first: %s)\n",
                   e ? kv_strerror(-e) : "of a code this test does not know",
                   errs[e], msg[e]);
}

void chaos_problem(struct run *r, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    r->problems++;
    printf("chaos: PROBLEM at t=%.1fs: %s\n", chaos_rel_s(r), msg);
}

/* The harness index of the node with id ID, or -1. */
static int index_of_id(uint32_t id)
{
    return id >= 1 && id <= NNODES ? (int)id - 1 : -1;
}

/* The index in the admin handle's node list of harness node I, or -1. */
static long admin_index(struct run *r, int i)
{
    uint32_t id = cluster_node_id(r->cl, i);
    size_t n = admin_node_count(r->adm);
    for (size_t j = 0; j < n; j++)
        if (admin_node_id(r->adm, j) == id)
            return (long)j;
    return -1;
}

/* The status of harness node I (free with admin_status_free), or NULL
 * when it is not running or does not answer. */
static Kv__StatusResult *node_status(struct run *r, int i)
{
    long j = admin_index(r, i);
    Kv__StatusResult *st = NULL;
    if (j < 0 || !cluster_node_running(r->cl, i) ||
        admin_status(r->adm, (size_t)j, STATUS_TIMEOUT_MS, &st) != KV_OK)
        return NULL;
    return st;
}

/* Adds the snapshots node I installed since its start (it is about to be
 * killed, or the run ends). */
static void count_installs(struct run *r, int i)
{
    Kv__StatusResult *st = node_status(r, i);
    if (st == NULL)
        return;
    r->installs += st->snapshots_installed;
    admin_status_free(st);
}

/* With --compact-entries, nodes killed while the others write catch up
 * through snapshots: the run must have had some. */
static void installs_report(struct run *r)
{
    for (int i = 0; i < NNODES; i++)
        count_installs(r, i);
    printf("chaos: snapshots installed (counted at kills and at the end): "
           "%" PRIu64 "\n",
           r->installs);
    if (r->o.compact_entries && r->o.kill_every_ms && r->kills > 0 &&
        r->installs == 0)
        chaos_problem(r,
                      "no snapshot installed in %d s with "
                      "compact_log_entries = %d",
                      r->o.duration_s, r->o.compact_entries);
}

/* Prints how many client sessions the running nodes expired (each counts
 * since its last start). */
static void sessions_report(struct run *r)
{
    uint64_t n = 0;
    for (int i = 0; i < NNODES; i++) {
        Kv__StatusResult *st = node_status(r, i);
        if (st == NULL)
            continue;
        n += st->sessions_expired;
        admin_status_free(st);
    }
    printf("chaos: sessions expired (running nodes, since their last start): "
           "%" PRIu64 "\n",
           n);
    /* Clients leave a session behind every second: over a run of several
     * lifetimes some must have gone, whatever restarts reset. */
    if (r->o.session_ttl_s && r->o.duration_s >= 4 * r->o.session_ttl_s &&
        n == 0)
        chaos_problem(r, "no session expired in %d s with session_ttl_s = %d",
                      r->o.duration_s, r->o.session_ttl_s);
}

/* Fills leader[s] with the harness index of shard s's leader as the running
 * nodes report it, or -1: a node whose role for the shard is "leader" (the
 * highest term wins), else the leader a node holding the shard names. */
static void find_leaders(struct run *r, int leader[NSHARDS])
{
    uint64_t term[NSHARDS] = {0};
    int hint[NSHARDS];
    for (int s = 0; s < NSHARDS; s++)
        leader[s] = hint[s] = -1;
    for (int i = 0; i < NNODES; i++) {
        Kv__StatusResult *st = node_status(r, i);
        if (st == NULL)
            continue;
        for (size_t k = 0; k < st->n_shard_info; k++) {
            const Kv__ShardInfo *si = st->shard_info[k];
            if (si == NULL || si->shard >= NSHARDS)
                continue;
            uint32_t s = si->shard;
            if (si->role != NULL && strcmp(si->role, "leader") == 0) {
                if (leader[s] < 0 || si->term > term[s]) {
                    leader[s] = i;
                    term[s] = si->term;
                }
            } else if (si->local && si->leader != 0 && hint[s] < 0) {
                hint[s] = index_of_id(si->leader);
            }
        }
        admin_status_free(st);
    }
    for (int s = 0; s < NSHARDS; s++)
        if (leader[s] < 0)
            leader[s] = hint[s];
}

/* A random shard with a known leader, or -1. */
static int random_led_shard(const int leader[NSHARDS], uint64_t *rng, int node)
{
    int cand[NSHARDS], n = 0;
    for (int s = 0; s < NSHARDS; s++)
        if (leader[s] >= 0 && (node < 0 || leader[s] == node))
            cand[n++] = s;
    return n > 0 ? cand[chaos_rng_below(rng, (uint64_t)n)] : -1;
}

/* Whether every node but the one the nemesis took down is running; a node
 * that died on its own is a problem. */
static void check_alive(struct run *r)
{
    for (int i = 0; i < NNODES; i++)
        if (i != r->down && !cluster_node_running(r->cl, i)) {
            chaos_problem(r, "node %u died on its own",
                          cluster_node_id(r->cl, i));
            r->broken = 1;
        }
}

/* Starts node I again; one retry. */
static void restart(struct run *r, int i)
{
    int rc = KV_EINVAL;
    for (int attempt = 0; attempt < 2 && rc != 0; attempt++) {
        if (cluster_node_running(r->cl, i))
            break; /* ready timed out before, but it runs */
        rc = cluster_restart_node(r->cl, i);
        if (rc != 0)
            chaos_problem(r, "restart of node %u failed: %s",
                          cluster_node_id(r->cl, i), kv_strerror(rc));
    }
    if (cluster_node_running(r->cl, i))
        r->down = -1;
    else
        r->broken = 1;
    pids_refresh(r);
}

/* Records a failover sample of a shard whose leader failed at the probe's
 * fault time. */
static void record_sample(struct run *r, int shard, int pause)
{
    int ms = probe_result(r);
    if (ms < 0) {
        chaos_problem(r, "shard %d not writable %d ms after its leader failed",
                      shard, PROBE_GIVE_UP_MS);
        return;
    }
    printf("chaos: failover: shard %d writable again %d ms after its leader "
           "%s\n",
           shard, ms, pause ? "was stopped" : "was killed");
    if (pause && r->npause_ms < MAX_SAMPLES)
        r->pause_ms[r->npause_ms++] = ms;
    if (!pause && r->nkill_ms < MAX_SAMPLES)
        r->kill_ms[r->nkill_ms++] = ms;
}

/* kill -9 a node (the leader of a random shard, or a random node), leave it
 * down 1-3 s, restart it. */
static void nemesis_kill(struct run *r, uint64_t *rng)
{
    int leader[NSHARDS];
    find_leaders(r, leader);
    int shard = -1, victim = -1;
    int targeted = chaos_rng_below(rng, 2) == 0;
    if (targeted) {
        shard = random_led_shard(leader, rng, -1);
        if (shard >= 0)
            victim = leader[shard];
    }
    if (victim < 0) {
        targeted = 0;
        victim = (int)chaos_rng_below(rng, NNODES);
        shard = random_led_shard(leader, rng, victim);
    }
    if (shard >= 0 && !probe_arm(r, shard)) {
        printf("chaos: t=%.1fs: shard %d not writable before the fault; "
               "not measured\n",
               chaos_rel_s(r), shard);
        r->unmeasured++;
        shard = -1;
    }
    uint32_t id = cluster_node_id(r->cl, victim);
    if (shard >= 0)
        printf("chaos: t=%.1fs: kill -9 node %u (%s leader of shard %d)\n",
               chaos_rel_s(r), id, targeted ? "the" : "random node,", shard);
    else
        printf("chaos: t=%.1fs: kill -9 node %u (random node)\n",
               chaos_rel_s(r), id);
    if (shard >= 0)
        probe_fault(r);
    r->down = victim;
    count_installs(r, victim);
    int rc = cluster_kill(r->cl, victim, SIGKILL);
    pids_refresh(r);
    r->kills++;
    if (rc != 0)
        chaos_problem(r, "kill -9 of node %u: %s", id, kv_strerror(rc));
    harness_sleep_ms(KILL_DOWN_MIN_MS +
                     (int)chaos_rng_below(rng, KILL_DOWN_SPAN_MS + 1));
    restart(r, victim);
    if (shard >= 0) {
        r->leader_kills++;
        record_sample(r, shard, 0);
    }
}

/* SIGSTOP the leader of a random shard for 1.5-2.5 s, then SIGCONT. */
static void nemesis_pause(struct run *r, uint64_t *rng)
{
    int leader[NSHARDS];
    find_leaders(r, leader);
    int shard = random_led_shard(leader, rng, -1);
    if (shard < 0) {
        printf("chaos: t=%.1fs: no shard has a known leader; pause skipped\n",
               chaos_rel_s(r));
        return;
    }
    int victim = leader[shard];
    pid_t pid = cluster_node_pid(r->cl, victim);
    if (pid <= 0)
        return;
    int measured = probe_arm(r, shard);
    if (!measured) {
        printf("chaos: t=%.1fs: shard %d not writable before the fault; "
               "not measured\n",
               chaos_rel_s(r), shard);
        r->unmeasured++;
    }
    int hold = PAUSE_MIN_MS + (int)chaos_rng_below(rng, PAUSE_SPAN_MS + 1);
    printf("chaos: t=%.1fs: SIGSTOP node %u (leader of shard %d) for %d ms\n",
           chaos_rel_s(r), cluster_node_id(r->cl, victim), shard, hold);
    if (measured)
        probe_fault(r);
    kill(pid, SIGSTOP);
    r->pauses++;
    harness_sleep_ms(hold);
    kill(pid, SIGCONT);
    if (measured)
        record_sample(r, shard, 1);
}

/* Injects faults until the run's duration is over. */
static void nemesis(struct run *r)
{
    uint64_t rng = r->o.seed ^ 0x6e656d65736973u;
    int64_t end = r->start_ms + (int64_t)r->o.duration_s * 1000;
    unsigned action = 0;
    if (r->o.kill_every_ms <= 0) {
        while (harness_now_ms() < end) {
            harness_sleep_ms(100);
            check_alive(r);
        }
        return;
    }
    int64_t next = harness_now_ms() + jitter(&rng, r->o.kill_every_ms);
    while (!r->broken) {
        int64_t now = harness_now_ms();
        if (now >= end)
            break;
        if (now < next) {
            int64_t step = (next < end ? next : end) - now;
            harness_sleep_ms(step > 100 ? 100 : (int)step);
            continue;
        }
        check_alive(r);
        if (r->broken)
            break;
        if (action % 4 == 3)
            nemesis_pause(r, &rng);
        else
            nemesis_kill(r, &rng);
        action++;
        next = harness_now_ms() + jitter(&rng, r->o.kill_every_ms);
    }
    if (r->broken)
        printf("chaos: t=%.1fs: fault injection stopped after a problem\n",
               chaos_rel_s(r));
}

/* --- the end: final reads and checks -------------------------------------- */

/* Reads every key once more (with retries) into LOG as client NCLIENTS.
 * Returns the number of keys that could not be read. */
static int final_reads(struct run *r, struct oplog *log)
{
    int unread = 0;
    kv *db = NULL;
    kv_open_opts oo = {.timeout_ms = (uint32_t)r->o.op_timeout_ms};
    if (kv_open(r->conf, &oo, &db) != KV_OK) {
        fprintf(stderr, "chaos: final reads: kv_open: %s\n", kv_errmsg(NULL));
        return r->o.keys;
    }
    for (int key = 0; key < r->o.keys; key++) {
        char k[32];
        size_t kl = key_text(key, k, sizeof k);
        int64_t until = harness_now_ms() + FINAL_READ_MS;
        int done = 0, rc = KV_OK;
        for (int t = 0; t < FINAL_READ_TRIES && !done; t++) {
            if (t > 0 && harness_now_ms() >= until)
                break;
            if (oplog_reserve(log) != 0)
                break;
            struct lin_op op;
            memset(&op, 0, sizeof op);
            op.key = (uint64_t)key;
            op.client = r->o.clients;
            op.kind = LIN_READ;
            void *val = NULL;
            size_t vl = 0;
            uint64_t ver = 0, v = 0;
            kv_opts o = {.timeout_ms = (uint32_t)r->o.op_timeout_ms};
            op.call = rel_ns(r);
            rc = kv_get(db, k, kl, &o, &val, &vl, &ver);
            op.ret = rel_ns(r);
            if (rc == KV_OK) {
                int bad = value_parse(val, vl, &v) != 0;
                kv_free(val);
                if (bad) {
                    printf("chaos: final read of %s: a value never "
                           "written (%zu bytes)\n",
                           k, vl);
                    break;
                }
                op.outcome = LIN_OUT_OK;
                op.out_value = v;
                op.out_version = ver;
                log->ops[log->n++] = op;
                done = 1;
            } else if (rc == KV_ENOTFOUND) {
                op.outcome = LIN_OUT_ABSENT;
                log->ops[log->n++] = op;
                done = 1;
            } else {
                harness_sleep_ms(200);
            }
        }
        if (!done) {
            printf("chaos: final read of %s failed: %s (%s)\n", k,
                   kv_strerror(rc), kv_errmsg(db));
            unread++;
        }
    }
    kv_close(db);
    return unread;
}

static int is_write(const struct lin_op *op)
{
    return op->kind == LIN_WRITE || op->kind == LIN_CAS ||
           op->kind == LIN_INSERT;
}

static int cmp_call(const void *a, const void *b)
{
    const struct lin_op *x = a, *y = b;
    if (x->call != y->call)
        return x->call < y->call ? -1 : 1;
    if (x->ret != y->ret)
        return x->ret < y->ret ? -1 : 1;
    return (x->client > y->client) - (x->client < y->client);
}

static int cmp_key_call(const void *a, const void *b)
{
    const struct lin_op *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return cmp_call(a, b);
}

/* The lost-write check of one key: OPS[0..N) are its operations in call
 * order, FINAL the client number of the final reads. Looks only at what
 * the final read shows, independently of lin_check. Returns the number of
 * acknowledged writes or deletes the final state contradicts. */
static int lost_in_key(const struct lin_op *ops, size_t n, int final)
{
    const struct lin_op *f = NULL, *w = NULL, *x = NULL;
    int lost = 0;
    for (size_t i = 0; i < n; i++) {
        if (ops[i].client == final)
            f = &ops[i];
        else if (is_write(&ops[i]) && ops[i].outcome == LIN_OUT_OK &&
                 (w == NULL || ops[i].out_version > w->out_version))
            w = &ops[i];
    }
    if (f == NULL)
        return 0; /* counted as unread */
    if (f->outcome == LIN_OUT_OK) {
        for (size_t i = 0; i < n && x == NULL; i++)
            if (is_write(&ops[i]) && ops[i].value == f->out_value &&
                (ops[i].outcome == LIN_OUT_OK ||
                 ops[i].outcome == LIN_OUT_UNKNOWN))
                x = &ops[i];
        if (w != NULL && w->out_version > f->out_version) {
            printf("chaos: LOST: key %" PRIu64
                   ": acknowledged write of %" PRIu64 " (version %" PRIu64
                   ") gone; final read: %" PRIu64 " version %" PRIu64 "\n",
                   f->key, w->value, w->out_version, f->out_value,
                   f->out_version);
            lost++;
        }
        if (x == NULL) {
            printf("chaos: LOST: key %" PRIu64 ": final value %" PRIu64
                   " was never written\n",
                   f->key, f->out_value);
            lost++;
        } else if (x->outcome == LIN_OUT_OK) {
            for (size_t i = 0; i < n; i++)
                if (ops[i].kind == LIN_DELETE && ops[i].outcome == LIN_OUT_OK &&
                    ops[i].call > x->ret) {
                    printf("chaos: LOST: key %" PRIu64 ": acknowledged "
                           "delete (client %d) undone: final value %" PRIu64
                           " was written before it\n",
                           f->key, ops[i].client, f->out_value);
                    lost++;
                    break;
                }
        }
        return lost;
    }
    if (w == NULL)
        return 0;
    /* Absent: some delete must be able to come after the newest write. */
    for (size_t i = 0; i < n; i++)
        if (ops[i].kind == LIN_DELETE &&
            (ops[i].outcome == LIN_OUT_OK ||
             ops[i].outcome == LIN_OUT_UNKNOWN) &&
            ops[i].ret >= w->call)
            return 0;
    printf("chaos: LOST: key %" PRIu64 ": acknowledged write of %" PRIu64
           " (version %" PRIu64 ") gone; the key is absent and no delete "
           "came after it\n",
           f->key, w->value, w->out_version);
    return 1;
}

/* Runs the lost-write check over ALL (N ops, re-sorted by key). */
static int lost_writes(struct lin_op *all, size_t n, int final)
{
    int lost = 0;
    qsort(all, n, sizeof *all, cmp_key_call);
    for (size_t a = 0; a < n;) {
        size_t b = a;
        while (b < n && all[b].key == all[a].key)
            b++;
        lost += lost_in_key(all + a, b - a, final);
        a = b;
    }
    return lost;
}

/* Writes the history with a header to DIR/history.txt. Returns 0 or -1. */
static int write_history(const struct run *r, const struct lin_history *h,
                         char *path, size_t len)
{
    snprintf(path, len, "%s/history.txt", r->work);
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fprintf(f,
            "# chaos history: seed=%" PRIu64 " duration=%d clients=%d "
            "keys=%d kill-every=%d op-timeout=%d\n"
            "# times: ns since the run began; client %d made the final "
            "reads\n",
            r->o.seed, r->o.duration_s, r->o.clients, r->o.keys,
            r->o.kill_every_ms, r->o.op_timeout_ms, r->o.clients);
    int rc = lin_write(f, h) == LIN_OK ? 0 : -1;
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

/* Copies the node logs and the config into the work dir; moves the data
 * there too when MOVE_DATA (the nodes must be stopped). */
static void save_artifacts(struct run *r, int move_data)
{
    char src[1024], dst[1024];
    for (int i = 0; i < NNODES; i++) {
        snprintf(src, sizeof src, "%s/node-%u.log", cluster_dir(r->cl),
                 cluster_node_id(r->cl, i));
        snprintf(dst, sizeof dst, "%s/node-%u.log", r->work,
                 cluster_node_id(r->cl, i));
        copy_file(src, dst);
    }
    snprintf(dst, sizeof dst, "%s/cluster.conf", r->work);
    copy_file(r->conf, dst);
    if (move_data) {
        snprintf(src, sizeof src, "%s/data", cluster_dir(r->cl));
        snprintf(dst, sizeof dst, "%s/data", r->work);
        if (rename(src, dst) != 0)
            fprintf(stderr, "chaos: could not keep %s: %s\n", src,
                    strerror(errno));
    }
}

/* Moves the work dir out of the harness root to /tmp/kvchaos-XXXXXX so
 * harness_fini() leaves it. Writes the new path into r->work. */
static void keep_work(struct run *r)
{
    char kept[] = "/tmp/kvchaos-XXXXXX";
    if (mkdtemp(kept) == NULL || rename(r->work, kept) != 0) {
        fprintf(stderr, "chaos: could not keep %s: %s\n", r->work,
                strerror(errno));
        return;
    }
    snprintf(r->work, sizeof r->work, "%s", kept);
}

/* --- options -------------------------------------------------------------- */

static void usage(void)
{
    fprintf(
        stderr,
        "usage: chaos [--duration S] [--clients N] [--keys N] [--seed S]\n"
        "             [--kill-every MS] [--op-timeout MS] [--session-ttl S]\n"
        "             [--compact-entries N] [--workload register|bank|incr]\n"
        "             [--accounts N] [--keep]\n"
        "  --duration S      seconds of load and faults (default 30)\n"
        "  --clients N       client threads (default 8, incr 16; max %d)\n"
        "  --workload W      register (single keys, lincheck; default),\n"
        "                    bank (transfers and audits in transactions) "
        "or\n"
        "                    incr (the incr procedure on counters)\n"
        "  --keys N          keys of the register workload (default 20),\n"
        "                    counters of the incr workload (default 50)\n"
        "  --accounts N      accounts of the bank workload (default 16,\n"
        "                    %d..%d, spread over every shard)\n"
        "  --seed S          seed of every random choice (default: time)\n"
        "  --kill-every MS   mean time between faults (default 3000; "
        "0: none)\n"
        "  --op-timeout MS   timeout of one client call (default 2000)\n"
        "  --session-ttl S   cluster.conf session_ttl_s (default: its "
        "default, 3600)\n"
        "  --compact-entries N  cluster.conf compact_log_entries (default: "
        "its default,\n"
        "                    10000); the run fails if no snapshot was "
        "installed\n"
        "  --keep            keep the temp dir (history, logs, data)\n",
        MAX_CLIENTS, MIN_ACCOUNTS, MAX_ACCOUNTS);
}

/* Parses a decimal number in [LO, HI]. Returns 0 or -1. */
static int parse_num(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    int seeded = 0, clients = 0, keys = 0;
    o->duration_s = 30;
    o->clients = 8;
    o->keys = 20;
    o->accounts = 16;
    o->workload = WORKLOAD_REGISTER;
    o->kill_every_ms = 3000;
    o->op_timeout_ms = 2000;
    o->keep = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t x = 0;
        if (strcmp(a, "--keep") == 0) {
            o->keep = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            return -1;
        if (strcmp(a, "--workload") == 0) {
            if (v != NULL && strcmp(v, "register") == 0) {
                o->workload = WORKLOAD_REGISTER;
            } else if (v != NULL && strcmp(v, "bank") == 0) {
                o->workload = WORKLOAD_BANK;
            } else if (v != NULL && strcmp(v, "incr") == 0) {
                o->workload = WORKLOAD_INCR;
            } else {
                fprintf(stderr,
                        "chaos: unknown workload %s (\"register\", "
                        "\"bank\" or \"incr\")\n",
                        v != NULL ? v : "");
                return -1;
            }
        } else if (strcmp(a, "--accounts") == 0) {
            if (parse_num(v, MIN_ACCOUNTS, MAX_ACCOUNTS, &x) != 0)
                goto bad;
            o->accounts = (int)x;
        } else if (strcmp(a, "--duration") == 0) {
            if (parse_num(v, 1, 86400, &x) != 0)
                goto bad;
            o->duration_s = (int)x;
        } else if (strcmp(a, "--clients") == 0) {
            if (parse_num(v, 1, MAX_CLIENTS, &x) != 0)
                goto bad;
            o->clients = (int)x;
            clients = 1;
        } else if (strcmp(a, "--keys") == 0) {
            if (parse_num(v, 1, MAX_KEYS, &x) != 0)
                goto bad;
            o->keys = (int)x;
            keys = 1;
        } else if (strcmp(a, "--seed") == 0) {
            if (parse_num(v, 0, UINT64_MAX, &x) != 0)
                goto bad;
            o->seed = x;
            seeded = 1;
        } else if (strcmp(a, "--kill-every") == 0) {
            if (parse_num(v, 0, 600000, &x) != 0 || (x > 0 && x < 100))
                goto bad;
            o->kill_every_ms = (int)x;
        } else if (strcmp(a, "--op-timeout") == 0) {
            if (parse_num(v, 100, 60000, &x) != 0)
                goto bad;
            o->op_timeout_ms = (int)x;
        } else if (strcmp(a, "--session-ttl") == 0) {
            if (parse_num(v, 1, 2592000, &x) != 0)
                goto bad;
            o->session_ttl_s = (int)x;
        } else if (strcmp(a, "--compact-entries") == 0) {
            if (parse_num(v, 100, 10000000, &x) != 0)
                goto bad;
            o->compact_entries = (int)x;
        } else {
            fprintf(stderr, "chaos: unknown option %s\n", a);
            return -1;
        }
        i++;
        continue;
    bad:
        fprintf(stderr, "chaos: bad value for %s: %s\n", a,
                v != NULL ? v : "(none)");
        return -1;
    }
    if (!seeded)
        o->seed = mono_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
    if (o->workload == WORKLOAD_INCR && !clients)
        o->clients = 16;
    if (o->workload == WORKLOAD_INCR && !keys)
        o->keys = 50;
    return 0;
}

/* --- main ----------------------------------------------------------------- */

/* The clients of the run's workload: one of these is set. */
struct load {
    struct client *cs; /* register: r->o.clients of them */
    struct bank *bank;
    struct incr *incr;
};

/* Starts the probe and client threads. Returns 0 or -1 (those started are
 * left for the caller to stop). */
static int start_threads(struct run *r, const struct load *ld, pthread_t *probe,
                         int *probe_started)
{
    struct client *cs = ld->cs;
    if (pthread_create(probe, NULL, probe_main, r) != 0)
        return -1;
    *probe_started = 1;
    if (ld->bank != NULL)
        return bank_start(ld->bank);
    if (ld->incr != NULL)
        return incr_start(ld->incr);
    for (int i = 0; i < r->o.clients; i++) {
        struct client *c = &cs[i];
        c->run = r;
        c->idx = i;
        c->rng = r->o.seed + 0x9e3779b97f4a7c15u * (uint64_t)(i + 1);
        c->known = calloc((size_t)r->o.keys, sizeof *c->known);
        if (c->known == NULL)
            return -1;
        if (pthread_create(&c->th, NULL, client_main, c) != 0)
            return -1;
        c->started = 1;
    }
    return 0;
}

/* Tells the client and probe threads to stop and joins them; aborts the run
 * when one does not stop in time. */
static void stop_threads(struct run *r, const struct load *ld, pthread_t probe,
                         int probe_started)
{
    const struct client *cs = ld->cs;
    int want = 0;
    if (ld->bank != NULL)
        want = bank_started(ld->bank);
    if (ld->incr != NULL)
        want = incr_started(ld->incr);
    for (int i = 0; cs != NULL && i < r->o.clients; i++)
        want += cs[i].started;
    atomic_store(&r->stop_clients, 1);
    atomic_store(&r->stop_probe, 1);
    int64_t until = harness_now_ms() + r->o.op_timeout_ms + STOP_SLACK_MS +
                    PROBE_TIMEOUT_MS;
    pthread_mutex_lock(&r->mu);
    pthread_cond_broadcast(&r->cv);
    while ((r->clients_done < want || (probe_started && !r->probe_done)) &&
           harness_now_ms() < until)
        chaos_cv_wait_ms(r, 100);
    int stuck = r->clients_done < want || (probe_started && !r->probe_done);
    pthread_mutex_unlock(&r->mu);
    if (stuck)
        abort_run(r, "a client thread did not stop in time");
    if (ld->bank != NULL)
        bank_join(ld->bank);
    if (ld->incr != NULL)
        incr_join(ld->incr);
    for (int i = 0; cs != NULL && i < r->o.clients; i++)
        if (cs[i].started)
            pthread_join(cs[i].th, NULL);
    if (probe_started)
        pthread_join(probe, NULL);
}

/* Prints what the clients saw that was unexpected; a client that could not
 * work is a health problem. Returns the number of unparseable values read. */
static unsigned long client_report(struct run *r, const struct client *cs)
{
    unsigned long errs[NERR] = {0}, read_errors = 0, bad = 0;
    const char *msg[NERR] = {0};
    for (int i = 0; i < r->o.clients; i++) {
        read_errors += cs[i].read_errors;
        bad += cs[i].bad_values;
        if (cs[i].open_failed)
            chaos_problem(r, "client %d could not open a handle", i);
        if (cs[i].log_full)
            printf("chaos: client %d stopped early: its log is full\n", i);
        for (int e = 0; e < NERR; e++) {
            errs[e] += cs[i].errs[e];
            if (msg[e] == NULL && cs[i].errs[e] != 0)
                msg[e] = cs[i].errmsg[e];
        }
    }
    printf("chaos: reads that failed (left out of the history): %lu\n",
           read_errors);
    chaos_print_errors(errs, msg);
    return bad;
}

/* What the end of the run found. */
struct verdict {
    int pass_lin, pass_lost, pass_health;
    size_t violations; /* keys not linearizable, results the model rejects */
    int lost;          /* LOST: lines */
};

/* Merges the clients' logs and the final reads into one history sorted by
 * call time, writes it, runs lin_check and the lost-write check and prints
 * the summary. Frees the logs. Returns 0, or -1 when out of memory. */
static int check_history(struct run *r, struct client *cs, struct oplog *fin,
                         unsigned long bad, int unread, struct verdict *v)
{
    int rc = -1;
    size_t nall = fin->n, invalid = 0, acked = 0, unknown = 0;
    struct lin_report rep;
    char hist[1024] = "";
    memset(&rep, 0, sizeof rep);
    for (int i = 0; i < r->o.clients; i++)
        nall += cs[i].log.n;
    struct lin_op *all = malloc((nall > 0 ? nall : 1) * sizeof *all);
    struct lin_history *h = lin_new();
    if (all == NULL || h == NULL)
        goto out;
    nall = 0;
    for (int i = 0; i < r->o.clients; i++) {
        if (cs[i].log.n > 0)
            memcpy(all + nall, cs[i].log.ops, cs[i].log.n * sizeof *all);
        nall += cs[i].log.n;
        oplog_release(&cs[i].log);
    }
    if (fin->n > 0)
        memcpy(all + nall, fin->ops, fin->n * sizeof *all);
    nall += fin->n;
    oplog_release(fin);
    qsort(all, nall, sizeof *all, cmp_call);
    for (size_t i = 0; i < nall; i++) {
        const char *why = lin_op_problem(&all[i]);
        if (why != NULL) {
            if (invalid++ < 10)
                printf("chaos: invalid result (client %d, key %" PRIu64
                       "): %s\n",
                       all[i].client, all[i].key, why);
            continue;
        }
        if (lin_add(h, &all[i]) != LIN_OK)
            goto out;
        if (all[i].kind != LIN_READ && all[i].outcome == LIN_OUT_OK)
            acked++;
        if (all[i].outcome == LIN_OUT_UNKNOWN)
            unknown++;
    }
    if (write_history(r, h, hist, sizeof hist) != 0)
        printf("chaos: could not write %s\n", hist);

    int64_t budget = r->watchdog_ms - harness_now_ms() - CHECK_MARGIN_MS;
    struct lin_budget lb = {0, 0, 0};
    lb.max_ms = (uint64_t)(budget > CHECK_MIN_MS ? budget : CHECK_MIN_MS);
    int verdict = lin_check(h, &lb, &rep);
    if (verdict < 0)
        goto out;
    printf("chaos: lincheck: %s (%zu ops, %zu keys, %" PRIu64
           " states, %" PRIu64 " ms)\n",
           verdict == LIN_OK          ? "linearizable"
           : verdict == LIN_VIOLATION ? "NOT linearizable"
                                      : "undecided within its budget",
           rep.ops, rep.keys, rep.states, rep.elapsed_ms);
    if (verdict != LIN_OK) {
        char rp[1024];
        snprintf(rp, sizeof rp, "%s/lincheck-report.txt", r->work);
        FILE *f = fopen(rp, "w");
        if (f != NULL) {
            lin_report_print(&rep, f);
            fclose(f);
        }
        if (verdict == LIN_VIOLATION)
            printf("chaos: first violating key %" PRIu64 " (failing prefix "
                   "of %zu ops up to t=%" PRIu64 " ns); see "
                   "lincheck-report.txt\n",
                   rep.key, rep.nprefix, rep.fail_time);
    }
    int lost = lost_writes(all, nall, r->o.clients);
    printf("chaos: ops=%zu, acknowledged writes=%zu, unknown=%zu, "
           "violations=%zu, lost=%d\n",
           lin_count(h), acked, unknown, rep.keys_violating + invalid, lost);
    v->violations = rep.keys_violating + invalid;
    v->lost = lost;
    v->pass_lin = verdict == LIN_OK && invalid == 0 && bad == 0;
    v->pass_lost = lost == 0 && unread == 0;
    rc = 0;
out:
    if (rc != 0)
        printf("chaos: out of memory while checking\n");
    lin_report_release(&rep);
    lin_free(h);
    free(all);
    return rc;
}

/* Prints the failover samples. */
static void failover_report(struct run *r)
{
    int med, max;
    median_max(r->kill_ms, r->nkill_ms, &med, &max);
    printf("failover: %d kills, median %d ms, max %d ms\n", r->nkill_ms, med,
           max);
    median_max(r->pause_ms, r->npause_ms, &med, &max);
    printf("failover after SIGSTOP: %d pauses, median %d ms, max %d ms\n",
           r->npause_ms, med, max);
    printf("chaos: faults: %d kills (%d of a shard leader), %d pauses, %d "
           "not measured\n",
           r->kills, r->leader_kills, r->pauses, r->unmeasured);
}

/* After the faults: brings every node back, waits until every shard is
 * led, stops the load, and checks the end state (register: reads every
 * key into FIN, setting *UNREAD to the keys it could not read and *BAD to
 * the unparseable values seen; bank: the final audit and the transactions
 * left in flight, into *BV; incr: the final reads and the counts, into
 * *IV). Then stops the nodes with SIGTERM (each must exit 0). */
static void wind_down(struct run *r, const struct load *ld, pthread_t probe,
                      struct oplog *fin, int *unread, unsigned long *bad,
                      struct bank_verdict *bv, struct incr_verdict *iv)
{
    for (int i = 0; i < NNODES; i++)
        if (!cluster_node_running(r->cl, i)) {
            if (i != r->down)
                chaos_problem(r, "node %u died on its own",
                              cluster_node_id(r->cl, i));
            restart(r, i);
        }
    int rc = cluster_wait_ready(r->cl, READY_TIMEOUT_MS);
    if (rc != 0)
        chaos_problem(r, "cluster not ready at the end: %s", kv_strerror(rc));
    printf("chaos: t=%.1fs: faults over; stopping the clients\n",
           chaos_rel_s(r));
    stop_threads(r, ld, probe, 1);
    if (ld->bank != NULL) {
        bank_report(ld->bank);
        bank_finish(ld->bank, bv);
    } else if (ld->incr != NULL) {
        incr_report(ld->incr);
        incr_finish(ld->incr, iv);
    } else {
        *bad = client_report(r, ld->cs);
        *unread = final_reads(r, fin);
    }
    sessions_report(r);
    installs_report(r);
    for (int i = 0; i < NNODES; i++) {
        if (!cluster_node_running(r->cl, i)) {
            chaos_problem(r, "node %u not running at the end",
                          cluster_node_id(r->cl, i));
            continue;
        }
        if (cluster_kill(r->cl, i, SIGTERM) != 0)
            chaos_problem(r, "node %u did not exit 0 on SIGTERM",
                          cluster_node_id(r->cl, i));
    }
    pids_refresh(r);
}

/* Sets up the run's state from the options. */
static void run_init(struct run *r)
{
    r->down = -1;
    r->probe_shard = -1;
    r->start_ms = harness_now_ms();
    r->base_ns = mono_ns() - 1;
    r->watchdog_ms = r->start_ms + (int64_t)r->o.duration_s * 1000 +
                     WATCHDOG_SLACK_MS +
                     (r->o.workload == WORKLOAD_BANK   ? BANK_FINISH_MS
                      : r->o.workload == WORKLOAD_INCR ? INCR_FINAL_READ_MS
                                                       : 0);
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);

    /* SIGINT, SIGTERM and SIGUSR1 belong to the watchdog (every thread
     * inherits this mask; the harness resets it in the nodes). */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* Starts the cluster and the admin handle. Returns 0 or -1. */
static int cluster_up(struct run *r)
{
    char extra[128] = "";
    if (r->o.session_ttl_s)
        snprintf(extra, sizeof extra, "session_ttl_s = %d\n",
                 r->o.session_ttl_s);
    if (r->o.compact_entries)
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra),
                 "compact_log_entries = %d\n", r->o.compact_entries);
    struct cluster_opts co = {.extra = extra[0] ? extra : NULL};
    int rc = cluster_start_opts(&r->cl, NNODES, NSHARDS, NREPLICAS, &co);
    if (rc != 0) {
        printf("chaos: the cluster did not start: %s\n", kv_strerror(rc));
        r->cl = NULL;
        return -1;
    }
    pids_refresh(r);
    snprintf(r->conf, sizeof r->conf, "%s", cluster_conf_path(r->cl));
    printf("chaos: cluster of %d nodes (%d shards, %d replicas) in %s\n",
           NNODES, NSHARDS, NREPLICAS, cluster_dir(r->cl));
    kv_open_opts ao = {.timeout_ms = STATUS_TIMEOUT_MS};
    if (kv_open(r->conf, &ao, &r->adm) != KV_OK) {
        printf("chaos: kv_open %s: %s\n", r->conf, kv_errmsg(NULL));
        r->adm = NULL;
        return -1;
    }
    return 0;
}

/* Prints the "ok:"/"FAIL:" line of each check. */
static void print_verdict(const struct run *r, const struct verdict *v,
                          const struct bank_verdict *bv,
                          const struct incr_verdict *iv)
{
    if (r->o.workload == WORKLOAD_BANK) {
        printf("%s total conserved (%lu wrong totals)\n",
               bv->pass_total ? "ok:  " : "FAIL:", bv->wrong_totals);
        printf("%s no negative balance (%lu seen)\n",
               bv->pass_negative ? "ok:  " : "FAIL:", bv->negatives);
        printf("%s no transaction left in flight after healing (%lu "
               "left)\n",
               bv->pass_intents ? "ok:  " : "FAIL:", bv->intents_left);
    } else if (r->o.workload == WORKLOAD_INCR) {
        printf("%s no increment lost or applied twice (%lu counters out of "
               "bounds, %lu unread, %lu bad replies)\n",
               iv->pass_counts ? "ok:  " : "FAIL:", iv->out_of_bounds,
               iv->unread, iv->bad_replies);
        printf("%s replies increased per client and counter (%lu did "
               "not)\n",
               iv->pass_order ? "ok:  " : "FAIL:", iv->disorder);
        printf("%s no call failed for sure (%lu failed, %lu unexpected "
               "codes)\n",
               iv->pass_errors ? "ok:  " : "FAIL:", iv->failed_sure,
               iv->unexpected);
    } else {
        printf("%s linearizable (%zu violations)\n",
               v->pass_lin ? "ok:  " : "FAIL:", v->violations);
        printf("%s no acknowledged write lost (lost=%d)\n",
               v->pass_lost ? "ok:  " : "FAIL:", v->lost);
    }
    printf("%s cluster healthy at the end\n",
           v->pass_health ? "ok:  " : "FAIL:");
}

/* The number of checks of R's workload that passed (of nchecks(r)). */
static int checks_passed(const struct run *r, const struct verdict *v,
                         const struct bank_verdict *bv,
                         const struct incr_verdict *iv)
{
    if (r->o.workload == WORKLOAD_BANK)
        return bv->pass_total + bv->pass_negative + bv->pass_intents +
               v->pass_health;
    if (r->o.workload == WORKLOAD_INCR)
        return iv->pass_counts + iv->pass_order + iv->pass_errors +
               v->pass_health;
    return v->pass_lin + v->pass_lost + v->pass_health;
}

/* Runs chaos (see the top of this file). Exits 0 when every check passed,
 * 1 when one failed, 2 on a usage error. */
int main(int argc, char **argv)
{
    static struct run run;
    struct run *r = &run;
    struct load ld = {NULL, NULL, NULL};
    struct oplog fin = {0};
    struct verdict v = {0, 0, 0, 0, 0};
    struct bank_verdict bv;
    struct incr_verdict iv;
    pthread_t probe, wd;
    int probe_started = 0, wd_started = 0, unread = 0;
    unsigned long bad = 0;

    memset(&bv, 0, sizeof bv);
    memset(&iv, 0, sizeof iv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (parse_opts(argc, argv, &r->o) != 0) {
        usage();
        return 2;
    }
    run_init(r);
    enum chaos_workload wl = r->o.workload;
    if (wl == WORKLOAD_BANK)
        printf("chaos: seed=%" PRIu64 " duration=%ds clients=%d accounts=%d "
               "kill-every=%dms op-timeout=%dms workload=bank\n",
               r->o.seed, r->o.duration_s, r->o.clients, r->o.accounts,
               r->o.kill_every_ms, r->o.op_timeout_ms);
    else
        printf("chaos: seed=%" PRIu64 " duration=%ds clients=%d keys=%d "
               "kill-every=%dms op-timeout=%dms workload=%s\n",
               r->o.seed, r->o.duration_s, r->o.clients, r->o.keys,
               r->o.kill_every_ms, r->o.op_timeout_ms,
               wl == WORKLOAD_INCR ? "incr" : "register");
    if (harness_init() != 0 || harness_tempdir(r->work, sizeof r->work) != 0) {
        printf("chaos: no temp dir\n0 passed, %d failed\n", nchecks(r));
        return 1;
    }
    memcpy(r->root, r->work, sizeof r->root);
    r->root[sizeof r->root - 1] = '\0';
    char *slash = strrchr(r->root, '/');
    if (slash != NULL)
        *slash = '\0';
    if (pthread_create(&wd, NULL, watchdog_main, r) != 0)
        goto out_fail;
    wd_started = 1;
    if (probe_keys(r) != 0) {
        printf("chaos: no probe key for some shard\n");
        goto out_fail;
    }
    if (wl == WORKLOAD_BANK && (ld.bank = bank_new(r)) == NULL) {
        printf("chaos: could not set up the bank\n");
        goto out_fail;
    }
    if (wl == WORKLOAD_INCR) {
        if ((ld.incr = incr_new(r)) == NULL) {
            printf("chaos: could not set up the counters\n");
            goto out_fail;
        }
        printf("chaos: counters %s/*\n", incr_prefix(ld.incr));
    }
    if (cluster_up(r) != 0)
        goto out_fail;
    if (wl == WORKLOAD_REGISTER)
        ld.cs = calloc((size_t)r->o.clients, sizeof *ld.cs);
    if ((wl == WORKLOAD_REGISTER && ld.cs == NULL) ||
        start_threads(r, &ld, &probe, &probe_started) != 0) {
        printf("chaos: could not start the client threads\n");
        if (ld.cs != NULL || ld.bank != NULL || ld.incr != NULL)
            stop_threads(r, &ld, probe, probe_started);
        goto out_fail;
    }

    nemesis(r);
    wind_down(r, &ld, probe, &fin, &unread, &bad, &bv, &iv);
    if (wl == WORKLOAD_REGISTER &&
        check_history(r, ld.cs, &fin, bad, unread, &v) != 0)
        goto out_fail;
    failover_report(r);
    v.pass_health = r->problems == 0;
    int failing = checks_passed(r, &v, &bv, &iv) != nchecks(r);
    save_artifacts(r, failing || r->o.keep);
    if (failing)
        for (int i = 0; i < NNODES; i++)
            cluster_dump_log(r->cl, i);
    if (cluster_stop(r->cl) != 0) {
        printf("chaos: PROBLEM: a node died unexpectedly (see its log)\n");
        v.pass_health = 0;
    }
    r->cl = NULL;
    goto out;

out_fail:
    v.pass_lin = v.pass_lost = v.pass_health = 0;
    memset(&bv, 0, sizeof bv);
    memset(&iv, 0, sizeof iv);
    if (r->cl != NULL) {
        pids_refresh(r);
        for (int i = 0; i < NNODES; i++)
            cluster_dump_log(r->cl, i);
        save_artifacts(r, 0);
        cluster_stop(r->cl);
        r->cl = NULL;
    }
out:
    pids_refresh(r);
    kv_close(r->adm);
    r->adm = NULL;
    if (wd_started) {
        pthread_mutex_lock(&r->mu);
        r->finished = 1;
        pthread_mutex_unlock(&r->mu);
        pthread_kill(wd, SIGUSR1);
        pthread_join(wd, NULL);
    }
    int all = nchecks(r);
    int passed = checks_passed(r, &v, &bv, &iv);
    int keep = r->o.keep || passed != all;
    if (keep)
        keep_work(r);
    harness_fini(passed != all);
    print_verdict(r, &v, &bv, &iv);
    if (keep && wl != WORKLOAD_REGISTER)
        printf("chaos: kept %s (node logs, data)\n", r->work);
    else if (keep)
        printf("chaos: kept %s (history.txt, node logs, data); replay: "
               "lincheck_main %s/history.txt\n",
               r->work, r->work);
    printf("%d passed, %d failed\n", passed, all - passed);

    oplog_release(&fin);
    if (ld.cs != NULL)
        for (int i = 0; i < r->o.clients; i++) {
            oplog_release(&ld.cs[i].log);
            free(ld.cs[i].known);
        }
    free(ld.cs);
    bank_free(ld.bank);
    incr_free(ld.incr);
    return passed == all ? 0 : 1;
}
