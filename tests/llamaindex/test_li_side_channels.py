"""Held-back text leaves a GuardedLLM stream through no field of a chunk: not ``raw``, not
``logprobs``, not ``additional_kwargs`` (``thinking_delta``), not the message's blocks or content.

The wrapped LLM streams like a reasoning provider (`ReasoningLLM`): every chunk repeats its text in
``raw``, ``logprobs`` and cumulative blocks. The unsafe clause sits in the answer, or in the reasoning."""

from __future__ import annotations

import pytest
from li_scripted import UNSAFE_CLAUSE, ReasoningLLM, exposure, words
from llama_index.core.base.llms.types import ChatMessage, ThinkingBlock
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.llamaindex import GuardedLLM

SAFE_REASONING = "The user asks about Paris. Paris is the capital of France. "
SAFE_ANSWER = "Paris is the capital of France. The Eiffel Tower is in Paris."
ASK = [ChatMessage(role="user", content="Tell me about Paris.")]

CASES = {
    "unsafe answer": (words(SAFE_REASONING), words("Paris is the capital of France. " + UNSAFE_CLAUSE)),
    "unsafe reasoning": (words(SAFE_REASONING + UNSAFE_CLAUSE), words(SAFE_ANSWER)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_nothing_held_back_leaks_through_any_field_sync(patient_guard: Guard, case: str) -> None:
    reasoning, answer = CASES[case]
    llm = GuardedLLM(llm=ReasoningLLM(reasoning=reasoning, answer=answer), guard=patient_guard)
    chunks = []
    with pytest.raises(GuardViolation):
        for chunk in llm.stream_chat(ASK):
            chunks.append(chunk)
    assert exposure(chunks) == {}, "characters of the unsafe clause, by field"


@pytest.mark.parametrize("case", list(CASES))
async def test_nothing_held_back_leaks_through_any_field_async(patient_guard: Guard, case: str) -> None:
    reasoning, answer = CASES[case]
    llm = GuardedLLM(llm=ReasoningLLM(reasoning=reasoning, answer=answer), guard=patient_guard)
    chunks = []
    with pytest.raises(GuardViolation):
        async for chunk in await llm.astream_chat(ASK):
            chunks.append(chunk)
    assert exposure(chunks) == {}


async def test_a_safe_reasoning_stream_arrives_whole(patient_guard: Guard) -> None:
    inner = ReasoningLLM(reasoning=words(SAFE_REASONING), answer=words(SAFE_ANSWER))
    llm = GuardedLLM(llm=inner, guard=patient_guard)
    for chunks in (list(llm.stream_chat(ASK)), [c async for c in await llm.astream_chat(ASK)]):
        assert "".join(c.delta for c in chunks) == SAFE_ANSWER
        assert "".join(c.additional_kwargs.get("thinking_delta", "") for c in chunks) == SAFE_REASONING
        last = chunks[-1]
        assert last.message.content == SAFE_ANSWER
        assert [b.content for b in last.message.blocks if isinstance(b, ThinkingBlock)] == [SAFE_REASONING]
        assert last.raw == {"content": "Paris."}  # the final chunk, all judged, is the provider's own
        assert all(c.raw is None and c.logprobs is None for c in chunks[:-1])
