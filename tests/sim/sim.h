/*
 * sim.h - the deterministic simulation of kv's replication (internal).
 *
 * One seed builds a small cluster in memory: every node is the real
 * replica.c / raft.c / engine.c over a simulated store (store_sim.c), the
 * network is a priority queue of encoded frames with seeded delays, losses,
 * duplicates and partitions, time is a simulated millisecond counter, and
 * simulated clients run a register workload whose history is checked for
 * linearizability (tests/lincheck). Nothing reads a clock or calls rand():
 * one seed replays exactly.
 *
 * The files of the simulator:
 *   sim.c        main, the per-seed loop, phases and scenarios
 *   sim_world.c  nodes (start, crash, restart), the network, the faults
 *   sim_client.c the clients and their workload
 *   sim_check.c  safety and convergence checks
 *   sim_bank.c   the bank workload (cross-shard transactions) and its checks
 *   sim_counter.c the counter workload (the incr procedure) and its checks
 * They share struct sim below; nothing here is used outside tests/sim.
 */
#ifndef KV_SIM_H
#define KV_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kv.pb-c.h"

struct conf;
struct lin_history;
struct proc_registry;
struct lin_report;
struct replica;
struct store;

#define SIM_MAX_NODES 5
#define SIM_MAX_SHARDS 4
#define SIM_MAX_KEYS 6
#define SIM_MAX_CLIENTS 64
#define SIM_KEY_MAX 48
#define SIM_BULK_KEY_BASE 1000 /* lincheck key ids of bulk (unique) keys */
#define SIM_MAX_ACCTS 8         /* bank accounts */
#define SIM_MAX_COUNTERS 5      /* counter keys */

/* --- the seeded generator (splitmix64) ------------------------------------ */

struct sim_rng {
    uint64_t s;
};

uint64_t sim_rand(struct sim_rng *g);
/* Uniform in [0, n); 0 when n is 0. */
uint64_t sim_below(struct sim_rng *g, uint64_t n);
/* Uniform in [lo, hi]. */
uint64_t sim_range(struct sim_rng *g, uint64_t lo, uint64_t hi);
/* True with probability PPM / 1e6. */
bool sim_ppm(struct sim_rng *g, uint32_t ppm);

/* --- the network ---------------------------------------------------------- */

enum sim_msg_kind {
    SIM_MSG_PEER = 1, /* node -> node: an encoded PeerBatch envelope */
    SIM_MSG_REQ,      /* client -> node: an encoded Request envelope */
    SIM_MSG_RESP,     /* node -> client: an encoded Response envelope */
};

struct sim_msg {
    uint64_t at;  /* delivery time, ms */
    uint64_t seq; /* ties on `at` are delivered in send order */
    int kind;     /* enum sim_msg_kind */
    int from, to; /* node index or client index (by kind) */
    unsigned char *buf;
    size_t len;
    bool dropped; /* removed by a scenario while in flight */
};

struct sim_queue {
    struct sim_msg *a; /* a binary min-heap on (at, seq) */
    size_t n, cap;
};

/* --- nodes ---------------------------------------------------------------- */

struct sim_node {
    struct sim *sim;
    int idx;     /* index in sim->nodes and conf->nodes */
    uint32_t id; /* idx + 1 */
    char dir[16];
    struct store *store;
    struct replica *rep;   /* NULL while down */
    uint64_t restart_at;   /* while down: when to restart (0: not scheduled) */
    uint64_t stop_by;      /* stopping gracefully: hands off leadership,
                              then stops by this time (0: not stopping) */
    uint64_t paused_until; /* a paused node neither ticks nor receives */
    int64_t wall_skew;     /* ms added to the shared wall clock */
    uint64_t tick_period;  /* ms between ticks: REPLICA_TICK_MS, or a
                              drifting clock's 8..12 */
    uint64_t next_tick;
    bool fail_armed; /* a store write failure was injected */
    const char *fp_hit; /* a failpoint chose to crash it (after the event) */
    uint64_t crashes, restarts;
    uint64_t verified[SIM_MAX_SHARDS]; /* commit check done up to here */
    uint64_t snapshots_installed;      /* summed over its incarnations */
    uint64_t lease_reads;              /* likewise */
    uint64_t sessions_expired;         /* likewise */
};

/* --- clients -------------------------------------------------------------- */

enum sim_op_kind {
    SIM_GET = 1,
    SIM_PUT,
    SIM_CAS,
    SIM_INSERT,
    SIM_DEL,
    SIM_DEL_IF,
    SIM_SCAN, /* a linearizable scan of one shard's register keys */
    SIM_TXN,  /* a bank transaction (Request.txn), ops in sim_op.tops */
    SIM_INCR, /* a call of the built-in procedure incr (Request.call) */
};

enum sim_client_mode {
    SIM_CLIENT_REGISTER = 0, /* random ops on the register keys */
    SIM_CLIENT_BULK,         /* blind puts of new keys of one shard */
    SIM_CLIENT_GHOST,        /* makes no ops: the name scenarios send
                                unrecorded requests under */
    SIM_CLIENT_BANK,         /* transfers and audits (sim_bank.c) */
    SIM_CLIENT_COUNTER,      /* incr, get and put of the counter keys
                                (sim_counter.c) */
};

/* One op of a bank transaction: a condition or a put of a balance. */
struct sim_txn_op {
    int kind;         /* Kv__TxnOp__Kind */
    int acct;         /* account index */
    uint64_t version; /* IF_VERSION */
    int64_t balance;  /* PUT */
};

struct sim_op {
    int kind;     /* enum sim_op_kind */
    uint64_t key; /* lincheck key id */
    char kbuf[SIM_KEY_MAX];
    size_t klen;
    uint32_t shard;
    uint64_t value;    /* writes: the unique value */
    size_t pad;        /* writes: extra value bytes */
    uint64_t expect;   /* CAS / DEL_IF */
    uint64_t wseq;     /* writes: the session sequence number */
    uint64_t id;       /* op id (request ids are id * 256 + attempt) */
    uint64_t call;     /* stamp of the call */
    uint64_t deadline; /* ms: give up then */
    int attempt;
    int target;                /* node index of the current attempt */
    uint64_t attempt_deadline; /* ms */
    uint64_t resend_at;        /* ms: send the next attempt then (0: none) */
    bool final;                /* part of the final phase: must not give up */
    /* SIM_TXN: the transaction's ops */
    struct sim_txn_op tops[2 * SIM_MAX_ACCTS];
    int ntops;
    /* counter ops: the counter key, the op's entry in sim.cops, and (with
     * TEXT) the bytes of the incr argument or of the put value */
    int ckey;
    size_t cop;
    bool text;
    char tbuf[24];
    size_t tlen;
};

enum sim_bank_kind {
    SIM_BANK_TRANSFER = 1,
    SIM_BANK_AUDIT,
};

/* A bank client's current transfer or audit: reads, then a transaction. */
struct sim_bank_op {
    int kind;                 /* enum sim_bank_kind; 0: none */
    int accts[SIM_MAX_ACCTS]; /* the accounts it reads, in order */
    int naccts;
    int nread; /* reads done */
    bool present[SIM_MAX_ACCTS];
    uint64_t version[SIM_MAX_ACCTS]; /* by position in accts */
    int64_t balance[SIM_MAX_ACCTS];
    int64_t amount;    /* transfer: from accts[0] to accts[1] */
    uint64_t deadline; /* ms: the whole op gives up then */
};

struct sim_client {
    int idx;
    int mode;              /* enum sim_client_mode */
    unsigned char cid[16]; /* client_id of its session */
    uint64_t seq;          /* last write sequence number used */
    uint64_t counter;      /* values written so far */
    bool busy;
    struct sim_op op;
    uint64_t next_start;          /* ms */
    int leader[SIM_MAX_SHARDS];   /* node index it believes leads each shard */
    uint64_t known[SIM_MAX_KEYS]; /* last version seen per register key */
    /* the final phase: ops queued for it */
    int final_kind[3 * SIM_MAX_KEYS];
    int final_key[3 * SIM_MAX_KEYS];
    int nfinal, final_pos;
    struct sim_bank_op bank; /* SIM_CLIENT_BANK */
    /* SIM_CLIENT_COUNTER: its last acknowledged incr (op id, the session
     * sequence number, the reply and its version), which a late answer to
     * another attempt of that op must repeat */
    uint64_t last_incr_id, last_incr_seq, last_incr_version;
    char last_incr_reply[24];
    size_t last_incr_rlen;
    uint64_t cknown[SIM_MAX_COUNTERS]; /* last version seen per counter */
};

/* One op of the counter history (sim_counter.c). */
enum sim_cop_outcome {
    SIM_COP_RUNNING = 0,
    SIM_COP_OK,
    SIM_COP_UNKNOWN, /* an incr or put given up: applied once or never */
    SIM_COP_DROPPED, /* a get given up: it tells nothing */
    SIM_COP_FAILED,  /* a conditional put refused: never applied */
};

struct sim_cop {
    int kind; /* SIM_INCR, SIM_GET or SIM_PUT */
    int cond; /* a put's condition: 0, SIM_CAS (if_version = expect)
                 or SIM_INSERT (if_absent) */
    uint64_t expect;
    int key; /* counter index */
    int client;
    bool final;         /* one of the final ops */
    int outcome;        /* enum sim_cop_outcome */
    uint64_t call, ret; /* stamps; ret is UINT64_MAX unless OK */
    int64_t value;      /* OK incr: the reply; OK get: what it read (0:
                           absent); put: the value it writes */
    bool present;       /* OK get: the key existed */
    uint64_t version;   /* OK: the version written or read (0: absent) */
    uint64_t epoch;     /* the put the value counts from (0: none; a put:
                           its own number) */
    int64_t count;      /* the increments since, in the key's direction */
};

/* --- the simulation of one seed ------------------------------------------- */

enum sim_phase {
    SIM_PH_RUN = 0,  /* workload, faults on */
    SIM_PH_HEAL,     /* workload, faults off */
    SIM_PH_DRAIN,    /* no new ops; wait for clients to finish */
    SIM_PH_FINAL,    /* a put and a get per key, which must succeed */
    SIM_PH_CONVERGE, /* wait until the replicas apply the same index (bank:
                        and hold no transaction state) */
    SIM_PH_DONE,
};

struct sim_params {
    int scenario; /* enum sim_scenario in sim.c */
    int nnodes, nshards, nclients, nkeys, nbulk, nghost;
    int nbank, naccts;            /* bank clients and accounts */
    int ncounter, ncounters;      /* counter clients and keys */
    bool counter_puts;            /* counter clients also put numbers */
    bool counter_down;            /* some counter keys count down (incr
                                     with a negative argument) */
    uint32_t txn_timeout_ms;      /* cluster.conf (0: its default) */
    uint32_t session_ttl_s;       /* cluster.conf (0: its default) */
    int legacy_node; /* 1-based, or 0: its PeerBatches arrive without
                        features, as from a version before them */
    uint32_t fp_prepared_ppm;     /* crash at "txn-prepared" (per hit) */
    uint32_t fp_committed_ppm;    /* crash at "txn-committed" */
    uint32_t inflight_crash_ppm;  /* per ms: crash a node of a transaction
                                     in flight */
    bool tomb_gc; /* bank: once settled, the wall clocks jump past the
                     tombstones' keep time, and every one must go */
    uint64_t run_ms, heal_ms;
    uint32_t loss_ppm, dup_ppm, slow_ppm;
    uint32_t ancient_ppm; /* messages delayed by seconds (not with fifo) */
    bool drift;           /* node clocks run at different rates */
    uint32_t delay_max;   /* ms; delays are 1..delay_max, slow ones more */
    bool faults;          /* the random fault schedule */
    bool fifo;            /* links keep order (as one TCP connection does);
                             else delays reorder messages */
    uint32_t value_pad_max;
};

struct sim_faults {
    uint64_t next_at;
    uint64_t part_until; /* a partition is active until then (0: none) */
    uint64_t storm_until;
    uint32_t storm_loss_ppm;
};

/* Per shard: what the checks learned. */
struct sim_track {
    uint64_t *term; /* committed entry terms by index (0: not seen) */
    uint64_t *hash; /* committed entry content hashes */
    size_t cap;
    uint64_t *lterm; /* (term, leader) pairs seen, for election safety */
    uint32_t *lid;
    size_t nl, lcap;
};

struct sim_stats {
    uint64_t events, ticks, delivered, sent, lost, duplicated, blocked;
    uint64_t ops_ok, ops_failed, ops_absent, ops_unknown, reads_dropped;
    uint64_t retries, crashes, restarts, eio, partitions, pauses, storms;
    uint64_t stops, scans;
    uint64_t snapshots;
    uint64_t lease_reads; /* reads leaders served under a lease */
    uint64_t sessions_expired; /* summed over the replicas */
    /* bank */
    uint64_t bank_seeds;
    uint64_t transfers_ok, transfers_conflict, transfers_unknown;
    uint64_t transfers_skipped; /* the source had too little */
    uint64_t audits_ok, audits_conflict, audits_unknown;
    uint64_t bank_dropped; /* ops given up before their transaction */
    uint64_t fp_crashes, inflight_crashes;
    uint64_t tomb_gc_seeds, tombstones; /* tombstones: found at the jump */
    /* counter */
    uint64_t counter_seeds;
    uint64_t incr_ok, incr_unknown;
    uint64_t incr_unavailable, incr_timedout; /* answers retried */
    uint64_t incr_late; /* late answers compared with the first */
    uint64_t cget_ok, cget_absent, cget_dropped;
    uint64_t cput_ok, cput_unknown, cput_failed;
};

struct sim {
    uint64_t seed;
    struct sim_params p;
    struct sim_rng rng;
    bool verbose;
    int log_level; /* enum log_level of the nodes' lines when verbose */
    struct conf *conf;
    /* the procedures every node runs (the built-ins), opened once per run
     * by main and borrowed by every seed */
    const struct proc_registry *procs;
    struct sim_node nodes[SIM_MAX_NODES];
    struct sim_client clients[SIM_MAX_CLIENTS];
    int nclients;
    struct sim_queue q;
    uint64_t msg_seq;
    uint64_t now; /* ms */
    uint64_t sub; /* events within this ms, for stamps */
    uint64_t max_events;
    uint64_t op_ids;
    bool blocked[SIM_MAX_NODES][SIM_MAX_NODES]; /* [from][to] */
    /* fifo: the last delivery time per link, [kind][from][to] (clients
     * are "from" of requests and "to" of responses) */
    uint64_t link_last[3][SIM_MAX_CLIENTS][SIM_MAX_CLIENTS];
    struct sim_faults f;
    int phase;               /* enum sim_phase */
    uint64_t phase_deadline; /* ms: the phase must end by then */
    struct lin_history *hist;
    struct lin_report *report; /* a linearizability violation, to print */
    size_t hist_before_final;  /* ops recorded before the final phase */
    /* register keys */
    char keys[SIM_MAX_KEYS][SIM_KEY_MAX];
    size_t klen[SIM_MAX_KEYS];
    uint32_t kshard[SIM_MAX_KEYS];
    char tags[SIM_MAX_SHARDS][12]; /* a hash tag per shard */
    uint64_t bulk_next;            /* bulk keys written so far */
    bool bulk_on;
    /* per key: the first final read (the state the faults left) and the
     * last one (the state every store must hold) */
    bool final_read[SIM_MAX_KEYS];
    bool first_present[SIM_MAX_KEYS];
    uint64_t first_value[SIM_MAX_KEYS], first_version[SIM_MAX_KEYS];
    bool final_present[SIM_MAX_KEYS];
    uint64_t final_value[SIM_MAX_KEYS], final_version[SIM_MAX_KEYS];
    /* value -> version, for the exactly-once check */
    uint64_t *vv_key, *vv_ver;
    size_t vv_cap, vv_n;
    struct sim_track track[SIM_MAX_SHARDS];
    struct sim_stats st;
    /* scenario state */
    int sc_state;
    int sc_node, sc_shard, sc_variant;
    uint64_t sc_at;
    uint64_t sc_ghosts; /* unrecorded writes sent */
    uint64_t sc_tail;   /* the isolated leader's last stored index */
    int sc_triggers;
    int sc_seen; /* snapshot: ms seen in the install phase to crash in */
    /* bank accounts: "{tag}aN", spread over the shards */
    char accts[SIM_MAX_ACCTS][SIM_KEY_MAX];
    size_t alen[SIM_MAX_ACCTS];
    uint32_t ashard[SIM_MAX_ACCTS];
    int64_t total;       /* naccts * SIM_BANK_START */
    bool final_audit_ok; /* the final audit committed */
    uint64_t wall_jump;  /* ms added to every node's wall clock */
    /* counter keys: "{tag}cN", spread over the shards; each counts up or
     * down (cdir +1 or -1) by 1 per incr */
    char ckeys[SIM_MAX_COUNTERS][SIM_KEY_MAX];
    size_t cklen[SIM_MAX_COUNTERS];
    uint32_t ckshard[SIM_MAX_COUNTERS];
    int cdir[SIM_MAX_COUNTERS];
    struct sim_cop *cops; /* the counter history, in call order */
    size_t ncops, capcops;
    size_t *cput; /* put k (1..ncput) is cops[cput[k - 1]] */
    size_t ncput, capcput;
    /* the first failure */
    bool failed;
    char why[2048];
};

/* Records the first failure of the seed (later ones are ignored). */
void sim_fail(struct sim *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prints a line prefixed with the sim time when --verbose. */
void sim_log(struct sim *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Tags the nodes' log lines with the sim time and node N (verbose). */
void sim_node_context(struct sim *s, const struct sim_node *n);

/* A strictly increasing timestamp of "now" for the history (ns-like). */
uint64_t sim_stamp(struct sim *s);

/* --- sim_world.c ---------------------------------------------------------- */

/* Starts (or restarts) node N over its store. Returns 0, or -1 (failure
 * recorded). */
int sim_node_start(struct sim *s, struct sim_node *n);
/* Crashes node N: closes it and loses its unsynced writes. */
void sim_node_crash(struct sim *s, struct sim_node *n, const char *why);
/* Stops node N cleanly (nothing lost). */
void sim_node_stop(struct sim *s, struct sim_node *n, const char *why);
/* Whether node N runs (not crashed, not paused). */
bool sim_node_live(const struct sim *s, const struct sim_node *n);
/* The node index that believes it leads SHARD, or -1. */
int sim_shard_leader(struct sim *s, uint32_t shard);
/* Queues a frame (copied) with a random delay, subject to loss and
 * duplication. */
void sim_net_send(struct sim *s, int kind, int from, int to, const void *buf,
                  size_t len);
/* Delivers every message due by now. */
void sim_net_deliver(struct sim *s);
/* Ticks the nodes whose tick falls on now. */
void sim_nodes_tick(struct sim *s);
/* Restarts the nodes whose restart time came. */
void sim_nodes_restart_due(struct sim *s);
/* The random fault schedule, once per ms. */
void sim_faults_step(struct sim *s);
/* Ends every fault: partitions, pauses, storms, armed store failures;
 * restarts crashed nodes. */
void sim_heal(struct sim *s);
/* Drops every in-flight peer message sent by node index FROM. */
void sim_net_drop_from(struct sim *s, int from);
/* Frees the queue. */
void sim_net_free(struct sim *s);
/* Runs the checks that follow every event on node N (NULL: none). */
void sim_after_event(struct sim *s, struct sim_node *n);

/* --- sim_client.c --------------------------------------------------------- */

void sim_clients_init(struct sim *s);
/* Starts ops, resends, times out, once per ms. */
void sim_clients_step(struct sim *s);
/* A response frame from node index FROM for client C arrived. */
void sim_client_response(struct sim *s, int c, int from, const void *buf,
                         size_t len);
/* Whether every client is idle. */
bool sim_clients_idle(const struct sim *s);
/* Queues the final put and get of every register key. */
void sim_clients_final(struct sim *s);

/* Sends the current op's next attempt (client C is busy with it). */
void sim_client_send(struct sim *s, struct sim_client *c);
/* Starts op KIND of client C on SHARD for the key in C->op.kbuf (set by the
 * caller, with C->op.tops for SIM_TXN, after sim_client_reset_op): id,
 * deadline, target, then the first attempt. */
void sim_client_begin(struct sim *s, struct sim_client *c, int kind,
                      uint32_t shard, uint64_t deadline, bool final);
/* Clears C's op for a new one. */
void sim_client_reset_op(struct sim_client *c);
/* Ends C's op: the client is idle (a bank client starts its next step). */
void sim_client_end_op(struct sim *s, struct sim_client *c);

/* --- sim_bank.c ----------------------------------------------------------- */

#define SIM_BANK_START 100 /* an absent account holds this */
#define SIM_BANK_VALUE_MAX 16

/* Encodes BALANCE as an account value into BUF (SIM_BANK_VALUE_MAX bytes
 * at least): a tag and the balance, as sim_value_encode with a few pad
 * bytes that depend on the balance. Returns the length. */
size_t sim_bank_value(int64_t balance, unsigned char *buf);
/* Decodes an account value; -1 when no bank client could have written it. */
int sim_bank_decode(const void *buf, size_t len, int64_t *balance);

/* Builds the account keys over the shard tags. Returns 0 or -1. */
int sim_bank_keys(struct sim *s);
/* Starts a transfer or an audit on idle bank client C. */
void sim_bank_start(struct sim *s, struct sim_client *c);
/* Client C's final phase: audits until one commits. */
void sim_bank_final(struct sim *s, struct sim_client *c);
/* A settled answer (OK, ENOTFOUND, ECONFLICT) to C's current op. */
void sim_bank_answer(struct sim *s, struct sim_client *c, int from,
                     const Kv__Response *resp);
/* C's current op gave up (its deadline passed). */
void sim_bank_gave_up(struct sim *s, struct sim_client *c);
/* Whether the bank is settled: no node holds an intent, a participant
 * record or a transaction record, and every replica of a shard holds the
 * same account values; with tomb_gc, then no tombstone either, once the
 * clocks jumped past their keep time. With REPORT, fails the seed saying
 * what is left. */
bool sim_bank_settled(struct sim *s, bool report);
/* The end-of-seed check of the bank: the stored balances add up. */
void sim_bank_check_final(struct sim *s);
/* The bank scenario's fault, once per ms: crashes a node of a transaction
 * in flight. */
void sim_bank_faults(struct sim *s);
/* Node N reached failpoint NAME (replica_env.failpoint): maybe marks it
 * to crash once the current event is over. */
void sim_bank_failpoint(struct sim *s, struct sim_node *n, const char *name);

/* --- sim_counter.c -------------------------------------------------------- */

/* Put k writes k * SIM_COUNTER_EPOCH: a value tells the put it counts from
 * (the nearest multiple) and the increments since (the rest), as long as
 * fewer than half of it are made on one key. */
#define SIM_COUNTER_EPOCH 1000000

/* Builds the counter keys over the shard tags and their directions.
 * Returns 0 or -1. */
int sim_counter_keys(struct sim *s);
/* Starts an incr, a get or a put on idle counter client C. */
void sim_counter_start(struct sim *s, struct sim_client *c);
/* Queues the final ops of every counter key on the counter clients: a
 * get, an incr, a get, which must succeed. */
void sim_counter_plan_final(struct sim *s);
/* Starts client C's next final op. */
void sim_counter_final(struct sim *s, struct sim_client *c);
/* A settled answer (OK, ENOTFOUND, ECONFLICT) to C's current op. */
void sim_counter_answer(struct sim *s, struct sim_client *c, int from,
                        const Kv__Response *resp);
/* C's current op gave up (its deadline passed). */
void sim_counter_gave_up(struct sim *s, struct sim_client *c);
/* An answer from node index FROM to an op of C that is over: a late
 * answer to its last incr must repeat the first. */
void sim_counter_late(struct sim *s, struct sim_client *c, int from,
                      const Kv__Response *resp);
/* The end-of-seed checks of the counter history and of the stores. */
void sim_counter_check_final(struct sim *s);
/* Frees the counter history. */
void sim_counter_free(struct sim *s);

/* --- sim_check.c ---------------------------------------------------------- */

/* Election safety on node N: at most one leader per shard and term. */
void sim_check_leaders(struct sim *s, struct sim_node *n);
/* Clock readings: no node reads a peer's clock further ahead than it is;
 * FINAL (healthy network): none reads it more than a few delays behind. */
void sim_check_clocks(struct sim *s, bool final);
/* Commit safety on node N: its committed log entries agree with every
 * other node's. */
void sim_check_commits(struct sim *s, struct sim_node *n);
/* The log stored by node N, shard by shard, is one log: contiguous from
 * the snapshot point, terms never decreasing, none from the future. WHEN
 * names the moment in the failure message. */
void sim_check_store_log(struct sim *s, struct sim_node *n, const char *when);
/* Records that VALUE was seen with VERSION; fails when it was seen with
 * another one (a write applied twice). */
void sim_check_value_version(struct sim *s, uint64_t value, uint64_t version);
/* Reads user KEY of SHARD from node N's store: KV_OK with *VAL (malloc()ed,
 * the caller frees it), *VLEN and *VERSION; KV_ENOTFOUND; KV_ECORRUPT when
 * the record is not one the engine writes; or the store's error. */
int sim_store_record(struct sim_node *n, uint32_t shard, const void *key,
                     size_t klen, void **val, size_t *vlen, uint64_t *version);
/* Whether every member of every shard applied the same index. */
bool sim_converged(struct sim *s, bool report);
/* The end-of-seed checks: digests, final state, acknowledged writes,
 * linearizability. */
void sim_check_final(struct sim *s);
/* Frees what the checks allocated. */
void sim_check_free(struct sim *s);

/* --- sim.c: scenario hooks ------------------------------------------------ */

/* Node N took a write request for KEY and flushed; PROPOSALS_BEFORE is its
 * proposal count before it. The hook may crash N. */
void sim_scenario_request(struct sim *s, struct sim_node *n, const void *key,
                          size_t klen, uint64_t proposals_before);
/* A peer batch B for node N: WHEN 0 before replica_peer (return false to
 * drop it), 1 after replica_peer and before the flush (return false to skip
 * the flush: the hook crashed N). */
bool sim_scenario_peer(struct sim *s, struct sim_node *n,
                       const Kv__PeerBatch *b, int when);

/* --- values ----------------------------------------------------------------
 */

/* Encodes VALUE with PAD extra bytes into BUF (8 + PAD bytes). */
void sim_value_encode(uint64_t value, size_t pad, unsigned char *buf);
/* Decodes a value; returns -1 when the bytes are not one sim_value_encode
 * could have written. */
int sim_value_decode(const void *buf, size_t len, uint64_t *value);

/* The applied index of SHARD in node N's store (0 when none). */
uint64_t sim_store_applied(struct sim_node *n, uint32_t shard);
/* Reads the hard state of SHARD in node N's store. Returns 0 or -1. */
int sim_store_hardstate(struct sim_node *n, uint32_t shard, uint64_t *term,
                        uint64_t *commit, uint64_t *snap_index);

#endif
