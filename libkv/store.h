/*
 * store - the only LevelDB adapter.
 *
 * Everything kv persists goes through here: point reads, atomic write
 * batches (synced or not) and ordered iterators. No other file includes
 * <leveldb/c.h>, so tests can swap the store for a simulated one. LevelDB
 * error strings are logged here and turned into KV_EIO / KV_ECORRUPT.
 *
 * Damage: every read verifies LevelDB's block checksums and the store is
 * opened with paranoid checks, so a damaged table or log is reported as
 * KV_ECORRUPT, never served as data. An iterator stops at the first damaged
 * block it meets (LevelDB itself would skip it and go on). The first
 * corruption a store met is remembered (store_damage()), so its user can
 * stop serving from it however the error reached it.
 */
#ifndef KV_STORE_H
#define KV_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;
struct store_batch;
struct store_iter;

/* Opens (creating if missing) the LevelDB directory DIR, and its parent
 * folders. On KV_OK *out is a store to store_close(). Returns KV_EIO with the
 * detail in ERR when DIR cannot be opened (e.g. locked by another process),
 * KV_ECORRUPT when LevelDB reports corruption. */
int store_open(const char *dir, struct store **out, char *err, size_t errlen);

/* Creates DIR and its missing parents (mode 0755). Returns 0 or -1 (errno). */
int store_mkdirs(const char *dir);

/* Closes the store. Every synced write is on disk. NULL is a no-op. */
void store_close(struct store *s);

/* What LevelDB said of the first corruption a read, write or iteration of
 * S met (a string owned by S, valid until store_close), or NULL while S met
 * none. Once it is set, no later read of S can be trusted to be complete. */
const char *store_damage(const struct store *s);

/* Reads KEY. On KV_OK *val is a malloc()ed copy (free() it; NULL when *vlen
 * is 0). Returns KV_ENOTFOUND, KV_EIO or KV_ECORRUPT. */
int store_get(struct store *s, const void *key, size_t klen, void **val,
              size_t *vlen);

/* A write batch: applied atomically by store_write(). */
struct store_batch *store_batch_new(void);
void store_batch_put(struct store_batch *b, const void *key, size_t klen,
                     const void *val, size_t vlen);
void store_batch_del(struct store_batch *b, const void *key, size_t klen);
void store_batch_clear(struct store_batch *b);
void store_batch_free(struct store_batch *b);

/* Applies B atomically; with SYNC, returns only once it is on disk. */
int store_write(struct store *s, struct store_batch *b, bool sync);

/* An iterator over the store in key order (a consistent snapshot). Once
 * it meets an error it is no longer valid and store_iter_status says why:
 * what it yielded before is intact and in order, with no gap. */
struct store_iter *store_iter_new(struct store *s);
void store_iter_seek(struct store_iter *it, const void *key, size_t klen);
bool store_iter_valid(const struct store_iter *it);
void store_iter_next(struct store_iter *it);
const void *store_iter_key(const struct store_iter *it, size_t *klen);
const void *store_iter_value(const struct store_iter *it, size_t *vlen);
/* KV_OK, or the error that stopped the iteration (KV_EIO / KV_ECORRUPT). */
int store_iter_status(const struct store_iter *it);
void store_iter_free(struct store_iter *it);

#endif
