/*
 * zap - the ZAP handler of a node (ZeroMQ RFC 27): which keys may connect.
 *
 * With [security] curve = on, libzmq asks this handler about every CURVE
 * handshake on the node's ROUTER, over the inproc endpoint
 * "inproc://zeromq.zap.01" of the node's ZeroMQ context. It admits exactly
 * the public keys of the cluster's nodes (user id "node:ID") and of the
 * clients listed in cluster.conf (user id "client"), and refuses every
 * other key, logging each refused key at most once a minute. The user id
 * comes back on every message of the connection (zmq_msg_gets "User-Id"),
 * which is how the node checks that a peer batch comes from the node it
 * names.
 *
 * The handler is a REP socket the node's loop polls (zap_socket) and
 * serves (zap_serve): the loop owns all state, no other thread runs. It
 * must be bound before the ROUTER is: a context with no ZAP handler lets
 * every CURVE client in.
 */
#ifndef KV_ZAP_H
#define KV_ZAP_H

#include <stddef.h>
#include <stdint.h>

#include "keys.h"

struct conf;
struct zap;

/* Counters of a handler. */
struct zap_stats {
    uint64_t admitted; /* handshakes admitted */
    uint64_t refused;  /* handshakes refused (unknown key, other mechanism) */
};

/* Binds the ZAP handler in the ZeroMQ context CTX. It admits the public
 * keys of CONF's nodes, CONF's client_keys and the NEXTRA keys of EXTRA
 * (those of client_keys_file; copied). On KV_OK *out is a handler to
 * zap_close() before the context is terminated. On error ERR says why. */
int zap_open(void *ctx, const struct conf *conf,
             const char (*extra)[KEYS_Z85_LEN + 1], size_t nextra,
             struct zap **out, char *err, size_t errlen);

/* The socket to poll for ZMQ_POLLIN. */
void *zap_socket(const struct zap *z);

/* Answers the requests waiting (at most a bounded number per call). NOW_MS
 * (a monotonic clock) paces the log of refused keys. */
void zap_serve(struct zap *z, uint64_t now_ms);

/* Parses a user id set by this handler: returns 0 and *node for a node's
 * ("node:ID"), -1 for anything else (a client's, NULL). */
int zap_user_node(const char *user_id, uint32_t *node);

/* The handler's counters. */
void zap_get_stats(const struct zap *z, struct zap_stats *st);

/* Closes the socket and frees the handler. NULL is a no-op. */
void zap_close(struct zap *z);

#endif
