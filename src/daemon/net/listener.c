/* Listeners. Inherited sockets are adopted as they are (systemd already bound and listened), so
 * a socket-activated parexd never needs the privilege or the address itself. */
#include "daemon/net/listener.h"

#include "common/hostport.h"
#include "common/log.h"
#include "daemon/core/notify.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static void on_connection(uv_stream_t *listener, int status)
{
    px_listeners_t *ls = listener->data;

    if (status < 0) {
        /* EMFILE and the like: the connection stays in the backlog and libuv retries. */
        px_warn("listener: %s", uv_strerror(status));
        return;
    }
    ls->accept(ls->arg, listener);
}

static void describe(px_listeners_t *ls, int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[INET6_ADDRSTRLEN], one[INET6_ADDRSTRLEN + 16];
    size_t used = strlen(ls->addr);
    int port = 0;

    if (getsockname(fd, (struct sockaddr *)&ss, &len))
        return;
    if (ss.ss_family == AF_INET6) {
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof host);
        port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        snprintf(one, sizeof one, "[%s]:%d", host, port);
    } else if (ss.ss_family == AF_INET) {
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof host);
        port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        snprintf(one, sizeof one, "%s:%d", host, port);
    } else {
        snprintf(one, sizeof one, "fd %d", fd);
    }
    snprintf(ls->addr + used, sizeof ls->addr - used, "%s%s", used ? ", " : "", one);
}

static int add_tcp(px_listeners_t *ls, uv_loop_t *loop, const char *listen, int fd,
                   const struct sockaddr *sa, char *err, size_t errlen)
{
    uv_tcp_t *t = &ls->l[ls->n].tcp;
    uv_os_fd_t ufd;
    int rc;

    uv_tcp_init(loop, t);
    t->data = ls;
    ls->n++;
    if (fd >= 0)
        rc = uv_tcp_open(t, fd);
    else
        rc = uv_tcp_bind(t, sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)t, 511, on_connection);
    if (rc) {
        if (fd >= 0)
            snprintf(err, errlen, "inherited socket (fd %d): %s", fd, uv_strerror(rc));
        else
            /* Like any other value the config names that cannot be used: a config error. */
            snprintf(err, errlen,
                     "key 'listen': cannot listen on %s: %s (another parexd running? change "
                     "'listen' or free the port)",
                     listen, uv_strerror(rc));
        return -1;
    }
    uv_fileno((uv_handle_t *)t, &ufd);
    describe(ls, ufd);
    return 0;
}

/* The Unix-domain listener: who may submit is then a matter of file permissions. */
static int add_unix(px_listeners_t *ls, uv_loop_t *loop, const px_config_t *cfg, char *err,
                    size_t errlen)
{
    uv_pipe_t *p = &ls->l[ls->n].pipe;
    const char *path = cfg->listen_unix;
    struct stat st;
    char dir[sizeof cfg->listen_unix];
    int rc;

    /* In a directory every user may write to (/tmp), anyone can take the path while parexd is
     * down and collect what clients send: say so once. */
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    if (stat(dir[0] ? dir : "/", &st) == 0 && (st.st_mode & S_IWOTH))
        px_warn("listener: listen_unix %s is in a directory any user can write to; another user "
                "could take the path while parexd is down (use a private directory, e.g. "
                "RuntimeDirectory=)",
                path);
    /* A socket left by a previous run would make bind fail: replace it, but only when nothing
     * answers on it (a running parexd's socket is not ours to take) and only if it is a
     * socket at all (anything else at that path is not ours to delete). */
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), live;
        snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
        live = fd >= 0 && connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0;
        if (fd >= 0)
            close(fd);
        if (live) {
            snprintf(err, errlen,
                     "key 'listen_unix': %s is the live socket of a running process (another "
                     "parexd?); stop it or pick another path",
                     path);
            return -1;
        }
        unlink(path);
    }
    uv_pipe_init(loop, p, 0);
    p->data = ls;
    ls->n++;
    if ((rc = uv_pipe_bind(p, path)) == 0) {
        ls->unix_bound = 1; /* from here the path is ours, and removed at exit */
        snprintf(ls->unix_path, sizeof ls->unix_path, "%s", path);
        if (chmod(path, (mode_t)cfg->listen_unix_mode))
            rc = uv_translate_sys_error(errno);
        else
            rc = uv_listen((uv_stream_t *)p, 511, on_connection);
    }
    if (rc) {
        snprintf(err, errlen, "key 'listen_unix': cannot listen on %s: %s", path, uv_strerror(rc));
        return -1;
    }
    snprintf(ls->addr + strlen(ls->addr), sizeof ls->addr - strlen(ls->addr), ", unix:%s", path);
    return 0;
}

int px_listener_open(px_listeners_t *ls, uv_loop_t *loop, const px_config_t *cfg, px_accept_cb cb,
                     void *arg, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    char host[128];
    int port, n = px_notify_listen_fds();

    ls->addr[0] = '\0';
    ls->accept = cb;
    ls->arg = arg;
    if (n > PX_MAX_LISTENERS) {
        snprintf(err, errlen, "%d inherited sockets is over the limit of %d", n, PX_MAX_LISTENERS);
        return -1;
    }
    if (n > 0) {
        for (int i = 0; i < n; i++)
            if (add_tcp(ls, loop, cfg->listen, PX_LISTEN_FDS_START + i, NULL, err, errlen))
                return -1;
        px_info("listener: adopted %d socket(s) from systemd; 'listen' is not used", n);
        return cfg->listen_unix[0] ? add_unix(ls, loop, cfg, err, errlen) : 0;
    }
    if (px_parse_hostport(cfg->listen, host, sizeof host, &port) ||
        (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) &&
         uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss))) {
        snprintf(err, errlen, "key 'listen': \"%s\" is not a numeric HOST:PORT address",
                 cfg->listen);
        return -1;
    }
    if (add_tcp(ls, loop, cfg->listen, -1, (struct sockaddr *)&ss, err, errlen))
        return -1;
    return cfg->listen_unix[0] ? add_unix(ls, loop, cfg, err, errlen) : 0;
}

static void on_closed(uv_handle_t *h) {}

void px_listener_close(px_listeners_t *ls)
{
    int closed = 0;

    for (int i = 0; i < ls->n; i++)
        if (!uv_is_closing((uv_handle_t *)&ls->l[i])) {
            uv_close((uv_handle_t *)&ls->l[i], on_closed);
            closed = 1;
        }
    if (closed && ls->unix_bound) {
        unlink(ls->unix_path);
        ls->unix_bound = 0;
    }
}
