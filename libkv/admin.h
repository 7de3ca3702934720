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

/* --- pipelined requests (cluster mode), for load generators -------------
 *
 * A pipeline keeps up to SLOTS operations in flight on one handle, each slot
 * a client of its own (its own session id and write numbers, so retries
 * stay exactly-once). Operations are routed, redirected and retried like
 * kv_get/kv_put; admin_poll returns the ones that finished. */

enum admin_op_kind { ADMIN_GET, ADMIN_PUT };

struct admin_op {
    enum admin_op_kind kind;
    const void *key; /* must stay valid until the op is done */
    size_t klen;
    const void *val; /* ADMIN_PUT */
    size_t vlen;
    uint32_t timeout_ms; /* 0: the handle's default */
    int rc;              /* out: KV_OK or an error */
    uint64_t version;    /* out */
};

/* Prepares SLOTS slots on DB. KV_EINVAL for an embedded handle. */
int admin_pipeline(kv *db, unsigned slots);

/* Starts OP on a free SLOT (0 <= SLOT < slots, not busy). The request
 * leaves at the next admin_poll, in one frame with the others queued for
 * the same node. */
int admin_submit(kv *db, unsigned slot, struct admin_op *op);

/* Waits up to TIMEOUT_MS for operations to finish, retrying what needs it;
 * writes the slots that finished into DONE (at most MAX) and returns their
 * number (0 on timeout), or a negative code. Pass MAX >= slots: an answer
 * that finds no room in DONE is dropped, and its request goes again only
 * after its attempt timeout (answers come several to a frame). */
int admin_poll(kv *db, int timeout_ms, unsigned *done, size_t max);

#endif
