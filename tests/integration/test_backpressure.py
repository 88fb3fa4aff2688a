"""Backpressure: when a worker's queue holds queue_capacity requests, the next request for that
worker is answered rejected/queue_full at once, while other workers keep serving; the books
balance at every moment."""

import threading
import time
import unittest

import pxharness as px

px.SETTINGS.update(builtin_test_ops=True)  # these tests use the built-in sleep and fail

WORKERS = 4
CAPACITY = 4


class BackpressureTest(px.Accounting, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = px.Daemon(["--workers", str(WORKERS), "--queue-capacity", str(CAPACITY)])
        by_worker = px.keys_by_worker(WORKERS, "bp", need=2)
        cls.hot = by_worker[1][0]
        cls.hot_worker = 1
        cls.other = by_worker[2][0]
        cls.other2 = by_worker[3][1]

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def tearDown(self):
        self.assertAccounting(self.d.wait_idle())

    def worker_stats(self, s):
        return s["workers"][self.hot_worker]

    def block_hot_worker(self, c, ms):
        """Starts a long request on the hot key and waits until the worker is running it."""
        c.send({"key": self.hot, "id": "blocker", "op": "sleep", "payload": {"ms": ms}})
        self.d.wait_stats(lambda s: self.worker_stats(s)["current_key"] == self.hot
                          and self.worker_stats(s)["queue_depth"] == 0,
                          "the hot worker running the blocker")

    def test_full_queue_rejects_at_once_and_other_workers_keep_serving(self):
        base = self.d.wait_idle()
        c = self.d.connect()
        try:
            self.block_hot_worker(c, 1000)
            c.send(*[{"key": self.hot, "id": "q%d" % i, "op": "sleep", "payload": {"ms": 10}}
                     for i in range(CAPACITY)])
            s = self.d.wait_stats(lambda s: self.worker_stats(s)["queue_depth"] == CAPACITY,
                                  "the hot worker's queue full")
            self.assertEqual(self.worker_stats(s)["queue_capacity"], CAPACITY)
            self.assertAccounting(s)
            self.assertEqual(s["in_flight"] - base["in_flight"], CAPACITY + 1)

            # One more for the same worker: rejected at once, ahead of the queued answers.
            t0 = time.monotonic()
            c.send({"key": self.hot, "id": "over", "payload": 1})
            r = c.recv(timeout=0.5)
            self.assertLess(time.monotonic() - t0, 0.5)
            self.assertEqual(r["status"], "rejected", r)
            self.assertEqual(r["error"]["code"], "queue_full", r)
            self.assertEqual(r["id"], "over")
            self.assertEqual(r["worker"], self.hot_worker)
            self.assertGreater(len(r["error"]["message"]), 10)
            self.assertNotIn("result", r)
            self.assertIsInstance(r.get("retry_after_ms"), int, r)
            self.assertGreater(r["retry_after_ms"], 0)

            # Another key on the same worker is rejected too: the queue is the worker's.
            same_worker_key = px.keys_by_worker(WORKERS, "bp", need=2)[self.hot_worker][1]
            r = c.request({"key": same_worker_key, "id": "sibling"}, timeout=0.5)
            self.assertEqual((r["status"], r["error"]["code"], r["worker"]),
                             ("rejected", "queue_full", self.hot_worker), r)

            # Keys of other workers are served meanwhile, on this connection and on others.
            t0 = time.monotonic()
            r = c.request({"key": self.other, "id": "other", "payload": "fine"}, timeout=0.5)
            self.assertEqual((r["status"], r["result"]), ("ok", "fine"), r)
            self.assertNotEqual(r["worker"], self.hot_worker)
            with self.d.connect() as c2:
                for i in range(20):
                    r = c2.request({"key": self.other2, "payload": i}, timeout=0.5)
                    self.assertEqual((r["status"], r["result"]), ("ok", i), r)
            self.assertLess(time.monotonic() - t0, 0.5)

            s = self.d.stats()
            self.assertAccounting(s)
            # The blocker is still running: all of that happened while the worker was stuck.
            self.assertEqual(self.worker_stats(s)["current_key"], self.hot)
            self.assertEqual(s["rejected_by_reason"]["queue_full"]
                             - base["rejected_by_reason"]["queue_full"], 2)

            # The accepted ones all finish, in order.
            rs = c.recv_n(CAPACITY + 1, timeout=5)
            self.assertEqual([r["id"] for r in rs], ["blocker"] + ["q%d" % i for i in range(CAPACITY)])
            for r in rs:
                self.assertEqual(r["status"], "ok", r)
            # Backpressure is transient: with room again the key is accepted.
            r = c.request({"key": self.hot, "id": "again", "payload": 3})
            self.assertEqual((r["status"], r["result"]), ("ok", 3), r)
        finally:
            c.close()
        after = self.d.wait_idle()
        self.assertEqual(after["rejected"] - base["rejected"], 2)
        self.assertEqual(after["ok"] - base["ok"], CAPACITY + 1 + 1 + 1 + 20)

    def test_pipelined_flood_accepts_exactly_capacity(self):
        base = self.d.wait_idle()
        n = 50
        with self.d.connect() as c:
            self.block_hot_worker(c, 400)
            c.send(*[{"key": self.hot, "id": i, "payload": i} for i in range(n)])
            # The rejections come first, at once, for exactly the requests past capacity.
            rej = c.recv_n(n - CAPACITY, timeout=0.35)
            self.assertEqual([r["id"] for r in rej], list(range(CAPACITY, n)))
            for r in rej:
                self.assertEqual((r["status"], r["error"]["code"], r["worker"]),
                                 ("rejected", "queue_full", self.hot_worker), r)
            rs = c.recv_n(CAPACITY + 1, timeout=5)
            self.assertEqual([r["id"] for r in rs], ["blocker"] + list(range(CAPACITY)))
        after = self.d.wait_idle()
        self.assertAccounting(after)
        self.assertEqual(after["received"] - base["received"], n + 1)
        self.assertEqual(after["rejected_by_reason"]["queue_full"]
                         - base["rejected_by_reason"]["queue_full"], n - CAPACITY)
        self.assertEqual(after["ok"] - base["ok"], CAPACITY + 1)

    def test_accounting_holds_at_every_moment_under_load(self):
        base = self.d.wait_idle()
        counts = {"sent": 0, "answers": 0, "status": {}}
        errors = []

        def load(ci):
            try:
                with self.d.connect(timeout=30) as c:
                    for rnd in range(10):
                        reqs = [{"key": "load%d" % (i % 6), "op": "sleep", "payload": {"ms": 1}}
                                if i % 3 == 0 else {"key": "load%d" % (i % 6)} for i in range(60)]
                        c.send(*reqs)
                        for r in c.recv_n(len(reqs), timeout=30):
                            with lock:
                                counts["answers"] += 1
                                st = counts["status"]
                                st[r["status"]] = st.get(r["status"], 0) + 1
                        with lock:
                            counts["sent"] += len(reqs)
            except BaseException as e:
                errors.append(e)

        lock = threading.Lock()
        ts = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        snapshots = 0
        while any(t.is_alive() for t in ts):
            s = self.d.stats()
            self.assertAccounting(s)
            snapshots += 1
        for t in ts:
            t.join()
        if errors:
            raise errors[0]
        after = self.d.wait_idle()
        self.assertAccounting(after)
        self.assertGreater(snapshots, 0)
        self.assertEqual(counts["answers"], counts["sent"])
        # Something was rejected (the point of the test), and every answer is counted once.
        self.assertGreater(counts["status"].get("rejected", 0), 0, counts)
        self.assertEqual(after["received"] - base["received"], counts["sent"])
        self.assertEqual(after["ok"] - base["ok"], counts["status"].get("ok", 0))
        self.assertEqual(after["rejected"] - base["rejected"], counts["status"].get("rejected", 0))


if __name__ == "__main__":
    px.main()
