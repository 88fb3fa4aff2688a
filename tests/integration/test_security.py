"""Security defaults: both listeners bind loopback unless told otherwise; the Unix-domain
listener has the configured file mode, serves requests, is removed at exit and never touches a
path that is not its own socket; auth_token rejects a missing or wrong token as
rejected/unauthorized (counted) and accepts the right one, also through parexctl --token; the
metrics endpoint is read-only."""

import json
import os
import re
import socket
import stat
import shutil
import tempfile
import unittest

import pxharness as px
import pxsys

px.SETTINGS.update(builtin_test_ops=True)  # these tests use the built-in sleep and fail

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
TOKEN = "correct-horse-battery-staple-42"


class UnixConn(px.Conn):
    """pxharness.Conn over an AF_UNIX stream socket."""

    def __init__(self, path, timeout=px.TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.timeout = timeout


def non_loopback_ipv4():
    """An IPv4 address of this machine that is not loopback, or None. (A UDP connect sends
    nothing; it only picks the source address a packet would leave from.)"""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))
        addr = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


class LoopbackDefaultTest(unittest.TestCase):
    def start_with_defaults(self, config):
        """Starts parexd with a config file and no address flags; returns (daemon, match of the
        readiness line or None, the startup error line or None)."""
        d = pxsys.SysDaemon(config=config, listen=None, metrics_listen=None, wait_ready=False)
        m = d.wait_log(r"listening for requests on .*metrics on \S+|parexd: .*(in use|cannot).*")
        if "listening for requests" in m.group(0):
            return d, m.group(0), None
        d.wait_exit()
        return d, None, m.group(0)

    def test_request_listener_defaults_to_loopback_7400(self):
        d, ready, err = self.start_with_defaults({"metrics_listen": "127.0.0.1:0"})
        try:
            if ready is None:
                # The port is taken (another parexd?). The error still names the default.
                self.assertIn("'listen': cannot listen on 127.0.0.1:7400", err)
                self.skipTest("port 7400 is in use, so the default listener could not be "
                              "started; its address 127.0.0.1:7400 was checked in the error: "
                              + err)
            self.assertRegex(ready, r"listening for requests on 127\.0\.0\.1:7400,? ")
            with px.Conn("127.0.0.1", 7400) as c:
                self.assertEqual(c.request({"key": "d", "payload": 1})["status"], "ok")
            ext = non_loopback_ipv4()
            if ext:  # not reachable from outside the machine
                with self.assertRaises(OSError):
                    socket.create_connection((ext, 7400), timeout=2).close()
        finally:
            d.stop() if d.proc.poll() is None else d.kill()

    def test_metrics_listener_defaults_to_loopback_9400(self):
        d, ready, err = self.start_with_defaults({"listen": "127.0.0.1:0"})
        try:
            if ready is None:
                self.assertIn("127.0.0.1:9400", err)
                self.skipTest("port 9400 is in use, so the default metrics endpoint could not "
                              "be started; its address 127.0.0.1:9400 was checked in the error: "
                              + err)
            self.assertRegex(ready, r"metrics on 127\.0\.0\.1:9400$")
            st, _, _ = pxsys.http_request("127.0.0.1", 9400, "/healthz")
            self.assertEqual(st, 200)
            ext = non_loopback_ipv4()
            if ext:
                with self.assertRaises(OSError):
                    socket.create_connection((ext, 9400), timeout=2).close()
        finally:
            d.stop() if d.proc.poll() is None else d.kill()

    def test_shipped_config_and_socket_unit_bind_loopback(self):
        with open(os.path.join(SOURCE, "config", "parexd.json")) as f:
            cfg = json.load(f)
        for k in ("listen", "metrics_listen"):
            self.assertRegex(cfg.get(k, "127.0.0.1:"), r"^(127\.0\.0\.1|\[::1\]):\d+$", k)
        with open(os.path.join(SOURCE, "systemd", "parexd.socket")) as f:
            streams = re.findall(r"^ListenStream=(.*)$", f.read(), re.M)
        self.assertTrue(streams)
        for s in streams:
            self.assertRegex(s, r"^(127\.0\.0\.1|\[::1\]):\d+$")


class UnixSocketTest(px.Accounting, unittest.TestCase):
    def setUp(self):
        # Short: a Unix socket path must fit in 108 bytes.
        self.dir = tempfile.mkdtemp(prefix="pxu-", dir="/tmp")
        self.path = os.path.join(self.dir, "parexd.sock")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def daemon(self, mode=None, path=None, **kw):
        cfg = {"listen_unix": path or self.path}
        if mode is not None:
            cfg["listen_unix_mode"] = mode
        return pxsys.SysDaemon(config=cfg, **kw)

    def test_mode_0600_serves_and_is_removed_at_exit(self):
        with self.daemon("0600") as d:
            self.assertIn("unix:" + self.path, d.wait_log(px.LISTEN_RE.pattern).string)
            st = os.lstat(self.path)
            self.assertTrue(stat.S_ISSOCK(st.st_mode))
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
            self.assertEqual(st.st_uid, os.getuid())
            with UnixConn(self.path) as c:
                r = c.request({"key": "u", "id": "one", "payload": {"x": 1}})
                self.assertEqual((r["id"], r["status"], r["result"]), ("one", "ok", {"x": 1}), r)
                c.send(*[{"key": "u%d" % (i % 3), "id": i, "payload": i} for i in range(100)])
                self.assertEqual(sorted(r["id"] for r in c.recv_n(100)), list(range(100)))
                r = c.request({"control": "stats"})
                self.assertEqual(r["result"]["connections"], 1)
                # The same rules as TCP: invalid lines are answered, the connection stays.
                self.assertEqual(c.request({"key": ""})["error"]["code"], "bad_field")
                c.shutdown_write()
                self.assertEqual(c.wait_eof(), [])
            s = d.wait_hstats(lambda s: s["connections"] == 0 and s["in_flight"] == 0, "idle")
            self.assertEqual(s["ok"], 101)
            self.assertAccounting(s)
        self.assertFalse(os.path.lexists(self.path), "socket file left behind at exit")

    def test_other_modes_are_applied_exactly(self):
        for mode, want in (("0640", 0o640), (None, 0o660), ("0666", 0o666), ("0", 0)):
            with self.subTest(mode=mode), self.daemon(mode) as d:
                self.assertEqual(stat.S_IMODE(os.lstat(self.path).st_mode), want)
                if want & 0o600 == 0o600:  # the owner (us) may connect
                    with UnixConn(self.path) as c:
                        self.assertEqual(c.request({"key": "m"})["status"], "ok")
            self.assertFalse(os.path.lexists(self.path))

    def test_stale_socket_is_replaced(self):
        s = socket.socket(socket.AF_UNIX)
        s.bind(self.path)
        s.close()  # left behind, nobody listening
        self.assertTrue(os.path.lexists(self.path))
        with self.daemon("0600") as d, UnixConn(self.path) as c:
            self.assertEqual(c.request({"key": "stale"})["status"], "ok")
            self.assertEqual(stat.S_IMODE(os.lstat(self.path).st_mode), 0o600)
        self.assertFalse(os.path.lexists(self.path))

    def test_a_path_that_is_not_a_socket_is_left_alone(self):
        with open(self.path, "w") as f:
            f.write("precious\n")
        d = self.daemon("0600", wait_ready=False)
        rc = d.wait_exit()
        err = d.stderr_text()
        d.kill()
        self.assertEqual(rc, 78, err)
        self.assertIn("listen_unix", err)
        self.assertTrue(os.path.exists(self.path), "parexd deleted a file that was not its "
                                                   "socket: " + err)
        with open(self.path) as f:
            self.assertEqual(f.read(), "precious\n")

    def test_failed_start_keeps_a_running_instance_socket(self):
        # A second parexd with the same listen_unix that cannot start (its TCP port is taken)
        # must not remove the socket of the one that is running.
        with self.daemon("0600") as a:
            b = self.daemon("0600", listen=a.addr, wait_ready=False)
            rc = b.wait_exit()
            b.kill()
            self.assertNotEqual(rc, 0)
            self.assertTrue(os.path.lexists(self.path),
                            "a parexd that failed to start removed the running one's socket")
            with UnixConn(self.path) as c:
                self.assertEqual(c.request({"key": "still"})["status"], "ok")

    def test_live_socket_of_a_running_instance_is_not_taken_over(self):
        # Only a stale socket is replaced: one that a running parexd serves is not.
        with self.daemon("0600") as a:
            b = self.daemon("0600", wait_ready=False)
            try:
                m = b.wait_log(r"listening for requests on|listen_unix.*")
                took_over = "listening for requests" in m.group(0)
                if not took_over:
                    # It refused: it exits on its own with the config status.
                    self.assertEqual(b.wait_exit(), 78)
            finally:
                if b.proc.poll() is None:
                    b.stop()
                else:
                    b.kill()
            self.assertFalse(took_over, "a second parexd took over a live listen_unix socket")
            self.assertTrue(os.path.lexists(self.path))
            with UnixConn(self.path) as c:
                r = c.request({"control": "stats"})
            self.assertEqual(r["result"]["connections"], 1)  # it is a's


class AuthTokenTest(px.Accounting, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="pxa-", dir="/tmp")
        cls.path = os.path.join(cls.dir, "s")
        cls.d = pxsys.SysDaemon(config={"auth_token": TOKEN, "listen_unix": cls.path,
                                        "listen_unix_mode": "0600"})

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        self.base = self.d.wait_hstats(lambda s: s["in_flight"] == 0, "idle")

    def assertUnauthorized(self, r, id_):
        self.assertEqual(r["status"], "rejected", r)
        self.assertEqual(r["error"]["code"], "unauthorized", r)
        self.assertIn("token", r["error"]["message"])
        self.assertEqual(r["id"], id_, r)
        self.assertNotIn("result", r)
        self.assertNotIn(TOKEN, json.dumps(r))  # never echoes the secret

    def test_missing_or_wrong_token_is_rejected_and_counted(self):
        wrong = [None, "", "x", TOKEN[:-1], TOKEN + "x", TOKEN[:-1] + "3", TOKEN.upper(),
                 " " + TOKEN, TOKEN + " ", 42, True, [TOKEN], {"t": TOKEN}]
        n = 0
        for conn in (self.d.connect(), UnixConn(self.path)):
            with conn as c:
                for i, t in enumerate(wrong):
                    req = {"key": "a", "id": "w%d" % i, "payload": 1}
                    if t is not None:
                        req["token"] = t
                    with self.subTest(token=t):
                        self.assertUnauthorized(c.request(req), "w%d" % i)
                    n += 1
                # Every kind of line needs it: control, cancel, each op.
                self.assertUnauthorized(c.request({"control": "stats", "id": "ctl"}), "ctl")
                self.assertUnauthorized(c.request({"cancel": 1, "id": "cx"}), "cx")
                self.assertUnauthorized(c.request({"key": "a", "op": "sleep", "id": "sl",
                                                   "payload": {"ms": 1}}), "sl")
                n += 3
                # The connection is not closed by a rejection: the right token works next.
                r = c.request({"key": "a", "id": "ok", "token": TOKEN, "payload": 2})
                self.assertEqual((r["id"], r["status"], r["result"]), ("ok", "ok", 2), r)
        s = self.d.wait_hstats(lambda s: s["in_flight"] == 0, "idle")
        self.assertEqual(s["rejected_by_reason"]["unauthorized"]
                         - self.base["rejected_by_reason"]["unauthorized"], n)
        self.assertEqual(s["received"] - self.base["received"], n + 2)
        self.assertEqual(s["ok"] - self.base["ok"], 2)
        self.assertAccounting(s)

    def test_right_token_is_served(self):
        with self.d.connect() as c:
            c.send(*[{"key": "k%d" % i, "id": i, "token": TOKEN, "payload": i} for i in range(50)])
            rs = c.recv_n(50)
            self.assertEqual(sorted((r["id"], r["status"]) for r in rs),
                             [(i, "ok") for i in range(50)])
            r = c.request({"control": "stats", "token": TOKEN})
            self.assertEqual(r["status"], "ok", r)
            r = c.request({"key": "k", "op": "sleep", "token": TOKEN, "payload": {"ms": 1}})
            self.assertEqual(r["result"], {"slept_ms": 1}, r)
        s = self.d.wait_hstats(lambda s: s["in_flight"] == 0, "idle")
        self.assertEqual(s["rejected"], self.base["rejected"])

    def test_parexctl_token_from_environment(self):
        env = {"PAREXD_TOKEN": TOKEN}
        rc, out, err = px.run_parexctl("send", "--addr", self.d.addr, "--key", "p", "--payload",
                                       "8", env=env)
        self.assertEqual(rc, 0, (out, err))
        self.assertEqual(json.loads(out)["result"], 8)
        rc, out, err = px.run_parexctl("control", "stats", "--addr", self.d.addr, env=env)
        self.assertEqual(rc, 0, (out, err))
        # Without it, or with a wrong one: the daemon's unauthorized answer, exit 1.
        for e in ({}, {"PAREXD_TOKEN": "wrong-token-wrong-token"}):
            rc, out, err = px.run_parexctl("send", "--addr", self.d.addr, "--key", "p", env=e)
            self.assertEqual(rc, 1, (out, err))
            self.assertEqual(json.loads(out)["error"]["code"], "unauthorized")

    def test_parexctl_token_flag(self):
        # README: `parexctl --token T` (or $PAREXD_TOKEN) adds the token to the lines it builds
        # (send --key and control; lines piped through stdin are the user's own).
        rc, out, err = px.run_parexctl("send", "--addr", self.d.addr, "--key", "p", "--payload",
                                       "7", "--token", TOKEN)
        self.assertEqual(rc, 0, (out, err))
        self.assertEqual(json.loads(out)["result"], 7)
        rc, out, err = px.run_parexctl("control", "stats", "--addr", self.d.addr, "--token",
                                       TOKEN)
        self.assertEqual(rc, 0, (out, err))
        # The flag wins over a wrong token in the environment.
        rc, out, err = px.run_parexctl("send", "--addr", self.d.addr, "--key", "p", "--token",
                                       TOKEN, env={"PAREXD_TOKEN": "wrong-token-wrong-token"})
        self.assertEqual(rc, 0, (out, err))
        rc, out, err = px.run_parexctl("send", "--addr", self.d.addr, "--key", "p", "--token",
                                       "wrong-token-wrong-token")
        self.assertEqual(rc, 1, (out, err))
        self.assertEqual(json.loads(out)["error"]["code"], "unauthorized")


class MetricsReadOnlyTest(unittest.TestCase):
    def test_writes_are_405_and_change_nothing(self):
        with pxsys.SysDaemon() as d:
            with d.connect() as c:
                c.send(*[{"key": "m", "id": i} for i in range(5)])
                c.recv_n(5)
            # The close above reaches the daemon asynchronously: wait for it, not a race.
            px.wait_for(lambda: d.hstats()["connections"] == 0, what="the client's close")
            before = d.hstats()
            for path in ("/", "/metrics", "/stats", "/healthz", "/nope"):
                for method in ("POST", "PUT", "DELETE", "PATCH"):
                    with self.subTest(method=method, path=path):
                        st, hdr, body = d.http(path, method)
                        self.assertEqual(st, 405, body)
                        self.assertEqual(hdr.get("allow"), "GET, HEAD")
            for path in ("/metrics", "/stats", "/healthz"):
                self.assertEqual(d.http(path, "GET")[0], 200)
                st, _, body = d.http(path, "HEAD")
                self.assertEqual((st, body), (200, b""))
            after = d.hstats()
            for k in ("received", "ok", "failed", "rejected", "invalid", "connections"):
                self.assertEqual(after[k], before[k], k)
            # Request lines sent to the metrics port are not requests.
            with socket.create_connection((d.mhost, d.mport), timeout=px.TIMEOUT) as s:
                s.sendall(b'{"key":"m","id":"sneak"}\n\n')
                s.settimeout(px.TIMEOUT)
                data = b""
                try:
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                except (socket.timeout, ConnectionError):
                    pass
            self.assertNotIn(b"sneak", data)
            self.assertEqual(d.hstats()["received"], before["received"])


if __name__ == "__main__":
    px.main()
