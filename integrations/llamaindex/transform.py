"""`GuardTransform`: filter documents and nodes in an ingestion pipeline, before they are indexed.

Screening at ingestion keeps poisoned or harmful text out of the index at all, so no later query
can retrieve it. The transform's policy and guard model are part of its ``to_dict()``, which
``IngestionPipeline`` hashes into its cache key: changing the policy re-screens cached nodes (not what a
pipeline's docstore skips as seen before, nor the input documents it stores: docs/llamaindex.md).

The pipeline forms that key before the transform runs and stores whatever it returns; no transform can take an
entry back. So the key also holds a ``screening`` token (`_Screenings`): random per guard and process (a
persisted cache's entries answer no other process, nor another guard: a remote guard's model name is not known
before its first check), renewed before a run returns output of which a check got no verdict (a guard error or a
timeout, failed open or closed): that output is stored under a key no later run forms (rt62b F4, F5).
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

from llama_index.core.schema import BaseNode, NodeRelationship, TransformComponent
from pydantic import Field, computed_field
from qwenguard.core import Decision, Guard
from qwenguard.core.guard import speaking_as

from .._common import require_guard
from ._component import GuardComponent
from .postprocessor import OnBlock, anode_decisions, keep_allowed, live_guard, node_decisions

__all__ = ["GuardTransform"]


class GuardTransform(GuardComponent, TransformComponent):
    """Drop (or raise on) nodes the guard blocks, as one step of an ingestion pipeline.

    >>> pipeline = IngestionPipeline(transformations=[SentenceSplitter(), GuardTransform(guard=guard)])  # doctest: +SKIP

    Put it after the splitter so each chunk is judged on its own (a long document is windowed by
    the guard either way). ``on_block="raise"`` stops the ingestion at the first blocked node.
    Flagged nodes keep the Decision in ``metadata["qwenguard_decision"]``. The nodes are judged in batches of at
    most the guard's ``max_checks``; a node too large to judge alone is dropped (``"raise"``: `InputTooLarge`);
    kept nodes lose their links to dropped ones (`unlinked`). It runs in the pipeline's process only: a worker's
    copy (``num_workers > 1``) has no guard and raises `GuardMissing`.
    """

    guard: Any = Field(exclude=True, description="The qwenguard Guard.")
    on_block: OnBlock = Field(default="drop", description="'drop' blocked nodes, or 'raise' GuardViolation.")
    record_flags: bool = Field(default=True, description="Record flagged decisions in node metadata.")

    def __init__(self, guard: Guard, **kwargs: Any) -> None:
        require_guard(guard)
        super().__init__(guard=guard, **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "GuardTransform"

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        live_guard(self)  # a pickled copy (a worker's) says so here: pydantic would wrap the error in its own
        return super().to_dict(**kwargs)

    # Computed from the live guard, so the pipeline cache key always matches what screens the nodes.
    @computed_field  # type: ignore[prop-decorator]
    @property
    def policy(self) -> dict[str, Any]:
        """The guard's policy, as data (part of the pipeline cache key)."""
        return live_guard(self).policy.to_dict()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def model(self) -> str:
        """The guard model's name (part of the pipeline cache key)."""
        backend = live_guard(self).backend
        return str(getattr(backend, "name", type(backend).__name__))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def screening(self) -> str:
        """This process's token for the guard's judged output (part of the pipeline cache key: `_Screenings`)."""
        return _SCREENINGS.token(live_guard(self))

    def _apply(self, nodes: Sequence[BaseNode], decisions: Sequence[Decision], guard: Guard) -> list[BaseNode]:
        kept = keep_allowed(nodes, decisions, self.on_block, self.record_flags, lambda n: n)
        if any(d.reason in _UNJUDGED for d in decisions):
            # Last, with no await after it: the pipeline stores this output under the key it formed with the old
            # token, which no run forms from now on (an async run's key is formed and read with no await between).
            _SCREENINGS.renew(guard)
        return unlinked(kept, {n.node_id for n in nodes} - {n.node_id for n in kept})

    @speaking_as("await transform.acall(nodes), or await pipeline.arun(...) (not transform(nodes) / pipeline.run)")
    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
        guard = live_guard(self)
        if not nodes:
            return []
        return self._apply(nodes, node_decisions(guard, nodes, self.on_block), guard)

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
        guard = live_guard(self)
        if not nodes:
            return []
        return self._apply(nodes, await anode_decisions(guard, nodes, self.on_block), guard)


#: Decision reasons that carry no verdict of the text: the policy's answer to a failed check (the core never caches one).
_UNJUDGED = ("guard_error", "timeout")


class _Screenings:
    """A random token per guard, the same for every `GuardTransform` over it in this process, so that the pipeline
    cache answers a run with what a run of that guard stored, every node judged, in this process, under the same
    policy and model name. Renewed when a run returned output holding a decision with no verdict; for a closed
    guard a new one at every key (its checks are guard errors, decided by ``on_error``: never a stored answer)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: weakref.WeakKeyDictionary[Guard, str] = weakref.WeakKeyDictionary()

    def token(self, guard: Guard) -> str:
        if getattr(guard, "_closed", False):
            return uuid.uuid4().hex
        with self._lock:
            token = self._tokens.get(guard)
            if token is None:
                token = self._tokens[guard] = uuid.uuid4().hex
            return token

    def renew(self, guard: Guard) -> None:
        with self._lock:
            self._tokens[guard] = uuid.uuid4().hex


_SCREENINGS = _Screenings()


#: The links between nodes of one ingestion run (a node parser's); SOURCE names the input document, kept.
_NODE_LINKS = (NodeRelationship.PARENT, NodeRelationship.CHILD, NodeRelationship.PREVIOUS, NodeRelationship.NEXT)


def unlinked(nodes: Sequence[BaseNode], dropped: set[str]) -> list[BaseNode]:
    """``nodes``, each that links to a dropped node (by id) replaced by a copy without that link. Left in, the
    link names a node no store holds: `AutoMergingRetriever` raised ``doc_id ... not found`` for every query
    that found a kept sibling of a dropped leaf, `PrevNextNodePostprocessor` likewise."""
    if not dropped:
        return list(nodes)
    out: list[BaseNode] = []
    for node in nodes:
        links: dict[NodeRelationship, Any] = {}
        for kind, info in node.relationships.items():
            if kind not in _NODE_LINKS:
                links[kind] = info
            elif isinstance(info, list):
                if left := [i for i in info if i.node_id not in dropped]:
                    links[kind] = left
            elif info.node_id not in dropped:
                links[kind] = info
        if links != node.relationships:
            node = node.model_copy()  # the caller's node keeps its links
            node.relationships = links
        out.append(node)
    return out
