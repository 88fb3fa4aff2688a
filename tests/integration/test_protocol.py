"""Wire protocol v1 over a real socket: every invalid input class is answered (and the connection
stays usable), ids are echoed verbatim or assigned, defaults and unknown fields, trailing \\r,
over-long lines, pipelining, the built-in ops and the control line."""

import json
import time
import unittest

import pxharness as px

# These tests use the built-in sleep and fail, and pipeline more than one connection may by
# default (max_in_flight_per_connection).
px.SETTINGS.update(builtin_test_ops=True, max_in_flight_per_connection=1 << 24)

WORKERS = 4
MAX_LINE = 1024


class ProtocolTest(px.Accounting, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = px.Daemon(["--workers", str(WORKERS)], config={"max_line_bytes": MAX_LINE})

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def setUp(self):
        self.c = self.d.connect()

    def tearDown(self):
        self.c.close()
        # Whatever a test did, nothing is left running and the books balance.
        self.assertAccounting(self.d.wait_idle())

    # -- helpers --

    def assertOk(self, r, result=None):
        self.assertEqual(r["status"], "ok", r)
        self.assertIn("result", r)
        self.assertNotIn("error", r)
        self.assertIsInstance(r["worker"], int)
        self.assertTrue(0 <= r["worker"] < WORKERS, r)
        for f in ("queue_ms", "run_ms"):
            self.assertIsInstance(r[f], (int, float), r)
            self.assertGreaterEqual(r[f], 0, r)
        if result is not None:
            self.assertEqual(r["result"], result)

    def assertError(self, r, status, code, id_=None):
        self.assertEqual(r["status"], status, r)
        self.assertEqual(r["error"]["code"], code, r)
        self.assertIsInstance(r["error"]["message"], str)
        self.assertGreater(len(r["error"]["message"]), 10, r)  # something a person can act on
        self.assertNotIn("result", r)
        self.assertIn("id", r)
        self.assertEqual(r["id"], id_, r)

    def assertUsable(self):
        """The connection still serves requests."""
        r = self.c.request({"key": "after", "payload": "still here"})
        self.assertOk(r, "still here")

    def test_readme_invalid_example_is_the_real_answer(self):
        # The README's bad_json example line is what parexd answers to "not", byte for byte.
        import os
        readme = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                              "README.md")
        with open(readme) as f:
            example = [ln for ln in f.read().splitlines() if '"code":"bad_json"' in ln]
        self.assertEqual(len(example), 1, example)
        self.c.send_raw(b"not json\n")
        self.assertEqual(self.c.recv_line().decode(), example[0])

    def test_id_is_reserialised(self):
        # README: an id comes back as the same JSON value, written compactly.
        self.c.send_raw(b'{"key":"rid","id":"\\u0041"}\n')
        self.assertEqual(self.c.recv()["id"], "A")

    # -- invalid input, class by class --

    INVALID = [
        # (raw line, code, id expected in the answer)
        (b"this is not json", "bad_json", None),
        (b"{", "bad_json", None),
        (b'{"key":"a"} {"key":"b"}', "bad_json", None),
        (b'{"key":"a","key":"b"}', "bad_json", None),  # duplicate member
        (b'{"key":"\xff\xfe"}', "bad_json", None),  # invalid UTF-8
        (b'{"id":5,"key":', "bad_json", None),  # no id from a line that is not JSON
        (b"[1,2,3]", "not_an_object", None),
        (b'[{"key":"a"}]', "not_an_object", None),
        (b"{}", "missing_key", None),
        (b'{"id":"m1","op":"echo","payload":1}', "missing_key", "m1"),
        (b'{"key":""}', "bad_field", None),
        (b'{"key":"' + b"x" * 257 + b'"}', "bad_field", None),
        (b'{"id":9,"key":7}', "bad_field", 9),
        (b'{"key":null}', "bad_field", None),
        (b'{"key":["a"]}', "bad_field", None),
        (b'{"key":{"k":"a"}}', "bad_field", None),
        (b'{"key":"a","id":1.5}', "bad_field", None),
        (b'{"key":"a","id":true}', "bad_field", None),
        (b'{"key":"a","id":null}', "bad_field", None),
        (b'{"key":"a","id":[1]}', "bad_field", None),
        (b'{"key":"a","id":{"n":1}}', "bad_field", None),
        (b'{"key":"a","op":1}', "bad_field", None),
        (b'{"key":"a","op":null}', "bad_field", None),
        (b'{"key":"a","op":["echo"]}', "bad_field", None),
        (b'{"key":"a","op":"sleep","payload":{"ms":-1}}', "bad_field", None),
        (b'{"key":"a","op":"sleep","payload":{"ms":60001}}', "bad_field", None),
        (b'{"key":"a","op":"sleep","payload":{"ms":"5"}}', "bad_field", None),
        (b'{"key":"a","op":"sleep"}', "bad_field", None),
        (b'{"key":"a","op":"fail","payload":{"message":3}}', "bad_field", None),
        (b'{"id":"c1","control":"no-such-command"}', "bad_field", "c1"),
        (b'{"control":7}', "bad_field", None),
        (b'{"id":"u1","key":"a","op":"no-such-op"}', "unknown_op", "u1"),
        (b'{"key":"a","op":"ECHO"}', "unknown_op", None),
    ]

    def test_every_invalid_class_is_answered_and_the_connection_stays_usable(self):
        before = self.d.stats()
        counts = {}
        for raw, code, id_ in self.INVALID:
            with self.subTest(line=raw[:60]):
                self.c.send_raw(raw + b"\n")
                r = self.c.recv()
                self.assertError(r, "invalid", code, id_)
                self.assertNotIn("worker", r)
                self.assertNotIn("queue_ms", r)
                counts[code] = counts.get(code, 0) + 1
                self.assertUsable()
        after = self.d.stats()
        # Invalid lines are counted by code and are not requests: received grew only by the
        # valid "still here" requests.
        for code, n in counts.items():
            self.assertEqual(after["invalid_by_code"][code] - before["invalid_by_code"][code], n,
                             code)
        self.assertEqual(after["received"] - before["received"], len(self.INVALID))

    def test_scalar_json_is_not_an_object(self):
        # A JSON scalar is valid JSON that is not an object (README: bad_json is "not JSON",
        # not_an_object is "JSON, but not an object").
        for raw in (b"42", b'"a string"', b"null", b"true"):
            with self.subTest(line=raw):
                self.c.send_raw(raw + b"\n")
                self.assertError(self.c.recv(), "invalid", "not_an_object")
                self.assertUsable()

    def test_unknown_op_lists_the_available_ops(self):
        r = self.c.request({"key": "a", "op": "frobnicate"})
        self.assertError(r, "invalid", "unknown_op")
        msg = r["error"]["message"]
        for op in ("frobnicate", "echo", "sleep", "fail"):
            self.assertIn(op, msg)

    def test_key_of_256_bytes_is_accepted(self):
        key = "k" * 256
        self.assertOk(self.c.request({"key": key, "payload": 1}), 1)
        # Bytes, not characters: 128 two-byte characters are 256 bytes, 129 are too many.
        self.assertOk(self.c.request({"key": "\u00e9" * 128}))
        r = self.c.request({"key": "\u00e9" * 129})
        self.assertError(r, "invalid", "bad_field")

    # -- ids --

    def test_ids_are_echoed_verbatim(self):
        cases = ["abc", "", "with \"quotes\" and \\ and \u00e9 and \n", 0, 42, -7,
                 9007199254740993, -9223372036854775808, 9223372036854775807]
        for id_ in cases:
            with self.subTest(id=id_):
                r = self.c.request({"key": "ids", "id": id_, "payload": "p"})
                self.assertOk(r, "p")
                self.assertEqual(r["id"], id_)
                self.assertIs(type(r["id"]), type(id_))
        # Verbatim on the wire: an integer id comes back as the same digits.
        self.c.send_raw(b'{"key":"ids","id":12345678901234567}\n')
        self.assertTrue(self.c.recv_line().startswith(b'{"id":12345678901234567,'))

    def test_ids_echoed_on_failed_invalid_and_control_answers(self):
        r = self.c.request({"key": "ids", "id": "f1", "op": "fail",
                            "payload": {"message": "upstream timed out"}})
        self.assertError(r, "failed", "handler_error", "f1")
        r = self.c.request({"key": "ids", "id": 77, "op": "nope"})
        self.assertError(r, "invalid", "unknown_op", 77)
        r = self.c.request({"id": "s1", "control": "stats"})
        self.assertEqual((r["id"], r["status"]), ("s1", "ok"))

    def test_server_assigns_integer_ids_unique_on_the_connection(self):
        n = 50
        self.c.send(*[{"key": "auto%d" % (i % 5), "payload": i} for i in range(n)])
        rs = self.c.recv_n(n)
        ids = [r["id"] for r in rs]
        for r in rs:
            self.assertOk(r)
            self.assertIs(type(r["id"]), int, r)
        self.assertEqual(len(set(ids)), n, ids)
        self.assertEqual(sorted(r["result"] for r in rs), list(range(n)))
        # Another connection gets ids too.
        with self.d.connect() as c2:
            r = c2.request({"key": "auto0"})
            self.assertOk(r)
            self.assertIs(type(r["id"]), int)

    # -- fields and defaults --

    def test_defaults_op_echo_payload_null(self):
        r = self.c.request({"key": "defaults"})
        self.assertOk(r)
        self.assertIsNone(r["result"])

    def test_echo_returns_any_payload(self):
        for p in [{"nested": {"a": [1, 2.5, None, True, "s"]}}, [], "text \u2603", 0, -1.25,
                  False, None, {"": ""}]:
            with self.subTest(payload=p):
                self.assertOk(self.c.request({"key": "echo", "op": "echo", "payload": p}), p)

    def test_unknown_fields_are_ignored(self):
        r = self.c.request({"v": 2, "key": "u", "trace": {"span": [1, 2]}, "payload": "x",
                            "priority": "high", "deadline_ms": 5})
        self.assertOk(r, "x")
        self.assertNotIn("trace", r)

    def test_trailing_cr_is_tolerated(self):
        self.c.send_raw(b'{"key":"cr","payload":"one"}\r\n{"key":"cr","payload":"two"}\r\n')
        self.assertOk(self.c.recv(), "one")
        self.assertOk(self.c.recv(), "two")

    def test_blank_lines_get_no_answer(self):
        self.c.send_raw(b'\n\r\n   \n{"key":"blank","id":"b","payload":1}\n')
        r = self.c.recv()
        self.assertEqual(r["id"], "b")
        self.assertTrue(self.c.nothing_pending(0.05))

    # -- line length --

    def test_line_too_long_is_skipped_and_the_next_line_works(self):
        long_line = json.dumps({"key": "big", "id": "big", "payload": "x" * 5000}).encode()
        self.c.send_raw(long_line + b"\n" + b'{"key":"big","id":"next","payload":2}\n')
        r = self.c.recv()
        self.assertError(r, "invalid", "line_too_long", None)
        self.assertIn(str(MAX_LINE), r["error"]["message"])
        r = self.c.recv()
        self.assertOk(r, 2)
        self.assertEqual(r["id"], "next")
        self.assertTrue(self.c.nothing_pending(0.05))

    def test_line_too_long_is_answered_before_its_newline(self):
        self.c.send_raw(b'{"key":"big","payload":"' + b"y" * (3 * MAX_LINE))
        r = self.c.recv()  # the newline has not been sent yet
        self.assertError(r, "invalid", "line_too_long", None)
        # The rest of the over-long line is skipped, however long, and answered only once.
        self.c.send_raw(b"z" * (4 * MAX_LINE))
        self.c.send_raw(b'"}\n{"key":"big","id":"after","payload":3}\n')
        r = self.c.recv()
        self.assertEqual((r["id"], r["result"]), ("after", 3))
        self.assertTrue(self.c.nothing_pending(0.05))

    def test_line_of_exactly_max_line_bytes_is_accepted(self):
        def line(n):
            head = b'{"key":"edge","payload":"'
            tail = b'"}'
            return head + b"e" * (n - len(head) - len(tail)) + tail

        self.assertEqual(len(line(MAX_LINE)), MAX_LINE)
        self.c.send_raw(line(MAX_LINE) + b"\n")
        self.assertOk(self.c.recv())
        self.c.send_raw(line(MAX_LINE) + b"\r\n")  # the \r does not count
        self.assertOk(self.c.recv())
        self.c.send_raw(line(MAX_LINE + 1) + b"\n")
        self.assertError(self.c.recv(), "invalid", "line_too_long")

    # -- pipelining and framing --

    def test_pipelining_many_requests_in_one_write(self):
        n = 3000
        keys = ["pipe%d" % k for k in range(20)]
        reqs = [{"key": keys[i % len(keys)], "id": i, "payload": {"seq": i}} for i in range(n)]
        self.c.send(*reqs)
        rs = self.c.recv_n(n, timeout=30)
        seen = set()
        last = {}
        for r in rs:
            self.assertOk(r)
            self.assertEqual(r["result"], {"seq": r["id"]})
            seen.add(r["id"])
            key = keys[r["id"] % len(keys)]
            # Per key, answers come back in the order the requests were sent.
            self.assertGreater(r["id"], last.get(key, -1))
            last[key] = r["id"]
        self.assertEqual(seen, set(range(n)))
        self.assertTrue(self.c.nothing_pending(0.05))

    def test_lines_split_across_writes(self):
        data = b'{"key":"split","id":1}\n{"key":"split","id":2}\n'
        for i in range(len(data)):
            self.c.send_raw(data[i:i + 1])
        self.assertEqual([r["id"] for r in self.c.recv_n(2)], [1, 2])

    def test_last_line_without_newline_is_answered_at_end_of_stream(self):
        self.c.send_raw(b'{"key":"eof","id":1}\n{"key":"eof","id":2,"op":"sleep","payload":{"ms":30}}\n'
                        b'{"key":"eof","id":3}')
        self.c.shutdown_write()
        lines = self.c.wait_eof()
        self.assertEqual([json.loads(x)["id"] for x in lines], [1, 2, 3])

    # -- built-in ops and response fields --

    def test_sleep_op(self):
        t0 = time.monotonic()
        r = self.c.request({"key": "sleepy", "op": "sleep", "payload": {"ms": 120}})
        elapsed = time.monotonic() - t0
        self.assertOk(r, {"slept_ms": 120})
        self.assertGreaterEqual(r["run_ms"], 115)
        self.assertGreaterEqual(elapsed, 0.115)
        self.assertOk(self.c.request({"key": "sleepy", "op": "sleep", "payload": {"ms": 0}}),
                      {"slept_ms": 0})

    def test_fail_op(self):
        r = self.c.request({"key": "f", "id": 1, "op": "fail",
                            "payload": {"message": "the upstream said \"no\""}})
        self.assertError(r, "failed", "handler_error", 1)
        self.assertEqual(r["error"]["message"], "the upstream said \"no\"")
        self.assertIsInstance(r["worker"], int)
        self.assertIsInstance(r["queue_ms"], (int, float))
        self.assertIsInstance(r["run_ms"], (int, float))
        # Without a payload it still fails, with some message.
        r = self.c.request({"key": "f", "id": 2, "op": "fail"})
        self.assertError(r, "failed", "handler_error", 2)

    def test_same_key_same_worker(self):
        workers = {self.c.request({"key": "sticky", "payload": i})["worker"] for i in range(20)}
        self.assertEqual(len(workers), 1)
        # Keys spread over more than one worker.
        spread = {self.c.request({"key": "spread%d" % i})["worker"] for i in range(40)}
        self.assertGreater(len(spread), 1)

    # -- control line --

    def test_control_stats(self):
        r = self.c.request({"control": "stats", "id": "st"})
        self.assertEqual((r["status"], r["id"]), ("ok", "st"))
        s = r["result"]
        for f in ("received", "accepted", "rejected", "rejected_by_reason", "invalid_by_code",
                  "ok", "failed", "in_flight", "connections", "invariant_holds", "workers"):
            self.assertIn(f, s)
        self.assertEqual(len(s["workers"]), WORKERS)
        self.assertGreaterEqual(s["connections"], 1)
        self.assertAccounting(s)
        # At least the codes of protocol v1 (later features may add more).
        self.assertLessEqual({"bad_json", "not_an_object", "missing_key", "bad_field",
                              "line_too_long", "unknown_op"}, set(s["invalid_by_code"]))
        self.assertLessEqual({"queue_full", "shutting_down"}, set(s["rejected_by_reason"]))

    def test_stats_count_ok_and_failed(self):
        before = self.d.wait_idle()
        self.c.send({"key": "cnt", "payload": 1}, {"key": "cnt", "op": "fail"},
                    {"key": "cnt2", "payload": 2})
        self.c.recv_n(3)
        after = self.d.wait_idle()
        self.assertEqual(after["received"] - before["received"], 3)
        self.assertEqual(after["ok"] - before["ok"], 2)
        self.assertEqual(after["failed"] - before["failed"], 1)
        self.assertEqual(after["rejected"], before["rejected"])

    def test_invalid_answers_are_not_held_behind_running_work(self):
        # A long request runs for this connection; an invalid line after it is answered at once,
        # ahead of the running request's answer.
        self.c.send({"key": "slow", "id": "slow", "op": "sleep", "payload": {"ms": 1500}})
        t0 = time.monotonic()
        self.c.send_raw(b"garbage\n")
        r = self.c.recv(timeout=1.0)
        self.assertError(r, "invalid", "bad_json")
        self.assertLess(time.monotonic() - t0, 1.0)
        r = self.c.recv()
        self.assertEqual(r["id"], "slow")


if __name__ == "__main__":
    px.main()
