"""``release_unit`` on every LangChain path that holds text (`guard_output`, `GuardRunnable`,
`GuardMiddleware`), and the async paths' wake-up: judged text goes out when its verdict is back.

The model is a streaming chat model that reports its chunks to its run manager like real ones
(lc_fakes.ScriptedChatModel) and produces its next piece only once the judge has answered every check
it was given (a slow model, without clocks). The judge flags the bench oracle's two words, "Mix
ammonium", and counts its calls (tests/stream_judges.py).
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessageChunk, HumanMessage
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, ScriptedChatModel
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.langchain import GuardMiddleware, GuardRunnable, guard_output
from stream_judges import CLAUSE, LONG, CountingJudge

MODES = ["sync", "async"]
PATHS = ["guard_output", "GuardRunnable", "GuardMiddleware"]
STALL_S = 3.0  # a stalled model's deadline: reached only when a wake-up is missing


class PacedModel(ScriptedChatModel):
    """Produces each piece once the judge is idle; ``stall_after`` stalls after that piece until ``resume``."""

    judge: Any = None
    produced: int = 0
    stall_after: str | None = None
    resume: Any = None
    stalled: bool = False

    def _chunks(self, messages: Any) -> Any:
        previous = ""
        for chunk in super()._chunks(messages):
            if self.stall_after is not None and previous == self.stall_after:
                self.stalled = not self.resume.wait(STALL_S)
            elif self.judge is not None:
                self.judge.wait_idle()
            self.produced += 1
            previous = chunk.text
            yield chunk


def pieces(text: str) -> int:
    return len([t for t in re.split(r"(\s)", text) if t]) + 1  # word and space pieces, and the last chunk


def build(path: str, guard: Guard, model: PacedModel, unit: str | None) -> tuple[Any, Any]:
    """(stream(), astream()) of the path, each yielding the consumer's text pieces."""
    if path == "GuardMiddleware":
        agent = create_agent(model, [], middleware=[GuardMiddleware(guard, exit_behavior="error", release_unit=unit)])
        inputs = {"messages": [HumanMessage(SAFE_QUESTION)]}

        def texts(message: Any) -> str:
            return message.text if isinstance(message, AIMessageChunk) else ""

        def stream() -> Any:
            return (texts(m) for m, _ in agent.stream(inputs, stream_mode="messages"))

        async def astream() -> Any:
            async for m, _ in agent.astream(inputs, stream_mode="messages"):
                yield texts(m)

        return stream, astream
    chain: Any
    if path == "guard_output":
        chain = model | guard_output(guard, release_unit=unit)
    else:
        chain = GuardRunnable(guard=guard, runnable=model, release_unit=unit)

    def stream() -> Any:
        return (c.text for c in chain.stream(SAFE_QUESTION))

    async def astream() -> Any:
        async for c in chain.astream(SAFE_QUESTION):
            yield c.text

    return stream, astream


def consume(mode: str, stream: Any, astream: Any, on_text: Any) -> GuardViolation | None:
    async def drain() -> None:
        async for text in astream():
            if text:
                on_text(text)

    try:
        if mode == "sync":
            for text in stream():
                if text:
                    on_text(text)
        else:
            asyncio.run(drain())
    except GuardViolation as exc:
        return exc
    return None


def first_release(path: str, mode: str, unit: str | None) -> tuple[int, int, str]:
    """(pieces produced when the consumer got its first text, answer checks, all text received)."""
    judge = CountingJudge()
    model = PacedModel(messages=iter([LONG]), seen=[], judge=judge)
    guard = Guard(judge, Policy.strict())
    stream, astream = build(path, guard, model, unit)
    firsts: list[int] = []
    received: list[str] = []

    def on_text(text: str) -> None:
        if not firsts:
            firsts.append(model.produced)
        received.append(text)

    assert consume(mode, stream, astream, on_text) is None
    return firsts[0], judge.answer_checks, "".join(received)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", PATHS)
def test_first_words_go_out_before_a_long_first_sentence_ends_with_the_opening_and_word_units(path, mode):
    last = pieces(LONG) - 1  # the piece that ends the sentence ("cafes.")
    sentence_at, sentence_checks, sentence_text = first_release(path, mode, None)
    opening_at, opening_checks, opening_text = first_release(path, mode, "opening")
    word_at, word_checks, word_text = first_release(path, mode, "word")
    assert sentence_text == opening_text == word_text == LONG
    assert sentence_at >= last  # the default judges whole sentences: nothing before the sentence ended
    assert opening_at < last - 2  # "opening": the first words went out while the sentence was streaming
    assert word_at < last - 2  # "word": judged words went out too
    assert sentence_checks < opening_checks < word_checks  # the opening costs one check; "word" one per pause


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("unit", [None, "opening", "word"])
def test_no_unit_lets_a_character_of_the_clause_out(path, mode, unit):
    judge = CountingJudge(quiet_s=0.02)  # the safe sentence judged alone even on a loaded machine
    reply = f"{SAFE_ANSWER} {CLAUSE} Then wait for the right moment."
    model = PacedModel(messages=iter([reply]), seen=[], judge=judge)
    stream, astream = build(path, Guard(judge, Policy.strict()), model, unit)
    received: list[str] = []
    error = consume(mode, stream, astream, received.append)
    assert isinstance(error, GuardViolation)
    text = "".join(received)
    assert reply.startswith(text) and len(text) <= reply.index(CLAUSE)  # 0 characters of the clause
    assert text.startswith(SAFE_ANSWER)  # the judged-safe sentence did go out


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", PATHS)
def test_paths_release_a_judged_sentence_while_the_model_is_still_producing(path, mode):
    """The model stalls after the first sentence until the consumer has it: the judged sentence must go
    out on its verdict, not on the model's next token (sync paths read the model on a thread of their own)."""
    judge = CountingJudge()
    resume = threading.Event()
    reply = f"{SAFE_ANSWER} It lies on the Seine."
    model = PacedModel(messages=iter([reply]), seen=[], judge=judge, stall_after=SAFE_ANSWER.split()[-1], resume=resume)
    stream, astream = build(path, Guard(judge, Policy.strict()), model, None)
    received: list[str] = []

    def on_text(text: str) -> None:
        received.append(text)
        if "".join(received).startswith(SAFE_ANSWER):
            resume.set()

    assert consume(mode, stream, astream, on_text) is None
    assert not model.stalled  # the sentence reached the consumer while the model was stalled
    assert "".join(received) == reply


def test_release_unit_is_checked_where_it_is_given():
    judge = CountingJudge()
    guard = Guard(judge, Policy.strict())
    with pytest.raises(ValueError, match="release_unit"):
        guard_output(guard, release_unit="token")
    with pytest.raises(ValueError, match="release_unit"):
        GuardMiddleware(guard, release_unit="token")
    assert GuardMiddleware(guard, release_unit="word").stream_options == {"release_unit": "word"}
