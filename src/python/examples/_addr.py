"""Where the examples find parexd: $PAREXD_ADDR, else the default 127.0.0.1:7400."""

import os

ADDR = os.environ.get("PAREXD_ADDR", "127.0.0.1:7400")
