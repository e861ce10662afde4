"""rt51c: what retrieval and ingestion hand on, judged whole.

- F5: a node's ``text_template``/``metadata_template`` decide what its LLM text shows; metadata (or text) they hide
  reached the app's sources unjudged.
- F10: `GuardedRetriever`'s ``retrieve`` expanded IndexNodes after judging; `GuardTransform` never read
  ``IndexNode.obj``.
- F7: nodes kept by `GuardTransform` linked to dropped ones: `AutoMergingRetriever` raised.
- F3: one node too large to judge failed the whole batch in drop mode.
- F9: a flag's Decision was printed into the LLM's prompt.
- F8: a pipeline run with ``num_workers`` failed with an AttributeError.

Real LlamaIndex indexes, engines and pipelines, the real `OpenAILike` against tests/scripted_openai.py, a
keyword oracle judge. What reaches a consumer is counted in characters of the clause."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio
import random

import pytest
from faults import ScriptedBackend
from li_shared import openai_like
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import HierarchicalNodeParser, get_leaf_nodes
from llama_index.core.postprocessor import MetadataReplacementPostProcessor
from llama_index.core.query_engine import CitationQueryEngine, RetrieverQueryEngine
from llama_index.core.retrievers import AutoMergingRetriever
from llama_index.core.schema import (
    IndexNode,
    MediaResource,
    MetadataMode,
    Node,
    NodeRelationship,
    NodeWithScore,
    TextNode,
)
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.core.errors import InputTooLarge
from qwenguard.integrations.llamaindex import (
    GuardedLLM,
    GuardedRetriever,
    GuardMissing,
    GuardNodePostprocessor,
    GuardTransform,
)
from qwenguard.integrations.llamaindex.postprocessor import DECISION_METADATA_KEY, node_text
from scripted_openai import Reply, scripted_openai

CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
SAFE = "Paris is the capital of France."
QUESTION = "What is the capital of France?"


def verdict(conversation) -> str:
    last = conversation[-1]
    if "ammonium" in last["content"]:
        head = "Safety: Unsafe\nCategories: Violent"
    elif "lock" in last["content"]:
        head = "Safety: Controversial\nCategories: Non-violent Illegal Acts"
    else:
        head = "Safety: Safe\nCategories: None"
    return head + ("\nRefusal: No" if last["role"] == "assistant" else "")


def oracle(**kwargs) -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(verdict, name="oracle")
    policy = kwargs.pop("policy", Policy(timeout_s=None))
    return Guard(backend, policy, cache_size=0, **kwargs), backend


def clause_chars(text: str) -> int:
    """Characters of the clause in ``text`` (all of it when any of it shows)."""
    return len(CLAUSE) if "ammonium" in text else 0


def shown_to_app(nodes) -> str:
    """Everything an app reads from the nodes it is handed: text, raw text, metadata, objects."""
    return "".join(
        n.node.get_content(MetadataMode.NONE) + n.node.get_content(MetadataMode.LLM) + repr(n.node.metadata)
        for n in nodes
    )


def index_of(*nodes, **kwargs) -> VectorStoreIndex:
    return VectorStoreIndex(list(nodes), embed_model=MockEmbedding(embed_dim=8), **kwargs)


# -- F5: metadata and text a node's templates hide ---------------------------------------------------
HIDING = {
    "text_template_without_metadata": lambda: TextNode(
        text=SAFE, metadata={"summary": CLAUSE}, text_template="{content}"
    ),
    "metadata_template_without_value": lambda: TextNode(
        text=SAFE, metadata={"summary": CLAUSE}, metadata_template="{key}"
    ),
    "text_template_without_content": lambda: TextNode(
        text=CLAUSE, metadata={"summary": SAFE}, text_template="{metadata_str}"
    ),
    "content_cut_by_a_format_spec": lambda: TextNode(
        text=SAFE + " " + CLAUSE, metadata={"title": "Cities"}, text_template="{metadata_str}\n\n{content:.31}"
    ),
}


@pytest.mark.parametrize("make", list(HIDING.values()), ids=list(HIDING))
def test_a_query_engine_hands_no_text_the_templates_hid(make) -> None:
    guard, _ = oracle()
    index = index_of(make(), TextNode(text="The Eiffel Tower is in Paris."))
    with scripted_openai([Reply.words("Paris.")]) as url:
        engine = index.as_query_engine(
            llm=GuardedLLM(llm=openai_like(url), guard=guard),
            similarity_top_k=5,
            node_postprocessors=[GuardNodePostprocessor(guard=guard)],
        )
        response = engine.query(QUESTION)
        sent = "".join(str(r.body) for r in url.requests)
    shown = shown_to_app(response.source_nodes) + repr(response.metadata) + response.get_formatted_sources(10**5)
    assert clause_chars(shown) == 0
    assert clause_chars(sent) == 0
    assert [n.node.text for n in response.source_nodes] == ["The Eiffel Tower is in Paris."]


@pytest.mark.parametrize("template", ["text_template", "metadata_template"])
def test_a_window_swap_after_the_guard_sends_the_llm_no_hidden_value(template: str) -> None:
    """The sentence-window pattern with ``screen_context=False``: the swapped-in value was judged."""
    guard, _ = oracle()
    node = HIDING[
        "text_template_without_metadata" if template == "text_template" else "metadata_template_without_value"
    ]()
    with scripted_openai([Reply.words("Paris.")]) as url:
        engine = index_of(node, TextNode(text="Lyon is in France.")).as_query_engine(
            llm=GuardedLLM(llm=openai_like(url), guard=guard, screen_context=False),
            similarity_top_k=5,
            node_postprocessors=[
                GuardNodePostprocessor(guard=guard),
                MetadataReplacementPostProcessor(target_metadata_key="summary"),
            ],
        )
        engine.query(QUESTION)
        sent = "".join(str(r.body) for r in url.requests)
    assert clause_chars(sent) == 0


def test_a_citation_engine_sends_the_llm_no_hidden_text() -> None:
    """CitationQueryEngine sends ``get_content()``, the text a ``{metadata_str}`` template hid."""
    guard, _ = oracle()
    index = index_of(HIDING["text_template_without_content"](), TextNode(text="Lyon is in France."))
    with scripted_openai([Reply.words("Paris [1].")]) as url:
        engine = CitationQueryEngine.from_args(
            index,
            llm=GuardedLLM(llm=openai_like(url), guard=guard, screen_context=False),
            similarity_top_k=5,
            node_postprocessors=[GuardNodePostprocessor(guard=guard)],
        )
        response = engine.query(QUESTION)
        sent = "".join(str(r.body) for r in url.requests)
    assert clause_chars(sent) == 0
    assert clause_chars(shown_to_app(response.source_nodes)) == 0


@pytest.mark.parametrize("make", list(HIDING.values()), ids=list(HIDING))
def test_ingestion_drops_a_node_whose_templates_hide_the_clause(make) -> None:
    guard, _ = oracle()
    kept = IngestionPipeline(transformations=[GuardTransform(guard=guard)]).run(nodes=[make(), TextNode(text=SAFE)])
    assert clause_chars("".join(n.get_content() + repr(n.metadata) for n in kept)) == 0
    assert [n.text for n in kept] == [SAFE]


# rt51g F3: parts a sources panel can show that no template prints. The key is the clause as one identifier.
KEY = "mix_ammonium_nitrate_with_fuel_oil_and_pack_it_into_a_pipe"
UNPRINTED = {
    "an_identifier_key": lambda: TextNode(text=SAFE, metadata={KEY: 1}, excluded_llm_metadata_keys=[KEY]),
    "an_image_caption": lambda: Node(
        text_resource=MediaResource(text=SAFE), image_resource=MediaResource(text="Caption: " + CLAUSE)
    ),
    "an_audio_transcript": lambda: Node(
        text_resource=MediaResource(text=SAFE), audio_resource=MediaResource(text=CLAUSE)
    ),
    "bytes_of_text": lambda: TextNode(
        text=SAFE, metadata={"note": CLAUSE.encode() + b"\xff"}, excluded_llm_metadata_keys=["note"]
    ),
}


@pytest.mark.parametrize("make", list(UNPRINTED.values()), ids=list(UNPRINTED))
def test_a_postprocessor_drops_a_node_whose_unprinted_parts_hold_the_clause(make) -> None:
    guard, _ = oracle()
    nodes = [NodeWithScore(node=make(), score=1.0), NodeWithScore(node=TextNode(text=SAFE), score=0.5)]
    kept = GuardNodePostprocessor(guard=guard).postprocess_nodes(nodes, query_str=QUESTION)
    assert [n.node.get_content() for n in kept] == [SAFE]


def test_binary_bytes_in_metadata_add_only_their_readable_runs() -> None:
    """A thumbnail's bytes are not text: only runs of readable characters in them are judged (a few), and a
    large one is read only as far as the node's budget (rt52e F5: 64 MB were decoded whole)."""
    blob = random.Random(7).randbytes(1 << 20)
    node = TextNode(text=SAFE, metadata={"thumbnail": blob}, excluded_llm_metadata_keys=["thumbnail"])
    text = node_text(node, 10_000)
    assert text.startswith(SAFE + "\n\nthumbnail") and len(text) < 2_000


@pytest.mark.parametrize(
    "data",
    [
        CLAUSE.encode() + b"\xff" * 12,  # padded to look binary (rt52e F1)
        CLAUSE.encode("utf-16"),
        "\ufffd".join(CLAUSE.split(" ")).encode(),
    ],
    ids=["junk_padding", "utf16", "replacement_chars"],
)
def test_text_hidden_in_metadata_bytes_is_judged(data: bytes) -> None:
    guard, _ = oracle()
    node = TextNode(text=SAFE, metadata={"note": data}, excluded_llm_metadata_keys=["note"])
    nodes = [NodeWithScore(node=node, score=1.0), NodeWithScore(node=TextNode(text=SAFE), score=0.5)]
    kept = GuardNodePostprocessor(guard=guard).postprocess_nodes(nodes, query_str=QUESTION)
    assert len(kept) == 1 and kept[0].node.metadata == {}


def test_shown_metadata_is_judged_once() -> None:
    """A node with the default templates: its judged text is what the LLM reads, nothing twice."""
    node = TextNode(text=SAFE, metadata={"title": "Cities", "year": 2024})
    assert node_text(node, 10_000) == node.get_content(MetadataMode.LLM)


def test_the_callback_handler_stops_a_node_whose_template_hides_the_clause() -> None:
    """The handlers judge retrieval with the same text: the callback handler stops the query there."""
    from llama_index.core.callbacks import CallbackManager
    from qwenguard.core import Stage
    from qwenguard.integrations.llamaindex import GuardCallbackHandler

    guard, _ = oracle()
    manager = CallbackManager([GuardCallbackHandler(guard)])
    retriever = index_of(HIDING["text_template_without_metadata"]()).as_retriever()
    retriever.callback_manager = manager
    with scripted_openai([Reply.words("Paris.")]) as url:
        engine = RetrieverQueryEngine.from_args(retriever, llm=openai_like(url), callback_manager=manager)
        with pytest.raises(GuardViolation) as blocked:
            engine.query(QUESTION)
        assert url.requests == []
    assert blocked.value.decision.stage is Stage.RETRIEVAL


def test_the_event_handler_records_a_node_whose_template_hides_the_clause() -> None:
    from llama_index.core.instrumentation import get_dispatcher
    from qwenguard.integrations.llamaindex import GuardEventHandler

    guard, _ = oracle()
    retriever = index_of(HIDING["metadata_template_without_value"]()).as_retriever()
    handler = GuardEventHandler(guard=guard).attach()
    try:
        retriever.retrieve(QUESTION)
    finally:
        get_dispatcher().event_handlers.remove(handler)
    assert handler.counts[("retrieval", "block")] == 1, dict(handler.counts)


# -- F10: IndexNode objects --------------------------------------------------------------------------
def _nested_index() -> VectorStoreIndex:
    """A summary IndexNode whose object is a chunk's IndexNode whose object is the poisoned chunk (the inner
    retriever expands one level, the GuardedRetriever's ``retrieve`` the next)."""
    chunk = TextNode(text="Notes: " + CLAUSE, id_="chunk")
    chunk_ref = IndexNode(text="Chunk about France.", index_id="chunk", obj=chunk)
    summary = IndexNode(text="A summary: France facts.", index_id="summary", obj=chunk_ref)
    return index_of(TextNode(text=SAFE), objects=[summary])


def test_guarded_retriever_judges_what_an_expansion_returns() -> None:
    guard, _ = oracle()
    retriever = GuardedRetriever(_nested_index().as_retriever(similarity_top_k=5), guard)
    got = retriever.retrieve(QUESTION)
    assert clause_chars(shown_to_app(got)) == 0
    assert [n.node.text for n in got] == [SAFE]


def test_guarded_retriever_judges_what_an_expansion_returns_async() -> None:
    guard, _ = oracle()
    retriever = GuardedRetriever(_nested_index().as_retriever(similarity_top_k=5), guard)
    got = asyncio.run(retriever.aretrieve(QUESTION))
    assert clause_chars(shown_to_app(got)) == 0
    assert [n.node.text for n in got] == [SAFE]


class _PoisonedRetriever(BaseRetriever):
    """Another source an IndexNode points at (a sub-index's retriever)."""

    def _retrieve(self, query_bundle):
        return [NodeWithScore(node=TextNode(text=CLAUSE), score=1.0), NodeWithScore(node=TextNode(text="Lyon."))]


@pytest.mark.parametrize("on_block", ["drop", "raise"])
def test_guarded_retriever_judges_its_object_maps_retriever(on_block: str) -> None:
    """An IndexNode the inner retriever cannot expand, expanded through GuardedRetriever's ``object_map``."""
    guard, _ = oracle()
    inner = index_of(IndexNode(text="More about French cities.", index_id="cities")).as_retriever()
    retriever = GuardedRetriever(inner, guard, on_block=on_block, object_map={"cities": _PoisonedRetriever()})
    if on_block == "raise":
        with pytest.raises(GuardViolation):
            retriever.retrieve(QUESTION)
        return
    got = retriever.retrieve(QUESTION)
    assert clause_chars(shown_to_app(got)) == 0
    assert [n.node.text for n in got] == ["Lyon."]


def test_expansion_costs_no_check_when_nothing_is_expanded() -> None:
    guard, backend = oracle()
    GuardedRetriever(index_of(TextNode(text=SAFE)).as_retriever(), guard, screen_query=False).retrieve(QUESTION)
    assert len(backend.calls) == 1  # the retrieved node's one batch


def test_ingestion_reads_an_index_nodes_object() -> None:
    guard, _ = oracle()
    poisoned = IndexNode(text="A summary: France facts.", index_id="s", obj=TextNode(text=CLAUSE))
    kept = IngestionPipeline(transformations=[GuardTransform(guard=guard)]).run(nodes=[poisoned, TextNode(text=SAFE)])
    assert [n.text for n in kept] == [SAFE]
    got = index_of(*kept).as_retriever(similarity_top_k=5).retrieve(QUESTION)
    assert clause_chars(shown_to_app(got)) == 0


def test_ingestion_reads_an_index_nodes_plain_data_object() -> None:
    guard, _ = oracle()
    poisoned = IndexNode(text="A summary.", index_id="s", obj={"notes": [CLAUSE]})
    kept = GuardTransform(guard=guard)([poisoned, TextNode(text=SAFE)])
    assert [n.text for n in kept] == [SAFE]


# -- F7: links to dropped nodes ----------------------------------------------------------------------
def _hierarchy() -> list:
    text = f"{SAFE} {CLAUSE} Lyon is a city. Nice is on the coast. Lille is in the north."
    guard, _ = oracle()
    parser = HierarchicalNodeParser.from_defaults(chunk_sizes=[512, 32])
    return IngestionPipeline(transformations=[parser, GuardTransform(guard=guard)]).run(documents=[Document(text=text)])


def test_auto_merging_over_guarded_ingestion_answers() -> None:
    nodes = _hierarchy()
    storage = StorageContext.from_defaults()
    storage.docstore.add_documents(nodes)
    index = VectorStoreIndex(get_leaf_nodes(nodes), storage_context=storage, embed_model=MockEmbedding(embed_dim=8))
    retriever = AutoMergingRetriever(index.as_retriever(similarity_top_k=10), storage, simple_ratio_thresh=0.3)
    got = retriever.retrieve(QUESTION)
    assert got and clause_chars(shown_to_app(got)) == 0


def test_kept_nodes_link_only_to_kept_nodes_and_the_input_is_untouched() -> None:
    guard, _ = oracle()
    prev = TextNode(text=CLAUSE, id_="prev")
    node = TextNode(text=SAFE, id_="kept")
    node.relationships[NodeRelationship.PREVIOUS] = prev.as_related_node_info()
    node.relationships[NodeRelationship.PARENT] = prev.as_related_node_info()
    node.relationships[NodeRelationship.CHILD] = [prev.as_related_node_info()]
    (kept,) = GuardTransform(guard=guard)([prev, node])
    assert kept.node_id == "kept" and kept.relationships == {}
    assert set(node.relationships) == {NodeRelationship.PREVIOUS, NodeRelationship.PARENT, NodeRelationship.CHILD}


def test_guarded_retriever_outermost_judges_merged_parents() -> None:
    """The order docs/llamaindex.md asks for (rt51c F6): GuardedRetriever around AutoMergingRetriever judges the
    parents it merges leaves into (the other way round, a parent holding a dropped leaf came back)."""
    guard, _ = oracle()
    text = f"{SAFE} {CLAUSE} Lyon is a city. Nice is on the coast. Lille is in the north."
    nodes = HierarchicalNodeParser.from_defaults(chunk_sizes=[512, 32]).get_nodes_from_documents([Document(text=text)])
    storage = StorageContext.from_defaults()
    storage.docstore.add_documents(nodes)
    index = VectorStoreIndex(get_leaf_nodes(nodes), storage_context=storage, embed_model=MockEmbedding(embed_dim=8))
    merging = AutoMergingRetriever(index.as_retriever(similarity_top_k=10), storage, simple_ratio_thresh=0.3)
    got = GuardedRetriever(merging, guard).retrieve(QUESTION)
    assert clause_chars(shown_to_app(got)) == 0


# -- F3: a node too large to judge -------------------------------------------------------------------
def _planted() -> TextNode:
    """A page whose comments (hidden from the LLM, read by the guard) are over the guard's max_chars."""
    return TextNode(
        text="A harmless page about France.",
        metadata={"comments": ["nice page " * 50] * 10},
        excluded_llm_metadata_keys=["comments"],
    )


def test_drop_mode_drops_a_node_too_large_to_judge() -> None:
    guard, _ = oracle(max_chars=4000)
    index = index_of(TextNode(text=SAFE), _planted(), TextNode(text=CLAUSE), TextNode(text="A" * 5000))
    with scripted_openai([Reply.words("Paris.")]) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=guard)
        engine = index.as_query_engine(
            llm=llm, similarity_top_k=5, node_postprocessors=[GuardNodePostprocessor(guard=guard)]
        )
        assert str(engine.query(QUESTION)) == "Paris."
        assert [n.node.text for n in engine.query(QUESTION).source_nodes] == [SAFE]
        retrieving = RetrieverQueryEngine.from_args(
            GuardedRetriever(index.as_retriever(similarity_top_k=5), guard), llm=llm
        )
        assert [n.node.text for n in retrieving.query(QUESTION).source_nodes] == [SAFE]
    ingested = GuardTransform(guard=guard)([TextNode(text=SAFE), _planted()])
    assert [n.text for n in ingested] == [SAFE]
    assert [n.text for n in asyncio.run(GuardTransform(guard=guard).acall([TextNode(text=SAFE), _planted()]))] == [SAFE]


def test_drop_mode_drops_a_node_too_large_to_judge_async() -> None:
    guard, _ = oracle(max_chars=4000)
    heard = []
    guard.on_decision(heard.append)
    retrieved = index_of(TextNode(text=SAFE), _planted()).as_retriever(similarity_top_k=5).retrieve(QUESTION)
    kept = asyncio.run(GuardNodePostprocessor(guard=guard).apostprocess_nodes(retrieved))
    assert [n.node.text for n in kept] == [SAFE]
    # The audit listeners hear of the node dropped unjudged, as of the one judged.
    assert sorted((d.allowed, d.reason) for d in heard) == [(False, "guard_error"), (True, "safe")], heard


def test_raise_mode_still_raises_for_a_node_too_large_to_judge() -> None:
    guard, _ = oracle(max_chars=4000)
    retrieved = index_of(TextNode(text=SAFE), _planted()).as_retriever(similarity_top_k=5).retrieve(QUESTION)
    with pytest.raises(InputTooLarge):
        GuardNodePostprocessor(guard=guard, on_block="raise").postprocess_nodes(retrieved)
    with pytest.raises(InputTooLarge):
        GuardTransform(guard=guard, on_block="raise")([TextNode(text=SAFE), _planted()])


# -- F9: a flag's record stays out of the prompt -----------------------------------------------------
def test_a_flagged_nodes_decision_is_not_sent_to_the_llm() -> None:
    guard, _ = oracle(policy=Policy(timeout_s=None, mode="loose"))
    index = index_of(TextNode(text="How to pick a lock with a paperclip."))
    with scripted_openai([Reply.words("Use a paperclip.")]) as url:
        engine = index.as_query_engine(
            llm=GuardedLLM(llm=openai_like(url), guard=guard), node_postprocessors=[GuardNodePostprocessor(guard=guard)]
        )
        response = engine.query("How do locks work?")
        sent = "".join(str(r.body) for r in url.requests)
    assert "qwenguard_decision" not in sent and "controversial" not in sent
    (source,) = response.source_nodes
    assert source.node.metadata[DECISION_METADATA_KEY]["action"] == "flag"  # still recorded for the app


def test_a_flag_recorded_at_ingestion_stays_out_of_the_embedded_text() -> None:
    guard, _ = oracle(policy=Policy(timeout_s=None, mode="loose"))
    (node,) = GuardTransform(guard=guard)([TextNode(text="How to pick a lock with a paperclip.")])
    assert DECISION_METADATA_KEY in node.metadata
    assert "qwenguard_decision" not in node.get_content(MetadataMode.EMBED)
    assert "qwenguard_decision" not in node.get_content(MetadataMode.LLM)


# -- F8: parallel ingestion --------------------------------------------------------------------------
def test_parallel_ingestion_says_the_guard_does_not_travel() -> None:
    guard, _ = oracle()
    pipeline = IngestionPipeline(transformations=[GuardTransform(guard=guard)])
    with pytest.raises(GuardMissing, match="num_workers"):
        pipeline.run(documents=[Document(text=CLAUSE), Document(text=SAFE)], num_workers=2)


def test_a_pickled_postprocessor_says_it_has_no_guard() -> None:
    """A copy made by pickling (a saved workflow Context, a worker process) cannot carry the guard."""
    import pickle

    guard, _ = oracle()
    copy = pickle.loads(pickle.dumps(GuardNodePostprocessor(guard=guard)))
    retrieved = index_of(TextNode(text=CLAUSE)).as_retriever().retrieve(QUESTION)
    with pytest.raises(GuardMissing, match="pickled copy"):
        copy.postprocess_nodes(retrieved)


def test_async_screening_reads_nodes_off_the_event_loop(monkeypatch) -> None:
    """rt51g F2: `anode_decisions` read every node (its hidden metadata too) on the event loop: 16 nodes with large
    hidden tag lists held it 0.7 s. The nodes are read on a worker thread."""
    import threading

    from qwenguard.integrations.llamaindex import postprocessor

    threads: list[threading.Thread] = []
    real = postprocessor.node_text
    monkeypatch.setattr(
        postprocessor, "node_text", lambda *a, **k: threads.append(threading.current_thread()) or real(*a, **k)
    )
    guard, _ = oracle()
    retrieved = (
        index_of(TextNode(text=SAFE), TextNode(text="Paris is lovely."))
        .as_retriever(similarity_top_k=5)
        .retrieve(QUESTION)
    )

    async def screen() -> list:
        loop_thread = threading.current_thread()
        kept = await GuardNodePostprocessor(guard=guard).apostprocess_nodes(retrieved)
        return [kept, loop_thread]

    kept, loop_thread = asyncio.run(screen())
    assert len(kept) == 2 and threads and loop_thread not in threads
