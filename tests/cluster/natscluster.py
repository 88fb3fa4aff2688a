"""A JetStream cluster of real nats-server processes on loopback for the cluster tests.

NatsCluster(n) picks free ports, writes one config per node in a temporary directory, starts
them, waits until every node's /healthz says JetStream is ready, and stops them all on close()
(also when the test fails: use it as a context manager). Nodes can be killed, stopped (SIGSTOP)
and restarted on the same ports and data directories."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(pid):
    """SIGSTOP pid and return once every one of its threads is stopped: kill() returns before a
    thread running on another CPU has stopped, and what it does in between is not "after the
    pause"."""
    os.kill(pid, signal.SIGSTOP)

    def stopped():
        for t in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
                    if f.read().rsplit(")", 1)[1].split()[0] not in "Tt":
                        return False
            except FileNotFoundError:
                pass  # a thread that ended
        return True
    wait_for(stopped, 10, "process %d to stop" % pid)


def wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


class NatsCluster:
    def __init__(self, n=3, binary="nats-server", max_payload=None):
        self.n = n
        self.binary = shutil.which(binary) or "/usr/sbin/nats-server"
        # The ports are picked free, then bound by nats-server: another process may take one in
        # between (an outgoing connection's ephemeral port). A node that exits at start-up gets
        # the whole cluster set up again on new ports, twice at most.
        for attempt in range(3):
            self.dir = tempfile.mkdtemp(prefix="px-nats-")
            self.procs = [None] * n
            try:
                self._setup(max_payload)
                return
            except BaseException:
                died = any(p and p.poll() is not None for p in self.procs)
                self.close()
                if not died or attempt == 2:
                    raise

    def _setup(self, max_payload):
        n = self.n
        self.client = [free_port() for _ in range(n)]
        self.route = [free_port() for _ in range(n)]
        self.http = [free_port() for _ in range(n)]
        routes = ", ".join("nats-route://127.0.0.1:%d" % p for p in self.route)
        for i in range(n):
            conf = (
                "server_name: n%d\nlisten: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\n"
                "jetstream { store_dir: %s/n%d, max_memory_store: 64MB, max_file_store: 1GB }\n"
                % (i + 1, self.client[i], self.http[i], self.dir, i + 1))
            if max_payload:
                conf += "max_payload: %d\n" % max_payload
            if n > 1:
                conf += "cluster { name: parex, listen: 127.0.0.1:%d, routes: [%s] }\n" % (
                    self.route[i], routes)
            with open(self.conf(i), "w") as f:
                f.write(conf)
        for i in range(n):
            self.start(i)
        self.wait_ready()

    def conf(self, i):
        return os.path.join(self.dir, "n%d.conf" % (i + 1))

    def urls(self):
        return ",".join("nats://127.0.0.1:%d" % p for p in self.client)

    def start(self, i):
        log = open(os.path.join(self.dir, "n%d.log" % (i + 1)), "ab")
        self.procs[i] = subprocess.Popen([self.binary, "-c", self.conf(i)], stdout=log,
                                         stderr=subprocess.STDOUT)
        log.close()

    def healthy(self, i):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.http[i],
                                        timeout=1) as r:
                return json.load(r).get("status") == "ok"
        except Exception:
            return False

    def wait_ready(self, nodes=None, timeout=30):
        nodes = range(self.n) if nodes is None else nodes
        for i in nodes:
            def ok():
                assert self.procs[i].poll() is None, "nats-server n%d exited (exit %s); see %s" % (
                    i + 1, self.procs[i].returncode, self.dir)
                return self.healthy(i)
            wait_for(ok, timeout, "nats-server n%d to be healthy" % (i + 1))

    def kill(self, i, sig=signal.SIGKILL):
        p = self.procs[i]
        if p and p.poll() is None:
            p.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                p.wait(10)

    def close(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in self.procs:
            if p:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
