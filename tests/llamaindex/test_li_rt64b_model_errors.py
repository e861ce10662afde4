"""A wrapped LLM's error that quotes the answer it was producing is judged before it reaches the app (rt64b F1).

Some providers fail mid-stream with an error that quotes the model's own output (Ollama's ``ResponseError: error
parsing tool call: raw='...'``). The text `GuardedLLM`'s monitor still held (neither judged nor released) reached the
app in the exception. What the error carries is judged as the answer now: blocked, the guard's stop takes its place
with nothing of the error chained to it; an error that carries only safe text is raised unchanged. A call that is not
streamed is judged the same way: its error can quote its answer too.

A real LlamaIndex LLM (`li_scripted.ReasoningLLM`) that streams a safe opening and the clause's start, then raises;
a judge that flags "mix ammonium" (`faults.phrase_verdict`). Counted: characters of the clause in every chunk the
consumer gets and in the exception the app receives.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faults import PoisonedJudge, ScriptedBackend, phrase_verdict
from li_scripted import ReasoningLLM
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import PrivateAttr
from quoting_errors import CLAUSE, SAFE, clause_chars, error_chars, guard
from qwenguard.core import Guard, GuardUnavailable, GuardViolation
from qwenguard.integrations.llamaindex import GuardedLLM

#: As Ollama's "error parsing tool call: raw='...'" quotes the model's own output.
QUOTING = "error parsing tool call: raw='" + SAFE + CLAUSE + " with fuel oil'"
SAFE_ERROR = "connection reset by peer while reading the stream"
#: The same, where the judge crashes on the error (`faults.PoisonedJudge`: "Zanzibar").
POISONED = "error parsing tool call near Zanzibar: raw='" + SAFE + CLAUSE + " with fuel oil'"
#: The same, longer than the guard's max_chars (`UNJUDGED_LIMIT`) with what it carries.
TOO_LONG = QUOTING + " " + "and so on " * 300
UNJUDGED_LIMIT = 2_000
QUESTION = [ChatMessage(role="user", content="What is the capital of France?")]


class Raising(ReasoningLLM):
    """Streams the safe opening and the clause's first words, then fails with ``error`` (each raised one recorded);
    ``chat`` fails the same way without streaming."""

    error: str = QUOTING
    _raised: list[Exception] = PrivateAttr(default_factory=list)

    def _fail(self) -> RuntimeError:
        error = RuntimeError(self.error)
        self._raised.append(error)
        return error

    def chat(self, messages: Any, **kwargs: Any) -> Any:
        raise self._fail()

    async def achat(self, messages: Any, **kwargs: Any) -> Any:
        raise self._fail()

    def stream_chat(self, messages: Any, **kwargs: Any) -> Any:
        def gen() -> Any:
            yield from self._chunks()
            raise self._fail()

        return gen()

    async def astream_chat(self, messages: Any, **kwargs: Any) -> Any:
        async def gen() -> Any:
            for chunk in self._chunks():
                await asyncio.sleep(0)
                yield chunk
            raise self._fail()

        return gen()


def llm(error: str = QUOTING) -> Raising:
    return Raising(reasoning=[], answer=[SAFE, "Mix ", "ammonium ", "nitrate "], error=error)


def run(guarded: GuardedLLM, call: str) -> tuple[list[Any], BaseException | None]:
    """What ``call`` on ``guarded`` handed the consumer (every chunk), and what it raised."""
    seen: list[Any] = []

    async def arun() -> None:
        if call == "astream_chat":
            async for chunk in await guarded.astream_chat(QUESTION):
                seen.append(chunk)
        else:
            seen.append(await guarded.achat(QUESTION))

    try:
        if call == "stream_chat":
            seen.extend(guarded.stream_chat(QUESTION))
        elif call == "chat":
            seen.append(guarded.chat(QUESTION))
        else:
            asyncio.run(arun())
    except Exception as error:  # noqa: BLE001 - what the app receives is counted
        return seen, error
    return seen, None


CALLS = ["stream_chat", "astream_chat", "chat", "achat"]


@pytest.mark.parametrize("call", CALLS)
def test_an_error_quoting_the_answer_is_judged(call: str) -> None:
    seen, error = run(GuardedLLM(llm(), guard()), call)
    assert sum(clause_chars(repr(chunk)) for chunk in seen) == 0
    assert isinstance(error, GuardViolation), repr(error)
    assert error.__cause__ is None and error.__suppress_context__
    assert error_chars(error) == 0
    assert SAFE.startswith("".join(chunk.delta or "" for chunk in seen))  # the judged opening, at most


@pytest.mark.parametrize("call", CALLS)
def test_a_safe_error_is_raised_unchanged(call: str) -> None:
    raising = llm(SAFE_ERROR)
    _, error = run(GuardedLLM(raising, guard()), call)
    assert raising._raised and error is raising._raised[-1]
    assert type(error) is RuntimeError and str(error) == SAFE_ERROR


# -- an error the guard cannot judge: the policy's on_error (fail closed by default) -----------------------
UNJUDGED = {
    "guard_error": lambda: (Guard(PoisonedJudge("raise"), cache_size=0), POISONED),
    "too_long": lambda: (Guard(ScriptedBackend(phrase_verdict), cache_size=0, max_chars=UNJUDGED_LIMIT), TOO_LONG),
}


@pytest.mark.parametrize("why", list(UNJUDGED))
@pytest.mark.parametrize("call", ["stream_chat", "astream_chat"])
def test_an_error_the_guard_cannot_judge_fails_closed(call: str, why: str) -> None:
    judge, text = UNJUDGED[why]()
    seen, error = run(GuardedLLM(llm(text), judge), call)
    assert sum(clause_chars(repr(chunk)) for chunk in seen) == 0
    assert isinstance(error, GuardUnavailable), repr(error)
    assert error.__cause__ is None and error_chars(error) == 0
