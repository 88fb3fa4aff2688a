/* Shared secrets: constant-time comparison and reading one from a file. */
#include "common/secret.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int px_secret_equal(const char *got, size_t glen, const char *want)
{
    size_t wlen = strlen(want);
    unsigned char diff = (unsigned char)(glen != wlen);

    if (!got)
        return 0;
    for (size_t i = 0; i < wlen; i++)
        diff |= (unsigned char)(want[i] ^ (i < glen ? got[i] : 0));
    return diff == 0;
}

long px_secret_read(const char *path, char *out, size_t cap, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rbe");
    size_t n;

    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    n = fread(out, 1, cap - 1, f);
    fclose(f);
    out[n] = '\0';
    out[strcspn(out, "\r\n")] = '\0';
    return (long)strlen(out);
}
