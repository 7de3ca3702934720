/*
 * sim_counter - the counter workload of the simulator (see sim.h).
 *
 * A few hot keys ("{tag}cN", spread over the shards) are counters. Counter
 * clients change them with the built-in procedure incr (a Request.call
 * with a session: every attempt of one call carries the same client id and
 * sequence number, so a retry after a timeout or a failover is answered
 * from the session, never applied twice), read them with linearizable
 * gets and, on some seeds, overwrite them with puts of a number: plain
 * ones, and conditional ones (if_version the last version the client saw,
 * if_absent when it saw none), whose outcome the leader cannot predict, so
 * calls on the key wait for their apply.
 * Each key counts up (incr with an empty argument, "1", "+1" or "01") or,
 * on some seeds, down ("-1", "-01"): every incr moves it by one in its
 * direction. Put k writes k * SIM_COUNTER_EPOCH, so a value names the put
 * it counts from (its "epoch", 0 for none) and the increments applied
 * since (its "count").
 *
 * Each answer is checked as it arrives: an incr replies a decimal int64
 * as printf writes it, a get reads one, both with a version, and the value
 * is one the key's ops can produce. At the end of the seed the history is
 * checked key by key, with direct rules (A precedes B when A returned
 * before B was called; an unknown op never returned):
 *   - no two acknowledged incrs reply the same value (one would have been
 *     applied twice, or one lost);
 *   - if A precedes B (B an incr or a get) and both count from the same
 *     put, B counts at least as many increments as A, one more when B is
 *     an incr; if they count from different puts, B's put must be able to
 *     follow A;
 *   - B counts at least the acknowledged incrs that surely fall between its
 *     put and B, and at most the incrs (acknowledged or unknown) that can;
 *   - no value counts from a put that was refused;
 *   - versions and values agree: one version, one value; a later version
 *     counts more increments from the same put, or counts from a put
 *     written in between; a conditional put that succeeded directly
 *     follows the version it expected (if_absent: the first version);
 *   - after the heal, the first final get counts at least every
 *     acknowledged incr since its put, at most those and the unknown ones;
 *     every replica stores what the last final get read.
 * A late answer to an acknowledged incr (another attempt of the same call)
 * must repeat its reply and version. The replicas' agreement is the
 * end-of-seed digest comparison of sim_check.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "kv.h"
#include "shard.h"
#include "sim.h"

#define COUNTER_OP_MS 3000     /* an op gives up after this */
#define COUNTER_FINAL_MS 20000 /* a final op must succeed within this */
#define PUT_PCT 4              /* of the ops, on seeds with puts */
#define GET_PCT 35             /* of the other ops; the rest are incrs */
#define NOT_RETURNED UINT64_MAX

/* --- values ----------------------------------------------------------------
 */

/* Parses N bytes at P as printf's %lld writes an int64: an optional '-',
 * then digits with no leading zero ("0" alone), nothing else. Returns 0,
 * or -1 (*OUT untouched). */
static int parse_decimal(const void *p, size_t n, int64_t *out)
{
    const char *t = p;
    char buf[24], back[24];
    if (!p || n == 0 || n > 20)
        return -1;
    for (size_t i = 0; i < n; i++)
        if ((t[i] < '0' || t[i] > '9') && !(i == 0 && t[i] == '-'))
            return -1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    errno = 0;
    char *end;
    long long v = strtoll(buf, &end, 10);
    if (errno || *end)
        return -1;
    snprintf(back, sizeof(back), "%lld", v);
    if (strcmp(back, buf) != 0)
        return -1;
    *out = (int64_t)v;
    return 0;
}

/* Bytes for a message: printable ASCII as it is, the rest as \xHH; at
 * most about 40 bytes shown. Returns BUF. */
static const char *show(char *buf, size_t cap, const void *p, size_t n)
{
    const unsigned char *b = p;
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && b && o + 8 < cap; i++) {
        if (i == 40) {
            o += (size_t)snprintf(buf + o, cap - o, "...");
            break;
        }
        if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '\\' && b[i] != '"')
            buf[o++] = (char)b[i];
        else
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", b[i]);
        buf[o] = '\0';
    }
    return buf;
}

/* Splits value X of counter K into the put it counts from (*EPOCH; 0:
 * none) and the increments since (*COUNT, in K's direction; it may come
 * out negative, which the caller refuses). Returns 0, or -1 when no
 * history of K's ops can produce X: it is too far from every multiple of
 * SIM_COUNTER_EPOCH, or it counts from a put not made on K or refused. */
static int split(const struct sim *s, int k, int64_t x, uint64_t *epoch,
                 int64_t *count)
{
    const int64_t half = SIM_COUNTER_EPOCH / 2;
    if (x <= -half || x >= INT64_MAX - half)
        return -1;
    int64_t e = (x + half) / SIM_COUNTER_EPOCH;
    if (e > 0 && ((uint64_t)e > s->ncput || s->cops[s->cput[e - 1]].key != k ||
                  s->cops[s->cput[e - 1]].outcome == SIM_COP_FAILED))
        return -1;
    *epoch = (uint64_t)e;
    *count = (x - e * SIM_COUNTER_EPOCH) * s->cdir[k];
    return 0;
}

static const char *kind_name(int kind)
{
    switch (kind) {
    case SIM_INCR:
        return "incr";
    case SIM_GET:
        return "get";
    case SIM_CAS:
        return "put --if-version";
    case SIM_INSERT:
        return "put --if-absent";
    default:
        return "put";
    }
}

static bool is_put(int kind)
{
    return kind == SIM_PUT || kind == SIM_CAS || kind == SIM_INSERT;
}

/* --- setup -----------------------------------------------------------------
 */

int sim_counter_keys(struct sim *s)
{
    if (s->p.ncounters < 1 || s->p.ncounters > SIM_MAX_COUNTERS ||
        s->p.ncounter < 1) {
        sim_fail(s, "counter: %d keys (1..%d), %d clients (1..)",
                 s->p.ncounters, SIM_MAX_COUNTERS, s->p.ncounter);
        return -1;
    }
    for (int k = 0; k < s->p.ncounters; k++) {
        int sh = k % s->p.nshards;
        char tag[sizeof(s->tags[0])]; /* a copy: snprintf into s from s */
        memcpy(tag, s->tags[sh], sizeof(tag));
        int n = snprintf(s->ckeys[k], SIM_KEY_MAX, "{%s}c%d", tag, k);
        s->cklen[k] = (size_t)n;
        s->ckshard[k] =
            shard_of(s->ckeys[k], s->cklen[k], (uint32_t)s->p.nshards);
        if (s->ckshard[k] != (uint32_t)sh) {
            sim_fail(s, "hash tags do not decide the shard of %s", s->ckeys[k]);
            return -1;
        }
        s->cdir[k] = s->p.counter_down && sim_below(&s->rng, 2) ? -1 : 1;
    }
    return 0;
}

/* --- the client ------------------------------------------------------------
 */

/* Appends an op of C to the history. Returns its index, or SIZE_MAX (the
 * seed failed: out of memory). */
static size_t add_cop(struct sim *s, const struct sim_client *c, int kind,
                      int k, bool final, uint64_t call)
{
    if (s->ncops == s->capcops) {
        size_t cap = s->capcops ? s->capcops * 2 : 256;
        struct sim_cop *a = realloc(s->cops, cap * sizeof(*a));
        if (!a) {
            sim_fail(s, "out of memory (counter history)");
            return SIZE_MAX;
        }
        s->cops = a;
        s->capcops = cap;
    }
    s->cops[s->ncops] = (struct sim_cop){.kind = kind,
                                         .key = k,
                                         .client = c->idx,
                                         .final = final,
                                         .outcome = SIM_COP_RUNNING,
                                         .call = call,
                                         .ret = NOT_RETURNED};
    return s->ncops++;
}

/* Starts op KIND of C on counter K. */
static void begin(struct sim *s, struct sim_client *c, int kind, int k,
                  bool final)
{
    static const char *const up[] = {"", "", "", "1", "+1", "01"};
    static const char *const down[] = {"-1", "-1", "-01"};
    sim_client_reset_op(c);
    struct sim_op *op = &c->op;
    memcpy(op->kbuf, s->ckeys[k], s->cklen[k]);
    op->klen = s->cklen[k];
    op->ckey = k;
    uint64_t pk = 0;
    if (kind == SIM_INCR) {
        const char *a = s->cdir[k] > 0 ? up[sim_below(&s->rng, 6)]
                                       : down[sim_below(&s->rng, 3)];
        op->text = true;
        op->tlen = strlen(a);
        memcpy(op->tbuf, a, op->tlen);
    } else if (is_put(kind)) {
        if (s->ncput == s->capcput) {
            size_t cap = s->capcput ? s->capcput * 2 : 16;
            size_t *a = realloc(s->cput, cap * sizeof(*a));
            if (!a) {
                sim_fail(s, "out of memory (counter puts)");
                return;
            }
            s->cput = a;
            s->capcput = cap;
        }
        pk = s->ncput + 1;
        if (kind == SIM_CAS && !c->cknown[k])
            kind = SIM_INSERT; /* it saw no version: "still absent" */
        op->expect = kind == SIM_CAS ? c->cknown[k] : 0;
        op->text = true;
        op->tlen = (size_t)snprintf(op->tbuf, sizeof(op->tbuf), "%" PRId64,
                                    (int64_t)pk * SIM_COUNTER_EPOCH);
    }
    uint64_t deadline = s->now + (final ? COUNTER_FINAL_MS : COUNTER_OP_MS);
    sim_client_begin(s, c, kind, s->ckshard[k], deadline, final);
    /* No answer can arrive before the next delivery: the entry is made
     * after the call stamp is. */
    op->cop = add_cop(s, c, kind, k, final, op->call);
    if (op->cop == SIZE_MAX)
        return;
    if (is_put(kind)) {
        struct sim_cop *h = &s->cops[op->cop];
        h->kind = SIM_PUT;
        h->cond = kind == SIM_PUT ? 0 : kind;
        h->expect = op->expect;
        h->epoch = pk;
        h->value = (int64_t)pk * SIM_COUNTER_EPOCH;
        s->cput[s->ncput++] = op->cop;
    }
}

void sim_counter_start(struct sim *s, struct sim_client *c)
{
    int k = (int)sim_below(&s->rng, (uint64_t)s->p.ncounters);
    int kind = SIM_INCR;
    if (s->p.counter_puts && sim_below(&s->rng, 100) < PUT_PCT)
        kind = sim_below(&s->rng, 2) ? SIM_PUT : SIM_CAS;
    else if (sim_below(&s->rng, 100) < GET_PCT)
        kind = SIM_GET;
    begin(s, c, kind, k, false);
}

void sim_counter_plan_final(struct sim *s)
{
    int first = s->nclients - s->p.ncounter; /* counter clients come last */
    for (int k = 0; k < s->p.ncounters; k++) {
        struct sim_client *c = &s->clients[first + k % s->p.ncounter];
        int kinds[3] = {SIM_GET, SIM_INCR, SIM_GET};
        for (int i = 0; i < 3; i++) {
            c->final_kind[c->nfinal] = kinds[i];
            c->final_key[c->nfinal] = k;
            c->nfinal++;
        }
    }
}

void sim_counter_final(struct sim *s, struct sim_client *c)
{
    begin(s, c, c->final_kind[c->final_pos], c->final_key[c->final_pos], true);
}

static void impossible(struct sim *s, const struct sim_client *c, int from,
                       const Kv__Response *resp)
{
    const struct sim_op *op = &c->op;
    sim_fail(s,
             "counter: client %d: %s of %s got an impossible answer from "
             "node %d: code %d (%s) result %d \"%s\"",
             c->idx, kind_name(op->kind), s->ckeys[op->ckey], from + 1,
             resp->code, kv_strerror(resp->code), (int)resp->result_case,
             resp->message ? resp->message : "");
}

void sim_counter_answer(struct sim *s, struct sim_client *c, int from,
                        const Kv__Response *resp)
{
    const struct sim_op *op = &c->op;
    int k = op->ckey;
    char shown[200];
    if (op->cop >= s->ncops) {
        sim_fail(s, "counter: client %d's op has no history entry", c->idx);
        return;
    }
    int64_t x = 0;
    uint64_t version = 0;
    bool present = true;
    const void *text = NULL;
    size_t tlen = 0;
    if (op->kind == SIM_INCR) {
        if (resp->code != KV_OK ||
            resp->result_case != KV__RESPONSE__RESULT_CALL || !resp->call) {
            impossible(s, c, from, resp);
            return;
        }
        text = resp->call->reply.data;
        tlen = resp->call->reply.len;
        version = resp->call->version;
    } else if (op->kind == SIM_GET) {
        if (resp->code == KV_ENOTFOUND) {
            present = false;
        } else if (resp->code != KV_OK ||
                   resp->result_case != KV__RESPONSE__RESULT_GET ||
                   !resp->get) {
            impossible(s, c, from, resp);
            return;
        } else {
            text = resp->get->value.data;
            tlen = resp->get->value.len;
            version = resp->get->version;
        }
    } else if (resp->code == KV_ECONFLICT && op->kind != SIM_PUT) {
        s->cops[op->cop].outcome = SIM_COP_FAILED;
        s->cops[op->cop].ret = sim_stamp(s);
        s->st.cput_failed++;
        c->leader[op->shard] = from;
        sim_log(s, "client %d: %s %s %s -> refused (attempt %d, node %d)",
                c->idx, kind_name(op->kind), op->tbuf, s->ckeys[k], op->attempt,
                from + 1);
        sim_client_end_op(s, c);
        return;
    } else {
        if (resp->code != KV_OK ||
            resp->result_case != KV__RESPONSE__RESULT_WRITE || !resp->write) {
            impossible(s, c, from, resp);
            return;
        }
        version = resp->write->version;
        x = s->cops[op->cop].value;
    }
    if (text || tlen) {
        if (parse_decimal(text, tlen, &x) != 0) {
            sim_fail(s,
                     "counter: client %d: %s of %s (attempt %d, node %d) "
                     "%s \"%s\" (%zu bytes), not a decimal integer",
                     c->idx, kind_name(op->kind), s->ckeys[k], op->attempt,
                     from + 1, op->kind == SIM_INCR ? "replied" : "read",
                     show(shown, sizeof(shown), text, tlen), tlen);
            return;
        }
    } else if (!is_put(op->kind) && present) {
        sim_fail(s,
                 "counter: client %d: %s of %s (attempt %d, node %d) %s "
                 "nothing, not a decimal integer",
                 c->idx, kind_name(op->kind), s->ckeys[k], op->attempt,
                 from + 1, op->kind == SIM_INCR ? "replied" : "read");
        return;
    }
    if (present && version == 0) {
        sim_fail(s,
                 "counter: client %d: %s of %s (node %d) answered "
                 "version 0",
                 c->idx, kind_name(op->kind), s->ckeys[k], from + 1);
        return;
    }
    uint64_t epoch = s->cops[op->cop].epoch;
    int64_t count = 0;
    if (!is_put(op->kind) && present &&
        (split(s, k, x, &epoch, &count) != 0 ||
         count < (op->kind == SIM_INCR || epoch == 0 ? 1 : 0))) {
        sim_fail(s,
                 "counter: client %d: %s of %s (attempt %d, node %d) %s "
                 "%" PRId64 " (version %llu): no history of the key's ops "
                 "(incr by %d, puts of multiples of %d) can produce it",
                 c->idx, kind_name(op->kind), s->ckeys[k], op->attempt,
                 from + 1, op->kind == SIM_INCR ? "replied" : "read", x,
                 (unsigned long long)version, s->cdir[k], SIM_COUNTER_EPOCH);
        return;
    }
    struct sim_cop *h = &s->cops[op->cop];
    h->outcome = SIM_COP_OK;
    h->ret = sim_stamp(s);
    h->value = x;
    h->present = present;
    h->version = version;
    h->epoch = epoch;
    h->count = count;
    c->cknown[k] = version;
    if (op->kind == SIM_INCR) {
        s->st.incr_ok++;
        c->last_incr_id = op->id;
        c->last_incr_seq = op->wseq;
        c->last_incr_version = version;
        c->last_incr_rlen = tlen;
        memcpy(c->last_incr_reply, text, tlen); /* <= 20 bytes: parsed */
    } else if (op->kind == SIM_GET) {
        s->st.cget_ok++;
        s->st.cget_absent += !present;
    } else {
        s->st.cput_ok++;
    }
    c->leader[op->shard] = from;
    if (present)
        sim_log(s,
                "client %d: %s%s%.*s%s %s -> %" PRId64 " v=%llu (attempt "
                "%d, node %d)",
                c->idx, kind_name(op->kind), op->text ? " \"" : "",
                (int)op->tlen, op->tbuf, op->text ? "\"" : "", s->ckeys[k], x,
                (unsigned long long)version, op->attempt, from + 1);
    else
        sim_log(s, "client %d: get %s -> absent (attempt %d, node %d)", c->idx,
                s->ckeys[k], op->attempt, from + 1);
    sim_client_end_op(s, c);
}

void sim_counter_gave_up(struct sim *s, struct sim_client *c)
{
    const struct sim_op *op = &c->op;
    if (op->final) {
        sim_fail(s,
                 "liveness: the final %s of counter %s (shard %u) did not "
                 "succeed within %d ms after the heal",
                 kind_name(op->kind), s->ckeys[op->ckey], op->shard,
                 COUNTER_FINAL_MS);
        return;
    }
    if (op->cop < s->ncops)
        s->cops[op->cop].outcome =
            op->kind == SIM_GET ? SIM_COP_DROPPED : SIM_COP_UNKNOWN;
    if (op->kind == SIM_INCR)
        s->st.incr_unknown++;
    else if (op->kind == SIM_GET)
        s->st.cget_dropped++;
    else
        s->st.cput_unknown++;
    sim_log(s, "client %d gives up its %s of %s after %d attempts", c->idx,
            kind_name(op->kind), s->ckeys[op->ckey], op->attempt);
    sim_client_end_op(s, c);
}

void sim_counter_late(struct sim *s, struct sim_client *c, int from,
                      const Kv__Response *resp)
{
    /* Only while the client has sent no write since: the session then
     * still holds that incr's outcome, and every answer repeats it. */
    if (resp->code != KV_OK || resp->result_case != KV__RESPONSE__RESULT_CALL ||
        !resp->call || !c->last_incr_id || resp->id >> 16 != c->last_incr_id ||
        c->seq != c->last_incr_seq)
        return;
    const Kv__CallResult *r = resp->call;
    s->st.incr_late++;
    if (r->reply.len == c->last_incr_rlen &&
        r->version == c->last_incr_version &&
        (r->reply.len == 0 ||
         memcmp(r->reply.data, c->last_incr_reply, r->reply.len) == 0))
        return;
    char a[200], b[200];
    sim_fail(s,
             "exactly-once: client %d's incr (seq %llu) was answered twice, "
             "differently: \"%s\" v=%llu, then (attempt %d, node %d) \"%s\" "
             "v=%llu",
             c->idx, (unsigned long long)c->last_incr_seq,
             show(a, sizeof(a), c->last_incr_reply, c->last_incr_rlen),
             (unsigned long long)c->last_incr_version, (int)(resp->id & 0xffff),
             from + 1, show(b, sizeof(b), r->reply.data, r->reply.len),
             (unsigned long long)r->version);
}

/* --- the end of a seed -----------------------------------------------------
 */

/* Describes op O for a message. Returns BUF. */
static const char *describe(const struct sim_cop *o, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "client %d's %s%s", o->client,
                     o->final ? "final " : "",
                     kind_name(o->cond ? o->cond : o->kind));
    if (n < 0 || (size_t)n >= cap)
        return buf;
    size_t used = (size_t)n;
    if (o->kind == SIM_PUT)
        n = snprintf(buf + used, cap - used, " of %" PRId64, o->value);
    else
        n = 0;
    if (n > 0 && (size_t)n < cap - used)
        used += (size_t)n;
    if (o->outcome == SIM_COP_FAILED) {
        snprintf(buf + used, cap - used, " (t=%llu..%llu ms) -> refused",
                 (unsigned long long)(o->call / 1000000),
                 (unsigned long long)(o->ret / 1000000));
        return buf;
    }
    if (o->outcome != SIM_COP_OK) {
        snprintf(buf + used, cap - used, " (t=%llu ms, unknown)",
                 (unsigned long long)(o->call / 1000000));
        return buf;
    }
    char what[64];
    if (o->kind == SIM_PUT)
        snprintf(what, sizeof(what), "v=%llu", (unsigned long long)o->version);
    else if (!o->present)
        snprintf(what, sizeof(what), "absent");
    else
        snprintf(what, sizeof(what), "%" PRId64 " v=%llu (%lld from %s%llu)",
                 o->value, (unsigned long long)o->version, (long long)o->count,
                 o->epoch ? "put " : "", (unsigned long long)o->epoch);
    snprintf(buf + used, cap - used, " (t=%llu..%llu ms) -> %s",
             (unsigned long long)(o->call / 1000000),
             (unsigned long long)(o->ret / 1000000), what);
    return buf;
}

/* The put op of epoch E (> 0). */
static const struct sim_cop *put_of(const struct sim *s, uint64_t e)
{
    return &s->cops[s->cput[e - 1]];
}

/* An op's index in sim.cops with what to sort it by. */
struct sort_key {
    uint64_t key;
    size_t i;
};

static int cmp_sort_key(const void *a, const void *b)
{
    const struct sort_key *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

/* An int64 as a uint64 of the same order. */
static uint64_t ordered(int64_t v)
{
    return (uint64_t)v ^ (1ull << 63);
}

/* No two acknowledged incrs reply the same value. IX: the key's N ops. */
static void check_unique(struct sim *s, int k, const size_t *ix, size_t n,
                         struct sort_key *tmp)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (s->cops[ix[i]].kind == SIM_INCR &&
            s->cops[ix[i]].outcome == SIM_COP_OK)
            tmp[m++] = (struct sort_key){ordered(s->cops[ix[i]].value), ix[i]};
    qsort(tmp, m, sizeof(*tmp), cmp_sort_key);
    for (size_t i = 1; i < m && !s->failed; i++) {
        const struct sim_cop *a = &s->cops[tmp[i - 1].i];
        const struct sim_cop *b = &s->cops[tmp[i].i];
        if (a->value != b->value)
            continue;
        char da[160], db[160];
        sim_fail(s,
                 "counter: key %s: two acknowledged incrs replied %" PRId64
                 ": %s and %s (one was applied twice, or one was lost)",
                 s->ckeys[k], a->value, describe(a, da, sizeof(da)),
                 describe(b, db, sizeof(db)));
    }
}

/* After the heal: the first final get F counts at least every acknowledged
 * incr surely after its put, at most every incr (acknowledged or unknown)
 * that can be. Every op before the final phase returned before F was
 * called. */
static void check_healed(struct sim *s, int k, const size_t *ix, size_t n)
{
    const struct sim_cop *f = NULL;
    for (size_t i = 0; i < n && !f; i++)
        if (s->cops[ix[i]].final && s->cops[ix[i]].kind == SIM_GET &&
            s->cops[ix[i]].outcome == SIM_COP_OK)
            f = &s->cops[ix[i]];
    if (!f) {
        sim_fail(s, "counter: key %s has no final get", s->ckeys[k]);
        return;
    }
    const struct sim_cop *p = f->epoch ? put_of(s, f->epoch) : NULL;
    uint64_t acked = 0, unknown = 0, maybe = 0;
    for (size_t i = 0; i < n; i++) {
        const struct sim_cop *o = &s->cops[ix[i]];
        if (o->kind != SIM_INCR || o->final)
            continue;
        bool surely_after = !p || p->ret < o->call;
        bool can_be_after = !p || o->ret > p->call;
        if (o->outcome == SIM_COP_OK && surely_after)
            acked++;
        else if (can_be_after)
            maybe++;
        unknown += o->outcome != SIM_COP_OK;
    }
    if (f->count >= 0 && (uint64_t)f->count >= acked &&
        (uint64_t)f->count <= acked + maybe)
        return;
    char df[160];
    if (!p)
        sim_fail(s,
                 "counter: after healing, key %s holds %" PRId64 " (%lld "
                 "increments): %llu incrs were acknowledged and %llu are "
                 "unknown, so it must hold %llu to %llu increments (%s)",
                 s->ckeys[k], f->value, (long long)f->count,
                 (unsigned long long)acked, (unsigned long long)unknown,
                 (unsigned long long)acked, (unsigned long long)(acked + maybe),
                 describe(f, df, sizeof(df)));
    else
        sim_fail(s,
                 "counter: after healing, key %s holds %" PRId64 ", %lld "
                 "increments after put %llu: %llu acknowledged incrs surely "
                 "came after that put and %llu more (unknown or concurrent "
                 "with it) could have, so it must count %llu to %llu (%s)",
                 s->ckeys[k], f->value, (long long)f->count,
                 (unsigned long long)f->epoch, (unsigned long long)acked,
                 (unsigned long long)maybe, (unsigned long long)acked,
                 (unsigned long long)(acked + maybe),
                 describe(f, df, sizeof(df)));
}

/* Real time, for every acknowledged incr or get B against every other op A
 * of the key: the order rule and the count bounds (see the top). */
static void check_real_time(struct sim *s, int k, const size_t *ix, size_t n)
{
    char da[160], db[160], dp[160];
    for (size_t j = 0; j < n && !s->failed; j++) {
        const struct sim_cop *b = &s->cops[ix[j]];
        if (b->outcome != SIM_COP_OK || b->kind == SIM_PUT)
            continue;
        bool incr = b->kind == SIM_INCR;
        const struct sim_cop *p = b->epoch ? put_of(s, b->epoch) : NULL;
        if (p && p->outcome == SIM_COP_FAILED) {
            sim_fail(s, "counter: key %s: %s counts from %s", s->ckeys[k],
                     describe(b, db, sizeof(db)), describe(p, dp, sizeof(dp)));
            return;
        }
        if (p && p->call > b->ret) {
            sim_fail(s,
                     "counter: key %s: %s counts from %s, which was sent "
                     "after it returned",
                     s->ckeys[k], describe(b, db, sizeof(db)),
                     describe(p, dp, sizeof(dp)));
            return;
        }
        uint64_t lo = incr, hi = incr; /* B itself */
        for (size_t i = 0; i < n; i++) {
            const struct sim_cop *a = &s->cops[ix[i]];
            if (a == b)
                continue;
            bool before = a->outcome == SIM_COP_OK && a->ret < b->call;
            if (a->kind == SIM_INCR) {
                lo += before && (!p || p->ret < a->call);
                hi += a->call < b->ret && (!p || a->ret > p->call);
            }
            if (!before)
                continue;
            if (a->epoch == b->epoch) {
                if (b->count >= a->count + incr)
                    continue;
                sim_fail(s,
                         "counter: key %s: real-time order: %s precedes %s, "
                         "which counts %s increments",
                         s->ckeys[k], describe(a, da, sizeof(da)),
                         describe(b, db, sizeof(db)),
                         incr ? "no more" : "fewer");
                return;
            }
            if (p && p->ret > a->call)
                continue; /* B's put can have come after A */
            sim_fail(s,
                     "counter: key %s: real-time order: %s precedes %s, "
                     "which counts from %s, yet %s",
                     s->ckeys[k], describe(a, da, sizeof(da)),
                     describe(b, db, sizeof(db)), p ? "a put" : "no put",
                     p ? "that put was acknowledged before A was sent"
                       : "A counts from one");
            return;
        }
        if (b->count >= 0 && (uint64_t)b->count >= lo &&
            (uint64_t)b->count <= hi)
            continue;
        sim_fail(s,
                 "counter: key %s: %s counts %lld increments%s, but %s%llu "
                 "incrs %s",
                 s->ckeys[k], describe(b, db, sizeof(db)), (long long)b->count,
                 p ? " after its put" : "",
                 b->count < 0 || (uint64_t)b->count < lo ? "" : "only ",
                 (unsigned long long)(b->count < 0 || (uint64_t)b->count < lo
                                          ? lo
                                          : hi),
                 b->count < 0 || (uint64_t)b->count < lo
                     ? "(itself included) were acknowledged between its put "
                       "(or the start) and its call"
                     : "(itself included) could have been applied between "
                       "its put (or the start) and its return");
        return;
    }
}

/* Versions and values agree (see the top). */
static void check_versions(struct sim *s, int k, const size_t *ix, size_t n,
                           struct sort_key *tmp)
{
    char da[160], db[160], dp[160];
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        const struct sim_cop *o = &s->cops[ix[i]];
        if (o->outcome == SIM_COP_OK && (o->kind != SIM_GET || o->present))
            tmp[m++] = (struct sort_key){o->version, ix[i]};
    }
    qsort(tmp, m, sizeof(*tmp), cmp_sort_key);
    for (size_t i = 0; i < m && !s->failed; i++) {
        const struct sim_cop *b = &s->cops[tmp[i].i];
        const struct sim_cop *p = b->epoch ? put_of(s, b->epoch) : NULL;
        if (p && p->outcome == SIM_COP_OK && b->version < p->version) {
            sim_fail(s, "counter: key %s: %s counts from %s, a later version",
                     s->ckeys[k], describe(b, db, sizeof(db)),
                     describe(p, dp, sizeof(dp)));
            return;
        }
        if (b->kind == SIM_PUT && b->cond) {
            /* A conditional put that succeeded directly follows the
             * version it expected: the last version seen below its own
             * is at most that one (if_absent: there is none). */
            size_t j = i;
            while (j > 0 && s->cops[tmp[j - 1].i].version == b->version)
                j--;
            const struct sim_cop *w = j ? &s->cops[tmp[j - 1].i] : NULL;
            if (b->cond == SIM_CAS && b->version <= b->expect) {
                sim_fail(s,
                         "counter: key %s: %s succeeded with a version "
                         "not above the one it expected (%llu)",
                         s->ckeys[k], describe(b, db, sizeof(db)),
                         (unsigned long long)b->expect);
                return;
            }
            if (w && (b->cond == SIM_INSERT || w->version > b->expect)) {
                sim_fail(s,
                         "counter: key %s: %s succeeded, yet %s saw "
                         "version %llu, %s",
                         s->ckeys[k], describe(b, db, sizeof(db)),
                         describe(w, da, sizeof(da)),
                         (unsigned long long)w->version,
                         b->cond == SIM_INSERT
                             ? "an older one: the key was not absent"
                             : "between the one it expected and its own");
                return;
            }
        }
        if (i == 0)
            continue;
        const struct sim_cop *a = &s->cops[tmp[i - 1].i];
        if (a->version == b->version) {
            if (a->value == b->value)
                continue;
            sim_fail(s,
                     "counter: key %s: version %llu holds two values: %s, "
                     "%s",
                     s->ckeys[k], (unsigned long long)b->version,
                     describe(a, da, sizeof(da)), describe(b, db, sizeof(db)));
            return;
        }
        if (a->epoch == b->epoch) {
            if (b->count > a->count)
                continue;
            sim_fail(s,
                     "counter: key %s: a later version counts no more "
                     "increments: %s, then %s",
                     s->ckeys[k], describe(a, da, sizeof(da)),
                     describe(b, db, sizeof(db)));
            return;
        }
        if (p && (p->outcome != SIM_COP_OK ||
                  (p->version > a->version && p->version <= b->version)))
            continue;
        sim_fail(s,
                 "counter: key %s: %s, then at a later version %s, which "
                 "counts from %s written %s",
                 s->ckeys[k], describe(a, da, sizeof(da)),
                 describe(b, db, sizeof(db)), p ? "a put" : "no put",
                 p ? "outside the two versions" : "(none can come back)");
        return;
    }
}

/* Every member of the key's shard stores what the last final get read. */
static void check_stores(struct sim *s, int k, const size_t *ix, size_t n)
{
    const struct sim_cop *last = NULL;
    for (size_t i = 0; i < n; i++)
        if (s->cops[ix[i]].final && s->cops[ix[i]].kind == SIM_GET &&
            s->cops[ix[i]].outcome == SIM_COP_OK)
            last = &s->cops[ix[i]];
    if (!last)
        return; /* reported by check_healed */
    uint32_t sh = s->ckshard[k];
    for (int i = 0; i < s->p.nnodes && !s->failed; i++) {
        bool member = false;
        for (uint32_t r = 0; r < s->conf->replicas; r++)
            member |= (int)conf_replica(s->conf, sh, r) == i;
        if (!member)
            continue;
        void *v = NULL;
        size_t vlen = 0;
        uint64_t version = 0;
        int64_t x = 0;
        int rc = sim_store_record(&s->nodes[i], sh, s->ckeys[k], s->cklen[k],
                                  &v, &vlen, &version);
        bool ok = rc == KV_OK && last->present &&
                  parse_decimal(v, vlen, &x) == 0 && x == last->value &&
                  version == last->version;
        ok |= rc == KV_ENOTFOUND && !last->present;
        char shown[200];
        if (!ok)
            sim_fail(s,
                     "node %d holds counter %s as %s v=%llu, the final get "
                     "read %s%" PRId64 " v=%llu",
                     i + 1, s->ckeys[k],
                     rc == KV_OK          ? show(shown, sizeof(shown), v, vlen)
                     : rc == KV_ENOTFOUND ? "absent"
                                          : "unreadable",
                     (unsigned long long)version,
                     last->present ? "" : "absent ", last->value,
                     (unsigned long long)last->version);
        free(v);
    }
}

void sim_counter_check_final(struct sim *s)
{
    size_t *ix = calloc(s->ncops ? s->ncops : 1, sizeof(*ix));
    struct sort_key *tmp = calloc(s->ncops ? s->ncops : 1, sizeof(*tmp));
    if (!ix || !tmp) {
        sim_fail(s, "out of memory (counter checks)");
        goto out;
    }
    for (int k = 0; k < s->p.ncounters && !s->failed; k++) {
        size_t n = 0;
        for (size_t i = 0; i < s->ncops; i++) {
            struct sim_cop *o = &s->cops[i];
            if (o->key != k || o->outcome == SIM_COP_DROPPED)
                continue;
            if (o->outcome == SIM_COP_RUNNING) /* none should be left */
                o->outcome =
                    o->kind == SIM_GET ? SIM_COP_DROPPED : SIM_COP_UNKNOWN;
            if (o->outcome != SIM_COP_DROPPED)
                ix[n++] = i;
        }
        check_unique(s, k, ix, n, tmp);
        if (!s->failed)
            check_healed(s, k, ix, n);
        if (!s->failed)
            check_real_time(s, k, ix, n);
        if (!s->failed)
            check_versions(s, k, ix, n, tmp);
        if (!s->failed)
            check_stores(s, k, ix, n);
    }
out:
    free(ix);
    free(tmp);
}

void sim_counter_free(struct sim *s)
{
    free(s->cops);
    free(s->cput);
    s->cops = NULL;
    s->cput = NULL;
    s->ncops = s->capcops = s->ncput = s->capcput = 0;
}
