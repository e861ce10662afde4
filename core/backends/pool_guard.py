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
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import httpx

__all__ = ["SlotKeepingTransport"]

T = TypeVar("T")


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


class SlotKeepingTransport(httpx.AsyncBaseTransport):
    """``transport`` (an httpx transport with a connection pool) whose requests give their pool slot back whenever
    they are cancelled: waiting for a connection or the reply, reading it, or closing it."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self._transport = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        task = asyncio.ensure_future(self._transport.handle_async_request(request))
        response = await _cancelled_once(task)
        response.stream = _WholeClose(response.stream)
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()
