"""One request must not freeze or crash the guard: work linear in what it sends, walks without recursion.

A red team's findings (rt48c) on the LangChain integration, each written here as its attack. Work is counted, never
timed (timings live in bench/): characters LangChain's ``parse_partial_json`` reads, ``json.loads`` calls, and a
nesting deeper than Python's recursion limit. Linear work grows about 4x when the request grows 4x; the bugs grew 16x.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import langchain_core.messages.ai as lc_ai
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from lc_fakes import UNSAFE_PROMPT, ToolBox, scripted, tool_call
from qwenguard.core import Guard, GuardViolation, InputTooLarge
from qwenguard.integrations.langchain import (
    GuardCallbackHandler,
    GuardedChatModel,
    GuardMiddleware,
    guard_input,
    guard_output,
)
from qwenguard.integrations.langchain import _messages as lc_messages
from qwenguard.integrations.langchain._messages import answer_tool_calls, tool_arguments
from stream_judges import CLAUSE, CountingJudge

#: Deeper than Python's recursion limit (1,000), built in process: no wire's parser stands in the way.
DEEP = 5_000


# -- F3: a held stream added every chunk to the whole so far ------------------------------------------------------
def _arguments(chars: int, unsafe: bool = False) -> dict[str, str]:
    body = "word " * (chars // 5)
    return {"to": "friend@example.com", "body": body + CLAUSE if unsafe else body}


def _released_arguments(chunks: list[Any]) -> str:
    return "".join(t.get("args") or "" for c in chunks if isinstance(c, AIMessageChunk) for t in c.tool_call_chunks)


def _stream(path: str, reply: AIMessage) -> tuple[list[Any], GuardViolation | None]:
    """What the consumer received through ``path``, and the guard's stop if there was one."""
    guard = Guard(CountingJudge(), cache_size=0)
    out: list[Any] = []

    async def drain(runnable: Any, value: Any) -> None:
        async for chunk in runnable.astream(value):
            out.append(chunk)

    try:
        if path == "GuardedChatModel.stream":
            out.extend(GuardedChatModel(scripted(reply), guard).stream("Mail my friend"))
        elif path == "guard_output.astream":
            asyncio.run(drain(scripted(reply) | guard_output(guard), "Mail my friend"))
        else:  # the agent's model call held by the middleware, streamed as messages
            agent = create_agent(scripted(reply, "Done."), ToolBox().all, middleware=[GuardMiddleware(guard)])
            inputs = {"messages": [HumanMessage("Mail my friend")]}
            out.extend(chunk for chunk, _meta in agent.stream(inputs, stream_mode="messages"))
    except GuardViolation as violation:
        return out, violation
    return out, None


@pytest.mark.parametrize("path", ["GuardedChatModel.stream", "guard_output.astream", "GuardMiddleware messages"])
def test_a_long_streamed_tool_call_is_parsed_in_linear_work(path, monkeypatch):
    """The attack (rt48c F3): one tool call whose arguments stream a few characters a chunk. `HeldStream` added each
    chunk to the whole so far, and every sum copied the arguments so far and parsed them again (LangChain's
    ``parse_partial_json``): 8k characters 0.45 s, 16k 1.59 s, 32k 5.54 s (the bare model 0.19 s at 32k), the event
    loop stalled up to 33 ms a chunk. Counted: the characters LangChain parses for 1k and 4k characters of
    arguments (before: 52,172 then 707,672 with `GuardedChatModel`; now 4,160 then 16,160). The stream still releases
    every chunk, and an unsafe argument not one character."""
    parsed = [0]
    parse = lc_ai.parse_partial_json

    def counting(text: str, *args: Any, **kwargs: Any) -> Any:
        parsed[0] += len(text)
        return parse(text, *args, **kwargs)

    monkeypatch.setattr(lc_ai, "parse_partial_json", counting)
    work = []
    for chars in (1_000, 4_000):
        reply = tool_call("send_email", _arguments(chars), text="Sending it now.")
        parsed[0] = 0
        out, stop = _stream(path, reply)
        work.append(parsed[0])
        assert stop is None and _released_arguments(out) == json.dumps(reply.tool_calls[0]["args"])
        if path != "GuardMiddleware messages":  # the model's own chunks, in its order (an agent adds its next turn)
            bare = list(scripted(reply).stream("Mail my friend"))
            assert [(c.content, c.tool_call_chunks) for c in out] == [(c.content, c.tool_call_chunks) for c in bare]
    assert work[1] < 6 * work[0], f"parsed {work[0]:,} then {work[1]:,} characters: 16x is quadratic"

    out, stop = _stream(path, tool_call("send_email", _arguments(4_000, unsafe=True)))
    assert stop is not None or not any(isinstance(c, AIMessageChunk) and c.tool_call_chunks for c in out)
    assert _released_arguments(out) == ""


# -- F2: a content block nested deeper than the recursion limit --------------------------------------------------
def _nested_block(kind: str, text: str, depth: int) -> list[dict[str, Any]]:
    """A user turn with one block of ``kind`` holding ``text`` ``depth`` mappings deep, as a client sends it (JSON)."""
    value: Any = text
    for _ in range(depth):
        value = {"x": value}
    wire = json.dumps(
        [{"type": "text", "text": "hi"}, {"type": kind, "url": "https://example.com/a.png", "extra": value}]
    )
    return json.loads(wire)


def _invoke(path: str, content: list[dict[str, Any]]) -> list[list[Any]]:
    """Send one user turn through ``path``; what the model was given (raises the guard's stop)."""
    guard = Guard(CountingJudge(), cache_size=0)
    model = scripted("Paris.")
    messages = [HumanMessage(content=content)]
    if path == "GuardedChatModel":
        GuardedChatModel(model, guard).invoke(messages)
    elif path == "guard_input":
        (guard_input(guard) | model).invoke(messages)
    elif path == "GuardCallbackHandler":
        model.invoke(messages, config={"callbacks": [GuardCallbackHandler(guard)]})
    else:
        create_agent(model, [], middleware=[GuardMiddleware(guard)]).invoke({"messages": messages})
    return model.seen


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("GuardedChatModel", "image"),
        ("guard_input", "tool_use"),
        ("GuardCallbackHandler", "file"),
        ("middleware", "reasoning"),
    ],
)
def test_a_block_nested_deeper_than_the_recursion_limit_is_judged(path, kind):
    """The attack (rt48c F2): one content block holding a mapping nested 500 deep (3.6 KB of JSON) raised
    RecursionError out of the guard on every entry point (`block_text` walked a known kind's values by recursion).
    Now its strings are judged: a harmless one reaches the model, an unsafe one never does."""
    assert _invoke(path, _nested_block(kind, "deep safe words", 500))
    if path == "middleware":
        assert _invoke(path, _nested_block(kind, UNSAFE_PROMPT, 500)) == []  # the agent ends without the model
    else:
        with pytest.raises(GuardViolation):
            _invoke(path, _nested_block(kind, UNSAFE_PROMPT, 500))


def test_a_prefix_nested_deeper_than_the_recursion_limit_is_judged():
    """An assistant turn's ``additional_kwargs["prefix"]`` (sent as its JSON) nested 5,000 deep: ``json.dumps``
    raised RecursionError; now the same JSON text is judged."""
    value: Any = UNSAFE_PROMPT
    for _ in range(DEEP):
        value = {"x": value}
    history = [HumanMessage("hi"), AIMessage("Sure.", additional_kwargs={"prefix": value}), HumanMessage("go on")]
    with pytest.raises(GuardViolation):
        GuardedChatModel(scripted("Paris."), Guard(CountingJudge(), cache_size=0)).invoke(history)


def test_tool_call_arguments_nested_deeper_than_the_recursion_limit_are_read():
    """A tool-call block's arguments nested 5,000 deep: comparing its ``input`` with its ``args`` (to judge each
    distinct one) and printing a list as text raised RecursionError. Both values are kept (one call each), the
    list is read as its text."""
    deep: Any = "a"
    other: Any = "b"
    for _ in range(DEEP):
        deep, other = {"x": deep}, {"x": other}
    block = {"type": "tool_use", "id": "c", "name": "t", "input": deep, "args": other}
    calls = answer_tool_calls(AIMessage(content=[block]))
    assert [c["args"] for c in calls] == [other, deep] or [c["args"] for c in calls] == [deep, other]
    listed: Any = [UNSAFE_PROMPT]
    for _ in range(DEEP):
        listed = [listed]
    text = tool_arguments({"name": "t", "args": listed})
    assert isinstance(text, str) and UNSAFE_PROMPT in text


def test_a_block_that_holds_itself_is_refused_not_walked_forever():
    """A block built in process that holds itself: the walk stops past the guard's default ``max_chars`` items with
    `InputTooLarge` (before: RecursionError), never looping and never letting it through."""
    block: dict[str, Any] = {"type": "image", "url": "https://example.com/a.png"}
    block["extra"] = [block, "words"]
    with pytest.raises(InputTooLarge):
        lc_messages.block_text(block, answer=False)


# -- F4: tool calls sharing one id were compared each with each ----------------------------------------------------
def _history(k: int, mirrored: bool) -> list[Any]:
    """A client's history: one assistant turn of ``k`` tool calls and ``k`` ``tool_use`` blocks, all with id "c", the
    blocks' input as JSON text (as parsed from the wire). ``mirrored``: each block is a call's own arguments."""
    calls = [{"name": "t", "args": {"q": f"v{i}"}, "id": "c", "type": "tool_call"} for i in range(k)]
    word = "v" if mirrored else "w"
    blocks = [{"type": "tool_use", "id": "c", "name": "t", "input": json.dumps({"q": f"{word}{i}"})} for i in range(k)]
    wire = json.loads(json.dumps({"calls": calls, "blocks": blocks}))
    return [HumanMessage("hi"), AIMessage(content=wire["blocks"], tool_calls=wire["calls"]), HumanMessage("go on")]


def test_tool_calls_sharing_one_id_are_matched_in_linear_work(monkeypatch):
    """The attack (rt48c F4): a history turn of K tool calls and K ``tool_use`` blocks, all id "c", each block's input
    JSON text. Every block was compared with every call of its id, its input parsed again each time: 73 KB 0.75 s,
    146 KB 2.98 s, 294 KB 11.7 s in `GuardedChatModel.invoke`. Counted: ``json.loads`` calls of the message reader
    for K=100 and K=400 (before: 10,100 then 160,400; now 200 then 800). The matching is the same: a block that is its call's own is judged once (with the call),
    one that differs is judged too."""
    loads = [0]

    def counting(*args: Any, **kwargs: Any) -> Any:
        loads[0] += 1
        return json.loads(*args, **kwargs)

    monkeypatch.setattr(lc_messages, "json", SimpleNamespace(loads=counting, dumps=json.dumps))
    work = []
    for k in (100, 400):
        for mirrored in (False, True):
            backend = CountingJudge()
            loads[0] = 0
            GuardedChatModel(scripted("Paris."), Guard(backend, cache_size=0, max_messages=100_000)).invoke(
                _history(k, mirrored)
            )
            judged = [m["content"] for c in backend.calls for conv in c for m in conv[-1:]]
            tool_calls = [t for t in judged if t.startswith("Tool call:")]
            # And the history answer's K calls read joined, once (rt71b F1).
            assert len(tool_calls) == (k if mirrored else 2 * k) + 1
            if not mirrored:
                work.append(loads[0])
    assert work[1] < 6 * work[0], f"{work[0]:,} then {work[1]:,} json.loads calls: 16x is quadratic"
