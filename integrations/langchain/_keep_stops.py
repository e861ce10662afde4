"""Retries and fallbacks that keep the guard's stop: `retryable`, and the ``with_retry`` / ``with_fallbacks`` of
`GuardRunnable` and `GuardedChatModel` (`KeepsStops`).

LangChain's ``with_retry()`` retries every ``Exception`` and ``with_fallbacks()`` hands every one to the next
runnable: a `GuardViolation` is one, so a retry asked the model again after the guard blocked its answer (a
re-roll: a jailbreak gets more tries at an answer the guard misses) and a fallback model answered a request the
guard had stopped (an unguarded one, unjudged). `GuardMiddleware` keeps its stops with `StoppedCalls`; these are
the LCEL twins. A stop is any error of the guard's (`QwenGuardError`: a violation, the guard failing closed, an
input past its limits, `InputTooLarge`, that it refused to judge...): after one no fallback runs, the stop is
raised. A retry retries anything but a stop, except the guard that could not answer (`GuardUnavailable`,
`GuardTimeout`: it may answer on a retry, and the new answer is judged). The retry or fallback a caller builds
around a chain that holds the guard (``(prompt | guarded).with_retry()``) is LangChain's own: pass
``retry_if_exception_type=retryable`` there.

``bind`` / ``with_config`` / ``with_types`` / ``with_listeners`` / ``with_alisteners`` return a `RunnableBinding`
that keeps the stops too (`_BindingKeepsStops`): LangChain's own binding passes ``with_retry`` on to the bound
runnable but not ``with_fallbacks``, so ``guarded.with_config(...).with_fallbacks([llm])`` ran the fallback after
a block.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from langchain_core.runnables.fallbacks import RunnableWithFallbacks
from langchain_core.runnables.retry import RunnableRetry
from qwenguard.core import QwenGuardError, retryable
from tenacity import retry_if_exception

__all__ = ["KeepsStops", "retryable"]

#: What ends a fallbacks run: any error of the guard's (its verdict, the guard failing closed, an input it refused to
#: judge such as `InputTooLarge`): a fallback would answer unjudged.
_FALLBACK_STOPS = QwenGuardError

Retries = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def _unless_stopped(retries: Retries) -> Callable[[BaseException], bool]:
    """The caller's choice of errors to retry (types, or a predicate), less the guard's stops (`retryable`)."""
    if callable(retries) and not isinstance(retries, tuple):
        return lambda error: retryable(error) and bool(retries(error))
    return lambda error: retryable(error) and isinstance(error, retries)


class KeepsStops:
    """``with_retry`` / ``with_fallbacks`` that never re-run the guarded step after its stop (module docstring), and
    bindings (``bind``, ``with_config``, ``with_types``, ``with_listeners``, ``with_alisteners``) that keep them."""

    def with_retry(
        self,
        *,
        retry_if_exception_type: Retries = (Exception,),
        wait_exponential_jitter: bool = True,
        exponential_jitter_params: Any = None,
        stop_after_attempt: int = 3,
    ) -> Runnable[Any, Any]:
        """LangChain's ``with_retry``: the guard's stop (`retryable`: a `GuardViolation`, `InputTooLarge`...) is never
        retried, whatever ``retry_if_exception_type``."""
        return _RetryKeepsStops(
            bound=self,
            kwargs={},
            config={},
            retry_exception_types=retry_if_exception_type,
            wait_exponential_jitter=wait_exponential_jitter,
            max_attempt_number=stop_after_attempt,
            exponential_jitter_params=exponential_jitter_params,
        )

    def with_fallbacks(
        self,
        fallbacks: Sequence[Runnable[Any, Any]],
        *,
        exceptions_to_handle: tuple[type[BaseException], ...] = (Exception,),
        exception_key: str | None = None,
    ) -> RunnableWithFallbacks[Any, Any]:
        """LangChain's ``with_fallbacks``: after the guard's stop no fallback runs (the stop is raised)."""
        return _FallbacksKeepStops(
            runnable=self,
            fallbacks=fallbacks,
            exceptions_to_handle=exceptions_to_handle,
            exception_key=exception_key,
        )

    # LangChain's own bindings, made to keep the stops (`_keeping`). The arguments are passed on as given: the
    # signatures differ between `Runnable` and `RunnableBinding` (``with_types``' are keyword-only in the first).
    def bind(self, *args: Any, **kwargs: Any) -> Any:
        return _keeping(super().bind(*args, **kwargs))  # type: ignore[misc]

    def with_config(self, *args: Any, **kwargs: Any) -> Any:
        return _keeping(super().with_config(*args, **kwargs))  # type: ignore[misc]

    def with_types(self, *args: Any, **kwargs: Any) -> Any:
        return _keeping(super().with_types(*args, **kwargs))  # type: ignore[misc]

    def with_listeners(self, *args: Any, **kwargs: Any) -> Any:
        return _keeping(super().with_listeners(*args, **kwargs))  # type: ignore[misc]

    def with_alisteners(self, *args: Any, **kwargs: Any) -> Any:
        return _keeping(super().with_alisteners(*args, **kwargs))  # type: ignore[misc]


def _keeping(runnable: Runnable[Any, Any]) -> Runnable[Any, Any]:
    """``runnable`` (what LangChain's ``bind`` / ``with_config``... returned) keeping the stops: as it is if it does
    (a `_BindingKeepsStops`' own ``bind`` builds its class); a `RunnableBinding` with no fields of its own (LangChain's,
    or a chat model's ``bind``: `_ChatModelBinding`, the same at runtime) as a `_BindingKeepsStops` with its fields;
    anything else bound as it is (its own behaviour kept, nothing bound to add)."""
    if isinstance(runnable, KeepsStops):
        return runnable
    if isinstance(runnable, RunnableBinding) and type(runnable).model_fields.keys() == _BINDING_FIELDS:
        return _BindingKeepsStops(
            name=runnable.name,
            bound=runnable.bound,
            kwargs=runnable.kwargs,
            config=runnable.config,
            config_factories=runnable.config_factories,
            custom_input_type=runnable.custom_input_type,
            custom_output_type=runnable.custom_output_type,
        )
    return _BindingKeepsStops(bound=runnable, kwargs={}, config={})


# (no-redef: the pydantic plugin, as for `_RetryKeepsStops` below; misc: `KeepsStops.with_retry` comes first on
# purpose, LangChain's re-wraps ``bound`` and keeps the stops only where that is a `KeepsStops`.)
class _BindingKeepsStops(KeepsStops, RunnableBinding):  # type: ignore[no-redef,misc]
    """LangChain's `RunnableBinding` (arguments, config, listeners, types bound to the guarded runnable) whose
    ``with_retry`` / ``with_fallbacks`` keep the guard's stop. Its own ``bind``, ``with_config``... are
    `RunnableBinding`'s, built with ``self.__class__``: this class again."""


_BINDING_FIELDS = RunnableBinding.model_fields.keys()


# (The pydantic plugin's __init__ for the binding's ``kwargs`` field clashes with its ``**kwargs``.)
class _OneCallPerInput:
    """``batch`` / ``abatch`` as one call per input (Runnable's own). LangChain's retry retries a whole batch on its
    first failed input's error: after a provider hiccup on one input, every input without a result ran again, a
    blocked one too (its model asked again: a re-roll, rt52d F5); its fallbacks run each runnable on all inputs at
    once, so one input's stop would end the others' fallbacks."""

    def batch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False, **kwargs: Any) -> Any:
        return Runnable.batch(self, inputs, config, return_exceptions=return_exceptions, **kwargs)  # type: ignore[arg-type]

    async def abatch(
        self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False, **kwargs: Any
    ) -> Any:
        return await Runnable.abatch(self, inputs, config, return_exceptions=return_exceptions, **kwargs)  # type: ignore[arg-type]


class _RetryKeepsStops(_OneCallPerInput, KeepsStops, RunnableRetry):  # type: ignore[no-redef]
    """`RunnableRetry` retrying what it was asked to but a `GuardViolation`."""

    @property
    def _kwargs_retrying(self) -> dict[str, Any]:
        kwargs = dict(super()._kwargs_retrying)
        kwargs["retry"] = retry_if_exception(_unless_stopped(self.retry_exception_types))
        return kwargs


class _Stop:
    """The stop one runnable of a fallbacks call raised, if any."""

    error: BaseException | None = None


class _Watched(Runnable[Any, Any]):
    """One runnable of a fallbacks call: after a stop (``stop.error``), raises it again instead of running; records the
    stop it raises itself. Passes the call straight on: no run of its own."""

    def __init__(self, runnable: Runnable[Any, Any], stop: _Stop) -> None:
        self.runnable = runnable
        self.stop = stop

    def _check(self) -> None:
        if self.stop.error is not None:
            raise self.stop.error

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        self._check()
        try:
            return self.runnable.invoke(input, config, **kwargs)
        except _FALLBACK_STOPS as error:
            self.stop.error = error
            raise

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        self._check()
        try:
            return await self.runnable.ainvoke(input, config, **kwargs)
        except _FALLBACK_STOPS as error:
            self.stop.error = error
            raise

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        self._check()
        try:
            yield from self.runnable.stream(input, config, **kwargs)
        except _FALLBACK_STOPS as error:
            self.stop.error = error
            raise

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        self._check()
        try:
            async for chunk in self.runnable.astream(input, config, **kwargs):
                yield chunk
        except _FALLBACK_STOPS as error:
            self.stop.error = error
            raise


class _FallbacksKeepStops(_OneCallPerInput, KeepsStops, RunnableWithFallbacks):
    """`RunnableWithFallbacks` whose fallbacks do not run after a stop: each call iterates `runnables` afresh, so
    the stop one runnable raised is seen by the next ones of the same call only."""

    @property
    def runnables(self) -> Iterator[Runnable[Any, Any]]:
        stop = _Stop()
        yield _Watched(self.runnable, stop)
        for fallback in self.fallbacks:
            yield _Watched(fallback, stop)
