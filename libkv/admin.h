/*
 * admin - internal calls of libkv for kvclient and tests (not in kv.h).
 *
 * They expose the cluster layout and per-node status. They are not part of
 * the public API and may change; apps use kv.h only.
 */
#ifndef KV_ADMIN_H
#define KV_ADMIN_H

#include <stddef.h>
#include <stdint.h>

#include "kv.h"
#include "kv.pb-c.h"

/* Whether DB is an embedded handle. */
int admin_is_embedded(const kv *db);

/* The number of nodes DB knows (1 for an embedded handle). */
size_t admin_node_count(const kv *db);

/* Id and address of node I (0 <= I < admin_node_count). Embedded: id 0 and
 * the directory. The string belongs to DB. */
uint32_t admin_node_id(const kv *db, size_t i);
const char *admin_node_addr(const kv *db, size_t i);

/* Asks node I for its status, waiting at most TIMEOUT_MS (0 = the handle's
 * default). On KV_OK *out is freed with admin_status_free(). Returns
 * KV_ETIMEDOUT when the node does not answer. */
int admin_status(kv *db, size_t i, uint32_t timeout_ms, Kv__StatusResult **out);
void admin_status_free(Kv__StatusResult *st);

/* Sends the raw bytes BUF to node I and waits up to TIMEOUT_MS for one frame
 * in reply, decoded into *out (free with wire_free). For robustness tests. */
int admin_raw(kv *db, size_t i, const void *buf, size_t len,
              uint32_t timeout_ms, Kv__Envelope **out);

#endif
