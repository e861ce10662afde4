"""A retry middleware listed *before* `GuardMiddleware` wraps it: with ``exit_behavior="error"`` it took the
guard's `GuardViolation` for a failure and called the guarded step again with the same request. A tool whose
result the guard blocked ran again (three e-mails instead of one); the model was asked again, giving a
jailbreak more tries. The same request now gets the same stop at once. `ChatOpenAI` against the scripted
server, LangChain's own `ToolRetryMiddleware` / `ModelRetryMiddleware`; the demo guard judges.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import ModelFallbackMiddleware, ModelRetryMiddleware, ToolRetryMiddleware
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool
from lc_fakes import INJECTION, SAFE_ANSWER, SAFE_QUESTION
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardMiddleware
from scripted_openai import Reply, ToolCall, scripted_openai
from test_openai_paths import MODES, REPLY, _closed_port_url, chat, exposure

RETRY = {"max_retries": 2, "initial_delay": 0.01, "jitter": False}
SEARCH = [
    Reply.words("Let me search.", tool_calls=[ToolCall("search", json.dumps({"q": "France"}), id="c1")]),
    Reply.words(SAFE_ANSWER),
]


def _run(agent: Any, mode: str) -> dict[str, Any]:
    inputs = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
    return agent.invoke(inputs) if mode == "sync" else asyncio.run(agent.ainvoke(inputs))


class Search:
    """A search tool that counts its runs; ``results`` are returned in turn (an exception is raised)."""

    def __init__(self, *results: Any) -> None:
        self.runs = 0

        @tool
        def search(q: str) -> str:
            """Search the web."""
            result = results[min(self.runs, len(results) - 1)]
            self.runs += 1
            if isinstance(result, Exception):
                raise result
            return result

        self.tool = search


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("on_failure", ["continue", "error"])
def test_a_tool_retry_around_the_guard_does_not_run_the_tool_again_after_its_result_was_blocked(
    guard, mode, on_failure
):
    search = Search(INJECTION)
    retry = ToolRetryMiddleware(on_failure=on_failure, **RETRY)
    with scripted_openai(SEARCH) as url:
        agent = create_agent(
            chat(url), [search.tool], middleware=[retry, GuardMiddleware(guard, exit_behavior="error")]
        )
        with pytest.raises(GuardViolation):
            _run(agent, mode)
    assert search.runs == 1  # before: 3, once per attempt


@pytest.mark.parametrize("mode", MODES)
def test_a_tool_retry_around_the_guard_still_retries_a_real_failure(guard, mode):
    # The failure's text is judged as the tool's output (the demo model reads a bare "timeout" as Violent).
    search = Search(RuntimeError("the search service timed out"), "Paris is the capital of France.")
    retry = ToolRetryMiddleware(on_failure="error", **RETRY)
    with scripted_openai(SEARCH) as url:
        agent = create_agent(
            chat(url), [search.tool], middleware=[retry, GuardMiddleware(guard, exit_behavior="error")]
        )
        result = _run(agent, mode)
    assert search.runs == 2 and result["messages"][-1].text == SAFE_ANSWER


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "stream_mode=messages"])
def test_a_model_retry_around_the_guard_does_not_ask_the_model_again(guard, mode, streamed):
    retry = ModelRetryMiddleware(on_failure="error", **RETRY)
    inputs = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
    received: list[str] = []
    with scripted_openai(REPLY) as url:
        agent = create_agent(chat(url), [], middleware=[retry, GuardMiddleware(guard, exit_behavior="error")])

        async def drain() -> None:
            async for chunk, _meta in agent.astream(inputs, stream_mode="messages"):
                received.append(chunk.text if isinstance(chunk, AIMessageChunk) else "")

        with pytest.raises(GuardViolation):
            if not streamed:
                _run(agent, mode)
            elif mode == "sync":
                for chunk, _meta in agent.stream(inputs, stream_mode="messages"):
                    received.append(chunk.text if isinstance(chunk, AIMessageChunk) else "")
            else:
                asyncio.run(drain())
        assert len(url.requests) == 1  # before: 3, a new answer per attempt
    assert exposure("".join(received)) == 0


def _drained(agent: Any, mode: str, streamed: bool) -> str:
    """What a ``stream_mode="messages"`` consumer read (or the run's last answer, with ``streamed`` off)."""
    inputs = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
    if not streamed:
        return str(_run(agent, mode)["messages"][-1].text)
    received: list[str] = []

    async def drain() -> None:
        async for chunk, _meta in agent.astream(inputs, stream_mode="messages"):
            received.append(chunk.text if isinstance(chunk, AIMessageChunk) else "")

    if mode == "sync":
        for chunk, _meta in agent.stream(inputs, stream_mode="messages"):
            received.append(chunk.text if isinstance(chunk, AIMessageChunk) else "")
    else:
        asyncio.run(drain())
    return "".join(received)


# rt61d F2: ModelFallbackMiddleware before the guard calls the guarded step again with
# ``request.override(model=backup)``, a new request: the stop was kept by the request's identity, and the backup
# answered the step the guard stopped (the run ended with no GuardViolation, the consumer read the stopped answer's
# judged start and then the backup's answer).
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "stream_mode=messages"])
def test_a_model_fallback_around_the_guard_does_not_answer_a_stopped_step(guard, mode, streamed):
    with scripted_openai(REPLY) as url, scripted_openai(SAFE_ANSWER) as backup_url:
        fallback = ModelFallbackMiddleware(chat(backup_url))
        agent = create_agent(chat(url), [], middleware=[fallback, GuardMiddleware(guard, exit_behavior="error")])
        with pytest.raises(GuardViolation):
            _drained(agent, mode, streamed)
        assert (len(url.requests), len(backup_url.requests)) == (1, 0)  # before: the backup answered


@pytest.mark.parametrize("mode", MODES)
def test_a_model_fallback_around_the_guard_still_answers_a_real_failure_and_the_next_run(guard, mode):
    """The primary cannot be reached: the backup answers (judged). Then, after a stop in one run, the next run of
    the same agent, in the same thread of code, is asked and answered as any."""
    with scripted_openai([Reply.words(SAFE_ANSWER), Reply.words(REPLY), Reply.words(SAFE_ANSWER)]) as backup_url:
        fallback = ModelFallbackMiddleware(chat(backup_url))
        agent = create_agent(
            chat(_closed_port_url()), [], middleware=[fallback, GuardMiddleware(guard, exit_behavior="error")]
        )
        inputs = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}

        async def three() -> list[Any]:  # one loop: the async client is bound to it
            outcomes: list[Any] = []
            for _ in range(3):
                try:
                    outcomes.append((await agent.ainvoke(inputs))["messages"][-1].text)
                except GuardViolation as stop:
                    outcomes.append(stop)
            return outcomes

        if mode == "sync":
            outcomes: list[Any] = []
            for _ in range(3):
                try:
                    outcomes.append(agent.invoke(inputs)["messages"][-1].text)
                except GuardViolation as stop:
                    outcomes.append(stop)
        else:
            outcomes = asyncio.run(three())
        assert outcomes[0] == outcomes[2] == SAFE_ANSWER
        assert isinstance(outcomes[1], GuardViolation)
        assert len(backup_url.requests) == 3
