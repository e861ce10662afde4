"""`GuardedChatModel` with a real provider class (`ChatOpenAI` against the scripted OpenAI-compatible
server), in the place LangGraph users call a model: a hand-built graph node streamed with
``stream_mode="messages"``. Exposure is counted in characters."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from faults import DelayedBackend
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langgraph.constants import TAG_NOSTREAM
from langgraph.graph import END, START, MessagesState, StateGraph
from lc_fakes import INJECTION, SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, UNSAFE_PROMPT, RecordingBackend
from pydantic import BaseModel
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.langchain import (
    AsyncGuardCallbackHandler,
    GuardCallbackHandler,
    GuardedChatModel,
    GuardRunnable,
    _held_model,
    guard_output,
)
from scripted_openai import Reply, ToolCall, scripted_openai
from test_openai_paths import EMAIL_ARGS, MODES, REPLY, args_of, chat, exposure, text_of


def _graph(call: Any, asynchronous: bool) -> Any:
    """One node that calls the model on the state's messages (LangGraph's own chatbot tutorial)."""

    def node(state: MessagesState) -> dict[str, Any]:
        return {"messages": [call.invoke(state["messages"])]}

    async def anode(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await call.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", anode if asynchronous else node)
    graph.add_edge(START, "model")
    graph.add_edge("model", END)
    return graph.compile()


def _streamed(mode: str, graph: Any, question: str = SAFE_QUESTION) -> tuple[list[Any], Exception | None]:
    """What a ``stream_mode="messages"`` consumer received, and the error that ended the run."""
    inputs = {"messages": [HumanMessage(question)]}
    items: list[Any] = []

    async def drain() -> None:
        async for message, _meta in graph.astream(inputs, stream_mode="messages"):
            items.append(message)

    try:
        if mode == "sync":
            items.extend(message for message, _meta in graph.stream(inputs, stream_mode="messages"))
        else:
            asyncio.run(drain())
    except GuardViolation as error:
        return items, error
    return items, None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("step", ["guard_output", "GuardRunnable"])
def test_a_guard_after_the_model_in_a_graph_node_cannot_hold_its_tokens(guard, mode, step):
    """Why `GuardedChatModel` exists: in a hand-built node, LangGraph streams the model's own tokens to
    ``stream_mode="messages"`` before a guard placed after the model sees them. The guard still stops
    the run, but the whole unsafe clause is out. (Documented in docs/langchain.md; this test pins the
    reason, and fails the day LangGraph or these steps change it.)"""
    with scripted_openai(REPLY) as url:
        call = (
            chat(url) | guard_output(guard)
            if step == "guard_output"
            else GuardRunnable(guard=guard, runnable=chat(url))
        )
        items, error = _streamed(mode, _graph(call, mode == "async"))
    assert isinstance(error, GuardViolation)
    assert exposure(text_of(items)) > 0


@pytest.mark.parametrize("mode", MODES)
def test_guarded_chat_model_in_a_graph_node_streams_only_judged_text(guard, mode):
    with scripted_openai(REPLY) as url:
        items, error = _streamed(mode, _graph(GuardedChatModel(chat(url), guard), mode == "async"))
    assert isinstance(error, GuardViolation)
    received = text_of(items)
    assert exposure(received) == 0  # no character of the unsafe clause reached the consumer
    assert received.startswith(SAFE_ANSWER)  # the judged-safe first sentence streamed


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setting", ["default", "off on a parallel guard"])
def test_guarded_chat_model_screens_the_input_before_the_model_runs(guard, mode, setting):
    """By default the input is judged before the model runs: the provider never receives a blocked request
    (``parallel_input=False`` keeps it so on a guard built with ``parallel_input=True``)."""
    if setting == "default":
        judge, options = guard, {}
    else:
        judge, options = Guard(guard.backend, guard.policy, parallel_input=True), {"parallel_input": False}
    with scripted_openai(REPLY) as url:
        model = GuardedChatModel(chat(url), judge, **options)
        items, error = _streamed(mode, _graph(model, mode == "async"), UNSAFE_PROMPT)
        assert url.requests == []  # the model never received the request
    assert isinstance(error, GuardViolation) and items == []


class TimedLog(list):
    """A log whose entries carry the time they were made: ``(entry, perf_counter())``."""

    def append(self, entry: Any) -> None:
        super().append((entry, time.perf_counter()))

    def at(self, entry: Any) -> float:
        return next(t for e, t in self if e == entry)


CHECK_DELAY_S = 0.4  # each check of the slow guard takes this long; the model's pieces come every PACE_S
PACE_S = 0.05


def _slow(guard: Guard, log: TimedLog, *, parallel: bool) -> Guard:
    # cache_size=0: every check pays the delay, whatever ran before in this session.
    return Guard(DelayedBackend(guard.backend, CHECK_DELAY_S, log), guard.policy, cache_size=0, parallel_input=parallel)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["argument", "guard"])
def test_guarded_chat_model_parallel_input_blocked_stops_the_model_and_releases_nothing(guard, mode, how):
    """``parallel_input``: the request goes out while the input is judged; a blocked input stops the
    model's stream and not one character (or tool-call piece) of its answer reaches the consumer."""
    log = TimedLog()
    judge = _slow(guard, log, parallel=how == "guard")
    # A reply many times the check's delay long (about 12 s of pieces): under load the check can take seconds, and a
    # reply the model finished before the verdict came could not show that the verdict stopped it.
    with scripted_openai(" ".join([REPLY] * 10), pace=PACE_S) as url:
        model = GuardedChatModel(chat(url), judge, **({"parallel_input": True} if how == "argument" else {}))
        items, error = _streamed(mode, _graph(model, mode == "async"), UNSAFE_PROMPT)
        assert len(url.requests) == 1  # the model started beside the check
        response = url.responses[0]
        assert response.wait()
    assert isinstance(error, GuardViolation) and error.decision.stage is Stage.PROMPT
    assert items == []  # nothing of the answer reached the consumer
    assert response.closed_early and response.sent < response.planned  # the model's stream was stopped
    assert url.requests[0].at < log.at("check done")  # beside the check, not after it


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("parallel", [False, True])
def test_guarded_chat_model_parallel_input_overlaps_and_holds_the_answer_until_the_verdict(guard, mode, parallel):
    """With ``parallel_input`` the request arrives before the input's verdict, the first text only after it;
    without it, the request waits for the verdict."""
    log = TimedLog()
    with scripted_openai(SAFE_ANSWER, pace=PACE_S) as url:
        model = GuardedChatModel(chat(url), _slow(guard, log, parallel=parallel))
        graph = _graph(model, mode == "async")
        inputs = {"messages": [HumanMessage(SAFE_QUESTION)]}
        items: list[Any] = []

        async def drain() -> None:
            async for message, _meta in graph.astream(inputs, stream_mode="messages"):
                items.append(message)
                log.append(f"received {len(items)}")

        if mode == "sync":
            for message, _meta in graph.stream(inputs, stream_mode="messages"):
                items.append(message)
                log.append(f"received {len(items)}")
        else:
            asyncio.run(drain())
        arrived = url.requests[0].at
    assert text_of(items) == SAFE_ANSWER  # the whole answer, judged
    verdict = log.at("check done")  # the input's check (the first one to end)
    assert verdict < log.at("received 1")  # nothing went out before the input's verdict
    if parallel:
        assert arrived < verdict  # the model ran beside the check
    else:
        assert verdict < arrived  # the model ran after it


@pytest.mark.parametrize("mode", MODES)
def test_guarded_chat_model_parallel_input_invoke_reports_the_blocked_input(guard, mode):
    log = TimedLog()
    with scripted_openai(REPLY) as url:
        model = GuardedChatModel(chat(url), _slow(guard, log, parallel=True))
        with pytest.raises(GuardViolation) as stop:
            messages = [HumanMessage(UNSAFE_PROMPT)]
            model.invoke(messages) if mode == "sync" else asyncio.run(model.ainvoke(messages))
        assert len(url.requests) == 1
    assert stop.value.decision.stage is Stage.PROMPT


@pytest.mark.parametrize("mode", MODES)
def test_guarded_chat_model_judges_an_answer_that_was_not_streamed(guard, mode):
    with scripted_openai(REPLY) as url:
        model = GuardedChatModel(chat(url), guard)
        messages = [HumanMessage(SAFE_QUESTION)]
        with pytest.raises(GuardViolation):
            model.invoke(messages) if mode == "sync" else asyncio.run(model.ainvoke(messages))


@pytest.mark.parametrize("mode", MODES)
def test_guarded_chat_model_holds_tool_arguments_until_judged(guard, mode):
    @tool
    def send_email(to: str, body: str) -> str:
        """Send an e-mail."""
        return "sent"

    reply = Reply.words("Let me send that.", tool_calls=[ToolCall("send_email", EMAIL_ARGS, id="c1", fragments=12)])
    with scripted_openai(reply) as url:
        model = GuardedChatModel(chat(url), guard).bind_tools([send_email])
        items, error = _streamed(mode, _graph(model, mode == "async"))
    assert isinstance(error, GuardViolation)
    assert args_of(items) == ""  # no character of the arguments reached the consumer


@pytest.mark.parametrize("mode", MODES)
def test_guarded_chat_model_passes_a_safe_answer_through(guard, mode):
    call = ToolCall("send_email", json.dumps({"to": "a@example.com", "body": "See you at noon."}), id="c2", fragments=3)
    with scripted_openai(Reply.words(SAFE_ANSWER, tool_calls=[call])) as url:
        model = GuardedChatModel(chat(url), guard, release_unit="word")
        items, error = _streamed(mode, _graph(model, mode == "async"))
        body = url.requests[0].body
    assert error is None
    assert text_of(items) == SAFE_ANSWER and args_of(items) == call.arguments
    assert body["messages"][-1]["content"] == SAFE_QUESTION


def test_guarded_chat_model_rejects_what_it_cannot_wrap(guard):
    with pytest.raises(TypeError, match="chat model"):
        GuardedChatModel("gpt-4o", guard)
    with pytest.raises(ValueError, match="release_unit"):
        GuardedChatModel(chat("http://127.0.0.1:9/v1"), guard, release_unit="paragraph")


def test_the_nostream_tag_is_langgraphs():
    assert _held_model.TAG_NOSTREAM == TAG_NOSTREAM


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("mode", MODES)
def test_guarded_chat_model_in_langgraphs_prebuilt_react_agent(guard, mode):
    """langgraph.prebuilt.create_react_agent (no middleware there): the guarded model is the agent's model."""
    from langgraph.prebuilt import create_react_agent

    @tool
    def capital_of(country: str) -> str:
        """The capital of a country."""
        return "Paris"

    with scripted_openai(REPLY) as url:
        agent = create_react_agent(GuardedChatModel(chat(url), guard), [capital_of])
        items, error = _streamed(mode, agent)
    assert isinstance(error, GuardViolation)
    assert exposure(text_of(items)) == 0 and text_of(items).startswith(SAFE_ANSWER)


@pytest.mark.parametrize("body", ["See you at noon.", UNSAFE_CLAUSE])
def test_guarded_chat_model_with_structured_output(guard, body):
    """``with_structured_output(method="function_calling")`` asks for a tool call: its arguments are judged before
    they are parsed. (ChatOpenAI's own default, ``json_schema``, asks for JSON text: tests/langchain/
    test_structured_output_methods.py.)"""

    class Email(BaseModel):
        to: str
        body: str

    arguments = json.dumps({"to": "a@example.com", "body": body})
    with scripted_openai(Reply(tool_calls=[ToolCall("Email", arguments, id="c3", fragments=4)])) as url:
        structured = GuardedChatModel(chat(url), guard).with_structured_output(Email, method="function_calling")
        if body == UNSAFE_CLAUSE:
            with pytest.raises(GuardViolation):
                structured.invoke(SAFE_QUESTION)
        else:
            assert structured.invoke(SAFE_QUESTION) == Email(to="a@example.com", body=body)


async def test_a_chains_event_stream_carries_only_judged_model_chunks(guard):
    """``chain.astream_events`` (how LangChain streams tokens out of a chain with a parser after the
    model) reports the model run's own chunks: with `GuardedChatModel` as the model, only judged ones."""
    from langchain_core.output_parsers import StrOutputParser

    with scripted_openai(REPLY) as url:
        chain = GuardedChatModel(chat(url), guard) | StrOutputParser()
        streamed: list[str] = []
        with pytest.raises(GuardViolation):
            async for event in chain.astream_events(SAFE_QUESTION, version="v2"):
                if event["event"] == "on_chat_model_stream":
                    streamed.append(event["data"]["chunk"].text)
    assert exposure("".join(streamed)) == 0 and "".join(streamed).startswith(SAFE_ANSWER)


def test_guarded_chat_model_screens_a_tool_result_before_the_model_reads_it(guard):
    """Every message the model reads is screened by role: a tool result as untrusted content."""
    from langchain_core.messages import AIMessage, ToolMessage

    call = {"name": "search", "args": {"q": "capital of France"}, "id": "c9"}
    messages = [
        HumanMessage(SAFE_QUESTION),
        AIMessage("", tool_calls=[call]),
        ToolMessage(INJECTION, tool_call_id="c9"),
    ]
    with scripted_openai(REPLY) as url:
        with pytest.raises(GuardViolation) as stop:
            GuardedChatModel(chat(url), guard).invoke(messages)
        assert url.requests == []
    assert "Jailbreak" in stop.value.decision.describe()


# -- a callback handler beside it -----------------------------------------------------------------------
LONG_SAFE_ANSWER = " ".join([SAFE_ANSWER] * 12)


def _judged_answers(backend: RecordingBackend) -> int:
    """Checks of assistant text (stream windows, answers) the backend was asked for."""
    return sum(1 for conversation in backend.conversations if conversation[-1]["role"] == "assistant")


def _streamed_with(mode: str, graph: Any, handler: Any) -> tuple[list[Any], Exception | None]:
    inputs = {"messages": [HumanMessage(SAFE_QUESTION)]}
    config = {"callbacks": [handler]}
    items: list[Any] = []

    async def drain() -> None:
        async for message, _meta in graph.astream(inputs, config, stream_mode="messages"):
            items.append(message)

    try:
        if mode == "sync":
            items.extend(message for message, _meta in graph.stream(inputs, config, stream_mode="messages"))
        else:
            asyncio.run(drain())
    except GuardViolation as error:
        return items, error
    return items, None


def _handler(mode: str, guard: Guard) -> Any:
    return (GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard)


@pytest.mark.parametrize("mode", MODES)
def test_a_callback_on_the_same_guard_does_not_judge_its_stream_again(guard, mode, monkeypatch):
    """Each released chunk was judged before release by the same guard; a callback handler on that guard
    used to judge them again, one check per chunk (at most 12 answer checks alone, 83–84 with the callback,
    here)."""
    from test_middleware import _count_stream_screens

    opened = _count_stream_screens(monkeypatch)
    counts = {}
    for setting in ("alone", "with the callback"):
        backend = RecordingBackend(guard.backend)
        judge = Guard(backend, guard.policy, cache_size=0)
        with scripted_openai(LONG_SAFE_ANSWER) as url:
            graph = _graph(GuardedChatModel(chat(url), judge), mode == "async")
            if setting == "alone":
                items, error = _streamed(mode, graph)
            else:
                handler = _handler(mode, judge)
                items, error = _streamed_with(mode, graph, handler)
                assert handler.active_runs == 0
        assert error is None and text_of(items) == LONG_SAFE_ANSWER
        counts[setting] = _judged_answers(backend)
    assert opened == []  # the callback opened no stream screen for the held run
    # At most one window per sentence (fewer when the stream outruns the judge and sentences are judged
    # together), one more at the end: what the held run judges alone; the callback adds nothing.
    sentences = LONG_SAFE_ANSWER.count(". ") + 1
    assert counts["alone"] <= sentences + 1 and counts["with the callback"] <= sentences + 1, counts


@pytest.mark.parametrize("mode", MODES)
def test_a_callback_on_another_guard_still_judges_its_stream(guard, mode):
    backend = RecordingBackend(guard.backend)
    handler = _handler(mode, Guard(backend, guard.policy, cache_size=0))
    with scripted_openai(LONG_SAFE_ANSWER) as url:
        items, error = _streamed_with(mode, _graph(GuardedChatModel(chat(url), guard), mode == "async"), handler)
    assert error is None and text_of(items) == LONG_SAFE_ANSWER
    assert _judged_answers(backend) >= 5  # another policy judges the stream as any


@pytest.mark.parametrize("mode", MODES)
def test_with_a_callback_on_the_same_guard_no_character_of_the_clause_goes_out(guard, mode):
    with scripted_openai(REPLY) as url:
        graph = _graph(GuardedChatModel(chat(url), guard), mode == "async")
        items, error = _streamed_with(mode, graph, _handler(mode, guard))
    assert isinstance(error, GuardViolation)
    assert exposure(text_of(items)) == 0 and text_of(items).startswith(SAFE_ANSWER)


def _tool_graph(model: Any, tools: list[Any]) -> Any:
    """LangGraph's own agent loop, by hand: a model node, a ToolNode, ``tools_condition`` between them."""
    from langgraph.prebuilt import ToolNode, tools_condition

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


@pytest.mark.parametrize("with_callback", [False, True], ids=["GuardedChatModel alone", "with the callback"])
def test_a_tool_result_in_a_hand_built_graph_is_stopped_before_it_streams_only_with_the_callback(guard, with_callback):
    """The model judges a tool result before it reads it, but a ToolNode's message streams to
    ``stream_mode="messages"`` as soon as the tool returns: the callback handler (``on_tool_end``) stops
    it before. Pinned both ways, as docs/langchain.md says."""
    from langchain_core.messages import ToolMessage

    @tool
    def search(q: str) -> str:
        """Search the web."""
        return INJECTION

    script = [
        Reply.words("Let me search.", tool_calls=[ToolCall("search", json.dumps({"q": "France"}), id="c1")]),
        Reply.words(SAFE_ANSWER),
    ]
    with scripted_openai(script) as url:
        graph = _tool_graph(GuardedChatModel(chat(url), guard).bind_tools([search]), [search])
        if with_callback:
            items, error = _streamed_with("sync", graph, _handler("sync", guard))
        else:
            items, error = _streamed("sync", graph)
        assert len(url.requests) == 1  # the model never read the result
    assert isinstance(error, GuardViolation) and "Jailbreak" in error.decision.describe()
    shown = [m.text for m in items if isinstance(m, ToolMessage)]
    assert shown == ([] if with_callback else [INJECTION])


@pytest.mark.parametrize("mode", MODES)
def test_a_tool_node_with_the_middlewares_tool_wrapper_withholds_an_unsafe_result(guard, mode):
    """``ToolNode(tools, wrap_tool_call=middleware.wrap_tool_call, awrap_tool_call=...)``: the result is judged
    when the tool returns and, with ``exit_behavior="replace"``, withheld: the consumer and the model get a
    notice instead, and the run goes on."""
    from langchain.agents.middleware import AgentMiddleware
    from langchain_core.messages import ToolMessage
    from langgraph.prebuilt import ToolNode, tools_condition
    from qwenguard.integrations.langchain import GuardMiddleware

    @tool
    def search(q: str) -> str:
        """Search the web."""
        return INJECTION

    middleware: AgentMiddleware = GuardMiddleware(guard, exit_behavior="replace")
    script = [
        Reply.words("Let me search.", tool_calls=[ToolCall("search", json.dumps({"q": "France"}), id="c1")]),
        Reply.words(SAFE_ANSWER),
    ]
    with scripted_openai(script) as url:
        model = GuardedChatModel(chat(url), guard).bind_tools([search])

        def agent(state: MessagesState) -> dict[str, Any]:
            return {"messages": [model.invoke(state["messages"])]}

        async def aagent(state: MessagesState) -> dict[str, Any]:
            return {"messages": [await model.ainvoke(state["messages"])]}

        tools = ToolNode([search], wrap_tool_call=middleware.wrap_tool_call, awrap_tool_call=middleware.awrap_tool_call)
        graph = StateGraph(MessagesState)
        graph.add_node("agent", agent if mode == "sync" else aagent)
        graph.add_node("tools", tools)
        graph.add_edge(START, "agent")
        graph.add_conditional_edges("agent", tools_condition)
        graph.add_edge("tools", "agent")
        items, error = _streamed(mode, graph.compile())
        second = json.dumps(url.requests[1].body["messages"])
    assert error is None
    shown = [m.text for m in items if isinstance(m, ToolMessage)]
    assert len(shown) == 1 and "withheld by the safety guard" in shown[0]
    assert "Ignore all previous" not in "".join(m.text for m in items) and "Ignore all previous" not in second
    assert text_of(items).endswith(SAFE_ANSWER)  # the run went on to the answer
