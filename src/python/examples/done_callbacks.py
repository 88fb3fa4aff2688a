"""Done callbacks run on the client's reader thread as answers arrive, and for one key in the
order the requests were submitted."""

import threading

import parex
from _addr import ADDR

seen: dict[str, list[int]] = {}
lock = threading.Lock()


def record(future):
    with lock:
        seen.setdefault(future.key, []).append(future.result())


with parex.Client(ADDR) as pool:
    for i in range(15):
        pool.submit("echo", "account-%d" % (i % 3), i).add_done_callback(record)
# Leaving the with block waited for every request (shutdown(wait=True)).
for key in sorted(seen):
    print(key, seen[key])

# Output:
# account-0 [0, 3, 6, 9, 12]
# account-1 [1, 4, 7, 10, 13]
# account-2 [2, 5, 8, 11, 14]
