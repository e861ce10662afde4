"""A failed batch's one-by-one retry, sync, ran outside the caller's window account (red team rt65h F1).

``Guard._retry_one_by_one`` judged each check again on a pool thread that did not carry the caller's context: the
backends read the call's `WindowAccount` there as ``None``, so ``max_windows_per_call`` (and a step's budget around
the call: LlamaIndex node screening) bounded nothing the retries planned: 56 windows under a bound of 4. The async
twin kept its bound (``asyncio.gather`` copies the context). The retries now run in a copy of the caller's context.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from qwenguard.core import Guard, Policy
from qwenguard.core.errors import InputTooLarge
from qwenguard.core.formats.windows import CALL_WINDOW_ACCOUNT

FACTS = ["Paris is the capital of France.", "The Eiffel Tower is in Paris.", "Lyon is a city in France."]
BUDGET = 4


class CrashOnFirstBatch:
    """The demo guard's backend; its first call of more than one conversation fails (an OOM, a server's 500), after
    the model's work (``after_work``: a timeout's way, the windows spent) or before it. Records whether each call ran
    in a window account."""

    def __init__(self, backend: Any, *, after_work: bool) -> None:
        self.backend = backend
        self.name = backend.name
        self.after_work = after_work
        self.crashed = False
        self.accounts: list[bool] = []

    def _crashes(self, convs: Any) -> bool:
        self.accounts.append(CALL_WINDOW_ACCOUNT.get() is not None)
        crash = len(convs) > 1 and not self.crashed
        self.crashed = self.crashed or crash
        return crash

    def classify(self, convs: Any, *, timeout: float | None = None) -> Any:
        crash = self._crashes(convs)
        if crash and not self.after_work:
            raise RuntimeError("CUDA out of memory")
        outcomes = self.backend.classify(convs, timeout=timeout)
        if crash:
            raise RuntimeError("the batch's answer was lost")
        return outcomes

    async def aclassify(self, convs: Any, *, timeout: float | None = None) -> Any:
        crash = self._crashes(convs)
        if crash and not self.after_work:
            raise RuntimeError("CUDA out of memory")
        outcomes = await self.backend.aclassify(convs, timeout=timeout)
        if crash:
            raise RuntimeError("the batch's answer was lost")
        return outcomes

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def demo_backend() -> Any:
    return Guard.from_pretrained("demo").backend


def judged(guard: Guard, texts: list[str], way: str) -> list[Any]:
    items = [("prompt", t) for t in texts]
    return guard.check_many(items) if way == "sync" else asyncio.run(guard.acheck_many(items))


@pytest.mark.parametrize("way", ["sync", "async"])
def test_a_failed_batchs_retries_run_in_the_calls_window_account(demo_backend: Any, way: str) -> None:
    crashing = CrashOnFirstBatch(demo_backend, after_work=False)
    guard = Guard(crashing, Policy(timeout_s=None, on_error="allow"), max_windows_per_call=BUDGET, cache_size=0)
    decisions = judged(guard, FACTS, way)
    assert crashing.crashed and len(crashing.accounts) == 1 + len(FACTS)
    assert all(crashing.accounts), crashing.accounts
    assert [d.reason for d in decisions] == ["safe"] * len(FACTS)  # within the budget: judged


@pytest.mark.parametrize("way", ["sync", "async"])
def test_retries_after_a_batch_that_spent_the_budget_are_not_judged_past_it(demo_backend: Any, way: str) -> None:
    """The first try planned (and the model judged) 3 windows of a budget of 4; judging the 3 checks again needs
    3 more: past the bound, they are refused, not judged (before, sync: all judged, 6 windows)."""
    crashing = CrashOnFirstBatch(demo_backend, after_work=True)
    guard = Guard(crashing, Policy(timeout_s=None, on_error="allow"), max_windows_per_call=BUDGET, cache_size=0)
    try:
        decisions = judged(guard, FACTS, way)
    except InputTooLarge:
        return  # the call refused as a whole: nothing judged past the bound
    assert sum(d.reason == "safe" for d in decisions) <= BUDGET - len(FACTS), decisions
