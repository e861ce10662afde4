"""Retrieval screening: `GuardDocumentCompressor` and `GuardedRetriever`.

Retrieved documents are untrusted content: each is checked on its own (one batched guard call per
retrieval, `Guard.check_documents`), so harmful text and injected instructions ("ignore all previous
instructions ...", the Jailbreak category) never reach the prompt. A document is judged whole, its
metadata's text with its page (`document_text`): an app may print a title or a source into the prompt.
Documents keep their order and metadata; the input documents are never mutated (kept ones are copies
when metadata is added).

``on_violation`` (LlamaIndex's pieces call it ``on_block``; an unknown or misspelt option is an error naming it,
`_options`): ``"drop"`` (default) removes blocked documents; ``"raise"`` raises `GuardViolation`
(or `GuardUnavailable` when the guard could not answer and the policy fails closed) for the first
blocked document. Documents the policy lets through but flags (controversial in loose mode, ignored
categories, fail-open errors) are kept with the decision in ``metadata["qwenguard"]`` (replacing what a document
brought there, which is judged as any metadata is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import islice
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForRetrieverRun,
    CallbackManager,
    CallbackManagerForRetrieverRun,
    Callbacks,
)
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, field_validator
from qwenguard.core import Action, Decision, Guard, enforce
from qwenguard.core.formats.identifiers import is_opaque_id
from qwenguard.core.guard import speaking_as

from .._off_loop import OFF_LOOP_SIZE
from . import _out_of_sight as out_of_sight
from ._messages import artifact_text
from ._options import by_keyword, known_fields, refuse_unknown
from ._screening import METADATA_KEY, built_off_loop, require_guard

__all__ = ["GuardDocumentCompressor", "GuardedRetriever", "OnViolation", "document_text"]

OnViolation = Literal["drop", "raise"]

#: What the retrieval pieces are asked for under another name (LlamaIndex's, mostly), with what to write instead.
_HINTS: dict[str, str] = {
    "on_block": 'LlamaIndex\'s name for it: LangChain\'s pieces spell it on_violation ("drop" or "raise")',
    "record_flags": "LlamaIndex's option: here a flagged document always carries its decision in metadata['qwenguard']",
    "screen_query": (
        "LlamaIndex GuardedRetriever's option; no such screen on LangChain: the documents are judged, with the "
        "query as their context; judge the query with guard_input(guard) before the retriever"
    ),
}


def document_text(document: Any, budget: int) -> str:
    """A retrieved document as one text to judge: its ``page_content``, then what a prompt can print of the rest,
    one a line: its ``id``, every metadata key and the strings under it (nested values too, walked by
    `artifact_text` up to ``budget`` characters), bytes read as UTF-8. A template's ``{context}`` slot prints a
    list of documents whole (``str(list)``), ids and keys included: those were skipped as identifiers, and
    instructions planted there reached the model (rt51f F9, rt52e F4, F9). Left out: an id or a metadata str that
    is an opaque identifier (`is_opaque_id`: a store's random UUID beside a safe page made the demo guard drop it,
    rt56c F1), and the guard's own record under ``metadata["qwenguard"]`` (`_GuardRecord`; a value a document
    brings there is judged: rt56c F2). Numbers and other values that are not text add nothing."""
    page = getattr(document, "page_content", None)
    page = page if isinstance(page, str) else ""
    values: list[Any] = []
    own_id = getattr(document, "id", None)
    if isinstance(own_id, str) and own_id and not is_opaque_id(own_id):
        values.append(own_id)
    metadata = getattr(document, "metadata", None)
    if isinstance(metadata, Mapping):
        for key, value in metadata.items():
            if key == METADATA_KEY and isinstance(value, _GuardRecord):
                continue
            values += [key] if is_opaque_id(value) else [key, _as_text(value, budget)]
    extra = artifact_text(values, budget - len(page)) if values else ""
    return "\n".join(t for t in (page, extra) if t)


def _as_text(value: Any, budget: int) -> Any:
    """Bytes as the text they hold (a template prints them too), read only as far as ``budget`` can take."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value[: 4 * (budget + 1)]).decode("utf-8", errors="replace")
    return value


def _texts(documents: Sequence[Document], budget: int) -> list[str]:
    if isinstance(documents, (str, Document)):
        raise TypeError("documents must be a list of Document, not a single value")
    out = []
    for i, doc in enumerate(documents):
        if not isinstance(doc, Document):
            raise TypeError(f"documents[{i}] must be a langchain_core Document, got {type(doc).__name__}")
        out.append(document_text(doc, budget))
    return out


def _read_size(documents: Sequence[Document]) -> Any:
    """What `built_off_loop` should measure of ``documents``: each one's page, id and metadata (it counts a
    `Document` as one item: its metadata would go unmeasured), for no more documents than can tip the scale."""
    if isinstance(documents, (str, Document)) or not isinstance(documents, Sequence):
        return documents  # `_texts` refuses it
    return [
        [doc.page_content, doc.id, doc.metadata] if isinstance(doc, Document) else doc
        for doc in islice(documents, OFF_LOOP_SIZE + 1)
    ]


async def _atexts(documents: Sequence[Document], budget: int) -> list[str]:
    """Async twin of `_texts`: on a worker thread when the documents are large. A page of 4,000 documents with 200
    metadata entries each held the event loop 0.6-1.2 s while it was read into text (rt55b F4)."""
    return await built_off_loop(lambda: _texts(documents, budget), _read_size(documents))


class _GuardRecord(dict[str, Any]):
    """A Decision the guard wrote under ``metadata["qwenguard"]`` (`_apply`): the one value there left unjudged. A
    value a document brings under that key, or one read back from a store (a plain dict again), is judged."""


def _apply(documents: Sequence[Document], decisions: Sequence[Decision], on_violation: OnViolation) -> list[Document]:
    kept: list[Document] = []
    for doc, decision in zip(documents, decisions):
        if not decision.allowed:
            if on_violation == "raise":
                enforce(decision)
            continue
        if decision.action is Action.FLAG:
            record = _GuardRecord(decision.to_dict())
            doc = doc.model_copy(update={"metadata": {**doc.metadata, METADATA_KEY: record}})
        kept.append(doc)
    return kept


class GuardDocumentCompressor(BaseDocumentCompressor):
    """Drops (or raises on) retrieved documents that the guard blocks.

    >>> compressor = GuardDocumentCompressor(guard=guard)                   # doctest: +SKIP
    >>> safe_docs = compressor.compress_documents(docs, query="...")        # doctest: +SKIP

    Works wherever a `BaseDocumentCompressor` goes (e.g. langchain-classic's
    ``ContextualCompressionRetriever``); `GuardedRetriever` needs nothing beyond langchain-core.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    guard: Guard
    on_violation: OnViolation = "drop"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """``GuardDocumentCompressor(guard, on_violation=...)``, the guard positionally too (as LlamaIndex's
        `GuardNodePostprocessor(guard)`); an unknown keyword is an error naming it (pydantic ignored it: `_options`)."""
        if len(args) > 1:
            raise TypeError(
                f"GuardDocumentCompressor(guard, on_violation=...) takes 1 positional argument, got {len(args)}"
            )
        if args:
            if "guard" in kwargs:
                raise TypeError("GuardDocumentCompressor got 'guard' twice (positionally and as a keyword)")
            kwargs["guard"] = args[0]
        refuse_unknown("GuardDocumentCompressor", kwargs, known_fields(type(self)), _HINTS)
        if "guard" not in kwargs:
            raise TypeError("GuardDocumentCompressor needs the guard: GuardDocumentCompressor(guard=guard)")
        super().__init__(**kwargs)

    @field_validator("guard", mode="before")
    @classmethod
    def _check_guard(cls, value: Any) -> Guard:
        return require_guard(value)

    @speaking_as(
        "await compressor.acompress_documents(...), or await retriever.ainvoke(...) for a retriever using it"
        " (not compress_documents / invoke)"
    )
    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        texts = _texts(documents, self.guard.max_chars)
        if not texts:
            return []
        return _apply(documents, self.guard.check_documents(query, texts), self.on_violation)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        texts = await _atexts(documents, self.guard.max_chars)
        if not texts:
            return []
        decisions = await self.guard.acheck_documents(query, texts)
        # Copying a flagged document's metadata grows with it too.
        return await built_off_loop(lambda: _apply(documents, decisions, self.on_violation), _read_size(documents))


class GuardedRetriever(BaseRetriever):
    """Any retriever, with its results screened by a `GuardDocumentCompressor`.

    >>> retriever = GuardedRetriever(store.as_retriever(), guard)            # doctest: +SKIP
    >>> retriever.invoke("What is the capital of France?")                   # doctest: +SKIP

    Built as ``GuardedRetriever(retriever, guard, on_violation="drop")`` (keywords too, as LlamaIndex's
    `GuardedRetriever`), ``GuardedRetriever.wrap(retriever, guard)``, or with a compressor of one's own:
    ``GuardedRetriever(retriever=r, compressor=GuardDocumentCompressor(guard=guard))``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: BaseRetriever
    compressor: GuardDocumentCompressor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """``retriever`` and ``guard`` by position or keyword (pydantic's own errors named neither: ``takes 1
        positional argument``, ``compressor Field required``: rt55c F6); an unknown keyword is an error naming it."""
        by_keyword("GuardedRetriever", ("retriever", "guard"), args, kwargs)
        refuse_unknown("GuardedRetriever", kwargs, {*known_fields(type(self)), "guard", "on_violation"}, _HINTS)
        if isinstance(kwargs.get("retriever"), Guard):
            raise TypeError("GuardedRetriever(retriever, guard): the retriever comes first, and got a Guard")
        if "retriever" not in kwargs:
            raise TypeError("GuardedRetriever needs the retriever: GuardedRetriever(retriever, guard)")
        if "compressor" in kwargs:
            if "guard" in kwargs or "on_violation" in kwargs:
                raise TypeError(
                    "GuardedRetriever takes a guard (and on_violation) or a compressor, not both: GuardedRetriever("
                    "retriever, guard, on_violation=...) or GuardedRetriever(retriever=r, compressor=c)"
                )
        elif "guard" in kwargs:
            guard, on_violation = kwargs.pop("guard"), kwargs.pop("on_violation", "drop")
            kwargs["compressor"] = GuardDocumentCompressor(guard=guard, on_violation=on_violation)
        else:
            raise TypeError(
                "GuardedRetriever needs the guard: GuardedRetriever(retriever, guard) or "
                "GuardedRetriever.wrap(retriever, guard)"
            )
        super().__init__(**kwargs)

    @classmethod
    def wrap(cls, retriever: BaseRetriever, guard: Guard, *, on_violation: OnViolation = "drop") -> GuardedRetriever:
        """``retriever`` screened by ``guard``: the same as ``GuardedRetriever(retriever, guard, ...)``."""
        return cls(retriever, guard, on_violation=on_violation)

    # The inner retriever runs out of sight of the caller's callbacks (`_out_of_sight`): its run's end carries every
    # document it found, the ones dropped here too, to ``astream_events`` / ``astream_log`` consumers and tracers;
    # and a `GuardCallbackHandler` beside this would judge them there and stop the whole run instead of dropping
    # one. Only the kept documents are reported, as this retriever's own run.
    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        inner, config = self.retriever, out_of_sight.config_without_callbacks(callbacks=CallbackManager(handlers=[]))
        docs = out_of_sight.call(lambda: inner.invoke(query, config))
        return list(self.compressor.compress_documents(docs, query))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        manager = AsyncCallbackManager(handlers=[])
        inner, config = self.retriever, out_of_sight.config_without_callbacks(callbacks=manager)
        docs = await out_of_sight.acall(lambda: inner.ainvoke(query, config))
        return list(await self.compressor.acompress_documents(docs, query))
