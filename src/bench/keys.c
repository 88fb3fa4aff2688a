/* Key distributions for parex-bench. */
#include "bench/keys.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

int px_keydist_init(px_keydist_t *d, uint32_t n, double s)
{
    double sum = 0;

    d->n = n;
    d->cdf = NULL;
    if (n == 0 || s < 0)
        return -EINVAL;
    if (s == 0)
        return 0;
    if (!(d->cdf = malloc(sizeof *d->cdf * n)))
        return -ENOMEM;
    for (uint32_t i = 0; i < n; i++) {
        sum += pow((double)i + 1, -s);
        d->cdf[i] = sum;
    }
    for (uint32_t i = 0; i < n; i++)
        d->cdf[i] /= sum;
    d->cdf[n - 1] = 1.0; /* no draw may fall past the last key through rounding */
    return 0;
}

uint32_t px_keydist_draw(const px_keydist_t *d, px_rng_t *r)
{
    uint32_t lo = 0, hi;
    double u;

    if (!d->cdf)
        return (uint32_t)(((px_rng_next(r) >> 32) * d->n) >> 32);
    /* The smallest i with cdf[i] > u. */
    u = px_rng_unit(r);
    hi = d->n - 1;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (d->cdf[mid] > u)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

double px_keydist_prob(const px_keydist_t *d, uint32_t i)
{
    if (i >= d->n)
        return 0;
    if (!d->cdf)
        return 1.0 / d->n;
    return i ? d->cdf[i] - d->cdf[i - 1] : d->cdf[0];
}

void px_keydist_free(px_keydist_t *d)
{
    free(d->cdf);
    d->cdf = NULL;
}
