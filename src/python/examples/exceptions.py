"""A failed request raises its error from result(): one class per answer code, with the code,
the message and the whole answer."""

import parex
from _addr import ADDR

with parex.Client(ADDR) as pool:
    for op, payload, kw in (("fail", {"message": "disk full"}, {}),
                            ("no-such-op", None, {}),
                            ("sleep", {"ms": 2000}, {"deadline_ms": 20})):
        future = pool.submit(op, "job-1", payload, **kw)
        try:
            future.result()
        except parex.Failed as e:  # the handler ran (or its deadline passed) without a result
            print("failed:", type(e).__name__, e.code, e.response["status"])
            if e.code == "handler_error":
                print("  message from the handler:", e.message)
        except parex.Invalid as e:  # parexd would not take it (also a ValueError)
            print("invalid:", type(e).__name__, e.code)
    try:
        pool.submit("echo", "k" * 300)  # checked before anything is sent
    except ValueError as e:
        print("refused at submit:", e.code)

# Output:
# failed: HandlerError handler_error failed
#   message from the handler: disk full
# invalid: UnknownOp unknown_op
# failed: DeadlineExceeded deadline_exceeded failed
# refused at submit: bad_field
