"""Parallel input screening: start the LLM call at once while the input is checked.

The contract (DESIGN.md decision 10): nothing the LLM produces is released and no tool runs until
the input verdict is in; a blocked input cancels the LLM call. Integrations hold a `PendingCheck`
and call `wait()` / `await wait_async()` at the first point where output would leave (first
streamed chunk, final response, tool start).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from .guard import enforce
from .policy import Decision

__all__ = ["PendingCheck", "run_guarded"]

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="qwenguard-input")
    return _executor


class PendingCheck:
    """An input check running in the background (a thread for sync callers, a task for async ones)."""

    def __init__(self, future: Future[Decision] | None = None, task: asyncio.Future[Decision] | None = None) -> None:
        self._future = future
        self._task = task

    @classmethod
    def start(cls, check: Callable[[], Decision]) -> PendingCheck:
        """Run a sync check (e.g. ``lambda: guard.check_prompt(text)``) on a worker thread."""
        return cls(future=_pool().submit(check))

    @classmethod
    def start_async(cls, check: Awaitable[Decision]) -> PendingCheck:
        """Run an async check (e.g. ``guard.acheck_prompt(text)``) as a task on the running loop."""
        return cls(task=asyncio.ensure_future(check))

    def done(self) -> bool:
        return (self._future or self._task).done()  # type: ignore[union-attr]

    def wait(self) -> Decision:
        """Block until the verdict is in; raise `GuardViolation`/`GuardUnavailable` if it blocks."""
        if self._future is None:
            raise RuntimeError("this check runs on an event loop: use `await wait_async()`")
        return enforce(self._future.result())

    async def wait_async(self) -> Decision:
        if self._task is not None:
            return enforce(await self._task)
        return enforce(await asyncio.wrap_future(self._future))  # type: ignore[arg-type]

    def cancel(self) -> None:
        (self._future or self._task).cancel()  # type: ignore[union-attr]


async def run_guarded(check: Awaitable[Decision], call: Awaitable[T]) -> T:
    """Run ``call`` (the LLM) and ``check`` (the input guard) concurrently.

    Returns the call's result only once the check allowed the input. If the check blocks first, the
    call is cancelled and the violation raised; if the call fails first, the check is cancelled.
    """
    check_task = asyncio.ensure_future(check)
    call_task = asyncio.ensure_future(call)
    try:
        decision = await check_task
        if not decision.allowed:
            call_task.cancel()
            enforce(decision)
        return await call_task
    finally:
        for task in (check_task, call_task):
            if not task.done():
                task.cancel()
