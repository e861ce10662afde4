"""Micro-batching with fairness: concurrent checks share bounded forwards, one slice at a time.

One worker thread schedules the model's work (a local model's CPU work then runs on the process's
torch thread, `torch_runtime.run_on_torch_thread`: one OpenMP team for all models). Callers (threads or
asyncio tasks) submit a request (a list of items, e.g. the windows of one check) and get a
`concurrent.futures.Future`. The worker runs the model in *steps*; each step is one forward over a batch it
picks from all waiting requests:

- **Bounded.** A step holds at most ``max_batch`` items and at most ``max_batch_cost`` padded cost
  (rows x the costliest row; for the Gen backend, rows x the longest window in tokens). An item
  costlier than the budget runs alone. So no step, and no request, holds the model for more than one
  bounded slice at a time.
- **Bounded in time.** With ``target_step_s``, the worker fits step time against step cost over its
  recent steps (``seconds ~ overhead + rate * cost``) and plans each step to fit that time, so a step
  is short on a slow machine and as large as the cost budget allows on a fast one, but never below an
  eighth of the cost budget (below that, per-step overhead eats the throughput). A check that arrives
  while the model is busy waits for at most about two such steps (one, unless a long request's turn is
  due: below). While work of different widths shares
  the model (short checks or a stream's small steps beside a long document's windows), steps are planned
  at half that time, for ``MIXED_MEMORY_S`` after such work was last seen waiting: the short checks that
  keep coming wait half as long, and a document judged alone keeps its full steps.
- **Fair, short work first.** The step is led by the request whose next item is cheapest (a short
  check before the next windows of a long document), then filled one item per request per pass,
  cheapest next item first (round-robin among equals), only with items at most ``2x`` the leader's
  cost (or ``width_floor``, if more): a short check never rides in a step of long windows, so it pays
  for its own short step, not for theirs, and rides in a step led by tiny items (a stream session's
  one-token step) instead of waiting behind it. A request passed over in ``max_skips`` steps in a row
  leads the next one, so a stream of short checks cannot starve a long one; with more long requests
  waiting than a step holds, each leads in turn, and a short check rides in the next of their steps if it
  fits beside them. If it does not (their items over half the budget), a step led by such a request is
  followed by one the cheapest next item leads: the short check runs within two steps however many long
  requests wait, and they lead in turn in every other step.
- **Similar lengths together.** Each request's items are taken shortest first, so the rows of a step
  pad little; an item that would blow the budget waits for a later step.
- **Abandoned work stops.** A request whose future was cancelled (its caller timed out, or the
  asyncio task awaiting it was cancelled) is dropped before the next step: it stops consuming the
  model after at most the step already running.
- **Coalescing.** When the worker is idle, the first arrival waits up to ``max_wait_s`` for company,
  so concurrent checks share a forward. With ``regroup_s`` (for callers that submit again as soon as
  they are answered, such as stream sessions feeding token after token), the worker also waits up to
  that long after a step for as many arrivals as the step answered, so that callers answered together
  stay together instead of drifting into several half-full forwards.

Sync callers block on ``future.result(timeout)``; async callers await ``asyncio.wrap_future``.

Lifecycle: the worker thread holds only a weak reference to its batcher between steps, so a batcher
(and the model behind ``run_batch``) that nobody references any more is collected, and its finalizer
stops the thread. `close` does the same at once.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import os
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
from ..policy import require_count
from .torch_runtime import is_torch_thread

__all__ = ["MicroBatcher", "DEFAULT_MAX_BATCH", "DEFAULT_MAX_WAIT_S"]

T = TypeVar("T")
R = TypeVar("R")

#: Rows per forward.
DEFAULT_MAX_BATCH = 16
#: How long an idle worker waits for concurrent arrivals before the first forward.
DEFAULT_MAX_WAIT_S = 0.004
#: Steps in a row a request with work left may be passed over before it leads a step.
DEFAULT_MAX_SKIPS = 2
#: A step may hold items up to this multiple of its leader's cost ("width class").
WIDTH_CLASS = 2
#: Recent (cost, seconds) samples the step-time fit uses.
_FIT_SAMPLES = 32
#: ``target_step_s`` lowers a step's cost budget to no less than ``max_batch_cost // MIN_STEP_SHARE``.
MIN_STEP_SHARE = 8
#: The share of ``target_step_s`` steps are planned at while narrow and wide work wait together.
MIXED_STEP_SHARE = 0.5
#: Seconds (of the batcher's clock) steps stay planned so after narrow and wide work last waited together.
MIXED_MEMORY_S = 1.0

_STOP = object()
_ids = itertools.count()


class _Request:
    """One submission: its items, the order they run in, and the results gathered so far."""

    __slots__ = ("id", "items", "future", "order", "next", "results", "left", "skipped")

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
        self.skipped = 0  # steps in a row that ran without an item of this request while it had some left

    def peek(self) -> int | None:
        return self.order[self.next] if self.next < len(self.order) else None


class MicroBatcher(Generic[T, R]):
    """Runs ``run_batch(items) -> results`` on a worker thread, in bounded, fair, coalesced steps.

    ``cost(item)`` (default: 1 per item) and ``max_batch_cost`` bound the padded size of one step:
    ``rows * max(cost) <= max_batch_cost``; ``target_step_s`` (default: none) bounds it further to what
    the worker measured it can run in that time. ``batches_run`` and ``items_run`` count steps and rows;
    ``clock`` (seconds, monotonic) is what steps are timed with.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        cost: Callable[[T], int] | None = None,
        max_batch_cost: int | None = None,
        target_step_s: float | None = None,
        max_skips: int = DEFAULT_MAX_SKIPS,
        width_floor: int = 1,
        regroup_s: float = 0.0,
        clock: Callable[[], float] = time.perf_counter,
        name: str = "qwenguard-batcher",
    ) -> None:
        require_count("max_batch", max_batch)
        require_count("max_batch_tokens", max_batch_cost, optional=True)  # what the Gen backend calls it
        if target_step_s is not None and not target_step_s > 0:
            raise ValueError("target_step_s must be > 0 (or None: steps bounded by cost only)")
        if max_skips < 0:
            raise ValueError("max_skips must be >= 0")
        if regroup_s < 0:
            raise ValueError("regroup_s must be >= 0")
        if isinstance(width_floor, bool) or not isinstance(width_floor, int) or width_floor < 1:
            raise ValueError("width_floor must be an integer >= 1")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.cost = cost
        self.max_batch_cost = max_batch_cost
        self.target_step_s = target_step_s
        self.max_skips = max_skips
        self.width_floor = width_floor
        self.regroup_s = regroup_s
        self._answered = 0  # requests the last step finished (their callers may submit again at once)
        self._clock = clock
        self._mixed_at = float("-inf")  # when narrow and wide work last waited together (`step_budget`)
        self._cheapest_next = False  # a wide starved request led the last step over narrower work (`_pick`)
        self._samples: deque[tuple[int, float]] = deque(maxlen=_FIT_SAMPLES)  # (step cost, seconds)
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

    def _after_fork(self) -> None:
        """In a forked child: the parent's worker does not exist here; the next submit starts one."""
        self._finalizer.detach()
        self._queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread = None
        self._answered = 0
        self._finalizer = weakref.finalize(self, self._queue.put, _STOP)

    def _ensure_worker(self) -> None:
        """Start the worker once (the caller holds ``_lock``)."""
        if self._thread is None:
            # The thread gets the queue and a weak reference only: a strong one would keep the
            # batcher, and through `run_batch` the model, alive for as long as the thread runs.
            thread = threading.Thread(target=_work, args=(self._queue, weakref.ref(self)), name=self._name, daemon=True)
            thread.start()
            self._thread = thread  # only once started: `close` joins what it reads here

    def submit(self, items: Sequence[T]) -> Future[list[R]]:
        """Queue ``items`` as one request. Cancel the future to withdraw what has not run yet."""
        if self._closed:
            raise GuardUnavailable("the guard backend is closed")
        if getattr(self._run_batch, "runs_on_torch_thread", False) and is_torch_thread():
            # The work would be queued behind the caller itself: it could only end by the caller's timeout.
            raise GuardUnavailable(
                "a local guard check was made on qwenguard's torch thread (from inside run_on_torch_thread), "
                "the thread that would run it; call the guard outside the function given to run_on_torch_thread"
            )
        future: Future[list[R]] = Future()
        if not items:
            future.set_result([])
            return future
        # One lock with `close`: a request put after the stop signal would never be run nor failed (its caller
        # waited to its deadline, forever without one: rt49c L1).
        with self._lock:
            if self._closed:
                raise GuardUnavailable("the guard backend is closed")
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
    def _item_cost(self, req: _Request, index: int) -> int:
        return 1 if self.cost is None else max(1, self.cost(req.items[index]))

    def step_budget(self) -> int | None:
        """The padded cost one step may have now: ``max_batch_cost``, lowered to what fits ``target_step_s``
        but never below an eighth of it (``MIN_STEP_SHARE``): where even a few rows take longer than the
        target (a loaded or slow machine), smaller steps would only add per-step overhead. While narrow work
        waits beside wide work (or did within ``MIXED_MEMORY_S``), the time is ``MIXED_STEP_SHARE`` of the
        target: the narrow checks that keep arriving wait for shorter steps of the wide work."""
        budget = self.max_batch_cost
        if self.target_step_s is None or budget is None:
            return budget
        fit = _fit(self._samples)
        if fit is None:
            return budget
        overhead, rate = fit
        target = self.target_step_s
        if self._clock() - self._mixed_at < MIXED_MEMORY_S:
            target *= MIXED_STEP_SHARE
        affordable = int((target - overhead) / rate) if target > overhead else 0
        return min(budget, max(affordable, budget // MIN_STEP_SHARE, 1))

    def _pick(self, active: deque[_Request]) -> list[tuple[_Request, int]]:
        """Items for one step: led by the cheapest next item (or a request passed over too long), then
        round-robin over the requests within the leader's width class and the row and cost budgets."""
        pending = [r for r in active if r.peek() is not None]
        if not pending:
            return []
        costs = [self._item_cost(r, r.peek()) for r in pending]  # type: ignore[arg-type]
        narrow_ceiling = max(min(costs) * WIDTH_CLASS, self.width_floor)  # what may share the cheapest's step
        if max(costs) > narrow_ceiling:
            self._mixed_at = self._clock()  # work that cannot share a step waits together: plan shorter steps
        starved = [r for r in pending if r.skipped >= self.max_skips]
        if starved and not self._cheapest_next:
            lead = max(starved, key=lambda r: r.skipped)  # the longest passed over; the earliest in rotation
        else:
            lead = pending[costs.index(min(costs))]  # the cheapest next item; the earliest in rotation on a tie
        lead_index = lead.peek()
        assert lead_index is not None
        widest = self._item_cost(lead, lead_index)
        # A starved request too wide for the cheapest's step leads this one: the next step is the cheapest's. Each
        # starved request waits its turn by how long it was passed over, and with more of them waiting than a
        # step holds, a short check that came after them led no step before all of them had theirs (wait linear
        # in their number: rt64h F1). So steps of wide starved requests and of the cheapest work alternate.
        self._cheapest_next = widest > narrow_ceiling
        # Wider items wait for a step of their own class; below ``width_floor`` a row costs little beside a
        # step's overhead, so a short check rides in a step led by tiny items instead of waiting behind them.
        ceiling = max(widest * WIDTH_CLASS, self.width_floor)
        budget = self.step_budget()
        picked = [(lead, lead_index)]
        lead.next += 1
        start = active.index(lead)
        # The leader has had its item of this pass: the others follow cheapest next item first, in rotation
        # among equals, the leader last. Cheapest first matters when a starved request leads: with more long
        # requests waiting than a step holds, each of them leads in turn, and a short check that arrived
        # rides in the next step instead of waiting for the rotation to reach it.
        rotation = [active[(start + 1 + k) % len(active)] for k in range(len(active) - 1)]
        next_cost = {id(r): c for r, c in zip(pending, costs)}  # a request with nothing left is passed over anyway
        order = [*sorted(rotation, key=lambda r: next_cost.get(id(r), 0)), lead]
        progress = True
        while progress and len(picked) < self.max_batch:
            progress = False
            for req in order:
                if len(picked) >= self.max_batch:
                    break
                index = req.peek()
                if index is None:
                    continue
                width = self._item_cost(req, index)
                if width > ceiling:
                    continue
                wider = max(widest, width)
                if budget is not None and (len(picked) + 1) * wider > budget:
                    continue  # waits for a later step; smaller items of other requests may still fit
                widest = wider
                picked.append((req, index))
                req.next += 1
                progress = True
        served = {id(r) for r, _ in picked}
        for req in pending:
            req.skipped = 0 if id(req) in served else req.skipped + 1
        return picked

    def _step(self, active: deque[_Request]) -> None:
        self._answered = 0
        picked = self._pick(active)
        if not picked:
            return
        batch = [req.items[i] for req, i in picked]
        step_cost = len(picked) * max(self._item_cost(r, i) for r, i in picked)
        started = self._clock()
        try:
            results = self._run_batch(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"batch returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # noqa: BLE001 - every caller in this step must hear about it
            for req in {id(r): r for r, _ in picked}.values():
                _settle(req.future, exc=exc)
                req.left = -1  # finished (failed)
            self._answered = len({id(r) for r, _ in picked})
            return
        finally:
            self.batches_run += 1
            self.items_run += len(batch)
            if self.batches_run > 1:  # the first step pays for lazy set-up (caches, kernels): not a rate
                self._samples.append((step_cost, self._clock() - started))
        for (req, i), result in zip(picked, results):
            req.results[i] = result
            req.left -= 1
            if req.left == 0:
                _settle(req.future, result=req.results)
                self._answered += 1

    def close(self) -> None:
        """Stop the worker; requests still waiting fail with `GuardUnavailable`."""
        with self._lock:
            self._closed = True
            self._finalizer()  # puts _STOP once, after every request a submit put
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


def _fit(samples: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """Least squares ``seconds = overhead + rate * cost`` over recent steps; ``None`` before the first step.

    Steps that all cost the same (a long document alone) tell no overhead apart: the whole time is taken
    as rate (an overestimate), so the next step is smaller and the fit learns from the difference."""
    if not samples:
        return None
    n = len(samples)
    mean_c = sum(c for c, _ in samples) / n
    mean_t = sum(t for _, t in samples) / n
    var = sum((c - mean_c) ** 2 for c, _ in samples)
    rate = sum((c - mean_c) * (t - mean_t) for c, t in samples) / var if var else 0.0
    if rate <= 0:  # one cost only, or noise: no overhead told apart
        return (0.0, mean_t / mean_c) if mean_t > 0 else None
    return max(0.0, mean_t - rate * mean_c), rate


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


def _after_fork_in_child() -> None:
    """A forked child (gunicorn ``--preload``, multiprocessing's "fork", Celery prefork) has none of the parent's
    threads: each live batcher whose worker ran before the fork gets a fresh queue, lock and worker-to-be, as
    the torch thread does (`torch_runtime`). Without this, `_thread` still names the parent's worker and every
    check in the child waited out its deadline (rt50a F12). What the parent had queued belongs to threads that
    do not exist here: it is dropped with the old queue (whose lock a parent thread may have held)."""
    for batcher in list(_LIVE):
        batcher._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _regroup(inbox: queue.Queue[object], active: deque[_Request], expected: int, wait_s: float) -> None:
    """Wait up to ``wait_s`` for ``expected`` arrivals (the callers just answered, submitting again); they
    join ``active``, and so does whatever was queued already. A stop signal is put back for the loop to see."""

    def take(nxt: object) -> bool:
        if nxt is _STOP:
            inbox.put(_STOP)  # seen again at the top of the loop, which fails what is left
            return False
        active.append(nxt)  # type: ignore[arg-type]
        return True

    # What came during the step is not what we wait for (counting it would split the answered callers
    # off into the step after next, and the forwards would keep alternating).
    while True:
        try:
            if not take(inbox.get_nowait()):
                return
        except queue.Empty:
            break
    deadline = time.monotonic() + wait_s
    for _ in range(expected):
        left = deadline - time.monotonic()
        try:
            nxt = inbox.get(timeout=left) if left > 0 else inbox.get_nowait()
        except queue.Empty:
            return
        if not take(nxt):
            return


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
            regroup_s, answered = batcher.regroup_s, batcher._answered
        finally:
            del batcher
        active.rotate(-1)  # the next step starts with the next request
        if regroup_s > 0 and answered:
            _regroup(inbox, active, answered, regroup_s)
