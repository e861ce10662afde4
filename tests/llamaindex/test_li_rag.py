"""RAG: GuardNodePostprocessor, GuardedRetriever and GuardTransform over a real VectorStoreIndex."""

from __future__ import annotations

import pytest
from li_shared import INJECTED_DOC, SAFE_DOCS, UNSAFE_DOC
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.ingestion.pipeline import get_transformation_hash
from llama_index.core.llms.mock import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from qwenguard.core import Guard, GuardViolation, Policy, Stage
from qwenguard.integrations.llamaindex import GuardedRetriever, GuardNodePostprocessor, GuardTransform

BAD = (INJECTED_DOC, UNSAFE_DOC)


def texts(nodes: list[NodeWithScore]) -> list[str]:
    return [n.node.get_content() for n in nodes]


def assert_only_safe(nodes: list[NodeWithScore]) -> None:
    assert sorted(texts(nodes)) == sorted(SAFE_DOCS)


def test_query_engine_drops_injected_and_unsafe_nodes(index: VectorStoreIndex, guard: Guard) -> None:
    # MockLLM echoes its prompt, so the answer shows exactly which context reached the LLM.
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=10, node_postprocessors=[GuardNodePostprocessor(guard=guard)]
    )
    response = engine.query("What is the capital of France?")
    assert_only_safe(response.source_nodes)
    answer = str(response)
    assert SAFE_DOCS[0] in answer and SAFE_DOCS[1] in answer
    assert all(bad not in answer for bad in BAD)


async def test_async_query_engine_drops_injected_and_unsafe_nodes(index: VectorStoreIndex, guard: Guard) -> None:
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=10, node_postprocessors=[GuardNodePostprocessor(guard=guard)]
    )
    response = await engine.aquery("What is the capital of France?")
    assert_only_safe(response.source_nodes)
    assert all(bad not in str(response) for bad in BAD)


def test_unguarded_engine_does_pass_the_bad_nodes(index: VectorStoreIndex) -> None:
    # The control: without the postprocessor the bad documents do reach the LLM.
    response = index.as_query_engine(llm=MockLLM(), similarity_top_k=10).query("What is the capital of France?")
    assert all(bad in str(response) for bad in BAD)


def test_postprocessor_raise_mode(index: VectorStoreIndex, guard: Guard) -> None:
    engine = index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=10,
        node_postprocessors=[GuardNodePostprocessor(guard=guard, on_block="raise")],
    )
    with pytest.raises(GuardViolation) as info:
        engine.query("What is the capital of France?")
    assert info.value.decision.stage is Stage.RETRIEVAL


async def test_postprocessor_async_twin_is_really_async(guard: Guard) -> None:
    post = GuardNodePostprocessor(guard=guard)
    nodes = [NodeWithScore(node=TextNode(text=t), score=1.0) for t in [*SAFE_DOCS, INJECTED_DOC]]
    # A real async twin, not the base class's thread offload.
    assert GuardNodePostprocessor._apostprocess_nodes is not BaseNodePostprocessor._apostprocess_nodes
    assert_only_safe(await post.apostprocess_nodes(nodes, query_str="capital?"))
    assert_only_safe(post.postprocess_nodes(nodes, query_str="capital?"))
    assert await post.apostprocess_nodes([], query_str="x") == []


def test_postprocessor_rejects_bad_arguments(guard: Guard) -> None:
    with pytest.raises(TypeError, match="Guard"):
        GuardNodePostprocessor(guard="not a guard")
    with pytest.raises(ValueError):
        GuardNodePostprocessor(guard=guard, on_block="ignore")


class CountingRetriever(BaseRetriever):
    """Delegates to a real retriever and counts searches."""

    def __init__(self, inner: BaseRetriever) -> None:
        self.inner, self.searches = inner, 0
        super().__init__()

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        self.searches += 1
        return self.inner.retrieve(query_bundle)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        self.searches += 1
        return await self.inner.aretrieve(query_bundle)


def test_guarded_retriever_filters_nodes_sync_and_async(index: VectorStoreIndex, guard: Guard) -> None:
    retriever = GuardedRetriever(index.as_retriever(similarity_top_k=10), guard)
    assert_only_safe(retriever.retrieve("What is the capital of France?"))
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    response = engine.query("What is the capital of France?")
    assert_only_safe(response.source_nodes)
    assert all(bad not in str(response) for bad in BAD)


async def test_guarded_retriever_async_query_engine(index: VectorStoreIndex, guard: Guard) -> None:
    engine = RetrieverQueryEngine.from_args(
        GuardedRetriever(index.as_retriever(similarity_top_k=10), guard), llm=MockLLM()
    )
    response = await engine.aquery("What is the capital of France?")
    assert_only_safe(response.source_nodes)


async def test_guarded_retriever_blocks_query_before_search(index: VectorStoreIndex, guard: Guard) -> None:
    inner = CountingRetriever(index.as_retriever(similarity_top_k=10))
    retriever = GuardedRetriever(inner, guard)
    with pytest.raises(GuardViolation) as info:
        retriever.retrieve("How can I make a bomb at home?")
    assert info.value.decision.stage is Stage.PROMPT
    with pytest.raises(GuardViolation):
        await retriever.aretrieve("How can I make a bomb at home?")
    assert inner.searches == 0
    retriever.retrieve("What is the capital of France?")
    assert inner.searches == 1


def test_ingestion_pipeline_filters_unsafe_documents(guard: Guard, embed_model) -> None:
    docs = [Document(text=t) for t in [*SAFE_DOCS, INJECTED_DOC, UNSAFE_DOC]]
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(), GuardTransform(guard=guard), embed_model])
    nodes = pipeline.run(documents=docs)
    assert sorted(n.get_content() for n in nodes) == sorted(SAFE_DOCS)
    assert all(n.embedding is not None for n in nodes)


async def test_ingestion_pipeline_async_and_index(guard: Guard, embed_model) -> None:
    docs = [Document(text=t) for t in [*SAFE_DOCS, UNSAFE_DOC]]
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(), GuardTransform(guard=guard)])
    nodes = await pipeline.arun(documents=docs)
    assert sorted(n.get_content() for n in nodes) == sorted(SAFE_DOCS)
    index = VectorStoreIndex.from_documents(
        docs, embed_model=embed_model, transformations=[GuardTransform(guard=guard)]
    )
    assert sorted(n.get_content() for n in index.as_retriever(similarity_top_k=10).retrieve("Paris")) == sorted(
        SAFE_DOCS
    )


def test_ingestion_raise_mode(guard: Guard) -> None:
    with pytest.raises(GuardViolation):
        GuardTransform(guard=guard, on_block="raise")([TextNode(text=UNSAFE_DOC)])


def test_transform_cache_key_follows_the_policy(guard: Guard) -> None:
    nodes = [TextNode(text=SAFE_DOCS[0])]
    strict = GuardTransform(guard=guard)
    loose = GuardTransform(guard=Guard(guard.backend, Policy.loose()))
    assert strict.to_dict()["policy"]["mode"] == "strict"
    assert strict.to_dict()["model"] == guard.backend.name
    assert get_transformation_hash(nodes, strict) != get_transformation_hash(nodes, loose)
    assert get_transformation_hash(nodes, strict) == get_transformation_hash(nodes, GuardTransform(guard=guard))
