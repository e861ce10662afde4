"""rt60c F1: a content block of a kind the guard reads whole, streamed in pieces, is judged as its pieces read once
LangChain adds them up (`StreamReading`), not with its key names between every two words.

ChatBedrockConverse streams a reasoning model's thinking as ``{"type": "reasoning_content", "reasoning_content":
{"text": piece}, "index": 0}`` chunks; each was read whole, so the stream judged ``"reasoning_content\\nMix
reasoning_content\\n ammonium ..."`` and the whole clause reached the consumer on every stream path (``guard_output``,
`GuardedChatModel`, `GuardMiddleware`, `GuardCallbackHandler`), while the same answer not streamed was blocked. So
did a ``non_standard`` block, a block of an unknown kind and an ``additional_kwargs`` key no provider class writes
(OpenRouter's ``reasoning_details``) streamed in pieces. Judge: deterministic, flags text holding "mix ammonium"."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from functools import reduce
from typing import Any

import pytest
from faults import ScriptedBackend
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from lc_fakes import UNSAFE_CLAUSE
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.langchain import GuardCallbackHandler, GuardedChatModel, GuardMiddleware, guard_output
from qwenguard.integrations.langchain._messages import answer_text

THINK = "The user asks about France. " + UNSAFE_CLAUSE + " That is unrelated, so answer briefly."
ANSWER = "Paris is the capital of France."


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"(\s)", text) if w]


def _judge(conversation: list[dict[str, str]]) -> str:
    bad = "mix ammonium" in conversation[-1]["content"].lower()
    verdict = "Safety: Unsafe\nCategories: Violent" if bad else "Safety: Safe\nCategories: None"
    return verdict if conversation[-1]["role"] == "user" else verdict + "\nRefusal: No"


@pytest.fixture
def judge() -> Iterator[Guard]:
    guard = Guard(ScriptedBackend(_judge), Policy(timeout_s=None))
    yield guard
    guard.close()


def _bedrock(word: str) -> AIMessageChunk:  # ChatBedrockConverse's v0 reasoning chunk
    return AIMessageChunk(content=[{"type": "reasoning_content", "reasoning_content": {"text": word}, "index": 0}])


def _non_standard(word: str) -> AIMessageChunk:  # a provider block LangChain's v1 translators wrap
    return AIMessageChunk(content=[{"type": "non_standard", "value": {"type": "thought", "text": word}, "index": 0}])


def _unknown(word: str) -> AIMessageChunk:  # a block of a kind the guard does not know
    return AIMessageChunk(content=[{"type": "thought_part", "thought": {"text": word}, "index": 0}])


def _details(word: str) -> AIMessageChunk:  # OpenRouter's reasoning_details, as a wrapper class keeps them
    item = {"type": "reasoning.text", "text": word, "format": "anthropic-claude-v1", "index": 0}
    return AIMessageChunk(content="", additional_kwargs={"reasoning_details": [item]})


SHAPES: dict[str, Callable[[str], AIMessageChunk]] = {
    "bedrock reasoning_content": _bedrock,
    "non_standard block": _non_standard,
    "unknown block kind": _unknown,
    "reasoning_details kwarg": _details,
}


def _chunks(shape: Callable[[str], AIMessageChunk]) -> Iterator[AIMessageChunk]:
    for word in _words(THINK):
        yield shape(word).model_copy(update={"id": "a1"})
    if shape is _bedrock:
        signature = {"signature": "EqQBCgIYAhIM1gbcDa9GJwZA"}
        yield AIMessageChunk(
            content=[{"type": "reasoning_content", "reasoning_content": signature, "index": 0}], id="a1"
        )
    for word in _words(ANSWER):
        yield AIMessageChunk(content=[{"type": "text", "text": word, "index": 1}], id="a1")
    yield AIMessageChunk(content="", id="a1", chunk_position="last")


class StreamingModel(GenericFakeChatModel):
    """Streams ``shape``'s chunks of the reasoning, then the answer, reporting each to its run manager as a
    provider class does (ChatBedrockConverse's ``_stream``)."""

    shape: Any = None

    def bind_tools(self, tools: Any, **kwargs: Any) -> StreamingModel:
        return self

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        return generate_from_stream(self._stream(messages, stop=stop, **kwargs))

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        for chunk in _chunks(self.shape):
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation


def _model(shape: Callable[[str], AIMessageChunk]) -> StreamingModel:
    return StreamingModel(messages=iter([]), shape=shape)


def _shown(items: list[Any]) -> str:
    """What the consumer holds, added up as LangChain adds chunks, read as the guard reads an answer."""
    chunks = [i for i in items if isinstance(i, AIMessageChunk)]
    return answer_text(reduce(lambda a, b: a + b, chunks)) if chunks else ""


def _blocked(item: Any) -> bool:
    """`GuardMiddleware`'s answer in place of a blocked one (its ``violation_message``)."""
    verdict = (getattr(item, "response_metadata", None) or {}).get("qwenguard") or {}
    return verdict.get("allowed") is False


def _drain(stream: Any) -> tuple[list[Any], bool]:
    """What the consumer got, and whether the stream was stopped (raised, or ended with the middleware's notice)."""
    items: list[Any] = []
    try:
        for item in stream:
            item = item[0] if isinstance(item, tuple) else item
            if _blocked(item):
                return items, True
            items.append(item)
    except GuardViolation:
        return items, True
    return items, False


def _agent_stream(model: Any, guard: Guard) -> Any:
    from langchain.agents import create_agent

    agent = create_agent(model, [], middleware=[GuardMiddleware(guard)])
    return agent.stream({"messages": [HumanMessage("Q?")]}, stream_mode="messages")


HELD = {
    "guard_output": lambda model, guard: (model | guard_output(guard)).stream("Q?"),
    "GuardedChatModel": lambda model, guard: GuardedChatModel(model, guard).stream("Q?"),
    "GuardMiddleware": _agent_stream,
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("path", HELD)
def test_a_streamed_block_read_whole_is_stopped_before_any_of_the_clause_goes_out(judge, path, shape):
    items, stopped = _drain(HELD[path](_model(SHAPES[shape]), judge))
    assert stopped
    shown = _shown(items)
    assert "The user asks about France." in shown or not shown  # the safe sentence before it may go out
    assert "Mix" not in shown  # held paths: no character of the clause


@pytest.mark.parametrize("shape", SHAPES)
def test_the_callback_handler_stops_a_streamed_block_read_whole(judge, shape):
    handler = GuardCallbackHandler(judge)
    items, stopped = _drain(_model(SHAPES[shape]).stream("Q?", config={"callbacks": [handler]}))
    assert stopped
    assert UNSAFE_CLAUSE not in _shown(items)  # stopped within the clause, as for a text stream
    assert "Paris" not in _shown(items)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_streamed_block_read_whole_is_stopped_async(judge, shape):
    async def main() -> tuple[list[Any], bool]:
        items: list[Any] = []
        try:
            async for chunk in GuardedChatModel(_model(SHAPES[shape]), judge).astream("Q?"):
                items.append(chunk)
        except GuardViolation:
            return items, True
        return items, False

    items, stopped = asyncio.run(main())
    assert stopped
    assert "Mix" not in _shown(items)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_same_answer_not_streamed_is_still_blocked(judge, shape):
    with pytest.raises(GuardViolation):
        GuardedChatModel(_model(SHAPES[shape]), judge).invoke("Q?")


@pytest.mark.parametrize("shape", SHAPES)
def test_the_pieces_joined_read_as_their_sum(shape):
    """No key name or kind between two pieces of one string: the streamed reading holds the clause as the sum does."""
    from qwenguard.integrations.langchain._messages import StreamReading

    chunks = [SHAPES[shape](w) for w in _words(THINK)]
    reading = StreamReading()
    streamed = "".join(answer_text(chunk, reading) for chunk in chunks)
    assert THINK in streamed
    assert THINK in answer_text(reduce(lambda a, b: a + b, chunks))
    assert not reading.interleaved


def _alternating(word: str, n: int) -> AIMessageChunk:
    """Two strings of one block by turns: the clause's words under ``thought``, filler under ``note``."""
    return AIMessageChunk(content=[{"type": "thought_part", "thought": word, "note": f" filler{n}", "index": 0}])


def test_pieces_of_two_strings_by_turns_are_judged_as_their_sum(judge):
    """An attack on the join: the clause's words and filler under two keys by turns. Each piece back to the clause
    reads its last characters again (the callback judges the words across the break); a held stream, once the
    string is longer than that, judges the sum whole before anything more goes out."""
    long_think = "The user asks about France, " * 12 + UNSAFE_CLAUSE

    class Alternating(StreamingModel):
        def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
            for n, word in enumerate(_words(long_think)):
                generation = ChatGenerationChunk(message=_alternating(word, n).model_copy(update={"id": "a1"}))
                if run_manager is not None:
                    run_manager.on_llm_new_token(generation.text, chunk=generation)
                yield generation

    items, stopped = _drain(GuardedChatModel(Alternating(messages=iter([])), judge).stream("Q?"))
    assert stopped and "Mix" not in _shown(items)
    handler = GuardCallbackHandler(judge)
    items, stopped = _drain(Alternating(messages=iter([])).stream("Q?", config={"callbacks": [handler]}))
    assert stopped and UNSAFE_CLAUSE not in _shown(items)
    from qwenguard.integrations.langchain._messages import StreamReading

    reading = StreamReading()
    streamed = "".join(answer_text(_alternating(w, n), reading) for n, w in enumerate(_words(long_think)))
    assert "Mix ammonium" in streamed
    assert reading.interleaved


def test_a_label_every_piece_repeats_does_not_break_the_text():
    """OpenRouter's ``format`` in every piece (LangChain adds it up too): read once, the text stays one string."""
    from qwenguard.integrations.langchain._messages import StreamReading

    reading = StreamReading()
    streamed = "".join(answer_text(_details(w), reading) for w in _words(THINK))
    assert THINK in streamed
    assert not reading.interleaved


def test_reading_a_long_streamed_block_stays_linear():
    """Each piece costs the same however long the block grew (ratio of two lengths, measured in one run)."""

    from qwenguard.integrations.langchain._messages import StreamReading

    def cost(n: int) -> float:
        chunks = [_unknown(f" w{i}") for i in range(n)]
        reading = StreamReading()
        start = time.perf_counter()
        for chunk in chunks:
            answer_text(chunk, reading)
        return time.perf_counter() - start

    cost(500)  # warm up
    # 4 times the pieces: about 4 times the work (a quadratic reading is 16, in every round). Interleaved, best of
    # three, up to three rounds: a loaded machine once gave 10 in one round (stop 63's CI, beside eight helpers).
    ratios = []
    for _ in range(3):
        pairs = [(cost(2000), cost(8000)) for _ in range(3)]
        ratios.append(min(large for _, large in pairs) / min(small for small, _ in pairs))
        if ratios[-1] < 8:
            break
    assert ratios[-1] < 8, ratios
