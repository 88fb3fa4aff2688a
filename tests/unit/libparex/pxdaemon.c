/* See pxdaemon.h. The parexd binary comes from PXT_PAREXD (set by CMake). */
#include "pxdaemon.h"

#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
    fprintf(stderr, "pxdaemon: %s: %s\n", what, strerror(errno));
    abort();
}

static void *drain(void *arg)
{
    pxt_daemon_t *d = arg;
    char buf[4096];

    while (read(d->err_fd, buf, sizeof buf) > 0)
        ;
    return NULL;
}

void pxt_daemon_start(pxt_daemon_t *d, const char *config_json, int with_unix)
{
    char cfg[512], line[1024], text[2048];
    int pipefd[2];
    size_t len = 0;
    regex_t rx;
    FILE *f;

    memset(d, 0, sizeof *d);
    snprintf(d->dir, sizeof d->dir, "/tmp/libparex-test-XXXXXX");
    if (!mkdtemp(d->dir))
        die("mkdtemp");
    snprintf(cfg, sizeof cfg, "%s/parexd.json", d->dir);
    snprintf(d->unix_path, sizeof d->unix_path, "%s/parexd.sock", d->dir);
    if (!(f = fopen(cfg, "w")))
        die("config");
    /* The tests use the built-in sleep and fail, which parexd serves only when asked to. */
    fprintf(f, "{\"builtin_test_ops\":true%s%s", *config_json ? "," : "", config_json);
    if (with_unix)
        fprintf(f, ",\"listen_unix\":\"%s\"", d->unix_path);
    fprintf(f, "}\n");
    fclose(f);
    if (pipe2(pipefd, O_CLOEXEC))
        die("pipe");
    if ((d->pid = fork()) < 0)
        die("fork");
    if (d->pid == 0) {
        dup2(pipefd[1], 2);
        execl(PXT_PAREXD, PXT_PAREXD, "--config", cfg, "--listen", "127.0.0.1:0",
              "--metrics-listen", "127.0.0.1:0", (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    d->err_fd = pipefd[0];
    /* Readiness: the log line naming the port it chose. */
    regcomp(&rx, "listening for requests on ([0-9.]+:[0-9]+)", REG_EXTENDED);
    f = fdopen(dup(d->err_fd), "r");
    while (fgets(line, sizeof line, f)) {
        regmatch_t m[2];
        if (len + strlen(line) < sizeof text) {
            memcpy(text + len, line, strlen(line) + 1);
            len += strlen(line);
        }
        if (regexec(&rx, line, 2, m, 0) == 0) {
            snprintf(d->addr, sizeof d->addr, "%.*s", (int)(m[1].rm_eo - m[1].rm_so),
                     line + m[1].rm_so);
            break;
        }
    }
    regfree(&rx);
    if (!d->addr[0]) {
        fprintf(stderr, "pxdaemon: parexd did not start:\n%.*s\n", (int)len, text);
        abort();
    }
    /* The FILE may hold bytes read ahead; they are log lines, not needed. */
    fclose(f);
    if (pthread_create(&d->drain, NULL, drain, d))
        die("pthread_create");
}

int pxt_daemon_stop(pxt_daemon_t *d, int hard)
{
    int status = 0;
    char path[160];

    kill(d->pid, hard ? SIGKILL : SIGTERM);
    for (int i = 0; i < 1000; i++) { /* poll the exit for up to 10 s, then force it */
        if (waitpid(d->pid, &status, WNOHANG) == d->pid)
            goto reaped;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(d->pid, SIGKILL);
    waitpid(d->pid, &status, 0);
reaped:
    pthread_join(d->drain, NULL);
    close(d->err_fd);
    snprintf(path, sizeof path, "%s/parexd.json", d->dir);
    unlink(path);
    unlink(d->unix_path);
    rmdir(d->dir);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
