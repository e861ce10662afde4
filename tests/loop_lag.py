"""How long an async call holds the event loop, measured beside its baselines in the same run (never a bound in
seconds): a task sleeping 5 ms in a loop, its worst lateness while the call runs, the garbage collector off (its
pauses grow with every live object, guarded or not, and would only add noise to both sides)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: How much longer the guarded async call may hold the loop than the worst of its baselines.
RATIO = 4.0
#: Measurements before a comparison fails (see `compare`).
ROUNDS = 3


async def worst_lag(call: Callable[[], Awaitable[Any]]) -> float:
    """The worst lateness of a 5 ms sleep on the loop while ``call()`` runs (garbage collector off)."""
    worst = 0.0

    async def probe() -> None:
        nonlocal worst
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - start - 0.005)

    gc.collect()
    gc.disable()
    task = asyncio.create_task(probe())
    try:
        await asyncio.sleep(0.02)
        await call()
        await asyncio.sleep(0.01)
    finally:
        task.cancel()
        gc.enable()
    return worst


async def best_lag(call: Callable[[], Awaitable[Any]]) -> float:
    """Each call's best of two: a spike of the machine's is not the call's."""
    return min(await worst_lag(call), await worst_lag(call))


async def compare(
    guarded: Callable[[], Awaitable[Any]], *baselines: Callable[[], Awaitable[Any]], ratio: float = RATIO
) -> str | None:
    """``None`` when the guarded call held the loop at most ``ratio`` times the worst baseline, else what it held. The
    loop left idle is a baseline too: on a loaded machine its lateness is the probe's floor. Measured again, up to
    `ROUNDS` times, while over: reading on the loop holds it in every round; a burst of the machine's load (once
    497 ms against baselines of 19-69 ms, in a run beside a full suite), or a worker thread descheduled while it holds
    the GIL, does not come back each time."""
    failures = []
    for _ in range(ROUNDS):
        bases = [await best_lag(b) for b in (lambda: asyncio.sleep(0.3), *baselines)]
        lag = await best_lag(guarded)
        if lag <= ratio * max(bases):
            return None
        held = ", ".join(f"{b * 1000:.0f}" for b in bases)
        failures.append(f"held the loop {lag * 1000:.0f} ms; its baselines (idle, unguarded, ...) {held} ms")
    return "the guarded call " + "; then ".join(failures)


def in_thread(call: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    """The guarded sync call, on a worker thread: the same reading off the loop."""
    return lambda: asyncio.to_thread(call)
