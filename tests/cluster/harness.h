/*
 * harness - real kvnode processes on 127.0.0.1 for the cluster tests.
 *
 * A test binary calls harness_init() in main() before running its suites and
 * harness_fini() after. Everything a test creates lives under one root
 * directory (mkdtemp "/tmp/kvtest-XXXXXX") that harness_fini() removes, so
 * nothing is left behind even when Check's fork mode ends a failed test with
 * _exit() before its teardown ran.
 *
 * cluster_start() writes DIR/cluster.conf with free ports, starts one
 * `$KVNODE -c DIR/cluster.conf -n ID --log-level warn` per node (stderr to
 * DIR/node-ID.log) and waits until every node answers a status request.
 * Nodes are numbered by index 0..n-1; node index i has id i+1.
 *
 * Rules the harness keeps: it only signals PIDs it started itself, and only
 * from the process that started them (a Check fork child never touches the
 * nodes of its parent); every wait is bounded in time; every node is made
 * to die with the process that started it (so a crashed test runner leaves
 * no node running). Functions return 0 or a negative KV_E* code and print
 * the reason of a failure on stderr.
 */
#ifndef KV_TEST_HARNESS_H
#define KV_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CLUSTER_MAX_NODES 16

struct cluster;

/* Options of cluster_start_opts(). Zero-initialise; NULL means defaults. */
struct cluster_opts {
    const char *name;  /* cluster name; NULL = "kvtest" */
    const char *extra; /* extra global lines for cluster.conf ("k = v\n"...) */
    const char *log_level; /* kvnode --log-level; NULL = $KV_TEST_LOG_LEVEL
                              or "warn" */
    /* CurveZMQ: a key pair per node and one for the tests' client, each
     * made by `$KVNODE keygen` in the cluster's directory, and a
     * [security] section with curve = on and the client's public key
     * (cluster_client_key() names its key file). */
    int curve;
    const char *security; /* more lines for [security] ("k = v\n"...) */
    const char *host;     /* the nodes' host; NULL = 127.0.0.1 (ports are probed
                             on 127.0.0.1) */
};

/* --- the test binary ------------------------------------------------------ */

/* Makes the root temp directory, reads $KVNODE and installs an atexit hook
 * that stops any cluster still running. Call once at the start of main(),
 * before srunner_run_all(). Returns 0 or KV_EIO. */
int harness_init(void);

/* Stops every cluster still running, prints the node logs left under the
 * root when FAILED (the number of failed tests) is not 0, and removes the
 * root directory. Returns EXIT_SUCCESS when FAILED is 0, else EXIT_FAILURE:
 * main() can return it. */
int harness_fini(int failed);

/* The kvnode binary: $KVNODE, or "build/kvnode". */
const char *harness_kvnode(void);

/* Milliseconds of a monotonic clock. */
int64_t harness_now_ms(void);

/* Sleeps MS milliseconds. */
void harness_sleep_ms(int ms);

/* Makes a new empty directory under the root and writes its path into BUF
 * (LEN bytes). Remove it with harness_rmtree(), or leave it to
 * harness_fini(). Returns 0, KV_EINVAL (BUF too small) or KV_EIO. */
int harness_tempdir(char *buf, size_t len);

/* Removes PATH and everything below it. Refuses (KV_EINVAL) any path that is
 * not inside a directory this harness made. Returns 0 or KV_EIO. */
int harness_rmtree(const char *path);

/* Writes LEN bytes of TEXT to the file PATH (created or truncated).
 * Returns 0 or KV_EIO. */
int harness_write_file(const char *path, const char *text, size_t len);

/* Runs `$KVNODE ARGS...` (ARGS ends with NULL) in the foreground for at most
 * TIMEOUT_MS. *exit_code gets its exit status, 128+N when signal N ended it.
 * Its stdout and stderr (truncated, NUL-terminated) go into OUT and ERR when
 * not NULL. Returns 0, or KV_ETIMEDOUT when it had to be killed (it is
 * killed and reaped), or KV_EIO. */
int harness_run_kvnode(const char *const *args, int timeout_ms, int *exit_code,
                       char *out, size_t outlen, char *err, size_t errlen);

/* The same for any program: ARGV[0] is its path, ARGV ends with NULL (at
 * most 31 entries). */
int harness_run(const char *const *argv, int timeout_ms, int *exit_code,
                char *out, size_t outlen, char *err, size_t errlen);

/* --- a cluster ------------------------------------------------------------ */

/* Starts NNODES (1..CLUSTER_MAX_NODES) kvnode processes of a new cluster
 * with SHARDS shards and REPLICAS replicas and waits (at most 15 s) until
 * every node answers a status request. On 0 *out is a cluster to
 * cluster_stop(); on failure nothing is left running. */
int cluster_start(struct cluster **out, int nnodes, uint32_t shards,
                  uint32_t replicas);

/* The same with options (O may be NULL). */
int cluster_start_opts(struct cluster **out, int nnodes, uint32_t shards,
                       uint32_t replicas, const struct cluster_opts *o);

/* Stops every running node (SIGTERM, then SIGKILL after 10 s), reaps it,
 * keeps the node logs under the root for harness_fini() and removes the
 * cluster's directory. Returns 0 when every node that was running exited
 * with status 0 and none had died unexpectedly before, else KV_EINTERNAL.
 * NULL is a no-op (returns 0). Frees C. */
int cluster_stop(struct cluster *c);

/* Sends SIG to node I and waits (at most 10 s, then SIGKILL) until it ends.
 * Returns 0 when it ended as expected: by SIGKILL for SIGKILL, with exit
 * status 0 for SIGTERM/SIGINT. Else KV_EINTERNAL (the status is printed).
 * KV_EINVAL when node I is not running. */
int cluster_kill(struct cluster *c, int i, int sig);

/* Starts node I again (it must not be running) with the same configuration
 * and data, and waits (at most 15 s) until it answers a status request.
 * Returns 0, KV_EINVAL, KV_EIO or KV_ETIMEDOUT. */
int cluster_restart_node(struct cluster *c, int i);

/* Starts node I again without waiting for it. Returns 0, KV_EINVAL, KV_EIO. */
int cluster_spawn_node(struct cluster *c, int i);

/* The same with EXTRA arguments for kvnode (NULL-terminated, at most 8;
 * e.g. "--rebuild"). */
int cluster_spawn_node_args(struct cluster *c, int i, const char *const *extra);

/* Waits at most TIMEOUT_MS for node I to exit by itself, as a test expects
 * (it is then not reported as an unexpected death): *exit_code (may be
 * NULL) gets its exit status, 128+N when signal N ended it. Returns 0,
 * KV_ETIMEDOUT while it still runs, KV_EINVAL when it is not running (or
 * a harness call already reaped it as an unexpected death). */
int cluster_wait_exit(struct cluster *c, int i, int timeout_ms, int *exit_code);

/* Waits at most TIMEOUT_MS until every running node answers a status
 * request in which every shard it holds has a known leader. Returns 0,
 * KV_ETIMEDOUT, or KV_EUNAVAILABLE when a node died meanwhile. */
int cluster_wait_ready(struct cluster *c, int timeout_ms);

/* Rewrites cluster.conf, changing the cluster name to NAME (the nodes'
 * addresses and data_dir stay). Running nodes are not told. Returns 0 or
 * KV_EIO. */
int cluster_set_name(struct cluster *c, const char *name);

/* Whether node I is running as far as the harness knows (it reaps a node
 * that has exited and remembers that as unexpected). */
int cluster_node_running(struct cluster *c, int i);

/* The key file of the tests' client of a curve cluster (pass it as
 * kv_open_opts.key_file), or NULL when curve is off. */
const char *cluster_client_key(const struct cluster *c);

/* Accessors. Strings belong to C. */
const char *cluster_conf_path(const struct cluster *c);
const char *cluster_dir(const struct cluster *c);
const char *cluster_node_addr(const struct cluster *c, int i); /* tcp://... */
uint16_t cluster_node_port(const struct cluster *c, int i);
uint32_t cluster_node_id(const struct cluster *c, int i);
pid_t cluster_node_pid(const struct cluster *c, int i); /* 0: not running */
int cluster_nnodes(const struct cluster *c);
uint32_t cluster_shards(const struct cluster *c);

/* Prints the last bytes of node I's log on stderr. */
void cluster_dump_log(const struct cluster *c, int i);

/* --- raw requests --------------------------------------------------------- */

/* Encodes a frame of a transaction putting VAL at K[0] and K[1], with the
 * session CID (CIDLEN bytes) / SEQ, request id ID and TIMEOUT_MS, into
 * *BUF (free() it); returns its length. */
size_t harness_encode_txn_puts(char k[][32], const char *val, const void *cid,
                               size_t cidlen, uint64_t seq, uint64_t id,
                               uint32_t timeout_ms, void **buf);

#endif
