"""What a failing tool says, and what a reviewer's blocked edit says, reach no consumer unjudged (rt50d F1, F2).

F2: a tool's exception can quote what it read (a page it could not parse). `GuardMiddleware.wrap_tool_call` told
the run's callbacks and re-raised it unjudged, so LangChain's `ToolRetryMiddleware` (``on_failure="continue"``) or
`ToolErrorMiddleware` listed before the guard wrote it into a ToolMessage that streamed out and stayed in the
checkpoint, and with the guard alone the raw exception reached the app (and LangGraph's tasks stream and
checkpoint). The error's text is judged as the tool's output now: blocked, the guard's notice is the result
(``"error"``: `GuardViolation`, with nothing of the tool's error chained to it).

F1: `HumanInTheLoopMiddleware` (inside the guard) wraps whatever its handler returns in a note quoting the
reviewer's edited arguments; when the guard blocked that edit, the note quoted the blocked arguments and the guard
passed it on unjudged. Now only the guard's own notice, as the tool returned it, goes unjudged.

`ChatOpenAI` against the scripted server, LangChain's own middleware, the demo guard, `InMemorySaver`. Counted:
characters of the unsafe text in every stream chunk, every checkpoint and the exception the app receives.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware, ToolErrorMiddleware, ToolRetryMiddleware
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from lc_fakes import INJECTION, SAFE_ANSWER, SAFE_QUESTION, mailer
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardMiddleware
from scripted_openai import Reply, ToolCall, scripted_openai
from test_openai_paths import MODES, chat

PAGE_ERROR = "could not parse the page: " + INJECTION
FETCH = [
    Reply.words("Let me search.", tool_calls=[ToolCall("search", json.dumps({"q": "France"}), id="c1")]),
    Reply.words(SAFE_ANSWER),
]
OUTER = {
    "retry": lambda: [ToolRetryMiddleware(max_retries=1, initial_delay=0, jitter=False)],
    "tool_error": lambda: [ToolErrorMiddleware(on_error=lambda error, request: f"Tool failed: {error}")],
    "guard_alone": lambda: [],
}


def leaked(value: Any) -> int:
    """Characters of the injection in ``value`` (its repr: every field of every message, every error)."""
    return len(INJECTION) if INJECTION[:30] in repr(value) else 0


@tool
def search(q: str) -> str:
    """Search the web."""
    raise ValueError(PAGE_ERROR)


def _stream(agent: Any, inputs: Any, config: dict[str, Any], mode: str) -> tuple[list[Any], BaseException | None]:
    modes = ["messages", "updates", "tasks", "checkpoints"]
    seen: list[Any] = []

    async def astream() -> None:
        async for chunk in agent.astream(inputs, config, stream_mode=modes):
            seen.append(chunk)

    try:
        if mode == "sync":
            seen.extend(agent.stream(inputs, config, stream_mode=modes))
        else:
            asyncio.run(astream())
    except Exception as error:  # noqa: BLE001 - what the app receives is counted too
        return seen, error
    return seen, None


def _history(agent: Any, config: dict[str, Any]) -> list[Any]:
    return [(state.values, [task.error for task in state.tasks]) for state in agent.get_state_history(config)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("outer", list(OUTER))
def test_a_tools_unsafe_error_reaches_no_consumer(guard, mode, outer):
    config = {"configurable": {"thread_id": f"{outer}-{mode}"}}
    with scripted_openai(FETCH, pace=0) as url:
        middleware = [*OUTER[outer](), GuardMiddleware(guard, exit_behavior="replace")]
        agent = create_agent(chat(url), [search], middleware=middleware, checkpointer=InMemorySaver())
        seen, raised = _stream(agent, {"messages": [{"role": "user", "content": SAFE_QUESTION}]}, config, mode)
        history = _history(agent, config)
    assert (leaked(seen), leaked(history), leaked(raised), leaked(getattr(raised, "__context__", None))) == (0, 0, 0, 0)
    results = [m for m in agent.get_state(config).values["messages"] if isinstance(m, ToolMessage)]
    assert results and all("withheld" in m.text for m in results), [m.text for m in results]


@pytest.mark.parametrize("mode", MODES)
def test_with_exit_behavior_error_the_stop_carries_nothing_of_the_tools_error(guard, mode):
    config = {"configurable": {"thread_id": f"error-{mode}"}}
    with scripted_openai(FETCH, pace=0) as url:
        agent = create_agent(
            chat(url),
            [search],
            middleware=[GuardMiddleware(guard, exit_behavior="error")],
            checkpointer=InMemorySaver(),
        )
        seen, raised = _stream(agent, {"messages": [{"role": "user", "content": SAFE_QUESTION}]}, config, mode)
        history = _history(agent, config)
    assert isinstance(raised, GuardViolation), raised
    assert raised.__context__ is None and raised.__cause__ is None
    assert (leaked(seen), leaked(history), leaked(raised)) == (0, 0, 0)


@pytest.mark.parametrize("mode", MODES)
def test_a_tools_safe_error_is_raised_unchanged(guard, mode):
    @tool("search")
    def timing_out(q: str) -> str:
        """Search the web."""
        raise RuntimeError("the search service timed out")

    config = {"configurable": {"thread_id": f"safe-{mode}"}}
    with scripted_openai(FETCH, pace=0) as url:
        agent = create_agent(chat(url), [timing_out], middleware=[GuardMiddleware(guard)], checkpointer=InMemorySaver())
        _, raised = _stream(agent, {"messages": [{"role": "user", "content": SAFE_QUESTION}]}, config, mode)
    assert isinstance(raised, RuntimeError) and str(raised) == "the search service timed out"


SAFE_EMAIL_ARGS = json.dumps({"to": "friend@example.com", "body": "See you at noon."})


def test_a_reviewers_blocked_edit_is_not_echoed_to_the_consumer(guard):
    """The order docs/langchain.md gives: the reviewer listed after the guard (inside its tool call). Listed
    before it, the reviewer wraps the guard's notice after the guard returned it: judged at the next model call."""
    send_email, sent = mailer()
    script = [
        Reply.words("Let me send that.", tool_calls=[ToolCall("send_email", SAFE_EMAIL_ARGS, id="c1")]),
        Reply.words("Done."),
    ]
    config = {"configurable": {"thread_id": "hitl"}}
    with scripted_openai(script, pace=0) as url:
        reviewer = HumanInTheLoopMiddleware(interrupt_on={"send_email": True})
        guard_middleware = GuardMiddleware(guard, exit_behavior="replace")
        agent = create_agent(
            chat(url), [send_email], middleware=[guard_middleware, reviewer], checkpointer=InMemorySaver()
        )
        first = agent.invoke({"messages": [{"role": "user", "content": "E-mail my friend."}]}, config)
        assert first.get("__interrupt__")
        edited = {"name": "send_email", "args": {"to": "friend@example.com", "body": INJECTION}}
        resume = Command(resume={"decisions": [{"type": "edit", "edited_action": edited}]})
        streamed = [chunk[0] for mode, chunk in agent.stream(resume, config, stream_mode=["messages"]) if mode]
        stored = [m for state in agent.get_state_history(config) for m in state.values.get("messages", [])]
    assert sent == []
    # The tool messages: the reviewer's own edit stays in the AIMessage's calls, where the reviewer wrote it.
    results = [m for m in [*streamed, *stored] if isinstance(m, ToolMessage)]
    assert results and leaked([m.content for m in results]) == 0


# -- rt50f F7, F2: what an error carries past max_chars ----------------------------------------------------------
CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
LONG_PAGE = "Welcome to the forum. " * 200 + CLAUSE  # about 4,500 characters: past the guard's max_chars below


def _keyword_guard():
    from faults import ScriptedBackend, keyword_verdict
    from qwenguard.core import Guard

    return Guard(ScriptedBackend(keyword_verdict, name="kw"), max_chars=2_000, cache_size=0)


def _failing(error: BaseException):
    @tool("search")
    def failing(q: str) -> str:
        """Search the web."""
        raise error

    return failing


def _caused() -> BaseException:
    try:
        raise ValueError(LONG_PAGE)
    except ValueError as page:
        try:
            raise RuntimeError("could not parse the page") from page
        except RuntimeError as error:
            return error


def _clause_out(value: Any) -> int:
    return len(CLAUSE) if "ammonium" in repr(value) else 0


@pytest.mark.parametrize("shape", ["cause", "own_text"])
@pytest.mark.parametrize("outer", ["tool_error_cause", "guard_alone"])
def test_an_error_carrying_more_than_max_chars_is_withheld_not_passed_on(mode_sync, shape, outer):
    """rt50f F7: the error's reader left a cause past its budget out of the check whole, and the error went on with
    it (the app got the page in __cause__; a ToolErrorMiddleware writing its cause streamed it). F2: an error whose
    own text is past max_chars made the check raise InputTooLarge inside the except block, the tool's error (page
    included) chained to it. Now such an error is withheld like a blocked one, whatever on_error says."""
    error = _caused() if shape == "cause" else ValueError(LONG_PAGE)
    middleware = [GuardMiddleware(_keyword_guard(), exit_behavior="replace")]
    if outer == "tool_error_cause":
        middleware.insert(0, ToolErrorMiddleware(on_error=lambda e, r: f"Tool failed: {e.__cause__ or e}"))
    config = {"configurable": {"thread_id": f"long-{shape}-{outer}"}}
    with scripted_openai(FETCH, pace=0) as url:
        agent = create_agent(chat(url), [_failing(error)], middleware=middleware, checkpointer=InMemorySaver())
        seen, raised = _stream(agent, {"messages": [{"role": "user", "content": SAFE_QUESTION}]}, config, mode_sync)
        history = _history(agent, config)
    assert raised is None, repr(raised)[:300]
    assert (_clause_out(seen), _clause_out(history)) == (0, 0)


@pytest.fixture(params=MODES)
def mode_sync(request):
    return request.param


def test_a_notice_annotated_in_place_by_a_middleware_inside_the_guard_is_judged(guard):
    """rt50f F8: the guard's own notice went unjudged when the same object came back, so a middleware inside the
    guard that edited the call to unsafe arguments and appended them to the notice in place streamed them."""
    from langchain.agents.middleware import AgentMiddleware

    class EditAndAnnotate(AgentMiddleware):
        def wrap_tool_call(self, request, handler):
            call = {**request.tool_call, "args": {"to": "friend@example.com", "body": INJECTION}}
            result = handler(request.override(tool_call=call))
            result.content = f"{result.content} (sent with {json.dumps(call['args'])})"
            return result

    send_email, sent = mailer()
    script = [
        Reply.words("Sending.", tool_calls=[ToolCall("send_email", SAFE_EMAIL_ARGS, id="c1")]),
        Reply.words("Done."),
    ]
    config = {"configurable": {"thread_id": "annotated"}}
    with scripted_openai(script, pace=0) as url:
        middleware = [GuardMiddleware(guard, exit_behavior="replace"), EditAndAnnotate()]
        agent = create_agent(chat(url), [send_email], middleware=middleware, checkpointer=InMemorySaver())
        seen = list(
            agent.stream(
                {"messages": [{"role": "user", "content": "E-mail my friend."}]}, config, stream_mode=["updates"]
            )
        )
        stored = [m for s in agent.get_state_history(config) for m in s.values.get("messages", [])]
    assert sent == []
    results = [m.content for m in stored if isinstance(m, ToolMessage)]
    assert results and leaked(results) == 0 and leaked([c for _, c in seen if "tools" in c]) == 0
