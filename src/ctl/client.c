/* Plain blocking sockets: parexctl talks to one daemon at a time and has nothing else to do. */
#include "ctl/client.h"

#include "common/hostport.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int px_client_connect(const char *addr, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res, *ai;
    char host[128], port_s[8];
    int port, fd = -1, rc, saved = 0;

    if (px_parse_hostport(addr, host, sizeof host, &port)) {
        snprintf(err, errlen, "'%s' is not HOST:PORT", addr);
        return -1;
    }
    snprintf(port_s, sizeof port_s, "%d", port);
    if ((rc = getaddrinfo(host, port_s, &hints, &res))) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        snprintf(err, errlen, "cannot connect to %s: %s (is parexd running there?)", addr,
                 strerror(saved ? saved : EHOSTUNREACH));
    return fd;
}

int px_client_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int px_lines_fill(px_lines_t *l)
{
    ssize_t n;

    if (l->start > 0 && l->start == l->buf.len) {
        l->buf.len = l->start = 0;
    } else if (l->start > 65536) {
        memmove(l->buf.data, l->buf.data + l->start, l->buf.len - l->start);
        l->buf.len -= l->start;
        l->start = 0;
    }
    if (px_buf_reserve(&l->buf, 65536))
        return -1;
    do
        n = read(l->fd, l->buf.data + l->buf.len, l->buf.cap - l->buf.len - 1);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        return n == 0 ? 0 : -1;
    l->buf.len += (size_t)n;
    return 1;
}

char *px_lines_next(px_lines_t *l)
{
    char *p = l->buf.data + l->start, *nl;

    if (l->start >= l->buf.len)
        return NULL;
    nl = memchr(p, '\n', l->buf.len - l->start);
    if (!nl)
        return NULL;
    *nl = '\0';
    l->start = (size_t)(nl - l->buf.data) + 1;
    return p;
}
