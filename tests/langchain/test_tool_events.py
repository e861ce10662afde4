"""A tool's own run events under `GuardMiddleware` (a red team's finding, rt42d 2).

``wrap_tool_call`` judges a tool's result when LangGraph's handler returns it, but the tool fired its
``on_tool_end`` inside the handler, so ``astream_events`` (v2 ``on_tool_end``), ``stream_events(version="v3")``
and ``stream_mode="tools"`` (``tool-finished``, ``tool-output-delta``) handed the consumer the raw page first.
The tool now runs out of sight of the run's callbacks, and its start, end or error are told to them once the
guard has judged what it returned. Each test is the attack, counted in characters of the unsafe word; the judge
is the keyword guard (unsafe when the judged turn says "ammonium").
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations (ToolRuntime).

import asyncio
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain.agents.middleware import ToolRetryMiddleware
from langchain.tools import ToolRuntime
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import ToolMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import ToolException, tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, scripted, tool_call
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware

WORD = "ammonium"
MODES = ["sync", "async"]
INPUTS = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
PAGE = f"Page says: {UNSAFE_CLAUSE}"
SAFE_PAGE = "Paris is the capital and largest city of France."


@pytest.fixture
def kw() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"))


def make_fetch(page: str) -> Any:
    @tool
    def fetch_page(url: str, runtime: ToolRuntime) -> str:
        """Fetch a web page."""
        runtime.emit_output_delta(page[: len(page) // 2])  # partial output, as a long fetch streams it
        return page

    return fetch_page


@tool
def failing_fetch(url: str) -> str:
    """Fetch a web page."""
    raise ToolException(f"could not parse: {PAGE}")


def agent_for(guard: Guard, tool_: Any, **middleware: Any) -> Any:
    return create_agent(
        scripted(tool_call(tool_.name, {"url": "http://x"}, "c1"), SAFE_ANSWER),
        [tool_],
        middleware=[GuardMiddleware(guard, exit_behavior="replace", **middleware)],
    )


def v2_events(agent: Any, config: Any = None) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        return [event async for event in agent.astream_events(INPUTS, config, version="v2")]

    return asyncio.run(run())


def tools_stream(agent: Any, mode: str) -> list[Any]:
    if mode == "sync":
        return list(agent.stream(INPUTS, stream_mode="tools"))

    async def run() -> list[Any]:
        return [chunk async for chunk in agent.astream(INPUTS, stream_mode="tools")]

    return asyncio.run(run())


def v3_events(agent: Any, mode: str) -> list[Any]:
    if mode == "sync":
        return list(agent.stream_events(INPUTS, version="v3"))

    async def run() -> list[Any]:
        stream = await agent.astream_events(INPUTS, version="v3")
        return [event async for event in stream]

    return asyncio.run(run())


def test_astream_events_show_the_judged_result_not_the_raw_page(kw):
    events = v2_events(agent_for(kw, make_fetch(PAGE)))
    assert WORD not in repr(events)
    ends = [e for e in events if e["event"] == "on_tool_end" and e["name"] == "fetch_page"]
    starts = [e for e in events if e["event"] == "on_tool_start" and e["name"] == "fetch_page"]
    assert len(starts) == len(ends) == 1  # the consumer still sees the tool's run, once
    assert starts[0]["data"]["input"] == {"url": "http://x"}
    assert "withheld by the safety guard" in ends[0]["data"]["output"].text
    assert ends[0]["run_id"] == starts[0]["run_id"]
    assert starts[0]["parent_ids"], "the tool's run sits in the graph's tree, as LangGraph's own run does"


@pytest.mark.parametrize("mode", MODES)
def test_the_tools_stream_shows_neither_raw_deltas_nor_the_raw_result(kw, mode):
    chunks = tools_stream(agent_for(kw, make_fetch(PAGE)), mode)
    assert WORD not in repr(chunks)
    kinds = [chunk["event"] for chunk in chunks]
    assert kinds == ["tool-started", "tool-finished"]  # a partial output is not judged: it is not streamed
    assert "withheld by the safety guard" in chunks[1]["output"].text


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
@pytest.mark.parametrize("mode", MODES)
def test_v3_stream_events_show_the_judged_result(kw, mode):
    events = v3_events(agent_for(kw, make_fetch(PAGE)), mode)
    assert WORD not in repr(events)
    assert "withheld by the safety guard" in repr(events)


@pytest.mark.parametrize("mode", MODES)
def test_a_safe_result_is_told_unchanged(kw, mode):
    chunks = tools_stream(agent_for(kw, make_fetch(SAFE_PAGE)), mode)
    assert [chunk["event"] for chunk in chunks] == ["tool-started", "tool-finished"]
    finished = chunks[1]["output"]
    assert isinstance(finished, ToolMessage) and finished.text == SAFE_PAGE
    assert chunks[0]["tool_call_id"] == chunks[1]["tool_call_id"] == "c1"


@pytest.mark.parametrize("mode", MODES)
def test_a_failed_tools_error_is_told_as_judged(kw, mode):
    """A `ToolNode(handle_tool_errors=True)` writes the error as the tool's message: the run's error event
    carried the raw text."""
    middleware = GuardMiddleware(kw, exit_behavior="replace")
    node = ToolNode(
        [failing_fetch],
        handle_tool_errors=True,
        wrap_tool_call=middleware.wrap_tool_call,
        awrap_tool_call=middleware.awrap_tool_call,
    )
    graph = StateGraph(MessagesState).add_node("tools", node).add_edge(START, "tools").compile()
    calls = {"messages": [tool_call("failing_fetch", {"url": "http://x"}, "c1")]}
    if mode == "sync":
        chunks = list(graph.stream(calls, stream_mode="tools"))
    else:

        async def run() -> list[Any]:
            return [chunk async for chunk in graph.astream(calls, stream_mode="tools")]

        chunks = asyncio.run(run())
    assert WORD not in repr(chunks)
    assert [chunk["event"] for chunk in chunks] == ["tool-started", "tool-error"]
    assert "withheld by the safety guard" in chunks[1]["message"]


def test_a_blocked_call_tells_no_run(kw):
    """A call the guard blocks never runs: no tool events at all."""

    @tool
    def send_note(body: str) -> str:
        """Send a note."""
        raise AssertionError("the blocked call ran")

    agent = create_agent(
        scripted(tool_call("send_note", {"body": PAGE}, "c1"), SAFE_ANSWER),
        [send_note],
        middleware=[GuardMiddleware(kw, exit_behavior="replace")],
    )
    events = v2_events(agent)
    assert not [e for e in events if e["event"].startswith("on_tool")]


class _Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.ends: list[Any] = []

    def on_tool_end(self, output: Any, **kwargs: Any) -> None:
        self.ends.append(output)


def test_the_tool_keeps_its_config_and_the_apps_handler_hears_the_judged_result(kw):
    """Out of sight of the callbacks, not of its configuration: ``configurable`` still reaches the tool."""
    seen: list[Any] = []

    @tool
    def whoami(url: str, config: RunnableConfig) -> str:
        """Say who is asking."""
        seen.append(config["configurable"].get("user"))
        return PAGE

    recorder = _Recorder()
    agent = agent_for(kw, whoami)
    agent.invoke(INPUTS, {"configurable": {"user": "ada"}, "callbacks": [recorder]})
    assert seen == ["ada"]
    assert len(recorder.ends) == 1 and WORD not in repr(recorder.ends)


# -- what the tool runs inside stays in sight of qwenguard's own callback handler (red team rt43a F1) ---------------
@pytest.mark.parametrize("mode", MODES)
def test_a_callback_handler_still_stops_a_sub_agent_inside_a_tool(kw, mode):
    """docs/langchain.md: add the callback handler beside the middleware for a model called inside a tool. Held out
    of sight of every callback, the tool's sub-agent ran its harmful call: the handler must still hear it."""
    sent: list[str] = []

    @tool
    def send_email(to: str, body: str) -> str:
        """Send an e-mail."""
        sent.append(body)
        return "sent"

    def sub_agent() -> Any:
        model = scripted(tool_call("send_email", {"to": "x@example.com", "body": UNSAFE_CLAUSE}, "s1"), "Done.")
        return create_agent(model, [send_email])

    @tool
    def research(topic: str) -> str:
        """Research a topic with a helper agent."""
        sub_agent().invoke({"messages": [{"role": "user", "content": f"Research {topic}"}]})
        return "The research is done."

    @tool
    async def aresearch(topic: str) -> str:
        """Research a topic with a helper agent."""
        await sub_agent().ainvoke({"messages": [{"role": "user", "content": f"Research {topic}"}]})
        return "The research is done."

    tool_ = research if mode == "sync" else aresearch
    agent = create_agent(
        scripted(tool_call(tool_.name, {"topic": "Paris"}, "c1"), SAFE_ANSWER),
        [tool_],
        middleware=[GuardMiddleware(kw, exit_behavior="replace")],
    )
    handler = (GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(kw)
    with pytest.raises(GuardViolation) as info:
        if mode == "sync":
            agent.invoke(INPUTS, {"callbacks": [handler]})
        else:
            asyncio.run(agent.ainvoke(INPUTS, {"callbacks": [handler]}))
    assert info.value.decision.stage.value == "tool_call"
    assert sent == []


@pytest.mark.parametrize("mode", MODES)
def test_a_tool_that_succeeds_on_a_retry_inside_the_guard_is_told_as_ended(kw, mode):
    """`ToolRetryMiddleware` inside the guard: the first attempt raised, the second succeeded; the run was told as
    failed, with the result as its error (a red team on the fix, rt44a F3)."""
    attempts: list[int] = []

    @tool
    def flaky(city: str) -> str:
        """Weather."""
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("transient")
        return f"Sunny in {city}."

    retry = ToolRetryMiddleware(max_retries=2, initial_delay=0, jitter=False, retry_on=(ConnectionError,))
    agent = create_agent(
        scripted(tool_call("flaky", {"city": "Paris"}, "c1"), SAFE_ANSWER),
        [flaky],
        middleware=[GuardMiddleware(kw), retry],
    )
    chunks = tools_stream(agent, mode)
    assert len(attempts) == 2
    assert [chunk["event"] for chunk in chunks] == ["tool-started", "tool-finished"]
    assert chunks[1]["output"].text == "Sunny in Paris."
