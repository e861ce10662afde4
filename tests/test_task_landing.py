"""A consumer cancelled just as the guard stops its stream: the stream's step finishes before anything closes it.

The intermittent CI failure of notes 53-55 (``test_an_abandoned_stream_leaves_no_unread_check_error``): a consumer
dropped `GuardedChatModel.astream` as its parallel input check failed. The race (`PendingCheck.guard`) cancelled the
model's read in flight and waited for that cancellation to land, but the consumer's own cancel interrupted the wait:
`auntil_blocked` then closed a generator whose step was still running, and ``RuntimeError: aclose(): asynchronous
generator is already running`` replaced the consumer's ``CancelledError``, inside a task that read the model.
`UpstreamRace.aclose` had the same wait, and a race dropped unclosed left its read's error for asyncio to log.

The upstream here is an async generator that takes a few loop turns to wind down when cancelled, as a provider's
stream does (an HTTP response to close, callbacks to run).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from qwenguard.core.streaming.parallel import PendingCheck
from qwenguard.core.streaming.wakeup import UpstreamRace
from qwenguard.integrations.langchain._input_beside import auntil_blocked
from unread_errors import unread_errors


class Blocked(Exception):
    """The input check's verdict: blocked."""


async def slow_to_land(log: list[str], release: asyncio.Event | None = None) -> AsyncIterator[str]:
    """Yields "a", then waits; cancelled, it takes three loop turns to wind down. ``release``: raise `Blocked`
    once it is set instead of waiting forever."""
    try:
        yield "a"
        if release is not None:
            await release.wait()
            raise Blocked("the read failed")
        await asyncio.Event().wait()
        yield "b"
    except asyncio.CancelledError:
        log.append("cancelled")
        for _ in range(3):
            await asyncio.sleep(0)
        raise
    finally:
        log.append("closed")


def blocking_check(verdict_in: asyncio.Event) -> PendingCheck:
    async def check() -> None:
        await verdict_in.wait()
        raise Blocked("the input is blocked")

    return PendingCheck.start_async(check())


async def until(log: list[str], entry: str) -> None:
    for _ in range(100):
        if entry in log:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{entry!r} never came: {log}")


async def with_a_read_in_flight(upstream: AsyncIterator[str]) -> UpstreamRace[str]:
    """A race over ``upstream`` that took "a" and whose next read is in flight, its caller gone (by design the read
    stays in flight: the next call would take its item)."""
    race: UpstreamRace[str] = UpstreamRace(upstream)
    assert await race.next() == (True, "a")
    reader = asyncio.ensure_future(race.next())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    return race


async def test_the_race_lets_the_read_land_when_its_caller_is_cancelled_meanwhile():
    log: list[str] = []
    verdict_in = asyncio.Event()
    pending = blocking_check(verdict_in)
    stream = slow_to_land(log)
    assert await stream.__anext__() == "a"
    racer = asyncio.ensure_future(pending.guard(stream.__anext__(), wait=False))
    await asyncio.sleep(0)
    verdict_in.set()  # the input is blocked: the race cancels the read ...
    await until(log, "cancelled")
    racer.cancel()  # ... and the consumer goes away while that cancellation lands
    with pytest.raises(asyncio.CancelledError):
        await racer
    assert "closed" in log  # the read had finished: the stream can be closed now
    await stream.aclose()


async def test_a_consumer_cancelled_as_the_input_is_blocked_sees_its_cancel():
    """Through `auntil_blocked` (`GuardedChatModel` and `GuardRunnable` with ``parallel_input``): the consumer gets
    ``CancelledError``, not "aclose(): asynchronous generator is already running"."""
    log: list[str] = []
    verdict_in = asyncio.Event()
    pending = blocking_check(verdict_in)

    async def consume() -> None:
        async for _ in auntil_blocked(slow_to_land(log), pending):
            verdict_in.set()  # the verdict comes back blocking while the next chunk is read

    consumer = asyncio.ensure_future(consume())
    await until(log, "cancelled")
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert log == ["cancelled", "closed"]


async def test_a_cancelled_close_returns_and_the_upstream_is_closed_once_the_read_lands():
    """Closing the race cancels its read; cancelled in turn, the close returns at once, and the upstream is closed
    when the read has landed, in the background (closing it before would be "already running")."""
    log: list[str] = []
    go = asyncio.Event()
    race = await with_a_read_in_flight(lands_late(log, go))
    closer = asyncio.ensure_future(race.aclose())
    await until(log, "ignored")
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert "closed" not in log
    go.set()
    await until(log, "closed")  # the read returned "b"; then the upstream was closed


async def test_a_provider_whose_read_ignores_cancellation_does_not_hold_the_consumer():
    """rt56e F2: a consumer stops reading while the guard's read-ahead of the provider is in flight; the provider's
    read swallows the cancel and stalls (a buggy SDK's retry loop). The close waited for it without end, its own
    timeout could not get it out (the unguarded consumer is back at once); now it waits a grace period."""
    log: list[str] = []
    go = asyncio.Event()
    race = await with_a_read_in_flight(lands_late(log, go))
    await asyncio.wait_for(race.aclose(grace_s=0.05), timeout=10)  # a hang detector, not a timing bound
    assert log == ["ignored"]
    go.set()
    await until(log, "closed")


async def lands_late(log: list[str], go: asyncio.Event) -> AsyncIterator[str]:
    """Yields "a"; its next read ignores a cancel and returns "b" only once ``go`` is set."""
    try:
        yield "a"
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log.append("ignored")
        await go.wait()
        yield "b"
        yield "c"
    finally:
        log.append("closed")


async def test_a_race_dropped_unclosed_leaves_no_unread_error():
    """A consumer that went away without closing the stream; the model's read then failed: nobody reads its error,
    and asyncio logged it when the read was collected, a line per dropped request."""
    async with unread_errors() as unread:
        log: list[str] = []
        release = asyncio.Event()
        race = await with_a_read_in_flight(slow_to_land(log, release))
        release.set()
        await until(log, "closed")
        await asyncio.sleep(0)
        del race
    assert unread == []


async def test_a_race_dropped_after_a_verdict_came_first_leaves_no_unread_error():
    """The same, where the read was left in flight because a verdict came back first (the race returned, the consumer
    took the judged text and went away)."""
    async with unread_errors() as unread:
        log: list[str] = []
        release = asyncio.Event()
        race: UpstreamRace[str] = UpstreamRace(slow_to_land(log, release))
        assert await race.next() == (True, "a")
        verdict = asyncio.get_running_loop().create_future()
        verdict.set_result(None)
        assert await race.next([verdict]) == (False, None)
        release.set()
        await until(log, "closed")
        await asyncio.sleep(0)
        del race
    assert unread == []


async def test_a_monitor_dropped_as_its_parallel_prompt_check_fails_leaves_no_unread_error():
    """rt56b F2: ``guard.astream(prompt, parallel_input=True)`` abandoned a few loop turns in, its oversized prompt's
    check already failed: the monitor cancelled a task that was done, nobody read its `InputTooLarge`, and asyncio
    logged it, a line per dropped request."""
    from qwenguard.core import Guard, InputTooLarge

    guard = Guard.from_pretrained("demo", max_chars=2000)

    async def deltas() -> AsyncIterator[str]:
        for i in range(50):
            await asyncio.sleep(0.002)
            yield f"Paris is nice number {i}. "

    async def consume() -> None:
        async with guard.astream("What is the capital of France?" * 200, parallel_input=True) as monitor:
            async for _ in monitor.awrap(deltas()):
                pass

    async with unread_errors() as unread:
        for turns in range(1, 6):
            task = asyncio.ensure_future(consume())
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            with pytest.raises((asyncio.CancelledError, InputTooLarge)):
                await task
    assert unread == []
