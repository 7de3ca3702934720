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
 * to node_close(). On error ERR holds the reason. */
int node_open(const struct conf *conf, uint32_t id, struct node **out,
              char *err, size_t errlen);

/* Serves until node_stop() is called (from a signal handler: it only writes
 * to a pipe). Returns KV_OK after a clean stop: every acknowledged write is
 * durable. */
int node_run(struct node *n);

/* Asks a running node to stop. Async-signal-safe. */
void node_stop(struct node *n);

/* Closes everything the node owns. NULL is a no-op. */
void node_close(struct node *n);

#endif
