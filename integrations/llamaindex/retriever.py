"""`GuardedRetriever`: screen the query before searching, and the nodes after.

Wrapping the retriever (rather than the query engine) also covers retrievers used on their own,
inside a ``RetrieverTool`` or by a chat engine. A blocked query never reaches the vector store.
It must be the outermost retriever: one around it that fetches or expands nodes (``AutoMergingRetriever``'s
parents, ``RecursiveRetriever``'s other retrievers) returns nodes it never saw.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import NodeWithScore, QueryBundle
from qwenguard.core import Guard, enforce

from .._common import require_guard
from .postprocessor import OnBlock, ascreen_nodes, screen_nodes

__all__ = ["GuardedRetriever"]


class GuardedRetriever(BaseRetriever):
    """Wrap ``retriever``: the query is screened as a prompt (`GuardViolation` when blocked), then
    the retrieved nodes as untrusted documents (dropped, or raised on with ``on_block="raise"``).

    >>> engine = RetrieverQueryEngine.from_args(GuardedRetriever(index.as_retriever(), guard))  # doctest: +SKIP

    ``screen_query=False`` skips the query check (e.g. when a `GuardedLLM` already screens it).
    What ``retrieve``/``aretrieve`` return is judged: LlamaIndex's ``retrieve`` expands the IndexNodes left
    in the list (their ``obj``, an ``object_map``) after ``_retrieve``, so what an expansion adds is judged
    then (`_judged_expansion`).
    """

    def __init__(
        self,
        retriever: BaseRetriever,
        guard: Guard,
        *,
        on_block: OnBlock = "drop",
        screen_query: bool = True,
        callback_manager: CallbackManager | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(retriever, BaseRetriever):
            raise TypeError(f"retriever must be a LlamaIndex BaseRetriever, got {type(retriever).__name__}")
        require_guard(guard)
        if on_block not in ("drop", "raise"):
            raise ValueError(f"on_block must be 'drop' or 'raise', got {on_block!r}")
        self._retriever = retriever
        self.guard = guard
        self.on_block: OnBlock = on_block
        self.screen_query = screen_query
        super().__init__(callback_manager=callback_manager or retriever.callback_manager, **kwargs)

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"retriever": self._retriever}

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self.screen_query:
            enforce(self.guard.check_prompt(query_bundle.query_str))
        nodes = self._retriever.retrieve(query_bundle)
        return screen_nodes(self.guard, nodes, query_bundle.query_str, self.on_block)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self.screen_query:
            enforce(await self.guard.acheck_prompt(query_bundle.query_str))
        nodes = await self._retriever.aretrieve(query_bundle)
        return await ascreen_nodes(self.guard, nodes, query_bundle.query_str, self.on_block)

    # `BaseRetriever.retrieve` runs these on what `_retrieve` let through: an IndexNode whose object is a node, a
    # retriever or a query engine is replaced by what that returns, which `_retrieve` never saw.
    def _handle_recursive_retrieval(self, query_bundle: QueryBundle, nodes: list[NodeWithScore]) -> list[NodeWithScore]:
        expanded = super()._handle_recursive_retrieval(query_bundle, nodes)
        added = _added(expanded, nodes)
        if not added:
            return expanded
        return _judged_expansion(
            expanded, added, screen_nodes(self.guard, added, query_bundle.query_str, self.on_block)
        )

    async def _ahandle_recursive_retrieval(
        self, query_bundle: QueryBundle, nodes: list[NodeWithScore]
    ) -> list[NodeWithScore]:
        expanded = await super()._ahandle_recursive_retrieval(query_bundle, nodes)
        added = _added(expanded, nodes)
        if not added:
            return expanded
        kept = await ascreen_nodes(self.guard, added, query_bundle.query_str, self.on_block)
        return _judged_expansion(expanded, added, kept)


def _added(expanded: list[NodeWithScore], judged: list[NodeWithScore]) -> list[NodeWithScore]:
    """What an expansion put in the list: the items that are not the ones judged (by identity)."""
    before = {id(n) for n in judged}
    return [n for n in expanded if id(n) not in before]


def _judged_expansion(
    expanded: list[NodeWithScore], added: list[NodeWithScore], kept: list[NodeWithScore]
) -> list[NodeWithScore]:
    """``expanded`` without the added items the guard did not keep, in its order."""
    dropped = {id(n) for n in added} - {id(n) for n in kept}
    return [n for n in expanded if id(n) not in dropped]
