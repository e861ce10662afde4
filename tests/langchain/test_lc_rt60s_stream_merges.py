"""rt60e F2, F3: a stream's pieces of a block read whole are joined exactly as LangChain adds them up.

F2: `StreamReading` joined a piece to the earlier item with the same ``index`` alone, but ``merge_lists`` keeps a
piece with another ``id`` apart: ``{"index": 0, "id": "a", "Mix "}``, ``{"index": 0, "id": "b", "zzz"}``, then the
rest at index 0 was read ``"Mix zzzammonium ..."``, while the sum holds ``"Mix ammonium ..."`` in item ``a``, and the
clause reached the consumer on every stream path. Likewise an ``index`` of ``True`` (LangChain adds it up), the items
of a first list that share an index (LangChain copies that list as it is), and a text block followed by a piece of
another kind at its index. F3: a piece that repeated its string's last one, another string between, was left out
(meant for a label every piece repeats), but LangChain adds it up: ``"x ammonium mi"`` twice is ``"mix ammonium"``.
The stream models and the paths are rt60c's (test_lc_rt60c_streamed_blocks.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from functools import reduce
from typing import Any

import pytest
from faults import ScriptedBackend
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from lc_fakes import UNSAFE_CLAUSE
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.langchain import GuardCallbackHandler, GuardedChatModel
from qwenguard.integrations.langchain._messages import answer_text
from qwenguard.integrations.langchain._stream_reading import StreamReading
from test_lc_rt60c_streamed_blocks import HELD, StreamingModel, _drain, _judge, _shown, _words


@pytest.fixture
def judge() -> Iterator[Guard]:
    guard = Guard(ScriptedBackend(_judge), Policy(timeout_s=None))  # rt60c's: flags "mix ammonium"
    yield guard
    guard.close()


class Scripted(StreamingModel):
    """Streams the chunks ``script()`` makes, each reported to its run manager as a provider class does."""

    script: Any = None

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        for chunk in self.script():
            generation = ChatGenerationChunk(message=chunk.model_copy(update={"id": "a1"}))
            if run_manager is not None:
                run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation


def _thought(word: str, **keys: Any) -> AIMessageChunk:
    return AIMessageChunk(content=[{"type": "thought_part", "thought": word, **keys}])


def _other_id() -> list[AIMessageChunk]:
    """F2's stream: the clause in item ``a`` at index 0, a piece with id ``b`` at index 0 after its first word."""
    words = _words(UNSAFE_CLAUSE)
    out = [_thought(words[0], index=0, id="a"), _thought("zzz", index=0, id="b")]
    return [*out, *(_thought(w, index=0) for w in words[1:]), _answer()]


def _other_id_kwargs() -> list[AIMessageChunk]:
    """The same in a list inside ``additional_kwargs`` (OpenRouter's ``reasoning_details``, as a class keeps them)."""

    def item(word: str, **keys: Any) -> AIMessageChunk:
        details = [{"type": "reasoning.text", "text": word, **keys}]
        return AIMessageChunk(content="", additional_kwargs={"reasoning_details": details})

    words = _words(UNSAFE_CLAUSE)
    out = [item(words[0], index=0, id="a"), item("zzz", index=0, id="b")]
    return [*out, *(item(w, index=0) for w in words[1:]), _answer()]


def _bool_index() -> list[AIMessageChunk]:
    """``index=True``: a bool is an int, and LangChain adds the pieces up."""
    return [*(_thought(w, index=True) for w in _words(UNSAFE_CLAUSE)), _answer()]


def _first_list() -> list[AIMessageChunk]:
    """The first chunk's list holds two items at index 0: LangChain keeps them apart and adds the rest to the first."""
    words = _words(UNSAFE_CLAUSE)
    first = AIMessageChunk(
        content=[
            {"type": "thought_part", "thought": words[0], "index": 0},
            {"type": "thought_part", "thought": "zzz", "index": 0},
        ]
    )
    return [first, *(_thought(w, index=0) for w in words[1:]), _answer()]


def _text_then_other_kind() -> list[AIMessageChunk]:
    """A text block, then pieces of another kind at its index: the sum is the text block, the clause in its text."""
    words = _words(UNSAFE_CLAUSE)
    first = AIMessageChunk(content=[{"type": "text", "text": words[0], "index": 0}])
    return [first, *(AIMessageChunk(content=[{"type": "thought_part", "text": w, "index": 0}]) for w in words[1:])]


def _repeated_piece() -> list[AIMessageChunk]:
    """F3's stream: the clause under ``thought`` by turns with a changing ``note``; its piece "x ammonium mi" twice."""
    pieces = [("Note: ", "n1"), ("x ammonium mi", "n2"), ("x ammonium mi", "n3"), ("x nitrate.", "n4")]
    return [*(_thought(t, note=n, index=0) for t, n in pieces), _answer()]


def _answer() -> AIMessageChunk:
    return AIMessageChunk(content=[{"type": "text", "text": "Paris.", "index": 7}])


STREAMS = {
    "same index, another id": _other_id,
    "same index, another id, additional_kwargs": _other_id_kwargs,
    "index True": _bool_index,
    "first list, one index twice": _first_list,
    "repeated piece": _repeated_piece,
}
HELD_ONLY = {"text block, then another kind": _text_then_other_kind}  # the held paths judge its sum (interleaved)


def _bad(text: str) -> bool:
    return "mix ammonium" in text.lower()


@pytest.mark.parametrize("stream", [*STREAMS, *HELD_ONLY])
def test_the_same_answer_not_streamed_is_blocked(judge, stream):
    with pytest.raises(GuardViolation):
        GuardedChatModel(Scripted(messages=iter([]), script={**STREAMS, **HELD_ONLY}[stream]), judge).invoke("Q?")


@pytest.mark.parametrize("stream", [*STREAMS, *HELD_ONLY])
@pytest.mark.parametrize("path", ["guard_output", "GuardedChatModel"])
def test_a_held_stream_lets_none_of_the_clause_out(judge, path, stream):
    model = Scripted(messages=iter([]), script={**STREAMS, **HELD_ONLY}[stream])
    items, stopped = _drain(HELD[path](model, judge))
    assert stopped
    assert not _bad(_shown(items))


@pytest.mark.parametrize("stream", STREAMS)
def test_the_callback_handler_stops_the_stream_within_the_clause(judge, stream):
    handler = GuardCallbackHandler(judge)
    model = Scripted(messages=iter([]), script=STREAMS[stream])
    items, stopped = _drain(model.stream("Q?", config={"callbacks": [handler]}))
    assert stopped
    assert UNSAFE_CLAUSE not in _shown(items)  # stopped within the clause, as for a text stream
    assert "Paris" not in _shown(items)


@pytest.mark.parametrize("stream", STREAMS)
def test_a_held_stream_lets_none_of_the_clause_out_async(judge, stream):
    async def main() -> tuple[list[Any], bool]:
        items: list[Any] = []
        try:
            async for chunk in GuardedChatModel(Scripted(messages=iter([]), script=STREAMS[stream]), judge).astream(
                "Q?"
            ):
                items.append(chunk)
        except GuardViolation:
            return items, True
        return items, False

    items, stopped = asyncio.run(main())
    assert stopped and not _bad(_shown(items))


@pytest.mark.parametrize("stream", STREAMS)
def test_the_streamed_reading_holds_what_the_sum_holds(stream):
    chunks = STREAMS[stream]()
    reading = StreamReading()
    streamed = "".join(answer_text(chunk, reading) for chunk in chunks)
    assert _bad(answer_text(reduce(lambda a, b: a + b, chunks)))
    assert _bad(streamed)
    assert "zzzammonium" not in streamed  # never joined to an item the sum keeps apart


def test_a_block_the_reading_cannot_follow_is_judged_as_its_sum():
    """A plain text block joined by pieces of a kind read whole: the reading says so (`interleaved`)."""
    reading = StreamReading()
    for chunk in _text_then_other_kind():
        answer_text(chunk, reading)
    assert reading.interleaved


def test_pieces_with_their_own_ids_stay_apart_and_streaming():
    """Two items at one index, each with its own id, by turns (as the sum keeps them): each read on, not joined."""
    words = _words("The user asks about France, and the answer is short.")
    reading = StreamReading()
    streamed = ""
    for word in words:
        for ident in ("a", "b"):
            streamed += answer_text(_thought(word, index=0, id=ident), reading)
    assert "The user asks about France" in streamed  # item a's words read together
    assert "TheThe" not in streamed and not reading.interleaved


def test_a_label_every_piece_repeats_is_read_as_added_up_without_breaking_the_text():
    """OpenRouter's ``format`` in every piece: LangChain adds it up, so the reading reads its copies joined once
    (a repeat is never left out unread), and the reasoning's text stays one string, not interleaved."""
    label = "anthropic-claude-v1"
    think = "The user asks about France. " * 3
    reading = StreamReading()
    streamed = ""
    for word in _words(think):
        item = {"type": "reasoning.text", "text": word, "format": label, "index": 0}
        streamed += answer_text(AIMessageChunk(content="", additional_kwargs={"reasoning_details": [item]}), reading)
    assert label * 3 in streamed  # the copies' words across each other, as the sum holds them
    assert think.strip() in streamed and not reading.interleaved


def test_reading_a_stream_of_pieces_with_ids_stays_linear():
    """Each piece costs the same however many came (ratio of two lengths, measured in one run)."""

    def cost(n: int) -> float:
        chunks = [_thought(f" w{i}", index=0, id="a") for i in range(n)]
        reading = StreamReading()
        start = time.perf_counter()
        for chunk in chunks:
            answer_text(chunk, reading)
        return time.perf_counter() - start

    cost(500)  # warm up
    small, large = min(cost(2000) for _ in range(3)), min(cost(8000) for _ in range(3))
    assert large / small < 8  # 4 times the pieces: about 4 times the work (a quadratic reading is 16)
