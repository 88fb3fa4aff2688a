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

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

void px_bhist_print_json(FILE *f, const px_bhist_t *h)
{
    fprintf(f,
            "\"p50_ms\":%.4f,\"p90_ms\":%.4f,\"p99_ms\":%.4f,\"p999_ms\":%.4f,\"max_ms\":%.4f,"
            "\"mean_ms\":%.4f",
            ms(px_bhist_quantile(h, 0.50)), ms(px_bhist_quantile(h, 0.90)),
            ms(px_bhist_quantile(h, 0.99)), ms(px_bhist_quantile(h, 0.999)), ms(h->max),
            px_bhist_mean(h) / 1e6);
}

void px_bhist_print_text(FILE *f, const px_bhist_t *h)
{
    fprintf(f, "p50_ms            %.3f\n", ms(px_bhist_quantile(h, 0.50)));
    fprintf(f, "p90_ms            %.3f\n", ms(px_bhist_quantile(h, 0.90)));
    fprintf(f, "p99_ms            %.3f\n", ms(px_bhist_quantile(h, 0.99)));
    fprintf(f, "p99.9_ms          %.3f\n", ms(px_bhist_quantile(h, 0.999)));
    fprintf(f, "max_ms            %.3f\n", ms(h->max));
}
