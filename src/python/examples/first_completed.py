"""wait(FIRST_COMPLETED), then cancel the rest: parexd takes the still-queued ones out of its
queue (cancel() is True for them); one already running finishes."""

from concurrent.futures import FIRST_COMPLETED, wait

import parex
from _addr import ADDR

with parex.Client(ADDR) as pool:
    fast = pool.submit("sleep", "mirror-a", {"ms": 10})
    slow = [pool.submit("sleep", "mirror-b", {"ms": 500}) for _ in range(3)]
    done, rest = wait([fast] + slow, return_when=FIRST_COMPLETED)
    print("first:", done == {fast}, fast.result())
    verdicts = [f.cancel() for f in slow]
    print("queued ones cancelled:", verdicts[1:], [f.cancelled() for f in slow[1:]])

# Output:
# first: True {'slept_ms': 10}
# queued ones cancelled: [True, True] [True, True]
