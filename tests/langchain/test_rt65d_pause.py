"""A judged sentence goes out when its verdict is back, not with the model's next chunk (rt65d F2).

The monitor holds a trailing whitespace back as the separator of the next text; a held stream passed a chunk on only
once all its text was released, so a chunk ``"France. "`` (or ``"France.\\n\\n"``) waited for the model's next chunk:
a model that paused after it (thinking, a slow provider) held the judged sentence as long. A chunk whose text is
released but for whitespace at its end now goes out, whole: the consumer's text is still the model's.

The model waits, after the sentence, until the consumer holds it, and records whether that came first. The chunk goes
out in two parts (the judged text, then its whitespace): they add up to the model's chunk, its usage counted once.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from lc_fakes import ScriptedChatModel, keyword_guard
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware, guard_output

#: How long the model waits for the consumer at most (on the code before the fix it never comes).
WAIT_S = 10
SENTENCE = "Paris is the capital of France."
#: The tokens the model reports, on the sentence's last chunk: counted once however that chunk goes out.
USAGE = {"input_tokens": 3, "output_tokens": 7, "total_tokens": 10}


class Pausing(ScriptedChatModel):
    """Streams `SENTENCE` word by word, its last chunk ending in ``after`` (a space, a blank line), then waits until the
    consumer holds the sentence before it produces its next chunk. ``in_order``: whether the consumer had it."""

    after: str = " "
    consumer_has_sentence: Any = None  # a threading.Event
    in_order: list[bool] = []

    def _chunks(self, messages: Any) -> Iterator[ChatGenerationChunk]:
        words = SENTENCE.split(" ")
        for word in words[:-1]:
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " ", id="answer"))
        last = AIMessageChunk(content=words[-1] + self.after, id="answer", usage_metadata=USAGE)
        yield ChatGenerationChunk(message=last)
        self.in_order.append(self.consumer_has_sentence.wait(WAIT_S))
        yield ChatGenerationChunk(message=AIMessageChunk(content="It is big.", id="answer"))

    @property
    def text(self) -> str:
        return SENTENCE + self.after + "It is big."


def _pausing(after: str) -> tuple[Pausing, threading.Event]:
    event = threading.Event()
    return Pausing(messages=iter([]), seen=[], after=after, consumer_has_sentence=event, in_order=[]), event


def _consumed(texts: Any, event: threading.Event, asynchronous: bool) -> str:
    """Read ``texts`` (an iterator, or an async one); tell ``event`` once the joined text holds the sentence."""
    shown: list[str] = []

    def heard(text: str) -> None:
        shown.append(text)
        if SENTENCE in "".join(shown):
            event.set()

    if asynchronous:

        async def run() -> None:
            async for text in texts:
                heard(text)

        asyncio.run(run())
    else:
        for text in texts:
            heard(text)
    return "".join(shown)


AFTERS = pytest.mark.parametrize("after", [" ", "\n\n"], ids=["space", "blank-line"])
MODES = pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])


async def _texts_of(chunks: Any) -> Any:
    async for chunk in chunks:
        yield chunk.text


@AFTERS
@MODES
def test_guard_middleware_passes_the_judged_sentence_on_before_the_next_chunk(after: str, asynchronous: bool) -> None:
    model, event = _pausing(after)
    guard, _ = keyword_guard()
    agent = create_agent(model, tools=[], middleware=[GuardMiddleware(guard)])
    state = {"messages": [{"role": "user", "content": "Tell me about Paris."}]}
    if asynchronous:

        async def texts() -> Any:
            async for message, _ in agent.astream(state, stream_mode="messages"):
                yield message.text

        shown = _consumed(texts(), event, asynchronous)
    else:
        shown = _consumed((m.text for m, _ in agent.stream(state, stream_mode="messages")), event, asynchronous)
    assert model.in_order == [True]
    assert shown == model.text  # whole chunks: the consumer's text is the model's


@AFTERS
@MODES
def test_guarded_chat_model_passes_the_judged_sentence_on_before_the_next_chunk(after: str, asynchronous: bool) -> None:
    model, event = _pausing(after)
    guard, _ = keyword_guard()
    guarded = GuardedChatModel(model, guard)
    if asynchronous:
        shown = _consumed(_texts_of(guarded.astream("Tell me about Paris.")), event, asynchronous)
    else:
        shown = _consumed((c.text for c in guarded.stream("Tell me about Paris.")), event, asynchronous)
    assert model.in_order == [True]
    assert shown == model.text


@AFTERS
@MODES
def test_guard_output_passes_the_judged_sentence_on_before_the_next_chunk(after: str, asynchronous: bool) -> None:
    model, event = _pausing(after)
    guard, _ = keyword_guard()
    chain = model | guard_output(guard)
    if asynchronous:
        shown = _consumed(_texts_of(chain.astream("Tell me about Paris.")), event, asynchronous)
    else:
        shown = _consumed((c.text for c in chain.stream("Tell me about Paris.")), event, asynchronous)
    assert model.in_order == [True]
    assert shown == model.text


@AFTERS
def test_the_parts_of_a_split_chunk_add_up_to_the_models_answer(after: str) -> None:
    model, event = _pausing(after)
    guard, _ = keyword_guard()
    chunks = []
    for chunk in GuardedChatModel(model, guard).stream("Tell me about Paris."):
        chunks.append(chunk)
        if SENTENCE in "".join(c.text for c in chunks):
            event.set()
    whole = functools.reduce(operator.add, chunks)
    assert model.in_order == [True]
    assert whole.text == model.text
    assert whole.id == "answer"
    assert whole.usage_metadata == USAGE  # on one part only: not counted twice
