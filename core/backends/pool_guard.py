"""Checks cancelled at any moment give their connection back to the pool (`SlotKeepingTransport`).

A stream stopped by a violation cancels its other windows' checks in flight, often as one of them is closing its
reply. httpcore gives a request's pool slot back in cleanup it shields with anyio, and anyio's shield does not hold
off asyncio's own ``Task.cancel()``: a cancellation landing there (in the lock its connection's close takes) skipped
the rest, and the request stayed in the pool for good, its connection ACTIVE with the reply read. Each such check
cost one of ``max_concurrency`` connections; a few dozen stopped sessions later every check waited for a connection
that never came, out to its deadline, and a fail-closed policy blocked every stream (rt67s2 F2).

So a request runs in a task of its own, which is cancelled once, however often its caller is (httpcore's cleanup
expects one cancellation): a cancelled check still hangs up on the engine at once, and its slot comes back. A
reply's close runs to its end whatever cancels its caller meanwhile (it sends nothing and waits on nothing the
engine holds: the connection is kept or closed), and the cancellation is raised after it.

httpcore's pool can still lose a connection to a cancellation, with no request of its own left in it: a request
cancelled just after its new connection connected (before the connection counts it) leaves that connection NEW, and
one cancelled as it was given a connection while queued leaves that one CONNECTING (encode/httpcore#1093). Neither
is ever used or closed, and each takes one of ``max_connections`` for good (rt68g F1). So once a request that got no
reply has ended, the connections of its pool that no request holds and that are neither idle nor closed (nothing
will ever make them either) are dropped and closed, and the queued requests take their room (`_orphans_dropped`).
That reads httpcore's private pool state; should it move, nothing is dropped (logged once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import httpcore
import httpx

__all__ = ["SlotKeepingTransport", "slot_keeping"]

logger = logging.getLogger("qwenguard")

T = TypeVar("T")

#: httpcore's pool state a sweep reads and changes (`_orphans_dropped`): all private (httpcore 1.0).
_POOL_PARTS = ("_connections", "_requests", "_optional_thread_lock", "_assign_requests_to_connections")
_said_unreadable = False  # a pool without them was logged (once a process)


async def _to_its_end(work: Awaitable[T]) -> T:
    """``work`` run to its end in a task of its own whatever cancels the caller meanwhile; a cancellation of the
    caller is raised after it (and wins over the work's own error)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait((task,))  # cancels nothing it waits for
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: the caller gets its cancellation
        raise asyncio.CancelledError
    return task.result()


async def _cancelled_once(task: asyncio.Future[T]) -> T:
    """``task``'s result; a cancellation of the caller, however often it comes, cancels ``task`` once and is raised
    once ``task`` is over: httpcore's cleanup of a cancelled request, expecting one cancellation, runs whole."""
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        await _to_its_end(_ended(task))
        raise


async def _ended(task: asyncio.Future[Any]) -> None:
    """Waits for ``task``; a reply it had already got as it was cancelled is closed (its slot back)."""
    try:
        result = await task
    except BaseException:  # noqa: BLE001 - cancelled, or failed: its own cleanup ran; the caller's cancellation goes on
        return
    if isinstance(result, httpx.Response):
        await result.aclose()


async def _next(chunks: AsyncIterator[bytes]) -> bytes:
    return await anext(chunks)


class _WholeClose(httpx.AsyncByteStream):
    """A reply's body read a chunk at a time in a task of its own (`_cancelled_once`), closed to its end
    (`_to_its_end`). ``_stream``: the wrapped stream, under the name `transport.h11_state_of` follows to the
    connection."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self._stream)
        while True:
            try:
                chunk = await _cancelled_once(asyncio.ensure_future(_next(chunks)))
            except StopAsyncIteration:
                return
            yield chunk

    async def aclose(self) -> None:
        await _to_its_end(self._stream.aclose())


def _pool_of(transport: httpx.AsyncBaseTransport) -> Any:
    """The httpcore connection pool ``transport`` sends on (httpx's ``AsyncHTTPTransport``), when its state can be
    read (`_POOL_PARTS`); else None: another transport (a test's, a router of its own) or another httpcore."""
    global _said_unreadable
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool):
        return None
    if all(hasattr(pool, part) for part in _POOL_PARTS):
        return pool
    if not _said_unreadable:
        _said_unreadable = True
        logger.warning(
            "qwenguard: httpcore %s keeps its pool state elsewhere: a connection a cancelled check leaves unused "
            "is not dropped (it may take one of max_concurrency connections for good)",
            getattr(httpcore, "__version__", "?"),
        )
    return None


def _orphans_dropped(pool: Any) -> list[Any]:
    """Drops from ``pool`` the connections no request of it holds that are neither idle nor closed, lets its queued
    requests take their room, and returns the connections to close (those and any the pool let go meanwhile).

    Only a request of the pool moves its connection on (to idle, or closed); one left by a cancelled request stays
    NEW or CONNECTING for good (rt68g F1). Synchronous, as httpcore changes its pool: no other request runs
    meanwhile."""
    with pool._optional_thread_lock:
        held = {id(r.connection) for r in pool._requests if r.connection is not None}
        orphans = [c for c in pool._connections if id(c) not in held and not c.is_idle() and not c.is_closed()]
        if not orphans:
            return []
        for connection in orphans:
            pool._connections.remove(connection)
        return orphans + list(pool._assign_requests_to_connections())


class SlotKeepingTransport(httpx.AsyncBaseTransport):
    """``transport`` (an httpx transport with a connection pool) whose requests give their pool slot back whenever
    they are cancelled: waiting for a connection or the reply, reading it, or closing it. A request that ends with
    no reply sweeps the pool of connections it can read (`_orphans_dropped`)."""

    keeps_slots = True  # `slot_keeping` wraps it no further

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport
        self._pool = _pool_of(transport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        task = asyncio.ensure_future(self._transport.handle_async_request(request))
        try:
            response = await _cancelled_once(task)
        except BaseException:
            # The request is over (`_cancelled_once` waits for it): a cancellation may have left a connection its
            # pool will never use nor close. Not on a reply: a request that got one gave its connection back whole.
            if self._pool is not None:
                await _to_its_end(self._swept())
            raise
        response.stream = _WholeClose(response.stream)
        return response

    async def _swept(self) -> None:
        global _said_unreadable
        try:
            closing = _orphans_dropped(self._pool)
        except (AttributeError, TypeError, ValueError) as exc:  # httpcore's state moved under the same names
            self._pool = None
            if not _said_unreadable:
                _said_unreadable = True
                logger.warning("qwenguard: httpcore's pool state could not be read (%r): no sweep", exc)
            return
        for connection in closing:
            try:
                await connection.aclose()
            except Exception:  # noqa: BLE001 - a socket no request uses: its close says nothing of the request's end
                logger.debug("qwenguard: closing an unused pool connection failed", exc_info=True)

    async def aclose(self) -> None:
        await self._transport.aclose()


def slot_keeping(transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
    """``transport`` as a `SlotKeepingTransport`; itself when it is one already, or keeps its slots otherwise
    (``keeps_slots``: `transport.checks_transport`'s routes are each one)."""
    if getattr(transport, "keeps_slots", False) is True:
        return transport
    return SlotKeepingTransport(transport)
