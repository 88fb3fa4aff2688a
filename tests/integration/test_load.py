"""Load and soak.

- Hold 5000 concurrent connections: every one is accepted, sends a request and gets its answer
  (twice), /stats counts 5000 connections at the peak and 0 after they close.
- Soak: several threads send mixed work (echo, 1-5 ms sleeps, fail, invalid lines, garbage) in
  pipelined batches over connections that come and go, some of them vanishing abruptly with work
  in flight, for a bounded time (default 20 s; `--soak-seconds N` or PX_SOAK_SECONDS=N for
  longer). Afterwards: received == rejected + ok + failed with nothing in flight, every request a
  still-connected client sent was answered exactly once (nothing missing, duplicated or
  unknown), and the daemon's RSS is within 10% (+2 MiB) of its level after a warm-up phase.

Run alone: python3 test_load.py --parexd P --parexctl P [--soak-seconds N]
"""

import collections
import json
import os
import random
import resource
import sys
import threading
import time
import unittest

import pxharness as px
import pxsys
from pxsys import nofile_prefix, vm_rss_kib

px.SETTINGS.update(builtin_test_ops=True)  # these tests use the built-in sleep and fail


def _take_soak_seconds():
    """Removes --soak-seconds N from argv (unittest would reject it); env PX_SOAK_SECONDS too."""
    secs = float(os.environ.get("PX_SOAK_SECONDS", "20"))
    argv = sys.argv
    for i, a in enumerate(argv):
        if a == "--soak-seconds" and i + 1 < len(argv):
            secs = float(argv[i + 1])
            del argv[i:i + 2]
            break
        if a.startswith("--soak-seconds="):
            secs = float(a.split("=", 1)[1])
            del argv[i]
            break
    return secs


SOAK_SECONDS = _take_soak_seconds()
WARMUP_SECONDS = 5.0
HOLD = 5000


def under_asan():
    """Is the parexd under test built with AddressSanitizer?"""
    with open(px.PAREXD, "rb") as f:
        return b"__asan_init" in f.read()


def raise_nofile(need):
    """Raises this process's RLIMIT_NOFILE to at least need; False if it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return True
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, soft), max(need, hard)))
    except (ValueError, OSError):
        return False
    return True


class HoldConnectionsTest(px.Accounting, unittest.TestCase):
    def test_hold_5000_connections(self):
        need = HOLD + 256
        if not raise_nofile(need):
            self.skipTest("RLIMIT_NOFILE hard limit %r is below the %d fds this test needs"
                          % (resource.getrlimit(resource.RLIMIT_NOFILE), need))
        conns = []
        with pxsys.SysDaemon(["--workers", "4"], prefix=nofile_prefix(need)) as d:
            try:
                t0 = time.monotonic()
                for i in range(HOLD):
                    conns.append(d.connect(timeout=30))
                t_conn = time.monotonic() - t0
                # Every one sends and is answered while all are open.
                for i, c in enumerate(conns):
                    c.send({"key": "h%d" % (i % 97), "id": i, "payload": i})
                for i, c in enumerate(conns):
                    r = c.recv(timeout=30)
                    self.assertEqual((r["id"], r["status"], r["result"]), (i, "ok", i), r)
                s = d.wait_hstats(lambda s: s["connections"] == HOLD,
                                  "%d connections" % HOLD, timeout=30)
                peak = s["connections"]
                rss_peak = vm_rss_kib(d.pid)
                # All still live: a second round, in reverse order, each answered once.
                for i in reversed(range(HOLD)):
                    conns[i].send({"key": "r%d" % (i % 89), "id": "again-%d" % i})
                for i, c in enumerate(conns):
                    r = c.recv(timeout=30)
                    self.assertEqual((r["id"], r["status"]), ("again-%d" % i, "ok"), r)
                    self.assertEqual(c.buf, b"")
                s = d.wait_hstats(lambda s: s["in_flight"] == 0, "idle", timeout=30)
                self.assertEqual(s["connections"], HOLD)
                self.assertEqual(s["received"], 2 * HOLD)
                self.assertEqual(s["ok"], 2 * HOLD)
                self.assertAccounting(s)
            finally:
                for c in conns:
                    c.close()
            s = d.wait_hstats(lambda s: s["connections"] == 0, "every connection closed",
                              timeout=30)
            self.assertAccounting(s)
            print("\nheld %d concurrent connections (opened in %.1f s), %d requests answered; "
                  "daemon RSS at the peak %d KiB" % (peak, t_conn, s["ok"], rss_peak))


# -- soak --

def expect(cond, what):
    """A check in a client thread (unlike assert, not removed by python -O)."""
    if not cond:
        raise AssertionError(what)


class SoakWorker(threading.Thread):
    """One client thread. Per batch it sends 1-50 mixed lines at once, then either reads every
    answer and checks it, or (sometimes) vanishes: before reading, or halfway through."""

    KEYS = 32

    def __init__(self, d, n, until):
        super().__init__(daemon=True)
        self.d, self.n, self.until = d, n, until
        self.rng = random.Random(1000 + n)
        self.seq = 0
        self.errors = []
        self.sent_lines = 0  # every line, including those of abandoned batches
        self.sent_valid = 0  # lines the daemon counts as received (if it reads them)
        self.checked = collections.Counter()  # answers checked, by (status, code)
        self.checked_valid = 0
        self.vanished = 0
        self.connections = 0

    def make(self):
        """(line bytes, expectation) for one random line."""
        self.seq += 1
        rid = "w%d-%d" % (self.n, self.seq)
        key = "s%d" % self.rng.randrange(self.KEYS)
        x = self.rng.random()
        if x < 0.50:
            payload = "e" * self.rng.randrange(0, 2000)
            obj, exp = {"key": key, "id": rid, "payload": payload}, ("echo", payload)
        elif x < 0.75:
            ms = self.rng.randint(1, 5)
            obj, exp = ({"key": key, "id": rid, "op": "sleep", "payload": {"ms": ms}},
                        ("sleep", ms))
        elif x < 0.85:
            obj, exp = ({"key": key, "id": rid, "op": "fail", "payload": {"message": rid}},
                        ("fail", rid))
        elif x < 0.95:
            obj, exp = ((({"key": "", "id": rid}, ("invalid", "bad_field")),
                         ({"key": key, "id": rid, "op": "nope"}, ("invalid", "unknown_op")))
                        [self.rng.randrange(2)])
        else:
            return b"\x01not json " + rid.encode() + b"\n", ("garbage", None)
        return (json.dumps(obj) + "\n").encode(), (rid,) + exp

    def check(self, r, exp):
        kind = exp[1]
        st, code = r["status"], r.get("error", {}).get("code")
        if kind in ("echo", "sleep", "fail") and st == "rejected":
            expect(code == "queue_full" and isinstance(r["retry_after_ms"], int), r)
        elif kind == "echo":
            expect(st == "ok" and r["result"] == exp[2], r)
        elif kind == "sleep":
            expect(st == "ok" and r["result"] == {"slept_ms": exp[2]}, r)
        elif kind == "fail":
            expect(st == "failed" and code == "handler_error"
                   and r["error"]["message"] == exp[2], r)
        elif kind == "invalid":
            expect(st == "invalid" and code == exp[2], r)
        else:
            raise AssertionError("unexpected expectation %r" % (exp,))
        self.checked[(st, code)] += 1
        if kind != "invalid":
            self.checked_valid += 1

    def batch(self, c):
        """One batch on c; returns False when the connection was dropped on purpose."""
        lines, exps = [], {}
        garbage = 0
        for _ in range(self.rng.randint(1, 50)):
            raw, exp = self.make()
            lines.append(raw)
            if exp[0] == "garbage":
                garbage += 1
            else:
                exps[exp[0]] = exp
                if exp[1] != "invalid":
                    self.sent_valid += 1
        c.send_raw(b"".join(lines))
        self.sent_lines += len(lines)
        fate = self.rng.random()
        if fate < 0.04:  # vanish with the whole batch in flight
            (c.reset if self.rng.random() < 0.5 else c.close)()
            self.vanished += 1
            return False
        want = len(lines)
        if fate < 0.07:  # vanish halfway through the answers
            want = len(lines) // 2
        nulls = 0
        for _ in range(want):
            r = c.recv(timeout=60)
            rid = r["id"]
            if rid is None:
                expect(r["status"] == "invalid" and r["error"]["code"] == "bad_json", r)
                nulls += 1
                self.checked[("invalid", "bad_json")] += 1
                continue
            expect(rid in exps, "unknown or duplicate answer %r" % r)
            self.check(r, exps.pop(rid))
        if want < len(lines):
            (c.reset if self.rng.random() < 0.5 else c.close)()
            self.vanished += 1
            return False
        # Everything came back, each exactly once: no id left over, one null-id answer per
        # garbage line, nothing more buffered.
        expect(not exps, "never answered: %r" % list(exps)[:5])
        expect(nulls == garbage, (nulls, garbage))
        expect(c.buf == b"", c.buf[:200])
        return True

    def run(self):
        try:
            while time.monotonic() < self.until:
                c = self.d.connect(timeout=60)
                self.connections += 1
                alive = True
                for _ in range(self.rng.randint(1, 30)):
                    if time.monotonic() >= self.until or not (alive := self.batch(c)):
                        break
                if alive:
                    if self.rng.random() < 0.5:
                        # A clean goodbye: half-close, then the daemon closes with nothing more.
                        c.shutdown_write()
                        expect(c.wait_eof(timeout=60) == [], "answers after the last batch")
                    c.close()
        except BaseException as e:
            self.errors.append(e)


class SoakTest(px.Accounting, unittest.TestCase):
    THREADS = 6

    def phase(self, d, seconds):
        until = time.monotonic() + seconds
        ws = [SoakWorker(d, n, until) for n in range(self.THREADS)]
        for w in ws:
            w.start()
        for w in ws:
            w.join(seconds + 120)
            self.assertFalse(w.is_alive(), "soak client %d hangs" % w.n)
        for w in ws:
            self.assertEqual(w.errors, [], "soak client %d" % w.n)
        # Nothing left running and every client gone; the books balance exactly.
        s = d.wait_hstats(lambda s: s["in_flight"] == 0 and s["connections"] == 0,
                          "in_flight 0 and no connections", timeout=30)
        self.assertAccounting(s)
        self.assertEqual(s["received"], s["rejected"] + s["ok"] + s["failed"])
        return ws, s

    def test_soak(self):
        cfg = {"workers": 4, "queue_capacity": 64}
        with pxsys.SysDaemon(config=cfg) as d:
            ws0, s0 = self.phase(d, WARMUP_SECONDS)
            rss_warm = vm_rss_kib(d.pid)
            ws, s1 = self.phase(d, SOAK_SECONDS)
            rss_after = vm_rss_kib(d.pid)

            sent_lines = sum(w.sent_lines for w in ws)
            sent_valid = sum(w.sent_valid for w in ws)
            checked_valid = sum(w.checked_valid for w in ws)
            checked = collections.Counter()
            for w in ws:
                checked.update(w.checked)
            d_received = s1["received"] - s0["received"]
            d_invalid = s1["invalid"] - s0["invalid"]
            # What live clients saw is a lower bound of what the daemon counted; what was sent
            # an upper bound (a vanished client's unread bytes may be discarded unread).
            self.assertGreaterEqual(d_received, checked_valid)
            self.assertLessEqual(d_received, sent_valid)
            self.assertGreaterEqual(s1["ok"] - s0["ok"], checked[("ok", None)])
            self.assertGreaterEqual(s1["failed"] - s0["failed"],
                                    checked[("failed", "handler_error")])
            n_invalid = sum(v for (st, _), v in checked.items() if st == "invalid")
            self.assertGreaterEqual(d_invalid, n_invalid)
            self.assertLessEqual(d_invalid, sent_lines - sent_valid)
            self.assertGreater(sum(w.vanished for w in ws), 0)
            self.assertGreater(checked[("ok", None)], 0)

            # No leak: back within 10% of the post-warm-up level, plus 2 MiB for the allocator
            # (glibc keeps a free list per arena, and each of the 4 workers and the loop has
            # its own arena whose top may sit a few hundred KiB higher after a burst).
            limit = rss_warm * 1.10 + 2048
            print("\nsoak: %.0f s after %.0f s warm-up, %d threads; %d lines sent (%d valid, %d "
                  "checked answers from live clients: %s), %d connections, %d vanished; daemon "
                  "received %d, dropped %d answers; RSS after warm-up %d KiB, after soak %d KiB "
                  "(limit %d KiB)"
                  % (SOAK_SECONDS, WARMUP_SECONDS, self.THREADS, sent_lines, sent_valid,
                     sum(checked.values()), dict(checked), sum(w.connections for w in ws),
                     sum(w.vanished for w in ws), d_received,
                     s1["responses_dropped"] - s0["responses_dropped"], rss_warm, rss_after,
                     limit))
            if under_asan():
                # AddressSanitizer's allocator keeps freed blocks out of reuse and RSS drifts a
                # few MiB under any churn; there LeakSanitizer, at the daemon's exit (checked by
                # the harness's exit-status check), is the exact leak test instead. The plain
                # build runs this bound.
                print("RSS bound not applied: parexd is built with AddressSanitizer")
            else:
                self.assertLessEqual(rss_after, limit, "RSS grew from %d to %d KiB over the soak"
                                     % (rss_warm, rss_after))


if __name__ == "__main__":
    px.main()
