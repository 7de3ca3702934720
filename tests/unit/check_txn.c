/*
 * check_txn - unit tests of the transaction coordinator (kvnode/txn.c).
 *
 * The coordinator is pure: it acts only through struct txn_env. These
 * tests give it a fake env that records every call it makes and every
 * answer it gives a client, and a wall clock they move by hand; they play
 * the shards' part by answering its calls. Each test follows one path of
 * the protocol of kvnode/txn.h: a commit, a NO vote, a deadline, repeated
 * and redirected calls, a client's retry, and recovery (records adopted on
 * a home shard, prepared parts checked on a participant). The engine side
 * of the same state machines (prepare, resolve, record, decide, forget) is
 * tested in check_engine.c.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"
#include "kv.pb-c.h"
#include "shard.h"
#include "txn.h"

Suite *txn_suite(void);

#define NSHARDS 8
#define TIMEOUT_MS 2000
#define MAX_SEEN 64

/* --- the fake env ------------------------------------------------------- */

struct seen_call {
    uint32_t shard;
    Kv__Request *req; /* unpacked copy */
};

static struct seen_call calls[MAX_SEEN];
static size_t ncalls;
static Kv__Response *answers[MAX_SEEN]; /* to clients, unpacked copies */
static char answer_to_client[MAX_SEEN][16];
static size_t nanswers;
static uint64_t wall = 1000000;
static const char *failpoints[MAX_SEEN];
static size_t nfailpoints;
static struct txns *t;

static void env_call(void *arg, uint32_t shard, const Kv__Request *req)
{
    (void)arg;
    ck_assert_uint_lt(ncalls, MAX_SEEN);
    size_t n = kv__request__get_packed_size(req);
    unsigned char *buf = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(buf);
    kv__request__pack(req, buf);
    calls[ncalls].shard = shard;
    calls[ncalls].req = kv__request__unpack(NULL, n, buf);
    ck_assert_ptr_nonnull(calls[ncalls].req);
    ncalls++;
    free(buf);
}

static void env_reply(void *arg, const void *client, size_t clen,
                      const Kv__Response *resp)
{
    (void)arg;
    ck_assert_uint_lt(nanswers, MAX_SEEN);
    ck_assert_uint_lt(clen, sizeof(answer_to_client[0]));
    size_t n = kv__response__get_packed_size(resp);
    unsigned char *buf = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(buf);
    kv__response__pack(resp, buf);
    answers[nanswers] = kv__response__unpack(NULL, n, buf);
    memcpy(answer_to_client[nanswers], client, clen);
    answer_to_client[nanswers][clen] = '\0';
    nanswers++;
    free(buf);
}

static uint64_t env_wall(void *arg)
{
    (void)arg;
    return wall;
}

static bool leading = true;

static bool env_leads(void *arg, uint32_t shard)
{
    (void)arg;
    (void)shard;
    return leading;
}

static void env_failpoint(void *arg, const char *name)
{
    (void)arg;
    failpoints[nfailpoints++] = name;
}

static void setup(void)
{
    struct txn_env env = {.call = env_call,
                          .reply = env_reply,
                          .wall_ms = env_wall,
                          .leads = env_leads,
                          .failpoint = env_failpoint};
    ncalls = nanswers = nfailpoints = 0;
    leading = true;
    wall = 1000000;
    t = txns_new(NSHARDS, TIMEOUT_MS, &env, 42);
    ck_assert_ptr_nonnull(t);
}

static void teardown(void)
{
    txns_free(t);
    for (size_t i = 0; i < ncalls; i++)
        kv__request__free_unpacked(calls[i].req, NULL);
    for (size_t i = 0; i < nanswers; i++)
        kv__response__free_unpacked(answers[i], NULL);
}

/* --- helpers ------------------------------------------------------------ */

/* Keys of two different shards: a (the home shard's) and b. */
static char key_a[16], key_b[16];
static uint32_t shard_a, shard_b;

static void pick_keys(void)
{
    strcpy(key_a, "a0");
    shard_a = shard_of(key_a, 2, NSHARDS);
    for (int i = 0; i < 1000; i++) {
        snprintf(key_b, sizeof key_b, "b%d", i);
        shard_b = shard_of(key_b, strlen(key_b), NSHARDS);
        if (shard_b != shard_a)
            return;
    }
    ck_abort_msg("no second shard");
}

/* Starts a transaction from client CLIENT: put a, if-version b 7, put b.
 * With SEQ > 0 it carries a session. */
static void start(const char *client, uint64_t seq)
{
    Kv__TxnOp ops[3] = {KV__TXN_OP__INIT, KV__TXN_OP__INIT, KV__TXN_OP__INIT};
    Kv__TxnOp *pops[3] = {&ops[0], &ops[1], &ops[2]};
    ops[0].kind = KV__TXN_OP__KIND__PUT;
    ops[0].key = (ProtobufCBinaryData){strlen(key_a), (uint8_t *)key_a};
    ops[0].value = (ProtobufCBinaryData){2, (uint8_t *)"va"};
    ops[1].kind = KV__TXN_OP__KIND__IF_VERSION;
    ops[1].key = (ProtobufCBinaryData){strlen(key_b), (uint8_t *)key_b};
    ops[1].version = 7;
    ops[2].kind = KV__TXN_OP__KIND__PUT;
    ops[2].key = ops[1].key;
    ops[2].value = (ProtobufCBinaryData){2, (uint8_t *)"vb"};
    Kv__TxnRequest tr = KV__TXN_REQUEST__INIT;
    tr.ops = pops;
    tr.n_ops = 3;
    Kv__Request req = KV__REQUEST__INIT;
    req.id = 5;
    req.client_id = (ProtobufCBinaryData){16, (uint8_t *)"client-session-1"};
    req.seq = seq;
    req.op_case = KV__REQUEST__OP_TXN;
    req.txn = &tr;
    txns_start(t, client, strlen(client), &req, shard_a);
}

/* The calls made since FROM that are of kind OP, counted. */
static size_t count_calls(size_t from, Kv__Request__OpCase op)
{
    size_t n = 0;
    for (size_t i = from; i < ncalls; i++)
        n += calls[i].req->op_case == op;
    return n;
}

/* The last call of kind OP to SHARD since FROM (NULL when none). */
static const struct seen_call *last_call(size_t from, Kv__Request__OpCase op,
                                         uint32_t shard)
{
    const struct seen_call *c = NULL;
    for (size_t i = from; i < ncalls; i++)
        if (calls[i].req->op_case == op && calls[i].shard == shard)
            c = &calls[i];
    return c;
}

static void answer_state(const struct seen_call *c, uint32_t state)
{
    Kv__TxnState st = KV__TXN_STATE__INIT;
    st.state = state;
    Kv__Response r = KV__RESPONSE__INIT;
    r.id = c->req->id;
    r.result_case = KV__RESPONSE__RESULT_TXN_STATE;
    r.txn_state = &st;
    ck_assert(txns_reply(t, &r));
}

static void answer_yes(const struct seen_call *c, uint64_t version)
{
    Kv__WriteResult w = KV__WRITE_RESULT__INIT;
    w.version = version;
    Kv__Response r = KV__RESPONSE__INIT;
    r.id = c->req->id;
    r.result_case = KV__RESPONSE__RESULT_WRITE;
    r.write = &w;
    ck_assert(txns_reply(t, &r));
}

static void answer_code(const struct seen_call *c, int code)
{
    Kv__Response r = KV__RESPONSE__INIT;
    r.id = c->req->id;
    r.code = code;
    ck_assert(txns_reply(t, &r));
}

static void ticks(int n)
{
    for (int i = 0; i < n; i++)
        txns_tick(t);
}

/* Walks a transaction to its prepares; returns the call index after the
 * record. */
static size_t to_prepares(const char *client, uint64_t seq)
{
    pick_keys();
    start(client, seq);
    const struct seen_call *rec =
        last_call(0, KV__REQUEST__OP_TXN_RECORD, shard_a);
    ck_assert_ptr_nonnull(rec);
    ck_assert_uint_eq(rec->req->txn_record->deadline_ms, wall + TIMEOUT_MS);
    ck_assert_uint_eq(rec->req->txn_record->n_parts, 2);
    ck_assert_uint_eq(rec->req->seq, seq); /* the record checks the session */
    size_t mark = ncalls;
    answer_state(rec, 0 /* pending */);
    return mark;
}

/* --- tests ---------------------------------------------------------------- */

/* The whole path: record, prepares split by shard, every vote YES, the
 * decision with the client's session, the answer with a version per op,
 * resolves, forget. */
START_TEST(every_yes_commits_answers_resolves_and_forgets)
{
    size_t mark = to_prepares("c1", 9);
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_PREPARE), 2);
    const struct seen_call *pa =
        last_call(mark, KV__REQUEST__OP_TXN_PREPARE, shard_a);
    const struct seen_call *pb =
        last_call(mark, KV__REQUEST__OP_TXN_PREPARE, shard_b);
    ck_assert_ptr_nonnull(pa);
    ck_assert_ptr_nonnull(pb);
    ck_assert_uint_eq(pa->req->txn_prepare->n_ops, 1);
    ck_assert_uint_eq(pb->req->txn_prepare->n_ops, 2); /* condition + put */
    ck_assert_uint_eq(pb->req->txn_prepare->home, shard_a);
    mark = ncalls;
    answer_yes(pa, 40);
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_DECIDE), 0);
    answer_yes(pb, 77);
    ck_assert_uint_eq(nfailpoints, 1);
    ck_assert_str_eq(failpoints[0], "txn-prepared");
    const struct seen_call *d =
        last_call(mark, KV__REQUEST__OP_TXN_DECIDE, shard_a);
    ck_assert_ptr_nonnull(d);
    ck_assert_uint_eq(d->req->txn_decide->want, 1);
    ck_assert_uint_eq(d->req->seq, 9); /* the decision goes in the session */
    ck_assert_uint_eq(nanswers, 0);    /* nobody is told before the decision */
    mark = ncalls;
    answer_state(d, 1 /* committed */);
    ck_assert_str_eq(failpoints[1], "txn-committed");
    ck_assert_uint_eq(nanswers, 1);
    ck_assert_str_eq(answer_to_client[0], "c1");
    const Kv__Response *a = answers[0];
    ck_assert_int_eq(a->code, KV_OK);
    ck_assert_uint_eq(a->id, 5);
    ck_assert_uint_eq(a->txn->n_versions, 3);
    ck_assert_uint_eq(a->txn->versions[0], 40);
    ck_assert_uint_eq(a->txn->versions[1], 7);
    ck_assert_uint_eq(a->txn->versions[2], 77);
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_RESOLVE), 2);
    const struct seen_call *ra =
        last_call(mark, KV__REQUEST__OP_TXN_RESOLVE, shard_a);
    const struct seen_call *rb =
        last_call(mark, KV__REQUEST__OP_TXN_RESOLVE, shard_b);
    ck_assert(ra->req->txn_resolve->commit && rb->req->txn_resolve->commit);
    mark = ncalls;
    answer_code(ra, KV_OK);
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_DECIDE), 0);
    answer_code(rb, KV_OK);
    const struct seen_call *f =
        last_call(mark, KV__REQUEST__OP_TXN_DECIDE, shard_a);
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(f->req->txn_decide->want, 3);
    ck_assert_uint_eq(txns_active(t), 1);
    answer_state(f, 3);
    ck_assert_uint_eq(txns_active(t), 0);
}
END_TEST

/* A NO vote aborts: the client learns which of ITS ops failed, and every
 * participant (even one that voted yes) is told to abort. */
START_TEST(a_no_vote_aborts_and_names_the_failed_op)
{
    size_t mark = to_prepares("c2", 3);
    const struct seen_call *pa =
        last_call(mark, KV__REQUEST__OP_TXN_PREPARE, shard_a);
    const struct seen_call *pb =
        last_call(mark, KV__REQUEST__OP_TXN_PREPARE, shard_b);
    answer_yes(pa, 40);
    /* shard b: its first op (the client's op 2) failed, the key is at 9 */
    Kv__TxnResult res = KV__TXN_RESULT__INIT;
    res.failed_op = 1;
    res.current_version = 9;
    Kv__Response r = KV__RESPONSE__INIT;
    r.id = pb->req->id;
    r.code = KV_ECONFLICT;
    r.result_case = KV__RESPONSE__RESULT_TXN;
    r.txn = &res;
    mark = ncalls;
    ck_assert(txns_reply(t, &r));
    ck_assert_uint_eq(nfailpoints, 0);
    const struct seen_call *d =
        last_call(mark, KV__REQUEST__OP_TXN_DECIDE, shard_a);
    ck_assert_uint_eq(d->req->txn_decide->want, 2);
    mark = ncalls;
    answer_state(d, 2 /* aborted */);
    ck_assert_uint_eq(nanswers, 1);
    ck_assert_int_eq(answers[0]->code, KV_ECONFLICT);
    ck_assert_uint_eq(answers[0]->txn->failed_op, 2);
    ck_assert_uint_eq(answers[0]->txn->current_version, 9);
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_RESOLVE), 2);
    ck_assert(!last_call(mark, KV__REQUEST__OP_TXN_RESOLVE, shard_a)
                   ->req->txn_resolve->commit);
}
END_TEST

/* Votes that do not come before the deadline: abort, whatever arrives
 * later; and a decision asked for COMMIT may come back ABORTED (the home
 * shard saw the deadline pass): the client is told the truth. */
START_TEST(missing_votes_at_the_deadline_abort)
{
    size_t mark = to_prepares("c3", 4);
    const struct seen_call *pa =
        last_call(mark, KV__REQUEST__OP_TXN_PREPARE, shard_a);
    answer_yes(pa, 40);
    wall += TIMEOUT_MS + 1;
    mark = ncalls;
    ticks(1);
    const struct seen_call *d =
        last_call(mark, KV__REQUEST__OP_TXN_DECIDE, shard_a);
    ck_assert_ptr_nonnull(d);
    ck_assert_uint_eq(d->req->txn_decide->want, 2);
    answer_state(d, 2);
    ck_assert_int_eq(answers[0]->code, KV_ECONFLICT);
    ck_assert_ptr_nonnull(strstr(answers[0]->message, "deadline"));
}
END_TEST

/* Unanswered calls are repeated after TXN_RETRY_TICKS; a transient answer
 * (not the leader, unavailable) brings the repeat sooner. */
START_TEST(unanswered_and_redirected_calls_are_repeated)
{
    size_t mark = to_prepares("c4", 5);
    const struct seen_call *pb =
        last_call(mark, KV__REQUEST__OP_TXN_PREPARE, shard_b);
    uint64_t first_id = pb->req->id;
    mark = ncalls;
    ticks(TXN_RETRY_TICKS - 1);
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_PREPARE), 0);
    ticks(1);
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_PREPARE), 2);
    pb = last_call(mark, KV__REQUEST__OP_TXN_PREPARE, shard_b);
    ck_assert_uint_ne(pb->req->id, first_id);
    mark = ncalls;
    answer_code(pb, KV_ENOTLEADER);
    ticks(5);
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_PREPARE), 1);
    /* an answer to a call that was replaced is ignored */
    Kv__WriteResult w = KV__WRITE_RESULT__INIT;
    Kv__Response late = KV__RESPONSE__INIT;
    late.id = first_id;
    late.result_case = KV__RESPONSE__RESULT_WRITE;
    late.write = &w;
    size_t before = ncalls;
    ck_assert(txns_reply(t, &late));
    ck_assert_uint_eq(count_calls(before, KV__REQUEST__OP_TXN_DECIDE), 0);
    /* a client request's id (no call bit) is not the coordinator's */
    late.id = 5;
    ck_assert(!txns_reply(t, &late));
}
END_TEST

/* A client's retry (same session) joins the running coordinator; the
 * newest address gets the one answer. */
START_TEST(a_client_retry_joins_the_running_transaction)
{
    size_t mark = to_prepares("old", 6);
    start("new", 6);
    ck_assert_uint_eq(txns_active(t), 1);
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_RECORD), 0);
    const struct seen_call *pa =
        last_call(mark, KV__REQUEST__OP_TXN_PREPARE, shard_a);
    const struct seen_call *pb =
        last_call(mark, KV__REQUEST__OP_TXN_PREPARE, shard_b);
    answer_yes(pa, 1);
    mark = ncalls;
    answer_yes(pb, 2);
    answer_state(last_call(mark, KV__REQUEST__OP_TXN_DECIDE, shard_a), 1);
    ck_assert_uint_eq(nanswers, 1);
    ck_assert_str_eq(answer_to_client[0], "new");
    /* the same session's next transaction is another one */
    start("new", 7);
    ck_assert_uint_eq(txns_active(t), 2);
}
END_TEST

/* A record found already decided (a retry after the coordinator died):
 * no prepare; the client gets the decision, versions unknown (0). */
START_TEST(a_record_found_decided_is_answered_and_resolved)
{
    pick_keys();
    start("c5", 8);
    const struct seen_call *rec =
        last_call(0, KV__REQUEST__OP_TXN_RECORD, shard_a);
    size_t mark = ncalls;
    answer_state(rec, 1);
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_PREPARE), 0);
    ck_assert_int_eq(answers[0]->code, KV_OK);
    ck_assert_uint_eq(answers[0]->txn->n_versions, 3);
    ck_assert_uint_eq(answers[0]->txn->versions[0], 0);
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_RESOLVE), 2);
}
END_TEST

/* Recovery on a home shard: a PENDING record is left alone until its
 * deadline, then aborted; a decided one is resolved and forgotten. */
START_TEST(recovery_aborts_an_expired_record_and_finishes_a_decided_one)
{
    unsigned char id[ENGINE_TXN_ID_LEN] = "record-one-12345";
    uint32_t parts[2] = {1, 4};
    struct engine_txn_info x = {.txn_id = id,
                                .state = ENGINE_TXN_PENDING,
                                .deadline_ms = wall + 100,
                                .parts = parts,
                                .nparts = 2};
    txns_adopt(t, 1, &x);
    ck_assert_uint_eq(txns_active(t), 0);
    ck_assert_uint_eq(ncalls, 0);
    wall += 101;
    txns_adopt(t, 1, &x);
    ck_assert_uint_eq(txns_active(t), 1);
    const struct seen_call *d = last_call(0, KV__REQUEST__OP_TXN_DECIDE, 1);
    ck_assert_uint_eq(d->req->txn_decide->want, 2);
    txns_adopt(t, 1, &x); /* already driven: nothing more */
    ck_assert_uint_eq(txns_active(t), 1);
    size_t mark = ncalls;
    answer_state(d, 2);
    ck_assert_uint_eq(nanswers, 0); /* nobody to answer */
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_RESOLVE), 2);
    ck_assert(!last_call(mark, KV__REQUEST__OP_TXN_RESOLVE, 4)
                   ->req->txn_resolve->commit);

    unsigned char id2[ENGINE_TXN_ID_LEN] = "record-two-12345";
    x.txn_id = id2;
    x.state = ENGINE_TXN_COMMITTED;
    mark = ncalls;
    txns_adopt(t, 1, &x);
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_RESOLVE), 2);
    ck_assert(last_call(mark, KV__REQUEST__OP_TXN_RESOLVE, 4)
                  ->req->txn_resolve->commit);
}
END_TEST

/* Recovery on a participant: ask the home shard; resolve as the record
 * says; a record still PENDING is asked about again at a later sweep.
 * The participant never decides by itself. */
START_TEST(a_participant_check_asks_the_home_shard_and_resolves_as_told)
{
    unsigned char id[ENGINE_TXN_ID_LEN] = "prepared-1234567";
    struct engine_txn_info p = {
        .txn_id = id, .state = -1, .home = 2, .deadline_ms = wall - 1};
    txns_check_prepared(t, 5, &p);
    const struct seen_call *ask = last_call(0, KV__REQUEST__OP_TXN_DECIDE, 2);
    ck_assert_ptr_nonnull(ask);
    ck_assert_uint_eq(ask->req->txn_decide->want, 0);
    size_t mark = ncalls;
    answer_state(ask, 0); /* still pending */
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_RESOLVE), 0);
    ck_assert_uint_eq(txns_active(t), 0);
    txns_check_prepared(t, 5, &p);
    ask = last_call(mark, KV__REQUEST__OP_TXN_DECIDE, 2);
    mark = ncalls;
    answer_state(ask, 3); /* gone: never made, so aborted */
    const struct seen_call *rs =
        last_call(mark, KV__REQUEST__OP_TXN_RESOLVE, 5);
    ck_assert_ptr_nonnull(rs);
    ck_assert(!rs->req->txn_resolve->commit);
    answer_code(rs, KV_OK);
    ck_assert_uint_eq(txns_active(t), 0);
}
END_TEST

/* A coordinator whose node lost the home shard's leadership stops at its
 * next step (no decision, no answer): the new leader carries on from the
 * record, so two coordinators never drive one transaction. */
START_TEST(a_coordinator_stops_when_its_node_no_longer_leads_the_home_shard)
{
    size_t mark = to_prepares("c6", 11);
    const struct seen_call *pa =
        last_call(mark, KV__REQUEST__OP_TXN_PREPARE, shard_a);
    const struct seen_call *pb =
        last_call(mark, KV__REQUEST__OP_TXN_PREPARE, shard_b);
    answer_yes(pa, 1);
    leading = false;
    mark = ncalls;
    answer_yes(pb, 2);
    ck_assert_uint_eq(count_calls(mark, KV__REQUEST__OP_TXN_DECIDE), 0);
    ck_assert_uint_eq(txns_active(t), 0);
    ck_assert_uint_eq(nanswers, 0);
    /* and at a tick, without any answer */
    leading = true;
    to_prepares("c7", 12);
    leading = false;
    ticks(1);
    ck_assert_uint_eq(txns_active(t), 0);
}
END_TEST

Suite *txn_suite(void)
{
    Suite *s = suite_create("txn");
    TCase *tc = tcase_create("coordinator");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, every_yes_commits_answers_resolves_and_forgets);
    tcase_add_test(tc, a_no_vote_aborts_and_names_the_failed_op);
    tcase_add_test(tc, missing_votes_at_the_deadline_abort);
    tcase_add_test(tc, unanswered_and_redirected_calls_are_repeated);
    tcase_add_test(tc, a_client_retry_joins_the_running_transaction);
    tcase_add_test(tc, a_record_found_decided_is_answered_and_resolved);
    tcase_add_test(
        tc, a_coordinator_stops_when_its_node_no_longer_leads_the_home_shard);
    suite_add_tcase(s, tc);
    tc = tcase_create("recovery");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(
        tc, recovery_aborts_an_expired_record_and_finishes_a_decided_one);
    tcase_add_test(
        tc, a_participant_check_asks_the_home_shard_and_resolves_as_told);
    suite_add_tcase(s, tc);
    return s;
}
