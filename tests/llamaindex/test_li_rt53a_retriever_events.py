"""rt53a F6: `GuardedRetriever` runs the wrapped retriever out of sight of LlamaIndex's instrumentation.

It called the wrapped retriever's instrumented ``retrieve``, which hands the nodes it found to every dispatcher
handler (its span's result, ``RetrievalEndEvent``: what Phoenix, Langfuse and OpenInference record) and to the
legacy callback manager it shares with the wrapper (``CBEventType.RETRIEVE``: ``LlamaDebugHandler``,
``set_global_handler``) before the guard dropped any: the planted node reached tracing whole, and a
`GuardCallbackHandler` in the same callback manager (the setup docs/llamaindex.md shows) judged it there and
stopped the whole query instead of letting the wrapper drop one node. Now only what the guard kept shows, in the
wrapper's own span and events. Real LlamaIndex objects throughout: a `VectorStoreIndex` over the conftest
documents (an injected one and an unsafe one among them), real dispatcher handlers, `LlamaDebugHandler`, a
`RetrieverQueryEngine` with a scripted LLM; the demo guard."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio

import pytest
from li_scripted import ScriptedLLM
from li_shared import INJECTED_DOC, SAFE_DOCS, UNSAFE_DOC
from li_tracing import attached
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import IndexNode
from qwenguard.integrations.llamaindex import GuardCallbackHandler, GuardedRetriever

QUESTION = "What is the capital of France?"
DROPPED = (INJECTED_DOC, UNSAFE_DOC)


@pytest.fixture()
def tracers():
    """An event handler and a span handler on the root dispatcher (after the index was built), removed after."""
    with attached() as handlers:
        yield handlers


@pytest.fixture()
def settings(monkeypatch):
    """LlamaIndex's global Settings, restored after the test."""
    for name in ("_llm", "_callback_manager", "_embed_model"):
        monkeypatch.setattr(Settings, name, getattr(Settings, name))
    return Settings


def assert_none_of(dropped: tuple[str, ...], shown: str) -> None:
    """No dropped text, nor any 16 characters of it in a row (a tracer that truncates), is in ``shown``."""
    for text in dropped:
        pieces = {text[i : i + 16] for i in range(len(text) - 15)}
        assert not [p for p in pieces if p in shown], text


def kept_texts(nodes) -> list[str]:
    return sorted(n.node.get_content() for n in nodes)


def retrieve(retriever: GuardedRetriever, mode: str):
    return retriever.retrieve(QUESTION) if mode == "sync" else asyncio.run(retriever.aretrieve(QUESTION))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_tracing_handlers_see_only_the_nodes_the_guard_kept(guard, index, tracers, mode) -> None:
    events, spans = tracers
    kept = retrieve(GuardedRetriever(index.as_retriever(similarity_top_k=4), guard), mode)
    assert kept_texts(kept) == sorted(SAFE_DOCS)
    assert_none_of(DROPPED, repr(events.seen) + "\n".join(spans.seen))
    # The wrapper's own events report what it kept: one retrieval, its two safe nodes.
    ends = [e for e in events.seen if isinstance(e, RetrievalEndEvent)]
    assert [kept_texts(e.nodes) for e in ends] == [sorted(SAFE_DOCS)]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_legacy_debug_handler_sees_only_the_nodes_the_guard_kept(guard, index, mode) -> None:
    debug = LlamaDebugHandler(print_trace_on_end=False)
    inner = index.as_retriever(similarity_top_k=4)
    inner.callback_manager = CallbackManager([debug])  # the wrapper shares it
    kept = retrieve(GuardedRetriever(inner, guard), mode)
    assert kept_texts(kept) == sorted(SAFE_DOCS)
    assert_none_of(DROPPED, repr(debug.get_event_pairs()))
    pairs = debug.get_event_pairs(CBEventType.RETRIEVE)
    assert len(pairs) == 1
    assert kept_texts(pairs[0][1].payload["nodes"]) == sorted(SAFE_DOCS)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_guard_callback_handler_beside_the_retriever_lets_the_query_drop_the_planted_node(
    guard, embed_model, settings, tracers, mode
) -> None:
    # docs/llamaindex.md's setup: the blocking handler in the global callback manager, before building components.
    settings.callback_manager = CallbackManager([GuardCallbackHandler(guard)])
    docs = [Document(text=t) for t in [*SAFE_DOCS, INJECTED_DOC, UNSAFE_DOC]]
    index = VectorStoreIndex.from_documents(docs, embed_model=embed_model)
    for tracer in tracers:  # indexing showed the documents: what counts is what the query shows
        tracer.seen.clear()
    engine = RetrieverQueryEngine.from_args(
        GuardedRetriever(index.as_retriever(similarity_top_k=4), guard),
        llm=ScriptedLLM(chunks=["Paris ", "is ", "the ", "capital."]),
    )
    answer = engine.query(QUESTION) if mode == "sync" else asyncio.run(engine.aquery(QUESTION))
    assert str(answer) == "Paris is the capital."
    assert kept_texts(answer.source_nodes) == sorted(SAFE_DOCS)
    assert_none_of(DROPPED, repr(tracers[0].seen) + "\n".join(tracers[1].seen))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_retriever_an_index_node_stands_for_runs_out_of_sight_too(guard, index, embed_model, tracers, mode) -> None:
    # Recursive retrieval: the top index holds an IndexNode whose object is the poisoned index's retriever.
    summary = IndexNode(text="Facts about France.", index_id="france", obj=index.as_retriever(similarity_top_k=4))
    top = VectorStoreIndex(objects=[summary], embed_model=embed_model)
    kept = retrieve(GuardedRetriever(top.as_retriever(similarity_top_k=1), guard), mode)
    assert kept_texts(kept) == sorted(SAFE_DOCS)
    events, spans = tracers
    assert_none_of(DROPPED, repr(events.seen) + "\n".join(spans.seen))
