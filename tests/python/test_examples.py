"""Runs every example under src/python/examples/ against a parexd started with the examples'
own config (src/python/examples/parexd.json) and checks that it prints exactly the output
written at the end of its source ("# Output:" block)."""

import json
import os
import subprocess
import sys
import unittest

import pxclient
from pxclient import px

EXAMPLES = os.path.join(pxclient.HERE, "..", "..", "src", "python", "examples")
PACKAGE = os.path.join(pxclient.HERE, "..", "..", "src", "python")


def expected_output(path):
    with open(path) as f:
        lines = f.read().splitlines()
    start = lines.index("# Output:") + 1
    return "".join(ln[2:] + "\n" for ln in lines[start:] if ln.startswith("# "))


class Examples(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(os.path.join(EXAMPLES, "parexd.json")) as f:
            cls.d = px.Daemon(config=json.load(f))

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def run_example(self, name):
        path = os.path.join(EXAMPLES, name)
        env = dict(os.environ, PAREXD_ADDR=self.d.addr, PYTHONPATH=os.path.abspath(PACKAGE))
        p = subprocess.run([sys.executable, "-B", path], env=env, capture_output=True, text=True,
                           timeout=60, cwd=EXAMPLES)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, expected_output(path), p.stderr)


def add_tests():
    for name in sorted(os.listdir(EXAMPLES)):
        if name.endswith(".py") and not name.startswith("_"):
            setattr(Examples, "test_" + name[:-3], lambda self, n=name: self.run_example(n))


add_tests()

if __name__ == "__main__":
    pxclient.main()
