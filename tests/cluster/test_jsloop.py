"""parex-jsloop, the raw JetStream loop behind scripts/bench-cluster: a short R1 run against one
real nats-server must complete round trips with no error, no duplicate and no missing result,
report them as JSON, and leave no stream behind; usage mistakes and an unreachable server get
their exit status and one clear line."""
import argparse
import json
import os
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from natscluster import NatsCluster, free_port  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--jsloop", required=True)
args = ap.parse_args()


def jsloop(*argv, timeout=60):
    return subprocess.run([args.jsloop] + list(argv), capture_output=True, text=True,
                          timeout=timeout)


def check(cond, what, p=None):
    if not cond:
        detail = "\nstdout: %s\nstderr: %s" % (p.stdout, p.stderr) if p else ""
        raise AssertionError(what + detail)


def jsz(nats):
    with urllib.request.urlopen("http://127.0.0.1:%d/jsz" % nats.http[0], timeout=5) as r:
        return json.load(r)


p = jsloop("--nats", "nats://127.0.0.1:4222", "--replicas", "2")
check(p.returncode == 64 and "--replicas '2' is not 1 or 3" in p.stderr, "--replicas 2: usage", p)
p = jsloop("--replicas", "1")
check(p.returncode == 64 and "--nats" in p.stderr, "no --nats: usage", p)
p = jsloop("--nats", "nats://127.0.0.1:%d" % free_port(), "--replicas", "1", "--duration", "1")
check(p.returncode == 2 and "cannot connect to NATS" in p.stderr, "no server: exit 2", p)

with NatsCluster(1) as nats:
    p = jsloop("--nats", nats.urls(), "--replicas", "1", "--duration", "2", "--partitions", "2",
               "--in-flight", "64", "--batch", "16", "--json")
    check(p.returncode == 0, "a clean R1 run exits 0", p)
    r = json.loads(p.stdout)
    check(r["ok"] > 0, "round trips completed", p)
    check(r["ok"] == r["requests"], "every request got its result", p)
    for k in ("errors", "unanswered", "duplicates"):
        check(r[k] == 0, "%s == 0" % k, p)
    check(r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"] and r["rps"] > 0,
          "latency and rate reported", p)
    check((r["replicas"], r["partitions"], r["in_flight"], r["batch"]) == (1, 2, 64, 16),
          "the run's settings echoed", p)
    js = jsz(nats)
    check(js.get("streams", 0) == 0 and js.get("consumers", 0) == 0,
          "the run's streams and consumers are deleted: %s" % js)
print("cluster_jsloop: ok")
