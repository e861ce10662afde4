"""rt61d F1: under `GuardCallbackHandler`, LangChain's retries and fallbacks do not re-roll what the guard stopped.

``model.with_retry()`` (it retries any Exception) asked the model again after the guard stopped its answer and
returned the second answer, no GuardViolation; ``with_fallbacks([other])`` let the other answer;
``ModelRetryMiddleware`` / ``ModelFallbackMiddleware`` re-asked; ``ToolRetryMiddleware`` ran a tool whose result the
guard blocked three times. Now the retry or fallback gets the same stop at its start, before the provider is asked
(the scripted server counts requests) or the tool runs; a normal agent loop and a reused handler are unaffected.
`ChatOpenAI` against the scripted server, a phrase judge; sync and async handlers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from faults import ScriptedBackend, phrase_verdict
from langchain.agents import create_agent
from langchain.agents.middleware import ModelFallbackMiddleware, ModelRetryMiddleware, ToolRetryMiddleware
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler
from scripted_openai import Reply, ToolCall, scripted_openai

ASK = {"messages": [{"role": "user", "content": "Tell me about Paris."}]}
UNSAFE = Reply.words(SAFE_ANSWER + " " + UNSAFE_CLAUSE)
SECOND = "Rome is the capital of Italy."
MODES = ["sync", "async"]


GUARD = Guard(ScriptedBackend(phrase_verdict, name="phrase"), cache_size=0)


def _handler(mode: str) -> Any:
    return AsyncGuardCallbackHandler(GUARD) if mode == "async" else GuardCallbackHandler(GUARD)


def _chat(url: str, mode: str, **options: Any) -> ChatOpenAI:
    extra: dict[str, Any] = {"http_async_client": httpx.AsyncClient()} if mode == "async" else {}
    return ChatOpenAI(base_url=url, api_key="x", model="scripted", max_retries=0, **options, **extra)


def _invoke(runnable: Any, inputs: Any, mode: str, handler: Any = None) -> Any:
    config = {"callbacks": [handler or _handler(mode)]}
    if mode == "async":
        return asyncio.run(runnable.ainvoke(inputs, config))
    return runnable.invoke(inputs, config)


def _stream(agent: Any, mode: str) -> str:
    got: list[str] = []
    config = {"callbacks": [_handler(mode)]}
    if mode == "async":

        async def read() -> None:
            async for chunk, _ in agent.astream(ASK, config, stream_mode="messages"):
                got.append(chunk.text)

        asyncio.run(read())
    else:
        for chunk, _ in agent.stream(ASK, config, stream_mode="messages"):
            got.append(chunk.text)
    return "".join(got)


@pytest.mark.parametrize("mode", MODES)
def test_with_retry_does_not_ask_again_after_a_stop(mode: str) -> None:
    with scripted_openai([UNSAFE, Reply.words(SECOND)]) as url:
        agent = create_agent(_chat(url, mode).with_retry(), [])
        with pytest.raises(GuardViolation):
            _invoke(agent, ASK, mode)
        assert len(url.requests) == 1  # the retry was refused before the provider was asked


@pytest.mark.parametrize("mode", MODES)
def test_a_streamed_answer_under_with_retry_is_not_followed_by_a_fresh_one(mode: str) -> None:
    with scripted_openai([UNSAFE, Reply.words(SECOND)]) as url:
        agent = create_agent(_chat(url, mode, streaming=True).with_retry(), [])
        with pytest.raises(GuardViolation):
            _stream(agent, mode)
        assert len(url.requests) == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("where", ["top level", "agent"])
def test_with_fallbacks_does_not_let_the_other_model_answer(mode: str, where: str) -> None:
    """At the top level ``RunnableWithFallbacks`` hands its models the caller's config (no parent run id)."""
    with scripted_openai([UNSAFE]) as url, scripted_openai([Reply.words(SECOND)]) as url2:
        model = _chat(url, mode).with_fallbacks([_chat(url2, mode)])
        with pytest.raises(GuardViolation):
            if where == "agent":
                _invoke(create_agent(model, []), ASK, mode)
            else:
                _invoke(model, "Tell me about Paris.", mode)
        assert (len(url.requests), len(url2.requests)) == (1, 0)


@pytest.mark.parametrize("mode", MODES)
def test_model_retry_middleware_does_not_re_ask(mode: str) -> None:
    with scripted_openai([UNSAFE, Reply.words(SECOND)]) as url:
        raising = create_agent(
            _chat(url, mode), [], middleware=[ModelRetryMiddleware(initial_delay=0.01, on_failure="error")]
        )
        with pytest.raises(GuardViolation):
            _invoke(raising, ASK, mode)
        assert len(url.requests) == 1
    # Its default writes the failure as the answer: the stop's description, never a second answer.
    with scripted_openai([UNSAFE, Reply.words(SECOND)]) as url:
        agent = create_agent(_chat(url, mode), [], middleware=[ModelRetryMiddleware(initial_delay=0.01)])
        answer = _invoke(agent, ASK, mode)["messages"][-1].content
        assert "GuardViolation" in answer and SECOND not in answer and "ammonium" not in answer
        assert len(url.requests) == 1


@pytest.mark.parametrize("mode", MODES)
def test_model_fallback_middleware_does_not_ask_the_backup(mode: str) -> None:
    with scripted_openai([UNSAFE]) as url, scripted_openai([Reply.words(SECOND)]) as url2:
        agent = create_agent(_chat(url, mode), [], middleware=[ModelFallbackMiddleware(_chat(url2, mode))])
        with pytest.raises(GuardViolation):
            _invoke(agent, ASK, mode)
        assert (len(url.requests), len(url2.requests)) == (1, 0)


@pytest.mark.parametrize("mode", MODES)
def test_tool_retry_middleware_does_not_run_a_blocked_tool_again(mode: str) -> None:
    """Two parallel calls: the one whose result is blocked runs once; the one beside it runs and answers."""
    runs: list[str] = []

    @tool
    def fetch(url: str) -> str:
        """Fetch a page."""
        runs.append(url)
        return "Page: " + UNSAFE_CLAUSE if "bad" in url else "Page: " + SAFE_ANSWER

    calls = [ToolCall("fetch", '{"url": "http://bad"}', id="c1"), ToolCall("fetch", '{"url": "http://ok"}', id="c2")]
    with scripted_openai([Reply(tool_calls=calls), Reply.words("Done.")]) as url:
        agent = create_agent(_chat(url, mode), [fetch], middleware=[ToolRetryMiddleware(initial_delay=0.01)])
        out = _invoke(agent, ASK, mode)
    assert sorted(runs) == ["http://bad", "http://ok"]
    tool_messages = {m.tool_call_id: m.content for m in out["messages"] if m.type == "tool"}
    assert "GuardViolation" in tool_messages["c1"] and "ammonium" not in tool_messages["c1"]
    assert tool_messages["c2"] == "Page: " + SAFE_ANSWER


@pytest.mark.parametrize("mode", MODES)
def test_a_normal_agent_loop_and_a_reused_handler_are_unaffected(mode: str) -> None:
    """model → two parallel tools → model, three times with one handler, after that handler stopped a call."""
    runs: list[str] = []

    @tool
    def lookup(city: str) -> str:
        """Look a city up."""
        runs.append(city)
        return f"{city} is a city."

    handler = _handler(mode)
    with scripted_openai([UNSAFE]) as url:
        with pytest.raises(GuardViolation):
            _invoke(create_agent(_chat(url, mode).with_retry(), []), ASK, mode, handler)
    calls = [ToolCall("lookup", '{"city": "Paris"}', id="c1"), ToolCall("lookup", '{"city": "Rome"}', id="c2")]
    with scripted_openai([Reply(tool_calls=calls), Reply.words(SAFE_ANSWER)]) as url:
        for _ in range(3):  # a new agent each time: an async client belongs to one event loop
            agent = create_agent(_chat(url, mode), [lookup])
            assert _invoke(agent, ASK, mode, handler)["messages"][-1].content == SAFE_ANSWER
    with scripted_openai([Reply.words(SAFE_ANSWER)]) as url:
        for _ in range(2):  # a RunnableRetry again: a new run, a new parent
            assert _invoke(_chat(url, mode).with_retry(), "Hi.", mode, handler).content == SAFE_ANSWER
    assert sorted(runs) == ["Paris", "Paris", "Paris", "Rome", "Rome", "Rome"]


@pytest.mark.parametrize("mode", MODES)
def test_two_models_in_sequence_under_one_chain(mode: str) -> None:
    """A chain that calls two models one after the other (the first not stopped) runs both."""
    with scripted_openai([Reply.words(SAFE_ANSWER)]) as url, scripted_openai([Reply.words(SECOND)]) as url2:
        chain = _chat(url, mode) | (lambda message: message.content) | _chat(url2, mode)
        assert _invoke(chain, "Tell me about Paris.", mode).content == SECOND
        assert (len(url.requests), len(url2.requests)) == (1, 1)


# rt61e F1: a stop was kept under the stopped model's parent only; a retry or fallback around a chain runs the model
# under a new chain run each attempt (``(prompt | llm).with_retry()``, ``(prompt | llm).with_fallbacks([...])``, a
# fallback that is a chain), and the model was asked again.
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", ["retry around a chain", "fallbacks around a chain", "a chain as the fallback"])
def test_a_retry_or_fallback_around_a_chain_does_not_ask_again(mode: str, shape: str) -> None:
    prompt = ChatPromptTemplate.from_messages([("user", "{q}")])
    with scripted_openai([UNSAFE, Reply.words(SECOND)]) as url, scripted_openai([Reply.words(SECOND)]) as url2:
        if shape == "retry around a chain":
            runnable: Any = (prompt | _chat(url, mode)).with_retry(stop_after_attempt=3, wait_exponential_jitter=False)
        elif shape == "fallbacks around a chain":
            runnable = (prompt | _chat(url, mode)).with_fallbacks([prompt | _chat(url2, mode)])
        else:
            runnable = prompt | _chat(url, mode).with_fallbacks([RunnableLambda(lambda m: m) | _chat(url2, mode)])
        with pytest.raises(GuardViolation):
            _invoke(runnable, {"q": "Tell me about Paris."}, mode)
        assert (len(url.requests), len(url2.requests)) == (1, 0)


@pytest.mark.parametrize("mode", MODES)
def test_a_chain_retry_still_retries_a_failure_that_is_no_stop(mode: str) -> None:
    """The first attempt fails in the chain before the model (a flaky step): the retry asks the model as any."""
    prompt = ChatPromptTemplate.from_messages([("user", "{q}")])
    failures = [RuntimeError("flaky")]

    def flaky(value: Any) -> Any:
        if failures:
            raise failures.pop()
        return value

    with scripted_openai([Reply.words(SECOND)]) as url:
        chain = (RunnableLambda(flaky) | prompt | _chat(url, mode)).with_retry(wait_exponential_jitter=False)
        assert _invoke(chain, {"q": "Tell me about Rome."}, mode).content == SECOND
