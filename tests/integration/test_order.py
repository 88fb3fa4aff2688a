"""Per-key order: for any key, requests run one at a time in the order the daemon read them,
across all connections, and on each connection their answers come back in that order. Different
keys run in parallel."""

import time
import unittest

import pxharness as px

# These tests use the built-in sleep and fail, and pipeline more than one connection may by
# default (max_in_flight_per_connection).
px.SETTINGS.update(builtin_test_ops=True, max_in_flight_per_connection=1 << 24)

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
        ms = 60
        spans = px.same_key_runs(self, self.d, ms=ms)
        self.assertEqual(len({s[2]["worker"] for s in spans}), 1)
        for s in spans:
            self.assertGreaterEqual(s[2]["run_ms"], ms * 0.95)

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
