"""A model's error that quotes the answer it was producing is judged before it reaches the app (rt64b F1).

Some providers fail mid-stream with an error that quotes the model's own output (Ollama's ``ResponseError: error
parsing tool call: raw='...'`` through ChatOllama). The text the guard still held (neither judged nor released) reached
the app in the exception on every held path: `GuardMiddleware` (``stream_mode="messages"``), `GuardedChatModel`,
``model | guard_output``; and with LangChain's `ModelRetryMiddleware` listed before the guard, its
``on_failure="continue"`` wrote the error's text into an AIMessage that streamed out whole (repro r23). What the error
carries is judged as the answer now: blocked, the guard's stop takes its place with nothing of the error chained to
it; an error that carries only safe text is raised unchanged.

Real LangChain objects and middleware, a scripted chat model (`lc_fakes.ScriptedChatModel`) that streams a safe
opening, then the clause's start, then raises; a judge that flags "mix ammonium" (`faults.phrase_verdict`). Counted:
characters of the clause in every streamed message, the final state and the exception the app receives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from faults import PoisonedJudge, ScriptedBackend, phrase_verdict
from langchain.agents import create_agent
from langchain.agents.middleware import ModelRetryMiddleware
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from lc_fakes import SAFE_QUESTION, ScriptedChatModel
from quoting_errors import CLAUSE, SAFE, clause_chars, error_chars, guard
from qwenguard.core import Guard, GuardUnavailable, GuardViolation
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware, GuardRunnable, guard_output

#: As Ollama's "error parsing tool call: raw='...'" quotes the model's own output.
QUOTING = "error parsing tool call: raw='" + SAFE + CLAUSE + " with fuel oil'"
SAFE_ERROR = "connection reset by peer while reading the stream"
#: The same, where the judge crashes on the error (`faults.PoisonedJudge`: "Zanzibar").
POISONED = "error parsing tool call near Zanzibar: raw='" + SAFE + CLAUSE + " with fuel oil'"
#: The same, longer than the guard's max_chars (`UNJUDGED_LIMIT`) with what it carries.
TOO_LONG = QUOTING + " " + "and so on " * 300
UNJUDGED_LIMIT = 2_000


class Raising(ScriptedChatModel):
    """Streams the safe opening and the clause's first words, then fails with ``error`` (each raised one recorded)."""

    error: str = QUOTING
    raised: list[Exception] = []

    def _chunks(self, messages: Any) -> Iterator[Any]:
        self.seen.append(list(messages))
        for token in [SAFE, "Mix ", "ammonium ", "nitrate "]:
            yield ChatGenerationChunk(message=AIMessageChunk(content=token, id="a1"))
        error = RuntimeError(self.error)
        self.raised.append(error)
        raise error


def model(error: str = QUOTING) -> Raising:
    return Raising(messages=iter(["x"] * 5), error=error, raised=[])


def caught(run: Any) -> tuple[list[Any], BaseException | None]:
    """What ``run()`` (a sync iterable, or an async one's coroutine) streamed, and what it raised."""
    seen: list[Any] = []
    try:
        if asyncio.iscoroutinefunction(run):
            asyncio.run(run(seen))
        else:
            seen.extend(run())
    except Exception as error:  # noqa: BLE001 - what the app receives is counted
        return seen, error
    return seen, None


def stopped(error: BaseException | None) -> None:
    """The app got the guard's stop, with nothing of the model's error chained to it."""
    assert isinstance(error, GuardViolation), repr(error)
    assert error.__cause__ is None and error.__suppress_context__
    assert error_chars(error) == 0


# -- GuardMiddleware: stream_mode="messages" ----------------------------------------------------------
def _agent(middleware: list[Any], raising: Raising | None = None) -> Any:
    return create_agent(raising or model(), [], middleware=middleware)


def _streamed(agent: Any, mode: str) -> tuple[list[Any], BaseException | None]:
    """What an agent's ``stream_mode=["messages", "values"]`` run of a safe question gave (sync or async), and the
    exception it ended with."""
    inputs = {"messages": [HumanMessage(SAFE_QUESTION)]}

    async def astream(seen: list[Any]) -> None:
        async for item in agent.astream(inputs, stream_mode=["messages", "values"]):
            seen.append(item)

    return caught((lambda: agent.stream(inputs, stream_mode=["messages", "values"])) if mode == "sync" else astream)


@pytest.mark.parametrize("exit_behavior", ["end", "error"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_middleware_stream_judges_the_error(mode: str, exit_behavior: str) -> None:
    agent = _agent([GuardMiddleware(guard(), exit_behavior=exit_behavior)])
    streamed, error = _streamed(agent, mode)
    assert sum(clause_chars(repr(item)) for item in streamed) == 0
    if exit_behavior == "error":
        stopped(error)
    else:
        assert error is None
        final = [value for kind, value in streamed if kind == "values"][-1]
        assert "blocked by the safety guard" in str(final["messages"][-1].content)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_retry_listed_before_the_guard_gets_the_stop(mode: str) -> None:
    """r23: ModelRetryMiddleware (on_failure="continue") outside the guard wrote the error's text into an AIMessage
    that streamed to the consumer whole; now it gets the guard's refusal, and nothing to retry."""
    raising = model()
    retry = ModelRetryMiddleware(max_retries=1, initial_delay=0.0)
    agent = _agent([retry, GuardMiddleware(guard())], raising)
    streamed, error = _streamed(agent, mode)
    assert error is None
    assert sum(clause_chars(repr(item)) for item in streamed) == 0
    final = [value for kind, value in streamed if kind == "values"][-1]
    assert "blocked by the safety guard" in str(final["messages"][-1].content)
    assert len(raising.raised) == 1  # the guard's stop is not retried


# -- GuardedChatModel, GuardRunnable(runnable=model) ----------------------------------------------------
@pytest.mark.parametrize("wrap", [GuardedChatModel, GuardRunnable], ids=["GuardedChatModel", "GuardRunnable"])
@pytest.mark.parametrize("call", ["stream", "astream", "invoke", "ainvoke"])
def test_a_guarded_model_judges_the_error(call: str, wrap: Any) -> None:
    guarded = wrap(model(), guard())

    async def run(seen: list[Any]) -> None:
        if call == "astream":
            async for chunk in guarded.astream(SAFE_QUESTION):
                seen.append(chunk)
        else:
            seen.append(await guarded.ainvoke(SAFE_QUESTION))

    sync = {"stream": lambda: guarded.stream(SAFE_QUESTION), "invoke": lambda: [guarded.invoke(SAFE_QUESTION)]}
    streamed, error = caught(sync.get(call, run))
    assert sum(clause_chars(repr(chunk)) for chunk in streamed) == 0
    stopped(error)


# -- model | guard_output --------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["stream", "astream"])
def test_guard_output_judges_the_error(call: str) -> None:
    chain = model() | guard_output(guard())

    async def run(seen: list[Any]) -> None:
        async for chunk in chain.astream(SAFE_QUESTION):
            seen.append(chunk)

    streamed, error = caught((lambda: chain.stream(SAFE_QUESTION)) if call == "stream" else run)
    assert sum(clause_chars(repr(chunk)) for chunk in streamed) == 0
    stopped(error)


# -- an error that carries only safe text: raised unchanged -------------------------------------------------
SAFE_PATHS = {
    "GuardedChatModel.stream": lambda m: GuardedChatModel(m, guard()).stream(SAFE_QUESTION),
    "GuardedChatModel.astream": lambda m: GuardedChatModel(m, guard()).astream(SAFE_QUESTION),
    "GuardedChatModel.invoke": lambda m: (GuardedChatModel(m, guard()).invoke(SAFE_QUESTION) for _ in [0]),
    "guard_output.stream": lambda m: (m | guard_output(guard())).stream(SAFE_QUESTION),
    "guard_output.astream": lambda m: (m | guard_output(guard())).astream(SAFE_QUESTION),
    "middleware.stream": lambda m: _agent([GuardMiddleware(guard())], m).stream(
        {"messages": [HumanMessage(SAFE_QUESTION)]}, stream_mode="messages"
    ),
    "middleware.astream": lambda m: _agent([GuardMiddleware(guard())], m).astream(
        {"messages": [HumanMessage(SAFE_QUESTION)]}, stream_mode="messages"
    ),
}


@pytest.mark.parametrize("path", list(SAFE_PATHS))
def test_a_safe_error_is_raised_unchanged(path: str) -> None:
    raising = model(SAFE_ERROR)
    stream = SAFE_PATHS[path](raising)

    async def drain(seen: list[Any]) -> None:
        async for item in stream:
            seen.append(item)

    _, error = caught(drain if hasattr(stream, "__aiter__") else (lambda: stream))
    assert raising.raised and error is raising.raised[-1]
    assert type(error) is RuntimeError and str(error) == SAFE_ERROR


# -- an error the guard cannot judge: the policy's on_error (fail closed by default) -----------------------
UNJUDGED = {
    "guard_error": lambda: (Guard(PoisonedJudge("raise"), cache_size=0), POISONED),
    "too_long": lambda: (Guard(ScriptedBackend(phrase_verdict), cache_size=0, max_chars=UNJUDGED_LIMIT), TOO_LONG),
}


@pytest.mark.parametrize("why", list(UNJUDGED))
@pytest.mark.parametrize("call", ["stream", "astream"])
def test_an_error_the_guard_cannot_judge_fails_closed(call: str, why: str) -> None:
    judge, text = UNJUDGED[why]()
    guarded = GuardedChatModel(model(text), judge)

    async def run(seen: list[Any]) -> None:
        async for chunk in guarded.astream(SAFE_QUESTION):
            seen.append(chunk)

    streamed, error = caught((lambda: guarded.stream(SAFE_QUESTION)) if call == "stream" else run)
    assert sum(clause_chars(repr(chunk)) for chunk in streamed) == 0
    assert isinstance(error, GuardUnavailable), repr(error)
    assert error.__cause__ is None and error_chars(error) == 0


# -- GuardMiddleware(check_stream=False): the answer is not held, its error is judged all the same ---------
class FailsAfterOpening(Raising):
    """Streams the safe opening only, then fails with an error quoting the clause (judged by the callbacks as it
    streams: an error after the clause itself streamed would be stopped by them first)."""

    def _chunks(self, messages: Any) -> Iterator[Any]:
        self.seen.append(list(messages))
        yield ChatGenerationChunk(message=AIMessageChunk(content=SAFE, id="a1"))
        error = RuntimeError(self.error)
        self.raised.append(error)
        raise error


@pytest.mark.parametrize("outer_retry", [False, True])
@pytest.mark.parametrize("exit_behavior", ["end", "error"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_middleware_without_hold_back_judges_the_error(mode: str, exit_behavior: str, outer_retry: bool) -> None:
    raising = FailsAfterOpening(messages=iter(["x"] * 5), raised=[])
    retry = [ModelRetryMiddleware(max_retries=1, initial_delay=0.0)] if outer_retry else []
    agent = _agent([*retry, GuardMiddleware(guard(), check_stream=False, exit_behavior=exit_behavior)], raising)
    streamed, error = _streamed(agent, mode)
    assert sum(clause_chars(repr(item)) for item in streamed) == 0
    if exit_behavior == "error" and not outer_retry:
        stopped(error)
    else:
        assert error_chars(error) == 0
