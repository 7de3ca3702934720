/*
 * raft - the pure Raft state machine of one shard replica (contract in
 * raft.h, design in docs/raft.md).
 *
 * This file must never touch the OS: no sockets, files, clocks, threads,
 * rand() or globals, and no input may crash it or break its invariants. A
 * malformed message is refused with RAFT_EINVAL before anything changes; an
 * allocation failure returns RAFT_ENOMEM with the state as it was (or, where
 * the caller cannot be told, drops an outgoing message, which Raft already
 * tolerates as network loss).
 *
 * Memory. The log is one array of entries from the compaction point on;
 * each entry's data is a separately allocated "blob". Everything handed out
 * (a Ready, messages waiting for the next Ready) is a shallow copy that
 * points at blobs, so a blob dropped from the log (truncation, compaction,
 * snapshot) is not freed at once but buried in the graveyard of the current
 * outbox, and freed when that outbox has been handed out and advanced. Two
 * outboxes alternate: one belongs to the outstanding Ready, the other
 * collects what is produced meanwhile; each has its own arrays for the
 * Ready's copies of log entries, so nothing handed out moves when the log
 * grows. If raft_ready cannot grow them it hands out a prefix (and a commit
 * index no further than what will be stored) and the rest comes next time.
 */
#include "raft.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Allocation seam: tests compile this file with allocators that fail the
 * Nth call. */
#ifndef RAFT_MALLOC
#define RAFT_MALLOC(n) malloc(n)
#define RAFT_CALLOC(n, s) calloc(n, s)
#define RAFT_REALLOC(p, n) realloc(p, n)
#define RAFT_FREE(p) free(p)
#endif

#define PR_PROBE 0
#define PR_REPLICATE 1
#define PR_SNAPSHOT 2

#define MAX_PEERS 1024
#define MAX_INFLIGHT 65536
#define MAX_ENTRIES_PER_MSG 65536 /* also bounds appends of empty entries */
#define ENTRY_WIRE_OVERHEAD                                                    \
    32 /* bytes an entry costs on the wire, besides data */

/* Per-entry payload. Freed through a graveyard, never directly while a
 * Ready or a pending message may still point at it. */
struct blob {
    struct blob *next; /* graveyard link */
    unsigned char bytes[];
};

/* What the leader knows of one member (self included). */
struct progress {
    uint32_t id;
    uint64_t match;
    uint64_t next;
    int state;
    bool probe_sent;    /* probe: an append is out, wait for an answer */
    bool recent_active; /* heard from since the last quorum check */
    uint64_t pending_snap;
    uint64_t *infl; /* ring of the last index of each append in flight */
    size_t infl_head;
    size_t infl_n;
    uint64_t ack_round; /* highest heartbeat round acknowledged */
    int vote;           /* this election: 0 unknown, 1 granted, -1 denied */
};

/* Messages and reads produced between two Readys, and the blobs dropped
 * meanwhile. */
struct outbox {
    struct raft_msg *msgs;
    size_t *ent_off; /* per message: offset of its entries in ents */
    size_t nmsgs;
    size_t capmsgs;
    struct raft_entry *ents;
    size_t nents;
    size_t capents;
    struct raft_read *reads;
    size_t nreads;
    size_t capreads;
    struct raft_entry *rd_ents; /* Ready copies: entries to persist */
    size_t cap_rd_ents;
    struct raft_entry *rd_comm; /* Ready copies: entries to apply */
    size_t cap_rd_comm;
    struct blob *grave;
};

/* A ReadIndex request of the leader. round 0: waits for a commit in the
 * leader's term before it gets its index and round. */
struct pending_read {
    uint64_t ctx;
    uint64_t index;
    uint64_t round;
};

/* What the outstanding Ready handed out (kept by us, not read back from
 * the caller's copy). */
struct handed {
    bool out;
    bool hs_changed;
    struct raft_hardstate hs;
    size_t n_entries;
    uint64_t last_index;
    uint64_t truncate_after;
    size_t n_committed;
    uint64_t last_committed;
    bool has_snapshot;
    uint64_t snap_index;
    bool soft_changed;
    enum raft_role role;
    uint32_t leader;
};

struct raft {
    /* configuration */
    uint32_t id;
    size_t npeers;
    size_t quorum;
    struct progress *prs;
    uint64_t *scratch; /* npeers match indexes, for the commit rule */
    struct raft_progress *status_prs;
    int election_ticks;
    int heartbeat_ticks;
    size_t max_inflight;
    size_t max_msg_bytes;
    bool pre_vote;
    bool check_quorum;
    bool boot_quiet;
    /* A rebuilt replica (raft_init.no_vote_until_leader): first it waits
     * for a current leader (await_leader: it answers no leader and votes
     * for nobody), then for its log to hold what that leader had
     * committed (hold_vote: it follows, but votes for nobody). */
    bool await_leader;
    uint64_t await_term;  /* the term of await_round */
    uint64_t await_round; /* the first heartbeat round heard in it */
    bool hold_vote;
    bool hold_set;        /* hold_commit is known */
    uint64_t hold_commit; /* the leader's commit in the first append */
    int boot_elapsed;     /* ticks since raft_new, up to election_ticks */
    bool transferred;     /* a transfer was started in this leader's term */
    uint64_t rng;

    /* hard and soft state */
    uint64_t term;
    uint32_t vote;
    uint64_t commit;
    enum raft_role role;
    uint32_t leader;
    int (*step)(struct raft *r, const struct raft_msg *m);
    int elapsed;    /* ticks since the leader was heard (or, for a leader,
                       since the last quorum check) */
    int hb_elapsed; /* leader: ticks since the last heartbeat */
    int timeout;    /* this term's randomized election timeout */
    uint32_t transferee;
    int transfer_elapsed;

    /* the log: entries ents[off .. off + n) have indexes snap_index + 1 .. */
    struct raft_entry *ents;
    size_t off;
    size_t n;
    size_t cap;
    uint64_t snap_index;
    uint64_t snap_term;
    uint64_t stable;      /* entries up to here are in storage */
    uint64_t stored_last; /* storage may hold entries up to here */
    uint64_t applied;     /* committed entries handed out and advanced */
    bool snap_pending;    /* a received snapshot waits to be handed out */
    uint64_t snap_pend_index;
    uint64_t snap_pend_term;

    /* leader work deferred to the next Ready, so one loop iteration's
     * proposals and acks go out as one message per follower */
    bool bcast_pending;
    bool bcast_empty; /* also send appends without entries (new commit) */
    bool hb_pending;  /* a heartbeat round for new reads */
    uint64_t read_round;
    struct pending_read *rq;
    size_t rq_n;
    size_t rq_cap;

    struct outbox ob[2];
    int cur; /* the outbox that collects now */
    struct handed h;
    struct raft_hardstate hs_saved; /* last hard state handed out */
    enum raft_role soft_role;       /* last soft state handed out */
    uint32_t soft_leader;

    /* term and vote before the latest input, for raft_check_invariants */
    uint64_t chk_term;
    uint32_t chk_vote;
};

static int step_follower(struct raft *r, const struct raft_msg *m);
static int step_candidate(struct raft *r, const struct raft_msg *m);
static int step_leader(struct raft *r, const struct raft_msg *m);

/* ---- small helpers ------------------------------------------------------ */

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* splitmix64: a tiny, well mixed generator; the state lives in the
 * instance so a seed replays exactly. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A fresh election timeout in [election_ticks, 2 * election_ticks). */
static void randomize_timeout(struct raft *r)
{
    uint64_t base = (uint64_t)r->election_ticks;
    r->timeout = (int)(base + rng_next(&r->rng) % base);
}

static struct progress *find_pr(const struct raft *r, uint32_t id)
{
    for (size_t i = 0; i < r->npeers; i++)
        if (r->prs[i].id == id)
            return &r->prs[i];
    return NULL;
}

/* Records term and vote before an input, for raft_check_invariants. */
static void begin_input(struct raft *r)
{
    r->chk_term = r->term;
    r->chk_vote = r->vote;
}

/* ---- the log ------------------------------------------------------------ */

static uint64_t last_index(const struct raft *r)
{
    return r->snap_index + r->n;
}

/* The entry at I; requires snap_index < I <= last_index. */
static struct raft_entry *entry_at(const struct raft *r, uint64_t i)
{
    return &r->ents[r->off + (size_t)(i - r->snap_index - 1)];
}

/* The term at I, the snapshot point included; 0 when unknown. */
static uint64_t term_of(const struct raft *r, uint64_t i)
{
    if (i == r->snap_index)
        return r->snap_term;
    if (i < r->snap_index || i > last_index(r))
        return 0;
    return entry_at(r, i)->term;
}

static uint64_t last_term(const struct raft *r)
{
    return term_of(r, last_index(r));
}

static struct blob *blob_of(void *data)
{
    return (struct blob *)(void *)((unsigned char *)data -
                                   offsetof(struct blob, bytes));
}

/* Copies LEN bytes of DATA into a new blob; *OUT is NULL for LEN 0. */
static int blob_new(const void *data, size_t len, void **out)
{
    *out = NULL;
    if (len == 0)
        return RAFT_OK;
    if (len > SIZE_MAX - sizeof(struct blob))
        return RAFT_ENOMEM;
    struct blob *b = RAFT_MALLOC(sizeof *b + len);
    if (!b)
        return RAFT_ENOMEM;
    b->next = NULL;
    memcpy(b->bytes, data, len);
    *out = b->bytes;
    return RAFT_OK;
}

/* Frees a blob that was never shared (a failed append). */
static void blob_free(void *data)
{
    if (data)
        RAFT_FREE(blob_of(data));
}

/* Queues a dropped entry's blob for freeing once nothing handed out can
 * point at it (see the file comment). */
static void bury(struct raft *r, void *data)
{
    if (!data)
        return;
    struct blob *b = blob_of(data);
    b->next = r->ob[r->cur].grave;
    r->ob[r->cur].grave = b;
}

static void free_graves(struct blob *b)
{
    while (b) {
        struct blob *next = b->next;
        RAFT_FREE(b);
        b = next;
    }
}

/* Returns array P (elements of SIZE bytes, capacity *CAP) grown to hold
 * NEED >= 1 elements, updating *CAP; NULL when out of memory, P and *CAP
 * then unchanged (and P still valid). */
static void *grow(void *p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return p;
    size_t ncap = *cap ? *cap : 8;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2)
            return NULL;
        ncap *= 2;
    }
    if (ncap > SIZE_MAX / size)
        return NULL;
    void *np = RAFT_REALLOC(p, ncap * size);
    if (np)
        *cap = ncap;
    return np;
}

/* Makes room for K more entries after the last one, in ents[off + n ..). */
static int log_reserve(struct raft *r, size_t k)
{
    if (k > SIZE_MAX / 4 - r->n)
        return RAFT_ENOMEM;
    size_t need = r->n + k;
    if (r->off + need <= r->cap)
        return RAFT_OK;
    if (need > r->cap) {
        struct raft_entry *np = grow(r->ents, &r->cap, need, sizeof *np);
        if (!np)
            return RAFT_ENOMEM;
        r->ents = np;
    }
    if (r->off > 0) {
        memmove(r->ents, r->ents + r->off, r->n * sizeof *r->ents);
        r->off = 0;
    }
    return RAFT_OK;
}

/* Drops entries up to and including I (snap_index < I <= last_index). */
static void log_compact(struct raft *r, uint64_t i)
{
    uint64_t t = term_of(r, i);
    for (uint64_t j = r->snap_index + 1; j <= i; j++)
        bury(r, entry_at(r, j)->data);
    size_t k = (size_t)(i - r->snap_index);
    r->off += k;
    r->n -= k;
    if (r->n == 0)
        r->off = 0;
    r->snap_index = i;
    r->snap_term = t;
}

/* Appends copies of the K entries at SRC, which follow on from index
 * SRC[0].index - 1 (<= last_index, > commit): a conflicting suffix of the
 * log is dropped first. All or nothing. */
static int log_append(struct raft *r, const struct raft_entry *src, size_t k)
{
    if (k == 0)
        return RAFT_OK;
    if (log_reserve(r, k) != RAFT_OK)
        return RAFT_ENOMEM;
    /* Build the copies in the free tail, then move them into place. */
    struct raft_entry *tail = &r->ents[r->off + r->n];
    for (size_t i = 0; i < k; i++) {
        tail[i] = src[i];
        if (blob_new(src[i].data, src[i].len, &tail[i].data) != RAFT_OK) {
            for (size_t j = 0; j < i; j++)
                blob_free(tail[j].data);
            return RAFT_ENOMEM;
        }
    }
    uint64_t first = src[0].index;
    if (first <= last_index(r)) {
        /* Bury the old suffix; the new copies sit after it, untouched. */
        uint64_t last = last_index(r);
        for (uint64_t j = first; j <= last; j++)
            bury(r, entry_at(r, j)->data);
        size_t keep = (size_t)(first - 1 - r->snap_index);
        memmove(&r->ents[r->off + keep], tail, k * sizeof *tail);
        r->n = keep + k;
        if (r->stable >= first)
            r->stable = first - 1;
    } else {
        r->n += k;
    }
    return RAFT_OK;
}

/* ---- outgoing messages -----------------------------------------------------
 */

/* Adds a message to the collecting outbox with room for NENT entries (to
 * be filled by the caller right away). NULL when out of memory: the message
 * is lost, as the network may lose it. */
static struct raft_msg *send_msg(struct raft *r, enum raft_msg_type type,
                                 uint32_t to, size_t nent)
{
    struct outbox *ob = &r->ob[r->cur];
    if (ob->nmsgs == ob->capmsgs) {
        /* Both arrays hold at least capmsgs elements. */
        size_t c1 = ob->capmsgs, c2 = ob->capmsgs;
        struct raft_msg *m1 = grow(ob->msgs, &c1, ob->nmsgs + 1, sizeof *m1);
        if (!m1)
            return NULL;
        ob->msgs = m1;
        size_t *m2 = grow(ob->ent_off, &c2, ob->nmsgs + 1, sizeof *m2);
        if (!m2)
            return NULL;
        ob->ent_off = m2;
        ob->capmsgs = c1 < c2 ? c1 : c2;
    }
    if (nent > 0) {
        if (nent > SIZE_MAX / 2 - ob->nents)
            return NULL;
        struct raft_entry *e =
            grow(ob->ents, &ob->capents, ob->nents + nent, sizeof *e);
        if (!e)
            return NULL;
        ob->ents = e;
    }
    struct raft_msg *m = &ob->msgs[ob->nmsgs];
    memset(m, 0, sizeof *m);
    m->type = type;
    m->from = r->id;
    m->to = to;
    m->term = r->term;
    m->n_entries = nent;
    ob->ent_off[ob->nmsgs] = ob->nents;
    ob->nmsgs++;
    ob->nents += nent;
    return m;
}

/* The entries reserved for the message just added by send_msg. */
static struct raft_entry *last_msg_entries(struct raft *r)
{
    struct outbox *ob = &r->ob[r->cur];
    return &ob->ents[ob->ent_off[ob->nmsgs - 1]];
}

static bool push_read(struct raft *r, uint64_t ctx, uint64_t index)
{
    struct outbox *ob = &r->ob[r->cur];
    struct raft_read *rs =
        grow(ob->reads, &ob->capreads, ob->nreads + 1, sizeof *rs);
    if (!rs)
        return false;
    ob->reads = rs;
    ob->reads[ob->nreads].ctx = ctx;
    ob->reads[ob->nreads].index = index;
    ob->nreads++;
    return true;
}

static void outbox_clear(struct outbox *ob)
{
    free_graves(ob->grave);
    ob->grave = NULL;
    ob->nmsgs = 0;
    ob->nents = 0;
    ob->nreads = 0;
}

/* ---- progress (leader's view of a follower)
 * ------------------------------------ */

static bool infl_full(const struct raft *r, const struct progress *pr)
{
    return pr->infl_n >= r->max_inflight;
}

static void infl_add(const struct raft *r, struct progress *pr, uint64_t idx)
{
    pr->infl[(pr->infl_head + pr->infl_n) % r->max_inflight] = idx;
    pr->infl_n++;
}

/* Frees the in-flight appends acknowledged by an ack of IDX. */
static void infl_free_to(const struct raft *r, struct progress *pr,
                         uint64_t idx)
{
    while (pr->infl_n > 0 && pr->infl[pr->infl_head] <= idx) {
        pr->infl_head = (pr->infl_head + 1) % r->max_inflight;
        pr->infl_n--;
    }
}

static void infl_free_first(const struct raft *r, struct progress *pr)
{
    if (pr->infl_n > 0) {
        pr->infl_head = (pr->infl_head + 1) % r->max_inflight;
        pr->infl_n--;
    }
}

static void pr_reset_state(struct progress *pr, int state)
{
    pr->state = state;
    pr->probe_sent = false;
    pr->pending_snap = 0;
    pr->infl_head = 0;
    pr->infl_n = 0;
}

static void pr_become_probe(struct progress *pr)
{
    uint64_t next = pr->match + 1;
    if (pr->state == PR_SNAPSHOT)
        next = max_u64(next, pr->pending_snap + 1);
    pr_reset_state(pr, PR_PROBE);
    pr->next = next;
}

static void pr_become_replicate(struct progress *pr)
{
    pr_reset_state(pr, PR_REPLICATE);
    pr->next = pr->match + 1;
}

static void pr_become_snapshot(struct progress *pr, uint64_t index)
{
    pr_reset_state(pr, PR_SNAPSHOT);
    pr->pending_snap = index;
}

static bool pr_paused(const struct raft *r, const struct progress *pr)
{
    switch (pr->state) {
    case PR_PROBE:
        return pr->probe_sent;
    case PR_REPLICATE:
        return infl_full(r, pr);
    default:
        return true;
    }
}

/* An ack of N: returns true if it raised the match. */
static bool pr_maybe_update(struct progress *pr, uint64_t n)
{
    bool updated = false;
    if (pr->match < n) {
        pr->match = n;
        pr->probe_sent = false;
        updated = true;
    }
    pr->next = max_u64(pr->next, n + 1);
    return updated;
}

/* A rejection of the append after REJECTED with the follower's hint.
 * Returns false when the rejection is stale. */
static bool pr_maybe_decr(const struct raft *r, struct progress *pr,
                          uint64_t rejected, uint64_t hint, uint64_t hint_term)
{
    if (pr->state == PR_REPLICATE) {
        if (rejected <= pr->match)
            return false;
        pr->next = pr->match + 1;
        return true;
    }
    if (pr->next == 0 || pr->next - 1 != rejected)
        return false;
    /* The follower names its last index, or the first index of its
     * conflicting term. If our log has the same term there, everything up
     * to the hint matches (Log Matching) and we probe just after it;
     * otherwise the hint's entry is suspect too. */
    uint64_t next = hint;
    if (hint < UINT64_MAX && term_of(r, hint) == hint_term)
        next = hint + 1;
    next = min_u64(next, rejected);
    pr->next = max_u64(next, pr->match + 1);
    pr->probe_sent = false;
    return true;
}

/* ---- leader: sending appends and heartbeats ---------------------------------
 */

/* Sends a snapshot request for PR to the driver. */
static bool send_snapshot(struct raft *r, struct progress *pr)
{
    if (!pr->recent_active)
        return false;
    struct raft_msg *m = send_msg(r, RAFT_MSG_SNAPSHOT, pr->id, 0);
    if (!m)
        return false;
    m->index = r->snap_index;
    m->log_term = r->snap_term;
    m->commit = r->commit;
    pr_become_snapshot(pr, r->snap_index);
    return true;
}

/* Sends PR the entries it lacks (as many as max_msg_bytes allows), or an
 * empty append carrying the commit index when SEND_EMPTY, or a snapshot
 * when its next entry was compacted. Returns true if a message went out. */
static bool send_append(struct raft *r, struct progress *pr, bool send_empty)
{
    if (pr_paused(r, pr))
        return false;
    uint64_t prev = pr->next - 1;
    if (prev < r->snap_index)
        return send_snapshot(r, pr);
    uint64_t last = last_index(r);
    size_t k = 0, bytes = 0, max = r->max_msg_bytes;
    for (uint64_t i = pr->next; i <= last && k < MAX_ENTRIES_PER_MSG; i++) {
        /* Data plus what encoding an entry costs (term, index, type,
         * lengths), so the encoded message stays near max_msg_bytes. */
        size_t len = entry_at(r, i)->len + ENTRY_WIRE_OVERHEAD;
        /* The first entry always goes, however big. */
        if (k > 0 && (len > max || bytes > max - len))
            break;
        bytes += len;
        k++;
    }
    if (k == 0 && !send_empty)
        return false;
    struct raft_msg *m = send_msg(r, RAFT_MSG_APPEND, pr->id, k);
    if (!m)
        return false;
    m->index = prev;
    m->log_term = term_of(r, prev);
    m->commit = r->commit;
    if (k > 0) {
        memcpy(last_msg_entries(r), entry_at(r, pr->next),
               k * sizeof(struct raft_entry));
        uint64_t sent_last = pr->next + k - 1;
        if (pr->state == PR_REPLICATE) {
            pr->next = sent_last + 1;
            infl_add(r, pr, sent_last);
        }
    }
    if (pr->state == PR_PROBE)
        pr->probe_sent = true;
    return true;
}

static void bcast_append(struct raft *r, bool send_empty)
{
    for (size_t i = 0; i < r->npeers; i++)
        if (r->prs[i].id != r->id)
            send_append(r, &r->prs[i], send_empty);
}

/* The latest heartbeat round of this leader that every member but itself
 * and TO has acknowledged (0: none yet; in a group of two, the latest
 * round sent). */
static uint64_t round_acked_by_others(const struct raft *r, uint32_t to)
{
    uint64_t lo = r->read_round;
    for (size_t i = 0; i < r->npeers; i++)
        if (r->prs[i].id != r->id && r->prs[i].id != to)
            lo = min_u64(lo, r->prs[i].ack_round);
    return lo;
}

/* One heartbeat round: every heartbeat carries the round number, which a
 * ReadIndex request waits to see acknowledged by a majority, and the
 * latest earlier round every other member acknowledged (for a rebuilt
 * replica: see await_heartbeat). */
static void bcast_heartbeat(struct raft *r)
{
    uint64_t before = r->read_round;
    r->read_round++;
    r->hb_pending = false;
    for (size_t i = 0; i < r->npeers; i++) {
        struct progress *pr = &r->prs[i];
        if (pr->id == r->id)
            continue;
        struct raft_msg *m = send_msg(r, RAFT_MSG_HEARTBEAT, pr->id, 0);
        if (!m)
            continue;
        m->commit = min_u64(pr->match, r->commit);
        m->context = r->read_round;
        m->index = min_u64(round_acked_by_others(r, pr->id), before);
    }
}

static void send_timeout_now(struct raft *r, uint32_t to)
{
    (void)send_msg(r, RAFT_MSG_TIMEOUT_NOW, to, 0);
}

/* ---- leader: commit and reads ----------------------------------------------
 */

/* Releases, in order, the reads whose heartbeat round a majority acked. */
static void release_reads(struct raft *r)
{
    size_t done = 0;
    while (done < r->rq_n) {
        const struct pending_read *p = &r->rq[done];
        if (p->round == 0)
            break;
        size_t acks = 0;
        for (size_t i = 0; i < r->npeers; i++)
            if (r->prs[i].id == r->id || r->prs[i].ack_round >= p->round)
                acks++;
        if (acks < r->quorum)
            break;
        if (!push_read(r, p->ctx, p->index))
            break; /* out of memory: retried at the next ack */
        done++;
    }
    if (done > 0) {
        memmove(r->rq, r->rq + done, (r->rq_n - done) * sizeof *r->rq);
        r->rq_n -= done;
    }
}

/* The leader committed an entry of its term: reads that waited for it get
 * the commit index and the next heartbeat round. */
static void start_postponed_reads(struct raft *r)
{
    bool any = false;
    for (size_t i = 0; i < r->rq_n; i++) {
        if (r->rq[i].round == 0) {
            r->rq[i].index = r->commit;
            r->rq[i].round = r->read_round + 1;
            any = true;
        }
    }
    if (any) {
        r->hb_pending = r->npeers > 1;
        release_reads(r);
    }
}

/* The commit rule (Raft 5.3, 5.4.2): the highest index stored on a majority,
 * if its entry is of the current term. */
static bool maybe_commit(struct raft *r)
{
    size_t n = r->npeers;
    for (size_t i = 0; i < n; i++) {
        uint64_t v = r->prs[i].match;
        size_t j = i;
        while (j > 0 && r->scratch[j - 1] < v) {
            r->scratch[j] = r->scratch[j - 1];
            j--;
        }
        r->scratch[j] = v;
    }
    uint64_t mci = r->scratch[r->quorum - 1];
    if (mci <= r->commit || term_of(r, mci) != r->term)
        return false;
    r->commit = mci;
    start_postponed_reads(r);
    return true;
}

/* The leader's own match is what it has stored, not what it appended
 * (Raft thesis 10.2.1: a leader may replicate entries before writing them to
 * its own disk, as long as it counts itself only once they are there). This
 * lets the driver send a Ready's appends before its own synced write, so a
 * write waits for one fsync round, not two, before commit. */
static void self_stored(struct raft *r)
{
    if (r->role != RAFT_LEADER)
        return;
    struct progress *self = find_pr(r, r->id);
    uint64_t stored = r->stable < last_index(r) ? r->stable : last_index(r);
    if (stored > self->match) {
        self->match = stored;
        if (maybe_commit(r)) {
            r->bcast_pending = true;
            r->bcast_empty = true;
        }
    }
}

/* ---- role changes
 * ------------------------------------------------------------ */

static void reset(struct raft *r, uint64_t term)
{
    if (term != r->term) {
        r->term = term;
        r->vote = RAFT_NONE;
    }
    r->leader = RAFT_NONE;
    r->elapsed = 0;
    r->hb_elapsed = 0;
    randomize_timeout(r);
    r->transferee = RAFT_NONE;
    r->transfer_elapsed = 0;
    r->bcast_pending = false;
    r->bcast_empty = false;
    r->hb_pending = false;
    r->rq_n = 0; /* reads of a deposed leader are never answered */
    for (size_t i = 0; i < r->npeers; i++)
        r->prs[i].vote = 0;
}

static void become_follower(struct raft *r, uint64_t term, uint32_t leader)
{
    reset(r, term);
    r->role = RAFT_FOLLOWER;
    r->leader = leader;
    r->step = step_follower;
}

static void become_precandidate(struct raft *r)
{
    reset(r, r->term);
    r->role = RAFT_PRECANDIDATE;
    r->step = step_candidate;
}

static void become_candidate(struct raft *r)
{
    reset(r, r->term + 1);
    r->vote = r->id;
    r->role = RAFT_CANDIDATE;
    r->step = step_candidate;
}

static void become_leader(struct raft *r)
{
    reset(r, r->term);
    r->role = RAFT_LEADER;
    r->leader = r->id;
    r->step = step_leader;
    r->read_round = 0;
    r->transferred = false;
    uint64_t last = last_index(r);
    for (size_t i = 0; i < r->npeers; i++) {
        struct progress *pr = &r->prs[i];
        pr_reset_state(pr, PR_PROBE);
        pr->match = 0;
        pr->next = last + 1;
        pr->recent_active = true;
        pr->ack_round = 0;
    }
    /* A no-op of the new term lets the leader commit (and so learn the
     * commit point of) everything before it (Raft 5.4.2, 8). */
    struct raft_entry noop = {
        .term = r->term, .index = last + 1, .type = RAFT_ENTRY_NOOP};
    if (log_append(r, &noop, 1) != RAFT_OK) {
        /* Out of memory: give the term up; a later election retries. */
        become_follower(r, r->term, RAFT_NONE);
        return;
    }
    /* The leader counts its own entries once they are stored (see
     * self_stored): the driver may send appends before its own fsync. */
    self_stored(r);
    find_pr(r, r->id)->next = last_index(r) + 1;
    r->bcast_pending = true;
}

/* Counts the votes of the current election: 1 won, -1 lost, 0 open. */
static int tally(const struct raft *r)
{
    size_t yes = 0, no = 0;
    for (size_t i = 0; i < r->npeers; i++) {
        if (r->prs[i].vote > 0)
            yes++;
        else if (r->prs[i].vote < 0)
            no++;
    }
    if (yes >= r->quorum)
        return 1;
    if (no > r->npeers - r->quorum)
        return -1;
    return 0;
}

/* Starts a pre-vote (PRE) or an election; TRANSFER marks the votes so that
 * check-quorum leases do not hold them back. */
static void campaign(struct raft *r, bool pre, bool transfer)
{
    uint64_t vterm;
    enum raft_msg_type type;
    if (pre) {
        become_precandidate(r);
        vterm = r->term + 1;
        type = RAFT_MSG_PREVOTE;
    } else {
        become_candidate(r);
        vterm = r->term;
        type = RAFT_MSG_VOTE;
    }
    find_pr(r, r->id)->vote = 1;
    if (tally(r) > 0) {
        if (pre)
            campaign(r, false, transfer);
        else
            become_leader(r);
        return;
    }
    for (size_t i = 0; i < r->npeers; i++) {
        if (r->prs[i].id == r->id)
            continue;
        struct raft_msg *m = send_msg(r, type, r->prs[i].id, 0);
        if (!m)
            continue;
        m->term = vterm;
        m->index = last_index(r);
        m->log_term = last_term(r);
        m->context = transfer ? 1 : 0;
    }
}

/* ---- handling messages
 * ---------------------------------------------------------- */

static void respond_append(struct raft *r, uint32_t to, uint64_t index)
{
    struct raft_msg *m = send_msg(r, RAFT_MSG_APPEND_RESP, to, 0);
    if (m)
        m->index = index;
}

/* Candidate's log is at least as up to date as ours (Raft 5.4.1). */
static bool up_to_date(const struct raft *r, uint64_t lterm, uint64_t lindex)
{
    uint64_t t = last_term(r);
    return lterm > t || (lterm == t && lindex >= last_index(r));
}

static int on_vote_request(struct raft *r, const struct raft_msg *m)
{
    bool pre = m->type == RAFT_MSG_PREVOTE;
    /* A replica that lost its votes may have voted in this term already:
     * it answers no until a leader is heard (raft_awaits_leader). */
    bool can = !r->await_leader && !r->hold_vote &&
               (r->vote == m->from ||
                (r->vote == RAFT_NONE && r->leader == RAFT_NONE) ||
                (pre && m->term > r->term));
    bool grant = can && up_to_date(r, m->log_term, m->index);
    struct raft_msg *resp = send_msg(
        r, pre ? RAFT_MSG_PREVOTE_RESP : RAFT_MSG_VOTE_RESP, m->from, 0);
    if (grant && !pre) {
        /* The vote is state: it changes even if the answer is lost. */
        r->elapsed = 0;
        r->vote = m->from;
    }
    if (resp) {
        resp->term = grant ? m->term : r->term;
        resp->reject = !grant;
    }
    return RAFT_OK;
}

/* The first index of the follower's entries that share the term of entry
 * I, not before LO (terms never decrease along the log: binary search). */
static uint64_t first_of_term(const struct raft *r, uint64_t lo, uint64_t i)
{
    uint64_t t = term_of(r, i), hi = i;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (term_of(r, mid) < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return hi;
}

/* A replica holding its vote (see await_heartbeat) accepted append M: the
 * first one names the leader's commit index, which its log must reach. */
static void hold_append(struct raft *r, const struct raft_msg *m)
{
    if (!r->hold_set) {
        r->hold_set = true;
        r->hold_commit = m->commit;
    }
    if (r->commit >= r->hold_commit)
        r->hold_vote = false;
}

static int on_append(struct raft *r, const struct raft_msg *m)
{
    if (m->index < r->commit) {
        respond_append(r, m->from, r->commit);
        return RAFT_OK;
    }
    uint64_t last = last_index(r);
    if (m->index > last || term_of(r, m->index) != m->log_term) {
        uint64_t hint;
        if (m->index > last)
            hint = last;
        else if (r->commit + 1 > m->index)
            hint = m->index;
        else
            hint = first_of_term(r, r->commit + 1, m->index);
        struct raft_msg *resp = send_msg(r, RAFT_MSG_APPEND_RESP, m->from, 0);
        if (resp) {
            resp->index = m->index;
            resp->reject = true;
            resp->reject_hint = hint;
            resp->log_term = term_of(r, hint);
        }
        return RAFT_OK;
    }
    size_t k = 0;
    while (k < m->n_entries &&
           term_of(r, m->entries[k].index) == m->entries[k].term)
        k++;
    if (k < m->n_entries) {
        if (m->entries[k].index <= r->commit)
            return RAFT_EINVAL; /* would rewrite a committed entry */
        int rc = log_append(r, &m->entries[k], m->n_entries - k);
        if (rc != RAFT_OK)
            return rc;
    }
    uint64_t last_new = m->index + m->n_entries;
    if (m->commit > r->commit)
        r->commit = max_u64(r->commit, min_u64(m->commit, last_new));
    respond_append(r, m->from, last_new);
    if (r->hold_vote)
        hold_append(r, m);
    return RAFT_OK;
}

static int on_heartbeat(struct raft *r, const struct raft_msg *m)
{
    uint64_t c = min_u64(m->commit, last_index(r));
    if (c > r->commit)
        r->commit = c;
    struct raft_msg *resp = send_msg(r, RAFT_MSG_HEARTBEAT_RESP, m->from, 0);
    if (resp)
        resp->context = m->context;
    return RAFT_OK;
}

/* Installs the snapshot at INDEX/TERM (> commit): entries it covers go;
 * entries after it stay if the log agrees with it at INDEX. */
static void restore(struct raft *r, uint64_t index, uint64_t term)
{
    if (index <= last_index(r) && term_of(r, index) == term) {
        log_compact(r, index);
        if (r->stable < index)
            r->stable = index;
    } else {
        for (uint64_t j = r->snap_index + 1; j <= last_index(r); j++)
            bury(r, entry_at(r, j)->data);
        r->off = 0;
        r->n = 0;
        r->snap_index = index;
        r->snap_term = term;
        r->stable = index;
    }
    r->commit = index;
    r->applied = index;
    r->snap_pending = true;
    r->snap_pend_index = index;
    r->snap_pend_term = term;
}

static int on_snapshot(struct raft *r, const struct raft_msg *m)
{
    if (m->index > r->commit)
        restore(r, m->index, m->log_term);
    respond_append(r, m->from, r->commit);
    return RAFT_OK;
}

static int step_follower(struct raft *r, const struct raft_msg *m)
{
    switch (m->type) {
    case RAFT_MSG_APPEND:
        r->elapsed = 0;
        r->leader = m->from;
        return on_append(r, m);
    case RAFT_MSG_HEARTBEAT:
        r->elapsed = 0;
        r->leader = m->from;
        return on_heartbeat(r, m);
    case RAFT_MSG_SNAPSHOT:
        r->elapsed = 0;
        r->leader = m->from;
        return on_snapshot(r, m);
    case RAFT_MSG_TIMEOUT_NOW:
        /* Leadership transfer: no pre-vote, and the votes say so. A
         * replica waiting for a leader has heard none, so this is stale. */
        if (!r->await_leader && !r->hold_vote)
            campaign(r, false, true);
        return RAFT_OK;
    default:
        return RAFT_OK;
    }
}

static int step_candidate(struct raft *r, const struct raft_msg *m)
{
    switch (m->type) {
    case RAFT_MSG_APPEND:
    case RAFT_MSG_HEARTBEAT:
    case RAFT_MSG_SNAPSHOT:
        /* A leader of our term exists (Raft 5.2). */
        become_follower(r, m->term, m->from);
        return step_follower(r, m);
    case RAFT_MSG_VOTE_RESP:
    case RAFT_MSG_PREVOTE_RESP: {
        bool pre = r->role == RAFT_PRECANDIDATE;
        if (pre != (m->type == RAFT_MSG_PREVOTE_RESP))
            return RAFT_OK;
        /* A granted pre-vote names the term we would campaign in; an older
         * round's grant does not count. */
        if (pre && !m->reject && m->term != r->term + 1)
            return RAFT_OK;
        struct progress *pr = find_pr(r, m->from);
        if (pr->vote == 0)
            pr->vote = m->reject ? -1 : 1;
        int res = tally(r);
        if (res > 0) {
            if (pre)
                campaign(r, false, false);
            else
                become_leader(r);
        } else if (res < 0) {
            become_follower(r, r->term, RAFT_NONE);
        }
        return RAFT_OK;
    }
    default:
        return RAFT_OK;
    }
}

static int on_append_resp(struct raft *r, struct progress *pr,
                          const struct raft_msg *m)
{
    if (m->reject) {
        if (pr_maybe_decr(r, pr, m->index, m->reject_hint, m->log_term)) {
            if (pr->state == PR_REPLICATE)
                pr_become_probe(pr);
            send_append(r, pr, true);
        }
        return RAFT_OK;
    }
    if (m->index > last_index(r))
        return RAFT_EINVAL; /* acks an entry we never had */
    bool was_paused = pr_paused(r, pr);
    if (!pr_maybe_update(pr, m->index))
        return RAFT_OK;
    switch (pr->state) {
    case PR_PROBE:
        pr_become_replicate(pr);
        break;
    case PR_SNAPSHOT:
        if (pr->match >= r->snap_index)
            pr_become_replicate(pr);
        break;
    default:
        infl_free_to(r, pr, m->index);
        break;
    }
    if (maybe_commit(r)) {
        r->bcast_pending = true;
        r->bcast_empty = true;
    } else if (was_paused) {
        send_append(r, pr, true);
    }
    /* Pipelining: fill the window with what the follower still lacks. */
    while (pr->state == PR_REPLICATE && send_append(r, pr, false))
        ;
    if (m->from == r->transferee && pr->match == last_index(r))
        send_timeout_now(r, pr->id);
    return RAFT_OK;
}

static int on_heartbeat_resp(struct raft *r, struct progress *pr,
                             const struct raft_msg *m)
{
    pr->probe_sent = false;
    if (pr->state == PR_REPLICATE && infl_full(r, pr))
        infl_free_first(r, pr);
    if (pr->match < last_index(r))
        send_append(r, pr, true);
    if (m->context > pr->ack_round && m->context <= r->read_round) {
        pr->ack_round = m->context;
        release_reads(r);
    }
    return RAFT_OK;
}

static int step_leader(struct raft *r, const struct raft_msg *m)
{
    struct progress *pr = find_pr(r, m->from);
    switch (m->type) {
    case RAFT_MSG_APPEND_RESP:
        pr->recent_active = true;
        return on_append_resp(r, pr, m);
    case RAFT_MSG_HEARTBEAT_RESP:
        pr->recent_active = true;
        return on_heartbeat_resp(r, pr, m);
    default:
        return RAFT_OK;
    }
}

/* A message of an older term: ignored, but a stale leader or candidate is
 * told the current term so it steps down. */
static int answer_stale(struct raft *r, const struct raft_msg *m)
{
    struct raft_msg *resp;
    switch (m->type) {
    case RAFT_MSG_APPEND:
    case RAFT_MSG_HEARTBEAT:
    case RAFT_MSG_SNAPSHOT:
        (void)send_msg(r, RAFT_MSG_APPEND_RESP, m->from, 0);
        break;
    case RAFT_MSG_VOTE:
    case RAFT_MSG_PREVOTE:
        resp = send_msg(r,
                        m->type == RAFT_MSG_VOTE ? RAFT_MSG_VOTE_RESP
                                                 : RAFT_MSG_PREVOTE_RESP,
                        m->from, 0);
        if (resp)
            resp->reject = true;
        break;
    default:
        break;
    }
    return RAFT_OK;
}

/* A replica that lost its state (raft_init.no_vote_until_leader) hears a
 * heartbeat of the leader of its term. Raft 5.2 allows one vote per term,
 * and the votes it cast before are forgotten; so is the term it had, and
 * so are the entries it acknowledged. Any term T it voted or acknowledged
 * in is no later than the term of the candidate or leader it answered,
 * and every server's term only grows. Once every other member has
 * acknowledged, in this term, a heartbeat round sent after the loss (the
 * first round this replica heard; a heartbeat's index names the latest
 * round every member but its recipient acknowledged), this term is at
 * least T and its leader is current. Until then the replica answers
 * nothing: neither a vote nor an acknowledgement that a stale leader
 * could count. Then it records that leader as its vote in this term (it
 * votes only in later terms, never twice in one) and follows it; it votes
 * again once its log holds what the leader had committed (hold_append),
 * so that its vote cannot elect a candidate lacking an entry the lost
 * disk had acknowledged. Merely hearing a leader would not do: a stale
 * leader's term can be below T. */
static void await_heartbeat(struct raft *r, const struct raft_msg *m)
{
    if (m->context == 0)
        return; /* not a numbered round */
    if (r->await_term != r->term || r->await_round == 0) {
        r->await_term = r->term;
        r->await_round = m->context;
    }
    if (m->index < r->await_round)
        return;
    r->await_leader = false;
    r->hold_vote = true;
    r->hold_set = false;
    if (r->vote == RAFT_NONE)
        r->vote = m->from;
}

/* Refuses what no correct peer sends: it could break invariants. */
static int validate(const struct raft *r, const struct raft_msg *m)
{
    if (m->to != r->id || m->from == r->id || !find_pr(r, m->from))
        return RAFT_EINVAL;
    if (m->type < RAFT_MSG_APPEND || m->type > RAFT_MSG_TIMEOUT_NOW)
        return RAFT_EINVAL;
    if (m->log_term > m->term)
        return RAFT_EINVAL;
    /* An index at the top of the space (a snapshot there, an append up to
     * UINT64_MAX) made loops to the last index wrap, a term there the next
     * election's term. */
    if (m->index >= RAFT_MAX_INDEX ||
        m->n_entries >= RAFT_MAX_INDEX - m->index || m->term >= RAFT_MAX_TERM)
        return RAFT_EINVAL;
    if (m->n_entries > 0) {
        if (m->type != RAFT_MSG_APPEND || !m->entries)
            return RAFT_EINVAL;
        uint64_t t = m->log_term;
        for (size_t k = 0; k < m->n_entries; k++) {
            const struct raft_entry *e = &m->entries[k];
            /* Terms start at 1: term_of() says 0 for an index past the
             * log, so an entry of term 0 would look already stored. */
            if (e->index != m->index + 1 + k || e->term == 0 || e->term < t ||
                e->term > m->term || e->type > RAFT_ENTRY_NOOP ||
                (e->len > 0 && !e->data))
                return RAFT_EINVAL;
            t = e->term;
        }
    }
    switch (m->type) {
    case RAFT_MSG_APPEND:
        if (m->index > 0 && m->log_term == 0)
            return RAFT_EINVAL;
        break;
    case RAFT_MSG_HEARTBEAT:
        if (m->index && m->index >= m->context)
            return RAFT_EINVAL; /* a round acknowledged before it was sent */
        break;
    case RAFT_MSG_SNAPSHOT:
        if (m->index == 0 || m->log_term == 0)
            return RAFT_EINVAL;
        break;
    default:
        break;
    }
    return RAFT_OK;
}

/* Steps one message: term rules first (Raft 5.1; pre-vote and lease
 * exceptions), then votes, then the role's step function. RAFT_EINVAL for
 * what no correct peer sends, RAFT_ENOMEM when entries cannot be kept. */
int raft_step(struct raft *r, const struct raft_msg *m)
{
    if (!r || !m)
        return RAFT_EINVAL;
    begin_input(r);
    int rc = validate(r, m);
    if (rc != RAFT_OK)
        return rc;
    if (m->term > r->term) {
        if (m->type == RAFT_MSG_VOTE || m->type == RAFT_MSG_PREVOTE) {
            /* Check-quorum lease: while a leader is heard from, votes do
             * not disrupt it, unless the leader itself hands over. */
            bool lease =
                r->check_quorum &&
                ((r->leader != RAFT_NONE && r->elapsed < r->election_ticks) ||
                 (r->boot_quiet && r->boot_elapsed < r->election_ticks));
            if (lease && m->context != 1)
                return RAFT_OK;
        }
        if (m->type == RAFT_MSG_PREVOTE ||
            (m->type == RAFT_MSG_PREVOTE_RESP && !m->reject)) {
            /* Pre-vote terms are hypothetical: no state changes. */
        } else if (m->type == RAFT_MSG_APPEND ||
                   m->type == RAFT_MSG_HEARTBEAT ||
                   m->type == RAFT_MSG_SNAPSHOT) {
            become_follower(r, m->term, m->from);
        } else {
            become_follower(r, m->term, RAFT_NONE);
        }
    } else if (m->term < r->term) {
        return answer_stale(r, m);
    }
    if (m->type == RAFT_MSG_VOTE || m->type == RAFT_MSG_PREVOTE)
        return on_vote_request(r, m);
    bool from_leader = m->type == RAFT_MSG_APPEND ||
                       m->type == RAFT_MSG_HEARTBEAT ||
                       m->type == RAFT_MSG_SNAPSHOT;
    if (r->await_leader && from_leader) {
        r->leader = m->from; /* known, not yet trusted */
        r->elapsed = 0;
        if (m->type == RAFT_MSG_HEARTBEAT)
            await_heartbeat(r, m);
        if (r->await_leader)
            return RAFT_OK; /* nothing a stale leader could count */
    }
    return r->step(r, m);
}

/* ---- ticks, proposals, reads, transfer
 * ------------------------------------------- */

static void tick_leader(struct raft *r)
{
    r->hb_elapsed++;
    r->elapsed++;
    if (r->transferee != RAFT_NONE &&
        ++r->transfer_elapsed >= r->election_ticks) {
        r->transferee = RAFT_NONE;
        r->transfer_elapsed = 0;
    }
    if (r->elapsed >= r->election_ticks) {
        r->elapsed = 0;
        if (r->check_quorum) {
            size_t active = 0;
            for (size_t i = 0; i < r->npeers; i++)
                if (r->prs[i].id == r->id || r->prs[i].recent_active)
                    active++;
            if (active < r->quorum) {
                become_follower(r, r->term, RAFT_NONE);
                return;
            }
            for (size_t i = 0; i < r->npeers; i++)
                r->prs[i].recent_active = r->prs[i].id == r->id;
        }
    }
    if (r->hb_elapsed >= r->heartbeat_ticks) {
        r->hb_elapsed = 0;
        bcast_heartbeat(r);
    }
}

/* One tick of logical time: elections for followers and candidates,
 * heartbeats, the quorum check and the transfer timeout for leaders. */
void raft_tick(struct raft *r)
{
    if (!r)
        return;
    begin_input(r);
    if (r->boot_elapsed < r->election_ticks)
        r->boot_elapsed++;
    if (r->role == RAFT_LEADER) {
        tick_leader(r);
        return;
    }
    if (++r->elapsed >= r->timeout) {
        r->elapsed = 0;
        if (!r->await_leader && !r->hold_vote)
            campaign(r, r->pre_vote, false);
    }
}

/* Starts an election now (a pre-vote first when enabled). */
void raft_campaign(struct raft *r)
{
    if (!r)
        return;
    begin_input(r);
    if (r->role != RAFT_LEADER && !r->await_leader && !r->hold_vote)
        campaign(r, r->pre_vote, false);
}

/* Appends a copy of DATA on the leader; it goes out with the next Ready. */
int raft_propose(struct raft *r, const void *data, size_t len, uint64_t *index)
{
    if (!r || (len > 0 && !data))
        return RAFT_EINVAL;
    begin_input(r);
    if (r->role != RAFT_LEADER)
        return RAFT_ENOTLEADER;
    if (r->transferee != RAFT_NONE)
        return RAFT_EBUSY;
    if (last_index(r) + 1 >= RAFT_MAX_INDEX)
        return RAFT_EINVAL; /* the log is full */
    struct raft_entry e = {.term = r->term,
                           .index = last_index(r) + 1,
                           .type = RAFT_ENTRY_NORMAL,
                           .data = (void *)(uintptr_t)data,
                           .len = len};
    int rc = log_append(r, &e, 1);
    if (rc != RAFT_OK)
        return rc;
    struct progress *self = find_pr(r, r->id);
    self->next = last_index(r) + 1;
    self_stored(r);
    r->bcast_pending = true;
    if (index)
        *index = e.index;
    return RAFT_OK;
}

/* Queues a ReadIndex request; see release_reads for when it is served. */
int raft_read_index(struct raft *r, uint64_t ctx)
{
    if (!r)
        return RAFT_EINVAL;
    begin_input(r);
    if (r->role != RAFT_LEADER)
        return RAFT_ENOTLEADER;
    struct pending_read *q = grow(r->rq, &r->rq_cap, r->rq_n + 1, sizeof *q);
    if (!q)
        return RAFT_ENOMEM;
    r->rq = q;
    struct pending_read *p = &r->rq[r->rq_n++];
    p->ctx = ctx;
    p->index = 0;
    p->round = 0;
    if (term_of(r, r->commit) == r->term)
        start_postponed_reads(r);
    return RAFT_OK;
}

bool raft_lease(const struct raft *r, uint64_t *term, uint64_t *round,
                uint64_t *commit)
{
    if (!r || r->role != RAFT_LEADER || !r->check_quorum || r->transferred ||
        term_of(r, r->commit) != r->term)
        return false;
    /* The newest round a quorum acknowledged: the quorum-th largest
     * ack_round, counting this leader's own as the newest. */
    uint64_t *acks = r->scratch;
    size_t n = 0;
    for (size_t i = 0; i < r->npeers; i++)
        acks[n++] = r->prs[i].id == r->id ? r->read_round : r->prs[i].ack_round;
    for (size_t i = 1; i < n; i++) /* insertion sort, descending; n is tiny */
        for (size_t j = i; j > 0 && acks[j] > acks[j - 1]; j--) {
            uint64_t t = acks[j];
            acks[j] = acks[j - 1];
            acks[j - 1] = t;
        }
    uint64_t q = acks[r->quorum - 1];
    if (q == 0)
        return false;
    *term = r->term;
    *round = q;
    *commit = r->commit;
    return true;
}

/* Starts handing leadership to TARGET (another member): RAFT_EINVAL for
 * self or a non-member, RAFT_ENOTLEADER on a non-leader. */
int raft_transfer_leader(struct raft *r, uint32_t target)
{
    if (!r)
        return RAFT_EINVAL;
    begin_input(r);
    if (r->role != RAFT_LEADER)
        return RAFT_ENOTLEADER;
    struct progress *pr = find_pr(r, target);
    if (!pr || target == r->id)
        return RAFT_EINVAL;
    if (r->transferee == target)
        return RAFT_OK;
    r->transferee = target;
    r->transferred = true;
    r->transfer_elapsed = 0;
    if (pr->match == last_index(r))
        send_timeout_now(r, target);
    else
        send_append(r, pr, true);
    return RAFT_OK;
}

/* Ends the snapshot state of PEER: it is probed again (from after the
 * snapshot when OK). Ignored unless PEER is in snapshot state. */
void raft_report_snapshot(struct raft *r, uint32_t peer, bool ok)
{
    if (!r)
        return;
    begin_input(r);
    struct progress *pr = find_pr(r, peer);
    if (r->role != RAFT_LEADER || !pr || pr->state != PR_SNAPSHOT)
        return;
    if (!ok)
        pr->pending_snap = 0;
    pr_become_probe(pr);
    /* Wait for the follower's answer (or a heartbeat) before appending. */
    pr->probe_sent = true;
}

/* PEER restarted: it may have lost what it acknowledged (a wiped disk), so
 * forget its match and probe it again from the end of the log. Forgetting
 * a match is always safe: the commit index never goes back, and the peer
 * counts again once it acknowledges. */
void raft_peer_restarted(struct raft *r, uint32_t peer)
{
    if (!r)
        return;
    begin_input(r);
    struct progress *pr = find_pr(r, peer);
    if (r->role != RAFT_LEADER || !pr || peer == r->id)
        return;
    pr_reset_state(pr, PR_PROBE);
    pr->match = 0;
    pr->next = last_index(r) + 1;
    pr->probe_sent = false;
    pr->pending_snap = 0;
}

/* Drops the log up to INDEX (<= applied; RAFT_EINVAL beyond it). */
int raft_compact(struct raft *r, uint64_t index)
{
    if (!r)
        return RAFT_EINVAL;
    begin_input(r);
    if (index <= r->snap_index)
        return RAFT_OK;
    if (index > r->applied)
        return RAFT_EINVAL;
    log_compact(r, index);
    return RAFT_OK;
}

/* The term of INDEX, or 0 when it is compacted or beyond the log. */
bool raft_awaits_leader(const struct raft *r)
{
    return r && (r->await_leader || r->hold_vote);
}

uint64_t raft_last_index(const struct raft *r)
{
    return r ? last_index(r) : 0;
}

uint64_t raft_term_at(const struct raft *r, uint64_t index)
{
    if (!r)
        return 0;
    if (index < r->snap_index)
        return 0;
    return term_of(r, index);
}

/* ---- Ready
 * ---------------------------------------------------------------------- */

/* Collects what the driver must do (see raft.h). One Ready at a time:
 * until raft_advance, it returns false. Leader work deferred by proposals
 * and acks (appends, a heartbeat round for reads) is flushed here, so the
 * proposals of one loop iteration travel in one append per follower. */
bool raft_ready(struct raft *r, struct raft_ready *rd)
{
    if (!r || !rd)
        return false;
    memset(rd, 0, sizeof *rd);
    if (r->h.out)
        return false; /* one Ready at a time: advance the last one first */
    if (r->role == RAFT_LEADER) {
        if (r->bcast_pending)
            bcast_append(r, r->bcast_empty);
        if (r->hb_pending)
            bcast_heartbeat(r);
    }
    r->bcast_pending = false;
    r->bcast_empty = false;
    r->hb_pending = false;

    struct outbox *ob = &r->ob[r->cur];
    struct handed *h = &r->h;
    memset(h, 0, sizeof *h);

    uint64_t last = last_index(r);
    uint64_t persisted = r->stable; /* stored once this Ready is done */
    if (r->stable < last) {
        size_t k = (size_t)(last - r->stable);
        struct raft_entry *e =
            grow(ob->rd_ents, &ob->cap_rd_ents, k, sizeof *e);
        if (e)
            ob->rd_ents = e;
        if (k > ob->cap_rd_ents)
            k = ob->cap_rd_ents; /* out of memory: the rest comes later */
        if (k > 0) {
            memcpy(ob->rd_ents, entry_at(r, r->stable + 1),
                   k * sizeof *ob->rd_ents);
            rd->entries = ob->rd_ents;
            rd->n_entries = k;
            persisted = r->stable + k;
        }
    }
    /* Never store (or apply) a commit index beyond the stored log. */
    uint64_t commit = min_u64(r->commit, persisted);
    rd->hs.term = r->term;
    rd->hs.vote = r->vote;
    rd->hs.commit = commit;
    rd->hs_changed = rd->hs.term != r->hs_saved.term ||
                     rd->hs.vote != r->hs_saved.vote ||
                     rd->hs.commit != r->hs_saved.commit;
    if (r->snap_pending) {
        rd->has_snapshot = true;
        rd->snap_index = r->snap_pend_index;
        rd->snap_term = r->snap_pend_term;
    }
    /* Storage may hold a suffix the log no longer has (a truncated tail):
     * it goes with the entries that replace it, or with a snapshot that
     * emptied the log. */
    uint64_t kept = rd->n_entries ? rd->entries[rd->n_entries - 1].index : last;
    if (r->stored_last > kept && (rd->n_entries > 0 || rd->has_snapshot))
        rd->truncate_after = r->stored_last;
    if (commit > r->applied) {
        size_t k = (size_t)(commit - r->applied);
        struct raft_entry *e =
            grow(ob->rd_comm, &ob->cap_rd_comm, k, sizeof *e);
        if (e)
            ob->rd_comm = e;
        if (k > ob->cap_rd_comm)
            k = ob->cap_rd_comm;
        if (k > 0) {
            memcpy(ob->rd_comm, entry_at(r, r->applied + 1),
                   k * sizeof *ob->rd_comm);
            rd->committed = ob->rd_comm;
            rd->n_committed = k;
        }
    }
    for (size_t i = 0; i < ob->nmsgs; i++)
        ob->msgs[i].entries =
            ob->msgs[i].n_entries ? &ob->ents[ob->ent_off[i]] : NULL;
    rd->msgs = ob->nmsgs ? ob->msgs : NULL;
    rd->n_msgs = ob->nmsgs;
    rd->reads = ob->nreads ? ob->reads : NULL;
    rd->n_reads = ob->nreads;
    rd->role = r->role;
    rd->leader = r->leader;
    rd->soft_changed = r->role != r->soft_role || r->leader != r->soft_leader;

    if (!rd->hs_changed && !rd->n_entries && !rd->has_snapshot &&
        !rd->truncate_after && !rd->n_committed && !rd->n_msgs &&
        !rd->n_reads && !rd->soft_changed) {
        /* Nothing handed out can point at buried blobs any more. */
        free_graves(ob->grave);
        ob->grave = NULL;
        memset(rd, 0, sizeof *rd);
        return false;
    }
    h->out = true;
    h->hs_changed = rd->hs_changed;
    h->hs = rd->hs;
    h->n_entries = rd->n_entries;
    if (rd->n_entries) {
        h->last_index = rd->entries[rd->n_entries - 1].index;
    }
    h->truncate_after = rd->truncate_after;
    h->n_committed = rd->n_committed;
    if (rd->n_committed)
        h->last_committed = rd->committed[rd->n_committed - 1].index;
    h->has_snapshot = rd->has_snapshot;
    h->snap_index = rd->snap_index;
    h->soft_changed = rd->soft_changed;
    h->role = rd->role;
    h->leader = rd->leader;
    r->cur ^= 1;
    return true;
}

/* The driver did everything in the outstanding Ready: what was stored is
 * stable, what was applied is applied, the buried blobs can go. */
void raft_advance(struct raft *r, const struct raft_ready *rd)
{
    (void)rd; /* what was handed out is recorded in r->h */
    if (!r || !r->h.out)
        return;
    struct handed *h = &r->h;
    const struct outbox *hob = &r->ob[r->cur ^ 1];
    if (h->n_entries) {
        /* The stored entries still in the log are stable; the log may have
         * been truncated meanwhile. Same index and term means the same
         * entry and the same log before it (Log Matching), so the last
         * stored entry still present marks the stable prefix. */
        for (size_t k = h->n_entries; k-- > 0;) {
            const struct raft_entry *e = &hob->rd_ents[k];
            if (term_of(r, e->index) == e->term && e->index > r->snap_index) {
                if (e->index > r->stable)
                    r->stable = e->index;
                break;
            }
        }
        r->stored_last = h->last_index;
    } else if (h->has_snapshot && h->truncate_after) {
        r->stored_last = h->snap_index;
    }
    if (r->stored_last < r->stable)
        r->stored_last = r->stable;
    self_stored(r);
    if (h->hs_changed)
        r->hs_saved = h->hs;
    if (h->n_committed && h->last_committed > r->applied)
        r->applied = h->last_committed;
    if (h->has_snapshot && r->snap_pending &&
        r->snap_pend_index == h->snap_index)
        r->snap_pending = false;
    if (h->soft_changed) {
        r->soft_role = h->role;
        r->soft_leader = h->leader;
    }
    outbox_clear(&r->ob[r->cur ^ 1]);
    h->out = false;
}

/* ---- lifecycle
 * -------------------------------------------------------------------- */

static bool valid_config(const struct raft_config *cfg)
{
    if (cfg->id == RAFT_NONE || !cfg->peers || cfg->npeers == 0 ||
        cfg->npeers > MAX_PEERS)
        return false;
    if (cfg->heartbeat_ticks < 1 ||
        cfg->election_ticks <= cfg->heartbeat_ticks ||
        cfg->election_ticks > 1000000)
        return false;
    if (cfg->max_inflight < 1 || cfg->max_inflight > MAX_INFLIGHT)
        return false;
    bool self = false;
    for (size_t i = 0; i < cfg->npeers; i++) {
        if (cfg->peers[i] == RAFT_NONE)
            return false;
        if (cfg->peers[i] == cfg->id)
            self = true;
        for (size_t j = 0; j < i; j++)
            if (cfg->peers[j] == cfg->peers[i])
                return false;
    }
    return self;
}

static bool is_member(const struct raft_config *cfg, uint32_t id)
{
    for (size_t i = 0; i < cfg->npeers; i++)
        if (cfg->peers[i] == id)
            return true;
    return false;
}

/* What storage handed back must be a state Raft could have left. */
static bool valid_init(const struct raft_config *cfg,
                       const struct raft_init *in)
{
    if (in->n_entries > 0 && !in->entries)
        return false;
    if ((in->snap_index == 0) != (in->snap_term == 0))
        return false;
    if (in->hs.vote != RAFT_NONE && !is_member(cfg, in->hs.vote))
        return false;
    if (in->snap_index >= RAFT_MAX_INDEX ||
        in->n_entries >= RAFT_MAX_INDEX - in->snap_index ||
        in->hs.term >= RAFT_MAX_TERM)
        return false;
    uint64_t t = in->snap_term;
    for (size_t k = 0; k < in->n_entries; k++) {
        const struct raft_entry *e = &in->entries[k];
        if (e->index != in->snap_index + 1 + k || e->term == 0 || e->term < t ||
            e->type > RAFT_ENTRY_NOOP || (e->len > 0 && !e->data))
            return false;
        t = e->term;
    }
    uint64_t last = in->snap_index + in->n_entries;
    if (t > in->hs.term || in->hs.commit > last || in->applied > last ||
        in->applied < in->snap_index)
        return false;
    return true;
}

/* Creates a follower from CFG and what storage returned (INIT may be
 * NULL for a new replica). NULL on a bad config, an impossible stored
 * state or no memory. */
struct raft *raft_new(const struct raft_config *cfg,
                      const struct raft_init *init)
{
    const struct raft_init empty = {0};
    struct raft *r = NULL;
    if (!cfg || !valid_config(cfg))
        goto fail;
    if (!init)
        init = &empty;
    if (!valid_init(cfg, init))
        goto fail;
    r = RAFT_CALLOC(1, sizeof *r);
    if (!r)
        goto fail;
    r->npeers = cfg->npeers;
    r->prs = RAFT_CALLOC(cfg->npeers, sizeof *r->prs);
    r->scratch = RAFT_CALLOC(cfg->npeers, sizeof *r->scratch);
    r->status_prs = RAFT_CALLOC(cfg->npeers, sizeof *r->status_prs);
    if (!r->prs || !r->scratch || !r->status_prs)
        goto fail;
    for (size_t i = 0; i < cfg->npeers; i++) {
        r->prs[i].id = cfg->peers[i];
        r->prs[i].infl = RAFT_CALLOC(cfg->max_inflight, sizeof(uint64_t));
        if (!r->prs[i].infl)
            goto fail;
        r->prs[i].next = 1;
    }
    r->id = cfg->id;
    r->quorum = cfg->npeers / 2 + 1;
    r->election_ticks = cfg->election_ticks;
    r->heartbeat_ticks = cfg->heartbeat_ticks;
    r->max_inflight = cfg->max_inflight;
    r->max_msg_bytes = cfg->max_msg_bytes;
    r->pre_vote = cfg->pre_vote;
    r->check_quorum = cfg->check_quorum;
    r->boot_quiet = cfg->boot_quiet;
    r->await_leader = init->no_vote_until_leader;
    /* Mix the id in, so replicas given the same seed still differ. */
    r->rng = cfg->seed ^ ((uint64_t)cfg->id * 0xd1b54a32d192ed03ull);

    r->snap_index = init->snap_index;
    r->snap_term = init->snap_term;
    if (init->n_entries > 0) {
        if (log_append(r, init->entries, init->n_entries) != RAFT_OK)
            goto fail;
    }
    r->term = init->hs.term;
    r->vote = init->hs.vote;
    /* Applied entries were committed, whatever the stored commit says. */
    r->commit = max_u64(init->hs.commit, init->applied);
    r->applied = init->applied;
    r->stable = last_index(r);
    r->stored_last = r->stable;
    r->hs_saved = init->hs;
    become_follower(r, r->term, RAFT_NONE);
    r->soft_role = RAFT_FOLLOWER;
    r->soft_leader = RAFT_NONE;
    r->chk_term = r->term;
    r->chk_vote = r->vote;
    return r;
fail:
    raft_free(r);
    return NULL;
}

/* Frees R and everything it owns (NULL is a no-op). */
void raft_free(struct raft *r)
{
    if (!r)
        return;
    for (uint64_t j = r->snap_index + 1; r->ents && j <= last_index(r); j++)
        blob_free(entry_at(r, j)->data);
    for (int i = 0; i < 2; i++) {
        struct outbox *ob = &r->ob[i];
        free_graves(ob->grave);
        RAFT_FREE(ob->msgs);
        RAFT_FREE(ob->ent_off);
        RAFT_FREE(ob->ents);
        RAFT_FREE(ob->reads);
        RAFT_FREE(ob->rd_ents);
        RAFT_FREE(ob->rd_comm);
    }
    if (r->prs)
        for (size_t i = 0; i < r->npeers; i++)
            RAFT_FREE(r->prs[i].infl);
    RAFT_FREE(r->prs);
    RAFT_FREE(r->scratch);
    RAFT_FREE(r->status_prs);
    RAFT_FREE(r->ents);
    RAFT_FREE(r->rq);
    RAFT_FREE(r);
}

/* ---- introspection
 * ------------------------------------------------------------------ */

/* Fills ST; the progress array (leaders only) is owned by R. */
void raft_get_status(struct raft *r, struct raft_status *st)
{
    if (!r || !st)
        return;
    memset(st, 0, sizeof *st);
    st->id = r->id;
    st->role = r->role;
    st->leader = r->leader;
    st->term = r->term;
    st->commit = r->commit;
    st->applied = r->applied;
    st->first_index = r->snap_index + 1;
    st->last_index = last_index(r);
    if (r->role != RAFT_LEADER)
        return;
    for (size_t i = 0; i < r->npeers; i++) {
        const struct progress *pr = &r->prs[i];
        struct raft_progress *sp = &r->status_prs[i];
        sp->id = pr->id;
        sp->match = pr->match;
        sp->next = pr->next;
        sp->state = pr->state;
        sp->active = pr->id == r->id || pr->recent_active;
    }
    st->progress = r->status_prs;
    st->n_progress = r->npeers;
}

#define BROKEN(...)                                                            \
    do {                                                                       \
        if (why && whylen)                                                     \
            snprintf(why, whylen, __VA_ARGS__);                                \
        return -1;                                                             \
    } while (0)

/* Checks the rules listed in raft.h. Term and vote are compared with their
 * values before the latest input, so the simulator calls it after every
 * input. */
int raft_check_invariants(const struct raft *r, char *why, size_t whylen)
{
    if (why && whylen)
        why[0] = '\0';
    if (!r)
        BROKEN("no instance");
    if (r->term < r->chk_term)
        BROKEN("term went back from %llu to %llu",
               (unsigned long long)r->chk_term, (unsigned long long)r->term);
    if (r->term == r->chk_term && r->chk_vote != RAFT_NONE &&
        r->vote != r->chk_vote)
        BROKEN("vote changed from %u to %u in term %llu", r->chk_vote, r->vote,
               (unsigned long long)r->term);
    uint64_t last = last_index(r);
    if (r->commit > last)
        BROKEN("commit %llu beyond last index %llu",
               (unsigned long long)r->commit, (unsigned long long)last);
    if (r->applied > r->commit)
        BROKEN("applied %llu beyond commit %llu",
               (unsigned long long)r->applied, (unsigned long long)r->commit);
    if (r->applied < r->snap_index)
        BROKEN("applied %llu before the snapshot point %llu",
               (unsigned long long)r->applied,
               (unsigned long long)r->snap_index);
    if (r->stable < r->snap_index || r->stable > last)
        BROKEN("stable index %llu outside the log",
               (unsigned long long)r->stable);
    if ((r->snap_index == 0) != (r->snap_term == 0))
        BROKEN("snapshot point %llu has term %llu",
               (unsigned long long)r->snap_index,
               (unsigned long long)r->snap_term);
    if (r->off + r->n > r->cap)
        BROKEN("log array bounds");
    uint64_t t = r->snap_term;
    for (uint64_t i = r->snap_index + 1; i <= last; i++) {
        const struct raft_entry *e = entry_at(r, i);
        if (e->index != i)
            BROKEN("log not contiguous at %llu", (unsigned long long)i);
        if (e->term < t)
            BROKEN("log term decreases at %llu", (unsigned long long)i);
        if (e->term > r->term)
            BROKEN("entry %llu has a future term", (unsigned long long)i);
        t = e->term;
    }
    if (r->vote != RAFT_NONE && !find_pr(r, r->vote))
        BROKEN("vote for non-member %u", r->vote);
    if ((r->await_leader || r->hold_vote) && r->role != RAFT_FOLLOWER)
        BROKEN("replica %u waits for a leader, yet is a %s", r->id,
               r->role == RAFT_LEADER ? "leader" : "candidate");
    if (r->await_leader && r->vote != RAFT_NONE && r->vote != r->chk_vote)
        BROKEN("replica %u voted for %u while waiting for a leader", r->id,
               r->vote);
    switch (r->role) {
    case RAFT_LEADER:
        if (r->leader != r->id || r->vote != r->id)
            BROKEN("leader %u has leader %u and vote %u", r->id, r->leader,
                   r->vote);
        for (size_t i = 0; i < r->npeers; i++) {
            const struct progress *pr = &r->prs[i];
            if (pr->match > last || pr->next <= pr->match)
                BROKEN("progress of %u: match %llu next %llu", pr->id,
                       (unsigned long long)pr->match,
                       (unsigned long long)pr->next);
            if (pr->infl_n > r->max_inflight)
                BROKEN("progress of %u: inflight overflow", pr->id);
        }
        if (find_pr(r, r->id)->match != (r->stable < last ? r->stable : last))
            BROKEN("leader's own match is not its stored index");
        break;
    case RAFT_CANDIDATE:
        if (r->vote != r->id || r->leader != RAFT_NONE)
            BROKEN("candidate did not vote for itself");
        break;
    case RAFT_PRECANDIDATE:
        if (r->leader != RAFT_NONE)
            BROKEN("pre-candidate knows a leader");
        break;
    case RAFT_FOLLOWER:
        if (r->leader == r->id)
            BROKEN("follower names itself leader");
        if (r->leader != RAFT_NONE && !find_pr(r, r->leader))
            BROKEN("leader %u is not a member", r->leader);
        break;
    default:
        BROKEN("unknown role %d", (int)r->role);
    }
    return 0;
}
