/* The supervisor: a loop timer that looks at every worker each supervise_interval_ms, logs each
 * change of state (idle/busy/stalled/dead) and of backpressure once, sweeps idle keys, and with
 * on_stall=replace gives a stalled partition a fresh thread. */
#ifndef PX_SUPERVISOR_H
#define PX_SUPERVISOR_H

#include "daemon/core/config.h"
#include "daemon/ops/snapshot.h"

#include <uv.h>

typedef struct px_supervisor px_supervisor_t;

/* cfg is the server's live configuration (on_stall is read at each tick). */
px_supervisor_t *px_supervisor_start(uv_loop_t *loop, px_snapshot_src_t *src,
                                     const px_config_t *cfg);
void px_supervisor_stop(px_supervisor_t *sup);
/* Changes the tick interval (config reload). */
void px_supervisor_set_interval(px_supervisor_t *sup, uint64_t ms);

#endif
