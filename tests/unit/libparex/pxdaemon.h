/* A parexd for libparex's tests: started on 127.0.0.1 port 0 with a config written to a
 * temporary directory, ready once it logs the address it listens on, stopped with SIGTERM
 * (SIGKILL after 10 s). Its stderr is drained by a thread so it can never block on the pipe. */
#ifndef PXT_DAEMON_H
#define PXT_DAEMON_H

#include <pthread.h>
#include <sys/types.h>

typedef struct pxt_daemon {
    pid_t pid;
    int err_fd;
    pthread_t drain;
    char addr[64]; /* HOST:PORT */
    char dir[64];  /* its temporary directory (config, unix socket) */
    char unix_path[128];
} pxt_daemon_t;

/* config_json: extra config members without braces ("" for none), e.g. "\"workers\":1".
 * with_unix: also listen on dir/parexd.sock. Aborts the test on failure. */
void pxt_daemon_start(pxt_daemon_t *d, const char *config_json, int with_unix);
/* SIGTERM (or SIGKILL when hard), then reaps it; returns its exit status (128+sig if killed). */
int pxt_daemon_stop(pxt_daemon_t *d, int hard);

#endif
