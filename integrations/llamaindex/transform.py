"""`GuardTransform`: filter documents and nodes in an ingestion pipeline, before they are indexed.

Screening at ingestion keeps poisoned or harmful text out of the index at all, so no later query
can retrieve it. The transform's policy and guard model are part of its ``to_dict()``, which
``IngestionPipeline`` hashes into its cache key: changing the policy re-screens cached nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.schema import BaseNode, TransformComponent
from pydantic import Field, computed_field
from qwenguard.core import Decision, Guard

from .._common import require_guard
from ._component import GuardComponent
from .postprocessor import OnBlock, keep_allowed, node_text

__all__ = ["GuardTransform"]


class GuardTransform(GuardComponent, TransformComponent):
    """Drop (or raise on) nodes the guard blocks, as one step of an ingestion pipeline.

    >>> pipeline = IngestionPipeline(transformations=[SentenceSplitter(), GuardTransform(guard=guard)])  # doctest: +SKIP

    Put it after the splitter so each chunk is judged on its own (a long document is windowed by
    the guard either way). ``on_block="raise"`` stops the ingestion at the first blocked node.
    Flagged nodes keep the Decision in ``metadata["qwenguard_decision"]``.
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

    # Computed from the live guard, so the pipeline cache key always matches what screens the nodes.
    @computed_field  # type: ignore[prop-decorator]
    @property
    def policy(self) -> dict[str, Any]:
        """The guard's policy, as data (part of the pipeline cache key)."""
        return self.guard.policy.to_dict()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def model(self) -> str:
        """The guard model's name (part of the pipeline cache key)."""
        return str(getattr(self.guard.backend, "name", type(self.guard.backend).__name__))

    def _apply(self, nodes: Sequence[BaseNode], decisions: Sequence[Decision]) -> list[BaseNode]:
        return keep_allowed(nodes, decisions, self.on_block, self.record_flags, lambda n: n)

    def _texts(self, nodes: Sequence[BaseNode]) -> list[str]:
        return [node_text(n, self.guard.max_chars) for n in nodes]  # its metadata too: the LLM reads it later

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
        if not nodes:
            return []
        return self._apply(nodes, self.guard.check_documents(None, self._texts(nodes)))

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
        if not nodes:
            return []
        return self._apply(nodes, await self.guard.acheck_documents(None, self._texts(nodes)))
