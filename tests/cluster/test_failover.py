"""Cluster mode through failures: 3 nats-server nodes (R3) and 3 executing instances under
continuous keyed load from a separate ingress instance; after each scenario the history checker
must find 0 reorderings and 0 lost accepted requests (and 0 duplicates where the scenario
promises it)."""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import history  # noqa: E402
from natscluster import NatsCluster, wait_for  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--node", required=True)
ap.add_argument("--only", default="")
args = ap.parse_args()

PARTS = 8
TTL = 2000


class Run:
    """One scenario: its own NATS cluster, executors and load generator, all stopped at exit."""

    def __init__(self, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="px-cl-%s-" % name)
        self.nats = NatsCluster(3)
        self.execs = {}
        self.loads = []
        self.hist_files = []
        self.load_files = []

    def log(self, name):
        return open(os.path.join(self.dir, name + ".log"), "ab")

    def start_exec(self, inst):
        hist = os.path.join(self.dir, "hist-%s" % inst)
        self.hist_files.append(hist)
        p = subprocess.Popen([args.node, "--nats", self.nats.urls(), "--instance", inst,
                              "--partitions", str(PARTS), "--lease-ttl-ms", str(TTL),
                              "--history", hist], stdout=subprocess.DEVNULL,
                             stderr=self.log(inst))
        self.execs[inst] = p
        return p

    def start_load(self, name, seconds, keys=24, window=48, ms=2, timeout_ms=3000):
        out = os.path.join(self.dir, "load-%s" % name)
        self.load_files.append(out)
        p = subprocess.Popen([args.node, "--nats", self.nats.urls(), "--instance", name,
                              "--partitions", str(PARTS), "--lease-ttl-ms", str(TTL),
                              "--load", out, "--seconds", str(seconds), "--keys", str(keys),
                              "--window", str(window), "--ms", str(ms),
                              "--publish-timeout-ms", str(timeout_ms), "--grace-ms", "40000"],
                             stdout=subprocess.PIPE, stderr=self.log(name))
        self.loads.append(p)
        return p

    def grep(self, inst, text):
        try:
            with open(os.path.join(self.dir, inst + ".log"), "rb") as f:
                return text.encode() in f.read()
        except FileNotFoundError:
            return False

    def held(self, inst):
        """Partitions whose latest lease line in the instance's log says held."""
        held = {}
        try:
            with open(os.path.join(self.dir, inst + ".log")) as f:
                for line in f:
                    if "cluster: partition " in line:
                        part = int(line.split("cluster: partition ")[1].split()[0].rstrip(":"))
                        held[part] = " held with epoch " in line
        except FileNotFoundError:
            pass
        return {p for p, h in held.items() if h}

    def wait_owners(self, insts, timeout=30):
        """Every partition held by exactly one of insts."""
        def ok():
            sets = [self.held(i) for i in insts]
            allp = set().union(*sets)
            return len(allp) == PARTS and sum(len(s) for s in sets) == PARTS
        wait_for(ok, timeout, "all %d partitions held by %s" % (PARTS, ",".join(insts)))

    def finish_load(self, timeout=120):
        outs = []
        for p in self.loads:
            out, _ = p.communicate(timeout=timeout)
            outs.append(out.decode().strip())
        return outs

    def check(self, allow_duplicates=True):
        r = history.check(self.load_files, self.hist_files)
        print("%s: %s" % (self.name, r.summary()))
        assert r.ok(allow_duplicates), "%s: %s\n%s (files in %s)" % (
            self.name, r.summary(), r.details(), self.dir)
        return r

    def close(self):
        for p in list(self.execs.values()) + self.loads:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()
        self.nats.close()


def scenario(fn):
    if args.only and args.only not in fn.__name__:
        return
    r = Run(fn.__name__)
    t0 = time.monotonic()
    try:
        fn(r)
    except BaseException:
        print("scenario %s failed; logs in %s" % (fn.__name__, r.dir))
        raise
    finally:
        r.close()
    print("%s: passed in %.1f s" % (fn.__name__, time.monotonic() - t0))


def start3(r):
    for i in "abc":
        r.start_exec(i)
    r.wait_owners("abc")


def kill9_owner(r):
    start3(r)
    r.start_load("load", seconds=12)
    time.sleep(3)  # load running before the kill (not a synchronisation)
    victim = r.execs["b"]
    assert r.held("b"), "b holds no partition"
    t_kill = time.monotonic()
    victim.kill()
    victim.wait()
    r.wait_owners("ac", timeout=TTL / 1000 * 2 + 10)
    print("kill9_owner: partitions of b taken over in %.1f s" % (time.monotonic() - t_kill))
    print("kill9_owner: load", r.finish_load())
    rep = r.check()
    assert rep.runs > 0 and len(rep.accepted) > 100, rep.summary()


scenario(kill9_owner)
