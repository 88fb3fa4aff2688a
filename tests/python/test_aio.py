"""parex.AsyncClient against the real daemon: answers and their exceptions, cancel of queued
and running requests (and of an asyncio future cancelled locally), map in input order with a
bound on what is in flight and with a timeout, per-key completion order, connection loss and
reconnect, unix socket and token, retries, and many concurrent calls answered exactly once."""

import asyncio
import time
import unittest

import pxclient
from pxclient import px

import parex

TOKEN = "client-test-token-0123456789"


class AsyncBasics(unittest.IsolatedAsyncioTestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = pxclient.daemon(workers=4)

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    async def asyncSetUp(self):
        asyncio.get_running_loop().slow_callback_duration = 10  # debug mode; not a timing test
        self.c = parex.AsyncClient(self.d.addr)
        await self.c.connect()

    async def asyncTearDown(self):
        await self.c.close()

    async def running(self, key):
        async def check():
            return any(w["current_key"] == key for w in (await self.c.stats())["workers"])
        for _ in range(2000):
            if await check():
                return
            await asyncio.sleep(0.005)  # polling interval, not synchronisation
        self.fail("%s never ran" % key)

    async def test_call_submit_and_attributes(self):
        self.assertEqual(await self.c.call("echo", "k", {"a": 1}), {"a": 1})
        f = self.c.submit("sleep", "k", {"ms": 1})
        self.assertIsInstance(f, asyncio.Future)
        self.assertEqual(await f, {"slept_ms": 1})
        self.assertEqual((f.op, f.key, f.response["status"]), ("sleep", "k", "ok"))
        self.assertIsInstance(f.worker, int)
        self.assertGreaterEqual(f.run_ms, 0)

    async def test_errors(self):
        with self.assertRaises(parex.HandlerError) as cm:
            await self.c.call("fail", "k", {"message": "no"})
        self.assertEqual((cm.exception.code, cm.exception.message), ("handler_error", "no"))
        with self.assertRaises(parex.UnknownOp):
            await self.c.call("nope", "k")
        with self.assertRaises(parex.DeadlineExceeded):
            await self.c.call("sleep", "k", {"ms": 2000}, deadline_ms=30)
        with self.assertRaises(parex.Invalid):
            self.c.submit("echo", "x" * 300)

    async def test_cancel_queued_and_running(self):
        running = self.c.submit("sleep", "ca", {"ms": 300})
        queued = self.c.submit("sleep", "ca", {"ms": 10})
        await self.running("ca")
        self.assertTrue(await self.c.cancel(queued))
        self.assertTrue(queued.cancelled())
        self.assertFalse(await self.c.cancel(running))
        self.assertEqual(await running, {"slept_ms": 300})
        # Cancelling the asyncio future itself also takes the request out of parexd's queue.
        blocker = self.c.submit("sleep", "cb", {"ms": 200})
        await self.running("cb")
        local = self.c.submit("sleep", "cb", {"ms": 10})
        with self.assertRaises(asyncio.TimeoutError):
            await asyncio.wait_for(local, 0.02)
        self.assertTrue(local.cancelled())
        await blocker
        s = await self.c.stats()
        self.assertEqual(s["in_flight"], 0)
        self.assertEqual(s["failed"], 2)  # both queued ones answered cancelled, never run

    async def test_map_in_order_bounded_and_timeout(self):
        keys = ["m%d" % (i % 5) for i in range(300)]
        got = [r async for r in self.c.map("echo", keys, range(300), window=16)]
        self.assertEqual(got, list(range(300)))
        peak = 0

        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, len(self.c._held))
                await asyncio.sleep(0)

        w = asyncio.ensure_future(watch())
        got = [r async for r in self.c.map("sleep", ["mw%d" % i for i in range(20)],
                                           [{"ms": 1}] * 20, window=4)]
        w.cancel()
        self.assertEqual(len(got), 20)
        self.assertLessEqual(peak, 4)
        with self.assertRaises(TimeoutError):
            async for _ in self.c.map("sleep", ["mt"] * 2, [{"ms": 5}, {"ms": 500}],
                                      timeout=0.1):
                pass

    async def test_per_key_completion_order(self):
        done = {}
        fs = []
        for i in range(300):
            f = self.c.submit("echo", "o%d" % (i % 4), i)
            f.add_done_callback(lambda f: done.setdefault(f.key, []).append(f.result()))
            fs.append(f)
        await asyncio.gather(*fs)
        for vals in done.values():
            self.assertEqual(vals, sorted(vals))

    async def test_many_concurrent_calls_once_each(self):
        before = (await self.c.stats())["received"]
        res = await asyncio.gather(*(self.c.call("echo", "g%d" % (i % 32), i)
                                     for i in range(5000)))
        self.assertEqual(res, list(range(5000)))
        self.assertEqual((await self.c.stats())["received"] - before, 5000)


class AsyncConnection(unittest.IsolatedAsyncioTestCase):
    def setUp(self):
        self.sock = pxclient.unix_socket_path(self)

    async def test_unix_token_loss_and_reconnect(self):
        d = pxclient.daemon(listen_unix=self.sock, auth_token=TOKEN)
        try:
            async with parex.AsyncClient("unix:" + self.sock, token=TOKEN,
                                         connect_timeout=px.TIMEOUT) as c:
                self.assertEqual(await c.call("echo", "u", 1), 1)
                fs = [c.submit("sleep", "l%d" % i, {"ms": 5000}) for i in range(3)]
                while (await c.stats())["in_flight"] < 3:
                    await asyncio.sleep(0.005)  # polling interval
                d.kill()
                for f in fs:
                    with self.assertRaises(parex.ConnectionLost):
                        await f
                d = pxclient.daemon(listen_unix=self.sock, auth_token=TOKEN)
                self.assertEqual(await c.call("echo", "back", 2), 2)
            async with parex.AsyncClient(d.addr, token="wrong-token-wrong-token") as c:
                with self.assertRaises(parex.Unauthorized):
                    await c.call("echo", "u")
        finally:
            d.kill()

    async def test_retry_after_rejection(self):
        with pxclient.daemon(workers=1, queue_capacity=1) as d:
            async with parex.AsyncClient(d.addr) as c:
                first = c.submit("sleep", "r0", {"ms": 200})
                while (await c.stats())["workers"][0]["current_key"] != "r0":
                    await asyncio.sleep(0.005)  # polling interval
                c.submit("sleep", "r1", {"ms": 0})
                with self.assertRaises(parex.QueueFull) as cm:
                    await c.call("echo", "r2")
                self.assertIsInstance(cm.exception.retry_after_ms, int)
                t0 = time.monotonic()
                f = c.submit("echo", "r2", "ok", retry=parex.Retry(attempts=50, base=0, cap=0))
                self.assertEqual(await f, "ok")
                self.assertGreaterEqual(f.attempts, 2)
                self.assertGreaterEqual(time.monotonic() - t0,
                                        (cm.exception.retry_after_ms - 50) / 1000)
                await first

    async def test_connect_failed(self):
        c = parex.AsyncClient("unix:" + self.sock, connect_timeout=0.2)
        with self.assertRaises(parex.ConnectFailed):
            await c.connect()


if __name__ == "__main__":
    pxclient.main()
