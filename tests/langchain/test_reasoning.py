"""A thinking model's reasoning is text the consumer sees: DeepSeek's API and vLLM's reasoning parsers
stream it as ``delta.reasoning_content``, and `ChatDeepSeek` (a real provider class, here against the
scripted OpenAI-compatible server) hands it on in ``additional_kwargs["reasoning_content"]`` of each
chunk, where apps show it as the model's "thinking". The guard must judge it like the answer: a model
that reasons through the harmful instructions and then answers briefly must not show the reasoning.

Exposure is counted in characters of the unsafe clause that reached the consumer, reasoning included.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_deepseek import ChatDeepSeek
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import (
    GuardCallbackHandler,
    GuardedChatModel,
    GuardMiddleware,
    guard_output,
)
from scripted_openai import Reply, scripted_openai
from test_openai_paths import collect

THINKING = f"The user asks about France. {UNSAFE_CLAUSE} That is unrelated, so answer briefly."
REPLY = Reply.words(SAFE_ANSWER, reasoning=THINKING)
MODES = ["sync", "async"]


def deepseek(url: str) -> ChatDeepSeek:
    return ChatDeepSeek(api_base=url, api_key="scripted", model="deepseek-reasoner", max_retries=0)


def reasoning_of(items: list[Any]) -> str:
    return "".join(
        m.additional_kwargs.get("reasoning_content") or "" for m in items if isinstance(m, (AIMessage, AIMessageChunk))
    )


def exposure(reasoning: str) -> int:
    """Characters of the unsafe clause (and what follows it) in the reasoning the consumer received."""
    assert THINKING.startswith(reasoning), f"not a prefix of the reasoning: {reasoning!r}"
    return max(0, len(reasoning) - THINKING.index(UNSAFE_CLAUSE))


def test_the_provider_class_streams_reasoning_where_the_tests_read_it():
    """The test's premise: unguarded, the consumer receives the whole reasoning, chunk by chunk."""
    with scripted_openai(REPLY) as url:
        chunks = list(deepseek(url).stream(SAFE_QUESTION))
    assert reasoning_of(chunks) == THINKING and "".join(c.text for c in chunks) == SAFE_ANSWER


@pytest.mark.parametrize("mode", MODES)
def test_guard_output_judges_streamed_reasoning(guard, mode):
    with scripted_openai(REPLY) as url:
        chain = deepseek(url) | guard_output(guard)
        items, error = collect(mode, lambda: chain.stream(SAFE_QUESTION), lambda: chain.astream(SAFE_QUESTION))
    assert isinstance(error, GuardViolation)
    assert exposure(reasoning_of(items)) == 0  # no character of the clause in the reasoning shown
    assert "".join(c.text for c in items) == ""  # the answer after it never went out


@pytest.mark.parametrize("mode", MODES)
def test_guard_middleware_judges_streamed_reasoning(guard, mode):
    with scripted_openai(REPLY) as url:
        agent = create_agent(deepseek(url), [], middleware=[GuardMiddleware(guard)])
        inputs = {"messages": [HumanMessage(SAFE_QUESTION)]}
        items, error = collect(
            mode,
            lambda: (m for m, _ in agent.stream(inputs, stream_mode="messages")),
            lambda: _messages(agent.astream(inputs, stream_mode="messages")),
        )
    assert error is None and "safety guard" in items[-1].text
    assert exposure(reasoning_of(items)) == 0


@pytest.mark.parametrize("mode", MODES)
def test_guarded_chat_model_judges_streamed_reasoning(guard, mode):
    with scripted_openai(REPLY) as url:
        model = GuardedChatModel(deepseek(url), guard)
        items, error = collect(mode, lambda: model.stream(SAFE_QUESTION), lambda: model.astream(SAFE_QUESTION))
    assert isinstance(error, GuardViolation)
    assert exposure(reasoning_of(items)) == 0


def test_the_callback_stops_a_stream_on_its_reasoning(guard):
    """A callback cannot hold text: it stops the stream within its bound, here inside the reasoning."""
    with scripted_openai(REPLY) as url:
        handler = GuardCallbackHandler(guard)
        items, error = collect(
            "sync", lambda: deepseek(url).stream(SAFE_QUESTION, config={"callbacks": [handler]}), None
        )
    assert isinstance(error, GuardViolation)
    assert exposure(reasoning_of(items)) <= len(UNSAFE_CLAUSE) // 2
    assert "".join(c.text for c in items) == ""


@pytest.mark.parametrize("mode", MODES)
def test_an_answer_that_was_not_streamed_is_judged_with_its_reasoning(guard, mode):
    with scripted_openai(REPLY) as url:
        model = GuardedChatModel(deepseek(url), guard)
        with pytest.raises(GuardViolation):
            model.invoke(SAFE_QUESTION) if mode == "sync" else asyncio.run(model.ainvoke(SAFE_QUESTION))


async def _messages(stream: Any) -> Any:
    async for message, _meta in stream:
        yield message
