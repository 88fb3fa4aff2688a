"""concurrent.futures.as_completed over parex futures: results as they finish."""

from concurrent.futures import as_completed

import parex
from _addr import ADDR

with parex.Client(ADDR) as pool:
    futures = {pool.submit("sleep", "task-%d" % ms, {"ms": ms}): ms for ms in (10, 150, 300)}
    for future in as_completed(futures, timeout=10):
        print("finished the", futures[future], "ms task:", future.result())

# Output:
# finished the 10 ms task: {'slept_ms': 10}
# finished the 150 ms task: {'slept_ms': 150}
# finished the 300 ms task: {'slept_ms': 300}
