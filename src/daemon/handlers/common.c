/* What every configurable handler type shares: checking a definition's keys, the request as the
 * JSON text sent upstream, and an upstream's output read back as a result. */
#include "daemon/handlers/handlers.h"

#include <stdio.h>
#include <string.h>

int px_request_json(const px_req_t *req, px_buf_t *b)
{
    int rc = 0;

    rc |= px_buf_puts(b, "{\"id\":");
    rc |= px_buf_append(b, px_req_id(req), req->id_len);
    rc |= px_buf_puts(b, ",\"key\":");
    rc |= px_buf_json_string(b, px_req_key(req), req->key_len);
    rc |= px_buf_puts(b, ",\"op\":");
    rc |= px_buf_json_string(b, req->handler->name, strlen(req->handler->name));
    rc |= px_buf_puts(b, ",\"payload\":");
    rc |= px_buf_append(b, px_req_payload(req), req->payload_len);
    if (req->epoch) {
        /* Cluster mode: a delivery above 1 is a re-run; the epoch fences side effects. */
        rc |= px_buf_puts(b, ",\"delivery\":");
        rc |= px_buf_uint(b, req->delivery);
        rc |= px_buf_puts(b, ",\"epoch\":");
        rc |= px_buf_uint(b, req->epoch);
    }
    rc |= px_buf_puts(b, "}");
    return rc ? -1 : 0;
}

json_t *px_output_value(const char *p, size_t n)
{
    json_t *v = json_loadb(p, n, JSON_DECODE_ANY, NULL);

    if (v)
        return v;
    if (n > 0 && p[n - 1] == '\n')
        n--;
    if (n > 0 && p[n - 1] == '\r')
        n--;
    return json_stringn(p, n);
}

/* Checks that def holds only the given keys. */
int px_spec_only(const json_t *def, const char *where, const char *const *allowed, char *err,
                 size_t errlen)
{
    const char *k;
    json_t *v;

    json_object_foreach((json_t *)def, k, v)
    {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            ok |= strcmp(*a, k) == 0;
        if (!ok) {
            snprintf(err, errlen, "key '%s.%.64s': unknown option", where, k);
            return -1;
        }
    }
    return 0;
}
