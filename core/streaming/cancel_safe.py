"""`CancelSafeLane`: an async stream monitor's calls, one at a time, where cancelling a call never loses its work.

The hold-back contract says text is released only after its verdict came back. A plain ``await`` breaks
that under cancellation: ``asyncio.wait_for(monitor.afeed(delta), 0.1)`` cancels the call while the
guard model scores ``delta``, so the verdicts never reach the monitor, yet ``delta`` sits in its buffer
and a later call releases it unjudged.

The lane runs each call's work (open, feed, finish) as a task and awaits it through `asyncio.shield`.
Cancelling the caller cancels only the wait: the work goes on, and the next call first awaits it and
delivers its outcome (the text it released, its `GuardViolation` or guard failure) before doing its own
work. A finish that was cancelled is completed, not repeated, by the next ``afinish``. Closing the
monitor abandons work in flight: the work sees the monitor closed and releases nothing more.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from .task_ends import mark_read

__all__ = ["CancelSafeLane"]


class CancelSafeLane:
    """Serialises a monitor's async calls; a cancelled call's work finishes and is delivered by the next call."""

    __slots__ = ("_lock", "_inflight", "_inflight_kind", "_carry", "_queued")

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None  # created on first use, inside the caller's loop
        self._inflight: asyncio.Task[str] | None = None
        self._inflight_kind = ""
        self._carry = ""  # text a cancelled call had already collected from earlier work
        # Calls' work in the order they were made, taken in before any wait: a call cancelled while it waits
        # for the lane keeps its delta, run by the next call (rt49b F6: it was dropped, a hole in the stream).
        self._queued: deque[tuple[str, Callable[[], Awaitable[str]]]] = deque()

    @property
    def busy(self) -> bool:
        """True while the work of a cancelled call is still running."""
        return self._inflight is not None and not self._inflight.done()

    async def run(self, kind: str, work: Callable[[], Awaitable[str]]) -> str:
        """Run ``work()`` (returns the text it released) after any earlier cancelled work.

        Returns the text released by the earlier work, then by this one. ``kind="finish"`` after a
        cancelled finish returns that finish's outcome instead of finishing twice."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        mine = (kind, work)
        self._queued.append(mine)
        async with self._lock:
            carried, previous = await self._drain()
            # Earlier calls' work still queued (their callers were cancelled while they waited), then this one's.
            while self._queued:
                item = self._queued.popleft()
                if item[0] == "finish" and previous == "finish":
                    if item is mine:
                        return carried
                    continue  # finished once already
                task = asyncio.ensure_future(item[1]())
                try:
                    carried += await asyncio.shield(task)
                except asyncio.CancelledError:
                    # The caller gave up waiting, not the work: it is delivered by the next call.
                    self._inflight, self._inflight_kind, self._carry = task, item[0], carried
                    task.add_done_callback(
                        mark_read
                    )  # ends in a violation nobody awaits if the monitor closed: the monitor's state has it
                    raise
                previous = item[0]
                if item is mine:
                    break
            return carried

    def abandon(self) -> None:
        """Cancel the work a cancelled call left in flight: the monitor closed, and no next call will take its
        outcome (a session whose client hung up during its prompt check judged on for nobody: rt56d F1)."""
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()

    async def _drain(self) -> tuple[str, str]:
        """Await earlier cancelled work; its released text and kind, or raise what it raised."""
        task = self._inflight
        if task is None:
            return "", ""
        await asyncio.wait({task})  # cancelling this caller leaves the work in flight for the next one
        kind, carried = self._inflight_kind, self._carry
        self._inflight, self._inflight_kind, self._carry = None, "", ""
        if task.cancelled():
            return carried, kind  # abandoned by close(): the monitor's state says so
        error = task.exception()
        if error is not None:
            raise error
        return carried + task.result(), kind
