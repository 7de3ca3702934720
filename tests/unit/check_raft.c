/*
 * check_raft - unit tests of the pure Raft state machine (kvnode/raft.c).
 *
 * Tests are grouped by the sections of the Raft paper (Ongaro & Ousterhout,
 * "In Search of an Understandable Consensus Algorithm", 2014) and of
 * Ongaro's thesis ("Consensus: Bridging Theory and Practice", 2014) for the
 * extensions; each quotes the sentence it checks. Most run on a tiny
 * in-test network of 3 or 5 instances: a driver that persists each Ready
 * into a simulated store, queues the messages (which it can drop, reorder,
 * duplicate, or cut per link), streams snapshots, applies committed entries
 * and checks, after every input: raft_check_invariants, Election Safety (one
 * leader per term), Leader Completeness (a new leader holds every entry
 * applied anywhere), State Machine Safety (replicas apply the same entry at
 * each index) and that the store matches the instance's log.
 *
 * This file includes raft.c itself, compiled with counting allocators (the
 * RAFT_MALLOC seam), so tests can fail the Nth allocation and break
 * internal state on purpose; everything else goes through raft.h. (The
 * Makefile must rebuild this object when kvnode/raft.c changes.)
 *
 * The randomized test uses its loop index as the seed; a failure names it
 * (the ":N:" of Check's report). KV_SIM_SEED=N replays seed N alone;
 * KV_SIM_STATS=1 prints what each seed exercised.
 */
#include <check.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

Suite *raft_suite(void);

/* ---- allocation seam ------------------------------------------------------
 */

static long t_alloc_count;        /* allocations so far */
static long t_alloc_fail_at = -1; /* this allocation fails (-1: none) */
static bool t_alloc_fail_rest;    /* ... and every later one */
static long t_alloc_failed;       /* failures injected */

static bool t_alloc_fails(void)
{
    long n = t_alloc_count++;
    if (t_alloc_fail_at < 0)
        return false;
    if (n == t_alloc_fail_at || (t_alloc_fail_rest && n > t_alloc_fail_at)) {
        t_alloc_failed++;
        return true;
    }
    return false;
}

static void *t_malloc(size_t n)
{
    return t_alloc_fails() ? NULL : malloc(n);
}

static void *t_calloc(size_t n, size_t s)
{
    return t_alloc_fails() ? NULL : calloc(n, s);
}

static void *t_realloc(void *p, size_t n)
{
    return t_alloc_fails() ? NULL : realloc(p, n);
}

static void t_alloc_reset(void)
{
    t_alloc_count = 0;
    t_alloc_fail_at = -1;
    t_alloc_fail_rest = false;
    t_alloc_failed = 0;
}

#define RAFT_MALLOC(n) t_malloc(n)
#define RAFT_CALLOC(n, s) t_calloc(n, s)
#define RAFT_REALLOC(p, n) t_realloc(p, n)
#define RAFT_FREE(p) free(p)
#include "raft.c"

/* For checks on hot paths of the harness: Check records the location of
 * every ck_assert with a write(2), which would dominate the run time of the
 * randomized tests. This only calls into Check on failure. */
#define REQUIRE(cond, ...)                                                     \
    do {                                                                       \
        if (!(cond))                                                           \
            ck_abort_msg(__VA_ARGS__);                                         \
    } while (0)

/* ---- helpers for one instance -----------------------------------------------
 */

#define NMAX 5
#define ELECTION 10
#define HEARTBEAT 2

struct opts {
    bool pre_vote;
    bool check_quorum;
    size_t max_inflight;
    size_t max_msg_bytes;
    bool boot_quiet;
};

static const struct opts plain = {false, false, 256, 1 << 20, false};

static const uint32_t all_ids[NMAX] = {1, 2, 3, 4, 5};

static struct raft_config mk_config(uint32_t id, size_t n, const struct opts *o,
                                    uint64_t seed)
{
    struct raft_config c = {
        .id = id,
        .peers = all_ids,
        .npeers = n,
        .election_ticks = ELECTION,
        .heartbeat_ticks = HEARTBEAT,
        .seed = seed,
        .max_inflight = o->max_inflight,
        .max_msg_bytes = o->max_msg_bytes,
        .pre_vote = o->pre_vote,
        .check_quorum = o->check_quorum,
        .boot_quiet = o->boot_quiet,
    };
    return c;
}

static void expect_ok(const struct raft *r)
{
    char why[256];
    int rc = raft_check_invariants(r, why, sizeof why);
    REQUIRE(rc == 0, "invariant broken: %s", why);
}

/* A message as seen by a test (entries summarized). */
struct seen {
    enum raft_msg_type type;
    uint32_t from, to;
    uint64_t term, log_term, index, commit, reject_hint, context;
    bool reject;
    size_t n_entries;
    uint64_t first, last, first_term, last_term;
};

/* What a standalone instance's Readys held, until the next drain. */
struct drained {
    struct seen msgs[256];
    size_t n_msgs;
    size_t n_entries;
    uint64_t last_entry;
    uint64_t truncate_after;
    size_t n_committed;
    uint64_t last_committed;
    bool has_snapshot;
    uint64_t snap_index, snap_term;
    struct raft_read reads[16];
    size_t n_reads;
    bool hs_changed;
    struct raft_hardstate hs;
};

static void summarize(const struct raft_msg *m, struct seen *s)
{
    memset(s, 0, sizeof *s);
    s->type = m->type;
    s->from = m->from;
    s->to = m->to;
    s->term = m->term;
    s->log_term = m->log_term;
    s->index = m->index;
    s->commit = m->commit;
    s->reject = m->reject;
    s->reject_hint = m->reject_hint;
    s->context = m->context;
    s->n_entries = m->n_entries;
    if (m->n_entries) {
        s->first = m->entries[0].index;
        s->first_term = m->entries[0].term;
        s->last = m->entries[m->n_entries - 1].index;
        s->last_term = m->entries[m->n_entries - 1].term;
    }
}

/* Runs the Ready loop of a standalone instance (nothing is delivered). */
static void drain(struct raft *r, struct drained *d)
{
    struct raft_ready rd;
    memset(d, 0, sizeof *d);
    for (int i = 0; i < 8 && raft_ready(r, &rd); i++) {
        for (size_t k = 0; k < rd.n_msgs && d->n_msgs < 256; k++)
            summarize(&rd.msgs[k], &d->msgs[d->n_msgs++]);
        d->n_entries += rd.n_entries;
        if (rd.n_entries)
            d->last_entry = rd.entries[rd.n_entries - 1].index;
        if (rd.truncate_after)
            d->truncate_after = rd.truncate_after;
        d->n_committed += rd.n_committed;
        if (rd.n_committed)
            d->last_committed = rd.committed[rd.n_committed - 1].index;
        if (rd.has_snapshot) {
            d->has_snapshot = true;
            d->snap_index = rd.snap_index;
            d->snap_term = rd.snap_term;
        }
        for (size_t k = 0; k < rd.n_reads && d->n_reads < 16; k++)
            d->reads[d->n_reads++] = rd.reads[k];
        if (rd.hs_changed) {
            d->hs_changed = true;
            d->hs = rd.hs;
        }
        raft_advance(r, &rd);
        expect_ok(r);
    }
}

static size_t count_type(const struct drained *d, enum raft_msg_type t)
{
    size_t n = 0;
    for (size_t i = 0; i < d->n_msgs; i++)
        n += d->msgs[i].type == t;
    return n;
}

static const struct seen *find_msg(const struct drained *d,
                                   enum raft_msg_type t, uint32_t to)
{
    for (size_t i = 0; i < d->n_msgs; i++)
        if (d->msgs[i].type == t && (to == 0 || d->msgs[i].to == to))
            return &d->msgs[i];
    return NULL;
}

/* Fills ENTS[0..k) with indexes 1..k of the given terms (no data). */
static void fill_log(struct raft_entry *ents, const uint64_t *terms, size_t k)
{
    for (size_t i = 0; i < k; i++) {
        memset(&ents[i], 0, sizeof ents[i]);
        ents[i].index = i + 1;
        ents[i].term = terms[i];
    }
}

static struct raft *mk_node(uint32_t id, size_t n, const struct opts *o,
                            const struct raft_init *in)
{
    struct raft_config c = mk_config(id, n, o, 1000 + id);
    struct raft *r = raft_new(&c, in);
    REQUIRE(r, "%s", "raft_new failed");
    expect_ok(r);
    return r;
}

static int step_to(struct raft *r, struct raft_msg m)
{
    int rc = raft_step(r, &m);
    expect_ok(r);
    return rc;
}

static struct raft_msg msg(enum raft_msg_type t, uint32_t from, uint32_t to,
                           uint64_t term)
{
    struct raft_msg m;
    memset(&m, 0, sizeof m);
    m.type = t;
    m.from = from;
    m.to = to;
    m.term = term;
    return m;
}

/* Makes a standalone instance leader of N members by answering its votes. */
static void make_leader(struct raft *r, size_t n)
{
    raft_campaign(r);
    expect_ok(r);
    struct raft_status st;
    raft_get_status(r, &st);
    bool pre = st.role == RAFT_PRECANDIDATE;
    for (uint32_t p = 1; p <= n && st.role != RAFT_LEADER; p++) {
        if (p == st.id)
            continue;
        struct raft_msg m =
            msg(pre ? RAFT_MSG_PREVOTE_RESP : RAFT_MSG_VOTE_RESP, p, st.id,
                pre ? st.term + 1 : st.term);
        REQUIRE(step_to(r, m) == RAFT_OK, "%s", "vote refused");
        raft_get_status(r, &st);
        if (pre && st.role == RAFT_CANDIDATE) {
            pre = false;
            p = 0; /* the real election: ask everyone again */
        }
    }
    REQUIRE(st.role == RAFT_LEADER, "%s", "not elected");
}

/* ---- the test network
 * -------------------------------------------------------------- */

struct sentry {
    bool present;
    uint64_t term;
    uint32_t type;
    size_t len;
    unsigned char *data;
};

/* What the driver of one node keeps: the durable store and the applied
 * state machine (here a digest chain of applied entries). */
struct store {
    struct raft_hardstate hs;
    uint64_t snap_index, snap_term;
    struct sentry *log; /* by index; only (snap_index, ..] matters */
    size_t lcap;
    uint64_t applied;
    uint64_t digest;
    bool snap_waiting; /* a streamed snapshot was delivered */
    uint64_t snap_wait_index, snap_wait_digest;
    bool no_vote; /* rebuilt: no vote until a leader is heard (kept like
                     replica.c's "R" marker) */
};

struct qmsg {
    struct raft_msg m;
    uint64_t digest; /* streamed snapshots: the state they carry */
};

struct net_read {
    uint32_t node;
    uint64_t ctx, index;
};

struct net {
    size_t n;
    struct opts o;
    uint64_t seed;
    struct raft *r[NMAX + 1];
    struct store st[NMAX + 1];
    bool down[NMAX + 1];
    bool cut[NMAX + 1][NMAX + 1];
    struct qmsg *q;
    size_t qn, qcap;
    uint64_t rng;
    unsigned drop_pct, dup_pct;
    bool shuffle;
    bool hold_snapshots; /* snapshot requests are counted, not streamed */
    /* observations */
    uint64_t *commit_term; /* by index: term of the entry applied there */
    uint64_t *commit_hash;
    uint64_t *digest_at; /* by index: state machine digest after it */
    size_t ccap;
    uint32_t *leader_of; /* by term */
    size_t lcap;
    struct net_read reads[512];
    size_t nreads;
    size_t delivered[RAFT_MSG_TIMEOUT_NOW + 1];
    size_t snap_requests, snaps_installed;
    size_t rejects;
    bool fault_mode; /* allocation failures expected: tolerate ENOMEM */
    bool drop_type[RAFT_MSG_TIMEOUT_NOW + 1];
    /* a test's own filter, asked at delivery */
    bool (*drop)(struct net *nt, const struct raft_msg *m);
};

static uint64_t net_rand(struct net *nt)
{
    return rng_next(&nt->rng);
}

static uint64_t hash_entry(uint64_t term, uint32_t type, const void *data,
                           size_t len)
{
    uint64_t h = 1469598103934665603ull ^ term ^ ((uint64_t)type << 56);
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t *grow_zeroed(uint64_t *a, size_t old, size_t ncap)
{
    uint64_t *p = realloc(a, ncap * sizeof *p);
    REQUIRE(p, "out of memory");
    memset(p + old, 0, (ncap - old) * sizeof *p);
    return p;
}

/* Makes the per-index records reach INDEX. */
static void grow_commits(struct net *nt, uint64_t index)
{
    if (index < nt->ccap)
        return;
    size_t ncap = nt->ccap ? nt->ccap : 64;
    while (ncap <= index)
        ncap *= 2;
    nt->commit_term = grow_zeroed(nt->commit_term, nt->ccap, ncap);
    nt->commit_hash = grow_zeroed(nt->commit_hash, nt->ccap, ncap);
    nt->digest_at = grow_zeroed(nt->digest_at, nt->ccap, ncap);
    nt->ccap = ncap;
}

static void store_reserve(struct store *s, uint64_t index)
{
    if (index < s->lcap)
        return;
    size_t ncap = s->lcap ? s->lcap : 64;
    while (ncap <= index)
        ncap *= 2;
    struct sentry *p = realloc(s->log, ncap * sizeof *p);
    REQUIRE(p, "out of memory");
    memset(p + s->lcap, 0, (ncap - s->lcap) * sizeof *p);
    s->log = p;
    s->lcap = ncap;
}

static void store_del(struct store *s, uint64_t i)
{
    if (i < s->lcap && s->log[i].present) {
        free(s->log[i].data);
        memset(&s->log[i], 0, sizeof s->log[i]);
    }
}

static void store_put(struct store *s, const struct raft_entry *e)
{
    store_reserve(s, e->index);
    store_del(s, e->index);
    struct sentry *d = &s->log[e->index];
    d->present = true;
    d->term = e->term;
    d->type = e->type;
    d->len = e->len;
    if (e->len) {
        d->data = malloc(e->len);
        REQUIRE(d->data, "out of memory");
        memcpy(d->data, e->data, e->len);
    }
}

static void store_free(struct store *s)
{
    for (size_t i = 0; i < s->lcap; i++)
        store_del(s, i);
    free(s->log);
    memset(s, 0, sizeof *s);
}

/* The store of a node must hold exactly its log after the snapshot point. */
static void check_store(struct net *nt, uint32_t id)
{
    struct raft *r = nt->r[id];
    struct store *s = &nt->st[id];
    struct raft_status st;
    raft_get_status(r, &st);
    for (uint64_t i = st.first_index; i <= st.last_index; i++) {
        REQUIRE(i < s->lcap && s->log[i].present,
                "node %u: entry %" PRIu64 " not stored", id, i);
        REQUIRE(s->log[i].term == raft_term_at(r, i),
                "node %u: stored entry %" PRIu64 " has term %" PRIu64
                ", log has %" PRIu64,
                id, i, s->log[i].term, raft_term_at(r, i));
    }
    for (uint64_t i = st.last_index + 1; i < s->lcap; i++)
        REQUIRE(!s->log[i].present,
                "node %u: stale entry %" PRIu64 " left in the store "
                "(last index %" PRIu64 ")",
                id, i, st.last_index);
    REQUIRE(s->hs.commit <= st.last_index, "stored commit beyond log");
}

static void check_store_unless_faulty(struct net *nt, uint32_t id)
{
    /* Under allocation failures a Ready may carry only part of the log. */
    if (!nt->fault_mode)
        check_store(nt, id);
}

static void net_queue(struct net *nt, const struct raft_msg *m, uint64_t dg)
{
    if (nt->down[m->from] || nt->down[m->to] || nt->cut[m->from][m->to] ||
        nt->drop_type[m->type])
        return;
    if (nt->qn == nt->qcap) {
        size_t ncap = nt->qcap ? nt->qcap * 2 : 64;
        struct qmsg *p = realloc(nt->q, ncap * sizeof *p);
        REQUIRE(p, "out of memory");
        nt->q = p;
        nt->qcap = ncap;
    }
    struct qmsg *q = &nt->q[nt->qn++];
    q->m = *m;
    q->digest = dg;
    q->m.entries = NULL;
    if (m->n_entries) {
        q->m.entries = calloc(m->n_entries, sizeof *q->m.entries);
        REQUIRE(q->m.entries, "out of memory");
        for (size_t i = 0; i < m->n_entries; i++) {
            q->m.entries[i] = m->entries[i];
            q->m.entries[i].data = NULL;
            if (m->entries[i].len) {
                q->m.entries[i].data = malloc(m->entries[i].len);
                REQUIRE(q->m.entries[i].data, "out of memory");
                memcpy(q->m.entries[i].data, m->entries[i].data,
                       m->entries[i].len);
            }
        }
    }
}

static void qmsg_free(struct qmsg *q)
{
    for (size_t i = 0; i < q->m.n_entries; i++)
        free(q->m.entries[i].data);
    free(q->m.entries);
}

/* Election Safety and Leader Completeness, checked after every input. */
static void check_node(struct net *nt, uint32_t id)
{
    struct raft *r = nt->r[id];
    expect_ok(r);
    struct raft_status st;
    raft_get_status(r, &st);
    if (st.role != RAFT_LEADER)
        return;
    if (st.term >= nt->lcap) {
        size_t old = nt->lcap, ncap = old ? old : 64;
        while (ncap <= st.term)
            ncap *= 2;
        uint32_t *p = realloc(nt->leader_of, ncap * sizeof *p);
        REQUIRE(p, "out of memory");
        memset(p + old, 0, (ncap - old) * sizeof *p);
        nt->leader_of = p;
        nt->lcap = ncap;
    }
    uint32_t prev = nt->leader_of[st.term];
    REQUIRE(prev == 0 || prev == id,
            "two leaders in term %" PRIu64 ": %u and %u (seed %" PRIu64 ")",
            st.term, prev, id, nt->seed);
    if (prev == 0) {
        nt->leader_of[st.term] = id;
        for (uint64_t i = st.first_index; i < nt->ccap; i++) {
            if (!nt->commit_term[i])
                continue;
            REQUIRE(raft_term_at(r, i) == nt->commit_term[i],
                    "leader %u of term %" PRIu64
                    " lacks committed entry %" PRIu64 " (seed %" PRIu64 ")",
                    id, st.term, i, nt->seed);
        }
    }
}

static void apply_entry(struct net *nt, uint32_t id, const struct raft_entry *e)
{
    struct store *s = &nt->st[id];
    REQUIRE(e->index == s->applied + 1,
            "node %u applies %" PRIu64 " after %" PRIu64, id, e->index,
            s->applied);
    uint64_t h = hash_entry(e->term, e->type, e->data, e->len);
    grow_commits(nt, e->index);
    s->digest = s->digest * 31 + h;
    s->applied = e->index;
    if (nt->commit_term[e->index]) {
        REQUIRE(nt->commit_term[e->index] == e->term &&
                    nt->commit_hash[e->index] == h,
                "State Machine Safety: node %u applied a different "
                "entry at %" PRIu64 " (seed %" PRIu64 ")",
                id, e->index, nt->seed);
        REQUIRE(nt->digest_at[e->index] == s->digest,
                "node %u state differs after %" PRIu64, id, e->index);
    } else {
        nt->commit_term[e->index] = e->term;
        nt->commit_hash[e->index] = h;
        nt->digest_at[e->index] = s->digest;
    }
}

/* Streams the state machine of leader L to TO, as the driver would. */
static void stream_snapshot(struct net *nt, uint32_t l,
                            const struct raft_msg *m)
{
    nt->snap_requests++;
    if (nt->hold_snapshots)
        return;
    struct store *s = &nt->st[l];
    struct raft_msg sm = *m;
    sm.index = s->applied;
    sm.log_term = raft_term_at(nt->r[l], s->applied);
    REQUIRE(sm.log_term != 0, "%s", "unexpected value");
    size_t before = nt->qn;
    net_queue(nt, &sm, s->digest);
    if (nt->qn == before)
        raft_report_snapshot(nt->r[l], m->to, false); /* link down */
}

/* Does everything a driver does with the Readys of node ID. */
static void net_ready(struct net *nt, uint32_t id)
{
    struct raft *r = nt->r[id];
    struct store *s = &nt->st[id];
    struct raft_ready rd;
    for (int guard = 0; raft_ready(r, &rd); guard++) {
        REQUIRE(guard < 100, "%s", "too many Readys");
        /* 1. persist */
        if (rd.hs_changed)
            s->hs = rd.hs;
        if (s->no_vote && !raft_awaits_leader(r))
            s->no_vote = false; /* the marker goes in this Ready's batch */
        if (rd.has_snapshot) {
            s->snap_index = rd.snap_index;
            s->snap_term = rd.snap_term;
        }
        for (size_t i = 0; i < rd.n_entries; i++) {
            const struct raft_entry *e = &rd.entries[i];
            REQUIRE(e->index > s->snap_index, "%s", "entry below the snapshot");
            if (e->index > s->snap_index + 1)
                REQUIRE(e->index - 1 < s->lcap && s->log[e->index - 1].present,
                        "node %u: gap before stored entry %" PRIu64, id,
                        e->index);
            store_put(s, e);
        }
        if (rd.truncate_after) {
            REQUIRE(rd.n_entries > 0 || rd.has_snapshot, "%s",
                    "truncate_after without entries or snapshot");
            uint64_t from = rd.n_entries ? rd.entries[rd.n_entries - 1].index
                                         : rd.snap_index;
            for (uint64_t i = from + 1; i <= rd.truncate_after; i++)
                store_del(s, i);
        }
        /* 2. send */
        for (size_t i = 0; i < rd.n_msgs; i++) {
            REQUIRE(rd.msgs[i].from == id, "%s", "message not from its node");
            if (rd.msgs[i].type == RAFT_MSG_SNAPSHOT)
                continue; /* after applying: the state streamed is newer */
            net_queue(nt, &rd.msgs[i], 0);
        }
        /* 3. install, apply */
        if (rd.has_snapshot) {
            REQUIRE(s->snap_waiting && s->snap_wait_index == rd.snap_index,
                    "node %u installs a snapshot it never received", id);
            if (nt->digest_at && rd.snap_index < nt->ccap &&
                nt->commit_term[rd.snap_index])
                REQUIRE(nt->digest_at[rd.snap_index] == s->snap_wait_digest,
                        "snapshot state differs at %" PRIu64, rd.snap_index);
            s->applied = rd.snap_index;
            s->digest = s->snap_wait_digest;
            s->snap_waiting = false;
            nt->snaps_installed++;
        }
        for (size_t i = 0; i < rd.n_committed; i++)
            apply_entry(nt, id, &rd.committed[i]);
        for (size_t i = 0; i < rd.n_msgs; i++)
            if (rd.msgs[i].type == RAFT_MSG_SNAPSHOT)
                stream_snapshot(nt, id, &rd.msgs[i]);
        for (size_t i = 0; i < rd.n_reads && nt->nreads < 512; i++) {
            struct net_read *nr = &nt->reads[nt->nreads++];
            nr->node = id;
            nr->ctx = rd.reads[i].ctx;
            nr->index = rd.reads[i].index;
        }
        raft_advance(r, &rd);
        check_node(nt, id);
    }
    check_store_unless_faulty(nt, id);
}

static void net_start(struct net *nt, uint32_t id)
{
    struct store *s = &nt->st[id];
    struct raft_config c = mk_config(
        id, nt->n, &nt->o, nt->seed * 7919 + id * 104729 + net_rand(nt) % 1000);
    uint64_t last = s->snap_index;
    while (last + 1 < s->lcap && s->log[last + 1].present)
        last++;
    size_t k = (size_t)(last - s->snap_index);
    struct raft_entry *ents = calloc(k + 1, sizeof *ents);
    REQUIRE(ents, "out of memory");
    for (size_t i = 0; i < k; i++) {
        const struct sentry *e = &s->log[s->snap_index + 1 + i];
        ents[i].index = s->snap_index + 1 + i;
        ents[i].term = e->term;
        ents[i].type = e->type;
        ents[i].data = e->data;
        ents[i].len = e->len;
    }
    struct raft_init in = {.hs = s->hs,
                           .snap_index = s->snap_index,
                           .snap_term = s->snap_term,
                           .entries = ents,
                           .n_entries = k,
                           .applied = s->applied,
                           .no_vote_until_leader = s->no_vote};
    nt->r[id] = raft_new(&c, &in);
    free(ents);
    REQUIRE(nt->r[id], "node %u cannot restart from its store", id);
    check_node(nt, id);
    net_ready(nt, id);
}

static struct net *net_new(size_t n, const struct opts *o, uint64_t seed)
{
    struct net *nt = calloc(1, sizeof *nt);
    REQUIRE(nt, "out of memory");
    nt->n = n;
    nt->o = *o;
    nt->seed = seed;
    nt->rng = seed * 0x9e3779b97f4a7c15ull + 1;
    for (uint32_t id = 1; id <= n; id++)
        net_start(nt, id);
    return nt;
}

/* Gives node ID a stored log of the given terms before it (re)starts. */
static void net_set_log(struct net *nt, uint32_t id, const uint64_t *terms,
                        size_t k, uint64_t term, uint32_t vote, uint64_t commit)
{
    struct store *s = &nt->st[id];
    raft_free(nt->r[id]);
    store_free(s);
    for (size_t i = 0; i < k; i++) {
        /* the same (index, term) carries the same data on every node */
        char buf[32];
        int len = snprintf(buf, sizeof buf, "i%zu-t%" PRIu64, i + 1, terms[i]);
        struct raft_entry e = {
            .index = i + 1, .term = terms[i], .data = buf, .len = (size_t)len};
        store_put(s, &e);
    }
    s->hs.term = term;
    s->hs.vote = vote;
    s->hs.commit = commit;
    s->applied = 0;
    net_start(nt, id);
    /* what was committed is applied by the restart's Ready */
}

/* Node ID loses its disk and is rebuilt (kvnode --rebuild): it restarts
 * empty, with no vote until it hears a current leader. The others learn
 * of the restart as the driver tells them (a new boot id). */
static void net_rebuild(struct net *nt, uint32_t id)
{
    raft_free(nt->r[id]);
    store_free(&nt->st[id]);
    nt->st[id].no_vote = true;
    net_start(nt, id);
    for (uint32_t j = 1; j <= nt->n; j++) {
        if (j == id || nt->down[j])
            continue;
        raft_peer_restarted(nt->r[j], id);
        check_node(nt, j);
        net_ready(nt, j);
    }
}

static void net_free(struct net *nt)
{
    for (uint32_t id = 1; id <= nt->n; id++) {
        raft_free(nt->r[id]);
        store_free(&nt->st[id]);
    }
    for (size_t i = 0; i < nt->qn; i++)
        qmsg_free(&nt->q[i]);
    free(nt->q);
    free(nt->commit_term);
    free(nt->commit_hash);
    free(nt->digest_at);
    free(nt->leader_of);
    free(nt);
}

static void deliver(struct net *nt, struct qmsg *q)
{
    struct raft_msg *m = &q->m;
    uint32_t to = m->to;
    if (m->type == RAFT_MSG_SNAPSHOT) {
        struct store *s = &nt->st[to];
        s->snap_waiting = true;
        s->snap_wait_index = m->index;
        s->snap_wait_digest = q->digest;
    }
    if (m->type == RAFT_MSG_APPEND_RESP && m->reject)
        nt->rejects++;
    nt->delivered[m->type]++;
    int rc = raft_step(nt->r[to], m);
    REQUIRE(rc == RAFT_OK || (nt->fault_mode && rc == RAFT_ENOMEM),
            "node %u refused message type %d: %d", to, (int)m->type, rc);
    check_node(nt, to);
    net_ready(nt, to);
    if (m->type == RAFT_MSG_SNAPSHOT && !nt->down[m->from]) {
        raft_report_snapshot(nt->r[m->from], to, true);
        check_node(nt, m->from);
        net_ready(nt, m->from);
    }
}

/* Delivers queued messages (dropping, duplicating or reordering them as
 * configured) until none is left or MAX were handled. */
static size_t net_deliver(struct net *nt, size_t max)
{
    size_t handled = 0;
    while (nt->qn > 0 && handled < max) {
        size_t i = nt->shuffle ? (size_t)(net_rand(nt) % nt->qn) : 0;
        struct qmsg q = nt->q[i];
        memmove(&nt->q[i], &nt->q[i + 1], (nt->qn - i - 1) * sizeof q);
        nt->qn--;
        handled++;
        bool lost = nt->down[q.m.from] || nt->down[q.m.to] ||
                    nt->cut[q.m.from][q.m.to] || nt->drop_type[q.m.type] ||
                    (nt->drop && nt->drop(nt, &q.m)) ||
                    (nt->drop_pct && net_rand(nt) % 100 < nt->drop_pct);
        if (lost) {
            if (q.m.type == RAFT_MSG_SNAPSHOT && !nt->down[q.m.from]) {
                raft_report_snapshot(nt->r[q.m.from], q.m.to, false);
                check_node(nt, q.m.from);
                net_ready(nt, q.m.from);
            }
        } else {
            if (nt->dup_pct && net_rand(nt) % 100 < nt->dup_pct &&
                q.m.type != RAFT_MSG_SNAPSHOT)
                net_queue(nt, &q.m, q.digest);
            deliver(nt, &q);
        }
        qmsg_free(&q);
    }
    return handled;
}

static void net_tick(struct net *nt, uint32_t id)
{
    if (nt->down[id])
        return;
    raft_tick(nt->r[id]);
    check_node(nt, id);
    net_ready(nt, id);
}

/* K rounds of: every live node ticks, then the network settles. */
static void net_run(struct net *nt, int k)
{
    for (int i = 0; i < k; i++) {
        for (uint32_t id = 1; id <= nt->n; id++)
            net_tick(nt, id);
        net_deliver(nt, 100000);
    }
}

static void net_isolate(struct net *nt, uint32_t id)
{
    for (uint32_t j = 1; j <= nt->n; j++) {
        nt->cut[id][j] = j != id;
        nt->cut[j][id] = j != id;
    }
}

static void net_heal(struct net *nt)
{
    memset(nt->cut, 0, sizeof nt->cut);
}

static struct raft_status status_of(struct net *nt, uint32_t id)
{
    struct raft_status st;
    raft_get_status(nt->r[id], &st);
    return st;
}

/* The live leader of the highest term, or 0. */
static uint32_t net_leader(struct net *nt)
{
    uint32_t best = 0;
    uint64_t term = 0;
    for (uint32_t id = 1; id <= nt->n; id++) {
        if (nt->down[id])
            continue;
        struct raft_status st = status_of(nt, id);
        if (st.role == RAFT_LEADER && st.term >= term) {
            best = id;
            term = st.term;
        }
    }
    return best;
}

static void net_campaign(struct net *nt, uint32_t id)
{
    raft_campaign(nt->r[id]);
    check_node(nt, id);
    net_ready(nt, id);
    net_deliver(nt, 100000);
}

/* Elects ID and lets the no-op commit everywhere reachable. */
static void net_elect(struct net *nt, uint32_t id)
{
    net_campaign(nt, id);
    REQUIRE(status_of(nt, id).role == RAFT_LEADER, "node %u did not win", id);
}

static int net_propose(struct net *nt, uint32_t id, const char *text,
                       uint64_t *index)
{
    int rc = raft_propose(nt->r[id], text, strlen(text), index);
    check_node(nt, id);
    net_ready(nt, id);
    return rc;
}

static size_t queued(const struct net *nt, enum raft_msg_type t, uint32_t to)
{
    size_t n = 0;
    for (size_t i = 0; i < nt->qn; i++)
        n += nt->q[i].m.type == t && (to == 0 || nt->q[i].m.to == to);
    return n;
}

static void fixture_setup(void)
{
    t_alloc_reset();
}

/* ==== 5.1 Raft basics ================================================== */

/* "When servers start up, they begin as followers." */
START_TEST(servers_start_as_followers_without_a_leader)
{
    struct raft *r = mk_node(1, 3, &plain, NULL);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_int_eq(st.role, RAFT_FOLLOWER);
    ck_assert_uint_eq(st.leader, RAFT_NONE);
    ck_assert_uint_eq(st.term, 0);
    ck_assert_uint_eq(st.first_index, 1);
    ck_assert_uint_eq(st.last_index, 0);
    ck_assert_ptr_null(st.progress);
    raft_free(r);
}
END_TEST

/* "If a candidate or leader discovers that its term is out of date, it
 * immediately reverts to follower state." */
START_TEST(leader_reverts_to_follower_on_message_with_higher_term)
{
    struct raft *r = mk_node(1, 3, &plain, NULL);
    make_leader(r, 3);
    struct drained d;
    drain(r, &d);
    struct raft_status st;
    raft_get_status(r, &st);
    uint64_t term = st.term;
    struct raft_msg m = msg(RAFT_MSG_HEARTBEAT, 2, 1, term + 3);
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    raft_get_status(r, &st);
    ck_assert_int_eq(st.role, RAFT_FOLLOWER);
    ck_assert_uint_eq(st.term, term + 3);
    ck_assert_uint_eq(st.leader, 2);
    drain(r, &d);
    ck_assert(d.hs_changed);
    ck_assert_uint_eq(d.hs.term, term + 3);
    ck_assert_uint_eq(d.hs.vote, RAFT_NONE);
    raft_free(r);
}
END_TEST

/* "If one server's current term is smaller than the other's, then it
 * updates its current term to the larger value." */
START_TEST(follower_adopts_the_larger_term_it_sees)
{
    struct raft *r = mk_node(2, 3, &plain, NULL);
    struct raft_msg m = msg(RAFT_MSG_VOTE_RESP, 3, 2, 7);
    m.reject = true;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.term, 7);
    ck_assert_int_eq(st.role, RAFT_FOLLOWER);
    ck_assert_uint_eq(st.leader, RAFT_NONE);
    raft_free(r);
}
END_TEST

/* "If a server receives a request with a stale term number, it rejects the
 * request." The answer carries the current term so a stale leader learns. */
START_TEST(request_with_stale_term_is_rejected_and_answered_with_current_term)
{
    struct raft_entry ents[2];
    uint64_t terms[] = {1, 2};
    fill_log(ents, terms, 2);
    struct raft_init in = {.hs = {.term = 5}, .entries = ents, .n_entries = 2};
    struct raft *r = mk_node(2, 3, &plain, &in);
    struct drained d;
    drain(r, &d);

    struct raft_msg app = msg(RAFT_MSG_APPEND, 1, 2, 4);
    struct raft_entry e = {.index = 3, .term = 4};
    app.index = 2;
    app.log_term = 2;
    app.entries = &e;
    app.n_entries = 1;
    ck_assert_int_eq(step_to(r, app), RAFT_OK);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.last_index, 2); /* not appended */
    ck_assert_uint_eq(st.leader, RAFT_NONE);
    drain(r, &d);
    const struct seen *s = find_msg(&d, RAFT_MSG_APPEND_RESP, 1);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(s->term, 5);

    struct raft_msg vote = msg(RAFT_MSG_VOTE, 3, 2, 4);
    vote.index = 10;
    vote.log_term = 4;
    ck_assert_int_eq(step_to(r, vote), RAFT_OK);
    drain(r, &d);
    s = find_msg(&d, RAFT_MSG_VOTE_RESP, 3);
    ck_assert_ptr_nonnull(s);
    ck_assert(s->reject);
    ck_assert_uint_eq(s->term, 5);
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.term, 5);
    raft_free(r);
}
END_TEST

/* "If a candidate or leader discovers that its term is out of date, it
 * immediately reverts to follower state." End to end: a deposed leader
 * learns the term from the answer to its stale heartbeat. */
START_TEST(stale_leader_learns_the_new_term_from_a_follower_answer)
{
    struct net *nt = net_new(3, &plain, 1);
    net_elect(nt, 1);
    net_isolate(nt, 1);
    net_elect(nt, 2);
    ck_assert_int_eq(status_of(nt, 1).role, RAFT_LEADER);
    net_heal(nt);
    for (int i = 0; i < HEARTBEAT; i++)
        net_tick(nt, 1);
    net_deliver(nt, 1000);
    ck_assert_int_eq(status_of(nt, 1).role, RAFT_FOLLOWER);
    ck_assert_uint_eq(status_of(nt, 1).term, status_of(nt, 2).term);
    net_free(nt);
}
END_TEST

/* Project rule (docs/raft.md, STYLE.md): "No input may crash anything."
 * Messages for another node, from non-members or malformed are refused with
 * RAFT_EINVAL and change nothing. */
START_TEST(malformed_or_misaddressed_messages_are_refused)
{
    struct raft *r = mk_node(1, 3, &plain, NULL);
    struct raft_msg m = msg(RAFT_MSG_HEARTBEAT, 2, 4, 1); /* not for us */
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    m = msg(RAFT_MSG_HEARTBEAT, 9, 1, 1); /* not a member */
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    m = msg(RAFT_MSG_HEARTBEAT, 1, 1, 1); /* from self */
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    m = msg((enum raft_msg_type)77, 2, 1, 1);
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    m = msg(RAFT_MSG_APPEND, 2, 1, 1);
    m.n_entries = 3; /* no array */
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    struct raft_entry bad[2] = {{.index = 1, .term = 1},
                                {.index = 3, .term = 1}};
    m.entries = bad;
    m.n_entries = 2; /* not contiguous */
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    bad[1].index = 2;
    bad[1].term = 5; /* from the future */
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    bad[1].term = 1;
    bad[1].len = 4; /* data missing */
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    m = msg(RAFT_MSG_APPEND, 2, 1, 1);
    m.index = UINT64_MAX;
    m.entries = bad;
    m.n_entries = 1; /* index overflow */
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    m = msg(RAFT_MSG_SNAPSHOT, 2, 1, 1);
    m.index = 5; /* no term */
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    /* Entries of term 0 (terms start at 1) with a commit: once taken for
     * entries already stored, they moved the commit index past the log
     * (found by tests/fuzz/fuzz_raft.c). */
    struct raft_entry zero[2] = {{.index = 1, .term = 0},
                                 {.index = 2, .term = 0}};
    m = msg(RAFT_MSG_APPEND, 2, 1, 1);
    m.entries = zero;
    m.n_entries = 2;
    m.commit = 2;
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    /* Indices at the top of the space: loops up to the last index would
     * wrap (found by tests/fuzz/fuzz_records.c through a snapshot). */
    m = msg(RAFT_MSG_SNAPSHOT, 2, 1, 1);
    m.index = UINT64_MAX - 1;
    m.log_term = 1;
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    m.index = RAFT_MAX_INDEX;
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    struct raft_entry top = {.index = RAFT_MAX_INDEX, .term = 1};
    m = msg(RAFT_MSG_APPEND, 2, 1, 1);
    m.index = RAFT_MAX_INDEX - 1;
    m.log_term = 1;
    m.entries = &top;
    m.n_entries = 1;
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    /* A term at the top: the next election's term wrapped to 0 (found by
     * tests/fuzz/fuzz_raft.c). */
    m = msg(RAFT_MSG_HEARTBEAT, 2, 1, UINT64_MAX);
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    m.term = RAFT_MAX_TERM;
    ck_assert_int_eq(step_to(r, m), RAFT_EINVAL);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.term, 0);
    ck_assert_uint_eq(st.last_index, 0);
    ck_assert_int_eq(raft_step(NULL, &m), RAFT_EINVAL);
    ck_assert_int_eq(raft_step(r, NULL), RAFT_EINVAL);
    raft_free(r);
}
END_TEST

/* Figure 2: "Persistent state on all servers: (Updated on stable storage
 * before responding to RPCs)". A restart must come back from a state Raft
 * could have stored; anything else (and any bad configuration) is refused. */
START_TEST(bad_configurations_and_impossible_stored_states_are_refused)
{
    uint32_t peers[] = {1, 2, 3};
    struct raft_config c = mk_config(1, 3, &plain, 1);
    c.peers = peers;
    ck_assert_ptr_null(raft_new(NULL, NULL));
    struct raft_config b = c;
    b.id = 4; /* not among peers */
    ck_assert_ptr_null(raft_new(&b, NULL));
    b = c;
    b.election_ticks = b.heartbeat_ticks; /* no room for heartbeats */
    ck_assert_ptr_null(raft_new(&b, NULL));
    b = c;
    b.max_inflight = 0;
    ck_assert_ptr_null(raft_new(&b, NULL));
    uint32_t dup[] = {1, 2, 2};
    b = c;
    b.peers = dup;
    ck_assert_ptr_null(raft_new(&b, NULL));

    struct raft_entry ents[3];
    uint64_t terms[] = {1, 3, 2}; /* terms go back */
    fill_log(ents, terms, 3);
    struct raft_init in = {.hs = {.term = 3}, .entries = ents, .n_entries = 3};
    ck_assert_ptr_null(raft_new(&c, &in));
    terms[2] = 3;
    fill_log(ents, terms, 3);
    in.hs.commit = 4; /* commit beyond the log */
    ck_assert_ptr_null(raft_new(&c, &in));
    in.hs.commit = 3;
    in.hs.term = 2; /* term behind the log */
    ck_assert_ptr_null(raft_new(&c, &in));
    in.hs.term = 3;
    in.hs.vote = 9; /* vote for a stranger */
    ck_assert_ptr_null(raft_new(&c, &in));
    in.hs.vote = 2;
    struct raft_init top = {.hs = {.term = 1, .commit = RAFT_MAX_INDEX},
                            .snap_index = RAFT_MAX_INDEX,
                            .snap_term = 1,
                            .applied = RAFT_MAX_INDEX};
    ck_assert_ptr_null(raft_new(&c, &top)); /* at the top of the indices */
    struct raft_init high = {.hs = {.term = UINT64_MAX}};
    ck_assert_ptr_null(raft_new(&c, &high)); /* a term at the top */
    /* Just below it, a leader's no-op fills the log: no more proposals. */
    struct raft_config one = mk_config(1, 1, &plain, 9);
    top.hs.commit = top.snap_index = top.applied = RAFT_MAX_INDEX - 2;
    struct raft *full = raft_new(&one, &top);
    ck_assert_ptr_nonnull(full);
    raft_campaign(full);
    expect_ok(full);
    uint64_t idx = 0;
    ck_assert_int_eq(raft_propose(full, "x", 1, &idx), RAFT_EINVAL);
    ck_assert_uint_eq(raft_last_index(full), RAFT_MAX_INDEX - 1);
    raft_free(full);
    terms[0] = 0; /* an entry of term 0: terms start at 1 */
    fill_log(ents, terms, 3);
    ck_assert_ptr_null(raft_new(&c, &in));
    terms[0] = 1;
    fill_log(ents, terms, 3);
    struct raft *r = raft_new(&c, &in);
    ck_assert_ptr_nonnull(r);
    expect_ok(r);
    raft_free(r);
}
END_TEST

/* ==== 5.2 Leader election ============================================== */

/* "If a follower receives no communication over a period of time called the
 * election timeout, then it assumes there is no viable leader and begins an
 * election to choose a new leader. To begin an election, a follower
 * increments its current term and transitions to candidate state. It then
 * votes for itself and issues RequestVote RPCs in parallel to each of the
 * other servers in the cluster." */
START_TEST(follower_starts_election_after_election_timeout)
{
    struct raft *r = mk_node(1, 3, &plain, NULL);
    struct raft_status st;
    int ticks = 0;
    do {
        raft_tick(r);
        expect_ok(r);
        ticks++;
        raft_get_status(r, &st);
    } while (st.role == RAFT_FOLLOWER && ticks < 100);
    ck_assert_int_eq(st.role, RAFT_CANDIDATE);
    ck_assert_int_ge(ticks, ELECTION);
    ck_assert_int_lt(ticks, 2 * ELECTION);
    ck_assert_uint_eq(st.term, 1);
    struct drained d;
    drain(r, &d);
    ck_assert(d.hs_changed);
    ck_assert_uint_eq(d.hs.vote, 1);
    ck_assert_uint_eq(count_type(&d, RAFT_MSG_VOTE), 2);
    ck_assert_ptr_nonnull(find_msg(&d, RAFT_MSG_VOTE, 2));
    ck_assert_ptr_nonnull(find_msg(&d, RAFT_MSG_VOTE, 3));
    ck_assert_uint_eq(find_msg(&d, RAFT_MSG_VOTE, 2)->term, 1);
    raft_free(r);
}
END_TEST

/* "Raft uses randomized election timeouts to ensure that split votes are
 * rare ... election timeouts are chosen randomly from a fixed interval." */
START_TEST(election_timeouts_are_random_between_base_and_twice_base)
{
    bool seen[2 * ELECTION] = {false};
    for (uint64_t seed = 0; seed < 200; seed++) {
        struct raft_config c = mk_config(1, 3, &plain, seed);
        struct raft *r = raft_new(&c, NULL);
        ck_assert_ptr_nonnull(r);
        struct raft_status st;
        int ticks = 0;
        do {
            raft_tick(r);
            ticks++;
            raft_get_status(r, &st);
        } while (st.role == RAFT_FOLLOWER && ticks < 100);
        ck_assert_int_ge(ticks, ELECTION);
        ck_assert_int_lt(ticks, 2 * ELECTION);
        seen[ticks] = true;
        raft_free(r);
    }
    int distinct = 0;
    for (int i = 0; i < 2 * ELECTION; i++)
        distinct += seen[i];
    ck_assert_int_ge(distinct, ELECTION / 2);
}
END_TEST

/* "A candidate wins an election if it receives votes from a majority of the
 * servers in the full cluster for the same term." */
START_TEST(candidate_wins_election_with_majority_of_votes)
{
    struct raft *r = mk_node(1, 5, &plain, NULL);
    raft_campaign(r);
    struct raft_msg m = msg(RAFT_MSG_VOTE_RESP, 2, 1, 1);
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_int_eq(st.role, RAFT_CANDIDATE); /* 2 of 5 */
    m.from = 3;
    m.reject = true;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    raft_get_status(r, &st);
    ck_assert_int_eq(st.role, RAFT_CANDIDATE);
    m.from = 4;
    m.reject = false;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    raft_get_status(r, &st);
    ck_assert_int_eq(st.role, RAFT_LEADER); /* 3 of 5 */
    ck_assert_uint_eq(st.leader, 1);
    raft_free(r);
}
END_TEST

/* "A candidate continues in this state until one of three things happens:
 * (a) it wins the election, (b) another server establishes itself as
 * leader, or (c) a period of time goes by with no winner." A candidate that
 * a majority turned down cannot win; it waits for (c) as a follower. */
START_TEST(candidate_steps_down_when_a_majority_rejects)
{
    struct raft *r = mk_node(1, 3, &plain, NULL);
    raft_campaign(r);
    struct raft_msg m = msg(RAFT_MSG_VOTE_RESP, 2, 1, 1);
    m.reject = true;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    m.from = 3;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_int_eq(st.role, RAFT_FOLLOWER);
    ck_assert_uint_eq(st.term, 1);
    raft_free(r);
}
END_TEST

/* "Each server will vote for at most one candidate in a given term, on a
 * first-come-first-served basis." */
START_TEST(node_grants_at_most_one_vote_per_term)
{
    struct raft *r = mk_node(1, 3, &plain, NULL);
    struct raft_msg v = msg(RAFT_MSG_VOTE, 2, 1, 1);
    ck_assert_int_eq(step_to(r, v), RAFT_OK);
    v.from = 3;
    ck_assert_int_eq(step_to(r, v), RAFT_OK);
    v.from = 2; /* a retransmission is answered the same */
    ck_assert_int_eq(step_to(r, v), RAFT_OK);
    struct drained d;
    drain(r, &d);
    ck_assert_uint_eq(d.n_msgs, 3);
    ck_assert(!d.msgs[0].reject && d.msgs[0].to == 2);
    ck_assert(d.msgs[1].reject && d.msgs[1].to == 3);
    ck_assert(!d.msgs[2].reject && d.msgs[2].to == 2);
    ck_assert_uint_eq(d.hs.vote, 2);
    raft_free(r);
}
END_TEST

/* "If the leader's term (included in its RPC) is at least as large as the
 * candidate's current term, then the candidate recognizes the leader as
 * legitimate and returns to follower state." */
START_TEST(candidate_returns_to_follower_when_leader_of_its_term_appends)
{
    struct raft *r = mk_node(1, 3, &plain, NULL);
    raft_campaign(r);
    struct raft_msg m = msg(RAFT_MSG_APPEND, 2, 1, 1);
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_int_eq(st.role, RAFT_FOLLOWER);
    ck_assert_uint_eq(st.leader, 2);
    ck_assert_uint_eq(st.term, 1);
    struct drained d;
    drain(r, &d);
    ck_assert_uint_eq(d.hs.vote, 1); /* its own vote stands */
    ck_assert_ptr_nonnull(find_msg(&d, RAFT_MSG_APPEND_RESP, 2));
    raft_free(r);
}
END_TEST

/* "When this happens, each candidate will time out and start a new election
 * by incrementing its term and initiating another round of RequestVote
 * RPCs." */
START_TEST(split_vote_leads_to_a_new_election_in_a_higher_term)
{
    struct net *nt = net_new(3, &plain, 3);
    /* 1 and 2 campaign at once; 3 votes for 1; 2's vote is split off. */
    net_isolate(nt, 2);
    raft_campaign(nt->r[1]);
    net_ready(nt, 1);
    raft_campaign(nt->r[2]);
    net_ready(nt, 2);
    nt->cut[1][3] = nt->cut[3][1] = true; /* 3's vote is lost too */
    net_deliver(nt, 1000);
    ck_assert_int_eq(status_of(nt, 1).role, RAFT_CANDIDATE);
    ck_assert_int_eq(status_of(nt, 2).role, RAFT_CANDIDATE);
    net_heal(nt);
    net_run(nt, 3 * ELECTION);
    uint32_t l = net_leader(nt);
    ck_assert_uint_ne(l, 0);
    ck_assert_uint_ge(status_of(nt, l).term, 2);
    net_free(nt);
}
END_TEST

/* "Leaders send periodic heartbeats (AppendEntries RPCs that carry no log
 * entries) to all followers in order to maintain their authority." */
START_TEST(leader_sends_heartbeats_that_keep_followers_from_campaigning)
{
    struct net *nt = net_new(3, &plain, 4);
    net_elect(nt, 1);
    uint64_t term = status_of(nt, 1).term;
    size_t before = nt->delivered[RAFT_MSG_HEARTBEAT];
    net_run(nt, 10 * ELECTION);
    ck_assert_uint_eq(net_leader(nt), 1);
    ck_assert_uint_eq(status_of(nt, 2).term, term);
    ck_assert_uint_eq(status_of(nt, 3).term, term);
    ck_assert_uint_ge(nt->delivered[RAFT_MSG_HEARTBEAT] - before,
                      2 * (10 * ELECTION / HEARTBEAT) - 2);
    net_free(nt);
}
END_TEST

/* Raft 8: "Raft handles this by having each leader commit a blank no-op
 * entry into the log at the start of its term." */
START_TEST(new_leader_appends_a_noop_entry_of_its_term)
{
    struct net *nt = net_new(3, &plain, 5);
    net_elect(nt, 2);
    struct raft_status st = status_of(nt, 2);
    ck_assert_uint_eq(st.last_index, 1);
    ck_assert_uint_eq(raft_term_at(nt->r[2], 1), st.term);
    ck_assert_uint_eq(nt->st[2].log[1].type, RAFT_ENTRY_NOOP);
    for (uint32_t id = 1; id <= 3; id++)
        ck_assert_uint_eq(status_of(nt, id).commit, 1);
    net_free(nt);
}
END_TEST

/* "A candidate wins an election if it receives votes from a majority of the
 * servers in the full cluster for the same term." In a group of one, its own
 * vote is that majority (single-replica shards elect themselves at once). */
START_TEST(single_member_group_elects_itself_and_commits_alone)
{
    struct raft_config c = mk_config(1, 1, &plain, 9);
    struct raft *r = raft_new(&c, NULL);
    ck_assert_ptr_nonnull(r);
    raft_campaign(r);
    expect_ok(r);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_int_eq(st.role, RAFT_LEADER);
    uint64_t idx = 0;
    ck_assert_int_eq(raft_propose(r, "x", 1, &idx), RAFT_OK);
    ck_assert_uint_eq(idx, 2);
    struct drained d;
    drain(r, &d);
    ck_assert_uint_eq(d.n_entries, 2);
    ck_assert_uint_eq(d.last_committed, 2);
    ck_assert_uint_eq(d.n_msgs, 0);
    raft_free(r);
}
END_TEST

/* ==== 5.3 Log replication ============================================== */

/* "A log entry is committed once the leader that created the entry has
 * replicated it on a majority of the servers" and "When the entry has been
 * safely replicated (as described below), the leader applies the entry to its
 * state machine and returns the result of that execution to the client." */
START_TEST(leader_commits_an_entry_stored_on_a_majority)
{
    struct net *nt = net_new(3, &plain, 6);
    net_elect(nt, 1);
    net_isolate(nt, 3);
    uint64_t idx = 0;
    ck_assert_int_eq(net_propose(nt, 1, "hello", &idx), RAFT_OK);
    ck_assert_uint_eq(idx, 2);
    ck_assert_uint_eq(status_of(nt, 1).commit, 1);
    net_deliver(nt, 1000);
    ck_assert_uint_eq(status_of(nt, 1).commit, 2);
    ck_assert_uint_eq(nt->st[1].applied, 2);
    ck_assert_uint_eq(nt->st[2].applied, 2); /* told by the commit append */
    ck_assert_uint_eq(nt->st[3].applied, 1);
    ck_assert_uint_eq(nt->st[1].log[2].len, 5);
    ck_assert_mem_eq(nt->st[1].log[2].data, "hello", 5);
    net_heal(nt);
    net_run(nt, 2);
    ck_assert_uint_eq(nt->st[3].applied, 2);
    net_free(nt);
}
END_TEST

/* Not in the paper, which assumes a server keeps what it stored: a replica
 * that comes back with an empty disk would otherwise be trusted with a
 * match it no longer has, and the leader would ignore its rejections as
 * stale forever. Once the driver reports the restart (a new boot id), the
 * leader probes it afresh and catches it up. */
START_TEST(leader_reprobes_a_restarted_peer_that_lost_its_log)
{
    struct net *nt = net_new(3, &plain, 11);
    net_elect(nt, 1);
    for (int i = 0; i < 5; i++) {
        char text[16];
        uint64_t idx;
        snprintf(text, sizeof text, "v%d", i);
        ck_assert_int_eq(net_propose(nt, 1, text, &idx), RAFT_OK);
        net_deliver(nt, 1000);
    }
    uint64_t last = status_of(nt, 1).last_index;
    net_run(nt, 2);
    ck_assert_uint_eq(nt->st[3].applied, last);
    net_set_log(nt, 3, NULL, 0, 0, 0, 0); /* the disk was wiped */
    raft_peer_restarted(nt->r[1], 3);
    check_node(nt, 1);
    net_ready(nt, 1);
    net_run(nt, 10);
    ck_assert_uint_eq(nt->st[3].applied, last);
    ck_assert_uint_eq(status_of(nt, 3).last_index, last);
    net_free(nt);
}
END_TEST

/* "If the follower does not find an entry in its log with the same index
 * and term, then it refuses the new entries." */
START_TEST(follower_rejects_append_with_mismatched_prev_term)
{
    struct raft_entry ents[3];
    uint64_t terms[] = {1, 1, 2};
    fill_log(ents, terms, 3);
    struct raft_init in = {.hs = {.term = 3, .commit = 1},
                           .entries = ents,
                           .n_entries = 3,
                           .applied = 1};
    struct raft *r = mk_node(2, 3, &plain, &in);
    struct drained d;
    drain(r, &d);
    struct raft_entry e = {.index = 4, .term = 3};
    struct raft_msg m = msg(RAFT_MSG_APPEND, 1, 2, 3);
    m.index = 3;
    m.log_term = 3; /* we have term 2 there */
    m.entries = &e;
    m.n_entries = 1;
    m.commit = 3;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.last_index, 3);
    ck_assert_uint_eq(raft_term_at(r, 3), 2);
    ck_assert_uint_eq(st.commit, 1); /* nothing learnt from a refusal */
    drain(r, &d);
    const struct seen *s = find_msg(&d, RAFT_MSG_APPEND_RESP, 1);
    ck_assert_ptr_nonnull(s);
    ck_assert(s->reject);
    ck_assert_uint_eq(s->index, 3);
    ck_assert_uint_eq(d.n_entries, 0);
    raft_free(r);
}
END_TEST

/* "If an existing entry conflicts with a new one (same index but different
 * terms), delete the existing entry and all that follow it." The Ready tells
 * the driver which stored entries to delete (truncate_after). */
START_TEST(follower_deletes_conflicting_entry_and_all_that_follow)
{
    struct raft_entry ents[5];
    uint64_t terms[] = {1, 1, 2, 2, 2};
    fill_log(ents, terms, 5);
    struct raft_init in = {.hs = {.term = 2, .commit = 2},
                           .entries = ents,
                           .n_entries = 5,
                           .applied = 2};
    struct raft *r = mk_node(2, 3, &plain, &in);
    struct drained d;
    drain(r, &d);
    struct raft_entry e[2] = {{.index = 3, .term = 1}, {.index = 4, .term = 3}};
    struct raft_msg m = msg(RAFT_MSG_APPEND, 1, 2, 3);
    m.index = 2;
    m.log_term = 1;
    m.entries = e;
    m.n_entries = 2;
    m.commit = 3;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.last_index, 4);
    ck_assert_uint_eq(raft_term_at(r, 3), 1);
    ck_assert_uint_eq(raft_term_at(r, 4), 3);
    ck_assert_uint_eq(raft_term_at(r, 5), 0);
    ck_assert_uint_eq(st.commit, 3);
    drain(r, &d);
    ck_assert_uint_eq(d.n_entries, 2);
    ck_assert_uint_eq(d.last_entry, 4);
    ck_assert_uint_eq(d.truncate_after, 5); /* stored entry 5 must go */
    ck_assert_uint_eq(d.last_committed, 3);
    const struct seen *s = find_msg(&d, RAFT_MSG_APPEND_RESP, 1);
    ck_assert(!s->reject);
    ck_assert_uint_eq(s->index, 4);
    raft_free(r);
}
END_TEST

/* "If leaderCommit > commitIndex, set commitIndex = min(leaderCommit, index
 * of last new entry)" (Figure 2): entries beyond those the append vouched
 * for are not committed, even if the follower holds some. */
START_TEST(follower_commit_never_exceeds_the_last_new_entry)
{
    struct raft_entry ents[4];
    uint64_t terms[] = {1, 1, 1, 1};
    fill_log(ents, terms, 4);
    struct raft_init in = {.hs = {.term = 1}, .entries = ents, .n_entries = 4};
    struct raft *r = mk_node(2, 3, &plain, &in);
    struct raft_msg m = msg(RAFT_MSG_APPEND, 1, 2, 2);
    m.index = 2;
    m.log_term = 1;
    m.commit = 4;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.commit, 2);
    ck_assert_uint_eq(st.last_index, 4); /* matching entries are kept */
    raft_free(r);
}
END_TEST

/* "The leader keeps track of the highest index it knows to be committed, and
 * it includes that index in future AppendEntries RPCs (including heartbeats)
 * so that the other servers eventually find out." */
START_TEST(follower_learns_commit_index_from_heartbeats)
{
    struct net *nt = net_new(3, &plain, 7);
    net_elect(nt, 1);
    /* deliver the append to 2 and its ack, but lose the append that
     * carries the new commit index to the followers */
    nt->cut[1][3] = true;
    ck_assert_int_eq(net_propose(nt, 1, "a", NULL), RAFT_OK);
    net_deliver(nt, 1); /* append to 2 */
    net_deliver(nt, 1); /* ack from 2: commits at the leader */
    ck_assert_uint_eq(status_of(nt, 1).commit, 2);
    for (size_t i = 0; i < nt->qn; i++)
        qmsg_free(&nt->q[i]);
    nt->qn = 0; /* lose the commit notice */
    ck_assert_uint_eq(status_of(nt, 2).commit, 1);
    nt->cut[1][3] = false;
    for (int i = 0; i < HEARTBEAT; i++)
        net_tick(nt, 1);
    ck_assert_uint_eq(queued(nt, RAFT_MSG_HEARTBEAT, 0), 2);
    net_deliver(nt, 2); /* just the heartbeats */
    ck_assert_uint_eq(status_of(nt, 2).commit, 2);
    /* 3 lacks entry 2: its heartbeat carries min(commit, match) = 1 */
    ck_assert_uint_eq(status_of(nt, 3).commit, 1);
    net_deliver(nt, 1000);
    ck_assert_uint_eq(status_of(nt, 3).commit, 2);
    net_free(nt);
}
END_TEST

/* "If leaderCommit > commitIndex, set commitIndex = min(leaderCommit, index
 * of last new entry)": a heartbeat vouches for no entry, so its commit is
 * min(leader commit, follower match) and a follower whose log still diverges
 * never commits an entry it lacks. */
START_TEST(heartbeat_commit_never_exceeds_the_follower_match)
{
    struct raft *r = mk_node(1, 3, &plain, NULL);
    make_leader(r, 3);
    struct drained d;
    drain(r, &d);
    struct raft_msg ack = msg(RAFT_MSG_APPEND_RESP, 2, 1, 1);
    ack.index = 1;
    ck_assert_int_eq(step_to(r, ack), RAFT_OK);
    for (int i = 0; i < HEARTBEAT; i++)
        raft_tick(r);
    drain(r, &d);
    const struct seen *h2 = find_msg(&d, RAFT_MSG_HEARTBEAT, 2);
    const struct seen *h3 = find_msg(&d, RAFT_MSG_HEARTBEAT, 3);
    ck_assert_ptr_nonnull(h2);
    ck_assert_ptr_nonnull(h3);
    ck_assert_uint_eq(h2->commit, 1);
    ck_assert_uint_eq(h3->commit, 0);
    raft_free(r);
}
END_TEST

/* "If the client's first choice is not the leader, that server will reject
 * the client's request and supply information about the most recent leader
 * it has heard from." */
START_TEST(proposal_on_a_follower_fails_with_not_leader)
{
    struct net *nt = net_new(3, &plain, 8);
    net_elect(nt, 1);
    ck_assert_int_eq(net_propose(nt, 2, "x", NULL), RAFT_ENOTLEADER);
    ck_assert_uint_eq(status_of(nt, 2).leader, 1);
    ck_assert_int_eq(raft_propose(nt->r[1], NULL, 3, NULL), RAFT_EINVAL);
    net_free(nt);
}
END_TEST

/* "The leader handles inconsistencies by forcing the followers' logs to
 * duplicate its own." Figure 7's followers (a)-(f), missing and extra
 * entries, all converge on the leader's log. */
START_TEST(leader_forces_divergent_follower_logs_to_duplicate_its_own)
{
    static const uint64_t leader[] = {1, 1, 1, 4, 4, 5, 5, 6, 6, 6};
    static const uint64_t fa[] = {1, 1, 1, 4, 4, 5, 5, 6, 6};
    static const uint64_t fb[] = {1, 1, 1, 4};
    static const uint64_t fe[] = {1, 1, 1, 4, 4, 4, 4};
    static const uint64_t ff[] = {1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3};
    struct net *nt = net_new(5, &plain, 9);
    net_set_log(nt, 1, leader, 10, 8, 0, 0);
    net_set_log(nt, 2, fa, 9, 6, 0, 0);
    net_set_log(nt, 3, fb, 4, 4, 0, 0);
    net_set_log(nt, 4, fe, 7, 4, 0, 0);
    net_set_log(nt, 5, ff, 11, 3, 0, 0);
    net_elect(nt, 1);
    ck_assert_uint_eq(status_of(nt, 1).term, 9);
    net_run(nt, 3);
    struct raft_status ls = status_of(nt, 1);
    ck_assert_uint_eq(ls.last_index, 11); /* + the no-op */
    ck_assert_uint_eq(ls.commit, 11);
    for (uint32_t id = 2; id <= 5; id++) {
        struct raft_status st = status_of(nt, id);
        ck_assert_uint_eq(st.last_index, 11);
        for (uint64_t i = 1; i <= 11; i++)
            ck_assert_uint_eq(raft_term_at(nt->r[id], i),
                              raft_term_at(nt->r[1], i));
        ck_assert_uint_eq(nt->st[id].applied, 11);
    }
    net_free(nt);
}
END_TEST

/* "If a follower or candidate crashes after completing an RPC but before
 * responding, then it will receive the same RPC again after it restarts.
 * Raft RPCs are idempotent, so this causes no harm." Duplicated and
 * reordered appends leave the same logs. */
START_TEST(duplicated_and_reordered_appends_cause_no_harm)
{
    struct opts o = plain;
    o.max_msg_bytes = 1;
    struct net *nt = net_new(3, &o, 10);
    net_elect(nt, 1);
    nt->shuffle = true;
    nt->dup_pct = 30;
    for (int i = 0; i < 40; i++) {
        char buf[16];
        snprintf(buf, sizeof buf, "v%d", i);
        ck_assert_int_eq(net_propose(nt, 1, buf, NULL), RAFT_OK);
        net_deliver(nt, 3);
    }
    nt->dup_pct = 0;
    nt->shuffle = false;
    net_run(nt, 4);
    for (uint32_t id = 1; id <= 3; id++)
        ck_assert_uint_eq(nt->st[id].applied, 41);
    net_free(nt);
}
END_TEST

/* ==== 5.4 Safety ====================================================== */

/* "The voter denies its vote if its own log is more up-to-date than that of
 * the candidate. ... If the logs have last entries with different terms,
 * then the log with the later term is more up-to-date." */
START_TEST(voter_denies_vote_to_candidate_with_an_older_last_term)
{
    struct raft_entry ents[2];
    uint64_t terms[] = {1, 3};
    fill_log(ents, terms, 2);
    struct raft_init in = {.hs = {.term = 3}, .entries = ents, .n_entries = 2};
    struct raft *r = mk_node(1, 3, &plain, &in);
    struct raft_msg v = msg(RAFT_MSG_VOTE, 2, 1, 4);
    v.index = 9;
    v.log_term = 2; /* longer, but older */
    ck_assert_int_eq(step_to(r, v), RAFT_OK);
    struct drained d;
    drain(r, &d);
    ck_assert(find_msg(&d, RAFT_MSG_VOTE_RESP, 2)->reject);
    ck_assert_uint_eq(d.hs.term, 4);
    ck_assert_uint_eq(d.hs.vote, RAFT_NONE);
    raft_free(r);
}
END_TEST

/* "If the logs end with the same term, then whichever log is longer is more
 * up-to-date." */
START_TEST(voter_denies_vote_to_candidate_with_a_shorter_log_of_same_term)
{
    struct raft_entry ents[3];
    uint64_t terms[] = {1, 2, 2};
    fill_log(ents, terms, 3);
    struct raft_init in = {.hs = {.term = 2}, .entries = ents, .n_entries = 3};
    struct raft *r = mk_node(1, 3, &plain, &in);
    struct raft_msg v = msg(RAFT_MSG_VOTE, 2, 1, 3);
    v.index = 2;
    v.log_term = 2;
    ck_assert_int_eq(step_to(r, v), RAFT_OK);
    v.from = 3;
    v.index = 3; /* as long: granted */
    ck_assert_int_eq(step_to(r, v), RAFT_OK);
    struct drained d;
    drain(r, &d);
    ck_assert(find_msg(&d, RAFT_MSG_VOTE_RESP, 2)->reject);
    ck_assert(!find_msg(&d, RAFT_MSG_VOTE_RESP, 3)->reject);
    ck_assert_uint_eq(d.hs.vote, 3);
    raft_free(r);
}
END_TEST

/* 5.4.2: "Raft never commits log entries from previous terms by counting
 * replicas. Only log entries from the leader's current term are committed by
 * counting replicas; once an entry from the current term has been committed
 * in this way, then all prior entries are committed indirectly." */
START_TEST(leader_commits_only_entries_of_its_term_by_counting)
{
    struct raft_entry ents[2];
    uint64_t terms[] = {1, 2};
    fill_log(ents, terms, 2);
    struct raft_init in = {.hs = {.term = 3, .commit = 1},
                           .entries = ents,
                           .n_entries = 2,
                           .applied = 1};
    struct raft *r = mk_node(1, 5, &plain, &in);
    make_leader(r, 5); /* term 4, no-op at 3 */
    struct drained d;
    drain(r, &d);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.term, 4);
    ck_assert_uint_eq(st.last_index, 3);
    /* two followers hold entry 2 (term 2): a majority with the leader */
    for (uint32_t p = 2; p <= 3; p++) {
        struct raft_msg ack = msg(RAFT_MSG_APPEND_RESP, p, 1, 4);
        ack.index = 2;
        ck_assert_int_eq(step_to(r, ack), RAFT_OK);
    }
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.commit, 1);
    drain(r, &d);
    ck_assert_uint_eq(d.n_committed, 0);
    /* once the no-op of term 4 is on a majority, both commit */
    for (uint32_t p = 2; p <= 3; p++) {
        struct raft_msg ack = msg(RAFT_MSG_APPEND_RESP, p, 1, 4);
        ack.index = 3;
        ck_assert_int_eq(step_to(r, ack), RAFT_OK);
    }
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.commit, 3);
    drain(r, &d);
    ck_assert_uint_eq(d.n_committed, 2);
    raft_free(r);
}
END_TEST

/* Drops appends that would give their follower an entry of term 4 (the
 * figure 8 no-op); appends it would refuse still go through. */
static bool drop_term4_entries(struct net *nt, const struct raft_msg *m)
{
    if (m->type != RAFT_MSG_APPEND ||
        raft_term_at(nt->r[m->to], m->index) != m->log_term)
        return false;
    for (size_t i = 0; i < m->n_entries; i++)
        if (m->entries[i].term == 4)
            return true;
    return false;
}

/* 5.4.2: "Figure 8 illustrates a situation where an old log entry is stored
 * on a majority of servers, yet can still be overwritten by a future
 * leader." Replayed on the network: S1, leader
 * of term 4, copies its term-2 entry to S2 and S3 (a majority holds it, and
 * S1 knows) but the no-op of term 4 never spreads; S1 must not commit the
 * entry. S1 crashes; S5 (last term 3) wins and overwrites index 2 on every
 * server. Had S1 committed by counting, it would have applied an entry
 * that the others replace: the network's State Machine Safety check. */
START_TEST(figure_8_entry_stored_on_a_majority_is_overwritten_uncommitted)
{
    struct opts o = plain;
    o.max_msg_bytes = 1; /* one entry per append */
    struct net *nt = net_new(5, &o, 11);
    static const uint64_t t12[] = {1, 2}, t1[] = {1}, t13[] = {1, 3};
    /* (a), (b): S1 led term 2 and wrote entry 2; S5 led term 3 with the
     * votes of S3, S4 and wrote its own entry 2. */
    net_set_log(nt, 1, t12, 2, 3, 0, 1);
    net_set_log(nt, 2, t1, 1, 3, 5, 1);
    net_set_log(nt, 3, t1, 1, 3, 5, 1);
    net_set_log(nt, 4, t1, 1, 3, 5, 1);
    net_set_log(nt, 5, t13, 2, 3, 5, 1);
    /* (c) S5 is down, S4 unreachable; S1 is elected in term 4 by S2, S3
     * and replicates entry 2 of term 2 to both. */
    net_isolate(nt, 5);
    nt->cut[1][4] = nt->cut[4][1] = true;
    nt->drop = drop_term4_entries;
    net_elect(nt, 1);
    ck_assert_uint_eq(status_of(nt, 1).term, 4);
    net_run(nt, 2);
    for (uint32_t id = 2; id <= 3; id++) {
        ck_assert_uint_eq(raft_term_at(nt->r[id], 2), 2);
        ck_assert_uint_eq(status_of(nt, 1).progress[id - 1].match, 2);
    }
    ck_assert_uint_eq(status_of(nt, 1).commit, 1);
    ck_assert_uint_eq(nt->st[1].applied, 1);
    /* (d) S1 crashes; S5 returns and wins with S2, S3, S4 */
    nt->down[1] = true;
    nt->drop = NULL;
    net_heal(nt);
    net_campaign(nt, 5); /* term 4: S2, S3 voted for S1 in it */
    if (status_of(nt, 5).role != RAFT_LEADER)
        net_campaign(nt, 5);
    ck_assert_int_eq(status_of(nt, 5).role, RAFT_LEADER);
    net_run(nt, 2);
    for (uint32_t id = 2; id <= 5; id++) {
        ck_assert_uint_eq(raft_term_at(nt->r[id], 2), 3);
        ck_assert_uint_ge(nt->st[id].applied, 2);
    }
    ck_assert_uint_eq(nt->commit_term[2], 3);
    /* S1 comes back and its term-2 entry is replaced too */
    nt->down[1] = false;
    net_run(nt, 3);
    ck_assert_uint_eq(raft_term_at(nt->r[1], 2), 3);
    ck_assert_uint_eq(nt->st[1].applied, status_of(nt, 5).commit);
    net_free(nt);
}
END_TEST

/* Leader Completeness: "If a log entry is committed in a given term, then
 * that entry will be present in the logs of the leaders for all
 * higher-numbered terms" (checked by the network on every new leader). */
START_TEST(every_new_leader_holds_all_committed_entries)
{
    struct net *nt = net_new(5, &plain, 12);
    for (uint32_t round = 0; round < 10; round++) {
        uint32_t id = 1 + round % 5;
        net_elect(nt, id);
        for (int i = 0; i < 3; i++)
            ck_assert_int_eq(net_propose(nt, id, "e", NULL), RAFT_OK);
        nt->cut[id][1 + (round + 2) % 5] = true; /* one follower lags */
        net_deliver(nt, 100000);
        net_heal(nt);
    }
    ck_assert_uint_eq(status_of(nt, 5).commit, 40);
    ck_assert_uint_eq(nt->st[5].applied, 40);
    net_free(nt);
}
END_TEST

/* "Leader Append-Only: a leader never overwrites or deletes entries in its
 * log; it only appends new entries." */
START_TEST(leader_never_overwrites_its_own_entries)
{
    struct raft *r = mk_node(1, 3, &plain, NULL);
    make_leader(r, 3);
    ck_assert_int_eq(raft_propose(r, "a", 1, NULL), RAFT_OK);
    struct drained d;
    drain(r, &d);
    /* a confused peer's append of the same term is not obeyed */
    struct raft_entry e = {.index = 2, .term = 1};
    struct raft_msg m = msg(RAFT_MSG_APPEND, 2, 1, 1);
    m.index = 1;
    m.log_term = 1;
    m.entries = &e;
    m.n_entries = 1;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_int_eq(st.role, RAFT_LEADER);
    ck_assert_uint_eq(st.last_index, 2);
    drain(r, &d);
    ck_assert_uint_eq(d.n_entries, 0);
    ck_assert_uint_eq(d.truncate_after, 0);
    raft_free(r);
}
END_TEST

/* ==== 7 Log compaction =============================================== */

/* "Each server takes snapshots independently, covering just the committed
 * entries in its log." "Once a server completes writing a snapshot, it may
 * delete all log entries up through the last included index". The last
 * included index and term are preserved "to support the AppendEntries
 * consistency check for the first log entry following the snapshot". */
START_TEST(compaction_drops_entries_and_keeps_the_snapshot_point)
{
    struct net *nt = net_new(3, &plain, 13);
    net_elect(nt, 1);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(net_propose(nt, 1, "x", NULL), RAFT_OK);
    net_deliver(nt, 1000);
    struct raft *r = nt->r[1];
    ck_assert_uint_eq(status_of(nt, 1).applied, 6);
    ck_assert_int_eq(raft_compact(r, 4), RAFT_OK);
    expect_ok(r);
    struct raft_status st = status_of(nt, 1);
    ck_assert_uint_eq(st.first_index, 5);
    ck_assert_uint_eq(st.last_index, 6);
    ck_assert_uint_eq(raft_term_at(r, 4), st.term);
    ck_assert_uint_eq(raft_term_at(r, 3), 0);
    ck_assert_int_eq(raft_compact(r, 2), RAFT_OK);     /* already done */
    ck_assert_int_eq(raft_compact(r, 7), RAFT_EINVAL); /* beyond applied */
    ck_assert_uint_eq(status_of(nt, 1).first_index, 5);
    /* replication goes on from the compacted log */
    ck_assert_int_eq(net_propose(nt, 1, "y", NULL), RAFT_OK);
    net_deliver(nt, 1000);
    ck_assert_uint_eq(nt->st[2].applied, 7);
    net_free(nt);
}
END_TEST

/* "The leader must occasionally send snapshots to followers that lag
 * behind. This happens when the leader has already discarded the next log
 * entry that it needs to send to a follower." */
START_TEST(leader_sends_snapshot_to_follower_whose_entries_were_compacted)
{
    struct net *nt = net_new(3, &plain, 14);
    net_elect(nt, 1);
    net_isolate(nt, 3);
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(net_propose(nt, 1, "s", NULL), RAFT_OK);
    net_deliver(nt, 1000);
    ck_assert_int_eq(raft_compact(nt->r[1], 8), RAFT_OK);
    ck_assert_int_eq(raft_compact(nt->r[2], 8), RAFT_OK);
    net_heal(nt);
    net_run(nt, 3);
    ck_assert_uint_ge(nt->snap_requests, 1);
    ck_assert_uint_eq(nt->snaps_installed, 1);
    struct raft_status st = status_of(nt, 3);
    ck_assert_uint_eq(st.first_index, 12); /* the leader's applied state */
    ck_assert_uint_eq(st.commit, 11);
    ck_assert_uint_eq(nt->st[3].applied, 11);
    ck_assert_uint_eq(nt->st[3].digest, nt->st[1].digest);
    ck_assert_int_eq(net_propose(nt, 1, "after", NULL), RAFT_OK);
    net_deliver(nt, 1000);
    ck_assert_uint_eq(nt->st[3].applied, 12);
    net_free(nt);
}
END_TEST

/* "If instead the follower receives a snapshot that describes a prefix of
 * its log (due to retransmission or by mistake), then log entries covered by
 * the snapshot are deleted but entries following the snapshot are still
 * valid and must be retained." */
START_TEST(follower_installing_snapshot_keeps_matching_entries_after_it)
{
    struct raft_entry ents[5];
    uint64_t terms[] = {1, 1, 1, 1, 1};
    fill_log(ents, terms, 5);
    struct raft_init in = {.hs = {.term = 1, .commit = 1},
                           .entries = ents,
                           .n_entries = 5,
                           .applied = 1};
    struct raft *r = mk_node(2, 3, &plain, &in);
    struct drained d;
    drain(r, &d);
    struct raft_msg m = msg(RAFT_MSG_SNAPSHOT, 1, 2, 1);
    m.index = 3;
    m.log_term = 1;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.first_index, 4);
    ck_assert_uint_eq(st.last_index, 5);
    ck_assert_uint_eq(st.commit, 3);
    ck_assert_uint_eq(st.applied, 3);
    drain(r, &d);
    ck_assert(d.has_snapshot);
    ck_assert_uint_eq(d.snap_index, 3);
    ck_assert_uint_eq(d.snap_term, 1);
    ck_assert_uint_eq(d.n_entries, 0);
    ck_assert_uint_eq(d.truncate_after, 0);
    ck_assert_uint_eq(d.n_committed, 0);
    const struct seen *s = find_msg(&d, RAFT_MSG_APPEND_RESP, 1);
    ck_assert_uint_eq(s->index, 3);
    raft_free(r);
}
END_TEST

/* "Usually the snapshot will contain new information not already in the
 * recipient's log. In this case, the follower discards its entire log; it
 * is all superseded by the snapshot and may possibly have uncommitted entries
 * that conflict with the snapshot." */
START_TEST(follower_installing_snapshot_discards_a_conflicting_log)
{
    struct raft_entry ents[5];
    uint64_t terms[] = {1, 1, 1, 1, 1};
    fill_log(ents, terms, 5);
    struct raft_init in = {.hs = {.term = 1, .commit = 1},
                           .entries = ents,
                           .n_entries = 5,
                           .applied = 1};
    struct raft *r = mk_node(2, 3, &plain, &in);
    struct drained d;
    drain(r, &d);
    struct raft_msg m = msg(RAFT_MSG_SNAPSHOT, 1, 2, 2);
    m.index = 4;
    m.log_term = 2;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.first_index, 5);
    ck_assert_uint_eq(st.last_index, 4);
    ck_assert_uint_eq(raft_term_at(r, 4), 2);
    ck_assert_uint_eq(raft_term_at(r, 5), 0);
    drain(r, &d);
    ck_assert(d.has_snapshot);
    ck_assert_uint_eq(d.truncate_after, 5); /* stored entry 5 must go */
    raft_free(r);
}
END_TEST

/* Figure 13, InstallSnapshot: "If existing log entry has same index and term
 * as snapshot's last included entry, retain log entries following it and
 * reply". A snapshot at or below the commit index is no news: nothing
 * changes and the answer is the follower's commit index. */
START_TEST(follower_answers_stale_snapshot_with_its_commit_index)
{
    struct raft_entry ents[5];
    uint64_t terms[] = {1, 1, 1, 1, 1};
    fill_log(ents, terms, 5);
    struct raft_init in = {.hs = {.term = 1, .commit = 4},
                           .entries = ents,
                           .n_entries = 5,
                           .applied = 4};
    struct raft *r = mk_node(2, 3, &plain, &in);
    struct drained d;
    drain(r, &d);
    struct raft_msg m = msg(RAFT_MSG_SNAPSHOT, 1, 2, 1);
    m.index = 3;
    m.log_term = 1;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.first_index, 1);
    ck_assert_uint_eq(st.commit, 4);
    drain(r, &d);
    ck_assert(!d.has_snapshot);
    const struct seen *s = find_msg(&d, RAFT_MSG_APPEND_RESP, 1);
    ck_assert_ptr_nonnull(s);
    ck_assert(!s->reject);
    ck_assert_uint_eq(s->index, 4);
    raft_free(r);
}
END_TEST

/* "If a follower or candidate crashes, then future RequestVote and
 * AppendEntries RPCs sent to it will fail. Raft handles these failures by
 * retrying indefinitely". A snapshot the driver failed to stream is retried:
 * the report moves the follower back to probing, which asks again. */
START_TEST(leader_retries_a_snapshot_that_failed)
{
    struct net *nt = net_new(3, &plain, 15);
    net_elect(nt, 1);
    net_isolate(nt, 3);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(net_propose(nt, 1, "s", NULL), RAFT_OK);
    net_deliver(nt, 1000);
    ck_assert_int_eq(raft_compact(nt->r[1], 5), RAFT_OK);
    net_heal(nt);
    nt->hold_snapshots = true;
    net_run(nt, 2);
    ck_assert_uint_eq(nt->snap_requests, 1);
    struct raft_status st = status_of(nt, 1);
    ck_assert_int_eq(st.progress[2].state, PR_SNAPSHOT);
    net_run(nt, 2); /* no new request while one is streaming */
    ck_assert_uint_eq(nt->snap_requests, 1);
    raft_report_snapshot(nt->r[1], 3, false);
    expect_ok(nt->r[1]);
    st = status_of(nt, 1);
    ck_assert_int_eq(st.progress[2].state, PR_PROBE);
    nt->hold_snapshots = false;
    net_run(nt, 2);
    ck_assert_uint_eq(nt->snap_requests, 2);
    ck_assert_uint_eq(nt->snaps_installed, 1);
    ck_assert_uint_eq(nt->st[3].applied, 6);
    st = status_of(nt, 1);
    ck_assert_int_eq(st.progress[2].state, PR_REPLICATE);
    net_free(nt);
}
END_TEST

/* Figure 2: "Persistent state on all servers: (Updated on stable storage
 * before responding to RPCs)". A restarted replica comes back from what its
 * driver stored: hard state, snapshot point, entries after it, applied
 * index. */
START_TEST(restarted_node_recovers_from_its_stored_snapshot_and_log)
{
    struct net *nt = net_new(3, &plain, 16);
    net_elect(nt, 1);
    for (int i = 0; i < 6; i++)
        ck_assert_int_eq(net_propose(nt, 1, "r", NULL), RAFT_OK);
    net_deliver(nt, 1000);
    net_run(nt, 1);
    ck_assert_int_eq(raft_compact(nt->r[2], 4), RAFT_OK);
    nt->st[2].snap_index = 4; /* the driver records its compaction */
    nt->st[2].snap_term = raft_term_at(nt->r[2], 4);
    struct raft_status before = status_of(nt, 2);
    raft_free(nt->r[2]);
    nt->r[2] = NULL;
    net_start(nt, 2);
    struct raft_status after = status_of(nt, 2);
    ck_assert_uint_eq(after.term, before.term);
    ck_assert_uint_eq(after.commit, before.commit);
    ck_assert_uint_eq(after.applied, before.applied);
    ck_assert_uint_eq(after.first_index, 5);
    ck_assert_uint_eq(after.last_index, before.last_index);
    ck_assert_int_eq(net_propose(nt, 1, "more", NULL), RAFT_OK);
    net_deliver(nt, 1000);
    ck_assert_uint_eq(nt->st[2].applied, 8);
    net_free(nt);
}
END_TEST

/* ==== 8 Client interaction (ReadIndex) ================================ */

/* "Second, a leader must check whether it has been deposed before
 * processing a read-only request ... Raft handles this by having the leader
 * exchange heartbeat messages with a majority of the cluster before
 * responding to read-only requests." */
START_TEST(read_index_is_released_after_a_heartbeat_round_with_a_majority)
{
    struct net *nt = net_new(3, &plain, 17);
    net_elect(nt, 1);
    ck_assert_int_eq(raft_read_index(nt->r[1], 42), RAFT_OK);
    net_ready(nt, 1);
    ck_assert_uint_eq(nt->nreads, 0);
    ck_assert_uint_eq(queued(nt, RAFT_MSG_HEARTBEAT, 0), 2);
    net_deliver(nt, 2); /* heartbeats */
    net_deliver(nt, 1); /* one ack: leader + 1 = majority of 3 */
    ck_assert_uint_eq(nt->nreads, 1);
    ck_assert_uint_eq(nt->reads[0].node, 1);
    ck_assert_uint_eq(nt->reads[0].ctx, 42);
    ck_assert_uint_eq(nt->reads[0].index, 1);
    ck_assert_int_eq(raft_read_index(nt->r[2], 1), RAFT_ENOTLEADER);
    net_free(nt);
}
END_TEST

/* "First, a leader must have the latest information on which entries are
 * committed ... at the start of its term, it may not know which those are.
 * To find out, it needs to commit an entry from its term." */
START_TEST(read_index_waits_until_the_leader_commits_an_entry_of_its_term)
{
    struct net *nt = net_new(3, &plain, 18);
    raft_campaign(nt->r[1]);
    net_ready(nt, 1);
    net_deliver(nt, 2); /* the votes */
    net_deliver(nt, 1); /* one grant: leader */
    ck_assert_int_eq(status_of(nt, 1).role, RAFT_LEADER);
    ck_assert_uint_eq(status_of(nt, 1).commit, 0);
    ck_assert_int_eq(raft_read_index(nt->r[1], 7), RAFT_OK);
    net_ready(nt, 1);
    /* heartbeat rounds are acked, but the no-op is held back: no release */
    nt->drop_type[RAFT_MSG_APPEND] = true;
    for (int i = 0; i < 2 * HEARTBEAT; i++) {
        net_tick(nt, 1);
        net_deliver(nt, 1000);
    }
    ck_assert_uint_ge(nt->delivered[RAFT_MSG_HEARTBEAT_RESP], 2);
    ck_assert_uint_eq(status_of(nt, 1).commit, 0);
    ck_assert_uint_eq(nt->nreads, 0);
    nt->drop_type[RAFT_MSG_APPEND] = false;
    net_run(nt, 2);
    ck_assert_uint_eq(nt->nreads, 1);
    ck_assert_uint_eq(nt->reads[0].index, 1);
    net_free(nt);
}
END_TEST

/* "Second, a leader must check whether it has been deposed before processing
 * a read-only request (its information may be stale if a more recent leader
 * has been elected)." A leader cut off from the majority never serves one. */
START_TEST(partitioned_leader_never_releases_a_read)
{
    struct net *nt = net_new(5, &plain, 19);
    net_elect(nt, 1);
    nt->cut[1][3] = nt->cut[1][4] = nt->cut[1][5] = true;
    nt->cut[3][1] = nt->cut[4][1] = nt->cut[5][1] = true;
    ck_assert_int_eq(raft_read_index(nt->r[1], 1), RAFT_OK);
    for (int i = 0; i < 3 * ELECTION; i++) {
        net_tick(nt, 1);
        net_deliver(nt, 1000);
    }
    ck_assert_uint_eq(nt->nreads, 0);
    net_free(nt);
}
END_TEST

/* Thesis 6.4: "The leader saves its current commit index in a local variable
 * readIndex." Each read is released at the commit index of its request, in
 * order. */
START_TEST(reads_are_released_in_order_with_their_commit_index)
{
    struct net *nt = net_new(3, &plain, 20);
    net_elect(nt, 1);
    ck_assert_int_eq(raft_read_index(nt->r[1], 1), RAFT_OK);
    ck_assert_int_eq(net_propose(nt, 1, "w", NULL), RAFT_OK);
    net_deliver(nt, 1000);
    ck_assert_int_eq(raft_read_index(nt->r[1], 2), RAFT_OK);
    net_ready(nt, 1);
    net_deliver(nt, 1000);
    ck_assert_uint_eq(nt->nreads, 2);
    ck_assert_uint_eq(nt->reads[0].ctx, 1);
    ck_assert_uint_eq(nt->reads[0].index, 1);
    ck_assert_uint_eq(nt->reads[1].ctx, 2);
    ck_assert_uint_eq(nt->reads[1].index, 2);
    net_free(nt);
}
END_TEST

/* Thesis 6.4: the leader waits for acknowledgments "from a majority of the
 * cluster"; in a group of one, the leader alone is that majority. */
START_TEST(single_member_group_releases_a_read_at_once)
{
    struct raft_config c = mk_config(1, 1, &plain, 3);
    struct raft *r = raft_new(&c, NULL);
    raft_campaign(r);
    ck_assert_int_eq(raft_read_index(r, 99), RAFT_OK);
    struct drained d;
    drain(r, &d);
    ck_assert_uint_eq(d.n_reads, 1);
    ck_assert_uint_eq(d.reads[0].ctx, 99);
    ck_assert_uint_eq(d.reads[0].index, 1);
    raft_free(r);
}
END_TEST

/* ==== Leader lease (thesis 6.4.1) ===================================== */

/* Thesis 6.4.1: "the leader would use the normal heartbeat mechanism to
 * maintain a lease ... Once the leader's heartbeats were acknowledged by a
 * majority of the cluster, it would extend its lease". The lease names the
 * newest round a majority acknowledged, and the read point is the commit
 * index. */
START_TEST(lease_follows_the_heartbeat_rounds_a_majority_acknowledged)
{
    struct opts o = plain;
    o.check_quorum = true;
    struct net *nt = net_new(3, &o, 31);
    net_elect(nt, 1);
    uint64_t term = 0, round = 0, commit = 0;
    ck_assert(!raft_lease(nt->r[2], &term, &round, &commit));
    /* no round acknowledged yet in this term */
    ck_assert(!raft_lease(nt->r[1], &term, &round, &commit));
    for (int i = 0; i < HEARTBEAT; i++)
        net_tick(nt, 1);
    ck_assert(!raft_lease(nt->r[1], &term, &round, &commit));
    net_deliver(nt, 2); /* the heartbeats */
    net_deliver(nt, 1); /* one ack: leader + 1 = majority of 3 */
    ck_assert(raft_lease(nt->r[1], &term, &round, &commit));
    ck_assert_uint_eq(term, status_of(nt, 1).term);
    ck_assert_uint_eq(round, 1);
    ck_assert_uint_eq(commit, status_of(nt, 1).commit);
    /* a round that only a minority acknowledged does not extend it */
    net_isolate(nt, 2);
    net_isolate(nt, 3);
    for (int i = 0; i < HEARTBEAT; i++)
        net_tick(nt, 1);
    net_deliver(nt, 1000);
    ck_assert(raft_lease(nt->r[1], &term, &round, &commit));
    ck_assert_uint_eq(round, 1);
    net_free(nt);
}
END_TEST

/* Without check-quorum, followers do not withhold votes while they hear a
 * leader, so no lease holds; a new leader has none until an entry of its
 * term is committed (it does not know the commit point before). */
START_TEST(no_lease_without_check_quorum_or_before_a_commit_of_the_term)
{
    struct net *nt = net_new(3, &plain, 32);
    net_elect(nt, 1);
    net_run(nt, 2 * HEARTBEAT);
    uint64_t term, round, commit;
    ck_assert(!raft_lease(nt->r[1], &term, &round, &commit));
    net_free(nt);

    struct opts o = plain;
    o.check_quorum = true;
    nt = net_new(3, &o, 33);
    raft_campaign(nt->r[1]);
    net_ready(nt, 1);
    nt->drop_type[RAFT_MSG_APPEND] = true; /* the no-op never commits */
    net_deliver(nt, 1000);
    ck_assert_int_eq(status_of(nt, 1).role, RAFT_LEADER);
    for (int i = 0; i < 2 * HEARTBEAT; i++) {
        net_tick(nt, 1);
        net_deliver(nt, 1000);
    }
    ck_assert_uint_ge(nt->delivered[RAFT_MSG_HEARTBEAT_RESP], 2);
    ck_assert(!raft_lease(nt->r[1], &term, &round, &commit));
    net_free(nt);
}
END_TEST

/* A transfer target campaigns at once and voters let it through whatever
 * they heard (the request is marked as a transfer), so the old leader's
 * lease ends when it starts a transfer, for the rest of its term: even if
 * the transfer is abandoned, a late TimeoutNow may still elect the target. */
START_TEST(lease_ends_for_the_term_when_a_transfer_starts)
{
    struct opts o = plain;
    o.check_quorum = true;
    struct net *nt = net_new(3, &o, 34);
    net_elect(nt, 1);
    net_run(nt, 2 * HEARTBEAT);
    uint64_t term, round, commit;
    ck_assert(raft_lease(nt->r[1], &term, &round, &commit));
    nt->drop_type[RAFT_MSG_TIMEOUT_NOW] = true;
    ck_assert_int_eq(raft_transfer_leader(nt->r[1], 2), RAFT_OK);
    ck_assert(!raft_lease(nt->r[1], &term, &round, &commit));
    net_run(nt, 3 * ELECTION); /* the transfer is abandoned */
    ck_assert_int_eq(status_of(nt, 1).role, RAFT_LEADER);
    ck_assert(!raft_lease(nt->r[1], &term, &round, &commit));
    net_free(nt);
}
END_TEST

/* A replica that restarts has forgotten when it last heard its leader; with
 * boot_quiet it behaves as if it had just heard one and withholds votes
 * for an election timeout, so a lease the old leader holds (which counted
 * this replica's acknowledgement) cannot be cut short by its restart. */
START_TEST(restarted_replica_with_boot_quiet_withholds_votes_for_a_timeout)
{
    struct opts o = plain;
    o.check_quorum = true;
    o.boot_quiet = true;
    struct raft *r = mk_node(2, 3, &o, NULL);
    struct raft_msg v = msg(RAFT_MSG_VOTE, 3, 2, 5);
    int ticks = 0;
    for (;;) {
        ck_assert_int_eq(raft_step(r, &v), RAFT_OK);
        struct drained d;
        drain(r, &d);
        if (count_type(&d, RAFT_MSG_VOTE_RESP) == 1) {
            ck_assert(!find_msg(&d, RAFT_MSG_VOTE_RESP, 3)->reject);
            break;
        }
        ck_assert_uint_eq(count_type(&d, RAFT_MSG_VOTE_RESP), 0);
        raft_tick(r);
        ticks++;
        ck_assert_int_le(ticks, ELECTION);
    }
    ck_assert_int_eq(ticks, ELECTION);
    raft_free(r);

    o.boot_quiet = false; /* without it the vote is granted at once */
    r = mk_node(2, 3, &o, NULL);
    ck_assert_int_eq(raft_step(r, &v), RAFT_OK);
    struct drained d;
    drain(r, &d);
    ck_assert_uint_eq(count_type(&d, RAFT_MSG_VOTE_RESP), 1);
    raft_free(r);
}
END_TEST

/* ==== A rebuilt replica (kvnode --rebuild) ============================ */

/* Raft 5.2: "Each server will vote for at most one candidate in a given
 * term, on a first-come-first-served basis." A replica whose data directory
 * was rebuilt has forgotten the votes it cast (and the entries it
 * acknowledged), so until it hears a current leader - one whose heartbeat
 * says every other member acknowledged a round sent since the rebuild - it
 * votes for nobody, answers no pre-vote and acknowledges nothing a stale
 * leader could count. Then its vote in that term is the leader; it follows
 * it, and votes again in a later term once its log holds the commit index
 * of the first append it took. */
START_TEST(rebuilt_replica_grants_no_vote_until_it_hears_a_current_leader)
{
    struct raft_init in = {.no_vote_until_leader = true};
    struct raft *r = mk_node(2, 3, &plain, &in);
    ck_assert(raft_awaits_leader(r));
    struct drained d;
    struct raft_msg v = msg(RAFT_MSG_VOTE, 3, 2, 5);
    ck_assert_int_eq(step_to(r, v), RAFT_OK);
    drain(r, &d);
    ck_assert(find_msg(&d, RAFT_MSG_VOTE_RESP, 3)->reject);
    ck_assert_uint_eq(d.hs.term, 5); /* the term is learnt, no vote given */
    ck_assert_uint_eq(d.hs.vote, RAFT_NONE);
    struct raft_msg pv = msg(RAFT_MSG_PREVOTE, 3, 2, 6);
    ck_assert_int_eq(step_to(r, pv), RAFT_OK);
    drain(r, &d);
    ck_assert(find_msg(&d, RAFT_MSG_PREVOTE_RESP, 3)->reject);

    /* An append, a snapshot and heartbeats whose rounds not every other
     * member acknowledged since: the leader may be stale; nothing is taken
     * and nothing answered. */
    struct raft_entry ents[2] = {{.term = 5, .index = 1},
                                 {.term = 5, .index = 2}};
    struct raft_msg ap = msg(RAFT_MSG_APPEND, 1, 2, 5);
    ap.entries = ents;
    ap.n_entries = 2;
    ap.commit = 2;
    ck_assert_int_eq(step_to(r, ap), RAFT_OK);
    struct raft_msg sn = msg(RAFT_MSG_SNAPSHOT, 1, 2, 5);
    sn.index = 9;
    sn.log_term = 4;
    ck_assert_int_eq(step_to(r, sn), RAFT_OK);
    struct raft_msg hb = msg(RAFT_MSG_HEARTBEAT, 1, 2, 5);
    hb.context = 7; /* the first round heard */
    hb.index = 6;
    ck_assert_int_eq(step_to(r, hb), RAFT_OK);
    hb.context = 8;
    hb.index = 6;
    ck_assert_int_eq(step_to(r, hb), RAFT_OK);
    ck_assert(raft_awaits_leader(r));
    drain(r, &d);
    ck_assert_uint_eq(d.n_msgs, 0);
    ck_assert_uint_eq(d.n_entries, 0);
    ck_assert(!d.has_snapshot);
    ck_assert_uint_eq(d.hs.vote, RAFT_NONE);
    ck_assert_int_eq(step_to(r, v), RAFT_OK);
    drain(r, &d);
    ck_assert(find_msg(&d, RAFT_MSG_VOTE_RESP, 3)->reject);

    /* Every other member acknowledged round 7: the vote in term 5 is 1,
     * and the heartbeat is answered. */
    hb.context = 9;
    hb.index = 7;
    ck_assert_int_eq(step_to(r, hb), RAFT_OK);
    drain(r, &d);
    ck_assert(d.hs_changed);
    ck_assert_uint_eq(d.hs.term, 5);
    ck_assert_uint_eq(d.hs.vote, 1);
    ck_assert_ptr_nonnull(find_msg(&d, RAFT_MSG_HEARTBEAT_RESP, 1));
    ck_assert_int_eq(step_to(r, v), RAFT_OK); /* 3 again, term 5: no */
    drain(r, &d);
    ck_assert(find_msg(&d, RAFT_MSG_VOTE_RESP, 3)->reject);

    /* Not yet caught up: no vote in a new term either. */
    ck_assert(raft_awaits_leader(r));
    struct raft_msg v6 = msg(RAFT_MSG_VOTE, 3, 2, 6);
    v6.index = 2;
    v6.log_term = 5;
    ck_assert_int_eq(step_to(r, v6), RAFT_OK);
    drain(r, &d);
    ck_assert(find_msg(&d, RAFT_MSG_VOTE_RESP, 3)->reject);
    raft_free(r);

    /* The same, caught up by the leader's first append: it votes again. */
    r = mk_node(2, 3, &plain, &in);
    hb.context = 1;
    hb.index = 0;
    ck_assert_int_eq(step_to(r, hb), RAFT_OK);
    hb.context = 2;
    hb.index = 1;
    ck_assert_int_eq(step_to(r, hb), RAFT_OK);
    ck_assert(raft_awaits_leader(r));
    ck_assert_int_eq(step_to(r, ap), RAFT_OK);
    ck_assert(!raft_awaits_leader(r));
    drain(r, &d);
    ck_assert_uint_eq(d.n_entries, 2);
    ck_assert_ptr_nonnull(find_msg(&d, RAFT_MSG_APPEND_RESP, 1));
    ck_assert_int_eq(step_to(r, v6), RAFT_OK);
    drain(r, &d);
    ck_assert(!find_msg(&d, RAFT_MSG_VOTE_RESP, 3)->reject);
    ck_assert_uint_eq(d.hs.vote, 3);
    raft_free(r);

    /* A new term starts the count again: rounds are per leader term. */
    r = mk_node(2, 3, &plain, &in);
    hb = msg(RAFT_MSG_HEARTBEAT, 1, 2, 5);
    hb.context = 3;
    ck_assert_int_eq(step_to(r, hb), RAFT_OK);
    hb = msg(RAFT_MSG_HEARTBEAT, 3, 2, 6);
    hb.context = 2; /* the first round heard in term 6 */
    hb.index = 1;
    ck_assert_int_eq(step_to(r, hb), RAFT_OK);
    drain(r, &d);
    ck_assert_uint_eq(d.hs.vote, RAFT_NONE);
    hb.context = 4;
    hb.index = 2;
    ck_assert_int_eq(step_to(r, hb), RAFT_OK);
    drain(r, &d);
    ck_assert_uint_eq(d.hs.term, 6);
    ck_assert_uint_eq(d.hs.vote, 3);
    raft_free(r);
}
END_TEST

/* A leader's heartbeats name the latest earlier round every member but
 * the recipient acknowledged; a heartbeat naming a round not yet sent is
 * refused. */
START_TEST(heartbeats_name_the_round_every_other_member_acknowledged)
{
    struct raft *r = mk_node(1, 3, &plain, NULL);
    make_leader(r, 3);
    struct drained d;
    drain(r, &d);
    for (uint64_t round = 1; round <= 3; round++) {
        for (int i = 0; i < HEARTBEAT; i++)
            raft_tick(r);
        drain(r, &d);
        const struct seen *h2 = find_msg(&d, RAFT_MSG_HEARTBEAT, 2);
        const struct seen *h3 = find_msg(&d, RAFT_MSG_HEARTBEAT, 3);
        ck_assert_ptr_nonnull(h2);
        ck_assert_ptr_nonnull(h3);
        ck_assert_uint_eq(h2->context, round);
        /* 2 acknowledges every round, 3 only the first */
        ck_assert_uint_eq(h2->index, round > 1 ? 1 : 0);
        ck_assert_uint_eq(h3->index, round - 1);
        struct raft_msg a = msg(RAFT_MSG_HEARTBEAT_RESP, 2, 1, h2->term);
        a.context = h2->context;
        ck_assert_int_eq(step_to(r, a), RAFT_OK);
        if (round == 1) {
            a = msg(RAFT_MSG_HEARTBEAT_RESP, 3, 1, h3->term);
            a.context = h3->context;
            ck_assert_int_eq(step_to(r, a), RAFT_OK);
        }
    }
    raft_free(r);

    r = mk_node(2, 3, &plain, NULL);
    struct raft_msg hb = msg(RAFT_MSG_HEARTBEAT, 1, 2, 1);
    hb.context = 3;
    hb.index = 3; /* acknowledged before it was sent */
    ck_assert_int_eq(raft_step(r, &hb), RAFT_EINVAL);
    raft_free(r);
}
END_TEST

/* Raft 5.2: "If a follower receives no communication over a period of time
 * called the election timeout, then it assumes there is no viable leader
 * and begins an election" - except a rebuilt replica, whose campaign would
 * need its own vote in a term it may have voted in already. */
START_TEST(rebuilt_replica_never_campaigns_while_waiting_for_a_leader)
{
    struct opts o = plain;
    o.pre_vote = true;
    struct raft_init in = {.hs = {.term = 4}, .no_vote_until_leader = true};
    struct raft *r = mk_node(2, 3, &o, &in);
    struct drained d;
    for (int i = 0; i < 10 * ELECTION; i++) {
        raft_tick(r);
        expect_ok(r);
        drain(r, &d);
        ck_assert_uint_eq(d.n_msgs, 0);
    }
    raft_campaign(r);
    expect_ok(r);
    struct raft_msg tn = msg(RAFT_MSG_TIMEOUT_NOW, 1, 2, 4);
    ck_assert_int_eq(step_to(r, tn), RAFT_OK);
    drain(r, &d);
    ck_assert_uint_eq(d.n_msgs, 0);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_int_eq(st.role, RAFT_FOLLOWER);
    ck_assert_uint_eq(st.term, 4);
    ck_assert(raft_awaits_leader(r));
    raft_free(r);
}
END_TEST

/* Raft 5.2 again, on a network: node 3 votes for 2 in term 2, is wiped and
 * rebuilt, and hears only node 1, the stale leader of term 1, which then
 * campaigns in term 2 too. Had node 3 taken 1 for a current leader and
 * voted again, 1 and 2 would both lead term 2 (the network's Election
 * Safety check would fail). It does not; once the partition heals it hears
 * 2, and the group goes on with every replica caught up. */
START_TEST(rebuilt_voter_never_elects_a_second_leader_in_a_term)
{
    struct net *nt = net_new(3, &plain, 31);
    net_elect(nt, 1);
    ck_assert_uint_eq(status_of(nt, 1).term, 1);
    net_isolate(nt, 1);
    net_elect(nt, 2);
    ck_assert_uint_eq(status_of(nt, 2).term, 2);
    ck_assert_uint_eq(nt->st[3].hs.vote, 2);
    ck_assert_int_eq(net_propose(nt, 2, "only on 2 and 3", NULL), RAFT_OK);
    net_deliver(nt, 1000);

    /* 3 is rebuilt and hears only 1, still leading term 1: 2 never
     * acknowledges 1's rounds, so 3 keeps waiting and takes nothing. */
    net_rebuild(nt, 3);
    ck_assert(raft_awaits_leader(nt->r[3]));
    net_heal(nt);
    nt->cut[2][3] = nt->cut[3][2] = true;
    nt->cut[1][2] = nt->cut[2][1] = true;
    for (int i = 0; i < 5 * ELECTION; i++) {
        net_tick(nt, 1);
        net_tick(nt, 3);
        net_deliver(nt, 100000);
    }
    ck_assert_int_eq(status_of(nt, 1).role, RAFT_LEADER);
    ck_assert_uint_eq(status_of(nt, 3).last_index, 0);

    /* 1 restarts (a follower of term 1) and campaigns for term 2: 3 must
     * not vote for it, however long it tries (were it to, the network's
     * check would stop the test: two leaders in term 2). */
    raft_free(nt->r[1]);
    nt->r[1] = NULL;
    net_start(nt, 1);
    net_campaign(nt, 1);
    ck_assert_int_eq(status_of(nt, 1).role, RAFT_CANDIDATE);
    ck_assert_uint_eq(status_of(nt, 1).term, 2);
    for (int i = 0; i < 5 * ELECTION; i++) {
        net_tick(nt, 1);
        net_tick(nt, 3);
        net_deliver(nt, 100000);
    }
    ck_assert_int_ne(status_of(nt, 1).role, RAFT_LEADER);
    ck_assert_int_ne(status_of(nt, 3).role, RAFT_LEADER);
    ck_assert(raft_awaits_leader(nt->r[3]));
    ck_assert_uint_eq(nt->st[3].hs.vote, RAFT_NONE);

    /* Healed: 2, whose log holds what only 2 and the lost disk had, is
     * elected (1 votes for it), every member acknowledges its rounds, and
     * 3 votes again and catches up. */
    net_heal(nt);
    net_run(nt, 20 * ELECTION);
    uint32_t l = net_leader(nt);
    ck_assert_uint_ne(l, 0);
    ck_assert(!raft_awaits_leader(nt->r[3]));
    ck_assert(!nt->st[3].no_vote);
    ck_assert_int_eq(net_propose(nt, l, "after", NULL), RAFT_OK);
    net_run(nt, 5);
    ck_assert_uint_eq(nt->st[3].applied, nt->st[l].applied);
    net_free(nt);
}
END_TEST

/* The rule outlives a crash before any leader was heard: the driver keeps
 * it in storage and hands it back at the restart. */
START_TEST(rebuilt_replica_that_restarts_before_hearing_a_leader_still_waits)
{
    struct net *nt = net_new(3, &plain, 32);
    net_elect(nt, 1);
    net_isolate(nt, 1);
    net_rebuild(nt, 3);
    net_tick(nt, 3);
    net_deliver(nt, 1000);
    raft_free(nt->r[3]); /* a crash: restart from what is stored */
    nt->r[3] = NULL;
    ck_assert(nt->st[3].no_vote);
    net_start(nt, 3);
    ck_assert(raft_awaits_leader(nt->r[3]));
    net_campaign(nt, 2); /* 2 needs 3's vote: 1 is cut off */
    ck_assert_int_ne(status_of(nt, 2).role, RAFT_LEADER);
    net_heal(nt);
    net_run(nt, 20 * ELECTION);
    ck_assert_uint_ne(net_leader(nt), 0);
    ck_assert(!nt->st[3].no_vote);
    net_free(nt);
}
END_TEST

/* ==== Pre-vote (thesis 9.6) ========================================== */

/* "In the Pre-Vote algorithm, a candidate only increments its term if it
 * first learns from a majority of the cluster that they would be willing to
 * grant the candidate their votes (if the candidate's log is sufficiently
 * up-to-date, and the voters have not received heartbeats from a valid
 * leader for at least a baseline election timeout)." */
START_TEST(isolated_precandidate_never_increments_its_term)
{
    struct opts o = plain;
    o.pre_vote = true;
    struct net *nt = net_new(3, &o, 21);
    net_elect(nt, 1);
    uint64_t term = status_of(nt, 1).term;
    net_isolate(nt, 3);
    ck_assert_int_eq(net_propose(nt, 1, "moves on", NULL), RAFT_OK);
    net_run(nt, 10 * ELECTION);
    ck_assert_int_eq(status_of(nt, 3).role, RAFT_PRECANDIDATE);
    ck_assert_uint_eq(status_of(nt, 3).term, term);
    net_heal(nt);
    net_run(nt, 2 * ELECTION);
    ck_assert_uint_eq(net_leader(nt), 1); /* not disrupted */
    ck_assert_uint_eq(status_of(nt, 1).term, term);
    ck_assert_int_eq(status_of(nt, 3).role, RAFT_FOLLOWER);
    net_free(nt);
}
END_TEST

/* Thesis 9.6: a candidate asks whether the others "would be willing to grant
 * the candidate their votes": voters answer as they would answer the vote,
 * but record nothing (no term change, no vote). */
START_TEST(voters_grant_a_prevote_without_changing_their_state)
{
    struct opts o = plain;
    o.pre_vote = true;
    struct raft_init in = {.hs = {.term = 3, .vote = 1}};
    struct raft *r = mk_node(2, 3, &o, &in);
    struct drained d;
    drain(r, &d);
    struct raft_msg pv = msg(RAFT_MSG_PREVOTE, 3, 2, 4);
    ck_assert_int_eq(step_to(r, pv), RAFT_OK);
    struct raft_status st;
    raft_get_status(r, &st);
    ck_assert_uint_eq(st.term, 3);
    drain(r, &d);
    ck_assert(!d.hs_changed);
    const struct seen *s = find_msg(&d, RAFT_MSG_PREVOTE_RESP, 3);
    ck_assert_ptr_nonnull(s);
    ck_assert(!s->reject);
    ck_assert_uint_eq(s->term, 4);
    raft_free(r);
}
END_TEST

/* Thesis 9.6: votes are granted in a pre-vote only "if the candidate's log
 * is sufficiently up-to-date". */
START_TEST(prevote_is_denied_to_a_candidate_with_a_stale_log)
{
    struct opts o = plain;
    o.pre_vote = true;
    struct raft_entry ents[2];
    uint64_t terms[] = {1, 2};
    fill_log(ents, terms, 2);
    struct raft_init in = {.hs = {.term = 2}, .entries = ents, .n_entries = 2};
    struct raft *r = mk_node(2, 3, &o, &in);
    struct raft_msg pv = msg(RAFT_MSG_PREVOTE, 3, 2, 3);
    pv.index = 5;
    pv.log_term = 1;
    ck_assert_int_eq(step_to(r, pv), RAFT_OK);
    struct drained d;
    drain(r, &d);
    const struct seen *s = find_msg(&d, RAFT_MSG_PREVOTE_RESP, 3);
    ck_assert(s->reject);
    ck_assert_uint_eq(s->term, 2);
    raft_free(r);
}
END_TEST

/* Thesis 9.6: "a candidate only increments its term if it first learns from
 * a majority of the cluster that they would be willing to grant the
 * candidate their votes": with that majority it runs the real election. */
START_TEST(precandidate_with_a_majority_runs_a_real_election)
{
    struct opts o = plain;
    o.pre_vote = true;
    struct net *nt = net_new(3, &o, 22);
    raft_campaign(nt->r[2]);
    ck_assert_int_eq(status_of(nt, 2).role, RAFT_PRECANDIDATE);
    ck_assert_uint_eq(status_of(nt, 2).term, 0);
    net_ready(nt, 2);
    net_deliver(nt, 100000);
    ck_assert_int_eq(status_of(nt, 2).role, RAFT_LEADER);
    ck_assert_uint_eq(status_of(nt, 2).term, 1);
    ck_assert_uint_ge(nt->delivered[RAFT_MSG_PREVOTE], 2);
    net_free(nt);
}
END_TEST

/* ==== Check-quorum (thesis 6.2, 4.2.3) ================================ */

/* Thesis 6.2: "a leader steps down if an election timeout elapses without a
 * successful round of heartbeats to a majority of its cluster." */
START_TEST(leader_steps_down_without_quorum)
{
    struct opts o = plain;
    o.check_quorum = true;
    struct net *nt = net_new(3, &o, 23);
    net_elect(nt, 1);
    net_run(nt, 3 * ELECTION);
    ck_assert_int_eq(status_of(nt, 1).role, RAFT_LEADER);
    net_isolate(nt, 1);
    for (int i = 0; i < 2 * ELECTION; i++)
        net_tick(nt, 1);
    ck_assert_int_eq(status_of(nt, 1).role, RAFT_FOLLOWER);
    ck_assert_uint_eq(status_of(nt, 1).leader, RAFT_NONE);
    net_free(nt);
}
END_TEST

/* Thesis 4.2.3: "if a server receives a RequestVote request within the
 * minimum election timeout of hearing from a current leader, it does not
 * update its term or grant its vote." */
START_TEST(follower_that_hears_a_leader_ignores_vote_requests)
{
    struct opts o = plain;
    o.check_quorum = true;
    struct net *nt = net_new(3, &o, 24);
    net_elect(nt, 1);
    uint64_t term = status_of(nt, 1).term;
    uint64_t last = status_of(nt, 3).last_index;
    struct raft_msg v = msg(RAFT_MSG_VOTE, 3, 2, term + 1);
    v.index = last;
    v.log_term = term;
    ck_assert_int_eq(raft_step(nt->r[2], &v), RAFT_OK);
    check_node(nt, 2);
    ck_assert_uint_eq(status_of(nt, 2).term, term);
    ck_assert_uint_eq(status_of(nt, 2).leader, 1);
    net_ready(nt, 2);
    ck_assert_uint_eq(queued(nt, RAFT_MSG_VOTE_RESP, 3), 0);
    /* the same request marked as a leadership transfer gets through */
    v.context = 1;
    ck_assert_int_eq(raft_step(nt->r[2], &v), RAFT_OK);
    check_node(nt, 2);
    ck_assert_uint_eq(status_of(nt, 2).term, term + 1);
    net_ready(nt, 2);
    ck_assert_uint_eq(queued(nt, RAFT_MSG_VOTE_RESP, 3), 1);
    net_free(nt);
}
END_TEST

/* Thesis 4.2.3: the vote is withheld only "within the minimum election
 * timeout of hearing from a current leader": once the leader is silent for
 * longer, followers vote again and a new leader is elected. */
START_TEST(follower_votes_again_once_the_leader_has_been_silent)
{
    struct opts o = plain;
    o.check_quorum = true;
    struct net *nt = net_new(3, &o, 25);
    net_elect(nt, 1);
    net_isolate(nt, 1);
    for (int i = 0; i < 2 * ELECTION; i++)
        net_tick(nt, 2); /* 2 campaigns at some point */
    ck_assert_int_ne(status_of(nt, 2).role, RAFT_FOLLOWER);
    net_deliver(nt, 1000);
    for (int i = 0; i < 3 * ELECTION && net_leader(nt) == 1; i++) {
        net_tick(nt, 2);
        net_tick(nt, 3);
        net_deliver(nt, 1000);
    }
    uint32_t l = net_leader(nt);
    ck_assert(l == 2 || l == 3);
    net_free(nt);
}
END_TEST

/* ==== Leadership transfer (thesis 3.10) ================================ */

/* "The prior leader sends a TimeoutNow request to the target server. This
 * request has the same effect as the target server's election timer firing:
 * the target server starts a new election (incrementing its term and
 * becoming a candidate)." */
START_TEST(transfer_to_an_up_to_date_follower_makes_it_leader)
{
    struct opts o = plain;
    o.pre_vote = true;
    o.check_quorum = true; /* the lease must not block the transfer */
    struct net *nt = net_new(3, &o, 26);
    net_elect(nt, 1);
    uint64_t term = status_of(nt, 1).term;
    ck_assert_int_eq(raft_transfer_leader(nt->r[1], 2), RAFT_OK);
    check_node(nt, 1);
    net_ready(nt, 1);
    ck_assert_uint_eq(queued(nt, RAFT_MSG_TIMEOUT_NOW, 2), 1);
    net_deliver(nt, 100000);
    ck_assert_uint_eq(net_leader(nt), 2);
    ck_assert_uint_eq(status_of(nt, 2).term, term + 1);
    ck_assert_int_eq(status_of(nt, 1).role, RAFT_FOLLOWER);
    ck_assert_uint_eq(nt->delivered[RAFT_MSG_PREVOTE], 2); /* only the
                                                  first election's */
    ck_assert_int_eq(raft_transfer_leader(nt->r[1], 3), RAFT_ENOTLEADER);
    ck_assert_int_eq(raft_transfer_leader(nt->r[2], 2), RAFT_EINVAL);
    ck_assert_int_eq(raft_transfer_leader(nt->r[2], 9), RAFT_EINVAL);
    net_free(nt);
}
END_TEST

/* Thesis 3.10: "The prior leader fully updates the target server's log to
 * match its own log, using the normal log replication mechanism". Only then
 * does it send TimeoutNow. */
START_TEST(transfer_to_a_lagging_follower_catches_it_up_first)
{
    struct net *nt = net_new(3, &plain, 27);
    net_elect(nt, 1);
    net_isolate(nt, 3);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(net_propose(nt, 1, "t", NULL), RAFT_OK);
    net_deliver(nt, 1000);
    net_heal(nt);
    ck_assert_int_eq(raft_transfer_leader(nt->r[1], 3), RAFT_OK);
    check_node(nt, 1);
    net_ready(nt, 1);
    ck_assert_uint_eq(queued(nt, RAFT_MSG_TIMEOUT_NOW, 3), 0);
    ck_assert_uint_ge(queued(nt, RAFT_MSG_APPEND, 3), 1);
    net_deliver(nt, 100000);
    ck_assert_uint_eq(nt->delivered[RAFT_MSG_TIMEOUT_NOW], 1);
    ck_assert_uint_eq(net_leader(nt), 3);
    ck_assert_uint_eq(nt->st[3].applied, status_of(nt, 3).commit);
    net_free(nt);
}
END_TEST

/* Thesis 3.10: "The prior leader stops accepting new client requests." and
 * "If the transfer does not complete within an election timeout, the
 * prior leader aborts the transfer and resumes accepting client
 * requests." */
START_TEST(proposals_fail_with_busy_until_the_transfer_is_abandoned)
{
    struct net *nt = net_new(3, &plain, 28);
    net_elect(nt, 1);
    net_isolate(nt, 3);
    ck_assert_int_eq(raft_transfer_leader(nt->r[1], 3), RAFT_OK);
    ck_assert_int_eq(net_propose(nt, 1, "x", NULL), RAFT_EBUSY);
    ck_assert_int_eq(raft_read_index(nt->r[1], 5), RAFT_OK); /* reads go on */
    for (int i = 0; i < ELECTION - 1; i++) {
        net_tick(nt, 1);
        net_deliver(nt, 1000);
    }
    ck_assert_int_eq(net_propose(nt, 1, "x", NULL), RAFT_EBUSY);
    net_tick(nt, 1);
    ck_assert_int_eq(net_propose(nt, 1, "x", NULL), RAFT_OK);
    ck_assert_uint_eq(net_leader(nt), 1);
    net_free(nt);
}
END_TEST

/* ==== Fast log backtracking (5.3 optimization) =========================== */

/* "when rejecting an AppendEntries request, the follower can include the term
 * of the conflicting entry and the first index it stores for that term." */
START_TEST(rejecting_follower_hints_the_first_index_of_its_conflicting_term)
{
    struct raft_entry ents[6];
    uint64_t terms[] = {1, 1, 2, 2, 2, 2};
    fill_log(ents, terms, 6);
    struct raft_init in = {.hs = {.term = 3, .commit = 1},
                           .entries = ents,
                           .n_entries = 6,
                           .applied = 1};
    struct raft *r = mk_node(2, 3, &plain, &in);
    struct raft_msg m = msg(RAFT_MSG_APPEND, 1, 2, 3);
    m.index = 5;
    m.log_term = 3;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct drained d;
    drain(r, &d);
    const struct seen *s = find_msg(&d, RAFT_MSG_APPEND_RESP, 1);
    ck_assert(s->reject);
    ck_assert_uint_eq(s->index, 5);
    ck_assert_uint_eq(s->reject_hint, 3);
    ck_assert_uint_eq(s->log_term, 2);
    raft_free(r);
}
END_TEST

START_TEST(rejecting_follower_hints_its_last_index_when_its_log_is_short)
{
    struct raft_entry ents[3];
    uint64_t terms[] = {1, 1, 1};
    fill_log(ents, terms, 3);
    struct raft_init in = {.hs = {.term = 2}, .entries = ents, .n_entries = 3};
    struct raft *r = mk_node(2, 3, &plain, &in);
    struct raft_msg m = msg(RAFT_MSG_APPEND, 1, 2, 2);
    m.index = 40;
    m.log_term = 2;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct drained d;
    drain(r, &d);
    const struct seen *s = find_msg(&d, RAFT_MSG_APPEND_RESP, 1);
    ck_assert(s->reject);
    ck_assert_uint_eq(s->reject_hint, 3);
    ck_assert_uint_eq(s->log_term, 1);
    raft_free(r);
}
END_TEST

/* "With this information, the leader can decrement nextIndex to bypass all
 * of the conflicting entries in that term; one AppendEntries RPC will be
 * required for each term with conflicting entries, rather than one RPC per
 * entry." */
START_TEST(leader_bypasses_a_whole_conflicting_term_per_rejection)
{
    enum { K = 60 };
    uint64_t lead[K], foll[K + 20];
    for (size_t i = 0; i < K; i++)
        lead[i] = i < 5 ? 1 : 3;
    for (size_t i = 0; i < K + 20; i++)
        foll[i] = i < 5 ? 1 : 2;
    struct net *nt = net_new(3, &plain, 29);
    net_set_log(nt, 1, lead, K, 3, 0, 5);
    net_set_log(nt, 2, foll, K + 20, 2, 0, 5);
    net_set_log(nt, 3, lead, 5, 3, 0, 5);
    net_elect(nt, 1);
    net_run(nt, 2);
    ck_assert_uint_eq(status_of(nt, 2).last_index, K + 1);
    ck_assert_uint_eq(raft_term_at(nt->r[2], 6), 3);
    ck_assert_uint_le(nt->rejects, 4);
    net_free(nt);
}
END_TEST

/* ==== Flow control ===================================================== */

/* Flow control is not in the paper (etcd's design, docs/raft.md): a follower
 * in replicate state has at most max_inflight appends in flight; more
 * proposals wait for acks, and then all of them are delivered. */
START_TEST(replicating_follower_has_at_most_max_inflight_appends)
{
    struct opts o = plain;
    o.max_inflight = 4;
    struct net *nt = net_new(3, &o, 30);
    net_elect(nt, 1);
    ck_assert_int_eq(status_of(nt, 1).progress[1].state, PR_REPLICATE);
    nt->cut[1][3] = true;
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(net_propose(nt, 1, "p", NULL), RAFT_OK);
    ck_assert_uint_eq(queued(nt, RAFT_MSG_APPEND, 2), 4);
    net_deliver(nt, 100000);
    ck_assert_uint_eq(status_of(nt, 2).last_index, 11);
    ck_assert_uint_eq(nt->st[2].applied, 11);
    net_free(nt);
}
END_TEST

/* Flow control (etcd's design, not in the paper): a follower in probe state
 * gets one append at a time until it answers. */
START_TEST(probing_follower_gets_one_append_until_it_answers)
{
    struct net *nt = net_new(3, &plain, 31);
    net_isolate(nt, 3);
    net_elect(nt, 1);
    ck_assert_int_eq(status_of(nt, 1).progress[2].state, PR_PROBE);
    net_heal(nt);
    nt->cut[3][1] = true; /* 3 hears but cannot answer */
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(net_propose(nt, 1, "p", NULL), RAFT_OK);
    ck_assert_uint_eq(queued(nt, RAFT_MSG_APPEND, 3), 0);
    for (int i = 0; i < HEARTBEAT; i++)
        net_tick(nt, 1);
    ck_assert_uint_eq(queued(nt, RAFT_MSG_APPEND, 3), 0);
    net_heal(nt);
    net_deliver(nt, 100000);
    ck_assert_uint_eq(nt->st[3].applied, 6);
    net_free(nt);
}
END_TEST

/* Flow control (etcd's design, not in the paper): catching up is batched, up
 * to max_msg_bytes of entries per append (the first entry always goes). */
START_TEST(catch_up_appends_are_batched_up_to_max_msg_bytes)
{
    struct opts o = plain;
    o.max_msg_bytes = 300; /* two entries of 99 bytes + 32 of encoding */
    struct net *nt = net_new(3, &o, 32);
    net_elect(nt, 1);
    net_isolate(nt, 3);
    char big[100];
    memset(big, 'b', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(net_propose(nt, 1, big, NULL), RAFT_OK);
    net_deliver(nt, 100000);
    net_heal(nt);
    nt->cut[3][1] = true;
    for (int i = 0; i < HEARTBEAT; i++)
        net_tick(nt, 1);
    net_deliver(nt, 1000); /* heartbeat reaches 3, answer lost */
    nt->cut[3][1] = false;
    for (int i = 0; i < HEARTBEAT; i++)
        net_tick(nt, 1);
    net_deliver(nt, 2);
    /* 3's heartbeat ack makes the leader probe, then batch */
    size_t msgs = 0, most = 0;
    while (nt->qn > 0) {
        if (nt->q[0].m.type == RAFT_MSG_APPEND && nt->q[0].m.to == 3) {
            msgs++;
            if (nt->q[0].m.n_entries > most)
                most = nt->q[0].m.n_entries;
        }
        net_deliver(nt, 1);
    }
    ck_assert_uint_eq(most, 2);
    ck_assert_uint_ge(msgs, 5);
    ck_assert_uint_eq(nt->st[3].applied, 11);
    net_free(nt);
}
END_TEST

/* "If followers crash or run slowly, or if network packets are lost, the
 * leader retries AppendEntries RPCs indefinitely (even after it has responded
 * to the client) until all followers eventually store all log entries." */
START_TEST(lost_appends_are_resent_after_a_heartbeat)
{
    struct net *nt = net_new(3, &plain, 33);
    net_elect(nt, 1);
    nt->cut[1][3] = true;
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(net_propose(nt, 1, "l", NULL), RAFT_OK);
    net_deliver(nt, 1000);
    nt->cut[1][3] = false;
    ck_assert_uint_eq(nt->st[3].applied, 1);
    net_run(nt, 2 * HEARTBEAT);
    ck_assert_uint_eq(nt->st[3].applied, 4);
    net_free(nt);
}
END_TEST

/* ==== The Ready protocol ============================================== */

/* The Ready protocol is this project's driver contract (raft.h, not the
 * paper): each item is handed out once; after advance nothing is left. */
START_TEST(ready_hands_out_each_item_once)
{
    struct raft *r = mk_node(1, 3, &plain, NULL);
    struct raft_ready rd;
    ck_assert(!raft_ready(r, &rd));
    raft_campaign(r);
    ck_assert(raft_ready(r, &rd));
    ck_assert(rd.hs_changed);
    ck_assert(rd.soft_changed);
    ck_assert_int_eq(rd.role, RAFT_CANDIDATE);
    ck_assert_uint_eq(rd.n_msgs, 2);
    ck_assert(!raft_ready(r, &(struct raft_ready){0})); /* one at a time */
    raft_advance(r, &rd);
    ck_assert(!raft_ready(r, &rd));
    raft_advance(r, &rd); /* harmless */
    expect_ok(r);
    raft_free(r);
}
END_TEST

/* Driver contract (raft.h): messages produced while a Ready is outstanding
 * come in the next one, and what was handed out stays valid until advance
 * even if the log that held it is truncated meanwhile (ASan checks the
 * memory in the sanitizer run). */
START_TEST(handed_out_entries_stay_valid_until_advance)
{
    struct raft_entry ents[3];
    uint64_t terms[] = {1, 1, 1};
    fill_log(ents, terms, 3);
    struct raft_init in = {.hs = {.term = 1}, .entries = ents, .n_entries = 3};
    struct raft *r = mk_node(2, 3, &plain, &in);
    struct drained d;
    drain(r, &d);
    char payload[3][8] = {"first", "second", "third"};
    struct raft_entry e[3];
    for (int i = 0; i < 3; i++) {
        e[i] = (struct raft_entry){.index = 4 + (uint64_t)i,
                                   .term = 1,
                                   .data = payload[i],
                                   .len = strlen(payload[i])};
    }
    struct raft_msg m = msg(RAFT_MSG_APPEND, 1, 2, 1);
    m.index = 3;
    m.log_term = 1;
    m.entries = e;
    m.n_entries = 3;
    m.commit = 4;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    struct raft_ready rd;
    ck_assert(raft_ready(r, &rd));
    ck_assert_uint_eq(rd.n_entries, 3);
    ck_assert_uint_eq(rd.n_committed, 4);
    /* a new leader truncates entries 5, 6 while the Ready is out */
    struct raft_entry e2 = {.index = 5, .term = 2, .data = "x", .len = 1};
    struct raft_msg m2 = msg(RAFT_MSG_APPEND, 3, 2, 2);
    m2.index = 4;
    m2.log_term = 1;
    m2.entries = &e2;
    m2.n_entries = 1;
    m2.commit = 4;
    ck_assert_int_eq(step_to(r, m2), RAFT_OK);
    for (int i = 0; i < 3; i++)
        ck_assert_mem_eq(rd.entries[i].data, payload[i], strlen(payload[i]));
    ck_assert_mem_eq(rd.committed[3].data, "first", 5);
    ck_assert_uint_eq(rd.n_msgs, 1); /* the answer to the first append */
    raft_advance(r, &rd);
    expect_ok(r);
    ck_assert(raft_ready(r, &rd));
    ck_assert_uint_eq(rd.n_msgs, 1); /* the answer to the second */
    ck_assert_uint_eq(rd.msgs[0].to, 3);
    ck_assert_uint_eq(rd.n_entries, 1);
    ck_assert_uint_eq(rd.entries[0].index, 5);
    ck_assert_uint_eq(rd.truncate_after, 6);
    raft_advance(r, &rd);
    expect_ok(r);
    raft_free(r);
}
END_TEST

/* Driver contract (raft.h): committed entries and the stored commit index
 * never run ahead of the stored log, even when the Ready could not take all
 * entries at once (here: its copy cannot be allocated). */
START_TEST(committed_entries_never_run_ahead_of_the_stored_log)
{
    struct raft *r = mk_node(2, 3, &plain, NULL);
    struct raft_entry e[8];
    for (int i = 0; i < 8; i++)
        e[i] = (struct raft_entry){.index = 1 + (uint64_t)i, .term = 1};
    struct raft_msg m = msg(RAFT_MSG_APPEND, 1, 2, 1);
    m.entries = e;
    m.n_entries = 8;
    m.commit = 8;
    ck_assert_int_eq(step_to(r, m), RAFT_OK);
    /* fail the allocation of the Ready's entry copies */
    t_alloc_fail_at = t_alloc_count;
    struct raft_ready rd;
    ck_assert(raft_ready(r, &rd));
    t_alloc_fail_at = -1;
    ck_assert_uint_eq(rd.n_entries, 0);
    ck_assert_uint_eq(rd.n_committed, 0);
    ck_assert_uint_le(rd.hs.commit, 0);
    raft_advance(r, &rd);
    expect_ok(r);
    ck_assert(raft_ready(r, &rd));
    ck_assert_uint_eq(rd.n_entries, 8);
    ck_assert_uint_eq(rd.n_committed, 8);
    ck_assert_uint_eq(rd.hs.commit, 8);
    raft_advance(r, &rd);
    raft_free(r);
}
END_TEST

/* ==== Invariants and faults ============================================ */

/* raft_check_invariants is not vacuous: breaking each rule on purpose (term
 * going back, a second vote in a term, commit beyond the log, log terms
 * going back) is reported. */
START_TEST(invariant_check_sees_broken_rules)
{
    char why[128];
    struct raft *r = mk_node(1, 3, &plain, NULL);
    make_leader(r, 3);
    ck_assert_int_eq(raft_propose(r, "a", 1, NULL), RAFT_OK);
    begin_input(r);
    r->term--;
    ck_assert_int_eq(raft_check_invariants(r, why, sizeof why), -1);
    ck_assert_ptr_nonnull(strstr(why, "term"));
    r->term++;
    r->vote = 2;
    ck_assert_int_eq(raft_check_invariants(r, why, sizeof why), -1);
    ck_assert_ptr_nonnull(strstr(why, "vote"));
    r->vote = 1;
    r->commit = 9;
    ck_assert_int_eq(raft_check_invariants(r, why, sizeof why), -1);
    ck_assert_ptr_nonnull(strstr(why, "commit"));
    r->commit = 0;
    entry_at(r, 2)->term = 0;
    ck_assert_int_eq(raft_check_invariants(r, why, sizeof why), -1);
    ck_assert_ptr_nonnull(strstr(why, "decreases"));
    entry_at(r, 2)->term = 1;
    ck_assert_int_eq(raft_check_invariants(r, why, sizeof why), 0);
    raft_free(r);
}
END_TEST

/* Project rule: "every allocation failure returns RAFT_ENOMEM without
 * corrupting state". Each allocation of raft_new fails in turn: NULL, and no
 * leak (LeakSanitizer, in the sanitizer run). */
START_TEST(raft_new_fails_cleanly_when_any_allocation_fails)
{
    struct raft_entry ents[3];
    uint64_t terms[] = {1, 1, 2};
    fill_log(ents, terms, 3);
    char d[3] = "abc";
    for (int i = 0; i < 3; i++) {
        ents[i].data = &d[i];
        ents[i].len = 1;
    }
    struct raft_init in = {.hs = {.term = 2, .commit = 2},
                           .entries = ents,
                           .n_entries = 3,
                           .applied = 1};
    struct raft_config c = mk_config(1, 5, &plain, 1);
    bool succeeded = false;
    for (long n = 0; n < 100 && !succeeded; n++) {
        t_alloc_reset();
        t_alloc_fail_at = n;
        struct raft *r = raft_new(&c, &in);
        if (t_alloc_failed == 0) {
            ck_assert_ptr_nonnull(r);
            succeeded = true;
        } else {
            ck_assert_ptr_null(r);
        }
        raft_free(r);
    }
    ck_assert(succeeded);
}
END_TEST

/* "every allocation failure returns RAFT_ENOMEM without corrupting state":
 * the Nth allocation of a busy workload fails (loop index = N); invariants
 * hold throughout, and once memory is back the group converges. */
START_TEST(any_failed_allocation_leaves_a_consistent_state)
{
    struct opts o = plain;
    o.max_msg_bytes = 64;
    struct net *nt = net_new(3, &o, 100 + (uint64_t)_i);
    nt->fault_mode = true;
    t_alloc_fail_at = t_alloc_count + _i;
    t_alloc_fail_rest = (_i % 3) == 0; /* sometimes memory stays gone */
    long stop = t_alloc_count + _i + 40;
    net_campaign(nt, 1);
    for (int round = 0; round < 30; round++) {
        uint32_t l = net_leader(nt);
        if (l) {
            int rc = net_propose(nt, l, "payload-of-a-proposal", NULL);
            ck_assert(rc == RAFT_OK || rc == RAFT_ENOMEM);
            rc = raft_read_index(nt->r[l], (uint64_t)round);
            ck_assert(rc == RAFT_OK || rc == RAFT_ENOMEM);
            if (round == 10)
                (void)raft_compact(nt->r[l], status_of(nt, l).applied);
        }
        net_run(nt, 1);
        if (t_alloc_count > stop)
            t_alloc_fail_at = -1; /* memory comes back */
    }
    t_alloc_fail_at = -1;
    nt->fault_mode = false;
    net_run(nt, 4 * ELECTION);
    uint32_t l = net_leader(nt);
    ck_assert_uint_ne(l, 0);
    uint64_t idx = 0;
    ck_assert_int_eq(net_propose(nt, l, "final", &idx), RAFT_OK);
    net_run(nt, 4);
    for (uint32_t id = 1; id <= 3; id++)
        ck_assert_uint_ge(nt->st[id].applied, idx);
    net_free(nt);
}
END_TEST

/* ==== Randomized: Election Safety and State Machine Safety ============ */

/* Election Safety: "at most one leader can be elected in a given term."
 * State Machine Safety: "if a server has applied a log entry at a given
 * index to its state machine, no other server will ever apply a different
 * log entry for the same index." Messages are dropped, duplicated and
 * reordered, links are cut, nodes crash and restart from their store, logs
 * are compacted (so snapshots stream), reads are asked; the network checks
 * both properties (and Leader Completeness) after every input. The loop
 * index is the seed. */
START_TEST(random_faults_keep_election_and_state_machine_safety)
{
    uint64_t seed = (uint64_t)_i;
    const char *env = getenv("KV_SIM_SEED");
    if (env) {
        if (_i != 0)
            return; /* replay one seed once */
        seed = strtoull(env, NULL, 10);
    }
    struct opts o = plain;
    uint64_t s = seed * 0x2545f4914f6cdd1dull + 7;
    o.pre_vote = rng_next(&s) % 2;
    o.check_quorum = rng_next(&s) % 2;
    o.max_inflight = 1 + rng_next(&s) % 8;
    o.max_msg_bytes = 16 + rng_next(&s) % 64;
    size_t n = rng_next(&s) % 2 ? 5 : 3;
    struct net *nt = net_new(n, &o, seed);
    nt->shuffle = true;
    nt->drop_pct = (unsigned)(rng_next(&s) % 20);
    nt->dup_pct = (unsigned)(rng_next(&s) % 10);
    int proposals = 0, restarts = 0;
    for (int step = 0; step < 1000; step++) {
        uint64_t dice = net_rand(nt) % 1000;
        uint32_t id = 1 + (uint32_t)(net_rand(nt) % n);
        if (dice < 450) {
            net_tick(nt, id);
        } else if (dice < 720) {
            net_deliver(nt, 1 + net_rand(nt) % 8);
        } else if (dice < 840) {
            uint32_t l = net_leader(nt);
            if (l) {
                char buf[32];
                snprintf(buf, sizeof buf, "s%" PRIu64 "-p%d", seed,
                         proposals++);
                int rc = net_propose(nt, l, buf, NULL);
                ck_assert(rc == RAFT_OK || rc == RAFT_EBUSY);
            }
        } else if (dice < 880) {
            uint32_t l = net_leader(nt);
            if (l)
                ck_assert_int_eq(raft_read_index(nt->r[l], (uint64_t)step),
                                 RAFT_OK);
        } else if (dice < 910) {
            if (!nt->down[id]) {
                uint64_t a = status_of(nt, id).applied;
                ck_assert_int_eq(raft_compact(nt->r[id], a), RAFT_OK);
                if (a > nt->st[id].snap_index) { /* the driver records it */
                    nt->st[id].snap_index = a;
                    nt->st[id].snap_term = raft_term_at(nt->r[id], a);
                }
                check_node(nt, id);
            }
        } else if (dice < 950) {
            uint32_t j = 1 + (uint32_t)(net_rand(nt) % n);
            nt->cut[id][j] = nt->cut[j][id] = !nt->cut[id][j] && id != j;
        } else if (dice < 970) {
            net_heal(nt);
        } else if (dice < 985) {
            uint32_t l = net_leader(nt);
            if (l) {
                uint32_t t = 1 + (uint32_t)(net_rand(nt) % n);
                int rc = raft_transfer_leader(nt->r[l], t);
                ck_assert(rc == RAFT_OK || (rc == RAFT_EINVAL && t == l));
                check_node(nt, l);
                net_ready(nt, l);
            }
        } else if (!nt->down[id]) {
            /* crash and restart from the store */
            restarts++;
            raft_free(nt->r[id]);
            nt->r[id] = NULL;
            nt->down[id] = true;
            net_deliver(nt, 4);
            nt->down[id] = false;
            net_start(nt, id);
        }
    }
    /* Liveness once the network is good again: a proposal of a stable
     * leader reaches every state machine. */
    net_heal(nt);
    nt->drop_pct = 0;
    nt->dup_pct = 0;
    bool done = false;
    for (int attempt = 0; attempt < 10 && !done; attempt++) {
        net_run(nt, 2 * ELECTION);
        uint32_t l = net_leader(nt);
        uint64_t idx = 0;
        if (!l || raft_propose(nt->r[l], "end", 3, &idx) != RAFT_OK)
            continue;
        uint64_t term = status_of(nt, l).term;
        net_ready(nt, l);
        net_run(nt, 4);
        done = idx < nt->ccap && nt->commit_term[idx] == term;
        for (uint32_t id = 1; id <= n; id++)
            done = done && nt->st[id].applied >= idx;
    }
    ck_assert_msg(done, "no progress after healing (seed %" PRIu64 ")", seed);
    if (getenv("KV_SIM_STATS")) {
        size_t terms = 0;
        for (size_t t = 0; t < nt->lcap; t++)
            terms += nt->leader_of[t] != 0;
        fprintf(stderr,
                "seed %" PRIu64 ": n=%zu pre_vote=%d check_quorum=%d "
                "leaders=%zu applied=%" PRIu64 " snapshots=%zu/%zu "
                "reads=%zu restarts=%d rejects=%zu\n",
                seed, n, o.pre_vote, o.check_quorum, terms, nt->st[1].applied,
                nt->snaps_installed, nt->snap_requests, nt->nreads, restarts,
                nt->rejects);
    }
    net_free(nt);
}
END_TEST

/* ==== suite ========================================================== */

Suite *raft_suite(void)
{
    Suite *s = suite_create("raft");
    struct {
        const char *name;
        const TTest *tests[16];
    } groups[] = {
        {"5.1 basics",
         {servers_start_as_followers_without_a_leader,
          leader_reverts_to_follower_on_message_with_higher_term,
          follower_adopts_the_larger_term_it_sees,
          request_with_stale_term_is_rejected_and_answered_with_current_term,
          stale_leader_learns_the_new_term_from_a_follower_answer,
          malformed_or_misaddressed_messages_are_refused,
          bad_configurations_and_impossible_stored_states_are_refused}},
        {"5.2 leader election",
         {follower_starts_election_after_election_timeout,
          election_timeouts_are_random_between_base_and_twice_base,
          candidate_wins_election_with_majority_of_votes,
          candidate_steps_down_when_a_majority_rejects,
          node_grants_at_most_one_vote_per_term,
          candidate_returns_to_follower_when_leader_of_its_term_appends,
          split_vote_leads_to_a_new_election_in_a_higher_term,
          leader_sends_heartbeats_that_keep_followers_from_campaigning,
          new_leader_appends_a_noop_entry_of_its_term,
          single_member_group_elects_itself_and_commits_alone}},
        {"5.3 log replication",
         {leader_commits_an_entry_stored_on_a_majority,
          follower_rejects_append_with_mismatched_prev_term,
          follower_deletes_conflicting_entry_and_all_that_follow,
          follower_commit_never_exceeds_the_last_new_entry,
          follower_learns_commit_index_from_heartbeats,
          heartbeat_commit_never_exceeds_the_follower_match,
          proposal_on_a_follower_fails_with_not_leader,
          leader_forces_divergent_follower_logs_to_duplicate_its_own,
          duplicated_and_reordered_appends_cause_no_harm}},
        {"5.4 safety",
         {voter_denies_vote_to_candidate_with_an_older_last_term,
          voter_denies_vote_to_candidate_with_a_shorter_log_of_same_term,
          leader_commits_only_entries_of_its_term_by_counting,
          figure_8_entry_stored_on_a_majority_is_overwritten_uncommitted,
          every_new_leader_holds_all_committed_entries,
          leader_never_overwrites_its_own_entries}},
        {"7 log compaction",
         {compaction_drops_entries_and_keeps_the_snapshot_point,
          leader_sends_snapshot_to_follower_whose_entries_were_compacted,
          follower_installing_snapshot_keeps_matching_entries_after_it,
          follower_installing_snapshot_discards_a_conflicting_log,
          follower_answers_stale_snapshot_with_its_commit_index,
          leader_retries_a_snapshot_that_failed,
          restarted_node_recovers_from_its_stored_snapshot_and_log,
          leader_reprobes_a_restarted_peer_that_lost_its_log}},
        {"8 client interaction",
         {read_index_is_released_after_a_heartbeat_round_with_a_majority,
          read_index_waits_until_the_leader_commits_an_entry_of_its_term,
          partitioned_leader_never_releases_a_read,
          reads_are_released_in_order_with_their_commit_index,
          single_member_group_releases_a_read_at_once}},
        {"leader lease",
         {lease_follows_the_heartbeat_rounds_a_majority_acknowledged,
          no_lease_without_check_quorum_or_before_a_commit_of_the_term,
          lease_ends_for_the_term_when_a_transfer_starts,
          restarted_replica_with_boot_quiet_withholds_votes_for_a_timeout}},
        {"rebuilt replica",
         {rebuilt_replica_grants_no_vote_until_it_hears_a_current_leader,
          heartbeats_name_the_round_every_other_member_acknowledged,
          rebuilt_replica_never_campaigns_while_waiting_for_a_leader,
          rebuilt_voter_never_elects_a_second_leader_in_a_term,
          rebuilt_replica_that_restarts_before_hearing_a_leader_still_waits}},
        {"pre-vote",
         {isolated_precandidate_never_increments_its_term,
          voters_grant_a_prevote_without_changing_their_state,
          prevote_is_denied_to_a_candidate_with_a_stale_log,
          precandidate_with_a_majority_runs_a_real_election}},
        {"check-quorum",
         {leader_steps_down_without_quorum,
          follower_that_hears_a_leader_ignores_vote_requests,
          follower_votes_again_once_the_leader_has_been_silent}},
        {"leadership transfer",
         {transfer_to_an_up_to_date_follower_makes_it_leader,
          transfer_to_a_lagging_follower_catches_it_up_first,
          proposals_fail_with_busy_until_the_transfer_is_abandoned}},
        {"fast backtracking",
         {rejecting_follower_hints_the_first_index_of_its_conflicting_term,
          rejecting_follower_hints_its_last_index_when_its_log_is_short,
          leader_bypasses_a_whole_conflicting_term_per_rejection}},
        {"flow control",
         {replicating_follower_has_at_most_max_inflight_appends,
          probing_follower_gets_one_append_until_it_answers,
          catch_up_appends_are_batched_up_to_max_msg_bytes,
          lost_appends_are_resent_after_a_heartbeat}},
        {"ready protocol",
         {ready_hands_out_each_item_once,
          handed_out_entries_stay_valid_until_advance,
          committed_entries_never_run_ahead_of_the_stored_log}},
        {"invariants and faults",
         {invariant_check_sees_broken_rules,
          raft_new_fails_cleanly_when_any_allocation_fails}},
    };
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        TCase *tc = tcase_create(groups[g].name);
        tcase_add_checked_fixture(tc, fixture_setup, NULL);
        for (size_t t = 0; t < 16 && groups[g].tests[t]; t++)
            tcase_add_test(tc, groups[g].tests[t]);
        suite_add_tcase(s, tc);
    }
    TCase *tc = tcase_create("allocation failures");
    tcase_add_checked_fixture(tc, fixture_setup, NULL);
    tcase_add_loop_test(tc, any_failed_allocation_leaves_a_consistent_state, 0,
                        150);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    tc = tcase_create("randomized safety");
    tcase_add_checked_fixture(tc, fixture_setup, NULL);
    tcase_add_loop_test(
        tc, random_faults_keep_election_and_state_machine_safety, 0, 200);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return s;
}
