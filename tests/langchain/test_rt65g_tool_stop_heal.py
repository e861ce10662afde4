"""rt65g F2: with ``exit_behavior="error"``, a tool stop no longer leaves the thread with an unanswered tool call.

A tool fetched a hostile page; the guard blocked its result and raised. The thread kept the answer's tool call with no
tool message answering it: every later turn sent the model a request with an unanswered call (OpenAI and Anthropic
answer such a request with 400), and ``invoke(None)``, resuming the run at the tools, fetched the page again. Now the
thread's next turn answers the call with the notice ``"end"`` writes (an error `ToolMessage`, right after the answer
that asked for it), and a resumed run gets the notice in place of the call. Counted in characters of what the model
read and in the tool's runs.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, keyword_guard, scripted, tool_call
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardMiddleware

MODES = ["sync", "async"]
THREAD = {"configurable": {"thread_id": "t"}}
WORD = "ammonium"
RESULT_NOTICE = "The output of tool 'web_fetch' was withheld by the safety guard (Violent); do not rely on it."
CALL_NOTICE = "The call to tool 'web_fetch' was blocked by the safety guard (Violent) and did not run."


def _run(agent: Any, inputs: Any, mode: str) -> dict[str, Any]:
    if mode == "sync":
        return agent.invoke(inputs, THREAD)
    return asyncio.run(agent.ainvoke(inputs, THREAD))


def _fetcher() -> tuple[Any, list[str]]:
    """A real tool that fetches a hostile page, and the urls it fetched."""
    fetched: list[str] = []

    @tool
    def web_fetch(url: str) -> str:
        """Fetch a page."""
        fetched.append(url)
        return "Garden tips. " + UNSAFE_CLAUSE

    return web_fetch, fetched


def _unanswered(messages: list[BaseMessage]) -> list[str]:
    """The calls of an answer no tool message right after it answers (the providers' rule)."""
    found = []
    for i, message in enumerate(messages):
        for call in getattr(message, "tool_calls", None) or []:
            after = []
            for later in messages[i + 1 :]:
                if not isinstance(later, ToolMessage):
                    break
                after.append(later.tool_call_id)
            if call["id"] not in after:
                found.append(call["id"])
    return found


def _agent(*replies: Any) -> tuple[Any, Any, list[str]]:
    fetch, fetched = _fetcher()
    guard, _ = keyword_guard()
    model = scripted(*replies)
    middleware = [GuardMiddleware(guard, exit_behavior="error")]
    return create_agent(model, [fetch], middleware=middleware, checkpointer=InMemorySaver()), model, fetched


@pytest.mark.parametrize("mode", MODES)
def test_the_threads_next_turn_answers_the_call_whose_result_was_blocked(mode: str) -> None:
    agent, model, fetched = _agent(tool_call("web_fetch", {"url": "https://example.org"}), SAFE_ANSWER, SAFE_ANSWER)
    with pytest.raises(GuardViolation):
        _run(agent, {"messages": [HumanMessage("Fetch example.org for garden tips")]}, mode)
    for question in (SAFE_QUESTION, "And of Italy?"):
        out = _run(agent, {"messages": [HumanMessage(question)]}, mode)
        read = model.seen[-1]
        assert _unanswered(read) == []
        assert [m.content for m in read if isinstance(m, ToolMessage)] == [RESULT_NOTICE]
        assert WORD not in "".join(str(m.content) for m in read)
        assert out["messages"][-1].content == SAFE_ANSWER
    assert fetched == ["https://example.org"]
    notice = next(m for m in agent.get_state(THREAD).values["messages"] if isinstance(m, ToolMessage))
    assert notice.status == "error" and notice.tool_call_id == "call_1"


@pytest.mark.parametrize("mode", MODES)
def test_a_run_resumed_at_the_tools_does_not_run_the_blocked_call_again(mode: str) -> None:
    agent, model, fetched = _agent(tool_call("web_fetch", {"url": "https://example.org"}), SAFE_ANSWER)
    with pytest.raises(GuardViolation):
        _run(agent, {"messages": [HumanMessage("Fetch example.org for garden tips")]}, mode)
    assert agent.get_state(THREAD).next == ("tools",)
    out = _run(agent, None, mode)
    assert fetched == ["https://example.org"]  # fetched once, in the first run
    read = model.seen[-1]
    assert _unanswered(read) == []
    assert [m.content for m in read if isinstance(m, ToolMessage)] == [RESULT_NOTICE]
    assert WORD not in "".join(str(m.content) for m in read)
    assert out["messages"][-1].content == SAFE_ANSWER


class _Rewriter(AgentMiddleware):
    """A middleware inside the guard that rewrites the call it is given (a template expansion, say)."""

    def wrap_tool_call(self, request: Any, handler: Any) -> Any:
        return handler(request.override(tool_call={**request.tool_call, "args": {"url": UNSAFE_CLAUSE}}))

    async def awrap_tool_call(self, request: Any, handler: Any) -> Any:
        return await handler(request.override(tool_call={**request.tool_call, "args": {"url": UNSAFE_CLAUSE}}))


@pytest.mark.parametrize("mode", MODES)
def test_the_threads_next_turn_answers_a_blocked_call_that_never_ran(mode: str) -> None:
    fetch, fetched = _fetcher()
    guard, _ = keyword_guard()
    model = scripted(tool_call("web_fetch", {"url": "https://example.org"}), SAFE_ANSWER)
    middleware = [GuardMiddleware(guard, exit_behavior="error"), _Rewriter()]
    agent = create_agent(model, [fetch], middleware=middleware, checkpointer=InMemorySaver())
    # The call the tool is given is judged again before it runs: blocked, raised.
    with pytest.raises(GuardViolation):
        _run(agent, {"messages": [HumanMessage("Fetch example.org for garden tips")]}, mode)
    out = _run(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, mode)
    read = model.seen[-1]
    assert fetched == []
    assert _unanswered(read) == []
    assert [m.content for m in read if isinstance(m, ToolMessage)] == [CALL_NOTICE]
    assert WORD not in "".join(str(m.content) for m in read)
    assert out["messages"][-1].content == SAFE_ANSWER
