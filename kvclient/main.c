/*
 * kvclient - the command-line client of kv.
 *
 *   kvclient [-c TARGET] [--key FILE] [--timeout MS] [--json] [--hex]
 *            COMMAND [ARGS]
 *
 * Commands are rows of one table (name, handler, argument counts, accepted
 * options, flags) checked in one place before a handler runs, in the style
 * of Redis' command table. Options may come before or after the command.
 * Only main() turns results into exit codes, which are a fixed contract
 * (docs/cli.md): 0 ok, 1 not found, 2 usage or invalid input, 3 condition
 * failed, 4 unavailable or timed out, 5 anything else.
 *
 * This program talks to kv through libkv/kv.h and the internal admin.h only;
 * it never trusts what a node says about itself beyond printing it.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "bench.h"
#include "keys.h"
#include "kv.h"
#include "kvproc.h"

/* Exit codes: a fixed contract, documented in docs/cli.md. */
enum {
    EXIT_OKAY = 0,
    EXIT_NOTFOUND = 1,
    EXIT_USAGE = 2,
    EXIT_CONFLICT = 3,
    EXIT_UNAVAILABLE = 4,
    EXIT_OTHER = 5
};

#define DEFAULT_TARGET "./cluster.conf"
#define STATUS_TIMEOUT_MS 1000
/* status notes a node whose clock runs this far behind a peer's (the
 * threshold kvnode logs at) */
#define CLOCK_NOTE_MS 1000
#define MAX_TIMEOUT_MS 86400000ULL
#define STDIN_MAX_RAW (64u * 1024 * 1024)  /* the hard cap on values */
#define STDIN_MAX_HEX (3u * STDIN_MAX_RAW) /* hex digits plus whitespace */

/* --- options ------------------------------------------------------------ */

enum opt_id {
    OPT_CONF,
    OPT_TIMEOUT,
    OPT_KEY,
    OPT_JSON,
    OPT_HEX,
    OPT_HELP,
    OPT_IF_VERSION,
    OPT_IF_ABSENT,
    OPT_STALE,
    OPT_PREFIX,
    OPT_START,
    OPT_END,
    OPT_LIMIT,
    OPT_CLIENTS,
    OPT_OPS,
    OPT_VALUE_SIZE,
    OPT_KEYS,
    OPT_WORKLOAD,
    OPT_THREADS,
    OPT_LIST,
    OPT_TXN_KEYS,
    OPT_ARG_FILE,
    OPT_AS_LIST,
    OPT_COUNT
};

#define BIT(o) (1u << (o))
#define GLOBAL_OPTS                                                            \
    (BIT(OPT_CONF) | BIT(OPT_TIMEOUT) | BIT(OPT_JSON) | BIT(OPT_HEX) |         \
     BIT(OPT_HELP) | BIT(OPT_KEY))

struct optdef {
    const char *name; /* long name, after "--" */
    char shortname;   /* 0 when it has none */
    const char *arg;  /* the argument's name, NULL for a flag */
    const char *help;
};

static const struct optdef optdefs[OPT_COUNT] = {
    [OPT_CONF] = {"conf", 'c', "TARGET",
                  "a cluster.conf (" DEFAULT_TARGET "), tcp://h:p,... or "
                  "embedded:DIR"},
    [OPT_TIMEOUT] = {"timeout", 0, "MS", "per-call timeout in milliseconds"},
    [OPT_KEY] = {"key", 0, "FILE",
                 "CurveZMQ client key file (as KV_CLIENT_KEY=FILE)"},
    [OPT_JSON] = {"json", 0, NULL, "print JSON instead of text"},
    [OPT_HEX] = {"hex", 0, NULL, "keys and values are hex on input and output"},
    [OPT_HELP] = {"help", 'h', NULL, "print this help and exit"},
    [OPT_IF_VERSION] = {"if-version", 0, "V",
                        "put/del: only if the key's version is V"},
    [OPT_IF_ABSENT] = {"if-absent", 0, NULL,
                       "put: only if the key does not exist"},
    [OPT_STALE] = {"stale", 0, NULL,
                   "get: any replica may answer (possibly stale)"},
    [OPT_PREFIX] = {"prefix", 0, "P", "scan: keys beginning with P"},
    [OPT_START] = {"start", 0, "S", "scan: keys >= S"},
    [OPT_END] = {"end", 0, "E", "scan: keys < E"},
    [OPT_LIMIT] = {"limit", 0, "N", "scan: at most N entries (0: all)"},
    [OPT_CLIENTS] = {"clients", 0, "N", "bench: concurrent clients (16)"},
    [OPT_THREADS] = {"threads", 0, "N",
                     "bench: threads carrying the clients (auto)"},
    [OPT_OPS] = {"ops", 0, "N", "bench: operations in total (100000)"},
    [OPT_VALUE_SIZE] = {"value-size", 0, "N", "bench: value bytes (100)"},
    [OPT_KEYS] = {"keys", 0, "N",
                  "bench: key space (100000; incr workloads: hot keys, 16)"},
    [OPT_WORKLOAD] = {"workload", 0, "W",
                      "bench: write, read, mixed, txn, incr-proc or "
                      "incr-rmw"},
    [OPT_TXN_KEYS] = {"txn-keys", 0, "K",
                      "bench txn: keys on the same shard, across two "
                      "shards, or both (same, cross, both)"},
    [OPT_LIST] = {"list", 0, NULL,
                  "txn: list the transactions in flight, per shard"},
    [OPT_ARG_FILE] = {"arg-file", 0, "FILE",
                      "call, call-all: the argument is FILE's bytes ('-': "
                      "stdin), instead of ARGs"},
    [OPT_AS_LIST] = {"as-list", 0, NULL,
                     "call, call-all: send the ARGs as a list even when "
                     "there is one"},
};

/* --- the parsed command line -------------------------------------------- */

struct command;

struct cli {
    const char *optval[OPT_COUNT]; /* argument of each given option */
    unsigned seen;                 /* BIT(opt) for each given option */
    const char **args; /* positional arguments after the command (room for
                          argc of them; owned by main) */
    size_t nargs;      /* how many were given */
    const char *cmdname;
    const struct command *cmd;
    const char *target;
    uint32_t timeout_ms; /* 0 = the handle's default */
    int json;
    int hex;
    kv *db;
};

/* A command: a row of the dispatch table. */
struct command {
    const char *name;
    int (*handler)(struct cli *c);
    size_t min_args, max_args;
    unsigned opts;  /* options accepted besides GLOBAL_OPTS */
    unsigned flags; /* CMD_* */
    const char *usage;
    const char *summary;
};

#define CMD_OPEN 1u /* the handler needs c->db opened on the target */

static int cmd_get(struct cli *c);
static int cmd_keygen(struct cli *c);
static int cmd_put(struct cli *c);
static int cmd_del(struct cli *c);
static int cmd_scan(struct cli *c);
static int cmd_txn(struct cli *c);
static int cmd_call(struct cli *c);
static int cmd_call_all(struct cli *c);
static int cmd_status(struct cli *c);
static int cmd_bench(struct cli *c);
static int cmd_help(struct cli *c);

static const struct command commands[] = {
    {"get", cmd_get, 1, 1, BIT(OPT_STALE), CMD_OPEN, "get KEY [--stale]",
     "print the value of KEY"},
    {"put", cmd_put, 2, 2, BIT(OPT_IF_VERSION) | BIT(OPT_IF_ABSENT), CMD_OPEN,
     "put KEY VALUE|- [--if-version V | --if-absent]",
     "write KEY (VALUE - reads stdin); print the new version"},
    {"del", cmd_del, 1, 1, BIT(OPT_IF_VERSION), CMD_OPEN,
     "del KEY [--if-version V]", "delete KEY"},
    {"keygen", cmd_keygen, 1, 1, 0, 0, "keygen FILE",
     "write a new CurveZMQ key pair to FILE (mode 0600, never replacing a "
     "file); print its public key"},
    {"scan", cmd_scan, 0, 0,
     BIT(OPT_PREFIX) | BIT(OPT_START) | BIT(OPT_END) | BIT(OPT_LIMIT) |
         BIT(OPT_STALE),
     CMD_OPEN, "scan [--prefix P] [--start S] [--end E] [--limit N] [--stale]",
     "print keys and values in key order"},
    {"txn", cmd_txn, 0, SIZE_MAX, BIT(OPT_LIST), CMD_OPEN,
     "txn [LINE...] | txn --list   (LINE: if-version KEY V | if-absent KEY | "
     "put KEY VALUE | del KEY; no LINE: lines from stdin)",
     "commit conditions and writes all or none; print the versions"},
    {"call", cmd_call, 2, SIZE_MAX, BIT(OPT_ARG_FILE) | BIT(OPT_AS_LIST),
     CMD_OPEN,
     "call NAME KEY [ARG...] [--as-list] | call NAME KEY --arg-file FILE   "
     "(no ARG: an empty argument; one: its bytes; several, --as-list, or "
     "mget/cas: a list)",
     "run procedure NAME on the shard of KEY; print its reply"},
    {"call-all", cmd_call_all, 1, SIZE_MAX,
     BIT(OPT_ARG_FILE) | BIT(OPT_AS_LIST), CMD_OPEN,
     "call-all NAME [ARG...] [--as-list] | call-all NAME --arg-file FILE",
     "run read-only procedure NAME on every shard; print the merged reply"},
    {"status", cmd_status, 0, 0, 0, CMD_OPEN, "status",
     "print nodes, shards and replicas; exit 4 if a node is down"},
    {"bench", cmd_bench, 0, 0,
     BIT(OPT_CLIENTS) | BIT(OPT_OPS) | BIT(OPT_VALUE_SIZE) | BIT(OPT_KEYS) |
         BIT(OPT_WORKLOAD) | BIT(OPT_THREADS) | BIT(OPT_TXN_KEYS),
     0,
     "bench [--clients N] [--ops N] [--value-size N] [--keys N] "
     "[--workload write|read|mixed|txn|incr-proc|incr-rmw] "
     "[--txn-keys same|cross|both] [--threads N]",
     "measure throughput and latency"},
    {"help", cmd_help, 0, 1, 0, 0, "help [COMMAND]", "print help"},
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

/* --- result codes --------------------------------------------------------- */

/* The stable symbolic name of a kv result code (see bench.h). */
const char *cli_code_name(int code)
{
    static const char *const names[] = {
        "KV_OK",        "KV_ENOTFOUND",    "KV_ENOTLEADER", "KV_ECONFLICT",
        "KV_ETIMEDOUT", "KV_EUNAVAILABLE", "KV_EINVAL",     "KV_ETOOBIG",
        "KV_EPROTO",    "KV_EIO",          "KV_ECORRUPT",   "KV_ENOMEM",
        "KV_EAUTH",     "KV_EOF",          "KV_EINTERNAL",  "KV_ENOPROC",
        "KV_EPROC",     "KV_EBUDGET",      "KV_ERANGE",
    };
    if (code > 0 || code < -(int)(sizeof names / sizeof names[0] - 1))
        return "KV_E?";
    return names[-code];
}

/* The exit code for a kv result code: the contract of docs/cli.md. */
static int exit_code_for(int code)
{
    switch (code) {
    case KV_OK:
        return EXIT_OKAY;
    case KV_ENOTFOUND:
        return EXIT_NOTFOUND;
    case KV_EINVAL:
    case KV_ETOOBIG:
        return EXIT_USAGE;
    case KV_ECONFLICT:
        return EXIT_CONFLICT;
    case KV_EUNAVAILABLE:
    case KV_ETIMEDOUT:
        return EXIT_UNAVAILABLE;
    default:
        return EXIT_OTHER;
    }
}

/* --- output helpers ----------------------------------------------------- */

/* Length of the valid UTF-8 sequence at P (N bytes left), or 0 when the
 * bytes there are not one (overlong forms, surrogates and code points above
 * U+10FFFF are not valid). */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    size_t len, i;
    uint32_t cp;

    if (p[0] < 0x80)
        return 1;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;
        cp = p[0] & 0x1fu;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        cp = p[0] & 0x0fu;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        cp = p[0] & 0x07u;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3fu);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* Whether the N bytes at P are valid UTF-8 text. */
static int utf8_valid(const void *p, size_t n)
{
    const unsigned char *s = p;
    size_t i = 0, len;

    while (i < n) {
        len = utf8_seq(s + i, n - i);
        if (len == 0)
            return 0;
        i += len;
    }
    return 1;
}

/* Prints the N bytes at P as lowercase hex. */
static void print_hex(FILE *out, const void *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *s = p;
    size_t i;

    for (i = 0; i < n; i++) {
        putc(digits[s[i] >> 4], out);
        putc(digits[s[i] & 15], out);
    }
}

/* Prints the N bytes at P as a JSON string with its quotes. Bytes that are
 * not valid UTF-8 become U+FFFD, so the output is always valid JSON (callers
 * that must keep every byte check utf8_valid() first and use hex). */
static void json_string(FILE *out, const void *p, size_t n)
{
    const unsigned char *s = p;
    size_t i = 0, len;

    putc('"', out);
    while (i < n) {
        unsigned char ch = s[i];
        len = utf8_seq(s + i, n - i);
        if (len == 0) {
            fputs("\\ufffd", out);
            i++;
            continue;
        }
        if (len > 1) {
            fwrite(s + i, 1, len, out);
            i += len;
            continue;
        }
        switch (ch) {
        case '"':
            fputs("\\\"", out);
            break;
        case '\\':
            fputs("\\\\", out);
            break;
        case '\n':
            fputs("\\n", out);
            break;
        case '\r':
            fputs("\\r", out);
            break;
        case '\t':
            fputs("\\t", out);
            break;
        default:
            if (ch < 0x20 || ch == 0x7f)
                fprintf(out, "\\u%04x", ch);
            else
                putc(ch, out);
            break;
        }
        i++;
    }
    putc('"', out);
}

/* Prints the JSON member for binary data: "NAME":"text" when the bytes are
 * UTF-8 text and --hex is off, else "NAME_hex":"hex digits". */
static void json_bytes(struct cli *c, const char *name, const void *p, size_t n)
{
    if (!c->hex && utf8_valid(p, n)) {
        fprintf(stdout, "\"%s\":", name);
        json_string(stdout, p, n);
    } else {
        fprintf(stdout, "\"%s_hex\":\"", name);
        print_hex(stdout, p, n);
        putc('"', stdout);
    }
}

/* Prints binary data in text mode: raw bytes, or hex with --hex. */
static void text_bytes(struct cli *c, const void *p, size_t n)
{
    if (c->hex)
        print_hex(stdout, p, n);
    else if (n > 0)
        fwrite(p, 1, n, stdout);
}

/* The detail worth printing for CODE: "" when DETAIL is NULL or only
 * repeats the code's name. */
static const char *error_detail(int code, const char *detail)
{
    if (detail == NULL || strcmp(detail, kv_strerror(code)) == 0)
        return "";
    return detail;
}

/* Prints the members of a JSON error object (without its braces): ok,
 * error, code and message (DETAIL, or "WHAT: NAME" when it is empty). */
static void json_error_members(const char *what, int code, const char *detail)
{
    printf("\"ok\":false,\"error\":\"%s\",\"code\":%d,\"message\":",
           cli_code_name(code), code);
    if (detail[0] != '\0') {
        json_string(stdout, detail, strlen(detail));
    } else {
        char msg[512];
        snprintf(msg, sizeof msg, "%s: %s", what, kv_strerror(code));
        json_string(stdout, msg, strlen(msg));
    }
}

/* Reports an error with kv code CODE about WHAT, DETAIL being the longer
 * story (may be NULL or ""). Text goes to stderr; with --json one object
 * goes to stdout. Returns the exit code for CODE. */
static int report(struct cli *c, const char *what, int code, const char *detail)
{
    detail = error_detail(code, detail);
    if (c->json) {
        putc('{', stdout);
        json_error_members(what, code, detail);
        fputs("}\n", stdout);
    } else if (detail[0] != '\0') {
        fprintf(stderr, "kvclient: %s: %s (%s)\n", what, kv_strerror(code),
                detail);
    } else {
        fprintf(stderr, "kvclient: %s: %s\n", what, kv_strerror(code));
    }
    return exit_code_for(code);
}

/* Reports a failed libkv call on the open handle. */
static int fail(struct cli *c, const char *what, int code)
{
    return report(c, what, code, c->db ? kv_errmsg(c->db) : NULL);
}

/* Reports a usage error (exit 2) with a printf-style message. */
__attribute__((format(printf, 2, 3))) static int
usage_error(struct cli *c, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->json) {
        report(c, "usage", KV_EINVAL, msg);
    } else {
        fprintf(stderr, "kvclient: %s\n", msg);
        fprintf(stderr, "Try 'kvclient --help'.\n");
    }
    return EXIT_USAGE;
}

/* --- input helpers ------------------------------------------------------ */

/* Parses S as a decimal integer in MIN..MAX: digits only, no sign, no
 * spaces, no trailing text, no overflow. Returns 0 or -1. */
static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    const char *p;

    if (s == NULL || *s == '\0')
        return -1;
    for (p = s; *p != '\0'; p++) {
        unsigned d;
        if (*p < '0' || *p > '9')
            return -1;
        d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* Parses the numeric option OPT into *out when given (else leaves *out).
 * Returns 0, or the usage exit code after reporting. */
static int opt_u64(struct cli *c, enum opt_id opt, uint64_t min, uint64_t max,
                   uint64_t *out)
{
    if (!(c->seen & BIT(opt)))
        return 0;
    if (parse_u64(c->optval[opt], min, max, out) != 0)
        return usage_error(c,
                           "invalid --%s '%s': expected an integer in "
                           "%llu..%llu",
                           optdefs[opt].name, c->optval[opt],
                           (unsigned long long)min, (unsigned long long)max);
    return 0;
}

/* The value of hex digit CH, or -1. */
static int hex_digit(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Decodes the hex text S (N chars; ASCII whitespace skipped when SKIP_WS)
 * into a malloc'd buffer *out of *outlen bytes (at least 1 byte allocated).
 * Returns KV_OK, KV_EINVAL for a bad digit or an odd count, KV_ENOMEM. */
static int hex_decode(const char *s, size_t n, int skip_ws, unsigned char **out,
                      size_t *outlen)
{
    unsigned char *buf;
    size_t i, m = 0;
    int hi = -1;

    buf = malloc(n / 2 + 1);
    if (buf == NULL)
        return KV_ENOMEM;
    for (i = 0; i < n; i++) {
        int d = hex_digit((unsigned char)s[i]);
        if (d < 0) {
            if (skip_ws &&
                (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r'))
                continue;
            goto fail_input;
        }
        if (hi < 0) {
            hi = d;
        } else {
            buf[m++] = (unsigned char)(hi << 4 | d);
            hi = -1;
        }
    }
    if (hi >= 0)
        goto fail_input;
    *out = buf;
    *outlen = m;
    return KV_OK;

fail_input:
    free(buf);
    return KV_EINVAL;
}

/* Binary data from the command line: points into argv, or owns a decoded
 * copy when --hex is on. */
struct bytes {
    const void *p;
    size_t n;
    unsigned char *owned;
};

/* Takes argument S (named WHAT in errors) as bytes: as is, or hex-decoded
 * with --hex. Returns 0, or the exit code after reporting. */
static int arg_bytes(struct cli *c, const char *what, const char *s,
                     struct bytes *b)
{
    int rc;

    b->owned = NULL;
    if (!c->hex) {
        b->p = s;
        b->n = strlen(s);
        return 0;
    }
    rc = hex_decode(s, strlen(s), 0, &b->owned, &b->n);
    if (rc == KV_EINVAL)
        return usage_error(c, "%s '%s' is not valid hex (--hex)", what, s);
    if (rc != KV_OK)
        return report(c, what, rc, NULL);
    b->p = b->owned;
    return 0;
}

/* Reads all of F, binary-safe, into a malloc'd *out of *outlen bytes (a
 * buffer is allocated even when F is empty). More than MAX bytes is KV_ETOOBIG.
 * Returns KV_OK, KV_ETOOBIG, KV_EIO (errno says why) or KV_ENOMEM. */
static int read_all(FILE *f, size_t max, unsigned char **out, size_t *outlen)
{
    unsigned char *buf = NULL, *nb;
    size_t len = 0, cap = 0, got;
    int rc;

    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            if (ncap > max + 1)
                ncap = max + 1;
            if (ncap <= cap) {
                rc = KV_ETOOBIG;
                goto fail_buf;
            }
            nb = realloc(buf, ncap);
            if (nb == NULL) {
                rc = KV_ENOMEM;
                goto fail_buf;
            }
            buf = nb;
            cap = ncap;
        }
        got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) {
                rc = KV_EIO;
                goto fail_buf;
            }
            break;
        }
    }
    if (len > max) {
        rc = KV_ETOOBIG;
        goto fail_buf;
    }
    *out = buf;
    *outlen = len;
    return KV_OK;

fail_buf:
    free(buf);
    return rc;
}

/* The value argument of put: S itself, hex with --hex, or stdin for "-"
 * (raw bytes, or hex text with whitespace ignored under --hex). Returns 0
 * or the exit code after reporting. */
static int value_bytes(struct cli *c, const char *s, struct bytes *b)
{
    unsigned char *raw;
    size_t len;
    int rc;

    if (strcmp(s, "-") != 0)
        return arg_bytes(c, "value", s, b);
    b->owned = NULL;
    rc = read_all(stdin, c->hex ? STDIN_MAX_HEX : STDIN_MAX_RAW, &raw, &len);
    if (rc == KV_ETOOBIG)
        return report(c, "read value from stdin", rc,
                      "more than the 64 MiB values can hold");
    if (rc != KV_OK)
        return report(c, "read value from stdin", rc,
                      rc == KV_EIO ? strerror(errno) : NULL);
    if (!c->hex) {
        b->owned = raw;
        b->p = raw ? (const void *)raw : "";
        b->n = len;
        return 0;
    }
    rc = hex_decode((const char *)raw, len, 1, &b->owned, &b->n);
    free(raw);
    if (rc == KV_EINVAL)
        return usage_error(c, "stdin is not valid hex (--hex)");
    if (rc != KV_OK)
        return report(c, "read value from stdin", rc, NULL);
    b->p = b->owned;
    return 0;
}

/* Per-call options common to every command, from --timeout. */
static kv_opts call_opts(const struct cli *c)
{
    kv_opts o = {0};
    o.timeout_ms = c->timeout_ms;
    return o;
}

/* Reads --if-version into o->if_version (1..2^64-1; 0 would mean "no
 * condition", so it is refused). Returns 0 or the exit code. */
static int opt_if_version(struct cli *c, kv_opts *o)
{
    uint64_t v = 0;
    int rc = opt_u64(c, OPT_IF_VERSION, 1, UINT64_MAX, &v);
    if (rc != 0)
        return rc;
    o->if_version = v;
    return 0;
}

/* --- commands ------------------------------------------------------------- */

/* get KEY: prints the value (and a newline), or a JSON object. With
 * --stale any replica of the key's shard may answer from its own copy. */
static int cmd_get(struct cli *c)
{
    struct bytes key;
    kv_opts o = call_opts(c);
    void *val = NULL;
    size_t vlen = 0;
    uint64_t version = 0;
    int rc, ret;

    o.stale = (c->seen & BIT(OPT_STALE)) != 0;
    ret = arg_bytes(c, "key", c->args[0], &key);
    if (ret != 0)
        return ret;
    rc = kv_get(c->db, key.p, key.n, &o, &val, &vlen, &version);
    if (rc != KV_OK) {
        ret = fail(c, "get", rc);
        goto out_key;
    }
    if (c->json) {
        fputs("{\"ok\":true,", stdout);
        json_bytes(c, "key", key.p, key.n);
        putc(',', stdout);
        json_bytes(c, "value", val, vlen);
        printf(",\"version\":%llu}\n", (unsigned long long)version);
    } else {
        text_bytes(c, val, vlen);
        putc('\n', stdout);
    }
    kv_free(val);
    ret = EXIT_OKAY;
out_key:
    free(key.owned);
    return ret;
}

/* put KEY VALUE: writes, prints the version it created. */
static int cmd_put(struct cli *c)
{
    struct bytes key, val;
    kv_opts o = call_opts(c);
    uint64_t version = 0;
    int rc, ret;

    if ((c->seen & BIT(OPT_IF_VERSION)) && (c->seen & BIT(OPT_IF_ABSENT)))
        return usage_error(c, "--if-version and --if-absent exclude each "
                              "other");
    ret = opt_if_version(c, &o);
    if (ret != 0)
        return ret;
    o.if_absent = (c->seen & BIT(OPT_IF_ABSENT)) != 0;
    ret = arg_bytes(c, "key", c->args[0], &key);
    if (ret != 0)
        return ret;
    ret = value_bytes(c, c->args[1], &val);
    if (ret != 0)
        goto out_key;
    rc = kv_put(c->db, key.p, key.n, val.p, val.n, &o, &version);
    if (rc != KV_OK) {
        ret = fail(c, "put", rc);
        goto out_val;
    }
    if (c->json) {
        fputs("{\"ok\":true,", stdout);
        json_bytes(c, "key", key.p, key.n);
        printf(",\"version\":%llu}\n", (unsigned long long)version);
    } else {
        printf("OK version %llu\n", (unsigned long long)version);
    }
    ret = EXIT_OKAY;
out_val:
    free(val.owned);
out_key:
    free(key.owned);
    return ret;
}

/* keygen FILE: a client's key pair (docs/security.md). Prints the public
 * key alone on stdout, so scripts can collect it. */
static int cmd_keygen(struct cli *c)
{
    char pub[KEYS_Z85_LEN + 1], err[512];
    int rc = keys_generate(c->args[0], pub, err, sizeof err);
    if (rc != KV_OK)
        return report(c, "keygen", rc, err);
    if (c->json)
        printf("{\"ok\":true,\"public_key\":\"%s\"}\n", pub);
    else
        printf("%s\n", pub);
    return EXIT_OKAY;
}

/* del KEY: deletes, prints OK. */
static int cmd_del(struct cli *c)
{
    struct bytes key;
    kv_opts o = call_opts(c);
    int rc, ret;

    ret = opt_if_version(c, &o);
    if (ret != 0)
        return ret;
    ret = arg_bytes(c, "key", c->args[0], &key);
    if (ret != 0)
        return ret;
    rc = kv_del(c->db, key.p, key.n, &o);
    if (rc != KV_OK) {
        ret = fail(c, "del", rc);
        goto out_key;
    }
    if (c->json) {
        fputs("{\"ok\":true,", stdout);
        json_bytes(c, "key", key.p, key.n);
        fputs("}\n", stdout);
    } else {
        fputs("OK\n", stdout);
    }
    ret = EXIT_OKAY;
out_key:
    free(key.owned);
    return ret;
}

/* scan: prints "key<TAB>value" lines, or one JSON object per entry. */
static int cmd_scan(struct cli *c)
{
    struct bytes prefix = {"", 0, NULL}, start = {"", 0, NULL},
                 end = {"", 0, NULL};
    kv_scan_opts so = {0};
    kv_opts o = call_opts(c);
    kv_iter *it = NULL;
    uint64_t limit = 0;
    int rc, ret;

    o.stale = (c->seen & BIT(OPT_STALE)) != 0;

    ret = opt_u64(c, OPT_LIMIT, 0, UINT64_MAX, &limit);
    if (ret != 0)
        return ret;
    if ((c->seen & BIT(OPT_PREFIX)) &&
        (ret = arg_bytes(c, "--prefix", c->optval[OPT_PREFIX], &prefix)) != 0)
        goto out_bounds;
    if ((c->seen & BIT(OPT_START)) &&
        (ret = arg_bytes(c, "--start", c->optval[OPT_START], &start)) != 0)
        goto out_bounds;
    if ((c->seen & BIT(OPT_END)) &&
        (ret = arg_bytes(c, "--end", c->optval[OPT_END], &end)) != 0)
        goto out_bounds;
    so.prefix = prefix.p;
    so.prefix_len = prefix.n;
    so.start = start.p;
    so.start_len = start.n;
    so.end = end.p;
    so.end_len = end.n;
    so.limit = limit;
    rc = kv_scan(c->db, &so, &o, &it);
    if (rc != KV_OK) {
        ret = fail(c, "scan", rc);
        goto out_bounds;
    }
    for (;;) {
        const void *k = NULL, *v = NULL;
        size_t klen = 0, vlen = 0;
        uint64_t version = 0;

        rc = kv_iter_next(it, &k, &klen, &v, &vlen, &version);
        if (rc == KV_EOF)
            break;
        if (rc != KV_OK) {
            ret = fail(c, "scan", rc);
            goto out_iter;
        }
        if (c->json) {
            putc('{', stdout);
            json_bytes(c, "key", k, klen);
            putc(',', stdout);
            json_bytes(c, "value", v, vlen);
            printf(",\"version\":%llu}\n", (unsigned long long)version);
        } else {
            text_bytes(c, k, klen);
            putc('\t', stdout);
            text_bytes(c, v, vlen);
            putc('\n', stdout);
        }
    }
    ret = EXIT_OKAY;
out_iter:
    kv_iter_free(it);
out_bounds:
    free(prefix.owned);
    free(start.owned);
    free(end.owned);
    return ret;
}

/* --- txn ------------------------------------------------------------------ */

/* A transaction script (docs/cli.md): one op per line, fields separated by
 * spaces or tabs. */
#define TXN_MAX_FIELDS 3

/* The keys written by a script, in order, for printing their versions. */
struct txn_writes {
    struct bytes *keys;
    size_t n, cap;
};

static void txn_writes_free(struct txn_writes *w)
{
    size_t i;

    for (i = 0; i < w->n; i++)
        free(w->keys[i].owned);
    free(w->keys);
}

/* Reports a failed transaction: nothing was committed, or (timeout,
 * unavailable) it is unknown whether it was. A message that already starts
 * with the code's name (a conflict's) is printed as it is. Returns the exit
 * code for CODE. */
static int txn_report(struct cli *c, const char *what, int code)
{
    const char *detail = c->db ? kv_errmsg(c->db) : "";
    const char *name = kv_strerror(code);
    int unknown = code == KV_ETIMEDOUT || code == KV_EUNAVAILABLE;

    if (c->json) {
        printf("{\"ok\":false,\"committed\":%s,\"error\":\"%s\",\"code\":%d,"
               "\"message\":",
               unknown ? "null" : "false", cli_code_name(code), code);
        if (detail[0] != '\0') {
            json_string(stdout, detail, strlen(detail));
        } else {
            char msg[512];
            snprintf(msg, sizeof msg, "%s: %s", what, name);
            json_string(stdout, msg, strlen(msg));
        }
        fputs("}\n", stdout);
        return exit_code_for(code);
    }
    if (strncmp(detail, name, strlen(name)) == 0)
        fprintf(stderr, "kvclient: %s: %s\n", what, detail);
    else
        return report(c, what, code, detail);
    return exit_code_for(code);
}

/* Takes field F (N bytes) of script line LINE as bytes (hex with --hex);
 * WHAT names it. Returns 0 or the usage exit code. */
static int txn_field(struct cli *c, size_t line, const char *what,
                     const char *f, size_t n, struct bytes *b)
{
    int rc;

    b->owned = NULL;
    if (!c->hex) {
        b->p = f;
        b->n = n;
        return 0;
    }
    rc = hex_decode(f, n, 0, &b->owned, &b->n);
    if (rc == KV_EINVAL)
        return usage_error(c,
                           "txn line %zu: %s '%.*s' is not valid hex (--hex)",
                           line, what, (int)(n > 64 ? 64 : n), f);
    if (rc != KV_OK)
        return report(c, "txn", rc, NULL);
    b->p = b->owned;
    return 0;
}

/* Parses script line LINE (S, N bytes, no newline) and adds its op to T;
 * the key of a write is kept in W. Blank lines and '#' comments add
 * nothing. Returns 0 or the exit code after reporting. */
static int txn_line(struct cli *c, kv_txn *t, struct txn_writes *w, size_t line,
                    const char *s, size_t n)
{
    static const char *const ops[] = {"if-version", "if-absent", "put", "del"};
    static const size_t nfields[] = {3, 2, 3, 2};
    static const char *const usage[] = {"if-version KEY V", "if-absent KEY",
                                        "put KEY VALUE", "del KEY"};
    const char *f[TXN_MAX_FIELDS + 1];
    size_t flen[TXN_MAX_FIELDS + 1], nf = 0, i, op;
    struct bytes key = {NULL, 0, NULL}, val = {"", 0, NULL};
    uint64_t version = 0;
    char what[48];
    int rc, ret;

    if (memchr(s, '\0', n) != NULL)
        return usage_error(c,
                           "txn line %zu: a NUL byte (give such keys and "
                           "values with --hex)",
                           line);
    if (memchr(s, '\n', n) != NULL)
        return usage_error(c,
                           "txn line %zu: an argument is one line, it "
                           "cannot hold a newline",
                           line);
    if (n > 0 && s[n - 1] == '\r')
        n--; /* CRLF scripts */
    for (i = 0; i < n;) {
        while (i < n && (s[i] == ' ' || s[i] == '\t'))
            i++;
        if (i == n)
            break;
        if (nf == TXN_MAX_FIELDS + 1)
            return usage_error(c, "txn line %zu: too many fields", line);
        f[nf] = s + i;
        while (i < n && s[i] != ' ' && s[i] != '\t')
            i++;
        flen[nf] = (size_t)(s + i - f[nf]);
        nf++;
    }
    if (nf == 0 || f[0][0] == '#')
        return 0;
    for (op = 0; op < sizeof ops / sizeof ops[0]; op++)
        if (strlen(ops[op]) == flen[0] && memcmp(f[0], ops[op], flen[0]) == 0)
            break;
    if (op == sizeof ops / sizeof ops[0])
        return usage_error(c,
                           "txn line %zu: unknown op '%.*s' (want if-version, "
                           "if-absent, put or del)",
                           line, (int)(flen[0] > 32 ? 32 : flen[0]), f[0]);
    if (nf != nfields[op])
        return usage_error(c, "txn line %zu: %s (%zu fields, want %zu)", line,
                           usage[op], nf, nfields[op]);
    if (op == 0) {
        char num[24];
        if (flen[2] >= sizeof num)
            flen[2] = sizeof num - 1; /* too long to be valid anyway */
        memcpy(num, f[2], flen[2]);
        num[flen[2]] = '\0';
        if (parse_u64(num, 1, UINT64_MAX, &version) != 0)
            return usage_error(c,
                               "txn line %zu: version '%s' is not an integer "
                               "in 1..%llu",
                               line, num, (unsigned long long)UINT64_MAX);
    }
    ret = txn_field(c, line, "key", f[1], flen[1], &key);
    if (ret != 0)
        return ret;
    if (op == 2 &&
        (ret = txn_field(c, line, "value", f[2], flen[2], &val)) != 0)
        goto out_key;
    switch (op) {
    case 0:
        rc = kv_txn_if_version(t, key.p, key.n, version);
        break;
    case 1:
        rc = kv_txn_if_absent(t, key.p, key.n);
        break;
    case 2:
        rc = kv_txn_put(t, key.p, key.n, val.p, val.n);
        break;
    default:
        rc = kv_txn_del(t, key.p, key.n);
        break;
    }
    if (rc != KV_OK) {
        snprintf(what, sizeof what, "txn line %zu", line);
        ret = txn_report(c, what, rc);
        goto out_val;
    }
    if (op >= 2) { /* a write: keep its key for the output */
        struct bytes *k;
        if (w->n == w->cap) {
            size_t cap = w->cap ? w->cap * 2 : 16;
            struct bytes *nk = realloc(w->keys, cap * sizeof *nk);
            if (nk == NULL) {
                ret = report(c, "txn", KV_ENOMEM, NULL);
                goto out_val;
            }
            w->keys = nk;
            w->cap = cap;
        }
        k = &w->keys[w->n];
        k->owned = malloc(key.n ? key.n : 1);
        if (k->owned == NULL) {
            ret = report(c, "txn", KV_ENOMEM, NULL);
            goto out_val;
        }
        memcpy(k->owned, key.p, key.n);
        k->p = k->owned;
        k->n = key.n;
        w->n++;
    }
    ret = 0;
out_val:
    free(val.owned);
out_key:
    free(key.owned);
    return ret;
}

/* Runs every line of the script TEXT (LEN bytes, from stdin). */
static int txn_script(struct cli *c, kv_txn *t, struct txn_writes *w,
                      const char *text, size_t len)
{
    size_t pos = 0, line = 0;
    int ret;

    while (pos < len) {
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl != NULL ? (size_t)(nl - s) : len - pos;
        pos += n + (nl != NULL);
        line++;
        ret = txn_line(c, t, w, line, s, n);
        if (ret != 0)
            return ret;
    }
    return 0;
}

/* txn [LINE...]: builds one transaction from the lines (arguments, or stdin
 * when there are none), commits it, and prints "committed" and the version
 * of each write; a failed condition exits 3 with nothing written. */
/* txn --list: what each shard's leader knows of cross-shard transactions
 * in flight: records on home shards, prepared parts on participants. */
static int txn_list(struct cli *c)
{
    size_t n = admin_node_count(c->db), i, j, k, up = 0, shown = 0;
    if (c->nargs) {
        return usage_error(c, "txn --list takes no lines");
    }
    if (c->json)
        fputs("{\"ok\":true,\"transactions\":[", stdout);
    else
        printf("%-6s %-11s %-32s %-5s %10s %s\n", "SHARD", "STATE", "TXN",
               "HOME", "AGE_MS", "KEYS");
    for (i = 0; i < n; i++) {
        Kv__StatusResult *st = NULL;
        if (admin_status(c->db, i,
                         c->timeout_ms ? c->timeout_ms : STATUS_TIMEOUT_MS,
                         &st) != KV_OK)
            continue;
        up++;
        for (j = 0; j < st->n_shard_info; j++) {
            const Kv__ShardInfo *si = st->shard_info[j];
            if (!si->role || strcmp(si->role, "leader") != 0)
                continue;
            for (k = 0; k < si->n_txns; k++) {
                const Kv__TxnInfo *t = si->txns[k];
                char hex[2 * 16 + 1] = "";
                for (size_t b = 0; b < t->txn_id.len && b < 16; b++)
                    snprintf(hex + 2 * b, 3, "%02x", t->txn_id.data[b]);
                if (c->json)
                    printf("%s{\"shard\":%u,\"txn\":\"%s\",\"state\":",
                           shown ? "," : "", si->shard, hex);
                if (c->json) {
                    json_string(stdout, t->state, strlen(t->state));
                    printf(",\"home\":%u,\"age_ms\":%lld,\"deadline_ms\":"
                           "%llu,\"keys\":%llu}",
                           t->home, (long long)t->age_ms,
                           (unsigned long long)t->deadline_ms,
                           (unsigned long long)t->keys);
                } else {
                    printf("%-6u %-11s %-32s %-5u %10lld %llu\n", si->shard,
                           t->state, hex, t->home, (long long)t->age_ms,
                           (unsigned long long)t->keys);
                }
                shown++;
            }
        }
        kv__status_result__free_unpacked(st, NULL);
    }
    if (c->json)
        printf("],\"nodes_up\":%zu,\"nodes\":%zu}\n", up, n);
    else if (up < n)
        printf("(%zu of %zu nodes did not answer: their shards are not "
               "listed)\n",
               n - up, n);
    return up == n ? EXIT_OKAY : EXIT_UNAVAILABLE;
}

static int cmd_txn(struct cli *c)
{
    if (c->seen & BIT(OPT_LIST))
        return txn_list(c);
    struct txn_writes w = {NULL, 0, 0};
    kv_opts o = call_opts(c);
    kv_txn *t = NULL;
    unsigned char *text = NULL;
    uint64_t *versions = NULL;
    size_t nv = 0, i;
    int rc, ret = 0;

    if (c->nargs == 0) {
        size_t len = 0;
        rc = read_all(stdin, STDIN_MAX_HEX, &text, &len);
        if (rc != KV_OK)
            return report(c, "read the transaction from stdin", rc,
                          rc == KV_ETOOBIG ? "more than 192 MiB"
                          : rc == KV_EIO   ? strerror(errno)
                                           : NULL);
        rc = kv_txn_begin(c->db, &o, &t);
        if (rc != KV_OK) {
            ret = fail(c, "txn", rc);
            goto out;
        }
        ret = txn_script(c, t, &w, (const char *)text, len);
    } else {
        rc = kv_txn_begin(c->db, &o, &t);
        if (rc != KV_OK) {
            ret = fail(c, "txn", rc);
            goto out;
        }
        for (i = 0; i < c->nargs && ret == 0; i++)
            ret = txn_line(c, t, &w, i + 1, c->args[i], strlen(c->args[i]));
    }
    if (ret != 0) {
        kv_txn_abort(t);
        goto out;
    }
    rc = kv_txn_commit(t, &versions, &nv);
    if (rc != KV_OK) {
        ret = txn_report(c, "txn", rc);
        goto out;
    }
    if (nv != w.n) { /* defensive: one version per write */
        ret = report(c, "txn", KV_EINTERNAL, "versions do not match writes");
        goto out;
    }
    if (c->json) {
        fputs("{\"ok\":true,\"committed\":true,\"writes\":[", stdout);
        for (i = 0; i < nv; i++) {
            fputs(i ? ",{" : "{", stdout);
            json_bytes(c, "key", w.keys[i].p, w.keys[i].n);
            printf(",\"version\":%llu}", (unsigned long long)versions[i]);
        }
        fputs("]}\n", stdout);
    } else {
        fputs("committed\n", stdout);
        for (i = 0; i < nv; i++) {
            text_bytes(c, w.keys[i].p, w.keys[i].n);
            printf(" %llu\n", (unsigned long long)versions[i]);
        }
    }
    ret = EXIT_OKAY;
out:
    kv_free(versions);
    txn_writes_free(&w);
    free(text);
    return ret;
}

/* --- call, call-all ----------------------------------------------------- */

/* Reads the argument of --arg-file FILE ("-": stdin) into B: the file's
 * bytes, or with --hex its hex text decoded (whitespace ignored). Returns 0
 * or the exit code after reporting. */
static int arg_file(struct cli *c, struct bytes *b)
{
    const char *path = c->optval[OPT_ARG_FILE];
    int is_stdin = strcmp(path, "-") == 0;
    unsigned char *raw = NULL;
    size_t len = 0;
    char what[300];
    FILE *f;
    int rc, err;

    b->owned = NULL;
    snprintf(what, sizeof what, "read --arg-file %.256s", path);
    f = is_stdin ? stdin : fopen(path, "rb");
    if (f == NULL)
        return report(c, what, KV_EIO, strerror(errno));
    rc = read_all(f, c->hex ? STDIN_MAX_HEX : STDIN_MAX_RAW, &raw, &len);
    err = errno;
    if (!is_stdin)
        fclose(f);
    if (rc != KV_OK)
        return report(c, what, rc,
                      rc == KV_ETOOBIG ? "more than 64 MiB"
                      : rc == KV_EIO   ? strerror(err)
                                       : NULL);
    if (!c->hex) {
        b->owned = raw;
        b->p = raw;
        b->n = len;
        return 0;
    }
    rc = hex_decode((const char *)raw, len, 1, &b->owned, &b->n);
    free(raw);
    if (rc == KV_EINVAL)
        return usage_error(c, "--arg-file %s is not valid hex (--hex)", path);
    if (rc != KV_OK)
        return report(c, what, rc, NULL);
    b->p = b->owned;
    return 0;
}

/* The argument of call and call-all from the positional arguments from
 * index FIRST on, or from --arg-file: none is an empty argument, one is
 * its bytes, several (or any number with --as-list, or for the built-ins
 * that take a list: mget, cas) are a list (kvproc.h: each a 4-byte
 * big-endian length and the bytes). With --hex each ARG is hex. Returns 0
 * or the exit code after reporting; B->owned is then NULL or to be freed. */
static int call_arg(struct cli *c, const char *name, size_t first,
                    struct bytes *b)
{
    bool as_list = (c->seen & BIT(OPT_AS_LIST)) || strcmp(name, "mget") == 0 ||
                   strcmp(name, "cas") == 0;
    size_t n = c->nargs - first, i, total = 0;
    struct bytes item;
    unsigned char *p;
    int ret;

    b->p = "";
    b->n = 0;
    b->owned = NULL;
    if (c->seen & BIT(OPT_ARG_FILE)) {
        if (n > 0)
            return usage_error(c, "give the argument as ARGs or with "
                                  "--arg-file, not both");
        if (c->seen & BIT(OPT_AS_LIST))
            return usage_error(c, "--as-list encodes ARGs; a file is "
                                  "sent as it is");
        return arg_file(c, b);
    }
    if (n == 0)
        return 0; /* also an empty list */
    if (n == 1 && !as_list)
        return arg_bytes(c, "argument", c->args[first], b);
    for (i = first; i < c->nargs; i++) {
        size_t len = strlen(c->args[i]);
        if (c->hex)
            len /= 2; /* checked when decoded below */
        if (len >= KV_LIST_MISSING || total > SIZE_MAX - 4 - len)
            return report(c, "call", KV_ETOOBIG, "an argument is too long");
        total += 4 + len;
    }
    b->owned = malloc(total);
    if (b->owned == NULL)
        return report(c, "call", KV_ENOMEM, NULL);
    p = b->owned;
    for (i = first; i < c->nargs; i++) {
        ret = arg_bytes(c, "argument", c->args[i], &item);
        if (ret != 0)
            goto fail_list;
        if (item.n > total - (size_t)(p - b->owned) - 4) { /* defensive */
            free(item.owned);
            ret = report(c, "call", KV_EINTERNAL, "list size");
            goto fail_list;
        }
        p[0] = (unsigned char)(item.n >> 24);
        p[1] = (unsigned char)(item.n >> 16);
        p[2] = (unsigned char)(item.n >> 8);
        p[3] = (unsigned char)item.n;
        if (item.n > 0)
            memcpy(p + 4, item.p, item.n);
        p += 4 + item.n;
        free(item.owned);
    }
    b->p = b->owned;
    b->n = (size_t)(p - b->owned);
    return 0;

fail_list:
    free(b->owned);
    b->owned = NULL;
    return ret;
}

/* Whether the N bytes at P are printable text: valid UTF-8 without control
 * characters other than tab, newline and carriage return. */
static int printable_text(const void *p, size_t n)
{
    const unsigned char *s = p;
    size_t i;

    for (i = 0; i < n; i++)
        if ((s[i] < 0x20 && s[i] != '\t' && s[i] != '\n' && s[i] != '\r') ||
            s[i] == 0x7f)
            return 0;
    return utf8_valid(p, n);
}

/* Checks whether the N bytes at P are a non-empty list (kvproc.h) to the
 * last byte. Returns the number of items (0: not a list) and in *TEXT
 * whether every present item is UTF-8 text. */
static size_t list_items(const void *p, size_t n, int *text)
{
    const void *cur = p, *item;
    size_t left = n, ilen, count = 0;
    int rc;

    *text = 1;
    if (n == 0)
        return 0;
    while ((rc = kv_list_next(&cur, &left, &item, &ilen)) == KV_OK) {
        count++;
        if (item != NULL && !utf8_valid(item, ilen))
            *text = 0;
    }
    return rc == KV_EOF ? count : 0;
}

/* Prints the JSON members of a reply R (N bytes), each with its leading
 * comma: "reply" (or "reply_hex", as json_bytes does) and, when the reply
 * is a list, its items: "items" (strings, null for a missing item) when
 * every item is UTF-8 text and --hex is off, else "items_hex". */
static void json_reply(struct cli *c, const void *r, size_t n)
{
    const void *cur = r, *item;
    size_t left = n, ilen, i = 0;
    int text;

    putc(',', stdout);
    json_bytes(c, "reply", r, n);
    if (list_items(r, n, &text) == 0)
        return;
    text = text && !c->hex;
    fputs(text ? ",\"items\":[" : ",\"items_hex\":[", stdout);
    while (kv_list_next(&cur, &left, &item, &ilen) == KV_OK) {
        if (i++ > 0)
            putc(',', stdout);
        if (item == NULL) {
            fputs("null", stdout);
        } else if (text) {
            json_string(stdout, item, ilen);
        } else {
            putc('"', stdout);
            print_hex(stdout, item, ilen);
            putc('"', stdout);
        }
    }
    putc(']', stdout);
}

/* Prints a reply R (N bytes) as text: its bytes as they are, and a newline
 * when they are printable text; with --hex, hex digits and a newline. */
static void text_reply(struct cli *c, const void *r, size_t n)
{
    text_bytes(c, r, n);
    if (c->hex || printable_text(r, n))
        putc('\n', stdout);
}

/* Prints the outcome of a call of NAME: code RC, and the reply R (N bytes;
 * R NULL: none) the procedure gave, which comes with an error too (cas's
 * current value). Returns the exit code. */
static int call_output(struct cli *c, const char *name, int rc, const void *r,
                       size_t n)
{
    char what[100];

    snprintf(what, sizeof what, "%s %.64s", c->cmd->name, name);
    if (rc == KV_OK) {
        if (c->json) {
            fputs("{\"ok\":true", stdout);
            json_reply(c, r, n);
            fputs("}\n", stdout);
        } else {
            text_reply(c, r, n);
        }
        return EXIT_OKAY;
    }
    if (r == NULL)
        return fail(c, what, rc);
    if (c->json) {
        putc('{', stdout);
        json_error_members(what, rc, error_detail(rc, kv_errmsg(c->db)));
        json_reply(c, r, n);
        fputs("}\n", stdout);
        return exit_code_for(rc);
    }
    text_reply(c, r, n);
    fflush(stdout);
    return fail(c, what, rc);
}

/* call NAME KEY [ARG...]: runs a procedure on KEY's shard (kv_call). */
static int cmd_call(struct cli *c)
{
    struct bytes key, arg;
    kv_opts o = call_opts(c);
    void *reply = NULL;
    size_t rlen = 0;
    int rc, ret;

    ret = arg_bytes(c, "key", c->args[1], &key);
    if (ret != 0)
        return ret;
    ret = call_arg(c, c->args[0], 2, &arg);
    if (ret != 0)
        goto out_key;
    rc = kv_call(c->db, c->args[0], key.p, key.n, arg.p, arg.n, &o, &reply,
                 &rlen);
    ret = call_output(c, c->args[0], rc, reply, rlen);
    kv_free(reply);
    free(arg.owned);
out_key:
    free(key.owned);
    return ret;
}

/* call-all NAME [ARG...]: runs a read-only procedure on every shard
 * (kv_call_all) and prints the merged reply. */
static int cmd_call_all(struct cli *c)
{
    struct bytes arg;
    kv_opts o = call_opts(c);
    void *reply = NULL;
    size_t rlen = 0;
    int rc, ret;

    ret = call_arg(c, c->args[0], 1, &arg);
    if (ret != 0)
        return ret;
    rc = kv_call_all(c->db, c->args[0], arg.p, arg.n, &o, &reply, &rlen);
    ret = call_output(c, c->args[0], rc, reply, rlen);
    kv_free(reply);
    free(arg.owned);
    return ret;
}

/* --- status --------------------------------------------------------------- */

/* Members shown per shard: a leader listing more is cut (nothing a node
 * says is trusted for sizes). */
#define MAX_MEMBERS 64

/* What `status` learned about one shard, merged over the nodes' answers. */
struct shard_view {
    uint32_t leader;
    int leader_rank; /* 0 unknown, 1 said by some node, 2 said by itself */
    int keys_rank;   /* 0 unknown, 1 from a holder, 2 from the leader */
    uint64_t keys;
    uint64_t applied;
    /* The answer of the node that says it leads the shard with the highest
     * term (NULL when none does), and that node's id. The answer belongs to
     * the status replies, which outlive the view. */
    const Kv__ShardInfo *lead;
    uint32_t lead_id;
};

/* One member of a shard, as `status` shows it. */
struct member_view {
    uint32_t id;
    int up;           /* its node answered */
    const char *role; /* its own answer; NULL when down or not reported */
    int has_applied;  /* its own answer */
    uint64_t applied;
    int installing; /* its own answer: it is putting a snapshot in place */
    int has_match;  /* the leader reported it: match, active and lag are set */
    uint64_t match;
    int active;
    uint64_t lag; /* the leader's last index minus MATCH */
};

/* Whether the shard answer SI says its node leads the shard. */
static int says_leader(const Kv__ShardInfo *si)
{
    return si->local && si->role != NULL && strcmp(si->role, "leader") == 0;
}

/* Merges node answer ST into the shard table VIEW (NSHARDS rows); EMBEDDED
 * says the answer is the local engine's. Shard numbers from the node are
 * checked against the table, never trusted. */
static void merge_status(const Kv__StatusResult *st, struct shard_view *view,
                         uint32_t nshards, int embedded)
{
    size_t j;

    for (j = 0; j < st->n_shard_info; j++) {
        const Kv__ShardInfo *si = st->shard_info[j];
        struct shard_view *sv;
        int self;

        if (si == NULL || si->shard >= nshards)
            continue;
        sv = &view[si->shard];
        if (embedded && si->local) {
            /* The one local engine (node 0) serves every shard. */
            sv->leader = st->node_id;
            sv->leader_rank = 2;
        }
        self = si->leader != 0 && si->leader == st->node_id;
        if (si->leader != 0 && sv->leader_rank < (self ? 2 : 1)) {
            sv->leader = si->leader;
            sv->leader_rank = self ? 2 : 1;
        }
        if (si->local && sv->keys_rank < (self ? 2 : 1)) {
            sv->keys = si->keys;
            sv->applied = si->applied;
            sv->keys_rank = self ? 2 : 1;
        }
        /* Two nodes may both say they lead (an old leader cut off from the
         * others has not noticed yet): the higher term is the real one. */
        if (!embedded && says_leader(si) &&
            (sv->lead == NULL || si->term > sv->lead->term)) {
            sv->lead = si;
            sv->lead_id = st->node_id;
        }
    }
}

/* Once every answer is merged: the agreed leader's answer decides the
 * shard's node, keys and applied version. */
static void settle_view(struct shard_view *view, uint32_t nshards)
{
    uint32_t s;

    for (s = 0; s < nshards; s++) {
        struct shard_view *sv = &view[s];
        if (sv->lead == NULL)
            continue;
        sv->leader = sv->lead_id;
        sv->leader_rank = 2;
        sv->keys = sv->lead->keys;
        sv->applied = sv->lead->applied;
        sv->keys_rank = 2;
    }
}

/* The answer about SHARD in ST, or NULL. */
static const Kv__ShardInfo *shard_info_of(const Kv__StatusResult *st,
                                          uint32_t shard)
{
    size_t j;

    if (st == NULL)
        return NULL;
    if (shard < st->n_shard_info && st->shard_info[shard] != NULL &&
        st->shard_info[shard]->shard == shard)
        return st->shard_info[shard]; /* the usual layout: row s is shard s */
    for (j = 0; j < st->n_shard_info; j++)
        if (st->shard_info[j] != NULL && st->shard_info[j]->shard == shard)
            return st->shard_info[j];
    return NULL;
}

/* The index of node ID among the handle's N nodes, or N. */
static size_t node_index_of(kv *db, size_t n, uint32_t id)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (admin_node_id(db, i) == id)
            return i;
    return n;
}

/* Fills M (room for MAX_MEMBERS) with the members of SHARD, sorted by id,
 * and returns how many: those its leader reports (with their match index),
 * or without a leader the static placement (shard s on the nodes s, s+1,
 * ..., s+R-1 mod N, in the handle's node order, which is by id). Each
 * member's role and applied index are its own node's answer. */
static size_t shard_members(struct cli *c, size_t n, Kv__StatusResult **sts,
                            const int *rcs, const Kv__StatusResult *any,
                            const struct shard_view *sv, uint32_t shard,
                            struct member_view *m)
{
    const Kv__ShardInfo *lead = sv->lead;
    size_t k = 0, i, j;
    uint64_t top = 0, own = 0;
    int has_own = 0;

    if (lead != NULL) {
        for (i = 0; i < lead->n_members && k < MAX_MEMBERS; i++) {
            const Kv__MemberInfo *mi = lead->members[i];
            if (mi == NULL)
                continue;
            for (j = 0; j < k && m[j].id != mi->id; j++)
                ;
            if (j < k)
                continue; /* listed twice: the first one counts */
            memset(&m[k], 0, sizeof m[k]);
            m[k].id = mi->id;
            m[k].has_match = 1;
            m[k].match = mi->match;
            m[k].active = mi->active;
            if (mi->match > top)
                top = mi->match;
            if (mi->id == sv->lead_id) {
                own = mi->match;
                has_own = 1;
            }
            k++;
        }
    } else if (any != NULL && n > 0) {
        uint64_t r = any->replicas < n ? any->replicas : n;
        for (i = 0; i < r && k < MAX_MEMBERS; i++) {
            memset(&m[k], 0, sizeof m[k]);
            m[k].id = admin_node_id(c->db, (size_t)((shard + i) % n));
            k++;
        }
    }
    if (has_own)
        top = own; /* the leader's own match is its last index */
    for (i = 0; i < k; i++) {
        size_t idx = node_index_of(c->db, n, m[i].id);
        if (idx < n && rcs[idx] == KV_OK) {
            const Kv__ShardInfo *si = shard_info_of(sts[idx], shard);
            m[i].up = 1;
            if (si != NULL && si->local) {
                m[i].role = si->role;
                m[i].has_applied = 1;
                m[i].applied = si->applied;
                m[i].installing = si->installing;
            }
        }
        if (m[i].has_match)
            m[i].lag = top > m[i].match ? top - m[i].match : 0;
    }
    for (i = 1; i < k; i++) { /* insertion sort by id: k is small */
        struct member_view t = m[i];
        for (j = i; j > 0 && m[j - 1].id > t.id; j--)
            m[j] = m[j - 1];
        m[j] = t;
    }
    return k;
}

/* A role as a node reported it, fit for a terminal: lowercase letters only
 * (anything else is shown as "?"). */
static const char *role_text(const char *role)
{
    size_t i;

    if (role == NULL || role[0] == '\0')
        return "-";
    for (i = 0; role[i] != '\0'; i++)
        if (i >= 12 || role[i] < 'a' || role[i] > 'z')
            return "?";
    return role;
}

/* Prints uptime MS as "1d02h03m04s"-style text into BUF. */
static void format_uptime(uint64_t ms, char *buf, size_t len)
{
    uint64_t s = ms / 1000;
    unsigned long long d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60,
                       sec = s % 60;

    if (d > 0)
        snprintf(buf, len, "%llud%02lluh%02llum", d, h, m);
    else if (h > 0)
        snprintf(buf, len, "%lluh%02llum%02llus", h, m, sec);
    else if (m > 0)
        snprintf(buf, len, "%llum%02llus", m, sec);
    else
        snprintf(buf, len, "%llu.%llus", sec,
                 (unsigned long long)(ms % 1000 / 100));
}

/* Writes V into BUF (LEN bytes) when HAS, else "-". Returns BUF. */
static const char *num_or_dash(int has, uint64_t v, char *buf, size_t len)
{
    if (has)
        snprintf(buf, len, "%llu", (unsigned long long)v);
    else
        snprintf(buf, len, "-");
    return buf;
}

/* Prints the members of every shard (text): one line per member. */
static void print_members_text(struct cli *c, size_t n, Kv__StatusResult **sts,
                               const int *rcs, const Kv__StatusResult *any,
                               const struct shard_view *view, uint32_t nshards)
{
    struct member_view m[MAX_MEMBERS];
    uint32_t s;
    size_t k, i;

    printf("\n%-6s %-6s %-12s %-10s %-10s %-10s %s\n", "SHARD", "MEMBER",
           "ROLE", "MATCH", "APPLIED", "LAG", "NOTE");
    for (s = 0; s < nshards; s++) {
        k = shard_members(c, n, sts, rcs, any, &view[s], s, m);
        for (i = 0; i < k; i++) {
            char match[24], applied[24], lag[24];
            const char *role = m[i].up ? role_text(m[i].role) : "down";
            const char *note = "";
            if (m[i].installing)
                note = "installing snapshot";
            else if (m[i].has_match && !m[i].active)
                note = "inactive";
            printf("%-6u %-6u %-12s %-10s %-10s %-10s %s\n", (unsigned)s,
                   (unsigned)m[i].id, role,
                   num_or_dash(m[i].has_match, m[i].match, match, sizeof match),
                   num_or_dash(m[i].has_applied, m[i].applied, applied,
                               sizeof applied),
                   num_or_dash(m[i].has_match, m[i].lag, lag, sizeof lag),
                   note);
        }
    }
}

/* Prints the status table (text) of N nodes and NSHARDS shards. */
static void print_status_text(struct cli *c, size_t n, Kv__StatusResult **sts,
                              const int *rcs, const Kv__StatusResult *any,
                              const struct shard_view *view, uint32_t nshards)
{
    size_t i;
    uint32_t s;
    size_t up = 0;

    for (i = 0; i < n; i++)
        up += rcs[i] == KV_OK;
    if (any != NULL)
        printf("cluster %s: %zu/%zu nodes up, %u shards, %u replicas\n",
               any->cluster, up, n, (unsigned)any->shards,
               (unsigned)any->replicas);
    else
        printf("cluster ?: 0/%zu nodes up\n", n);
    printf("\n%-6s %-28s %-5s %-10s %-10s %s\n", "NODE", "ADDRESS", "STATE",
           "UPTIME", "REQUESTS", "NOTE");
    for (i = 0; i < n; i++) {
        char up_s[32] = "-", req[24] = "-", clock[64];
        const char *note = "";
        if (rcs[i] == KV_OK) {
            format_uptime(sts[i]->uptime_ms, up_s, sizeof up_s);
            snprintf(req, sizeof req, "%llu",
                     (unsigned long long)sts[i]->requests);
            if (sts[i]->node_id != admin_node_id(c->db, i)) {
                note = "answers with another node id";
            } else if (sts[i]->peer_clock_ahead_ms >= CLOCK_NOTE_MS) {
                snprintf(clock, sizeof clock, "clock %.1fs behind node %u",
                         (double)sts[i]->peer_clock_ahead_ms / 1000.0,
                         (unsigned)sts[i]->peer_clock_ahead_node);
                note = clock;
            }
        } else {
            note = kv_strerror(rcs[i]);
        }
        printf("%-6u %-28s %-5s %-10s %-10s %s\n",
               (unsigned)admin_node_id(c->db, i), admin_node_addr(c->db, i),
               rcs[i] == KV_OK ? "up" : "down", up_s, req, note);
    }
    if (nshards == 0)
        return;
    printf("\n%-6s %-6s %-10s %-10s %-8s %-10s %s\n", "SHARD", "NODE", "KEYS",
           "APPLIED", "TERM", "COMMIT", "NOTE");
    for (s = 0; s < nshards; s++) {
        char node[16] = "-", keys[24] = "-", applied[24] = "-", term[24],
             commit[24];
        const Kv__ShardInfo *lead = view[s].lead;
        if (view[s].leader_rank > 0)
            snprintf(node, sizeof node, "%u", (unsigned)view[s].leader);
        if (view[s].keys_rank > 0) {
            snprintf(keys, sizeof keys, "%llu",
                     (unsigned long long)view[s].keys);
            snprintf(applied, sizeof applied, "%llu",
                     (unsigned long long)view[s].applied);
        }
        printf(
            "%-6u %-6s %-10s %-10s %-8s %-10s %s\n", (unsigned)s, node, keys,
            applied,
            num_or_dash(lead != NULL, lead ? lead->term : 0, term, sizeof term),
            num_or_dash(lead != NULL, lead ? lead->commit : 0, commit,
                        sizeof commit),
            lead != NULL || admin_is_embedded(c->db) ? "" : "no leader");
    }
    if (!admin_is_embedded(c->db))
        print_members_text(c, n, sts, rcs, any, view, nshards);
}

/* Prints the replication fields of shard S's JSON object (after its
 * existing fields, each with its leading comma). */
static void print_shard_repl_json(struct cli *c, size_t n,
                                  Kv__StatusResult **sts, const int *rcs,
                                  const Kv__StatusResult *any,
                                  const struct shard_view *sv, uint32_t s)
{
    struct member_view m[MAX_MEMBERS];
    size_t k = 0, i;

    if (sv->lead != NULL)
        printf(",\"leader\":%u,\"term\":%llu,\"commit\":%llu",
               (unsigned)sv->lead_id, (unsigned long long)sv->lead->term,
               (unsigned long long)sv->lead->commit);
    else
        fputs(",\"leader\":null,\"term\":null,\"commit\":null", stdout);
    if (!admin_is_embedded(c->db))
        k = shard_members(c, n, sts, rcs, any, sv, s, m);
    fputs(",\"members\":[", stdout);
    for (i = 0; i < k; i++) {
        printf("%s{\"id\":%u,\"up\":%s,\"role\":", i ? "," : "",
               (unsigned)m[i].id, m[i].up ? "true" : "false");
        if (m[i].role != NULL)
            json_string(stdout, m[i].role, strlen(m[i].role));
        else
            fputs("null", stdout);
        if (m[i].has_applied)
            printf(",\"applied\":%llu,\"installing\":%s",
                   (unsigned long long)m[i].applied,
                   m[i].installing ? "true" : "false");
        else
            fputs(",\"applied\":null,\"installing\":null", stdout);
        if (m[i].has_match)
            printf(",\"match\":%llu,\"lag\":%llu,\"active\":%s}",
                   (unsigned long long)m[i].match, (unsigned long long)m[i].lag,
                   m[i].active ? "true" : "false");
        else
            fputs(",\"match\":null,\"lag\":null,\"active\":null}", stdout);
    }
    putc(']', stdout);
}

/* Prints the status as one JSON object. */
static void print_status_json(struct cli *c, size_t n, Kv__StatusResult **sts,
                              const int *rcs, const Kv__StatusResult *any,
                              const struct shard_view *view, uint32_t nshards,
                              int all_up)
{
    size_t i;
    uint32_t s;

    printf("{\"ok\":%s,\"cluster\":", all_up ? "true" : "false");
    if (any != NULL) {
        json_string(stdout, any->cluster, strlen(any->cluster));
        printf(",\"shard_count\":%u,\"replicas\":%u", (unsigned)any->shards,
               (unsigned)any->replicas);
    } else {
        fputs("null,\"shard_count\":null,\"replicas\":null", stdout);
    }
    fputs(",\"nodes\":[", stdout);
    for (i = 0; i < n; i++) {
        const char *addr = admin_node_addr(c->db, i);
        printf("%s{\"id\":%u,\"address\":", i ? "," : "",
               (unsigned)admin_node_id(c->db, i));
        json_string(stdout, addr, strlen(addr));
        if (rcs[i] != KV_OK) {
            printf(",\"up\":false,\"error\":\"%s\"}", cli_code_name(rcs[i]));
            continue;
        }
        printf(",\"up\":true,\"uptime_ms\":%llu,\"requests\":%llu,"
               "\"bad_frames\":%llu,\"sessions_expired\":%llu,"
               "\"snapshots_installed\":%llu,"
               "\"peer_clock_ahead_ms\":%llu,\"peer_clock_ahead_node\":",
               (unsigned long long)sts[i]->uptime_ms,
               (unsigned long long)sts[i]->requests,
               (unsigned long long)sts[i]->bad_frames,
               (unsigned long long)sts[i]->sessions_expired,
               (unsigned long long)sts[i]->snapshots_installed,
               (unsigned long long)sts[i]->peer_clock_ahead_ms);
        if (sts[i]->peer_clock_ahead_node)
            printf("%u}", (unsigned)sts[i]->peer_clock_ahead_node);
        else
            fputs("null}", stdout);
    }
    fputs("],\"shards\":[", stdout);
    for (s = 0; s < nshards; s++) {
        printf("%s{\"shard\":%u,\"node\":", s ? "," : "", (unsigned)s);
        if (view[s].leader_rank > 0)
            printf("%u", (unsigned)view[s].leader);
        else
            fputs("null", stdout);
        if (view[s].keys_rank > 0)
            printf(",\"keys\":%llu,\"applied\":%llu",
                   (unsigned long long)view[s].keys,
                   (unsigned long long)view[s].applied);
        else
            fputs(",\"keys\":null,\"applied\":null", stdout);
        print_shard_repl_json(c, n, sts, rcs, any, &view[s], s);
        putc('}', stdout);
    }
    fputs("]}\n", stdout);
}

/* status: asks every node, prints nodes, shards and their replicas; exit 4
 * if any node is down. */
static int cmd_status(struct cli *c)
{
    size_t n = admin_node_count(c->db), i, up = 0;
    Kv__StatusResult **sts = NULL;
    const Kv__StatusResult *any = NULL;
    struct shard_view *view = NULL;
    uint32_t nshards = 0;
    int *rcs = NULL;
    int ret;

    sts = calloc(n ? n : 1, sizeof *sts);
    rcs = calloc(n ? n : 1, sizeof *rcs);
    if (sts == NULL || rcs == NULL) {
        ret = report(c, "status", KV_ENOMEM, NULL);
        goto out;
    }
    for (i = 0; i < n; i++) {
        rcs[i] = admin_status(c->db, i,
                              c->timeout_ms ? c->timeout_ms : STATUS_TIMEOUT_MS,
                              &sts[i]);
        if (rcs[i] != KV_OK) {
            sts[i] = NULL;
            continue;
        }
        up++;
        if (any == NULL)
            any = sts[i];
    }
    if (any != NULL) {
        /* CONF_MAX_SHARDS: a node claiming more is not believed. */
        nshards = any->shards <= 4096 ? any->shards : 4096;
        view = calloc(nshards ? nshards : 1, sizeof *view);
        if (view == NULL) {
            ret = report(c, "status", KV_ENOMEM, NULL);
            goto out;
        }
        for (i = 0; i < n; i++)
            if (sts[i] != NULL)
                merge_status(sts[i], view, nshards, admin_is_embedded(c->db));
        settle_view(view, nshards);
    }
    if (c->json)
        print_status_json(c, n, sts, rcs, any, view, nshards, up == n);
    else
        print_status_text(c, n, sts, rcs, any, view, nshards);
    ret = up == n ? EXIT_OKAY : EXIT_UNAVAILABLE;
out:
    if (sts != NULL)
        for (i = 0; i < n; i++)
            admin_status_free(sts[i]);
    free(sts);
    free(rcs);
    free(view);
    return ret;
}

/* bench: see bench.h. The txn workload with --txn-keys both (its default,
 * except on an embedded target: same) is two runs, same then cross, each
 * of --ops transactions, printed one after the other (text: a blank line
 * between; JSON: one object a line); the exit status is that of the most
 * frequent error of the first run that had errors. The incr workloads
 * exit with the code of their check instead when it failed (5 when the
 * sum is wrong), after the report. */
static int cmd_bench(struct cli *c)
{
    struct bench_config cfg = {0};
    struct bench_result res;
    enum bench_txn_keys keys = BENCH_TXN_BOTH;
    uint64_t v;
    char err[512] = "";
    int rc, ret, top = KV_OK;

    cfg.target = c->target;
    cfg.timeout_ms = c->timeout_ms;
    cfg.json = c->json;
    v = 16;
    if ((ret = opt_u64(c, OPT_CLIENTS, 1, BENCH_MAX_CLIENTS, &v)) != 0)
        return ret;
    cfg.clients = (unsigned)v;
    v = 0;
    if ((ret = opt_u64(c, OPT_THREADS, 1, BENCH_MAX_CLIENTS, &v)) != 0)
        return ret;
    cfg.threads = (unsigned)v;
    v = 100000;
    if ((ret = opt_u64(c, OPT_OPS, 1, BENCH_MAX_OPS, &v)) != 0)
        return ret;
    cfg.ops = v;
    v = 100;
    if ((ret = opt_u64(c, OPT_VALUE_SIZE, 0, BENCH_MAX_VALUE, &v)) != 0)
        return ret;
    cfg.value_size = (size_t)v;
    cfg.workload = BENCH_WRITE;
    if ((c->seen & BIT(OPT_WORKLOAD)) &&
        bench_parse_workload(c->optval[OPT_WORKLOAD], &cfg.workload) != 0)
        return usage_error(c,
                           "invalid --workload '%s': expected write, read, "
                           "mixed, txn, incr-proc or incr-rmw",
                           c->optval[OPT_WORKLOAD]);
    v = bench_is_incr(cfg.workload) ? BENCH_INCR_KEYS : 100000;
    if ((ret = opt_u64(c, OPT_KEYS, 1, BENCH_MAX_KEYS, &v)) != 0)
        return ret;
    cfg.keys = v;
    if (bench_is_incr(cfg.workload) && (c->seen & BIT(OPT_VALUE_SIZE)))
        return usage_error(c,
                           "--value-size does not apply to the %s "
                           "workload (its values are counts)",
                           bench_workload_name(cfg.workload));
    if (bench_is_incr(cfg.workload))
        cfg.value_size = 0; /* nothing of that size is written */
    if (bench_is_incr(cfg.workload) && cfg.threads != 0 &&
        cfg.threads != cfg.clients)
        return usage_error(c,
                           "the %s workload needs a thread per client "
                           "(--threads equal to --clients)",
                           bench_workload_name(cfg.workload));
    if ((c->seen & BIT(OPT_TXN_KEYS)) && cfg.workload != BENCH_TXN)
        return usage_error(c, "--txn-keys needs --workload txn");
    if ((c->seen & BIT(OPT_TXN_KEYS)) &&
        bench_parse_txn_keys(c->optval[OPT_TXN_KEYS], &keys) != 0)
        return usage_error(c,
                           "invalid --txn-keys '%s': expected same, cross "
                           "or both",
                           c->optval[OPT_TXN_KEYS]);
    /* An embedded database is one shard: nothing to cross by default. */
    if (cfg.workload == BENCH_TXN && !(c->seen & BIT(OPT_TXN_KEYS)) &&
        strncmp(c->target, "embedded:", 9) == 0)
        keys = BENCH_TXN_SAME;
    if (cfg.workload == BENCH_TXN && cfg.threads != 0 &&
        cfg.threads != cfg.clients)
        return usage_error(c, "the txn workload needs a thread per client "
                              "(--threads equal to --clients)");
    if (c->hex)
        return usage_error(c, "bench does not take --hex");
    for (int pass = 0; pass < 2; pass++) {
        if (cfg.workload != BENCH_TXN && pass > 0)
            break;
        if (cfg.workload == BENCH_TXN) {
            if (keys != BENCH_TXN_BOTH && pass > 0)
                break;
            cfg.txn_keys = keys != BENCH_TXN_BOTH ? keys
                           : pass == 0            ? BENCH_TXN_SAME
                                                  : BENCH_TXN_CROSS;
        }
        rc = bench_run(&cfg, &res, err, sizeof err);
        if (rc != KV_OK)
            return report(c, "bench", rc, err);
        if (pass > 0 && !cfg.json)
            putchar('\n');
        bench_print(stdout, &cfg, &res);
        fflush(stdout);
        if (res.verified && res.verify_rc != KV_OK) {
            /* JSON: the report's "verify" object already says why. */
            if (!cfg.json)
                fprintf(stderr, "kvclient: bench: verify failed: %s (%s)\n",
                        kv_strerror(res.verify_rc), res.verify_msg);
            return exit_code_for(res.verify_rc);
        }
        if (top == KV_OK)
            top = bench_top_error(&res);
    }
    return exit_code_for(top);
}

/* Prints the general help to OUT. */
static void print_usage(FILE *out)
{
    size_t i;
    int o;

    fputs("usage: kvclient [options] COMMAND [ARGS]\n\ncommands:\n", out);
    for (i = 0; i < NCOMMANDS; i++)
        fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fputs("\noptions (before or after the command):\n", out);
    for (o = 0; o < OPT_COUNT; o++) {
        char left[40];
        if (optdefs[o].shortname)
            snprintf(left, sizeof left, "-%c, --%s%s%s", optdefs[o].shortname,
                     optdefs[o].name, optdefs[o].arg ? " " : "",
                     optdefs[o].arg ? optdefs[o].arg : "");
        else
            snprintf(left, sizeof left, "    --%s%s%s", optdefs[o].name,
                     optdefs[o].arg ? " " : "",
                     optdefs[o].arg ? optdefs[o].arg : "");
        fprintf(out, "  %-22s %s\n", left, optdefs[o].help);
    }
    fputs("\nexit codes: 0 ok, 1 not found, 2 usage or invalid input,\n"
          "  3 condition failed, 4 unavailable or timed out (a write's\n"
          "  outcome is then unknown), 5 other errors. See docs/cli.md.\n",
          out);
}

/* The command named NAME, or NULL. */
static const struct command *find_command(const char *name)
{
    size_t i;

    for (i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* help [COMMAND] */
static int cmd_help(struct cli *c)
{
    const struct command *cmd;

    if (c->nargs == 0) {
        print_usage(stdout);
        return EXIT_OKAY;
    }
    cmd = find_command(c->args[0]);
    if (cmd == NULL)
        return usage_error(c, "unknown command '%s'", c->args[0]);
    printf("usage: kvclient [options] %s\n  %s\n", cmd->usage, cmd->summary);
    return EXIT_OKAY;
}

/* --- command line parsing ------------------------------------------------- */

/* The option with long name NAME (LEN chars), or -1. */
static int find_long(const char *name, size_t len)
{
    int o;

    for (o = 0; o < OPT_COUNT; o++)
        if (strlen(optdefs[o].name) == len &&
            strncmp(optdefs[o].name, name, len) == 0)
            return o;
    return -1;
}

/* The option with short name CH, or -1. */
static int find_short(char ch)
{
    int o;

    for (o = 0; o < OPT_COUNT; o++)
        if (optdefs[o].shortname != 0 && optdefs[o].shortname == ch)
            return o;
    return -1;
}

/* Splits ARGV into options and positional arguments (the first one is the
 * command). "--" ends the options; "-" alone is an argument. Returns 0, or
 * the usage exit code after reporting. */
static int parse_args(struct cli *c, int argc, char **argv)
{
    int i, o, end_opts = 0;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;

        if (end_opts || a[0] != '-' || a[1] == '\0') {
            if (c->cmdname == NULL)
                c->cmdname = a;
            else
                c->args[c->nargs++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            end_opts = 1;
            continue;
        }
        if (a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            size_t len = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
            o = find_long(a + 2, len);
            if (o < 0)
                return usage_error(c, "unknown option '%.*s'", (int)len + 2, a);
            if (eq != NULL) {
                if (optdefs[o].arg == NULL)
                    return usage_error(c, "option --%s takes no value",
                                       optdefs[o].name);
                val = eq + 1;
            }
        } else {
            o = find_short(a[1]);
            if (o < 0)
                return usage_error(c, "unknown option '-%c'", a[1]);
            if (a[2] != '\0') {
                if (optdefs[o].arg == NULL)
                    return usage_error(c, "unknown option '%s'", a);
                val = a + 2;
            }
        }
        if (optdefs[o].arg != NULL && val == NULL) {
            if (i + 1 >= argc)
                return usage_error(c, "option --%s needs a value (%s)",
                                   optdefs[o].name, optdefs[o].arg);
            val = argv[++i];
        }
        if (c->seen & BIT(o))
            return usage_error(c, "option --%s given twice", optdefs[o].name);
        c->seen |= BIT(o);
        c->optval[o] = val ? val : "";
    }
    return 0;
}

/* Checks the command, its argument count and options in one place, and the
 * global options' values. Returns 0 or the usage exit code. */
static int check_command(struct cli *c)
{
    unsigned bad;
    uint64_t t = 0;
    int o, ret;

    c->cmd = find_command(c->cmdname);
    if (c->cmd == NULL)
        return usage_error(c, "unknown command '%s'", c->cmdname);
    bad = c->seen & ~(GLOBAL_OPTS | c->cmd->opts);
    for (o = 0; o < OPT_COUNT; o++)
        if (bad & BIT(o))
            return usage_error(c, "option --%s does not apply to %s",
                               optdefs[o].name, c->cmd->name);
    if (c->nargs < c->cmd->min_args || c->nargs > c->cmd->max_args)
        return usage_error(c, "wrong number of arguments: usage: kvclient %s",
                           c->cmd->usage);
    if ((ret = opt_u64(c, OPT_TIMEOUT, 1, MAX_TIMEOUT_MS, &t)) != 0)
        return ret;
    c->timeout_ms = (uint32_t)t;
    if (c->seen & BIT(OPT_CONF)) {
        if (c->optval[OPT_CONF][0] == '\0')
            return usage_error(c, "-c needs a non-empty target");
        c->target = c->optval[OPT_CONF];
    }
    return 0;
}

/* Whether "--json" is among the options (looked for first, so that even an
 * error in parsing the rest is reported as JSON). */
static int wants_json(int argc, char **argv)
{
    int i;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            return 0;
        if (strcmp(argv[i], "--json") == 0)
            return 1;
    }
    return 0;
}

/* Parses the command line, opens the target when the command needs it, runs
 * the command and maps the outcome to the exit code. */
int main(int argc, char **argv)
{
    struct cli c;
    int ret, rc;

    memset(&c, 0, sizeof c);
    c.target = DEFAULT_TARGET;
    c.args = calloc((size_t)(argc > 0 ? argc : 1), sizeof *c.args);
    if (c.args == NULL) {
        fprintf(stderr, "kvclient: out of memory\n");
        return EXIT_OTHER;
    }
    c.json = wants_json(argc, argv);
    ret = parse_args(&c, argc, argv);
    if (ret != 0)
        goto out;
    c.json = (c.seen & BIT(OPT_JSON)) != 0;
    c.hex = (c.seen & BIT(OPT_HEX)) != 0;
    if (c.seen & BIT(OPT_HELP)) {
        const struct command *cmd = c.cmdname ? find_command(c.cmdname) : NULL;
        if (cmd != NULL && cmd->handler != cmd_help)
            printf("usage: kvclient [options] %s\n  %s\n\n", cmd->usage,
                   cmd->summary);
        print_usage(stdout);
        ret = EXIT_OKAY;
        goto out;
    }
    if (c.cmdname == NULL) {
        if (c.json) {
            ret = usage_error(&c, "no command given");
        } else {
            print_usage(stderr);
            ret = EXIT_USAGE;
        }
        goto out;
    }
    ret = check_command(&c);
    if (ret != 0)
        goto out;
    if (c.seen & BIT(OPT_KEY)) {
        /* Every handle this process opens (bench opens many) uses it. */
        if (c.optval[OPT_KEY][0] == '\0' ||
            strncmp(c.target, "tcp://", 6) == 0) {
            ret = usage_error(&c, "--key needs a key file and a cluster.conf "
                                  "target (a tcp:// seed list cannot carry "
                                  "the nodes' public keys)");
            goto out;
        }
        if (setenv("KV_CLIENT_KEY", c.optval[OPT_KEY], 1) != 0) {
            ret = report(&c, "--key", KV_ENOMEM, strerror(errno));
            goto out;
        }
    }
    if (c.cmd->flags & CMD_OPEN) {
        kv_open_opts oo = {0};
        oo.timeout_ms = c.timeout_ms;
        rc = kv_open(c.target, &oo, &c.db);
        if (rc != KV_OK) {
            char what[300];
            c.db = NULL;
            snprintf(what, sizeof what, "open %s", c.target);
            /* kv_errmsg(NULL): the detail of this thread's failed open. */
            ret = report(&c, what, rc, kv_errmsg(NULL));
            goto out;
        }
    }
    ret = c.cmd->handler(&c);
    kv_close(c.db);
out:
    free(c.args);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "kvclient: write to stdout: %s\n", strerror(errno));
        if (ret == EXIT_OKAY)
            ret = EXIT_OTHER;
    }
    return ret;
}
