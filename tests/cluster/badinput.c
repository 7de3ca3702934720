/*
 * badinput - no input stops a node: garbage, truncated, foreign-version and
 * oversized frames on its socket, oversized keys and values, and broken
 * configuration files.
 *
 * Frames go to a 3-node cluster (8 shards, 3 replicas) through admin_raw()
 * (one frame, one decoded answer) or a raw ZeroMQ DEALER socket (batches,
 * multipart and oversized messages, Batch frames). After each attack, normal
 * kv_put and kv_get must still work and the nodes must count the frames they
 * could not decode. Random frames come from a fixed seed, printed;
 * KV_TEST_SEED=N replays another.
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "admin.h"
#include "harness.h"
#include "kv.h"
#include "wire.h"

#define NNODES 3
#define NSHARDS 8
#define MIB (1024u * 1024u)
#define RANDOM_FRAMES 500
#define DEFAULT_SEED 20240601u

static struct cluster *cl;
static int problems; /* a fixture failed where it cannot assert */
static kv *db;

/* --- fixtures ------------------------------------------------------------- */

static void cluster_up(void)
{
    int rc = cluster_start(&cl, NNODES, NSHARDS, 3);
    ck_assert_msg(rc == 0, "cluster did not start: %s", kv_strerror(rc));
}

static void cluster_down(void)
{
    /* No assertions: in fork mode this runs in the runner itself. */
    if (cl != NULL && cluster_stop(cl) != 0) {
        fprintf(stderr, "badinput: a node crashed or did not exit cleanly\n");
        problems++;
    }
    cl = NULL;
}

static void open_db(void)
{
    kv_open_opts oo = {.timeout_ms = 5000};
    int rc = kv_open(cluster_conf_path(cl), &oo, &db);
    ck_assert_msg(rc == KV_OK, "kv_open: %s (%s)", kv_strerror(rc),
                  kv_errmsg(NULL));
}

static void close_db(void)
{
    kv_close(db);
    db = NULL;
}

/* --- helpers -------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t test_seed(void)
{
    const char *s = getenv("KV_TEST_SEED");
    uint64_t seed = s != NULL ? strtoull(s, NULL, 10) : DEFAULT_SEED;
    return seed != 0 ? seed : DEFAULT_SEED;
}

/* Encodes an envelope of protocol VERSION around REQ (NULL: no body) into a
 * malloc()ed buffer. */
static unsigned char *encode(uint32_t version, Kv__Request *req, size_t *len)
{
    Kv__Envelope env = KV__ENVELOPE__INIT;
    env.version = version;
    if (req != NULL) {
        env.body_case = KV__ENVELOPE__BODY_REQUEST;
        env.request = req;
    }
    *len = kv__envelope__get_packed_size(&env);
    unsigned char *buf = malloc(*len + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(kv__envelope__pack(&env, buf), *len);
    return buf;
}

static unsigned char *encode_put(uint32_t version, const void *key, size_t klen,
                                 const void *val, size_t vlen, size_t *len)
{
    Kv__Request req = KV__REQUEST__INIT;
    Kv__PutRequest p = KV__PUT_REQUEST__INIT;
    p.key.data = (uint8_t *)key;
    p.key.len = klen;
    p.value.data = (uint8_t *)val;
    p.value.len = vlen;
    req.id = 4242;
    req.timeout_ms = 5000;
    req.op_case = KV__REQUEST__OP_PUT;
    req.put = &p;
    return encode(version, &req, len);
}

/* A response (what a node sends, never receives) with id ID. */
static unsigned char *encode_response(uint64_t id, size_t *len)
{
    Kv__Envelope env = KV__ENVELOPE__INIT;
    Kv__Response resp = KV__RESPONSE__INIT;
    env.version = WIRE_VERSION;
    env.body_case = KV__ENVELOPE__BODY_RESPONSE;
    env.response = &resp;
    resp.id = id;
    *len = kv__envelope__get_packed_size(&env);
    unsigned char *buf = malloc(*len + 1);
    ck_assert_ptr_nonnull(buf);
    kv__envelope__pack(&env, buf);
    return buf;
}

static unsigned char *encode_status(uint32_t version, size_t *len)
{
    Kv__Request req = KV__REQUEST__INIT;
    Kv__StatusRequest st = KV__STATUS_REQUEST__INIT;
    req.id = 77;
    req.timeout_ms = 5000;
    req.op_case = KV__REQUEST__OP_STATUS;
    req.status = &st;
    return encode(version, &req, len);
}

/* Whether BUF fails to decode as an envelope at all (so a node must count
 * it as a bad frame). */
static int undecodable(const void *buf, size_t len)
{
    Kv__Envelope *e = kv__envelope__unpack(NULL, len, buf);
    if (e == NULL)
        return 1;
    kv__envelope__free_unpacked(e, NULL);
    return 0;
}

static uint64_t bad_frames_of(size_t i)
{
    Kv__StatusResult *st = NULL;
    int rc = admin_status(db, i, 3000, &st);
    ck_assert_msg(rc == KV_OK, "status of node %zu: %s (%s)", i,
                  kv_strerror(rc), kv_errmsg(db));
    uint64_t n = st->bad_frames;
    admin_status_free(st);
    return n;
}

/* Normal traffic still works: a put and a get on every shard, and every
 * node answers its status. */
static void expect_cluster_serves(const char *tag)
{
    unsigned shards_done = 0;
    for (int i = 0; i < 200 && shards_done != (1u << NSHARDS) - 1; i++) {
        char k[64], v[64];
        int kl = snprintf(k, sizeof k, "serves/%s/%d", tag, i);
        int vl = snprintf(v, sizeof v, "value %d", i);
        uint32_t s = kv_shard_of(k, (size_t)kl, NSHARDS);
        if (shards_done & (1u << s))
            continue;
        uint64_t ver = 0;
        int rc = kv_put(db, k, (size_t)kl, v, (size_t)vl, NULL, &ver);
        ck_assert_msg(rc == KV_OK, "put on shard %u after %s: %s (%s)", s, tag,
                      kv_strerror(rc), kv_errmsg(db));
        void *got = NULL;
        size_t glen = 0;
        uint64_t gver = 0;
        rc = kv_get(db, k, (size_t)kl, NULL, &got, &glen, &gver);
        ck_assert_msg(rc == KV_OK, "get on shard %u after %s: %s", s, tag,
                      kv_strerror(rc));
        int same = glen == (size_t)vl && memcmp(got, v, glen) == 0;
        kv_free(got);
        ck_assert_msg(same, "wrong value on shard %u after %s", s, tag);
        ck_assert_uint_eq(gver, ver);
        shards_done |= 1u << s;
    }
    ck_assert_uint_eq(shards_done, (1u << NSHARDS) - 1);
    for (size_t i = 0; i < NNODES; i++)
        (void)bad_frames_of(i);
}

static void expect_missing(const void *k, size_t kl)
{
    void *got = NULL;
    size_t glen = 0;
    int rc = kv_get(db, k, kl, NULL, &got, &glen, NULL);
    if (rc == KV_OK)
        kv_free(got);
    ck_assert_msg(rc == KV_ENOTFOUND, "a key that must not exist: %s",
                  kv_strerror(rc));
}

/* --- raw ZeroMQ ----------------------------------------------------------- */

struct raw {
    void *ctx;
    void *s[NNODES];
};

static void raw_open(struct raw *r)
{
    memset(r, 0, sizeof *r);
    r->ctx = zmq_ctx_new();
    ck_assert_ptr_nonnull(r->ctx);
    for (int i = 0; i < NNODES; i++) {
        r->s[i] = zmq_socket(r->ctx, ZMQ_DEALER);
        ck_assert_ptr_nonnull(r->s[i]);
        int zero = 0, tmo = 5000;
        zmq_setsockopt(r->s[i], ZMQ_LINGER, &zero, sizeof zero);
        zmq_setsockopt(r->s[i], ZMQ_SNDTIMEO, &tmo, sizeof tmo);
        ck_assert_int_eq(zmq_connect(r->s[i], cluster_node_addr(cl, i)), 0);
    }
}

static void raw_close(struct raw *r)
{
    for (int i = 0; i < NNODES; i++)
        if (r->s[i] != NULL)
            zmq_close(r->s[i]);
    if (r->ctx != NULL)
        zmq_ctx_term(r->ctx);
    memset(r, 0, sizeof *r);
}

static void raw_send(void *s, const void *buf, size_t len, int more)
{
    int rc = zmq_send(s, buf, len, more ? ZMQ_SNDMORE : 0);
    ck_assert_msg(rc == (int)len || (len > INT32_MAX && rc >= 0),
                  "zmq_send of %zu bytes: %s", len, zmq_strerror(zmq_errno()));
}

/* Receives one message from S within TIMEOUT_MS into *out (freed with
 * kv__envelope__free_unpacked). Returns 0, KV_ETIMEDOUT, or KV_EPROTO when
 * the reply is not a response envelope (a node must never send that). */
static int raw_recv(void *s, int timeout_ms, Kv__Envelope **out)
{
    zmq_pollitem_t item = {.socket = s, .events = ZMQ_POLLIN};
    int n = zmq_poll(&item, 1, timeout_ms);
    if (n <= 0)
        return KV_ETIMEDOUT;
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    int rc = KV_EPROTO;
    if (zmq_msg_recv(&msg, s, 0) < 0) {
        rc = KV_ETIMEDOUT;
        goto out;
    }
    Kv__Envelope *e =
        kv__envelope__unpack(NULL, zmq_msg_size(&msg), zmq_msg_data(&msg));
    if (e == NULL)
        goto out;
    if (e->body_case != KV__ENVELOPE__BODY_RESPONSE || zmq_msg_more(&msg)) {
        kv__envelope__free_unpacked(e, NULL);
        goto out;
    }
    *out = e;
    rc = 0;
out:
    zmq_msg_close(&msg);
    return rc;
}

/* Sends a status request on S and waits for its answer: the connection is
 * up and everything sent before it has been read by the node. */
static void raw_sync(void *s)
{
    size_t len;
    unsigned char *buf = encode_status(WIRE_VERSION, &len);
    raw_send(s, buf, len, 0);
    free(buf);
    for (int i = 0; i < 1000; i++) {
        Kv__Envelope *e = NULL;
        int rc = raw_recv(s, 5000, &e);
        ck_assert_msg(rc == 0, "no answer to a status request: %s",
                      kv_strerror(rc));
        int done = e->response->result_case == KV__RESPONSE__RESULT_STATUS;
        kv__envelope__free_unpacked(e, NULL);
        if (done)
            return;
    }
    ck_abort_msg("no status answer among 1000 replies");
}

/* --- frames --------------------------------------------------------------- */

/* Makes random frame number F into BUF (capacity CAP). */
static size_t random_frame(unsigned f, unsigned char *buf, size_t cap)
{
    size_t len = 0;
    switch (f % 5) {
    case 0: /* noise */
        len = rng_next() % 300;
        for (size_t i = 0; i < len; i++)
            buf[i] = (unsigned char)rng_next();
        break;
    case 1: /* noise that starts like an envelope of version 1 */
        len = 2 + rng_next() % 200;
        buf[0] = 0x08;
        buf[1] = 0x01;
        for (size_t i = 2; i < len; i++)
            buf[i] = (unsigned char)rng_next();
        break;
    case 2:   /* a valid put with a few bytes changed */
    case 3: { /* a valid put cut short and followed by noise */
        char key[32], val[64];
        int kl = snprintf(key, sizeof key, "rand/%u", f);
        int vl = snprintf(val, sizeof val, "value of frame %u", f);
        size_t plen;
        unsigned char *p =
            encode_put(WIRE_VERSION, key, (size_t)kl, val, (size_t)vl, &plen);
        len = plen < cap ? plen : cap;
        memcpy(buf, p, len);
        free(p);
        if (f % 5 == 2) {
            int flips = 1 + (int)(rng_next() % 4);
            for (int i = 0; i < flips; i++)
                buf[rng_next() % len] = (unsigned char)rng_next();
        } else {
            size_t cut = rng_next() % len;
            size_t tail = rng_next() % 16;
            for (size_t i = 0; i < tail && cut + i < cap; i++)
                buf[cut + i] = (unsigned char)rng_next();
            len = cut + tail < cap ? cut + tail : cap;
        }
        break;
    }
    default: /* a huge length prefix with nothing behind it */
        len = 0;
        buf[len++] = 0x12; /* field 2 (request), length-delimited */
        for (int i = 0; i < 9; i++)
            buf[len++] = 0xff;
        buf[len++] = 0x01;
        break;
    }
    return len;
}

/* --- tests: frames -------------------------------------------------------- */

START_TEST(random_frames_get_eproto_and_the_node_keeps_serving)
{
    uint64_t seed = test_seed();
    rng_state = seed;
    fprintf(stderr,
            "random frames: seed %" PRIu64
            " (KV_TEST_SEED=N to replay another)\n",
            seed);
    uint64_t before[NNODES];
    for (size_t i = 0; i < NNODES; i++)
        before[i] = bad_frames_of(i);

    struct raw r;
    raw_open(&r);
    for (int i = 0; i < NNODES; i++)
        raw_sync(r.s[i]);

    unsigned sent[NNODES] = {0}, garbage[NNODES] = {0};
    unsigned decodable = 0;
    unsigned char buf[512];
    for (unsigned f = 0; f < RANDOM_FRAMES; f++) {
        size_t len = random_frame(f, buf, sizeof buf);
        int node = (int)(f % NNODES);
        if (undecodable(buf, len))
            garbage[node]++;
        else
            decodable++;
        raw_send(r.s[node], buf, len, 0);
        sent[node]++;
    }

    /* Collect the answers: each must be a response; only frames that
     * decode may get anything but KV_EPROTO. */
    unsigned replies = 0, eproto = 0, other = 0;
    int64_t deadline = harness_now_ms() + 30000;
    for (int node = 0; node < NNODES; node++) {
        for (unsigned got = 0; got < sent[node];) {
            if (harness_now_ms() > deadline)
                break;
            Kv__Envelope *e = NULL;
            int rc = raw_recv(r.s[node], 2000, &e);
            if (rc == KV_ETIMEDOUT)
                break; /* the rest were dropped */
            ck_assert_msg(rc == 0,
                          "node %d sent a frame that is not a response",
                          node + 1);
            int code = e->response->code;
            kv__envelope__free_unpacked(e, NULL);
            ck_assert_msg(code <= 0 && code >= KV_EINTERNAL, "unknown code %d",
                          code);
            if (code == KV_EPROTO)
                eproto++;
            else
                other++;
            got++;
            replies++;
        }
    }
    raw_close(&r);
    fprintf(stderr,
            "random frames: %u sent (%u undecodable), %u answers (%u "
            "KV_EPROTO, %u other)\n",
            RANDOM_FRAMES, garbage[0] + garbage[1] + garbage[2], replies,
            eproto, other);
    ck_assert_uint_le(replies, RANDOM_FRAMES);
    ck_assert_msg(other <= decodable,
                  "%u undecodable frames got an answer other than KV_EPROTO",
                  other - decodable);

    expect_cluster_serves("random frames");
    for (size_t i = 0; i < NNODES; i++) {
        uint64_t after = bad_frames_of(i);
        ck_assert_msg(after >= before[i] + garbage[i],
                      "node %zu counted %" PRIu64 " bad frames, sent %u", i + 1,
                      after - before[i], garbage[i]);
    }
}
END_TEST

/* Sends every proper prefix of BUF to every node through admin_raw: each
 * must get KV_EPROTO (or be dropped). Returns how many could not decode. */
static unsigned send_prefixes(const unsigned char *buf, size_t len,
                              unsigned garbage[NNODES])
{
    unsigned answered = 0;
    for (size_t i = 0; i < NNODES; i++) {
        for (size_t cut = 0; cut < len; cut++) {
            Kv__Envelope *e = NULL;
            int rc = admin_raw(db, i, buf, cut, 2000, &e);
            if (undecodable(buf, cut))
                garbage[i]++;
            if (rc == KV_ETIMEDOUT)
                continue;
            ck_assert_msg(rc == KV_OK, "admin_raw: %s", kv_strerror(rc));
            int code = e->response->code;
            wire_free(e);
            ck_assert_msg(
                code == KV_EPROTO,
                "node %zu answered %s to the first %zu of %zu bytes of a frame",
                i + 1, kv_strerror(code), cut, len);
            answered++;
        }
    }
    return answered;
}

START_TEST(truncated_frames_get_eproto_and_store_nothing)
{
    static const char key[] = "trunc/key";
    static const char val[] = "the value of a truncated put";
    uint64_t before[NNODES];
    for (size_t i = 0; i < NNODES; i++)
        before[i] = bad_frames_of(i);
    unsigned garbage[NNODES] = {0};

    size_t slen, plen;
    unsigned char *status = encode_status(WIRE_VERSION, &slen);
    unsigned char *put = encode_put(WIRE_VERSION, key, sizeof key - 1, val,
                                    sizeof val - 1, &plen);
    unsigned answered = send_prefixes(status, slen, garbage);
    answered += send_prefixes(put, plen, garbage);
    fprintf(stderr, "truncated frames: %zu sent, %u answered KV_EPROTO\n",
            NNODES * (slen + plen), answered);
    expect_missing(key, sizeof key - 1);

    /* The whole frames are valid: the status is answered, and the put is
     * stored by the node that serves the key (the others redirect). */
    for (size_t i = 0; i < NNODES; i++) {
        Kv__Envelope *e = NULL;
        ck_assert_int_eq(admin_raw(db, i, status, slen, 3000, &e), KV_OK);
        ck_assert_int_eq(e->response->code, KV_OK);
        ck_assert_int_eq(e->response->result_case, KV__RESPONSE__RESULT_STATUS);
        wire_free(e);
    }
    int stored = 0;
    for (size_t i = 0; i < NNODES && !stored; i++) {
        Kv__Envelope *e = NULL;
        ck_assert_int_eq(admin_raw(db, i, put, plen, 3000, &e), KV_OK);
        int code = e->response->code;
        wire_free(e);
        ck_assert_msg(code == KV_OK || code == KV_ENOTLEADER,
                      "a whole put frame got %s", kv_strerror(code));
        stored = code == KV_OK;
    }
    ck_assert_msg(stored, "no node accepted the whole put frame");
    void *got = NULL;
    size_t glen = 0;
    ck_assert_int_eq(kv_get(db, key, sizeof key - 1, NULL, &got, &glen, NULL),
                     KV_OK);
    int same = glen == sizeof val - 1 && memcmp(got, val, glen) == 0;
    kv_free(got);
    ck_assert(same);
    free(status);
    free(put);

    for (size_t i = 0; i < NNODES; i++) {
        uint64_t after = bad_frames_of(i);
        ck_assert_msg(after >= before[i] + garbage[i],
                      "node %zu counted %" PRIu64 " bad frames, sent %u", i + 1,
                      after - before[i], garbage[i]);
    }
    expect_cluster_serves("truncated frames");
}
END_TEST

START_TEST(a_frame_of_an_unknown_protocol_version_gets_eproto)
{
    static const uint32_t versions[] = {99, 2, UINT32_MAX};
    for (size_t v = 0; v < sizeof versions / sizeof versions[0]; v++) {
        size_t len;
        unsigned char *buf = encode_status(versions[v], &len);
        for (size_t i = 0; i < NNODES; i++) {
            Kv__Envelope *e = NULL;
            int rc = admin_raw(db, i, buf, len, 3000, &e);
            ck_assert_msg(rc == KV_OK, "node %zu did not answer version %u: %s",
                          i + 1, versions[v], kv_strerror(rc));
            int code = e->response->code;
            char msg[256];
            snprintf(msg, sizeof msg, "%s",
                     e->response->message != NULL ? e->response->message : "");
            wire_free(e);
            ck_assert_msg(code == KV_EPROTO, "version %u got %s", versions[v],
                          kv_strerror(code));
            if (versions[v] == 99)
                ck_assert_msg(strstr(msg, "99") != NULL,
                              "the message \"%s\" does not name version 99",
                              msg);
        }
        free(buf);
    }
    /* A put of another version stores nothing. */
    size_t len;
    unsigned char *put = encode_put(99, "ver99/k", 7, "v", 1, &len);
    for (size_t i = 0; i < NNODES; i++) {
        Kv__Envelope *e = NULL;
        ck_assert_int_eq(admin_raw(db, i, put, len, 3000, &e), KV_OK);
        ck_assert_int_eq(e->response->code, KV_EPROTO);
        wire_free(e);
    }
    free(put);
    expect_missing("ver99/k", 7);
    expect_cluster_serves("foreign versions");
}
END_TEST

START_TEST(frames_that_are_not_requests_get_an_error)
{
    /* An envelope with no body, a request with no operation, and a
     * response sent to a node. */
    unsigned char *frames[3];
    size_t lens[3];
    frames[0] = encode(WIRE_VERSION, NULL, &lens[0]);
    Kv__Request req = KV__REQUEST__INIT;
    req.id = 5;
    frames[1] = encode(WIRE_VERSION, &req, &lens[1]);
    frames[2] = encode_response(6, &lens[2]);
    for (int f = 0; f < 3; f++) {
        for (size_t i = 0; i < NNODES; i++) {
            Kv__Envelope *e = NULL;
            int rc = admin_raw(db, i, frames[f], lens[f], 1500, &e);
            if (rc == KV_ETIMEDOUT)
                continue; /* dropped: allowed */
            ck_assert_int_eq(rc, KV_OK);
            int code = e->response->code;
            wire_free(e);
            ck_assert_msg(code == KV_EPROTO || code == KV_EINVAL,
                          "frame %d got %s", f, kv_strerror(code));
        }
        free(frames[f]);
    }
    expect_cluster_serves("frames that are not requests");
}
END_TEST

/* A pipelined client's Batch frame (kv.proto): BATCH_PUTS puts, then a
 * frame that does not decode and a response, which are not requests. */
#define BATCH_PUTS 16

static unsigned char *encode_batch(size_t *len)
{
    ProtobufCBinaryData frames[BATCH_PUTS + 2];
    char keys[BATCH_PUTS][32];
    for (int i = 0; i < BATCH_PUTS; i++) {
        int kl = snprintf(keys[i], sizeof keys[i], "batch/%d", i);
        Kv__Request req = KV__REQUEST__INIT;
        Kv__PutRequest p = KV__PUT_REQUEST__INIT;
        p.key.data = (uint8_t *)keys[i];
        p.key.len = (size_t)kl;
        p.value = p.key;
        req.id = 1000 + (uint64_t)i;
        req.timeout_ms = 5000;
        req.op_case = KV__REQUEST__OP_PUT;
        req.put = &p;
        frames[i].data = encode(WIRE_VERSION, &req, &frames[i].len);
    }
    frames[BATCH_PUTS].data = (uint8_t *)strdup("\x0a\xff");
    frames[BATCH_PUTS].len = 2;
    frames[BATCH_PUTS + 1].data =
        encode_response(6, &frames[BATCH_PUTS + 1].len);
    void *buf;
    ck_assert_int_eq(wire_encode_batch(frames, BATCH_PUTS + 2, &buf, len),
                     KV_OK);
    for (int i = 0; i < BATCH_PUTS + 2; i++)
        free(frames[i].data);
    return buf;
}

/* Counts one answer R to the batch: into ANSWERED by request id (puts),
 * or EPROTO (id 0). */
static void count_answer(const Kv__Response *r, int *answered, int *eproto)
{
    if (r->id == 0) {
        ck_assert_int_eq(r->code, KV_EPROTO);
        (*eproto)++;
        return;
    }
    ck_assert_msg(r->id >= 1000 && r->id < 1000 + BATCH_PUTS,
                  "an answer to request %" PRIu64 ", which was not sent",
                  r->id);
    ck_assert_msg(r->code == KV_OK || r->code == KV_ENOTLEADER,
                  "put %" PRIu64 " of the batch: %s", r->id - 1000,
                  kv_strerror(r->code));
    answered[r->id - 1000] = r->code == KV_OK ? 1 : 2;
}

START_TEST(a_batch_frame_is_answered_request_by_request)
{
    struct raw r;
    raw_open(&r);
    raw_sync(r.s[0]);
    uint64_t bad_before = bad_frames_of(0);
    size_t len;
    unsigned char *buf = encode_batch(&len);
    raw_send(r.s[0], buf, len, 0);
    free(buf);
    /* Every put answered once (stored, or not led here), the two frames
     * that are not requests refused; the answers share frames. */
    int answered[BATCH_PUTS] = {0};
    int eproto = 0, nanswers = 0, nframes = 0;
    while (nanswers < BATCH_PUTS + 2) {
        zmq_pollitem_t item = {.socket = r.s[0], .events = ZMQ_POLLIN};
        ck_assert_msg(zmq_poll(&item, 1, 10000) == 1, "%d answers of %d came",
                      nanswers, BATCH_PUTS + 2);
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        ck_assert_int_ge(zmq_msg_recv(&msg, r.s[0], 0), 0);
        Kv__Envelope *e = NULL;
        char err[128];
        int rc = wire_decode(zmq_msg_data(&msg), zmq_msg_size(&msg), 1 << 20,
                             &e, err, sizeof err);
        zmq_msg_close(&msg);
        ck_assert_msg(rc == KV_OK, "an answer that does not decode: %s", err);
        nframes++;
        if (e->body_case == KV__ENVELOPE__BODY_RESPONSE) {
            count_answer(e->response, answered, &eproto);
            nanswers++;
        } else {
            ck_assert_int_eq(e->body_case, KV__ENVELOPE__BODY_BATCH);
            for (size_t i = 0; i < e->batch->n_frames; i++) {
                Kv__Envelope *one = NULL;
                rc = wire_decode(e->batch->frames[i].data,
                                 e->batch->frames[i].len, 1 << 20, &one, err,
                                 sizeof err);
                ck_assert_msg(rc == KV_OK, "a batched answer: %s", err);
                ck_assert_int_eq(one->body_case, KV__ENVELOPE__BODY_RESPONSE);
                count_answer(one->response, answered, &eproto);
                nanswers++;
                wire_free(one);
            }
        }
        wire_free(e);
    }
    ck_assert_int_eq(eproto, 2);
    ck_assert_msg(nframes < nanswers, "%d answers came in %d frames", nanswers,
                  nframes);
    ck_assert_uint_eq(bad_frames_of(0), bad_before + 2);
    /* Nothing more: no answer twice. */
    Kv__Envelope *extra = NULL;
    ck_assert_int_eq(raw_recv(r.s[0], 300, &extra), KV_ETIMEDOUT);
    raw_close(&r);
    for (int i = 0; i < BATCH_PUTS; i++) {
        ck_assert_msg(answered[i], "put %d of the batch got no answer", i);
        char k[32];
        int kl = snprintf(k, sizeof k, "batch/%d", i);
        if (answered[i] == 2) {
            expect_missing(k, (size_t)kl); /* answered: not stored here */
            continue;
        }
        void *got = NULL;
        size_t glen = 0;
        int rc = kv_get(db, k, (size_t)kl, NULL, &got, &glen, NULL);
        ck_assert_msg(rc == KV_OK, "put %d of the batch: %s", i,
                      kv_strerror(rc));
        int same = glen == (size_t)kl && memcmp(got, k, glen) == 0;
        kv_free(got);
        ck_assert_msg(same, "put %d of the batch stored another value", i);
    }
    expect_cluster_serves("a batch frame");
}
END_TEST

START_TEST(multipart_and_empty_messages_do_not_break_a_node)
{
    struct raw r;
    raw_open(&r);
    size_t len;
    unsigned char *status = encode_status(WIRE_VERSION, &len);
    for (int i = 0; i < NNODES; i++) {
        raw_sync(r.s[i]);
        for (int k = 0; k < 5; k++) {
            raw_send(r.s[i], status, len, 1); /* valid, then more parts */
            raw_send(r.s[i], "junk", 4, 1);
            raw_send(r.s[i], "", 0, 0);
            raw_send(r.s[i], "", 0, 0); /* an empty message */
            raw_send(r.s[i], "", 0, 1); /* empty parts around a frame */
            raw_send(r.s[i], status, len, 1);
            raw_send(r.s[i], "", 0, 0);
        }
        /* Whatever came back must be responses; then it still answers. */
        for (int k = 0; k < 100; k++) {
            Kv__Envelope *e = NULL;
            int rc = raw_recv(r.s[i], 300, &e);
            if (rc == KV_ETIMEDOUT)
                break;
            ck_assert_msg(
                rc == 0,
                "node %d sent a frame that is not a single-part response",
                i + 1);
            kv__envelope__free_unpacked(e, NULL);
        }
        raw_sync(r.s[i]);
    }
    free(status);
    raw_close(&r);
    expect_cluster_serves("multipart messages");
}
END_TEST

START_TEST(an_oversized_frame_does_not_stop_the_node)
{
    /* 8 MiB: twice max_message_bytes (4 MiB by default). */
    size_t big = 8 * MIB;
    unsigned char *noise = malloc(big);
    ck_assert_ptr_nonnull(noise);
    memset(noise, 0xab, big);
    unsigned char *val = calloc(1, 6 * MIB);
    ck_assert_ptr_nonnull(val);
    size_t plen;
    unsigned char *put =
        encode_put(WIRE_VERSION, "huge/k", 6, val, 6 * MIB, &plen);
    free(val);

    struct raw r;
    raw_open(&r);
    for (int i = 0; i < NNODES; i++) {
        raw_send(r.s[i], noise, big, 0);
        raw_send(r.s[i], put, plen, 0);
    }
    /* The node may answer (KV_ETOOBIG / KV_EPROTO) or drop the
     * connection; it must not store, crash or stop serving others. */
    for (int i = 0; i < NNODES; i++) {
        for (int k = 0; k < 2; k++) {
            Kv__Envelope *e = NULL;
            int rc = raw_recv(r.s[i], 1000, &e);
            if (rc == KV_ETIMEDOUT)
                break;
            ck_assert_int_eq(rc, 0);
            int code = e->response->code;
            kv__envelope__free_unpacked(e, NULL);
            ck_assert_msg(code == KV_ETOOBIG || code == KV_EPROTO,
                          "an oversized frame got %s", kv_strerror(code));
        }
    }
    expect_cluster_serves("an oversized frame");
    for (int i = 0; i < NNODES; i++)
        ck_assert(cluster_node_running(cl, i));
    /* The same socket can be used again after the node dropped it. */
    for (int i = 0; i < NNODES; i++)
        raw_sync(r.s[i]);
    raw_close(&r);
    free(noise);
    free(put);
    expect_missing("huge/k", 6);
}
END_TEST

START_TEST(oversized_keys_and_values_get_etoobig_and_store_nothing)
{
    /* Through libkv: refused before anything is sent. */
    char *key = malloc(5000);
    ck_assert_ptr_nonnull(key);
    memset(key, 'k', 5000);
    memcpy(key, "toobig/", 7);
    unsigned char *val = calloc(1, 2 * MIB);
    ck_assert_ptr_nonnull(val);
    ck_assert_int_eq(kv_put(db, key, 4097, "v", 1, NULL, NULL), KV_ETOOBIG);
    ck_assert_int_eq(kv_put(db, "toobig/v", 8, val, MIB + 1, NULL, NULL),
                     KV_ETOOBIG);
    expect_missing("toobig/v", 8);

    /* Sent raw, past libkv's checks: the node must refuse them itself. */
    size_t klen_frame, vlen_frame;
    unsigned char *kframe =
        encode_put(WIRE_VERSION, key, 5000, "v", 1, &klen_frame);
    unsigned char *vframe =
        encode_put(WIRE_VERSION, "toobig/v", 8, val, 2 * MIB, &vlen_frame);
    int refused_k = 0, refused_v = 0;
    for (size_t i = 0; i < NNODES; i++) {
        Kv__Envelope *e = NULL;
        ck_assert_int_eq(admin_raw(db, i, kframe, klen_frame, 3000, &e), KV_OK);
        int code = e->response->code;
        wire_free(e);
        ck_assert_msg(code == KV_ETOOBIG || code == KV_ENOTLEADER,
                      "a 5000-byte key got %s from node %zu", kv_strerror(code),
                      i + 1);
        refused_k += code == KV_ETOOBIG;
        e = NULL;
        ck_assert_int_eq(admin_raw(db, i, vframe, vlen_frame, 3000, &e), KV_OK);
        code = e->response->code;
        wire_free(e);
        ck_assert_msg(code == KV_ETOOBIG || code == KV_ENOTLEADER,
                      "a 2 MiB value got %s from node %zu", kv_strerror(code),
                      i + 1);
        refused_v += code == KV_ETOOBIG;
    }
    ck_assert_int_ge(refused_k, 1);
    ck_assert_int_ge(refused_v, 1);
    expect_missing("toobig/v", 8);
    kv_iter *it = NULL;
    kv_scan_opts so = {.prefix = "toobig/", .prefix_len = 7};
    ck_assert_int_eq(kv_scan(db, &so, NULL, &it), KV_OK);
    ck_assert_int_eq(kv_iter_next(it, NULL, NULL, NULL, NULL, NULL), KV_EOF);
    kv_iter_free(it);

    /* An empty key sent raw is refused too. */
    size_t elen;
    unsigned char *eframe = encode_put(WIRE_VERSION, "", 0, "v", 1, &elen);
    for (size_t i = 0; i < NNODES; i++) {
        Kv__Envelope *e = NULL;
        ck_assert_int_eq(admin_raw(db, i, eframe, elen, 3000, &e), KV_OK);
        int code = e->response->code;
        wire_free(e);
        ck_assert_msg(code == KV_EINVAL || code == KV_ENOTLEADER,
                      "an empty key got %s from node %zu", kv_strerror(code),
                      i + 1);
    }
    free(eframe);
    free(kframe);
    free(vframe);
    free(val);
    free(key);
    expect_cluster_serves("oversized input");
}
END_TEST

/* --- tests: configuration ------------------------------------------------- */

struct bad_conf {
    const char *what;
    const char *text;
    int line; /* the line the error must name */
};

#define NODE1 "[node 1]\naddress = tcp://127.0.0.1:7101\n"
#define HEAD "cluster = bad\nshards = 8\nreplicas = 1\ndata_dir = data\n"

static const struct bad_conf bad_confs[] = {
    {"shards = 0",
     "cluster = bad\nshards = 0\nreplicas = 1\ndata_dir = data\n" NODE1, 2},
    {"shards over 4096",
     "cluster = bad\nshards = 4097\nreplicas = 1\ndata_dir = data\n" NODE1, 2},
    {"negative shards",
     "# a comment\n"
     "\n"
     "cluster = bad\n"
     "shards = -8\n"
     "replicas = 1\n"
     "data_dir = data\n" NODE1,
     4},
    {"replicas = 0",
     "cluster = bad\nshards = 8\nreplicas = 0\ndata_dir = data\n" NODE1, 3},
    {"an unknown key", HEAD "colour = blue\n" NODE1, 5},
    {"a duplicate key", HEAD "shards = 4\n" NODE1, 5},
    {"a line without '='",
     "cluster = bad\nshards 8\nreplicas = 1\ndata_dir = data\n" NODE1, 2},
    {"a node id of 0", HEAD "[node 0]\naddress = tcp://127.0.0.1:7101\n", 5},
    {"a node id that is not a number",
     HEAD "[node one]\naddress = tcp://127.0.0.1:7101\n", 5},
    {"a duplicate node",
     HEAD NODE1 "[node 1]\naddress = tcp://127.0.0.1:7102\n", 7},
    {"an address without tcp://", HEAD "[node 1]\naddress = 127.0.0.1:7101\n",
     6},
    {"an unterminated section", HEAD "[node 1\naddress = tcp://h:1\n", 5},
    {"a global key in a node section", HEAD NODE1 "shards = 8\n", 7},
    {"max_key_bytes over 4096", HEAD "max_key_bytes = 5000\n" NODE1, 5},
    {"max_value_bytes over 64 MiB", HEAD "max_value_bytes = 67108865\n" NODE1,
     5},
    {"max_message_bytes too small",
     HEAD "max_key_bytes = 4096\n"
          "max_value_bytes = 1048576\n"
          "max_message_bytes = 4096\n" NODE1,
     7},
    {"a timeout that is not a number", HEAD "request_timeout_ms = soon\n" NODE1,
     5},
    {"a number with trailing junk", HEAD "txn_timeout_ms = 100ms\n" NODE1, 5},
    {"an unknown log level", HEAD "log_level = loud\n" NODE1, 5},
};

#undef HEAD
#undef NODE1

static char conf_dir[256];
static char conf_path[300];

/* Writes TEXT as conf_path in a fresh directory. */
static void write_conf(const char *text)
{
    if (conf_dir[0] == '\0') {
        ck_assert_int_eq(harness_tempdir(conf_dir, sizeof conf_dir), 0);
        snprintf(conf_path, sizeof conf_path, "%s/cluster.conf", conf_dir);
    }
    ck_assert_int_eq(harness_write_file(conf_path, text, strlen(text)), 0);
}

static void conf_dir_free(void)
{
    if (conf_dir[0] != '\0')
        harness_rmtree(conf_dir);
    conf_dir[0] = '\0';
}

START_TEST(kv_open_on_a_broken_config_is_einval_naming_the_line)
{
    const struct bad_conf *b = &bad_confs[_i];
    write_conf(b->text);
    kv *h = NULL;
    int rc = kv_open(conf_path, NULL, &h);
    if (rc == KV_OK)
        kv_close(h);
    ck_assert_msg(rc == KV_EINVAL, "%s: kv_open returned %s", b->what,
                  kv_strerror(rc));
    char want[32];
    snprintf(want, sizeof want, "cluster.conf:%d", b->line);
    const char *msg = kv_errmsg(NULL);
    ck_assert_msg(strstr(msg, want) != NULL,
                  "%s: kv_errmsg \"%s\" does not name %s", b->what, msg, want);
    conf_dir_free();
}
END_TEST

START_TEST(kvnode_exits_2_on_a_broken_config_naming_the_line)
{
    const struct bad_conf *b = &bad_confs[_i];
    write_conf(b->text);
    char want[32];
    snprintf(want, sizeof want, "cluster.conf:%d", b->line);
    const char *check[] = {"-c", conf_path, "--check", NULL};
    const char *run[] = {"-c", conf_path, "-n", "1", NULL};
    const char *const *argvs[] = {check, run};
    for (int a = 0; a < 2; a++) {
        int code = -1;
        char err[2048];
        int rc = harness_run_kvnode(argvs[a], 10000, &code, NULL, 0, err,
                                    sizeof err);
        ck_assert_msg(rc == 0, "%s: kvnode %s did not exit in 10 s", b->what,
                      a == 0 ? "--check" : "-n 1");
        ck_assert_msg(code == 2, "%s: kvnode %s exited %d, want 2 (stderr: %s)",
                      b->what, a == 0 ? "--check" : "-n 1", code, err);
        ck_assert_msg(strstr(err, want) != NULL,
                      "%s: kvnode's stderr \"%s\" does not name %s", b->what,
                      err, want);
    }
    conf_dir_free();
}
END_TEST

START_TEST(a_valid_config_passes_kvnode_check)
{
    write_conf("# three nodes\n"
               "cluster = good\n"
               "shards = 16\n"
               "replicas = 3\n"
               "data_dir = data\n"
               "\n"
               "[node 7]\naddress = tcp://127.0.0.1:7107\n"
               "[node 2]\naddress = tcp://127.0.0.1:7102\n"
               "[node 3]\naddress = tcp://127.0.0.1:7103\n");
    const char *args[] = {"-c", conf_path, "--check", NULL};
    int code = -1;
    char out[2048], err[2048];
    ck_assert_int_eq(harness_run_kvnode(args, 10000, &code, out, sizeof out,
                                        err, sizeof err),
                     0);
    ck_assert_msg(code == 0, "kvnode --check exited %d: %s", code, err);
    char want[512];
    snprintf(want, sizeof want, "data_dir %s/data\n", conf_dir);
    ck_assert_msg(strstr(out, want) != NULL, "no \"%s\" in \"%s\"", want, out);
    /* Nodes are listed, sorted by id. */
    const char *n2 = strstr(out, "node 2 tcp://127.0.0.1:7102\n");
    const char *n3 = strstr(out, "node 3 tcp://127.0.0.1:7103\n");
    const char *n7 = strstr(out, "node 7 tcp://127.0.0.1:7107\n");
    ck_assert_msg(n2 != NULL && n3 != NULL && n7 != NULL,
                  "nodes missing in \"%s\"", out);
    ck_assert(n2 < n3 && n3 < n7);
    /* kv_open accepts it too. */
    kv *h = NULL;
    ck_assert_int_eq(kv_open(conf_path, NULL, &h), KV_OK);
    ck_assert_uint_eq(admin_node_count(h), 3);
    kv_close(h);
    conf_dir_free();
}
END_TEST

START_TEST(kvnode_without_a_usable_config_or_node_exits_non_zero)
{
    write_conf("cluster = good\n"
               "shards = 4\n"
               "replicas = 1\n"
               "data_dir = data\n"
               "[node 1]\naddress = tcp://127.0.0.1:7101\n");
    char missing[400];
    snprintf(missing, sizeof missing, "%s/no-such.conf", conf_dir);
    const char *no_file[] = {"-c", missing, "-n", "1", NULL};
    const char *no_node[] = {"-c", conf_path, "-n", "9", NULL};
    const char *bad_id[] = {"-c", conf_path, "-n", "x", NULL};
    const char *no_args[] = {NULL};
    const char *const *cases[] = {no_file, no_node, bad_id, no_args};
    for (int k = 0; k < 4; k++) {
        int code = 0;
        char err[2048];
        int rc = harness_run_kvnode(cases[k], 10000, &code, NULL, 0, err,
                                    sizeof err);
        ck_assert_msg(rc == 0, "case %d: kvnode did not exit in 10 s", k);
        ck_assert_msg(code != 0 && code < 128,
                      "case %d: kvnode exited %d (stderr: %s)", k, code, err);
        ck_assert_msg(err[0] != '\0', "case %d: kvnode said nothing", k);
    }
    conf_dir_free();
}
END_TEST

START_TEST(kvnode_refuses_a_data_dir_of_another_cluster)
{
    struct cluster *c = NULL;
    struct cluster_opts o = {.name = "alpha"};
    ck_assert_int_eq(cluster_start_opts(&c, 1, 4, 1, &o), 0);
    kv *h = NULL;
    ck_assert_int_eq(kv_open(cluster_conf_path(c), NULL, &h), KV_OK);
    ck_assert_int_eq(kv_put(h, "k", 1, "alpha data", 10, NULL, NULL), KV_OK);
    kv_close(h);
    ck_assert_int_eq(cluster_kill(c, 0, SIGTERM), 0);

    ck_assert_int_eq(cluster_set_name(c, "beta"), 0);
    const char *args[] = {"-c", cluster_conf_path(c), "-n", "1", NULL};
    int code = 0;
    char err[4096];
    int rc = harness_run_kvnode(args, 10000, &code, NULL, 0, err, sizeof err);
    ck_assert_msg(rc == 0, "kvnode started on another cluster's data");
    ck_assert_msg(code != 0 && code < 128, "kvnode exited %d: %s", code, err);
    ck_assert_msg(strstr(err, "alpha") != NULL || strstr(err, "beta") != NULL,
                  "the message does not name the clusters: \"%s\"", err);

    /* With its own name back, the node starts and has its data. */
    ck_assert_int_eq(cluster_set_name(c, "alpha"), 0);
    ck_assert_int_eq(cluster_restart_node(c, 0), 0);
    ck_assert_int_eq(kv_open(cluster_conf_path(c), NULL, &h), KV_OK);
    void *val = NULL;
    size_t vlen = 0;
    rc = kv_get(h, "k", 1, NULL, &val, &vlen, NULL);
    ck_assert_int_eq(rc, KV_OK);
    ck_assert_uint_eq(vlen, 10);
    ck_assert(memcmp(val, "alpha data", 10) == 0);
    kv_free(val);
    kv_close(h);
    ck_assert_int_eq(cluster_stop(c), 0);
}
END_TEST

/* --- suites --------------------------------------------------------------- */

static Suite *frames_suite(void)
{
    Suite *s = suite_create("badinput_frames");
    TCase *tc = tcase_create("frames");
    tcase_add_unchecked_fixture(tc, cluster_up, cluster_down);
    tcase_add_checked_fixture(tc, open_db, close_db);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, random_frames_get_eproto_and_the_node_keeps_serving);
    tcase_add_test(tc, truncated_frames_get_eproto_and_store_nothing);
    tcase_add_test(tc, a_frame_of_an_unknown_protocol_version_gets_eproto);
    tcase_add_test(tc, frames_that_are_not_requests_get_an_error);
    tcase_add_test(tc, a_batch_frame_is_answered_request_by_request);
    tcase_add_test(tc, multipart_and_empty_messages_do_not_break_a_node);
    tcase_add_test(tc, an_oversized_frame_does_not_stop_the_node);
    tcase_add_test(tc, oversized_keys_and_values_get_etoobig_and_store_nothing);
    suite_add_tcase(s, tc);
    return s;
}

static Suite *config_suite(void)
{
    Suite *s = suite_create("badinput_config");
    TCase *tc = tcase_create("config");
    int n = (int)(sizeof bad_confs / sizeof bad_confs[0]);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(
        tc, kv_open_on_a_broken_config_is_einval_naming_the_line, 0, n);
    tcase_add_loop_test(tc, kvnode_exits_2_on_a_broken_config_naming_the_line,
                        0, n);
    tcase_add_test(tc, a_valid_config_passes_kvnode_check);
    tcase_add_test(tc, kvnode_without_a_usable_config_or_node_exits_non_zero);
    tcase_add_test(tc, kvnode_refuses_a_data_dir_of_another_cluster);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (harness_init() != 0)
        return EXIT_FAILURE;
    SRunner *sr = srunner_create(frames_suite());
    srunner_add_suite(sr, config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (problems != 0) {
        fprintf(stderr, "badinput: %d fixture problem(s)\n", problems);
        failed += problems;
    }
    return harness_fini(failed);
}
