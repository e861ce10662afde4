"""An app's state keys are judged each alone, never run together (red team rt65t F1; rt65g F1 left documented).

rt65g F1: a ``@dynamic_prompt`` printing two client keys side by side (``"{verb} {task}"``) handed the model a
request no check read whole; the first fix judged every key's text joined (and the run's context on both sides).
Ordinary apps whose keys were each allowed were then blocked (4 of 33 harmless key sets with the demo guard, 2 of
10 apps with five keys or more), and each block cleared every key of the thread. The keys are judged alone again;
the docs say how to judge a prompt that prints keys side by side. Sync and async, the demo guard.
"""

# No `from __future__ import annotations`: LangChain reads the state annotations.

import asyncio
import uuid
from typing import Any, NotRequired

import pytest
from langchain.agents import AgentState, create_agent
from langchain.agents.middleware import ModelRequest, dynamic_prompt
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from lc_fakes import scripted
from qwenguard.core import Guard
from qwenguard.integrations.langchain import GuardMiddleware

#: Apps whose keys and question the demo guard allows each alone, and whose keys run together it blocked.
APPS = {
    "tutor": (
        {
            "student": "Chen",
            "course": "Calculus II",
            "unit": "Integration by parts",
            "level": "undergraduate",
            "goal": "pass the final exam",
            "language": "English",
        },
        "Can you explain integration by parts with an example?",
    ),
    "books": (
        {
            "reader": "Hana",
            "genre": "thrillers",
            "last_book": "Gone Girl",
            "format": "audiobook",
            "length": "under 10 hours",
        },
        "Recommend me a book please.",
    ),
    "diet": ({"recipe_pref": "vegetarian", "allergies": "peanuts, shellfish"}, "Suggest a quick dinner recipe."),
}


class State(AgentState):
    student: NotRequired[str]
    course: NotRequired[str]
    unit: NotRequired[str]
    level: NotRequired[str]
    goal: NotRequired[str]
    language: NotRequired[str]
    reader: NotRequired[str]
    genre: NotRequired[str]
    last_book: NotRequired[str]
    format: NotRequired[str]
    length: NotRequired[str]
    recipe_pref: NotRequired[str]
    allergies: NotRequired[str]


@dynamic_prompt
def profile(request: ModelRequest) -> str:
    return "User profile: " + "; ".join(f"{k}={v}" for k, v in request.state.items() if isinstance(v, str))


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_apps_keys_allowed_alone_are_not_blocked_together(app: str, mode: str, guard: Guard) -> None:
    keys, question = APPS[app]
    assert all(guard.check_prompt(text).allowed for text in [*keys.values(), question])  # each alone: allowed
    model = scripted("Sure, here is an answer.")
    middleware = [profile, GuardMiddleware(guard, exit_behavior="end")]
    agent = create_agent(model, [], middleware=middleware, state_schema=State, checkpointer=InMemorySaver())
    config: Any = {"configurable": {"thread_id": str(uuid.uuid4())}}
    data = {"messages": [HumanMessage(question)], **keys}
    out = agent.invoke(data, config) if mode == "sync" else asyncio.run(agent.ainvoke(data, config))
    assert out["messages"][-1].content == "Sure, here is an answer."  # before: blocked, the model never called
    assert {key: out.get(key) for key in keys} == keys  # before: every key cleared
