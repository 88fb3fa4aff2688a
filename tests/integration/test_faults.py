"""Faults parexd must survive, each proven by what the daemon does afterwards: clients that vanish
mid-request and mid-response, a client that never reads its answers (the daemon stops reading it
once about 1 MiB of answers waits, serves everyone else meanwhile, and loses nothing when the
client reads again), max_connections reached, fd exhaustion (accept works again once fds are
free), an exec handler whose child crashes, and SIGTERM under full load (exit 0, every request
answered exactly once)."""

import collections
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import unittest

import pxharness as px
import pxsys
from pxsys import nofile_prefix, vm_rss_kib

# These tests use the built-in sleep and fail, and pipeline more than one connection may by
# default (max_in_flight_per_connection).
px.SETTINGS.update(builtin_test_ops=True, max_in_flight_per_connection=1 << 24)


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def zombie_children(pid):
    """Children of pid that are zombies (exited, never reaped)."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] == "Z":
            out.append(int(p))
    return out


class FaultBase(px.Accounting):
    def settle(self, d, conns=0):
        """Waits until nothing is in flight and only `conns` client connections are open
        (measured over HTTP, which opens no request connection); checks the books."""
        s = d.wait_hstats(lambda s: s["in_flight"] == 0 and s["connections"] == conns,
                          "in_flight 0 and %d connections" % conns)
        self.assertAccounting(s)
        return s

    def assertServes(self, d, key="alive"):
        self.assertIsNone(d.proc.poll(), "parexd died; stderr:\n" + d.stderr_text())
        with d.connect() as c:
            r = c.request({"key": key, "id": "ping", "payload": "pong"})
        self.assertEqual((r["id"], r["status"], r["result"]), ("ping", "ok", "pong"), r)


class DisconnectFaultTest(FaultBase, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = pxsys.SysDaemon(["--workers", "4", "--queue-capacity", "100000"])

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def test_disconnect_mid_request(self):
        base = self.settle(self.d)
        fin = rst = 0
        with self.d.connect() as live:
            for i in range(40):
                c = self.d.connect()
                c.send_raw(b'{"key":"half","id":%d,"op":"sleep","payl' % i)
                if i % 2:
                    c.reset()
                    rst += 1
                else:
                    c.close()
                    fin += 1
                # Another client is served normally throughout.
                r = live.request({"key": "live", "id": i, "payload": i})
                self.assertEqual((r["id"], r["status"], r["result"]), (i, "ok", i), r)
        s = self.settle(self.d)
        # Half a line is never a request: nothing was received or run for it.
        self.assertEqual(s["received"] - base["received"], 40)  # the live client's
        self.assertEqual(s["ok"] - base["ok"], 40)
        # After a FIN the fragment is the last line of the stream and is answered bad_json (the
        # answer goes nowhere); after an RST it may be discarded unread.
        bad = s["invalid_by_code"]["bad_json"] - base["invalid_by_code"]["bad_json"]
        self.assertGreaterEqual(bad, fin)
        self.assertLessEqual(bad, fin + rst)
        self.assertEqual(s["invalid"] - base["invalid"], bad)
        self.assertServes(self.d)

    def disconnect_mid_response(self, close, exact):
        """n requests on one key, the first a 1 s sleep, so none is answered before the client
        goes; it goes as soon as the daemon has read them all."""
        base = self.settle(self.d)
        n = 50
        c = self.d.connect()
        t0 = time.monotonic()
        c.send({"key": "gone", "id": 0, "op": "sleep", "payload": {"ms": 1000}},
               *[{"key": "gone", "id": i, "op": "sleep" if i % 2 else "echo",
                  "payload": {"ms": 2} if i % 2 else i} for i in range(1, n)])
        self.d.wait_hstats(lambda s: s["received"] - base["received"] == n, "all %d read" % n)
        self.assertEqual(c.buf, b"")
        close(c)
        closed_after = time.monotonic() - t0
        # The daemon serves others at once, while the gone client's requests still run.
        with self.d.connect() as other:
            r = other.request({"key": "other", "id": "x", "payload": 1}, timeout=2)
            self.assertEqual(r["status"], "ok", r)
        s = self.settle(self.d)
        self.assertEqual(s["ok"] - base["ok"], n + 1)  # all of them ran, and "x"
        self.assertEqual(s["failed"], base["failed"])
        dropped = s["responses_dropped"] - base["responses_dropped"]
        if closed_after > 0.9:  # a very slow machine: the guard may have ended first
            self.assertGreaterEqual(dropped, 1)
        elif exact:
            # An RST: the daemon knows at once, and every answer is dropped and counted.
            self.assertEqual(dropped, n)
        else:
            # A FIN only says the client is done sending: the first answers are written (the
            # client's kernel answers them with an RST), the rest are dropped and counted.
            self.assertGreaterEqual(dropped, n // 2)
            self.assertLessEqual(dropped, n)
        self.assertEqual(self.d.hstats()["in_flight"], 0)
        self.assertServes(self.d)

    def test_disconnect_mid_response_fin(self):
        self.disconnect_mid_response(lambda c: c.close(), False)

    def test_disconnect_mid_response_rst(self):
        self.disconnect_mid_response(lambda c: c.reset(), True)

    def test_disconnect_while_answers_are_streaming(self):
        # Answers flowing when the client goes: some written, the rest dropped; none lost from
        # the books, none run twice.
        base = self.settle(self.d)
        n = 2000
        c = self.d.connect()
        c.send(*[{"key": "stream%d" % (i % 8), "id": i, "payload": "p" * 512} for i in range(n)])
        c.recv_n(10)
        c.reset()
        s = self.settle(self.d)
        got = s["received"] - base["received"]
        self.assertLessEqual(got, n)
        self.assertGreaterEqual(got, 10)
        self.assertEqual(s["ok"] - base["ok"], got)
        self.assertServes(self.d)


class SlowReaderTest(FaultBase, unittest.TestCase):
    PAYLOAD = 128 * 1024
    # 640 answers of 128 KiB = 80 MiB: far more than the kernel's socket buffers can absorb
    # (tcp_wmem and tcp_rmem maxima are 4 and 32 MiB on Debian 12) plus the daemon's 1 MiB cap.
    N = 640

    def test_client_that_never_reads_is_throttled_then_served_in_full(self):
        with pxsys.SysDaemon(["--workers", "2"]) as d:
            base = self.settle(d)
            rss0 = vm_rss_kib(d.pid)
            s = socket.socket()
            # A small receive buffer, so the answers pile up in the daemon, not in our kernel.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.connect((d.host, d.port))
            pad = b"x" * self.PAYLOAD
            sent = [0]
            err = []

            def sender():
                try:
                    for i in range(self.N):
                        s.sendall(b'{"key":"slow","id":%d,"payload":"%s"}\n' % (i, pad))
                        sent[0] = i + 1
                except BaseException as e:
                    err.append(e)

            t = threading.Thread(target=sender, daemon=True)
            t.start()

            # The daemon stops reading: `received` stops growing while our send is stuck.
            hist = []

            def plateau():
                st = d.hstats()
                hist.append((time.monotonic(), st["received"], sent[0]))
                # unchanged (received and sent) for the last second, with work still unsent
                recent = [h for h in hist if h[0] >= hist[-1][0] - 1.0]
                return (hist[-1][0] - hist[0][0] >= 1.0 and recent[0][0] <= hist[-1][0] - 0.95
                        and len({(h[1], h[2]) for h in recent}) == 1 and sent[0] < self.N
                        and st["received"] > base["received"])

            px.wait_for(plateau, 30, "received to stop growing while the client does not read",
                        interval=0.05)
            self.assertEqual(err, [])
            self.assertTrue(t.is_alive(), "all requests were sent: nothing throttled the client")
            read = d.hstats()["received"] - base["received"]
            self.assertLess(read, self.N)
            self.assertLess(read, sent[0] + 1)
            # Bounded memory: had the daemon kept reading, it would hold the answers to all
            # N requests (80 MiB). It holds only what it had read before the cap took effect
            # (answers of requests already read, 1 MiB of output, allocator slack).
            rss1 = vm_rss_kib(d.pid)
            self.assertLess(rss1 - rss0, self.N * self.PAYLOAD // 1024 // 2,
                            "RSS grew %d KiB while %d answers (%d KiB) were unread"
                            % (rss1 - rss0, read, read * self.PAYLOAD // 1024))

            # Everyone else is served normally meanwhile.
            with d.connect() as other:
                for i in range(20):
                    r = other.request({"key": "other%d" % i, "id": i, "payload": i}, timeout=2)
                    self.assertEqual((r["id"], r["status"], r["result"]), (i, "ok", i), r)
            self.assertEqual(d.hstats()["received"] - base["received"], read + 20)

            # Now read: the daemon resumes reading; every answer arrives once, in order.
            s.settimeout(30)
            buf = b""
            ids = []
            deadline = time.monotonic() + 60
            while len(ids) < self.N and time.monotonic() < deadline:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        break
                    line, buf = buf[:nl], buf[nl + 1:]
                    r = json.loads(line)
                    self.assertEqual(r["status"], "ok", line[:200])
                    self.assertEqual(len(r["result"]), self.PAYLOAD)
                    ids.append(r["id"])
            t.join(30)
            self.assertFalse(t.is_alive())
            self.assertEqual(err, [])
            self.assertEqual(ids, list(range(self.N)))  # all, once each, in order
            s.settimeout(0.2)
            try:
                extra = s.recv(1)
            except socket.timeout:
                extra = b""
            self.assertEqual(extra + buf, b"", "more answers than requests")
            s.close()
            st = self.settle(d)
            self.assertEqual(st["received"] - base["received"], self.N + 20)
            self.assertEqual(st["ok"] - base["ok"], self.N + 20)
            print("\nslow reader: daemon stopped reading after %d of %d requests "
                  "(%d KiB of answers); RSS %d -> %d KiB" % (read, self.N,
                                                             read * self.PAYLOAD // 1024,
                                                             rss0, rss1))


class MaxConnectionsTest(FaultBase, unittest.TestCase):
    def test_sixth_connection_gets_one_line_and_old_ones_are_unaffected(self):
        with pxsys.SysDaemon(config={"max_connections": 5}) as d:
            olds = [d.connect() for _ in range(5)]
            try:
                for i, c in enumerate(olds):
                    r = c.request({"key": "mc%d" % i, "id": i, "payload": i})
                    self.assertEqual((r["id"], r["status"]), (i, "ok"), r)
                d.wait_hstats(lambda s: s["connections"] == 5, "5 connections")
                for attempt in range(3):
                    with d.connect() as extra:
                        lines = extra.wait_eof()
                    self.assertEqual(len(lines), 1, lines)
                    r = json.loads(lines[0])
                    self.assertEqual(r["status"], "rejected", r)
                    self.assertEqual(r["error"]["code"], "too_many_connections", r)
                    self.assertIn("max_connections", r["error"]["message"])
                    self.assertIsNone(r["id"])
                # The old ones never noticed: pipelined work on each is answered in full.
                for i, c in enumerate(olds):
                    c.send(*[{"key": "mc%d" % i, "id": j, "payload": j} for j in range(50)])
                for c in olds:
                    self.assertEqual([r["id"] for r in c.recv_n(50)], list(range(50)))
                s = self.settle(d, conns=5)
                self.assertEqual(s["rejected"], 0)  # refusals are not requests
                # A freed slot is usable again.
                olds.pop().close()
                d.wait_hstats(lambda s: s["connections"] == 4, "4 connections")
                with d.connect() as c:
                    self.assertEqual(c.request({"key": "again", "payload": 1})["status"], "ok")
                self.assertTrue(d.log_count("max_connections \\(5\\) reached") >= 3)
            finally:
                for c in olds:
                    c.close()


class FdExhaustionTest(FaultBase, unittest.TestCase):
    LIMIT = 64

    def test_accept_keeps_working_after_the_fd_limit_passes(self):
        d = pxsys.SysDaemon(["--workers", "2"], prefix=nofile_prefix(self.LIMIT),
                            config={"handlers": {"true": {"type": "exec", "argv": ["true"]}}})
        with d:
            base_fds = open_fds(d.pid)
            self.assertLess(base_fds, self.LIMIT - 10, "too few fds left to test with")
            for round_ in range(2):
                held, refused = [], 0
                # Twice as many connections as the daemon has fds.
                for i in range(2 * self.LIMIT):
                    try:
                        c = d.connect(timeout=2)
                        c.send({"key": "fd%d" % i, "id": i, "payload": i})
                        r = c.recv(timeout=2)
                        self.assertEqual((r["id"], r["status"]), (i, "ok"), r)
                        held.append(c)
                    except (EOFError, ConnectionError, TimeoutError, socket.timeout):
                        # Refused by a daemon out of fds: closed, reset or left in the backlog.
                        c.close()
                        refused += 1
                self.assertGreater(refused, 0, "the daemon never ran out of fds")
                # Out of fds indeed (libuv keeps one spare to accept-and-close the backlog).
                self.assertGreaterEqual(open_fds(d.pid), self.LIMIT - 1)
                self.assertLess(len(held), self.LIMIT)
                self.assertGreater(len(held), 0)
                self.assertIsNone(d.proc.poll(), "parexd died out of fds:\n" + d.stderr_text())
                # While out of fds, work that needs fds fails cleanly; the held ones still work.
                r = held[0].request({"key": "x", "id": "exec", "op": "true"}, timeout=5)
                self.assertEqual(r["id"], "exec")
                self.assertIn(r["status"], ("ok", "failed"), r)
                if r["status"] == "failed":
                    self.assertEqual(r["error"]["code"], "handler_error", r)
                exec_answer = r.get("error", {}).get("message", r["status"])
                for c in held[-3:]:
                    r = c.request({"key": "h", "id": "again", "payload": 1})
                    self.assertEqual(r["status"], "ok", r)
                for c in held:
                    c.close()

                # The limit has passed: new connections are accepted and answered again.
                def served():
                    try:
                        with d.connect(timeout=2) as c:
                            return c.request({"key": "back", "payload": 1},
                                             timeout=2)["status"] == "ok"
                    except (EOFError, ConnectionError, TimeoutError, socket.timeout):
                        return False

                px.wait_for(served, 20, "a new connection served after the fds were freed",
                            interval=0.05)
                # Not just one: as many as before at once, all answered.
                again = [d.connect() for _ in range(len(held))]
                for i, c in enumerate(again):
                    c.send({"key": "b%d" % i, "id": i})
                for i, c in enumerate(again):
                    self.assertEqual(c.recv()["id"], i)
                for c in again:
                    c.close()
                s = self.settle(d)
                print("\nfd exhaustion round %d: RLIMIT_NOFILE %d, %d connections held, "
                      "%d refused, then %d served again; exec handler while out of fds: %s"
                      % (round_ + 1, self.LIMIT, len(held), refused, len(again), exec_answer))
            # No fd leaked through all that.
            px.wait_for(lambda: open_fds(d.pid) <= base_fds, 10, "fds back to %d" % base_fds)
            self.assertServes(d)


class CrashingHandlerTest(FaultBase, unittest.TestCase):
    def test_child_killed_by_a_signal_is_a_handler_error(self):
        handlers = {
            "abort": {"type": "exec", "argv": [sys.executable, "-c",
                                               "import os, sys\n"
                                               "sys.stderr.write('about to abort\\n')\n"
                                               "sys.stderr.flush()\n"
                                               "os.abort()\n"]},
            "segv": {"type": "exec", "argv": ["sh", "-c", "kill -SEGV $$"]},
            "kill9": {"type": "exec", "argv": ["sh", "-c", "echo partial; kill -KILL $$"]},
        }
        with pxsys.SysDaemon(["--workers", "2"], config={"handlers": handlers}) as d:
            base = self.settle(d)
            with d.connect() as c:
                for rnd in range(3):
                    for op, sig in (("abort", 6), ("segv", 11), ("kill9", 9)):
                        r = c.request({"key": "crash-%s" % op, "id": op, "op": op}, timeout=10)
                        self.assertEqual((r["id"], r["status"]), (op, "failed"), r)
                        self.assertEqual(r["error"]["code"], "handler_error", r)
                        self.assertIn("signal %d" % sig, r["error"]["message"])
                    r = c.request({"key": "crash-abort", "id": "after", "payload": rnd})
                    self.assertEqual((r["status"], r["result"]), ("ok", rnd), r)
                # Several at once, from both workers.
                c.send(*[{"key": "p%d" % i, "id": i, "op": ("abort", "segv")[i % 2]}
                         for i in range(10)])
                rs = c.recv_n(10, timeout=30)
                self.assertEqual(sorted(r["id"] for r in rs), list(range(10)))
                self.assertEqual({r["status"] for r in rs}, {"failed"})
            r0 = [r for r in rs if r["id"] == 0][0]
            self.assertIn("about to abort", r0["error"]["message"])  # the stderr tail
            s = self.settle(d)
            self.assertEqual(s["failed"] - base["failed"], 19)
            h = {x["name"]: x for x in s["handlers"]}
            self.assertEqual(h["abort"]["failed"]["handler_error"], 3 + 5)
            self.assertEqual(h["segv"]["failed"]["handler_error"], 3 + 5)
            self.assertEqual(h["kill9"]["failed"]["handler_error"], 3)
            self.assertEqual(zombie_children(d.pid), [])
            self.assertServes(d)


class SigtermUnderLoadTest(FaultBase, unittest.TestCase):
    """Several clients pipelining echoes and short sleeps when SIGTERM comes. Each client also
    has a "guard" sleep queued on worker 0, so the drain cannot finish before the clients have
    seen `shutting_down` and stopped sending: every line they sent was read by the daemon and
    must be answered exactly once."""

    CLIENTS = 4
    WORKERS = 4
    WINDOW = 200

    def run_load(self, guard_ms, drain_timeout_ms, allowed):
        cfg = {"workers": self.WORKERS, "queue_capacity": 100000,
               "drain_timeout_ms": drain_timeout_ms}
        guard_keys = px.keys_by_worker(self.WORKERS, "guard", need=self.CLIENTS)[0]
        with pxsys.SysDaemon(config=cfg) as d:
            stop_sent = threading.Event()
            clients = []
            for n in range(self.CLIENTS):
                clients.append(LoadClient(d, n, guard_keys[n], guard_ms, self.WINDOW, stop_sent))
            for cl in clients:
                cl.start()
            # Full load: every client has had answers, and work is queued and running.
            d.wait_hstats(lambda s: s["ok"] >= 200 * self.CLIENTS and s["in_flight"] > 0,
                          "load running", timeout=20)
            self.assertTrue(all(cl.answered() > 0 for cl in clients))
            d.signal(signal.SIGTERM)
            stop_sent.set()
            rc = d.wait_exit(30 + drain_timeout_ms / 1000)
            for cl in clients:
                cl.join(30)
            self.assertEqual(rc, 0, d.stderr_text())
            total = collections.Counter()
            for cl in clients:
                self.assertEqual(cl.errors, [], "client %d" % cl.n)
                self.assertTrue(cl.eof, "client %d: the daemon never closed" % cl.n)
                self.assertTrue(cl.saw_shutting_down, "client %d" % cl.n)
                counts = collections.Counter(r["id"] for r in cl.answers)
                dup = [i for i, k in counts.items() if k > 1]
                self.assertEqual(dup, [], "client %d: answered twice" % cl.n)
                missing = [i for i in cl.sent_ids if i not in counts]
                self.assertEqual(missing, [], "client %d: never answered" % cl.n)
                unknown = [i for i in counts if i not in cl.sent_set]
                self.assertEqual(unknown, [], "client %d: answers to nothing sent" % cl.n)
                for r in cl.answers:
                    what = (r["status"], r.get("error", {}).get("code"))
                    self.assertIn(what, allowed, r)
                    total[what] += 1
            print("\nSIGTERM under load (guard %d ms, drain_timeout_ms %d): %d requests from %d "
                  "clients, answers %s" % (guard_ms, drain_timeout_ms,
                                           sum(len(cl.sent_ids) for cl in clients), self.CLIENTS,
                                           dict(total)))
            return total

    def test_graceful_drain_answers_everything_once(self):
        total = self.run_load(800, 30000, {("ok", None), ("rejected", "shutting_down")})
        self.assertGreater(total[("rejected", "shutting_down")], 0)
        self.assertGreater(total[("ok", None)], 0)

    def test_forced_drain_answers_everything_once(self):
        total = self.run_load(3000, 300, {("ok", None), ("rejected", "shutting_down"),
                                          ("failed", "cancelled")})
        self.assertGreater(total[("failed", "cancelled")], 0)


class LoadClient(threading.Thread):
    """One pipelining client: a guard sleep first, then echoes and 1-3 ms sleeps over 16 keys
    with at most `window` unanswered. Once told SIGTERM was sent it sends one more line at once
    and stops sending when it sees `shutting_down`; then it reads until the daemon closes."""

    def __init__(self, d, n, guard_key, guard_ms, window, stop_sent):
        super().__init__(daemon=True)
        self.d, self.n, self.window, self.stop_sent = d, n, window, stop_sent
        self.conn = d.connect(timeout=60)
        self.guard = {"key": guard_key, "id": "c%d-guard" % n, "op": "sleep",
                      "payload": {"ms": guard_ms}}
        self.rng = random.Random(n)
        self.sent_ids, self.sent_set, self.answers, self.errors = [], set(), [], []
        self.cond = threading.Condition()
        self.saw_shutting_down = self.eof = False
        self.reader = threading.Thread(target=self.read, daemon=True)

    def answered(self):
        with self.cond:
            return len(self.answers)

    def read(self):
        try:
            while True:
                try:
                    line = self.conn.recv_line(timeout=60)
                except EOFError:
                    with self.cond:
                        self.eof = True
                        self.cond.notify_all()
                    return
                r = json.loads(line)
                with self.cond:
                    self.answers.append(r)
                    if r.get("error", {}).get("code") == "shutting_down":
                        self.saw_shutting_down = True
                    self.cond.notify_all()
        except BaseException as e:
            self.errors.append(e)
            with self.cond:
                self.eof = True
                self.cond.notify_all()

    def line(self, i):
        rid = "c%d-%d" % (self.n, i)
        key = "k%d" % self.rng.randrange(16)
        if self.rng.random() < 0.3:
            return {"key": key, "id": rid, "op": "sleep", "payload": {"ms": self.rng.randint(1, 3)}}
        return {"key": key, "id": rid, "payload": i}

    def send(self, objs):
        with self.cond:
            for o in objs:
                self.sent_ids.append(o["id"])
                self.sent_set.add(o["id"])
        self.conn.send(*objs)

    def run(self):
        self.reader.start()
        try:
            self.send([self.guard])
            i = 0
            probed = False
            while True:
                with self.cond:
                    if self.saw_shutting_down or self.eof:
                        break
                    if not (self.stop_sent.is_set() and not probed):
                        self.cond.wait_for(lambda: len(self.sent_ids) - len(self.answers)
                                           < self.window or self.saw_shutting_down
                                           or self.eof or (self.stop_sent.is_set() and not probed),
                                           timeout=0.05)
                        if self.saw_shutting_down or self.eof:
                            break
                        room = self.window - (len(self.sent_ids) - len(self.answers))
                    else:
                        room = 0
                if self.stop_sent.is_set() and not probed:
                    probed = True
                    room = max(room, 1)
                if room <= 0:
                    continue
                batch = [self.line(i + k) for k in range(min(room, 20))]
                i += len(batch)
                self.send(batch)
        except BaseException as e:
            self.errors.append(e)
        self.reader.join(90)
        self.conn.close()


if __name__ == "__main__":
    px.main()
