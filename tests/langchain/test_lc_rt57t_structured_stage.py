"""rt57t: a structured answer delivered as the schema's tool call is decided as the answer, not as a tool call.

rt52d F4 made the call of ``with_structured_output(..., method="function_calling")``'s and ``ToolStrategy``'s schema
judged whatever ``check_tool_calls`` says, but it was still decided under the tool-call stage's policy: an operator who
turned that stage off, or let it ignore a category (``StagePolicy(ignore_categories={"Violent"})``, for an agent whose
tools take such text), got the unsafe object back from `GuardMiddleware`, `GuardCallbackHandler` and `GuardedChatModel`,
while the same text as a plain answer is blocked at the response stage. It is now asked under the response stage and
decided under the stricter of the two policies (the LangChain twin of LlamaIndex's rt57f F1). Real ChatOpenAI against
the scripted OpenAI server, the demo guard.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.structured_output import ToolStrategy
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE
from qwenguard.core import Guard, GuardViolation, Policy, Stage
from qwenguard.core.policy import StagePolicy
from qwenguard.integrations.langchain import GuardCallbackHandler, GuardedChatModel, GuardMiddleware
from scripted_openai import Reply, ToolCall, scripted_openai
from test_lc_rt52d_structured_output import ASK, CALLS, SAFE_EMAIL, UNSAFE_EMAIL, Email, _astream, _llm

#: Tool-call stage policies an operator sets for the agent's tools: neither is the answer's policy.
LOOSE_TOOL_STAGES = {
    "tool-call stage off": StagePolicy(enabled=False),
    "tool-call stage ignores Violent": StagePolicy(ignore_categories={"Violent"}),
}


@pytest.fixture(params=sorted(LOOSE_TOOL_STAGES))
def loose(request: pytest.FixtureRequest) -> Iterator[Guard]:
    guard = Guard.from_pretrained("demo", policy=Policy(stages={Stage.TOOL_CALL: LOOSE_TOOL_STAGES[request.param]}))
    yield guard
    guard.close()


def _reply(name: str, args: dict[str, str], call_id: str = "call_1") -> Reply:
    return Reply(tool_calls=[ToolCall(name, json.dumps(args), id=call_id)])


def _last(mode: str, out: Any) -> Any:
    return out if mode.endswith("invoke") else out[-1]


def test_the_loose_policies_still_block_the_text_as_an_answer(loose):
    """The premise: the same words as a plain answer are blocked at the response stage."""
    assert not loose.check_response(ASK, UNSAFE_CLAUSE).allowed


# -- GuardedChatModel.with_structured_output ------------------------------------------------------
@pytest.mark.parametrize("mode", sorted(CALLS))
def test_guarded_model_blocks_the_unsafe_object(loose, mode):
    """The user's action: a guarded ChatOpenAI asked for an e-mail object, the tool-call stage loosened."""
    with scripted_openai(_reply("Email", UNSAFE_EMAIL)) as url:
        structured = GuardedChatModel(_llm(url), loose).with_structured_output(Email, method="function_calling")
        with pytest.raises(GuardViolation) as caught:
            CALLS[mode](structured, ASK)
        assert caught.value.decision.stage is Stage.RESPONSE
        assert url.requests[0].body["tools"][0]["function"]["name"] == "Email"


@pytest.mark.parametrize("mode", ["invoke", "astream"])
def test_guarded_model_still_answers_a_safe_object(loose, mode):
    with scripted_openai(_reply("Email", SAFE_EMAIL)) as url:
        structured = GuardedChatModel(_llm(url), loose).with_structured_output(Email, method="function_calling")
        assert _last(mode, CALLS[mode](structured, ASK)) == Email(**SAFE_EMAIL)


@pytest.mark.parametrize("mode", ["invoke", "astream"])
def test_guarded_model_keeps_the_tool_call_policy_for_other_tools(loose, mode):
    """A call of an ordinary tool is the model's action: the operator's tool-call policy decides it."""

    @tool
    def send_email(to: str, body: str) -> str:
        """Send an e-mail."""
        return "sent"

    with scripted_openai(_reply("send_email", UNSAFE_EMAIL)) as url:
        bound = GuardedChatModel(_llm(url), loose).bind_tools([send_email])
        out = CALLS[mode](bound, ASK)
        calls = out.tool_calls if mode == "invoke" else [c for chunk in out for c in chunk.tool_call_chunks]
        assert calls and calls[0]["name"] == "send_email"


# -- GuardCallbackHandler ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", sorted(CALLS))
def test_callback_blocks_the_unsafe_object(loose, mode):
    """The user's action: a handler in the config of a structured-output call it cannot change."""
    with scripted_openai(_reply("Email", UNSAFE_EMAIL)) as url:
        structured = _llm(url).with_structured_output(Email, method="function_calling")
        with pytest.raises(GuardViolation) as caught:
            CALLS[mode](structured, ASK, config={"callbacks": [GuardCallbackHandler(loose)]})
        assert caught.value.decision.stage is Stage.RESPONSE


def _consumed(structured: Any, mode: str, handler: Any, seen: list[Any]) -> None:
    """Stream ``structured``, keeping each object the consumer gets in ``seen`` (the run may raise midway)."""
    config = {"callbacks": [handler]}
    if mode == "stream":
        seen.extend(structured.stream(ASK, config=config))
        return

    async def consume() -> None:
        async for chunk in structured.astream(ASK, config=config):
            seen.append(chunk)

    asyncio.run(consume())


@pytest.mark.parametrize("mode", ["stream", "astream"])
def test_callback_stops_the_streamed_unsafe_object_mid_stream(loose, mode):
    """Streamed, the object's arguments are judged as they come, as the answer: the run stops before the consumer
    got the object whole, not only once every piece went by (a callback cannot hold back what came before)."""
    body = f"{UNSAFE_CLAUSE} {' '.join([SAFE_ANSWER] * 30)}"
    reply = Reply(tool_calls=[ToolCall("Email", json.dumps({"to": "friend@example.com", "body": body}), fragments=120)])
    seen: list[Any] = []
    with scripted_openai(reply, pace=0.005) as url:
        structured = _llm(url).with_structured_output(Email, method="function_calling")
        with pytest.raises(GuardViolation) as caught:
            _consumed(structured, mode, GuardCallbackHandler(loose), seen)
    assert caught.value.decision.stage is Stage.RESPONSE
    assert all(len(getattr(got, "body", "")) < len(body) // 2 for got in seen), [getattr(g, "body", g) for g in seen]


@pytest.mark.parametrize("mode", ["invoke", "astream"])
def test_callback_still_passes_a_safe_object(loose, mode):
    with scripted_openai(_reply("Email", SAFE_EMAIL)) as url:
        structured = _llm(url).with_structured_output(Email, method="function_calling")
        out = CALLS[mode](structured, ASK, config={"callbacks": [GuardCallbackHandler(loose)]})
        assert _last(mode, out) == Email(**SAFE_EMAIL)


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_callback_keeps_the_tool_call_policy_for_other_tools(loose, mode):
    @tool
    def send_email(to: str, body: str) -> str:
        """Send an e-mail."""
        return "sent"

    with scripted_openai(_reply("send_email", UNSAFE_EMAIL)) as url:
        bound = _llm(url).bind_tools([send_email])
        out = CALLS[mode](bound, ASK, config={"callbacks": [GuardCallbackHandler(loose)]})
        calls = out.tool_calls if mode == "invoke" else [c for chunk in out for c in chunk.tool_call_chunks]
        assert calls and calls[0]["name"] == "send_email"


# -- GuardMiddleware (create_agent, ToolStrategy) ------------------------------------------------
def _agent(guard: Guard, url: str, *, exit_behavior: str = "end", tools: list[Any] | None = None) -> Any:
    return create_agent(
        _llm(url),
        tools or [],
        response_format=ToolStrategy(Email),
        middleware=[GuardMiddleware(guard, exit_behavior=exit_behavior)],  # type: ignore[arg-type]
    )


AGENT_CALLS: dict[str, Callable[[Any, Any], Any]] = {
    "invoke": lambda agent, ask: agent.invoke(ask),
    "ainvoke": lambda agent, ask: asyncio.run(agent.ainvoke(ask)),
    "stream": lambda agent, ask: list(agent.stream(ask, stream_mode=["messages", "values"])),
    "astream": lambda agent, ask: asyncio.run(_astream(agent, ask, stream_mode=["messages", "values"])),
}


@pytest.mark.parametrize("mode", sorted(AGENT_CALLS))
def test_middleware_withholds_the_unsafe_structured_response(loose, mode):
    """The user's action: an agent asked for an e-mail object with ``ToolStrategy``, the tool-call stage loosened."""
    with scripted_openai([_reply("Email", UNSAFE_EMAIL)]) as url:
        out = AGENT_CALLS[mode](_agent(loose, url), {"messages": [HumanMessage(ASK)]})
    assert "ammonium" not in repr(out)
    if mode.endswith("invoke"):
        assert out.get("structured_response") is None


@pytest.mark.parametrize("mode", ["invoke", "stream"])
def test_middleware_with_error_raises_for_the_unsafe_structured_response(loose, mode):
    with scripted_openai([_reply("Email", UNSAFE_EMAIL)]) as url:
        with pytest.raises(GuardViolation) as caught:
            AGENT_CALLS[mode](_agent(loose, url, exit_behavior="error"), {"messages": [HumanMessage(ASK)]})
    assert caught.value.decision.stage is Stage.RESPONSE


@pytest.mark.parametrize("mode", ["invoke", "astream"])
def test_middleware_still_returns_a_safe_structured_response(loose, mode):
    with scripted_openai([_reply("Email", SAFE_EMAIL)]) as url:
        out = AGENT_CALLS[mode](_agent(loose, url), {"messages": [HumanMessage(ASK)]})
    state = out if mode == "invoke" else [chunk for kind, chunk in out if kind == "values"][-1]
    assert state["structured_response"] == Email(**SAFE_EMAIL)


def test_middleware_keeps_the_tool_call_policy_for_the_agents_tools(loose):
    """The agent's own tool gets the operator's tool-call policy: its call runs; the answer after it is judged."""
    sent: list[str] = []

    @tool
    def send_email(to: str, body: str) -> str:
        """Send an e-mail."""
        sent.append(body)
        return "sent"

    script = [_reply("send_email", UNSAFE_EMAIL), _reply("Email", SAFE_EMAIL, call_id="call_2")]
    with scripted_openai(script) as url:
        out = _agent(loose, url, tools=[send_email]).invoke({"messages": [HumanMessage(ASK)]})
    assert sent == [UNSAFE_CLAUSE]
    assert out["structured_response"] == Email(**SAFE_EMAIL)


# -- the stricter of the two policies ------------------------------------------------------------
def test_a_stricter_tool_call_stage_still_decides_the_structured_answer():
    """A response stage that ignores a category does not loosen the tool-call stage's decision of the object."""
    guard = Guard.from_pretrained(
        "demo", policy=Policy(stages={Stage.RESPONSE: StagePolicy(ignore_categories={"Violent"})})
    )
    try:
        with scripted_openai([_reply("Email", UNSAFE_EMAIL)]) as url:
            with pytest.raises(GuardViolation) as caught:
                _agent(guard, url, exit_behavior="error").invoke({"messages": [HumanMessage(ASK)]})
            assert caught.value.decision.stage is Stage.TOOL_CALL
            structured = _llm(url).with_structured_output(Email, method="function_calling")
            with pytest.raises(GuardViolation):
                structured.invoke(ASK, config={"callbacks": [GuardCallbackHandler(guard)]})
    finally:
        guard.close()
