"""The program that parexd's exec handler runs in test_handlers.py.

    handler_prog.py MODE [STATE_DIR]

It reads the request parexd writes on stdin ({"id", "key", "op", "payload"}) and behaves as MODE
says. STATE_DIR is a directory of the test where the program leaves evidence (pid files, attempt
counters, markers) for the test to check. Python 3 standard library only.

Modes:
  json    exit 0 with a JSON object: the request, the environment, argv and the fds open beyond
          0, 1 and 2 (none should have leaked from the daemon)
  text    exit 0 with a line that is not JSON
  exit    write payload["stderr"] to stderr, exit with payload["status"]
  signal  kill itself with payload["signal"]
  big     write payload["bytes"] bytes of output, then exit 0
  orphan  ignore SIGTERM, fork a child that ignores it too; both write their pid to
          STATE_DIR/{parent,child}.pid and then sleep forever
  sweep   fork a child that closes stdout/stderr, writes STATE_DIR/swept.pid and sleeps forever;
          the parent exits 0 at once (parexd must sweep the child's process group)
  gate    writes STATE_DIR/ID.started, waits until STATE_DIR/payload["gate"] exists (at most
          10 s), then prints {"gated": ID}
  mark    writes STATE_DIR/ID.ran and prints {"ran": ID}
  sleep   sleeps payload["ms"] ms, then prints {"slept": ID}
"""

import json
import os
import signal
import sys
import time


def write_file(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def open_fds():
    out = []
    for fd in range(3, 1024):
        try:
            os.fstat(fd)
        except OSError:
            continue
        out.append(fd)
    return out


def main():
    mode = sys.argv[1]
    state = sys.argv[2] if len(sys.argv) > 2 else None
    fds = open_fds()  # before this program opens anything of its own
    req = json.loads(sys.stdin.readline())
    p = req.get("payload") or {}
    rid = str(req["id"])

    if mode == "json":
        print(json.dumps({"got": req, "env": dict(os.environ), "argv": sys.argv[1:],
                          "fds": fds}))
    elif mode == "text":
        print("plain words, not JSON")
    elif mode == "exit":
        sys.stderr.write(p.get("stderr", ""))
        sys.stderr.flush()
        sys.exit(p["status"])
    elif mode == "signal":
        os.kill(os.getpid(), p["signal"])
        time.sleep(10)
    elif mode == "big":
        sys.stdout.write("x" * p["bytes"])
        sys.stdout.flush()
    elif mode == "orphan":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        pid = os.fork()
        if pid == 0:
            write_file(os.path.join(state, "child.pid"), str(os.getpid()))
            while True:
                time.sleep(3600)
        write_file(os.path.join(state, "parent.pid"), str(os.getpid()))
        while True:
            time.sleep(3600)
    elif mode == "sweep":
        pid = os.fork()
        if pid == 0:
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            write_file(os.path.join(state, "swept.pid"), str(os.getpid()))
            while True:
                time.sleep(3600)
        # Exit only once the child has let go of stdout, so the daemon sees EOF, not a timeout.
        path = os.path.join(state, "swept.pid")
        end = time.monotonic() + 10
        while not os.path.exists(path) and time.monotonic() < end:
            time.sleep(0.005)
        print(json.dumps({"parent": os.getpid()}))
    elif mode == "gate":
        write_file(os.path.join(state, rid + ".started"), "")
        gate = os.path.join(state, p["gate"])
        end = time.monotonic() + 10
        while not os.path.exists(gate) and time.monotonic() < end:
            time.sleep(0.005)  # the program's own wait; the test controls it through the file
        print(json.dumps({"gated": req["id"]}))
    elif mode == "mark":
        write_file(os.path.join(state, rid + ".ran"), "")
        print(json.dumps({"ran": req["id"]}))
    elif mode == "sleep":
        time.sleep(p["ms"] / 1000.0)
        print(json.dumps({"slept": req["id"]}))
    else:
        sys.stderr.write("unknown mode %s\n" % mode)
        sys.exit(2)


if __name__ == "__main__":
    main()
