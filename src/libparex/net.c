/* Addresses and connecting: "HOST:PORT", "[v6]:PORT" or "unix:/path", always a non-blocking,
 * close-on-exec socket; the blocking context waits on it with poll, the async one hands it to
 * the caller's loop. */
#include "libparex/internal.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int split_hostport(const char *addr, char *host, size_t hostlen, const char **port)
{
    const char *colon, *h = addr;
    size_t hl;

    if (*addr == '[') {
        const char *rb = strchr(addr, ']');
        if (!rb || rb[1] != ':')
            return -1;
        h = addr + 1;
        hl = (size_t)(rb - h);
        colon = rb + 1;
    } else if ((colon = strrchr(addr, ':'))) {
        hl = (size_t)(colon - addr);
    } else {
        return -1;
    }
    if (hl == 0 || hl >= hostlen || !colon[1] ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1))
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = colon + 1;
    return 0;
}

static int start(int fd, const struct sockaddr *sa, socklen_t len, int *in_progress)
{
    *in_progress = 0;
    while (connect(fd, sa, len) < 0) {
        if (errno == EINTR)
            continue;
        if (errno == EINPROGRESS || errno == EAGAIN) {
            *in_progress = 1;
            return 0;
        }
        return -1;
    }
    return 0;
}

static int dial_unix(const char *path, int *in_progress, int *code, char *err, size_t errlen)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    int fd;

    if (!*path || strlen(path) >= sizeof sun.sun_path) {
        *code = PAREX_ERR_ARG;
        snprintf(err, errlen, "unix socket path '%.100s' is empty or longer than %zu bytes", path,
                 sizeof sun.sun_path - 1);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path));
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0 ||
        start(fd, (struct sockaddr *)&sun, sizeof sun, in_progress) < 0) {
        *code = PAREX_ERR_IO;
        snprintf(err, errlen, "cannot connect to unix:%s: %s (is parexd's listen_unix there?)",
                 path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

int pxl_dial(const char *addr, int *in_progress, int *code, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res, *ai;
    char host[256];
    const char *port;
    int fd = -1, rc, saved = 0, one = 1;

    if (!addr) {
        *code = PAREX_ERR_ARG;
        snprintf(err, errlen, "no address: give HOST:PORT or unix:/path");
        return -1;
    }
    if (strncmp(addr, "unix:", 5) == 0)
        return dial_unix(addr + 5, in_progress, code, err, errlen);
    if (split_hostport(addr, host, sizeof host, &port)) {
        *code = PAREX_ERR_ARG;
        snprintf(err, errlen, "'%.100s' is not HOST:PORT, [v6]:PORT or unix:/path", addr);
        return -1;
    }
    if ((rc = getaddrinfo(host, port, &hints, &res))) {
        *code = PAREX_ERR_IO;
        snprintf(err, errlen, "cannot resolve %.100s: %s", host, gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd >= 0 && start(fd, ai->ai_addr, ai->ai_addrlen, in_progress) == 0)
            break;
        saved = errno;
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        *code = PAREX_ERR_IO;
        snprintf(err, errlen, "cannot connect to %.100s: %s (is parexd running there?)", addr,
                 strerror(saved ? saved : EHOSTUNREACH));
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int pxl_connect_result(int fd, const char *addr, char *err, size_t errlen)
{
    int soerr = 0;
    socklen_t len = sizeof soerr;

    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr) {
        snprintf(err, errlen, "cannot connect to %.100s: %s (is parexd running there?)", addr,
                 strerror(soerr));
        return -1;
    }
    return 0;
}
