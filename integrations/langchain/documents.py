"""Retrieval screening: `GuardDocumentCompressor` and `GuardedRetriever`.

Retrieved documents are untrusted content: each is checked on its own (one batched guard call per
retrieval, `Guard.check_documents`), so harmful text and injected instructions ("ignore all previous
instructions ...", the Jailbreak category) never reach the prompt. A document is judged whole, its
metadata's text with its page (`document_text`): an app may print a title or a source into the prompt.
Documents keep their order and metadata; the input documents are never mutated (kept ones are copies
when metadata is added).

``on_violation``: ``"drop"`` (default) removes blocked documents; ``"raise"`` raises `GuardViolation`
(or `GuardUnavailable` when the guard could not answer and the policy fails closed) for the first
blocked document. Documents the policy lets through but flags (controversial in loose mode, ignored
categories, fail-open errors) are kept with the decision in ``metadata["qwenguard"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

from . import _out_of_sight as out_of_sight
from ._messages import artifact_text
from ._screening import METADATA_KEY, require_guard

__all__ = ["GuardDocumentCompressor", "GuardedRetriever", "OnViolation", "document_text"]

OnViolation = Literal["drop", "raise"]


def document_text(document: Any, budget: int) -> str:
    """A retrieved document as one text to judge: its ``page_content``, then what a prompt can print of the rest,
    one a line: its ``id``, every metadata key and the strings under it (nested values too, walked by
    `artifact_text` up to ``budget`` characters), bytes read as UTF-8; qwenguard's own record left out. A template's
    ``{context}`` slot prints a list of documents whole (``str(list)``), ids and keys included: those were skipped
    as identifiers, and instructions planted there reached the model (rt51f F9, rt52e F4, F9). Numbers and other
    values that are not text add nothing."""
    page = getattr(document, "page_content", None)
    page = page if isinstance(page, str) else ""
    values: list[Any] = []
    own_id = getattr(document, "id", None)
    if isinstance(own_id, str) and own_id:
        values.append(own_id)
    metadata = getattr(document, "metadata", None)
    if isinstance(metadata, Mapping):
        for key, value in metadata.items():
            if key != METADATA_KEY:
                values += [key, _as_text(value, budget)]
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


def _apply(documents: Sequence[Document], decisions: Sequence[Decision], on_violation: OnViolation) -> list[Document]:
    kept: list[Document] = []
    for doc, decision in zip(documents, decisions):
        if not decision.allowed:
            if on_violation == "raise":
                enforce(decision)
            continue
        if decision.action is Action.FLAG:
            doc = doc.model_copy(update={"metadata": {**doc.metadata, METADATA_KEY: decision.to_dict()}})
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

    @field_validator("guard", mode="before")
    @classmethod
    def _check_guard(cls, value: Any) -> Guard:
        return require_guard(value)

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
        texts = _texts(documents, self.guard.max_chars)
        if not texts:
            return []
        return _apply(documents, await self.guard.acheck_documents(query, texts), self.on_violation)


class GuardedRetriever(BaseRetriever):
    """Any retriever, with its results screened by a `GuardDocumentCompressor`.

    >>> retriever = GuardedRetriever.wrap(store.as_retriever(), guard)       # doctest: +SKIP
    >>> retriever.invoke("What is the capital of France?")                   # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: BaseRetriever
    compressor: GuardDocumentCompressor

    @classmethod
    def wrap(cls, retriever: BaseRetriever, guard: Guard, *, on_violation: OnViolation = "drop") -> GuardedRetriever:
        """``retriever`` screened by ``guard``."""
        return cls(retriever=retriever, compressor=GuardDocumentCompressor(guard=guard, on_violation=on_violation))

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
