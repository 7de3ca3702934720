/*
 * fuzz_command - Raft log entries (kv.Command) decoded and applied.
 *
 * The input is a list of up to 16 log entries, each
 *
 *   FLAGS(1) LEN(2, big-endian) DATA(LEN)
 *
 * FLAGS bit 0: the shard (0 or 1) whose log holds the entry; bit 7: a
 * no-op entry (type 1) instead of a normal one (DATA should be a Command).
 * The entries are stored as committed in the log of a one-node cluster of
 * 2 shards (after the seeded state of fuzz.h, at indices 11, 12, ...), so
 * replica_open loads them and the first iterations of the loop apply
 * them: apply_entry decodes each Command and hands it to the engine (a
 * write, a single-shard transaction, a two-phase commit step, a
 * tombstone GC, a session GC, a procedure's effects). Then client reads
 * of the seeded keys, a scan of each shard and a status read the result,
 * and 60 more iterations run the recovery sweeps over what the entries
 * left.
 *
 * Every replica applies the same entries, so an entry that stops the node
 * stops every replica of its shard for good: that is a finding here (it
 * is applied to a sound state, so only a bug of the apply makes it fail),
 * as are crashes, leaks, undefined behaviour, broken Raft invariants and
 * answers to requests nobody made or answered twice.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "conf.h"
#include "fuzz.h"
#include "kv.h"
#include "store.h"

#define NSHARDS 2
#define MAX_ENTRIES 16

static const char conf_text[] = "cluster = fuzz\n"
                                "shards = 2\n"
                                "replicas = 1\n"
                                "max_key_bytes = 64\n"
                                "max_value_bytes = 256\n"
                                "max_message_bytes = 65536\n"
                                "request_timeout_ms = 300\n"
                                "txn_timeout_ms = 400\n"
                                "[node 1]\naddress = tcp://127.0.0.1:7101\n";

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

/* Stores the input's entries after index 10 of term 1 in each shard's log,
 * committed. */
static void store_log(struct store *store, struct fuzz_in *in)
{
    struct store_batch *b = store_batch_new();
    uint64_t last[NSHARDS] = {10, 10};
    if (!b)
        fuzz_fail("harness: out of memory");
    for (int i = 0; i < MAX_ENTRIES && in->left; i++) {
        uint8_t flags = fuzz_u8(in);
        size_t len;
        const uint8_t *p = fuzz_bytes(in, fuzz_u16(in), &len);
        uint32_t s = flags & 1;
        Kv__LogEntry le = KV__LOG_ENTRY__INIT;
        le.term = 1;
        le.index = ++last[s];
        le.type = (flags & 0x80) ? 1 : 0;
        le.data.data = (uint8_t *)p;
        le.data.len = len;
        size_t n = kv__log_entry__get_packed_size(&le);
        unsigned char *buf = malloc(n ? n : 1);
        if (!buf)
            fuzz_fail("harness: out of memory");
        kv__log_entry__pack(&le, buf);
        unsigned char k[13];
        k[0] = 'L';
        put_u32(k + 1, s);
        put_u64(k + 5, le.index);
        store_batch_put(b, k, sizeof(k), buf, n);
        free(buf);
    }
    for (uint32_t s = 0; s < NSHARDS; s++) {
        unsigned char k[5], v[36];
        k[0] = 'H';
        put_u32(k + 1, s);
        put_u64(v, 1);
        put_u32(v + 8, 0);
        put_u64(v + 12, last[s]); /* every entry is committed */
        put_u64(v + 20, 10);
        put_u64(v + 28, 1);
        store_batch_put(b, k, sizeof(k), v, sizeof(v));
    }
    if (store_write(store, b, true) != KV_OK)
        fuzz_fail("harness: the simulated store refused a write");
    store_batch_free(b);
}

/* Reads what the entries left: every seeded key, a scan per shard and the
 * status (which lists the transactions). */
static void read_back(struct fuzz_node *n)
{
    static const char *const suffixes[] = {"n", "s", "l", "a", "b"};
    uint64_t id = 1;
    for (uint32_t s = 0; s < NSHARDS; s++) {
        char tag[16], key[40];
        fuzz_tag(s, NSHARDS, tag);
        for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
            int klen = snprintf(key, sizeof(key), "{%s}%s", tag, suffixes[i]);
            Kv__GetRequest get = KV__GET_REQUEST__INIT;
            get.key.data = (uint8_t *)key;
            get.key.len = (size_t)klen;
            Kv__Request req = KV__REQUEST__INIT;
            req.id = id++;
            req.op_case = KV__REQUEST__OP_GET;
            req.get = &get;
            fuzz_node_request(n, &req);
        }
        Kv__ScanRequest scan = KV__SCAN_REQUEST__INIT;
        scan.shard = s;
        Kv__Request req = KV__REQUEST__INIT;
        req.id = id++;
        req.op_case = KV__REQUEST__OP_SCAN;
        req.scan = &scan;
        fuzz_node_request(n, &req);
    }
    Kv__StatusRequest st = KV__STATUS_REQUEST__INIT;
    Kv__Request req = KV__REQUEST__INIT;
    req.id = id++;
    req.op_case = KV__REQUEST__OP_STATUS;
    req.status = &st;
    fuzz_node_request(n, &req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {.p = data, .left = size};
    bool hosted[NSHARDS] = {true, true};
    struct fuzz_node n;
    char err[256] = "";
    fuzz_node_init(&n, conf, 1);
    fuzz_seed_state(n.store, hosted, NSHARDS, FUZZ_WALL_BASE + 200);
    store_log(n.store, &in);
    if (fuzz_node_start(&n, err, sizeof(err)) != KV_OK)
        fuzz_fail("node 1 does not start on a log of commands: %s", err);
    fuzz_node_run(&n, 4); /* elect, apply the stored entries */
    if (!n.stopped) {
        read_back(&n);
        fuzz_node_run(&n, 60);
    }
    if (n.stopped)
        fuzz_fail("applying the log stopped node 1: %s",
                  kv_strerror(n.stop_rc));
    fuzz_node_close(&n);
    return 0;
}
