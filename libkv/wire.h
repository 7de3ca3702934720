/*
 * wire - encoding and checked decoding of protocol frames (kv.proto).
 *
 * Every frame is one kv.Envelope. wire_decode() checks the length against
 * the limit and lets protobuf-c bounds-check every field; it never trusts
 * input. Transport (sockets) is not here: this module only turns bytes into
 * messages and back.
 */
#ifndef KV_WIRE_H
#define KV_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "kv.pb-c.h"

#define WIRE_VERSION 1

/* Decodes BUF (LEN bytes, at most MAX_LEN) into a new envelope freed with
 * wire_free(). Returns KV_ETOOBIG, or KV_EPROTO for a malformed frame, a
 * missing body or an unknown protocol version (detail in ERR). */
int wire_decode(const void *buf, size_t len, size_t max_len, Kv__Envelope **out,
                char *err, size_t errlen);

/* Frees a decoded envelope. NULL is a no-op. */
void wire_free(Kv__Envelope *env);

/* Encodes a request or response into a malloc()ed buffer (free() it).
 * Returns KV_ENOMEM. */
int wire_encode_request(const Kv__Request *req, void **buf, size_t *len);
int wire_encode_response(const Kv__Response *resp, void **buf, size_t *len);
int wire_encode_peer(const Kv__PeerBatch *batch, void **buf, size_t *len);

/* Encodes N encoded envelopes (FRAMES, borrowed) as one Batch envelope into
 * a malloc()ed buffer. Returns KV_ENOMEM. */
int wire_encode_batch(ProtobufCBinaryData *frames, size_t n, void **buf,
                      size_t *len);

#endif
