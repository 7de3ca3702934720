/*
 * txn - the coordinator of cross-shard transactions (two-phase commit).
 *
 * A transaction whose keys span shards is coordinated on the node that
 * leads its home shard (the shard of its first write). The coordinator is
 * a client of the shards, its own included: every step is a call that the
 * shard's leader turns into a Raft entry, applied by engine.c:
 *
 *   1. record:  the home shard stores the record PENDING with a deadline;
 *   2. prepare: each participant checks its conditions, locks its keys with
 *               intents and votes (a locked key is a NO: nobody waits);
 *   3. decide:  the home shard turns the record COMMITTED (every vote YES,
 *               before the deadline) or ABORTED; that entry is the commit
 *               point, and only then is the client answered;
 *   4. resolve: each participant applies or drops its intents, and keeps
 *               a tombstone of the outcome for a while (a late prepare
 *               then locks nothing: engine.h);
 *   5. forget:  the home shard deletes the decided record.
 *
 * Every step is idempotent, so a coordinator that lost its place (a new
 * home leader after a crash, a client retrying) starts again from the
 * record: the transaction id is derived from the client's session, and the
 * home shard records the decision in that session. Recovery of what nobody
 * drives is txns_adopt (records on the home shard) and txns_check_prepared
 * (intents on a participant whose deadline passed: it asks the home shard,
 * which aborts a PENDING record past its deadline, and resolves as told).
 * A participant that voted YES never decides by itself.
 *
 * No I/O, no clock of its own: the replica (or the simulator through it)
 * gives it calls, answers and time through struct txn_env.
 */
#ifndef KV_TXN_H
#define KV_TXN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "kv.pb-c.h"

struct txns;

struct txn_env {
    void *arg;
    /* Sends REQ (id set) to the leader of SHARD; the answer comes back
     * through txns_reply(), or never (the call is repeated). */
    void (*call)(void *arg, uint32_t shard, const Kv__Request *req);
    /* Answers a client of the node. */
    void (*reply)(void *arg, const void *client, size_t clen,
                  const Kv__Response *resp);
    /* Wall clock, ms since the epoch: deadlines are compared across nodes. */
    uint64_t (*wall_ms)(void *arg);
    /* Whether this node leads SHARD now. A coordinator stops (without an
     * answer: the client retries) once its node no longer leads its home
     * shard, so that two coordinators never drive one transaction past a
     * decision: the new leader's recovery, or a client's retry there,
     * carries on from the record. */
    bool (*leads)(void *arg, uint32_t shard);
    /* Optional: called at the named points of the protocol, so a test can
     * stop the node there ("txn-prepared": every vote is YES, nothing
     * decided; "txn-committed": the record is COMMITTED, no participant
     * told). */
    void (*failpoint)(void *arg, const char *name);
};

/* Ids of internal calls have this bit set; parked reads (replica.c) add
 * bit 62 to tell their answers from the coordinators'. */
#define CALL_BIT_OF_TXN (1ull << 63)

/* Ticks (of REPLICA_TICK_MS) before an unanswered call is repeated. */
#define TXN_RETRY_TICKS 30

struct txns *txns_new(uint32_t nshards, uint32_t timeout_ms,
                      const struct txn_env *env, uint64_t seed);
void txns_free(struct txns *t);

/* Coordinates the client's cross-shard transaction REQ (ops checked,
 * HOME led by this node). A retry of a transaction being coordinated
 * joins it (the newest client address is answered). */
void txns_start(struct txns *t, const void *client, size_t clen,
                const Kv__Request *req, uint32_t home);

/* Takes an answer to one of our calls; false when it is not ours. */
bool txns_reply(struct txns *t, const Kv__Response *resp);

/* Repeats unanswered calls, aborts what passed its deadline. */
void txns_tick(struct txns *t);

/* Home shard recovery: X is a record on SHARD, led here. Unless a
 * coordinator drives it, one is started: a PENDING record is aborted once
 * past its deadline; a decided one is resolved and forgotten. */
void txns_adopt(struct txns *t, uint32_t shard,
                const struct engine_txn_info *x);

/* Participant recovery: P is prepared on SHARD (led here) past its
 * deadline: ask its home shard, then resolve as the record says. */
void txns_check_prepared(struct txns *t, uint32_t shard,
                         const struct engine_txn_info *p);

/* Whether a coordinator or a check for TXN_ID is running here. */
bool txns_busy(const struct txns *t, const unsigned char *txn_id);

/* Coordinators running here. */
size_t txns_active(const struct txns *t);

/* The transaction id of a client's transaction: derived from its session
 * (CLIENT_ID, SEQ > 0) so that a retry finds the first attempt's record. */
void txns_id_of(const void *client_id, size_t len, uint64_t seq, uint32_t home,
                unsigned char out[ENGINE_TXN_ID_LEN]);

#endif
