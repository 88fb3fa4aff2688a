/* What the daemon says about itself: the /stats JSON document, the Prometheus exposition and
 * the health verdict. Readers only: callable from any thread while the pool exists. */
#ifndef PX_REPORT_H
#define PX_REPORT_H

#include "common/buf.h"
#include "daemon/server.h"

#include <jansson.h>
#include <stddef.h>

json_t *px_report_stats(px_server_t *srv);
int px_report_prometheus(px_server_t *srv, px_buf_t *out);
/* 0 when healthy; otherwise -1 with a one-line reason. */
int px_report_health(px_server_t *srv, char *reason, size_t len);
/* 1 when a worker's queue is at or above backpressure_threshold x capacity. */
int px_report_backpressure(px_server_t *srv, const px_worker_info_t *w);

#endif
