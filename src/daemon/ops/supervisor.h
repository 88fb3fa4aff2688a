/* The supervisor: a loop timer that looks at every worker each supervise_interval_ms, logs each
 * change of state (idle/busy/stalled/dead) and of backpressure once, and with on_stall=replace
 * gives a stalled partition a fresh thread. */
#ifndef PX_SUPERVISOR_H
#define PX_SUPERVISOR_H

#include "daemon/server.h"

typedef struct px_supervisor px_supervisor_t;

px_supervisor_t *px_supervisor_start(px_server_t *srv);
void px_supervisor_stop(px_supervisor_t *sup);
/* Changes the tick interval (config reload). */
void px_supervisor_set_interval(px_supervisor_t *sup, uint64_t ms);
/* Any worker dead right now (as of the last tick)? Loop thread. */
int px_supervisor_any_dead(const px_supervisor_t *sup);

#endif
