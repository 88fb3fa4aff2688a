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

size_t px_escape_ctl(char *dst, size_t cap, const char *src, size_t len)
{
    size_t o = 0;

    if (cap == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        char esc[8];
        size_t n = 1;

        if (c < 0x20 || c == 0x7f) {
            n = (size_t)snprintf(esc, sizeof esc, "\\x%02x", c);
        } else if (c == 0xc2 && i + 1 < len && (unsigned char)src[i + 1] >= 0x80 &&
                   (unsigned char)src[i + 1] <= 0x9f) {
            n = (size_t)snprintf(esc, sizeof esc, "\\u%04x", (unsigned char)src[++i]);
        } else {
            /* A multi-byte character is copied whole or not at all. */
            if (c >= 0xc0)
                while (n < 4 && i + n < len && ((unsigned char)src[i + n] & 0xc0) == 0x80)
                    n++;
            memcpy(esc, src + i, n);
            i += n - 1;
        }
        if (o + n >= cap)
            break;
        memcpy(dst + o, esc, n);
        o += n;
    }
    dst[o] = '\0';
    return o;
}

void px_log_write(int level, const char *file, int line, const char *fmt, ...)
{
    char raw[1024], msg[4096], head[64];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    /* Messages quote clients' keys and programs' stderr: one event must stay one line. */
    px_escape_ctl(msg, sizeof msg, raw, strlen(raw));
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
