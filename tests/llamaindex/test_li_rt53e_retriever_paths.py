"""rt53e F4, F5: what `GuardedRetriever` runs of the wrapped retriever, out of sight.

F5: 2eece4f ran the wrapped retriever's ``_retrieve`` (unspanned) and the IndexNode expansion in place of its
``retrieve``, so a retriever that overrides ``retrieve``/``aretrieve`` itself (here a per-user access filter)
lost that logic when guarded: another user's private document came back. Its own method runs again.
F4: an auto-retriever (``VectorIndexAutoRetriever``) builds a ``VectorIndexRetriever`` per query in its
``_retrieve`` and calls that one's instrumented ``retrieve``, which handed the nodes the guard then dropped to
every dispatcher handler (tracing) and to `set_global_handler`'s handler (in the legacy callback manager each
retriever builds); the docs' "wrap the inner retriever" cannot be done with one built per query. The per-query retriever now
runs out of sight too. Real LlamaIndex objects: a `VectorStoreIndex` over the conftest documents (an injected
one and an unsafe one among them), real dispatcher handlers, a scripted LLM for the auto-retriever's spec and
the answer; the demo guard."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio

import llama_index.core
import pytest
from li_scripted import ScriptedLLM
from li_shared import INJECTED_DOC, SAFE_DOCS, UNSAFE_DOC
from li_tracing import attached
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.callbacks import LlamaDebugHandler
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.retrievers import VectorIndexAutoRetriever, VectorIndexRetriever
from llama_index.core.vector_stores.types import MetadataInfo, VectorStoreInfo
from qwenguard.integrations.llamaindex import GuardedRetriever

QUESTION = "What is the capital of France?"
DROPPED = (INJECTED_DOC, UNSAFE_DOC)
PRIVATE_DOC = "Bob's salary is 123,456 EUR a year."


def kept_texts(nodes) -> list[str]:
    return sorted(n.node.get_content() for n in nodes)


def retrieve(retriever, mode: str):
    return retriever.retrieve(QUESTION) if mode == "sync" else asyncio.run(retriever.aretrieve(QUESTION))


def assert_none_of(dropped: tuple[str, ...], shown: str) -> None:
    """No dropped text, nor any 16 characters of it in a row (a tracer that truncates), is in ``shown``."""
    for text in dropped:
        pieces = {text[i : i + 16] for i in range(len(text) - 15)}
        assert not [p for p in pieces if p in shown], text


# -- F5: a retriever's own retrieve/aretrieve -------------------------------------------------------------------


class AliceOnly(VectorIndexRetriever):
    """The user's retriever: hides documents another user owns (the filter lives in the public methods)."""

    def retrieve(self, str_or_query_bundle):
        return [n for n in super().retrieve(str_or_query_bundle) if n.node.metadata.get("owner") in (None, "alice")]

    async def aretrieve(self, str_or_query_bundle):
        found = await super().aretrieve(str_or_query_bundle)
        return [n for n in found if n.node.metadata.get("owner") in (None, "alice")]


@pytest.fixture()
def shared_index(embed_model) -> VectorStoreIndex:
    """The conftest documents plus Bob's private one (constant embeddings: all retrieved)."""
    docs = [Document(text=t, id_=f"doc{i}") for i, t in enumerate([*SAFE_DOCS, INJECTED_DOC, UNSAFE_DOC])]
    docs.append(Document(text=PRIVATE_DOC, id_="bob", metadata={"owner": "bob"}))
    return VectorStoreIndex.from_documents(docs, embed_model=embed_model)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_retrievers_own_retrieve_still_filters_when_guarded(guard, shared_index, mode) -> None:
    retriever = AliceOnly(shared_index, similarity_top_k=5)
    assert PRIVATE_DOC not in kept_texts(retrieve(retriever, mode))  # what the user's retriever does
    kept = retrieve(GuardedRetriever(retriever, guard), mode)
    assert kept_texts(kept) == sorted(SAFE_DOCS)  # the filter ran, and the guard dropped the two planted ones
    assert not [t for t in kept_texts(kept) if "123,456" in t or "salary" in t]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_query_engine_over_the_guarded_filtering_retriever_cites_no_private_document(
    guard, shared_index, mode
) -> None:
    engine = RetrieverQueryEngine.from_args(
        GuardedRetriever(AliceOnly(shared_index, similarity_top_k=5), guard),
        llm=ScriptedLLM(chunks=["Paris ", "is ", "the ", "capital."]),
    )
    answer = engine.query(QUESTION) if mode == "sync" else asyncio.run(engine.aquery(QUESTION))
    assert str(answer) == "Paris is the capital."
    assert kept_texts(answer.source_nodes) == sorted(SAFE_DOCS)
    assert "salary" not in answer.get_formatted_sources(length=1000)


# -- F4: an auto-retriever's per-query retriever ----------------------------------------------------------------

SPEC = '```json\n{"query": "capital of France", "filters": [], "top_k": 4}\n```'
INFO = VectorStoreInfo(content_info="facts", metadata_info=[MetadataInfo(name="topic", type="str", description="t")])


def auto_retriever(index: VectorStoreIndex) -> VectorIndexAutoRetriever:
    """The user's auto-retriever: a (scripted) LLM writes the query spec, a retriever is built for it per query."""
    return VectorIndexAutoRetriever(index, vector_store_info=INFO, llm=ScriptedLLM(chunks=[SPEC]), similarity_top_k=4)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_auto_retrievers_per_query_retriever_shows_tracing_only_what_the_guard_kept(guard, index, mode) -> None:
    retriever = GuardedRetriever(auto_retriever(index), guard)
    with attached() as (events, spans):
        kept = retrieve(retriever, mode)
    assert kept_texts(kept) == sorted(SAFE_DOCS)
    assert_none_of(DROPPED, repr(events.seen) + "\n".join(spans.seen))
    ends = [e for e in events.seen if isinstance(e, RetrievalEndEvent)]
    assert [kept_texts(e.nodes) for e in ends] == [sorted(SAFE_DOCS)]  # the wrapper's own, alone


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_auto_retrievers_per_query_retriever_shows_a_global_callback_handler_only_what_the_guard_kept(
    guard, index, monkeypatch, mode
) -> None:
    # `set_global_handler`'s handler: every CallbackManager built after it has it, the per-query retriever's too.
    debug = LlamaDebugHandler(print_trace_on_end=False)
    monkeypatch.setattr(llama_index.core, "global_handler", debug)
    kept = retrieve(GuardedRetriever(auto_retriever(index), guard), mode)
    assert kept_texts(kept) == sorted(SAFE_DOCS)
    assert_none_of(DROPPED, repr(debug.get_event_pairs()))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_query_engine_over_a_guarded_auto_retriever_shows_tracing_only_what_the_guard_kept(
    guard, index, mode
) -> None:
    engine = RetrieverQueryEngine.from_args(
        GuardedRetriever(auto_retriever(index), guard),
        llm=ScriptedLLM(chunks=["Paris ", "is ", "the ", "capital."]),
    )
    with attached() as (events, spans):
        answer = engine.query(QUESTION) if mode == "sync" else asyncio.run(engine.aquery(QUESTION))
    assert str(answer) == "Paris is the capital."
    assert kept_texts(answer.source_nodes) == sorted(SAFE_DOCS)
    assert_none_of(DROPPED, repr(events.seen) + "\n".join(spans.seen))
