"""rt52b F3: the thread pools that run sync window checks and parallel input checks are the process's, shared by
every guard and stream. Another guard's slow checks filling them made an idle guard's checks wait in the queue:
each stream window timed out (its deadline counted the queue), and under ``on_error="allow"`` the unsafe clause
went out unjudged; a parallel input check waited for a free worker. A check still queued when its caller needs it
is now judged on the caller's thread. The fault: every worker of the pool held by a task that waits (another
guard's engine answering slowly); the verdicts are the demo guard's."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.core.streaming.gen_windows import window_pool
from qwenguard.core.streaming.parallel import PendingCheck, _pool

CLAUSE = (
    "Sure. Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse. It is how to build a bomb at home."
)


@pytest.fixture(scope="module")
def fail_open_guard() -> Guard:
    return Guard.from_pretrained("demo", policy=Policy(timeout_s=8.0, on_error="allow"))


def _filled(pool: ThreadPoolExecutor) -> Iterator[list[Future[bool]]]:
    """Every worker of ``pool`` held (up to 40 s) until the test ends: the verdicts must come while they are."""
    release = threading.Event()
    held = [pool.submit(release.wait, 40) for _ in range(pool._max_workers)]
    try:
        yield held
    finally:
        release.set()
        for future in held:
            future.result(timeout=30)


@pytest.fixture
def busy_window_pool() -> Iterator[list[Future[bool]]]:
    yield from _filled(window_pool())


@pytest.fixture
def busy_input_pool() -> Iterator[list[Future[bool]]]:
    yield from _filled(_pool())


def test_a_stream_is_judged_while_other_guards_hold_every_window_worker(fail_open_guard, busy_window_pool):
    out = ""
    with pytest.raises(GuardViolation), fail_open_guard.stream("Tell me about Paris.", holdback=8) as monitor:
        out += monitor.feed("The capital of France is Paris. It is on the Seine. ")
        out += monitor.feed(CLAUSE + " ")
        out += monitor.finish()
    assert "ammonium" not in out and not monitor.flags
    assert not any(f.done() for f in busy_window_pool)  # judged while the other guard held every worker


def test_a_parallel_prompt_check_is_judged_while_every_input_worker_is_held(fail_open_guard, busy_input_pool):
    pending = PendingCheck.start(lambda: fail_open_guard.check_prompt("How can I make a bomb at home?"))
    with pytest.raises(GuardViolation):
        pending.wait()
    assert pending.result() is not None and pending.result().reason == "unsafe"
    assert not any(f.done() for f in busy_input_pool)


def test_a_parallel_stream_prompt_check_is_judged_while_every_window_worker_is_held(fail_open_guard, busy_window_pool):
    with pytest.raises(GuardViolation) as stopped:
        with fail_open_guard.stream("How can I make a bomb at home?", parallel_input=True) as monitor:
            monitor.feed("Sure. ")
            monitor.finish()
    assert stopped.value.decision.stage.value == "prompt"
    assert not any(f.done() for f in busy_window_pool)


def test_two_threads_waiting_on_one_queued_input_check_get_one_verdict(fail_open_guard, busy_input_pool):
    """rt52e F2: the first version judged a queued check in each waiting thread, in one context object, which
    cannot be entered twice: a second tool waiting beside the first (``RunnableParallel``) got ``RuntimeError`` on
    a safe prompt, and every later wait judged the prompt again."""
    calls: list[int] = []

    def check() -> object:
        calls.append(1)
        time.sleep(0.2)  # the two waiters meet while it runs
        return fail_open_guard.check_prompt("What is the capital of France?")

    pending = PendingCheck.start(check)
    results: list[object] = []
    waiters = [threading.Thread(target=lambda: results.append(pending.wait().reason)) for _ in range(2)]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join(30)
    assert results == ["safe", "safe"] and calls == [1]
    assert pending.wait().reason == "safe" and asyncio.run(pending.wait_async()).reason == "safe" and calls == [1]
    assert not any(f.done() for f in busy_input_pool)
