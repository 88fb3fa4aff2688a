/* parex-bench's key choice: a seeded PRNG (splitmix64) and keys drawn uniformly or from a Zipf
 * distribution over K keys. Zipf draws search a precomputed CDF table (O(log K), no pow() per
 * draw); key 0 is the hottest. */
#ifndef PX_BENCH_KEYS_H
#define PX_BENCH_KEYS_H

#include <stdint.h>

typedef struct px_rng {
    uint64_t s;
} px_rng_t;

static inline uint64_t px_rng_next(px_rng_t *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static inline double px_rng_unit(px_rng_t *r)
{
    return (double)(px_rng_next(r) >> 11) * 0x1.0p-53;
}

typedef struct px_keydist {
    uint32_t n;
    double *cdf; /* Zipf: P(key <= i); NULL when uniform */
} px_keydist_t;

/* n keys; s > 0 is the Zipf exponent, s == 0 uniform. 0 or -ENOMEM/-EINVAL. */
int px_keydist_init(px_keydist_t *d, uint32_t n, double s);
uint32_t px_keydist_draw(const px_keydist_t *d, px_rng_t *r);
/* Probability of key i (for reports and tests). */
double px_keydist_prob(const px_keydist_t *d, uint32_t i);
void px_keydist_free(px_keydist_t *d);

#endif
