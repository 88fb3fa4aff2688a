"""parex-bench: a short run against the real daemon must come back clean (every request ok, no
order violation, no protocol error), and the checks must bite: against a fake server that
answers out of order or twice, parex-bench reports the violations and exits non-zero.

Run as
    python3 test_bench.py --parexd PATH --parexctl PATH --parex-bench PATH [unittest arguments]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import unittest

import pxharness as px

px.SETTINGS.update(builtin_test_ops=True)  # these tests use the built-in sleep and fail

PAREX_BENCH = None


def run_bench(*args, timeout=60):
    """Runs parex-bench; returns (exit status, stdout text, stderr text)."""
    p = subprocess.run([PAREX_BENCH] + [str(a) for a in args], capture_output=True,
                       timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class FakeServer:
    """A one-connection stand-in for parexd that answers every request ok, but in a way chosen
    by the test: 'reverse' answers each read's requests last to first, 'twice' answers each
    request two times, 'strangers' answers with ids that were never sent, 'good' answers right.
    With exact=True the answers are byte for byte parexd's compact form, which parex-bench
    checks against its template without jansson; otherwise they are spaced (json.dumps), which
    takes its jansson path. 'tampered' (exact) changes the last byte of the echoed string,
    'zeropad' (exact) writes each id with a leading zero (not JSON)."""

    def __init__(self, mode, exact=False):
        self.mode = mode
        self.exact = exact
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def answer(self, req):
        result = req.get("payload")
        if self.mode == "tampered":
            result = result[:-1] + "y"
        if self.exact:
            # 'zeropad': the template's shape with the id written as 0ID, which is not JSON.
            return ('{"id":%s%d,"status":"ok","worker":0,"queue_ms":0.250,"run_ms":1.500,'
                    '"result":%s}\n' % ("0" if self.mode == "zeropad" else "", req["id"],
                                         json.dumps(result, separators=(",", ":"))))
        return json.dumps({"id": req["id"], "status": "ok", "worker": 0, "queue_ms": 0,
                           "run_ms": 0, "result": result}) + "\n"

    def serve(self):
        conn, _ = self.sock.accept()
        buf = b""
        with conn:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                *lines, buf = buf.split(b"\n")
                reqs = [json.loads(ln) for ln in lines if ln.strip()]
                if self.mode == "reverse":
                    out = [self.answer(r) for r in reversed(reqs)]
                elif self.mode == "twice":
                    out = [self.answer(r) * 2 for r in reqs]
                elif self.mode in ("good", "tampered", "zeropad"):
                    out = [self.answer(r) for r in reqs]
                else:
                    out = [self.answer(dict(r, id=r["id"] + 1000003)) for r in reqs]
                try:
                    conn.sendall("".join(out).encode())
                except OSError:
                    return

    def close(self):
        self.sock.close()


class BenchTest(unittest.TestCase):
    def test_smoke_against_parexd(self):
        with px.Daemon(["--workers", "4", "--queue-capacity", "100000"]) as d:
            rc, out, err = run_bench("--addr", d.addr, "--requests", 2000, "--connections", 4,
                                     "--pipeline", 8, "--keys", 50, "--json")
            self.assertEqual(rc, 0, err)
            lines = out.splitlines()
            self.assertEqual(len(lines), 1, out)
            r = json.loads(lines[0])
            for k in ("requests", "ok", "failed", "rejected", "invalid", "seconds", "rps",
                      "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", "order_violations"):
                self.assertIn(k, r)
            self.assertEqual(r["requests"], 2000, r)
            self.assertEqual(r["ok"], r["requests"], r)
            self.assertEqual(r["order_violations"], 0, r)
            self.assertEqual(r["errors"], 0, r)
            self.assertTrue(0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["p999_ms"]
                            <= r["max_ms"], r)
            # The daemon saw exactly what the bench reports.
            s = d.wait_idle()
            self.assertGreaterEqual(s["ok"], 2000)

    def test_sleep_op_with_payload_and_zipf(self):
        with px.Daemon(["--workers", "4", "--queue-capacity", "100000"]) as d:
            rc, out, err = run_bench("--addr", d.addr, "--requests", 200, "--connections", 2,
                                     "--pipeline", 16, "--keys", 20, "--zipf", "1.1",
                                     "--op", "sleep", "--payload", '{"ms":1}', "--json")
            self.assertEqual(rc, 0, err)
            r = json.loads(out)
            self.assertEqual(r["ok"], 200, r)
            self.assertGreaterEqual(r["p50_ms"], 1.0, r)

    def run_fake(self, mode, exact=False):
        srv = FakeServer(mode, exact)
        try:
            return run_bench("--addr", "127.0.0.1:%d" % srv.port, "--requests", 400,
                             "--connections", 1, "--pipeline", 16, "--keys", 2,
                             "--payload-bytes", 24, "--timeout", 2, "--json")
        finally:
            srv.close()

    def check_caught(self, mode, key, exact=False):
        rc, out, err = self.run_fake(mode, exact)
        self.assertEqual(rc, 1, "exit %d; stdout %s; stderr %s" % (rc, out, err))
        r = json.loads(out)
        self.assertGreater(r[key], 0, r)
        self.assertIn("error", err)
        return r

    def test_out_of_order_answers_are_violations(self):
        self.check_caught("reverse", "order_violations")

    def test_duplicate_answers_are_errors(self):
        self.check_caught("twice", "errors")

    def test_unknown_ids_are_errors(self):
        r = self.check_caught("strangers", "errors")
        self.assertGreater(r["unanswered"], 0, r)

    def test_exact_answers_pass_the_template(self):
        # The template path accepts parexd's exact form and still reads the server's timings.
        rc, out, err = self.run_fake("good", exact=True)
        self.assertEqual(rc, 0, err)
        r = json.loads(out)
        self.assertEqual((r["ok"], r["errors"]), (400, 0), r)
        self.assertAlmostEqual(r["server_queue_ms_mean"], 0.25, places=3)
        self.assertAlmostEqual(r["server_run_ms_mean"], 1.5, places=3)

    def test_exact_answers_out_of_order_are_violations(self):
        self.check_caught("reverse", "order_violations", exact=True)

    def test_exact_answers_with_a_wrong_result_are_errors(self):
        r = self.check_caught("tampered", "errors", exact=True)
        self.assertEqual(r["errors"], 400, r)

    def test_exact_answers_with_a_leading_zero_are_errors(self):
        # Not JSON: no answer is matched to its request, none counted ok.
        r = self.check_caught("zeropad", "errors", exact=True)
        self.assertGreaterEqual(r["errors"], 16, r)
        self.assertEqual(r["ok"], 0, r)

    def test_exact_answers_twice_are_errors(self):
        self.check_caught("twice", "errors", exact=True)

    def test_json_cost(self):
        # No daemon: the JSON work per request, timed on the lines a run would exchange.
        rc, out, err = run_bench("--json-cost", 2000, "--payload-bytes", 64, "--json")
        self.assertEqual(rc, 0, err)
        r = json.loads(out)
        line = '{"key":"k123","id":1234567,"op":"echo","payload":"%s"}' % ("x" * 64)
        self.assertEqual(r["request_bytes"], len(line), r)
        self.assertEqual(r["iterations"], 2000, r)
        for k in ("parse_request_ns", "dump_payload_ns", "parse_answer_ns"):
            self.assertGreater(r[k], 0, r)
        rc, out, err = run_bench("--json-cost", 10, "--op", "sleep", "--payload", '{"ms":1}')
        self.assertEqual(rc, 0, err)
        self.assertIn("parse the request line (59 bytes", out)
        rc, out, err = run_bench("--json-cost", 0)
        self.assertEqual(rc, 64, err)
        self.assertIn("--json-cost", err)

    def test_usage(self):
        rc, out, err = run_bench("--addr", "127.0.0.1:1", "--connections", 1)
        self.assertEqual(rc, 64, err)
        rc, out, err = run_bench("--help")
        self.assertEqual(rc, 0)
        self.assertIn("--pipeline", out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--parex-bench", required=True)
    args, rest = ap.parse_known_args()
    PAREX_BENCH = os.path.abspath(args.parex_bench)
    sys.argv = [sys.argv[0]] + rest  # the harness parses --parexd/--parexctl from the rest
    px.main()
