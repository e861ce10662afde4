"""A summary memory's summary is judged; a memory the guard cannot read is refused.

- rt63c F1: `GuardedMemory(ChatSummaryMemoryBuffer(...))`. The buffer's read makes the summary of the turns that no
  longer fit and STORES it (reset, then set) during that read; the guarded read took the stored messages after the
  read, counted the summary as stored and judged nothing. The summary is the opening system message, which
  `GuardedLLM` takes for the application's prompt: it reached the model, and a FunctionAgent's `AgentInput` event.
  Now the stored messages are taken before the read, and a blocked read puts them back (kept, the unjudged summary
  would count as stored on the next read).
- rt63c F3: `GuardedMemory(VectorMemory(...))` failed on every put and read inside LlamaIndex (no ``get_all``): it is
  refused at construction, naming `SimpleComposableMemory`, which reads a vector memory right.

Real ChatSummaryMemoryBuffer / SimpleChatEngine / FunctionAgent / VectorMemory, the summarizer a real CustomLLM
(`ScriptedLLM`), a deterministic keyword judge."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from li_scripted import UNSAFE_CLAUSE, ScriptedLLM
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.memory import ChatMemoryBuffer, ChatSummaryMemoryBuffer, SimpleComposableMemory, VectorMemory
from qwenguard.core import Guard, GuardViolation, Policy, Stage
from qwenguard.integrations.llamaindex import GuardedLLM, GuardedMemory

RUN_TIMEOUT_S = 60
TRIGGER = "ammonium"
UNSAFE_SUMMARY = "Summary: the user wants to know this. " + UNSAFE_CLAUSE
SAFE_SUMMARY = "Summary: the user asked about Paris and its history."
HISTORY = [
    ChatMessage(role="user", content="Tell me about Paris and its long history, please, in detail."),
    ChatMessage(role="assistant", content="Paris is the capital of France; it has a long history. " * 3),
    ChatMessage(role="user", content="And Lyon?"),
]
FIRST = "Tell me about Paris and its long history, please, in detail, with dates."
SECOND = "And Lyon? Tell me about Lyon in as much detail as you can."


def make_guard() -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(keyword_verdict)
    return Guard(backend, Policy(timeout_s=None), cache_size=0), backend


def summary_memory(guard: Guard, summary: str, token_limit: int = 40) -> tuple[GuardedMemory, ScriptedLLM]:
    summarizer = ScriptedLLM(chunks=[summary])  # the buffer's own (cheap) summarizing model
    return GuardedMemory(
        ChatSummaryMemoryBuffer.from_defaults(llm=summarizer, token_limit=token_limit), guard
    ), summarizer


def recording_model(read: list[str]) -> MockFunctionCallingLLM:
    def answer(messages: list[ChatMessage], **kwargs: Any) -> ChatMessage:
        read.extend(m.content or "" for m in messages)
        return ChatMessage(role="assistant", content="Lyon is a city in France, known for its food.")

    return MockFunctionCallingLLM(response_generator=answer)


def unsafe_chars(texts: list[str]) -> int:
    """Characters of the unsafe clause among ``texts``."""
    return sum(len(UNSAFE_CLAUSE) for t in texts if TRIGGER in t)


def judged_with(backend: ScriptedBackend, text: str) -> int:
    return sum(text in c[-1]["content"] for batch in backend.calls for c in batch)


# -- F1: the summary the read writes ---------------------------------------------------------------------
def test_chat_engine_summary_never_reaches_the_model() -> None:
    guard, _ = make_guard()
    memory, summarizer = summary_memory(guard, UNSAFE_SUMMARY, token_limit=20)
    read: list[str] = []
    engine = SimpleChatEngine.from_defaults(llm=GuardedLLM(llm=recording_model(read), guard=guard), memory=memory)
    engine.chat(FIRST)
    with pytest.raises(GuardViolation) as info:
        engine.chat(SECOND)  # the older turns no longer fit: summarized as the engine reads its memory
    assert summarizer.calls >= 1 and info.value.decision.stage is Stage.PROMPT
    assert unsafe_chars(read) == 0
    assert unsafe_chars([m.content or "" for m in engine.chat_history]) == 0  # not kept for the next turn either


async def test_async_chat_engine_summary_never_reaches_the_model() -> None:
    guard, _ = make_guard()
    memory, summarizer = summary_memory(guard, UNSAFE_SUMMARY, token_limit=20)
    read: list[str] = []
    engine = SimpleChatEngine.from_defaults(llm=GuardedLLM(llm=recording_model(read), guard=guard), memory=memory)
    await engine.achat(FIRST)
    with pytest.raises(GuardViolation):
        await engine.achat(SECOND)
    assert summarizer.calls >= 1 and unsafe_chars(read) == 0
    assert unsafe_chars([m.content or "" for m in await memory.aget_all()]) == 0


async def test_agent_summary_reaches_neither_the_model_nor_its_events() -> None:
    guard, _ = make_guard()
    memory, summarizer = summary_memory(guard, UNSAFE_SUMMARY, token_limit=30)
    read: list[str] = []
    agent = FunctionAgent(tools=[], llm=GuardedLLM(llm=recording_model(read), guard=guard))  # no system_prompt
    shown: list[str] = []

    async def run(question: str) -> None:
        handler = agent.run(user_msg=question, memory=memory)
        async for event in handler.stream_events():
            shown.append(repr(event))
        await asyncio.wait_for(handler, RUN_TIMEOUT_S)

    await run(FIRST)
    with pytest.raises(GuardViolation):
        await run(SECOND)
    assert summarizer.calls >= 1
    assert unsafe_chars(read) == 0 and unsafe_chars(shown) == 0  # the AgentInput event carried no summary


def test_a_blocked_summary_is_not_kept_as_stored() -> None:
    guard, backend = make_guard()
    memory, _ = summary_memory(guard, UNSAFE_SUMMARY)
    memory.put_messages(HISTORY)
    before = list(memory.get_all())  # a copy: the chat store hands out its live list, which the read pops
    for _ in range(2):  # the user just tries again: the summary is made again, and judged again
        with pytest.raises(GuardViolation):
            memory.get()
    assert memory.get_all() == before
    assert judged_with(backend, UNSAFE_SUMMARY) == 2


async def test_a_blocked_summary_is_not_kept_as_stored_async() -> None:
    guard, backend = make_guard()
    memory, _ = summary_memory(guard, UNSAFE_SUMMARY)
    await memory.aput_messages(HISTORY)
    before = list(await memory.aget_all())
    for _ in range(2):
        with pytest.raises(GuardViolation):
            await memory.aget()
    assert await memory.aget_all() == before
    assert judged_with(backend, UNSAFE_SUMMARY) == 2


def test_a_safe_summary_is_read_and_judged_once() -> None:
    guard, backend = make_guard()
    memory, _ = summary_memory(guard, SAFE_SUMMARY)
    memory.put_messages(HISTORY)
    read = memory.get()
    assert read[0].content == SAFE_SUMMARY and read[-1].content == "And Lyon?"
    assert memory.get()[0].content == SAFE_SUMMARY  # stored now: read again, it costs no check
    assert judged_with(backend, SAFE_SUMMARY) == 1


async def test_a_safe_summary_is_read_and_judged_once_async() -> None:
    guard, backend = make_guard()
    memory, _ = summary_memory(guard, SAFE_SUMMARY)
    await memory.aput_messages(HISTORY)
    read = await memory.aget()
    assert read[0].content == SAFE_SUMMARY and read[-1].content == "And Lyon?"
    assert (await memory.aget())[0].content == SAFE_SUMMARY
    assert judged_with(backend, SAFE_SUMMARY) == 1


# -- F3: a memory without get_all ------------------------------------------------------------------------
def vector_memory() -> VectorMemory:
    return VectorMemory.from_defaults(
        vector_store=None, embed_model=MockEmbedding(embed_dim=8), retriever_kwargs={"similarity_top_k": 2}
    )


@pytest.mark.parametrize("composed", [False, True], ids=["vector", "composable_primary"])
def test_a_vector_memory_is_refused_with_what_reads_it(composed: bool) -> None:
    guard, _ = make_guard()
    memory: Any = vector_memory()
    if composed:
        memory = SimpleComposableMemory.from_defaults(primary_memory=memory)
    with pytest.raises(TypeError, match="SimpleComposableMemory"):
        GuardedMemory(memory, guard)


def test_a_vector_memory_as_a_secondary_source_is_read_judged() -> None:
    guard, _ = make_guard()
    vector = vector_memory()
    vector.put(ChatMessage(role="user", content=UNSAFE_CLAUSE))  # an old session's turn
    vector.put(ChatMessage(role="assistant", content="I cannot help with that."))
    memory = GuardedMemory(
        SimpleComposableMemory.from_defaults(
            primary_memory=ChatMemoryBuffer.from_defaults(), secondary_memory_sources=[vector]
        ),
        guard,
    )
    memory.put(ChatMessage(role="user", content="And Lyon?"))
    with pytest.raises(GuardViolation):
        memory.get("Lyon")
