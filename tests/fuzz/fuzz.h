/*
 * fuzz - what the fuzz targets of tests/fuzz share (internal to the tests).
 *
 * Each target (fuzz_<name>.c) defines the two libFuzzer entry points below.
 * It is linked either with libFuzzer (clang -fsanitize=fuzzer, `make fuzz`)
 * or with replay.c, a plain main() that feeds it files (`make test` replays
 * the seed corpus through every target with the project's compiler).
 *
 * fuzz_node.c runs the real node code without sockets or disk: kvnode's
 * replica (replica.c, raft.c, txn.c, engine.c, proc.c) over the simulator's
 * in-memory store (tests/sim/store_sim.c), with a fake clock and a seeded
 * random generator, so one input always does the same thing. A node is
 * built afresh for every input and torn down after it (store included), so
 * no input depends on the ones before it and nothing leaks between them.
 *
 * The targets must never: read a real clock or real randomness, touch the
 * disk or the network, or keep state from one input to the next.
 */
#ifndef KV_FUZZ_H
#define KV_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv.pb-c.h"

struct conf;
struct inflight;
struct store;
struct replica;
struct proc_registry;

/* The libFuzzer entry points every target defines. */
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Makes the process deterministic and quiet: a fixed-seed generator behind
 * libsodium's randombytes (the procedure registry draws its hash key from
 * it), logging off unless KV_FUZZ_LOG=debug|info|warn|error is set. Call
 * first, from LLVMFuzzerInitialize. Idempotent. */
void fuzz_init(void);

/* Aborts with a message: a finding. Used for broken invariants, so that
 * libFuzzer (and the replay driver) report the input like a crash. */
void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)))
__attribute__((noreturn));

/* The procedure registry every target shares (built-ins, plus the example
 * plugins of procs/ when the build names their folder with
 * KV_FUZZ_PROC_DIR). Opened once per process; it keeps no state between
 * calls. Aborts when it cannot be opened. */
const struct proc_registry *fuzz_procs(void);

/* Parses a built-in configuration (aborts if it is invalid: a bug of the
 * harness). Free with conf_free(). */
struct conf *fuzz_conf(const char *text);

/* The wall clock of every fuzz node at tick 0 (ms since the epoch). */
#define FUZZ_WALL_BASE 1700000000000ull

/* A hash tag ("t<N>") whose keys land on SHARD of NSHARDS: "{tag}x" is on
 * SHARD. Writes it NUL-terminated into TAG (16 bytes). */
void fuzz_tag(uint32_t shard, uint32_t nshards, char tag[16]);

/* The client id of the seeded session (16 bytes) and its last seq. */
#define FUZZ_CLIENT_ID "fuzz-client-0001"
#define FUZZ_CLIENT_SEQ 5
/* The transaction ids the seeded state uses (16 bytes each): one prepared
 * on every hosted shard (its intent locks "{tag}l"), one resolved
 * (a tombstone old enough for the GC). Byte 15 is the shard. */
void fuzz_txn_id(uint32_t shard, bool resolved, unsigned char id[16]);

/* Writes the seeded state of every shard HOSTED (by shard, NSHARDS of them)
 * into STORE, as a node that installed a snapshot at index 10 of term 1
 * would hold it: per shard the applied index and hard state, keys
 * "{tag}n" = "5", "{tag}s" = "hello", "{tag}l" = "old" (locked by a
 * prepared transaction whose record is PENDING on the same shard until
 * DEADLINE_MS, wall clock, with an intent putting "new"), a tombstone old
 * enough for the GC and the session of FUZZ_CLIENT_ID. Aborts if the
 * store refuses it. */
void fuzz_seed_state(struct store *store, const bool *hosted, uint32_t nshards,
                     uint64_t deadline_ms);

/* --- one node ------------------------------------------------------------ */

/* A frame the node sent to a peer (an encoded Envelope with a PeerBatch). */
struct fuzz_frame {
    uint32_t to;
    unsigned char *buf;
    size_t len;
};

#define FUZZ_MAX_ASKED 64

struct fuzz_node {
    const struct conf *conf; /* borrowed */
    uint32_t id;
    char dir[32]; /* the simulated store's name */
    struct store *store;
    struct replica *rep;
    /* Client requests held unanswered, capped per connection as kvnode
     * does (max_inflight_per_client). */
    struct inflight *inflight;
    uint64_t ticks;
    /* Frames sent to peers since the last fuzz_node_drop_sent(), when
     * keep_sent is set (else they are only counted). */
    bool keep_sent;
    struct fuzz_frame *sent;
    size_t nsent, capsent;
    uint64_t frames_sent;
    /* Answers to clients: how many, and for each request fed (the first
     * FUZZ_MAX_ASKED ids) how often it was fed and answered: an answer to
     * a request nobody made, or more answers than requests, is a finding. */
    uint64_t replies;
    struct {
        uint64_t id;
        int fed;
        int answers;
        int code; /* of the last answer */
    } asked[FUZZ_MAX_ASKED];
    size_t nasked;
    bool stopped; /* replica_flush failed: a real node would exit */
    int stop_rc;
};

/* Opens the store of node ID of CONF (borrowed until fuzz_node_close).
 * The replica is not opened yet: fill the store first if needed. */
void fuzz_node_init(struct fuzz_node *n, const struct conf *conf, uint32_t id);

/* Opens the replica over the store. Returns replica_open's code (the node
 * refuses to start on a store it cannot use; ERR says why). */
int fuzz_node_start(struct fuzz_node *n, char *err, size_t errlen);

/* Runs ROUNDS iterations of the node's loop: flush (persist, send, apply,
 * answer), then one tick of 10 ms. Stops (n->stopped) when a flush fails,
 * as kvnode would. */
void fuzz_node_run(struct fuzz_node *n, int rounds);

/* Handles one frame as kvnode's handle_frame does with CurveZMQ off:
 * decode (bounded by max_message_bytes), then a PeerBatch goes to
 * replica_peer when ID is "n<from>", a status request is answered from
 * replica_status, any other request counts against its connection's
 * max_inflight_per_client and goes to replica_request, a Response is
 * dropped. */
void fuzz_node_frame(struct fuzz_node *n, const void *id, size_t idlen,
                     const void *data, size_t len);

/* Encodes REQ and feeds it as a frame from the client FUZZ_ROUTING_ID. */
void fuzz_node_request(struct fuzz_node *n, const Kv__Request *req);

/* Encodes B (from, cluster and boot id as given) and feeds it from the
 * routing id of node B->from. */
void fuzz_node_peer(struct fuzz_node *n, const Kv__PeerBatch *b);

/* How many answers request ID got (-1: it was never fed); *CODE (may be
 * NULL) the code of the last one. */
int fuzz_node_answers(const struct fuzz_node *n, uint64_t id, int *code);

/* Frees the frames kept in n->sent. */
void fuzz_node_drop_sent(struct fuzz_node *n);

/* Closes the replica and the store and forgets every simulated store. */
void fuzz_node_close(struct fuzz_node *n);

/* The routing id client frames come from: 5 bytes, as ZeroMQ generates. */
#define FUZZ_ROUTING_ID "\0\x80\0\0\x01"
#define FUZZ_ROUTING_ID_LEN 5

/* --- the three-node cluster of the peer target ---------------------------- */

/* Answers, as node PEER would, the Raft messages of SHARD that n->sent
 * holds for it (votes and pre-votes granted, appends and heartbeats
 * acknowledged), then drops every kept frame. */
void fuzz_node_answer_as(struct fuzz_node *n, uint32_t peer, uint32_t shard);

/* A boot id per peer, stable across inputs. */
#define FUZZ_PEER_BOOT(id) (0x5eed000000000000ull + (id))

/* --- input reading ------------------------------------------------------- */

/* A cursor over a fuzz input: reads past the end return zeros. */
struct fuzz_in {
    const uint8_t *p;
    size_t left;
};

uint8_t fuzz_u8(struct fuzz_in *in);
uint16_t fuzz_u16(struct fuzz_in *in);
uint32_t fuzz_u32(struct fuzz_in *in);
uint64_t fuzz_u64(struct fuzz_in *in);
/* Up to N bytes (fewer at the end of the input); *GOT says how many. */
const uint8_t *fuzz_bytes(struct fuzz_in *in, size_t n, size_t *got);

#endif
