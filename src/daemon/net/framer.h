/* Splits a byte stream into '\n'-terminated lines, bounded by max_line_bytes. Complete lines are
 * handed out in place from the caller's buffer; only a line split across reads is copied. */
#ifndef PX_FRAMER_H
#define PX_FRAMER_H

#include "common/buf.h"

#include <stddef.h>

typedef struct px_framer {
    px_buf_t partial; /* bytes of a line not yet terminated */
    size_t max;       /* longest line accepted, '\n' and a trailing '\r' not counted */
    int skipping;     /* inside an over-long line: drop bytes up to its '\n' */
} px_framer_t;

/* line is not NUL-terminated; a trailing '\r' is already stripped. too_long is set (and line is
 * NULL) once for each over-long line, as soon as it is known to be too long. */
typedef void (*px_line_cb)(void *arg, const char *line, size_t len, int too_long);

void px_framer_init(px_framer_t *f, size_t max);
/* Returns 0, or -ENOMEM when a partial line could not be kept. */
int px_framer_feed(px_framer_t *f, const char *data, size_t len, px_line_cb cb, void *arg);
/* End of stream: an unterminated last line is delivered as if it had its '\n'. */
void px_framer_finish(px_framer_t *f, px_line_cb cb, void *arg);
/* Drops the partial line and skips the rest of it up to its newline. */
void px_framer_drop(px_framer_t *f);
void px_framer_free(px_framer_t *f);

#endif
