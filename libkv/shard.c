/*
 * shard - key to shard mapping (see shard.h). The hash key is fixed for all
 * clusters: changing it would move every key, so it never changes.
 */
#include "shard.h"

#include <sodium.h>
#include <string.h>

#include "kv.h"

static const unsigned char shard_hash_key[crypto_shorthash_KEYBYTES] =
    "kv-shard-map-v1";

size_t shard_hash_part(const void *key, size_t klen, const void **part)
{
    const unsigned char *k = key;
    const unsigned char *open = klen ? memchr(k, '{', klen) : NULL;
    if (open) {
        size_t rest = klen - (size_t)(open - k) - 1;
        const unsigned char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1) {
            *part = open + 1;
            return (size_t)(close - open - 1);
        }
    }
    *part = key;
    return klen;
}

uint32_t shard_of(const void *key, size_t klen, uint32_t nshards)
{
    const void *part;
    size_t len = shard_hash_part(key, klen, &part);
    unsigned char out[crypto_shorthash_BYTES];
    crypto_shorthash(out, part, len, shard_hash_key);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = (h << 8) | out[i];
    return nshards ? (uint32_t)(h % nshards) : 0;
}

uint32_t kv_shard_of(const void *key, size_t klen, uint32_t nshards)
{
    return shard_of(key, klen, nshards);
}
