"""Timing for the tests that measure cost as a ratio in one run (never as an absolute bound)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any


def least_seconds(work: Callable[[Any], Any], *args: Any, tries: int = 2) -> tuple[float, ...]:
    """The least of ``tries`` timings of ``work(arg)`` for each of ``args``, taken by turns (a, b, a, b...): a loaded
    machine only ever adds time, and load that comes and goes falls on every argument alike. Timed in the CPU
    seconds of this process (all its threads), not on the wall clock: on a machine with more runnable processes
    than cores, a run waits for a core about once per time slice, so a 12 ms run waited several times as long as
    a 3 ms one on every try (15x for 4x the text, under a load of 13 on 2 cores). The garbage collector is held off
    while each runs: in a process that has run thousands of tests, one full collection (set off by the larger
    argument's allocations) cost more than the work measured (CI: 0.13 s against 0.012 s x4)."""
    best = [float("inf")] * len(args)
    for _ in range(tries):
        for i, arg in enumerate(args):
            gc.collect()
            gc.disable()
            try:
                began = time.process_time()
                work(arg)
                best[i] = min(best[i], time.process_time() - began)
            finally:
                gc.enable()
    return tuple(best)


def least_seconds_within(
    work: Callable[[Any], Any],
    small: Any,
    large: Any,
    *,
    ratio: float,
    floor: float = 0.0,
    tries: int = 2,
    rounds: int = 4,
) -> tuple[float, float]:
    """`least_seconds` of ``work(small)`` and ``work(large)``, measured again (up to ``rounds`` times, the least
    of every try kept) while ``large`` took ``ratio`` times ``small`` or more: a burst of load on one argument's
    try can only add time, so a cost that grows as the test allows comes under the ratio on a later round, and a
    cost that grows faster stays over it on every round. The caller asserts ``large < ratio * max(small, floor)``
    on what it returns."""
    best_small = best_large = float("inf")
    for _ in range(rounds):
        took_small, took_large = least_seconds(work, small, large, tries=tries)
        best_small, best_large = min(best_small, took_small), min(best_large, took_large)
        if best_large < ratio * max(best_small, floor):
            break
    return best_small, best_large
