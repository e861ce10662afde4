"""One ``retrieve`` of a `GuardedRetriever` is one step under ``max_windows_per_call`` (red team rt65h F2).

The nodes the wrapped retriever returns and the nodes that expanding its IndexNodes adds were screened as two steps,
each with the whole budget: one retrieve judged twice the operator's bound (8 windows under a bound of 4). Each node
here is one window: what one retrieve lets through is what fits the bound.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from llama_index.core import SummaryIndex
from llama_index.core.schema import IndexNode, TextNode
from qwenguard.core import Guard, Policy
from qwenguard.integrations.llamaindex import GuardedRetriever

BUDGET = 4


@pytest.fixture(scope="module")
def demo_backend():
    return Guard.from_pretrained("demo").backend


def retriever(backend) -> GuardedRetriever:
    facts = SummaryIndex([TextNode(text=f"Fact {i}: the Seine flows through Paris.") for i in range(4)]).as_retriever()
    notes = [IndexNode(text="More facts about Paris.", index_id="more")]
    notes += [TextNode(text=f"Note {i}: Lyon is a city in France.") for i in range(3)]
    guard = Guard(backend, Policy(timeout_s=None), max_windows_per_call=BUDGET, cache_size=0)
    return GuardedRetriever(SummaryIndex(notes).as_retriever(), guard, screen_query=False, object_map={"more": facts})


@pytest.mark.parametrize("way", ["sync", "async"])
def test_one_retrieve_judges_within_one_budget(demo_backend, way: str, caplog) -> None:
    caplog.set_level(logging.ERROR)
    wrapped = retriever(demo_backend)
    question = "What is in France?"
    nodes = wrapped.retrieve(question) if way == "sync" else asyncio.run(wrapped.aretrieve(question))
    texts = [n.node.get_content() for n in nodes]
    assert len(texts) <= BUDGET, texts  # before: 7 (the 3 notes and the 4 facts the expansion added)
    assert any(t.startswith("Note") for t in texts), texts  # what fits is judged and kept
