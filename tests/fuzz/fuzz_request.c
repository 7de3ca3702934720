/*
 * fuzz_request - a client's frame, taken the way kvnode takes it.
 *
 * The input is one frame as it arrives on a node's ROUTER socket from a
 * client. Node 1 of a two-node cluster (4 shards, one replica each: node 1
 * leads shards 0 and 2, node 2 holds 1 and 3, whose traffic goes nowhere)
 * starts on the seeded state of fuzz.h (its prepared transaction's
 * deadline passes at 200 ms, so recovery aborts it during the run),
 * elects itself, and then takes the frame: wire_decode, then the status
 * answer or replica_request (key, value and transaction checks, procedure
 * calls, reads and writes through Raft, cross-shard transactions
 * coordinated through the other node). It runs 10 loop iterations, then
 * takes a plain write and runs 50 more (630 ms of fake time in all:
 * longer than the configured request and transaction timeouts, so waits
 * end).
 *
 * Findings besides crashes, leaks and undefined behaviour: a client frame
 * that stops the node, an answer that does not encode or goes to a
 * request nobody made, a request answered twice, a frame to a peer that
 * does not decode, a broken Raft invariant, and a node that no longer
 * answers a plain write made after the frame.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "fuzz.h"
#include "kv.h"

#define NSHARDS 4
#define PROBE_ID 0x7072006f62650001ull /* an id the corpus never uses */

/* Small limits, so that inputs reach them. */
static const char conf_text[] = "cluster = fuzz\n"
                                "shards = 4\n"
                                "replicas = 1\n"
                                "max_key_bytes = 64\n"
                                "max_value_bytes = 256\n"
                                "max_message_bytes = 65536\n"
                                "request_timeout_ms = 300\n"
                                "txn_timeout_ms = 400\n"
                                "max_txn_ops = 8\n"
                                "max_txn_bytes = 1024\n"
                                "proc_max_keys = 16\n"
                                "proc_max_write_bytes = 512\n"
                                "proc_max_reply_bytes = 512\n"
                                "[node 1]\naddress = tcp://127.0.0.1:7101\n"
                                "[node 2]\naddress = tcp://127.0.0.1:7102\n";

static struct conf *conf;
static bool hosted[NSHARDS];
static char probe_key[32];
static size_t probe_len;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    fuzz_procs();
    conf = fuzz_conf(conf_text);
    for (uint32_t s = 0; s < NSHARDS; s++)
        hosted[s] = conf->nodes[conf_replica(conf, s, 0)].id == 1;
    char tag[16];
    fuzz_tag(0, NSHARDS, tag);
    probe_len =
        (size_t)snprintf(probe_key, sizeof(probe_key), "{%s}probe", tag);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_node n;
    char err[256] = "";
    fuzz_node_init(&n, conf, 1);
    fuzz_seed_state(n.store, hosted, NSHARDS, FUZZ_WALL_BASE + 200);
    if (fuzz_node_start(&n, err, sizeof(err)) != KV_OK)
        fuzz_fail("harness: node 1 does not start: %s", err);
    fuzz_node_run(&n, 3); /* each single-member group elects itself */
    fuzz_node_frame(&n, FUZZ_ROUTING_ID, FUZZ_ROUTING_ID_LEN, data, size);
    fuzz_node_run(&n, 10);
    /* Whatever the frame did, the node serves a write on its own shard. */
    Kv__PutRequest put = KV__PUT_REQUEST__INIT;
    put.key.data = (uint8_t *)probe_key;
    put.key.len = probe_len;
    put.value.data = (uint8_t *)"x";
    put.value.len = 1;
    Kv__Request req = KV__REQUEST__INIT;
    req.id = PROBE_ID;
    req.op_case = KV__REQUEST__OP_PUT;
    req.put = &put;
    fuzz_node_request(&n, &req);
    fuzz_node_run(&n, 50);
    if (n.stopped)
        fuzz_fail("a client frame stopped node 1: %s", kv_strerror(n.stop_rc));
    int code = 0;
    if (fuzz_node_answers(&n, PROBE_ID, &code) < 1)
        fuzz_fail("after the frame, node 1 no longer answers a write");
    fuzz_node_close(&n);
    return 0;
}
