"""`FairSlots`: the remote client's in-flight limit, handed out in turn to the calls waiting for it.

One guard call can be hundreds of requests (a long text's windows, the text before each forged ``USER:`` label,
a page of documents). With one first-come first-served limit every request of every other call waited behind
all of them: a one-request check that came 50 ms after a 250-request one ran past its deadline (rt49c M2). Here a
slot that frees goes to the next call in turn, so another call waits for a slot, not for a whole call. The local
guard runs short checks first; ``qwenguard serve`` bounds each client's share; this is the remote client's part.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

__all__ = ["FairSlots", "CALLER"]

#: Who a request is for: one guard call (`OpenAIGen._run` sets it; its requests, started from it, inherit it).
CALLER: contextvars.ContextVar[object] = contextvars.ContextVar("qwenguard_remote_caller", default=None)


class FairSlots:
    """At most ``limit`` requests in flight; a freed slot goes to the caller whose turn it is (round robin over
    the callers waiting, each caller's requests in order). Made and used on one event loop."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiting: OrderedDict[object, deque[asyncio.Future[None]]] = OrderedDict()

    @asynccontextmanager
    async def slot(
        self, stall_s: float | None = None, progress: Callable[[], int] | None = None
    ) -> AsyncIterator[None]:
        """Hold one slot for the block, waiting for the current caller's (`CALLER`) turn. ``stall_s`` with
        ``progress`` (a count that grows as the requests in flight are answered): give up (`TimeoutError`) once it
        did not grow for that long, the requests in flight all stalled; a wait behind requests that are being
        answered goes on however long the queue is."""
        await self._acquire(CALLER.get(), stall_s, progress)
        try:
            yield
        finally:
            self._release()

    async def _acquire(
        self, caller: object, stall_s: float | None = None, progress: Callable[[], int] | None = None
    ) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(caller, deque()).append(granted)
        try:
            while stall_s is not None and progress is not None:
                seen = progress()
                await asyncio.wait({granted}, timeout=stall_s)
                if granted.done():
                    break
                if progress() == seen:
                    raise TimeoutError(f"no request in flight was answered in {stall_s:.3g} s")
            await granted
        except BaseException:
            # Given the slot as it was cancelled or gave up: pass it on. Still waiting: marked done, so that
            # `_release` skips it.
            if granted.done() and not granted.cancelled():
                self._release()
            else:
                granted.cancel()
            raise

    def _release(self) -> None:
        while self._waiting:
            caller, queue = next(iter(self._waiting.items()))
            granted = queue.popleft()
            if queue:
                self._waiting.move_to_end(caller)  # its turn is over: the next caller's is next
            else:
                del self._waiting[caller]
            if not granted.done():  # not cancelled while waiting
                granted.set_result(None)
                return
        self._free += 1
