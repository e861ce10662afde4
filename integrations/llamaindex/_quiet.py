"""Run a wrapped LlamaIndex component's method out of sight of the dispatcher: `unspanned`.

LlamaIndex instruments its components: ``@dispatcher.span`` (applied by ``DispatcherSpanMixin`` to every
implementation of ``BaseRetriever._retrieve``, ``AsyncBaseTool.call``/``acall`` and the like) hands every span
handler on the root dispatcher the method's arguments and its result, or its exception. A guard wrapper that runs
the wrapped retriever's ``retrieve`` or the wrapped tool's ``acall`` hands tracing (Phoenix, Langfuse,
OpenInference) the nodes it is about to drop and the tool output it is about to withhold, whole (rt53a F6, F7);
a `GuardCallbackHandler` sharing the callback manager judged the inner retrieval's legacy event and stopped the
query instead of the drop. So the wrappers call the method the span decorator wraps (``__wrapped__``), and report
only what the guard kept, in their own spans and events.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["overrides", "unspanned"]


def _is_span_wrapper(attr: Any) -> bool:
    """Whether ``attr`` is what LlamaIndex's ``Dispatcher.span`` made of a function (a wrapt ``FunctionWrapper``)."""
    wrapper = getattr(attr, "_self_wrapper", None)
    return (
        hasattr(attr, "__wrapped__")
        and (getattr(wrapper, "__qualname__", None) or "").startswith("Dispatcher.span.")
        and "instrumentation" in (getattr(wrapper, "__module__", None) or "")
    )


def _unwrapped(attr: Any) -> Any:
    """``attr`` without the span wrappers LlamaIndex put around it (the function they wrap)."""
    while _is_span_wrapper(attr):
        attr = attr.__wrapped__
    return attr


def overrides(obj: Any, name: str, base: type) -> bool:
    """Whether ``obj`` has a ``name`` of its own (its class's, or set on it) rather than ``base``'s. The span
    wrappers do not count: the mixin wraps an override of an instrumented method in its own span, and a class
    may re-wrap the same function."""
    if name in getattr(obj, "__dict__", {}):
        return True
    return _unwrapped(inspect.getattr_static(type(obj), name)) is not _unwrapped(base.__dict__[name])


def unspanned(obj: Any, name: str, cls: type | None = None) -> Callable[..., Any]:
    """``obj.name`` (the method ``cls``, default ``type(obj)``, gives it) bound to ``obj`` without the dispatcher
    span LlamaIndex wraps it in; the bound method itself when it has none (or ``obj`` holds its own)."""
    if cls is None and name in getattr(obj, "__dict__", {}):
        return getattr(obj, name)
    owner = type(obj) if cls is None else cls
    return _unwrapped(inspect.getattr_static(owner, name)).__get__(obj, owner)
