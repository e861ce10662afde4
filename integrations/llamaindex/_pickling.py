"""Pickling a qwenguard LlamaIndex component leaves the live one whole.

LlamaIndex's ``BaseComponent.__getstate__`` drops the attributes that do not pickle (the guard: its threads and
locks) from the state it returns, which is the live object's own ``__dict__``: after ``pickle.dumps`` (an
``IngestionPipeline`` with ``num_workers > 1``, a saved workflow Context) the original lost its guard and failed
with an AttributeError at its next call (rt50f F4). The state is taken from a copy instead; the pickled copy comes
back without the guard, as LlamaIndex intends, and says so when used."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["state_of_a_copy"]


def state_of_a_copy(obj: Any, getstate: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``getstate()`` (a ``__getstate__`` that edits ``obj.__dict__``) run on a shallow copy of that dict."""
    live = obj.__dict__
    object.__setattr__(obj, "__dict__", dict(live))
    try:
        return getstate()
    finally:
        object.__setattr__(obj, "__dict__", live)
