/* systemd's view of the daemon: READY=1 once serving, a one-line STATUS= kept current, and the
 * watchdog fed from the loop only while no worker is dead. Loop thread. */
#ifndef PX_SDSTATUS_H
#define PX_SDSTATUS_H

#include "daemon/ops/snapshot.h"

#include <uv.h>

typedef struct px_sdstatus {
    uv_timer_t timer;
    px_snapshot_src_t *src;
    uint64_t watchdog_usec;
    char last[256];
} px_sdstatus_t;

void px_sdstatus_init(px_sdstatus_t *st, uv_loop_t *loop, px_snapshot_src_t *src);
/* Listening and every worker is up: says READY=1 and starts the status and watchdog timer. */
void px_sdstatus_start(px_sdstatus_t *st);
/* READY=1 again with the last status (after a reload). */
void px_sdstatus_ready(px_sdstatus_t *st);
void px_sdstatus_close(px_sdstatus_t *st);

#endif
