/* One line for `systemctl status`, and the watchdog. A daemon that has lost a worker stops
 * pinging, so systemd restarts it (WatchdogSec, Restart=on-failure). */
#include "daemon/ops/sdstatus.h"

#include "daemon/core/notify.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* What the daemon is doing right now; -1 when out of memory. */
static int status_line(px_sdstatus_t *st, char *out, size_t len, int *any_dead)
{
    px_snapshot_t s;
    uint32_t stalled = 0, dead = 0;

    if (px_snapshot_take(st->src, PX_SNAP_WORKERS, &s))
        return -1;
    for (uint32_t i = 0; i < s.nworkers; i++) {
        stalled += s.workers[i].state == PX_WS_STALLED;
        dead += s.workers[i].state == PX_WS_DEAD;
    }
    *any_dead = dead > 0;
    snprintf(out, len,
             "%s: %llu connections, %llu in flight, %llu ok, %llu failed, %llu rejected%s%s",
             s.draining ? "draining" : "serving", (unsigned long long)s.n.connections,
             (unsigned long long)s.n.in_flight, (unsigned long long)s.n.ok,
             (unsigned long long)s.n.failed, (unsigned long long)px_counts_rejected(&s.n),
             stalled ? ", worker stalled" : "", dead ? ", WORKER DEAD" : "");
    px_snapshot_free(&s);
    return 0;
}

static void on_tick(uv_timer_t *t)
{
    px_sdstatus_t *st = t->data;
    char status[256];
    int any_dead;

    if (status_line(st, status, sizeof status, &any_dead))
        return;
    if (strcmp(status, st->last) != 0) {
        px_notify("STATUS=%s", status);
        snprintf(st->last, sizeof st->last, "%s", status);
    }
    if (st->watchdog_usec && !any_dead)
        px_notify("WATCHDOG=1");
}

void px_sdstatus_init(px_sdstatus_t *st, uv_loop_t *loop, px_snapshot_src_t *src)
{
    memset(st, 0, sizeof *st);
    st->src = src;
    uv_timer_init(loop, &st->timer);
    st->timer.data = st;
    uv_unref((uv_handle_t *)&st->timer);
}

void px_sdstatus_start(px_sdstatus_t *st)
{
    uint64_t every_ms = 1000;
    int any_dead;

    st->watchdog_usec = px_notify_watchdog_usec();
    if (st->watchdog_usec) {
        /* Twice per watchdog period, within [10 ms, 1 s]. */
        every_ms = st->watchdog_usec / 2000;
        if (every_ms < 10)
            every_ms = 10;
        if (every_ms > 1000)
            every_ms = 1000;
    }
    status_line(st, st->last, sizeof st->last, &any_dead);
    px_notify("READY=1\nSTATUS=%s\nMAINPID=%d", st->last, (int)getpid());
    uv_timer_start(&st->timer, on_tick, every_ms, every_ms);
}

void px_sdstatus_ready(px_sdstatus_t *st)
{
    px_notify("READY=1\nSTATUS=%s", st->last);
}

static void on_closed(uv_handle_t *h) {}

void px_sdstatus_close(px_sdstatus_t *st)
{
    if (!uv_is_closing((uv_handle_t *)&st->timer)) {
        uv_timer_stop(&st->timer);
        uv_close((uv_handle_t *)&st->timer, on_closed);
    }
}
