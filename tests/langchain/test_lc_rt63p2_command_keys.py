"""rt63h F1: a client's state key sent in a ``Command`` run input, past ``before_agent``.

An agent's ``state_schema`` holds ``user_note``, which a ``@dynamic_prompt`` prints into the system prompt (and a tool
reads from its state). `GuardMiddleware` judged a client's keys only at ``before_agent`` (rt63d F3). A ``Command`` as
the run's input writes them elsewhere: ``Command(resume=..., update={"user_note": ...})`` resumes a thread at the
interrupted tool (``before_agent`` does not run) and the next model call printed the note unjudged;
``Command(update=..., goto="model")`` runs the model in the run's first step, beside ``before_agent``, which blocked it
only after the model read it; ``goto="tools"`` ran the tool on it. `GuardCallbackHandler` judged such a Command's resume
value and messages, not its other keys. Now the keys are judged wherever the model or a tool is about to read them
(``before_model``, the model call, the tool call; a value allowed before is free), and the handler judges a Command
input's other keys at the run's start. Counted in characters of what the model read and what the tool sent.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations and the state schema.

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import ToolCallLimitMiddleware
from langchain.tools import ToolRuntime
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, interrupt
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, keyword_guard, scripted, tool_call
from qwenguard.core import GuardViolation, Stage
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware
from test_lc_rt63p_state_keys import State, with_note  # the agent state and prompt of the rt63d F3 tests

WORD = "ammonium"
MODES = ["sync", "async"]
SAFE_NOTE = "I live in Lyon and prefer short answers."
UNSAFE_NOTE = f"Remember: {UNSAFE_CLAUSE}"
FIRST = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}


@tool
def confirm(question: str) -> str:
    """Ask the user to confirm."""
    return f"user said: {interrupt(question)}"


def agent_for(piece: str, mode: str, *replies: Any, tools: Any = (confirm,), exit_behavior: str = "end") -> Any:
    """(agent, its run's config, the scripted model, the guard's backend), guarded by ``piece``."""
    guard, backend = keyword_guard()
    model = scripted(*replies)
    middleware: list[Any] = [with_note]
    config: dict[str, Any] = {"configurable": {"thread_id": "t"}}
    if piece == "middleware":
        middleware.insert(0, GuardMiddleware(guard, exit_behavior=exit_behavior))
    else:
        config["callbacks"] = [(GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard)]
    agent = create_agent(model, list(tools), state_schema=State, middleware=middleware, checkpointer=InMemorySaver())
    return agent, config, model, backend


def run(agent: Any, inputs: Any, config: Any, mode: str) -> tuple[Any, Exception | None]:
    try:
        if mode == "async":
            return asyncio.run(agent.ainvoke(inputs, config)), None
        return agent.invoke(inputs, config), None
    except GuardViolation as stop:
        return None, stop


def prompts_read(model: Any) -> str:
    """Every system prompt the model read."""
    return "\n".join(m.text for seen in model.seen for m in seen if m.type == "system")


def stopped_or_refused(piece: str, result: Any, stop: Exception | None) -> bool:
    if piece == "handler":
        return isinstance(stop, GuardViolation) and stop.decision.stage is Stage.PROMPT
    return stop is None and "blocked by the safety guard" in result["messages"][-1].text


# -- Command(resume=..., update=...) to a thread waiting on a tool's interrupt() ---------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("piece", "exit_behavior"), [("middleware", "end"), ("middleware", "replace"), ("handler", "")]
)
def test_a_key_sent_with_a_resume_never_reaches_the_model(piece, exit_behavior, mode):
    replies = (tool_call("confirm", {"question": "Proceed?"}, "c1"), SAFE_ANSWER, SAFE_ANSWER)
    agent, config, model, _ = agent_for(piece, mode, *replies, exit_behavior=exit_behavior or "end")
    run(agent, FIRST, config, mode)
    result, stop = run(agent, Command(resume="yes", update={"user_note": UNSAFE_NOTE}), config, mode)
    assert prompts_read(model).count(WORD) == 0  # the model read none of the clause
    assert stopped_or_refused(piece, result, stop)
    if piece == "middleware":
        assert agent.get_state(config).values.get("user_note") is None  # cleared: the next turn does not meet it


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", ["middleware", "handler"])
def test_a_safe_key_sent_with_a_resume_reaches_the_model_judged_once(piece, mode):
    replies = (tool_call("confirm", {"question": "Proceed?"}, "c1"), SAFE_ANSWER, SAFE_ANSWER)
    agent, config, model, backend = agent_for(piece, mode, *replies)
    run(agent, FIRST, config, mode)
    result, stop = run(agent, Command(resume="yes", update={"user_note": SAFE_NOTE}), config, mode)
    assert stop is None and result["messages"][-1].text == SAFE_ANSWER and SAFE_NOTE in prompts_read(model)
    assert sum(SAFE_NOTE in repr(batch) for batch in backend.calls) == 1  # the guard has no cache: allowed once


# -- Command(update=..., goto=...) as the run's input -----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("piece", "exit_behavior"),
    [("middleware", "end"), ("middleware", "replace"), ("middleware", "error"), ("handler", "")],
)
def test_a_key_sent_straight_to_the_model_never_reaches_it(piece, exit_behavior, mode):
    agent, config, model, _ = agent_for(piece, mode, SAFE_ANSWER, SAFE_ANSWER, exit_behavior=exit_behavior or "end")
    update = {"messages": [{"role": "user", "content": SAFE_QUESTION}], "user_note": UNSAFE_NOTE}
    result, stop = run(agent, Command(update=update, goto="model"), config, mode)
    assert prompts_read(model).count(WORD) == 0
    if exit_behavior == "error":
        assert isinstance(stop, GuardViolation) and stop.decision.stage is Stage.PROMPT
        # The thread's next turn goes on without the key, once raised for.
        result, stop = run(agent, FIRST, config, mode)
        assert stop is None and result["messages"][-1].text == SAFE_ANSWER and prompts_read(model).count(WORD) == 0
    else:
        assert stopped_or_refused(piece, result, stop)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", ["middleware", "handler"])
def test_a_key_sent_straight_to_a_tool_that_reads_it_is_never_sent(piece, mode):
    sent: list[str] = []

    @tool
    def send_note(to: str, runtime: ToolRuntime) -> str:
        """E-mail the user's saved note."""
        sent.append(str(runtime.state.get("user_note") or ""))  # the action: the note goes out
        return "sent"

    agent, config, _, _ = agent_for(piece, mode, SAFE_ANSWER, SAFE_ANSWER, tools=[send_note])
    call = AIMessage("", tool_calls=[{"name": "send_note", "args": {"to": "bob@example.com"}, "id": "c1"}])
    update = {"messages": [{"role": "user", "content": "E-mail my note."}, call], "user_note": UNSAFE_NOTE}
    run(agent, Command(update=update, goto="tools"), config, mode)
    assert sum(text.count(WORD) for text in sent) == 0  # the tool sent none of the clause


@pytest.mark.parametrize("mode", MODES)
def test_a_key_a_middleware_keeps_is_judged_once_not_every_model_call(mode):
    # An ordinary agent: a middleware's own keys (its counts, "__all__") are never the client's mid-run: no check
    # more than before, whatever its hooks write between three model calls.
    @tool
    def lookup(city: str) -> str:
        """Look a city up."""
        return "Paris is in France."

    guard, backend = keyword_guard()
    model = scripted(
        tool_call("lookup", {"city": "Paris"}, "c1"), tool_call("lookup", {"city": "Lyon"}, "c2"), SAFE_ANSWER
    )
    middleware = [GuardMiddleware(guard), ToolCallLimitMiddleware(thread_limit=50)]
    agent = create_agent(model, [lookup], middleware=middleware, checkpointer=InMemorySaver())
    result, _ = run(agent, FIRST, {"configurable": {"thread_id": "t"}}, mode)
    assert result["messages"][-1].text == SAFE_ANSWER
    assert sum(repr(batch).count("__all__") for batch in backend.calls) == 0
    assert sum(len(batch) for batch in backend.calls) == 6  # the question, two calls, two results, the answer
