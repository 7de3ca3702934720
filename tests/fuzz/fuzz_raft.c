/*
 * fuzz_raft - Raft messages (and every other input) into one raft.c
 * instance, driven the way replica.c drives it.
 *
 * The input first describes the instance: its group (1 to 5 members, this
 * one is id 1), its options and what storage handed back at start (hard
 * state, snapshot point, stored entries, applied index, whether it was
 * rebuilt and must wait for a leader; raft_new refuses impossible ones). Then
 * it is a program of operations: ticks, messages (any type, sender, term,
 * index, entries...), proposals, read requests, compaction, leadership
 * transfer, campaigns, snapshot reports, peer restarts and queries. After each
 * operation the harness is the driver: it takes the Ready, "persists" its hard
 * state and entries into a model of the stored log, "applies" the committed
 * entries, and advances (an operation may also hold a Ready back while more
 * input arrives, as the replica does between raft_ready and raft_advance).
 *
 * Findings besides crashes, leaks and undefined behaviour: a broken
 * raft_check_invariants() after any operation; a Ready that breaks its
 * contract: entries to store that are not consecutive, committed entries
 * that do not follow the applied index, go past the commit index or
 * differ from what was stored at their index (or were never stored), a
 * snapshot that does not move the state forward, a message not from this
 * replica or to a non-member.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "log.h"
#include "raft.h"

#define MAX_OPS 2048
#define MODEL_MAX 4096 /* indices the stored-log model follows */

struct stored {
    bool present;
    uint64_t term;
    uint64_t hash;
};

struct harness {
    struct raft *r;
    uint32_t npeers;
    struct stored log[MODEL_MAX + 1];
    uint64_t applied; /* what the "state machine" reflects */
    uint64_t commit;  /* the hard state's commit, as stored */
    bool holding;     /* a Ready is out, not advanced yet */
    struct raft_ready rd;
};

static uint64_t hash_entry(const struct raft_entry *e)
{
    uint64_t h = 1469598103934665603ull ^ e->type;
    const unsigned char *p = e->data;
    for (size_t i = 0; i < e->len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return (h ^ e->len) * 1099511628211ull;
}

static void store_entry(struct harness *h, const struct raft_entry *e)
{
    if (e->index == 0 || e->index > MODEL_MAX)
        return;
    h->log[e->index] = (struct stored){
        .present = true, .term = e->term, .hash = hash_entry(e)};
}

static void drop_stored(struct harness *h, uint64_t from, uint64_t to)
{
    for (uint64_t i = from; i <= to && i <= MODEL_MAX; i++)
        h->log[i].present = false;
}

/* What replica_flush does with a Ready, checked against the contract. */
static void process(struct harness *h, const struct raft_ready *rd)
{
    if (rd->has_snapshot) {
        if (rd->snap_index <= h->applied || rd->snap_term == 0)
            fuzz_fail("a snapshot at %llu (term %llu) while %llu is applied",
                      (unsigned long long)rd->snap_index,
                      (unsigned long long)rd->snap_term,
                      (unsigned long long)h->applied);
        if (rd->truncate_after && !rd->n_entries)
            drop_stored(h, rd->snap_index + 1, rd->truncate_after);
        drop_stored(h, 1, rd->snap_index);
        h->applied = rd->snap_index;
    }
    if (rd->hs_changed)
        h->commit = rd->hs.commit;
    for (size_t i = 0; i < rd->n_entries; i++) {
        const struct raft_entry *e = &rd->entries[i];
        if (e->index != rd->entries[0].index + i || e->index == 0)
            fuzz_fail("entries to store are not consecutive at %zu", i);
        if (i > 0 && e->term < rd->entries[i - 1].term)
            fuzz_fail("entries to store go back in term at %llu",
                      (unsigned long long)e->index);
        store_entry(h, e);
    }
    if (rd->truncate_after && (rd->n_entries || rd->has_snapshot)) {
        uint64_t last = rd->n_entries ? rd->entries[rd->n_entries - 1].index
                                      : rd->snap_index;
        drop_stored(h, last + 1, rd->truncate_after);
    }
    for (size_t i = 0; i < rd->n_committed; i++) {
        const struct raft_entry *e = &rd->committed[i];
        if (e->index != h->applied + 1)
            fuzz_fail("committed entry %llu does not follow applied %llu",
                      (unsigned long long)e->index,
                      (unsigned long long)h->applied);
        if (e->index > rd->hs.commit)
            fuzz_fail("entry %llu handed out to apply beyond commit %llu",
                      (unsigned long long)e->index,
                      (unsigned long long)rd->hs.commit);
        if (e->index <= MODEL_MAX) {
            const struct stored *s = &h->log[e->index];
            if (!s->present)
                fuzz_fail("entry %llu is applied but was never stored",
                          (unsigned long long)e->index);
            if (s->term != e->term || s->hash != hash_entry(e))
                fuzz_fail("entry %llu applied differs from the one stored",
                          (unsigned long long)e->index);
        }
        h->applied = e->index;
    }
    for (size_t i = 0; i < rd->n_msgs; i++) {
        const struct raft_msg *m = &rd->msgs[i];
        if (m->from != 1 || m->to == 1 || m->to == RAFT_NONE ||
            m->to > h->npeers)
            fuzz_fail("a message from %u to %u (type %d)", m->from, m->to,
                      (int)m->type);
        for (size_t k = 0; k < m->n_entries; k++)
            if (m->entries[k].index != m->index + 1 + k)
                fuzz_fail("a message carries entries out of order");
    }
}

static void check(const struct harness *h)
{
    char why[300];
    if (raft_check_invariants(h->r, why, sizeof(why)) != 0)
        fuzz_fail("raft invariant broken: %s", why);
}

/* Takes and processes every Ready until there is none (bounded). */
static void drain(struct harness *h)
{
    for (int i = 0; i < 8 && !h->holding; i++) {
        struct raft_ready rd;
        if (!raft_ready(h->r, &rd))
            return;
        process(h, &rd);
        raft_advance(h->r, &rd);
        check(h);
    }
}

static uint32_t peer_id(struct harness *h, uint8_t b)
{
    return (uint32_t)(b % (h->npeers + 2)); /* 0 and npeers+1: no member */
}

/* Reads a message: every field from the input, small numbers (and with
 * flags 8 and 16 any numbers). */
static void step(struct harness *h, struct fuzz_in *in)
{
    struct raft_entry es[8];
    unsigned char data[8][32];
    struct raft_msg m = {0};
    uint8_t flags = fuzz_u8(in);
    m.type = (enum raft_msg_type)(fuzz_u8(in) % 12);
    m.from = peer_id(h, fuzz_u8(in));
    m.to = (flags & 1) ? peer_id(h, fuzz_u8(in)) : 1;
    m.term = fuzz_u8(in);
    m.log_term = fuzz_u8(in);
    m.index = fuzz_u8(in);
    m.commit = fuzz_u8(in);
    m.reject = (flags & 2) != 0;
    m.reject_hint = fuzz_u8(in);
    m.context = fuzz_u8(in);
    if (flags & 8) /* large numbers too */
        m.index = fuzz_u64(in);
    if (flags & 16) {
        m.term = fuzz_u64(in);
        m.log_term = m.term - fuzz_u8(in);
        m.commit = fuzz_u64(in);
        m.reject_hint = fuzz_u64(in);
        m.context = fuzz_u64(in);
    }
    size_t n = fuzz_u8(in) % 9;
    for (size_t k = 0; k < n; k++) {
        size_t len = fuzz_u8(in) % 33;
        size_t got = 0;
        const uint8_t *p = fuzz_bytes(in, len, &got);
        memcpy(data[k], p, got);
        uint8_t t = fuzz_u8(in);
        es[k] = (struct raft_entry){.term = (flags & 16) ? m.term - t : t,
                                    .index = (flags & 4) ? fuzz_u8(in)
                                                         : m.index + 1 + k,
                                    .type = fuzz_u8(in) % 3,
                                    .data = got ? data[k] : NULL,
                                    .len = got};
    }
    m.entries = n ? es : NULL;
    m.n_entries = n;
    int rc = raft_step(h->r, &m);
    log_msg(LOG_DEBUG, "step",
            "rc=%d type=%d from=%u to=%u term=%llu log_term=%llu index=%llu "
            "commit=%llu reject=%d hint=%llu ctx=%llu entries=%zu",
            rc, (int)m.type, m.from, m.to, (unsigned long long)m.term,
            (unsigned long long)m.log_term, (unsigned long long)m.index,
            (unsigned long long)m.commit, (int)m.reject,
            (unsigned long long)m.reject_hint, (unsigned long long)m.context,
            n);
    for (size_t k = 0; k < n; k++)
        log_msg(LOG_DEBUG, "entry", "index=%llu term=%llu type=%u len=%zu",
                (unsigned long long)es[k].index, (unsigned long long)es[k].term,
                es[k].type, es[k].len);
}

static void run_op(struct harness *h, struct fuzz_in *in)
{
    uint8_t op = fuzz_u8(in) % 12;
    uint64_t idx;
    log_msg(LOG_DEBUG, "op", "op=%u", op);
    switch (op) {
    case 0: {
        int n = 1 + fuzz_u8(in) % 32;
        for (int i = 0; i < n; i++) {
            raft_tick(h->r);
            check(h); /* each tick is an input of its own */
        }
        break;
    }
    case 1:
        step(h, in);
        break;
    case 2: {
        size_t got = 0;
        const uint8_t *p = fuzz_bytes(in, fuzz_u8(in) % 64, &got);
        raft_propose(h->r, got ? p : NULL, got, &idx);
        break;
    }
    case 3:
        raft_read_index(h->r, fuzz_u8(in));
        break;
    case 4: /* hold a Ready while more input comes */
        if (!h->holding && raft_ready(h->r, &h->rd)) {
            process(h, &h->rd);
            h->holding = true;
        }
        break;
    case 5:
        if (h->holding) {
            raft_advance(h->r, &h->rd);
            h->holding = false;
        }
        break;
    case 6:
        raft_compact(h->r, fuzz_u8(in));
        break;
    case 7:
        raft_transfer_leader(h->r, peer_id(h, fuzz_u8(in)));
        break;
    case 8:
        raft_campaign(h->r);
        break;
    case 9:
        raft_report_snapshot(h->r, peer_id(h, fuzz_u8(in)), fuzz_u8(in) & 1);
        break;
    case 10:
        raft_peer_restarted(h->r, peer_id(h, fuzz_u8(in)));
        break;
    default: {
        uint64_t term, round, commit;
        struct raft_status st;
        raft_term_at(h->r, fuzz_u8(in));
        raft_last_index(h->r);
        raft_lease(h->r, &term, &round, &commit);
        raft_awaits_leader(h->r);
        raft_get_status(h->r, &st);
        if (st.commit > st.last_index || st.applied > st.commit)
            fuzz_fail("status: applied %llu, commit %llu, last %llu",
                      (unsigned long long)st.applied,
                      (unsigned long long)st.commit,
                      (unsigned long long)st.last_index);
        break;
    }
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {.p = data, .left = size};
    static struct harness h; /* the model is large: not on the stack */
    memset(&h, 0, sizeof(h));
    uint32_t peers[5] = {1, 2, 3, 4, 5};
    uint8_t shape = fuzz_u8(&in);
    uint8_t opts = fuzz_u8(&in);
    h.npeers = 1 + shape % 5;
    struct raft_config cfg = {.id = 1,
                              .peers = peers,
                              .npeers = h.npeers,
                              .election_ticks = 10,
                              .heartbeat_ticks = 2,
                              .seed = fuzz_u8(&in),
                              .max_inflight = 1 + (opts >> 3) % 8,
                              .max_msg_bytes = 256,
                              .pre_vote = (opts & 1) != 0,
                              .check_quorum = (opts & 2) != 0,
                              .boot_quiet = (opts & 4) != 0};
    /* What storage handed back. */
    struct raft_init init = {.no_vote_until_leader = (shape & 0x40) != 0};
    struct raft_entry es[16];
    unsigned char blobs[16][16];
    if (shape & 0x80) {
        init.hs.term = fuzz_u8(&in);
        init.hs.vote = fuzz_u8(&in) % (h.npeers + 1);
        init.hs.commit = fuzz_u8(&in);
        init.snap_index = fuzz_u8(&in);
        init.snap_term = fuzz_u8(&in);
        init.applied = fuzz_u8(&in);
        size_t n = fuzz_u8(&in) % 17;
        uint64_t term = init.snap_term;
        for (size_t k = 0; k < n; k++) {
            term += fuzz_u8(&in) % 3;
            size_t got = 0;
            const uint8_t *p = fuzz_bytes(&in, fuzz_u8(&in) % 17, &got);
            memcpy(blobs[k], p, got);
            es[k] = (struct raft_entry){.term = term,
                                        .index = init.snap_index + 1 + k,
                                        .type = fuzz_u8(&in) % 2,
                                        .data = got ? blobs[k] : NULL,
                                        .len = got};
        }
        init.entries = n ? es : NULL;
        init.n_entries = n;
    }
    h.r = raft_new(&cfg, &init);
    if (!h.r)
        return 0; /* an impossible stored state: refused, as it should be */
    for (size_t k = 0; k < init.n_entries; k++)
        store_entry(&h, &init.entries[k]);
    h.applied = init.applied > init.snap_index ? init.applied : init.snap_index;
    h.commit = init.hs.commit;
    check(&h);
    for (int i = 0; i < MAX_OPS && in.left; i++) {
        run_op(&h, &in);
        if (log_enabled(LOG_DEBUG)) {
            struct raft_status st;
            raft_get_status(h.r, &st);
            log_msg(LOG_DEBUG, "status",
                    "role=%d term=%llu leader=%u commit=%llu applied=%llu "
                    "last=%llu",
                    (int)st.role, (unsigned long long)st.term, st.leader,
                    (unsigned long long)st.commit,
                    (unsigned long long)st.applied,
                    (unsigned long long)st.last_index);
        }
        check(&h);
        drain(&h);
    }
    if (h.holding) {
        raft_advance(h.r, &h.rd);
        h.holding = false;
    }
    drain(&h);
    raft_free(h.r);
    return 0;
}
