/*
 * keys - CurveZMQ key pairs and key lists (see keys.h).
 *
 * Key files are small text files a person may edit, so the readers are as
 * strict as the cluster.conf parser: every problem is an error naming the
 * file and the line, never a key silently skipped. The only file this
 * module creates is a new key file, with O_EXCL so an existing key is never
 * replaced, and with mode 0600 from the moment it exists.
 */
#include "keys.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "kv.h"

#define PAIR_FILE_MAX (64u * 1024)        /* bytes of a key file */
#define LIST_FILE_MAX (16u * 1024 * 1024) /* bytes of a key list file */
#define SHOW_MAX 48                       /* input quoted in a message */

static const char z85_chars[] =
    "0123456789abcdefghijklmnopqrstuvwxyz"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/* The value of Z85 character CH, or -1. */
static int z85_value(char ch)
{
    if (ch == '\0')
        return -1;
    const char *p = strchr(z85_chars, ch);
    return p ? (int)(p - z85_chars) : -1;
}

int keys_z85_decode(const char *s, unsigned char out[KEYS_BIN_LEN])
{
    for (size_t g = 0; g < KEYS_Z85_LEN / 5; g++) {
        uint64_t v = 0;
        for (size_t i = 0; i < 5; i++) {
            int d = z85_value(s[g * 5 + i]);
            if (d < 0)
                return -1;
            v = v * 85 + (uint64_t)d;
        }
        if (v > UINT32_MAX)
            return -1;
        out[g * 4] = (unsigned char)(v >> 24);
        out[g * 4 + 1] = (unsigned char)(v >> 16);
        out[g * 4 + 2] = (unsigned char)(v >> 8);
        out[g * 4 + 3] = (unsigned char)v;
    }
    return 0;
}

bool keys_z85_valid(const char *s, size_t n)
{
    unsigned char bin[KEYS_BIN_LEN];
    if (s == NULL || n != KEYS_Z85_LEN)
        return false;
    return keys_z85_decode(s, bin) == 0;
}

static bool is_blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\f' || ch == '\v';
}

size_t keys_cut_comment(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '#' && (i == 0 || s[i - 1] == ' ' || s[i - 1] == '\t'))
            return i;
    return n;
}

/* Shrinks [*s, *s + *n) to drop leading and trailing blanks. */
static void trim(const char **s, size_t *n)
{
    while (*n > 0 && is_blank(**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && is_blank((*s)[*n - 1]))
        (*n)--;
}

__attribute__((format(printf, 5, 6))) static int
fail_at(char *err, size_t errlen, const char *path, unsigned line,
        const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        int k = snprintf(err, errlen, "%s:%u: ", path, line);
        if (k >= 0 && (size_t)k < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    return KV_EINVAL;
}

/* A printable copy of input for a message: at most SHOW_MAX bytes, others
 * than printable ASCII shown as '?'. */
static const char *show(char *buf, const char *s, size_t n)
{
    size_t m = n > SHOW_MAX ? SHOW_MAX : n;
    for (size_t i = 0; i < m; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[i] = (ch < 0x20 || ch >= 0x7f) ? '?' : (char)ch;
    }
    if (m < n) {
        memcpy(buf + m, "...", 3);
        m += 3;
    }
    buf[m] = '\0';
    return buf;
}

/* Reads all of PATH (at most MAX bytes) into a new NUL-terminated *text.
 * *mode gets the file's permission bits. */
static int read_all(const char *path, size_t max, char **text, size_t *len,
                    mode_t *mode, char *err, size_t errlen)
{
    int rc = KV_OK;
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return KV_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        rc = KV_EIO;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        rc = KV_EIO;
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        rc =
            fail_at(err, errlen, path, 0, "file is larger than %zu bytes", max);
        goto out;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    buf = malloc(cap + 1);
    if (buf == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        rc = KV_ENOMEM;
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            rc = KV_EIO;
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n == cap) { /* it grew while we read it */
            rc = fail_at(err, errlen, path, 0, "file changed while read");
            goto out;
        }
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    *mode = st.st_mode & 07777;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

/* Calls FN(arg, line number, text, length) for each line of TEXT that is
 * not blank once its comment is cut, trimmed. Stops at the first error. */
static int each_line(const char *text, size_t len,
                     int (*fn)(void *arg, unsigned line, const char *s,
                               size_t n),
                     void *arg)
{
    size_t pos = 0;
    unsigned line = 0;
    while (pos < len) {
        const char *s = text + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl != NULL);
        line++;
        n = keys_cut_comment(s, n);
        trim(&s, &n);
        if (n == 0)
            continue;
        int rc = fn(arg, line, s, n);
        if (rc != KV_OK)
            return rc;
    }
    return KV_OK;
}

/* --- key files ------------------------------------------------------------ */

struct pair_parse {
    const char *path;
    char *err;
    size_t errlen;
    struct keys_pair *out;
    unsigned pub_line, sec_line;
};

static int pair_line(void *arg, unsigned line, const char *s, size_t n)
{
    struct pair_parse *p = arg;
    char shown[SHOW_MAX + 4];
    if (memchr(s, '\0', n) != NULL)
        return fail_at(p->err, p->errlen, p->path, line, "NUL byte in line");
    const char *eq = memchr(s, '=', n);
    if (eq == NULL)
        return fail_at(p->err, p->errlen, p->path, line,
                       "expected 'public = KEY' or 'secret = KEY', got '%s'",
                       show(shown, s, n));
    const char *k = s, *v = eq + 1;
    size_t kn = (size_t)(eq - s), vn = n - kn - 1;
    trim(&k, &kn);
    trim(&v, &vn);
    bool is_pub = kn == 6 && memcmp(k, "public", 6) == 0;
    bool is_sec = kn == 6 && memcmp(k, "secret", 6) == 0;
    if (!is_pub && !is_sec)
        return fail_at(p->err, p->errlen, p->path, line,
                       "unknown key '%s' (a key file has 'public' and "
                       "'secret')",
                       show(shown, k, kn));
    unsigned *seen = is_pub ? &p->pub_line : &p->sec_line;
    if (*seen != 0)
        return fail_at(p->err, p->errlen, p->path, line,
                       "duplicate key '%s' (first at line %u)",
                       is_pub ? "public" : "secret", *seen);
    if (!keys_z85_valid(v, vn))
        return fail_at(p->err, p->errlen, p->path, line,
                       "%s key is not a Z85 key of 40 characters",
                       is_pub ? "public" : "secret");
    *seen = line;
    memcpy(is_pub ? p->out->pub : p->out->sec, v, KEYS_Z85_LEN);
    (is_pub ? p->out->pub : p->out->sec)[KEYS_Z85_LEN] = '\0';
    return KV_OK;
}

int keys_load_pair(const char *path, struct keys_pair *out, char *err,
                   size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    mode_t mode = 0;
    struct keys_pair pair;
    memset(&pair, 0, sizeof(pair));
    int rc = read_all(path, PAIR_FILE_MAX, &text, &len, &mode, err, errlen);
    if (rc != KV_OK)
        return rc;
    struct pair_parse p = {
        .path = path, .err = err, .errlen = errlen, .out = &pair};
    rc = each_line(text, len, pair_line, &p);
    if (rc == KV_OK && (p.pub_line == 0 || p.sec_line == 0))
        rc = fail_at(err, errlen, path, 0, "no '%s = KEY' line",
                     p.pub_line == 0 ? "public" : "secret");
    if (rc == KV_OK) {
        char derived[KEYS_Z85_LEN + 1];
        if (zmq_curve_public(derived, pair.sec) != 0) {
            snprintf(err, errlen,
                     "%s: cannot check the key: this libzmq has no CURVE "
                     "support",
                     path);
            rc = KV_EINTERNAL;
        } else if (strcmp(derived, pair.pub) != 0) {
            rc = fail_at(err, errlen, path, p.pub_line,
                         "the public key is not the one of the secret key "
                         "(line %u)",
                         p.sec_line);
        }
    }
    if (rc == KV_OK) {
        pair.loose_mode = (mode & 077) != 0;
        *out = pair;
    }
    /* The secret key does not linger in freed memory. */
    sodium_memzero(text, len);
    free(text);
    sodium_memzero(&pair, sizeof(pair));
    return rc;
}

/* --- key lists ------------------------------------------------------------ */

struct list_parse {
    const char *path;
    char *err;
    size_t errlen;
    char (*keys)[KEYS_Z85_LEN + 1];
    size_t n, cap;
    unsigned *lines; /* where each key was, for duplicates */
};

static int list_line(void *arg, unsigned line, const char *s, size_t n)
{
    struct list_parse *p = arg;
    char shown[SHOW_MAX + 4];
    if (!keys_z85_valid(s, n))
        return fail_at(p->err, p->errlen, p->path, line,
                       "'%s' is not a Z85 public key of 40 characters",
                       show(shown, s, n));
    for (size_t i = 0; i < p->n; i++)
        if (memcmp(p->keys[i], s, KEYS_Z85_LEN) == 0)
            return fail_at(p->err, p->errlen, p->path, line,
                           "key listed twice (first at line %u)", p->lines[i]);
    if (p->n == KEYS_LIST_MAX)
        return fail_at(p->err, p->errlen, p->path, line,
                       "too many keys (at most %d)", KEYS_LIST_MAX);
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        void *k = realloc(p->keys, cap * sizeof(*p->keys));
        if (k == NULL)
            goto nomem;
        p->keys = k;
        unsigned *l = realloc(p->lines, cap * sizeof(*p->lines));
        if (l == NULL)
            goto nomem;
        p->lines = l;
        p->cap = cap;
    }
    memcpy(p->keys[p->n], s, KEYS_Z85_LEN);
    p->keys[p->n][KEYS_Z85_LEN] = '\0';
    p->lines[p->n] = line;
    p->n++;
    return KV_OK;
nomem:
    snprintf(p->err, p->errlen, "%s: out of memory", p->path);
    return KV_ENOMEM;
}

int keys_load_list(const char *path, char (**keys)[KEYS_Z85_LEN + 1], size_t *n,
                   char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    mode_t mode = 0;
    int rc = read_all(path, LIST_FILE_MAX, &text, &len, &mode, err, errlen);
    if (rc != KV_OK)
        return rc;
    struct list_parse p = {.path = path, .err = err, .errlen = errlen};
    if (memchr(text, '\0', len) != NULL)
        rc = fail_at(err, errlen, path, 0, "NUL byte in file");
    if (rc == KV_OK)
        rc = each_line(text, len, list_line, &p);
    free(text);
    free(p.lines);
    if (rc != KV_OK) {
        free(p.keys);
        return rc;
    }
    *keys = p.keys;
    *n = p.n;
    return KV_OK;
}

/* --- generating ----------------------------------------------------------- */

int keys_generate(const char *path, char pub[KEYS_Z85_LEN + 1], char *err,
                  size_t errlen)
{
    char sec[KEYS_Z85_LEN + 1], pk[KEYS_Z85_LEN + 1];
    char text[256];
    int rc = KV_OK;
    if (zmq_curve_keypair(pk, sec) != 0) {
        snprintf(err, errlen,
                 "cannot make a key pair: %s (this libzmq has "
                 "no CURVE support?)",
                 zmq_strerror(zmq_errno()));
        return KV_EINTERNAL;
    }
    int len = snprintf(text, sizeof(text),
                       "# kv CurveZMQ key pair: keep this file secret "
                       "(mode 0600)\npublic = %s\nsecret = %s\n",
                       pk, sec);
    int fd =
        open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        if (e == EEXIST)
            snprintf(err, errlen,
                     "%s exists: refusing to overwrite a key file (remove it "
                     "first to replace the key)",
                     path);
        else
            snprintf(err, errlen, "%s: %s", path, strerror(e));
        rc = e == EEXIST ? KV_EINVAL : KV_EIO;
        goto out;
    }
    /* 0600 whatever the umask (which can only have removed bits). */
    if (fchmod(fd, 0600) != 0) {
        snprintf(err, errlen, "%s: chmod: %s", path, strerror(errno));
        rc = KV_EIO;
    }
    size_t done = 0;
    while (rc == KV_OK && done < (size_t)len) {
        ssize_t w = write(fd, text + done, (size_t)len - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            rc = KV_EIO;
            break;
        }
        done += (size_t)w;
    }
    if (rc == KV_OK && fsync(fd) != 0) {
        snprintf(err, errlen, "%s: fsync: %s", path, strerror(errno));
        rc = KV_EIO;
    }
    if (close(fd) != 0 && rc == KV_OK) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        rc = KV_EIO;
    }
    if (rc != KV_OK)
        unlink(path); /* we created it: no half-written key file stays */
    else
        memcpy(pub, pk, sizeof(pk));
out:
    sodium_memzero(sec, sizeof(sec));
    sodium_memzero(text, sizeof(text));
    return rc;
}
