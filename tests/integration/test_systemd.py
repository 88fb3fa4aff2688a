"""parexd under systemd, checked without systemd: the unit files pass systemd-analyze verify and
security; the test plays systemd's part of sd_notify (its own NOTIFY_SOCKET and WATCHDOG_USEC)
and sees READY, STATUS, WATCHDOG, RELOADING/READY and STOPPING in order, and the watchdog pings
stop once a worker is dead; socket activation through systemd-socket-activate; SIGHUP reloads,
good and bad."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import pxharness as px
import pxsys

px.SETTINGS.update(builtin_test_ops=True)  # these tests use the built-in sleep and fail

SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNITS = os.path.join(SOURCE, "systemd")
WATCHDOG_USEC = 300000  # pings every 150 ms


def is_ready(f):
    return f.get("READY") == "1"


def is_watchdog(f):
    return f.get("WATCHDOG") == "1"


class UnitFilesTest(unittest.TestCase):
    """The shipped units, with ExecStart pointing at the binary this build made."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="parexd-units-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        with open(os.path.join(UNITS, "parexd.service")) as f:
            self.service_text = f.read()
        m = re.search(r"^ExecStart=(\S+)", self.service_text, re.M)
        self.assertIsNotNone(m, "parexd.service has no ExecStart")
        self.service = os.path.join(self.dir, "parexd.service")
        with open(self.service, "w") as f:
            f.write(self.service_text.replace(m.group(1), px.PAREXD, 1))
        self.socket = os.path.join(self.dir, "parexd.socket")
        shutil.copy(os.path.join(UNITS, "parexd.socket"), self.socket)

    def verify(self, *units):
        p = subprocess.run(["systemd-analyze", "verify", "--man=no"] + list(units),
                           capture_output=True, text=True, timeout=30, cwd=self.dir)
        return p.returncode, (p.stdout + p.stderr).strip()

    def test_verify_is_clean(self):
        # systemd-analyze verify exits 0 on warnings too: any output at all is a failure.
        self.assertEqual(self.verify(self.service, self.socket), (0, ""))
        # The check can fail: a unit with a mistake in it is reported.
        with open(self.service, "a") as f:
            f.write("\n[Service]\nWatchdogSecs=5\n")
        rc, out = self.verify(self.service)
        self.assertIn("WatchdogSecs", out)

    def test_unit_has_what_the_service_needs(self):
        t = self.service_text
        for line in ("Type=notify", "Restart=on-failure", "DynamicUser=yes",
                     "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                     "ProtectHome=yes", "SystemCallFilter=@system-service"):
            self.assertRegex(t, r"(?m)^%s$" % re.escape(line))
        for key in ("ExecReload", "WatchdogSec", "TimeoutStopSec", "LimitNOFILE",
                    "RestrictAddressFamilies"):
            self.assertRegex(t, r"(?m)^%s=\S" % key)
        self.assertRegex(t, r"(?m)^ExecStart=\S+/parexd --config /etc/parexd/parexd\.json$")
        # TimeoutStopSec leaves room for the default drain_timeout_ms (30 s).
        stop = int(re.search(r"(?m)^TimeoutStopSec=(\d+)s?$", t).group(1))
        self.assertGreater(stop, 30)

    def test_security_exposure_is_low(self):
        p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=25",
                            self.service], capture_output=True, text=True, timeout=30,
                           cwd=self.dir)
        out = p.stdout + p.stderr
        self.assertEqual(p.returncode, 0, out)
        m = re.search(r"Overall exposure level for parexd\.service: (\d+\.\d)", out)
        self.assertIsNotNone(m, out)
        self.assertLessEqual(float(m.group(1)), 2.5, out)
        # The threshold is enforced: the same unit fails a threshold below its score.
        p = subprocess.run(["systemd-analyze", "security", "--offline=true",
                            "--threshold=%d" % max(0, int(float(m.group(1)) * 10) - 1),
                            self.service], capture_output=True, text=True, timeout=30,
                           cwd=self.dir)
        self.assertNotEqual(p.returncode, 0)


class NotifyTest(px.Accounting, unittest.TestCase):
    def setUp(self):
        self.ns = pxsys.NotifySocket(read=False)
        self.addCleanup(self.ns.close)

    def start(self, env=None, read=True, **kw):
        e = {"NOTIFY_SOCKET": self.ns.path}
        e.update(env or {})
        d = pxsys.SysDaemon(env=e, **kw)
        self.addCleanup(d.kill)
        if read:
            self.ns.start()
        return d

    def test_ready_status_watchdog_reload_stopping_in_order(self):
        # With systemd's queue full, the daemon's first sd_notify (READY=1) blocks its loop
        # thread in sendmsg: frozen at the moment it declares itself ready, it must already
        # listen and have every worker up.
        self.ns.fill()
        port, mport = pxsys.free_port(), pxsys.free_port()
        d = self.start(args=["--workers", "2"], listen="127.0.0.1:%d" % port,
                       metrics_listen="127.0.0.1:%d" % mport, wait_ready=False, read=False,
                       env={"WATCHDOG_USEC": str(WATCHDOG_USEC)})
        px.wait_for(lambda: d.wchan() == "unix_wait_for_peer" or d.proc.poll() is not None,
                    what="parexd blocked in sendmsg on its first notification "
                         "(/proc/PID/wchan unix_wait_for_peer)")
        self.assertIsNone(d.proc.poll(), d.stderr_text())
        self.assertEqual(d.log_count(px.LISTEN_RE.pattern), 0)
        c = px.Conn("127.0.0.1", port)  # refused unless it listens before READY=1
        self.addCleanup(c.close)
        c.send({"key": "ready", "payload": 1})
        st, _, body = pxsys.http_request("127.0.0.1", mport, "/stats")
        self.assertEqual(st, 200)
        self.assertEqual([w["state"] for w in json.loads(body)["workers"]], ["idle", "idle"])
        self.ns.start()
        i_ready = self.ns.wait(is_ready, what="READY=1")
        r = c.recv()
        self.assertEqual((r["status"], r["result"]), ("ok", 1), r)
        c.close()
        msgs = self.ns.snapshot()
        self.assertEqual(i_ready, 0, "READY=1 must be the first message: %r" % msgs[:3])
        t_ready, ready, _ = msgs[0]
        self.assertEqual(ready.get("MAINPID"), str(d.pid))
        self.assertTrue(ready.get("STATUS", "").startswith("serving"), ready)
        d._wait_ready()
        self.assertEqual(d.port, port)

        # STATUS follows what the daemon did (one request answered ok).
        i_status = self.ns.wait(lambda f: "READY" not in f and " 1 ok" in f.get("STATUS", ""),
                                what="STATUS= with 1 ok")
        # WATCHDOG=1 at about half of WATCHDOG_USEC, never a gap as long as WATCHDOG_USEC.
        i = i_ready
        for _ in range(5):
            i = self.ns.wait(is_watchdog, start=i + 1, what="WATCHDOG=1")
        msgs = self.ns.snapshot()
        pings = [t for t, f, _ in msgs[:i + 1] if is_watchdog(f)]
        gaps = [b - a for a, b in zip([t_ready] + pings, pings)]
        self.assertLess(max(gaps), WATCHDOG_USEC / 1e6, gaps)
        self.assertGreater(sum(gaps) / len(gaps), WATCHDOG_USEC / 1e6 / 4, gaps)

        # SIGHUP: RELOADING=1, then READY=1 again; the pings go on.
        n = len(msgs)
        d.signal(signal.SIGHUP)
        i_reloading = self.ns.wait(lambda f: f.get("RELOADING") == "1", start=n,
                                   what="RELOADING=1")
        self.assertFalse(any(is_ready(f) for _, f, _ in self.ns.snapshot()[n:i_reloading]))
        i_ready2 = self.ns.wait(is_ready, start=i_reloading + 1, what="READY=1 after reload")
        self.ns.wait(is_watchdog, start=i_ready2 + 1, what="WATCHDOG=1 after reload")
        d.wait_log(r"reload: configuration applied")

        # SIGTERM: STOPPING=1 as the drain starts, and nothing claims readiness after it.
        n = len(self.ns.snapshot())
        d.signal(signal.SIGTERM)
        i_stopping = self.ns.wait(lambda f: f.get("STOPPING") == "1", start=n, what="STOPPING=1")
        self.assertEqual(d.wait_exit(), 0)
        msgs = self.ns.snapshot()
        self.assertIn("draining", msgs[i_stopping][1].get("STATUS", ""))
        self.assertFalse(any(is_ready(f) for _, f, _ in msgs[i_stopping:]))
        first_watchdog = next(i for i, (_, f, _) in enumerate(msgs) if is_watchdog(f))
        self.assertLess(i_ready, i_status)
        self.assertLess(i_ready, first_watchdog)
        self.assertLess(first_watchdog, i_reloading)
        self.assertLess(i_ready2, i_stopping)

    def test_watchdog_pings_stop_when_a_worker_is_dead(self):
        d = self.start(config={"workers": 2, "supervise_interval_ms": 20, "drain_timeout_ms": 300},
                       env={"WATCHDOG_USEC": str(WATCHDOG_USEC), "PAREXD_FAULT_INJECTION": "1"})
        keys = px.keys_by_worker(2, "wd", need=1)
        victim, survivor = keys[0][0], keys[1][0]
        i = self.ns.wait(is_ready, what="READY=1")
        for _ in range(2):
            i = self.ns.wait(is_watchdog, start=i + 1, what="WATCHDOG=1 while healthy")
        self.assertEqual(d.health(), (200, "ok\n"))

        with d.connect() as c, d.connect() as c2:
            c.send({"key": victim, "id": "boom", "op": "fault_exit_thread"})
            s = d.wait_hstats(lambda s: s["workers"][0]["state"] == "dead", "worker 0 dead")
            self.assertEqual(s["workers"][1]["state"], "idle")
            st, reason = d.health()
            self.assertEqual(st, 503)
            self.assertIn("worker 0 dead", reason)
            self.assertEqual(pxsys.sample(d.metrics(), "parexd_worker_state", worker="0",
                                          state="dead"), 1)
            d.wait_log(r"supervisor: worker 0 dead")
            i_dead = self.ns.wait(lambda f: "WORKER DEAD" in f.get("STATUS", ""),
                                  what="STATUS= naming the dead worker")
            t_dead = self.ns.snapshot()[i_dead][0]
            # Keep the loop busy and its notify ticks coming (each new ok count is a STATUS=),
            # for at least four ping intervals: none of those ticks may feed the watchdog.
            n_ok, rounds, last = s["ok"], 0, i_dead
            while rounds < 3 or time.monotonic() - t_dead < 4 * WATCHDOG_USEC / 2e6:
                r = c2.request({"key": survivor, "payload": rounds})
                self.assertEqual(r["status"], "ok", r)
                n_ok += 1
                last = self.ns.wait(lambda f: " %d ok" % n_ok in f.get("STATUS", ""),
                                    start=last + 1, what="STATUS= with %d ok" % n_ok)
                rounds += 1
            msgs = self.ns.snapshot()
            late = [m[2] for m in msgs[i_dead:] if is_watchdog(m[1])]
            self.assertEqual(late, [], "WATCHDOG=1 sent while a worker is dead")
            # Until the worker died, the pings had been coming.
            pings = [t for t, f, _ in msgs[:i_dead] if is_watchdog(f)]
            self.assertGreaterEqual(len(pings), 2)
            # The request the dead worker held was answered when its thread ended.
            r = c.recv(timeout=5)
            self.assertEqual((r["id"], r["status"], r["error"]["code"]),
                             ("boom", "failed", "worker_died"), r)
            d.signal(signal.SIGTERM)
        self.assertEqual(d.wait_exit(), 0)


class SocketActivationTest(unittest.TestCase):
    def test_request_answered_on_the_inherited_socket(self):
        for attempt in range(3):
            port = pxsys.free_port()
            d = pxsys.SysDaemon(["--workers", "2"], wait_ready=False,
                                prefix=["systemd-socket-activate", "-l", "127.0.0.1:%d" % port])
            self.addCleanup(d.kill)
            try:
                d.wait_log(r"Listening on 127\.0\.0\.1:%d" % port)
                break
            except AssertionError:
                if attempt == 2:  # the free port was taken each time
                    raise
                d.kill()
        # systemd-socket-activate starts parexd on the first connection, on the socket it holds.
        with px.Conn("127.0.0.1", port) as c:
            r = c.request({"key": "activated", "id": 1, "payload": "via fd 3"})
            self.assertEqual((r["status"], r["result"]), ("ok", "via fd 3"), r)
            d.wait_log(r"adopted 1 socket\(s\) from systemd")
            d._wait_ready()
            # It serves on the inherited socket, not on the --listen 127.0.0.1:0 it was given.
            self.assertEqual(d.port, port)
            with px.Conn("127.0.0.1", port) as c2:
                self.assertEqual(c2.request({"key": "second"})["status"], "ok")
        self.assertEqual(d.log_count(r"listening for requests on 127\.0\.0\.1:%d, " % port), 1)
        self.assertEqual(d.stop(), 0)


class ReloadTest(px.Accounting, unittest.TestCase):
    BASE = {"workers": 2, "queue_capacity": 10, "log_level": "notice",
            "backpressure_threshold": 1.0, "supervise_interval_ms": 20}

    def setUp(self):
        self.ns = pxsys.NotifySocket()
        self.addCleanup(self.ns.close)

    def start(self, config):
        d = pxsys.SysDaemon(config=config, env={"NOTIFY_SOCKET": self.ns.path})
        self.addCleanup(d.kill)
        self.ns.wait(is_ready, what="READY=1")
        return d

    def reload(self, d, config, applied=True):
        """Writes the config file, sends SIGHUP and waits for RELOADING=1 then READY=1 and the
        log line that ends the reload."""
        n = len(self.ns.snapshot())
        pattern = (r"reload: configuration applied" if applied
                   else r"reload: .*keeping the running configuration")
        before = d.log_count(pattern)
        d.write_config(config)
        d.signal(signal.SIGHUP)
        i = self.ns.wait(lambda f: f.get("RELOADING") == "1", start=n, what="RELOADING=1")
        self.ns.wait(is_ready, start=i + 1, what="READY=1 after the reload")
        return d.wait_nth_log(pattern, before + 1)

    def fill(self, d, c, key, worker, depth, ms=1500):
        """A long sleep running on worker, and `depth` more queued behind it."""
        c.send({"key": key, "id": "blocker", "op": "sleep", "payload": {"ms": ms}})
        d.wait_hstats(lambda s: s["workers"][worker]["current_key"] == key, "blocker running")
        c.send(*[{"key": key, "id": "q%d" % i, "op": "sleep", "payload": {"ms": 1}}
                 for i in range(depth)])
        return d.wait_hstats(lambda s: s["workers"][worker]["queue_depth"] == depth,
                             "depth %d" % depth)

    def reset_connection(self, d, others=0):
        """A client that goes away with an RST: parexd logs it at debug level only. others: how
        many other connections the test holds open."""
        base = others
        d.wait_hstats(lambda s: s["connections"] == base, "%d connections" % base)
        c = d.connect()
        d.wait_hstats(lambda s: s["connections"] == base + 1, "connection counted")
        c.reset()
        d.wait_hstats(lambda s: s["connections"] == base, "connection gone")

    def test_good_reload_applies_live_settings(self):
        d = self.start(self.BASE)
        hot = px.keys_by_worker(2, "rl", need=1)[0][0]
        self.reset_connection(d)
        with d.connect() as c:
            s = self.fill(d, c, hot, 0, 3)
            self.assertFalse(s["backpressure"], s)  # 3 of 10 under threshold 1.0
            self.assertEqual(s["workers"][0]["state"], "busy")
            new = dict(self.BASE, log_level="debug", backpressure_threshold=0.3,
                       stall_after_ms=200, drain_timeout_ms=4321)
            m = self.reload(d, new)
            self.assertRegex(m.string, r"log_level debug, backpressure_threshold 0\.30, "
                                         r"stall_after_ms 200")
            # At notice level the earlier reset left no debug line.
            self.assertEqual(d.log_count(r"connection: read failed"), 0)
            # The same queue depth is backpressure now, and the long sleep is a stall.
            s = d.wait_hstats(lambda s: s["backpressure"], "backpressure at 3 of 10")
            self.assertEqual(s["workers"][0]["queue_depth"], 3)
            s = d.wait_hstats(lambda s: s["workers"][0]["state"] == "stalled", "stalled")
            self.assertEqual(d.health()[0], 503)
            # debug is on: the next reset is logged.
            self.reset_connection(d, others=1)
            d.wait_log(r"debug: connection: read failed")
            for r in c.recv_n(4):
                self.assertEqual(r["status"], "ok", r)
        self.assertEqual(d.log_count(r"cannot change while running"), 0)
        self.assertAccounting(d.wait_hstats(lambda s: s["in_flight"] == 0, "idle"))
        # drain_timeout_ms applies live too: the drain announces the new bound.
        d.signal(signal.SIGTERM)
        d.wait_log(r"drain: .*at most 4321 ms")
        self.assertEqual(d.wait_exit(), 0)

    def test_bad_reload_keeps_the_running_configuration(self):
        cfg = dict(self.BASE, backpressure_threshold=0.3)
        d = self.start(cfg)
        hot = px.keys_by_worker(2, "rb", need=1)[1][0]
        # Not JSON at all.
        m = self.reload(d, "{ this is not json", applied=False)
        self.assertIn(d.config_path, m.string)
        # JSON, but a value out of range: the key is named.
        m = self.reload(d, dict(cfg, backpressure_threshold=7, log_level="debug"), applied=False)
        self.assertIn("backpressure_threshold", m.string)
        self.assertEqual(d.log_count(r"reload: configuration applied"), 0)
        self.assertEqual(d.log_count(r"reload: .*keeping the running configuration"), 2)
        # Still serving, and with the old settings: threshold 0.3 (not 7, not the default 0.8),
        # log level notice (the debug of the rejected file is not in effect).
        with d.connect() as c:
            r = c.request({"key": "still", "payload": "here"})
            self.assertEqual((r["status"], r["result"]), ("ok", "here"), r)
            s = self.fill(d, c, hot, 1, 3, ms=400)
            self.assertTrue(s["backpressure"], s)
            self.assertTrue(s["workers"][1]["backpressure"], s)
            for r in c.recv_n(4):
                self.assertEqual(r["status"], "ok", r)
        self.reset_connection(d)
        # A good file after the bad ones is applied as usual (and the debug level shows).
        self.reload(d, dict(cfg, log_level="debug"))
        self.reset_connection(d)
        d.wait_log(r"debug: connection: read failed")
        self.assertEqual(d.log_count(r"debug: connection: read failed"), 1)
        self.assertAccounting(d.hstats())
        self.assertEqual(d.stop(), 0)

    def test_reload_keeps_every_counter(self):
        # A reload is not a restart (parexd_start_time_seconds does not move): no counter may
        # go back or vanish, or rate() over a reload shows nonsense.
        d = self.start(self.BASE)
        with d.connect() as c:
            c.send(*[{"key": "ctr%d" % i, "payload": i} for i in range(5)])
            c.send(*[{"key": "ctr%d" % i, "op": "fail"} for i in range(2)])
            c.send({"key": "ctr0", "op": "sleep", "payload": {"ms": 1}})
            self.assertEqual(sorted(r["status"] for r in c.recv_n(8)), ["failed"] * 2 + ["ok"] * 6)
        d.wait_hstats(lambda s: s["in_flight"] == 0 and s["connections"] == 0, "idle")
        before = d.metrics()
        self.reload(d, dict(self.BASE, log_level="info"))
        after = d.metrics()
        counters = [k for k in before if k[0].endswith(("_total", "_count", "_sum", "_bucket"))]
        self.assertGreater(len(counters), 50)
        lost = ["%s%s" % (n, sorted(lab)) for n, lab in counters if (n, lab) not in after]
        back = ["%s%s: %g -> %g" % (n, sorted(lab), before[(n, lab)], after[(n, lab)])
                for n, lab in counters if (n, lab) in after and after[(n, lab)] < before[(n, lab)]]
        bad = lost + back
        if bad:
            self.fail("%d counters went back or vanished on SIGHUP, e.g.:\n  %s"
                      % (len(bad), "\n  ".join(bad[:8])))
        self.assertEqual(pxsys.sample(after, "parexd_start_time_seconds"),
                         pxsys.sample(before, "parexd_start_time_seconds"))
        self.assertEqual(d.stop(), 0)

    def test_settings_that_cannot_change_are_kept_and_named_once(self):
        d = self.start(self.BASE)
        self.assertEqual(len(d.hstats()["workers"]), 2)
        m = self.reload(d, dict(self.BASE, workers=4, queue_capacity=20,
                                backpressure_threshold=0.5))
        self.assertIn("backpressure_threshold 0.50", m.string)
        warnings = [ln for ln in d.stderr_text().splitlines() if "cannot change" in ln]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("warning", warnings[0])
        self.assertIn("workers", warnings[0])
        self.assertIn("queue_capacity", warnings[0])
        self.assertNotIn("listen", warnings[0])
        s = d.hstats()
        self.assertEqual(len(s["workers"]), 2)
        self.assertEqual([w["queue_capacity"] for w in s["workers"]], [10, 10])
        m = d.metrics()
        self.assertEqual(len(pxsys.series(m, "parexd_queue_capacity")), 2)
        # Still serving on both workers.
        keys = px.keys_by_worker(2, "rk", need=1)
        with d.connect() as c:
            for w in (0, 1):
                r = c.request({"key": keys[w][0]})
                self.assertEqual((r["status"], r["worker"]), ("ok", w), r)
        # A second reload of the same file names them again, once.
        self.reload(d, dict(self.BASE, workers=4, queue_capacity=20,
                            backpressure_threshold=0.5))
        self.assertEqual(d.log_count(r"cannot change while running"), 2)
        self.assertEqual(d.stop(), 0)

    def test_reload_follows_the_key_table(self):
        # issue 18, SIGHUP table: auth_token applies live; quarantine (two fields),
        # max_queued_per_key, scheduling and listen_unix_mode are kept, each named once.
        d = self.start(self.BASE)
        tok = "reloaded-token-0123456789"
        self.reload(d, dict(self.BASE, auth_token=tok, max_queued_per_key=5,
                            quarantine={"after_failures": 2, "for_ms": 100},
                            scheduling="keyed", listen_unix_mode="0600"))
        warnings = [ln for ln in d.stderr_text().splitlines() if "cannot change" in ln]
        self.assertEqual(len(warnings), 1, warnings)
        named = warnings[0].split("reload: ", 1)[1].split(" cannot change")[0].split(", ")
        self.assertEqual(sorted(named), ["listen_unix_mode", "max_queued_per_key", "quarantine",
                                         "scheduling"], warnings)
        with d.connect() as c:
            self.assertEqual(c.request({"key": "t"})["error"]["code"], "unauthorized")
            self.assertEqual(c.request({"key": "t", "token": tok})["status"], "ok")
        d.signal(signal.SIGTERM)
        self.assertEqual(d.wait_exit(), 0)


if __name__ == "__main__":
    px.main()
