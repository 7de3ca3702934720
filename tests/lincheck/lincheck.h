/*
 * lincheck.h - a linearizability checker for histories of kv operations.
 *
 * A test (the simulator, a chaos run) records every operation it made on kv
 * with the time it was called and the time it returned, and what it
 * returned. lin_check() decides whether some total order of those
 * operations, consistent with real time, explains every result under the
 * model below. It is a test tool: it never touches kv itself, and it never
 * aborts on bad input (lin_add and lin_read reject it with a reason).
 *
 * The model: each key is an independent versioned register, as kv offers
 * it. Its state is (present, value, version); values are opaque uint64
 * (they need not be unique, but a workload that writes each value once gets
 * sharper checks and faster searches); versions are uint64 >= 1 assigned by
 * the system, and every write to a key creates a version greater than every
 * earlier version of that key, deleted ones included (nothing is assumed
 * across keys). A delete reveals no version. A key starts absent.
 *
 *   READ              -> OK (value, version) | ABSENT
 *   WRITE(v)          -> OK (new version)                      (kv_put)
 *   CAS(e, v)         -> OK (new version) | FAILED: the key is absent or its
 *                        version is not e              (kv_put, if_version=e)
 *   INSERT(v)         -> OK (new version) | FAILED: the key exists
 *                                                      (kv_put, if_absent)
 *   DELETE            -> OK | ABSENT                   (kv_del)
 *   DELETE(e), e != 0 -> OK | FAILED: version is not e | ABSENT or FAILED
 *                        when the key does not exist   (kv_del, if_version=e)
 *
 * Any operation may also end UNKNOWN (timed out, the client crashed): its
 * return time is LIN_PENDING, and it may take effect at any single point
 * after its call, or never. The version a pending write creates is unknown
 * until an op depends on it: a read that returns its value (or a CAS or
 * conditional delete that succeeds on it) fixes it, and the model accepts
 * any version greater than the one before (leaving room for the versions of
 * other pending writes ordered before it); a condition that failed on it
 * excludes that version (up to 4 such exclusions per unseen version are
 * remembered; beyond that the model errs towards "linearizable"). Pending
 * reads carry no information and are ignored.
 *
 * Times are uint64 in any unit (ns suggested). An operation A precedes B
 * when A returned strictly before B was called; equal times overlap.
 *
 * Conventions: functions that can fail return LIN_OK (0) or a negative
 * LIN_E* code; lin_check returns a verdict (LIN_OK, LIN_VIOLATION,
 * LIN_UNKNOWN) or a negative code. Every structure this module allocates is
 * freed by the function named next to it.
 */
#ifndef LINCHECK_H
#define LINCHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Return codes and verdicts. */
#define LIN_OK 0        /* success; as a verdict: linearizable */
#define LIN_VIOLATION 1 /* verdict: some key has no valid linearization */
#define LIN_UNKNOWN 2   /* verdict: a budget ran out before a decision */
#define LIN_EINVAL (-1) /* an invalid operation or a malformed history file */
#define LIN_ENOMEM (-2) /* out of memory */
#define LIN_EIO (-3)    /* reading or writing a FILE failed */

/* The return time of an operation whose outcome is unknown. */
#define LIN_PENDING UINT64_MAX

/* Operation kinds (lin_op.kind). Zero is invalid on purpose. */
enum lin_kind {
    LIN_READ = 1,
    LIN_WRITE,
    LIN_CAS,
    LIN_INSERT,
    LIN_DELETE,
};

/* Outcomes (lin_op.outcome). Zero is invalid on purpose. */
enum lin_outcome {
    LIN_OUT_OK = 1,  /* done; out_* fields hold what it returned */
    LIN_OUT_ABSENT,  /* READ found nothing; DELETE found nothing */
    LIN_OUT_FAILED,  /* CAS, INSERT or conditional DELETE: condition false */
    LIN_OUT_UNKNOWN, /* no answer: ret must be LIN_PENDING */
};

/* One operation on one key. Fields a kind does not use are ignored (and
 * stored as 0).
 *   READ:   outcome OK sets out_value and out_version (>= 1).
 *   WRITE:  value; outcome OK sets out_version (the version it created).
 *   CAS:    expect_version (>= 1), value; OK sets out_version.
 *   INSERT: value; OK sets out_version.
 *   DELETE: expect_version (0: unconditional).
 * Versions are >= 1 and < UINT64_MAX; call <= ret; call < LIN_PENDING. */
struct lin_op {
    uint64_t key;
    int kind;                /* enum lin_kind */
    int client;              /* who made it (>= 0); for reports only */
    uint64_t call, ret;      /* ret = LIN_PENDING iff outcome is UNKNOWN */
    uint64_t value;          /* input: the value to write */
    uint64_t expect_version; /* input: CAS / conditional DELETE */
    int outcome;             /* enum lin_outcome */
    uint64_t out_value;      /* output of READ */
    uint64_t out_version;    /* output of READ, WRITE, CAS, INSERT */
};

/* The state of one key's register, as the model sees it. */
struct lin_state {
    int present;           /* the key exists */
    int version_known;     /* 0: created by a pending write, version unfixed */
    uint64_t value;        /* when present */
    uint64_t version;      /* when present: the version, or when not
                              version_known the least it can be */
    uint64_t next_version; /* the least version the next write can create */
};

/* How much lin_check may spend. A field of 0 takes its default; a NULL
 * budget takes every default. */
struct lin_budget {
    uint64_t max_states; /* configurations one search may explore */
    uint64_t max_ms;     /* wall-clock time of the whole lin_check call */
    uint64_t max_bytes;  /* memory of one search's cache */
};
#define LIN_DEFAULT_MAX_STATES 5000000u
#define LIN_DEFAULT_MAX_MS 60000u
#define LIN_DEFAULT_MAX_BYTES (512u * 1024u * 1024u)

/* Why a search gave up (lin_report.unknown_reason). */
enum lin_limit {
    LIN_LIMIT_NONE = 0,
    LIN_LIMIT_STATES,
    LIN_LIMIT_TIME,
    LIN_LIMIT_BYTES,
};

/* Before searching, lin_check looks for two operations that contradict
 * each other on versions alone (a key's versions only grow, and a version
 * names one record). Such a pair proves a violation in O(n log n), however
 * long the history; the search decides everything else. */
enum lin_proof {
    LIN_PROOF_NONE = 0,
    LIN_PROOF_WENT_BACK,  /* a made or saw version A (or deleted it) and
                             returned before b was called; b then saw an
                             older version (or the deleted one) */
    LIN_PROOF_NOT_NEW,    /* a made, saw or deleted version A and returned
                             before b was called; b then created a version
                             <= A */
    LIN_PROOF_TWO_VALUES, /* a and b saw one version with two values */
    LIN_PROOF_TWICE,      /* a and b both created the same version */
};

/* An operation of a failing prefix, as reported. */
enum lin_role {
    LIN_ROLE_DONE = 1, /* returned before the failure time */
    LIN_ROLE_RUNNING,  /* called, not yet returned at the failure time: its
                          outcome counted as unknown */
    LIN_ROLE_FAILING,  /* returned at the failure time: what cannot be
                          explained */
};
struct lin_report_op {
    struct lin_op op;
    size_t id; /* its index in the history (order of lin_add) */
    int role;  /* enum lin_role */
};

/* One step of a linearization: an operation and the state after it. */
struct lin_step {
    size_t id;   /* index in the history */
    int unknown; /* its outcome is (counted as) unknown, and it
                    takes effect here */
    struct lin_state after;
};

/* What lin_check found. Caller-owned; lin_check fills it (overwriting it
 * without freeing: release a used report first); lin_report_release frees
 * what it points to. */
struct lin_report {
    int result;            /* the verdict, as lin_check returned it */
    size_t ops;            /* operations checked (pending reads excluded) */
    size_t keys;           /* distinct keys */
    size_t keys_violating; /* keys found not linearizable */
    size_t keys_unknown;   /* keys not decided (budget) */
    uint64_t states;       /* configurations explored, all searches */
    uint64_t elapsed_ms;

    /* LIN_UNKNOWN: the first key left undecided, and why. */
    uint64_t unknown_key;
    int unknown_reason; /* enum lin_limit */

    /* LIN_VIOLATION: the first violating key (smallest key number) and the
     * shortest prefix of its history found not linearizable: the ops called
     * by fail_time, in call order. Running ones count as unknown. */
    uint64_t key;
    uint64_t fail_time;
    struct lin_report_op *prefix; /* nprefix entries, owned */
    size_t nprefix;
    /* The shorter prefix: the ops called by before_time (the latest return
     * before fail_time), before_done of them returned. When before_known it
     * is linearizable and order (norder steps, owned) is one witness, ending
     * in the state `before`; otherwise the budget did not allow to decide. */
    int before_known;
    uint64_t before_time;
    size_t before_done;
    struct lin_step *order;
    size_t norder;
    struct lin_state before;
    /* When the failing prefix was refuted by a quick proof (else
     * LIN_PROOF_NONE): which, and the two operations (history indices). */
    int proof;
    size_t proof_a, proof_b;
};

/* --- histories ---------------------------------------------------------- */

struct lin_history;

/* Returns an empty history (free it with lin_free), or NULL when out of
 * memory. */
struct lin_history *lin_new(void);

/* Frees H and every operation in it. NULL is a no-op. */
void lin_free(struct lin_history *h);

/* Returns NULL when OP is a valid operation, else a static sentence saying
 * what is wrong with it. */
const char *lin_op_problem(const struct lin_op *op);

/* Appends a copy of OP to H (fields its kind does not use are stored as 0).
 * Returns LIN_OK, LIN_EINVAL when lin_op_problem(op) is not NULL, or
 * LIN_ENOMEM; on error H is unchanged. */
int lin_add(struct lin_history *h, const struct lin_op *op);

/* Returns the number of operations in H. */
size_t lin_count(const struct lin_history *h);

/* Returns the I-th operation added to H (owned by H, valid until the next
 * lin_add or lin_read on H), or NULL when I >= lin_count(h). */
const struct lin_op *lin_get(const struct lin_history *h, size_t i);

/* --- checking ----------------------------------------------------------- */

/* Checks H key by key. Returns LIN_OK when every key is linearizable,
 * LIN_VIOLATION when some key is not (even if others were not decided),
 * LIN_UNKNOWN when none is found violating but some key was not decided
 * within BUDGET (NULL: defaults), or LIN_ENOMEM. When R is not NULL it is
 * filled (also on LIN_ENOMEM, with what was known); release it with
 * lin_report_release. H is not modified. */
int lin_check(const struct lin_history *h, const struct lin_budget *budget,
              struct lin_report *r);

/* lin_check with FLAGS: LIN_SEARCH_ONLY skips the quick proofs (enum
 * lin_proof) and decides by search alone, to test the search. */
#define LIN_SEARCH_ONLY 1
int lin_check_with(const struct lin_history *h, const struct lin_budget *budget,
                   int flags, struct lin_report *r);

/* Frees what R points to and zeroes it. A zeroed report is a no-op. */
void lin_report_release(struct lin_report *r);

/* Writes R as text to F: first "linearizable: yes|no|unknown", then what
 * was checked and, for a violation, the failing prefix as history lines
 * (which lin_read accepts, so a report can be replayed) and one order of
 * the shorter prefix that is linearizable. Returns LIN_OK or LIN_EIO. */
int lin_report_print(const struct lin_report *r, FILE *f);

/* --- history files ----------------------------------------------------------
 *
 * A text file, one operation per line; '#' starts a comment, blank lines are
 * ignored. A line is the kind then key=value fields in any order, numbers
 * decimal:
 *   read   key=K client=C call=T ret=T result=ok value=V version=N
 *   read   key=K client=C call=T ret=T result=absent
 *   write  key=K client=C call=T ret=T value=V result=ok version=N
 *   cas    key=K client=C call=T ret=T expect=N value=V result=ok version=N
 *   insert key=K client=C call=T ret=T value=V result=failed
 *   delete key=K client=C call=T ret=T [expect=N] result=ok|absent|failed
 * For any kind, "ret=pending result=unknown" records an unknown outcome.
 * client= is optional (0). For a read, value/version are what it returned;
 * for the others, value is the value written and version the one created.
 */

/* Writes OP to F as one line. Returns LIN_OK, LIN_EINVAL (OP invalid) or
 * LIN_EIO. */
int lin_write_op(FILE *f, const struct lin_op *op);

/* Writes every operation of H to F, in order. Returns LIN_OK or LIN_EIO. */
int lin_write(FILE *f, const struct lin_history *h);

/* Reads a history file from F and appends its operations to H. Returns
 * LIN_OK; LIN_EINVAL with "line N: problem" in ERR (ERRLEN bytes, may be
 * NULL/0) for a malformed line; LIN_EIO; or LIN_ENOMEM. On error H is left
 * as it was. */
int lin_read(FILE *f, struct lin_history *h, char *err, size_t errlen);

/* --- fault injection (tests only) -----------------------------------------
 *
 * Makes the allocation after the next N ones made by this module fail (once),
 * so a test can walk every out-of-memory path; a negative N turns it off.
 * Process-wide: do not use while another thread calls this module. */
void lin_fail_alloc_after(long n);

#endif /* LINCHECK_H */
