/*
 * libkv_example - a small, complete program using the public kv.h API.
 *
 * It opens a database (argv[1], default "embedded:/tmp/kv-example"), writes
 * a few keys, reads one back, shows a conditional write being refused with
 * KV_ECONFLICT, deletes a key, scans a prefix and moves money between two
 * accounts in a transaction. Every result is checked:
 * the program exits 1 on anything unexpected, so `make test` runs it as a
 * test of libkv in embedded mode. It works unchanged against a cluster:
 *
 *   build/tests/libkv_example cluster.conf
 *
 * Build against the shared library:
 *
 *   cc docs/libkv_example.c -Ilibkv -Lbuild -lkv -o example
 *
 * Running it again on the same target is fine: it first removes the keys it
 * is about to write.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"

#define PREFIX "example:"

/* Reports a failed call with the code's name and the handle's detail. */
static int fail(kv *db, const char *what, int code)
{
    fprintf(stderr, "libkv_example: %s: %s (%d)%s%s\n", what,
            kv_strerror(code), code, db && kv_errmsg(db)[0] ? ": " : "",
            db ? kv_errmsg(db) : "");
    return 1;
}

/* Writes KEY = VAL with default options; *version gets the new version. */
static int put_str(kv *db, const char *key, const char *val,
                   uint64_t *version)
{
    int rc = kv_put(db, key, strlen(key), val, strlen(val), NULL, version);
    if (rc != KV_OK)
        return fail(db, "put", rc);
    printf("put %s = %s (version %llu)\n", key, val,
           (unsigned long long)*version);
    return 0;
}

/* Reads KEY and checks that its value is WANT and, if WANT_VERSION is not
 * 0, that its version is WANT_VERSION. */
static int expect_value(kv *db, const char *key, const char *want,
                        uint64_t want_version)
{
    void *val = NULL;
    size_t vlen = 0;
    uint64_t version = 0;
    int ret = 1;

    int rc = kv_get(db, key, strlen(key), NULL, &val, &vlen, &version);
    if (rc != KV_OK) {
        fail(db, "get", rc);
        goto out;
    }
    printf("get %s -> %.*s (version %llu)\n", key, (int)vlen,
           val ? (const char *)val : "", (unsigned long long)version);
    if (vlen != strlen(want) || (vlen > 0 && memcmp(val, want, vlen) != 0)) {
        fprintf(stderr, "libkv_example: get %s: expected \"%s\"\n", key, want);
        goto out;
    }
    if (want_version != 0 && version != want_version) {
        fprintf(stderr, "libkv_example: get %s: version %llu, expected %llu\n",
                key, (unsigned long long)version,
                (unsigned long long)want_version);
        goto out;
    }
    ret = 0;
out:
    kv_free(val);
    return ret;
}

/* Scans PREFIX and checks that it holds exactly the N keys WANT_KEYS with
 * the values WANT_VALS, in that (byte) order. */
static int expect_scan(kv *db, const char *prefix, const char *const *want_keys,
                       const char *const *want_vals, size_t n)
{
    kv_scan_opts so = {0};
    kv_iter *it = NULL;
    size_t seen = 0;
    int ret = 1;
    int rc;

    so.prefix = prefix;
    so.prefix_len = strlen(prefix);
    rc = kv_scan(db, &so, NULL, &it);
    if (rc != KV_OK) {
        fail(db, "scan", rc);
        goto out;
    }
    printf("scan prefix \"%s\":\n", prefix);
    for (;;) {
        const void *key, *val;
        size_t klen, vlen;
        uint64_t version;

        rc = kv_iter_next(it, &key, &klen, &val, &vlen, &version);
        if (rc == KV_EOF)
            break;
        if (rc != KV_OK) {
            fail(db, "scan next", rc);
            goto out;
        }
        printf("  %.*s = %.*s (version %llu)\n", (int)klen,
               (const char *)key, (int)vlen, val ? (const char *)val : "",
               (unsigned long long)version);
        if (seen >= n || klen != strlen(want_keys[seen]) ||
            memcmp(key, want_keys[seen], klen) != 0 ||
            vlen != strlen(want_vals[seen]) ||
            (vlen > 0 && memcmp(val, want_vals[seen], vlen) != 0)) {
            fprintf(stderr, "libkv_example: scan: unexpected entry %zu\n",
                    seen);
            goto out;
        }
        seen++;
    }
    if (seen != n) {
        fprintf(stderr, "libkv_example: scan: %zu entries, expected %zu\n",
                seen, n);
        goto out;
    }
    ret = 0;
out:
    kv_iter_free(it);
    return ret;
}

/* --- a transaction: a transfer between two accounts ---------------------
 * Both keys share the hash tag {acct:7}, so in a cluster they are on one
 * shard and the transfer commits there in one step. */
#define ACCT_FROM "{acct:7}checking"
#define ACCT_TO "{acct:7}savings"

/* Reads the balance KEY inside TXN (an absent key holds 0). The version
 * read becomes a condition of the commit. */
static int read_balance(kv_txn *txn, const char *key, long *balance)
{
    char buf[32];
    void *val = NULL;
    size_t vlen = 0;
    int rc = kv_txn_get(txn, key, strlen(key), &val, &vlen, NULL);

    if (rc == KV_ENOTFOUND) {
        *balance = 0;
        return KV_OK;
    }
    if (rc != KV_OK)
        return rc;
    if (vlen >= sizeof(buf)) {
        kv_free(val);
        return KV_ECORRUPT; /* not a balance this program wrote */
    }
    memcpy(buf, val, vlen);
    buf[vlen] = '\0';
    kv_free(val);
    *balance = strtol(buf, NULL, 10);
    return KV_OK;
}

static int write_balance(kv_txn *txn, const char *key, long balance)
{
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%ld", balance);
    return kv_txn_put(txn, key, strlen(key), buf, (size_t)n);
}

/* Moves *(long *)ARG from ACCT_FROM to ACCT_TO. kv_txn_run calls it, again
 * after a conflict, so it does nothing but ops on TXN. */
static int transfer(kv_txn *txn, void *arg)
{
    long amount = *(const long *)arg;
    long from, to;
    int rc = read_balance(txn, ACCT_FROM, &from);

    if (rc == KV_OK)
        rc = read_balance(txn, ACCT_TO, &to);
    if (rc != KV_OK)
        return rc;
    if (from < amount)
        return KV_EINVAL; /* no overdraft: kv_txn_run aborts, returns it */
    rc = write_balance(txn, ACCT_FROM, from - amount);
    if (rc == KV_OK)
        rc = write_balance(txn, ACCT_TO, to + amount);
    return rc;
}

/* Opens the accounts with 100 and 0, moves 30, then refuses to move 500. */
static int transfers(kv *db)
{
    kv_txn *txn = NULL;
    long amount = 30, big = 500;
    int rc = kv_txn_begin(db, NULL, &txn);

    if (rc != KV_OK)
        return fail(db, "txn begin", rc);
    rc = kv_txn_put(txn, ACCT_FROM, strlen(ACCT_FROM), "100", 3);
    if (rc == KV_OK)
        rc = kv_txn_put(txn, ACCT_TO, strlen(ACCT_TO), "0", 1);
    if (rc != KV_OK) {
        kv_txn_abort(txn);
        return fail(db, "txn put", rc);
    }
    rc = kv_txn_commit(txn, NULL, NULL); /* ends txn whatever happens */
    if (rc != KV_OK)
        return fail(db, "txn commit", rc);
    rc = kv_txn_run(db, NULL, transfer, &amount);
    printf("transfer 30 from %s to %s -> %s\n", ACCT_FROM, ACCT_TO,
           kv_strerror(rc));
    if (rc != KV_OK)
        return fail(db, "transfer", rc);
    rc = kv_txn_run(db, NULL, transfer, &big);
    printf("transfer 500 -> %s (nothing written)\n", kv_strerror(rc));
    if (rc != KV_EINVAL)
        return fail(db, "overdraft: expected KV_EINVAL", rc);
    if (expect_value(db, ACCT_FROM, "70", 0) ||
        expect_value(db, ACCT_TO, "30", 0))
        return 1;
    return 0;
}

int main(int argc, char **argv)
{
    static const char *const keys[] = {PREFIX "apple", PREFIX "banana",
                                       PREFIX "cherry"};
    static const char *const scan_keys[] = {PREFIX "apple", PREFIX "banana"};
    static const char *const scan_vals[] = {"green", "yellow"};
    const char *target = argc > 1 ? argv[1] : "embedded:/tmp/kv-example";
    kv *db = NULL;
    uint64_t v_apple = 0, v_apple2 = 0, v_other = 0;
    kv_opts cond = {0};
    void *gone = NULL;
    size_t gone_len = 0;
    int ret = 1;
    int rc;

    rc = kv_open(target, NULL, &db);
    if (rc != KV_OK) {
        fprintf(stderr, "libkv_example: open %s: %s\n", target,
                kv_strerror(rc));
        goto out;
    }
    printf("opened %s\n", target);

    /* Start from a known state: the keys may exist from an earlier run. */
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        rc = kv_del(db, keys[i], strlen(keys[i]), NULL);
        if (rc != KV_OK && rc != KV_ENOTFOUND) {
            fail(db, "cleanup delete", rc);
            goto out;
        }
    }

    /* Plain writes. Each returns the version it created. */
    if (put_str(db, PREFIX "apple", "red", &v_apple) ||
        put_str(db, PREFIX "banana", "yellow", &v_other) ||
        put_str(db, PREFIX "cherry", "dark red", &v_other) ||
        put_str(db, "other:key", "outside the prefix", &v_other))
        goto out;
    if (expect_value(db, PREFIX "apple", "red", v_apple))
        goto out;

    /* Compare-and-set: succeeds against the version just read... */
    cond.if_version = v_apple;
    rc = kv_put(db, PREFIX "apple", strlen(PREFIX "apple"), "green", 5, &cond,
                &v_apple2);
    if (rc != KV_OK) {
        fail(db, "put if_version", rc);
        goto out;
    }
    printf("put %s = green if version %llu -> ok (version %llu)\n",
           PREFIX "apple", (unsigned long long)v_apple,
           (unsigned long long)v_apple2);
    if (v_apple2 <= v_apple) {
        fprintf(stderr, "libkv_example: version did not increase\n");
        goto out;
    }

    /* ...and is refused once that version is stale: nothing is written. */
    rc = kv_put(db, PREFIX "apple", strlen(PREFIX "apple"), "brown", 5, &cond,
                NULL);
    printf("put %s = brown if version %llu -> %s\n", PREFIX "apple",
           (unsigned long long)v_apple, kv_strerror(rc));
    if (rc != KV_ECONFLICT) {
        fail(db, "stale put if_version: expected KV_ECONFLICT", rc);
        goto out;
    }

    /* if_absent: create-only writes fail on an existing key. */
    cond.if_version = 0;
    cond.if_absent = 1;
    rc = kv_put(db, PREFIX "banana", strlen(PREFIX "banana"), "blue", 4, &cond,
                NULL);
    printf("put %s = blue if absent -> %s\n", PREFIX "banana",
           kv_strerror(rc));
    if (rc != KV_ECONFLICT) {
        fail(db, "put if_absent: expected KV_ECONFLICT", rc);
        goto out;
    }
    if (expect_value(db, PREFIX "apple", "green", v_apple2) ||
        expect_value(db, PREFIX "banana", "yellow", 0))
        goto out;

    /* Delete, then the key is gone. */
    rc = kv_del(db, PREFIX "cherry", strlen(PREFIX "cherry"), NULL);
    if (rc != KV_OK) {
        fail(db, "delete", rc);
        goto out;
    }
    printf("del %s -> ok\n", PREFIX "cherry");
    rc = kv_get(db, PREFIX "cherry", strlen(PREFIX "cherry"), NULL, &gone,
                &gone_len, NULL);
    if (rc == KV_OK)
        kv_free(gone);
    printf("get %s -> %s\n", PREFIX "cherry", kv_strerror(rc));
    if (rc != KV_ENOTFOUND) {
        fail(db, "get deleted key: expected KV_ENOTFOUND", rc);
        goto out;
    }

    /* A prefix scan returns the remaining keys in byte order. */
    if (expect_scan(db, PREFIX, scan_keys, scan_vals,
                    sizeof(scan_keys) / sizeof(scan_keys[0])))
        goto out;

    /* A transaction: both balances change together or not at all. */
    if (transfers(db))
        goto out;

    printf("ok\n");
    ret = 0;
out:
    kv_close(db);
    return ret == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
