"""`GuardedChatModel`: a chat model that shows only what the guard judged, wherever it is called.

Why a model: LangGraph's ``stream_mode="messages"`` (and ``astream_events``, tracers) report the tokens of
every chat model run inside a graph node as the model produces them. A guard placed after the model in
the node (``model | guard_output(guard)``, ``GuardRunnable``) judges its output, but the raw tokens have
already gone out through those streams. This wrapper runs the real model out of sight of the caller's
callbacks, as `GuardMiddleware` does inside ``create_agent``, and reports only the chunks the guard
released as its own run: a drop-in for the model in a hand-built graph node, a chain or an agent.

What it judges: every message the model is about to read, before the model runs (user turns as prompts,
tool results as untrusted content, earlier assistant turns); the streamed answer with the core's
hold-back `StreamMonitor` (each sentence judged beside the generation, released once its verdict is in);
tool calls held until judged as the assistant's action; an answer that was not streamed, whole; the error a model
fails with, as its answer (a provider's error can quote it: Ollama's ``error parsing tool call: raw='...'``;
`_held_model.error_stop`), the error itself raised unchanged when allowed. A
violation raises `GuardViolation` (a guard that cannot answer: `GuardUnavailable`, unless the policy
allows), with nothing of a model's error chained to it: the model's stream is closed and nothing unjudged went out.

The input is screened before the model starts, so the provider never receives a request the guard
blocks. With ``parallel_input=True`` (or a `Guard` built with ``parallel_input=True``) the model starts
while its input is checked, one judge call sooner to the first text: its answer is judged meanwhile, but
nothing of it (text or tool call) goes out before the input's verdict, and a blocked input stops the
model (sync: at its next chunk; async: at once) and raises `GuardViolation` for the prompt.

``with_retry()`` / ``with_fallbacks()`` keep the guard's stop (`_keep_stops.py`): a blocked answer is not asked
for again, and no fallback model answers a request the guard stopped. An attempt after one whose stream ended
part-way (a dropped connection, a timeout, a consumer that stopped reading) is judged as the continuation of the text
that went out (`_held_model.OwedTexts`) where it is asked again in the same step with the same messages (the system
prompt aside): a LangGraph node's ``RetryPolicy`` (the node's own or an outer one's), ``with_retry()`` /
``with_fallbacks()``, a retry or fallback middleware, a retry loop inside the node. Others are judged fresh: a retry
loop of the app's own outside a graph (an SSE handler streaming again), and a call whose messages changed (an earlier
call of the node answered otherwise on its retry, a planner at temperature > 0): see docs/langchain.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableBinding, RunnableParallel, RunnableSequence
from langchain_core.utils.function_calling import convert_to_openai_tool
from qwenguard.core import Guard
from qwenguard.core.streaming.parallel import PendingCheck

from ._held_model import HeldBackChatModel, chat_model_in
from ._holding import GUARD_PARAM, TOOL_CALLS_PARAM, guard_token, monitor_options
from ._input_beside import astart_input, start_input
from ._json_reading import reading_items
from ._keep_stops import KeepsStops, _keeping
from ._messages import (
    DEFAULT_HISTORY_TURNS,
    Item,
    answer_tool_calls,
    call_history,
    guard_history,
    input_items,
    output_items,
)
from ._options import known_fields, refuse_unknown
from ._screening import ascreen, built_off_loop, raise_first, require_guard, screen

__all__ = ["GuardedChatModel"]

#: Fields the wrapper sets itself (`HeldBackChatModel`'s, several for `GuardMiddleware`): not options, and not
#: offered as a misspelling's closest match.
_NOT_OPTIONS: dict[str, str] = {
    "inner": "the model is the first argument: GuardedChatModel(model, guard)",
    "cache": "the wrapped model's own cache applies; the wrapper keeps none of judged answers",
    **{name: "taken from the wrapped model" for name in ("profile", "model_name")},
    "stream_options": "pass holdback= and release_unit=",
    **{
        name: "set by qwenguard, not an option"
        for name in ("bound", "ledger", "given_items", "given_after", "judged", "answer_items", "answer_after")
    },
    "own_listeners": "set by qwenguard, not an option",
}

#: Other pieces' options (LlamaIndex's `GuardedLLM`, `GuardMiddleware`, `GuardRunnable`) GuardedChatModel has not.
_HINTS: dict[str, str] = {
    **_NOT_OPTIONS,
    "screen_tools": (
        "LlamaIndex GuardedLLM's option; no such screen on LangChain: GuardedChatModel judges the tool calls "
        "(check_tool_calls) and the tool results it reads, not the tools' descriptions"
    ),
    "screen_context": (
        "LlamaIndex GuardedLLM's option; no such screen on LangChain: the messages are judged as the model reads "
        "them (an opening system message with screen_system=True); judge retrieved documents with GuardedRetriever"
    ),
    "check_output": "GuardedChatModel always judges its answer",
    "exit_behavior": "GuardMiddleware's option: GuardedChatModel raises GuardViolation",
}


class GuardedChatModel(KeepsStops, HeldBackChatModel):
    """``model``, judged by ``guard``: its input before it runs, its answer before anyone sees it.

    Args:
        model: the chat model (or a runnable around one: ``model.bind(...)``, ``with_retry()``).
        guard: the `Guard`.
        check_input: screen the messages the model reads before it runs (default on).
        screen_system: judge a system message that opens the input too (the application's prompt, left
            out by default); every later system or developer message is judged anyway.
        check_tool_calls: judge tool calls (held until judged when streamed); ``False`` passes them on (but for a
            structured-output schema's call, the answer: `with_structured_output`).
        history_turns: earlier user/assistant turns given to the guard as context.
        holdback / release_unit: passed to the hold-back monitor (``guard.stream``); with a Gen guard,
            ``"sentence"`` (default), ``"opening"`` (the opening words early, then whole sentences) or
            ``"word"`` (judged text but its last word, throughout).
        parallel_input: start the model while its input is checked (``None``: the guard's
            ``parallel_input``); nothing goes out before the input's verdict.
        **kwargs: a chat model's own fields (``callbacks``, ``tags``, ``metadata``, ``rate_limiter``...); any
            other keyword is a ``TypeError`` naming it (`_options`).
    """

    type_prefix: ClassVar[str] = "qwenguard-guarded-"
    check_input: bool = True
    screen_system: bool = False
    parallel_input: bool | None = None

    def __init__(
        self,
        model: Runnable[Any, Any],
        guard: Guard,
        *,
        check_input: bool = True,
        screen_system: bool = False,
        check_tool_calls: bool = True,
        history_turns: int = DEFAULT_HISTORY_TURNS,
        holdback: int | None = None,
        release_unit: str | None = None,
        parallel_input: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, Runnable):
            raise TypeError(f"GuardedChatModel wraps a chat model: got a {type(model).__name__}")
        # pydantic ignores a keyword it has no field for: a misspelt option did nothing (rt55c F3).
        refuse_unknown("GuardedChatModel", kwargs, known_fields(type(self)) - set(_NOT_OPTIONS), _HINTS)
        callbacks = kwargs.pop("callbacks", None)  # the wrapper's own, the wrapped model's after them
        super().__init__(
            **self.fields_around(model, callbacks),
            guard=require_guard(guard),
            check_input=check_input,
            screen_system=screen_system,
            check_tool_calls=check_tool_calls,
            history_turns=history_turns,
            stream_options=monitor_options(holdback, release_unit),
            parallel_input=parallel_input,
            **kwargs,
        )

    @property
    def _identifying_params(self) -> dict[str, Any]:
        # Reported in every callback's ``invocation_params``: a `GuardCallbackHandler` on the same guard
        # leaves this run's stream to it (each chunk was judged before release), see `_holding.GUARD_PARAM`.
        return {GUARD_PARAM: guard_token(self.guard), TOOL_CALLS_PARAM: self.check_tool_calls}

    # -- what to check (pure) ---------------------------------------------------------------------
    def _input_items(self, messages: list[BaseMessage]) -> list[Item]:
        return (
            input_items(messages, self.history_turns, screen_system=self.screen_system, budget=self.guard.max_chars)
            if self.check_input
            else []
        )

    def _answer_items(self, messages: list[BaseMessage], answer: BaseMessage) -> list[Item]:
        context = guard_history(messages, self.history_turns)
        items = output_items(
            answer,
            context,
            self.history_turns,
            tool_calls=self.check_tool_calls,
            answers=self.answer_tools,
            budget=self.guard.max_chars,
            # Its calls after the calls asked for since the request too (rt71j F2).
            calls_context=call_history(messages, self.history_turns, self.guard.max_chars)
            if answer_tool_calls(answer)
            else None,
        )
        # A JSON answer is read parsed (structured output, a JSON parser after the model): its decoded strings too.
        return items + reading_items(answer, context, self.history_turns)

    def _parallel(self, items: list[Item]) -> bool:
        parallel = self.guard.parallel_input if self.parallel_input is None else self.parallel_input
        return bool(parallel) and bool(items)

    def _start_input(self, messages: list[BaseMessage]) -> PendingCheck | None:
        """Every message the model is about to read (streamed or not): judged before it runs, or beside it."""
        items = self._input_items(messages)
        return start_input(self.guard, items, parallel=self._parallel(items))

    async def _astart_input(self, messages: list[BaseMessage]) -> PendingCheck | None:
        items = await built_off_loop(lambda: self._input_items(messages), messages)
        return await astart_input(self.guard, items, parallel=self._parallel(items))

    def _judge_answer(self, messages: list[BaseMessage], answer: BaseMessage) -> None:
        """An answer that was not streamed, whole (a streamed one is judged as it streams)."""
        items = self._answer_items(messages, answer)
        raise_first(items, screen(self.guard, items))

    async def _ajudge_answer(self, messages: list[BaseMessage], answer: BaseMessage) -> None:
        items = await built_off_loop(lambda: self._answer_items(messages, answer), [messages, answer])
        raise_first(items, await ascreen(self.guard, items))

    # -- token counting: the inner model's own ----------------------------------------------------------------
    # BaseLanguageModel's fallback loads GPT-2's tokenizer from the Hub: offline it retried for minutes, then counted
    # 0 (``trim_messages(token_counter=guarded)`` kept the whole history), and online it counted another tokenizer's
    # tokens (rt52d F3). A wrapper that holds no chat model keeps that fallback.
    def get_token_ids(self, text: str) -> list[int]:
        model = chat_model_in(self.inner)
        return model.get_token_ids(text) if model is not None else super().get_token_ids(text)

    def get_num_tokens(self, text: str) -> int:
        model = chat_model_in(self.inner)
        return model.get_num_tokens(text) if model is not None else super().get_num_tokens(text)

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        model = chat_model_in(self.inner)
        if model is None:
            return super().get_num_tokens_from_messages(messages, tools)
        return model.get_num_tokens_from_messages(messages, tools)

    # -- structured output: the inner model's own, every model step through the guard ---------------------------
    def with_structured_output(
        self, schema: dict[str, Any] | type | None = None, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[Any, Any]:
        """The inner model's own ``with_structured_output(schema, include_raw=..., **kwargs)``, its model step
        re-pointed to this guarded model (`_repointed`). BaseChatModel's own would drop ``method`` and ask for a tool
        call whatever was asked: a model asked for JSON text (``method="json_schema"`` or ``"json_mode"``) got tools,
        and its JSON answer parsed to nothing. The binding's arguments (``response_format``, ``tools``...) are passed
        on to the inner model with each call, so the provider gets what the inner model asked for, and the guard
        judges every call: the input, the answer (JSON text as an answer, a schema's call as a tool call, even with
        ``check_tool_calls=False``: it is the answer)."""
        model = chat_model_in(self.inner)
        if model is None:
            raise NotImplementedError(
                f"GuardedChatModel.with_structured_output: no chat model found in {type(self.inner).__name__}. "
                "Wrap the chat model itself, or bind the schema as a tool (bind_tools)."
            )
        # ``schema=None`` is the inner model's to take or refuse (ChatOpenAI takes it with ``method="json_mode"``).
        built = model.with_structured_output(schema, include_raw=include_raw, **kwargs)  # type: ignore[arg-type]
        # A schema's tool call is the answer (``method="function_calling"``): judged whatever check_tool_calls says
        # (`_answer_tools`). The built runnable binds no tool but the schema's (and those its caller passed along).
        # Its call is judged as the answer, under the stricter of the response and tool-call policies (`AS_ANSWER`).
        judged = self.model_copy(update={"check_tool_calls": True, "answer_tools": _schema_tools(schema)})
        repointed = _repointed(built, model, judged)
        if repointed is None:
            raise NotImplementedError(
                f"GuardedChatModel.with_structured_output: {type(model).__name__} builds a runnable whose model step "
                'the guard cannot take over, so it would run unguarded. Pass method="function_calling" if the model '
                "takes it, or bind the schema as a tool (bind_tools) and parse the call."
            )
        # Its with_fallbacks / with_retry keep the guard's stop, as the model's own do: a structured fallback model
        # answered the request the guard had stopped (a RunnableSequence's with_fallbacks is LangChain's).
        return _keeping(repointed)


def _schema_tools(schema: Any) -> frozenset[str]:
    """The name of the tool ``with_structured_output(schema, method="function_calling")`` binds (the provider
    classes name it as ``convert_to_openai_tool`` does); none for a schema that is no tool."""
    try:
        name = convert_to_openai_tool(schema)["function"]["name"]
    except Exception:  # noqa: BLE001 - no tool of it: a JSON answer, judged as text
        return frozenset()
    return frozenset({name}) if isinstance(name, str) and name else frozenset()


def _repointed(
    built: Runnable[Any, Any], model: BaseChatModel, guarded: Runnable[Any, Any]
) -> Runnable[Any, Any] | None:
    """``built`` (a provider's structured-output runnable) with each step that calls ``model`` calling ``guarded``
    instead, with the same bound arguments: ``llm | parser`` and ``RunnableMap(raw=llm) | parser_with_fallback``,
    the shapes LangChain's chat models build, where ``llm`` is ``model`` or a binding of it. ``None`` when ``model``
    is in no step the walk knows (it would be called unguarded) or stays somewhere it does not look."""
    found = 0

    def walk(step: Runnable[Any, Any]) -> Runnable[Any, Any]:
        nonlocal found
        if step is model:
            found += 1
            return guarded
        if isinstance(step, RunnableBinding) and step.bound is model:  # ``model.bind(...)``, ``bind_tools``
            found += 1
            return step.model_copy(update={"bound": guarded})
        if isinstance(step, RunnableSequence):
            return RunnableSequence(*(walk(s) for s in step.steps), name=step.name)
        if isinstance(step, RunnableParallel):
            return RunnableParallel({key: walk(s) for key, s in step.steps__.items()})
        return step

    result = walk(built)
    return result if found and not _holds(result, model, guarded) else None


def _holds(runnable: Runnable[Any, Any], model: BaseChatModel, guarded: Runnable[Any, Any]) -> bool:
    """Does ``runnable`` still reach ``model`` but through ``guarded`` (in a binding of another kind, say)?"""
    stack: list[Any] = [runnable]
    while stack:
        step = stack.pop()
        if step is guarded:
            continue
        if step is model:
            return True
        if isinstance(step, RunnableSequence):
            stack.extend(step.steps)
        elif isinstance(step, RunnableParallel):
            stack.extend(step.steps__.values())
        elif isinstance(getattr(step, "bound", None), Runnable):
            stack.append(step.bound)
    return False
