"""rt70b F1: the app's own qwenguard handler in the run's config switched off the middleware's check of a sub-agent's
tool calls.

`GuardMiddleware` lends the children of a guarded tool (an "agent as a tool" sub-agent) a handler on its guard, which
judges each call the sub-agent's model asks for before its tool runs (rt67d F1). It lent it only where the run's config
held no qwenguard handler at all. docs/langchain.md recommends a handler beside the middleware; an app that put one
there for another job (tool-call checks off, since the middleware judges tool calls; or retrieval only), or one on a
looser guard, had the sub-agent's ``send_email(body=<clause>)`` run unjudged, and the outer agent answered "Done.".
Now the handler is lent unless a kept handler judges tool calls on the same guard; the app's handlers stay beside it.

Written as the user's setup: real ``create_agent`` agents and tools, the `Delegation` case of rt67m, the app's handler
in ``config["callbacks"]``; counted in e-mails sent and characters of the clause that reached the outer model.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage, ToolMessage
from lc_fakes import LOOSE_CALLS, SAFE_ANSWER, UNSAFE_CLAUSE, keyword_guard, scripted, tool_call
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware
from test_lc_rt67m_subagent_tools import MODES, NOTICE, TASK, Delegation, _outer, clause_chars

#: A handler kept for retrieval only: every other check off.
RETRIEVAL_ONLY = {
    "check_input": False,
    "check_output": False,
    "check_stream": False,
    "check_tool_calls": False,
    "check_tool_results": False,
}


def app_handler(mode: str, guard: Any, **options: Any) -> Any:
    """The handler an app puts in its config: the async one for an async app."""
    return (GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard, **options)


def delegate(
    mode: str, handler_options: dict[str, Any] | None, on_guard: str = "same", raise_error: bool = True
) -> tuple[Delegation, Any]:
    """Run the harmful delegation with ``exit_behavior="end"``; the app's handler (None: no handler) on the
    middleware's guard (``"same"``) or on a guard of its own whose tool-call stage ignores "Violent" (``"loose"``)."""
    case = Delegation(mode, "runtime_config", UNSAFE_CLAUSE)
    outer_model = _outer("Done.")
    agent = case.agent(outer_model)
    config: Any = None
    if handler_options is not None:
        guard = case.guard if on_guard == "same" else keyword_guard(LOOSE_CALLS)[0]
        handler = app_handler(mode, guard, **handler_options)
        handler.raise_error = raise_error  # LangChain's switch: False logs a handler's error and runs on
        config = {"callbacks": [handler]}
    result = case.run(agent, {"messages": [HumanMessage(TASK)]}, config)
    assert clause_chars(outer_model.seen) == 0
    return case, result


def notices(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m.text, m.status) for m in result["messages"] if isinstance(m, ToolMessage)]


@pytest.mark.parametrize("mode", MODES)
def test_an_app_handler_with_tool_call_checks_off_leaves_the_subagents_call_judged(mode: str) -> None:
    """The app turned tool-call checks off on its handler because the middleware judges tool calls."""
    case, result = delegate(mode, {"check_tool_calls": False})
    assert case.sent == [] and clause_chars(case.sent) == 0  # before: one e-mail with the clause
    assert notices(result) == [(NOTICE, "error")]
    assert result["messages"][-1].text != "Done."


@pytest.mark.parametrize("mode", MODES)
def test_a_retrieval_only_app_handler_leaves_the_subagents_call_judged(mode: str) -> None:
    case, result = delegate(mode, RETRIEVAL_ONLY)
    assert case.sent == []
    assert notices(result) == [(NOTICE, "error")]


@pytest.mark.parametrize("mode", MODES)
def test_an_app_handler_on_a_looser_guard_does_not_judge_alone(mode: str) -> None:
    """The app's handler judges tool calls, on a guard whose tool-call stage ignores "Violent": it lets the call
    through; the middleware's guard, lent beside it, blocks it."""
    case, result = delegate(mode, {}, on_guard="loose")
    assert case.sent == []
    assert notices(result) == [(NOTICE, "error")]


@pytest.mark.parametrize("mode", MODES)
def test_control_the_app_handlers_own_checks_still_run_inside_the_tool(mode: str) -> None:
    """Kept beside the lent handler, the app's handler (its input check on, tool-call checks off) still judges the
    sub-agent's model input: a task it flags stops the sub-agent before its model runs, where the middleware's guard
    (its tool-call stage ignoring "Violent") let the task through."""
    case = Delegation(mode, "runtime_config", "Lunch at noon.")
    outer_model = scripted(tool_call("mail_agent", {"task": TASK + " " + UNSAFE_CLAUSE}), SAFE_ANSWER)
    agent = create_agent(outer_model, [case.tool], middleware=[GuardMiddleware(keyword_guard(LOOSE_CALLS)[0])])
    strict, _ = keyword_guard()
    handler = app_handler(mode, strict, check_tool_calls=False, check_output=False, check_tool_results=False)
    with pytest.raises(GuardViolation):
        case.run(agent, {"messages": [HumanMessage(TASK)]}, {"callbacks": [handler]})
    assert case.sent == [] and case.inner_model.seen == []


@pytest.mark.parametrize("mode", MODES)
def test_a_log_only_app_handler_on_the_same_guard_does_not_judge_alone(mode: str) -> None:
    """rt70k F2: a shadow handler (every check on, ``raise_error=False``) flags the call; LangChain logs its stop and
    runs the tool. It covered the lent handler, and the sub-agent's e-mail went out."""
    case, result = delegate(mode, {}, raise_error=False)
    assert case.sent == []
    assert notices(result) == [(NOTICE, "error")]


def test_an_app_handler_reading_fewer_turns_does_not_judge_alone() -> None:
    """rt70k F1: a handler on the same guard with ``history_turns=0`` judges a sub-agent's call without the turns that
    make it harmful ("the mixture" after a turn about fuel oil in a pipe): the lent handler is kept beside it."""
    from langchain_core.callbacks import CallbackManager
    from qwenguard.integrations.langchain._held_tool import _guards_only

    guard, _ = keyword_guard()
    lent = GuardCallbackHandler(guard)
    for app, lends in ((GuardCallbackHandler(guard, history_turns=0), True), (GuardCallbackHandler(guard), False)):
        kept = _guards_only(CallbackManager(handlers=[app], inheritable_handlers=[app]), lent)
        assert (lent in kept.inheritable_handlers) is lends
        assert app in kept.inheritable_handlers


# -- controls: passed before the fix too ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_control_no_handler_in_the_config(mode: str) -> None:
    case, result = delegate(mode, None)
    assert case.sent == []
    assert notices(result) == [(NOTICE, "error")]


@pytest.mark.parametrize("mode", MODES)
def test_control_a_full_handler_on_the_same_guard_judges_alone(mode: str) -> None:
    """It covers what the lent handler would judge: none is lent, and its stop raises out of the run (rt68c F1)."""
    with pytest.raises(GuardViolation) as raised:
        delegate(mode, {})
    assert raised.value.decision.stage.value == "tool_call"


@pytest.mark.parametrize("mode", MODES)
def test_control_a_safe_delegation_beside_a_tool_calls_off_handler_sends_its_email(mode: str) -> None:
    """No false block: the lent handler beside the app's lets a safe sub-agent's e-mail go."""
    case = Delegation(mode, "runtime_config", "Lunch at noon.")
    agent = case.agent(_outer(SAFE_ANSWER))
    handler = app_handler(mode, case.guard, check_tool_calls=False)
    result = case.run(agent, {"messages": [HumanMessage(TASK)]}, {"callbacks": [handler]})
    assert case.sent == ["Lunch at noon."] and result["messages"][-1].text == SAFE_ANSWER
