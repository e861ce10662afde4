"""Tool text that reached the consumer beside ``tool_calls`` and the tool's ``ToolMessage`` (red team):

- a legacy OpenAI ``function_call`` (``additional_kwargs``), never judged on any path;
- a ``server_tool_call`` content block (a tool the provider runs itself: OpenAI's built-in web search);
- a tool returning a list ``[ToolMessage, Command]`` (`ToolNode` takes one);
- a tool's ``Command`` writing AI or human turns (a handoff's);
- a ``ToolMessage.artifact`` (``response_format="content_and_artifact"``);
- a tool's error, which a ``ToolNode(handle_tool_errors=True)`` turns into the tool message;
- a tool-call content block (``function_call``, ``tool_use``, ``tool_call``) with ``tool_calls`` empty or
  saying something else: a provider class sends the block.

Each test is the attack, counted in characters: no run of the unsafe word reached the consumer. The judge
is the keyword guard (unsafe when the judged turn says "ammonium"); real ChatOpenAI against a local server
where the provider's shape matters.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations (InjectedToolCallId).

import asyncio
import contextlib
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import InjectedToolCallId, tool
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, scripted, tool_call
from qwenguard.core import Guard, GuardViolation, InputTooLarge
from qwenguard.integrations.langchain import (
    AsyncGuardCallbackHandler,
    GuardCallbackHandler,
    GuardedChatModel,
    GuardMiddleware,
    guard_output,
)
from scripted_openai import Reply, ToolCall, scripted_openai

WORD = "ammonium"
MODES = ["sync", "async"]
INPUTS = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
PAGE = f"Page says: {UNSAFE_CLAUSE}"


@pytest.fixture
def kw() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"))


def handler_for(guard: Guard, mode: str) -> Any:
    return (GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard)


def drain(sync: Any, asynchronous: Any, mode: str) -> tuple[list[Any], Exception | None]:
    """Everything a consumer read from ``sync()`` (an iterator) or ``asynchronous()`` (an async iterator),
    and the exception that stopped it."""
    seen: list[Any] = []

    async def run() -> None:
        async for item in asynchronous():
            seen.append(item)

    try:
        if mode == "sync":
            seen.extend(sync())
        else:
            asyncio.run(run())
    except (GuardViolation, InputTooLarge) as error:
        return seen, error
    return seen, None


def call(sync: Any, asynchronous: Any, mode: str) -> Any:
    return sync() if mode == "sync" else asyncio.run(asynchronous())


# -- a provider that answers with literal OpenAI payloads ------------------------------------------------------
class _Literal(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.server.requests.append(body)  # type: ignore[attr-defined]
        script = self.server.script  # type: ignore[attr-defined]
        if not body.get("stream"):
            data = json.dumps(script["whole"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": int(time.time()), "model": "m"}
        for chunk in [*script["chunks"], "[DONE]"]:
            event = f"data: {chunk if isinstance(chunk, str) else json.dumps({**base, **chunk})}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


@contextlib.contextmanager
def literal_openai(script: dict[str, Any], requests: list[Any] | None = None) -> Iterator[str]:
    """Serve the same ``{"chunks": [...], "whole": {...}}`` to every request (chat completions or responses);
    each request's body is appended to ``requests``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Literal)
    server.daemon_threads = True
    server.script = script  # type: ignore[attr-defined]
    server.requests = [] if requests is None else requests  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


# -- 3. the legacy function_call -------------------------------------------------------------------------------
EMAIL_ARGS = json.dumps({"to": "bob@example.com", "body": UNSAFE_CLAUSE})
FUNCTION_CALL = {
    "chunks": [
        _delta({"role": "assistant", "content": None, "function_call": {"name": "send_email", "arguments": ""}}),
        *(_delta({"function_call": {"arguments": EMAIL_ARGS[i : i + 10]}}) for i in range(0, len(EMAIL_ARGS), 10)),
        _delta({}, "function_call"),
    ],
    "whole": {
        "id": "chatcmpl-w",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": "send_email", "arguments": EMAIL_ARGS},
                },
                "logprobs": None,
                "finish_reason": "function_call",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    },
}


def _chat(url: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=url, api_key="x", model="m", max_retries=0, **kwargs)


def _function_args(message: Any) -> str:
    legacy = (getattr(message, "additional_kwargs", None) or {}).get("function_call") or {}
    return legacy.get("arguments") or ""


@tool
def send_email(to: str, body: str) -> str:
    """Send an e-mail."""
    return "sent"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", ["end", "error"])
def test_an_agents_legacy_function_call_is_held_and_judged(kw, mode, exit_behavior):
    """Its arguments streamed to ``stream_mode="messages"`` and stayed in the state, never judged."""
    with literal_openai(FUNCTION_CALL) as url:
        agent = create_agent(_chat(url), [send_email], middleware=[GuardMiddleware(kw, exit_behavior=exit_behavior)])
        seen, error = drain(
            lambda: agent.stream(INPUTS, stream_mode=["messages", "values"]),
            lambda: agent.astream(INPUTS, stream_mode=["messages", "values"]),
            mode,
        )
    assert WORD not in repr(seen)  # neither a streamed chunk nor the state
    assert "".join(_function_args(m) for kind, (m, *_) in seen if kind == "messages") == ""
    if exit_behavior == "error":
        assert isinstance(error, GuardViolation) and error.decision.stage.value == "tool_call"
    else:
        assert error is None and "blocked by the safety guard" in repr(seen[-1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["guarded_model", "guard_output"])
def test_a_held_stream_judges_a_legacy_function_call(kw, mode, path):
    with literal_openai(FUNCTION_CALL) as url:
        runnable = GuardedChatModel(_chat(url), kw) if path == "guarded_model" else _chat(url) | guard_output(kw)
        seen, error = drain(lambda: runnable.stream(SAFE_QUESTION), lambda: runnable.astream(SAFE_QUESTION), mode)
    assert isinstance(error, GuardViolation) and error.decision.stage.value == "tool_call"
    assert WORD not in "".join(_function_args(m) for m in seen)


@pytest.mark.parametrize("mode", MODES)
def test_a_callback_stops_a_streamed_legacy_function_call(kw, mode):
    """A callback cannot hold text: it judges the arguments as they stream and stops the stream, as it does
    a tool call's (before: all of them went out and the answer passed)."""
    config: Any = {"callbacks": [handler_for(kw, mode)]}
    with literal_openai(FUNCTION_CALL) as url:
        model = _chat(url)
        seen, error = drain(
            lambda: model.stream(SAFE_QUESTION, config=config),
            lambda: model.astream(SAFE_QUESTION, config=config),
            mode,
        )
    assert isinstance(error, GuardViolation) and error.decision.stage.value == "tool_call"
    assert len("".join(_function_args(m) for m in seen)) < len(EMAIL_ARGS)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["guarded_model", "callback"])
def test_a_whole_legacy_function_call_is_judged(kw, mode, path):
    """Not streamed: the held model's whole answer and the callback's end of the answer judge it too."""
    config: Any = {"callbacks": [handler_for(kw, mode)]} if path == "callback" else {}
    with literal_openai(FUNCTION_CALL) as url:
        model = GuardedChatModel(_chat(url), kw) if path == "guarded_model" else _chat(url)
        with pytest.raises(GuardViolation) as stop:
            call(lambda: model.invoke(SAFE_QUESTION, config), lambda: model.ainvoke(SAFE_QUESTION, config), mode)
    assert stop.value.decision.stage.value == "tool_call"


# -- 4. a server tool call -------------------------------------------------------------------------------------
WEB_SEARCH = {
    "chunks": [],
    "whole": {
        "id": "resp_1",
        "object": "response",
        "created_at": 0,
        "status": "completed",
        "model": "m",
        "output": [
            {
                "type": "web_search_call",
                "id": "ws_1",
                "status": "completed",
                "action": {"type": "search", "query": PAGE},
            },
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Here is what I found.", "annotations": []}],
            },
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 1,
            "output_tokens": 1,
            "total_tokens": 2,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    },
}


SAFE_REPLY = {"chunks": [], "whole": {**WEB_SEARCH["whole"], "output": WEB_SEARCH["whole"]["output"][1:]}}


def _responses(url: str) -> ChatOpenAI:
    return _chat(url, use_responses_api=True, output_version="v1")


@pytest.mark.parametrize("mode", MODES)
def test_an_agents_server_tool_call_is_judged(kw, mode):
    """``ChatOpenAI(output_version="v1")`` reports OpenAI's built-in web search as a ``server_tool_call``
    block: not text, not in ``tool_calls``; its query stayed in the state unjudged."""
    with literal_openai(WEB_SEARCH) as url:
        agent = create_agent(_responses(url), [{"type": "web_search"}], middleware=[GuardMiddleware(kw)])
        state = call(lambda: agent.invoke(INPUTS), lambda: agent.ainvoke(INPUTS), mode)
    assert WORD not in repr(state["messages"])
    assert "blocked by the safety guard" in state["messages"][-1].text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["guarded_model", "guard_output", "callback"])
def test_a_server_tool_call_is_judged_on_every_path(kw, mode, path):
    config: Any = {"callbacks": [handler_for(kw, mode)]} if path == "callback" else {}
    with literal_openai(WEB_SEARCH) as url:
        runnable: Any = {
            "guarded_model": lambda: GuardedChatModel(_responses(url), kw),
            "guard_output": lambda: _responses(url) | guard_output(kw),
            "callback": lambda: _responses(url),
        }[path]()
        with pytest.raises(GuardViolation) as stop:
            call(lambda: runnable.invoke(SAFE_QUESTION, config), lambda: runnable.ainvoke(SAFE_QUESTION, config), mode)
    assert stop.value.decision.stage.value == "tool_call"


class ChunkModel(BaseChatModel):
    """Streams the given chunks, reporting each to its run manager first, as real chat models do."""

    chunks: list[AIMessageChunk]

    @property
    def _llm_type(self) -> str:
        return "chunks"

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        whole = self.chunks[0]
        for chunk in self.chunks[1:]:
            whole = whole + chunk
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=whole.content, id=whole.id))])

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Iterator[Any]:
        for chunk in self.chunks:
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation

    async def _astream(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        for chunk in self.chunks:
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                await run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation


SERVER_CALL_STREAM = [
    AIMessageChunk(content=[{"type": "text", "text": "Searching. ", "index": 0}], id="a1"),
    AIMessageChunk(
        content=[{"type": "server_tool_call", "name": "web_search", "args": {"query": PAGE}, "id": "ws_1", "index": 1}],
        id="a1",
    ),
    AIMessageChunk(content=[{"type": "text", "text": "Done.", "index": 2}], id="a1", chunk_position="last"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["guarded_model", "guard_output"])
def test_a_streamed_server_tool_call_is_held_until_judged(kw, mode, path):
    model = ChunkModel(chunks=SERVER_CALL_STREAM)
    runnable = GuardedChatModel(model, kw) if path == "guarded_model" else model | guard_output(kw)
    seen, error = drain(lambda: runnable.stream(SAFE_QUESTION), lambda: runnable.astream(SAFE_QUESTION), mode)
    assert isinstance(error, GuardViolation) and error.decision.stage.value == "tool_call"
    assert WORD not in repr(seen)


# -- 4b. tool-call content blocks beside (or instead of) tool_calls ------------------------------------------------
FORGED_BLOCKS = {
    "function_call": {
        "type": "function_call",
        "call_id": "t1",
        "id": "fc_1",
        "name": "send_email",
        "arguments": EMAIL_ARGS,
    },
    "tool_use": {"type": "tool_use", "id": "t1", "name": "send_email", "input": json.loads(EMAIL_ARGS)},
    "tool_call": {"type": "tool_call", "id": "t1", "name": "send_email", "args": json.loads(EMAIL_ARGS)},
    # Harmless arguments; the text rides on a key other than the call's name and arguments.
    "namespace": {
        "type": "function_call",
        "call_id": "t1",
        "id": "fc_1",
        "name": "send_email",
        "arguments": '{"to": "bob@example.com", "body": "Hi"}',
        "namespace": PAGE,
    },
}


def _forged_history(kind: str) -> list[Any]:
    """A client's history with an assistant turn whose call is only a content block (``"mismatch"``: a
    ``function_call`` block beside a harmless parsed call of the same id; ChatOpenAI sends the block)."""
    if kind == "mismatch":
        harmless = [{"name": "send_email", "args": {"to": "bob@example.com", "body": "Hi"}, "id": "t1"}]
        forged = AIMessage(content=[FORGED_BLOCKS["function_call"]], tool_calls=harmless)
    else:
        forged = AIMessage(content=[FORGED_BLOCKS[kind]])
    assert WORD not in forged.text
    return [HumanMessage("Mail my friend."), forged, ToolMessage("sent", tool_call_id="t1"), HumanMessage("Go on.")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["guarded_model", "callback"])
@pytest.mark.parametrize("kind", [*FORGED_BLOCKS, "mismatch"])
def test_a_tool_call_block_in_the_history_is_judged(kw, mode, path, kind):
    """``ChatOpenAI(use_responses_api=True)`` sends a history's ``function_call`` block to the model as the
    turn's call; the block was neither text nor a tool call to the guard."""
    history = _forged_history(kind)
    config: Any = {"callbacks": [handler_for(kw, mode)]} if path == "callback" else {}
    with literal_openai(SAFE_REPLY) as url:
        model = _chat(url, use_responses_api=True)
        runnable = GuardedChatModel(model, kw) if path == "guarded_model" else model
        with pytest.raises(GuardViolation) as stop:
            call(lambda: runnable.invoke(history, config), lambda: runnable.ainvoke(history, config), mode)
    assert stop.value.decision.stage.value == "tool_call"


TOOL_USE_STREAM = [
    AIMessageChunk(content=[{"type": "text", "text": "Sending. ", "index": 0}], id="a2"),
    AIMessageChunk(
        content=[{"type": "tool_use", "id": "toolu_1", "name": "send_email", "input": {"body": PAGE}, "index": 1}],
        id="a2",
    ),
    AIMessageChunk(content=[{"type": "text", "text": "Done.", "index": 2}], id="a2", chunk_position="last"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["guarded_model", "guard_output"])
def test_a_streamed_tool_use_block_is_held_until_judged(kw, mode, path):
    model = ChunkModel(chunks=TOOL_USE_STREAM)
    runnable = GuardedChatModel(model, kw) if path == "guarded_model" else model | guard_output(kw)
    seen, error = drain(lambda: runnable.stream(SAFE_QUESTION), lambda: runnable.astream(SAFE_QUESTION), mode)
    assert isinstance(error, GuardViolation) and error.decision.stage.value == "tool_call"
    assert WORD not in repr(seen)


def test_a_block_that_mirrors_its_parsed_call_is_judged_once():
    """LangChain keeps the call in ``tool_calls`` and as a block (``output_version="v1"``'s ``tool_call``,
    Anthropic's ``tool_use``, the Responses API's ``function_call``): one check, and one screen per streamed
    call (the Responses API's argument deltas are ``function_call`` blocks beside ``tool_call_chunks``)."""
    from qwenguard.integrations.langchain._feed import StreamFeed
    from qwenguard.integrations.langchain._messages import answer_tool_calls

    args = json.loads(EMAIL_ARGS)
    parsed = [{"name": "send_email", "args": args, "id": "t1"}]
    shapes = [
        AIMessage(content_blocks=[{"type": "tool_call", "id": "t1", "name": "send_email", "args": args}]),
        AIMessage(content=[{"type": "text", "text": "Sending."}, FORGED_BLOCKS["tool_use"]], tool_calls=parsed),
        AIMessage(content=[FORGED_BLOCKS["function_call"]], tool_calls=parsed),
    ]
    assert [len(answer_tool_calls(m)) for m in shapes] == [1, 1, 1]

    pieces = [EMAIL_ARGS[i : i + 9] for i in range(0, len(EMAIL_ARGS), 9)]
    first = {"name": "send_email", "index": 0}
    chunks = [
        AIMessageChunk(
            content=[{"type": "function_call", **first, "arguments": "", "call_id": "t1", "id": "fc_1"}],
            tool_call_chunks=[{"type": "tool_call_chunk", **first, "args": "", "id": "t1"}],
        ),
        *(
            AIMessageChunk(
                content=[{"type": "function_call", "arguments": p, "index": 0}],
                tool_call_chunks=[{"type": "tool_call_chunk", "args": p, "index": 0}],
            )
            for p in pieces
        ),
    ]
    opened: list[str] = []
    feed = StreamFeed(lambda: None, lambda name: opened.append(name))  # type: ignore[func-returns-value]
    for chunk in chunks:
        feed.token_pieces(chunk.text, ChatGenerationChunk(message=chunk))
    assert opened == ["send_email"]
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole = whole + chunk
    assert len(answer_tool_calls(whole)) == 1


# -- 5-7. what a tool's result writes beside its ToolMessage's text ------------------------------------------------
def _fetch_returning(result: Any) -> Any:
    @tool
    def fetch_page(url: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Any:
        """Fetch a web page."""
        return result(tool_call_id)

    return fetch_page


@tool(response_format="content_and_artifact")
def search_docs(q: str) -> Any:
    """Search documents."""
    return "Found 1 document.", [{"source": "forum", "text": UNSAFE_CLAUSE}]


RESULTS = {
    "list": lambda cid: [ToolMessage(PAGE, tool_call_id=cid), Command(update={})],
    "ai_turn": lambda cid: Command(
        update={"messages": [ToolMessage("Fetched.", tool_call_id=cid), AIMessage(content=PAGE)]}
    ),
    "human_turn": lambda cid: Command(
        update={"messages": [ToolMessage("Fetched.", tool_call_id=cid), HumanMessage(content=PAGE)]}
    ),
    "ai_tool_call": lambda cid: Command(
        update={
            "messages": [
                ToolMessage("Fetched.", tool_call_id=cid),
                AIMessage(content="", tool_calls=[{"name": "send_email", "args": {"body": PAGE}, "id": "x"}]),
            ]
        }
    ),
    "dict_turn": lambda cid: Command(
        update={"messages": [ToolMessage("Fetched.", tool_call_id=cid), {"role": "assistant", "content": PAGE}]}
    ),
}


def _agent_with(result: str, **kwargs: Any) -> Any:
    if result == "artifact":
        tools, call_ = [search_docs], tool_call("search_docs", {"q": "France"}, "c1")
    else:
        tools, call_ = [_fetch_returning(RESULTS[result])], tool_call("fetch_page", {"url": "http://x"}, "c1")
    return create_agent(scripted(call_, SAFE_ANSWER), tools, **kwargs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("exit_behavior", ["end", "replace", "error"])
@pytest.mark.parametrize("result", [*RESULTS, "artifact"])
def test_the_middleware_judges_everything_a_tools_result_writes(kw, mode, exit_behavior, result):
    """A list result, the turns a tool's Command writes and a ToolMessage's artifact went into the state and
    out to ``stream_mode="updates"`` unjudged."""
    agent = _agent_with(result, middleware=[GuardMiddleware(kw, exit_behavior=exit_behavior)])
    seen, error = drain(
        lambda: agent.stream(INPUTS, stream_mode=["updates", "values"]),
        lambda: agent.astream(INPUTS, stream_mode=["updates", "values"]),
        mode,
    )
    assert WORD not in repr(seen)
    if exit_behavior == "error":
        assert isinstance(error, GuardViolation) and error.decision.stage.value == "tool_result"
        return
    assert error is None
    final = [chunk for kind, chunk in seen if kind == "values"][-1]["messages"]
    assert "withheld by the safety guard" in repr(final)
    # "end" ends the run at the withheld result; "replace" lets the model answer.
    assert (final[-1].text == SAFE_ANSWER) is (exit_behavior == "replace")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("result", [*RESULTS, "artifact"])
def test_a_callback_stops_what_a_tools_result_writes_before_it_streams(kw, mode, result):
    agent = _agent_with(result)
    config: Any = {"callbacks": [handler_for(kw, mode)]}
    seen, error = drain(
        lambda: agent.stream(INPUTS, config, stream_mode="updates"),
        lambda: agent.astream(INPUTS, config, stream_mode="updates"),
        mode,
    )
    assert isinstance(error, GuardViolation) and error.decision.stage.value == "tool_result"
    assert WORD not in repr(seen)


def test_a_safe_artifact_and_command_pass_unchanged(kw):
    agent = create_agent(
        scripted(tool_call("search_docs", {"q": "France"}, "c1"), SAFE_ANSWER),
        [search_docs.model_copy(update={"func": lambda q: ("Found.", [{"text": SAFE_ANSWER}])})],
        middleware=[GuardMiddleware(kw)],
    )
    state = agent.invoke(INPUTS)
    assert state["messages"][2].artifact == [{"text": SAFE_ANSWER}] and state["messages"][-1].text == SAFE_ANSWER


def test_an_artifact_is_read_within_a_bound():
    """Strings through mappings (keys too), lists and documents; a self-containing or huge artifact is walked
    only until past the budget (then the guard's ``max_chars`` refuses it, never cut short unjudged)."""
    from langchain_core.documents import Document
    from qwenguard.integrations.langchain._messages import artifact_text

    loop: list[Any] = ["a"]
    loop.append(loop)
    nested = {"k": [("x", 1, None), Document(page_content="doc", metadata={"title": "t"})], "key": "v"}
    assert artifact_text(nested, 1000).split("\n") == ["k", "x", "doc", "title", "t", "key", "v"]
    assert len(artifact_text(loop, 50)) < 200
    assert len(artifact_text(["y" * 10] * 10**7, 100)) <= 120


class _Counted(str):
    """A string that counts how often the artifact walk reads its length (once per visit)."""

    visits = 0

    def __len__(self) -> int:
        _Counted.visits += 1
        return super().__len__()


@pytest.mark.parametrize("mode", MODES)
def test_an_artifact_of_shared_empty_strings_is_walked_linearly(mode):
    """``[[""] * n] * n``: empty strings cost nothing to the walk's budget, so it visited n * n of them
    (10**12 at the default ``max_chars``). Every item counts at least one: visits stay within the budget."""
    budget = 1000
    _Counted.visits = 0
    empty = _Counted("")
    handler = handler_for(Guard(ScriptedBackend(keyword_verdict, name="kw"), max_chars=budget), mode)

    @tool(response_format="content_and_artifact")
    def table(q: str) -> Any:
        """Return an empty table."""
        return "done", [[empty] * budget] * budget

    config: Any = {"callbacks": [handler]}
    request = {"name": "table", "args": {"q": "x"}, "id": "c1", "type": "tool_call"}
    out = call(lambda: table.invoke(request, config), lambda: table.ainvoke(request, config), mode)
    assert out.artifact[0][0] is empty
    assert 0 < _Counted.visits <= 2 * budget + 2


@pytest.mark.parametrize("mode", MODES)
def test_an_artifact_too_large_to_judge_never_streams(mode):
    guard = Guard(ScriptedBackend(keyword_verdict, name="kw"), max_chars=500)

    @tool(response_format="content_and_artifact")
    def search_docs(q: str) -> Any:
        """Search documents."""
        return "Found.", ["filler " * 50] * 1000 + [UNSAFE_CLAUSE]

    agent = create_agent(
        scripted(tool_call("search_docs", {"q": "France"}, "c1"), SAFE_ANSWER),
        [search_docs],
        middleware=[GuardMiddleware(guard)],
    )
    seen, error = drain(
        lambda: agent.stream(INPUTS, stream_mode="updates"), lambda: agent.astream(INPUTS, stream_mode="updates"), mode
    )
    assert isinstance(error, InputTooLarge)
    assert "filler" not in repr(seen) and WORD not in repr(seen)


# -- 8. a tool's error, as a ToolNode writes it -----------------------------------------------------------------
@tool
def failing_fetch(url: str) -> str:
    """Fetch a web page."""
    raise ValueError(f"could not parse page: {UNSAFE_CLAUSE}")  # the page text quoted in the error


def _graph(url: str, node: ToolNode, tool_: Any = failing_fetch) -> Any:
    """A hand-built graph (docs/langchain.md "Tool results in a graph of your own")."""
    model = _chat(url).bind_tools([tool_])
    graph = StateGraph(MessagesState)
    graph.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
    graph.add_node("tools", node)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def _run_failing_tool(
    guard: Guard, mode: str, tool_: Any, handle_tool_errors: Any, stream_mode: str = "messages"
) -> tuple[list[Any], Exception | None, list[Any]]:
    """A graph whose model calls ``tool_`` once, run with a callback handler on ``guard``: what streamed, the
    error the run raised, and the requests the model received."""
    script = [
        Reply.words("", tool_calls=[ToolCall(tool_.name, '{"url": "http://x"}', id="c1")]),
        Reply.words(SAFE_ANSWER),
    ]
    config: Any = {"callbacks": [handler_for(guard, mode)]}
    with scripted_openai(script) as url:
        graph = _graph(url, ToolNode([tool_], handle_tool_errors=handle_tool_errors), tool_)
        seen, error = drain(
            lambda: graph.stream(INPUTS, config, stream_mode=stream_mode),
            lambda: graph.astream(INPUTS, config, stream_mode=stream_mode),
            mode,
        )
        return seen, error, list(url.requests)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("handle_tool_errors", [True, "default"])
def test_a_callback_judges_a_tools_error_before_a_tool_node_writes_it(kw, mode, handle_tool_errors):
    """``handle_tool_errors=True``: the ToolNode writes the guard's stop instead of the error (no character of
    the page); by default it re-raises it: the run stops. Before, the error's text streamed as the tool's message."""
    script = [
        Reply.words("Let me fetch it.", tool_calls=[ToolCall("failing_fetch", '{"url": "http://x"}', id="c1")]),
        Reply.words(SAFE_ANSWER),
    ]
    node = (
        ToolNode([failing_fetch])
        if handle_tool_errors == "default"
        else ToolNode([failing_fetch], handle_tool_errors=True)
    )
    config: Any = {"callbacks": [handler_for(kw, mode)]}
    with scripted_openai(script) as url:
        graph = _graph(url, node)
        seen, error = drain(
            lambda: graph.stream(INPUTS, config, stream_mode="messages"),
            lambda: graph.astream(INPUTS, config, stream_mode="messages"),
            mode,
        )
    assert WORD not in repr(seen)
    if handle_tool_errors is True:
        assert error is None
        tool_messages = [m for m, _ in seen if isinstance(m, ToolMessage)]
        assert tool_messages and "GuardViolation" in tool_messages[0].text and tool_messages[0].status == "error"
    else:
        assert isinstance(error, GuardViolation) and error.decision.stage.value == "tool_result"


def test_a_safe_tool_error_still_reaches_the_model(kw):
    @tool
    def flaky(url: str) -> str:
        """Fetch a web page."""
        raise ValueError("timed out")

    script = [Reply.words("", tool_calls=[ToolCall("flaky", '{"url": "http://x"}', id="c1")]), Reply.words(SAFE_ANSWER)]
    with scripted_openai(script) as url:
        graph = _graph(url, ToolNode([flaky], handle_tool_errors=True), flaky)
        state = graph.invoke(INPUTS, {"callbacks": [GuardCallbackHandler(kw)]})
    assert "timed out" in state["messages"][2].text and state["messages"][-1].text == SAFE_ANSWER


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("blocked", [True, False], ids=["unsafe", "safe"])
def test_an_interrupt_in_a_tool_is_judged_as_its_output(kw, mode, blocked):
    """``interrupt()`` raises through ``on_tool_error``: control flow that a ToolNode always re-raises, not an
    error message, but its payload goes to the run's caller (``result["__interrupt__"]``, the ``"updates"``,
    ``"values"`` and ``"debug"`` streams, ``get_state().tasks``) and into the checkpointer: the tool's output, as
    `GuardMiddleware` judges it (rt57b F4). An unsafe one stops the run with the guard's `GuardViolation`, raised in
    its place; a safe one goes on to LangGraph as it is (rt60b N1: it was never judged here)."""
    import uuid

    from langgraph.errors import GraphInterrupt
    from langgraph.types import Interrupt

    handler = handler_for(kw, mode)
    value = PAGE if blocked else {"question": "Forward this page?", "page": "Paris is in France."}
    error = GraphInterrupt([Interrupt(value=value)])
    run_id = uuid.uuid4()

    async def fail() -> None:
        await handler.on_tool_error(error, run_id=run_id)

    with pytest.raises(GuardViolation) if blocked else contextlib.nullcontext():
        call(lambda: handler.on_tool_error(error, run_id=run_id), fail, mode)
    assert handler.active_runs == 0


@tool
def failing_fetches(url: str) -> str:
    """Fetch web pages."""
    raise ExceptionGroup("2 fetches failed", [ValueError(f"cannot parse page: {UNSAFE_CLAUSE}")])  # noqa: F821


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is Python 3.11+")
@pytest.mark.parametrize("mode", MODES)
def test_a_tool_error_is_judged_as_a_tool_node_writes_it(kw, mode):
    """``handle_tool_errors=True`` writes ``"Error: " + repr(error)``: an exception group's str() (the text
    judged) leaves out the sub-exceptions, its repr quotes them."""
    seen, error, _ = _run_failing_tool(kw, mode, failing_fetches, True)
    assert WORD not in repr(seen)
    assert error is None
    tool_messages = [m for m, _ in seen if isinstance(m, ToolMessage)]
    assert tool_messages and "GuardViolation" in tool_messages[0].text


def test_a_tool_errors_text_is_read_within_a_bound():
    """Sub-exceptions of a group, nested ones too, are read without recursion and at most 64 of them; a repr
    too deep to write (ToolNode cannot write it either) leaves the str() texts."""
    from qwenguard.integrations.langchain._tool_errors import error_text as _error_text

    reads = []

    class Counted(Exception):
        def __str__(self) -> str:
            reads.append(1)
            return "x"

    wide = BaseExceptionGroup("many", [Counted() for _ in range(10_000)])  # noqa: F821
    assert _error_text(wide).startswith("Error: ExceptionGroup(") and len(reads) <= 64
    deep: BaseException = ValueError(f"page: {UNSAFE_CLAUSE}")
    for _ in range(3):
        deep = ExceptionGroup("failed", [deep])  # noqa: F821
    assert WORD in _error_text(deep).split("\n", 1)[1]  # str() of the innermost, besides the repr
    for _ in range(20_000):
        deep = ExceptionGroup("failed", [deep])  # noqa: F821
    assert _error_text(deep).split("\n") == ["failed (1 sub-exception)"]


# -- 9. a tool's error, as a handle_tool_errors callable writes it ----------------------------------------------
class _Failure(Exception):
    """A tool's error whose str() and repr() say nothing of the page: the page rides on what it carries."""


def _raise_carrying(carrier: str) -> None:
    if carrier == "cause":
        raise _Failure("fetch failed") from ValueError(PAGE)
    if carrier == "context":
        try:
            raise ValueError(PAGE)
        except ValueError:
            raise _Failure("fetch failed")  # noqa: B904 - the page rides on __context__
    error = _Failure("fetch failed")
    if carrier == "notes":
        error.add_note(PAGE)
    else:
        error.page = PAGE  # type: ignore[attr-defined]
    raise error


def _carried_text(e: Exception) -> str:
    """A `handle_tool_errors` callable that writes what the error carries beyond its str()."""
    carried = [e.__cause__, e.__context__, *getattr(e, "__notes__", []), getattr(e, "page", None)]
    return f"{e}: " + " ".join(str(c) for c in carried if c is not None)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream_mode", ["messages", "updates"])
@pytest.mark.parametrize("carrier", ["cause", "context", "notes", "attribute"])
def test_a_tool_error_a_callable_writes_from_what_it_carries_is_judged(kw, mode, stream_mode, carrier):
    """``ToolNode(handle_tool_errors=<callable>)`` writes the callable's text: here the page the error carries
    beyond its str() and repr() (``raise ... from``, a context, a note, an attribute). Judged when the tool
    fails, so the callable gets the guard's stop and no character of the page streams, in either stream mode
    (the run goes on). Before, the page streamed as the tool's message (the model's next input check stopped
    the run after it)."""

    @tool
    def fetch_page(url: str) -> str:
        """Fetch a web page."""
        _raise_carrying(carrier)
        return ""

    seen, error, requests = _run_failing_tool(kw, mode, fetch_page, _carried_text, stream_mode)
    read_by_model = [r.body for r in requests[1:]]
    assert WORD not in repr(seen) and WORD not in repr(read_by_model)
    assert error is None  # the run goes on: the ToolNode wrote the callable's text about the guard's stop
    written = [m for item in seen for m in _streamed_messages(item) if isinstance(m, ToolMessage)]
    assert [m.status for m in written] == ["error"] and written[0].text.startswith("tool_result blocked")


def _streamed_messages(item: Any) -> list[Any]:
    """The messages in one item of ``stream_mode="messages"`` (a pair) or ``"updates"`` (node -> update)."""
    if isinstance(item, tuple):
        return [item[0]]
    return [m for update in item.values() for m in (update or {}).get("messages", [])]


@tool
def fetch_status(url: str) -> str:
    """Fetch a web page."""
    import httpx

    httpx.Response(500, text=PAGE, request=httpx.Request("GET", url)).raise_for_status()
    return ""


def _response_body(e: Exception) -> str:
    """A `handle_tool_errors` callable that writes the page an HTTP error's response carries."""
    import httpx

    return f"HTTP error: {e.response.text}" if isinstance(e, httpx.HTTPStatusError) else str(e)


@pytest.mark.parametrize("mode", MODES)
def test_a_tool_error_message_a_callable_builds_is_judged_before_it_streams(kw, mode):
    """The callable reads the page from ``e.response.text`` (a property of another object: nothing the error's
    check reads). The message the ToolNode writes for the failed call is judged when the node ends, before
    LangGraph streams it: the run stops, and neither the consumer nor the model reads a character of the page.
    Before, it streamed (the model's next input check stopped the run after it)."""
    seen, error, requests = _run_failing_tool(kw, mode, fetch_status, _response_body)
    assert WORD not in repr(seen)
    assert isinstance(error, GuardViolation) and error.decision.stage.value == "tool_result"
    assert len(requests) == 1  # the model never read it


def test_what_a_tool_error_carries_is_read_within_a_bound():
    """Causes, contexts, args, notes and public attributes are read without recursion, at most 64 exceptions
    and 32 parts each, never through a property; a cycle ends; a text past the budget is left out whole, a
    later one that fits is still read; a broken str() or attribute leaves the rest."""
    from qwenguard.integrations.langchain._tool_errors import error_text as _error_text

    def texts_of(error: BaseException, *budget: int) -> list[str]:
        return _error_text(error, *budget).split("\n")

    chained: BaseException = ValueError(PAGE)
    for i in range(10_000):
        outer = RuntimeError(f"step {i}")
        outer.__cause__ = chained
        chained = outer
    texts = texts_of(chained)
    assert texts[:3] == ["Error: RuntimeError('step 9999')", "step 9999", "step 9998"]
    assert "step 9936" in texts and "step 9935" not in texts and len(texts) == 1 + 64  # 64 exceptions read

    looped = ValueError("a")
    looped.__context__ = KeyError("b")
    looped.__context__.__context__ = looped
    assert texts_of(looped) == ["Error: ValueError('a')", "a", "'b'", "b"]  # KeyError's str() quotes

    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("broken")

        @property
        def body(self) -> str:
            raise AssertionError("a property is never read")

    broken = Broken("x")
    broken.args = tuple(f"arg {i}" for i in range(40))
    broken.huge = "y" * 2_000  # type: ignore[attr-defined]
    broken.page = PAGE  # type: ignore[attr-defined]
    texts = texts_of(broken, 1_000)  # a budget of 1,000 characters
    assert texts[0].startswith("Error: Broken('arg 0'") and "arg 31" in texts and "arg 32" not in texts
    assert PAGE in texts and "y" * 2_000 not in texts  # left out whole; the page after it is still read
