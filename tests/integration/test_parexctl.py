"""parexctl against a real daemon: send's output and exit status (0 ok, 1 failed/rejected/
invalid, 2 usage or connection error), stdin pipelining, and route agreeing with the daemon."""

import json
import select
import socket
import subprocess
import unittest

import pxharness as px

# These tests use the built-in sleep and fail, and pipeline more than one connection may by
# default (max_in_flight_per_connection).
px.SETTINGS.update(builtin_test_ops=True, max_in_flight_per_connection=1 << 24)

WORKERS = 4


class ParexctlTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = px.Daemon(["--workers", str(WORKERS)])

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def send(self, *args, **kw):
        return px.run_parexctl("send", "--addr", self.d.addr, *args, **kw)

    def one_response(self, out):
        lines = out.splitlines()
        self.assertEqual(len(lines), 1, out)
        return json.loads(lines[0])

    # -- send --

    def test_send_ok_exits_0(self):
        rc, out, err = self.send("--key", "k1", "--payload", '{"a":[1,2]}')
        self.assertEqual(rc, 0, err)
        r = self.one_response(out)
        self.assertEqual((r["status"], r["result"]), ("ok", {"a": [1, 2]}))

    def test_send_op_and_ids(self):
        rc, out, _ = self.send("--key", "k1", "--op", "sleep", "--payload", '{"ms":20}', "--id", "7")
        self.assertEqual(rc, 0)
        r = self.one_response(out)
        self.assertEqual((r["id"], r["result"]), (7, {"slept_ms": 20}))
        rc, out, _ = self.send("--key", "k1", "--id", "req-x")
        self.assertEqual(rc, 0)
        self.assertEqual(self.one_response(out)["id"], "req-x")

    def test_send_failed_exits_1(self):
        rc, out, _ = self.send("--key", "k1", "--op", "fail", "--payload", '{"message":"nope"}')
        self.assertEqual(rc, 1)
        r = self.one_response(out)
        self.assertEqual((r["status"], r["error"]["code"], r["error"]["message"]),
                         ("failed", "handler_error", "nope"))

    def test_send_invalid_exits_1(self):
        rc, out, _ = self.send("--key", "k1", "--op", "no-such-op")
        self.assertEqual(rc, 1)
        self.assertEqual(self.one_response(out)["error"]["code"], "unknown_op")
        rc, out, _ = self.send("--key", "x" * 300)
        self.assertEqual(rc, 1)
        self.assertEqual(self.one_response(out)["error"]["code"], "bad_field")

    def test_send_rejected_exits_1(self):
        hot = px.keys_by_worker(WORKERS, "ctl")[0][0]
        with px.Daemon(["--workers", str(WORKERS), "--queue-capacity", "1"]) as d, \
                d.connect() as c:
            # Capacity 1: one running, one queued, so the next one is rejected.
            c.send({"key": hot, "id": "run", "op": "sleep", "payload": {"ms": 600}})
            d.wait_stats(lambda s: s["workers"][0]["current_key"] == hot, "blocker running")
            c.send({"key": hot, "id": "queued"})
            d.wait_stats(lambda s: s["workers"][0]["queue_depth"] == 1, "queue full")
            rc, out, _ = px.run_parexctl("send", "--addr", d.addr, "--key", hot)
            self.assertEqual(rc, 1)
            r = self.one_response(out)
            self.assertEqual((r["status"], r["error"]["code"], r["worker"]),
                             ("rejected", "queue_full", 0))
            self.assertEqual([r["id"] for r in c.recv_n(2)], ["run", "queued"])

    def test_usage_errors_exit_2(self):
        for args in (["send", "--key", "k", "--payload", "{not json"],
                     ["send", "--bogus"],
                     ["send", "--op", "echo"],  # --op without --key
                     [],
                     ["no-such-command"],
                     ["route", "k"],
                     ["route", "--workers", "4"],
                     ["route", "k", "--workers", "0"],
                     ["route", "k", "--workers", "x"],
                     ["route", "k", "--workers", "1e3"]):
            with self.subTest(args=args):
                rc, out, err = px.run_parexctl(*args)
                self.assertEqual(rc, 2, (args, out, err))
                self.assertTrue(err, "usage errors say something on stderr")

    def test_id_outside_int64_is_a_usage_error(self):
        # issue 18: 99999999999999999999 was silently sent as 9223372036854775807. Against a
        # live daemon, so that only the refusal can make the exit status 2.
        for big in ("99999999999999999999", "-99999999999999999999"):
            rc, out, err = self.send("--key", "k", "--id", big)
            self.assertEqual((rc, out), (2, ""), err)
            self.assertIn("--id", err)
        rc, out, err = self.send("--key", "k", "--id", "9223372036854775807")
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.one_response(out)["id"], 9223372036854775807)

    def test_connection_errors_exit_2(self):
        # A port that is bound but not listening refuses connections for the whole test.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        try:
            addr = "127.0.0.1:%d" % s.getsockname()[1]
            rc, out, err = px.run_parexctl("send", "--addr", addr, "--key", "k")
            self.assertEqual(rc, 2, err)
            self.assertEqual(out, "")
            self.assertIn(addr, err)
            rc, out, err = px.run_parexctl("send", "--addr", addr, input=b'{"key":"k"}\n')
            self.assertEqual(rc, 2, err)
        finally:
            s.close()
        rc, _, err = px.run_parexctl("send", "--addr", "not-an-address", "--key", "k")
        self.assertEqual(rc, 2, err)

    def test_addr_from_environment(self):
        rc, out, err = px.run_parexctl("send", "--key", "env", "--payload", "5",
                                       env={"PAREXD_ADDR": self.d.addr})
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.one_response(out)["result"], 5)

    # -- send with stdin --

    def test_stdin_pipelining_prints_every_answer(self):
        n = 300
        lines = [json.dumps({"key": "pipe%d" % (i % 5), "id": i, "payload": i}) for i in range(n)]
        rc, out, err = self.send(input=("\n".join(lines) + "\n").encode(), timeout=20)
        self.assertEqual(rc, 0, err)
        rs = [json.loads(x) for x in out.splitlines()]
        self.assertEqual(len(rs), n)
        self.assertEqual(sorted(r["id"] for r in rs), list(range(n)))
        last = {}
        for r in rs:
            self.assertEqual((r["status"], r["result"]), ("ok", r["id"]))
            k = r["id"] % 5
            self.assertGreater(r["id"], last.get(k, -1))  # per-key order preserved
            last[k] = r["id"]

    def test_stdin_lines_get_the_token(self):
        # issue 18 item 7: piped send adds --token (or $PAREXD_TOKEN) to each line that has
        # none, leaves a line's own token and the rest of its bytes alone.
        tok = "piped-token-0123456789"
        with px.Daemon(config={"auth_token": tok}) as d:
            lines = ['{"key":"t1","id":1,"payload":{"x":1}}',
                     ' { } ',
                     '{"key":"t3","id":"\\u0041","token":"%s"}' % tok,
                     '{"key":"t4","id":4,"token":"wrong-token-0123456789"}',
                     '{"key":"t5","id":5}']
            data = ("\n".join(lines)).encode()  # the last line has no newline
            for how in (("--token", tok), ()):
                with self.subTest(how=how):
                    rc, out, err = px.run_parexctl("send", "--addr", d.addr, *how, input=data,
                                                   env={"PAREXD_TOKEN": tok} if not how else None)
                    rs = [json.loads(x) for x in out.splitlines()]
                    self.assertEqual(len(rs), 5, out)
                    got = {json.dumps(r["id"]): r for r in rs}
                    self.assertEqual(got["1"]["result"], {"x": 1})
                    self.assertEqual(got['"A"']["status"], "ok")
                    self.assertEqual(got["5"]["status"], "ok")
                    self.assertEqual(got["4"]["error"]["code"], "unauthorized")
                    self.assertEqual(got["null"]["error"]["code"], "missing_key")
                    self.assertEqual(rc, 1, err)

    def test_stdin_with_failures_exits_1_and_prints_all(self):
        lines = [b'{"key":"a","id":1}', b'not json', b'{"key":"a","id":2,"op":"fail"}',
                 b'{"key":"b","id":3,"op":"sleep","payload":{"ms":30}}']
        # The last line has no newline: it is still a request.
        rc, out, err = self.send(input=b"\n".join(lines), timeout=10)
        self.assertEqual(rc, 1, err)
        rs = [json.loads(x) for x in out.splitlines()]
        self.assertEqual(len(rs), 4, out)
        by_status = sorted((r["id"] if r["id"] is not None else 0, r["status"]) for r in rs)
        self.assertEqual(by_status, [(0, "invalid"), (1, "ok"), (2, "failed"), (3, "ok")])

    def test_stdin_answers_are_printed_as_they_arrive(self):
        # An answer is printed while stdin is still open: parexctl streams, it does not wait for
        # the end of its input.
        p = subprocess.Popen([px.PAREXCTL, "send", "--addr", self.d.addr], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            p.stdin.write(b'{"key":"stream","id":1}\n')
            p.stdin.flush()
            ready, _, _ = select.select([p.stdout], [], [], px.TIMEOUT)
            self.assertTrue(ready, "no answer printed while stdin stays open")
            self.assertEqual(json.loads(p.stdout.readline())["id"], 1)
            p.stdin.write(b'{"key":"stream","id":2}\n')
            p.stdin.close()
            self.assertEqual(p.wait(px.TIMEOUT), 0, p.stderr.read())  # output is one line
            self.assertEqual([json.loads(x)["id"] for x in p.stdout.read().splitlines()], [2])
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()

    def test_stdin_empty_exits_0(self):
        rc, out, err = self.send(input=b"")
        self.assertEqual((rc, out), (0, ""), err)

    # -- route --

    def test_route_matches_the_daemon(self):
        keys = ["route-%d" % i for i in range(40)] + ["user-42", "\u00e9t\u00e9", "a", "k" * 256]
        for workers in (1, 3, WORKERS, 7):
            d = self.d if workers == WORKERS else px.Daemon(["--workers", str(workers)])
            try:
                with d.connect() as c:
                    c.send(*[{"key": k, "id": k} for k in keys])
                    daemon_says = {r["id"]: r["worker"] for r in c.recv_n(len(keys))}
                for k in keys:
                    rc, out, err = px.run_parexctl("route", k, "--workers", workers)
                    self.assertEqual(rc, 0, err)
                    self.assertEqual(int(out.strip()), daemon_says[k],
                                     "key %r with %d workers" % (k, workers))
            finally:
                if d is not self.d:
                    d.stop()

    def test_route_pinned_value(self):
        # The README's example, and the unit test's pinned value: stable across builds.
        rc, out, _ = px.run_parexctl("route", "user-42", "--workers", "8")
        self.assertEqual((rc, out), (0, "6\n"))
        rc, out, _ = px.run_parexctl("route", "--workers", "1", "anything")
        self.assertEqual((rc, out), (0, "0\n"))


if __name__ == "__main__":
    px.main()
