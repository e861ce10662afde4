"""A second look at the LangChain handler's name checks (rt69k).

F2: the handler trusted an answer named with the run's ``metadata["lc_agent_name"]`` as the agent's own name. That
metadata is the caller's config too, which replaces ``create_agent``'s value and sets one for an unnamed agent: a
client's ``config={"metadata": {"lc_agent_name": X}}`` let a server's answer named ``X`` reach the state unjudged.
The name is trusted only where the agent's graph, running above the model, carries it (``create_agent(name=...)``).

F5: a Kimi-style call id (``functions.get_current_weather:0``, as vLLM's kimi_k2 parser and Moonshot send them)
read as a phrase once its frame was stripped (the tool's name has three words): two more guard requests per call.
The framed name is the call's own, judged with the call: the id is an identifier then.

F1: LangChain hands each ``stream_events(version="v3")`` event to the consumer before the handler's
``on_stream_event`` runs; a model whose ``_stream`` reports no tokens had one event (a whole answer, a tool call's
whole name) out before the stop, under ``stream_engine="gate"`` too. Such a run is refused under ``"gate"``.

ChatOpenAI against a server on loopback whose answer carries ``choices[0].message.name`` (`named_openai`); the
red team's models (`SilentModel`: chunks yielded without ``on_llm_new_token``) where no provider class is one.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.
import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool
from lc_fakes import UNSAFE_CLAUSE
from qwenguard.core import Guard, GuardUnavailable, GuardViolation
from scripted_openai import Reply, ToolCall, scripted_openai
from test_lc_rt69d_names import MODES, WORD, PiecesModel, chat, handler, invoke, kw, named_openai, stream_messages

GIVEN = {"messages": [{"role": "user", "content": "Capital of France?"}]}


def names_reaching_the_state(agent: Any, mode: str, config: Any) -> str | None:
    """The answer's name in the agent's state, or ``None`` where the guard stopped the run."""
    try:
        out = invoke(agent, mode, GIVEN, config)
    except GuardViolation:
        return None
    return str(out["messages"][-1].name)


# -- F2: a caller's lc_agent_name ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_a_callers_lc_agent_name_does_not_exempt_a_servers_answer_name(mode: str) -> None:
    # An unnamed agent (create_agent(name=...) renames a named agent's answer: the server's name never reaches the
    # state there, and a stream consumer's chunk is judged with the text).
    with named_openai(UNSAFE_CLAUSE) as (url, bodies):
        agent = create_agent(chat(url), tools=[])
        config = {"callbacks": [handler(mode, kw())], "metadata": {"lc_agent_name": UNSAFE_CLAUSE}}
        name = names_reaching_the_state(agent, mode, config)
    assert name is None or WORD not in name
    assert len(bodies) == 1  # refused: the named answer is not sent back to the model either


@pytest.mark.parametrize("mode", MODES)
def test_the_agents_own_name_stays_trusted_beside_a_callers_metadata(mode: str) -> None:
    # Control: the judge flags the agent's name; create_agent(name=...) is the application's, still not judged.
    with named_openai("ammonium_agent") as (url, _):
        agent = create_agent(chat(url), tools=[], name="ammonium_agent")
        config = {"callbacks": [handler(mode, kw())], "metadata": {"user": "someone"}}
        out = invoke(agent, mode, GIVEN, config)
    assert out["messages"][-1].text == "Paris is the capital of France."


# -- F1: a v3 stream whose model reports no tokens, under "gate" -------------------------------------------------
class SilentModel(PiecesModel):
    """A custom chat model that yields its chunks without reporting them (no ``run_manager.on_llm_new_token``)."""

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Iterator[Any]:
        for chunk in self.chunks:
            yield ChatGenerationChunk(message=chunk)

    async def _astream(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        for chunk in self.chunks:
            yield ChatGenerationChunk(message=chunk)


def tool_call_named(name: str) -> list[AIMessageChunk]:
    piece = {"type": "tool_call_chunk", "index": 0, "id": "call_1", "name": name, "args": ""}
    args = {"type": "tool_call_chunk", "index": 0, "id": None, "name": None, "args": '{"a": 1}'}
    return [
        AIMessageChunk(content="", id="m1", tool_call_chunks=[piece]),
        AIMessageChunk(content="", id="m1", tool_call_chunks=[args]),
        AIMessageChunk(content="", id="m1", chunk_position="last"),
    ]


SILENT_STREAMS = {
    "text": [
        AIMessageChunk(content="Sure. ", id="m1"),
        AIMessageChunk(content=UNSAFE_CLAUSE, id="m1"),
        AIMessageChunk(content=" Then more.", id="m1"),
        AIMessageChunk(content="", id="m1", chunk_position="last"),
    ],
    "tool name": tool_call_named(UNSAFE_CLAUSE),
}


def v3_events(model: Any, mode: str, config: Any, given: Any = "q") -> tuple[str, BaseException | None]:
    """Every v3 event the consumer got (as text), and the error that ended the stream, if any."""
    seen: list[str] = []

    async def arun() -> None:
        async for event in await model.astream_events(given, config=config, version="v3"):
            seen.append(repr(event))

    try:
        if mode == "sync":
            for event in model.stream_events(given, config=config, version="v3"):
                seen.append(repr(event))
        else:
            asyncio.run(arun())
    except (GuardViolation, GuardUnavailable) as stop:
        return "".join(seen), stop
    return "".join(seen), None


@pytest.mark.parametrize("label", list(SILENT_STREAMS))
@pytest.mark.parametrize("mode", MODES)
def test_a_v3_stream_without_tokens_is_refused_under_gate(mode: str, label: str) -> None:
    model = SilentModel(chunks=SILENT_STREAMS[label])
    seen, stop = v3_events(model, mode, {"callbacks": [handler(mode, kw(), stream_engine="gate")]})
    assert isinstance(stop, GuardUnavailable)
    assert "GuardMiddleware" in str(stop)
    assert WORD not in seen


@pytest.mark.parametrize("mode", MODES)
def test_a_v3_stream_of_a_model_that_reports_its_tokens_is_judged_under_gate(mode: str) -> None:
    # Control: a model reporting its tokens is judged from them before each event goes out.
    model = PiecesModel(chunks=SILENT_STREAMS["text"])
    seen, stop = v3_events(model, mode, {"callbacks": [handler(mode, kw(), stream_engine="gate")]})
    assert isinstance(stop, GuardViolation)
    assert WORD not in seen


# -- F5: Kimi-style call ids ---------------------------------------------------------------------------------------
@tool
def get_current_weather(location: str) -> str:
    """Weather for a city."""
    return f"Sunny in {location}"


@pytest.mark.parametrize("mode", MODES)
def test_a_kimi_style_id_framing_its_calls_name_is_not_judged_as_words(mode: str) -> None:
    backend = ScriptedBackend(keyword_verdict, name="kw")
    call_id = "functions.get_current_weather:0"
    script = [
        Reply.words("Checking.", tool_calls=[ToolCall("get_current_weather", '{"location": "Paris"}', id=call_id)]),
        Reply.words("It is sunny in Paris."),
    ]
    with scripted_openai(script) as url:
        agent = create_agent(chat(url), tools=[get_current_weather])
        _, stopped = stream_messages(agent, mode, {"callbacks": [handler(mode, Guard(backend, cache_size=0))]})
    assert not stopped
    assert not [conv for conv in backend.calls if call_id in repr(conv)]  # no check read the id as words


@pytest.mark.parametrize("mode", MODES)
def test_a_kimi_style_id_framing_a_phrase_is_still_judged(mode: str) -> None:
    # Control: a framed name other than the call's own is read as words (rt69d F2 kept).
    call_id = "functions.Mix_ammonium_nitrate_with_fuel_oil_in_a_pipe:0"
    script = [
        Reply.words("Checking.", tool_calls=[ToolCall("get_current_weather", '{"location": "Paris"}', id=call_id)]),
        Reply.words("It is sunny in Paris."),
    ]
    with scripted_openai(script) as url:
        agent = create_agent(chat(url), tools=[get_current_weather])
        _, stopped = stream_messages(agent, mode, {"callbacks": [handler(mode, kw())]})
    assert stopped


# -- F3: a long tool-call name streamed in pieces ------------------------------------------------------------------
SAFE_NAME = ("please call the weather service for the city of paris today " * 350)[:20_000]


def call_piece(name: str | None, args: str = "", call_id: str | None = None) -> AIMessageChunk:
    piece = {"type": "tool_call_chunk", "index": 0, "id": call_id, "name": name, "args": args}
    return AIMessageChunk(content="", id="m1", tool_call_chunks=[piece])


@pytest.mark.parametrize("engine", ["pipelined", "gate"])
@pytest.mark.parametrize("mode", MODES)
def test_a_long_streamed_name_is_read_in_windows_not_whole_at_every_check(mode: str, engine: str) -> None:
    # 20,000 characters of name in 20 pieces: every check read the whole name so far (~10x the name was sent).
    size = 1_000
    pieces = [SAFE_NAME[i : i + size] for i in range(0, len(SAFE_NAME), size)]
    chunks = [call_piece(pieces[0], "", "c1"), *(call_piece(p) for p in pieces[1:]), call_piece(None, "{}")]
    chunks.append(AIMessageChunk(content="", id="m1", chunk_position="last"))
    backend = ScriptedBackend(keyword_verdict, name="kw")
    config = {"callbacks": [handler(mode, Guard(backend, cache_size=0), stream_engine=engine)]}
    model = PiecesModel(chunks=chunks)

    async def arun() -> None:
        async for _ in model.astream("q", config=config):
            pass

    if mode == "sync":
        for _ in model.stream("q", config=config):
            pass
    else:
        asyncio.run(arun())
    read = sum(len(turn["content"]) for batch in backend.calls for conv in batch for turn in conv)
    assert read < 6 * len(SAFE_NAME)  # each piece read once, with a window before it (the answer's check: whole)


@pytest.mark.parametrize("mode", MODES)
def test_a_warm_cached_answer_of_an_agent_is_not_refused_under_gate(mode: str) -> None:
    """rt69q F2: a cache hit replays the finished answer as v3 events without tokens; inside an agent's graph each
    event reaches the handler before the graph's consumer, but the refusal meant for a model's own stream_events
    refused every warm cached answer under "gate"."""
    from langchain_core.caches import InMemoryCache
    from langchain_openai import ChatOpenAI

    given = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}
    with scripted_openai([Reply.words("Paris is the capital of France.")] * 2) as url:
        model = ChatOpenAI(
            base_url=url, api_key="x", model="scripted", max_retries=0, cache=InMemoryCache(), stream_usage=True
        )
        agent = create_agent(model, tools=[])
        for _ in ("cold", "warm"):
            config = {"callbacks": [handler(mode, kw(), stream_engine="gate")]}
            seen, stop = v3_events(agent.with_config(recursion_limit=10), mode, config, given)
            assert stop is None, stop
            assert "Paris" in seen
