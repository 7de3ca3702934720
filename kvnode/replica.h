/*
 * replica - the multi-Raft driver of one node: every shard replica it hosts.
 *
 * It owns one Raft group per hosted shard, persists their state through the
 * engine's batch, applies committed entries with the engine, streams and
 * installs snapshots, and serves client requests (writes through Raft,
 * linearizable reads through ReadIndex, stale reads from the local copy).
 * It opens no socket and reads no clock: the node (or the simulator) feeds
 * it ticks, peer batches and client requests, and it answers through the
 * callbacks of struct replica_env. This is what lets tests/sim run the real
 * driver on a simulated network and disk.
 *
 * The driver order, once per loop iteration (replica_flush):
 *   1. collect every group's Ready;
 *   2. send the appends and heartbeats of leaders whose term and vote are
 *      already stored (a leader counts its own entries only once stored,
 *      so replicating before its own fsync is safe: Raft thesis 10.2.1);
 *   3. ONE synced batch: hard states, new log entries, and the effects of
 *      newly committed entries with each shard's applied index (group
 *      commit: one fsync however many groups and clients were active);
 *      then send every other message (votes, acknowledgements: they
 *      promise what is now on disk), coalesced per peer node;
 *   4. answer the writes that were applied and the reads now allowed;
 *   5. advance every group.
 * Applying in the same synced batch as the persisted entries departs from
 * DESIGN.md's unsynced apply, for a reason written in docs/replication.md.
 */
#ifndef KV_REPLICA_H
#define KV_REPLICA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv.pb-c.h"

struct conf;
struct store;
struct replica;
struct proc_registry;

#define REPLICA_TICK_MS 10

struct replica_env {
    void *arg;
    /* Sends an encoded envelope (a PeerBatch) to node TO. May drop it. */
    void (*send)(void *arg, uint32_t to, const void *buf, size_t len);
    /* Answers the client named by CLIENT (CLEN bytes, as given to
     * replica_request). */
    void (*reply)(void *arg, const void *client, size_t clen,
                  const Kv__Response *resp);
    /* Optional: the answers given so far may leave now (a node holds a
     * connection's answers to send them in one frame); called once each
     * phase of answers is given, before the driver blocks on the disk. */
    void (*flush)(void *arg);
    /* Optional: a monotonic clock in ms, the one that drives the ticks.
     * With it a leader serves linearizable reads under a lease (see
     * raft_lease) without a heartbeat round per read; without it (NULL)
     * every such read takes a ReadIndex round. */
    uint64_t (*now_ms)(void *arg);
    /* Optional: the wall clock, ms since the epoch. Transaction deadlines
     * are compared on other nodes, so they are wall clock times; without
     * it, now_ms stands in (right only when every node shares it). */
    uint64_t (*wall_ms)(void *arg);
    /* Optional: see txn_env.failpoint (kvnode/txn.h). */
    void (*failpoint)(void *arg, const char *name);
    /* The procedures this node runs (libkv/proc.h), borrowed until
     * replica_close; NULL: every call fails with KV_ENOPROC. */
    const struct proc_registry *procs;
};

/* How long after sending a heartbeat round that a majority acknowledged a
 * leader may serve reads locally: 60% of the shortest election timeout,
 * leaving room for clocks that run up to 20% apart (the simulator drifts
 * its nodes' clocks that much). */
#define REPLICA_LEASE_MS 300

/* Opens the driver for node ID of CONF over STORE (both borrowed until
 * replica_close), restoring every hosted group from the store. SEED feeds
 * the groups' election timers. On error ERR says why. */
int replica_open(const struct conf *conf, uint32_t id, struct store *store,
                 const struct replica_env *env, uint64_t seed,
                 struct replica **out, char *err, size_t errlen);

/* Frees everything. Unanswered clients get no answer (they time out). */
void replica_close(struct replica *r);

/* Marks every shard node ID of CONF hosts as rebuilt in STORE, an empty
 * data directory about to replace a lost one (kvnode --rebuild; synced):
 * each such replica catches up by snapshot and votes only once it heard a
 * current leader (raft_init.no_vote_until_leader), even across restarts.
 * Returns KV_EINVAL with the reason in ERR when CONF has fewer than 3
 * replicas (nobody could be elected without the rebuilt replica's vote),
 * or a store error. */
int replica_mark_rebuilt(struct store *store, const struct conf *conf,
                         uint32_t id, char *err, size_t errlen);

/* One tick of REPLICA_TICK_MS. */
void replica_tick(struct replica *r);

/* Handles a peer batch (from a verified peer). Bad content is counted. */
void replica_peer(struct replica *r, const Kv__PeerBatch *b);

/* Handles a client request; takes ownership of ENV (the decoded frame) and
 * frees it when the request is answered. CLIENT is copied. */
void replica_request(struct replica *r, const void *client, size_t clen,
                     Kv__Envelope *env);

/* Runs the driver order above. Returns KV_OK, or KV_EIO when the store
 * failed: the node must stop (nothing unsynced was acknowledged). */
int replica_flush(struct replica *r);

/* Hands leadership of every group this node leads to another member.
 * Returns how many groups it still leads (call flush/tick until 0 or a
 * deadline passes). */
size_t replica_transfer_all(struct replica *r);

/* Fills what a status reply says of the cluster and its replication: the
 * cluster's name, this node's id, shards and replicas, the node list, and
 * per shard the leader, term, commit and applied index, and (where this
 * node leads) each member's match and the transactions in progress.
 * Allocations are released by replica_status_free(st), also after a
 * failure (KV_ENOMEM). */
int replica_status(struct replica *r, Kv__StatusResult *st);
void replica_status_free(Kv__StatusResult *st);

/* Runs raft_check_invariants() on every group. Returns 0, or -1 with the
 * shard and the broken rule in WHY. */
int replica_check_invariants(const struct replica *r, char *why, size_t whylen);

/* Who this node believes leads SHARD (RAFT_NONE/0 if unknown or not a
 * member). For tests. */
uint32_t replica_leader(const struct replica *r, uint32_t shard);

/* Counters for tests and status. */
struct replica_stats {
    uint64_t proposals;
    uint64_t applied;
    uint64_t reads;
    uint64_t lease_reads; /* linearizable reads served under a lease */
    uint64_t dropped_msgs;
    uint64_t snapshots_sent;
    uint64_t snapshots_installed;
    uint64_t sessions_expired; /* client sessions its applies deleted */
};
void replica_get_stats(const struct replica *r, struct replica_stats *st);

/* Whether work is queued for the next replica_flush (calls a transaction
 * coordinator made to shards this node leads): the loop should not wait. */
bool replica_has_work(const struct replica *r);

/* Whether this node is putting a snapshot of SHARD in place (the group is
 * held meanwhile): 0, or the install's phase (1: deleting the old records,
 * 2: moving the staged ones in, 3: counting the keys). */
int replica_installing(const struct replica *r, uint32_t shard);

/* Whether this node has a current reading of PEER's wall clock; *AHEAD_MS
 * gets by at least how many ms it runs ahead of this node's (negative:
 * it may run behind; the peer's own reading of this node tells), and
 * *READINGS from batches of how many of the current window's ticks. */
bool replica_peer_clock(const struct replica *r, uint32_t peer,
                        int64_t *ahead_ms, uint32_t *readings);

#endif
