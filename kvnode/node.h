/*
 * node - one kvnode: the event loop, its socket, its store and engine.
 *
 * One thread owns everything: a single zmq_poll loop reads every ready
 * request, evaluates reads at once and stages writes in the engine, commits
 * all staged writes in one synced batch (group commit), and only then
 * answers the writes. All loop state lives in struct node so that a later
 * version can run several loops (one per group of shards) side by side.
 */
#ifndef KV_NODE_H
#define KV_NODE_H

#include <stddef.h>
#include <stdint.h>

struct conf;
struct node;

/* Opens node ID of CONF (which the node borrows until node_close): checks
 * and opens its data directory, binds its address. On KV_OK *out is a node
 * to node_close(). On error ERR holds the reason: KV_ECORRUPT when the data
 * directory is damaged (with LevelDB's words when it found the damage),
 * KV_EINVAL for a node or data directory that does not fit CONF. */
int node_open(const struct conf *conf, uint32_t id, struct node **out,
              char *err, size_t errlen);

/* Protected mode: with [security] curve off, node ID may listen only on a
 * loopback address (localhost, 127.0.0.0/8, ::1) unless the file says
 * insecure = yes. Returns KV_OK, or KV_EINVAL with the reason, and what to
 * set, in ERR. node_open() checks it too; main() asks first, before it
 * touches the data directory. */
int node_check_protected(const struct conf *conf, uint32_t id, char *err,
                         size_t errlen);

/* Serves until node_stop() is called (from a signal handler: it only writes
 * to a pipe). Returns KV_OK after a clean stop: every acknowledged write is
 * durable. Returns KV_ECORRUPT as soon as the store met damaged data
 * (node_damage says what): the node has served nothing since but
 * KV_ECORRUPT answers. Other errors (KV_EIO: the store failed) also stop
 * it. */
int node_run(struct node *n);

/* What LevelDB said of the damage the node met, or NULL (a string owned by
 * N, valid until node_close). */
const char *node_damage(const struct node *n);

/* Asks a running node to stop. Async-signal-safe. */
void node_stop(struct node *n);

/* Closes everything the node owns. NULL is a no-op. */
void node_close(struct node *n);

#endif
