"""`GuardedRetriever`: screen the query before searching, and the nodes after.

Wrapping the retriever (rather than the query engine) also covers retrievers used on their own,
inside a ``RetrieverTool`` or by a chat engine. A blocked query never reaches the vector store.
It must be the outermost retriever: one around it that fetches or expands nodes (``AutoMergingRetriever``'s
parents, ``RecursiveRetriever``'s other retrievers) returns nodes it never saw.

The wrapped retriever runs out of sight (rt53a F6): its ``retrieve`` would hand every dispatcher handler and its
callback manager (shared with the wrapper: a `GuardCallbackHandler` there stopped the query) the nodes the guard
then drops, so its steps run without their spans and events, and only the wrapper's own report, with what it kept.
An auto-retriever's per-query retriever runs so too (rt53e F4). A retriever whose class has its own ``retrieve``
(``aretrieve``) has that called, its span aside (rt53e F5): its logic (an access filter) stands, and what its body
reports shows.
"""

from __future__ import annotations

from typing import Any, cast

from llama_index.core.base.base_auto_retriever import BaseAutoRetriever
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import IndexNode, NodeWithScore, QueryBundle
from llama_index.core.utils import print_text
from qwenguard.core import Guard, enforce
from qwenguard.core.formats.windows import window_budget
from qwenguard.core.guard import speaking_as

from .._common import require_guard
from ._quiet import overrides, unspanned
from .postprocessor import OnBlock, ascreen_nodes, screen_nodes

__all__ = ["GuardedRetriever"]


def require_retriever_parts(retriever: Any, guard: Any, on_block: Any) -> None:
    """Refuse, with a clear error, what a guarded retriever cannot be built of (a wrapped retriever that is no
    LlamaIndex retriever, a missing guard, an unknown ``on_block``)."""
    if not isinstance(retriever, BaseRetriever):
        raise TypeError(f"retriever must be a LlamaIndex BaseRetriever, got {type(retriever).__name__}")
    require_guard(guard)
    if on_block not in ("drop", "raise"):
        raise ValueError(f"on_block must be 'drop' or 'raise', got {on_block!r}")


class GuardedRetriever(BaseRetriever):
    """Wrap ``retriever``: the query is screened as a prompt (`GuardViolation` when blocked), then
    the retrieved nodes as untrusted documents (dropped, or raised on with ``on_block="raise"``).

    >>> engine = RetrieverQueryEngine.from_args(GuardedRetriever(index.as_retriever(), guard))  # doctest: +SKIP

    ``screen_query=False`` skips the query check (e.g. when a `GuardedLLM` already screens it).
    What ``retrieve``/``aretrieve`` return is judged: LlamaIndex's ``retrieve`` expands the IndexNodes left
    in the list (their ``obj``, an ``object_map``) after ``_retrieve``, so what an expansion adds is judged
    then (`_judged_expansion`). The wrapped retriever (and a retriever an IndexNode stands for) runs without its
    dispatcher spans and callback events (`_quiet_retrieve`): only the nodes kept show, in this one's.
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
        require_retriever_parts(retriever, guard, on_block)
        self._retriever = retriever
        self.guard = guard
        self.on_block: OnBlock = on_block
        self.screen_query = screen_query
        super().__init__(callback_manager=callback_manager or retriever.callback_manager, **kwargs)

    def _get_prompt_modules(self) -> PromptMixinType:
        return {"retriever": self._retriever}

    # One retrieve is one step: what the wrapped retriever returns and what expanding its IndexNodes adds are judged
    # within one ``max_windows_per_call`` (each screening's budget charges this one too); before, each had the whole
    # budget, twice the operator's bound (rt65h F2).
    def retrieve(self, str_or_query_bundle: str | QueryBundle) -> list[NodeWithScore]:
        with window_budget(self.guard.max_windows_per_call):
            return super().retrieve(str_or_query_bundle)

    async def aretrieve(self, str_or_query_bundle: str | QueryBundle) -> list[NodeWithScore]:
        with window_budget(self.guard.max_windows_per_call):  # this task's context: the calls below read it
            return await super().aretrieve(str_or_query_bundle)

    @speaking_as(
        "await retriever.aretrieve(...), or await engine.aquery(...) for a query engine over it (not retrieve / query)"
    )
    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self.screen_query:
            enforce(self.guard.check_prompt(query_bundle.query_str))
        nodes = _quiet_retrieve(self._retriever, query_bundle)
        return screen_nodes(self.guard, nodes, query_bundle.query_str, self.on_block)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        if self.screen_query:
            enforce(await self.guard.acheck_prompt(query_bundle.query_str))
        nodes = await _aquiet_retrieve(self._retriever, query_bundle)
        return await ascreen_nodes(self.guard, nodes, query_bundle.query_str, self.on_block)

    # `BaseRetriever.retrieve` runs these on what `_retrieve` let through: an IndexNode whose object is a node, a
    # retriever or a query engine is replaced by what that returns, which `_retrieve` never saw. A retriever there
    # runs out of sight too (`_quiet_expand`): its events would carry what the guard then drops.
    def _handle_recursive_retrieval(self, query_bundle: QueryBundle, nodes: list[NodeWithScore]) -> list[NodeWithScore]:
        expanded = _quiet_expand(self, query_bundle, nodes, own=True)
        added = _added(expanded, nodes)
        if not added:
            return expanded
        return _judged_expansion(
            expanded, added, screen_nodes(self.guard, added, query_bundle.query_str, self.on_block)
        )

    async def _ahandle_recursive_retrieval(
        self, query_bundle: QueryBundle, nodes: list[NodeWithScore]
    ) -> list[NodeWithScore]:
        expanded = await _aquiet_expand(self, query_bundle, nodes, own=True)
        added = _added(expanded, nodes)
        if not added:
            return expanded
        kept = await ascreen_nodes(self.guard, added, query_bundle.query_str, self.on_block)
        return _judged_expansion(expanded, added, kept)


# -- the wrapped retriever, out of sight ------------------------------------------------------------------------
# `BaseRetriever.retrieve` is `_check_callback_manager`, the query bundle, a dispatcher span with a
# RetrievalStart/EndEvent, a legacy RETRIEVE event (both carrying the nodes), `_retrieve` (a span of its own: the
# mixin instruments every implementation) and `_handle_recursive_retrieval`. These run the same steps without the
# span and the events, so what the guard drops reaches no handler (rt53a F6): the wrapper's own `retrieve` reports
# what it kept.


def _overrides(retriever: BaseRetriever, name: str) -> bool:
    """Whether ``retriever`` has its own ``name`` rather than `BaseRetriever`'s (span wrappers aside)."""
    return overrides(retriever, name, BaseRetriever)


def _auto(retriever: BaseRetriever, name: str) -> bool:
    """Whether ``retriever`` is an auto-retriever whose ``name`` (``_retrieve``/``_aretrieve``) is
    `BaseAutoRetriever`'s: one that builds a retriever per query from a spec and runs that one's ``retrieve``."""
    return isinstance(retriever, BaseAutoRetriever) and not overrides(retriever, name, BaseAutoRetriever)


def _quiet_retrieve(retriever: BaseRetriever, query_bundle: QueryBundle) -> list[NodeWithScore]:
    """``retriever.retrieve(query_bundle)`` without its span and events.

    A retriever with a ``retrieve`` of its own (an access filter, a rerank, a cache: rt53e F5) has it called, its
    span aside: what it does stands, and what its body reports (``super().retrieve``) shows. An auto-retriever's
    per-query retriever runs out of sight too (rt53e F4): its ``retrieve`` would report what the guard drops."""
    if _overrides(retriever, "retrieve"):
        return cast(list[NodeWithScore], unspanned(retriever, "retrieve")(query_bundle))
    retriever._check_callback_manager()
    if _auto(retriever, "_retrieve"):
        auto = cast(BaseAutoRetriever, retriever)
        inner, inner_bundle = auto._build_retriever_from_spec(auto.generate_retrieval_spec(query_bundle))
        nodes = _quiet_retrieve(inner, inner_bundle)
    else:
        nodes = unspanned(retriever, "_retrieve")(query_bundle)
    return _quiet_expand(retriever, query_bundle, nodes)


async def _aquiet_retrieve(retriever: BaseRetriever, query_bundle: QueryBundle) -> list[NodeWithScore]:
    """``await retriever.aretrieve(query_bundle)`` without its span and events (as `_quiet_retrieve`)."""
    if _overrides(retriever, "aretrieve"):
        return cast(list[NodeWithScore], await unspanned(retriever, "aretrieve")(query_bundle))
    retriever._check_callback_manager()
    if _auto(retriever, "_aretrieve"):
        auto = cast(BaseAutoRetriever, retriever)
        inner, inner_bundle = auto._build_retriever_from_spec(await auto.agenerate_retrieval_spec(query_bundle))
        nodes = await _aquiet_retrieve(inner, inner_bundle)
    elif _overrides(retriever, "_aretrieve"):
        nodes = await unspanned(retriever, "_aretrieve")(query_bundle)
    else:  # `BaseRetriever._aretrieve` runs the (instrumented) `_retrieve`
        nodes = unspanned(retriever, "_retrieve")(query_bundle)
    return await _aquiet_expand(retriever, query_bundle, nodes)


def _entering(retriever: BaseRetriever, node: IndexNode, obj: Any) -> None:
    if retriever._verbose:
        print_text(f"Retrieval entering {node.index_id}: {obj.__class__.__name__}\n", color="llama_turquoise")


def _expansion_target(retriever: BaseRetriever, n: NodeWithScore) -> Any:
    """The object an IndexNode stands for (``None``: the node stays as it is)."""
    node = n.node
    if not isinstance(node, IndexNode):
        return None
    obj = node.obj or retriever.object_map.get(node.index_id, None)
    if obj is not None:
        _entering(retriever, node, obj)
    return obj


def _unique(nodes: list[NodeWithScore]) -> list[NodeWithScore]:
    """``nodes`` without repeated node ids (the first kept), as `BaseRetriever` leaves them."""
    seen: set[str] = set()
    return [n for n in nodes if not (n.node.node_id in seen or seen.add(n.node.node_id))]  # type: ignore[func-returns-value]


def _quiet_expand(
    retriever: BaseRetriever, query_bundle: QueryBundle, nodes: list[NodeWithScore], own: bool = False
) -> list[NodeWithScore]:
    """``retriever._handle_recursive_retrieval``, a retriever an IndexNode stands for run by `_quiet_retrieve`.
    A retriever with its own expansion (``own``: not this wrapper) keeps it."""
    if not own and _overrides(retriever, "_handle_recursive_retrieval"):
        return retriever._handle_recursive_retrieval(query_bundle, nodes)
    quiet = not _overrides(retriever, "_retrieve_from_object")
    found: list[NodeWithScore] = []
    for n in nodes:
        obj = _expansion_target(retriever, n)
        if obj is None:
            found.append(n)
        elif quiet and isinstance(obj, BaseRetriever):
            if retriever._verbose:
                print_text(
                    f"Retrieving from object {obj.__class__.__name__} with query {query_bundle.query_str}\n",
                    color="llama_pink",
                )
            found.extend(_quiet_retrieve(obj, query_bundle))
        else:
            found.extend(retriever._retrieve_from_object(obj, query_bundle=query_bundle, score=n.score or 1.0))
    return _unique(found)


async def _aquiet_expand(
    retriever: BaseRetriever, query_bundle: QueryBundle, nodes: list[NodeWithScore], own: bool = False
) -> list[NodeWithScore]:
    """Async twin of `_quiet_expand`."""
    if not own and _overrides(retriever, "_ahandle_recursive_retrieval"):
        return await retriever._ahandle_recursive_retrieval(query_bundle, nodes)
    quiet = not _overrides(retriever, "_aretrieve_from_object")
    found: list[NodeWithScore] = []
    for n in nodes:
        obj = _expansion_target(retriever, n)
        if obj is None:
            found.append(n)
        elif quiet and isinstance(obj, BaseRetriever):
            found.extend(await _aquiet_retrieve(obj, query_bundle))
        else:
            found.extend(await retriever._aretrieve_from_object(obj, query_bundle=query_bundle, score=n.score or 1.0))
    return _unique(found)


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
