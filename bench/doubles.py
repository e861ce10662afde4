"""Backends and LLMs for the benchmarks: instant or fixed-latency doubles, so a bench measures the
guard path (hooks, monitor, policy, cache, events) or the overlap, not a model.

Not used by the library. ``FixedBackend`` answers every conversation at once with one verdict;
``DelayedBackend`` wraps any backend and adds a fixed latency per call (sync sleep / async sleep).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from qwenguard.core import Risk, Verdict


class FixedBackend:
    """A zero-latency Gen backend: every conversation gets ``verdict`` (safe by default)."""

    def __init__(self, verdict: Verdict | None = None, name: str = "fixed") -> None:
        self.name = name
        self.verdict = verdict or Verdict(Risk.SAFE, model=name)
        self.calls = 0

    def classify(self, conversations: Sequence, *, timeout: float | None = None) -> list[Verdict]:
        self.calls += 1
        return [self.verdict] * len(conversations)

    async def aclassify(self, conversations: Sequence, *, timeout: float | None = None) -> list[Verdict]:
        self.calls += 1
        return [self.verdict] * len(conversations)

    def close(self) -> None:
        pass


class DelayedBackend:
    """``inner`` with ``delay_s`` added to every call: a guard model of known latency."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.name = inner.name

    def classify(self, conversations: Sequence, *, timeout: float | None = None):
        start = time.perf_counter()
        time.sleep(self.delay_s)
        return _stamped(self.inner.classify(conversations, timeout=timeout), start)

    async def aclassify(self, conversations: Sequence, *, timeout: float | None = None):
        start = time.perf_counter()
        await asyncio.sleep(self.delay_s)
        return _stamped(await self.inner.aclassify(conversations, timeout=timeout), start)

    def close(self) -> None:
        self.inner.close()


def _stamped(outcomes: list, start: float) -> list:
    """Verdicts carry the time the call took, as a real backend's do (``latency_ms``)."""
    elapsed = (time.perf_counter() - start) * 1000
    return [o.with_latency(elapsed) if isinstance(o, Verdict) else o for o in outcomes]
