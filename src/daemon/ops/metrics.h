/* The metrics endpoint: libmicrohttpd on its own thread serving /metrics, /stats, /healthz.
 * Read-only: nothing served here changes the daemon. */
#ifndef PX_METRICS_H
#define PX_METRICS_H

#include "daemon/core/config.h"
#include "daemon/ops/snapshot.h"

typedef struct px_metrics px_metrics_t;

/* Binds cfg->metrics_listen with cfg's connection limit and timeout, the allowed Host names and
 * the auth token. Returns 0 or -1 with err set. */
int px_metrics_start(px_metrics_t **out, const px_config_t *cfg, px_snapshot_src_t *src, char *err,
                     size_t errlen);
/* Loop thread, on reload: takes the new metrics_allowed_hosts and auth_token (the listener's
 * limits need a restart). NULL is a no-op. */
void px_metrics_reconfigure(px_metrics_t *m, const px_config_t *cfg);
/* The address actually bound ("127.0.0.1:9400"). */
const char *px_metrics_addr(const px_metrics_t *m);
/* Stops the thread (joins it). NULL is a no-op. */
void px_metrics_stop(px_metrics_t *m);

#endif
