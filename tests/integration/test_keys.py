"""Hot keys and poison keys: whatever one key does, every other key keeps moving.

- Per-key admission cap (max_queued_per_key): a hot key that floods its worker's queue pushes out
  the cold keys sharing that worker (queue_full) unless the cap answers the hot key's excess
  rejected/key_busy first; with the cap the cold keys see no rejection at all.
- Quarantine ({"after_failures": K, "for_ms": T}): K consecutive failures of a key park it; its
  queued and new requests are answered rejected/key_parked with the last error, the other keys of
  its worker go on, and it is admitted again after T (or parexctl unpark); parexctl parked lists
  it and parexctl drop cancels its queued requests. No request of a key ever runs before an
  earlier one of the same key.
- Keyed scheduling: per-key order and the accounting invariant under many connections, and an
  idle worker takes a waiting key at once (measured against the partitioned queues).
- Hot-key visibility: top keys by arrivals and by time, and the imbalance ratio.

Every daemon listens on 127.0.0.1 port 0 (request and metrics endpoints, set in its config) and
is waited for by its readiness log line; conditions are polled against deadlines.
"""

import json
import os
import sys
import threading
import shutil
import tempfile
import time
import unittest

import pxharness as px
import pxsys

# These tests use the built-in sleep and fail, and pipeline more than one connection may by
# default (max_in_flight_per_connection).
px.SETTINGS.update(builtin_test_ops=True, max_in_flight_per_connection=1 << 24)

WORKERS = 4

# An exec handler that fails slowly, the way a real poison request does (a call that times out, a
# parse that chokes): sleeps payload.ms, writes "poison ID" on stderr and exits 1.
POISON_PROG = (
    "import json, sys, time\n"
    "r = json.loads(sys.stdin.readline())\n"
    "time.sleep(((r.get('payload') or {}).get('ms', 0)) / 1000)\n"
    "sys.stderr.write('poison %s' % r['id'])\n"
    "sys.exit(1)\n")

# An exec handler that appends "KEY SEQ" to the file named by argv[1] when it runs, then exits
# with payload.status (0: ok, 1: failed). The file is the record of what ran, in run order.
RUNLOG_PROG = (
    "import json, sys\n"
    "r = json.loads(sys.stdin.readline())\n"
    "p = r['payload']\n"
    "with open(sys.argv[1], 'a') as f:\n"
    "    f.write('%s %d\\n' % (r['key'], p['seq']))\n"
    "if p.get('status'):\n"
    "    sys.stderr.write('seq %d failed' % p['seq'])\n"
    "    sys.exit(p['status'])\n"
    "print(json.dumps({'seq': p['seq']}))\n")


def log(fmt, *args):
    """Measured figures, on stderr (shown by ctest --output-on-failure and by a direct run)."""
    sys.stderr.write("  [figure] " + (fmt % args) + "\n")


def start(scheduling=None, workers=WORKERS, **cfg):
    """A parexd with the given config keys, both endpoints on 127.0.0.1 port 0."""
    conf = {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "workers": workers}
    if scheduling:
        conf["scheduling"] = scheduling
    conf.update(cfg)
    return pxsys.SysDaemon(config=conf, listen=None, metrics_listen=None)


def metric(d, name, **labels):
    return pxsys.sample(d.metrics(), name, **labels)


def same_worker_keys(prefix, n, workers=WORKERS):
    """(1, [n keys that partitioned routing sends to worker 1]), found with parexctl route."""
    by = px.keys_by_worker(workers, prefix, need=n)
    return 1, by[1][:n]


def wait_running(d, worker, key):
    """Waits until the worker runs a request of key with nothing queued behind it yet."""
    return d.wait_stats(lambda s: s["workers"][worker]["current_key"] == key
                        and s["workers"][worker]["queue_depth"] == 0,
                        "worker %d running key %s" % (worker, key))


def rejected_last(responses):
    """One key's answers with those that ran in the order they came, then the rejected ones by
    id. A request read after its key was parked is rejected on the spot (the README: rejected
    answers are given when the line is read), possibly ahead of earlier requests' answers still
    on their way from the worker; only the answers of requests that ran keep their key's order
    on the connection. Ids are assigned in send order."""
    ran = [r for r in responses if r["status"] != "rejected"]
    return ran + sorted((r for r in responses if r["status"] == "rejected"), key=lambda r: r["id"])


def by_id(responses):
    out = {}
    for r in responses:
        if r["id"] in out:
            raise AssertionError("two answers for id %r" % r["id"])
        out[r["id"]] = r
    return out


class KeysTestCase(px.Accounting, unittest.TestCase):
    """Each test starts its own daemon (the settings under test differ) and checks at the end
    that the books balance with nothing left in flight."""

    d = None

    def tearDown(self):
        d, self.d = self.d, None
        if d is None:
            return
        try:
            if d.proc.poll() is None:
                self.assertBooks(d.wait_idle())
        finally:
            d.stop()

    def assertBooks(self, s):
        """received == rejected + ok + failed + in_flight, nothing in flight. (That accepted ==
        ok + failed + in_flight too is checked by test_books_balance_*: it breaks on its own.)"""
        self.assertTrue(s["invariant_holds"], s)
        self.assertEqual(s["received"], s["rejected"] + s["ok"] + s["failed"] + s["in_flight"], s)
        self.assertEqual(s["rejected"], sum(s["rejected_by_reason"].values()), s)
        self.assertEqual(s["in_flight"], 0, s)

    def assertRejected(self, r, code, rid=None):
        self.assertEqual(r["status"], "rejected", r)
        self.assertEqual(r["error"]["code"], code, r)
        if rid is not None:
            self.assertEqual(r["id"], rid, r)
        self.assertNotIn("result", r)
        self.assertIsInstance(r.get("retry_after_ms"), int, r)
        self.assertGreater(r["retry_after_ms"], 0, r)


# ---------------------------------------------------------------------------------------------
# Per-key admission cap


class HotKeyCapTest(KeysTestCase):
    """One hot key floods its worker while cold keys share that worker: 4 workers, queue_capacity
    8. The hot key first holds the worker with a long request; then, in one write, 30 hot
    requests with 6 cold keys (one request each) spread among them, plus cold keys of the other
    workers."""

    CAPACITY = 8
    HOT_N = 30
    COLD_AT = (2, 7, 12, 17, 22, 27)  # positions of the cold requests among the hot worker's lines

    def flood(self, cap):
        cfg = {"queue_capacity": self.CAPACITY}
        if cap:
            cfg["max_queued_per_key"] = cap
        self.d = d = start(**cfg)
        hw, keys = same_worker_keys("hc", 1 + len(self.COLD_AT))
        hot, colds = keys[0], keys[1:]
        others = [px.keys_by_worker(WORKERS, "hc")[w][0] for w in range(WORKERS) if w != hw]

        with d.connect() as c:
            c.send({"key": hot, "id": "blocker", "op": "sleep", "payload": {"ms": 500}})
            wait_running(d, hw, hot)
            lines, cold_ids, hot_ids = [], [], []
            ci = hi = 0
            for pos in range(self.HOT_N + len(colds)):
                if pos in self.COLD_AT:
                    rid = "cold-%d" % ci
                    lines.append({"key": colds[ci], "id": rid, "payload": {"cold": ci}})
                    cold_ids.append(rid)
                    ci += 1
                else:
                    rid = "hot-%d" % hi
                    lines.append({"key": hot, "id": rid, "payload": {"hot": hi}})
                    hot_ids.append(rid)
                    hi += 1
            for i, k in enumerate(others):
                lines.append({"key": k, "id": "other-%d" % i, "payload": i})
            c.send(*lines)
            rs = by_id(c.recv_n(len(lines) + 1))
        cold = [rs[i] for i in cold_ids]
        hotr = [rs[i] for i in hot_ids]
        self.assertEqual(rs["blocker"]["status"], "ok", rs["blocker"])
        for i in range(len(others)):
            r = rs["other-%d" % i]
            self.assertEqual((r["status"], r["result"]), ("ok", i), r)
            self.assertNotEqual(r["worker"], hw)
        return d, hw, hot, cold, hotr

    def test_without_cap_cold_keys_sharing_the_hot_worker_are_rejected(self):
        d, hw, hot, cold, hotr = self.flood(cap=0)
        cold_rej = [r for r in cold if r["status"] == "rejected"]
        for r in cold_rej:
            self.assertRejected(r, "queue_full")
            self.assertEqual(r["worker"], hw)
        # The blocker runs while all the lines are read: the first CAPACITY lines of the hot
        # worker are queued, every later one is rejected, cold or hot.
        expect = sum(1 for p in self.COLD_AT if p >= self.CAPACITY)
        log("no cap: %d of %d cold requests on the hot worker rejected queue_full; hot: %d "
            "accepted, %d rejected", len(cold_rej), len(cold),
            sum(1 for r in hotr if r["status"] == "ok"),
            sum(1 for r in hotr if r["status"] == "rejected"))
        self.assertEqual(len(cold_rej), expect, cold)
        self.assertGreater(len(cold_rej), 0)
        self.assertTrue(all(r["status"] != "rejected" or r["error"]["code"] == "queue_full"
                            for r in hotr), hotr)
        m = d.metrics()
        self.assertEqual(pxsys.sample(m, "parexd_requests_rejected_total", reason="key_busy"), 0)
        self.assertGreater(pxsys.sample(m, "parexd_requests_rejected_total", reason="queue_full"),
                           0)

    def test_with_cap_hot_key_is_busy_and_cold_keys_see_no_rejection(self):
        cap = 2
        d, hw, hot, cold, hotr = self.flood(cap=cap)
        # Cold keys on the hot key's worker: none rejected, every one ran and completed.
        for i, r in enumerate(cold):
            self.assertEqual((r["status"], r["result"], r["worker"]), ("ok", {"cold": i}, hw), r)
        # The hot key: the blocker runs and cap - 1 more are queued; the rest are key_busy at
        # once, with the worker and a hint when to retry, even though the queue had room.
        ok = [r for r in hotr if r["status"] == "ok"]
        busy = [r for r in hotr if r["status"] == "rejected"]
        self.assertEqual([r["id"] for r in ok], ["hot-%d" % i for i in range(cap - 1)])
        self.assertEqual(len(busy), self.HOT_N - (cap - 1))
        for r in busy:
            self.assertRejected(r, "key_busy")
            self.assertEqual(r["worker"], hw, r)
            self.assertIn("max_queued_per_key", r["error"]["message"])
        log("cap %d: 0 of %d cold requests on the hot worker rejected (all ok); hot: %d "
            "accepted, %d key_busy", cap, len(cold), len(ok), len(busy))
        m = d.metrics()
        self.assertEqual(pxsys.sample(m, "parexd_requests_rejected_total", reason="key_busy"),
                         len(busy))
        self.assertEqual(pxsys.sample(m, "parexd_requests_rejected_total", reason="queue_full"), 0)
        s = d.wait_idle()
        self.assertEqual(s["rejected_by_reason"]["key_busy"], len(busy))
        # Once its requests are done the hot key is admitted again: the cap counts what is in
        # flight, not what came before.
        with d.connect() as c:
            rs = [c.request({"key": hot, "id": i, "payload": i}) for i in range(cap + 2)]
        self.assertEqual([r["status"] for r in rs], ["ok"] * (cap + 2), rs)

    def test_cap_counts_queued_and_running_per_key(self):
        # Exactly N in flight per key: with the worker held by another key, key A gets N queued
        # and the N+1st is key_busy; key B (same worker) gets its own N.
        n = 3
        self.d = d = start(queue_capacity=64, max_queued_per_key=n)
        hw, (holder, a, b) = same_worker_keys("cc", 3)
        with d.connect() as c:
            c.send({"key": holder, "id": "hold", "op": "sleep", "payload": {"ms": 300}})
            wait_running(d, hw, holder)
            c.send(*[{"key": k, "id": "%s%d" % (k, i)} for k in (a, b) for i in range(n + 1)])
            rs = by_id(c.recv_n(2 * (n + 1) + 1))
        for k in (a, b):
            self.assertEqual([rs["%s%d" % (k, i)]["status"] for i in range(n)], ["ok"] * n)
            self.assertRejected(rs["%s%d" % (k, n)], "key_busy")


# ---------------------------------------------------------------------------------------------
# Quarantine


class QuarantineMixin:
    SCHEDULING = None
    K = 3

    def start_q(self, for_ms=60000, **cfg):
        handlers = {"poison": {"type": "exec", "argv": [sys.executable, "-I", "-S", "-c",
                                                         POISON_PROG]}}
        self.d = start(self.SCHEDULING, quarantine={"after_failures": self.K, "for_ms": for_ms},
                       handlers=handlers, **cfg)
        return self.d

    def test_parked_after_exactly_k_consecutive_failures_in_send_order(self):
        d = self.start_q()
        hw, (p, cold) = same_worker_keys("qk", 2)
        # fail, ok (resets the run), then K failures: the K-th parks the key. Every later one is
        # answered key_parked, carrying the K-th failure's message, without running.
        plan = [("fail", 0), ("echo", 1)] + [("fail", 2 + i) for i in range(self.K)] + \
               [("echo", 2 + self.K), ("fail", 3 + self.K), ("echo", 4 + self.K)]
        last_fail = 1 + self.K
        with d.connect() as c:
            c.send(*[{"key": p, "id": s, "op": op,
                      "payload": {"message": "boom %d" % s} if op == "fail" else {"seq": s}}
                     for op, s in plan])
            rs = c.recv_n(len(plan))
        # The answers of the requests that ran come back in the order they were sent. Those
        # after the park are rejected: in their turn when they were queued before it, on the
        # spot when the daemon read them after it (the README's guarantee: rejected answers are
        # given when the line is read), so their place among the others is not fixed.
        rs = rejected_last(rs)
        self.assertEqual([r["id"] for r in rs], [s for _, s in plan])
        self.assertEqual((rs[0]["status"], rs[0]["error"]["message"]), ("failed", "boom 0"))
        self.assertEqual((rs[1]["status"], rs[1]["result"]), ("ok", {"seq": 1}), rs[1])
        for r in rs[2:2 + self.K]:
            self.assertEqual((r["status"], r["error"]["message"]), ("failed", "boom %d" % r["id"]),
                             r)
        for r in rs[2 + self.K:]:
            self.assertRejected(r, "key_parked")
            self.assertIn("last error: boom %d" % last_fail, r["error"]["message"])
            self.assertLessEqual(r["retry_after_ms"], 60000 + 1)
            self.assertNotIn("queue_ms", r)  # never ran

        # New requests are answered key_parked at once; a cold key of the same worker runs.
        with d.connect() as c:
            t0 = time.monotonic()
            r = c.request({"key": p, "id": "late", "payload": 1})
            self.assertRejected(r, "key_parked", "late")
            self.assertIn("last error: boom %d" % last_fail, r["error"]["message"])
            r = c.request({"key": cold, "id": "cold", "payload": 2})
            self.assertEqual((r["status"], r["result"]), ("ok", 2), r)
            self.assertLess(time.monotonic() - t0, 1.0)
        s = d.wait_idle()
        self.assertEqual(s["keys_parked"], 1)
        self.assertEqual(s["key_parks"], 1)
        self.assertEqual(s["rejected_by_reason"]["key_parked"], len(plan) - 2 - self.K + 1)
        self.assertEqual([e["key"] for e in s["parked"]], [p])
        m = d.metrics()
        self.assertEqual(pxsys.sample(m, "parexd_keys_parked"), 1)
        self.assertEqual(pxsys.sample(m, "parexd_key_parks_total"), 1)
        self.assertEqual(pxsys.sample(m, "parexd_requests_rejected_total", reason="key_parked"),
                         len(plan) - 2 - self.K + 1)

    def test_every_key_parked_after_exactly_k_failures(self):
        # Many poison keys, each sent K + 2 failing requests in one write, while another
        # connection keeps every worker busy with short requests (so a worker takes each request
        # as soon as it is queued): every key must answer exactly K failed and 2 key_parked. The
        # park depends on the worker seeing the key's entry on every request it runs.
        d = self.start_q()
        keys, extra = 200, 2
        busy = [px.keys_by_worker(WORKERS, "busy")[w][0] for w in range(WORKERS)]
        stop, errors = threading.Event(), []

        def keep_busy():
            try:
                with d.connect() as c:
                    while not stop.is_set():
                        c.send(*[{"key": busy[i % WORKERS], "id": i, "op": "sleep",
                                  "payload": {"ms": 0}} for i in range(100)])
                        rs = c.recv_n(100)
                        if any(r["status"] != "ok" for r in rs):
                            raise AssertionError("busy key answered %r" % rs)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=keep_busy)
        t.start()
        wrong = {}
        try:
            with d.connect() as c:
                for i in range(keys):
                    key = "many-%d" % i
                    c.send(*[{"key": key, "id": j, "op": "fail", "payload": {"message": "x%d" % j}}
                             for j in range(self.K + extra)])
                    got = sorted((r["id"], r["status"]) for r in c.recv_n(self.K + extra))
                    want = [(j, "failed") for j in range(self.K)] + \
                           [(self.K + j, "rejected") for j in range(extra)]
                    if got != want:
                        wrong[key] = [st for _, st in got]
        finally:
            stop.set()
            t.join(px.TIMEOUT)
        self.assertEqual(errors, [])
        log("%s: %d of %d keys not parked after exactly K=%d failures",
            self.SCHEDULING or "partitioned", len(wrong), keys, self.K)
        self.assertEqual(wrong, {}, "%d of %d keys: %s" % (len(wrong), keys,
                                                             list(wrong.items())[:5]))
        s = d.wait_idle()
        self.assertEqual(s["key_parks"], keys)
        self.assertEqual(s["keys_parked"], keys)

    def test_books_balance_when_queued_requests_are_answered_key_parked(self):
        # Requests accepted into a queue and answered key_parked when their turn comes: the books
        # of the core must still balance, accepted == ok + failed + in_flight included.
        d = self.start_q()
        hw, (p,) = same_worker_keys("qb", 1)
        with d.connect() as c:
            c.send(*[{"key": p, "id": i, "op": "fail"} for i in range(self.K + 3)])
            rs = c.recv_n(self.K + 3)
        self.assertEqual(sorted(r["status"] for r in rs), ["failed"] * self.K + ["rejected"] * 3)
        s = d.wait_idle()
        self.assertEqual((s["received"], s["failed"], s["rejected"]), (self.K + 3, self.K, 3))
        self.assertAccounting(s)

    def test_slow_poison_key_parked_while_cold_key_on_its_worker_completes_on_time(self):
        # The poison key's requests each fail after SLOW ms (an exec handler exiting 1). 20 of
        # them are queued ahead of a cold key of the same worker: run to the end they would hold
        # it for 20 * SLOW ms; parked after K they hold it for about K * SLOW.
        slow, n = 150, 20
        d = self.start_q()
        hw, (p, cold, cold2) = same_worker_keys("qs", 3)
        with d.connect() as c:
            t0 = time.monotonic()
            c.send(*[{"key": p, "id": i, "op": "poison", "payload": {"ms": slow}}
                     for i in range(n)], {"key": cold, "id": "cold", "payload": "c"})
            rs = c.recv_n(n + 1, timeout=30)
            t_all = time.monotonic() - t0
        # The key's answers in send order (keyed: the cold key may be answered first).
        c_r = [r for r in rs if r["id"] == "cold"]
        rs = [r for r in rs if r["id"] != "cold"] + c_r
        self.assertEqual([r["id"] for r in rs], list(range(n)) + ["cold"])
        for r in rs[:self.K]:
            self.assertEqual((r["status"], r["error"]["code"]), ("failed", "handler_error"), r)
            self.assertIn("exited with status 1", r["error"]["message"])
            self.assertIn("poison %d" % r["id"], r["error"]["message"])
        for r in rs[self.K:n]:
            self.assertRejected(r, "key_parked")
            self.assertIn("poison %d" % (self.K - 1), r["error"]["message"])
        c_r = c_r[0]
        self.assertEqual((c_r["status"], c_r["result"]), ("ok", "c"), c_r)
        if self.SCHEDULING != "keyed":
            self.assertEqual(c_r["worker"], hw)
        log("%s: cold key behind %d slow poison requests: queue_ms %.0f (all %d would take "
            "%d ms; K=%d take ~%d ms); whole batch answered in %.0f ms",
            self.SCHEDULING or "partitioned", n, c_r["queue_ms"], n, n * slow, self.K,
            self.K * slow, t_all * 1000)
        self.assertLess(c_r["queue_ms"], (self.K + 4) * slow, c_r)
        self.assertLess(t_all, (self.K + 8) * slow / 1000)
        # While it stays parked, a cold key of its worker is served at once.
        with d.connect() as c:
            t0 = time.monotonic()
            r = c.request({"key": cold2, "id": "cold2", "payload": 3})
            lat = time.monotonic() - t0
            self.assertRejected(c.request({"key": p, "id": "again", "op": "poison",
                                           "payload": {"ms": slow}}), "key_parked", "again")
        self.assertEqual(r["status"], "ok", r)
        log("cold key on the parked key's worker: answered in %.1f ms (queue_ms %.3f)",
            lat * 1000, r["queue_ms"])
        self.assertLess(r["queue_ms"], 50, r)
        self.assertLess(lat, 0.5)

    def test_admitted_again_after_for_ms(self):
        t_ms = 800
        d = self.start_q(for_ms=t_ms)
        hw, (p,) = same_worker_keys("qt", 1)
        with d.connect() as c:
            t_sent = time.monotonic()
            c.send(*[{"key": p, "id": i, "op": "fail", "payload": {"message": "f%d" % i}}
                     for i in range(self.K)])
            rs = c.recv_n(self.K)
            t_parked = time.monotonic()  # the park happened before this moment
            self.assertEqual([r["status"] for r in rs], ["failed"] * self.K)
            self.assertEqual(metric(d, "parexd_keys_parked"), 1)
            # Poll (the deadline only bounds the wait) until the key is admitted again.
            rejected = []
            deadline = t_parked + t_ms / 1000 + 5
            i = 0
            while True:
                r = c.request({"key": p, "id": "try%d" % i, "payload": i})
                t_now = time.monotonic()
                if r["status"] == "ok":
                    break
                self.assertRejected(r, "key_parked")
                self.assertLessEqual(r["retry_after_ms"], t_ms + 1, r)
                rejected.append(r)
                self.assertLess(t_now, deadline, "still parked %.0f ms after the park; last %r"
                                % ((t_now - t_parked) * 1000, r))
                time.sleep(0.02)  # polling interval
                i += 1
        log("for_ms %d: admitted again %.0f ms after the parking answer (%d polls rejected)",
            t_ms, (t_now - t_parked) * 1000, len(rejected))
        self.assertGreater(len(rejected), 0)
        self.assertGreaterEqual(t_now - t_sent, t_ms / 1000 * 0.98)  # not before T
        self.assertLess(t_now - t_parked, t_ms / 1000 + 1.0)  # and soon after it
        # The gauge follows; the counter keeps the park. A new run of K failures parks again.
        d.wait_stats(lambda s: s["keys_parked"] == 0 and s["parked"] == [], "keys_parked 0")
        px.wait_for(lambda: metric(d, "parexd_keys_parked") == 0, what="parexd_keys_parked 0")
        self.assertEqual(metric(d, "parexd_key_parks_total"), 1)
        with d.connect() as c:
            c.send(*[{"key": p, "id": i, "op": "fail"} for i in range(self.K + 1)])
            rs = c.recv_n(self.K + 1)
        self.assertEqual([r["status"] for r in rs], ["failed"] * self.K + ["rejected"])
        self.assertEqual(metric(d, "parexd_key_parks_total"), 2)

    def test_failures_one_at_a_time_are_consecutive_too(self):
        # A client that retries a poison request after each failure (the common case: one
        # request at a time, with a pause) fails K times in a row: the key must be parked, even
        # when an operator looks at the parked list between the retries.
        d = self.start_q()
        hw, (p,) = same_worker_keys("q1", 1)
        with d.connect() as c:
            for i in range(self.K):
                r = c.request({"key": p, "id": i, "op": "fail", "payload": {"message": "r%d" % i}})
                self.assertEqual(r["status"], "failed", r)
                self.assertEqual(c.request({"control": "parked"})["status"], "ok")
            r = c.request({"key": p, "id": "after", "op": "fail"})
        self.assertRejected(r, "key_parked", "after")
        self.assertIn("last error: r%d" % (self.K - 1), r["error"]["message"])

    def test_order_never_broken_across_a_park(self):
        # Each run of the key appends its sequence number to a file: the run log must be
        # increasing and hold no request answered key_parked; after unpark, later requests run,
        # still in order.
        k = 2
        tmp = tempfile.mkdtemp(prefix="pxkeys-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "runs.log")
        self.d = d = start(self.SCHEDULING, workers=2 if self.SCHEDULING else WORKERS,
                           quarantine={"after_failures": k, "for_ms": 60000},
                           handlers={"run": {"type": "exec", "argv": [
                               sys.executable, "-I", "-S", "-c", RUNLOG_PROG, path]}})
        hw, (p,) = same_worker_keys("qo", 1, 2 if self.SCHEDULING else WORKERS)
        seq = 0
        sent = []

        def req(status=0):
            nonlocal seq
            sent.append(seq)
            seq += 1
            return {"key": p, "id": seq - 1, "op": "run", "payload": {"seq": seq - 1,
                                                                     "status": status}}

        with d.connect() as c:
            lines = [req(), req(1), req(1), req(), req(), req(1), req()]
            c.send(*lines)
            rs = rejected_last(c.recv_n(len(lines), timeout=30))
            self.assertEqual([r["id"] for r in rs], [x["id"] for x in lines])
            self.assertEqual([r["status"] for r in rs],
                             ["ok", "failed", "failed"] + ["rejected"] * 4, rs)
            self.assertEqual(c.request({"control": "unpark", "key": p})["result"]["done"], True)
            lines = [req(), req(1), req()]
            c.send(*lines)
            rs = c.recv_n(len(lines), timeout=30)
            self.assertEqual([r["status"] for r in rs], ["ok", "failed", "ok"], rs)
        with open(path) as f:
            ran = [int(ln.split()[1]) for ln in f.read().splitlines()]
        self.assertEqual(ran, [0, 1, 2, 7, 8, 9], "run log %r" % ran)


class QuarantinePartitionedTest(QuarantineMixin, KeysTestCase):
    pass


class QuarantineKeyedTest(QuarantineMixin, KeysTestCase):
    """The same, with scheduling keyed: a parked key's next request may be taken by any worker,
    and it must still see the park, in order, with the park's reason."""
    SCHEDULING = "keyed"


# ---------------------------------------------------------------------------------------------
# parexctl parked / unpark / drop


class ParexctlQuarantineTest(KeysTestCase):
    K = 2

    def setUp(self):
        self.d = start(quarantine={"after_failures": self.K, "for_ms": 60000})

    def ctl(self, *args):
        return px.run_parexctl(*(list(args) + ["--addr", self.d.addr]))

    def park(self, key, c):
        c.send(*[{"key": key, "id": "f%d" % i, "op": "fail", "payload": {"message": "bad %d" % i}}
                 for i in range(self.K)])
        rs = c.recv_n(self.K)
        self.assertEqual([r["status"] for r in rs], ["failed"] * self.K, rs)

    def test_parked_unpark_listing_and_exit_codes(self):
        d = self.d
        hw, (p,) = same_worker_keys("pp", 1)
        rc, out, err = self.ctl("parked")
        self.assertEqual((rc, json.loads(out)["result"]), (0, {"parked": []}), err)

        with d.connect() as c:
            self.park(p, c)
        rc, out, err = self.ctl("parked")
        self.assertEqual(rc, 0, err)
        r = json.loads(out)
        self.assertEqual(r["status"], "ok")
        [e] = r["result"]["parked"]
        self.assertEqual((e["key"], e["worker"], e["failures"], e["last_error"], e["parks"]),
                         (p, hw, self.K, "bad %d" % (self.K - 1), 1), e)
        self.assertGreater(e["time_left_ms"], 50000)
        self.assertLessEqual(e["time_left_ms"], 60000)
        # parexctl stats (metrics endpoint) shows it too.
        rc, out, err = px.run_parexctl("stats", "--metrics-addr", d.maddr)
        self.assertEqual(rc, 0, err)
        self.assertIn("keys parked 1", out)
        # /stats is not authenticated: it names the error code, never the message (README).
        self.assertRegex(out, r"PARKED %s\s+\(\d+ ms left, last error: handler_error\)" % p)
        self.assertNotIn("bad %d" % (self.K - 1), out)

        rc, out, err = self.ctl("unpark", p)
        self.assertEqual((rc, json.loads(out)["result"]), (0, {"key": p, "done": True}), err)
        with d.connect() as c:
            r = c.request({"key": p, "id": "back", "payload": "x"})
        self.assertEqual((r["status"], r["result"]), ("ok", "x"), r)
        rc, out, err = self.ctl("parked")
        self.assertEqual((rc, json.loads(out)["result"]), (0, {"parked": []}))
        self.assertEqual(metric(d, "parexd_keys_parked"), 0)
        self.assertEqual(metric(d, "parexd_key_parks_total"), 1)

        # A key that is not parked: answered, nothing done, with the reason.
        rc, out, err = self.ctl("unpark", p)
        self.assertEqual(rc, 0, err)
        res = json.loads(out)["result"]
        self.assertEqual((res["key"], res["done"]), (p, False), res)
        self.assertIn("not parked", res["reason"])
        rc, out, err = self.ctl("drop", "never-seen")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)["result"]["done"], False)

    def test_usage_and_connection_errors(self):
        for args in (["unpark"], ["drop"], ["parked", "extra"], ["unpark", "a", "b"],
                     ["drop", "k", "--bogus"]):
            rc, out, err = px.run_parexctl(*(args + ["--addr", self.d.addr]))
            self.assertEqual(rc, 2, (args, out, err))
            self.assertIn("usage", err)
        port = pxsys.free_port()
        for args in (["parked"], ["unpark", "k"], ["drop", "k"]):
            rc, out, err = px.run_parexctl(*(args + ["--addr", "127.0.0.1:%d" % port]))
            self.assertEqual(rc, 2, (args, out, err))
            self.assertEqual(out, "")
        # A control line without its key is invalid (exit 1: the daemon answered, not ok).
        with self.d.connect() as c:
            r = c.request({"control": "drop"})
        self.assertEqual((r["status"], r["error"]["code"]), ("invalid", "bad_field"), r)

    def test_drop_cancels_the_parked_keys_queued_requests(self):
        # On P's worker: K-1 failures of P, a short sleep of B (time for the loop to read and
        # queue everything), P's K-th failure (parks P), a long sleep of B, then 5 requests of P
        # queued behind it while P is parked. drop answers those 5 failed/cancelled.
        d = self.d
        hw, (p, b, cold) = same_worker_keys("pd", 3)
        with d.connect() as c:
            base = d.stats()["received"]
            lines = [{"key": p, "id": "f%d" % i, "op": "fail", "payload": {"message": "bad %d" % i}}
                     for i in range(self.K - 1)]
            lines += [{"key": b, "id": "b1", "op": "sleep", "payload": {"ms": 200}},
                      {"key": p, "id": "f%d" % (self.K - 1), "op": "fail",
                       "payload": {"message": "bad %d" % (self.K - 1)}},
                      {"key": b, "id": "b2", "op": "sleep", "payload": {"ms": 1500}}]
            lines += [{"key": p, "id": "q%d" % i, "payload": i} for i in range(5)]
            c.send(*lines)
            s = d.wait_stats(lambda s: s["received"] == base + len(lines) and s["keys_parked"] == 1
                             and s["workers"][hw]["current_key"] == b
                             and s["workers"][hw]["queue_depth"] == 5,
                             "P parked with 5 requests queued behind B's long sleep")
            self.assertAccounting(s)
            t0 = time.monotonic()
            rc, out, err = self.ctl("drop", p)
            self.assertEqual(rc, 0, err)
            self.assertEqual(json.loads(out)["result"], {"key": p, "done": True, "dropped": 5})
            rs = by_id(c.recv_n(len(lines), timeout=10))
            # The dropped ones are answered at once, not after B's sleep.
            for i in range(5):
                r = rs["q%d" % i]
                self.assertEqual((r["status"], r["error"]["code"]), ("failed", "cancelled"), r)
                self.assertIn("drop", r["error"]["message"])
            self.assertEqual(rs["b2"]["status"], "ok")
            self.assertEqual([rs["f%d" % i]["status"] for i in range(self.K)], ["failed"] * self.K)
            # A drop while nothing is queued: done, 0 dropped; the key stays parked.
            rc, out, err = self.ctl("drop", p)
            self.assertEqual((rc, json.loads(out)["result"]),
                             (0, {"key": p, "done": True, "dropped": 0}))
            self.assertRejected(c.request({"key": p, "id": "still"}), "key_parked", "still")
            r = c.request({"key": cold, "id": "cold"})
            self.assertEqual(r["status"], "ok")
        s = d.wait_idle()
        self.assertEqual(s["failed"], self.K + 5)
        self.assertEqual(s["keys_parked"], 1)


# ---------------------------------------------------------------------------------------------
# Keyed scheduling


class KeyedSchedulingTest(KeysTestCase):
    def test_per_key_order_and_accounting_many_connections(self):
        # test_order.py's check on a keyed daemon: per connection, answers for a key in send
        # order, each the request's own payload; the books balance, and no key is left behind.
        self.d = d = start("keyed", queue_capacity=100000)
        conns, per_conn = 16, 400
        answers = px.per_key_order_run(self, d, conns=conns, per_conn=per_conn)
        workers_used = {r["worker"] for _, r in answers}
        self.assertTrue(workers_used <= set(range(WORKERS)), workers_used)
        s = d.wait_idle()
        self.assertAccounting(s)
        self.assertEqual((s["received"], s["ok"], s["in_flight"]),
                         (conns * per_conn, conns * per_conn, 0))
        self.assertEqual(s["scheduling"], "keyed")
        self.assertEqual(s["keyed"]["queue_depth"], 0)
        self.assertEqual(s["keyed"]["queue_capacity"], WORKERS * 100000)
        self.assertEqual(s["keyed"]["active_keys"], 0)  # idle keys are forgotten

    def test_same_key_never_runs_twice_at_once(self):
        # 4 workers are free, yet the key's 18 runs go one at a time.
        self.d = start("keyed")
        px.same_key_runs(self, self.d, conns=6, per_conn=3, ms=60)

    def test_global_capacity_and_cap_per_key(self):
        # Bounded: queue_capacity * workers requests wait at most (queue_full past that), and
        # max_queued_per_key applies as in partitioned mode.
        self.d = d = start("keyed", workers=2, queue_capacity=3, max_queued_per_key=2)
        with d.connect() as c:
            c.send({"key": "h0", "id": "h0", "op": "sleep", "payload": {"ms": 400}},
                   {"key": "h1", "id": "h1", "op": "sleep", "payload": {"ms": 400}})
            d.wait_stats(lambda s: {w["current_key"] for w in s["workers"]} == {"h0", "h1"},
                         "both workers busy")
            # h0 has 1 running: h0b makes 2 (queued), h0c is key_busy; w0..w4 fill the shared
            # queue to 6 = 2 workers * 3; w5 finds it full.
            c.send({"key": "h0", "id": "h0b"}, {"key": "h0", "id": "h0c"},
                   *[{"key": "w%d" % i, "id": "w%d" % i} for i in range(6)])
            rs = by_id(c.recv_n(10))
        self.assertEqual([rs[i]["status"] for i in ("h0", "h1", "h0b")], ["ok"] * 3)
        self.assertRejected(rs["h0c"], "key_busy", "h0c")
        self.assertEqual([rs["w%d" % i]["status"] for i in range(5)], ["ok"] * 5)
        self.assertRejected(rs["w5"], "queue_full", "w5")
        # issue 18 item 10: the message names the shared bound, not a per-worker queue that
        # keyed scheduling does not have.
        msg = rs["w5"]["error"]["message"]
        self.assertIn("shared keyed queue is full (6 requests: workers 2 x queue_capacity 3)", msg)
        self.assertNotIn("worker", msg.split("(")[0])


class QueuedDeadlineMixin:
    """issue 18 item 9: a request still queued when its deadline_ms passes is answered
    deadline_exceeded then, not when its worker reaches it; its place in the queue is free again
    at once, and the other answers of its key keep their order."""

    SCHEDULING = None
    RUN_MS = 800

    def test_queued_request_answered_at_its_deadline(self):
        self.d = d = start(self.SCHEDULING, workers=1, queue_capacity=2)
        with d.connect() as c:
            c.send({"key": "dk", "id": "a", "op": "sleep", "payload": {"ms": self.RUN_MS}})
            d.wait_stats(lambda s: s["workers"][0]["current_key"] == "dk", "a running")
            # b and c fill the bound of 2; f finds it full.
            c.send({"key": "dk", "id": "b", "deadline_ms": 100}, {"key": "other", "id": "c"},
                   {"key": "dk", "id": "f"})
            f, b = c.recv(), c.recv()
            self.assertRejected(f, "queue_full", "f")
            self.assertEqual((b["id"], b["status"], b["error"]["code"]),
                             ("b", "failed", "deadline_exceeded"), b)
            self.assertLess(b["queue_ms"], self.RUN_MS / 2, b)  # at its deadline, not after a
            self.assertEqual(d.stats()["in_flight"], 2)  # a running, c queued
            # b's place is free: e gets in while a still runs, and runs after a (key order).
            c.send({"key": "dk", "id": "e"})
            rest = c.recv_n(3, timeout=px.TIMEOUT)
        self.assertEqual([r["status"] for r in rest], ["ok"] * 3, rest)
        ids = [r["id"] for r in rest]
        self.assertLess(ids.index("a"), ids.index("e"), rest)
        self.assertEqual(ids[0], "a", rest)  # nothing of the key overtook the running one


class QueuedDeadlinePartitionedTest(QueuedDeadlineMixin, KeysTestCase):
    SCHEDULING = "partitioned"


class QueuedDeadlineKeyedTest(QueuedDeadlineMixin, KeysTestCase):
    SCHEDULING = "keyed"


class IdleWorkerTest(KeysTestCase):
    """2 workers; a hot key runs long sleeps; cold keys that partitioned routing sends to the hot
    key's worker arrive while it runs. Keyed: the other worker takes them at once. Partitioned:
    they wait behind the hot key."""

    HOT_MS, HOT_N, COLD_N = 400, 2, 4

    def measure(self, scheduling):
        self.d = d = start(scheduling, workers=2)
        by = px.keys_by_worker(2, "iw", need=1 + self.COLD_N + 1)
        hot, colds, hot2 = by[0][0], by[0][1:1 + self.COLD_N], by[0][1 + self.COLD_N]
        with d.connect() as c:
            c.send(*[{"key": hot, "id": "hot%d" % i, "op": "sleep", "payload": {"ms": self.HOT_MS}}
                     for i in range(self.HOT_N)])
            d.wait_stats(lambda s: any(w["current_key"] == hot for w in s["workers"]),
                         "the hot key running")
            c.send(*[{"key": k, "id": k, "op": "sleep", "payload": {"ms": 5}} for k in colds])
            c.send({"key": hot2, "id": "hot2", "op": "sleep", "payload": {"ms": self.HOT_MS}})
            rs = by_id(c.recv_n(self.HOT_N + self.COLD_N + 1, timeout=20))
        for r in rs.values():
            self.assertEqual(r["status"], "ok", r)
        cold_q = [rs[k]["queue_ms"] for k in colds]
        hot_workers = {rs["hot%d" % i]["worker"] for i in range(self.HOT_N)}
        self.assertBooks(d.wait_idle())
        d.stop()
        self.d = None
        return cold_q, rs, colds, hot_workers

    def test_idle_worker_takes_a_waiting_key_at_once(self):
        part_q, part_rs, colds, part_hw = self.measure("partitioned")
        keyed_q, keyed_rs, _, keyed_hw = self.measure("keyed")
        log("cold keys on the hot key's worker (hot: %d x sleep %d ms): queue_ms partitioned "
            "%s, keyed %s", self.HOT_N, self.HOT_MS, ["%.0f" % q for q in part_q],
            ["%.1f" % q for q in keyed_q])
        log("second hot key: queue_ms partitioned %.0f, keyed %.1f",
            part_rs["hot2"]["queue_ms"], keyed_rs["hot2"]["queue_ms"])
        # Partitioned: every cold key waits for the hot key's remaining sleeps.
        self.assertEqual(part_hw, {0})
        for k in colds:
            self.assertEqual(part_rs[k]["worker"], 0)
        self.assertGreater(min(part_q), self.HOT_MS * (self.HOT_N - 1) * 0.9)
        # Keyed: the free worker takes them at once; the response names the worker that ran
        # each, which is not the one busy with the hot key.
        self.assertLess(max(keyed_q), self.HOT_MS / 4)
        self.assertGreater(min(part_q) - max(keyed_q), self.HOT_MS / 2)
        self.assertEqual(len(keyed_hw), 1)
        for k in colds:
            self.assertNotIn(keyed_rs[k]["worker"], keyed_hw, keyed_rs[k])
        # A second hot key waits behind the first when partitioned, not when keyed.
        self.assertGreater(part_rs["hot2"]["queue_ms"], self.HOT_MS * 0.9)
        self.assertLess(keyed_rs["hot2"]["queue_ms"], self.HOT_MS / 4)


# ---------------------------------------------------------------------------------------------
# Hot-key visibility


class HotKeyVisibilityTest(KeysTestCase):
    def test_even_load_has_imbalance_one(self):
        self.d = d = start()
        self.assertEqual(d.stats()["imbalance_ratio"], 1.0)  # idle
        self.assertEqual(metric(d, "parexd_worker_imbalance_ratio"), 1.0)
        by = px.keys_by_worker(WORKERS, "ev", need=5)
        with d.connect() as c:
            c.send(*[{"key": k, "id": k} for w in range(WORKERS) for k in by[w][:5]])
            c.recv_n(5 * WORKERS)
        self.assertEqual(d.wait_idle()["imbalance_ratio"], 1.0)
        self.assertEqual(metric(d, "parexd_worker_imbalance_ratio"), 1.0)

    def check_hot(self, scheduling):
        self.d = d = start(scheduling)
        hot = "the-hot-key"
        hw = px.route(hot, WORKERS)
        by = px.keys_by_worker(WORKERS, "cold", need=10)
        colds = [k for w in range(WORKERS) for k in by[w][:10]]
        n_hot, sleeps, sleep_ms = 300, 6, 50
        with d.connect() as c:
            lines = [{"key": hot, "id": "s%d" % i, "op": "sleep", "payload": {"ms": sleep_ms}}
                     for i in range(sleeps)]
            lines += [{"key": hot, "id": "h%d" % i} for i in range(n_hot)]
            lines += [{"key": k, "id": k} for k in colds]
            # One cold key takes a long time once, but less than the hot key's total.
            lines += [{"key": colds[0], "id": "long", "op": "sleep",
                       "payload": {"ms": sleeps * sleep_ms * 2 // 3}}]
            c.send(*lines)
            c.recv_n(len(lines), timeout=20)
            top = c.request({"control": "top"})
        s = d.wait_idle()
        self.assertEqual(top["status"], "ok", top)
        for t in (top["result"], s["top_keys"]):
            a, tm = t["by_arrivals"], t["by_time_ms"]
            self.assertEqual((a[0]["key"], a[0]["worker"]), (hot, hw), a[:3])
            self.assertGreaterEqual(a[0]["count"], n_hot + sleeps)
            self.assertLess(a[1]["count"], 5, a[:3])
            self.assertEqual(tm[0]["key"], hot, tm[:3])
            self.assertGreaterEqual(tm[0]["ms"], sleeps * sleep_ms)
            self.assertLessEqual(len(a), 10)
            # One entry per key.
            self.assertEqual(len({e["key"] for e in tm}), len(tm), tm)
            self.assertEqual(len({e["key"] for e in a}), len(a), a)
        return d, s, hot

    def test_hot_key_first_by_arrivals_and_by_time_and_imbalance(self):
        d, s, hot = self.check_hot(None)
        ratio = metric(d, "parexd_worker_imbalance_ratio")
        log("imbalance ratio under one hot key (4 workers): %.3f", ratio)
        self.assertGreater(ratio, 1.5)
        self.assertAlmostEqual(s["imbalance_ratio"], ratio, places=2)
        rc, out, err = px.run_parexctl("stats", "--metrics-addr", d.maddr)
        self.assertEqual(rc, 0, err)
        rows = out.split("TOP KEYS BY ARRIVALS", 1)[1].splitlines()
        self.assertTrue(rows[1].startswith(hot), out)
        self.assertEqual(rows[1].split()[3], hot, out)  # first by time too
        self.assertRegex(out, r"imbalance \d+\.\d\d")
        rc, out, err = px.run_parexctl("top", "--once", "--metrics-addr", d.maddr)
        self.assertEqual(rc, 0, err)
        rows = out.split("TOP KEYS BY ARRIVALS", 1)[1].splitlines()
        self.assertTrue(rows[1].startswith(hot), out)

    def test_hot_key_first_by_time_with_keyed_scheduling(self):
        # Keyed, 2 workers, in one write: H 200 ms, C1 250 ms, C2 60 ms, H 200 ms, then 20 short
        # H. Worker A runs H, B runs C1; at 200 ms A takes C2 (H's next is ready only behind it),
        # at 250 ms B takes H's second sleep. H's 400 ms are spread over two workers; the top
        # must still put H first by time with all of it, once, above C1's 250 ms.
        self.d = d = start("keyed", workers=2)
        lines = [{"key": "H", "id": "h1", "op": "sleep", "payload": {"ms": 200}},
                 {"key": "C1", "id": "c1", "op": "sleep", "payload": {"ms": 250}},
                 {"key": "C2", "id": "c2", "op": "sleep", "payload": {"ms": 60}},
                 {"key": "H", "id": "h2", "op": "sleep", "payload": {"ms": 200}}]
        lines += [{"key": "H", "id": "e%d" % i} for i in range(20)]
        with d.connect() as c:
            c.send(*lines)
            rs = by_id(c.recv_n(len(lines), timeout=20))
            top = c.request({"control": "top"})["result"]
        log("keyed: H's two sleeps ran on workers %d and %d; by_time_ms %s",
            rs["h1"]["worker"], rs["h2"]["worker"], top["by_time_ms"][:4])
        s = d.wait_idle()
        for t in (top, s["top_keys"]):
            tm, a = t["by_time_ms"], t["by_arrivals"]
            self.assertEqual((a[0]["key"], a[0]["count"]), ("H", 22), a)
            self.assertEqual(len({e["key"] for e in tm}), len(tm), tm)  # one entry per key
            self.assertEqual(tm[0]["key"], "H", tm)
            self.assertGreaterEqual(tm[0]["ms"], 400, tm)


if __name__ == "__main__":
    px.main()
