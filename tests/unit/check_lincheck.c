/*
 * check_lincheck - unit tests of the linearizability checker
 * (tests/lincheck/lincheck.c).
 *
 * Hand-written histories, one per rule of the model; histories of a
 * simulated correct register (8 clients, 10 keys, with timeouts) that must
 * pass within a time bound, and the same with one injected stale read that
 * must be caught and named; a brute-force checker over a concrete model
 * (every order, every version a pending write could take) that must agree
 * with lin_check on thousands of small random histories; budgets; the
 * history file format and the report.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../lincheck/lincheck.h"

Suite *lincheck_suite(void);

/* ------------------------------------------------------------------------ */
/* Building histories                                                       */
/* ------------------------------------------------------------------------ */

static struct lin_op mk(uint64_t key, int kind, uint64_t call, uint64_t ret,
                        int outcome)
{
    struct lin_op op;
    memset(&op, 0, sizeof op);
    op.key = key;
    op.kind = kind;
    op.call = call;
    op.ret = outcome == LIN_OUT_UNKNOWN ? LIN_PENDING : ret;
    op.outcome = outcome;
    return op;
}

static struct lin_op rd(uint64_t k, uint64_t c, uint64_t r, uint64_t val,
                        uint64_t ver)
{
    struct lin_op op = mk(k, LIN_READ, c, r, LIN_OUT_OK);
    op.out_value = val;
    op.out_version = ver;
    return op;
}

static struct lin_op rd_absent(uint64_t k, uint64_t c, uint64_t r)
{
    return mk(k, LIN_READ, c, r, LIN_OUT_ABSENT);
}

static struct lin_op wr(uint64_t k, uint64_t c, uint64_t r, uint64_t val,
                        uint64_t ver)
{
    struct lin_op op = mk(k, LIN_WRITE, c, r, LIN_OUT_OK);
    op.value = val;
    op.out_version = ver;
    return op;
}

static struct lin_op wr_pending(uint64_t k, uint64_t c, uint64_t val)
{
    struct lin_op op = mk(k, LIN_WRITE, c, 0, LIN_OUT_UNKNOWN);
    op.value = val;
    return op;
}

static struct lin_op cas(uint64_t k, uint64_t c, uint64_t r, uint64_t exp,
                         uint64_t val, int outcome, uint64_t ver)
{
    struct lin_op op = mk(k, LIN_CAS, c, r, outcome);
    op.expect_version = exp;
    op.value = val;
    op.out_version = outcome == LIN_OUT_OK ? ver : 0;
    return op;
}

static struct lin_op ins(uint64_t k, uint64_t c, uint64_t r, uint64_t val,
                         int outcome, uint64_t ver)
{
    struct lin_op op = mk(k, LIN_INSERT, c, r, outcome);
    op.value = val;
    op.out_version = outcome == LIN_OUT_OK ? ver : 0;
    return op;
}

static struct lin_op del(uint64_t k, uint64_t c, uint64_t r, uint64_t exp,
                         int outcome)
{
    struct lin_op op = mk(k, LIN_DELETE, c, r, outcome);
    op.expect_version = exp;
    return op;
}

/* Builds a history of the N ops OPS. */
static struct lin_history *hist(const struct lin_op *ops, size_t n)
{
    struct lin_history *h = lin_new();
    size_t i;
    ck_assert_ptr_nonnull(h);
    for (i = 0; i < n; i++) {
        int rc = lin_add(h, &ops[i]);
        ck_assert_msg(rc == LIN_OK, "op %zu rejected: %s", i,
                      lin_op_problem(&ops[i]));
    }
    return h;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Checks OPS, with quick proofs and by search alone, and asserts the
 * verdict; prints the history and the report when it differs. Returns the
 * report of the default check (release it) through OUT if not NULL. */
static void expect_ops(const struct lin_op *ops, size_t n, int want,
                       struct lin_report *out)
{
    struct lin_history *h = hist(ops, n);
    struct lin_report r;
    int mode;

    for (mode = 1; mode >= 0; mode--) {
        int got = lin_check_with(h, NULL, mode ? LIN_SEARCH_ONLY : 0, &r);
        if (got != want) {
            fprintf(stderr, "--- history (%s):\n",
                    mode ? "search only" : "default");
            lin_write(stderr, h);
            lin_report_print(&r, stderr);
        }
        ck_assert_int_eq(got, want);
        ck_assert_int_eq(r.result, want);
        if (mode)
            lin_report_release(&r);
    }
    if (out != NULL)
        *out = r;
    else
        lin_report_release(&r);
    lin_free(h);
}

#define EXPECT(want, ...)                                                      \
    do {                                                                       \
        const struct lin_op ops_[] = {__VA_ARGS__};                            \
        expect_ops(ops_, COUNT(ops_), want, NULL);                             \
    } while (0)

/* Asserts that R names op ID as failing. */
static void assert_fails_at(const struct lin_report *r, size_t id)
{
    size_t i;
    for (i = 0; i < r->nprefix; i++) {
        if (r->prefix[i].id == id) {
            ck_assert_int_eq(r->prefix[i].role, LIN_ROLE_FAILING);
            ck_assert_uint_eq(r->fail_time, r->prefix[i].op.ret);
            return;
        }
    }
    ck_abort_msg("op %zu is not in the failing prefix", id);
}

static uint64_t ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------------------ */
/* The model, op by op                                                      */
/* ------------------------------------------------------------------------ */

START_TEST(sequential_histories_are_linearizable)
{
    expect_ops(NULL, 0, LIN_OK, NULL); /* the empty history */
    EXPECT(LIN_OK, rd_absent(1, 0, 1));
    EXPECT(LIN_OK, rd_absent(1, 0, 1), wr(1, 2, 3, 10, 4), rd(1, 4, 5, 10, 4),
           cas(1, 6, 7, 4, 11, LIN_OUT_OK, 9), rd(1, 8, 9, 11, 9),
           cas(1, 10, 11, 4, 12, LIN_OUT_FAILED, 0),
           ins(1, 12, 13, 13, LIN_OUT_FAILED, 0), del(1, 14, 15, 0, LIN_OUT_OK),
           rd_absent(1, 16, 17), del(1, 18, 19, 0, LIN_OUT_ABSENT),
           ins(1, 20, 21, 14, LIN_OUT_OK, 30), rd(1, 22, 23, 14, 30),
           wr(1, 24, 25, 15, 31), rd(1, 26, 27, 15, 31));
    /* Each key is its own register; versions need not grow across keys. */
    EXPECT(LIN_OK, wr(1, 0, 1, 1, 50), wr(2, 2, 3, 2, 7), rd(1, 4, 5, 1, 50),
           rd(2, 6, 7, 2, 7), wr(3, 8, 9, 1, 1), rd(3, 10, 11, 1, 1));
}
END_TEST

START_TEST(a_wrong_value_or_version_in_a_sequential_history_is_a_violation)
{
    EXPECT(LIN_VIOLATION, rd(1, 0, 1, 5, 1));
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 4), rd(1, 2, 3, 11, 4));
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 4), rd(1, 2, 3, 10, 5));
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 4), rd_absent(1, 2, 3));
}
END_TEST

START_TEST(concurrent_overlapping_writes_let_reads_see_either)
{
    /* Two writes overlap; their versions order them (10 before 20). Reads
     * inside the overlap may see either, in version order. */
    EXPECT(LIN_OK, wr(1, 0, 100, 10, 5), wr(1, 0, 100, 20, 6),
           rd(1, 10, 20, 10, 5), rd(1, 30, 40, 20, 6), rd(1, 101, 102, 20, 6));
    EXPECT(LIN_OK, wr(1, 0, 100, 10, 6), wr(1, 0, 100, 20, 5),
           rd(1, 10, 20, 20, 5), rd(1, 30, 40, 10, 6), rd(1, 101, 102, 10, 6));
    /* Concurrent reads may see them in either order relative to each
     * other, as long as each is consistent. */
    EXPECT(LIN_OK, wr(1, 0, 100, 10, 5), wr(1, 0, 100, 20, 6),
           rd(1, 10, 90, 20, 6), rd(1, 10, 90, 10, 5));
    /* But once a read has seen the later write, a later read cannot go
     * back, and after both writes only the last one is visible. */
    EXPECT(LIN_VIOLATION, wr(1, 0, 100, 10, 5), wr(1, 0, 100, 20, 6),
           rd(1, 10, 20, 20, 6), rd(1, 30, 40, 10, 5));
    EXPECT(LIN_VIOLATION, wr(1, 0, 100, 10, 5), wr(1, 0, 100, 20, 6),
           rd(1, 101, 102, 10, 5));
    /* Operations whose times touch overlap: a read called at the instant a
     * write returns may still miss it. */
    EXPECT(LIN_OK, wr(1, 0, 5, 10, 1), rd_absent(1, 5, 6));
    EXPECT(LIN_VIOLATION, wr(1, 0, 5, 10, 1), rd_absent(1, 6, 7));
}
END_TEST

START_TEST(a_read_that_sees_a_value_before_its_write_was_called_is_a_violation)
{
    struct lin_report r;
    const struct lin_op ops[] = {rd(1, 0, 5, 10, 1), wr(1, 6, 10, 10, 1),
                                 rd(1, 11, 12, 10, 1)};
    expect_ops(ops, COUNT(ops), LIN_VIOLATION, &r);
    ck_assert_uint_eq(r.key, 1);
    ck_assert_uint_eq(r.fail_time, 5);
    ck_assert_uint_eq(r.nprefix, 1);
    assert_fails_at(&r, 0);
    ck_assert_int_eq(r.before_known, 1);
    ck_assert_uint_eq(r.before_done, 0);
    lin_report_release(&r);
    /* Overlapping with the write's call is fine. */
    EXPECT(LIN_OK, rd(1, 0, 7, 10, 1), wr(1, 6, 10, 10, 1));
}
END_TEST

START_TEST(a_stale_read_after_a_completed_write_is_a_violation)
{
    struct lin_report r;
    const struct lin_op ops[] = {wr(7, 0, 1, 10, 1), wr(7, 2, 3, 20, 2),
                                 rd(7, 4, 5, 10, 1), rd(7, 6, 7, 20, 2),
                                 wr(8, 0, 9, 30, 1), rd(8, 10, 11, 30, 1)};
    expect_ops(ops, COUNT(ops), LIN_VIOLATION, &r);
    ck_assert_uint_eq(r.key, 7);
    ck_assert_uint_eq(r.keys, 2);
    ck_assert_uint_eq(r.keys_violating, 1);
    assert_fails_at(&r, 2);
    ck_assert_uint_eq(r.nprefix, 3);
    /* The prefix before it is explained, ending with the newer value. */
    ck_assert_int_eq(r.before_known, 1);
    ck_assert_uint_eq(r.before_time, 3);
    ck_assert_uint_eq(r.before_done, 2);
    ck_assert_uint_eq(r.norder, 2);
    ck_assert_uint_eq(r.order[0].id, 0);
    ck_assert_uint_eq(r.order[1].id, 1);
    ck_assert_int_eq(r.before.present, 1);
    ck_assert_uint_eq(r.before.value, 20);
    ck_assert_uint_eq(r.before.version, 2);
    lin_report_release(&r);
}
END_TEST

START_TEST(a_read_may_see_a_pending_write_and_later_reads_cannot_go_back)
{
    /* The pending write's version is fixed by the read that sees it. */
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), wr_pending(1, 2, 20), rd(1, 3, 4, 20, 7),
           rd(1, 5, 6, 20, 7));
    /* It may also never take effect, or take effect much later. */
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), wr_pending(1, 2, 20), rd(1, 3, 4, 10, 1),
           rd(1, 500, 600, 10, 1));
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), wr_pending(1, 2, 20), rd(1, 3, 4, 10, 1),
           rd(1, 500, 600, 20, 2));
    /* Going back to the older value after seeing it is a violation. */
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 1), wr_pending(1, 2, 20),
           rd(1, 3, 4, 20, 7), rd(1, 5, 6, 10, 1));
    /* Its version must exceed the one before, and stays fixed once seen. */
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 3), wr_pending(1, 2, 20),
           rd(1, 3, 4, 20, 3));
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 1), wr_pending(1, 2, 20),
           rd(1, 3, 4, 20, 7), rd(1, 5, 6, 20, 8));
    /* Nor can it be seen before it was called. */
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 1), rd(1, 2, 3, 20, 7),
           wr_pending(1, 4, 20));
    /* Two pending writes in a row: the second sees at least version 3,
     * since the first took version 2 or more. */
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), wr_pending(1, 2, 20),
           wr_pending(1, 2, 30), rd(1, 5, 6, 20, 2), rd(1, 7, 8, 30, 3));
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 1), wr_pending(1, 2, 20),
           wr_pending(1, 2, 30), rd(1, 5, 6, 20, 2), rd(1, 7, 8, 30, 2));
    /* A completed write after an unseen pending one leaves it room. */
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), wr_pending(1, 2, 20), rd(1, 3, 4, 20, 9),
           wr(1, 5, 6, 30, 10), rd(1, 7, 8, 30, 10));
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 1), wr_pending(1, 2, 20),
           rd(1, 3, 4, 20, 2), wr(1, 5, 6, 30, 2));
    /* A pending read tells nothing. */
    {
        struct lin_op pr = mk(1, LIN_READ, 0, 0, LIN_OUT_UNKNOWN);
        EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), pr);
    }
}
END_TEST

START_TEST(cas_success_and_failure_follow_versions)
{
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 3), cas(1, 2, 3, 3, 20, LIN_OUT_OK, 5),
           cas(1, 4, 5, 3, 30, LIN_OUT_FAILED, 0), rd(1, 6, 7, 20, 5),
           cas(1, 8, 9, 5, 40, LIN_OUT_OK, 6), rd(1, 10, 11, 40, 6));
    /* A cas on an absent key fails; it cannot succeed. */
    EXPECT(LIN_OK, cas(1, 0, 1, 3, 20, LIN_OUT_FAILED, 0));
    EXPECT(LIN_VIOLATION, cas(1, 0, 1, 3, 20, LIN_OUT_OK, 5));
    /* Success against a version the key no longer has. */
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 3),
           cas(1, 2, 3, 3, 20, LIN_OUT_OK, 5),
           cas(1, 4, 5, 3, 30, LIN_OUT_OK, 7));
    /* Failure against the version the key has. */
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 3),
           cas(1, 2, 3, 3, 20, LIN_OUT_FAILED, 0));
    /* Two concurrent cas on one version cannot both succeed. */
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 3),
           cas(1, 2, 9, 3, 20, LIN_OUT_OK, 5),
           cas(1, 2, 9, 3, 30, LIN_OUT_OK, 6));
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 3), cas(1, 2, 9, 3, 20, LIN_OUT_OK, 5),
           cas(1, 2, 9, 3, 30, LIN_OUT_FAILED, 0), rd(1, 10, 11, 20, 5));
    /* A successful cas creates a greater version. */
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 3),
           cas(1, 2, 3, 3, 20, LIN_OUT_OK, 3));
    /* A cas may fix the version of a pending write, which reads confirm. */
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), wr_pending(1, 2, 20),
           cas(1, 3, 4, 8, 30, LIN_OUT_OK, 9), rd(1, 5, 6, 30, 9));
    /* A failed cas tells the unseen version is not the one it expected
     * (the failed insert proves the pending write came first). */
    EXPECT(LIN_VIOLATION, wr_pending(1, 0, 20),
           ins(1, 1, 2, 30, LIN_OUT_FAILED, 0),
           cas(1, 3, 4, 8, 30, LIN_OUT_FAILED, 0), rd(1, 5, 6, 20, 8));
    EXPECT(LIN_OK, wr_pending(1, 0, 20), ins(1, 1, 2, 30, LIN_OUT_FAILED, 0),
           cas(1, 3, 4, 7, 30, LIN_OUT_FAILED, 0), rd(1, 5, 6, 20, 8));
    /* Without that proof, the cas may have come before the write. */
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), wr_pending(1, 2, 20),
           cas(1, 3, 4, 8, 30, LIN_OUT_FAILED, 0), rd(1, 5, 6, 20, 8));
    /* A pending cas takes effect only if its condition holds. */
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 3), cas(1, 2, 0, 3, 20, LIN_OUT_UNKNOWN, 0),
           rd(1, 5, 6, 20, 4));
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 3),
           cas(1, 2, 0, 2, 20, LIN_OUT_UNKNOWN, 0), rd(1, 5, 6, 20, 4));
}
END_TEST

START_TEST(insert_twice_both_ok_is_a_violation)
{
    EXPECT(LIN_VIOLATION, ins(1, 0, 10, 10, LIN_OUT_OK, 1),
           ins(1, 0, 10, 20, LIN_OUT_OK, 2));
    EXPECT(LIN_OK, ins(1, 0, 10, 10, LIN_OUT_OK, 1),
           ins(1, 0, 10, 20, LIN_OUT_FAILED, 0), rd(1, 11, 12, 10, 1));
    /* An insert fails only when the key exists. */
    EXPECT(LIN_VIOLATION, ins(1, 0, 1, 10, LIN_OUT_FAILED, 0));
    /* After a delete, an insert succeeds again. */
    EXPECT(LIN_OK, ins(1, 0, 1, 10, LIN_OUT_OK, 1), del(1, 2, 3, 0, LIN_OUT_OK),
           ins(1, 4, 5, 20, LIN_OUT_OK, 3), rd(1, 6, 7, 20, 3));
    /* A pending insert that did happen makes a later one fail. */
    {
        struct lin_op pi = ins(1, 0, 0, 10, LIN_OUT_UNKNOWN, 0);
        EXPECT(LIN_OK, pi, ins(1, 5, 6, 20, LIN_OUT_FAILED, 0),
               rd(1, 7, 8, 10, 4));
        EXPECT(LIN_OK, pi, ins(1, 5, 6, 20, LIN_OUT_OK, 4));
        EXPECT(LIN_VIOLATION, pi, ins(1, 5, 6, 20, LIN_OUT_OK, 4),
               rd(1, 7, 8, 10, 5));
    }
}
END_TEST

START_TEST(versions_that_decrease_are_a_violation)
{
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 5), wr(1, 2, 3, 20, 4));
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 5), wr(1, 2, 3, 20, 5));
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 5), wr(1, 2, 3, 20, 6));
    /* Overlapping writes may come in either order: the versions decide. */
    EXPECT(LIN_OK, wr(1, 0, 3, 10, 5), wr(1, 1, 2, 20, 4), rd(1, 4, 5, 10, 5));
    EXPECT(LIN_VIOLATION, wr(1, 0, 3, 10, 5), wr(1, 1, 2, 20, 4),
           rd(1, 4, 5, 20, 4));
    /* A delete does not reset versions. */
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 5), del(1, 2, 3, 0, LIN_OUT_OK),
           wr(1, 4, 5, 20, 3));
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 5), del(1, 2, 3, 0, LIN_OUT_OK),
           ins(1, 4, 5, 20, LIN_OUT_OK, 5));
}
END_TEST

START_TEST(delete_then_read_absent)
{
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), del(1, 2, 3, 0, LIN_OUT_OK),
           rd_absent(1, 4, 5), del(1, 6, 7, 0, LIN_OUT_ABSENT));
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 1), del(1, 2, 3, 0, LIN_OUT_OK),
           rd(1, 4, 5, 10, 1));
    EXPECT(LIN_VIOLATION, del(1, 0, 1, 0, LIN_OUT_OK));
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 1), del(1, 2, 3, 0, LIN_OUT_ABSENT));
    /* A conditional delete follows the version. */
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 4), del(1, 2, 3, 3, LIN_OUT_FAILED),
           del(1, 4, 5, 4, LIN_OUT_OK), rd_absent(1, 6, 7));
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 4), del(1, 2, 3, 4, LIN_OUT_FAILED));
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 4), del(1, 2, 3, 3, LIN_OUT_OK));
    /* On an absent key, kv may say either. */
    EXPECT(LIN_OK, del(1, 0, 1, 3, LIN_OUT_FAILED),
           del(1, 2, 3, 3, LIN_OUT_ABSENT));
}
END_TEST

START_TEST(a_pending_delete_may_or_may_not_take_effect)
{
    struct lin_op pd = del(1, 2, 0, 0, LIN_OUT_UNKNOWN);
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), pd, rd_absent(1, 3, 4),
           rd_absent(1, 5, 6));
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), pd, rd(1, 3, 4, 10, 1),
           rd(1, 5, 6, 10, 1));
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), pd, rd(1, 3, 4, 10, 1),
           rd_absent(1, 5, 6));
    /* Once seen to have happened, it cannot be undone. */
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 1), pd, rd_absent(1, 3, 4),
           rd(1, 5, 6, 10, 1));
    /* It can delete a later write, if it takes effect late. */
    EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), pd, wr(1, 3, 4, 20, 2),
           rd_absent(1, 5, 6));
    /* But not before it was called. */
    EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 1), rd_absent(1, 3, 4),
           del(1, 5, 0, 0, LIN_OUT_UNKNOWN));
    /* A pending conditional delete needs its version. */
    {
        struct lin_op pc = del(1, 2, 0, 7, LIN_OUT_UNKNOWN);
        EXPECT(LIN_VIOLATION, wr(1, 0, 1, 10, 1), pc, rd_absent(1, 3, 4));
        pc.expect_version = 1;
        EXPECT(LIN_OK, wr(1, 0, 1, 10, 1), pc, rd_absent(1, 3, 4));
    }
}
END_TEST

START_TEST(histories_of_only_pending_ops_are_linearizable)
{
    EXPECT(LIN_OK, wr_pending(1, 0, 10), wr_pending(1, 1, 20),
           del(2, 0, 0, 0, LIN_OUT_UNKNOWN),
           ins(3, 0, 0, 5, LIN_OUT_UNKNOWN, 0));
}
END_TEST

START_TEST(lin_add_rejects_invalid_ops_and_keeps_the_history)
{
    struct lin_op bad[12];
    struct lin_history *h = lin_new();
    size_t i;

    ck_assert_ptr_nonnull(h);
    bad[0] = wr(1, 0, 1, 10, 1);
    bad[0].kind = 0;
    bad[1] = wr(1, 0, 1, 10, 1);
    bad[1].outcome = 9;
    bad[2] = wr(1, 5, 4, 10, 1);          /* returns before call */
    bad[3] = wr(1, 0, 1, 10, 0);          /* version 0 */
    bad[4] = rd(1, 0, 1, 10, UINT64_MAX); /* reserved version */
    bad[5] = wr(1, 0, 1, 10, 1);
    bad[5].ret = LIN_PENDING; /* pending but ok */
    bad[6] = wr_pending(1, 0, 10);
    bad[6].ret = 5;                                 /* unknown but returned */
    bad[7] = cas(1, 0, 1, 0, 10, LIN_OUT_OK, 2);    /* cas on version 0 */
    bad[8] = del(1, 0, 1, 0, LIN_OUT_FAILED);       /* unconditional fails */
    bad[9] = mk(1, LIN_READ, 0, 1, LIN_OUT_FAILED); /* read fails */
    bad[10] = mk(1, LIN_WRITE, 0, 1, LIN_OUT_ABSENT);
    bad[11] = wr(1, 0, 1, 10, 1);
    bad[11].client = -1;
    for (i = 0; i < COUNT(bad); i++) {
        ck_assert_msg(lin_op_problem(&bad[i]) != NULL, "op %zu accepted", i);
        ck_assert_int_eq(lin_add(h, &bad[i]), LIN_EINVAL);
        ck_assert_uint_eq(lin_count(h), 0);
    }
    ck_assert_ptr_null(lin_get(h, 0));
    lin_free(h);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* A simulated correct register                                             */
/* ------------------------------------------------------------------------ */

static uint64_t rng(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t below(uint64_t *s, uint64_t n)
{
    return rng(s) % n;
}

struct simop {
    struct lin_op op;
    uint64_t lin; /* when it takes effect */
    int effect;   /* a pending op that takes effect (completed: always) */
};

static int simop_by_lin(const void *pa, const void *pb)
{
    const struct simop *a = pa, *b = pb;
    if (a->lin != b->lin)
        return a->lin < b->lin ? -1 : 1;
    return a->op.client - b->op.client;
}

struct reg {
    int present;
    uint64_t value, version;
};

/* Chooses an expected version: usually the current one. */
static uint64_t guess_version(uint64_t *s, const struct reg *g, uint64_t vc)
{
    if (g->present && below(s, 10) < 6)
        return g->version;
    return 1 + below(s, vc + 2);
}

/* Generates N ops of NCLIENTS clients over NKEYS keys, from a correct
 * register: each client runs one op at a time with a random latency around
 * its linearization point; PENDING_PCT percent time out (taking effect
 * later, or never) and the client moves on. Versions come from one counter
 * over all keys, as a shard's Raft index would. Returns malloc'd ops in call
 * order of generation. */
static struct simop *simulate(uint64_t seed, size_t n, int nclients, int nkeys,
                              int pending_pct)
{
    struct simop *ops = calloc(n, sizeof *ops);
    struct reg *regs = calloc((size_t)nkeys, sizeof *regs);
    uint64_t *busy = calloc((size_t)nclients, sizeof *busy);
    uint64_t s = seed * 7919u + 1, vc = 0, values = 1000;
    size_t i;

    ck_assert_ptr_nonnull(ops);
    ck_assert_ptr_nonnull(regs);
    ck_assert_ptr_nonnull(busy);
    for (i = 0; i < n; i++) {
        int c = (int)below(&s, (uint64_t)nclients);
        struct simop *p = &ops[i];
        uint64_t r = below(&s, 100);
        int kind = r < 40   ? LIN_READ
                   : r < 65 ? LIN_WRITE
                   : r < 80 ? LIN_CAS
                   : r < 88 ? LIN_INSERT
                            : LIN_DELETE;

        p->op.key = 1 + below(&s, (uint64_t)nkeys);
        p->op.kind = kind;
        p->op.client = c;
        p->op.call = busy[c] + 1 + below(&s, 20);
        p->lin = p->op.call + 1 + below(&s, 30);
        p->op.ret = p->lin + 1 + below(&s, 30);
        p->op.value = kind == LIN_READ || kind == LIN_DELETE ? 0 : values++;
        p->effect = 1;
        p->op.outcome = LIN_OUT_OK; /* decided when applied */
        if ((int)below(&s, 100) < pending_pct) {
            p->op.ret = LIN_PENDING;
            p->op.outcome = LIN_OUT_UNKNOWN;
            p->effect = below(&s, 2) == 0;
            p->lin = p->op.call + 1 + below(&s, 400);
            busy[c] = p->op.call + 100; /* the client's timeout */
        } else {
            busy[c] = p->op.ret;
        }
    }
    {
        struct simop *byl = malloc(n * sizeof *byl);
        size_t *pos = malloc(n * sizeof *pos);
        ck_assert_ptr_nonnull(byl);
        ck_assert_ptr_nonnull(pos);
        for (i = 0; i < n; i++) {
            byl[i] = ops[i];
            byl[i].op.out_value = i; /* carry the index through the sort */
        }
        qsort(byl, n, sizeof *byl, simop_by_lin);
        for (i = 0; i < n; i++)
            pos[byl[i].op.out_value] = i;
        for (i = 0; i < n; i++) {
            struct simop *p = &byl[i];
            struct lin_op *op = &p->op;
            struct reg *g = &regs[op->key - 1];
            int unknown = op->outcome == LIN_OUT_UNKNOWN;
            int out = LIN_OUT_OK;
            uint64_t e;

            op->out_value = 0;
            op->out_version = 0;
            switch (op->kind) {
            case LIN_READ:
                if (!g->present) {
                    out = LIN_OUT_ABSENT;
                } else {
                    op->out_value = g->value;
                    op->out_version = g->version;
                }
                break;
            case LIN_CAS:
                e = guess_version(&s, g, vc);
                op->expect_version = e;
                if (!g->present || g->version != e) {
                    out = LIN_OUT_FAILED;
                    break;
                }
                /* fall through */
            case LIN_WRITE:
            case LIN_INSERT:
                if (op->kind == LIN_INSERT && g->present) {
                    out = LIN_OUT_FAILED;
                    break;
                }
                if (p->effect) {
                    g->present = 1;
                    g->value = op->value;
                    g->version = ++vc;
                    op->out_version = vc;
                }
                break;
            default: /* LIN_DELETE */
                e = below(&s, 3) == 0 ? guess_version(&s, g, vc) : 0;
                op->expect_version = e;
                if (!g->present) {
                    out = e != 0 && below(&s, 2) ? LIN_OUT_FAILED
                                                 : LIN_OUT_ABSENT;
                } else if (e != 0 && g->version != e) {
                    out = LIN_OUT_FAILED;
                } else if (p->effect) {
                    g->present = 0;
                    vc++;
                }
                break;
            }
            if (unknown) {
                op->out_value = 0;
                op->out_version = 0;
            } else {
                op->outcome = out;
                if (out != LIN_OUT_OK)
                    op->out_version = 0;
            }
        }
        for (i = 0; i < n; i++)
            ops[i] = byl[pos[i]];
        free(pos);
        free(byl);
    }
    free(busy);
    free(regs);
    return ops;
}

static struct lin_history *sim_history(const struct simop *ops, size_t n)
{
    struct lin_history *h = lin_new();
    size_t i;
    ck_assert_ptr_nonnull(h);
    for (i = 0; i < n; i++) {
        int rc = lin_add(h, &ops[i].op);
        ck_assert_msg(rc == LIN_OK, "simulated op %zu invalid: %s", i,
                      lin_op_problem(&ops[i].op));
    }
    return h;
}

/* Does op A write a value with a known version (ok write, cas, insert)? */
static int wrote(const struct lin_op *a)
{
    return a->outcome == LIN_OUT_OK &&
           (a->kind == LIN_WRITE || a->kind == LIN_CAS ||
            a->kind == LIN_INSERT);
}

/* Turns a completed read into a stale one: it returns the value of a write
 * W0 that a write W overwrote before the read was called. Returns the read's
 * index, or N when the history has no such read. */
static size_t inject_stale_read(struct simop *ops, size_t n, uint64_t seed)
{
    uint64_t s = seed + 99;
    size_t start = below(&s, n), k;

    for (k = 0; k < n; k++) {
        size_t r = (start + k) % n, w, w0;
        struct lin_op *rop = &ops[r].op;
        if (rop->kind != LIN_READ || rop->outcome == LIN_OUT_UNKNOWN)
            continue;
        for (w = 0; w < n; w++) {
            const struct lin_op *wop = &ops[w].op;
            if (wop->key != rop->key || !wrote(wop) || wop->ret >= rop->call)
                continue;
            for (w0 = 0; w0 < n; w0++) {
                const struct lin_op *o0 = &ops[w0].op;
                if (o0->key != rop->key || !wrote(o0) || o0->ret >= wop->call)
                    continue;
                rop->outcome = LIN_OUT_OK;
                rop->out_value = o0->value;
                rop->out_version = o0->out_version;
                return r;
            }
        }
    }
    return n;
}

static const struct lin_budget sim_budget = {.max_ms = 20000};

START_TEST(histories_from_a_simulated_correct_register_are_linearizable)
{
    const size_t n = 1200;
    struct simop *ops = simulate((uint64_t)_i, n, 8, 10, 3);
    struct lin_history *h = sim_history(ops, n);
    struct lin_report r;
    uint64_t t0 = ms_now();
    int rc = lin_check(h, &sim_budget, &r);
    uint64_t dt = ms_now() - t0;

    if (rc != LIN_OK) {
        fprintf(stderr, "seed %d:\n", _i);
        lin_report_print(&r, stderr);
    }
    ck_assert_int_eq(rc, LIN_OK);
    ck_assert_uint_eq(r.keys, 10);
    ck_assert_msg(dt < 5000, "seed %d: took %llu ms", _i,
                  (unsigned long long)dt);
    lin_report_release(&r);
    lin_free(h);
    free(ops);
}
END_TEST

START_TEST(a_stale_read_injected_into_a_simulated_history_is_flagged)
{
    const size_t n = 1200;
    struct simop *ops = simulate((uint64_t)_i, n, 8, 10, 3);
    size_t bad = inject_stale_read(ops, n, (uint64_t)_i);
    struct lin_history *h;
    int mode;

    ck_assert_uint_lt(bad, n);
    h = sim_history(ops, n);
    /* Mode 0: a quick proof names the stale read and the op it contradicts;
     * mode 1: the search alone must find the same failing op. */
    for (mode = 0; mode < 2; mode++) {
        struct lin_report r;
        uint64_t t0 = ms_now();
        int rc = lin_check_with(h, &sim_budget, mode ? LIN_SEARCH_ONLY : 0, &r);
        if (rc != LIN_VIOLATION) {
            fprintf(stderr, "seed %d mode %d:\n", _i, mode);
            lin_report_print(&r, stderr);
        }
        ck_assert_int_eq(rc, LIN_VIOLATION);
        ck_assert_msg(ms_now() - t0 < 5000, "seed %d: too slow", _i);
        ck_assert_uint_eq(r.keys_violating, 1);
        ck_assert_uint_eq(r.key, ops[bad].op.key);
        assert_fails_at(&r, bad);
        ck_assert_int_eq(r.before_known, 1);
        if (mode == 0) {
            ck_assert_int_eq(r.proof, LIN_PROOF_WENT_BACK);
            ck_assert_uint_eq(r.proof_b, bad);
        } else {
            ck_assert_int_eq(r.proof, LIN_PROOF_NONE);
        }
        lin_report_release(&r);
    }
    lin_free(h);
    free(ops);
}
END_TEST

START_TEST(a_long_simulated_history_checks_in_bounded_time)
{
    const size_t n = 20000;
    struct simop *ops = simulate(1000u + (uint64_t)_i, n, 8, 10, 2);
    struct lin_history *h = sim_history(ops, n);
    struct lin_report r;
    int rc = lin_check(h, &sim_budget, &r);

    if (rc != LIN_OK)
        lin_report_print(&r, stderr);
    ck_assert_int_eq(rc, LIN_OK);
    ck_assert_msg(r.elapsed_ms < 10000, "took %llu ms",
                  (unsigned long long)r.elapsed_ms);
    lin_report_release(&r);
    lin_free(h);
    free(ops);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* A brute-force reference                                                  */
/* ------------------------------------------------------------------------ */

/* The register with concrete versions: a pending write is tried with every
 * version from next to VMAX (enough: larger ones behave like VMAX's). */
struct cst {
    int present;
    uint64_t value, version, next;
};

struct bf {
    const struct lin_op *ops;
    int n;
    unsigned need; /* completed ops */
    uint64_t vmax;
};

static int bf_search(const struct bf *b, unsigned used, struct cst st);

/* Tries OP I (taking effect) from ST, then the rest. */
static int bf_try(const struct bf *b, unsigned used, struct cst st, int i)
{
    const struct lin_op *op = &b->ops[i];
    int pend = op->outcome == LIN_OUT_UNKNOWN;
    unsigned u = used | 1u << i;
    uint64_t e = op->expect_version, v;
    struct cst nx = st;
    int cond;

    switch (op->kind) {
    case LIN_READ:
        if (op->outcome == LIN_OUT_ABSENT)
            return !st.present && bf_search(b, u, st);
        return st.present && st.value == op->out_value &&
               st.version == op->out_version && bf_search(b, u, st);
    case LIN_DELETE:
        if (op->outcome == LIN_OUT_ABSENT)
            return !st.present && bf_search(b, u, st);
        if (op->outcome == LIN_OUT_FAILED)
            return (!st.present || st.version != e) && bf_search(b, u, st);
        if (!st.present || (e != 0 && st.version != e))
            return 0;
        nx.present = 0;
        nx.value = nx.version = 0;
        return bf_search(b, u, nx);
    default:
        break;
    }
    /* write, cas, insert */
    cond = op->kind == LIN_WRITE    ? 1
           : op->kind == LIN_INSERT ? !st.present
                                    : st.present && st.version == e;
    if (op->outcome == LIN_OUT_FAILED)
        return !cond && bf_search(b, u, st);
    if (!cond)
        return 0;
    nx.present = 1;
    nx.value = op->value;
    if (!pend) {
        if (op->out_version < st.next)
            return 0;
        nx.version = op->out_version;
        nx.next = nx.version + 1;
        return bf_search(b, u, nx);
    }
    for (v = st.next; v <= b->vmax; v++) {
        nx.version = v;
        nx.next = v + 1;
        if (bf_search(b, u, nx))
            return 1;
    }
    return 0;
}

static int bf_search(const struct bf *b, unsigned used, struct cst st)
{
    int i, j;
    if ((used & b->need) == b->need)
        return 1;
    for (i = 0; i < b->n; i++) {
        int ok = 1;
        if (used & (1u << i))
            continue;
        for (j = 0; j < b->n && ok; j++) {
            if (j != i && !(used & (1u << j)) && (b->need & (1u << j)) &&
                b->ops[j].ret < b->ops[i].call)
                ok = 0;
        }
        if (ok && bf_try(b, used, st, i))
            return 1;
    }
    return 0;
}

static int brute_force(const struct lin_op *ops, int n)
{
    struct bf b;
    struct cst st = {0, 0, 0, 1};
    int i, pend = 0;
    uint64_t m = 0;

    b.ops = ops;
    b.n = n;
    b.need = 0;
    for (i = 0; i < n; i++) {
        if (ops[i].outcome != LIN_OUT_UNKNOWN)
            b.need |= 1u << i;
        else
            pend++;
        if (ops[i].out_version > m)
            m = ops[i].out_version;
        if (ops[i].expect_version > m)
            m = ops[i].expect_version;
    }
    b.vmax = m + (uint64_t)pend + 1;
    return bf_search(&b, 0, st) ? LIN_OK : LIN_VIOLATION;
}

/* A random op of key 1 with small values, versions and times. */
static struct lin_op random_op(uint64_t *s)
{
    static const int kinds[] = {LIN_READ, LIN_WRITE, LIN_CAS, LIN_INSERT,
                                LIN_DELETE};
    struct lin_op op;
    int pending = below(s, 100) < 10 + *s % 40; /* 10% to 50% */
    int k = kinds[below(s, 5)];
    uint64_t call = below(s, 12);

    memset(&op, 0, sizeof op);
    op.key = 1;
    op.kind = k;
    op.call = call;
    op.ret = pending ? LIN_PENDING : call + below(s, 7);
    op.value = k == LIN_READ || k == LIN_DELETE ? 0 : 1 + below(s, 3);
    if (k == LIN_CAS)
        op.expect_version = 1 + below(s, 5);
    if (k == LIN_DELETE && below(s, 2))
        op.expect_version = 1 + below(s, 5);
    if (pending) {
        op.outcome = LIN_OUT_UNKNOWN;
        if (k == LIN_READ) { /* a pending read would be ignored */
            op.kind = LIN_WRITE;
            op.value = 1 + below(s, 3);
        }
        return op;
    }
    switch (k) {
    case LIN_READ:
        op.outcome = below(s, 4) ? LIN_OUT_OK : LIN_OUT_ABSENT;
        if (op.outcome == LIN_OUT_OK) {
            op.out_value = 1 + below(s, 3);
            op.out_version = 1 + below(s, 6);
        }
        break;
    case LIN_WRITE:
        op.outcome = LIN_OUT_OK;
        op.out_version = 1 + below(s, 6);
        break;
    case LIN_CAS:
    case LIN_INSERT:
        op.outcome = below(s, 3) ? LIN_OUT_OK : LIN_OUT_FAILED;
        if (op.outcome == LIN_OUT_OK)
            op.out_version = 1 + below(s, 6);
        break;
    default:
        op.outcome = below(s, 2) ? LIN_OUT_OK : LIN_OUT_ABSENT;
        if (op.expect_version != 0 && below(s, 3) == 0)
            op.outcome = LIN_OUT_FAILED;
        break;
    }
    return op;
}

START_TEST(lin_check_agrees_with_brute_force_on_small_histories)
{
    uint64_t s = 4242u + (uint64_t)_i * 1000003u;
    int round, agree_ok = 0, agree_bad = 0;

    for (round = 0; round < 5000; round++) {
        struct lin_op ops[6];
        int n = 1 + (int)below(&s, 6), i, want, got, got2;
        struct lin_history *h;

        if (below(&s, 2)) {
            for (i = 0; i < n; i++)
                ops[i] = random_op(&s);
        } else {
            /* A correct history, then maybe one field changed. */
            struct simop *so = simulate(rng(&s), (size_t)n, 3, 1, 20);
            for (i = 0; i < n; i++)
                ops[i] = so[i].op;
            free(so);
            if (below(&s, 2)) {
                struct lin_op *p = &ops[below(&s, (uint64_t)n)];
                struct lin_op before = *p;
                switch (below(&s, 4)) {
                case 0:
                    p->out_version += below(&s, 2) ? 1 : (uint64_t)-1;
                    break;
                case 1:
                    p->out_value = p->out_value ? p->out_value + 1 : 0;
                    break;
                case 2:
                    p->call = p->call > 5 ? p->call - 5 : 0;
                    break;
                default:
                    if (p->ret != LIN_PENDING)
                        p->call = p->ret;
                    break;
                }
                if (lin_op_problem(p) != NULL)
                    *p = before;
            }
        }
        h = hist(ops, (size_t)n);
        for (i = 0; i < n; i++) /* as stored: unused fields zeroed */
            ops[i] = *lin_get(h, (size_t)i);
        want = brute_force(ops, n);
        got = lin_check(h, NULL, NULL);
        got2 = lin_check_with(h, NULL, LIN_SEARCH_ONLY, NULL);
        if (got != want || got2 != want) {
            fprintf(stderr,
                    "disagree (brute force %d, lin_check %d, search %d):\n",
                    want, got, got2);
            lin_write(stderr, h);
        }
        ck_assert_int_eq(got, want);
        ck_assert_int_eq(got2, want);
        if (want == LIN_OK)
            agree_ok++;
        else
            agree_bad++;
        lin_free(h);
    }
    /* Both verdicts were exercised. */
    ck_assert_int_gt(agree_ok, 500);
    ck_assert_int_gt(agree_bad, 500);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Budgets                                                                  */
/* ------------------------------------------------------------------------ */

/* N inserts and N deletes, all concurrent, and a read of a value and
 * version never written (no quick proof applies): the inserts go in version
 * order, but any delete may follow each of them, so proving the violation
 * visits every subset of the deletes. */
static struct lin_history *pathological(int n)
{
    struct lin_history *h = lin_new();
    struct lin_op bad = rd(1, 0, 1000, 999999, 1000000);
    int i;
    ck_assert_ptr_nonnull(h);
    for (i = 0; i < n; i++) {
        struct lin_op a =
            ins(1, 0, 1000, 100 + (uint64_t)i, LIN_OUT_OK, 1 + (uint64_t)i);
        struct lin_op d = del(1, 0, 1000, 0, LIN_OUT_OK);
        ck_assert_int_eq(lin_add(h, &a), LIN_OK);
        ck_assert_int_eq(lin_add(h, &d), LIN_OK);
    }
    ck_assert_int_eq(lin_add(h, &bad), LIN_OK);
    return h;
}

START_TEST(the_budget_makes_a_pathological_case_return_unknown)
{
    struct lin_history *h = pathological(40);
    struct lin_budget states = {.max_states = 20000};
    struct lin_budget time = {.max_states = UINT64_MAX, .max_ms = 150};
    struct lin_budget mem = {.max_states = UINT64_MAX, .max_bytes = 1u << 20};
    struct lin_report r;
    uint64_t t0;

    ck_assert_int_eq(lin_check(h, &states, &r), LIN_UNKNOWN);
    ck_assert_int_eq(r.unknown_reason, LIN_LIMIT_STATES);
    ck_assert_uint_eq(r.unknown_key, 1);
    ck_assert_uint_eq(r.keys_unknown, 1);
    ck_assert_uint_le(r.states, 20000);
    lin_report_release(&r);

    t0 = ms_now();
    ck_assert_int_eq(lin_check(h, &time, &r), LIN_UNKNOWN);
    ck_assert_int_eq(r.unknown_reason, LIN_LIMIT_TIME);
    ck_assert_uint_lt(ms_now() - t0, 2000);
    lin_report_release(&r);

    ck_assert_int_eq(lin_check(h, &mem, &r), LIN_UNKNOWN);
    ck_assert_int_eq(r.unknown_reason, LIN_LIMIT_BYTES);
    lin_report_release(&r);
    lin_free(h);

    /* A smaller one is decided exhaustively within the default budget. */
    h = pathological(12);
    ck_assert_int_eq(lin_check(h, NULL, &r), LIN_VIOLATION);
    ck_assert_uint_gt(r.states, 1000);
    lin_report_release(&r);
    lin_free(h);
}
END_TEST

START_TEST(reads_that_commute_are_not_branched_on)
{
    /* 40 concurrent reads of one write, and a read no write explains: the
     * reads leave the state as it is, so the search takes them in one order
     * instead of trying 2^40 subsets. */
    struct lin_history *h = lin_new();
    struct lin_op w = wr(1, 0, 1, 10, 1), bad = rd(1, 2, 1000, 999, 1000000);
    struct lin_report r;
    int i;

    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(lin_add(h, &w), LIN_OK);
    for (i = 0; i < 40; i++) {
        struct lin_op x = rd(1, 2, 1000, 10, 1);
        ck_assert_int_eq(lin_add(h, &x), LIN_OK);
    }
    ck_assert_int_eq(lin_add(h, &bad), LIN_OK);
    ck_assert_int_eq(lin_check(h, NULL, &r), LIN_VIOLATION);
    ck_assert_uint_lt(r.states, 1000);
    lin_report_release(&r);
    lin_free(h);
}
END_TEST

START_TEST(interchangeable_pending_writes_are_tried_once)
{
    /* 30 timed-out writes whose values nobody read are alike: any of them
     * may recreate the record each of 6 concurrent deletes removes, but the
     * search tries one per class, not every subset and order. */
    struct lin_history *h = lin_new();
    struct lin_op w = wr(1, 0, 1, 10, 1), bad = rd(1, 50, 1000, 999, 1000000);
    struct lin_report r;
    int i;

    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(lin_add(h, &w), LIN_OK);
    for (i = 0; i < 30; i++) {
        struct lin_op p = wr_pending(1, 2 + (uint64_t)i, 100 + (uint64_t)i);
        ck_assert_int_eq(lin_add(h, &p), LIN_OK);
    }
    for (i = 0; i < 6; i++) {
        struct lin_op d = del(1, 50, 1000, 0, LIN_OUT_OK);
        ck_assert_int_eq(lin_add(h, &d), LIN_OK);
    }
    ck_assert_int_eq(lin_add(h, &bad), LIN_OK);
    ck_assert_int_eq(lin_check(h, NULL, &r), LIN_VIOLATION);
    ck_assert_uint_lt(r.states, 2000);
    lin_report_release(&r);
    lin_free(h);
}
END_TEST

/* Checks OPS and asserts the quick proof KIND names ops A and B. */
static void expect_proof(const struct lin_op *ops, size_t n, int kind, size_t a,
                         size_t b)
{
    struct lin_report r;
    expect_ops(ops, n, LIN_VIOLATION, &r);
    if (r.proof != kind)
        lin_report_print(&r, stderr);
    ck_assert_int_eq(r.proof, kind);
    ck_assert_uint_eq(r.proof_a, a);
    ck_assert_uint_eq(r.proof_b, b);
    lin_report_release(&r);
}

#define EXPECT_PROOF(kind, a, b, ...)                                          \
    do {                                                                       \
        const struct lin_op ops_[] = {__VA_ARGS__};                            \
        expect_proof(ops_, COUNT(ops_), kind, a, b);                           \
    } while (0)

START_TEST(quick_proofs_name_the_two_ops_that_contradict)
{
    /* A read older than a write that returned before it was called. */
    EXPECT_PROOF(LIN_PROOF_WENT_BACK, 1, 2, wr(1, 0, 1, 10, 1),
                 wr(1, 2, 3, 20, 2), rd(1, 4, 5, 10, 1));
    /* A read older than another read before it, or a cas expecting it. */
    EXPECT_PROOF(LIN_PROOF_WENT_BACK, 2, 3, wr(1, 0, 1, 10, 1),
                 wr(1, 0, 9, 20, 2), rd(1, 2, 3, 20, 2), rd(1, 4, 5, 10, 1));
    EXPECT_PROOF(LIN_PROOF_WENT_BACK, 1, 2, wr(1, 0, 1, 10, 1),
                 wr(1, 2, 3, 20, 2), cas(1, 4, 5, 1, 30, LIN_OUT_OK, 3));
    /* A conditional delete shows the version it deleted. */
    EXPECT_PROOF(LIN_PROOF_WENT_BACK, 1, 2, wr(1, 0, 1, 10, 1),
                 del(1, 2, 3, 1, LIN_OUT_OK), rd(1, 4, 5, 10, 1));
    /* A write whose version is not above one already shown. */
    EXPECT_PROOF(LIN_PROOF_NOT_NEW, 0, 1, wr(1, 0, 1, 10, 5),
                 wr(1, 2, 3, 20, 5));
    EXPECT_PROOF(LIN_PROOF_NOT_NEW, 1, 2, wr(1, 0, 5, 10, 7),
                 rd(1, 0, 1, 10, 7), wr(1, 2, 3, 20, 6));
    EXPECT_PROOF(LIN_PROOF_NOT_NEW, 1, 2, wr_pending(1, 0, 10),
                 del(1, 2, 3, 7, LIN_OUT_OK), ins(1, 4, 5, 20, LIN_OUT_OK, 7));
    /* One version, two values; one version, two writes. */
    EXPECT_PROOF(LIN_PROOF_TWO_VALUES, 0, 1, wr(1, 0, 9, 10, 5),
                 rd(1, 0, 9, 11, 5));
    EXPECT_PROOF(LIN_PROOF_TWICE, 0, 1, wr(1, 0, 9, 10, 5), wr(1, 0, 9, 11, 5));
}
END_TEST

START_TEST(an_undecided_key_does_not_hide_a_violation_in_another)
{
    struct lin_history *h = pathological(40);
    struct lin_budget b = {.max_states = 20000};
    struct lin_op a = wr(5, 0, 1, 10, 1), c = rd(5, 2, 3, 11, 1);
    struct lin_report r;

    ck_assert_int_eq(lin_add(h, &a), LIN_OK);
    ck_assert_int_eq(lin_add(h, &c), LIN_OK);
    ck_assert_int_eq(lin_check(h, &b, &r), LIN_VIOLATION);
    ck_assert_uint_eq(r.key, 5);
    ck_assert_uint_eq(r.keys_unknown, 1);
    ck_assert_uint_eq(r.keys_violating, 1);
    lin_report_release(&r);
    lin_free(h);
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Files and reports                                                        */
/* ------------------------------------------------------------------------ */

static void assert_same_ops(const struct lin_history *a,
                            const struct lin_history *b)
{
    size_t i;
    ck_assert_uint_eq(lin_count(a), lin_count(b));
    for (i = 0; i < lin_count(a); i++) {
        const struct lin_op *x = lin_get(a, i), *y = lin_get(b, i);
        ck_assert_msg(x->key == y->key && x->kind == y->kind &&
                          x->client == y->client && x->call == y->call &&
                          x->ret == y->ret && x->value == y->value &&
                          x->expect_version == y->expect_version &&
                          x->outcome == y->outcome &&
                          x->out_value == y->out_value &&
                          x->out_version == y->out_version,
                      "op %zu differs", i);
    }
}

START_TEST(a_history_file_round_trips)
{
    const size_t n = 400;
    struct simop *ops = simulate(77, n, 8, 10, 10);
    struct lin_history *h = sim_history(ops, n), *back = lin_new();
    FILE *f = tmpfile();
    char err[128] = "";

    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(back);
    ck_assert_int_eq(lin_write(f, h), LIN_OK);
    fputs("# a comment\n\n   \t\n", f);
    rewind(f);
    ck_assert_int_eq(lin_read(f, back, err, sizeof err), LIN_OK);
    assert_same_ops(h, back);
    ck_assert_int_eq(lin_check(back, NULL, NULL), LIN_OK);
    fclose(f);
    lin_free(back);
    lin_free(h);
    free(ops);
}
END_TEST

START_TEST(malformed_history_lines_are_rejected_with_their_line_number)
{
    static const char *const bad[] = {
        "frobnicate key=1 call=0 ret=1 result=ok",
        "read key=1 call=0 ret=1 result=ok value=1",
        "read key=1 call=0 ret=1 result=absent value=1 version=1",
        "write key=1 call=0 ret=1 value=1 result=ok",
        "write key=1 call=0 ret=1 result=ok version=1",
        "write key=1 call=0 ret=1 value=1 result=maybe version=1",
        "write key=1 call=0 ret=1 value=1 value=2 result=ok version=1",
        "write key=1 call=0 ret=1 value=-1 result=ok version=1",
        "write key=1 call=0 ret=1 value=18446744073709551616 result=ok "
        "version=1",
        "write key=1 call=0 ret=1 value=1x result=ok version=1",
        "write key=1 call=0 ret=1 value= result=ok version=1",
        "write key=1 call=5 ret=1 value=1 result=ok version=1",
        "write key=1 call=0 ret=pending value=1 result=ok version=1",
        "write key=1 call=0 ret=3 value=1 result=unknown",
        "write key=1 call=0 ret=1 value=1 result=ok version=1 color=red",
        "write key=1 call=0 ret=1 value=1 result=ok version=1 stray",
        "write call=0 ret=1 value=1 result=ok version=1",
        "cas key=1 call=0 ret=1 value=1 result=failed",
        "insert key=1 call=0 ret=1 expect=3 value=1 result=failed",
        "delete key=1 call=0 ret=1 value=3 result=ok",
        "delete key=1 call=0 ret=1 result=failed",
        "read key=1 client=99999999999 call=0 ret=1 result=absent",
    };
    size_t i;

    for (i = 0; i < COUNT(bad); i++) {
        char text[512], err[128] = "";
        struct lin_history *h = lin_new();
        struct lin_op ok = wr(1, 0, 1, 1, 1);
        FILE *f;

        ck_assert_ptr_nonnull(h);
        ck_assert_int_eq(lin_add(h, &ok), LIN_OK);
        snprintf(text, sizeof text,
                 "# header\nread key=1 call=2 ret=3 result=ok value=1 "
                 "version=1\n%s\n",
                 bad[i]);
        f = fmemopen(text, strlen(text), "r");
        ck_assert_ptr_nonnull(f);
        ck_assert_msg(lin_read(f, h, err, sizeof err) == LIN_EINVAL,
                      "accepted: %s", bad[i]);
        ck_assert_msg(strncmp(err, "line 3: ", 8) == 0, "'%s' for %s", err,
                      bad[i]);
        ck_assert_uint_eq(lin_count(h), 1); /* left as it was */
        fclose(f);
        lin_free(h);
    }
}
END_TEST

START_TEST(mutated_history_files_fail_cleanly_or_check)
{
    const size_t n = 30;
    struct simop *ops = simulate(5, n, 4, 2, 10);
    struct lin_history *h = sim_history(ops, n);
    char *text = NULL;
    size_t len = 0;
    uint64_t s = 12345;
    FILE *f = open_memstream(&text, &len);
    int round, parsed = 0;
    static const char junk[] = "=# \n0123456789xkpre";

    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(lin_write(f, h), LIN_OK);
    fclose(f);
    for (round = 0; round < 2000; round++) {
        char *m = malloc(len + 1);
        struct lin_history *g = lin_new();
        struct lin_budget b = {.max_states = 2000, .max_ms = 1000};
        char err[128];
        int k, nm = 1 + (int)below(&s, 4);
        size_t mlen = len;

        ck_assert_ptr_nonnull(m);
        ck_assert_ptr_nonnull(g);
        memcpy(m, text, len + 1);
        for (k = 0; k < nm; k++) {
            size_t at = below(&s, len);
            switch (below(&s, 3)) {
            case 0:
                m[at] = junk[below(&s, sizeof junk - 1)];
                break;
            case 1:
                m[at] = (char)below(&s, 256);
                break;
            default:
                mlen = at; /* truncate */
                break;
            }
        }
        f = fmemopen(m, mlen > 0 ? mlen : 1, "r");
        ck_assert_ptr_nonnull(f);
        if (lin_read(f, g, err, sizeof err) == LIN_OK) {
            int rc = lin_check(g, &b, NULL);
            ck_assert(rc == LIN_OK || rc == LIN_VIOLATION || rc == LIN_UNKNOWN);
            parsed++;
        } else {
            ck_assert_uint_eq(lin_count(g), 0);
            ck_assert(strncmp(err, "line ", 5) == 0);
        }
        fclose(f);
        lin_free(g);
        free(m);
    }
    ck_assert_int_gt(parsed, 0);
    free(text);
    lin_free(h);
    free(ops);
}
END_TEST

START_TEST(a_violation_report_can_be_replayed_as_a_history)
{
    const size_t n = 600;
    struct simop *ops = simulate(31, n, 8, 4, 5);
    size_t bad = inject_stale_read(ops, n, 31);
    struct lin_history *h, *again;
    struct lin_report r, r2;
    char *text = NULL, err[128] = "";
    size_t len = 0;
    FILE *f;

    ck_assert_uint_lt(bad, n);
    h = sim_history(ops, n);
    ck_assert_int_eq(lin_check(h, NULL, &r), LIN_VIOLATION);
    f = open_memstream(&text, &len);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(lin_report_print(&r, f), LIN_OK);
    fclose(f);
    ck_assert_ptr_nonnull(strstr(text, "linearizable: no\n"));
    ck_assert_ptr_nonnull(strstr(text, "FAILS"));

    /* Its op lines (everything after the first line starting with an op
     * kind) form a history that fails at the same op. */
    again = lin_new();
    ck_assert_ptr_nonnull(again);
    {
        char *line = text, *next, *ops_text = NULL;
        size_t used = 0;
        ops_text = calloc(len + 1, 1);
        ck_assert_ptr_nonnull(ops_text);
        for (; *line != '\0'; line = next) {
            size_t l;
            next = strchr(line, '\n');
            next = next ? next + 1 : line + strlen(line);
            l = (size_t)(next - line);
            if (strncmp(line, "read ", 5) == 0 ||
                strncmp(line, "write ", 6) == 0 ||
                strncmp(line, "cas ", 4) == 0 ||
                strncmp(line, "insert ", 7) == 0 ||
                strncmp(line, "delete ", 7) == 0) {
                memcpy(ops_text + used, line, l);
                used += l;
            }
        }
        f = fmemopen(ops_text, used, "r");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(lin_read(f, again, err, sizeof err), LIN_OK);
        fclose(f);
        free(ops_text);
    }
    ck_assert_uint_eq(lin_count(again), r.nprefix);
    ck_assert_int_eq(lin_check(again, NULL, &r2), LIN_VIOLATION);
    ck_assert_uint_eq(r2.fail_time, r.fail_time);
    lin_report_release(&r2);
    lin_report_release(&r);
    lin_free(again);
    lin_free(h);
    free(text);
    free(ops);
}
END_TEST

START_TEST(reports_of_every_verdict_print)
{
    struct lin_history *h = pathological(30);
    struct lin_budget b = {.max_states = 1000};
    struct lin_report r;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(lin_check(h, &b, &r), LIN_UNKNOWN);
    ck_assert_int_eq(lin_report_print(&r, f), LIN_OK);
    lin_report_release(&r);
    lin_free(h);
    h = lin_new();
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(lin_check(h, NULL, &r), LIN_OK);
    ck_assert_uint_eq(r.keys, 0);
    ck_assert_int_eq(lin_report_print(&r, f), LIN_OK);
    lin_report_release(&r);
    lin_report_release(&r); /* a released report is zero: a no-op */
    fclose(f);
    ck_assert_ptr_nonnull(strstr(text, "linearizable: unknown\n"));
    ck_assert_ptr_nonnull(strstr(text, "the budget of states"));
    ck_assert_ptr_nonnull(strstr(text, "linearizable: yes\n"));
    free(text);
    lin_free(h);
}
END_TEST

START_TEST(every_allocation_failure_is_reported_and_leaks_nothing)
{
    const size_t n = 80;
    struct simop *ops = simulate(9, n, 4, 2, 10);
    size_t bad = inject_stale_read(ops, n, 9);
    struct lin_history *h = sim_history(ops, n);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    long k;
    int failed = 0, passed = 0;

    ck_assert_uint_lt(bad, n);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(lin_write(f, h), LIN_OK);
    fclose(f);
    /* Fail the k-th allocation of: reading the file, checking it (search
     * and shrinking), printing the report. Each step either works or says
     * LIN_ENOMEM and leaves its inputs as they were; the sanitizer run
     * (CK_FORK=no) checks that nothing leaks. */
    for (k = 0; k < 5000; k++) {
        struct lin_history *g = lin_new();
        struct lin_report r;
        char err[128] = "";
        int rc;

        if (g == NULL)
            continue;
        f = fmemopen(text, len, "r");
        ck_assert_ptr_nonnull(f);
        lin_fail_alloc_after(k);
        rc = lin_read(f, g, err, sizeof err);
        fclose(f);
        if (rc == LIN_OK) {
            rc = lin_check(g, NULL, &r);
            ck_assert(rc == LIN_VIOLATION || rc == LIN_ENOMEM);
            ck_assert_int_eq(r.result, rc);
            lin_report_release(&r);
        } else {
            ck_assert_int_eq(rc, LIN_ENOMEM);
            ck_assert_uint_eq(lin_count(g), 0);
        }
        lin_fail_alloc_after(-1);
        lin_free(g);
        if (rc == LIN_ENOMEM) {
            failed++;
        } else {
            passed++;
            if (passed > 3)
                break; /* past the last allocation */
        }
    }
    lin_fail_alloc_after(-1);
    ck_assert_int_gt(failed, 20);
    ck_assert_int_gt(passed, 3);
    free(text);
    lin_free(h);
    free(ops);
}
END_TEST

Suite *lincheck_suite(void)
{
    Suite *s = suite_create("lincheck");
    TCase *model = tcase_create("model");
    TCase *sim = tcase_create("simulated");
    TCase *bf = tcase_create("brute_force");
    TCase *budget = tcase_create("budget");
    TCase *text = tcase_create("text");

    tcase_add_test(model, sequential_histories_are_linearizable);
    tcase_add_test(
        model, a_wrong_value_or_version_in_a_sequential_history_is_a_violation);
    tcase_add_test(model, concurrent_overlapping_writes_let_reads_see_either);
    tcase_add_test(
        model,
        a_read_that_sees_a_value_before_its_write_was_called_is_a_violation);
    tcase_add_test(model, a_stale_read_after_a_completed_write_is_a_violation);
    tcase_add_test(
        model, a_read_may_see_a_pending_write_and_later_reads_cannot_go_back);
    tcase_add_test(model, cas_success_and_failure_follow_versions);
    tcase_add_test(model, insert_twice_both_ok_is_a_violation);
    tcase_add_test(model, versions_that_decrease_are_a_violation);
    tcase_add_test(model, delete_then_read_absent);
    tcase_add_test(model, a_pending_delete_may_or_may_not_take_effect);
    tcase_add_test(model, histories_of_only_pending_ops_are_linearizable);
    tcase_add_test(model, lin_add_rejects_invalid_ops_and_keeps_the_history);
    suite_add_tcase(s, model);

    tcase_set_timeout(sim, 120);
    tcase_add_loop_test(
        sim, histories_from_a_simulated_correct_register_are_linearizable, 0,
        20);
    tcase_add_loop_test(
        sim, a_stale_read_injected_into_a_simulated_history_is_flagged, 0, 20);
    tcase_add_loop_test(sim, a_long_simulated_history_checks_in_bounded_time, 0,
                        2);
    suite_add_tcase(s, sim);

    tcase_set_timeout(bf, 120);
    tcase_add_loop_test(
        bf, lin_check_agrees_with_brute_force_on_small_histories, 0, 8);
    suite_add_tcase(s, bf);

    tcase_set_timeout(budget, 60);
    tcase_add_test(budget, the_budget_makes_a_pathological_case_return_unknown);
    tcase_add_test(budget,
                   an_undecided_key_does_not_hide_a_violation_in_another);
    tcase_add_test(budget, reads_that_commute_are_not_branched_on);
    tcase_add_test(budget, interchangeable_pending_writes_are_tried_once);
    tcase_add_test(budget, quick_proofs_name_the_two_ops_that_contradict);
    suite_add_tcase(s, budget);

    tcase_set_timeout(text, 60);
    tcase_add_test(text, a_history_file_round_trips);
    tcase_add_test(text,
                   malformed_history_lines_are_rejected_with_their_line_number);
    tcase_add_test(text, mutated_history_files_fail_cleanly_or_check);
    tcase_add_test(text, a_violation_report_can_be_replayed_as_a_history);
    tcase_add_test(text, reports_of_every_verdict_print);
    tcase_add_test(text,
                   every_allocation_failure_is_reported_and_leaks_nothing);
    suite_add_tcase(s, text);
    return s;
}
