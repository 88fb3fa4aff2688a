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

/* Cluster mode: the worker of a key inside an instance. The key's partition is
 * px_route(key, partitions); the same hash for the worker would put every key of partition p
 * below the worker count on worker p (jump hashing keeps a key in its bucket when buckets are
 * added), so an instance holding partition 5 would run all of it on worker 5. The worker takes
 * XXH3 with this seed instead, which spreads every partition over all workers. */
#define PX_ROUTE_CLUSTER_SEED 0x9E3779B97F4A7C15ull
uint32_t px_route_seeded(const void *key, size_t len, uint32_t workers, uint64_t seed);

#endif
