/* Shared secrets (the auth token): compared in constant time, read from a file so they need not
 * sit in a config file, a command line or ps. Used by parexd and parexctl. */
#ifndef PX_SECRET_H
#define PX_SECRET_H

#include <stddef.h>

/* 1 when got (glen bytes) equals want; the time depends only on the lengths. */
int px_secret_equal(const char *got, size_t glen, const char *want);
/* Reads the secret on the first line of path into out (cap bytes, NUL-terminated; a trailing
 * "\r\n" or "\n" dropped). Returns its length, or -1 with err naming the path and the reason. */
long px_secret_read(const char *path, char *out, size_t cap, char *err, size_t errlen);

#endif
