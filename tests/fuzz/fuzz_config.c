/* libFuzzer target: configuration text. Whatever it is, loading either succeeds with values in
 * range or fails with a message; nothing else. */
#include "daemon/core/config.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    px_config_t c;
    char err[512];

    px_config_defaults(&c);
    err[0] = '\0';
    if (px_config_load_text(&c, (const char *)data, size, "fuzz", err, sizeof err) == 0) {
        if (c.queue_capacity < 1 || c.workers < 0 || c.workers > 1024)
            abort();
        px_config_finish(&c, err, sizeof err);
    } else if (!err[0]) {
        abort(); /* a failure must say why */
    }
    px_config_clear(&c);
    return 0;
}
