/*
 * move - procedure `move`: moves an amount between two integer balances in
 * one atomic step.
 *
 * The call's key is the source account; the argument is a list of two
 * items: the destination key and the amount (decimal, 1..INT64_MAX).
 * Balances are decimal int64 values; an absent key holds 0. Reply (text):
 * "SOURCE_BALANCE DESTINATION_BALANCE" after the move.
 *
 * Every key of a call must be on the call's shard, so keep the accounts
 * that money moves between under one hash tag: "{acme}.alice" and
 * "{acme}.bob" are on one shard, "alice" and "bob" most likely are not (a
 * destination on another shard fails with KV_EINVAL).
 *
 *   kvclient put {acme}.alice 100
 *   kvclient call move {acme}.alice {acme}.bob 30
 *   70 30
 *
 * It credits the destination first and only then checks the source, so an
 * insufficient balance fails with KV_ECONFLICT ("insufficient funds")
 * after a write was buffered: that write is never applied, since a
 * procedure that returns an error writes nothing. Other errors: KV_EINVAL
 * (a malformed argument, the source as destination, a balance that is not
 * an integer), KV_ERANGE (the destination would overflow).
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

/* Reads KEY's balance into *OUT (0 when absent). */
static int balance(kv_proc_ctx *ctx, const void *key, size_t klen, int64_t *out)
{
    const void *val;
    size_t vlen;
    int rc = kv_proc_get(ctx, key, klen, &val, &vlen, NULL);

    if (rc == KV_ENOTFOUND) {
        *out = 0;
        return KV_OK;
    }
    if (rc != KV_OK)
        return rc;
    if (parse_i64(val, vlen, out) != 0)
        return kv_proc_error(ctx, KV_EINVAL,
                             "move: a balance is not a decimal int64");
    return KV_OK;
}

static int put_balance(kv_proc_ctx *ctx, const void *key, size_t klen,
                       int64_t v)
{
    char text[24];
    int n = snprintf(text, sizeof text, "%lld", (long long)v);
    return kv_proc_put(ctx, key, klen, text, (size_t)n);
}

static int move(kv_proc_ctx *ctx, const void *arg, size_t len)
{
    const void *p = arg, *dst, *amt, *extra;
    size_t left = len, dlen, alen, xlen, slen;
    const void *src = kv_proc_key(ctx, &slen);
    int64_t amount, sbal, dbal;
    char text[48];
    int n, rc;

    if (kv_list_next(&p, &left, &dst, &dlen) != KV_OK ||
        kv_list_next(&p, &left, &amt, &alen) != KV_OK ||
        kv_list_next(&p, &left, &extra, &xlen) != KV_EOF || dst == NULL ||
        amt == NULL)
        return kv_proc_error(ctx, KV_EINVAL,
                             "move: the argument must be a list of 2 items "
                             "(destination, amount)");
    if (parse_i64(amt, alen, &amount) != 0 || amount <= 0)
        return kv_proc_error(ctx, KV_EINVAL,
                             "move: the amount must be 1..9223372036854775807");
    if (dlen == slen && memcmp(dst, src, slen) == 0)
        return kv_proc_error(ctx, KV_EINVAL,
                             "move: the destination is the source");
    /* The destination first, to show that an error undoes a buffered
     * write. */
    rc = balance(ctx, dst, dlen, &dbal);
    if (rc != KV_OK)
        return rc;
    if (dbal > INT64_MAX - amount)
        return kv_proc_error(ctx, KV_ERANGE,
                             "move: the destination would overflow int64");
    dbal += amount;
    rc = put_balance(ctx, dst, dlen, dbal);
    if (rc != KV_OK)
        return rc;
    rc = balance(ctx, src, slen, &sbal);
    if (rc != KV_OK)
        return rc;
    if (sbal < amount)
        return kv_proc_error(ctx, KV_ECONFLICT,
                             "insufficient funds: the source holds %lld, "
                             "%lld needed",
                             (long long)sbal, (long long)amount);
    sbal -= amount;
    rc = put_balance(ctx, src, slen, sbal);
    if (rc != KV_OK)
        return rc;
    n = snprintf(text, sizeof text, "%lld %lld", (long long)sbal,
                 (long long)dbal);
    return kv_proc_reply(ctx, text, (size_t)n);
}

/* Defines `move`. */
int kv_proc_register(kv_proc_registry *reg)
{
    return kv_proc_define(reg, "move", move, NULL, 0);
}
