"""`create_agent(..., response_format=...)` behind `GuardMiddleware`, with `ChatOpenAI` against the scripted
server: the structured response is what the app reads (``result["structured_response"]``), so it is judged
like the answer it came in, and a blocked one is gone from the result, not only from the messages.

With ``ToolStrategy`` the model answers with a call to the schema's tool and the model node adds a tool
message after it ("Returning structured response: ..."); with ``ProviderStrategy`` the answer's text is
the JSON. The demo guard judges. Exposure is counted in characters of the clause.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelResponse
from langchain.agents.structured_output import ProviderStrategy, ToolStrategy
from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage
from langchain_core.tools import tool
from lc_fakes import SAFE_QUESTION, UNSAFE_CLAUSE
from pydantic import BaseModel
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardMiddleware
from scripted_openai import Reply, ToolCall, scripted_openai
from test_openai_paths import MODES, chat

SAFE_BODY = "See you at noon in front of the station."


class Email(BaseModel):
    to: str
    body: str


@tool
def capital_of(country: str) -> str:
    """The capital of a country."""
    return "Paris"


def _reply(strategy: str, body: str) -> Reply:
    arguments = json.dumps({"to": "a@example.com", "body": body})
    if strategy == "ToolStrategy":
        return Reply(tool_calls=[ToolCall("Email", arguments, id="call_email", fragments=4)])
    return Reply.words(arguments)


def _agent(url: str, guard: Any, strategy: str, exit_behavior: str, tools: bool) -> Any:
    response_format = ToolStrategy(Email) if strategy == "ToolStrategy" else ProviderStrategy(Email)
    return create_agent(
        chat(url),
        [capital_of] if tools else [],
        middleware=[GuardMiddleware(guard, exit_behavior=exit_behavior)],
        response_format=response_format,
    )


def _invoke(agent: Any, mode: str) -> dict[str, Any]:
    inputs = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
    return agent.invoke(inputs) if mode == "sync" else asyncio.run(agent.ainvoke(inputs))


def _clause_words(text: str) -> list[str]:
    """The unsafe clause's own words (those not in the question or the refusal) found in ``text``."""
    return [word for word in ("Mix", "ammonium", "nitrate", "fuel", "pack", "pipe", "fuse") if word in text]


def _everything(result: dict[str, Any]) -> str:
    """All the text the app can read in the result: every message's text and tool-call arguments, and the
    structured response."""
    parts = [repr(result.get("structured_response"))]
    for message in result["messages"]:
        parts.append(message.text)
        parts.extend(json.dumps(call["args"]) for call in getattr(message, "tool_calls", None) or ())
    return "\n".join(parts)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", ["ToolStrategy", "ProviderStrategy"])
@pytest.mark.parametrize("exit_behavior", ["end", "replace"])
@pytest.mark.parametrize("tools", [False, True], ids=["no tools", "a tool"])
def test_an_unsafe_structured_response_is_not_returned(guard, mode, strategy, exit_behavior, tools):
    """Before: ``invoke`` returned the unsafe body as ``structured_response`` (ToolStrategy: never judged,
    the model node's tool message followed the answer; ProviderStrategy: the message was replaced, the
    parsed response kept)."""
    with scripted_openai(_reply(strategy, UNSAFE_CLAUSE)) as url:
        result = _invoke(_agent(url, guard, strategy, exit_behavior, tools), mode)
        assert len(url.requests) == 1  # the refusal ends the run: the model is not asked again
    assert result.get("structured_response") is None
    assert _clause_words(_everything(result)) == []  # the app can read nothing of the clause
    last = result["messages"][-1]
    assert isinstance(last, AIMessage) and "blocked by the safety guard" in last.text
    assert not any(isinstance(m, ToolMessage) for m in result["messages"])  # the structured tool message went too


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", ["ToolStrategy", "ProviderStrategy"])
def test_an_unsafe_structured_response_raises_with_exit_behavior_error(guard, mode, strategy):
    with scripted_openai(_reply(strategy, UNSAFE_CLAUSE)) as url:
        with pytest.raises(GuardViolation):
            _invoke(_agent(url, guard, strategy, "error", False), mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("strategy", ["ToolStrategy", "ProviderStrategy"])
def test_a_safe_structured_response_passes(guard, mode, strategy):
    with scripted_openai(_reply(strategy, SAFE_BODY)) as url:
        result = _invoke(_agent(url, guard, strategy, "end", True), mode)
        assert len(url.requests) == 1
    assert result["structured_response"] == Email(to="a@example.com", body=SAFE_BODY)


@pytest.mark.parametrize("strategy", ["ToolStrategy", "ProviderStrategy"])
def test_a_streamed_unsafe_structured_response_is_held_and_not_returned(guard, strategy):
    """Streamed (``stream_mode=["messages", "values"]``): nothing of the clause in the message chunks, and
    the final state has no structured response."""
    with scripted_openai(_reply(strategy, UNSAFE_CLAUSE)) as url:
        agent = _agent(url, guard, strategy, "end", False)
        streamed, final = "", None
        inputs = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
        for kind, data in agent.stream(inputs, stream_mode=["messages", "values"]):
            if kind == "values":
                final = data
            elif isinstance(data[0], AIMessageChunk):
                streamed += data[0].text + "".join(c.get("args") or "" for c in data[0].tool_call_chunks)
        assert len(url.requests) == 1
    assert streamed == ""  # not one character of the model's answer (text or tool-call arguments) went out
    assert final is not None and final.get("structured_response") is None
    assert _clause_words(_everything(final)) == []


class CannedAnswer(AgentMiddleware):
    """A middleware that answers from a store instead of calling the model (a response cache): listed before
    `GuardMiddleware`, its answer never passes through the guard's model call, only its ``after_model``."""

    def __init__(self, body: str) -> None:
        super().__init__()
        self.email = Email(to="a@example.com", body=body)

    def _answer(self) -> ModelResponse:
        call = {"name": "Email", "args": self.email.model_dump(), "id": "cached_call", "type": "tool_call"}
        return ModelResponse(
            result=[
                AIMessage("", tool_calls=[call]),
                ToolMessage(f"Returning structured response: {self.email}", tool_call_id="cached_call", name="Email"),
            ],
            structured_response=self.email,
        )

    def wrap_model_call(self, request: Any, handler: Any) -> ModelResponse:
        return self._answer()

    async def awrap_model_call(self, request: Any, handler: Any) -> ModelResponse:
        return self._answer()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", ["end", "replace"])
def test_a_structured_response_that_bypassed_the_model_call_is_judged_after_it(guard, mode, exit_behavior):
    """``after_model`` is the backstop: the answer before the tool message the agent added is judged, and a
    blocked one clears the structured response (before: the last message, a tool message, was not judged)."""
    with scripted_openai(_reply("ToolStrategy", SAFE_BODY)) as url:
        agent = create_agent(
            chat(url),
            [],
            middleware=[CannedAnswer(UNSAFE_CLAUSE), GuardMiddleware(guard, exit_behavior=exit_behavior)],
            response_format=ToolStrategy(Email),
        )
        result = _invoke(agent, mode)
        assert url.requests == []  # the canned answer: the model was never asked
    assert result.get("structured_response") is None
    assert _clause_words(_everything(result)) == []
    assert not any(isinstance(m, ToolMessage) for m in result["messages"])
