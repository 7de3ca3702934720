/*
 * wire - checked decoding and encoding of protocol frames (see wire.h).
 * protobuf-c checks every length against the buffer; this module adds the
 * frame size limit, the protocol version and the presence of a body.
 */
#include "wire.h"

#include <stdio.h>
#include <stdlib.h>

#include "kv.h"

int wire_decode(const void *buf, size_t len, size_t max_len, Kv__Envelope **out,
                char *err, size_t errlen)
{
    if (len > max_len) {
        snprintf(err, errlen, "frame of %zu bytes over the limit of %zu", len,
                 max_len);
        return KV_ETOOBIG;
    }
    Kv__Envelope *env = kv__envelope__unpack(NULL, len, buf);
    if (!env) {
        snprintf(err, errlen, "malformed frame (%zu bytes)", len);
        return KV_EPROTO;
    }
    if (env->version != WIRE_VERSION) {
        snprintf(err, errlen, "protocol version %u not supported (this is %u)",
                 env->version, WIRE_VERSION);
        goto bad;
    }
    switch (env->body_case) {
    case KV__ENVELOPE__BODY_REQUEST:
        if (env->request->op_case == KV__REQUEST__OP__NOT_SET) {
            snprintf(err, errlen, "request without an operation");
            goto bad;
        }
        break;
    case KV__ENVELOPE__BODY_RESPONSE:
    case KV__ENVELOPE__BODY_PEER:
    case KV__ENVELOPE__BODY_BATCH:
        break;
    default:
        snprintf(err, errlen, "frame without a body");
        goto bad;
    }
    *out = env;
    return KV_OK;
bad:
    kv__envelope__free_unpacked(env, NULL);
    return KV_EPROTO;
}

void wire_free(Kv__Envelope *env)
{
    if (env)
        kv__envelope__free_unpacked(env, NULL);
}

static int encode(Kv__Envelope *env, void **buf, size_t *len)
{
    size_t n = kv__envelope__get_packed_size(env);
    void *p = malloc(n ? n : 1);
    if (!p)
        return KV_ENOMEM;
    kv__envelope__pack(env, p);
    *buf = p;
    *len = n;
    return KV_OK;
}

int wire_encode_request(const Kv__Request *req, void **buf, size_t *len)
{
    Kv__Envelope env = KV__ENVELOPE__INIT;
    env.version = WIRE_VERSION;
    env.body_case = KV__ENVELOPE__BODY_REQUEST;
    env.request = (Kv__Request *)req;
    return encode(&env, buf, len);
}

int wire_encode_response(const Kv__Response *resp, void **buf, size_t *len)
{
    Kv__Envelope env = KV__ENVELOPE__INIT;
    env.version = WIRE_VERSION;
    env.body_case = KV__ENVELOPE__BODY_RESPONSE;
    env.response = (Kv__Response *)resp;
    return encode(&env, buf, len);
}

int wire_encode_peer(const Kv__PeerBatch *batch, void **buf, size_t *len)
{
    Kv__Envelope env = KV__ENVELOPE__INIT;
    env.version = WIRE_VERSION;
    env.body_case = KV__ENVELOPE__BODY_PEER;
    env.peer = (Kv__PeerBatch *)batch;
    return encode(&env, buf, len);
}

int wire_encode_batch(ProtobufCBinaryData *frames, size_t n, void **buf,
                      size_t *len)
{
    Kv__Batch b = KV__BATCH__INIT;
    b.n_frames = n;
    b.frames = frames;
    Kv__Envelope env = KV__ENVELOPE__INIT;
    env.version = WIRE_VERSION;
    env.body_case = KV__ENVELOPE__BODY_BATCH;
    env.batch = &b;
    return encode(&env, buf, len);
}
