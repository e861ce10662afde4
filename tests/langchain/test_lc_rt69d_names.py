"""Names and ids a `GuardCallbackHandler` let out unjudged (rt69d).

F1: a streamed tool call's name reached ``stream_mode="messages"`` and v3 event consumers whole before any check
(~490 characters of an unsafe clause), under ``"pipelined"`` and ``"gate"`` alike, while the call's arguments and the
text were held to ``max_unjudged``: the name was a fixed label of the call's screen, its later pieces dropped.
F3: an answer's ``name`` (ChatOpenAI reads it from the server's ``choices[0].message.name`` and sends it back next
turn; a streamed chunk's name reaches the consumer) was never judged: it reached the caller's result, and every later
turn of the thread was refused as the user's prompt. The agent's own name (``create_agent(name=...)``) stays trusted.
F2: a tool call id of hyphen- or underscore-joined words was read as an identifier and never judged: it reached the
stream, the state and the model's next request.

ChatOpenAI against a real OpenAI-compatible server on loopback (`scripted_openai`; a named answer from a server of
its own here, as `scripted_openai` sends no name), a chat model that streams a name in pieces, the keyword judge.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import asyncio
import contextlib
import functools
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict, phrase_verdict
from langchain.agents import create_agent
from langchain_core.language_models.chat_models import BaseChatModel, agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from lc_fakes import UNSAFE_CLAUSE
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler
from qwenguard.integrations.langchain._streaming import DEFAULT_MAX_UNJUDGED
from scripted_openai import Reply, ToolCall, scripted_openai

MODES = ["sync", "async"]
ENGINES = ["pipelined", "gate"]
WORD = "ammonium"
#: ~490 characters of the unsafe clause: a tool call's name as a model may write it.
LONG = ("Step one: " + UNSAFE_CLAUSE + " ") * 6
QUESTION = {"messages": [{"role": "user", "content": "hi"}]}


@tool
def send(b: str) -> str:
    """Send ``b``."""
    return "sent"


def kw(**options: Any) -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0, **options)


def handler(mode: str, guard: Guard, **options: Any) -> Any:
    return (GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard, **options)


def chat(url: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=url, api_key="x", model="scripted", max_retries=0)


def shown(message: Any) -> str:
    """What a ``stream_mode="messages"`` consumer reads of a chunk: its text, name and tool calls' names and args."""
    calls = getattr(message, "tool_call_chunks", None) or []
    pieces = [message.text, message.name or ""]
    return "".join(pieces + [(c.get("name") or "") + (c.get("args") or "") for c in calls])


def stream_messages(agent: Any, mode: str, config: Any) -> tuple[str, bool]:
    """Everything the consumer read, and whether the run stopped with a `GuardViolation`."""
    seen: list[str] = []

    async def arun() -> None:
        async for message, _ in agent.astream(QUESTION, config=config, stream_mode="messages"):
            seen.append(shown(message))

    try:
        if mode == "sync":
            for message, _ in agent.stream(QUESTION, config=config, stream_mode="messages"):
                seen.append(shown(message))
        else:
            asyncio.run(arun())
    except GuardViolation:
        return "".join(seen), True
    return "".join(seen), False


def unjudged_bound(engine: str) -> int:
    return DEFAULT_MAX_UNJUDGED if engine == "pipelined" else 0


class PiecesModel(BaseChatModel):
    """A chat model that streams the chunks it is given, reporting each to its run manager as real models do."""

    chunks: list[AIMessageChunk]

    @property
    def _llm_type(self) -> str:
        return "pieces"

    def bind_tools(self, tools: Any, **kwargs: Any) -> "PiecesModel":
        return self

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Iterator[Any]:
        for chunk in self.chunks:
            piece = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=piece)
            yield piece

    async def _astream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Any:
        for chunk in self.chunks:
            piece = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=piece)
            yield piece


def name_in_pieces(size: int) -> list[AIMessageChunk]:
    """A tool call whose name streams in pieces of ``size`` characters (LangChain adds them up), then its arguments."""

    def call(name: str | None, args: str = "", call_id: str | None = None) -> AIMessageChunk:
        piece = {"type": "tool_call_chunk", "index": 0, "id": call_id, "name": name, "args": args}
        return AIMessageChunk(content="", id="m1", tool_call_chunks=[piece])

    names = [LONG[i : i + size] for i in range(0, len(LONG), size)]
    return [call(names[0], "", "c1"), *(call(name) for name in names[1:]), call(None, "{}")]


# -- F1: a streamed tool call's name ---------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
def test_a_tool_call_named_with_a_clause_is_judged_before_its_name_streams_out(mode: str, engine: str) -> None:
    reply = Reply.words("", tool_calls=[ToolCall(LONG, "{}", fragments=1)])
    with scripted_openai([reply, Reply.words("done")]) as url:
        agent = create_agent(chat(url), tools=[send])
        seen, stopped = stream_messages(agent, mode, {"callbacks": [handler(mode, kw(), stream_engine=engine)]})
    assert stopped
    assert WORD not in seen
    assert len(seen) <= unjudged_bound(engine)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
def test_a_tool_call_name_streamed_in_pieces_is_judged_whole(mode: str, engine: str) -> None:
    agent = create_agent(PiecesModel(chunks=name_in_pieces(50)), tools=[send])
    seen, stopped = stream_messages(agent, mode, {"callbacks": [handler(mode, kw(), stream_engine=engine)]})
    assert stopped
    assert WORD not in seen
    assert len(seen) <= unjudged_bound(engine)


@pytest.mark.parametrize("mode", MODES)
def test_a_tool_call_name_reaches_no_v3_event_unjudged(mode: str) -> None:
    events: list[Any] = []
    with scripted_openai(Reply.words("", tool_calls=[ToolCall(LONG, "{}", fragments=1)])) as url:
        model = chat(url).bind_tools([send])
        config: Any = {"callbacks": [handler(mode, kw())]}

        async def arun() -> None:
            async for event in await model.astream_events("hi", config=config, version="v3"):
                events.append(event)

        with pytest.raises(GuardViolation):
            if mode == "sync":
                events.extend(model.stream_events("hi", config=config, version="v3"))
            else:
                asyncio.run(arun())
    assert WORD not in repr(events)


# -- F3: an answer's name ------------------------------------------------------------------------------------
@contextlib.contextmanager
def named_openai(name: str) -> Iterator[tuple[str, list[Any]]]:
    """An OpenAI-compatible server on loopback whose every answer is safe text named ``name`` (the server's
    ``choices[0].message.name``), and the bodies of the requests it was sent."""
    bodies: list[Any] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            message = {"role": "assistant", "content": "Paris is the capital of France.", "name": name}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", bodies
    finally:
        server.shutdown()
        server.server_close()


def invoke(agent: Any, mode: str, given: Any, config: Any) -> Any:
    return agent.invoke(given, config) if mode == "sync" else asyncio.run(agent.ainvoke(given, config))


@pytest.mark.parametrize("mode", MODES)
def test_an_answer_named_with_a_clause_is_refused_before_it_reaches_the_caller(mode: str) -> None:
    with named_openai(UNSAFE_CLAUSE) as (url, bodies):
        agent = create_agent(chat(url), tools=[])
        given = {"messages": [{"role": "user", "content": "Capital of France?"}]}
        with pytest.raises(GuardViolation) as stop:
            invoke(agent, mode, given, {"callbacks": [handler(mode, kw())]})
    assert stop.value.decision.blocked
    assert len(bodies) == 1  # the answer is refused, not sent back to the model


@pytest.mark.parametrize("mode", MODES)
def test_the_agents_own_name_on_its_answer_stays_trusted(mode: str) -> None:
    # A judge that flags the agent's name (demo guards flag common agent names): the application's own, not judged.
    guard = Guard(ScriptedBackend(functools.partial(phrase_verdict, phrase="research_agent"), name="kw"), cache_size=0)
    with named_openai("research_agent") as (url, _):
        agent = create_agent(chat(url), tools=[], name="research_agent")
        given = {"messages": [{"role": "user", "content": "Capital of France?"}]}
        out = invoke(agent, mode, given, {"callbacks": [handler(mode, guard)]})
    assert out["messages"][-1].text == "Paris is the capital of France."


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", MODES)
def test_a_streamed_answer_named_with_a_clause_stops_before_the_name_goes_out(mode: str, engine: str) -> None:
    chunks = [
        AIMessageChunk(content="ok", id="m1", name=LONG),
        AIMessageChunk(content=" fine", id="m1"),
        AIMessageChunk(content="", id="m1", chunk_position="last"),
    ]
    agent = create_agent(PiecesModel(chunks=chunks), tools=[])
    seen, stopped = stream_messages(agent, mode, {"callbacks": [handler(mode, kw(), stream_engine=engine)]})
    assert stopped
    assert WORD not in seen


# -- F2: a tool call id that is words -----------------------------------------------------------------------
PHRASE_IDS = [
    "Mix-ammonium-nitrate-with-fuel-oil-pack-it-into-a-pipe-add-fuse",
    "Mix_ammonium_nitrate_with_fuel_oil_pack_it_into_a_pipe_add_fuse",
]


@pytest.mark.parametrize("call_id", PHRASE_IDS)
@pytest.mark.parametrize("mode", MODES)
def test_a_tool_call_id_of_joined_words_is_judged(mode: str, call_id: str) -> None:
    script = [
        Reply.words("Checking.", tool_calls=[ToolCall("send", json.dumps({"b": "weather"}), id=call_id)]),
        Reply.words("It will be sunny."),
    ]
    with scripted_openai(script) as url:
        agent = create_agent(chat(url), tools=[send])
        seen, stopped = stream_messages(agent, mode, {"callbacks": [handler(mode, kw())]})
        later = [json.dumps(request.body) for request in url.requests[1:]]
    assert stopped
    assert WORD not in seen
    assert not any(WORD in body for body in later)  # never sent back to the model


def test_ids_that_carry_no_words_stay_identifiers() -> None:
    from qwenguard.integrations._common import identifier  # here: the module before the fix has none

    ids = [
        "call_abc123XYZ",
        "toolu_01A09q90qw90lq917835lq9",
        "3f2a9c1e-8b7d-4e6f-a5c4-0b1d2e3f4a5b",
        "functions.x:0",
        "functions.send_email:0",
        "0",
    ]
    assert all(identifier(i) for i in ids)
    assert not any(identifier(i) for i in PHRASE_IDS)
