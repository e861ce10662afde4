"""`GuardMiddleware` judges the model call's answer as the call's outcome, before any ``after_model`` hook of
another middleware sees it. ``after_model`` hooks run in the reverse order of the list, so with
``middleware=[GuardMiddleware(guard), other]`` the other one's hook ran first, on an answer nobody had
judged yet when it was not streamed (``invoke``): `HumanInTheLoopMiddleware` put an unsafe tool call in
front of the human reviewer. `ChatOpenAI` against the scripted server; the demo guard judges.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, HumanInTheLoopMiddleware
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardMiddleware
from scripted_openai import Reply, ToolCall, scripted_openai
from test_openai_paths import EMAIL_ARGS, MODES, chat

SAFE_ARGS = '{"to": "friend@example.com", "body": "See you at noon."}'
CLAUSE_WORDS = ("ammonium", "nitrate", "fuel", "pipe", "fuse")


def _clause_words(text: str) -> list[str]:
    return [word for word in CLAUSE_WORDS if word in text]


def _email_reply(arguments: str) -> Reply:
    return Reply.words("Let me send that.", tool_calls=[ToolCall("send_email", arguments, id="c1", fragments=4)])


class Outbox:
    def __init__(self) -> None:
        self.sent: list[str] = []

        @tool
        def send_email(to: str, body: str) -> str:
            """Send an e-mail."""
            self.sent.append(body)
            return "sent"

        self.tool = send_email


class SeenAfterModel(AgentMiddleware):
    """A middleware whose ``after_model`` records the answer it sees (a logger, an audit trail)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def after_model(self, state: Any, runtime: Any) -> None:
        last = state["messages"][-1]
        self.seen.append(last.text + "".join(str(call["args"]) for call in getattr(last, "tool_calls", ())))

    async def aafter_model(self, state: Any, runtime: Any) -> None:
        self.after_model(state, runtime)


def _run(agent: Any, mode: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    inputs = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
    return agent.invoke(inputs, config) if mode == "sync" else asyncio.run(agent.ainvoke(inputs, config))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("guard_listed", ["first", "last"])
def test_a_human_reviewer_never_sees_an_unsafe_tool_call(guard, mode, guard_listed):
    outbox = Outbox()
    review = HumanInTheLoopMiddleware(interrupt_on={"send_email": True})
    middleware = [GuardMiddleware(guard), review] if guard_listed == "first" else [review, GuardMiddleware(guard)]
    with scripted_openai(_email_reply(EMAIL_ARGS)) as url:
        agent = create_agent(chat(url), [outbox.tool], middleware=middleware, checkpointer=InMemorySaver())
        result = _run(agent, mode, {"configurable": {"thread_id": "review"}})
    assert "__interrupt__" not in result  # nothing to review: the call was blocked first
    assert _clause_words(repr(result)) == []  # nothing of the clause anywhere in what the app gets back
    assert outbox.sent == []
    last = result["messages"][-1]
    assert isinstance(last, AIMessage) and "blocked by the safety guard" in last.text


@pytest.mark.parametrize("mode", MODES)
def test_a_safe_tool_call_still_goes_to_the_reviewer(guard, mode):
    outbox = Outbox()
    review = HumanInTheLoopMiddleware(interrupt_on={"send_email": True})
    with scripted_openai(_email_reply(SAFE_ARGS)) as url:
        agent = create_agent(
            chat(url), [outbox.tool], middleware=[GuardMiddleware(guard), review], checkpointer=InMemorySaver()
        )
        result = _run(agent, mode, {"configurable": {"thread_id": "review"}})
    (interrupt,) = result["__interrupt__"]
    (request,) = interrupt.value["action_requests"]
    assert request["name"] == "send_email" and request["args"]["body"] == "See you at noon."
    assert outbox.sent == []  # waiting for the reviewer


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", ["end", "replace", "error"])
@pytest.mark.parametrize("answer", ["text", "tool call"])
def test_an_after_model_hook_listed_after_the_guard_sees_only_judged_answers(guard, mode, exit_behavior, answer):
    seen = SeenAfterModel()
    reply = _email_reply(EMAIL_ARGS) if answer == "tool call" else Reply.words(f"Sure. {UNSAFE_CLAUSE}")
    with scripted_openai(reply) as url:
        agent = create_agent(
            chat(url), [Outbox().tool], middleware=[GuardMiddleware(guard, exit_behavior=exit_behavior), seen]
        )
        if exit_behavior == "error":
            with pytest.raises(GuardViolation):
                _run(agent, mode)
        else:
            _run(agent, mode)
    assert _clause_words("".join(seen.seen)) == []  # the hook never saw the unsafe answer


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream_mode", ["updates", "values"])
@pytest.mark.parametrize("answer", ["text", "tool call"])
def test_an_unsafe_answer_never_reaches_an_updates_or_values_stream(guard, mode, stream_mode, answer):
    """``stream_mode="updates"``/``"values"`` (no token streaming: the model is invoked) emit each node's
    state update as it ends: before, the model node's update carried the unsafe answer to the consumer, and
    only the next update (``after_model``) replaced it."""
    reply = _email_reply(EMAIL_ARGS) if answer == "tool call" else Reply.words(f"Sure. {UNSAFE_CLAUSE}")
    with scripted_openai(reply) as url:
        agent = create_agent(chat(url), [Outbox().tool], middleware=[GuardMiddleware(guard)])
        inputs = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
        seen: list[str] = []

        async def drain() -> None:
            async for update in agent.astream(inputs, stream_mode=stream_mode):
                seen.append(repr(update))

        if mode == "sync":
            seen.extend(repr(update) for update in agent.stream(inputs, stream_mode=stream_mode))
        else:
            asyncio.run(drain())
    assert "blocked by the safety guard" in "\n".join(seen)  # the refusal came instead
    assert _clause_words("\n".join(seen)) == []  # no update carried any of the clause


class AppendsAnAnswer(AgentMiddleware):
    """A middleware inside the guard that adds an AI message of its own to the model's response."""

    def _added(self, response: Any) -> Any:
        from langchain.agents.middleware import ModelResponse

        return ModelResponse(result=[*response.result, AIMessage(f"P.S. {UNSAFE_CLAUSE}", id="ps-1")])

    def wrap_model_call(self, request: Any, handler: Any) -> Any:
        return self._added(handler(request))

    async def awrap_model_call(self, request: Any, handler: Any) -> Any:
        return self._added(await handler(request))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "stream_mode=messages"])
def test_an_ai_message_a_middleware_inside_the_guard_adds_is_judged_too(guard, mode, streamed):
    """Only the response's first AI message was judged when the call returned, and every one was then
    remembered as judged: an unsafe one added after it reached the state (streamed: before this change too)."""
    inputs = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
    seen: list[str] = []
    final: dict[str, Any] = {}

    async def arun() -> None:
        nonlocal final
        if not streamed:
            final = await agent.ainvoke(inputs)
            return
        async for kind, data in agent.astream(inputs, stream_mode=["messages", "values"]):
            seen.append(repr(data))
            final = data if kind == "values" else final

    with scripted_openai(SAFE_ANSWER) as url:
        agent = create_agent(chat(url), [], middleware=[GuardMiddleware(guard, exit_behavior="end"), AppendsAnAnswer()])
        if mode == "async":
            asyncio.run(arun())
        elif not streamed:
            final = agent.invoke(inputs)
        else:
            for kind, data in agent.stream(inputs, stream_mode=["messages", "values"]):
                seen.append(repr(data))
                final = data if kind == "values" else final
    assert _clause_words(repr(final) + "".join(seen)) == []  # nothing of the added answer went anywhere
    assert "blocked by the safety guard" in final["messages"][-1].text
