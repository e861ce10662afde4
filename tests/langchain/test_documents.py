"""GuardDocumentCompressor and GuardedRetriever over a real in-memory vector store."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore
from lc_fakes import INJECTION, SAFE_QUESTION, judged_again, store_of
from qwenguard.core import GuardViolation, Policy
from qwenguard.integrations.langchain import GuardDocumentCompressor, GuardedRetriever

DOCS = [
    Document("Paris is the capital of France.", metadata={"source": "atlas", "page": 1}),
    Document(INJECTION, metadata={"source": "forum", "page": 7}),
    Document("The Eiffel Tower is in Paris.", metadata={"source": "guide", "page": 3}),
]


def _store() -> InMemoryVectorStore:
    store = store_of(DOCS)
    return store


def test_compressor_drops_the_injected_document_keeping_order_and_metadata(guard):
    kept = GuardDocumentCompressor(guard=guard).compress_documents(DOCS, SAFE_QUESTION)
    assert [d.page_content for d in kept] == [DOCS[0].page_content, DOCS[2].page_content]
    assert [d.metadata for d in kept] == [DOCS[0].metadata, DOCS[2].metadata]
    assert "qwenguard" not in DOCS[1].metadata  # inputs are never mutated


async def test_compressor_async_and_raise(guard):
    kept = await GuardDocumentCompressor(guard=guard).acompress_documents(DOCS, SAFE_QUESTION)
    assert len(kept) == 2
    with pytest.raises(GuardViolation) as info:
        GuardDocumentCompressor(guard=guard, on_violation="raise").compress_documents(DOCS, SAFE_QUESTION)
    assert info.value.decision.stage.value == "retrieval" and "Jailbreak" in info.value.decision.categories


def test_flagged_documents_carry_the_decision(guard):
    lenient = type(guard)(guard.backend, Policy.loose(ignore_categories=["Jailbreak"]))
    kept = GuardDocumentCompressor(guard=lenient).compress_documents(DOCS, SAFE_QUESTION)
    assert len(kept) == 3
    assert kept[1].metadata["qwenguard"]["action"] == "flag"
    assert kept[1].metadata["source"] == "forum"
    assert "qwenguard" not in kept[0].metadata


def test_guarded_retriever_over_a_vector_store(guard):
    retriever = GuardedRetriever.wrap(_store().as_retriever(search_kwargs={"k": 3}), guard)
    docs = retriever.invoke(SAFE_QUESTION)
    assert len(docs) == 2 and all(INJECTION not in d.page_content for d in docs)
    assert {d.metadata["source"] for d in docs} == {"atlas", "guide"}


async def test_guarded_retriever_async(guard):
    retriever = GuardedRetriever.wrap(_store().as_retriever(search_kwargs={"k": 3}), guard)
    docs = await retriever.ainvoke(SAFE_QUESTION)
    assert len(docs) == 2 and all(INJECTION not in d.page_content for d in docs), judged_again(guard, DOCS)


def test_bad_input_is_a_clear_error(guard):
    compressor = GuardDocumentCompressor(guard=guard)
    with pytest.raises(TypeError, match="list of Document"):
        compressor.compress_documents(DOCS[0], SAFE_QUESTION)
    with pytest.raises(TypeError, match="Document"):
        compressor.compress_documents(["plain text"], SAFE_QUESTION)
    assert compressor.compress_documents([], SAFE_QUESTION) == []
