"""Streams that turn unsafe midway: the consumer never sees the unsafe clause; the producer stops."""

from __future__ import annotations

import asyncio

import pytest
from li_scripted import SAFE_ENDING, SAFE_OPENING, UNSAFE_CLAUSE, ScriptedLLM, words
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.chat_engine import SimpleChatEngine
from qwenguard.core import Guard, GuardViolation

# A long safe tail at a model-like pace: the guard's verdict on the unsafe clause arrives while the
# tail is still streaming, so a working guard must close the producer before it ends.
CHUNKS = words(SAFE_OPENING + UNSAFE_CLAUSE + SAFE_ENDING * 30)
DELAY_S = 0.05


def scripted() -> ScriptedLLM:
    return ScriptedLLM(chunks=CHUNKS, delay_s=DELAY_S)


def assert_stopped(received: str, inner: ScriptedLLM) -> None:
    assert "ammonium" not in received and "fuse" not in received
    assert received == "" or SAFE_OPENING.startswith(received) or received.startswith(SAFE_OPENING.strip())
    assert inner.interrupted and inner.closed, "the inner generator must be closed mid-stream"
    assert inner.produced < len(CHUNKS)


@pytest.fixture()
def safe_index(embed_model) -> VectorStoreIndex:
    return VectorStoreIndex.from_documents([Document(text="Paris is the capital of France.")], embed_model=embed_model)


def test_streaming_query_engine_stops_midway(safe_index: VectorStoreIndex, guard: Guard) -> None:
    from qwenguard.integrations.llamaindex import GuardedLLM

    inner = scripted()
    engine = safe_index.as_query_engine(llm=GuardedLLM(llm=inner, guard=guard), streaming=True)
    response = engine.query("What is the capital of France?")
    received = ""
    with pytest.raises(GuardViolation) as info:
        for token in response.response_gen:
            received += token
    assert info.value.decision.stage.value in ("stream", "response")
    assert_stopped(received, inner)


async def test_async_streaming_query_engine_stops_midway(safe_index: VectorStoreIndex, guard: Guard) -> None:
    from qwenguard.integrations.llamaindex import GuardedLLM

    inner = scripted()
    engine = safe_index.as_query_engine(llm=GuardedLLM(llm=inner, guard=guard), streaming=True)
    response = await engine.aquery("What is the capital of France?")
    received = ""
    with pytest.raises(GuardViolation):
        async for token in response.async_response_gen():
            received += token
    await asyncio.sleep(0)  # let the async generator's finaliser run
    assert_stopped(received, inner)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the engine streams in a thread
def test_streaming_chat_engine_stops_midway(guard: Guard) -> None:
    from qwenguard.integrations.llamaindex import GuardedLLM

    inner = scripted()
    engine = SimpleChatEngine.from_defaults(llm=GuardedLLM(llm=inner, guard=guard))
    response = engine.stream_chat("Tell me about Paris.")
    received = ""
    with pytest.raises(GuardViolation):
        for token in response.response_gen:
            received += token
    assert_stopped(received, inner)


async def test_async_streaming_chat_engine_stops_midway(guard: Guard) -> None:
    from qwenguard.integrations.llamaindex import GuardedLLM

    inner = scripted()
    engine = SimpleChatEngine.from_defaults(llm=GuardedLLM(llm=inner, guard=guard))
    response = await engine.astream_chat("Tell me about Paris.")
    received = ""
    with pytest.raises(GuardViolation):
        async for token in response.async_response_gen():
            received += token
    await asyncio.sleep(0)
    assert_stopped(received, inner)


def test_unguarded_stream_does_deliver_the_clause(safe_index: VectorStoreIndex) -> None:
    # The control: the same scripted answer reaches the consumer without the guard.
    response = safe_index.as_query_engine(llm=ScriptedLLM(chunks=CHUNKS), streaming=True).query(
        "What is the capital of France?"
    )
    assert UNSAFE_CLAUSE in "".join(response.response_gen)
