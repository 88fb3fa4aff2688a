"""parex.AsyncClient: the same operations as parex.Client for asyncio.

Everything runs on the event loop that opened the client: one pipelined connection, ids
assigned here, one reader task completing futures in answer order. ``submit`` returns an
``asyncio.Future`` at once; ``call`` and ``map`` also wait for room under ``max_in_flight`` and
for the socket's write buffer to drain, so a producer cannot outrun parexd. Cancelling an
asyncio future (``fut.cancel()``, a timed-out ``wait_for``) also sends ``{"cancel": id}``;
``await client.cancel(fut)`` waits for parexd's verdict instead.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any, Optional

from . import errors
from ._wire import (DEFAULT_MAX_LINE_BYTES, Retry, decode, encode, parse_address,
                    request_line, split_lines)


class AsyncFuture(asyncio.Future):  # type: ignore[type-arg]
    """A request's asyncio future, with the same attributes as parex.Future."""

    id: Optional[int] = None
    op: str = ""
    key: str = ""
    payload: Any = None
    worker: Optional[int] = None
    queue_ms: Optional[float] = None
    run_ms: Optional[float] = None
    attempts: int = 0
    response: Optional[dict[str, Any]] = None


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.alive = True
        self.pending: dict[int, asyncio.Future] = {}  # type: ignore[type-arg]
        self.reason = "parexd closed the connection"
        self.task: Optional[asyncio.Task] = None  # type: ignore[type-arg]


class AsyncClient:
    """asyncio client: ``async with AsyncClient(address) as c: await c.call(op, key, payload)``."""

    def __init__(self, address: str = "127.0.0.1:7400", *, token: Optional[str] = None,
                 connect_timeout: float = 5.0, max_in_flight: int = 1024,
                 retry: Optional[Retry] = None, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 reconnect_base: float = 0.05, reconnect_cap: float = 2.0) -> None:
        self._family, self._target = parse_address(address)
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1, not %r" % (max_in_flight,))
        self.address = address
        self.token = token
        self.connect_timeout = connect_timeout
        self.max_in_flight = max_in_flight
        self.retry = retry
        self.max_line_bytes = max_line_bytes
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self._conn: Optional[_Conn] = None
        self._connecting: Optional[asyncio.Future] = None  # type: ignore[type-arg]
        self._ids = itertools.count(1)
        self._held: set[AsyncFuture] = set()
        self._room: Optional[asyncio.Condition] = None
        self._closed = False
        self._failures = 0
        self._next_connect = 0.0

    async def __aenter__(self) -> "AsyncClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- connection --

    async def connect(self) -> None:
        """Connects now if not connected (raises ConnectFailed)."""
        await self._connection()

    async def _connection(self) -> _Conn:
        if self._conn is not None and self._conn.alive:
            return self._conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._dial())
        fut = self._connecting
        try:
            return await asyncio.shield(fut)
        finally:
            if self._connecting is fut and fut.done():
                self._connecting = None

    async def _dial(self) -> _Conn:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        while True:
            wait = self._next_connect - loop.time()
            if wait > 0:
                if self._next_connect > deadline:
                    raise errors.ConnectFailed("cannot connect to parexd at %s: backing off after "
                                               "%d failed attempts" % (self.address, self._failures))
                await asyncio.sleep(wait)  # backoff between connect attempts
            try:
                if self._family == "unix":
                    coro = asyncio.open_unix_connection(self._target, limit=1 << 26)
                else:
                    host, port = self._target  # type: ignore[misc]
                    coro = asyncio.open_connection(host, port, limit=1 << 26)
                r, w = await asyncio.wait_for(coro, max(0.001, deadline - loop.time()))
                break
            except (OSError, asyncio.TimeoutError) as e:
                self._failures += 1
                self._next_connect = loop.time() + random.uniform(
                    0, min(self._reconnect_cap, self._reconnect_base * 2 ** self._failures))
                if loop.time() >= deadline or self._next_connect > deadline:
                    why = getattr(e, "strerror", None) or str(e) or "timed out"
                    raise errors.ConnectFailed("cannot connect to parexd at %s: %s (is it "
                                               "running, and is that its listen address?)"
                                               % (self.address, why)) from e
        self._failures = 0
        self._next_connect = 0.0
        conn = _Conn(r, w)
        conn.task = asyncio.ensure_future(self._read(conn))
        self._conn = conn
        return conn

    async def _read(self, conn: _Conn) -> None:
        rest = b""
        try:
            while True:
                data = await conn.reader.read(262144)
                if not data:
                    break
                lines, rest = split_lines(rest, data)
                for line in lines:
                    resp = decode(line)
                    if resp is None:
                        continue
                    ent = conn.pending.pop(resp.get("id"), None)  # type: ignore[arg-type]
                    if ent is None:
                        if resp.get("id") is None and resp.get("status") != "ok":
                            conn.reason = "parexd: %s" % errors.from_response(resp)
                        continue
                    if isinstance(ent, AsyncFuture):
                        self._answered(ent, resp)
                    elif not ent.done():
                        ent.set_result(resp)
        except OSError as e:
            conn.reason = "connection to parexd lost: %s" % (e.strerror or e)
        finally:
            self._lost(conn)

    def _lost(self, conn: _Conn) -> None:
        conn.alive = False
        if self._conn is conn:
            self._conn = None
        pending, conn.pending = conn.pending, {}
        conn.writer.close()
        for ent in pending.values():
            exc = errors.ConnectionLost("%s with the request in flight; it may still run and is "
                                        "not resent" % conn.reason)
            if isinstance(ent, AsyncFuture):
                self._finish(ent, exc=exc)
            elif not ent.done():
                ent.set_exception(exc)

    # -- requests --

    def submit(self, op: str, key: str, payload: Any = None, /, *,
               deadline_ms: Optional[int] = None, retry: Optional[Retry] = None) -> AsyncFuture:
        """Sends the request (connecting first if needed); returns its asyncio future at once.
        Raises Invalid, nothing sent, for what parexd would refuse."""
        if self._closed:
            raise RuntimeError("cannot submit to a parex.AsyncClient after close()")
        loop = asyncio.get_running_loop()
        request_line(0, op, key, payload, deadline_ms, self.token, self.max_line_bytes)
        fut = AsyncFuture(loop=loop)
        fut.op, fut.key, fut.payload = op, key, payload
        fut._px = (deadline_ms, retry if retry is not None else self.retry,  # type: ignore[attr-defined]
                   time.monotonic())
        self._held.add(fut)
        fut.add_done_callback(self._on_done)
        self._attempt(fut, deadline_ms)
        return fut

    def _attempt(self, fut: AsyncFuture, deadline_ms: Optional[int]) -> None:
        conn = self._conn
        if conn is None or not conn.alive:
            asyncio.ensure_future(self._attempt_later(fut, deadline_ms))
            return
        rid = next(self._ids)
        fut.id = rid
        fut.attempts += 1
        fut._conn = conn  # type: ignore[attr-defined]
        conn.pending[rid] = fut
        conn.writer.write(request_line(rid, fut.op, fut.key, fut.payload, deadline_ms,
                                       self.token, self.max_line_bytes))

    async def _attempt_later(self, fut: AsyncFuture, deadline_ms: Optional[int]) -> None:
        try:
            await self._connection()
        except errors.ParexError as e:
            self._finish(fut, exc=e)
            return
        if not fut.done():
            self._attempt(fut, deadline_ms)

    def _answered(self, fut: AsyncFuture, resp: dict[str, Any]) -> None:
        fut.response = resp
        fut.worker = resp.get("worker")
        fut.queue_ms = resp.get("queue_ms")
        fut.run_ms = resp.get("run_ms")
        if resp.get("status") == "ok":
            self._finish(fut, result=resp.get("result"))
            return
        exc = errors.from_response(resp)
        if getattr(fut, "_cancel_sent", False) and exc.code == "cancelled":
            fut.cancel()
            return
        deadline_ms, retry, t0 = fut._px  # type: ignore[attr-defined]
        delay = retry.delay(exc, fut.attempts) if retry is not None and not self._closed else None
        left = None
        if delay is not None and deadline_ms is not None:
            left = int(deadline_ms - (time.monotonic() - t0 + delay) * 1000)
            if left < 1:
                delay = None
        if delay is None:
            self._finish(fut, exc=exc)
            return
        fut._conn = None  # type: ignore[attr-defined]
        asyncio.get_running_loop().call_later(delay, self._retry_now, fut, left)

    def _retry_now(self, fut: AsyncFuture, left: Optional[int]) -> None:
        if not fut.done():
            self._attempt(fut, left)

    def _finish(self, fut: AsyncFuture, *, result: Any = None,
                exc: Optional[BaseException] = None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _on_done(self, fut: AsyncFuture) -> None:
        self._held.discard(fut)
        if self._room is not None and len(self._held) < self.max_in_flight:
            asyncio.ensure_future(self._notify_room())
        if fut.cancelled():
            # Cancelled here (task cancellation, wait_for): take it out of parexd's queue too.
            conn = getattr(fut, "_conn", None)
            if conn is not None and conn.alive and conn.pending.get(fut.id) is fut:
                if not getattr(fut, "_cancel_sent", False):
                    fut._cancel_sent = True  # type: ignore[attr-defined]
                    self._send_line(conn, {"cancel": fut.id}, None)

    async def _notify_room(self) -> None:
        assert self._room is not None
        async with self._room:
            self._room.notify_all()

    async def _wait_room(self) -> None:
        if len(self._held) < self.max_in_flight:
            return
        if self._room is None:
            self._room = asyncio.Condition()
        async with self._room:
            await self._room.wait_for(lambda: len(self._held) < self.max_in_flight)

    async def _drain(self) -> None:
        conn = self._conn
        if conn is not None and conn.alive:
            try:
                await conn.writer.drain()
            except OSError:
                pass  # the reader task reports the loss

    def _send_line(self, conn: _Conn, obj: dict[str, Any],
                   ack: Optional[asyncio.Future]) -> None:  # type: ignore[type-arg]
        rid = next(self._ids)
        obj["id"] = rid
        if self.token is not None:
            obj["token"] = self.token
        conn.pending[rid] = ack if ack is not None else asyncio.get_running_loop().create_future()
        conn.writer.write(encode(obj, self.max_line_bytes))

    async def call(self, op: str, key: str, payload: Any = None, /, *,
                   deadline_ms: Optional[int] = None, retry: Optional[Retry] = None) -> Any:
        """Waits for room, submits and returns the result (raises the request's error)."""
        await self._wait_room()
        fut = self.submit(op, key, payload, deadline_ms=deadline_ms, retry=retry)
        await self._drain()
        return await fut

    async def cancel(self, fut: AsyncFuture) -> bool:
        """Asks parexd to take fut out of its queue; True (and fut cancelled) when it was still
        queued, False when it already runs or is done."""
        if fut.done():
            return fut.cancelled()
        conn = getattr(fut, "_conn", None)
        if conn is None:  # waiting to be retried or to be sent: not in parexd
            return fut.cancel()
        if not conn.alive or conn.pending.get(fut.id) is not fut:
            return False
        fut._cancel_sent = True  # type: ignore[attr-defined]
        ack = asyncio.get_running_loop().create_future()
        self._send_line(conn, {"cancel": fut.id}, ack)
        try:
            resp = await ack
        except errors.ConnectionLost:
            return False
        res = resp.get("result") if resp.get("status") == "ok" else None
        if isinstance(res, dict) and res.get("cancelled") is True:
            conn.pending.pop(fut.id, None)  # type: ignore[arg-type]
            fut.cancel()
        return fut.cancelled()

    async def map(self, op: str, keys: Iterable[str], payloads: Optional[Iterable[Any]] = None,
                  *, window: int = 1000, timeout: Optional[float] = None) -> AsyncIterator[Any]:
        """Yields op's results over zip(keys, payloads) in input order, with at most window
        requests in flight. Raises TimeoutError once timeout seconds have passed; a failed item
        raises at its position; leaving early cancels what is still in flight."""
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        pl = payloads if payloads is not None else itertools.repeat(None)
        items = iter(zip(keys, pl))
        inflight: deque[AsyncFuture] = deque()
        try:
            while True:
                while len(inflight) < window:
                    nxt = next(items, None)
                    if nxt is None:
                        break
                    await self._wait_room()
                    inflight.append(self.submit(op, nxt[0], nxt[1]))
                if not inflight:
                    return
                await self._drain()
                head = inflight.popleft()
                if end is None:
                    yield await head
                else:
                    left = end - loop.time()
                    if left <= 0 and not head.done():
                        raise TimeoutError("map: timeout of %.3f s passed" % timeout)
                    yield await asyncio.wait_for(asyncio.shield(head), max(left, 0))
        finally:
            for f in inflight:
                f.cancel()

    async def control(self, name: str, **fields: Any) -> Any:
        """Sends {"control": name, **fields}; returns the answer's result (raises on not ok)."""
        conn = await self._connection()
        ack = asyncio.get_running_loop().create_future()
        self._send_line(conn, {"control": name, **fields}, ack)
        resp = await ack
        if resp.get("status") != "ok":
            raise errors.from_response(resp)
        return resp.get("result")

    async def stats(self) -> dict[str, Any]:
        return await self.control("stats")

    async def parked(self) -> list[dict[str, Any]]:
        return (await self.control("parked"))["parked"]

    async def unpark(self, key: str) -> dict[str, Any]:
        return await self.control("unpark", key=key)

    async def drop(self, key: str) -> dict[str, Any]:
        return await self.control("drop", key=key)

    async def top(self) -> dict[str, Any]:
        return await self.control("top")

    async def close(self, *, cancel_futures: bool = False) -> None:
        """No more submits; waits for every request's answer (cancelling what parexd still has
        queued with cancel_futures), then closes the connection."""
        self._closed = True
        held = list(self._held)
        if cancel_futures:
            await asyncio.gather(*(self.cancel(f) for f in held), return_exceptions=True)
        if held:
            await asyncio.gather(*held, return_exceptions=True)
        conn = self._conn
        if conn is not None:
            conn.writer.close()
            if conn.task is not None:
                await asyncio.gather(conn.task, return_exceptions=True)
