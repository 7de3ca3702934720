/*
 * sim_world - the simulated nodes, network and faults (see sim.h).
 *
 * A node is the real replica driver over a simulated store directory. The
 * network is a min-heap of encoded frames ordered by delivery time; every
 * frame is decoded with wire_decode() on delivery, as a real node would.
 * Faults (partitions, crashes, pauses, loss storms, store write failures)
 * come from the seeded generator only, and each is bounded in time so the
 * cluster heals. A failpoint (replica_env.failpoint) that chooses to crash
 * its node does so once the current event is over (node_flush), never
 * inside the replica's call stack; from the failpoint on, nothing the node
 * sends leaves it, and what it had not flushed is lost, as when kvnode
 * exits there.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "kv.h"
#include "replica.h"
#include "sim.h"
#include "store.h"
#include "store_sim.h"
#include "wire.h"

/* --- the queue ------------------------------------------------------------ */

static bool msg_before(const struct sim_msg *a, const struct sim_msg *b)
{
    return a->at < b->at || (a->at == b->at && a->seq < b->seq);
}

static void queue_push(struct sim *s, struct sim_msg m)
{
    struct sim_queue *q = &s->q;
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 256;
        struct sim_msg *a = realloc(q->a, cap * sizeof(*a));
        if (!a) {
            free(m.buf);
            sim_fail(s, "out of memory (message queue)");
            return;
        }
        q->a = a;
        q->cap = cap;
    }
    m.seq = ++s->msg_seq;
    size_t i = q->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!msg_before(&m, &q->a[p]))
            break;
        q->a[i] = q->a[p];
        i = p;
    }
    q->a[i] = m;
}

static struct sim_msg queue_pop(struct sim_queue *q)
{
    struct sim_msg top = q->a[0];
    struct sim_msg last = q->a[--q->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct sim_msg *best = &last;
        if (l < q->n && msg_before(&q->a[l], best)) {
            m = l;
            best = &q->a[l];
        }
        if (r < q->n && msg_before(&q->a[r], best))
            m = r;
        if (m == i)
            break;
        q->a[i] = q->a[m];
        i = m;
    }
    if (q->n)
        q->a[i] = last;
    return top;
}

void sim_net_free(struct sim *s)
{
    for (size_t i = 0; i < s->q.n; i++)
        free(s->q.a[i].buf);
    free(s->q.a);
    s->q = (struct sim_queue){0};
}

void sim_net_drop_from(struct sim *s, int from)
{
    for (size_t i = 0; i < s->q.n; i++)
        if (s->q.a[i].kind == SIM_MSG_PEER && s->q.a[i].from == from)
            s->q.a[i].dropped = true;
}

static uint64_t net_delay(struct sim *s)
{
    if (!s->p.fifo && sim_ppm(&s->rng, s->p.ancient_ppm))
        return sim_range(&s->rng, 1000, 3000);
    if (sim_ppm(&s->rng, s->p.slow_ppm))
        return sim_range(&s->rng, s->p.delay_max, 5 * (uint64_t)s->p.delay_max);
    return sim_range(&s->rng, 1, s->p.delay_max);
}

void sim_net_send(struct sim *s, int kind, int from, int to, const void *buf,
                  size_t len)
{
    s->st.sent++;
    uint32_t loss = s->p.loss_ppm;
    if (s->f.storm_until > s->now && s->f.storm_loss_ppm > loss)
        loss = s->f.storm_loss_ppm;
    if (sim_ppm(&s->rng, loss)) {
        s->st.lost++;
        return;
    }
    int copies = sim_ppm(&s->rng, s->p.dup_ppm) ? 2 : 1;
    if (copies == 2)
        s->st.duplicated++;
    for (int i = 0; i < copies; i++) {
        uint64_t at = s->now + net_delay(s);
        if (s->p.fifo) {
            uint64_t *last = &s->link_last[kind - 1][from][to];
            if (at < *last)
                at = *last; /* equal times keep send order (seq) */
            *last = at;
        }
        unsigned char *b = malloc(len ? len : 1);
        if (!b) {
            sim_fail(s, "out of memory (message)");
            return;
        }
        memcpy(b, buf, len);
        queue_push(s, (struct sim_msg){.at = at,
                                       .kind = kind,
                                       .from = from,
                                       .to = to,
                                       .buf = b,
                                       .len = len});
    }
}

/* --- the replica's environment -------------------------------------------- */

static void env_send(void *arg, uint32_t to, const void *buf, size_t len)
{
    struct sim_node *n = arg;
    struct sim *s = n->sim;
    if (n->fp_hit)
        return; /* it died at the failpoint: nothing leaves it after */
    if (to == 0 || to > (uint32_t)s->p.nnodes || to == n->id) {
        sim_fail(s, "node %u sent a peer batch to node %u", n->id, to);
        return;
    }
    sim_net_send(s, SIM_MSG_PEER, n->idx, (int)to - 1, buf, len);
}

/* The node's own clock: it runs at the rate of the node's ticks, so a
 * drifting node's leases drift with it, as a real node's would. */
static uint64_t env_now(void *arg)
{
    const struct sim_node *n = arg;
    return n->sim->now * REPLICA_TICK_MS / (uint64_t)n->tick_period;
}

/* The node's wall clock: shared sim time plus a per-node offset (set up
 * to +-250 ms apart with drift), as NTP leaves real clocks, plus the jump
 * of the bank scenario's tombstone check. */
static uint64_t env_wall(void *arg)
{
    const struct sim_node *n = arg;
    return 1700000000000ull + n->sim->now + (uint64_t)n->wall_skew +
           n->sim->wall_jump;
}

static void env_reply(void *arg, const void *client, size_t clen,
                      const Kv__Response *resp)
{
    struct sim_node *n = arg;
    struct sim *s = n->sim;
    const unsigned char *c = client;
    if (n->fp_hit)
        return; /* it died at the failpoint */
    if (clen != 2 || c[0] != 'c' || c[1] >= s->nclients) {
        sim_fail(s, "node %u answered an unknown client (%zu bytes)", n->id,
                 clen);
        return;
    }
    void *buf = NULL;
    size_t len = 0;
    if (wire_encode_response(resp, &buf, &len) != KV_OK) {
        sim_fail(s, "node %u: cannot encode a response", n->id);
        return;
    }
    sim_net_send(s, SIM_MSG_RESP, n->idx, c[1], buf, len);
    free(buf);
}

static void env_failpoint(void *arg, const char *name)
{
    struct sim_node *n = arg;
    sim_bank_failpoint(n->sim, n, name);
}

/* --- nodes ---------------------------------------------------------------- */

int sim_node_start(struct sim *s, struct sim_node *n)
{
    char err[256] = "";
    sim_node_context(s, n);
    int rc = store_open(n->dir, &n->store, err, sizeof(err));
    if (rc != KV_OK) {
        sim_fail(s, "node %u: store_open failed: %s %s", n->id, kv_strerror(rc),
                 err);
        n->store = NULL;
        return -1;
    }
    sim_check_store_log(s, n, "before a start");
    if (s->failed) {
        store_close(n->store);
        n->store = NULL;
        return -1;
    }
    struct replica_env env = {.arg = n,
                              .send = env_send,
                              .reply = env_reply,
                              .now_ms = env_now,
                              .wall_ms = env_wall,
                              .failpoint =
                                  s->p.fp_prepared_ppm || s->p.fp_committed_ppm
                                      ? env_failpoint
                                      : NULL,
                              .procs = s->procs};
    rc = replica_open(s->conf, n->id, n->store, &env, sim_rand(&s->rng),
                      &n->rep, err, sizeof(err));
    if (rc != KV_OK) {
        sim_fail(s, "node %u cannot (re)start: %s: %s", n->id, kv_strerror(rc),
                 err);
        store_close(n->store);
        n->store = NULL;
        n->rep = NULL;
        return -1;
    }
    n->restart_at = 0;
    n->paused_until = 0;
    n->fp_hit = NULL;
    n->next_tick = s->now + sim_range(&s->rng, 1, n->tick_period);
    for (int i = 0; i < SIM_MAX_SHARDS; i++)
        n->verified[i] = 0;
    return 0;
}

/* Adds what N's replica counted to what its earlier incarnations did. */
static void keep_stats(struct sim_node *n)
{
    struct replica_stats st;
    replica_get_stats(n->rep, &st);
    n->snapshots_installed += st.snapshots_installed;
    n->lease_reads += st.lease_reads;
    n->sessions_expired += st.sessions_expired;
}

void sim_node_crash(struct sim *s, struct sim_node *n, const char *why)
{
    if (!n->rep)
        return;
    sim_node_context(s, n);
    keep_stats(n);
    replica_close(n->rep);
    n->rep = NULL;
    store_close(n->store);
    n->store = NULL;
    store_sim_fail_writes(n->dir, 0);
    store_sim_crash(n->dir);
    n->fail_armed = false;
    n->fp_hit = NULL;
    n->paused_until = 0;
    n->restart_at = 0;
    n->stop_by = 0;
    n->crashes++;
    s->st.crashes++;
    sim_log(s, "node %u crashes (%s)", n->id, why);
}

void sim_node_stop(struct sim *s, struct sim_node *n, const char *why)
{
    if (!n->rep)
        return;
    sim_node_context(s, n);
    keep_stats(n);
    replica_close(n->rep);
    n->rep = NULL;
    store_close(n->store); /* a clean stop: nothing is lost */
    n->store = NULL;
    n->stop_by = 0;
    n->fp_hit = NULL;
    n->paused_until = 0;
    n->restart_at = 0;
    s->st.stops++;
    sim_log(s, "node %u stops (%s)", n->id, why);
}

bool sim_node_live(const struct sim *s, const struct sim_node *n)
{
    return n->rep != NULL && n->paused_until <= s->now;
}

int sim_shard_leader(struct sim *s, uint32_t shard)
{
    for (int i = 0; i < s->p.nnodes; i++) {
        struct sim_node *n = &s->nodes[i];
        if (n->rep && replica_leader(n->rep, shard) == n->id)
            return i;
    }
    return -1;
}

void sim_after_event(struct sim *s, struct sim_node *n)
{
    s->st.events++;
    if (s->st.events > s->max_events) {
        sim_fail(s, "step budget of %llu events exhausted (livelock?)",
                 (unsigned long long)s->max_events);
        return;
    }
    for (int i = 0; i < s->p.nnodes && !s->failed; i++) {
        char why[256];
        if (s->nodes[i].rep &&
            replica_check_invariants(s->nodes[i].rep, why, sizeof(why)) != 0)
            sim_fail(s, "invariant: %s", why);
    }
    if (n && n->rep && !s->failed)
        sim_check_leaders(s, n);
    if (!s->failed)
        sim_check_clocks(s, false);
}

/* A failpoint fired in node N during the event that just ended: it dies
 * there, as kvnode does with KV_FAILPOINT (what it had not flushed is
 * lost with it). */
static void failpoint_crash(struct sim *s, struct sim_node *n)
{
    char why[64];
    snprintf(why, sizeof(why), "failpoint %s", n->fp_hit);
    sim_node_crash(s, n, why);
    n->restart_at = s->now + sim_range(&s->rng, 50, 1500);
    s->st.fp_crashes++;
}

/* Runs the driver order; a failed flush stops the node (a crash). A node
 * whose failpoint fired in the event before (or in this flush) crashes. */
static void node_flush(struct sim *s, struct sim_node *n)
{
    if (n->fp_hit) {
        failpoint_crash(s, n);
        return;
    }
    int rc = replica_flush(n->rep);
    if (rc == KV_OK && n->fp_hit) {
        failpoint_crash(s, n);
        return;
    }
    if (rc == KV_OK)
        return;
    if (!n->fail_armed) {
        sim_fail(s,
                 "node %u: replica_flush failed (%s) with no injected "
                 "store fault",
                 n->id, kv_strerror(rc));
        return;
    }
    s->st.eio++;
    sim_node_crash(s, n, "replica_flush failed on an injected store fault");
    n->restart_at =
        s->now + (s->phase == SIM_PH_RUN ? sim_range(&s->rng, 100, 1000) : 50);
}

void sim_nodes_tick(struct sim *s)
{
    for (int i = 0; i < s->p.nnodes && !s->failed; i++) {
        struct sim_node *n = &s->nodes[i];
        if (!sim_node_live(s, n) || s->now < n->next_tick)
            continue;
        n->next_tick = s->now + n->tick_period;
        sim_node_context(s, n);
        replica_tick(n->rep);
        node_flush(s, n);
        s->st.ticks++;
        sim_after_event(s, n);
        if (n->stop_by && n->rep && !s->failed) {
            /* Stopping: hand every led group to another member first. */
            size_t led = replica_transfer_all(n->rep);
            node_flush(s, n);
            sim_after_event(s, n);
            if (n->rep && (led == 0 || s->now >= n->stop_by)) {
                sim_node_stop(s, n,
                              led ? "stop deadline, still leading"
                                  : "leads no group any more");
                n->restart_at = s->now + sim_range(&s->rng, 100, 1500);
            }
        }
    }
}

void sim_nodes_restart_due(struct sim *s)
{
    for (int i = 0; i < s->p.nnodes && !s->failed; i++) {
        struct sim_node *n = &s->nodes[i];
        if (n->rep || !n->restart_at || s->now < n->restart_at)
            continue;
        if (sim_node_start(s, n) == 0) {
            n->restarts++;
            s->st.restarts++;
            sim_log(s, "node %u restarts", n->id);
            sim_after_event(s, n);
        }
    }
}

/* --- delivery ---------------------------------------------------------------
 */

static void deliver_peer(struct sim *s, struct sim_node *n,
                         const struct sim_msg *m)
{
    Kv__Envelope *env = NULL;
    char err[128] = "";
    sim_node_context(s, n);
    int rc = wire_decode(m->buf, m->len, s->conf->max_message_bytes, &env, err,
                         sizeof(err));
    if (rc != KV_OK || env->body_case != KV__ENVELOPE__BODY_PEER) {
        sim_fail(s, "node %d sent node %u a bad peer frame: %s", m->from + 1,
                 n->id, rc != KV_OK ? err : "not a PeerBatch");
        wire_free(env);
        return;
    }
    if (!sim_scenario_peer(s, n, env->peer, 0)) {
        wire_free(env);
        sim_after_event(s, n);
        return;
    }
    /* An older version announces no features, and uses none: the legacy
     * node hears of none either, so it proposes nothing its peers would
     * not. */
    if (s->p.legacy_node == m->from + 1 || s->p.legacy_node == (int)n->id)
        env->peer->features = 0;
    replica_peer(n->rep, env->peer);
    bool go = sim_scenario_peer(s, n, env->peer, 1);
    wire_free(env);
    if (go && n->rep)
        node_flush(s, n);
    s->st.delivered++;
    sim_after_event(s, n);
}

static void deliver_request(struct sim *s, struct sim_node *n,
                            const struct sim_msg *m)
{
    Kv__Envelope *env = NULL;
    char err[128] = "";
    sim_node_context(s, n);
    int rc = wire_decode(m->buf, m->len, s->conf->max_message_bytes, &env, err,
                         sizeof(err));
    if (rc != KV_OK || env->body_case != KV__ENVELOPE__BODY_REQUEST) {
        sim_fail(s, "client %d sent a bad request frame: %s", m->from,
                 rc != KV_OK ? err : "not a Request");
        wire_free(env);
        return;
    }
    /* What the scenario hook needs, copied: ENV is the replica's now. */
    const Kv__Request *req = env->request;
    const ProtobufCBinaryData *k = NULL;
    if (req->op_case == KV__REQUEST__OP_PUT)
        k = &req->put->key;
    else if (req->op_case == KV__REQUEST__OP_DEL)
        k = &req->del->key;
    unsigned char kbuf[SIM_KEY_MAX];
    size_t klen = k && k->len <= sizeof(kbuf) ? k->len : 0;
    if (klen)
        memcpy(kbuf, k->data, klen);
    struct replica_stats before;
    replica_get_stats(n->rep, &before);
    /* The client's name, as a node's ROUTER would give it: "c" + index. */
    unsigned char name[2] = {'c', (unsigned char)m->from};
    replica_request(n->rep, name, sizeof(name), env);
    node_flush(s, n);
    s->st.delivered++;
    sim_after_event(s, n);
    if (!s->failed && n->rep && klen)
        sim_scenario_request(s, n, kbuf, klen, before.proposals);
}

void sim_net_deliver(struct sim *s)
{
    while (s->q.n && s->q.a[0].at <= s->now && !s->failed) {
        struct sim_msg m = queue_pop(&s->q);
        if (m.dropped) {
            free(m.buf);
            continue;
        }
        if (m.kind == SIM_MSG_RESP) {
            sim_client_response(s, m.to, m.from, m.buf, m.len);
            free(m.buf);
            continue;
        }
        struct sim_node *n = &s->nodes[m.to];
        if (!n->rep) {
            free(m.buf); /* lost with the crashed node */
            continue;
        }
        if (n->paused_until > s->now) {
            m.at = n->paused_until + (s->p.fifo ? 0 : sim_range(&s->rng, 0, 5));
            queue_push(s, m); /* waits in the socket buffer */
            continue;
        }
        if (m.kind == SIM_MSG_PEER && s->blocked[m.from][m.to]) {
            s->st.blocked++;
            free(m.buf);
            continue;
        }
        if (m.kind == SIM_MSG_PEER)
            deliver_peer(s, n, &m);
        else
            deliver_request(s, n, &m);
        free(m.buf);
    }
}

/* --- faults -----------------------------------------------------------------
 */

static int nodes_down(const struct sim *s)
{
    int down = 0;
    for (int i = 0; i < s->p.nnodes; i++)
        down +=
            !s->nodes[i].rep || s->nodes[i].fail_armed || s->nodes[i].stop_by;
    return down;
}

static void clear_partition(struct sim *s)
{
    memset(s->blocked, 0, sizeof(s->blocked));
    s->f.part_until = 0;
}

static void start_partition(struct sim *s)
{
    int nn = s->p.nnodes;
    uint64_t kind = sim_below(&s->rng, 4);
    int victim = (int)sim_below(&s->rng, (uint64_t)nn);
    const char *what = "";
    if (kind == 0) { /* two sides, both directions */
        bool side[SIM_MAX_NODES];
        int a = 0;
        for (int i = 0; i < nn; i++) {
            side[i] = sim_below(&s->rng, 2);
            a += side[i];
        }
        if (a == 0 || a == nn)
            side[victim] = !side[victim];
        for (int i = 0; i < nn; i++)
            for (int j = 0; j < nn; j++)
                s->blocked[i][j] = side[i] != side[j];
        what = "split in two";
    } else if (kind == 1) { /* one node cut off */
        for (int j = 0; j < nn; j++)
            s->blocked[victim][j] = s->blocked[j][victim] = j != victim;
        what = "one node isolated";
    } else if (kind == 2) { /* one node can receive but not send, or the
                               reverse */
        bool out = sim_below(&s->rng, 2);
        for (int j = 0; j < nn; j++) {
            if (j == victim)
                continue;
            if (out)
                s->blocked[victim][j] = true;
            else
                s->blocked[j][victim] = true;
        }
        what = out ? "one node cannot send" : "one node cannot receive";
    } else { /* random directed links */
        for (int i = 0; i < nn; i++)
            for (int j = 0; j < nn; j++)
                s->blocked[i][j] = i != j && sim_ppm(&s->rng, 300000);
        what = "random one-way links";
    }
    s->f.part_until = s->now + sim_range(&s->rng, 200, 2500);
    s->st.partitions++;
    sim_log(s, "partition: %s (node %d) until %llu", what, victim + 1,
            (unsigned long long)s->f.part_until);
}

static int pick_up_node(struct sim *s, bool prefer_leader)
{
    if (prefer_leader) {
        int l = sim_shard_leader(s, (uint32_t)sim_below(&s->rng, s->p.nshards));
        if (l >= 0 && !s->nodes[l].fail_armed && !s->nodes[l].stop_by)
            return l;
    }
    int up[SIM_MAX_NODES], nup = 0;
    for (int i = 0; i < s->p.nnodes; i++)
        if (s->nodes[i].rep && !s->nodes[i].fail_armed && !s->nodes[i].stop_by)
            up[nup++] = i;
    return nup ? up[sim_below(&s->rng, (uint64_t)nup)] : -1;
}

void sim_faults_step(struct sim *s)
{
    if (s->f.part_until && s->now >= s->f.part_until) {
        clear_partition(s);
        sim_log(s, "partition heals");
    }
    if (!s->p.faults || s->phase != SIM_PH_RUN || s->now < s->f.next_at)
        return;
    s->f.next_at = s->now + sim_range(&s->rng, 100, 800);
    int minority = (s->p.nnodes - 1) / 2;
    uint64_t r = sim_below(&s->rng, 100);
    if (r < 30) {
        if (!s->f.part_until)
            start_partition(s);
    } else if (r < 50) {
        if (nodes_down(s) >= minority)
            return;
        int v = pick_up_node(s, sim_below(&s->rng, 2));
        if (v < 0)
            return;
        /* Quick reboots (a node that forgot an unsynced vote would vote
         * again in the same election) and long outages. */
        bool blip = sim_below(&s->rng, 100) < 40;
        sim_node_crash(s, &s->nodes[v],
                       blip ? "fault schedule: reboot" : "fault schedule");
        s->nodes[v].restart_at =
            s->now + (blip ? sim_range(&s->rng, 20, 300)
                           : sim_range(&s->rng, 200, 3000));
    } else if (r < 60) {
        if (nodes_down(s) >= minority)
            return;
        int v = pick_up_node(s, true);
        if (v < 0 || s->nodes[v].stop_by)
            return;
        s->nodes[v].stop_by = s->now + 2000;
        sim_log(s, "node %d begins a graceful stop", v + 1);
    } else if (r < 68) {
        if (nodes_down(s) >= minority)
            return;
        int v = pick_up_node(s, false);
        if (v < 0)
            return;
        store_sim_fail_writes(s->nodes[v].dir, 1);
        s->nodes[v].fail_armed = true;
        sim_log(s, "node %d: the next store write fails", v + 1);
    } else if (r < 80) {
        int v = pick_up_node(s, sim_below(&s->rng, 2));
        if (v < 0 || s->nodes[v].paused_until > s->now)
            return;
        s->nodes[v].paused_until = s->now + sim_range(&s->rng, 50, 1500);
        s->st.pauses++;
        sim_log(s, "node %d pauses until %llu", v + 1,
                (unsigned long long)s->nodes[v].paused_until);
    } else {
        s->f.storm_until = s->now + sim_range(&s->rng, 100, 800);
        s->f.storm_loss_ppm = (uint32_t)sim_range(&s->rng, 200000, 500000);
        s->st.storms++;
        sim_log(s, "loss storm %u ppm until %llu", s->f.storm_loss_ppm,
                (unsigned long long)s->f.storm_until);
    }
}

void sim_heal(struct sim *s)
{
    clear_partition(s);
    s->f.storm_until = 0;
    s->p.loss_ppm = 0;
    s->p.dup_ppm = 0;
    s->p.ancient_ppm = 0;
    for (int i = 0; i < s->p.nnodes && !s->failed; i++) {
        struct sim_node *n = &s->nodes[i];
        if (n->fail_armed) {
            store_sim_fail_writes(n->dir, 0);
            n->fail_armed = false;
        }
        n->stop_by = 0;
        if (n->paused_until > s->now)
            n->paused_until = s->now;
        if (!n->rep) {
            if (sim_node_start(s, n) != 0)
                return;
            n->restarts++;
            s->st.restarts++;
            sim_after_event(s, n);
        }
    }
    sim_log(s, "heal: every fault ends");
}
