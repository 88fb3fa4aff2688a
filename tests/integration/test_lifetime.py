"""Lifetime and concurrency defects of the executor (issue: a forced stop can double-free, a stall
replacement can hit the wrong request and break per-key order).

Each test drives the real daemon into the window where the old code went wrong and checks the
promise the README makes there: every request answered exactly once, per-key order of answers,
a clean exit. Under the ASan build (scripts/test runs the whole suite there too) a use after
free or a double free in these paths fails the run even when the answers look right.
"""

import json
import os
import signal
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pxharness as px  # noqa: E402

# These tests use the built-in sleep and fail, and pipeline more than one connection may by
# default (max_in_flight_per_connection).
px.SETTINGS.update(builtin_test_ops=True, max_in_flight_per_connection=1 << 24)


def read_until_eof(c, timeout=30):
    """Every answer line until the daemon closes the connection."""
    out = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no EOF after %d answers" % len(out))
        try:
            line = c.recv_line(left)
        except EOFError:
            return out
        out.append(json.loads(line))


def busy_on(d, op):
    """Waits until a worker runs op; returns the monotonic time it was seen running."""
    d.wait_stats(lambda s: any(w["current_op"] == op for w in s["workers"]), op + " running")
    return time.monotonic()


def assert_key_order(test, sent, answers):
    """sent: [(key, id)] in send order; ok/failed answers of a key come in that order."""
    key_of = dict((i, k) for k, i in sent)
    pos = dict((i, n) for n, (k, i) in enumerate(sent))
    last = {}
    for a in answers:
        if a["status"] not in ("ok", "failed") or a["id"] not in key_of:
            continue
        k = key_of[a["id"]]
        test.assertGreater(pos[a["id"]], last.get(k, -1),
                           "key %r: answer for %r came after a later request's" % (k, a["id"]))
        last[k] = pos[a["id"]]


class ForcedStopTest(unittest.TestCase):
    def test_forced_stop_as_the_running_request_ends(self):
        # One worker sleeps with 20 000 echoes queued behind it; the second SIGTERM lands just
        # before the sleep ends, so the forced stop is still answering the queue when the
        # worker finishes, hands its request back and exits. The old code then freed that
        # request twice (plain build: "double free detected", exit -6). How long reading the
        # echoes takes is measured first on the same daemon (sanitizer builds are slower), so
        # the sleep outlasts it and the signal still lands in the window.
        n = 20000
        echoes = b"".join(b'{"key":"k%d","id":%d}\n' % (i % 97, i) for i in range(1, n + 1))
        for before_end in (0.06, 0.03, 0.01, 0.0):
            d = px.Daemon(["--workers", "1", "--queue-capacity", str(n)])
            try:
                with d.connect() as c:
                    t = time.monotonic()
                    c.send_raw(echoes)
                    c.recv_n(n, timeout=120)
                    fill = time.monotonic() - t
                    sleep_s = max(0.6, 3 * fill + 0.2)
                    c.send({"key": "k", "id": 0, "op": "sleep",
                            "payload": {"ms": int(sleep_s * 1000)}})
                    t0 = busy_on(d, "sleep")
                    c.send_raw(echoes)
                    d.wait_stats(lambda s: s["in_flight"] == n + 1, "all queued", timeout=60)
                    d.signal(signal.SIGTERM)
                    left = t0 + sleep_s - before_end - time.monotonic()
                    self.assertGreater(left, 0, "the echoes took longer to queue than measured")
                    time.sleep(left)  # the window itself, not a wait for a condition
                    d.signal(signal.SIGTERM)
                    answers = read_until_eof(c, timeout=120)
                ids = [a["id"] for a in answers]
                self.assertEqual(sorted(ids), list(range(n + 1)), "each request answered once")
                self.assertEqual(d.wait_exit(60), 0, d.stderr_text()[-2000:])
            finally:
                d.kill()

    def assert_cancelled_in_order(self, scheduling):
        d = px.Daemon(["--workers", "2"], config={"scheduling": scheduling})
        try:
            with d.connect() as c:
                c.send({"key": "a", "id": 1, "op": "sleep", "payload": {"ms": 5000}})
                busy_on(d, "sleep")
                c.send({"key": "a", "id": 2}, {"key": "a", "id": 3})
                d.wait_stats(lambda s: s["in_flight"] == 3, "two queued behind the sleep")
                d.signal(signal.SIGTERM)
                d.wait_log(r"drain: stopped accepting")
                d.signal(signal.SIGTERM)
                answers = read_until_eof(c)
            self.assertEqual([(a["id"], a["status"], a["error"]["code"]) for a in answers],
                             [(1, "failed", "cancelled"), (2, "failed", "cancelled"),
                              (3, "failed", "cancelled")])
            self.assertIn("finished running", answers[0]["error"]["message"])
            self.assertIn("could run", answers[1]["error"]["message"])
            self.assertEqual(d.wait_exit(), 0)
        finally:
            d.kill()

    def test_forced_stop_answers_a_key_in_order_partitioned(self):
        self.assert_cancelled_in_order("partitioned")

    def test_forced_stop_answers_a_key_in_order_keyed(self):
        self.assert_cancelled_in_order("keyed")


class ReplaceTest(unittest.TestCase):
    STALL = 40

    def test_replacement_hits_only_the_stalled_run_and_keeps_key_order(self):
        # Runs that end just around stall_after_ms, on few workers, with a supervisor looking
        # every 10 ms: the old code abandoned whatever ran when it acted, so a fresh request
        # could be answered worker_stalled (run_ms near 0), and answered ahead of an earlier
        # request of its key still on the completion list.
        d = px.Daemon(["--workers", "2"], config={
            "on_stall": "replace", "stall_after_ms": self.STALL, "supervise_interval_ms": 10,
            "dead_after_ms": 2000})
        try:
            conns = [d.connect() for _ in range(4)]
            sent = [[] for _ in conns]
            got = [[] for _ in conns]
            for rnd in range(6):
                for ci, c in enumerate(conns):
                    lines = []
                    for j in range(12):
                        key = "k%d" % (j % 3)
                        rid = "%d-%d-%d" % (rnd, ci, j)
                        ms = (self.STALL - 5, self.STALL + 5, 1)[j % 3]
                        lines.append({"key": key, "id": rid, "op": "sleep", "payload": {"ms": ms}})
                        sent[ci].append((key, rid))
                    c.send(*lines)
                for ci, c in enumerate(conns):
                    got[ci].extend(c.recv_n(12, timeout=30))
            for ci in range(len(conns)):
                assert_key_order(self, sent[ci], got[ci])
            sent = [x for per in sent for x in per]
            answers = [a for per in got for a in per]
            stalled = [a for a in answers if a.get("error", {}).get("code") == "worker_stalled"]
            for a in stalled:
                self.assertGreaterEqual(a["run_ms"], self.STALL - 1, a)
            self.assertEqual(len(answers), len(sent))
            self.assertEqual(len(set(a["id"] for a in answers)), len(sent))
            for c in conns:
                c.close()
            s = d.wait_idle(30)
            self.assertTrue(s["invariant_holds"], s)
            print("\nreplace: %d answers, %d worker_stalled, all of them over %d ms"
                  % (len(answers), len(stalled), self.STALL), file=sys.stderr)
            d.stop()
        finally:
            d.kill()

    def test_waiting_for_a_concurrency_slot_is_not_a_stall(self):
        # max_concurrency 1 and three requests of 0.4 s on three keys: the third waits 0.8 s
        # for the slot, past stall_after_ms (0.6 s). Waiting is queue time: nothing is
        # replaced, every request is ok, and the wait shows in queue_ms.
        d = px.Daemon(["--workers", "3"], config={
            "scheduling": "keyed", "on_stall": "replace", "stall_after_ms": 600,
            "supervise_interval_ms": 20,
            "handlers": {"slow": {"type": "exec", "argv": ["sleep", "0.4"],
                                  "max_concurrency": 1}}})
        try:
            with d.connect() as c:
                c.send(*[{"key": "k%d" % i, "id": i, "op": "slow"} for i in range(3)])
                answers = c.recv_n(3, timeout=15)
            for a in answers:
                self.assertEqual(a["status"], "ok", a)
                self.assertLess(a["run_ms"], 600, a)
            self.assertGreater(max(a["queue_ms"] for a in answers), 700, answers)
            s = d.stats()
            self.assertEqual(sum(w["replaced"] for w in s["workers"]), 0, s["workers"])
            d.stop()
        finally:
            d.kill()


class StartupFailureTest(unittest.TestCase):
    def test_busy_metrics_port_exits_78_after_joining_the_workers(self):
        # The workers are already running when the metrics endpoint fails to bind: they must be
        # joined before their queues go (the old code freed them under running threads).
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            d = px.Daemon(["--workers", "8"], metrics_listen="127.0.0.1:%d" % port,
                          wait_ready=False)
            try:
                self.assertEqual(d.wait_exit(15), 78, d.stderr_text())
                err = d.stderr_text()
                self.assertIn("metrics_listen", err)
                self.assertNotIn("Sanitizer", err)
            finally:
                d.kill()


if __name__ == "__main__":
    px.main()
