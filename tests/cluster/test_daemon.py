"""parexd in cluster mode: 3 nats-server nodes (R3) and 3 parexd instances on loopback.

Clients talk to one instance; every request runs through an exec handler that appends the
request to one shared file, so the file's order is the execution order across instances. The
history checker (history.py) then finds per-key reorderings, lost accepted requests (an ok
answer is an accepted request) and duplicates, through kill -9 and SIGTERM of an instance that
holds partitions. Also: bad input gets the same answers as single-node mode, an oversize request
is refused at ingress, idem deduplicates, an idem request's answer can be read from another
instance ({"control":"result"}), a plugin is given the delivery count and epoch, and cluster
config mistakes stop start-up (exit 78).

    python3 test_daemon.py --parexd PATH --parexctl PATH --example-plugin PATH
"""
import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import history  # noqa: E402
import pxharness  # noqa: E402
from natscluster import NatsCluster, stop_process  # noqa: E402

PARTS = 8
TTL = 2000
EXAMPLE_PLUGIN = None  # src/plugins/example.c, built


class Cluster:
    """NATS plus parexd instances sharing one history file; everything stopped by close()."""

    def __init__(self, names="abc", max_payload=None):
        self.dir = tempfile.mkdtemp(prefix="px-cld-")
        self.hist = os.path.join(self.dir, "history")
        open(self.hist, "w").close()
        self.nats = NatsCluster(3, max_payload=max_payload)
        self.d = {}
        try:
            for n in names:
                self.start(n)
        except BaseException:
            self.close()
            raise

    def config(self, name, **cluster):
        # result_ttl_ms under JetStream's 2-minute duplicate window: the answer streams' window
        # is cut to it (JetStream refuses a window longer than the retention).
        c = {"nats": self.nats.urls().split(","), "instance": name, "partitions": PARTS,
             "lease_ttl_ms": TTL, "result_ttl_ms": 60000}
        c.update(cluster)
        # c schedules by key, as the sample configs do; a and b have per-worker queues.
        return {"workers": 4, "drain_timeout_ms": 20000, "max_line_bytes": 4 << 20,
                "scheduling": "keyed" if name == "c" else "partitioned",
                "handlers": {"rec": {"type": "exec", "argv": ["/bin/sh", "-c",
                                                              "cat >> " + self.hist]},
                             "count": {"type": "plugin", "path": EXAMPLE_PLUGIN},
                             # answers larger than their requests (cat: read the request)
                             "big": {"type": "exec", "argv": [
                                 "/bin/sh", "-c", "cat >/dev/null; yes x | head -c 60000 | tr -d '\\n'"]},
                             "huge": {"type": "exec", "argv": [
                                 "/bin/sh", "-c", "cat >/dev/null; yes x | head -c 200000 | tr -d '\\n'"]}},
                "cluster": c}

    def start(self, name, env=None):
        self.d[name] = pxharness.Daemon(config=self.config(name), env=env)
        self.d[name].wait_log("cluster: instance %s connected" % name, timeout=30)
        return self.d[name]

    def metrics(self, name):
        return self.d[name].wait_log(r"metrics on (\S+)").group(1)

    def held(self, name):
        s = self.d[name].stats()["cluster"]
        return {p["partition"] for p in s["partition_list"] if p["held"]}

    def wait_spread(self, names, timeout=30):
        """Every partition held by exactly one of names (their /stats agree), each instance
        holding what it should (owned = target) with every consumer ready (serving)."""
        def ok():
            st = [self.d[n].stats()["cluster"] for n in names]
            if any(c["members"] != len(names) for c in st):
                return False
            if any(not (c["owned"] == c["target"] == c["serving"]) for c in st):
                return False
            sets = [self.held(n) for n in names]
            # With 3 instances and 8 partitions each one's share is never empty (rendezvous
            # hashing of these names); an empty set means the rebalance is still under way.
            return (all(sets) and len(set().union(*sets)) == PARTS
                    and sum(map(len, sets)) == PARTS)
        pxharness.wait_for(ok, timeout, "partitions spread over " + names, interval=0.1)

    def close(self):
        """Stops every instance (SIGTERM, then SIGKILL after 30 s) and NATS; fails on a
        sanitizer report from any instance (scripts/test runs this suite under ThreadSanitizer
        and AddressSanitizer too)."""
        reports = []
        for name, d in self.d.items():
            if d.proc.poll() is None:
                d.proc.send_signal(signal.SIGCONT)  # a paused one
                d.proc.send_signal(signal.SIGTERM)
                try:
                    d.proc.wait(30)
                except subprocess.TimeoutExpired:
                    d.proc.kill()
                    d.proc.wait()
            d.reader.join(5)
            text = d.stderr_text()
            if "Sanitizer" in text or "runtime error:" in text:
                reports.append("%s:\n%s" % (name, text[text.find("=="):][:4000]))
            d._cleanup()
        self.nats.close()
        assert not reports, "sanitizer reports:\n" + "\n".join(reports)


class Load:
    """Client threads on one instance, each with its own keys, pipelining up to `window`
    requests with a per-key sequence number; records every answer."""

    def __init__(self, d, threads=4, keys_per_thread=4, window=16):
        self.d, self.stop = d, threading.Event()
        self.records = []  # (kind, key, seq, status code/None)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(t, keys_per_thread, window))
                        for t in range(threads)]
        for t in self.threads:
            t.start()

    def run(self, t, nkeys, window):
        seq = {}
        out = {}
        n = 0
        with self.d.connect(timeout=60) as c:
            while not self.stop.is_set() or out:
                while not self.stop.is_set() and len(out) < window:
                    key = "t%d-k%d" % (t, n % nkeys)
                    n += 1
                    seq[key] = seq.get(key, 0) + 1
                    rid = "%s/%d" % (key, seq[key])
                    out[rid] = (key, seq[key])
                    c.send({"id": rid, "key": key, "op": "rec", "payload": {"seq": seq[key]}})
                a = c.recv(timeout=60)
                key, s = out.pop(a["id"])
                with self.lock:
                    if a["status"] == "ok":
                        self.records.append(("A", key, s, None))
                    else:
                        self.records.append(("R", key, s, a["error"]["code"],
                                             a["error"]["message"]))

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def check(self, hist, allow_duplicates=True, paused_at=None, old_epochs=()):
        """Writes the records as history.py files and checks them. A run of the paused instance
        under one of its old leases that reached the file after the pause (line paused_at on)
        was started before it: its exec child is not paused with parexd and appends once the
        request reaches its standard input; it counts as started at the pause."""
        lf = hist + ".load"
        hf = hist + ".runs"
        with open(lf, "w") as f:
            for r in self.records:
                msgid = "%s/%d" % (r[1], r[2])
                if r[0] == "A":
                    f.write("A 0 %s %d %s\n" % (r[1], r[2], msgid))
                    f.write("D 0 %s ok\n" % msgid)  # an ok answer: accepted and answered
                else:
                    unconfirmed = "did not confirm" in r[4]
                    f.write("R 0 %s %d %s %d 0 %s\n" % (r[1], r[2], msgid,
                                                       history.UNCERTAIN if unconfirmed else 2,
                                                       r[3]))
        with open(hist) as f, open(hf, "w") as out:
            for i, line in enumerate(f):
                j = json.loads(line)
                key, seq = j["key"], j["payload"]["seq"]
                # The handler is told which lease ran it and whether it is a re-run.
                assert j["epoch"] > 0 and j["delivery"] >= 1, j
                t = 2 * i
                if paused_at is not None and i >= paused_at and j["epoch"] in old_epochs:
                    t = 2 * paused_at - 1
                out.write("S %d ? 0 %d %s %d %d %s/%d\n" % (t, j["epoch"], key, seq,
                                                            j["delivery"], key, seq))
        rep = history.check([lf], [hf])
        assert rep.ok(allow_duplicates), "%s\n%s" % (rep.summary(), rep.details())
        return rep


class ClusterTest(unittest.TestCase):
    def test_parexctl_cluster(self):
        """parexctl cluster, given every instance's metrics address, shows each partition's
        owner and epoch (the union of what each instance holds)."""
        cl = Cluster()
        try:
            cl.wait_spread("abc")
            argv = [pxharness.PAREXCTL, "cluster"]
            for n in "abc":
                argv += ["--metrics-addr", cl.metrics(n)]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            rows = [ln.split() for ln in out.stdout.splitlines() if ln[:1].isdigit()]
            self.assertEqual([int(r[0]) for r in rows], list(range(PARTS)), out.stdout)
            owners = {int(r[0]): r[1] for r in rows}
            for n in "abc":
                self.assertIn("instance %s " % n, out.stdout)
                for p in cl.held(n):
                    self.assertEqual(owners[p], n, out.stdout)
            self.assertNotIn("held by none", out.stdout)
        finally:
            cl.close()

    def owner_load(self, sig):
        cl = Cluster()
        try:
            cl.wait_spread("abc")
            victim = cl.d["b"]
            self.assertTrue(cl.held("b"), "b holds no partition")
            load = Load(cl.d["a"])
            time.sleep(3)  # load running before the signal (not a synchronisation)
            t0 = time.monotonic()
            victim.signal(sig)
            victim.proc.wait(30)
            cl.wait_spread("ac", timeout=TTL / 1000 * 2 + 15)
            took = time.monotonic() - t0
            time.sleep(2)  # load running after the take-over
            load.finish()
            rep = load.check(cl.hist, allow_duplicates=(sig == signal.SIGKILL))
            print("%s of an owner: %s; partitions held by the others %.1f s after" % (
                signal.Signals(sig).name, rep.summary(), took), flush=True)
            if sig == signal.SIGKILL:
                # Every duplicate run is visible to its handler as a re-run.
                with open(cl.hist) as f:
                    reruns = sum(1 for ln in f if json.loads(ln)["delivery"] > 1)
                self.assertGreaterEqual(reruns, rep.duplicates, rep.summary())
            self.assertGreater(len(rep.accepted), 200, rep.summary())
            return rep
        finally:
            cl.close()

    def test_sigstop_owner(self):
        """b paused past its lease: the others take its partitions over; once b resumes it runs
        nothing more under its old leases (their epochs), and order holds."""
        cl = Cluster()
        try:
            cl.wait_spread("abc")
            b = cl.d["b"]
            old = {p["epoch"] for p in b.stats()["cluster"]["partition_list"] if p["held"]}
            self.assertTrue(old, "b holds no partition")
            load = Load(cl.d["a"])
            time.sleep(3)
            stop_process(b.proc.pid)
            with open(cl.hist) as f:
                at_pause = sum(1 for _ in f)
            try:
                cl.wait_spread("ac", timeout=TTL / 1000 * 2 + 15)
            finally:
                b.signal(signal.SIGCONT)
            b.wait_log("lease lost|lost \\(epoch", timeout=20)
            time.sleep(2)
            load.finish()
            rep = load.check(cl.hist, paused_at=at_pause, old_epochs=old)
            with open(cl.hist) as f:
                late = [ln for i, ln in enumerate(f)
                        if i >= at_pause and json.loads(ln)["epoch"] in old]
            print("SIGSTOP of an owner: %s; %d runs under its old leases after the pause" % (
                rep.summary(), len(late)), flush=True)
            # Runs a worker had started before the pause: their exec children are not paused
            # with parexd and append after it.
            self.assertLessEqual(len(late), len(old), late[:5])
        finally:
            cl.close()

    def test_kill9_owner(self):
        self.owner_load(signal.SIGKILL)

    def test_sigterm_owner(self):
        self.owner_load(signal.SIGTERM)

    def test_answered_before_ack_not_run_again(self):
        """A holder killed after storing a batch's answers and before acknowledging it: the
        next holder is handed the batch again, finds its answers stored and acknowledges it
        without running it (PAREXD_FAULT_INJECTION=kill_before_ack is the crash)."""
        cl = Cluster("")
        try:
            a = cl.start("a", env={"PAREXD_FAULT_INJECTION": "kill_before_ack"})
            cl.wait_spread("a")
            with a.connect(timeout=30) as c:
                c.send({"id": 1, "key": "once", "op": "rec", "payload": {"seq": 1}})
                self.assertEqual(a.proc.wait(30), -signal.SIGKILL)
            with open(cl.hist) as f:
                self.assertEqual(len(f.readlines()), 1)
            b = cl.start("b")
            pxharness.wait_for(lambda: b.stats()["cluster"]["already_answered"] >= 1,
                               TTL / 1000 * 2 + 20, "b to find the stored answer")
            st = b.stats()["cluster"]
            self.assertEqual((st["already_answered"], st["redeliveries"]), (1, 0), st)
            with b.connect(timeout=30) as c:  # the partition goes on after it
                r = c.request({"key": "once", "op": "rec", "payload": {"seq": 2}}, timeout=30)
                self.assertEqual(r["status"], "ok", r)
            with open(cl.hist) as f:
                runs = [json.loads(ln)["payload"]["seq"] for ln in f]
            self.assertEqual(runs, [1, 2])
        finally:
            cl.close()

    def test_bad_input_idem_oversize(self):
        bad = [b"not json", b"[1,2]", b'{"id":1}', b'{"key":""}', b'{"key":"k","op":"nope"}',
               b'{"key":"k","op":"sleep","payload":{"ms":-1}}', b'{"key":"k","id":{"a":1}}',
               b'{"control":"nope"}', b'{"key":"k","idem":"has space"}']
        with pxharness.Daemon() as single:
            with single.connect() as c:
                want = []
                for line in bad:
                    c.send_raw(line + b"\n")
                    want.append(c.recv())
        cl = Cluster("a", max_payload=65536)
        try:
            d = cl.d["a"]
            cl.wait_spread("a")
            with d.connect() as c:
                for line, w in zip(bad, want):
                    c.send_raw(line + b"\n")
                    got = c.recv()
                    if line.startswith(b'{"key":"k","idem"'):
                        # single-node mode has no idem: it runs the request
                        self.assertEqual(got["error"]["code"], "bad_field", got)
                        continue
                    self.assertEqual((got["status"], got.get("error", {}).get("code")),
                                     (w["status"], w.get("error", {}).get("code")), line)
                # Over the servers' max_payload: refused at ingress, saying why.
                r = c.request({"key": "big", "payload": "x" * 100000})
                self.assertEqual((r["status"], r["error"]["code"]), ("rejected", "too_large"), r)
                self.assertIn("max_payload", r["error"]["message"])
                # Answers that together are over max_payload: a batch's answers are stored in
                # as many messages as it takes, each under the limit.
                n = 30
                for i in range(n):
                    c.send({"id": i, "key": "wide", "op": "echo", "payload": "y" * 20000})
                got = [c.recv(timeout=60) for _ in range(n)]
                self.assertEqual([(a["id"], a["status"]) for a in got],
                                 [(i, "ok") for i in range(n)], [a.get("error") for a in got])
                self.assertEqual(len(got[-1]["result"]), 20000)
                # Requests stored together whose answers are far larger: one request message's
                # answers go out in several answer messages.
                for i in range(n):
                    c.send({"id": i, "key": "fat", "op": "big"})
                got = [c.recv(timeout=60) for _ in range(n)]
                self.assertEqual([(a["id"], a["status"], len(a.get("result", ""))) for a in got],
                                 [(i, "ok", 30000) for i in range(n)],
                                 [a.get("error") for a in got])
                # An answer no NATS message can carry: the client is told, the partition goes on.
                r = c.request({"id": "h", "key": "fat", "op": "huge"}, timeout=60)
                self.assertEqual((r["id"], r["status"], r["error"]["code"]),
                                 ("h", "failed", "too_large"), r)
                self.assertIn("max_payload", r["error"]["message"])
                r = c.request({"key": "fat", "op": "big"}, timeout=60)
                self.assertEqual(r["status"], "ok", r)
                # idem: the same request submitted twice runs once; both get its answer.
                a1 = c.request({"key": "i", "op": "rec", "idem": "order-17",
                                "payload": {"seq": 1}}, timeout=30)
                a2 = c.request({"key": "i", "op": "rec", "idem": "order-17",
                                "payload": {"seq": 1}}, timeout=30)
                self.assertEqual((a1["status"], a2["status"]), ("ok", "ok"), (a1, a2))
                with open(cl.hist) as f:
                    runs = [ln for ln in f if '"key":"i"' in ln]
                self.assertEqual(len(runs), 1, runs)
                st = d.stats()["cluster"]
                self.assertEqual(st["duplicates_stored"], 1, st)
                self.assertTrue(st["connected"])
        finally:
            cl.close()

    def test_result_lookup(self):
        """{"control":"result"} reads the answer of an idem request from any instance; an idem
        never submitted is not_found, a missing or bad idem invalid; parexctl result prints it;
        a client that resets its connection with lookups outstanding harms nothing."""
        with pxharness.Daemon() as single:
            with single.connect() as c:
                r = c.request({"control": "result", "idem": "x", "id": 1})
            self.assertEqual((r["status"], r["error"]["code"]), ("invalid", "bad_field"), r)
            self.assertIn("need cluster mode", r["error"]["message"])
        cl = Cluster("ab")
        try:
            cl.wait_spread("ab")
            a, b = cl.d["a"], cl.d["b"]
            with a.connect() as c:
                ans = c.request({"key": "rk", "op": "rec", "idem": "lookup-1", "id": "sub",
                                 "payload": {"seq": 1}}, timeout=30)
            self.assertEqual(ans["status"], "ok", ans)
            with b.connect() as c:
                # Stored right after the answer went out: a server may lag a moment behind.
                def fetch():
                    r = c.request({"control": "result", "idem": "lookup-1", "id": "r1"}, 30)
                    if r["status"] != "ok":
                        self.assertEqual(r["error"]["code"], "not_found", r)
                        return None
                    return r
                r = pxharness.wait_for(fetch, 10, "the answer retained for lookup-1", 0.05)
                self.assertEqual(r["id"], "r1", r)
                self.assertEqual(r["result"], {"idem": "lookup-1", "answer": ans}, r)
                r = c.request({"control": "result", "idem": "never-submitted", "id": "r2"}, 30)
                self.assertEqual((r["id"], r["status"], r["error"]["code"]),
                                 ("r2", "rejected", "not_found"), r)
                self.assertIn("result_ttl_ms", r["error"]["message"])
                for bad in ({}, {"idem": "has space"}, {"idem": 7}, {"idem": "x" * 129}):
                    r = c.request(dict(bad, control="result", id="r3"))
                    self.assertEqual((r["id"], r["status"], r["error"]["code"]),
                                     ("r3", "invalid", "bad_field"), (bad, r))
                    self.assertIn("idem", r["error"]["message"])
                # Without an id the answer, given out of line, is numbered like a request's.
                r = c.request({"control": "result", "idem": "lookup-1"}, 30)
                self.assertEqual(r["status"], "ok", r)
                self.assertIsNotNone(r["id"], r)
            rc, out, err = pxharness.run_parexctl("result", "--idem", "lookup-1", "--addr", b.addr,
                                                  timeout=30)
            self.assertEqual(rc, 0, out + err)
            self.assertEqual(json.loads(out)["result"]["answer"], ans, out)
            rc, out, err = pxharness.run_parexctl("result", "--idem", "never-submitted",
                                                  "--addr", b.addr, timeout=30)
            self.assertEqual(rc, 1, out + err)
            self.assertIn("not_found", out)
            # Lookups outstanding when the client resets: answered to nobody, counted dropped
            # (those the daemon read before it saw the reset).
            before = b.stats()["responses_dropped"]
            for _ in range(3):
                c = b.connect()
                c.send(*[{"control": "result", "idem": "lookup-1", "id": i} for i in range(20)])
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.sock.close()
            with b.connect() as c:
                r = c.request({"control": "result", "idem": "lookup-1", "id": "after"}, 30)
            self.assertEqual((r["id"], r["status"]), ("after", "ok"), r)
            self.assertIsNone(b.proc.poll())
            dropped = b.stats()["responses_dropped"] - before
            self.assertTrue(0 < dropped <= 60, dropped)
        finally:
            cl.close()

    def test_plugin_context(self):
        """An ABI 2 plugin (the example) is given the request's id, its delivery count and the
        epoch of the lease its partition runs under."""
        cl = Cluster("ab")
        try:
            cl.wait_spread("ab")
            with cl.d["a"].connect() as c:
                rs = [c.request({"key": "pk%d" % i, "op": "count", "id": "p%d" % i}, 30)
                      for i in range(4)]
            epochs = {}
            for n in "ab":
                for p in cl.d[n].stats()["cluster"]["partition_list"]:
                    if p["held"]:
                        epochs[p["partition"]] = p["epoch"]
            for i, r in enumerate(rs):
                self.assertEqual(r["status"], "ok", r)
                rc, out, err = pxharness.run_parexctl("route", "pk%d" % i, "--partitions", PARTS)
                self.assertEqual(rc, 0, err)
                self.assertEqual((r["result"]["id"], r["result"]["delivery"]), ("p%d" % i, 1), r)
                self.assertGreater(r["result"]["epoch"], 0, r)
                self.assertEqual(r["result"]["epoch"], epochs[int(out)], (r, epochs))
        finally:
            cl.close()

    def test_config_mistakes_exit_78(self):
        for cluster, want in (({"nats": []}, "cluster.nats"),
                              ({"nats": ["nats://127.0.0.1:1"], "partitions": 0},
                               "cluster.partitions"),
                              ({"nats": ["nats://127.0.0.1:1"], "instance": "a b"},
                               "cluster.instance"),
                              ({"nats": ["nats://127.0.0.1:1"], "leases": 1}, "cluster.leases"),
                              ({"partitions": 8}, "cluster.nats")):
            d = pxharness.Daemon(config={"cluster": cluster}, wait_ready=False)
            rc = d.wait_exit()
            err = d.stderr_text()
            d._cleanup()
            self.assertEqual(rc, 78, err)
            self.assertIn(want, err)
            self.assertEqual(len([ln for ln in err.splitlines() if ln.strip()]), 1, err)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--example-plugin", required=True)
    args, rest = ap.parse_known_args()
    EXAMPLE_PLUGIN = os.path.abspath(args.example_plugin)
    sys.argv = [sys.argv[0]] + rest
    pxharness.main()
