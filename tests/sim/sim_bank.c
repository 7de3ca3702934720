/*
 * sim_bank - the bank workload of the simulator (see sim.h).
 *
 * A few accounts ("{tag}aN", spread over every shard by the shard tags) hold
 * balances; an absent account holds SIM_BANK_START, so the total is fixed
 * from the start. Bank clients run, against the real nodes and with the
 * register clients' routing and retries (sim_client.c):
 *   - transfers: read two accounts (linearizable gets), then one
 *     transaction: IF_VERSION (or IF_ABSENT) on each with what was read, and
 *     the PUTs of both new balances. Its outcome is committed, conflict (a
 *     condition failed, a key was locked, the deadline passed: fine) or
 *     unknown (given up; retries kept the session's client id and sequence
 *     number, so it happened at most once);
 *   - audits: read every account, then a read-only transaction of
 *     IF_VERSION/IF_ABSENT on all of them. When it commits, the balances
 *     read were all current at one moment (the participants held them
 *     locked together), so they must add up to the total, none negative.
 * Every balance a get returns must decode and be >= 0.
 *
 * After the heal one client audits until an audit commits; then every node
 * must end up with no intent, no participant record and no transaction
 * record (tombstones of resolved parts may stay), and the replicas of a
 * shard with the same accounts, whose stored balances add up. On even
 * seeds the wall clocks then jump past the tombstones' keep time, and the
 * leaders' GC must remove every tombstone from every replica; on odd ones
 * the tombstones stay and the replicas must hold the same (sim_check.c
 * compares every kind of record). The nodes' engines are read through a
 * second engine opened over their store: the simulation is
 * single-threaded, so between events the store is quiescent and holds
 * only committed state.
 *
 * Faults of the bank scenario, besides the random schedule: a node crashes
 * right after a failpoint ("txn-prepared", "txn-committed") fired in it,
 * once the current event is over (sim_world.c), and nodes of transactions
 * in flight crash at random.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "engine.h"
#include "kv.h"
#include "shard.h"
#include "sim.h"
#include "store.h"
#include "store_sim.h"

#define BANK_OP_MS 3000 /* a transfer or audit gives up after this */
#define FINAL_AUDIT_MS 20000
#define AUDIT_PCT 20 /* of the bank ops */
#define AMOUNT_MAX 60
#define BANK_TAG 0xBA4Bull /* the top 16 bits of an account value */
#define BALANCE_BITS 48

/* --- values ----------------------------------------------------------------
 */

size_t sim_bank_value(int64_t balance, unsigned char *buf)
{
    uint64_t word = BANK_TAG << BALANCE_BITS |
                    ((uint64_t)balance & ((1ull << BALANCE_BITS) - 1));
    size_t pad = (size_t)(word % (SIM_BANK_VALUE_MAX - 8 + 1));
    sim_value_encode(word, pad, buf);
    return 8 + pad;
}

int sim_bank_decode(const void *buf, size_t len, int64_t *balance)
{
    uint64_t word;
    if (sim_value_decode(buf, len, &word) != 0 ||
        word >> BALANCE_BITS != BANK_TAG ||
        len != 8 + word % (SIM_BANK_VALUE_MAX - 8 + 1))
        return -1;
    uint64_t b = word & ((1ull << BALANCE_BITS) - 1);
    if (b >> (BALANCE_BITS - 1)) /* sign-extend */
        b |= ~((1ull << BALANCE_BITS) - 1);
    *balance = (int64_t)b;
    return 0;
}

/* --- setup -----------------------------------------------------------------
 */

int sim_bank_keys(struct sim *s)
{
    if (s->p.naccts < 2 || s->p.naccts > SIM_MAX_ACCTS) {
        sim_fail(s, "bank: %d accounts (2..%d)", s->p.naccts, SIM_MAX_ACCTS);
        return -1;
    }
    for (int a = 0; a < s->p.naccts; a++) {
        int sh = a % s->p.nshards;
        char tag[sizeof(s->tags[0])]; /* a copy: snprintf into s from s */
        memcpy(tag, s->tags[sh], sizeof(tag));
        int n = snprintf(s->accts[a], SIM_KEY_MAX, "{%s}a%d", tag, a);
        s->alen[a] = (size_t)n;
        s->ashard[a] =
            shard_of(s->accts[a], s->alen[a], (uint32_t)s->p.nshards);
        if (s->ashard[a] != (uint32_t)sh) {
            sim_fail(s, "hash tags do not decide the shard of %s", s->accts[a]);
            return -1;
        }
    }
    s->total = (int64_t)s->p.naccts * SIM_BANK_START;
    return 0;
}

/* --- the client ------------------------------------------------------------
 */

static const char *bank_name(const struct sim_bank_op *b)
{
    return b->kind == SIM_BANK_AUDIT ? "audit" : "transfer";
}

/* Sends the read of the next account of C's bank op. */
static void read_next(struct sim *s, struct sim_client *c, bool final)
{
    struct sim_bank_op *b = &c->bank;
    int a = b->accts[b->nread];
    sim_client_reset_op(c);
    memcpy(c->op.kbuf, s->accts[a], s->alen[a]);
    c->op.klen = s->alen[a];
    sim_client_begin(s, c, SIM_GET, s->ashard[a], b->deadline, final);
}

static void add_top(struct sim_op *op, int kind, int acct, uint64_t version,
                    int64_t balance)
{
    op->tops[op->ntops++] = (struct sim_txn_op){
        .kind = kind, .acct = acct, .version = version, .balance = balance};
}

/* The condition that account position I of B still holds what was read. */
static void add_condition(struct sim_op *op, const struct sim_bank_op *b, int i)
{
    if (b->present[i])
        add_top(op, KV__TXN_OP__KIND__IF_VERSION, b->accts[i], b->version[i],
                0);
    else
        add_top(op, KV__TXN_OP__KIND__IF_ABSENT, b->accts[i], 0, 0);
}

/* Every read is in: sends the transaction (or ends a transfer whose source
 * has too little). */
static void send_txn(struct sim *s, struct sim_client *c, bool final)
{
    struct sim_bank_op *b = &c->bank;
    sim_client_reset_op(c);
    struct sim_op *op = &c->op;
    uint32_t home;
    if (b->kind == SIM_BANK_TRANSFER) {
        if (b->balance[0] < b->amount) {
            s->st.transfers_skipped++;
            sim_log(s,
                    "client %d: transfer of %" PRId64 " skipped: %s holds "
                    "%" PRId64,
                    c->idx, b->amount, s->accts[b->accts[0]], b->balance[0]);
            b->kind = 0;
            sim_client_end_op(s, c);
            return;
        }
        /* Conditions first or last, and either put first: the home shard
         * (that of the first write) is the source's or the target's. */
        bool cond_last = sim_below(&s->rng, 4) == 0;
        int first = (int)sim_below(&s->rng, 2);
        if (!cond_last) {
            add_condition(op, b, 0);
            add_condition(op, b, 1);
        }
        for (int k = 0; k < 2; k++) {
            int i = k == 0 ? first : 1 - first;
            add_top(op, KV__TXN_OP__KIND__PUT, b->accts[i], 0,
                    i == 0 ? b->balance[0] - b->amount
                           : b->balance[1] + b->amount);
        }
        if (cond_last) {
            add_condition(op, b, 0);
            add_condition(op, b, 1);
        }
        home = s->ashard[b->accts[first]];
    } else {
        for (int i = 0; i < b->naccts; i++)
            add_condition(op, b, i);
        home = s->ashard[b->accts[0]]; /* nothing written: the first key's */
    }
    int n = snprintf(op->kbuf, sizeof(op->kbuf), "%s of %d accounts",
                     bank_name(b), b->naccts);
    op->klen = (size_t)n < sizeof(op->kbuf) ? (size_t)n : sizeof(op->kbuf) - 1;
    sim_client_begin(s, c, SIM_TXN, home, b->deadline, final);
}

/* Starts bank op KIND on C. */
static void start(struct sim *s, struct sim_client *c, int kind,
                  uint64_t deadline, bool final)
{
    struct sim_bank_op *b = &c->bank;
    memset(b, 0, sizeof(*b));
    b->kind = kind;
    b->deadline = deadline;
    int na = s->p.naccts;
    if (kind == SIM_BANK_AUDIT) {
        /* every account, from a random one on: the home shard varies */
        int off = (int)sim_below(&s->rng, (uint64_t)na);
        for (int i = 0; i < na; i++)
            b->accts[i] = (off + i) % na;
        b->naccts = na;
    } else {
        b->accts[0] = (int)sim_below(&s->rng, (uint64_t)na);
        b->accts[1] =
            (b->accts[0] + 1 + (int)sim_below(&s->rng, (uint64_t)na - 1)) % na;
        b->naccts = 2;
        b->amount = (int64_t)sim_range(&s->rng, 1, AMOUNT_MAX);
    }
    read_next(s, c, final);
}

void sim_bank_start(struct sim *s, struct sim_client *c)
{
    bool audit = sim_below(&s->rng, 100) < AUDIT_PCT;
    start(s, c, audit ? SIM_BANK_AUDIT : SIM_BANK_TRANSFER, s->now + BANK_OP_MS,
          false);
}

void sim_bank_final(struct sim *s, struct sim_client *c)
{
    start(s, c, SIM_BANK_AUDIT, s->now + FINAL_AUDIT_MS, true);
}

/* A get of the current read answered. */
static void read_done(struct sim *s, struct sim_client *c, int from,
                      const Kv__Response *resp)
{
    struct sim_bank_op *b = &c->bank;
    const struct sim_op *op = &c->op;
    int i = b->nread;
    int a = b->accts[i];
    if (resp->code == KV_ENOTFOUND) {
        b->present[i] = false;
        b->version[i] = 0;
        b->balance[i] = SIM_BANK_START;
    } else if (resp->code == KV_OK &&
               resp->result_case == KV__RESPONSE__RESULT_GET && resp->get) {
        int64_t bal = 0;
        if (sim_bank_decode(resp->get->value.data, resp->get->value.len,
                            &bal) != 0 ||
            resp->get->version == 0) {
            sim_fail(s,
                     "bank: client %d: get of %s from node %d returned a "
                     "value no bank client wrote (%zu bytes, version %llu)",
                     c->idx, s->accts[a], from + 1, resp->get->value.len,
                     (unsigned long long)resp->get->version);
            return;
        }
        if (bal < 0) {
            sim_fail(s,
                     "bank: client %d: get of %s from node %d returned a "
                     "negative balance %" PRId64 " (version %llu)",
                     c->idx, s->accts[a], from + 1, bal,
                     (unsigned long long)resp->get->version);
            return;
        }
        b->present[i] = true;
        b->version[i] = resp->get->version;
        b->balance[i] = bal;
    } else {
        sim_fail(s,
                 "bank: client %d: get of %s got an impossible answer from "
                 "node %d: code %d (%s) result %d",
                 c->idx, s->accts[a], from + 1, resp->code,
                 kv_strerror(resp->code), (int)resp->result_case);
        return;
    }
    sim_log(s, "client %d: %s: %s = %" PRId64 " v=%llu (node %d)", c->idx,
            bank_name(b), s->accts[a], b->balance[i],
            (unsigned long long)b->version[i], from + 1);
    b->nread++;
    if (b->nread < b->naccts)
        read_next(s, c, op->final);
    else
        send_txn(s, c, op->final);
}

/* The balances of a committed audit: one consistent snapshot. */
static void check_audit(struct sim *s, const struct sim_client *c)
{
    const struct sim_bank_op *b = &c->bank;
    int64_t sum = 0;
    char list[512] = "";
    size_t used = 0;
    bool negative = false;
    for (int i = 0; i < b->naccts; i++) {
        sum += b->balance[i];
        negative |= b->balance[i] < 0;
        if (used < sizeof(list)) {
            int w = snprintf(list + used, sizeof(list) - used,
                             " %s=%" PRId64 "@%llu", s->accts[b->accts[i]],
                             b->balance[i], (unsigned long long)b->version[i]);
            if (w > 0)
                used += (size_t)w;
        }
    }
    if (sum != s->total || negative)
        sim_fail(s,
                 "bank: client %d's audit committed a snapshot that %s: sum "
                 "%" PRId64 ", total %" PRId64 ";%s",
                 c->idx, sum != s->total ? "does not add up" : "is negative",
                 sum, s->total, list);
}

/* The transaction answered. */
static void txn_done(struct sim *s, struct sim_client *c, int from,
                     const Kv__Response *resp)
{
    struct sim_bank_op *b = &c->bank;
    const struct sim_op *op = &c->op;
    bool audit = b->kind == SIM_BANK_AUDIT;
    const Kv__TxnResult *r =
        resp->result_case == KV__RESPONSE__RESULT_TXN ? resp->txn : NULL;
    if (resp->code == KV_OK && r && r->n_versions == (size_t)op->ntops) {
        if (audit) {
            s->st.audits_ok++;
            check_audit(s, c);
            if (op->final) {
                s->final_audit_ok = true;
                c->final_pos++;
            }
        } else {
            s->st.transfers_ok++;
        }
    } else if (resp->code == KV_ECONFLICT) {
        if (audit)
            s->st.audits_conflict++;
        else
            s->st.transfers_conflict++;
    } else {
        sim_fail(s,
                 "bank: client %d: %s transaction got an impossible answer "
                 "from node %d: code %d (%s) result %d, %zu versions for %d "
                 "ops \"%s\"",
                 c->idx, bank_name(b), from + 1, resp->code,
                 kv_strerror(resp->code), (int)resp->result_case,
                 r ? r->n_versions : 0, op->ntops,
                 resp->message ? resp->message : "");
        return;
    }
    sim_log(s, "client %d: %s %s (attempt %d, node %d)%s%s", c->idx,
            bank_name(b), resp->code == KV_OK ? "committed" : "conflict",
            op->attempt, from + 1, resp->message && *resp->message ? ": " : "",
            resp->message ? resp->message : "");
    b->kind = 0;
    sim_client_end_op(s, c);
}

void sim_bank_answer(struct sim *s, struct sim_client *c, int from,
                     const Kv__Response *resp)
{
    c->leader[c->op.shard] = from;
    if (c->op.kind == SIM_TXN)
        txn_done(s, c, from, resp);
    else
        read_done(s, c, from, resp);
}

void sim_bank_gave_up(struct sim *s, struct sim_client *c)
{
    struct sim_bank_op *b = &c->bank;
    const struct sim_op *op = &c->op;
    if (op->final) {
        sim_fail(s,
                 "liveness: the final audit's %s (%.*s, shard %u) did not "
                 "finish within %d ms after the heal",
                 op->kind == SIM_TXN ? "transaction" : "read", (int)op->klen,
                 op->kbuf, op->shard, FINAL_AUDIT_MS);
        return;
    }
    if (op->kind == SIM_TXN) {
        if (b->kind == SIM_BANK_AUDIT)
            s->st.audits_unknown++;
        else
            s->st.transfers_unknown++;
    } else {
        s->st.bank_dropped++;
    }
    sim_log(s, "client %d gives up its %s at its %s after %d attempts", c->idx,
            bank_name(b), op->kind == SIM_TXN ? "transaction" : "read",
            op->attempt);
    b->kind = 0;
    sim_client_end_op(s, c);
}

/* --- faults ----------------------------------------------------------------
 */

static int nodes_down(const struct sim *s)
{
    int down = 0;
    for (int i = 0; i < s->p.nnodes; i++)
        down += !s->nodes[i].rep || s->nodes[i].fail_armed ||
                s->nodes[i].stop_by || s->nodes[i].fp_hit;
    return down;
}

void sim_bank_failpoint(struct sim *s, struct sim_node *n, const char *name)
{
    uint32_t ppm;
    if (strcmp(name, "txn-prepared") == 0) {
        ppm = s->p.fp_prepared_ppm;
    } else if (strcmp(name, "txn-committed") == 0) {
        ppm = s->p.fp_committed_ppm;
    } else {
        sim_fail(s, "node %u reached an unknown failpoint \"%s\"", n->id, name);
        return;
    }
    if (s->phase != SIM_PH_RUN || n->fp_hit ||
        nodes_down(s) >= (s->p.nnodes - 1) / 2 || !sim_ppm(&s->rng, ppm))
        return;
    n->fp_hit = name; /* a string literal of txn.c: it outlives the node */
    sim_log(s, "node %u reached failpoint %s: it crashes after this event",
            n->id, name);
}

void sim_bank_faults(struct sim *s)
{
    if (!s->p.inflight_crash_ppm || s->phase != SIM_PH_RUN ||
        !sim_ppm(&s->rng, s->p.inflight_crash_ppm))
        return;
    int busy[SIM_MAX_CLIENTS], nbusy = 0;
    for (int i = 0; i < s->nclients; i++)
        if (s->clients[i].mode == SIM_CLIENT_BANK && s->clients[i].busy &&
            s->clients[i].op.kind == SIM_TXN)
            busy[nbusy++] = i;
    if (nbusy == 0 || nodes_down(s) >= (s->p.nnodes - 1) / 2)
        return;
    const struct sim_client *c =
        &s->clients[busy[sim_below(&s->rng, (uint64_t)nbusy)]];
    /* the node the client asked (its coordinator, most likely), or the
     * leader of one of its shards (a participant) */
    int v = c->op.target;
    if (sim_below(&s->rng, 2)) {
        const struct sim_txn_op *t =
            &c->op.tops[sim_below(&s->rng, (uint64_t)c->op.ntops)];
        v = sim_shard_leader(s, s->ashard[t->acct]);
    }
    if (v < 0 || !s->nodes[v].rep)
        return;
    sim_node_crash(s, &s->nodes[v], "bank: a transaction is in flight");
    s->nodes[v].restart_at = s->now + sim_range(&s->rng, 20, 2000);
    s->st.inflight_crashes++;
}

/* --- the end of a seed -----------------------------------------------------
 */

/* What one node holds of one account. */
struct acct_state {
    int rc; /* KV_OK, KV_ENOTFOUND, or an error */
    uint64_t version;
    int64_t balance;
    bool valid;
};

struct txn_list {
    char *buf;
    size_t len, cap;
    size_t n;
};

static int list_txn(void *arg, const struct engine_txn_info *t)
{
    static const char *const states[] = {"pending", "committed", "aborted",
                                         "unknown"};
    struct txn_list *l = arg;
    l->n++;
    if (l->len + 80 >= l->cap)
        return 0;
    long long deadline = (long long)t->deadline_ms - 1700000000000ll;
    int w;
    if (t->state < 0) /* a participant record */
        w = snprintf(l->buf + l->len, l->cap - l->len,
                     " %02x%02x%02x%02x(home %u, deadline t=%lld, %zu keys)",
                     t->txn_id[0], t->txn_id[1], t->txn_id[2], t->txn_id[3],
                     t->home, deadline, t->nkeys);
    else
        w = snprintf(l->buf + l->len, l->cap - l->len,
                     " %02x%02x%02x%02x(%s, deadline t=%lld, %zu shards)",
                     t->txn_id[0], t->txn_id[1], t->txn_id[2], t->txn_id[3],
                     states[t->state < 3 ? t->state : 3], deadline, t->nparts);
    if (w > 0)
        l->len += (size_t)w;
    return 0;
}

static bool is_member(const struct sim *s, uint32_t shard, int idx)
{
    for (uint32_t r = 0; r < s->conf->replicas; r++)
        if ((int)conf_replica(s->conf, shard, r) == idx)
            return true;
    return false;
}

/* Reads node N's transaction state (into WHY, appended, when any is left)
 * and its accounts. Returns false when something is left or unreadable. */
static bool read_node(struct sim *s, struct sim_node *n,
                      struct acct_state *acct, char *why, size_t whylen)
{
    struct engine *e = NULL;
    size_t used = strlen(why);
    if (!n->store ||
        engine_open(n->store, (uint32_t)s->p.nshards, &e) != KV_OK) {
        snprintf(why + used, whylen - used, " node %u: %s;", n->id,
                 n->store ? "engine_open failed" : "down");
        return false;
    }
    bool clean = true;
    for (int sh = 0; sh < s->p.nshards; sh++) {
        char plist[300] = "", xlist[300] = "";
        struct txn_list pl = {plist, 0, sizeof(plist), 0};
        struct txn_list xl = {xlist, 0, sizeof(xlist), 0};
        int rp = engine_list_txns(e, (uint32_t)sh, 'P', list_txn, &pl);
        int rx = engine_list_txns(e, (uint32_t)sh, 'X', list_txn, &xl);
        bool intents = engine_has_intents(e, (uint32_t)sh);
        bool records = engine_has_txn_records(e, (uint32_t)sh);
        if (!intents && !records && pl.n == 0 && xl.n == 0 && rp == KV_OK &&
            rx == KV_OK)
            continue;
        clean = false;
        used = strlen(why);
        if (used + 1 < whylen)
            snprintf(why + used, whylen - used,
                     " node %u shard %d:%s%s %zu participant record(s)%s, "
                     "%zu transaction record(s)%s%s;",
                     n->id, sh, intents ? " intents," : "",
                     records ? " records counted," : "", pl.n, plist, xl.n,
                     xlist, rp != KV_OK || rx != KV_OK ? " (list failed)" : "");
    }
    for (int a = 0; a < s->p.naccts; a++) {
        struct acct_state *st = &acct[a];
        memset(st, 0, sizeof(*st));
        void *v = NULL;
        size_t vlen = 0;
        st->rc = engine_get(e, s->ashard[a], s->accts[a], s->alen[a], &v, &vlen,
                            &st->version);
        st->valid =
            st->rc == KV_ENOTFOUND ||
            (st->rc == KV_OK && sim_bank_decode(v, vlen, &st->balance) == 0);
        if (st->rc == KV_ENOTFOUND)
            st->balance = SIM_BANK_START;
        free(v);
    }
    engine_close(e);
    return clean;
}

/* Reads every node; fails the seed (with REPORT) on what is left or on
 * replicas that disagree. FIRST (optional) gets each account as its
 * shard's first member holds it. */
static bool bank_state(struct sim *s, bool report, struct acct_state *first)
{
    char why[1536] = "";
    struct acct_state acct[SIM_MAX_NODES][SIM_MAX_ACCTS];
    bool clean = true;
    for (int i = 0; i < s->p.nnodes; i++)
        clean &= read_node(s, &s->nodes[i], acct[i], why, sizeof(why));
    if (!clean) {
        if (report)
            sim_fail(s, "intent left after healing:%s", why);
        return false;
    }
    if (report && !sim_converged(s, true))
        return false;
    for (int a = 0; a < s->p.naccts; a++) {
        int f = -1;
        for (int i = 0; i < s->p.nnodes; i++) {
            if (!is_member(s, s->ashard[a], i))
                continue;
            const struct acct_state *st = &acct[i][a];
            if (!st->valid) {
                if (report)
                    sim_fail(s, "bank: node %d holds account %s %s (code %d)",
                             i + 1, s->accts[a],
                             st->rc == KV_OK ? "as a value no bank client "
                                               "wrote"
                                             : "unreadable",
                             st->rc);
                return false;
            }
            if (f < 0) {
                f = i;
                if (first)
                    first[a] = *st;
                continue;
            }
            const struct acct_state *o = &acct[f][a];
            if (st->rc != o->rc || st->version != o->version ||
                st->balance != o->balance) {
                if (report)
                    sim_fail(s,
                             "bank: after healing, the replicas of shard %u "
                             "disagree on account %s: node %d holds %" PRId64
                             " v=%llu%s, node %d %" PRId64 " v=%llu%s",
                             s->ashard[a], s->accts[a], f + 1, o->balance,
                             (unsigned long long)o->version,
                             o->rc == KV_ENOTFOUND ? " (absent)" : "", i + 1,
                             st->balance, (unsigned long long)st->version,
                             st->rc == KV_ENOTFOUND ? " (absent)" : "");
                return false;
            }
        }
    }
    return true;
}

/* Whether no store holds an intent or transaction record: counted in
 * place, as an engine_open per poll would copy every store. "P" records
 * are not counted: tombstones stay there after the resolve, and a
 * prepared part comes and goes with its intents (bank_state lists them
 * all the same, tombstones left out). */
static bool quick_clean(const struct sim *s)
{
    const char tags[2] = {'I', 'X'};
    for (int i = 0; i < s->p.nnodes; i++) {
        for (int sh = 0; sh < s->p.nshards; sh++) {
            for (int t = 0; t < 2; t++) {
                unsigned char p[5] = {
                    (unsigned char)tags[t], (unsigned char)(sh >> 24),
                    (unsigned char)(sh >> 16), (unsigned char)(sh >> 8),
                    (unsigned char)sh};
                if (store_sim_count(s->nodes[i].dir, p, sizeof(p)))
                    return false;
            }
        }
    }
    return true;
}

/* The "P" records of every store, with where they are into WHY. Called
 * once no node holds a prepared part: they are all tombstones. */
static uint64_t tombstones_left(const struct sim *s, char *why, size_t whylen)
{
    uint64_t n = 0;
    size_t used = 0;
    why[0] = '\0';
    for (int i = 0; i < s->p.nnodes; i++) {
        for (int sh = 0; sh < s->p.nshards; sh++) {
            unsigned char p[5] = {'P', (unsigned char)(sh >> 24),
                                  (unsigned char)(sh >> 16),
                                  (unsigned char)(sh >> 8), (unsigned char)sh};
            size_t c = store_sim_count(s->nodes[i].dir, p, sizeof(p));
            n += c;
            if (c && used < whylen) {
                int w = snprintf(why + used, whylen - used,
                                 " node %d shard %d: %zu;", i + 1, sh, c);
                if (w > 0)
                    used += (size_t)w;
            }
        }
    }
    return n;
}

bool sim_bank_settled(struct sim *s, bool report)
{
    if (!report && !quick_clean(s))
        return false;
    if (!bank_state(s, report, NULL))
        return false;
    if (!s->p.tomb_gc)
        return true;
    char why[512];
    uint64_t left = tombstones_left(s, why, sizeof(why));
    if (!s->wall_jump) {
        if (report) {
            sim_fail(s, "tombstones: settled too late to collect them");
            return false;
        }
        /* Every transaction is over. Past its deadline plus the keep time
         * (at most txn_timeout_ms and the skew after now), a tombstone is
         * one the leaders' sweeps must have removed. */
        s->wall_jump = ENGINE_TOMB_KEEP_MS + 10000;
        s->st.tomb_gc_seeds++;
        s->st.tombstones += left;
        if (s->phase_deadline < s->now + 10000)
            s->phase_deadline = s->now + 10000;
        sim_log(s, "tombstones: %llu; the wall clocks jump %llu ms",
                (unsigned long long)left, (unsigned long long)s->wall_jump);
        return false;
    }
    if (left) {
        if (report)
            sim_fail(s,
                     "tombstones: %llu left after the wall clocks passed "
                     "their keep time:%s",
                     (unsigned long long)left, why);
        return false;
    }
    return true;
}

void sim_bank_check_final(struct sim *s)
{
    struct acct_state first[SIM_MAX_ACCTS];
    if (!s->final_audit_ok) {
        sim_fail(s, "bank: no final audit committed");
        return;
    }
    if (!bank_state(s, true, first))
        return;
    int64_t sum = 0;
    char list[512] = "";
    size_t used = 0;
    bool negative = false;
    for (int a = 0; a < s->p.naccts; a++) {
        sum += first[a].balance;
        negative |= first[a].balance < 0;
        if (used < sizeof(list)) {
            int w =
                snprintf(list + used, sizeof(list) - used,
                         " %s=%" PRId64 "@%llu", s->accts[a], first[a].balance,
                         (unsigned long long)first[a].version);
            if (w > 0)
                used += (size_t)w;
        }
    }
    if (sum != s->total || negative)
        sim_fail(s,
                 "bank: the stored balances after healing %s: sum %" PRId64
                 ", total %" PRId64 ";%s",
                 negative ? "hold a negative one" : "do not add up", sum,
                 s->total, list);
}
