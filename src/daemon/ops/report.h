/* What the daemon says about itself, rendered from a snapshot: the /stats JSON document, the
 * Prometheus exposition and the health verdict. */
#ifndef PX_REPORT_H
#define PX_REPORT_H

#include "common/buf.h"
#include "daemon/ops/snapshot.h"

#include <jansson.h>
#include <stddef.h>

/* Needs a PX_SNAP_FULL snapshot. NULL when out of memory. */
json_t *px_report_stats(const px_snapshot_t *s);
/* Needs a PX_SNAP_FULL snapshot. 0, or -1 when out of memory. */
int px_report_prometheus(const px_snapshot_t *s, px_buf_t *out);
/* 0 when healthy; otherwise -1 with a one-line reason. Any snapshot. */
int px_report_health(const px_snapshot_t *s, char *reason, size_t len);

#endif
