/* Thin wrapper so the rest of parexd never sees #ifdef HAVE_LIBSYSTEMD. */
#include "daemon/core/notify.h"

#include <stdarg.h>
#include <stdio.h>

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>

int px_notify_built(void)
{
    return 1;
}

void px_notify(const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    sd_notify(0, msg);
}

uint64_t px_notify_watchdog_usec(void)
{
    uint64_t usec = 0;

    return sd_watchdog_enabled(0, &usec) > 0 ? usec : 0;
}

int px_notify_listen_fds(void)
{
    int n = sd_listen_fds(1);

    return n > 0 ? n : 0;
}

#else

int px_notify_built(void)
{
    return 0;
}

void px_notify(const char *fmt, ...)
{
    (void)fmt;
}

uint64_t px_notify_watchdog_usec(void)
{
    return 0;
}

int px_notify_listen_fds(void)
{
    return 0;
}

#endif
