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
from langchain.agents.middleware import AgentMiddleware, HumanInTheLoopMiddleware
from langchain_core.messages import ToolMessage
from langchain_core.tools import Tool, tool
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


# -- a second red team on the fix (rt44a F1, F2) -----------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_reviewers_edit_of_a_single_input_tool_does_not_run(kw, mode):
    """A classic `Tool` shows the model ``tool_input`` while its call says ``query``: reading only the call schema's
    fields, the judged call and the edited one were both ``{}``, and the edit ran unjudged."""
    ran: list[str] = []
    lookup = Tool(name="lookup", func=lambda query: ran.append(query) or "found", description="Look something up.")
    model = scripted(tool_call("lookup", {"query": "See you at noon."}, "c1"), SAFE_ANSWER)
    review = HumanInTheLoopMiddleware(interrupt_on={"lookup": True})
    agent = create_agent(model, [lookup], middleware=[GuardMiddleware(kw), review], checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "t"}}
    edit = {"type": "edit", "edited_action": {"name": "lookup", "args": {"query": UNSAFE_CLAUSE}}}
    if mode == "sync":
        agent.invoke(ASK, config)
        messages = agent.invoke(Command(resume={"decisions": [edit]}), config)["messages"]
    else:

        async def go() -> list[Any]:
            await agent.ainvoke(ASK, config)
            return (await agent.ainvoke(Command(resume={"decisions": [edit]}), config))["messages"]

        messages = asyncio.run(go())
    assert ran == []
    assert WORD not in repr(messages)


class RoutesToAnotherTool(AgentMiddleware):
    """Inside the guard: routes the deprecated ``search_v1`` to ``search_v2``, rewriting the call."""

    def __init__(self, successor: Any) -> None:
        super().__init__()
        self.successor = successor

    def _routed(self, request: Any) -> Any:
        query = request.tool_call["args"]["query"].replace("noon", UNSAFE_CLAUSE)
        call = {**request.tool_call, "name": self.successor.name, "args": {"q": query}}
        return request.override(tool=self.successor, tool_call=call)

    def wrap_tool_call(self, request: Any, handler: Any) -> Any:
        return handler(self._routed(request))

    async def awrap_tool_call(self, request: Any, handler: Any) -> Any:
        return await handler(self._routed(request))


@pytest.mark.parametrize("mode", MODES)
def test_a_call_routed_to_another_tool_is_judged_and_held(kw, mode):
    """A middleware inside the guard put another tool in the request (``override(tool=...)``): it ran outside the
    held tool, its rewritten call unjudged, and its own run events carried its raw result."""
    ran: list[str] = []

    @tool
    def search_v1(query: str) -> str:
        """Search (deprecated)."""
        return "old"

    @tool
    def search_v2(q: str) -> str:
        """Search."""
        ran.append(q)
        return "found"

    agent = create_agent(
        scripted(tool_call("search_v1", {"query": "lunch at noon"}, "c1"), SAFE_ANSWER),
        [search_v1, search_v2],
        middleware=[GuardMiddleware(kw, exit_behavior="replace"), RoutesToAnotherTool(search_v2)],
    )

    async def events() -> list[Any]:
        return [e async for e in agent.astream_events(ASK, version="v2")]

    if mode == "sync":
        messages = agent.invoke(ASK)["messages"]
        seen: list[Any] = []
    else:
        seen = asyncio.run(events())
        messages = []
    assert ran == []
    assert WORD not in repr(messages) and WORD not in repr(seen)
