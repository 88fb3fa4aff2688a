"""The exceptions parex raises: one class per answer status and code of parexd's protocol.

Every error raised for an answer carries the answer's ``code`` and ``message`` and the whole
decoded answer as ``response``; a rejection also carries ``retry_after_ms`` (None when parexd
gave none). Errors found before anything is sent (a key too long, a payload that is not JSON)
are :class:`Invalid` with ``response`` None.
"""

from __future__ import annotations

from typing import Any, Optional


class ParexError(Exception):
    """Root of every error parex raises."""

    def __init__(self, message: str, *, code: Optional[str] = None,
                 response: Optional[dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.response = response

    def __str__(self) -> str:
        return "%s: %s" % (self.code, self.message) if self.code else self.message


class Rejected(ParexError):
    """parexd refused the request without running it; it may be retried."""

    def __init__(self, message: str, *, code: Optional[str] = None,
                 response: Optional[dict[str, Any]] = None,
                 retry_after_ms: Optional[int] = None) -> None:
        super().__init__(message, code=code, response=response)
        self.retry_after_ms = retry_after_ms


class QueueFull(Rejected):
    """The key's worker queue is full (``queue_full``)."""


class KeyBusy(Rejected):
    """The key has ``max_queued_per_key`` requests in flight (``key_busy``)."""


class KeyParked(Rejected):
    """The key is quarantined after repeated failures (``key_parked``)."""


class ShuttingDown(Rejected):
    """parexd is draining (``shutting_down``)."""


class Unauthorized(Rejected):
    """The token is missing or wrong (``unauthorized``)."""


class ConnectionBusy(Rejected):
    """This connection has parexd's max_in_flight_per_connection in flight
    (``connection_busy``)."""


class Overloaded(Rejected):
    """parexd's shared byte bounds are reached (``overloaded``)."""


class Failed(ParexError):
    """The request was admitted but did not produce a result."""


class HandlerError(Failed):
    """The handler failed (``handler_error``)."""


class HandlerTimeout(Failed):
    """The handler ran past its ``timeout_ms`` (``timeout``)."""


class DeadlineExceeded(Failed):
    """The request's ``deadline_ms`` passed (``deadline_exceeded``)."""


class WorkerStalled(Failed):
    """The request's worker stalled and was replaced (``worker_stalled``)."""


class Cancelled(Failed):
    """parexd cancelled the request (a drain ran out of time, or ``drop``)."""


class Invalid(ParexError, ValueError):
    """The request was malformed (answered ``invalid``, or caught before sending)."""


class UnknownOp(Invalid):
    """No handler of that name (``unknown_op``)."""


class ConnectionLost(ParexError, ConnectionError):
    """The connection dropped with the request in flight. It may still run: it is never resent."""


class ConnectFailed(ParexError, ConnectionError):
    """No connection could be made within ``connect_timeout``."""


_BY_CODE: dict[str, type[ParexError]] = {
    "queue_full": QueueFull, "key_busy": KeyBusy, "key_parked": KeyParked,
    "shutting_down": ShuttingDown, "unauthorized": Unauthorized,
    "connection_busy": ConnectionBusy, "overloaded": Overloaded,
    "handler_error": HandlerError, "timeout": HandlerTimeout,
    "deadline_exceeded": DeadlineExceeded, "worker_stalled": WorkerStalled,
    "cancelled": Cancelled, "unknown_op": UnknownOp,
}
_BY_STATUS: dict[str, type[ParexError]] = {"rejected": Rejected, "failed": Failed,
                                            "invalid": Invalid}


def from_response(resp: dict[str, Any]) -> ParexError:
    """The exception for an answer whose status is not ok."""
    status = resp.get("status")
    err = resp.get("error") if isinstance(resp.get("error"), dict) else {}
    code = err.get("code") if isinstance(err.get("code"), str) else None
    message = err.get("message") if isinstance(err.get("message"), str) else repr(resp)
    base = _BY_STATUS.get(status if isinstance(status, str) else "", ParexError)
    cls = _BY_CODE.get(code or "", base)
    if not issubclass(cls, base):  # a code under an unexpected status: keep the status's class
        cls = base
    if issubclass(cls, Rejected):
        ra = resp.get("retry_after_ms")
        return cls(message, code=code, response=resp,
                   retry_after_ms=ra if isinstance(ra, int) and not isinstance(ra, bool) else None)
    return cls(message, code=code, response=resp)
