/*
 * zap - the ZAP handler of a node (see zap.h).
 *
 * Every admitted key sits in one sorted array of 32-byte keys, so a
 * handshake costs one binary search. The handler trusts nothing in a
 * request beyond its frame boundaries: a request of the wrong shape or
 * version is refused, never a crash; what libzmq sends is well formed,
 * but the socket is an endpoint like any other.
 *
 * Refusals are logged once per key a minute at most (a client retrying
 * with a bad key reconnects ten times a second), in a small table that
 * forgets the oldest key when full.
 */
#include "zap.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "conf.h"
#include "kv.h"
#include "log.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_MAX_FRAMES 8      /* a CURVE request has 7 */
#define ZAP_PER_CALL 256      /* requests answered per zap_serve */
#define REFUSED_LOG_SLOTS 256 /* refused keys whose last log we remember */
#define REFUSED_LOG_MS 60000  /* log a refused key at most this often */
#define ADDR_MAX 64           /* bytes of a peer address in the log */

struct zap_key {
    unsigned char key[KEYS_BIN_LEN];
    uint32_t node; /* 0: a client */
};

struct refused {
    unsigned char key[KEYS_BIN_LEN];
    uint64_t logged_ms; /* 0: free slot */
};

struct zap {
    void *sock;
    struct zap_key *keys; /* sorted by key */
    size_t nkeys;
    struct refused refused[REFUSED_LOG_SLOTS];
    struct zap_stats stats;
};

static int key_cmp(const void *a, const void *b)
{
    return memcmp(((const struct zap_key *)a)->key,
                  ((const struct zap_key *)b)->key, KEYS_BIN_LEN);
}

/* Adds the Z85 key S for NODE (0: client) to Z's table (room reserved). */
static int add_key(struct zap *z, const char *s, uint32_t node)
{
    struct zap_key *k = &z->keys[z->nkeys];
    if (keys_z85_decode(s, k->key) != 0)
        return KV_EINVAL; /* defensive: the parser checked every key */
    k->node = node;
    z->nkeys++;
    return KV_OK;
}

int zap_open(void *ctx, const struct conf *conf,
             const char (*extra)[KEYS_Z85_LEN + 1], size_t nextra,
             struct zap **out, char *err, size_t errlen)
{
    struct zap *z = calloc(1, sizeof(*z));
    if (!z)
        return KV_ENOMEM;
    int rc = KV_OK;
    size_t total = conf->nnodes + conf->security.nclient_keys + nextra;
    z->keys = calloc(total ? total : 1, sizeof(*z->keys));
    if (!z->keys) {
        rc = KV_ENOMEM;
        goto fail;
    }
    for (size_t i = 0; rc == KV_OK && i < conf->nnodes; i++)
        if (conf->nodes[i].public_key)
            rc = add_key(z, conf->nodes[i].public_key, conf->nodes[i].id);
    for (size_t i = 0; rc == KV_OK && i < conf->security.nclient_keys; i++)
        rc = add_key(z, conf->security.client_keys[i], 0);
    for (size_t i = 0; rc == KV_OK && i < nextra; i++)
        rc = add_key(z, extra[i], 0);
    if (rc != KV_OK) {
        snprintf(err, errlen, "a key of the ZAP handler is not Z85");
        goto fail;
    }
    qsort(z->keys, z->nkeys, sizeof(*z->keys), key_cmp);
    /* A key listed for a client and for a node (client_keys_file may
     * repeat one): the node wins, the duplicate is dropped. */
    size_t keep = 0;
    for (size_t i = 0; i < z->nkeys; i++) {
        if (keep > 0 && key_cmp(&z->keys[keep - 1], &z->keys[i]) == 0) {
            if (z->keys[i].node != 0)
                z->keys[keep - 1] = z->keys[i];
            continue;
        }
        z->keys[keep++] = z->keys[i];
    }
    z->nkeys = keep;
    z->sock = zmq_socket(ctx, ZMQ_REP);
    if (!z->sock) {
        snprintf(err, errlen, "cannot create the ZAP socket: %s",
                 zmq_strerror(zmq_errno()));
        rc = KV_EIO;
        goto fail;
    }
    int zero = 0;
    zmq_setsockopt(z->sock, ZMQ_LINGER, &zero, sizeof(zero));
    if (zmq_bind(z->sock, ZAP_ENDPOINT) != 0) {
        snprintf(err, errlen, "cannot bind the ZAP handler %s: %s",
                 ZAP_ENDPOINT, zmq_strerror(zmq_errno()));
        rc = KV_EIO;
        goto fail;
    }
    *out = z;
    return KV_OK;
fail:
    zap_close(z);
    return rc;
}

void *zap_socket(const struct zap *z)
{
    return z->sock;
}

void zap_get_stats(const struct zap *z, struct zap_stats *st)
{
    *st = z->stats;
}

void zap_close(struct zap *z)
{
    if (!z)
        return;
    if (z->sock)
        zmq_close(z->sock);
    free(z->keys);
    free(z);
}

int zap_user_node(const char *user_id, uint32_t *node)
{
    if (!user_id || strncmp(user_id, "node:", 5) != 0)
        return -1;
    const char *s = user_id + 5;
    uint32_t v = 0;
    if (*s == '\0')
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > 65535)
            return -1;
        v = v * 10 + (uint32_t)(*s - '0');
    }
    if (v == 0 || v > 65535)
        return -1;
    *node = v;
    return 0;
}

/* Whether the frame M holds exactly the text S. */
static bool frame_is(zmq_msg_t *m, const char *s)
{
    size_t n = strlen(s);
    return zmq_msg_size(m) == n && memcmp(zmq_msg_data(m), s, n) == 0;
}

/* Logs the refusal of KEY (32 bytes, or NULL for a request that carries
 * none) from ADDR, unless that key was logged less than a minute ago. */
static void log_refusal(struct zap *z, const unsigned char *key,
                        const char *addr, const char *why, uint64_t now_ms)
{
    static const unsigned char none[KEYS_BIN_LEN];
    const unsigned char *k = key ? key : none;
    struct refused *slot = NULL, *oldest = &z->refused[0];
    for (size_t i = 0; i < REFUSED_LOG_SLOTS; i++) {
        struct refused *r = &z->refused[i];
        if (r->logged_ms != 0 && memcmp(r->key, k, KEYS_BIN_LEN) == 0) {
            slot = r;
            break;
        }
        if (r->logged_ms < oldest->logged_ms)
            oldest = r;
    }
    if (slot && now_ms - slot->logged_ms < REFUSED_LOG_MS)
        return;
    if (!slot) {
        slot = oldest;
        memcpy(slot->key, k, KEYS_BIN_LEN);
    }
    slot->logged_ms = now_ms ? now_ms : 1;
    char z85[KEYS_Z85_LEN + 1] = "-";
    if (key)
        zmq_z85_encode(z85, key, KEYS_BIN_LEN);
    log_msg(LOG_WARN, "refused a connection",
            "key=%s address=%s reason=\"%s\" "
            "refused=%llu",
            z85, addr, why, (unsigned long long)z->stats.refused);
}

/* Sends the reply to request id RID: STATUS ("200"/"400"), TEXT, USER. */
static void reply(struct zap *z, zmq_msg_t *rid, const char *status,
                  const char *text, const char *user)
{
    zmq_send(z->sock, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(z->sock, zmq_msg_data(rid), zmq_msg_size(rid), ZMQ_SNDMORE);
    zmq_send(z->sock, status, strlen(status), ZMQ_SNDMORE);
    zmq_send(z->sock, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(z->sock, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(z->sock, "", 0, 0); /* no metadata */
}

/* Reads and answers one request. Returns false when none was waiting. */
static bool serve_one(struct zap *z, uint64_t now_ms)
{
    zmq_msg_t f[ZAP_MAX_FRAMES];
    size_t nf = 0;
    bool more = true;
    zmq_msg_init(&f[0]);
    if (zmq_msg_recv(&f[0], z->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&f[0]);
        return false;
    }
    nf = 1;
    more = zmq_msg_more(&f[0]);
    while (more) { /* the rest of a message is there at once */
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, z->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            break;
        }
        more = zmq_msg_more(&m);
        if (nf < ZAP_MAX_FRAMES)
            f[nf++] = m; /* moved: closed below */
        else
            zmq_msg_close(&m);
    }
    /* version, request id, domain, address, identity, mechanism, creds */
    char addr[ADDR_MAX + 1] = "?";
    if (nf >= 4) {
        size_t n = zmq_msg_size(&f[3]);
        n = n > ADDR_MAX ? ADDR_MAX : n;
        memcpy(addr, zmq_msg_data(&f[3]), n);
        addr[n] = '\0';
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)addr[i] < 0x20 || (unsigned char)addr[i] > 0x7e)
                addr[i] = '?';
    }
    zmq_msg_t empty;
    zmq_msg_init(&empty);
    zmq_msg_t *rid = nf >= 2 ? &f[1] : &empty;
    if (nf < 7 || !frame_is(&f[0], "1.0") || !frame_is(&f[5], "CURVE") ||
        zmq_msg_size(&f[6]) != KEYS_BIN_LEN) {
        z->stats.refused++;
        log_refusal(z, NULL, addr, "not a CURVE handshake", now_ms);
        reply(z, rid, "400", "CURVE required", "");
        goto out;
    }
    struct zap_key want;
    memcpy(want.key, zmq_msg_data(&f[6]), KEYS_BIN_LEN);
    const struct zap_key *k =
        bsearch(&want, z->keys, z->nkeys, sizeof(*z->keys), key_cmp);
    if (!k) {
        z->stats.refused++;
        log_refusal(z, want.key, addr, "unknown key", now_ms);
        reply(z, rid, "400", "unknown key", "");
        goto out;
    }
    char user[16] = "client";
    if (k->node)
        snprintf(user, sizeof(user), "node:%u", k->node);
    z->stats.admitted++;
    if (log_enabled(LOG_DEBUG)) {
        char z85[KEYS_Z85_LEN + 1];
        zmq_z85_encode(z85, want.key, KEYS_BIN_LEN);
        log_msg(LOG_DEBUG, "admitted a connection", "key=%s user=%s address=%s",
                z85, user, addr);
    }
    reply(z, rid, "200", "OK", user);
out:
    zmq_msg_close(&empty);
    for (size_t i = 0; i < nf; i++)
        zmq_msg_close(&f[i]);
    return true;
}

void zap_serve(struct zap *z, uint64_t now_ms)
{
    for (int i = 0; i < ZAP_PER_CALL && serve_one(z, now_ms); i++)
        ;
}
