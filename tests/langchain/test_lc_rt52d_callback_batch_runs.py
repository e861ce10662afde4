"""rt52d F1: a sync multi-prompt call stopped on one prompt must not leave its other runs' state in the handler.

``chat.generate([[a], [b]])`` (``generate_prompt``, and a completion model's ``batch``, which hands all its prompts to
one ``generate_prompt``) starts one run per list, then ends each in turn. When the handler stopped one list (its
input at the start, its stream, its answer at the end) or the model failed on one, LangChain raised out of the call
and the other runs got no event: a sync run is owned by no task, so each one's state (its context: the user's text)
stayed in the shared handler for its whole life, one per such request. Real LangChain models (the scripted fake that
reports to its run manager as real models do, langchain-core's `FakeListLLM`), the demo guard.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from langchain_core.language_models import FakeListLLM
from langchain_core.messages import HumanMessage
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, UNSAFE_PROMPT, ScriptedChatModel
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

ROUNDS = 5


def _chat(*answers: str) -> ScriptedChatModel:
    return ScriptedChatModel(messages=itertools.cycle(answers), seen=[])


@pytest.mark.parametrize("handler_class", [GuardCallbackHandler, AsyncGuardCallbackHandler])
def test_a_prompt_blocked_at_its_start_leaves_no_sibling_run(guard, handler_class):
    """The second list is blocked before the model runs: the first list's run had started and never ends."""
    handler = handler_class(guard)
    llm = _chat(SAFE_ANSWER)
    for i in range(ROUNDS):
        with pytest.raises(GuardViolation):
            llm.generate(
                [[HumanMessage(f"What is the capital of France? ({i})")], [HumanMessage(UNSAFE_PROMPT)]],
                callbacks=[handler],
            )
    assert handler.active_runs == 0


def test_an_answer_blocked_at_its_end_leaves_no_sibling_run(guard):
    """The first list's answer is blocked at ``on_llm_end``: the second list's end is never called."""
    handler = GuardCallbackHandler(guard)
    llm = _chat(UNSAFE_CLAUSE, SAFE_ANSWER)
    for i in range(ROUNDS):
        with pytest.raises(GuardViolation):
            llm.generate([[HumanMessage(f"Hi ({i})")], [HumanMessage(f"Hello ({i})")]], callbacks=[handler])
    assert handler.active_runs == 0


def test_a_stream_stopped_on_one_list_leaves_no_sibling_run(guard):
    """Streamed generation (``stream=True``): the first list's stream is stopped mid-answer."""
    handler = GuardCallbackHandler(guard)
    llm = _chat(f"{SAFE_ANSWER} {UNSAFE_CLAUSE}", SAFE_ANSWER)
    for i in range(ROUNDS):
        with pytest.raises(GuardViolation):
            llm.generate(
                [[HumanMessage(f"Hi ({i})")], [HumanMessage(f"Hello ({i})")]], callbacks=[handler], stream=True
            )
    assert handler.active_runs == 0


class _FailsOnSecond(ScriptedChatModel):
    def _generate(self, messages: list[Any], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        if "fail" in messages[-1].text:
            raise ConnectionError("provider hiccup")
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)


def test_a_model_failing_on_one_list_leaves_no_sibling_run(guard):
    """The model fails on the second list: the first one, generated already, never gets its end."""
    handler = GuardCallbackHandler(guard)
    llm = _FailsOnSecond(messages=itertools.cycle([SAFE_ANSWER]), seen=[])
    for i in range(ROUNDS):
        with pytest.raises(ConnectionError):
            llm.generate([[HumanMessage(f"Hi ({i})")], [HumanMessage("please fail")]], callbacks=[handler])
    assert handler.active_runs == 0


def test_a_completion_model_batch_leaves_no_run(guard):
    """A completion model's ``batch`` is one ``generate_prompt`` for all prompts: one blocked prompt stops them all
    (LangChain's shape, documented), and none of their runs stays."""
    handler = GuardCallbackHandler(guard)
    llm = FakeListLLM(responses=[SAFE_ANSWER])
    for _ in range(ROUNDS):
        out = llm.batch(["hello", UNSAFE_PROMPT, "bye"], config={"callbacks": [handler]}, return_exceptions=True)
        assert all(isinstance(o, GuardViolation) for o in out)
    assert handler.active_runs == 0


def test_a_call_the_handler_saw_in_part_leaves_no_run_behind_the_next_stop(guard):
    """rt52g F1: a call whose handler heard only some of its prompts (per-input callbacks) left its batch open in
    the thread; the next call's runs joined it out of step, and a stop then left one of them for good."""
    handler = GuardCallbackHandler(guard)
    llm = FakeListLLM(responses=["Hello there.", "Goodbye.", UNSAFE_CLAUSE, SAFE_ANSWER] * ROUNDS)
    for _ in range(ROUNDS):
        llm.batch(["hello", "bye"], config=[{"callbacks": [handler]}, {}])  # the handler hears "hello" only
        with pytest.raises(GuardViolation):
            llm.batch(["Tell me.", "And more."], config={"callbacks": [handler]})
    assert handler.active_runs == 0


def test_safe_batches_still_end_every_run_and_a_later_call_is_judged(guard):
    handler = GuardCallbackHandler(guard)
    llm = _chat(SAFE_ANSWER)
    for i in range(ROUNDS):
        result = llm.generate([[HumanMessage(f"Hi ({i})")], [HumanMessage(f"Hello ({i})")]], callbacks=[handler])
        assert [g[0].text for g in result.generations] == [SAFE_ANSWER, SAFE_ANSWER]
    assert handler.active_runs == 0
    with pytest.raises(GuardViolation):
        _chat(UNSAFE_CLAUSE).invoke("Tell me.", config={"callbacks": [handler]})
    assert handler.active_runs == 0


def test_the_documented_way_to_batch_a_completion_model(guard):
    """One call per prompt: only the blocked prompt is stopped."""
    from langchain_core.runnables import RunnableLambda

    handler = GuardCallbackHandler(guard)
    llm = FakeListLLM(responses=[SAFE_ANSWER])
    out = RunnableLambda(llm.invoke).batch(
        ["hello", UNSAFE_PROMPT, "bye"], config={"callbacks": [handler]}, return_exceptions=True
    )
    assert [isinstance(o, GuardViolation) for o in out] == [False, True, False]
    assert handler.active_runs == 0
