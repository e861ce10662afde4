"""rt60b N1: `GuardCallbackHandler` (in the run's config) and a tool that raises ``interrupt()`` quoting what it read
(a human-approval step: "the page says ...; send it on?").

The payload goes to the run's caller (``result["__interrupt__"]``, the ``"updates"``/``"values"``/``"debug"``
streams, ``get_state().tasks[].interrupts``) and into the checkpointer. `GuardMiddleware` judges it as the tool's
output (rt57b F4); the handler let it through unjudged. Now an unsafe payload stops the run with the guard's
`GuardViolation` (raised from ``on_tool_error`` in the interrupt's place), and a safe one reaches the caller unchanged,
and resuming works.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command, interrupt
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, scripted, tool_call
from lc_streams import streamed as stream_items
from qwenguard.core import Guard, GuardViolation, QwenGuardError, Stage
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

WORD = "ammonium"
MODES = ["sync", "async"]
INPUTS = {"messages": [{"role": "user", "content": "Get http://x"}]}
STREAMS = ["updates", "values", "debug"]


def agent_for(page: str, mode: str, **options: Any) -> tuple[Any, dict[str, Any]]:
    @tool
    def fetch_page(url: str) -> str:
        """Fetch a web page and ask the user before forwarding it."""
        ok = interrupt({"question": "Forward this page to the team?", "page": page})
        return f"forwarded: {ok}"

    model = scripted(tool_call("fetch_page", {"url": "http://x"}, "c1"), SAFE_ANSWER, SAFE_ANSWER)
    agent = create_agent(model, [fetch_page], checkpointer=InMemorySaver())
    guard = Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0, **options)
    handler = (GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard)
    return agent, {"configurable": {"thread_id": "t"}, "callbacks": [handler]}


def streamed(agent: Any, inputs: Any, config: dict[str, Any], mode: str) -> tuple[list[str], Exception | None]:
    return stream_items(agent, inputs, config, mode, STREAMS, stops=QwenGuardError)


def leaked(agent: Any, seen: list[Any]) -> list[str]:
    """Where the unsafe word reached: the streams, the checkpointer, the thread's pending interrupts."""
    thread = {"configurable": {"thread_id": "t"}}
    places = [f"stream item {i}" for i, item in enumerate(seen) if WORD in repr(item)]
    if WORD in repr(list(agent.checkpointer.list(thread))):
        places.append("checkpointer")
    if WORD in repr([t.interrupts for t in agent.get_state(thread).tasks]):
        places.append("get_state().tasks")
    return places


@pytest.mark.parametrize("mode", MODES)
def test_an_unsafe_interrupt_payload_stops_the_run(mode):
    agent, config = agent_for(f"Page says: {UNSAFE_CLAUSE}", mode)
    seen, error = streamed(agent, INPUTS, config, mode)
    assert isinstance(error, GuardViolation) and error.decision.stage is Stage.TOOL_RESULT
    assert leaked(agent, seen) == []


@pytest.mark.parametrize("mode", MODES)
def test_an_interrupt_payload_too_large_to_judge_whole_stops_the_run(mode):
    """Size alone never gets an interrupt's text through unjudged."""
    agent, config = agent_for("Paris is in France. " * 40, mode, max_chars=400)
    seen, error = streamed(agent, INPUTS, config, mode)
    assert error is not None and not any("__interrupt__" in repr(item) for item in seen)


@pytest.mark.parametrize("mode", MODES)
def test_a_safe_interrupt_payload_reaches_the_caller_and_resumes(mode):
    page = "Page says: Paris is the capital of France."
    agent, config = agent_for(page, mode)
    seen, error = streamed(agent, INPUTS, config, mode)
    assert error is None
    pending = agent.get_state({"configurable": {"thread_id": "t"}}).tasks[0].interrupts
    assert pending[0].value == {"question": "Forward this page to the team?", "page": page}  # unchanged
    seen, error = streamed(agent, Command(resume="yes"), config, mode)
    assert error is None
    messages = agent.get_state({"configurable": {"thread_id": "t"}}).values["messages"]
    assert [m.text for m in messages if m.type == "tool"] == ["forwarded: yes"]
