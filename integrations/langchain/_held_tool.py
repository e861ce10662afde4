"""A guarded tool call's run, held from the caller's callbacks until the guard has judged what it returned.

LangGraph's tool handler runs the tool with the run's callbacks, so the tool's ``on_tool_end`` (``astream_events``
v2, v3's ``tool-finished``, ``stream_mode="tools"``) and its partial output (``ToolRuntime.emit_output_delta``)
reach the consumer before `GuardMiddleware.wrap_tool_call` reads the result. Here the tool runs out of sight
(`HeldTool`: of every handler but qwenguard's own, LangGraph's delta writer unset, and of the parent's stream: a
sub-agent the tool runs streams to no one, `_unheard`), and `ToolRun` tells the
callbacks the run's start before the tool runs and its end, or its error, with the judged result. Partial output
is not told: nothing judged it.

The call the guard judged is not always the one that runs: a middleware inside the guard's may rewrite it
(`HumanInTheLoopMiddleware` applies a reviewer's edit in its own ``wrap_tool_call``). `HeldTool` judges the call
it is given when it differs from the judged one, before the tool runs.

What the tool runs inside it (the "agent as a tool" pattern: a sub-agent with tools of its own) is judged there
too: `ToolGuards` lends the tool's children a handler on the middleware's guard, which judges each call a model
there asks for before its tool runs; its stop withholds the guarded call's result (before, with no handler in the
app's config, a sub-agent's ``send_email`` ran unjudged: rt67d F1). It is lent beside the app's own qwenguard
handlers, unless one of them judges tool calls on the same guard (`_covers`): one with tool-call checks off, or on
a looser guard, had judged alone, and the call ran (rt70b F1). A stop by the app's handler raises out of the run, as
its own stops do (rt68c F1); only the lent handler's follows ``exit_behavior``. What the sub-agent's tools return is
judged in its answer, the guarded call's result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManager, BaseCallbackHandler, BaseCallbackManager, CallbackManager
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool, Tool, ToolException
from langchain_core.utils.pydantic import get_fields
from langgraph.prebuilt.tool_node import ToolCallRequest, ToolRuntime
from qwenguard.core import Decision, Guard, GuardViolation

from . import _out_of_sight as out_of_sight
from .callbacks import AsyncGuardCallbackHandler, GuardCallbackHandler

#: Judges a call about to run that is not the judged one: ``None`` to run it, else the result in its place.
Judge = Callable[[dict[str, Any]], Any]
AsyncJudge = Callable[[dict[str, Any]], Awaitable[Any]]
#: The guarded call's outcome for a stop inside its tool (`ToolGuards`): the notice in its result's place (or it
#: raises).
Stopped = Callable[[Decision], Any]

_GUARD_HANDLERS = (GuardCallbackHandler, AsyncGuardCallbackHandler)
#: The handler the middleware lends a tool's children: `GuardCallbackHandler` or `AsyncGuardCallbackHandler`.
Lent = GuardCallbackHandler | AsyncGuardCallbackHandler


class ToolGuards:
    """The handlers a `GuardMiddleware` lends what its tools run inside them (a sub-agent's model and tools), on its
    guard and policy: each judges a call a model there asks for (``on_llm_end``) and again before its tool runs
    (``on_tool_start``). Its other checks are off: the tool's input is the call the middleware judged, and what the
    sub-agent answers (from its tools' results, or what a retriever inside the tool finds) comes back as the tool's
    result, which the middleware judges (not judged here again).
    Long-lived, as the middleware is: a handler serves concurrent runs, by run id."""

    def __init__(self, guard: Guard, history_turns: int) -> None:
        options: dict[str, Any] = {
            "check_input": False,
            "check_output": False,
            "check_stream": False,
            # What a sub-agent's tools return, and a retriever a tool runs, feed what comes back as the tool's result,
            # which the middleware judges. A stop at a sub-agent's tool result also left the sub-agent's own thread
            # (its checkpointer) with a call no tool message answers, and every later turn of that user failed (a
            # provider's 400, or the handler's refused rerun: rt67m2 F1); a stop at its model's call leaves nothing.
            "check_tool_results": False,
            "check_retrieval": False,
            "history_turns": history_turns,
        }
        self.sync = GuardCallbackHandler(guard, **options)
        self.asynchronous = AsyncGuardCallbackHandler(guard, **options)

    def for_ainvoke(self, tool: Any) -> Lent:
        """The handler for ``tool.ainvoke``'s children: the async one where the tool's own coroutine runs on the
        event loop; the sync one where LangChain runs the tool's sync code in a worker thread, whose sub-agent calls
        its callbacks the sync way (there an async handler's stop is logged and dropped: it could stop nothing)."""
        return self.asynchronous if _runs_on_loop(tool) else self.sync


def _runs_on_loop(tool: Any) -> bool:
    """Whether ``tool.ainvoke`` runs the tool's own coroutine, not its sync code in a worker thread (`BaseTool._arun`,
    and a `StructuredTool` or `Tool` without a ``coroutine``)."""
    if isinstance(tool, StructuredTool | Tool):
        return tool.coroutine is not None
    return isinstance(tool, BaseTool) and type(tool)._arun is not BaseTool._arun


def _covers(handler: Any, lent: Lent) -> bool:
    """Whether ``handler`` judges what ``lent`` would, as strictly: a model-made tool call (``check_tool_calls``),
    on the same guard, so under the same policy, with the same ``history_turns``, raising its stops. A handler with tool-call checks off (one kept for retrieval, or
    because the middleware judges tool calls) or on another guard (a looser policy) does not: with it alone, a
    sub-agent's ``send_email`` ran unjudged (rt70b F1)."""
    return (
        getattr(handler, "check_tool_calls", False) is True
        and getattr(handler, "guard", None) is lent.guard
        # As much context (a handler reading fewer turns may miss what makes the call harmful) and a stop that
        # stops: one set to log (``raise_error=False``) flags the call and LangChain runs the tool (rt70k F1, F2).
        and getattr(handler, "history_turns", None) == lent.history_turns
        and getattr(handler, "raise_error", False) is True
    )


def _guards_only(callbacks: Any, lent: Lent | None = None) -> Any:
    """The run's callbacks with only qwenguard's handlers kept: a callback handler beside the middleware still
    judges what the tool runs (a model, a sub-agent) and stops it; no one else hears the raw run. ``lent`` judges the
    tool's children too, beside the kept ones, unless one of them covers it (`_covers`: then it judges alone, each
    call judged once): inherited only, so that it hears the tool's children, not the tool's own run (its call and
    result are the middleware's to judge: heard here too, each was judged twice)."""
    if isinstance(callbacks, BaseCallbackManager):
        kept = callbacks.copy()
        kept.handlers = [h for h in kept.handlers if isinstance(h, _GUARD_HANDLERS)]
        kept.inheritable_handlers = [h for h in kept.inheritable_handlers if isinstance(h, _GUARD_HANDLERS)]
        if lent is not None and not any(_covers(h, lent) for h in kept.inheritable_handlers):
            kept.inheritable_handlers = [*kept.inheritable_handlers, lent]
        return kept
    handlers: list[BaseCallbackHandler] = (
        [h for h in callbacks if isinstance(h, _GUARD_HANDLERS)] if isinstance(callbacks, list) else []
    )
    if lent is None or any(_covers(h, lent) for h in handlers):
        return handlers if isinstance(callbacks, list) else None
    # A list's handlers hear the tool's own run and its children (LangChain's reading of a config's list).
    return CallbackManager(handlers=handlers, inheritable_handlers=[*handlers, lent])


def _stopped_by(error: BaseException, handler: Lent | None) -> Decision | None:
    """The decision of ``handler``'s stop, where ``error`` is one: a `GuardViolation` one of its hooks raised (its
    frame is on the error's way up), not one the application's own code or guards raised."""
    if handler is None or not isinstance(error, GuardViolation):
        return None
    trace = error.__traceback__
    while trace is not None:
        if trace.tb_frame.f_locals.get("self") is handler:
            return error.decision
        trace = trace.tb_next
    return None


#: LangGraph's ``configurable`` keys through which a graph run inside the tool (a sub-agent) streams to its
#: parent's consumer: the parent's stream (set for ``subgraphs=True``, which ``stream_events(version="v3")`` always
#: uses: every mode of the inner run, its raw answer included, went out under a ``tools:<id>`` namespace) and its
#: content-block messages flag. `langgraph._internal._constants` names them; private there, so spelled out here.
_PARENT_STREAM = ("__pregel_stream", "__pregel_stream_messages_v2")
#: How a graph run inside the tool checkpoints: LangGraph lends it the parent's checkpointer and thread, under the
#: namespace ``tools:<id>``, and by default saves each of its steps there. With ``"exit"`` a graph nested under a
#: task saves only when it is interrupted or fails: what LangGraph needs to resume it, no more.
_DURABILITY = "__pregel_durability"


def _unheard(config: Any, lent: Lent | None = None) -> dict[str, Any]:
    """The tool's config (``configurable``, tags, metadata) with the run's callbacks but qwenguard's left out (where
    there is none, ``lent`` for the tool's children: `_guards_only`), and out of the parent's stream protocol: a
    graph the tool runs (a sub-agent) streams to no one, and its raw state is saved in the parent's thread only where
    it must be resumed (`_PARENT_STREAM`, `_DURABILITY`). What the tool itself uses of the configuration stays:
    ``interrupt()`` (scratchpad, namespace), the store and the runtime, ``get_stream_writer()`` (its own
    ``"custom"`` writes, the application's)."""
    out = dict(config or {})
    out["callbacks"] = _guards_only(out.get("callbacks"), lent)
    configurable = out.get("configurable")
    if isinstance(configurable, Mapping):
        kept = {key: value for key, value in configurable.items() if key not in _PARENT_STREAM}
        kept[_DURABILITY] = "exit"
        out["configurable"] = kept
    return out


def _unheard_input(input: Any, lent: Lent | None = None) -> Any:
    """The tool's input with any `ToolRuntime` LangGraph injected given the same config as the tool
    (`_unheard`): ``inner.invoke(..., runtime.config)`` passed the parent's callbacks and stream on."""
    if not (isinstance(input, Mapping) and input.get("type") == "tool_call" and isinstance(input.get("args"), Mapping)):
        return input
    args = input["args"]
    if not any(isinstance(value, ToolRuntime) for value in args.values()):
        return input
    return {**input, "args": {key: _unheard_runtime(value, lent) for key, value in args.items()}}


def _unheard_runtime(value: Any, lent: Lent | None) -> Any:
    if not isinstance(value, ToolRuntime):
        return value
    return dataclasses.replace(value, config=cast(RunnableConfig, _unheard(value.config, lent)))


def _fields(schema: Any) -> set[str]:
    return set((schema.get("properties") or {}) if isinstance(schema, dict) else get_fields(schema))


def _injected(tool: Any) -> set[str]:
    """The arguments LangGraph injects into ``tool`` (state, runtime, ids): in its input schema, not in the
    schema the model is shown. None known where a schema cannot be read: then every argument counts."""
    try:
        return _fields(tool.get_input_schema()) - _fields(tool.tool_call_schema)
    except Exception:  # noqa: BLE001 - a tool without readable schemas
        return set()


def _model_arguments(tool: Any, args: Any) -> Any:
    """A call's arguments as the model (or a reviewer) wrote them: every one but those LangGraph injects. (A
    classic single-input `Tool` is shown ``tool_input`` while its call says ``query``: that counts.)"""
    if not isinstance(args, Mapping):
        return args
    injected = _injected(tool)
    return {key: value for key, value in args.items() if key not in injected}


class HeldCall:
    """What the held tools of one guarded call share: the judged call, the judge of any other call one is given,
    and what happened on the latest attempt (a retry inside the guard runs the tool again)."""

    def __init__(
        self, request: Any, judge: Judge, ajudge: AsyncJudge, guards: ToolGuards | None, stopped: Stopped
    ) -> None:
        call = request.tool_call
        self.judged = (call.get("name"), _model_arguments(request.tool, call.get("args")))
        self.judge, self.ajudge = judge, ajudge
        self.guards, self.stopped = guards, stopped
        #: What the tool raised on the latest attempt, if it failed (a handler may turn it into an error message).
        self.raised: BaseException | None = None
        #: Whether the latest attempt's call was blocked (the tool did not run; the guard's notice is the result).
        self.blocked = False
        #: That notice, as the tool returned it (a handler may wrap it in text of its own), and what it held then.
        self.notice: Any = None
        self.notice_state: Any = None

    def attempt(self) -> None:
        self.raised, self.blocked, self.notice, self.notice_state = None, False, None, None

    def block(self, notice: Any) -> Any:
        """``notice`` is the attempt's result: the call was blocked."""
        self.blocked, self.notice, self.notice_state = True, notice, _state(notice)
        return notice


class HeldTool:
    """The tool a guarded call runs: the real one, out of sight of the run's callbacks, and only once the call
    it is given was judged. Anything else a handler reads of it (name, schema) is the real tool's."""

    def __init__(self, tool: Any, held: HeldCall) -> None:
        self._tool = tool
        self._held = held

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tool, name)

    def _unjudged(self, input: Any) -> dict[str, Any] | None:
        """The call ``input`` asks for, where it is not the one the guard judged."""
        if isinstance(input, Mapping) and input.get("type") == "tool_call":
            call = {"name": input.get("name"), "args": input.get("args"), "id": input.get("id")}
        else:  # not a tool call: its input is its arguments
            call = {"name": getattr(self._tool, "name", None), "args": input, "id": None}
        call["args"] = _model_arguments(self._tool, call["args"])
        return None if (call["name"], call["args"]) == self._held.judged else call

    # A stop the lent handler raised inside the tool (a sub-agent's call blocked before its tool ran) withholds the
    # guarded call's result, under the middleware's ``exit_behavior`` (`HeldCall.stopped`: ``"error"`` raises, else
    # the notice is the result), not a failure of the tool: an application's own handler crashed the run with it,
    # whatever ``exit_behavior`` said.
    def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        held = self._held
        held.attempt()
        call = self._unjudged(input)
        if call is not None and (blocked := held.judge(call)) is not None:
            return held.block(blocked)
        lent = held.guards.sync if held.guards is not None else None
        try:
            return out_of_sight.call(
                lambda: self._tool.invoke(_unheard_input(input, lent), _unheard(config, lent), **kwargs)
            )
        except BaseException as error:
            stop = _stopped_by(error, lent)
            if stop is None:
                held.raised = error
                raise
        # Out of the except block: the call's notice (or the guard's raise) has the stop inside chained to nothing.
        return held.block(held.stopped(stop))

    async def ainvoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
        held = self._held
        held.attempt()
        call = self._unjudged(input)
        if call is not None and (blocked := await held.ajudge(call)) is not None:
            return held.block(blocked)
        lent = held.guards.for_ainvoke(self._tool) if held.guards is not None else None
        try:
            return await out_of_sight.acall(
                lambda: self._tool.ainvoke(_unheard_input(input, lent), _unheard(config, lent), **kwargs)
            )
        except BaseException as error:
            stop = _stopped_by(error, lent)
            if stop is None:
                held.raised = error
                raise
        return held.block(held.stopped(stop))


class HeldToolRequest(ToolCallRequest):
    """A `ToolCallRequest` whose tool stays held: a tool a middleware inside `GuardMiddleware` puts in its place
    (``override(tool=...)``: a router to another tool) is held and judged the same way before it runs."""

    held: HeldCall

    @classmethod
    def of(cls, request: Any, held: HeldCall) -> HeldToolRequest:
        fields = {name: getattr(request, name) for name in request.__dataclass_fields__}
        out = cls(**{**fields, "tool": HeldTool(request.tool, held)})
        object.__setattr__(out, "held", held)
        return out

    def override(self, **overrides: Any) -> HeldToolRequest:
        tool = overrides.get("tool")
        if tool is not None and not isinstance(tool, HeldTool):
            overrides["tool"] = HeldTool(tool, self.held)
        replaced = super().override(**overrides)
        object.__setattr__(replaced, "held", self.held)
        return replaced  # type: ignore[return-value]

    def __setattr__(self, name: str, value: Any) -> None:
        held = self.__dict__.get("held")  # absent while the dataclass __init__ sets the fields
        if held is not None and name == "tool" and value is not None and not isinstance(value, HeldTool):
            value = HeldTool(value, held)
        super().__setattr__(name, value)


def _config(request: Any) -> dict[str, Any]:
    runtime = getattr(request, "runtime", None)
    return dict(getattr(runtime, "config", None) or {})


#: Where LangGraph keeps a task's interrupt bookkeeping in its ``configurable`` (``CONFIG_KEY_SCRATCHPAD``, private:
#: spelled out, and read duck-typed; tests/langchain/test_lc_rt60r_resume_values.py fails if it moves).
_SCRATCHPAD = "__pregel_scratchpad"
_RESUME_MAP = "__pregel_resume_map"  # LangGraph's CONFIG_KEY_RESUME_MAP: the client's Command(resume={id: value})


def pending_resumes(request: Any) -> list[Any]:
    """The values the client's ``Command(resume=...)`` gives the tool call's ``interrupt()``s when it runs again: its
    task's own (``resume``: a resume map's entry for it, and those its earlier interrupts took), every value of the
    client's resume map, and the run's single resume value, looked at without taking it (``get_null_resume(False)``).
    Empty outside a resumed run."""
    configurable = _config(request).get("configurable")
    pad = configurable.get(_SCRATCHPAD) if isinstance(configurable, Mapping) else None
    if pad is None:
        return []
    found = getattr(pad, "resume", None)
    values = list(found) if isinstance(found, list) else []
    # Every value of a resume map, whatever interrupt it answers: one raised deeper in the tool's call tree (a
    # sub-graph the tool runs) is keyed by that nested task, which this task's scratchpad never holds, and its node
    # acted on the value unjudged (rt60f F2). A value for an interrupt elsewhere is the client's input all the same.
    by_interrupt = configurable.get(_RESUME_MAP) if isinstance(configurable, Mapping) else None
    if isinstance(by_interrupt, Mapping):
        taken = {id(v) for v in values}
        values.extend(v for v in by_interrupt.values() if id(v) not in taken)
    peek = getattr(pad, "get_null_resume", None)
    if callable(peek):
        single = peek(False)
        if single is not None:
            values.append(single)
    return values


def _start_args(request: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """What `BaseTool.run` tells ``on_tool_start``: the model's arguments (injected ones left out)."""
    tool, call = request.tool, request.tool_call
    args = call.get("args") or {}
    config = _config(request)
    serialized = {"name": tool.name, "description": tool.description}
    return (serialized, str(args)), {
        "name": config.get("run_name") or tool.name,
        "run_id": config.get("run_id"),
        "inputs": args,
        "tool_call_id": call.get("id"),
    }


def _managers(request: Any) -> dict[str, Any]:
    config = _config(request)
    return {
        "inheritable_callbacks": config.get("callbacks"),
        "inheritable_tags": config.get("tags"),
        "local_tags": getattr(request.tool, "tags", None),
        "inheritable_metadata": config.get("metadata"),
        "local_metadata": getattr(request.tool, "metadata", None),
    }


def _state(message: Any) -> Any:
    """What a notice holds that a consumer reads (a copy: a change made in place shows)."""
    try:
        return message.model_dump(mode="json")
    except Exception:  # noqa: BLE001 - not a message: compared as itself
        return repr(message)


def _judged_text(judged: Any) -> str:
    return judged.text if isinstance(judged, ToolMessage) else ""


class ToolRun:
    """The tool's run as the caller's callbacks see it: started before the tool runs, ended with the judged
    result (or failed, where the tool raised, with the text the guard let through). ``request`` is what the
    handler runs: the tool held. A no-op, and the request unchanged, where there is no tool to run (LangGraph
    answers an unknown tool's call itself). ``guards``: the handlers lent to what the tool runs (`ToolGuards`), and
    ``stopped``: the call's outcome for their stop."""

    def __init__(
        self, request: Any, judge: Judge, ajudge: AsyncJudge, guards: ToolGuards | None, stopped: Stopped
    ) -> None:
        self._request = request
        self._manager: Any = None
        self._held = None if request.tool is None else HeldCall(request, judge, ajudge, guards, stopped)
        self.request = request if self._held is None else HeldToolRequest.of(request, self._held)

    @property
    def blocked(self) -> bool:
        """Whether the tool was given a call the guard then blocked: its result is the guard's notice."""
        return self._held is not None and self._held.blocked

    def is_notice(self, result: Any) -> bool:
        """Whether ``result`` is the guard's notice for a blocked call, as the tool returned it: the same object,
        unchanged (a middleware inside the guard that appended the blocked arguments to it in place: rt50f F8)."""
        held = self._held
        return held is not None and held.blocked and result is held.notice and _state(result) == held.notice_state

    def _failure(self, judged: Any) -> BaseException | None:
        """The run's error where the tool raised and the handler answered it (LangGraph's handled error), with
        the judged text: the tool's own run told an error there. A result the guard withheld is an end."""
        if self._held is None or self._held.raised is None:
            return None
        return ToolException(_judged_text(judged))

    def start(self) -> None:
        if self._request.tool is None:
            return
        args, kwargs = _start_args(self._request)
        self._manager = CallbackManager.configure(**_managers(self._request)).on_tool_start(*args, **kwargs)

    async def astart(self) -> None:
        if self._request.tool is None:
            return
        args, kwargs = _start_args(self._request)
        manager = AsyncCallbackManager.configure(**_managers(self._request))
        self._manager = await manager.on_tool_start(*args, **kwargs)

    def end(self, judged: Any) -> None:
        """Told once the guard judged the handler's result: ``judged`` is what the state receives."""
        if self._manager is None:
            return
        failure = self._failure(judged)
        if failure is not None:
            self._manager.on_tool_error(failure, tool_call_id=self._request.tool_call.get("id"))
        else:
            self._manager.on_tool_end(judged, name=self._request.tool.name)

    async def aend(self, judged: Any) -> None:
        if self._manager is None:
            return
        failure = self._failure(judged)
        if failure is not None:
            await self._manager.on_tool_error(failure, tool_call_id=self._request.tool_call.get("id"))
        else:
            await self._manager.on_tool_end(judged, name=self._request.tool.name)

    def error(self, error: BaseException) -> None:
        if self._manager is not None:
            self._manager.on_tool_error(error, tool_call_id=self._request.tool_call.get("id"))

    async def aerror(self, error: BaseException) -> None:
        if self._manager is not None:
            await self._manager.on_tool_error(error, tool_call_id=self._request.tool_call.get("id"))
