/* The reader: bytes in, answers out, no I/O. Lines are found in place in one growing buffer;
 * the consumed front is dropped only when it is most of the buffer, so a pipelined stream of
 * answers costs one memmove now and then rather than one per answer. */
#include "libparex/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pxl_reader_init(parex_reader_t *r, size_t max_line)
{
    memset(r, 0, sizeof *r);
    r->max_line = max_line ? max_line : PXL_DEFAULT_MAX_LINE;
}

void pxl_reader_clear(parex_reader_t *r)
{
    px_buf_free(&r->buf);
    r->start = r->scanned = 0;
}

parex_reader_t *parex_reader_create(size_t max_line_bytes)
{
    parex_reader_t *r = malloc(sizeof *r);

    if (r)
        pxl_reader_init(r, max_line_bytes);
    return r;
}

void parex_reader_free(parex_reader_t *r)
{
    if (!r)
        return;
    pxl_reader_clear(r);
    free(r);
}

const char *parex_reader_errstr(const parex_reader_t *r)
{
    return r->err;
}

size_t parex_reader_buffered(const parex_reader_t *r)
{
    return r->buf.len - r->start;
}

int parex_reader_feed(parex_reader_t *r, const char *buf, size_t n)
{
    if (n == 0)
        return 0;
    if (r->start > 0 && r->start >= r->buf.len / 2) {
        memmove(r->buf.data, r->buf.data + r->start, r->buf.len - r->start);
        r->buf.len -= r->start;
        r->start = 0;
    }
    return px_buf_append(&r->buf, buf, n) ? -1 : 0;
}

int parex_reader_get_reply(parex_reader_t *r, parex_reply_t **out)
{
    *out = NULL;
    for (;;) {
        char *line = r->buf.data + r->start;
        size_t avail = r->buf.len - r->start;
        char *nl = avail > r->scanned ? memchr(line + r->scanned, '\n', avail - r->scanned) : NULL;
        size_t len;

        if (!nl) {
            r->scanned = avail;
            /* +1: a '\r' before the newline to come does not count against the limit. */
            if (!r->skipping && avail > r->max_line + 1) {
                snprintf(r->err, sizeof r->err,
                         "answer line over max_line_bytes (%zu); it is skipped up to its newline",
                         r->max_line);
                r->skipping = 1;
                r->start = r->buf.len = r->scanned = 0;
                return -1;
            }
            if (r->skipping)
                r->start = r->buf.len = r->scanned = 0;
            return 0;
        }
        len = (size_t)(nl - line);
        r->start += len + 1;
        r->scanned = 0;
        if (r->skipping) {
            r->skipping = 0;
            continue;
        }
        if (len > 0 && line[len - 1] == '\r')
            len--;
        if (len > r->max_line) {
            snprintf(r->err, sizeof r->err, "answer line of %zu bytes is over max_line_bytes (%zu)",
                     len, r->max_line);
            return -1;
        }
        if (len == 0)
            continue;
        if (!(*out = pxl_reply_parse(line, len, r->err, sizeof r->err)))
            return -1;
        return 1;
    }
}
