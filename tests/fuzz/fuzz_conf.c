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
 * CONF_TXN_SLACK (or 1), a log level of the four, at most 64 procedures.
 * conf_node_by_id and conf_replica must agree with the node list.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "fuzz.h"
#include "kv.h"

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
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct conf *c = NULL;
    char err[512];
    int rc =
        conf_parse((const char *)data, size, "fuzz.conf", &c, err, sizeof(err));
    if (rc == KV_OK) {
        check(c);
        conf_free(c);
        return 0;
    }
    if (c)
        fuzz_fail("conf_parse returned %d and a conf", rc);
    if (rc != KV_EINVAL && rc != KV_ENOMEM)
        fuzz_fail("conf_parse returned %d (%s)", rc, kv_strerror(rc));
    if (rc == KV_EINVAL && strncmp(err, "fuzz.conf:", 10) != 0)
        fuzz_fail("conf_parse error without the file and line: %s", err);
    return 0;
}
