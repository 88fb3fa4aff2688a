"""A client that disconnects with requests in flight costs nothing: those requests still run (in
their key's order) and are counted, their answers are dropped, and the daemon keeps serving."""

import time
import unittest

import pxharness as px

# These tests use the built-in sleep and fail, and pipeline more than one connection may by
# default (max_in_flight_per_connection).
px.SETTINGS.update(builtin_test_ops=True, max_in_flight_per_connection=1 << 24)

WORKERS = 2


class DisconnectTest(px.Accounting, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = px.Daemon(["--workers", str(WORKERS), "--queue-capacity", "100000"])
        by_worker = px.keys_by_worker(WORKERS, "dc")
        cls.k0, cls.k1 = by_worker[0][0], by_worker[1][0]

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def settle(self):
        """Waits until nothing is in flight and only the stats connection is open."""
        s = self.d.wait_stats(lambda s: s["in_flight"] == 0 and s["connections"] == 1,
                              "in_flight 0 and every client connection closed")
        self.assertAccounting(s)
        return s

    def disconnect_with_work_in_flight(self, close):
        base = self.settle()
        n_sleep, ms, n_echo = 6, 50, 6
        c = self.d.connect()
        t0 = time.monotonic()
        c.send(*([{"key": self.k0, "id": "s%d" % i, "op": "sleep", "payload": {"ms": ms}}
                  for i in range(n_sleep)]
                 + [{"key": self.k1, "id": "e%d" % i, "payload": i} for i in range(n_echo)]))
        self.d.wait_stats(lambda s: s["received"] - base["received"] == n_sleep + n_echo,
                          "all requests read")
        close(c)

        # The daemon keeps serving others at once...
        with self.d.connect() as c2:
            r = c2.request({"key": self.k1, "id": "other", "payload": "x"}, timeout=1)
            self.assertEqual((r["status"], r["result"]), ("ok", "x"), r)
            # ...and the gone client's requests still run in their key's order: a request for
            # the same key sent now runs after all of them.
            r = c2.request({"key": self.k0, "id": "after"}, timeout=5)
            self.assertEqual(r["status"], "ok", r)
            self.assertGreaterEqual(time.monotonic() - t0, n_sleep * ms / 1000 * 0.95)

        s = self.settle()
        self.assertEqual(s["received"] - base["received"], n_sleep + n_echo + 2)
        self.assertEqual(s["ok"] - base["ok"], n_sleep + n_echo + 2)
        self.assertEqual(s["failed"], base["failed"])
        self.assertEqual(s["rejected"], base["rejected"])
        # Each ran exactly once: the k0 worker processed the sleeps and "after", nothing more.
        w0 = self.d.stats()["workers"][px.route(self.k0, WORKERS)]
        w0_base = base["workers"][px.route(self.k0, WORKERS)]
        self.assertEqual(w0["processed"] - w0_base["processed"], n_sleep + 1)
        # Answers nobody could read were dropped and counted.
        self.assertGreater(s["responses_dropped"], base["responses_dropped"])

    def test_close_with_requests_in_flight(self):
        self.disconnect_with_work_in_flight(lambda c: c.close())

    def test_reset_with_requests_in_flight(self):
        self.disconnect_with_work_in_flight(lambda c: c.reset())

    def test_every_undelivered_answer_is_counted_whatever_the_close(self):
        # issue 18 item 3: a plain close() with 1, 2 or 5 requests in flight once counted 0, 0
        # and 3 dropped answers: the first answers went into the dead socket uncounted, and a
        # failed write discarded the rest. Every answer the client did not get is counted.
        for close in ("close", "reset"):
            for n in (1, 2, 5):
                with self.subTest(close=close, n=n):
                    base = self.settle()
                    c = self.d.connect()
                    c.send(*[{"key": self.k0, "id": i, "op": "sleep", "payload": {"ms": 30}}
                             for i in range(n)])
                    self.d.wait_stats(lambda s: s["received"] - base["received"] == n,
                                      "all requests read")
                    getattr(c, close)()
                    s = self.settle()
                    self.assertEqual(s["ok"] - base["ok"], n)
                    self.assertEqual(s["responses_dropped"] - base["responses_dropped"], n, s)

    def test_answers_read_before_closing_are_not_counted(self):
        # The other side of the rule: answers a client read, or a half-closed client will
        # read, are delivered, not dropped.
        base = self.settle()
        with self.d.connect() as c:
            c.send(*[{"key": self.k1, "id": i} for i in range(3)])
            self.assertEqual(len(c.recv_n(3)), 3)
        with self.d.connect() as c:
            c.send(*[{"key": self.k0, "id": i, "op": "sleep", "payload": {"ms": 10}}
                     for i in range(3)])
            c.shutdown_write()
            self.assertEqual(len(c.wait_eof(timeout=5)), 3)
        s = self.settle()
        self.assertEqual(s["responses_dropped"], base["responses_dropped"], s)

    def test_half_close_still_gets_every_answer(self):
        # Not a disconnect: a client that only stops sending is answered in full, then closed.
        self.settle()
        with self.d.connect() as c:
            c.send(*[{"key": self.k0, "id": i, "op": "sleep", "payload": {"ms": 20}}
                     for i in range(3)])
            c.shutdown_write()
            lines = c.wait_eof(timeout=5)
        self.assertEqual(len(lines), 3)
        self.settle()

    def test_many_clients_vanish_mid_stream(self):
        base = self.settle()
        total = 0
        for i in range(20):
            c = self.d.connect()
            reqs = [{"key": "vanish%d" % (j % 7), "payload": "v" * 100} for j in range(50)]
            if i % 4 == 0:
                reqs.append({"key": self.k0, "op": "sleep", "payload": {"ms": 5}})
            c.send(*reqs)
            total += len(reqs)
            if i % 2:
                c.reset()
            else:
                c.close()
        # All of it was read (the writes completed before the close), runs, and is counted.
        self.d.wait_stats(lambda s: s["received"] - base["received"] == total,
                          "every request of the vanished clients read")
        s = self.settle()
        self.assertEqual(s["ok"] - base["ok"], total)
        with self.d.connect() as c:
            self.assertEqual(c.request({"key": "still", "payload": 1})["result"], 1)

    def test_client_that_never_reads_then_vanishes(self):
        # Megabytes of answers pile up for a client that does not read; it then goes away. The
        # daemon must neither block nor lose count.
        base = self.settle()
        n = 4000
        c = self.d.connect()
        data = "".join('{"key":"flood%d","payload":"%s"}\n' % (i % 3, "r" * 1000)
                       for i in range(n)).encode()
        # Write what the socket takes without blocking: once the unread answers pass 1 MiB the
        # daemon may stop reading this client (README, bounded memory), which must not hang us.
        c.sock.setblocking(False)
        sent = 0
        try:
            while sent < len(data):
                sent += c.sock.send(data[sent:sent + 65536])
        except BlockingIOError:
            pass
        self.d.wait_stats(lambda s: s["received"] - base["received"] > 100, "the flood being read")
        with self.d.connect() as c2:  # served meanwhile
            self.assertEqual(c2.request({"key": self.k1, "payload": 2}, timeout=2)["result"], 2)
        c.reset()
        s = self.settle()
        # Whatever the connection read before it went away was run and counted exactly once.
        self.assertEqual(s["received"] - base["received"], s["ok"] - base["ok"])
        self.assertGreater(s["received"] - base["received"], 100)


if __name__ == "__main__":
    px.main()
