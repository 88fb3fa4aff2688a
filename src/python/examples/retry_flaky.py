"""Retrying rejections: parexd turns away a key with more than max_queued_per_key requests
in flight (key_busy, with retry_after_ms). Retry waits that long plus jitter and sends again;
it never retries a failure, which may have run."""

import parex
from _addr import ADDR

with parex.Client(ADDR) as pool:
    burst = [pool.submit("sleep", "hot-key", {"ms": 5}) for _ in range(20)]
    rejected = [f for f in burst if isinstance(f.exception(), parex.KeyBusy)]
    print("without retry:", len(rejected) > 0 and "some rejected key_busy")

with parex.Client(ADDR, retry=parex.Retry(attempts=50, base=0.005, cap=0.1)) as pool:
    burst = [pool.submit("sleep", "hot-key", {"ms": 5}) for _ in range(20)]
    print("with Retry:", sum(f.result() == {"slept_ms": 5} for f in burst), "of 20 done,",
          "retried:", any(f.attempts > 1 for f in burst))
    failing = pool.submit("fail", "hot-key", {"message": "not idempotent"})
    print("a failure is not retried:", type(failing.exception()).__name__, failing.attempts)

# Output:
# without retry: some rejected key_busy
# with Retry: 20 of 20 done, retried: True
# a failure is not retried: HandlerError 1
