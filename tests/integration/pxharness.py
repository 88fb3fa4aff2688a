"""Shared harness for parexd's integration tests (Python 3 standard library only).

Each test starts the real daemon on 127.0.0.1 port 0 (the metrics endpoint too), waits for the
"listening for requests on HOST:PORT" log line as its readiness signal, talks to it over real
sockets, and stops it with SIGTERM (SIGKILL only if it will not go). Nothing waits with a fixed
sleep: conditions are polled against a deadline.

A test script is run as
    python3 test_x.py --parexd PATH --parexctl PATH [unittest arguments]
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

PAREXD = None
PAREXCTL = None

# How long any single wait may take before the test fails rather than hangs.
TIMEOUT = 10.0

# Config keys every Daemon of the calling test module gets (a test's own config wins). A module
# that uses the built-in test ops says so: px.SETTINGS.update(builtin_test_ops=True); one that
# pipelines more than the default max_in_flight_per_connection raises that explicitly.
SETTINGS = {}

LISTEN_RE = re.compile(r"listening for requests on (\[[^\]]+\]|[^\s,]+):(\d+)")


def main():
    """Parses the binary paths, then runs the calling module's unittest cases."""
    global PAREXD, PAREXCTL
    ap = argparse.ArgumentParser()
    ap.add_argument("--parexd", required=True)
    ap.add_argument("--parexctl", required=True)
    args, rest = ap.parse_known_args()
    PAREXD = os.path.abspath(args.parexd)
    PAREXCTL = os.path.abspath(args.parexctl)
    unittest.main(module="__main__", argv=[sys.argv[0], "-v"] + rest)


def wait_for(cond, timeout=TIMEOUT, what="condition", interval=0.005):
    """Polls cond() until it returns a true value (returned), or fails after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        time.sleep(interval)  # polling interval, not synchronisation


class Conn:
    """One client connection with line-oriented helpers."""

    def __init__(self, host, port, timeout=TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout

    def send_raw(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def send(self, *objs):
        """Sends each object as one JSON line, all in one write."""
        self.send_raw("".join(json.dumps(o) + "\n" for o in objs))

    def recv_line(self, timeout=None):
        """The next line without its newline (bytes). Raises TimeoutError or EOFError."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete line within the timeout; have %r" % self.buf[:200])
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise EOFError("connection closed; unterminated rest %r" % self.buf[:200])
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def recv(self, timeout=None):
        line = self.recv_line(timeout)
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise AssertionError("response is not JSON: %r (%s)" % (line, e))
        if not isinstance(obj, dict):
            raise AssertionError("response is not a JSON object: %r" % line)
        return obj

    def recv_n(self, n, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        return [self.recv(max(0.001, deadline - time.monotonic())) for _ in range(n)]

    def request(self, obj, timeout=None):
        self.send(obj)
        return self.recv(timeout)

    def nothing_pending(self, wait=0.0):
        """True when no byte is buffered or arrives within wait seconds."""
        if self.buf:
            return False
        self.sock.settimeout(wait if wait > 0 else 0.000001)
        try:
            chunk = self.sock.recv(65536, socket.MSG_PEEK)
        except (socket.timeout, BlockingIOError):
            return True
        finally:
            self.sock.settimeout(self.timeout)
        return False if chunk else True

    def wait_eof(self, timeout=None):
        """Reads until the peer closes; returns the complete lines that came before the close."""
        lines = []
        while True:
            try:
                lines.append(self.recv_line(timeout))
            except EOFError:
                return lines

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self):
        """Closes with an RST instead of a FIN (SO_LINGER 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Daemon:
    """A parexd process in its own temporary directory.

    config: a dict (written as JSON) or a str (written as is) for --config, or None.
    args: further command-line arguments. listen/metrics_listen: passed as flags unless None.
    env: variables added to the test's environment (minus any systemd or fault-injection ones
    the test runner itself may carry). prefix: argv put before the parexd binary. pass_fds:
    descriptors of the test that parexd inherits (as from a careless launcher).
    """

    SCRUBBED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                    "LISTEN_FDNAMES", "JOURNAL_STREAM", "PAREXD_FAULT_INJECTION", "PAREXD_CONFIG")

    def __init__(self, args=(), config=None, listen="127.0.0.1:0", metrics_listen="127.0.0.1:0",
                 wait_ready=True, env=None, prefix=(), pass_fds=()):
        self.tmp = tempfile.mkdtemp(prefix="parexd-test-")
        self.config_path = None
        argv = list(prefix) + [PAREXD]
        if SETTINGS and (config is None or isinstance(config, dict)):
            config = dict(SETTINGS, **(config or {}))
        if config is not None:
            self.config_path = os.path.join(self.tmp, "parexd.json")
            with open(self.config_path, "w") as f:
                f.write(config if isinstance(config, str) else json.dumps(config))
            argv += ["--config", self.config_path]
        if listen is not None:
            argv += ["--listen", listen]
        if metrics_listen is not None:
            argv += ["--metrics-listen", metrics_listen]
        argv += list(args)
        e = {k: v for k, v in os.environ.items() if k not in self.SCRUBBED_ENV}
        if config is None:
            # Without --config parexd reads the installed default config when present: point it
            # at an empty one, so that what this machine has installed cannot change the test.
            e["PAREXD_CONFIG"] = os.path.join(self.tmp, "empty.json")
            with open(e["PAREXD_CONFIG"], "w") as f:
                f.write("{}")
        e.update(env or {})
        self.argv = argv
        self.lines = []
        self.cond = threading.Condition()
        self.stderr_closed = False
        self.host = self.port = None
        self.proc = subprocess.Popen(argv, cwd=self.tmp, env=e, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     pass_fds=pass_fds)
        self.reader = threading.Thread(target=self._read_stderr, daemon=True)
        self.reader.start()
        self.stdout = b""
        if wait_ready:
            try:
                self._wait_ready()
            except BaseException:
                self.kill()
                raise

    def _read_stderr(self):
        for raw in self.proc.stderr:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.stderr_closed = True
            self.cond.notify_all()

    def stderr_text(self):
        with self.cond:
            return "\n".join(self.lines)

    def wait_log(self, pattern, timeout=TIMEOUT):
        """Waits for a stderr line matching the regex; returns its match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ln in self.lines:
                    m = rx.search(ln)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if self.stderr_closed or left <= 0:
                    raise AssertionError("no log line matching %r (exit status %r); stderr:\n%s"
                                         % (pattern, self.proc.poll(), "\n".join(self.lines)))
                self.cond.wait(left)

    def _wait_ready(self):
        m = self.wait_log(LISTEN_RE.pattern)
        host = m.group(1)
        self.host = host[1:-1] if host.startswith("[") else host
        self.port = int(m.group(2))
        if self.port == 0:
            raise AssertionError("daemon reported port 0: " + m.group(0))

    @property
    def pid(self):
        return self.proc.pid

    def connect(self, timeout=TIMEOUT):
        return Conn(self.host, self.port, timeout)

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    def stats(self):
        with self.connect() as c:
            r = c.request({"control": "stats"})
        if r.get("status") != "ok":
            raise AssertionError("stats control line answered %r" % r)
        return r["result"]

    def wait_stats(self, cond, what="stats condition", timeout=TIMEOUT):
        """Polls stats until cond(stats) is true; returns those stats."""
        box = {}

        def check():
            box["s"] = self.stats()
            return cond(box["s"])

        try:
            wait_for(check, timeout, what, interval=0.01)
        except AssertionError as e:
            raise AssertionError("%s; last stats: %s" % (e, json.dumps(box.get("s"))))
        return box["s"]

    def wait_idle(self, timeout=TIMEOUT):
        """Waits until nothing is queued or running; returns the stats."""
        return self.wait_stats(lambda s: s["in_flight"] == 0, "in_flight == 0", timeout)

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=TIMEOUT):
        """Waits for the process to exit; returns its status (fails the test on a timeout)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("parexd did not exit within %.1f s; stderr:\n%s"
                                 % (timeout, self.stderr_text()))
        self.reader.join(TIMEOUT)
        if self.proc.stdout:
            self.stdout = self.proc.stdout.read()
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._cleanup()

    def stop(self, expect=0, timeout=TIMEOUT):
        """SIGTERM, then SIGKILL after timeout. Fails the test unless the exit status is expect
        (a crash, a sanitizer report or a hang on the way out must not pass unnoticed)."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    raise AssertionError("parexd ignored SIGTERM for %.1f s; stderr:\n%s"
                                         % (timeout, self.stderr_text()))
            self.reader.join(TIMEOUT)
            rc = self.proc.returncode
            if expect is not None and rc != expect:
                raise AssertionError("parexd exited with %r, expected %r; stderr:\n%s"
                                     % (rc, expect, self.stderr_text()))
            return rc
        finally:
            self._cleanup()

    def _cleanup(self):
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.stop()
        else:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._cleanup()
        return False


def run_threads(fn, n):
    """Runs fn(i) in n threads started together; re-raises the first failure."""
    errors = []
    barrier = threading.Barrier(n)

    def body(i):
        try:
            barrier.wait(TIMEOUT)
            fn(i)
        except BaseException as e:  # reported on the main thread
            errors.append(e)

    ts = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    if errors:
        raise errors[0]


def per_key_order_run(tc, d, conns=16, keys=32, per_conn=400, batch=40):
    """From conns connections at once, sends per_conn requests each over keys keys (about 5% of
    them a 1 ms sleep), in several writes so the daemon's reads interleave. Asserts that each
    connection gets every answer, ok, carrying its own payload, and per key in send order.
    Returns the (key, answer) pairs, for the caller's own checks."""
    results = {}

    def client(ci):
        rnd = random.Random(ci)
        seq, reqs, meta = {}, [], {}
        for i in range(per_conn):
            k = "ord-%d" % rnd.randrange(keys)
            s = seq.get(k, 0)
            seq[k] = s + 1
            rid = "%d-%d" % (ci, i)
            meta[rid] = (k, s)
            if rnd.random() < 0.05:  # now and then a request that takes a moment
                reqs.append({"key": k, "id": rid, "op": "sleep", "payload": {"ms": 1}})
            else:
                reqs.append({"key": k, "id": rid, "payload": {"c": ci, "k": k, "seq": s}})
        with d.connect(timeout=30) as c:
            for i in range(0, per_conn, batch):
                c.send(*reqs[i:i + batch])
            results[ci] = (meta, c.recv_n(per_conn, timeout=30))

    run_threads(client, conns)
    answers = []
    for ci in range(conns):
        meta, rs = results[ci]
        tc.assertEqual(sorted(r["id"] for r in rs), sorted(meta))
        last = {}
        for r in rs:
            tc.assertEqual(r["status"], "ok", r)
            k, s = meta[r["id"]]
            if "seq" in (r["result"] or {}):
                tc.assertEqual(r["result"], {"c": ci, "k": k, "seq": s})
            # On this connection, answers for a key come back in the order they were sent.
            tc.assertEqual(s, last.get(k, -1) + 1, "connection %d key %s: %r" % (ci, k, r))
            last[k] = s
            answers.append((k, r))
    return answers


def same_key_runs(tc, d, conns=6, per_conn=3, ms=60):
    """From conns connections at once, sends per_conn sleeps of ms on one key. Asserts every
    answer ok and the runs one at a time: laid end to end they take at least their sum, and none
    starts before the previous one ended. Returns the runs as (start, end, answer, t_last)."""
    spans, lock = [], threading.Lock()
    t_first = time.monotonic()

    def client(ci):
        with d.connect() as c:
            reqs = [{"key": "hot-seq", "id": "%d-%d" % (ci, i), "op": "sleep",
                     "payload": {"ms": ms}} for i in range(per_conn)]
            t_send = time.monotonic()
            c.send(*reqs)
            rs = c.recv_n(per_conn)
            t_last = time.monotonic()
        with lock:
            for r in rs:
                # The daemon read the line no earlier than we sent it, so its run started no
                # earlier than t_send + queue_ms (and at most a read's delay later).
                start = t_send + r["queue_ms"] / 1000
                spans.append((start, start + r["run_ms"] / 1000, r, t_last))

    run_threads(client, conns)
    t_end = max(s[3] for s in spans)
    tc.assertEqual(len(spans), conns * per_conn)
    for s in spans:
        tc.assertEqual(s[2]["status"], "ok", s[2])
    # One at a time: the runs laid end to end take at least their sum...
    tc.assertGreaterEqual(t_end - t_first, conns * per_conn * ms / 1000 * 0.98)
    # ...and no run starts before the previous one ended (within the read-delay slack).
    spans.sort(key=lambda s: s[0])
    for a, b in zip(spans, spans[1:]):
        tc.assertGreaterEqual(b[0], a[1] - 0.03, "runs overlap: %r and %r" % (a[2], b[2]))
    return spans


def run_parexctl(*args, input=None, env=None, timeout=TIMEOUT):
    """Runs parexctl; returns (exit status, stdout text, stderr text)."""
    e = dict(os.environ)
    e.pop("PAREXD_ADDR", None)
    e.pop("PAREXD_METRICS_ADDR", None)
    if env:
        e.update(env)
    p = subprocess.run([PAREXCTL] + [str(a) for a in args], input=input, env=e,
                       capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


_route_cache = {}


def route(key, workers):
    """The worker parexctl says owns key for that worker count."""
    k = (key, workers)
    if k not in _route_cache:
        rc, out, err = run_parexctl("route", key, "--workers", workers)
        if rc != 0:
            raise AssertionError("parexctl route %s --workers %d: %d %s" % (key, workers, rc, err))
        _route_cache[k] = int(out.strip())
    return _route_cache[k]


def keys_by_worker(workers, prefix="k", need=1):
    """{worker: [keys...]} with at least `need` keys for every worker, found with parexctl route."""
    out = {w: [] for w in range(workers)}
    i = 0
    while any(len(v) < need for v in out.values()):
        key = "%s%d" % (prefix, i)
        out[route(key, workers)].append(key)
        i += 1
        if i > 10000:
            raise AssertionError("could not find keys for every worker")
    return out


class Accounting:
    """Mixin: the accounting invariant, checked on any stats document."""

    def assertAccounting(self, s):
        self.assertTrue(s["invariant_holds"], s)
        self.assertEqual(s["received"], s["rejected"] + s["ok"] + s["failed"] + s["in_flight"], s)
        self.assertEqual(s["rejected"], sum(s["rejected_by_reason"].values()), s)
        self.assertEqual(s["accepted"], s["ok"] + s["failed"] + s["in_flight"], s)
