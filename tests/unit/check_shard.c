/*
 * check_shard - unit tests of the key to shard map (libkv/shard.c).
 *
 * The map is part of the on-disk and on-wire contract: every node and every
 * client computes it independently, so it must be deterministic, honour
 * Redis-style hash tags exactly, spread keys evenly and never change between
 * releases (pinned values below).
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kv.h"
#include "shard.h"

Suite *shard_suite(void);

/* A small deterministic generator (xorshift64*) for reproducible keys. */
static uint64_t next_rand(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

static uint32_t shard_str(const char *key, uint32_t nshards)
{
    return shard_of(key, strlen(key), nshards);
}

/* Asserts that the hashed part of KEY is exactly WANT (WANT_LEN bytes). */
static void expect_part(const void *key, size_t klen, const void *want,
                        size_t want_len)
{
    const void *part = NULL;
    size_t n = shard_hash_part(key, klen, &part);

    ck_assert_msg(n == want_len, "hashed part of '%.*s' has %zu bytes, not %zu",
                  (int)klen, (const char *)key, n, want_len);
    ck_assert_ptr_nonnull(part);
    ck_assert_msg(memcmp(part, want, want_len) == 0,
                  "hashed part of '%.*s' is '%.*s', not '%.*s'", (int)klen,
                  (const char *)key, (int)n, (const char *)part, (int)want_len,
                  (const char *)want);
}

/* Asserts that the whole of KEY is hashed (it has no usable tag), and that
 * the pointer handed back is the key itself. */
static void expect_whole(const char *key)
{
    const void *part = NULL;
    size_t n = shard_hash_part(key, strlen(key), &part);

    ck_assert_msg(part == (const void *)key && n == strlen(key),
                  "'%s' should hash as a whole, got '%.*s'", key, (int)n,
                  part ? (const char *)part : "");
}

/* ---- determinism ------------------------------------------------------ */

START_TEST(the_same_key_always_maps_to_the_same_shard)
{
    uint64_t seed = 42;
    unsigned char key[64];

    for (int i = 0; i < 2000; i++) {
        size_t klen = 1 + next_rand(&seed) % sizeof key;
        for (size_t j = 0; j < klen; j++)
            key[j] = (unsigned char)next_rand(&seed);
        uint32_t a = shard_of(key, klen, 64);
        unsigned char copy[64];
        memcpy(copy, key, klen);
        ck_assert_uint_eq(shard_of(copy, klen, 64), a);
        ck_assert_uint_eq(shard_of(key, klen, 64), a);
        ck_assert_uint_lt(a, 64);
    }
}
END_TEST

START_TEST(every_key_maps_to_shard_zero_of_a_single_shard_cluster)
{
    ck_assert_uint_eq(shard_str("a", 1), 0);
    ck_assert_uint_eq(shard_str("anything at all", 1), 0);
    ck_assert_uint_eq(shard_str("{tag}x", 1), 0);
}
END_TEST

START_TEST(a_shard_is_always_below_the_shard_count)
{
    static const uint32_t counts[] = {1, 2, 3, 7, 8, 100, 4095, 4096};
    uint64_t seed = 7;
    unsigned char key[16];

    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        for (int i = 0; i < 500; i++) {
            for (size_t j = 0; j < sizeof key; j++)
                key[j] = (unsigned char)next_rand(&seed);
            ck_assert_uint_lt(shard_of(key, sizeof key, counts[c]), counts[c]);
        }
    }
}
END_TEST

START_TEST(keys_differing_after_a_nul_byte_are_hashed_in_full)
{
    static const unsigned char key[] = {'a', 0, 'b', 0, 'c'};

    expect_part(key, sizeof key, key, sizeof key);
}
END_TEST

/* ---- hash tags -------------------------------------------------------- */

START_TEST(keys_with_the_same_hash_tag_share_a_shard)
{
    static const uint32_t counts[] = {2, 8, 64, 4096};

    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        uint32_t n = counts[c];
        uint32_t want = shard_str("user1", n);
        ck_assert_uint_eq(shard_str("{user1}a", n), want);
        ck_assert_uint_eq(shard_str("{user1}b", n), want);
        ck_assert_uint_eq(shard_str("orders:{user1}:42", n), want);
        ck_assert_uint_eq(shard_str("{user1}", n), want);
    }
    expect_part("{user1}a", 8, "user1", 5);
    expect_part("x{user1}", 8, "user1", 5);
}
END_TEST

START_TEST(a_tag_hashes_like_the_bare_key_for_many_random_tags)
{
    uint64_t seed = 99;
    char key[80], tag[32];

    for (int i = 0; i < 1000; i++) {
        size_t tlen = 1 + next_rand(&seed) % 20;
        for (size_t j = 0; j < tlen; j++)
            tag[j] = (char)('a' + next_rand(&seed) % 26);
        tag[tlen] = '\0';
        snprintf(key, sizeof key, "p%u{%s}s%u", (unsigned)i, tag,
                 (unsigned)(next_rand(&seed) % 1000));
        ck_assert_uint_eq(shard_str(key, 4096), shard_str(tag, 4096));
    }
}
END_TEST

START_TEST(an_empty_tag_hashes_the_whole_key)
{
    expect_whole("{}");
    expect_whole("{}abc");
    expect_whole("abc{}");
    /* The first '{' decides: its tag is empty, so a later tag is ignored. */
    expect_whole("{}{user1}");
}
END_TEST

START_TEST(only_the_first_tag_counts)
{
    expect_part("{a}{b}", 6, "a", 1);
    expect_part("x{a}y{b}z", 9, "a", 1);
    expect_part("{user1}{user2}", 14, "user1", 5);
    ck_assert_uint_eq(shard_str("{user1}{user2}", 4096),
                      shard_str("user1", 4096));
    /* The tag ends at the first '}' after the first '{'. */
    expect_part("{a{b}c}", 7, "a{b", 3);
}
END_TEST

START_TEST(an_unmatched_brace_hashes_the_whole_key)
{
    expect_whole("{");
    expect_whole("abc{def");
    expect_whole("}abc{");
    expect_whole("a}b");
    expect_whole("no braces at all");
}
END_TEST

START_TEST(an_empty_key_hashes_to_a_valid_shard)
{
    const void *part = NULL;

    ck_assert_uint_eq(shard_hash_part("", 0, &part), 0);
    ck_assert_uint_lt(shard_of("", 0, 8), 8);
}
END_TEST

/* ---- distribution ----------------------------------------------------- */

START_TEST(random_keys_spread_evenly_over_eight_shards)
{
    /* 80,000 keys of 4..36 random bytes from a fixed seed: 10,000 expected
     * per shard, standard deviation about 94, so 9,000..11,000 only fails
     * when the hash is biased. */
    uint64_t seed = 0x5eed5eedull;
    unsigned count[8] = {0};
    unsigned char key[36];

    for (int i = 0; i < 80000; i++) {
        size_t klen = 4 + next_rand(&seed) % 33;
        for (size_t j = 0; j < klen; j++)
            key[j] = (unsigned char)next_rand(&seed);
        count[shard_of(key, klen, 8)]++;
    }
    for (int s = 0; s < 8; s++)
        ck_assert_msg(count[s] >= 9000 && count[s] <= 11000,
                      "shard %d got %u of 80000 keys", s, count[s]);
}
END_TEST

START_TEST(sequential_keys_spread_evenly_over_eight_shards)
{
    unsigned count[8] = {0};
    char key[32];

    for (int i = 0; i < 80000; i++) {
        int n = snprintf(key, sizeof key, "user:%d", i);
        count[shard_of(key, (size_t)n, 8)]++;
    }
    for (int s = 0; s < 8; s++)
        ck_assert_msg(count[s] >= 9000 && count[s] <= 11000,
                      "shard %d got %u of 80000 keys", s, count[s]);
}
END_TEST

/* ---- public API and compatibility ------------------------------------- */

START_TEST(kv_shard_of_equals_shard_of)
{
    static const uint32_t counts[] = {1, 3, 8, 64, 4096};
    uint64_t seed = 3;
    unsigned char key[40];

    for (int i = 0; i < 2000; i++) {
        size_t klen = 1 + next_rand(&seed) % sizeof key;
        for (size_t j = 0; j < klen; j++)
            key[j] = (unsigned char)next_rand(&seed);
        if (i % 4 == 0 && klen > 4) { /* some keys with a tag */
            key[0] = '{';
            key[klen / 2] = '}';
        }
        uint32_t n = counts[(size_t)i % (sizeof counts / sizeof counts[0])];
        ck_assert_uint_eq(kv_shard_of(key, klen, n), shard_of(key, klen, n));
    }
}
END_TEST

START_TEST(the_shard_map_never_changes)
{
    /* Compatibility test. These values were computed once with the
     * implementation (siphash-2-4 keyed "kv-shard-map-v1", its 8 bytes read
     * as a little-endian u64, mod nshards) and pinned. Changing the map
     * would move every key of every existing cluster to another shard,
     * making stored data unreachable: if this fails, the change is the
     * bug, not the pins. */
    static const struct {
        const char *key;
        uint32_t s8, s64, s4096;
    } pins[] = {
        {"a", 5, 61, 701},         {"user1", 4, 28, 4060},
        {"{user1}a", 4, 28, 4060}, {"hello", 7, 31, 607},
        {"kv", 0, 16, 3856},       {"key-0", 1, 25, 3353},
        {"key-1", 4, 28, 1692},    {"key-2", 4, 4, 3140},
    };
    static const unsigned char bin[] = {0xff, 0x00, 0x01};

    for (size_t i = 0; i < sizeof pins / sizeof pins[0]; i++) {
        ck_assert_msg(shard_str(pins[i].key, 8) == pins[i].s8,
                      "'%s' moved among 8 shards", pins[i].key);
        ck_assert_msg(shard_str(pins[i].key, 64) == pins[i].s64,
                      "'%s' moved among 64 shards", pins[i].key);
        ck_assert_msg(shard_str(pins[i].key, 4096) == pins[i].s4096,
                      "'%s' moved among 4096 shards", pins[i].key);
    }
    ck_assert_uint_eq(shard_of(bin, sizeof bin, 8), 5);
    ck_assert_uint_eq(shard_of(bin, sizeof bin, 4096), 2973);
    ck_assert_uint_eq(shard_str("hello", 3), 0);
    ck_assert_uint_eq(shard_str("a", 3), 2);
}
END_TEST

/* ---- suite ------------------------------------------------------------ */

/* The shard suite: determinism, hash tags, distribution, compatibility. */
Suite *shard_suite(void)
{
    Suite *s = suite_create("shard");
    TCase *tc = tcase_create("determinism");

    tcase_add_test(tc, the_same_key_always_maps_to_the_same_shard);
    tcase_add_test(tc, every_key_maps_to_shard_zero_of_a_single_shard_cluster);
    tcase_add_test(tc, a_shard_is_always_below_the_shard_count);
    tcase_add_test(tc, keys_differing_after_a_nul_byte_are_hashed_in_full);
    tcase_add_test(tc, an_empty_key_hashes_to_a_valid_shard);
    suite_add_tcase(s, tc);

    tc = tcase_create("hash_tags");
    tcase_add_test(tc, keys_with_the_same_hash_tag_share_a_shard);
    tcase_add_test(tc, a_tag_hashes_like_the_bare_key_for_many_random_tags);
    tcase_add_test(tc, an_empty_tag_hashes_the_whole_key);
    tcase_add_test(tc, only_the_first_tag_counts);
    tcase_add_test(tc, an_unmatched_brace_hashes_the_whole_key);
    suite_add_tcase(s, tc);

    tc = tcase_create("distribution");
    tcase_add_test(tc, random_keys_spread_evenly_over_eight_shards);
    tcase_add_test(tc, sequential_keys_spread_evenly_over_eight_shards);
    suite_add_tcase(s, tc);

    tc = tcase_create("compatibility");
    tcase_add_test(tc, kv_shard_of_equals_shard_of);
    tcase_add_test(tc, the_shard_map_never_changes);
    suite_add_tcase(s, tc);
    return s;
}
