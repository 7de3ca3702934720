/*
 * txn - the coordinator of cross-shard transactions; see txn.h.
 */
#include "txn.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "kv.h"
#include "log.h"
#include "shard.h"

enum phase {
    PH_RECORD,  /* creating the record */
    PH_PREPARE, /* waiting for votes */
    PH_DECIDE,  /* waiting for the decision to be applied */
    PH_RESOLVE, /* telling participants */
    PH_FORGET,  /* deleting the record */
    PH_ASK,     /* a participant's check: asking the home shard */
    PH_SETTLE,  /* a participant's check: resolving locally */
};

enum want { WANT_ASK = 0, WANT_COMMIT = 1, WANT_ABORT = 2, WANT_FORGET = 3 };

struct part {
    uint32_t shard;
    size_t *ops; /* indexes into the client's ops */
    size_t nops;
    int vote; /* 0 none yet, 1 yes, 2 no */
    uint64_t version;
    bool resolved;
    uint64_t call; /* id of the outstanding call, 0: none */
    int wait;      /* ticks until it is repeated */
};

struct coord {
    unsigned char id[ENGINE_TXN_ID_LEN];
    uint32_t home;
    uint64_t deadline;
    enum phase phase;
    Kv__Request *req; /* the client's request (NULL when adopted) */
    unsigned char *client;
    size_t clen;
    uint64_t req_id;
    bool answered;
    struct part *parts;
    size_t nparts;
    int state;     /* the record's state, once known */
    uint64_t call; /* record / decide / forget / ask / settle call */
    int wait;
    int want; /* PH_DECIDE: what was asked */
    /* the first NO vote, for the client */
    int no_code;
    size_t no_op; /* 1-based client op */
    uint64_t no_cur;
    uint32_t check_shard; /* PH_ASK/PH_SETTLE: the participant shard */
};

struct txns {
    uint32_t nshards;
    uint32_t timeout_ms;
    struct txn_env env;
    struct coord **c;
    size_t n, cap;
    uint64_t next_call;
    uint64_t rng;
};

/* Calls carry ids with the top bit set, so they never collide with the ids
 * clients choose for requests that go through the same reply path. */
#define CALL_BIT CALL_BIT_OF_TXN

static const char *const state_names[] = {"pending", "committed", "aborted",
                                          "unknown"};

static uint64_t next_rand(struct txns *t)
{
    uint64_t z = (t->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void txns_id_of(const void *client_id, size_t len, uint64_t seq, uint32_t home,
                unsigned char out[ENGINE_TXN_ID_LEN])
{
    unsigned char tail[12];
    put_u64(tail, seq);
    put_u32(tail + 8, home);
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, ENGINE_TXN_ID_LEN);
    crypto_generichash_update(&st, client_id, len);
    crypto_generichash_update(&st, tail, sizeof(tail));
    crypto_generichash_final(&st, out, ENGINE_TXN_ID_LEN);
}

struct txns *txns_new(uint32_t nshards, uint32_t timeout_ms,
                      const struct txn_env *env, uint64_t seed)
{
    struct txns *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->nshards = nshards;
    t->timeout_ms = timeout_ms;
    t->env = *env;
    t->rng = seed ^ 0x74786e73ull;
    /* Ids start at a random point of 61 bits, so an answer addressed to an
     * earlier run of this node (a restart) matches no call of this one. */
    t->next_call = next_rand(t) >> 3;
    return t;
}

static void coord_free(struct coord *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nparts; i++)
        free(c->parts[i].ops);
    free(c->parts);
    free(c->client);
    if (c->req)
        kv__request__free_unpacked(c->req, NULL);
    free(c);
}

void txns_free(struct txns *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++)
        coord_free(t->c[i]);
    free(t->c);
    free(t);
}

/* Whether C is a participant's check rather than a coordinator. */
static bool is_check(const struct coord *c)
{
    return c->phase == PH_ASK || c->phase == PH_SETTLE;
}

/* The coordinator (CHECK false) or participant check (CHECK true) of the
 * transaction ID running here, or NULL. A node may run both for one
 * transaction: a check of its participant shard, and the coordinator a
 * client's retry started on its home shard. */
static struct coord *find(const struct txns *t, const unsigned char *id,
                          bool check)
{
    for (size_t i = 0; i < t->n; i++)
        if (is_check(t->c[i]) == check &&
            memcmp(t->c[i]->id, id, ENGINE_TXN_ID_LEN) == 0)
            return t->c[i];
    return NULL;
}

bool txns_busy(const struct txns *t, const unsigned char *txn_id)
{
    return find(t, txn_id, false) != NULL || find(t, txn_id, true) != NULL;
}

size_t txns_active(const struct txns *t)
{
    return t->n;
}

static int add(struct txns *t, struct coord *c)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        struct coord **p = realloc(t->c, cap * sizeof(*p));
        if (!p)
            return KV_ENOMEM;
        t->c = p;
        t->cap = cap;
    }
    t->c[t->n++] = c;
    return KV_OK;
}

static void drop(struct txns *t, struct coord *c)
{
    for (size_t i = 0; i < t->n; i++) {
        if (t->c[i] == c) {
            t->c[i] = t->c[--t->n];
            break;
        }
    }
    coord_free(c);
}

/* --- calls ------------------------------------------------------------ */

static uint64_t new_call(struct txns *t)
{
    t->next_call = (t->next_call + 1) & ((1ull << 61) - 1);
    return CALL_BIT | t->next_call;
}

static void call_record(struct txns *t, struct coord *c)
{
    Kv__TxnRecord rec = KV__TXN_RECORD__INIT;
    rec.txn_id.data = c->id;
    rec.txn_id.len = ENGINE_TXN_ID_LEN;
    rec.shard = c->home;
    rec.deadline_ms = c->deadline;
    uint32_t parts[64];
    uint32_t *pp = c->nparts <= 64 ? parts : malloc(c->nparts * sizeof(*pp));
    if (!pp)
        return; /* repeated at the next tick */
    for (size_t i = 0; i < c->nparts; i++)
        pp[i] = c->parts[i].shard;
    rec.parts = pp;
    rec.n_parts = c->nparts;
    Kv__Request req = KV__REQUEST__INIT;
    req.id = c->call = new_call(t);
    req.op_case = KV__REQUEST__OP_TXN_RECORD;
    req.txn_record = &rec;
    /* With the session, the home shard does not make the record again for
     * a transaction it already decided and forgot; the client's timeout
     * says how long it must keep the session for the client's retries. */
    if (c->req) {
        req.client_id = c->req->client_id;
        req.seq = c->req->seq;
        req.timeout_ms = c->req->timeout_ms;
    }
    t->env.call(t->env.arg, c->home, &req);
    if (pp != parts)
        free(pp);
    c->wait = TXN_RETRY_TICKS;
}

static void call_decide(struct txns *t, struct coord *c, uint32_t shard,
                        int want)
{
    Kv__TxnDecide d = KV__TXN_DECIDE__INIT;
    d.txn_id.data = c->id;
    d.txn_id.len = ENGINE_TXN_ID_LEN;
    d.shard = shard;
    d.want = (uint32_t)want;
    Kv__Request req = KV__REQUEST__INIT;
    req.id = c->call = new_call(t);
    req.op_case = KV__REQUEST__OP_TXN_DECIDE;
    req.txn_decide = &d;
    /* The decision is recorded in the client's session on the home shard,
     * so a retry after the record is forgotten gets it. */
    if (c->req && want != WANT_ASK && want != WANT_FORGET) {
        req.client_id = c->req->client_id;
        req.seq = c->req->seq;
        req.timeout_ms = c->req->timeout_ms;
    }
    t->env.call(t->env.arg, shard, &req);
    c->wait = TXN_RETRY_TICKS;
}

static void call_prepare(struct txns *t, struct coord *c, struct part *p)
{
    Kv__TxnPrepare pr = KV__TXN_PREPARE__INIT;
    pr.txn_id.data = c->id;
    pr.txn_id.len = ENGINE_TXN_ID_LEN;
    pr.shard = p->shard;
    pr.home = c->home;
    pr.deadline_ms = c->deadline;
    Kv__TxnOp *few[16];
    Kv__TxnOp **ops = p->nops <= 16 ? few : calloc(p->nops, sizeof(*ops));
    if (!ops)
        return;
    for (size_t i = 0; i < p->nops; i++)
        ops[i] = c->req->txn->ops[p->ops[i]];
    pr.ops = ops;
    pr.n_ops = p->nops;
    Kv__Request req = KV__REQUEST__INIT;
    req.id = p->call = new_call(t);
    req.op_case = KV__REQUEST__OP_TXN_PREPARE;
    req.txn_prepare = &pr;
    t->env.call(t->env.arg, p->shard, &req);
    if (ops != few)
        free(ops);
    p->wait = TXN_RETRY_TICKS;
}

static void call_resolve(struct txns *t, const unsigned char *id,
                         uint32_t shard, bool commit, uint64_t *call, int *wait)
{
    Kv__TxnResolve rs = KV__TXN_RESOLVE__INIT;
    rs.txn_id.data = (uint8_t *)id;
    rs.txn_id.len = ENGINE_TXN_ID_LEN;
    rs.shard = shard;
    rs.commit = commit;
    Kv__Request req = KV__REQUEST__INIT;
    req.id = *call = new_call(t);
    req.op_case = KV__REQUEST__OP_TXN_RESOLVE;
    req.txn_resolve = &rs;
    t->env.call(t->env.arg, shard, &req);
    *wait = TXN_RETRY_TICKS;
}

/* --- the coordinator's steps -------------------------------------------- */

/* Answers the client (once), from the decision and the votes. */
static void answer(struct txns *t, struct coord *c)
{
    if (c->answered || !c->client)
        return;
    c->answered = true;
    Kv__Response resp = KV__RESPONSE__INIT;
    Kv__TxnResult res = KV__TXN_RESULT__INIT;
    resp.id = c->req_id;
    resp.result_case = KV__RESPONSE__RESULT_TXN;
    resp.txn = &res;
    uint64_t *versions = NULL;
    char msg[160];
    if (c->state == ENGINE_TXN_COMMITTED) {
        size_t n = c->req ? c->req->txn->n_ops : 0;
        versions = calloc(n ? n : 1, sizeof(*versions));
        if (versions) {
            for (size_t i = 0; i < c->nparts; i++) {
                const struct part *p = &c->parts[i];
                for (size_t j = 0; j < p->nops; j++) {
                    const Kv__TxnOp *op = c->req->txn->ops[p->ops[j]];
                    versions[p->ops[j]] =
                        op->kind == KV__TXN_OP__KIND__PUT          ? p->version
                        : op->kind == KV__TXN_OP__KIND__IF_VERSION ? op->version
                                                                   : 0;
                }
            }
            res.versions = versions;
            res.n_versions = n;
        }
    } else if (c->no_code == KV_ECONFLICT) {
        resp.code = KV_ECONFLICT;
        res.failed_op = (uint32_t)c->no_op;
        res.current_version = c->no_cur;
        resp.message = "condition failed";
    } else if (c->no_code == ENGINE_ELOCKED) {
        resp.code = KV_ECONFLICT;
        resp.message = "aborted: a key is locked by another transaction";
    } else if (c->no_code == KV_ETIMEDOUT || c->state == ENGINE_TXN_ABORTED) {
        resp.code = KV_ECONFLICT;
        snprintf(msg, sizeof(msg),
                 "aborted: not every shard voted within the deadline (%u ms)",
                 t->timeout_ms);
        resp.message = msg;
    } else {
        resp.code = KV_EINTERNAL;
        resp.message = "transaction ended in an unexpected state";
    }
    t->env.reply(t->env.arg, c->client, c->clen, &resp);
    free(versions);
}

static void start_resolve(struct txns *t, struct coord *c)
{
    c->phase = PH_RESOLVE;
    bool commit = c->state == ENGINE_TXN_COMMITTED;
    for (size_t i = 0; i < c->nparts; i++) {
        struct part *p = &c->parts[i];
        p->resolved = false;
        call_resolve(t, c->id, p->shard, commit, &p->call, &p->wait);
    }
}

static void decided(struct txns *t, struct coord *c, int state)
{
    c->state = state;
    if (state == ENGINE_TXN_UNKNOWN) {
        /* Forgotten already (or never made): nothing left to do here. */
        if (c->client && !c->answered) {
            c->answered = true;
            Kv__Response resp = KV__RESPONSE__INIT;
            resp.id = c->req_id;
            resp.code = KV_EUNAVAILABLE;
            resp.message = "transaction record gone; retry";
            t->env.reply(t->env.arg, c->client, c->clen, &resp);
        }
        drop(t, c);
        return;
    }
    if (state == ENGINE_TXN_COMMITTED && t->env.failpoint)
        t->env.failpoint(t->env.arg, "txn-committed");
    answer(t, c);
    start_resolve(t, c);
}

static void decide(struct txns *t, struct coord *c, int want)
{
    c->phase = PH_DECIDE;
    c->want = want;
    call_decide(t, c, c->home, want);
}

/* Every vote is in (or one NO): decide. */
static void maybe_decide(struct txns *t, struct coord *c)
{
    bool all = true;
    for (size_t i = 0; i < c->nparts; i++) {
        if (c->parts[i].vote == 2) {
            decide(t, c, WANT_ABORT);
            return;
        }
        all &= c->parts[i].vote == 1;
    }
    if (all) {
        if (t->env.failpoint)
            t->env.failpoint(t->env.arg, "txn-prepared");
        decide(t, c, WANT_COMMIT);
    }
}

static void start_prepare(struct txns *t, struct coord *c)
{
    c->phase = PH_PREPARE;
    for (size_t i = 0; i < c->nparts; i++)
        if (c->parts[i].vote == 0)
            call_prepare(t, c, &c->parts[i]);
}

/* Splits the client's ops by shard into participants. */
static int make_parts(struct txns *t, struct coord *c)
{
    const Kv__TxnRequest *r = c->req->txn;
    uint32_t *shard_of_op = calloc(r->n_ops ? r->n_ops : 1, sizeof(uint32_t));
    c->parts = calloc(r->n_ops ? r->n_ops : 1, sizeof(*c->parts));
    if (!shard_of_op || !c->parts) {
        free(shard_of_op);
        return KV_ENOMEM;
    }
    for (size_t i = 0; i < r->n_ops; i++) {
        uint32_t s =
            shard_of(r->ops[i]->key.data, r->ops[i]->key.len, t->nshards);
        shard_of_op[i] = s;
        size_t j = 0;
        while (j < c->nparts && c->parts[j].shard != s)
            j++;
        if (j == c->nparts)
            c->parts[c->nparts++].shard = s;
    }
    int rc = KV_OK;
    for (size_t j = 0; j < c->nparts && rc == KV_OK; j++) {
        struct part *p = &c->parts[j];
        p->ops = calloc(r->n_ops, sizeof(size_t));
        if (!p->ops) {
            rc = KV_ENOMEM;
            break;
        }
        for (size_t i = 0; i < r->n_ops; i++)
            if (shard_of_op[i] == p->shard)
                p->ops[p->nops++] = i;
    }
    free(shard_of_op);
    return rc;
}

static void refuse(struct txns *t, const void *client, size_t clen, uint64_t id,
                   int code, const char *msg)
{
    Kv__Response resp = KV__RESPONSE__INIT;
    resp.id = id;
    resp.code = code;
    resp.message = (char *)msg;
    t->env.reply(t->env.arg, client, clen, &resp);
}

/* A deep copy of REQ (free with kv__request__free_unpacked), or NULL. */
static Kv__Request *copy_request(const Kv__Request *req)
{
    size_t n = kv__request__get_packed_size(req);
    unsigned char *buf = malloc(n ? n : 1);
    if (!buf)
        return NULL;
    kv__request__pack(req, buf);
    Kv__Request *copy = kv__request__unpack(NULL, n, buf);
    free(buf);
    return copy;
}

void txns_start(struct txns *t, const void *client, size_t clen,
                const Kv__Request *req, uint32_t home)
{
    unsigned char id[ENGINE_TXN_ID_LEN];
    if (req->seq && req->client_id.len) {
        txns_id_of(req->client_id.data, req->client_id.len, req->seq, home, id);
    } else {
        for (size_t i = 0; i < ENGINE_TXN_ID_LEN; i += 8) {
            uint64_t x = next_rand(t);
            memcpy(id + i, &x, 8);
        }
    }
    struct coord *c = find(t, id, false);
    unsigned char *copy = malloc(clen ? clen : 1);
    if (!copy) {
        refuse(t, client, clen, req->id, KV_ENOMEM, "out of memory");
        return;
    }
    memcpy(copy, client, clen);
    if (c) { /* a retry: answer the newest address */
        if (!c->req) {
            /* Adopted by recovery, so it has no request: keep this one,
             * which says how many versions the answer carries (0 each:
             * they are not known here). */
            c->req = copy_request(req);
            if (!c->req) {
                free(copy);
                refuse(t, client, clen, req->id, KV_EUNAVAILABLE,
                       "out of memory; retry");
                return;
            }
        }
        free(c->client);
        c->client = copy;
        c->clen = clen;
        c->req_id = req->id;
        c->answered = false; /* this address gets the outcome */
        if (c->phase >= PH_RESOLVE)
            answer(t, c); /* decided already */
        return;
    }
    c = calloc(1, sizeof(*c));
    if (c)
        c->req = copy_request(req);
    if (!c || !c->req ||
        (c->client = copy, c->clen = clen, make_parts(t, c) != KV_OK) ||
        add(t, c) != KV_OK) {
        if (!c || !c->client)
            free(copy);
        coord_free(c);
        refuse(t, client, clen, req->id, KV_ENOMEM, "out of memory");
        return;
    }
    memcpy(c->id, id, sizeof(id));
    c->home = home;
    c->req_id = req->id;
    c->deadline = t->env.wall_ms(t->env.arg) + t->timeout_ms;
    c->state = ENGINE_TXN_PENDING;
    c->phase = PH_RECORD;
    call_record(t, c);
}

void txns_adopt(struct txns *t, uint32_t shard, const struct engine_txn_info *x)
{
    if (find(t, x->txn_id, false))
        return;
    if (x->state == ENGINE_TXN_PENDING &&
        t->env.wall_ms(t->env.arg) <= x->deadline_ms)
        return; /* its coordinator may still be at work: wait */
    struct coord *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->parts = calloc(x->nparts ? x->nparts : 1, sizeof(*c->parts));
    if (!c->parts || add(t, c) != KV_OK) {
        coord_free(c);
        return;
    }
    memcpy(c->id, x->txn_id, ENGINE_TXN_ID_LEN);
    c->home = shard;
    c->deadline = x->deadline_ms;
    c->nparts = x->nparts;
    for (size_t i = 0; i < x->nparts; i++)
        c->parts[i].shard = x->parts[i];
    c->answered = true; /* nobody to answer */
    log_msg(LOG_INFO, "recovering a transaction", "shard=%u state=%s", shard,
            state_names[x->state < 4 ? x->state : 3]);
    if (x->state == ENGINE_TXN_PENDING)
        decide(t, c, WANT_ABORT); /* past its deadline: aborted */
    else
        decided(t, c, x->state);
}

void txns_check_prepared(struct txns *t, uint32_t shard,
                         const struct engine_txn_info *p)
{
    if (find(t, p->txn_id, false) || find(t, p->txn_id, true))
        return; /* its coordinator resolves it, or a check runs */
    struct coord *c = calloc(1, sizeof(*c));
    if (!c || add(t, c) != KV_OK) {
        free(c);
        return;
    }
    memcpy(c->id, p->txn_id, ENGINE_TXN_ID_LEN);
    c->home = p->home;
    c->deadline = p->deadline_ms;
    c->answered = true;
    c->check_shard = shard;
    c->phase = PH_ASK;
    call_decide(t, c, c->home, WANT_ASK);
}

/* --- answers ------------------------------------------------------------ */

/* Whether RESP is a transient failure: the call is repeated. */
static bool transient(const Kv__Response *resp)
{
    return resp->code == KV_ENOTLEADER || resp->code == KV_EUNAVAILABLE ||
           resp->code == KV_ETIMEDOUT || resp->code == KV_ENOMEM ||
           resp->code == KV_EIO;
}

static void on_vote(struct txns *t, struct coord *c, struct part *p,
                    const Kv__Response *resp)
{
    p->call = 0;
    if (resp->code == KV_OK &&
        resp->result_case == KV__RESPONSE__RESULT_WRITE) {
        p->vote = 1;
        p->version = resp->write->version;
    } else if (resp->result_case == KV__RESPONSE__RESULT_TXN) {
        p->vote = 2;
        if (!c->no_code) {
            c->no_code = resp->code;
            const Kv__TxnResult *r = resp->txn;
            if (resp->code == KV_ECONFLICT && r->failed_op >= 1 &&
                r->failed_op <= p->nops) {
                c->no_op = p->ops[r->failed_op - 1] + 1;
                c->no_cur = r->current_version;
            }
        }
    } else if (transient(resp)) {
        p->wait = 5; /* soon, to the leader the answer named */
        return;
    } else {
        p->vote = 2; /* a participant that cannot take it: abort */
        if (!c->no_code)
            c->no_code = KV_ETIMEDOUT;
        log_msg(LOG_WARN, "transaction prepare refused",
                "shard=%u code=%d "
                "message=\"%s\"",
                p->shard, resp->code, resp->message ? resp->message : "");
    }
    maybe_decide(t, c);
}

bool txns_reply(struct txns *t, const Kv__Response *resp)
{
    if (!(resp->id & CALL_BIT))
        return false;
    for (size_t i = 0; i < t->n; i++) {
        struct coord *c = t->c[i];
        bool mine = c->call == resp->id;
        for (size_t j = 0; !mine && j < c->nparts; j++)
            mine = c->parts[j].call == resp->id;
        if (mine && !is_check(c) && t->env.leads &&
            !t->env.leads(t->env.arg, c->home)) {
            drop(t, c); /* deposed: the home shard's new leader carries on */
            return true;
        }
        if (c->call == resp->id) {
            c->call = 0;
            if (c->phase == PH_SETTLE) {
                if (resp->code == KV_OK)
                    drop(t, c);
                else
                    c->wait = 5;
                return true;
            }
            if (transient(resp) ||
                resp->result_case != KV__RESPONSE__RESULT_TXN_STATE) {
                c->wait = 5;
                return true;
            }
            uint32_t st = resp->txn_state->state;
            switch (c->phase) {
            case PH_RECORD:
                if (st == ENGINE_TXN_PENDING)
                    start_prepare(t, c);
                else
                    decided(t, c, (int)st);
                break;
            case PH_DECIDE:
                decided(t, c, (int)st);
                break;
            case PH_FORGET:
                drop(t, c);
                break;
            case PH_ASK:
                if (st == ENGINE_TXN_PENDING) {
                    drop(t, c); /* asked again at the next check */
                } else {
                    c->phase = PH_SETTLE;
                    c->state = (int)st;
                    call_resolve(t, c->id, c->check_shard,
                                 st == ENGINE_TXN_COMMITTED, &c->call,
                                 &c->wait);
                }
                break;
            default:
                break;
            }
            return true;
        }
        for (size_t j = 0; j < c->nparts; j++) {
            struct part *p = &c->parts[j];
            if (p->call != resp->id)
                continue;
            if (c->phase == PH_PREPARE) {
                on_vote(t, c, p, resp);
            } else if (c->phase == PH_RESOLVE) {
                p->call = 0;
                if (resp->code != KV_OK) {
                    p->wait = 5;
                    return true;
                }
                p->resolved = true;
                bool all = true;
                for (size_t k = 0; k < c->nparts; k++)
                    all &= c->parts[k].resolved;
                if (all) {
                    c->phase = PH_FORGET;
                    call_decide(t, c, c->home, WANT_FORGET);
                }
            }
            return true;
        }
    }
    return true; /* an answer to a call of a coordinator that ended */
}

/* --- time --------------------------------------------------------------- */

void txns_tick(struct txns *t)
{
    uint64_t now = t->env.wall_ms(t->env.arg);
    /* Coordinators whose node no longer leads their home shard stop. */
    for (size_t i = 0; i < t->n;) {
        struct coord *c = t->c[i];
        if (!is_check(c) && t->env.leads && !t->env.leads(t->env.arg, c->home))
            drop(t, c); /* moves the last one to I */
        else
            i++;
    }
    for (size_t i = 0; i < t->n; i++) {
        struct coord *c = t->c[i];
        if (c->phase == PH_PREPARE && now > c->deadline) {
            if (!c->no_code)
                c->no_code = KV_ETIMEDOUT;
            decide(t, c, WANT_ABORT);
            continue;
        }
        if (c->phase == PH_PREPARE || c->phase == PH_RESOLVE) {
            for (size_t j = 0; j < c->nparts; j++) {
                struct part *p = &c->parts[j];
                bool pending =
                    c->phase == PH_PREPARE ? p->vote == 0 : !p->resolved;
                if (!pending || --p->wait > 0)
                    continue;
                if (c->phase == PH_PREPARE)
                    call_prepare(t, c, p);
                else
                    call_resolve(t, c->id, p->shard,
                                 c->state == ENGINE_TXN_COMMITTED, &p->call,
                                 &p->wait);
            }
            continue;
        }
        if (--c->wait > 0)
            continue;
        switch (c->phase) {
        case PH_RECORD:
            call_record(t, c);
            break;
        case PH_DECIDE:
            call_decide(t, c, c->home, c->want);
            break;
        case PH_FORGET:
            call_decide(t, c, c->home, WANT_FORGET);
            break;
        case PH_ASK:
            call_decide(t, c, c->home, WANT_ASK);
            break;
        case PH_SETTLE:
            call_resolve(t, c->id, c->check_shard,
                         c->state == ENGINE_TXN_COMMITTED, &c->call, &c->wait);
            break;
        default:
            break;
        }
    }
}
