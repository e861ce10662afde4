"""A tool call rewritten after the guard judged it (a red team's finding, rt43a F2).

`HumanInTheLoopMiddleware` keeps the model's call in the state and applies a reviewer's edit in its own
``wrap_tool_call``, inside `GuardMiddleware`'s when the guard is listed first (the order docs/langchain.md shows):
the guard judged the model's safe call, and the reviewer's edited arguments ran unjudged. The call the tool is
given is judged again when it is not the judged one. The judge is the keyword guard (unsafe when the judged turn
says "ammonium").
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import asyncio
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.messages import ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, scripted, tool_call
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import GuardMiddleware
from test_answer_before_hooks import Outbox

WORD = "ammonium"
MODES = ["sync", "async"]
SAFE_BODY = "See you at noon."
ASK = {"messages": [{"role": "user", "content": "E-mail my friend that I will see them at noon."}]}


@pytest.fixture
def kw() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"))


def reviewed_agent(guard: Guard, outbox: Outbox, interrupt_mode: str, **guard_options: Any) -> Any:
    model = scripted(tool_call("send_email", {"to": "friend@example.com", "body": SAFE_BODY}, "c1"), SAFE_ANSWER)
    review = HumanInTheLoopMiddleware(interrupt_on={"send_email": True}, interrupt_mode=interrupt_mode)
    return create_agent(
        model,
        [outbox.tool],
        middleware=[GuardMiddleware(guard, **guard_options), review],
        checkpointer=InMemorySaver(),
    )


def edited(body: str, interrupt_mode: str) -> Command:
    decision = {
        "type": "edit",
        "edited_action": {"name": "send_email", "args": {"to": "friend@example.com", "body": body}},
    }
    return Command(resume={"decisions": [decision]} if interrupt_mode == "batched" else decision)


def run(agent: Any, mode: str, body: str, interrupt_mode: str) -> list[Any]:
    """Ask, let the reviewer edit the call's body, resume; the final messages."""
    config: Any = {"configurable": {"thread_id": "t"}}
    if mode == "sync":
        assert "__interrupt__" in agent.invoke(ASK, config)
        return agent.invoke(edited(body, interrupt_mode), config)["messages"]

    async def go() -> list[Any]:
        assert "__interrupt__" in await agent.ainvoke(ASK, config)
        return (await agent.ainvoke(edited(body, interrupt_mode), config))["messages"]

    return asyncio.run(go())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("interrupt_mode", ["batched", "per_call"])
def test_a_reviewers_harmful_edit_does_not_run(kw, mode, interrupt_mode):
    outbox = Outbox()
    messages = run(reviewed_agent(kw, outbox, interrupt_mode), mode, UNSAFE_CLAUSE, interrupt_mode)
    assert outbox.sent == []
    result = next(m for m in messages if isinstance(m, ToolMessage))
    # The guard's notice; the reviewer's middleware adds what it executed instead (the edited call), so the
    # message is withheld as the tool's result too.
    assert result.status == "error" and "by the safety guard" in result.text
    assert result.tool_call_id == "c1"
    assert WORD not in repr(messages)


@pytest.mark.parametrize("mode", MODES)
def test_a_reviewers_safe_edit_runs_as_edited(kw, mode):
    outbox = Outbox()
    messages = run(reviewed_agent(kw, outbox, "batched"), mode, "Running late, see you at one.", "batched")
    assert outbox.sent == ["Running late, see you at one."]
    assert messages[-1].text == SAFE_ANSWER


@pytest.mark.parametrize("mode", MODES)
def test_with_error_a_harmful_edit_raises_before_it_runs(kw, mode):
    outbox = Outbox()
    with pytest.raises(GuardViolation) as info:
        run(reviewed_agent(kw, outbox, "batched", exit_behavior="error"), mode, UNSAFE_CLAUSE, "batched")
    assert info.value.decision.stage.value == "tool_call"
    assert outbox.sent == []
