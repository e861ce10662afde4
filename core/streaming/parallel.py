"""Parallel input screening: start the LLM call at once while the input is checked.

The contract (DESIGN.md decision 10): nothing the LLM produces is released and no tool runs until
the input verdict is in; a blocked input cancels the LLM call. Integrations hold a `PendingCheck`
and call `wait()` / `await wait_async()` at the first point where output would leave (first
streamed chunk, final response, tool start), or race the LLM call against the verdict with
`PendingCheck.guard` / `run_guarded`, which cancel the call when the input is blocked.

A check may return one `Decision` or a list of them (one batched check of several inputs); waiting
raises for the first blocking one, in order, exactly as the sequential path would.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from ..backends.after_fork import ForkSafePool
from ..guard import enforce
from ..policy import Decision
from .task_ends import landed, mark_read

__all__ = ["PendingCheck", "run_guarded", "enforce_all"]

T = TypeVar("T")
Verdicts = Decision | Sequence[Decision]

_executor = ForkSafePool(8, "qwenguard-input")


def _pool() -> ThreadPoolExecutor:
    return _executor.get()


def enforce_all(result: Verdicts) -> Verdicts:
    """`enforce` one Decision or each of a list, in order; return ``result`` when all are allowed."""
    if isinstance(result, Decision):
        return enforce(result)
    for decision in result:
        enforce(decision)
    return result


class PendingCheck:
    """An input check running in the background (a thread for sync callers, a task for async ones).

    >>> pending = PendingCheck.start(lambda: guard.check_prompt(text))   # doctest: +SKIP
    >>> for chunk in llm_stream:                                          # doctest: +SKIP
    ...     pending.wait()     # first chunk: blocks until the verdict is in; raises if it blocks
    """

    def __init__(
        self,
        future: Future[Verdicts] | None = None,
        task: asyncio.Future[Verdicts] | None = None,
        *,
        on_loop: Callable[[], Verdicts] | None = None,
    ) -> None:
        if (future is None) == (task is None):
            raise ValueError("give exactly one of future= or task=")
        self._future = future
        self._task = task
        self._loop = task.get_loop() if task is not None else None
        self._on_loop = on_loop
        self._once: _Once | None = None  # a thread-based check: run by its worker, or by a waiter while queued
        self.passed = False  # set once a wait found every decision allowed (later waits are free)

    @classmethod
    def start(cls, check: Callable[[], Verdicts]) -> PendingCheck:
        """Run a sync check (e.g. ``lambda: guard.check_prompt(text)``) on a worker thread.

        The caller's context variables travel with it (tracing spans, LlamaIndex dispatchers)."""
        once = _Once(check, contextvars.copy_context())
        pending = cls(future=_pool().submit(once.run))
        pending._once = once
        return pending

    @classmethod
    def start_async(cls, check: Awaitable[Verdicts], *, on_loop: Callable[[], Verdicts] | None = None) -> PendingCheck:
        """Run an async check (e.g. ``guard.acheck_prompt(text)``) as a task on the running loop.

        ``on_loop``: the same check, sync, for a sync `wait` on the loop's own thread before the task is done (a
        sync tool called from async code): it cannot wait for the task, so it judges the input itself, holding the
        loop as the sync tool does. Without it such a wait raises `RuntimeError`."""
        task = asyncio.ensure_future(check)
        # A run abandoned before its verdict (a client that disconnects) never reads the task's error: asyncio
        # would log "Task exception was never retrieved" for each, and a client could flood the operator's logs.
        task.add_done_callback(mark_read)
        return cls(task=task, on_loop=on_loop)

    def done(self) -> bool:
        if self._once is not None and self._once.finished.is_set():
            return True
        return (self._future or self._task).done()  # type: ignore[union-attr]

    def on_running_loop(self) -> bool:
        """The check is a task of the event loop running on this thread (`wait_async` can await it here)."""
        try:
            return self._loop is not None and asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def result(self) -> Verdicts | None:
        """The decisions, once the check is done (``None`` before, or when it raised or was cancelled)."""
        if self._once is not None:
            return self._once.outcome()
        job = self._future or self._task
        if job is None or not job.done() or job.cancelled() or job.exception() is not None:
            return None
        return job.result()

    def wait(self) -> Verdicts:
        """Block until the verdict is in; raise `GuardViolation`/`GuardUnavailable` if it blocks.

        A task-based check can be waited on from another thread (a sync hook inside an async run); on the loop's own
        thread that would deadlock, so the check given as ``on_loop`` runs there instead (`start_async`), or, without
        one, it raises `RuntimeError`."""
        if self._once is not None:
            result = self._once.run()  # still queued behind other checks: judged on this thread (`_Once`)
        elif self._future is not None:
            result = self._future.result()
        elif self._task is not None and self._task.done():
            result = self._task.result()
        else:
            assert self._task is not None and self._loop is not None
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not self._loop:
                result = asyncio.run_coroutine_threadsafe(_await(self._task), self._loop).result()
            elif self._on_loop is not None:
                result = self._on_loop()
            else:
                raise RuntimeError("this check runs on this thread's event loop: use `await wait_async()`")
        enforce_all(result)
        self.passed = True
        return result

    async def wait_async(self) -> Verdicts:
        """Async twin of `wait`."""
        if self._task is not None:
            result = await asyncio.shield(self._task)  # cancelling this wait must not cancel the check
        elif self._once is not None:
            # Run already: its outcome at once. Else judged now, or waited for (another caller runs it), off the
            # loop: the pool's future may still be queued behind other checks.
            once = self._once
            result = once.run() if once.finished.is_set() else await asyncio.to_thread(once.run)
        else:
            result = await asyncio.wrap_future(self._future)  # type: ignore[arg-type]
        enforce_all(result)
        self.passed = True
        return result

    async def guard(self, call: Awaitable[T], *, wait: bool = True) -> T:
        """Await ``call`` (e.g. the LLM request or its first chunk) concurrently with the verdict.

        Returns the call's result once the input is allowed. If the verdict blocks first, the call
        is cancelled at once and the violation raised; if the call fails, its error is raised and
        the check keeps running (it may still be needed by the caller). ``wait=False`` returns as
        soon as the call is done, verdict or not: for a step that releases nothing (opening a
        stream), so that the next step (its first chunk) overlaps the check too."""
        call_task = asyncio.ensure_future(call)
        verdict = asyncio.ensure_future(self.wait_async())
        for task in (call_task, verdict):  # a caller cancelled mid-race reads neither's error (see `start_async`)
            task.add_done_callback(mark_read)
        try:
            done, _ = await asyncio.wait({call_task, verdict}, return_when=asyncio.FIRST_COMPLETED)
            if verdict in done:
                verdict.result()  # raises when blocked -> the finally clause cancels the call
                return await call_task
            result = call_task.result()  # raises the call's own error
            if wait:
                await verdict
            return result
        finally:
            for task in (call_task, verdict):
                if not task.done():
                    task.cancel()
            # Let the cancellation land before returning, even when the caller is cancelled meanwhile: an async
            # generator whose step was cancelled is "already running" (cannot be closed) until it has.
            await landed(call_task)

    def cancel(self) -> None:
        """Stop waiting for the verdict (the run ended otherwise). A running thread finishes on its own."""
        (self._future or self._task).cancel()  # type: ignore[union-attr]


class _Once:
    """A thread-based check run once, by whichever comes first: the pool's worker, or a caller that needs the verdict
    while the check is still queued (the pool is the process's: another guard's slow checks holding every worker
    made a caller wait for one, rt52b F3). Every other caller waits for that one run: a second thread waiting at once
    judged it again, in the same context object, which cannot be entered twice (rt52e F2)."""

    def __init__(self, check: Callable[[], Verdicts], context: contextvars.Context) -> None:
        self._check, self._context = check, context
        self._lock = threading.Lock()
        self._started = False
        self.finished = threading.Event()
        self._result: Verdicts | None = None
        self._error: BaseException | None = None

    def run(self) -> Verdicts:
        with self._lock:
            mine, self._started = not self._started, True
        if mine:
            try:
                self._result = self._context.run(self._check)
            except BaseException as exc:  # noqa: BLE001 - kept for every caller, raised to each
                self._error = exc
            finally:
                self.finished.set()
        else:
            self.finished.wait()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def outcome(self) -> Verdicts | None:
        """The decisions, once run (``None`` before, or when the check raised)."""
        return self._result if self.finished.is_set() and self._error is None else None


async def _await(task: asyncio.Future[T]) -> T:
    return await asyncio.shield(task)


async def run_guarded(check: Awaitable[Verdicts], call: Awaitable[T]) -> T:
    """Run ``call`` (the LLM) and ``check`` (the input guard) concurrently.

    Returns the call's result only once the check allowed the input. If the check blocks first, the
    call is cancelled and the violation raised; if the call fails first, the check is cancelled.
    """
    pending = PendingCheck.start_async(check)
    try:
        return await pending.guard(call)
    finally:
        if not pending.done():
            pending.cancel()
