/*
 * chaos.h - what the chaos driver (chaos.c: cluster, nemesis, probe,
 * watchdog, the register workload) shares with the other workloads
 * (bank.c, incr.c). Internal to tests/chaos.
 *
 * A workload runs r->o.clients threads, each with its own kv handle on
 * r->conf. A thread loops until r->stop_clients is set, bounds every call
 * by r->o.op_timeout_ms, and calls chaos_client_done() as the last thing it
 * does, so that the driver can tell a stuck client from a slow one. Only
 * the main thread starts or signals nodes (see chaos.c), so a workload
 * never does.
 */
#ifndef KV_CHAOS_H
#define KV_CHAOS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "../cluster/harness.h"
#include "kv.h"

#define NNODES 3
#define NSHARDS 8
#define NREPLICAS 3
#define MAX_SAMPLES 4096
#define NERR 19 /* error codes are -1..-18; [0] counts any other */

enum chaos_workload {
    WORKLOAD_REGISTER, /* single-key ops, checked by lincheck */
    WORKLOAD_BANK,     /* transfers and audits (bank.c) */
    WORKLOAD_INCR      /* the incr procedure on counters (incr.c) */
};

struct opts {
    int duration_s;
    int clients;
    int keys;          /* register and incr workloads */
    int accounts;      /* bank workload */
    int kill_every_ms; /* 0: no faults */
    int op_timeout_ms;
    int session_ttl_s; /* cluster.conf session_ttl_s (0: its default) */
    int compact_entries; /* cluster.conf compact_log_entries (0: default) */
    int keep;
    enum chaos_workload workload;
    uint64_t seed;
};

struct run {
    struct opts o;
    struct cluster *cl;
    kv *adm; /* the nemesis' handle for admin_status */
    char conf[512];
    char work[512]; /* our directory under the harness root */
    char root[512]; /* the harness root */
    uint64_t base_ns;
    int64_t start_ms;
    int64_t watchdog_ms; /* absolute harness_now_ms() deadline */

    atomic_int stop_clients;
    atomic_int stop_probe;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */

    /* guarded by mu */
    int clients_done;
    int probe_done;
    int probe_shard;   /* -1: idle */
    uint64_t probe_t0; /* rel ns of the fault, 0 before it */
    int probe_warm;    /* a probe write succeeded since arming */
    int probe_have;    /* probe_ms is set */
    int64_t probe_ms;
    pid_t pids[CLUSTER_MAX_NODES];
    int finished;

    char probe_key[NSHARDS][48];

    /* nemesis (main thread only) */
    int down; /* node index killed and not yet restarted, or -1 */
    int kills, leader_kills, pauses, unmeasured;
    int kill_ms[MAX_SAMPLES], nkill_ms;
    int pause_ms[MAX_SAMPLES], npause_ms;
    uint64_t installs; /* snapshots the nodes installed (counted at kills
                          and at the end) */
    int problems; /* health problems seen */
    int broken;   /* stop injecting faults */
};

/* --- helpers of chaos.c --------------------------------------------------- */

/* The next number of the splitmix64 generator whose state is *S. */
uint64_t chaos_rng_next(uint64_t *s);

/* A number in [0, N) from *S (0 when N is 0). */
uint64_t chaos_rng_below(uint64_t *s, uint64_t n);

/* Seconds since the run began. */
double chaos_rel_s(const struct run *r);

/* Waits on r->cv (r->mu held) for at most MS milliseconds. */
void chaos_cv_wait_ms(struct run *r, int ms);

/* Counts result code RC (one the workload does not expect) in ERRS, by
 * -RC ([0]: a code this test does not know), keeping DB's message of the
 * first of each in ERRMSG. */
void chaos_note_error(unsigned long errs[NERR], char errmsg[NERR][160], kv *db,
                      int rc);

/* Prints each unexpected result counted in ERRS with MSG, the first message
 * of it. */
void chaos_print_errors(const unsigned long errs[NERR],
                        const char *const msg[NERR]);

/* Counts a health problem of the run and prints it (main thread only). */
__attribute__((format(printf, 2, 3))) void chaos_problem(struct run *r,
                                                         const char *fmt, ...);

/* Tells the driver that one client thread has finished its work (the last
 * call of every client thread). */
void chaos_client_done(struct run *r);

/* The handle for a client thread's next call: with --session-ttl, a new
 * handle (a new session) once DB is REOPEN_MS old (*OPENED_MS: when it
 * was opened, 0 at first), so that the sessions left behind go quiet and
 * expire while the others write; else DB. */
kv *chaos_next_call(struct run *r, kv *db, const kv_open_opts *oo,
                    int64_t *opened_ms);

/* --- the bank workload (bank.c) ------------------------------------------- */

struct bank;

/* The most bank_finish() takes: the final audit, then the wait for the
 * transactions in flight. */
#define BANK_FINAL_AUDIT_MS 30000
#define BANK_INTENT_WAIT_MS 15000
#define BANK_FINISH_MS (BANK_FINAL_AUDIT_MS + BANK_INTENT_WAIT_MS)

/* What the end of a bank run found. */
struct bank_verdict {
    int pass_total;    /* every committed audit, and the final one, summed
                          to the total */
    int pass_negative; /* no balance was ever seen negative */
    int pass_intents;  /* no transaction was left in flight after healing */
    unsigned long wrong_totals, negatives, intents_left;
};

/* Makes the bank of r->o.accounts accounts, spread over every shard.
 * Returns NULL when out of memory or when no account name fits a shard.
 * Free with bank_free(). */
struct bank *bank_new(struct run *r);

/* Frees B (its threads must be joined). NULL is a no-op. */
void bank_free(struct bank *b);

/* Starts r->o.clients client threads of transfers and audits. Returns 0,
 * or -1 when one could not start (those started keep running until
 * r->stop_clients). */
int bank_start(struct bank *b);

/* The number of client threads bank_start() started. */
int bank_started(const struct bank *b);

/* Joins the client threads (each has called chaos_client_done()). */
void bank_join(struct bank *b);

/* Prints what the clients did (committed, conflicted and unknown
 * transfers, audits, errors). A client that could not open a handle is a
 * health problem. */
void bank_report(struct bank *b);

/* With every node running and the clients stopped: runs the final audit
 * (it must commit, with the right total and no negative balance), then
 * waits at most 15 s until no shard leader lists a transaction in flight,
 * and fills *V (main thread). */
void bank_finish(struct bank *b, struct bank_verdict *v);

/* --- the incr workload (incr.c) ------------------------------------------- */

struct incr;

/* The most the final reads of incr_finish() take. */
#define INCR_FINAL_READ_MS 30000

/* What the end of an incr run found. */
struct incr_verdict {
    int pass_counts; /* every counter read, acknowledged <= value <=
                        acknowledged + unknown, and the acknowledged
                        replies of each distinct and in 1..value */
    int pass_order;  /* each client's replies on a counter increased */
    int pass_errors; /* no call failed for sure or with another code */
    unsigned long unread, out_of_bounds, bad_replies, disorder, failed_sure,
        unexpected;
};

/* Makes the workload: r->o.keys counters, counter i on shard i % NSHARDS,
 * named under a prefix unique to the run. Returns NULL when out of memory
 * or when no name fits a shard. Free with incr_free(). */
struct incr *incr_new(struct run *r);

/* Frees W (its threads must be joined). NULL is a no-op. */
void incr_free(struct incr *w);

/* The prefix of the counters' names (owned by W). */
const char *incr_prefix(const struct incr *w);

/* Starts r->o.clients client threads of increments. Returns 0, or -1 when
 * one could not start (those started keep running until r->stop_clients). */
int incr_start(struct incr *w);

/* The number of client threads incr_start() started. */
int incr_started(const struct incr *w);

/* Joins the client threads (each has called chaos_client_done()). */
void incr_join(struct incr *w);

/* Prints what the clients did (acknowledged, unknown, failed increments,
 * unexpected codes). A client that could not open a handle is a health
 * problem. */
void incr_report(struct incr *w);

/* With every node running and the clients stopped: reads every counter
 * (at most INCR_FINAL_READ_MS), checks the counts and the replies, prints
 * the totals and fills *V (main thread). */
void incr_finish(struct incr *w, struct incr_verdict *v);

#endif
