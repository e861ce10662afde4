"""A misspelt option of a qwenguard LlamaIndex component is an error naming it, not silently dropped.

LlamaIndex components are pydantic models that take any keyword (`GuardNodePostprocessor(on_violation="raise")`,
LangChain's spelling of ``on_block``, was accepted and ignored: the node was dropped where the app asked for a
raise). ``extra="forbid"`` refused too much: a component's own serialized form (``to_dict``: its ``class_name`` and
computed fields) no longer loaded. So only keys that are neither fields, computed fields nor ``class_name`` are
refused."""

from __future__ import annotations

from typing import Any

__all__ = ["known_options"]


def known_options(cls: Any, data: Any) -> Any:
    """``data`` (a model's keyword arguments) unchanged, or a ``ValueError`` naming the keys ``cls`` does not take."""
    if not isinstance(data, dict):
        return data
    known = {*cls.model_fields, *cls.model_computed_fields, "class_name"}
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise ValueError(f"{cls.__name__} got unknown options {unknown}")
    return data
