/* parexctl's view of the metrics endpoint: HTTP GETs through libcurl, and the human-readable
 * renderings of /stats (the stats table and the live top view). */
#ifndef PX_CTL_HTTP_H
#define PX_CTL_HTTP_H

#include "common/buf.h"

#include <jansson.h>

/* The auth token sent as a Bearer token with every GET (NULL: none). */
void px_http_set_token(const char *token);
/* GET http://ADDR/PATH into body. Returns the HTTP status, or -1 with err set. */
long px_http_get(const char *addr, const char *path, px_buf_t *body, char *err, size_t errlen);

/* /stats as JSON, or NULL after one line on stderr saying why (401: the token is missing). */
json_t *px_ctl_get_stats(const char *maddr);
int px_ctl_stats(const char *maddr);
int px_ctl_health(const char *maddr);
int px_ctl_metrics(const char *maddr);
int px_ctl_top(const char *maddr, double interval_s, int once);

#endif
