"""`cmake --install` for the prefix actually used: the installed unit's ExecStart names the
installed binary and config (not the configure-time prefix), for --prefix DIR and for a staged
/usr install (DESTDIR, as the package does it); the installed unit passes systemd-analyze
verify; a reinstall keeps an edited config.

    python3 test_install.py --build DIR
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

BUILD = None


def install(prefix, destdir=None):
    env = dict(os.environ)
    env.pop("DESTDIR", None)
    if destdir:
        env["DESTDIR"] = destdir
    p = subprocess.run(["cmake", "--install", BUILD, "--prefix", prefix], env=env,
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise AssertionError("cmake --install --prefix %s failed:\n%s%s"
                             % (prefix, p.stdout, p.stderr))
    return p.stdout


def exec_start(unit_path):
    with open(unit_path) as f:
        return re.findall(r"^ExecStart=(.*)$", f.read(), re.M)


class InstallTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="parexd-install-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_prefix_dir(self):
        d = os.path.join(self.dir, "prefix")
        install(d)
        unit = os.path.join(d, "lib/systemd/system/parexd.service")
        self.assertEqual(exec_start(unit),
                         ["%s/bin/parexd --config %s/etc/parexd/parexd.json" % (d, d)])
        for f in ("bin/parexd", "bin/parexctl", "bin/parex-bench"):
            self.assertTrue(os.access(os.path.join(d, f), os.X_OK), f)
        for f in ("etc/parexd/parexd.json", "lib/systemd/system/parexd.socket",
                  "share/man/man8/parexd.8.gz", "share/man/man5/parexd.json.5.gz",
                  "share/parexd/parexd-rules.yml", "include/parex/plugin.h"):
            self.assertTrue(os.path.isfile(os.path.join(d, f)), f)
        # systemd reads the installed unit as it is: ExecStart's binary exists, no warning.
        p = subprocess.run(["systemd-analyze", "verify", "--man=no", unit,
                            os.path.join(d, "lib/systemd/system/parexd.socket")],
                           capture_output=True, text=True, timeout=60, cwd=self.dir)
        self.assertEqual((p.returncode, (p.stdout + p.stderr).strip()), (0, ""))

    def test_staged_usr_install_names_the_system_paths(self):
        stage = os.path.join(self.dir, "stage")
        install("/usr", destdir=stage)
        self.assertEqual(exec_start(os.path.join(stage, "lib/systemd/system/parexd.service")),
                         ["/usr/bin/parexd --config /etc/parexd/parexd.json"])
        self.assertTrue(os.path.isfile(os.path.join(stage, "etc/parexd/parexd.json")))
        self.assertTrue(os.path.isfile(os.path.join(stage, "usr/bin/parexd")))

    def test_reinstall_keeps_an_edited_config(self):
        d = os.path.join(self.dir, "prefix")
        install(d)
        conf = os.path.join(d, "etc/parexd/parexd.json")
        with open(conf, "w") as f:
            f.write('{"workers": 3}\n')
        out = install(d)
        with open(conf) as f:
            self.assertEqual(f.read(), '{"workers": 3}\n')
        self.assertIn("Keeping: " + conf, out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    args, rest = ap.parse_known_args()
    BUILD = os.path.abspath(args.build)
    unittest.main(argv=[sys.argv[0], "-v"] + rest)
