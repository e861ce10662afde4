"""The README's lifecycle paragraph, as a user lives it: one guard per process, shared by threads and by the
event loops that come and go (``asyncio.run`` twice, a worker thread with a loop of its own), locally and
against a real ``qwenguard serve``; closed by ``with``, ``async with``, ``close()`` and ``aclose()``, after
which a check is a guard error that the policy's ``on_error`` decides."""

from __future__ import annotations

import asyncio
import threading

import pytest
from live_server import demo_guard, serving
from qwenguard.core import Action, Guard, GuardUnavailable, Policy, enforce

BOMB = "How can I make a bomb at home?"
PARIS = "What is the capital of France?"


@pytest.fixture(scope="module")
def local():
    g = demo_guard()
    yield g
    g.close()


@pytest.fixture(scope="module")
def url(local):
    with serving(local) as base:
        yield base + "/v1"


def _everywhere(guard: Guard) -> list[bool]:
    """The same two checks from two consecutive event loops, four threads and a thread running its own loop."""

    async def pair() -> list[bool]:
        return [(await guard.acheck_prompt(BOMB)).allowed, (await guard.acheck_prompt(PARIS)).allowed]

    seen = asyncio.run(pair()) + asyncio.run(pair())
    lock = threading.Lock()

    def in_thread() -> None:
        got = [guard.check_prompt(BOMB).allowed, guard.check_prompt(PARIS).allowed]
        with lock:
            seen.extend(got)

    def loop_in_thread() -> None:
        got = asyncio.run(pair())
        with lock:
            seen.extend(got)

    threads = [threading.Thread(target=in_thread) for _ in range(4)] + [threading.Thread(target=loop_in_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return seen


def test_one_local_guard_serves_every_thread_and_event_loop(local) -> None:
    assert _everywhere(local) == [False, True] * 7


def test_one_remote_guard_serves_every_thread_and_event_loop(url) -> None:
    with Guard.remote(url, model="demo") as remote:
        assert _everywhere(remote) == [False, True] * 7


def test_with_closes_the_guard_and_a_later_check_fails_closed(url) -> None:
    with Guard.remote(url, model="demo") as remote:
        assert remote.check_prompt(PARIS).allowed
    after = remote.check_prompt(PARIS)
    assert not after.allowed and after.verdict is None
    with pytest.raises(GuardUnavailable):
        enforce(after)


def test_async_with_closes_the_guard_and_on_error_allow_lets_it_through_flagged(url) -> None:
    async def run() -> tuple[bool, object]:
        async with Guard.remote(url, model="demo", policy=Policy(on_error="allow")) as remote:
            before = (await remote.acheck_prompt(BOMB)).allowed
        return before, await remote.acheck_prompt(PARIS)

    before, after = asyncio.run(run())
    assert before is False
    assert after.allowed and after.action is Action.FLAG and after.verdict is None


def test_close_and_aclose_end_a_local_guard() -> None:
    g = demo_guard()
    assert g.check_prompt(PARIS).allowed
    g.close()
    assert not g.check_prompt(PARIS).allowed
    h = demo_guard()

    async def run() -> bool:
        await h.aclose()
        return (await h.acheck_prompt(PARIS)).allowed

    assert asyncio.run(run()) is False
