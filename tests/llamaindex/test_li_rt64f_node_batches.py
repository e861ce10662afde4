"""rt64f: node screening failed a whole query (or ingestion run) for one long node or for many nodes.

F1: with the documented ``Guard(max_windows_per_call=...)`` budget, one long retrieved page (under ``max_chars``)
made the one ``check_documents`` call over all the query's nodes raise `InputTooLarge`, ``on_block="drop"`` too:
every query that retrieved it failed. F2: more than
``max_checks`` (4,096) nodes in one postprocess, retrieve or transform call raised `InputTooLarge` at default
settings (a SummaryIndex over 4,100 documents stopped answering). Now the nodes are judged in batches of at most
``max_checks``, a batch over a size limit again in halves: only a node too large alone is decided without a
verdict (dropped, or raised on), and the unsafe node is still blocked in the batched path. The budget bounds the
whole step, every call of it: nodes past it are dropped (or raised on), never passed unread.

Real components: LlamaIndex's VectorStoreIndex, SummaryIndex, IngestionPipeline and MockEmbedding, an LLM that
records what it read (`Reader`); the demo guard's planner and model for the window budget (a refused call runs no
model work), the keyword judge (`keyword_verdict`) for the batch counts.
"""

from __future__ import annotations

from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from li_scripted import Reader
from li_shared import INJECTED_DOC, SAFE_DOCS, UNSAFE_DOC
from llama_index.core import Document, SummaryIndex, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, TextNode
from qwenguard.core import Guard, GuardViolation, Policy, Stage
from qwenguard.core.errors import InputTooLarge
from qwenguard.integrations.llamaindex import (
    GuardCallbackHandler,
    GuardedRetriever,
    GuardNodePostprocessor,
    GuardTransform,
)

#: Safe facts the demo guard allows, one guard window each.
FACTS = [
    *SAFE_DOCS,
    "Lyon is a city in France.",
    "The Seine flows through Paris.",
    "Marseille is a port on the Mediterranean Sea.",
    "The Louvre is a museum in Paris.",
]
#: The planted page: 60,000 characters, well under max_chars, past the budget of windows on its own.
PAGE = ("The river is calm and the bridges are old. " * 1_400)[:60_000]
PAGE_WORDS = "bridges are old"
BUDGET = 8  # windows one guard call (and one step) may plan: FACTS need 6, an unsafe or injected node one more


@pytest.fixture()
def budget_guard(guard: Guard) -> Guard:
    """The demo guard with the documented per-call window budget; no cache, so every batch plans its windows."""
    return Guard(guard.backend, Policy(timeout_s=None), max_windows_per_call=BUDGET, cache_size=0)


def keyword_guard(**limits: int) -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"), Policy(timeout_s=None), **limits)


def vector_index(texts: list[str]) -> VectorStoreIndex:
    """Every text retrieved by every query (constant embeddings)."""
    return VectorStoreIndex([TextNode(text=t) for t in texts], embed_model=MockEmbedding(embed_dim=8))


def reading_llm() -> tuple[MockFunctionCallingLLM, Reader]:
    reader = Reader("Noted.")
    return MockFunctionCallingLLM(response_generator=reader, is_chat_model=True), reader


async def ask(engine, twin: str, query: str = "What is in France?"):
    return engine.query(query) if twin == "sync" else await engine.aquery(query)


def read_text(reader: Reader) -> str:
    return "\n".join(reader.read)


def handled_engine(index: VectorStoreIndex | SummaryIndex, llm: MockFunctionCallingLLM, guard: Guard):
    """A query engine whose retriever and engine report to a `GuardCallbackHandler` (every node retrieved)."""
    manager = CallbackManager([GuardCallbackHandler(guard)])
    retriever = index.as_retriever(similarity_top_k=10) if isinstance(index, VectorStoreIndex) else index.as_retriever()
    retriever.callback_manager = manager
    return RetrieverQueryEngine.from_args(retriever, llm=llm, callback_manager=manager)


# -- F1: one long page, many short nodes, under a window budget ------------------------------------------------


@pytest.mark.parametrize("twin", ["sync", "async"])
async def test_a_planted_long_page_is_dropped_and_the_query_answered(budget_guard: Guard, twin: str) -> None:
    """The attack: a 60,000-character page planted where every query retrieves it, beside the facts and an unsafe
    node. It failed every such query with `InputTooLarge`; now it is dropped unread, the unsafe node is blocked, and
    the facts answer."""
    llm, reader = reading_llm()
    engine = vector_index([*FACTS, UNSAFE_DOC, PAGE]).as_query_engine(
        llm=llm, similarity_top_k=10, node_postprocessors=[GuardNodePostprocessor(guard=budget_guard)]
    )
    response = await ask(engine, twin)
    assert sorted(n.node.get_content() for n in response.source_nodes) == sorted(FACTS)
    read = read_text(reader)
    assert all(fact in read for fact in FACTS)
    assert "ammonium" not in read and PAGE_WORDS not in read
    assert "ammonium" not in str(response) and PAGE_WORDS not in str(response)


@pytest.mark.parametrize("twin", ["sync", "async"])
async def test_raise_mode_answers_many_short_nodes_and_raises_on_a_page_too_large_alone(
    budget_guard: Guard, twin: str
) -> None:
    """``on_block="raise"``: the facts answer the query; a page that cannot be judged alone still raises, and the LLM
    reads nothing."""
    llm, reader = reading_llm()
    raising = [GuardNodePostprocessor(guard=budget_guard, on_block="raise")]
    engine = vector_index(FACTS).as_query_engine(llm=llm, similarity_top_k=10, node_postprocessors=raising)
    response = await ask(engine, twin)
    assert sorted(n.node.get_content() for n in response.source_nodes) == sorted(FACTS)
    assert all(fact in read_text(reader) for fact in FACTS)

    llm, reader = reading_llm()
    engine = vector_index([*FACTS, PAGE]).as_query_engine(llm=llm, similarity_top_k=10, node_postprocessors=raising)
    with pytest.raises(InputTooLarge):
        await ask(engine, twin)
    assert reader.read == []


@pytest.mark.parametrize("twin", ["sync", "async"])
async def test_guarded_retriever_drops_the_long_page_and_the_unsafe_node(budget_guard: Guard, twin: str) -> None:
    retriever = GuardedRetriever(
        vector_index([*FACTS, INJECTED_DOC, PAGE]).as_retriever(similarity_top_k=10), budget_guard
    )
    query = "What is in France?"
    nodes = retriever.retrieve(query) if twin == "sync" else await retriever.aretrieve(query)
    assert sorted(n.node.get_content() for n in nodes) == sorted(FACTS)


@pytest.mark.parametrize("twin", ["sync", "async"])
async def test_an_upload_with_a_long_page_is_ingested_without_it(budget_guard: Guard, twin: str) -> None:
    """An ingestion run over an upload holding the long page: it failed whole; now the page and the unsafe document
    are left out of the index, the facts kept."""
    docs = [Document(text=t) for t in [*FACTS, UNSAFE_DOC, PAGE]]
    pipeline = IngestionPipeline(transformations=[GuardTransform(guard=budget_guard)])
    nodes = pipeline.run(documents=docs) if twin == "sync" else await pipeline.arun(documents=docs)
    assert sorted(n.get_content() for n in nodes) == sorted(FACTS)


def test_callback_handler_judges_many_short_nodes_and_raises_on_a_page_too_large_alone(budget_guard: Guard) -> None:
    """The handler cannot drop a node: the facts answer; a page that cannot be judged alone stops the query before
    the LLM reads anything."""
    llm, reader = reading_llm()
    response = handled_engine(vector_index(FACTS), llm, budget_guard).query("What is in France?")
    assert len(response.source_nodes) == len(FACTS)
    assert all(fact in read_text(reader) for fact in FACTS)

    llm, reader = reading_llm()
    engine = handled_engine(vector_index([*FACTS, PAGE]), llm, budget_guard)
    with pytest.raises(InputTooLarge):
        engine.query("What is in France?")
    assert reader.read == []


@pytest.mark.parametrize("twin", ["sync", "async"])
async def test_the_budget_bounds_the_whole_step_not_each_call_of_it(guard: Guard, twin: str) -> None:
    """Judging a step's nodes in several calls must not multiply the operator's ``max_windows_per_call``: with a budget
    of 4 windows, four of the six facts (one window each) are judged and the other two dropped unjudged, never passed
    unread (``on_block="raise"``: `InputTooLarge`, the LLM reads nothing)."""
    small = Guard(guard.backend, Policy(timeout_s=None), max_windows_per_call=4, cache_size=0)
    llm, reader = reading_llm()
    engine = vector_index(FACTS).as_query_engine(
        llm=llm, similarity_top_k=10, node_postprocessors=[GuardNodePostprocessor(guard=small)]
    )
    response = await ask(engine, twin)
    kept = [n.node.get_content() for n in response.source_nodes]
    assert len(kept) == 4 and set(kept) < set(FACTS)
    read = read_text(reader)
    assert sum(fact in read for fact in FACTS) == 4

    llm, reader = reading_llm()
    raising = [GuardNodePostprocessor(guard=small, on_block="raise")]
    engine = vector_index(FACTS).as_query_engine(llm=llm, similarity_top_k=10, node_postprocessors=raising)
    with pytest.raises(InputTooLarge):
        await ask(engine, twin)
    assert reader.read == []


# -- F2: more nodes than max_checks in one call ----------------------------------------------------------------

#: Past the default max_checks (4,096), the unsafe one last: in the second batch.
MANY = [f"Paris fact {i}: the city has many old bridges." for i in range(4_099)] + [UNSAFE_DOC]


@pytest.fixture(scope="module")
def summary_index() -> SummaryIndex:
    """Its retriever returns every node: 4,100 for each query."""
    return SummaryIndex.from_documents([Document(text=t) for t in MANY])


@pytest.mark.parametrize("twin", ["sync", "async"])
async def test_a_summary_index_over_4100_documents_answers_without_the_unsafe_one(
    summary_index: SummaryIndex, twin: str
) -> None:
    """The user's action: a query over a SummaryIndex of 4,100 documents at default settings. It raised
    `InputTooLarge` (4,100 checks over max_checks); now it answers, the unsafe document blocked in the second batch."""
    guard = keyword_guard()
    llm, reader = reading_llm()
    engine = summary_index.as_query_engine(llm=llm, node_postprocessors=[GuardNodePostprocessor(guard=guard)])
    response = await ask(engine, twin, "What is in Paris?")
    assert len(response.source_nodes) == len(MANY) - 1
    assert all("ammonium" not in n.node.get_content() for n in response.source_nodes)
    assert "Paris fact 4098" in read_text(reader)  # a node of the second batch reached the LLM
    assert "ammonium" not in read_text(reader)


@pytest.mark.parametrize("twin", ["sync", "async"])
async def test_guarded_retriever_returns_past_max_checks_nodes(summary_index: SummaryIndex, twin: str) -> None:
    retriever = GuardedRetriever(summary_index.as_retriever(), keyword_guard())
    query = "What is in Paris?"
    nodes = retriever.retrieve(query) if twin == "sync" else await retriever.aretrieve(query)
    assert len(nodes) == len(MANY) - 1
    assert all("ammonium" not in n.node.get_content() for n in nodes)


@pytest.mark.parametrize("twin", ["sync", "async"])
async def test_an_upload_past_max_checks_is_ingested_without_the_unsafe_document(twin: str) -> None:
    """An upload pushing one ingestion run past max_checks (here 64 for speed: the same batching) failed whole."""
    docs = [Document(text=t) for t in [*MANY[:150], UNSAFE_DOC, *MANY[150:200]]]
    pipeline = IngestionPipeline(transformations=[GuardTransform(guard=keyword_guard(max_checks=64))])
    nodes = pipeline.run(documents=docs) if twin == "sync" else await pipeline.arun(documents=docs)
    assert [n.get_content() for n in nodes] == MANY[:200]


def test_callback_handler_judges_past_max_checks_nodes_and_stops_at_the_unsafe_one() -> None:
    """The handler over a retrieval past max_checks (here 8 for speed: the same batching): it answers, and the
    unsafe node in the third batch stops the query before the LLM reads it."""
    guard = keyword_guard(max_checks=8)
    llm, reader = reading_llm()
    response = handled_engine(SummaryIndex([TextNode(text=t) for t in MANY[:20]]), llm, guard).query(
        "What is in Paris?"
    )
    assert len(response.source_nodes) == 20
    assert "Paris fact 19" in read_text(reader)

    llm, reader = reading_llm()
    nodes = [TextNode(text=t) for t in [*MANY[:17], UNSAFE_DOC, *MANY[17:20]]]
    with pytest.raises(GuardViolation) as info:
        handled_engine(SummaryIndex(nodes), llm, guard).query("What is in Paris?")
    assert info.value.decision.stage is Stage.RETRIEVAL
    assert reader.read == []


def test_the_event_handler_records_a_retrieval_past_max_checks() -> None:
    """``GuardEventHandler`` (an audit observer) judged a retrieval's nodes in one call: past max_checks (here 8) it
    raised inside the handler, which logged the failure and recorded nothing. Now it records every node, the unsafe
    one blocked."""
    from llama_index.core.instrumentation import get_dispatcher
    from qwenguard.integrations.llamaindex import GuardEventHandler

    nodes = [TextNode(text=t) for t in [*MANY[:17], UNSAFE_DOC, *MANY[17:20]]]
    handler = GuardEventHandler(guard=keyword_guard(max_checks=8)).attach()
    try:
        SummaryIndex(nodes).as_retriever().retrieve("What is in Paris?")
    finally:
        get_dispatcher().event_handlers.remove(handler)
    assert handler.counts[("retrieval", "block")] == 1, dict(handler.counts)
    assert handler.counts[("retrieval", "allow")] == 20, dict(handler.counts)


class PlantRefusingBackend(ScriptedBackend):
    """The keyword judge, refusing a conversation whose text holds ``PLANTED`` as too large on its own, as the Gen
    backends refuse one over ``max_windows`` while judging the rest of the call (a per-conversation result)."""

    def _one(self, conversation: Any) -> Any:
        if "PLANTED" in conversation[-1]["content"]:
            return InputTooLarge("this conversation needs more than max_windows=256 windows")
        return super()._one(conversation)


@pytest.mark.parametrize("cache_size", [0, 4096], ids=["cache-off", "cache-on"])
@pytest.mark.parametrize("twin", ["sync", "async"])
async def test_a_node_too_large_alone_costs_the_other_nodes_one_judging(twin: str, cache_size: int) -> None:
    """rt64k F1: the call refused for one planted node had judged every other node, then threw their verdicts away
    before caching them; halving asked the model again for them at every level (64 nodes, one plant: 183 windows
    for 63 nodes; 8 plants: 290). rt64m F3: judged again once (cache hits) they were judged twice with the cache
    off, and a step's window budget spent on them dropped safe nodes. The error carries the other nodes' decisions
    and names the plant: each node judged once, cache or not."""
    backend = PlantRefusingBackend(keyword_verdict, name="kw")
    guard = Guard(backend, Policy(timeout_s=None), cache_size=cache_size)
    texts = [f"Fact {i}: the Seine flows through Paris." for i in range(64)]
    for k in (5, 40):
        texts[k] = f"PLANTED page {k}"
    texts[20] = UNSAFE_DOC
    nodes = [TextNode(text=t) for t in texts]
    processor = GuardNodePostprocessor(guard=guard)
    scored = [NodeWithScore(node=n, score=1.0) for n in nodes]
    kept = processor.postprocess_nodes(scored) if twin == "sync" else await processor.apostprocess_nodes(scored)
    assert [n.node.get_content() for n in kept] == [t for i, t in enumerate(texts) if i not in (5, 20, 40)]
    judged = [c[-1]["content"] for call in backend.calls for c in call if "PLANTED" not in c[-1]["content"]]
    assert sorted(judged) == sorted(t for t in texts if "PLANTED" not in t)  # each once
