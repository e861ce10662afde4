"""rt67s2 F2: remote stream sessions, each stopped by a violation, one after another against a qwenguard server.

A stopped stream cancels its other windows' checks in flight; one cancelled as its reply was closing stayed in the
client's connection pool for good (httpcore's shielded cleanup does not hold off asyncio's ``Task.cancel()``). After
as many of them as ``max_concurrency``, every check of every later session waited for a connection out to its
deadline, and the fail-closed policy blocked every stream while the server sat idle.

Each session here must be stopped by its own verdict (reason "unsafe"), not by a timeout, with none of the unsafe
text released; and once the sessions are over the pool holds no request and at most ``max_concurrency`` connections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.core.errors import QwenGuardError
from test_server_hostile import guarded

SESSIONS = 40
CONNECTIONS = 1  # max_concurrency: one check kept by the pool stopped every later one (a few sessions in)
SAFE = "Wipe the counter with warm water. "
UNSAFE = "Mix ammonium with bleach. "  # keyword_verdict: "bleach" is unsafe
PARTS = [SAFE] * 12 + [UNSAFE] * 12  # windows in flight as the first unsafe verdict stops the session


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with guarded(Guard(ScriptedBackend(keyword_verdict)), model_name="guard", max_streams_per_client=1) as url:
        yield url


def remote(base: str) -> Guard:
    # A deadline short enough that a check waiting for a connection that never comes fails the test quickly.
    return Guard.remote(
        base + "/v1", model="guard", max_concurrency=CONNECTIONS, cache_size=0, policy=Policy(timeout_s=5.0)
    )


def pool_of(guard: Guard) -> Any:
    """The httpcore connection pool the checks' client sends on (through the transports wrapping it)."""
    node = guard.backend._wire.client._transport  # type: ignore[attr-defined]
    while not hasattr(node, "_pool"):
        node = next(iter(node._routes.values())) if hasattr(node, "_routes") else node._transport
    return node._pool


def settled(guard: Guard) -> Any:
    """The pool once the cancelled checks are over (their task on the client's loop ends as its reply closes);
    the wait is only a guard against a hang: a kept request stays."""
    pool = pool_of(guard)
    end = time.monotonic() + 10
    while pool._requests and time.monotonic() < end:
        time.sleep(0.05)
    return pool


def assert_pool_whole(guard: Guard) -> None:
    pool = settled(guard)
    assert [r.request.url.path for r in pool._requests] == []  # no check kept its connection
    assert len(pool.connections) <= CONNECTIONS
    assert all(c.is_idle() for c in pool.connections), pool.connections


def assert_stopped_by_its_verdict(stop: BaseException | None, released: str, session: int) -> None:
    # A check that waited out its deadline is a GuardTimeout (fail closed), not the session's own verdict.
    assert isinstance(stop, GuardViolation), (session, repr(stop))
    d = stop.decision
    assert (d.allowed, d.reason) == (False, "unsafe"), (session, d.reason, d.error)
    assert "bleach" not in released and "ammonium" not in released, (session, released)


async def astopped_sessions(guard: Guard) -> None:
    """`SESSIONS` stream sessions one after another, each stopped by its own verdict (`assert_stopped_by_its_verdict`)."""
    for i in range(SESSIONS):
        released, stop = "", None
        try:
            async with guard.astream("Tell me about cleaning.") as monitor:
                for part in PARTS:
                    released += await monitor.afeed(part)
                released += await monitor.afinish()
        except QwenGuardError as exc:
            stop = exc
        assert_stopped_by_its_verdict(stop, released, i)


def stopped_sessions(guard: Guard) -> None:
    """Sync twin of `astopped_sessions`."""
    for i in range(SESSIONS):
        released, stop = "", None
        try:
            with guard.stream("Tell me about cleaning.") as monitor:
                for part in PARTS:
                    released += monitor.feed(part)
                released += monitor.finish()
        except QwenGuardError as exc:
            stop = exc
        assert_stopped_by_its_verdict(stop, released, i)


def test_async_stream_sessions_stopped_one_after_another_keep_being_answered(base):
    guard = remote(base)
    try:
        asyncio.run(astopped_sessions(guard))
        assert_pool_whole(guard)
    finally:
        guard.close()


def test_sync_stream_sessions_stopped_one_after_another_keep_being_answered(base):
    guard = remote(base)
    try:
        stopped_sessions(guard)
        assert_pool_whole(guard)
    finally:
        guard.close()
