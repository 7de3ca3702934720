/*
 * proc_builtin - the built-in procedures, written against kvproc.h only
 * (as a plugin would be), so they exercise the same interface:
 *
 *   incr    KEY [DELTA]        the value as a decimal int64 (absent = 0) plus
 *                              DELTA (default 1); replies the new value.
 *                              KV_EINVAL when the argument or the value is
 *                              not a decimal int64, KV_ERANGE on overflow.
 *   append  KEY DATA           appends DATA (absent = empty); replies the
 *                              new length in decimal; KV_ETOOBIG past
 *                              max_value_bytes.
 *   cas     KEY [EXP, NEW]     a list of two items: when the value equals
 *                              EXP (a missing item: the key is absent),
 *                              writes NEW and replies nothing; otherwise
 *                              KV_ECONFLICT with a reply of one list item,
 *                              the current value (missing when absent).
 *   mget    KEY [K2, K3, ...]  read-only: replies a list with the values of
 *                              KEY and then of each key of the argument list
 *                              (missing items for absent keys).
 *
 * Decimal int64 text: an optional '+' or '-', then 1 to 19 digits (leading
 * zeros allowed), nothing else; written back as printf's %lld would.
 */
#include "proc_builtin.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Printable form of bytes for messages; see proc_builtin.h. */
const char *proc_show(char *buf, size_t cap, const void *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = p;
    size_t o = 0;

    if (buf == NULL || cap == 0)
        return buf;
    if (cap < 8 || (s == NULL && n > 0)) {
        buf[0] = '\0';
        return buf;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        bool plain = c >= 0x20 && c < 0x7f && c != '\\';
        size_t need = plain ? 1 : 4;
        /* keep room for "..." and the NUL unless this is the last byte */
        size_t keep = i + 1 == n ? 1 : 4;
        if (o + need + keep > cap) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (plain) {
            buf[o++] = (char)c;
        } else {
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[c >> 4];
            buf[o++] = hex[c & 15];
        }
    }
    buf[o] = '\0';
    return buf;
}

/* Parses decimal int64 text (see the top of the file). Returns 0 or -1. */
static int parse_i64(const void *p, size_t n, int64_t *out)
{
    const unsigned char *s = p;
    uint64_t mag = 0, lim;
    bool neg = false;
    size_t i = 0;

    if (n > 0 && (s[0] == '+' || s[0] == '-')) {
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
    if (neg)
        *out = mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
    else
        *out = (int64_t)mag;
    return 0;
}

static int incr(kv_proc_ctx *ctx, const void *arg, size_t len)
{
    char shown[PROC_SHOW_LEN], vshown[PROC_SHOW_LEN], text[24];
    size_t klen, vlen;
    const void *key = kv_proc_key(ctx, &klen);
    const void *val;
    int64_t delta = 1, cur = 0;
    int n, rc;

    if (len > 0 && parse_i64(arg, len, &delta) != 0)
        return kv_proc_error(ctx, KV_EINVAL,
                             "incr: the argument '%s' is not a decimal int64",
                             proc_show(shown, sizeof shown, arg, len));
    rc = kv_proc_get(ctx, key, klen, &val, &vlen, NULL);
    if (rc == KV_OK) {
        if (parse_i64(val, vlen, &cur) != 0)
            return kv_proc_error(ctx, KV_EINVAL,
                                 "incr: %s holds '%s', not a decimal int64",
                                 proc_show(shown, sizeof shown, key, klen),
                                 proc_show(vshown, sizeof vshown, val, vlen));
    } else if (rc != KV_ENOTFOUND) {
        return rc;
    }
    if ((delta > 0 && cur > INT64_MAX - delta) ||
        (delta < 0 && cur < INT64_MIN - delta))
        return kv_proc_error(ctx, KV_ERANGE, "incr: %s would overflow int64",
                             proc_show(shown, sizeof shown, key, klen));
    n = snprintf(text, sizeof text, "%" PRId64, cur + delta);
    rc = kv_proc_put(ctx, key, klen, text, (size_t)n);
    if (rc != KV_OK)
        return rc;
    return kv_proc_reply(ctx, text, (size_t)n);
}

static int append(kv_proc_ctx *ctx, const void *arg, size_t len)
{
    char shown[PROC_SHOW_LEN], text[24];
    size_t klen, vlen = 0, total;
    const void *key = kv_proc_key(ctx, &klen);
    const void *val = NULL;
    unsigned char *nv = NULL;
    int n, rc;

    rc = kv_proc_get(ctx, key, klen, &val, &vlen, NULL);
    if (rc == KV_ENOTFOUND)
        vlen = 0;
    else if (rc != KV_OK)
        return rc;
    if (len > SIZE_MAX - vlen)
        return kv_proc_error(ctx, KV_ETOOBIG, "append: %s would be too long",
                             proc_show(shown, sizeof shown, key, klen));
    total = vlen + len;
    if (total > 0) {
        nv = malloc(total);
        if (nv == NULL)
            return kv_proc_error(ctx, KV_ENOMEM, "append: out of memory");
        if (vlen > 0)
            memcpy(nv, val, vlen);
        if (len > 0)
            memcpy(nv + vlen, arg, len);
    }
    rc = kv_proc_put(ctx, key, klen, nv != NULL ? nv : (void *)"", total);
    free(nv);
    if (rc == KV_ETOOBIG)
        return kv_proc_error(ctx, KV_ETOOBIG,
                             "append: %s would hold %zu bytes, over "
                             "max_value_bytes",
                             proc_show(shown, sizeof shown, key, klen), total);
    if (rc != KV_OK)
        return rc;
    n = snprintf(text, sizeof text, "%zu", total);
    return kv_proc_reply(ctx, text, (size_t)n);
}

static int cas(kv_proc_ctx *ctx, const void *arg, size_t len)
{
    char shown[PROC_SHOW_LEN];
    size_t klen, elen, nlen, xlen, vlen = 0;
    const void *key = kv_proc_key(ctx, &klen);
    const void *p = arg, *exp, *nv, *extra, *val = NULL;
    size_t left = len;
    bool found, equal;
    int rc;

    if (kv_list_next(&p, &left, &exp, &elen) != KV_OK ||
        kv_list_next(&p, &left, &nv, &nlen) != KV_OK ||
        kv_list_next(&p, &left, &extra, &xlen) != KV_EOF)
        return kv_proc_error(ctx, KV_EINVAL,
                             "cas: the argument must be a list of 2 items "
                             "(expected, new)");
    if (nv == NULL)
        return kv_proc_error(ctx, KV_EINVAL,
                             "cas: the new value (item 2) may not be missing");
    rc = kv_proc_get(ctx, key, klen, &val, &vlen, NULL);
    if (rc != KV_OK && rc != KV_ENOTFOUND)
        return rc;
    found = rc == KV_OK;
    if (found)
        equal = exp != NULL && elen == vlen && memcmp(exp, val, vlen) == 0;
    else
        equal = exp == NULL;
    if (!equal) {
        rc = kv_proc_reply_item(ctx, found ? val : NULL, found ? vlen : 0);
        if (rc != KV_OK)
            return rc;
        return kv_proc_error(ctx, KV_ECONFLICT, "cas: %s holds another value%s",
                             proc_show(shown, sizeof shown, key, klen),
                             found ? "" : " (it is absent)");
    }
    return kv_proc_put(ctx, key, klen, nv, nlen);
}

/* Appends KEY's value (a missing item when absent) to the reply. */
static int reply_value(kv_proc_ctx *ctx, const void *key, size_t klen)
{
    const void *val;
    size_t vlen;
    int rc = kv_proc_get(ctx, key, klen, &val, &vlen, NULL);

    if (rc == KV_ENOTFOUND)
        return kv_proc_reply_item(ctx, NULL, 0);
    if (rc != KV_OK)
        return rc;
    return kv_proc_reply_item(ctx, val, vlen);
}

static int mget(kv_proc_ctx *ctx, const void *arg, size_t len)
{
    size_t klen, ilen, left = len, n = 1;
    const void *key = kv_proc_key(ctx, &klen);
    const void *p = arg, *item;
    int rc = reply_value(ctx, key, klen);

    while (rc == KV_OK) {
        rc = kv_list_next(&p, &left, &item, &ilen);
        if (rc == KV_EOF)
            return KV_OK;
        if (rc != KV_OK)
            return kv_proc_error(ctx, KV_EINVAL,
                                 "mget: the argument is not a list of keys");
        n++;
        if (item == NULL)
            return kv_proc_error(ctx, KV_EINVAL,
                                 "mget: key %zu of the argument is missing", n);
        rc = reply_value(ctx, item, ilen);
    }
    return rc;
}

/* Defines incr, append, cas and mget in REG. */
int proc_builtin_register(kv_proc_registry *reg)
{
    int rc = kv_proc_define(reg, "incr", incr, NULL, 0);
    if (rc == KV_OK)
        rc = kv_proc_define(reg, "append", append, NULL, 0);
    if (rc == KV_OK)
        rc = kv_proc_define(reg, "cas", cas, NULL, 0);
    if (rc == KV_OK)
        rc = kv_proc_define(reg, "mget", mget, NULL, KV_PROC_READONLY);
    return rc;
}
