"""`GuardNodePostprocessor`: screen retrieved nodes before they reach the LLM.

Each node is judged on its own as untrusted content, all of a query's nodes in one batch
(``Guard.check_documents``): harmful text and injected instructions ("ignore all previous
instructions...") are dropped, or stop the query, before the synthesizer puts them in a prompt.

It must be the last postprocessor: one after it that fetches nodes (``PrevNextNodePostprocessor``) adds nodes
the guard never saw (docs/llamaindex.md).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from llama_index.core.bridge.pydantic import Field
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle
from qwenguard.core import Decision, Guard, enforce

from .._common import require_guard
from ._component import GuardComponent
from ._messages import value_strings

__all__ = ["GuardNodePostprocessor", "OnBlock", "screen_nodes", "ascreen_nodes"]

logger = logging.getLogger("qwenguard.llamaindex")

OnBlock = Literal["drop", "raise"]
T = TypeVar("T")

#: Where the Decision of a node that was let through (allowed or flagged) is recorded.
DECISION_METADATA_KEY = "qwenguard_decision"


def node_text(node: BaseNode, max_chars: int | None = None) -> str:
    """What a node can show the LLM: its text with the metadata the synthesizer shows, then the text of every other
    metadata value (a replacement postprocessor swaps one in for the text: the sentence-window pattern's ``window``,
    whose neighbouring sentences were never judged otherwise). A value that is no string (a list of comments, a
    mapping) is read for every string it holds (`value_strings`): the app gets it with the node (a sources panel
    shows metadata), and a postprocessor may show it. Read within ``max_chars`` (the guard's): `InputTooLarge` past
    it, as the guard raises for a text that long."""
    text = node.get_content(metadata_mode=MetadataMode.LLM)
    excluded = set(node.excluded_llm_metadata_keys)
    hidden: list[str] = []
    size = len(text)
    for key, value in node.metadata.items():
        if key not in excluded or key == DECISION_METADATA_KEY:
            continue
        if isinstance(value, str):
            found = [value] if value.strip() else []
        elif max_chars is None:
            found = value_strings(value, sys.maxsize)
        else:
            found = value_strings(value, max(0, max_chars - size), f"node {node.node_id}'s metadata {key!r}")
        hidden += found
        size += sum(len(t) + 2 for t in found)
    return "\n\n".join([text, *hidden]) if hidden else text


def _texts(nodes: Sequence[NodeWithScore], max_chars: int | None = None) -> list[str]:
    return [node_text(n.node, max_chars) for n in nodes]


def keep_allowed(
    items: Sequence[T], decisions: Sequence[Decision], on_block: OnBlock, record: bool, node_of: Callable[[T], BaseNode]
) -> list[T]:
    """The items whose decision allows them (flags recorded in the node's metadata when ``record``); a
    blocked one is dropped (logged) or raises, per ``on_block``. ``node_of`` finds the node in an item."""
    kept: list[T] = []
    for item, decision in zip(items, decisions):
        if decision.allowed:
            if record and decision.action.value == "flag":
                node_of(item).metadata[DECISION_METADATA_KEY] = decision.to_dict()
            kept.append(item)
        elif on_block == "raise":
            enforce(decision)
        else:
            logger.info("qwenguard dropped node %s: %s", node_of(item).node_id, decision.describe())
    return kept


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
    return _apply(nodes, guard.check_documents(query, _texts(nodes, guard.max_chars)), on_block, record)


async def ascreen_nodes(
    guard: Guard, nodes: Sequence[NodeWithScore], query: str | None, on_block: OnBlock = "drop", record: bool = True
) -> list[NodeWithScore]:
    """Async twin of `screen_nodes`."""
    if not nodes:
        return []
    return _apply(nodes, await guard.acheck_documents(query, _texts(nodes, guard.max_chars)), on_block, record)


class GuardNodePostprocessor(GuardComponent, BaseNodePostprocessor):
    """Drop (or raise on) retrieved nodes the guard blocks.

    >>> engine = index.as_query_engine(node_postprocessors=[GuardNodePostprocessor(guard=guard)])  # doctest: +SKIP

    - ``on_block="drop"`` (default): blocked nodes are removed and the answer is built from the rest.
      ``"raise"``: the first blocked node raises `GuardViolation` and the query stops.
    - Nodes let through with a flag (controversial in a loose policy, fail-open guard errors) carry
      the Decision in ``node.metadata["qwenguard_decision"]`` (``record_flags=False`` turns this off).
    - Guard errors follow the guard's policy: fail closed (default) treats the node as blocked.
    - Put it last: a postprocessor after it that fetches nodes (``PrevNextNodePostprocessor``) adds unjudged
      ones.
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

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = query_bundle.query_str if query_bundle is not None else None
        return screen_nodes(self.guard, nodes, query, self.on_block, self.record_flags)

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = query_bundle.query_str if query_bundle is not None else None
        return await ascreen_nodes(self.guard, nodes, query, self.on_block, self.record_flags)
