"""rt52c F4: a stream whose chunks carry the whole text so far, rewritten (no ``delta``), is read by what changed.

LlamaIndex's own `StructuredLLM` (``llm.as_structured_llm(Model)``) streams each partial object's JSON whole:
``{"topic":"Par"}`` then ``{"topic":"Paris"}``, a rewrite of the last chunk, not its growth. Such a snapshot was
taken for a piece of its own and fed to the guard whole: the guarded stream's text was every snapshot end to end
(unparseable) and the guard judged the sum of all snapshots, growing with the square of the answer.

The real `OpenAILike` against tests/scripted_openai.py, wrapped by the real `StructuredLLM`; a keyword judge that
counts the answer characters it reads (tests/stream_judges.py)."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio
import json
from typing import Any

from li_shared import openai_like
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    LLMMetadata,
)
from llama_index.core.llms.custom import CustomLLM
from pydantic import BaseModel
from qwenguard.core import Guard, Policy
from qwenguard.integrations.llamaindex import GuardedLLM
from scripted_openai import Reply, scripted_openai
from stream_judges import CountingJudge

QUESTION = "What is the capital of France?"
TEXT = " ".join(["Paris is the capital of France and a lovely city."] * 40)  # ~2 KB


class Topic(BaseModel):
    """The topic."""

    topic: str


def judged(judge: CountingJudge) -> Guard:
    return Guard(judge, Policy(timeout_s=None), cache_size=0)


def ask() -> list[ChatMessage]:
    return [ChatMessage(role="user", content=QUESTION)]


def plain_stream_cost(answer: str) -> int:
    """The answer characters the guard reads for ``answer`` streamed plainly (deltas), the yardstick."""
    with scripted_openai([Reply.words(answer)], pace=0) as url:
        judge = CountingJudge()
        list(GuardedLLM(llm=openai_like(url), guard=judged(judge)).stream_chat(ask()))
    return judge.answer_chars


def test_a_structured_llm_stream_ends_with_its_own_json_at_the_cost_of_a_plain_stream():
    answer = json.dumps({"topic": TEXT})
    with scripted_openai([Reply.words(answer), Reply.words(answer)], pace=0) as url:
        structured = openai_like(url).as_structured_llm(Topic)
        bare = list(structured.stream_chat(ask()))[-1].message.content
        judge = CountingJudge()
        chunks = list(GuardedLLM(llm=structured, guard=judged(judge)).stream_chat(ask()))
    final = chunks[-1].message.content
    assert final == bare
    assert Topic.model_validate_json(final).topic == TEXT
    assert judge.answer_chars <= 2 * plain_stream_cost(answer)


def test_an_async_structured_llm_stream_ends_with_its_own_json():
    answer = json.dumps({"topic": TEXT})

    async def run(llm: Any) -> list[Any]:
        return [chunk async for chunk in await llm.astream_chat(ask())]

    with scripted_openai([Reply.words(answer), Reply.words(answer)], pace=0) as url:
        structured = openai_like(url).as_structured_llm(Topic)
        bare = asyncio.run(run(structured))[-1].message.content
        judge = CountingJudge()
        chunks = asyncio.run(run(GuardedLLM(llm=structured, guard=judged(judge))))
    assert chunks[-1].message.content == bare
    assert Topic.model_validate_json(bare).topic == TEXT
    assert judge.answer_chars <= 2 * plain_stream_cost(answer)


class Rewriter(CustomLLM):
    """A provider class that streams snapshots without deltas, each rewriting the end of the last one (a text that
    is normalised as it grows, or an adversary's): the same start, then a tail that flips every chunk."""

    rounds: int = 200

    @classmethod
    def class_name(cls) -> str:
        return "Rewriter"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="rewriter", is_chat_model=True)

    def _snapshots(self) -> list[str]:
        head = "Paris is the capital of France. " * 60
        return [head + ("The Eiffel Tower is tall. " if i % 2 else "The Louvre is large. ") * 10 for i in range(200)]

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._snapshots()[-1])

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        return (CompletionResponse(text=s) for s in self._snapshots())

    def stream_chat(self, messages: Any, **kwargs: Any) -> Any:
        return (ChatResponse(message=ChatMessage(role="assistant", content=s)) for s in self._snapshots())


def test_what_a_rewriting_stream_costs_the_guard_is_bounded_by_its_text():
    llm = Rewriter()
    final = llm._snapshots()[-1]
    yardstick = plain_stream_cost(final)
    for stream in ("chat", "complete"):
        judge = CountingJudge()
        guarded = GuardedLLM(llm=llm, guard=judged(judge))
        if stream == "chat":
            chunks = list(guarded.stream_chat(ask()))
            text = chunks[-1].message.content
        else:
            chunks = list(guarded.stream_complete(QUESTION))
            text = chunks[-1].text
        assert text == final, stream
        # 200 snapshots of ~2 KB: judged whole each time, 400 KB and more; fed by what changed, within a bound.
        assert judge.answer_chars <= 5 * yardstick, stream
