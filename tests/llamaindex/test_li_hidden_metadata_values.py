"""Metadata hidden from the LLM that is no string (a list of comments, a mapping) is judged too (rt50c F5).

The app receives a retrieved node's metadata with it (``response.source_nodes``: sources panels show it, and a
QueryEngineTool's ToolCallResult carries it), and `node_text` judged hidden values only when they were strings: a
list under an excluded key went through unread. Real VectorStoreIndex query engines, ingestion and tools; a keyword
judge. The contract is counted in characters: no character of the hidden text reaches the consumer."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio
from dataclasses import dataclass

import pytest
from faults import ScriptedBackend
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.llms.mock import MockLLM
from llama_index.core.schema import MetadataMode, TextNode
from llama_index.core.tools import QueryEngineTool
from qwenguard.core import Guard, Policy
from qwenguard.core.errors import InputTooLarge
from qwenguard.integrations.llamaindex import GuardNodePostprocessor, GuardTransform, guard_tool
from qwenguard.integrations.llamaindex.postprocessor import node_text

CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
SAFE = "Paris is the capital of France."


def keyword_guard(**kwargs) -> Guard:
    def answer(conversation) -> str:
        unsafe = "ammonium" in conversation[-1]["content"]
        head = "Safety: Unsafe\nCategories: Violent" if unsafe else "Safety: Safe\nCategories: None"
        return head + ("\nRefusal: No" if conversation[-1]["role"] == "assistant" else "")

    return Guard(ScriptedBackend(answer), Policy(timeout_s=None), cache_size=0, **kwargs)


@dataclass
class Comment:
    author: str
    text: str


#: Hidden values that are no string, each holding the clause somewhere inside.
HIDDEN = {
    "list": [CLAUSE],
    "nested": {"thread": [{"author": "eve", "text": CLAUSE}]},
    "tuple_in_list": [("eve", CLAUSE)],
    "key": {CLAUSE: 1},
    "object": [Comment("eve", CLAUSE)],
}


def poisoned(value) -> TextNode:
    return TextNode(text=SAFE, metadata={"comments": value}, excluded_llm_metadata_keys=["comments"])


def leaked(nodes) -> int:
    """Characters of the clause in what the app receives with the nodes (their whole metadata, printed)."""
    return sum(len(CLAUSE) for n in nodes if "ammonium" in repr(n.node.metadata) or "ammonium" in n.node.get_content())


@pytest.mark.parametrize("value", list(HIDDEN.values()), ids=list(HIDDEN))
def test_query_engine_sources_hold_no_hidden_clause(value) -> None:
    clean = TextNode(text="The Eiffel Tower is in Paris.", metadata={"comments": ["Lovely view."]})
    clean.excluded_llm_metadata_keys = ["comments"]
    index = VectorStoreIndex([poisoned(value), clean], embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=5, node_postprocessors=[GuardNodePostprocessor(guard=keyword_guard())]
    )
    response = engine.query("What is the capital of France?")
    assert leaked(response.source_nodes) == 0
    assert [n.node.text for n in response.source_nodes] == ["The Eiffel Tower is in Paris."]  # the clean one kept


def test_ingestion_drops_a_node_with_a_hidden_list() -> None:
    pipeline = IngestionPipeline(transformations=[GuardTransform(guard=keyword_guard())])
    nodes = pipeline.run(nodes=[poisoned([CLAUSE]), TextNode(text="The Louvre is in Paris.")])
    assert [n.text for n in nodes] == ["The Louvre is in Paris."]


def test_a_query_engine_tool_drops_the_node_from_its_raw_output() -> None:
    index = VectorStoreIndex([poisoned({"thread": [CLAUSE]})], embed_model=MockEmbedding(embed_dim=8))
    tool = QueryEngineTool.from_defaults(index.as_query_engine(llm=MockLLM()), name="search", description="Search.")
    output = asyncio.run(guard_tool(tool, keyword_guard()).acall("capital"))
    assert "ammonium" not in repr(output.raw_output) and "ammonium" not in output.content


def test_the_walk_is_bounded_by_max_chars() -> None:
    """A huge value is read only up to the guard's max_chars, then refused as too large (never let through):
    ``on_block="raise"`` raises, ``"drop"`` drops the node (rt51c F3)."""
    node = poisoned([SAFE] * 100_000)
    guard = keyword_guard(max_chars=10_000)
    with pytest.raises(InputTooLarge):
        node_text(node, guard.max_chars)
    retrieved = VectorStoreIndex([node], embed_model=MockEmbedding(embed_dim=8)).as_retriever().retrieve("x")
    with pytest.raises(InputTooLarge):
        GuardNodePostprocessor(guard=guard, on_block="raise").postprocess_nodes(retrieved)
    assert GuardNodePostprocessor(guard=guard).postprocess_nodes(retrieved) == []


def test_plain_hidden_values_cost_nothing_more() -> None:
    """Numbers add nothing, strings are read: one text per node, one check per node. A hidden key's name is read
    too, identifiers as well (rt51g F3: one can be the words of a request, ``mix_ammonium_nitrate_...``)."""
    hidden = ["file_size", "pages", "title"]
    node = TextNode(text=SAFE, metadata={"file_size": 1234, "pages": [1, 2], "title": "Cities"})
    node.excluded_llm_metadata_keys = hidden
    read = "\n\n".join(["file_size", "pages", "title", "Cities"])
    assert node_text(node, 1_000_000) == node.get_content(metadata_mode=MetadataMode.LLM) + "\n\n" + read
    nested = poisoned({"thread": [{"author": "eve", "text": "Nice."}]})
    assert node_text(nested, 1_000_000).split("\n\n")[1:] == ["comments", "thread", "author", "eve", "text", "Nice."]
