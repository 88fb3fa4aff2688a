"""libparex as a user gets it: `cmake --install` into a fresh prefix gives lib/libparex.so, the
headers and lib/pkgconfig/parex.pc; the README's example (src/libparex/example.c) builds with
`pkg-config --cflags --libs parex` alone and runs against a real daemon, and a program using the
libuv adapter header compiles too.

    python3 test_install.py --parexd PATH --parexctl PATH --build-dir DIR
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "integration"))
import pxharness as px  # noqa: E402

ROOT = os.path.join(HERE, "..", "..", "..")
BUILD = None


class Install(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="libparex-install-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def run_ok(self, *argv, **kw):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)
        self.assertEqual(p.returncode, 0, "%s\n%s%s" % (" ".join(argv), p.stdout, p.stderr))
        return p.stdout

    def test_install_and_build_with_pkg_config(self):
        prefix = os.path.join(self.tmp, "prefix")
        self.run_ok("cmake", "--install", BUILD, "--prefix", prefix)
        libs = [os.path.join(dp, f) for dp, _, fs in os.walk(prefix) for f in fs]
        self.assertTrue(any(p.endswith("/libparex.so") for p in libs), libs)
        self.assertTrue(any(p.endswith("/pkgconfig/parex.pc") for p in libs), libs)
        self.assertTrue(os.path.exists(os.path.join(prefix, "include/parex/client.h")))
        self.assertTrue(os.path.exists(os.path.join(prefix, "include/parex/adapters/libuv.h")))
        pc_dir = os.path.dirname([p for p in libs if p.endswith("parex.pc")][0])
        env = dict(os.environ, PKG_CONFIG_PATH=pc_dir)
        flags = self.run_ok("pkg-config", "--cflags", "--libs", "parex", env=env).split()
        exe = os.path.join(self.tmp, "example")
        self.run_ok("cc", os.path.join(ROOT, "src/libparex/example.c"), *flags, "-o", exe)
        # The libuv adapter compiles against the installed headers.
        uv = os.path.join(self.tmp, "uv.c")
        with open(uv, "w") as f:
            f.write("#include <parex/adapters/libuv.h>\nint main(void) {\n"
                    "    uv_loop_t *l = uv_default_loop();\n"
                    "    parex_async_t *ac = parex_async_connect(\"127.0.0.1:1\", NULL);\n"
                    "    int rc = parex_libuv_attach(l, ac);\n"
                    "    parex_async_free(ac);\n    return rc < 0;\n}\n")
        uvflags = self.run_ok("pkg-config", "--cflags", "--libs", "parex", "libuv", env=env)
        self.run_ok("cc", "-Wall", "-Werror", uv, *uvflags.split(), "-o", uv + ".out")
        libdir = os.path.dirname([p for p in libs if p.endswith("/libparex.so")][0])
        with px.Daemon() as d:
            out = self.run_ok(exe, d.addr, env=dict(env, LD_LIBRARY_PATH=libdir))
        self.assertEqual(out, 'ok {"n":1}\n100 of 100 ok\n')


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    args, rest = ap.parse_known_args()
    BUILD = os.path.abspath(args.build_dir)
    sys.argv = [sys.argv[0]] + rest
    px.main()
