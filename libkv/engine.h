/*
 * engine - the shard state machine: records, versions, conditional writes.
 *
 * One piece of code serves embedded mode (called directly) and kvnode (called
 * from its event loop), so the two cannot drift. The engine is
 * single-threaded: its caller serialises calls.
 *
 * Writes are staged, then committed in groups: engine_stage() evaluates a
 * write's condition against the latest state (staged writes included),
 * assigns its version and adds it to one pending batch; engine_commit()
 * writes that batch to the store with sync=true. A caller acknowledges a
 * staged write (success or failed condition) only after the commit that
 * follows it succeeded. Reads (engine_get, engine_scan) see committed state
 * only, which is linearizable because nothing staged has been acknowledged.
 *
 * Layout in the store (see docs/architecture.md):
 *   "M" name                     node metadata
 *   "A" shard(u32 BE)            the shard's last version and key count
 *                                (u64 BE each), written with every write
 *   "D" shard(u32 BE) user key   record: 0x01, version (u64 BE), value
 *   "S" shard(u32 BE) client id  session: seq, code (i32), version
 *   "I" shard user key           intent of a prepared transaction: txn id,
 *                                kind, version, home, deadline, value
 *   "P" shard txn id             participant record: home, deadline,
 *                                version, the keys it holds intents on;
 *                                once resolved, a tombstone: the same
 *                                header with the key count UINT32_MAX,
 *                                then the outcome (one byte)
 *   "X" shard txn id             transaction record on its home shard:
 *                                state, deadline, participant shards
 */
#ifndef KV_ENGINE_H
#define KV_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;
struct engine;

enum engine_op { ENGINE_PUT, ENGINE_DEL };

struct engine_write {
    enum engine_op op;
    uint32_t shard;
    const void *key;
    size_t klen;
    const void *val; /* ENGINE_PUT only */
    size_t vlen;
    uint64_t if_version; /* 0: no version condition */
    bool if_absent;      /* ENGINE_PUT only */
    /* Replicated mode: the Raft index of the entry being applied. It becomes
     * the write's version and the shard's applied index whatever the
     * outcome; it must exceed the shard's applied index. 0: the next
     * version (embedded mode and unreplicated nodes). */
    uint64_t index;
    /* Exactly-once: a write with seq > 0 from a client whose session already
     * recorded seq or later is not applied again; it gets the recorded
     * outcome. The session table is part of the shard's state. */
    const void *client_id;
    size_t client_id_len; /* 1..64 */
    uint64_t seq;
};

#define ENGINE_MAX_CLIENT_ID 64

/* Whether a write's session can be recorded: no sequence number, or one
 * below 2^63 (the record keeps the top bit) with a client id of 1 to
 * ENGINE_MAX_CLIENT_ID bytes. Writes that break it are KV_EINVAL. */
bool engine_session_ok(const void *client_id, size_t len, uint64_t seq);

/* A transaction on one shard: conditions and writes applied all or none. */
enum engine_txn_kind {
    ENGINE_TXN_PUT,
    ENGINE_TXN_DEL,
    ENGINE_TXN_IF_VERSION, /* the key's version must equal .version (> 0) */
    ENGINE_TXN_IF_ABSENT,  /* the key must not exist */
};

struct engine_txn_op {
    enum engine_txn_kind kind;
    const void *key;
    size_t klen;     /* > 0 */
    const void *val; /* ENGINE_TXN_PUT */
    size_t vlen;
    uint64_t version; /* ENGINE_TXN_IF_VERSION */
};

struct engine_txn {
    uint32_t shard; /* every key of the transaction is on this shard */
    const struct engine_txn_op *ops;
    size_t nops; /* > 0 */
    /* index, client_id, client_id_len, seq: as in struct engine_write */
    uint64_t index;
    const void *client_id;
    size_t client_id_len;
    uint64_t seq;
};

struct engine_scan {
    uint32_t shard;
    const void *start; /* inclusive; NULL/0 = from the first key */
    size_t start_len;
    const void *end; /* exclusive; NULL/0 = no bound */
    size_t end_len;
    const void *prefix; /* NULL/0 = all keys */
    size_t prefix_len;
    const void *after; /* resume cursor, exclusive; used when has_after */
    size_t after_len;
    bool has_after;
    uint64_t limit; /* at most this many entries; 0 = no limit */
};

/* Called by engine_scan() for each entry; a non-zero return stops the scan
 * and is returned by engine_scan(). Pointers are valid during the call. */
typedef int (*engine_emit_fn)(void *arg, const void *key, size_t klen,
                              const void *val, size_t vlen, uint64_t version);

/* Opens the engine over S (which the caller keeps and closes after
 * engine_close) for NSHARDS shards, loading each shard's applied version.
 * On KV_OK *out is an engine to engine_close(). */
int engine_open(struct store *s, uint32_t nshards, struct engine **out);

/* Frees the engine. Staged, uncommitted writes are discarded. */
void engine_close(struct engine *e);

/* Checks the metadata of the store against CLUSTER, NODE_ID and NSHARDS,
 * writing it (synced) on first use. Returns KV_EINVAL with the mismatch in
 * ERR when the directory belongs to another cluster, node or shard count. */
int engine_check_meta(struct engine *e, const char *cluster, uint32_t node_id,
                      char *err, size_t errlen);

/* Reads KEY of SHARD from committed state. On KV_OK *val is a malloc()ed copy
 * (NULL when *vlen is 0; free() it) and *version its version (either out
 * pointer may be NULL). Returns KV_ENOTFOUND, KV_EIO or KV_ECORRUPT. */
int engine_get(struct engine *e, uint32_t shard, const void *key, size_t klen,
               void **val, size_t *vlen, uint64_t *version);

/* Evaluates W against the latest state and stages it. Returns KV_OK with
 * *version set (the new version for a put, 0 for a delete), KV_ECONFLICT
 * when a condition fails, KV_ENOTFOUND when deleting a missing key; no data
 * is staged unless KV_OK (with W->index the applied index and the session
 * are staged whatever the outcome). A write the session table has seen gets
 * its first outcome again. The outcome is final only after engine_commit().
 * KV_EINVAL: bad shard, index not above the applied index, bad client id.
 * ENGINE_ELOCKED: the key holds an intent of a transaction in progress;
 * nothing but the applied index is staged, not even the session, so a
 * retry is evaluated anew. */
int engine_stage(struct engine *e, const struct engine_write *w,
                 uint64_t *version);

/* Evaluates and stages a transaction: every condition is checked against
 * the state before the transaction; if all hold, the writes are staged in
 * order (a later write of the same key wins; deleting a missing key is no
 * error) and all get one version: the new version of the shard. Returns
 * KV_OK with VERSIONS[i] (NOPS entries, caller's array) set per op: a put's
 * new version, 0 for a delete, a condition's checked version. KV_ECONFLICT
 * when a condition fails: *FAILED is its 1-based index and *CURRENT the
 * key's version then (0: absent); nothing is written (the applied index and
 * session are, as for engine_stage). A retried transaction gets its first
 * outcome again, with *FAILED 0 when that was a conflict. KV_EINVAL: bad
 * shard, index, client id, no ops or an empty key. ENGINE_ELOCKED: as for
 * engine_stage, when any key holds an intent. */
int engine_stage_txn(struct engine *e, const struct engine_txn *t,
                     uint64_t *versions, size_t *failed, uint64_t *current);

/* The effects of a procedure call (libkv/proc.h), as its leader evaluated
 * them: TXN's ops are conditions (the keys the call read, as it read them)
 * then writes; nops may be 0. REPLY is recorded in the session with the
 * outcome, so a retried call gets the first reply. AFTER_INDEX, when not 0,
 * makes the effects valid only as the entry right after that index (a call
 * that scanned saw the shard as of AFTER_INDEX). */
struct engine_effect {
    struct engine_txn txn;
    const void *reply;
    size_t rlen;
    uint64_t after_index;
};

/* The evaluation a procedure's effects came from is out of date (a key it
 * read changed since): nothing was applied and nothing recorded. */
#define ENGINE_ESTALE (-102)

/* Applies F like engine_stage_txn, except that a failed condition (or a
 * broken AFTER_INDEX) is ENGINE_ESTALE. On KV_OK *VERSION is the version
 * the writes got (0: nothing written) and *REPLY (*RLEN bytes, malloc()ed,
 * NULL when empty) the recorded reply; a retry (the session holds SEQ or a
 * later write) returns the recorded outcome, version and reply. */
int engine_stage_effect(struct engine *e, const struct engine_effect *f,
                        uint64_t *version, void **reply, size_t *rlen);

/* ---- two-phase commit (cross-shard transactions) --------------------
 *
 * A participant shard prepares its part of a transaction (conditions
 * checked, an intent written on every key it names), then resolves it
 * (commit: intents become records at the prepare's version; abort: intents
 * go). The home shard keeps the transaction record: PENDING until decided
 * COMMITTED or ABORTED, then forgotten once every participant resolved.
 * Each call is one Raft entry's apply (INDEX, as for engine_stage):
 * deterministic, and idempotent so a repeated entry does no harm. Any
 * failure other than the documented outcomes (memory, storage) may leave
 * part of an entry staged: the caller must then stop without committing
 * (kvnode does). Embedded mode has one shard and never uses them. */

#define ENGINE_TXN_ID_LEN 16
/* A key is locked by an intent of another transaction in progress. */
#define ENGINE_ELOCKED (-100)

enum engine_txn_state {
    ENGINE_TXN_PENDING = 0,
    ENGINE_TXN_COMMITTED = 1,
    ENGINE_TXN_ABORTED = 2,
    ENGINE_TXN_UNKNOWN = 3, /* no record: never made, or forgotten */
};

struct engine_prepare {
    struct engine_txn txn;       /* this shard's ops, index (no session) */
    const unsigned char *txn_id; /* ENGINE_TXN_ID_LEN bytes */
    uint32_t home;
    uint64_t deadline_ms; /* wall clock */
    uint64_t now_ms;      /* the proposer's wall clock, in the entry */
};

/* Prepares: KV_OK (a YES vote; *VERSION is the version its writes get
 * when committed: the index of the entry that first prepared it) when no
 * key holds another transaction's intent, every condition holds and the
 * deadline has not passed; an intent is then staged on every key of the
 * ops and a participant record. Otherwise a NO vote and nothing but the
 * applied index: ENGINE_ELOCKED (a key is locked), KV_ECONFLICT (condition
 * *FAILED, 1-based, found *CURRENT) or KV_ETIMEDOUT (past the deadline).
 * Preparing a transaction this shard holds already answers YES again.
 * Preparing one this shard resolved already (a late or repeated message:
 * its tombstone is there) locks nothing: KV_OK with the version of its
 * first prepare (0 when it was resolved without one) when it committed,
 * KV_ETIMEDOUT (a NO) when it aborted. */
int engine_stage_prepare(struct engine *e, const struct engine_prepare *p,
                         uint64_t *version, size_t *failed, uint64_t *current);

/* Resolves TXN_ID on SHARD: COMMIT turns its intents into records at the
 * prepare's version (a lock-only intent changes nothing), otherwise they
 * go. The participant record becomes a tombstone that keeps the outcome,
 * the prepare's version and its deadline, or, when nothing was prepared,
 * a tombstone with version 0 and deadline NOW_MS (the proposer's clock in
 * the entry), so that a prepare arriving later cannot lock the keys again.
 * A tombstone is no participant record to anything else: not listed, not
 * counted. Resolving again (a tombstone is there) changes nothing. */
int engine_stage_resolve(struct engine *e, uint32_t shard, uint64_t index,
                         const unsigned char *txn_id, bool commit,
                         uint64_t now_ms);

/* How long a tombstone outlives its deadline, and how many one
 * engine_stage_gc removes at most. */
#define ENGINE_TOMB_KEEP_MS 60000
#define ENGINE_TOMB_GC_MAX 256

/* Removes SHARD's tombstones whose deadline + ENGINE_TOMB_KEEP_MS is before
 * NOW_MS (the proposer's clock in the entry), at most ENGINE_TOMB_GC_MAX,
 * the first in txn id order; *REMOVED (may be NULL) says how many. Reads
 * the staged state, so every replica removes the same ones. */
int engine_stage_gc(struct engine *e, uint32_t shard, uint64_t index,
                    uint64_t now_ms, size_t *removed);

/* Whether SHARD may hold a tombstone that engine_stage_gc at NOW_MS would
 * remove (staged state; cheap, from a count kept in memory). */
bool engine_gc_due(const struct engine *e, uint32_t shard, uint64_t now_ms);

/* Session expiry (docs/replication.md, "Exactly-once writes"). Every
 * session record is dated: kept until a time (wall clock, ms since the
 * epoch) that the proposer of the write that wrote it chose. The entries
 * staged after engine_session_until(E, UNTIL_MS) date the sessions they
 * write with UNTIL_MS (0: undated, as records written before sessions
 * expired). */
void engine_session_until(struct engine *e, uint64_t until_ms);

/* Whether SHARD has committed sessions (one seek in the store). */
bool engine_has_sessions(struct engine *e, uint32_t shard);

/* How many sessions one engine_stage_session_gc looks at, at most. */
#define ENGINE_SESSION_GC_SCAN 1024

struct engine_session_gc {
    size_t removed; /* sessions deleted: their date passed */
    size_t dated;   /* undated sessions given a date */
    unsigned char after[ENGINE_MAX_CLIENT_ID]; /* the last client id seen */
    size_t after_len;                          /* 0: went through to the end */
};

/* Goes through at most ENGINE_SESSION_GC_SCAN of SHARD's sessions as
 * staged, in client id order after AFTER (ALEN bytes; 0: from the first):
 * deletes those kept until before NOW_MS (the proposer's clock in the
 * entry) and dates the undated ones NOW_MS + TTL_MS. *OUT says how many,
 * and where the next one goes on. Every replica that applied the same
 * entries does the same. */
int engine_stage_session_gc(struct engine *e, uint32_t shard, uint64_t index,
                            uint64_t now_ms, uint64_t ttl_ms, const void *after,
                            size_t alen, struct engine_session_gc *out);

/* The number of tombstones SHARD holds (staged state). */
uint64_t engine_tombstones(const struct engine *e, uint32_t shard);

/* Creates TXN_ID's record on its home SHARD as PENDING with DEADLINE_MS and
 * its participant shards, unless it exists; *STATE is the record's state. */
int engine_stage_record(struct engine *e, uint32_t shard, uint64_t index,
                        const unsigned char *txn_id, uint64_t deadline_ms,
                        const uint32_t *parts, size_t nparts, int *state);

/* engine_stage_record, unless the session CLIENT_ID (SEQ > 0) already
 * recorded SEQ or a later write: then the transaction was decided and
 * forgotten (or superseded), no record is made, and *STATE is the decision
 * the session holds (COMMITTED for KV_OK, else ABORTED). */
int engine_stage_record_for(struct engine *e, uint32_t shard, uint64_t index,
                            const unsigned char *txn_id, uint64_t deadline_ms,
                            const uint32_t *parts, size_t nparts,
                            const void *client_id, size_t client_id_len,
                            uint64_t seq, int *state);

/* Decides or asks: WANT is ENGINE_TXN_COMMITTED, ENGINE_TXN_ABORTED or
 * ENGINE_TXN_PENDING (only asking). A PENDING record becomes what is wanted,
 * except that past its deadline (NOW_MS, the proposer's clock in the entry)
 * it becomes ABORTED whatever is asked; a decided record stays as it is.
 * *STATE is the state after (ENGINE_TXN_UNKNOWN: no record). */
int engine_stage_decide(struct engine *e, uint32_t shard, uint64_t index,
                        const unsigned char *txn_id, int want, uint64_t now_ms,
                        int *state);

/* engine_stage_decide, then, when a decision was asked for (WANT is not
 * PENDING) and SEQ > 0, records the decision in the session CLIENT_ID
 * (code KV_OK when committed, KV_ECONFLICT when aborted), unless the
 * session already holds SEQ or a later write. */
int engine_stage_decide_for(struct engine *e, uint32_t shard, uint64_t index,
                            const unsigned char *txn_id, int want,
                            uint64_t now_ms, const void *client_id,
                            size_t client_id_len, uint64_t seq, int *state);

/* The session CLIENT_ID of SHARD (staged state): the last SEQ recorded
 * and its outcome, or KV_ENOTFOUND. */
int engine_session(struct engine *e, uint32_t shard, const void *client_id,
                   size_t client_id_len, uint64_t *seq, int *code,
                   uint64_t *version);

/* engine_session, and the procedure reply recorded with the outcome
 * (*REPLY malloc()ed, NULL when there is none). */
int engine_session_reply(struct engine *e, uint32_t shard,
                         const void *client_id, size_t client_id_len,
                         uint64_t *seq, int *code, uint64_t *version,
                         void **reply, size_t *rlen);

/* Deletes a decided record (every participant resolved). */
int engine_stage_forget(struct engine *e, uint32_t shard, uint64_t index,
                        const unsigned char *txn_id);

struct engine_intent {
    unsigned char txn_id[ENGINE_TXN_ID_LEN];
    uint32_t home;
    uint64_t deadline_ms;
    uint64_t version;
    enum engine_txn_kind kind; /* PUT, DEL, or a condition (a lock only) */
    void *val; /* PUT: malloc()ed copy (NULL when empty); free() it */
    size_t vlen;
};

/* The committed intent on KEY of SHARD, or KV_ENOTFOUND. */
int engine_get_intent(struct engine *e, uint32_t shard, const void *key,
                      size_t klen, struct engine_intent *out);

/* Whether SHARD holds any intent (committed or staged); cheap. */
bool engine_has_intents(const struct engine *e, uint32_t shard);

/* Whether SHARD holds any transaction record (committed or staged); cheap. */
bool engine_has_txn_records(const struct engine *e, uint32_t shard);

/* One transaction known to a shard, for recovery and listing. */
struct engine_txn_info {
    const unsigned char *txn_id;
    int state;     /* records (X): the state; participants (P): -1 */
    uint32_t home; /* participants: the home shard */
    uint64_t deadline_ms;
    uint64_t version;      /* participants: the prepare's version */
    const uint32_t *parts; /* records: the participant shards */
    size_t nparts;
    size_t nkeys; /* participants: keys holding its intents */
};
typedef int (*engine_txn_fn)(void *arg, const struct engine_txn_info *t);

/* Calls FN for each committed transaction record ('X') or participant
 * record ('P', tombstones left out) of SHARD; a non-zero return stops and
 * is returned. */
int engine_list_txns(struct engine *e, uint32_t shard, char which,
                     engine_txn_fn fn, void *arg);

/* Stages only a new applied index for SHARD (a Raft entry with no write). */
int engine_stage_applied(struct engine *e, uint32_t shard, uint64_t index);

/* Stages a raw store record (put, or delete when VAL is NULL) in the batch
 * engine_commit() writes next, so a replicated node writes its Raft state
 * (log entries, hard state) in the same synced batch as the applies. */
void engine_stage_raw(struct engine *e, const void *key, size_t klen,
                      const void *val, size_t vlen);

/* Sets SHARD's committed and staged state (applied index, key count) after
 * its records were replaced directly in the store (snapshot install). Call
 * with nothing staged for the shard. */
void engine_reset_shard(struct engine *e, uint32_t shard, uint64_t index,
                        uint64_t keys);

/* The shard's last staged (or committed) applied index. */
uint64_t engine_applied(const struct engine *e, uint32_t shard);

/* Whether writes are staged and not yet committed. */
bool engine_has_staged(const struct engine *e);

/* Writes every staged write in one synced batch. On failure (KV_EIO) all
 * staged writes are dropped and versions roll back: none took effect. */
int engine_commit(struct engine *e);

/* The same in two steps, so a caller can stage more writes while a commit
 * is on its way to disk (embedded mode's group commit): commit_begin moves
 * every staged write into a flushing batch and returns it (NULL when nothing
 * is staged or a flush is already under way); the caller writes it with
 * store_write(sync=true) without other engine calls running at the same
 * time as the begin/end calls, then calls commit_end with the result. On
 * failure, writes staged since begin are dropped too (they were evaluated
 * against the failed ones) and must be answered KV_EIO by the caller. */
struct store_batch *engine_commit_begin(struct engine *e);
void engine_commit_end(struct engine *e, int rc);

/* Scans committed state of one shard in key order, calling EMIT per entry.
 * *more (if not NULL) is set when the limit stopped the scan before the end
 * of the range. Returns KV_OK, EMIT's non-zero result, or a store error. */
int engine_scan(struct engine *e, const struct engine_scan *sc,
                engine_emit_fn emit, void *arg, bool *more);

/* The number of keys of SHARD and its last applied version, as committed.
 * Either out pointer may be NULL. */
int engine_shard_info(struct engine *e, uint32_t shard, uint64_t *keys,
                      uint64_t *applied);

#endif
