/*
 * node - the kvnode event loop (see node.h).
 *
 * One thread, one zmq_poll loop. The ROUTER socket bound at the node's
 * address receives client requests and peer traffic; one DEALER per peer
 * (routing id "n<ID>") carries this node's one-way Raft traffic to it,
 * sent with ZMQ_DONTWAIT and dropped when its queue is full (Raft
 * retransmits; the loop never blocks). Each iteration: wait for input or
 * the next 10 ms tick, read every ready frame (bounded), run the due ticks,
 * then replica_flush() persists, sends, applies and answers.
 *
 * A frame that does not decode is counted, logged once per sender, and
 * answered with KV_EPROTO; nothing a client sends can stop the loop.
 *
 * Security (docs/security.md): with [security] curve = on the ROUTER is a
 * CURVE server with this node's secret key, each peer DEALER a CURVE client
 * that knows the peer's public key, and the ZAP handler (zap.h, polled in
 * this loop) admits only the keys of the nodes and of the listed clients;
 * a peer batch must come over a connection authenticated as the node it
 * names. Whatever the mode, every socket drops a connection whose
 * handshake takes longer than handshake_timeout_ms, and one connection may
 * hold at most max_inflight_per_client unanswered requests (inflight.h).
 * With curve off a node only listens on a loopback address, unless
 * insecure = yes (protected mode).
 *
 * Damaged data stops it: once the store met corruption (store_damage),
 * nothing but KV_ECORRUPT answers leaves the node, no peer traffic either,
 * and node_run returns KV_ECORRUPT at the end of that iteration. A reply
 * computed from a read that hid the damage is never sent.
 */
#include "node.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "conf.h"
#include "inflight.h"
#include "keys.h"
#include "kv.h"
#include "log.h"
#include "proc.h"
#include "replica.h"
#include "store.h"
#include "wire.h"
#include "zap.h"

#define MAX_READS_PER_LOOP 4096
#define MAX_ID_LEN 256        /* ZeroMQ routing ids are at most 255 bytes */
#define MAX_LOGGED_PEERS 1024 /* senders of bad frames we remember */
#define PEER_HWM 10000
#define SHUTDOWN_TRANSFER_MS 3000
/* A request still unanswered this long after its client stopped waiting
 * no longer counts against its connection's max_inflight_per_client. */
#define INFLIGHT_SLACK_MS 1000
#define INFLIGHT_EXPIRE_EVERY_MS 1000

struct node {
    const struct conf *conf;
    uint32_t id;
    size_t self; /* index in conf->nodes */
    void *ctx;
    void *router;
    void **peers; /* DEALER per node index (NULL for self) */
    int wake[2];  /* self-pipe: node_stop() writes, the loop reads */
    struct store *store;
    struct replica *replica;
    struct proc_registry *procs; /* built-ins and cluster.conf plugins */
    uint64_t started_ms;
    uint64_t next_tick_ms;
    uint64_t requests;
    uint64_t bad_frames;
    uint64_t peer_drops;
    char **logged_peers; /* hex ids of senders whose bad frames we logged */
    size_t nlogged;
    struct zap *zap;           /* curve = on: the ZAP handler, else NULL */
    struct inflight *inflight; /* unanswered requests per connection */
    uint64_t next_expire_ms;
    uint64_t inflight_refused; /* requests refused over the cap */
    struct held *held;         /* answers held per connection (hold_answer) */
    size_t nheld, heldcap;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t env_now_ms(void *arg)
{
    (void)arg;
    return now_ms();
}

/* KV_FAILPOINT=NAME (tests only): the node dies at that point of the
 * transaction protocol, as if killed (no clean up, nothing flushed). With
 * KV_FAILPOINT_ONCE=FILE, only the node that creates FILE first does (a
 * client's retry would take every coordinator to the same point). */
static void env_failpoint(void *arg, const char *name)
{
    (void)arg;
    const char *want = getenv("KV_FAILPOINT");
    if (!want || strcmp(want, name) != 0)
        return;
    const char *once = getenv("KV_FAILPOINT_ONCE");
    if (once) {
        int fd = open(once, O_WRONLY | O_CREAT | O_EXCL, 0600);
        if (fd < 0)
            return;
        close(fd);
    }
    {
        log_msg(LOG_WARN, "failpoint reached: exiting", "failpoint=%s", name);
        _exit(86);
    }
}

static uint64_t env_wall_ms(void *arg)
{
    (void)arg;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* --- sending ------------------------------------------------------------ */

/* Answers to the requests of Batch frames, held for one connection until
 * the phase that produced them ends (flush_answers), then sent together. */
struct held {
    unsigned char id[MAX_ID_LEN];
    size_t idlen;
    ProtobufCBinaryData *frames; /* encoded Envelopes, malloc()ed */
    size_t n, cap;
    size_t bytes;
};

static void send_frame(struct node *n, const void *id, size_t idlen,
                       const void *buf, size_t len)
{
    /* Never block the loop: a client that does not read loses replies. */
    if (zmq_send(n->router, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0)
        zmq_send(n->router, buf, len, ZMQ_DONTWAIT);
}

/* Sends what H holds: one answer as it is, more as one Batch frame. */
static void send_held(struct node *n, struct held *h)
{
    if (h->n == 1) {
        send_frame(n, h->id, h->idlen, h->frames[0].data, h->frames[0].len);
    } else if (h->n > 1) {
        void *buf;
        size_t len;
        if (wire_encode_batch(h->frames, h->n, &buf, &len) == KV_OK) {
            send_frame(n, h->id, h->idlen, buf, len);
            free(buf);
        } else {
            log_msg(LOG_ERROR, "cannot encode a batch of answers",
                    "answers=%zu bytes=%zu", h->n, h->bytes);
        }
    }
    for (size_t i = 0; i < h->n; i++)
        free(h->frames[i].data);
    h->n = 0;
    h->bytes = 0;
}

/* Sends every held answer (replica_env.flush). */
static void flush_answers(void *arg)
{
    struct node *n = arg;
    for (size_t i = 0; i < n->nheld; i++)
        send_held(n, &n->held[i]);
    n->nheld = 0;
}

/* Holds BUF (LEN bytes, taken) for connection ID until flush_answers.
 * Returns false when it cannot (the caller sends and frees BUF). */
static bool hold_answer(struct node *n, const void *id, size_t idlen, void *buf,
                        size_t len)
{
    /* A Batch frame stays within what the client accepts. */
    size_t budget = n->conf->max_message_bytes, cost = len + 16;
    if (cost > budget)
        return false;
    struct held *h = NULL;
    for (size_t i = n->nheld; i-- > 0 && !h;)
        if (n->held[i].idlen == idlen && memcmp(n->held[i].id, id, idlen) == 0)
            h = &n->held[i];
    if (!h) {
        if (n->nheld == n->heldcap) {
            size_t ncap = n->heldcap ? 2 * n->heldcap : 8;
            struct held *nh = realloc(n->held, ncap * sizeof(*nh));
            if (!nh)
                return false;
            memset(nh + n->heldcap, 0, (ncap - n->heldcap) * sizeof(*nh));
            n->held = nh;
            n->heldcap = ncap;
        }
        h = &n->held[n->nheld++];
        memcpy(h->id, id, idlen);
        h->idlen = idlen;
    }
    if (h->n && h->bytes + cost > budget)
        send_held(n, h);
    if (h->n == h->cap) {
        size_t ncap = h->cap ? 2 * h->cap : 16;
        ProtobufCBinaryData *nf = realloc(h->frames, ncap * sizeof(*nf));
        if (!nf) {
            send_held(n, h); /* in order: what it holds goes first */
            return false;
        }
        h->frames = nf;
        h->cap = ncap;
    }
    h->frames[h->n++] = (ProtobufCBinaryData){.len = len, .data = buf};
    h->bytes += cost;
    return true;
}

/* Encodes and sends RESP to connection ID; HOLD: with the other answers of
 * this phase to it, in one Batch frame. */
static void deliver(struct node *n, const void *id, size_t idlen,
                    const Kv__Response *resp, bool hold)
{
    void *buf;
    size_t len;
    if (store_damage(n->store) && resp->code != KV_ECORRUPT)
        return; /* it may hold what the damage hid: the client retries */
    if (wire_encode_response(resp, &buf, &len) != KV_OK) {
        log_msg(LOG_ERROR, "cannot encode a reply", "bytes=%zu",
                kv__response__get_packed_size(resp));
        return;
    }
    if (hold && hold_answer(n, id, idlen, buf, len))
        return;
    send_frame(n, id, idlen, buf, len);
    free(buf);
}

static void send_reply(struct node *n, const void *id, size_t idlen,
                       const Kv__Response *resp)
{
    deliver(n, id, idlen, resp, false);
}

/* The replica's answer to a client request: it no longer counts against
 * the connection's max_inflight_per_client. One that came in a Batch frame
 * is answered in one. */
static void answer_client(void *arg, const void *id, size_t idlen,
                          const Kv__Response *resp)
{
    struct node *n = arg;
    bool batched = false;
    inflight_done(n->inflight, id, idlen, resp->id, &batched);
    deliver(n, id, idlen, resp, batched);
}

static void send_peer(void *arg, uint32_t to, const void *buf, size_t len)
{
    struct node *n = arg;
    if (store_damage(n->store))
        return; /* a damaged node takes no part any more */
    for (size_t i = 0; i < n->conf->nnodes; i++) {
        if (n->conf->nodes[i].id != to || !n->peers[i])
            continue;
        if (zmq_send(n->peers[i], buf, len, ZMQ_DONTWAIT) < 0)
            n->peer_drops++;
        return;
    }
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

/* --- status ------------------------------------------------------------- */

static void handle_status(struct node *n, const void *id, size_t idlen,
                          const Kv__Request *req)
{
    const struct conf *c = n->conf;
    Kv__StatusResult st = KV__STATUS_RESULT__INIT;
    if (replica_status(n->replica, &st) != KV_OK) {
        reply_error(n, id, idlen, req->id, KV_ENOMEM, "out of memory");
    } else {
        st.uptime_ms = now_ms() - n->started_ms;
        st.max_key_bytes = c->max_key_bytes;
        st.max_value_bytes = c->max_value_bytes;
        st.max_message_bytes = c->max_message_bytes;
        st.max_txn_ops = c->max_txn_ops;
        st.max_txn_bytes = c->max_txn_bytes;
        st.requests = n->requests;
        st.bad_frames = n->bad_frames;
        Kv__Response r = KV__RESPONSE__INIT;
        r.id = req->id;
        r.result_case = KV__RESPONSE__RESULT_STATUS;
        r.status = &st;
        send_reply(n, id, idlen, &r);
    }
    replica_status_free(&st);
}

/* --- input -------------------------------------------------------------- */

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

/* Whether a peer batch really comes from the node it names: its routing id
 * must be "n<from>" (set by that node's DEALER). */
static bool peer_id_ok(const void *id, size_t idlen, uint32_t from)
{
    char want[16];
    int len = snprintf(want, sizeof(want), "n%u", from);
    return (size_t)len == idlen && memcmp(id, want, idlen) == 0;
}

/* Whether a peer batch claiming to come from node FROM came over a
 * connection the ZAP handler authenticated as that node (USER the
 * connection's "User-Id"). Always true with curve off: then only the
 * routing id tells. */
static bool peer_key_ok(const struct node *n, const char *user, uint32_t from)
{
    uint32_t node;
    if (!n->zap)
        return true;
    return zap_user_node(user, &node) == 0 && node == from;
}

/* Counts REQ against its connection's max_inflight_per_client. Returns
 * false (and answers it) when the connection is over the cap. */
static bool admit_request(struct node *n, const void *id, size_t idlen,
                          const Kv__Request *req, bool batched)
{
    uint64_t timeout =
        req->timeout_ms ? req->timeout_ms : n->conf->request_timeout_ms;
    int rc = inflight_add(n->inflight, id, idlen, req->id,
                          now_ms() + timeout + INFLIGHT_SLACK_MS, batched);
    if (rc == KV_OK)
        return true;
    char msg[128];
    if (rc == KV_EUNAVAILABLE) {
        n->inflight_refused++;
        snprintf(msg, sizeof(msg),
                 "too many requests in flight on this connection "
                 "(max_inflight_per_client = %u)",
                 n->conf->max_inflight_per_client);
    } else {
        snprintf(msg, sizeof(msg), "cannot hold the request: %s",
                 kv_strerror(rc));
        rc = rc == KV_ENOMEM ? KV_ENOMEM : KV_EPROTO;
    }
    reply_error(n, id, idlen, req->id, rc, msg);
    return false;
}

/* Serves the request in ENV (taken); BATCHED: it came in a Batch frame. */
static void handle_request(struct node *n, const void *id, size_t idlen,
                           Kv__Envelope *env, bool batched)
{
    n->requests++;
    if (env->request->op_case == KV__REQUEST__OP_STATUS) {
        handle_status(n, id, idlen, env->request);
        wire_free(env);
        return;
    }
    if (!admit_request(n, id, idlen, env->request, batched)) {
        wire_free(env);
        return;
    }
    replica_request(n->replica, id, idlen, env); /* takes env */
}

/* Serves each request of a client's Batch frame. */
static void handle_batch(struct node *n, const void *id, size_t idlen,
                         const Kv__Batch *b)
{
    for (size_t i = 0; i < b->n_frames; i++) {
        char err[160];
        Kv__Envelope *env = NULL;
        int rc =
            wire_decode(b->frames[i].data, b->frames[i].len,
                        n->conf->max_message_bytes, &env, err, sizeof(err));
        if (rc != KV_OK) {
            bad_frame(n, id, idlen, err);
            reply_error(n, id, idlen, 0, rc, err);
            continue;
        }
        if (env->body_case != KV__ENVELOPE__BODY_REQUEST) {
            bad_frame(n, id, idlen, "a batch holding other than requests");
            reply_error(n, id, idlen, 0, KV_EPROTO,
                        "a batch holds requests only");
            wire_free(env);
            continue;
        }
        handle_request(n, id, idlen, env, true);
    }
}

static void handle_frame(struct node *n, const void *id, size_t idlen,
                         const char *user, const void *data, size_t len)
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
    if (env->body_case == KV__ENVELOPE__BODY_PEER) {
        if (!peer_id_ok(id, idlen, env->peer->from))
            bad_frame(n, id, idlen, "peer batch from a wrong routing id");
        else if (!peer_key_ok(n, user, env->peer->from))
            bad_frame(n, id, idlen,
                      "peer batch over a connection not authenticated as "
                      "the node it names");
        else
            replica_peer(n->replica, env->peer);
        wire_free(env);
        return;
    }
    if (env->body_case == KV__ENVELOPE__BODY_BATCH) {
        handle_batch(n, id, idlen, env->batch);
        wire_free(env);
        return;
    }
    if (env->body_case != KV__ENVELOPE__BODY_REQUEST) {
        bad_frame(n, id, idlen, "a response sent to a node");
        wire_free(env);
        return;
    }
    handle_request(n, id, idlen, env, false);
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
        reply_error(n, id, idlen, 0, KV_EPROTO, "a request must be one frame");
        return 1;
    }
    /* The ZAP handler's user id for the connection ("node:ID", "client"),
     * valid while MSG is. */
    const char *user = n->zap ? zmq_msg_gets(&msg, "User-Id") : NULL;
    handle_frame(n, id, idlen, user, zmq_msg_data(&msg), zmq_msg_size(&msg));
    zmq_msg_close(&msg);
    return 1;
}

/* --- the loop ----------------------------------------------------------- */

/* One iteration: wait up to the next tick (or WAIT_MAX ms), read, tick,
 * flush. Returns 1 when the wake pipe fired, 0 otherwise, <0 on failure. */
static int iterate(struct node *n, uint64_t wait_max)
{
    uint64_t now = now_ms();
    uint64_t wait = n->next_tick_ms > now ? n->next_tick_ms - now : 0;
    if (wait > wait_max)
        wait = wait_max;
    if (replica_has_work(n->replica))
        wait = 0;
    zmq_pollitem_t items[3] = {
        {.socket = n->router, .events = ZMQ_POLLIN},
        {.fd = n->wake[0], .events = ZMQ_POLLIN},
        {.socket = n->zap ? zap_socket(n->zap) : NULL, .events = ZMQ_POLLIN},
    };
    int woke = 0;
    int rc = zmq_poll(items, n->zap ? 3 : 2, (long)wait);
    if (rc < 0 && zmq_errno() != EINTR) {
        log_msg(LOG_ERROR, "poll failed", "error=\"%s\"",
                zmq_strerror(zmq_errno()));
        return KV_EIO;
    }
    if (rc > 0 && (items[1].revents & ZMQ_POLLIN)) {
        char buf[16];
        while (read(n->wake[0], buf, sizeof(buf)) > 0)
            ;
        woke = 1;
    }
    if (n->zap && rc > 0 && (items[2].revents & ZMQ_POLLIN))
        zap_serve(n->zap, now_ms());
    for (int i = 0; i < MAX_READS_PER_LOOP && read_one(n); i++)
        ;
    flush_answers(n); /* stale reads, redirects: answered as they were read */
    if (store_damage(n->store))
        return KV_ECORRUPT;
    now = now_ms();
    if (now >= n->next_expire_ms) {
        inflight_expire(n->inflight, now);
        n->next_expire_ms = now + INFLIGHT_EXPIRE_EVERY_MS;
    }
    for (int i = 0; now >= n->next_tick_ms && i < 100; i++) {
        replica_tick(n->replica);
        n->next_tick_ms += REPLICA_TICK_MS;
    }
    if (now >= n->next_tick_ms) /* far behind (stopped process): catch up */
        n->next_tick_ms = now + REPLICA_TICK_MS;
    rc = replica_flush(n->replica);
    flush_answers(n);
    if (store_damage(n->store))
        return KV_ECORRUPT;
    if (rc != KV_OK)
        return rc;
    return woke;
}

/* The answers already queued (KV_ECORRUPT to the requests that met the
 * damage) get a moment to leave when the node closes. */
static int damaged(struct node *n)
{
    int linger = 500;
    zmq_setsockopt(n->router, ZMQ_LINGER, &linger, sizeof(linger));
    return KV_ECORRUPT;
}

const char *node_damage(const struct node *n)
{
    return store_damage(n->store);
}

int node_run(struct node *n)
{
    log_msg(LOG_INFO, "serving", "address=%s shards=%u replicas=%u curve=%s",
            n->conf->nodes[n->self].address, n->conf->shards, n->conf->replicas,
            n->zap ? "on" : "off");
    n->next_tick_ms = now_ms() + REPLICA_TICK_MS;
    int rc;
    while ((rc = iterate(n, 1000)) == 0)
        ;
    if (rc == KV_ECORRUPT)
        return damaged(n);
    if (rc < 0)
        return rc;
    /* Graceful stop: hand every led shard to a caught-up member first, so
     * clients see no election timeout. */
    uint64_t deadline = now_ms() + SHUTDOWN_TRANSFER_MS;
    size_t led = replica_transfer_all(n->replica);
    while (led && now_ms() < deadline) {
        rc = iterate(n, 20);
        if (rc == KV_ECORRUPT)
            return damaged(n);
        if (rc < 0)
            return rc;
        led = replica_transfer_all(n->replica);
    }
    if (led)
        log_msg(LOG_WARN, "stopping while still leading", "shards=%zu", led);
    struct zap_stats zs = {0};
    if (n->zap)
        zap_get_stats(n->zap, &zs);
    log_msg(LOG_INFO, "stopping",
            "requests=%llu inflight_refused=%llu zap_admitted=%llu "
            "zap_refused=%llu",
            (unsigned long long)n->requests,
            (unsigned long long)n->inflight_refused,
            (unsigned long long)zs.admitted, (unsigned long long)zs.refused);
    return KV_OK;
}

void node_stop(struct node *n)
{
    char c = 1;
    ssize_t w = write(n->wake[1], &c, 1);
    (void)w;
}

/* Makes socket S a CURVE client of the node with public key SERVER,
 * authenticating with PAIR. Returns KV_OK or KV_EIO (reason in ERR). */
static int curve_client(void *s, const char *server,
                        const struct keys_pair *pair, char *err, size_t errlen)
{
    if (zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server, KEYS_Z85_LEN + 1) ||
        zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, pair->pub, KEYS_Z85_LEN + 1) ||
        zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, pair->sec, KEYS_Z85_LEN + 1)) {
        snprintf(err, errlen, "cannot set the CurveZMQ keys: %s",
                 zmq_strerror(zmq_errno()));
        return KV_EIO;
    }
    return KV_OK;
}

/* Connects a DEALER to every other node; PAIR (NULL with curve off) is
 * this node's key pair. */
static int open_peers(struct node *n, const struct keys_pair *pair, char *err,
                      size_t errlen)
{
    const struct conf *c = n->conf;
    n->peers = calloc(c->nnodes, sizeof(void *));
    if (!n->peers)
        return KV_ENOMEM;
    for (size_t i = 0; i < c->nnodes; i++) {
        if (i == n->self)
            continue;
        void *s = zmq_socket(n->ctx, ZMQ_DEALER);
        if (!s) {
            snprintf(err, errlen, "cannot create a socket: %s",
                     zmq_strerror(zmq_errno()));
            return KV_EIO;
        }
        n->peers[i] = s;
        char rid[16];
        int len = snprintf(rid, sizeof(rid), "n%u", n->id);
        int zero = 0, one = 1, hwm = PEER_HWM, ivl = 1000, ttl = 3000;
        int hs = (int)c->security.handshake_timeout_ms;
        int64_t maxmsg = (int64_t)c->max_message_bytes;
        zmq_setsockopt(s, ZMQ_ROUTING_ID, rid, (size_t)len);
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
        zmq_setsockopt(s, ZMQ_IMMEDIATE, &one, sizeof(one));
        zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof(hwm));
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
        zmq_setsockopt(s, ZMQ_HEARTBEAT_IVL, &ivl, sizeof(ivl));
        zmq_setsockopt(s, ZMQ_HEARTBEAT_TIMEOUT, &ttl, sizeof(ttl));
        zmq_setsockopt(s, ZMQ_HANDSHAKE_IVL, &hs, sizeof(hs));
        if (pair) {
            int rc = curve_client(s, c->nodes[i].public_key, pair, err, errlen);
            if (rc != KV_OK)
                return rc;
        }
        if (zmq_connect(s, c->nodes[i].address) != 0) {
            snprintf(err, errlen, "cannot connect to %s: %s",
                     c->nodes[i].address, zmq_strerror(zmq_errno()));
            return KV_EIO;
        }
    }
    return KV_OK;
}

/* Protected mode: with curve off, a node listens only on a loopback
 * address unless the file says insecure = yes. */
static int check_protected(const struct conf *conf, const struct conf_node *me,
                           char *err, size_t errlen)
{
    if (conf->security.curve || conf->security.insecure ||
        conf_address_is_loopback(me->address))
        return KV_OK;
    snprintf(err, errlen,
             "protected mode: node %u would listen on %s, which is not a "
             "loopback address, with CurveZMQ off, so anyone who can reach "
             "it could read and change every key. Set 'curve = on' in the "
             "[security] section of %s (see docs/security.md), or "
             "'insecure = yes' there to run unprotected anyway",
             me->id, me->address, conf->path[0] ? conf->path : "the config");
    return KV_EINVAL;
}

/* Reads this node's key pair from its secret_key_file and checks it is
 * the one cluster.conf names. */
static int load_node_keys(const struct conf *conf, const struct conf_node *me,
                          struct keys_pair *pair, char *err, size_t errlen)
{
    char kerr[512];
    int rc = keys_load_pair(me->secret_key_file, pair, kerr, sizeof(kerr));
    if (rc != KV_OK) {
        snprintf(err, errlen, "secret_key_file of node %u: %s", me->id, kerr);
        return rc == KV_EIO ? KV_EIO : KV_EINVAL;
    }
    if (strcmp(pair->pub, me->public_key) != 0) {
        snprintf(err, errlen,
                 "%s holds the key pair of public key %s, but %s gives node "
                 "%u the public_key %s",
                 me->secret_key_file, pair->pub,
                 conf->path[0] ? conf->path : "the config", me->id,
                 me->public_key);
        return KV_EINVAL;
    }
    if (pair->loose_mode)
        log_msg(LOG_WARN,
                "the secret key file is readable by others than its owner",
                "file=%s fix=\"chmod 600 %s\"", me->secret_key_file,
                me->secret_key_file);
    return KV_OK;
}

/* curve = on: reads the keys, binds the ZAP handler (before the ROUTER
 * binds: a context without one admits every key). */
static int open_curve(struct node *n, const struct conf_node *me,
                      struct keys_pair *pair, char *err, size_t errlen)
{
    const struct conf *conf = n->conf;
    if (!zmq_has("curve")) {
        snprintf(err, errlen,
                 "curve = on, but this libzmq was built without CURVE");
        return KV_EINVAL;
    }
    int rc = load_node_keys(conf, me, pair, err, errlen);
    if (rc != KV_OK)
        return rc;
    char(*extra)[KEYS_Z85_LEN + 1] = NULL;
    size_t nextra = 0;
    const char *file = conf->security.client_keys_file;
    if (file) {
        char kerr[512];
        rc = keys_load_list(file, &extra, &nextra, kerr, sizeof(kerr));
        if (rc != KV_OK) {
            snprintf(err, errlen, "client_keys_file: %s", kerr);
            return rc == KV_EIO ? KV_EIO : rc;
        }
    }
    rc = zap_open(n->ctx, conf, (const char(*)[KEYS_Z85_LEN + 1]) extra, nextra,
                  &n->zap, err, errlen);
    if (rc == KV_OK)
        log_msg(LOG_INFO, "CurveZMQ on", "public_key=%s client_keys=%zu",
                pair->pub, conf->security.nclient_keys + nextra);
    free(extra);
    return rc;
}

/* Binds the ROUTER (a CURVE server when PAIR is not NULL). */
static int open_router(struct node *n, const struct conf_node *me,
                       const struct keys_pair *pair, char *err, size_t errlen)
{
    const struct conf *conf = n->conf;
    n->router = zmq_socket(n->ctx, ZMQ_ROUTER);
    if (!n->router) {
        snprintf(err, errlen, "cannot create a socket: %s",
                 zmq_strerror(zmq_errno()));
        return KV_EIO;
    }
    int zero = 0, one = 1, hwm = 100000;
    int hs = (int)conf->security.handshake_timeout_ms;
    int64_t maxmsg = (int64_t)conf->max_message_bytes;
    zmq_setsockopt(n->router, ZMQ_LINGER, &zero, sizeof(zero));
    /* A restarted peer reconnects with the same routing id: its new
     * connection must replace the old one, not be ignored. */
    zmq_setsockopt(n->router, ZMQ_ROUTER_HANDOVER, &one, sizeof(one));
    zmq_setsockopt(n->router, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
    zmq_setsockopt(n->router, ZMQ_SNDHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(n->router, ZMQ_RCVHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(n->router, ZMQ_HANDSHAKE_IVL, &hs, sizeof(hs));
    if (pair &&
        (zmq_setsockopt(n->router, ZMQ_CURVE_SERVER, &one, sizeof(one)) ||
         zmq_setsockopt(n->router, ZMQ_CURVE_SECRETKEY, pair->sec,
                        KEYS_Z85_LEN + 1) ||
         zmq_setsockopt(n->router, ZMQ_ZAP_DOMAIN, "kv", 2))) {
        snprintf(err, errlen, "cannot make the socket a CurveZMQ server: %s",
                 zmq_strerror(zmq_errno()));
        return KV_EIO;
    }
    if (zmq_bind(n->router, me->address) != 0) {
        snprintf(err, errlen, "cannot bind %s: %s", me->address,
                 zmq_strerror(zmq_errno()));
        return KV_EIO;
    }
    return KV_OK;
}

int node_check_protected(const struct conf *conf, uint32_t id, char *err,
                         size_t errlen)
{
    const struct conf_node *me = conf_node_by_id(conf, id);
    if (!me) {
        snprintf(err, errlen, "node %u is not in %s", id, conf->path);
        return KV_EINVAL;
    }
    return check_protected(conf, me, err, errlen);
}

int node_open(const struct conf *conf, uint32_t id, struct node **out,
              char *err, size_t errlen)
{
    const struct conf_node *me = conf_node_by_id(conf, id);
    if (!me) {
        snprintf(err, errlen, "node %u is not in %s", id, conf->path);
        return KV_EINVAL;
    }
    int rc = check_protected(conf, me, err, errlen);
    if (rc != KV_OK)
        return rc;
    struct node *n = calloc(1, sizeof(*n));
    if (!n)
        return KV_ENOMEM;
    struct keys_pair pair;
    memset(&pair, 0, sizeof(pair));
    n->conf = conf;
    n->id = id;
    n->self = (size_t)(me - conf->nodes);
    n->wake[0] = n->wake[1] = -1;
    n->started_ms = now_ms();
    n->logged_peers = calloc(MAX_LOGGED_PEERS, sizeof(char *));
    n->inflight = inflight_new(conf->max_inflight_per_client);
    rc = n->logged_peers && n->inflight ? KV_OK : KV_ENOMEM;
    if (rc == KV_OK && pipe(n->wake) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        rc = KV_EIO;
    }
    if (rc == KV_OK) {
        fcntl(n->wake[0], F_SETFL, O_NONBLOCK);
        fcntl(n->wake[1], F_SETFL, O_NONBLOCK);
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s/%u", conf->data_dir, id);
        rc = store_open(dir, &n->store, err, errlen);
    }
    if (rc == KV_OK) {
        char perr[512] = "";
        rc = proc_registry_open((const char *const *)conf->procedures,
                                conf->nprocedures, &n->procs, perr,
                                sizeof(perr));
        if (rc != KV_OK)
            snprintf(err, errlen, "procedures: %s", perr);
    }
    if (rc == KV_OK) {
        struct replica_env env = {
            .arg = n,
            .send = send_peer,
            .reply = answer_client,
            .flush = flush_answers,
            .now_ms = env_now_ms,
            .wall_ms = env_wall_ms,
            .failpoint = getenv("KV_FAILPOINT") ? env_failpoint : NULL,
            .procs = n->procs};
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32) ^ id;
        rc = replica_open(conf, id, n->store, &env, seed, &n->replica, err,
                          errlen);
        if (rc == KV_ECORRUPT && store_damage(n->store)) {
            size_t used = strlen(err);
            snprintf(err + used, errlen - used, " (LevelDB: %s)",
                     store_damage(n->store));
        }
    }
    if (rc == KV_OK) {
        n->ctx = zmq_ctx_new();
        if (!n->ctx) {
            snprintf(err, errlen, "cannot create a ZeroMQ context: %s",
                     zmq_strerror(zmq_errno()));
            rc = KV_EIO;
        }
    }
    bool curve = conf->security.curve;
    if (rc == KV_OK && curve)
        rc = open_curve(n, me, &pair, err, errlen);
    if (rc == KV_OK)
        rc = open_router(n, me, curve ? &pair : NULL, err, errlen);
    if (rc == KV_OK)
        rc = open_peers(n, curve ? &pair : NULL, err, errlen);
    sodium_memzero(&pair, sizeof(pair)); /* libzmq keeps its own copy */
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
    for (size_t i = 0; n->peers && i < n->conf->nnodes; i++)
        if (n->peers[i])
            zmq_close(n->peers[i]);
    free(n->peers);
    if (n->router)
        zmq_close(n->router);
    zap_close(n->zap);
    if (n->ctx)
        zmq_ctx_term(n->ctx);
    replica_close(n->replica);
    proc_registry_close(n->procs);
    store_close(n->store);
    if (n->wake[0] >= 0)
        close(n->wake[0]);
    if (n->wake[1] >= 0)
        close(n->wake[1]);
    for (size_t i = 0; i < n->nlogged; i++)
        free(n->logged_peers[i]);
    free(n->logged_peers);
    inflight_free(n->inflight);
    for (size_t i = 0; i < n->heldcap; i++) {
        for (size_t j = 0; j < n->held[i].n; j++)
            free(n->held[i].frames[j].data);
        free(n->held[i].frames);
    }
    free(n->held);
    free(n);
}
