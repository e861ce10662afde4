"""What every qwenguard LlamaIndex component does beyond LlamaIndex's own: `GuardComponent`.

- A misspelt option is an error naming it, not silently dropped. LlamaIndex components are pydantic models that
  take any keyword (`GuardNodePostprocessor(on_violation="raise")`, LangChain's spelling of ``on_block``, was
  accepted and ignored: the node was dropped where the app asked for a raise). ``extra="forbid"`` refused too much:
  a component's own serialized form (``to_dict``: its ``class_name`` and computed fields) no longer loaded. So only
  keys that are neither fields, computed fields nor ``class_name`` are refused (`known_options`).
- Pickling leaves the live component whole. LlamaIndex's ``BaseComponent.__getstate__`` drops the attributes that do
  not pickle (the guard: its threads and locks) from the state it returns, which is the live object's own
  ``__dict__``: after ``pickle.dumps`` (an ``IngestionPipeline`` with ``num_workers > 1``, a saved workflow Context)
  the original lost its guard and failed at its next call (rt50f F4). The state is taken from a copy instead
  (`state_of_a_copy`); the pickled copy comes back without the guard, as LlamaIndex intends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llama_index.core.bridge.pydantic import BaseModel, model_validator

__all__ = ["GuardComponent", "known_options", "state_of_a_copy"]


def known_options(cls: Any, data: Any) -> Any:
    """``data`` (a model's keyword arguments) unchanged, or a ``ValueError`` naming the keys ``cls`` does not take."""
    if not isinstance(data, dict):
        return data
    known = {*cls.model_fields, *cls.model_computed_fields, "class_name"}
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise ValueError(f"{cls.__name__} got unknown options {unknown}")
    return data


def state_of_a_copy(obj: Any, getstate: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``getstate()`` (a ``__getstate__`` that edits ``obj.__dict__``) run on a shallow copy of that dict."""
    live = obj.__dict__
    object.__setattr__(obj, "__dict__", dict(live))
    try:
        return getstate()
    finally:
        object.__setattr__(obj, "__dict__", live)


class GuardComponent(BaseModel):
    """Mixed in before a LlamaIndex base class: its options checked by name, its pickling without side effects."""

    @model_validator(mode="before")
    @classmethod
    def _known_options(cls, data: Any) -> Any:
        return known_options(cls, data)

    def __getstate__(self) -> dict[str, Any]:
        return state_of_a_copy(self, super().__getstate__)
