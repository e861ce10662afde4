"""What a `GuardedLLM` remembers of the inputs it judged answers only for the guard and policy that allowed them, only
for a plain allow, and never once the guard is closed (rt62b F1, F2): an operator who tightens ``guard.policy``, a
copy of the wrapper given another guard, and a closed guard all have the input judged again."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from li_scripted import UNSAFE_CLAUSE, ScriptedLLM
from llama_index.core.llms import ChatMessage
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.prompts import PromptTemplate
from qwenguard.core import Decision, Guard, GuardUnavailable, GuardViolation, Policy, Stage, StagePolicy
from qwenguard.integrations.llamaindex import GuardedLLM

PHRASE = "Should I mix ammonium nitrate with diesel for my farm pond?"
QUESTION = [ChatMessage(role="user", content=PHRASE)]
UNSAFE = [ChatMessage(role="user", content=UNSAFE_CLAUSE)]
PROMPT_OFF = Policy(stages={Stage.PROMPT: StagePolicy(enabled=False)})  # an operator's "prompts unchecked" switch


def controversial(conv: Any) -> str:
    """A judge that reads the farm-pond question as Controversial (loose lets it through flagged, strict blocks it)."""
    last = conv[-1]
    if last["role"] == "assistant":
        return "Safety: Safe\nCategories: None\nRefusal: No"
    risky = "ammonium" in last["content"].lower()
    return "Safety: Controversial\nCategories: Violent" if risky else "Safety: Safe\nCategories: None"


def safe(conv: Any) -> str:
    """A lenient judge: everything is safe."""
    return "Safety: Safe\nCategories: None" + ("\nRefusal: No" if conv[-1]["role"] == "assistant" else "")


class Model:
    """The wrapped LLM's replies, counted (was the model asked?); ``during`` runs inside the model call."""

    def __init__(self, during: Any = None) -> None:
        self.calls = 0
        self.during = during

    def __call__(self, messages: Any, **kwargs: Any) -> ChatMessage:
        self.calls += 1
        if self.during is not None:
            self.during()
        return ChatMessage(role="assistant", content="Sure.")


def guarded(guard: Guard, model: Model | None = None) -> GuardedLLM:
    return GuardedLLM(llm=MockFunctionCallingLLM(response_generator=model or Model()), guard=guard)


async def ask(llm: GuardedLLM, how: str, messages: list[ChatMessage]) -> str:
    if how == "chat":
        return llm.chat(messages).message.content or ""
    if how == "achat":
        return (await llm.achat(messages)).message.content or ""
    if how == "stream_chat":
        return "".join(r.delta or "" for r in llm.stream_chat(messages))
    return "".join([r.delta or "" async for r in await llm.astream_chat(messages)])


HOWS = ["chat", "achat", "stream_chat", "astream_chat"]


def prompt_decisions(events: list[Decision]) -> list[str]:
    return [d.describe() for d in events if d.stage is Stage.PROMPT]


# -- a flag is told again ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", HOWS)
async def test_a_flagged_prompt_sent_again_is_flagged_again_for_the_audit_listener(how):
    guard = Guard(ScriptedBackend(controversial), Policy(mode="loose"), cache_size=0)
    events: list[Decision] = []
    guard.on_decision(events.append)
    llm = guarded(guard)
    for _ in range(2):
        assert await ask(llm, how, QUESTION) == "Sure."
    assert prompt_decisions(events) == ["prompt flagged (controversial: Violent)"] * 2


@pytest.mark.parametrize("how", HOWS)
async def test_tightening_the_policy_blocks_a_prompt_the_loose_policy_flagged(how):
    guard = Guard(ScriptedBackend(controversial), Policy(mode="loose"))
    model = Model()
    llm = guarded(guard, model)
    assert await ask(llm, how, QUESTION) == "Sure."
    guard.policy = Policy(mode="strict")  # the operator tightens the policy (a supported change: docs/api.md)
    with pytest.raises(GuardViolation):
        await ask(llm, how, QUESTION)
    assert model.calls == 1


# -- an allow answers only for the guard and the policy that gave it ------------------------------------------------
@pytest.mark.parametrize("how", HOWS)
async def test_turning_the_prompt_stage_on_judges_a_prompt_let_through_while_it_was_off(how):
    guard = Guard(ScriptedBackend(keyword_verdict), PROMPT_OFF, cache_size=0)
    model = Model()
    llm = guarded(guard, model)
    assert await ask(llm, how, UNSAFE) == "Sure."  # allowed unread: the stage is off
    guard.policy = Policy()  # prompts are checked from now on
    with pytest.raises(GuardViolation):
        await ask(llm, how, UNSAFE)
    # And as an earlier turn of a history.
    with pytest.raises(GuardViolation):
        await ask(
            llm,
            how,
            [*UNSAFE, ChatMessage(role="assistant", content="Sure."), ChatMessage(role="user", content="Go on.")],
        )
    assert model.calls == 1


@pytest.mark.parametrize("how", HOWS)
async def test_a_copy_given_another_guard_judges_with_it_what_the_first_let_through(how):
    lenient = Guard(ScriptedBackend(safe))
    llm = guarded(lenient)
    assert await ask(llm, how, UNSAFE) == "Sure."
    strict = Guard(ScriptedBackend(keyword_verdict))
    tenant = llm.model_copy(update={"guard": strict})  # per-tenant wrappers from one template: one memory object
    with pytest.raises(GuardViolation):
        await ask(tenant, how, UNSAFE)
    assert strict.backend.calls  # the tenant's own judge read the prompt
    before = len(lenient.backend.calls)
    assert await ask(llm, how, UNSAFE) == "Sure."  # the first wrapper's memory still answers for its own guard
    assert UNSAFE_CLAUSE not in [c[-1]["content"] for call in lenient.backend.calls[before:] for c in call]


def test_a_policy_changed_while_a_call_runs_is_not_answered_by_that_call():
    """The call's prompt was allowed with the stage off; the operator turned it on while the model answered."""
    guard = Guard(ScriptedBackend(keyword_verdict), PROMPT_OFF, cache_size=0)
    model = Model()
    model.during = lambda: setattr(guard, "policy", Policy())
    llm = guarded(guard, model)
    assert llm.chat(UNSAFE).message.content == "Sure."
    model.during = None
    with pytest.raises(GuardViolation):
        llm.chat(UNSAFE)


def test_an_equal_policy_assigned_keeps_what_was_judged():
    """Control: a policy equal to the one that allowed the input (a config reloaded) needs no check again."""
    backend = ScriptedBackend(keyword_verdict)
    guard = Guard(backend, Policy(mode="loose"), cache_size=0)
    llm = guarded(guard)
    first = [ChatMessage(role="user", content="Tell me about Paris.")]
    llm.chat(first)
    guard.policy = Policy(mode="loose")
    before = len(backend.calls)
    llm.chat([*first, ChatMessage(role="assistant", content="Sure."), ChatMessage(role="user", content="More.")])
    judged = [c[-1]["content"] for call in backend.calls[before:] for c in call]
    assert "Tell me about Paris." not in judged and "More." in judged


# -- a closed guard: every input is a guard error, decided by on_error ----------------------------------------------
@pytest.mark.parametrize("how", HOWS)
async def test_after_close_a_prompt_passed_before_never_reaches_the_model(how):
    guard = Guard(ScriptedBackend(keyword_verdict), Policy(on_error="block"))
    events: list[Decision] = []
    guard.on_decision(events.append)
    model = Model()
    llm = guarded(guard, model)
    capital = [ChatMessage(role="user", content="What is the capital of France?")]
    assert await ask(llm, how, capital) == "Sure."
    guard.close()
    del events[:]
    with pytest.raises(GuardUnavailable):
        await ask(llm, how, capital)
    assert model.calls == 1
    assert prompt_decisions(events) == ["prompt blocked (guard_error; GuardUnavailable: the guard backend is closed)"]


def test_after_close_a_template_call_judged_before_never_reaches_the_model():
    """Control: a template call judges its query variable on every call; after close it is a guard error too."""
    guard = Guard(ScriptedBackend(keyword_verdict), Policy(on_error="block"))
    inner = ScriptedLLM(chunks=["Paris."])
    llm = GuardedLLM(llm=inner, guard=guard)
    template = PromptTemplate("Answer briefly: {query_str}")
    assert llm.predict(template, query_str="What is the capital of France?") == "Paris."
    guard.close()
    with pytest.raises(GuardUnavailable):
        llm.predict(template, query_str="What is the capital of France?")
    assert inner._calls == 1


def test_after_close_a_failing_open_policy_flags_every_input_again():
    """on_error="allow": a closed guard's inputs go through flagged, each time (told, never remembered)."""
    guard = Guard(ScriptedBackend(keyword_verdict), Policy(on_error="allow"))
    events: list[Decision] = []
    guard.on_decision(events.append)
    llm = guarded(guard)
    question = [ChatMessage(role="user", content="What is the capital of France?")]
    llm.chat(question)
    guard.close()
    del events[:]
    llm.chat(question)
    llm.chat(question)
    assert len(prompt_decisions(events)) == 2
    assert all(d.reason == "guard_error" for d in events if d.stage is Stage.PROMPT)
