"""Release judged text as soon as its verdict comes back, not on the next upstream delta (async paths).

A hold-back monitor releases text when a call hands it something: with a slow model, a sentence judged
safe would wait for the next token. An async path instead races its next upstream read against the
monitor's check in flight (`UpstreamRace`) and, when the check wins, asks the monitor for what its
verdicts now let out (``arelease_judged``). Sync paths release on the next ``feed``: a blocking read
cannot be raced without a thread per stream.

The race never loses or reorders an upstream item: one read is in flight at a time, it is never
cancelled while the stream goes on (a verdict that wins leaves it running, and the next call returns its
item), and cancelling the caller leaves it in flight for the next call, as `CancelSafeLane` does for
the monitor's own calls. Only `aclose` (the stream ends) cancels it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterable
from typing import Any, Generic, TypeVar

__all__ = ["UpstreamRace", "verdict_waiters", "arelease_judged"]

T = TypeVar("T")


def verdict_waiters(*monitors: Any) -> list[asyncio.Future[Any]]:
    """The checks in flight whose verdicts may let text of ``monitors`` out (monitors without any: none)."""
    waiters = []
    for monitor in monitors:
        waiter = getattr(monitor, "verdict_waiter", None)  # a remote monitor has none: its server judges
        future = waiter() if waiter is not None and not getattr(monitor, "closed", False) else None
        if future is not None:
            waiters.append(future)
    return waiters


async def arelease_judged(monitor: Any) -> str:
    """What ``monitor``'s verdicts let out now, without new text ("" for a monitor that cannot say)."""
    release = getattr(monitor, "arelease_judged", None)
    if release is None or getattr(monitor, "closed", False):
        return ""
    return str(await release())


class UpstreamRace(Generic[T]):
    """Reads an async upstream one item at a time, waking early when a verdict comes back.

    >>> race = UpstreamRace(chunks)                                              # doctest: +SKIP
    >>> fresh, chunk = await race.next(verdict_waiters(monitor))                 # doctest: +SKIP
    """

    def __init__(self, upstream: AsyncIterable[T]) -> None:
        self._iterator = upstream.__aiter__()
        self._read: asyncio.Future[T] | None = None

    async def next(self, waiters: Iterable[asyncio.Future[Any]] = ()) -> tuple[bool, T | None]:
        """``(True, item)``: the next upstream item; ``(False, None)``: a waiter finished first.

        Raises `StopAsyncIteration` at the end of the upstream and the upstream's own errors. The read
        is started once and kept: cancelling this call (or a waiter winning) does not cancel it."""
        if self._read is None:
            self._read = asyncio.ensure_future(self._iterator.__anext__())
        read = self._read
        if not read.done():
            await asyncio.wait({read, *waiters}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                return False, None
        self._read = None
        return True, read.result()

    async def aclose(self) -> None:
        """Cancel the read in flight (the stream ended otherwise) and let the cancellation land: an async
        generator whose step is still being cancelled cannot be closed yet."""
        read, self._read = self._read, None
        if read is None:
            return
        if not read.done():
            read.cancel()
            await asyncio.wait({read})
        if not read.cancelled():
            read.exception()  # retrieved: an item or error nobody will read is not an unhandled error
