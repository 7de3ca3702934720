/*
 * check_wire - unit tests of frame encoding and checked decoding
 * (libkv/wire.c).
 *
 * Round trips of every request and response shape, the frame size limit,
 * the protocol version and body checks, and hostile input: random bytes,
 * every truncation and byte flips of valid frames must decode into a valid
 * envelope or fail with KV_EPROTO, never crash (run under ASan to see).
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"
#include "wire.h"

Suite *wire_suite(void);

#define MAX_FRAME (1u << 20)

/* A small deterministic generator (xorshift64*) for reproducible input. */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

static ProtobufCBinaryData bytes(const void *p, size_t n)
{
    ProtobufCBinaryData b = {n, (uint8_t *)p};
    return b;
}

static void expect_bytes(ProtobufCBinaryData got, const void *want, size_t n)
{
    ck_assert_uint_eq(got.len, n);
    if (n)
        ck_assert_mem_eq(got.data, want, n);
}

/* Decodes BUF, asserting success; returns the envelope to wire_free(). */
static Kv__Envelope *decode_ok(const void *buf, size_t len)
{
    char err[256] = "";
    Kv__Envelope *env = NULL;
    int rc = wire_decode(buf, len, MAX_FRAME, &env, err, sizeof err);

    ck_assert_msg(rc == KV_OK, "decode failed with %d: %s", rc, err);
    ck_assert_ptr_nonnull(env);
    ck_assert_uint_eq(env->version, WIRE_VERSION);
    return env;
}

/* Asserts that BUF fails with KV_EPROTO and an error containing WORD. */
static void expect_proto(const void *buf, size_t len, const char *word)
{
    char err[256] = "";
    Kv__Envelope *env = NULL;
    int rc = wire_decode(buf, len, MAX_FRAME, &env, err, sizeof err);

    ck_assert_msg(rc == KV_EPROTO, "expected KV_EPROTO, got %d", rc);
    ck_assert_msg(strstr(err, word) != NULL, "expected '%s' in '%s'", word,
                  err);
}

/* Packs ENV as is (any version, any body) into a malloc()ed buffer. */
static void *pack_raw(const Kv__Envelope *env, size_t *len)
{
    size_t n = kv__envelope__get_packed_size(env);
    void *buf = malloc(n ? n : 1);

    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(kv__envelope__pack(env, buf), n);
    *len = n;
    return buf;
}

/* Checks what a successful decode promises about any frame. */
static void expect_valid_envelope(const Kv__Envelope *env)
{
    ck_assert_uint_eq(env->version, WIRE_VERSION);
    switch (env->body_case) {
    case KV__ENVELOPE__BODY_REQUEST:
        ck_assert_ptr_nonnull(env->request);
        ck_assert_int_ne(env->request->op_case, KV__REQUEST__OP__NOT_SET);
        break;
    case KV__ENVELOPE__BODY_RESPONSE:
        ck_assert_ptr_nonnull(env->response);
        break;
    case KV__ENVELOPE__BODY_PEER:
        ck_assert_ptr_nonnull(env->peer);
        break;
    default:
        ck_abort_msg("decoded an envelope without a body (case %d)",
                     (int)env->body_case);
    }
}

/* Decodes LEN bytes of BUF and asserts the outcome is a valid envelope or
 * KV_EPROTO. Returns 1 when it decoded. */
static int decode_any(const void *buf, size_t len)
{
    char err[256] = "";
    Kv__Envelope *env = NULL;
    int rc = wire_decode(buf, len, MAX_FRAME, &env, err, sizeof err);

    ck_assert_msg(rc == KV_OK || rc == KV_EPROTO,
                  "decode of %zu bytes returned %d", len, rc);
    if (rc != KV_OK) {
        ck_assert_msg(err[0] != '\0', "KV_EPROTO without a message");
        return 0;
    }
    ck_assert_ptr_nonnull(env);
    expect_valid_envelope(env);
    wire_free(env);
    return 1;
}

/* A put request with binary key and value, encoded into *len bytes. */
static void *sample_put_frame(size_t *len)
{
    static const unsigned char key[] = {'k', 0, 0xff, '{', 't', '}'};
    static const unsigned char val[] = {0, 1, 2, 3, 0xfe, 0xff, 'v'};
    Kv__PutRequest put = KV__PUT_REQUEST__INIT;
    Kv__Request req = KV__REQUEST__INIT;
    void *buf = NULL;

    put.key = bytes(key, sizeof key);
    put.value = bytes(val, sizeof val);
    put.if_version = 0x0102030405060708ull;
    put.if_absent = 1;
    req.id = UINT64_MAX;
    req.timeout_ms = 5000;
    req.op_case = KV__REQUEST__OP_PUT;
    req.put = &put;
    ck_assert_int_eq(wire_encode_request(&req, &buf, len), KV_OK);
    return buf;
}

/* A scan response with three entries and more = true. */
static void *sample_scan_response_frame(size_t *len)
{
    Kv__Entry e[3] = {KV__ENTRY__INIT, KV__ENTRY__INIT, KV__ENTRY__INIT};
    Kv__Entry *ep[3] = {&e[0], &e[1], &e[2]};
    Kv__ScanResult scan = KV__SCAN_RESULT__INIT;
    Kv__Response resp = KV__RESPONSE__INIT;
    void *buf = NULL;

    e[0].key = bytes("a", 1);
    e[0].value = bytes("1", 1);
    e[0].version = 1;
    e[1].key = bytes("b\0c", 3);
    e[1].value = bytes("", 0);
    e[1].version = 300;
    e[2].key = bytes("zz", 2);
    e[2].value = bytes("\xff\xfe", 2);
    e[2].version = UINT64_MAX;
    scan.n_entries = 3;
    scan.entries = ep;
    scan.more = 1;
    resp.id = 77;
    resp.result_case = KV__RESPONSE__RESULT_SCAN;
    resp.scan = &scan;
    ck_assert_int_eq(wire_encode_response(&resp, &buf, len), KV_OK);
    return buf;
}

/* ---- round trips ------------------------------------------------------ */

START_TEST(a_put_request_round_trips)
{
    size_t len = 0;
    void *buf = sample_put_frame(&len);
    Kv__Envelope *env = decode_ok(buf, len);

    ck_assert_int_eq(env->body_case, KV__ENVELOPE__BODY_REQUEST);
    Kv__Request *r = env->request;
    ck_assert_uint_eq(r->id, UINT64_MAX);
    ck_assert_uint_eq(r->timeout_ms, 5000);
    ck_assert_int_eq(r->op_case, KV__REQUEST__OP_PUT);
    expect_bytes(r->put->key, "k\0\xff{t}", 6);
    expect_bytes(r->put->value, "\0\1\2\3\xfe\xffv", 7);
    ck_assert_uint_eq(r->put->if_version, 0x0102030405060708ull);
    ck_assert(r->put->if_absent);
    wire_free(env);
    free(buf);
}
END_TEST

START_TEST(get_delete_scan_and_status_requests_round_trip)
{
    Kv__GetRequest get = KV__GET_REQUEST__INIT;
    Kv__DeleteRequest del = KV__DELETE_REQUEST__INIT;
    Kv__ScanRequest scan = KV__SCAN_REQUEST__INIT;
    Kv__StatusRequest status = KV__STATUS_REQUEST__INIT;
    Kv__Request req = KV__REQUEST__INIT;
    Kv__Envelope *env;
    void *buf = NULL;
    size_t len = 0;

    get.key = bytes("g\0k", 3);
    get.stale = 1;
    req.id = 1;
    req.op_case = KV__REQUEST__OP_GET;
    req.get = &get;
    ck_assert_int_eq(wire_encode_request(&req, &buf, &len), KV_OK);
    env = decode_ok(buf, len);
    ck_assert_int_eq(env->request->op_case, KV__REQUEST__OP_GET);
    ck_assert_uint_eq(env->request->id, 1);
    expect_bytes(env->request->get->key, "g\0k", 3);
    ck_assert(env->request->get->stale);
    wire_free(env);
    free(buf);

    del.key = bytes("d", 1);
    del.if_version = 9;
    req.id = 2;
    req.op_case = KV__REQUEST__OP_DEL;
    req.del = &del;
    ck_assert_int_eq(wire_encode_request(&req, &buf, &len), KV_OK);
    env = decode_ok(buf, len);
    ck_assert_int_eq(env->request->op_case, KV__REQUEST__OP_DEL);
    expect_bytes(env->request->del->key, "d", 1);
    ck_assert_uint_eq(env->request->del->if_version, 9);
    wire_free(env);
    free(buf);

    scan.shard = 4095;
    scan.start = bytes("a", 1);
    scan.end = bytes("z\0", 2);
    scan.prefix = bytes("p", 1);
    scan.after = bytes("", 0);
    scan.has_after = 1;
    scan.limit = 100;
    req.id = 3;
    req.op_case = KV__REQUEST__OP_SCAN;
    req.scan = &scan;
    ck_assert_int_eq(wire_encode_request(&req, &buf, &len), KV_OK);
    env = decode_ok(buf, len);
    Kv__ScanRequest *s = env->request->scan;
    ck_assert_int_eq(env->request->op_case, KV__REQUEST__OP_SCAN);
    ck_assert_uint_eq(s->shard, 4095);
    expect_bytes(s->start, "a", 1);
    expect_bytes(s->end, "z\0", 2);
    expect_bytes(s->prefix, "p", 1);
    ck_assert_uint_eq(s->after.len, 0);
    ck_assert(s->has_after);
    ck_assert_uint_eq(s->limit, 100);
    wire_free(env);
    free(buf);

    /* A status request has no fields: the op alone must survive. */
    req.id = 4;
    req.op_case = KV__REQUEST__OP_STATUS;
    req.status = &status;
    ck_assert_int_eq(wire_encode_request(&req, &buf, &len), KV_OK);
    env = decode_ok(buf, len);
    ck_assert_int_eq(env->request->op_case, KV__REQUEST__OP_STATUS);
    ck_assert_uint_eq(env->request->id, 4);
    wire_free(env);
    free(buf);
}
END_TEST

START_TEST(an_error_response_round_trips_with_its_redirect)
{
    Kv__Response resp = KV__RESPONSE__INIT;
    void *buf = NULL;
    size_t len = 0;

    resp.id = 12345;
    resp.code = KV_ENOTLEADER;
    resp.message = "not the leader of shard 3";
    resp.leader_id = 2;
    resp.leader_addr = "tcp://127.0.0.1:7102";
    ck_assert_int_eq(wire_encode_response(&resp, &buf, &len), KV_OK);
    Kv__Envelope *env = decode_ok(buf, len);
    ck_assert_int_eq(env->body_case, KV__ENVELOPE__BODY_RESPONSE);
    Kv__Response *r = env->response;
    ck_assert_uint_eq(r->id, 12345);
    ck_assert_int_eq(r->code, KV_ENOTLEADER);
    ck_assert_str_eq(r->message, "not the leader of shard 3");
    ck_assert_uint_eq(r->leader_id, 2);
    ck_assert_str_eq(r->leader_addr, "tcp://127.0.0.1:7102");
    /* An error carries no result, and that is a valid response. */
    ck_assert_int_eq(r->result_case, KV__RESPONSE__RESULT__NOT_SET);
    wire_free(env);
    free(buf);
}
END_TEST

START_TEST(every_negative_code_round_trips)
{
    for (int code = KV_EINTERNAL; code <= KV_OK; code++) {
        Kv__Response resp = KV__RESPONSE__INIT;
        void *buf = NULL;
        size_t len = 0;

        resp.code = code;
        ck_assert_int_eq(wire_encode_response(&resp, &buf, &len), KV_OK);
        Kv__Envelope *env = decode_ok(buf, len);
        ck_assert_int_eq(env->response->code, code);
        wire_free(env);
        free(buf);
    }
}
END_TEST

START_TEST(get_write_and_scan_results_round_trip)
{
    Kv__GetResult get = KV__GET_RESULT__INIT;
    Kv__WriteResult write = KV__WRITE_RESULT__INIT;
    Kv__Response resp = KV__RESPONSE__INIT;
    Kv__Envelope *env;
    void *buf = NULL;
    size_t len = 0;

    get.value = bytes("\0value\0", 7);
    get.version = 42;
    resp.id = 5;
    resp.result_case = KV__RESPONSE__RESULT_GET;
    resp.get = &get;
    ck_assert_int_eq(wire_encode_response(&resp, &buf, &len), KV_OK);
    env = decode_ok(buf, len);
    ck_assert_int_eq(env->response->result_case, KV__RESPONSE__RESULT_GET);
    expect_bytes(env->response->get->value, "\0value\0", 7);
    ck_assert_uint_eq(env->response->get->version, 42);
    wire_free(env);
    free(buf);

    write.version = 1ull << 40;
    resp.result_case = KV__RESPONSE__RESULT_WRITE;
    resp.write = &write;
    ck_assert_int_eq(wire_encode_response(&resp, &buf, &len), KV_OK);
    env = decode_ok(buf, len);
    ck_assert_int_eq(env->response->result_case, KV__RESPONSE__RESULT_WRITE);
    ck_assert_uint_eq(env->response->write->version, 1ull << 40);
    wire_free(env);
    free(buf);

    buf = sample_scan_response_frame(&len);
    env = decode_ok(buf, len);
    Kv__ScanResult *s = env->response->scan;
    ck_assert_int_eq(env->response->result_case, KV__RESPONSE__RESULT_SCAN);
    ck_assert_uint_eq(env->response->id, 77);
    ck_assert_uint_eq(s->n_entries, 3);
    expect_bytes(s->entries[0]->key, "a", 1);
    expect_bytes(s->entries[0]->value, "1", 1);
    ck_assert_uint_eq(s->entries[0]->version, 1);
    expect_bytes(s->entries[1]->key, "b\0c", 3);
    ck_assert_uint_eq(s->entries[1]->value.len, 0);
    ck_assert_uint_eq(s->entries[1]->version, 300);
    expect_bytes(s->entries[2]->key, "zz", 2);
    expect_bytes(s->entries[2]->value, "\xff\xfe", 2);
    ck_assert_uint_eq(s->entries[2]->version, UINT64_MAX);
    ck_assert(s->more);
    wire_free(env);
    free(buf);
}
END_TEST

START_TEST(a_status_result_round_trips)
{
    Kv__NodeInfo n1 = KV__NODE_INFO__INIT, n2 = KV__NODE_INFO__INIT;
    Kv__NodeInfo *nodes[2] = {&n1, &n2};
    Kv__ShardInfo si = KV__SHARD_INFO__INIT;
    Kv__ShardInfo *infos[1] = {&si};
    Kv__StatusResult st = KV__STATUS_RESULT__INIT;
    Kv__Response resp = KV__RESPONSE__INIT;
    void *buf = NULL;
    size_t len = 0;

    n1.id = 1;
    n1.address = "tcp://127.0.0.1:7101";
    n2.id = 2;
    n2.address = "tcp://127.0.0.1:7102";
    si.shard = 7;
    si.leader = 2;
    si.keys = 1000;
    si.applied = 5000;
    si.local = 1;
    st.cluster = "local";
    st.node_id = 2;
    st.shards = 8;
    st.replicas = 3;
    st.n_nodes = 2;
    st.nodes = nodes;
    st.n_shard_info = 1;
    st.shard_info = infos;
    st.uptime_ms = 123456;
    st.max_key_bytes = 4096;
    st.max_value_bytes = 1048576;
    st.max_message_bytes = 4194304;
    st.requests = 99;
    st.bad_frames = 3;
    resp.result_case = KV__RESPONSE__RESULT_STATUS;
    resp.status = &st;
    ck_assert_int_eq(wire_encode_response(&resp, &buf, &len), KV_OK);

    Kv__Envelope *env = decode_ok(buf, len);
    Kv__StatusResult *r = env->response->status;
    ck_assert_int_eq(env->response->result_case, KV__RESPONSE__RESULT_STATUS);
    ck_assert_str_eq(r->cluster, "local");
    ck_assert_uint_eq(r->node_id, 2);
    ck_assert_uint_eq(r->shards, 8);
    ck_assert_uint_eq(r->replicas, 3);
    ck_assert_uint_eq(r->n_nodes, 2);
    ck_assert_uint_eq(r->nodes[1]->id, 2);
    ck_assert_str_eq(r->nodes[1]->address, "tcp://127.0.0.1:7102");
    ck_assert_uint_eq(r->n_shard_info, 1);
    ck_assert_uint_eq(r->shard_info[0]->shard, 7);
    ck_assert_uint_eq(r->shard_info[0]->leader, 2);
    ck_assert_uint_eq(r->shard_info[0]->keys, 1000);
    ck_assert_uint_eq(r->shard_info[0]->applied, 5000);
    ck_assert(r->shard_info[0]->local);
    ck_assert_uint_eq(r->uptime_ms, 123456);
    ck_assert_uint_eq(r->max_key_bytes, 4096);
    ck_assert_uint_eq(r->max_value_bytes, 1048576);
    ck_assert_uint_eq(r->max_message_bytes, 4194304);
    ck_assert_uint_eq(r->requests, 99);
    ck_assert_uint_eq(r->bad_frames, 3);
    wire_free(env);
    free(buf);
}
END_TEST

START_TEST(a_request_with_a_one_mebibyte_value_round_trips)
{
    size_t vlen = 1u << 20;
    unsigned char *val = malloc(vlen);
    Kv__PutRequest put = KV__PUT_REQUEST__INIT;
    Kv__Request req = KV__REQUEST__INIT;
    void *buf = NULL;
    size_t len = 0;
    char err[128] = "";
    Kv__Envelope *env = NULL;

    ck_assert_ptr_nonnull(val);
    for (size_t i = 0; i < vlen; i++)
        val[i] = (unsigned char)(i * 131 + (i >> 8));
    put.key = bytes("big", 3);
    put.value = bytes(val, vlen);
    req.op_case = KV__REQUEST__OP_PUT;
    req.put = &put;
    ck_assert_int_eq(wire_encode_request(&req, &buf, &len), KV_OK);
    ck_assert_uint_gt(len, vlen);
    ck_assert_int_eq(wire_decode(buf, len, len, &env, err, sizeof err), KV_OK);
    expect_bytes(env->request->put->value, val, vlen);
    wire_free(env);
    free(buf);
    free(val);
}
END_TEST

START_TEST(a_peer_batch_round_trips)
{
    Kv__LogEntry le = KV__LOG_ENTRY__INIT;
    Kv__LogEntry *les[1] = {&le};
    Kv__RaftMessage m = KV__RAFT_MESSAGE__INIT;
    Kv__RaftMessage *ms[1] = {&m};
    Kv__PeerBatch pb = KV__PEER_BATCH__INIT;
    void *buf = NULL;
    size_t len = 0;

    le.term = 3;
    le.index = 17;
    le.data = bytes("\0cmd", 4);
    m.shard = 5;
    m.type = 2;
    m.from = 1;
    m.to = 3;
    m.term = 3;
    m.index = 16;
    m.n_entries = 1;
    m.entries = les;
    m.commit = 15;
    pb.from = 1;
    pb.cluster = "local";
    pb.n_msgs = 1;
    pb.msgs = ms;
    ck_assert_int_eq(wire_encode_peer(&pb, &buf, &len), KV_OK);

    Kv__Envelope *env = decode_ok(buf, len);
    ck_assert_int_eq(env->body_case, KV__ENVELOPE__BODY_PEER);
    Kv__PeerBatch *p = env->peer;
    ck_assert_uint_eq(p->from, 1);
    ck_assert_str_eq(p->cluster, "local");
    ck_assert_uint_eq(p->n_msgs, 1);
    ck_assert_uint_eq(p->msgs[0]->shard, 5);
    ck_assert_uint_eq(p->msgs[0]->to, 3);
    ck_assert_uint_eq(p->msgs[0]->commit, 15);
    ck_assert_uint_eq(p->msgs[0]->n_entries, 1);
    ck_assert_uint_eq(p->msgs[0]->entries[0]->index, 17);
    expect_bytes(p->msgs[0]->entries[0]->data, "\0cmd", 4);
    wire_free(env);
    free(buf);
}
END_TEST

START_TEST(a_frame_with_two_bodies_keeps_one_without_leaking)
{
    size_t rlen = 0, plen = 0;
    unsigned char *req = sample_put_frame(&rlen);
    unsigned char *resp = sample_scan_response_frame(&plen);
    unsigned char *both = malloc(2 * (rlen + plen));

    /* Concatenated protobuf messages merge: the second body replaces the
     * first, and the first's memory must be freed (LeakSanitizer checks). */
    ck_assert_ptr_nonnull(both);
    memcpy(both, req, rlen);
    memcpy(both + rlen, resp, plen);
    ck_assert_int_eq(decode_any(both, rlen + plen), 1);
    memcpy(both, resp, plen);
    memcpy(both + plen, req, rlen);
    ck_assert_int_eq(decode_any(both, rlen + plen), 1);
    /* The same body twice merges into one request. */
    memcpy(both, req, rlen);
    memcpy(both + rlen, req, rlen);
    ck_assert_int_eq(decode_any(both, 2 * rlen), 1);
    memcpy(both, resp, plen);
    memcpy(both + plen, resp, plen);
    ck_assert_int_eq(decode_any(both, 2 * plen), 1);
    free(both);
    free(req);
    free(resp);
}
END_TEST

START_TEST(wire_free_of_null_does_nothing)
{
    wire_free(NULL);
}
END_TEST

/* ---- limits and checks ------------------------------------------------ */

START_TEST(a_frame_over_the_limit_is_too_big)
{
    size_t len = 0;
    void *buf = sample_put_frame(&len);
    char err[256] = "";
    char want[64];
    Kv__Envelope *env = NULL;

    /* Exactly at the limit is fine. */
    ck_assert_int_eq(wire_decode(buf, len, len, &env, err, sizeof err), KV_OK);
    wire_free(env);
    env = NULL;

    ck_assert_int_eq(wire_decode(buf, len, len - 1, &env, err, sizeof err),
                     KV_ETOOBIG);
    snprintf(want, sizeof want, "%zu", len);
    ck_assert_msg(strstr(err, want) != NULL, "size missing from '%s'", err);
    ck_assert_int_eq(wire_decode(buf, len, 0, &env, err, sizeof err),
                     KV_ETOOBIG);
    free(buf);

    /* The size is checked before the bytes are looked at. */
    static const unsigned char junk[64] = {0xff};
    ck_assert_int_eq(wire_decode(junk, sizeof junk, 10, &env, err, sizeof err),
                     KV_ETOOBIG);
}
END_TEST

START_TEST(an_unknown_protocol_version_is_refused_naming_it)
{
    Kv__StatusRequest status = KV__STATUS_REQUEST__INIT;
    Kv__Request req = KV__REQUEST__INIT;
    Kv__Envelope env = KV__ENVELOPE__INIT;
    size_t len = 0;
    void *buf;

    req.op_case = KV__REQUEST__OP_STATUS;
    req.status = &status;
    env.body_case = KV__ENVELOPE__BODY_REQUEST;
    env.request = &req;

    env.version = 2;
    buf = pack_raw(&env, &len);
    expect_proto(buf, len, "version 2");
    free(buf);

    env.version = 0; /* proto3: an absent version field reads as 0 */
    buf = pack_raw(&env, &len);
    expect_proto(buf, len, "version 0");
    free(buf);

    env.version = UINT32_MAX;
    buf = pack_raw(&env, &len);
    expect_proto(buf, len, "version 4294967295");
    free(buf);

    env.version = WIRE_VERSION; /* the control: the same frame at v1 works */
    buf = pack_raw(&env, &len);
    wire_free(decode_ok(buf, len));
    free(buf);
}
END_TEST

START_TEST(an_envelope_without_a_body_is_refused)
{
    Kv__Envelope env = KV__ENVELOPE__INIT;
    size_t len = 0;
    void *buf;

    env.version = WIRE_VERSION;
    buf = pack_raw(&env, &len);
    expect_proto(buf, len, "body");
    free(buf);
}
END_TEST

START_TEST(a_request_without_an_operation_is_refused)
{
    Kv__Request req = KV__REQUEST__INIT;
    void *buf = NULL;
    size_t len = 0;

    req.id = 8;
    req.timeout_ms = 100;
    ck_assert_int_eq(wire_encode_request(&req, &buf, &len), KV_OK);
    expect_proto(buf, len, "operation");
    free(buf);
}
END_TEST

START_TEST(an_empty_frame_is_refused)
{
    static const unsigned char none[1] = {0};

    expect_proto(none, 0, "version 0");
}
END_TEST

/* ---- hostile input ---------------------------------------------------- */

START_TEST(random_bytes_never_crash_and_decode_or_fail_with_eproto)
{
    /* Seed: 0xc0ffee00 + the loop index (0..7), so any failing frame
     * replays exactly. 4,000 frames of 0..95 bytes per seed; half of them
     * start like an envelope (version 1 then a body tag) so that
     * protobuf-c's nested decoding is reached too. */
    uint64_t seed = 0xc0ffee00ull + (uint64_t)_i;
    unsigned char buf[96];

    for (int n = 0; n < 4000; n++) {
        size_t len = next_rand(&seed) % sizeof buf;
        for (size_t j = 0; j < len; j++)
            buf[j] = (unsigned char)next_rand(&seed);
        if (n % 2 && len >= 4) {
            buf[0] = 0x08; /* field 1, varint */
            buf[1] = 0x01;
            /* field 2, 3 or 4 (request, response, peer), length-delimited */
            buf[2] = (unsigned char)(0x12 + 8 * (next_rand(&seed) % 3));
            buf[3] = (unsigned char)(len - 4);
        }
        decode_any(buf, len);
    }
}
END_TEST

START_TEST(every_truncation_of_a_valid_frame_fails_cleanly)
{
    size_t len = 0, rlen = 0;
    unsigned char *req = sample_put_frame(&len);
    unsigned char *resp = sample_scan_response_frame(&rlen);

    for (size_t n = 0; n < len; n++) {
        /* A copy of exactly N bytes, so ASan sees any read past the end. */
        unsigned char *cut = malloc(n ? n : 1);
        ck_assert_ptr_nonnull(cut);
        memcpy(cut, req, n);
        decode_any(cut, n);
        free(cut);
    }
    for (size_t n = 0; n < rlen; n++) {
        unsigned char *cut = malloc(n ? n : 1);
        ck_assert_ptr_nonnull(cut);
        memcpy(cut, resp, n);
        decode_any(cut, n);
        free(cut);
    }
    /* The whole frames still decode: the loop above did not test nothing. */
    ck_assert_int_eq(decode_any(req, len), 1);
    ck_assert_int_eq(decode_any(resp, rlen), 1);
    free(req);
    free(resp);
}
END_TEST

START_TEST(every_single_byte_change_of_a_valid_frame_fails_cleanly)
{
    static const unsigned char values[] = {0x00, 0x01, 0x7f, 0x80, 0xff};
    size_t len = 0;
    unsigned char *orig = sample_scan_response_frame(&len);
    unsigned char *buf = malloc(len);

    ck_assert_ptr_nonnull(buf);
    for (size_t at = 0; at < len; at++) {
        for (size_t v = 0; v < sizeof values; v++) {
            memcpy(buf, orig, len);
            buf[at] = values[v];
            decode_any(buf, len);
            buf[at] = orig[at] ^ (unsigned char)(1u << (v % 8));
            decode_any(buf, len);
        }
    }
    free(buf);
    free(orig);
}
END_TEST

START_TEST(frames_claiming_huge_lengths_fail_without_allocating_them)
{
    /* A version, then a request whose length varint says 2^63: protobuf-c
     * must check it against the buffer instead of trusting it. */
    static const unsigned char huge[] = {0x08, 0x01, 0x12, 0x80, 0x80,
                                         0x80, 0x80, 0x80, 0x80, 0x80,
                                         0x80, 0x80, 0x01, 0x00};
    /* A put whose key claims 1 GiB inside a 12-byte frame. */
    static const unsigned char key[] = {0x08, 0x01, 0x12, 0x08, 0x5a, 0x06,
                                        0x0a, 0x80, 0x80, 0x80, 0x80, 0x04};
    /* An overlong varint (11 bytes) for the version. */
    static const unsigned char varint[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff,
                                           0xff, 0xff, 0xff, 0xff, 0xff, 0x01};

    ck_assert_int_eq(decode_any(huge, sizeof huge), 0);
    ck_assert_int_eq(decode_any(key, sizeof key), 0);
    ck_assert_int_eq(decode_any(varint, sizeof varint), 0);
}
END_TEST

/* ---- suite ------------------------------------------------------------ */

/* The wire suite: round trips, limits and checks, hostile input. */
Suite *wire_suite(void)
{
    Suite *s = suite_create("wire");
    TCase *tc = tcase_create("round_trips");

    tcase_add_test(tc, a_put_request_round_trips);
    tcase_add_test(tc, get_delete_scan_and_status_requests_round_trip);
    tcase_add_test(tc, an_error_response_round_trips_with_its_redirect);
    tcase_add_test(tc, every_negative_code_round_trips);
    tcase_add_test(tc, get_write_and_scan_results_round_trip);
    tcase_add_test(tc, a_status_result_round_trips);
    tcase_add_test(tc, a_request_with_a_one_mebibyte_value_round_trips);
    tcase_add_test(tc, a_peer_batch_round_trips);
    tcase_add_test(tc, wire_free_of_null_does_nothing);
    suite_add_tcase(s, tc);

    tc = tcase_create("checks");
    tcase_add_test(tc, a_frame_over_the_limit_is_too_big);
    tcase_add_test(tc, an_unknown_protocol_version_is_refused_naming_it);
    tcase_add_test(tc, an_envelope_without_a_body_is_refused);
    tcase_add_test(tc, a_request_without_an_operation_is_refused);
    tcase_add_test(tc, an_empty_frame_is_refused);
    suite_add_tcase(s, tc);

    tc = tcase_create("hostile_input");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(
        tc, random_bytes_never_crash_and_decode_or_fail_with_eproto, 0, 8);
    tcase_add_test(tc, every_truncation_of_a_valid_frame_fails_cleanly);
    tcase_add_test(tc, every_single_byte_change_of_a_valid_frame_fails_cleanly);
    tcase_add_test(tc,
                   frames_claiming_huge_lengths_fail_without_allocating_them);
    tcase_add_test(tc, a_frame_with_two_bodies_keeps_one_without_leaking);
    suite_add_tcase(s, tc);
    return s;
}
