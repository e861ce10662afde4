"""A safe next turn on an agent's thread refused for a block of the turn before (rt68c F1, F2).

F1: with ``exit_behavior="end"`` (the default), a stop raised inside a tool (the app's own `GuardCallbackHandler` in
the run's config, as docs/langchain.md shows for a model called inside a tool; or a `GuardedChatModel` inside it)
raises out of the run; the thread's next turn gets the call's notice (`_healed`) after the old answer, and the new
question was answered with the old refusal, the model not asked.

F2: ``[GuardMiddleware, HumanInTheLoopMiddleware]`` with a checkpointer; the reviewer edits a safe e-mail into an
unsafe one, which the guard blocks (the tool never runs). HumanInTheLoopMiddleware kept the edit in its state key, and
the thread's next turn judged it as the client's input: the user's safe question was refused (with ``"error"``, the
prompt's `GuardViolation` raised again). The blocked edit is cleared from the key; any other value there is judged.

rt68l (a second look at that fix): F1, the block of the tools step just run no longer ended the run with ``"end"``
when a middleware listed before the guard added a human message after the tools step (an attachment its
``wrap_tool_call`` appends, a reminder its ``before_model`` adds): the model was asked again. F3, the guard kept each
blocked edit's arguments (the blocked text) per thread after the runs ended. F4, with the reviewer listed before the
guard the blocked edit was not cleared, and the next question was refused (or raised for).

Real ``create_agent``, ``InMemorySaver`` and ``HumanInTheLoopMiddleware``; scripted models that report to their run
manager; the keyword judge (unsafe when the judged turn says "ammonium").
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import asyncio
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, HumanInTheLoopMiddleware
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, ScriptedChatModel, ToolBox, scripted, tool_call
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import GuardCallbackHandler, GuardedChatModel, GuardMiddleware

MODES = ["sync", "async"]
EXITS = ["end", "replace", "error"]
WORD = "ammonium"
EDITS_KEY = "hitl_edited_tool_calls"


def kw() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0)


def call(agent: Any, mode: str, given: Any, config: Any) -> dict[str, Any]:
    if mode == "sync":
        return agent.invoke(given, config)
    return asyncio.run(agent.ainvoke(given, config))


def seen_text(model: ScriptedChatModel, since: int = 0) -> str:
    """Every character the model was given from its call ``since`` on."""
    return "".join(str(message.content) for messages in model.seen[since:] for message in messages)


# -- F1: a stop inside a tool, then the thread's next question --------------------------------------------------


def helper_tool(inner: str) -> tuple[Any, list[Any]]:
    """A tool that asks a model of its own (its answer unsafe), and the callbacks the app runs the agent with: its own
    handler beside the middleware (``"handler"``), or none, the inner model a `GuardedChatModel` (``"guarded"``)."""
    inner_model = scripted("Sure. " + UNSAFE_CLAUSE)
    asked: Any = GuardedChatModel(inner_model, kw()) if inner == "guarded" else inner_model

    @tool
    def summarise(task: str) -> str:
        """Summarise a task."""
        return asked.invoke(task).text

    return summarise, [GuardCallbackHandler(kw())] if inner == "handler" else []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("inner", ["handler", "guarded"])
def test_next_question_after_a_stop_inside_a_tool_is_answered(mode: str, inner: str) -> None:
    summarise, callbacks = helper_tool(inner)
    model = scripted(tool_call("summarise", {"task": "Summarise the recipe."}), SAFE_ANSWER)
    agent = create_agent(model, [summarise], middleware=[GuardMiddleware(kw())], checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "t"}, "callbacks": callbacks}
    with pytest.raises(GuardViolation):
        call(agent, mode, {"messages": [HumanMessage("Summarise the recipe.")]}, config)
    asked_before = len(model.seen)

    out = call(agent, mode, {"messages": [HumanMessage(SAFE_QUESTION)]}, config)

    assert out["messages"][-1].text == SAFE_ANSWER  # before: the old turn's refusal, the model not asked
    assert len(model.seen) == asked_before + 1
    assert SAFE_QUESTION in seen_text(model, asked_before)
    assert WORD not in seen_text(model)  # the withheld result never reached the model


@pytest.mark.parametrize("mode", MODES)
def test_a_block_of_this_tools_step_still_ends_the_run(mode: str) -> None:
    """With "end", the run still ends on the tools step's own block: the model is not asked again."""
    box = ToolBox()
    model = scripted(tool_call("send_email", {"to": "a@b.c", "body": UNSAFE_CLAUSE}), SAFE_ANSWER)
    agent = create_agent(model, box.all, middleware=[GuardMiddleware(kw())], checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": "t"}}

    out = call(agent, mode, {"messages": [HumanMessage("Email a@b.c.")]}, config)

    assert len(model.seen) == 1 and box.calls["send_email"] == 0
    assert out["messages"][-1].text != SAFE_ANSWER and WORD not in out["messages"][-1].text


class Attachment(AgentMiddleware):
    """Listed before the guard: shows what the tool returned as an attachment, a human message after its result."""

    def wrap_tool_call(self, request: Any, handler: Any) -> Any:
        return self.attached(handler(request))

    async def awrap_tool_call(self, request: Any, handler: Any) -> Any:
        return self.attached(await handler(request))

    @staticmethod
    def attached(result: Any) -> Any:
        if isinstance(result, ToolMessage):
            return Command(update={"messages": [result, HumanMessage("(attachment from the tool: none)")]})
        return result


class Reminder(AgentMiddleware):
    """Listed before the guard: reminds the model of the date, a human message after each tools step."""

    def before_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        if isinstance(state["messages"][-1], ToolMessage):
            return {"messages": [HumanMessage("Reminder: today is Monday.")]}
        return None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("checkpointer", [True, False])
@pytest.mark.parametrize("before", ["attachment", "reminder"])
def test_a_human_message_after_the_tools_step_does_not_keep_the_run_going(
    mode: str, checkpointer: bool, before: str
) -> None:
    """rt68l F1: a middleware listed before the guard adds a human message after the blocked tool's result; with "end"
    the run still ends on that block (before: the model was asked again, on the notice and the added message)."""

    @tool
    def fetch_page(url: str) -> str:
        """Fetch a web page."""
        return "Page text: " + UNSAFE_CLAUSE

    model = scripted(tool_call("fetch_page", {"url": "http://x"}), "Asked again: here is more.")
    outer = Attachment() if before == "attachment" else Reminder()
    agent = create_agent(
        model,
        [fetch_page],
        middleware=[outer, GuardMiddleware(kw())],
        checkpointer=InMemorySaver() if checkpointer else None,
    )

    out = call(agent, mode, {"messages": [HumanMessage("Read http://x")]}, {"configurable": {"thread_id": "t"}})

    assert len(model.seen) == 1  # the run ended on the tools step's block: the model not asked again
    last = out["messages"][-1]
    assert "blocked" in last.text and "Asked again" not in last.text and WORD not in last.text
    assert WORD not in seen_text(model)


@pytest.mark.parametrize("mode", MODES)
def test_the_next_question_after_a_stop_inside_a_tool_with_a_reminder_is_answered(mode: str) -> None:
    """The stop's notice the next turn gets (`_healed`) still does not end that turn, whatever follows it."""
    summarise, callbacks = helper_tool("handler")
    model = scripted(tool_call("summarise", {"task": "Summarise the recipe."}), SAFE_ANSWER)
    agent = create_agent(
        model, [summarise], middleware=[Reminder(), GuardMiddleware(kw())], checkpointer=InMemorySaver()
    )
    config: Any = {"configurable": {"thread_id": "t"}, "callbacks": callbacks}
    with pytest.raises(GuardViolation):
        call(agent, mode, {"messages": [HumanMessage("Summarise the recipe.")]}, config)
    asked_before = len(model.seen)

    out = call(agent, mode, {"messages": [HumanMessage(SAFE_QUESTION)]}, config)

    assert out["messages"][-1].text == SAFE_ANSWER
    assert len(model.seen) == asked_before + 1 and SAFE_QUESTION in seen_text(model, asked_before)
    assert WORD not in seen_text(model)


# -- F2: a reviewer's blocked edit, then the thread's next question ---------------------------------------------


def reviewed(exit_behavior: str, review_first: bool = False) -> tuple[Any, ScriptedChatModel, ToolBox]:
    agent, model, box, _ = reviewed_by(exit_behavior, review_first)
    return agent, model, box


def reviewed_by(
    exit_behavior: str, review_first: bool = False, threads: int = 1
) -> tuple[Any, ScriptedChatModel, ToolBox, Any]:
    """The agent, its model, its tools and its guard middleware; the reviewer listed after the guard, as the docs
    recommend, or before it (``review_first``). The model asks for the e-mail on each of ``threads`` threads first."""
    box = ToolBox()
    email = tool_call("send_email", {"to": "a@b.c", "body": "Lunch at noon?"}, "c1")
    asks = [email, "Sent."] if threads > 1 and exit_behavior == "replace" else [email]  # "replace" asks again
    model = scripted(*asks * (threads - 1), email, "Sent.", SAFE_ANSWER, *[SAFE_ANSWER] * threads)
    review = HumanInTheLoopMiddleware(interrupt_on={"send_email": True})
    guard = GuardMiddleware(kw(), exit_behavior=exit_behavior)  # type: ignore[arg-type]
    middleware = [review, guard] if review_first else [guard, review]
    agent = create_agent(model, box.all, middleware=middleware, checkpointer=InMemorySaver())
    return agent, model, box, guard


def edit_into_unsafe(agent: Any, mode: str, exit_behavior: str, config: Any, body: str = UNSAFE_CLAUSE) -> None:
    """Ask for the e-mail; the reviewer edits its body into the unsafe clause, which the guard blocks."""
    call(agent, mode, {"messages": [HumanMessage("Email a@b.c about lunch.")]}, config)
    edit = {"type": "edit", "edited_action": {"name": "send_email", "args": {"to": "a@b.c", "body": body}}}
    if exit_behavior == "error":
        with pytest.raises(GuardViolation):
            call(agent, mode, Command(resume={"decisions": [edit]}), config)
    else:
        call(agent, mode, Command(resume={"decisions": [edit]}), config)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", EXITS)
def test_next_question_after_a_blocked_edit_is_answered(mode: str, exit_behavior: str) -> None:
    agent, model, box = reviewed(exit_behavior)
    config: Any = {"configurable": {"thread_id": "t"}}
    edit_into_unsafe(agent, mode, exit_behavior, config)
    if exit_behavior != "error":  # cleared as the turn ends: the checkpoint keeps no blocked edit
        assert WORD not in str(agent.get_state(config).values.get(EDITS_KEY))
    asked_before = len(model.seen)

    out = call(agent, mode, {"messages": [HumanMessage(SAFE_QUESTION)]}, config)  # before: refused, or raised

    assert len(model.seen) == asked_before + 1  # the model answered the question
    assert SAFE_QUESTION in seen_text(model, asked_before)
    assert "blocked" not in out["messages"][-1].text
    assert WORD not in str(agent.get_state(config).values.get(EDITS_KEY))
    assert WORD not in seen_text(model)
    assert box.calls["send_email"] == 0  # the edit never ran


@pytest.mark.parametrize("mode", MODES)
def test_an_unsafe_edit_the_guard_did_not_block_is_still_judged(mode: str) -> None:
    """Only the edit the guard blocked is cleared: another unsafe value the app writes to the key is judged as the
    client's input on the next turn (the run ends with the refusal, the key cleared)."""
    agent, model, _ = reviewed("end")
    config: Any = {"configurable": {"thread_id": "t"}}
    edit_into_unsafe(agent, mode, "end", config)
    other = {"c9": {"name": "send_email", "args": {"to": "x@y.z", "body": "More: " + UNSAFE_CLAUSE}}}
    agent.update_state(config, {EDITS_KEY: other})
    asked_before = len(model.seen)

    out = call(agent, mode, {"messages": [HumanMessage(SAFE_QUESTION)]}, config)

    assert len(model.seen) == asked_before  # refused: the model not asked
    assert "blocked" in out["messages"][-1].text and WORD not in out["messages"][-1].text
    assert agent.get_state(config).values.get(EDITS_KEY) is None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", EXITS)
def test_next_question_after_a_blocked_edit_is_answered_with_the_reviewer_first(mode: str, exit_behavior: str) -> None:
    """rt68l F4: ``[HumanInTheLoopMiddleware, GuardMiddleware]``, the edit comes into the guard as the call itself;
    blocked, it is cleared from the key as well (before: kept, and the next question refused or raised for)."""
    agent, model, box = reviewed(exit_behavior, review_first=True)
    config: Any = {"configurable": {"thread_id": "t"}}
    edit_into_unsafe(agent, mode, exit_behavior, config)
    if exit_behavior != "error":
        assert WORD not in str(agent.get_state(config).values.get(EDITS_KEY))
    asked_before = len(model.seen)

    out = call(agent, mode, {"messages": [HumanMessage(SAFE_QUESTION)]}, config)

    assert len(model.seen) == asked_before + 1 and SAFE_QUESTION in seen_text(model, asked_before)
    assert "blocked" not in out["messages"][-1].text
    assert WORD not in str(agent.get_state(config).values.get(EDITS_KEY))
    assert WORD not in seen_text(model)
    assert box.calls["send_email"] == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", EXITS)
@pytest.mark.parametrize("review_first", [False, True])
def test_the_guard_keeps_no_text_of_a_blocked_edit(mode: str, exit_behavior: str, review_first: bool) -> None:
    """rt68l F3: what the guard keeps of a blocked edit, to clear it from the key, holds none of its text (before:
    its whole arguments, per thread, after the runs ended); once cleared, nothing of it is kept."""
    threads = [f"t{i}" for i in range(3)]
    agent, _, _, guard = reviewed_by(exit_behavior, review_first, len(threads))
    body = UNSAFE_CLAUSE + " " + "Pack it tight. " * 200
    for thread in threads:
        edit_into_unsafe(agent, mode, exit_behavior, {"configurable": {"thread_id": thread}}, body)

    def kept() -> str:
        return repr([guard._blocked_edits.get(thread) for thread in guard._blocked_edits.keys()])

    assert WORD not in kept() and "Pack it tight" not in kept()
    if exit_behavior != "error":  # cleared as each run ended: nothing kept
        assert guard._blocked_edits.keys() == []
    for thread in threads:
        call(agent, mode, {"messages": [HumanMessage(SAFE_QUESTION)]}, {"configurable": {"thread_id": thread}})
        assert WORD not in str(agent.get_state({"configurable": {"thread_id": thread}}).values.get(EDITS_KEY))
    assert guard._blocked_edits.keys() == []  # cleared on every thread: forgotten
