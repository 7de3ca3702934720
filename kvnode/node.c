/*
 * node - the kvnode event loop (see node.h).
 *
 * Each iteration: wait for input, then read every ready frame (bounded per
 * iteration); reads are answered at once from committed state; writes are
 * staged; then one synced commit makes every staged write durable and the
 * writes are answered with their outcome. A frame that does not decode is
 * counted, logged once per sender, and answered with KV_EPROTO; nothing a
 * client sends can stop the loop.
 */
#include "node.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "conf.h"
#include "engine.h"
#include "kv.h"
#include "log.h"
#include "shard.h"
#include "store.h"
#include "wire.h"

#define MAX_READS_PER_LOOP 4096
#define MAX_ID_LEN 256       /* ZeroMQ routing ids are at most 255 bytes */
#define MAX_LOGGED_PEERS 1024 /* senders of bad frames we remember */

/* A staged write waiting for the commit, to be answered after it. */
struct deferred {
    unsigned char id[MAX_ID_LEN];
    size_t idlen;
    uint64_t req_id;
    int code;
    uint64_t version;
};

struct node {
    const struct conf *conf;
    uint32_t id;
    size_t self; /* index in conf->nodes */
    void *ctx;
    void *router;
    int wake[2]; /* self-pipe: node_stop() writes, the loop reads */
    struct store *store;
    struct engine *engine;
    struct deferred *waiting;
    size_t nwaiting, capwaiting;
    uint64_t started_ms;
    uint64_t requests;
    uint64_t bad_frames;
    char **logged_peers; /* hex ids of senders whose bad frames we logged */
    size_t nlogged;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* --- replies ------------------------------------------------------------ */

static void send_reply(struct node *n, const void *id, size_t idlen,
                       const Kv__Response *resp)
{
    void *buf;
    size_t len;
    if (wire_encode_response(resp, &buf, &len) != KV_OK) {
        log_msg(LOG_ERROR, "cannot encode a reply", "bytes=%zu",
                kv__response__get_packed_size(resp));
        return;
    }
    /* Never block the loop: a client that does not read loses replies. */
    if (zmq_send(n->router, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
        zmq_send(n->router, buf, len, ZMQ_DONTWAIT);
    free(buf);
}

static void reply_error(struct node *n, const void *id, size_t idlen,
                        uint64_t req_id, int code, const char *msg)
{
    Kv__Response r = KV__RESPONSE__INIT;
    r.id = req_id;
    r.code = code;
    r.message = (char *)msg;
    send_reply(n, id, idlen, &r);
}

/* Answers KV_ENOTLEADER naming the node that serves SHARD. */
static void reply_redirect(struct node *n, const void *id, size_t idlen,
                           uint64_t req_id, uint32_t shard)
{
    const struct conf_node *owner =
        &n->conf->nodes[conf_replica(n->conf, shard, 0)];
    char msg[64];
    snprintf(msg, sizeof(msg), "shard %u is served by node %u", shard,
             owner->id);
    Kv__Response r = KV__RESPONSE__INIT;
    r.id = req_id;
    r.code = KV_ENOTLEADER;
    r.message = msg;
    r.leader_id = owner->id;
    r.leader_addr = owner->address;
    send_reply(n, id, idlen, &r);
}

/* --- request handlers --------------------------------------------------- */

/* Whether this node serves SHARD (until replication: its first replica). */
static bool serves(const struct node *n, uint32_t shard)
{
    return conf_replica(n->conf, shard, 0) == n->self;
}

/* Checks a request key; answers and returns false when it is unusable. */
static bool key_ok(struct node *n, const void *id, size_t idlen,
                   uint64_t req_id, const ProtobufCBinaryData *key)
{
    char msg[96];
    if (key->len == 0) {
        reply_error(n, id, idlen, req_id, KV_EINVAL, "empty key");
        return false;
    }
    if (key->len > n->conf->max_key_bytes) {
        snprintf(msg, sizeof(msg), "key of %zu bytes over the limit of %llu",
                 key->len, (unsigned long long)n->conf->max_key_bytes);
        reply_error(n, id, idlen, req_id, KV_ETOOBIG, msg);
        return false;
    }
    return true;
}

static void handle_get(struct node *n, const void *id, size_t idlen,
                       const Kv__Request *req)
{
    const Kv__GetRequest *g = req->get;
    if (!key_ok(n, id, idlen, req->id, &g->key))
        return;
    uint32_t shard = shard_of(g->key.data, g->key.len, n->conf->shards);
    if (!serves(n, shard)) {
        reply_redirect(n, id, idlen, req->id, shard);
        return;
    }
    void *val = NULL;
    size_t vlen = 0;
    uint64_t ver = 0;
    int rc = engine_get(n->engine, shard, g->key.data, g->key.len, &val, &vlen,
                        &ver);
    if (rc != KV_OK) {
        reply_error(n, id, idlen, req->id, rc,
                    rc == KV_ENOTFOUND ? "" : "storage error");
        return;
    }
    Kv__Response r = KV__RESPONSE__INIT;
    Kv__GetResult res = KV__GET_RESULT__INIT;
    res.value.data = val;
    res.value.len = vlen;
    res.version = ver;
    r.id = req->id;
    r.result_case = KV__RESPONSE__RESULT_GET;
    r.get = &res;
    send_reply(n, id, idlen, &r);
    free(val);
}

static int defer_reply(struct node *n, const void *id, size_t idlen,
                       uint64_t req_id, int code, uint64_t version)
{
    if (n->nwaiting == n->capwaiting) {
        size_t cap = n->capwaiting ? n->capwaiting * 2 : 256;
        struct deferred *d = realloc(n->waiting, cap * sizeof(*d));
        if (!d)
            return KV_ENOMEM;
        n->waiting = d;
        n->capwaiting = cap;
    }
    struct deferred *d = &n->waiting[n->nwaiting++];
    memcpy(d->id, id, idlen);
    d->idlen = idlen;
    d->req_id = req_id;
    d->code = code;
    d->version = version;
    return KV_OK;
}

static void handle_write(struct node *n, const void *id, size_t idlen,
                         const Kv__Request *req)
{
    struct engine_write w = {0};
    const ProtobufCBinaryData *key;
    if (req->op_case == KV__REQUEST__OP_PUT) {
        const Kv__PutRequest *p = req->put;
        key = &p->key;
        w.op = ENGINE_PUT;
        w.val = p->value.data;
        w.vlen = p->value.len;
        w.if_version = p->if_version;
        w.if_absent = p->if_absent;
        if (p->if_version && p->if_absent) {
            reply_error(n, id, idlen, req->id, KV_EINVAL,
                        "if_version and if_absent exclude each other");
            return;
        }
        if (p->value.len > n->conf->max_value_bytes) {
            char msg[96];
            snprintf(msg, sizeof(msg),
                     "value of %zu bytes over the limit of %llu",
                     p->value.len,
                     (unsigned long long)n->conf->max_value_bytes);
            reply_error(n, id, idlen, req->id, KV_ETOOBIG, msg);
            return;
        }
    } else {
        key = &req->del->key;
        w.op = ENGINE_DEL;
        w.if_version = req->del->if_version;
    }
    if (!key_ok(n, id, idlen, req->id, key))
        return;
    w.key = key->data;
    w.klen = key->len;
    w.shard = shard_of(w.key, w.klen, n->conf->shards);
    if (!serves(n, w.shard)) {
        reply_redirect(n, id, idlen, req->id, w.shard);
        return;
    }
    uint64_t ver = 0;
    int rc = engine_stage(n->engine, &w, &ver);
    if (rc != KV_OK && rc != KV_ECONFLICT && rc != KV_ENOTFOUND) {
        reply_error(n, id, idlen, req->id, rc, "cannot stage the write");
        return;
    }
    /* Even a failed condition waits: it was decided on staged state. */
    if (defer_reply(n, id, idlen, req->id, rc, ver) != KV_OK)
        reply_error(n, id, idlen, req->id, KV_ENOMEM, "out of memory");
}

struct scan_reply {
    Kv__Entry *entries;
    Kv__Entry **ptrs;
    unsigned char **copies;
    size_t n, cap;
    size_t bytes, budget;
};

static int scan_collect(void *arg, const void *key, size_t klen,
                        const void *val, size_t vlen, uint64_t version)
{
    struct scan_reply *s = arg;
    /* Stop before the reply could outgrow a message. */
    if (s->n > 0 && s->bytes + klen + vlen + 32 > s->budget)
        return 1;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        Kv__Entry *e = realloc(s->entries, cap * sizeof(*e));
        if (!e)
            return KV_ENOMEM;
        s->entries = e;
        unsigned char **c = realloc(s->copies, cap * sizeof(*c));
        if (!c)
            return KV_ENOMEM;
        s->copies = c;
        s->cap = cap;
    }
    unsigned char *copy = malloc(klen + vlen + 1);
    if (!copy)
        return KV_ENOMEM;
    memcpy(copy, key, klen);
    if (vlen)
        memcpy(copy + klen, val, vlen);
    Kv__Entry e = KV__ENTRY__INIT;
    e.key.data = copy;
    e.key.len = klen;
    e.value.data = copy + klen;
    e.value.len = vlen;
    e.version = version;
    s->entries[s->n] = e;
    s->copies[s->n] = copy;
    s->n++;
    s->bytes += klen + vlen + 32;
    return 0;
}

static void handle_scan(struct node *n, const void *id, size_t idlen,
                        const Kv__Request *req)
{
    const Kv__ScanRequest *q = req->scan;
    if (q->shard >= n->conf->shards) {
        reply_error(n, id, idlen, req->id, KV_EINVAL, "no such shard");
        return;
    }
    if (!serves(n, q->shard)) {
        reply_redirect(n, id, idlen, req->id, q->shard);
        return;
    }
    uint64_t limit = q->limit && q->limit < 4096 ? q->limit : 4096;
    struct engine_scan sc = {.shard = q->shard,
                             .start = q->start.data,
                             .start_len = q->start.len,
                             .end = q->end.data,
                             .end_len = q->end.len,
                             .prefix = q->prefix.data,
                             .prefix_len = q->prefix.len,
                             .after = q->after.data,
                             .after_len = q->after.len,
                             .has_after = q->has_after,
                             .limit = limit};
    struct scan_reply s = {.budget = n->conf->max_message_bytes - 1024};
    if (s.budget > (1u << 20))
        s.budget = 1u << 20;
    bool more = false;
    int rc = engine_scan(n->engine, &sc, scan_collect, &s, &more);
    if (rc == 1) { /* stopped by the size budget */
        more = true;
        rc = KV_OK;
    }
    if (rc != KV_OK) {
        reply_error(n, id, idlen, req->id, rc, "scan failed");
    } else {
        s.ptrs = malloc((s.n ? s.n : 1) * sizeof(*s.ptrs));
        if (!s.ptrs) {
            reply_error(n, id, idlen, req->id, KV_ENOMEM, "out of memory");
        } else {
            for (size_t i = 0; i < s.n; i++)
                s.ptrs[i] = &s.entries[i];
            Kv__ScanResult res = KV__SCAN_RESULT__INIT;
            res.n_entries = s.n;
            res.entries = s.ptrs;
            res.more = more;
            Kv__Response r = KV__RESPONSE__INIT;
            r.id = req->id;
            r.result_case = KV__RESPONSE__RESULT_SCAN;
            r.scan = &res;
            send_reply(n, id, idlen, &r);
        }
    }
    for (size_t i = 0; i < s.n; i++)
        free(s.copies[i]);
    free(s.copies);
    free(s.entries);
    free(s.ptrs);
}

static void handle_status(struct node *n, const void *id, size_t idlen,
                          const Kv__Request *req)
{
    const struct conf *c = n->conf;
    Kv__StatusResult st = KV__STATUS_RESULT__INIT;
    Kv__NodeInfo *nodes = calloc(c->nnodes, sizeof(*nodes));
    Kv__NodeInfo **nptr = calloc(c->nnodes, sizeof(*nptr));
    Kv__ShardInfo *shards = calloc(c->shards, sizeof(*shards));
    Kv__ShardInfo **sptr = calloc(c->shards, sizeof(*sptr));
    if (!nodes || !nptr || !shards || !sptr) {
        reply_error(n, id, idlen, req->id, KV_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < c->nnodes; i++) {
        kv__node_info__init(&nodes[i]);
        nodes[i].id = c->nodes[i].id;
        nodes[i].address = c->nodes[i].address;
        nptr[i] = &nodes[i];
    }
    for (uint32_t s = 0; s < c->shards; s++) {
        kv__shard_info__init(&shards[s]);
        shards[s].shard = s;
        shards[s].leader = c->nodes[conf_replica(c, s, 0)].id;
        shards[s].local = serves(n, s);
        if (shards[s].local)
            engine_shard_info(n->engine, s, &shards[s].keys,
                              &shards[s].applied);
        sptr[s] = &shards[s];
    }
    st.cluster = c->cluster;
    st.node_id = n->id;
    st.shards = c->shards;
    st.replicas = c->replicas;
    st.n_nodes = c->nnodes;
    st.nodes = nptr;
    st.n_shard_info = c->shards;
    st.shard_info = sptr;
    st.uptime_ms = now_ms() - n->started_ms;
    st.max_key_bytes = c->max_key_bytes;
    st.max_value_bytes = c->max_value_bytes;
    st.max_message_bytes = c->max_message_bytes;
    st.requests = n->requests;
    st.bad_frames = n->bad_frames;
    Kv__Response r = KV__RESPONSE__INIT;
    r.id = req->id;
    r.result_case = KV__RESPONSE__RESULT_STATUS;
    r.status = &st;
    send_reply(n, id, idlen, &r);
out:
    free(nodes);
    free(nptr);
    free(shards);
    free(sptr);
}

/* Counts a bad frame and logs it, once per sender. */
static void bad_frame(struct node *n, const void *id, size_t idlen,
                      const char *why)
{
    n->bad_frames++;
    char hex[2 * MAX_ID_LEN + 1];
    for (size_t i = 0; i < idlen; i++)
        snprintf(hex + 2 * i, 3, "%02x", ((const unsigned char *)id)[i]);
    hex[2 * idlen] = '\0';
    for (size_t i = 0; i < n->nlogged; i++)
        if (strcmp(n->logged_peers[i], hex) == 0)
            return;
    if (n->nlogged < MAX_LOGGED_PEERS) {
        char *copy = strdup(hex);
        if (copy)
            n->logged_peers[n->nlogged++] = copy;
    }
    log_msg(LOG_WARN, "dropped a bad frame", "peer=%s reason=\"%s\" total=%llu",
            hex, why, (unsigned long long)n->bad_frames);
}

static void handle_frame(struct node *n, const void *id, size_t idlen,
                         const void *data, size_t len)
{
    char err[160];
    Kv__Envelope *env = NULL;
    int rc = wire_decode(data, len, n->conf->max_message_bytes, &env, err,
                         sizeof(err));
    if (rc != KV_OK) {
        bad_frame(n, id, idlen, err);
        reply_error(n, id, idlen, 0, rc, err);
        return;
    }
    if (env->body_case != KV__ENVELOPE__BODY_REQUEST) {
        bad_frame(n, id, idlen, "a response sent to a node");
        wire_free(env);
        return;
    }
    n->requests++;
    const Kv__Request *req = env->request;
    switch (req->op_case) {
    case KV__REQUEST__OP_GET:
        handle_get(n, id, idlen, req);
        break;
    case KV__REQUEST__OP_PUT:
    case KV__REQUEST__OP_DEL:
        handle_write(n, id, idlen, req);
        break;
    case KV__REQUEST__OP_SCAN:
        handle_scan(n, id, idlen, req);
        break;
    case KV__REQUEST__OP_STATUS:
        handle_status(n, id, idlen, req);
        break;
    default:
        reply_error(n, id, idlen, req->id, KV_EPROTO, "unknown operation");
        break;
    }
    wire_free(env);
}

/* Reads one message (routing id + frames) if one is ready. Returns 1 when
 * one was handled, 0 when none was ready. */
static int read_one(struct node *n)
{
    zmq_msg_t idmsg, msg;
    zmq_msg_init(&idmsg);
    if (zmq_msg_recv(&idmsg, n->router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&idmsg);
        return 0;
    }
    unsigned char id[MAX_ID_LEN];
    size_t idlen = zmq_msg_size(&idmsg);
    if (idlen > MAX_ID_LEN)
        idlen = MAX_ID_LEN;
    memcpy(id, zmq_msg_data(&idmsg), idlen);
    bool more = zmq_msg_more(&idmsg);
    zmq_msg_close(&idmsg);
    if (!more)
        return 1; /* a routing id alone: nothing to answer */
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, n->router, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&msg);
        return 1;
    }
    if (zmq_msg_more(&msg)) {
        /* One frame per request: drain and refuse multipart messages. */
        do {
            zmq_msg_close(&msg);
            zmq_msg_init(&msg);
        } while (zmq_msg_recv(&msg, n->router, ZMQ_DONTWAIT) >= 0 &&
                 zmq_msg_more(&msg));
        zmq_msg_close(&msg);
        bad_frame(n, id, idlen, "multipart message");
        reply_error(n, id, idlen, 0, KV_EPROTO,
                    "a request must be one frame");
        return 1;
    }
    handle_frame(n, id, idlen, zmq_msg_data(&msg), zmq_msg_size(&msg));
    zmq_msg_close(&msg);
    return 1;
}

/* Commits staged writes and answers them with their outcome. */
static void commit_and_answer(struct node *n)
{
    int rc = engine_commit(n->engine);
    if (rc != KV_OK)
        log_msg(LOG_ERROR, "commit failed: writes not acknowledged",
                "writes=%zu error=\"%s\"", n->nwaiting, kv_strerror(rc));
    for (size_t i = 0; i < n->nwaiting; i++) {
        struct deferred *d = &n->waiting[i];
        Kv__Response r = KV__RESPONSE__INIT;
        Kv__WriteResult res = KV__WRITE_RESULT__INIT;
        r.id = d->req_id;
        if (rc != KV_OK) {
            r.code = rc;
            r.message = "the write could not be made durable";
        } else if (d->code != KV_OK) {
            r.code = d->code;
            r.message = d->code == KV_ECONFLICT ? "condition failed" : "";
        } else {
            res.version = d->version;
            r.result_case = KV__RESPONSE__RESULT_WRITE;
            r.write = &res;
        }
        send_reply(n, d->id, d->idlen, &r);
    }
    n->nwaiting = 0;
}

int node_run(struct node *n)
{
    log_msg(LOG_INFO, "serving", "address=%s shards=%u",
            n->conf->nodes[n->self].address, n->conf->shards);
    for (;;) {
        zmq_pollitem_t items[2] = {
            {.socket = n->router, .events = ZMQ_POLLIN},
            {.fd = n->wake[0], .events = ZMQ_POLLIN},
        };
        int rc = zmq_poll(items, 2, -1);
        if (rc < 0) {
            if (zmq_errno() == EINTR)
                continue;
            log_msg(LOG_ERROR, "poll failed", "error=\"%s\"",
                    zmq_strerror(zmq_errno()));
            return KV_EIO;
        }
        if (items[1].revents & ZMQ_POLLIN)
            break;
        for (int i = 0; i < MAX_READS_PER_LOOP && read_one(n); i++)
            ;
        if (n->nwaiting)
            commit_and_answer(n);
    }
    if (n->nwaiting)
        commit_and_answer(n);
    log_msg(LOG_INFO, "stopping", "requests=%llu",
            (unsigned long long)n->requests);
    return KV_OK;
}

void node_stop(struct node *n)
{
    char c = 1;
    ssize_t w = write(n->wake[1], &c, 1);
    (void)w;
}

int node_open(const struct conf *conf, uint32_t id, struct node **out,
              char *err, size_t errlen)
{
    const struct conf_node *me = conf_node_by_id(conf, id);
    if (!me) {
        snprintf(err, errlen, "node %u is not in %s", id, conf->path);
        return KV_EINVAL;
    }
    struct node *n = calloc(1, sizeof(*n));
    if (!n)
        return KV_ENOMEM;
    n->conf = conf;
    n->id = id;
    n->self = (size_t)(me - conf->nodes);
    n->wake[0] = n->wake[1] = -1;
    n->started_ms = now_ms();
    n->logged_peers = calloc(MAX_LOGGED_PEERS, sizeof(char *));
    int rc = n->logged_peers ? KV_OK : KV_ENOMEM;
    if (rc == KV_OK && pipe(n->wake) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        rc = KV_EIO;
    }
    if (rc == KV_OK) {
        fcntl(n->wake[1], F_SETFL, O_NONBLOCK);
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s/%u", conf->data_dir, id);
        rc = store_open(dir, &n->store, err, errlen);
    }
    if (rc == KV_OK)
        rc = engine_open(n->store, conf->shards, &n->engine);
    if (rc == KV_OK)
        rc = engine_check_meta(n->engine, conf->cluster, id, err, errlen);
    if (rc == KV_OK) {
        n->ctx = zmq_ctx_new();
        n->router = n->ctx ? zmq_socket(n->ctx, ZMQ_ROUTER) : NULL;
        if (!n->router) {
            snprintf(err, errlen, "cannot create a socket: %s",
                     zmq_strerror(zmq_errno()));
            rc = KV_EIO;
        }
    }
    if (rc == KV_OK) {
        int zero = 0, hwm = 100000;
        int64_t maxmsg = (int64_t)conf->max_message_bytes;
        zmq_setsockopt(n->router, ZMQ_LINGER, &zero, sizeof(zero));
        zmq_setsockopt(n->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
        zmq_setsockopt(n->router, ZMQ_SNDHWM, &hwm, sizeof(hwm));
        zmq_setsockopt(n->router, ZMQ_RCVHWM, &hwm, sizeof(hwm));
        if (zmq_bind(n->router, me->address) != 0) {
            snprintf(err, errlen, "cannot bind %s: %s", me->address,
                     zmq_strerror(zmq_errno()));
            rc = KV_EIO;
        }
    }
    if (rc != KV_OK) {
        node_close(n);
        return rc;
    }
    *out = n;
    return KV_OK;
}

void node_close(struct node *n)
{
    if (!n)
        return;
    if (n->router)
        zmq_close(n->router);
    if (n->ctx)
        zmq_ctx_term(n->ctx);
    engine_close(n->engine);
    store_close(n->store);
    if (n->wake[0] >= 0)
        close(n->wake[0]);
    if (n->wake[1] >= 0)
        close(n->wake[1]);
    for (size_t i = 0; i < n->nlogged; i++)
        free(n->logged_peers[i]);
    free(n->logged_peers);
    free(n->waiting);
    free(n);
}
