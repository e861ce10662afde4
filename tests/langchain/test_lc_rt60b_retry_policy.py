"""A LangGraph node with a ``RetryPolicy`` re-ran after the guard stopped it (rt60b F1).

LangGraph retries a node on any exception its default predicate (``default_retry_on``) does not name as permanent;
a `GuardViolation` was a plain ``Exception``, so a graph of the user's own with ``retry_policy=RetryPolicy()``
asked the model again after its answer was blocked (a re-roll: the third, safe answer came back with no error), ran
a tool again whose result the guard had blocked (its side effect three times) and streamed the callback handler's
unjudged tail once an attempt. A stop is now one of the errors that predicate does not retry (a ``RuntimeError``).
LlamaIndex workflow steps retry every error by default: `retryable` (qwenguard.core) is the predicate to pass there.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode
from langgraph.types import RetryPolicy
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE, scripted, tool_call
from qwenguard.core import Guard, GuardUnavailable, GuardViolation, InputTooLarge
from qwenguard.integrations.langchain import GuardCallbackHandler, GuardedChatModel, GuardMiddleware
from typing_extensions import TypedDict

RETRIES = RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False)


class State(TypedDict):
    messages: Annotated[list, add_messages]


def keyword_guard() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="keywords"), cache_size=0)


def one_node_graph(node):
    graph = StateGraph(State)
    graph.add_node("chat", node, retry_policy=RETRIES)
    graph.add_edge(START, "chat")
    graph.add_edge("chat", END)
    return graph.compile()


def tool_graph(model, tools: ToolNode):
    graph = StateGraph(State)
    graph.add_node("chat", lambda state: {"messages": [model.invoke(state["messages"])]})
    graph.add_node("tools", tools, retry_policy=RETRIES)
    graph.add_edge(START, "chat")
    graph.add_conditional_edges("chat", lambda s: "tools" if s["messages"][-1].tool_calls else END, ["tools", END])
    graph.add_edge("tools", "chat")
    return graph.compile()


def counting_fetch(runs: list[str]):
    @tool
    def fetch_page(url: str) -> str:
        """Fetch a page."""
        runs.append(url)
        return f"Page says: {UNSAFE_CLAUSE}"

    return fetch_page


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_blocked_answer_is_not_asked_again_by_a_node_retry_policy(asynchronous: bool) -> None:
    model = scripted(f"Sure. {UNSAFE_CLAUSE}", f"Okay: {UNSAFE_CLAUSE}", SAFE_ANSWER)
    guarded = GuardedChatModel(model, keyword_guard())

    def chat(state):
        return {"messages": [guarded.invoke(state["messages"])]}

    async def achat(state):
        return {"messages": [await guarded.ainvoke(state["messages"])]}

    app = one_node_graph(achat if asynchronous else chat)
    ask = {"messages": [HumanMessage("hi")]}
    with pytest.raises(GuardViolation):
        asyncio.run(app.ainvoke(ask)) if asynchronous else app.invoke(ask)
    assert len(model.seen) == 1  # no re-roll: the safe third answer was never asked for


def test_a_tool_whose_result_the_handler_blocked_does_not_run_again() -> None:
    runs: list[str] = []
    model = scripted(tool_call("fetch_page", {"url": "http://x"}, "c1"), SAFE_ANSWER)
    app = tool_graph(model, ToolNode([counting_fetch(runs)]))
    with pytest.raises(GuardViolation):
        app.invoke({"messages": [HumanMessage("fetch it")]}, {"callbacks": [GuardCallbackHandler(keyword_guard())]})
    assert runs == ["http://x"]


def test_a_tool_whose_result_the_middleware_wrapper_blocked_does_not_run_again() -> None:
    # docs/langchain.md "Tool results in a graph of your own": the middleware's tool wrappers on a ToolNode.
    runs: list[str] = []
    middleware = GuardMiddleware(keyword_guard(), exit_behavior="error")
    tools = ToolNode(
        [counting_fetch(runs)], wrap_tool_call=middleware.wrap_tool_call, awrap_tool_call=middleware.awrap_tool_call
    )
    app = tool_graph(scripted(tool_call("fetch_page", {"url": "http://x"}, "c1"), SAFE_ANSWER), tools)
    with pytest.raises(GuardViolation):
        app.invoke({"messages": [HumanMessage("fetch it")]})
    assert runs == ["http://x"]


def test_the_callback_handlers_unjudged_tail_streams_once_not_once_an_attempt() -> None:
    answer = f"Sure. {UNSAFE_CLAUSE}"
    model = scripted(answer, answer, answer)
    app = one_node_graph(lambda state: {"messages": [model.invoke(state["messages"])]})
    streamed = []
    with pytest.raises(GuardViolation):
        for chunk, _ in app.stream(
            {"messages": [HumanMessage("hi")]},
            {"callbacks": [GuardCallbackHandler(keyword_guard())]},
            stream_mode="messages",
        ):
            streamed.append(chunk.text)
    assert len(model.seen) == 1
    assert "".join(streamed).count("Sure.") <= 1


def test_retryable_is_the_predicate_for_retry_policies_that_retry_everything() -> None:
    # LangGraph's RetryPolicy(retry_on=...) and LlamaIndex's retry_policy(retry=retry_if_exception(...)) take it.
    from qwenguard.core import retryable  # noqa: PLC0415 (new here: the tests above run on the code before it)

    stop = GuardViolation.__new__(GuardViolation)
    assert not retryable(stop) and not retryable(InputTooLarge("too long"))
    assert retryable(GuardUnavailable("the guard did not answer")) and retryable(ConnectionError("reset"))
    assert not retryable(KeyboardInterrupt())
