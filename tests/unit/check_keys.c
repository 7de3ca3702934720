/*
 * check_keys - unit tests of CurveZMQ key files and key lists
 * (libkv/keys.c): Z85 checks, the comment rule, generating (mode 0600,
 * never replacing), and one test per kind of broken file, each asserting
 * the line and a word of the message. Files live in a temp dir under /tmp
 * that the fixture removes.
 */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "keys.h"
#include "kv.h"

Suite *keys_suite(void);

/* A pair made by kvnode keygen, and another public key. */
#define PUB "40Vpe(eUZAXw-r[8rL/@r&o3y1Z*enq@f#KFYsA5"
#define OTHER "C+J!7xp(5s-CgyLU1on+<Ix7M5$tTn5unJ+e}>-v"

static char tmpdir[64];
static char pair_text[256]; /* a valid key file, made by keys_generate */
static char pair_pub[KEYS_Z85_LEN + 1];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kv-check-keys-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    while (d != NULL && (e = readdir(d)) != NULL) {
        char p[512];
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    if (d != NULL)
        closedir(d);
    rmdir(tmpdir);
    tmpdir[0] = '\0';
}

/* Writes TEXT to tmpdir/NAME with MODE; returns the path (static). */
static const char *file(const char *name, const char *text, mode_t mode)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    unlink(path);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(text, 1, strlen(text), f), strlen(text));
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_int_eq(chmod(path, mode), 0);
    return path;
}

/* The text of a real key file (made once per test). */
static void real_pair(void)
{
    char path[256], err[512];
    snprintf(path, sizeof path, "%s/real.key", tmpdir);
    unlink(path);
    ck_assert_int_eq(keys_generate(path, pair_pub, err, sizeof err), KV_OK);
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(pair_text, 1, sizeof pair_text - 1, f);
    pair_text[n] = '\0';
    fclose(f);
}

/* Asserts that key file TEXT fails with "PATH:LINE: ..." containing WORD. */
static void pair_fails(const char *text, unsigned line, const char *word)
{
    char err[512] = "", want[300];
    struct keys_pair p;
    const char *path = file("bad.key", text, 0600);
    ck_assert_int_eq(keys_load_pair(path, &p, err, sizeof err), KV_EINVAL);
    snprintf(want, sizeof want, "%s:%u: ", path, line);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0 &&
                      strstr(err, word) != NULL,
                  "want '%s...%s', got '%s'", want, word, err);
}

/* Lines of a pair file from the real pair's text. */
static const char *line_of(const char *name)
{
    static char line[2][64];
    int which = strcmp(name, "secret") == 0;
    const char *p = strstr(pair_text, which ? "secret = " : "public = ");
    ck_assert_ptr_nonnull(p);
    snprintf(line[which], sizeof line[which], "%.49s", p);
    return line[which];
}

START_TEST(z85_keys_are_checked_and_decoded)
{
    unsigned char bin[KEYS_BIN_LEN];
    ck_assert(keys_z85_valid(PUB, 40));
    ck_assert(keys_z85_valid(OTHER, 40));
    ck_assert(!keys_z85_valid(PUB, 39));
    ck_assert(!keys_z85_valid(NULL, 40));
    ck_assert(!keys_z85_valid("C+J!7xp(5s-CgyLU1on+<Ix7M5$tTn5unJ+e}>-~", 40));
    ck_assert(!keys_z85_valid("C+J!7xp(5s-CgyLU1on+<Ix7M5$tTn5unJ+e}>- ", 40));
    ck_assert(!keys_z85_valid("$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$", 40));
    /* "00000" is 0, "%nSc0" is 2^32 - 1 (the largest group). */
    ck_assert_int_eq(
        keys_z85_decode("0000000000000000000000000000000000000000", bin), 0);
    for (size_t i = 0; i < KEYS_BIN_LEN; i++)
        ck_assert_uint_eq(bin[i], 0);
    ck_assert_int_eq(
        keys_z85_decode("%nSc0%nSc0%nSc0%nSc0%nSc0%nSc0%nSc0%nSc0", bin), 0);
    for (size_t i = 0; i < KEYS_BIN_LEN; i++)
        ck_assert_uint_eq(bin[i], 0xff);
    ck_assert_int_eq(
        keys_z85_decode("%nSc1%nSc0%nSc0%nSc0%nSc0%nSc0%nSc0%nSc0", bin), -1);
}
END_TEST

START_TEST(a_comment_starts_at_a_hash_after_a_blank_only)
{
    const char a[] = "abc#def # comment";
    ck_assert_uint_eq(keys_cut_comment(a, strlen(a)), 8);
    const char b[] = "# all comment";
    ck_assert_uint_eq(keys_cut_comment(b, strlen(b)), 0);
    const char c[] = "x\t#tab";
    ck_assert_uint_eq(keys_cut_comment(c, strlen(c)), 2);
    const char d[] = "no#comment#here";
    ck_assert_uint_eq(keys_cut_comment(d, strlen(d)), strlen(d));
}
END_TEST

START_TEST(a_generated_file_is_0600_loads_and_is_never_replaced)
{
    char path[256], err[512], pub[KEYS_Z85_LEN + 1];
    struct keys_pair p;
    struct stat st;
    mode_t old = umask(0); /* 0600 does not come from the umask */
    snprintf(path, sizeof path, "%s/gen.key", tmpdir);
    int rc = keys_generate(path, pub, err, sizeof err);
    umask(old);
    ck_assert_int_eq(rc, KV_OK);
    ck_assert_int_eq(stat(path, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0600);
    ck_assert_int_eq(keys_load_pair(path, &p, err, sizeof err), KV_OK);
    ck_assert_str_eq(p.pub, pub);
    ck_assert(keys_z85_valid(p.sec, strlen(p.sec)));
    ck_assert(!p.loose_mode);
    ck_assert_int_eq(keys_generate(path, pub, err, sizeof err), KV_EINVAL);
    ck_assert_msg(strstr(err, "refusing to overwrite") != NULL, "got %s", err);
    struct keys_pair q;
    ck_assert_int_eq(keys_load_pair(path, &q, err, sizeof err), KV_OK);
    ck_assert_str_eq(q.sec, p.sec); /* untouched */
    /* A symbolic link is not followed, even to a missing file. */
    char link[300];
    snprintf(link, sizeof link, "%s/link.key", tmpdir);
    ck_assert_int_eq(symlink("/nonexistent/kv-key", link), 0);
    ck_assert_int_ne(keys_generate(link, pub, err, sizeof err), KV_OK);
    /* A folder that does not exist is an I/O error. */
    snprintf(path, sizeof path, "%s/no/such/dir.key", tmpdir);
    ck_assert_int_eq(keys_generate(path, pub, err, sizeof err), KV_EIO);
}
END_TEST

START_TEST(a_key_file_readable_by_others_loads_but_says_so)
{
    real_pair();
    struct keys_pair p;
    char err[512];
    const char *path = file("open.key", pair_text, 0644);
    ck_assert_int_eq(keys_load_pair(path, &p, err, sizeof err), KV_OK);
    ck_assert(p.loose_mode);
    ck_assert_str_eq(p.pub, pair_pub);
}
END_TEST

START_TEST(each_broken_key_file_reports_its_line_and_problem)
{
    char text[512];
    real_pair();
    const char *pub = line_of("public"), *sec = line_of("secret");

    snprintf(text, sizeof text, "%s\n", pub);
    pair_fails(text, 0, "no 'secret = KEY' line");
    snprintf(text, sizeof text, "# only a secret\n%s\n", sec);
    pair_fails(text, 0, "no 'public = KEY' line");
    snprintf(text, sizeof text, "%s\n%s\n%s\n", pub, sec, pub);
    pair_fails(text, 3, "duplicate key 'public' (first at line 1)");
    snprintf(text, sizeof text, "%s\nsecret = short\n", pub);
    pair_fails(text, 2, "secret key is not a Z85 key");
    snprintf(text, sizeof text, "%s\n%s\nprivate = x\n", pub, sec);
    pair_fails(text, 3, "unknown key 'private'");
    snprintf(text, sizeof text, "%s\n%s\njunk\n", pub, sec);
    pair_fails(text, 3, "expected 'public = KEY'");
    /* A public key that is not the secret key's. */
    snprintf(text, sizeof text, "public = %s\n%s\n", OTHER, sec);
    pair_fails(text, 1, "not the one of the secret key (line 2)");
    /* Comments and blanks are fine; a glued '#' is part of the key. */
    snprintf(text, sizeof text, "\n  # a pair\n%s   # mine\n\t%s\n", pub, sec);
    struct keys_pair p;
    char err[512];
    ck_assert_int_eq(
        keys_load_pair(file("ok.key", text, 0600), &p, err, sizeof err), KV_OK);
    snprintf(text, sizeof text, "%s#x\n%s\n", pub, sec);
    pair_fails(text, 1, "public key is not a Z85 key");
}
END_TEST

START_TEST(a_missing_or_odd_file_is_an_io_error)
{
    char path[256], err[512];
    struct keys_pair p;
    snprintf(path, sizeof path, "%s/none.key", tmpdir);
    ck_assert_int_eq(keys_load_pair(path, &p, err, sizeof err), KV_EIO);
    ck_assert_msg(strstr(err, path) != NULL, "got %s", err);
    ck_assert_int_eq(keys_load_pair(tmpdir, &p, err, sizeof err), KV_EIO);
    ck_assert_msg(strstr(err, "not a regular file") != NULL, "got %s", err);
    /* Over 64 KiB: refused at line 0. */
    char *big = malloc(70000);
    ck_assert_ptr_nonnull(big);
    memset(big, '#', 69999);
    big[69999] = '\0';
    const char *bp = file("big.key", big, 0600);
    free(big);
    ck_assert_int_eq(keys_load_pair(bp, &p, err, sizeof err), KV_EINVAL);
    ck_assert_msg(strstr(err, ":0: file is larger") != NULL, "got %s", err);
}
END_TEST

START_TEST(a_key_list_has_one_key_a_line_and_comments)
{
    char text[512], err[512];
    char(*keys)[KEYS_Z85_LEN + 1] = NULL;
    size_t n = 0;
    snprintf(text, sizeof text,
             "# clients\n%s\n\n   %s   # the other one\r\n# end", PUB, OTHER);
    ck_assert_int_eq(
        keys_load_list(file("list", text, 0644), &keys, &n, err, sizeof err),
        KV_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(keys[0], PUB);
    ck_assert_str_eq(keys[1], OTHER);
    free(keys);
    /* An empty list is a list. */
    keys = NULL;
    ck_assert_int_eq(keys_load_list(file("empty", "# none yet\n", 0644), &keys,
                                    &n, err, sizeof err),
                     KV_OK);
    ck_assert_uint_eq(n, 0);
    free(keys);
}
END_TEST

START_TEST(each_broken_key_list_reports_its_line_and_problem)
{
    static const struct {
        const char *text;
        unsigned line;
        const char *word;
    } bad[] = {
        {"# x\n" PUB "\n" PUB "\n", 3, "key listed twice (first at line 2)"},
        {PUB " " OTHER "\n", 1, "is not a Z85 public key"},
        {"\n\nnot-a-key\n", 3, "'not-a-key' is not a Z85 public key"},
        {PUB "#glued\n", 1, "is not a Z85 public key"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[512] = "", want[300];
        char(*keys)[KEYS_Z85_LEN + 1] = NULL;
        size_t n = 0;
        const char *path = file("badlist", bad[i].text, 0644);
        ck_assert_int_eq(keys_load_list(path, &keys, &n, err, sizeof err),
                         KV_EINVAL);
        ck_assert_ptr_null(keys);
        snprintf(want, sizeof want, "%s:%u: ", path, bad[i].line);
        ck_assert_msg(strncmp(err, want, strlen(want)) == 0 &&
                          strstr(err, bad[i].word) != NULL,
                      "case %zu: want '%s...%s', got '%s'", i, want,
                      bad[i].word, err);
    }
}
END_TEST

Suite *keys_suite(void)
{
    Suite *s = suite_create("keys");
    TCase *tc = tcase_create("keys");
    tcase_add_checked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_test(tc, z85_keys_are_checked_and_decoded);
    tcase_add_test(tc, a_comment_starts_at_a_hash_after_a_blank_only);
    tcase_add_test(tc, a_generated_file_is_0600_loads_and_is_never_replaced);
    tcase_add_test(tc, a_key_file_readable_by_others_loads_but_says_so);
    tcase_add_test(tc, each_broken_key_file_reports_its_line_and_problem);
    tcase_add_test(tc, a_missing_or_odd_file_is_an_io_error);
    tcase_add_test(tc, a_key_list_has_one_key_a_line_and_comments);
    tcase_add_test(tc, each_broken_key_list_reports_its_line_and_problem);
    suite_add_tcase(s, tc);
    return s;
}
