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
from langchain.agents.middleware import ModelRetryMiddleware, ToolRetryMiddleware
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool
from lc_fakes import INJECTION, SAFE_ANSWER, SAFE_QUESTION
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardMiddleware
from scripted_openai import Reply, ToolCall, scripted_openai
from test_openai_paths import MODES, REPLY, chat, exposure

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
