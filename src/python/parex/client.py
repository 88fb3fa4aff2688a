"""parex.Client: a concurrent.futures.Executor whose work runs in parexd.

One connection carries every request, pipelined: the client numbers the requests itself, writes
each as one whole line under a write lock, and one reader thread matches the answers to their
futures by id and completes them in the order they arrive. Since parexd answers a key's requests
in order, the done-callbacks of one key run in order, on that reader thread. Anything that would
have to wait for the reader (a cancel's answer, room under max_in_flight) never waits on the
reader thread itself, nor on the thread that runs retries, nor on a thread running an asyncio
loop.

A lost connection fails every request in flight with ConnectionLost and never resends one (it
may still run); the next call connects again, with capped, jittered backoff between attempts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import heapq
import itertools
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional

from . import errors
from ._wire import DEFAULT_MAX_LINE_BYTES, Retry, decode, encode, parse_address, request_obj

log = logging.getLogger("parex")

_CF_DONE = (cf._base.CANCELLED, cf._base.CANCELLED_AND_NOTIFIED, cf._base.FINISHED)


class Future(cf.Future):
    """A request's future. ``id`` is the id of its latest attempt; ``worker``, ``queue_ms``,
    ``run_ms`` and ``response`` (the whole answer) are set once it is answered."""

    def __init__(self, client: "Client", op: str, key: str, payload: Any,
                 deadline_ms: Optional[int], retry: Optional[Retry]) -> None:
        super().__init__()
        self.id: Optional[int] = None
        self.op = op
        self.key = key
        self.payload = payload
        self.worker: Optional[int] = None
        self.queue_ms: Optional[float] = None
        self.run_ms: Optional[float] = None
        self.attempts = 0
        self.response: Optional[dict[str, Any]] = None
        self._client = client
        self._deadline_ms = deadline_ms
        self._retry = retry
        self._t0 = time.monotonic()
        self._conn: Optional[_Conn] = None  # the connection its current attempt is on
        self._waiting = False  # between attempts: on the timer, not in parexd
        self._cancel_sent = False
        self._held = False  # counts against max_in_flight (and the per-key bound)

    def cancel(self) -> bool:
        """Asks parexd to take the request out of its queue. True when it was still queued (the
        future is then cancelled), False when it already runs or is done. On the reader thread,
        the retry thread or an asyncio loop's thread it does not wait for parexd's answer: it
        sends the cancel and returns False, and the future still ends cancelled if parexd took
        the request out."""
        return self._client._cancel([self])[0]

    def __repr__(self) -> str:
        return "<parex.Future id=%s op=%s key=%r %s>" % (self.id, self.op, self.key,
                                                         super().__repr__().split(" ", 2)[-1])


class _Conn:
    """One socket, its reader thread and the attempts in flight on it (under Client._lock)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.alive = True
        self.pending: dict[int, Any] = {}  # id -> Future, or a cf.Future awaiting a raw answer
        self.reason = "parexd closed the connection"
        self.reader: Optional[threading.Thread] = None

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader, which does the rest
        except OSError:
            pass


class _Timers:
    """One thread that runs callables at given times (retries). Started on first use."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._stop = False

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), fn))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="parex-retry", daemon=True)
                self._thread.start()
            self._cond.notify()

    def is_current(self) -> bool:
        return self._thread is threading.current_thread()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None and not self.is_current():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if self._stop:
                    return
                fn = heapq.heappop(self._heap)[2]
            try:
                fn()
            except Exception:  # a retry's failure belongs to its future, set inside fn
                log.exception("parex: retry failed")


class Client(cf.Executor):
    """A concurrent.futures.Executor over one pipelined connection to parexd.

    ``submit(op, key, payload)`` returns a :class:`Future`; ``concurrent.futures.wait``,
    ``as_completed`` and ``map`` work on it as on any executor's. ``address`` is
    ``HOST:PORT`` or ``unix:/path``; ``token`` is parexd's ``auth_token``. ``max_in_flight``
    bounds outstanding requests (``submit`` waits for room) and ``max_in_flight_per_key``
    outstanding requests per key (1 gives strict per-key order, retries included). ``retry``
    is the default :class:`Retry` for submit (None: no retries).
    """

    def __init__(self, address: str = "127.0.0.1:7400", *, token: Optional[str] = None,
                 connect_timeout: float = 5.0, max_in_flight: int = 10000,
                 max_in_flight_per_key: Optional[int] = None, retry: Optional[Retry] = None,
                 max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, reconnect_base: float = 0.05,
                 reconnect_cap: float = 2.0, connect: bool = True) -> None:
        self._family, self._target = parse_address(address)
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1, not %r" % (max_in_flight,))
        if max_in_flight_per_key is not None and max_in_flight_per_key < 1:
            raise ValueError("max_in_flight_per_key must be None or at least 1")
        self.address = address
        self.token = token
        self.connect_timeout = connect_timeout
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_key = max_in_flight_per_key
        self.retry = retry
        self.max_line_bytes = max_line_bytes
        self._reconnect_base = reconnect_base
        self._reconnect_cap = reconnect_cap
        self._lock = threading.Lock()  # _conn, the pending maps, _held, _per_key, _shutdown
        self._room = threading.Condition(self._lock)
        self._connect_lock = threading.Lock()  # one connect attempt at a time
        self._wlock = threading.Lock()  # whole lines: one sendall at a time
        self._conn: Optional[_Conn] = None
        self._ids = itertools.count(1)
        self._held: set[Future] = set()
        self._per_key: dict[str, int] = {}
        self._shutdown = False
        self._failures = 0
        self._next_connect = 0.0
        self._timers = _Timers()
        if connect:
            self._connection()

    # -- connection --

    def _dial(self, timeout: float) -> socket.socket:
        if self._family == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self._target)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(self._target, timeout=timeout)  # type: ignore[arg-type]
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        return sock

    def _connection(self) -> _Conn:
        """The live connection, made now if there is none (raises ConnectFailed)."""
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        with self._connect_lock:
            conn = self._conn
            if conn is not None and conn.alive:
                return conn
            deadline = time.monotonic() + self.connect_timeout
            while True:
                now = time.monotonic()
                if self._next_connect > now:
                    if self._next_connect > deadline:
                        raise errors.ConnectFailed(
                            "cannot connect to parexd at %s: backing off after %d failed attempts"
                            % (self.address, self._failures))
                    time.sleep(self._next_connect - now)  # backoff between connect attempts
                try:
                    sock = self._dial(max(0.001, deadline - time.monotonic()))
                    break
                except OSError as e:
                    self._failures += 1
                    self._next_connect = time.monotonic() + random.uniform(
                        0, min(self._reconnect_cap, self._reconnect_base * 2 ** self._failures))
                    if time.monotonic() >= deadline or self._next_connect > deadline:
                        raise errors.ConnectFailed(
                            "cannot connect to parexd at %s: %s (is it running, and is that its "
                            "listen address?)" % (self.address, e.strerror or e)) from e
            self._failures = 0
            self._next_connect = 0.0
            conn = _Conn(sock)
            conn.reader = threading.Thread(target=self._read, args=(conn,), name="parex-reader",
                                           daemon=True)
            with self._lock:
                self._conn = conn
            conn.reader.start()
            return conn

    def _read(self, conn: _Conn) -> None:
        """The reader thread: matches answers to futures and completes them in answer order."""
        sock, rest = conn.sock, b""
        try:
            while True:
                data = sock.recv(262144)
                if not data:
                    break
                if rest:
                    data = rest + data
                lines = data.split(b"\n")
                rest = lines.pop()
                self._answers(conn, lines)
        except OSError as e:
            conn.reason = "connection to parexd lost: %s" % (e.strerror or e)
        finally:
            self._lost(conn)

    def _answers(self, conn: _Conn, lines: list[bytes]) -> None:
        got = []
        for line in lines:
            resp = decode(line)
            if resp is None:
                log.warning("parex: ignoring a line that is not a JSON object: %.200r", line)
                continue
            got.append(resp)
        with self._lock:
            ents = [conn.pending.pop(r.get("id"), None) for r in got]
        for resp, ent in zip(got, ents):
            if ent is None:
                if resp.get("id") is None and resp.get("status") != "ok":
                    # too_many_connections, or an answer to a line we never sent: say why.
                    e = errors.from_response(resp)
                    conn.reason = "parexd: %s" % e
                    log.warning("parex: unmatched answer: %s", e)
                continue
            if isinstance(ent, Future):
                self._answered(ent, resp)
            else:
                ent.set_result(resp)

    def _lost(self, conn: _Conn) -> None:
        with self._lock:
            conn.alive = False
            pending, conn.pending = conn.pending, {}
            if self._conn is conn:
                self._conn = None
        try:
            conn.sock.close()
        except OSError:
            pass
        for ent in pending.values():
            exc = errors.ConnectionLost(
                "%s with the request in flight; it may still run and is not resent"
                % conn.reason)
            if isinstance(ent, Future):
                self._finish(ent, exc=exc)
            else:
                ent.set_exception(exc)

    # -- requests --

    def _no_wait_thread(self) -> bool:
        """True on a thread that completes futures or runs an asyncio loop: it must not wait."""
        conn = self._conn
        cur = threading.current_thread()
        if conn is not None and conn.reader is cur:
            return True
        if cur.name == "parex-reader" or self._timers.is_current():
            return True
        try:
            asyncio.get_running_loop()
            return True
        except RuntimeError:
            return False

    def submit(self, op: str, key: str, payload: Any = None, /, *,  # type: ignore[override]
               deadline_ms: Optional[int] = None, retry: Optional[Retry] = None) -> Future:
        """Sends ``{"op", "key", "payload"}`` to parexd; returns its Future at once (after
        waiting for room under max_in_flight). Raises Invalid, nothing sent, for what parexd
        would refuse (key, deadline_ms, payload not JSON, line too long)."""
        if self._shutdown:
            raise RuntimeError("cannot submit to a parex.Client after shutdown()")
        fut = Future(self, op, key, payload, deadline_ms, retry if retry is not None else self.retry)
        # Checked before taking room or an id: a caller's mistake raises here, nothing sent.
        encode(request_obj(0, op, key, payload, deadline_ms, self.token), self.max_line_bytes)
        self._hold(fut)
        try:
            self._attempt(fut, deadline_ms)
        except BaseException:
            self._release(fut)  # never handed out: nothing to complete
            raise
        return fut

    def _hold(self, fut: Future) -> None:
        wait = not self._no_wait_thread()
        cap = self.max_in_flight_per_key
        with self._room:
            while wait and (len(self._held) >= self.max_in_flight
                            or (cap is not None and self._per_key.get(fut.key, 0) >= cap)):
                self._room.wait()
            if self._shutdown:
                raise RuntimeError("cannot submit to a parex.Client after shutdown()")
            self._held.add(fut)
            self._per_key[fut.key] = self._per_key.get(fut.key, 0) + 1
            fut._held = True

    def _attempt(self, fut: Future, deadline_ms: Optional[int]) -> None:
        """Sends one attempt of fut. Raises ConnectFailed (nothing sent)."""
        while True:
            conn = self._connection()
            with self._lock:
                if not conn.alive:
                    continue
                rid = next(self._ids)
                fut.id, fut._conn = rid, conn
                fut.attempts += 1
                conn.pending[rid] = fut
            break
        line = encode(request_obj(rid, fut.op, fut.key, fut.payload, deadline_ms, self.token),
                      self.max_line_bytes)
        self._send(conn, line)

    def _send(self, conn: _Conn, line: bytes) -> None:
        try:
            with self._wlock:
                conn.sock.sendall(line)
        except OSError as e:
            # The reader sees the close and fails what is in flight on this connection.
            conn.reason = "connection to parexd lost while sending: %s" % (e.strerror or e)
            conn.close()

    def _answered(self, fut: Future, resp: dict[str, Any]) -> None:
        """On the reader thread: one attempt's answer."""
        fut.response = resp
        fut.worker = resp.get("worker")
        fut.queue_ms = resp.get("queue_ms")
        fut.run_ms = resp.get("run_ms")
        if resp.get("status") == "ok":
            self._finish(fut, result=resp.get("result"))
            return
        exc = errors.from_response(resp)
        if fut._cancel_sent and exc.code == "cancelled":
            self._finish(fut, cancelled=True)
            return
        retry = fut._retry
        delay = retry.delay(exc, fut.attempts) if retry is not None and not self._shutdown else None
        if delay is not None and fut._deadline_ms is not None:
            if fut._deadline_ms - (time.monotonic() - fut._t0 + delay) * 1000 < 1:
                delay = None  # never retried past its deadline
        if delay is None:
            self._finish(fut, exc=exc)
            return
        with self._lock:
            fut._waiting = True
        self._timers.call_at(time.monotonic() + delay, lambda: self._retry_now(fut))

    def _retry_now(self, fut: Future) -> None:
        """On the retry thread: the next attempt of a rejected request, with the time left."""
        with self._lock:
            if not fut._waiting:
                return  # cancelled meanwhile
            fut._waiting = False
        left = None
        if fut._deadline_ms is not None:
            left = int(fut._deadline_ms - (time.monotonic() - fut._t0) * 1000)
            if left < 1:
                self._finish(fut, exc=errors.DeadlineExceeded(
                    "deadline_ms %d passed while waiting to retry a rejection"
                    % fut._deadline_ms, code="deadline_exceeded", response=fut.response))
                return
        try:
            self._attempt(fut, left)
        except errors.ParexError as e:
            self._finish(fut, exc=e)

    def _release(self, fut: Future) -> bool:
        """Gives fut's room back; True the first time only."""
        with self._room:
            if not fut._held:
                return False
            fut._held = False
            self._held.discard(fut)
            n = self._per_key[fut.key] - 1
            if n:
                self._per_key[fut.key] = n
            else:
                del self._per_key[fut.key]
            self._room.notify_all()
            close = self._shutdown and not self._held and self._conn is not None
            conn = self._conn
        if close and conn is not None:
            conn.close()
        return True

    def _finish(self, fut: Future, *, result: Any = None, exc: Optional[BaseException] = None,
                cancelled: bool = False) -> None:
        if not self._release(fut):
            return
        try:
            if cancelled:
                cf.Future.cancel(fut)
                fut.set_running_or_notify_cancel()  # tells wait() and as_completed()
            elif exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)
        except cf.InvalidStateError:
            pass

    def _cancel(self, futs: list[Future]) -> list[bool]:
        """Cancels each of futs: sends every cancel line first, then waits for the answers."""
        acks: list[Optional[cf.Future]] = []
        for fut in futs:
            ack = None
            with self._lock:
                conn = fut._conn
                if fut._waiting:  # between attempts: not in parexd, cancel here
                    fut._waiting = False
                    local = True
                else:
                    local = False
                    if (fut.done() or conn is None or not conn.alive
                            or conn.pending.get(fut.id) is not fut):
                        conn = None
                    else:
                        fut._cancel_sent = True
                        rid = next(self._ids)
                        ack = cf.Future()
                        conn.pending[rid] = ack
            if local:
                self._finish(fut, cancelled=True)
            elif conn is not None and ack is not None:
                obj: dict[str, Any] = {"id": rid, "cancel": fut.id}
                if self.token is not None:
                    obj["token"] = self.token
                self._send(conn, encode(obj, self.max_line_bytes))
            acks.append(ack)
        wait = not self._no_wait_thread()
        out = []
        for fut, ack in zip(futs, acks):
            if ack is not None and wait:
                try:
                    resp = ack.result()
                except errors.ConnectionLost:
                    resp = {}
                res = resp.get("result") if resp.get("status") == "ok" else None
                if isinstance(res, dict) and res.get("cancelled") is True:
                    with self._lock:
                        if fut._conn is not None and fut._conn.pending.get(fut.id) is fut:
                            del fut._conn.pending[fut.id]
                    self._finish(fut, cancelled=True)
            out.append(fut.cancelled())
        return out

    # -- the Executor interface --

    def map(self, op: str, keys: Iterable[str],  # type: ignore[override]
            payloads: Optional[Iterable[Any]] = None, *, timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Results of op over zip(keys, payloads), in input order, like Executor.map: every
        request is submitted now; iterating raises TimeoutError once timeout seconds have
        passed since the call, and a failed item raises its error at its position. Leaving the
        iteration early cancels what is still queued."""
        end = None if timeout is None else time.monotonic() + timeout
        pl = payloads if payloads is not None else itertools.repeat(None)
        fs = [self.submit(op, k, p) for k, p in zip(keys, pl)]

        def results() -> Iterator[Any]:
            try:
                fs.reverse()
                while fs:
                    if end is None:
                        yield fs.pop().result()
                    else:
                        yield fs.pop().result(end - time.monotonic())
            finally:
                if fs:
                    self._cancel(fs)

        return results()

    def call(self, op: str, key: str, payload: Any = None, /, *,
             deadline_ms: Optional[int] = None, retry: Optional[Retry] = None,
             timeout: Optional[float] = None) -> Any:
        """submit() and wait for the result (raises the request's error)."""
        return self.submit(op, key, payload, deadline_ms=deadline_ms, retry=retry).result(timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submits; with cancel_futures, cancel what parexd still has queued; with
        wait, return once every request is answered and the connection is closed."""
        with self._lock:
            self._shutdown = True
            held = list(self._held)
            conn = self._conn
        if cancel_futures and held:
            self._cancel(held)
        if wait:
            cf.wait(held)
            if conn is not None:
                conn.close()
                if conn.reader is not None and conn.reader is not threading.current_thread():
                    conn.reader.join()
            self._timers.stop()
        elif not held and conn is not None:
            conn.close()

    # -- control lines --

    def control(self, name: str, timeout: Optional[float] = None, **fields: Any) -> Any:
        """Sends {"control": name, **fields}; returns the answer's result (raises on not ok)."""
        if self._no_wait_thread():
            raise RuntimeError("control() waits for parexd's answer: call it from a thread that "
                               "does not complete futures or run an asyncio loop")
        obj: dict[str, Any] = {"control": name, **fields}
        if self.token is not None:
            obj["token"] = self.token
        while True:
            conn = self._connection()
            with self._lock:
                if not conn.alive:
                    continue
                rid = next(self._ids)
                ack: cf.Future = cf.Future()
                conn.pending[rid] = ack
            break
        obj["id"] = rid
        self._send(conn, encode(obj, self.max_line_bytes))
        resp = ack.result(timeout)
        if resp.get("status") != "ok":
            raise errors.from_response(resp)
        return resp.get("result")

    def stats(self) -> dict[str, Any]:
        return self.control("stats")

    def parked(self) -> list[dict[str, Any]]:
        return self.control("parked")["parked"]

    def unpark(self, key: str) -> dict[str, Any]:
        return self.control("unpark", key=key)

    def drop(self, key: str) -> dict[str, Any]:
        return self.control("drop", key=key)

    def top(self) -> dict[str, Any]:
        return self.control("top")
