"""A mixed, adversarial load on every concurrent path at once, then a forced stop.

For PX_STRESS_SECONDS (default 60; half with partitioned queues, half keyed) six clients pipeline echo, sleep (some past stall_after_ms,
so on_stall=replace keeps abandoning threads), failures that park poison keys (quarantine),
cancels of their own queued requests, unpark and drop; a scraper reads /metrics and /stats; the
config is reloaded with SIGHUP every second. Then every client queues more work and parexd is
stopped with two SIGTERMs (the forced stop).

Checked: every line is answered exactly once (nothing lost, nothing doubled), the ok/failed
answers of each key on each connection come in the order its requests were sent, the
accounting invariant holds, and the daemon exits 0 with no sanitizer report (scripts/test runs
this under ASan/UBSan and TSan too).
"""

import json
import os
import random
import signal
import sys
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pxharness as px  # noqa: E402

# These tests use the built-in sleep and fail, and pipeline more than one connection may by
# default (max_in_flight_per_connection).
px.SETTINGS.update(builtin_test_ops=True, max_in_flight_per_connection=1 << 24)

SECONDS = float(os.environ.get("PX_STRESS_SECONDS", "60"))
STALL_MS = 60

CONFIG = {
    "workers": 4, "queue_capacity": 256, "on_stall": "replace", "stall_after_ms": STALL_MS,
    "supervise_interval_ms": 10, "dead_after_ms": 5000, "drain_timeout_ms": 3000,
    "quarantine": {"after_failures": 3, "for_ms": 200}, "max_queued_per_key": 64,
}


class Client(threading.Thread):
    """One connection: batches of pipelined lines, each answered before the next batch."""

    def __init__(self, d, n, stop):
        super().__init__(daemon=True)
        self.c = d.connect(timeout=30)
        self.n, self.stop, self.rng = n, stop, random.Random(n)
        self.sent = []      # (key, id) of requests, in send order
        self.answers = []   # every answer line
        self.expected = 0   # lines that must be answered
        self.error = None
        self.seq = 0

    def line(self):
        r, self.seq = self.rng.random(), self.seq + 1
        rid = "%d-%d" % (self.n, self.seq)
        key = "c%d-k%d" % (self.n, self.rng.randrange(6))
        if r < 0.45:
            req = {"key": key, "id": rid}
        elif r < 0.70:
            ms = self.rng.choice((1, 5, 20, STALL_MS + 30))
            req = {"key": key, "id": rid, "op": "sleep", "payload": {"ms": ms}}
        elif r < 0.85:
            key = "poison-%d" % self.rng.randrange(3)
            req = {"key": key, "id": rid, "op": "fail", "payload": {"message": "boom"}}
        elif r < 0.93 and self.sent:
            return {"cancel": self.rng.choice(self.sent[-20:])[1], "id": rid}
        else:
            return {"control": self.rng.choice(("unpark", "drop", "parked")),
                    "key": "poison-%d" % self.rng.randrange(3), "id": rid}
        self.sent.append((key, rid))
        return req

    def batch(self, lines):
        self.expected += len(lines)
        self.c.send(*lines)
        self.answers.extend(self.c.recv_n(len(lines), timeout=60))

    def run(self):
        try:
            while not self.stop.is_set():
                self.batch([self.line() for _ in range(self.rng.randrange(1, 40))])
        except BaseException as e:  # reported by the test
            self.error = e


class StressTest(unittest.TestCase):
    def test_partitioned(self):
        self.run_stress("partitioned", SECONDS / 2)

    def test_keyed(self):
        self.run_stress("keyed", SECONDS / 2)

    def run_stress(self, scheduling, seconds):
        d = px.Daemon(config=dict(CONFIG, scheduling=scheduling), metrics_listen="127.0.0.1:0")
        stop = threading.Event()
        m = d.wait_log(r"metrics on (\S+)")
        maddr = m.group(1)
        clients = []
        try:
            clients = [Client(d, i, stop) for i in range(6)]
            for c in clients:
                c.start()
            scrapes = {"n": 0, "err": None}

            def scraper():
                try:
                    while not stop.is_set():
                        for path in ("/metrics", "/stats"):
                            with urllib.request.urlopen("http://%s%s" % (maddr, path),
                                                        timeout=30) as r:
                                body = r.read()
                            if path == "/stats":
                                json.loads(body)
                            scrapes["n"] += 1
                except BaseException as e:
                    scrapes["err"] = e

            t = threading.Thread(target=scraper, daemon=True)
            t.start()
            end, reloads = time.monotonic() + seconds, 0
            while time.monotonic() < end:
                stop.wait(1.0)  # the pace of the reloads, not a synchronisation
                d.signal(signal.SIGHUP)
                reloads += 1
            stop.set()
            for c in clients:
                c.join(120)
                self.assertFalse(c.is_alive(), "client %d stuck" % c.n)
                self.assertIsNone(c.error, "client %d: %r" % (c.n, c.error))
            t.join(60)
            self.assertIsNone(scrapes["err"])
            d.wait_log(r"reload: configuration applied")
            s = d.wait_idle(60)
            self.assertTrue(s["invariant_holds"], s)

            # Forced stop with work queued and running on every connection.
            tail = []
            for c in clients:
                lines = [{"key": "c%d-k%d" % (c.n, i % 3), "id": "%d-end-%d" % (c.n, i),
                          "op": "sleep", "payload": {"ms": 300}} for i in range(9)]
                c.sent.extend((ln["key"], ln["id"]) for ln in lines)
                c.expected += len(lines)
                c.c.send(*lines)
                tail.append(c)
            d.wait_stats(lambda st: st["in_flight"] > 0, "work in flight before the stop")
            d.signal(signal.SIGTERM)
            d.wait_log(r"drain: stopped accepting")
            d.signal(signal.SIGTERM)
            for c in tail:
                while True:
                    try:
                        c.answers.append(json.loads(c.c.recv_line(60)))
                    except EOFError:
                        break
            rc = d.wait_exit(60)
            err = d.stderr_text()
            self.assertNotIn("Sanitizer", err)
            self.assertEqual(rc, 0, err[-3000:])

            total = stalled = cancelled = parked = 0
            for c in clients:
                ids = [a["id"] for a in c.answers]
                self.assertEqual(len(ids), c.expected, "client %d: answers for lines" % c.n)
                self.assertEqual(len(set(ids)), len(ids), "client %d: an id answered twice" % c.n)
                key_of = dict((i, k) for k, i in c.sent)
                pos = dict((i, n) for n, (k, i) in enumerate(c.sent))
                last = {}
                for a in c.answers:
                    code = a.get("error", {}).get("code")
                    stalled += code == "worker_stalled"
                    cancelled += code == "cancelled"
                    parked += code == "key_parked"
                    if a["status"] not in ("ok", "failed") or a["id"] not in key_of:
                        continue
                    k = key_of[a["id"]]
                    if pos[a["id"]] <= last.get(k, -1):
                        seq = [(x["id"], x["status"], x.get("error", {}).get("code"),
                                x.get("run_ms")) for x in c.answers
                               if key_of.get(x["id"]) == k]
                        self.fail("client %d key %s: %s answered after a later request; the "
                                  "key's answers: %s" % (c.n, k, a["id"], seq))
                    last[k] = pos[a["id"]]
                total += len(ids)
            print("\nstress %s %.0f s: %d answers (%d worker_stalled, %d cancelled, %d key_parked), "
                  "%d scrapes, %d reloads" % (scheduling, seconds, total, stalled, cancelled, parked,
                                              scrapes["n"], reloads), file=sys.stderr)
            self.assertGreater(stalled, 0, "the load must make the supervisor replace threads")
            self.assertGreater(cancelled, 0)
            self.assertGreater(parked, 0)
        finally:
            stop.set()
            for c in clients:
                c.c.close()
            d.kill()


if __name__ == "__main__":
    px.main()
