/*
 * conf - the cluster.conf parser.
 *
 * A cluster.conf is an INI-style file: global "key = value" lines, then an
 * optional "[security]" section and one "[node ID]" section per node with
 * its address (and, for CurveZMQ, its public key and secret key file), in
 * any order after the global keys. Comments start with '#' (on the lines of
 * Z85 keys only at the start or after a blank: '#' is a Z85 character).
 * Every error names the file, the line and the problem; unknown keys,
 * duplicate keys or nodes, and out-of-range values are errors. This module
 * only parses and validates: it opens no sockets and creates no files.
 */
#ifndef KV_CONF_H
#define KV_CONF_H

#include <stddef.h>
#include <stdint.h>

#define CONF_MAX_NODES 256
#define CONF_MAX_SHARDS 4096
#define CONF_KEY_LIMIT 4096                  /* hard cap on max_key_bytes */
#define CONF_VALUE_LIMIT (64u * 1024 * 1024) /* hard cap on max_value_bytes */
#define CONF_TXN_OPS_DEFAULT 1000
#define CONF_TXN_OPS_LIMIT 100000             /* hard cap on max_txn_ops */
#define CONF_TXN_BYTES_DEFAULT (1024u * 1024) /* default max_txn_bytes */
/* max_txn_bytes is at most max_message_bytes minus this much: room for the
 * envelope and the framing of a transaction's ops. proc_max_write_bytes and
 * proc_max_reply_bytes follow the same rule. */
#define CONF_TXN_SLACK 4096u
#define CONF_MAX_PROCEDURES 64 /* plugins in `procedures` */
#define CONF_PROC_KEYS_DEFAULT 100000
#define CONF_PROC_KEYS_LIMIT 10000000          /* cap on proc_max_keys */
#define CONF_PROC_BYTES_DEFAULT (1024u * 1024) /* write and reply budgets */
#define CONF_INFLIGHT_DEFAULT 1024             /* max_inflight_per_client */
#define CONF_INFLIGHT_LIMIT 1000000            /* its cap */
#define CONF_SESSION_TTL_DEFAULT 3600          /* session_ttl_s: one hour */
#define CONF_SESSION_TTL_LIMIT (30u * 86400)   /* its cap: 30 days */
#define CONF_COMPACT_DEFAULT 10000             /* compact_log_entries */
#define CONF_COMPACT_MIN 100                   /* its floor... */
#define CONF_COMPACT_LIMIT 10000000            /* ...and cap */
#define CONF_HANDSHAKE_DEFAULT 5000 /* [security] handshake_timeout_ms */
#define CONF_HANDSHAKE_MIN 100
#define CONF_MAX_CLIENT_KEYS 100000 /* keys in [security] client_keys */

struct conf_node {
    uint32_t id;   /* 1..65535, unique */
    char *address; /* "tcp://host:port" */
    /* CurveZMQ (both required when [security] curve = on, else optional):
     * the node's public key (Z85, 40 characters, unique among the nodes)
     * and the file holding its key pair, made absolute by conf_load() like
     * data_dir. NULL when not set. */
    char *public_key;
    char *secret_key_file;
};

/* The [security] section (docs/security.md). */
struct conf_security {
    int curve;    /* curve = on: every socket uses CurveZMQ */
    int insecure; /* insecure = yes: a node may listen on a non-loopback
                     address with curve off */
    /* Public keys (Z85) of the clients a node admits, from client_keys, in
     * file order; none of them is a node's key. */
    char **client_keys;
    size_t nclient_keys;
    /* client_keys_file: more client keys, one a line (read by kvnode, not
     * here); absolute after conf_load(). NULL when not set. */
    char *client_keys_file;
    uint32_t handshake_timeout_ms; /* ZMQ_HANDSHAKE_IVL of every socket */
};

struct conf {
    char *path;    /* the file it was read from ("" when parsed from text) */
    char *cluster; /* cluster name, stored in every node's metadata */
    uint32_t shards;
    uint32_t replicas; /* default 3, lowered to nnodes; an explicit value
                          greater than nnodes is an error */
    char *data_dir;    /* absolute, or relative to the config file's folder */
    struct conf_node *nodes; /* sorted by id */
    size_t nnodes;
    uint64_t max_key_bytes;
    uint64_t max_value_bytes;
    uint64_t max_message_bytes;
    uint32_t request_timeout_ms; /* client default per-call timeout */
    uint32_t txn_timeout_ms;
    char *log_level;
    /* One transaction: at most max_txn_ops conditions and writes, and at
     * most max_txn_bytes bytes of keys and values (summed over its ops).
     * The default max_txn_bytes is lowered to max_message_bytes -
     * CONF_TXN_SLACK when that is smaller (to 1 at least); a value set in
     * the file above it is an error. */
    uint32_t max_txn_ops;
    uint64_t max_txn_bytes; /* "debug", "info", "warn" or "error" */
    /* Plugin paths of `procedures`, in file order (at most
     * CONF_MAX_PROCEDURES, none by default); conf_load() makes relative
     * ones absolute against the config file's folder, like data_dir. */
    char **procedures;
    size_t nprocedures;
    /* Budgets of one procedure call (libkv/proc.h struct proc_limits):
     * keys touched, bytes of keys and values written, reply bytes. The two
     * byte budgets follow max_txn_bytes's rule against max_message_bytes. */
    uint64_t proc_max_keys;
    uint64_t proc_max_write_bytes;
    uint64_t proc_max_reply_bytes;
    /* Requests a node holds unanswered for one client connection; more
     * are answered KV_EUNAVAILABLE at once. */
    uint32_t max_inflight_per_client;
    /* How long a shard keeps a client's session after its last write
     * (longer for a write whose timeout is longer: twice that). */
    uint32_t session_ttl_s;
    /* A replica compacts a shard's Raft log once it applied this many
     * entries plus a fifth past its last compaction point, keeping that
     * fifth for slow followers. */
    uint32_t compact_log_entries;
    struct conf_security security;
};

/* Parses TEXT (LEN bytes) read from a file named NAME (used in errors).
 * On KV_OK *out is a new conf freed with conf_free(). On error returns
 * KV_EINVAL and writes "NAME:LINE: problem" into ERR (ERRLEN bytes). */
int conf_parse(const char *text, size_t len, const char *name,
               struct conf **out, char *err, size_t errlen);

/* Reads and parses the file PATH. A relative data_dir, relative
 * procedures paths and relative key file paths (secret_key_file,
 * client_keys_file) are resolved against the folder of PATH. Errors as
 * conf_parse(), plus KV_EIO if PATH cannot be read.
 */
int conf_load(const char *path, struct conf **out, char *err, size_t errlen);

/* Frees a conf. NULL is a no-op. */
void conf_free(struct conf *c);

/* The node with id ID, or NULL. */
const struct conf_node *conf_node_by_id(const struct conf *c, uint32_t id);

/* Whether ADDRESS ("tcp://HOST:PORT", as validated by the parser) names a
 * loopback host: localhost, an IPv4 address in 127.0.0.0/8, or ::1. Names
 * are not resolved, so any other name is not loopback. */
int conf_address_is_loopback(const char *address);

/* The index in c->nodes of replica R (0 = the first, which serves the shard
 * until replication lands) of SHARD: placement is (shard + r) mod nnodes over
 * the nodes sorted by id, a pure function every node and client agrees on. */
size_t conf_replica(const struct conf *c, uint32_t shard, uint32_t r);

#endif
