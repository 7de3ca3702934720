/*
 * keys - CurveZMQ key pairs and key lists (docs/security.md).
 *
 * A key is 32 bytes, written in Z85 (40 characters). A key file holds one
 * pair as two lines, "public = Z85" and "secret = Z85"; a key list file
 * holds public keys, one a line. In both, '#' begins a comment only at the
 * start of a line or after a space or tab, because '#' is itself a Z85
 * character. Errors name the file and the line ("PATH:LINE: problem").
 *
 * This module opens no socket. It reads the files it is given, and
 * keys_generate() creates exactly one new file, never replacing one.
 */
#ifndef KV_KEYS_H
#define KV_KEYS_H

#include <stdbool.h>
#include <stddef.h>

#define KEYS_Z85_LEN 40      /* characters of a Z85 key */
#define KEYS_BIN_LEN 32      /* bytes of a key */
#define KEYS_LIST_MAX 100000 /* keys in one key list file */

/* One key pair, NUL-terminated Z85. */
struct keys_pair {
    char pub[KEYS_Z85_LEN + 1];
    char sec[KEYS_Z85_LEN + 1];
    bool loose_mode; /* the file is readable by its group or others */
};

/* Whether the N bytes at S are one Z85 key: 40 characters of the Z85
 * alphabet whose 5-character groups each encode a 32-bit number. */
bool keys_z85_valid(const char *s, size_t n);

/* Decodes the valid Z85 key S (keys_z85_valid) into OUT. Returns 0, or -1
 * when S is not one. */
int keys_z85_decode(const char *s, unsigned char out[KEYS_BIN_LEN]);

/* The length of the N bytes at S once a comment is cut off: a '#' at the
 * start or after a space or tab begins one (a '#' inside a word does not,
 * since Z85 uses it). */
size_t keys_cut_comment(const char *s, size_t n);

/* Makes a new key pair and writes it to PATH, created with mode 0600 and
 * only if it does not exist (never replacing a file). On KV_OK PUB holds
 * the public key. Returns KV_EINVAL when PATH exists, KV_EIO when it cannot
 * be written (nothing is left behind), KV_EINTERNAL when this libzmq has no
 * CURVE support; the reason is in ERR. */
int keys_generate(const char *path, char pub[KEYS_Z85_LEN + 1], char *err,
                  size_t errlen);

/* Reads the key file PATH into *out and checks that its secret key is the
 * one of its public key. Returns KV_OK, KV_EIO (cannot read; "PATH:
 * reason") or KV_EINVAL ("PATH:LINE: problem"). */
int keys_load_pair(const char *path, struct keys_pair *out, char *err,
                   size_t errlen);

/* Reads the key list file PATH: on KV_OK *keys is a malloc()ed array of *n
 * NUL-terminated Z85 keys (free() it; NULL when *n is 0). At most
 * KEYS_LIST_MAX keys. Errors as keys_load_pair(), plus KV_ENOMEM. */
int keys_load_list(const char *path, char (**keys)[KEYS_Z85_LEN + 1], size_t *n,
                   char *err, size_t errlen);

#endif
