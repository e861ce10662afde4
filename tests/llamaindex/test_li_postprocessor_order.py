"""`GuardNodePostprocessor` must be the last node postprocessor.

``node_postprocessors=[GuardNodePostprocessor(guard), PrevNextNodePostprocessor(docstore=...)]`` (a common
context-expansion chain): the neighbour nodes are fetched after the guard ran and reach the prompt unjudged.
The guard must be the last postprocessor (docs/llamaindex.md). Real query engines over a real docstore, the demo guard."""

from __future__ import annotations

import pytest
from li_shared import INJECTED_DOC
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms.mock import MockLLM
from llama_index.core.postprocessor import PrevNextNodePostprocessor
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.storage import StorageContext
from llama_index.core.storage.docstore import SimpleDocumentStore
from qwenguard.core import Guard
from qwenguard.integrations.llamaindex import GuardNodePostprocessor

QUESTION = "What is the capital of France?"


def linked_index() -> tuple[VectorStoreIndex, SimpleDocumentStore]:
    """A safe node whose next neighbour is an injection, both in the docstore."""
    nodes = [TextNode(text="Paris is the capital of France.", id_="n0"), TextNode(text=INJECTED_DOC, id_="n1")]
    nodes[0].relationships[NodeRelationship.NEXT] = RelatedNodeInfo(node_id="n1")
    nodes[1].relationships[NodeRelationship.PREVIOUS] = RelatedNodeInfo(node_id="n0")
    docstore = SimpleDocumentStore()
    docstore.add_documents(nodes)
    storage = StorageContext.from_defaults(docstore=docstore)
    return VectorStoreIndex(nodes, storage_context=storage, embed_model=MockEmbedding(embed_dim=8)), docstore


def sources(response) -> list[str]:
    return [n.node.get_content() for n in response.source_nodes]


@pytest.mark.parametrize("asynchronous", [False, True], ids=["query", "aquery"])
@pytest.mark.parametrize("order", ["guard last", "guard again after the expansion"])
async def test_the_guard_placed_last_judges_the_fetched_nodes(guard: Guard, order: str, asynchronous: bool) -> None:
    """The documented order. (A guard placed before the expansion lets the neighbour through: the same engine
    with ``[guard, expand]`` puts the injection in the prompt.)"""
    index, docstore = linked_index()
    expand = PrevNextNodePostprocessor(docstore=docstore, num_nodes=1, mode="next")
    chains = {
        "guard last": [expand, GuardNodePostprocessor(guard=guard)],
        "guard again after the expansion": [
            GuardNodePostprocessor(guard=guard),
            expand,
            GuardNodePostprocessor(guard=guard),
        ],
    }
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=2, node_postprocessors=chains[order])
    response = await engine.aquery(QUESTION) if asynchronous else engine.query(QUESTION)
    assert INJECTED_DOC not in sources(response) and sources(response)
    wrong = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=2, node_postprocessors=[GuardNodePostprocessor(guard=guard), expand]
    )
    assert INJECTED_DOC in sources(wrong.query(QUESTION))  # why the order matters
