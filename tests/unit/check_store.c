/*
 * check_store - unit tests of the LevelDB adapter (libkv/store.c).
 *
 * Point reads, atomic batches, durability across close and reopen, ordered
 * iterators over a consistent snapshot, the single-opener lock, and damaged
 * tables reported as errors instead of served as data. Every test runs in
 * its own directory under /tmp that the fixture removes.
 */
#define _XOPEN_SOURCE 700 /* nftw() */

#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kv.h"
#include "log.h"
#include "store.h"

Suite *store_suite(void);

static char rootdir[64]; /* per test case, made and removed by the parent */
static char tmpdir[128]; /* per test, inside rootdir */
static char dbdir[160];
static struct store *st;

static int remove_entry(const char *path, const struct stat *sb, int flag,
                        struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes PATH and everything below it (never follows symlinks). */
static void rm_tree(const char *path)
{
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The unchecked fixture runs in the parent process: even when a failed test
 * ends its forked child before the checked teardown, this removes its
 * directory. */
static void root_setup(void)
{
    snprintf(rootdir, sizeof rootdir, "/tmp/kv-check-store-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(rootdir));
}

static void root_teardown(void)
{
    if (rootdir[0])
        rm_tree(rootdir);
    rootdir[0] = '\0';
}

static void setup(void)
{
    char err[256] = "";

    snprintf(tmpdir, sizeof tmpdir, "%s/t-XXXXXX", rootdir);
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    snprintf(dbdir, sizeof dbdir, "%s/db", tmpdir);
    st = NULL;
    ck_assert_msg(store_open(dbdir, &st, err, sizeof err) == KV_OK,
                  "store_open: %s", err);
}

static void teardown(void)
{
    store_close(st);
    st = NULL;
    log_setup(LOG_WARN, NULL);
    if (tmpdir[0])
        rm_tree(tmpdir);
    tmpdir[0] = '\0';
}

/* Closes and reopens the fixture's store. */
static void reopen(void)
{
    char err[256] = "";

    store_close(st);
    st = NULL;
    ck_assert_msg(store_open(dbdir, &st, err, sizeof err) == KV_OK,
                  "store_open: %s", err);
}

static void put1(const void *k, size_t klen, const void *v, size_t vlen,
                 bool sync)
{
    struct store_batch *b = store_batch_new();

    ck_assert_ptr_nonnull(b);
    store_batch_put(b, k, klen, v, vlen);
    ck_assert_int_eq(store_write(st, b, sync), KV_OK);
    store_batch_free(b);
}

static void del1(const void *k, size_t klen)
{
    struct store_batch *b = store_batch_new();

    ck_assert_ptr_nonnull(b);
    store_batch_del(b, k, klen);
    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    store_batch_free(b);
}

static void puts_str(const char *k, const char *v)
{
    put1(k, strlen(k), v, strlen(v), true);
}

/* Asserts that K holds exactly V (VLEN bytes). */
static void expect_value(const void *k, size_t klen, const void *v, size_t vlen)
{
    void *got = (void *)&got; /* a sentinel: must be replaced */
    size_t n = 12345;
    int rc = store_get(st, k, klen, &got, &n);

    ck_assert_msg(rc == KV_OK, "get '%.*s': %d", (int)klen, (const char *)k,
                  rc);
    ck_assert_uint_eq(n, vlen);
    if (vlen)
        ck_assert_mem_eq(got, v, vlen);
    else
        ck_assert_ptr_null(got);
    free(got);
}

static void expect_str(const char *k, const char *v)
{
    expect_value(k, strlen(k), v, strlen(v));
}

static void expect_missing(const void *k, size_t klen)
{
    void *got = NULL;
    size_t n = 0;

    ck_assert_int_eq(store_get(st, k, klen, &got, &n), KV_ENOTFOUND);
}

/* ---- reads and writes ------------------------------------------------- */

START_TEST(a_put_is_read_back)
{
    puts_str("k", "value");
    expect_str("k", "value");
}
END_TEST

START_TEST(a_missing_key_is_not_found)
{
    expect_missing("nothing", 7);
    puts_str("k", "v");
    expect_missing("k2", 2);
    expect_missing("", 0);
}
END_TEST

START_TEST(an_overwrite_replaces_the_value)
{
    puts_str("k", "first value, a long one");
    puts_str("k", "2nd");
    expect_str("k", "2nd");
}
END_TEST

START_TEST(a_delete_removes_the_key)
{
    puts_str("k", "v");
    puts_str("other", "stays");
    del1("k", 1);
    expect_missing("k", 1);
    expect_str("other", "stays");
    /* Deleting a missing key is not an error for a batch. */
    del1("never", 5);
}
END_TEST

START_TEST(an_empty_value_is_found_with_length_zero)
{
    put1("empty", 5, "", 0, true);
    expect_value("empty", 5, NULL, 0);
}
END_TEST

START_TEST(binary_keys_and_values_are_kept_exactly)
{
    static const unsigned char k1[] = {'a', 0, 'b'};
    static const unsigned char k2[] = {'a', 0, 'c'};
    static const unsigned char k3[] = {'a'};
    static const unsigned char k4[] = {0xff, 0x00, 0xff};
    static const unsigned char v[] = {0, 0, 1, 0xff, 0};

    put1(k1, sizeof k1, "one", 3, true);
    put1(k2, sizeof k2, "two", 3, true);
    put1(k3, sizeof k3, "three", 5, true);
    put1(k4, sizeof k4, v, sizeof v, true);
    expect_value(k1, sizeof k1, "one", 3);
    expect_value(k2, sizeof k2, "two", 3);
    expect_value(k3, sizeof k3, "three", 5);
    expect_value(k4, sizeof k4, v, sizeof v);
    expect_missing("a\0", 2);
}
END_TEST

START_TEST(a_one_mebibyte_value_is_read_back)
{
    size_t n = 1u << 20;
    unsigned char *v = malloc(n);

    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i < n; i++)
        v[i] = (unsigned char)(i * 7 + (i >> 10));
    put1("big", 3, v, n, true);
    expect_value("big", 3, v, n);
    reopen();
    expect_value("big", 3, v, n);
    free(v);
}
END_TEST

/* ---- batches ---------------------------------------------------------- */

START_TEST(a_batch_applies_all_its_writes_together)
{
    struct store_batch *b = store_batch_new();

    puts_str("old", "x");
    ck_assert_ptr_nonnull(b);
    store_batch_put(b, "a", 1, "1", 1);
    store_batch_put(b, "b", 1, "2", 1);
    store_batch_del(b, "old", 3);
    /* Nothing is visible before the write. */
    expect_missing("a", 1);
    expect_str("old", "x");
    ck_assert_int_eq(store_write(st, b, false), KV_OK);
    expect_str("a", "1");
    expect_str("b", "2");
    expect_missing("old", 3);
    store_batch_free(b);
}
END_TEST

START_TEST(the_last_write_to_a_key_in_a_batch_wins)
{
    struct store_batch *b = store_batch_new();

    ck_assert_ptr_nonnull(b);
    store_batch_put(b, "k", 1, "1", 1);
    store_batch_del(b, "k", 1);
    store_batch_put(b, "k", 1, "2", 1);
    store_batch_put(b, "gone", 4, "x", 1);
    store_batch_del(b, "gone", 4);
    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    expect_str("k", "2");
    expect_missing("gone", 4);
    store_batch_free(b);
}
END_TEST

START_TEST(a_cleared_batch_writes_nothing_it_held)
{
    struct store_batch *b = store_batch_new();

    ck_assert_ptr_nonnull(b);
    store_batch_put(b, "dropped", 7, "x", 1);
    store_batch_clear(b);
    store_batch_put(b, "kept", 4, "y", 1);
    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    expect_missing("dropped", 7);
    expect_str("kept", "y");
    store_batch_free(b);
    store_batch_free(NULL);
}
END_TEST

START_TEST(an_empty_batch_writes_fine)
{
    struct store_batch *b = store_batch_new();

    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    store_batch_free(b);
}
END_TEST

/* ---- durability and opening ------------------------------------------ */

START_TEST(a_synced_write_survives_close_and_reopen)
{
    puts_str("durable", "yes");
    puts_str("deleted", "soon");
    del1("deleted", 7);
    reopen();
    expect_str("durable", "yes");
    expect_missing("deleted", 7);
    /* And the reopened store takes writes. */
    puts_str("after", "reopen");
    reopen();
    expect_str("after", "reopen");
    expect_str("durable", "yes");
}
END_TEST

START_TEST(open_creates_missing_parent_folders)
{
    char deep[256], err[256] = "";
    struct store *s2 = NULL;
    struct stat sb;

    snprintf(deep, sizeof deep, "%s/a/b/c/db", tmpdir);
    ck_assert_msg(store_open(deep, &s2, err, sizeof err) == KV_OK,
                  "store_open: %s", err);
    ck_assert_int_eq(stat(deep, &sb), 0);
    ck_assert(S_ISDIR(sb.st_mode));
    store_close(s2);
    store_close(NULL);
}
END_TEST

START_TEST(opening_the_same_dir_twice_fails_with_eio_and_a_message)
{
    char err[512] = "";
    struct store *s2 = NULL;

    log_setup(LOG_OFF, NULL);
    puts_str("k", "v");
    ck_assert_int_eq(store_open(dbdir, &s2, err, sizeof err), KV_EIO);
    ck_assert_ptr_null(s2);
    ck_assert_msg(strstr(err, dbdir) != NULL, "dir missing from '%s'", err);
    ck_assert_msg(strlen(err) > strlen(dbdir) + 10, "no detail in '%s'", err);
    /* The failed open did not disturb the first one... */
    expect_str("k", "v");
    puts_str("k2", "v2");
    /* ...and once it is closed, the directory opens again. */
    reopen();
    expect_str("k2", "v2");
}
END_TEST

START_TEST(opening_below_a_regular_file_fails_with_eio_and_a_message)
{
    char file[256], under[300], err[512] = "";
    struct store *s2 = NULL;
    int fd;

    log_setup(LOG_OFF, NULL);
    snprintf(file, sizeof file, "%s/plain", tmpdir);
    fd = open(file, O_CREAT | O_WRONLY, 0644);
    ck_assert_int_ge(fd, 0);
    close(fd);
    snprintf(under, sizeof under, "%s/db", file);
    ck_assert_int_eq(store_open(under, &s2, err, sizeof err), KV_EIO);
    ck_assert_ptr_null(s2);
    ck_assert_msg(strstr(err, file) != NULL, "path missing from '%s'", err);
}
END_TEST

START_TEST(an_empty_or_overlong_path_fails_with_eio_and_a_message)
{
    size_t n = 5000;
    char *longpath = malloc(n + 1);
    char err[512] = "";
    struct store *s2 = NULL;

    log_setup(LOG_OFF, NULL);
    ck_assert_int_eq(store_open("", &s2, err, sizeof err), KV_EIO);
    ck_assert_ptr_null(s2);
    ck_assert_msg(err[0] != '\0', "no message for an empty path");

    ck_assert_ptr_nonnull(longpath);
    memset(longpath, 'x', n);
    memcpy(longpath, tmpdir, strlen(tmpdir));
    longpath[strlen(tmpdir)] = '/';
    longpath[n] = '\0';
    err[0] = '\0';
    ck_assert_int_eq(store_open(longpath, &s2, err, sizeof err), KV_EIO);
    ck_assert_ptr_null(s2);
    ck_assert_msg(strstr(err, tmpdir) != NULL, "path missing from '%s'", err);
    free(longpath);
}
END_TEST

/* ---- iterators -------------------------------------------------------- */

struct bkey {
    const char *p;
    size_t n;
};

/* Keys in bytewise order (unsigned bytes, a prefix sorts first). */
static const struct bkey ordered[] = {
    {"\x00", 1},  {"a", 1},    {"a\x00", 2},    {"a\x00\x00", 3},
    {"a\x01", 2}, {"ab", 2},   {"b", 1},        {"\x7f", 1},
    {"\x80", 1},  {"\xff", 1}, {"\xff\xff", 2},
};
#define NORDERED (sizeof ordered / sizeof ordered[0])

/* Writes the ordered keys in a scrambled order; key I's value is 'A' + I. */
static void put_ordered(void)
{
    for (size_t i = 0; i < NORDERED; i++) {
        size_t j = (i * 7 + 3) % NORDERED; /* 7 is prime to 11 */
        char v = (char)('A' + j);
        put1(ordered[j].p, ordered[j].n, &v, 1, false);
    }
}

/* Asserts IT is on ordered[I] with its value. */
static void expect_at(struct store_iter *it, size_t i)
{
    size_t klen = 0, vlen = 0;

    ck_assert_msg(store_iter_valid(it), "iterator ended before key %zu", i);
    const void *k = store_iter_key(it, &klen);
    const char *v = store_iter_value(it, &vlen);
    ck_assert_msg(klen == ordered[i].n && memcmp(k, ordered[i].p, klen) == 0,
                  "expected key %zu", i);
    ck_assert_uint_eq(vlen, 1);
    ck_assert_int_eq(v[0], 'A' + (int)i);
}

START_TEST(an_iterator_walks_keys_in_bytewise_order)
{
    put_ordered();
    struct store_iter *it = store_iter_new(st);
    ck_assert_ptr_nonnull(it);
    store_iter_seek(it, "", 0);
    for (size_t i = 0; i < NORDERED; i++) {
        expect_at(it, i);
        store_iter_next(it);
    }
    ck_assert(!store_iter_valid(it));
    ck_assert_int_eq(store_iter_status(it), KV_OK);
    store_iter_free(it);
}
END_TEST

START_TEST(seek_lands_on_the_first_key_at_or_after_the_target)
{
    put_ordered();
    struct store_iter *it = store_iter_new(st);
    ck_assert_ptr_nonnull(it);

    store_iter_seek(it, "ab", 2); /* exact */
    expect_at(it, 5);
    store_iter_seek(it, "a\x00\x01", 3); /* between a\0\0 and a\1 */
    expect_at(it, 4);
    store_iter_next(it);
    expect_at(it, 5);
    store_iter_seek(it, "a", 1); /* backwards works too */
    expect_at(it, 1);
    store_iter_seek(it, "c", 1); /* between b and \x7f */
    expect_at(it, 7);
    store_iter_seek(it, "\xff\xff\x00", 3); /* past the last key */
    ck_assert(!store_iter_valid(it));
    ck_assert_int_eq(store_iter_status(it), KV_OK);
    store_iter_free(it);
}
END_TEST

START_TEST(an_iterator_over_an_empty_store_is_at_its_end)
{
    struct store_iter *it = store_iter_new(st);

    ck_assert_ptr_nonnull(it);
    store_iter_seek(it, "", 0);
    ck_assert(!store_iter_valid(it));
    ck_assert_int_eq(store_iter_status(it), KV_OK);
    store_iter_free(it);
    store_iter_free(NULL);
}
END_TEST

START_TEST(an_iterator_sees_the_store_as_it_was_when_created)
{
    size_t klen, vlen;
    const char *k, *v;

    puts_str("a", "old-a");
    puts_str("b", "old-b");
    struct store_iter *it = store_iter_new(st);
    ck_assert_ptr_nonnull(it);

    /* Writes after the iterator was created... */
    puts_str("b", "new-b");
    del1("a", 1);
    puts_str("c", "new-c");
    puts_str("0", "new-0");

    /* ...are invisible to it, even when it seeks after them. */
    store_iter_seek(it, "", 0);
    ck_assert(store_iter_valid(it));
    k = store_iter_key(it, &klen);
    v = store_iter_value(it, &vlen);
    ck_assert_uint_eq(klen, 1);
    ck_assert_int_eq(k[0], 'a');
    ck_assert_uint_eq(vlen, 5);
    ck_assert_mem_eq(v, "old-a", 5);
    store_iter_next(it);
    ck_assert(store_iter_valid(it));
    k = store_iter_key(it, &klen);
    v = store_iter_value(it, &vlen);
    ck_assert_int_eq(k[0], 'b');
    ck_assert_mem_eq(v, "old-b", 5);
    store_iter_next(it);
    ck_assert(!store_iter_valid(it));
    store_iter_seek(it, "c", 1);
    ck_assert(!store_iter_valid(it));
    ck_assert_int_eq(store_iter_status(it), KV_OK);

    /* A new iterator sees the new state. */
    struct store_iter *it2 = store_iter_new(st);
    ck_assert_ptr_nonnull(it2);
    store_iter_seek(it2, "", 0);
    const char *want[] = {"0", "b", "c"};
    for (size_t i = 0; i < 3; i++) {
        ck_assert(store_iter_valid(it2));
        k = store_iter_key(it2, &klen);
        ck_assert_uint_eq(klen, 1);
        ck_assert_int_eq(k[0], want[i][0]);
        store_iter_next(it2);
    }
    ck_assert(!store_iter_valid(it2));
    store_iter_free(it2);
    store_iter_free(it);
}
END_TEST

/* ---- corruption ------------------------------------------------------- */

#define CORRUPT_KEYS 2000
#define CORRUPT_VLEN 1000

/* The value of key I: pseudo-random bytes (incompressible, so the table
 * holds many blocks). */
static void corrupt_value(unsigned i, unsigned char *v)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (i + 1);
    for (size_t j = 0; j < CORRUPT_VLEN; j++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v[j] = (unsigned char)x;
    }
}

/* Finds the largest .ldb (or older .sst) table in dbdir into PATH. Returns
 * its size, 0 when there is none. */
static off_t find_table(char *path, size_t cap)
{
    DIR *d = opendir(dbdir);
    struct dirent *de;
    off_t best = 0;

    ck_assert_ptr_nonnull(d);
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        char p[512];
        struct stat sb;
        if (n < 5 || (strcmp(de->d_name + n - 4, ".ldb") != 0 &&
                      strcmp(de->d_name + n - 4, ".sst") != 0))
            continue;
        snprintf(p, sizeof p, "%s/%s", dbdir, de->d_name);
        if (stat(p, &sb) == 0 && sb.st_size > best) {
            best = sb.st_size;
            snprintf(path, cap, "%s", p);
        }
    }
    closedir(d);
    return best;
}

START_TEST(a_damaged_table_is_reported_not_served)
{
    unsigned char v[CORRUPT_VLEN];
    char key[32], table[512] = "", err[512] = "";
    struct store_batch *b = store_batch_new();

    log_setup(LOG_OFF, NULL);
    ck_assert_ptr_nonnull(b);
    for (unsigned i = 0; i < CORRUPT_KEYS; i++) {
        int n = snprintf(key, sizeof key, "key%06u", i);
        corrupt_value(i, v);
        store_batch_put(b, key, (size_t)n, v, sizeof v);
        if (i % 100 == 99) {
            ck_assert_int_eq(store_write(st, b, true), KV_OK);
            store_batch_clear(b);
        }
    }
    store_batch_free(b);
    /* Reopening replays the log into a level-0 table. */
    reopen();
    store_close(st);
    st = NULL;
    off_t size = find_table(table, sizeof table);
    ck_assert_msg(size > (off_t)(CORRUPT_KEYS * CORRUPT_VLEN / 2),
                  "LevelDB wrote no table of the data (largest: %lld bytes)",
                  (long long)size);

    /* Flip one byte in every 4 KiB of the first half of the file, where
     * the data blocks are (the index and footer are at the end). */
    int fd = open(table, O_RDWR);
    ck_assert_int_ge(fd, 0);
    for (off_t at = 100; at < size / 2; at += 4096) {
        unsigned char c;
        ck_assert_int_eq(pread(fd, &c, 1, at), 1);
        c ^= 0x5a;
        ck_assert_int_eq(pwrite(fd, &c, 1, at), 1);
    }
    close(fd);

    int rc = store_open(dbdir, &st, err, sizeof err);
    if (rc != KV_OK) {
        /* Refusing to open a damaged store is a fine way to report it. */
        ck_assert_msg(rc == KV_ECORRUPT || rc == KV_EIO, "open: %d", rc);
        st = NULL;
        return;
    }

    unsigned errors = 0;
    for (unsigned i = 0; i < CORRUPT_KEYS; i++) {
        int n = snprintf(key, sizeof key, "key%06u", i);
        void *got = NULL;
        size_t glen = 0;
        rc = store_get(st, key, (size_t)n, &got, &glen);
        if (rc == KV_OK) {
            corrupt_value(i, v);
            ck_assert_msg(glen == sizeof v && memcmp(got, v, glen) == 0,
                          "key %u: damaged data served as a value", i);
            free(got);
        } else {
            ck_assert_msg(rc == KV_ECORRUPT || rc == KV_EIO,
                          "key %u: got %d, not KV_ECORRUPT/KV_EIO", i, rc);
            errors++;
        }
    }
    ck_assert_msg(errors > 0, "no read noticed the damage");

    /* An iterator serves only intact entries and ends with the error. */
    struct store_iter *it = store_iter_new(st);
    ck_assert_ptr_nonnull(it);
    unsigned seen = 0;
    for (store_iter_seek(it, "", 0); store_iter_valid(it);
         store_iter_next(it)) {
        size_t klen, vlen;
        const char *k = store_iter_key(it, &klen);
        const void *val = store_iter_value(it, &vlen);
        unsigned idx = 0;
        ck_assert_uint_eq(klen, 9);
        ck_assert_mem_eq(k, "key", 3);
        for (size_t j = 3; j < klen; j++)
            idx = idx * 10 + (unsigned)(k[j] - '0');
        ck_assert_uint_lt(idx, CORRUPT_KEYS);
        corrupt_value(idx, v);
        ck_assert_msg(vlen == sizeof v && memcmp(val, v, vlen) == 0,
                      "iterator served damaged data for key %u", idx);
        seen++;
    }
    ck_assert_uint_lt(seen, CORRUPT_KEYS);
    rc = store_iter_status(it);
    ck_assert_msg(rc == KV_ECORRUPT || rc == KV_EIO,
                  "iterator status %d after skipping damaged blocks", rc);
    store_iter_free(it);
}
END_TEST

/* One damaged block in the middle of a table: a read of a key in it gets
 * KV_ECORRUPT, the store remembers what LevelDB said, and an iterator
 * stops there: it yields the keys before the block in order, with no gap,
 * then reports the error (LevelDB alone would skip the block). */
START_TEST(an_iterator_stops_at_the_first_damaged_block)
{
    unsigned char v[CORRUPT_VLEN];
    char key[32], table[512] = "", err[512] = "";
    struct store_batch *b = store_batch_new();

    log_setup(LOG_OFF, NULL);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_null(store_damage(st));
    for (unsigned i = 0; i < CORRUPT_KEYS; i++) {
        int n = snprintf(key, sizeof key, "key%06u", i);
        corrupt_value(i, v);
        store_batch_put(b, key, (size_t)n, v, sizeof v);
    }
    ck_assert_int_eq(store_write(st, b, true), KV_OK);
    store_batch_free(b);
    reopen();
    store_close(st);
    st = NULL;
    off_t size = find_table(table, sizeof table);
    ck_assert_msg(size > (off_t)(CORRUPT_KEYS * CORRUPT_VLEN / 2),
                  "LevelDB wrote no table of the data");
    int fd = open(table, O_RDWR);
    ck_assert_int_ge(fd, 0);
    unsigned char c[16];
    ck_assert_int_eq(pread(fd, c, sizeof c, size / 3), (ssize_t)sizeof c);
    for (size_t i = 0; i < sizeof c; i++)
        c[i] ^= 0xff;
    ck_assert_int_eq(pwrite(fd, c, sizeof c, size / 3), (ssize_t)sizeof c);
    close(fd);
    ck_assert_msg(store_open(dbdir, &st, err, sizeof err) == KV_OK, "open: %s",
                  err);
    ck_assert_ptr_null(store_damage(st));

    struct store_iter *it = store_iter_new(st);
    ck_assert_ptr_nonnull(it);
    unsigned seen = 0;
    for (store_iter_seek(it, "", 0); store_iter_valid(it);
         store_iter_next(it)) {
        size_t klen;
        const char *k = store_iter_key(it, &klen);
        char want[32];
        int n = snprintf(want, sizeof want, "key%06u", seen);
        ck_assert_msg(klen == (size_t)n && memcmp(k, want, klen) == 0,
                      "entry %u is %.*s: the iterator skipped a block", seen,
                      (int)klen, k);
        seen++;
    }
    ck_assert_uint_gt(seen, 0);
    ck_assert_uint_lt(seen, CORRUPT_KEYS);
    ck_assert_int_eq(store_iter_status(it), KV_ECORRUPT);
    store_iter_next(it); /* stays ended */
    ck_assert(!store_iter_valid(it));
    store_iter_free(it);
    const char *why = store_damage(st);
    ck_assert_ptr_nonnull(why);
    ck_assert_ptr_nonnull(strstr(why, "Corruption"));
    char first[512];
    snprintf(first, sizeof first, "%s", why);

    /* The first key past the iteration's end is in the damaged block. */
    int n = snprintf(key, sizeof key, "key%06u", seen);
    void *got = NULL;
    size_t glen = 0;
    ck_assert_int_eq(store_get(st, key, (size_t)n, &got, &glen), KV_ECORRUPT);
    ck_assert_str_eq(store_damage(st), first); /* the first one is kept */
}
END_TEST

/* ---- suite ------------------------------------------------------------ */

/* The store suite: reads and writes, batches, durability, iterators and
 * corruption, each test in its own LevelDB under /tmp. */
Suite *store_suite(void)
{
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("reads_and_writes");

    tcase_add_unchecked_fixture(tc, root_setup, root_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, a_put_is_read_back);
    tcase_add_test(tc, a_missing_key_is_not_found);
    tcase_add_test(tc, an_overwrite_replaces_the_value);
    tcase_add_test(tc, a_delete_removes_the_key);
    tcase_add_test(tc, an_empty_value_is_found_with_length_zero);
    tcase_add_test(tc, binary_keys_and_values_are_kept_exactly);
    tcase_add_test(tc, a_one_mebibyte_value_is_read_back);
    suite_add_tcase(s, tc);

    tc = tcase_create("batches");
    tcase_add_unchecked_fixture(tc, root_setup, root_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, a_batch_applies_all_its_writes_together);
    tcase_add_test(tc, the_last_write_to_a_key_in_a_batch_wins);
    tcase_add_test(tc, a_cleared_batch_writes_nothing_it_held);
    tcase_add_test(tc, an_empty_batch_writes_fine);
    suite_add_tcase(s, tc);

    tc = tcase_create("durability");
    tcase_add_unchecked_fixture(tc, root_setup, root_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, a_synced_write_survives_close_and_reopen);
    tcase_add_test(tc, open_creates_missing_parent_folders);
    tcase_add_test(tc, opening_the_same_dir_twice_fails_with_eio_and_a_message);
    tcase_add_test(tc,
                   opening_below_a_regular_file_fails_with_eio_and_a_message);
    tcase_add_test(tc, an_empty_or_overlong_path_fails_with_eio_and_a_message);
    suite_add_tcase(s, tc);

    tc = tcase_create("iterators");
    tcase_add_unchecked_fixture(tc, root_setup, root_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, an_iterator_walks_keys_in_bytewise_order);
    tcase_add_test(tc, seek_lands_on_the_first_key_at_or_after_the_target);
    tcase_add_test(tc, an_iterator_over_an_empty_store_is_at_its_end);
    tcase_add_test(tc, an_iterator_sees_the_store_as_it_was_when_created);
    suite_add_tcase(s, tc);

    tc = tcase_create("corruption");
    tcase_set_timeout(tc, 120);
    tcase_add_unchecked_fixture(tc, root_setup, root_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, a_damaged_table_is_reported_not_served);
    tcase_add_test(tc, an_iterator_stops_at_the_first_damaged_block);
    suite_add_tcase(s, tc);
    return s;
}
