"""What `GuardMiddleware` remembers as allowed (`AllowedChecks`) answers only for the guard and policy that allowed
it, and never once the guard is closed (rt62b F3): after ``guard.close()`` every check is a guard error decided by
``Policy.on_error`` (docs/api.md), a request allowed before included; a prompt stage turned back on, or another
guard given to the middleware, judges what the memory holds again."""

from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from lc_fakes import SAFE_QUESTION, UNSAFE_CLAUSE, scripted
from qwenguard.core import Decision, Guard, GuardUnavailable, Policy, Stage, StagePolicy
from qwenguard.integrations.langchain import GuardMiddleware

PROMPT_OFF = Policy(stages={Stage.PROMPT: StagePolicy(enabled=False)})  # an operator's "prompts unchecked" switch


def safe(conv: Any) -> str:
    """A lenient judge: everything is safe."""
    return "Safety: Safe\nCategories: None" + ("\nRefusal: No" if conv[-1]["role"] == "assistant" else "")


def ask(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def run(agent: Any, how: str, text: str) -> Any:
    return agent.invoke(ask(text)) if how == "invoke" else await agent.ainvoke(ask(text))


def prompt_decisions(events: list[Decision]) -> list[str]:
    return [d.describe() for d in events if d.stage is Stage.PROMPT]


HOWS = ["invoke", "ainvoke"]
CLOSED = "prompt blocked (guard_error; GuardUnavailable: the guard backend is closed)"


# -- a closed guard ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", HOWS)
async def test_after_close_a_request_allowed_before_never_reaches_the_model(how):
    guard = Guard(ScriptedBackend(keyword_verdict), Policy(on_error="block"), cache_size=0)
    events: list[Decision] = []
    guard.on_decision(events.append)
    model = scripted("Paris.", "Paris again.")
    agent = create_agent(model, [], middleware=[GuardMiddleware(guard)])
    await run(agent, how, SAFE_QUESTION)
    guard.close()
    del events[:]
    seen = len(model.seen)
    out = await run(agent, how, SAFE_QUESTION)
    assert len(model.seen) == seen, "the model ran on a request nobody judged"
    assert "guard_error" in out["messages"][-1].content
    assert prompt_decisions(events) == [CLOSED]


@pytest.mark.parametrize("how", HOWS)
async def test_after_close_with_exit_behavior_error_the_guard_error_is_raised(how):
    guard = Guard(ScriptedBackend(keyword_verdict), Policy(on_error="block"), cache_size=0)
    model = scripted("Paris.", "Paris again.")
    agent = create_agent(model, [], middleware=[GuardMiddleware(guard, exit_behavior="error")])
    await run(agent, how, SAFE_QUESTION)
    guard.close()
    with pytest.raises(GuardUnavailable):
        await run(agent, how, SAFE_QUESTION)
    assert len(model.seen) == 1


@pytest.mark.parametrize("how", HOWS)
async def test_after_close_a_failing_open_policy_tells_each_request_as_a_guard_error(how):
    guard = Guard(ScriptedBackend(keyword_verdict), Policy(on_error="allow"), cache_size=0)
    events: list[Decision] = []
    guard.on_decision(events.append)
    agent = create_agent(scripted("Paris.", "Paris.", "Paris."), [], middleware=[GuardMiddleware(guard)])
    await run(agent, how, SAFE_QUESTION)
    guard.close()
    for _ in range(2):
        del events[:]
        await run(agent, how, SAFE_QUESTION)
        told = prompt_decisions(events)  # in before_model, and in the model call (a flag is never remembered)
        assert told and set(told) == {CLOSED.replace("blocked", "flagged")}


# -- another policy, another guard ------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", HOWS)
async def test_turning_the_prompt_stage_on_judges_a_request_let_through_while_it_was_off(how):
    guard = Guard(ScriptedBackend(keyword_verdict), PROMPT_OFF, cache_size=0)
    model = scripted("Sure.", "Sure.")
    agent = create_agent(model, [], middleware=[GuardMiddleware(guard)])
    await run(agent, how, UNSAFE_CLAUSE)  # allowed unread: the stage is off
    guard.policy = Policy()  # prompts are checked from now on
    out = await run(agent, how, UNSAFE_CLAUSE)
    assert len(model.seen) == 1, "the model answered a prompt the policy now blocks"
    assert "blocked by the safety guard" in out["messages"][-1].content


@pytest.mark.parametrize("how", HOWS)
async def test_another_guard_given_to_the_middleware_judges_what_the_first_allowed(how):
    lenient = Guard(ScriptedBackend(safe), cache_size=0)
    middleware = GuardMiddleware(lenient)
    model = scripted("Sure.", "Sure.")
    agent = create_agent(model, [], middleware=[middleware])
    await run(agent, how, UNSAFE_CLAUSE)
    strict = Guard(ScriptedBackend(keyword_verdict), cache_size=0)
    middleware.guard = strict  # the operator swaps the judge (a stricter model)
    out = await run(agent, how, UNSAFE_CLAUSE)
    assert len(model.seen) == 1 and strict.backend.calls
    assert "blocked by the safety guard" in out["messages"][-1].content


def test_a_policy_changed_while_a_check_runs_is_not_answered_by_that_check():
    """The prompt stage was off when the request was looked up; the operator turned it on while the judge read the
    earlier answer in the same batch: the prompt's allow (the stage was off) is not kept for the new policy."""
    guard = Guard(ScriptedBackend(keyword_verdict), PROMPT_OFF, cache_size=0)

    def turning_on(conv: Any) -> str:
        guard.policy = Policy()
        return keyword_verdict(conv)

    guard.backend.answer = turning_on
    model = scripted("Sure.", "Sure.")
    agent = create_agent(model, [], middleware=[GuardMiddleware(guard)])
    history = [
        {"role": "user", "content": UNSAFE_CLAUSE},
        {"role": "assistant", "content": "I would rather not."},
        {"role": "user", "content": "Please."},
    ]
    agent.invoke({"messages": history})
    guard.backend.answer = keyword_verdict
    out = agent.invoke({"messages": history})
    assert "blocked by the safety guard" in out["messages"][-1].content


def test_an_equal_policy_assigned_keeps_what_was_allowed():
    """Control: a policy equal to the one that allowed the request (a config reloaded) needs no check again."""
    guard = Guard(ScriptedBackend(keyword_verdict), Policy(mode="loose"), cache_size=0)
    agent = create_agent(scripted("Paris.", "Paris."), [], middleware=[GuardMiddleware(guard)])
    agent.invoke(ask(SAFE_QUESTION))
    guard.policy = Policy(mode="loose")
    before = len(guard.backend.calls)
    agent.invoke(ask(SAFE_QUESTION))
    judged = [c[-1]["content"] for call in guard.backend.calls[before:] for c in call]
    assert SAFE_QUESTION not in judged
