"""A red team on tool calls the guard did not see as calls (rt49a H1, H2, H3, M2): a call nested inside another
content block, a call LangChain's sum merged into a text block, a runnable streaming whole messages (whose sum is a
prompt template, not a message), and calls or text in ``additional_kwargs`` containers of an unexpected type. Real
LangChain paths, a fake model that streams like real ones, a keyword judge (unsafe on "ammonium"); exposure counted
in characters of the clause that reached the consumer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableGenerator
from langchain_openai import ChatOpenAI
from lc_fakes import UNSAFE_CLAUSE
from qwenguard.core import Guard, GuardUnavailable, GuardViolation
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware, guard_output
from qwenguard.integrations.langchain._holding import HeldStream
from scripted_openai import Reply, ToolCall, scripted_openai

QUESTION = [HumanMessage("Send it.")]
CALL = {"type": "tool_call", "id": "c1", "name": "send_instructions", "args": {"text": UNSAFE_CLAUSE}}
FUNCTION = {"name": "send_instructions", "arguments": json.dumps({"text": UNSAFE_CLAUSE})}


def judge() -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(keyword_verdict)
    return Guard(backend, cache_size=0), backend


def judged(backend: ScriptedBackend) -> str:
    return "\n".join(turn["content"] for call in backend.calls for conversation in call for turn in conversation)


def checks(backend: ScriptedBackend) -> int:
    return sum(len(call) for call in backend.calls)


def _strings_in(value: Any) -> Iterator[str]:
    """Every string the consumer can read in what it got: message fields (content blocks, tool calls and their
    chunks, additional_kwargs, metadata), mappings (keys too), lists."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, BaseMessage):
            stack.append(item.model_dump())
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def exposure(received: list[Any]) -> int:
    """The longest run of the clause's characters in any string the consumer got."""
    longest = 0
    for text in _strings_in(received):
        for start in range(len(UNSAFE_CLAUSE)):
            size = longest + 1
            while start + size <= len(UNSAFE_CLAUSE) and UNSAFE_CLAUSE[start : start + size] in text:
                longest, size = size, size + 1
    return longest


#: Fewer characters of the clause in a row than this are words any answer shares with it (" and ", " with ").
NONE_OF_IT = 8


class Streams(BaseChatModel):
    """A model streaming ``chunks()`` as real chat models do: each reported to its run manager, then yielded; its
    ``_generate`` adds the stream up (``generate_from_stream``: ChatOpenAI and ChatAnthropic with ``streaming=True``)."""

    chunks: Callable[[], list[AIMessageChunk]]

    @property
    def _llm_type(self) -> str:
        return "streams"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Streams:
        return self

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager))

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        for message in self.chunks():
            chunk = ChatGenerationChunk(message=message)
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


def _consume(produce: Callable[[], Any]) -> list[Any]:
    """What the consumer got before the path stopped (a stop the guard raised is the path failing closed)."""
    got: list[Any] = []
    try:
        for item in produce():
            got.append(item)
    except (GuardViolation, GuardUnavailable):
        pass
    return got


def _agent(model: BaseChatModel, guard: Guard) -> Any:
    return create_agent(model, [], middleware=[GuardMiddleware(guard)])


def _astream(runnable: Any) -> Iterator[Any]:
    async def collect() -> list[Any]:
        got: list[Any] = []
        try:
            async for chunk in runnable.astream(QUESTION):
                got.append(chunk)
        except (GuardViolation, GuardUnavailable):
            pass
        return got

    return iter(asyncio.run(collect()))


STREAM_PATHS: dict[str, Callable[[BaseChatModel, Guard], Iterator[Any]]] = {
    "GuardedChatModel.stream": lambda m, g: GuardedChatModel(m, g).stream(QUESTION),
    "GuardedChatModel.astream": lambda m, g: _astream(GuardedChatModel(m, g)),
    "guard_output.stream": lambda m, g: (m | guard_output(g)).stream(QUESTION),
    "agent messages": lambda m, g: _agent(m, g).stream({"messages": QUESTION}, stream_mode="messages"),
}
WHOLE_PATHS: dict[str, Callable[[BaseChatModel, Guard], Iterator[Any]]] = {
    "GuardedChatModel.invoke": lambda m, g: iter([GuardedChatModel(m, g).invoke(QUESTION)]),
    "guard_output.invoke": lambda m, g: iter([(m | guard_output(g)).invoke(QUESTION)]),
    "agent invoke": lambda m, g: iter(_agent(m, g).invoke({"messages": QUESTION})["messages"]),
    "agent updates": lambda m, g: _agent(m, g).stream({"messages": QUESTION}, stream_mode="updates"),
}
PATHS = {**STREAM_PATHS, **WHOLE_PATHS}


def _assert_held(chunks: Callable[[], list[AIMessageChunk]], path: str) -> None:
    guard, backend = judge()
    got = _consume(lambda: PATHS[path](Streams(chunks=chunks), guard))
    assert exposure(got) < NONE_OF_IT, got
    assert UNSAFE_CLAUSE in judged(backend)


# -- H1: a tool call nested inside another content block ----------------------------------------------------------
NESTED: dict[str, Callable[[], list[AIMessageChunk]]] = {
    "a reasoning block's summary": lambda: [
        AIMessageChunk(content=[{"type": "reasoning", "reasoning": "Planning.", "summary": [dict(CALL)]}], id="m1")
    ],
    "a text block's extras": lambda: [
        AIMessageChunk(content=[{"type": "text", "text": "Sure.", "extras": {"call": dict(CALL)}}], id="m1")
    ],
    "a reasoning block's extras": lambda: [
        AIMessageChunk(
            content=[
                {
                    "type": "reasoning",
                    "reasoning": "Planning.",
                    "extras": {"function_call": {"type": "function_call", **FUNCTION}},
                }
            ],
            id="m1",
        )
    ],
    "an image block's extras": lambda: [
        AIMessageChunk(
            content=[
                {"type": "text", "text": "Here."},
                {"type": "image", "url": "https://example.com/a.png", "extras": {"call": dict(CALL)}},
            ],
            id="m1",
        )
    ],
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", NESTED)
def test_a_call_nested_in_another_block_is_judged(shape: str, path: str) -> None:
    """rt49a H1: a nested call was judged neither as text (`_strings` left it out, "judged apart") nor as a call (only
    top-level blocks are calls): 71 of 71 characters went out on every path, in the first chunk released."""
    _assert_held(NESTED[shape], path)


# -- H2: a call block LangChain's sum merged into a text block ------------------------------------------------------
TEXT = {"type": "text", "text": "Sure. ", "index": 0}
SAME_INDEX: dict[str, dict[str, Any]] = {
    "tool_call_chunk": {"type": "tool_call_chunk", "name": "send", "args": UNSAFE_CLAUSE, "index": 0},
    "tool_use": {"type": "tool_use", "id": "toolu_1", "name": "send", "input": {"text": UNSAFE_CLAUSE}, "index": 0},
    "function_call": {
        "type": "function_call",
        "call_id": "call_1",
        "name": "send",
        "arguments": UNSAFE_CLAUSE,
        "index": 0,
    },
    "server_tool_use": {
        "type": "server_tool_use",
        "id": "srv_1",
        "name": "web_search",
        "input": {"q": UNSAFE_CLAUSE},
        "index": 0,
    },
    "a string index": {"type": "tool_call_chunk", "name": "send", "args": UNSAFE_CLAUSE, "index": "lc_x"},
}


def _merged_by_sum(block: str) -> Callable[[], list[AIMessageChunk]]:
    def chunks() -> list[AIMessageChunk]:
        text = {**TEXT, "index": SAME_INDEX[block]["index"]}
        return [AIMessageChunk(content=[text], id="m1"), AIMessageChunk(content=[dict(SAME_INDEX[block])], id="m1")]

    return chunks


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("block", SAME_INDEX)
def test_a_call_merged_into_a_text_block_by_the_sum_is_judged(block: str, path: str) -> None:
    """rt49a H2: a model whose ``_generate`` adds its stream up returns the call merged into the text block of the same
    index (``merge_lists``), and an answer's text block was read as its ``text`` only: on invoke, the agent's invoke and
    ``stream_mode="updates"`` 71 of 71 characters went out (held streams judged it, `StreamedCallBlocks`)."""
    _assert_held(_merged_by_sum(block), path)


ARRIVES_MERGED: dict[str, dict[str, Any]] = {
    "args": {"type": "text", "text": "Sure. ", "args": UNSAFE_CLAUSE},
    "input": {"type": "text", "text": "Sure. ", "name": "send", "input": {"text": UNSAFE_CLAUSE}},
    "partial_json": {"type": "text", "text": "Sure. ", "partial_json": json.dumps({"text": UNSAFE_CLAUSE})},
    "extras": {"type": "text", "text": "Sure. ", "extras": {"note": UNSAFE_CLAUSE}},
    "another key": {"type": "text", "text": "Sure. ", "note": UNSAFE_CLAUSE},
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", ARRIVES_MERGED)
def test_a_text_block_that_arrives_with_more_than_its_text_is_judged(shape: str, path: str) -> None:
    """rt49a H2 on streams: a chunk already in the merged form was released at once (`StreamedCallBlocks` watches call
    kinds only), and every other key of a text block went out unjudged."""
    _assert_held(lambda: [AIMessageChunk(content=[dict(ARRIVES_MERGED[shape])], id="m1")], path)


@pytest.mark.parametrize("path", ["invoke", "stream"])
def test_an_honest_merge_of_a_call_into_the_text_costs_no_check_more(path: str) -> None:
    """``ChatOpenAI(output_version="v1", streaming=True)`` merges its first call into the text block every time (both
    at index 0): the merged block equals the parsed call, judged once. The input, the text, the call, and the text
    joined with the call (rt71b F1: a clause split over an answer's text and its call ran; every answer with text and
    a call pays this one check, merged or not, and the text check reads the text without the merged call): four."""
    guard, backend = judge()
    script = Reply.words("Let me check.", [ToolCall("search", '{"q": "weather in Paris"}', id="call_1", fragments=4)])
    with scripted_openai(script) as url:
        model = ChatOpenAI(
            base_url=url, api_key="scripted", model="scripted", max_retries=0, output_version="v1", streaming=True
        )
        guarded = GuardedChatModel(model, guard)
        if path == "invoke":
            answer = guarded.invoke([HumanMessage("Weather?")])
            assert answer.tool_calls and "args" in answer.content[0]  # the merge happened
        else:
            assert len(list(guarded.stream([HumanMessage("Weather?")]))) > 1
    assert checks(backend) == 4
    # The call is read twice, alone and joined with the text, never a third time from the merged block.
    assert sum("weather in Paris" in str(c[-1]["content"]) for call in backend.calls for c in call) == 2


# -- H3: a runnable streaming whole messages --------------------------------------------------------------------
PARSED_CALL = {"name": "send_instructions", "args": {"text": UNSAFE_CLAUSE}, "id": "call_1"}
WHOLE_MESSAGES: dict[str, Callable[[], list[BaseMessage]]] = {
    "text, then a call": lambda: [AIMessage("Sure. "), AIMessage("", tool_calls=[dict(PARSED_CALL)])],
    "a call, then text": lambda: [AIMessage("", tool_calls=[dict(PARSED_CALL)]), AIMessage("Done.")],
    "a message, then a call chunk": lambda: [
        AIMessage("Sure. "),
        AIMessageChunk(
            content="",
            tool_call_chunks=[
                {"name": "send_instructions", "args": json.dumps({"text": UNSAFE_CLAUSE}), "id": "call_1", "index": 0}
            ],
        ),
    ],
    "a message, then a server result": lambda: [
        AIMessage("Sure. "),
        AIMessage(content=[{"type": "server_tool_result", "tool_call_id": "s1", "output": UNSAFE_CLAUSE}]),
    ],
    "an invalid call": lambda: [
        AIMessage("Sure. "),
        AIMessage("", invalid_tool_calls=[{"name": "send", "args": "{" + UNSAFE_CLAUSE, "id": "c2", "error": None}]),
    ],
}


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("case", WHOLE_MESSAGES)
def test_whole_messages_streamed_by_a_runnable_are_judged(case: str, mode: str) -> None:
    """rt49a H3: ``AIMessage + AIMessage`` is ``BaseMessage.__add__``, a ``ChatPromptTemplate``: the held stream's sum
    was no message, nothing was judged at the end, and the held call went out (71 of 71 characters)."""
    guard, backend = judge()

    def upstream(_: Any) -> Iterator[BaseMessage]:
        yield from WHOLE_MESSAGES[case]()

    async def aupstream(inputs: Any) -> Any:
        async for _ in inputs:
            pass
        for message in WHOLE_MESSAGES[case]():
            yield message

    chain = RunnableGenerator(upstream, aupstream) | guard_output(guard)
    if mode == "sync":
        got = _consume(lambda: chain.stream("go"))
    else:

        async def collect() -> list[Any]:
            out: list[Any] = []
            try:
                async for chunk in chain.astream("go"):
                    out.append(chunk)
            except (GuardViolation, GuardUnavailable):
                pass
            return out

        got = asyncio.run(collect())
    assert exposure(got) < NONE_OF_IT, got
    assert UNSAFE_CLAUSE in judged(backend)


def test_argument_text_a_parse_drops_is_judged_as_written() -> None:
    """``parse_partial_json("{Mix ammonium ...")`` is ``{}``: the call was judged as ``send({})`` while the consumer got
    the text. Argument text that is no JSON is judged as written, quotes or none."""
    guard, backend = judge()
    call = {"name": "send", "args": "{" + UNSAFE_CLAUSE, "id": "c1", "index": 0}
    chunks = [AIMessageChunk(content="Sure. "), AIMessageChunk(content="", tool_call_chunks=[call])]
    got = _consume(lambda: HeldStream(guard, [{"role": "user", "content": "Send it."}]).run(iter(chunks)))
    assert exposure(got) < NONE_OF_IT, got
    assert UNSAFE_CLAUSE in judged(backend)


class _OddChunk(AIMessageChunk):
    """A chunk class whose sum is no message (a custom class can add up to anything)."""

    def __add__(self, other: Any) -> Any:  # type: ignore[override]
        return "not a message"


def test_a_sum_that_is_no_message_fails_closed() -> None:
    """A held call cannot be judged from a sum that is no message: the stream stops (`GuardUnavailable`) and the held
    call never goes out."""
    guard, backend = judge()
    call = {"name": "send", "args": json.dumps({"text": "hello"}), "id": "c1", "index": 0}
    chunks = [_OddChunk(content="Sure. "), AIMessageChunk(content="", tool_call_chunks=[call])]
    held = HeldStream(guard, [{"role": "user", "content": "Send it."}])
    got: list[Any] = []
    with pytest.raises(GuardUnavailable):
        for chunk in held.run(iter(chunks)):
            got.append(chunk)
    assert not any(isinstance(c, AIMessageChunk) and c.tool_call_chunks for c in got)


# -- M2: calls and text in additional_kwargs containers of an unexpected type ---------------------------------------
ODD_CARRIERS: dict[str, dict[str, Any]] = {
    "function_call as a list": {"function_call": [dict(FUNCTION)]},
    "function_call as a string": {"function_call": FUNCTION["arguments"]},
    "tool_calls as a mapping": {"tool_calls": {"0": {"id": "call_1", "type": "function", "function": dict(FUNCTION)}}},
    "tool_calls as one entry": {"tool_calls": {"id": "call_1", "type": "function", "function": dict(FUNCTION)}},
    "a call in the reasoning item": {
        "reasoning": {
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "Planning."}],
            "function_call": dict(FUNCTION),
        }
    },
    "an unknown key": {"note": UNSAFE_CLAUSE},
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", ODD_CARRIERS)
def test_calls_in_odd_additional_kwargs_containers_are_judged(shape: str, path: str) -> None:
    """rt49a M2: ``function_call`` was read only as a mapping, ``tool_calls`` only as a list, the v0 reasoning item only
    by its parts' text, and other ``additional_kwargs`` keys not at all: the chunk went out at once, unjudged."""
    carried = ODD_CARRIERS[shape]
    _assert_held(
        lambda: [AIMessageChunk(content="Sure.", additional_kwargs=json.loads(json.dumps(carried)), id="m1")], path
    )
