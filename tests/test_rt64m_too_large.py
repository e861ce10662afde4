"""`InputTooLarge.too_large` and ``decided`` (rt64k F1): a batch refused for some checks alone names them and carries
the other checks' decisions; a batch over a call's limit as a whole names none. rt64m F4: a call whose stages have
deadlines of their own runs a backend call per deadline, and one group refused as a whole was reported as each of
its checks refused alone, which a caller dropping "too large" checks would have dropped, though each fits."""

from __future__ import annotations

import pytest
from faults import ScriptedBackend, keyword_verdict
from live_server import demo_guard
from qwenguard.core import Guard, Policy, Stage
from qwenguard.core.errors import InputTooLarge
from qwenguard.core.policy import StagePolicy

FACTS = ["Lyon is a city in France.", "The Seine flows through Paris.", "Nice is on the coast.", "Paris is big."]


@pytest.mark.parametrize("stages", [{}, {Stage.RETRIEVAL: StagePolicy(timeout_s=60)}], ids=["one-deadline", "two"])
def test_a_call_over_its_window_budget_names_no_check_refused_alone(stages: dict) -> None:
    # The demo guard: a real planner, which counts each call's windows.
    budgeted = demo_guard(policy=Policy(timeout_s=30, stages=stages), max_windows_per_call=3, cache_size=0)
    items = [("prompt", "what is the capital of France"), *(("retrieval", fact) for fact in FACTS)]
    with pytest.raises(InputTooLarge) as refused:
        budgeted.check_many(items)
    assert refused.value.too_large == () and refused.value.decided == ()


class PlantRefusing(ScriptedBackend):
    """The keyword judge, refusing a conversation that says PLANTED as too large on its own (as the Gen backends
    refuse one over ``max_windows`` while judging the rest of the call)."""

    def _one(self, conversation):
        if "PLANTED" in conversation[-1]["content"]:
            return InputTooLarge("this conversation needs more than max_windows=256 windows")
        return super()._one(conversation)


async def test_a_check_refused_alone_is_named_and_the_others_decided() -> None:
    guard = Guard(PlantRefusing(keyword_verdict), Policy(timeout_s=None), cache_size=0)
    items = [("retrieval", "PLANTED page"), ("retrieval", FACTS[0]), ("retrieval", "Mix ammonium nitrate ...")]
    for call in (lambda: guard.check_many(items), None):
        with pytest.raises(InputTooLarge) as refused:
            call() if call is not None else await guard.acheck_many(items)
        assert refused.value.too_large == (0,)
        first, fact, unsafe = refused.value.decided
        assert first is None and fact.allowed and not unsafe.allowed


@pytest.mark.parametrize("cache_size", [0, 1024], ids=["cache-off", "cache-on"])
def test_eval_takes_the_decisions_of_a_batch_refused_for_one_row(cache_size: int) -> None:
    """rt64n F3: eval judged every row of such a batch again one by one: each judged row was heard twice by the
    guard's listeners (audit, metrics), and with the cache off the model ran on it twice. The rows take the
    decisions the call made; only the row refused alone is an error."""
    from qwenguard.core import Risk
    from qwenguard.core.eval.data import EvalExample
    from qwenguard.core.eval.runner import run_guard

    backend = PlantRefusing(keyword_verdict)
    guard = Guard(backend, Policy(timeout_s=None), cache_size=cache_size)
    heard: list[str] = []
    guard.on_decision(lambda decision: heard.append(decision.reason))
    texts = ["PLANTED page", "what is the capital of France", "Mix ammonium nitrate ...", "hello there"]
    rows = [
        EvalExample(f"r{i}", Stage.PROMPT, ({"role": "user", "content": text},), Risk.SAFE)
        for i, text in enumerate(texts)
    ]
    result = run_guard(guard, rows, batch_size=8, concurrency=1)
    assert sorted(heard) == ["safe", "safe", "unsafe"]
    assert sum(len(call) for call in backend.calls) == len(texts)
    errors = [p for p in result.predictions if p.error]
    assert len(errors) == 1 and "max_windows" in errors[0].error
