/* Logging: one line per event on stderr, with sd-daemon priority prefixes when stderr is the
 * journal and a timestamp otherwise. Safe from any thread (one fprintf per line). */
#ifndef PX_LOG_H
#define PX_LOG_H

#include <stdatomic.h>
#include <stddef.h>

enum { PX_LOG_ERR = 3, PX_LOG_WARN = 4, PX_LOG_NOTICE = 5, PX_LOG_INFO = 6, PX_LOG_DEBUG = 7 };

/* Current threshold; lines above it are not written. Written by the loop, read everywhere. */
extern _Atomic int px_log_level;

void px_log_init(void);
int px_log_level_parse(const char *name); /* -1 when unknown */
const char *px_log_level_name(int level);
/* Copies len bytes of src into dst (cap bytes, always NUL-terminated, cut on a whole escape or
 * character) with every control character written out: bytes below 0x20 and 0x7f as \xNN, the
 * C1 controls U+0080..U+009F as \u00NN. A value from a client (a key, an error text) can then
 * neither start a forged log line nor drive a terminal. Returns the length written. */
size_t px_escape_ctl(char *dst, size_t cap, const char *src, size_t len);
void px_log_write(int level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define px_log(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) <= atomic_load_explicit(&px_log_level, memory_order_relaxed))                  \
            px_log_write((level), __FILE__, __LINE__, __VA_ARGS__);                                \
    } while (0)
#define px_err(...) px_log(PX_LOG_ERR, __VA_ARGS__)
#define px_warn(...) px_log(PX_LOG_WARN, __VA_ARGS__)
#define px_notice(...) px_log(PX_LOG_NOTICE, __VA_ARGS__)
#define px_info(...) px_log(PX_LOG_INFO, __VA_ARGS__)
#define px_debug(...) px_log(PX_LOG_DEBUG, __VA_ARGS__)

/* An invariant that cannot fail unless parexd itself is wrong: say where, then abort. */
#define px_assert(cond)                                                                            \
    do {                                                                                           \
        if (!(cond))                                                                               \
            px_panic(__FILE__, __LINE__, #cond);                                                   \
    } while (0)
_Noreturn void px_panic(const char *file, int line, const char *what);

#endif
