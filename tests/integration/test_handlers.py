"""Configured handlers on loopback with real programs, a real HTTP server and real plugins: exec
(JSON and text output, exit status and stderr tail, signals, output cap, timeout that kills a
process group that ignores SIGTERM, no zombies, no leaked fds), http (200, text, 500, timeout,
connection refused, the key header, keep-alive measured by the server), plugins (the example;
wrong ABI and missing entry symbol stop start-up with exit 78), bad definitions (exit 78, one
line naming the key), handler names that need escaping in /metrics, and the policies: deadlines
in the queue, while waiting for a slot or a token and while running, cancellation of queued and
running requests, retries that keep the key's place in line, max_concurrency and rate_limit
observed by the upstream. Per-key order is checked in every test, and each test ends by checking
the per-handler counters in /stats and /metrics (and promtool on that scrape).

Run as
    python3 test_handlers.py --parexd PATH --parexctl PATH --example-plugin PATH
                             --bad-abi-plugin PATH --no-entry-plugin PATH --slow-plugin PATH
                             [unittest arguments]
"""

import argparse
import collections
import ctypes
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pxharness as px
import pxsys

HERE = os.path.dirname(os.path.abspath(__file__))
PROG = os.path.join(HERE, "handler_prog.py")
FLAKY = os.path.join(HERE, "flaky.sh")
PLUGINS = {}  # "example", "bad_abi", "no_entry": paths of the built shared objects
CODES = ("handler_error", "timeout", "deadline_exceeded", "other")
EXEC_PATH = "/usr/local/bin:/usr/bin:/bin"

# Orphans of parexd's exec children are re-parented to this test process (see main), so the
# test can reap them and see how they died instead of guessing from a pid that may be a zombie.
SUBREAPER = False


def exec_def(mode, state=None, **opts):
    argv = [sys.executable, "-I", "-S", PROG, mode] + ([state] if state else [])
    d = {"type": "exec", "argv": argv}
    d.update(opts)
    return d


def proc_stat(pid):
    """(state letter, ppid) of a process, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return rest[0], int(rest[1])


def children_of(pid):
    """[(pid, state)] of every process whose parent is pid (zombies included)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st and st[1] == pid:
                out.append((int(name), st[0]))
    return out


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def compact(v):
    return json.dumps(v, separators=(",", ":"))


class Upstream:
    """A local HTTP/1.1 server (keep-alive, Content-Length on every answer) on port 0 in threads
    of the test. It records every request with its arrival time, counts TCP connections, and
    tracks how many requests of each path are in flight at once.

    Paths: /ok answers 200 {"echo": request body, "key": X-Parexd-Key}; /text 200 text/plain;
    /fail 500; /slow holds the answer until the test ends; /work?ms=N holds it N ms (the
    upstream's own service time)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = []
        self.inflight = collections.Counter()
        self.max_inflight = collections.Counter()
        self.slow_release = threading.Event()
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # One write per answer and no Nagle: no delayed-ACK stall in the measurements.
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def setup(self):
                super().setup()
                with up.lock:
                    up.connections += 1

            def log_message(self, *args):
                pass

            def do_POST(self):
                up.serve(self)

            do_PUT = do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def serve(self, h):
        body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        now = time.monotonic()
        u = urlsplit(h.path)
        rec = {"t": now, "path": u.path, "method": h.command,
               "headers": {k.lower(): v for k, v in h.headers.items()}, "body": json.loads(body)}
        with self.lock:
            self.requests.append(rec)
            self.inflight[u.path] += 1
            self.max_inflight[u.path] = max(self.max_inflight[u.path], self.inflight[u.path])
        status, ctype, out = 200, "application/json", b"{}"
        try:
            if u.path == "/ok":
                out = compact({"echo": rec["body"], "key": h.headers.get("X-Parexd-Key")}).encode()
            elif u.path == "/text":
                ctype, out = "text/plain", b"plain text body"
            elif u.path == "/fail":
                status, ctype, out = 500, "text/plain", b"upstream broke on purpose"
            elif u.path == "/slow":
                self.slow_release.wait(px.TIMEOUT)
            elif u.path.startswith("/work"):
                self.slow_release.wait(float(parse_qs(u.query)["ms"][0]) / 1000.0)
                out = compact({"worked": rec["body"]["id"]}).encode()
            else:
                status, out = 404, b"{}"
        finally:
            # Out of flight before the answer leaves, so the next caller cannot overlap it.
            with self.lock:
                self.inflight[u.path] -= 1
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(out)))
            h.end_headers()
            h.wfile.write(out)
            h.wfile.flush()
        except OSError:
            pass  # the daemon gave up on this one (timeout)

    def recorded(self, path=None):
        with self.lock:
            return [r for r in self.requests if path is None or r["path"] == path]

    def close(self):
        self.slow_release.set()
        self.server.shutdown()
        self.server.server_close()


class HandlerTestCase(px.Accounting, unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="parexd-handlers-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def start(self, handlers, workers=4, env=None):
        d = pxsys.SysDaemon(config={"workers": workers, "handlers": handlers}, env=env)
        self.addCleanup(d.kill)  # only acts if the test failed before its own stop
        return d

    def upstream(self):
        up = Upstream()
        self.addCleanup(up.close)
        return up

    def path(self, name):
        return os.path.join(self.tmp, name)

    def exchange(self, conn, reqs, timeout=px.TIMEOUT):
        """Sends the requests in one write; returns (answers in arrival order, {id: answer})."""
        conn.send(*reqs)
        answers = conn.recv_n(len(reqs), timeout)
        by_id = {a["id"]: a for a in answers}
        self.assertEqual(len(by_id), len(reqs), answers)
        return answers, by_id

    def assertKeyOrder(self, sent, answers):
        """Answers of the same key arrived in the order their requests were sent."""
        pos = {a["id"]: i for i, a in enumerate(answers)}
        by_key = collections.defaultdict(list)
        for r in sent:
            if r["id"] in pos:
                by_key[r["key"]].append(r["id"])
        for key, ids in by_key.items():
            self.assertEqual(sorted(ids, key=lambda i: pos[i]), ids,
                             "answers of key %r out of send order" % key)

    def assertOk(self, a):
        self.assertEqual(a.get("status"), "ok", a)
        return a["result"]

    def assertFailed(self, a, code, *words):
        self.assertEqual(a.get("status"), "failed", a)
        self.assertEqual(a["error"]["code"], code, a)
        for w in words:
            self.assertIn(w, a["error"]["message"], a)
        return a["error"]["message"]

    def assertKilled(self, pid, what):
        """pid ends dead, killed by SIGKILL when it came to us to reap; kills it if not."""
        box = {}

        def dead():
            if SUBREAPER:
                try:
                    got, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    got = None
                if got == pid:
                    box["status"] = status
                    return True
            st = proc_stat(pid)
            return st is None or st[0] in "ZX"

        try:
            px.wait_for(dead, what="%s (pid %d) to be killed" % (what, pid))
        except AssertionError:
            os.kill(pid, signal.SIGKILL)
            raise
        if "status" in box:
            self.assertTrue(os.WIFSIGNALED(box["status"]) and
                            os.WTERMSIG(box["status"]) == signal.SIGKILL,
                            "%s ended with wait status %#x, not SIGKILL" % (what, box["status"]))
            with self.assertRaises(ProcessLookupError, msg="%s still exists" % what):
                os.kill(pid, 0)

    def assertNoChildren(self, d):
        """parexd has no child left: every program it ran was reaped (no zombies)."""
        box = {}

        def none():
            box["c"] = children_of(d.pid)
            return not box["c"]

        try:
            px.wait_for(none, timeout=2.0, what="parexd to have no child processes")
        except AssertionError:
            raise AssertionError("children of parexd (pid, state): %r" % box["c"])

    def assertHandler(self, d, name, requests, ok, failed=None, attempts=None, htype=None):
        """/stats and /metrics report exactly these counters for handler name (daemon idle),
        and promtool finds the scrape clean."""
        fails = dict.fromkeys(CODES, 0)
        fails.update(failed or {})
        attempts = requests if attempts is None else attempts
        s = d.hstats()
        self.assertAccounting(s)
        hs = [h for h in s["handlers"] if h["name"] == name]
        self.assertEqual(len(hs), 1, s["handlers"])
        h = hs[0]
        if htype:
            self.assertEqual(h["type"], htype, h)
        self.assertEqual((h["requests"], h["ok"], h["failed"], h["attempts"], h["concurrency"]),
                         (requests, ok, fails, attempts, 0), h)
        text = d.metrics_text()
        m = pxsys.parse_metrics(text)
        self.assertEqual(pxsys.sample(m, "parexd_handler_requests_total", handler=name), requests)
        for code, n in fails.items():
            self.assertEqual(pxsys.sample(m, "parexd_handler_failures_total", handler=name,
                                          code=code), n, code)
        self.assertEqual(pxsys.sample(m, "parexd_handler_attempts_total", handler=name), attempts)
        self.assertEqual(pxsys.sample(m, "parexd_handler_concurrency", handler=name), 0)
        self.assertEqual(pxsys.sample(m, "parexd_handler_run_seconds_count", handler=name),
                         attempts)
        self.assertEqual(pxsys.sample(m, "parexd_handler_run_seconds_bucket", handler=name,
                                      le="+Inf"), attempts)
        self.assertEqual(pxsys.promtool_check(text), (0, ""))
        return h, m

    def assertStartupRefused(self, handlers, *words):
        """parexd with these handlers exits 78 with one line on stderr holding every word."""
        d = pxsys.SysDaemon(config={"handlers": handlers}, wait_ready=False)
        self.addCleanup(d.kill)
        rc = d.wait_exit()
        lines = [ln for ln in d.stderr_text().splitlines() if ln.strip()]
        self.assertEqual(rc, 78, "stderr: %r" % lines)
        self.assertEqual(len(lines), 1, "one line on stderr: %r" % lines)
        for w in words:
            self.assertIn(w, lines[0])
        return lines[0]


class ExecTest(HandlerTestCase):
    def test_exec_results_failures_and_output_cap(self):
        d = self.start({
            "ejson": exec_def("json", env={"MODE": "test"}),
            "etext": exec_def("text"),
            "eexit": exec_def("exit"),
            "esig": exec_def("signal"),
            "ebig": exec_def("big", max_output_bytes=1000),
            "emissing": {"type": "exec", "argv": [self.path("no-such-program")]},
        }, env={"PAREXD_TEST_SECRET": "must not reach the program"})
        bulk = "y" * 300000  # several times a pipe's buffer: the daemon must keep writing
        noise = "x" * 1000
        reqs = [
            {"key": "e", "id": "j1", "op": "ejson", "payload": {"a": [1, 2], "s": "é"}},
            {"key": "e", "id": 7, "op": "ejson"},
            {"key": "e", "id": "t1", "op": "etext"},
            {"key": "e", "id": "x1", "op": "eexit",
             "payload": {"status": 3, "stderr": "early line\n" + noise + "\nthe real reason\n"}},
            {"key": "e", "id": "s1", "op": "esig", "payload": {"signal": 9}},
            {"key": "e", "id": "b1", "op": "ebig", "payload": {"bytes": 5000}},
            {"key": "e", "id": "b2", "op": "ebig", "payload": {"bytes": 500}},
            {"key": "e", "id": "m1", "op": "emissing"},
            {"key": "e", "id": "bulk", "op": "ejson", "payload": bulk},
        ]
        with d.connect() as c:
            c.request({"key": "warm", "op": "echo"})
            fds_before = fd_count(d.pid)
            answers, a = self.exchange(c, reqs)
            self.assertKeyOrder(reqs, answers)

            r = self.assertOk(a["j1"])
            self.assertEqual(r["got"], {"id": "j1", "key": "e", "op": "ejson",
                                        "payload": {"a": [1, 2], "s": "é"}})
            self.assertEqual(r["env"].get("PATH"), EXEC_PATH, r["env"])
            self.assertEqual(r["env"].get("MODE"), "test", r["env"])
            # Exactly PATH and env (Python may add LC_CTYPE itself under the C locale).
            self.assertEqual(set(r["env"]) - {"LC_CTYPE"}, {"PATH", "MODE"}, r["env"])
            self.assertEqual(r["fds"], [], "daemon fds leaked into the program")
            self.assertEqual(self.assertOk(a[7])["got"]["id"], 7)
            self.assertEqual(self.assertOk(a["t1"]), "plain words, not JSON")

            msg = self.assertFailed(a["x1"], "handler_error", "status 3", "the real reason")
            self.assertNotIn("early line", msg, "only the tail of stderr belongs in the message")
            self.assertLess(len(msg), 600, msg)
            self.assertFailed(a["s1"], "handler_error", "signal 9")
            self.assertFailed(a["b1"], "handler_error", "max_output_bytes", "1000")
            self.assertEqual(self.assertOk(a["b2"]), "x" * 500)
            self.assertFailed(a["m1"], "handler_error", "cannot run", "no-such-program")
            self.assertEqual(self.assertOk(a["bulk"])["got"]["payload"], bulk)

            self.assertNoChildren(d)
            px.wait_for(lambda: fd_count(d.pid) == fds_before, timeout=2.0,
                        what="parexd's fd count back to %d (now %d)"
                        % (fds_before, fd_count(d.pid)))
        self.assertHandler(d, "ejson", 3, 3, htype="exec")
        self.assertHandler(d, "emissing", 1, 0, {"handler_error": 1})
        self.assertHandler(d, "etext", 1, 1)
        self.assertHandler(d, "eexit", 1, 0, {"handler_error": 1})
        self.assertHandler(d, "esig", 1, 0, {"handler_error": 1})
        self.assertHandler(d, "ebig", 2, 1, {"handler_error": 1})
        d.stop()

    def test_argv0_is_looked_up_in_the_childs_path(self):
        # issue 18 item 8: a bare argv[0] is found through the program's PATH (the documented
        # default, or env.PATH), never through parexd's own.
        bindir = self.path("bin")
        os.mkdir(bindir)
        with open(os.path.join(bindir, "px-only-here"), "w") as f:
            f.write("#!/bin/sh\necho found-in-env-path\n")
        os.chmod(os.path.join(bindir, "px-only-here"), 0o755)
        d = self.start({"dflt": {"type": "exec", "argv": ["true"]},
                        "mine": {"type": "exec", "argv": ["px-only-here"],
                                 "env": {"PATH": "/nonexistent:" + bindir}},
                        "absent": {"type": "exec", "argv": ["px-only-here"]}},
                       env={"PATH": "/nonexistent:" + bindir})
        with d.connect() as c:
            _, a = self.exchange(c, [{"key": "p", "id": i, "op": op}
                                     for i, op in enumerate(("dflt", "mine", "absent"))])
        self.assertEqual(self.assertOk(a[0]), "")
        self.assertEqual(self.assertOk(a[1]), "found-in-env-path")
        # parexd's own PATH holds it, the program's default PATH does not: not found.
        self.assertFailed(a[2], "handler_error", "px-only-here")
        d.stop()

    def test_timeout_kills_a_process_group_that_ignores_sigterm(self):
        d = self.start({"orphan": exec_def("orphan", self.tmp, timeout_ms=1000),
                        "ejson": exec_def("json")})
        reqs = [{"key": "t", "id": "o1", "op": "orphan"},
                {"key": "t", "id": "after", "op": "ejson"}]
        with d.connect() as c:
            c.request({"key": "warm", "op": "echo"})
            fds_before = fd_count(d.pid)
            answers, a = self.exchange(c, reqs)
            self.assertKeyOrder(reqs, answers)
            self.assertFailed(a["o1"], "timeout", "killed")
            self.assertGreaterEqual(a["o1"]["run_ms"], 950, a["o1"])
            self.assertLess(a["o1"]["run_ms"], 3000, a["o1"])
            self.assertOk(a["after"])
            pids = {}
            for who in ("parent", "child"):
                p = self.path(who + ".pid")
                self.assertTrue(os.path.exists(p), "the program never wrote %s" % p)
                with open(p) as f:
                    pids[who] = int(f.read())
            self.assertKilled(pids["parent"], "the timed-out program")
            self.assertKilled(pids["child"], "the child it forked")
            self.assertNoChildren(d)
            px.wait_for(lambda: fd_count(d.pid) == fds_before, timeout=2.0,
                        what="parexd's fd count back to %d" % fds_before)
        self.assertHandler(d, "orphan", 1, 0, {"timeout": 1})
        d.stop()

    def test_what_a_program_leaves_running_is_swept(self):
        d = self.start({"sweep": exec_def("sweep", self.tmp, timeout_ms=5000)})
        with d.connect() as c:
            r = self.assertOk(c.request({"key": "w", "id": "s", "op": "sweep"}))
            self.assertIn("parent", r)
            with open(self.path("swept.pid")) as f:
                self.assertKilled(int(f.read()), "the background child of a program that exited")
            self.assertNoChildren(d)
        self.assertHandler(d, "sweep", 1, 1)
        d.stop()


class HttpTest(HandlerTestCase):
    def test_http_200_text_500_timeout_and_refused(self):
        up = self.upstream()
        refused = socket.socket()  # bound, never listening: connecting is refused
        refused.bind(("127.0.0.1", 0))
        self.addCleanup(refused.close)
        rport = refused.getsockname()[1]
        d = self.start({
            "hok": {"type": "http", "url": up.url("/ok"), "headers": {"Authorization": "Bearer t"}},
            "htext": {"type": "http", "url": up.url("/text"), "method": "PUT"},
            "hfail": {"type": "http", "url": up.url("/fail")},
            "hslow": {"type": "http", "url": up.url("/slow"), "timeout_ms": 300},
            "hrefused": {"type": "http", "url": "http://127.0.0.1:%d/x" % rport,
                         "timeout_ms": 2000},
        })
        key = "user 42/é%"
        reqs = [
            {"key": key, "id": "ok1", "op": "hok", "payload": {"n": 1}},
            {"key": key, "id": "txt", "op": "htext"},
            {"key": key, "id": "500", "op": "hfail"},
            {"key": key, "id": "slow", "op": "hslow"},
            {"key": key, "id": "refused", "op": "hrefused"},
            {"key": key, "id": "ok2", "op": "hok", "payload": {"n": 2}},
        ]
        with d.connect() as c:
            answers, a = self.exchange(c, reqs)
        self.assertKeyOrder(reqs, answers)
        encoded = "user%2042/%C3%A9%25"
        self.assertEqual(self.assertOk(a["ok1"]),
                         {"echo": {"id": "ok1", "key": key, "op": "hok", "payload": {"n": 1}},
                          "key": encoded})
        self.assertEqual(self.assertOk(a["ok2"])["echo"]["payload"], {"n": 2})
        self.assertEqual(self.assertOk(a["txt"]), "plain text body")
        self.assertFailed(a["500"], "handler_error", "500", "upstream broke on purpose")
        self.assertFailed(a["slow"], "timeout", "300 ms")
        self.assertGreaterEqual(a["slow"]["run_ms"], 290, a["slow"])
        self.assertLess(a["slow"]["run_ms"], 2000, a["slow"])
        self.assertFailed(a["refused"], "handler_error", str(rport))
        self.assertLess(a["refused"]["run_ms"], 1000, a["refused"])

        seen = up.recorded()
        self.assertEqual([r["body"]["id"] for r in seen], ["ok1", "txt", "500", "slow", "ok2"])
        ok1 = seen[0]
        self.assertEqual(ok1["method"], "POST")
        self.assertEqual(ok1["headers"].get("x-parexd-key"), encoded)
        self.assertEqual(ok1["headers"].get("authorization"), "Bearer t")
        self.assertEqual(ok1["headers"].get("content-type"), "application/json")
        self.assertEqual(seen[1]["method"], "PUT")
        self.assertNotIn("authorization", seen[1]["headers"])

        self.assertHandler(d, "hok", 2, 2, htype="http")
        self.assertHandler(d, "htext", 1, 1)
        self.assertHandler(d, "hfail", 1, 0, {"handler_error": 1})
        self.assertHandler(d, "hslow", 1, 0, {"timeout": 1})
        self.assertHandler(d, "hrefused", 1, 0, {"handler_error": 1})
        d.stop()

    def test_keep_alive_reuses_connections(self):
        workers, n = 4, 40
        up = self.upstream()
        d = self.start({"hok": {"type": "http", "url": up.url("/ok")}}, workers=workers)
        one_key = [{"key": "ka", "id": "a%d" % i, "op": "hok", "payload": i} for i in range(n)]
        with d.connect() as c:
            answers, a = self.exchange(c, one_key)
            self.assertKeyOrder(one_key, answers)
            for i in range(n):
                self.assertEqual(self.assertOk(a["a%d" % i])["echo"]["payload"], i)
            self.assertEqual([r["body"]["id"] for r in up.recorded()], [r["id"] for r in one_key])
            conns_one_key = up.connections

            keys = px.keys_by_worker(workers, prefix="ka-", need=n // workers)
            spread = [{"key": k, "id": "b-%s" % k, "op": "hok"}
                      for ks in keys.values() for k in ks[:n // workers]]
            answers, a = self.exchange(c, spread)
            for r in spread:
                self.assertOk(a[r["id"]])
            conns_all = up.connections
        print("\nkeep-alive: %d sequential requests of one key used %d TCP connection(s); "
              "%d more over %d keys and %d workers: %d connection(s) in all"
              % (n, conns_one_key, len(spread), len(spread), workers, conns_all),
              file=sys.stderr)
        self.assertLessEqual(conns_one_key, 1, "one key, one worker: one reused connection")
        self.assertLessEqual(conns_all, workers)
        self.assertHandler(d, "hok", n + len(spread), n + len(spread))
        d.stop()


class PluginTest(HandlerTestCase):
    def test_example_plugin_counts_per_key(self):
        d = self.start({"count": {"type": "plugin", "path": PLUGINS["example"],
                                  "config": {"greeting": "hi"}}})
        payload = {"a": 1, "b": [True, None]}
        reqs = []
        for i in range(5):
            reqs.append({"key": "pa", "id": "a%d" % i, "op": "count", "payload": payload})
            if i < 2:
                reqs.append({"key": "pb", "id": "b%d" % i, "op": "count"})
        with d.connect() as c:
            answers, a = self.exchange(c, reqs)
        self.assertKeyOrder(reqs, answers)
        # ABI 2: the plugin sees each request's id; single-node mode is delivery 1, epoch 0.
        for i in range(5):
            self.assertEqual(self.assertOk(a["a%d" % i]),
                             {"key": "pa", "count": i + 1, "payload_bytes": len(compact(payload)),
                              "greeting": "hi", "id": "a%d" % i, "delivery": 1, "epoch": 0})
        for i in range(2):
            self.assertEqual(self.assertOk(a["b%d" % i]),
                             {"key": "pb", "count": i + 1, "payload_bytes": 4, "greeting": "hi",
                              "id": "b%d" % i, "delivery": 1, "epoch": 0})
        self.assertHandler(d, "count", 7, 7, htype="plugin")
        d.stop()

    def test_plugin_timeout_and_deadline(self):
        # issue 18 item 4: a plugin past timeout_ms is answered failed/timeout, past the
        # request's deadline_ms failed/deadline_exceeded, its late result discarded. A plugin
        # call cannot be interrupted, so the answer comes when the call returns; the next
        # request of the key runs after it, as always.
        d = self.start({"slow": {"type": "plugin", "path": PLUGINS["slow"], "timeout_ms": 100},
                        "slow_free": {"type": "plugin", "path": PLUGINS["slow"]}})
        # d first, so that its deadline passes while the plugin runs it (a queued request past
        # its deadline is answered without running).
        reqs = [{"key": "pt", "id": "d", "op": "slow_free", "payload": 400, "deadline_ms": 100},
                {"key": "pt", "id": "t", "op": "slow", "payload": 400},
                {"key": "pt", "id": "ok", "op": "slow", "payload": 1}]
        with d.connect() as c:
            answers, a = self.exchange(c, reqs)
        self.assertKeyOrder(reqs, answers)
        self.assertFailed(a["t"], "timeout", "timeout_ms")
        self.assertFailed(a["d"], "deadline_exceeded", "while the handler ran")
        self.assertGreaterEqual(a["d"]["run_ms"], 300, a["d"])  # it did run: the plugin path
        self.assertNotIn("result", a["t"])
        self.assertEqual(self.assertOk(a["ok"]), {"slept_ms": 1})
        self.assertHandler(d, "slow", 2, 1, {"timeout": 1}, htype="plugin")
        d.stop()

    def test_wrong_abi_or_missing_entry_symbol_stops_startup(self):
        line = self.assertStartupRefused(
            {"p": {"type": "plugin", "path": PLUGINS["bad_abi"]}},
            "handlers.p.path", PLUGINS["bad_abi"], "ABI 3", "speaks 1 to 2")
        print("\nwrong ABI: " + line, file=sys.stderr)
        line = self.assertStartupRefused(
            {"p": {"type": "plugin", "path": PLUGINS["no_entry"]}},
            "handlers.p.path", PLUGINS["no_entry"], "parex_plugin_entry")
        print("missing symbol: " + line, file=sys.stderr)
        self.assertStartupRefused(
            {"p": {"type": "plugin", "path": os.path.join(self.tmp, "absent.so")}},
            "handlers.p.path", "cannot load plugin")

class ConfigTest(HandlerTestCase):
    def test_bad_handler_definitions_name_their_key(self):
        for handlers, key in [
            ({"x": {"type": "exec", "argv": []}}, "handlers.x.argv"),
            ({"x": {"type": "exec", "argv": ["true"], "bogus": 1}}, "handlers.x.bogus"),
            ({"x": {"type": "exec", "argv": ["true"], "env": {"A": 1}}}, "handlers.x.env.A"),
            ({"x": {"type": "ftp"}}, "handlers.x.type"),
            ({"x": {"type": "http", "url": "ftp://h/"}}, "handlers.x.url"),
            ({"x": {"type": "http", "url": "http://h/", "timeout_ms": 0}}, "handlers.x.timeout_ms"),
            ({"x": {"type": "plugin"}}, "handlers.x.path"),
            ({"echo": {"type": "exec", "argv": ["true"]}}, "handlers.echo"),
            ({"x": {"type": "exec", "argv": ["true"], "max_concurrency": 0}},
             "handlers.x.max_concurrency"),
            ({"x": {"type": "exec", "argv": ["true"], "rate_limit": {"per_second": 0}}},
             "handlers.x.rate_limit"),
            ({"x": {"type": "exec", "argv": ["true"], "retry": {"max_attempts": 0}}},
             "handlers.x.retry.max_attempts"),
            ({"x": {"type": "exec", "argv": ["true"], "retry": {"backoff_ms": -1}}},
             "handlers.x.retry.backoff_ms"),
        ]:
            with self.subTest(key=key):
                self.assertStartupRefused(handlers, "'" + key)


    def test_handler_config_errors_name_the_file(self):
        # README, Configuration: a bad value "stops start-up with one line naming the file and
        # the key"; a handler's options come from the same file.
        d = pxsys.SysDaemon(config={"handlers": {"x": {"type": "exec", "argv": ["true"],
                                                       "max_concurrency": 0}}},
                            wait_ready=False)
        self.addCleanup(d.kill)
        self.assertEqual(d.wait_exit(), 78)
        self.assertIn("handlers.x.max_concurrency", d.stderr_text())
        self.assertIn(d.config_path, d.stderr_text())


class MetricsTest(HandlerTestCase):
    def test_any_handler_name_keeps_metrics_valid(self):
        """A handler name is any 1-63 bytes: a quote, backslash or newline in it must be escaped
        in /metrics label values (or the name refused at start-up), never break the scrape."""
        name = 'we"ird\\name\n'
        d = pxsys.SysDaemon(config={"handlers": {name: exec_def("text")}}, wait_ready=False)
        self.addCleanup(d.kill)
        try:
            d._wait_ready()
        except AssertionError:
            self.assertEqual(d.wait_exit(), 78, d.stderr_text())
            self.assertIn("handlers", d.stderr_text())
            return
        with d.connect() as c:
            self.assertEqual(self.assertOk(c.request({"key": "n", "op": name})),
                             "plain words, not JSON")
        text = d.metrics_text()
        self.assertEqual(pxsys.promtool_check(text), (0, ""))
        m = pxsys.parse_metrics(text)
        label = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        self.assertEqual(pxsys.sample(m, "parexd_handler_requests_total", handler=label), 1)
        self.assertEqual([h["requests"] for h in d.hstats()["handlers"] if h["name"] == name], [1])
        d.stop()


class PolicyTest(HandlerTestCase):
    def test_deadline_in_queue_and_while_running(self):
        d = self.start({"esleep": exec_def("sleep"), "mark": exec_def("mark", self.tmp)})
        keys = px.keys_by_worker(4, prefix="dl-")
        dl, cutkey = keys[0][0], keys[1][0]  # on different workers
        reqs = [
            {"key": dl, "id": "blocker", "op": "esleep", "payload": {"ms": 300}},
            {"key": dl, "id": "late", "op": "mark", "deadline_ms": 100},
            {"key": dl, "id": "roomy", "op": "mark", "deadline_ms": 20000},
            {"key": cutkey, "id": "cut", "op": "esleep", "payload": {"ms": 5000},
             "deadline_ms": 400},
        ]
        with d.connect() as c:
            answers, a = self.exchange(c, reqs)
        # "late" is answered at its deadline, ahead of the blocker it waited behind (README:
        # the one exception to answer order); the key's other answers keep theirs.
        self.assertKeyOrder([r for r in reqs if r["id"] != "late"], answers)
        ids = [x["id"] for x in answers]
        self.assertLess(ids.index("late"), ids.index("blocker"), answers)
        self.assertOk(a["blocker"])
        late = a["late"]
        self.assertFailed(late, "deadline_exceeded", "queued")
        self.assertGreaterEqual(late["queue_ms"], 99, late)
        self.assertLess(late["queue_ms"], 300, late)
        self.assertLess(late["run_ms"], 5, "an expired request must not run: %r" % late)
        self.assertFalse(os.path.exists(self.path("late.ran")), "the expired request ran")
        self.assertEqual(self.assertOk(a["roomy"]), {"ran": "roomy"})
        self.assertTrue(os.path.exists(self.path("roomy.ran")))
        cut = a["cut"]
        self.assertFailed(cut, "deadline_exceeded")
        self.assertGreaterEqual(cut["queue_ms"] + cut["run_ms"], 390, cut)
        self.assertLess(cut["queue_ms"] + cut["run_ms"], 1500, cut)
        self.assertNoChildren(d)
        # The expired one reached the handler's policies (a request) but never ran (no attempt).
        self.assertHandler(d, "mark", 2, 1, {"deadline_exceeded": 1}, attempts=1)
        self.assertHandler(d, "esleep", 2, 1, {"deadline_exceeded": 1})
        d.stop()

    def test_deadline_while_waiting_for_a_slot_or_a_token(self):
        up = self.upstream()
        d = self.start({
            "one": {"type": "http", "url": up.url("/work?ms=400"), "max_concurrency": 1},
            "slow_rate": {"type": "http", "url": up.url("/ok"),
                          "rate_limit": {"per_second": 2, "burst": 1}},
        })
        k = px.keys_by_worker(4, prefix="dw-", need=2)
        # Slot: A holds the only slot for 400 ms; B (another worker) may wait 100 ms.
        reqs = [{"key": k[0][0], "id": "A", "op": "one"},
                {"key": k[1][0], "id": "B", "op": "one", "deadline_ms": 100},
                {"key": k[1][0], "id": "C", "op": "one"}]
        with d.connect() as c:
            c.send(reqs[0])
            px.wait_for(lambda: up.recorded("/work"), what="A at the upstream")
            c.send(*reqs[1:])
            answers = c.recv_n(3)
            a = {x["id"]: x for x in answers}
            self.assertKeyOrder(reqs, answers)
            self.assertOk(a["A"])
            self.assertFailed(a["B"], "deadline_exceeded", "slot")
            self.assertLess(a["B"]["queue_ms"] + a["B"]["run_ms"], 350, a["B"])
            self.assertOk(a["C"])  # the slot B waited for was not lost
            self.assertEqual([r["body"]["id"] for r in up.recorded("/work")], ["A", "C"])
            # Token: X takes the only token; Y's wait (500 ms) is past its deadline, so it fails
            # at once and gives its token back: Z, behind Y on the same worker, then waits 500 ms
            # after X, not 1000.
            reqs = [{"key": k[2][0], "id": "X", "op": "slow_rate"},
                    {"key": k[3][0], "id": "Y", "op": "slow_rate", "deadline_ms": 200},
                    {"key": k[3][1], "id": "Z", "op": "slow_rate"}]
            self.assertOk(c.request(reqs[0]))  # X has the token
            answers, a = self.exchange(c, reqs[1:])
            self.assertFailed(a["Y"], "deadline_exceeded", "token")
            self.assertLess(a["Y"]["queue_ms"] + a["Y"]["run_ms"], 150, a["Y"])
            self.assertOk(a["Z"])
        seen = {r["body"]["id"]: r["t"] for r in up.recorded("/ok")}
        self.assertEqual(sorted(seen), ["X", "Z"])
        gap = seen["Z"] - seen["X"]
        print("\nrate 2/s: a token given back by an expired request; the next one came %.0f ms "
              "after the first" % (gap * 1000), file=sys.stderr)
        self.assertGreaterEqual(gap, 0.5 - 0.03)
        self.assertLess(gap, 0.8, "the expired request kept its token")
        self.assertHandler(d, "one", 3, 2, {"deadline_exceeded": 1}, attempts=2)
        self.assertHandler(d, "slow_rate", 3, 2, {"deadline_exceeded": 1}, attempts=2)
        d.stop()

    def test_cancel_queued_and_running(self):
        d = self.start({"gate": exec_def("gate", self.tmp), "mark": exec_def("mark", self.tmp)})
        c = d.connect()
        other = d.connect()
        self.addCleanup(c.close)
        self.addCleanup(other.close)
        blocker = {"key": "c", "id": "b", "op": "gate", "payload": {"gate": "open"}}
        c.send(blocker)
        px.wait_for(lambda: os.path.exists(self.path("b.started")), what="the blocker to run")
        queued = [{"key": "c", "id": "q", "op": "mark"}, {"key": "c", "id": 42, "op": "mark"},
                  {"key": "c", "id": "q2", "op": "mark"}]
        c.send(*queued)
        got = {}
        for cancel in ({"cancel": "q", "id": "cq"}, {"cancel": 42, "id": "c42"},
                       {"cancel": "42", "id": "cs42"}, {"cancel": "b", "id": "cb"},
                       {"cancel": "nope", "id": "cn"}):
            c.send(cancel)
            while cancel["id"] not in got:
                ans = c.recv()
                got[ans["id"]] = ans
        # From another connection the request is not ours to cancel.
        self.assertEqual(other.request({"cancel": "q2", "id": "co"})["result"],
                         {"cancel": "q2", "cancelled": False, "state": "not_found"})
        self.assertEqual(self.assertOk(got["cq"]),
                         {"cancel": "q", "cancelled": True, "state": "queued"})
        self.assertEqual(self.assertOk(got["c42"]),
                         {"cancel": 42, "cancelled": True, "state": "queued"})
        self.assertEqual(self.assertOk(got["cs42"]),  # the string "42" is another id
                         {"cancel": "42", "cancelled": False, "state": "not_found"})
        self.assertEqual(self.assertOk(got["cb"]),
                         {"cancel": "b", "cancelled": False, "state": "running"})
        self.assertEqual(self.assertOk(got["cn"]),
                         {"cancel": "nope", "cancelled": False, "state": "not_found"})
        self.assertNotIn("b", got, "the running request must not be answered before it ends")
        # A cancelled request's own answer keeps its key's order: not before b's.
        self.assertNotIn("q", got)
        self.assertNotIn(42, got)

        after = {"key": "c", "id": "after", "op": "mark"}
        c.send(after)
        with open(self.path("open"), "w"):
            pass
        answers = c.recv_n(5)
        a = {x["id"]: x for x in answers}
        # Every answer of key c in the order its requests came, cancelled ones included.
        self.assertEqual([x["id"] for x in answers], ["b", "q", 42, "q2", "after"])
        self.assertFailed(a["q"], "cancelled")
        self.assertFailed(a[42], "cancelled")
        self.assertEqual(self.assertOk(a["b"]), {"gated": "b"})
        self.assertOk(a["q2"])
        self.assertOk(a["after"])
        self.assertFalse(os.path.exists(self.path("q.ran")), "the cancelled request ran")
        self.assertFalse(os.path.exists(self.path("42.ran")), "the cancelled request ran")
        self.assertTrue(os.path.exists(self.path("q2.ran")))
        self.assertEqual(c.request({"cancel": "b", "id": "late"})["result"],
                         {"cancel": "b", "cancelled": False, "state": "not_found"})
        self.assertHandler(d, "mark", 2, 2)  # the cancelled one never reached the handler
        self.assertHandler(d, "gate", 1, 1)
        s = d.hstats()
        self.assertEqual((s["ok"], s["failed"]), (3, 2), s)
        d.stop()

    def test_retry_succeeds_on_third_attempt_and_holds_the_key(self):
        backoff, cap = 150, 200
        retry = {"max_attempts": 5, "backoff_ms": backoff, "max_backoff_ms": cap}
        counter = self.path("r")

        def flaky(succeed_on):  # all three count the runs of key r in one file
            return {"type": "exec", "argv": ["/bin/sh", FLAKY, counter, str(succeed_on)],
                    "retry": retry}

        d = self.start({"flaky": flaky(3), "steady": flaky(1), "never": flaky(99)})
        reqs = [
            {"key": "r", "id": "r1", "op": "flaky"},
            {"key": "r", "id": "r2", "op": "steady"},
            {"key": "r", "id": "r3", "op": "never"},
        ]
        with d.connect() as c:
            answers, a = self.exchange(c, reqs)
        self.assertKeyOrder(reqs, answers)
        r1, r2, r3 = a["r1"], a["r2"], a["r3"]
        self.assertEqual(self.assertOk(r1), {"attempt": 3})
        self.assertEqual(r1["attempts"], 3, r1)
        # r2 ran once, after all of r1's attempts: the key's 4th run.
        self.assertEqual(self.assertOk(r2), {"attempt": 4})
        self.assertEqual(r2["attempts"], 1, r2)
        self.assertGreaterEqual(r2["queue_ms"], r1["queue_ms"] + r1["run_ms"] - 1.0,
                                "r2 waited through r1's retries: %r %r" % (r1, r2))
        self.assertFailed(r3, "handler_error", "status 1", "run 9 fails on purpose")
        self.assertEqual(r3["attempts"], 5, r3)

        with open(counter + ".log") as f:
            runs = [ln.rstrip("\n").split(" ", 2) for ln in f]
        self.assertEqual([json.loads(r[2])["id"] for r in runs],
                         ["r1"] * 3 + ["r2"] + ["r3"] * 5)
        # Full jitter: backoff n is random(0, min(cap, backoff * 2^(n-1))), so one backoff has
        # only an upper bound (a run of the shell script costs a few ms on top). Their sum has a
        # lower one: the six of r1 and r3 add up to under 100 ms with probability about 4e-5.
        all_gaps = []
        for rid in ("r1", "r3"):
            ts = [float(r[1]) for r in runs if json.loads(r[2])["id"] == rid]
            gaps = [t1 - t0 for t0, t1 in zip(ts, ts[1:])]
            all_gaps += gaps
            print("\nretry %s: gaps between attempts %s ms" % (
                rid, [round(g * 1000) for g in gaps]), file=sys.stderr)
            for i, g in enumerate(gaps):
                self.assertLess(g, min(cap, backoff << i) / 1000.0 + 0.15,
                                "backoff %d of %s over its bound" % (i + 1, rid))
        self.assertGreater(sum(all_gaps), 0.1, "no backoff between attempts: %r" % all_gaps)
        self.assertHandler(d, "flaky", 1, 1, attempts=3)
        self.assertHandler(d, "steady", 1, 1)
        self.assertHandler(d, "never", 1, 0, {"handler_error": 1}, attempts=5)
        d.stop()

    def test_max_backoff_zero_means_no_wait(self):
        # issue 18 item 5: the documented formula, random(0, min(max_backoff_ms, backoff_ms *
        # 2^(n-1))), with max_backoff_ms 0 is no wait at all (it once meant "no cap": with this
        # backoff_ms the retries would wait up to an hour, past the test's timeout).
        d = self.start({"never": {"type": "exec", "argv": ["/bin/false"],
                                  "retry": {"max_attempts": 3, "backoff_ms": 3600000,
                                            "max_backoff_ms": 0}}})
        with d.connect() as c:
            _, a = self.exchange(c, [{"key": "nb", "id": 1, "op": "never"}])
        self.assertFailed(a[1], "handler_error", "status 1")
        self.assertEqual(a[1]["attempts"], 3, a[1])
        d.stop()

    def test_max_concurrency_is_a_maximum_for_the_upstream(self):
        workers, hold = 8, 80
        up = self.upstream()
        d = self.start({
            "capped": {"type": "http", "url": up.url("/work?ms=%d" % hold), "max_concurrency": 2},
            "uncapped": {"type": "http", "url": up.url("/work2?ms=%d" % hold)},
        }, workers=workers)
        keys = [k for ks in px.keys_by_worker(workers, prefix="mc-", need=2).values()
                for k in ks[:2]]
        capped = [{"key": k, "id": "c-" + k, "op": "capped"} for k in keys]
        capped += [{"key": keys[0], "id": "c-%s-%d" % (keys[0], i), "op": "capped"}
                   for i in range(3)]
        uncapped = [{"key": k, "id": "u-" + k, "op": "uncapped"} for k in keys]
        with d.connect() as c:
            answers, a = self.exchange(c, capped)
            self.assertKeyOrder(capped, answers)
            for r in capped:
                self.assertOk(a[r["id"]])
            seen = [r["body"]["id"] for r in up.recorded("/work")]
            same_key = [r["id"] for r in capped if r["key"] == keys[0]]
            self.assertEqual([i for i in seen if i in same_key], same_key)
            # Waiting for a slot is queueing: runs stay near the upstream's hold time.
            self.assertGreater(max(x["queue_ms"] for x in answers), 3 * hold, answers)
            self.assertLess(max(x["run_ms"] for x in answers), hold + 300, answers)
            answers, a = self.exchange(c, uncapped)
            for r in uncapped:
                self.assertOk(a[r["id"]])
        print("\nmax_concurrency 2 with %d workers: upstream saw at most %d at once "
              "(uncapped: %d)" % (workers, up.max_inflight["/work"], up.max_inflight["/work2"]),
              file=sys.stderr)
        self.assertEqual(up.max_inflight["/work"], 2)
        self.assertGreaterEqual(up.max_inflight["/work2"], 4,
                                "the uncapped control shows the upstream can see overlap")
        h, _ = self.assertHandler(d, "capped", len(capped), len(capped))
        self.assertEqual(h["max_concurrency"], 2, h)
        d.stop()

    def test_rate_limit_is_a_rate(self):
        workers, rate = 8, 20.0
        up = self.upstream()
        d = self.start({
            "limited": {"type": "http", "url": up.url("/ok"),
                        "rate_limit": {"per_second": rate, "burst": 1}},
            "bursty": {"type": "http", "url": up.url("/text"),
                       "rate_limit": {"per_second": 5, "burst": 5}},
        }, workers=workers)
        by_worker = list(px.keys_by_worker(workers, prefix="rl-", need=3).values())
        keys = [ks[i] for i in range(3) for ks in by_worker][:20]  # over every worker
        reqs = [{"key": k, "id": "l-" + k, "op": "limited"} for k in keys]
        reqs += [{"key": keys[0], "id": "l-%s-%d" % (keys[0], i), "op": "limited"}
                 for i in range(2)]
        n = len(reqs)
        with d.connect() as c:
            answers, a = self.exchange(c, reqs)
            self.assertKeyOrder(reqs, answers)
            for r in reqs:
                self.assertOk(a[r["id"]])
            times = sorted(r["t"] for r in up.recorded("/ok"))
            span, want = times[-1] - times[0], (n - 1) / rate
            seen = [r["body"]["id"] for r in up.recorded("/ok")]
            same_key = [r["id"] for r in reqs if r["key"] == keys[0]]
            self.assertEqual([i for i in seen if i in same_key], same_key)
            gaps = [b - t for t, b in zip(times, times[1:])]
            # Waiting for a token is queueing, not running.
            self.assertGreater(max(x["queue_ms"] for x in answers), 0.8 * want * 1000, answers)
            self.assertLess(max(x["run_ms"] for x in answers), 200, answers)

            burst = [{"key": ks[0], "id": "b-" + ks[0], "op": "bursty"} for ks in by_worker[:6]]
            answers, a = self.exchange(c, burst)
            for r in burst:
                self.assertOk(a[r["id"]])
            bt = sorted(r["t"] for r in up.recorded("/text"))
        print("\nrate_limit %.0f/s, burst 1: %d requests over %d keys arrived over %.3f s "
              "(%.1f/s; at least %.3f s expected); smallest gap %.1f ms; burst 5 at 5/s: first "
              "5 within %.1f ms, 6th after %.1f ms"
              % (rate, n, len(keys), span, (n - 1) / span, want, 1000 * min(gaps),
                 1000 * (bt[4] - bt[0]), 1000 * (bt[5] - bt[0])), file=sys.stderr)
        self.assertGreaterEqual(span, want - 0.03)
        self.assertLess(span, want * 1.3 + 0.2)
        self.assertLess(bt[4] - bt[0], 0.15, "a full bucket of 5 lets 5 through at once")
        self.assertGreaterEqual(bt[5] - bt[0], 0.2 - 0.03, "the 6th waits for a token (1/5 s)")
        h, m = self.assertHandler(d, "limited", n, n)
        self.assertLessEqual(h["tokens"], 1.0, h)
        self.assertLessEqual(pxsys.sample(m, "parexd_handler_rate_tokens", handler="limited"), 1.0)
        d.stop()


def main():
    global SUBREAPER
    ap = argparse.ArgumentParser()
    for name in ("example", "bad-abi", "no-entry", "slow"):
        ap.add_argument("--%s-plugin" % name, required=True)
    args, rest = ap.parse_known_args()
    PLUGINS["example"] = os.path.abspath(args.example_plugin)
    PLUGINS["bad_abi"] = os.path.abspath(args.bad_abi_plugin)
    PLUGINS["no_entry"] = os.path.abspath(args.no_entry_plugin)
    PLUGINS["slow"] = os.path.abspath(args.slow_plugin)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        SUBREAPER = libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        SUBREAPER = False
    sys.argv = [sys.argv[0]] + rest
    px.main()


if __name__ == "__main__":
    main()
