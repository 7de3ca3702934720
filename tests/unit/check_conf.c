/*
 * check_conf - unit tests of the cluster.conf parser (libkv/conf.c).
 *
 * Valid files, placement, one test per kind of broken file (each asserting
 * the exact line and a word of the message), a table of further broken
 * files, mutated and truncated files that must fail cleanly or parse into a
 * consistent conf, and conf_load on real files in a temp dir under /tmp
 * that the fixture removes.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "keys.h"
#include "kv.h"

Suite *conf_suite(void);

static const char three_nodes[] = "[node 1]\naddress = tcp://127.0.0.1:7101\n"
                                  "[node 2]\naddress = tcp://127.0.0.1:7102\n"
                                  "[node 3]\naddress = tcp://127.0.0.1:7103\n";

/* Every key set to a non-default value, nodes out of order. */
static const char full_file[] =
    "# a full file\n"                                     /* 1 */
    "cluster = prod-eu.1_a   # the name\n"                /* 2 */
    "shards = 64\n"                                       /* 3 */
    "replicas = 2\n"                                      /* 4 */
    "data_dir = /var/lib/kv\n"                            /* 5 */
    "max_key_bytes = 1024\n"                              /* 6 */
    "max_value_bytes = 2097152\n"                         /* 7 */
    "max_message_bytes = 8388608\n"                       /* 8 */
    "request_timeout_ms = 250\n"                          /* 9 */
    "txn_timeout_ms = 10000\n"                            /* 10 */
    "log_level = debug\n"                                 /* 11 */
    "max_txn_ops = 5000\n"                                /* 12 */
    "max_txn_bytes = 2000000\n"                           /* 13 */
    "\n"                                                  /* 14 */
    "[node 30]\n"                                         /* 15 */
    "address = tcp://10.0.0.3:7000\n"                     /* 16 */
    "[node 7]\n"                                          /* 17 */
    "address = tcp://10.0.0.1:7000\n"                     /* 18 */
    "[node 12]   # middle\n"                              /* 19 */
    "  address   =   tcp://node-12.example.com:7000  \n"; /* 20 */

/* Z85 public keys made by kvnode keygen; the first two hold '#', which
 * only starts a comment on their lines at the start or after a blank. */
#define KH1 "40Vpe(eUZAXw-r[8rL/@r&o3y1Z*enq@f#KFYsA5"
#define KH2 ")e2CZe7J^=3I1Mg[p4GoE9jqftr2>S4OG4[U#u/D"
#define K3 "C+J!7xp(5s-CgyLU1on+<Ix7M5$tTn5unJ+e}>-v"
#define K4 "!K-pdSioup4@cwh-(vGTLMl3k^^Ahpf87bUt2Nu."

/* A curve cluster: [security] between the nodes, keys with '#' and
 * comments after them. */
static const char curve_file[] =
    "cluster = secure\n"                              /* 1 */
    "max_inflight_per_client = 64\n"                  /* 2 */
    "[node 2]\n"                                      /* 3 */
    "address = tcp://10.0.0.2:7000\n"                 /* 4 */
    "public_key = " KH2 " # node 2's\n"               /* 5 */
    "secret_key_file = keys/n2.key # its pair\n"      /* 6 */
    "[security]   # the section\n"                    /* 7 */
    "curve = on\n"                                    /* 8 */
    "insecure = no\n"                                 /* 9 */
    "client_keys = " KH1 "\t" K3 "   # two clients\n" /* 10 */
    "client_keys_file = /etc/kv/clients.keys\n"       /* 11 */
    "handshake_timeout_ms = 2500\n"                   /* 12 */
    "[node 1]\n"                                      /* 13 */
    "address = tcp://10.0.0.1:7000\n"                 /* 14 */
    "public_key = " K4 "\n"                           /* 15 */
    "secret_key_file = /etc/kv/n1.key\n";             /* 16 */

static struct conf *parse_ok(const char *text)
{
    char err[256] = "";
    struct conf *c = NULL;
    int rc = conf_parse(text, strlen(text), "t.conf", &c, err, sizeof err);
    ck_assert_msg(rc == KV_OK, "expected the file to parse, got %d: %s", rc,
                  err);
    ck_assert_ptr_nonnull(c);
    return c;
}

/* Asserts that TEXT fails with "t.conf:LINE: ..." containing WORD, and that
 * the output pointer is left untouched. */
static void expect_error(const char *text, unsigned line, const char *word)
{
    char err[512] = "";
    char prefix[32];
    struct conf sentinel;
    struct conf *c = &sentinel;
    int rc = conf_parse(text, strlen(text), "t.conf", &c, err, sizeof err);

    ck_assert_msg(rc == KV_EINVAL, "expected KV_EINVAL for:\n%s\ngot %d", text,
                  rc);
    ck_assert_ptr_eq(c, &sentinel);
    snprintf(prefix, sizeof prefix, "t.conf:%u: ", line);
    ck_assert_msg(strncmp(err, prefix, strlen(prefix)) == 0,
                  "expected '%s...', got '%s'", prefix, err);
    ck_assert_msg(strstr(err, word) != NULL, "expected '%s' in '%s'", word,
                  err);
}

/* cluster = a, then BODY, then the three nodes. */
static void expect_error_with_nodes(const char *body, unsigned line,
                                    const char *word)
{
    char text[2048];
    snprintf(text, sizeof text, "cluster = a\n%s%s", body, three_nodes);
    expect_error(text, line, word);
}

/* ---- valid files -------------------------------------------------------- */

START_TEST(a_minimal_file_gets_every_default)
{
    char text[512];
    struct conf *c;

    snprintf(text, sizeof text, "cluster = local\n%s", three_nodes);
    c = parse_ok(text);
    ck_assert_str_eq(c->path, "");
    ck_assert_str_eq(c->cluster, "local");
    ck_assert_uint_eq(c->shards, 8);
    ck_assert_uint_eq(c->replicas, 3);
    ck_assert_str_eq(c->data_dir, "data");
    ck_assert_uint_eq(c->max_key_bytes, 4096);
    ck_assert_uint_eq(c->max_value_bytes, 1048576);
    ck_assert_uint_eq(c->max_message_bytes, 4194304);
    ck_assert_uint_eq(c->request_timeout_ms, 5000);
    ck_assert_uint_eq(c->txn_timeout_ms, 5000);
    ck_assert_uint_eq(c->max_txn_ops, 1000);
    ck_assert_uint_eq(c->max_txn_bytes, 1048576);
    ck_assert_str_eq(c->log_level, "info");
    ck_assert_uint_eq(c->nprocedures, 0);
    ck_assert_uint_eq(c->proc_max_keys, 100000);
    ck_assert_uint_eq(c->proc_max_write_bytes, 1048576);
    ck_assert_uint_eq(c->proc_max_reply_bytes, 1048576);
    ck_assert_uint_eq(c->session_ttl_s, 3600);
    ck_assert_uint_eq(c->compact_log_entries, 10000);
    ck_assert_uint_eq(c->nnodes, 3);
    ck_assert_str_eq(c->nodes[2].address, "tcp://127.0.0.1:7103");
    conf_free(c);
}
END_TEST

START_TEST(every_key_can_be_set)
{
    struct conf *c = parse_ok(full_file);

    ck_assert_str_eq(c->cluster, "prod-eu.1_a");
    ck_assert_uint_eq(c->shards, 64);
    ck_assert_uint_eq(c->replicas, 2);
    ck_assert_str_eq(c->data_dir, "/var/lib/kv");
    ck_assert_uint_eq(c->max_key_bytes, 1024);
    ck_assert_uint_eq(c->max_value_bytes, 2097152);
    ck_assert_uint_eq(c->max_message_bytes, 8388608);
    ck_assert_uint_eq(c->request_timeout_ms, 250);
    ck_assert_uint_eq(c->txn_timeout_ms, 10000);
    ck_assert_uint_eq(c->max_txn_ops, 5000);
    ck_assert_uint_eq(c->max_txn_bytes, 2000000);
    ck_assert_str_eq(c->log_level, "debug");
    ck_assert_uint_eq(c->nnodes, 3);
    conf_free(c);
}
END_TEST

START_TEST(nodes_are_sorted_by_id)
{
    struct conf *c = parse_ok(full_file);

    ck_assert_uint_eq(c->nodes[0].id, 7);
    ck_assert_str_eq(c->nodes[0].address, "tcp://10.0.0.1:7000");
    ck_assert_uint_eq(c->nodes[1].id, 12);
    ck_assert_str_eq(c->nodes[1].address, "tcp://node-12.example.com:7000");
    ck_assert_uint_eq(c->nodes[2].id, 30);
    ck_assert_str_eq(c->nodes[2].address, "tcp://10.0.0.3:7000");
    conf_free(c);
}
END_TEST

START_TEST(nodes_are_found_by_id)
{
    struct conf *c = parse_ok(full_file);
    const struct conf_node *n = conf_node_by_id(c, 12);

    ck_assert_ptr_nonnull(n);
    ck_assert_uint_eq(n->id, 12);
    ck_assert_ptr_eq(conf_node_by_id(c, 7), &c->nodes[0]);
    ck_assert_ptr_eq(conf_node_by_id(c, 30), &c->nodes[2]);
    ck_assert_ptr_null(conf_node_by_id(c, 0));
    ck_assert_ptr_null(conf_node_by_id(c, 8));
    ck_assert_ptr_null(conf_node_by_id(c, 31));
    ck_assert_ptr_null(conf_node_by_id(NULL, 7));
    conf_free(c);
}
END_TEST

START_TEST(comments_blank_lines_crlf_and_spaces_are_ignored)
{
    const char text[] = "\xef\xbb\xbf# leading byte order mark\r\n\r\n"
                        "   # indented comment\n\tcluster\t=\tx\t# tabs\r\n"
                        "shards=2#no spaces\n[ node   5 ]  # spaced header\r\n"
                        "address=tcp://h:1\r\n   \t  \n# no newline at the end";
    struct conf *c = parse_ok(text);

    ck_assert_str_eq(c->cluster, "x");
    ck_assert_uint_eq(c->shards, 2);
    ck_assert_uint_eq(c->nnodes, 1);
    ck_assert_uint_eq(c->nodes[0].id, 5);
    ck_assert_str_eq(c->nodes[0].address, "tcp://h:1");
    conf_free(c);
}
END_TEST

START_TEST(default_replicas_shrink_to_a_smaller_cluster)
{
    struct conf *c = parse_ok("cluster = one\n[node 9]\naddress = tcp://h:9\n");

    ck_assert_uint_eq(c->nnodes, 1);
    ck_assert_uint_eq(c->replicas, 1);
    conf_free(c);
}
END_TEST

START_TEST(numbers_at_the_edges_of_their_ranges_are_accepted)
{
    struct conf *c = parse_ok("cluster = a\nshards = 4096\n"
                              "replicas = 1\nmax_key_bytes = 4096\n"
                              "max_value_bytes = 67108864\n"
                              "max_message_bytes = 67113984\n"
                              "request_timeout_ms = 3600000\n"
                              "txn_timeout_ms = 1\n"
                              "max_txn_ops = 100000\n"
                              "max_txn_bytes = 67109888\n"
                              "session_ttl_s = 2592000\n"
                              "compact_log_entries = 10000000\n"
                              "[node 65535]\naddress = tcp://h:65535\n"
                              "[node 1]\naddress = tcp://h:1\n");

    ck_assert_uint_eq(c->shards, 4096);
    ck_assert_uint_eq(c->replicas, 1);
    ck_assert_uint_eq(c->max_value_bytes, 64u * 1024 * 1024);
    ck_assert_uint_eq(c->max_message_bytes, 4096 + 67108864 + 1024);
    ck_assert_uint_eq(c->request_timeout_ms, 3600000);
    ck_assert_uint_eq(c->txn_timeout_ms, 1);
    ck_assert_uint_eq(c->max_txn_ops, 100000);
    ck_assert_uint_eq(c->max_txn_bytes, 67113984 - 4096);
    ck_assert_uint_eq(c->session_ttl_s, 30u * 86400);
    ck_assert_uint_eq(c->compact_log_entries, 10000000);
    ck_assert_uint_eq(c->nodes[1].id, 65535);
    conf_free(c);
    c = parse_ok("cluster = a\nshards = 1\nmax_key_bytes = 1\n"
                 "max_value_bytes = 0\nmax_message_bytes = 1025\n"
                 "request_timeout_ms = 0001\nmax_txn_ops = 1\n"
                 "session_ttl_s = 1\ncompact_log_entries = 100\n"
                 "[node 1]\naddress = tcp://h:1\n");
    ck_assert_uint_eq(c->max_txn_ops, 1);
    ck_assert_uint_eq(c->max_txn_bytes, 1); /* the default, lowered */
    ck_assert_uint_eq(c->max_value_bytes, 0);
    ck_assert_uint_eq(c->max_message_bytes, 1025);
    ck_assert_uint_eq(c->request_timeout_ms, 1);
    ck_assert_uint_eq(c->session_ttl_s, 1);
    ck_assert_uint_eq(c->compact_log_entries, 100);
    conf_free(c);
}
END_TEST

START_TEST(names_ipv4_and_bracketed_ipv6_are_valid_hosts)
{
    struct conf *c = parse_ok("cluster = a\n"
                              "[node 1]\naddress = tcp://[::1]:7101\n"
                              "[node 2]\naddress = tcp://[fe80::1:AB]:7101\n"
                              "[node 3]\naddress = tcp://my_host.local:7101\n"
                              "[node 4]\naddress = tcp://192.168.0.1:7101\n");

    ck_assert_uint_eq(c->nnodes, 4);
    ck_assert_str_eq(c->nodes[0].address, "tcp://[::1]:7101");
    conf_free(c);
}
END_TEST

START_TEST(a_256_node_cluster_is_accepted_and_node_257_is_not)
{
    size_t cap = 64 * 300, n = 0;
    char *text = malloc(cap);

    ck_assert_ptr_nonnull(text);
    n += (size_t)snprintf(text + n, cap - n, "cluster = big\n");
    for (int i = 1; i <= CONF_MAX_NODES; i++)
        n += (size_t)snprintf(text + n, cap - n,
                              "[node %d]\naddress = tcp://h:%d\n", i, i);
    struct conf *c = parse_ok(text);
    ck_assert_uint_eq(c->nnodes, CONF_MAX_NODES);
    conf_free(c);
    snprintf(text + n, cap - n, "[node 999]\naddress = tcp://h:999\n");
    expect_error(text, 2 + 2 * CONF_MAX_NODES, "too many nodes");
    free(text);
}
END_TEST

/* ---- placement ---------------------------------------------------------- */

START_TEST(replica_r_of_shard_s_is_node_s_plus_r_mod_n)
{
    struct conf *c = parse_ok(full_file); /* 3 nodes */

    ck_assert_uint_eq(conf_replica(c, 0, 0), 0);
    ck_assert_uint_eq(conf_replica(c, 0, 1), 1);
    ck_assert_uint_eq(conf_replica(c, 0, 2), 2);
    ck_assert_uint_eq(conf_replica(c, 1, 0), 1);
    ck_assert_uint_eq(conf_replica(c, 2, 1), 0);
    ck_assert_uint_eq(conf_replica(c, 7, 0), 1);
    ck_assert_uint_eq(conf_replica(c, 63, 2), 2);
    /* no overflow at the top of the range */
    ck_assert_uint_eq(conf_replica(c, UINT32_MAX, UINT32_MAX),
                      ((uint64_t)UINT32_MAX * 2) % 3);
    /* the replicas of one shard are distinct nodes */
    for (uint32_t s = 0; s < c->shards; s++)
        for (uint32_t a = 0; a < c->replicas; a++)
            for (uint32_t b = a + 1; b < c->replicas; b++)
                ck_assert_uint_ne(conf_replica(c, s, a), conf_replica(c, s, b));
    conf_free(c);
}
END_TEST

START_TEST(placement_follows_node_ids_not_file_order)
{
    struct conf *c = parse_ok(full_file); /* ids 30, 7, 12 in the file */

    ck_assert_uint_eq(c->nodes[conf_replica(c, 0, 0)].id, 7);
    ck_assert_uint_eq(c->nodes[conf_replica(c, 1, 0)].id, 12);
    ck_assert_uint_eq(c->nodes[conf_replica(c, 2, 0)].id, 30);
    ck_assert_uint_eq(c->nodes[conf_replica(c, 3, 0)].id, 7);
    conf_free(c);
}
END_TEST

/* ---- broken files, one per kind ----------------------------------------- */

START_TEST(an_unknown_key_is_an_error)
{
    expect_error_with_nodes("shards = 8\nshard_count = 8\n", 3, "unknown key");
}
END_TEST

START_TEST(a_duplicate_node_is_an_error)
{
    expect_error("cluster = a\n[node 2]\naddress = tcp://h:1\n"
                 "[node 3]\naddress = tcp://h:2\n"
                 "[node 2]\naddress = tcp://h:3\n",
                 6, "duplicate node 2 (first at line 2)");
}
END_TEST

START_TEST(a_port_out_of_range_is_an_error)
{
    expect_error("cluster = a\n[node 1]\naddress = tcp://127.0.0.1:65536\n", 3,
                 "port");
    expect_error("cluster = a\n[node 1]\naddress = tcp://127.0.0.1:0\n", 3,
                 "port");
}
END_TEST

START_TEST(more_replicas_than_nodes_is_an_error_naming_both)
{
    expect_error_with_nodes("shards = 4\n\nreplicas = 5\n", 4,
                            "replicas = 5 exceeds the number of nodes (3)");
}
END_TEST

START_TEST(a_number_with_trailing_garbage_is_an_error)
{
    expect_error_with_nodes("shards = 8x\n", 2, "bad number");
}
END_TEST

START_TEST(a_node_without_address_is_an_error)
{
    expect_error("cluster = a\n[node 1]\naddress = tcp://h:1\n"
                 "[node 2]\n# nothing here\n[node 3]\naddress = tcp://h:3\n",
                 4, "no address");
}
END_TEST

START_TEST(a_message_limit_below_key_plus_value_is_an_error)
{
    expect_error_with_nodes(
        "max_value_bytes = 1000\nmax_message_bytes = 6119\n", 3,
        "max_message_bytes");
    /* the limit is inclusive: 4096 + 1000 + 1024 = 6120 is enough */
    char text[512];
    snprintf(text, sizeof text,
             "cluster = a\nmax_value_bytes = 1000\nmax_message_bytes = 6120\n"
             "%s",
             three_nodes);
    conf_free(parse_ok(text));
    /* a raised value limit alone is reported at its own line */
    expect_error_with_nodes("max_value_bytes = 67108864\n", 2, "too small");
}
END_TEST

START_TEST(the_default_txn_bytes_shrink_to_a_smaller_message_limit)
{
    char text[512];
    struct conf *c;

    /* 1 MiB of transaction does not fit a 1 MiB + 4095 message: the default
     * is lowered, only an explicit value is an error. */
    snprintf(text, sizeof text,
             "cluster = a\nmax_value_bytes = 1000\n"
             "max_message_bytes = 1052671\n%s",
             three_nodes);
    c = parse_ok(text);
    ck_assert_uint_eq(c->max_txn_bytes, 1052671 - 4096);
    conf_free(c);
    /* A message limit with no room beyond the slack leaves 1 byte. */
    snprintf(text, sizeof text,
             "cluster = a\nmax_key_bytes = 1\nmax_value_bytes = 0\n"
             "max_message_bytes = 4096\n%s",
             three_nodes);
    c = parse_ok(text);
    ck_assert_uint_eq(c->max_txn_bytes, 1);
    conf_free(c);
    /* A larger message limit does not raise the default. */
    snprintf(text, sizeof text, "cluster = a\nmax_message_bytes = 67108864\n%s",
             three_nodes);
    c = parse_ok(text);
    ck_assert_uint_eq(c->max_txn_bytes, 1048576);
    conf_free(c);
    snprintf(text, sizeof text, "cluster = a\nmax_txn_bytes = 1\n%s",
             three_nodes);
    c = parse_ok(text);
    ck_assert_uint_eq(c->max_txn_bytes, 1);
    conf_free(c);
    /* The limit is inclusive: max_message_bytes - 4096 is accepted. */
    snprintf(text, sizeof text, "cluster = a\nmax_txn_bytes = 4190208\n%s",
             three_nodes);
    c = parse_ok(text);
    ck_assert_uint_eq(c->max_txn_bytes, 4190208);
    conf_free(c);
}
END_TEST

START_TEST(procedure_keys_can_be_set)
{
    char text[1024];
    struct conf *c;

    snprintf(text, sizeof text,
             "cluster = a\n"
             "procedures = procs/a.so \t/opt/kv/b.so   ../c.so # three\n"
             "proc_max_keys = 10000000\nproc_max_write_bytes = 4190208\n"
             "proc_max_reply_bytes = 1\n%s",
             three_nodes);
    c = parse_ok(text);
    ck_assert_uint_eq(c->nprocedures, 3);
    ck_assert_str_eq(c->procedures[0], "procs/a.so"); /* as written */
    ck_assert_str_eq(c->procedures[1], "/opt/kv/b.so");
    ck_assert_str_eq(c->procedures[2], "../c.so");
    ck_assert_uint_eq(c->proc_max_keys, 10000000);
    ck_assert_uint_eq(c->proc_max_write_bytes, 4190208);
    ck_assert_uint_eq(c->proc_max_reply_bytes, 1);
    conf_free(c);
}
END_TEST

START_TEST(sixty_four_plugins_are_accepted_and_65_are_not)
{
    char text[4096];
    size_t n = 0;
    struct conf *c;

    n += (size_t)snprintf(text + n, sizeof text - n,
                          "cluster = a\nprocedures =");
    for (int i = 0; i < 64; i++)
        n += (size_t)snprintf(text + n, sizeof text - n, " p%d.so", i);
    snprintf(text + n, sizeof text - n, "\n%s", three_nodes);
    c = parse_ok(text);
    ck_assert_uint_eq(c->nprocedures, 64);
    ck_assert_str_eq(c->procedures[63], "p63.so");
    conf_free(c);
    snprintf(text + n, sizeof text - n, " p64.so\n%s", three_nodes);
    expect_error(text, 2, "procedures: more than 64 plugins");
}
END_TEST

START_TEST(the_default_proc_byte_budgets_shrink_to_a_smaller_message_limit)
{
    char text[512];
    struct conf *c;

    snprintf(text, sizeof text,
             "cluster = a\nmax_value_bytes = 1000\n"
             "max_message_bytes = 1052671\n%s",
             three_nodes);
    c = parse_ok(text);
    ck_assert_uint_eq(c->proc_max_write_bytes, 1052671 - 4096);
    ck_assert_uint_eq(c->proc_max_reply_bytes, 1052671 - 4096);
    conf_free(c);
    snprintf(text, sizeof text,
             "cluster = a\nmax_key_bytes = 1\nmax_value_bytes = 0\n"
             "max_message_bytes = 4096\n%s",
             three_nodes);
    c = parse_ok(text);
    ck_assert_uint_eq(c->proc_max_write_bytes, 1);
    ck_assert_uint_eq(c->proc_max_reply_bytes, 1);
    conf_free(c);
    snprintf(text, sizeof text, "cluster = a\nmax_message_bytes = 67108864\n%s",
             three_nodes);
    c = parse_ok(text);
    ck_assert_uint_eq(c->proc_max_write_bytes, 1048576);
    ck_assert_uint_eq(c->proc_max_reply_bytes, 1048576);
    conf_free(c);
}
END_TEST

START_TEST(a_file_without_nodes_is_an_error_at_line_0)
{
    expect_error("cluster = a\nshards = 4\n# no nodes\n", 0, "no nodes");
}
END_TEST

START_TEST(a_garbage_line_is_an_error)
{
    expect_error_with_nodes("shards = 8\nthis is not a setting\n", 3,
                            "expected 'key = value'");
}
END_TEST

START_TEST(a_file_without_security_gets_its_defaults)
{
    char text[512];
    struct conf *c;

    snprintf(text, sizeof text, "cluster = local\n%s", three_nodes);
    c = parse_ok(text);
    ck_assert_int_eq(c->security.curve, 0);
    ck_assert_int_eq(c->security.insecure, 0);
    ck_assert_uint_eq(c->security.nclient_keys, 0);
    ck_assert_ptr_null(c->security.client_keys_file);
    ck_assert_uint_eq(c->security.handshake_timeout_ms, 5000);
    ck_assert_uint_eq(c->max_inflight_per_client, 1024);
    ck_assert_ptr_null(c->nodes[0].public_key);
    ck_assert_ptr_null(c->nodes[0].secret_key_file);
    conf_free(c);
}
END_TEST

START_TEST(a_security_section_and_node_keys_are_parsed)
{
    struct conf *c = parse_ok(curve_file);

    ck_assert_int_eq(c->security.curve, 1);
    ck_assert_int_eq(c->security.insecure, 0);
    ck_assert_uint_eq(c->security.nclient_keys, 2);
    ck_assert_str_eq(c->security.client_keys[0], KH1);
    ck_assert_str_eq(c->security.client_keys[1], K3);
    ck_assert_str_eq(c->security.client_keys_file, "/etc/kv/clients.keys");
    ck_assert_uint_eq(c->security.handshake_timeout_ms, 2500);
    ck_assert_uint_eq(c->max_inflight_per_client, 64);
    ck_assert_uint_eq(c->nnodes, 2);
    ck_assert_uint_eq(c->nodes[0].id, 1);
    ck_assert_str_eq(c->nodes[0].public_key, K4);
    ck_assert_str_eq(c->nodes[0].secret_key_file, "/etc/kv/n1.key");
    ck_assert_str_eq(c->nodes[1].public_key, KH2);
    ck_assert_str_eq(c->nodes[1].secret_key_file, "keys/n2.key");
    conf_free(c);
}
END_TEST

START_TEST(keys_may_be_present_with_curve_off_and_insecure_is_kept)
{
    struct conf *c = parse_ok("cluster = a\n[security]\ncurve = off\n"
                              "insecure = yes\n[node 1]\n"
                              "address = tcp://0.0.0.0:1\n"
                              "public_key = " K3 "\n");

    ck_assert_int_eq(c->security.curve, 0);
    ck_assert_int_eq(c->security.insecure, 1);
    ck_assert_str_eq(c->nodes[0].public_key, K3);
    ck_assert_ptr_null(c->nodes[0].secret_key_file);
    conf_free(c);
}
END_TEST

START_TEST(only_loopback_addresses_are_loopback)
{
    static const char *const yes[] = {"tcp://localhost:1",
                                      "tcp://LocalHost:1",
                                      "tcp://127.0.0.1:7101",
                                      "tcp://127.255.3.4:1",
                                      "tcp://[::1]:1",
                                      "tcp://[0:0:0:0:0:0:0:1]:1",
                                      "tcp://[::ffff:127.0.0.1]:1"};
    static const char *const no[] = {"tcp://0.0.0.0:1",
                                     "tcp://10.0.0.1:1",
                                     "tcp://128.0.0.1:1",
                                     "tcp://[::]:1",
                                     "tcp://[::2]:1",
                                     "tcp://node-1:1",
                                     "tcp://127.0.0.1.nip.io:1",
                                     "tcp://localhost.example:1",
                                     "tcp://[::ffff:10.0.0.1]:1",
                                     "not an address",
                                     ""};

    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        ck_assert_msg(conf_address_is_loopback(yes[i]), "%s", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        ck_assert_msg(!conf_address_is_loopback(no[i]), "%s", no[i]);
    ck_assert(!conf_address_is_loopback(NULL));
}
END_TEST

START_TEST(a_nul_byte_is_an_error)
{
    const char text[] = "cluster = a\nshards = 8\0junk\n[node 1]\n"
                        "address = tcp://h:1\n";
    char err[256] = "";
    struct conf *c = NULL;
    int rc = conf_parse(text, sizeof text - 1, "t.conf", &c, err, sizeof err);

    ck_assert_int_eq(rc, KV_EINVAL);
    ck_assert_ptr_null(c);
    ck_assert_str_eq(err, "t.conf:2: NUL byte in line");
}
END_TEST

/* ---- broken files, a table ---------------------------------------------- */

struct broken {
    const char *what;
    const char *text;
    unsigned line;
    const char *word;
};

/* Whole files. */
static const struct broken broken_files[] = {
    {"node key before any node",
     "address = tcp://h:1\ncluster = a\n[node 1]\naddress = tcp://h:2\n", 1,
     "belongs in a [node ID]"},
    {"unknown key first", "weight = 1\ncluster = a\n", 1,
     "unknown key 'weight'"},
    {"cluster name with a space",
     "cluster = my cluster\n[node 1]\naddress = tcp://h:1\n", 1,
     "may only contain"},
    {"cluster name of 65 characters",
     "cluster = "
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "\n[node 1]\naddress = tcp://h:1\n",
     1, "longer than 64"},
    {"node section without key lines at the end",
     "cluster = a\n[node 1]\naddress = tcp://h:1\n\n[node 2]\n", 5,
     "node 2 has no address"},
    {"only comments", "# nothing\n\n# at all\n", 0, "cluster"},
};

/* Lines put after "cluster = a\n" and before the three default nodes. */
static const struct broken broken_bodies[] = {
    {"duplicate key", "shards = 4\nshards = 4\n", 3, "first set at line 2"},
    {"duplicate cluster", "cluster = b\n", 2, "duplicate key 'cluster'"},
    {"missing '='", "shards 8\n", 2, "expected"},
    {"empty value", "shards =\n", 2, "empty value"},
    {"value only a comment", "shards = # eight\n", 2, "empty value"},
    {"missing key", "= 8\n", 2, "missing key"},
    {"negative number", "shards = -1\n", 2, "bad number"},
    {"hex number", "shards = 0x10\n", 2, "bad number"},
    {"two numbers", "shards = 1 2\n", 2, "bad number"},
    {"decimal point", "txn_timeout_ms = 1.5\n", 2, "bad number"},
    {"zero shards", "shards = 0\n", 2, "out of range 1..4096"},
    {"too many shards", "shards = 4097\n", 2, "out of range"},
    {"number over 64 bits", "shards = 99999999999999999999999\n", 2,
     "out of range"},
    {"zero replicas", "replicas = 0\n", 2, "replicas"},
    {"zero key bytes", "max_key_bytes = 0\n", 2, "max_key_bytes"},
    {"key bytes over the cap", "max_key_bytes = 4097\n", 2, "out of range"},
    {"value bytes over the cap", "max_value_bytes = 67108865\n", 2,
     "max_value_bytes"},
    {"zero request timeout", "request_timeout_ms = 0\n", 2,
     "request_timeout_ms"},
    {"txn timeout over an hour", "txn_timeout_ms = 3600001\n", 2,
     "out of range"},
    {"zero session lifetime", "session_ttl_s = 0\n", 2,
     "session_ttl_s = 0 is out of range 1..2592000"},
    {"session lifetime over 30 days", "session_ttl_s = 2592001\n", 2,
     "out of range"},
    {"log compaction under 100 entries", "compact_log_entries = 99\n", 2,
     "compact_log_entries = 99 is out of range 100..10000000"},
    {"log compaction over the cap", "compact_log_entries = 10000001\n", 2,
     "out of range"},
    {"zero txn ops", "max_txn_ops = 0\n", 2,
     "max_txn_ops = 0 is out of range 1..100000"},
    {"txn ops over the cap", "max_txn_ops = 100001\n", 2,
     "out of range 1..100000"},
    {"txn ops not a number", "max_txn_ops = many\n", 2, "bad number"},
    {"zero txn bytes", "max_txn_bytes = 0\n", 2, "max_txn_bytes = 0"},
    {"txn bytes above the message limit less 4096", "max_txn_bytes = 4190209\n",
     2, "max_txn_bytes = 4190209 is out of range 1..4190208"},
    {"txn bytes that no longer fit a lowered message limit",
     "max_value_bytes = 1000\nmax_txn_bytes = 1048576\n"
     "max_message_bytes = 1052671\n",
     4, "out of range 1..1048575 (max_message_bytes - 4096)"},
    {"txn bytes set before a message limit leaving no room",
     "max_key_bytes = 1\nmax_value_bytes = 0\nmax_txn_bytes = 1\n"
     "max_message_bytes = 4096\n",
     5, "leaves no room"},
    {"duplicate txn ops", "max_txn_ops = 5\nmax_txn_ops = 5\n", 3,
     "first set at line 2"},
    {"zero proc keys", "proc_max_keys = 0\n", 2,
     "proc_max_keys = 0 is out of range 1..10000000"},
    {"proc keys over the cap", "proc_max_keys = 10000001\n", 2,
     "out of range 1..10000000"},
    {"zero proc write bytes", "proc_max_write_bytes = 0\n", 2,
     "proc_max_write_bytes = 0 is out of range"},
    {"proc write bytes above the message limit less 4096",
     "proc_max_write_bytes = 4190209\n", 2,
     "proc_max_write_bytes = 4190209 is out of range 1..4190208"},
    {"proc reply bytes above the message limit less 4096",
     "proc_max_reply_bytes = 4190209\n", 2,
     "proc_max_reply_bytes = 4190209 is out of range 1..4190208"},
    {"proc reply bytes that no longer fit a lowered message limit",
     "max_value_bytes = 1000\nproc_max_reply_bytes = 1048576\n"
     "max_message_bytes = 1052671\n",
     4, "proc_max_reply_bytes = 1048576 is out of range 1..1048575"},
    {"proc write bytes and a message limit leaving no room",
     "max_key_bytes = 1\nmax_value_bytes = 0\nmax_message_bytes = 4096\n"
     "proc_max_write_bytes = 1\n",
     5, "proc_max_write_bytes = 1 does not fit"},
    {"proc reply bytes not a number", "proc_max_reply_bytes = 1MiB\n", 2,
     "bad number"},
    {"plugin listed twice", "procedures = a.so b.so a.so\n", 2,
     "procedures: 'a.so' is listed twice"},
    {"control character in a plugin path",
     "procedures = a\x01"
     "b.so\n",
     2, "procedures: path 'a?b.so' contains a control character"},
    {"duplicate procedures", "procedures = a.so\nprocedures = b.so\n", 3,
     "duplicate key 'procedures'"},
    {"empty procedures", "procedures =   # none\n", 2, "empty value"},
    {"bad log level", "log_level = verbose\n", 2, "log_level"},
    {"log level in capitals", "log_level = INFO\n", 2, "log_level"},
    {"control character in data_dir", "data_dir = a\tb\n", 2,
     "control character"},
    {"address outside a node", "address = tcp://h:9\n", 2, "belongs"},
    {"unknown section", "[securty]\n", 2, "unknown section"},
    {"section of a similar name", "[nodes 4]\n", 2, "unknown section"},
    {"node without id", "[node]\n", 2, "missing node id"},
    {"node id 0", "[node 0]\n", 2, "bad node id"},
    {"node id over 65535", "[node 65536]\n", 2, "bad node id"},
    {"node id not a number", "[node one]\n", 2, "bad node id"},
    {"unclosed section", "[node 4\n", 2, "closing ']'"},
    {"text after a section", "[node 4] x\n", 2, "closing ']'"},
    {"global key in a node", "[node 4]\nshards = 2\n", 3,
     "before the first [node ID]"},
    {"unknown key in a node", "[node 4]\nweight = 2\n", 3,
     "unknown key 'weight' in [node 4]"},
    {"duplicate address key",
     "[node 4]\naddress = tcp://h:1\naddress = tcp://h:2\n", 4,
     "duplicate key 'address'"},
    {"address used twice", "[node 4]\naddress = tcp://127.0.0.1:7102\n", 7,
     "of node 2 is already used by node 4 (line 3)"},
    {"address used twice, spelled differently",
     "[node 4]\naddress = tcp://A.b:07\n[node 5]\naddress = tcp://a.B:7\n", 5,
     "already used"},
    {"other scheme", "[node 4]\naddress = udp://h:1\n", 3, "tcp://"},
    {"no port", "[node 4]\naddress = tcp://h\n", 3, "port"},
    {"empty port", "[node 4]\naddress = tcp://h:\n", 3, "port"},
    {"port with letters", "[node 4]\naddress = tcp://h:80a\n", 3, "port"},
    {"text after the port", "[node 4]\naddress = tcp://h:80 x\n", 3, "port"},
    {"empty host", "[node 4]\naddress = tcp://:80\n", 3, "empty host"},
    {"host with a slash", "[node 4]\naddress = tcp://a/b:80\n", 3, "host"},
    {"unbracketed ipv6", "[node 4]\naddress = tcp://::1:80\n", 3, "host"},
    {"unclosed ipv6", "[node 4]\naddress = tcp://[::1:80\n", 3, "']'"},
    {"ipv6 without port", "[node 4]\naddress = tcp://[::1]\n", 3, "port"},
    /* [security] and the CurveZMQ keys */
    {"curve neither on nor off", "[security]\ncurve = yes\n", 3,
     "curve must be on or off, not 'yes'"},
    {"insecure neither yes nor no", "[security]\ninsecure = on\n", 3,
     "insecure must be yes or no"},
    {"curve twice", "[security]\ncurve = on\ncurve = off\n", 4,
     "duplicate key 'curve' (first set at line 3)"},
    {"a short client key", "[security]\nclient_keys = abc\n", 3,
     "client_keys: 'abc' is not a Z85 public key"},
    {"a client key with a character outside Z85",
     "[security]\nclient_keys = C+J!7xp(5s-CgyLU1on+<Ix7M5$tTn5unJ+e}>-~\n", 3,
     "not a Z85 public key"},
    {"a client key over 32 bits a group",
     "[security]\nclient_keys = $$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$\n", 3,
     "not a Z85 public key"},
    {"a client key listed twice",
     "[security]\nclient_keys = " K3 " " KH1 " " K3 "\n", 3, "listed twice"},
    {"client_keys twice",
     "[security]\nclient_keys = " K3 "\nclient_keys = " KH1 "\n", 4,
     "duplicate key 'client_keys'"},
    {"handshake timeout below 100 ms",
     "[security]\nhandshake_timeout_ms = 99\n", 3,
     "handshake_timeout_ms: '99' is not a number of 100..3600000"},
    {"handshake timeout over an hour",
     "[security]\nhandshake_timeout_ms = 3600001\n", 3, "handshake_timeout_ms"},
    {"handshake timeout not a number",
     "[security]\nhandshake_timeout_ms = 5s\n", 3, "handshake_timeout_ms"},
    {"control character in client_keys_file",
     "[security]\nclient_keys_file = a\x01"
     "b\n",
     3, "client_keys_file contains a control character"},
    {"global key in [security]", "[security]\nshards = 2\n", 3,
     "must come before the first section"},
    {"address in [security]", "[security]\naddress = tcp://h:1\n", 3,
     "belongs in a [node ID] section"},
    {"unknown key in [security]", "[security]\nrsa = 1\n", 3,
     "unknown key 'rsa' in [security]"},
    {"security key among the global keys", "curve = on\n", 2,
     "key 'curve' belongs in the [security] section"},
    {"node key among the global keys", "public_key = " K3 "\n", 2,
     "key 'public_key' belongs in a [node ID] section"},
    {"security key in a node", "[node 4]\ncurve = on\n", 3,
     "key 'curve' belongs in the [security] section"},
    {"two security sections", "[security]\n[security]\n", 3,
     "duplicate section [security] (first at line 2)"},
    {"curve on and nodes without keys", "[security]\ncurve = on\n", 4,
     "node 1 has no public_key: curve = on (line 3) needs"},
    {"curve on and a node without its key file",
     "[security]\ncurve = on\n[node 4]\naddress = tcp://h:4\n"
     "public_key = " K3 "\n",
     4, "node 4 has no secret_key_file"},
    {"a node key that is not Z85", "[node 4]\npublic_key = " K3 "x\n", 3,
     "public_key of node 4 is not a Z85 key"},
    {"a node key twice in a node",
     "[node 4]\npublic_key = " K3 "\npublic_key = " K3 "\n", 4,
     "duplicate key 'public_key' in [node 4] (first set at line 3)"},
    {"two nodes with one key",
     "[node 4]\naddress = tcp://h:4\npublic_key = " KH1 "\n[node 5]\n"
     "address = tcp://h:5\npublic_key = " KH1 "\n",
     7, "public_key of node 5 is already node 4's (line 4)"},
    {"a client key that is a node's",
     "[security]\nclient_keys = " KH2 "\n[node 4]\naddress = tcp://h:4\n"
     "public_key = " KH2 "\n",
     3, "is the public_key of node 4 (line 6)"},
    {"a '#' glued to a key is part of it",
     "[node 4]\npublic_key = " K3 "#comment\n", 3, "not a Z85 key"},
};

START_TEST(each_broken_file_reports_its_line_and_problem)
{
    const struct broken *b = &broken_files[_i];
    expect_error(b->text, b->line, b->word);
}
END_TEST

START_TEST(each_broken_setting_reports_its_line_and_problem)
{
    const struct broken *b = &broken_bodies[_i];
    expect_error_with_nodes(b->text, b->line, b->word);
}
END_TEST

START_TEST(a_missing_cluster_name_is_an_error_at_line_0)
{
    expect_error(three_nodes, 0, "missing required key 'cluster'");
    expect_error("", 0, "cluster");
}
END_TEST

START_TEST(an_error_leaves_the_output_untouched_and_fits_any_buffer)
{
    const char text[] = "cluster = a\nbogus_key_with_a_long_name = 1\n";
    char err[16];
    struct conf *c = NULL;

    memset(err, 'X', sizeof err);
    ck_assert_int_eq(conf_parse(text, strlen(text), "t.conf", &c, err, 8),
                     KV_EINVAL);
    ck_assert_ptr_null(c);
    ck_assert_str_eq(err, "t.conf:");
    ck_assert_int_eq(err[8], 'X'); /* nothing written past errlen */
    ck_assert_int_eq(conf_parse(text, strlen(text), "t.conf", &c, NULL, 0),
                     KV_EINVAL);
    ck_assert_int_eq(conf_parse(text, strlen(text), NULL, &c, err, sizeof err),
                     KV_EINVAL);
    ck_assert_int_eq(conf_parse(NULL, 5, "t.conf", &c, err, sizeof err),
                     KV_EINVAL);
    ck_assert_int_eq(
        conf_parse(text, strlen(text), "t.conf", NULL, err, sizeof err),
        KV_EINVAL);
    ck_assert_ptr_null(c);
    conf_free(NULL);
}
END_TEST

START_TEST(input_quoted_in_a_message_is_printable_and_short)
{
    char text[512];
    char err[512] = "";
    struct conf *c = NULL;

    snprintf(text, sizeof text, "cluster = a\nkey\x01\x1b[31m%s = 1\n",
             "_very_long_name_that_goes_on_and_on_and_on_and_on");
    ck_assert_int_eq(
        conf_parse(text, strlen(text), "t.conf", &c, err, sizeof err),
        KV_EINVAL);
    for (const char *p = err; *p != '\0'; p++)
        ck_assert_msg(*p >= 0x20 && *p < 0x7f, "unprintable byte in '%s'", err);
    ck_assert_msg(strstr(err, "key??[31m") != NULL, "got '%s'", err);
    ck_assert_msg(strstr(err, "...'") != NULL, "got '%s'", err);
}
END_TEST

/* ---- robustness --------------------------------------------------------- */

static uint64_t next_rand(uint64_t *s)
{
    /* xorshift64*: a fixed sequence per seed, so a failure replays */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

static unsigned count_lines(const char *t, size_t n)
{
    unsigned lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += t[i] == '\n';
    return lines + 1;
}

/* Parses T: it must fail with a well-formed message at a line of the file,
 * or give a conf that satisfies every documented rule. Returns 1 if valid. */
static int check_any(const char *t, size_t n, const char *what)
{
    char err[512] = "";
    struct conf *c = NULL;
    int rc = conf_parse(t, n, "f.conf", &c, err, sizeof err);
    unsigned line;

    if (rc == KV_EINVAL) {
        ck_assert_ptr_null(c);
        ck_assert_msg(sscanf(err, "f.conf:%u: ", &line) == 1,
                      "%s: bad message '%s'", what, err);
        ck_assert_msg(line <= count_lines(t, n), "%s: line %u in '%s'", what,
                      line, err);
        return 0;
    }
    ck_assert_msg(rc == KV_OK, "%s: rc %d", what, rc);
    ck_assert_ptr_nonnull(c);
    ck_assert(c->cluster != NULL && strlen(c->cluster) >= 1 &&
              strlen(c->cluster) <= 64);
    ck_assert(c->shards >= 1 && c->shards <= CONF_MAX_SHARDS);
    ck_assert(c->nnodes >= 1 && c->nnodes <= CONF_MAX_NODES);
    ck_assert(c->replicas >= 1 && c->replicas <= c->nnodes);
    ck_assert(c->max_key_bytes >= 1 && c->max_key_bytes <= CONF_KEY_LIMIT);
    ck_assert(c->max_value_bytes <= CONF_VALUE_LIMIT);
    ck_assert(c->max_message_bytes >=
              c->max_key_bytes + c->max_value_bytes + 1024);
    ck_assert(c->request_timeout_ms >= 1 && c->request_timeout_ms <= 3600000);
    ck_assert(c->txn_timeout_ms >= 1 && c->txn_timeout_ms <= 3600000);
    ck_assert(c->max_txn_ops >= 1 && c->max_txn_ops <= 100000);
    ck_assert(c->max_txn_bytes >= 1);
    ck_assert(c->max_message_bytes <= 4096 ||
              c->max_txn_bytes <= c->max_message_bytes - 4096);
    ck_assert(strcmp(c->log_level, "debug") == 0 ||
              strcmp(c->log_level, "info") == 0 ||
              strcmp(c->log_level, "warn") == 0 ||
              strcmp(c->log_level, "error") == 0);
    ck_assert(c->data_dir != NULL && c->data_dir[0] != '\0');
    ck_assert(c->proc_max_keys >= 1 && c->proc_max_keys <= 10000000);
    ck_assert(c->proc_max_write_bytes >= 1 && c->proc_max_reply_bytes >= 1);
    ck_assert(c->max_message_bytes <= 4096 ||
              (c->proc_max_write_bytes <= c->max_message_bytes - 4096 &&
               c->proc_max_reply_bytes <= c->max_message_bytes - 4096));
    ck_assert(c->nprocedures <= 64);
    for (size_t i = 0; i < c->nprocedures; i++)
        ck_assert(c->procedures[i] != NULL && c->procedures[i][0] != '\0');
    for (size_t i = 0; i < c->nnodes; i++) {
        ck_assert(c->nodes[i].id >= 1 && c->nodes[i].id <= 65535);
        ck_assert(i == 0 || c->nodes[i - 1].id < c->nodes[i].id);
        ck_assert(strncmp(c->nodes[i].address, "tcp://", 6) == 0);
        ck_assert_ptr_eq(conf_node_by_id(c, c->nodes[i].id), &c->nodes[i]);
        const char *pk = c->nodes[i].public_key;
        ck_assert(pk == NULL || keys_z85_valid(pk, strlen(pk)));
        ck_assert(!c->security.curve ||
                  (pk != NULL && c->nodes[i].secret_key_file != NULL));
        for (size_t j = 0; pk != NULL && j < i; j++)
            ck_assert(c->nodes[j].public_key == NULL ||
                      strcmp(c->nodes[j].public_key, pk) != 0);
    }
    for (size_t k = 0; k < c->security.nclient_keys; k++) {
        const char *ck = c->security.client_keys[k];
        ck_assert(keys_z85_valid(ck, strlen(ck)));
        for (size_t i = 0; i < c->nnodes; i++)
            ck_assert(c->nodes[i].public_key == NULL ||
                      strcmp(c->nodes[i].public_key, ck) != 0);
    }
    ck_assert(c->security.handshake_timeout_ms >= 100 &&
              c->security.handshake_timeout_ms <= 3600000);
    ck_assert(c->max_inflight_per_client >= 1 &&
              c->max_inflight_per_client <= 1000000);
    for (uint32_t s = 0; s < 16; s++)
        ck_assert_uint_lt(conf_replica(c, s, c->replicas - 1), c->nnodes);
    conf_free(c);
    return 1;
}

/* 300 copies of FILE with 1 to 4 random edits each, from seed I: both
 * outcomes must occur, each clean. */
static void mutate_and_check(const char *file, int i)
{
    static const char alphabet[] = "\n\n#=[] 0123456789:/.\t-az";
    uint64_t seed = 0x9e3779b97f4a7c15ull + (uint64_t)i;
    size_t base = strlen(file);
    char buf[1024];
    int valid = 0, invalid = 0;

    ck_assert_uint_lt(base + 64, sizeof buf);
    for (int iter = 0; iter < 300; iter++) {
        size_t n = base;
        int edits = 1 + (int)(next_rand(&seed) % 4);
        char what[64];

        memcpy(buf, file, base);
        for (int e = 0; e < edits && n > 0; e++) {
            size_t at = next_rand(&seed) % n;
            uint64_t r = next_rand(&seed);
            char ch = (r >> 8) % 4 == 0
                          ? (char)(r >> 16)
                          : alphabet[(r >> 16) % (sizeof alphabet - 1)];
            switch (r % 3) {
            case 0: /* replace */
                buf[at] = ch;
                break;
            case 1: /* delete */
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
                break;
            default: /* insert */
                if (n < sizeof buf) {
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = ch;
                    n++;
                }
                break;
            }
        }
        snprintf(what, sizeof what, "seed %d iteration %d", i, iter);
        if (check_any(buf, n, what))
            valid++;
        else
            invalid++;
    }
    /* both outcomes occur, so the checks above were exercised */
    ck_assert_int_gt(valid, 0);
    ck_assert_int_gt(invalid, 0);
}

START_TEST(mutated_files_fail_cleanly_or_parse_consistently)
{
    mutate_and_check(full_file, _i);
}
END_TEST

START_TEST(mutated_curve_files_fail_cleanly_or_parse_consistently)
{
    mutate_and_check(curve_file, _i);
}
END_TEST

START_TEST(every_prefix_of_a_curve_file_fails_cleanly_or_parses)
{
    size_t n = strlen(curve_file);

    for (size_t len = 0; len < n; len++)
        check_any(curve_file, len, "prefix");
    ck_assert_int_eq(check_any(curve_file, n, "whole file"), 1);
}
END_TEST

START_TEST(every_prefix_of_a_valid_file_fails_cleanly_or_parses)
{
    size_t n = strlen(full_file);

    for (size_t len = 0; len < n; len++)
        check_any(full_file, len, "prefix");
    ck_assert_int_eq(check_any(full_file, n, "whole file"), 1);
}
END_TEST

/* ---- conf_load on real files -------------------------------------------- */

static char tmpdir[64];

/* Removes PATH and, for a folder, what it holds (a few levels deep). */
static void remove_tree(const char *path, int depth)
{
    struct stat st;
    DIR *d;
    struct dirent *e;
    char sub[512];

    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode) && depth < 4 && (d = opendir(path)) != NULL) {
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            remove_tree(sub, depth + 1);
        }
        closedir(d);
        rmdir(path);
        return;
    }
    unlink(path);
}

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kv-check-conf-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    if (tmpdir[0] != '\0')
        remove_tree(tmpdir, 0);
    tmpdir[0] = '\0';
}

/* Writes LEN bytes of TEXT to tmpdir/NAME (creating tmpdir/etc if named)
 * and returns the full path in a static buffer. */
static const char *write_file(const char *name, const char *text, size_t len)
{
    static char path[256];
    FILE *f;

    snprintf(path, sizeof path, "%s/etc", tmpdir);
    if (mkdir(path, 0700) != 0)
        ck_assert_int_eq(errno, EEXIST);
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(text, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
    return path;
}

static struct conf *load_ok(const char *path)
{
    char err[512] = "";
    struct conf *c = NULL;
    int rc = conf_load(path, &c, err, sizeof err);
    ck_assert_msg(rc == KV_OK, "conf_load(%s): %d %s", path, rc, err);
    return c;
}

START_TEST(a_relative_data_dir_is_resolved_against_the_config_folder)
{
    char text[512], want[256];
    const char *path;
    struct conf *c;

    snprintf(text, sizeof text, "cluster = a\ndata_dir = ../data\n%s",
             three_nodes);
    path = write_file("etc/cluster.conf", text, strlen(text));
    c = load_ok(path);
    snprintf(want, sizeof want, "%s/data", tmpdir);
    ck_assert_str_eq(c->data_dir, want);
    ck_assert_str_eq(c->path, path);
    conf_free(c);

    snprintf(text, sizeof text, "cluster = a\ndata_dir = ./d//x/.\n%s",
             three_nodes);
    path = write_file("etc/b.conf", text, strlen(text));
    c = load_ok(path);
    snprintf(want, sizeof want, "%s/etc/d/x", tmpdir);
    ck_assert_str_eq(c->data_dir, want);
    conf_free(c);

    snprintf(text, sizeof text, "cluster = a\n%s", three_nodes); /* default */
    path = write_file("etc/c.conf", text, strlen(text));
    c = load_ok(path);
    snprintf(want, sizeof want, "%s/etc/data", tmpdir);
    ck_assert_str_eq(c->data_dir, want);
    conf_free(c);
}
END_TEST

START_TEST(a_config_given_by_a_relative_path_resolves_from_the_cwd)
{
    char text[512], old[1024], here[1024] = "", want[1100];
    char err1[512] = "", err2[512] = "";
    struct conf *c1 = NULL, *c2 = NULL;
    int rc1 = -100, rc2 = -100;

    snprintf(text, sizeof text, "cluster = a\ndata_dir = kvdata\n%s",
             three_nodes);
    write_file("etc/cluster.conf", text, strlen(text));
    ck_assert_ptr_nonnull(getcwd(old, sizeof old));
    /* no assertion until the cwd is restored: CK_FORK=no shares it */
    if (chdir(tmpdir) == 0 && getcwd(here, sizeof here) != NULL) {
        rc1 = conf_load("etc/cluster.conf", &c1, err1, sizeof err1);
        if (chdir("etc") == 0)
            rc2 = conf_load("cluster.conf", &c2, err2, sizeof err2);
    }
    ck_assert_int_eq(chdir(old), 0);
    ck_assert_msg(rc1 == KV_OK, "%d %s", rc1, err1);
    ck_assert_msg(rc2 == KV_OK, "%d %s", rc2, err2);
    snprintf(want, sizeof want, "%s/etc/kvdata", here);
    ck_assert_str_eq(c1->data_dir, want);
    ck_assert_str_eq(c1->path, "etc/cluster.conf");
    ck_assert_str_eq(c2->data_dir, want);
    ck_assert_str_eq(c2->path, "cluster.conf");
    conf_free(c1);
    conf_free(c2);
}
END_TEST

START_TEST(an_absolute_data_dir_is_kept_but_cleaned)
{
    char text[512];
    struct conf *c;

    snprintf(text, sizeof text,
             "cluster = a\ndata_dir = /srv//kv/./nodes/../data/\n%s",
             three_nodes);
    c = load_ok(write_file("etc/cluster.conf", text, strlen(text)));
    ck_assert_str_eq(c->data_dir, "/srv/kv/data");
    conf_free(c);
    snprintf(text, sizeof text, "cluster = a\ndata_dir = /../..\n%s",
             three_nodes);
    c = load_ok(write_file("etc/cluster.conf", text, strlen(text)));
    ck_assert_str_eq(c->data_dir, "/");
    conf_free(c);
}
END_TEST

START_TEST(relative_plugin_paths_are_resolved_against_the_config_folder)
{
    char text[512], want[256];
    const char *path;
    struct conf *c;

    snprintf(text, sizeof text,
             "cluster = a\nprocedures = procs/r.so /opt//p/./s.so ../m.so\n%s",
             three_nodes);
    path = write_file("etc/cluster.conf", text, strlen(text));
    c = load_ok(path);
    ck_assert_uint_eq(c->nprocedures, 3);
    snprintf(want, sizeof want, "%s/etc/procs/r.so", tmpdir);
    ck_assert_str_eq(c->procedures[0], want);
    ck_assert_str_eq(c->procedures[1], "/opt/p/s.so");
    snprintf(want, sizeof want, "%s/m.so", tmpdir);
    ck_assert_str_eq(c->procedures[2], want);
    conf_free(c);
}
END_TEST

START_TEST(relative_key_files_are_resolved_against_the_config_folder)
{
    char want[256];
    const char *path =
        write_file("etc/cluster.conf", curve_file, sizeof curve_file - 1);
    struct conf *c = load_ok(path);

    snprintf(want, sizeof want, "%s/etc/keys/n2.key", tmpdir);
    ck_assert_str_eq(c->nodes[1].secret_key_file, want);
    ck_assert_str_eq(c->nodes[0].secret_key_file, "/etc/kv/n1.key");
    ck_assert_str_eq(c->security.client_keys_file, "/etc/kv/clients.keys");
    conf_free(c);
}
END_TEST

START_TEST(a_missing_file_is_an_io_error_naming_it)
{
    char path[256], err[512] = "", want[512];
    struct conf *c = NULL;

    snprintf(path, sizeof path, "%s/nope.conf", tmpdir);
    ck_assert_int_eq(conf_load(path, &c, err, sizeof err), KV_EIO);
    ck_assert_ptr_null(c);
    snprintf(want, sizeof want, "%s: %s", path, strerror(ENOENT));
    ck_assert_str_eq(err, want);
    ck_assert_int_eq(conf_load(tmpdir, &c, err, sizeof err), KV_EIO);
    ck_assert_ptr_null(c);
    ck_assert_int_eq(conf_load(NULL, &c, err, sizeof err), KV_EINVAL);
}
END_TEST

START_TEST(a_parse_error_from_a_file_names_the_file_and_line)
{
    const char text[] = "cluster = a\n\nshards = lots\n";
    char err[512] = "", want[512];
    struct conf *c = NULL;
    const char *path = write_file("etc/bad.conf", text, strlen(text));

    ck_assert_int_eq(conf_load(path, &c, err, sizeof err), KV_EINVAL);
    ck_assert_ptr_null(c);
    snprintf(want, sizeof want, "%s:3: shards: bad number", path);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "got '%s'", err);
}
END_TEST

/* A file of LEN bytes: the valid three-node file padded by comment lines. */
static char *padded_file(size_t len)
{
    char head[512];
    size_t hn;
    char *t = malloc(len);

    ck_assert_ptr_nonnull(t);
    hn = (size_t)snprintf(head, sizeof head, "cluster = a\n%s", three_nodes);
    ck_assert_uint_lt(hn, len);
    memcpy(t, head, hn);
    for (size_t i = hn; i < len; i++)
        t[i] = (i - hn) % 64 == 0 ? '#' : ((i - hn) % 64 == 63 ? '\n' : 'p');
    return t;
}

START_TEST(a_file_of_exactly_one_mebibyte_is_read)
{
    size_t len = 1024 * 1024;
    char *t = padded_file(len);
    struct conf *c = load_ok(write_file("etc/big.conf", t, len));

    ck_assert_uint_eq(c->nnodes, 3);
    conf_free(c);
    free(t);
}
END_TEST

START_TEST(a_file_over_one_mebibyte_is_refused)
{
    size_t len = 1024 * 1024 + 1;
    char *t = padded_file(len);
    char err[512] = "";
    struct conf *c = NULL;
    const char *path = write_file("etc/huge.conf", t, len);

    free(t);
    ck_assert_int_eq(conf_load(path, &c, err, sizeof err), KV_EINVAL);
    ck_assert_ptr_null(c);
    ck_assert_msg(strstr(err, "1 MiB") != NULL, "got '%s'", err);
}
END_TEST

/* ---- suite -------------------------------------------------------------- */

/* The conf suite: parsing, placement, errors, robustness and loading. */
Suite *conf_suite(void)
{
    Suite *s = suite_create("conf");
    TCase *tc;

    tc = tcase_create("valid");
    tcase_add_test(tc, a_minimal_file_gets_every_default);
    tcase_add_test(tc, every_key_can_be_set);
    tcase_add_test(tc, nodes_are_sorted_by_id);
    tcase_add_test(tc, nodes_are_found_by_id);
    tcase_add_test(tc, comments_blank_lines_crlf_and_spaces_are_ignored);
    tcase_add_test(tc, default_replicas_shrink_to_a_smaller_cluster);
    tcase_add_test(tc, numbers_at_the_edges_of_their_ranges_are_accepted);
    tcase_add_test(tc, names_ipv4_and_bracketed_ipv6_are_valid_hosts);
    tcase_add_test(tc, a_256_node_cluster_is_accepted_and_node_257_is_not);
    tcase_add_test(tc, a_file_without_security_gets_its_defaults);
    tcase_add_test(tc, a_security_section_and_node_keys_are_parsed);
    tcase_add_test(tc, keys_may_be_present_with_curve_off_and_insecure_is_kept);
    tcase_add_test(tc, only_loopback_addresses_are_loopback);
    suite_add_tcase(s, tc);

    tc = tcase_create("placement");
    tcase_add_test(tc, replica_r_of_shard_s_is_node_s_plus_r_mod_n);
    tcase_add_test(tc, placement_follows_node_ids_not_file_order);
    suite_add_tcase(s, tc);

    tc = tcase_create("errors");
    tcase_add_test(tc, an_unknown_key_is_an_error);
    tcase_add_test(tc, a_duplicate_node_is_an_error);
    tcase_add_test(tc, a_port_out_of_range_is_an_error);
    tcase_add_test(tc, more_replicas_than_nodes_is_an_error_naming_both);
    tcase_add_test(tc, a_number_with_trailing_garbage_is_an_error);
    tcase_add_test(tc, a_node_without_address_is_an_error);
    tcase_add_test(tc, a_message_limit_below_key_plus_value_is_an_error);
    tcase_add_test(tc, the_default_txn_bytes_shrink_to_a_smaller_message_limit);
    tcase_add_test(tc, procedure_keys_can_be_set);
    tcase_add_test(tc, sixty_four_plugins_are_accepted_and_65_are_not);
    tcase_add_test(
        tc, the_default_proc_byte_budgets_shrink_to_a_smaller_message_limit);
    tcase_add_test(tc, a_file_without_nodes_is_an_error_at_line_0);
    tcase_add_test(tc, a_garbage_line_is_an_error);
    tcase_add_test(tc, a_nul_byte_is_an_error);
    tcase_add_loop_test(tc, each_broken_file_reports_its_line_and_problem, 0,
                        (int)(sizeof broken_files / sizeof broken_files[0]));
    tcase_add_loop_test(tc, each_broken_setting_reports_its_line_and_problem, 0,
                        (int)(sizeof broken_bodies / sizeof broken_bodies[0]));
    tcase_add_test(tc, a_missing_cluster_name_is_an_error_at_line_0);
    tcase_add_test(tc,
                   an_error_leaves_the_output_untouched_and_fits_any_buffer);
    tcase_add_test(tc, input_quoted_in_a_message_is_printable_and_short);
    suite_add_tcase(s, tc);

    tc = tcase_create("robustness");
    tcase_add_loop_test(tc, mutated_files_fail_cleanly_or_parse_consistently, 0,
                        32);
    tcase_add_test(tc, every_prefix_of_a_valid_file_fails_cleanly_or_parses);
    tcase_add_loop_test(
        tc, mutated_curve_files_fail_cleanly_or_parse_consistently, 0, 32);
    tcase_add_test(tc, every_prefix_of_a_curve_file_fails_cleanly_or_parses);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);

    tc = tcase_create("load");
    tcase_add_unchecked_fixture(tc, make_tmpdir, remove_tmpdir);
    tcase_add_test(tc,
                   a_relative_data_dir_is_resolved_against_the_config_folder);
    tcase_add_test(tc, a_config_given_by_a_relative_path_resolves_from_the_cwd);
    tcase_add_test(tc, an_absolute_data_dir_is_kept_but_cleaned);
    tcase_add_test(
        tc, relative_plugin_paths_are_resolved_against_the_config_folder);
    tcase_add_test(tc,
                   relative_key_files_are_resolved_against_the_config_folder);
    tcase_add_test(tc, a_missing_file_is_an_io_error_naming_it);
    tcase_add_test(tc, a_parse_error_from_a_file_names_the_file_and_line);
    tcase_add_test(tc, a_file_of_exactly_one_mebibyte_is_read);
    tcase_add_test(tc, a_file_over_one_mebibyte_is_refused);
    suite_add_tcase(s, tc);
    return s;
}
