/* XXH3_64bits is frozen since xxHash 0.8.0, so a key's worker never changes between builds;
 * jump hashing moves only ~1/N of the keys when the worker count changes. */
#include "common/route.h"

#include <xxhash.h>

uint64_t px_route_hash(const void *key, size_t len)
{
    return XXH3_64bits(key, len);
}

uint32_t px_jump_hash(uint64_t h, uint32_t buckets)
{
    int64_t b = -1, j = 0;

    while (j < (int64_t)buckets) {
        b = j;
        h = h * 2862933555777941757ull + 1;
        j = (int64_t)((double)(b + 1) * ((double)(1ll << 31) / (double)((h >> 33) + 1)));
    }
    return (uint32_t)b;
}

uint32_t px_route(const void *key, size_t len, uint32_t workers)
{
    return px_jump_hash(px_route_hash(key, len), workers);
}

uint32_t px_route_seeded(const void *key, size_t len, uint32_t workers, uint64_t seed)
{
    return px_jump_hash(seed ? XXH3_64bits_withSeed(key, len, seed) : px_route_hash(key, len),
                        workers);
}
