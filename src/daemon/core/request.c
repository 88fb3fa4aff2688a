/* A request's single allocation: the struct followed by its key, id and payload bytes. */
#include "daemon/core/request.h"

#include "daemon/core/handler.h"

#include <stdlib.h>
#include <string.h>

_Atomic uint64_t px_req_live_bytes;

px_req_t *px_req_new(const char *key, size_t key_len, const char *id, size_t id_len,
                     const char *payload, size_t payload_len)
{
    px_req_t *r = malloc(sizeof *r + key_len + id_len + payload_len);

    if (!r)
        return NULL;
    memset(r, 0, sizeof *r);
    memcpy(r->data, key, key_len);
    memcpy(r->data + key_len, id, id_len);
    if (payload_len)
        memcpy(r->data + key_len + id_len, payload, payload_len);
    r->key_len = (uint16_t)key_len;
    r->id_len = (uint32_t)id_len;
    r->payload_len = (uint32_t)payload_len;
    atomic_init(&r->state, PX_REQ_QUEUED);
    atomic_fetch_add_explicit(&px_req_live_bytes, sizeof *r + key_len + id_len + payload_len,
                              memory_order_relaxed);
    return r;
}

void px_req_free(px_req_t *r)
{
    if (!r)
        return;
    atomic_fetch_sub_explicit(&px_req_live_bytes,
                              sizeof *r + r->key_len + r->id_len + r->payload_len,
                              memory_order_relaxed);
    px_registry_unref(r->reg);
    px_buf_free(&r->out);
    free(r);
}
