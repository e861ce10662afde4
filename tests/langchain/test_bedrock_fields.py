"""Text a client or a model can put in a message where the guard did not read it, sent or produced by the real
`ChatBedrockConverse` (langchain-aws; a differential red team, rt47b: what Converse received, and what the consumer
got, against what the guard judged).

langchain-aws is no test dependency here: each shape is one the class sends or produces (taken from the red team's
repros, checked against langchain-aws 1.9.1 with boto3 against a recording server), run through the real qwenguard
pieces with a scripted model, and the test asserts the guard judges the clause in it before the model or the
consumer reads it.

- B1: a ``document`` block whose ``source.bytes`` is raw ``bytes`` (langchain-aws's documented file form; a block
  without ``type`` is sent as it is too): boto base64-encodes the blob and the model reads the file.
- B2: a ``file`` block with ``"base64": ""`` and the file's base64 in ``data``: the class decodes
  ``block.get("base64") or block.get("data")``.
- B3: a streamed server tool result, ``{"type": "json", "json": {...}}`` in an answer chunk: its keys are text the
  consumer reads.
"""

# No `from __future__ import annotations`: LangChain reads the tool's annotations.

import base64
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from lc_fakes import UNSAFE_CLAUSE, scripted, tool_call
from qwenguard.core import Guard, GuardUnavailable, GuardViolation, InputTooLarge
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware
from qwenguard.integrations.langchain._messages import block_text, message_text, source_text, tool_text
from test_answer_fields import (
    INPUTS,
    FieldModel,
    _assert_refused_without_the_fields,
    _runnable,
    handler_for,
    leaked,
)
from test_tool_side_channels import call, drain
from test_wire_fields import PATHS, SAFE, WORD, after_a_tool_call, run_on

MODES = ["sync", "async"]


def notes(text: str) -> bytes:
    """A small text file holding ``text``."""
    return f"Meeting notes.\n{text}\n".encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def document(data: Any, fmt: str = "txt") -> dict[str, Any]:
    """Bedrock's document, as langchain-aws's docs build it: ``source.bytes`` is the file, read with ``open(f, "rb")``."""
    return {"format": fmt, "name": "notes", "source": {"bytes": data}}


def asking(*blocks: Any) -> list[Any]:
    return [HumanMessage([{"type": "text", "text": "Summarise the file."}, *blocks])]


#: name -> the client's history holding ``text`` in a file ChatBedrockConverse sends (`_lc_content_to_bedrock`).
SENT_BY_BEDROCK: dict[str, Any] = {
    # B1: a typed ``document`` block is sent as its ``document``; a block without ``type`` as it is.
    "a document block's bytes in a user turn": lambda t: asking({"type": "document", "document": document(notes(t))}),
    "a native block without type": lambda t: asking({"document": document(notes(t))}),
    "a document's bytes as a bytearray": lambda t: asking(
        {"type": "document", "document": document(bytearray(notes(t)))}
    ),
    "a document's bytes as a memoryview": lambda t: asking({"document": document(memoryview(notes(t)))}),
    "a document block's bytes in a tool result": lambda t: after_a_tool_call(
        ToolMessage([{"type": "document", "document": document(notes(t))}], tool_call_id="c1")
    ),
    "a document block's bytes in an earlier answer": lambda t: [
        HumanMessage("Summarise the notes."),
        AIMessage([{"type": "text", "text": "Here they are."}, {"type": "document", "document": document(notes(t))}]),
    ],
    # B2: the class decodes ``block.get("base64") or block.get("data")`` once a block has a ``base64`` key at all.
    "a file block with an empty base64 and its file in data": lambda t: asking(
        {"type": "file", "mime_type": "text/plain", "base64": "", "data": b64(notes(t)), "name": "notes"}
    ),
    "a file block with a null base64 and its file in data": lambda t: asking(
        {"type": "file", "mime_type": "text/plain", "base64": None, "data": b64(notes(t)), "name": "notes"}
    ),
    # ... or says ``sourceType: base64`` (its camelCase keys, which a client may write).
    "a file block whose sourceType says base64": lambda t: asking(
        {"type": "file", "mime_type": "text/plain", "sourceType": "base64", "data": b64(notes(t)), "name": "notes"}
    ),
}


def judged(messages: list[Any], path: str, mode: str = "sync") -> tuple[list[str], Any, list[Any]]:
    """``messages`` then "Go on." on ``path``, the model a scripted one; (the turns the guard judged, the outcome,
    what the model was given)."""
    backend = ScriptedBackend(keyword_verdict, name="kw")
    chat = scripted("Done.")
    try:
        outcome = run_on(path, mode, chat, Guard(backend, cache_size=0), [*messages, HumanMessage("Go on.")])
    except GuardUnavailable as refusal:
        outcome = refusal
    turns = [conversation[-1]["content"] for call in backend.calls for conversation in call]
    return turns, outcome, chat.seen


def refused(outcome: Any) -> bool:
    """Stopped: the `GuardViolation`, or the agent's answer saying so."""
    if isinstance(outcome, GuardViolation):
        return True
    return isinstance(outcome, dict) and "safety guard" in str(outcome["messages"][-1].content)


#: Files langchain-core's traced copy loses (`_format_for_tracing` puts the empty or null ``base64`` in ``data``): a
#: callback handler, given that copy, cannot read them (`test_a_callback_refuses_a_file_its_traced_copy_lost`).
TRACED_AWAY = (
    "a file block with an empty base64 and its file in data",
    "a file block with a null base64 and its file in data",
)


@pytest.mark.parametrize(
    "path,shape", [(p, s) for s in SENT_BY_BEDROCK for p in PATHS if not (p == "callback" and s in TRACED_AWAY)]
)
def test_a_file_chatbedrockconverse_sends_is_judged(shape: str, path: str) -> None:
    turns, outcome, seen = judged(SENT_BY_BEDROCK[shape](UNSAFE_CLAUSE), path)
    assert any(WORD in turn for turn in turns), f"{shape}: the file's text was in no judged turn"
    assert refused(outcome) and not seen  # the model was never called
    turns, outcome, seen = judged(SENT_BY_BEDROCK[shape](SAFE), path)
    assert not isinstance(outcome, GuardViolation) and seen and any(SAFE in turn for turn in turns)


@pytest.mark.parametrize("path", PATHS)
def test_async_paths_judge_the_files_chatbedrockconverse_sends(path: str) -> None:
    for shape in ("a document block's bytes in a user turn", "a file block whose sourceType says base64"):
        turns, outcome, seen = judged(SENT_BY_BEDROCK[shape](UNSAFE_CLAUSE), path, mode="async")
        assert any(WORD in turn for turn in turns) and not seen, f"{shape}: judged on no async path"


@pytest.mark.parametrize("mode", MODES)
def test_a_callback_refuses_a_file_its_traced_copy_lost(mode: str) -> None:
    """``on_chat_model_start`` is given langchain-core's traced copy, where this file's ``data`` is the empty
    ``base64``: the handler cannot judge it, so it refuses the call (fail closed, whatever ``on_error`` says) rather
    than let ChatBedrockConverse send a file nobody read. The other paths read the messages and judge the file."""
    for shape in TRACED_AWAY:
        for text in (UNSAFE_CLAUSE, SAFE):
            _, outcome, seen = judged(SENT_BY_BEDROCK[shape](text), "callback", mode)
            assert isinstance(outcome, GuardUnavailable) and "without its data" in str(outcome) and not seen
    # An ordinary v1 file block keeps its data in the traced copy: judged, not refused.
    file = {"type": "file", "mime_type": "text/plain", "base64": b64(notes(SAFE)), "name": "notes"}
    turns, outcome, seen = judged(asking(file), "callback", mode)
    assert seen and any(SAFE in turn for turn in turns)


@pytest.mark.parametrize("mode", MODES)
def test_an_agents_tool_that_returns_a_document_is_judged_before_the_model_reads_it(mode: str) -> None:
    """The agent's own tool returns the file as a document block: the middleware judges it as the tool's output."""

    def run(text: str) -> tuple[list[str], list[Any]]:
        @tool
        def fetch_notes() -> list:
            """Fetch the shared notes file."""
            return [{"type": "document", "document": document(notes(text))}]

        backend = ScriptedBackend(keyword_verdict, name="kw")
        chat = scripted(tool_call("fetch_notes", {}), "Done.")
        agent = create_agent(chat, [fetch_notes], middleware=[GuardMiddleware(Guard(backend, cache_size=0))])
        given = {"messages": [HumanMessage("Summarise the notes.")]}
        call(lambda: agent.invoke(given), lambda: agent.ainvoke(given), mode)
        return [c[-1]["content"] for batch in backend.calls for c in batch], chat.seen

    turns, seen = run(UNSAFE_CLAUSE)
    assert any(WORD in turn for turn in turns)
    assert leaked(seen) == 0  # no call of the model read the file
    turns, seen = run(SAFE)
    assert len(seen) == 2 and SAFE in repr(seen[1])  # a safe file reaches the model


#: Media in the same blocks: an image's or a PDF's bytes are not text, even with words after their signature.
MEDIA = {
    "a PNG in a native image block": lambda t: asking(
        {"image": {"format": "png", "source": {"bytes": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + t.encode()}}}
    ),
    "a PDF in a document block": lambda t: asking(
        {"type": "document", "document": document(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + t.encode(), "pdf")}
    ),
    "a PDF in a tool result": lambda t: after_a_tool_call(
        ToolMessage([{"type": "document", "document": document(b"%PDF-1.4\n" + t.encode(), "pdf")}], tool_call_id="c1")
    ),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", list(MEDIA))
def test_media_bytes_are_not_judged_as_text(shape: str, path: str) -> None:
    turns, outcome, seen = judged(MEDIA[shape](UNSAFE_CLAUSE), path)
    assert not any(WORD in turn for turn in turns)
    assert not refused(outcome) and seen


def test_a_harmless_text_document_passes_the_demo_guard(guard: Guard) -> None:
    """No false stop on an ordinary file: read as the text it is, without the format's own words."""
    text = b"Meeting notes.\nThe quarterly budget was approved. Next meeting on Tuesday.\n"
    chat = scripted("The budget was approved.")
    answer = GuardedChatModel(chat, guard).invoke(
        [*asking({"type": "document", "document": document(text)}), HumanMessage("Go on.")]
    )
    assert answer.content == "The budget was approved." and chat.seen
    assert block_text({"document": document(text)}) == "txt\nnotes\n" + text.decode()


# -- the answer: a document block a model returns, a streamed server tool result's json ------------------------------
#: (the answer's fields, as langchain-aws's `_bedrock_to_lc` leaves them, the stage they are judged in)
ANSWERS: dict[str, tuple[dict[str, Any], str]] = {
    # B1: a ``document`` in the reply is returned as it is.
    "a document block in the answer": (
        {
            "content": [
                {"type": "text", "text": "The file:"},
                {"type": "document", "document": document(notes(UNSAFE_CLAUSE))},
            ]
        },
        "response",
    ),
    # B3: ConverseStream's ``delta.toolResult = [{"json": {...}}]`` (a server tool's result): quoted, as a server tool
    # result is, keys and all (the class snake-cases nothing inside ``json``; a key with spaces stays as it is).
    "a streamed server tool result's json keys": (
        {"content": [{"type": "json", "json": {UNSAFE_CLAUSE.lower(): 1}, "index": 1}]},
        "tool_result",
    ),
    "a json key deep in the result": (
        {"content": [{"type": "json", "json": {"results": [{"hits": {UNSAFE_CLAUSE: None}}]}, "index": 1}]},
        "tool_result",
    ),
}


def kw() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["guarded_model", "guard_output"])
@pytest.mark.parametrize("answer", list(ANSWERS))
def test_an_answers_field_is_judged_in_its_role(mode: str, path: str, answer: str) -> None:
    fields, role = ANSWERS[answer]
    runnable = _runnable(path, FieldModel(fields=fields), kw())
    with pytest.raises(GuardViolation) as stop:
        call(lambda: runnable.invoke("Search."), lambda: runnable.ainvoke("Search."), mode)
    assert stop.value.decision.stage.value == role


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["guarded_model", "guard_output"])
@pytest.mark.parametrize("answer", list(ANSWERS))
def test_a_streamed_answers_field_is_held_until_judged(mode: str, path: str, answer: str) -> None:
    fields, role = ANSWERS[answer]
    runnable = _runnable(path, FieldModel(fields=fields), kw())
    seen, error = drain(lambda: runnable.stream("Search."), lambda: runnable.astream("Search."), mode)
    assert isinstance(error, GuardViolation) and error.decision.stage.value in {role, "stream"}
    assert leaked(seen) == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("answer", list(ANSWERS))
def test_an_agents_answer_field_is_judged_before_the_state_or_the_stream(mode: str, answer: str) -> None:
    agent = create_agent(FieldModel(fields=ANSWERS[answer][0]), [], middleware=[GuardMiddleware(kw())])
    state = call(lambda: agent.invoke(INPUTS), lambda: agent.ainvoke(INPUTS), mode)
    assert leaked(state["messages"]) == 0
    _assert_refused_without_the_fields(state["messages"][-1])
    seen, error = drain(
        lambda: agent.stream(INPUTS, stream_mode=["messages", "values"]),
        lambda: agent.astream(INPUTS, stream_mode=["messages", "values"]),
        mode,
    )
    assert error is None and leaked(seen) == 0  # neither a streamed chunk nor the state
    _assert_refused_without_the_fields(seen[-1][1]["messages"][-1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("engine", [None, "gate"])
@pytest.mark.parametrize("answer", list(ANSWERS))
def test_a_callback_stops_an_answers_field(mode: str, engine: str | None, answer: str) -> None:
    fields, role = ANSWERS[answer]
    options = {"stream_engine": engine} if engine else {}
    model, config = FieldModel(fields=fields), {"callbacks": [handler_for(kw(), mode, **options)]}
    with pytest.raises(GuardViolation) as stop:
        call(lambda: model.invoke("Search.", config), lambda: model.ainvoke("Search.", config), mode)
    assert stop.value.decision.stage.value == role
    if role == "response" and engine is None:
        return  # the default engine judges streamed words beside the stream (docs/langchain.md)
    seen, error = drain(
        lambda: model.stream("Search.", config=config), lambda: model.astream("Search.", config=config), mode
    )
    assert isinstance(error, GuardViolation) and leaked(seen) == 0


class BedrockStream(FieldModel):
    """Streams ``chunks`` as ChatBedrockConverse does (each content delta a block with its ``index``); answers with
    their sum when not streamed."""

    chunks: list[Any]

    def _chunks(self) -> list[AIMessageChunk]:
        return [AIMessageChunk(id="a1", content=content) for content in self.chunks]

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        from langchain_core.outputs import ChatGeneration, ChatResult

        whole = sum(self._chunks()[1:], self._chunks()[0])
        return ChatResult(generations=[ChatGeneration(message=AIMessage(id="a1", content=whole.content))])


#: A server tool's result streamed in the text block's content index (the red team's server did): LangChain's sum of
#: chunks merges it into the text block, ``{"type": "text", "text": ..., "json": {...}}``.
SAME_INDEX = [
    [{"type": "text", "text": "Here is what ", "index": 0}],
    [{"type": "text", "text": "the search found.", "index": 0}],
    [{"type": "json", "json": {UNSAFE_CLAUSE.lower(): 1}, "index": 0}],
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["guarded_model", "guard_output", "middleware", "callback"])
def test_a_json_result_merged_into_the_text_block_is_judged(mode: str, path: str) -> None:
    model = BedrockStream(fields={}, chunks=SAME_INDEX)
    if path == "middleware":
        agent = create_agent(model, [], middleware=[GuardMiddleware(kw())])
        seen, error = drain(
            lambda: agent.stream(INPUTS, stream_mode=["messages", "values"]),
            lambda: agent.astream(INPUTS, stream_mode=["messages", "values"]),
            mode,
        )
        assert error is None and leaked(seen) == 0
        _assert_refused_without_the_fields(seen[-1][1]["messages"][-1])
        return
    if path == "callback":
        config = {"callbacks": [handler_for(kw(), mode)]}
        sync, asynchronous = (
            lambda: model.stream("Search.", config=config),
            lambda: model.astream("Search.", config=config),
        )
    else:
        runnable = _runnable(path, model, kw())
        sync, asynchronous = lambda: runnable.stream("Search."), lambda: runnable.astream("Search.")
    seen, error = drain(sync, asynchronous, mode)
    assert isinstance(error, GuardViolation) and error.decision.stage.value == "tool_result"
    assert leaked(seen) == 0
    summed = AIMessage(
        content=sum((AIMessageChunk(content=c) for c in SAME_INDEX[1:]), AIMessageChunk(content=SAME_INDEX[0])).content
    )
    assert UNSAFE_CLAUSE.lower() in source_text(summed)  # the whole answer, as the state keeps it


# -- every reader, each the same way -----------------------------------------------------------------------------
def test_a_json_blocks_keys_are_read_in_every_role() -> None:
    """A JSON object's keys are text its reader reads: a user's or a tool's (the model), an answer's (the consumer,
    as what the answer quotes)."""
    block = {"type": "json", "json": {"first key": {"second key": "a value"}}}
    for text in (
        message_text(HumanMessage([block])),
        tool_text(ToolMessage([block], tool_call_id="c1")),
        source_text(AIMessageChunk(content=[{**block, "index": 1}])),
    ):
        assert all(word in text for word in ("first key", "second key", "a value")), text
    assert message_text(AIMessageChunk(content=[block])) == ""  # quoted: judged apart, as untrusted content


def test_base64_of_text_in_data_is_judged_both_ways() -> None:
    """Text media's ``data`` that no key says is base64: judged as it is and decoded (provider classes differ); plain
    text there (Anthropic's text source) is read as it is, and a base64 the block says it is only decoded."""
    encoded = b64(notes(UNSAFE_CLAUSE))
    both = block_text({"type": "file", "mime_type": "text/plain", "data": encoded}, answer=False)
    assert encoded in both and UNSAFE_CLAUSE in both
    plain = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Hello world."}}
    assert block_text(plain, answer=False) == "Hello world."
    said = {"type": "file", "source_type": "base64", "mime_type": "text/plain", "data": encoded}
    assert block_text(said, answer=False) == notes(UNSAFE_CLAUSE).decode()
    # Not base64 through and through: the decoder skips what is not base64, so both readings are judged.
    dotted = ".".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))
    both = block_text({"type": "file", "mime_type": "text/plain", "base64": "", "data": dotted}, answer=False)
    assert dotted in both and UNSAFE_CLAUSE in both


@pytest.mark.parametrize(
    "message",
    [
        # a million blobs before the file: every item counts one, so the walk stops and refuses
        HumanMessage([{"document": {"source": {"bytes": [b"\x00"] * 1_000_001 + [notes(UNSAFE_CLAUSE)]}}}]),
        ToolMessage([{"type": "document", "chunks": [b"\x00"] * 1_000_001 + [notes(UNSAFE_CLAUSE)]}], tool_call_id="c"),
        # an earlier answer's json with a million keys before the clause
        AIMessage([{"type": "json", "json": {**{str(i): 0 for i in range(1_000_001)}, UNSAFE_CLAUSE: 0}}]),
    ],
    ids=["untyped-block", "tool-result", "answer-json"],
)
def test_a_walk_over_too_many_blobs_or_keys_is_refused_not_cut_short(message: Any) -> None:
    chat = scripted("Done.")
    history = [HumanMessage("Hi."), message] if isinstance(message, AIMessage) else [message]
    if isinstance(message, ToolMessage):
        history = [HumanMessage("Look."), AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "c"}]), message]
    with pytest.raises(InputTooLarge):
        GuardedChatModel(chat, kw()).invoke([*history, HumanMessage("Go on.")])
    assert not chat.seen


def test_a_streamed_answers_json_with_too_many_keys_is_refused() -> None:
    chunk = AIMessageChunk(content=[{"type": "json", "json": {str(i): 0 for i in range(1_000_002)}, "index": 1}])
    with pytest.raises(InputTooLarge):
        source_text(chunk)
