/* Logging to stderr. Under systemd (JOURNAL_STREAM matches stderr) each line starts with the
 * "<N>" priority the journal understands; elsewhere it starts with a UTC timestamp. */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

_Atomic int px_log_level = PX_LOG_INFO;
static int journal;

static const char *const names[] = {"", "", "", "error", "warning", "notice", "info", "debug"};

void px_log_init(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long dev, ino;
    struct stat st;

    if (js && sscanf(js, "%lu:%lu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
        st.st_dev == dev && st.st_ino == ino)
        journal = 1;
}

int px_log_level_parse(const char *name)
{
    for (int i = PX_LOG_ERR; i <= PX_LOG_DEBUG; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    if (strcmp(name, "warn") == 0)
        return PX_LOG_WARN;
    return -1;
}

const char *px_log_level_name(int level)
{
    return level >= PX_LOG_ERR && level <= PX_LOG_DEBUG ? names[level] : "?";
}

void px_log_write(int level, const char *file, int line, const char *fmt, ...)
{
    char msg[1024], head[64];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (journal) {
        snprintf(head, sizeof head, "<%d>", level);
    } else {
        struct timespec ts;
        struct tm tm;
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        snprintf(head, sizeof head, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s: ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                 names[level]);
    }
    /* Debug lines carry the source location; operators' lines stay short. */
    if (level >= PX_LOG_DEBUG)
        fprintf(stderr, "%s%s (%s:%d)\n", head, msg, file, line);
    else
        fprintf(stderr, "%s%s\n", head, msg);
}

void px_panic(const char *file, int line, const char *what)
{
    fprintf(stderr, "<2>parexd: internal error at %s:%d: %s is false\n", file, line, what);
    abort();
}
