/*
 * bench - the load generator behind `kvclient bench`.
 *
 * It runs a bounded number of operations from N client threads, each with
 * its own kv handle on the same target (a kv handle is used by one thread at
 * a time), records the latency of every operation and reports throughput,
 * percentiles and errors by code. It never runs unbounded: it stops after
 * the configured number of operations. An operation is one get or put, or
 * for the txn workload one transaction of two puts (begin, two kv_txn_put,
 * commit), or for the incr workloads one increment of a hot key: one call of
 * the built-in procedure incr (incr-proc), or the client-side read-modify-
 * write loop that does the same with kv_get and a conditional kv_put
 * (incr-rmw). The incr workloads end by reading their keys back and
 * checking that they hold every acknowledged increment. It does not parse
 * the command line
 * (main.c does) and prints only through bench_print() and, when stderr is a
 * terminal, a progress line on stderr.
 */
#ifndef KVCLIENT_BENCH_H
#define KVCLIENT_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Upper bounds of the settings, checked by the command line. */
#define BENCH_MAX_CLIENTS 1024
#define BENCH_MAX_OPS 20000000ULL /* latencies take 8 bytes per op */
#define BENCH_MAX_KEYS 1000000000ULL
#define BENCH_MAX_VALUE (64u * 1024 * 1024)

/* Error counters are indexed by -code for codes KV_ENOTFOUND..KV_ERANGE;
 * index 0 counts codes this build does not know. */
#define BENCH_NCODES 19

/* The default --keys of the incr workloads: a few hot keys. */
#define BENCH_INCR_KEYS 16

enum bench_workload {
    BENCH_WRITE, /* puts only */
    BENCH_READ,  /* gets only, after an untimed write of the whole key space */
    BENCH_MIXED, /* 50% gets, 50% puts, no preload */
    BENCH_TXN,   /* transactions of two puts (kv_txn_put twice, commit) */
    BENCH_INCR_PROC, /* kv_call(db, "incr", key): one round trip */
    BENCH_INCR_RMW   /* kv_get, then kv_put if_version/if_absent of value+1,
                        again from the get on KV_ECONFLICT */
};

/* Where the two keys of a BENCH_TXN transaction live. */
enum bench_txn_keys {
    BENCH_TXN_SAME,  /* one shard (a shared hash tag): one-step commit */
    BENCH_TXN_CROSS, /* two different shards: two-phase commit */
    BENCH_TXN_BOTH   /* main.c runs SAME, then CROSS; bench_run refuses it */
};

struct bench_config {
    const char *target;  /* what kv_open() gets, for every client */
    uint32_t timeout_ms; /* per call; 0 = the handle's default */
    unsigned clients;    /* threads, 1..BENCH_MAX_CLIENTS */
    uint64_t ops;        /* timed operations in total, 1..BENCH_MAX_OPS */
    size_t value_size;   /* bytes per written value, 0..BENCH_MAX_VALUE */
    uint64_t keys;       /* key space "bench-%08llu", 1..BENCH_MAX_KEYS
                            (incr workloads: "bench/incr/RUN/kN", RUN random
                            per run) */
    enum bench_workload workload;
    enum bench_txn_keys txn_keys; /* BENCH_TXN: SAME or CROSS */
    int json;         /* bench_print() writes one JSON object instead of text */
    unsigned threads; /* threads that carry the clients; 0 = automatic:
                         one per client for an embedded target or the txn
                         workload, else one per 64 clients, each keeping its
                         clients' requests in flight together (pipelined,
                         one session per client). BENCH_TXN and the incr
                         workloads need one per client (their operations
                         block their thread). */
};

struct bench_result {
    uint64_t ops;       /* timed operations run */
    uint64_t errors;    /* of them, failed (a get's KV_ENOTFOUND is no error) */
    uint64_t not_found; /* gets that found no key */
    uint64_t by_code[BENCH_NCODES];
    double seconds; /* wall time of the timed phase */
    double ops_per_sec;
    double p50_ms, p95_ms, p99_ms, max_ms; /* over every timed operation */
    /* The incr workloads (ops_per_sec then counts increments, not ops): */
    uint64_t increments;   /* acknowledged (KV_OK) increments */
    uint64_t timed_out;    /* increments whose outcome is unknown (a write or
                              call that ended KV_ETIMEDOUT / KV_EUNAVAILABLE) */
    uint64_t retries;      /* incr-rmw: attempts again after KV_ECONFLICT */
    int verified;          /* the keys were read back: verify_* are set */
    int verify_rc;         /* KV_OK: the sum is right; KV_ECORRUPT: it is not
                              (or a key holds no integer); else the code of the
                              read that failed */
    int64_t verify_sum;    /* the sum of the values read back */
    uint64_t verify_found; /* keys that exist */
    char verify_msg[256];  /* with verify_rc: what is wrong */
};

/* Runs the benchmark described by CFG and fills *RES. Returns KV_OK when
 * the timed phase ran (its operations may have failed: see res->errors;
 * for the incr workloads, the check of the sum may have failed: see
 * res->verify_rc), or
 * the code that stopped it before (a client could not open its handle, the
 * read workload's preload failed, memory or threads ran out); then ERR
 * (ERRLEN bytes) says what failed. */
int bench_run(const struct bench_config *cfg, struct bench_result *res,
              char *err, size_t errlen);

/* Prints RES to OUT: a few "name value" lines, or one JSON object when
 * cfg->json is set. The incr workloads add their counts and the line
 * "verify: sum S of N keys = acknowledged A" (JSON: a "verify" object). */
void bench_print(FILE *out, const struct bench_config *cfg,
                 const struct bench_result *res);

/* Whether W is one of the incr workloads. */
int bench_is_incr(enum bench_workload w);

/* The most frequent error code of RES (on a tie the one closest to 0;
 * KV_EINTERNAL stands for codes this build does not know), or KV_OK when no
 * operation failed. */
int bench_top_error(const struct bench_result *res);

/* Parses "write", "read", "mixed", "txn", "incr-proc" or "incr-rmw".
 * Returns 0, or -1 for anything else. */
int bench_parse_workload(const char *s, enum bench_workload *out);

/* The name of W: "write", "read", "mixed", "txn", "incr-proc" or
 * "incr-rmw". */
const char *bench_workload_name(enum bench_workload w);

/* Parses "same", "cross" or "both". Returns 0, or -1 for anything else. */
int bench_parse_txn_keys(const char *s, enum bench_txn_keys *out);

/* The name of K: "same", "cross" or "both". */
const char *bench_txn_keys_name(enum bench_txn_keys k);

/* Provided by main.c: the stable symbolic name of a kv result code
 * ("KV_ENOTFOUND", ...; "KV_E?" for a code this build does not know). */
const char *cli_code_name(int code);

#endif
