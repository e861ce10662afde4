"""The handlers a wrapped model carries itself, moved to the wrapper's run.

A held model (`GuardedChatModel`, the middleware's model call) runs the real model out of sight of the caller's
callbacks (`_out_of_sight`), but LangChain adds a model's *own* handlers to every run of it, whatever the caller
passes: ``ChatOpenAI(callbacks=[...])`` (the classic ``StreamingStdOutCallbackHandler`` pattern), a binding's
``model.with_config(callbacks=[...])``, and ``model.with_listeners(on_end=...)`` (a factory that adds a listener
to each call). They heard every raw token of an answer the guard blocked, and the blocked answer whole at the run's
end (rt53a F1). `detached` takes them off the model it wraps, which then runs with none; the wrapper runs with them:
they hear its run, the chunks the guard released and the answer it let through.

Where they are found: the model's ``callbacks`` field, and each binding around it (``bind``, ``bind_tools``,
``with_config``, ``with_listeners``, ``with_retry``: a ``RunnableBindingBase``'s ``config`` and
``config_factories``), fallbacks (``with_fallbacks``), a ``configurable_fields`` model's default, each alternative
of a ``configurable_alternatives`` one (the selected alternative's handlers hear the wrapper's run: a config factory
picks them per call, as the alternative is picked), and LangChain's ``init_chat_model(..., configurable_fields=...)``
model, which builds the real model per call from its default config (``callbacks=`` given to ``init_chat_model``) and
its queued operations (``with_config(callbacks=...)``): rt53e F1. What other runnables hold (a chain the model sits in,
a custom runnable's own handlers, an alternative given as a factory, built per call) is not looked into: their
handlers still hear the real run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager
from langchain_core.language_models import BaseLanguageModel
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.base import RunnableBindingBase
from langchain_core.runnables.config import ensure_config, merge_configs
from langchain_core.runnables.configurable import DynamicRunnable, RunnableConfigurableAlternatives
from langchain_core.runnables.fallbacks import RunnableWithFallbacks

__all__ = ["OwnHandlers", "detached"]

ConfigFactory = Callable[[RunnableConfig], RunnableConfig]

try:  # LangChain's configurable chat model (``init_chat_model(..., configurable_fields=...)``): a private class
    from langchain.chat_models.base import _ConfigurableModel as _configurable_model_type

    _ConfigurableModel: type[Any] | None = _configurable_model_type
except ImportError:  # pragma: no cover - langchain-core without langchain
    _ConfigurableModel = None

#: Bindings nest a few deep; never loop on a cycle.
_DEPTH = 16


@dataclass
class OwnHandlers:
    """What a model carried: handlers (each once), and config factories (``with_listeners``: a listener per call)."""

    handlers: list[BaseCallbackHandler] = field(default_factory=list)
    factories: list[ConfigFactory] = field(default_factory=list)

    def take(self, callbacks: Any) -> None:
        found = callbacks.handlers if isinstance(callbacks, BaseCallbackManager) else callbacks
        for handler in found or []:
            if isinstance(handler, BaseCallbackHandler) and not any(handler is h for h in self.handlers):
                self.handlers.append(handler)

    def callbacks(self, given: Any = None) -> list[BaseCallbackHandler] | None:
        """The wrapper's own ``callbacks``: ``given`` (passed to the wrapper) with these after them."""
        mine = OwnHandlers()
        mine.take(given)
        mine.take(self.handlers)
        return mine.handlers or None


def detached(model: Runnable[Any, Any]) -> tuple[Runnable[Any, Any], OwnHandlers]:
    """``model`` with none of its own handlers (a copy where it had some; ``model`` itself otherwise), and those."""
    own = OwnHandlers()
    return _strip(model, own, _DEPTH), own


def _strip(runnable: Runnable[Any, Any], own: OwnHandlers, depth: int) -> Runnable[Any, Any]:
    if depth <= 0:
        return runnable
    if isinstance(runnable, BaseLanguageModel):
        listeners = getattr(runnable, "own_listeners", None)  # a held model's, moved to it from the model it wraps
        if not runnable.callbacks and not listeners:
            return runnable
        own.take(runnable.callbacks)
        update: dict[str, Any] = {"callbacks": None}
        if listeners:
            own.factories.extend(listeners)
            update["own_listeners"] = []
        return runnable.model_copy(update=update)
    if isinstance(runnable, RunnableBindingBase):
        bound = _strip(runnable.bound, own, depth - 1)
        config = dict(runnable.config or {})
        callbacks = config.pop("callbacks", None)
        if bound is runnable.bound and callbacks is None and not runnable.config_factories:
            return runnable
        own.take(callbacks)
        own.factories.extend(runnable.config_factories)
        update = {
            "bound": bound,
            "config": config,
            "config_factories": [_unheard(f) for f in runnable.config_factories],
        }
        return runnable.model_copy(update=update)
    if isinstance(runnable, RunnableWithFallbacks):
        first = _strip(runnable.runnable, own, depth - 1)
        fallbacks = [_strip(f, own, depth - 1) for f in runnable.fallbacks]
        if first is runnable.runnable and all(a is b for a, b in zip(fallbacks, runnable.fallbacks, strict=True)):
            return runnable
        return runnable.model_copy(update={"runnable": first, "fallbacks": fallbacks})
    if isinstance(runnable, RunnableConfigurableAlternatives):
        return _alternatives(runnable, own, depth)
    if isinstance(runnable, DynamicRunnable):  # configurable_fields: its default
        default = _strip(runnable.default, own, depth - 1)
        return runnable if default is runnable.default else runnable.model_copy(update={"default": default})
    if _ConfigurableModel is not None and isinstance(runnable, _ConfigurableModel):
        return _configurable_model(runnable, own)
    return runnable


def _alternatives(
    runnable: RunnableConfigurableAlternatives[Any, Any], own: OwnHandlers, depth: int
) -> Runnable[Any, Any]:
    """Every alternative stripped (the default one too), and a config factory that gives the wrapper's call the
    handlers of the alternative its config selects (before, only the default was looked into: a selected
    alternative's handlers heard the blocked answer raw, rt53e F1). An alternative given as a factory is left as it
    is (it is built per call)."""
    chosen: dict[str, OwnHandlers] = {runnable.default_key: OwnHandlers()}
    default = _strip(runnable.default, chosen[runnable.default_key], depth - 1)
    alternatives: dict[str, Any] = {}
    for key, alternative in runnable.alternatives.items():
        if isinstance(alternative, Runnable):
            chosen[key] = OwnHandlers()
            alternatives[key] = _strip(alternative, chosen[key], depth - 1)
        else:
            alternatives[key] = alternative
    if not any(found.handlers or found.factories for found in chosen.values()):
        return runnable
    own.factories.append(_selected(runnable.which.id, runnable.default_key, chosen))
    return runnable.model_copy(update={"default": default, "alternatives": alternatives})


def _selected(field_id: str, default_key: str, chosen: dict[str, OwnHandlers]) -> ConfigFactory:
    """What the alternative a call's config selects (as ``RunnableConfigurableAlternatives`` selects it) adds to the
    call: its handlers and its config factories."""

    def config(given: RunnableConfig) -> RunnableConfig:
        key = (given.get("configurable") or {}).get(field_id, default_key)
        found = chosen.get(key)
        if found is None:
            return {}
        mine: RunnableConfig = {"callbacks": list(found.handlers)} if found.handlers else {}
        return merge_configs(mine, *(factory(given) for factory in found.factories))

    return config


def _configurable_model(model: Any, own: OwnHandlers) -> Runnable[Any, Any]:
    """``init_chat_model(..., configurable_fields=...)``: it builds the real model at each call from its default
    config (the keyword arguments ``init_chat_model`` was given, ``callbacks`` among them) and replays its queued
    operations on it (``bind_tools``, ``with_config``: the callbacks of ``with_config(callbacks=...)`` are queued
    there). A copy without them; they are ``own``'s."""
    default = dict(model._default_config)
    callbacks = default.pop("callbacks", None)
    found = callbacks is not None
    own.take(callbacks)
    operations: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
    for name, args, kwargs in model._queued_declarative_operations:
        if name == "with_config":
            given = dict(args[0] if args else kwargs.get("config") or {})
            if "callbacks" in given:
                found = True
                own.take(given.pop("callbacks"))
            args, kwargs = (), {**{k: v for k, v in kwargs.items() if k != "config"}, "config": given}
        operations.append((name, args, kwargs))
    if not found:
        return model
    return type(model)(
        default_config=default,
        configurable_fields=model._configurable_fields,
        config_prefix=model._config_prefix,
        queued_declarative_operations=operations,
    )


def _unheard(factory: ConfigFactory) -> ConfigFactory:
    """``factory`` less the callbacks it adds (they are the wrapper's: `with_own`)."""

    def config(given: RunnableConfig) -> RunnableConfig:
        made = dict(factory(given))
        made.pop("callbacks", None)
        return made  # type: ignore[return-value]

    return config


def with_own(factories: list[ConfigFactory], config: RunnableConfig | None) -> RunnableConfig | None:
    """The wrapper's call config with what the wrapped model's config factories add to each call (a listener's
    tracer) merged in, as its binding did; ``config`` itself when there are none."""
    if not factories:
        return config
    merged = ensure_config(config)  # the ambient config (a chain step's) under the call's: as the binding merged it
    return merge_configs(merged, *(factory(merged) for factory in factories))
