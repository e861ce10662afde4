"""rt52d F4: structured output delivered as the schema's tool call is the answer, judged with check_tool_calls=False.

``with_structured_output(..., method="function_calling")`` and ``create_agent(response_format=ToolStrategy(...))`` ask
the model for the schema's tool: the call's arguments are the object the application reads. Every reader took it for
an ordinary tool call and skipped it when ``check_tool_calls=False`` (a switch for the tool-call screen): the unsafe
object came back from `GuardedChatModel`, `GuardMiddleware` and `GuardCallbackHandler` alike, with ``check_output``
on. Real ChatOpenAI against the scripted OpenAI server where a provider binds the schema, the demo guard.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.structured_output import ToolStrategy
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, scripted, tool_call
from pydantic import BaseModel
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardCallbackHandler, GuardedChatModel, GuardMiddleware
from scripted_openai import Reply, ToolCall, scripted_openai


class Email(BaseModel):
    to: str
    body: str


UNSAFE_EMAIL = {"to": "friend@example.com", "body": UNSAFE_CLAUSE}
SAFE_EMAIL = {"to": "friend@example.com", "body": SAFE_ANSWER}
ASK = "Write the e-mail."


def _reply(args: dict[str, str]) -> Reply:
    return Reply(tool_calls=[ToolCall("Email", json.dumps(args))])


def _llm(url: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=url, api_key="x", model="scripted", max_retries=0)


async def _astream(runnable: Any, value: Any, **kwargs: Any) -> list[Any]:
    return [chunk async for chunk in runnable.astream(value, **kwargs)]


CALLS: dict[str, Callable[..., Any]] = {
    "invoke": lambda runnable, value, **kw: runnable.invoke(value, **kw),
    "ainvoke": lambda runnable, value, **kw: asyncio.run(runnable.ainvoke(value, **kw)),
    "stream": lambda runnable, value, **kw: list(runnable.stream(value, **kw)),
    "astream": lambda runnable, value, **kw: asyncio.run(_astream(runnable, value, **kw)),
}


@pytest.mark.parametrize("mode", sorted(CALLS))
def test_guarded_model_judges_the_schema_call_without_tool_call_checks(guard, mode):
    """The user's action: a guarded ChatOpenAI, tool-call screen off, asked for an e-mail object."""
    with scripted_openai(_reply(UNSAFE_EMAIL)) as url:
        guarded = GuardedChatModel(_llm(url), guard, check_tool_calls=False)
        structured = guarded.with_structured_output(Email, method="function_calling")
        with pytest.raises(GuardViolation):
            CALLS[mode](structured, ASK)
        assert len(url.requests) == 1
        assert url.requests[0].body["tools"][0]["function"]["name"] == "Email"  # the provider got the schema


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_guarded_model_still_answers_a_safe_structured_object(guard, mode):
    with scripted_openai(_reply(SAFE_EMAIL)) as url:
        structured = GuardedChatModel(_llm(url), guard, check_tool_calls=False).with_structured_output(
            Email, method="function_calling"
        )
        out = CALLS[mode](structured, ASK)
        got = out if mode == "invoke" else out[-1]
        assert got == Email(**SAFE_EMAIL)


@pytest.mark.parametrize("mode", sorted(CALLS))
def test_callback_judges_the_schema_call_without_tool_call_checks(guard, mode):
    """The user's action: a handler in the config of a structured-output call it cannot change."""
    with scripted_openai(_reply(UNSAFE_EMAIL)) as url:
        structured = _llm(url).with_structured_output(Email, method="function_calling")
        handler = GuardCallbackHandler(guard, check_tool_calls=False)
        with pytest.raises(GuardViolation):
            CALLS[mode](structured, ASK, config={"callbacks": [handler]})


def _agent(guard: Any, *replies: Any, exit_behavior: str = "end", tools: list[Any] | None = None) -> Any:
    return create_agent(
        scripted(*replies),
        tools or [],
        response_format=ToolStrategy(Email),
        middleware=[GuardMiddleware(guard, exit_behavior=exit_behavior, check_tool_calls=False)],  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_middleware_judges_the_tool_strategy_answer_without_tool_call_checks(guard, mode):
    agent = _agent(guard, tool_call("Email", UNSAFE_EMAIL), "done")
    ask = {"messages": [HumanMessage(ASK)]}
    result = agent.invoke(ask) if mode == "invoke" else asyncio.run(agent.ainvoke(ask))
    assert result.get("structured_response") is None
    assert "ammonium" not in repr(result["messages"])


def test_middleware_with_error_raises_for_the_tool_strategy_answer(guard):
    agent = _agent(guard, tool_call("Email", UNSAFE_EMAIL), "done", exit_behavior="error")
    with pytest.raises(GuardViolation):
        agent.invoke({"messages": [HumanMessage(ASK)]})


def test_middleware_holds_the_streamed_tool_strategy_answer(guard):
    """``stream_mode="messages"``: the schema call's arguments are held until judged, as an answer's text is."""
    agent = _agent(guard, tool_call("Email", UNSAFE_EMAIL), "done")
    seen = list(agent.stream({"messages": [HumanMessage(ASK)]}, stream_mode=["messages", "values"]))
    assert "ammonium" not in repr(seen)


def test_middleware_still_passes_ordinary_tool_calls_unjudged(guard):
    """check_tool_calls=False keeps its meaning for the calls on the agent's tools (only the schema's is the answer)."""
    sent: list[str] = []

    @tool
    def send_email(to: str, body: str) -> str:
        """Send an e-mail."""
        sent.append(body)
        return "sent"

    agent = _agent(
        guard,
        tool_call("send_email", UNSAFE_EMAIL),
        tool_call("Email", SAFE_EMAIL, call_id="call_2"),
        tools=[send_email],
    )
    result = agent.invoke({"messages": [HumanMessage(ASK)]})
    assert sent == [UNSAFE_CLAUSE]  # the switch is the user's: that tool's call is not judged
    assert result["structured_response"] == Email(**SAFE_EMAIL)
