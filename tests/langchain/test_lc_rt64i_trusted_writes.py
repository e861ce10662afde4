"""rt64i F1: GuardMiddleware took the state keys a tool's ``Command`` writes as allowed checks of the user's words
when the tool's result was allowed, under a fingerprint of the words alone, shared by every thread. With the
tool-result stage off (an allow that judged nothing), a client's prompt of the same words on another thread was
never judged: the model answered it. A written key is now trusted only as that key's check on its thread, and only
where the prompt stage allows the verdict the tool result got."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, NotRequired

import pytest
from faults import ScriptedBackend, phrase_verdict
from langchain.agents import AgentState, create_agent
from langchain.agents.middleware import ModelRequest, dynamic_prompt
from langchain_core.messages import ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, scripted, tool_call
from qwenguard.core import Guard, Policy, Stage, StagePolicy
from qwenguard.integrations.langchain import GuardMiddleware

SAFE_PAGE = "The museum opens at nine and closes at six."


class State(AgentState):
    notes: NotRequired[str]


@dynamic_prompt
def with_notes(request: ModelRequest) -> str:
    """The saved notes in the system prompt: the model reads the state key."""
    return f"You are a helpful assistant. Saved notes: {request.state.get('notes') or ''}"


def _fetcher(page: str) -> Any:
    @tool
    def fetch(url: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Fetch a page and keep it as notes."""
        return Command(update={"notes": page, "messages": [ToolMessage("saved", tool_call_id=tool_call_id)]})

    return fetch


def _agent(page: str, policy: Policy, replies: list[Any]) -> tuple[Any, Any, ScriptedBackend]:
    backend = ScriptedBackend(phrase_verdict, name="phrase")
    model = scripted(*replies)
    middleware = GuardMiddleware(Guard(backend, policy, cache_size=0))
    agent = create_agent(
        model, [_fetcher(page)], middleware=[middleware, with_notes], state_schema=State, checkpointer=InMemorySaver()
    )
    return agent, model, backend


def _run(agent: Any, inputs: Any, thread: str, mode: str) -> Any:
    config = {"configurable": {"thread_id": thread}}
    return agent.invoke(inputs, config) if mode == "sync" else asyncio.run(agent.ainvoke(inputs, config))


def _read_by_model(model: Any) -> str:
    return "\n".join(str(m.content) for call in model.seen for m in call)


OFF = Policy(stages={Stage.TOOL_RESULT: StagePolicy(enabled=False)})
LOOSE = Policy(stages={Stage.TOOL_RESULT: StagePolicy(ignore_categories=frozenset({"Violent"}))})


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("policy", [OFF, LOOSE], ids=["tool-results-off", "tool-results-ignore-violent"])
def test_a_clients_prompt_is_judged_after_a_tool_wrote_the_same_words_to_a_state_key(policy: Policy, mode: str) -> None:
    """The attack: thread a's tool saves a page (the clause) to a state key; thread b's client sends the clause as
    its prompt. The model must never read it."""
    agent, model, _ = _agent(UNSAFE_CLAUSE, policy, [tool_call("fetch", {"url": "https://x.example/p"}), "Saved."])
    _run(agent, {"messages": [{"role": "user", "content": "Save that page"}]}, "a", mode)
    model.seen.clear()
    out = _run(agent, {"messages": [{"role": "user", "content": UNSAFE_CLAUSE}]}, "b", mode)
    assert "ammonium" not in _read_by_model(model)
    assert "blocked" in str(out["messages"][-1].content)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_key_a_tool_wrote_unjudged_is_judged_when_the_thread_runs_again(mode: str) -> None:
    """With the tool-result stage off, what the tool wrote was judged by nothing: the thread's next run reads the key
    as the client's, and the model never reads the clause."""
    replies = [tool_call("fetch", {"url": "https://x.example/p"}), "Saved.", SAFE_ANSWER]
    agent, model, _ = _agent(UNSAFE_CLAUSE, OFF, replies)
    _run(agent, {"messages": [{"role": "user", "content": "Save that page"}]}, "a", mode)
    _run(agent, {"messages": [{"role": "user", "content": "What did you save?"}]}, "a", mode)
    assert "ammonium" not in _read_by_model(model)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_safe_write_allowed_as_the_tools_output_is_not_judged_again_on_its_thread(mode: str) -> None:
    replies = [tool_call("fetch", {"url": "https://x.example/p"}), "Saved.", SAFE_ANSWER]
    agent, _, backend = _agent(SAFE_PAGE, Policy(), replies)
    _run(agent, {"messages": [{"role": "user", "content": "Save that page"}]}, "a", mode)
    before = len(backend.calls)
    _run(agent, {"messages": [{"role": "user", "content": "What did you save?"}]}, "a", mode)
    judged = [c[-1]["content"] for batch in backend.calls[before:] for c in batch]
    assert SAFE_PAGE not in judged
