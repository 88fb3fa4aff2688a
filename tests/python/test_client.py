"""parex.Client (the concurrent.futures Executor) against the real daemon: each answer status
and code as its exception, cancel of queued and running requests, the standard library's wait,
as_completed and map over parex futures, per-key callback order, connection loss and reconnect,
unix socket and token, retries that honour retry_after_ms, shutdown, and 10 000 submits from 8
threads with every answer exactly once."""

import concurrent.futures as cf
import logging
import signal
import threading
import time
import unittest

import pxclient
from pxclient import px

import parex

TOKEN = "client-test-token-0123456789"


class Basics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = pxclient.daemon(workers=4)
        cls.c = parex.Client(cls.d.addr)

    @classmethod
    def tearDownClass(cls):
        cls.c.shutdown()
        cls.d.stop()

    def test_is_an_executor_with_standard_futures(self):
        self.assertIsInstance(self.c, cf.Executor)
        f = self.c.submit("echo", "k", {"a": [1, 2]})
        self.assertIsInstance(f, cf.Future)
        self.assertEqual(f.result(px.TIMEOUT), {"a": [1, 2]})
        self.assertEqual((f.op, f.key, f.response["status"]), ("echo", "k", "ok"))
        self.assertIsInstance(f.id, int)
        self.assertIsInstance(f.worker, int)
        self.assertGreaterEqual(f.queue_ms, 0)
        self.assertGreaterEqual(f.run_ms, 0)

    def test_call_and_payload_default(self):
        self.assertIsNone(self.c.call("echo", "k"))
        self.assertEqual(self.c.call("sleep", "k", {"ms": 1}), {"slept_ms": 1})

    def test_failed_handler_error(self):
        with self.assertRaises(parex.HandlerError) as cm:
            self.c.call("fail", "k", {"message": "boom"})
        e = cm.exception
        self.assertIsInstance(e, parex.Failed)
        self.assertEqual((e.code, e.message), ("handler_error", "boom"))
        self.assertEqual(e.response["status"], "failed")

    def test_deadline_exceeded(self):
        with self.assertRaises(parex.DeadlineExceeded) as cm:
            self.c.call("sleep", "dl", {"ms": 2000}, deadline_ms=50)
        self.assertEqual(cm.exception.code, "deadline_exceeded")

    def test_invalid_answers(self):
        with self.assertRaises(parex.UnknownOp) as cm:
            self.c.call("no-such-op", "k")
        self.assertIsInstance(cm.exception, ValueError)
        self.assertIn("echo", cm.exception.message)  # the message lists the ops there are
        with self.assertRaises(parex.Invalid) as cm:
            self.c.call("sleep", "k", {"ms": -1})
        self.assertEqual(cm.exception.code, "bad_field")
        self.assertEqual(cm.exception.response["status"], "invalid")

    def test_checked_before_sending(self):
        before = self.c.stats()["received"]
        for bad in (lambda: self.c.submit("echo", "x" * 257),
                    lambda: self.c.submit("echo", ""),
                    lambda: self.c.submit("echo", "é" * 129),  # 258 bytes of UTF-8
                    lambda: self.c.submit("echo", "k", {"v": float("nan")}),
                    lambda: self.c.submit("echo", "k", object()),
                    lambda: self.c.submit("echo", "k", "x" * (1 << 20)),
                    lambda: self.c.submit("echo", "k", None, deadline_ms=0)):
            with self.assertRaises(parex.Invalid) as cm:
                bad()
            self.assertIsNone(cm.exception.response)
        self.assertEqual(self.c.stats()["received"], before, "a checked request was sent")
        self.assertEqual(self.c.call("echo", "x" * 256), None)  # the limit itself is fine

    def test_cancel_queued_true_running_false(self):
        running = self.c.submit("sleep", "cq", {"ms": 300})
        queued = self.c.submit("sleep", "cq", {"ms": 10})
        px.wait_for(lambda: any(w["current_key"] == "cq" for w in self.c.stats()["workers"]),
                    what="the first request running")
        self.assertTrue(queued.cancel())
        self.assertTrue(queued.cancelled())
        self.assertTrue(queued.done())
        with self.assertRaises(cf.CancelledError):
            queued.result(0)
        self.assertFalse(running.cancel())
        self.assertFalse(running.cancelled())
        self.assertEqual(running.result(px.TIMEOUT), {"slept_ms": 300})
        self.assertFalse(running.cancel())  # done: False
        # parexd took the queued one out: it never ran.
        s = self.c.stats()
        self.assertEqual(s["in_flight"], 0)

    def test_wait_first_completed_then_cancel_the_rest(self):
        fast = self.c.submit("sleep", "w1", {"ms": 5})
        slow = [self.c.submit("sleep", "w2", {"ms": 300}) for _ in range(3)]
        done, not_done = cf.wait([fast] + slow, timeout=px.TIMEOUT,
                                 return_when=cf.FIRST_COMPLETED)
        self.assertEqual(done, {fast})
        verdicts = [f.cancel() for f in slow]
        self.assertEqual(verdicts, [False, True, True])  # the first already runs
        done, not_done = cf.wait(slow, timeout=px.TIMEOUT)
        self.assertEqual(not_done, set())
        self.assertEqual([f.cancelled() for f in slow], [False, True, True])

    def test_as_completed_with_timeout(self):
        keys = px.keys_by_worker(4, prefix="ac")  # one key per worker: they run at once
        fs = [self.c.submit("sleep", keys[i][0], {"ms": ms}) for i, ms in enumerate((60, 5, 30))]
        order = [f.result()["slept_ms"] for f in cf.as_completed(fs, timeout=px.TIMEOUT)]
        self.assertEqual(order, [5, 30, 60])
        slow = self.c.submit("sleep", "ac-slow", {"ms": 500})
        with self.assertRaises(TimeoutError):
            for _ in cf.as_completed([slow], timeout=0.05):
                pass
        slow.result(px.TIMEOUT)

    def test_map_in_input_order_and_timeout(self):
        keys = ["m%d" % (i % 7) for i in range(200)]
        self.assertEqual(list(self.c.map("echo", keys, range(200))), list(range(200)))
        self.assertEqual(list(self.c.map("echo", ["a", "b"])), [None, None])
        it = self.c.map("sleep", ["mt"] * 3, [{"ms": 5}, {"ms": 400}, {"ms": 5}], timeout=0.2)
        self.assertEqual(next(it), {"slept_ms": 5})
        with self.assertRaises(TimeoutError):
            next(it)
        # A failed item raises at its position; the items before it are delivered.
        it = self.c.map("fail", ["mf", "mf"], [None, {"message": "second"}])
        with self.assertRaises(parex.HandlerError):
            next(it)

    def test_done_callbacks_in_per_key_order(self):
        seen, lock, done = {}, threading.Lock(), threading.Event()
        n, keys = 600, 6

        def cb(f):
            with lock:
                seen.setdefault(f.key, []).append(f.result())
                if sum(map(len, seen.values())) == n:
                    done.set()

        for i in range(n):
            op = "sleep" if i % 50 == 0 else "echo"
            payload = {"ms": 1} if op == "sleep" else i
            f = self.c.submit(op, "cb%d" % (i % keys), payload)
            f.add_done_callback(cb)
        self.assertTrue(done.wait(px.TIMEOUT))
        for k, vals in seen.items():
            ints = [v for v in vals if isinstance(v, int)]
            self.assertEqual(ints, sorted(ints), k)

    def test_callback_exception_is_logged_not_fatal(self):
        f = self.c.submit("echo", "cbx", 1)
        with self.assertLogs("concurrent.futures", logging.ERROR):
            f.add_done_callback(lambda _: 1 / 0)
            f.result(px.TIMEOUT)
            g = self.c.submit("echo", "cbx", 2)
            g.add_done_callback(lambda _: 1 / 0)
            self.assertEqual(g.result(px.TIMEOUT), 2)
        self.assertEqual(self.c.call("echo", "cbx", 3), 3)  # the reader thread lives on

    def test_controls(self):
        s = self.c.stats()
        self.assertTrue(s["invariant_holds"])
        self.assertEqual(self.c.parked(), [])
        self.assertIn("by_arrivals", self.c.top())
        self.assertEqual(self.c.unpark("nobody")["done"], False)
        with self.assertRaises(parex.Invalid):
            self.c.control("no-such-control")

    def test_ten_thousand_submits_from_eight_threads(self):
        per, fs = 1250, {}

        def work(t):
            mine = [(i, self.c.submit("echo", "t%d-%d" % (t, i % 16), [t, i]))
                    for i in range(per)]
            fs[t] = mine

        before = self.d.wait_idle()
        px.run_threads(work, 8)
        ids = set()
        for t, mine in fs.items():
            for i, f in mine:
                self.assertEqual(f.result(px.TIMEOUT), [t, i])
                ids.add(f.id)
        self.assertEqual(len(ids), 8 * per)
        after = self.d.wait_idle()
        # Each sent once and answered once: exactly 8 x per more received and ok.
        self.assertEqual(after["received"] - before["received"], 8 * per)
        self.assertEqual(after["ok"] - before["ok"], 8 * per)


class Rejections(unittest.TestCase):
    def test_queue_full_and_retry_honours_retry_after_ms(self):
        with pxclient.daemon(workers=1, queue_capacity=1) as d, parex.Client(d.addr) as c:
            fs = [c.submit("sleep", "q%d" % i, {"ms": 200}) for i in range(4)]
            errs = [f.exception(px.TIMEOUT) for f in fs]
            full = [e for e in errs if e is not None]
            self.assertTrue(full, "no request was rejected with queue_capacity 1")
            for e in full:
                self.assertIsInstance(e, parex.QueueFull)
                self.assertIsInstance(e, parex.Rejected)
                self.assertEqual(e.code, "queue_full")
                self.assertIsInstance(e.retry_after_ms, int)
                self.assertEqual(e.retry_after_ms, e.response["retry_after_ms"])
            # With Retry (no jitter): the retry waits the rejection's retry_after_ms, then runs.
            first = c.submit("sleep", "r0", {"ms": 300})
            px.wait_for(lambda: c.stats()["workers"][0]["current_key"] == "r0")
            c.submit("sleep", "r1", {"ms": 0})  # fills the queue
            probe = c.submit("echo", "r2")
            e = probe.exception(px.TIMEOUT)
            self.assertIsInstance(e, parex.QueueFull)
            t0 = time.monotonic()
            f = c.submit("echo", "r2", "ok", retry=parex.Retry(attempts=20, base=0, cap=0))
            self.assertEqual(f.result(px.TIMEOUT), "ok")
            self.assertGreaterEqual(f.attempts, 2)
            # It could not succeed before the running sleep was done.
            self.assertGreaterEqual(time.monotonic() - t0, (e.retry_after_ms - 50) / 1000)
            first.result(px.TIMEOUT)

    def test_failures_are_not_retried_and_deadline_caps_retries(self):
        with pxclient.daemon(workers=1, queue_capacity=1) as d, parex.Client(d.addr) as c:
            f = c.submit("fail", "nf", {"message": "once"}, retry=parex.Retry())
            self.assertIsInstance(f.exception(px.TIMEOUT), parex.HandlerError)
            self.assertEqual(f.attempts, 1)
            c.submit("sleep", "d0", {"ms": 600})
            px.wait_for(lambda: c.stats()["workers"][0]["current_key"] == "d0")
            c.submit("sleep", "d1", {"ms": 0})
            t0 = time.monotonic()
            g = c.submit("echo", "d2", None, deadline_ms=150, retry=parex.Retry(attempts=50))
            # The queue stays full for 600 ms: the retries stop at the deadline, rejected.
            self.assertIsInstance(g.exception(px.TIMEOUT), (parex.QueueFull,
                                                            parex.DeadlineExceeded))
            self.assertLess(time.monotonic() - t0, 0.45)

    def test_key_busy_and_per_key_bound(self):
        with pxclient.daemon(workers=2, max_queued_per_key=1) as d, parex.Client(d.addr) as c:
            a = c.submit("sleep", "kb", {"ms": 200})
            b = c.submit("echo", "kb")
            e = b.exception(px.TIMEOUT)
            self.assertIsInstance(e, parex.KeyBusy)
            self.assertEqual(e.code, "key_busy")
            self.assertIsInstance(e.retry_after_ms, int)
            a.result(px.TIMEOUT)
        # max_in_flight_per_key=1: every request waits for the one before, retries included,
        # so each key's requests complete in submit order although many were rejected first.
        with pxclient.daemon(workers=1, queue_capacity=1) as d:
            with parex.Client(d.addr, max_in_flight_per_key=1,
                              retry=parex.Retry(attempts=100, base=0.001, cap=0.01)) as c:
                done, fs = [], []
                for i in range(30):
                    k = "ord%d" % (i % 3)
                    f = c.submit("sleep" if i % 5 == 0 else "echo", k,
                                 {"ms": 20} if i % 5 == 0 else i)
                    f.add_done_callback(lambda f, i=i: done.append((f.key, i)))
                    fs.append(f)
                for f in fs:
                    f.result(px.TIMEOUT)
                self.assertGreater(sum(f.attempts for f in fs), 30)  # some were rejected
                for k in ("ord0", "ord1", "ord2"):
                    seq = [i for key, i in done if key == k]
                    self.assertEqual(seq, sorted(seq), k)

    def test_connection_busy(self):
        # A client allowed more in flight than parexd allows one connection is told so.
        with pxclient.daemon(max_in_flight_per_connection=1) as d, \
                parex.Client(d.addr, max_in_flight=4) as c:
            first = c.submit("sleep", "cb", {"ms": 200})
            e = c.submit("echo", "cb2").exception(px.TIMEOUT)
            self.assertIsInstance(e, parex.ConnectionBusy)
            self.assertIsInstance(e, parex.Rejected)
            self.assertEqual(e.code, "connection_busy")
            first.result(px.TIMEOUT)

    def test_key_parked_and_controls(self):
        with pxclient.daemon(quarantine={"after_failures": 1, "for_ms": 60000}) as d, \
                parex.Client(d.addr) as c:
            with self.assertRaises(parex.HandlerError):
                c.call("fail", "poison", {"message": "bad"})
            with self.assertRaises(parex.KeyParked) as cm:
                c.call("echo", "poison")
            self.assertIn("bad", cm.exception.message)
            self.assertIsInstance(cm.exception.retry_after_ms, int)
            self.assertEqual([p["key"] for p in c.parked()], ["poison"])
            self.assertEqual(c.drop("poison")["done"], True)
            self.assertEqual(c.unpark("poison")["done"], True)
            self.assertEqual(c.call("echo", "poison", 1), 1)

    def test_timeout_and_worker_stalled(self):
        cfg = {"handlers": {"slow": {"type": "exec", "argv": ["sleep", "5"], "timeout_ms": 50}}}
        with pxclient.daemon(**cfg) as d, parex.Client(d.addr) as c:
            with self.assertRaises(parex.HandlerTimeout) as cm:
                c.call("slow", "t")
            self.assertEqual(cm.exception.code, "timeout")
        with pxclient.daemon(on_stall="replace", stall_after_ms=50,
                             supervise_interval_ms=10) as d, parex.Client(d.addr) as c:
            with self.assertRaises(parex.WorkerStalled) as cm:
                c.call("sleep", "st", {"ms": 3000})
            self.assertEqual(cm.exception.code, "worker_stalled")
            d.stop(expect=None)

    def test_shutting_down_and_cancelled_by_the_drain(self):
        d = pxclient.daemon(workers=1, drain_timeout_ms=300)
        with d, parex.Client(d.addr) as c:
            running = c.submit("sleep", "sd", {"ms": 5000})
            queued = c.submit("sleep", "sd", {"ms": 10})
            px.wait_for(lambda: c.stats()["workers"][0]["current_key"] == "sd")
            d.signal(signal.SIGTERM)
            d.wait_log(r"drain: stopped accepting")
            with self.assertRaises(parex.ShuttingDown) as cm:
                c.call("echo", "other")
            self.assertEqual(cm.exception.code, "shutting_down")
            for f in (running, queued):
                e = f.exception(px.TIMEOUT)
                self.assertIsInstance(e, parex.Cancelled, e)
                self.assertEqual(e.code, "cancelled")
            self.assertEqual(d.wait_exit(), 0)


class Connection(unittest.TestCase):
    def setUp(self):
        self.sock = pxclient.unix_socket_path(self)

    def test_unix_socket_and_token(self):
        with pxclient.daemon(listen_unix=self.sock, auth_token=TOKEN) as d:
            with parex.Client("unix:" + self.sock, token=TOKEN) as c:
                self.assertEqual(c.call("echo", "u", [1]), [1])
                self.assertTrue(c.stats()["invariant_holds"])
                f = c.submit("sleep", "u", {"ms": 200})
                g = c.submit("sleep", "u", {"ms": 1})
                self.assertTrue(g.cancel())  # the cancel line carries the token too
                f.result(px.TIMEOUT)
            with parex.Client(d.addr, token="wrong-token-wrong-token") as c:
                with self.assertRaises(parex.Unauthorized) as cm:
                    c.call("echo", "u")
                self.assertEqual(cm.exception.code, "unauthorized")
                with self.assertRaises(parex.Unauthorized):
                    c.stats()

    def test_connection_loss_mid_flight_then_reconnect(self):
        d = pxclient.daemon(listen_unix=self.sock)
        try:
            c = parex.Client("unix:" + self.sock, connect_timeout=px.TIMEOUT)
            fs = [c.submit("sleep", "lost%d" % i, {"ms": 5000}) for i in range(5)]
            px.wait_for(lambda: c.stats()["in_flight"] == 5)
            d.kill()
            for f in fs:
                e = f.exception(px.TIMEOUT)
                self.assertIsInstance(e, parex.ConnectionLost, e)
                self.assertIsInstance(e, ConnectionError)
            # No daemon: a call fails with ConnectFailed once its connect_timeout is spent.
            c.connect_timeout = 0.3
            t0 = time.monotonic()
            with self.assertRaises(parex.ConnectFailed):
                c.call("echo", "x")
            self.assertLess(time.monotonic() - t0, 3)
            # A new daemon on the same socket: the next call connects again.
            d = pxclient.daemon(listen_unix=self.sock)
            c.connect_timeout = px.TIMEOUT
            self.assertEqual(c.call("echo", "back", 42), 42)
            self.assertEqual(d.stats()["received"], 1 + 0)  # nothing was resent
            c.shutdown()
        finally:
            d.kill()

    def test_connect_failed_names_the_address(self):
        with self.assertRaises(parex.ConnectFailed) as cm:
            parex.Client("unix:" + self.sock, connect_timeout=0.2)
        self.assertIn(self.sock, str(cm.exception))


class Shutdown(unittest.TestCase):
    def test_shutdown_waits_and_submit_after_raises(self):
        with pxclient.daemon(workers=1) as d:
            c = parex.Client(d.addr)
            fs = [c.submit("sleep", "sh", {"ms": 30}) for _ in range(3)]
            c.shutdown(wait=True)
            self.assertTrue(all(f.done() and f.result() == {"slept_ms": 30} for f in fs))
            with self.assertRaises(RuntimeError):
                c.submit("echo", "sh")

    def test_shutdown_cancel_futures(self):
        with pxclient.daemon(workers=1) as d:
            with parex.Client(d.addr) as c:
                running = c.submit("sleep", "sc", {"ms": 200})
                queued = [c.submit("sleep", "sc", {"ms": 200}) for _ in range(3)]
                px.wait_for(lambda: c.stats()["workers"][0]["current_key"] == "sc")
                c.shutdown(cancel_futures=True)
                self.assertEqual(running.result(0), {"slept_ms": 200})
                self.assertTrue(all(f.cancelled() for f in queued))
            self.assertEqual(d.stats()["ok"], 1)


if __name__ == "__main__":
    pxclient.main()
