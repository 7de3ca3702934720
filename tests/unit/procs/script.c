/*
 * script - a test plugin for check_proc.c: procedures `script` and
 * `script_ro` (read-only, with a merge function) that run the commands of
 * their argument against the ctx, so a test can drive every ctx function
 * through the real plugin path and read what each returned.
 *
 * The argument is a list of text commands; most append one list item to
 * the reply:
 *   ignore                   from now on an error does not end the script,
 *                            which then returns KV_OK at its end ("ok")
 *   get KEY                  "=VALUE@VERSION", "-" (not found) or "!CODE"
 *   put KEY [VALUE]          "ok" or "!CODE" (VALUE: the rest of the line)
 *   del KEY                  "ok" or "!CODE"
 *   scan LIMIT STOP [PREFIX] "#K=V,K=V;RC": the entries visited and what
 *                            kv_proc_scan returned; with STOP > 0 the
 *                            callback returns 42 at the STOP-th entry
 *   reply N                  appends N bytes 'x' to the reply (no item)
 *   key                      "KEY@SHARD"
 *   fail CODE [MESSAGE]      returns CODE, after kv_proc_error(MESSAGE)
 *                            when a message is given
 * An error (a negative code) ends the script with that code unless
 * `ignore` came before. The merge function of `script_ro` appends items
 * "get=RC put=RC del=RC scan=RC key=LEN" and then each shard's reply as
 * an item.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvproc.h"

#define LINE_MAX_LEN 1024
#define ITEM_MAX_LEN 4096

struct scan_acc {
    char *out;
    size_t n, cap;
    long stop, seen;
};

static void acc_add(struct scan_acc *a, const void *p, size_t n)
{
    if (n > a->cap - a->n)
        n = a->cap - a->n;
    memcpy(a->out + a->n, p, n);
    a->n += n;
}

static int visit(void *arg, const void *key, size_t klen, const void *val,
                 size_t vlen)
{
    struct scan_acc *a = arg;
    if (a->seen > 0)
        acc_add(a, ",", 1);
    acc_add(a, key, klen);
    acc_add(a, "=", 1);
    acc_add(a, val, vlen);
    a->seen++;
    return a->stop > 0 && a->seen == a->stop ? 42 : 0;
}

static int item_text(kv_proc_ctx *ctx, const char *s)
{
    return kv_proc_reply_item(ctx, s, strlen(s));
}

static int item_code(kv_proc_ctx *ctx, int rc)
{
    char t[32];
    if (rc == KV_OK)
        return item_text(ctx, "ok");
    snprintf(t, sizeof t, "!%d", rc);
    return item_text(ctx, t);
}

/* Splits *S at the next space: returns the word, *S after the space (or
 * at the end). */
static char *word(char **s)
{
    char *w = *s, *sp = strchr(w, ' ');
    if (sp != NULL) {
        *sp = '\0';
        *s = sp + 1;
    } else {
        *s = w + strlen(w);
    }
    return w;
}

/* Runs one command (LINE, NUL-terminated, modifiable). Returns the code of
 * the ctx call it made (a negative one is an error). */
static int run_one(kv_proc_ctx *ctx, char *line, bool *ignore, bool *done,
                   int *ret)
{
    char *rest = line, *cmd = word(&rest);
    char item[ITEM_MAX_LEN];
    int rc;

    if (strcmp(cmd, "ignore") == 0) {
        *ignore = true;
        return item_text(ctx, "ok");
    }
    if (strcmp(cmd, "get") == 0) {
        const void *val;
        size_t vlen, klen = strlen(rest);
        uint64_t ver = 99;
        rc = kv_proc_get(ctx, rest, klen, &val, &vlen, &ver);
        if (rc == KV_OK) {
            snprintf(item, sizeof item, "=%.*s@%llu", (int)vlen,
                     (const char *)val, (unsigned long long)ver);
            item_text(ctx, item);
        } else if (rc == KV_ENOTFOUND) {
            item_text(ctx, "-");
            rc = KV_OK;
        } else {
            item_code(ctx, rc);
        }
        return rc;
    }
    if (strcmp(cmd, "put") == 0) {
        char *key = word(&rest);
        rc = kv_proc_put(ctx, key, strlen(key), rest, strlen(rest));
        item_code(ctx, rc);
        return rc;
    }
    if (strcmp(cmd, "del") == 0) {
        rc = kv_proc_del(ctx, rest, strlen(rest));
        item_code(ctx, rc);
        return rc;
    }
    if (strcmp(cmd, "scan") == 0) {
        long limit = strtol(word(&rest), NULL, 10);
        long stop = strtol(word(&rest), NULL, 10);
        struct scan_acc a = {item + 1, 0, sizeof item - 40, stop, 0};
        item[0] = '#';
        rc = kv_proc_scan(ctx, rest, strlen(rest), (uint64_t)limit, visit, &a);
        snprintf(item + 1 + a.n, sizeof item - 1 - a.n, ";%d", rc);
        item_text(ctx, item);
        return rc;
    }
    if (strcmp(cmd, "reply") == 0) {
        long n = strtol(rest, NULL, 10);
        char *x = malloc(n > 0 ? (size_t)n : 1);
        if (x == NULL)
            return KV_ENOMEM;
        memset(x, 'x', n > 0 ? (size_t)n : 0);
        rc = kv_proc_reply(ctx, x, n > 0 ? (size_t)n : 0);
        free(x);
        return rc;
    }
    if (strcmp(cmd, "key") == 0) {
        size_t klen;
        const char *k = kv_proc_key(ctx, &klen);
        snprintf(item, sizeof item, "%.*s@%u", (int)klen, k,
                 (unsigned)kv_proc_shard(ctx));
        return item_text(ctx, item);
    }
    if (strcmp(cmd, "fail") == 0) {
        int code = (int)strtol(word(&rest), NULL, 10);
        *done = true;
        *ret = *rest != '\0' ? kv_proc_error(ctx, code, "%s", rest) : code;
        return KV_OK;
    }
    *done = true;
    *ret = kv_proc_error(ctx, KV_EINVAL, "script: unknown command '%s'", cmd);
    return KV_OK;
}

static int script(kv_proc_ctx *ctx, const void *arg, size_t len)
{
    const void *p = arg, *it;
    size_t left = len, ilen;
    bool ignore = false, done = false;
    int ret = KV_OK, rc;
    char line[LINE_MAX_LEN];

    while ((rc = kv_list_next(&p, &left, &it, &ilen)) == KV_OK) {
        if (it == NULL || ilen >= sizeof line)
            return kv_proc_error(ctx, KV_EINVAL, "script: bad command");
        memcpy(line, it, ilen);
        line[ilen] = '\0';
        rc = run_one(ctx, line, &ignore, &done, &ret);
        if (done)
            return ret;
        if (rc < 0 && !ignore)
            return rc;
    }
    if (rc != KV_EOF)
        return kv_proc_error(ctx, KV_EINVAL, "script: not a list");
    return KV_OK;
}

static int merge(kv_proc_ctx *ctx, const void *const *replies,
                 const size_t *lens, size_t n)
{
    const void *val;
    size_t vlen, klen;
    char t[128];
    int rg = kv_proc_get(ctx, "k", 1, &val, &vlen, NULL);
    int rp = kv_proc_put(ctx, "k", 1, "v", 1);
    int rd = kv_proc_del(ctx, "k", 1);
    int rs = kv_proc_scan(ctx, "", 0, 0, visit, NULL);
    int rc;

    kv_proc_key(ctx, &klen);
    snprintf(t, sizeof t, "get=%d put=%d del=%d scan=%d key=%zu", rg, rp, rd,
             rs, klen);
    rc = item_text(ctx, t);
    for (size_t i = 0; i < n && rc == KV_OK; i++)
        rc = kv_proc_reply_item(ctx, replies[i], lens[i]);
    return rc;
}

/* Defines `script` and `script_ro`. */
int kv_proc_register(kv_proc_registry *reg)
{
    int rc = kv_proc_define(reg, "script", script, NULL, 0);
    if (rc == KV_OK)
        rc = kv_proc_define(reg, "script_ro", script, merge, KV_PROC_READONLY);
    return rc;
}
