/*
 * client - cluster mode: routing, redirects and timeouts over ZeroMQ.
 *
 * A handle keeps one DEALER socket per node (made on first use) and a route
 * table: for each shard, the node it believes serves it, starting from the
 * static placement. A node that does not serve a shard answers
 * KV_ENOTLEADER naming the node that does; the handle updates its table and
 * retries there. Replies are matched to requests by id; a late reply to a
 * request that timed out is discarded. Sockets use ZMQ_IMMEDIATE, so a
 * request to a node with no live connection is never queued: the send times
 * out and the call fails with KV_EUNAVAILABLE (the request was not sent).
 * A node that answers KV_ECORRUPT has damaged data (docs/security.md): the
 * request goes to the next member at once, and KV_ECORRUPT reaches the
 * caller only when every member of the shard answered it.
 *
 * All handles of a process share one ZeroMQ context (reference counted).
 *
 * Security (docs/security.md): when the cluster.conf says [security]
 * curve = on, every socket is a CurveZMQ client with the handle's key pair
 * (kv_open_opts.key_file or $KV_CLIENT_KEY) and the node's public key from
 * the file. Each socket has a monitor for failed handshakes, read only on
 * the slow paths (a send that cannot go out, an answer that does not come):
 * a node that refuses the key, or a node and a client that disagree on
 * CurveZMQ, ends the call at once with KV_EAUTH and says which, instead of
 * letting it time out.
 */
#include <errno.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "admin.h"
#include "conf.h"
#include "keys.h"
#include "kvimpl.h"
#include "shard.h"
#include "wire.h"

#define SEND_WAIT_MS 100 /* a node with no live connection is skipped */
#define CLIENT_ID_LEN 16
/* Handshakes the node hung up on (EPIPE, ECONNRESET, no detail) with no
 * answer from it in between, before a call ends with KV_EAUTH: one may be
 * a node dying, but a node that does not take this client's handshake
 * (CurveZMQ on one side only, a wrong server key) hangs up on each of
 * libzmq's reconnects and only sometimes says why. While they come, a send
 * waits up to HANDSHAKE_SETTLE_MS for the verdict. The count survives
 * node_reset(); an answer from the node clears it. */
#define NO_DETAIL_LIMIT 3
#define HANDSHAKE_SETTLE_MS 1000
#define MONITOR_EVENTS                                                         \
    (ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |                                    \
     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)

struct client {
    struct kv base;
    struct conf *conf;
    void **socks;           /* per node, NULL until first use */
    void **mons;            /* per node: the monitor of its socket (PAIR) */
    unsigned *no_detail;    /* per node: handshakes it hung up on, in a row */
    struct keys_pair *keys; /* curve = on: this handle's key pair */
    size_t *route; /* per shard: index of the node believed to serve it */
    uint64_t next_id;
    unsigned char client_id[CLIENT_ID_LEN]; /* names this handle's session */
    uint64_t seq;                           /* last write's sequence number */
    struct pipeline *pipe;                  /* admin_pipeline(), or NULL */
};

struct pipeline;
static void pipeline_free(struct pipeline *p);

static pthread_mutex_t ctx_mu = PTHREAD_MUTEX_INITIALIZER;
static void *shared_ctx;
static int ctx_refs;
static unsigned long monitor_seq; /* names monitor endpoints (ctx_mu) */

static void *ctx_get(void)
{
    pthread_mutex_lock(&ctx_mu);
    if (!shared_ctx)
        shared_ctx = zmq_ctx_new();
    if (shared_ctx)
        ctx_refs++;
    void *c = shared_ctx;
    pthread_mutex_unlock(&ctx_mu);
    return c;
}

static void ctx_put(void)
{
    pthread_mutex_lock(&ctx_mu);
    if (--ctx_refs == 0) {
        zmq_ctx_term(shared_ctx);
        shared_ctx = NULL;
    }
    pthread_mutex_unlock(&ctx_mu);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static struct client *client_of(kv *db)
{
    return (struct client *)db;
}

/* Makes the per-node socket arrays for N nodes. */
static int conns_alloc(struct client *c, size_t n)
{
    c->socks = calloc(n ? n : 1, sizeof(void *));
    c->mons = calloc(n ? n : 1, sizeof(void *));
    c->no_detail = calloc(n ? n : 1, sizeof(unsigned));
    return c->socks && c->mons && c->no_detail ? KV_OK : KV_ENOMEM;
}

static void node_reset(struct client *c, size_t i);

/* Closes the sockets of the N nodes and frees the arrays. */
static void conns_free(struct client *c, size_t n)
{
    for (size_t i = 0; c->socks && c->mons && i < n; i++)
        node_reset(c, i);
    free(c->socks);
    free(c->mons);
    free(c->no_detail);
    c->socks = NULL;
    c->mons = NULL;
    c->no_detail = NULL;
}

/* Watches socket S's handshakes: *mon gets a PAIR socket that receives
 * the failures. Returns 0 or -1. */
static int monitor_open(void *s, void **mon)
{
    char ep[64];
    pthread_mutex_lock(&ctx_mu);
    unsigned long seq = ++monitor_seq;
    pthread_mutex_unlock(&ctx_mu);
    snprintf(ep, sizeof(ep), "inproc://kv-client-monitor-%lu", seq);
    if (zmq_socket_monitor(s, ep, MONITOR_EVENTS) != 0)
        return -1;
    void *m = zmq_socket(shared_ctx, ZMQ_PAIR);
    if (!m || zmq_connect(m, ep) != 0) {
        if (m)
            zmq_close(m);
        zmq_socket_monitor(s, NULL, 0);
        return -1;
    }
    int zero = 0;
    zmq_setsockopt(m, ZMQ_LINGER, &zero, sizeof(zero));
    *mon = m;
    return 0;
}

/* The DEALER socket to node I, connecting it on first use: a CurveZMQ
 * client of the node's public key when the handle has keys. */
static void *node_socket(struct client *c, size_t i)
{
    if (c->socks[i])
        return c->socks[i];
    void *s = zmq_socket(shared_ctx, ZMQ_DEALER);
    if (!s)
        return NULL;
    int zero = 0, one = 1;
    int hs = (int)(c->conf->security.handshake_timeout_ms
                       ? c->conf->security.handshake_timeout_ms
                       : CONF_HANDSHAKE_DEFAULT);
    int64_t maxmsg = (int64_t)c->conf->max_message_bytes + 4096;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(s, ZMQ_IMMEDIATE, &one, sizeof(one));
    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg));
    zmq_setsockopt(s, ZMQ_HANDSHAKE_IVL, &hs, sizeof(hs));
    const char *server = c->conf->nodes[i].public_key;
    if (c->keys &&
        (!server ||
         zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server, KEYS_Z85_LEN + 1) ||
         zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, c->keys->pub,
                        KEYS_Z85_LEN + 1) ||
         zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, c->keys->sec,
                        KEYS_Z85_LEN + 1))) {
        zmq_close(s);
        return NULL;
    }
    void *mon = NULL;
    if (monitor_open(s, &mon) != 0) {
        zmq_close(s);
        return NULL;
    }
    if (zmq_connect(s, c->conf->nodes[i].address) != 0) {
        zmq_socket_monitor(s, NULL, 0);
        zmq_close(mon);
        zmq_close(s);
        return NULL;
    }
    c->socks[i] = s;
    c->mons[i] = mon;
    return s;
}

/* Drops node I's socket (after a timeout), so that a later request starts
 * on a fresh connection with no stale replies queued. */
static void node_reset(struct client *c, size_t i)
{
    if (c->socks[i]) {
        zmq_socket_monitor(c->socks[i], NULL, 0);
        zmq_close(c->socks[i]);
        c->socks[i] = NULL;
    }
    if (c->mons[i]) {
        zmq_close(c->mons[i]);
        c->mons[i] = NULL;
    }
}

/* Reads the handshake failures the monitor of node I's socket reported.
 * Returns KV_OK, or KV_EAUTH (with the handle's message set, the socket
 * reset) when they show the node will not take this client: its key is
 * refused, the two disagree on CurveZMQ, or (curve on) the node keeps
 * hanging up during the handshake. */
static int auth_check(struct client *c, size_t i)
{
    kv *db = &c->base;
    const char *addr = c->conf->nodes[i].address;
    uint32_t node = c->conf->nodes[i].id;
    int rc = KV_OK;
    for (int k = 0; c->mons[i] && k < 64 && rc == KV_OK; k++) {
        zmq_msg_t ev, ep;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, c->mons[i], ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            break;
        }
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&ev) == 6) {
            memcpy(&event, zmq_msg_data(&ev), 2);
            memcpy(&value, (unsigned char *)zmq_msg_data(&ev) + 2, 4);
        }
        bool more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        if (more) { /* the endpoint frame */
            zmq_msg_init(&ep);
            zmq_msg_recv(&ep, c->mons[i], ZMQ_DONTWAIT);
            zmq_msg_close(&ep);
        }
        if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
            rc = kv_fail(db, KV_EAUTH,
                         "node %u (%s) refused this client's key %s (ZAP "
                         "status %u): it is not one of the cluster's client "
                         "keys ([security] client_keys or client_keys_file "
                         "in the nodes' cluster.conf)",
                         node, addr, c->keys ? c->keys->pub : "(none)", value);
        } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
                   value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
            if (c->keys)
                rc = kv_fail(db, KV_EAUTH,
                             "node %u (%s) does not use CurveZMQ, but this "
                             "client's cluster.conf says curve = on: the "
                             "nodes and this file disagree",
                             node, addr);
            else
                rc = kv_fail(db, KV_EAUTH,
                             "node %u (%s) requires CurveZMQ, but this client "
                             "connects in plaintext: use the cluster's "
                             "cluster.conf (with [security] curve = on and "
                             "the nodes' public keys; a tcp:// seed list "
                             "cannot carry them) and a client key",
                             node, addr);
        } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
            rc = kv_fail(db, KV_EAUTH,
                         "the %s handshake with node %u (%s) failed "
                         "(protocol error 0x%x)%s",
                         c->keys ? "CurveZMQ" : "ZeroMQ", node, addr, value,
                         c->keys ? ": is the node's public_key in this "
                                   "cluster.conf its own?"
                                 : "");
        } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL &&
                   (value == EPIPE || value == ECONNRESET) &&
                   ++c->no_detail[i] >= NO_DETAIL_LIMIT) {
            rc = kv_fail(db, KV_EAUTH,
                         "node %u (%s) hung up during the %s handshake %u "
                         "times in a row: %s",
                         node, addr, c->keys ? "CurveZMQ" : "ZeroMQ",
                         c->no_detail[i],
                         c->keys ? "is its public_key in this cluster.conf "
                                   "its own, and does it use CurveZMQ?"
                                 : "it probably requires CurveZMQ, which this "
                                   "client does not use (its cluster.conf "
                                   "has no [security] curve = on)");
        }
    }
    if (rc != KV_OK)
        node_reset(c, i);
    return rc;
}

/* Sends BUF on node I's socket S, waiting at most WAIT ms for a connection
 * (ZMQ_IMMEDIATE queues nothing before one) while watching for a refused
 * handshake. Returns KV_OK; KV_EAUTH (message set, socket reset);
 * KV_EUNAVAILABLE when no connection came in time, or KV_EIO when the send
 * failed otherwise (zmq errno in *e); those two set no message. */
static int send_or_auth(struct client *c, size_t i, void *s, const void *buf,
                        size_t len, int wait, uint64_t deadline, int *e)
{
    uint64_t start = now_ms();
    uint64_t until = start + (uint64_t)wait;
    for (;;) {
        if (zmq_send(s, buf, len, ZMQ_DONTWAIT) >= 0)
            return KV_OK;
        *e = zmq_errno();
        if (*e != EAGAIN && *e != EINTR)
            return KV_EIO;
        uint64_t now = now_ms();
        if (now >= until)
            return auth_check(c, i) == KV_EAUTH ? KV_EAUTH : KV_EUNAVAILABLE;
        zmq_pollitem_t items[2] = {
            {.socket = s, .events = ZMQ_POLLOUT},
            {.socket = c->mons[i], .events = ZMQ_POLLIN},
        };
        int n = zmq_poll(items, 2, (long)(until - now));
        if (n > 0 && (items[1].revents & ZMQ_POLLIN)) {
            if (auth_check(c, i) == KV_EAUTH)
                return KV_EAUTH;
            /* The node is there but hangs up on the handshake: wait for
             * the verdict rather than take it for a node that is down. */
            uint64_t settle = start + HANDSHAKE_SETTLE_MS;
            if (c->no_detail[i] > 0 && until < settle)
                until = settle < deadline ? settle : deadline;
        }
    }
}

/* Sends BUF to node I and waits until DEADLINE for a reply envelope with
 * id ID (0: accept any). */
static int exchange(struct client *c, size_t i, const void *buf, size_t len,
                    uint64_t id, uint64_t deadline, Kv__Envelope **out)
{
    kv *db = &c->base;
    const char *addr = c->conf->nodes[i].address;
    void *s = node_socket(c, i);
    if (!s)
        return kv_fail(db, KV_EUNAVAILABLE, "cannot connect to %s: %s", addr,
                       zmq_strerror(zmq_errno()));
    uint64_t now = now_ms();
    int wait = deadline > now ? (int)(deadline - now) : 0;
    if (wait > SEND_WAIT_MS)
        wait = SEND_WAIT_MS;
    int e = 0;
    int src = send_or_auth(c, i, s, buf, len, wait, deadline, &e);
    if (src == KV_EAUTH)
        return KV_EAUTH; /* the socket is reset, the message set */
    if (src != KV_OK) {
        node_reset(c, i);
        if (src == KV_EUNAVAILABLE)
            return kv_fail(db, KV_EUNAVAILABLE,
                           "node %u (%s) is not reachable (request not sent)",
                           c->conf->nodes[i].id, addr);
        return kv_fail(db, KV_EUNAVAILABLE, "send to %s failed: %s", addr,
                       zmq_strerror(e));
    }
    for (;;) {
        now = now_ms();
        if (now >= deadline)
            break;
        zmq_pollitem_t item = {.socket = s, .events = ZMQ_POLLIN};
        int n = zmq_poll(&item, 1, (long)(deadline - now));
        if (n < 0) {
            if (zmq_errno() == EINTR)
                continue;
            break;
        }
        if (n == 0)
            break;
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, s, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            continue;
        }
        char err[128];
        Kv__Envelope *env = NULL;
        int rc = wire_decode(zmq_msg_data(&msg), zmq_msg_size(&msg),
                             c->conf->max_message_bytes + 4096, &env, err,
                             sizeof(err));
        zmq_msg_close(&msg);
        if (rc != KV_OK)
            continue; /* garbage from the wire is not an answer */
        if (env->body_case != KV__ENVELOPE__BODY_RESPONSE ||
            (id && env->response->id != id)) {
            wire_free(env); /* a late reply to an earlier request */
            continue;
        }
        c->no_detail[i] = 0;
        *out = env;
        return KV_OK;
    }
    /* The connection may have been dropped and refused since. */
    if (auth_check(c, i) == KV_EAUTH)
        return KV_EAUTH;
    node_reset(c, i);
    return kv_fail(db, KV_ETIMEDOUT, "node %u (%s) did not answer in time",
                   c->conf->nodes[i].id, addr);
}

static size_t node_index(const struct conf *conf, uint32_t id)
{
    for (size_t i = 0; i < conf->nnodes; i++)
        if (conf->nodes[i].id == id)
            return i;
    return conf->nnodes;
}

static int route_request_from(struct client *c, uint32_t shard,
                              Kv__Request *req, uint32_t timeout_ms,
                              size_t first, Kv__Envelope **out);

/* The next member of SHARD's placement after node index I (or the first
 * member when I is not one). */
static size_t next_member(const struct client *c, uint32_t shard, size_t i)
{
    const struct conf *conf = c->conf;
    for (uint32_t r = 0; r < conf->replicas; r++)
        if (conf_replica(conf, shard, r) == i)
            return conf_replica(conf, shard, (r + 1) % conf->replicas);
    return conf_replica(conf, shard, 0);
}

/* Whether node index I holds a replica of SHARD. */
static bool is_member(const struct client *c, uint32_t shard, size_t i)
{
    for (uint32_t r = 0; r < c->conf->replicas; r++)
        if (conf_replica(c->conf, shard, r) == i)
            return true;
    return false;
}

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000),
                          .tv_nsec = (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Sleeps *BACKOFF ms unless that passes DEADLINE, and doubles it (5 ms up
 * to 160 ms): the pause between rounds of a call's attempts. */
static void back_off(uint64_t *backoff, uint64_t deadline)
{
    if (now_ms() + *backoff < deadline)
        sleep_ms(*backoff);
    if (*backoff < 100)
        *backoff *= 2;
}

/* Sends REQ for SHARD to the node serving it until one answers or the
 * deadline passes: it follows KV_ENOTLEADER hints, and after a node that
 * does not answer (or has no leader to name) it tries the next member of
 * the shard, backing off a little each round; after KV_ECORRUPT it tries
 * the next member at once. A retried write is safe: it
 * carries the same session id and sequence number, so a shard applies it
 * at most once. On KV_OK *out is the reply (its code may still be an
 * error). Failure: KV_ETIMEDOUT if a request may have been delivered,
 * KV_EUNAVAILABLE if none was sent. */
static int route_request(struct client *c, uint32_t shard, Kv__Request *req,
                         uint32_t timeout_ms, Kv__Envelope **out)
{
    return route_request_from(c, shard, req, timeout_ms, c->route[shard], out);
}

/* As route_request, starting at node index FIRST. */
static int route_request_from(struct client *c, uint32_t shard,
                              Kv__Request *req, uint32_t timeout_ms,
                              size_t first, Kv__Envelope **out)
{
    kv *db = &c->base;
    uint64_t deadline = now_ms() + timeout_ms;
    uint64_t attempt_ms = timeout_ms / 10;
    if (attempt_ms < 200)
        attempt_ms = 200;
    if (attempt_ms > 1000)
        attempt_ms = 1000;
    req->id = ++c->next_id;
    req->timeout_ms = timeout_ms;
    void *buf;
    size_t len;
    int rc = wire_encode_request(req, &buf, &len);
    if (rc != KV_OK)
        return rc;
    size_t i = first;
    bool delivered = false;
    uint64_t backoff = 5;
    int hops = 0;
    char last[256] = "";
    /* Nodes this call found unreachable: a hint naming one (a follower
     * that has not noticed its leader died) is not followed. */
    bool unreachable[CONF_MAX_NODES] = {false};
    /* Members that answered KV_ECORRUPT: damaged data there (the node
     * stops, its shards fail over) says nothing of the other copies. */
    bool damaged[CONF_MAX_NODES] = {false};
    uint32_t ndamaged = 0;
    for (;;) {
        uint64_t now = now_ms();
        if (now >= deadline)
            break;
        uint64_t until =
            now + attempt_ms < deadline ? now + attempt_ms : deadline;
        Kv__Envelope *env = NULL;
        rc = exchange(c, i, buf, len, req->id, until, &env);
        if (rc == KV_EAUTH) {
            /* Every node shares the cluster's keys: another would refuse
             * this client too. */
            free(buf);
            return rc;
        }
        if (rc == KV_OK && env->response->code == ENGINE_ELOCKED) {
            /* A key is locked by a cross-shard transaction in progress:
             * nothing was applied (not even the session), so the same
             * request is sent again once the lock is likely gone. */
            snprintf(
                last, sizeof(last), "node %u: %.200s", c->conf->nodes[i].id,
                env->response->message ? env->response->message : "key locked");
            wire_free(env);
            back_off(&backoff, deadline);
            continue;
        }
        if (rc == KV_OK && env->response->code == KV_ECORRUPT &&
            i < CONF_MAX_NODES) {
            /* Only when every member says so is it the answer (a record
             * damaged alike everywhere); else ask the next one at once.
             * The same session and sequence keep a write exactly once. */
            if (!damaged[i] && is_member(c, shard, i))
                ndamaged++;
            damaged[i] = unreachable[i] = true;
            if (ndamaged >= c->conf->replicas) {
                *out = env;
                free(buf);
                return KV_OK;
            }
            snprintf(last, sizeof(last), "node %u: %.200s",
                     c->conf->nodes[i].id,
                     env->response->message ? env->response->message
                                            : kv_strerror(KV_ECORRUPT));
            delivered = true; /* it may have proposed a write first */
            wire_free(env);
            i = next_member(c, shard, i);
            continue;
        }
        if (rc == KV_OK) {
            Kv__Response *r = env->response;
            if (r->code != KV_ENOTLEADER && r->code != KV_EUNAVAILABLE) {
                c->route[shard] = i;
                *out = env;
                free(buf);
                return KV_OK;
            }
            snprintf(last, sizeof(last), "node %u: %.200s",
                     c->conf->nodes[i].id,
                     r->message ? r->message : kv_strerror(r->code));
            size_t j = r->code == KV_ENOTLEADER
                           ? node_index(c->conf, r->leader_id)
                           : c->conf->nnodes;
            /* "Outcome unknown here": the request may have been applied. */
            delivered |= r->code == KV_EUNAVAILABLE;
            wire_free(env);
            if (j < c->conf->nnodes && j != i && !unreachable[j]) {
                i = j; /* a hint: follow it at once, unless hints go round
                          in circles (stale leaders): then back off */
                if (++hops > 2)
                    back_off(&backoff, deadline);
                continue;
            }
        } else {
            delivered |= rc == KV_ETIMEDOUT;
            if (rc == KV_EUNAVAILABLE && i < CONF_MAX_NODES)
                unreachable[i] = true; /* not sent: the node is gone */
            snprintf(last, sizeof(last), "%.200s", db->errmsg);
        }
        /* No answer, or no leader known: try the next member, a bit later. */
        i = next_member(c, shard, i);
        back_off(&backoff, deadline);
    }
    free(buf);
    if (delivered)
        return kv_fail(db, KV_ETIMEDOUT,
                       "shard %u: no answer in %u ms (a write may or may not "
                       "have happened); last: %s",
                       shard, timeout_ms, last);
    return kv_fail(db, KV_EUNAVAILABLE,
                   "shard %u: no node could serve it in %u ms; last: %s", shard,
                   timeout_ms, last);
}

/* Maps a reply's error code to the handle's result. */
static int reply_code(kv *db, const Kv__Response *r)
{
    if (r->code >= 0)
        return KV_OK;
    if (r->code < KV_ERANGE) /* the lowest code this library knows */
        return kv_fail(db, KV_EPROTO, "unknown error code %d from node",
                       r->code);
    if (r->message && r->message[0])
        kv_fail(db, r->code, "%s", r->message);
    return r->code;
}

static int cl_get(kv *db, uint32_t shard, const void *key, size_t klen,
                  uint32_t timeout_ms, bool stale, void **val, size_t *vlen,
                  uint64_t *version)
{
    Kv__Request req = KV__REQUEST__INIT;
    Kv__GetRequest g = KV__GET_REQUEST__INIT;
    g.key.data = (uint8_t *)key;
    g.key.len = klen;
    g.stale = stale;
    req.op_case = KV__REQUEST__OP_GET;
    req.get = &g;
    Kv__Envelope *env = NULL;
    struct client *c = client_of(db);
    /* A stale read may be served by any member: spread them round robin. */
    size_t first = c->route[shard];
    if (stale)
        first = conf_replica(c->conf, shard,
                             (uint32_t)(c->next_id % c->conf->replicas));
    size_t leader = c->route[shard];
    int rc = route_request_from(c, shard, &req, timeout_ms, first, &env);
    if (stale)
        c->route[shard] = leader; /* a follower's answer says nothing of it */
    if (rc != KV_OK)
        return rc;
    Kv__Response *r = env->response;
    rc = reply_code(db, r);
    if (rc == KV_OK && r->result_case != KV__RESPONSE__RESULT_GET)
        rc = kv_fail(db, KV_EPROTO, "reply to get without a result");
    if (rc == KV_OK) {
        void *copy = NULL;
        size_t n = r->get->value.len;
        if (n) {
            copy = malloc(n);
            if (!copy) {
                rc = KV_ENOMEM;
                goto out;
            }
            memcpy(copy, r->get->value.data, n);
        }
        *val = copy;
        *vlen = n;
        *version = r->get->version;
    }
out:
    wire_free(env);
    return rc;
}

static int cl_write(kv *db, const struct engine_write *w, uint32_t timeout_ms,
                    uint64_t *version)
{
    Kv__Request req = KV__REQUEST__INIT;
    Kv__PutRequest p = KV__PUT_REQUEST__INIT;
    Kv__DeleteRequest d = KV__DELETE_REQUEST__INIT;
    if (w->op == ENGINE_PUT) {
        p.key.data = (uint8_t *)w->key;
        p.key.len = w->klen;
        p.value.data = (uint8_t *)w->val;
        p.value.len = w->vlen;
        p.if_version = w->if_version;
        p.if_absent = w->if_absent;
        req.op_case = KV__REQUEST__OP_PUT;
        req.put = &p;
    } else {
        d.key.data = (uint8_t *)w->key;
        d.key.len = w->klen;
        d.if_version = w->if_version;
        req.op_case = KV__REQUEST__OP_DEL;
        req.del = &d;
    }
    struct client *c = client_of(db);
    req.client_id.data = c->client_id;
    req.client_id.len = sizeof(c->client_id);
    req.seq = ++c->seq;
    Kv__Envelope *env = NULL;
    int rc = route_request(c, w->shard, &req, timeout_ms, &env);
    if (rc != KV_OK)
        return rc;
    Kv__Response *r = env->response;
    rc = reply_code(db, r);
    if (rc == KV_OK) {
        if (r->result_case == KV__RESPONSE__RESULT_WRITE)
            *version = r->write->version;
        else
            rc = kv_fail(db, KV_EPROTO, "reply to a write without a result");
    }
    wire_free(env);
    return rc;
}

/* Calls a procedure on KEY's shard (like a write: same routing, retries
 * and session, so a retried call is applied at most once), or with ALL on
 * every shard through any node. */
static int cl_call(kv *db, const char *name, const void *key, size_t klen,
                   bool all, const void *arg, size_t alen, uint32_t timeout_ms,
                   void **reply, size_t *rlen)
{
    struct client *c = client_of(db);
    Kv__Request req = KV__REQUEST__INIT;
    Kv__CallRequest cr = KV__CALL_REQUEST__INIT;
    cr.name = (char *)name;
    cr.key.data = (uint8_t *)key;
    cr.key.len = klen;
    cr.arg.data = (uint8_t *)arg;
    cr.arg.len = alen;
    cr.all = all;
    req.op_case = KV__REQUEST__OP_CALL;
    req.call = &cr;
    uint32_t shard = all ? (uint32_t)(c->next_id % db->nshards)
                         : shard_of(key, klen, db->nshards);
    if (!all) {
        req.client_id.data = c->client_id;
        req.client_id.len = sizeof(c->client_id);
        req.seq = ++c->seq;
    }
    Kv__Envelope *env = NULL;
    int rc = route_request(c, shard, &req, timeout_ms, &env);
    if (rc != KV_OK)
        return rc;
    Kv__Response *r = env->response;
    rc = reply_code(db, r);
    if (r->result_case == KV__RESPONSE__RESULT_CALL && r->call->reply.len &&
        (rc == KV_OK || r->code < 0)) {
        size_t n = r->call->reply.len;
        *reply = malloc(n);
        if (!*reply) {
            wire_free(env);
            return kv_fail(db, KV_ENOMEM, "out of memory");
        }
        memcpy(*reply, r->call->reply.data, n);
        *rlen = n;
    } else if (rc == KV_OK && r->result_case != KV__RESPONSE__RESULT_CALL) {
        rc = kv_fail(db, KV_EPROTO, "reply to a call without a result");
    }
    wire_free(env);
    return rc;
}

static const Kv__TxnOp__Kind txn_kinds[] = {
    [ENGINE_TXN_PUT] = KV__TXN_OP__KIND__PUT,
    [ENGINE_TXN_DEL] = KV__TXN_OP__KIND__DEL,
    [ENGINE_TXN_IF_VERSION] = KV__TXN_OP__KIND__IF_VERSION,
    [ENGINE_TXN_IF_ABSENT] = KV__TXN_OP__KIND__IF_ABSENT,
};

/* Sends transaction T to its home shard like a write (same routing,
 * redirects, retries and session), and maps the TxnResult. */
static int cl_txn(kv *db, const struct engine_txn *t, uint32_t timeout_ms,
                  uint64_t *versions, size_t *failed, uint64_t *current)
{
    struct client *c = client_of(db);
    Kv__Request req = KV__REQUEST__INIT;
    Kv__TxnRequest tr = KV__TXN_REQUEST__INIT;
    Kv__TxnOp *ops = calloc(t->nops, sizeof(*ops));
    Kv__TxnOp **opp = calloc(t->nops, sizeof(*opp));
    Kv__Envelope *env = NULL;
    int rc = KV_OK;
    *failed = 0;
    *current = 0;
    if (!ops || !opp) {
        rc = KV_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < t->nops; i++) {
        const struct engine_txn_op *op = &t->ops[i];
        Kv__TxnOp *o = &ops[i];
        kv__txn_op__init(o);
        o->kind = txn_kinds[op->kind];
        o->key.data = (uint8_t *)op->key;
        o->key.len = op->klen;
        if (op->kind == ENGINE_TXN_PUT) {
            o->value.data = (uint8_t *)op->val;
            o->value.len = op->vlen;
        }
        o->version = op->version;
        opp[i] = o;
    }
    tr.n_ops = t->nops;
    tr.ops = opp;
    req.op_case = KV__REQUEST__OP_TXN;
    req.txn = &tr;
    req.client_id.data = c->client_id;
    req.client_id.len = sizeof(c->client_id);
    req.seq = c->seq + 1;
    req.id = UINT64_MAX; /* the largest varints: an upper bound of the size */
    req.timeout_ms = UINT32_MAX;
    /* A node drops a frame over max_message_bytes unread: refuse it here,
     * before it takes a sequence number. The envelope adds a few bytes. */
    size_t size = kv__request__get_packed_size(&req) + 16;
    if (size > c->conf->max_message_bytes) {
        rc = kv_fail(db, KV_ETOOBIG,
                     "transaction of %zu ops encodes to %zu bytes, over "
                     "max_message_bytes (%llu)",
                     t->nops, size,
                     (unsigned long long)c->conf->max_message_bytes);
        goto out;
    }
    req.seq = ++c->seq;
    rc = route_request(c, t->shard, &req, timeout_ms, &env);
    if (rc != KV_OK)
        goto out;
    Kv__Response *r = env->response;
    const Kv__TxnResult *res =
        r->result_case == KV__RESPONSE__RESULT_TXN ? r->txn : NULL;
    rc = reply_code(db, r);
    if (rc == KV_ECONFLICT && res && res->failed_op <= t->nops) {
        *failed = res->failed_op;
        *current = res->current_version;
    } else if (rc == KV_OK) {
        if (!res || res->n_versions != t->nops) {
            rc = kv_fail(db, KV_EPROTO,
                         "reply to a transaction of %zu ops without one "
                         "version per op",
                         t->nops);
            goto out;
        }
        for (size_t i = 0; i < t->nops; i++)
            versions[i] = res->versions[i];
    }
out:
    wire_free(env);
    free(opp);
    free(ops);
    return rc;
}

static int cl_scan_page(kv *db, const struct engine_scan *sc,
                        uint32_t timeout_ms, bool stale, struct scan_page *p)
{
    Kv__Request req = KV__REQUEST__INIT;
    Kv__ScanRequest s = KV__SCAN_REQUEST__INIT;
    s.stale = stale;
    s.shard = sc->shard;
    s.start.data = (uint8_t *)sc->start;
    s.start.len = sc->start_len;
    s.end.data = (uint8_t *)sc->end;
    s.end.len = sc->end_len;
    s.prefix.data = (uint8_t *)sc->prefix;
    s.prefix.len = sc->prefix_len;
    s.after.data = (uint8_t *)sc->after;
    s.after.len = sc->after_len;
    s.has_after = sc->has_after;
    s.limit = (uint32_t)sc->limit;
    req.op_case = KV__REQUEST__OP_SCAN;
    req.scan = &s;
    Kv__Envelope *env = NULL;
    struct client *c = client_of(db);
    size_t leader = c->route[sc->shard];
    size_t first = leader;
    if (stale) /* any member may serve it: spread them round robin */
        first = conf_replica(c->conf, sc->shard,
                             (uint32_t)(c->next_id % c->conf->replicas));
    int rc = route_request_from(c, sc->shard, &req, timeout_ms, first, &env);
    if (stale)
        c->route[sc->shard] = leader;
    if (rc != KV_OK)
        return rc;
    Kv__Response *r = env->response;
    rc = reply_code(db, r);
    if (rc == KV_OK && r->result_case != KV__RESPONSE__RESULT_SCAN)
        rc = kv_fail(db, KV_EPROTO, "reply to scan without a result");
    for (size_t i = 0; rc == KV_OK && i < r->scan->n_entries; i++) {
        Kv__Entry *e = r->scan->entries[i];
        rc = scan_page_add(p, e->key.data, e->key.len, e->value.data,
                           e->value.len, e->version);
    }
    if (rc == KV_OK)
        p->more = r->scan->more;
    wire_free(env);
    return rc;
}

/* Asks node I for its status. On KV_OK *out is the detached result. */
static int status_of(struct client *c, size_t i, uint32_t timeout_ms,
                     Kv__StatusResult **out)
{
    Kv__Request req = KV__REQUEST__INIT;
    Kv__StatusRequest sr = KV__STATUS_REQUEST__INIT;
    req.op_case = KV__REQUEST__OP_STATUS;
    req.status = &sr;
    req.id = ++c->next_id;
    req.timeout_ms = timeout_ms;
    void *buf;
    size_t len;
    int rc = wire_encode_request(&req, &buf, &len);
    if (rc != KV_OK)
        return rc;
    Kv__Envelope *env = NULL;
    rc = exchange(c, i, buf, len, req.id, now_ms() + timeout_ms, &env);
    free(buf);
    if (rc != KV_OK)
        return rc;
    Kv__Response *r = env->response;
    rc = reply_code(&c->base, r);
    if (rc == KV_OK && r->result_case != KV__RESPONSE__RESULT_STATUS)
        rc = kv_fail(&c->base, KV_EPROTO, "reply to status without a result");
    if (rc == KV_OK) {
        *out = r->status;
        r->status = NULL; /* detach: the caller frees it */
        r->result_case = KV__RESPONSE__RESULT__NOT_SET;
    }
    wire_free(env);
    return rc;
}

static int cl_status(kv *db, size_t node, uint32_t timeout_ms,
                     Kv__StatusResult **out)
{
    return status_of(client_of(db), node, timeout_ms, out);
}

static int cl_raw(kv *db, size_t node, const void *buf, size_t len,
                  uint32_t timeout_ms, Kv__Envelope **out)
{
    return exchange(client_of(db), node, buf, len, 0, now_ms() + timeout_ms,
                    out);
}

static size_t cl_node_count(const kv *db)
{
    return ((const struct client *)db)->conf->nnodes;
}

static uint32_t cl_node_id(const kv *db, size_t i)
{
    return ((const struct client *)db)->conf->nodes[i].id;
}

static const char *cl_node_addr(const kv *db, size_t i)
{
    return ((const struct client *)db)->conf->nodes[i].address;
}

static void client_free(struct client *c)
{
    if (!c)
        return;
    conns_free(c, c->conf ? c->conf->nnodes : 0);
    free(c->route);
    if (c->keys) {
        sodium_memzero(c->keys, sizeof(*c->keys));
        free(c->keys);
    }
    conf_free(c->conf);
    pipeline_free(c->pipe);
    free(c);
    ctx_put();
}

static void cl_close(kv *db)
{
    client_free(client_of(db));
}

static const struct kv_ops client_ops = {
    .get = cl_get,
    .write = cl_write,
    .scan_page = cl_scan_page,
    .txn = cl_txn,
    .call = cl_call,
    .status = cl_status,
    .raw = cl_raw,
    .node_count = cl_node_count,
    .node_id = cl_node_id,
    .node_addr = cl_node_addr,
    .close = cl_close,
};

/* Sets up sockets and routes for C->conf. */
static int client_layout(struct client *c)
{
    c->route = calloc(c->conf->shards, sizeof(size_t));
    if (conns_alloc(c, c->conf->nnodes) != KV_OK || !c->route)
        return KV_ENOMEM;
    for (uint32_t s = 0; s < c->conf->shards; s++)
        c->route[s] = conf_replica(c->conf, s, 0);
    c->base.nshards = c->conf->shards;
    c->base.max_key_bytes = c->conf->max_key_bytes;
    c->base.max_value_bytes = c->conf->max_value_bytes;
    c->base.max_txn_ops = c->conf->max_txn_ops;
    c->base.max_txn_bytes = c->conf->max_txn_bytes;
    return KV_OK;
}

/* Builds a conf from a node's status: the layout of a seed-list handle. */
static int conf_from_status(const Kv__StatusResult *st, struct conf **out)
{
    struct conf *c = calloc(1, sizeof(*c));
    if (!c)
        return KV_ENOMEM;
    c->path = strdup("");
    c->cluster = strdup(st->cluster ? st->cluster : "");
    c->data_dir = strdup("");
    c->log_level = strdup("info");
    c->nodes = calloc(st->n_nodes ? st->n_nodes : 1, sizeof(*c->nodes));
    if (!c->path || !c->cluster || !c->data_dir || !c->log_level || !c->nodes)
        goto nomem;
    for (size_t i = 0; i < st->n_nodes; i++) {
        c->nodes[i].id = st->nodes[i]->id;
        c->nodes[i].address = strdup(st->nodes[i]->address);
        if (!c->nodes[i].address)
            goto nomem;
        c->nnodes++;
    }
    c->shards = st->shards;
    c->replicas = st->replicas;
    c->max_key_bytes = st->max_key_bytes;
    c->max_value_bytes = st->max_value_bytes;
    c->max_message_bytes = st->max_message_bytes;
    c->request_timeout_ms = 5000;
    c->txn_timeout_ms = 5000;
    c->max_inflight_per_client = CONF_INFLIGHT_DEFAULT;
    c->security.handshake_timeout_ms = CONF_HANDSHAKE_DEFAULT;
    /* The transaction limits; a node that does not send them (0) gets the
     * defaults, lowered to fit the message limit as conf_parse does. */
    c->max_txn_ops = st->max_txn_ops ? st->max_txn_ops : CONF_TXN_OPS_DEFAULT;
    c->max_txn_bytes =
        st->max_txn_bytes ? st->max_txn_bytes : CONF_TXN_BYTES_DEFAULT;
    if (c->max_message_bytes < c->max_txn_bytes + CONF_TXN_SLACK)
        c->max_txn_bytes = c->max_message_bytes > CONF_TXN_SLACK
                               ? c->max_message_bytes - CONF_TXN_SLACK
                               : 1;
    if (c->nnodes == 0 || c->nnodes > CONF_MAX_NODES || c->shards == 0 ||
        c->shards > CONF_MAX_SHARDS || c->replicas == 0 ||
        c->replicas > c->nnodes || c->max_key_bytes == 0 ||
        c->max_key_bytes > CONF_KEY_LIMIT ||
        c->max_value_bytes > CONF_VALUE_LIMIT ||
        c->max_message_bytes < c->max_key_bytes + c->max_value_bytes) {
        conf_free(c);
        return KV_EPROTO;
    }
    *out = c;
    return KV_OK;
nomem:
    conf_free(c);
    return KV_ENOMEM;
}

/* Asks each seed in turn for the cluster's layout. */
static int client_from_seeds(struct client *c, const char *seeds,
                             uint32_t timeout_ms, char *err, size_t errlen)
{
    /* A temporary conf whose "nodes" are the seeds. */
    struct conf *tmp = calloc(1, sizeof(*tmp));
    if (!tmp)
        return KV_ENOMEM;
    tmp->max_message_bytes = 64u << 20;
    int rc = KV_EINVAL;
    char *list = strdup(seeds);
    size_t count = 1;
    for (const char *p = seeds; *p; p++)
        count += *p == ',';
    tmp->nodes = calloc(count, sizeof(*tmp->nodes));
    if (!list || !tmp->nodes) {
        rc = KV_ENOMEM;
        goto out;
    }
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (strncmp(tok, "tcp://", 6) != 0) {
            snprintf(err, errlen, "seed \"%s\" is not tcp://host:port", tok);
            rc = KV_EINVAL;
            goto out;
        }
        tmp->nodes[tmp->nnodes].address = strdup(tok);
        if (!tmp->nodes[tmp->nnodes].address) {
            rc = KV_ENOMEM;
            goto out;
        }
        tmp->nnodes++;
    }
    if (tmp->nnodes == 0) {
        snprintf(err, errlen, "empty seed list");
        goto out;
    }
    c->conf = tmp;
    if (conns_alloc(c, tmp->nnodes) != KV_OK) {
        rc = KV_ENOMEM;
        goto out;
    }
    rc = KV_EUNAVAILABLE;
    for (size_t i = 0; i < tmp->nnodes; i++) {
        Kv__StatusResult *st = NULL;
        rc = status_of(c, i, timeout_ms, &st);
        if (rc == KV_EAUTH)
            break; /* a curve cluster: a seed list cannot reach it */
        if (rc != KV_OK)
            continue;
        struct conf *real = NULL;
        rc = conf_from_status(st, &real);
        kv__status_result__free_unpacked(st, NULL);
        if (rc == KV_OK) {
            conns_free(c, tmp->nnodes);
            c->conf = real;
            break;
        }
    }
    if (rc == KV_EAUTH)
        snprintf(err, errlen, "%s", c->base.errmsg);
    else if (rc != KV_OK)
        snprintf(err, errlen, "no seed of \"%s\" answered: %s", seeds,
                 c->base.errmsg);
out:
    if (c->conf == tmp) {
        conns_free(c, tmp->nnodes);
        c->conf = NULL;
    }
    conf_free(tmp);
    free(list);
    return rc;
}

/* curve = on: reads the handle's key pair from KEY_FILE (named by
 * KEY_FROM in messages). */
static int client_keys(struct client *c, const char *key_file,
                       const char *key_from, char *err, size_t errlen)
{
    if (!key_file) {
        snprintf(err, errlen,
                 "the cluster requires CurveZMQ: give a client key "
                 "(kv_open_opts.key_file, KV_CLIENT_KEY, kvclient --key)");
        return KV_EAUTH;
    }
    c->keys = calloc(1, sizeof(*c->keys));
    if (!c->keys)
        return KV_ENOMEM;
    char kerr[480];
    int rc = keys_load_pair(key_file, c->keys, kerr, sizeof(kerr));
    if (rc != KV_OK) {
        snprintf(err, errlen, "client key (%s): %s", key_from, kerr);
        return rc;
    }
    return KV_OK;
}

int client_open(const char *target, const kv_open_opts *opts, kv **out,
                char *err, size_t errlen)
{
    struct client *c = calloc(1, sizeof(*c));
    if (!c)
        return KV_ENOMEM;
    if (!ctx_get()) {
        free(c);
        snprintf(err, errlen, "cannot create a ZeroMQ context");
        return KV_ENOMEM;
    }
    c->base.ops = &client_ops;
    uint32_t timeout = opts && opts->timeout_ms ? opts->timeout_ms : 0;
    const char *env_key = getenv("KV_CLIENT_KEY");
    const char *key_file = opts && opts->key_file ? opts->key_file
                           : env_key && *env_key  ? env_key
                                                  : NULL;
    const char *key_from =
        opts && opts->key_file ? "kv_open_opts.key_file" : "KV_CLIENT_KEY";
    int rc;
    if (strncmp(target, "tcp://", 6) == 0 && key_file) {
        snprintf(err, errlen,
                 "a client key (%s) needs a cluster.conf target: a seed list "
                 "(tcp://...) cannot carry the nodes' public keys",
                 key_from);
        rc = KV_EINVAL;
    } else if (strncmp(target, "tcp://", 6) == 0) {
        rc =
            client_from_seeds(c, target, timeout ? timeout : 5000, err, errlen);
    } else {
        rc = conf_load(target, &c->conf, err, errlen);
        if (rc == KV_OK && c->conf->security.curve)
            rc = client_keys(c, key_file, key_from, err, errlen);
    }
    if (rc == KV_OK)
        rc = client_layout(c);
    if (rc != KV_OK) {
        client_free(c);
        return rc;
    }
    c->base.timeout_ms = timeout ? timeout : c->conf->request_timeout_ms;
    /* A random session id; request ids start at a random point so that two
     * handles' replies are never confused if a node answers late. */
    if (sodium_init() < 0) {
        client_free(c);
        snprintf(err, errlen, "libsodium failed to initialise");
        return KV_EINTERNAL;
    }
    randombytes_buf(c->client_id, sizeof(c->client_id));
    randombytes_buf(&c->next_id, sizeof(c->next_id));
    c->next_id >>= 1;
    *out = &c->base;
    return KV_OK;
}

/* --- pipelined requests (admin.h) ----------------------------------------- */

struct pipe_slot {
    struct admin_op *op; /* NULL: free */
    unsigned char client_id[CLIENT_ID_LEN];
    uint64_t seq;
    uint64_t req_id;
    uint32_t shard;
    size_t node;
    void *buf; /* the encoded request */
    size_t len;
    uint64_t deadline;
    uint64_t attempt_deadline;
    uint64_t retry_at; /* 0: sent or queued; else resend at this time */
    bool queued;       /* waits for pipe_flush */
    bool delivered;
    bool refused; /* the node refused this client (KV_EAUTH) */
    /* Nodes that answered this request KV_ECORRUPT, and how many of them
     * are members of its shard. */
    uint64_t damaged[CONF_MAX_NODES / 64];
    uint32_t ndamaged;
};

static bool slot_damaged(const struct pipe_slot *s, size_t i)
{
    return i < CONF_MAX_NODES && (s->damaged[i / 64] >> (i % 64) & 1);
}

/* Moves slot S on to the next member of its shard that has not answered
 * it KV_ECORRUPT (or simply the next one when all have). */
static void pipe_next(const struct client *c, struct pipe_slot *s)
{
    size_t i = s->node;
    for (uint32_t r = 0; r < c->conf->replicas; r++) {
        i = next_member(c, s->shard, i);
        if (!slot_damaged(s, i)) {
            s->node = i;
            return;
        }
    }
    s->node = next_member(c, s->shard, s->node);
}

struct pipeline {
    struct pipe_slot *slots;
    unsigned n;
    unsigned busy;
    ProtobufCBinaryData *frames; /* pipe_flush's scratch: n of each */
    unsigned *group;
};

static void pipeline_free(struct pipeline *p)
{
    if (!p)
        return;
    for (unsigned i = 0; i < p->n; i++)
        free(p->slots[i].buf);
    free(p->slots);
    free(p->frames);
    free(p->group);
    free(p);
}

int admin_pipeline(kv *db, unsigned slots)
{
    if (db->embedded || slots == 0)
        return KV_EINVAL;
    struct client *c = client_of(db);
    struct pipeline *p = calloc(1, sizeof(*p));
    if (!p)
        return KV_ENOMEM;
    p->n = slots;
    p->slots = calloc(slots, sizeof(*p->slots));
    p->frames = calloc(slots, sizeof(*p->frames));
    p->group = calloc(slots, sizeof(*p->group));
    if (!p->slots || !p->frames || !p->group) {
        pipeline_free(p);
        return KV_ENOMEM;
    }
    for (unsigned i = 0; i < slots; i++)
        randombytes_buf(p->slots[i].client_id, CLIENT_ID_LEN);
    pipeline_free(c->pipe);
    c->pipe = p;
    return KV_OK;
}

/* Queues slot S's request for its node: pipe_flush sends it. */
static void pipe_send(struct pipe_slot *s, uint64_t now, uint64_t attempt_ms)
{
    s->retry_at = 0;
    s->attempt_deadline = now + attempt_ms;
    s->queued = true;
}

/* Sends the requests of the K slots in P->group to node I in one frame
 * without blocking: a Batch when there are several (kv.proto). */
static void pipe_send_group(struct client *c, size_t i, size_t k, uint64_t now)
{
    struct pipeline *p = c->pipe;
    void *sock = node_socket(c, i);
    int rc = -1;
    if (sock && k == 1) {
        struct pipe_slot *s = &p->slots[p->group[0]];
        rc = zmq_send(sock, s->buf, s->len, ZMQ_DONTWAIT);
    } else if (sock) {
        for (size_t j = 0; j < k; j++) {
            struct pipe_slot *s = &p->slots[p->group[j]];
            p->frames[j] = (ProtobufCBinaryData){.len = s->len, .data = s->buf};
        }
        void *buf;
        size_t len;
        if (wire_encode_batch(p->frames, k, &buf, &len) == KV_OK) {
            rc = zmq_send(sock, buf, len, ZMQ_DONTWAIT);
            free(buf);
        }
    }
    bool refused = rc < 0 && sock && auth_check(c, i) == KV_EAUTH;
    for (size_t j = 0; j < k; j++) {
        struct pipe_slot *s = &p->slots[p->group[j]];
        s->queued = false;
        if (rc >= 0) {
            s->delivered = true;
        } else if (refused) {
            s->refused = true; /* admin_poll ends it */
            s->retry_at = now;
        } else {
            /* Not connected (down, or not yet): try the next member
             * shortly; if this one was the leader, a follower's hint
             * brings it back. */
            pipe_next(c, s);
            s->retry_at = now + 5;
        }
    }
}

/* Sends every queued request, one frame per node (split so that no frame
 * passes max_message_bytes, the most a node reads). */
static void pipe_flush(struct client *c)
{
    struct pipeline *p = c->pipe;
    size_t budget = c->conf->max_message_bytes;
    uint64_t now = now_ms();
    for (size_t i = 0; i < c->conf->nnodes; i++) {
        size_t k = 0, bytes = 0;
        for (unsigned j = 0; j < p->n; j++) {
            struct pipe_slot *s = &p->slots[j];
            if (!s->op || !s->queued || s->node != i)
                continue;
            if (k && bytes + s->len + 16 > budget) {
                pipe_send_group(c, i, k, now);
                k = bytes = 0;
            }
            p->group[k++] = j;
            bytes += s->len + 16;
        }
        if (k)
            pipe_send_group(c, i, k, now);
    }
}

static uint64_t pipe_attempt_ms(uint32_t timeout_ms)
{
    uint64_t a = timeout_ms / 10;
    return a < 200 ? 200 : a > 1000 ? 1000 : a;
}

int admin_submit(kv *db, unsigned slot, struct admin_op *op)
{
    struct client *c = client_of(db);
    struct pipeline *p = c->pipe;
    if (!p || slot >= p->n || p->slots[slot].op || !op->key || !op->klen ||
        op->klen > db->max_key_bytes ||
        (op->kind == ADMIN_PUT && op->vlen > db->max_value_bytes))
        return KV_EINVAL;
    struct pipe_slot *s = &p->slots[slot];
    Kv__Request req = KV__REQUEST__INIT;
    Kv__GetRequest g = KV__GET_REQUEST__INIT;
    Kv__PutRequest w = KV__PUT_REQUEST__INIT;
    uint32_t timeout = op->timeout_ms ? op->timeout_ms : db->timeout_ms;
    req.id = ++c->next_id;
    req.timeout_ms = timeout;
    if (op->kind == ADMIN_GET) {
        g.key.data = (uint8_t *)op->key;
        g.key.len = op->klen;
        req.op_case = KV__REQUEST__OP_GET;
        req.get = &g;
    } else {
        w.key.data = (uint8_t *)op->key;
        w.key.len = op->klen;
        w.value.data = (uint8_t *)op->val;
        w.value.len = op->vlen;
        req.op_case = KV__REQUEST__OP_PUT;
        req.put = &w;
        req.client_id.data = s->client_id;
        req.client_id.len = CLIENT_ID_LEN;
        req.seq = ++s->seq;
    }
    free(s->buf);
    s->buf = NULL;
    int rc = wire_encode_request(&req, &s->buf, &s->len);
    if (rc != KV_OK)
        return rc;
    uint64_t now = now_ms();
    s->op = op;
    s->req_id = req.id;
    s->shard = shard_of(op->key, op->klen, db->nshards);
    s->node = c->route[s->shard];
    s->deadline = now + timeout;
    s->delivered = false;
    s->refused = false;
    s->queued = false;
    memset(s->damaged, 0, sizeof(s->damaged));
    s->ndamaged = 0;
    op->rc = KV_OK;
    op->version = 0;
    p->busy++;
    pipe_send(s, now, pipe_attempt_ms(timeout));
    return KV_OK;
}

static void pipe_finish(struct pipeline *p, struct pipe_slot *s, int rc,
                        unsigned *done, size_t *n)
{
    s->op->rc = rc;
    s->op = NULL;
    p->busy--;
    done[(*n)++] = (unsigned)(s - p->slots);
}

/* Handles one reply frame. */
static void pipe_reply(struct client *c, const Kv__Response *r, unsigned *done,
                       size_t *n, size_t max)
{
    struct pipeline *p = c->pipe;
    struct pipe_slot *s = NULL;
    for (unsigned i = 0; i < p->n; i++)
        if (p->slots[i].op && p->slots[i].req_id == r->id) {
            s = &p->slots[i];
            break;
        }
    if (!s || *n >= max)
        return; /* late, or no room: the attempt timeout resends it */
    uint64_t now = now_ms();
    if (r->code == ENGINE_ELOCKED) { /* locked by a transaction: later */
        s->retry_at = now + 10;
        return;
    }
    if (r->code == KV_ENOTLEADER || r->code == KV_EUNAVAILABLE) {
        size_t j = r->code == KV_ENOTLEADER ? node_index(c->conf, r->leader_id)
                                            : c->conf->nnodes;
        if (j < c->conf->nnodes && j != s->node && !slot_damaged(s, j)) {
            s->node = j;
            pipe_send(s, now, pipe_attempt_ms(s->op->timeout_ms));
        } else {
            pipe_next(c, s);
            s->retry_at = now + 20;
        }
        return;
    }
    if (r->code == KV_ECORRUPT && s->node < CONF_MAX_NODES) {
        if (!slot_damaged(s, s->node)) {
            s->damaged[s->node / 64] |= 1ull << (s->node % 64);
            s->ndamaged += is_member(c, s->shard, s->node);
        }
        if (s->ndamaged < c->conf->replicas) {
            /* Damaged data there: another member has its own copy. */
            pipe_next(c, s);
            pipe_send(s, now, pipe_attempt_ms(s->op->timeout_ms));
            return;
        }
    }
    c->route[s->shard] = s->node;
    c->no_detail[s->node] = 0;
    if (r->code == KV_OK && r->result_case == KV__RESPONSE__RESULT_WRITE)
        s->op->version = r->write->version;
    else if (r->code == KV_OK && r->result_case == KV__RESPONSE__RESULT_GET)
        s->op->version = r->get->version;
    pipe_finish(p, s, r->code < KV_ERANGE ? KV_EPROTO : r->code, done, n);
}

/* Handles each answer of a Batch frame. */
static void pipe_batch(struct client *c, const Kv__Batch *b, unsigned *done,
                       size_t *n, size_t max)
{
    for (size_t i = 0; i < b->n_frames; i++) {
        char err[128];
        Kv__Envelope *env = NULL;
        if (wire_decode(b->frames[i].data, b->frames[i].len,
                        c->conf->max_message_bytes + 4096, &env, err,
                        sizeof(err)) != KV_OK)
            continue;
        if (env->body_case == KV__ENVELOPE__BODY_RESPONSE)
            pipe_reply(c, env->response, done, n, max);
        wire_free(env);
    }
}

int admin_poll(kv *db, int timeout_ms, unsigned *done, size_t max)
{
    struct client *c = client_of(db);
    struct pipeline *p = c->pipe;
    if (!p)
        return KV_EINVAL;
    size_t n = 0;
    size_t nn = c->conf->nnodes;
    zmq_pollitem_t items[CONF_MAX_NODES];
    uint64_t until = now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        uint64_t now = now_ms();
        /* Timeouts and scheduled resends. */
        for (unsigned i = 0; i < p->n && n < max; i++) {
            struct pipe_slot *s = &p->slots[i];
            if (!s->op)
                continue;
            if (s->refused) {
                pipe_finish(p, s, KV_EAUTH, done, &n);
                continue;
            }
            if (now >= s->deadline) {
                pipe_finish(p, s, s->delivered ? KV_ETIMEDOUT : KV_EUNAVAILABLE,
                            done, &n);
                continue;
            }
            if (s->retry_at && now >= s->retry_at) {
                pipe_send(s, now, pipe_attempt_ms(s->op->timeout_ms));
            } else if (!s->retry_at && now >= s->attempt_deadline) {
                /* The socket is shared by every slot: keep it (late
                 * replies are matched by request id and dropped). */
                pipe_next(c, s);
                pipe_send(s, now, pipe_attempt_ms(s->op->timeout_ms));
            }
        }
        pipe_flush(c);
        if (n || !p->busy)
            return (int)n;
        size_t k = 0;
        for (size_t i = 0; i < nn; i++)
            if (c->socks[i])
                items[k++] = (zmq_pollitem_t){.socket = c->socks[i],
                                              .events = ZMQ_POLLIN};
        now = now_ms();
        long wait = until > now ? (long)(until - now) : 0;
        if (wait > 5)
            wait = 5; /* resends and timeouts are checked every 5 ms */
        int rc = k ? zmq_poll(items, (int)k, wait) : 0;
        if (!k)
            sleep_ms((uint64_t)wait);
        if (rc < 0 && zmq_errno() != EINTR)
            return KV_EIO;
        for (size_t i = 0; rc > 0 && i < k; i++) {
            if (!(items[i].revents & ZMQ_POLLIN))
                continue;
            for (int m = 0; m < 256 && n < max; m++) {
                zmq_msg_t msg;
                zmq_msg_init(&msg);
                if (zmq_msg_recv(&msg, items[i].socket, ZMQ_DONTWAIT) < 0) {
                    zmq_msg_close(&msg);
                    break;
                }
                char err[128];
                Kv__Envelope *env = NULL;
                int drc = wire_decode(zmq_msg_data(&msg), zmq_msg_size(&msg),
                                      c->conf->max_message_bytes + 4096, &env,
                                      err, sizeof(err));
                zmq_msg_close(&msg);
                if (drc != KV_OK)
                    continue;
                if (env->body_case == KV__ENVELOPE__BODY_RESPONSE)
                    pipe_reply(c, env->response, done, &n, max);
                else if (env->body_case == KV__ENVELOPE__BODY_BATCH)
                    pipe_batch(c, env->batch, done, &n, max);
                wire_free(env);
            }
        }
        pipe_flush(c); /* redirects and retries of the answers just read */
        if (n || now_ms() >= until)
            return (int)n;
    }
}
