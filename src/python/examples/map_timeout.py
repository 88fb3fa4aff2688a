"""map() with a timeout: iterating past it raises TimeoutError, as Executor.map does."""

import parex
from _addr import ADDR

with parex.Client(ADDR) as pool:
    got = []
    try:
        for r in pool.map("sleep", ["report"] * 3, [{"ms": 10}, {"ms": 10}, {"ms": 1000}],
                          timeout=0.5):
            got.append(r)
    except TimeoutError:
        print("timed out after", len(got), "results:", got)

# Output:
# timed out after 2 results: [{'slept_ms': 10}, {'slept_ms': 10}]
