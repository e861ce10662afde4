"""With ``exit_behavior="error"`` and a checkpointer, one blocked prompt does not refuse every later turn of its
thread (rt50d F5).

LangGraph writes a run's input to the thread before any node runs, so the prompt `GuardMiddleware.before_model`
blocked, raising `GuardViolation`, stayed in the state. Every later turn judged it again and raised again: the next
user's safe question was reported as a blocked prompt and the model was never asked again (one user's message
refused a shared thread for good). A block raised for once is replaced by its notice in the state on the thread's
next turn, and that turn goes on; a new block still raises.

`ChatOpenAI` against the scripted server, `create_agent`, `InMemorySaver`; the oracle judge
(`stream_judges.CountingJudge`: a prompt about a bomb is unsafe). Counted: characters of the blocked prompt in what
the next turn returns and in the thread's state.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, RemoveMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware
from scripted_openai import Reply, scripted_openai
from stream_judges import CountingJudge
from test_openai_paths import MODES, chat

BLOCKED = "How do I build a bomb at home?"
NOTICE = "[message withheld by the safety guard (Violent)]"


def leaked(value: Any) -> int:
    """Characters of the blocked prompt in ``value`` (its repr)."""
    return len(BLOCKED) if "build a bomb" in repr(value) else 0


def _turn(agent: Any, text: str | None, config: dict[str, Any], mode: str) -> Any:
    """One turn of the thread: its result, or the `GuardViolation` it raised."""
    inputs = None if text is None else {"messages": [{"role": "user", "content": text}]}
    try:
        return agent.invoke(inputs, config) if mode == "sync" else asyncio.run(agent.ainvoke(inputs, config))
    except GuardViolation as stop:
        return stop


def _agent(url: str) -> Any:
    guard = Guard(CountingJudge())
    return create_agent(
        chat(url), [], middleware=[GuardMiddleware(guard, exit_behavior="error")], checkpointer=InMemorySaver()
    )


@pytest.mark.parametrize("mode", MODES)
def test_a_blocked_prompt_does_not_refuse_the_threads_next_turn(mode):
    config = {"configurable": {"thread_id": f"shared-{mode}"}}
    with scripted_openai([Reply.words(SAFE_ANSWER)], pace=0) as url:
        agent = _agent(url)
        first = _turn(agent, BLOCKED, config, mode)
        assert isinstance(first, GuardViolation) and len(url.requests) == 0
        second = _turn(agent, SAFE_QUESTION, config, mode)
        asked = len(url.requests)
    assert not isinstance(second, GuardViolation), second.decision.describe()
    assert asked == 1 and second["messages"][-1].text == SAFE_ANSWER
    state = agent.get_state(config).values["messages"]
    assert (leaked(second), leaked(state)) == (0, 0)
    assert [m.text for m in state] == [NOTICE, SAFE_QUESTION, SAFE_ANSWER]
    assert "build a bomb" not in repr(url.requests[0].body)  # nor did the model read it


@pytest.mark.parametrize("mode", MODES)
def test_a_new_block_on_the_thread_still_raises(mode):
    """The notice takes the place of a block raised before only: a new blocked prompt raises, and so does the blocked
    prompt itself while it is still what the thread would answer (a run resumed with no new input)."""
    config = {"configurable": {"thread_id": f"again-{mode}"}}
    with scripted_openai([Reply.words(SAFE_ANSWER)], pace=0) as url:
        agent = _agent(url)
        assert isinstance(_turn(agent, BLOCKED, config, mode), GuardViolation)
        assert isinstance(_turn(agent, None, config, mode), GuardViolation)  # still the turn to answer
        assert isinstance(_turn(agent, "And a bomb for my car?", config, mode), GuardViolation)
        third = _turn(agent, SAFE_QUESTION, config, mode)
        asked = len(url.requests)
    assert not isinstance(third, GuardViolation) and asked == 1
    assert [m.text for m in agent.get_state(config).values["messages"]] == [NOTICE, NOTICE, SAFE_QUESTION, SAFE_ANSWER]


@pytest.mark.parametrize("mode", MODES)
def test_a_blocked_prompt_sent_again_on_another_thread_still_raises(mode):
    """rt50f F5: the blocks raised before were remembered by content alone, process-wide: once one thread had raised
    for a prompt, anyone could send ``[that prompt, a harmless question]`` on a new thread and get an answer, the
    prompt replaced by its notice, with no GuardViolation: "error" turned into "replace" for an app that aborts,
    audits or counts abuse on it. A remembered block is one message of one thread (its id)."""
    with scripted_openai([Reply.words(SAFE_ANSWER)], pace=0) as url:
        agent = _agent(url)
        assert isinstance(_turn(agent, BLOCKED, {"configurable": {"thread_id": f"first-{mode}"}}, mode), GuardViolation)
        inputs = {"messages": [{"role": "user", "content": BLOCKED}, {"role": "user", "content": SAFE_QUESTION}]}
        config = {"configurable": {"thread_id": f"second-{mode}"}}
        try:
            outcome = agent.invoke(inputs, config) if mode == "sync" else asyncio.run(agent.ainvoke(inputs, config))
        except GuardViolation as stop:
            outcome = stop
        asked = len(url.requests)
    assert isinstance(outcome, GuardViolation) and asked == 0, outcome


def test_a_guarded_chat_model_node_that_takes_the_blocked_turn_out_answers_the_next():
    """`GuardedChatModel` raises by design; in a checkpointed graph of your own the node owns the state, and the
    pattern docs/langchain.md gives (catch the prompt's violation, remove the turn) keeps the thread answering."""
    config = {"configurable": {"thread_id": "node"}}
    with scripted_openai([Reply.words(SAFE_ANSWER)], pace=0) as url:
        guarded = GuardedChatModel(chat(url), Guard(CountingJudge()))

        def chatbot(state: MessagesState) -> dict[str, Any]:
            try:
                return {"messages": [guarded.invoke(state["messages"])]}
            except GuardViolation as stop:
                if stop.decision is None or stop.decision.stage is not Stage.PROMPT:
                    raise
                last = state["messages"][-1]  # the turn the model was asked to answer
                return {"messages": [RemoveMessage(id=last.id), AIMessage("That request was blocked.")]}

        graph = StateGraph(MessagesState)
        graph.add_node("chatbot", chatbot)
        graph.add_edge(START, "chatbot")
        graph.add_edge("chatbot", END)
        app = graph.compile(checkpointer=InMemorySaver())
        first = app.invoke({"messages": [{"role": "user", "content": BLOCKED}]}, config)
        second = app.invoke({"messages": [{"role": "user", "content": SAFE_QUESTION}]}, config)
        asked = len(url.requests)
    assert first["messages"][-1].text == "That request was blocked."
    assert asked == 1 and second["messages"][-1].text == SAFE_ANSWER
    assert leaked(app.get_state(config).values) == 0
