"""`HeldModelRequest`: the request `GuardMiddleware` hands to the middleware inside it.

A middleware listed after `GuardMiddleware` runs inside its ``wrap_model_call`` and may replace the
request's model (``ModelFallbackMiddleware`` after the primary failed, a router such as
``ModelRouterMiddleware``): ``override(model=...)`` on this request wraps the replacement in the same
hold-back model, so what that model streams is judged before release too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain.agents.middleware import ModelRequest
from langchain_core.runnables import Runnable

__all__ = ["HeldModelRequest"]


class HeldModelRequest(ModelRequest):
    """A `ModelRequest` whose model stays held: a model put in its place (``override(model=...)``, or the
    deprecated ``request.model = ...``) by a middleware inside `GuardMiddleware` is wrapped by ``hold``
    before it can run, so a replacement never streams unjudged text."""

    hold: Callable[[Runnable[Any, Any]], Runnable[Any, Any]]

    @classmethod
    def of(cls, request: ModelRequest, hold: Callable[[Runnable[Any, Any]], Runnable[Any, Any]]) -> HeldModelRequest:
        outer = request.hold if isinstance(request, HeldModelRequest) else None
        if outer is not None:  # another GuardMiddleware around this one: a replacement passes both
            inner = hold

            def hold(model: Runnable[Any, Any]) -> Runnable[Any, Any]:
                return inner(outer(model))

        fields = {name: getattr(request, name) for name in request.__dataclass_fields__}
        held = cls(**{**fields, "model": hold(request.model)})
        object.__setattr__(held, "hold", hold)
        return held

    def override(self, **overrides: Any) -> HeldModelRequest:
        if isinstance(overrides.get("model"), Runnable):
            overrides["model"] = self.hold(overrides["model"])
        replaced = super().override(**overrides)  # `dataclasses.replace`: a new HeldModelRequest
        object.__setattr__(replaced, "hold", self.hold)
        return replaced  # type: ignore[return-value]

    def __setattr__(self, name: str, value: Any) -> None:
        hold = self.__dict__.get("hold")  # absent while a dataclass __init__ sets the fields
        if hold is not None and name == "model" and isinstance(value, Runnable):
            value = hold(value)
        super().__setattr__(name, value)
