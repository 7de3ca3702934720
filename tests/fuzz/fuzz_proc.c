/*
 * fuzz_proc - procedure arguments (kv_list_next) and procedures run on
 * any argument and any stored values.
 *
 * The input is
 *
 *   SELECT(1) LIMITS(1) NSHARDS(1) KLEN(1) KEY ALEN(2) ARG  then
 *   up to 32 stored keys: KLEN(1) KEY VLEN(2) VALUE WHAT(1)
 *
 * SELECT picks the procedure: the built-ins (incr, append, cas, mget), the
 * example plugins (move, ratelimit, sum_prefix) when the build loads
 * them, or (values past those) a name made of the key's bytes. LIMITS
 * picks the budgets (tiny ones, so inputs reach them, or the defaults).
 * The call runs on its key's shard of 1..8 shards against a fake reader
 * that serves the stored keys: WHAT gives a key's version (1..200), or
 * makes the reader answer PROC_EWAIT, ENGINE_ELOCKED or KV_EIO for it, or
 * hides it. Scans visit the stored keys in order. The argument is also
 * walked with kv_list_next, and the stored values, as replies of every
 * shard, are merged by the procedure (proc_merge).
 *
 * Findings besides crashes, leaks and undefined behaviour: a list walk
 * that does not move forward or reads past its bytes; a result that breaks
 * proc.h: effects that are not "conditions, then writes", a condition
 * that does not match what the reader gave, a write that breaks the key,
 * value or write budgets, a reply over its budget, writes from a
 * read-only procedure, effects with an error code; a procedure that does
 * not do the same thing twice on the same input.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "kv.h"
#include "proc.h"
#include "shard.h"

#define MAX_KEYS 32

struct stored {
    const uint8_t *key;
    size_t klen;
    const uint8_t *val;
    size_t vlen;
    uint8_t what;
};

struct reader {
    struct stored keys[MAX_KEYS];
    size_t n;
    uint32_t nshards;
    uint64_t gets; /* calls made, to bound them */
};

static const char *const names[] = {"incr", "append",    "cas",       "mget",
                                    "move", "ratelimit", "sum_prefix"};
#define NNAMES (sizeof(names) / sizeof(names[0]))

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_init();
    fuzz_procs();
    return 0;
}

static const struct stored *lookup(const struct reader *rd, const void *key,
                                   size_t klen)
{
    for (size_t i = 0; i < rd->n; i++)
        if (rd->keys[i].klen == klen &&
            (klen == 0 || memcmp(rd->keys[i].key, key, klen) == 0))
            return &rd->keys[i];
    return NULL;
}

/* A stored key's version (WHAT 0..199 -> 1..200), or how the reader fails
 * for it. */
static int outcome(uint8_t what, uint64_t *version)
{
    *version = (uint64_t)(what % 200) + 1;
    switch (what) {
    case 250:
        return PROC_EWAIT;
    case 251:
        return ENGINE_ELOCKED;
    case 252:
        return KV_EIO;
    case 253:
    case 254:
    case 255:
        return KV_ENOTFOUND;
    default:
        return KV_OK;
    }
}

static int fake_get(void *arg, uint32_t shard, const void *key, size_t klen,
                    void **val, size_t *vlen, uint64_t *version)
{
    struct reader *rd = arg;
    *val = NULL;
    *vlen = 0;
    if (++rd->gets > 100000)
        fuzz_fail("a procedure read more than 100000 times");
    if (shard >= rd->nshards || shard_of(key, klen, rd->nshards) != shard)
        fuzz_fail("a procedure read key on shard %u, not its own", shard);
    const struct stored *s = lookup(rd, key, klen);
    if (!s)
        return KV_ENOTFOUND;
    int rc = outcome(s->what, version);
    if (rc != KV_OK)
        return rc;
    if (s->vlen) {
        *val = malloc(s->vlen);
        if (!*val)
            return KV_ENOMEM;
        memcpy(*val, s->val, s->vlen);
    }
    *vlen = s->vlen;
    return KV_OK;
}

static int cmp_stored(const void *a, const void *b)
{
    const struct stored *x = a, *y = b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = n ? memcmp(x->key, y->key, n) : 0;
    if (c)
        return c;
    return x->klen < y->klen ? -1 : x->klen > y->klen;
}

static int fake_scan(void *arg, const struct engine_scan *sc, engine_emit_fn fn,
                     void *fnarg)
{
    struct reader *rd = arg;
    uint64_t n = 0;
    for (size_t i = 0; i < rd->n; i++) {
        const struct stored *s = &rd->keys[i];
        uint64_t version;
        int rc = outcome(s->what, &version);
        if (rc == PROC_EWAIT || rc == KV_EIO)
            return rc; /* the scan as a whole waits or fails */
        if (rc != KV_OK || s->klen == 0 ||
            shard_of(s->key, s->klen, rd->nshards) != sc->shard)
            continue;
        if (sc->prefix_len && (s->klen < sc->prefix_len ||
                               memcmp(s->key, sc->prefix, sc->prefix_len)))
            continue;
        if (sc->limit && n == sc->limit)
            break;
        rc = fn(fnarg, s->key, s->klen, s->val, s->vlen, version);
        if (rc != 0)
            return rc;
        n++;
    }
    return KV_OK;
}

/* Checks RES against proc.h and against what the reader holds. */
static void check_result(const struct reader *rd, uint32_t shard,
                         const struct proc_limits *lim,
                         const struct proc_result *res, int rc)
{
    if (rc != res->code)
        fuzz_fail("proc_run returned %d but the result says %d", rc, res->code);
    if (res->rlen > lim->max_reply_bytes || (res->rlen && !res->reply))
        fuzz_fail("a reply of %zu bytes (budget %llu)", res->rlen,
                  (unsigned long long)lim->max_reply_bytes);
    if (rc != KV_OK) {
        if (res->nops)
            fuzz_fail("a failed call (%d) has %zu effects", rc, res->nops);
        return;
    }
    if (res->nwrites > res->nops || (res->readonly && res->nwrites))
        fuzz_fail("%zu writes of %zu ops (read-only: %d)", res->nwrites,
                  res->nops, (int)res->readonly);
    uint64_t wbytes = 0;
    for (size_t i = 0; i < res->nops; i++) {
        const struct engine_txn_op *op = &res->ops[i];
        bool write = i >= res->nops - res->nwrites;
        if (op->klen == 0 || op->klen > lim->max_key_bytes || !op->key)
            fuzz_fail("op %zu: a key of %zu bytes", i, op->klen);
        if (shard_of(op->key, op->klen, rd->nshards) != shard)
            fuzz_fail("op %zu: a key of another shard", i);
        if (!write) {
            if (op->kind != ENGINE_TXN_IF_VERSION &&
                op->kind != ENGINE_TXN_IF_ABSENT)
                fuzz_fail("op %zu: a write among the conditions", i);
            const struct stored *s = lookup(rd, op->key, op->klen);
            uint64_t version = 0;
            int got = s ? outcome(s->what, &version) : KV_ENOTFOUND;
            if (got != KV_OK)
                version = 0;
            if (op->kind == ENGINE_TXN_IF_VERSION ? op->version != version
                                                  : version != 0)
                fuzz_fail("op %zu: a condition on version %llu; the reader "
                          "gave %llu",
                          i, (unsigned long long)op->version,
                          (unsigned long long)version);
            continue;
        }
        if (op->kind != ENGINE_TXN_PUT && op->kind != ENGINE_TXN_DEL)
            fuzz_fail("op %zu: a condition among the writes", i);
        if (op->kind == ENGINE_TXN_PUT &&
            (op->vlen > lim->max_value_bytes || (op->vlen && !op->val)))
            fuzz_fail("op %zu: a value of %zu bytes", i, op->vlen);
        wbytes += op->klen + (op->kind == ENGINE_TXN_PUT ? op->vlen : 0);
        for (size_t j = i + 1; j < res->nops; j++)
            if (res->ops[j].klen == op->klen &&
                memcmp(res->ops[j].key, op->key, op->klen) == 0)
                fuzz_fail("op %zu: a key written twice", i);
    }
    if (wbytes > lim->max_write_bytes)
        fuzz_fail("%llu bytes written (budget %llu)",
                  (unsigned long long)wbytes,
                  (unsigned long long)lim->max_write_bytes);
}

static bool same_result(const struct proc_result *a,
                        const struct proc_result *b)
{
    if (a->code != b->code || a->nops != b->nops || a->rlen != b->rlen ||
        a->nwrites != b->nwrites || a->scanned != b->scanned ||
        (a->rlen && memcmp(a->reply, b->reply, a->rlen) != 0))
        return false;
    for (size_t i = 0; i < a->nops; i++) {
        const struct engine_txn_op *x = &a->ops[i], *y = &b->ops[i];
        if (x->kind != y->kind || x->klen != y->klen || x->vlen != y->vlen ||
            x->version != y->version || memcmp(x->key, y->key, x->klen) ||
            (x->vlen && memcmp(x->val, y->val, x->vlen)))
            return false;
    }
    return true;
}

/* Walks ARG as a list: every item must lie inside it, and the walk moves. */
static void walk_list(const uint8_t *arg, size_t alen)
{
    const void *p = arg;
    size_t left = alen;
    for (size_t guard = 0; guard <= alen; guard++) {
        const void *item;
        size_t ilen;
        size_t before = left;
        int rc = kv_list_next(&p, &left, &item, &ilen);
        if (rc == KV_EOF || rc == KV_EINVAL) {
            if (left != before)
                fuzz_fail("kv_list_next moved on an error");
            return;
        }
        if (rc != KV_OK || left >= before)
            fuzz_fail("kv_list_next returned %d, %zu bytes left of %zu", rc,
                      left, before);
        if (item && ((const uint8_t *)item < arg ||
                     (const uint8_t *)item + ilen > arg + alen))
            fuzz_fail("kv_list_next gave an item outside the list");
    }
    fuzz_fail("kv_list_next did not end");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {.p = data, .left = size};
    const struct proc_registry *reg = fuzz_procs();
    static struct reader rd;
    memset(&rd, 0, sizeof(rd));
    uint8_t select = fuzz_u8(&in);
    uint8_t limits = fuzz_u8(&in);
    rd.nshards = 1 + fuzz_u8(&in) % 8;
    size_t klen, alen;
    const uint8_t *key = fuzz_bytes(&in, fuzz_u8(&in), &klen);
    const uint8_t *arg = fuzz_bytes(&in, fuzz_u16(&in), &alen);
    while (in.left && rd.n < MAX_KEYS) {
        struct stored *s = &rd.keys[rd.n++];
        s->key = fuzz_bytes(&in, fuzz_u8(&in), &s->klen);
        s->val = fuzz_bytes(&in, fuzz_u16(&in), &s->vlen);
        s->what = fuzz_u8(&in);
    }
    qsort(rd.keys, rd.n, sizeof(rd.keys[0]), cmp_stored);
    walk_list(arg, alen);

    struct proc_limits lim = {.max_keys = 100000,
                              .max_write_bytes = 1u << 20,
                              .max_reply_bytes = 1u << 20,
                              .max_key_bytes = 4096,
                              .max_value_bytes = 1u << 20};
    if (limits & 1) {
        lim.max_keys = 1 + (limits >> 1) % 8;
        lim.max_write_bytes = 1 + (limits >> 1) % 64;
        lim.max_reply_bytes = 1 + (limits >> 4) % 32;
        lim.max_key_bytes = 1 + (limits >> 2) % 16;
        lim.max_value_bytes = (limits >> 3) % 16;
    }
    const char *name;
    size_t nlen;
    if (select < 224) {
        name = names[select % NNAMES];
        nlen = strlen(name);
    } else { /* any name: the key's bytes */
        name = (const char *)key;
        nlen = klen > 64 ? 64 : klen;
    }
    uint32_t shard = klen ? shard_of(key, klen, rd.nshards) : 0;
    if (select & 0x10 && select < 224) /* now and then another shard */
        shard = (shard + 1) % rd.nshards;
    struct proc_reader reader = {
        .arg = &rd, .get = fake_get, .scan = fake_scan};
    struct proc_result a, b;
    int rc = proc_run(reg, name, nlen, shard, rd.nshards, klen ? key : NULL,
                      klen, alen ? arg : NULL, alen, &reader, &lim, &a);
    check_result(&rd, shard, &lim, &a, rc);
    int rc2 = proc_run(reg, name, nlen, shard, rd.nshards, klen ? key : NULL,
                       klen, alen ? arg : NULL, alen, &reader, &lim, &b);
    if (rc2 != rc || !same_result(&a, &b))
        fuzz_fail("%.*s did not do the same thing twice (%d, then %d)",
                  (int)nlen, name, rc, rc2);
    proc_result_free(&a);
    proc_result_free(&b);

    /* The stored values, as the replies of as many shards. */
    const void *replies[MAX_KEYS];
    size_t lens[MAX_KEYS];
    for (size_t i = 0; i < rd.n; i++) {
        replies[i] = rd.keys[i].vlen ? rd.keys[i].val : NULL;
        lens[i] = rd.keys[i].vlen;
    }
    rc = proc_merge(reg, name, nlen, replies, lens, rd.n, &lim, &a);
    if (rc != a.code || a.rlen > lim.max_reply_bytes || a.nops)
        fuzz_fail("proc_merge: code %d/%d, %zu reply bytes, %zu ops", rc,
                  a.code, a.rlen, a.nops);
    proc_result_free(&a);
    return 0;
}
