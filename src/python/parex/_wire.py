"""What both clients share: addresses, request lines, answers, and the retry policy.

Everything here is free of I/O, so the thread client and the asyncio client encode and decode
exactly alike. A request line is built once, checked against the limits parexd would answer
``invalid`` for, and only then sent, so a caller's mistake raises at ``submit``.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Optional, Union

from . import errors

KEY_MAX_BYTES = 256
DEADLINE_MAX_MS = 86400000
DEFAULT_MAX_LINE_BYTES = 1048576

Address = Union[tuple[str, int], str]  # (host, port), or a unix socket path



def _unsupported(o: Any) -> Any:
    raise TypeError("Object of type %s is not JSON serializable" % type(o).__name__)


# Encoding is on every submit's path. json.JSONEncoder.encode builds a new C encoder per call;
# this one is built once (compact, ASCII with \u escapes, no NaN; stateless, so threads share
# it). Without cycle markers a self-containing payload ends in RecursionError, caught below.
try:
    from json.encoder import c_make_encoder as _c_make_encoder
    from json.encoder import encode_basestring_ascii as _json_str
except ImportError:  # a Python without the C accelerator
    _c_make_encoder = None
    from json.encoder import py_encode_basestring_ascii as _json_str
if _c_make_encoder is not None:
    _iterencode = _c_make_encoder(None, _unsupported, _json_str, None, ":", ",", False, False,
                                  False)

    def _encode(o: Any) -> str:
        return "".join(_iterencode(o, 0))
else:
    _encode = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode
# raw_decode skips json.loads' type and encoding checks: parexd sends UTF-8 lines.
_raw_decode = json.JSONDecoder().raw_decode


def parse_address(address: str) -> tuple[str, Address]:
    """("tcp", (host, port)) for HOST:PORT or [v6]:PORT, ("unix", path) for unix:/path."""
    if not isinstance(address, str):
        raise TypeError("address must be a str such as '127.0.0.1:7400' or 'unix:/run/parexd.sock'")
    if address.startswith("unix:"):
        path = address[5:]
        if not path:
            raise ValueError("address %r names no socket path after 'unix:'" % address)
        return "unix", path
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("address %r is not HOST:PORT (port 1-65535) or unix:/path" % address)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return "tcp", (host, int(port))


def check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise errors.Invalid("key must be a str, not %s" % type(key).__name__, code="bad_field")
    n = len(key.encode("utf-8", "surrogatepass"))
    if not 1 <= n <= KEY_MAX_BYTES:
        raise errors.Invalid("key is %d bytes of UTF-8; it must be 1-%d" % (n, KEY_MAX_BYTES),
                             code="bad_field")


def check_deadline(deadline_ms: Any) -> None:
    if deadline_ms is None:
        return
    if (not isinstance(deadline_ms, int) or isinstance(deadline_ms, bool)
            or not 1 <= deadline_ms <= DEADLINE_MAX_MS):
        raise errors.Invalid("deadline_ms %r is not an integer in 1..%d"
                             % (deadline_ms, DEADLINE_MAX_MS), code="bad_field")


def _json(v: Any, what: str) -> str:
    try:
        return _encode(v)
    except (TypeError, ValueError, RecursionError) as e:
        raise errors.Invalid("%s is not JSON: %s" % (what, e), code="bad_field") from None


def _line(text: str, max_line_bytes: int) -> bytes:
    line = text.encode("ascii")
    if len(line) - 1 > max_line_bytes:
        raise errors.Invalid("request line is %d bytes, over max_line_bytes (%d); send a smaller "
                             "payload or raise the limit" % (len(line) - 1, max_line_bytes),
                             code="line_too_long")
    return line


def encode(obj: dict[str, Any], max_line_bytes: int) -> bytes:
    """A control or cancel line, newline included."""
    return _line(_json(obj, "the line") + "\n", max_line_bytes)


def request_line(rid: int, op: str, key: str, payload: Any, deadline_ms: Optional[int],
                 token: Optional[str], max_line_bytes: int) -> bytes:
    """One request line, newline included. Raises Invalid for what parexd would refuse."""
    if not isinstance(op, str) or not op:
        raise errors.Invalid("op must be a non-empty str, not %r" % (op,), code="bad_field")
    check_key(key)
    check_deadline(deadline_ms)
    extra = ""
    if deadline_ms is not None:
        extra = ',"deadline_ms":%d' % deadline_ms
    if token is not None:
        extra += ',"token":' + _json_str(token)
    return _line('{"id":%d,"key":%s,"op":%s,"payload":%s%s}\n'
                 % (rid, _json_str(key), _json_str(op), _json(payload, "payload"), extra),
                 max_line_bytes)


def split_lines(rest: bytes, data: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines of rest + data, and what is left after the last newline."""
    lines = (rest + data if rest else data).split(b"\n")
    return lines, lines.pop()


def decode(line: bytes) -> Optional[dict[str, Any]]:
    """An answer object, or None for a line that is not one (never expected from parexd)."""
    try:
        obj = _raw_decode(line.decode("utf-8"))[0]
    except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
        return None
    return obj if isinstance(obj, dict) else None


@dataclass(frozen=True)
class Retry:
    """Retry policy for rejections (queue_full, key_busy, key_parked, shutting_down...).

    An attempt answered ``rejected`` is sent again after the answer's ``retry_after_ms`` plus a
    full-jitter backoff, ``random(0, min(cap, base * 2**n))`` seconds, up to ``attempts``
    attempts in all. Failures and lost connections are never retried (the request may have run).
    With a ``deadline_ms``, each retry carries the time that is left, and none is made once it
    has passed.
    """

    attempts: int = 5
    base: float = 0.01
    cap: float = 2.0
    retry_unauthorized: bool = False

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("Retry.attempts must be at least 1, not %r" % (self.attempts,))
        if self.base < 0 or self.cap < 0:
            raise ValueError("Retry.base and Retry.cap must not be negative")

    def delay(self, error: errors.ParexError, attempt: int) -> Optional[float]:
        """Seconds to wait before attempt number attempt+1 after error, or None: give up."""
        if not isinstance(error, errors.Rejected) or attempt >= self.attempts:
            return None
        if isinstance(error, errors.Unauthorized) and not self.retry_unauthorized:
            return None
        after = (error.retry_after_ms or 0) / 1000.0
        return after + random.uniform(0.0, min(self.cap, self.base * (2 ** (attempt - 1))))
