"""One thread runs every local model's CPU work (`torch_runtime.run_on_torch_thread`): a process with a Gen
and a Stream model keeps one OpenMP team, not one per model (libgomp slows every kernel once the process
holds more OpenMP threads than CPUs: docs/performance.md).

On the demo guards: the user's action is loading both models and checking and streaming through them,
concurrently; the model forwards are recorded by thread."""

from __future__ import annotations

import asyncio
import threading

import pytest
from qwenguard.core import Guard
from qwenguard.core.backends import torch_runtime
from qwenguard.core.backends.torch_runtime import arun_on_torch_thread, run_on_torch_thread


def _record_threads(model) -> set[str]:
    """Names of the threads that run ``model``'s forwards from now on (every forward, packed or not, starts
    with the token embedding)."""
    seen: set[str] = set()
    model.model.embed_tokens.register_forward_pre_hook(lambda *_: seen.add(threading.current_thread().name))
    return seen


@pytest.fixture(scope="module")
def guard():
    g = Guard.from_pretrained("demo", stream_model="demo-stream", device="cpu")
    yield g
    g.close()


def test_a_gen_and_a_stream_model_run_their_forwards_on_one_thread(guard):
    gen = _record_threads(guard.backend.model)
    stream = _record_threads(guard.stream_backend.model)

    async def run() -> None:
        async def streamed() -> None:
            async with guard.astream("Tell me about Paris.") as monitor:
                for piece in ["Paris", " is", " the", " capital", " of", " France", "."]:
                    await monitor.afeed(piece)
                await monitor.afinish()

        await asyncio.gather(guard.acheck_prompt("What is the capital of France?"), streamed())

    asyncio.run(run())
    assert gen and stream, (gen, stream)
    assert gen | stream == {"qwenguard-torch"}, (gen, stream)


def test_an_application_runs_its_own_torch_work_on_the_same_thread(guard):
    gen = _record_threads(guard.backend.model)
    guard.check_prompt("How do I bake bread?")
    mine = run_on_torch_thread(lambda: threading.current_thread().name)
    assert {mine} == gen == {"qwenguard-torch"}

    async def from_a_loop() -> tuple[str, int]:
        ticks = 0
        done = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        name = await arun_on_torch_thread(lambda: (threading.Event().wait(0.1), threading.current_thread().name)[1])
        done.set()
        await ticker
        return name, ticks

    name, ticks = asyncio.run(from_a_loop())
    assert name == "qwenguard-torch"
    assert ticks > 5  # the event loop ran while the work did


def test_reentry_runs_inline_and_errors_reach_the_caller():
    def outer() -> str:
        return run_on_torch_thread(lambda: threading.current_thread().name)  # would deadlock if queued

    assert run_on_torch_thread(outer) == "qwenguard-torch"

    def fails() -> None:
        raise ValueError("from the torch thread")

    with pytest.raises(ValueError, match="from the torch thread"):
        run_on_torch_thread(fails)
    assert run_on_torch_thread(lambda: 42) == 42  # the thread lives on after an error


def test_after_shutdown_began_work_runs_on_the_callers_thread():
    runner = torch_runtime._TorchThread()
    assert runner.submit(lambda: threading.current_thread().name).result(5) == "qwenguard-torch"
    runner.stop()
    assert runner.submit(lambda: threading.current_thread().name).result(5) == threading.current_thread().name


def test_a_check_made_on_the_torch_thread_fails_closed_at_once_instead_of_waiting(guard):
    """An application that calls the guard from inside the work it gave `run_on_torch_thread` asks the
    torch thread to wait for itself: the check fails closed at once with a message that says why,
    instead of holding the thread (and every model's forwards) until the check times out."""
    import time

    started = time.perf_counter()
    text = "How many bridges cross the Seine in Paris?"  # not checked before: no cached verdict
    decision = run_on_torch_thread(guard.check_prompt, text)
    assert time.perf_counter() - started < 5
    assert decision.blocked and decision.reason == "guard_error", decision
    assert "torch thread" in (decision.error or ""), decision.error
    assert guard.check_prompt(text).allowed  # the same check outside the torch thread is answered
