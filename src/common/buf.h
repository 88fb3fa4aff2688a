/* A growable byte buffer: response lines and per-connection output are built in these. */
#ifndef PX_BUF_H
#define PX_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct px_buf {
    char *data;
    size_t len, cap;
} px_buf_t;

int px_buf_reserve(px_buf_t *b, size_t extra); /* 0 or -ENOMEM */
int px_buf_append(px_buf_t *b, const void *p, size_t n);
int px_buf_puts(px_buf_t *b, const char *s);
int px_buf_printf(px_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends n in decimal; appends v with exactly three decimals (v >= 0), without printf: these
 * two run for every response line. */
int px_buf_uint(px_buf_t *b, uint64_t n);
int px_buf_fixed3(px_buf_t *b, double v);
/* Appends s as a JSON string literal, quotes included. */
int px_buf_json_string(px_buf_t *b, const char *s, size_t n);
void px_buf_free(px_buf_t *b);

#endif
