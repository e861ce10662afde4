"""rt64c F2: a tool argument the application injects (``InjectedToolArg``) is left out of what LangChain tells
``on_tool_start`` (langchain-core's ``_filter_injected_args``), so the callback handler cannot judge it: a value the
application fills in and runs the tool with directly is the application's to judge. docs/langchain.md says so and
names the way that judges it (``GuardMiddleware``, which reads the call as the tool node runs it); these tests pin
both sides of that sentence."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import InjectedToolArg, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, keyword_guard, scripted
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware


def _mailer() -> tuple[Any, list[str]]:
    sent: list[str] = []

    @tool
    def send_email(to: str, body: Annotated[str, InjectedToolArg]) -> str:
        """Send an e-mail; the application fills in its body."""
        sent.append(body)
        return "Message delivered."

    return send_email, sent


CALL = {
    "name": "send_email",
    "args": {"to": "team@example.com", "body": UNSAFE_CLAUSE},
    "id": "c1",
    "type": "tool_call",
}


def test_the_handler_never_hears_an_injected_argument_as_the_docs_say() -> None:
    guard, backend = keyword_guard()
    send_email, sent = _mailer()
    send_email.invoke(CALL, {"callbacks": [GuardCallbackHandler(guard)]})
    asyncio.run(send_email.ainvoke(CALL, {"callbacks": [AsyncGuardCallbackHandler(guard)]}))
    assert sent == [UNSAFE_CLAUSE, UNSAFE_CLAUSE]
    judged = repr(backend.calls)
    assert "ammonium" not in judged  # what the handler judged of the call: its `to` alone


def test_guard_middleware_judges_a_call_with_an_injected_argument_before_it_runs() -> None:
    guard, _ = keyword_guard()
    send_email, sent = _mailer()
    agent = create_agent(
        scripted(SAFE_ANSWER, SAFE_ANSWER),
        [send_email],
        middleware=[GuardMiddleware(guard)],
        checkpointer=InMemorySaver(),
    )
    command = Command(
        update={"messages": [HumanMessage("Send my note."), AIMessage("", tool_calls=[CALL])]}, goto="tools"
    )
    agent.invoke(command, {"configurable": {"thread_id": "t"}})
    assert sent == []
