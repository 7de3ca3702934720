/*
 * sum_prefix - read-only procedure `sum_prefix`: adds up the integer
 * values of the keys that start with a prefix.
 *
 * Argument: the prefix (bytes; empty: every key). The procedure scans the
 * keys of the call's shard with that prefix, counts those whose value is a
 * decimal int64 (an optional sign, then digits) and sums them, and counts
 * the others as skipped. The scan is bounded by the keys budget
 * (proc_max_keys): a shard with more matching keys fails with KV_EBUDGET.
 * Reply (text): "COUNT SUM SKIPPED". KV_ERANGE when the sum overflows.
 *
 * On one shard, the one of the key given (the key itself is not read):
 *
 *   kvclient call sum_prefix {acme}. {acme}.visits.
 *   3 42 0
 *
 * On every shard (kv_call_all in libkv), the merge function adds the
 * shards' replies into one "COUNT SUM SKIPPED" (KV_ERANGE on overflow).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kvproc.h"

/* Parses a decimal int64 (optional sign, 1 or more digits, nothing else).
 * Returns 0 or -1. */
static int parse_i64(const char *s, size_t n, int64_t *out)
{
    uint64_t mag = 0, lim;
    bool neg = false;
    size_t i = 0;

    if (n > 0 && (s[0] == '-' || s[0] == '+')) {
        neg = s[0] == '-';
        i = 1;
    }
    if (i == n)
        return -1;
    lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; i < n; i++) {
        unsigned d;
        if (s[i] < '0' || s[i] > '9')
            return -1;
        d = (unsigned)(s[i] - '0');
        if (mag > (lim - d) / 10)
            return -1;
        mag = mag * 10 + d;
    }
    if (!neg)
        *out = (int64_t)mag;
    else if (mag == (uint64_t)INT64_MAX + 1)
        *out = INT64_MIN;
    else
        *out = -(int64_t)mag;
    return 0;
}

/* Adds B to *A; returns -1 (and leaves *A) on overflow. */
static int add_i64(int64_t *a, int64_t b)
{
    if ((b > 0 && *a > INT64_MAX - b) || (b < 0 && *a < INT64_MIN - b))
        return -1;
    *a += b;
    return 0;
}

struct totals {
    uint64_t count, skipped;
    int64_t sum;
};

static int visit(void *arg, const void *key, size_t klen, const void *val,
                 size_t vlen)
{
    struct totals *t = arg;
    int64_t v;

    (void)key;
    (void)klen;
    if (parse_i64(val, vlen, &v) != 0) {
        t->skipped++;
        return 0;
    }
    if (add_i64(&t->sum, v) != 0)
        return KV_ERANGE;
    t->count++;
    return 0;
}

static int reply_totals(kv_proc_ctx *ctx, const struct totals *t)
{
    char text[80];
    int n = snprintf(text, sizeof text, "%llu %lld %llu",
                     (unsigned long long)t->count, (long long)t->sum,
                     (unsigned long long)t->skipped);
    return kv_proc_reply(ctx, text, (size_t)n);
}

static int sum_prefix(kv_proc_ctx *ctx, const void *arg, size_t len)
{
    struct totals t = {0, 0, 0};
    int rc = kv_proc_scan(ctx, arg, len, 0, visit, &t);

    if (rc == KV_ERANGE)
        return kv_proc_error(ctx, KV_ERANGE,
                             "sum_prefix: the sum overflows int64");
    if (rc != KV_OK)
        return rc;
    return reply_totals(ctx, &t);
}

/* Parses "COUNT SUM SKIPPED" (S, N bytes). Returns 0 or -1. */
static int parse_totals(const char *s, size_t n, struct totals *t)
{
    const char *sp1, *sp2;
    int64_t c, k;

    if (s == NULL || n == 0)
        return -1;
    sp1 = memchr(s, ' ', n);
    if (sp1 == NULL)
        return -1;
    sp2 = memchr(sp1 + 1, ' ', n - (size_t)(sp1 + 1 - s));
    if (sp2 == NULL)
        return -1;
    if (parse_i64(s, (size_t)(sp1 - s), &c) != 0 || c < 0 ||
        parse_i64(sp1 + 1, (size_t)(sp2 - sp1 - 1), &t->sum) != 0 ||
        parse_i64(sp2 + 1, n - (size_t)(sp2 + 1 - s), &k) != 0 || k < 0)
        return -1;
    t->count = (uint64_t)c;
    t->skipped = (uint64_t)k;
    return 0;
}

static int merge(kv_proc_ctx *ctx, const void *const *replies,
                 const size_t *lens, size_t n)
{
    struct totals all = {0, 0, 0};

    for (size_t i = 0; i < n; i++) {
        struct totals t;
        if (parse_totals(replies[i], lens[i], &t) != 0)
            return kv_proc_error(ctx, KV_EINVAL,
                                 "sum_prefix: reply %zu is not "
                                 "\"COUNT SUM SKIPPED\"",
                                 i + 1);
        if (add_i64(&all.sum, t.sum) != 0 ||
            all.count > (uint64_t)INT64_MAX - t.count ||
            all.skipped > (uint64_t)INT64_MAX - t.skipped)
            return kv_proc_error(ctx, KV_ERANGE,
                                 "sum_prefix: the sum overflows int64");
        all.count += t.count;
        all.skipped += t.skipped;
    }
    return reply_totals(ctx, &all);
}

/* Defines `sum_prefix` (read-only, with a merge function). */
int kv_proc_register(kv_proc_registry *reg)
{
    return kv_proc_define(reg, "sum_prefix", sum_prefix, merge,
                          KV_PROC_READONLY);
}
