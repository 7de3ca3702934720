/*
 * conf - the cluster.conf parser.
 *
 * Turns the text of a cluster.conf into a validated struct conf, or into one
 * "FILE:LINE: problem" message. The parser is strict on purpose: a typo in a
 * key, a duplicate node or an out-of-range number is an error, never a
 * silent default, because a cluster started from a misread file is worse
 * than one that does not start. Problems that belong to the whole file
 * rather than to one line (a missing key, no nodes) are reported at line 0.
 *
 * This module must never open sockets or create files: conf_load() reads
 * the config file, nothing else, and resolves data_dir, the procedures
 * paths and the key file paths without touching them (kvnode reads the key
 * files; see keys.h).
 */
#include "conf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keys.h"
#include "kv.h"

#define CONF_FILE_LIMIT (1024u * 1024u) /* bytes; larger files are refused */
#define CONF_NAME_MAX 64                /* cluster name length */
#define CONF_HOST_MAX 253               /* host part of an address */
#define CONF_PATH_MAX 4095              /* data_dir length */
#define CONF_MESSAGE_MAX (1024u * 1024u * 1024u) /* max_message_bytes cap */
#define CONF_TIMEOUT_MAX 3600000u                /* one hour, in ms */
#define CONF_MESSAGE_SLACK 1024u /* envelope room beyond key + value */
#define SHOW_MAX 48              /* bytes of input quoted in a message */

#if defined(__GNUC__)
#define CONF_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define CONF_PRINTF(f, a)
#endif

/* ---- the global keys ---------------------------------------------------- */

enum key_id {
    KEY_CLUSTER,
    KEY_SHARDS,
    KEY_REPLICAS,
    KEY_DATA_DIR,
    KEY_MAX_KEY_BYTES,
    KEY_MAX_VALUE_BYTES,
    KEY_MAX_MESSAGE_BYTES,
    KEY_REQUEST_TIMEOUT_MS,
    KEY_TXN_TIMEOUT_MS,
    KEY_LOG_LEVEL,
    KEY_MAX_TXN_OPS,
    KEY_MAX_TXN_BYTES,
    KEY_PROCEDURES,
    KEY_PROC_MAX_KEYS,
    KEY_PROC_MAX_WRITE_BYTES,
    KEY_PROC_MAX_REPLY_BYTES,
    KEY_MAX_INFLIGHT_PER_CLIENT,
    KEY_SESSION_TTL_S,
    KEY_COMPACT_LOG_ENTRIES,
    KEY_COUNT
};

/* One row per key: numbers are checked against [min, max] in one place
 * (set_number); strings each have their own validator (set_string). */
static const struct key_def {
    const char *name;
    int is_number;
    uint64_t min, max; /* inclusive range of a number */
} key_defs[KEY_COUNT] = {
    [KEY_CLUSTER] = {"cluster", 0, 0, 0},
    [KEY_SHARDS] = {"shards", 1, 1, CONF_MAX_SHARDS},
    [KEY_REPLICAS] = {"replicas", 1, 1, UINT32_MAX},
    [KEY_DATA_DIR] = {"data_dir", 0, 0, 0},
    [KEY_MAX_KEY_BYTES] = {"max_key_bytes", 1, 1, CONF_KEY_LIMIT},
    [KEY_MAX_VALUE_BYTES] = {"max_value_bytes", 1, 0, CONF_VALUE_LIMIT},
    [KEY_MAX_MESSAGE_BYTES] = {"max_message_bytes", 1, 1, CONF_MESSAGE_MAX},
    [KEY_REQUEST_TIMEOUT_MS] = {"request_timeout_ms", 1, 1, CONF_TIMEOUT_MAX},
    [KEY_TXN_TIMEOUT_MS] = {"txn_timeout_ms", 1, 1, CONF_TIMEOUT_MAX},
    [KEY_LOG_LEVEL] = {"log_level", 0, 0, 0},
    [KEY_MAX_TXN_OPS] = {"max_txn_ops", 1, 1, CONF_TXN_OPS_LIMIT},
    /* The upper bound also depends on max_message_bytes: see finish(). */
    [KEY_MAX_TXN_BYTES] = {"max_txn_bytes", 1, 1, CONF_MESSAGE_MAX},
    [KEY_PROCEDURES] = {"procedures", 0, 0, 0},
    [KEY_PROC_MAX_KEYS] = {"proc_max_keys", 1, 1, CONF_PROC_KEYS_LIMIT},
    /* Like max_txn_bytes, also bounded by max_message_bytes: see finish(). */
    [KEY_PROC_MAX_WRITE_BYTES] = {"proc_max_write_bytes", 1, 1,
                                  CONF_MESSAGE_MAX},
    [KEY_PROC_MAX_REPLY_BYTES] = {"proc_max_reply_bytes", 1, 1,
                                  CONF_MESSAGE_MAX},
    [KEY_MAX_INFLIGHT_PER_CLIENT] = {"max_inflight_per_client", 1, 1,
                                     CONF_INFLIGHT_LIMIT},
    [KEY_SESSION_TTL_S] = {"session_ttl_s", 1, 1, CONF_SESSION_TTL_LIMIT},
    [KEY_COMPACT_LOG_ENTRIES] = {"compact_log_entries", 1, CONF_COMPACT_MIN,
                                 CONF_COMPACT_LIMIT},
};

/* ---- the [security] section and the CurveZMQ keys of nodes -------------- */

enum sec_id {
    SEC_CURVE,
    SEC_INSECURE,
    SEC_CLIENT_KEYS,
    SEC_CLIENT_KEYS_FILE,
    SEC_HANDSHAKE_TIMEOUT_MS,
    SEC_COUNT
};

static const char *const sec_names[SEC_COUNT] = {
    [SEC_CURVE] = "curve",
    [SEC_INSECURE] = "insecure",
    [SEC_CLIENT_KEYS] = "client_keys",
    [SEC_CLIENT_KEYS_FILE] = "client_keys_file",
    [SEC_HANDSHAKE_TIMEOUT_MS] = "handshake_timeout_ms",
};

/* Keys of a [node ID] section besides address. */
#define NODE_PUBLIC_KEY "public_key"
#define NODE_SECRET_KEY_FILE "secret_key_file"

static const char *const log_levels[] = {"debug", "info", "warn", "error"};

/* ---- parser state ------------------------------------------------------- */

struct parser {
    const char *name; /* file name used in messages */
    char *err;
    size_t errlen;
    unsigned line;   /* current line, 1-based */
    struct conf *c;  /* being filled; freed by the caller on error */
    size_t cap;      /* capacity of c->nodes */
    size_t section;  /* 0 = global, else 1 + index of the node in c->nodes */
    int in_security; /* the current section is [security] */
    unsigned security_line;       /* line of the [security] header, 0 = none */
    unsigned sec_line[SEC_COUNT]; /* where each [security] key was set */
    unsigned pub_line[CONF_MAX_NODES];  /* line of each node's public_key */
    unsigned skf_line[CONF_MAX_NODES];  /* ... and of its secret_key_file */
    unsigned key_line[KEY_COUNT];       /* where each key was set, 0 = not */
    unsigned node_line[CONF_MAX_NODES]; /* line of each [node ID] header */
    unsigned addr_line[CONF_MAX_NODES]; /* line of each node's address */
    char show[SHOW_MAX + 4];            /* scratch for quoting input */
};

/* Writes "NAME:LINE: message" into the caller's buffer and returns
 * KV_EINVAL, so every check reads "return fail(...)". */
CONF_PRINTF(3, 4)
static int fail(struct parser *p, unsigned line, const char *fmt, ...)
{
    if (p->err != NULL && p->errlen > 0) {
        int n = snprintf(p->err, p->errlen, "%s:%u: ", p->name, line);
        if (n >= 0 && (size_t)n < p->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return KV_EINVAL;
}

static int fail_nomem(struct parser *p)
{
    if (p->err != NULL && p->errlen > 0)
        snprintf(p->err, p->errlen, "%s: out of memory", p->name);
    return KV_ENOMEM;
}

/* A printable copy of input bytes for a message: control and non-ASCII
 * bytes become '?', long input is cut with "...". Valid until the next call. */
static const char *show(struct parser *p, const char *s, size_t n)
{
    size_t m = n > SHOW_MAX ? SHOW_MAX : n;
    for (size_t i = 0; i < m; i++) {
        unsigned char ch = (unsigned char)s[i];
        p->show[i] = (ch < 0x20 || ch >= 0x7f) ? '?' : (char)ch;
    }
    if (m < n) {
        memcpy(p->show + m, "...", 3);
        m += 3;
    }
    p->show[m] = '\0';
    return p->show;
}

/* ---- small text helpers ------------------------------------------------- */

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\f' || ch == '\v';
}

static int is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static int is_alnum(char ch)
{
    return is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

static char lower(char ch)
{
    return (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
}

/* Shrinks [*s, *s + *n) to drop leading and trailing whitespace. */
static void trim(const char **s, size_t *n)
{
    while (*n > 0 && is_space(**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && is_space((*s)[*n - 1]))
        (*n)--;
}

static int equals(const char *s, size_t n, const char *word)
{
    return strlen(word) == n && memcmp(s, word, n) == 0;
}

/* Parses a plain decimal number: digits only (no sign, no spaces, no
 * suffix), at most UINT64_MAX. Returns 0, or -1 if S is not one. */
static int parse_u64(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* ---- addresses ---------------------------------------------------------- */

/* Splits "tcp://HOST:PORT" (HOST a name, an IPv4 address or a bracketed
 * IPv6 address) into its host and port. Returns NULL when it is well formed,
 * else what is wrong with it. */
static const char *split_address(const char *s, size_t n, const char **host,
                                 size_t *hostlen, uint32_t *port)
{
    static const char scheme[] = "tcp://";
    const size_t slen = sizeof scheme - 1;
    const char *h, *colon;
    size_t hn;
    uint64_t pv;

    if (n < slen || memcmp(s, scheme, slen) != 0)
        return "must start with tcp://";
    h = s + slen;
    n -= slen;
    if (n > 0 && h[0] == '[') {
        const char *close = memchr(h, ']', n);
        if (close == NULL)
            return "has '[' without ']'";
        hn = (size_t)(close - h) - 1;
        for (size_t i = 0; i < hn; i++) {
            char ch = h[1 + i];
            if (!is_digit(ch) && !(lower(ch) >= 'a' && lower(ch) <= 'f') &&
                ch != ':' && ch != '.')
                return "has a bad IPv6 host";
        }
        if (hn == 0)
            return "has an empty host";
        colon = close + 1;
        if ((size_t)(colon - h) >= n || *colon != ':')
            return "needs a :port after the host";
        *host = h + 1;
    } else {
        colon = NULL;
        for (size_t i = n; i > 0; i--)
            if (h[i - 1] == ':') {
                colon = h + i - 1;
                break;
            }
        if (colon == NULL)
            return "needs a :port after the host";
        hn = (size_t)(colon - h);
        if (hn == 0)
            return "has an empty host";
        if (hn > CONF_HOST_MAX)
            return "has a host longer than 253 characters";
        for (size_t i = 0; i < hn; i++)
            if (!is_alnum(h[i]) && h[i] != '.' && h[i] != '-' && h[i] != '_')
                return "has a host with characters other than "
                       "A-Z a-z 0-9 . - _";
        *host = h;
    }
    if (parse_u64(colon + 1, n - (size_t)(colon + 1 - h), &pv) != 0 || pv < 1 ||
        pv > 65535)
        return "needs a port of 1..65535";
    *hostlen = hn;
    *port = (uint32_t)pv;
    return NULL;
}

/* Whether two valid addresses name the same host (case-insensitively) and
 * port, so "tcp://Node:07101" and "tcp://node:7101" are one address. */
static int same_address(const char *a, const char *b)
{
    const char *ha, *hb;
    size_t na, nb;
    uint32_t pa, pb;

    if (split_address(a, strlen(a), &ha, &na, &pa) != NULL ||
        split_address(b, strlen(b), &hb, &nb, &pb) != NULL)
        return 0; /* defensive: only validated addresses are stored */
    if (na != nb || pa != pb)
        return 0;
    for (size_t i = 0; i < na; i++)
        if (lower(ha[i]) != lower(hb[i]))
            return 0;
    return 1;
}

/* ---- keys --------------------------------------------------------------- */

static int set_number(struct parser *p, enum key_id k, const char *v, size_t n)
{
    const struct key_def *d = &key_defs[k];
    struct conf *c = p->c;
    uint64_t x;

    if (parse_u64(v, n, &x) != 0) {
        int only_digits = 1;
        for (size_t i = 0; i < n; i++)
            only_digits &= is_digit(v[i]);
        if (only_digits)
            return fail(p, p->line,
                        "%s: number '%s' is out of range %" PRIu64 "..%" PRIu64,
                        d->name, show(p, v, n), d->min, d->max);
        return fail(p, p->line,
                    "%s: bad number '%s' (want plain decimal digits)", d->name,
                    show(p, v, n));
    }
    if (x < d->min || x > d->max)
        return fail(p, p->line,
                    "%s = %" PRIu64 " is out of range %" PRIu64 "..%" PRIu64,
                    d->name, x, d->min, d->max);
    switch (k) {
    case KEY_SHARDS:
        c->shards = (uint32_t)x;
        break;
    case KEY_REPLICAS:
        c->replicas = (uint32_t)x;
        break;
    case KEY_MAX_KEY_BYTES:
        c->max_key_bytes = x;
        break;
    case KEY_MAX_VALUE_BYTES:
        c->max_value_bytes = x;
        break;
    case KEY_MAX_MESSAGE_BYTES:
        c->max_message_bytes = x;
        break;
    case KEY_REQUEST_TIMEOUT_MS:
        c->request_timeout_ms = (uint32_t)x;
        break;
    case KEY_TXN_TIMEOUT_MS:
        c->txn_timeout_ms = (uint32_t)x;
        break;
    case KEY_MAX_TXN_OPS:
        c->max_txn_ops = (uint32_t)x;
        break;
    case KEY_MAX_TXN_BYTES:
        c->max_txn_bytes = x;
        break;
    case KEY_PROC_MAX_KEYS:
        c->proc_max_keys = x;
        break;
    case KEY_PROC_MAX_WRITE_BYTES:
        c->proc_max_write_bytes = x;
        break;
    case KEY_PROC_MAX_REPLY_BYTES:
        c->proc_max_reply_bytes = x;
        break;
    case KEY_MAX_INFLIGHT_PER_CLIENT:
        c->max_inflight_per_client = (uint32_t)x;
        break;
    case KEY_SESSION_TTL_S:
        c->session_ttl_s = (uint32_t)x;
        break;
    case KEY_COMPACT_LOG_ENTRIES:
        c->compact_log_entries = (uint32_t)x;
        break;
    default:
        return fail(p, p->line, "internal: %s is not a number", d->name);
    }
    return KV_OK;
}

/* Replaces *slot by a copy of V. */
static int replace(struct parser *p, char **slot, const char *v, size_t n)
{
    char *copy = strndup(v, n);
    if (copy == NULL)
        return fail_nomem(p);
    free(*slot);
    *slot = copy;
    return KV_OK;
}

/* The next blank-separated word of V (N bytes) from *POS on: *W and *WN,
 * and *POS moves past it. False when only blanks are left. */
static bool next_word(const char *v, size_t n, size_t *pos, const char **w,
                      size_t *wn)
{
    while (*pos < n && is_space(v[*pos]))
        (*pos)++;
    if (*pos == n)
        return false;
    *w = v + *pos;
    *wn = 0;
    while (*pos + *wn < n && !is_space((*w)[*wn]))
        (*wn)++;
    *pos += *wn;
    return true;
}

/* "procedures = PATH ...": paths separated by spaces or tabs, each without
 * control characters and at most CONF_PATH_MAX bytes, at most
 * CONF_MAX_PROCEDURES of them, none listed twice. Kept as written here;
 * conf_load() resolves relative ones. */
static int set_procedures(struct parser *p, const char *v, size_t n)
{
    struct conf *c = p->c;
    size_t pos = 0;

    c->procedures = calloc(CONF_MAX_PROCEDURES, sizeof *c->procedures);
    if (c->procedures == NULL)
        return fail_nomem(p);
    const char *w;
    size_t wn;
    while (next_word(v, n, &pos, &w, &wn)) {
        for (size_t i = 0; i < wn; i++)
            if ((unsigned char)w[i] < 0x20 || w[i] == 0x7f)
                return fail(p, p->line,
                            "procedures: path '%s' contains a control "
                            "character",
                            show(p, w, wn));
        if (wn > CONF_PATH_MAX)
            return fail(p, p->line,
                        "procedures: a path is longer than %d bytes",
                        CONF_PATH_MAX);
        if (c->nprocedures == CONF_MAX_PROCEDURES)
            return fail(p, p->line, "procedures: more than %d plugins",
                        CONF_MAX_PROCEDURES);
        for (size_t i = 0; i < c->nprocedures; i++)
            if (equals(w, wn, c->procedures[i]))
                return fail(p, p->line, "procedures: '%s' is listed twice",
                            show(p, w, wn));
        c->procedures[c->nprocedures] = strndup(w, wn);
        if (c->procedures[c->nprocedures] == NULL)
            return fail_nomem(p);
        c->nprocedures++;
    }
    return KV_OK;
}

static int set_string(struct parser *p, enum key_id k, const char *v, size_t n)
{
    struct conf *c = p->c;

    switch (k) {
    case KEY_CLUSTER:
        if (n > CONF_NAME_MAX)
            return fail(p, p->line, "cluster name is longer than %d characters",
                        CONF_NAME_MAX);
        for (size_t i = 0; i < n; i++)
            if (!is_alnum(v[i]) && v[i] != '_' && v[i] != '.' && v[i] != '-')
                return fail(p, p->line,
                            "cluster name '%s' may only contain A-Z a-z "
                            "0-9 _ . -",
                            show(p, v, n));
        return replace(p, &c->cluster, v, n);
    case KEY_DATA_DIR:
        if (n > CONF_PATH_MAX)
            return fail(p, p->line, "data_dir is longer than %d bytes",
                        CONF_PATH_MAX);
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
                return fail(p, p->line,
                            "data_dir contains a control character");
        return replace(p, &c->data_dir, v, n);
    case KEY_LOG_LEVEL:
        for (size_t i = 0; i < sizeof log_levels / sizeof log_levels[0]; i++)
            if (equals(v, n, log_levels[i]))
                return replace(p, &c->log_level, v, n);
        return fail(p, p->line,
                    "log_level must be debug, info, warn or error, not '%s'",
                    show(p, v, n));
    case KEY_PROCEDURES:
        return set_procedures(p, v, n);
    default:
        return fail(p, p->line, "internal: %s is not a string",
                    key_defs[k].name);
    }
}

static int find_key(const char *k, size_t n)
{
    for (int i = 0; i < KEY_COUNT; i++)
        if (equals(k, n, key_defs[i].name))
            return i;
    return -1;
}

static int find_sec_key(const char *k, size_t n)
{
    for (int i = 0; i < SEC_COUNT; i++)
        if (equals(k, n, sec_names[i]))
            return i;
    return -1;
}

static int is_node_key(const char *k, size_t n)
{
    return equals(k, n, "address") || equals(k, n, NODE_PUBLIC_KEY) ||
           equals(k, n, NODE_SECRET_KEY_FILE);
}

/* A key of another part of the file than the one it is in: says where it
 * belongs. Returns 0 when K is no such key. */
static int misplaced_key(struct parser *p, const char *k, size_t kn)
{
    if (is_node_key(k, kn) && p->section == 0)
        return fail(p, p->line, "key '%s' belongs in a [node ID] section",
                    show(p, k, kn));
    if (find_sec_key(k, kn) >= 0 && !p->in_security)
        return fail(p, p->line, "key '%s' belongs in the [security] section",
                    show(p, k, kn));
    return 0;
}

static int global_key(struct parser *p, const char *k, size_t kn, const char *v,
                      size_t vn)
{
    int id = find_key(k, kn);

    if (id < 0) {
        int rc = misplaced_key(p, k, kn);
        if (rc != 0)
            return rc;
        return fail(p, p->line, "unknown key '%s'", show(p, k, kn));
    }
    if (p->key_line[id] != 0)
        return fail(p, p->line, "duplicate key '%s' (first set at line %u)",
                    key_defs[id].name, p->key_line[id]);
    p->key_line[id] = p->line;
    if (key_defs[id].is_number)
        return set_number(p, (enum key_id)id, v, vn);
    return set_string(p, (enum key_id)id, v, vn);
}

/* A path value (client_keys_file, secret_key_file): no control
 * characters, at most CONF_PATH_MAX bytes. Kept as written; conf_load()
 * resolves a relative one. */
static int set_path(struct parser *p, const char *name, char **slot,
                    const char *v, size_t n)
{
    if (n > CONF_PATH_MAX)
        return fail(p, p->line, "%s is longer than %d bytes", name,
                    CONF_PATH_MAX);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
            return fail(p, p->line, "%s contains a control character", name);
    return replace(p, slot, v, n);
}

/* "on"/"off" or "yes"/"no" (WORDS[1] is true) into *out. */
static int set_bool(struct parser *p, const char *name, const char *const *w,
                    const char *v, size_t n, int *out)
{
    if (equals(v, n, w[0]) || equals(v, n, w[1])) {
        *out = equals(v, n, w[1]);
        return KV_OK;
    }
    return fail(p, p->line, "%s must be %s or %s, not '%s'", name, w[1], w[0],
                show(p, v, n));
}

/* "client_keys = KEY KEY ...": Z85 public keys separated by blanks, none
 * listed twice, at most CONF_MAX_CLIENT_KEYS. */
static int set_client_keys(struct parser *p, const char *v, size_t n)
{
    struct conf_security *sec = &p->c->security;
    size_t pos = 0, cap = 0;

    const char *w;
    size_t wn;
    while (next_word(v, n, &pos, &w, &wn)) {
        if (!keys_z85_valid(w, wn))
            return fail(p, p->line,
                        "client_keys: '%s' is not a Z85 public key of 40 "
                        "characters",
                        show(p, w, wn));
        for (size_t i = 0; i < sec->nclient_keys; i++)
            if (equals(w, wn, sec->client_keys[i]))
                return fail(p, p->line, "client_keys: '%s' is listed twice",
                            show(p, w, wn));
        if (sec->nclient_keys == CONF_MAX_CLIENT_KEYS)
            return fail(p, p->line, "client_keys: more than %d keys",
                        CONF_MAX_CLIENT_KEYS);
        if (sec->nclient_keys == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **nk = realloc(sec->client_keys, ncap * sizeof *nk);
            if (nk == NULL)
                return fail_nomem(p);
            sec->client_keys = nk;
            cap = ncap;
        }
        sec->client_keys[sec->nclient_keys] = strndup(w, wn);
        if (sec->client_keys[sec->nclient_keys] == NULL)
            return fail_nomem(p);
        sec->nclient_keys++;
    }
    return KV_OK;
}

static int security_key(struct parser *p, const char *k, size_t kn,
                        const char *v, size_t vn)
{
    static const char *const on_off[] = {"off", "on"};
    static const char *const yes_no[] = {"no", "yes"};
    struct conf_security *sec = &p->c->security;
    int id = find_sec_key(k, kn);
    uint64_t x;

    if (id < 0) {
        if (find_key(k, kn) >= 0)
            return fail(p, p->line,
                        "key '%s' must come before the first section",
                        show(p, k, kn));
        if (is_node_key(k, kn))
            return fail(p, p->line, "key '%s' belongs in a [node ID] section",
                        show(p, k, kn));
        return fail(p, p->line, "unknown key '%s' in [security]",
                    show(p, k, kn));
    }
    if (p->sec_line[id] != 0)
        return fail(p, p->line, "duplicate key '%s' (first set at line %u)",
                    sec_names[id], p->sec_line[id]);
    p->sec_line[id] = p->line;
    switch ((enum sec_id)id) {
    case SEC_CURVE:
        return set_bool(p, "curve", on_off, v, vn, &sec->curve);
    case SEC_INSECURE:
        return set_bool(p, "insecure", yes_no, v, vn, &sec->insecure);
    case SEC_CLIENT_KEYS:
        return set_client_keys(p, v, vn);
    case SEC_CLIENT_KEYS_FILE:
        return set_path(p, "client_keys_file", &sec->client_keys_file, v, vn);
    case SEC_HANDSHAKE_TIMEOUT_MS:
        if (parse_u64(v, vn, &x) != 0 || x < CONF_HANDSHAKE_MIN ||
            x > CONF_TIMEOUT_MAX)
            return fail(p, p->line,
                        "handshake_timeout_ms: '%s' is not a number of "
                        "%u..%u",
                        show(p, v, vn), CONF_HANDSHAKE_MIN, CONF_TIMEOUT_MAX);
        sec->handshake_timeout_ms = (uint32_t)x;
        return KV_OK;
    case SEC_COUNT:
        break;
    }
    return fail(p, p->line, "internal: bad [security] key");
}

/* public_key and secret_key_file of node index I. */
static int node_curve_key(struct parser *p, size_t i, const char *k, size_t kn,
                          const char *v, size_t vn)
{
    struct conf_node *node = &p->c->nodes[i];
    int is_pub = equals(k, kn, NODE_PUBLIC_KEY);
    unsigned *at = is_pub ? &p->pub_line[i] : &p->skf_line[i];

    if (*at != 0)
        return fail(
            p, p->line,
            "duplicate key '%s' in [node %" PRIu32 "] (first set at line %u)",
            is_pub ? NODE_PUBLIC_KEY : NODE_SECRET_KEY_FILE, node->id, *at);
    *at = p->line;
    if (!is_pub)
        return set_path(p, NODE_SECRET_KEY_FILE, &node->secret_key_file, v, vn);
    if (!keys_z85_valid(v, vn))
        return fail(p, p->line,
                    "public_key of node %" PRIu32
                    " is not a Z85 key of 40 characters",
                    node->id);
    for (size_t j = 0; j < p->c->nnodes; j++)
        if (j != i && p->c->nodes[j].public_key != NULL &&
            equals(v, vn, p->c->nodes[j].public_key))
            return fail(p, p->line,
                        "public_key of node %" PRIu32
                        " is already node %" PRIu32 "'s (line %u)",
                        node->id, p->c->nodes[j].id, p->pub_line[j]);
    return replace(p, &node->public_key, v, vn);
}

static int node_key(struct parser *p, const char *k, size_t kn, const char *v,
                    size_t vn)
{
    size_t i = p->section - 1;
    struct conf_node *node = &p->c->nodes[i];
    const char *host, *why;
    size_t hostlen;
    uint32_t port;

    if (equals(k, kn, NODE_PUBLIC_KEY) || equals(k, kn, NODE_SECRET_KEY_FILE))
        return node_curve_key(p, i, k, kn, v, vn);
    if (!equals(k, kn, "address")) {
        if (find_key(k, kn) >= 0)
            return fail(p, p->line,
                        "key '%s' must come before the first [node ID] section",
                        show(p, k, kn));
        if (misplaced_key(p, k, kn) != 0)
            return KV_EINVAL;
        return fail(p, p->line, "unknown key '%s' in [node %" PRIu32 "]",
                    show(p, k, kn), node->id);
    }
    if (node->address != NULL)
        return fail(p, p->line,
                    "duplicate key 'address' in [node %" PRIu32
                    "] (first set at line %u)",
                    node->id, p->addr_line[i]);
    why = split_address(v, vn, &host, &hostlen, &port);
    if (why != NULL)
        return fail(p, p->line, "address '%s' %s (the form is tcp://HOST:PORT)",
                    show(p, v, vn), why);
    if (replace(p, &node->address, v, vn) != KV_OK)
        return KV_ENOMEM;
    p->addr_line[i] = p->line;
    for (size_t j = 0; j < p->c->nnodes; j++)
        if (j != i && p->c->nodes[j].address != NULL &&
            same_address(p->c->nodes[j].address, node->address))
            return fail(p, p->line,
                        "address %s of node %" PRIu32
                        " is already used by node %" PRIu32 " (line %u)",
                        node->address, node->id, p->c->nodes[j].id,
                        p->addr_line[j]);
    return KV_OK;
}

/* ---- sections and lines ------------------------------------------------- */

/* "[node ID]": S..S+N is the text between the brackets, trimmed. */
static int parse_section(struct parser *p, const char *s, size_t n)
{
    struct conf *c = p->c;
    uint64_t id;

    if (equals(s, n, "security")) {
        if (p->security_line != 0)
            return fail(p, p->line,
                        "duplicate section [security] (first at line %u)",
                        p->security_line);
        p->security_line = p->line;
        p->in_security = 1;
        p->section = 0;
        return KV_OK;
    }
    if (!(n >= 4 && memcmp(s, "node", 4) == 0 && (n == 4 || is_space(s[4]))))
        return fail(p, p->line,
                    "unknown section '[%s]' (the sections are [security] and "
                    "[node ID])",
                    show(p, s, n));
    s += 4;
    n -= 4;
    trim(&s, &n);
    if (n == 0)
        return fail(p, p->line, "missing node id in [node ID]");
    if (parse_u64(s, n, &id) != 0 || id < 1 || id > 65535)
        return fail(p, p->line, "bad node id '%s' (want 1..65535)",
                    show(p, s, n));
    for (size_t i = 0; i < c->nnodes; i++)
        if (c->nodes[i].id == id)
            return fail(p, p->line,
                        "duplicate node %" PRIu64 " (first at line %u)", id,
                        p->node_line[i]);
    if (c->nnodes == CONF_MAX_NODES)
        return fail(p, p->line, "too many nodes (at most %d)", CONF_MAX_NODES);
    if (c->nnodes == p->cap) {
        size_t ncap = p->cap == 0 ? 8 : p->cap * 2;
        struct conf_node *nn;
        if (ncap > CONF_MAX_NODES)
            ncap = CONF_MAX_NODES;
        nn = realloc(c->nodes, ncap * sizeof *nn);
        if (nn == NULL)
            return fail_nomem(p);
        c->nodes = nn;
        p->cap = ncap;
    }
    memset(&c->nodes[c->nnodes], 0, sizeof c->nodes[c->nnodes]);
    c->nodes[c->nnodes].id = (uint32_t)id;
    p->node_line[c->nnodes] = p->line;
    p->addr_line[c->nnodes] = 0;
    p->pub_line[c->nnodes] = 0;
    p->skf_line[c->nnodes] = 0;
    c->nnodes++;
    p->section = c->nnodes;
    p->in_security = 0;
    return KV_OK;
}

/* The length of line S (N bytes) without its comment. '#' starts one
 * anywhere, except on the lines of Z85 keys (public_key, client_keys),
 * where it does only at the start or after a blank: '#' is a Z85
 * character. */
static size_t cut_comment(const char *s, size_t n)
{
    const char *eq = memchr(s, '=', n);
    const char *hash;

    if (eq != NULL) {
        const char *k = s;
        size_t kn = (size_t)(eq - s);
        trim(&k, &kn);
        if (equals(k, kn, NODE_PUBLIC_KEY) ||
            equals(k, kn, sec_names[SEC_CLIENT_KEYS]))
            return keys_cut_comment(s, n);
    }
    hash = memchr(s, '#', n);
    return hash != NULL ? (size_t)(hash - s) : n;
}

static int parse_line(struct parser *p, const char *s, size_t n)
{
    const char *eq, *k, *v;
    size_t kn, vn;

    if (memchr(s, '\0', n) != NULL)
        return fail(p, p->line, "NUL byte in line");
    n = cut_comment(s, n);
    trim(&s, &n);
    if (n == 0)
        return KV_OK;
    if (s[0] == '[') {
        if (s[n - 1] != ']')
            return fail(p, p->line, "section header '%s' has no closing ']'",
                        show(p, s, n));
        s++;
        n -= 2;
        trim(&s, &n);
        return parse_section(p, s, n);
    }
    eq = memchr(s, '=', n);
    if (eq == NULL)
        return fail(p, p->line,
                    "expected 'key = value' or '[node ID]', got '%s'",
                    show(p, s, n));
    k = s;
    kn = (size_t)(eq - s);
    v = eq + 1;
    vn = n - kn - 1;
    trim(&k, &kn);
    trim(&v, &vn);
    if (kn == 0)
        return fail(p, p->line, "missing key before '='");
    if (vn == 0)
        return fail(p, p->line, "empty value for key '%s'", show(p, k, kn));
    if (p->in_security)
        return security_key(p, k, kn, v, vn);
    if (p->section == 0)
        return global_key(p, k, kn, v, vn);
    return node_key(p, k, kn, v, vn);
}

static int node_cmp(const void *a, const void *b)
{
    uint32_t x = ((const struct conf_node *)a)->id;
    uint32_t y = ((const struct conf_node *)b)->id;
    return (x > y) - (x < y);
}

/* A byte limit K (max_txn_bytes, proc_max_write_bytes, proc_max_reply_bytes)
 * must leave CONF_TXN_SLACK bytes of max_message_bytes for the envelope and
 * the framing. A value set in the file beyond that is an error, reported at
 * the later of the two keys' lines; the default is lowered to fit (to 1 at
 * least, when max_message_bytes leaves no room). */
static int finish_room(struct parser *p, enum key_id k, uint64_t *slot)
{
    struct conf *c = p->c;
    const char *name = key_defs[k].name;
    uint64_t room = c->max_message_bytes > CONF_TXN_SLACK
                        ? c->max_message_bytes - CONF_TXN_SLACK
                        : 0;
    unsigned at = p->key_line[k];

    if (at == 0) {
        if (*slot > room)
            *slot = room > 0 ? room : 1;
        return KV_OK;
    }
    if (*slot <= room)
        return KV_OK;
    if (p->key_line[KEY_MAX_MESSAGE_BYTES] > at)
        at = p->key_line[KEY_MAX_MESSAGE_BYTES];
    if (room == 0)
        return fail(p, at,
                    "%s = %" PRIu64
                    " does not fit: max_message_bytes = %" PRIu64
                    " leaves no room for it (it must be above %u)",
                    name, *slot, c->max_message_bytes, CONF_TXN_SLACK);
    return fail(p, at,
                "%s = %" PRIu64 " is out of range 1..%" PRIu64
                " (max_message_bytes - %u)",
                name, *slot, room, CONF_TXN_SLACK);
}

/* With curve = on every node needs its public key and key file; no client
 * key may be a node's key (the node would admit it as that node). */
static int finish_security(struct parser *p)
{
    struct conf *c = p->c;
    const struct conf_security *sec = &c->security;

    for (size_t i = 0; sec->curve && i < c->nnodes; i++) {
        const char *missing = c->nodes[i].public_key == NULL ? NODE_PUBLIC_KEY
                              : c->nodes[i].secret_key_file == NULL
                                  ? NODE_SECRET_KEY_FILE
                                  : NULL;
        if (missing != NULL)
            return fail(p, p->node_line[i],
                        "node %" PRIu32
                        " has no %s: curve = on (line %u) needs public_key "
                        "and secret_key_file in every [node ID] section "
                        "(make a key pair with: kvnode keygen FILE)",
                        c->nodes[i].id, missing, p->sec_line[SEC_CURVE]);
    }
    for (size_t k = 0; k < sec->nclient_keys; k++)
        for (size_t i = 0; i < c->nnodes; i++)
            if (c->nodes[i].public_key != NULL &&
                strcmp(c->nodes[i].public_key, sec->client_keys[k]) == 0)
                return fail(p, p->sec_line[SEC_CLIENT_KEYS],
                            "client_keys: '%s' is the public_key of node "
                            "%" PRIu32 " (line %u); a client needs a key of "
                            "its own",
                            sec->client_keys[k], c->nodes[i].id,
                            p->pub_line[i]);
    return KV_OK;
}

/* Checks what only the whole file can tell, then sorts the nodes. */
static int finish(struct parser *p)
{
    struct conf *c = p->c;
    uint64_t need;
    int rc;

    if (p->key_line[KEY_CLUSTER] == 0)
        return fail(p, 0, "missing required key 'cluster'");
    if (c->nnodes == 0)
        return fail(p, 0,
                    "no nodes: at least one [node ID] section with an address "
                    "is required");
    for (size_t i = 0; i < c->nnodes; i++)
        if (c->nodes[i].address == NULL)
            return fail(p, p->node_line[i],
                        "node %" PRIu32
                        " has no address (add 'address = tcp://HOST:PORT')",
                        c->nodes[i].id);
    rc = finish_security(p);
    if (rc != KV_OK)
        return rc;
    if (c->replicas > c->nnodes) {
        if (p->key_line[KEY_REPLICAS] != 0)
            return fail(p, p->key_line[KEY_REPLICAS],
                        "replicas = %" PRIu32
                        " exceeds the number of nodes (%zu)",
                        c->replicas, c->nnodes);
        c->replicas = (uint32_t)c->nnodes; /* only the default is clamped */
    }
    need = c->max_key_bytes + c->max_value_bytes + CONF_MESSAGE_SLACK;
    if (c->max_message_bytes < need) {
        unsigned at = p->key_line[KEY_MAX_MESSAGE_BYTES];
        if (p->key_line[KEY_MAX_KEY_BYTES] > at)
            at = p->key_line[KEY_MAX_KEY_BYTES];
        if (p->key_line[KEY_MAX_VALUE_BYTES] > at)
            at = p->key_line[KEY_MAX_VALUE_BYTES];
        return fail(p, at,
                    "max_message_bytes = %" PRIu64
                    " is too small: it must be at least max_key_bytes + "
                    "max_value_bytes + %u = %" PRIu64,
                    c->max_message_bytes, CONF_MESSAGE_SLACK, need);
    }
    rc = finish_room(p, KEY_MAX_TXN_BYTES, &c->max_txn_bytes);
    if (rc == KV_OK)
        rc = finish_room(p, KEY_PROC_MAX_WRITE_BYTES, &c->proc_max_write_bytes);
    if (rc == KV_OK)
        rc = finish_room(p, KEY_PROC_MAX_REPLY_BYTES, &c->proc_max_reply_bytes);
    if (rc != KV_OK)
        return rc;
    qsort(c->nodes, c->nnodes, sizeof *c->nodes, node_cmp);
    return KV_OK;
}

static int parse_all(struct parser *p, const char *text, size_t len)
{
    size_t pos = 0;
    int rc = KV_OK;

    if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
        pos = 3; /* a UTF-8 byte order mark some editors write */
    while (pos < len) {
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl != NULL ? (size_t)(nl - s) : len - pos;
        pos += n + (nl != NULL);
        p->line++;
        rc = parse_line(p, s, n);
        if (rc != KV_OK)
            goto out;
    }
    rc = finish(p);
out:
    return rc;
}

/* ---- public API --------------------------------------------------------- */

/* Parses TEXT; see conf.h. Returns KV_OK, KV_EINVAL with "NAME:LINE: problem"
 * in ERR, or KV_ENOMEM. *out is only written on KV_OK. */
int conf_parse(const char *text, size_t len, const char *name,
               struct conf **out, char *err, size_t errlen)
{
    struct parser *p = NULL;
    struct conf *c = NULL;
    int rc;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    p = calloc(1, sizeof *p);
    if (p == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s: out of memory", name ? name : "-");
        rc = KV_ENOMEM;
        goto out;
    }
    p->name = name != NULL ? name : "-";
    p->err = err;
    p->errlen = errlen;
    if (out == NULL || (text == NULL && len > 0)) {
        rc = fail(p, 0, "conf_parse: no text or no output");
        goto free_parser;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        rc = fail_nomem(p);
        goto free_parser;
    }
    p->c = c;
    c->shards = 8;
    c->replicas = 3;
    c->max_key_bytes = 4096;
    c->max_value_bytes = 1048576;
    c->max_message_bytes = 4194304;
    c->request_timeout_ms = 5000;
    c->txn_timeout_ms = 5000;
    c->max_txn_ops = CONF_TXN_OPS_DEFAULT;
    c->max_txn_bytes = CONF_TXN_BYTES_DEFAULT;
    c->proc_max_keys = CONF_PROC_KEYS_DEFAULT;
    c->proc_max_write_bytes = CONF_PROC_BYTES_DEFAULT;
    c->proc_max_reply_bytes = CONF_PROC_BYTES_DEFAULT;
    c->max_inflight_per_client = CONF_INFLIGHT_DEFAULT;
    c->session_ttl_s = CONF_SESSION_TTL_DEFAULT;
    c->compact_log_entries = CONF_COMPACT_DEFAULT;
    c->security.handshake_timeout_ms = CONF_HANDSHAKE_DEFAULT;
    c->path = strdup("");
    c->data_dir = strdup("data");
    c->log_level = strdup("info");
    if (c->path == NULL || c->data_dir == NULL || c->log_level == NULL) {
        rc = fail_nomem(p);
        goto free_conf;
    }
    rc = parse_all(p, text, len);
    if (rc != KV_OK)
        goto free_conf;
    *out = c;
    c = NULL;
free_conf:
    conf_free(c);
free_parser:
    free(p);
out:
    return rc;
}

static int io_error(const char *path, int e, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s: %s", path, strerror(e));
    return KV_EIO;
}

/* Reads all of PATH into a new buffer *text (not NUL-terminated). */
static int read_file(const char *path, char **text, size_t *len, char *err,
                     size_t errlen)
{
    char *buf = NULL;
    size_t n = 0, cap = 0;
    int rc = KV_OK;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        rc = io_error(path, errno, err, errlen);
        goto out;
    }
    for (;;) {
        ssize_t r;
        if (n == cap) {
            size_t ncap = cap == 0 ? 4096 : cap * 2;
            char *nb;
            if (cap > CONF_FILE_LIMIT) {
                if (err != NULL && errlen > 0)
                    snprintf(err, errlen,
                             "%s:0: file is larger than the 1 MiB limit of a "
                             "config file",
                             path);
                rc = KV_EINVAL;
                goto free_buf;
            }
            if (ncap > CONF_FILE_LIMIT + 1)
                ncap = CONF_FILE_LIMIT + 1;
            nb = realloc(buf, ncap);
            if (nb == NULL) {
                if (err != NULL && errlen > 0)
                    snprintf(err, errlen, "%s: out of memory", path);
                rc = KV_ENOMEM;
                goto free_buf;
            }
            buf = nb;
            cap = ncap;
        }
        r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = io_error(path, errno, err, errlen);
            goto free_buf;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    *text = buf;
    *len = n;
    buf = NULL;
free_buf:
    free(buf);
    close(fd);
out:
    return rc;
}

/* Rewrites an absolute path without empty, "." and ".." parts, lexically
 * (as Go's filepath.Clean does), so the folders need not exist yet. */
static char *clean_path(const char *in)
{
    size_t o = 0;
    char *out = malloc(strlen(in) + 2);

    if (out == NULL)
        return NULL;
    out[o++] = '/';
    while (*in != '\0') {
        const char *seg;
        size_t n;
        while (*in == '/')
            in++;
        seg = in;
        while (*in != '\0' && *in != '/')
            in++;
        n = (size_t)(in - seg);
        if (n == 0 || (n == 1 && seg[0] == '.'))
            continue;
        if (n == 2 && seg[0] == '.' && seg[1] == '.') {
            while (o > 1 && out[o - 1] != '/')
                o--;
            if (o > 1)
                o--;
            continue;
        }
        if (o > 1)
            out[o++] = '/';
        memcpy(out + o, seg, n);
        o += n;
    }
    out[o] = '\0';
    return out;
}

/* The current directory in a new string, or NULL with errno set. */
static char *current_dir(void)
{
    size_t cap = 256;
    char *buf = NULL;

    while (cap <= 65536) {
        char *nb = realloc(buf, cap);
        if (nb == NULL)
            break;
        buf = nb;
        if (getcwd(buf, cap) != NULL)
            return buf;
        if (errno != ERANGE)
            break;
        cap *= 2;
    }
    free(buf);
    return NULL;
}

/* Sets *OUT to a new absolute, clean copy of REL: REL itself when absolute,
 * else REL joined to the folder of PATH (itself joined to the current
 * directory when relative); "." and ".." are resolved lexically, so the
 * folders need not exist. */
static int resolve_path(const char *path, const char *rel, char **out,
                        char *err, size_t errlen)
{
    char *cwd = NULL, *joined = NULL, *clean = NULL;
    const char *slash = strrchr(path, '/');
    size_t dirlen = slash == NULL ? 0 : (size_t)(slash - path) + 1;
    int rc = KV_OK;

    if (rel[0] == '/') {
        clean = clean_path(rel);
        if (clean == NULL)
            goto nomem;
        goto done;
    }
    if (path[0] != '/') {
        cwd = current_dir();
        if (cwd == NULL) {
            rc = io_error(path, errno, err, errlen);
            goto free_all;
        }
    }
    /* CWD "/" PATH's folder including its last '/' REL */
    joined =
        malloc((cwd != NULL ? strlen(cwd) + 1 : 0) + dirlen + strlen(rel) + 1);
    if (joined == NULL)
        goto nomem;
    joined[0] = '\0';
    if (cwd != NULL) {
        strcat(joined, cwd);
        strcat(joined, "/");
    }
    strncat(joined, path, dirlen);
    strcat(joined, rel);
    clean = clean_path(joined);
    if (clean == NULL)
        goto nomem;
done:
    *out = clean;
    goto free_all;
nomem:
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s: out of memory", path);
    rc = KV_ENOMEM;
free_all:
    free(joined);
    free(cwd);
    return rc;
}

/* Makes *SLOT (when not NULL) absolute and clean (see resolve_path). */
static int resolve_slot(const char *path, char **slot, char *err, size_t errlen)
{
    char *abs = NULL;
    int rc;

    if (*slot == NULL)
        return KV_OK;
    rc = resolve_path(path, *slot, &abs, err, errlen);
    if (rc != KV_OK)
        return rc;
    free(*slot);
    *slot = abs;
    return KV_OK;
}

/* Makes c->data_dir, each of c->procedures and the key file paths absolute
 * and clean, relative ones against the folder of PATH (see resolve_path). */
static int resolve_paths(struct conf *c, const char *path, char *err,
                         size_t errlen)
{
    int rc = resolve_slot(path, &c->data_dir, err, errlen);

    for (size_t i = 0; rc == KV_OK && i < c->nprocedures; i++)
        rc = resolve_slot(path, &c->procedures[i], err, errlen);
    for (size_t i = 0; rc == KV_OK && i < c->nnodes; i++)
        rc = resolve_slot(path, &c->nodes[i].secret_key_file, err, errlen);
    if (rc == KV_OK)
        rc = resolve_slot(path, &c->security.client_keys_file, err, errlen);
    return rc;
}

/* Reads and parses PATH; see conf.h. On KV_OK c->path is a copy of PATH and
 * c->data_dir and every c->procedures path are absolute. Returns KV_EIO ("PATH:
 * reason") when the file (or the current directory, for a relative PATH) cannot
 * be read, KV_EINVAL for a bad or over-1-MiB file, KV_ENOMEM. *out is only
 * written on KV_OK. */
int conf_load(const char *path, struct conf **out, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    struct conf *c = NULL;
    char *copy;
    int rc;

    if (path == NULL || out == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "conf_load: no path or no output");
        rc = KV_EINVAL;
        goto out;
    }
    rc = read_file(path, &text, &len, err, errlen);
    if (rc != KV_OK)
        goto out;
    rc = conf_parse(text, len, path, &c, err, errlen);
    if (rc != KV_OK)
        goto free_text;
    copy = strdup(path);
    if (copy == NULL) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "%s: out of memory", path);
        rc = KV_ENOMEM;
        goto free_conf;
    }
    free(c->path);
    c->path = copy;
    rc = resolve_paths(c, path, err, errlen);
    if (rc != KV_OK)
        goto free_conf;
    *out = c;
    c = NULL;
free_conf:
    conf_free(c);
free_text:
    free(text);
out:
    return rc;
}

/* Frees C and everything it owns. NULL is a no-op. */
void conf_free(struct conf *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->nnodes; i++) {
        free(c->nodes[i].address);
        free(c->nodes[i].public_key);
        free(c->nodes[i].secret_key_file);
    }
    free(c->nodes);
    for (size_t i = 0; i < c->security.nclient_keys; i++)
        free(c->security.client_keys[i]);
    free(c->security.client_keys);
    free(c->security.client_keys_file);
    for (size_t i = 0; i < c->nprocedures; i++)
        free(c->procedures[i]);
    free(c->procedures);
    free(c->path);
    free(c->cluster);
    free(c->data_dir);
    free(c->log_level);
    free(c);
}

/* The node with id ID, or NULL. The pointer is owned by C. */
const struct conf_node *conf_node_by_id(const struct conf *c, uint32_t id)
{
    size_t lo = 0, hi;

    if (c == NULL)
        return NULL;
    hi = c->nnodes;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->nodes[mid].id == id)
            return &c->nodes[mid];
        if (c->nodes[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Whether ADDRESS names a loopback host (see conf.h). */
int conf_address_is_loopback(const char *address)
{
    const char *host;
    size_t hn;
    uint32_t port;
    char buf[CONF_HOST_MAX + 1];
    unsigned char a6[16];
    unsigned char a4[4];
    static const unsigned char loop6[16] = {0, 0, 0, 0, 0, 0, 0, 0,
                                            0, 0, 0, 0, 0, 0, 0, 1};

    if (address == NULL ||
        split_address(address, strlen(address), &host, &hn, &port) != NULL ||
        hn > CONF_HOST_MAX)
        return 0;
    memcpy(buf, host, hn);
    buf[hn] = '\0';
    if (strlen(buf) == 9) {
        int local = 1;
        for (size_t i = 0; i < 9; i++)
            local &= lower(buf[i]) == "localhost"[i];
        if (local)
            return 1;
    }
    if (inet_pton(AF_INET, buf, a4) == 1)
        return a4[0] == 127;
    if (inet_pton(AF_INET6, buf, a6) == 1) {
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0,    0,
                                                 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a6, loop6, 16) == 0)
            return 1;
        return memcmp(a6, mapped, 12) == 0 && a6[12] == 127;
    }
    return 0;
}

/* The index in c->nodes of replica R of SHARD: (shard + r) mod nnodes.
 * Returns 0 for a conf without nodes (which conf_parse never returns). */
size_t conf_replica(const struct conf *c, uint32_t shard, uint32_t r)
{
    if (c == NULL || c->nnodes == 0)
        return 0;
    return (size_t)(((uint64_t)shard + r) % c->nnodes);
}
