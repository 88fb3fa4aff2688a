"""Operator-side helpers for parexd's integration tests, built on pxharness.

- SysDaemon: pxharness.Daemon plus an environment, the metrics endpoint's address (read from the
  same readiness log line), HTTP helpers for /metrics, /stats and /healthz, and an optional
  command prefix (systemd-socket-activate).
- NotifySocket: plays systemd's part of sd_notify: an AF_UNIX datagram socket that a thread reads
  continuously (a full socket buffer would block the daemon in sendmsg), keeping every datagram
  with its arrival time.
- parse_metrics: the Prometheus text format as {(name, labels): value}.

Python 3 standard library only; nothing waits with a fixed sleep.
"""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pxharness as px

METRICS_RE = re.compile(r"metrics on (\[[^\]]+\]|[^\s,]+):(\d+)")


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close)."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def http_request(host, port, path, method="GET", timeout=px.TIMEOUT, headers=None):
    """One HTTP request on a fresh connection; returns (status, {header: value}, body bytes)."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


_LINE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, frozenset of (label, value))): float} for every sample line; fails on a line it
    cannot read (promtool checks the format; this only has to read it)."""
    out = {}
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = _LINE_RE.match(ln)
        if not m:
            raise AssertionError("unreadable metrics line: %r" % ln)
        labels = frozenset(_LABEL_RE.findall(m.group(2) or ""))
        key = (m.group(1), labels)
        if key in out:
            raise AssertionError("duplicate series: %r" % ln)
        out[key] = float(m.group(3))
    return out


def sample(metrics, name, **labels):
    """The value of one series; fails if it is missing."""
    key = (name, frozenset(labels.items()))
    if key not in metrics:
        raise AssertionError("series %s%r is missing" % (name, labels))
    return metrics[key]


def series(metrics, name):
    """{frozenset(labels): value} for every series of one metric name."""
    return {lab: v for (n, lab), v in metrics.items() if n == name}


def promtool_check(text):
    """Runs `promtool check metrics` on the text; returns (exit status, its output)."""
    p = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True,
                       timeout=px.TIMEOUT)
    return p.returncode, (p.stdout + p.stderr).decode()


class SysDaemon(px.Daemon):
    """pxharness.Daemon with an environment, the metrics address and an optional argv prefix.

    env: variables added to the test's environment. prefix: argv put before the parexd binary
    (for systemd-socket-activate). The other arguments are pxharness.Daemon's.
    """

    def __init__(self, args=(), config=None, listen="127.0.0.1:0", metrics_listen="127.0.0.1:0",
                 wait_ready=True, env=None, prefix=(), pass_fds=()):
        self.mhost = self.mport = None  # set by _wait_ready, which the base may call
        # With an auth_token, /stats wants it as a Bearer token.
        self.token = config.get("auth_token") if isinstance(config, dict) else None
        super().__init__(args, config, listen, metrics_listen, wait_ready, env, prefix, pass_fds)

    def write_config(self, config):
        """Rewrites the --config file (a dict as JSON, a str as is)."""
        tmp = self.config_path + ".new"
        if px.SETTINGS and isinstance(config, dict):
            config = dict(px.SETTINGS, **config)
        with open(tmp, "w") as f:
            f.write(config if isinstance(config, str) else json.dumps(config))
        os.replace(tmp, self.config_path)

    def _wait_ready(self):
        super()._wait_ready()
        m = self.wait_log(METRICS_RE.pattern)
        host = m.group(1)
        self.mhost = host[1:-1] if host.startswith("[") else host
        self.mport = int(m.group(2))
        if self.mport == 0:
            raise AssertionError("daemon reported metrics port 0: " + m.group(0))

    def wchan(self):
        """What the daemon's main (loop) thread is blocked in, from /proc."""
        try:
            with open("/proc/%d/wchan" % self.proc.pid) as f:
                return f.read().strip()
        except OSError:
            return ""

    @property
    def maddr(self):
        return "%s:%d" % (self.mhost, self.mport)

    def http(self, path, method="GET", timeout=px.TIMEOUT):
        auth = {"Authorization": "Bearer " + self.token} if self.token else None
        return http_request(self.mhost, self.mport, path, method, timeout, auth)

    def metrics_text(self):
        st, hdr, body = self.http("/metrics")
        if st != 200:
            raise AssertionError("/metrics answered %d: %r" % (st, body[:200]))
        return body.decode()

    def metrics(self):
        return parse_metrics(self.metrics_text())

    def hstats(self):
        """/stats over HTTP."""
        st, hdr, body = self.http("/stats")
        if st != 200:
            raise AssertionError("/stats answered %d: %r" % (st, body[:200]))
        return json.loads(body)

    def health(self):
        """(HTTP status, body text) of /healthz."""
        st, hdr, body = self.http("/healthz")
        return st, body.decode()

    def wait_hstats(self, cond, what="stats condition", timeout=px.TIMEOUT):
        """Polls /stats until cond(stats) is true; returns those stats."""
        box = {}

        def check():
            box["s"] = self.hstats()
            return cond(box["s"])

        try:
            px.wait_for(check, timeout, what, interval=0.005)
        except AssertionError as e:
            raise AssertionError("%s; last stats: %s" % (e, json.dumps(box.get("s"))))
        return box["s"]

    def wait_nth_log(self, pattern, n, timeout=px.TIMEOUT):
        """Waits until n stderr lines match the regex; returns the match of the nth."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [m for m in (rx.search(ln) for ln in self.lines) if m]
                if len(found) >= n:
                    return found[n - 1]
                left = deadline - time.monotonic()
                if self.stderr_closed or left <= 0:
                    raise AssertionError("no %d log lines matching %r (exit status %r); stderr:\n%s"
                                         % (n, pattern, self.proc.poll(), "\n".join(self.lines)))
                self.cond.wait(left)

    def log_count(self, pattern):
        rx = re.compile(pattern)
        with self.cond:
            return sum(1 for ln in self.lines if rx.search(ln))


FILLER = b"X_PXTEST_FILLER=1"


class NotifySocket:
    """systemd's end of sd_notify: a bound AF_UNIX datagram socket read by its own thread.

    read=False binds without reading yet: fill() then stuffs the receive queue so that the
    daemon's next sd_notify blocks in sendmsg (freezing its loop at that point), and start()
    begins reading (the filler datagrams are dropped)."""

    def __init__(self, read=True):
        self.dir = tempfile.mkdtemp(prefix="pxn-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.msgs = []  # (monotonic time, {field: value}, raw text)
        self.cond = threading.Condition()
        self.closed = False
        self.thread = None
        if read:
            self.start()

    def start(self):
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def fill(self):
        """Fills the receive queue (net.unix.max_dgram_qlen datagrams): the next sender that
        does not use MSG_DONTWAIT blocks until start() reads."""
        senders = []
        try:
            while len(senders) < 256:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.setblocking(False)
                senders.append(s)
                n = 0
                try:
                    while True:
                        s.sendto(FILLER, self.path)
                        n += 1
                except BlockingIOError:
                    pass
                if n == 0:  # a fresh sender cannot add one: the queue itself is full
                    return
            raise AssertionError("could not fill the notify socket's queue")
        finally:
            for s in senders:
                s.close()  # the datagrams already queued stay queued

    def _read(self):
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if data == FILLER:
                continue
            t = time.monotonic()
            text = data.decode("utf-8", "replace")
            fields = {}
            for ln in text.split("\n"):
                if "=" in ln:
                    k, v = ln.split("=", 1)
                    fields[k] = v
            with self.cond:
                self.msgs.append((t, fields, text))
                self.cond.notify_all()

    def snapshot(self):
        with self.cond:
            return list(self.msgs)

    def wait(self, pred, start=0, timeout=px.TIMEOUT, what="notify message"):
        """Waits for a message at index >= start with pred(fields) true; returns its index."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(start, len(self.msgs)):
                    if pred(self.msgs[i][1]):
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out after %.1f s waiting for %s; got %r"
                                         % (timeout, what, [m[2] for m in self.msgs[start:]]))
                self.cond.wait(left)

    def close(self):
        self.closed = True
        if self.thread:
            self.thread.join(px.TIMEOUT)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def nofile_prefix(n):
    """argv prefix that sets RLIMIT_NOFILE in the child, then execs parexd. This is what a
    preexec_fn would do, as an argv prefix SysDaemon accepts; exec keeps the pid, so
    proc.pid is parexd's."""
    return [sys.executable, "-c",
            "import os, resource, sys\n"
            "n = int(sys.argv[1])\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))\n"
            "os.execv(sys.argv[2], sys.argv[2:])\n", str(n)]


def vm_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)
