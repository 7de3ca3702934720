/*
 * api - the public entry points of kv.h: target dispatch, argument checks,
 * and the scan iterator that merges shards. Everything mode-specific is
 * behind struct kv_ops (kvimpl.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "kvimpl.h"
#include "proc.h"
#include "shard.h"

int kv_fail(kv *db, int code, const char *fmt, ...)
{
    if (db) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(db->errmsg, sizeof(db->errmsg), fmt, ap);
        va_end(ap);
    }
    return code;
}

/* The detail of the last failed kv_open() of this thread. */
static _Thread_local char open_errmsg[512];

const char *kv_errmsg(const kv *db)
{
    return db ? db->errmsg : open_errmsg;
}

void kv_free(void *p)
{
    free(p);
}

int kv_open(const char *target, const kv_open_opts *opts, kv **db)
{
    char err[512] = "";
    kv *h = NULL;
    int rc;
    open_errmsg[0] = '\0';
    if (!target || !*target || !db) {
        snprintf(open_errmsg, sizeof(open_errmsg), "no target given");
        return KV_EINVAL;
    }
    if (strncmp(target, "embedded:", 9) == 0)
        rc = embedded_open(target + 9, opts, &h, err, sizeof(err));
    else
        rc = client_open(target, opts, &h, err, sizeof(err));
    if (rc != KV_OK) {
        snprintf(open_errmsg, sizeof(open_errmsg), "%s",
                 err[0] ? err : kv_strerror(rc));
        return rc;
    }
    *db = h;
    return KV_OK;
}

void kv_close(kv *db)
{
    if (db)
        db->ops->close(db);
}

uint32_t kv_call_timeout(const kv *db, const kv_opts *o)
{
    return o && o->timeout_ms ? o->timeout_ms : db->timeout_ms;
}

int kv_check_key(kv *db, const void *key, size_t klen)
{
    if (!key || klen == 0)
        return kv_fail(db, KV_EINVAL, "a key must be 1 byte or more");
    if (klen > db->max_key_bytes)
        return kv_fail(db, KV_ETOOBIG,
                       "key of %zu bytes over the limit of %llu", klen,
                       (unsigned long long)db->max_key_bytes);
    return KV_OK;
}

int kv_check_value(kv *db, const void *val, size_t vlen)
{
    if (vlen > db->max_value_bytes)
        return kv_fail(db, KV_ETOOBIG,
                       "value of %zu bytes over the limit of %llu", vlen,
                       (unsigned long long)db->max_value_bytes);
    if (vlen && !val)
        return kv_fail(db, KV_EINVAL, "value pointer is NULL");
    return KV_OK;
}

int kv_get(kv *db, const void *key, size_t klen, const kv_opts *o, void **val,
           size_t *vlen, uint64_t *version)
{
    if (!db || !val || !vlen)
        return KV_EINVAL;
    db->errmsg[0] = '\0';
    int rc = kv_check_key(db, key, klen);
    if (rc != KV_OK)
        return rc;
    uint64_t ver = 0;
    rc = db->ops->get(db, shard_of(key, klen, db->nshards), key, klen,
                      kv_call_timeout(db, o), o && o->stale, val, vlen, &ver);
    if (rc == KV_OK && version)
        *version = ver;
    return rc;
}

static int do_write(kv *db, struct engine_write *w, const kv_opts *o,
                    uint64_t *version)
{
    if (!db)
        return KV_EINVAL;
    db->errmsg[0] = '\0';
    int rc = kv_check_key(db, w->key, w->klen);
    if (rc == KV_OK && w->op == ENGINE_PUT)
        rc = kv_check_value(db, w->val, w->vlen);
    if (rc != KV_OK)
        return rc;
    if (o && o->if_version && o->if_absent)
        return kv_fail(db, KV_EINVAL,
                       "if_version and if_absent exclude each other");
    w->shard = shard_of(w->key, w->klen, db->nshards);
    w->if_version = o ? o->if_version : 0;
    w->if_absent = o && o->if_absent && w->op == ENGINE_PUT;
    uint64_t ver = 0;
    rc = db->ops->write(db, w, kv_call_timeout(db, o), &ver);
    if (rc == KV_OK && version)
        *version = ver;
    return rc;
}

int kv_put(kv *db, const void *key, size_t klen, const void *val, size_t vlen,
           const kv_opts *o, uint64_t *version)
{
    struct engine_write w = {
        .op = ENGINE_PUT, .key = key, .klen = klen, .val = val, .vlen = vlen};
    return do_write(db, &w, o, version);
}

int kv_del(kv *db, const void *key, size_t klen, const kv_opts *o)
{
    struct engine_write w = {.op = ENGINE_DEL, .key = key, .klen = klen};
    return do_write(db, &w, o, NULL);
}

/* --- procedures --------------------------------------------------------- */

static int check_call(kv *db, const char *name, const void *arg, size_t alen,
                      void **reply, size_t *rlen)
{
    *reply = NULL;
    *rlen = 0;
    db->errmsg[0] = '\0';
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > PROC_MAX_NAME)
        return kv_fail(db, KV_EINVAL, "a procedure name has 1 to %d characters",
                       PROC_MAX_NAME);
    if (alen && !arg)
        return kv_fail(db, KV_EINVAL, "argument pointer is NULL");
    if (alen > db->max_value_bytes)
        return kv_fail(db, KV_ETOOBIG,
                       "argument of %zu bytes over the limit of %llu "
                       "(max_value_bytes)",
                       alen, (unsigned long long)db->max_value_bytes);
    return KV_OK;
}

int kv_call(kv *db, const char *name, const void *key, size_t klen,
            const void *arg, size_t alen, const kv_opts *o, void **reply,
            size_t *rlen)
{
    if (!db || !reply || !rlen)
        return KV_EINVAL;
    int rc = check_call(db, name, arg, alen, reply, rlen);
    if (rc == KV_OK)
        rc = kv_check_key(db, key, klen);
    if (rc != KV_OK)
        return rc;
    return db->ops->call(db, name, key, klen, false, arg, alen,
                         kv_call_timeout(db, o), reply, rlen);
}

int kv_call_all(kv *db, const char *name, const void *arg, size_t alen,
                const kv_opts *o, void **reply, size_t *rlen)
{
    if (!db || !reply || !rlen)
        return KV_EINVAL;
    int rc = check_call(db, name, arg, alen, reply, rlen);
    if (rc != KV_OK)
        return rc;
    return db->ops->call(db, name, NULL, 0, true, arg, alen,
                         kv_call_timeout(db, o), reply, rlen);
}

/* --- scan pages --------------------------------------------------------- */

int scan_page_add(struct scan_page *p, const void *key, size_t klen,
                  const void *val, size_t vlen, uint64_t version)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        struct scan_entry *e = realloc(p->e, cap * sizeof(*e));
        if (!e)
            return KV_ENOMEM;
        p->e = e;
        p->cap = cap;
    }
    unsigned char *buf = malloc(klen + vlen + 1);
    if (!buf)
        return KV_ENOMEM;
    memcpy(buf, key, klen);
    if (vlen)
        memcpy(buf + klen, val, vlen);
    p->e[p->n++] = (struct scan_entry){.key = buf,
                                       .klen = klen,
                                       .val = buf + klen,
                                       .vlen = vlen,
                                       .version = version};
    return KV_OK;
}

void scan_page_clear(struct scan_page *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->e[i].key);
    p->n = 0;
    p->more = false;
}

/* --- the merging iterator ----------------------------------------------- */

struct shard_cursor {
    struct scan_page page;
    size_t pos;          /* next entry of page to hand out */
    bool started;        /* a page was fetched */
    bool done;           /* no more entries in this shard */
    unsigned char *last; /* last key fetched (the resume cursor) */
    size_t last_len;
};

struct kv_iter {
    kv *db;
    kv_scan_opts so;
    unsigned char *bounds; /* copies of start, end, prefix */
    uint32_t timeout_ms;
    bool stale;
    uint64_t returned;
    struct shard_cursor *cur;
    uint32_t ncur;
    struct scan_entry *held; /* the entry last returned, owned here */
};

static int cursor_fill(kv_iter *it, uint32_t shard)
{
    struct shard_cursor *c = &it->cur[shard];
    if (c->done || (c->started && c->pos < c->page.n))
        return KV_OK;
    if (c->started && !c->page.more) {
        c->done = true;
        return KV_OK;
    }
    struct engine_scan sc = {.shard = shard,
                             .start = it->so.start,
                             .start_len = it->so.start_len,
                             .end = it->so.end,
                             .end_len = it->so.end_len,
                             .prefix = it->so.prefix,
                             .prefix_len = it->so.prefix_len,
                             .after = c->last,
                             .after_len = c->last_len,
                             .has_after = c->last != NULL,
                             .limit = SCAN_PAGE_ENTRIES};
    if (it->so.limit && it->so.limit - it->returned < sc.limit)
        sc.limit = it->so.limit - it->returned;
    scan_page_clear(&c->page);
    c->pos = 0;
    int rc = it->db->ops->scan_page(it->db, &sc, it->timeout_ms, it->stale,
                                    &c->page);
    if (rc != KV_OK)
        return rc;
    c->started = true;
    if (c->page.n == 0) {
        c->done = true;
        return KV_OK;
    }
    struct scan_entry *last = &c->page.e[c->page.n - 1];
    unsigned char *copy = realloc(c->last, last->klen);
    if (!copy)
        return KV_ENOMEM;
    memcpy(copy, last->key, last->klen);
    c->last = copy;
    c->last_len = last->klen;
    return KV_OK;
}

static int cmp_key(const struct scan_entry *a, const struct scan_entry *b)
{
    size_t n = a->klen < b->klen ? a->klen : b->klen;
    int c = memcmp(a->key, b->key, n);
    if (c)
        return c;
    return a->klen < b->klen ? -1 : a->klen > b->klen;
}

static unsigned char *dup_bound(unsigned char **at, const void *p, size_t n)
{
    unsigned char *d = *at;
    if (n)
        memcpy(d, p, n);
    *at += n;
    return d;
}

int kv_scan(kv *db, const kv_scan_opts *so, const kv_opts *o, kv_iter **out)
{
    if (!db || !out)
        return KV_EINVAL;
    db->errmsg[0] = '\0';
    kv_scan_opts none = {0};
    if (!so)
        so = &none;
    if ((so->start_len && !so->start) || (so->end_len && !so->end) ||
        (so->prefix_len && !so->prefix))
        return kv_fail(db, KV_EINVAL,
                       "scan bound with a length but no pointer");
    if (so->start_len > db->max_key_bytes || so->end_len > db->max_key_bytes ||
        so->prefix_len > db->max_key_bytes)
        return kv_fail(db, KV_ETOOBIG, "scan bound longer than a key may be");
    kv_iter *it = calloc(1, sizeof(*it));
    if (!it)
        return KV_ENOMEM;
    it->db = db;
    it->so = *so;
    it->timeout_ms = kv_call_timeout(db, o);
    it->stale = o && o->stale;
    it->ncur = db->nshards;
    it->cur = calloc(db->nshards, sizeof(*it->cur));
    it->bounds = malloc(so->start_len + so->end_len + so->prefix_len + 1);
    if (!it->cur || !it->bounds) {
        kv_iter_free(it);
        return KV_ENOMEM;
    }
    unsigned char *at = it->bounds;
    it->so.start = dup_bound(&at, so->start, so->start_len);
    it->so.end = dup_bound(&at, so->end, so->end_len);
    it->so.prefix = dup_bound(&at, so->prefix, so->prefix_len);
    *out = it;
    return KV_OK;
}

int kv_iter_next(kv_iter *it, const void **key, size_t *klen, const void **val,
                 size_t *vlen, uint64_t *version)
{
    if (!it)
        return KV_EINVAL;
    if (it->held) {
        free(it->held->key);
        free(it->held);
        it->held = NULL;
    }
    if (it->so.limit && it->returned >= it->so.limit)
        return KV_EOF;
    struct shard_cursor *best = NULL;
    for (uint32_t s = 0; s < it->ncur; s++) {
        int rc = cursor_fill(it, s);
        if (rc != KV_OK)
            return rc;
        struct shard_cursor *c = &it->cur[s];
        if (c->done)
            continue;
        if (!best || cmp_key(&c->page.e[c->pos], &best->page.e[best->pos]) < 0)
            best = c;
    }
    if (!best)
        return KV_EOF;
    struct scan_entry *e = malloc(sizeof(*e));
    if (!e)
        return KV_ENOMEM;
    *e = best->page.e[best->pos];
    best->page.e[best->pos].key = NULL; /* ownership moves to held */
    best->pos++;
    it->held = e;
    it->returned++;
    if (key)
        *key = e->key;
    if (klen)
        *klen = e->klen;
    if (val)
        *val = e->val;
    if (vlen)
        *vlen = e->vlen;
    if (version)
        *version = e->version;
    return KV_OK;
}

void kv_iter_free(kv_iter *it)
{
    if (!it)
        return;
    if (it->held) {
        free(it->held->key);
        free(it->held);
    }
    for (uint32_t s = 0; it->cur && s < it->ncur; s++) {
        scan_page_clear(&it->cur[s].page);
        free(it->cur[s].page.e);
        free(it->cur[s].last);
    }
    free(it->cur);
    free(it->bounds);
    free(it);
}

/* --- admin.h ------------------------------------------------------------ */

int admin_is_embedded(const kv *db)
{
    return db->embedded;
}

size_t admin_node_count(const kv *db)
{
    return db->ops->node_count(db);
}

uint32_t admin_node_id(const kv *db, size_t i)
{
    return db->ops->node_id(db, i);
}

const char *admin_node_addr(const kv *db, size_t i)
{
    return db->ops->node_addr(db, i);
}

int admin_status(kv *db, size_t i, uint32_t timeout_ms, Kv__StatusResult **out)
{
    if (i >= db->ops->node_count(db))
        return KV_EINVAL;
    return db->ops->status(db, i, timeout_ms ? timeout_ms : db->timeout_ms,
                           out);
}

void admin_status_free(Kv__StatusResult *st)
{
    if (st)
        kv__status_result__free_unpacked(st, NULL);
}

int admin_raw(kv *db, size_t i, const void *buf, size_t len,
              uint32_t timeout_ms, Kv__Envelope **out)
{
    if (i >= db->ops->node_count(db) || !db->ops->raw)
        return KV_EINVAL;
    return db->ops->raw(db, i, buf, len,
                        timeout_ms ? timeout_ms : db->timeout_ms, out);
}
