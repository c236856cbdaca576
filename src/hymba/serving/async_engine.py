"""``AsyncEngine``: the synchronous engine (``hymba.serving.engine.Engine``) driven by one
background thread, with an asyncio interface for the HTTP server.

The engine is single-threaded, so every call into it (``add_request``, ``abort``, ``step``,
``has_unfinished``, ``stats``) happens on the engine thread. The asyncio side sends commands
(add, abort) through a queue guarded by a condition variable; the thread runs them between
scheduler steps, loops ``step()`` while the engine has work, and sleeps on the condition when it
has none. Each request's outputs go to an ``asyncio.Queue`` of the event loop that asked for it,
through ``loop.call_soon_threadsafe``, once per step and loop. ``stats()`` returns a snapshot
taken after every step, so ``/metrics`` never touches the engine from another thread.

A consumer that stops listening (a cancelled task: the HTTP client went away) aborts its request,
so the engine frees the slot at its next step. If ``step()`` itself raises (a bug in the engine,
not one request's error), every request in flight fails with :class:`EngineError` and so does every
later one; ``/health`` reports it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future
from typing import Any


class EngineError(RuntimeError):
    """The engine failed as a whole (its ``step()`` raised); requests in flight are lost."""


class EngineShuttingDown(RuntimeError):
    """The engine no longer admits requests (graceful shutdown in progress or done)."""


class RequestStream:
    """The outputs of one admitted request, as an async iterator of ``RequestOutput``.

    Ends after the output with ``finished=True``. :meth:`abort` (a no-op once finished) cancels
    the request; call it when the consumer stops early, e.g. in a ``finally``.
    """

    def __init__(self, owner: AsyncEngine, request_id: str, queue: asyncio.Queue) -> None:
        self.request_id = request_id
        self._owner = owner
        self._queue = queue
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self):
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        if item.finished:
            self._finished = True
        return item

    def abort(self) -> None:
        """Cancel the request (its slot is freed at the engine's next step); no-op when finished."""
        if not self._finished:
            self._finished = True
            self._owner._abort(self.request_id)


class _Listener:
    """Where one request's outputs go: a queue owned by an event loop."""

    __slots__ = ("loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop, self.queue = loop, queue

    def put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # that event loop is closed: nobody is listening any more
            pass


class AsyncEngine:
    """Runs ``engine.step()`` on a background thread; see the module docstring."""

    def __init__(self, engine, *, rate_window_s: float = 10.0) -> None:
        self.engine = engine
        self._cv = threading.Condition()  # guards everything below that both threads touch
        self._commands: deque[tuple[Callable[[], Any], Future]] = deque()
        self._listeners: dict[str, _Listener] = {}
        self._accepting = True
        self._stop = False
        self._failure: str | None = None
        self._outcomes: Counter[str] = Counter()
        self._ids = itertools.count()
        self._rate_window = rate_window_s
        self._history: deque[tuple[float, int]] = deque()  # (time, tokens_generated_total)
        self._peak_slots = 0
        self._stats: dict[str, Any] = {}
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hymba-engine", daemon=True)
        self._thread.start()
        self._started.wait(60)  # the first stats snapshot is taken (on the engine thread)

    # -- the asyncio side ----------------------------------------------------------------------
    async def submit(self, prompt_ids: Sequence[int], params, request_id: str | None = None
                     ) -> RequestStream:
        """Admit one request; raises what ``Engine.add_request`` raises (``InputError``,
        ``QueueFull``), :class:`EngineShuttingDown` or :class:`EngineError`."""
        if not self._accepting:
            raise EngineShuttingDown("the server is shutting down")
        if self._failure is not None:
            raise EngineError(self._failure)
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        with self._cv:
            if rid in self._listeners:
                raise ValueError(f"request id {rid!r} is already in flight")
            self._listeners[rid] = _Listener(loop, queue)
        ids = list(prompt_ids)
        try:
            await asyncio.wrap_future(self._command(lambda: self.engine.add_request(ids, params, rid)))
        except BaseException:
            with self._cv:
                self._listeners.pop(rid, None)
            self._abort(rid)  # a cancelled wait may have raced with a successful add
            raise
        return RequestStream(self, rid, queue)

    async def generate(self, prompt_ids: Sequence[int], params, request_id: str | None = None
                       ) -> AsyncIterator:
        """The outputs of one request as they come; leaving early (or being cancelled) aborts it."""
        stream = await self.submit(prompt_ids, params, request_id)
        try:
            async for output in stream:
                yield output
        finally:
            stream.abort()

    def in_flight(self) -> int:
        """Requests admitted whose final output has not been handed out yet."""
        with self._cv:
            return len(self._listeners)

    @property
    def accepting(self) -> bool:
        return self._accepting and self._failure is None

    @property
    def failure(self) -> str | None:
        """Why the engine stopped working (``step()`` raised), or None."""
        return self._failure

    def stats(self) -> dict[str, Any]:
        """The engine's ``stats()`` after its latest step, plus ``in_flight``,
        ``tokens_per_second`` (output tokens over the last ``rate_window_s``), ``peak_slots_used``,
        ``outcomes`` (finished requests by finish reason), ``accepting`` and ``failure``."""
        now = time.monotonic()
        with self._cv:
            stats = dict(self._stats)
            stats["in_flight"] = len(self._listeners)
            stats["peak_slots_used"] = self._peak_slots
            stats["outcomes"] = dict(self._outcomes)
            history = list(self._history)
        stats["tokens_per_second"] = _rate(history, now, self._rate_window)
        stats["accepting"] = self._accepting and self._failure is None
        stats["failure"] = self._failure
        return stats

    def reset_peak(self) -> None:
        with self._cv:
            self._peak_slots = self._stats.get("slots_used", 0)

    async def shutdown(self, drain_timeout: float = 30.0, abort_timeout: float = 10.0) -> None:
        """Stop admitting, let requests in flight finish for up to ``drain_timeout`` seconds,
        abort the rest (their streams end with finish reason "abort"), then stop the thread."""
        self._accepting = False
        deadline = time.monotonic() + max(0.0, drain_timeout)
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.in_flight():
            with self._cv:
                pending = list(self._listeners)
            self._command(lambda: [self.engine.abort(rid) for rid in pending])
            deadline = time.monotonic() + abort_timeout
            while self.in_flight() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread at once (requests still in flight fail with EngineShuttingDown)."""
        self._accepting = False
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._fail_all(EngineShuttingDown("the server shut down before the request finished"))

    # -- both sides ----------------------------------------------------------------------------
    def _command(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the engine thread before its next step; the future holds its result."""
        future: Future = Future()
        with self._cv:
            if self._stop:
                future.set_exception(EngineShuttingDown("the engine thread has stopped"))
                return future
            self._commands.append((fn, future))
            self._cv.notify()
        return future

    def _abort(self, request_id: str) -> None:
        with self._cv:
            self._listeners.pop(request_id, None)
        if self._failure is None:
            self._command(lambda: self.engine.abort(request_id))

    def _fail_all(self, exc: BaseException) -> None:
        with self._cv:
            listeners = list(self._listeners.values())
            self._listeners.clear()
        for listener in listeners:
            listener.put(exc)

    # -- the engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._record(self.engine.stats())
        except Exception as exc:
            self._failure = f"the engine failed: {type(exc).__name__}: {exc}"
        finally:
            self._started.set()
        busy = False  # the engine has unfinished requests
        while True:
            with self._cv:
                while not self._commands and not busy and not self._stop:
                    self._cv.wait()
                commands = list(self._commands)
                self._commands.clear()
                stop = self._stop
            for fn, future in commands:
                if not future.set_running_or_notify_cancel():
                    continue
                if self._failure is not None:
                    future.set_exception(EngineError(self._failure))
                    continue
                try:
                    future.set_result(fn())
                except BaseException as exc:  # the caller gets it (InputError, QueueFull, a bug)
                    future.set_exception(exc)
            if stop:
                return
            if self._failure is not None:
                busy = False
                continue
            # After any command, step at least once: an abort is reported by the next step().
            try:
                outputs = self.engine.step()
                busy = bool(self.engine.has_unfinished())
                stats = self.engine.stats()
            except Exception as exc:
                self._failure = f"the engine failed: {type(exc).__name__}: {exc}"
                busy = False
                self._fail_all(EngineError(self._failure))
                continue
            self._record(stats)  # first: whoever gets an output sees the stats of its step
            self._dispatch(outputs)

    def _dispatch(self, outputs) -> None:
        """Hand a step's outputs to their listeners: one wake-up per event loop, not per output
        (a step of a full batch has an output per running request)."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        with self._cv:
            for out in outputs:
                if out.finished:
                    self._outcomes[out.finish_reason or "unknown"] += 1
                    listener = self._listeners.pop(out.request_id, None)
                else:
                    listener = self._listeners.get(out.request_id)
                if listener is not None:
                    batches.setdefault(listener.loop, []).append((listener.queue, out))
        for loop, items in batches.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: nobody is listening any more
                pass

    def _record(self, stats: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._cv:
            self._stats = dict(stats)
            self._peak_slots = max(self._peak_slots, int(stats.get("slots_used", 0)))
            self._history.append((now, int(stats.get("tokens_generated_total", 0))))
            # keep one point older than the window, so the rate covers the whole window
            while len(self._history) > 2 and self._history[1][0] < now - self._rate_window:
                self._history.popleft()


def _deliver(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


def _rate(history: list[tuple[float, int]], now: float, window: float) -> float:
    """Output tokens per second over the last ``window`` seconds (0 once idle that long).

    The token count is a step function of time: its value at the window's start is that of the
    last point at or before it; with no such point the window starts at the first point."""
    if not history:
        return 0.0
    start = now - window
    before = [n for t, n in history if t <= start]
    if before:
        return (history[-1][1] - before[-1]) / window
    span = now - history[0][0]
    return (history[-1][1] - history[0][1]) / span if span > 0 else 0.0
