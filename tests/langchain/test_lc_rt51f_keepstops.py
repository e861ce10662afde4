"""rt51f F1 / F10: the guard's stop must survive a binding, and every error of the guard's is a stop.

F1: ``with_config()`` / ``bind()`` / ``with_types()`` / ``with_listeners()`` / ``with_alisteners()`` on
`GuardedChatModel` / `GuardRunnable` returned LangChain's plain `RunnableBinding`, whose ``with_fallbacks`` is
LangChain's own: after the guard blocked the answer, the unguarded fallback model was asked and answered.
F10: the fallbacks stopped on `GuardViolation` / `GuardUnavailable` only: an input the guard refused to judge
(`InputTooLarge`: a client's history past ``max_checks``) went to the fallback, which answered it unjudged; and a
retry retried it. Real ChatOpenAI against the scripted OpenAI server, the demo guard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, UNSAFE_PROMPT
from qwenguard.core import (
    Guard,
    GuardTimeout,
    GuardUnavailable,
    GuardViolation,
    InputTooLarge,
    MissingDependency,
    QwenGuardError,
    StreamClosed,
    VerdictParseError,
)
from qwenguard.integrations.langchain import GuardedChatModel, GuardRunnable, retryable
from scripted_openai import Reply, scripted_openai
from test_lc_rt51b_retry import ASK, CALLS, PROMPT, _down, _llm


async def _on_end_async(run: Any) -> None:
    return None


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return "x"


#: What a user does to the guarded model before ``with_fallbacks`` / ``with_retry``: (guard, model) -> runnable.
BOUND: dict[str, Callable[[Any, Any], Any]] = {
    "GuardedChatModel.with_config": lambda guard, llm: GuardedChatModel(llm, guard).with_config(run_name="m"),
    "GuardedChatModel.bind": lambda guard, llm: GuardedChatModel(llm, guard).bind(stop=["\n\n\n"]),
    "GuardedChatModel.with_types": lambda guard, llm: GuardedChatModel(llm, guard).with_types(input_type=dict),
    "GuardedChatModel.with_listeners": lambda guard, llm: GuardedChatModel(llm, guard).with_listeners(
        on_end=lambda run: None
    ),
    "GuardedChatModel.with_alisteners": lambda guard, llm: GuardedChatModel(llm, guard).with_alisteners(
        on_end=_on_end_async
    ),
    "GuardRunnable.with_config": lambda guard, llm: GuardRunnable(llm, guard).with_config(tags=["t"]),
    "GuardRunnable.with_types": lambda guard, llm: GuardRunnable(llm, guard).with_types(input_type=dict),
    "GuardRunnable.bind": lambda guard, llm: GuardRunnable(llm, guard).bind(stop=["\n\n\n"]),
    "GuardRunnable.with_listeners": lambda guard, llm: GuardRunnable(llm, guard).with_listeners(
        on_end=lambda run: None
    ),
    "bindings chained": lambda guard, llm: (
        GuardedChatModel(llm, guard)
        .with_config(run_name="m")
        .bind(stop=["\n\n\n"])
        .with_types(input_type=dict)
        .with_listeners(on_end=lambda run: None)
        .with_alisteners(on_end=_on_end_async)
        .with_config(tags=["t"])
    ),
    "bind_tools.with_config": lambda guard, llm: (
        GuardedChatModel(llm, guard).bind_tools([lookup]).with_config(run_name="m")
    ),
    "with_retry.with_config": lambda guard, llm: GuardedChatModel(llm, guard).with_retry().with_config(run_name="m"),
    "with_fallbacks.with_config": lambda guard, llm: (
        GuardedChatModel(llm, guard).with_fallbacks([GuardedChatModel(llm, guard)]).with_config(run_name="m")
    ),
}


@pytest.mark.parametrize("mode", sorted(CALLS))
@pytest.mark.parametrize("shape", sorted(BOUND))
def test_a_bound_guarded_model_runs_no_fallback_after_a_block(guard, shape, mode):
    """The user's action: name the run (or bind a stop word, listeners...), then add a fallback model."""
    with scripted_openai(Reply.words(UNSAFE_CLAUSE)) as url, scripted_openai(Reply.words(SAFE_ANSWER)) as backup_url:
        chain = PROMPT | BOUND[shape](guard, _llm(url)).with_fallbacks([_llm(backup_url)])
        with pytest.raises(GuardViolation):
            CALLS[mode](chain, ASK)
        assert (len(url.requests), len(backup_url.requests)) == (1, 0)


@pytest.mark.parametrize("shape", sorted(BOUND))
def test_a_bound_guarded_model_is_not_asked_again_after_a_block(guard, shape):
    with scripted_openai([Reply.words(UNSAFE_CLAUSE), Reply.words(SAFE_ANSWER)]) as url:
        chain = PROMPT | BOUND[shape](guard, _llm(url)).with_retry(wait_exponential_jitter=False)
        with pytest.raises(GuardViolation):
            chain.invoke(ASK)
        assert len(url.requests) == 1


@pytest.mark.parametrize("shape", sorted(BOUND))
def test_a_bound_guarded_model_still_answers_and_falls_back_on_a_provider_failure(guard, shape):
    """The binding still binds, and a provider's failure still goes to the (guarded) fallback."""
    with scripted_openai(Reply.words(SAFE_ANSWER)) as url:
        chain = PROMPT | BOUND[shape](guard, _llm(_down())).with_fallbacks([GuardedChatModel(_llm(url), guard)])
        assert chain.invoke(ASK).content == SAFE_ANSWER and len(url.requests) == 1


def test_bound_arguments_and_listeners_still_apply(guard):
    ended: list[str] = []
    with scripted_openai(Reply.words(SAFE_ANSWER)) as url:
        bound = (
            GuardedChatModel(_llm(url), guard)
            .bind(stop=["STOP"])
            .with_config(run_name="named")
            .with_listeners(on_end=lambda run: ended.append(run.name))
        )
        assert (PROMPT | bound.with_fallbacks([_llm(_down())])).invoke(ASK).content == SAFE_ANSWER
        assert url.requests[0].body["stop"] == ["STOP"] and ended == ["named"]


@pytest.mark.parametrize("mode", sorted(CALLS))
def test_a_bound_guard_runnable_hands_its_arguments_to_the_model(guard, mode):
    """``GuardRunnable(model, guard).bind(stop=...)`` raised `TypeError` on every call, safe ones too, and
    ``with_fallbacks`` answered that error with the unguarded fallback."""
    with scripted_openai(Reply.words(SAFE_ANSWER)) as url, scripted_openai(Reply.words(SAFE_ANSWER)) as backup_url:
        bound = GuardRunnable(_llm(url), guard).bind(stop=["STOP"]).with_fallbacks([_llm(backup_url)])
        CALLS[mode](PROMPT | bound, ASK)
        assert (len(url.requests), len(backup_url.requests)) == (1, 0)
        assert url.requests[0].body["stop"] == ["STOP"]


def test_async_listeners_still_apply(guard):
    ended: list[str] = []

    async def on_end(run: Any) -> None:
        ended.append(run.name)

    with scripted_openai(Reply.words(SAFE_ANSWER)) as url:
        bound = GuardRunnable(_llm(url), guard).with_alisteners(on_end=on_end).with_fallbacks([_llm(_down())])
        assert asyncio.run(bound.ainvoke("What is the capital of France?")).content == SAFE_ANSWER
        assert ended == ["GuardRunnable"]


# -- F10: every error of the guard's stops the fallbacks ----------------------------------------------------------
@pytest.fixture
def small_guard() -> Iterator[Guard]:
    """The operator's limit: at most 8 checks a call (the default is 4,096; a client sent 4,117 turns)."""
    g = Guard.from_pretrained("demo", max_checks=8)
    yield g
    g.close()


def _long_history() -> list[Any]:
    history: list[Any] = []
    for i in range(12):
        history += [HumanMessage(f"Is {i} odd?"), AIMessage("Yes." if i % 2 else "No.")]
    return [*history, HumanMessage(UNSAFE_PROMPT)]


GUARDED: dict[str, Callable[[Any, Any], Any]] = {
    "GuardedChatModel": lambda guard, llm: GuardedChatModel(llm, guard),
    "GuardRunnable": lambda guard, llm: GuardRunnable(llm, guard),
    "GuardedChatModel.with_config": lambda guard, llm: GuardedChatModel(llm, guard).with_config(run_name="m"),
}


@pytest.mark.parametrize("mode", sorted(CALLS))
@pytest.mark.parametrize("shape", sorted(GUARDED))
def test_an_input_too_large_to_judge_reaches_no_fallback(small_guard, shape, mode):
    """The user's action: a fallback model for a provider outage; a client sends more turns than the guard judges."""
    with scripted_openai(Reply.words(UNSAFE_CLAUSE)) as url, scripted_openai(Reply.words(UNSAFE_CLAUSE)) as backup_url:
        chain = GUARDED[shape](small_guard, _llm(url)).with_fallbacks([_llm(backup_url)])
        with pytest.raises(InputTooLarge):
            CALLS[mode](chain, _long_history())
        assert (len(url.requests), len(backup_url.requests)) == (0, 0)


class _Attempts(BaseCallbackHandler):
    """Counts the runs that failed inside another (the attempts of a retry; not the retry's own run)."""

    def __init__(self) -> None:
        self.failed = 0

    def on_chain_error(self, error: BaseException, *, parent_run_id: Any = None, **kwargs: Any) -> None:
        self.failed += parent_run_id is not None

    def on_llm_error(self, error: BaseException, *, parent_run_id: Any = None, **kwargs: Any) -> None:
        self.failed += parent_run_id is not None


@pytest.mark.parametrize("shape", sorted(GUARDED))
def test_an_input_too_large_to_judge_is_not_retried(small_guard, shape):
    """``retry_if_exception_type=(ValueError,)`` (an ``InputTooLarge`` is one): the guard is not asked again."""
    attempts = _Attempts()
    with scripted_openai(Reply.words(SAFE_ANSWER)) as url:
        chain = GUARDED[shape](small_guard, _llm(url)).with_retry(
            retry_if_exception_type=(ValueError,), wait_exponential_jitter=False
        )
        with pytest.raises(InputTooLarge):
            chain.invoke(_long_history(), config={"callbacks": [attempts]})
        assert attempts.failed == 1 and len(url.requests) == 0


def test_a_guard_that_could_not_answer_is_still_retried(guard):
    """`GuardUnavailable` / `GuardTimeout`: the guard may answer next time, and that answer is judged."""
    attempts: list[int] = []

    def flaky(value: Any) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise GuardTimeout("the guard did not answer in time")
        return SAFE_ANSWER

    chain = (
        GuardRunnable(RunnableLambda(flaky), guard).with_config(run_name="m").with_retry(wait_exponential_jitter=False)
    )
    assert chain.invoke("What is the capital of France?") == SAFE_ANSWER and len(attempts) == 2


@pytest.mark.parametrize(
    "error",
    [
        InputTooLarge("too many checks"),
        VerdictParseError("not a verdict", raw="?"),
        MissingDependency("no transformers"),
        StreamClosed("fed after finish"),
        QwenGuardError("any other"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_retryable_does_not_retry_the_guards_stops(error):
    assert not retryable(error)


def test_retryable_retries_a_guard_that_could_not_answer_and_a_provider_failure():
    assert retryable(GuardUnavailable("down")) and retryable(GuardTimeout("slow")) and retryable(ConnectionError())
    assert not retryable(KeyboardInterrupt())


def test_a_guarded_structured_output_runs_no_fallback_after_a_block(guard):
    """The structured output of a guarded model is a chain whose ``with_fallbacks`` was LangChain's: after the guard
    blocked the answer, a structured fallback model (unguarded) answered the request."""
    with scripted_openai(Reply.words(UNSAFE_CLAUSE)) as url, scripted_openai(Reply.words('{"a": 1}')) as backup_url:
        guarded = GuardedChatModel(_llm(url), guard).with_structured_output(None, method="json_mode")
        chain = PROMPT | guarded.with_fallbacks([_llm(backup_url).with_structured_output(None, method="json_mode")])
        with pytest.raises(GuardViolation):
            chain.invoke(ASK)
        assert (len(url.requests), len(backup_url.requests)) == (1, 0)
