/* Bucket layout (HdrHistogram's, as in hist.c): values below 2^SUB_BITS have a bucket each;
 * above, the octave [2^m, 2^(m+1)) is split into 2^(SUB_BITS-1) buckets of width 2^(m-SUB_BITS+1),
 * so width / lower bound = 2^-(SUB_BITS-1) = 1/128. */
#include "bench/hist.h"

#include "common/hist.h"

#include <string.h>

uint32_t px_bhist_index(uint64_t v)
{
    return px_loglin_index(v, PX_BHIST_SUB_BITS, PX_BHIST_MAX_BITS);
}

uint64_t px_bhist_upper(uint32_t idx)
{
    return px_loglin_upper(idx, PX_BHIST_SUB_BITS);
}

void px_bhist_init(px_bhist_t *h)
{
    memset(h, 0, sizeof *h);
    h->min = UINT64_MAX;
}

void px_bhist_record(px_bhist_t *h, uint64_t v)
{
    h->b[px_bhist_index(v)]++;
    h->count++;
    h->sum += (double)v;
    if (v > h->max)
        h->max = v;
    if (v < h->min)
        h->min = v;
}

uint64_t px_bhist_quantile(const px_bhist_t *h, double q)
{
    uint64_t rank, seen = 0;

    if (h->count == 0)
        return 0;
    rank = (uint64_t)(q * (double)h->count + 0.5);
    if (rank < 1)
        rank = 1;
    for (uint32_t i = 0; i < PX_BHIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t up = px_bhist_upper(i);
            /* The last bucket also holds everything beyond the range: only max bounds it. */
            return up < h->max && i < PX_BHIST_BUCKETS - 1 ? up : h->max;
        }
    }
    return h->max;
}

double px_bhist_mean(const px_bhist_t *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}
