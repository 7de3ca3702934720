/*
 * sim - the deterministic simulation of kv's replication.
 *
 *   sim [--seeds N] [--seed S] [--steps N] [--scenario NAME] [--verbose]
 *   KV_SIM_SEED=S sim ...        replays exactly one seed
 *
 * --seeds N runs seeds 1..N; --seed S runs seed S only; both run N seeds
 * from S on.
 *
 * Each seed builds a cluster in memory (3 or 5 nodes, 2-4 shards, 3
 * replicas), runs the real replica.c/raft.c/engine.c of every node over a
 * simulated store, network and clock, injects faults chosen by the seed,
 * heals, and checks safety (Raft invariants after every event, election and
 * commit safety, exactly-once, linearizability of the clients' history,
 * durability of acknowledged writes) and liveness (after the heal every key
 * can be written and read, every replica converges to the same data).
 *
 * Scenarios: "random" (the seeded fault schedule), and directed ones:
 * "leader-crash" (a shard's leader crashes right after proposing a write),
 * "snapshot" (a follower is cut off until the leader compacts its log, so
 * it must be sent a snapshot), "restart" (a follower, a leader, then the
 * whole cluster crash and restart while clients run), "stale-tail" (a
 * cut-off leader takes writes it cannot commit, then is sent a snapshot
 * that ends inside its stale log), "bank" (cross-shard transfers and
 * audits under the random faults, failpoint crashes in the middle of
 * two-phase commit, and crashes of transactions' nodes: sim_bank.c),
 * "counter" (calls of the procedure incr on a few hot keys, with gets and
 * puts, under the random faults: sim_counter.c), "rebuild" (a shard's
 * leader is cut off, the others elect a new one, and the replica that
 * voted for it loses its disk and comes back rebuilt, hearing only the old
 * leader, which campaigns for the very term it voted in: it must not vote
 * again, kvnode --rebuild).
 * "all" (the default) runs "random" on every seed and each directed one on
 * the first few seeds.
 *
 * Nothing in the logic reads a clock or calls rand(): the wall clock only
 * measures the elapsed time printed at the end. A failing seed prints one
 * line with its seed, scenario, simulated time and the broken rule, and the
 * command that replays it; the exit status is 1 when any seed failed.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conf.h"
#include "kv.h"
#include "lincheck.h"
#include "log.h"
#include "proc.h"
#include "raft.h"
#include "replica.h"
#include "shard.h"
#include "sim.h"
#include "store.h"
#include "store_sim.h"
#include "wire.h"

enum sim_scenario {
    SC_RANDOM = 0,
    SC_LEADER_CRASH,
    SC_SNAPSHOT,
    SC_RESTART,
    SC_STALE_TAIL,
    SC_BANK,
    SC_COUNTER,
    SC_REBUILD,
    SC_COUNT,
    SC_ALL = SC_COUNT,
};

static const char *scenario_names[] = {"random",  "leader-crash", "snapshot",
                                       "restart", "stale-tail",   "bank",
                                       "counter", "rebuild",      "all"};

#define DEFAULT_SEEDS 100
#define DEFAULT_MAX_EVENTS 4000000u
#define BANK_SEEDS 200    /* bank seeds of "all" (about 30 ms each) */
#define COUNTER_SEEDS 100 /* counter seeds of "all" */
/* "all": how many seeds each scenario runs at most (random: every seed);
 * the snapshot ones load 12,000 writes and cost about 1-2 s a seed. */
static const uint64_t directed_seeds[] = {
    UINT64_MAX,    /* random */
    20,            /* leader-crash */
    10,            /* snapshot (two of each variant) */
    20,            /* restart */
    5,             /* stale-tail */
    BANK_SEEDS,    /* bank */
    COUNTER_SEEDS, /* counter */
    20,            /* rebuild */
};
_Static_assert(sizeof(directed_seeds) / sizeof(directed_seeds[0]) == SC_COUNT,
               "one seed count per scenario");
#define SIM_TIME_LIMIT_MS 600000 /* no seed runs longer (simulated) */
#define DRAIN_MS 4000
#define FINAL_MS 30000
#define CONVERGE_MS 15000
#define BANK_SETTLE_MS 20000 /* bank: no transaction state left by then */
/* replica.c's COMPACT_EVERY: a node compacts its log once it applied
 * COMPACT_EVERY + COMPACT_KEEP (2000) entries past its last compaction.
 * The stale-tail scenario cuts the leader off a little before that, so the
 * majority compacts past the point where the two logs part. */
#define SIM_COMPACT_EVERY 10000
#define GHOSTS_PER_MS 30
#define GHOSTS_MAX 9000

/* --- the generator ----------------------------------------------------------
 */

uint64_t sim_rand(struct sim_rng *g)
{
    uint64_t z = (g->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t sim_below(struct sim_rng *g, uint64_t n)
{
    return n ? sim_rand(g) % n : 0;
}

uint64_t sim_range(struct sim_rng *g, uint64_t lo, uint64_t hi)
{
    return hi <= lo ? lo : lo + sim_below(g, hi - lo + 1);
}

bool sim_ppm(struct sim_rng *g, uint32_t ppm)
{
    return ppm && sim_below(g, 1000000) < ppm;
}

/* --- reporting --------------------------------------------------------------
 */

void sim_fail(struct sim *s, const char *fmt, ...)
{
    if (s->failed)
        return;
    s->failed = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->why, sizeof(s->why), fmt, ap);
    va_end(ap);
}

void sim_log(struct sim *s, const char *fmt, ...)
{
    if (!s->verbose)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* stderr, as the nodes' log lines, so the two interleave in order */
    fprintf(stderr, "sim t=%llu %s\n", (unsigned long long)s->now, line);
}

void sim_node_context(struct sim *s, const struct sim_node *n)
{
    if (!s->verbose)
        return;
    char tag[48];
    snprintf(tag, sizeof(tag), "t=%llu node=%u", (unsigned long long)s->now,
             n->id);
    log_setup(s->log_level, tag);
}

uint64_t sim_stamp(struct sim *s)
{
    return s->now * 1000000u + ++s->sub;
}

/* --- scenarios ------------------------------------------------------------ */

static bool shard_member(const struct sim *s, uint32_t shard, int idx)
{
    for (uint32_t r = 0; r < s->conf->replicas; r++)
        if ((int)conf_replica(s->conf, shard, r) == idx)
            return true;
    return false;
}

static void crash_for_scenario(struct sim *s, struct sim_node *n,
                               const char *why, uint64_t down_ms)
{
    sim_node_crash(s, n, why);
    n->restart_at = s->now + down_ms;
    s->sc_triggers++;
}

void sim_scenario_request(struct sim *s, struct sim_node *n, const void *key,
                          size_t klen, uint64_t proposals_before)
{
    if (s->p.scenario != SC_LEADER_CRASH || s->sc_state != 1 ||
        n->idx != s->sc_node ||
        shard_of(key, klen, (uint32_t)s->p.nshards) != (uint32_t)s->sc_shard)
        return;
    struct replica_stats st;
    replica_get_stats(n->rep, &st);
    if (st.proposals == proposals_before)
        return;
    uint64_t down = sim_range(&s->rng, 800, 2000);
    switch (s->sc_variant) {
    case 0:
        crash_for_scenario(s, n, "leader-crash: right after proposing", down);
        s->sc_state = 3;
        break;
    case 1:
        crash_for_scenario(s, n,
                           "leader-crash: right after proposing, its "
                           "appends lost",
                           down);
        sim_net_drop_from(s, n->idx);
        s->sc_state = 3;
        break;
    default:
        sim_log(s,
                "leader-crash: node %u proposed; it crashes when the "
                "first append answer comes back",
                n->id);
        s->sc_state = 2;
        s->sc_at = s->now;
        break;
    }
}

static bool batch_has(const Kv__PeerBatch *b, uint32_t shard, uint32_t type)
{
    for (size_t i = 0; i < b->n_msgs; i++)
        if (b->msgs[i]->shard == shard && b->msgs[i]->type == type)
            return true;
    return false;
}

static bool batch_has_chunk(const Kv__PeerBatch *b, uint32_t shard,
                            bool want_last, bool want_first)
{
    for (size_t i = 0; i < b->n_chunks; i++) {
        const Kv__SnapshotChunk *c = b->chunks[i];
        if (c->shard != shard)
            continue;
        if ((want_last && c->last) || (want_first && c->seq == 0))
            return true;
    }
    return false;
}

bool sim_scenario_peer(struct sim *s, struct sim_node *n,
                       const Kv__PeerBatch *b, int when)
{
    if (s->p.scenario == SC_LEADER_CRASH && s->sc_state == 2 && when == 0 &&
        n->idx == s->sc_node &&
        batch_has(b, (uint32_t)s->sc_shard, RAFT_MSG_APPEND_RESP)) {
        crash_for_scenario(s, n,
                           "leader-crash: its followers have the entry, it "
                           "never learns the commit",
                           sim_range(&s->rng, 800, 2000));
        s->sc_state = 3;
        return false;
    }
    if (s->p.scenario == SC_SNAPSHOT && s->sc_state == 2 &&
        n->idx == s->sc_node && s->sc_triggers == 0) {
        uint32_t sh = (uint32_t)s->sc_shard;
        if (s->sc_variant == 1 && when == 1 &&
            batch_has_chunk(b, sh, true, false)) {
            /* The install that follows fails on its first write. */
            store_sim_fail_writes(n->dir, 1);
            n->fail_armed = true;
            s->sc_triggers++;
            sim_log(s, "snapshot: node %u's install will fail", n->id);
        } else if (s->sc_variant == 2 && when == 0 &&
                   batch_has_chunk(b, sh, false, true)) {
            crash_for_scenario(s, n, "snapshot: crash as the stream starts",
                               sim_range(&s->rng, 200, 1000));
            return false;
        } else if (s->sc_variant == 4 && when == 1 &&
                   batch_has_chunk(b, sh, false, true) &&
                   !batch_has_chunk(b, sh, true, false)) {
            /* Its first chunk is staged: the next stream finds it there
             * and waits until it is cleared. */
            crash_for_scenario(s, n, "snapshot: crash after the first chunk",
                               sim_range(&s->rng, 200, 1000));
            return false;
        }
    }
    return true;
}

static uint64_t installed(struct sim_node *n)
{
    uint64_t k = n->snapshots_installed;
    if (n->rep) {
        struct replica_stats st;
        replica_get_stats(n->rep, &st);
        k += st.snapshots_installed;
    }
    return k;
}

static void scenario_leader_crash(struct sim *s)
{
    switch (s->sc_state) {
    case 0: {
        if (s->now < s->sc_at)
            return;
        int l = sim_shard_leader(s, (uint32_t)s->sc_shard);
        if (l < 0)
            return;
        s->sc_node = l;
        s->sc_variant = (int)((s->seed + (uint64_t)s->sc_triggers) % 3);
        s->sc_state = 1;
        sim_log(s, "leader-crash: armed on node %d, shard %d, variant %d",
                l + 1, s->sc_shard, s->sc_variant);
        break;
    }
    case 1:
    case 2: {
        struct sim_node *n = &s->nodes[s->sc_node];
        if (!n->rep || replica_leader(n->rep, (uint32_t)s->sc_shard) != n->id) {
            s->sc_state = 0; /* lost leadership first: arm again */
        } else if (s->sc_state == 2 && s->now > s->sc_at + 500) {
            crash_for_scenario(s, n, "leader-crash: no append answer came",
                               sim_range(&s->rng, 800, 2000));
            s->sc_state = 3;
        }
        break;
    }
    case 3:
        if (!s->nodes[s->sc_node].rep)
            return;
        if (s->sc_triggers < 2) {
            s->sc_shard = (s->sc_shard + 1) % s->p.nshards;
            s->sc_at = s->now + 1000;
            s->sc_state = 0;
        } else {
            s->sc_state = 4;
        }
        break;
    default:
        break;
    }
}

static void scenario_snapshot(struct sim *s)
{
    uint32_t sh = (uint32_t)s->sc_shard;
    switch (s->sc_state) {
    case 0: {
        if (s->now < 1000)
            return;
        int l = sim_shard_leader(s, sh);
        if (l < 0)
            return;
        int f = -1;
        for (int i = 0; i < s->p.nnodes && f < 0; i++)
            if (i != l && shard_member(s, sh, i))
                f = i;
        for (int j = 0; j < s->p.nnodes; j++)
            s->blocked[f][j] = s->blocked[j][f] = j != f;
        s->sc_node = f;
        s->sc_variant = (int)(s->seed % 5);
        s->sc_seen = 0;
        s->bulk_on = true;
        s->sc_state = 1;
        s->sc_at = s->now;
        sim_log(s, "snapshot: node %d cut off; bulk load into shard %u", f + 1,
                sh);
        break;
    }
    case 1: {
        for (int j = 0; j < s->p.nnodes; j++) /* stays cut off */
            s->blocked[s->sc_node][j] = s->blocked[j][s->sc_node] =
                j != s->sc_node;
        if (s->now % 50)
            return;
        int l = sim_shard_leader(s, sh);
        uint64_t term, commit, snap = 0;
        if (l >= 0 && l != s->sc_node &&
            sim_store_hardstate(&s->nodes[l], sh, &term, &commit, &snap) == 0 &&
            snap > 0) {
            memset(s->blocked, 0, sizeof(s->blocked));
            s->bulk_on = false;
            s->sc_state = 2;
            s->sc_at = s->now;
            sim_log(s,
                    "snapshot: node %d compacted to %llu after %llu "
                    "bulk writes; node %d reconnects",
                    l + 1, (unsigned long long)snap,
                    (unsigned long long)s->bulk_next, s->sc_node + 1);
        } else if (s->now > s->sc_at + 120000) {
            sim_fail(s,
                     "snapshot scenario: no leader compacted shard %u "
                     "after %llu bulk writes in 120 s",
                     sh, (unsigned long long)s->bulk_next);
        }
        break;
    }
    case 2: {
        struct sim_node *n = &s->nodes[s->sc_node];
        /* Variant 3 crashes the node in one phase of the install (1, 2
         * or 3 by the seed: the first one seen from it on), in the first
         * phases a few ms into it; the restart resumes. */
        int phase = n->rep ? replica_installing(n->rep, sh) : 0;
        int target = 1 + (int)(s->seed / 5 % 3);
        if (s->sc_variant == 3 && s->sc_triggers == 0 && phase >= target &&
            (phase == 3 || s->sc_seen++ >= (int)(s->seed / 15 % 3))) {
            char why[64];
            snprintf(why, sizeof why, "snapshot: crash in install phase %d",
                     phase);
            crash_for_scenario(s, n, why, sim_range(&s->rng, 200, 1000));
            break;
        }
        if (installed(&s->nodes[s->sc_node]) >= 1 && s->nodes[s->sc_node].rep) {
            if ((s->sc_variant == 3 || s->sc_variant == 4) &&
                s->sc_triggers == 0) {
                sim_fail(s,
                         "snapshot scenario: variant %d did not crash node "
                         "%d before its install ended",
                         s->sc_variant, s->sc_node + 1);
                break;
            }
            sim_log(s, "snapshot: node %d installed a snapshot",
                    s->sc_node + 1);
            s->sc_state = 3;
        } else if (s->now > s->sc_at + 60000) {
            sim_fail(s,
                     "snapshot scenario: node %d installed no snapshot "
                     "within 60 s of reconnecting",
                     s->sc_node + 1);
        }
        break;
    }
    default:
        break;
    }
}

static void scenario_restart(struct sim *s)
{
    switch (s->sc_state) {
    case 0: {
        if (s->now < 1500)
            return;
        int l = sim_shard_leader(s, 0);
        for (int i = 0; i < s->p.nnodes; i++) {
            if (i != l && shard_member(s, 0, i) && s->nodes[i].rep) {
                crash_for_scenario(s, &s->nodes[i], "restart: a follower",
                                   1000);
                s->sc_state = 1;
                return;
            }
        }
        break;
    }
    case 1: {
        if (s->now < 3500)
            return;
        int l = sim_shard_leader(s, (uint32_t)(1 % s->p.nshards));
        if (l < 0)
            return;
        crash_for_scenario(s, &s->nodes[l], "restart: a leader", 1000);
        s->sc_state = 2;
        break;
    }
    case 2:
        if (s->now < 5500)
            return;
        for (int i = 0; i < s->p.nnodes; i++)
            if (!s->nodes[i].rep)
                return;
        for (int i = 0; i < s->p.nnodes; i++) {
            sim_node_crash(s, &s->nodes[i], "restart: the whole cluster");
            s->nodes[i].restart_at = s->now + sim_range(&s->rng, 300, 600);
        }
        s->sc_triggers++;
        s->sc_state = 3;
        break;
    default:
        break;
    }
}

/* Sends an unrecorded blind put of a new "ghost" key to node index TO. */
static void send_ghost(struct sim *s, int to)
{
    int ghost = s->p.nclients + s->p.nbulk;
    char key[SIM_KEY_MAX];
    unsigned char val[8];
    int klen = snprintf(key, sizeof(key), "{%s}g%llu", s->tags[s->sc_shard],
                        (unsigned long long)s->sc_ghosts);
    sim_value_encode((uint64_t)(ghost + 1) << 40 | ++s->sc_ghosts, 0, val);
    Kv__Request req = KV__REQUEST__INIT;
    Kv__PutRequest put = KV__PUT_REQUEST__INIT;
    put.key.data = (uint8_t *)key;
    put.key.len = (size_t)klen;
    put.value.data = val;
    put.value.len = sizeof(val);
    req.op_case = KV__REQUEST__OP_PUT;
    req.put = &put;
    void *buf = NULL;
    size_t len = 0;
    if (wire_encode_request(&req, &buf, &len) != KV_OK) {
        sim_fail(s, "cannot encode a ghost request");
        return;
    }
    sim_net_send(s, SIM_MSG_REQ, ghost, to, buf, len);
    free(buf);
}

/* The last log index stored by node N for SHARD (0: none). */
static uint64_t stored_last(struct sim_node *n, uint32_t shard)
{
    uint64_t term, commit, snap;
    if (!n->store || sim_store_hardstate(n, shard, &term, &commit, &snap))
        return 0;
    uint64_t lo = snap, hi = snap + (1u << 20);
    while (lo < hi) { /* the largest stored index: entries are contiguous */
        uint64_t mid = lo + (hi - lo + 1) / 2;
        unsigned char k[13];
        k[0] = 'L';
        for (int b = 0; b < 4; b++)
            k[1 + b] = (unsigned char)(shard >> (24 - 8 * b));
        for (int b = 0; b < 8; b++)
            k[5 + b] = (unsigned char)(mid >> (56 - 8 * b));
        void *v = NULL;
        size_t vlen = 0;
        if (store_get(n->store, k, sizeof(k), &v, &vlen) == KV_OK)
            lo = mid;
        else
            hi = mid - 1;
        free(v);
    }
    return lo;
}

/* A leader is cut off while it takes thousands of writes it cannot
 * commit; the majority moves on and compacts; when the old leader comes
 * back it is sent a snapshot whose index falls inside its stale tail. */
static void scenario_stale_tail(struct sim *s)
{
    uint32_t sh = (uint32_t)s->sc_shard;
    struct sim_node *old = &s->nodes[s->sc_node];
    switch (s->sc_state) {
    case 0: {
        if (s->now < 1000)
            return;
        int l = sim_shard_leader(s, sh);
        if (l < 0)
            return;
        s->sc_node = l;
        s->bulk_on = true;
        s->sc_state = 1;
        break;
    }
    case 1: {
        if (s->now % 10)
            return;
        int l = sim_shard_leader(s, sh);
        if (l >= 0)
            s->sc_node = l;
        old = &s->nodes[s->sc_node];
        if (sim_store_applied(old, sh) < SIM_COMPACT_EVERY - 1500)
            return;
        for (int j = 0; j < s->p.nnodes; j++)
            s->blocked[s->sc_node][j] = s->blocked[j][s->sc_node] =
                j != s->sc_node;
        s->sc_state = 2;
        s->sc_at = s->now;
        sim_log(s, "stale-tail: leader %u cut off at applied %llu", old->id,
                (unsigned long long)sim_store_applied(old, sh));
        break;
    }
    case 2:
        if (old->rep && replica_leader(old->rep, sh) == old->id &&
            s->sc_ghosts < GHOSTS_MAX) {
            for (int i = 0; i < GHOSTS_PER_MS; i++)
                send_ghost(s, s->sc_node);
            return;
        }
        s->sc_state = 3;
        sim_log(s, "stale-tail: node %u took %llu writes it cannot commit",
                old->id, (unsigned long long)s->sc_ghosts);
        break;
    case 3: {
        int m = sim_shard_leader(s, sh);
        uint64_t term, commit, snap = 0;
        if (m >= 0 && m != s->sc_node &&
            sim_store_hardstate(&s->nodes[m], sh, &term, &commit, &snap) == 0 &&
            snap > 0 && s->now % 10 == 0) {
            s->sc_tail = stored_last(old, sh);
            memset(s->blocked, 0, sizeof(s->blocked));
            s->bulk_on = false;
            s->sc_state = 4;
            s->sc_at = s->now;
            sim_log(s,
                    "stale-tail: node %d compacted to %llu; node %u, "
                    "whose log ends at %llu, reconnects",
                    m + 1, (unsigned long long)snap, old->id,
                    (unsigned long long)s->sc_tail);
        } else if (s->now > s->sc_at + 120000) {
            sim_fail(s, "stale-tail scenario: the majority did not compact "
                        "in 120 s");
        }
        break;
    }
    case 4:
        if (installed(old) >= 1) {
            uint64_t term, commit, snap = 0;
            sim_store_hardstate(old, sh, &term, &commit, &snap);
            sim_log(s,
                    "stale-tail: node %u installed a snapshot at %llu "
                    "(its stale log ended at %llu)",
                    old->id, (unsigned long long)snap,
                    (unsigned long long)s->sc_tail);
            if (snap >= s->sc_tail)
                sim_fail(s,
                         "stale-tail scenario: the snapshot (%llu) is not "
                         "inside the stale log (%llu): nothing tested",
                         (unsigned long long)snap,
                         (unsigned long long)s->sc_tail);
            sim_check_store_log(s, old, "after a snapshot install");
            /* and it must be able to restart on what it stored */
            crash_for_scenario(s, old, "stale-tail: restart after the install",
                               300);
            s->sc_state = 5;
        } else if (s->now > s->sc_at + 60000) {
            sim_fail(s,
                     "stale-tail scenario: node %u installed no snapshot "
                     "within 60 s",
                     old->id);
        }
        break;
    case 5:
        if (old->rep)
            s->sc_state = 6;
        break;
    default:
        break;
    }
}

/* The member of SHARD that is neither node index A nor B (3 nodes). */
static int third_member(const struct sim *s, uint32_t shard, int a, int b)
{
    for (int i = 0; i < s->p.nnodes; i++)
        if (i != a && i != b && shard_member(s, shard, i))
            return i;
    return -1;
}

/* Node index I is cut off from J (both ways) when CUT. */
static void cut(struct sim *s, int i, int j, bool on)
{
    s->blocked[i][j] = s->blocked[j][i] = on;
}

/* The rebuild scenario (3 nodes): the leader L of a shard is cut off; N
 * and X elect N, X voting for it. X then loses its disk and restarts
 * rebuilt (replica_mark_rebuilt, as kvnode --rebuild does), reaching only
 * L, which has not heard of N's term and campaigns for it. Had X voted
 * again, L and N would both lead that term (sim_check_leaders), and what
 * only N and the lost disk held could be lost. X must wait until it hears
 * a current leader, which it does once everything heals. */
static void scenario_rebuild(struct sim *s)
{
    uint32_t sh = (uint32_t)s->sc_shard;
    int l = s->sc_node, x = s->sc_variant;
    switch (s->sc_state) {
    case 0: { /* cut the leader off */
        if (s->now < s->sc_at)
            return;
        l = sim_shard_leader(s, sh);
        if (l < 0)
            return;
        s->sc_node = l;
        for (int j = 0; j < s->p.nnodes; j++)
            cut(s, l, j, j != l);
        s->sc_state = 1;
        s->sc_at = s->now;
        sim_log(s, "rebuild: leader %d of shard %u cut off", l + 1, sh);
        break;
    }
    case 1: { /* a new leader N; X, its voter, loses its disk */
        for (int j = 0; j < s->p.nnodes; j++)
            cut(s, l, j, j != l);
        int nl = -1;
        for (int i = 0; i < s->p.nnodes; i++)
            if (i != l && s->nodes[i].rep &&
                replica_leader(s->nodes[i].rep, sh) == s->nodes[i].id)
                nl = i;
        if (nl < 0) {
            if (s->now > s->sc_at + 20000)
                sim_fail(s,
                         "rebuild scenario: no new leader of shard %u "
                         "in 20 s",
                         sh);
            return;
        }
        x = third_member(s, sh, l, nl);
        if (x < 0 || !s->nodes[x].rep)
            return;
        struct sim_node *xn = &s->nodes[x];
        sim_node_crash(s, xn, "rebuild: its disk is lost");
        store_sim_wipe(xn->dir);
        struct store *st = NULL;
        char err[256] = "";
        if (store_open(xn->dir, &st, err, sizeof(err)) != KV_OK ||
            replica_mark_rebuilt(st, s->conf, xn->id, err, sizeof(err)) !=
                KV_OK) {
            sim_fail(s, "rebuild scenario: cannot mark node %u rebuilt: %s",
                     xn->id, err);
            store_close(st);
            return;
        }
        store_close(st);
        xn->restart_at = s->now + sim_range(&s->rng, 1, 300);
        s->sc_variant = x;
        s->sc_state = 2;
        s->sc_at = s->now + sim_range(&s->rng, 3000, 6000);
        s->sc_triggers++;
        sim_log(s,
                "rebuild: node %d leads shard %u; node %d is rebuilt and "
                "reaches only node %d",
                nl + 1, sh, x + 1, l + 1);
        break;
    }
    case 2: /* X hears only L, until the window ends */
        for (int j = 0; j < s->p.nnodes; j++)
            cut(s, l, j, j != l && j != x);
        for (int j = 0; j < s->p.nnodes; j++)
            cut(s, x, j, j != l && j != x);
        if (s->now < s->sc_at)
            return;
        memset(s->blocked, 0, sizeof(s->blocked));
        s->sc_state = 3;
        s->sc_at = s->now;
        sim_log(s, "rebuild: healed");
        break;
    case 3: /* X hears a current leader of every shard */
        if (s->nodes[x].rep && store_sim_count(s->nodes[x].dir, "R", 1) == 0) {
            sim_log(s, "rebuild: node %d votes again", x + 1);
            s->sc_state = 4;
        } else if (s->now > s->sc_at + 30000) {
            sim_fail(s,
                     "rebuild scenario: node %d still waits for a current "
                     "leader 30 s after the heal",
                     x + 1);
        }
        break;
    default:
        break;
    }
}

static void scenario_step(struct sim *s)
{
    if (s->phase != SIM_PH_RUN)
        return;
    switch (s->p.scenario) {
    case SC_LEADER_CRASH:
        scenario_leader_crash(s);
        break;
    case SC_SNAPSHOT:
        scenario_snapshot(s);
        break;
    case SC_RESTART:
        scenario_restart(s);
        break;
    case SC_STALE_TAIL:
        scenario_stale_tail(s);
        break;
    case SC_BANK:
        sim_bank_faults(s);
        break;
    case SC_REBUILD:
        scenario_rebuild(s);
        break;
    default: /* random, counter: the fault schedule only */
        break;
    }
}

static bool run_over(struct sim *s)
{
    if (s->p.scenario == SC_SNAPSHOT)
        return s->sc_state == 3;
    if (s->p.scenario == SC_STALE_TAIL)
        return s->sc_state == 6;
    if (s->p.scenario == SC_REBUILD)
        return s->sc_state == 4;
    if (s->now < s->p.run_ms)
        return false;
    if (s->p.scenario == SC_LEADER_CRASH && s->sc_triggers < 2)
        sim_fail(s, "leader-crash scenario: triggered %d of 2 times",
                 s->sc_triggers);
    if (s->p.scenario == SC_RESTART && s->sc_triggers < 3)
        sim_fail(s, "restart scenario: triggered %d of 3 times",
                 s->sc_triggers);
    return true;
}

/* --- one seed ------------------------------------------------------------- */

static void choose_params(struct sim *s, int scenario)
{
    struct sim_params *p = &s->p;
    struct sim_rng *g = &s->rng;
    memset(p, 0, sizeof(*p));
    p->scenario = scenario;
    p->nnodes = 3;
    p->nclients = 5;
    p->heal_ms = 1500;
    p->value_pad_max = 64;
    p->delay_max = 10;
    p->fifo = sim_below(g, 2);
    switch (scenario) {
    case SC_RANDOM:
        p->nnodes = sim_below(g, 5) == 0 ? 5 : 3;
        p->nshards = (int)sim_range(g, 2, 4);
        p->nkeys = (int)sim_range(g, 3, 6);
        p->nclients = (int)sim_range(g, 3, 8);
        p->run_ms = sim_range(g, 4000, 12000);
        p->loss_ppm =
            sim_below(g, 4) == 0 ? 0 : (uint32_t)sim_range(g, 0, 100000);
        p->dup_ppm = (uint32_t)sim_range(g, 0, 50000);
        p->slow_ppm = (uint32_t)sim_range(g, 0, 20000);
        p->delay_max = (uint32_t)sim_range(g, 5, 30);
        p->ancient_ppm = (uint32_t)sim_range(g, 0, 2000);
        p->drift = sim_below(g, 3) == 0;
        p->faults = true;
        break;
    case SC_LEADER_CRASH:
        p->nshards = 2;
        p->nkeys = 4;
        p->run_ms = 9000;
        p->delay_max = (uint32_t)sim_range(g, 2, 10);
        break;
    case SC_SNAPSHOT:
        p->nshards = 2;
        p->nkeys = 3;
        p->nclients = 3;
        p->nbulk = 40;
        p->fifo = (s->seed / 3) % 2;
        if (s->seed % 4 >= 2) { /* the fault schedule too */
            p->faults = true;
            p->loss_ppm = (uint32_t)sim_range(g, 0, 30000);
            p->dup_ppm = (uint32_t)sim_range(g, 0, 20000);
        }
        p->delay_max = (uint32_t)sim_range(g, 2, 8);
        p->value_pad_max = 16;
        break;
    case SC_BANK: {
        p->nnodes = sim_below(g, 4) == 0 ? 5 : 3;
        p->nshards = (int)sim_range(g, 2, 4);
        p->nkeys = 3;
        p->nclients = 2; /* register clients beside the bank */
        p->nbank = (int)sim_range(g, 2, 5);
        p->naccts = 6;
        p->run_ms = sim_range(g, 4000, 10000);
        p->loss_ppm =
            sim_below(g, 3) == 0 ? 0 : (uint32_t)sim_range(g, 0, 50000);
        p->dup_ppm = (uint32_t)sim_range(g, 0, 30000);
        p->slow_ppm = (uint32_t)sim_range(g, 0, 20000);
        p->delay_max = (uint32_t)sim_range(g, 2, 20);
        p->ancient_ppm = (uint32_t)sim_range(g, 0, 1000);
        p->drift = sim_below(g, 3) == 0;
        p->faults = true;
        p->txn_timeout_ms = (uint32_t)sim_range(g, 1000, 5000);
        uint64_t fp = sim_below(g, 4); /* none, prepared, committed, both */
        if (fp & 1)
            p->fp_prepared_ppm = (uint32_t)sim_range(g, 20000, 150000);
        if (fp & 2)
            p->fp_committed_ppm = (uint32_t)sim_range(g, 20000, 150000);
        if (sim_below(g, 2))
            p->inflight_crash_ppm = (uint32_t)sim_range(g, 200, 2000);
        p->tomb_gc = s->seed % 2 == 0; /* not from G: seeds stay as they were */
        break;
    }
    case SC_COUNTER:
        p->nnodes = sim_below(g, 4) == 0 ? 5 : 3;
        p->nshards = (int)sim_range(g, 2, 4);
        p->nkeys = 3;
        p->nclients = 2; /* register clients beside the counters */
        p->ncounter = (int)sim_range(g, 3, 8);
        p->ncounters = (int)sim_range(g, 3, SIM_MAX_COUNTERS);
        p->counter_puts = sim_below(g, 3) == 0;
        p->counter_down = sim_below(g, 3) == 0;
        p->run_ms = sim_range(g, 4000, 10000);
        p->loss_ppm =
            sim_below(g, 4) == 0 ? 0 : (uint32_t)sim_range(g, 0, 100000);
        p->dup_ppm = (uint32_t)sim_range(g, 0, 50000);
        p->slow_ppm = (uint32_t)sim_range(g, 0, 20000);
        p->delay_max = (uint32_t)sim_range(g, 5, 30);
        p->ancient_ppm = (uint32_t)sim_range(g, 0, 2000);
        p->drift = sim_below(g, 3) == 0;
        p->faults = true;
        break;
    case SC_STALE_TAIL:
        p->nshards = 2;
        p->nkeys = 3;
        p->nclients = 3;
        p->nbulk = 40;
        p->nghost = 1;
        p->delay_max = (uint32_t)sim_range(g, 2, 8);
        p->value_pad_max = 16;
        break;
    case SC_REBUILD:
        p->nshards = (int)sim_range(g, 1, 3);
        p->nkeys = 4;
        p->delay_max = (uint32_t)sim_range(g, 2, 10);
        s->sc_shard = (int)sim_below(g, (uint64_t)p->nshards);
        break;
    default: /* SC_RESTART */
        p->nnodes = s->seed % 2 ? 5 : 3;
        p->nshards = (int)sim_range(g, 2, 3);
        p->nkeys = 4;
        p->run_ms = 7500;
        p->loss_ppm = (uint32_t)sim_range(g, 0, 20000);
        p->dup_ppm = (uint32_t)sim_range(g, 0, 20000);
        p->delay_max = (uint32_t)sim_range(g, 5, 30);
        break;
    }
    /* A third of the seeds expire sessions within their run: idle clients'
     * sessions go, and a retry must never find its session gone. The
     * margin (docs/replication.md) is max(ttl, 2T) - T for calls of T =
     * 3 s: 5 s, over messages delayed by up to 3 s and clocks 0.25 s
     * apart. Not from G: seeds stay as they were. */
    if (s->seed % 3 == 1)
        p->session_ttl_s = 8;
    /* A third of those with node 1 announcing no features, as an older
     * version would during a rolling upgrade: no leader may expire a
     * session of a shard it holds a replica of. */
    if (s->seed % 9 == 4)
        p->legacy_node = 1;
}

static int build_conf(struct sim *s)
{
    char text[2048];
    size_t used = 0;
    int n = snprintf(text, sizeof(text),
                     "cluster = sim\nshards = %d\nreplicas = 3\n"
                     "data_dir = /sim\n",
                     s->p.nshards);
    used = (size_t)n;
    if (s->p.txn_timeout_ms) {
        n = snprintf(text + used, sizeof(text) - used, "txn_timeout_ms = %u\n",
                     s->p.txn_timeout_ms);
        used += (size_t)n;
    }
    if (s->p.session_ttl_s) {
        n = snprintf(text + used, sizeof(text) - used, "session_ttl_s = %u\n",
                     s->p.session_ttl_s);
        used += (size_t)n;
    }
    for (int i = 0; i < s->p.nnodes; i++) {
        n = snprintf(text + used, sizeof(text) - used,
                     "[node %d]\naddress = tcp://sim-node-%d:7000\n", i + 1,
                     i + 1);
        used += (size_t)n;
    }
    char err[256] = "";
    if (conf_parse(text, used, "sim.conf", &s->conf, err, sizeof(err)) !=
        KV_OK) {
        sim_fail(s, "the simulated cluster.conf is invalid: %s", err);
        return -1;
    }
    return 0;
}

/* Picks a hash tag per shard and spreads the register keys over shards. */
static int build_keys(struct sim *s)
{
    int found = 0;
    for (unsigned c = 0; found < s->p.nshards && c < 100000; c++) {
        char t[12];
        int n = snprintf(t, sizeof(t), "t%u", c);
        uint32_t sh = shard_of(t, (size_t)n, (uint32_t)s->p.nshards);
        if (!s->tags[sh][0]) {
            memcpy(s->tags[sh], t, (size_t)n + 1);
            found++;
        }
    }
    if (found < s->p.nshards) {
        sim_fail(s, "no hash tag found for every shard");
        return -1;
    }
    for (int k = 0; k < s->p.nkeys; k++) {
        int sh = k % s->p.nshards;
        char tag[sizeof(s->tags[0])];
        memcpy(tag, s->tags[sh], sizeof(tag));
        int n = snprintf(s->keys[k], SIM_KEY_MAX, "{%s}k%d", tag, k);
        s->klen[k] = (size_t)n;
        s->kshard[k] = shard_of(s->keys[k], s->klen[k], (uint32_t)s->p.nshards);
        if (s->kshard[k] != (uint32_t)sh) {
            sim_fail(s, "hash tags do not decide the shard of %s", s->keys[k]);
            return -1;
        }
    }
    return 0;
}

static void phase_step(struct sim *s)
{
    switch (s->phase) {
    case SIM_PH_RUN:
        if (!run_over(s) || s->failed)
            return;
        sim_heal(s);
        s->phase = SIM_PH_HEAL;
        s->phase_deadline = s->now + s->p.heal_ms;
        break;
    case SIM_PH_HEAL:
        if (s->now < s->phase_deadline)
            return;
        s->phase = SIM_PH_DRAIN;
        s->phase_deadline = s->now + DRAIN_MS;
        sim_log(s, "drain: no new ops");
        break;
    case SIM_PH_DRAIN:
        if (sim_clients_idle(s)) {
            s->hist_before_final = lin_count(s->hist);
            sim_clients_final(s);
            s->phase = SIM_PH_FINAL;
            s->phase_deadline = s->now + FINAL_MS;
            sim_log(s, "final: a get, a put and a get of every key");
        } else if (s->now > s->phase_deadline) {
            sim_fail(s, "clients still busy %d ms after the drain began",
                     DRAIN_MS);
        }
        break;
    case SIM_PH_FINAL: {
        bool done = true;
        for (int i = 0; i < s->nclients; i++)
            done &= !s->clients[i].busy &&
                    s->clients[i].final_pos == s->clients[i].nfinal;
        if (done) {
            s->phase = SIM_PH_CONVERGE;
            s->phase_deadline =
                s->now + (s->p.nbank ? BANK_SETTLE_MS : CONVERGE_MS);
            sim_log(s, "converge: waiting for every replica");
        } else if (s->now > s->phase_deadline) {
            sim_fail(s, "liveness: the final ops did not finish in %d ms",
                     FINAL_MS);
        }
        break;
    }
    case SIM_PH_CONVERGE:
        if (s->now % 10)
            return;
        if (sim_converged(s, false) &&
            (!s->p.nbank || sim_bank_settled(s, false))) {
            sim_check_final(s);
            if (s->p.nbank && !s->failed)
                sim_bank_check_final(s);
            if (s->p.ncounters && !s->failed)
                sim_counter_check_final(s);
            s->phase = SIM_PH_DONE;
        } else if (s->now > s->phase_deadline) {
            if (s->p.nbank)
                sim_bank_settled(s, true); /* what is left, or unconverged */
            else
                sim_converged(s, true);
        }
        break;
    default:
        break;
    }
}

struct totals {
    uint64_t seeds, passed, failed;
    uint64_t sim_ms;
    struct sim_stats st;
};

static void add_stats(struct sim_stats *t, const struct sim_stats *a)
{
    const uint64_t *src = (const uint64_t *)(const void *)a;
    uint64_t *dst = (uint64_t *)(void *)t;
    for (size_t i = 0; i < sizeof(*a) / sizeof(uint64_t); i++)
        dst[i] += src[i];
}

static void free_sim(struct sim *s)
{
    for (int i = 0; i < s->p.nnodes; i++) {
        struct sim_node *n = &s->nodes[i];
        if (n->rep)
            replica_close(n->rep);
        if (n->store)
            store_close(n->store);
        n->rep = NULL;
        n->store = NULL;
    }
    sim_net_free(s);
    sim_check_free(s);
    sim_counter_free(s);
    lin_free(s->hist);
    conf_free(s->conf);
    store_sim_reset();
}

/* Runs one seed of SCENARIO, its nodes running the procedures of PROCS.
 * Returns 0 when it passed. */
static int run_seed(uint64_t seed, int scenario, uint64_t max_events,
                    int verbose, const char *argv0,
                    const struct proc_registry *procs, struct totals *tot)
{
    struct sim *s = calloc(1, sizeof(*s));
    if (!s) {
        fprintf(stderr, "sim: out of memory\n");
        return 1;
    }
    s->seed = seed;
    s->procs = procs;
    s->verbose = verbose > 0;
    s->log_level = verbose > 1 ? LOG_DEBUG : LOG_INFO;
    s->max_events = max_events;
    s->rng.s = seed * 0x9e3779b97f4a7c15ull ^
               ((uint64_t)scenario + 1) * 0xd1b54a32d192ed03ull;
    choose_params(s, scenario);
    s->hist = lin_new();
    if (!s->hist)
        sim_fail(s, "out of memory (history)");
    if (s->p.nbank)
        s->st.bank_seeds = 1;
    if (s->p.ncounters)
        s->st.counter_seeds = 1;
    if (!s->failed && build_conf(s) == 0 && build_keys(s) == 0 &&
        (!s->p.nbank || sim_bank_keys(s) == 0) &&
        (!s->p.ncounters || sim_counter_keys(s) == 0)) {
        for (int i = 0; i < s->p.nnodes && !s->failed; i++) {
            struct sim_node *n = &s->nodes[i];
            n->sim = s;
            n->idx = i;
            n->id = (uint32_t)i + 1;
            snprintf(n->dir, sizeof(n->dir), "sim%d", i + 1);
            n->tick_period = REPLICA_TICK_MS;
            if (s->p.drift) {
                n->tick_period = sim_range(&s->rng, REPLICA_TICK_MS - 2,
                                           REPLICA_TICK_MS + 2);
                n->wall_skew = (int64_t)sim_range(&s->rng, 0, 500) - 250;
            }
            sim_node_start(s, n);
        }
        sim_clients_init(s);
        s->f.next_at = sim_range(&s->rng, 300, 1000);
        s->sc_at = 1500;
    }
    while (!s->failed && s->phase != SIM_PH_DONE) {
        s->now++;
        s->sub = 0;
        if (s->now > SIM_TIME_LIMIT_MS) {
            sim_fail(s, "the seed ran past %d ms of simulated time",
                     SIM_TIME_LIMIT_MS);
            break;
        }
        sim_faults_step(s);
        scenario_step(s); /* after the faults: its partitions prevail */
        sim_nodes_restart_due(s);
        sim_nodes_tick(s);
        sim_net_deliver(s);
        sim_clients_step(s);
        phase_step(s);
        if (s->now % 100 == 0)
            for (int i = 0; i < s->p.nnodes && !s->failed; i++)
                sim_check_commits(s, &s->nodes[i]);
    }
    for (int i = 0; i < s->p.nnodes; i++) {
        s->st.snapshots += installed(&s->nodes[i]);
        s->st.lease_reads += s->nodes[i].lease_reads;
        s->st.sessions_expired += s->nodes[i].sessions_expired;
        if (s->nodes[i].rep) {
            struct replica_stats rs;
            replica_get_stats(s->nodes[i].rep, &rs);
            s->st.lease_reads += rs.lease_reads;
            s->st.sessions_expired += rs.sessions_expired;
        }
    }
    if (!s->failed && s->p.legacy_node && (uint32_t)s->p.nnodes == s->conf->replicas &&
        s->st.sessions_expired)
        sim_fail(s,
                 "legacy: %llu sessions expired while node %d, a replica of "
                 "every shard, announced no session expiry",
                 (unsigned long long)s->st.sessions_expired, s->p.legacy_node);
    int failed = s->failed;
    if (failed) {
        printf("FAIL seed=%llu scenario=%s t=%llums: %s\n",
               (unsigned long long)seed, scenario_names[scenario],
               (unsigned long long)s->now, s->why);
        printf("  replay: KV_SIM_SEED=%llu %s --scenario %s --verbose\n",
               (unsigned long long)seed, argv0, scenario_names[scenario]);
        if (s->report) {
            printf("--- lincheck report, seed %llu ---\n",
                   (unsigned long long)seed);
            lin_report_print(s->report, stdout);
            printf("--- end of report ---\n");
        }
    } else if (verbose) {
        printf("pass seed=%llu scenario=%s: %d nodes, %d shards, %llu ms, "
               "%llu events, %llu ops ok, %llu failed, %llu absent, "
               "%llu unknown, %llu crashes, %llu partitions\n",
               (unsigned long long)seed, scenario_names[scenario], s->p.nnodes,
               s->p.nshards, (unsigned long long)s->now,
               (unsigned long long)s->st.events,
               (unsigned long long)s->st.ops_ok,
               (unsigned long long)s->st.ops_failed,
               (unsigned long long)s->st.ops_absent,
               (unsigned long long)s->st.ops_unknown,
               (unsigned long long)s->st.crashes,
               (unsigned long long)s->st.partitions);
    }
    fflush(stdout);
    tot->seeds++;
    tot->sim_ms += s->now;
    if (failed)
        tot->failed++;
    else
        tot->passed++;
    add_stats(&tot->st, &s->st);
    free_sim(s);
    free(s);
    return failed;
}

/* --- main ----------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: sim [--seeds N] [--seed S] [--steps N] [--scenario "
                    "random|leader-crash|snapshot|restart|stale-tail|bank|"
                    "counter|all] "
                    "[--verbose [--verbose]]\n"
                    "  env KV_SIM_SEED=S replays exactly seed S\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

static double elapsed_s(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) +
           (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

int main(int argc, char **argv)
{
    uint64_t nseeds = DEFAULT_SEEDS, one = 0, max_events = DEFAULT_MAX_EVENTS;
    bool have_one = false, have_seeds = false, replay = false;
    int verbose = 0;
    int scenario = SC_ALL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--seeds") == 0 && parse_u64(v, &nseeds) == 0) {
            have_seeds = true;
            i++;
        } else if (strcmp(a, "--seed") == 0 && parse_u64(v, &one) == 0) {
            have_one = true;
            i++;
        } else if (strcmp(a, "--steps") == 0 &&
                   parse_u64(v, &max_events) == 0 && max_events > 0) {
            i++;
        } else if (strcmp(a, "--scenario") == 0 && v) {
            scenario = -1;
            for (int k = 0; k <= SC_ALL; k++)
                if (strcmp(v, scenario_names[k]) == 0)
                    scenario = k;
            if (scenario < 0) {
                usage();
                return 2;
            }
            i++;
        } else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
            verbose++;
        } else {
            usage();
            return 2;
        }
    }
    const char *env = getenv("KV_SIM_SEED");
    if (env && *env) {
        if (parse_u64(env, &one) != 0) {
            fprintf(stderr, "sim: KV_SIM_SEED must be a number\n");
            return 2;
        }
        have_one = true;
        replay = true;
    }
    log_setup(LOG_OFF, NULL);
    /* One registry of the built-in procedures for every node of every
     * seed: it holds no state between calls. */
    struct proc_registry *procs = NULL;
    char perr[256] = "";
    if (proc_registry_open(NULL, 0, &procs, perr, sizeof(perr)) != KV_OK) {
        fprintf(stderr, "sim: cannot open the procedure registry: %s\n",
                perr);
        return 1;
    }

    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct totals tot;
    memset(&tot, 0, sizeof(tot));
    /* --seed S: seed S only; with --seeds N: N seeds from S on */
    uint64_t first = have_one ? one : 1;
    uint64_t count = have_one && (replay || !have_seeds) ? 1 : nseeds;
    for (int sc = 0; sc < SC_COUNT; sc++) {
        if (scenario != SC_ALL && scenario != sc)
            continue;
        uint64_t n = count;
        if (scenario == SC_ALL && n > directed_seeds[sc])
            n = directed_seeds[sc];
        for (uint64_t k = 0; k < n; k++) {
            run_seed(first + k, sc, max_events, verbose, argv[0], procs,
                     &tot);
            if (tot.seeds % 100 == 0)
                printf("sim: %llu seeds run, %llu failed, %.1f s\n",
                       (unsigned long long)tot.seeds,
                       (unsigned long long)tot.failed, elapsed_s(&t0));
        }
    }
    printf("sim: %llu seeds, %.1f s simulated, %llu events; ops: %llu ok, "
           "%llu failed conditions, %llu absent, %llu unknown, %llu reads "
           "given up; faults: %llu crashes (%llu on store errors), "
           "%llu partitions, %llu pauses, %llu loss storms, %llu messages "
           "lost, %llu duplicated, %llu graceful stops; %llu scans; "
           "%llu snapshots installed; %llu reads under a leader lease; "
           "%llu sessions expired\n",
           (unsigned long long)tot.seeds, (double)tot.sim_ms / 1000.0,
           (unsigned long long)tot.st.events, (unsigned long long)tot.st.ops_ok,
           (unsigned long long)tot.st.ops_failed,
           (unsigned long long)tot.st.ops_absent,
           (unsigned long long)tot.st.ops_unknown,
           (unsigned long long)tot.st.reads_dropped,
           (unsigned long long)tot.st.crashes, (unsigned long long)tot.st.eio,
           (unsigned long long)tot.st.partitions,
           (unsigned long long)tot.st.pauses, (unsigned long long)tot.st.storms,
           (unsigned long long)tot.st.lost,
           (unsigned long long)tot.st.duplicated,
           (unsigned long long)tot.st.stops, (unsigned long long)tot.st.scans,
           (unsigned long long)tot.st.snapshots,
           (unsigned long long)tot.st.lease_reads,
           (unsigned long long)tot.st.sessions_expired);
    if (tot.st.bank_seeds)
        printf("sim: bank (%llu seeds): transfers %llu committed, %llu "
               "conflicted, %llu unknown, %llu skipped (too little); audits "
               "%llu committed, %llu conflicted, %llu unknown; %llu ops "
               "given up while reading; %llu failpoint crashes, %llu "
               "crashes of a transaction's node; %llu tombstones collected "
               "in %llu seeds\n",
               (unsigned long long)tot.st.bank_seeds,
               (unsigned long long)tot.st.transfers_ok,
               (unsigned long long)tot.st.transfers_conflict,
               (unsigned long long)tot.st.transfers_unknown,
               (unsigned long long)tot.st.transfers_skipped,
               (unsigned long long)tot.st.audits_ok,
               (unsigned long long)tot.st.audits_conflict,
               (unsigned long long)tot.st.audits_unknown,
               (unsigned long long)tot.st.bank_dropped,
               (unsigned long long)tot.st.fp_crashes,
               (unsigned long long)tot.st.inflight_crashes,
               (unsigned long long)tot.st.tombstones,
               (unsigned long long)tot.st.tomb_gc_seeds);
    if (tot.st.counter_seeds)
        printf("sim: counter (%llu seeds): incrs %llu acknowledged, %llu "
               "unknown; answers retried: %llu unavailable, %llu timed out "
               "in a leader's queue; %llu late answers matched the first; "
               "gets %llu (%llu absent), %llu given up; puts %llu "
               "acknowledged, %llu refused (condition), %llu unknown\n",
               (unsigned long long)tot.st.counter_seeds,
               (unsigned long long)tot.st.incr_ok,
               (unsigned long long)tot.st.incr_unknown,
               (unsigned long long)tot.st.incr_unavailable,
               (unsigned long long)tot.st.incr_timedout,
               (unsigned long long)tot.st.incr_late,
               (unsigned long long)tot.st.cget_ok,
               (unsigned long long)tot.st.cget_absent,
               (unsigned long long)tot.st.cget_dropped,
               (unsigned long long)tot.st.cput_ok,
               (unsigned long long)tot.st.cput_failed,
               (unsigned long long)tot.st.cput_unknown);
    proc_registry_close(procs);
    printf("elapsed %.1f s\n", elapsed_s(&t0));
    printf("%llu passed, %llu failed\n", (unsigned long long)tot.passed,
           (unsigned long long)tot.failed);
    return tot.failed ? 1 : 0;
}
