"""Release judged text as soon as its verdict comes back, not on the next upstream delta.

A hold-back monitor releases text when a call hands it something: with a slow model, a sentence judged
safe would wait for the next token. A path instead races its next upstream read against the monitor's
check in flight and, when the check wins, asks the monitor for what its verdicts now let out
(``release_judged`` / ``arelease_judged``). Async paths race with `UpstreamRace`; sync paths, whose
upstream read blocks, with `UpstreamReader`: while a check is in flight the upstream is read on a thread
of its own (one per stream, started when first needed), and the caller waits for whichever comes first,
the item or a verdict.

Neither loses or reorders an upstream item: one read is in flight at a time, it is never cancelled while
the stream goes on (a verdict that wins leaves it running, and the next call returns its item), and
cancelling the async caller leaves it in flight for the next call, as `CancelSafeLane` does for the
monitor's own calls. Only closing (the stream ends) stops it: `UpstreamRace.aclose` cancels the read and closes
the upstream once the read has landed, waiting up to ``CLOSE_GRACE_S`` (later, in the background, when it has
not); `UpstreamReader.close` closes the upstream at once when no read is in flight, else as soon as that read
returns (a blocking read cannot be interrupted; the item is dropped), waiting up to ``CLOSE_GRACE_S`` for
it so that the upstream is closed before the caller goes on; a stalled upstream is left to the reader.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
import weakref
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from .task_ends import mark_read

__all__ = ["UpstreamRace", "UpstreamReader", "verdict_waiters", "arelease_judged", "release_judged"]

T = TypeVar("T")
logger = logging.getLogger(__name__)


def verdict_waiters(*monitors: Any) -> list[Any]:
    """The checks in flight whose verdicts may let text of ``monitors`` out (monitors without any: none):
    asyncio futures for async monitors, `concurrent.futures.Future` for sync ones."""
    waiters = []
    for monitor in monitors:
        waiter = getattr(monitor, "verdict_waiter", None)  # a remote monitor has none: its server judges
        future = waiter() if waiter is not None and not getattr(monitor, "closed", False) else None
        if future is not None:
            waiters.append(future)
    return waiters


def release_judged(monitor: Any) -> str:
    """What a sync ``monitor``'s verdicts let out now, without new text ("" for a monitor that cannot say)."""
    release = getattr(monitor, "release_judged", None)
    if release is None or getattr(monitor, "closed", False):
        return ""
    return str(release())


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
            try:
                await asyncio.wait({read, *waiters}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # Left in flight: a consumer that goes away (the stream never closed) would leave its error unread.
                # Marked only here, not on every chunk's read: a read taken below has its outcome read.
                read.add_done_callback(mark_read)
                raise
            if not read.done():
                read.add_done_callback(mark_read)  # left in flight too: a verdict came first
                return False, None
        self._read = None
        return True, read.result()

    async def aclose(self, *, upstream: bool = True, grace_s: float | None = None) -> None:
        """Cancel the read in flight (the stream ended otherwise), then close the upstream (``upstream=False``: leave
        it open). An async generator whose step is still being cancelled cannot be closed yet ("already running"),
        so the read is given ``grace_s`` (`CLOSE_GRACE_S`) to land; one that has not landed by then, or when this
        close is cancelled, is left to finish and the upstream is closed when it does, as `UpstreamReader.close`
        does: a provider whose read ignores cancellation never holds the consumer (rt56e F2: the close waited for
        it without end)."""
        read, self._read = self._read, None
        try:
            if read is not None and not read.done():
                read.cancel()
                await asyncio.wait({read}, timeout=CLOSE_GRACE_S if grace_s is None else grace_s)
        finally:
            if upstream:
                if read is None or read.done():
                    await self._close_upstream()
                else:
                    read.add_done_callback(lambda _read: _in_background(self._close_upstream()))

    async def _close_upstream(self) -> None:
        close = getattr(self._iterator, "aclose", None)
        if close is not None:
            await close()


#: Closes started when a read landed after its stream's close had gone on (`UpstreamRace.aclose`): kept referenced.
_CLOSING: set[asyncio.Future[Any]] = set()


def _in_background(close: Any) -> None:
    task = asyncio.ensure_future(close)
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)
    task.add_done_callback(mark_read)


#: How long `UpstreamReader.close` and `UpstreamRace.aclose` wait for a read in flight to return so that the
#: upstream is closed before the caller goes on (the next token of a streaming model comes within this; a stalled
#: one does not: then the caller goes on at once and the upstream is closed when the read returns).
CLOSE_GRACE_S = 1.0

_READ, _STOP = object(), object()
_ITEM, _END, _ERROR, _WAKE = range(4)


class UpstreamReader(Generic[T]):
    """Sync twin of `UpstreamRace`: reads a blocking upstream one item at a time so that its caller can
    wake when a verdict comes back instead of on the next item.

    >>> reader = UpstreamReader(chunks)                                          # doctest: +SKIP
    >>> for fresh, chunk in reader.race(lambda: verdict_waiters(monitor)): ...   # doctest: +SKIP

    With checks in flight the read runs on a thread of the reader's own (started on first need); with none
    (nothing can come back early) it runs on the caller's thread, as a plain loop would. Either way the
    upstream runs in a copy of the caller's context (its context variables when the reader was made).
    Always `close` it (a ``finally``): that closes the upstream, with ``close(upstream)`` when given."""

    def __init__(
        self, upstream: Iterable[T], *, close: Callable[[Any], None] | None = None, name: str = "qwenguard-upstream"
    ) -> None:
        self._iterator = iter(upstream)
        self._close = close
        self._context = contextvars.copy_context()
        self._name = name
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._inbox: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._asked = False  # the thread was asked for an item the caller has not taken yet
        self._busy = False  # the thread is inside the upstream's ``next``
        self._closed = False
        self._upstream_closed = threading.Event()  # set by the reader thread when it closed the upstream
        self._watched: weakref.WeakSet[Future[Any]] = weakref.WeakSet()  # waiters that will wake us

    def next(self, waiters: Iterable[Future[Any]] = ()) -> tuple[bool, T | None]:
        """``(True, item)``: the next upstream item; ``(False, None)``: a waiter finished first.

        Raises `StopIteration` at the end of the upstream and the upstream's own errors."""
        if self._closed:
            raise StopIteration
        waiters = list(waiters)
        if not self._asked and not waiters:
            return True, self._context.run(next, self._iterator)  # no verdict to wait for: read here
        if not self._asked:
            self._asked = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._read_loop, name=self._name, daemon=True)
                self._thread.start()
            self._requests.put(_READ)
        for waiter in waiters:
            if waiter not in self._watched:
                self._watched.add(waiter)
                waiter.add_done_callback(self._wake)  # runs at once if it is done already
        kind, value = self._inbox.get()
        if kind == _WAKE:
            return False, None  # the read stays in flight: the next call returns its item
        self._asked = False
        if kind == _ITEM:
            return True, value
        if kind == _END:
            raise StopIteration
        raise value

    def race(self, waiters: Callable[[], Iterable[Future[Any]]]) -> Iterator[tuple[bool, T | None]]:
        """`next` until the upstream ends, with ``waiters()`` asked anew before each read (the checks in
        flight change as the stream goes on)."""
        while True:
            try:
                yield self.next(waiters())
            except StopIteration:
                return

    def _wake(self, _future: Future[Any]) -> None:
        self._inbox.put((_WAKE, None))

    def _read_loop(self) -> None:
        while True:
            request = self._requests.get()
            with self._lock:
                if request is _STOP or self._closed:
                    return
                self._busy = True
            try:
                result: tuple[int, Any] = (_ITEM, self._context.run(next, self._iterator))
            except StopIteration:
                result = (_END, None)
            except BaseException as exc:  # noqa: BLE001 - the caller's to handle, on its own thread
                result = (_ERROR, exc)
            with self._lock:
                self._busy = False
                closed = self._closed
            if closed:  # the caller left while this read ran: the upstream is closed here, the item dropped
                try:
                    self._close_upstream()
                except Exception:  # noqa: BLE001 - nobody is left to tell; closing is best effort here
                    logger.debug("closing the upstream failed", exc_info=True)
                finally:
                    self._upstream_closed.set()
                return
            self._inbox.put(result)
            if result[0] != _ITEM:
                return

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Stop reading and close the upstream: at once, or when the read in flight returns (waiting up to
        ``grace_s`` for that; past it the reader thread closes the upstream on its own)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            busy = self._busy
        self._requests.put(_STOP)
        if not busy:
            self._close_upstream()
        else:
            self._upstream_closed.wait(grace_s)

    def _close_upstream(self) -> None:
        if self._close is not None:
            self._context.run(self._close, self._iterator)
            return
        close = getattr(self._iterator, "close", None)
        if close is not None:
            self._context.run(close)
