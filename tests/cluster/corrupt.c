/*
 * corrupt - damaged data directories and hostile connections, on real
 * kvnode processes (docs/security.md).
 *
 * Damage. A 3-node cluster (4 shards, replicas 3) takes a few thousand
 * writes of incompressible values; node 3 is stopped and bytes of its
 * LevelDB files are flipped, three ways:
 *   - inside a table block of user records, found by the stored bytes of a
 *     key: node 3 starts and serves, and the test reads every key from
 *     node 3 alone (stale reads: its own copy) until the damage is met,
 *     by a read (the client gets KV_ECORRUPT) or by a compaction LevelDB
 *     runs in the background (reads that look into several tables start
 *     one; it checks every block and fails the next write);
 *   - in the middle of its largest table, as a failing disk would (there
 *     the Raft log's records lie, which the node reads as it starts);
 *   - in the middle of its write-ahead log (*.log), which LevelDB replays
 *     with paranoid checks when it opens.
 * Each time node 3 must: answer every read before it stops with the
 * acknowledged value or KV_ECORRUPT, never anything else; exit with status
 * 3 after one "data directory ... is damaged (...)" line naming the
 * rebuild command; leave DATA_DIR/3/DAMAGED. Stale reads through libkv
 * meanwhile (one of each three goes to node 3) all return the acknowledged
 * value: libkv takes node 3's KV_ECORRUPT to another member. Then every
 * key reads right through the cluster (nodes 1 and 2 serve its shards), a new
 * start refuses with status 2 while DAMAGED exists, and `kvnode --rebuild`
 * moves the directory aside and brings the node back: once it caught up,
 * a stale read of every key from node 3 alone returns the acknowledged
 * value and version.
 *
 * Garbage. 1,000 connections to one node, 25 at a time: a quarter are
 * raw TCP sockets that write junk (random bytes, ZMTP greetings cut short
 * or followed by junk); the rest are ZeroMQ sockets that send random
 * frames (random bytes, truncated envelopes, length prefixes claiming up
 * to the message limit, valid envelopes with bad fields, responses, peer
 * batches, multipart messages), then a status request whose answer says
 * the node read them all. Afterwards the node serves every shard, its
 * bad_frames counter grew by at least the frames sent that are not
 * requests (junk on raw connections may add more), and its resident
 * memory (VmRSS) grew by less than GARBAGE_RSS_BOUND.
 * Random content comes from a fixed seed, printed; KV_TEST_SEED=N replays
 * another.
 */
#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "admin.h"
#include "harness.h"
#include "kv.h"
#include "wire.h"

#define NNODES 3
#define NSHARDS 4
#define DAMAGED_NODE 2 /* harness index: node id 3 */
#define NKEYS 3000
#define VALUE_LEN 300
#define SLOTS 64
#define EXIT_DAMAGED 3 /* kvnode/main.c */
#define EXIT_REFUSED 2 /* a bad config, or a DAMAGED marker */
#define FLIP_BYTES 16

/* Garbage: connections, how many at a time, and the bound on what the
 * node's resident memory may grow by. A node keeps nothing per connection
 * once it is closed (the routing ids of bad senders it remembers are
 * capped at 1,024 short strings), so what RSS gains is the allocator's
 * and ZeroMQ's working set. 64 MiB is far above that, and far below what
 * a leak would cost: one frame's worth (up to 64 KiB here) kept per
 * connection would be 64 MiB over 1,000 connections. */
#define GARBAGE_CONNS 1000
#define GARBAGE_BATCH 25
#define GARBAGE_WARMUP 50
#define GARBAGE_FRAME_MAX 65536
#define GARBAGE_TIME_LIMIT_MS 120000
#define GARBAGE_RSS_BOUND (64u << 20)
#define MAX_MESSAGE_BYTES 4194304u /* cluster.conf's default */
#define DEFAULT_SEED 20241129u

static struct cluster *cl;
static uint64_t vers[NKEYS];

/* --- fixtures ------------------------------------------------------------- */

static void cluster_up(void)
{
    memset(vers, 0, sizeof vers);
    int rc = cluster_start(&cl, NNODES, NSHARDS, 3);
    ck_assert_msg(rc == 0, "cluster did not start: %s", kv_strerror(rc));
}

static void cluster_down(void)
{
    /* Only reached with the cluster still up when a test failed. */
    cluster_stop(cl);
    cl = NULL;
}

static void stop_cluster_cleanly(void)
{
    struct cluster *c = cl;
    cl = NULL;
    ck_assert_msg(cluster_stop(c) == 0,
                  "a node crashed or did not exit 0 on SIGTERM");
}

/* --- helpers -------------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static uint64_t test_seed(void)
{
    const char *s = getenv("KV_TEST_SEED");
    uint64_t seed = s != NULL ? strtoull(s, NULL, 10) : DEFAULT_SEED;
    return seed != 0 ? seed : DEFAULT_SEED;
}

static kv *open_handle(uint32_t timeout_ms)
{
    kv_open_opts oo = {.timeout_ms = timeout_ms};
    kv *h = NULL;
    int rc = kv_open(cluster_conf_path(cl), &oo, &h);
    ck_assert_msg(rc == KV_OK, "kv_open: %s (%s)", kv_strerror(rc),
                  kv_errmsg(NULL));
    return h;
}

/* The index on handle H of harness node I. */
static size_t admin_of(kv *h, int i)
{
    uint32_t id = cluster_node_id(cl, i);
    size_t n = admin_node_count(h);
    for (size_t j = 0; j < n; j++)
        if (admin_node_id(h, j) == id)
            return j;
    ck_abort_msg("node %u is not known to the handle", id);
    return 0;
}

static size_t key_of(unsigned i, char *buf, size_t cap)
{
    return (size_t)snprintf(buf, cap, "dmg/%05u", i);
}

/* The value of key I: incompressible bytes, so LevelDB stores its table
 * blocks as they are and the stored keys can be found in the file. */
static void value_of(unsigned i, unsigned char *buf)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (i + 7);
    for (size_t j = 0; j < VALUE_LEN; j++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[j] = (unsigned char)x;
    }
}

/* Writes the NKEYS keys through a pipeline; vers gets their versions. */
static void write_all(kv *h)
{
    static char keys[SLOTS][32];
    static unsigned char vals[SLOTS][VALUE_LEN];
    static struct admin_op ops[SLOTS];
    unsigned which[SLOTS], done[SLOTS];
    int used[SLOTS] = {0};
    unsigned next = 0, acked = 0;
    ck_assert_int_eq(admin_pipeline(h, SLOTS), KV_OK);
    int64_t t0 = harness_now_ms();
    while (acked < NKEYS) {
        for (unsigned s = 0; s < SLOTS && next < NKEYS; s++) {
            if (used[s])
                continue;
            memset(&ops[s], 0, sizeof ops[s]);
            ops[s].kind = ADMIN_PUT;
            ops[s].klen = key_of(next, keys[s], sizeof keys[s]);
            ops[s].key = keys[s];
            value_of(next, vals[s]);
            ops[s].val = vals[s];
            ops[s].vlen = VALUE_LEN;
            ops[s].timeout_ms = 30000;
            ck_assert_int_eq(admin_submit(h, s, &ops[s]), KV_OK);
            which[s] = next++;
            used[s] = 1;
        }
        int got = admin_poll(h, 100, done, SLOTS);
        ck_assert_msg(got >= 0, "admin_poll: %s", kv_strerror(got));
        for (int d = 0; d < got; d++) {
            unsigned s = done[d];
            ck_assert_uint_lt(s, SLOTS);
            ck_assert_msg(ops[s].rc == KV_OK, "put %s: %s", keys[s],
                          kv_strerror(ops[s].rc));
            vers[which[s]] = ops[s].version;
            used[s] = 0;
            acked++;
        }
        ck_assert_msg(harness_now_ms() - t0 < 120000,
                      "only %u of %u writes acknowledged in 120 s", acked,
                      NKEYS);
    }
    fprintf(stderr, "wrote %u keys of %u bytes in %" PRId64 " ms\n", NKEYS,
            VALUE_LEN, harness_now_ms() - t0);
}

/* Key I read through libkv with options O (HOW says which read) has its
 * acknowledged value and version. */
static void expect_get(kv *h, unsigned i, const kv_opts *o, const char *how)
{
    unsigned char want[VALUE_LEN];
    char k[32];
    size_t kl = key_of(i, k, sizeof k);
    void *got = NULL;
    size_t glen = 0;
    uint64_t gver = 0;
    int rc = kv_get(h, k, kl, o, &got, &glen, &gver);
    ck_assert_msg(rc == KV_OK, "%s of %s: %s (%s)", how, k, kv_strerror(rc),
                  kv_errmsg(h));
    value_of(i, want);
    int same = glen == VALUE_LEN && memcmp(got, want, VALUE_LEN) == 0;
    kv_free(got);
    ck_assert_msg(same, "%s of %s: a wrong value", how, k);
    ck_assert_msg(gver == vers[i],
                  "%s of %s: version %" PRIu64 ", acknowledged %" PRIu64, how,
                  k, gver, vers[i]);
}

/* Reads every key through H (any replica the cluster picks) and checks
 * its value and version. */
static void verify_through_cluster(kv *h)
{
    for (unsigned i = 0; i < NKEYS; i++)
        expect_get(h, i, NULL, "a get through the cluster");
}

/* Sends a stale get of key I to node NODE alone (it answers from its own
 * copy). Returns the admin_raw code; on KV_OK *out is the reply. */
static int stale_get(kv *h, int node, unsigned i, uint32_t timeout_ms,
                     Kv__Envelope **out)
{
    static uint64_t next_id = 70000;
    char k[32];
    size_t kl = key_of(i, k, sizeof k);
    Kv__Request req = KV__REQUEST__INIT;
    Kv__GetRequest g = KV__GET_REQUEST__INIT;
    g.key.data = (uint8_t *)k;
    g.key.len = kl;
    g.stale = 1;
    req.id = ++next_id;
    req.timeout_ms = timeout_ms;
    req.op_case = KV__REQUEST__OP_GET;
    req.get = &g;
    void *buf = NULL;
    size_t len = 0;
    ck_assert_int_eq(wire_encode_request(&req, &buf, &len), KV_OK);
    int rc = admin_raw(h, admin_of(h, node), buf, len, timeout_ms, out);
    free(buf);
    if (rc == KV_OK && (*out)->body_case != KV__ENVELOPE__BODY_RESPONSE) {
        wire_free(*out);
        ck_abort_msg("node %u answered a get with something else",
                     cluster_node_id(cl, node));
    }
    return rc;
}

/* Checks that reply E to a get of key I carries its acknowledged value and
 * version. */
static void expect_acknowledged(const Kv__Envelope *e, unsigned i,
                                const char *who)
{
    const Kv__Response *r = e->response;
    unsigned char want[VALUE_LEN];
    value_of(i, want);
    ck_assert_msg(r->code == KV_OK &&
                      r->result_case == KV__RESPONSE__RESULT_GET,
                  "%s: key %u: code %d (%s)", who, i, r->code,
                  r->message ? r->message : "");
    ck_assert_msg(r->get->value.len == VALUE_LEN &&
                      memcmp(r->get->value.data, want, VALUE_LEN) == 0,
                  "%s: key %u has a wrong value", who, i);
    ck_assert_msg(r->get->version == vers[i],
                  "%s: key %u at version %" PRIu64 ", acknowledged %" PRIu64,
                  who, i, r->get->version, vers[i]);
}

/* The status of node I (NULL when it does not answer). */
static Kv__StatusResult *status_of(kv *h, int i)
{
    Kv__StatusResult *st = NULL;
    if (admin_status(h, admin_of(h, i), 1000, &st) != KV_OK)
        return NULL;
    return st;
}

static const Kv__ShardInfo *info_of(const Kv__StatusResult *st, uint32_t s)
{
    for (size_t k = 0; st != NULL && k < st->n_shard_info; k++)
        if (st->shard_info[k] != NULL && st->shard_info[k]->shard == s)
            return st->shard_info[k];
    return NULL;
}

/* Waits at most TIMEOUT_MS until node NODE applied, in every shard, what
 * the shard's leader applied, with as many keys. Returns the ms it took,
 * or -1. */
static int64_t wait_caught_up(kv *h, int node, int timeout_ms)
{
    int64_t t0 = harness_now_ms();
    for (;;) {
        Kv__StatusResult *sts[NNODES];
        for (int i = 0; i < NNODES; i++)
            sts[i] = status_of(h, i);
        int caught = sts[node] != NULL;
        for (uint32_t s = 0; caught && s < NSHARDS; s++) {
            const Kv__ShardInfo *lsi = NULL;
            for (int i = 0; i < NNODES; i++) {
                const Kv__ShardInfo *si = info_of(sts[i], s);
                if (si != NULL && si->local && si->role != NULL &&
                    strcmp(si->role, "leader") == 0 &&
                    (lsi == NULL || si->term > lsi->term))
                    lsi = si;
            }
            const Kv__ShardInfo *nsi = info_of(sts[node], s);
            caught = lsi != NULL && nsi != NULL && nsi->local &&
                     nsi->applied == lsi->applied && nsi->keys == lsi->keys;
        }
        for (int i = 0; i < NNODES; i++)
            admin_status_free(sts[i]);
        int64_t took = harness_now_ms() - t0;
        if (caught)
            return took;
        if (took >= timeout_ms)
            return -1;
        harness_sleep_ms(100);
    }
}

/* Whether the file PATH contains TEXT (reads at most 1,000,000 lines). */
static int file_contains(const char *path, const char *text)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    char line[8192];
    int yes = 0;
    for (int n = 0; !yes && n < 1000000 && fgets(line, sizeof line, f); n++)
        yes = strstr(line, text) != NULL;
    fclose(f);
    return yes;
}

static int path_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* The largest file of DIR whose name ends with SUFFIX (and is more than
 * the suffix) into PATH. Returns its size, 0 when there is none. */
static off_t largest_file(const char *dir, const char *suffix, char *path,
                          size_t cap)
{
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "cannot list %s", dir);
    size_t sl = strlen(suffix);
    off_t best = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (n <= sl || strcmp(de->d_name + n - sl, suffix) != 0)
            continue;
        char p[1024];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (stat(p, &sb) == 0 && sb.st_size > best) {
            best = sb.st_size;
            snprintf(path, cap, "%s", p);
        }
    }
    closedir(d);
    return best;
}

/* Whether DIR has an entry whose name starts with PREFIX. */
static int dir_has_prefix(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    int yes = 0;
    struct dirent *de;
    while (!yes && (de = readdir(d)) != NULL)
        yes = strncmp(de->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return yes;
}

/* Inverts FLIP_BYTES bytes of PATH at offset AT. */
static void flip_bytes(const char *path, off_t at)
{
    int fd = open(path, O_RDWR);
    ck_assert_msg(fd >= 0, "cannot open %s", path);
    unsigned char b[FLIP_BYTES];
    ck_assert_int_eq(pread(fd, b, sizeof b, at), (ssize_t)sizeof b);
    for (size_t i = 0; i < sizeof b; i++)
        b[i] ^= 0xff;
    ck_assert_int_eq(pwrite(fd, b, sizeof b, at), (ssize_t)sizeof b);
    ck_assert_int_eq(fsync(fd), 0);
    close(fd);
}

/* The offset in the table PATH (SIZE bytes) of a user record, found by its
 * stored key ("D", shard, key), or -1. Tries keys from the middle on. */
static off_t find_user_record(const char *path, off_t size)
{
    unsigned char *buf = malloc((size_t)size);
    ck_assert_ptr_nonnull(buf);
    int fd = open(path, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pread(fd, buf, (size_t)size, 0), (ssize_t)size);
    close(fd);
    off_t found = -1;
    for (unsigned i = NKEYS / 2; i < NKEYS && found < 0; i++) {
        unsigned char pat[64];
        char k[32];
        size_t kl = key_of(i, k, sizeof k);
        uint32_t s = kv_shard_of(k, kl, NSHARDS);
        pat[0] = 'D';
        pat[1] = (unsigned char)(s >> 24);
        pat[2] = (unsigned char)(s >> 16);
        pat[3] = (unsigned char)(s >> 8);
        pat[4] = (unsigned char)s;
        memcpy(pat + 5, k, kl);
        size_t pl = 5 + kl;
        for (off_t at = 0; at + (off_t)pl + 64 < size && found < 0; at++)
            if (buf[at] == 'D' && memcmp(buf + at, pat, pl) == 0)
                found = at + (off_t)pl + 16; /* inside its value */
    }
    free(buf);
    return found;
}

/* --- damage --------------------------------------------------------------- */

enum damage { IN_A_USER_RECORD, MIDDLE_OF_TABLE, MIDDLE_OF_LOG };

/* Node NODE runs (or tries to) on damaged data. Reads every key from it
 * alone, pass after pass, until it exits: each answer must be the
 * acknowledged value or KV_ECORRUPT. Before each, an application reads
 * the key through libkv with stale reads, once from each member (they go
 * round robin): libkv must take a KV_ECORRUPT from NODE to another member,
 * so the application never sees the damage. Returns NODE's exit status. */
static int read_until_it_stops(kv *h, kv *app, int node, unsigned *ecorrupt,
                               unsigned *served)
{
    const kv_opts stale = {.stale = 1};
    int64_t deadline = harness_now_ms() + 90000;
    int code = -1;
    for (;;) {
        for (unsigned i = 0; i < NKEYS; i++) {
            if (cluster_wait_exit(cl, node, 0, &code) == 0)
                return code;
            for (unsigned m = 0; m < NNODES; m++)
                expect_get(app, i, &stale,
                           "a stale read through libkv while node 3 is "
                           "damaged");
            Kv__Envelope *e = NULL;
            int rc = stale_get(h, node, i, 1000, &e);
            if (rc != KV_OK) {
                /* not up yet, or gone: wait a little for either */
                if (cluster_wait_exit(cl, node, 200, &code) == 0)
                    return code;
                continue;
            }
            if (e->response->code == KV_ECORRUPT) {
                (*ecorrupt)++;
            } else {
                expect_acknowledged(e, i, "the damaged node");
                (*served)++;
            }
            wire_free(e);
            if (*ecorrupt && cluster_wait_exit(cl, node, 10000, &code) == 0)
                return code;
            ck_assert_msg(!*ecorrupt,
                          "node 3 answered KV_ECORRUPT and still runs 10 s "
                          "later");
        }
        ck_assert_msg(harness_now_ms() < deadline,
                      "node 3 served every key for 90 s on damaged data "
                      "(%u answers): the damage was never met",
                      *served);
    }
}

static void damage_and_rebuild(enum damage where)
{
    const int node = DAMAGED_NODE;
    const uint32_t id = cluster_node_id(cl, node);
    char datadir[512], dir[600], logpath[512], marker[700];
    snprintf(datadir, sizeof datadir, "%s/data", cluster_dir(cl));
    snprintf(dir, sizeof dir, "%s/%u", datadir, id);
    snprintf(logpath, sizeof logpath, "%s/node-%u.log", cluster_dir(cl), id);
    snprintf(marker, sizeof marker, "%s/DAMAGED", dir);
    kv *h = open_handle(10000);
    write_all(h);

    /* Node 3 stops; for the table cases, once more after a restart, which
     * replays LevelDB's log into a table. */
    ck_assert_int_eq(cluster_kill(cl, node, SIGTERM), 0);
    if (where != MIDDLE_OF_LOG) {
        ck_assert_int_eq(cluster_restart_node(cl, node), 0);
        ck_assert_int_eq(cluster_kill(cl, node, SIGTERM), 0);
    }
    char victim[1024] = "";
    off_t size = largest_file(dir, where == MIDDLE_OF_LOG ? ".log" : ".ldb",
                              victim, sizeof victim);
    ck_assert_msg(size > (off_t)(NKEYS * VALUE_LEN),
                  "node 3 holds no %s file with the data (largest: %lld "
                  "bytes)",
                  where == MIDDLE_OF_LOG ? ".log" : ".ldb", (long long)size);
    off_t at = size / 2;
    if (where == IN_A_USER_RECORD) {
        at = find_user_record(victim, size);
        ck_assert_msg(at > 0, "no stored user key found in %s", victim);
    }
    flip_bytes(victim, at);
    fprintf(stderr, "flipped %d bytes at %lld of %s (%lld bytes)\n", FLIP_BYTES,
            (long long)at, victim, (long long)size);

    /* It starts on the damage, and stops at the latest when a read meets
     * it; it never answers anything but the right value or KV_ECORRUPT. */
    ck_assert_int_eq(cluster_spawn_node(cl, node), 0);
    unsigned ecorrupt = 0, served = 0;
    int64_t t0 = harness_now_ms();
    kv *app = open_handle(10000);
    int code = read_until_it_stops(h, app, node, &ecorrupt, &served);
    kv_close(app);
    fprintf(stderr,
            "node 3 exited with status %d after %" PRId64
            " ms: %u reads served right, %u got KV_ECORRUPT\n",
            code, harness_now_ms() - t0, served, ecorrupt);
    ck_assert_int_eq(code, EXIT_DAMAGED);
    if (where == IN_A_USER_RECORD)
        ck_assert_msg(served > 0,
                      "a damaged user record should stop the node only once "
                      "met (by a read, or by a LevelDB compaction), not as "
                      "it starts");
    ck_assert_msg(file_contains(logpath, "is damaged ("),
                  "node 3 did not log that its data directory is damaged");
    char want[128];
    snprintf(want, sizeof want, "-n %u --rebuild", id);
    ck_assert_msg(file_contains(logpath, want),
                  "node 3's log does not name the rebuild command");
    ck_assert_msg(path_exists(marker), "no %s", marker);
    ck_assert_msg(file_contains(marker, "is damaged ("),
                  "DAMAGED does not say why");

    /* The other replicas serve every key. */
    kv *fresh = open_handle(15000);
    verify_through_cluster(fresh);
    kv_close(fresh);

    /* A start refuses while DAMAGED is there. */
    char idbuf[16], err[4096] = "";
    snprintf(idbuf, sizeof idbuf, "%u", id);
    const char *args[] = {"-c", cluster_conf_path(cl), "-n", idbuf, NULL};
    ck_assert_int_eq(
        harness_run_kvnode(args, 20000, &code, NULL, 0, err, sizeof err), 0);
    ck_assert_msg(code == EXIT_REFUSED, "a start on a DAMAGED directory: %d",
                  code);
    ck_assert_msg(strstr(err, "DAMAGED") != NULL &&
                      strstr(err, "--rebuild") != NULL,
                  "the refusal does not say why: %s", err);

    /* --rebuild: the old directory is kept aside, the node catches up. */
    const char *rebuild[] = {"--rebuild", NULL};
    ck_assert_int_eq(cluster_spawn_node_args(cl, node, rebuild), 0);
    ck_assert_int_eq(cluster_wait_ready(cl, 30000), 0);
    int64_t took = wait_caught_up(h, node, 120000);
    ck_assert_msg(took >= 0, "the rebuilt node did not catch up in 120 s");
    fprintf(stderr, "the rebuilt node caught up in %" PRId64 " ms\n", took);
    char aside[64];
    snprintf(aside, sizeof aside, "%u.damaged-", id);
    ck_assert_msg(dir_has_prefix(datadir, aside), "no %s/%s* kept", datadir,
                  aside);
    ck_assert_msg(!path_exists(marker), "the new directory holds DAMAGED");
    ck_assert_msg(file_contains(logpath, "moved aside"),
                  "the rebuild does not say where the old data went");
    for (unsigned i = 0; i < NKEYS; i++) {
        Kv__Envelope *e = NULL;
        int rc = stale_get(h, node, i, 5000, &e);
        ck_assert_msg(rc == KV_OK, "stale get of key %u from node 3: %s", i,
                      kv_strerror(rc));
        expect_acknowledged(e, i, "the rebuilt node");
        wire_free(e);
    }
    verify_through_cluster(h);
    kv_close(h);
    stop_cluster_cleanly();
}

START_TEST(a_damaged_user_record_stops_the_running_node_once_met)
{
    damage_and_rebuild(IN_A_USER_RECORD);
}
END_TEST

START_TEST(a_damaged_table_stops_the_node_and_rebuild_brings_it_back)
{
    damage_and_rebuild(MIDDLE_OF_TABLE);
}
END_TEST

START_TEST(a_damaged_log_file_keeps_the_node_from_starting)
{
    damage_and_rebuild(MIDDLE_OF_LOG);
}
END_TEST

/* --- garbage -------------------------------------------------------------- */

/* The resident set (VmRSS) of PID in KiB, or 0. */
static uint64_t vm_rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    uint64_t kib = 0;
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmRSS: %" SCNu64 " kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

/* Whether PID runs with AddressSanitizer (its memory is then not the
 * program's). */
static int runs_asan(pid_t pid)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    int yes = 0;
    if (f == NULL)
        return 0;
    while (!yes && fgets(line, sizeof line, f) != NULL)
        yes = strstr(line, "libasan") != NULL;
    fclose(f);
    return yes;
}

/* Packs ENV (version set here) into BUF (CAP bytes). Returns the length. */
static size_t pack_env(Kv__Envelope *env, unsigned char *buf, size_t cap)
{
    size_t n = kv__envelope__get_packed_size(env);
    ck_assert_uint_le(n, cap);
    return kv__envelope__pack(env, buf);
}

/* A valid request envelope whose fields make no sense. */
static size_t bad_fields(unsigned char *buf, size_t cap)
{
    Kv__Envelope env = KV__ENVELOPE__INIT;
    Kv__Request req = KV__REQUEST__INIT;
    Kv__GetRequest g = KV__GET_REQUEST__INIT;
    Kv__ScanRequest sc = KV__SCAN_REQUEST__INIT;
    Kv__PutRequest p = KV__PUT_REQUEST__INIT;
    Kv__TxnDecide d = KV__TXN_DECIDE__INIT;
    static unsigned char big[5000];
    env.version = WIRE_VERSION;
    env.body_case = KV__ENVELOPE__BODY_REQUEST;
    env.request = &req;
    req.id = rng_next();
    req.timeout_ms = (uint32_t)rng_next();
    switch (rng_next() % 6) {
    case 0: /* an empty key */
        req.op_case = KV__REQUEST__OP_GET;
        req.get = &g;
        break;
    case 1: /* no such shard */
        req.op_case = KV__REQUEST__OP_SCAN;
        req.scan = &sc;
        sc.shard = (uint32_t)rng_next() | 0x10000u;
        sc.limit = rng_next();
        break;
    case 2: /* a key over max_key_bytes */
        req.op_case = KV__REQUEST__OP_PUT;
        req.put = &p;
        p.key.data = big;
        p.key.len = sizeof big;
        break;
    case 3: /* a node's transaction step from a client */
        req.op_case = KV__REQUEST__OP_TXN_DECIDE;
        req.txn_decide = &d;
        d.shard = (uint32_t)rng_next();
        break;
    case 4: /* an unknown protocol version */
        env.version = 2 + (uint32_t)(rng_next() % 1000);
        req.op_case = KV__REQUEST__OP_GET;
        req.get = &g;
        g.key.data = big;
        g.key.len = 3;
        break;
    default: /* a request with no operation */
        break;
    }
    return pack_env(&env, buf, cap);
}

/* One random frame into BUF (CAP >= GARBAGE_FRAME_MAX bytes). */
static size_t garbage_frame(unsigned char *buf, size_t cap)
{
    size_t len = 0;
    switch (rng_next() % 7) {
    case 0: /* random bytes */
        len = 1 + rng_next() % GARBAGE_FRAME_MAX;
        for (size_t i = 0; i < len; i++)
            buf[i] = (unsigned char)rng_next();
        break;
    case 1: { /* a valid put envelope, truncated */
        Kv__Envelope env = KV__ENVELOPE__INIT;
        Kv__Request req = KV__REQUEST__INIT;
        Kv__PutRequest p = KV__PUT_REQUEST__INIT;
        char k[32];
        unsigned char v[256];
        for (size_t i = 0; i < sizeof v; i++)
            v[i] = (unsigned char)rng_next();
        p.key.data = (uint8_t *)k;
        p.key.len = (size_t)snprintf(k, sizeof k, "garbage/%u",
                                     (unsigned)(rng_next() % 1000));
        p.value.data = v;
        p.value.len = sizeof v;
        env.version = WIRE_VERSION;
        env.body_case = KV__ENVELOPE__BODY_REQUEST;
        env.request = &req;
        req.op_case = KV__REQUEST__OP_PUT;
        req.put = &p;
        len = pack_env(&env, buf, cap);
        len = 1 + rng_next() % (len - 1);
        break;
    }
    case 2: { /* a length prefix claiming up to the message limit */
        uint64_t claim = 1 + rng_next() % MAX_MESSAGE_BYTES;
        buf[len++] = 0x08; /* version = 1 */
        buf[len++] = 0x01;
        buf[len++] = 0x12; /* field 2 (request), length-delimited */
        while (claim >= 0x80) {
            buf[len++] = (unsigned char)(claim | 0x80);
            claim >>= 7;
        }
        buf[len++] = (unsigned char)claim;
        size_t tail = rng_next() % 64;
        for (size_t i = 0; i < tail; i++)
            buf[len++] = (unsigned char)rng_next();
        break;
    }
    case 3:
    case 4: /* a valid envelope with bad fields */
        len = bad_fields(buf, cap);
        break;
    case 5: { /* a response sent to a node */
        Kv__Envelope env = KV__ENVELOPE__INIT;
        Kv__Response resp = KV__RESPONSE__INIT;
        env.version = WIRE_VERSION;
        env.body_case = KV__ENVELOPE__BODY_RESPONSE;
        env.response = &resp;
        resp.code = (int32_t)rng_next();
        len = pack_env(&env, buf, cap);
        break;
    }
    default: { /* a peer batch from a client's routing id */
        Kv__Envelope env = KV__ENVELOPE__INIT;
        Kv__PeerBatch b = KV__PEER_BATCH__INIT;
        env.version = WIRE_VERSION;
        env.body_case = KV__ENVELOPE__BODY_PEER;
        env.peer = &b;
        b.from = 1 + (uint32_t)(rng_next() % NNODES);
        b.cluster = "kvtest";
        len = pack_env(&env, buf, cap);
        break;
    }
    }
    return len;
}

/* Whether the node must count BUF as a bad frame: it does not decode, or
 * it is not a request (a response, or a peer batch on a client's
 * connection). */
static int counted_bad(const void *buf, size_t len)
{
    Kv__Envelope *e = NULL;
    char err[160];
    if (wire_decode(buf, len, MAX_MESSAGE_BYTES, &e, err, sizeof err) != KV_OK)
        return 1;
    int bad = e->body_case != KV__ENVELOPE__BODY_REQUEST;
    wire_free(e);
    return bad;
}

static unsigned char *encode_status(size_t *len)
{
    Kv__Envelope env = KV__ENVELOPE__INIT;
    Kv__Request req = KV__REQUEST__INIT;
    Kv__StatusRequest st = KV__STATUS_REQUEST__INIT;
    env.version = WIRE_VERSION;
    env.body_case = KV__ENVELOPE__BODY_REQUEST;
    env.request = &req;
    req.id = 424242;
    req.op_case = KV__REQUEST__OP_STATUS;
    req.status = &st;
    *len = kv__envelope__get_packed_size(&env);
    unsigned char *buf = malloc(*len);
    ck_assert_ptr_nonnull(buf);
    kv__envelope__pack(&env, buf);
    return buf;
}

/* A raw TCP connection to PORT that writes junk, then closes. */
static void junk_connection(uint16_t port, unsigned char *buf)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0,
                  "cannot connect to port %u", (unsigned)port);
    size_t len = 1 + rng_next() % 4096;
    for (size_t i = 0; i < len; i++)
        buf[i] = (unsigned char)rng_next();
    if (rng_next() % 2) {
        /* a ZMTP 3 greeting's signature, then junk where the rest goes */
        static const unsigned char sig[10] = {0xff, 0, 0, 0, 0,
                                              0,    0, 0, 1, 0x7f};
        memcpy(buf, sig, sizeof sig < len ? sizeof sig : len);
    }
    ssize_t w = send(fd, buf, len, MSG_NOSIGNAL);
    (void)w; /* the node may have hung up already */
    close(fd);
}

/* Waits for the answer to the status request on S (other answers, to the
 * garbage sent before it, are read and dropped). Returns 1 when it came. */
static int await_status(void *s, int64_t deadline)
{
    for (int n = 0; n < 100000; n++) {
        int64_t left = deadline - harness_now_ms();
        if (left <= 0)
            return 0;
        zmq_pollitem_t item = {.socket = s, .events = ZMQ_POLLIN};
        if (zmq_poll(&item, 1, (long)left) <= 0)
            return 0;
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        int got = zmq_msg_recv(&msg, s, ZMQ_DONTWAIT) >= 0;
        Kv__Envelope *e = got ? kv__envelope__unpack(NULL, zmq_msg_size(&msg),
                                                     zmq_msg_data(&msg))
                              : NULL;
        zmq_msg_close(&msg);
        int done = e != NULL && e->body_case == KV__ENVELOPE__BODY_RESPONSE &&
                   e->response->result_case == KV__RESPONSE__RESULT_STATUS;
        if (e != NULL)
            kv__envelope__free_unpacked(e, NULL);
        if (done)
            return 1;
    }
    return 0;
}

/* Runs CONNS garbage connections to node NODE, GARBAGE_BATCH at a time.
 * Returns how many frames the node must count as bad. */
static uint64_t garbage(int node, unsigned conns)
{
    void *ctx = zmq_ctx_new();
    ck_assert_ptr_nonnull(ctx);
    unsigned char *buf = malloc(GARBAGE_FRAME_MAX + 64);
    ck_assert_ptr_nonnull(buf);
    size_t slen;
    unsigned char *status = encode_status(&slen);
    uint64_t bad = 0;
    for (unsigned done = 0; done < conns;) {
        void *socks[GARBAGE_BATCH];
        unsigned n = 0;
        for (; n < GARBAGE_BATCH && done < conns; done++) {
            if (done % 4 == 3) {
                junk_connection(cluster_node_port(cl, node), buf);
                continue;
            }
            void *s = zmq_socket(ctx, ZMQ_DEALER);
            ck_assert_ptr_nonnull(s);
            int zero = 0, tmo = 5000;
            zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
            zmq_setsockopt(s, ZMQ_SNDTIMEO, &tmo, sizeof tmo);
            ck_assert_int_eq(zmq_connect(s, cluster_node_addr(cl, node)), 0);
            unsigned frames = 1 + (unsigned)(rng_next() % 4);
            for (unsigned f = 0; f < frames; f++) {
                size_t len = garbage_frame(buf, GARBAGE_FRAME_MAX + 64);
                if (rng_next() % 10 == 0) { /* a multipart message */
                    ck_assert_int_ge(zmq_send(s, buf, len, ZMQ_SNDMORE), 0);
                    ck_assert_int_ge(zmq_send(s, buf, len / 2 + 1, 0), 0);
                    bad++;
                    continue;
                }
                ck_assert_int_ge(zmq_send(s, buf, len, 0), 0);
                bad += (uint64_t)counted_bad(buf, len);
            }
            ck_assert_int_ge(zmq_send(s, status, slen, 0), 0);
            socks[n++] = s;
        }
        int64_t deadline = harness_now_ms() + 10000;
        for (unsigned i = 0; i < n; i++) {
            ck_assert_msg(await_status(socks[i], deadline),
                          "the node did not answer a status request after "
                          "garbage within 10 s");
            zmq_close(socks[i]);
        }
    }
    free(status);
    free(buf);
    zmq_ctx_term(ctx);
    return bad;
}

static uint64_t bad_frames_of(kv *h, int node)
{
    Kv__StatusResult *st = NULL;
    int rc = admin_status(h, admin_of(h, node), 3000, &st);
    ck_assert_msg(rc == KV_OK, "status of node %u: %s",
                  cluster_node_id(cl, node), kv_strerror(rc));
    uint64_t n = st->bad_frames;
    admin_status_free(st);
    return n;
}

/* A put and a get on every shard through H. */
static void expect_serving(kv *h, const char *tag)
{
    unsigned shards_done = 0;
    for (int i = 0; i < 1000 && shards_done != (1u << NSHARDS) - 1; i++) {
        char k[64], v[64];
        int kl = snprintf(k, sizeof k, "serves/%s/%d", tag, i);
        int vl = snprintf(v, sizeof v, "value %d", i);
        uint32_t s = kv_shard_of(k, (size_t)kl, NSHARDS);
        if (shards_done & (1u << s))
            continue;
        uint64_t ver = 0;
        int rc = kv_put(h, k, (size_t)kl, v, (size_t)vl, NULL, &ver);
        ck_assert_msg(rc == KV_OK, "put on shard %u %s: %s (%s)", s, tag,
                      kv_strerror(rc), kv_errmsg(h));
        void *got = NULL;
        size_t glen = 0;
        uint64_t gver = 0;
        rc = kv_get(h, k, (size_t)kl, NULL, &got, &glen, &gver);
        ck_assert_msg(rc == KV_OK, "get on shard %u %s: %s", s, tag,
                      kv_strerror(rc));
        int same = glen == (size_t)vl && memcmp(got, v, glen) == 0;
        kv_free(got);
        ck_assert_msg(same && gver == ver, "wrong value on shard %u %s", s,
                      tag);
        shards_done |= 1u << s;
    }
    ck_assert_uint_eq(shards_done, (1u << NSHARDS) - 1);
}

START_TEST(garbage_connections_leave_the_node_serving_in_bounded_memory)
{
    const int node = 0;
    uint64_t seed = test_seed();
    rng_state = seed;
    fprintf(stderr, "garbage: seed %" PRIu64 " (KV_TEST_SEED=N replays)\n",
            seed);
    kv *h = open_handle(10000);
    pid_t pid = cluster_node_pid(cl, node);

    /* Warm up what any traffic grows (allocator arenas, ZeroMQ, caches),
     * then measure. */
    expect_serving(h, "before");
    uint64_t bad = garbage(node, GARBAGE_WARMUP);
    expect_serving(h, "warm");
    uint64_t frames0 = bad_frames_of(h, node);
    uint64_t rss0 = vm_rss_kib(pid);
    ck_assert_msg(rss0 > 0, "no VmRSS for pid %d", (int)pid);

    int64_t t0 = harness_now_ms();
    bad = garbage(node, GARBAGE_CONNS);
    int64_t took = harness_now_ms() - t0;
    expect_serving(h, "after");
    uint64_t frames1 = bad_frames_of(h, node);
    uint64_t rss1 = vm_rss_kib(pid);
    int asan = runs_asan(pid);
    fprintf(stderr,
            "garbage: %u connections in %" PRId64 " ms; bad_frames +%" PRIu64
            " (%" PRIu64 " sent); VmRSS %.1f -> %.1f MiB%s\n",
            GARBAGE_CONNS, took, frames1 - frames0, bad, (double)rss0 / 1024,
            (double)rss1 / 1024,
            asan ? " (AddressSanitizer build: the bound is not checked)" : "");
    ck_assert_msg(took < GARBAGE_TIME_LIMIT_MS, "garbage took %" PRId64 " ms",
                  took);
    /* At least every frame that must count: the junk of raw connections
     * can make frames too (libzmq reads a peer without a ZMTP 3 greeting
     * as a ZMTP 1.0 one, whose framing junk easily fits). */
    ck_assert_msg(frames1 - frames0 >= bad,
                  "the node counted %" PRIu64 " bad frames, %" PRIu64
                  " were sent on ZeroMQ connections",
                  frames1 - frames0, bad);
    if (!asan)
        ck_assert_msg(rss1<rss0 + GARBAGE_RSS_BOUND / 1024,
                           "VmRSS grew by %" PRIu64 " KiB (bound %u KiB)", rss1>
                              rss0
                          ? rss1 - rss0
                          : 0,
                      GARBAGE_RSS_BOUND / 1024);
    kv_close(h);
    stop_cluster_cleanly();
}
END_TEST

static Suite *corrupt_suite(void)
{
    Suite *s = suite_create("corrupt");
    TCase *tc = tcase_create("damaged data");
    /* Checked: each test owns its cluster, in the process that runs it. */
    tcase_add_checked_fixture(tc, cluster_up, cluster_down);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, a_damaged_user_record_stops_the_running_node_once_met);
    tcase_add_test(tc,
                   a_damaged_table_stops_the_node_and_rebuild_brings_it_back);
    tcase_add_test(tc, a_damaged_log_file_keeps_the_node_from_starting);
    suite_add_tcase(s, tc);
    tc = tcase_create("garbage");
    tcase_add_checked_fixture(tc, cluster_up, cluster_down);
    tcase_set_timeout(tc, 300);
    tcase_add_test(
        tc, garbage_connections_leave_the_node_serving_in_bounded_memory);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    if (harness_init() != 0)
        return EXIT_FAILURE;
    SRunner *sr = srunner_create(corrupt_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return harness_fini(failed);
}
