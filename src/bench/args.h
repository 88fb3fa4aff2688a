/* Command-line helpers shared by parex-bench and parex-jsloop: number parsing that rejects what
 * strtoull/strtod would silently accept (signs, trailing text, overflow), the options both have
 * (--help, --version) and the one-line usage error both print. */
#ifndef PX_BENCH_ARGS_H
#define PX_BENCH_ARGS_H

#include <stdint.h>
#include <stdio.h>

/* An unsigned decimal integer in lo..hi into *out; -1 (out untouched) when s is anything else. */
int px_arg_u64(const char *s, uint64_t lo, uint64_t hi, uint64_t *out);
/* A finite number >= 0 into *out; -1 otherwise. */
int px_arg_nonneg(const char *s, double *out);
/* The options every bench program shares, for its getopt switch's default case: --help ('h',
 * usage on stdout, 0), --version ('V', 0), anything else (usage on stderr, EX_USAGE). Returns
 * the exit status for main to return. */
int px_arg_common(int opt, const char *prog, void (*usage)(FILE *));
/* Prints "PROG: <message> (see --help)" on stderr; returns EX_USAGE for main to return. */
int px_arg_usage_error(const char *prog, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
