"""rt64g F1: LangGraph's prebuilt ``create_react_agent`` guarded with ``GuardedChatModel`` alone runs a tool call
the model never wrote (a client's ``update_state(..., as_node="agent")`` or ``Command(goto="tools")``): the model's
wrapper judges only what the model reads and writes, and a plain ``ToolNode`` runs whatever call sits in the state.
docs/langchain.md recommended that setup as the way to guard the prebuilt agent; it now gives the ``ToolNode`` the
middleware's tool wrapper, which these tests pin (and pin the plain setup's gap, which the docs now state)."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, keyword_guard, mailer, scripted, tool_call
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # LangGraph v1 marks the prebuilt agent deprecated in favour of create_agent
    from langgraph.prebuilt import ToolNode, create_react_agent

THREAD = {"configurable": {"thread_id": "t1"}}


def _agent(wrapped: bool) -> tuple[Any, list[str]]:
    """The prebuilt agent with a guarded model, its tools in a plain ``ToolNode`` or in one given the middleware's
    tool wrapper (as docs/langchain.md shows it), and the bodies its mailer sent."""
    guard, _ = keyword_guard()
    send_email, sent = mailer()
    if wrapped:
        middleware = GuardMiddleware(guard, exit_behavior="replace")
        tools: Any = ToolNode(
            [send_email], wrap_tool_call=middleware.wrap_tool_call, awrap_tool_call=middleware.awrap_tool_call
        )
    else:
        tools = ToolNode([send_email])
    model = GuardedChatModel(scripted(*[SAFE_ANSWER] * 4), guard)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_react_agent(model, tools, checkpointer=InMemorySaver()), sent


def _client_call(body: str) -> AIMessage:
    return tool_call("send_email", {"to": "team@example.com", "body": body}, call_id="c1")


def _run_written_call(app: Any, body: str, mode: str) -> None:
    """A client writes a call to the thread as the agent's, then resumes the run (the tools node runs next)."""
    app.update_state(THREAD, {"messages": [HumanMessage(SAFE_QUESTION), _client_call(body)]}, as_node="agent")
    try:
        if mode == "sync":
            app.invoke(None, THREAD)
        else:
            asyncio.run(app.ainvoke(None, THREAD))
    except Exception:  # noqa: BLE001 - the guard's stop on the model's next read; what ran is what is asserted
        pass


def _run_command_goto_tools(app: Any, body: str, mode: str) -> None:
    """A client's ``Command`` input that writes a call and sends the run to the tools node."""
    command = Command(update={"messages": [HumanMessage(SAFE_QUESTION), _client_call(body)]}, goto="tools")
    try:
        if mode == "sync":
            app.invoke(command, THREAD)
        else:
            asyncio.run(app.ainvoke(command, THREAD))
    except ValueError:
        # The prebuilt agent's model node starts beside the tools node (the input also took START's edge) and
        # refuses a call without its result: LangGraph's own check, after the tools node ran or was refused.
        pass


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("run", [_run_written_call, _run_command_goto_tools], ids=["update_state", "command"])
def test_a_client_written_call_never_runs_with_the_tool_node_given_the_guard_wrapper(run: Any, mode: str) -> None:
    app, sent = _agent(wrapped=True)
    run(app, UNSAFE_CLAUSE, mode)
    assert sent == []  # not one character of the body left through the tool


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_safe_client_written_call_still_runs_with_the_wrapper(mode: str) -> None:
    app, sent = _agent(wrapped=True)
    _run_written_call(app, "The meeting moved to 3 pm.", mode)
    assert sent == ["The meeting moved to 3 pm."]


def test_the_plain_tool_node_runs_a_client_written_call_as_the_docs_say() -> None:
    """The documented limit of ``GuardedChatModel`` alone: it is not a tool guard. If this starts failing, LangGraph
    or the wrapper changed, and docs/langchain.md's sentence with it."""
    app, sent = _agent(wrapped=False)
    _run_written_call(app, UNSAFE_CLAUSE, "sync")
    assert sent == [UNSAFE_CLAUSE]
