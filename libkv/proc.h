/*
 * proc - running procedures (libkv/kvproc.h) against some view of a shard.
 *
 * The registry holds the built-in procedures (incr, append, cas, mget) and
 * those of the plugins loaded from cluster.conf, each plugin with the
 * BLAKE2b hash of its file. proc_run() runs one call against a reader (the
 * engine in embedded mode; on a node, the applied state plus the writes of
 * entries proposed but not applied yet) and returns its effects: the
 * conditions that make the evaluation valid (each key read at the version
 * it had) and the writes, as transaction ops that engine_stage_txn() applies
 * all or nothing. The caller replicates and applies them; proc.c does no
 * I/O besides loading plugins.
 */
#ifndef KV_PROC_H
#define KV_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "kvproc.h"

/* A reader cannot answer yet: an entry whose outcome it cannot predict
 * (a conditional write, a transaction step) is in flight on the key or,
 * for a scan, on the shard. The caller runs the call again later. */
#define PROC_EWAIT (-101)

#define PROC_MAX_NAME 64
#define PROC_HASH_LEN 32
#define PROC_MAX_PLUGINS 64 /* cluster.conf procedures: at most this many */

/* What a call reads through. */
struct proc_reader {
    void *arg;
    /* KEY's value as of the call: KV_OK with a malloc()ed *VAL (the caller
     * frees it; NULL allowed when *VLEN is 0) and *VERSION (> 0), or
     * KV_ENOTFOUND, PROC_EWAIT, ENGINE_ELOCKED (a transaction holds the
     * key: the call fails with it), or another error. */
    int (*get)(void *arg, uint32_t shard, const void *key, size_t klen,
               void **val, size_t *vlen, uint64_t *version);
    /* Scans SC (on its shard) calling FN per entry, or returns PROC_EWAIT. */
    int (*scan)(void *arg, const struct engine_scan *sc, engine_emit_fn fn,
                void *fnarg);
};

struct proc_limits {
    /* keys touched: each distinct key got, put or deleted counts once, and
     * each entry a scan visits once more */
    uint64_t max_keys;
    /* bytes written: the key and value of every put and the key of every
     * delete, summed as the call makes them (a key written twice counts
     * twice) */
    uint64_t max_write_bytes;
    uint64_t max_reply_bytes;
    uint64_t max_key_bytes; /* cluster.conf limits of one key and value */
    uint64_t max_value_bytes;
};

/* The outcome of one evaluation. */
struct proc_result {
    int code;      /* KV_OK or the error the caller gets */
    char msg[256]; /* with an error: what went wrong */
    bool readonly; /* the procedure is defined KV_PROC_READONLY */
    bool scanned;  /* it scanned: valid only right after what it read */
    /* Effects (code KV_OK): IF_VERSION / IF_ABSENT conditions for the keys
     * read, then PUT / DEL for the keys written (one op per key, the last
     * write). Keys and values point into the result's own memory. */
    struct engine_txn_op *ops;
    size_t nops;
    size_t nwrites; /* how many of the ops are writes */
    unsigned char *reply;
    size_t rlen;
    void *mem; /* internal */
};

struct proc_registry;

/* A loaded plugin, for the hash check between nodes. */
struct proc_plugin {
    char name[PROC_MAX_NAME + 1]; /* file name without directories */
    unsigned char hash[PROC_HASH_LEN];
};

/* Makes a registry with the built-ins and the plugins at PATHS (NPATHS,
 * each loaded with dlopen and hashed with BLAKE2b). On error, ERR says
 * which plugin and why (not found, no kv_proc_register, a procedure
 * defined twice, ...). */
int proc_registry_open(const char *const *paths, size_t npaths,
                       struct proc_registry **out, char *err, size_t errlen);
void proc_registry_close(struct proc_registry *reg);

/* The plugins loaded (*N of them), in the order of the paths. */
const struct proc_plugin *proc_plugins(const struct proc_registry *reg,
                                       size_t *n);

/* Whether NAME is defined; *READONLY and, if not NULL, *PLUGIN (the index
 * into proc_plugins(), or -1 for a built-in). */
bool proc_lookup(const struct proc_registry *reg, const char *name, size_t nlen,
                 bool *readonly, int *plugin);

/* Runs NAME on KEY's shard SHARD (of NSHARDS) with ARG, reading through
 * RD. RESULT is filled in every case (free it with proc_result_free);
 * returns RESULT->code. Unknown name: KV_ENOPROC. KEY may be empty for a
 * call made on every shard (then only a read-only procedure). */
int proc_run(const struct proc_registry *reg, const char *name, size_t nlen,
             uint32_t shard, uint32_t nshards, const void *key, size_t klen,
             const void *arg, size_t alen, const struct proc_reader *rd,
             const struct proc_limits *lim, struct proc_result *result);

/* Merges per-shard replies of NAME with its merge function (or into a
 * list when it has none) into RESULT->reply. */
int proc_merge(const struct proc_registry *reg, const char *name, size_t nlen,
               const void *const *replies, const size_t *lens, size_t n,
               const struct proc_limits *lim, struct proc_result *result);

void proc_result_free(struct proc_result *result);

#endif
