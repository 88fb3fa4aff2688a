"""Configuration and command line: a bad config file or flag value stops start-up with exit
status 78 and exactly one line on stderr naming the key (and the file); usage mistakes exit 64;
--help and --version exit 0; flags override the file; each key takes effect."""

import json
import os
import re
import subprocess
import tempfile
import unittest

import pxharness as px

HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED_CONFIG = os.path.join(HERE, "..", "..", "config", "parexd.json")


def run_parexd(*args, config=None, timeout=5, env=None):
    """Runs parexd to completion; returns (status, stdout, stderr lines, config path).
    A daemon that starts instead of failing is killed at the timeout and fails the test.
    env: variables for parexd (PAREXD_CONFIG names an empty config unless given)."""
    with tempfile.TemporaryDirectory(prefix="parexd-cfg-") as tmp:
        path = None
        argv = [px.PAREXD]
        if config is not None:
            path = os.path.join(tmp, "bad.json")
            with open(path, "w") as f:
                f.write(config if isinstance(config, str) else json.dumps(config))
            argv += ["--config", path]
        e = dict(os.environ, PAREXD_CONFIG=os.path.join(tmp, "empty.json"))
        with open(e["PAREXD_CONFIG"], "w") as f:
            f.write("{}")
        e.update(env or {})
        try:
            p = subprocess.run(argv + list(args), capture_output=True, timeout=timeout,
                               stdin=subprocess.DEVNULL, cwd=tmp, env=e)
        except subprocess.TimeoutExpired:
            raise AssertionError("parexd %r with config %r did not exit: it accepted the "
                                 "configuration" % (args, config))
        return p.returncode, p.stdout.decode(), p.stderr.decode().splitlines(), path


def listening_ports(pid):
    """The TCP ports process pid listens on, from /proc (for a daemon told to log nothing)."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    with open("/proc/%d/net/tcp" % pid) as f:
        for row in f.read().splitlines()[1:]:
            col = row.split()
            if col[3] == "0A" and col[9] in inodes:  # LISTEN
                ports.append(int(col[1].split(":")[1], 16))
    return ports


def request_port(pid):
    """Which of the daemon's listening ports answers protocol lines (the other is HTTP)."""
    for port in listening_ports(pid):
        try:
            with px.Conn("127.0.0.1", port, timeout=1) as c:
                if c.request({"control": "stats"}).get("status") == "ok":
                    return port
        except (OSError, EOFError, TimeoutError, AssertionError):
            continue
    return None


class BadConfigTest(unittest.TestCase):
    def assertOneLineConfigError(self, cfg, key, flags=("--listen", "127.0.0.1:0",
                                                        "--metrics-listen", "127.0.0.1:0")):
        rc, out, err, path = run_parexd(*flags, config=cfg)
        self.assertEqual(rc, 78, "config %r: exit %r, stderr %r" % (cfg, rc, err))
        self.assertEqual(out, "")
        self.assertEqual(len(err), 1, "config %r: stderr should be one line: %r" % (cfg, err))
        line = err[0]
        if key:
            self.assertIn(key, line, "config %r: %r does not name the key" % (cfg, line))
        self.assertIn(path, line, "config %r: %r does not name the file" % (cfg, line))

    def test_unknown_key(self):
        for cfg, key in [({"wrokers": 4}, "wrokers"), ({"workers": 2, "queue": 10}, "queue"),
                         ({"Listen": "127.0.0.1:0"}, "Listen")]:
            with self.subTest(cfg=cfg):
                self.assertOneLineConfigError(cfg, "'%s'" % key)

    def test_wrong_type(self):
        for cfg in [{"workers": "4"}, {"workers": 2.5}, {"queue_capacity": True},
                    {"max_line_bytes": [4096]}, {"max_connections": {}},
                    {"drain_timeout_ms": None}, {"log_level": 6}, {"listen": 7400},
                    {"metrics_listen": ["127.0.0.1", 9400]}]:
            with self.subTest(cfg=cfg):
                self.assertOneLineConfigError(cfg, "'%s'" % next(iter(cfg)))

    def test_out_of_range(self):
        for cfg in [{"workers": -1}, {"workers": 1025}, {"queue_capacity": 0},
                    {"queue_capacity": 16777217}, {"max_line_bytes": 63},
                    {"max_connections": 0}, {"drain_timeout_ms": -1},
                    {"drain_timeout_ms": 3600001}, {"log_level": "chatty"},
                    {"listen": "127.0.0.1:70000"}, {"listen": "no-port-here"},
                    {"metrics_listen": ":9400"}]:
            with self.subTest(cfg=cfg):
                self.assertOneLineConfigError(cfg, "'%s'" % next(iter(cfg)))

    def test_listen_must_be_a_numeric_address(self):
        # README: listen is a numeric address. A host name is an invalid value of the key and
        # must be reported like any other: one line, the key and the file, exit 78.
        self.assertOneLineConfigError({"listen": "localhost:0"}, "'listen'",
                                      flags=("--metrics-listen", "127.0.0.1:0"))
        self.assertOneLineConfigError({"metrics_listen": "localhost:0"}, "'metrics_listen'",
                                      flags=("--listen", "127.0.0.1:0"))

    def test_not_json_or_missing_file(self):
        for cfg in ["{\"workers\": 4", "", "[1, 2]", "{\"workers\": 4, \"workers\": 8}"]:
            with self.subTest(cfg=cfg):
                self.assertOneLineConfigError(cfg, None)
        rc, out, err, _ = run_parexd("--config", "/nonexistent/parexd.json")
        self.assertEqual(rc, 78)
        self.assertEqual(len(err), 1, err)
        self.assertIn("/nonexistent/parexd.json", err[0])


class FlagTest(unittest.TestCase):
    def test_bad_flag_values_exit_64_naming_the_key(self):
        # README: a usage mistake, a bad flag value included, exits 64 (EX_USAGE); 78 is for
        # the config file. 1e3 is not an integer, even though it is a number.
        for flags, key in [(["--workers", "abc"], "workers"), (["--workers", "-1"], "workers"),
                           (["--workers", "1025"], "workers"), (["--workers", "2.5"], "workers"),
                           (["--queue-capacity", "0"], "queue_capacity"),
                           (["--log-level", "loud"], "log_level"),
                           (["--listen", "nowhere"], "listen"),
                           (["--metrics-listen", "127.0.0.1:99999"], "metrics_listen"),
                           (["--workers", "1e3"], "workers")]:
            with self.subTest(flags=flags):
                # Safe ports first, so a wrongly accepted value never binds a fixed port.
                rc, out, err, _ = run_parexd("--listen", "127.0.0.1:0", "--metrics-listen",
                                             "127.0.0.1:0", *flags)
                self.assertEqual(rc, 64, (flags, err))
                self.assertEqual(len(err), 1, err)
                self.assertIn(key, err[0])

    def test_usage_errors_exit_64(self):
        for flags in [["--bogus"], ["unexpected-argument"], ["--workers"], ["-x"]]:
            with self.subTest(flags=flags):
                rc, out, err, _ = run_parexd(*flags)
                self.assertEqual(rc, 64, (flags, err))
                self.assertTrue(err, "a usage error says something")

    def test_help(self):
        for flag in ("--help", "-h"):
            rc, out, err, _ = run_parexd(flag)
            self.assertEqual(rc, 0)
            self.assertEqual(err, [])
            self.assertIn("usage", out.lower())
            for f in ("--config", "--listen", "--metrics-listen", "--workers", "--queue-capacity",
                      "--log-level", "--help", "--version"):
                self.assertIn(f, out)

    def test_help_lists_every_key_from_the_table(self):
        # --help is rendered from the key table: every key --print-config knows is listed with
        # its default, and the built-in default config path is named.
        rc, out, err, _ = run_parexd("--help")
        self.assertEqual(rc, 0)
        rc, printed, err, _ = run_parexd("--print-config")
        self.assertEqual(rc, 0, err)
        for key, value in json.loads(printed).items():
            self.assertRegex(out, r"\n  %s +" % key, "--help does not list %s" % key)
        self.assertRegex(out, r"else /\S+/parexd/parexd\.json if present")

    def test_version(self):
        rc, out, err, _ = run_parexd("--version")
        self.assertEqual(rc, 0)
        self.assertRegex(out, r"^parexd \d+\.\d+\.\d+")


class DefaultConfigTest(unittest.TestCase):
    """issue 18 item 1: without --config a config file is still read ($PAREXD_CONFIG, else the
    installed default) and validated like any other; a named file that is missing is an error."""

    def write(self, tmp, text):
        path = os.path.join(tmp, "parexd.json")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_env_config_is_read_and_validated(self):
        with tempfile.TemporaryDirectory(prefix="parexd-cfg-") as tmp:
            path = self.write(tmp, '{"workers": 3}')
            with px.Daemon(env={"PAREXD_CONFIG": path}) as d:
                self.assertEqual(len(d.stats()["workers"]), 3)
            self.write(tmp, '{"workers": "bad"}')
            rc, out, err, _ = run_parexd("--listen", "127.0.0.1:0", "--metrics-listen",
                                         "127.0.0.1:0", env={"PAREXD_CONFIG": path})
            self.assertEqual(rc, 78, err)
            self.assertEqual(len(err), 1, err)
            self.assertIn(path, err[0])
            self.assertIn("'workers'", err[0])
            rc, out, err, _ = run_parexd(env={"PAREXD_CONFIG": os.path.join(tmp, "absent")})
            self.assertEqual(rc, 78, err)
            self.assertIn("absent", err[0])

    def in_private_mounts(self, files, *args):
        """Runs parexd ARGS without --config or $PAREXD_CONFIG, in a mount namespace of its own
        where the built-in default config directory (named by --help) holds exactly files
        ({name: text}); the machine's own directory is never touched. Skips where mount
        namespaces are not allowed."""
        rc, out, _, _ = run_parexd("--help")
        path = re.search(r"else (/\S+/parexd\.json) if present", out).group(1)
        confdir = os.path.dirname(path)
        script = ('set -e; d="$1"; s="$2"; shift 2; '
                  'if [ -d "$d" ]; then mount --bind "$s" "$d"; '
                  'else mount -t tmpfs none "$(dirname "$d")"; mkdir "$d"; '
                  'cp -r "$s"/. "$d"/; fi; exec "$@"')
        with tempfile.TemporaryDirectory(prefix="parexd-etc-") as tmp:
            for name, text in files.items():
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(text)
            env = {k: v for k, v in os.environ.items() if k != "PAREXD_CONFIG"}
            try:
                p = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                    script, "sh", confdir, tmp, px.PAREXD] + list(args),
                                   capture_output=True, timeout=10, env=env,
                                   stdin=subprocess.DEVNULL)
            except FileNotFoundError:
                self.skipTest("no unshare(1)")
            if p.returncode != 0 and b"parexd" not in p.stderr:
                self.skipTest("no private mount namespace here: %r" % p.stderr)
        return p.returncode, p.stdout.decode(), p.stderr.decode().splitlines(), path

    def test_installed_default_is_read_when_present(self):
        rc, out, err, path = self.in_private_mounts({"parexd.json": '{"workers": 3}'},
                                                    "--print-config")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)["workers"], 3)
        rc, out, err, path = self.in_private_mounts({"parexd.json": '{"workers": "bad"}'},
                                                    "--print-config")
        self.assertEqual(rc, 78, err)
        self.assertEqual(len(err), 1, err)
        self.assertIn(path, err[0])
        self.assertIn("'workers'", err[0])
        rc, out, err, path = self.in_private_mounts({}, "--print-config")
        self.assertEqual(rc, 0, err)  # absent: the defaults
        self.assertEqual(json.loads(out)["queue_capacity"], 1024)

    def test_print_config_merges_file_flags_and_defaults(self):
        with tempfile.TemporaryDirectory(prefix="parexd-cfg-") as tmp:
            path = self.write(tmp, '{"workers": 3, "log_level": "debug", "auth_token": "%s"}'
                              % ("t" * 20))
            rc, out, err, _ = run_parexd("--print-config", "--queue-capacity", "7",
                                         env={"PAREXD_CONFIG": path})
            self.assertEqual(rc, 0, err)
            cfg = json.loads(out)
            self.assertEqual((cfg["workers"], cfg["queue_capacity"], cfg["log_level"]),
                             (3, 7, "debug"))
            self.assertEqual(cfg["max_line_bytes"], 1048576)  # a default
            self.assertNotIn("t" * 20, out)  # the secret is not printed
            # The printed configuration is itself a valid config (the token aside).
            cfg["auth_token"] = ""
            self.write(tmp, json.dumps(cfg))
            rc, again, err, _ = run_parexd("--print-config", env={"PAREXD_CONFIG": path})
            self.assertEqual(rc, 0, err)
            self.assertEqual(json.loads(again), cfg)

    def test_cross_key_error_names_the_file_and_the_key_set(self):
        # issue 18 item 6
        rc, out, err, path = run_parexd(config={"supervise_interval_ms": 60000})
        self.assertEqual(rc, 78, err)
        self.assertEqual(err, ["parexd: config %s: key 'supervise_interval_ms': 60000 must be "
                               "less than dead_after_ms (10000, its default); lower "
                               "supervise_interval_ms or raise dead_after_ms" % path])


class AddressInUseTest(unittest.TestCase):
    def test_busy_listen_and_metrics_listen_exit_78_alike(self):
        # One rule for an address the config names that cannot be used: one line naming the
        # key, exit 78 (listen once exited 1 while metrics_listen exited 78).
        import socket
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            addr = "127.0.0.1:%d" % busy.getsockname()[1]
            for flags, key in [(["--listen", addr, "--metrics-listen", "127.0.0.1:0"], "listen"),
                               (["--listen", "127.0.0.1:0", "--metrics-listen", addr],
                                "metrics_listen")]:
                with self.subTest(key=key):
                    rc, out, err, _ = run_parexd(*flags)
                    self.assertEqual(rc, 78, err)
                    self.assertEqual(len(err), 1, err)
                    self.assertIn("key '%s'" % key, err[0])
                    self.assertIn(addr, err[0])


class EffectiveConfigTest(unittest.TestCase):
    def test_file_values_take_effect(self):
        cfg = {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "workers": 3,
               "queue_capacity": 5}
        with px.Daemon(config=cfg, listen=None, metrics_listen=None) as d:
            s = d.stats()
            self.assertEqual(len(s["workers"]), 3)
            self.assertEqual({w["queue_capacity"] for w in s["workers"]}, {5})

    def test_flags_override_the_file(self):
        cfg = {"workers": 3, "queue_capacity": 5, "listen": "127.0.0.1:1"}
        with px.Daemon(["--workers", "2", "--queue-capacity", "9"], config=cfg) as d:
            s = d.stats()
            self.assertEqual(len(s["workers"]), 2)
            self.assertEqual({w["queue_capacity"] for w in s["workers"]}, {9})
            self.assertNotEqual(d.port, 1)

    def test_workers_zero_means_two_per_online_cpu(self):
        with px.Daemon(config={"workers": 0}) as d:
            self.assertEqual(len(d.stats()["workers"]), 2 * os.sysconf("SC_NPROCESSORS_ONLN"))

    def test_shipped_default_config_starts(self):
        with px.Daemon(["--config", SHIPPED_CONFIG]) as d:
            s = d.stats()
            self.assertEqual(len(s["workers"]), 2 * os.sysconf("SC_NPROCESSORS_ONLN"))
            self.assertEqual({w["queue_capacity"] for w in s["workers"]}, {1024})

    def test_max_connections(self):
        with px.Daemon(config={"max_connections": 2}) as d:
            a, b = d.connect(), d.connect()
            try:
                for c in (a, b):
                    self.assertEqual(c.request({"key": "mc", "payload": 1})["status"], "ok")
                with d.connect() as c:
                    r = c.recv()
                    self.assertEqual((r["status"], r["error"]["code"]),
                                     ("rejected", "too_many_connections"), r)
                    self.assertEqual(c.wait_eof(), [])
                a.close()

                # A slot is free again once a connection has gone.
                def served():
                    with d.connect() as c:
                        return c.request({"key": "mc", "payload": 2})["status"] == "ok"

                px.wait_for(served, what="a connection accepted after one closed")
            finally:
                a.close()
                b.close()

    def test_max_line_bytes(self):
        with px.Daemon(config={"max_line_bytes": 100}) as d, d.connect() as c:
            c.send({"key": "m", "payload": "x" * 50})
            self.assertEqual(c.recv()["status"], "ok")
            c.send({"key": "m", "payload": "x" * 100})
            self.assertEqual(c.recv()["error"]["code"], "line_too_long")

    def test_log_level_debug_shows_debug_lines(self):
        with px.Daemon(["--log-level", "debug"]) as d:
            c = d.connect()
            self.assertEqual(c.request({"key": "dbg"})["status"], "ok")
            c.reset()  # the daemon's pending read fails with ECONNRESET, logged at debug
            d.wait_log(r"debug: .*connection")

    def test_log_level_error_is_silent(self):
        # log_level from the file: "error" hides the notice-level start and stop lines. The port
        # then has to be found from /proc, since the readiness line is not printed.
        d = px.Daemon(config={"log_level": "error"}, wait_ready=False)
        try:
            port = px.wait_for(lambda: request_port(d.pid), what="the silent daemon listening")
            with px.Conn("127.0.0.1", port) as c:
                self.assertEqual(c.request({"key": "quiet", "payload": 1})["result"], 1)
        finally:
            d.signal()
            rc = d.wait_exit()
            d.kill()
        self.assertEqual(rc, 0)
        self.assertEqual(d.stderr_text(), "")


if __name__ == "__main__":
    px.main()
