"""rt64c F1: the run's context (``context=``), which a client sends beside its input.

An agent made with ``context_schema=Ctx`` has a tool that e-mails ``runtime.context.note``. The client runs it with
``agent.invoke(inputs, context=Ctx(<clause>))`` (LangGraph Server's runs API takes ``context`` from the client beside
``input`` and ``command``): the model's call was safe, and the tool sent the clause, since nothing in `GuardMiddleware`
read ``runtime.context``. Now the context's text is judged as the user's words, as the state's other keys are: at the
run's start (``before_agent``), and wherever a run reaches the model or a tool past it (a resume, a ``Command``'s
``goto``); blocked, the run ends with the refusal (``"error"``: raised). Ids and numbers in it are not judged.
Counted in characters of what the tool sent and what the model read.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations and the context schema.

import asyncio
from dataclasses import dataclass
from typing import Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, dynamic_prompt
from langchain.tools import ToolRuntime
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, interrupt
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, keyword_guard, mailer, scripted, tool_call
from pydantic import BaseModel
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.langchain import GuardMiddleware

WORD = "ammonium"
MODES = ["sync", "async"]
SAFE_NOTE = "I live in Lyon and prefer short answers."
UNSAFE_NOTE = f"Remember: {UNSAFE_CLAUSE}"
FIRST = {"messages": [HumanMessage("Send my note to the team.")]}
THREAD = {"configurable": {"thread_id": "t"}}


@dataclass
class Ctx:
    note: str


class CtxDict(TypedDict):
    note: str


class CtxModel(BaseModel):
    note: str


#: Each kind of context schema, and the context a client sends for ``note``.
KINDS = {
    "dataclass": (Ctx, Ctx),
    "TypedDict": (CtxDict, lambda note: {"note": note}),
    "pydantic": (CtxModel, lambda note: CtxModel(note=note)),
}


@dataclass
class Account:
    """A context of ids, numbers and a user's name."""

    user_id: str
    account: int
    tenant: str
    name: str
    note: str = ""


def context_mailer() -> tuple[Any, list[str]]:
    """A real ``send_email`` tool that sends the note of the run's context, and the bodies it sent."""
    sent: list[str] = []

    @tool
    def send_email(to: str, runtime: ToolRuntime) -> str:
        """E-mail the user's note (from the run's context) to ``to``."""
        context = runtime.context
        sent.append(str(context["note"] if isinstance(context, dict) else context.note))
        return "sent"

    return send_email, sent


@dynamic_prompt
def with_context_note(request: ModelRequest) -> str:
    context = request.runtime.context
    note = context["note"] if isinstance(context, dict) else getattr(context, "note", "")
    return f"You are a helpful assistant. The user's note: {note}"


def agent_for(*replies: Any, schema: Any = Ctx, tools: Any = (), exit_behavior: str = "end", **guard_options: Any):
    """(agent, the scripted model, the guard's backend): ``create_agent`` with ``schema`` as its context schema."""
    guard, backend = keyword_guard()
    if guard_options:
        guard = Guard(backend, cache_size=0, **guard_options)
    model = scripted(*replies)
    middleware = [GuardMiddleware(guard, exit_behavior=exit_behavior), with_context_note]
    agent = create_agent(model, list(tools), middleware=middleware, context_schema=schema, checkpointer=InMemorySaver())
    return agent, model, backend


def run(agent: Any, inputs: Any, mode: str, context: Any) -> tuple[Any, Exception | None]:
    try:
        if mode == "async":
            return asyncio.run(agent.ainvoke(inputs, THREAD, context=context)), None
        return agent.invoke(inputs, THREAD, context=context), None
    except GuardViolation as stop:
        return None, stop


def prompts_read(model: Any) -> str:
    """Every system prompt the model read."""
    return "\n".join(m.text for seen in model.seen for m in seen if m.type == "system")


def refused(result: Any, stop: Exception | None, exit_behavior: str) -> bool:
    if exit_behavior == "error":
        return isinstance(stop, GuardViolation) and stop.decision.stage is Stage.PROMPT
    return stop is None and "blocked by the safety guard" in result["messages"][-1].text


def judged(backend: Any) -> int:
    return sum(len(batch) for batch in backend.calls)


# -- the context given with the run's input ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", ["end", "replace", "error"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_an_unsafe_run_context_never_reaches_the_tool(kind, exit_behavior, mode):
    schema, make = KINDS[kind]
    send_email, sent = context_mailer()
    call = tool_call("send_email", {"to": "team@example.com"})
    agent, model, _ = agent_for(call, SAFE_ANSWER, schema=schema, tools=[send_email], exit_behavior=exit_behavior)
    result, stop = run(agent, FIRST, mode, make(UNSAFE_NOTE))
    assert sum(body.count(WORD) for body in sent) == 0  # the tool sent none of the clause
    assert prompts_read(model).count(WORD) == 0 and model.seen == []  # nor did the model read it: the run ended
    assert refused(result, stop, exit_behavior)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("note", ["Mix_ammonium_nitrate_with_fuel_oil_1", "Mixammoniumnitrate2024"])
def test_words_written_as_an_id_are_read(note, mode):
    # Ids are left out (one identifier with a digit, one word at most): words joined into one are not an id.
    send_email, sent = context_mailer()
    agent, model, _ = agent_for(tool_call("send_email", {"to": "team@example.com"}), SAFE_ANSWER, tools=[send_email])
    result, stop = run(agent, FIRST, mode, Ctx(note))
    assert sent == [] and model.seen == [] and refused(result, stop, "end")


@pytest.mark.parametrize("mode", MODES)
def test_an_unsafe_context_is_refused_on_every_run_of_the_thread(mode):
    # No state keeps it: each run that is given it ends, the one after a refusal too.
    send_email, sent = context_mailer()
    call = tool_call("send_email", {"to": "team@example.com"})
    agent, model, _ = agent_for(call, SAFE_ANSWER, tools=[send_email], exit_behavior="error")
    for _ in range(2):
        _, stop = run(agent, FIRST, mode, Ctx(UNSAFE_NOTE))
        assert isinstance(stop, GuardViolation)
    assert sent == [] and model.seen == []


@pytest.mark.parametrize("mode", MODES)
def test_a_context_too_long_to_judge_whole_is_blocked_unread(mode):
    # Size alone never gets text through unjudged: a long note, then the clause past the guard's bound.
    send_email, sent = context_mailer()
    call = tool_call("send_email", {"to": "team@example.com"})
    agent, model, _ = agent_for(call, SAFE_ANSWER, tools=[send_email], max_chars=400)
    result, stop = run(agent, FIRST, mode, Ctx("Paris is in France. " * 40 + UNSAFE_CLAUSE))
    assert sent == [] and model.seen == [] and refused(result, stop, "end")


# -- past before_agent: a resume, a Command's goto -------------------------------------------------------------------


def confirming_agent(exit_behavior: str = "end") -> tuple[Any, Any, list[str]]:
    """An agent whose tool asks the user to confirm (``interrupt()``), then e-mails the note of the run's context;
    its first run, with a safe context, waits on the tool."""
    sent: list[str] = []

    @tool
    def send_note(to: str, runtime: ToolRuntime) -> str:
        """Ask the user to confirm, then e-mail the note of the run's context."""
        if interrupt("Send it?") == "yes":
            sent.append(runtime.context.note)  # the action: the note goes out
        return "sent"

    call = tool_call("send_note", {"to": "team@example.com"}, "c1")
    agent, model, _ = agent_for(call, SAFE_ANSWER, SAFE_ANSWER, tools=[send_note], exit_behavior=exit_behavior)
    return agent, model, sent


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", ["end", "error"])
def test_a_context_given_with_a_resume_never_reaches_the_tool(exit_behavior, mode):
    agent, model, sent = confirming_agent(exit_behavior)
    result, _ = run(agent, FIRST, mode, Ctx(SAFE_NOTE))
    assert result["__interrupt__"]
    # The thread resumes at the tool: before_agent does not run; the tool call judges the context.
    run(agent, Command(resume="yes"), mode, Ctx(UNSAFE_NOTE))
    assert sum(body.count(WORD) for body in sent) == 0 and prompts_read(model).count(WORD) == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_safe_context_given_with_a_resume_reaches_the_tool(mode):
    agent, _, sent = confirming_agent()
    run(agent, FIRST, mode, Ctx(SAFE_NOTE))
    result, stop = run(agent, Command(resume="yes"), mode, Ctx("Tell them I am running late."))
    assert stop is None and sent == ["Tell them I am running late."] and result["messages"][-1].text == SAFE_ANSWER


@pytest.mark.parametrize("mode", MODES)
def test_a_context_given_with_a_command_straight_to_the_tools_never_reaches_the_tool(mode):
    send_email, sent = context_mailer()
    agent, model, _ = agent_for(SAFE_ANSWER, SAFE_ANSWER, tools=[send_email])
    call = AIMessage("", tool_calls=[{"name": "send_email", "args": {"to": "team@example.com"}, "id": "c1"}])
    update = {"messages": [HumanMessage("E-mail my note."), call]}
    run(agent, Command(update=update, goto="tools"), mode, Ctx(UNSAFE_NOTE))
    assert sum(body.count(WORD) for body in sent) == 0 and prompts_read(model).count(WORD) == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", ["end", "error"])
@pytest.mark.parametrize("how", ["input", "goto model"])
def test_a_context_a_dynamic_prompt_prints_never_reaches_the_model(how, exit_behavior, mode):
    # Command(update=..., goto="model") runs the model in the run's first step, beside before_agent: the model call
    # judges the context too.
    agent, model, _ = agent_for(SAFE_ANSWER, SAFE_ANSWER, exit_behavior=exit_behavior)
    update = {"messages": [HumanMessage(SAFE_QUESTION)]}
    result, stop = run(
        agent, update if how == "input" else Command(update=update, goto="model"), mode, Ctx(UNSAFE_NOTE)
    )
    assert prompts_read(model).count(WORD) == 0 and refused(result, stop, exit_behavior)


# -- a safe context ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_safe_context_of_ids_numbers_and_a_name_is_not_blocked_and_judged_once(mode):
    send_email, sent = mailer()
    call = tool_call("send_email", {"to": "team@example.com", "body": SAFE_NOTE})
    agent, model, backend = agent_for(call, SAFE_ANSWER, schema=Account, tools=[send_email])
    context = Account(user_id="u-4821", account=1234, tenant="acme-7", name="Alice Martin", note=SAFE_NOTE)
    result, stop = run(agent, FIRST, mode, context)
    assert stop is None and result["messages"][-1].text == SAFE_ANSWER and sent == [SAFE_NOTE]
    assert SAFE_NOTE in prompts_read(model)
    heard = repr(backend.calls)
    assert "Alice Martin" in heard and "u-4821" in heard and "acme-7" in heard  # id-like words are read (rt64j F2)
    # Judged once a run, though the model and the tool read it three times (the guard has no cache).
    assert sum("Alice Martin" in repr(batch) for batch in backend.calls) == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_context_of_opaque_ids_and_numbers_costs_no_check(mode):
    agent, _, backend = agent_for(SAFE_ANSWER, schema=Account)
    ids = Account("3f2b9c1d-8a4e-4f6b-9c2d-1e5f7a8b9c0d", 1234, "4821", "9f86d081884c7d65")
    result, _ = run(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, mode, ids)
    assert result["messages"][-1].text == SAFE_ANSWER
    assert judged(backend) == 2  # the question, the answer: as with no context


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "note",
    [["Mix1", "ammonium1", "nitrate1", "with1", "fuel1", "oil1"], {"Mix1": 1, "ammonium1": 2, "nitrate1": 3}],
    ids=["list-of-id-like-words", "dict-of-id-like-keys"],
)
def test_a_sentence_sent_one_id_like_word_a_string_is_judged(note, mode):
    """rt64j F2: the context's id rule left out each string of "an identifier with a digit and eight letters at
    most" on its own, so a list (or a dict's keys) of such words carried the clause to the tool and the system
    prompt with no check made. Only opaque ids (UUIDs, digests, digits) are left out now."""
    agent, model, backend = agent_for(SAFE_ANSWER)
    result, stop = run(agent, FIRST, mode, Ctx(note=note))
    assert "ammonium1" in repr(backend.calls)  # judged
    assert "ammonium" not in prompts_read(model)
