/*
 * embedded - embedded mode: the engine in the app's process.
 *
 * All handles opened on the same directory share one engine (a registry
 * keyed by the directory's real path), because LevelDB allows one opener per
 * directory and because sharing gives every thread the same group commit:
 * a writer stages its write under the engine mutex; one writer at a time
 * flushes everything staged so far with one synced batch (outside the
 * mutex, so others keep staging), and each writer returns once the flush
 * that holds its write is durable. Reads go to LevelDB directly.
 *
 * An embedded database is one shard: there is one copy and no placement.
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "conf.h"
#include "kvimpl.h"
#include "proc.h"
#include "store.h"
#include "wire.h"

#define EMBEDDED_SHARDS 1

struct shared_engine {
    char *path; /* real path of the directory: the registry key */
    int refs;
    struct store *store;
    struct engine *engine;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool flushing;
    uint64_t staged_seq; /* sequence of the last staged write */
    uint64_t done_seq;   /* every write up to this one has its outcome */
    /* The first failed flush poisons the engine (LevelDB refuses writes
     * after a failed one, too): every write from it on gets rc_failed. */
    bool failed;
    uint64_t failed_from; /* writes after this sequence number failed */
    int rc_failed;
    uint64_t started_ms;
    struct proc_registry *procs; /* built-ins and KV_PROCEDURES plugins */
    struct shared_engine *next;
};

struct embedded {
    struct kv base;
    struct shared_engine *se;
};

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct shared_engine *registry;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void shared_free(struct shared_engine *se)
{
    proc_registry_close(se->procs);
    engine_close(se->engine);
    store_close(se->store);
    pthread_mutex_destroy(&se->mu);
    pthread_cond_destroy(&se->cv);
    free(se->path);
    free(se);
}

/* Loads the built-in procedures and the plugins named in the environment
 * (KV_PROCEDURES: .so paths separated by spaces). */
static int load_procs(struct shared_engine *se, char *err, size_t errlen)
{
    const char *env = getenv("KV_PROCEDURES");
    char *copy = strdup(env ? env : "");
    const char *paths[PROC_MAX_PLUGINS];
    size_t n = 0;
    if (!copy)
        return KV_ENOMEM;
    char *save = NULL;
    for (char *t = strtok_r(copy, " \t", &save); t;
         t = strtok_r(NULL, " \t", &save)) {
        if (n == PROC_MAX_PLUGINS) {
            snprintf(err, errlen, "KV_PROCEDURES: more than %d plugins",
                     PROC_MAX_PLUGINS);
            free(copy);
            return KV_EINVAL;
        }
        paths[n++] = t;
    }
    char perr[400] = "";
    int rc = proc_registry_open(paths, n, &se->procs, perr, sizeof(perr));
    if (rc != KV_OK)
        snprintf(err, errlen, "KV_PROCEDURES: %s", perr);
    free(copy);
    return rc;
}

/* Finds or opens the shared engine of DIR. Called with registry_mu held. */
static int shared_get(const char *dir, struct shared_engine **out, char *err,
                      size_t errlen)
{
    if (store_mkdirs(dir) != 0) {
        snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        return KV_EIO;
    }
    char real[PATH_MAX];
    if (!realpath(dir, real)) {
        snprintf(err, errlen, "cannot resolve %s: %s", dir, strerror(errno));
        return KV_EIO;
    }
    for (struct shared_engine *se = registry; se; se = se->next) {
        if (strcmp(se->path, real) == 0) {
            se->refs++;
            *out = se;
            return KV_OK;
        }
    }
    struct shared_engine *se = calloc(1, sizeof(*se));
    if (!se)
        return KV_ENOMEM;
    se->path = strdup(real);
    pthread_mutex_init(&se->mu, NULL);
    pthread_cond_init(&se->cv, NULL);
    int rc = se->path ? KV_OK : KV_ENOMEM;
    if (rc == KV_OK)
        rc = store_open(real, &se->store, err, errlen);
    if (rc == KV_OK)
        rc = engine_open(se->store, EMBEDDED_SHARDS, &se->engine);
    if (rc == KV_OK)
        rc = engine_check_meta(se->engine, "embedded", 0, err, errlen);
    if (rc == KV_OK)
        rc = load_procs(se, err, errlen);
    if (rc != KV_OK) {
        shared_free(se);
        return rc;
    }
    se->refs = 1;
    se->started_ms = now_ms();
    se->next = registry;
    registry = se;
    *out = se;
    return KV_OK;
}

static void shared_put(struct shared_engine *se)
{
    pthread_mutex_lock(&registry_mu);
    if (--se->refs == 0) {
        struct shared_engine **pp = &registry;
        while (*pp != se)
            pp = &(*pp)->next;
        *pp = se->next;
        shared_free(se);
    }
    pthread_mutex_unlock(&registry_mu);
}

static struct shared_engine *engine_of(kv *db)
{
    return ((struct embedded *)db)->se;
}

static int emb_get(kv *db, uint32_t shard, const void *key, size_t klen,
                   uint32_t timeout_ms, bool stale, void **val, size_t *vlen,
                   uint64_t *version)
{
    (void)timeout_ms;
    (void)stale;
    int rc =
        engine_get(engine_of(db)->engine, shard, key, klen, val, vlen, version);
    if (rc == KV_EIO || rc == KV_ECORRUPT)
        kv_fail(db, rc, "storage error reading a key (see the log)");
    return rc;
}

/* Locks the shared engine for staging a write. Returns KV_OK with se->mu
 * held, or the error of a poisoned engine (unlocked). */
static int stage_lock(kv *db, struct shared_engine *se)
{
    pthread_mutex_lock(&se->mu);
    if (se->failed) {
        int frc = se->rc_failed;
        pthread_mutex_unlock(&se->mu);
        return kv_fail(db, frc,
                       "an earlier write failed to reach the disk; "
                       "reopen the database");
    }
    return KV_OK;
}

/* Called with se->mu held right after a write was staged (or refused by
 * its condition: RC): waits until the flush that holds it is done (group
 * commit), unlocks, and returns the write's final result. */
static int wait_flushed(kv *db, struct shared_engine *se, int rc)
{
    /* Even a failed condition waits: it was decided on staged state. */
    uint64_t my = ++se->staged_seq;
    while (se->done_seq < my) {
        if (se->flushing) {
            pthread_cond_wait(&se->cv, &se->mu);
            continue;
        }
        se->flushing = true;
        uint64_t upto = se->staged_seq;
        struct store_batch *b = engine_commit_begin(se->engine);
        int frc = KV_OK;
        if (b) {
            pthread_mutex_unlock(&se->mu);
            frc = store_write(se->store, b, true);
            pthread_mutex_lock(&se->mu);
            engine_commit_end(se->engine, frc);
        }
        if (frc != KV_OK && !se->failed) {
            /* Everything staged so far failed, including writes staged
             * during the flush (engine_commit_end dropped them), and
             * everything after. */
            se->failed = true;
            se->failed_from = se->done_seq;
            se->rc_failed = frc;
        }
        if (se->failed)
            upto = se->staged_seq;
        se->done_seq = upto;
        se->flushing = false;
        pthread_cond_broadcast(&se->cv);
    }
    if (se->failed && my > se->failed_from)
        rc = se->rc_failed;
    pthread_mutex_unlock(&se->mu);
    if (rc == KV_EIO || rc == KV_ECORRUPT)
        return kv_fail(db, rc, "the write could not be made durable");
    return rc;
}

/* Stages W and waits until the flush holding it is done (group commit). */
static int emb_write(kv *db, const struct engine_write *w, uint32_t timeout_ms,
                     uint64_t *version)
{
    (void)timeout_ms; /* a local fsync is not abandoned half-way */
    struct shared_engine *se = engine_of(db);
    int rc = stage_lock(db, se);
    if (rc != KV_OK)
        return rc;
    rc = engine_stage(se->engine, w, version);
    if (rc != KV_OK && rc != KV_ECONFLICT && rc != KV_ENOTFOUND) {
        pthread_mutex_unlock(&se->mu);
        return kv_fail(db, rc, "cannot stage the write");
    }
    return wait_flushed(db, se, rc);
}

/* Stages transaction T as one write in the same group commit as kv_put:
 * its conditions are decided on the staged state, and it is answered once
 * the flush that holds it is durable. */
static int emb_txn(kv *db, const struct engine_txn *t, uint32_t timeout_ms,
                   uint64_t *versions, size_t *failed, uint64_t *current)
{
    (void)timeout_ms;
    struct shared_engine *se = engine_of(db);
    int rc = stage_lock(db, se);
    if (rc != KV_OK)
        return rc;
    rc = engine_stage_txn(se->engine, t, versions, failed, current);
    if (rc != KV_OK && rc != KV_ECONFLICT) {
        pthread_mutex_unlock(&se->mu);
        if (rc == ENGINE_ELOCKED) /* defensive: one shard has no intents */
            return kv_fail(db, KV_EINTERNAL,
                           "a key is locked by a cross-shard transaction");
        return kv_fail(db, rc, "cannot stage the transaction");
    }
    return wait_flushed(db, se, rc);
}

/* A call reads committed state (what other threads staged but did not
 * flush yet is not acknowledged); its effects are applied with the
 * versions it read as conditions, so a write staged since makes them
 * stale: the call then waits for the flush and runs again. */
static int emb_read(void *arg, uint32_t shard, const void *key, size_t klen,
                    void **val, size_t *vlen, uint64_t *version)
{
    struct shared_engine *se = arg;
    return engine_get(se->engine, shard, key, klen, val, vlen, version);
}

static int emb_scan(void *arg, const struct engine_scan *sc, engine_emit_fn fn,
                    void *fnarg)
{
    struct shared_engine *se = arg;
    return engine_scan(se->engine, sc, fn, fnarg, NULL);
}

#define EMB_CALL_ATTEMPTS 16

static int emb_call(kv *db, const char *name, const void *key, size_t klen,
                    bool all, const void *arg, size_t alen, uint32_t timeout_ms,
                    void **reply, size_t *rlen)
{
    (void)timeout_ms;
    struct shared_engine *se = engine_of(db);
    struct proc_reader rd = {.arg = se, .get = emb_read, .scan = emb_scan};
    struct proc_limits lim = {.max_keys = CONF_PROC_KEYS_DEFAULT,
                              .max_write_bytes = CONF_PROC_BYTES_DEFAULT,
                              .max_reply_bytes = CONF_PROC_BYTES_DEFAULT,
                              .max_key_bytes = db->max_key_bytes,
                              .max_value_bytes = db->max_value_bytes};
    for (int attempt = 0; attempt < EMB_CALL_ATTEMPTS; attempt++) {
        struct proc_result res;
        int rc = stage_lock(db, se);
        if (rc != KV_OK)
            return rc;
        /* A scan sees only committed state: with writes staged, flush. */
        rc = proc_run(se->procs, name, strlen(name), 0, EMBEDDED_SHARDS, key,
                      klen, arg, alen, &rd, &lim, &res);
        if (rc == KV_OK && res.scanned && res.nwrites &&
            engine_has_staged(se->engine))
            rc = ENGINE_ESTALE;
        if (rc == KV_OK && all) {
            struct proc_result merged;
            const void *one = res.reply;
            rc = proc_merge(se->procs, name, strlen(name), &one, &res.rlen, 1,
                            &lim, &merged);
            proc_result_free(&res);
            res = merged;
        }
        if (rc == KV_OK && res.nwrites) {
            struct engine_effect ef = {
                .txn = {.shard = 0, .ops = res.ops, .nops = res.nops}};
            uint64_t ver = 0;
            void *rep = NULL;
            size_t rl = 0;
            rc = engine_stage_effect(se->engine, &ef, &ver, &rep, &rl);
            free(rep);
            if (rc == KV_OK)
                rc = wait_flushed(db, se, rc); /* unlocks */
            else if (rc != ENGINE_ESTALE)
                pthread_mutex_unlock(&se->mu);
        } else if (rc != ENGINE_ESTALE) {
            pthread_mutex_unlock(&se->mu);
        }
        if (rc == ENGINE_ESTALE) {
            proc_result_free(&res);
            wait_flushed(db, se, KV_OK); /* unlocks */
            continue;
        }
        if (rc != KV_OK && res.msg[0])
            kv_fail(db, rc, "%s", res.msg);
        if ((rc == KV_OK || res.rlen) && res.rlen) {
            *reply = malloc(res.rlen);
            if (*reply) {
                memcpy(*reply, res.reply, res.rlen);
                *rlen = res.rlen;
            } else if (rc == KV_OK) {
                rc = kv_fail(db, KV_ENOMEM, "out of memory");
            }
        }
        proc_result_free(&res);
        return rc;
    }
    return kv_fail(db, KV_EUNAVAILABLE,
                   "the call kept meeting concurrent writes; retry");
}

struct page_fill {
    struct scan_page *p;
    size_t bytes;
};

static int fill_page(void *arg, const void *key, size_t klen, const void *val,
                     size_t vlen, uint64_t version)
{
    struct page_fill *f = arg;
    int rc = scan_page_add(f->p, key, klen, val, vlen, version);
    if (rc != KV_OK)
        return rc;
    f->bytes += klen + vlen;
    return f->bytes >= SCAN_PAGE_BYTES ? 1 : 0;
}

static int emb_scan_page(kv *db, const struct engine_scan *sc,
                         uint32_t timeout_ms, bool stale, struct scan_page *p)
{
    (void)timeout_ms;
    (void)stale;
    struct page_fill f = {.p = p};
    bool more = false;
    int rc = engine_scan(engine_of(db)->engine, sc, fill_page, &f, &more);
    if (rc == 1) { /* stopped by the page's byte bound */
        more = true;
        rc = KV_OK;
    }
    p->more = more;
    return rc;
}

static int emb_status(kv *db, size_t node, uint32_t timeout_ms,
                      Kv__StatusResult **out)
{
    (void)node;
    (void)timeout_ms;
    struct shared_engine *se = engine_of(db);
    Kv__StatusResult st = KV__STATUS_RESULT__INIT;
    Kv__ShardInfo si = KV__SHARD_INFO__INIT;
    Kv__ShardInfo *sip = &si;
    Kv__NodeInfo ni = KV__NODE_INFO__INIT;
    Kv__NodeInfo *nip = &ni;
    st.cluster = "embedded";
    st.shards = EMBEDDED_SHARDS;
    st.replicas = 1;
    st.max_key_bytes = db->max_key_bytes;
    st.max_value_bytes = db->max_value_bytes;
    ni.address = se->path;
    st.n_nodes = 1;
    st.nodes = &nip;
    si.local = true;
    pthread_mutex_lock(&se->mu);
    int rc = engine_shard_info(se->engine, 0, &si.keys, &si.applied);
    pthread_mutex_unlock(&se->mu);
    if (rc != KV_OK)
        return kv_fail(db, rc, "cannot read the shard");
    st.n_shard_info = 1;
    st.shard_info = &sip;
    st.uptime_ms = now_ms() - se->started_ms;
    /* Round-trip through the encoder so the caller frees it like a reply. */
    size_t n = kv__status_result__get_packed_size(&st);
    unsigned char *buf = malloc(n ? n : 1);
    if (!buf)
        return KV_ENOMEM;
    kv__status_result__pack(&st, buf);
    *out = kv__status_result__unpack(NULL, n, buf);
    free(buf);
    return *out ? KV_OK : KV_ENOMEM;
}

static size_t emb_node_count(const kv *db)
{
    (void)db;
    return 1;
}

static uint32_t emb_node_id(const kv *db, size_t i)
{
    (void)db;
    (void)i;
    return 0;
}

static const char *emb_node_addr(const kv *db, size_t i)
{
    (void)i;
    return ((const struct embedded *)db)->se->path;
}

static void emb_close(kv *db)
{
    struct embedded *h = (struct embedded *)db;
    shared_put(h->se);
    free(h);
}

static const struct kv_ops embedded_ops = {
    .get = emb_get,
    .write = emb_write,
    .scan_page = emb_scan_page,
    .txn = emb_txn,
    .call = emb_call,
    .status = emb_status,
    .raw = NULL,
    .node_count = emb_node_count,
    .node_id = emb_node_id,
    .node_addr = emb_node_addr,
    .close = emb_close,
};

int embedded_open(const char *dir, const kv_open_opts *opts, kv **out,
                  char *err, size_t errlen)
{
    if (!*dir) {
        snprintf(err, errlen, "embedded: needs a directory (embedded:DIR)");
        return KV_EINVAL;
    }
    struct embedded *h = calloc(1, sizeof(*h));
    if (!h)
        return KV_ENOMEM;
    pthread_mutex_lock(&registry_mu);
    int rc = shared_get(dir, &h->se, err, errlen);
    pthread_mutex_unlock(&registry_mu);
    if (rc != KV_OK) {
        free(h);
        return rc;
    }
    h->base.ops = &embedded_ops;
    h->base.embedded = true;
    h->base.nshards = EMBEDDED_SHARDS;
    h->base.max_key_bytes = CONF_KEY_LIMIT;
    h->base.max_value_bytes = 1024 * 1024;
    h->base.max_txn_ops = CONF_TXN_OPS_DEFAULT;
    h->base.max_txn_bytes = CONF_TXN_BYTES_DEFAULT;
    h->base.timeout_ms = opts && opts->timeout_ms ? opts->timeout_ms : 5000;
    *out = &h->base;
    return KV_OK;
}
