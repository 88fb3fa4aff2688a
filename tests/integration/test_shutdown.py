"""Graceful shutdown: on SIGTERM or SIGINT parexd stops accepting connections, answers new lines
rejected/shutting_down, lets queued and running requests finish and flushes their answers, then
exits 0. When drain_timeout_ms passes, or a second signal comes, queued requests are answered
failed/cancelled and the daemon exits."""

import signal
import socket
import time
import unittest

import pxharness as px

# These tests use the built-in sleep and fail, and pipeline more than one connection may by
# default (max_in_flight_per_connection).
px.SETTINGS.update(builtin_test_ops=True, max_in_flight_per_connection=1 << 24)

WORKERS = 2


def refused(d):
    """True once a new connection to the daemon's port is refused. (A connection caught in the
    listen backlog when the listener closes is reset: refused as well.) A SYN that reaches the
    kernel while the listener is being closed can be dropped unanswered; the client would only
    retransmit it after a second, so an attempt that gets no answer soon is simply made again,
    on a new port, rather than taken for a verdict either way."""
    try:
        s = socket.create_connection((d.host, d.port), timeout=0.2)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except TimeoutError:
        return False
    s.close()
    return False


class ShutdownTest(px.Accounting, unittest.TestCase):
    def start(self, config=None):
        d = px.Daemon(["--workers", str(WORKERS)], config=config)
        self.addCleanup(d.kill)
        by_worker = px.keys_by_worker(WORKERS, "sd")
        return d, by_worker[0][0], by_worker[1][0]

    def connect(self, d):
        c = d.connect()
        self.addCleanup(c.close)
        return c

    def sleeps(self, key, prefix, ms, n):
        return [{"key": key, "id": "%s%d" % (prefix, i), "op": "sleep", "payload": {"ms": ms}}
                for i in range(n)]

    def graceful(self, sig):
        d, k0, k1 = self.start({"drain_timeout_ms": 20000})
        busy = self.connect(d)
        idle = self.connect(d)
        # Running and queued work on both workers: 3 x 250 ms on k0, 2 x 250 ms on k1.
        busy.send(*(self.sleeps(k0, "a", 250, 3) + self.sleeps(k1, "b", 250, 2)))
        s = d.wait_stats(lambda s: s["in_flight"] == 5
                         and all(w["current_key"] for w in s["workers"]),
                         "five requests in flight, both workers running")
        self.assertAccounting(s)
        t_sig = time.monotonic()
        d.signal(sig)

        # New connections are refused...
        px.wait_for(lambda: refused(d), 2, "new connections refused")
        # ...new lines on open connections are answered rejected/shutting_down at once...
        for c, rid in ((idle, "late-idle"), (busy, "late-busy")):
            c.send({"key": k0, "id": rid, "payload": 1})
            r = c.recv(timeout=0.5)
            self.assertEqual((r["id"], r["status"], r["error"]["code"]),
                             (rid, "rejected", "shutting_down"), r)
            self.assertGreater(len(r["error"]["message"]), 10)
        self.assertLess(time.monotonic() - t_sig, 0.7)

        # Everything accepted before the signal runs to completion and is answered, in order.
        rs = busy.recv_n(5, timeout=5)
        ids = [r["id"] for r in rs]
        self.assertEqual([i for i in ids if i.startswith("a")], ["a0", "a1", "a2"])
        self.assertEqual([i for i in ids if i.startswith("b")], ["b0", "b1"])
        for r in rs:
            self.assertEqual(r["status"], "ok", r)
            self.assertEqual(r["result"], {"slept_ms": 250})
        # Then the daemon closes the connections and exits 0.
        self.assertEqual(busy.wait_eof(timeout=5), [])
        self.assertEqual(idle.wait_eof(timeout=5), [])
        self.assertEqual(d.wait_exit(5), 0, d.stderr_text())
        # It waited for the work (750 ms on k0) rather than cutting it short.
        self.assertGreaterEqual(time.monotonic() - t_sig, 0.4)

    def test_sigterm_drains_gracefully(self):
        self.graceful(signal.SIGTERM)

    def test_sigint_drains_gracefully(self):
        self.graceful(signal.SIGINT)

    def test_idle_daemon_exits_at_once(self):
        d, _, _ = self.start()
        with d.connect() as c:
            self.assertEqual(c.request({"key": "x", "payload": 1})["status"], "ok")
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        self.assertEqual(d.wait_exit(5), 0)
        self.assertLess(time.monotonic() - t0, 2)

    def test_drain_timeout_cancels_queued_requests(self):
        d, k0, k1 = self.start({"drain_timeout_ms": 300})
        c = self.connect(d)
        c.send(*(self.sleeps(k0, "run", 5000, 1) + self.sleeps(k0, "q", 100, 3)))
        d.wait_stats(lambda s: s["in_flight"] == 4
                     and any(w["current_key"] == k0 for w in s["workers"]),
                     "one running, three queued")
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        rs = c.recv_n(4, timeout=5)
        by_id = {r["id"]: r for r in rs}
        self.assertEqual(set(by_id), {"run0", "q0", "q1", "q2"})
        for i in range(3):
            r = by_id["q%d" % i]
            self.assertEqual((r["status"], r["error"]["code"]), ("failed", "cancelled"), r)
            self.assertGreater(len(r["error"]["message"]), 10)
            self.assertIsInstance(r["worker"], int)
            self.assertIsInstance(r["queue_ms"], (int, float))
            self.assertIsInstance(r["run_ms"], (int, float))
        # The running one cannot finish within the timeout either (README: cancelled too).
        self.assertEqual((by_id["run0"]["status"], by_id["run0"]["error"]["code"]),
                         ("failed", "cancelled"), by_id["run0"])
        # Queued answers keep their order on the connection.
        self.assertEqual([r["id"] for r in rs if r["id"].startswith("q")], ["q0", "q1", "q2"])
        self.assertEqual(c.wait_eof(timeout=5), [])
        rc = d.wait_exit(5)
        elapsed = time.monotonic() - t0
        self.assertEqual(rc, 0, d.stderr_text())
        # It gave up after about drain_timeout_ms, not after the 5 s sleep.
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 3)

    def test_second_signal_forces(self):
        d, k0, k1 = self.start({"drain_timeout_ms": 60000})
        c = self.connect(d)
        c.send(*(self.sleeps(k0, "run", 5000, 1) + self.sleeps(k0, "q", 100, 2)))
        d.wait_stats(lambda s: s["in_flight"] == 3
                     and any(w["current_key"] == k0 for w in s["workers"]),
                     "one running, two queued")
        d.signal(signal.SIGTERM)
        px.wait_for(lambda: refused(d), 2, "new connections refused")
        # Draining, not stopped: new lines are rejected, the daemon keeps running.
        r = c.request({"key": k1, "id": "late"}, timeout=1)
        self.assertEqual((r["id"], r["error"]["code"]), ("late", "shutting_down"), r)
        self.assertIsNone(d.proc.poll())
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        rs = c.recv_n(3, timeout=3)
        for r in rs:
            self.assertEqual((r["status"], r["error"]["code"]), ("failed", "cancelled"), r)
        self.assertEqual(sorted(r["id"] for r in rs), ["q0", "q1", "run0"])
        self.assertEqual(d.wait_exit(3), 0, d.stderr_text())
        self.assertLess(time.monotonic() - t0, 2)

    def test_answers_flushed_to_a_slow_reader_before_exit(self):
        # Many answers pending for a client that reads only after the signal: the daemon must
        # not exit before they are written.
        d, k0, k1 = self.start({"drain_timeout_ms": 20000})
        c = self.connect(d)
        n = 2000
        payload = "p" * 200
        c.send(*([{"key": k0, "id": "s", "op": "sleep", "payload": {"ms": 200}}]
                 + [{"key": k1 if i % 2 else k0, "id": i, "payload": payload} for i in range(n)]))
        d.wait_stats(lambda s: s["received"] == n + 1, "all requests read")
        d.signal(signal.SIGTERM)
        rs = c.recv_n(n + 1, timeout=10)
        self.assertEqual(sorted(r["id"] for r in rs if r["id"] != "s"), list(range(n)))
        for r in rs:
            self.assertEqual(r["status"], "ok")
        self.assertEqual(c.wait_eof(timeout=5), [])
        self.assertEqual(d.wait_exit(5), 0)


if __name__ == "__main__":
    px.main()
