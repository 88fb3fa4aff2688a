/* Constructors of the configurable handler types, for handlers.c. Each reads its options from
 * the definition object, fills h->run/destroy/ctx, and on error names the key in err. */
#ifndef PX_HANDLER_TYPES_H
#define PX_HANDLER_TYPES_H

#include "daemon/core/handler.h"

int px_exec_make(px_handler_t *h, const json_t *def, char *err, size_t errlen);
int px_http_make(px_handler_t *h, const json_t *def, char *err, size_t errlen);
int px_plugin_make(px_handler_t *h, const json_t *def, char *err, size_t errlen);

/* Helpers shared by the constructors. */
int px_spec_only(const json_t *def, const char *where, const char *const *allowed, char *err,
                 size_t errlen);
px_handler_ctl_t *px_handler_ctl_new(void);
/* Frees a handler that never made it into a registry. */
void px_handler_discard(px_handler_t *h);
/* The request as the JSON text handlers send upstream: {"id","key","op","payload"}. */
int px_request_json(const px_req_t *req, px_buf_t *out);
/* A handler's output as a result: JSON when it parses as JSON, else a string (trailing newline
 * dropped). Returns NULL when the bytes are not UTF-8. */
json_t *px_output_value(const char *p, size_t n);

#endif
