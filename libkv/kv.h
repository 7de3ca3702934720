/*
 * kv.h - the client API of kv, a sharded, replicated key-value store.
 *
 * The same API serves two modes, chosen by the target given to kv_open():
 *   - cluster:  a cluster.conf path, or a seed list "tcp://host:port,...";
 *               requests go over ZeroMQ to the node that serves each key.
 *   - embedded: "embedded:DIR"; the storage engine runs in this process on a
 *               LevelDB directory DIR.
 *
 * Conventions, stated once:
 *   - Every fallible function returns an int: KV_OK (0) or a negative KV_E*
 *     code. kv_strerror() names a code; kv_errmsg() gives the detail of the
 *     last error on a handle. Codes are never renumbered or reused.
 *   - Keys and values are (pointer, length) pairs and binary-safe. Keys are
 *     1..4096 bytes (or the cluster's max_key_bytes); values 0..max_value_bytes
 *     (1 MiB by default). Larger input fails with KV_ETOOBIG, nothing stored.
 *   - Outputs go through pointers. A buffer the library allocates for the
 *     caller is freed with kv_free(); handles with their own *_close/_free.
 *     On error, output pointers are left untouched.
 *   - Not found is the code KV_ENOTFOUND, never a NULL.
 *   - A kv handle is used by one thread at a time; open one handle per
 *     thread. Handles on the same "embedded:DIR" share one engine (and its
 *     group commit), so several threads of one process can use it at once.
 *   - A write returns KV_OK only once it is durable (fsynced). When a call
 *     returns KV_ETIMEDOUT or KV_EUNAVAILABLE for a write, the write may or
 *     may not have taken effect.
 *   - Versions: every key carries a version, a number that strictly
 *     increases with each write to the key's shard. Conditional writes
 *     compare against it. Version 0 never names an existing key.
 */
#ifndef KV_H
#define KV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Result codes. */
#define KV_OK 0
#define KV_ENOTFOUND (-1)    /* the key does not exist */
#define KV_ENOTLEADER (-2)   /* this node does not serve the key (redirect) */
#define KV_ECONFLICT (-3)    /* a condition (version, absence) did not hold */
#define KV_ETIMEDOUT (-4)    /* no answer in time; a write's outcome unknown */
#define KV_EUNAVAILABLE (-5) /* no node able to serve the request answers */
#define KV_EINVAL (-6)       /* invalid argument or configuration */
#define KV_ETOOBIG (-7)      /* key, value or message over its limit */
#define KV_EPROTO (-8)       /* malformed or incompatible message */
#define KV_EIO (-9)          /* storage or system I/O failed */
#define KV_ECORRUPT (-10)    /* stored data failed a check */
#define KV_ENOMEM (-11)      /* out of memory */
#define KV_EAUTH (-12)       /* authentication failed or not allowed */
#define KV_EOF (-13)         /* an iterator has no more entries */
#define KV_EINTERNAL (-14)   /* a bug: please report it */
#define KV_ENOPROC (-15)     /* no procedure of that name is defined */
#define KV_EPROC (-16)       /* a procedure failed (see kv_errmsg) */
#define KV_EBUDGET (-17)     /* a procedure went over one of its budgets */
#define KV_ERANGE (-18)      /* a number is out of range (incr overflow) */

/* Returns a static, human-readable name for a result code. */
const char *kv_strerror(int code);

/* An open database: a connection to a cluster or an embedded engine. */
typedef struct kv kv;

/* Options for kv_open(). Zero-initialise ({0}) and set what you need; fields
 * are only ever added at the end. NULL means all defaults. */
typedef struct kv_open_opts {
    uint32_t timeout_ms; /* default per-call timeout; 0 = the cluster's
                            request_timeout_ms (embedded: 5000 ms) */
    /* The client's CurveZMQ key file (made by `kvclient keygen FILE`; its
     * public key must be among the cluster's client keys). NULL: the file
     * named by $KV_CLIENT_KEY, if set. Required when the cluster.conf says
     * [security] curve = on (else kv_open fails with KV_EAUTH), unused when
     * it does not; with a seed list target it is KV_EINVAL (a seed list
     * cannot carry the nodes' public keys). Embedded: unused. */
    const char *key_file;
} kv_open_opts;

/* Opens TARGET: "embedded:DIR" (created if missing), "tcp://h:p,tcp://h:p"
 * (a seed list: the cluster's layout is asked from the first node that
 * answers), or the path of a cluster.conf. On success *db is a new handle
 * the caller closes with kv_close(). KV_EAUTH: the cluster requires a
 * client key and none was given, or (from a seed list) a node requires
 * CurveZMQ; kv_errmsg(NULL) says which.
 *
 * With CurveZMQ (docs/security.md) every call that meets a node refusing
 * this client's key, or a node and a client disagreeing on CurveZMQ, ends
 * at once with KV_EAUTH and kv_errmsg() says why, instead of timing out. */
int kv_open(const char *target, const kv_open_opts *opts, kv **db);

/* Closes a handle and frees everything it owns. NULL is a no-op. Every
 * acknowledged write is already durable; closing loses nothing. */
void kv_close(kv *db);

/* The detail of the last error returned on DB ("" if none). The string
 * belongs to the handle and is valid until its next call. With DB NULL: the
 * detail of this thread's last failed kv_open() (e.g. the file, line and
 * problem of a broken cluster.conf). */
const char *kv_errmsg(const kv *db);

/* Frees a buffer returned by this library (a value from kv_get). */
void kv_free(void *p);

/* Per-call options. Zero-initialise ({0}); NULL means all defaults. Fields
 * are only ever added at the end. */
typedef struct kv_opts {
    uint32_t timeout_ms; /* this call's timeout; 0 = the handle's default */
    uint64_t if_version; /* put/del: only if the key's version equals this */
    int if_absent;       /* put: only if the key does not exist */
    int stale;           /* get/scan: a replica may answer (may be stale) */
} kv_opts;

/* Reads KEY. On KV_OK, *val is a kv_free()able copy of the value (NULL when
 * its length is 0), *vlen its length and, if VERSION is not NULL, *version
 * the key's version. Returns KV_ENOTFOUND when the key does not exist. */
int kv_get(kv *db, const void *key, size_t klen, const kv_opts *o, void **val,
           size_t *vlen, uint64_t *version);

/* Writes KEY = VAL. With o->if_version, only when the key exists at that
 * version; with o->if_absent, only when it does not exist; otherwise
 * KV_ECONFLICT and nothing is written. On KV_OK the write is durable and, if
 * VERSION is not NULL, *version is the version it created. */
int kv_put(kv *db, const void *key, size_t klen, const void *val, size_t vlen,
           const kv_opts *o, uint64_t *version);

/* Deletes KEY. Returns KV_ENOTFOUND when it did not exist, KV_ECONFLICT when
 * o->if_version is set and differs from the key's version. */
int kv_del(kv *db, const void *key, size_t klen, const kv_opts *o);

/* A scan: keys in byte order across all shards. */
typedef struct kv_iter kv_iter;

/* What to scan. Zero-initialise ({0}); empty bounds mean unbounded. */
typedef struct kv_scan_opts {
    const void *start; /* inclusive lower bound */
    size_t start_len;
    const void *end; /* exclusive upper bound */
    size_t end_len;
    const void *prefix; /* only keys beginning with this */
    size_t prefix_len;
    uint64_t limit; /* at most this many entries; 0 = no limit */
} kv_scan_opts;

/* Starts a scan. Entries are fetched in pages as the caller iterates, so a
 * scan of any size uses bounded memory. Each page is consistent per shard;
 * the whole scan is not a snapshot. Free *it with kv_iter_free(). */
int kv_scan(kv *db, const kv_scan_opts *so, const kv_opts *o, kv_iter **it);

/* Moves to the next entry. On KV_OK the pointers (any may be NULL) are set
 * to the entry, valid until the next call on IT. Returns KV_EOF after the
 * last entry, or an error code. */
int kv_iter_next(kv_iter *it, const void **key, size_t *klen, const void **val,
                 size_t *vlen, uint64_t *version);

/* Frees an iterator. NULL is a no-op. */
void kv_iter_free(kv_iter *it);

/* --- transactions ---------------------------------------------------------
 *
 * Optimistic transactions: conditions and writes are buffered in the
 * transaction and sent in one request by kv_txn_commit(), which applies
 * them all or none. Every condition (kv_txn_if_version, kv_txn_if_absent,
 * and the version each kv_txn_get read) is checked against the state just
 * before the transaction; if any no longer holds, nothing is written and
 * commit returns KV_ECONFLICT. Several ops may name one key: conditions see
 * the state before the transaction and the last write of a key wins; all
 * writes on one shard get one new version.
 *
 * A transaction belongs to its handle's thread and is ended by exactly one
 * kv_txn_commit() or kv_txn_abort(). Keys and values are checked as for
 * kv_put() when each op is added (KV_EINVAL empty key or NULL value with a
 * length, KV_ETOOBIG over max_key_bytes / max_value_bytes), and so is the
 * transaction's size: more than max_txn_ops ops or max_txn_bytes bytes of
 * keys and values (cluster.conf; embedded: 1000 ops and 1 MiB) is
 * KV_ETOOBIG. An op that fails to be added leaves the transaction as it was.
 *
 * In a cluster, a transaction is sent to its home shard: the shard of its
 * first written key (of its first key when it writes nothing). When every
 * key is on that shard it commits in one step; keys on other shards are
 * committed with it by two-phase commit, at the cost of more round trips.
 * Keys that share a hash tag ({...}) share a shard. An embedded database is
 * one shard: any keys go together. */
typedef struct kv_txn kv_txn;

/* Begins a transaction on DB. OPTS (NULL: defaults) gives its timeout_ms,
 * used by each of its reads and by its commit; its other fields must be 0
 * (KV_EINVAL). On KV_OK *txn is a new transaction to end with
 * kv_txn_commit() or kv_txn_abort(). */
int kv_txn_begin(kv *db, const kv_opts *opts, kv_txn **txn);

/* Reads KEY now (a linearizable kv_get) and records the version read (0
 * when absent) as a condition checked at commit. Outputs as kv_get():
 * *val a kv_free()able copy (NULL when empty), and *version if VERSION is
 * not NULL; KV_ENOTFOUND when the key does not exist (recorded too). A key
 * this transaction already wrote is answered from its own last buffered
 * write (a put's value with *version 0, or KV_ENOTFOUND for a delete) and
 * records nothing. A failed read records nothing. */
int kv_txn_get(kv_txn *txn, const void *key, size_t klen, void **val,
               size_t *vlen, uint64_t *version);

/* Buffers KEY = VAL (written at commit). */
int kv_txn_put(kv_txn *txn, const void *key, size_t klen, const void *val,
               size_t vlen);

/* Buffers the deletion of KEY (at commit; deleting a missing key in a
 * transaction is no error). */
int kv_txn_del(kv_txn *txn, const void *key, size_t klen);

/* Adds a condition: KEY exists at VERSION (> 0, else KV_EINVAL). */
int kv_txn_if_version(kv_txn *txn, const void *key, size_t klen,
                      uint64_t version);

/* Adds a condition: KEY does not exist. */
int kv_txn_if_absent(kv_txn *txn, const void *key, size_t klen);

/* Commits and ENDS TXN: it is freed whatever the outcome. KV_OK: every
 * write took effect, durably; if VERSIONS is not NULL, *versions is a
 * kv_free()able array of *n versions (NULL when 0), one per put or delete
 * in the order they were added: the put's new version (one per shard), 0
 * for a delete.
 * KV_ECONFLICT: a condition or a read version no longer held, nothing was
 * written; kv_errmsg() names the key and its expected and actual version.
 * A transaction over several shards may also end KV_ECONFLICT when one of
 * its keys is locked by another such transaction in progress (nobody
 * waits for a lock), or when not every shard voted before its deadline
 * (txn_timeout_ms): nothing was written, and kv_errmsg() says which.
 * KV_ETIMEDOUT / KV_EUNAVAILABLE: the outcome is unknown, as for kv_put().
 * KV_ETOOBIG: over the limits (nothing sent). A transaction with no op
 * commits trivially (KV_OK, *n 0). Inside kv_txn_run() the transaction is
 * committed by kv_txn_run itself: this returns KV_EINVAL and ends nothing. */
int kv_txn_commit(kv_txn *txn, uint64_t **versions, size_t *n);

/* Ends TXN without committing and frees it. NULL is a no-op; so is a
 * transaction that kv_txn_run() handed to its function. */
void kv_txn_abort(kv_txn *txn);

/* Runs FN in a transaction: begins one, calls FN(txn, ARG), and commits
 * when FN returns KV_OK (otherwise aborts and returns FN's code). On
 * KV_ECONFLICT, from FN or from the commit, it starts again after a
 * jittered exponential backoff (2 ms doubling to 200 ms, +-50%) until the
 * timeout of OPTS (NULL or 0: the handle's default) has passed (or too
 * little of it is left for another attempt: 100 ms, or a quarter of the
 * timeout when that is less), and then returns KV_ECONFLICT. FN may be called
 * several times, so it must have no effect besides its ops on TXN; it must not
 * commit or abort TXN. Returns the last code. */
int kv_txn_run(kv *db, const kv_opts *opts, int (*fn)(kv_txn *txn, void *arg),
               void *arg);

/* ---- procedures (docs/procedures.md) ----------------------------------
 *
 * Procedures run on the node holding the data: one round trip for a
 * read-modify-write of any complexity. Built-ins: incr, append, cas, mget;
 * plugins are listed in cluster.conf (`procedures = ...`). In embedded mode
 * the same procedures run in-process (plugins: KV_PROCEDURES, a
 * space-separated list of .so paths in the environment). */

/* Calls procedure NAME on the shard of KEY with ARG (ALEN bytes; ARG may
 * be NULL when ALEN is 0). On KV_OK *reply (*rlen bytes, free with
 * kv_free; NULL when empty) is what it replied. A procedure that writes
 * is applied at most once, even when this call retries it, and exactly
 * once when it returns KV_OK; a read-only one is a linearizable read.
 * Errors: KV_ENOPROC (no such procedure), KV_EINVAL (bad argument, a key
 * outside the call's shard), KV_EBUDGET (over a budget), KV_ERANGE,
 * KV_EPROC (the procedure failed, or its plugin differs between nodes),
 * or the procedure's own code (cas: KV_ECONFLICT, with *reply set to the
 * current value as a one-item list); kv_errmsg() tells why. Nothing is
 * written on any error. KV_ETIMEDOUT / KV_EUNAVAILABLE: the outcome is
 * unknown, as for kv_put(). On every error *reply is NULL unless the
 * procedure replied with its error. */
int kv_call(kv *db, const char *name, const void *key, size_t klen,
            const void *arg, size_t alen, const kv_opts *o, void **reply,
            size_t *rlen);

/* Runs the read-only procedure NAME on every shard in parallel and returns
 * the replies merged by its merge function (or, without one, as a list
 * with one item per shard in shard order). Errors as kv_call(); a write
 * procedure is KV_EINVAL. */
int kv_call_all(kv *db, const char *name, const void *arg, size_t alen,
                const kv_opts *o, void **reply, size_t *rlen);

/* The shard that holds KEY in a cluster of NSHARDS shards: siphash-2-4 of
 * the key, or of the part inside its first {...} (a hash tag) when that part
 * is not empty, modulo NSHARDS. Keys with the same tag share a shard. */
uint32_t kv_shard_of(const void *key, size_t klen, uint32_t nshards);

#ifdef __cplusplus
}
#endif

#endif /* KV_H */
