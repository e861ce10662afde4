"""rt61d F3: `GuardCallbackHandler` is heard before every other handler of a run, whatever merges LangChain does.

`BaseCallbackManager.merge` joins two managers' handlers as ``list(set(a) | set(b))`` (set order) wherever two
managers meet: ``model.with_retry()``, a graph node's ``llm.bind_tools(tools).invoke(messages, config)``, ``prompt |
llm.bind(...)``. LangGraph's ``stream_mode="messages"`` handler (or a UI handler listed after the guard) then heard
a token, or a non-streamed answer, before the guard raised for it: in about half the runs. Each shape here runs 30
times (the old code failed in several of them); `ChatOpenAI` against the scripted server, a phrase judge.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest
from faults import ScriptedBackend, phrase_verdict
from langchain.agents import create_agent
from langchain_core.callbacks import (
    AsyncCallbackHandler,
    AsyncCallbackManager,
    BaseCallbackHandler,
    CallbackManager,
    StdOutCallbackHandler,
)
from langchain_core.callbacks.manager import AsyncCallbackManagerForChainGroup, CallbackManagerForChainGroup
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langchain_core.tracers.stdout import ConsoleCallbackHandler
from langchain_openai import ChatOpenAI
from langgraph.graph import END, START, MessagesState, StateGraph
from lc_fakes import SAFE_ANSWER, UNSAFE_CLAUSE
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler
from scripted_openai import Reply, scripted_openai

RUNS = 30
ASK = {"messages": [{"role": "user", "content": "Tell me about Paris."}]}


def _guard() -> Guard:
    return Guard(ScriptedBackend(phrase_verdict, name="phrase"), cache_size=0)


def _chat(url: str, *, streaming: bool, asynchronous: bool = False) -> ChatOpenAI:
    extra: dict[str, Any] = {"http_async_client": httpx.AsyncClient()} if asynchronous else {}
    return ChatOpenAI(base_url=url, api_key="x", model="scripted", max_retries=0, streaming=streaming, **extra)


def _past_safe(text: str) -> str:
    return text[len(SAFE_ANSWER) :]


# -- the merge itself -----------------------------------------------------------------------------------------------
class _Other(BaseCallbackHandler):
    pass


class _AsyncOther(AsyncCallbackHandler):
    pass


def _others(rng: random.Random, n: int) -> list[Any]:
    kinds = [_Other, _AsyncOther, StdOutCallbackHandler, ConsoleCallbackHandler]
    return [rng.choice(kinds)() for _ in range(n)]


@pytest.mark.parametrize("manager", [CallbackManager, AsyncCallbackManager])
def test_a_guard_listed_first_stays_first_through_any_merge(manager: type) -> None:
    """A property of the merge: many random other handlers on both sides, the guard first in the left list (and in
    the right one or not): the merged list starts with the guard; with an input and an output guard, with both."""
    rng = random.Random(61)
    guard = _guard()
    for trial in range(3000):
        guards: list[Any] = [GuardCallbackHandler(guard)]
        if trial % 2:
            guards.append(AsyncGuardCallbackHandler(guard, check_input=False))
        pool = _others(rng, rng.randrange(0, 40))
        cut = rng.randrange(0, len(pool) + 1)
        right = pool[rng.randrange(0, cut + 1) :] + [g for g in guards if rng.random() < 0.7]
        rng.shuffle(right)
        left = manager(handlers=guards + pool[:cut], inheritable_handlers=guards + pool[:cut])
        merged = left.merge(manager(handlers=right, inheritable_handlers=right))
        assert merged.handlers[: len(guards)] == guards, trial
        assert merged.inheritable_handlers[: len(guards)] == guards, trial
        again = merged.merge(manager(handlers=_others(rng, rng.randrange(0, 20)) + right))  # a merge of a merge
        assert again.handlers[: len(guards)] == guards, trial


@pytest.mark.parametrize("group", [CallbackManagerForChainGroup, AsyncCallbackManagerForChainGroup])
def test_a_chain_group_merge_keeps_the_guard_first(group: type) -> None:
    """``trace_as_chain_group``'s manager merges by list (``add_handler``): the guard listed first stays first."""
    rng = random.Random(7)
    guard = GuardCallbackHandler(_guard())
    for trial in range(300):
        pool = _others(rng, rng.randrange(0, 20))
        parent = CallbackManager(handlers=[]).on_chain_start({}, {}) if group is CallbackManagerForChainGroup else None
        left = group(handlers=[guard, *pool], inheritable_handlers=[guard, *pool], parent_run_manager=parent)
        merged = left.merge(CallbackManager(handlers=[*_others(rng, 5), guard]))
        assert merged.handlers[0] is guard, trial


# -- the shapes that merge ------------------------------------------------------------------------------------------
def _agent_stream(url: str, *, streaming: bool, engine: str, asynchronous: bool) -> str:
    """``create_agent(model.with_retry())`` streamed with ``stream_mode="messages"``: what the consumer read."""
    agent = create_agent(
        _chat(url, streaming=streaming, asynchronous=asynchronous).with_retry(stop_after_attempt=1), []
    )
    got: list[str] = []
    if asynchronous:

        async def read() -> None:
            handler = AsyncGuardCallbackHandler(_guard(), stream_engine=engine)  # type: ignore[arg-type]
            async for chunk, _ in agent.astream(ASK, {"callbacks": [handler]}, stream_mode="messages"):
                got.append(chunk.text)

        with pytest.raises(GuardViolation):
            asyncio.run(read())
    else:
        handler = GuardCallbackHandler(_guard(), stream_engine=engine)  # type: ignore[arg-type]
        with pytest.raises(GuardViolation):
            for chunk, _ in agent.stream(ASK, {"callbacks": [handler]}, stream_mode="messages"):
                got.append(chunk.text)
    return "".join(got)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_with_retry_on_a_model_that_does_not_stream_emits_nothing_blocked(asynchronous: bool) -> None:
    """A non-streaming ChatOpenAI (its default) behind ``with_retry()``: its whole blocked answer went out on
    ``stream_mode="messages"`` before the guard's ``on_llm_end`` raised."""
    with scripted_openai([Reply.words(SAFE_ANSWER + " " + UNSAFE_CLAUSE)]) as url:
        outs = [_agent_stream(url, streaming=False, engine="pipelined", asynchronous=asynchronous) for _ in range(RUNS)]
    assert [out for out in outs if "ammonium" in out] == []


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_with_retry_on_a_streaming_model_never_emits_the_chunk_the_gate_raised_for(asynchronous: bool) -> None:
    """``stream_engine="gate"``: the chunk the guard raises for is never emitted (" Mix" alone is judged safe)."""
    with scripted_openai([Reply.words(SAFE_ANSWER + " " + UNSAFE_CLAUSE)]) as url:
        outs = [_agent_stream(url, streaming=True, engine="gate", asynchronous=asynchronous) for _ in range(RUNS)]
    assert [_past_safe(out) for out in outs if "ammonium" in out] == []


@tool
def lookup(city: str) -> str:
    """Look a city up."""
    return "ok"


def test_a_graph_node_invoking_a_binding_with_its_config() -> None:
    """The LangGraph idiom ``llm.bind_tools(tools).invoke(state["messages"], config)`` in a node of one's own."""
    with scripted_openai([Reply.words(SAFE_ANSWER + " " + UNSAFE_CLAUSE)]) as url:
        bound = _chat(url, streaming=False).bind_tools([lookup])

        def chatbot(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
            return {"messages": [bound.invoke(state["messages"], config)]}

        graph = StateGraph(MessagesState)
        graph.add_node("chatbot", chatbot)
        graph.add_edge(START, "chatbot")
        graph.add_edge("chatbot", END)
        app = graph.compile()
        leaked = []
        for _ in range(RUNS):
            got: list[str] = []
            with pytest.raises(GuardViolation):
                handler = GuardCallbackHandler(_guard(), stream_engine="gate")
                for chunk, _ in app.stream(ASK, {"callbacks": [handler]}, stream_mode="messages"):
                    got.append(chunk.text)
            if "ammonium" in "".join(got):
                leaked.append("".join(got))
    assert leaked == []


class _UI(BaseCallbackHandler):
    """A UI handler listed after the guard: what it showed."""

    def __init__(self) -> None:
        self.shown: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.shown.append(token)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.shown.append(response.generations[0][0].text)


@pytest.mark.parametrize("streaming", [False, True], ids=["answer", "stream"])
def test_an_lcel_chain_with_a_ui_handler_after_the_guard(streaming: bool) -> None:
    """``prompt | llm.bind(...)`` with ``callbacks=[guard, ui]``: the UI never hears what the guard stopped."""
    prompt = ChatPromptTemplate.from_messages([("user", "{question}")])
    with scripted_openai([Reply.words(SAFE_ANSWER + " " + UNSAFE_CLAUSE)]) as url:
        chain = prompt | _chat(url, streaming=streaming).bind(stop=["<end>"])
        shown = []
        for _ in range(RUNS):
            ui = _UI()
            handler = GuardCallbackHandler(_guard(), stream_engine="gate")
            with pytest.raises(GuardViolation):
                chain.invoke({"question": "Tell me about Paris."}, {"callbacks": [handler, ui]})
            shown.append("".join(ui.shown))
    assert [text for text in shown if "ammonium" in text] == []
