"""Hostile and malformed input: every class is answered with a clear `invalid` answer (or, for a
last line cut off by the client's end-of-stream, answered as a line and then closed), never a
crash. After each test the daemon still serves, nothing is in flight and the books balance.

Classes: invalid UTF-8, NUL bytes (raw and \\u0000), deeply nested JSON, huge numbers, duplicate
keys, keys of 0/256/257 bytes, ids of every JSON type, lines just under and over max_line_bytes,
no newline before EOF, and seeded random binary fed in many small chunks."""

import json
import random
import threading
import unittest

import pxharness as px

px.SETTINGS.update(builtin_test_ops=True)  # these tests use the built-in sleep and fail

MAX_LINE = 1024  # the small-limit daemon's max_line_bytes


class BadInputBase(px.Accounting):
    config = None

    @classmethod
    def setUpClass(cls):
        cls.d = px.Daemon(["--workers", "2"], config=cls.config)

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def setUp(self):
        self.c = self.d.connect()
        self.base = self.d.stats()

    def tearDown(self):
        self.c.close()
        # Never a crash: the process is alive, a fresh connection is served, the books balance.
        self.assertIsNone(self.d.proc.poll(), "parexd died; stderr:\n" + self.d.stderr_text())
        with self.d.connect() as c:
            r = c.request({"key": "alive", "id": "ping", "payload": "pong"})
            self.assertEqual((r["id"], r["status"], r["result"]), ("ping", "ok", "pong"), r)
        self.assertAccounting(self.d.wait_idle())

    # -- helpers --

    def ask(self, raw):
        """Sends one raw line (the newline is added) and returns its one answer."""
        self.c.send_raw(raw + b"\n")
        return self.c.recv()

    def assertInvalid(self, r, code, id_=None):
        self.assertEqual(r["status"], "invalid", r)
        self.assertEqual(r["error"]["code"], code, r)
        self.assertIsInstance(r["error"]["message"], str, r)
        self.assertGreater(len(r["error"]["message"]), 10, r)  # says what is wrong
        self.assertEqual(r["id"], id_, r)
        self.assertNotIn("result", r)

    def assertOk(self, r, id_, result):
        self.assertEqual((r["status"], r["id"], r["result"]), ("ok", id_, result), r)

    def assertStillUsable(self):
        r = self.c.request({"key": "same-conn", "id": "next", "payload": [1, 2]})
        self.assertOk(r, "next", [1, 2])

    def invalid_delta(self, code):
        return self.d.stats()["invalid_by_code"][code] - self.base["invalid_by_code"][code]


class BadInputTest(BadInputBase, unittest.TestCase):
    """Default max_line_bytes (1 MiB), so big hostile lines reach the parser."""

    def test_invalid_utf8(self):
        cases = [
            b'{"key":"\xff"}',  # never valid in UTF-8
            b'{"key":"\xc0\xaf"}',  # overlong encoding of '/'
            b'{"key":"\xed\xa0\x80"}',  # an encoded UTF-16 surrogate
            b'{"key":"\xe2\x82"}',  # truncated sequence
            b'{"key":"\xf4\x90\x80\x80"}',  # above U+10FFFF
            b'{"key":"a","payload":"\x80"}',  # lone continuation byte, outside the key
            b'{"key":"a","\xfe":1}',  # in a member name
            b'\xef\xbb\xbf{"key":"a"}',  # a BOM is not JSON either
            b'{"key":"a","payload":"\\ud800"}',  # unpaired surrogate escape
        ]
        for raw in cases:
            with self.subTest(raw=raw):
                self.assertInvalid(self.ask(raw), "bad_json")
        self.assertEqual(self.invalid_delta("bad_json"), len(cases))
        # Valid multi-byte UTF-8 next to it is fine.
        self.assertOk(self.ask('{"key":"ключ","id":"u","payload":"日本 \U0001F600"}'.encode()),
                      "u", "日本 \U0001F600")
        self.assertStillUsable()

    def test_nul_bytes(self):
        cases = [
            b'{"key":"a\x00b"}',  # raw NUL inside a string
            b'{"key":"a"}\x00',  # raw NUL after the object
            b'\x00{"key":"a"}',  # raw NUL before it
            b"\x00\x00\x00\x00",  # nothing but NULs
            b'{"key":"a\\u0000b"}',  # escaped NUL in the key
            b'{"key":"a","payload":"\\u0000"}',  # escaped NUL in the payload
            b'{"key":"a","id":"\\u0000"}',  # escaped NUL in the id
            b'{"ke\\u0000y":"a"}',  # escaped NUL in a member name
        ]
        for raw in cases:
            with self.subTest(raw=raw):
                self.assertInvalid(self.ask(raw), "bad_json")
        self.assertEqual(self.invalid_delta("bad_json"), len(cases))
        self.assertStillUsable()

    def test_deeply_nested_json(self):
        for opener, closer in ((b"[", b"]"), (b'{"a":', b"}")):
            with self.subTest(opener=opener):
                # 100 000 levels: the parser's depth bound answers bad_json, nothing overflows.
                self.assertInvalid(self.ask(opener * 100000), "bad_json")
                self.assertInvalid(self.ask(opener * 100000 + closer * 100000), "bad_json")
                # ...also as the payload of an otherwise valid request.
                line = b'{"key":"deep","id":1,"payload":' + opener * 100000 + b"1" + \
                    closer * 100000 + b"}"
                self.assertInvalid(self.ask(line), "bad_json")
        self.assertEqual(self.invalid_delta("bad_json"), 6)
        # Moderate nesting is a normal payload and comes back intact.
        nested = 1
        for _ in range(200):
            nested = [nested]
        self.assertOk(self.c.request({"key": "deep", "id": 2, "payload": nested}), 2, nested)
        self.assertStillUsable()

    def test_huge_numbers(self):
        cases = [
            b'{"key":"a","payload":1e400}',  # real overflow
            b'{"key":"a","payload":-1e400}',
            b'{"key":"a","payload":1180591620717411303424}',  # 2^70
            b'{"key":"a","payload":-1180591620717411303424}',
            b'{"key":"a","payload":' + b"9" * 5000 + b"}",  # 5000 digits
            b'{"key":"a","id":1180591620717411303424}',  # 2^70 as the id
            b'{"key":"a","id":9223372036854775808}',  # 2^63, one past int64
            b'{"key":"a","deadline_ms":1e400}',
        ]
        for raw in cases:
            with self.subTest(raw=raw[:60]):
                self.assertInvalid(self.ask(raw), "bad_json")
        self.assertEqual(self.invalid_delta("bad_json"), len(cases))
        # The int64 extremes are valid ids and come back verbatim.
        for n in (9223372036854775807, -9223372036854775808):
            self.c.send_raw(b'{"key":"a","id":%d,"payload":1.5e300}\n' % n)
            raw = self.c.recv_line()
            self.assertTrue(raw.startswith(b'{"id":%d,"status":"ok"' % n), raw)
            self.assertEqual(json.loads(raw)["result"], 1.5e300)
        # An out-of-range deadline that does parse is bad_field, not a crash.
        self.assertInvalid(self.ask(b'{"key":"a","deadline_ms":9223372036854775807}'),
                           "bad_field")
        self.assertStillUsable()

    def test_duplicate_keys(self):
        cases = [
            b'{"key":"a","key":"a"}',
            b'{"key":"a","key":"b"}',
            b'{"id":1,"id":2,"key":"a"}',  # no id is read from a line that is not valid
            b'{"key":"a","payload":{"x":1,"x":1}}',  # nested duplicate
            b'{"key":"a","op":"echo","op":"fail"}',
            b'{"key":"a","\\u006bey":"b"}',  # the same name, once escaped
            b'{"control":"stats","control":"stats"}',
        ]
        for raw in cases:
            with self.subTest(raw=raw):
                self.assertInvalid(self.ask(raw), "bad_json")
        self.assertEqual(self.invalid_delta("bad_json"), len(cases))
        self.assertStillUsable()

    def test_key_lengths(self):
        self.assertInvalid(self.ask(b'{"id":"k0","key":""}'), "bad_field", "k0")
        self.assertInvalid(self.ask(b'{"id":"k257","key":"' + b"k" * 257 + b'"}'),
                           "bad_field", "k257")
        # Bytes, not characters: 129 two-byte characters are 258 bytes.
        self.assertInvalid(self.c.request({"id": "e129", "key": "é" * 129}), "bad_field", "e129")
        self.assertInvalid(self.ask(b'{"id":"k64k","key":"' + b"k" * 65536 + b'"}'),
                           "bad_field", "k64k")
        self.assertEqual(self.invalid_delta("bad_field"), 4)
        # 1 and 256 bytes (also as 128 two-byte characters) are fine.
        for key, id_ in (("k", "k1"), ("k" * 256, "k256"), ("é" * 128, "e128")):
            self.assertOk(self.c.request({"id": id_, "key": key, "payload": id_}), id_, id_)
        # The 256-byte key and its 255-byte prefix are different partitions, both served.
        self.assertOk(self.c.request({"id": "k255", "key": "k" * 255, "payload": 0}), "k255", 0)
        self.assertStillUsable()

    def test_ids_of_every_json_type(self):
        good = ["s", "", "ünï\"\\code", 0, -1, 42, 2 ** 53 + 1]
        for i in good:
            with self.subTest(id=i):
                r = self.c.request({"key": "ids", "id": i, "payload": "p"})
                self.assertOk(r, i, "p")
                self.assertIs(type(r["id"]), type(i))
        bad = [(b"1.5", "a real number"), (b"1e3", "a real number"), (b"-0.0", "a real number"),
               (b"true", "a boolean"), (b"false", "a boolean"), (b"null", "null"),
               (b"[]", "an array"), (b"[1]", "an array"), (b"{}", "an object"),
               (b'{"id":1}', "an object")]
        for raw, what in bad:
            with self.subTest(id=raw):
                r = self.ask(b'{"key":"ids","id":' + raw + b',"payload":"p"}')
                self.assertInvalid(r, "bad_field")  # the id is unusable, so it is null
                self.assertIn("'id'", r["error"]["message"])
                self.assertIn(what, r["error"]["message"])
        # The same types on control and cancel lines.
        self.assertInvalid(self.ask(b'{"control":"stats","id":[1]}'), "bad_field")
        self.assertInvalid(self.ask(b'{"cancel":1.5}'), "bad_field")
        self.assertInvalid(self.ask(b'{"cancel":null}'), "bad_field")
        self.assertEqual(self.invalid_delta("bad_field"), len(bad) + 3)
        s = self.d.stats()
        self.assertEqual(s["received"] - self.base["received"], len(good))
        self.assertStillUsable()

    def test_line_with_no_newline_before_eof(self):
        # A valid request: answered as a complete line, then the server closes.
        with self.d.connect() as c:
            c.send_raw(b'{"key":"eof","id":"last","payload":7}')
            c.shutdown_write()
            lines = c.wait_eof()
        self.assertEqual(len(lines), 1, lines)
        self.assertOk(json.loads(lines[0]), "last", 7)
        # After complete lines, and with a trailing \r.
        with self.d.connect() as c:
            c.send_raw(b'{"key":"eof","id":1}\n{"key":"eof","id":2}\r')
            c.shutdown_write()
            lines = [json.loads(x) for x in c.wait_eof()]
        self.assertEqual([(r["id"], r["status"]) for r in lines], [(1, "ok"), (2, "ok")])
        # A cut-off request: answered invalid, then closed.
        with self.d.connect() as c:
            c.send_raw(b'{"key":"eof","id":3,"payl')
            c.shutdown_write()
            lines = [json.loads(x) for x in c.wait_eof()]
        self.assertEqual(len(lines), 1, lines)
        self.assertInvalid(lines[0], "bad_json")
        # A slow request cut off by EOF is still run and answered before the close.
        with self.d.connect() as c:
            c.send_raw(b'{"key":"eof","id":4,"op":"sleep","payload":{"ms":50}}')
            c.shutdown_write()
            lines = [json.loads(x) for x in c.wait_eof()]
        self.assertEqual([(r["id"], r["status"], r["result"]) for r in lines],
                         [(4, "ok", {"slept_ms": 50})])
        # Only blanks before EOF: nothing to answer, just closed.
        with self.d.connect() as c:
            c.send_raw(b" \t ")
            c.shutdown_write()
            self.assertEqual(c.wait_eof(), [])

    def test_random_binary_in_many_chunks(self):
        rng = random.Random(0x5EED)
        data = rng.randbytes(1 << 20)  # 1 MiB; a '\n' every 256 bytes on average
        # Every segment that is not only blanks must get exactly one invalid answer.
        segments = data.split(b"\n")
        tail = segments.pop()  # completed by the newline sent after the data
        segments.append(tail)
        expect = 0
        for seg in segments:
            if seg.endswith(b"\r"):
                seg = seg[:-1]
            if seg.strip(b" \t"):
                expect += 1
        got = []
        err = []

        def reader():
            try:
                for _ in range(expect + 1):
                    got.append(self.c.recv(timeout=30))
            except BaseException as e:  # reported by the main thread
                err.append(e)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        pos = chunks = 0
        while pos < len(data):
            n = rng.randint(1, 8192)
            self.c.send_raw(data[pos:pos + n])
            pos += n
            chunks += 1
        self.c.send_raw(b'\n{"key":"rnd","id":"sync","payload":"done"}\n')
        t.join(60)
        self.assertFalse(t.is_alive(), "answers to the random lines stopped coming")
        self.assertEqual(err, [])
        self.assertEqual(len(got), expect + 1)
        for r in got[:-1]:
            self.assertEqual(r["status"], "invalid", r)
            self.assertIn(r["error"]["code"], ("bad_json", "not_an_object"), r)
        self.assertOk(got[-1], "sync", "done")
        print("\nrandom binary: %d bytes in %d chunks, %d lines answered invalid"
              % (len(data), chunks, expect))
        s = self.d.stats()
        self.assertEqual(s["received"] - self.base["received"], 1)
        self.assertEqual(s["invalid"] - self.base["invalid"], expect)


class LineLimitTest(BadInputBase, unittest.TestCase):
    """max_line_bytes set small; the limit counts the line without its newline (and a \\r)."""

    config = {"max_line_bytes": MAX_LINE}

    def line(self, n, id_):
        """A valid echo request of exactly n bytes."""
        head = b'{"key":"lim","id":"%s","payload":"' % id_.encode()
        line = head + b"x" * (n - len(head) - 2) + b'"}'
        self.assertEqual(len(line), n)
        return line

    def test_just_under_at_and_over(self):
        for n in (MAX_LINE - 1, MAX_LINE):
            r = self.ask(self.line(n, "n%d" % n))
            self.assertEqual((r["status"], r["id"]), ("ok", "n%d" % n), r)
            frame = b'{"key":"lim","id":"n%d","payload":""}' % n
            self.assertEqual(r["result"], "x" * (n - len(frame)))
        # A trailing \r does not count.
        r = self.ask(self.line(MAX_LINE, "cr") + b"\r")
        self.assertEqual((r["status"], r["id"]), ("ok", "cr"), r)
        for n in (MAX_LINE + 1, MAX_LINE + 2, 4 * MAX_LINE, 1 << 20):
            with self.subTest(n=n):
                r = self.ask(self.line(n, "o%d" % n))
                self.assertInvalid(r, "line_too_long")  # the id is never parsed
                self.assertIn(str(MAX_LINE), r["error"]["message"])
        self.assertEqual(self.invalid_delta("line_too_long"), 4)
        s = self.d.stats()
        self.assertEqual(s["received"] - self.base["received"], 3)
        self.assertStillUsable()

    def test_over_long_line_in_small_chunks_is_answered_once(self):
        line = self.line(3 * MAX_LINE, "chunked")
        for i in range(0, len(line), 100):
            self.c.send_raw(line[i:i + 100])
        self.assertInvalid(self.c.recv(), "line_too_long")  # before its newline
        self.c.send_raw(b"\n")
        self.assertStillUsable()  # exactly one answer came for that line
        self.assertTrue(self.c.nothing_pending(0.05))
        self.assertEqual(self.invalid_delta("line_too_long"), 1)

    def test_over_long_line_cut_by_eof(self):
        with self.d.connect() as c:
            c.send_raw(b'{"key":"a","id":1}\n' + self.line(2 * MAX_LINE, "cut"))
            c.shutdown_write()
            lines = [json.loads(x) for x in c.wait_eof()]
        # Invalid answers are written at once, so they may overtake the ok one.
        self.assertEqual(len(lines), 2, lines)
        ok = [r for r in lines if r["status"] == "ok"]
        bad = [r for r in lines if r["status"] != "ok"]
        self.assertEqual([r["id"] for r in ok], [1], lines)
        self.assertInvalid(bad[0], "line_too_long")

    def test_endless_line_costs_no_memory(self):
        # 16 MiB with no newline on a 1 KiB limit: answered once, then skipped at once.
        chunk = b"y" * 65536
        self.c.send_raw(chunk)
        self.assertInvalid(self.c.recv(), "line_too_long")
        for _ in range(255):
            self.c.send_raw(chunk)
        self.c.send_raw(b"\n")
        self.assertStillUsable()
        self.assertEqual(self.invalid_delta("line_too_long"), 1)


if __name__ == "__main__":
    px.main()
