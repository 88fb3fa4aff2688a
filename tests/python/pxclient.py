"""What the parex client suites share: the package and the daemon harness on the path, and a
daemon started with a given config. Run a suite as
    python3 test_x.py --parexd PATH --parexctl PATH [unittest arguments]
"""

import os
import shutil
import tempfile
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "src", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import pxharness as px  # noqa: E402

# The suites use the built-in sleep and fail, which parexd serves only when asked to.
px.SETTINGS.update(builtin_test_ops=True)


def daemon(workers=2, **config):
    """A parexd on port 0 with workers and config's keys (and px.SETTINGS)."""
    return px.Daemon(["--workers", str(workers)], config=dict(config))


main = px.main


def unix_socket_path(tc):
    """A socket path in a temporary directory that tc removes when it ends."""
    tmp = tempfile.mkdtemp(prefix="parex-client-")
    tc.addCleanup(shutil.rmtree, tmp, True)
    return os.path.join(tmp, "parexd.sock")
