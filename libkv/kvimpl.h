/*
 * kvimpl - the inside of a kv handle, shared by api.c (argument checks,
 * scans, errors), client.c (cluster mode) and embedded.c (embedded mode).
 *
 * api.c validates every argument once (sizes, options) and then calls the
 * mode's operations; a mode never sees a key or value over the limits.
 */
#ifndef KV_KVIMPL_H
#define KV_KVIMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "kv.h"
#include "kv.pb-c.h"

/* One entry of a scan page; key and value live in one allocation. */
struct scan_entry {
    unsigned char *key;
    size_t klen;
    unsigned char *val; /* points into the key's allocation */
    size_t vlen;
    uint64_t version;
};

/* A page of one shard's scan, in key order. */
struct scan_page {
    struct scan_entry *e;
    size_t n, cap;
    bool more; /* the shard may have more entries after the last one */
};

/* Page bounds: at most this many entries or (roughly) bytes per page. */
#define SCAN_PAGE_ENTRIES 256
#define SCAN_PAGE_BYTES (1u << 20)

/* Appends a copy of an entry to P. Returns KV_OK or KV_ENOMEM. */
int scan_page_add(struct scan_page *p, const void *key, size_t klen,
                  const void *val, size_t vlen, uint64_t version);
void scan_page_clear(struct scan_page *p);

/* What a mode implements. Every call gets validated arguments. */
struct kv_ops {
    int (*get)(kv *db, uint32_t shard, const void *key, size_t klen,
               uint32_t timeout_ms, bool stale, void **val, size_t *vlen,
               uint64_t *version);
    int (*write)(kv *db, const struct engine_write *w, uint32_t timeout_ms,
                 uint64_t *version);
    /* Fetches one page of SC's shard into P (emptied first). */
    int (*scan_page)(kv *db, const struct engine_scan *sc, uint32_t timeout_ms,
                     bool stale, struct scan_page *p);
    /* Commits transaction T (T->shard its home shard; no session fields
     * set: the mode adds its own). KV_OK: VERSIONS[i] (T->nops entries)
     * as engine_stage_txn() sets them. KV_ECONFLICT: *failed the 1-based
     * index of the failed condition (0 when unknown) and *current that
     * key's version then (0: absent). */
    int (*txn)(kv *db, const struct engine_txn *t, uint32_t timeout_ms,
               uint64_t *versions, size_t *failed, uint64_t *current);
    /* Calls procedure NAME (validated) on KEY's shard, or with KLEN 0 and
     * ALL on every shard. *reply malloc()ed or NULL. */
    int (*call)(kv *db, const char *name, const void *key, size_t klen,
                bool all, const void *arg, size_t alen, uint32_t timeout_ms,
                void **reply, size_t *rlen);
    int (*status)(kv *db, size_t node, uint32_t timeout_ms,
                  Kv__StatusResult **out);
    int (*raw)(kv *db, size_t node, const void *buf, size_t len,
               uint32_t timeout_ms, Kv__Envelope **out);
    size_t (*node_count)(const kv *db);
    uint32_t (*node_id)(const kv *db, size_t i);
    const char *(*node_addr)(const kv *db, size_t i);
    void (*close)(kv *db);
};

struct kv {
    const struct kv_ops *ops;
    bool embedded;
    uint32_t nshards;
    uint64_t max_key_bytes;
    uint64_t max_value_bytes;
    uint32_t max_txn_ops;   /* ops of one transaction */
    uint64_t max_txn_bytes; /* key and value bytes of one transaction */
    uint32_t timeout_ms;    /* default per call */
    char errmsg[512];
};

/* Sets the handle's error detail (printf-style) and returns CODE. */
int kv_fail(kv *db, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Argument checks shared by every entry point (api.c): a key is 1 byte or
 * more (KV_EINVAL) and at most max_key_bytes (KV_ETOOBIG); a value at most
 * max_value_bytes and not NULL with a length. They set the errmsg. */
int kv_check_key(kv *db, const void *key, size_t klen);
int kv_check_value(kv *db, const void *val, size_t vlen);

/* The timeout of a call with options O (NULL or 0: the handle's). */
uint32_t kv_call_timeout(const kv *db, const kv_opts *o);

/* Mode constructors: fill a new handle (its base already zeroed by them). */
int embedded_open(const char *dir, const kv_open_opts *opts, kv **out,
                  char *err, size_t errlen);
int client_open(const char *target, const kv_open_opts *opts, kv **out,
                char *err, size_t errlen);

#endif
