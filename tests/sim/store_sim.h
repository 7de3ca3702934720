/*
 * store_sim - an in-memory implementation of store.h for the simulator.
 *
 * It behaves like LevelDB as kv uses it: atomic batches, ordered iterators
 * over a snapshot, and durability only for what a synced write covered (a
 * synced write makes every earlier write durable too, as LevelDB's log
 * does). store_sim_crash() throws away every write not yet durable, as a
 * machine crash would. Directories name independent stores that survive
 * store_close(), so a simulated node can "restart" on its old data.
 */
#ifndef KV_STORE_SIM_H
#define KV_STORE_SIM_H

#include <stddef.h>
#include <stdint.h>

/* Loses every write of store DIR that no synced write has covered. */
void store_sim_crash(const char *dir);

/* Loses every record of store DIR, durable or not, as a replaced disk
 * would (the store must be closed). */
void store_sim_wipe(const char *dir);

/* Makes the next N writes of store DIR fail with KV_EIO (0: none). */
void store_sim_fail_writes(const char *dir, int n);

/* Frees every simulated store (end of a run). */
void store_sim_reset(void);

/* A checksum of the live records of DIR whose keys start with PREFIX. */
uint64_t store_sim_digest(const char *dir, const void *prefix, size_t plen);

/* How many live records of DIR have keys that start with PREFIX (cheap: no
 * snapshot is taken). */
size_t store_sim_count(const char *dir, const void *prefix, size_t plen);

#endif
