"""shutdown(wait=True) lets every request finish; shutdown(cancel_futures=True) cancels what
parexd still has queued; a submit after shutdown raises RuntimeError."""

import parex
from _addr import ADDR

pool = parex.Client(ADDR)
batch = [pool.submit("sleep", "batch", {"ms": 20}) for _ in range(5)]
pool.shutdown(wait=True)
print("finished:", sum(f.done() and not f.cancelled() for f in batch), "of", len(batch))
try:
    pool.submit("echo", "batch")
except RuntimeError as e:
    print("after shutdown:", e)

pool = parex.Client(ADDR)
batch = [pool.submit("sleep", "batch", {"ms": 300}) for _ in range(5)]
while not any(w["current_key"] == "batch" for w in pool.stats()["workers"]):
    pass  # until the first one runs
pool.shutdown(cancel_futures=True)
print("ran:", sum(not f.cancelled() for f in batch), "cancelled:", sum(f.cancelled() for f in batch))

# Output:
# finished: 5 of 5
# after shutdown: cannot submit to a parex.Client after shutdown()
# ran: 1 cancelled: 4
