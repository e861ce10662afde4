"""rt66e: a tool's side effect ran more than once after a guard stop.

F1: under ``exit_behavior="error"`` a tool's result the guard could not judge (`GuardUnavailable`, `GuardTimeout`: the
policy failing closed) left no stop: ``invoke(None)`` posted the comment again, the thread's next turn sent the model
an unanswered call (a provider's 400), and a `ToolRetryMiddleware` listed before the guard posted it once per attempt.
F2: an async agent's parallel call cancelled beside a blocked result (its sync tool made the payment, its result was
lost) ran again on ``ainvoke(None)``. F3: a `GuardCallbackHandler` in the run's config blocked a tool's result, and
every ``invoke(None)`` ran the tool again. F4: a stop kept on ``thread_id=42`` was not found for ``"42"``, the same
thread to LangGraph's saver. Counted in the tool's runs (a list it appends to) and in what the model read.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import asyncio
import threading
from typing import Any

import pytest
from faults import PoisonedJudge
from langchain.agents import create_agent
from langchain.agents.middleware import ToolRetryMiddleware
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, keyword_guard, scripted, tool_call
from qwenguard.core import Guard, GuardTimeout, GuardUnavailable, GuardViolation, Policy
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware

MODES = ["sync", "async"]
THREAD = {"configurable": {"thread_id": "t"}}
POISON = "Zanzibar"  # `PoisonedJudge` cannot judge a text that holds it
REPLY = f"Reply from the forum in {POISON}: thanks!"
POST = {"messages": [HumanMessage("Post 'Nice roses!'")]}
RESULT_NOTICE = "The output of tool 'post_comment' was withheld by the safety guard"
LOST_NOTICE = "The tool 'pay' may have run, but its result was lost"


def _run(agent: Any, inputs: Any, mode: str, config: Any = THREAD) -> dict[str, Any]:
    if mode == "sync":
        return agent.invoke(inputs, config)
    return asyncio.run(agent.ainvoke(inputs, config))


def _poster(reply: str) -> tuple[Any, list[str]]:
    """A real tool that posts a comment (its side effect) and returns the forum's ``reply``, and the posts made."""
    posted: list[str] = []

    @tool
    def post_comment(text: str) -> str:
        """Post a comment; returns the forum's reply."""
        posted.append(text)
        return reply

    return post_comment, posted


def _unanswered(messages: list[BaseMessage]) -> list[str]:
    """The calls of an answer no tool message right after it answers (the providers' rule)."""
    found = []
    for i, message in enumerate(messages):
        for call in getattr(message, "tool_calls", None) or []:
            after = []
            for later in messages[i + 1 :]:
                if not isinstance(later, ToolMessage):
                    break
                after.append(later.tool_call_id)
            if call["id"] not in after:
                found.append(call["id"])
    return found


def _unjudged_guard(kind: str) -> Guard:
    """A guard that cannot answer on the forum's reply: its backend crashes, or outlasts the policy's timeout."""
    if kind == "unavailable":
        return Guard(PoisonedJudge("raise"), cache_size=0)
    return Guard(PoisonedJudge("slow"), cache_size=0, policy=Policy(timeout_s=0.05))


def _back(guard: Guard) -> None:
    """The guard answers again (the backend recovered)."""
    guard.backend._poisoned = lambda conversations: False  # type: ignore[attr-defined]


# -- F1: a result the guard could not judge ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["unavailable", "timeout"])
@pytest.mark.parametrize("mode", MODES)
def test_a_result_the_guard_could_not_judge_is_not_posted_again_on_resume(mode: str, kind: str) -> None:
    post, posted = _poster(REPLY)
    guard = _unjudged_guard(kind)
    model = scripted(tool_call("post_comment", {"text": "Nice roses!"}), SAFE_ANSWER)
    agent = create_agent(
        model, [post], middleware=[GuardMiddleware(guard, exit_behavior="error")], checkpointer=InMemorySaver()
    )
    with pytest.raises(GuardTimeout if kind == "timeout" else GuardUnavailable):
        _run(agent, POST, mode)
    assert posted == ["Nice roses!"]
    _back(guard)
    out = _run(agent, None, mode)
    assert posted == ["Nice roses!"]  # the comment was posted once
    assert out["messages"][-1].content == SAFE_ANSWER
    read = model.seen[-1]
    assert _unanswered(read) == []
    answer = [m for m in read if isinstance(m, ToolMessage)]
    assert [m.tool_call_id for m in answer] == ["call_1"]
    assert answer[0].content.startswith(RESULT_NOTICE) and POISON not in answer[0].content


@pytest.mark.parametrize("mode", MODES)
def test_the_next_turn_answers_a_call_whose_result_the_guard_could_not_judge(mode: str) -> None:
    post, posted = _poster(REPLY)
    guard = _unjudged_guard("unavailable")
    model = scripted(tool_call("post_comment", {"text": "Nice roses!"}), SAFE_ANSWER)
    agent = create_agent(
        model, [post], middleware=[GuardMiddleware(guard, exit_behavior="error")], checkpointer=InMemorySaver()
    )
    with pytest.raises(GuardUnavailable):
        _run(agent, POST, mode)
    _back(guard)
    _run(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, mode)
    read = model.seen[-1]
    assert _unanswered(read) == []  # before: the call went to the model unanswered (a provider's 400)
    assert not any(POISON in str(m.content) for m in read)
    assert posted == ["Nice roses!"]


def _retried_agent(guard: Guard, post: Any, model: Any) -> Any:
    retry = ToolRetryMiddleware(max_retries=2, initial_delay=0.0, jitter=False, on_failure="error")
    middleware = [retry, GuardMiddleware(guard, exit_behavior="error")]
    return create_agent(model, [post], middleware=middleware, checkpointer=InMemorySaver())


@pytest.mark.parametrize("mode", MODES)
def test_a_retry_around_the_guard_does_not_post_again_when_the_guard_cannot_answer(mode: str) -> None:
    post, posted = _poster(REPLY)
    guard = _unjudged_guard("unavailable")
    agent = _retried_agent(guard, post, scripted(tool_call("post_comment", {"text": "Nice roses!"}), SAFE_ANSWER))
    with pytest.raises(GuardUnavailable):
        _run(agent, POST, mode)
    assert posted == ["Nice roses!"]  # before: three posts, one per attempt
    judged = [call for call in guard.backend.calls if POISON in str(call)]
    assert len(judged) == 3  # each attempt judged the one result again


class _FailsOnce(PoisonedJudge):
    """`PoisonedJudge` that crashes on the poisoned text once, then judges it."""

    failed = 0

    def _poisoned(self, conversations: Any) -> bool:
        if not super()._poisoned(conversations) or self.failed:
            return False
        self.failed += 1
        return True


@pytest.mark.parametrize("mode", MODES)
def test_a_retry_judges_the_result_kept_once_the_guard_answers(mode: str) -> None:
    post, posted = _poster(REPLY)
    guard = Guard(_FailsOnce("raise"), cache_size=0)
    model = scripted(tool_call("post_comment", {"text": "Nice roses!"}), SAFE_ANSWER, SAFE_ANSWER)
    agent = _retried_agent(guard, post, model)
    out = _run(agent, POST, mode)
    assert guard.backend.failed == 1
    assert posted == ["Nice roses!"]  # before: posted again by the retry
    assert out["messages"][-1].content == SAFE_ANSWER
    answer = [m for m in model.seen[-1] if isinstance(m, ToolMessage)]
    assert [m.content for m in answer] == [REPLY]  # the tool's own result, judged on the retry
    # Answered: no stop is left on the thread for the call (a later turn reads the result, not a notice).
    _run(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, mode)
    assert [m.content for m in model.seen[-1] if isinstance(m, ToolMessage)] == [REPLY]


@pytest.mark.parametrize("mode", MODES)
def test_control_a_safe_result_is_posted_once_and_read(mode: str) -> None:
    post, posted = _poster("Reply from the forum: thanks!")
    guard = _unjudged_guard("unavailable")
    model = scripted(tool_call("post_comment", {"text": "Nice roses!"}), SAFE_ANSWER)
    agent = _retried_agent(guard, post, model)
    out = _run(agent, POST, mode)
    assert posted == ["Nice roses!"] and out["messages"][-1].content == SAFE_ANSWER
    assert [m.content for m in model.seen[-1] if isinstance(m, ToolMessage)] == ["Reply from the forum: thanks!"]


# -- F2: a parallel call cancelled beside a blocked result -----------------------------------------------------------
def _payer(kind: str) -> tuple[Any, list[int], list[int], threading.Event, threading.Event]:
    """A payment tool (sync or async) that waits until the test releases it, the payments it started and made,
    the release and the done events."""
    started: list[int] = []
    paid: list[int] = []
    release, done = threading.Event(), threading.Event()
    if kind == "sync_tool":

        @tool
        def pay(amount: int) -> str:
            """Pay an invoice."""
            started.append(amount)
            release.wait(10)
            paid.append(amount)
            done.set()
            return "paid"

    else:

        @tool
        async def pay(amount: int) -> str:
            """Pay an invoice."""
            started.append(amount)
            while not release.is_set():
                await asyncio.sleep(0.01)
            paid.append(amount)
            done.set()
            return "paid"

    return pay, started, paid, release, done


@tool
def web_fetch(url: str) -> str:
    """Fetch a page."""
    return "Garden tips. " + UNSAFE_CLAUSE


@pytest.mark.parametrize("kind", ["sync_tool", "async_tool"])
def test_a_payment_cancelled_beside_a_blocked_result_is_not_made_again_on_resume(kind: str) -> None:
    pay, started, paid, release, done = _payer(kind)
    guard, _ = keyword_guard()
    calls = AIMessage(
        content="",
        tool_calls=[
            {"name": "pay", "args": {"amount": 5}, "id": "c1", "type": "tool_call"},
            {"name": "web_fetch", "args": {"url": "https://example.org"}, "id": "c2", "type": "tool_call"},
        ],
    )
    model = scripted(calls, SAFE_ANSWER)
    agent = create_agent(
        model,
        [pay, web_fetch],
        middleware=[GuardMiddleware(guard, exit_behavior="error")],
        checkpointer=InMemorySaver(),
    )
    with pytest.raises(GuardViolation):
        _run(agent, {"messages": [HumanMessage("Pay invoice 5 and fetch example.org")]}, "async")
    release.set()
    if kind == "sync_tool":
        assert done.wait(10)  # its thread was not cancelled: the payment was made, its result lost
        assert paid == [5]
    out = _run(agent, None, "async")
    assert started == [5]  # before: the payment ran again on resume
    assert paid == ([5] if kind == "sync_tool" else [])
    assert out["messages"][-1].content == SAFE_ANSWER
    read = model.seen[-1]
    assert _unanswered(read) == []
    answers = {m.tool_call_id: m.content for m in read if isinstance(m, ToolMessage)}
    assert answers["c1"].startswith(LOST_NOTICE)
    assert "ammonium" not in answers["c2"]


def test_control_a_sync_runs_parallel_payment_keeps_its_result_and_is_made_once() -> None:
    """A sync run waits for the calls beside the blocked one and keeps their results: nothing to heal but the block."""
    paid: list[int] = []

    @tool
    def pay(amount: int) -> str:
        """Pay an invoice."""
        paid.append(amount)
        return "paid"

    guard, _ = keyword_guard()
    calls = AIMessage(
        content="",
        tool_calls=[
            {"name": "pay", "args": {"amount": 5}, "id": "c1", "type": "tool_call"},
            {"name": "web_fetch", "args": {"url": "https://example.org"}, "id": "c2", "type": "tool_call"},
        ],
    )
    model = scripted(calls, SAFE_ANSWER)
    agent = create_agent(
        model,
        [pay, web_fetch],
        middleware=[GuardMiddleware(guard, exit_behavior="error")],
        checkpointer=InMemorySaver(),
    )
    with pytest.raises(GuardViolation):
        _run(agent, {"messages": [HumanMessage("Pay invoice 5 and fetch example.org")]}, "sync")
    _run(agent, None, "sync")
    assert paid == [5]
    answers = {m.tool_call_id: m.content for m in model.seen[-1] if isinstance(m, ToolMessage)}
    assert answers["c1"] == "paid" and "ammonium" not in answers["c2"]


# -- F3: the callback handler ----------------------------------------------------------------------------------------
def _handled_agent(mode: str, *replies: Any) -> tuple[Any, list[str], Any, dict[str, Any]]:
    post, posted = _poster("Reply from forum: " + UNSAFE_CLAUSE)
    guard, _ = keyword_guard()
    handler = GuardCallbackHandler(guard) if mode == "sync" else AsyncGuardCallbackHandler(guard)
    model = scripted(*replies)
    agent = create_agent(model, [post], checkpointer=InMemorySaver())
    return agent, posted, model, {"configurable": {"thread_id": "t"}, "callbacks": [handler]}


@pytest.mark.parametrize("mode", MODES)
def test_a_result_the_handler_blocked_is_not_posted_again_on_resume(mode: str) -> None:
    call = tool_call("post_comment", {"text": "Nice roses!"})
    agent, posted, model, config = _handled_agent(mode, call, SAFE_ANSWER, SAFE_ANSWER)
    with pytest.raises(GuardViolation):
        _run(agent, POST, mode, config)
    for _ in range(2):
        with pytest.raises(GuardViolation) as stop:
            _run(agent, None, mode, config)
        assert "tool_call_id='call_1'" in str(stop.value)  # the way out: answer the call
    assert posted == ["Nice roses!"]  # before: one post per resume
    # The way out the stop names: the call answered in the thread's state, the run goes on to the model.
    agent.update_state(config, {"messages": [ToolMessage("Withheld.", tool_call_id="call_1")]}, as_node="tools")
    out = _run(agent, None, mode, config)
    assert out["messages"][-1].content == SAFE_ANSWER and posted == ["Nice roses!"]
    assert not any("ammonium" in str(m.content) for m in model.seen[-1])


@pytest.mark.parametrize("mode", MODES)
def test_control_the_same_call_id_runs_once_the_thread_went_on(mode: str) -> None:
    """A provider that reuses call ids: a later call of the same name and id, after the thread went on, runs."""
    call = tool_call("post_comment", {"text": "Nice roses!"})
    agent, posted, _, config = _handled_agent(mode, call, SAFE_ANSWER, call)
    with pytest.raises(GuardViolation):
        _run(agent, POST, mode, config)
    agent.update_state(config, {"messages": [ToolMessage("Withheld.", tool_call_id="call_1")]}, as_node="tools")
    _run(agent, None, mode, config)
    with pytest.raises(GuardViolation) as stop:  # the new call runs; its (hostile) result is blocked again
        _run(agent, {"messages": [HumanMessage("Post it once more")]}, mode, config)
    assert posted == ["Nice roses!", "Nice roses!"]
    assert "earlier run" not in str(stop.value)


# -- F4: the thread's id, as LangGraph keys it -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_thread_resumed_under_its_id_as_a_string_is_the_same_thread(mode: str) -> None:
    post, posted = _poster("Reply from forum: " + UNSAFE_CLAUSE)
    guard, _ = keyword_guard()
    model = scripted(tool_call("post_comment", {"text": "Nice roses!"}), SAFE_ANSWER)
    agent = create_agent(
        model, [post], middleware=[GuardMiddleware(guard, exit_behavior="error")], checkpointer=InMemorySaver()
    )
    with pytest.raises(GuardViolation):
        _run(agent, POST, mode, {"configurable": {"thread_id": 42}})
    out = _run(agent, None, mode, {"configurable": {"thread_id": "42"}})
    assert posted == ["Nice roses!"]  # before: posted again
    assert out["messages"][-1].content == SAFE_ANSWER
    assert _unanswered(model.seen[-1]) == []
    assert not any("ammonium" in str(m.content) for m in model.seen[-1])


# -- rt66l: second looks at the stops kept -------------------------------------------------------------------------
#
# F1: the handler kept no stop for a result the guard could not judge: each resume during the outage, and the first
# after it, posted the comment again. F2: a wrap_tool_call middleware asking a helper model in the tools node made
# the handler forget the call it refused: each resume posted again. F4: a sub-agent's blocked call (a provider reusing
# ids) was refused for good, on every later invocation, the documented way out too. F3: a user's own cancel, no stop
# anywhere, answered the call with the "result lost" notice: the tool was never run again.
def _handler(guard: Guard, mode: str) -> Any:
    return GuardCallbackHandler(guard) if mode == "sync" else AsyncGuardCallbackHandler(guard)


@pytest.mark.parametrize("kind", ["unavailable", "timeout"])
@pytest.mark.parametrize("mode", MODES)
def test_a_result_the_handler_could_not_judge_is_not_posted_again_on_resume(mode: str, kind: str) -> None:
    post, posted = _poster(REPLY)
    guard = _unjudged_guard(kind)
    model = scripted(tool_call("post_comment", {"text": "Nice roses!"}), SAFE_ANSWER)
    agent = create_agent(model, [post], checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t"}, "callbacks": [_handler(guard, mode)]}
    with pytest.raises(GuardTimeout if kind == "timeout" else GuardUnavailable):
        _run(agent, POST, mode, config)
    with pytest.raises(GuardViolation) as during:  # the app retries during the outage
        _run(agent, None, mode, config)
    _back(guard)
    with pytest.raises(GuardViolation) as after:  # and once the guard is back
        _run(agent, None, mode, config)
    assert posted == ["Nice roses!"]  # before: posted once per resume
    for stop in (during, after):
        assert "could not judge the result" in str(stop.value) and "tool_call_id='call_1'" in str(stop.value)
    agent.update_state(config, {"messages": [ToolMessage("Not judged.", tool_call_id="call_1")]}, as_node="tools")
    out = _run(agent, None, mode, config)
    assert out["messages"][-1].content == SAFE_ANSWER and posted == ["Nice roses!"]
    assert not any(POISON in str(m.content) for m in model.seen[-1])


def _checked_agent(mode: str, *replies: Any) -> tuple[Any, list[str], Any, Any, dict[str, Any]]:
    """An agent whose tool middleware asks a helper model about each call's arguments before the tool runs, the
    handler in its config; the posts made, the agent's model and the helper model."""
    from langchain.agents.middleware import AgentMiddleware  # noqa: PLC0415

    checker = scripted(*["The arguments look fine."] * 8)

    class ArgChecker(AgentMiddleware):
        def wrap_tool_call(self, request: Any, handler: Any) -> Any:
            checker.invoke(f"Are these arguments well formed? {request.tool_call['args']}")
            return handler(request)

        async def awrap_tool_call(self, request: Any, handler: Any) -> Any:
            await checker.ainvoke(f"Are these arguments well formed? {request.tool_call['args']}")
            return await handler(request)

    post, posted = _poster("Reply from forum: " + UNSAFE_CLAUSE)
    guard, _ = keyword_guard()
    model = scripted(*replies)
    agent = create_agent(model, [post], middleware=[ArgChecker()], checkpointer=InMemorySaver())
    return agent, posted, model, checker, {"configurable": {"thread_id": "t"}, "callbacks": [_handler(guard, mode)]}


@pytest.mark.parametrize("mode", MODES)
def test_a_helper_model_in_the_tools_node_does_not_free_a_blocked_call(mode: str) -> None:
    call = tool_call("post_comment", {"text": "Nice roses!"})
    agent, posted, model, checker, config = _checked_agent(mode, call, SAFE_ANSWER, call)
    with pytest.raises(GuardViolation):
        _run(agent, POST, mode, config)
    for _ in range(2):
        with pytest.raises(GuardViolation) as stop:
            _run(agent, None, mode, config)
        assert "earlier run" in str(stop.value)  # refused before the tool, not its result blocked again
    assert posted == ["Nice roses!"]  # before: one post per resume
    assert len(checker.seen) == 3  # the helper was asked on each resume: the tool refused after it
    agent.update_state(config, {"messages": [ToolMessage("Withheld.", tool_call_id="call_1")]}, as_node="tools")
    assert _run(agent, None, mode, config)["messages"][-1].content == SAFE_ANSWER
    assert not any("ammonium" in str(m.content) for m in model.seen[-1])
    # The thread went on: the model's later call of the same name and id (a provider reusing ids) runs.
    with pytest.raises(GuardViolation) as stop:
        _run(agent, {"messages": [HumanMessage("Post it once more")]}, mode, config)
    assert posted == ["Nice roses!", "Nice roses!"] and "earlier run" not in str(stop.value)


def _researcher(mode: str, pages: dict[str, str]) -> tuple[Any, list[str], list[str]]:
    """A research tool that runs a sub-agent (its model fetches a page with call id "call_1", as Gemini and Ollama
    number calls), the pages fetched and the errors the tool caught (an app's ordinary error handling)."""
    fetched: list[str] = []
    errors: list[str] = []

    @tool
    def fetch(url: str) -> str:
        """Fetch a page."""
        fetched.append(url)
        return pages[url]

    sub_model = scripted(
        tool_call("fetch", {"url": "a.example"}), tool_call("fetch", {"url": "b.example"}), "Roses need sun."
    )
    sub = create_agent(sub_model, [fetch])

    if mode == "sync":

        @tool
        def research(topic: str) -> str:
            """Research a topic with the research sub-agent."""
            try:
                return sub.invoke({"messages": [HumanMessage(topic)]})["messages"][-1].content
            except GuardViolation as stop:
                errors.append(str(stop))
                return "Research failed."

    else:

        @tool
        async def research(topic: str) -> str:
            """Research a topic with the research sub-agent."""
            try:
                return (await sub.ainvoke({"messages": [HumanMessage(topic)]}))["messages"][-1].content
            except GuardViolation as stop:
                errors.append(str(stop))
                return "Research failed."

    return research, fetched, errors


@pytest.mark.parametrize("mode", MODES)
def test_a_sub_agent_call_blocked_once_runs_again_on_a_later_turn(mode: str) -> None:
    pages = {"a.example": "Garden tips. " + UNSAFE_CLAUSE, "b.example": "Roses need sun."}
    research, fetched, errors = _researcher(mode, pages)
    model = scripted(
        tool_call("research", {"topic": "gardens"}), SAFE_ANSWER, tool_call("research", {"topic": "roses"}), SAFE_ANSWER
    )
    agent = create_agent(model, [research], checkpointer=InMemorySaver())
    guard, _ = keyword_guard()
    config = {"configurable": {"thread_id": "t"}, "callbacks": [_handler(guard, mode)]}
    _run(agent, {"messages": [HumanMessage("Research gardens")]}, mode, config)
    out = _run(agent, {"messages": [HumanMessage("Research roses")]}, mode, config)
    assert fetched == ["a.example", "b.example"]  # before: the harmless page was refused, never fetched
    assert [m.content for m in out["messages"] if isinstance(m, ToolMessage)] == ["Research failed.", "Roses need sun."]
    assert len(errors) == 1 and "earlier run" not in errors[0]
    assert not any("ammonium" in str(m.content) for seen in model.seen for m in seen)


@pytest.mark.parametrize("mode", MODES)
def test_a_sub_agent_stop_raised_to_the_thread_is_not_fetched_again_on_resume_but_on_the_next_turn(mode: str) -> None:
    fetched: list[str] = []
    pages = iter(["Forum reply: " + UNSAFE_CLAUSE, "Roses like sun.", "Roses like sun."])

    @tool
    def fetch(url: str) -> str:
        """Fetch a page."""
        fetched.append(url)
        return next(pages)

    def sub_replies() -> Any:
        # Each sub-agent run fetches with call id "0" (as TGI numbers calls), then answers once the page is in.
        while True:
            read = sub_model.seen[-1][-1]
            yield "Roses are fine." if isinstance(read, ToolMessage) else fetch_call

    fetch_call = tool_call("fetch", {"url": "https://x.example/roses"}, call_id="0")
    sub_model = scripted()
    sub_model.messages = sub_replies()
    sub = create_agent(sub_model, [fetch])

    if mode == "sync":

        @tool
        def research(topic: str) -> str:
            """Research a topic with the research sub-agent."""
            return sub.invoke({"messages": [HumanMessage(topic)]})["messages"][-1].content

    else:

        @tool
        async def research(topic: str) -> str:
            """Research a topic with the research sub-agent."""
            return (await sub.ainvoke({"messages": [HumanMessage(topic)]}))["messages"][-1].content

    model = scripted(
        tool_call("research", {"topic": "roses"}, call_id="p1"),
        tool_call("research", {"topic": "roses"}, call_id="p2"),
        SAFE_ANSWER,
    )
    agent = create_agent(model, [research], checkpointer=InMemorySaver())
    guard, _ = keyword_guard()
    config = {"configurable": {"thread_id": "t"}, "callbacks": [_handler(guard, mode)]}
    with pytest.raises(GuardViolation):
        _run(agent, {"messages": [HumanMessage("research roses")]}, mode, config)
    with pytest.raises(GuardViolation) as stop:  # the thread still waits on the research call: not run again
        _run(agent, None, mode, config)
    assert fetched == ["https://x.example/roses"] and "earlier run" in str(stop.value)
    agent.update_state(config, {"messages": [ToolMessage("Research failed.", tool_call_id="p1")]}, as_node="tools")
    out = _run(agent, {"messages": [HumanMessage("try again please")]}, mode, config)
    assert len(fetched) == 2  # before: the sub-agent's call "0" was refused for good, the way out too
    assert out["messages"][-1].content == SAFE_ANSWER
    assert [m.content for m in out["messages"] if isinstance(m, ToolMessage)][-1] == "Roses are fine."
    assert not any("ammonium" in str(m.content) for seen in model.seen for m in seen)


async def _cancelled_while_searching(agent: Any, runs: list[str]) -> None:
    """The user's own cancel (a dropped web request, Ctrl-C) once the search tool started, no guard stop anywhere."""
    task = asyncio.ensure_future(agent.ainvoke({"messages": [HumanMessage("Search roses")]}, THREAD))
    while not runs and not task.done():
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("then", ["resume", "next_turn"])
def test_a_users_own_cancel_is_not_answered_with_a_lost_result(then: str) -> None:
    runs: list[str] = []
    release = asyncio.Event()

    @tool
    async def search(query: str) -> str:
        """Search the web."""
        runs.append(query)
        if len(runs) == 1:
            await release.wait()  # slow the first time: the user gives up
        return "Roses need six hours of sun."

    search_call = tool_call("search", {"query": "roses"})
    model = scripted(search_call, SAFE_ANSWER, search_call, SAFE_ANSWER)
    guard, _ = keyword_guard()
    agent = create_agent(model, [search], middleware=[GuardMiddleware(guard)], checkpointer=InMemorySaver())

    async def main() -> dict[str, Any]:
        await _cancelled_while_searching(agent, runs)
        if then == "resume":  # the app retries the interrupted run: the search runs again, as LangGraph's do
            return await agent.ainvoke(None, THREAD)
        return await agent.ainvoke({"messages": [HumanMessage("Please search roses again")]}, THREAD)

    out = asyncio.run(main())
    read = [m.content for seen in model.seen for m in seen if isinstance(m, ToolMessage)]
    assert not any("result was lost" in str(text) for text in read)  # before: the false notice, the tool not run
    assert out["messages"][-1].content == SAFE_ANSWER
    if then == "resume":
        assert runs == ["roses", "roses"] and read[-1] == "Roses need six hours of sun."
