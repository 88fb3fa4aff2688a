"""Per-key order: for any key, requests run one at a time in the order the daemon read them,
across all connections, and on each connection their answers come back in that order. Different
keys run in parallel."""

import threading
import time
import unittest

import pxharness as px

WORKERS = 4


class OrderTest(px.Accounting, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = px.Daemon(["--workers", str(WORKERS), "--queue-capacity", "100000"])

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def tearDown(self):
        self.assertAccounting(self.d.wait_idle())

    def test_per_key_order_many_connections_many_keys(self):
        conns, per_conn = 16, 400
        before = self.d.wait_idle()
        worker_of = {}
        for k, r in px.per_key_order_run(self, self.d, conns=conns, per_conn=per_conn):
            # A key always runs on the same worker, whichever connection sent it.
            self.assertEqual(worker_of.setdefault(k, r["worker"]), r["worker"], k)

        after = self.d.wait_idle()
        self.assertEqual(after["received"] - before["received"], conns * per_conn)
        self.assertEqual(after["ok"] - before["ok"], conns * per_conn)

    def test_same_key_from_several_connections_never_overlaps(self):
        conns, per_conn, ms = 6, 3, 60
        spans = []
        lock = threading.Lock()
        t_first = time.monotonic()

        def client(ci):
            with self.d.connect() as c:
                reqs = [{"key": "hot-seq", "id": "%d-%d" % (ci, i), "op": "sleep",
                         "payload": {"ms": ms}} for i in range(per_conn)]
                t_send = time.monotonic()
                c.send(*reqs)
                rs = c.recv_n(per_conn)
                t_last = time.monotonic()
            with lock:
                for r in rs:
                    # The daemon read the line no earlier than we sent it, so its run started
                    # no earlier than t_send + queue_ms (and at most a read's delay later).
                    start = t_send + r["queue_ms"] / 1000
                    spans.append((start, start + r["run_ms"] / 1000, r, t_last))

        px.run_threads(client, conns)
        t_end = max(s[3] for s in spans)
        self.assertEqual(len(spans), conns * per_conn)
        self.assertEqual(len({s[2]["worker"] for s in spans}), 1)
        for s in spans:
            self.assertEqual(s[2]["status"], "ok", s[2])
            self.assertGreaterEqual(s[2]["run_ms"], ms * 0.95)
        # One at a time: the runs laid end to end take at least their sum...
        self.assertGreaterEqual(t_end - t_first, conns * per_conn * ms / 1000 * 0.98)
        # ...and no run starts before the previous one ended (within the read-delay slack).
        spans.sort(key=lambda s: s[0])
        slack = 0.03
        for a, b in zip(spans, spans[1:]):
            self.assertGreaterEqual(b[0], a[1] - slack,
                                    "runs overlap: %r and %r" % (a[2], b[2]))

    def test_order_across_connections_is_read_order(self):
        # A long request holds the key's worker; then requests for the key arrive on different
        # connections one after another, each confirmed read (stats.received) before the next is
        # sent. They must run in that read order: each starts >= ms after the one before.
        ms, n, nconn = 50, 8, 4
        conns = [self.d.connect() for _ in range(nconn)]
        try:
            base = self.d.wait_idle()["received"]
            conns[0].send({"key": "chain", "id": "block", "op": "sleep", "payload": {"ms": 300}})
            self.d.wait_stats(lambda s: s["received"] == base + 1, "the blocking request read")
            sent = []
            for i in range(n):
                c = conns[(i + 1) % nconn]
                t_send = time.monotonic()
                c.send({"key": "chain", "id": i, "op": "sleep", "payload": {"ms": ms}})
                self.d.wait_stats(lambda s: s["received"] == base + 2 + i, "request %d read" % i)
                sent.append((t_send, time.monotonic(), c))
            starts = []
            got_block = False
            for i, (t_send, t_conf, c) in enumerate(sent):
                r = c.recv()
                if r["id"] == "block":
                    got_block = True
                    r = c.recv()
                self.assertEqual((r["id"], r["status"]), (i, "ok"), r)
                q = r["queue_ms"] / 1000
                starts.append(((t_send + t_conf) / 2 + q, (t_conf - t_send) / 2))
            if not got_block:
                self.assertEqual(conns[0].recv()["id"], "block")
            for i in range(1, n):
                (m0, u0), (m1, u1) = starts[i - 1], starts[i]
                # In order, m1 - m0 >= ms - u0 - u1; out of order it would be <= -ms + u0 + u1.
                if u0 + u1 < ms / 1000:
                    self.assertGreater(m1 - m0, 0, "request %d ran before request %d" % (i, i - 1))
        finally:
            for c in conns:
                c.close()

    def test_different_keys_run_in_parallel(self):
        by_worker = px.keys_by_worker(WORKERS, "par")
        keys = [by_worker[w][0] for w in range(WORKERS)]
        with self.d.connect() as c:
            t0 = time.monotonic()
            c.send(*[{"key": k, "id": k, "op": "sleep", "payload": {"ms": 400}} for k in keys])
            rs = c.recv_n(WORKERS)
            elapsed = time.monotonic() - t0
        self.assertEqual(sorted(r["worker"] for r in rs), list(range(WORKERS)))
        for r in rs:
            self.assertEqual(r["status"], "ok")
            self.assertLess(r["queue_ms"], 200, r)  # none waited for another
        self.assertLess(elapsed, 1.2)  # one after another would take 1.6 s


if __name__ == "__main__":
    px.main()
