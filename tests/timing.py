"""Timing for the tests that measure cost as a ratio in one run (never as an absolute bound)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def least_seconds(work: Callable[[Any], Any], arg: Any, tries: int = 2) -> float:
    """The least of ``tries`` timings of ``work(arg)``: a loaded machine only ever adds time."""
    best = float("inf")
    for _ in range(tries):
        began = time.perf_counter()
        work(arg)
        best = min(best, time.perf_counter() - began)
    return best
