"""What a hostile client, a web page and a local user must not be able to do (README, Security):
cross-protocol requests from a browser, DNS rebinding of the metrics endpoint, forged log lines
and terminal escapes, and the other limits of the threat model. Each test failed on the code
before the limit existed."""

import json
import os
import signal
import socket
import sys
import tempfile
import time
import unittest

import pxharness as px
import pxsys
from test_handlers import PROG, Upstream, exec_def, proc_stat

TEST_OPS = {"builtin_test_ops": True}


def raw_http(host, port, request, timeout=px.TIMEOUT):
    """Sends raw bytes as one HTTP request; returns (status, body bytes)."""
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class CrossProtocolTest(unittest.TestCase):
    """A web page's fetch() POST to the line port must run nothing."""

    def assertClosedSilently(self, c):
        c.wait_eof()
        self.assertEqual(c.buf, b"", "an HTTP client got an answer on the line port")

    def test_browser_post_body_runs_nothing_and_closes(self):
        body = b'\n{"key":"victim","op":"echo","payload":"smuggled","id":"s1"}\n'
        req = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1:7400\r\nOrigin: http://evil.example\r\n"
               b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        with pxsys.SysDaemon() as d:
            with d.connect() as c:
                c.send_raw(req)
                self.assertClosedSilently(c)
            s = d.stats()
            self.assertEqual(s["received"], 0, "a line of the POST body ran")
            self.assertEqual(s["invalid"], 0)
            self.assertEqual(s["connections_closed_by_reason"]["http_request"], 1)
            self.assertEqual(pxsys.sample(d.metrics(), "parexd_connections_closed_total",
                                          reason="http_request"), 1)
            d.wait_log(r"HTTP request\(s\) sent to the request port were refused")

    def test_a_header_line_alone_closes_too(self):
        with pxsys.SysDaemon() as d:
            with d.connect() as c:
                # Another connection's requests are untouched; this one ran its first line.
                self.assertEqual(c.request({"key": "a", "payload": 1})["status"], "ok")
                c.send_raw(b"Host: 127.0.0.1:7400\r\n" + json.dumps({"key": "b"}).encode() + b"\n")
                self.assertClosedSilently(c)
            self.assertEqual(d.stats()["received"], 1)

    def test_json_lines_and_other_garbage_still_get_answers(self):
        with px.Daemon() as d, d.connect() as c:
            c.send_raw(b"hello world\n{\"key\":\"k\",\"payload\":2}\n")
            self.assertEqual(c.recv()["status"], "invalid")
            self.assertEqual(c.recv()["status"], "ok")


class MetricsHostTest(unittest.TestCase):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read /stats."""

    def get(self, d, host):
        return raw_http(d.mhost, d.mport,
                        b"GET /stats HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host)

    def test_only_ip_literals_localhost_and_listed_names_are_answered(self):
        with pxsys.SysDaemon(config={"metrics_allowed_hosts": "parexd.internal,mon.lan"}) as d:
            for ok in (b"127.0.0.1", b"127.0.0.1:%d" % d.mport, b"localhost:9400", b"[::1]:9400",
                       b"LOCALHOST", b"parexd.internal:9400", b"mon.lan"):
                self.assertEqual(self.get(d, ok)[0], 200, ok)
            for bad in (b"evil.example", b"evil.example:9400", b"localhost.evil.example",
                        b"parexd.internal.evil.example", b"127.0.0.1.nip.io", b"[evil]:1"):
                st, body = self.get(d, bad)
                self.assertEqual(st, 421, bad)
                self.assertNotIn(b"received", body)
                self.assertIn(b"metrics_allowed_hosts", body)

    def test_reload_applies_allowed_hosts_and_the_stats_token(self):
        with pxsys.SysDaemon(config={}) as d:
            self.assertEqual(self.get(d, b"late.example")[0], 421)
            d.write_config({"metrics_allowed_hosts": "late.example", "auth_token": TOKEN})
            d.signal(signal.SIGHUP)
            d.wait_log(r"reload: configuration applied")
            st, body = self.get(d, b"late.example")
            self.assertEqual(st, 401, body)  # the Host is allowed now, and /stats wants the token
            st, _, _ = pxsys.http_request(d.mhost, d.mport, "/stats",
                                          headers={"Authorization": "Bearer " + TOKEN})
            self.assertEqual(st, 200)

    def test_bad_allowed_hosts_stop_startup(self):
        for cfg, want in (({"metrics_allowed_hosts": "*.example"},
                           "key 'metrics_allowed_hosts': \"*.example\" is not a comma-separated"),
                          ({"builtin_test_ops": "yes"},
                           "key 'builtin_test_ops': \"yes\" is not true or false")):
            d = pxsys.SysDaemon(config=cfg, wait_ready=False)
            try:
                self.assertEqual(d.wait_exit(), 78)
                self.assertIn(want, d.stderr_text())
            finally:
                d.kill()

    def test_idle_connections_up_to_the_old_limit_leave_healthz_answering(self):
        with pxsys.SysDaemon() as d:
            idle = [socket.create_connection((d.mhost, d.mport)) for _ in range(64)]
            try:
                px.wait_for(lambda: d.health()[0] == 200, what="/healthz with 64 idle conns")
            finally:
                for s in idle:
                    s.close()


class EscapingTest(unittest.TestCase):
    """Keys are a client's text: logs, /healthz and parexctl show control characters escaped."""

    KEY = "k\n<0>forged emergency\x1b[2J\x7f\u009b"

    def test_park_log_line_cannot_forge_a_line(self):
        cfg = dict(TEST_OPS, quarantine={"after_failures": 1, "for_ms": 60000})
        with pxsys.SysDaemon(config=cfg) as d:
            with d.connect() as c:
                self.assertEqual(c.request({"key": self.KEY, "op": "fail"})["status"], "failed")
            m = d.wait_log(r"quarantine: key .* parked")
            self.assertIn("k\\x0a<0>forged emergency\\x1b[2J\\x7f\\u009b", m.group(0))
            for ln in d.stderr_text().splitlines():
                self.assertFalse(ln.startswith("<0>"), ln)
                self.assertNotIn("\x1b", ln)
            rc, out, err = px.run_parexctl("stats", "--metrics-addr", d.maddr)
            self.assertEqual(rc, 0, err)
            self.assertIn("PARKED k\\x0a<0>forged", out)
            self.assertNotIn("\x1b", out)
            self.assertNotIn("\u009b", out)

    def test_healthz_escapes_the_stalled_key(self):
        cfg = dict(TEST_OPS, stall_after_ms=20, supervise_interval_ms=10, dead_after_ms=60000)
        with pxsys.SysDaemon(config=cfg) as d:
            with d.connect() as c:
                c.send({"key": self.KEY, "op": "sleep", "payload": {"ms": 3000}})
                st, body = px.wait_for(lambda: (lambda h: h if h[0] == 503 else None)(d.health()),
                                       what="/healthz 503 stalled")
                self.assertIn("k\\x0a<0>forged emergency\\x1b[2J", body)
                self.assertEqual(body.count("\n"), 1, body)
                self.assertNotIn("\x1b", body)


HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED_CONFIG = os.path.join(os.path.dirname(os.path.dirname(HERE)), "config", "parexd.json")


class WorkerShareTest(unittest.TestCase):
    """One connection cannot hold the workers or the queues with the shipped config."""

    def test_shipped_config_serves_no_test_ops(self):
        with px.Daemon(["--config", SHIPPED_CONFIG]) as d, d.connect() as c:
            for op in ("sleep", "fail"):
                a = c.request({"key": "k", "op": op, "payload": {"ms": 60000}})
                self.assertEqual(a["status"], "invalid", a)
                self.assertEqual(a["error"]["code"], "unknown_op", a)
                self.assertIn("builtin_test_ops", a["error"]["message"])
            self.assertEqual(c.request({"key": "k", "payload": 1})["status"], "ok")

    def test_one_connection_has_a_bounded_number_in_flight(self):
        tmp = tempfile.mkdtemp(prefix="parexd-gate-")
        cfg = {"max_in_flight_per_connection": 2, "workers": 2,
               "handlers": {"gate": exec_def("gate", tmp)}}
        with px.Daemon(config=cfg) as d, d.connect() as c, d.connect() as other:
            c.send(*[{"key": "g", "id": i, "op": "gate", "payload": {"gate": "open"}}
                     for i in range(3)])
            a = c.recv()
            self.assertEqual((a["id"], a["status"], a["error"]["code"]),
                             (2, "rejected", "connection_busy"), a)
            self.assertIn("max_in_flight_per_connection (2)", a["error"]["message"])
            # Another connection is not limited by this one's requests.
            self.assertEqual(other.request({"key": "o", "payload": 1})["status"], "ok")
            with open(os.path.join(tmp, "open"), "w"):
                pass
            self.assertEqual(sorted(x["id"] for x in c.recv_n(2)), [0, 1])
            # Answered ones free their place.
            self.assertEqual(c.request({"key": "g", "payload": 2})["status"], "ok")
            s = d.stats()
            self.assertEqual(s["rejected_by_reason"]["connection_busy"], 1)
            self.assertTrue(s["invariant_holds"], s)

    def run_then_vanish(self, cancel):
        """A client queues five requests behind a gated one and vanishes; returns which of the
        five ran."""
        tmp = tempfile.mkdtemp(prefix="parexd-vanish-")
        cfg = {"workers": 1, "cancel_on_disconnect": cancel,
               "handlers": {"gate": exec_def("gate", tmp), "mark": exec_def("mark", tmp)}}
        with px.Daemon(config=cfg) as d:
            c = d.connect()
            c.send({"key": "v", "id": "g", "op": "gate", "payload": {"gate": "open"}},
                   *[{"key": "v", "id": "m%d" % i, "op": "mark"} for i in range(5)])
            px.wait_for(lambda: os.path.exists(os.path.join(tmp, "g.started")),
                        what="the gated request running")
            c.reset()
            d.wait_stats(lambda s: s["connections"] == 1, "the client gone (1: this query)")
            with open(os.path.join(tmp, "open"), "w"):
                pass
            s = d.wait_idle()
            self.assertEqual(s["responses_dropped"], 6)
            self.assertTrue(s["invariant_holds"], s)
        return sorted(f for f in os.listdir(tmp) if f.endswith(".ran"))

    def test_cancel_on_disconnect_runs_nothing_more_of_a_vanished_client(self):
        self.assertEqual(self.run_then_vanish(True), [])
        self.assertEqual(len(self.run_then_vanish(False)), 5)  # the default: it all runs

    def test_configured_handlers_get_a_default_timeout(self):
        cfg = {"handler_timeout_ms": 300,
               "handlers": {"hang": {"type": "exec", "argv": ["sleep", "60"]}}}
        with px.Daemon(config=cfg) as d, d.connect() as c:
            a = c.request({"key": "k", "op": "hang"})
            self.assertEqual((a["status"], a["error"]["code"]), ("failed", "timeout"), a)

    def test_retry_after_counts_the_age_of_a_long_running_request(self):
        cfg = dict(TEST_OPS, workers=1, queue_capacity=2)
        with px.Daemon(config=cfg) as d, d.connect() as c:
            for i in range(20):  # a history of fast requests on the worker
                self.assertEqual(c.request({"key": "h", "payload": i})["status"], "ok")
            c.send({"key": "h", "id": "long", "op": "sleep", "payload": {"ms": 2000}})
            d.wait_stats(lambda s: s["workers"][0]["state"] == "busy", "the long one running")
            c.send(*[{"key": "h", "id": "q%d" % i, "op": "sleep", "payload": {"ms": 1}}
                     for i in range(2)])
            d.wait_stats(lambda s: s["workers"][0]["queue_depth"] == 2, "two queued")

            def estimate():
                with d.connect() as p:
                    a = p.request({"key": "h", "id": "probe"})
                self.assertEqual(a["error"]["code"], "queue_full", a)
                return a["retry_after_ms"] >= 600
            # Two queued behind one already running 300 ms: no honest estimate is under 600 ms.
            px.wait_for(estimate, timeout=1.8, what="retry_after_ms >= 600", interval=0.05)


class QuarantineCostTest(unittest.TestCase):
    """Parking thousands of keys costs each park O(parked) at most: the loop stays responsive.
    (Before, every park walked the whole key table: 4000 keys took about a minute.)"""

    def test_thousands_of_parked_keys_leave_the_loop_responsive(self):
        cfg = dict(TEST_OPS, quarantine={"after_failures": 1, "for_ms": 600000})
        n, batch = 4000, 500
        t0 = time.monotonic()
        with pxsys.SysDaemon(config=cfg) as d, d.connect() as c:
            for b in range(0, n, batch):
                c.send(*[{"key": "poison-%d" % i, "id": i, "op": "fail"}
                         for i in range(b, b + batch)])
                self.assertEqual({a["status"] for a in c.recv_n(batch)}, {"failed"})
            with d.connect() as probe:  # within the harness timeout, not a minute
                self.assertEqual(probe.request({"key": "cold", "payload": 1})["result"], 1)
            s = d.wait_hstats(lambda s: len(s["parked"]) == n, "all parked keys published")
            self.assertEqual(s["keys_parked"], n)
            # One log line per park up to 10 a second, then a count: no journal flood.
            d.wait_log(r"quarantine: \d+ more keys were parked, not logged one by one")
            lines = d.log_count(r"quarantine: key 'poison-")
            self.assertLessEqual(lines, 10 * (int(time.monotonic() - t0) + 2), lines)


class MemoryBudgetTest(unittest.TestCase):
    """Memory is bounded across connections, not only per connection."""

    def test_a_partial_line_older_than_the_timeout_closes_its_connection(self):
        with pxsys.SysDaemon(config={"partial_line_timeout_ms": 300}) as d:
            with d.connect() as slow, d.connect() as fine:
                slow.send_raw(b'{"key":"slow","payload":"never ends')
                # A client that sends whole lines meanwhile is not affected.
                self.assertEqual(fine.request({"key": "f", "payload": 1})["status"], "ok")
                slow.wait_eof()
                self.assertEqual(slow.buf, b"")
                self.assertEqual(fine.request({"key": "f", "payload": 2})["status"], "ok")
            s = d.stats()
            self.assertEqual(s["connections_closed_by_reason"]["partial_line_timeout"], 1)
            d.wait_log(r"older than partial_line_timeout_ms \(300\)")

    def test_partial_lines_of_all_connections_share_one_budget(self):
        cfg = {"max_partial_bytes": 65536}
        part = b'{"key":"p","payload":"' + b"x" * 30000  # held in a 32 KiB buffer
        with px.Daemon(config=cfg) as d:
            conns = [d.connect() for _ in range(3)]
            try:
                for c in conns:
                    c.send_raw(part)
                box = {}

                def rejected():
                    for i, c in enumerate(conns):
                        try:
                            box[i] = c.recv(timeout=0.01)
                        except TimeoutError:
                            pass
                    return box
                px.wait_for(rejected, what="one partial line over the budget rejected")
                [(i, a)] = box.items()
                self.assertEqual((a["status"], a["error"]["code"]), ("rejected", "overloaded"), a)
                self.assertIn("max_partial_bytes (65536)", a["error"]["message"])
                self.assertGreater(a["retry_after_ms"], 0)
                for j, c in enumerate(conns):
                    c.send_raw(b'"}\n')
                    if j != i:  # the others' lines were kept whole
                        r = c.recv()
                        self.assertEqual((r["status"], len(r["result"])), ("ok", 30000), r)
                # The dropped line's rest was skipped; the connection works on.
                self.assertEqual(conns[i].request({"key": "p", "payload": 3})["result"], 3)
                s = d.stats()
                self.assertEqual(s["rejected_by_reason"]["overloaded"], 1)
                self.assertTrue(s["invariant_holds"], s)
            finally:
                for c in conns:
                    c.close()

    def test_queued_payloads_share_one_budget(self):
        cfg = dict(TEST_OPS, workers=1, max_queued_payload_bytes=65536)
        big = "y" * 20000
        with px.Daemon(config=cfg) as d, d.connect() as c:
            c.send({"key": "q", "id": "block", "op": "sleep", "payload": {"ms": 300}})
            c.send(*[{"key": "q", "id": i, "payload": big} for i in range(5)])
            answers = {a["id"]: a for a in c.recv_n(6)}
            refused = [i for i in range(5) if answers[i]["status"] == "rejected"]
            self.assertTrue(refused, "five 20 KB payloads fit a 64 KiB budget?")
            self.assertLess(len(refused), 5)
            for i in refused:
                self.assertEqual(answers[i]["error"]["code"], "overloaded", answers[i])
                self.assertIn("max_queued_payload_bytes (65536)", answers[i]["error"]["message"])
                self.assertGreater(answers[i]["retry_after_ms"], 0)
            for i in set(range(5)) - set(refused):
                self.assertEqual(answers[i]["result"], big)
            # Answered requests give their bytes back.
            self.assertEqual(c.request({"key": "q", "payload": big})["status"], "ok")


class AbandonedThreadsTest(unittest.TestCase):
    def test_on_stall_replace_stops_at_max_abandoned_threads(self):
        cfg = dict(TEST_OPS, workers=1, on_stall="replace", stall_after_ms=30,
                   supervise_interval_ms=10, dead_after_ms=60000, max_abandoned_threads=2)
        with pxsys.SysDaemon(config=cfg) as d, d.connect() as c:
            c.send(*[{"key": "s%d" % i, "id": i, "op": "sleep", "payload": {"ms": 3000}}
                     for i in range(3)])
            d.wait_log(r"worker 0 stays stalled: max_abandoned_threads \(2\)")
            s = d.hstats()
            self.assertEqual(s["workers"][0]["replaced"], 2, s["workers"])
            self.assertEqual(s["workers"][0]["state"], "stalled")
            self.assertEqual(d.health()[0], 503)
            # Two answered worker_stalled; the worker did not move on past the third.
            got = [c.recv() for _ in range(2)]
            self.assertEqual([a["error"]["code"] for a in got], ["worker_stalled"] * 2)
            self.assertTrue(c.nothing_pending())
            self.assertEqual(d.stats()["workers"][0]["replaced"], 2)


class ExecIsolationTest(unittest.TestCase):
    """Exec children get exactly fds 0, 1, 2, and argv[0] is looked up in their own PATH."""

    def test_no_daemon_or_launcher_fd_reaches_a_program(self):
        up = Upstream()
        r, w = os.pipe()  # a descriptor parexd inherits from its launcher
        try:
            cfg = {"handlers": {"up": {"type": "http", "url": up.url("/ok")},
                                "prog": exec_def("json")}}
            with pxsys.SysDaemon(config=cfg, pass_fds=(w,)) as d, d.connect() as c:
                # The keep-alive upstream socket stays open in parexd after this call.
                self.assertEqual(c.request({"key": "k", "op": "up", "payload": 1})["status"], "ok")
                a = c.request({"key": "k", "op": "prog", "payload": 2})
                self.assertEqual(a["status"], "ok", a)
                self.assertEqual(a["result"]["fds"], [], "fds leaked into the exec child")
        finally:
            os.close(r)
            os.close(w)
            up.server.shutdown()

    def test_argv0_is_looked_up_in_the_programs_path_not_the_daemons(self):
        tmp = tempfile.mkdtemp(prefix="parexd-path-")
        prog = os.path.join(tmp, "px-only-in-daemon-path")
        with open(prog, "w") as f:
            f.write("#!/bin/sh\necho ran\n")
        os.chmod(prog, 0o755)
        env = {"PATH": tmp + ":" + os.environ.get("PATH", "/usr/bin:/bin")}
        cfg = {"handlers": {"p": {"type": "exec", "argv": ["px-only-in-daemon-path"]},
                            "q": {"type": "exec", "argv": ["px-only-in-daemon-path"],
                                  "env": {"PATH": tmp}}}}
        with px.Daemon(config=cfg, env=env) as d, d.connect() as c:
            a = c.request({"key": "k", "op": "p"})
            self.assertEqual(a["status"], "failed", a)
            self.assertIn("cannot run px-only-in-daemon-path", a["error"]["message"])
            self.assertEqual(c.request({"key": "k", "op": "q"})["result"], "ran")


class ExecDeadlineTest(unittest.TestCase):
    """The timeout bounds the answer whatever the program does; escapees are reaped."""

    def test_closing_its_output_does_not_outlive_the_timeout(self):
        cfg = {"handlers": {"linger": {"type": "exec", "timeout_ms": 300,
                                       "argv": ["sh", "-c", "exec >&- 2>&-; sleep 20"]}}}
        with px.Daemon(config=cfg) as d, d.connect() as c:
            a = c.request({"key": "k", "op": "linger"})
            self.assertEqual(a["status"], "failed", a)
            self.assertEqual(a["error"]["code"], "timeout", a)
            px.wait_for(lambda: not [p for p in os.listdir("/proc") if p.isdigit() and
                                     (proc_stat(int(p)) or ("", 0))[1] == d.pid],
                        what="no child (and no zombie) of parexd left")

    def test_a_process_that_leaves_the_group_is_reaped_by_parexd(self):
        tmp = tempfile.mkdtemp(prefix="parexd-esc-")
        pidf = os.path.join(tmp, "esc.pid")
        # The program exits only once the escapee has left the group (its pid file exists).
        script = ("setsid sh -c 'echo $$ > %s.tmp; mv %s.tmp %s; exec sleep 60' "
                  "</dev/null >/dev/null 2>&1 & "
                  "while [ ! -e %s ]; do sleep 0.01; done; echo started" % (pidf, pidf, pidf, pidf))
        cfg = {"handlers": {"escape": {"type": "exec", "argv": ["sh", "-c", script]}}}
        with px.Daemon(config=cfg) as d, d.connect() as c:
            self.assertEqual(c.request({"key": "k", "op": "escape"})["result"], "started")
            px.wait_for(lambda: os.path.exists(pidf), what="the escapee's pid file")
            with open(pidf) as f:
                pid = int(f.read())
            try:
                # Out of the program's group, so the sweep missed it; parexd is its parent now.
                px.wait_for(lambda: (proc_stat(pid) or ("", 0))[1] == d.pid,
                            what="the escapee reparented to parexd (child subreaper)")
            finally:
                os.kill(pid, signal.SIGKILL)
            px.wait_for(lambda: proc_stat(pid) is None, what="the escapee reaped (no zombie)")


TOKEN = "tok-from-a-file-0123456789"


class SecretsTest(unittest.TestCase):
    """The token can live in a 0600 file (or a systemd credential), out of the config, the
    command line and ps; /stats (which names keys) wants it too."""

    def token_file(self, text=TOKEN + "\n"):
        fd, path = tempfile.mkstemp(prefix="parexd-token-")
        os.write(fd, text.encode())
        os.close(fd)
        self.addCleanup(os.unlink, path)
        return path

    def test_auth_token_file_parexctl_token_file_and_stats(self):
        path = self.token_file()
        with pxsys.SysDaemon(config={"auth_token_file": path}) as d, d.connect() as c:
            a = c.request({"key": "k", "payload": 1})
            self.assertEqual((a["status"], a["error"]["code"]), ("rejected", "unauthorized"))
            self.assertEqual(c.request({"key": "k", "payload": 1, "token": TOKEN})["status"], "ok")
            rc, out, err = px.run_parexctl("send", "--addr", d.addr, "--key", "k",
                                           "--token-file", path)
            self.assertEqual(rc, 0, out + err)
            st, hdr, body = pxsys.http_request(d.mhost, d.mport, "/stats")
            self.assertEqual(st, 401, body)
            self.assertIn("bearer", hdr.get("www-authenticate", "").lower())
            self.assertNotIn(b"received", body)
            st, _, _ = pxsys.http_request(d.mhost, d.mport, "/stats",
                                          headers={"Authorization": "Bearer wrong-token-xxxxxxxx"})
            self.assertEqual(st, 401)
            self.assertEqual(pxsys.http_request(d.mhost, d.mport, "/healthz")[0], 200)
            rc, out, err = px.run_parexctl("stats", "--metrics-addr", d.maddr)
            self.assertEqual(rc, 2)
            self.assertIn("--token-file", err)
            rc, out, err = px.run_parexctl("stats", "--metrics-addr", d.maddr, "--token-file", path)
            self.assertEqual(rc, 0, err)
            self.assertIn("ok 2  failed 0", out)

    def test_a_systemd_credential_names_the_token(self):
        path = self.token_file()
        env = {"CREDENTIALS_DIRECTORY": os.path.dirname(path)}
        cfg = {"auth_token_file": os.path.basename(path)}
        with px.Daemon(config=cfg, env=env) as d, d.connect() as c:
            self.assertEqual(c.request({"key": "k", "token": TOKEN})["status"], "ok")
            self.assertEqual(c.request({"key": "k"})["status"], "rejected")

    def test_token_file_mistakes_stop_startup(self):
        short = self.token_file("short\n")
        for cfg, want in (({"auth_token_file": short}, "is 5 bytes; expected 16"),
                          ({"auth_token_file": "/nonexistent/tok"}, "cannot open /nonexistent"),
                          ({"auth_token_file": short, "auth_token": TOKEN}, "not both"),
                          ({"auth_token_file": "cred"}, "CREDENTIALS_DIRECTORY")):
            d = px.Daemon(config=cfg, wait_ready=False, env={"CREDENTIALS_DIRECTORY": ""})
            try:
                self.assertEqual(d.wait_exit(), 78, cfg)
                self.assertIn("key 'auth_token_file'", d.stderr_text())
                self.assertIn(want, d.stderr_text())
            finally:
                d.kill()

    def test_default_unix_socket_lives_in_the_runtime_directory(self):
        run = tempfile.mkdtemp(prefix="parexd-run-")
        with px.Daemon(env={"RUNTIME_DIRECTORY": run}) as d:
            sock = os.path.join(run, "parexd.sock")
            px.wait_for(lambda: os.path.exists(sock), what="the default socket")
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            s.sendall(b'{"key":"u","payload":7}\n')
            self.assertIn(b'"result":7', s.recv(4096))
            s.close()

    def test_a_socket_in_a_world_writable_directory_is_warned_about(self):
        shared, private = tempfile.mkdtemp(prefix="parexd-shared-"), tempfile.mkdtemp()
        os.chmod(shared, 0o1777)
        with px.Daemon(config={"listen_unix": os.path.join(shared, "p.sock")}) as d:
            d.wait_log(r"listen_unix \S+p\.sock is in a directory any user can write to")
        with px.Daemon(config={"listen_unix": os.path.join(private, "p.sock")}) as d:
            self.assertNotIn("any user can write to", d.stderr_text())

    def test_unit_and_installer_keep_the_config_private(self):
        root = os.path.dirname(os.path.dirname(HERE))
        with open(os.path.join(root, "systemd", "parexd.service")) as f:
            unit = f.read()
        for line in ("SupplementaryGroups=parexd", "RuntimeDirectory=parexd",
                     "RuntimeDirectoryMode=0750"):
            self.assertIn("\n" + line + "\n", unit)
        self.assertIn("LoadCredential=auth_token:", unit)
        with open(os.path.join(root, "scripts", "install-service")) as f:
            script = f.read()
        self.assertIn("groupadd --system parexd", script)
        self.assertIn("chgrp parexd /etc/parexd/parexd.json", script)
        # cmake --install writes the config 0640, whatever the prefix.
        with open(os.path.join(root, "systemd", "install.cmake")) as f:
            self.assertRegex(f.read(), r"PERMISSIONS OWNER_READ OWNER_WRITE GROUP_READ\s+"
                                       r"FILES \"\$\{PX_SOURCE_DIR\}/config/parexd.json\"")


class DisclosureTest(unittest.TestCase):
    def test_http_errors_quote_the_url_without_credentials_or_query(self):
        up = Upstream()
        try:
            url = "http://svc:s3cretpw@127.0.0.1:%d/fail?api_key=K3Y" % up.port
            cfg = {"handlers": {"up": {"type": "http", "url": url}}}
            with px.Daemon(config=cfg) as d, d.connect() as c:
                a = c.request({"key": "k", "op": "up"})
                self.assertEqual(a["status"], "failed", a)
                msg = a["error"]["message"]
                self.assertIn("http://127.0.0.1:%d/fail" % up.port, msg)
                for secret in ("s3cretpw", "svc", "api_key", "K3Y"):
                    self.assertNotIn(secret, msg)
        finally:
            up.server.shutdown()


if __name__ == "__main__":
    px.main()
