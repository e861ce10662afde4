"""rt66 G: a held stream let the first word of a reasoning clause out before its sentence was judged.

OpenRouter streams reasoning as ``additional_kwargs["reasoning_details"]`` pieces, each ``{"type": "reasoning.text",
"text": word, "format": "anthropic-claude-v1", "index": 0}``. The stream's reading (`StreamReading`) read the first
piece's ``format`` after its ``text``, and the second piece's ``format`` (LangChain adds it up: read ahead) after the
second word: ``"Mix\\nanthropic-claude-v1"``. A window took the line break for the end of "Mix", and with a judge slower
than the model, "Mix" reached the consumer of ``guard_output``, `GuardedChatModel` and `GuardMiddleware` before
"ammonium" was read. A chunk now goes out only once a window showed its words with the next words of their own string.
Judge: `CountingJudge` (flags "Mix ammonium"), 0.05 s a check, slower than the model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from functools import reduce
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from lc_fakes import UNSAFE_CLAUSE
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware, guard_output
from qwenguard.integrations.langchain._messages import StreamReading, answer_text
from stream_judges import CountingJudge
from test_lc_rt60c_streamed_blocks import ANSWER, HELD, SHAPES, StreamingModel, _blocked, _drain, _words

SAFE = "The user asks about France. "
#: The reasoning opens with the clause: nothing of it may go out.
CLAUSE_FIRST = UNSAFE_CLAUSE + " That is unrelated, so answer briefly."
#: The safe sentence, then the clause: the sentence goes out whole or not at all, nothing of the clause.
THINK = SAFE + UNSAFE_CLAUSE + " That is unrelated, so answer briefly."


class Reasoning(StreamingModel):
    """Streams ``think`` word by word in ``shape``'s chunks, then the answer."""

    think: str = THINK

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        for chunk in self._chunks():
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation

    async def _astream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        for chunk in self._chunks():
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                await run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation

    def _chunks(self) -> Iterator[AIMessageChunk]:
        for word in _words(self.think):
            yield self.shape(word).model_copy(update={"id": "a1"})
        for word in _words(ANSWER):
            yield AIMessageChunk(content=[{"type": "text", "text": word, "index": 1}], id="a1")
        yield AIMessageChunk(content="", id="a1", chunk_position="last")


@pytest.fixture
def slow_judge() -> Iterator[Guard]:
    guard = Guard(CountingJudge(delay_s=0.05), Policy(timeout_s=None))
    yield guard
    guard.close()


def _reasoning_words(value: Any) -> str:
    """The reasoning's words the consumer holds: every ``text`` string of the sum but the answer's text blocks."""
    if isinstance(value, Mapping):
        if value.get("type") == "text":
            return ""
        return "".join(v if k == "text" and isinstance(v, str) else _reasoning_words(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "".join(map(_reasoning_words, value))
    return ""


def _held_words(items: list[Any]) -> str:
    chunks = [i for i in items if isinstance(i, AIMessageChunk)]
    if not chunks:
        return ""
    whole = reduce(lambda a, b: a + b, chunks)
    return _reasoning_words([whole.content, whole.additional_kwargs])


def _assert_nothing_of_the_clause(think: str, items: list[Any], stopped: bool) -> None:
    assert stopped
    before = think[: think.index(UNSAFE_CLAUSE)]
    words = _held_words(items)
    assert before.startswith(words), words  # in characters: no character of the clause went out
    if items:
        assert "Mix" not in answer_text(reduce(lambda a, b: a + b, items))
    if think is THINK:
        assert words in ("", SAFE.rstrip(), SAFE)  # the safe sentence whole or nothing


def _model(shape: Callable[[str], AIMessageChunk], think: str) -> Reasoning:
    return Reasoning(messages=iter([]), shape=shape, think=think)


@pytest.mark.parametrize("think", [CLAUSE_FIRST, THINK], ids=["clause first", "sentence then clause"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("path", HELD)
def test_a_slow_judge_lets_no_word_of_a_reasoning_clause_out(slow_judge, path, shape, think):
    items, stopped = _drain(HELD[path](_model(SHAPES[shape], think), slow_judge))
    _assert_nothing_of_the_clause(think, [i for i in items if isinstance(i, AIMessageChunk)], stopped)


async def _adrain(stream: Any) -> tuple[list[Any], bool]:
    items: list[Any] = []
    try:
        async for item in stream:
            item = item[0] if isinstance(item, tuple) else item
            if _blocked(item):
                return items, True
            items.append(item)
    except GuardViolation:
        return items, True
    return items, False


def _aagent(model: Any, guard: Guard) -> Any:
    from langchain.agents import create_agent

    agent = create_agent(model, [], middleware=[GuardMiddleware(guard)])
    return agent.astream({"messages": [HumanMessage("Q?")]}, stream_mode="messages")


AHELD = {
    "guard_output": lambda model, guard: (model | guard_output(guard)).astream("Q?"),
    "GuardedChatModel": lambda model, guard: GuardedChatModel(model, guard).astream("Q?"),
    "GuardMiddleware": _aagent,
}


@pytest.mark.parametrize("think", [CLAUSE_FIRST, THINK], ids=["clause first", "sentence then clause"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("path", AHELD)
def test_a_slow_judge_lets_no_word_of_a_reasoning_clause_out_async(slow_judge, path, shape, think):
    items, stopped = asyncio.run(_adrain(AHELD[path](_model(SHAPES[shape], think), slow_judge)))
    _assert_nothing_of_the_clause(think, [i for i in items if isinstance(i, AIMessageChunk)], stopped)


@pytest.mark.parametrize("shape", SHAPES)
def test_an_honest_reasoning_stream_still_goes_out_whole(slow_judge, shape):
    """Safe reasoning and answer: every chunk goes out, the words as they streamed (the gate opens)."""
    safe = "The user asks about France. That is simple, so answer briefly."
    items, stopped = _drain(GuardedChatModel(_model(SHAPES[shape], safe), slow_judge).stream("Q?"))
    assert not stopped
    assert _held_words(items) == safe
    assert ANSWER in answer_text(reduce(lambda a, b: a + b, items))


def test_a_label_read_after_a_word_breaks_it_off_until_the_string_goes_on():
    """The reading tells which string's last word was read before a line of other text (`StreamReading.runs`)."""
    reading = StreamReading()
    details = SHAPES["reasoning_details kwarg"]
    first = (answer_text(details("Mix"), reading), reading.runs())
    assert first[0].endswith("Mix\nanthropic-claude-v1") and first[1].broken
    (words,) = first[1].broken
    second = (answer_text(details(" "), reading), reading.runs())
    assert words not in second[1].continued  # a space is no word yet
    third = (answer_text(details("ammonium"), reading), reading.runs())
    assert third[0].endswith("Mix ammonium") and words in third[1].continued
