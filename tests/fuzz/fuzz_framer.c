/* libFuzzer target: a byte stream framed into lines, split into reads at fuzzer-chosen points.
 * Checks the framer's promises: no line over the limit is delivered, none contains '\n'. */
#include "daemon/net/framer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_line(void *arg, const char *line, size_t len, int too_long)
{
    (void)arg;
    if (too_long)
        return;
    if (len > MAX || memchr(line, '\n', len))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    px_framer_t f;
    size_t at = 0;

    if (size < 1)
        return 0;
    px_framer_init(&f, MAX);
    /* The first byte picks the read size, so the same stream is tried split many ways. */
    while (at + 1 < size) {
        size_t chunk = (size_t)(data[0] % 17) + 1;
        if (chunk > size - 1 - at)
            chunk = size - 1 - at;
        px_framer_feed(&f, (const char *)data + 1 + at, chunk, on_line, NULL);
        at += chunk;
    }
    px_framer_finish(&f, on_line, NULL);
    px_framer_free(&f);
    return 0;
}
