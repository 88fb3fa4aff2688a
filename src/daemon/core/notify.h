/* systemd integration through libsystemd's sd-daemon API: readiness and status notifications,
 * the watchdog, and inherited (socket-activated) listeners. Built without libsystemd, every call
 * is a no-op and parexd runs as a plain daemon. */
#ifndef PX_NOTIFY_H
#define PX_NOTIFY_H

#include <stdint.h>

#define PX_LISTEN_FDS_START 3

/* 1 when built with libsystemd. */
int px_notify_built(void);
/* Sends one sd_notify message, e.g. px_notify("READY=1\nSTATUS=%s", s). */
void px_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The watchdog interval systemd asked for (WATCHDOG_USEC), or 0 when there is none. */
uint64_t px_notify_watchdog_usec(void);
/* Number of sockets passed by socket activation (from fd 3 on); unsets the variables. */
int px_notify_listen_fds(void);

#endif
