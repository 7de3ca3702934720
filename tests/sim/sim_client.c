/*
 * sim_client - the simulated clients and their workload (see sim.h).
 *
 * A client behaves as libkv does: it sends a request to the node it
 * believes leads the key's shard, follows NOT_LEADER hints, retries on the
 * next member of the shard when an attempt times out, and keeps the SAME
 * client id and sequence number for every attempt of a write, so the
 * shard's session table makes retries exactly-once. An op has a deadline:
 * a write given up on is recorded with an unknown outcome, a read given up
 * on is left out of the history. Every finished op goes to the lincheck
 * history with its call and return stamps.
 *
 * Bank clients (SIM_CLIENT_BANK) use the same requests, routing and
 * retries; what their ops mean is sim_bank.c's, which this file calls for
 * their answers and give-ups. A transaction (SIM_TXN) refused because a
 * key is locked (ENGINE_ELOCKED: nothing applied) is sent again a little
 * later, as libkv does.
 *
 * Counter clients (SIM_CLIENT_COUNTER) likewise: their incr is a
 * Request.call of the built-in procedure with a session, retried as a
 * write; what their ops mean is sim_counter.c's. A call the leader queued
 * and never proposed (KV_ETIMEDOUT: "waited too long for writes in
 * flight") is sent again, as after KV_EUNAVAILABLE.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "engine.h"
#include "kv.h"
#include "lincheck.h"
#include "sim.h"
#include "wire.h"

#define OP_DEADLINE_MS 3000
#define FINAL_DEADLINE_MS 20000
#define ATTEMPT_MIN_MS 150
#define ATTEMPT_MAX_MS 400
#define TXN_ATTEMPT_MIN_MS 300 /* a transaction takes several rounds */
#define TXN_ATTEMPT_MAX_MS 1000
#define MAX_ATTEMPTS 65535

static const char *op_name(int kind)
{
    switch (kind) {
    case SIM_GET:
        return "get";
    case SIM_PUT:
        return "put";
    case SIM_CAS:
        return "put --if-version";
    case SIM_INSERT:
        return "put --if-absent";
    case SIM_DEL:
        return "delete";
    case SIM_SCAN:
        return "scan";
    case SIM_TXN:
        return "transaction";
    case SIM_INCR:
        return "incr";
    default:
        return "delete --if-version";
    }
}

static bool is_write(int kind)
{
    return kind != SIM_GET && kind != SIM_SCAN;
}

void sim_value_encode(uint64_t value, size_t pad, unsigned char *buf)
{
    for (int i = 7; i >= 0; i--) {
        buf[i] = (unsigned char)value;
        value >>= 8;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | buf[i];
    for (size_t i = 0; i < pad; i++)
        buf[8 + i] = (unsigned char)((v + i) * 31u);
}

int sim_value_decode(const void *buf, size_t len, uint64_t *value)
{
    const unsigned char *p = buf;
    if (len < 8)
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    for (size_t i = 8; i < len; i++)
        if (p[i] != (unsigned char)((v + (i - 8)) * 31u))
            return -1;
    *value = v;
    return 0;
}

void sim_clients_init(struct sim *s)
{
    s->nclients =
        s->p.nclients + s->p.nbulk + s->p.nghost + s->p.nbank + s->p.ncounter;
    for (int i = 0; i < s->nclients; i++) {
        struct sim_client *c = &s->clients[i];
        memset(c, 0, sizeof(*c));
        c->idx = i;
        int bulk_end = s->p.nclients + s->p.nbulk;
        int bank_end = bulk_end + s->p.nghost + s->p.nbank;
        c->mode = i < s->p.nclients            ? SIM_CLIENT_REGISTER
                  : i < bulk_end               ? SIM_CLIENT_BULK
                  : i < bulk_end + s->p.nghost ? SIM_CLIENT_GHOST
                  : i < bank_end               ? SIM_CLIENT_BANK
                                               : SIM_CLIENT_COUNTER;
        for (size_t j = 0; j < sizeof(c->cid); j++)
            c->cid[j] = (unsigned char)sim_rand(&s->rng);
        for (int sh = 0; sh < s->p.nshards; sh++)
            c->leader[sh] = (int)conf_replica(s->conf, (uint32_t)sh, 0);
        c->next_start = sim_range(&s->rng, 1, 50);
    }
}

bool sim_clients_idle(const struct sim *s)
{
    for (int i = 0; i < s->nclients; i++)
        if (s->clients[i].busy)
            return false;
    return true;
}

/* The next member of the shard's placement after node index CUR. */
static int next_member(struct sim *s, uint32_t shard, int cur)
{
    uint32_t r = s->conf->replicas;
    for (uint32_t i = 0; i < r; i++)
        if ((int)conf_replica(s->conf, shard, i) == cur)
            return (int)conf_replica(s->conf, shard, (i + 1) % r);
    return (int)conf_replica(s->conf, shard, 0);
}

/* Fills the Request.txn of bank transaction OP: TOPS/TOPP/VALS are the
 * caller's storage for its ops. */
static void fill_txn(struct sim *s, const struct sim_op *op,
                     Kv__TxnRequest *txn, Kv__TxnOp *tops, Kv__TxnOp **topp,
                     unsigned char (*vals)[SIM_BANK_VALUE_MAX])
{
    for (int i = 0; i < op->ntops; i++) {
        const struct sim_txn_op *t = &op->tops[i];
        Kv__TxnOp *o = &tops[i];
        kv__txn_op__init(o);
        o->kind = (Kv__TxnOp__Kind)t->kind;
        o->key.data = (uint8_t *)s->accts[t->acct];
        o->key.len = s->alen[t->acct];
        if (t->kind == KV__TXN_OP__KIND__PUT) {
            o->value.data = vals[i];
            o->value.len = sim_bank_value(t->balance, vals[i]);
        } else if (t->kind == KV__TXN_OP__KIND__IF_VERSION) {
            o->version = t->version;
        }
        topp[i] = o;
    }
    txn->ops = topp;
    txn->n_ops = (size_t)op->ntops;
}

static void send_attempt(struct sim *s, struct sim_client *c)
{
    struct sim_op *op = &c->op;
    if (op->attempt >= MAX_ATTEMPTS) {
        op->deadline = s->now; /* gives up at the next step */
        return;
    }
    op->attempt++;
    uint32_t amax = op->kind == SIM_TXN ? TXN_ATTEMPT_MAX_MS : ATTEMPT_MAX_MS;
    op->attempt_deadline =
        s->now + sim_range(&s->rng,
                           op->kind == SIM_TXN ? TXN_ATTEMPT_MIN_MS
                                               : ATTEMPT_MIN_MS,
                           amax);
    op->resend_at = 0;
    Kv__Request req = KV__REQUEST__INIT;
    Kv__GetRequest get = KV__GET_REQUEST__INIT;
    Kv__PutRequest put = KV__PUT_REQUEST__INIT;
    Kv__DeleteRequest del = KV__DELETE_REQUEST__INIT;
    Kv__ScanRequest scan = KV__SCAN_REQUEST__INIT;
    Kv__TxnRequest txn = KV__TXN_REQUEST__INIT;
    Kv__CallRequest call = KV__CALL_REQUEST__INIT;
    Kv__TxnOp tops[2 * SIM_MAX_ACCTS];
    Kv__TxnOp *topp[2 * SIM_MAX_ACCTS];
    unsigned char tvals[2 * SIM_MAX_ACCTS][SIM_BANK_VALUE_MAX];
    unsigned char vbuf[8 + 4096];
    req.id = op->id << 16 | (uint64_t)op->attempt;
    /* As libkv: the time the whole call has left, over which the same
     * write may come again (its session is kept at least twice that). */
    req.timeout_ms =
        op->deadline > s->now ? (uint32_t)(op->deadline - s->now) : amax;
    ProtobufCBinaryData key = {op->klen, (uint8_t *)op->kbuf};
    if (is_write(op->kind)) {
        req.client_id.data = c->cid;
        req.client_id.len = sizeof(c->cid);
        req.seq = op->wseq;
    }
    switch (op->kind) {
    case SIM_GET:
        get.key = key;
        req.op_case = KV__REQUEST__OP_GET;
        req.get = &get;
        break;
    case SIM_SCAN:
        /* the shard's register keys: "{tag}k..." (not the bulk keys) */
        scan.shard = op->shard;
        scan.prefix = key;
        req.op_case = KV__REQUEST__OP_SCAN;
        req.scan = &scan;
        break;
    case SIM_TXN:
        fill_txn(s, op, &txn, tops, topp, tvals);
        req.op_case = KV__REQUEST__OP_TXN;
        req.txn = &txn;
        break;
    case SIM_INCR:
        call.name = "incr";
        call.key = key;
        call.arg.data = (uint8_t *)op->tbuf;
        call.arg.len = op->tlen;
        req.op_case = KV__REQUEST__OP_CALL;
        req.call = &call;
        break;
    case SIM_PUT:
    case SIM_CAS:
    case SIM_INSERT:
        put.key = key;
        if (op->text) { /* a counter's number */
            put.value.data = (uint8_t *)op->tbuf;
            put.value.len = op->tlen;
        } else {
            sim_value_encode(op->value, op->pad, vbuf);
            put.value.data = vbuf;
            put.value.len = 8 + op->pad;
        }
        put.if_version = op->kind == SIM_CAS ? op->expect : 0;
        put.if_absent = op->kind == SIM_INSERT;
        req.op_case = KV__REQUEST__OP_PUT;
        req.put = &put;
        break;
    default:
        del.key = key;
        del.if_version = op->kind == SIM_DEL_IF ? op->expect : 0;
        req.op_case = KV__REQUEST__OP_DEL;
        req.del = &del;
        break;
    }
    void *buf = NULL;
    size_t len = 0;
    if (wire_encode_request(&req, &buf, &len) != KV_OK) {
        sim_fail(s, "client %d: cannot encode a request", c->idx);
        return;
    }
    sim_net_send(s, SIM_MSG_REQ, c->idx, op->target, buf, len);
    free(buf);
}

void sim_client_send(struct sim *s, struct sim_client *c)
{
    send_attempt(s, c);
}

void sim_client_reset_op(struct sim_client *c)
{
    memset(&c->op, 0, sizeof(c->op));
}

void sim_client_begin(struct sim *s, struct sim_client *c, int kind,
                      uint32_t shard, uint64_t deadline, bool final)
{
    struct sim_op *op = &c->op;
    op->kind = kind;
    op->final = final;
    op->shard = shard;
    op->key = UINT64_MAX; /* no lincheck key */
    if (is_write(kind))
        op->wseq = ++c->seq; /* kept by every attempt: exactly-once */
    op->id = ++s->op_ids;
    op->call = sim_stamp(s);
    op->deadline = deadline;
    op->target = c->leader[shard];
    if (sim_ppm(&s->rng, 50000)) /* sometimes a random node: a redirect */
        op->target = (int)sim_below(&s->rng, (uint64_t)s->p.nnodes);
    c->busy = true;
    send_attempt(s, c);
}

static void begin_op(struct sim *s, struct sim_client *c, int kind, int key,
                     bool final)
{
    struct sim_op *op = &c->op;
    memset(op, 0, sizeof(*op));
    op->kind = kind;
    op->final = final;
    if (kind == SIM_SCAN) {
        op->key = (uint64_t)key;
        op->shard = s->kshard[key];
        int n =
            snprintf(op->kbuf, sizeof(op->kbuf), "{%s}k", s->tags[op->shard]);
        op->klen = (size_t)n;
    } else if (key >= 0) {
        op->key = (uint64_t)key;
        memcpy(op->kbuf, s->keys[key], s->klen[key]);
        op->klen = s->klen[key];
        op->shard = s->kshard[key];
    } else { /* a new bulk key */
        uint64_t b = s->bulk_next++;
        op->key = SIM_BULK_KEY_BASE + b;
        int n = snprintf(op->kbuf, sizeof(op->kbuf), "{%s}bulk%llu",
                         s->tags[s->sc_shard], (unsigned long long)b);
        op->klen = (size_t)n;
        op->shard = (uint32_t)s->sc_shard;
    }
    if (is_write(kind)) {
        op->wseq = ++c->seq;
        if (kind == SIM_PUT || kind == SIM_CAS || kind == SIM_INSERT) {
            op->value = (uint64_t)(c->idx + 1) << 40 | ++c->counter;
            op->pad = (size_t)sim_below(&s->rng, s->p.value_pad_max + 1);
        }
        if (kind == SIM_CAS || kind == SIM_DEL_IF) {
            uint64_t k = key >= 0 ? c->known[key] : 0;
            op->expect = k ? k : sim_range(&s->rng, 1, 40);
        }
    }
    op->id = ++s->op_ids;
    op->call = sim_stamp(s);
    op->deadline = s->now + (final ? FINAL_DEADLINE_MS : OP_DEADLINE_MS);
    op->target = c->leader[op->shard];
    if (sim_ppm(&s->rng, 50000)) /* sometimes a random node: a redirect */
        op->target = (int)sim_below(&s->rng, (uint64_t)s->p.nnodes);
    c->busy = true;
    send_attempt(s, c);
}

static void start_register_op(struct sim *s, struct sim_client *c)
{
    int key = (int)sim_below(&s->rng, (uint64_t)s->p.nkeys);
    uint64_t r = sim_below(&s->rng, 100);
    int kind = r < 5    ? SIM_SCAN
               : r < 30 ? SIM_GET
               : r < 55 ? SIM_PUT
               : r < 72 ? SIM_CAS
               : r < 82 ? SIM_INSERT
               : r < 94 ? SIM_DEL
                        : SIM_DEL_IF;
    begin_op(s, c, kind, key, false);
}

void sim_clients_final(struct sim *s)
{
    if (s->p.ncounters)
        sim_counter_plan_final(s);
    /* the first bank client audits until an audit commits */
    for (int i = 0; i < s->nclients; i++) {
        if (s->clients[i].mode == SIM_CLIENT_BANK) {
            s->clients[i].nfinal = 1;
            break;
        }
    }
    for (int k = 0; k < s->p.nkeys; k++) {
        struct sim_client *c = &s->clients[k % s->p.nclients];
        int kinds[3] = {SIM_GET, SIM_PUT, SIM_GET};
        for (int i = 0; i < 3; i++) {
            c->final_kind[c->nfinal] = kinds[i];
            c->final_key[c->nfinal] = k;
            c->nfinal++;
        }
    }
}

/* Adds one op of client C to the history: kind LKIND on KEY, called at
 * the op's call stamp, returned now (or pending). */
static void add_op(struct sim *s, struct sim_client *c, int lkind, uint64_t key,
                   int outcome, uint64_t out_value, uint64_t out_version,
                   uint64_t ret)
{
    struct sim_op *op = &c->op;
    struct lin_op lo;
    memset(&lo, 0, sizeof(lo));
    lo.key = key;
    lo.kind = lkind;
    lo.client = c->idx;
    lo.call = op->call;
    lo.ret = outcome == LIN_OUT_UNKNOWN ? LIN_PENDING : ret;
    lo.outcome = outcome;
    if (op->kind == SIM_PUT || op->kind == SIM_CAS || op->kind == SIM_INSERT)
        lo.value = op->value;
    if (op->kind == SIM_CAS || op->kind == SIM_DEL_IF)
        lo.expect_version = op->expect;
    if (outcome == LIN_OUT_OK) {
        lo.out_value = out_value;
        lo.out_version = out_version;
    }
    int rc = lin_add(s->hist, &lo);
    if (rc != LIN_OK)
        sim_fail(s, "lin_add refused client %d's %s: %s", c->idx,
                 op_name(op->kind),
                 rc == LIN_EINVAL ? lin_op_problem(&lo) : "out of memory");
    if (outcome == LIN_OUT_OK)
        s->st.ops_ok++;
    else if (outcome == LIN_OUT_FAILED)
        s->st.ops_failed++;
    else if (outcome == LIN_OUT_ABSENT)
        s->st.ops_absent++;
    else
        s->st.ops_unknown++;
}

static int lin_kind_of(int kind)
{
    switch (kind) {
    case SIM_GET:
    case SIM_SCAN:
        return LIN_READ;
    case SIM_PUT:
        return LIN_WRITE;
    case SIM_CAS:
        return LIN_CAS;
    case SIM_INSERT:
        return LIN_INSERT;
    default:
        return LIN_DELETE;
    }
}

/* Records the current op, which ended with OUTCOME. */
static void record(struct sim *s, struct sim_client *c, int outcome,
                   uint64_t out_value, uint64_t out_version)
{
    add_op(s, c, lin_kind_of(c->op.kind), c->op.key, outcome, out_value,
           out_version, outcome == LIN_OUT_UNKNOWN ? 0 : sim_stamp(s));
}

static void end_op(struct sim *s, struct sim_client *c)
{
    if (c->op.final && c->mode != SIM_CLIENT_BANK)
        c->final_pos++;
    c->busy = false;
    c->next_start = s->now + sim_range(&s->rng, 0, 20);
}

void sim_client_end_op(struct sim *s, struct sim_client *c)
{
    end_op(s, c);
}

static void give_up(struct sim *s, struct sim_client *c)
{
    struct sim_op *op = &c->op;
    if (c->mode == SIM_CLIENT_BANK) {
        sim_bank_gave_up(s, c);
        return;
    }
    if (c->mode == SIM_CLIENT_COUNTER) {
        sim_counter_gave_up(s, c);
        return;
    }
    if (op->final) {
        sim_fail(s,
                 "liveness: the final %s of key %.*s (shard %u) did not "
                 "succeed within %d ms after the heal",
                 op_name(op->kind), (int)op->klen, op->kbuf, op->shard,
                 FINAL_DEADLINE_MS);
        return;
    }
    sim_log(s, "client %d gives up its %s of %.*s after %d attempts", c->idx,
            op_name(op->kind), (int)op->klen, op->kbuf, op->attempt);
    if (is_write(op->kind))
        record(s, c, LIN_OUT_UNKNOWN, 0, 0);
    else
        s->st.reads_dropped++;
    if (op->key < SIM_MAX_KEYS)
        c->known[op->key] = 0;
    end_op(s, c);
}

void sim_clients_step(struct sim *s)
{
    for (int i = 0; i < s->nclients && !s->failed; i++) {
        struct sim_client *c = &s->clients[i];
        if (!c->busy) {
            if (s->now < c->next_start)
                continue;
            if (c->mode == SIM_CLIENT_BANK) {
                if (s->phase == SIM_PH_FINAL && c->final_pos < c->nfinal)
                    sim_bank_final(s, c);
                else if (s->phase == SIM_PH_RUN || s->phase == SIM_PH_HEAL)
                    sim_bank_start(s, c);
            } else if (c->mode == SIM_CLIENT_COUNTER) {
                if (s->phase == SIM_PH_FINAL && c->final_pos < c->nfinal)
                    sim_counter_final(s, c);
                else if (s->phase == SIM_PH_RUN || s->phase == SIM_PH_HEAL)
                    sim_counter_start(s, c);
            } else if (s->phase == SIM_PH_FINAL) {
                if (c->final_pos < c->nfinal)
                    begin_op(s, c, c->final_kind[c->final_pos],
                             c->final_key[c->final_pos], true);
            } else if (s->phase == SIM_PH_RUN || s->phase == SIM_PH_HEAL) {
                if (c->mode == SIM_CLIENT_REGISTER)
                    start_register_op(s, c);
                else if (c->mode == SIM_CLIENT_BULK && s->bulk_on)
                    begin_op(s, c, SIM_PUT, -1, false);
            }
            continue;
        }
        struct sim_op *op = &c->op;
        if (s->now >= op->deadline) {
            give_up(s, c);
        } else if (op->resend_at) {
            if (s->now >= op->resend_at)
                send_attempt(s, c);
        } else if (s->now >= op->attempt_deadline) {
            s->st.retries++;
            op->target = next_member(s, op->shard, op->target);
            send_attempt(s, c);
        }
    }
}

static int key_cmp(const ProtobufCBinaryData *a, const ProtobufCBinaryData *b)
{
    size_t n = a->len < b->len ? a->len : b->len;
    int c = n ? memcmp(a->data, b->data, n) : 0;
    if (c)
        return c;
    return a->len < b->len ? -1 : a->len > b->len;
}

/* A scan answered: one read per register key of the shard, all at the
 * scan's call and return times (a key it did not return was absent). */
static void finish_scan(struct sim *s, struct sim_client *c, int from,
                        const Kv__Response *resp)
{
    struct sim_op *op = &c->op;
    if (resp->code != KV_OK || resp->result_case != KV__RESPONSE__RESULT_SCAN ||
        !resp->scan || resp->scan->more) {
        sim_fail(s,
                 "client %d: scan of shard %u got an impossible answer "
                 "from node %d: code %d (%s) result %d",
                 c->idx, op->shard, from + 1, resp->code,
                 kv_strerror(resp->code), (int)resp->result_case);
        return;
    }
    const Kv__ScanResult *r = resp->scan;
    bool seen[SIM_MAX_KEYS] = {false};
    uint64_t val[SIM_MAX_KEYS] = {0}, ver[SIM_MAX_KEYS] = {0};
    for (size_t i = 0; i < r->n_entries; i++) {
        const Kv__Entry *e = r->entries[i];
        int k = -1;
        for (int j = 0; j < s->p.nkeys && k < 0; j++)
            if (s->kshard[j] == op->shard && e->key.len == s->klen[j] &&
                memcmp(e->key.data, s->keys[j], s->klen[j]) == 0)
                k = j;
        if (k < 0 || seen[k] || e->version == 0 ||
            sim_value_decode(e->value.data, e->value.len, &val[k]) != 0 ||
            (i > 0 && key_cmp(&r->entries[i - 1]->key, &e->key) >= 0)) {
            sim_fail(s,
                     "client %d: scan of shard %u from node %d returned "
                     "a bad entry %zu (unknown key, duplicate, out of "
                     "order, or a value no client wrote)",
                     c->idx, op->shard, from + 1, i);
            return;
        }
        seen[k] = true;
        ver[k] = e->version;
    }
    uint64_t ret = sim_stamp(s);
    for (int k = 0; k < s->p.nkeys; k++) {
        if (s->kshard[k] != op->shard)
            continue;
        if (seen[k]) {
            sim_check_value_version(s, val[k], ver[k]);
            c->known[k] = ver[k];
        } else {
            c->known[k] = 0;
        }
        add_op(s, c, LIN_READ, (uint64_t)k,
               seen[k] ? LIN_OUT_OK : LIN_OUT_ABSENT, val[k], ver[k], ret);
    }
    s->st.scans++;
    c->leader[op->shard] = from;
    sim_log(s,
            "client %d: scan of shard %u -> %zu keys (attempt %d, node "
            "%d)",
            c->idx, op->shard, r->n_entries, op->attempt, from + 1);
    end_op(s, c);
}

/* An answer that settles the op: check it and record it. */
static void finish(struct sim *s, struct sim_client *c, int from,
                   const Kv__Response *resp)
{
    struct sim_op *op = &c->op;
    int code = resp->code;
    int outcome = 0;
    uint64_t value = 0, version = 0;
    bool reg = op->key < SIM_MAX_KEYS;
    if (c->mode == SIM_CLIENT_BANK) {
        sim_bank_answer(s, c, from, resp);
        return;
    }
    if (c->mode == SIM_CLIENT_COUNTER) {
        sim_counter_answer(s, c, from, resp);
        return;
    }
    if (op->kind == SIM_SCAN) {
        finish_scan(s, c, from, resp);
        return;
    }
    switch (op->kind) {
    case SIM_GET:
        if (code == KV_ENOTFOUND) {
            outcome = LIN_OUT_ABSENT;
            break;
        }
        if (code != KV_OK || resp->result_case != KV__RESPONSE__RESULT_GET ||
            !resp->get) {
            break;
        }
        if (sim_value_decode(resp->get->value.data, resp->get->value.len,
                             &value) != 0) {
            sim_fail(s,
                     "client %d: get of %.*s returned a value no client "
                     "wrote (%zu bytes)",
                     c->idx, (int)op->klen, op->kbuf, resp->get->value.len);
            return;
        }
        version = resp->get->version;
        if (version == 0) {
            sim_fail(s, "client %d: get of %.*s returned version 0", c->idx,
                     (int)op->klen, op->kbuf);
            return;
        }
        outcome = LIN_OUT_OK;
        break;
    case SIM_PUT:
    case SIM_CAS:
    case SIM_INSERT:
        if (code == KV_ECONFLICT && op->kind != SIM_PUT) {
            outcome = LIN_OUT_FAILED;
            break;
        }
        if (code != KV_OK || resp->result_case != KV__RESPONSE__RESULT_WRITE ||
            !resp->write || resp->write->version == 0)
            break;
        value = op->value;
        version = resp->write->version;
        outcome = LIN_OUT_OK;
        break;
    default:
        if (code == KV_OK)
            outcome = LIN_OUT_OK;
        else if (code == KV_ENOTFOUND)
            outcome = LIN_OUT_ABSENT;
        else if (code == KV_ECONFLICT && op->kind == SIM_DEL_IF)
            outcome = LIN_OUT_FAILED;
        break;
    }
    if (!outcome) {
        sim_fail(s,
                 "client %d: %s of %.*s got an impossible answer from "
                 "node %d: code %d (%s) result %d \"%s\"",
                 c->idx, op_name(op->kind), (int)op->klen, op->kbuf, from + 1,
                 code, kv_strerror(code), (int)resp->result_case,
                 resp->message ? resp->message : "");
        return;
    }
    if (outcome == LIN_OUT_OK && op->kind != SIM_DEL && op->kind != SIM_DEL_IF)
        sim_check_value_version(s, value, version);
    if (reg) {
        if (outcome == LIN_OUT_OK)
            c->known[op->key] = version;
        else if (outcome == LIN_OUT_ABSENT)
            c->known[op->key] = 0;
    }
    if (op->final && op->kind == SIM_GET && reg) {
        /* The first final read is the state after the faults; the last
         * one the state the stores must hold. */
        bool first = !s->final_read[op->key];
        if (first) {
            s->final_read[op->key] = true;
            s->first_present[op->key] = outcome == LIN_OUT_OK;
            s->first_value[op->key] = value;
            s->first_version[op->key] = version;
        }
        s->final_present[op->key] = outcome == LIN_OUT_OK;
        s->final_value[op->key] = value;
        s->final_version[op->key] = version;
    }
    c->leader[op->shard] = from;
    sim_log(s, "client %d: %s %.*s -> %s v=%llu (attempt %d, node %d)", c->idx,
            op_name(op->kind), (int)op->klen, op->kbuf,
            outcome == LIN_OUT_OK       ? "ok"
            : outcome == LIN_OUT_ABSENT ? "absent"
                                        : "failed",
            (unsigned long long)version, op->attempt, from + 1);
    record(s, c, outcome, value, version);
    end_op(s, c);
}

static void unexpected_answer(struct sim *s, const struct sim_client *c,
                              int from, const Kv__Response *resp)
{
    const struct sim_op *op = &c->op;
    sim_fail(s,
             "client %d: %s of %.*s got an unexpected answer from node %d: "
             "%s (%d) \"%s\"",
             c->idx, op_name(op->kind), (int)op->klen, op->kbuf, from + 1,
             kv_strerror(resp->code), resp->code,
             resp->message ? resp->message : "");
}

void sim_client_response(struct sim *s, int ci, int from, const void *buf,
                         size_t len)
{
    Kv__Envelope *env = NULL;
    char err[128] = "";
    int rc = wire_decode(buf, len, s->conf->max_message_bytes, &env, err,
                         sizeof(err));
    if (rc != KV_OK || env->body_case != KV__ENVELOPE__BODY_RESPONSE) {
        sim_fail(s, "node %d sent client %d a bad response frame: %s", from + 1,
                 ci, rc != KV_OK ? err : "not a Response");
        wire_free(env);
        return;
    }
    const Kv__Response *resp = env->response;
    struct sim_client *c = &s->clients[ci];
    struct sim_op *op = &c->op;
    int attempt = (int)(resp->id & 0xffff);
    if (!c->busy || resp->id >> 16 != op->id) {
        /* an answer to an op already over */
        if (c->mode == SIM_CLIENT_COUNTER)
            sim_counter_late(s, c, from, resp);
        wire_free(env);
        return;
    }
    switch (resp->code) {
    case KV_OK:
    case KV_ECONFLICT:
    case KV_ENOTFOUND:
        /* A settled outcome, whichever attempt it answers. */
        finish(s, c, from, resp);
        break;
    case KV_ENOTLEADER:
        if (attempt != op->attempt || op->resend_at)
            break;
        s->st.retries++;
        if (resp->leader_id >= 1 && resp->leader_id <= (uint32_t)s->p.nnodes &&
            (int)resp->leader_id - 1 != from) {
            op->target = (int)resp->leader_id - 1;
            c->leader[op->shard] = op->target;
            op->resend_at = s->now + sim_range(&s->rng, 1, 5);
        } else {
            op->target = next_member(s, op->shard, from);
            op->resend_at = s->now + sim_range(&s->rng, 10, 50);
        }
        break;
    case KV_ETIMEDOUT:
        /* Only a call left in its leader's queue (never proposed) ends so;
         * for anything else it is an answer no node gives. */
        if (op->kind != SIM_INCR) {
            unexpected_answer(s, c, from, resp);
            break;
        }
        s->st.incr_timedout++; /* sent again, as after KV_EUNAVAILABLE */
        /* fall through */
    case KV_EUNAVAILABLE:
        if (op->kind == SIM_INCR) {
            s->st.incr_unavailable += resp->code == KV_EUNAVAILABLE;
            sim_log(s,
                    "client %d: incr %.*s: %s \"%s\" (attempt %d of %d, "
                    "node %d)",
                    c->idx, (int)op->klen, op->kbuf, kv_strerror(resp->code),
                    resp->message ? resp->message : "", attempt, op->attempt,
                    from + 1);
        }
        if (attempt != op->attempt || op->resend_at)
            break;
        s->st.retries++;
        op->resend_at = s->now + sim_range(&s->rng, 10, 50);
        break;
    case ENGINE_ELOCKED:
        /* A key of a single-shard transaction is locked by another
         * transaction: nothing applied; the same request goes again. */
        if (op->kind != SIM_TXN) {
            unexpected_answer(s, c, from, resp);
            break;
        }
        if (attempt != op->attempt || op->resend_at)
            break;
        s->st.retries++;
        c->leader[op->shard] = from;
        op->resend_at = s->now + sim_range(&s->rng, 5, 30);
        break;
    default:
        unexpected_answer(s, c, from, resp);
        break;
    }
    wire_free(env);
}
