/*
 * kvproc.h - procedures: code that runs on the node holding the data.
 *
 * A procedure is a C function a node runs next to a shard's data, instead
 * of a client pulling the data across the network: one round trip for a
 * read-modify-write of any complexity. Plugins are shared objects listed in
 * cluster.conf (`procedures = procs/ratelimit.so ...`); each exports
 *
 *     int kv_proc_register(kv_proc_registry *reg);
 *
 * which calls kv_proc_define() once per procedure. The built-ins (incr,
 * append, cas, mget) are defined through this same interface.
 *
 * How a call runs (docs/procedures.md has the whole story):
 *   - A call names a procedure and a key; it runs on the leader of that
 *     key's shard. Every key it reads or writes must be on that shard
 *     (use a hash tag, "{user42}.visits", to keep related keys together);
 *     any other key fails the call with KV_EINVAL.
 *   - What it reads is the state as of the call, its own writes included.
 *     Its writes are buffered and, if it returns KV_OK, replicated through
 *     Raft as one atomic write set (the effects, never the code), so
 *     followers never run plugin code and a call is applied exactly once
 *     even when the client retries it. If it returns an error, nothing is
 *     written and the client gets that error and the message set with
 *     kv_proc_error().
 *   - A call may be evaluated more than once before its effects apply (when
 *     what it read changed underneath it, the node runs it again), so a
 *     procedure must depend only on what it reads through the ctx and on
 *     its argument: no clocks (pass the time in the argument), no global
 *     state, no I/O. Only the effects of the last evaluation are applied.
 *   - Budgets bound what one call may do: keys touched (read, written or
 *     scanned), bytes written, reply bytes (cluster.conf proc_max_keys,
 *     proc_max_write_bytes, proc_max_reply_bytes). Going over one ends the
 *     call with KV_EBUDGET and nothing written.
 *   - Procedures defined with KV_PROC_READONLY may not write (put and del
 *     return KV_EINVAL); they are served like linearizable reads, without a
 *     Raft round, and only they can be run on every shard at once
 *     (kv_call_all), their replies merged by the procedure's merge
 *     function.
 *
 * Pointers handed to a procedure (argument, values, keys) are valid until
 * it returns. Procedures run on the node's event loop: a slow one delays
 * every request of that node. Plugins are trusted code (they run inside
 * kvnode with its privileges); budgets bound data, not CPU time.
 */
#ifndef KVPROC_H
#define KVPROC_H

#include <stddef.h>
#include <stdint.h>

#include "kv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this interface: raised only by a change that breaks
 * plugins built before it (a plugin can test it with #if). */
#define KV_PROC_API 1

typedef struct kv_proc_ctx kv_proc_ctx;
typedef struct kv_proc_registry kv_proc_registry;

/* A procedure: ARG (LEN bytes, possibly 0) is the caller's argument.
 * Returns KV_OK, or a negative KV_E* code (after kv_proc_error() for a
 * message); then nothing it wrote is applied. */
typedef int (*kv_proc_fn)(kv_proc_ctx *ctx, const void *arg, size_t len);

/* Merges the replies of a read-only procedure run on every shard (REPLIES[i]
 * of LENS[i] bytes, one per shard that answered, in shard order) into the
 * ctx's reply (kv_proc_reply). Only kv_proc_reply, kv_proc_error and the
 * list helpers may be used on this ctx. */
typedef int (*kv_proc_merge_fn)(kv_proc_ctx *ctx, const void *const *replies,
                                const size_t *lens, size_t n);

#define KV_PROC_READONLY 1u /* never writes: see above */

/* Defines procedure NAME (1 to 64 bytes of [A-Za-z0-9_.-]) in REG. MERGE
 * may be NULL (kv_call_all then returns the replies as a list, one item per
 * shard). Returns KV_EINVAL for a bad name or a name already defined. */
int kv_proc_define(kv_proc_registry *reg, const char *name, kv_proc_fn fn,
                   kv_proc_merge_fn merge, unsigned flags);

/* What every plugin exports. */
int kv_proc_register(kv_proc_registry *reg);

/* The key the call was made with, and its shard's number. */
const void *kv_proc_key(kv_proc_ctx *ctx, size_t *klen);
uint32_t kv_proc_shard(kv_proc_ctx *ctx);

/* Reads KEY: KV_OK with *VAL (*VLEN bytes, valid until the procedure
 * returns) and *VERSION (may be NULL), or KV_ENOTFOUND. The call's own
 * earlier writes are seen. */
int kv_proc_get(kv_proc_ctx *ctx, const void *key, size_t klen,
                const void **val, size_t *vlen, uint64_t *version);

/* Buffers a write of KEY (applied only if the procedure returns KV_OK). */
int kv_proc_put(kv_proc_ctx *ctx, const void *key, size_t klen, const void *val,
                size_t vlen);
int kv_proc_del(kv_proc_ctx *ctx, const void *key, size_t klen);

/* Called by kv_proc_scan for each entry in key order; a non-zero return
 * stops the scan and is returned by kv_proc_scan. KEY and VAL are valid
 * during this call only (copy what must outlive it). */
typedef int (*kv_proc_scan_fn)(void *arg, const void *key, size_t klen,
                               const void *val, size_t vlen);

/* Visits the keys of the call's shard that start with PREFIX (PLEN bytes;
 * 0: every key), in order, at most LIMIT of them (0: up to the keys
 * budget). Each visited key counts against the keys budget: a scan that
 * would visit more fails the call with KV_EBUDGET. The call's own writes
 * are not seen by a scan. */
int kv_proc_scan(kv_proc_ctx *ctx, const void *prefix, size_t plen,
                 uint64_t limit, kv_proc_scan_fn fn, void *arg);

/* Appends LEN bytes to the reply (KV_EBUDGET past the reply budget). */
int kv_proc_reply(kv_proc_ctx *ctx, const void *data, size_t len);

/* Sets the message the caller gets with an error code; returns CODE, so a
 * procedure can `return kv_proc_error(ctx, KV_EINVAL, "bad %s", what);`. */
int kv_proc_error(kv_proc_ctx *ctx, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Lists: several byte strings in one argument or reply, each as a 4-byte
 * big-endian length then the bytes; the length 0xFFFFFFFF with no bytes is
 * a missing item (mget's answer for an absent key). kvclient encodes
 * several ARGs of `kvclient call` as a list. */
#define KV_LIST_MISSING 0xFFFFFFFFu

/* Takes the next item of the list at *P (*LEFT bytes left): KV_OK with
 * *ITEM and *ILEN (*ITEM NULL for a missing item), KV_EOF at the end, or
 * KV_EINVAL when the bytes are not a list. */
int kv_list_next(const void **p, size_t *left, const void **item, size_t *ilen);

/* Appends an item (ITEM NULL: a missing item) to the ctx's reply. */
int kv_proc_reply_item(kv_proc_ctx *ctx, const void *item, size_t ilen);

#ifdef __cplusplus
}
#endif

#endif
