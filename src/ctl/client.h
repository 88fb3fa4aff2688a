/* Blocking client helpers for parexctl: connect to HOST:PORT, write all, read lines. */
#ifndef PX_CLIENT_H
#define PX_CLIENT_H

#include "common/buf.h"

#include <stddef.h>

/* Returns a connected socket, or -1 with err set. */
int px_client_connect(const char *addr, char *err, size_t errlen);
int px_client_write_all(int fd, const char *p, size_t n);

/* Line reader over a socket. */
typedef struct px_lines {
    int fd;
    px_buf_t buf;
    size_t start; /* first unread byte in buf */
} px_lines_t;

/* Reads more bytes: 1 read, 0 EOF, -1 error. */
int px_lines_fill(px_lines_t *l);
/* Next complete line (without '\n', NUL-terminated in place) or NULL if none is buffered. */
char *px_lines_next(px_lines_t *l);

#endif
