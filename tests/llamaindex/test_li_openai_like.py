"""GuardedLLM around the real `OpenAILike` provider, against a scripted OpenAI-compatible server on
127.0.0.1 (tests/scripted_openai.py) that streams text and tool-call deltas the way the OpenAI API
does. Sync and async; what reached the consumer is counted in characters."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio
import json
import time

import pytest
from li_scripted import UNSAFE_CLAUSE, Outbox, exposure
from li_shared import openai_like
from llama_index.core.agent.workflow import AgentStream, FunctionAgent
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.tools import FunctionTool
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.llamaindex import GuardedLLM
from scripted_openai import Reply, ToolCall, scripted_openai

PROMPT = "Tell me about Paris."
SAFE_START = "The capital of France is Paris. " * 3
SAFE_TAIL = " The Eiffel Tower is in Paris." * 15  # time for the verdict to arrive while it streams
UNSAFE_TEXT = SAFE_START + UNSAFE_CLAUSE + SAFE_TAIL
CLAUSE_AT = UNSAFE_TEXT.index(UNSAFE_CLAUSE)
SAFE_TEXT = SAFE_START + "Paris is famous for its food and its art." + SAFE_TAIL[:90]
PACE = 0.03
RUN_TIMEOUT_S = 120


def clause_exposure(received: str) -> int:
    """Characters of the unsafe clause (or anything after it) the consumer received."""
    assert UNSAFE_TEXT.startswith(received), "the consumer received text the model did not send"
    return max(0, len(received) - CLAUSE_AT)


def assert_upstream_closed(url, stopped_at: float) -> None:
    """The server sent nothing more once the consumer saw the stop (the piece in flight aside)."""
    (response,) = url.responses
    assert response.wait(10)
    after_stop = [t for t in response.piece_times if t > stopped_at + 0.25]
    assert after_stop == [], f"the upstream kept streaming {len(after_stop)} pieces after the stop"
    if response.piece_times[-1] > stopped_at:  # the stop came mid-stream: the connection was closed
        assert response.closed_early and response.sent < response.planned


# -- text streams --------------------------------------------------------------------------------
@pytest.mark.parametrize("chat", [True, False], ids=["stream_chat", "stream_complete"])
def test_sync_stream_stops_before_the_clause(patient_guard: Guard, chat: bool) -> None:
    with scripted_openai(Reply.words(UNSAFE_TEXT), pace=PACE) as url:
        llm = GuardedLLM(llm=openai_like(url, chat=chat), guard=patient_guard)
        stream = llm.stream_chat([ChatMessage(role="user", content=PROMPT)]) if chat else llm.stream_complete(PROMPT)
        chunks = []
        with pytest.raises(GuardViolation) as info:
            for chunk in stream:
                chunks.append(chunk)
        stopped_at = time.perf_counter()
        assert info.value.decision.stage is Stage.STREAM
        received = "".join(c.delta for c in chunks)
        assert clause_exposure(received) == 0
        assert exposure(chunks) == {}
        assert_upstream_closed(url, stopped_at)


@pytest.mark.parametrize("chat", [True, False], ids=["astream_chat", "astream_complete"])
async def test_async_stream_stops_before_the_clause(patient_guard: Guard, chat: bool) -> None:
    with scripted_openai(Reply.words(UNSAFE_TEXT), pace=PACE) as url:
        llm = GuardedLLM(llm=openai_like(url, chat=chat), guard=patient_guard)
        stream = await (
            llm.astream_chat([ChatMessage(role="user", content=PROMPT)]) if chat else llm.astream_complete(PROMPT)
        )
        chunks = []
        with pytest.raises(GuardViolation):
            async for chunk in stream:
                chunks.append(chunk)
        stopped_at = time.perf_counter()
        received = "".join(c.delta for c in chunks)
        assert clause_exposure(received) == 0
        assert exposure(chunks) == {}
        assert_upstream_closed(url, stopped_at)


LONG_TEXT = "The capital of France is Paris. " * 100


def test_a_consumer_that_stops_reading_stops_the_upstream_sync(patient_guard: Guard) -> None:
    # holdback=0 releases at once, so the first chunk comes whatever the guard's speed.
    with scripted_openai(Reply.words(LONG_TEXT), pace=PACE) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=patient_guard, holdback=0)
        for _chunk in llm.stream_chat([ChatMessage(role="user", content=PROMPT)]):
            break
        (response,) = url.responses
        assert response.wait(10) and response.closed_early and response.sent < response.planned / 2


async def test_a_consumer_that_stops_reading_stops_the_upstream_async(patient_guard: Guard) -> None:
    with scripted_openai(Reply.words(LONG_TEXT), pace=PACE) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=patient_guard, holdback=0)
        stream = await llm.astream_chat([ChatMessage(role="user", content=PROMPT)])
        async for _chunk in stream:
            break
        await stream.aclose()
        (response,) = url.responses
        await asyncio.to_thread(response.wait, 10)
        assert response.closed_early and response.sent < response.planned / 2


async def test_safe_streams_arrive_whole_sync_and_async(patient_guard: Guard) -> None:
    with scripted_openai(Reply.words(SAFE_TEXT)) as url:
        for chat in (True, False):
            llm = GuardedLLM(llm=openai_like(url, chat=chat), guard=patient_guard)
            ask = [ChatMessage(role="user", content=PROMPT)]
            sync = list(llm.stream_chat(ask) if chat else llm.stream_complete(PROMPT))
            stream = await (llm.astream_chat(ask) if chat else llm.astream_complete(PROMPT))
            asynchronous = [c async for c in stream]
            for chunks in (sync, asynchronous):
                assert "".join(c.delta for c in chunks) == SAFE_TEXT
                assert (chunks[-1].message.content if chat else chunks[-1].text) == SAFE_TEXT


# -- tool calls ------------------------------------------------------------------------------------
EMAIL = ToolCall("send_email", json.dumps({"to": "bob@example.com", "body": UNSAFE_CLAUSE}), fragments=6)
WEATHER = ToolCall("get_weather", json.dumps({"city": "Paris"}), fragments=3)


def weather_tool(calls: list) -> FunctionTool:
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"It is sunny in {city}."

    return FunctionTool.from_defaults(get_weather)


def test_unsafe_tool_arguments_reach_no_consumer_sync(patient_guard: Guard) -> None:
    outbox = Outbox()
    with scripted_openai(Reply(["I", " will", " send", " it", " now."], [EMAIL]), pace=PACE) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=patient_guard)
        chunks = []
        with pytest.raises(GuardViolation) as info:
            for chunk in llm.stream_chat_with_tools([outbox.tool()], user_msg="Please e-mail Bob for me."):
                chunks.append(chunk)
        assert info.value.decision.stage is Stage.TOOL_CALL
        assert exposure(chunks) == {}
        assert "I will send it now.".startswith("".join(c.delta for c in chunks))
        with pytest.raises(GuardViolation):
            llm.predict_and_call([outbox.tool()], user_msg="Please e-mail Bob for me.")
    assert outbox.sent == 0


async def test_unsafe_tool_arguments_reach_no_consumer_async(patient_guard: Guard) -> None:
    outbox = Outbox()
    with scripted_openai(Reply(tool_calls=[EMAIL]), pace=PACE) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=patient_guard)
        chunks = []
        with pytest.raises(GuardViolation):
            async for chunk in await llm.astream_chat_with_tools([outbox.tool()], user_msg="Please e-mail Bob for me."):
                chunks.append(chunk)
        assert exposure(chunks) == {}
    assert outbox.sent == 0


def test_a_safe_tool_call_arrives_judged_on_the_final_chunk(patient_guard: Guard) -> None:
    with scripted_openai(Reply(tool_calls=[WEATHER])) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=patient_guard)
        chunks = list(llm.stream_chat_with_tools([weather_tool([])], user_msg="What is the weather in Paris?"))
        assert [llm.get_tool_calls_from_response(c, error_on_no_tool_call=False) for c in chunks[:-1]] == [[]] * (
            len(chunks) - 1
        )
        (call,) = llm.get_tool_calls_from_response(chunks[-1])
        assert (call.tool_name, call.tool_kwargs) == ("get_weather", {"city": "Paris"})


async def test_function_agent_over_openai_like_never_runs_a_blocked_tool(patient_guard: Guard) -> None:
    outbox = Outbox()
    with scripted_openai(Reply(tool_calls=[EMAIL]), pace=PACE) as url:
        agent = FunctionAgent(tools=[outbox.tool()], llm=GuardedLLM(llm=openai_like(url), guard=patient_guard))
        handler = agent.run(user_msg="Please e-mail Bob for me.")
        seen = []

        async def consume() -> None:
            async for event in handler.stream_events():
                seen.append(event)
            await handler

        with pytest.raises(GuardViolation) as info:
            await asyncio.wait_for(consume(), RUN_TIMEOUT_S)
    assert info.value.decision.stage is Stage.TOOL_CALL
    assert outbox.sent == 0
    streamed = [e for e in seen if isinstance(e, AgentStream)]
    text = " ".join(f"{e.delta} {e.response} {e.tool_calls} {e.raw} {e.thinking_delta}" for e in streamed)
    assert all(w not in text for w in ("ammonium", "nitrate", "fuse"))
    assert not any(type(e).__name__ in ("ToolCall", "ToolCallResult") for e in seen)


async def test_function_agent_over_openai_like_runs_a_safe_tool(patient_guard: Guard) -> None:
    calls: list = []
    with scripted_openai([Reply(tool_calls=[WEATHER]), Reply.words("It is sunny in Paris.")]) as url:
        agent = FunctionAgent(tools=[weather_tool(calls)], llm=GuardedLLM(llm=openai_like(url), guard=patient_guard))
        result = await asyncio.wait_for(agent.run(user_msg="What is the weather in Paris?"), RUN_TIMEOUT_S)
    assert calls == ["Paris"]
    assert str(result) == "It is sunny in Paris."
