/*
 * fuzz_peer - a peer's frame (a PeerBatch), taken the way kvnode takes it.
 *
 * The input is one frame as node 1 of a three-node cluster (2 shards, 3
 * replicas each) receives it. Before the frame, node 1 starts on the
 * seeded state of fuzz.h (its prepared transactions' deadline passes at
 * 900 ms, after the frame, so a recovery sweep runs during the input) and
 * a scripted node 2 elects it leader of shard 0 (term 2) and makes itself
 * leader of shard 1 (term 2, node 1 follows),
 * so the frame meets both sides of Raft. The frame goes through
 * wire_decode and, as kvnode does for a batch whose routing id is
 * "n<from>", to replica_peer: Raft messages of both shards, snapshot
 * chunks (staged, then installed), snapshot acks, internal calls (the
 * two-phase commit steps and calls on every shard, proposed on shard 0)
 * and their answers, plugin hashes. A frame with a Request is taken as a
 * client's. Then node 1 runs 40 loop iterations while node 2 keeps
 * acknowledging its appends on shard 0, so what the frame proposed there
 * commits and applies.
 *
 * Findings besides crashes, leaks and undefined behaviour: a broken Raft
 * invariant, a frame node 1 sends that does not decode, an answer to a
 * request nobody made or a second one. A frame that makes node 1 stop
 * (replica_flush fails) is reported on stderr with KV_FUZZ_LOG set, and
 * is not a finding: a peer is trusted with the data it replicates.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "fuzz.h"
#include "kv.h"
#include "log.h"
#include "replica.h"

#define NSHARDS 2

static const char conf_text[] = "cluster = fuzz\n"
                                "shards = 2\n"
                                "replicas = 3\n"
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
                                "[node 2]\naddress = tcp://127.0.0.1:7102\n"
                                "[node 3]\naddress = tcp://127.0.0.1:7103\n";

static struct conf *conf;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    fuzz_procs();
    conf = fuzz_conf(conf_text);
    return 0;
}

/* Node 2 leads shard 1 from term 2: an empty append at the snapshot
 * point (index 10, term 1). */
static void follow_node2(struct fuzz_node *n)
{
    Kv__RaftMessage m = KV__RAFT_MESSAGE__INIT, *mp = &m;
    m.shard = 1;
    m.type = 1; /* RAFT_MSG_APPEND */
    m.from = 2;
    m.to = 1;
    m.term = 2;
    m.log_term = 1;
    m.index = 10;
    m.commit = 10;
    Kv__PeerBatch b = KV__PEER_BATCH__INIT;
    b.from = 2;
    b.cluster = conf->cluster;
    b.boot_id = FUZZ_PEER_BOOT(2);
    b.msgs = &mp;
    b.n_msgs = 1;
    fuzz_node_peer(n, &b);
}

/* Node 1 becomes leader of shard 0, node 2 voting for it. */
static void elect(struct fuzz_node *n)
{
    n->keep_sent = true;
    for (int i = 0; i < 400 && replica_leader(n->rep, 0) != 1; i++) {
        replica_tick(n->rep);
        n->ticks++;
        if (i < 48)
            continue; /* no election timeout is shorter */
        fuzz_node_run(n, 0);
        fuzz_node_answer_as(n, 2, 0);
        fuzz_node_run(n, 0);
    }
    if (replica_leader(n->rep, 0) != 1)
        fuzz_fail("harness: node 1 was not elected leader of shard 0");
    /* Its first append (the no-op of term 2) is acknowledged. */
    fuzz_node_run(n, 0);
    fuzz_node_answer_as(n, 2, 0);
    follow_node2(n);
    fuzz_node_run(n, 0);
    fuzz_node_drop_sent(n);
}

/* The routing id a frame comes from: "n<from>" for a PeerBatch (as its
 * sender's DEALER sets it), else a client's. */
static size_t routing_id(const uint8_t *data, size_t size, char id[16])
{
    Kv__Envelope *env = kv__envelope__unpack(NULL, size, data);
    size_t len = FUZZ_ROUTING_ID_LEN;
    memcpy(id, FUZZ_ROUTING_ID, FUZZ_ROUTING_ID_LEN);
    if (env && env->body_case == KV__ENVELOPE__BODY_PEER)
        len = (size_t)snprintf(id, 16, "n%u", env->peer->from);
    if (env)
        kv__envelope__free_unpacked(env, NULL);
    return len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_node n;
    char err[256] = "";
    bool hosted[NSHARDS] = {true, true};
    fuzz_node_init(&n, conf, 1);
    fuzz_seed_state(n.store, hosted, NSHARDS, FUZZ_WALL_BASE + 900);
    if (fuzz_node_start(&n, err, sizeof(err)) != KV_OK)
        fuzz_fail("harness: node 1 does not start: %s", err);
    elect(&n);
    char id[16];
    size_t idlen = routing_id(data, size, id);
    fuzz_node_frame(&n, id, idlen, data, size);
    for (int i = 0; i < 40 && !n.stopped; i++) {
        fuzz_node_run(&n, 1);
        fuzz_node_answer_as(&n, 2, 0);
    }
    if (n.stopped)
        log_msg(LOG_WARN, "a peer's frame stopped node 1", "error=\"%s\"",
                kv_strerror(n.stop_rc));
    fuzz_node_close(&n);
    return 0;
}
