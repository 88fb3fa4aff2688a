"""parex: clients for parexd, the partitioned request-executor daemon.

``Client`` is a concurrent.futures.Executor (threads); ``AsyncClient`` the same for asyncio.
Work runs in parexd, one request at a time per key, in order; errors are in ``parex.errors``.
"""

from . import errors
from ._wire import Retry
from .aio import AsyncClient
from .client import Client, Future
from .errors import (Cancelled, ConnectFailed, ConnectionBusy, ConnectionLost, DeadlineExceeded,
                     Failed, HandlerError, HandlerTimeout, Invalid, KeyBusy, KeyParked, Overloaded,
                     ParexError, QueueFull, Rejected, ShuttingDown, Unauthorized, UnknownOp,
                     WorkerStalled)

__all__ = ["AsyncClient", "Cancelled", "Client", "ConnectFailed", "ConnectionBusy",
           "ConnectionLost", "DeadlineExceeded", "Failed", "Future", "HandlerError",
           "HandlerTimeout", "Invalid", "KeyBusy", "KeyParked", "Overloaded", "ParexError",
           "QueueFull", "Rejected", "Retry", "ShuttingDown", "Unauthorized", "UnknownOp",
           "WorkerStalled", "errors"]
__version__ = "0.1.0"
