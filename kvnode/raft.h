/*
 * raft - a pure Raft consensus state machine, one instance per shard replica.
 *
 * In the style of etcd's raft package: no I/O, no clock, no threads, no
 * globals, no rand(). Input is a message (raft_step), a tick (raft_tick), a
 * proposal (raft_propose) or a read request (raft_read_index); output is a
 * Ready (raft_ready): state to persist, messages to send, committed entries
 * to apply, a snapshot to install, reads that may now be served. The driver
 * persists (synced), then sends, then applies, then calls raft_advance().
 * Randomness (election timeouts) comes from a per-instance generator seeded
 * by the caller, so a simulation replays exactly.
 *
 * Implemented: randomized election timeouts, pre-vote, check-quorum (a leader
 * that has not heard from a majority within an election timeout steps down,
 * and followers that hear from a leader ignore votes for that long), the
 * commit rule (only entries of the current term are committed by counting
 * replicas), fast log backtracking (a rejecting follower names a hint), flow
 * controlled pipelined appends (a window of in-flight appends per follower),
 * ReadIndex (linearizable reads confirmed by a heartbeat round), snapshots
 * (the log is compacted up to an applied index; a follower behind that point
 * gets a snapshot streamed by the driver), leadership transfer.
 *
 * Memory: entries live in an in-memory log from the last compaction point
 * on; the driver bounds it with raft_compact(). Entry data is copied in by
 * raft_propose/raft_step and owned by the instance; pointers handed out in a
 * Ready stay valid until raft_advance().
 *
 * Membership is static: the peers given to raft_new (changes come later).
 */
#ifndef KV_RAFT_H
#define KV_RAFT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RAFT_NONE 0u /* no node: "no vote", "no leader" */

/* Log indices stay below RAFT_MAX_INDEX and terms below RAFT_MAX_TERM
 * (2^62 each), so that arithmetic on them (a loop up to the last index, a
 * sum, the next term) never wraps: messages and stored states that reach
 * them are refused, and a log that reaches RAFT_MAX_INDEX takes no more
 * proposals (RAFT_EINVAL). No real log or election gets there. */
#define RAFT_MAX_INDEX (1ull << 62)
#define RAFT_MAX_TERM (1ull << 62)

/* Results (negative, like KV_E* codes but private to raft). */
#define RAFT_OK 0
#define RAFT_ENOTLEADER (-1) /* a proposal or read on a non-leader */
#define RAFT_EBUSY (-2)      /* leadership transfer in progress */
#define RAFT_ENOMEM (-3)
#define RAFT_EINVAL (-4)

enum raft_role {
    RAFT_FOLLOWER,
    RAFT_PRECANDIDATE,
    RAFT_CANDIDATE,
    RAFT_LEADER,
};

enum raft_entry_type {
    RAFT_ENTRY_NORMAL = 0, /* data proposed by the driver */
    RAFT_ENTRY_NOOP = 1,   /* appended by a new leader; apply ignores it */
};

struct raft_entry {
    uint64_t term;
    uint64_t index;
    uint32_t type; /* enum raft_entry_type */
    void *data;
    size_t len;
};

enum raft_msg_type {
    RAFT_MSG_APPEND = 1,  /* index/log_term: the entry before entries[] */
    RAFT_MSG_APPEND_RESP, /* index: last index matched, or with reject the
                             rejected index; reject_hint: follower's hint */
    RAFT_MSG_VOTE,        /* index/log_term: candidate's last entry */
    RAFT_MSG_VOTE_RESP,
    RAFT_MSG_PREVOTE, /* term: the term the candidate would use */
    RAFT_MSG_PREVOTE_RESP,
    RAFT_MSG_HEARTBEAT, /* commit: min(leader commit, follower match);
                           context: the round; index: the latest earlier
                           round every member but the recipient
                           acknowledged (0: none) */
    RAFT_MSG_HEARTBEAT_RESP,
    RAFT_MSG_SNAPSHOT,    /* leader->driver: send a snapshot to `to`;
                             driver->follower: the snapshot at index/log_term
                             has been received in full and may be installed */
    RAFT_MSG_TIMEOUT_NOW, /* leadership transfer: campaign now */
};

struct raft_msg {
    enum raft_msg_type type;
    uint32_t from;
    uint32_t to;
    uint64_t term;
    uint64_t log_term;
    uint64_t index;
    struct raft_entry *entries;
    size_t n_entries;
    uint64_t commit;
    bool reject;
    uint64_t reject_hint; /* APPEND_RESP with reject: follower's last index,
                             or the first index of its conflicting term */
    uint64_t context;     /* HEARTBEAT(_RESP): ReadIndex round; VOTE:
                             1 when the vote is a leadership transfer */
};

struct raft_hardstate {
    uint64_t term;
    uint32_t vote;
    uint64_t commit;
};

/* A read that may be served once the applied index reaches `index`. */
struct raft_read {
    uint64_t ctx; /* the caller's id from raft_read_index */
    uint64_t index;
};

struct raft_ready {
    bool hs_changed; /* persist hs */
    struct raft_hardstate hs;
    struct raft_entry *entries; /* append to the log (persist, synced) */
    size_t n_entries;
    uint64_t truncate_after; /* if entries: also delete stored entries with
                                index in (last of entries, truncate_after];
                                with has_snapshot and no entries: those in
                                (snap_index, truncate_after] (a snapshot
                                replaced a conflicting log) */
    struct raft_msg *msgs;   /* send after persisting */
    size_t n_msgs;
    struct raft_entry *committed; /* apply in order */
    size_t n_committed;
    bool has_snapshot; /* install the received snapshot: the state
                          machine is now at snap_index/snap_term */
    uint64_t snap_index;
    uint64_t snap_term;
    struct raft_read *reads; /* serve when applied >= index */
    size_t n_reads;
    bool soft_changed; /* role or leader changed */
    enum raft_role role;
    uint32_t leader;
};

struct raft_config {
    uint32_t id;           /* this replica's node id, != RAFT_NONE */
    const uint32_t *peers; /* every member's id, self included */
    size_t npeers;
    int election_ticks;   /* base election timeout, e.g. 50 (x 10 ms);
                             each timeout is random in [base, 2*base) */
    int heartbeat_ticks;  /* e.g. 5 */
    uint64_t seed;        /* for the election timeout generator */
    size_t max_inflight;  /* appends in flight per follower, e.g. 64 */
    size_t max_msg_bytes; /* bytes per append: entry data plus 32 per entry
                             (a single entry may exceed it), e.g. 1 MiB */
    bool pre_vote;
    bool check_quorum;
    bool boot_quiet; /* ignore votes for one election timeout after
                        raft_new, as if a leader had just been heard:
                        a restarted replica forgot when it last heard
                        its leader, and leader leases rely on that
                        promise (raft_lease) */
};

/* What the driver read back from storage at start (all zero when new). */
struct raft_init {
    struct raft_hardstate hs;
    uint64_t snap_index; /* the log was compacted up to here */
    uint64_t snap_term;
    const struct raft_entry *entries; /* stored entries after snap_index, in
                                         order; copied */
    size_t n_entries;
    uint64_t applied; /* the state machine reflects entries up to here */
    /* The replica lost what it stored (its data directory was rebuilt):
     * it may have voted, or acknowledged entries, in the current term
     * before, and Raft allows each server one vote per term (5.2). Until
     * it hears a current leader it grants no vote or pre-vote, never
     * campaigns and acknowledges nothing (a stale leader must not count
     * it). Current: a heartbeat of the leader says that every other
     * member acknowledged, in the leader's term, a round sent after the
     * loss; then no term the replica took part in can be later than the
     * leader's. It then records that leader as its vote in that term
     * (safe: one leader per term) and follows it, and votes again once its
     * log holds the leader's commit index (raft_awaits_leader). */
    bool no_vote_until_leader;
};

struct raft;

/* Creates an instance. Returns NULL on bad config or no memory. */
struct raft *raft_new(const struct raft_config *cfg,
                      const struct raft_init *init);
void raft_free(struct raft *r);

/* Input. raft_step ignores (and reports with RAFT_EINVAL) messages not for
 * this replica or from a non-member; it copies what it keeps. */
int raft_step(struct raft *r, const struct raft_msg *m);
void raft_tick(struct raft *r);

/* Appends DATA as a new entry if this replica is the leader. On RAFT_OK
 * *index is the entry's index (it is committed, or lost, later). */
int raft_propose(struct raft *r, const void *data, size_t len, uint64_t *index);

/* Asks for a linearizable read point. The leader answers in a later Ready
 * (reads[]) once a heartbeat round confirmed it is still the leader and it
 * has committed an entry of its term. RAFT_ENOTLEADER on other replicas. */
int raft_read_index(struct raft *r, uint64_t ctx);

/* Leader lease (Raft thesis 6.4.1). With check-quorum, a replica that heard
 * from the leader ignores votes for an election timeout (and, with
 * boot_quiet, for one after it starts). So a leader whose heartbeat round
 * ROUND was acknowledged by a majority stays the only leader until an
 * election timeout after it sent that round, measured on the slowest
 * follower's clock; the driver, which knows when it sent each round, may
 * serve reads from its applied state up to COMMIT until then, minus a
 * margin for clock drift. Returns false (no lease) on a non-leader, before
 * an entry of this term is committed, and for the rest of a term in which
 * a leadership transfer was started (its target votes without waiting). */
bool raft_lease(const struct raft *r, uint64_t *term, uint64_t *round,
                uint64_t *commit);

/* Starts a leadership transfer to TARGET (leader only). Proposals fail with
 * RAFT_EBUSY until it ends (success, or an election timeout passed). */
int raft_transfer_leader(struct raft *r, uint32_t target);

/* Campaign now (used by tests and by a single-member group at start); a
 * no-op on a leader and on a replica waiting for a leader. */
void raft_campaign(struct raft *r);

/* Output. Fills RD and returns true if there is anything to do. Everything
 * in RD is owned by the instance until raft_advance(r, rd). One Ready at a
 * time: until that raft_advance, raft_ready returns false (inputs may still
 * be stepped; what they produce comes in the next Ready). */
bool raft_ready(struct raft *r, struct raft_ready *rd);
void raft_advance(struct raft *r, const struct raft_ready *rd);

/* The driver finished (OK) or gave up on a snapshot it was streaming to
 * PEER; the leader resumes normal replication to it. */
void raft_report_snapshot(struct raft *r, uint32_t peer, bool ok);

/* The driver learned that PEER restarted (a new boot id on its traffic).
 * The leader forgets PEER's match and probes it again, so a replica that
 * lost its data (wiped, rebuilt) is caught up instead of being trusted. */
void raft_peer_restarted(struct raft *r, uint32_t peer);

/* Whether the replica still waits for a current leader, or to catch up
 * with it, before it votes or campaigns (raft_init.no_vote_until_leader).
 * The driver keeps that promise across restarts: it stores a marker while
 * this is true and removes it in the first batch after it became false. */
bool raft_awaits_leader(const struct raft *r);

/* Drops log entries up to INDEX (which must be <= the applied index). The
 * term of INDEX is kept as the snapshot point. */
int raft_compact(struct raft *r, uint64_t index);

/* The term of the entry at INDEX, or 0 when it is not in the log (compacted
 * or beyond the end; the snapshot point itself is known). */
uint64_t raft_term_at(const struct raft *r, uint64_t index);

/* The index of the last entry in the log (or the snapshot point). */
uint64_t raft_last_index(const struct raft *r);

struct raft_progress {
    uint32_t id;
    uint64_t match;
    uint64_t next;
    int state;   /* 0 probe, 1 replicate, 2 snapshot */
    bool active; /* heard from within the last election timeout */
};

struct raft_status {
    uint32_t id;
    enum raft_role role;
    uint32_t leader;
    uint64_t term;
    uint64_t commit;
    uint64_t applied;
    uint64_t first_index; /* first entry in the log (snap_index + 1) */
    uint64_t last_index;
    struct raft_progress *progress; /* leader only: npeers entries; owned by
                                       the instance, valid until next call */
    size_t n_progress;
};

void raft_get_status(struct raft *r, struct raft_status *st);

/* Checks the invariants of this instance (term never decreases, one vote per
 * term, commit <= last index, applied <= commit, log terms never decrease,
 * the log is contiguous, a replica waiting for a leader neither votes nor
 * campaigns). Returns 0, or -1 with the broken rule in WHY. */
int raft_check_invariants(const struct raft *r, char *why, size_t whylen);

#endif
