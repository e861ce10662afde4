"""The README's lifecycle paragraph, as a user lives it: one guard per process, shared by threads and by the
event loops that come and go (``asyncio.run`` twice, a worker thread with a loop of its own), locally and
against a real ``qwenguard serve``; closed by ``with``, ``async with``, ``close()`` and ``aclose()``, after
which a check is a guard error that the policy's ``on_error`` decides."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from live_server import demo_guard, serving
from qwenguard.core import Action, Guard, GuardUnavailable, Policy, Risk, Verdict, enforce
from qwenguard.core.backends.batching import MicroBatcher

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


def test_a_closed_guard_refuses_a_check_before_any_work() -> None:
    """rt52b F5: a closed local guard still planned (tokenized, cut into windows) each check before its backend
    refused it, on the planning threads every other guard shares: a server draining on a closed guard burnt them."""
    g = demo_guard()
    g.close()
    calls: list[int] = []
    inner = g.backend.classify
    g.backend.classify = lambda conversations, **kw: calls.append(1) or inner(conversations, **kw)  # type: ignore[method-assign]
    text = "Tell me about the history of Paris. " * 3_000
    decision = g.check_prompt(text)
    assert (decision.allowed, decision.reason) == (False, "guard_error")
    assert decision.error == "GuardUnavailable: the guard backend is closed"
    assert asyncio.run(g.acheck_prompt(text)).reason == "guard_error"
    assert calls == []


def test_aclose_of_a_local_guard_leaves_the_event_loop_running() -> None:
    """rt52b F8: ``await guard.aclose()`` called a local backend's sync ``close`` on the loop, which waits for the
    engine's step in flight (up to 5 s): every other task of the app froze. A close that takes 0.5 s (the fault)."""
    g = demo_guard()
    inner = g.backend.close

    def slow_close() -> None:
        time.sleep(0.5)
        inner()

    g.backend.close = slow_close  # type: ignore[method-assign]

    async def run() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0)
        await g.aclose()
        ticker.cancel()
        return ticks

    assert asyncio.run(run()) >= 5  # the loop ran on during the close (0 when it was held)


class _HeldBackend:
    """A Gen backend whose call waits until the test releases it (``entered`` says it is waiting) and then
    gives its verdict, as a local engine finishes the step it is in when its guard closes; after close a new
    call is GuardUnavailable."""

    name = "held"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.closed = False

    def classify(self, conversations, *, timeout=None):
        if self.closed:
            raise GuardUnavailable("the held backend is closed")
        self.entered.set()
        assert self.release.wait(30)
        return [Verdict(Risk.SAFE, raw="Safety: Safe\nCategories: None", model=self.name) for _ in conversations]

    async def aclassify(self, conversations, *, timeout=None):
        return await asyncio.to_thread(self.classify, conversations, timeout=timeout)

    def close(self) -> None:
        self.closed = True


def test_a_check_in_flight_at_close_puts_nothing_back_into_the_cache() -> None:
    """R3 (rt47e): the verdict of a check in flight when the guard closes does not go back into the cache that
    close() dropped (the ordering is injected: the backend answers only after close)."""
    backend = _HeldBackend()
    guard = Guard(backend)
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(guard.check_prompt(PARIS)))
    thread.start()
    assert backend.entered.wait(30)
    guard.close()
    backend.release.set()
    thread.join(30)
    assert len(got) == 1 and len(guard.cache) == 0 and guard.cache.nbytes == 0
    guard.cache.put(("held", "prompt", b"x"), Verdict(Risk.SAFE))  # a closed cache stores nothing, finds nothing
    assert len(guard.cache) == 0 and guard.cache.get(("held", "prompt", b"x")) is None


def test_a_server_holding_a_closed_guard_answers_no_verdict_put_back_after_close() -> None:
    """R3 (rt47e), against qwenguard serve: a /v1/moderate in flight at close gets its verdict, and the same text
    asked after close is refused (503) like any other, never answered from the cache (200 ``cached: true``)."""
    backend = _HeldBackend()
    guard = Guard(backend)
    body = {"conversations": [[{"role": "user", "content": PARIS}]]}
    with serving(guard) as base:
        answers: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: answers.append(httpx.post(base + "/v1/moderate", json=body, timeout=60))
        )
        thread.start()
        assert backend.entered.wait(30)
        guard.close()
        backend.release.set()
        thread.join(60)
        again = httpx.post(base + "/v1/moderate", json=body, timeout=60)
    assert answers[0].status_code == 200 and answers[0].json()["results"][0]["risk"] == "safe"
    assert again.status_code == 503, again.text
    assert len(guard.cache) == 0


def test_a_check_that_races_close_ends_instead_of_waiting_forever(monkeypatch):
    """rt49c L1: `MicroBatcher.submit` tested ``_closed`` and then queued the request; a ``close()`` between the two
    queued its stop signal first, and the request was never run nor failed: its caller waited to its deadline,
    forever without one. The window is widened here (a fault: a slow worker start) so the race is hit each time."""
    batcher = MicroBatcher(lambda items: [x * 2 for x in items], max_wait_s=0.0)
    assert batcher.run([1], timeout=5) == [2]  # the worker runs
    real = batcher._ensure_worker

    def slow_start() -> None:
        time.sleep(0.05)  # the caller is between the closed test and the put
        real()

    monkeypatch.setattr(batcher, "_ensure_worker", slow_start)
    outcome: list[object] = []

    def caller() -> None:
        try:
            outcome.append(batcher.run([1], timeout=None))
        except GuardUnavailable as exc:
            outcome.append(exc)

    thread = threading.Thread(target=caller, daemon=True)
    thread.start()
    time.sleep(0.01)
    batcher.close()
    thread.join(5)
    assert not thread.is_alive(), "the check still waits after close()"
    assert outcome and (outcome[0] == [2] or isinstance(outcome[0], GuardUnavailable))
