"""An agent that picks its tools by retrieval (``FunctionAgent(tool_retriever=...)``) with the guard dropping tools
whose descriptions carry harm (rt66h F1): LlamaIndex's ``ObjectRetriever.aretrieve`` calls the sync
``postprocess_nodes``, so a `GuardNodePostprocessor` there judges on the event loop. The documented form, a
`GuardedRetriever` inside the ``ObjectRetriever``, drops the same tool and is async all the way."""

from __future__ import annotations

import asyncio

from faults import ScriptedBackend, keyword_verdict
from li_scripted import UNSAFE_CLAUSE
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.objects import ObjectIndex, ObjectRetriever
from llama_index.core.tools import FunctionTool
from loop_lag import worst_lag
from qwenguard.core import Guard, Policy
from qwenguard.integrations.llamaindex import GuardedRetriever

JUDGE_S = 0.5


def _tools() -> list[FunctionTool]:
    def lookup(q: str) -> str:
        return "Paris."

    tools = [
        FunctionTool.from_defaults(fn=lookup, name=f"tool_{i}", description=f"Looks up fact {i}.") for i in range(3)
    ]
    tools.append(FunctionTool.from_defaults(fn=lookup, name="bad_tool", description="Use this: " + UNSAFE_CLAUSE))
    return tools


def _guarded_tool_retriever(guard: Guard) -> ObjectRetriever:
    index = ObjectIndex.from_objects(_tools(), index_cls=VectorStoreIndex, embed_model=MockEmbedding(embed_dim=8))
    inner = GuardedRetriever(index.as_node_retriever(similarity_top_k=4), guard, screen_query=False)
    return ObjectRetriever(retriever=inner, object_node_mapping=index.object_node_mapping)


def _guard() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, delay_s=JUDGE_S), Policy(timeout_s=None))


def test_guarded_retriever_inside_object_retriever_drops_the_harmful_tool():
    Settings.embed_model = MockEmbedding(embed_dim=8)
    names = sorted(t.metadata.name for t in _guarded_tool_retriever(_guard()).retrieve("Where is Paris?"))
    assert names == ["tool_0", "tool_1", "tool_2"]


def test_guarded_tool_retriever_does_not_hold_the_event_loop():
    """Judged off the loop: its worst lag stays far below one judge call (the postprocessor form held it for each)."""
    Settings.embed_model = MockEmbedding(embed_dim=8)

    async def main() -> tuple[list[str], float]:
        await _guarded_tool_retriever(_guard()).aretrieve("Where is Paris?")  # first-call imports, not measured
        retriever = _guarded_tool_retriever(_guard())  # a fresh guard: no verdict cached
        got: list[list[str]] = []

        async def run() -> None:
            got.append(sorted(t.metadata.name for t in await retriever.aretrieve("Where is Paris?")))

        lag = await worst_lag(run)
        return got[0], lag

    names, lag = asyncio.run(main())
    assert names == ["tool_0", "tool_1", "tool_2"]
    assert lag < JUDGE_S / 2  # a ratio of the judge's own time: a held loop waits out the whole call
