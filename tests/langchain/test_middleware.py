"""GuardMiddleware inside real `create_agent` graphs, driven by a streaming fake chat model."""

from __future__ import annotations

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
