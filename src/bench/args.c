/* Command-line helpers shared by the bench programs (see args.h). */
#include "bench/args.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sysexits.h>

int px_arg_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int px_arg_nonneg(const char *s, double *out)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < 0)
        return -1;
    *out = v;
    return 0;
}

int px_arg_common(int opt, const char *prog, void (*usage)(FILE *))
{
    switch (opt) {
    case 'h':
        usage(stdout);
        return 0;
    case 'V':
        printf("%s %s\n", prog, PX_VERSION);
        return 0;
    default:
        usage(stderr);
        return EX_USAGE;
    }
}

int px_arg_usage_error(const char *prog, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (see --help)\n", stderr);
    return EX_USAGE;
}
