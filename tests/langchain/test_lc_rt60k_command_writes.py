"""What a LangGraph ``Command`` writes to a graph's state and streams past the guard (stop 60, helper K).

- 1: a tool runs a sub-agent (a `StateGraph`) that hands back with ``Command(graph=Command.PARENT, update=...,
  goto=...)``: LangGraph raises it out of the tool as a ``ParentCommand`` (a ``GraphBubbleUp``) and writes its update
  to the parent graph's state and streams. `GuardCallbackHandler`'s ``on_tool_error`` took it for control flow and
  judged nothing of it: its messages, its other state keys and its ``Send`` payloads went to the parent's
  ``"updates"``/``"values"``/``"messages"`` streams and state.
- 2: a middleware inside `GuardMiddleware` returns ``ExtendedModelResponse(response, command=Command(update=...))``
  writing to a state key other than ``messages`` (a note, ``structured_response``): only the Command's messages were
  judged, the rest reached the state and the ``"updates"``/``"values"`` streams.

Each test is the attack on real `create_agent` agents and hand-built `StateGraph`/`ToolNode` graphs with an
`InMemorySaver`, sync and async; scripted chat models that report their tokens to the run manager (`lc_fakes`); a
judge that flags a text whose reading says "mix ammonium". Counted in characters: no item of any stream mode, nor
the thread's state, carries the unsafe word.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

from typing import Annotated, Any, NotRequired, TypedDict

import pytest
from faults import ScriptedBackend
from langchain.agents import AgentState, create_agent
from langchain.agents.middleware import AgentMiddleware, ExtendedModelResponse
from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langchain_core.tools import StructuredTool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, StateGraph, add_messages
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command, Send, interrupt
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, scripted, tool_call
from lc_streams import streamed
from pydantic import BaseModel
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware

WORD = "ammonium"
PAGE = f"Page says: {UNSAFE_CLAUSE}"
SAFE_PAGE = "Page says: Paris has about two million inhabitants."
MODES = ["sync", "async"]
STREAM_MODES = ["updates", "values", "messages"]
INPUTS = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
THREAD = {"configurable": {"thread_id": "t"}}


def _verdict(conversation: Any) -> str:
    """Unsafe (Violent) where the judged turn's reading says "mix ammonium" (the two words, any case), else safe."""
    last = conversation[-1]
    unsafe = "mix ammonium" in str(last["content"]).lower()
    verdict = "Safety: Unsafe\nCategories: Violent" if unsafe else "Safety: Safe\nCategories: None"
    return verdict + ("\nRefusal: No" if last["role"] == "assistant" else "")


@pytest.fixture
def judge() -> Guard:
    return Guard(ScriptedBackend(_verdict, name="mix"), cache_size=0)


def run(graph: Any, config: Any, mode: str, inputs: Any = INPUTS) -> tuple[list[str], Exception | None]:
    """Every item of the ``"updates"``, ``"values"`` and ``"messages"`` streams, as text, and the guard's stop."""
    return streamed(graph, inputs, config, mode, STREAM_MODES)


def leaks(graph: Any, seen: list[str]) -> list[str]:
    """Where the unsafe word went: stream items, the thread's state."""
    found = [item[:160] for item in seen if WORD in item.lower()]
    if WORD in repr(graph.get_state(THREAD).values).lower():
        found.append("state")
    return found


def handler(guard: Guard, mode: str) -> dict[str, Any]:
    return {**THREAD, "callbacks": [(GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard)]}


# -- 1: a sub-agent's handoff raised out of a tool, under GuardCallbackHandler -----------------------------------------
class SubState(TypedDict):
    url: str


def handing_back(update: Any, goto: Any = ()) -> Any:
    """A sub-agent graph whose one node reads a page and hands back to the graph above with ``update``/``goto``
    (``update`` and ``goto`` callables of the page's text)."""

    def report(state: SubState) -> Command:
        page = state["url"]  # the "fetched" page
        return Command(graph=Command.PARENT, update=update(page), goto=goto(page) if callable(goto) else goto)

    builder = StateGraph(SubState)
    builder.add_node("report", report)
    builder.add_edge(START, "report")
    return builder.compile()


def delegating(sub: Any, page: str) -> Any:
    """The parent's tool that runs the sub-agent on ``page`` (sync and async)."""

    def research(url: str) -> str:
        """Delegate the research to the sub-agent."""
        return str(sub.invoke({"url": page}))

    async def aresearch(url: str) -> str:
        """Delegate the research to the sub-agent."""
        return str(await sub.ainvoke({"url": page}))

    return StructuredTool.from_function(func=research, coroutine=aresearch, name="research")


class ParentState(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    notes: NotRequired[Any]


class AgentNotes(AgentState):
    notes: NotRequired[Any]


def parent_graph(tool: Any, *, handle_tool_errors: bool = False) -> Any:
    """A hand-built agent graph: a model node, a `ToolNode`, and a ``notify`` node a ``Send`` can schedule (it writes
    its payload's text to ``notes``)."""
    model = scripted(tool_call("research", {"url": "http://x"}, "c1"), SAFE_ANSWER, SAFE_ANSWER)

    def agent(state: ParentState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    def notify(payload: dict[str, Any]) -> dict[str, Any]:
        return {"notes": payload["text"]}

    builder = StateGraph(ParentState)
    builder.add_node("agent", agent)  # (a sync node: under astream it runs in a worker thread, its calls judged there)
    builder.add_node("tools", ToolNode([tool], handle_tool_errors=handle_tool_errors))
    builder.add_node("notify", notify)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver())


def parent_agent(tool: Any) -> Any:
    model = scripted(tool_call("research", {"url": "http://x"}, "c1"), SAFE_ANSWER, SAFE_ANSWER)
    return create_agent(model, [tool], state_schema=AgentNotes, checkpointer=InMemorySaver())


def reported(text: str) -> list[Any]:
    return [ToolMessage("Report: " + text, tool_call_id="c1")]


# What the handoff writes, by where the unsafe text is; ``goto`` names the parent's model node (``{model}``).
HANDOFFS: dict[str, tuple[Any, Any]] = {
    "tool message": (lambda page: {"messages": reported(page)}, ()),
    "ai message with goto": (
        lambda page: {"messages": [*reported("ready."), AIMessage("Research says: " + page)]},
        "{model}",
    ),
    "ai message's tool call": (
        lambda page: {
            "messages": [*reported("ready."), tool_call("send_email", {"body": page}, "h1", text="Sending.")]
        },
        (),
    ),
    "other state key": (lambda page: {"messages": reported("ready."), "notes": page}, ()),
    "other state key as pairs": (lambda page: [("messages", reported("ready.")), ("notes", {"page": [page]})], ()),
    "send payload": (lambda page: {"messages": reported("ready.")}, lambda page: Send("notify", {"text": page})),
}


def handoff_graph(parent: str, shape: str, page: str, **options: Any) -> Any:
    update, goto = HANDOFFS[shape]
    if isinstance(goto, str):
        goto = goto.format(model="model" if parent == "create_agent" else "agent")
    tool = delegating(handing_back(update, goto), page)
    return parent_agent(tool) if parent == "create_agent" else parent_graph(tool, **options)


PARENTS = [
    (parent, shape)
    for parent in ("create_agent", "StateGraph")
    for shape in HANDOFFS
    if not (parent == "create_agent" and shape == "send payload")  # (create_agent has no node that takes one)
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("parent", "shape"), PARENTS)
def test_an_unsafe_handoff_raised_out_of_a_tool_is_stopped_by_the_callback_handler(judge, mode, parent, shape):
    graph = handoff_graph(parent, shape, PAGE)
    seen, error = run(graph, handler(judge, mode), mode)
    assert leaks(graph, seen) == []
    assert isinstance(error, GuardViolation)


@pytest.mark.parametrize("shape", ["tool message", "other state key", "send payload"])
def test_an_unsafe_handoff_out_of_a_sync_tool_is_stopped_by_the_async_handler(judge, shape):
    """Under ``astream`` a sync tool runs in a worker thread and LangChain reports its error through its sync
    dispatcher: the async handler answers with its sync twin."""
    update, goto = HANDOFFS[shape]
    sub = handing_back(update, goto)

    def research(url: str) -> str:
        """Delegate the research to the sub-agent."""
        return str(sub.invoke({"url": PAGE}))

    graph = parent_graph(StructuredTool.from_function(func=research, name="research"))
    seen, error = run(graph, handler(judge, "async"), "async")
    assert leaks(graph, seen) == []
    assert isinstance(error, GuardViolation)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", ["tool message", "other state key", "send payload"])
def test_a_tool_node_that_handles_errors_writes_the_guards_stop_in_the_handoffs_place(judge, mode, shape):
    graph = handoff_graph("StateGraph", shape, PAGE, handle_tool_errors=True)
    seen, error = run(graph, handler(judge, mode), mode)
    assert leaks(graph, seen) == []
    assert error is None  # the ToolNode wrote the guard's stop as the call's result, and the agent went on
    messages = graph.get_state(THREAD).values["messages"]
    (result,) = [m for m in messages if isinstance(m, ToolMessage)]
    assert result.status == "error" and "GuardViolation" in result.text
    assert messages[-1].text == SAFE_ANSWER


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("parent", "shape"), PARENTS)
def test_a_safe_handoff_raised_out_of_a_tool_reaches_the_parent(judge, mode, parent, shape):
    graph = handoff_graph(parent, shape, SAFE_PAGE)
    seen, error = run(graph, handler(judge, mode), mode)
    assert error is None
    state = graph.get_state(THREAD).values
    assert SAFE_PAGE in repr(state)
    assert state["messages"][-1].text == SAFE_ANSWER


@pytest.mark.parametrize("mode", MODES)
def test_an_interrupt_raised_out_of_a_tool_still_reaches_the_caller(judge, mode):
    """Interrupts are the run's caller's to read, as before: the handler does not take them for a handoff."""

    def ask(q: str) -> str:
        """Ask a human."""
        return str(interrupt({"question": q}))

    async def aask(q: str) -> str:
        """Ask a human."""
        return str(interrupt({"question": q}))

    model = scripted(tool_call("ask", {"q": "Which city?"}, "c1"), SAFE_ANSWER)
    tool = StructuredTool.from_function(func=ask, coroutine=aask, name="ask")
    agent = create_agent(model, [tool], checkpointer=InMemorySaver())
    seen, error = run(agent, handler(judge, mode), mode)
    assert error is None and any("__interrupt__" in item and "Which city?" in item for item in seen)


# A tool that returns the Command itself (no sub-agent): the handler's on_tool_end reads it the same way (rt59c F2, F4).
def commanding(update: Any, goto: Any) -> Any:
    def research(url: str) -> Command:
        """Research the page."""
        return Command(update=update(PAGE), goto=goto(PAGE) if callable(goto) else goto)

    async def aresearch(url: str) -> Command:
        """Research the page."""
        return research(url)

    return StructuredTool.from_function(func=research, coroutine=aresearch, name="research")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", ["other state key", "other state key as pairs", "send payload"])
def test_an_unsafe_command_a_tool_returns_to_a_hand_built_graph_is_stopped_by_the_callback_handler(judge, mode, shape):
    update, goto = HANDOFFS[shape]
    graph = parent_graph(commanding(update, goto))
    seen, error = run(graph, handler(judge, mode), mode)
    assert leaks(graph, seen) == []
    assert isinstance(error, GuardViolation)


# -- 2: what a Command beside the model's answer writes to other state keys, under GuardMiddleware ---------------------
class Capital(BaseModel):
    city: str


class Annotate(AgentMiddleware):
    """A middleware listed after the guard that writes ``update`` through a Command beside the answer."""

    def __init__(self, update: dict[str, Any]) -> None:
        super().__init__()
        self.update = update

    def wrap_model_call(self, request: Any, handler: Any) -> ExtendedModelResponse:
        return ExtendedModelResponse(model_response=handler(request), command=Command(update=self.update))

    async def awrap_model_call(self, request: Any, handler: Any) -> ExtendedModelResponse:
        response = await handler(request)
        return ExtendedModelResponse(model_response=response, command=Command(update=self.update))


class PassThrough(AgentMiddleware):
    def wrap_model_call(self, request: Any, handler: Any) -> Any:
        return handler(request)

    async def awrap_model_call(self, request: Any, handler: Any) -> Any:
        return await handler(request)


BESIDE = {
    "other state key": lambda text: {"notes": text},
    "other state key beside a message": lambda text: {"messages": [AIMessage("Noted.")], "notes": {"page": [text]}},
    "structured_response": lambda text: {"structured_response": Capital(city=text)},
}


def annotated(guard: Guard, write: dict[str, Any], exit_behavior: str, depth: int) -> Any:
    inner = [PassThrough()] if depth == 2 else []
    return create_agent(
        scripted(SAFE_ANSWER, SAFE_ANSWER),
        [],
        state_schema=AgentNotes,
        middleware=[GuardMiddleware(guard, exit_behavior=exit_behavior), *inner, Annotate(write)],
        checkpointer=InMemorySaver(),
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", list(BESIDE))
@pytest.mark.parametrize("exit_behavior", ["end", "replace", "error"])
@pytest.mark.parametrize("depth", [1, 2])
def test_an_unsafe_write_of_a_command_beside_the_answer_is_withheld(judge, mode, shape, exit_behavior, depth):
    """``depth`` 2: another middleware sits between the guard and the one returning the Command."""
    agent = annotated(judge, BESIDE[shape](PAGE), exit_behavior, depth)
    seen, error = run(agent, THREAD, mode)
    assert leaks(agent, seen) == []
    if exit_behavior == "error":
        assert isinstance(error, GuardViolation)
    else:
        assert error is None
        state = agent.get_state(THREAD).values
        assert "blocked by the safety guard" in state["messages"][-1].text
        assert state.get("notes") is None and state.get("structured_response") is None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", list(BESIDE))
def test_a_safe_write_of_a_command_beside_the_answer_goes_through(judge, mode, shape):
    agent = annotated(judge, BESIDE[shape](SAFE_PAGE), "end", 1)
    seen, error = run(agent, THREAD, mode)
    assert error is None
    state = agent.get_state(THREAD).values
    assert SAFE_PAGE in repr(state) and any(SAFE_ANSWER in item for item in seen)
