"""A tool that returns a LangGraph `Command` (it updates the state: a handoff, a tool that records what it
found) carries its result as a `ToolMessage` inside ``update``. `GuardMiddleware.wrap_tool_call` judged only
a plain `ToolMessage` result: a Command's went into the state and out to ``stream_mode="updates"``
consumers unjudged (the model did not read it: ``before_model`` caught it there). `ChatOpenAI` against the
scripted server; the demo guard judges.
"""

# No `from __future__ import annotations`: LangChain reads the tool's annotations (InjectedToolCallId).

import asyncio
import json
from typing import Annotated, Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.types import Command
from lc_fakes import INJECTION, SAFE_ANSWER, SAFE_QUESTION
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardMiddleware
from scripted_openai import Reply, ToolCall, scripted_openai
from test_openai_paths import MODES, chat

SEARCH = [
    Reply.words("Let me search.", tool_calls=[ToolCall("search", json.dumps({"q": "France"}), id="c1")]),
    Reply.words(SAFE_ANSWER),
]
FOUND = "Paris is the capital of France."


def _search(result: str) -> Any:
    @tool
    def search(q: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Search the web."""
        return Command(update={"messages": [ToolMessage(result, tool_call_id=tool_call_id)]})

    return search


def _updates(agent: Any, mode: str) -> tuple[list[str], Exception | None]:
    inputs = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
    seen: list[str] = []

    async def drain() -> None:
        async for update in agent.astream(inputs, stream_mode="updates"):
            seen.append(repr(update))

    try:
        if mode == "sync":
            seen.extend(repr(update) for update in agent.stream(inputs, stream_mode="updates"))
        else:
            asyncio.run(drain())
    except GuardViolation as error:
        return seen, error
    return seen, None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", ["end", "replace", "error"])
def test_an_unsafe_result_in_a_tools_command_is_withheld(guard, mode, exit_behavior):
    with scripted_openai(SEARCH) as url:
        agent = create_agent(
            chat(url), [_search(INJECTION)], middleware=[GuardMiddleware(guard, exit_behavior=exit_behavior)]
        )
        seen, error = _updates(agent, mode)
        read = [json.dumps(request.body["messages"]) for request in url.requests]
    assert not any("Ignore all previous" in update for update in seen)  # no update carried the payload
    assert not any("Ignore all previous" in body for body in read)  # nor did the model read it
    if exit_behavior == "error":
        assert isinstance(error, GuardViolation)
    else:
        assert error is None and any("withheld by the safety guard" in update for update in seen)
        assert len(url.requests) == (1 if exit_behavior == "end" else 2)  # "end" ends the run there


@pytest.mark.parametrize("mode", MODES)
def test_a_safe_result_in_a_tools_command_passes_unchanged(guard, mode):
    with scripted_openai(SEARCH) as url:
        agent = create_agent(chat(url), [_search(FOUND)], middleware=[GuardMiddleware(guard)])
        seen, error = _updates(agent, mode)
        second = url.requests[1].body["messages"]
    assert error is None
    assert any(m.get("role") == "tool" and m.get("content") == FOUND for m in second)
    assert SAFE_ANSWER in "".join(seen)


@pytest.mark.parametrize("mode", MODES)
def test_a_callback_stops_an_unsafe_result_in_a_tools_command_before_it_streams(guard, mode):
    """A callback handler cannot withhold a result, but it judges a Command's tool messages when the tool
    ends and stops the run there (before: a Command was "not text", and its message streamed)."""
    from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

    handler = (GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard)
    inputs = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
    config: Any = {"callbacks": [handler]}
    seen: list[str] = []
    with scripted_openai(SEARCH) as url:
        agent = create_agent(chat(url), [_search(INJECTION)])

        async def drain() -> None:
            async for update in agent.astream(inputs, config, stream_mode="updates"):
                seen.append(repr(update))

        with pytest.raises(GuardViolation) as stop:
            if mode == "sync":
                seen.extend(repr(update) for update in agent.stream(inputs, config, stream_mode="updates"))
            else:
                asyncio.run(drain())
        assert len(url.requests) == 1
    assert stop.value.decision.stage.value == "tool_result"
    assert not any("Ignore all previous" in update for update in seen)


# -- a graph whose state is a list of messages: Command(update=[...]) ------------------------------------------
def _list_state_graph(guard: Any, tool_node_options: dict[str, Any], url: str) -> Any:
    """The documented recipe for a graph of your own, with LangGraph's list-state form: the tool writes
    ``Command(update=[ToolMessage])`` (a list, as a list-state graph's ToolNode requires)."""
    from langchain_core.messages import AnyMessage
    from langgraph.graph import END, START, StateGraph
    from langgraph.graph.message import add_messages
    from langgraph.prebuilt import ToolNode

    @tool
    def search(q: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Search the web."""
        return Command(update=[ToolMessage(INJECTION, tool_call_id=tool_call_id)])

    model = chat(url).bind_tools([search])
    graph = StateGraph(Annotated[list[AnyMessage], add_messages])
    graph.add_node("agent", lambda messages: [model.invoke(messages)])
    graph.add_node("tools", ToolNode([search], **tool_node_options))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", lambda messages: "tools" if messages[-1].tool_calls else END)
    graph.add_edge("tools", "agent")
    return graph.compile()


@pytest.mark.parametrize("recipe", ["tool wrapper", "callback"])
def test_a_commands_list_update_in_a_list_state_graph_is_judged(guard, recipe):
    """A red team's finding: `tool_result_messages` read only ``update["messages"]``; a list-state graph's tool
    writes ``Command(update=[ToolMessage])``, which was judged by neither recipe and streamed to the consumer
    (the model's next input check stopped the run after)."""
    from langchain_core.messages import HumanMessage
    from qwenguard.integrations.langchain import GuardCallbackHandler

    middleware = GuardMiddleware(guard, exit_behavior="replace")
    options = (
        {"wrap_tool_call": middleware.wrap_tool_call, "awrap_tool_call": middleware.awrap_tool_call}
        if recipe == "tool wrapper"
        else {}
    )
    config: Any = {"callbacks": [GuardCallbackHandler(guard)]} if recipe == "callback" else {}
    seen: list[str] = []
    with scripted_openai(SEARCH) as url:
        app = _list_state_graph(guard, options, url)
        try:
            for update in app.stream([HumanMessage(SAFE_QUESTION)], config, stream_mode="updates"):
                seen.append(repr(update))
        except GuardViolation:
            assert recipe == "callback"  # a callback stops the run; the wrapper withholds and goes on
        read = [json.dumps(request.body["messages"]) for request in url.requests]
    assert not any("Ignore all previous" in update for update in seen)
    assert not any("Ignore all previous" in body for body in read)
    if recipe == "tool wrapper":
        assert any("withheld by the safety guard" in update for update in seen)


def test_a_blocked_message_is_replaced_in_every_update_form():
    """Each form of a ``Command`` update `command_messages` reads is rewritten in the same form; one the guard
    cannot rewrite is refused, never passed on with the blocked message."""
    import dataclasses

    from langchain_core.messages import AIMessage
    from pydantic import BaseModel, ConfigDict
    from qwenguard.core import GuardUnavailable
    from qwenguard.integrations.langchain._messages import command_messages
    from qwenguard.integrations.langchain.middleware import _with_notices

    @dataclasses.dataclass
    class DataState:
        messages: list

    class ModelState(BaseModel):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        messages: list

    class Opaque:
        def __init__(self, messages: list) -> None:
            self.messages = messages

    blocked, kept = ToolMessage(INJECTION, tool_call_id="c1"), AIMessage("ok")
    notice = ToolMessage("withheld", tool_call_id="c1")
    forms = {
        "mapping": {"messages": [blocked, kept], "other": 1},
        "pairs": [("messages", [blocked, kept]), ("other", 1)],
        "list state": [blocked, kept],
        "dataclass": DataState([blocked, kept]),
        "pydantic": ModelState(messages=[blocked, kept]),
    }
    for name, update in forms.items():
        rewritten = _with_notices(Command(update=update), {id(blocked): notice})
        assert command_messages(rewritten.update) == [notice, kept], name
        assert command_messages(update) == [blocked, kept], name  # the tool's own object is left as it was
    with pytest.raises(GuardUnavailable, match="cannot replace"):
        _with_notices(Command(update=Opaque([blocked, kept])), {id(blocked): notice})
