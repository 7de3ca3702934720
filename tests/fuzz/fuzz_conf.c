/*
 * fuzz_conf - the cluster.conf parser on any text.
 *
 * The input is the text of a configuration file, given to conf_parse()
 * whole (NUL bytes, missing newlines and all). An error must come back as
 * KV_EINVAL with a "fuzz.conf:LINE: problem" message (or KV_ENOMEM); a
 * configuration it accepts must keep every promise of conf.h, which this
 * target checks: a cluster name, 1..4096 shards, 1 to 256 nodes with
 * unique ids in 1..65535 sorted by id and each an address, replicas
 * between 1 and the number of nodes, every limit in its range and
 * max_message_bytes big enough for a key, a value and the envelope,
 * max_txn_bytes and the procedure byte budgets within max_message_bytes -
 * CONF_TXN_SLACK (or 1), a log level of the four, at most 64 procedures,
 * max_inflight_per_client and handshake_timeout_ms in range; every public
 * key (a node's, or a client's in [security] client_keys) a valid Z85 key
 * listed once, no client key a node's, and with curve = on a public key
 * and a secret key file for every node. conf_node_by_id and conf_replica
 * must agree with the node list; conf_address_is_loopback must take every
 * address.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "fuzz.h"
#include "keys.h"
#include "kv.h"
#include "log.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    return 0;
}

static void check_room(const struct conf *c, uint64_t v, const char *name)
{
    uint64_t room = c->max_message_bytes > CONF_TXN_SLACK
                        ? c->max_message_bytes - CONF_TXN_SLACK
                        : 1;
    if (v < 1 || v > room)
        fuzz_fail("conf: %s = %llu with max_message_bytes = %llu", name,
                  (unsigned long long)v,
                  (unsigned long long)c->max_message_bytes);
}

static bool is_key(const char *k)
{
    return k && strlen(k) == KEYS_Z85_LEN && keys_z85_valid(k, KEYS_Z85_LEN);
}

static bool is_path(const char *p)
{
    if (!p)
        return true; /* not set */
    if (!p[0])
        return false;
    for (const char *q = p; *q; q++)
        if ((unsigned char)*q < 0x20 || *q == 0x7f)
            return false;
    return true;
}

static void check_security(const struct conf *c)
{
    const struct conf_security *sec = &c->security;
    if (c->max_inflight_per_client < 1 ||
        c->max_inflight_per_client > CONF_INFLIGHT_LIMIT ||
        sec->handshake_timeout_ms < CONF_HANDSHAKE_MIN ||
        sec->handshake_timeout_ms > 3600000 ||
        (sec->curve != 0 && sec->curve != 1) ||
        (sec->insecure != 0 && sec->insecure != 1) ||
        sec->nclient_keys > CONF_MAX_CLIENT_KEYS ||
        (sec->nclient_keys && !sec->client_keys) ||
        !is_path(sec->client_keys_file))
        fuzz_fail("conf: [security] or max_inflight_per_client out of range");
    for (size_t i = 0; i < c->nnodes; i++) {
        const struct conf_node *n = &c->nodes[i];
        conf_address_is_loopback(n->address);
        if ((n->public_key && !is_key(n->public_key)) ||
            !is_path(n->secret_key_file))
            fuzz_fail("conf: node %u: a bad public key or key file", n->id);
        if (sec->curve && (!n->public_key || !n->secret_key_file))
            fuzz_fail("conf: curve on, node %u without its keys", n->id);
        for (size_t j = 0; j < i && n->public_key; j++)
            if (c->nodes[j].public_key &&
                strcmp(c->nodes[j].public_key, n->public_key) == 0)
                fuzz_fail("conf: nodes %u and %u share a public key",
                          c->nodes[j].id, n->id);
    }
    for (size_t k = 0; k < sec->nclient_keys; k++) {
        if (!is_key(sec->client_keys[k]))
            fuzz_fail("conf: client key %zu is no Z85 key", k);
        for (size_t j = 0; j < k; j++)
            if (strcmp(sec->client_keys[j], sec->client_keys[k]) == 0)
                fuzz_fail("conf: client key %zu listed twice", k);
        for (size_t i = 0; i < c->nnodes; i++)
            if (c->nodes[i].public_key &&
                strcmp(c->nodes[i].public_key, sec->client_keys[k]) == 0)
                fuzz_fail("conf: client key %zu is node %u's", k,
                          c->nodes[i].id);
    }
}

static void check(const struct conf *c)
{
    if (!c->cluster || !c->cluster[0] || strlen(c->cluster) > 64)
        fuzz_fail("conf: bad cluster name");
    if (c->shards < 1 || c->shards > CONF_MAX_SHARDS)
        fuzz_fail("conf: %u shards", c->shards);
    if (c->nnodes < 1 || c->nnodes > CONF_MAX_NODES || !c->nodes)
        fuzz_fail("conf: %zu nodes", c->nnodes);
    if (c->replicas < 1 || c->replicas > c->nnodes)
        fuzz_fail("conf: %u replicas of %zu nodes", c->replicas, c->nnodes);
    for (size_t i = 0; i < c->nnodes; i++) {
        const struct conf_node *n = &c->nodes[i];
        if (n->id < 1 || n->id > 65535 || !n->address ||
            strncmp(n->address, "tcp://", 6) != 0)
            fuzz_fail("conf: node %zu: id %u address %s", i, n->id,
                      n->address ? n->address : "(none)");
        if (i > 0 && c->nodes[i - 1].id >= n->id)
            fuzz_fail("conf: nodes not sorted or not unique at %zu", i);
        if (conf_node_by_id(c, n->id) != n)
            fuzz_fail("conf: conf_node_by_id(%u) misses it", n->id);
    }
    if (conf_node_by_id(c, 0) || conf_node_by_id(c, 65536))
        fuzz_fail("conf: conf_node_by_id found a node with a bad id");
    for (uint32_t s = 0; s < c->shards && s < 64; s++)
        for (uint32_t r = 0; r < c->replicas; r++)
            if (conf_replica(c, s, r) >= c->nnodes)
                fuzz_fail("conf: replica %u of shard %u out of range", r, s);
    if (c->max_key_bytes < 1 || c->max_key_bytes > CONF_KEY_LIMIT ||
        c->max_value_bytes > CONF_VALUE_LIMIT ||
        c->max_message_bytes < c->max_key_bytes + c->max_value_bytes + 1024)
        fuzz_fail("conf: key %llu value %llu message %llu",
                  (unsigned long long)c->max_key_bytes,
                  (unsigned long long)c->max_value_bytes,
                  (unsigned long long)c->max_message_bytes);
    if (c->request_timeout_ms < 1 || c->txn_timeout_ms < 1 ||
        c->max_txn_ops < 1 || c->max_txn_ops > CONF_TXN_OPS_LIMIT ||
        c->proc_max_keys < 1 || c->proc_max_keys > CONF_PROC_KEYS_LIMIT)
        fuzz_fail("conf: a limit out of its range");
    check_room(c, c->max_txn_bytes, "max_txn_bytes");
    check_room(c, c->proc_max_write_bytes, "proc_max_write_bytes");
    check_room(c, c->proc_max_reply_bytes, "proc_max_reply_bytes");
    if (!c->log_level ||
        (strcmp(c->log_level, "debug") && strcmp(c->log_level, "info") &&
         strcmp(c->log_level, "warn") && strcmp(c->log_level, "error")))
        fuzz_fail("conf: log level %s", c->log_level ? c->log_level : "-");
    if (!c->data_dir || !c->path || c->nprocedures > CONF_MAX_PROCEDURES)
        fuzz_fail("conf: data_dir, path or procedures");
    for (size_t i = 0; i < c->nprocedures; i++)
        if (!c->procedures[i] || !c->procedures[i][0])
            fuzz_fail("conf: procedure %zu is empty", i);
    check_security(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct conf *c = NULL;
    char err[512];
    int rc =
        conf_parse((const char *)data, size, "fuzz.conf", &c, err, sizeof(err));
    if (rc == KV_OK) {
        check(c);
        log_msg(LOG_DEBUG, "accepted", "nodes=%zu shards=%u curve=%d",
                c->nnodes, c->shards, c->security.curve);
        conf_free(c);
        return 0;
    }
    log_msg(LOG_DEBUG, "refused", "error=\"%s\"", err);
    if (c)
        fuzz_fail("conf_parse returned %d and a conf", rc);
    if (rc != KV_EINVAL && rc != KV_ENOMEM)
        fuzz_fail("conf_parse returned %d (%s)", rc, kv_strerror(rc));
    if (rc == KV_EINVAL && strncmp(err, "fuzz.conf:", 10) != 0)
        fuzz_fail("conf_parse error without the file and line: %s", err);
    return 0;
}
