/* libFuzzer target: one request line through the parser and, when it is a request, through the
 * response formatter, the way the loop and a worker would see it. */
#include "common/protocol.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    px_line_t line;
    px_buf_t out = {0};
    px_resp_t r = {.status = "ok", .worker = 1, .queue_ms = 0.5, .run_ms = 0.25};

    px_line_parse(&line, (const char *)data, size);
    if (line.kind == PX_LINE_REQUEST) {
        if (line.key_len < 1 || line.key_len > PX_KEY_MAX)
            abort(); /* the parser promised a valid key */
        r.result = line.payload;
        px_resp_format(&out, &r);
    } else if (line.kind == PX_LINE_INVALID) {
        r.status = "invalid";
        r.code = px_invalid_code(line.code);
        r.message = line.message;
        px_resp_format(&out, &r);
    }
    px_buf_free(&out);
    px_line_free(&line);
    return 0;
}
