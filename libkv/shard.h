/*
 * shard - which shard a key belongs to.
 *
 * shard(key) = siphash-2-4(key, or the non-empty part inside its first
 * "{...}") mod nshards, with a fixed cluster-wide hash key, so every node and
 * client computes the same map with no coordination. kv_shard_of() in kv.h
 * is the public face of shard_of().
 */
#ifndef KV_SHARD_H
#define KV_SHARD_H

#include <stddef.h>
#include <stdint.h>

/* The bytes of KEY that are hashed: the hash tag if KEY has a non-empty
 * "{...}", else the whole key. Sets *part and returns its length. */
size_t shard_hash_part(const void *key, size_t klen, const void **part);

/* The shard of KEY among NSHARDS (NSHARDS >= 1). */
uint32_t shard_of(const void *key, size_t klen, uint32_t nshards);

#endif
