"""submit() returns a concurrent.futures.Future; result() waits for parexd's answer."""

import parex
from _addr import ADDR

with parex.Client(ADDR) as pool:
    future = pool.submit("square", "user-42", 12)
    print("result:", future.result(timeout=10))
    print("ran on worker", type(future.worker).__name__, "after", future.queue_ms >= 0 and "queueing")

# Output:
# result: 144
# ran on worker int after queueing
