/* The exec handler: runs a program per request with posix_spawn (no shell), the request JSON on
 * stdin, the result from stdout. The child leads its own process group so a timeout can kill
 * everything it started, and gets exactly fds 0, 1 and 2 (closefrom 3 in the child), so neither
 * a daemon socket nor anything parexd inherited leaks into it. The child is watched through a
 * pidfd, so the deadline bounds the answer even when the program closes its output and lingers.
 * What leaves the group (setsid) is reparented to parexd, a child subreaper, and reaped by
 * px_exec_reap_orphans. */
#include "daemon/handlers/handlers.h"

#include "common/clock.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define TAIL 400 /* bytes of stderr kept for the error message */

typedef struct exec_ctx {
    char **argv, **envp;
    const char *path; /* the child's PATH (points into envp): where argv[0] is looked up */
    size_t max_output;
} exec_ctx_t;

static void free_strv(char **v)
{
    for (char **p = v; p && *p; p++)
        free(*p);
    free(v);
}

static void exec_destroy(px_handler_t *h)
{
    exec_ctx_t *x = h->ctx;

    if (!x)
        return;
    free_strv(x->argv);
    free_strv(x->envp);
    free(x);
}

/* Reaps the child, killing its group first when it overstays. Returns the wait status. After a
 * SIGKILL the wait is short: the kernel ends the process whatever it was doing. */
static int reap(pid_t pid, int kill_group)
{
    int st = 0;

    if (kill_group)
        kill(-pid, SIGKILL);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    return st;
}

/* execvp's search, but through the child's PATH rather than parexd's own (posix_spawnp reads
 * the caller's environment): what the manual promises the program is what finds it. */
static int spawn_in_path(const exec_ctx_t *x, const posix_spawn_file_actions_t *fa,
                         const posix_spawnattr_t *at, pid_t *pid)
{
    const char *dir = x->path, *end;
    char file[4096];
    int rc, seen_eacces = 0;

    if (strchr(x->argv[0], '/'))
        return posix_spawn(pid, x->argv[0], fa, at, x->argv, x->envp);
    for (; dir; dir = *end ? end + 1 : NULL) {
        size_t n;
        end = strchrnul(dir, ':');
        n = (size_t)(end - dir);
        /* An empty element is the working directory, as for execvp. */
        if (snprintf(file, sizeof file, "%.*s%s%s", (int)n, dir, n ? "/" : "", x->argv[0]) >=
            (int)sizeof file)
            continue;
        rc = posix_spawn(pid, file, fa, at, x->argv, x->envp);
        if (rc == EACCES)
            seen_eacces = 1;
        else if (rc != ENOENT && rc != ENOTDIR)
            return rc;
    }
    return seen_eacces ? EACCES : ENOENT;
}

void px_exec_become_subreaper(void)
{
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0))
        px_warn("exec: cannot become a child subreaper (%s): processes that leave an exec "
                "program's group will not be reaped by parexd",
                strerror(errno));
}

/* Loop thread, on SIGCHLD. Exec children are children of the worker threads that spawned and
 * wait for them; only orphans (processes that left a program's group and outlived it) are
 * reparented to the subreaper's main thread, so reaping the main thread's children never takes
 * a status a worker is waiting for. */
int px_exec_reap_orphans(void)
{
    char path[64], buf[4096];
    int reaped = 0;
    ssize_t n;
    int fd;

    snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return 0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    for (char *p = buf, *end; *p; p = end) {
        long pid = strtol(p, &end, 10);
        if (end == p)
            break;
        if (pid > 0 && waitpid((pid_t)pid, NULL, WNOHANG) > 0)
            reaped++;
    }
    return reaped;
}

static int spawn(const exec_ctx_t *x, int in[2], int out[2], int errp[2], pid_t *pid)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    sigset_t none, dfl;
    int rc;

    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
    /* Exactly 0, 1, 2: also libcurl's sockets and whatever parexd's launcher left open. */
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    /* Worker threads block every signal and the daemon ignores SIGPIPE: undo both. */
    sigemptyset(&none);
    sigemptyset(&dfl);
    sigaddset(&dfl, SIGPIPE);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &dfl);
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                      POSIX_SPAWN_SETSIGDEF);
    rc = spawn_in_path(x, &fa, &at, pid);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    return rc;
}

static int exec_run(const px_handler_t *h, const px_req_t *req, uint64_t timeout_ns,
                    px_result_t *res)
{
    const exec_ctx_t *x = h->ctx;
    int in[2] = {-1, -1}, out[2] = {-1, -1}, errp[2] = {-1, -1}, rc = -1, st;
    px_buf_t input = {0}, output = {0};
    char tail[TAIL + 1];
    size_t tail_len = 0, written = 0;
    uint64_t deadline = timeout_ns ? px_now_ns() + timeout_ns : 0;
    int timed_out = 0, too_big = 0, exited = 0, pfd = -1;
    pid_t pid;

    if (px_request_json(req, &input) || px_buf_append(&input, "\n", 1)) {
        px_fail(res, "handler_error", "out of memory building the program's input");
        goto out;
    }
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(errp, O_CLOEXEC)) {
        px_fail(res, "handler_error", "cannot create pipes: %s", strerror(errno));
        goto out;
    }
    if ((rc = spawn(x, in, out, errp, &pid))) {
        rc = px_fail(res, "handler_error", "cannot run %s: %s", x->argv[0], strerror(rc));
        goto out;
    }
    close(in[0]);
    close(out[1]);
    close(errp[1]);
    in[0] = out[1] = errp[1] = -1;
    fcntl(in[1], F_SETFL, O_NONBLOCK);
    /* Without a pidfd (kernel < 5.3) the end of output stands for the end of the program. */
    if ((pfd = pidfd_open(pid, 0)) < 0)
        exited = 1;

    /* Until the output is read to its end and the program has exited, or the deadline. */
    while (out[0] >= 0 || errp[0] >= 0 || !exited) {
        struct pollfd p[4] = {{.fd = out[0], .events = POLLIN},
                              {.fd = errp[0], .events = POLLIN},
                              {.fd = in[1], .events = POLLOUT},
                              {.fd = exited ? -1 : pfd, .events = POLLIN}};
        int wait_ms = -1;
        char chunk[16384];

        if (deadline) {
            uint64_t now = px_now_ns();
            if (now >= deadline) {
                timed_out = 1;
                break;
            }
            wait_ms = (int)((deadline - now + PX_MS - 1) / PX_MS);
        }
        if (poll(p, 4, wait_ms) < 0 && errno != EINTR)
            break;
        if (p[3].revents)
            exited = 1;
        if (p[2].revents & (POLLOUT | POLLERR | POLLHUP)) {
            ssize_t n = write(in[1], input.data + written, input.len - written);
            if (n > 0)
                written += (size_t)n;
            if (n < 0 && errno != EAGAIN) /* the program does not read its stdin: fine */
                written = input.len;
            if (written == input.len) {
                close(in[1]);
                in[1] = -1;
            }
        }
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(out[0], chunk, sizeof chunk);
            if (n <= 0) {
                close(out[0]);
                out[0] = -1;
            } else if (output.len + (size_t)n > x->max_output) {
                too_big = 1;
                break;
            } else if (px_buf_append(&output, chunk, (size_t)n)) {
                too_big = 1;
                break;
            }
        }
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(errp[0], chunk, sizeof chunk);
            if (n <= 0) {
                close(errp[0]);
                errp[0] = -1;
            } else {
                /* Keep only the last TAIL bytes: the end of stderr says what went wrong. */
                size_t take = (size_t)n > TAIL ? TAIL : (size_t)n;
                if (tail_len + take > TAIL) {
                    size_t drop = tail_len + take - TAIL;
                    memmove(tail, tail + drop, tail_len - drop);
                    tail_len -= drop;
                }
                memcpy(tail + tail_len, chunk + (size_t)n - take, take);
                tail_len += take;
            }
        }
    }
    if (pfd >= 0)
        close(pfd);
    st = reap(pid, timed_out || too_big);
    /* Also sweep anything the program left running in its group. */
    if (!timed_out && !too_big)
        kill(-pid, SIGKILL);
    tail[tail_len] = '\0';
    while (tail_len > 0 && (tail[tail_len - 1] == '\n' || tail[tail_len - 1] == '\r'))
        tail[--tail_len] = '\0';

    if (timed_out) {
        rc = px_fail(res, "timeout", "%s ran over %.0f ms and was killed (with its process group)",
                     x->argv[0], (double)timeout_ns / 1e6);
    } else if (too_big) {
        rc = px_fail(res, "handler_error",
                     "%s wrote more than max_output_bytes (%zu) and was killed", x->argv[0],
                     x->max_output);
    } else if (WIFSIGNALED(st)) {
        rc = px_fail(res, "handler_error", "%s was killed by signal %d; stderr: %s", x->argv[0],
                     WTERMSIG(st), tail_len ? tail : "(empty)");
    } else if (WEXITSTATUS(st) != 0) {
        rc = px_fail(res, "handler_error", "%s exited with status %d; stderr: %s", x->argv[0],
                     WEXITSTATUS(st), tail_len ? tail : "(empty)");
    } else if (!(res->value = px_output_value(output.data ? output.data : "", output.len))) {
        rc = px_fail(res, "handler_error", "%s wrote output that is neither JSON nor UTF-8 text",
                     x->argv[0]);
    } else {
        rc = 0;
    }
out:
    for (int i = 0; i < 2; i++) {
        if (in[i] >= 0)
            close(in[i]);
        if (out[i] >= 0)
            close(out[i]);
        if (errp[i] >= 0)
            close(errp[i]);
    }
    px_buf_free(&input);
    px_buf_free(&output);
    return rc;
}

static char **strv_from_array(const json_t *a)
{
    size_t i, n = json_array_size(a);
    char **v = calloc(n + 1, sizeof *v);
    json_t *s;

    if (!v)
        return NULL;
    json_array_foreach(a, i, s)
    {
        if (!(v[i] = strdup(json_string_value(s)))) {
            free_strv(v);
            return NULL;
        }
    }
    return v;
}

int px_exec_make(px_handler_t *h, const json_t *def, char *err, size_t errlen)
{
    static const char *const keys[] = {
        "type",       "argv", "env", "timeout_ms", "max_output_bytes", "retry", "max_concurrency",
        "rate_limit", NULL};
    json_t *argv = json_object_get(def, "argv"), *env = json_object_get(def, "env"), *v;
    json_t *mo = json_object_get(def, "max_output_bytes");
    char where[128];
    const char *k;
    exec_ctx_t *x;
    size_t i, n = 0;

    snprintf(where, sizeof where, "handlers.%s", h->name);
    if (px_spec_only(def, where, keys, err, errlen))
        return -1;
    if (!json_is_array(argv) || json_array_size(argv) == 0)
        goto bad_argv;
    json_array_foreach(argv, i, v) if (!json_is_string(v) || !*json_string_value(v)) goto bad_argv;
    if (env && !json_is_object(env)) {
        snprintf(err, errlen, "key '%s.env': expected an object of NAME: \"value\"", where);
        return -1;
    }
    if (mo && (!json_is_integer(mo) || json_integer_value(mo) < 1 ||
               json_integer_value(mo) > (64 << 20))) {
        snprintf(err, errlen, "key '%s.max_output_bytes': expected an integer from 1 to %d", where,
                 64 << 20);
        return -1;
    }
    if (!(x = calloc(1, sizeof *x)))
        goto oom;
    h->ctx = x;
    h->run = exec_run;
    h->destroy = exec_destroy;
    x->max_output = mo ? (size_t)json_integer_value(mo) : 1 << 20;
    if (!(x->argv = strv_from_array(argv)))
        goto oom;
    /* The program sees PATH plus exactly the variables configured: nothing of the daemon's. */
    if (!(x->envp = calloc(json_object_size(env) + 2, sizeof(char *))))
        goto oom;
    if (!json_object_get(env, "PATH") &&
        !(x->envp[n++] = strdup("PATH=/usr/local/bin:/usr/bin:/bin")))
        goto oom;
    json_object_foreach(env, k, v)
    {
        if (!json_is_string(v) || strchr(k, '=') || !*k) {
            snprintf(err, errlen,
                     "key '%s.env.%.64s': expected a string value and a name "
                     "without '='",
                     where, k);
            return -1;
        }
        if (asprintf(&x->envp[n++], "%s=%s", k, json_string_value(v)) < 0) {
            x->envp[--n] = NULL;
            goto oom;
        }
    }
    for (char **e = x->envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            x->path = *e + 5;
    return 0;
bad_argv:
    snprintf(err, errlen,
             "key '%s.argv': expected a non-empty array of non-empty strings "
             "(program, then arguments)",
             where);
    return -1;
oom:
    snprintf(err, errlen, "out of memory building handler '%s'", h->name);
    return -1;
}
