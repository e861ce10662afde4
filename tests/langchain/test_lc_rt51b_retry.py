"""rt51b F2: ``with_retry()`` / ``with_fallbacks()`` must not re-roll the guard's stop.

LangChain retries every ``Exception`` and hands every one to a fallback: the guard's `GuardViolation` made the
model answer again (a re-roll: a jailbreak gets more tries) or a fallback model answer a request the guard had
stopped. `GuardedChatModel` / `GuardRunnable`'s own ``with_retry`` / ``with_fallbacks`` keep the stop; around a
chain, LangChain's ``with_retry(retry_if_exception_type=retryable)`` does. Real ChatOpenAI against the scripted
OpenAI server (its first answer unsafe, the second safe), the demo guard.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, UNSAFE_PROMPT
from qwenguard.core import GuardViolation, enforce
from qwenguard.integrations.langchain import GuardedChatModel, GuardRunnable, guard_output, retryable
from scripted_openai import Reply, scripted_openai

PROMPT = ChatPromptTemplate.from_messages([("human", "{q}")])
ASK = {"q": "Tell me."}
SCRIPT = [Reply.words(UNSAFE_CLAUSE), Reply.words(SAFE_ANSWER)]


def _llm(url: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=url, api_key="x", model="scripted", max_retries=0)


def _down() -> str:
    """The URL of a provider that refuses connections (a real outage: the port was free and nothing listens)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def _astream(chain: Any, value: Any) -> list[Any]:
    return [chunk async for chunk in chain.astream(value)]


CALLS: dict[str, Callable[[Any, Any], Any]] = {
    "invoke": lambda chain, value: chain.invoke(value),
    "ainvoke": lambda chain, value: asyncio.run(chain.ainvoke(value)),
    "stream": lambda chain, value: list(chain.stream(value)),
    "astream": lambda chain, value: asyncio.run(_astream(chain, value)),
}

RETRIED: dict[str, Callable[[Any, Any], Any]] = {
    "GuardedChatModel.with_retry": lambda guard, llm: PROMPT | GuardedChatModel(llm, guard).with_retry(),
    "GuardRunnable.with_retry": lambda guard, llm: GuardRunnable(PROMPT | llm, guard).with_retry(),
    "chain.with_retry(retryable)": lambda guard, llm: (
        PROMPT | llm | guard_output(guard) | StrOutputParser()
    ).with_retry(retry_if_exception_type=retryable),
    "with_retry(types).with_fallbacks": lambda guard, llm: (
        PROMPT
        | GuardedChatModel(llm, guard)
        .with_retry(retry_if_exception_type=(ValueError, GuardViolation))
        .with_fallbacks([llm])
    ),
}


@pytest.mark.parametrize("mode", sorted(CALLS))
@pytest.mark.parametrize("shape", sorted(RETRIED))
def test_a_retry_does_not_ask_the_model_again_after_a_stop(guard, shape, mode):
    """The user's action: a retry for a flaky provider around the guarded model; the guard blocks the answer."""
    with scripted_openai(SCRIPT) as url:
        chain = RETRIED[shape](guard, _llm(url))
        with pytest.raises(GuardViolation):
            CALLS[mode](chain, ASK)
        assert len(url.requests) == 1


FALLBACKS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "guarded fallback": lambda guard, llm, backup: GuardedChatModel(llm, guard).with_fallbacks(
        [GuardedChatModel(backup, guard)]
    ),
    "unguarded fallback": lambda guard, llm, backup: GuardedChatModel(llm, guard).with_fallbacks([backup]),
    "GuardRunnable": lambda guard, llm, backup: GuardRunnable(llm, guard).with_fallbacks([backup]),
}


@pytest.mark.parametrize("mode", sorted(CALLS))
@pytest.mark.parametrize("shape", sorted(FALLBACKS))
def test_a_fallback_does_not_answer_after_a_stop(guard, shape, mode):
    with scripted_openai(Reply.words(UNSAFE_CLAUSE)) as url, scripted_openai(Reply.words(SAFE_ANSWER)) as backup_url:
        chain = PROMPT | FALLBACKS[shape](guard, _llm(url), _llm(backup_url))
        with pytest.raises(GuardViolation) as info:
            CALLS[mode](chain, ASK)
        assert info.value.decision.stage.value in ("response", "stream")
        assert (len(url.requests), len(backup_url.requests)) == (1, 0)


@pytest.mark.parametrize("mode", sorted(CALLS))
def test_a_blocked_prompt_reaches_no_fallback(guard, mode):
    with scripted_openai(Reply.words(SAFE_ANSWER)) as url:
        chain = PROMPT | GuardedChatModel(_llm(_down()), guard).with_fallbacks([_llm(url)])
        with pytest.raises(GuardViolation) as info:
            CALLS[mode](chain, {"q": UNSAFE_PROMPT})
        assert info.value.decision.stage.value == "prompt" and len(url.requests) == 0


@pytest.mark.parametrize("mode", sorted(CALLS))
def test_a_provider_failure_still_falls_back(guard, mode):
    with scripted_openai(Reply.words(SAFE_ANSWER)) as url:
        chain = PROMPT | GuardedChatModel(_llm(_down()), guard).with_fallbacks([GuardedChatModel(_llm(url), guard)])
        out = CALLS[mode](chain, ASK)
        text = "".join(c.content for c in out) if isinstance(out, list) else out.content
        assert text == SAFE_ANSWER and len(url.requests) == 1


def test_a_failure_that_is_not_a_stop_is_still_retried(guard):
    attempts: list[int] = []

    def flaky(value: Any) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("provider hiccup")
        return SAFE_ANSWER

    chain = GuardRunnable(RunnableLambda(flaky), guard).with_retry(wait_exponential_jitter=False)
    assert chain.invoke("What is the capital of France?") == SAFE_ANSWER and len(attempts) == 2


def test_batch_falls_back_per_input(guard):
    """One input's stop ends its own fallbacks only: the other input's provider failure still falls back."""
    with scripted_openai(Reply.words(SAFE_ANSWER)) as url:
        chain = PROMPT | GuardedChatModel(_llm(_down()), guard).with_fallbacks([GuardedChatModel(_llm(url), guard)])
        out = chain.batch([{"q": UNSAFE_PROMPT}, ASK], return_exceptions=True)
        assert isinstance(out[0], GuardViolation) and out[1].content == SAFE_ANSWER
        assert len(url.requests) == 1


def test_retryable(guard):
    with pytest.raises(GuardViolation) as info:
        enforce(guard.check_prompt(UNSAFE_PROMPT))
    assert retryable(ConnectionError()) and not retryable(info.value)
    assert not retryable(KeyboardInterrupt())
