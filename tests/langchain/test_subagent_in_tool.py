"""A sub-agent run inside a tool ("agent as a tool") reaches no consumer through the parent's stream (rt50d F4).

The guarded tool ran out of sight of the run's callbacks, but still with LangGraph's ``configurable``: the parent's
stream (``__pregel_stream``, set for ``subgraphs=True`` and always under ``stream_events(version="v3")``) and its
checkpointer. A graph the tool invoked (``inner.invoke(...)``) found them there, so its raw answer went out as
``(('tools:<id>',), 'updates', {'model': ...})`` and v3 ``values`` events under ``['tools:<id>']`` before the guard
judged the tool's result, and each of its steps was saved in the parent's thread under ``checkpoint_ns='tools:<id>'``.
A `ToolRuntime`'s ``config`` (``inner.invoke(..., runtime.config)``) carried the parent's callbacks too: the
sub-agent's tokens on ``stream_mode="messages"`` with ``subgraphs=True``. The held tool's config leaves the parent's
stream out now and saves a graph it runs only when that graph must be resumed (interrupted, or failed): an
``interrupt()`` inside the sub-agent still reaches the parent and resumes where it stopped.

`ChatOpenAI` against two scripted servers (the agent's and its sub-agent's), `create_agent`, `InMemorySaver`; the
oracle judge (`stream_judges.CountingJudge`: tool output about a bomb is unsafe). Counted: characters of the
sub-agent's unsafe answer in every stream item, v3 event and saved checkpoint or write.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.tools import ToolRuntime
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore
from langgraph.types import Command, interrupt
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION
from qwenguard.core import Guard
from qwenguard.integrations.langchain import GuardMiddleware
from scripted_openai import Reply, ToolCall, scripted_openai
from stream_judges import CLAUSE, CountingJudge
from test_openai_paths import MODES, chat

#: The sub-agent's answer: the oracle blocks it as the tool's output ("bomb").
RAW = "Here is how to build a bomb at home: " + CLAUSE
#: What of it counts, in characters: each of the clause's telling words found anywhere in what went out.
CLAUSE_WORDS = ("ammonium", "nitrate", "fuel oil", "pack it into a pipe", "add a fuse")
OUTER = [
    Reply.words(
        "Let me ask the researcher.", tool_calls=[ToolCall("research", json.dumps({"query": "France"}), id="c1")]
    ),
    Reply.words("Done."),
]
STREAM_MODES = ["updates", "values", "tasks", "debug", "checkpoints", "messages", "custom"]


def leaked(value: Any) -> int:
    """Characters of the clause in ``value`` (its repr: every event, message and saved byte string)."""
    text = repr(value)
    return sum(len(word) for word in CLAUSE_WORDS if word in text)


def _saved(saver: InMemorySaver) -> str:
    """Every checkpoint and write of every thread and namespace in ``saver``, read back, and its raw storage."""
    return repr(list(saver.list(None))) + repr(saver.storage) + repr(saver.writes)


def _research_tool(inner: Any, mode: str, passes: str) -> Any:
    """The "agent as a tool" pattern: the tool's result is the sub-agent's last answer. ``passes``: how the tool
    runs it (with no config, LangChain's example; or with the `ToolRuntime`'s config)."""
    if mode == "sync":

        @tool
        def research(query: str, runtime: ToolRuntime) -> str:
            """Ask the research sub-agent."""
            config = runtime.config if passes == "runtime_config" else None
            return inner.invoke({"messages": [{"role": "user", "content": query}]}, config)["messages"][-1].text

        return research

    @tool
    async def research_async(query: str, runtime: ToolRuntime) -> str:
        """Ask the research sub-agent."""
        config = runtime.config if passes == "runtime_config" else None
        out = await inner.ainvoke({"messages": [{"role": "user", "content": query}]}, config)
        return out["messages"][-1].text

    research_async.name = "research"
    return research_async


def _consume(agent: Any, inputs: Any, config: dict[str, Any], mode: str, how: str) -> list[Any]:
    """Everything the consumer of ``how`` receives: every stream mode with ``subgraphs=True``, or v3's events."""
    seen: list[Any] = []

    async def drain() -> None:
        if how == "subgraphs":
            async for item in agent.astream(inputs, config, stream_mode=STREAM_MODES, subgraphs=True):
                seen.append(item)
        else:
            async for event in await agent.astream_events(inputs, config, version="v3"):
                seen.append(event)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # v3 is a beta API
        if mode == "async":
            asyncio.run(drain())
        elif how == "subgraphs":
            seen.extend(agent.stream(inputs, config, stream_mode=STREAM_MODES, subgraphs=True))
        else:
            seen.extend(agent.stream_events(inputs, config, version="v3"))
    return seen


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["subgraphs", "v3"])
@pytest.mark.parametrize("passes", ["no_config", "runtime_config"])
def test_a_subagents_answer_inside_a_tool_reaches_no_consumer(mode, how, passes):
    guard = Guard(CountingJudge())
    config = {"configurable": {"thread_id": f"{mode}-{how}-{passes}"}}
    saver = InMemorySaver()
    with scripted_openai([Reply.words(RAW)], pace=0) as inner_url, scripted_openai(OUTER, pace=0) as url:
        inner = create_agent(chat(inner_url), [])
        agent = create_agent(
            chat(url),
            [_research_tool(inner, mode, passes)],
            middleware=[GuardMiddleware(guard, exit_behavior="replace")],
            checkpointer=saver,
        )
        seen = _consume(agent, {"messages": [{"role": "user", "content": SAFE_QUESTION}]}, config, mode, how)
        assert len(inner_url.requests) == 1  # the sub-agent did answer
    assert (leaked(seen), leaked(_saved(saver))) == (0, 0)
    final = agent.get_state(config).values["messages"]
    results = [m for m in final if isinstance(m, ToolMessage)]
    assert [m.text[:42] for m in results] == ["The output of tool 'research' was withheld"], results
    assert final[-1].text == "Done."


@pytest.mark.parametrize("mode", MODES)
def test_a_subagents_safe_answer_is_the_tools_result_and_the_store_is_shared(mode):
    """The held tool keeps what it uses itself: its `ToolRuntime` (state, store), and the sub-agent's answer."""
    guard = Guard(CountingJudge())
    store = InMemoryStore()
    config = {"configurable": {"thread_id": f"safe-{mode}"}}
    with scripted_openai([Reply.words(SAFE_ANSWER)], pace=0) as inner_url, scripted_openai(OUTER, pace=0) as url:
        inner = create_agent(chat(inner_url), [])

        @tool("research")
        def research(query: str, runtime: ToolRuntime) -> str:
            """Ask the research sub-agent."""
            assert runtime.store is not None
            runtime.store.put(("notes",), "asked", {"by": runtime.state["messages"][0].text})
            return inner.invoke({"messages": [{"role": "user", "content": query}]})["messages"][-1].text

        @tool("research")
        async def aresearch(query: str, runtime: ToolRuntime) -> str:
            """Ask the research sub-agent."""
            assert runtime.store is not None
            await runtime.store.aput(("notes",), "asked", {"by": runtime.state["messages"][0].text})
            return (await inner.ainvoke({"messages": [{"role": "user", "content": query}]}))["messages"][-1].text

        agent = create_agent(
            chat(url),
            [research if mode == "sync" else aresearch],
            middleware=[GuardMiddleware(guard)],
            checkpointer=InMemorySaver(),
            store=store,
        )
        inputs = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
        result = agent.invoke(inputs, config) if mode == "sync" else asyncio.run(agent.ainvoke(inputs, config))
    results = [m.text for m in result["messages"] if isinstance(m, ToolMessage)]
    assert results == [SAFE_ANSWER]
    item = store.get(("notes",), "asked")
    assert item is not None and item.value == {"by": SAFE_QUESTION}


@pytest.mark.parametrize("mode", MODES)
def test_an_interrupt_inside_the_subagent_reaches_the_parent_and_resumes(mode):
    """A sub-agent's ``interrupt()`` (a human approval in one of its tools) bubbles up to the parent, and on resume
    the sub-agent goes on from where it stopped: its model is not asked again. Its state is saved in the parent's
    thread for that, and only then."""
    guard = Guard(CountingJudge())
    saver = InMemorySaver()
    config = {"configurable": {"thread_id": f"interrupt-{mode}"}}
    inner_script = [
        Reply.words("Checking.", tool_calls=[ToolCall("approve", json.dumps({"what": "lookup"}), id="i1")]),
        Reply.words(SAFE_ANSWER),
    ]

    @tool
    def approve(what: str) -> str:
        """Ask a human."""
        return f"the human said {interrupt({'ask': what})}"

    with scripted_openai(inner_script, pace=0) as inner_url, scripted_openai(OUTER, pace=0) as url:
        inner = create_agent(chat(inner_url), [approve])
        agent = create_agent(
            chat(url),
            [_research_tool(inner, mode, "no_config")],
            middleware=[GuardMiddleware(guard)],
            checkpointer=saver,
        )
        inputs = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
        if mode == "sync":
            first = agent.invoke(inputs, config)
            namespaces = sorted(saver.storage[config["configurable"]["thread_id"]])
            last = agent.invoke(Command(resume="yes"), config)
        else:

            async def both() -> tuple[Any, list[str], Any]:
                one = await agent.ainvoke(inputs, config)
                saved = sorted(saver.storage[config["configurable"]["thread_id"]])
                return one, saved, await agent.ainvoke(Command(resume="yes"), config)

            first, namespaces, last = asyncio.run(both())
        asked = len(inner_url.requests)
    assert [i.value for i in first["__interrupt__"]] == [{"ask": "lookup"}]
    assert namespaces[0] == "" and [ns.split(":")[0] for ns in namespaces[1:]] == ["tools"]
    assert asked == 2  # "Checking." then, resumed, the answer: not asked again from the start
    assert "Checking." in _saved(saver)  # what LangGraph resumed it from: the interrupted sub-agent's state
    results = [m.text for m in last["messages"] if isinstance(m, ToolMessage)]
    assert results == [SAFE_ANSWER] and last["messages"][-1].text == "Done."
