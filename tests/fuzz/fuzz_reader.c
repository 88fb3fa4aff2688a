/* libFuzzer target: libparex's reader on an arbitrary byte stream, fed in pieces whose size the
 * first byte picks. Checks its promises: an answer's line never holds a newline nor exceeds
 * max_line_bytes, and the stream gives the same answers however it is split (compared with
 * the same stream fed whole). */
#include <parex/client.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX 128

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Feeds data in steps of step bytes; returns a hash of the answers' lines and their count. */
static uint64_t run(const uint8_t *data, size_t size, size_t step, size_t *count)
{
    parex_reader_t *r = parex_reader_create(MAX);
    uint64_t h = 1469598103934665603ull;
    parex_reply_t *rep;

    *count = 0;
    for (size_t at = 0; at < size; at += step) {
        size_t n = size - at < step ? size - at : step;
        int rc;

        if (parex_reader_feed(r, (const char *)data + at, n))
            abort();
        while ((rc = parex_reader_get_reply(r, &rep)) != 0) {
            if (rc < 0) {
                h = (h ^ 0xff) * 1099511628211ull;
                continue;
            }
            if (rep->line_len > MAX || memchr(rep->line, '\n', rep->line_len) ||
                strlen(parex_status_str(rep->status)) == 0 || !rep->id_json)
                abort();
            for (size_t i = 0; i < rep->line_len; i++)
                h = (h ^ (uint8_t)rep->line[i]) * 1099511628211ull;
            (*count)++;
            parex_reply_free(rep);
        }
        if (parex_reader_buffered(r) > MAX + 1 + step)
            abort(); /* an over-long line is never buffered whole */
    }
    parex_reader_free(r);
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n_split, n_whole;
    uint64_t split, whole;

    if (size < 1)
        return 0;
    split = run(data + 1, size - 1, (size_t)data[0] % 64 + 1, &n_split);
    whole = run(data + 1, size - 1, size, &n_whole);
    if (n_split != n_whole || split != whole)
        abort();
    return 0;
}
