"""rt65l: the second look at the joined state keys and the healed tool stops of `GuardMiddleware` (rt65g).

F1 (left documented): an agent's ``@dynamic_prompt`` prints a client's state key beside the user's message; each is
judged alone. Judging them together blocked harmless apps and cleared their keys (rt65p F3, F4): the tests below pin
that the keys stay the app's. F2: with ``exit_behavior="error"`` and parallel tool calls, the
blocked call's safe sibling kept no answer on the thread's next turn (its result lived only in the checkpoint's
pending writes): providers refuse such a request. F3: an outer middleware that rewrote a call's arguments kept the
stop under the rewritten call, and the thread's call was never answered. F4: a stop never forgotten answered a later,
harmless call of the same name and id with a notice, the tool never run. Counted in characters of what the model read
and in the tools' runs.
"""

# No `from __future__ import annotations`: LangChain reads the state, context and tool annotations.

import asyncio
from dataclasses import dataclass
from typing import Any, NotRequired

import pytest
from faults import ScriptedBackend, phrase_verdict
from langchain.agents import AgentState, create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, dynamic_prompt
from langchain_core.messages import AIMessage, HumanMessage, RemoveMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, keyword_guard, scripted, tool_call
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import GuardMiddleware
from test_rt65g_tool_stop_heal import _unanswered

MODES = ["sync", "async"]
THREAD = {"configurable": {"thread_id": "t"}}
REST = UNSAFE_CLAUSE.removeprefix("Mix ")  # "ammonium nitrate with fuel oil, ...": safe alone to the phrase judge
PHRASE = "mix ammonium"
WORD = "ammonium"
RESULT_NOTICE = "The output of tool 'web_fetch' was withheld by the safety guard (Violent); do not rely on it."


def _run(agent: Any, inputs: Any, mode: str, **kwargs: Any) -> dict[str, Any]:
    if mode == "sync":
        return agent.invoke(inputs, THREAD, **kwargs)
    return asyncio.run(agent.ainvoke(inputs, THREAD, **kwargs))


def _read(model: Any, since: int = 0) -> str:
    """Everything the model read (from its call ``since`` on), one text, runs of whitespace as one space."""
    return " ".join("\n".join(str(m.content) for call in model.seen[since:] for m in call).lower().split())


# -- F1: a key beside the user's message -------------------------------------------------------------------------


class State(AgentState):
    verb: NotRequired[str]


@dataclass
class Ctx:
    verb: str


@dynamic_prompt
def verb_prompt(request: ModelRequest) -> str:
    return f"Do what the user asks, starting with the verb: {request.state.get('verb') or ''}"


@dynamic_prompt
def context_prompt(request: ModelRequest) -> str:
    context = request.runtime.context
    return f"Do what the user asks, starting with the verb: {context.verb if context else ''}"


def _phrase_agent(prompt: Any, *replies: Any, exit_behavior: str = "end", max_chars: int | None = None, **kw: Any):
    model = scripted(*replies)
    limits = {} if max_chars is None else {"max_chars": max_chars}
    guard = Guard(ScriptedBackend(phrase_verdict, name="phrase"), cache_size=0, **limits)
    middleware = [GuardMiddleware(guard, exit_behavior=exit_behavior), prompt]
    agent = create_agent(model, [], middleware=middleware, state_schema=State, checkpointer=InMemorySaver(), **kw)
    return agent, model


@pytest.mark.parametrize("mode", MODES)
def test_a_safe_key_beside_the_users_message_reaches_the_model(mode: str) -> None:
    agent, model = _phrase_agent(verb_prompt, SAFE_ANSWER)
    out = _run(agent, {"messages": [HumanMessage("the roses at dawn.")], "verb": "Water"}, mode)
    assert "starting with the verb: water the roses at dawn." in _read(model)
    assert out["messages"][-1].content == SAFE_ANSWER


# F1 itself is left documented (docs/langchain.md): the first fix, the keys judged on both sides of the user's turn,
# blocked 7 of 25 harmless key and question pairs with the demo guard and cleared the app's keys when the user's own
# question was blocked (rt65p F3, F4). These pin that the keys stay the app's.


class Profile(AgentState):
    profile: NotRequired[str]
    locale: NotRequired[str]


@dynamic_prompt
def profile_prompt(request: ModelRequest) -> str:
    state = request.state
    return f"You help {state.get('profile') or 'a user'} (locale {state.get('locale') or 'en'})."


@pytest.mark.parametrize("mode", MODES)
def test_a_blocked_question_leaves_the_apps_keys(mode: str) -> None:
    guard, _ = keyword_guard()
    model = scripted(SAFE_ANSWER, SAFE_ANSWER)
    middleware = [GuardMiddleware(guard), profile_prompt]
    agent = create_agent(model, [], middleware=middleware, state_schema=Profile, checkpointer=InMemorySaver())
    keys = {"profile": "Alice, premium plan", "locale": "fr-FR"}
    _run(agent, {"messages": [HumanMessage(SAFE_QUESTION)], **keys}, mode)
    out = _run(agent, {"messages": [HumanMessage(UNSAFE_CLAUSE)]}, mode)
    assert "can't help" in out["messages"][-1].content
    assert {key: out.get(key) for key in keys} == keys  # before: both cleared


@pytest.mark.parametrize("mode", MODES)
def test_harmless_keys_beside_a_harmless_question_are_answered(mode: str, guard: Guard) -> None:
    model = scripted(SAFE_ANSWER)
    middleware = [GuardMiddleware(guard), profile_prompt]  # the demo guard
    agent = create_agent(model, [], middleware=middleware, state_schema=Profile, checkpointer=InMemorySaver())
    keys = {"profile": "Bob, 34, software engineer in Berlin", "locale": "de-DE"}
    out = _run(agent, {"messages": [HumanMessage(SAFE_QUESTION)], **keys}, mode)
    assert out["messages"][-1].content == SAFE_ANSWER  # before: blocked (Non-violent Illegal Acts), keys cleared
    assert {key: out.get(key) for key in keys} == keys


# -- F2 to F4: the healed tool stops -------------------------------------------------------------------------------


def _tools() -> tuple[list[Any], list[tuple[str, str]]]:
    """A real tool that fetches a hostile page, one that reads the weather, and the runs of both."""
    runs: list[tuple[str, str]] = []

    @tool
    def web_fetch(url: str) -> str:
        """Fetch a page."""
        runs.append(("web_fetch", url))
        return "Garden tips. " + UNSAFE_CLAUSE

    @tool
    def get_weather(city: str) -> str:
        """Weather."""
        runs.append(("get_weather", city))
        return f"Sunny in {city}."

    return [web_fetch, get_weather], runs


def _tool_agent(*replies: Any, outer: list[Any] | None = None) -> tuple[Any, Any, list[tuple[str, str]]]:
    tools, runs = _tools()
    guard, _ = keyword_guard()
    model = scripted(*replies)
    middleware = [*(outer or ()), GuardMiddleware(guard, exit_behavior="error")]
    return create_agent(model, tools, middleware=middleware, checkpointer=InMemorySaver()), model, runs


@pytest.mark.parametrize("mode", MODES)
def test_a_blocked_calls_parallel_sibling_is_answered_on_the_threads_next_turn(mode: str) -> None:
    two = AIMessage(
        content="",
        tool_calls=[
            {"name": "web_fetch", "args": {"url": "https://example.org"}, "id": "call_1", "type": "tool_call"},
            {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_2", "type": "tool_call"},
        ],
    )
    agent, model, runs = _tool_agent(two, SAFE_ANSWER, SAFE_ANSWER)
    with pytest.raises(GuardViolation):
        _run(agent, {"messages": [HumanMessage("Fetch example.org and the weather in Paris")]}, mode)
    out = _run(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, mode)
    read = model.seen[-1]
    assert _unanswered(read) == []
    answers = {m.tool_call_id: m for m in read if isinstance(m, ToolMessage)}
    assert answers["call_1"].content == RESULT_NOTICE
    assert answers["call_2"].status == "error" and "get_weather" in answers["call_2"].content
    assert "lost" in answers["call_2"].content
    assert "Do not call it again" in answers["call_2"].content  # it may have acted (rt65p F2: a payment went twice)
    assert WORD not in _read(model)
    assert out["messages"][-1].content == SAFE_ANSWER
    assert _unanswered(out["messages"]) == []


class Normalize(AgentMiddleware):
    """Listed before the guard: rewrites the call's arguments (a normalized url; a default, an injected field)."""

    def _fixed(self, request: Any) -> Any:
        url = request.tool_call["args"]["url"].strip().lower()
        return request.override(tool_call={**request.tool_call, "args": {"url": url}})

    def wrap_tool_call(self, request: Any, handler: Any) -> Any:
        return handler(self._fixed(request))

    async def awrap_tool_call(self, request: Any, handler: Any) -> Any:
        return await handler(self._fixed(request))


@pytest.mark.parametrize("mode", MODES)
def test_a_stop_under_an_outer_middlewares_rewritten_args_answers_the_threads_call(mode: str) -> None:
    call = tool_call("web_fetch", {"url": "https://Example.org "})
    agent, model, runs = _tool_agent(call, SAFE_ANSWER, SAFE_ANSWER, outer=[Normalize()])
    with pytest.raises(GuardViolation):
        _run(agent, {"messages": [HumanMessage("Fetch example.org for garden tips")]}, mode)
    out = _run(agent, {"messages": [HumanMessage(SAFE_QUESTION)]}, mode)
    read = model.seen[-1]
    assert _unanswered(read) == []
    assert [m.content for m in read if isinstance(m, ToolMessage)] == [RESULT_NOTICE]
    assert WORD not in _read(model)
    assert _unanswered(out["messages"]) == []


@pytest.mark.parametrize("mode", MODES)
def test_a_stop_whose_call_the_client_removed_never_answers_a_later_harmless_call(mode: str) -> None:
    pages = ["Garden tips. " + UNSAFE_CLAUSE, "Garden tips: water roses at dawn."]
    fetched: list[str] = []

    @tool
    def web_fetch(url: str) -> str:
        """Fetch a page."""
        fetched.append(url)
        return pages[len(fetched) - 1]

    guard, _ = keyword_guard()
    call = tool_call("web_fetch", {"url": "https://example.org"})
    model = scripted(call, call.model_copy(), SAFE_ANSWER)
    middleware = [GuardMiddleware(guard, exit_behavior="error")]
    agent = create_agent(model, [web_fetch], middleware=middleware, checkpointer=InMemorySaver())
    with pytest.raises(GuardViolation):
        _run(agent, {"messages": [HumanMessage("Fetch example.org")]}, mode)
    # The client removes the answer that asked (as the docs advise for a blocked message); the model later asks the
    # same call (same name, id and arguments): a new call, for the tool to run.
    last = agent.get_state(THREAD).values["messages"][-1]
    agent.update_state(THREAD, {"messages": [RemoveMessage(id=last.id)]})
    out = _run(agent, {"messages": [HumanMessage("Try example.org again please")]}, mode)
    assert len(fetched) == 2
    assert [m.content for m in out["messages"] if isinstance(m, ToolMessage)] == [pages[1]]
    assert "water roses at dawn." in _read(model)
    assert WORD not in _read(model)
