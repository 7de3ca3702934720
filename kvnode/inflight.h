/*
 * inflight - the requests a node holds unanswered, per client connection.
 *
 * A node answers most requests later than it reads them: writes once
 * committed, linearizable reads once their read index is applied, calls
 * once evaluated. Each of them holds memory, so one connection may hold at
 * most CAP of them (cluster.conf max_inflight_per_client); the node
 * answers more at once with KV_EUNAVAILABLE, and keeps serving every other
 * connection. A connection is named by its ROUTER routing id.
 *
 * A request leaves the table when it is answered (inflight_done), or when
 * it expires: past the time its client stopped waiting plus a margin, in
 * case the node dropped it without an answer (inflight_expire). Pure data:
 * no clock (times are given), no socket.
 */
#ifndef KV_INFLIGHT_H
#define KV_INFLIGHT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct inflight;

/* A table allowing CAP (>= 1) requests per connection, or NULL when out of
 * memory. Free it with inflight_free(). */
struct inflight *inflight_new(uint32_t cap);

/* Frees T. NULL is a no-op. */
void inflight_free(struct inflight *t);

/* Records request REQ_ID of connection ID (IDLEN bytes, 1..255) as
 * unanswered until EXPIRES; BATCHED: it came in a Batch frame, so its
 * answer may go in one (kv.proto). Returns KV_OK; KV_EUNAVAILABLE when the
 * connection already holds CAP requests; KV_EINVAL for a bad id; KV_ENOMEM.
 * Only KV_OK records anything. */
int inflight_add(struct inflight *t, const void *id, size_t idlen,
                 uint64_t req_id, uint64_t expires, bool batched);

/* Request REQ_ID of connection ID was answered: forgets one record of it.
 * Returns whether there was one, and then (unless BATCHED is NULL) sets
 * *BATCHED as it was given to inflight_add. */
bool inflight_done(struct inflight *t, const void *id, size_t idlen,
                   uint64_t req_id, bool *batched);

/* Forgets every request whose EXPIRES is before NOW, and the connections
 * left with none. Returns how many requests it forgot. */
size_t inflight_expire(struct inflight *t, uint64_t now);

/* Requests recorded for connection ID. */
size_t inflight_count(const struct inflight *t, const void *id, size_t idlen);

/* Connections with at least one request recorded. */
size_t inflight_connections(const struct inflight *t);

#endif
