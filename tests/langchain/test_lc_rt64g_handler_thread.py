"""A prompt `GuardCallbackHandler` blocked on a checkpointed thread, and the thread's next turns (rt64g F2).

``create_agent(..., checkpointer=InMemorySaver())`` with the handler in the run's config: LangGraph writes a run's
input to the thread before any node runs, so the blocked prompt stays there, and every later model call on the thread
reads it. The handler cannot take it out of what the model reads (`GuardMiddleware` writes its notice in its place),
so it keeps refusing the thread: letting the call through would give the model the blocked text. Before, each later
turn's stop read as that turn's own blocked prompt ("prompt blocked (unsafe: Violent)") and named no way out: the
thread was locked for good. Now the handler remembers the blocks it raised for on each thread, as the middleware does
(`RaisedChecks`), and the stop for one still there says so and names the message to remove; removed, the thread
answers again.

Counted in characters: the blocked clause in every message list the model was given.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage, RemoveMessage
from langgraph.checkpoint.memory import InMemorySaver
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, ScriptedChatModel, keyword_guard, scripted
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

MODES = ["sync", "async"]
BLOCKED = "Please repeat after me: " + UNSAFE_CLAUSE
LATER = "Thanks, and Lyon?"
_REMOVAL = re.compile(r"RemoveMessage\(id='([^']+)'\)")


def read_by_model(model: ScriptedChatModel) -> int:
    """Characters of the blocked clause in every message the model was given."""
    return sum(len(UNSAFE_CLAUSE) for seen in model.seen for m in seen if UNSAFE_CLAUSE in m.text)


def _config(thread: str | None, mode: str, guard: Any, **options: Any) -> dict[str, Any]:
    handler = (GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard, **options)
    return {**({"configurable": {"thread_id": thread}} if thread else {}), "callbacks": [handler]}


def _turn(agent: Any, message: Any, config: dict[str, Any], mode: str) -> Any:
    """One turn: its result, or the `GuardViolation` it raised."""
    inputs = {"messages": [message]}
    try:
        return agent.invoke(inputs, config) if mode == "sync" else asyncio.run(agent.ainvoke(inputs, config))
    except GuardViolation as stop:
        return stop


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _agent(model: ScriptedChatModel, saver: bool = True) -> Any:
    return create_agent(model, tools=[], checkpointer=InMemorySaver() if saver else None)


@pytest.mark.parametrize("mode", MODES)
def test_the_stop_for_a_blocked_turn_left_in_the_thread_names_it_and_removing_it_frees_the_thread(mode):
    guard, _ = keyword_guard()
    model = scripted(SAFE_ANSWER, SAFE_ANSWER)
    agent = _agent(model)
    config = _config("t1", mode, guard)
    first = _turn(agent, _user(BLOCKED), config, mode)
    assert isinstance(first, GuardViolation) and "earlier run" not in str(first)
    blocked_id = agent.get_state(config).values["messages"][0].id  # LangGraph saved it before the guard raised

    # The user's safe question: the model would read the blocked turn beside it, so the thread is still refused,
    # and the stop says why and names the message to remove.
    second = _turn(agent, _user(SAFE_QUESTION), config, mode)
    assert isinstance(second, GuardViolation), second
    assert "earlier run" in str(second) and _REMOVAL.findall(str(second)) == [blocked_id]
    assert (len(model.seen), read_by_model(model)) == (0, 0)

    # The recovery the stop names.
    agent.update_state(config, {"messages": [RemoveMessage(id=i) for i in _REMOVAL.findall(str(second))]})
    third = _turn(agent, _user(LATER), config, mode)
    assert not isinstance(third, GuardViolation), third
    assert third["messages"][-1].text == SAFE_ANSWER
    assert [m.text for m in model.seen[0]] == [SAFE_QUESTION, LATER] and read_by_model(model) == 0


@pytest.mark.parametrize("mode", MODES)
def test_with_parallel_input_the_stop_names_the_blocked_turn_too(mode):
    """``parallel_input=True`` starts the model beside the check (its documented trade); the stop it raises at the first
    token is the thread's, as above, and no answer reaches the caller."""
    guard, _ = keyword_guard()
    model = scripted(SAFE_ANSWER, SAFE_ANSWER)
    agent = _agent(model)
    config = _config("t1", mode, guard, parallel_input=True)
    assert isinstance(_turn(agent, _user(BLOCKED), config, mode), GuardViolation)
    second = _turn(agent, _user(SAFE_QUESTION), config, mode)
    assert isinstance(second, GuardViolation), second
    assert _REMOVAL.findall(str(second)) == [agent.get_state(config).values["messages"][0].id]


@pytest.mark.parametrize("mode", MODES)
def test_a_new_block_is_told_as_its_own_and_a_block_elsewhere_is_not_the_threads(mode):
    """The thread's note goes only where every block was raised for before on that thread: a new blocked turn beside
    the old one is reported as it was; the same message (its id and text) sent on another thread, or with no thread,
    is a block of its own there."""
    guard, _ = keyword_guard()
    model = scripted(SAFE_ANSWER)
    agent = _agent(model)
    config = _config("t1", mode, guard)
    blocked = HumanMessage(BLOCKED, id="m1")
    assert isinstance(_turn(agent, blocked, config, mode), GuardViolation)
    new = _turn(agent, _user("And again: " + UNSAFE_CLAUSE), config, mode)
    assert isinstance(new, GuardViolation) and "earlier run" not in str(new)
    elsewhere = _turn(agent, blocked, {**config, "configurable": {"thread_id": "t2"}}, mode)
    assert isinstance(elsewhere, GuardViolation) and "earlier run" not in str(elsewhere)
    stateless = _agent(model, saver=False)
    for _ in range(2):
        alone = _turn(stateless, blocked, _config(None, mode, guard), mode)
        assert isinstance(alone, GuardViolation) and "earlier run" not in str(alone)
    assert (len(model.seen), read_by_model(model)) == (0, 0)


@pytest.mark.parametrize("mode", MODES)
def test_removing_the_blocked_turn_where_the_stop_is_caught_keeps_the_thread_answering(mode):
    """The recipe docs/langchain.md gives for the handler: catch the prompt's stop, remove the thread's last
    message (the blocked turn), and the thread's next turn is answered without it."""
    guard, _ = keyword_guard()
    model = scripted(SAFE_ANSWER)
    agent = _agent(model)
    config = _config("t1", mode, guard)
    stop = _turn(agent, _user(BLOCKED), config, mode)
    assert isinstance(stop, GuardViolation)
    last = agent.get_state(config).values["messages"][-1]
    agent.update_state(config, {"messages": [RemoveMessage(id=last.id)]})
    answered = _turn(agent, _user(SAFE_QUESTION), config, mode)
    assert not isinstance(answered, GuardViolation), answered
    assert [m.text for m in model.seen[0]] == [SAFE_QUESTION] and read_by_model(model) == 0
