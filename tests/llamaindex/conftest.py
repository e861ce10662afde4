"""Fixtures for the LlamaIndex integration tests: the demo guard (loaded once) and a small index."""

from __future__ import annotations

import pytest
from li_shared import INJECTED_DOC, SAFE_DOCS, UNSAFE_DOC
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from qwenguard.core import Guard, Policy


@pytest.fixture(scope="session")
def guard() -> Guard:
    g = Guard.from_pretrained("demo")
    yield g
    g.close()


@pytest.fixture()
def patient_guard(guard: Guard) -> Guard:
    """The demo guard without a deadline: on a busy shared machine a stream test must measure what
    reaches the consumer, not fail closed on the 30 s check deadline (deadlines have their own tests)."""
    return Guard(guard.backend, Policy(timeout_s=None))


@pytest.fixture()
def embed_model() -> MockEmbedding:
    return MockEmbedding(embed_dim=8)


@pytest.fixture()
def index(embed_model: MockEmbedding) -> VectorStoreIndex:
    """Safe documents plus an injected one and an unsafe one (constant embeddings: all retrieved)."""
    docs = [Document(text=t, id_=f"doc{i}") for i, t in enumerate([*SAFE_DOCS, INJECTED_DOC, UNSAFE_DOC])]
    return VectorStoreIndex.from_documents(docs, embed_model=embed_model)
