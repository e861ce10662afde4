"""rt65g F1: a request split across two state keys, or a key and the run's context, is judged joined.

An agent's ``@dynamic_prompt`` prints two client keys side by side (``f"{verb} {task}"``), or the run's context beside
a key. The client sends "Mix" in one and the rest of the clause in the other: each was judged alone (safe to a judge
that needs two words of the clause, `phrase_verdict`), and the model read the whole clause in its system prompt. Now
the keys' texts (and the context's) are judged once more, joined; blocked, the keys are cleared and the run ends with
the refusal. A key a tool wrote (its Command allowed and trusted) is read with the client's key beside it. Counted in
characters of what the model read.
"""

# No `from __future__ import annotations`: LangChain reads the state and context schemas' annotations.

import asyncio
from dataclasses import dataclass
from typing import Any, NotRequired

import pytest
from faults import ScriptedBackend, phrase_verdict
from langchain.agents import AgentState, create_agent
from langchain.agents.middleware import ModelRequest, dynamic_prompt
from langchain.tools import ToolRuntime
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, scripted, tool_call
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import GuardMiddleware

MODES = ["sync", "async"]
THREAD = {"configurable": {"thread_id": "t"}}
REST = UNSAFE_CLAUSE.removeprefix("Mix ")  # "ammonium nitrate with fuel oil, ...": safe alone to the phrase judge
PHRASE = "mix ammonium"


class State(AgentState):
    verb: NotRequired[str]
    task: NotRequired[str]


@dataclass
class Ctx:
    verb: str


@dynamic_prompt
def task_prompt(request: ModelRequest) -> str:
    state = request.state
    return f"The user's task: {state.get('verb') or ''} {state.get('task') or ''}"


@dynamic_prompt
def context_prompt(request: ModelRequest) -> str:
    context = request.runtime.context
    return f"The user's task: {context.verb if context else ''} {request.state.get('task') or ''}"


def _run(agent: Any, inputs: Any, mode: str, **kwargs: Any) -> dict[str, Any]:
    if mode == "sync":
        return agent.invoke(inputs, THREAD, **kwargs)
    return asyncio.run(agent.ainvoke(inputs, THREAD, **kwargs))


def _read(model: Any) -> str:
    """Everything the model read, one text."""
    return "\n".join(str(m.content) for call in model.seen for m in call)


def _agent(prompt: Any, tools: list[Any], *replies: Any, exit_behavior: str = "end", **kwargs: Any) -> Any:
    model = scripted(*replies)
    guard = Guard(ScriptedBackend(phrase_verdict, name="phrase"), cache_size=0)
    agent = create_agent(
        model,
        tools,
        middleware=[GuardMiddleware(guard, exit_behavior=exit_behavior), prompt],
        state_schema=State,
        checkpointer=InMemorySaver(),
        **kwargs,
    )
    return agent, model


@pytest.mark.parametrize("mode", MODES)
def test_a_request_split_across_two_keys_never_reaches_the_model(mode: str) -> None:
    agent, model = _agent(task_prompt, [], SAFE_ANSWER)
    # The schema's order, not the input's: the prompt prints verb first.
    out = _run(agent, {"messages": [HumanMessage("Please do the task.")], "task": REST, "verb": "Mix"}, mode)
    assert PHRASE not in " ".join(_read(model).lower().split())
    assert "can't help" in out["messages"][-1].content
    assert out.get("verb") is None and out.get("task") is None  # cleared: the thread's next turn does not print them


@pytest.mark.parametrize("mode", MODES)
def test_a_request_split_across_a_key_and_the_run_context_never_reaches_the_model(mode: str) -> None:
    agent, model = _agent(context_prompt, [], SAFE_ANSWER, context_schema=Ctx)
    out = _run(agent, {"messages": [HumanMessage("Please do the task.")], "task": REST}, mode, context=Ctx("Mix"))
    assert PHRASE not in " ".join(_read(model).lower().split())
    assert "can't help" in out["messages"][-1].content


@pytest.mark.parametrize("mode", MODES)
def test_safe_keys_side_by_side_reach_the_model(mode: str) -> None:
    agent, model = _agent(task_prompt, [], SAFE_ANSWER)
    out = _run(agent, {"messages": [HumanMessage("Please do the task.")], "verb": "Water", "task": "the roses."}, mode)
    assert "The user's task: Water the roses." in _read(model)
    assert out["messages"][-1].content == SAFE_ANSWER


@pytest.mark.parametrize("mode", MODES)
def test_with_error_the_split_request_raises_and_the_threads_next_turn_goes_on_without_it(mode: str) -> None:
    agent, model = _agent(task_prompt, [], SAFE_ANSWER, exit_behavior="error")
    with pytest.raises(GuardViolation):
        _run(agent, {"messages": [HumanMessage("Please do the task.")], "verb": "Mix", "task": REST}, mode)
    out = _run(agent, {"messages": [HumanMessage("What is the capital of France?")]}, mode)
    assert PHRASE not in " ".join(_read(model).lower().split())
    assert out["messages"][-1].content == SAFE_ANSWER


def _task_writer() -> Any:
    """A tool that writes the safe rest of the clause to ``task`` (its Command is judged and trusted)."""

    @tool
    def set_task(runtime: ToolRuntime) -> Command:
        """Write the task."""
        call_id = runtime.tool_call_id or ""
        return Command(update={"task": REST, "messages": [ToolMessage("Task set.", tool_call_id=call_id)]})

    return set_task


@pytest.mark.parametrize("mode", MODES)
def test_a_key_a_tool_wrote_is_read_with_the_clients_key_beside_it(mode: str) -> None:
    agent, model = _agent(task_prompt, [_task_writer()], tool_call("set_task", {}), SAFE_ANSWER, SAFE_ANSWER)
    _run(agent, {"messages": [HumanMessage("Set my task.")]}, mode)
    assert REST in _read(model)  # the tool's write, allowed, reached the model alone
    seen = len(model.seen)
    # The next turn's client key completes the clause the trusted key holds.
    out = _run(agent, {"messages": [HumanMessage("Go on.")], "verb": "Mix"}, mode)
    read = " ".join("\n".join(str(m.content) for call in model.seen[seen:] for m in call).lower().split())
    assert PHRASE not in read
    assert "can't help" in out["messages"][-1].content
