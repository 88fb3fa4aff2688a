/* Constructors of the configurable handler types, for build.c. Each reads its options from
 * the definition object, fills h->run/destroy/ctx, and on error names the key in err. */
#ifndef PX_HANDLER_TYPES_H
#define PX_HANDLER_TYPES_H

#include "daemon/core/config.h"
#include "daemon/core/handler.h"

/* The built-in ops: echo always; the test aids sleep and fail only when test_ops is set (a
 * client could otherwise hold workers for as long as it likes). */
int px_builtin_register(px_registry_t *reg, int test_ops);

/* Builds a registry from the built-ins and cfg's "handlers" object (may be NULL), with
 * builtin_test_ops and handler_timeout_ms. Returns NULL with err naming the key
 * ("key 'handlers.x.argv': ...") on a bad definition. */
px_registry_t *px_handlers_build(const px_config_t *cfg, char *err, size_t errlen);

int px_exec_make(px_handler_t *h, const json_t *def, char *err, size_t errlen);
int px_http_make(px_handler_t *h, const json_t *def, char *err, size_t errlen);
int px_plugin_make(px_handler_t *h, const json_t *def, char *err, size_t errlen);

/* Makes parexd the reaper of what exec programs leave behind (PR_SET_CHILD_SUBREAPER). Once,
 * at start-up. */
void px_exec_become_subreaper(void);
/* Loop thread, on SIGCHLD: reaps orphans reparented to parexd. Returns how many. */
int px_exec_reap_orphans(void);

/* Helpers shared by the constructors. */
int px_spec_only(const json_t *def, const char *where, const char *const *allowed, char *err,
                 size_t errlen);
/* The request as the JSON text handlers send upstream: {"id","key","op","payload"}. */
int px_request_json(const px_req_t *req, px_buf_t *out);
/* A handler's output as a result: JSON when it parses as JSON, else a string (trailing newline
 * dropped). Returns NULL when the bytes are not UTF-8. */
json_t *px_output_value(const char *p, size_t n);

#endif
