"""`GuardedRetriever`: screen the query before searching, and the nodes after.

Wrapping the retriever (rather than the query engine) also covers retrievers used on their own,
inside a ``RetrieverTool`` or by a chat engine. A blocked query never reaches the vector store.
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
