/*
 * pending - what a leader has proposed on a shard but not applied yet.
 *
 * A procedure call is evaluated on the leader against the shard as it will
 * be once everything proposed before the call is applied (so calls on a
 * hot key pipeline instead of each waiting a Raft round for the one before
 * it). This map predicts that state per key: the newest proposed entry
 * that writes the key, with the value it will write when that is known
 * (an unconditional put or delete, a procedure's effects), or "unknown"
 * (a conditional write, a transaction, a prepare: the call must wait for
 * it to apply). A prediction can still be wrong (a put refused because a
 * transaction locked its key): every call's effects carry the versions it
 * read as conditions, so a wrong prediction costs a re-evaluation, never a
 * wrong write. Pure data structure: no I/O, no clock.
 */
#ifndef KV_PENDING_H
#define KV_PENDING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum pending_kind {
    PENDING_PUT = 1, /* the key will hold a value at the entry's index */
    PENDING_DEL = 2, /* the key will be absent */
    PENDING_UNKNOWN = 3,
};

struct pending;

struct pending *pending_new(void);
void pending_free(struct pending *p);

/* Notes that the entry at INDEX (increasing from call to call until
 * pending_clear) writes KEY: KIND, and for PENDING_PUT the value (copied).
 * KV_ENOMEM leaves the map as it was; the caller must then treat the
 * shard as unpredictable (pending_clear and wait for the apply). */
int pending_note(struct pending *p, uint64_t index, const void *key,
                 size_t klen, enum pending_kind kind, const void *val,
                 size_t vlen);

/* The newest prediction for KEY: true with *KIND, *INDEX and, for a put,
 * *VAL / *VLEN (valid until the map changes); false when no unapplied
 * entry writes KEY. */
bool pending_lookup(const struct pending *p, const void *key, size_t klen,
                    enum pending_kind *kind, uint64_t *index, const void **val,
                    size_t *vlen);

/* Forgets every entry at or below APPLIED. */
void pending_applied(struct pending *p, uint64_t applied);

/* Forgets everything (leadership lost). */
void pending_clear(struct pending *p);

/* Keys with a prediction. */
size_t pending_count(const struct pending *p);

#endif
