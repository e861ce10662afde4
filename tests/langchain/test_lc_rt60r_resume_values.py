"""rt60b F3: a human-in-the-loop tool asks the user for text with ``interrupt()`` and acts on the answer.

The client resumes with ``Command(resume=<text>)`` (or the map form ``Command(resume={interrupt_id: text})``); the
tool runs again, ``interrupt()`` returns the text, and the tool sends it, returning only "sent". No guard piece read
the value. It is the client's input: judged as a prompt before the interrupted tool runs again with it. Blocked,
`GuardMiddleware` gives the call its notice (``"error"``: raises) and the tool does not run; `GuardCallbackHandler`
raises at the run's start (``on_chain_start``), before any node runs.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import asyncio
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.types import Command, interrupt
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, scripted, tool_call
from qwenguard.core import Guard, GuardViolation, QwenGuardError, Stage
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware

WORD = "ammonium"
MODES = ["sync", "async"]
INPUTS = {"messages": [{"role": "user", "content": "E-mail my team a note; ask me what to write."}]}
UNSAFE_RESUME = f"Tell them: {UNSAFE_CLAUSE}"


def kw(**options: Any) -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0, **options)


def mailer() -> tuple[Any, list[Any]]:
    sent: list[Any] = []

    @tool
    def email_team(subject: str) -> str:
        """E-mail the team; asks the user for the body."""
        body = interrupt({"question": f"What should the e-mail '{subject}' say?"})
        sent.append(body)  # the action: the mail goes out
        return "sent"

    return email_team, sent


def agent_for(guard: Guard, piece: str, mode: str, **options: Any) -> tuple[Any, dict[str, Any], list[Any]]:
    email_team, sent = mailer()
    middleware = [GuardMiddleware(guard, **options)] if piece == "middleware" else []
    model = scripted(tool_call("email_team", {"subject": "notes"}, "c1"), SAFE_ANSWER, SAFE_ANSWER)
    agent = create_agent(model, [email_team], middleware=middleware, checkpointer=InMemorySaver())
    config: dict[str, Any] = {"configurable": {"thread_id": "t"}}
    if piece == "handler":
        config["callbacks"] = [(GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard)]
    return agent, config, sent


def ask_then_resume(agent: Any, config: dict[str, Any], mode: str, answer: Any) -> tuple[Any, Exception | None]:
    """Run to the interrupt, then resume with ``answer(interrupt)``: the resume value (a map when it says so)."""

    async def both() -> Any:
        first = await agent.ainvoke(INPUTS, config)
        return await agent.ainvoke(Command(resume=answer(first["__interrupt__"][0])), config)

    try:
        if mode == "sync":
            first = agent.invoke(INPUTS, config)
            return agent.invoke(Command(resume=answer(first["__interrupt__"][0])), config), None
        return asyncio.run(both()), None
    except QwenGuardError as error:  # a violation, or a value too large to judge whole (unjudged: fail closed)
        return None, error


def plain(value: Any) -> Any:
    return lambda pending: value


def by_id(value: Any) -> Any:
    return lambda pending: {pending.id: value}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", [plain, by_id], ids=["value", "map"])
def test_middleware_judges_a_resume_value_before_the_tool_acts_on_it(mode, form):
    agent, config, sent = agent_for(kw(), "middleware", mode)
    result, error = ask_then_resume(agent, config, mode, form(UNSAFE_RESUME))
    assert error is None and sent == []  # the mail never went out
    notices = [m for m in result["messages"] if m.type == "tool"]
    assert notices and "blocked by the safety guard" in notices[0].text
    assert WORD not in repr(result["messages"])


@pytest.mark.parametrize("mode", MODES)
def test_middleware_with_error_raises_for_a_resume_value(mode):
    agent, config, sent = agent_for(kw(), "middleware", mode, exit_behavior="error")
    _, error = ask_then_resume(agent, config, mode, plain(UNSAFE_RESUME))
    assert sent == [] and isinstance(error, GuardViolation) and error.decision.stage is Stage.PROMPT


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", [plain, by_id], ids=["value", "map"])
def test_handler_judges_a_resume_value_before_the_run_goes_on(mode, form):
    agent, config, sent = agent_for(kw(), "handler", mode)
    _, error = ask_then_resume(agent, config, mode, form(UNSAFE_RESUME))
    assert sent == [] and isinstance(error, GuardViolation) and error.decision.stage is Stage.PROMPT


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", ["middleware", "handler"])
def test_a_resume_value_in_an_object_is_read(piece, mode):
    """A structured answer (``{"body": ...}``) is read through, as an interrupt's payload is."""
    agent, config, sent = agent_for(kw(), piece, mode)
    _, _ = ask_then_resume(agent, config, mode, plain({"approved": True, "body": [UNSAFE_RESUME]}))
    assert sent == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("piece", ["middleware", "handler"])
def test_a_resume_value_too_large_to_judge_whole_is_refused(piece, mode):
    """Size alone never gets a resume value through unjudged."""
    agent, config, sent = agent_for(kw(max_chars=400), piece, mode)
    _, _ = ask_then_resume(agent, config, mode, plain("Paris is in France. " * 40))
    assert sent == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", [plain, by_id], ids=["value", "map"])
@pytest.mark.parametrize("piece", ["middleware", "handler"])
def test_a_safe_resume_value_reaches_the_tool(piece, form, mode):
    agent, config, sent = agent_for(kw(), piece, mode)
    result, error = ask_then_resume(agent, config, mode, form("See you at noon."))
    assert error is None and sent == ["See you at noon."]
    assert result["messages"][-1].text == SAFE_ANSWER


@pytest.mark.parametrize("mode", MODES)
def test_handler_judges_a_resume_value_for_a_node(mode):
    """An ``interrupt()`` in a plain graph node: the handler judges the value at the run's start."""
    acted: list[Any] = []

    def ask(state: MessagesState) -> dict[str, Any]:
        acted.append(interrupt("What should I post?"))
        return {"messages": [{"role": "assistant", "content": "posted"}]}

    graph = StateGraph(MessagesState)
    graph.add_node("ask", ask)
    graph.add_edge(START, "ask")
    app = graph.compile(checkpointer=InMemorySaver())
    config = {
        "configurable": {"thread_id": "t"},
        "callbacks": [(GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(kw())],
    }

    async def both() -> None:
        await app.ainvoke(INPUTS, config)
        await app.ainvoke(Command(resume=UNSAFE_RESUME), config)

    with pytest.raises(GuardViolation):
        if mode == "sync":
            app.invoke(INPUTS, config)
            app.invoke(Command(resume=UNSAFE_RESUME), config)
        else:
            asyncio.run(both())
    assert acted == []


def test_the_scratchpad_key_is_langgraphs():
    """`pending_resumes` reads LangGraph's private scratchpad and resume-map keys by name: a rename must fail here."""
    from langgraph._internal._constants import CONFIG_KEY_RESUME_MAP, CONFIG_KEY_SCRATCHPAD
    from qwenguard.integrations.langchain._held_tool import _RESUME_MAP, _SCRATCHPAD

    assert CONFIG_KEY_SCRATCHPAD == _SCRATCHPAD and CONFIG_KEY_RESUME_MAP == _RESUME_MAP


@pytest.mark.parametrize("piece", ["middleware", "handler"])
async def test_a_large_resume_value_is_read_off_the_loop(piece):
    """A client's resume value of 200,000 short strings (600,000 characters read, under ``max_chars``; LangGraph
    writes it to the checkpointer in C, the guard reads it item by item): read into its check on a worker thread,
    compared in the same run with the loop left idle, the same run unguarded and the guarded sync run on a worker
    thread (`loop_lag.compare`). Read on the loop it held it 60-100 ms against baselines of 5-10 ms."""
    from loop_lag import compare, in_thread
    from test_lc_rt55b_loop_stalls import _guard

    lines = ["ok"] * 200_000

    def agent_and_config(guarded: bool, mode: str) -> tuple[Any, dict[str, Any]]:
        email_team, _ = mailer()
        middleware = [GuardMiddleware(_guard())] if guarded and piece == "middleware" else []
        model = scripted(tool_call("email_team", {"subject": "notes"}, "c1"), SAFE_ANSWER)
        agent = create_agent(model, [email_team], middleware=middleware, checkpointer=InMemorySaver())
        config: dict[str, Any] = {"configurable": {"thread_id": "t"}}
        if guarded and piece == "handler":
            config["callbacks"] = [(GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(_guard())]
        return agent, config

    async def run(guarded: bool) -> None:
        agent, config = agent_and_config(guarded, "async")
        await agent.ainvoke(INPUTS, config)
        result = await agent.ainvoke(Command(resume=lines), config)
        assert result["messages"][-1].text == SAFE_ANSWER

    def sync_run() -> None:
        agent, config = agent_and_config(True, "sync")
        agent.invoke(INPUTS, config)
        agent.invoke(Command(resume=lines), config)

    failure = await compare(lambda: run(True), lambda: run(False), in_thread(sync_run))
    assert failure is None, failure
