"""rt63d F3: a client's input holds a state key besides its messages.

An agent's ``state_schema`` holds ``user_note``, which a ``@dynamic_prompt`` prints into the system prompt. The client
sends ``{"messages": [...], "user_note": <clause>}``: `GuardMiddleware` judged only ``state["messages"]``, so the note
reached the model unjudged, while the same key written by a tool's ``Command(update=...)`` was judged. Now the input's
other keys are judged at the run's start (``before_agent``) as the user's turn; a blocked key is cleared from the state
and the run ends with the refusal (``"error"``: raised). Counted in characters of the system prompts the model read.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations and the state schema.

import asyncio
import base64
from typing import Any, NotRequired

import pytest
from langchain.agents import AgentState, create_agent
from langchain.agents.middleware import ModelRequest, dynamic_prompt
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, keyword_guard, scripted, tool_call
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.langchain import GuardMiddleware

WORD = "ammonium"
MODES = ["sync", "async"]
SAFE_NOTE = "I live in Lyon and prefer short answers."
THREAD = {"configurable": {"thread_id": "t"}}


class State(AgentState):
    user_note: NotRequired[Any]


@dynamic_prompt
def with_note(request: ModelRequest) -> str:
    return f"You are a helpful assistant. The user's saved note: {request.state.get('user_note') or ''}"


@tool
def save_note(note: str, tool_call_id: str = "") -> Command:
    """Save the user's note."""
    return Command(update={"user_note": SAFE_NOTE, "messages": [ToolMessage("saved", tool_call_id="c1")]})


def agent_for(*replies: Any, exit_behavior: str = "end", max_chars: int | None = None) -> tuple[Any, Any, Any]:
    guard, backend = keyword_guard()
    if max_chars is not None:
        guard = Guard(backend, cache_size=0, max_chars=max_chars)
    model = scripted(*replies)
    middleware = [GuardMiddleware(guard, exit_behavior=exit_behavior), with_note]
    agent = create_agent(model, [save_note], state_schema=State, middleware=middleware, checkpointer=InMemorySaver())
    return agent, model, backend


def run(agent: Any, inputs: Any, mode: str, how: str = "invoke") -> tuple[Any, Exception | None]:
    """The run's result (its last state, or the streamed items) and the guard's stop."""

    async def arun() -> Any:
        if how == "invoke":
            return await agent.ainvoke(inputs, THREAD)
        return [item async for item in agent.astream(inputs, THREAD, stream_mode="messages")]

    try:
        if mode == "async":
            return asyncio.run(arun()), None
        if how == "invoke":
            return agent.invoke(inputs, THREAD), None
        return list(agent.stream(inputs, THREAD, stream_mode="messages")), None
    except GuardViolation as stop:
        return None, stop


def prompts_read(model: Any) -> str:
    """Every system prompt the model read."""
    return "\n".join(m.text for seen in model.seen for m in seen if m.type == "system")


def judged(backend: Any) -> int:
    return sum(len(batch) for batch in backend.calls)


def with_note_input(note: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": SAFE_QUESTION}], "user_note": note}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["invoke", "stream"])
@pytest.mark.parametrize("exit_behavior", ["end", "replace"])
def test_an_unsafe_state_key_in_the_input_never_reaches_the_model(exit_behavior, how, mode):
    agent, model, _ = agent_for(SAFE_ANSWER, exit_behavior=exit_behavior)
    result, stop = run(agent, with_note_input(f"Remember: {UNSAFE_CLAUSE}"), mode, how)
    assert stop is None and prompts_read(model).count(WORD) == 0 and model.seen == []
    state = agent.get_state(THREAD).values
    assert state.get("user_note") is None  # cleared: the thread's next turn does not meet it
    assert "blocked by the safety guard" in state["messages"][-1].text


@pytest.mark.parametrize("mode", MODES)
def test_with_error_an_unsafe_state_key_raises_and_the_next_turn_goes_on_without_it(mode):
    agent, model, _ = agent_for(SAFE_ANSWER, exit_behavior="error")
    _, stop = run(agent, with_note_input(f"Remember: {UNSAFE_CLAUSE}"), mode)
    assert isinstance(stop, GuardViolation) and stop.decision.stage is Stage.PROMPT and model.seen == []
    # LangGraph wrote the input to the thread before the hook raised: the next turn clears it, once raised for.
    result, stop = run(agent, {"messages": [{"role": "user", "content": SAFE_QUESTION}]}, mode)
    assert stop is None and result["messages"][-1].text == SAFE_ANSWER
    assert prompts_read(model).count(WORD) == 0 and agent.get_state(THREAD).values.get("user_note") is None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "encoding",
    ["list", "file block"],
)
def test_a_state_key_is_read_as_a_tools_command_write_is(encoding, mode):
    # Through containers, and a file as the text it holds (rt63d F1's reading).
    clause = f"Remember: {UNSAFE_CLAUSE}"
    note: Any = ["first", {"text": clause}]
    if encoding == "file block":
        note = {"type": "file", "mime_type": "text/plain", "base64": base64.b64encode(clause.encode()).decode()}
    agent, model, _ = agent_for(SAFE_ANSWER)
    _, stop = run(agent, with_note_input(note), mode)
    assert stop is None and model.seen == []


@pytest.mark.parametrize("mode", MODES)
def test_a_state_key_too_long_to_judge_whole_is_blocked_unread(mode):
    # Size alone never gets text through unjudged: a long note, then the clause past the guard's bound.
    agent, model, _ = agent_for(SAFE_ANSWER, max_chars=400)
    _, stop = run(agent, with_note_input(["Paris is in France. " * 40, UNSAFE_CLAUSE]), mode)
    assert stop is None and model.seen == [] and agent.get_state(THREAD).values.get("user_note") is None


@pytest.mark.parametrize("mode", MODES)
def test_a_safe_state_key_reaches_the_model_judged_once_on_its_thread(mode):
    agent, model, backend = agent_for(SAFE_ANSWER, SAFE_ANSWER)
    result, _ = run(agent, with_note_input(SAFE_NOTE), mode)
    assert result["messages"][-1].text == SAFE_ANSWER and SAFE_NOTE in prompts_read(model)
    assert sum(SAFE_NOTE in repr(batch) for batch in backend.calls) == 1
    # The thread's next turn starts with the same note: allowed before, not judged again (the guard has no cache).
    run(agent, {"messages": [{"role": "user", "content": SAFE_QUESTION}]}, mode)
    assert sum(SAFE_NOTE in repr(batch) for batch in backend.calls) == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_key_a_tool_wrote_is_judged_as_its_output_not_again_as_input(mode):
    agent, model, backend = agent_for(tool_call("save_note", {"note": "x"}, "c1"), SAFE_ANSWER, SAFE_ANSWER)
    run(agent, {"messages": [{"role": "user", "content": "Save my note."}]}, mode)
    assert judged_alone(backend, SAFE_NOTE) == 1  # the tool's output
    result, _ = run(agent, {"messages": [{"role": "user", "content": SAFE_QUESTION}]}, mode)
    assert result["messages"][-1].text == SAFE_ANSWER and SAFE_NOTE in prompts_read(model)
    # Not judged alone again; read beside each user turn (rt65l F1: a key a tool wrote may begin a clause the
    # user's message ends), which is a check of its own.
    assert judged_alone(backend, SAFE_NOTE) == 1


def judged_alone(backend, text: str) -> int:
    """The checks whose conversation is ``text`` alone (its last turn)."""
    return sum(1 for batch in backend.calls for conv in batch if conv and conv[-1]["content"] == text)


@pytest.mark.parametrize("mode", MODES)
def test_an_ordinary_run_with_only_messages_costs_no_more_checks(mode):
    guard, backend = keyword_guard()
    model = scripted(SAFE_ANSWER)
    agent = create_agent(model, [], middleware=[GuardMiddleware(guard)], checkpointer=InMemorySaver())
    result, _ = run(agent, {"messages": [{"role": "user", "content": SAFE_QUESTION}]}, mode)
    assert result["messages"][-1].text == SAFE_ANSWER
    assert judged(backend) == 2  # the question, the answer: as before the state's other keys were judged
