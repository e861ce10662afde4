"""rt67d F1: a sub-agent's tool call inside a guarded tool ("agent as a tool") is judged before its tool runs.

The outer agent had `GuardMiddleware`; its tool ran an inner ``create_agent(model, tools=[send_email])`` with no guard
of its own. The middleware runs the tool out of sight of the run's callbacks but qwenguard's, so with no handler in
the application's config nothing judged what ran inside: the inner model's ``send_email(body=<clause>)`` executed,
sync and async, the config passed on or not. Now the tool's children hear a handler on the middleware's guard: the
inner call is judged before the inner tool runs, and the stop withholds the outer call's result under
``exit_behavior``; what the inner tools return is judged in the sub-agent's answer, the outer call's result. Counted in characters of the clause that left in an
e-mail, and that a model read.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.tools import ToolRuntime
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, ScriptedChatModel, keyword_guard, scripted, tool_call
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware

#: How the outer agent runs, and its tool: sync; async with an async tool; async with a sync tool (LangChain runs it
#: in a worker thread, where its sub-agent calls its callbacks the sync way).
MODES = ["sync", "async", "async-agent-sync-tool"]
PASSES = ["no_config", "runtime_config"]
TASK = "Mail the recipe to x@example.org"
#: The tool ran (its sub-agent did, up to the stop): the notice of its withheld result.
NOTICE = "The output of tool 'mail_agent' was withheld by the safety guard (Violent); do not rely on it."
THREAD = {"configurable": {"thread_id": "t"}}


def clause_chars(value: Any) -> int:
    """Characters of the unsafe clause in ``value`` (its repr: messages, e-mail bodies)."""
    return len(UNSAFE_CLAUSE) * repr(value).count(UNSAFE_CLAUSE)


class Delegation:
    """The "agent as a tool" pattern: ``mail_agent`` runs an unguarded sub-agent whose model writes ``body`` into
    ``send_email`` (which answers ``delivered``), and returns the sub-agent's last answer."""

    def __init__(self, mode: str, passes: str, body: str, delivered: str = "Message delivered.") -> None:
        self.sent: list[str] = []

        @tool
        def send_email(to: str, body: str) -> str:
            """Send an e-mail."""
            self.sent.append(body)
            return delivered

        self.inner_model = scripted(tool_call("send_email", {"to": "x@example.org", "body": body}), "Mailed.")
        inner = create_agent(self.inner_model, [send_email])

        def config(runtime: ToolRuntime) -> Any:
            return runtime.config if passes == "runtime_config" else None

        @tool
        def mail_agent(task: str, runtime: ToolRuntime) -> str:
            """Delegate a mailing task."""
            return inner.invoke({"messages": [HumanMessage(task)]}, config(runtime))["messages"][-1].text

        @tool("mail_agent")
        async def amail_agent(task: str, runtime: ToolRuntime) -> str:
            """Delegate a mailing task."""
            return (await inner.ainvoke({"messages": [HumanMessage(task)]}, config(runtime)))["messages"][-1].text

        self.mode = mode
        self.tool = amail_agent if mode == "async" else mail_agent

    def agent(self, outer_model: Any, exit_behavior: str = "end", **kwargs: Any) -> Any:
        self.guard, self.backend = keyword_guard()
        middleware = [GuardMiddleware(self.guard, exit_behavior=exit_behavior)]
        return create_agent(outer_model, [self.tool], middleware=middleware, **kwargs)

    def run(self, agent: Any, inputs: Any, config: Any = None) -> dict[str, Any]:
        if self.mode == "sync":
            return agent.invoke(inputs, config)
        return asyncio.run(agent.ainvoke(inputs, config))


def _outer(*then: Any) -> Any:
    return scripted(tool_call("mail_agent", {"task": TASK}), *then)


@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("mode", MODES)
def test_a_subagents_harmful_call_never_runs_and_the_outer_result_is_withheld(mode: str, passes: str) -> None:
    """``exit_behavior="end"`` (the default): the sub-agent's e-mail is not sent; the outer call's result is the
    notice of a withheld result, and the run ends on the refusal."""
    case = Delegation(mode, passes, UNSAFE_CLAUSE)
    outer_model = _outer("Done.")
    result = case.run(case.agent(outer_model), {"messages": [HumanMessage(TASK)]})
    assert clause_chars(case.sent) == 0 and case.sent == []
    notices = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    assert [(m.text, m.status) for m in notices] == [(NOTICE, "error")]
    assert clause_chars(result["messages"]) == 0
    assert clause_chars(outer_model.seen) == 0


@pytest.mark.parametrize("mode", MODES)
def test_with_replace_the_outer_model_reads_the_notice_and_goes_on(mode: str) -> None:
    case = Delegation(mode, "no_config", UNSAFE_CLAUSE)
    outer_model = _outer(SAFE_ANSWER)
    result = case.run(case.agent(outer_model, "replace"), {"messages": [HumanMessage(TASK)]})
    assert case.sent == []
    assert result["messages"][-1].text == SAFE_ANSWER
    read = outer_model.seen[-1]
    assert [m.text for m in read if isinstance(m, ToolMessage)] == [NOTICE]
    assert clause_chars(outer_model.seen) == 0


@pytest.mark.parametrize("mode", MODES)
def test_with_error_the_run_raises_and_the_threads_next_turn_answers_the_call(mode: str) -> None:
    """``exit_behavior="error"``: `GuardViolation`, never a crash of another kind nor an error text handed to the
    outer model; on the thread's next turn the outer model reads the notice in place of the call's result."""
    case = Delegation(mode, "runtime_config", UNSAFE_CLAUSE)
    outer_model = _outer(SAFE_ANSWER)
    agent = case.agent(outer_model, "error", checkpointer=InMemorySaver())
    with pytest.raises(GuardViolation) as raised:
        case.run(agent, {"messages": [HumanMessage(TASK)]}, THREAD)
    assert raised.value.decision.stage.value == "tool_call"
    assert case.sent == []
    result = case.run(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, THREAD)
    assert result["messages"][-1].text == SAFE_ANSWER
    assert [m.text for m in outer_model.seen[-1] if isinstance(m, ToolMessage)] == [NOTICE]
    assert clause_chars(outer_model.seen) == 0 and case.sent == []


class StrictModel(ScriptedChatModel):
    """Refuses a history holding a tool call no tool message answers, as OpenAI and Anthropic answer 400."""

    def _generate(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
        for message in messages:
            for call in getattr(message, "tool_calls", None) or ():
                if call["id"] not in answered:
                    raise ValueError(
                        f"400: a message with 'tool_calls' must be followed by tool messages ({call['id']})"
                    )
        return super()._generate(messages, *args, **kwargs)


def test_a_hostile_page_read_by_a_subagent_with_memory_does_not_break_its_thread() -> None:
    """rt67m2 F1, a regression of the first fix: the lent handler also judged a sub-agent's tool results, and its stop
    left the sub-agent's own thread (its checkpointer, one per user) with a call no tool message answers: every later
    turn of that user failed. Now what its tools return is judged in its answer, the outer call's result."""
    pages = iter(["Page: " + UNSAFE_CLAUSE] + [f"Page: Lyon fact {i}." for i in range(4)])

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        return next(pages)

    inner_replies: list[Any] = []
    outer_replies: list[Any] = []
    for i in range(4):
        inner_replies += [tool_call("lookup", {"q": f"q{i}"}, call_id=f"sub{i}"), f"Summary {i}."]
        outer_replies += [tool_call("research", {"task": f"question {i}"}, call_id=f"o{i}"), f"Done {i}."]
    inner_replies[1] = "Summary: " + UNSAFE_CLAUSE  # the page's clause, repeated in the sub-agent's answer
    inner = create_agent(StrictModel(messages=iter(inner_replies), seen=[]), [lookup], checkpointer=InMemorySaver())

    @tool
    def research(task: str, runtime: ToolRuntime) -> str:
        """Delegate research to the user's research assistant (it remembers the user's earlier questions)."""
        user = runtime.config["configurable"]["thread_id"]
        out = inner.invoke({"messages": [HumanMessage(task)]}, {"configurable": {"thread_id": f"research-{user}"}})
        return out["messages"][-1].text

    guard, _ = keyword_guard()
    outer_model = scripted(*outer_replies)
    outer = create_agent(
        outer_model,
        [research],
        middleware=[GuardMiddleware(guard, exit_behavior="replace")],
        checkpointer=InMemorySaver(),
    )
    results = []
    for turn in range(4):
        answer = outer.invoke({"messages": [HumanMessage(f"research question {turn}")]}, THREAD)
        results.append([m.text for m in answer["messages"] if isinstance(m, ToolMessage)][-1])
    assert results[0] == NOTICE.replace("mail_agent", "research")  # the sub-agent's answer held the clause
    assert results[1:] == ["Summary 1.", "Summary 2.", "Summary 3."]
    assert clause_chars(outer_model.seen) == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_safe_delegation_runs_and_the_subagents_answer_is_judged_once(mode: str) -> None:
    """A safe sub-agent's e-mail goes out; its answer comes back as the outer tool's result, judged there only (the
    lent handler judges the inner call: no answer, tool result, input or stream check of its own)."""
    case = Delegation(mode, "runtime_config", "Lunch at noon.")
    outer_model = _outer(SAFE_ANSWER)
    result = case.run(case.agent(outer_model), {"messages": [HumanMessage(TASK)]})
    assert case.sent == ["Lunch at noon."]
    assert result["messages"][-1].text == SAFE_ANSWER
    judged = [repr(conversation) for batch in case.backend.calls for conversation in batch]
    assert sum("Mailed." in text for text in judged) == 1  # the outer tool's result, by the middleware
    assert sum("Lunch at noon." in text for text in judged) == 2  # the inner call: its model's end, its tool's start
    assert sum("Message delivered." in text for text in judged) == 0  # the inner result: in the sub-agent's answer


@pytest.mark.parametrize("mode", MODES)
def test_a_handler_in_the_apps_config_judges_alone(mode: str) -> None:
    """Where the run's config has a qwenguard handler, none is lent beside it: the inner call is judged by the app's
    handler only, three times (at its model's end, at its tool's start, and in the model's next input: that handler's
    input check is on); a handler lent beside it judged it twice more."""
    case = Delegation(mode, "no_config", "Lunch at noon.")
    agent = case.agent(_outer(SAFE_ANSWER))
    handler = (GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(case.guard)
    result = case.run(agent, {"messages": [HumanMessage(TASK)]}, {"callbacks": [handler]})
    assert case.sent == ["Lunch at noon."] and result["messages"][-1].text == SAFE_ANSWER
    judged = [repr(conversation) for batch in case.backend.calls for conversation in batch]
    assert sum("Lunch at noon." in text for text in judged) == 3
