/* Routing: which worker owns a partition key. Stable across restarts, machines and versions:
 * worker = jump_consistent_hash(XXH3_64bits(key, seed 0), workers). */
#ifndef PX_ROUTE_H
#define PX_ROUTE_H

#include <stddef.h>
#include <stdint.h>

uint64_t px_route_hash(const void *key, size_t len);
/* Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014). */
uint32_t px_jump_hash(uint64_t h, uint32_t buckets);
uint32_t px_route(const void *key, size_t len, uint32_t workers);

#endif
