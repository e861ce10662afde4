"""Timing for the tests that measure cost as a ratio in one run (never as an absolute bound)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any


def least_seconds(work: Callable[[Any], Any], *args: Any, tries: int = 2) -> tuple[float, ...]:
    """The least of ``tries`` timings of ``work(arg)`` for each of ``args``, taken by turns (a, b, a, b...): a loaded
    machine only ever adds time, and load that comes and goes falls on every argument alike. The garbage collector
    is held off while each runs: in a process that has run thousands of tests, one full collection (set off by the
    larger argument's allocations) cost more than the work measured (CI: 0.13 s against 0.012 s x4)."""
    best = [float("inf")] * len(args)
    for _ in range(tries):
        for i, arg in enumerate(args):
            gc.collect()
            gc.disable()
            try:
                began = time.perf_counter()
                work(arg)
                best[i] = min(best[i], time.perf_counter() - began)
            finally:
                gc.enable()
    return tuple(best)
