"""The LangChain async paths never hold the event loop for work that grows with a hostile input (rt55b F1, F2, F4).

Each test is the attack, with a loop-lag probe beside it (a task sleeping 5 ms in a loop, its worst lateness),
compared, in the same run, with the loop left idle, the same call unguarded and (where there is one) the guarded
sync call run on a worker thread: the guard's own reading may cost time, not the loop. Python's garbage collector is off while a call is measured: its
pauses grow with every live object, guarded or not, and would only add noise to both sides.

- F1: `GuardMiddleware`'s async hooks read every message into text on the loop, about 15 times a model turn, before
  any limit applied: one user message of 200,000 empty content blocks (no characters: no limit caps it) held the loop
  0.6-3.6 s, a tool result of 100,000 blocks 0.7 s (here: an artifact of 200,000 empty entries).
- F2: an answer held whole (no sentence end) was released in one burst at the stream's end, every chunk's callbacks
  back to back: 40,000 chunks held the loop 1.1-1.7 s through ``create_agent(...).astream(stream_mode="messages")``.
- F4: `AsyncGuardCallbackHandler` read retrieved documents (with their metadata) and a tool's result on the loop:
  4,000 documents of 200 metadata entries held it about a second, a tool's result of 100,000 blocks 0.45 s.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import tool
from lc_fakes import scripted, tool_call
from loop_lag import compare, in_thread
from qwenguard.core import Guard
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware
from stream_judges import CountingJudge


class RemoteJudge(CountingJudge):
    """`CountingJudge` answering off the loop, as a remote guard's reply arrives: its own parsing of thousands of
    verdicts is not the integration's reading."""

    async def aclassify(self, conversations, *, timeout=None):
        return await asyncio.to_thread(self.classify, conversations, timeout=timeout)


def _guard() -> Guard:
    return Guard(backend=RemoteJudge())


def _empty_blocks(n: int) -> list[dict[str, str]]:
    return [{"type": "text", "text": ""} for _ in range(n)]


# -- F1: GuardMiddleware ----------------------------------------------------------------------------------------------
BLOCKS = 100_000


def _hostile_turn() -> list[HumanMessage]:
    return [HumanMessage(content=_empty_blocks(BLOCKS)), HumanMessage("What is the capital of France?")]  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["ainvoke", "astream"])
async def test_f1_a_message_of_empty_blocks_is_read_off_the_loop_by_the_middleware(how):
    def agent(guarded: bool) -> Any:
        middleware = [GuardMiddleware(_guard())] if guarded else []
        return create_agent(scripted("Paris."), tools=[], middleware=middleware)

    turn = _hostile_turn()  # built once, off the clock

    async def run(guarded: bool) -> None:
        graph, state = agent(guarded), {"messages": turn}
        if how == "ainvoke":
            result = await graph.ainvoke(state)
            assert result["messages"][-1].content == "Paris."
        else:
            async for _ in graph.astream(state, stream_mode="messages"):
                pass

    def sync_run() -> None:
        assert agent(True).invoke({"messages": turn})["messages"][-1].content == "Paris."

    failure = await compare(lambda: run(True), lambda: run(False), in_thread(sync_run))
    assert failure is None, failure


async def test_f1_a_tool_result_is_read_off_the_loop_by_the_middleware():
    # A search tool's raw results as its artifact (judged with its content: apps show it), 200,000 empty entries
    # (no text: no limit applies), built once off the clock; LangChain reads none of it. (Content blocks would cost
    # LangChain's own validation on the loop as much: a weaker probe.)
    found: list[dict[str, str]] = [{} for _ in range(200_000)]

    @tool(response_format="content_and_artifact")
    def search(query: str) -> tuple[str, list[dict[str, str]]]:
        """Search the web."""
        return "Found 200,000 pages.", found

    def agent(guarded: bool) -> Any:
        model = scripted(tool_call("search", {"query": "Paris"}), "Done.")
        middleware = [GuardMiddleware(_guard())] if guarded else []
        return create_agent(model, tools=[search], middleware=middleware)

    async def run(guarded: bool) -> None:
        result = await agent(guarded).ainvoke({"messages": [HumanMessage("Search for Paris.")]})
        assert result["messages"][2].artifact is found and result["messages"][-1].content == "Done."

    def sync_run() -> None:
        agent(True).invoke({"messages": [HumanMessage("Search for Paris.")]})

    failure = await compare(lambda: run(True), lambda: run(False), in_thread(sync_run))
    assert failure is None, failure


# -- F2: a held answer released at the stream's end ---------------------------------------------------------------------
WORDS = 10_000


class Words(BaseChatModel):
    """Streams ``"a a a ... a "`` (no sentence end: held whole under ``release_unit="sentence"``), one word or space a
    chunk, each arriving as from the network (a turn of the loop)."""

    n: int

    @property
    def _llm_type(self) -> str:
        return "words"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Words:
        return self

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage("a " * self.n))])

    async def _astream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any):
        for i in range(2 * self.n):
            await asyncio.sleep(0)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=" " if i % 2 else "a", id="run-words"))
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


async def test_f2_an_answer_held_whole_is_released_without_holding_the_loop():
    async def run(guarded: bool) -> None:
        middleware = [GuardMiddleware(_guard())] if guarded else []
        graph = create_agent(Words(n=WORDS), tools=[], middleware=middleware)
        text = []
        async for message, _ in graph.astream({"messages": [HumanMessage("Say a.")]}, stream_mode="messages"):
            text.append(message.text)
        assert "".join(text).count("a") >= WORDS  # every held chunk went out

    # One baseline, which LangChain's own adding up of 20,000 chunks makes 40-110 ms: measured 0.5-1x after the fix,
    # 6-18x before it, so a tighter ratio than the others'.
    failure = await compare(lambda: run(True), lambda: run(False), ratio=2.5)
    assert failure is None, failure


# -- F4: AsyncGuardCallbackHandler --------------------------------------------------------------------------------------
class Pages(BaseRetriever):
    """A page of 4,000 documents with 200 metadata entries each (within ``max_checks``)."""

    def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        return [
            Document(page_content=f"Doc {i} about Paris.", metadata={f"k{k}": f"value {k} {i}" for k in range(200)})
            for i in range(4_000)
        ]


async def test_f4_the_callback_handler_reads_retrieved_documents_off_the_loop():
    def config(handler: Any) -> dict[str, Any]:
        return {"callbacks": [handler]}

    failure = await compare(
        lambda: Pages().ainvoke("Paris", config=config(AsyncGuardCallbackHandler(_guard()))),
        lambda: Pages().ainvoke("Paris"),
        in_thread(lambda: Pages().invoke("Paris", config=config(GuardCallbackHandler(_guard())))),
    )
    assert failure is None, failure


async def test_f4_the_callback_handler_reads_a_tool_result_off_the_loop():
    # As in F1's tool test: 200,000 empty entries in the artifact, which the handler reads and LangChain does not.
    found: list[dict[str, str]] = [{} for _ in range(200_000)]

    @tool(response_format="content_and_artifact")
    async def search(query: str) -> tuple[str, list[dict[str, str]]]:
        """Search the web."""
        return "Found 200,000 pages.", found

    @tool("search", response_format="content_and_artifact")
    def search_sync(query: str) -> tuple[str, list[dict[str, str]]]:
        """Search the web."""
        return "Found 200,000 pages.", found

    call = {"name": "search", "args": {"query": "Paris"}, "id": "call_1", "type": "tool_call"}

    async def run(handler: Any) -> None:
        result = await search.ainvoke(call, config={"callbacks": [handler] if handler else []})
        assert result.artifact is found

    failure = await compare(
        lambda: run(AsyncGuardCallbackHandler(_guard())),
        lambda: run(None),
        in_thread(lambda: search_sync.invoke(call, config={"callbacks": [GuardCallbackHandler(_guard())]})),
    )
    assert failure is None, failure
