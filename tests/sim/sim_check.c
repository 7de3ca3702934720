/*
 * sim_check - the safety and convergence checks of the simulator.
 *
 * Besides raft_check_invariants() (run on every node after every event by
 * sim_world.c), the simulator checks what no single node can see:
 *   - election safety: at most one leader per shard and term;
 *   - commit safety: every node's committed log entries (read back from its
 *     store) agree, index by index, with what any other node committed;
 *   - exactly-once: a value (written once by its client) is only ever seen
 *     with one version;
 *   - convergence: once healed, every member of a shard applies the same
 *     index and then holds byte-identical data, sessions and shard state;
 *   - durability: every acknowledged write is visible after the faults (its
 *     value or a later one), and the stores hold what the final reads saw;
 *   - linearizability of the whole history (tests/lincheck).
 * The store is read through store.h on the node's own open handle: the
 * simulation is single-threaded, so between events it is quiescent.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "kv.h"
#include "lincheck.h"
#include "replica.h"
#include "sim.h"
#include "store.h"
#include "store_sim.h"

#define HS_LEN 36    /* replica.c: term, vote, commit, snap index/term */
#define REC_TAG 0x01 /* engine.c: a record is tag, version, value */
#define REC_HDR 9

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void shard_prefix(unsigned char *k, char tag, uint32_t shard)
{
    k[0] = (unsigned char)tag;
    put_u32(k + 1, shard);
}

static bool is_member(const struct sim *s, uint32_t shard, int idx)
{
    for (uint32_t r = 0; r < s->conf->replicas; r++)
        if ((int)conf_replica(s->conf, shard, r) == idx)
            return true;
    return false;
}

uint64_t sim_store_applied(struct sim_node *n, uint32_t shard)
{
    unsigned char k[5];
    void *v = NULL;
    size_t vlen = 0;
    uint64_t applied = 0;
    shard_prefix(k, 'A', shard);
    if (n->store && store_get(n->store, k, sizeof(k), &v, &vlen) == KV_OK &&
        vlen >= 8)
        applied = get_u64(v);
    free(v);
    return applied;
}

int sim_store_hardstate(struct sim_node *n, uint32_t shard, uint64_t *term,
                        uint64_t *commit, uint64_t *snap_index)
{
    unsigned char k[5];
    void *v = NULL;
    size_t vlen = 0;
    shard_prefix(k, 'H', shard);
    *term = *commit = *snap_index = 0;
    if (!n->store)
        return -1;
    int rc = store_get(n->store, k, sizeof(k), &v, &vlen);
    if (rc == KV_ENOTFOUND)
        return 0;
    if (rc != KV_OK || vlen != HS_LEN) {
        free(v);
        return -1;
    }
    const unsigned char *p = v;
    *term = get_u64(p);
    *commit = get_u64(p + 12);
    *snap_index = get_u64(p + 20);
    free(v);
    return 0;
}

/* --- election safety --------------------------------------------------------
 */

static void note_leader(struct sim *s, uint32_t shard, uint64_t term,
                        uint32_t id)
{
    struct sim_track *t = &s->track[shard];
    for (size_t i = t->nl; i-- > 0;) {
        if (t->lterm[i] != term)
            continue;
        if (t->lid[i] != id)
            sim_fail(s,
                     "election safety: shard %u has two leaders in term "
                     "%llu: nodes %u and %u",
                     shard, (unsigned long long)term, t->lid[i], id);
        return;
    }
    if (t->nl == t->lcap) {
        size_t cap = t->lcap ? t->lcap * 2 : 32;
        uint64_t *a = realloc(t->lterm, cap * sizeof(*a));
        if (!a) {
            sim_fail(s, "out of memory (leaders)");
            return;
        }
        t->lterm = a;
        uint32_t *b = realloc(t->lid, cap * sizeof(*b));
        if (!b) {
            sim_fail(s, "out of memory (leaders)");
            return;
        }
        t->lid = b;
        t->lcap = cap;
    }
    t->lterm[t->nl] = term;
    t->lid[t->nl] = id;
    t->nl++;
}

void sim_check_leaders(struct sim *s, struct sim_node *n)
{
    Kv__StatusResult st = KV__STATUS_RESULT__INIT;
    if (replica_status(n->rep, &st) != KV_OK) {
        sim_fail(s, "node %u: replica_status failed", n->id);
        replica_status_free(&st);
        return;
    }
    for (size_t i = 0; i < st.n_shard_info; i++) {
        const Kv__ShardInfo *si = st.shard_info[i];
        if (si->local && si->role && strcmp(si->role, "leader") == 0)
            note_leader(s, si->shard, si->term, n->id);
    }
    replica_status_free(&st);
}

/* --- clocks ------------------------------------------------------------------
 */

void sim_check_clocks(struct sim *s, bool final)
{
    for (int i = 0; i < s->p.nnodes && !s->failed; i++) {
        struct sim_node *n = &s->nodes[i];
        if (!n->rep)
            continue;
        for (int j = 0; j < s->p.nnodes && !s->failed; j++) {
            const struct sim_node *m = &s->nodes[j];
            int64_t ahead;
            uint32_t readings;
            if (j == i || !replica_peer_clock(n->rep, m->id, &ahead, &readings))
                continue;
            /* Every batch takes at least 1 ms, and the wall clocks differ
             * by their fixed skews only (a jump moves all of them). */
            int64_t skew = m->wall_skew - n->wall_skew;
            if (ahead >= skew)
                sim_fail(s,
                         "clocks: node %u reads node %u's clock as %lld ms "
                         "ahead, more than its skew of %lld ms",
                         n->id, m->id, (long long)ahead, (long long)skew);
            /* At the end the network is healthy: of the batches that came
             * at 20 or more ticks of the last seconds (not all in one
             * burst after a pause), some took at most 5 x delay_max. */
            int64_t slack = 5 * (int64_t)s->p.delay_max + 1;
            if (final && readings >= 20 && ahead < skew - slack)
                sim_fail(s,
                         "clocks: node %u reads node %u's clock as %lld ms "
                         "ahead, its skew is %lld ms",
                         n->id, m->id, (long long)ahead, (long long)skew);
        }
    }
}

/* --- commit safety -------------------------------------------------------- */

static uint64_t hash_entry(uint32_t type, const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 1469598103934665603ull ^ type;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h | 1; /* never 0: 0 means "not seen" */
}

static int track_reserve(struct sim *s, struct sim_track *t, uint64_t index)
{
    if (index < t->cap)
        return 0;
    size_t cap = t->cap ? t->cap : 1024;
    while (cap <= index)
        cap *= 2;
    uint64_t *a = realloc(t->term, cap * sizeof(*a));
    if (!a)
        goto nomem;
    t->term = a;
    uint64_t *b = realloc(t->hash, cap * sizeof(*b));
    if (!b)
        goto nomem;
    t->hash = b;
    memset(t->term + t->cap, 0, (cap - t->cap) * sizeof(*a));
    memset(t->hash + t->cap, 0, (cap - t->cap) * sizeof(*b));
    t->cap = cap;
    return 0;
nomem:
    sim_fail(s, "out of memory (commit tracking)");
    return -1;
}

void sim_check_commits(struct sim *s, struct sim_node *n)
{
    for (int sh = 0; sh < s->p.nshards && !s->failed && n->store; sh++) {
        uint32_t shard = (uint32_t)sh;
        if (!is_member(s, shard, n->idx))
            continue;
        uint64_t term, commit, snap;
        if (sim_store_hardstate(n, shard, &term, &commit, &snap) != 0) {
            sim_fail(s, "node %u shard %u: unreadable hard state", n->id,
                     shard);
            return;
        }
        uint64_t from = n->verified[sh] > snap ? n->verified[sh] : snap;
        struct sim_track *t = &s->track[sh];
        if (commit > from && track_reserve(s, t, commit) != 0)
            return;
        for (uint64_t i = from + 1; i <= commit; i++) {
            unsigned char k[13];
            shard_prefix(k, 'L', shard);
            for (int b = 0; b < 8; b++)
                k[5 + b] = (unsigned char)(i >> (56 - 8 * b));
            void *v = NULL;
            size_t vlen = 0;
            int rc = store_get(n->store, k, sizeof(k), &v, &vlen);
            if (rc != KV_OK) {
                sim_fail(s,
                         "node %u shard %u: committed entry %llu is not "
                         "in its log (commit %llu, snapshot %llu): %s",
                         n->id, shard, (unsigned long long)i,
                         (unsigned long long)commit, (unsigned long long)snap,
                         kv_strerror(rc));
                return;
            }
            Kv__LogEntry *le = kv__log_entry__unpack(NULL, vlen, v);
            free(v);
            if (!le || le->index != i || le->term == 0) {
                sim_fail(s, "node %u shard %u: log entry %llu is corrupt",
                         n->id, shard, (unsigned long long)i);
                if (le)
                    kv__log_entry__free_unpacked(le, NULL);
                return;
            }
            uint64_t h = hash_entry(le->type, le->data.data, le->data.len);
            uint64_t et = le->term;
            kv__log_entry__free_unpacked(le, NULL);
            if (!t->term[i]) {
                t->term[i] = et;
                t->hash[i] = h;
            } else if (t->term[i] != et || t->hash[i] != h) {
                sim_fail(s,
                         "commit safety: shard %u index %llu: node %u "
                         "committed an entry of term %llu, another node "
                         "one of term %llu%s",
                         shard, (unsigned long long)i, n->id,
                         (unsigned long long)et, (unsigned long long)t->term[i],
                         t->term[i] == et ? " (same term, other content)" : "");
                return;
            }
        }
        if (commit > n->verified[sh])
            n->verified[sh] = commit;
    }
}

/* --- the stored log ------------------------------------------------------- */

void sim_check_store_log(struct sim *s, struct sim_node *n, const char *when)
{
    if (!n->store)
        return;
    struct store_iter *it = store_iter_new(n->store);
    if (!it) {
        sim_fail(s, "out of memory (store iterator)");
        return;
    }
    for (int sh = 0; sh < s->p.nshards && !s->failed; sh++) {
        uint32_t shard = (uint32_t)sh;
        if (!is_member(s, shard, n->idx))
            continue;
        uint64_t term, commit, snap, snap_term = 0;
        unsigned char hk[5];
        void *hv = NULL;
        size_t hlen = 0;
        shard_prefix(hk, 'H', shard);
        if (store_get(n->store, hk, sizeof(hk), &hv, &hlen) == KV_OK &&
            hlen == HS_LEN)
            snap_term = get_u64((unsigned char *)hv + 28);
        free(hv);
        if (sim_store_hardstate(n, shard, &term, &commit, &snap) != 0)
            continue; /* reported by the commit check */
        unsigned char k[13];
        shard_prefix(k, 'L', shard);
        for (int b = 0; b < 8; b++)
            k[5 + b] = (unsigned char)((snap + 1) >> (56 - 8 * b));
        uint64_t expect = snap + 1, prev_term = snap_term;
        for (store_iter_seek(it, k, sizeof(k)); store_iter_valid(it);
             store_iter_next(it)) {
            size_t klen, vlen;
            const unsigned char *key = store_iter_key(it, &klen);
            if (klen != 13 || memcmp(key, k, 5) != 0)
                break;
            const void *val = store_iter_value(it, &vlen);
            Kv__LogEntry *le = kv__log_entry__unpack(NULL, vlen, val);
            uint64_t idx = get_u64(key + 5);
            uint64_t et = le ? le->term : 0;
            if (le)
                kv__log_entry__free_unpacked(le, NULL);
            const char *bad = !le              ? "an undecodable entry"
                              : idx != expect  ? "a gap"
                              : et < prev_term ? "a term that decreases "
                                                 "(entries of two logs)"
                              : et > term      ? "a term from the future"
                                               : NULL;
            if (bad) {
                sim_fail(s,
                         "stored log (%s): node %u shard %u has %s at "
                         "index %llu (term %llu after term %llu; "
                         "snapshot %llu term %llu, commit %llu, hard "
                         "state term %llu)",
                         when, n->id, shard, bad, (unsigned long long)idx,
                         (unsigned long long)et, (unsigned long long)prev_term,
                         (unsigned long long)snap,
                         (unsigned long long)snap_term,
                         (unsigned long long)commit, (unsigned long long)term);
                break;
            }
            prev_term = et;
            expect++;
        }
    }
    store_iter_free(it);
}

/* --- exactly-once --------------------------------------------------------- */

void sim_check_value_version(struct sim *s, uint64_t value, uint64_t version)
{
    if (value == 0)
        return;
    if ((s->vv_n + 1) * 2 > s->vv_cap) {
        size_t cap = s->vv_cap ? s->vv_cap * 2 : 1024;
        uint64_t *k = calloc(cap, sizeof(*k));
        uint64_t *v = calloc(cap, sizeof(*v));
        if (!k || !v) {
            free(k);
            free(v);
            sim_fail(s, "out of memory (values)");
            return;
        }
        for (size_t i = 0; i < s->vv_cap; i++) {
            if (!s->vv_key[i])
                continue;
            size_t j =
                (size_t)(s->vv_key[i] * 0x9e3779b97f4a7c15ull) & (cap - 1);
            while (k[j])
                j = (j + 1) & (cap - 1);
            k[j] = s->vv_key[i];
            v[j] = s->vv_ver[i];
        }
        free(s->vv_key);
        free(s->vv_ver);
        s->vv_key = k;
        s->vv_ver = v;
        s->vv_cap = cap;
    }
    size_t j = (size_t)(value * 0x9e3779b97f4a7c15ull) & (s->vv_cap - 1);
    while (s->vv_key[j] && s->vv_key[j] != value)
        j = (j + 1) & (s->vv_cap - 1);
    if (!s->vv_key[j]) {
        s->vv_key[j] = value;
        s->vv_ver[j] = version;
        s->vv_n++;
    } else if (s->vv_ver[j] != version) {
        sim_fail(s,
                 "exactly-once: value %llu (client %llu, write %llu) was "
                 "seen with versions %llu and %llu: a write applied twice",
                 (unsigned long long)value,
                 (unsigned long long)(value >> 40) - 1,
                 (unsigned long long)(value & ((1ull << 40) - 1)),
                 (unsigned long long)s->vv_ver[j], (unsigned long long)version);
    }
}

/* --- convergence ---------------------------------------------------------- */

bool sim_converged(struct sim *s, bool report)
{
    for (int sh = 0; sh < s->p.nshards; sh++) {
        uint64_t first = 0;
        bool have = false;
        char list[256] = "";
        size_t used = 0;
        bool same = true;
        for (int i = 0; i < s->p.nnodes; i++) {
            if (!is_member(s, (uint32_t)sh, i))
                continue;
            struct sim_node *n = &s->nodes[i];
            uint64_t a = n->rep ? sim_store_applied(n, (uint32_t)sh) : 0;
            if (!n->rep)
                same = false;
            if (!have) {
                first = a;
                have = true;
            } else if (a != first) {
                same = false;
            }
            if (used < sizeof(list)) {
                int w = snprintf(
                    list + used, sizeof(list) - used, " node %u: %llu%s", n->id,
                    (unsigned long long)a, n->rep ? "" : " (down)");
                if (w > 0)
                    used += (size_t)w;
            }
        }
        if (!same || first == 0) {
            if (report)
                sim_fail(s,
                         "liveness: the replicas of shard %d did not "
                         "converge after the heal; applied:%s",
                         sh, list);
            return false;
        }
    }
    return true;
}

/* --- the end of a seed ---------------------------------------------------- */

static void check_digests(struct sim *s)
{
    const char tags[6] = {'D', 'S', 'A', 'I', 'P', 'X'};
    const char *names[6] = {"data",
                            "sessions",
                            "shard state",
                            "intents",
                            "participant records (tombstones)",
                            "transaction records"};
    for (int sh = 0; sh < s->p.nshards && !s->failed; sh++) {
        for (int t = 0; t < 6 && !s->failed; t++) {
            unsigned char p[5];
            shard_prefix(p, tags[t], (uint32_t)sh);
            uint64_t first = 0;
            int first_node = -1;
            for (int i = 0; i < s->p.nnodes; i++) {
                if (!is_member(s, (uint32_t)sh, i))
                    continue;
                uint64_t d = store_sim_digest(s->nodes[i].dir, p, sizeof(p));
                if (first_node < 0) {
                    first = d;
                    first_node = i;
                } else if (d != first) {
                    sim_fail(s,
                             "divergence: shard %d's %s differ between "
                             "nodes %d and %d at applied index %llu",
                             sh, names[t], first_node + 1, i + 1,
                             (unsigned long long)sim_store_applied(
                                 &s->nodes[i], (uint32_t)sh));
                }
            }
        }
    }
}

int sim_store_record(struct sim_node *n, uint32_t shard, const void *key,
                     size_t klen, void **val, size_t *vlen, uint64_t *version)
{
    unsigned char k[5 + SIM_KEY_MAX];
    *val = NULL;
    *vlen = 0;
    *version = 0;
    if (klen > SIM_KEY_MAX)
        return KV_EINVAL;
    shard_prefix(k, 'D', shard);
    memcpy(k + 5, key, klen);
    void *v = NULL;
    size_t len = 0;
    int rc = store_get(n->store, k, 5 + klen, &v, &len);
    if (rc != KV_OK)
        return rc;
    const unsigned char *p = v;
    if (!p || len < REC_HDR || p[0] != REC_TAG) {
        free(v);
        return KV_ECORRUPT;
    }
    *version = get_u64(p + 1);
    *vlen = len - REC_HDR;
    memmove(v, p + REC_HDR, *vlen);
    *val = v;
    return KV_OK;
}

/* Reads user KEY of SHARD from node N's store. Returns 1 (present), 0
 * (absent) or -1 (corrupt). */
static int read_record(struct sim_node *n, uint32_t shard, const void *key,
                       size_t klen, uint64_t *value, uint64_t *version,
                       bool *valid)
{
    void *v = NULL;
    size_t vlen = 0;
    int rc = sim_store_record(n, shard, key, klen, &v, &vlen, version);
    if (rc == KV_ENOTFOUND)
        return 0;
    if (rc != KV_OK)
        return -1;
    *valid = sim_value_decode(v, vlen, value) == 0;
    free(v);
    return 1;
}

/* The stores hold what the last final read of each key returned, and each
 * acknowledged bulk write. */
static void check_stores(struct sim *s)
{
    for (int k = 0; k < s->p.nkeys && !s->failed; k++) {
        for (int i = 0; i < s->p.nnodes && !s->failed; i++) {
            if (!is_member(s, s->kshard[k], i))
                continue;
            uint64_t value = 0, version = 0;
            bool valid = false;
            int rc = read_record(&s->nodes[i], s->kshard[k], s->keys[k],
                                 s->klen[k], &value, &version, &valid);
            if (rc < 0 || (rc == 1 && !valid)) {
                sim_fail(s, "node %d: the record of key %s is corrupt", i + 1,
                         s->keys[k]);
            } else if ((rc == 1) != s->final_present[k] ||
                       (rc == 1 && (value != s->final_value[k] ||
                                    version != s->final_version[k]))) {
                sim_fail(s,
                         "node %d holds key %s as %s v=%llu value=%llu, "
                         "the final read returned %s v=%llu value=%llu",
                         i + 1, s->keys[k], rc ? "present" : "absent",
                         (unsigned long long)version, (unsigned long long)value,
                         s->final_present[k] ? "present" : "absent",
                         (unsigned long long)s->final_version[k],
                         (unsigned long long)s->final_value[k]);
            }
        }
    }
    size_t nops = lin_count(s->hist);
    for (size_t j = 0; j < nops && !s->failed; j++) {
        const struct lin_op *op = lin_get(s->hist, j);
        if (op->key < SIM_BULK_KEY_BASE || op->outcome == LIN_OUT_FAILED)
            continue;
        char key[SIM_KEY_MAX];
        int klen =
            snprintf(key, sizeof(key), "{%s}bulk%llu", s->tags[s->sc_shard],
                     (unsigned long long)(op->key - SIM_BULK_KEY_BASE));
        for (int i = 0; i < s->p.nnodes && !s->failed; i++) {
            if (!is_member(s, (uint32_t)s->sc_shard, i))
                continue;
            uint64_t value = 0, version = 0;
            bool valid = false;
            int rc = read_record(&s->nodes[i], (uint32_t)s->sc_shard, key,
                                 (size_t)klen, &value, &version, &valid);
            bool ok = op->outcome == LIN_OUT_OK
                          ? rc == 1 && valid && value == op->value &&
                                version == op->out_version
                          : rc == 0 || (rc == 1 && valid && value == op->value);
            if (!ok)
                sim_fail(s,
                         "node %d: bulk key %s (write %s v=%llu) is %s "
                         "v=%llu in its store",
                         i + 1, key,
                         op->outcome == LIN_OUT_OK ? "acknowledged" : "unknown",
                         (unsigned long long)op->out_version,
                         rc == 1   ? "present"
                         : rc == 0 ? "absent"
                                   : "corrupt",
                         (unsigned long long)version);
        }
    }
}

/* The writes a cut-off leader took (stale-tail scenario) never commit: no
 * store may hold one of them. */
static void check_ghosts(struct sim *s)
{
    uint32_t sh = (uint32_t)s->sc_shard;
    for (uint64_t g = 0; g < s->sc_ghosts && !s->failed; g++) {
        char key[SIM_KEY_MAX];
        int klen = snprintf(key, sizeof(key), "{%s}g%llu", s->tags[sh],
                            (unsigned long long)g);
        for (int i = 0; i < s->p.nnodes && !s->failed; i++) {
            if (!is_member(s, sh, i))
                continue;
            uint64_t value = 0, version = 0;
            bool valid = false;
            if (read_record(&s->nodes[i], sh, key, (size_t)klen, &value,
                            &version, &valid) != 0)
                sim_fail(s,
                         "node %d stores %s, a write that was never "
                         "committed (version %llu)",
                         i + 1, key, (unsigned long long)version);
        }
    }
}

/* Every write acknowledged before the final phase is visible to the first
 * final read: its value, a later one, or absent after a later delete. */
static void check_acknowledged(struct sim *s)
{
    for (size_t j = 0; j < s->hist_before_final && !s->failed; j++) {
        const struct lin_op *w = lin_get(s->hist, j);
        if (w->key >= SIM_MAX_KEYS || w->outcome != LIN_OUT_OK ||
            (w->kind != LIN_WRITE && w->kind != LIN_CAS &&
             w->kind != LIN_INSERT))
            continue;
        uint64_t k = w->key;
        if (s->first_present[k]) {
            if (s->first_version[k] < w->out_version ||
                (s->first_version[k] == w->out_version &&
                 s->first_value[k] != w->value))
                sim_fail(s,
                         "durability: key %s: the write of value %llu "
                         "(version %llu, client %d) was acknowledged, "
                         "the state after the heal is value %llu "
                         "version %llu",
                         s->keys[k], (unsigned long long)w->value,
                         (unsigned long long)w->out_version, w->client,
                         (unsigned long long)s->first_value[k],
                         (unsigned long long)s->first_version[k]);
            continue;
        }
        bool deleted = false;
        for (size_t d = 0; d < s->hist_before_final && !deleted; d++) {
            const struct lin_op *o = lin_get(s->hist, d);
            deleted =
                o->key == k && o->kind == LIN_DELETE &&
                (o->outcome == LIN_OUT_OK || o->outcome == LIN_OUT_UNKNOWN) &&
                o->ret > w->call;
        }
        if (!deleted)
            sim_fail(s,
                     "durability: key %s: the write of value %llu "
                     "(version %llu, client %d) was acknowledged, the key "
                     "is absent after the heal and no delete could "
                     "explain it",
                     s->keys[k], (unsigned long long)w->value,
                     (unsigned long long)w->out_version, w->client);
    }
}

static void check_history(struct sim *s)
{
    struct lin_budget b = {.max_states = 20000000, .max_ms = 60000};
    struct lin_report *rep = calloc(1, sizeof(*rep));
    if (!rep) {
        sim_fail(s, "out of memory (lincheck report)");
        return;
    }
    int v = lin_check(s->hist, &b, rep);
    if (v == LIN_VIOLATION) {
        sim_fail(s,
                 "linearizability: the history of key %llu has no valid "
                 "order (%zu ops checked; report below)",
                 (unsigned long long)rep->key, rep->ops);
        s->report = rep; /* printed after the failure line */
        return;
    }
    if (v == LIN_UNKNOWN)
        sim_fail(s,
                 "linearizability undecided: the checker's budget ran "
                 "out on key %llu (%zu ops)",
                 (unsigned long long)rep->unknown_key, rep->ops);
    else if (v != LIN_OK)
        sim_fail(s, "lin_check failed: out of memory");
    lin_report_release(rep);
    free(rep);
}

/* With the legacy node a replica of every shard, no leader may date a
 * session: no stored session record has the date flag (bit 63 of its
 * seq) on any node. */
static void check_legacy_sessions(struct sim *s)
{
    if (!s->p.legacy_node || (uint32_t)s->p.nnodes != s->conf->replicas)
        return;
    for (int i = 0; i < s->p.nnodes && !s->failed; i++) {
        struct sim_node *n = &s->nodes[i];
        struct store_iter *it = n->store ? store_iter_new(n->store) : NULL;
        if (!it)
            continue;
        for (int sh = 0; sh < s->p.nshards && !s->failed; sh++) {
            unsigned char k[5];
            shard_prefix(k, 'S', (uint32_t)sh);
            for (store_iter_seek(it, k, sizeof(k)); store_iter_valid(it);
                 store_iter_next(it)) {
                size_t klen, vlen;
                const unsigned char *key = store_iter_key(it, &klen);
                if (klen < sizeof(k) || memcmp(key, k, sizeof(k)) != 0)
                    break;
                const unsigned char *v = store_iter_value(it, &vlen);
                if (vlen > 0 && (v[0] & 0x80)) {
                    sim_fail(s,
                             "legacy: node %u holds a dated session of "
                             "shard %d while node %d announced no session "
                             "expiry",
                             n->id, sh, s->p.legacy_node);
                    break;
                }
            }
        }
        store_iter_free(it);
    }
}

void sim_check_final(struct sim *s)
{
    for (int i = 0; i < s->p.nnodes && !s->failed; i++)
        sim_check_commits(s, &s->nodes[i]);
    for (int i = 0; i < s->p.nnodes && !s->failed; i++)
        sim_check_store_log(s, &s->nodes[i], "at the end");
    if (!s->failed)
        check_digests(s);
    if (!s->failed)
        check_stores(s);
    if (!s->failed)
        check_ghosts(s);
    if (!s->failed)
        check_acknowledged(s);
    if (!s->failed)
        check_history(s);
    if (!s->failed)
        check_legacy_sessions(s);
    if (!s->failed)
        sim_check_clocks(s, true);
}

void sim_check_free(struct sim *s)
{
    for (int i = 0; i < SIM_MAX_SHARDS; i++) {
        free(s->track[i].term);
        free(s->track[i].hash);
        free(s->track[i].lterm);
        free(s->track[i].lid);
        s->track[i] = (struct sim_track){0};
    }
    free(s->vv_key);
    free(s->vv_ver);
    s->vv_key = s->vv_ver = NULL;
    if (s->report) {
        lin_report_release(s->report);
        free(s->report);
        s->report = NULL;
    }
    s->vv_cap = s->vv_n = 0;
}
