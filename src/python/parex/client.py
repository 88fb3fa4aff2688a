"""parex.Client: a concurrent.futures.Executor whose work runs in parexd.

One connection carries every request, pipelined: the client numbers the requests itself, and
one I/O thread writes whole lines only (all those submitted since its last write at once),
matches the answers to their futures by id and completes them in the order they arrive. Since
parexd answers a key's requests in order, the done-callbacks of one key run in order, on that
I/O thread. Anything that would have to wait for it (a cancel's answer, room under
max_in_flight) never waits on the I/O thread itself, nor on the thread that runs retries, nor
on a thread running an asyncio loop.

A lost connection fails every request in flight with ConnectionLost and never resends one (it
may still run); the next call connects again, with capped, jittered backoff between attempts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import heapq
import itertools
import logging
import os
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional

from . import errors
from ._wire import (DEFAULT_MAX_LINE_BYTES, Retry, decode, encode, parse_address,
                    request_line, split_lines)

log = logging.getLogger("parex")

_CF_DONE = (cf._base.CANCELLED, cf._base.CANCELLED_AND_NOTIFIED, cf._base.FINISHED)


class Future(cf.Future):
    """A request's future. ``id`` is the id of its latest attempt; ``worker``, ``queue_ms``,
    ``run_ms`` and ``response`` (the whole answer) are set once it is answered."""

    # Defaults live on the class: submit() is the hot path, and most stay as they are.
    id: Optional[int] = None
    worker: Optional[int] = None
    queue_ms: Optional[float] = None
    run_ms: Optional[float] = None
    attempts = 0
    response: Optional[dict[str, Any]] = None
    _conn: Optional["_Conn"] = None  # the connection its current attempt is on
    _waiting = False  # between attempts: on the timer, not in parexd
    _cancel_sent = False
    _held = False  # counts against max_in_flight (and the per-key bound)

    def __init__(self, client: "Client", op: str, key: str, payload: Any,
                 deadline_ms: Optional[int], retry: Optional[Retry]) -> None:
        super().__init__()
        self.op = op
        self.key = key
        self.payload = payload
        self._client = client
        self._deadline_ms = deadline_ms
        self._retry = retry
        self._t0 = time.monotonic()

    def cancel(self) -> bool:
        """Asks parexd to take the request out of its queue. True when it was still queued (the
        future is then cancelled), False when it already runs or is done. On the I/O thread,
        the retry thread or an asyncio loop's thread it does not wait for parexd's answer: it
        sends the cancel and returns False, and the future still ends cancelled if parexd took
        the request out."""
        return self._client._cancel([self])[0]

    def __repr__(self) -> str:
        return "<parex.Future id=%s op=%s key=%r %s>" % (self.id, self.op, self.key,
                                                         super().__repr__().split(" ", 2)[-1])


class _Conn:
    """One socket, the I/O thread that serves it and the attempts in flight on it (pending and
    alive under Client._lock).

    One thread does all of the socket's I/O: it writes the lines submitted since its last write
    in one go (so a burst of submits costs a few system calls, not one each, and a submitting
    thread never waits for the socket), and reads and completes answers. Submitting threads
    only append to a list, and wake the thread through a pipe when it sleeps."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.alive = True
        self.pending: dict[int, Any] = {}  # id -> Future, or a cf.Future awaiting a raw answer
        self.reason = "parexd closed the connection"
        self.reader: Optional[threading.Thread] = None  # the I/O thread
        self._out: list[bytes] = []  # whole lines, in order; under _olock
        self._olock = threading.Lock()
        self._asleep = False  # the I/O thread waits in select: wake it for new lines
        self._closing = False
        self.wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def send(self, line: bytes) -> None:
        with self._olock:
            self._out.append(line)
            if self._asleep:
                self._asleep = False
                self._wake()

    def _wake(self) -> None:
        """Under _olock, so the pipe cannot be closed (and its number reused) meanwhile."""
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # the pipe is full: a wake-up is pending anyway

    def take(self) -> Optional[bytes]:
        """On the I/O thread: the lines to write, or None when closing. Marks the thread asleep
        when there are none, so the next send wakes it."""
        with self._olock:
            if self._closing:
                return None
            data = b"".join(self._out) if self._out else b""
            self._out.clear()
            self._asleep = not data
            return data

    def awake(self) -> None:
        with self._olock:
            self._asleep = False

    def close(self) -> None:
        with self._olock:
            self._closing = True
            self._wake()

    def release(self) -> None:
        """On the I/O thread, as it ends."""
        with self._olock:
            self._closing = True
            fds, self._wake_w = (self.wake_r, self._wake_w), -1
            for fd in fds:
                os.close(fd)
        try:
            self.sock.close()
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
    bounds outstanding requests (``submit`` waits for room); its default is parexd's default
    ``max_in_flight_per_connection`` (1024), past which parexd would answer
    ``connection_busy``: raise both together. ``max_in_flight_per_key`` bounds
    outstanding requests per key (1 gives strict per-key order, retries included). ``retry``
    is the default :class:`Retry` for submit (None: no retries).
    """

    def __init__(self, address: str = "127.0.0.1:7400", *, token: Optional[str] = None,
                 connect_timeout: float = 5.0, max_in_flight: int = 1024,
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
        self._room_waiters = 0  # threads waiting on _room (notify only when there are some)
        self._connect_lock = threading.Lock()  # one connect attempt at a time
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
        sock.setblocking(False)  # the I/O thread waits in select
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
            conn.reader = threading.Thread(target=self._io, args=(conn,), name="parex-reader",
                                           daemon=True)
            with self._lock:
                self._conn = conn
            conn.reader.start()
            return conn

    def _io(self, conn: _Conn) -> None:
        """The I/O thread: writes what was submitted, reads answers, completes their futures in
        answer order."""
        sock, rest, out = conn.sock, b"", b""
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        sel.register(conn.wake_r, selectors.EVENT_READ)
        mask = selectors.EVENT_READ
        try:
            while True:
                more = conn.take()
                if more is None:
                    break
                out += more
                if out:
                    try:
                        out = out[sock.send(out):]
                    except BlockingIOError:
                        pass
                    if not out:
                        continue  # all written: take what came meanwhile, or sleep
                want = selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0)
                if want != mask:
                    sel.modify(sock, want)
                    mask = want
                events = sel.select()
                conn.awake()
                for key, ev in events:
                    if key.fileobj is conn.wake_r:
                        try:
                            os.read(conn.wake_r, 4096)
                        except BlockingIOError:
                            pass
                    elif ev & selectors.EVENT_READ:
                        data = sock.recv(262144)
                        if not data:
                            return
                        lines, rest = split_lines(rest, data)
                        self._answers(conn, lines)
        except OSError as e:
            conn.reason = "connection to parexd lost: %s" % (e.strerror or e)
        finally:
            sel.close()
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
        done: list[tuple[Future, Any, Optional[BaseException], bool]] = []
        for resp, ent in zip(got, ents):
            if ent is None:
                if resp.get("id") is None and resp.get("status") != "ok":
                    # too_many_connections, or an answer to a line we never sent: say why.
                    e = errors.from_response(resp)
                    conn.reason = "parexd: %s" % e
                    log.warning("parex: unmatched answer: %s", e)
                continue
            if isinstance(ent, Future):
                outcome = self._answered(ent, resp)
                if outcome is not None:
                    done.append(outcome)
            else:
                ent.set_result(resp)
        # Room is given back for the whole batch at once, then futures complete in answer order.
        self._complete(done)

    def _lost(self, conn: _Conn) -> None:
        with self._lock:
            conn.alive = False
            pending, conn.pending = conn.pending, {}
            if self._conn is conn:
                self._conn = None
        conn.release()
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
        return asyncio._get_running_loop() is not None

    def submit(self, op: str, key: str, payload: Any = None, /, *,  # type: ignore[override]
               deadline_ms: Optional[int] = None, retry: Optional[Retry] = None) -> Future:
        """Sends ``{"op", "key", "payload"}`` to parexd; returns its Future at once (after
        waiting for room under max_in_flight). Raises Invalid, nothing sent, for what parexd
        would refuse (key, deadline_ms, payload not JSON, line too long)."""
        if self._shutdown:
            raise RuntimeError("cannot submit to a parex.Client after shutdown()")
        # Built (and so checked) before taking room: a caller's mistake raises here, nothing
        # sent. The id is taken now; one that is never sent is harmless.
        rid = next(self._ids)
        line = request_line(rid, op, key, payload, deadline_ms, self.token, self.max_line_bytes)
        fut = Future(self, op, key, payload, deadline_ms, retry if retry is not None else self.retry)
        # The common case in one lock: room, a live connection, registered.
        conn = self._conn
        with self._lock:
            fast = (conn is not None and conn.alive and not self._shutdown
                    and not self._full(key))
            if fast:
                self._take(fut)
                fut.id, fut._conn, fut.attempts = rid, conn, 1
                conn.pending[rid] = fut
        if fast:
            conn.send(line)  # type: ignore[union-attr]
            return fut
        self._hold(fut)
        try:
            self._attempt(fut, deadline_ms, rid, line)
        except BaseException:
            self._release([fut])  # never handed out: nothing to complete
            raise
        return fut

    def _full(self, key: str) -> bool:
        cap = self.max_in_flight_per_key
        return len(self._held) >= self.max_in_flight or (
            cap is not None and self._per_key.get(key, 0) >= cap)

    def _take(self, fut: Future) -> None:
        """Under _lock: fut counts against the bounds until _release."""
        self._held.add(fut)
        if self.max_in_flight_per_key is not None:
            self._per_key[fut.key] = self._per_key.get(fut.key, 0) + 1
        fut._held = True

    def _hold(self, fut: Future) -> None:
        with self._room:
            if self._full(fut.key) and not self._no_wait_thread():
                while self._full(fut.key):
                    self._room_waiters += 1
                    try:
                        self._room.wait()
                    finally:
                        self._room_waiters -= 1
            if self._shutdown:
                raise RuntimeError("cannot submit to a parex.Client after shutdown()")
            self._take(fut)

    def _attempt(self, fut: Future, deadline_ms: Optional[int], rid: Optional[int] = None,
                 line: Optional[bytes] = None) -> None:
        """Sends one attempt of fut (a retry passes no id: each attempt takes a new one).
        Raises ConnectFailed, nothing sent."""
        while True:
            conn = self._conn
            if conn is None or not conn.alive:
                conn = self._connection()
            with self._lock:
                if not conn.alive:
                    continue
                if rid is None:
                    rid = next(self._ids)
                fut.id, fut._conn = rid, conn
                fut.attempts += 1
                conn.pending[rid] = fut
            break
        if line is None:
            line = request_line(rid, fut.op, fut.key, fut.payload, deadline_ms, self.token,
                                self.max_line_bytes)
        self._send(conn, line)

    def _send(self, conn: _Conn, line: bytes) -> None:
        conn.send(line)

    def _answered(self, fut: Future, resp: dict[str, Any]
                  ) -> Optional[tuple[Future, Any, Optional[BaseException], bool]]:
        """On the I/O thread: one attempt's answer. Returns how fut ends (future, result,
        exception, cancelled), or None when it is retried."""
        fut.response = resp
        fut.worker = resp.get("worker")
        fut.queue_ms = resp.get("queue_ms")
        fut.run_ms = resp.get("run_ms")
        if resp.get("status") == "ok":
            return fut, resp.get("result"), None, False
        exc = errors.from_response(resp)
        if fut._cancel_sent and exc.code == "cancelled":
            return fut, None, None, True
        retry = fut._retry
        delay = retry.delay(exc, fut.attempts) if retry is not None and not self._shutdown else None
        if delay is not None and fut._deadline_ms is not None:
            if fut._deadline_ms - (time.monotonic() - fut._t0 + delay) * 1000 < 1:
                delay = None  # never retried past its deadline
        if delay is None:
            return fut, None, exc, False
        with self._lock:
            fut._waiting = True
        self._timers.call_at(time.monotonic() + delay, lambda: self._retry_now(fut))
        return None

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

    def _release(self, futs: list[Future]) -> list[bool]:
        """Gives the futures' room back; for each, True the first time only."""
        first = []
        with self._lock:
            for fut in futs:
                first.append(fut._held)
                if not fut._held:
                    continue
                fut._held = False
                self._held.discard(fut)
                if self.max_in_flight_per_key is not None:
                    n = self._per_key[fut.key] - 1
                    if n:
                        self._per_key[fut.key] = n
                    else:
                        del self._per_key[fut.key]
            if self._room_waiters:
                self._room.notify_all()
            conn = self._conn
            close = self._shutdown and not self._held and conn is not None
        if close and conn is not None:
            conn.close()
        return first

    def _complete(self, done: list[tuple[Future, Any, Optional[BaseException], bool]]) -> None:
        """Completes each (future, result, exception, cancelled) in order, once."""
        for (fut, result, exc, cancelled), first in zip(done, self._release([d[0] for d in done])):
            if not first:
                continue
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

    def _finish(self, fut: Future, *, result: Any = None, exc: Optional[BaseException] = None,
                cancelled: bool = False) -> None:
        self._complete([(fut, result, exc, cancelled)])

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
