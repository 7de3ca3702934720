/*
 * proc - the procedure registry and one evaluation of a call (proc.h,
 * kvproc.h).
 *
 * A registry holds the built-ins (proc_builtin.c) and the procedures of the
 * plugins loaded with dlopen, each plugin with the BLAKE2b-256 hash of its
 * file. proc_run() evaluates a call against a reader: it gives the
 * procedure a kv_proc_ctx that records what it reads (the read set: each
 * key with the version first seen, 0 for absent), buffers what it writes
 * (the write set: the last write of each key; gets see it) and collects
 * its reply; it then turns the read set into IF_VERSION / IF_ABSENT
 * conditions and the write set into PUT / DEL ops. It never writes
 * anything itself: the caller applies the ops (engine_stage_txn) or not.
 *
 * Budgets (struct proc_limits), as counted here:
 *   - keys: each distinct key the call gets, puts or deletes counts once
 *     (when first touched); each entry a scan visits counts one more, also
 *     when the call reads the same key too.
 *   - write bytes: a running sum over every put (key + value bytes) and
 *     delete (key bytes) the call makes, so a key written twice counts
 *     twice. It also bounds the memory a call keeps: values handed out by
 *     kv_proc_get stay valid until the procedure returns, so older values
 *     of a key written again are kept until then.
 *   - reply bytes: the bytes appended to the reply.
 * Each written key must be 1..max_key_bytes bytes and each value at most
 * max_value_bytes, as for a client's put.
 *
 * Failures the call cannot recover from are remembered in the ctx: going
 * over a budget, a key on another shard, a reader that answers PROC_EWAIT,
 * ENGINE_ELOCKED or another error, and running out of memory. Every later
 * get/put/del/scan then returns that code, and the call ends with it (and
 * its message) whatever the procedure returns, so a procedure that ignores
 * the error cannot get a partial write set applied. A bad key or value
 * size and a write by a read-only procedure only fail that call: nothing
 * was buffered, and the procedure may handle the error.
 *
 * Must never: do I/O other than reading and loading plugin files, keep
 * state between calls, or let a plugin's return code escape unchecked.
 */
#include "proc.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kv.h"
#include "proc_builtin.h"
#include "shard.h"

#if defined(__GNUC__)
#define PROC_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define PROC_PRINTF(f, a)
#endif

#define PLUGIN_FILE_LIMIT                                                      \
    (1024ull * 1024 * 1024) /* larger files are refused                        \
                             */
#define LIST_HEADER 4       /* an item's length, BE */

/* ---- the registry ------------------------------------------------------- */

struct proc_def {
    char name[PROC_MAX_NAME + 1];
    size_t nlen;
    kv_proc_fn fn;
    kv_proc_merge_fn merge;
    unsigned flags;
    int plugin; /* index into the plugins, -1 for a built-in */
};

struct proc_registry {
    struct proc_def *defs;
    size_t ndefs, cap;
    struct proc_plugin *plugins; /* npaths slots, nplugins filled */
    void **handles;              /* dlopen handles, one per plugin */
    size_t nplugins;
    /* A random key for the ctx's hash index of keys, so keys chosen by a
     * client (mget's argument) cannot all collide. */
    unsigned char hash_key[crypto_shorthash_KEYBYTES];
};

/* What kv_proc_register() gets: the registry and which plugin is being
 * registered, so a name defined twice can name both definers. The first
 * error is kept: a plugin that ignores it still fails to load. */
struct kv_proc_registry {
    struct proc_registry *reg;
    int plugin; /* -1: the built-ins */
    int rc;
    char msg[256];
};

static const char *definer(const struct proc_registry *reg, int plugin)
{
    return plugin < 0 ? "the built-ins" : reg->plugins[plugin].name;
}

static bool valid_name(const char *name, size_t n)
{
    if (n == 0 || n > PROC_MAX_NAME)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

PROC_PRINTF(2, 3)
static int define_fail(kv_proc_registry *cur, const char *fmt, ...)
{
    if (cur->rc == KV_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cur->msg, sizeof cur->msg, fmt, ap);
        va_end(ap);
        cur->rc = KV_EINVAL;
    }
    return KV_EINVAL;
}

static const struct proc_def *find_def(const struct proc_registry *reg,
                                       const char *name, size_t nlen)
{
    for (size_t i = 0; i < reg->ndefs; i++)
        if (reg->defs[i].nlen == nlen &&
            memcmp(reg->defs[i].name, name, nlen) == 0)
            return &reg->defs[i];
    return NULL;
}

/* Defines NAME in the registry being built (see kvproc.h). Returns KV_OK,
 * or KV_EINVAL (bad name, no function, unknown flags, a name already
 * defined) with the reason kept for the loader, or KV_ENOMEM. */
int kv_proc_define(kv_proc_registry *cur, const char *name, kv_proc_fn fn,
                   kv_proc_merge_fn merge, unsigned flags)
{
    struct proc_registry *reg;
    const struct proc_def *old;
    char shown[PROC_SHOW_LEN];
    size_t n;

    if (cur == NULL || cur->reg == NULL)
        return KV_EINVAL;
    reg = cur->reg;
    if (name == NULL)
        return define_fail(cur, "kv_proc_define: no name");
    n = strnlen(name, PROC_MAX_NAME + 1);
    if (!valid_name(name, n))
        return define_fail(cur,
                           "bad procedure name '%s' (1 to %d bytes of "
                           "A-Z a-z 0-9 _ . -)",
                           proc_show(shown, sizeof shown, name, n),
                           PROC_MAX_NAME);
    if (fn == NULL)
        return define_fail(cur, "procedure '%s' has no function", name);
    if ((flags & ~KV_PROC_READONLY) != 0)
        return define_fail(cur, "procedure '%s': unknown flags 0x%x", name,
                           flags & ~KV_PROC_READONLY);
    old = find_def(reg, name, n);
    if (old != NULL)
        return define_fail(cur, "procedure '%s' is defined by %s and by %s",
                           name, definer(reg, old->plugin),
                           definer(reg, cur->plugin));
    if (reg->ndefs == reg->cap) {
        size_t ncap = reg->cap == 0 ? 16 : reg->cap * 2;
        struct proc_def *nd = realloc(reg->defs, ncap * sizeof *nd);
        if (nd == NULL) {
            define_fail(cur, "out of memory");
            cur->rc = KV_ENOMEM;
            return KV_ENOMEM;
        }
        reg->defs = nd;
        reg->cap = ncap;
    }
    memcpy(reg->defs[reg->ndefs].name, name, n);
    reg->defs[reg->ndefs].name[n] = '\0';
    reg->defs[reg->ndefs].nlen = n;
    reg->defs[reg->ndefs].fn = fn;
    reg->defs[reg->ndefs].merge = merge;
    reg->defs[reg->ndefs].flags = flags;
    reg->defs[reg->ndefs].plugin = cur->plugin;
    reg->ndefs++;
    return KV_OK;
}

PROC_PRINTF(3, 4)
static int open_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return KV_EINVAL;
}

/* BLAKE2b-256 of the file at PATH into OUT. */
static int hash_file(const char *path, unsigned char *out, char *err,
                     size_t errlen)
{
    crypto_generichash_state st;
    unsigned char *buf = NULL;
    uint64_t total = 0;
    struct stat sb;
    int rc = KV_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        open_fail(err, errlen, "%s: %s", path, strerror(errno));
        return KV_EIO;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        rc = open_fail(err, errlen, "%s: not a regular file", path);
        goto close_fd;
    }
    buf = malloc(65536);
    if (buf == NULL) {
        open_fail(err, errlen, "%s: out of memory", path);
        rc = KV_ENOMEM;
        goto close_fd;
    }
    crypto_generichash_init(&st, NULL, 0, PROC_HASH_LEN);
    for (;;) {
        ssize_t r = read(fd, buf, 65536);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            open_fail(err, errlen, "%s: %s", path, strerror(errno));
            rc = KV_EIO;
            goto free_buf;
        }
        if (r == 0)
            break;
        total += (uint64_t)r;
        if (total > PLUGIN_FILE_LIMIT) {
            rc = open_fail(err, errlen, "%s: larger than 1 GiB", path);
            goto free_buf;
        }
        crypto_generichash_update(&st, buf, (unsigned long long)r);
    }
    crypto_generichash_final(&st, out, PROC_HASH_LEN);
free_buf:
    free(buf);
close_fd:
    close(fd);
    return rc;
}

/* Loads PATH as plugin I of REG: hash, dlopen, kv_proc_register. On error
 * ERR says why; what was taken stays in REG for proc_registry_close. */
static int load_plugin(struct proc_registry *reg, size_t i, const char *path,
                       char *err, size_t errlen)
{
    struct proc_plugin *pl = &reg->plugins[i];
    kv_proc_registry cur = {.reg = reg, .plugin = (int)i, .rc = KV_OK};
    int (*reg_fn)(kv_proc_registry *);
    const char *base, *why;
    char *open_path = NULL;
    void *h, *sym;
    size_t blen;
    int rc;

    if (path == NULL || path[0] == '\0')
        return open_fail(err, errlen, "plugin %zu: empty path", i + 1);
    base = strrchr(path, '/');
    base = base != NULL ? base + 1 : path;
    blen = strlen(base);
    if (blen == 0 || blen > PROC_MAX_NAME)
        return open_fail(err, errlen,
                         "%s: the file name must be 1 to %d bytes long", path,
                         PROC_MAX_NAME);
    rc = hash_file(path, pl->hash, err, errlen);
    if (rc != KV_OK)
        return rc;
    memcpy(pl->name, base, blen);
    pl->name[blen] = '\0';
    /* A name without '/' would make dlopen search the library path. */
    if (strchr(path, '/') == NULL) {
        open_path = malloc(strlen(path) + 3);
        if (open_path == NULL) {
            open_fail(err, errlen, "%s: out of memory", path);
            return KV_ENOMEM;
        }
        memcpy(open_path, "./", 2);
        memcpy(open_path + 2, path, strlen(path) + 1);
    }
    dlerror();
    h = dlopen(open_path != NULL ? open_path : path, RTLD_NOW | RTLD_LOCAL);
    free(open_path);
    if (h == NULL) {
        why = dlerror();
        return open_fail(err, errlen, "%s: cannot load: %s", path,
                         why != NULL ? why : "unknown dlopen error");
    }
    reg->handles[i] = h;
    reg->nplugins = i + 1;
    dlerror();
    sym = dlsym(h, "kv_proc_register");
    if (sym == NULL) {
        why = dlerror();
        return open_fail(err, errlen, "%s: no kv_proc_register (%s)", path,
                         why != NULL ? why : "the symbol is NULL");
    }
    /* POSIX guarantees a function's address survives the void * trip. */
    memcpy(&reg_fn, &sym, sizeof reg_fn);
    rc = reg_fn(&cur);
    if (cur.rc != KV_OK) {
        open_fail(err, errlen, "%s: %s", path, cur.msg);
        return cur.rc;
    }
    if (rc != KV_OK)
        return open_fail(err, errlen, "%s: kv_proc_register returned %d (%s)",
                         path, rc, kv_strerror(rc));
    return KV_OK;
}

/* Makes a registry with the built-ins and the plugins at PATHS; see proc.h.
 * Returns KV_OK with *OUT for proc_registry_close(), else KV_EINVAL (a bad
 * plugin), KV_EIO (a file that cannot be read) or KV_ENOMEM, with ERR
 * naming the plugin and the reason; nothing is left loaded then. */
int proc_registry_open(const char *const *paths, size_t npaths,
                       struct proc_registry **out, char *err, size_t errlen)
{
    struct proc_registry *reg = NULL;
    kv_proc_registry cur = {.plugin = -1, .rc = KV_OK};
    int rc;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (out == NULL || (paths == NULL && npaths > 0))
        return open_fail(err, errlen, "proc_registry_open: bad arguments");
    if (sodium_init() < 0) {
        open_fail(err, errlen, "libsodium failed to initialise");
        return KV_EIO;
    }
    reg = calloc(1, sizeof *reg);
    if (reg == NULL)
        goto nomem;
    randombytes_buf(reg->hash_key, sizeof reg->hash_key);
    if (npaths > 0) {
        reg->plugins = calloc(npaths, sizeof *reg->plugins);
        reg->handles = calloc(npaths, sizeof *reg->handles);
        if (reg->plugins == NULL || reg->handles == NULL)
            goto nomem;
    }
    cur.reg = reg;
    rc = proc_builtin_register(&cur);
    if (cur.rc != KV_OK || rc != KV_OK) {
        rc = cur.rc != KV_OK ? cur.rc : rc;
        open_fail(err, errlen, "built-in procedures: %s",
                  cur.rc != KV_OK ? cur.msg : kv_strerror(rc));
        goto fail;
    }
    for (size_t i = 0; i < npaths; i++) {
        rc = load_plugin(reg, i, paths[i], err, errlen);
        if (rc != KV_OK)
            goto fail;
    }
    *out = reg;
    return KV_OK;
nomem:
    open_fail(err, errlen, "out of memory");
    rc = KV_ENOMEM;
fail:
    proc_registry_close(reg);
    return rc;
}

/* Unloads the plugins (last loaded first) and frees REG. NULL is a no-op. */
void proc_registry_close(struct proc_registry *reg)
{
    if (reg == NULL)
        return;
    for (size_t i = reg->nplugins; i > 0; i--)
        if (reg->handles[i - 1] != NULL)
            dlclose(reg->handles[i - 1]);
    free(reg->handles);
    free(reg->plugins);
    free(reg->defs);
    free(reg);
}

/* The plugins loaded, in the order of the paths; owned by REG. */
const struct proc_plugin *proc_plugins(const struct proc_registry *reg,
                                       size_t *n)
{
    if (reg == NULL) {
        if (n != NULL)
            *n = 0;
        return NULL;
    }
    if (n != NULL)
        *n = reg->nplugins;
    return reg->plugins;
}

/* Whether NAME is defined; see proc.h. Either out pointer may be NULL. */
bool proc_lookup(const struct proc_registry *reg, const char *name, size_t nlen,
                 bool *readonly, int *plugin)
{
    const struct proc_def *d;

    if (reg == NULL || (name == NULL && nlen > 0))
        return false;
    d = find_def(reg, name, nlen);
    if (d == NULL)
        return false;
    if (readonly != NULL)
        *readonly = (d->flags & KV_PROC_READONLY) != 0;
    if (plugin != NULL)
        *plugin = d->plugin;
    return true;
}

/* ---- the call context --------------------------------------------------- */

/* One key the call touched. */
struct entry {
    unsigned char *key;
    size_t klen;
    uint64_t hash;
    const unsigned char *val; /* what the call sees now (NULL: absent) */
    size_t vlen;
    uint64_t version; /* read: the version seen, 0 for absent */
    bool read;        /* in the read set: becomes a condition */
    bool written;     /* in the write set: becomes a PUT (val) or DEL */
};

struct kv_proc_ctx {
    const struct proc_def *def;
    const unsigned char *hash_key; /* the registry's */
    bool merging; /* proc_merge: only reply, error and list helpers */
    uint32_t shard, nshards;
    const void *key;
    size_t klen;
    const struct proc_reader *rd;
    const struct proc_limits *lim;
    /* the keys touched, in first-touch order, and a hash index on them */
    struct entry *ents;
    size_t nents, capents;
    size_t *slots; /* 1 + index into ents, 0 = empty; nslots a power of 2 */
    size_t nslots;
    /* value buffers handed out or buffered, freed when the call ends */
    void **bufs;
    size_t nbufs, capbufs;
    uint64_t keys_used;
    uint64_t write_bytes;
    unsigned char *reply;
    size_t rlen, rcap;
    bool scanned;
    int failed; /* a remembered failure (see the top of the file) */
    char fail_msg[sizeof(((struct proc_result *)0)->msg)];
    bool has_msg; /* kv_proc_error was called */
    char msg[sizeof(((struct proc_result *)0)->msg)];
};

static const char *pname(const kv_proc_ctx *ctx)
{
    return ctx->def->name;
}

/* Remembers the first failure of the call and returns it. */
PROC_PRINTF(3, 4)
static int ctx_fail(kv_proc_ctx *ctx, int code, const char *fmt, ...)
{
    if (ctx->failed == KV_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->fail_msg, sizeof ctx->fail_msg, fmt, ap);
        va_end(ap);
        ctx->failed = code;
    }
    return ctx->failed;
}

static int ctx_nomem(kv_proc_ctx *ctx)
{
    return ctx_fail(ctx, KV_ENOMEM, "procedure %s: out of memory", pname(ctx));
}

static uint64_t hash_key(const kv_proc_ctx *ctx, const void *key, size_t klen)
{
    unsigned char out[crypto_shorthash_BYTES];
    uint64_t h = 0;

    crypto_shorthash(out, key, klen, ctx->hash_key);
    for (size_t i = 0; i < sizeof out; i++)
        h = h << 8 | out[i];
    return h;
}

static struct entry *find_entry(kv_proc_ctx *ctx, const void *key, size_t klen,
                                uint64_t h)
{
    if (ctx->nslots == 0)
        return NULL;
    for (size_t i = (size_t)h & (ctx->nslots - 1), probes = 0;
         probes < ctx->nslots; i = (i + 1) & (ctx->nslots - 1), probes++) {
        struct entry *e;
        if (ctx->slots[i] == 0)
            return NULL;
        e = &ctx->ents[ctx->slots[i] - 1];
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
            return e;
    }
    return NULL;
}

static void put_slot(size_t *slots, size_t nslots, uint64_t h, size_t idx)
{
    size_t i = (size_t)h & (nslots - 1);
    while (slots[i] != 0)
        i = (i + 1) & (nslots - 1);
    slots[i] = idx + 1;
}

/* Adds KEY (not yet present) as a new entry; the caller checked the keys
 * budget. Returns the entry or NULL (out of memory, remembered). */
static struct entry *add_entry(kv_proc_ctx *ctx, const void *key, size_t klen,
                               uint64_t h)
{
    struct entry *e;

    if (ctx->nents == ctx->capents) {
        size_t ncap = ctx->capents == 0 ? 8 : ctx->capents * 2;
        struct entry *ne = realloc(ctx->ents, ncap * sizeof *ne);
        if (ne == NULL)
            goto nomem;
        ctx->ents = ne;
        ctx->capents = ncap;
    }
    if ((ctx->nents + 1) * 2 > ctx->nslots) {
        size_t ns = ctx->nslots == 0 ? 16 : ctx->nslots * 2;
        size_t *sl = calloc(ns, sizeof *sl);
        if (sl == NULL)
            goto nomem;
        for (size_t i = 0; i < ctx->nents; i++)
            put_slot(sl, ns, ctx->ents[i].hash, i);
        free(ctx->slots);
        ctx->slots = sl;
        ctx->nslots = ns;
    }
    e = &ctx->ents[ctx->nents];
    memset(e, 0, sizeof *e);
    e->key = malloc(klen);
    if (e->key == NULL)
        goto nomem;
    memcpy(e->key, key, klen);
    e->klen = klen;
    e->hash = h;
    put_slot(ctx->slots, ctx->nslots, h, ctx->nents);
    ctx->nents++;
    return e;
nomem:
    ctx_nomem(ctx);
    return NULL;
}

/* Keeps BUF until the call ends. On failure frees it (remembered). */
static int keep_buf(kv_proc_ctx *ctx, void *buf)
{
    if (buf == NULL)
        return KV_OK;
    if (ctx->nbufs == ctx->capbufs) {
        size_t ncap = ctx->capbufs == 0 ? 8 : ctx->capbufs * 2;
        void **nb = realloc(ctx->bufs, ncap * sizeof *nb);
        if (nb == NULL) {
            free(buf);
            return ctx_nomem(ctx);
        }
        ctx->bufs = nb;
        ctx->capbufs = ncap;
    }
    ctx->bufs[ctx->nbufs++] = buf;
    return KV_OK;
}

static void ctx_release(kv_proc_ctx *ctx)
{
    for (size_t i = 0; i < ctx->nents; i++)
        free(ctx->ents[i].key);
    free(ctx->ents);
    free(ctx->slots);
    for (size_t i = 0; i < ctx->nbufs; i++)
        free(ctx->bufs[i]);
    free(ctx->bufs);
    free(ctx->reply);
}

static int over_keys(kv_proc_ctx *ctx)
{
    return ctx_fail(ctx, KV_EBUDGET,
                    "procedure %s touched more than %" PRIu64
                    " keys (the keys budget, cluster.conf proc_max_keys = "
                    "%" PRIu64 ")",
                    pname(ctx), ctx->lim->max_keys, ctx->lim->max_keys);
}

/* Checks KEY for a get, put or del: 1..max_key_bytes bytes (KV_EINVAL,
 * KV_ETOOBIG, not remembered) and on the call's shard (KV_EINVAL,
 * remembered). */
static int check_key(kv_proc_ctx *ctx, const char *what, const void *key,
                     size_t klen)
{
    char shown[PROC_SHOW_LEN];
    uint32_t s;

    if (key == NULL || klen == 0) {
        snprintf(ctx->msg, sizeof ctx->msg, "procedure %s: %s of an empty key",
                 pname(ctx), what);
        ctx->has_msg = true;
        return KV_EINVAL;
    }
    if (klen > ctx->lim->max_key_bytes) {
        snprintf(ctx->msg, sizeof ctx->msg,
                 "procedure %s: %s of a %zu-byte key, over max_key_bytes = "
                 "%" PRIu64,
                 pname(ctx), what, klen, ctx->lim->max_key_bytes);
        ctx->has_msg = true;
        return KV_ETOOBIG;
    }
    s = shard_of(key, klen, ctx->nshards);
    if (s != ctx->shard)
        return ctx_fail(ctx, KV_EINVAL,
                        "procedure %s: key '%s' is on shard %" PRIu32
                        ", not on the call's shard %" PRIu32
                        " (keep the keys of one call under one hash tag, "
                        "such as {user42}.visits)",
                        pname(ctx), proc_show(shown, sizeof shown, key, klen),
                        s, ctx->shard);
    return KV_OK;
}

/* The key the call was made with (empty for a call on every shard). */
const void *kv_proc_key(kv_proc_ctx *ctx, size_t *klen)
{
    if (ctx == NULL || ctx->merging || ctx->key == NULL) {
        if (klen != NULL)
            *klen = 0;
        return "";
    }
    if (klen != NULL)
        *klen = ctx->klen;
    return ctx->key;
}

/* The call's shard (0 in a merge). */
uint32_t kv_proc_shard(kv_proc_ctx *ctx)
{
    return ctx == NULL ? 0 : ctx->shard;
}

/* A reader's error code as the call's failure: the codes the caller
 * handles (PROC_EWAIT, ENGINE_ELOCKED) and kv codes as they are, anything
 * else (a reader bug) as KV_EINTERNAL. */
static int reader_code(int rc)
{
    if (rc == PROC_EWAIT || rc == ENGINE_ELOCKED || (rc < 0 && rc >= KV_ERANGE))
        return rc;
    return KV_EINTERNAL;
}

static const char *reader_why(int rc)
{
    if (rc == PROC_EWAIT)
        return "must wait for a write in flight";
    if (rc == ENGINE_ELOCKED)
        return "locked by a transaction";
    return kv_strerror(reader_code(rc));
}

/* Reads KEY: the call's own write if any, else through the reader (the
 * first read of a key joins the read set). See kvproc.h. */
int kv_proc_get(kv_proc_ctx *ctx, const void *key, size_t klen,
                const void **val, size_t *vlen, uint64_t *version)
{
    struct entry *e;
    void *v = NULL;
    size_t n = 0;
    uint64_t ver = 0;
    uint64_t h;
    int rc;

    if (ctx == NULL || ctx->merging || val == NULL || vlen == NULL)
        return KV_EINVAL;
    if (ctx->failed != KV_OK)
        return ctx->failed;
    rc = check_key(ctx, "get", key, klen);
    if (rc != KV_OK)
        return rc;
    h = hash_key(ctx, key, klen);
    e = find_entry(ctx, key, klen, h);
    if (e == NULL) {
        char shown[PROC_SHOW_LEN];
        if (ctx->keys_used >= ctx->lim->max_keys)
            return over_keys(ctx);
        rc = ctx->rd->get(ctx->rd->arg, ctx->shard, key, klen, &v, &n, &ver);
        if (rc == KV_OK && ver == 0) {
            free(v);
            return ctx_fail(ctx, KV_EINTERNAL,
                            "procedure %s: the reader gave '%s' version 0",
                            pname(ctx),
                            proc_show(shown, sizeof shown, key, klen));
        }
        if (rc != KV_OK && rc != KV_ENOTFOUND) {
            return ctx_fail(ctx, reader_code(rc),
                            "procedure %s: reading '%s': %s", pname(ctx),
                            proc_show(shown, sizeof shown, key, klen),
                            reader_why(rc));
        }
        if (rc == KV_OK && keep_buf(ctx, v) != KV_OK)
            return ctx->failed;
        e = add_entry(ctx, key, klen, h);
        if (e == NULL)
            return ctx->failed;
        ctx->keys_used++;
        e->read = true;
        e->version = rc == KV_OK ? ver : 0;
        e->val =
            rc == KV_OK ? (v != NULL ? v : (const unsigned char *)"") : NULL;
        e->vlen = rc == KV_OK ? n : 0;
    }
    if (e->val == NULL)
        return KV_ENOTFOUND;
    *val = e->val;
    *vlen = e->vlen;
    if (version != NULL) /* a value the call wrote has no version yet */
        *version = e->written ? 0 : e->version;
    return KV_OK;
}

/* Buffers a put (VAL non-NULL) or a delete of KEY. */
static int buffer_write(kv_proc_ctx *ctx, const char *what, const void *key,
                        size_t klen, const void *val, size_t vlen, bool del)
{
    struct entry *e;
    unsigned char *copy = NULL;
    uint64_t h, cost;
    int rc;

    if (ctx == NULL || ctx->merging || (!del && val == NULL && vlen > 0))
        return KV_EINVAL;
    if (ctx->failed != KV_OK)
        return ctx->failed;
    if (ctx->def->flags & KV_PROC_READONLY) {
        snprintf(ctx->msg, sizeof ctx->msg, "procedure %s is read-only",
                 pname(ctx));
        ctx->has_msg = true;
        return KV_EINVAL;
    }
    rc = check_key(ctx, what, key, klen);
    if (rc != KV_OK)
        return rc;
    if (!del && vlen > ctx->lim->max_value_bytes) {
        snprintf(ctx->msg, sizeof ctx->msg,
                 "procedure %s: put of a %zu-byte value, over "
                 "max_value_bytes = %" PRIu64,
                 pname(ctx), vlen, ctx->lim->max_value_bytes);
        ctx->has_msg = true;
        return KV_ETOOBIG;
    }
    h = hash_key(ctx, key, klen);
    e = find_entry(ctx, key, klen, h);
    if (e == NULL && ctx->keys_used >= ctx->lim->max_keys)
        return over_keys(ctx);
    cost = (uint64_t)klen + (del ? 0 : (uint64_t)vlen);
    if (ctx->write_bytes + cost > ctx->lim->max_write_bytes)
        return ctx_fail(ctx, KV_EBUDGET,
                        "procedure %s wrote more than %" PRIu64
                        " bytes of keys and values (the write budget, "
                        "cluster.conf proc_max_write_bytes = %" PRIu64 ")",
                        pname(ctx), ctx->lim->max_write_bytes,
                        ctx->lim->max_write_bytes);
    if (!del && vlen > 0) {
        copy = malloc(vlen);
        if (copy == NULL)
            return ctx_nomem(ctx);
        memcpy(copy, val, vlen);
        if (keep_buf(ctx, copy) != KV_OK)
            return ctx->failed;
    }
    if (e == NULL) {
        e = add_entry(ctx, key, klen, h);
        if (e == NULL)
            return ctx->failed;
        ctx->keys_used++;
    }
    ctx->write_bytes += cost;
    e->written = true;
    e->val = del ? NULL : (copy != NULL ? copy : (const unsigned char *)"");
    e->vlen = del ? 0 : vlen;
    return KV_OK;
}

/* Buffers a write of KEY; see kvproc.h. */
int kv_proc_put(kv_proc_ctx *ctx, const void *key, size_t klen, const void *val,
                size_t vlen)
{
    return buffer_write(ctx, "put", key, klen, val, vlen, false);
}

/* Buffers a delete of KEY; see kvproc.h. */
int kv_proc_del(kv_proc_ctx *ctx, const void *key, size_t klen)
{
    return buffer_write(ctx, "del", key, klen, NULL, 0, true);
}

struct scan_state {
    kv_proc_ctx *ctx;
    kv_proc_scan_fn fn;
    void *arg;
    bool over_budget; /* stopped: one entry past the keys budget */
    bool stopped;     /* stopped by FN, which returned user_rc */
    int user_rc;
};

static int scan_emit(void *arg, const void *key, size_t klen, const void *val,
                     size_t vlen, uint64_t version)
{
    struct scan_state *s = arg;
    (void)version;
    if (s->ctx->keys_used >= s->ctx->lim->max_keys) {
        s->over_budget = true;
        return KV_EBUDGET;
    }
    s->ctx->keys_used++;
    s->user_rc = s->fn(s->arg, key, klen, val != NULL ? val : "", vlen);
    if (s->user_rc != 0) {
        s->stopped = true;
        return s->user_rc;
    }
    return 0;
}

/* Visits the call's shard's keys with PREFIX; see kvproc.h. Returns KV_OK,
 * FN's non-zero result, or a remembered failure (EBUDGET past the keys
 * budget, the reader's PROC_EWAIT or error). */
int kv_proc_scan(kv_proc_ctx *ctx, const void *prefix, size_t plen,
                 uint64_t limit, kv_proc_scan_fn fn, void *arg)
{
    struct scan_state s = {.ctx = ctx, .fn = fn, .arg = arg};
    struct engine_scan sc;
    uint64_t room;
    int rc;

    if (ctx == NULL || ctx->merging || fn == NULL ||
        (prefix == NULL && plen > 0))
        return KV_EINVAL;
    if (ctx->failed != KV_OK)
        return ctx->failed;
    if (ctx->rd->scan == NULL)
        return ctx_fail(ctx, KV_EINVAL, "procedure %s: this reader cannot scan",
                        pname(ctx));
    ctx->scanned = true;
    room = ctx->lim->max_keys - ctx->keys_used;
    memset(&sc, 0, sizeof sc);
    sc.shard = ctx->shard;
    sc.prefix = plen > 0 ? prefix : NULL;
    sc.prefix_len = plen;
    /* One entry past the budget tells a full budget from a larger shard. */
    if (limit == 0 || limit > room)
        sc.limit = room == UINT64_MAX ? 0 : room + 1;
    else
        sc.limit = limit;
    rc = ctx->rd->scan(ctx->rd->arg, &sc, scan_emit, &s);
    if (s.over_budget)
        return over_keys(ctx);
    if (s.stopped)
        return s.user_rc;
    if (rc != KV_OK)
        return ctx_fail(ctx, reader_code(rc), "procedure %s: scanning: %s",
                        pname(ctx), reader_why(rc));
    return KV_OK;
}

static int over_reply(kv_proc_ctx *ctx)
{
    return ctx_fail(ctx, KV_EBUDGET,
                    "procedure %s: reply over %" PRIu64
                    " bytes (the reply budget, cluster.conf "
                    "proc_max_reply_bytes = %" PRIu64 ")",
                    pname(ctx), ctx->lim->max_reply_bytes,
                    ctx->lim->max_reply_bytes);
}

/* Appends DATA to the reply, within the reply budget (remembered). */
int kv_proc_reply(kv_proc_ctx *ctx, const void *data, size_t len)
{
    if (ctx == NULL || (data == NULL && len > 0))
        return KV_EINVAL;
    if (len == 0)
        return KV_OK;
    if (len > ctx->lim->max_reply_bytes - ctx->rlen)
        return over_reply(ctx);
    if (ctx->rlen + len > ctx->rcap) {
        size_t ncap = ctx->rcap == 0 ? 256 : ctx->rcap;
        unsigned char *nr;
        while (ncap < ctx->rlen + len)
            ncap = ncap > SIZE_MAX / 2 ? ctx->rlen + len : ncap * 2;
        nr = realloc(ctx->reply, ncap);
        if (nr == NULL)
            return ctx_nomem(ctx);
        ctx->reply = nr;
        ctx->rcap = ncap;
    }
    memcpy(ctx->reply + ctx->rlen, data, len);
    ctx->rlen += len;
    return KV_OK;
}

/* Sets the message of the call's error; returns CODE. */
int kv_proc_error(kv_proc_ctx *ctx, int code, const char *fmt, ...)
{
    if (ctx == NULL)
        return code;
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->msg, sizeof ctx->msg, fmt, ap);
        va_end(ap);
        ctx->has_msg = true;
    }
    return code;
}

/* Takes the next list item; see kvproc.h. *P and *LEFT move only on
 * KV_OK. */
int kv_list_next(const void **p, size_t *left, const void **item, size_t *ilen)
{
    const unsigned char *b;
    uint32_t n;

    if (p == NULL || left == NULL || item == NULL || ilen == NULL)
        return KV_EINVAL;
    if (*left == 0)
        return KV_EOF;
    b = *p;
    if (b == NULL || *left < LIST_HEADER)
        return KV_EINVAL;
    n = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 |
        (uint32_t)b[3];
    if (n == KV_LIST_MISSING) {
        *item = NULL;
        *ilen = 0;
        *p = b + LIST_HEADER;
        *left -= LIST_HEADER;
        return KV_OK;
    }
    if (n > *left - LIST_HEADER)
        return KV_EINVAL;
    *item = b + LIST_HEADER;
    *ilen = n;
    *p = b + LIST_HEADER + n;
    *left -= LIST_HEADER + (size_t)n;
    return KV_OK;
}

/* Appends one list item (ITEM NULL: missing) to the reply. */
int kv_proc_reply_item(kv_proc_ctx *ctx, const void *item, size_t ilen)
{
    unsigned char hdr[LIST_HEADER];
    uint32_t n;
    size_t before;
    int rc;

    if (ctx == NULL || (item == NULL && ilen > 0) ||
        (uint64_t)ilen >= KV_LIST_MISSING)
        return KV_EINVAL;
    n = item == NULL ? KV_LIST_MISSING : (uint32_t)ilen;
    hdr[0] = (unsigned char)(n >> 24);
    hdr[1] = (unsigned char)(n >> 16);
    hdr[2] = (unsigned char)(n >> 8);
    hdr[3] = (unsigned char)n;
    /* all or nothing: the header alone must not end the reply */
    if ((uint64_t)ilen + LIST_HEADER > ctx->lim->max_reply_bytes - ctx->rlen)
        return over_reply(ctx);
    before = ctx->rlen;
    rc = kv_proc_reply(ctx, hdr, sizeof hdr);
    if (rc == KV_OK && ilen > 0)
        rc = kv_proc_reply(ctx, item, ilen);
    if (rc != KV_OK)
        ctx->rlen = before;
    return rc;
}

/* ---- running and merging ------------------------------------------------ */

static bool known_code(int rc)
{
    return rc < 0 && rc >= KV_ERANGE;
}

/* Moves the ctx's reply into RESULT (no copy). */
static void take_reply(kv_proc_ctx *ctx, struct proc_result *result)
{
    result->reply = ctx->reply;
    result->rlen = ctx->rlen;
    ctx->reply = NULL;
    ctx->rlen = ctx->rcap = 0;
}

/* Sets RESULT's code and message from the procedure's return RC. */
static int settle(kv_proc_ctx *ctx, int rc, struct proc_result *result)
{
    if (ctx->failed != KV_OK) {
        result->code = ctx->failed;
        snprintf(result->msg, sizeof result->msg, "%s", ctx->fail_msg);
    } else if (rc == KV_OK) {
        result->code = KV_OK;
    } else if (known_code(rc)) {
        result->code = rc;
        if (ctx->has_msg)
            snprintf(result->msg, sizeof result->msg, "%s", ctx->msg);
        else
            snprintf(result->msg, sizeof result->msg, "procedure %s failed: %s",
                     pname(ctx), kv_strerror(rc));
    } else {
        result->code = KV_EPROC;
        snprintf(result->msg, sizeof result->msg,
                 "procedure %s returned %d, which is not a kv error code",
                 pname(ctx), rc);
    }
    return result->code;
}

/* Packs the read set's conditions and the write set's ops into one block
 * that RESULT owns. */
static int build_ops(kv_proc_ctx *ctx, struct proc_result *result)
{
    size_t nreads = 0, nwrites = 0, bytes = 0, nops;
    struct engine_txn_op *ops;
    unsigned char *mem, *at;

    for (size_t i = 0; i < ctx->nents; i++) {
        const struct entry *e = &ctx->ents[i];
        if (e->read) {
            nreads++;
            bytes += e->klen;
        }
        if (e->written) {
            nwrites++;
            bytes += e->klen + (e->val != NULL ? e->vlen : 0);
        }
    }
    nops = nreads + nwrites;
    if (nops == 0)
        return KV_OK;
    mem = malloc(nops * sizeof *ops + bytes);
    if (mem == NULL)
        return KV_ENOMEM;
    ops = (struct engine_txn_op *)(void *)mem;
    at = mem + nops * sizeof *ops;
    for (size_t pass = 0, k = 0; pass < 2; pass++)
        for (size_t i = 0; i < ctx->nents; i++) {
            const struct entry *e = &ctx->ents[i];
            struct engine_txn_op *op = &ops[k];
            if (pass == 0 ? !e->read : !e->written)
                continue;
            memset(op, 0, sizeof *op);
            memcpy(at, e->key, e->klen);
            op->key = at;
            op->klen = e->klen;
            at += e->klen;
            if (pass == 0) {
                op->kind = e->version > 0 ? ENGINE_TXN_IF_VERSION
                                          : ENGINE_TXN_IF_ABSENT;
                op->version = e->version;
            } else if (e->val == NULL) {
                op->kind = ENGINE_TXN_DEL;
            } else {
                op->kind = ENGINE_TXN_PUT;
                if (e->vlen > 0)
                    memcpy(at, e->val, e->vlen);
                op->val = at;
                op->vlen = e->vlen;
                at += e->vlen;
            }
            k++;
        }
    result->ops = ops;
    result->nops = nops;
    result->nwrites = nwrites;
    result->mem = mem;
    return KV_OK;
}

static void result_reset(struct proc_result *result)
{
    memset(result, 0, sizeof *result);
}

static int result_fail(struct proc_result *result, int code, const char *what,
                       const char *name, size_t nlen)
{
    char shown[PROC_SHOW_LEN];
    result->code = code;
    snprintf(result->msg, sizeof result->msg, "%s '%s'", what,
             proc_show(shown, sizeof shown, name, nlen));
    return code;
}

static bool limits_ok(const struct proc_limits *lim)
{
    return lim != NULL && lim->max_keys > 0 && lim->max_write_bytes > 0 &&
           lim->max_reply_bytes > 0 && lim->max_key_bytes > 0;
}

/* Runs NAME on SHARD with ARG; see proc.h. RESULT is always filled and
 * must be freed with proc_result_free(). */
int proc_run(const struct proc_registry *reg, const char *name, size_t nlen,
             uint32_t shard, uint32_t nshards, const void *key, size_t klen,
             const void *arg, size_t alen, const struct proc_reader *rd,
             const struct proc_limits *lim, struct proc_result *result)
{
    const struct proc_def *def;
    kv_proc_ctx ctx;
    int rc;

    if (result == NULL)
        return KV_EINVAL;
    result_reset(result);
    if (reg == NULL || (name == NULL && nlen > 0) || rd == NULL ||
        rd->get == NULL || !limits_ok(lim) || nshards == 0 ||
        shard >= nshards || (key == NULL && klen > 0) ||
        (arg == NULL && alen > 0))
        return result_fail(result, KV_EINVAL, "bad call of procedure", name,
                           name != NULL ? nlen : 0);
    def = find_def(reg, name, nlen);
    if (def == NULL)
        return result_fail(result, KV_ENOPROC, "no procedure", name, nlen);
    result->readonly = (def->flags & KV_PROC_READONLY) != 0;
    if (klen == 0 && !result->readonly) {
        result->code = KV_EINVAL;
        snprintf(result->msg, sizeof result->msg,
                 "procedure %s writes: it needs a key and cannot run on "
                 "every shard",
                 def->name);
        return result->code;
    }
    if (klen > 0 && shard_of(key, klen, nshards) != shard) {
        result->code = KV_EINVAL;
        snprintf(result->msg, sizeof result->msg,
                 "procedure %s: the call's key is not on shard %" PRIu32,
                 def->name, shard);
        return result->code;
    }
    memset(&ctx, 0, sizeof ctx);
    ctx.def = def;
    ctx.hash_key = reg->hash_key;
    ctx.shard = shard;
    ctx.nshards = nshards;
    ctx.key = klen > 0 ? key : NULL;
    ctx.klen = klen;
    ctx.rd = rd;
    ctx.lim = lim;
    rc = def->fn(&ctx, alen > 0 ? arg : "", alen);
    result->scanned = ctx.scanned;
    rc = settle(&ctx, rc, result);
    if (rc == KV_OK) {
        rc = build_ops(&ctx, result);
        if (rc != KV_OK) {
            result->code = rc;
            snprintf(result->msg, sizeof result->msg,
                     "procedure %s: out of memory", def->name);
        }
    }
    take_reply(&ctx, result);
    ctx_release(&ctx);
    return result->code;
}

/* Merges per-shard REPLIES of NAME into RESULT->reply; see proc.h. */
int proc_merge(const struct proc_registry *reg, const char *name, size_t nlen,
               const void *const *replies, const size_t *lens, size_t n,
               const struct proc_limits *lim, struct proc_result *result)
{
    const struct proc_def *def;
    kv_proc_ctx ctx;
    int rc = KV_OK;

    if (result == NULL)
        return KV_EINVAL;
    result_reset(result);
    if (reg == NULL || (name == NULL && nlen > 0) || !limits_ok(lim) ||
        (n > 0 && (replies == NULL || lens == NULL)))
        return result_fail(result, KV_EINVAL, "bad merge of procedure", name,
                           name != NULL ? nlen : 0);
    for (size_t i = 0; i < n; i++)
        if (replies[i] == NULL && lens[i] > 0)
            return result_fail(result, KV_EINVAL, "bad merge of procedure",
                               name, nlen);
    def = find_def(reg, name, nlen);
    if (def == NULL)
        return result_fail(result, KV_ENOPROC, "no procedure", name, nlen);
    result->readonly = (def->flags & KV_PROC_READONLY) != 0;
    if (!result->readonly) {
        result->code = KV_EINVAL;
        snprintf(result->msg, sizeof result->msg,
                 "procedure %s is not read-only: it cannot run on every "
                 "shard",
                 def->name);
        return result->code;
    }
    memset(&ctx, 0, sizeof ctx);
    ctx.def = def;
    ctx.merging = true;
    ctx.lim = lim;
    if (def->merge != NULL) {
        rc = def->merge(&ctx, replies, lens, n);
    } else {
        for (size_t i = 0; i < n && rc == KV_OK; i++)
            rc = kv_proc_reply_item(&ctx, lens[i] > 0 ? replies[i] : "",
                                    lens[i]);
    }
    settle(&ctx, rc, result);
    take_reply(&ctx, result);
    ctx_release(&ctx);
    return result->code;
}

/* Frees what RESULT holds and zeroes it. NULL is a no-op. */
void proc_result_free(struct proc_result *result)
{
    if (result == NULL)
        return;
    free(result->mem);
    free(result->reply);
    result_reset(result);
}
