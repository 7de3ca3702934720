/*
 * check_inflight - unit tests of the per-connection request table
 * (kvnode/inflight.c): the cap, answers, expiry, many connections.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "inflight.h"
#include "kv.h"

Suite *inflight_suite(void);

static const char A[] = "\x00\x6b\x8b\x45\x67"; /* ROUTER-style ids */
static const char B[] = "\x00\x6b\x8b\x45\x68";
#define ID(x) (x), (sizeof(x) - 1)

START_TEST(a_connection_holds_at_most_cap_requests)
{
    struct inflight *t = inflight_new(3);
    ck_assert_ptr_nonnull(t);
    for (uint64_t id = 1; id <= 3; id++)
        ck_assert_int_eq(inflight_add(t, ID(A), id, 1000, false), KV_OK);
    ck_assert_int_eq(inflight_add(t, ID(A), 4, 1000, false), KV_EUNAVAILABLE);
    ck_assert_uint_eq(inflight_count(t, ID(A)), 3);
    /* Another connection has a cap of its own. */
    ck_assert_int_eq(inflight_add(t, ID(B), 1, 1000, false), KV_OK);
    ck_assert_uint_eq(inflight_count(t, ID(B)), 1);
    ck_assert_uint_eq(inflight_connections(t), 2);
    inflight_free(t);
}
END_TEST

START_TEST(an_answer_frees_one_place)
{
    struct inflight *t = inflight_new(2);
    ck_assert_int_eq(inflight_add(t, ID(A), 7, 1000, false), KV_OK);
    ck_assert_int_eq(inflight_add(t, ID(A), 8, 1000, false), KV_OK);
    ck_assert_int_eq(inflight_add(t, ID(A), 9, 1000, false), KV_EUNAVAILABLE);
    /* An answer to a request it does not hold changes nothing. */
    ck_assert(!inflight_done(t, ID(A), 9, NULL));
    ck_assert(!inflight_done(t, ID(B), 7, NULL));
    ck_assert(inflight_done(t, ID(A), 8, NULL));
    ck_assert_uint_eq(inflight_count(t, ID(A)), 1);
    ck_assert_int_eq(inflight_add(t, ID(A), 9, 1000, false), KV_OK);
    ck_assert(inflight_done(t, ID(A), 7, NULL));
    ck_assert(inflight_done(t, ID(A), 9, NULL));
    /* A connection with nothing held is gone. */
    ck_assert_uint_eq(inflight_connections(t), 0);
    ck_assert_uint_eq(inflight_count(t, ID(A)), 0);
    inflight_free(t);
}
END_TEST

START_TEST(an_answer_learns_whether_its_request_came_in_a_batch)
{
    struct inflight *t = inflight_new(4);
    ck_assert_int_eq(inflight_add(t, ID(A), 1, 1000, true), KV_OK);
    ck_assert_int_eq(inflight_add(t, ID(A), 2, 1000, false), KV_OK);
    ck_assert_int_eq(inflight_add(t, ID(B), 1, 1000, false), KV_OK);
    bool batched = false;
    ck_assert(inflight_done(t, ID(B), 1, &batched));
    ck_assert(!batched);
    ck_assert(inflight_done(t, ID(A), 1, &batched));
    ck_assert(batched);
    ck_assert(inflight_done(t, ID(A), 2, &batched));
    ck_assert(!batched);
    batched = true;
    ck_assert(!inflight_done(t, ID(A), 3, &batched));
    ck_assert(batched); /* untouched when there was no such request */
    inflight_free(t);
}
END_TEST

START_TEST(a_request_id_used_twice_is_held_twice)
{
    struct inflight *t = inflight_new(4);
    ck_assert_int_eq(inflight_add(t, ID(A), 5, 1000, false), KV_OK);
    ck_assert_int_eq(inflight_add(t, ID(A), 5, 1000, false), KV_OK);
    ck_assert(inflight_done(t, ID(A), 5, NULL));
    ck_assert_uint_eq(inflight_count(t, ID(A)), 1);
    ck_assert(inflight_done(t, ID(A), 5, NULL));
    ck_assert(!inflight_done(t, ID(A), 5, NULL));
    inflight_free(t);
}
END_TEST

START_TEST(expired_requests_are_forgotten)
{
    struct inflight *t = inflight_new(4);
    ck_assert_int_eq(inflight_add(t, ID(A), 1, 100, false), KV_OK);
    ck_assert_int_eq(inflight_add(t, ID(A), 2, 300, false), KV_OK);
    ck_assert_int_eq(inflight_add(t, ID(B), 3, 100, false), KV_OK);
    ck_assert_uint_eq(inflight_expire(t, 100), 0); /* not before */
    ck_assert_uint_eq(inflight_expire(t, 101), 2);
    ck_assert_uint_eq(inflight_count(t, ID(A)), 1);
    ck_assert_uint_eq(inflight_count(t, ID(B)), 0);
    ck_assert_uint_eq(inflight_connections(t), 1);
    /* Its late answer is ignored. */
    ck_assert(!inflight_done(t, ID(A), 1, NULL));
    ck_assert(inflight_done(t, ID(A), 2, NULL));
    inflight_free(t);
}
END_TEST

START_TEST(bad_ids_are_refused)
{
    char big[256];
    memset(big, 'x', sizeof big);
    struct inflight *t = inflight_new(1);
    ck_assert_int_eq(inflight_add(t, "", 0, 1, 1, false), KV_EINVAL);
    ck_assert_int_eq(inflight_add(t, NULL, 3, 1, 1, false), KV_EINVAL);
    ck_assert_int_eq(inflight_add(t, big, sizeof big, 1, 1, false), KV_EINVAL);
    ck_assert_int_eq(inflight_add(t, big, 255, 1, 1, false), KV_OK);
    ck_assert(!inflight_done(t, big, 256, 1, NULL));
    ck_assert(inflight_done(t, big, 255, 1, NULL));
    ck_assert_uint_eq(inflight_connections(t), 0);
    inflight_free(t);
    inflight_free(NULL);
}
END_TEST

/* Many connections (the table grows) keep their own counts. */
START_TEST(ten_thousand_connections_keep_their_own_counts)
{
    struct inflight *t = inflight_new(2);
    char id[16];
    for (int i = 0; i < 10000; i++) {
        int n = snprintf(id, sizeof id, "c%d", i);
        ck_assert_int_eq(inflight_add(t, id, (size_t)n, 1, 50, false), KV_OK);
        if (i % 2 == 0)
            ck_assert_int_eq(inflight_add(t, id, (size_t)n, 2, 500, false),
                             KV_OK);
    }
    ck_assert_uint_eq(inflight_connections(t), 10000);
    for (int i = 0; i < 10000; i++) {
        int n = snprintf(id, sizeof id, "c%d", i);
        ck_assert_uint_eq(inflight_count(t, id, (size_t)n), i % 2 ? 1 : 2);
        if (i % 2 == 0)
            ck_assert_int_eq(inflight_add(t, id, (size_t)n, 3, 50, false),
                             KV_EUNAVAILABLE);
    }
    ck_assert_uint_eq(inflight_expire(t, 100), 10000);
    ck_assert_uint_eq(inflight_connections(t), 5000);
    ck_assert_uint_eq(inflight_expire(t, 1000), 5000);
    ck_assert_uint_eq(inflight_connections(t), 0);
    inflight_free(t);
}
END_TEST

Suite *inflight_suite(void)
{
    Suite *s = suite_create("inflight");
    TCase *tc = tcase_create("inflight");
    tcase_add_test(tc, a_connection_holds_at_most_cap_requests);
    tcase_add_test(tc, an_answer_frees_one_place);
    tcase_add_test(tc, an_answer_learns_whether_its_request_came_in_a_batch);
    tcase_add_test(tc, a_request_id_used_twice_is_held_twice);
    tcase_add_test(tc, expired_requests_are_forgotten);
    tcase_add_test(tc, bad_ids_are_refused);
    tcase_add_test(tc, ten_thousand_connections_keep_their_own_counts);
    suite_add_tcase(s, tc);
    return s;
}
