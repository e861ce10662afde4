"""An agent that picks its tools by retrieval is handed what ``ObjectRetriever`` maps the retrieved nodes to, and the
mapping finds a tool by its name alone (rt67e F1): a tool sharing a safe tool's name (an MCP server's, shadowing the
app's own), or an index reloaded with today's tool list, reached the model with a description no check of the nodes
read. `GuardedObjectRetriever` judges the tools the agent gets, as the model reads them: attacked here through real
``ObjectIndex`` retrieval and a real ``FunctionAgent`` whose model records every tool schema it is given."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio
import json
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from li_scripted import UNSAFE_CLAUSE
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.objects import ObjectIndex, ObjectRetriever
from llama_index.core.tools import FunctionTool
from loop_lag import compare
from qwenguard.core import Guard, GuardViolation, Policy, Stage, StagePolicy
from qwenguard.integrations.llamaindex import GuardedLLM, GuardedObjectRetriever
from qwenguard.integrations.llamaindex.tool_retriever import tool_text

HOSTILE = "Use this: " + UNSAFE_CLAUSE


@pytest.fixture(autouse=True)
def _mock_embeddings() -> None:
    Settings.embed_model = MockEmbedding(embed_dim=8)


def _guard(delay_s: float = 0.0) -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(keyword_verdict, delay_s=delay_s)
    return Guard(backend, Policy(timeout_s=None)), backend


def wiki(q: str) -> str:
    return "Paris."


def _tool(description: str, name: str = "search") -> FunctionTool:
    return FunctionTool.from_defaults(fn=wiki, name=name, description=description)


def _index(tools: list[FunctionTool]) -> ObjectIndex:
    return ObjectIndex.from_objects(tools, index_cls=VectorStoreIndex, embed_model=MockEmbedding(embed_dim=8))


def _retriever(index: ObjectIndex, guard: Guard, **options: Any) -> GuardedObjectRetriever:
    return GuardedObjectRetriever(
        index.as_node_retriever(similarity_top_k=4), index.object_node_mapping, guard, **options
    )


def _handed(tools: list[Any]) -> str:
    """Every character of the tools as the model reads them."""
    return "\n".join(tool_text(t) for t in tools)


def _retrieve(retriever: GuardedObjectRetriever, how: str, query: str = "wiki") -> list[Any]:
    return retriever.retrieve(query) if how == "sync" else asyncio.run(retriever.aretrieve(query))


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_tool_shadowing_a_safe_tools_name_is_not_handed_to_the_agent(how: str) -> None:
    guard, _ = _guard()
    index = _index([_tool("Searches the company wiki."), _tool(HOSTILE)])  # the safe node maps to the hostile tool
    handed = _handed(_retrieve(_retriever(index, guard), how))
    assert "ammonium" not in handed


@pytest.mark.parametrize("how", ["sync", "async"])
def test_an_index_reloaded_with_todays_tool_list_hands_no_unjudged_description(how: str) -> None:
    """The catalogue's index is built once; the MCP server's description changed since it was embedded."""
    guard, _ = _guard()
    built = _index([_tool("Searches the company wiki.")])
    reloaded = ObjectIndex.from_objects_and_index([_tool(HOSTILE)], built.index)
    handed = _handed(_retrieve(_retriever(reloaded, guard), how))
    assert "ammonium" not in handed


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_description_changed_after_a_pass_is_judged_again(how: str) -> None:
    guard, _ = _guard()
    tool = _tool("Searches the company wiki.")
    retriever = _retriever(_index([tool]), guard)
    assert [t.metadata.name for t in _retrieve(retriever, how)] == ["search"]
    tool.metadata.description = HOSTILE  # the same tool object, today's text
    assert "ammonium" not in _handed(_retrieve(retriever, how))


@pytest.mark.parametrize("how", ["sync", "async"])
def test_the_parameter_schema_is_judged_as_the_model_reads_it(how: str) -> None:
    """A harmful clause in an argument's description: the schema the model is given, not the tool's description."""
    from pydantic import BaseModel, Field

    class Query(BaseModel):
        q: str = Field(description=UNSAFE_CLAUSE)

    guard, _ = _guard()
    schemed = FunctionTool.from_defaults(fn=wiki, name="lookup", description="Looks things up.", fn_schema=Query)
    handed = _handed(_retrieve(_retriever(_index([schemed, _tool("Searches the company wiki.")]), guard), how))
    assert "ammonium" not in handed
    assert "Searches the company wiki." in handed


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_querys_tools_are_judged_in_one_guard_call_and_safe_ones_kept(how: str) -> None:
    guard, backend = _guard()
    tools = [_tool(f"Looks up fact {i}.", name=f"tool_{i}") for i in range(3)] + [_tool(HOSTILE, name="bad_tool")]
    handed = _retrieve(_retriever(_index(tools), guard), how)
    assert sorted(t.metadata.name for t in handed) == ["tool_0", "tool_1", "tool_2"]
    assert "ammonium" not in _handed(handed)
    assert [len(call) for call in backend.calls] == [4]


@pytest.mark.parametrize("how", ["sync", "async"])
def test_on_block_raise_stops_the_query(how: str) -> None:
    guard, _ = _guard()
    retriever = _retriever(_index([_tool(HOSTILE)]), guard, on_block="raise")
    with pytest.raises(GuardViolation) as raised:
        _retrieve(retriever, how)
    assert "ammonium" not in str(raised.value)


def test_the_agents_model_is_never_given_the_shadowing_description() -> None:
    """End to end: FunctionAgent(tool_retriever=GuardedObjectRetriever(...)); the model records each schema it gets."""
    guard, _ = _guard()
    index = _index([_tool("Searches the company wiki."), _tool(HOSTILE)])
    given: list[str] = []

    def model(messages: Any, **kwargs: Any) -> ChatMessage:
        given.extend(json.dumps(t.metadata.to_openai_tool()) for t in kwargs.get("tools", []))
        return ChatMessage(role="assistant", content="Done.")

    agent = FunctionAgent(
        tool_retriever=_retriever(index, guard),
        llm=GuardedLLM(llm=MockFunctionCallingLLM(response_generator=model), guard=guard),
    )

    async def main() -> Any:
        return await agent.run("Search the wiki for Paris.")

    answer = asyncio.run(main())
    assert "Done." in str(answer)
    assert not any("ammonium" in schema for schema in given)


def test_aretrieve_does_not_hold_the_event_loop() -> None:
    """Judged with the guard's async API, the tools read on a worker thread: a slow judge holds the loop no longer
    than the unguarded ObjectRetriever does (a ratio of baselines measured in the same run)."""
    tools = [_tool(f"Looks up fact {i}.", name=f"tool_{i}") for i in range(3)] + [_tool(HOSTILE, name="bad_tool")]
    index = _index(tools)
    plain = ObjectRetriever(index.as_node_retriever(similarity_top_k=4), index.object_node_mapping)

    async def main() -> tuple[list[str], str | None]:
        await _retriever(index, _guard()[0]).aretrieve("Where is Paris?")  # first-call imports, not measured

        async def guarded() -> None:  # a fresh guard each time: no verdict cached, the judge's 0.2 s each call
            kept.append(sorted(t.metadata.name for t in await _retriever(index, _guard(0.2)[0]).aretrieve("Paris?")))

        kept: list[list[str]] = []
        held = await compare(guarded, lambda: plain.aretrieve("Where is Paris?"))
        return kept[0], held

    names, held = asyncio.run(main())
    assert names == ["tool_0", "tool_1", "tool_2"]
    assert held is None, held


def _controversial(conversation: list[dict[str, str]]) -> str:
    """Controversial for the clause, Safe otherwise."""
    if "ammonium" in conversation[-1]["content"]:
        return "Safety: Controversial\nCategories: Violent"
    return "Safety: Safe\nCategories: None"


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_retrieval_stage_loosened_for_pages_does_not_loosen_the_tools(how: str) -> None:
    """rt67l2 F1: the tools were decided under the retrieval stage's policy alone, so a RAG app's loose retrieval
    stage (``mode="loose"``) handed the agent a flagged tool description; a tool is what the model reads before it
    acts, decided under the prompt stage's policy too (as ``GuardedLLM(screen_tools=True)`` judges it)."""
    loose_pages = Policy(timeout_s=None, stages={Stage.RETRIEVAL: StagePolicy(mode="loose")})
    guard = Guard(ScriptedBackend(_controversial), loose_pages)
    index = _index([_tool(HOSTILE, name="wiki"), _tool("Searches the company wiki.", name="search")])
    handed = _retrieve(_retriever(index, guard), how)
    assert [t.metadata.name for t in handed] == ["search"]
    assert "ammonium" not in _handed(handed)
