/*
 * ratelimit - procedure `ratelimit`: a token bucket per key.
 *
 * Argument (text): "CAPACITY RATE_PER_S NOW_MS [COST]", decimal numbers
 * separated by single spaces:
 *   CAPACITY    the bucket's size in tokens, 1..1000000000
 *   RATE_PER_S  tokens added per second, 1..1000000000
 *   NOW_MS      the caller's clock in milliseconds. A procedure must not
 *               read a clock: a call may be evaluated more than once, and
 *               every evaluation must decide alike.
 *   COST        tokens this request takes, 1..CAPACITY (default 1)
 * State in the key (text): "TOKENS_MILLI LAST_MS", the tokens in
 * thousandths and the time they were counted at. An absent key is a full
 * bucket.
 * Reply (text): "allowed REMAINING" (whole tokens left after this request)
 * or "denied RETRY_AFTER_MS" (how long until COST tokens are there).
 *
 * A denied request writes nothing: the stored state stays, and the next
 * call refills from its LAST_MS, which gives the tokens that writing the
 * refilled state would have given. A NOW_MS before LAST_MS (clients whose
 * clocks differ) refills nothing and keeps LAST_MS.
 *
 *   kvclient call ratelimit api.user42 "10 5 $(date +%s%3N)"
 *   allowed 9
 *
 * KV_EINVAL: a malformed argument or a key that holds something else.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kvproc.h"

#define MAX_SETTING 1000000000ull

/* Parses the next decimal number of S (N bytes) at *POS, skipping one
 * space before it unless at the start. Returns 0 or -1. */
static int next_u64(const char *s, size_t n, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    size_t i = *pos, start;

    if (i > 0) {
        if (i >= n || s[i] != ' ')
            return -1;
        i++;
    }
    start = i;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (i == start)
        return -1;
    *pos = i;
    *out = v;
    return 0;
}

static int ratelimit(kv_proc_ctx *ctx, const void *arg, size_t len)
{
    const char *a = arg;
    uint64_t cap, rate, now, cost = 1, tokens, last, capm, need;
    size_t pos = 0, klen, vlen;
    const void *key = kv_proc_key(ctx, &klen);
    const void *val;
    char text[64];
    int n, rc;

    if (next_u64(a, len, &pos, &cap) != 0 ||
        next_u64(a, len, &pos, &rate) != 0 ||
        next_u64(a, len, &pos, &now) != 0 ||
        (pos < len && next_u64(a, len, &pos, &cost) != 0) || pos != len)
        return kv_proc_error(ctx, KV_EINVAL,
                             "ratelimit: the argument must be "
                             "\"CAPACITY RATE_PER_S NOW_MS [COST]\"");
    if (cap < 1 || cap > MAX_SETTING || rate < 1 || rate > MAX_SETTING ||
        cost < 1 || cost > cap)
        return kv_proc_error(ctx, KV_EINVAL,
                             "ratelimit: CAPACITY and RATE_PER_S must be "
                             "1..1000000000 and COST 1..CAPACITY");
    capm = cap * 1000;
    rc = kv_proc_get(ctx, key, klen, &val, &vlen, NULL);
    if (rc == KV_ENOTFOUND) {
        tokens = capm;
        last = now;
    } else if (rc == KV_OK) {
        size_t p = 0;
        if (next_u64(val, vlen, &p, &tokens) != 0 ||
            next_u64(val, vlen, &p, &last) != 0 || p != vlen)
            return kv_proc_error(ctx, KV_EINVAL,
                                 "ratelimit: the key does not hold "
                                 "\"TOKENS_MILLI LAST_MS\"");
        if (tokens > capm) /* the capacity was lowered */
            tokens = capm;
        if (now > last) {
            uint64_t elapsed = now - last;
            /* rate tokens per second = rate thousandths per millisecond */
            if (elapsed >= (capm - tokens) / rate + 1)
                tokens = capm;
            else
                tokens += elapsed * rate;
            last = now;
        }
    } else {
        return rc;
    }
    need = cost * 1000;
    if (tokens < need) {
        uint64_t wait = (need - tokens + rate - 1) / rate;
        n = snprintf(text, sizeof text, "denied %llu",
                     (unsigned long long)wait);
        return kv_proc_reply(ctx, text, (size_t)n);
    }
    tokens -= need;
    n = snprintf(text, sizeof text, "%llu %llu", (unsigned long long)tokens,
                 (unsigned long long)last);
    rc = kv_proc_put(ctx, key, klen, text, (size_t)n);
    if (rc != KV_OK)
        return rc;
    n = snprintf(text, sizeof text, "allowed %llu",
                 (unsigned long long)(tokens / 1000));
    return kv_proc_reply(ctx, text, (size_t)n);
}

/* Defines `ratelimit`. */
int kv_proc_register(kv_proc_registry *reg)
{
    return kv_proc_define(reg, "ratelimit", ratelimit, NULL, 0);
}
