"""The offline install the README shows: a venv with the system's site packages, and
pip install --no-build-isolation --no-index src/python (Debian's python3-venv, python3-setuptools
and python3-wheel; no package index). The installed package, with its py.typed, then runs an
example against a real daemon with no PYTHONPATH."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import pxclient
from pxclient import px

SRC = os.path.join(pxclient.HERE, "..", "..", "src", "python")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


class Install(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="parex-install-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def run_ok(self, *argv, **kw):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)
        self.assertEqual(p.returncode, 0, "%s\n%s%s" % (" ".join(argv), p.stdout, p.stderr))
        return p.stdout

    def test_venv_install_offline(self):
        # A copy, so the build leaves nothing in the source tree.
        src = os.path.join(self.tmp, "python")
        shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                "__pycache__"))
        venv = os.path.join(self.tmp, "venv")
        self.run_ok(PYTHON, "-m", "venv", "--system-site-packages", venv)
        py = os.path.join(venv, "bin", "python")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_INDEX_URL")}
        self.run_ok(os.path.join(venv, "bin", "pip"), "install", "--no-build-isolation",
                    "--no-index", src, env=env)
        where = self.run_ok(py, "-c", "import parex, os; d = os.path.dirname(parex.__file__); "
                            "print(d); print(os.path.exists(os.path.join(d, 'py.typed')))",
                            env=env, cwd=self.tmp)
        path, typed = where.split()
        self.assertTrue(path.startswith(venv), path)
        self.assertEqual(typed, "True")
        with open(os.path.join(src, "examples", "parexd.json")) as f:
            config = json.load(f)
        with px.Daemon(config=config) as d:
            out = self.run_ok(py, "-B", os.path.join(src, "examples", "parallel_map.py"),
                              env=dict(env, PAREXD_ADDR=d.addr), cwd=self.tmp)
        self.assertEqual(out, "[1, 4, 9, 16, 25, 36, 49, 64, 81, 100]\n")


if __name__ == "__main__":
    pxclient.main()
