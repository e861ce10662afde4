"""`GuardNodePostprocessor`: screen retrieved nodes before they reach the LLM.

Each node is judged on its own as untrusted content, a query's nodes in batches of at most the guard's
``max_checks`` (``Guard.check_documents``, `node_decisions`): harmful text and injected instructions ("ignore all
previous instructions...") are dropped, or stop the query, before the synthesizer puts them in a prompt.

It goes after the postprocessors that fetch or reorder nodes without an LLM (one after it that fetches nodes,
``PrevNextNodePostprocessor``, adds nodes the guard never saw) and before any that reads nodes with an LLM
(``LLMRerank`` would prompt its LLM with the unjudged nodes), unless that LLM is a `GuardedLLM`; a retriever that
reads nodes with an LLM needs a `GuardedLLM` (docs/llamaindex.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from string import Formatter
from typing import Any, Literal, TypeVar

from llama_index.core.bridge.pydantic import BaseModel as PydanticModel
from llama_index.core.bridge.pydantic import Field
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import (
    BaseComponent,
    BaseNode,
    ImageNode,
    IndexNode,
    MediaResource,
    MetadataMode,
    NodeWithScore,
    ObjectType,
    QueryBundle,
)
from qwenguard.core import Decision, Guard, enforce
from qwenguard.core.errors import InputTooLarge
from qwenguard.core.formats.conversations import untrusted_conversation
from qwenguard.core.formats.identifiers import is_opaque_id
from qwenguard.core.formats.windows import CALL_WINDOW_ACCOUNT, WindowAccount, window_budget
from qwenguard.core.guard import speaking_as
from qwenguard.core.policy import Action
from qwenguard.core.verdict import Stage

from .._common import require_guard
from ._component import GuardComponent
from ._messages import media_data_text, value_strings
from .memory import GuardMissing

__all__ = ["GuardNodePostprocessor", "OnBlock", "screen_nodes", "ascreen_nodes"]

logger = logging.getLogger("qwenguard.llamaindex")

OnBlock = Literal["drop", "raise"]
T = TypeVar("T")

#: Where the Decision of a node that was let through (allowed or flagged) is recorded.
DECISION_METADATA_KEY = "qwenguard_decision"


def node_text(node: BaseNode, max_chars: int | None = None) -> str:
    """Everything a node shows its readers, as one text: what the LLM reads (its text, with the metadata the
    synthesizer prints), then what that text does not hold: the raw text (``get_content()``: formatted sources,
    `CitationQueryEngine`) when the node's ``text_template`` leaves it out, and every metadata entry that text does
    not show, every string its value holds (`value_strings`) and its key unless that is a field name. The app gets
    the metadata with the node (a sources panel), and a replacement postprocessor swaps a value in for the text
    (the sentence-window pattern's ``window``). Then its id and its relationships' ids and metadata, as the app
    gets them (`_related_texts`), an opaque id (`is_opaque_id`) left out; of the guard's own record
    (`DECISION_METADATA_KEY`), only what the guard wrote is left out. Which entries the LLM text shows is up to
    the node's templates, not only ``excluded_llm_metadata_keys``: ``text_template="{content}"`` shows none,
    ``metadata_template="{key}"`` no value (`_shown_keys`). An `IndexNode`'s object is read too: a node
    (retrieval expands the IndexNode into it) as this function reads it, plain data for its strings; a retriever
    or query engine answers only at query time (`GuardedRetriever` judges what it returns). Read within
    ``max_chars`` (the guard's): `InputTooLarge` past it, as the guard raises for a text that long."""
    budget = sys.maxsize if max_chars is None else max_chars
    parts: list[str] = []
    size = 0
    stack: list[BaseNode] = [node]
    walked: set[int] = set()  # an object chain that loops is read once
    while stack:
        if size > budget:
            raise InputTooLarge(f"node {node.node_id} holds over max_chars={budget:,} characters of text")
        current = stack.pop()
        if id(current) in walked:
            continue
        walked.add(id(current))
        size += 1  # an empty node counts: a chain of them is bounded too
        found = _own_texts(current, budget, size)
        parts += found
        size += sum(len(t) + 2 for t in found)
        obj = current.obj if isinstance(current, IndexNode) else None
        if isinstance(obj, NodeWithScore):
            obj = obj.node
        if isinstance(obj, BaseNode):
            stack.append(obj)
        elif _plain(obj):
            found = value_strings(obj, max(0, budget - size), f"node {current.node_id}'s object")
            parts += found
            size += sum(len(t) + 2 for t in found)
    return "\n\n".join(t for t in parts if t)


def _own_texts(node: BaseNode, budget: int, size: int) -> list[str]:
    """A node's LLM text, then what it does not show: its raw text, its media's captions and the text their data
    hold (`_media_data`), its other metadata entries, its id and its relationships (`_related_texts`)."""
    metadata = node.metadata  # read once: `_record` replaces the dict, never changes it in place
    text = node.get_content(metadata_mode=MetadataMode.LLM)
    found = [text]
    size += len(text)
    raw = node.get_content(metadata_mode=MetadataMode.NONE)
    if raw.strip() and raw.strip() not in text:
        found.append(raw)
        size += len(raw) + 2
    for media in _MEDIA:  # a multimodal node's caption or transcript, which `get_content` leaves out
        resource = getattr(node, media, None)
        caption = getattr(resource, "text", None)
        if isinstance(caption, str) and caption.strip() and caption.strip() not in text:
            found.append(caption)
            size += len(caption) + 2
    # Bounded by the whole budget, not what is left of it: data the node already shows is left out only once
    # decoded, and a payload repeating its text was refused unread (rt71i F3).
    for data in _media_data(node, budget):
        if data.strip() and data.strip() not in text:
            found.append(data)
            size += len(data) + 2
    shown = _shown_keys(node, metadata, text)
    for key, value in metadata.items():
        if key in shown or (key == DECISION_METADATA_KEY and isinstance(value, _GuardRecord)):
            continue  # a value planted under the guard's key is judged like any other (rt56c F2)
        strings = _entry_texts(key, value, budget, size, f"node {node.node_id}'s metadata {key!r}")
        found += strings
        size += sum(len(t) + 2 for t in strings)
    strings = _related_texts(node, metadata, budget, size)
    return found + strings


def _media_data(node: BaseNode, budget: int | None = None) -> list[str]:
    """The text a node's media data hold (`media_data_text`): an `ImageNode`'s base64 ``image`` and its ``image_url``,
    a multimodal `Node`'s resources' ``data`` and ``url``. A multimodal engine sends them to the model as blocks
    (``image_node_to_image_block``), which read as text where their bytes are text (rt70c F1); a real image's are
    none, and only their start is decoded to tell. Inline data and ``data:`` URLs only: no path is read, no URL
    fetched. ``budget``: the node's ``max_chars``: `InputTooLarge` before data whose size alone proves its text
    longer is decoded (rt71 BC)."""
    pairs: list[tuple[Any, Any, str | None]]
    if isinstance(node, ImageNode):
        # Its inline image is read untyped, as LlamaIndex sends it (the block's type guessed from the bytes): a real
        # PNG labelled text/plain was decoded whole as text, judged and dropped (rt70n F2); text is read any way.
        pairs = [(node.image, None, None), (None, node.image_url, node.image_mimetype)]
    else:
        resources = [getattr(node, media, None) for media in _MEDIA]
        pairs = [(r.data, None, r.mimetype) for r in resources if isinstance(r, MediaResource)]
        pairs += [(None, r.url, r.mimetype) for r in resources if isinstance(r, MediaResource)]
    try:
        return [t for data, url, mimetype in pairs if (t := media_data_text(data, url, mimetype, budget))]
    except InputTooLarge as exc:
        raise InputTooLarge(f"node {node.node_id} holds over max_chars characters of text: {exc}") from exc


def _entry_texts(key: Any, value: Any, budget: int, size: int, what: str) -> list[str]:
    """A metadata entry's key, unless a field name, and every string its value holds; a str value that is an
    opaque id (`is_opaque_id`) says nothing and is left out."""
    name = str(key)
    found = [name] if name.strip() else []  # a key can be words too ("mix_ammonium_nitrate_with_...": rt51g F3)
    if isinstance(value, str):
        return found + ([value] if value.strip() and not is_opaque_id(value) else [])
    return found + value_strings(value, max(0, budget - size - len(name) - 2), what)


def _related_texts(node: BaseNode, metadata: Mapping[Any, Any], budget: int, size: int) -> list[str]:
    """What a node shows of itself besides its text and metadata, each unless an opaque id: its id
    (``get_formatted_sources()`` prints "Source (Doc id: ...)", ``response.metadata`` is keyed by it), an
    `IndexNode`'s ``index_id``, and each relationship's id (the SOURCE one is ``ref_doc_id``), hash, type and
    metadata (the SOURCE one keeps the document's metadata even where the splitter left it off the node,
    ``include_metadata=False``), less the entries the node's own metadata holds too (read above): rt56c F1."""
    ids: list[str] = []
    found: list[str] = []

    def read_ids(*values: Any) -> None:
        nonlocal size
        for value in values:
            if isinstance(value, str) and value.strip() and not is_opaque_id(value):
                ids.append(value)
                size += len(value) + 2

    read_ids(node.node_id, getattr(node, "index_id", None) if isinstance(node, IndexNode) else None)
    for kind, related in list(node.relationships.items()):
        for info in related if isinstance(related, list) else [related]:
            node_type = getattr(info, "node_type", None)
            read_ids(getattr(info, "node_id", None), getattr(info, "hash", None))
            read_ids(None if isinstance(node_type, ObjectType) else node_type)
            for key, value in dict(getattr(info, "metadata", None) or {}).items():
                if key in metadata and _same(metadata[key], value):
                    continue
                if key == DECISION_METADATA_KEY and isinstance(value, _GuardRecord):
                    continue
                what = f"node {node.node_id}'s {getattr(kind, 'name', kind)} relationship metadata {key!r}"
                strings = _entry_texts(key, value, budget, size, what)
                found += strings
                size += sum(len(t) + 2 for t in strings)
                if size > budget:
                    raise InputTooLarge(f"node {node.node_id} holds over max_chars={budget:,} characters of text")
    return ids + found


def _same(a: Any, b: Any) -> bool:
    """``a == b`` for metadata values, false where the comparison fails or is not a truth value (arrays)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 -- a value that cannot compare is read, not skipped
        return False


class _GuardRecord(dict[str, Any]):
    """A Decision the guard wrote under `DECISION_METADATA_KEY` (`_record`): the one value there left unjudged. A
    value a document brings under that key (a plain dict, a str: ingested metadata is its author's), or one read
    back from a store (a plain dict again), is judged as any metadata is."""


#: A multimodal `Node`'s media, each with a ``text`` an app can show beside it.
_MEDIA = ("image_resource", "audio_resource", "video_resource")

#: Metadata values whose ``str`` is the whole of what they hold (a container's ``str`` is a repr: read apart).
_SCALARS = (str, int, float, bool, type(None))


def _shown_keys(node: BaseNode, metadata: Mapping[Any, Any], text: str) -> set[str]:
    """The metadata keys whose entry (key and value, as ``metadata_template`` prints them) the LLM text ``text``
    holds: none when the template leaves out ``{key}`` or ``{value}`` (or changes one with a format spec or a
    conversion), or when the printed metadata is not in the text (a ``text_template`` without ``{metadata_str}``)."""
    excluded = set(node.excluded_llm_metadata_keys)
    keys = {k for k, v in metadata.items() if k not in excluded and isinstance(v, _SCALARS)}
    if not keys or not {"key", "value"} <= _plain_fields(node.metadata_template):
        return set()
    printed = node.get_metadata_str(mode=MetadataMode.LLM).strip()
    return keys if printed and printed in text else set()


def _plain_fields(template: str) -> set[str]:
    """The fields ``template`` prints as they are (no format spec, no conversion)."""
    try:
        parsed = list(Formatter().parse(template))
    except ValueError:
        return set()
    return {name for _, name, spec, conversion in parsed if name and not spec and not conversion}


def _plain(obj: Any) -> bool:
    """An `IndexNode` object read for its strings: data, not a retriever, query engine or index (what those hold
    is not what they return; `GuardedRetriever` judges what retrieval expands them into)."""
    return (
        isinstance(obj, (str, Mapping, list, tuple, set, frozenset))
        or (isinstance(obj, PydanticModel) and not isinstance(obj, BaseComponent))
        or (dataclasses.is_dataclass(obj) and not isinstance(obj, type))
    )


def _measured(guard: Guard, nodes: Sequence[BaseNode], on_block: OnBlock) -> tuple[list[str], dict[int, Decision]]:
    """The texts to judge, and a blocked Decision for each node (by position) too large to judge. With
    ``on_block="raise"`` a node too large raises `InputTooLarge`, as before; with ``"drop"`` it is dropped (fail
    closed for that node) and the others are judged: one planted page must not fail every query that finds it."""
    if on_block == "raise":
        return [node_text(n, guard.max_chars) for n in nodes], {}
    texts: list[str] = []
    unjudged: dict[int, Decision] = {}
    for i, node in enumerate(nodes):
        try:
            text = node_text(node, guard.max_chars)
            if len(text) > guard.max_chars:
                raise InputTooLarge(f"node {node.node_id} shows {len(text):,} characters, over max_chars")
        except InputTooLarge as exc:
            unjudged[i] = _too_large(guard, exc)
            continue
        texts.append(text)
    return texts, unjudged


def _too_large(guard: Guard, exc: InputTooLarge) -> Decision:
    """The blocked Decision of a node too large to judge, heard by the audit listeners as any decision is."""
    decision = Decision(False, Action.BLOCK, Stage.RETRIEVAL, "guard_error", error=f"too large: {exc}")
    guard._emit(decision)
    return decision


def _merged(count: int, decisions: Sequence[Decision], unjudged: dict[int, Decision]) -> list[Decision]:
    judged = iter(decisions)
    return [unjudged[i] if i in unjudged else next(judged) for i in range(count)]


# A query's or an ingestion run's nodes are as many as its retriever or its documents make: one guard call holds
# at most ``max_checks`` of them (a SummaryIndex over 4,100 documents stopped answering: rt64f F2), each batch its
# own call. A batch over a size limit (``max_windows_per_call``: one long page made every query that retrieved it
# fail, rt64f F1) is judged again in halves, each a call of its own, so that only a node that cannot be judged is
# decided without a verdict: dropped as `_measured` drops one over ``max_chars``, or raised on. The guard's
# ``max_windows_per_call`` bounds the whole step, every batch and half of it (`window_budget`): the operator's
# bound on one integration step's guard work, which splitting a step into calls must not multiply. A call refused
# for it ran no model work and is not charged (`_call_of`); once the step's budget is spent, the nodes left are
# decided without another call.
def _batches(guard: Guard, texts: Sequence[str]) -> list[Sequence[str]]:
    """``texts`` in batches of at most the guard's ``max_checks``, in order."""
    size = guard.max_checks  # at least 1: the Guard refuses less
    return [texts[i : i + size] for i in range(0, len(texts), size)]


def _spent(step: WindowAccount | None) -> bool:
    """Is the step's window budget used up (no call can be judged within it)?"""
    return step is not None and step.used >= step.budget


def _step_spent(step: WindowAccount | None) -> InputTooLarge:
    budget = step.budget if step is not None else 0
    return InputTooLarge(
        f"this step's nodes need more than {budget} guard windows in all; judge fewer nodes at once, or raise the "
        "budget (max_windows_per_call)"
    )


def _unfitted(guard: Guard, texts: Sequence[str], exc: InputTooLarge, on_block: OnBlock) -> list[Decision]:
    """``texts`` that no call can judge within the limits: raised on, or each decided too large."""
    if on_block == "raise":
        raise exc
    return [_too_large(guard, exc) for _ in texts]


def _put_back(guard: Guard, texts: Sequence[str], exc: InputTooLarge, on_block: OnBlock) -> list[Decision]:
    """The Decisions of ``texts`` after a call refused some of them alone (``exc.too_large``): those too large
    (`_unfitted`: raised on, or dropped), the others as the call decided them (``exc.decided``)."""
    refused = iter(_unfitted(guard, [texts[i] for i in exc.too_large], exc, on_block))
    return [next(refused) if d is None else d for d in exc.decided]


@contextmanager
def _call_of(step: WindowAccount | None) -> Iterator[None]:
    """One call of the step: its windows are charged to the step only once it is judged (or judged but for some
    nodes too large alone). The backends charge a call's windows as they plan each conversation, so a call refused
    for its budget had charged those before it, for no model work: charged to the step as they came, they spent
    its budget for nothing."""
    if step is None:
        yield
        return
    room, account = step.budget - step.used, step.outer
    while account is not None:  # a budget around the step bounds its calls too
        room, account = min(room, account.budget - account.used), account.outer
    if room < 1:
        raise _step_spent(step)
    call = WindowAccount(room)  # no outer account: the step (and those around it) is charged below, once
    token = CALL_WINDOW_ACCOUNT.set(call)
    try:
        yield
    except InputTooLarge as exc:
        if exc.too_large:  # refused for some nodes alone: the model judged the others (`_fitted`)
            step.charge(call.used)
        raise
    finally:
        CALL_WINDOW_ACCOUNT.reset(token)
    step.charge(call.used)  # within every budget: the call's own bound was the least room they had


def _asked(stage: Stage, texts: Sequence[str]) -> list[tuple[Stage, list[dict[str, str]]]]:
    """A batch as `Guard.check_documents` asks it (each text untrusted content), under another stage."""
    return [(stage, untrusted_conversation(t, f"document {i}")) for i, t in enumerate(texts)]


def _fitted(
    guard: Guard,
    query: str | None,
    texts: Sequence[str],
    on_block: OnBlock,
    step: WindowAccount | None,
    stage: Stage = Stage.RETRIEVAL,
) -> list[Decision]:
    """One batch's Decisions, in order: the batch halved where it is over a size limit (above)."""
    if _spent(step):
        return _unfitted(guard, texts, _step_spent(step), on_block)
    try:
        with _call_of(step):
            if stage is Stage.RETRIEVAL:
                return guard.check_documents(query, texts)
            return guard.check_many(_asked(stage, texts))
    except InputTooLarge as exc:
        if len(texts) == 1:
            return _unfitted(guard, texts, exc, on_block)
        if exc.too_large:  # those nodes alone: the others were judged, their decisions on the error
            return _put_back(guard, texts, exc, on_block)
        half = len(texts) // 2
        first = _fitted(guard, query, texts[:half], on_block, step, stage)
        return first + _fitted(guard, query, texts[half:], on_block, step, stage)


async def _afitted(
    guard: Guard,
    query: str | None,
    texts: Sequence[str],
    on_block: OnBlock,
    step: WindowAccount | None,
    stage: Stage = Stage.RETRIEVAL,
) -> list[Decision]:
    """Async twin of `_fitted`."""
    if _spent(step):
        return _unfitted(guard, texts, _step_spent(step), on_block)
    try:
        with _call_of(step):  # this task's context: the call's planning reads it (a worker thread gets a copy)
            if stage is Stage.RETRIEVAL:
                return await guard.acheck_documents(query, texts)
            return await guard.acheck_many(_asked(stage, texts))
    except InputTooLarge as exc:
        if len(texts) == 1:
            return _unfitted(guard, texts, exc, on_block)
        if exc.too_large:
            return _put_back(guard, texts, exc, on_block)
        half = len(texts) // 2
        first = await _afitted(guard, query, texts[:half], on_block, step, stage)
        return first + await _afitted(guard, query, texts[half:], on_block, step, stage)


def node_decisions(
    guard: Guard, nodes: Sequence[BaseNode], on_block: OnBlock, query: str | None = None, stage: Stage = Stage.RETRIEVAL
) -> list[Decision]:
    """One Decision per node, in order, the nodes judged in batches of at most ``max_checks`` (`_fitted`; `_measured`
    for nodes too large to read), all within the guard's ``max_windows_per_call``; asked under ``stage`` (the
    retrieval stage's, or another's for the tools an agent is handed: `GuardedObjectRetriever`)."""
    texts, unjudged = _measured(guard, nodes, on_block)
    with window_budget(guard.max_windows_per_call) as step:
        decisions = [d for batch in _batches(guard, texts) for d in _fitted(guard, query, batch, on_block, step, stage)]
    return _merged(len(nodes), decisions, unjudged)


async def anode_decisions(
    guard: Guard, nodes: Sequence[BaseNode], on_block: OnBlock, query: str | None = None, stage: Stage = Stage.RETRIEVAL
) -> list[Decision]:
    """Async twin of `node_decisions`. The nodes are read on a worker thread: a page of nodes with large hidden
    metadata is seconds of reading, which held the event loop (rt51g F2)."""
    texts, unjudged = await asyncio.to_thread(_measured, guard, nodes, on_block)
    decisions: list[Decision] = []
    with window_budget(guard.max_windows_per_call) as step:  # this task's context: the calls below read it
        for batch in _batches(guard, texts):
            decisions += await _afitted(guard, query, batch, on_block, step, stage)
    return _merged(len(nodes), decisions, unjudged)


def live_guard(component: Any) -> Guard:
    """The component's guard, or `GuardMissing` for a copy that lost it to pickling (LlamaIndex drops what does not
    pickle: an ``IngestionPipeline`` with ``num_workers > 1`` runs such copies in worker processes)."""
    guard = component.__dict__.get("guard")
    if guard is None:
        name = type(component).__name__
        raise GuardMissing(
            f"this {name} has no guard: it is a pickled copy, and a Guard does not pickle (IngestionPipeline.run("
            f"num_workers=N > 1) sends its transformations to worker processes that way). Run the pipeline with "
            f"num_workers=None (the default) or 1, or judge the nodes with {name} in this process"
        )
    return guard


def keep_allowed(
    items: Sequence[T], decisions: Sequence[Decision], on_block: OnBlock, record: bool, node_of: Callable[[T], BaseNode]
) -> list[T]:
    """The items whose decision allows them (flags recorded in the node's metadata when ``record``); a
    blocked one is dropped (logged) or raises, per ``on_block``. ``node_of`` finds the node in an item."""
    kept: list[T] = []
    for item, decision in zip(items, decisions):
        if decision.allowed:
            if record and decision.action.value == "flag":
                _record(node_of(item), decision)
            kept.append(item)
        elif on_block == "raise":
            enforce(decision)
        else:
            logger.info("qwenguard dropped node %s: %s", node_of(item).node_id, decision.describe())
    return kept


def _record(node: BaseNode, decision: Decision) -> None:
    """Keep a flag's Decision in the node's metadata, out of what the LLM and the embedding model read (the
    synthesizer would print it into the prompt); it replaces what the key held. The excluded keys first, and the
    metadata a new dict: another thread may be reading a node shared between queries (rt56c: "dictionary changed
    size during iteration")."""
    for field in ("excluded_llm_metadata_keys", "excluded_embed_metadata_keys"):
        keys = getattr(node, field)
        if DECISION_METADATA_KEY not in keys:
            setattr(node, field, [*keys, DECISION_METADATA_KEY])  # a new list: nodes may share one
    node.metadata = {**node.metadata, DECISION_METADATA_KEY: _GuardRecord(decision.to_dict())}


def _apply(
    nodes: Sequence[NodeWithScore], decisions: Sequence[Decision], on_block: OnBlock, record: bool
) -> list[NodeWithScore]:
    return keep_allowed(nodes, decisions, on_block, record, lambda n: n.node)


def screen_nodes(
    guard: Guard, nodes: Sequence[NodeWithScore], query: str | None, on_block: OnBlock = "drop", record: bool = True
) -> list[NodeWithScore]:
    """The nodes the guard lets through (``on_block="drop"``), or `GuardViolation` (``"raise"``)."""
    if not nodes:
        return []
    return _apply(nodes, node_decisions(guard, [n.node for n in nodes], on_block, query), on_block, record)


async def ascreen_nodes(
    guard: Guard, nodes: Sequence[NodeWithScore], query: str | None, on_block: OnBlock = "drop", record: bool = True
) -> list[NodeWithScore]:
    """Async twin of `screen_nodes`."""
    if not nodes:
        return []
    return _apply(nodes, await anode_decisions(guard, [n.node for n in nodes], on_block, query), on_block, record)


#: What the event-loop warning tells a sync query inside async code to use (`speaking_as`).
_ASYNC_TWIN = (
    "await engine.aquery(...) / await postprocessor.apostprocess_nodes(...) (not query / postprocess_nodes); "
    "where LlamaIndex calls the sync one from async code (an ObjectRetriever: an agent's tool_retriever), "
    "a GuardedObjectRetriever in its place (docs/llamaindex.md)"
)


class GuardNodePostprocessor(GuardComponent, BaseNodePostprocessor):
    """Drop (or raise on) retrieved nodes the guard blocks.

    >>> engine = index.as_query_engine(node_postprocessors=[GuardNodePostprocessor(guard=guard)])  # doctest: +SKIP

    - ``on_block="drop"`` (default): blocked nodes are removed and the answer is built from the rest.
      ``"raise"``: the first blocked node raises `GuardViolation` and the query stops.
    - Nodes let through with a flag (controversial in a loose policy, fail-open guard errors) carry
      the Decision in ``node.metadata["qwenguard_decision"]`` (``record_flags=False`` turns this off).
    - Guard errors follow the guard's policy: fail closed (default) treats the node as blocked. A node over the
      guard's ``max_chars``, or alone over a call's limits (``max_windows_per_call``), cannot be judged: dropped
      (``"raise"``: `InputTooLarge`), never passed unread. Many nodes are judged in batches (`node_decisions`).
    - Put it after postprocessors that fetch nodes (``PrevNextNodePostprocessor`` would add unjudged ones), and
      before those that prompt an LLM with them (``LLMRerank``), unless that LLM is a `GuardedLLM`.
    """

    guard: Any = Field(exclude=True, description="The qwenguard Guard.")
    on_block: OnBlock = Field(default="drop", description="'drop' blocked nodes, or 'raise' GuardViolation.")
    record_flags: bool = Field(default=True, description="Record flagged decisions in node metadata.")

    def __init__(self, guard: Guard, **kwargs: Any) -> None:
        require_guard(guard)
        super().__init__(guard=guard, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "GuardNodePostprocessor"

    @speaking_as(_ASYNC_TWIN)
    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = query_bundle.query_str if query_bundle is not None else None
        return screen_nodes(live_guard(self), nodes, query, self.on_block, self.record_flags)

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = query_bundle.query_str if query_bundle is not None else None
        return await ascreen_nodes(live_guard(self), nodes, query, self.on_block, self.record_flags)
