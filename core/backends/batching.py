"""Micro-batching with fairness: concurrent checks share bounded forwards, one slice at a time.

One worker thread owns the model. Callers (threads or asyncio tasks) submit a request (a list of
items, e.g. the windows of one check) and get a `concurrent.futures.Future`. The worker runs the
model in *steps*; each step is one forward over a batch it picks from all waiting requests:

- **Bounded.** A step holds at most ``max_batch`` items and at most ``max_batch_cost`` padded cost
  (rows x the costliest row; for the Gen backend, rows x the longest window in tokens). An item
  costlier than the budget runs alone. So no step, and no request, holds the model for more than one
  bounded slice at a time.
- **Fair.** Items are taken round-robin, one per request per pass, starting each step from the next
  request in rotation. A small check that arrives while a 300-window document is being judged goes
  into the very next step and finishes there; the document goes on in the steps after it.
- **Similar lengths together.** Each request's items are taken shortest first, so the rows of a step
  pad little; an item that would blow the budget waits for a later step.
- **Abandoned work stops.** A request whose future was cancelled (its caller timed out, or the
  asyncio task awaiting it was cancelled) is dropped before the next step: it stops consuming the
  model after at most the step already running.
- **Coalescing.** When the worker is idle, the first arrival waits up to ``max_wait_s`` for company,
  so concurrent checks share a forward.

Sync callers block on ``future.result(timeout)``; async callers await ``asyncio.wrap_future``.

Lifecycle: the worker thread holds only a weak reference to its batcher between steps, so a batcher
(and the model behind ``run_batch``) that nobody references any more is collected, and its finalizer
stops the thread. `close` does the same at once.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Generic, TypeVar

from ..errors import GuardTimeout, GuardUnavailable

__all__ = ["MicroBatcher", "DEFAULT_MAX_BATCH", "DEFAULT_MAX_WAIT_S"]

T = TypeVar("T")
R = TypeVar("R")

#: Rows per forward.
DEFAULT_MAX_BATCH = 16
#: How long an idle worker waits for concurrent arrivals before the first forward.
DEFAULT_MAX_WAIT_S = 0.004

_STOP = object()
_ids = itertools.count()


class _Request:
    """One submission: its items, the order they run in, and the results gathered so far."""

    __slots__ = ("id", "items", "future", "order", "next", "results", "left")

    def __init__(self, items: list[Any], future: Future[list[Any]], cost: Callable[[Any], int] | None) -> None:
        self.id = next(_ids)
        self.items = items
        self.future = future
        # Shortest first: the rows of a step pad little, and the one long item runs last (alone).
        self.order = (
            list(range(len(items))) if cost is None else sorted(range(len(items)), key=lambda i: cost(items[i]))
        )
        self.next = 0
        self.results: list[Any] = [None] * len(items)
        self.left = len(items)

    def peek(self) -> int | None:
        return self.order[self.next] if self.next < len(self.order) else None


class MicroBatcher(Generic[T, R]):
    """Runs ``run_batch(items) -> results`` on a worker thread, in bounded, fair, coalesced steps.

    ``cost(item)`` (default: 1 per item) and ``max_batch_cost`` bound the padded size of one step:
    ``rows * max(cost) <= max_batch_cost``. ``batches_run`` and ``items_run`` count steps and rows.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        cost: Callable[[T], int] | None = None,
        max_batch_cost: int | None = None,
        name: str = "qwenguard-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_batch_cost is not None and max_batch_cost < 1:
            raise ValueError("max_batch_cost must be >= 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.cost = cost
        self.max_batch_cost = max_batch_cost
        self._queue: queue.Queue[object] = queue.Queue()
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.batches_run = 0  # observable, for tests and figures
        self.items_run = 0
        # Runs when the batcher is collected (no close() call): wakes the worker so that it ends.
        self._finalizer = weakref.finalize(self, self._queue.put, _STOP)
        _LIVE.add(self)

    def _ensure_worker(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    # The thread gets the queue and a weak reference only: a strong one would keep the
                    # batcher, and through `run_batch` the model, alive for as long as the thread runs.
                    self._thread = threading.Thread(
                        target=_work, args=(self._queue, weakref.ref(self)), name=self._name, daemon=True
                    )
                    self._thread.start()

    def submit(self, items: Sequence[T]) -> Future[list[R]]:
        """Queue ``items`` as one request. Cancel the future to withdraw what has not run yet."""
        if self._closed:
            raise GuardUnavailable("the guard backend is closed")
        future: Future[list[R]] = Future()
        if not items:
            future.set_result([])
            return future
        self._ensure_worker()
        self._queue.put(_Request(list(items), future, self.cost))
        return future

    def run(self, items: Sequence[T], timeout: float | None = None) -> list[R]:
        """Submit and wait (sync). Raises `GuardTimeout` past ``timeout`` seconds; the rest is withdrawn."""
        future = self.submit(items)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise GuardTimeout(f"guard did not answer within {timeout} s") from None

    async def arun(self, items: Sequence[T], timeout: float | None = None) -> list[R]:
        """Submit and await (async). Raises `GuardTimeout` past ``timeout`` seconds; the rest is withdrawn.

        Cancelling the awaiting task withdraws the request too (``wrap_future`` cancels the future)."""
        future = self.submit(items)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            future.cancel()
            raise GuardTimeout(f"guard did not answer within {timeout} s") from None

    # -- one step (worker thread) -------------------------------------------------------------
    def _pick(self, active: deque[_Request]) -> list[tuple[_Request, int]]:
        """Items for one step: round-robin over the requests, within the row and cost budgets."""
        picked: list[tuple[_Request, int]] = []
        widest = 0
        cost, budget = self.cost, self.max_batch_cost
        progress = True
        while progress and len(picked) < self.max_batch:
            progress = False
            for req in active:
                if len(picked) >= self.max_batch:
                    break
                index = req.peek()
                if index is None:
                    continue
                if cost is not None and budget is not None and picked:
                    wider = max(widest, cost(req.items[index]))
                    if (len(picked) + 1) * wider > budget:
                        continue  # waits for a later step; smaller items of other requests may still fit
                if cost is not None:
                    widest = max(widest, cost(req.items[index]))
                picked.append((req, index))
                req.next += 1
                progress = True
        return picked

    def _step(self, active: deque[_Request]) -> None:
        picked = self._pick(active)
        if not picked:
            return
        batch = [req.items[i] for req, i in picked]
        try:
            results = self._run_batch(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"batch returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # noqa: BLE001 - every caller in this step must hear about it
            for req in {id(r): r for r, _ in picked}.values():
                _settle(req.future, exc=exc)
                req.left = -1  # finished (failed)
            return
        finally:
            self.batches_run += 1
            self.items_run += len(batch)
        for (req, i), result in zip(picked, results):
            req.results[i] = result
            req.left -= 1
            if req.left == 0:
                _settle(req.future, result=req.results)

    def close(self) -> None:
        """Stop the worker; requests still waiting fail with `GuardUnavailable`."""
        self._closed = True
        self._finalizer()  # puts _STOP once
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


def _settle(future: Future[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
    # A caller may cancel between our check and the answer: the answer is then simply dropped.
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _fail_all(requests: Sequence[_Request], message: str) -> None:
    for req in requests:
        _settle(req.future, exc=GuardUnavailable(message))


_LIVE: weakref.WeakSet[MicroBatcher[Any, Any]] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    """At interpreter exit, let every worker finish the step it is running and end.

    A worker is a daemon thread: left inside a torch forward while the interpreter finalizes (a stream
    stopped with checks still in flight, then the program ends), it aborts the process with "terminate
    called without an active exception" instead of a clean exit code."""
    for batcher in list(_LIVE):
        batcher.close()


atexit.register(_close_all_at_exit)


def _work(inbox: queue.Queue[object], ref: weakref.ref[MicroBatcher[Any, Any]]) -> None:
    """The worker loop. Holds the batcher (strongly) only while it plans and runs one step."""
    active: deque[_Request] = deque()
    stopping = False
    while True:
        if not active:
            if stopping:
                return
            first = inbox.get()  # idle: blocks holding no reference to the batcher
            if first is _STOP:
                return
            active.append(first)  # type: ignore[arg-type]
            batcher = ref()
            wait_s = batcher.max_wait_s if batcher is not None else 0.0
            target = batcher.max_batch if batcher is not None else 1
            del batcher
            deadline = time.monotonic() + wait_s
            size = len(active[0].items)
            while size < target:  # coalesce concurrent arrivals into the first step
                left = deadline - time.monotonic()
                try:
                    nxt = inbox.get(timeout=left) if left > 0 else inbox.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                active.append(nxt)  # type: ignore[arg-type]
                size += len(nxt.items)  # type: ignore[attr-defined]
        # Arrivals since the last step join the rotation (at the back: nobody jumps the queue).
        while not stopping:
            try:
                nxt = inbox.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                stopping = True
            else:
                active.append(nxt)  # type: ignore[arg-type]
        if stopping:
            _fail_all(active, "the guard backend is closed")
            active.clear()
            continue
        # Withdrawn (cancelled, timed out) and finished requests stop here: they consume nothing more.
        for req in [r for r in active if r.future.done() or r.left <= 0]:
            active.remove(req)
        if not active:
            continue
        batcher = ref()
        if batcher is None:  # collected without close(): nobody can hear the answers any more
            _fail_all(active, "the guard backend was garbage-collected")
            return
        try:
            batcher._step(active)
        finally:
            del batcher
        active.rotate(-1)  # the next step starts with the next request
