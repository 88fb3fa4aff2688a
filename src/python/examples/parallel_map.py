"""Parallel map preserving input order: the results come back in the order of the inputs,
whatever order parexd finished them in."""

import parex
from _addr import ADDR

with parex.Client(ADDR) as pool:
    numbers = range(1, 11)
    keys = ["user-%d" % (n % 3) for n in numbers]  # same key: one at a time, in order
    print(list(pool.map("square", keys, numbers)))

# Output:
# [1, 4, 9, 16, 25, 36, 49, 64, 81, 100]
