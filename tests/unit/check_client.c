/*
 * check_client - unit tests of libkv's cluster-mode routing (libkv/client.c)
 * when a node answers KV_ECORRUPT (its data is damaged, docs/security.md).
 *
 * The nodes are fakes: three ZeroMQ ROUTER sockets on 127.0.0.1, served by
 * a thread of the test, each answering every request by a script (the
 * value, KV_ECORRUPT, or KV_ENOTLEADER naming node 1). One shard, replicas
 * 3: its members in routing order are nodes 1, 2, 3, so a call starts at
 * node 1. The fakes count the requests each node got and keep the session
 * (client id, sequence number) of each write. Each handle first reads once
 * from every node while all answer, so that its connections are up and a
 * call goes where the routing sends it, not past a node still connecting.
 */
#define _DEFAULT_SOURCE /* mkdtemp */

#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "admin.h"
#include "kv.h"
#include "wire.h"

Suite *client_suite(void);

#define NNODES 3
#define MAX_WRITES 8

enum script { ANSWER, CORRUPT, HINT_NODE_1 };

struct fake {
    void *ctx;
    void *sock[NNODES];
    char addr[NNODES][64];
    enum script script[NNODES];
    unsigned requests[NNODES];
    /* The sessions of the writes received, in order. */
    unsigned nwrites;
    unsigned char client_id[MAX_WRITES][32];
    size_t client_id_len[MAX_WRITES];
    uint64_t seq[MAX_WRITES];
    atomic_int armed; /* 0: every node answers (connections warm up) */
    atomic_int stop;
    pthread_t thread;
};

static char dir[64];
static char conf_path[128];

/* Answers one request received on node I. */
static void serve_one(struct fake *f, int i)
{
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    zmq_msg_init(&body);
    if (zmq_msg_recv(&id, f->sock[i], ZMQ_DONTWAIT) < 0 ||
        zmq_msg_recv(&body, f->sock[i], ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&id);
        zmq_msg_close(&body);
        return;
    }
    Kv__Envelope *env = NULL;
    char err[128];
    if (wire_decode(zmq_msg_data(&body), zmq_msg_size(&body), 1u << 20, &env,
                    err, sizeof err) != KV_OK ||
        env->body_case != KV__ENVELOPE__BODY_REQUEST) {
        wire_free(env);
        zmq_msg_close(&id);
        zmq_msg_close(&body);
        return;
    }
    const Kv__Request *req = env->request;
    bool armed = atomic_load(&f->armed);
    enum script script = armed ? f->script[i] : ANSWER;
    if (armed)
        f->requests[i]++;
    if (armed && req->op_case == KV__REQUEST__OP_PUT &&
        f->nwrites < MAX_WRITES &&
        req->client_id.len <= sizeof f->client_id[0]) {
        memcpy(f->client_id[f->nwrites], req->client_id.data,
               req->client_id.len);
        f->client_id_len[f->nwrites] = req->client_id.len;
        f->seq[f->nwrites++] = req->seq;
    }
    Kv__Response resp = KV__RESPONSE__INIT;
    Kv__GetResult get = KV__GET_RESULT__INIT;
    Kv__WriteResult write = KV__WRITE_RESULT__INIT;
    resp.id = req->id;
    if (script == CORRUPT) {
        resp.code = KV_ECORRUPT;
        resp.message = "data directory is damaged (a fake)";
    } else if (script == HINT_NODE_1) {
        resp.code = KV_ENOTLEADER;
        resp.leader_id = 1;
    } else if (req->op_case == KV__REQUEST__OP_GET) {
        get.value.data = (uint8_t *)"value";
        get.value.len = 5;
        get.version = 7;
        resp.result_case = KV__RESPONSE__RESULT_GET;
        resp.get = &get;
    } else {
        write.version = 9;
        resp.result_case = KV__RESPONSE__RESULT_WRITE;
        resp.write = &write;
    }
    void *buf = NULL;
    size_t len = 0;
    if (wire_encode_response(&resp, &buf, &len) == KV_OK) {
        zmq_send(f->sock[i], zmq_msg_data(&id), zmq_msg_size(&id), ZMQ_SNDMORE);
        zmq_send(f->sock[i], buf, len, 0);
    }
    free(buf);
    wire_free(env);
    zmq_msg_close(&id);
    zmq_msg_close(&body);
}

static void *serve(void *arg)
{
    struct fake *f = arg;
    while (!atomic_load(&f->stop)) {
        zmq_pollitem_t items[NNODES];
        for (int i = 0; i < NNODES; i++)
            items[i] =
                (zmq_pollitem_t){.socket = f->sock[i], .events = ZMQ_POLLIN};
        if (zmq_poll(items, NNODES, 10) <= 0)
            continue;
        for (int i = 0; i < NNODES; i++)
            if (items[i].revents & ZMQ_POLLIN)
                serve_one(f, i);
    }
    return NULL;
}

/* Binds the three fake nodes on free ports, writes the cluster.conf that
 * names them and starts serving with the scripts S1, S2, S3. */
static void fake_start(struct fake *f, enum script s1, enum script s2,
                       enum script s3)
{
    memset(f, 0, sizeof *f);
    atomic_init(&f->armed, 0);
    atomic_init(&f->stop, 0);
    f->script[0] = s1;
    f->script[1] = s2;
    f->script[2] = s3;
    f->ctx = zmq_ctx_new();
    ck_assert_ptr_nonnull(f->ctx);
    FILE *c = fopen(conf_path, "w");
    ck_assert_ptr_nonnull(c);
    fprintf(c, "cluster = fake\nshards = 1\nreplicas = %d\n", NNODES);
    for (int i = 0; i < NNODES; i++) {
        f->sock[i] = zmq_socket(f->ctx, ZMQ_ROUTER);
        ck_assert_ptr_nonnull(f->sock[i]);
        int zero = 0;
        zmq_setsockopt(f->sock[i], ZMQ_LINGER, &zero, sizeof zero);
        ck_assert_int_eq(zmq_bind(f->sock[i], "tcp://127.0.0.1:*"), 0);
        size_t n = sizeof f->addr[i];
        ck_assert_int_eq(
            zmq_getsockopt(f->sock[i], ZMQ_LAST_ENDPOINT, f->addr[i], &n), 0);
        fprintf(c, "[node %d]\naddress = %s\n", i + 1, f->addr[i]);
    }
    ck_assert_int_eq(fclose(c), 0);
    ck_assert_int_eq(pthread_create(&f->thread, NULL, serve, f), 0);
}

/* Stops serving (the counts are final after it) and closes the nodes. */
static void fake_stop(struct fake *f)
{
    atomic_store(&f->stop, 1);
    pthread_join(f->thread, NULL);
    for (int i = 0; i < NNODES; i++)
        zmq_close(f->sock[i]);
    zmq_ctx_term(f->ctx);
}

/* Opens a handle on the fakes of F, connects it to each (a stale read
 * goes to each member in turn, while every node still answers), then
 * starts F's scripts. */
static kv *open_client(struct fake *f)
{
    kv_open_opts oo = {.timeout_ms = 3000};
    kv *db = NULL;
    int rc = kv_open(conf_path, &oo, &db);
    ck_assert_msg(rc == KV_OK, "kv_open: %s (%s)", kv_strerror(rc),
                  kv_errmsg(NULL));
    kv_opts stale = {.stale = 1};
    for (int i = 0; i < NNODES; i++) {
        void *val = NULL;
        size_t vlen = 0;
        ck_assert_int_eq(kv_get(db, "k", 1, &stale, &val, &vlen, NULL), KV_OK);
        kv_free(val);
    }
    atomic_store(&f->armed, 1);
    return db;
}

/* A get of "k": its code, and on KV_OK the value and version checked. */
static int get_k(kv *db)
{
    void *val = NULL;
    size_t vlen = 0;
    uint64_t ver = 0;
    int rc = kv_get(db, "k", 1, NULL, &val, &vlen, &ver);
    if (rc == KV_OK) {
        ck_assert_uint_eq(vlen, 5);
        ck_assert_int_eq(memcmp(val, "value", 5), 0);
        ck_assert_uint_eq(ver, 7);
    }
    kv_free(val);
    return rc;
}

/* The folder of the cluster.conf each test writes (the tests run one
 * after the other). */
static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/kvclient-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(conf_path, sizeof conf_path, "%s/cluster.conf", dir);
}

static void teardown(void)
{
    unlink(conf_path);
    rmdir(dir);
}

/* Runs one pipelined get of "k"; returns its code (version checked). */
static int pipelined_get(kv *db)
{
    ck_assert_int_eq(admin_pipeline(db, 1), KV_OK);
    struct admin_op op = {.kind = ADMIN_GET, .key = "k", .klen = 1};
    ck_assert_int_eq(admin_submit(db, 0, &op), KV_OK);
    unsigned done[1];
    int n = 0;
    for (int i = 0; i < 100 && n == 0; i++)
        n = admin_poll(db, 100, done, 1);
    ck_assert_int_eq(n, 1);
    if (op.rc == KV_OK)
        ck_assert_uint_eq(op.version, 7);
    return op.rc;
}

/* Starts fakes scripted S1, S2, S3, gets "k" once through a handle (with
 * PIPELINED, through the pipeline API) and stops them: the get's code,
 * and in MSG the handle's message. F keeps the fakes' counts. */
static int get_on(struct fake *f, enum script s1, enum script s2,
                  enum script s3, bool pipelined, char msg[256])
{
    fake_start(f, s1, s2, s3);
    kv *db = open_client(f);
    int rc = pipelined ? pipelined_get(db) : get_k(db);
    snprintf(msg, 256, "%s", kv_errmsg(db));
    kv_close(db);
    fake_stop(f);
    return rc;
}

START_TEST(a_damaged_nodes_answer_goes_to_the_next_member)
{
    struct fake f;
    char msg[256];
    int rc = get_on(&f, CORRUPT, ANSWER, ANSWER, false, msg);
    ck_assert_msg(rc == KV_OK, "get: %s (%s)", kv_strerror(rc), msg);
    ck_assert_uint_eq(f.requests[0], 1);
    ck_assert_uint_eq(f.requests[1], 1);
    ck_assert_uint_eq(f.requests[2], 0);
}
END_TEST

START_TEST(a_hint_back_to_the_damaged_node_is_not_followed)
{
    struct fake f;
    char msg[256];
    int rc = get_on(&f, CORRUPT, HINT_NODE_1, ANSWER, false, msg);
    ck_assert_msg(rc == KV_OK, "get: %s (%s)", kv_strerror(rc), msg);
    ck_assert_uint_eq(f.requests[0], 1);
    ck_assert_uint_ge(f.requests[2], 1);
}
END_TEST

START_TEST(corruption_on_every_member_is_the_answer)
{
    struct fake f;
    char msg[256];
    int rc = get_on(&f, CORRUPT, CORRUPT, CORRUPT, false, msg);
    ck_assert_msg(rc == KV_ECORRUPT, "get: %s (%s), not KV_ECORRUPT",
                  kv_strerror(rc), msg);
    ck_assert_msg(strstr(msg, "damaged") != NULL,
                  "the message does not pass the node's on: %s", msg);
    for (int i = 0; i < NNODES; i++)
        ck_assert_uint_eq(f.requests[i], 1);
}
END_TEST

START_TEST(a_write_retried_on_another_member_keeps_its_session)
{
    struct fake f;
    fake_start(&f, CORRUPT, ANSWER, ANSWER);
    kv *db = open_client(&f);
    uint64_t ver = 0;
    int rc = kv_put(db, "k", 1, "v", 1, NULL, &ver);
    char msg[256];
    snprintf(msg, sizeof msg, "%s", kv_errmsg(db));
    kv_close(db);
    fake_stop(&f);
    ck_assert_msg(rc == KV_OK, "put: %s (%s)", kv_strerror(rc), msg);
    ck_assert_uint_eq(ver, 9);
    ck_assert_uint_eq(f.nwrites, 2);
    ck_assert_uint_ne(f.seq[0], 0);
    ck_assert_uint_eq(f.seq[1], f.seq[0]);
    ck_assert_uint_eq(f.client_id_len[1], f.client_id_len[0]);
    ck_assert_int_eq(memcmp(f.client_id[1], f.client_id[0], f.client_id_len[0]),
                     0);
}
END_TEST

START_TEST(the_pipeline_takes_a_damaged_nodes_answer_to_the_next_member)
{
    struct fake f;
    char msg[256];
    int rc = get_on(&f, CORRUPT, HINT_NODE_1, ANSWER, true, msg);
    ck_assert_int_eq(rc, KV_OK);
    ck_assert_uint_eq(f.requests[0], 1); /* the hint was not followed */
    ck_assert_uint_ge(f.requests[2], 1);
}
END_TEST

START_TEST(the_pipeline_returns_corruption_on_every_member)
{
    struct fake f;
    char msg[256];
    int rc = get_on(&f, CORRUPT, CORRUPT, CORRUPT, true, msg);
    ck_assert_int_eq(rc, KV_ECORRUPT);
    for (int i = 0; i < NNODES; i++)
        ck_assert_uint_eq(f.requests[i], 1);
}
END_TEST

Suite *client_suite(void)
{
    Suite *s = suite_create("client");
    TCase *tc = tcase_create("damaged node");
    /* In the parent: the folder goes even when a test fails. */
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, a_damaged_nodes_answer_goes_to_the_next_member);
    tcase_add_test(tc, a_hint_back_to_the_damaged_node_is_not_followed);
    tcase_add_test(tc, corruption_on_every_member_is_the_answer);
    tcase_add_test(tc, a_write_retried_on_another_member_keeps_its_session);
    tcase_add_test(
        tc, the_pipeline_takes_a_damaged_nodes_answer_to_the_next_member);
    tcase_add_test(tc, the_pipeline_returns_corruption_on_every_member);
    suite_add_tcase(s, tc);
    return s;
}
