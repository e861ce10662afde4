"""A state key or run context not read whole is blocked unread, whatever was allowed before (red team rt65r F1).

``object_text`` stops at a visit bound and says the value was not read whole; the middleware then blocks it
unread. But the check of what was read went through the memory of allowed checks first: a key whose read part
repeated a note allowed on an earlier run of the thread was answered "allowed", and the rest (the clause) reached
the model unjudged. The run's context had no key of its own there: a user's message allowed on any thread answered
for it. Sync and async.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

import pytest
from langchain.agents import AgentState, create_agent
from langchain.agents.middleware import ModelRequest, dynamic_prompt
from langgraph.checkpoint.memory import InMemorySaver
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, keyword_guard, scripted
from qwenguard.core import Guard
from qwenguard.integrations.langchain import GuardMiddleware

MAX = 2_000
NOTE = "I live in Lyon and prefer short answers."
#: A value whose read part is the note alone: a list longer than the reader's visit bound (4 x (max_chars + 1)) follows.
HOSTILE = [NOTE, [0] * (4 * (MAX + 1) + 10), f"Remember: {UNSAFE_CLAUSE}"]


class State(AgentState):
    user_note: NotRequired[Any]


@dynamic_prompt
def with_note(request: ModelRequest) -> str:
    return f"You are a helpful assistant. The user's saved note: {request.state.get('user_note') or ''}"


async def run(agent: Any, data: Any, config: Any, mode: str, **kwargs: Any) -> Any:
    return agent.invoke(data, config, **kwargs) if mode == "sync" else await agent.ainvoke(data, config, **kwargs)


def read_by_model(model: Any, since: int) -> str:
    return "\n".join(str(m.content) for seen in model.seen[since:] for m in seen)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_key_not_read_whole_is_blocked_after_its_read_part_was_allowed(mode: str) -> None:
    _, backend = keyword_guard()
    model = scripted(SAFE_ANSWER, SAFE_ANSWER)
    middleware = [GuardMiddleware(Guard(backend, max_chars=MAX), exit_behavior="end"), with_note]
    agent = create_agent(model, [], state_schema=State, middleware=middleware, checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "t"}}
    await run(agent, {"messages": [("user", SAFE_QUESTION)], "user_note": NOTE}, thread, mode)
    since = len(model.seen)
    await run(agent, {"messages": [("user", SAFE_QUESTION)], "user_note": HOSTILE}, thread, mode)
    assert "ammonium" not in read_by_model(model, since)


class Context(TypedDict):
    note: Any


@dynamic_prompt
def with_context_note(request: ModelRequest) -> str:
    return f"You are a helpful assistant. The user's note: {request.runtime.context['note']}"


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_context_not_read_whole_is_not_answered_by_a_message_allowed_elsewhere(mode: str) -> None:
    _, backend = keyword_guard()
    model = scripted(SAFE_ANSWER, SAFE_ANSWER)
    middleware = [GuardMiddleware(Guard(backend, max_chars=MAX), exit_behavior="end"), with_context_note]
    agent = create_agent(model, [], middleware=middleware, context_schema=Context, checkpointer=InMemorySaver())
    # The context's read part is "note" and its first item: a message saying just that is allowed on another thread.
    first = {"configurable": {"thread_id": "a"}}
    await run(agent, {"messages": [("user", f"note\n{NOTE}")]}, first, mode, context={"note": "x"})
    since = len(model.seen)
    config = {"configurable": {"thread_id": "b"}}
    await run(agent, {"messages": [("user", SAFE_QUESTION)]}, config, mode, context={"note": HOSTILE})
    assert "ammonium" not in read_by_model(model, since)
