"""A two-stage pipeline: each stage-one result is submitted to stage two from its done
callback, without a thread waiting in between."""

import threading

import parex
from _addr import ADDR

results = []
lock = threading.Lock()
all_done = threading.Event()
N = 6

with parex.Client(ADDR) as pool:

    def stage_two_done(future):
        with lock:
            results.append(future.result())
            if len(results) == N:
                all_done.set()

    def stage_one_done(future):
        squared = future.result()
        pool.submit("echo", future.key, {"n": future.payload, "squared": squared}) \
            .add_done_callback(stage_two_done)

    for n in range(1, N + 1):
        pool.submit("square", "item-%d" % n, n).add_done_callback(stage_one_done)
    all_done.wait(30)
for r in sorted(results, key=lambda r: r["n"]):
    print(r)

# Output:
# {'n': 1, 'squared': 1}
# {'n': 2, 'squared': 4}
# {'n': 3, 'squared': 9}
# {'n': 4, 'squared': 16}
# {'n': 5, 'squared': 25}
# {'n': 6, 'squared': 36}
