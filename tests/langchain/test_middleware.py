"""GuardMiddleware inside real `create_agent` graphs, driven by a streaming fake chat model."""

from __future__ import annotations

import json

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from lc_fakes import INJECTION, SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, UNSAFE_PROMPT, scripted, tool_call
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardMiddleware


def _unsafe_email() -> AIMessage:
    return tool_call("send_email", {"to": "friend@example.com", "body": UNSAFE_CLAUSE}, text="Sending it now.")


def _tool_graph(node: ToolNode):
    """A one-node graph: ToolNode needs a LangGraph runtime to run."""
    graph = StateGraph(MessagesState)
    graph.add_node("tools", node)
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    return graph.compile()


@pytest.mark.parametrize("exit_behavior", ["end", "replace"])
async def test_unsafe_tool_argument_never_runs_the_tool(guard, tools, exit_behavior):
    model = scripted(_unsafe_email(), "Done.")
    agent = create_agent(model, tools.all, middleware=[GuardMiddleware(guard, exit_behavior=exit_behavior)])
    out = agent.invoke({"messages": [HumanMessage("What is the capital of France?")]})
    assert tools.calls["send_email"] == 0
    last = out["messages"][-1]
    assert isinstance(last, AIMessage) and not last.tool_calls
    assert "safety guard" in last.text and "Violent" in last.text
    # The unsafe answer was replaced in place: no message carries the clause or dangling tool calls.
    assert all(UNSAFE_CLAUSE not in str(m.content) for m in out["messages"])
    assert not any(isinstance(m, AIMessage) and m.tool_calls for m in out["messages"])
    assert last.response_metadata["qwenguard"]["stage"] == "tool_call"


async def test_unsafe_tool_argument_error_behavior_raises(guard, tools):
    model = scripted(_unsafe_email(), "Done.")
    agent = create_agent(model, tools.all, middleware=[GuardMiddleware(guard, exit_behavior="error")])
    with pytest.raises(GuardViolation) as info:
        agent.invoke({"messages": [HumanMessage("What is the capital of France?")]})
    assert info.value.decision.stage.value == "tool_call"
    assert tools.calls["send_email"] == 0


@pytest.mark.parametrize("exit_behavior", ["end", "replace", "error"])
async def test_unsafe_tool_argument_async(guard, tools, exit_behavior):
    model = scripted(_unsafe_email(), "Done.")
    agent = create_agent(model, tools.all, middleware=[GuardMiddleware(guard, exit_behavior=exit_behavior)])
    inputs = {"messages": [HumanMessage("What is the capital of France?")]}
    if exit_behavior == "error":
        with pytest.raises(GuardViolation):
            await agent.ainvoke(inputs)
    else:
        out = await agent.ainvoke(inputs)
        assert not out["messages"][-1].tool_calls
    assert tools.calls["send_email"] == 0


def test_safe_run_is_untouched(guard, tools):
    model = scripted(tool_call("web_search", {"query": "capital of France"}), SAFE_ANSWER)
    middleware = GuardMiddleware(guard, check_tool_results=False)
    out = create_agent(model, tools.all, middleware=[middleware]).invoke({"messages": [HumanMessage(SAFE_QUESTION)]})
    assert tools.calls["web_search"] == 1
    assert out["messages"][-1].text == SAFE_ANSWER
    assert not any("qwenguard" in m.response_metadata for m in out["messages"])


@pytest.mark.parametrize("exit_behavior", ["end", "replace", "error"])
async def test_injected_tool_result_never_reaches_the_model(guard, tools, exit_behavior):
    model = scripted(tool_call("web_search", {"query": "capital of France"}), SAFE_ANSWER)
    agent = create_agent(model, tools.all, middleware=[GuardMiddleware(guard, exit_behavior=exit_behavior)])
    inputs = {"messages": [HumanMessage(SAFE_QUESTION)]}
    if exit_behavior == "error":
        with pytest.raises(GuardViolation) as info:
            await agent.ainvoke(inputs)
        assert "Jailbreak" in info.value.decision.categories
    else:
        out = await agent.ainvoke(inputs)
        tool_messages = [m for m in out["messages"] if isinstance(m, ToolMessage)]
        assert len(tool_messages) == 1 and tool_messages[0].status == "error"
        assert INJECTION not in tool_messages[0].text
        if exit_behavior == "end":
            assert "safety guard" in out["messages"][-1].text
        else:  # the model went on with the notice in place of the result
            assert out["messages"][-1].text == SAFE_ANSWER
    assert tools.calls["web_search"] == 1
    seen = [m.text for call in model.seen for m in call]
    assert not any(INJECTION in text for text in seen)


def test_unsafe_user_input_never_reaches_the_model(guard, tools):
    model = scripted(SAFE_ANSWER)
    agent = create_agent(model, tools.all, middleware=[GuardMiddleware(guard, exit_behavior="replace")])
    out = agent.invoke({"messages": [HumanMessage(UNSAFE_PROMPT)]})
    assert model.seen == []
    first, last = out["messages"][0], out["messages"][-1]
    assert UNSAFE_PROMPT not in first.text and first.response_metadata["qwenguard"]["allowed"] is False
    assert isinstance(last, AIMessage) and "Violent" in last.text


def test_unsafe_answer_replaced_reusing_its_id(guard, tools):
    model = scripted(AIMessage(content=UNSAFE_CLAUSE, id="answer-1"))
    agent = create_agent(model, tools.all, middleware=[GuardMiddleware(guard, exit_behavior="replace")])
    out = agent.invoke({"messages": [HumanMessage(SAFE_QUESTION)]})
    ai = [m for m in out["messages"] if isinstance(m, AIMessage)]
    assert len(ai) == 1 and ai[0].id == "answer-1"
    assert UNSAFE_CLAUSE not in ai[0].text and ai[0].response_metadata["qwenguard"]["stage"] == "response"


def test_wrap_tool_call_blocks_before_the_handler(guard, tools):
    """The last line of defence, on its own: a ToolNode with the middleware's wrapper."""
    middleware = GuardMiddleware(guard)
    node = ToolNode(tools.all, wrap_tool_call=middleware.wrap_tool_call)
    state = {"messages": [HumanMessage("What is the capital of France?"), _unsafe_email()]}
    out = _tool_graph(node).invoke(state)
    message = out["messages"][-1]
    assert message.status == "error" and "did not run" in message.text
    assert tools.calls["send_email"] == 0


async def test_awrap_tool_call_screens_the_result(guard, tools):
    middleware = GuardMiddleware(guard)
    node = ToolNode(tools.all, awrap_tool_call=middleware.awrap_tool_call)
    state = {"messages": [HumanMessage(SAFE_QUESTION), tool_call("web_search", {"query": "capital of France"})]}
    out = await _tool_graph(node).ainvoke(state)
    message = out["messages"][-1]
    assert tools.calls["web_search"] == 1
    assert message.status == "error" and INJECTION not in message.text


def test_bad_configuration_is_rejected(guard):
    with pytest.raises(ValueError, match="exit_behavior"):
        GuardMiddleware(guard, exit_behavior="ignore")
    with pytest.raises(TypeError, match="Guard"):
        GuardMiddleware("not a guard")


# -- with a callback handler beside it (what docs/langchain.md suggests for what the middleware cannot see) --
_LONG_SAFE_ANSWER = " ".join([SAFE_ANSWER] * 12)


def _count_stream_screens(monkeypatch) -> list[str]:
    """The callbacks' stream screens opened (one per run that streams text or tool-call arguments)."""
    from qwenguard.integrations.langchain import callbacks

    opened: list[str] = []
    real_text, real_tool = callbacks.open_screen, callbacks.open_tool_screen

    def open_text(*args, **kwargs):
        opened.append("text")
        return real_text(*args, **kwargs)

    def open_tool(*args, **kwargs):
        opened.append("tool")
        return real_tool(*args, **kwargs)

    monkeypatch.setattr(callbacks, "open_screen", open_text)
    monkeypatch.setattr(callbacks, "open_tool_screen", open_tool)
    return opened


async def _agent_stream(agent, handler, asynchronous: bool, question: str = SAFE_QUESTION) -> str:
    inputs = {"messages": [HumanMessage(question)]}
    config = {"callbacks": [handler]} if handler is not None else {}
    received = []
    if asynchronous:
        async for chunk, _meta in agent.astream(inputs, config=config, stream_mode="messages"):
            received.append(chunk)
    else:
        for chunk, _meta in agent.stream(inputs, config=config, stream_mode="messages"):
            received.append(chunk)
    return "".join(c.text for c in received if isinstance(c, AIMessage))


def _judged_answers(backend) -> int:
    """Checks of assistant text (stream windows, answers) the backend was asked for."""
    return sum(1 for conversation in backend.conversations if conversation[-1]["role"] == "assistant")


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_callback_on_the_same_guard_does_not_judge_the_held_stream_again(
    guard, tools, monkeypatch, asynchronous
):
    """The middleware holds the agent's stream and judges each chunk before it goes out; a callback handler
    on the same guard used to judge the released chunks a second time, one check per chunk (in
    `python bench/exposure.py`: 72 guard calls instead of 12, 5.5 ms a token instead of 1.7)."""
    from lc_fakes import RecordingBackend
    from qwenguard.core import Guard
    from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

    opened = _count_stream_screens(monkeypatch)
    alone_backend = RecordingBackend(guard.backend)
    alone = Guard(alone_backend, cache_size=0)
    agent = create_agent(scripted(_LONG_SAFE_ANSWER), tools.all, middleware=[GuardMiddleware(alone)])
    assert await _agent_stream(agent, None, asynchronous) == _LONG_SAFE_ANSWER

    both_backend = RecordingBackend(guard.backend)
    both = Guard(both_backend, cache_size=0)
    handler = (AsyncGuardCallbackHandler if asynchronous else GuardCallbackHandler)(both)
    agent = create_agent(scripted(_LONG_SAFE_ANSWER), tools.all, middleware=[GuardMiddleware(both)])
    assert await _agent_stream(agent, handler, asynchronous) == _LONG_SAFE_ANSWER
    assert opened == []  # the callback opened no screen for the held call's stream
    # At most one window per sentence (fewer when the stream outruns the judge and sentences are judged
    # together, so two runs' counts differ with timing), and the end: the callback adds nothing.
    most = _LONG_SAFE_ANSWER.count(". ") + 3
    counts = _judged_answers(alone_backend), _judged_answers(both_backend)
    assert max(counts) <= most, counts
    assert handler.active_runs == 0


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_callback_on_another_guard_still_judges_the_held_stream(guard, tools, monkeypatch, asynchronous):
    """Another guard is another policy: its callback judges the stream as it would any other."""
    from lc_fakes import RecordingBackend
    from qwenguard.core import Guard
    from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

    opened = _count_stream_screens(monkeypatch)
    other_backend = RecordingBackend(guard.backend)
    handler = (AsyncGuardCallbackHandler if asynchronous else GuardCallbackHandler)(Guard(other_backend, cache_size=0))
    agent = create_agent(scripted(_LONG_SAFE_ANSWER), tools.all, middleware=[GuardMiddleware(guard)])
    assert await _agent_stream(agent, handler, asynchronous) == _LONG_SAFE_ANSWER
    assert opened.count("text") == 1
    assert _judged_answers(other_backend) >= 5


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_the_held_stream_still_stops_the_clause_with_a_callback_on_the_same_guard(guard, tools, asynchronous):
    """With the callback standing down on the held call, the middleware alone stops the clause: no
    character of it reaches the consumer."""
    from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

    handler = (AsyncGuardCallbackHandler if asynchronous else GuardCallbackHandler)(guard)
    answer = f"{SAFE_ANSWER} {UNSAFE_CLAUSE}"
    agent = create_agent(scripted(answer), tools.all, middleware=[GuardMiddleware(guard, exit_behavior="error")])
    inputs = {"messages": [HumanMessage(SAFE_QUESTION)]}
    config = {"callbacks": [handler]}
    received: list[str] = []
    with pytest.raises(GuardViolation):
        if asynchronous:
            async for chunk, _meta in agent.astream(inputs, config=config, stream_mode="messages"):
                received.append(chunk.text)
        else:
            for chunk, _meta in agent.stream(inputs, config=config, stream_mode="messages"):
                received.append(chunk.text)
    text = "".join(received)
    assert answer.startswith(text) and len(text) <= len(SAFE_ANSWER) + 1  # not one character of the clause


@pytest.mark.parametrize(
    ("key", "value"),
    [("x_note", UNSAFE_CLAUSE), ("parsed", {"steps": UNSAFE_CLAUSE}), ("prefix", UNSAFE_CLAUSE)],
)
def test_a_withheld_earlier_answer_keeps_none_of_its_words_beside_the_content(key, value):
    """rt49f F6: with ``exit_behavior="replace"`` an earlier answer judged unsafe by a key of its
    ``additional_kwargs`` (a provider's own, structured output's ``parsed``, a ``prefix``) had its content replaced,
    but the key stayed: in the state the app shows, and for some in the next request to the model."""
    from faults import ScriptedBackend, keyword_verdict
    from qwenguard.core import Guard

    guard = Guard(ScriptedBackend(keyword_verdict), cache_size=0)
    model = scripted("All right.")
    agent = create_agent(model, tools=[], middleware=[GuardMiddleware(guard, exit_behavior="replace")])
    # Structured output's ``parsed`` is the content's own JSON (judged as the content).
    content = json.dumps({"steps": UNSAFE_CLAUSE}) if key == "parsed" else "Here you go."
    earlier = AIMessage(content=content, additional_kwargs={key: value}, id="a1")
    out = agent.invoke({"messages": [HumanMessage("How?", id="h1"), earlier, HumanMessage("Go on.", id="h2")]})
    given = [m for call in model.seen for m in call]
    assert not [m for m in given if "ammonium" in repr(m)]
    assert not [m for m in out["messages"] if "ammonium" in repr(m)]
