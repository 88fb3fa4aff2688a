"""Observability: /metrics (Prometheus 0.0.4, promtool-clean under load), /stats and /healthz tell
the same truth as the answers the test received; backpressure, stalled and replaced workers show
up and clear; scrapes do not hold up requests; parexctl stats/health/metrics/top read it all."""

import json
import re
import subprocess
import sys
import threading
import time
import unittest

import pxharness as px
import pxsys

px.SETTINGS.update(builtin_test_ops=True)  # these tests use the built-in sleep and fail

# Every metric the issue and the README promise.
REQUIRED = [
    "parexd_requests_received_total", "parexd_requests_rejected_total",
    "parexd_requests_completed_total", "parexd_requests_invalid_total",
    "parexd_requests_in_flight", "parexd_queue_depth", "parexd_queue_capacity",
    "parexd_worker_processed_total", "parexd_worker_failed_total",
    "parexd_worker_replacements_total", "parexd_worker_state", "parexd_backpressure",
    "parexd_connections", "parexd_request_queue_seconds_bucket",
    "parexd_request_queue_seconds_sum", "parexd_request_queue_seconds_count",
    "parexd_request_run_seconds_bucket", "parexd_request_run_seconds_sum",
    "parexd_request_run_seconds_count", "parexd_responses_dropped_total",
    "parexd_late_results_discarded_total", "parexd_build_info", "parexd_start_time_seconds",
]
STATES = ("idle", "busy", "stalled", "dead")


def W(worker):
    return str(worker)


class MetricsTest(px.Accounting, unittest.TestCase):
    def start(self, config=None, args=()):
        d = pxsys.SysDaemon(list(args), config=config)
        self.addCleanup(d.kill)  # only acts if a test failed before its own stop
        return d

    def stop(self, d):
        d.stop()

    # --- helpers -------------------------------------------------------------------------------

    def assertMetricsMatchStats(self, m, s):
        """The two endpoints agree on every counter (taken while the daemon is idle)."""
        self.assertEqual(pxsys.sample(m, "parexd_requests_received_total"), s["received"])
        for reason, v in s["rejected_by_reason"].items():
            self.assertEqual(pxsys.sample(m, "parexd_requests_rejected_total", reason=reason), v)
        for code, v in s["invalid_by_code"].items():
            self.assertEqual(pxsys.sample(m, "parexd_requests_invalid_total", code=code), v)
        self.assertEqual(pxsys.sample(m, "parexd_requests_completed_total", status="ok"), s["ok"])
        self.assertEqual(pxsys.sample(m, "parexd_requests_completed_total", status="failed"),
                         s["failed"])
        self.assertEqual(pxsys.sample(m, "parexd_requests_in_flight"), s["in_flight"])
        self.assertEqual(pxsys.sample(m, "parexd_late_results_discarded_total"),
                         s["late_results_discarded"])
        self.assertEqual(pxsys.sample(m, "parexd_responses_dropped_total", reason="client_gone"),
                         s["responses_dropped"])
        self.assertEqual(pxsys.sample(m, "parexd_backpressure"), 1 if s["backpressure"] else 0)
        for w in s["workers"]:
            i = W(w["id"])
            self.assertEqual(pxsys.sample(m, "parexd_queue_depth", worker=i), w["queue_depth"])
            self.assertEqual(pxsys.sample(m, "parexd_queue_capacity", worker=i),
                             w["queue_capacity"])
            self.assertEqual(pxsys.sample(m, "parexd_worker_processed_total", worker=i),
                             w["processed"])
            self.assertEqual(pxsys.sample(m, "parexd_worker_failed_total", worker=i), w["failed"])
            self.assertEqual(pxsys.sample(m, "parexd_worker_replacements_total", worker=i),
                             w["replaced"])
            for st in STATES:
                self.assertEqual(pxsys.sample(m, "parexd_worker_state", worker=i, state=st),
                                 1 if st == w["state"] else 0, (i, st, w))

    def assertHistogramsConsistent(self, m, completed):
        for h in ("parexd_request_queue_seconds", "parexd_request_run_seconds"):
            count = pxsys.sample(m, h + "_count")
            self.assertEqual(count, completed, h)
            self.assertEqual(pxsys.sample(m, h + "_bucket", le="+Inf"), count, h)
            buckets = sorted((float(dict(lab)["le"]), v)
                             for lab, v in pxsys.series(m, h + "_bucket").items())
            self.assertGreaterEqual(len(buckets), 10, h)
            for (_, a), (_, b) in zip(buckets, buckets[1:]):
                self.assertLessEqual(a, b, "%s buckets must be cumulative: %r" % (h, buckets))

    def block_worker(self, d, conn, key, worker, ms, rid="blocker"):
        """Starts a sleep on key and waits until its worker runs it with an empty queue."""
        conn.send({"key": key, "id": rid, "op": "sleep", "payload": {"ms": ms}})
        d.wait_hstats(lambda s: s["workers"][worker]["current_key"] == key
                      and s["workers"][worker]["queue_depth"] == 0,
                      "worker %d running %s" % (worker, rid))

    # --- tests ---------------------------------------------------------------------------------

    def test_promtool_clean_on_a_scrape_under_load(self):
        d = self.start(args=["--workers", "4", "--queue-capacity", "64"])
        stop = threading.Event()
        sent = {"ok": 0, "failed": 0, "rejected": 0, "invalid": 0}
        lock = threading.Lock()
        errors = []

        def load(n):
            try:
                mine = dict.fromkeys(sent, 0)
                with d.connect() as c:
                    i = 0
                    while not stop.is_set():
                        batch = []
                        for j in range(20):
                            k = "load%d-%d" % (n, j % 7)
                            kind = (i + j) % 10
                            if kind < 6:
                                batch.append({"key": k, "payload": [n, i, j]})
                            elif kind < 8:
                                batch.append({"key": k, "op": "sleep", "payload": {"ms": 2}})
                            else:
                                batch.append({"key": k, "op": "fail",
                                              "payload": {"message": "no"}})
                        c.send(*batch)
                        c.send_raw("{broken\n")
                        for r in c.recv_n(len(batch) + 1):
                            mine[r["status"]] += 1
                        i += 1
                with lock:
                    for k, v in mine.items():
                        sent[k] += v
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=load, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        try:
            checked = busy = 0
            deadline = time.monotonic() + 8
            while (checked < 4 or busy < 2) and time.monotonic() < deadline and not errors:
                st, hdr, body = d.http("/metrics")
                self.assertEqual(st, 200)
                self.assertTrue(hdr["content-type"].startswith("text/plain; version=0.0.4"),
                                hdr["content-type"])
                text = body.decode()
                self.assertTrue(text.endswith("\n"))
                rc, out = pxsys.promtool_check(text)
                self.assertEqual((rc, out), (0, ""), "promtool on a scrape under load")
                m = pxsys.parse_metrics(text)
                for name in REQUIRED:
                    self.assertTrue(any(n == name for n, _ in m), "missing " + name)
                checked += 1
                busy += pxsys.sample(m, "parexd_requests_in_flight") > 0
                # The books balance in every /stats snapshot, load or not.
                self.assertAccounting(d.hstats())
            self.assertGreaterEqual(checked, 4)
            self.assertGreaterEqual(busy, 2, "no scrape caught requests in flight: not under load")
        finally:
            stop.set()
            for t in threads:
                t.join(px.TIMEOUT)
        self.assertEqual(errors, [])
        s = d.wait_hstats(lambda s: s["in_flight"] == 0, "idle")
        self.assertAccounting(s)
        # What the clients were answered is exactly what the daemon counted.
        self.assertEqual((s["ok"], s["failed"], s["rejected"], s["invalid"]),
                         (sent["ok"], sent["failed"], sent["rejected"], sent["invalid"]), sent)
        self.assertEqual(s["invalid_by_code"]["bad_json"], sent["invalid"])
        self.assertGreater(sent["ok"], 100)
        m = d.metrics()
        self.assertMetricsMatchStats(m, d.wait_hstats(lambda s: s["connections"] == 0, "closed"))
        self.assertHistogramsConsistent(m, sent["ok"] + sent["failed"])
        self.stop(d)

    def test_counters_match_exactly_what_was_sent(self):
        t_start = time.time()
        d = self.start(config={"workers": 2, "queue_capacity": 2, "max_line_bytes": 128,
                               "supervise_interval_ms": 20})
        keys = px.keys_by_worker(2, "cnt", need=1)
        hot, hw = keys[0][0], 0
        cold, cw = keys[1][0], 1
        with d.connect() as c, d.connect() as c2:
            # 7 ok and 3 failed on the cold worker (one at a time: its queue holds only 2).
            got = [(r["id"], r["status"]) for r in
                   [c.request({"key": cold, "id": "e%d" % i, "payload": i}) for i in range(7)]
                   + [c.request({"key": cold, "id": "f%d" % i, "op": "fail",
                                 "payload": {"message": "x"}}) for i in range(3)]]
            self.assertEqual(got, [("e%d" % i, "ok") for i in range(7)]
                             + [("f%d" % i, "failed") for i in range(3)])

            # The hot worker: one running, two queued (queue_capacity 2), three rejected.
            self.block_worker(d, c2, hot, hw, 600)
            c2.send(*[{"key": hot, "id": "q%d" % i, "op": "sleep", "payload": {"ms": 1}}
                      for i in range(2)])
            d.wait_hstats(lambda s: s["workers"][hw]["queue_depth"] == 2, "hot queue full")
            c.send(*[{"key": hot, "id": "r%d" % i} for i in range(3)])
            for r in c.recv_n(3):
                self.assertEqual((r["status"], r["error"]["code"]), ("rejected", "queue_full"), r)

            # Invalid lines, a different number for each code.
            invalid = {
                "bad_json": ["not json", '{"key":"a"'],
                "not_an_object": ["[1]", "[]", "[{}]"],
                "missing_key": ['{"id":1}', '{"op":"echo"}', '{}', '{"payload":1}'],
                "bad_field": ['{"key":""}', '{"key":"a","id":1.5}', '{"key":5}',
                              '{"key":"a","op":"sleep","payload":{"ms":-1}}', '{"control":"x"}'],
                "line_too_long": ['{"key":"a","payload":"%s"}' % ("y" * 200)],
                "unknown_op": ['{"key":"a","op":"nope%d"}' % i for i in range(6)],
            }
            lines = [(code, ln) for code, lns in invalid.items() for ln in lns]
            c.send_raw("".join(ln + "\n" for _, ln in lines))
            for (code, ln), r in zip(lines, c.recv_n(len(lines))):
                self.assertEqual((r["status"], r["error"]["code"]), ("invalid", code), ln)

            for r in c2.recv_n(3):
                self.assertEqual(r["status"], "ok", r)
            s = d.wait_hstats(lambda s: s["in_flight"] == 0, "idle")
            m = d.metrics()
            self.assertEqual(s["connections"], 2)
            self.assertEqual(pxsys.sample(m, "parexd_connections"), 2)

        ok, failed, rejected = 7 + 3, 3, 3
        self.assertAccounting(s)
        self.assertEqual(s["received"], ok + failed + rejected)
        self.assertEqual(s["accepted"], ok + failed)
        self.assertEqual((s["ok"], s["failed"], s["in_flight"]), (ok, failed, 0))
        self.assertEqual(s["rejected"], rejected)
        # Every other reason and code the daemon knows stays at 0.
        self.assertLessEqual({"queue_full", "shutting_down"}, set(s["rejected_by_reason"]))
        self.assertEqual(s["rejected_by_reason"],
                         dict(dict.fromkeys(s["rejected_by_reason"], 0), queue_full=3))
        self.assertLessEqual(set(invalid), set(s["invalid_by_code"]))
        self.assertEqual(s["invalid_by_code"],
                         dict(dict.fromkeys(s["invalid_by_code"], 0),
                              **{k: len(v) for k, v in invalid.items()}))
        self.assertEqual(s["invalid"], len(lines))
        self.assertEqual([(w["processed"], w["failed"]) for w in s["workers"]],
                         [(3, 0), (10, 3)] if hw == 0 else [(10, 3), (3, 0)])
        self.assertMetricsMatchStats(m, s)
        self.assertEqual(pxsys.sample(m, "parexd_worker_processed_total", worker=W(hw)), 3)
        self.assertEqual(pxsys.sample(m, "parexd_worker_failed_total", worker=W(cw)), 3)
        self.assertEqual(pxsys.sample(m, "parexd_queue_capacity", worker=W(cw)), 2)
        self.assertHistogramsConsistent(m, ok + failed)
        # The 600 ms sleep is the one run above 0.25 s; the queued sleeps waited about that long.
        self.assertEqual(pxsys.sample(m, "parexd_request_run_seconds_bucket", le="0.25"), 12)
        self.assertEqual(pxsys.sample(m, "parexd_request_run_seconds_bucket", le="1"), 13)
        self.assertGreaterEqual(pxsys.sample(m, "parexd_request_run_seconds_sum"), 0.6)
        self.assertLess(pxsys.sample(m, "parexd_request_run_seconds_sum"), 5)
        self.assertGreaterEqual(pxsys.sample(m, "parexd_request_queue_seconds_sum"), 0.6)
        self.assertGreater(s["latency"]["run_ms"]["p99"], 0)
        # Metadata.
        version = subprocess.run([px.PAREXD, "--version"], capture_output=True,
                                 text=True).stdout.split()[1]
        self.assertEqual(pxsys.sample(m, "parexd_build_info", version=version), 1)
        start = pxsys.sample(m, "parexd_start_time_seconds")
        self.assertTrue(int(t_start) - 1 <= start <= time.time() + 1, (t_start, start))
        d.wait_hstats(lambda s: s["connections"] == 0, "connections closed")
        self.assertEqual(pxsys.sample(d.metrics(), "parexd_connections"), 0)
        self.stop(d)

    def test_http_paths_methods_and_head(self):
        d = self.start(args=["--workers", "1"])
        st, hdr, body = d.http("/nope")
        self.assertEqual(st, 404)
        self.assertIn(b"/metrics", body)
        st, _, _ = d.http("/metrics/extra")
        self.assertEqual(st, 404)
        for method in ("POST", "PUT", "DELETE"):
            for path in ("/metrics", "/stats", "/healthz"):
                st, hdr, body = d.http(path, method)
                self.assertEqual(st, 405, (method, path))
                self.assertIn("GET", hdr.get("allow", ""))
        st, hdr, body = d.http("/metrics", "HEAD")
        self.assertEqual((st, body), (200, b""))
        self.assertTrue(hdr["content-type"].startswith("text/plain; version=0.0.4"))
        self.assertGreater(int(hdr["content-length"]), 1000)
        st, hdr, body = d.http("/stats")
        self.assertEqual((st, hdr["content-type"]), (200, "application/json"))
        self.assertIsInstance(json.loads(body), dict)
        self.assertEqual(d.health(), (200, "ok\n"))
        st, hdr, body = d.http("/")
        self.assertEqual(st, 200)
        for link in (b'href="/metrics"', b'href="/stats"', b'href="/healthz"'):
            self.assertIn(link, body)
        self.stop(d)

    def test_backpressure_rises_on_a_hot_key_and_falls_after(self):
        d = self.start(config={"workers": 2, "queue_capacity": 10, "backpressure_threshold": 0.5,
                               "supervise_interval_ms": 20})
        keys = px.keys_by_worker(2, "bp", need=1)
        hot, hw = keys[1][0], 1
        with d.connect() as c:
            self.block_worker(d, c, hot, hw, 700)
            c.send(*[{"key": hot, "id": "q%d" % i, "op": "sleep", "payload": {"ms": 1}}
                     for i in range(4)])
            # 4 of 10 is below 0.5 x capacity: no backpressure yet.
            s = d.wait_hstats(lambda s: s["workers"][hw]["queue_depth"] == 4, "depth 4")
            self.assertFalse(s["backpressure"], s)
            self.assertFalse(s["workers"][hw]["backpressure"], s)
            self.assertEqual(pxsys.sample(d.metrics(), "parexd_backpressure"), 0)
            # The fifth reaches the threshold: the worker, and so the daemon, is under it.
            c.send({"key": hot, "id": "q4", "op": "sleep", "payload": {"ms": 1}})
            s = d.wait_hstats(lambda s: s["workers"][hw]["queue_depth"] == 5, "depth 5")
            self.assertTrue(s["backpressure"], s)
            self.assertTrue(s["workers"][hw]["backpressure"], s)
            self.assertFalse(s["workers"][1 - hw]["backpressure"], s)
            m = d.metrics()
            self.assertEqual(pxsys.sample(m, "parexd_backpressure"), 1)
            self.assertEqual(pxsys.sample(m, "parexd_queue_depth", worker=W(hw)), 5)
            d.wait_log(r"warning.*backpressure: worker %d queue at" % hw)
            # Another worker's key is served at once meanwhile.
            with d.connect() as c2:
                other = keys[0][0]
                r = c2.request({"key": other, "payload": "fine"}, timeout=0.5)
                self.assertEqual(r["status"], "ok", r)
            for r in c.recv_n(6):
                self.assertEqual(r["status"], "ok", r)
        s = d.wait_hstats(lambda s: not s["backpressure"], "backpressure cleared")
        self.assertFalse(s["workers"][hw]["backpressure"])
        self.assertEqual(pxsys.sample(d.metrics(), "parexd_backpressure"), 0)
        d.wait_log(r"backpressure: worker %d back to" % hw)
        d.wait_log(r"backpressure: daemon clear")
        # One line when it began and one when it ended, not one per request.
        self.assertEqual(d.log_count(r"backpressure: worker %d queue at" % hw), 1)
        self.assertEqual(d.log_count(r"backpressure: worker %d back to" % hw), 1)
        self.assertEqual(d.log_count(r"backpressure: daemon under backpressure"), 1)
        self.assertEqual(d.log_count(r"backpressure: daemon clear"), 1)
        self.assertAccounting(d.hstats())
        self.stop(d)

    def test_stalled_worker_reported_then_recovers(self):
        d = self.start(config={"workers": 2, "stall_after_ms": 200, "supervise_interval_ms": 20,
                               "on_stall": "report"})
        keys = px.keys_by_worker(2, "st", need=1)
        hot, hw = keys[0][0], 0
        self.assertEqual(d.health(), (200, "ok\n"))
        with d.connect() as c:
            t0 = time.monotonic()
            c.send({"key": hot, "id": "slow", "op": "sleep", "payload": {"ms": 900}})
            s = d.wait_hstats(lambda s: s["workers"][hw]["state"] == "stalled", "stalled")
            self.assertGreaterEqual(time.monotonic() - t0, 0.2)
            self.assertEqual(s["workers"][hw]["current_key"], hot)
            self.assertEqual(s["workers"][1 - hw]["state"], "idle")
            st, reason = d.health()
            self.assertEqual(st, 503)
            self.assertIn("worker %d stalled" % hw, reason)
            self.assertIn(hot, reason)
            self.assertEqual(reason.count("\n"), 1)
            m = d.metrics()
            for state in STATES:
                self.assertEqual(pxsys.sample(m, "parexd_worker_state", worker=W(hw), state=state),
                                 1 if state == "stalled" else 0)
            rc, out, err = px.run_parexctl("health", "--metrics-addr", d.maddr)
            self.assertEqual(rc, 1, (out, err))
            self.assertIn("worker %d stalled" % hw, out)
            d.wait_log(r"supervisor: worker %d stalled.*'%s'.*'sleep'" % (hw, hot))
            # report leaves the request alone: it finishes and is answered ok.
            r = c.recv(timeout=5)
            self.assertEqual((r["id"], r["status"], r["result"]), ("slow", "ok", {"slept_ms": 900}))
        d.wait_hstats(lambda s: s["workers"][hw]["state"] == "idle", "idle again")
        px.wait_for(lambda: d.health() == (200, "ok\n"), what="healthz back to 200")
        d.wait_log(r"supervisor: worker %d recovered" % hw)
        self.assertEqual(d.log_count(r"supervisor: worker %d stalled" % hw), 1)
        rc, out, err = px.run_parexctl("health", "--metrics-addr", d.maddr)
        self.assertEqual((rc, out), (0, "ok\n"), err)
        s = d.hstats()
        self.assertAccounting(s)
        self.assertEqual(s["workers"][hw]["replaced"], 0)
        self.stop(d)

    def test_replace_moves_the_partition_and_keeps_the_books(self):
        d = self.start(config={"workers": 2, "stall_after_ms": 200, "supervise_interval_ms": 20,
                               "on_stall": "replace"})
        keys = px.keys_by_worker(2, "rp", need=1)
        hot, hw = keys[1][0], 1
        stop = threading.Event()
        seen = {"n": 0, "bad": []}

        def watch():
            # The invariant must hold in every snapshot through the replacement.
            while not stop.is_set():
                try:
                    s = d.hstats()
                except OSError as e:
                    seen["bad"].append(repr(e))
                    return
                seen["n"] += 1
                if not s["invariant_holds"] or s["received"] != (
                        s["rejected"] + s["ok"] + s["failed"] + s["in_flight"]):
                    seen["bad"].append(s)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with d.connect() as c:
                t0 = time.monotonic()
                c.send({"key": hot, "id": "stuck", "op": "sleep", "payload": {"ms": 2000}},
                       {"key": hot, "id": "next", "payload": "moved"})
                r = c.recv(timeout=1.5)
                t_stuck = time.monotonic() - t0
                self.assertEqual((r["id"], r["status"], r["error"]["code"], r["worker"]),
                                 ("stuck", "failed", "worker_stalled", hw), r)
                self.assertGreaterEqual(t_stuck, 0.2)
                r = c.recv(timeout=1.5)
                t_next = time.monotonic() - t0
                self.assertEqual((r["id"], r["status"], r["result"]), ("next", "ok", "moved"), r)
                # The next request of the key ran while the abandoned sleep still slept.
                self.assertLess(t_next, 2.0)
                s = d.hstats()
                m = d.metrics()
                if time.monotonic() - t0 < 1.9:
                    self.assertEqual(s["late_results_discarded"], 0, s)
                self.assertEqual(s["workers"][hw]["replaced"], 1)
                self.assertEqual(s["workers"][1 - hw]["replaced"], 0)
                self.assertEqual(pxsys.sample(m, "parexd_worker_replacements_total",
                                              worker=W(hw)), 1)
                self.assertEqual(pxsys.sample(m, "parexd_worker_replacements_total",
                                              worker=W(1 - hw)), 0)
                d.wait_log(r"supervisor: worker %d replaced" % hw)
                # The abandoned sleep ends: its result is discarded and counted once.
                s = d.wait_hstats(lambda s: s["late_results_discarded"] == 1, "late result")
                self.assertEqual(pxsys.sample(d.metrics(), "parexd_late_results_discarded_total"),
                                 1)
                self.assertTrue(c.nothing_pending(0.05), "the late result must not be delivered")
                # The fresh thread keeps serving the partition.
                r = c.request({"key": hot, "id": "after", "payload": 3})
                self.assertEqual((r["status"], r["worker"]), ("ok", hw), r)
            s = d.wait_hstats(lambda s: s["in_flight"] == 0 and s["connections"] == 0, "idle")
        finally:
            stop.set()
            watcher.join(px.TIMEOUT)
        self.assertEqual(seen["bad"], [])
        self.assertGreater(seen["n"], 10)
        self.assertAccounting(s)
        self.assertEqual((s["received"], s["ok"], s["failed"], s["late_results_discarded"]),
                         (3, 2, 1, 1), s)
        self.assertEqual(s["workers"][hw]["state"], "idle")
        self.assertEqual(d.health(), (200, "ok\n"))
        self.assertMetricsMatchStats(d.metrics(), s)
        self.stop(d)

    def test_draining_counts_shutting_down_and_health_says_so(self):
        d = self.start(config={"workers": 2, "drain_timeout_ms": 5000})
        keys = px.keys_by_worker(2, "dr", need=1)
        with d.connect() as c:
            self.block_worker(d, c, keys[0][0], 0, 800)
            d.signal()
            d.wait_log(r"drain: stopped accepting")
            r = c.request({"key": keys[1][0], "id": "late"}, timeout=0.5)
            self.assertEqual((r["status"], r["error"]["code"]), ("rejected", "shutting_down"), r)
            s = d.hstats()
            self.assertTrue(s["draining"])
            self.assertEqual(s["rejected_by_reason"]["shutting_down"], 1)
            self.assertAccounting(s)
            self.assertEqual(pxsys.sample(d.metrics(), "parexd_requests_rejected_total",
                                          reason="shutting_down"), 1)
            st, reason = d.health()
            self.assertEqual(st, 503)
            self.assertIn("draining", reason)
            r = c.recv(timeout=5)
            self.assertEqual((r["id"], r["status"]), ("blocker", "ok"), r)
        self.assertEqual(d.wait_exit(), 0)

    def test_scrapes_under_load_do_not_block_requests(self):
        d = self.start(args=["--workers", "32"])
        batches, per_batch = 200, 50

        def measure(c):
            rts = []
            for b in range(batches):
                t0 = time.monotonic()
                c.send(*[{"key": "lat%d" % (i % 16), "payload": i} for i in range(per_batch)])
                for _ in range(per_batch):
                    r = c.recv()
                    rts.append(time.monotonic() - t0)
                    self.assertEqual(r["status"], "ok", r)
            return sorted(rts)

        with d.connect() as c:
            baseline = measure(c)
            stop = threading.Event()
            scrapes = []
            errors = []

            def scrape(path):
                try:
                    while not stop.is_set():
                        t = time.monotonic()
                        st, _, body = d.http(path)
                        scrapes.append(time.monotonic() - t)
                        if st != 200:
                            errors.append(st)
                except BaseException as e:
                    errors.append(e)

            scrapers = [threading.Thread(target=scrape, args=(p,))
                        for p in ("/metrics", "/metrics", "/stats")]
            for t in scrapers:
                t.start()
            try:
                px.wait_for(lambda: len(scrapes) >= 3, what="scrapes running")
                n0, t0 = len(scrapes), time.monotonic()
                loaded = measure(c)
                n_during, dt = len(scrapes) - n0, time.monotonic() - t0
            finally:
                stop.set()
                for t in scrapers:
                    t.join(px.TIMEOUT)
        self.assertEqual(errors, [])

        def q(v, p):
            return v[min(len(v) - 1, int(p * len(v)))] * 1000

        report = ("scrape-under-load latency: %d echo requests in %d pipelined batches of %d; "
                  "round trip ms without scrapes p50 %.2f p99 %.2f max %.2f; with %d scrapes "
                  "(%.0f/s, mean %.2f ms each) p50 %.2f p99 %.2f max %.2f"
                  % (len(loaded), batches, per_batch, q(baseline, .5), q(baseline, .99),
                     baseline[-1] * 1000, n_during, n_during / dt,
                     1000 * sum(scrapes) / len(scrapes), q(loaded, .5), q(loaded, .99),
                     loaded[-1] * 1000))
        print("\n" + report, file=sys.stderr)
        self.assertGreaterEqual(n_during, 20, "the scrapers must really run during the measure")
        self.assertLess(loaded[-1], 1.0, report)
        self.assertAccounting(d.wait_hstats(lambda s: s["in_flight"] == 0, "idle"))
        self.stop(d)

    def test_parexctl_stats_health_metrics_top(self):
        d = self.start(args=["--workers", "3"])
        with d.connect() as c:
            c.send(*[{"key": "ctl%d" % i, "payload": i} for i in range(5)])
            c.send(*[{"key": "ctl%d" % i, "op": "fail"} for i in range(2)])
            statuses = sorted(r["status"] for r in c.recv_n(7))
            self.assertEqual(statuses, ["failed"] * 2 + ["ok"] * 5)
        s = d.wait_hstats(lambda s: s["in_flight"] == 0 and s["connections"] == 0, "idle")
        env = {"PAREXD_METRICS_ADDR": d.maddr}

        rc, out, err = px.run_parexctl("stats", "--metrics-addr", d.maddr)
        self.assertEqual(rc, 0, err)
        self.assertIn("received 7 ", out)
        self.assertIn("ok 5 ", out)
        self.assertIn("failed 2 ", out)
        self.assertIn("accounting holds", out)
        rows = [ln.split() for ln in out.splitlines() if re.match(r"^\d+\s", ln)]
        self.assertEqual([r[0] for r in rows], ["0", "1", "2"], out)
        self.assertEqual(sum(int(r[3]) for r in rows), 7, out)  # PROCESSED column
        self.assertEqual(sum(int(r[4]) for r in rows), 2, out)  # FAILED column
        # The environment variable names the endpoint too.
        rc, out2, err = px.run_parexctl("stats", env=env)
        self.assertEqual(rc, 0, err)
        self.assertIn("received 7 ", out2)

        rc, out, err = px.run_parexctl("health", "--metrics-addr", d.maddr)
        self.assertEqual((rc, out), (0, "ok\n"), err)

        rc, out, err = px.run_parexctl("metrics", "--metrics-addr", d.maddr)
        self.assertEqual(rc, 0, err)
        self.assertEqual(pxsys.promtool_check(out), (0, ""))
        m = pxsys.parse_metrics(out)
        self.assertEqual(pxsys.sample(m, "parexd_requests_completed_total", status="ok"), 5)
        self.assertEqual(pxsys.sample(m, "parexd_requests_completed_total", status="failed"), 2)

        rc, out, err = px.run_parexctl("top", "--once", "--metrics-addr", d.maddr)
        self.assertEqual(rc, 0, err)
        self.assertIn("backpressure no", out)
        self.assertIn("rates/s", out)
        self.assertIn("ok 5 ", out)
        bars = [ln for ln in out.splitlines() if re.match(r"^\d+\s+idle\s+\[", ln)]
        self.assertEqual(len(bars), 3, out)
        self.assertNotIn("\033[2J", out, "--once prints one frame without clearing the screen")

        # Nothing listening: exit 2 for every command.
        gone = "127.0.0.1:%d" % pxsys.free_port()
        for cmd in (["health"], ["stats"], ["metrics"], ["top", "--once"]):
            rc, out, err = px.run_parexctl(*cmd, "--metrics-addr", gone)
            self.assertEqual(rc, 2, (cmd, out, err))
            self.assertIn(gone, err)
        self.stop(d)


if __name__ == "__main__":
    px.main()
