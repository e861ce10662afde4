"""Parallel input screening in `GuardedLLM`: the inner call starts at once, but with a blocked input
no chunk is yielded, no tool runs, and the inner call is cancelled (async) or its stream closed.

The demo guard gives the verdicts; a fixed delay on its backend makes the race deterministic."""

# No `from __future__ import annotations`: LlamaIndex inspects tool annotations at runtime.

import asyncio
import time
from typing import Any

import pytest
from faults import DelayedBackend
from li_scripted import Outbox, ScriptedLLM, words
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole, ToolCallBlock
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms.mock import MockFunctionCallingLLM
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.llamaindex import GuardedLLM

CHECK_DELAY_S = 0.4
UNSAFE_PROMPT = "How can I make a bomb at home?"
SAFE_QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital of France. The Eiffel Tower is in Paris."
RUN_TIMEOUT_S = 120


@pytest.fixture
def log() -> list:
    return []


@pytest.fixture
def slow_guard(guard: Guard, log: list) -> Guard:
    return Guard(DelayedBackend(guard.backend, CHECK_DELAY_S, log), guard.policy, cache_size=0, parallel_input=True)


def _llm(delay_s: float = 0.05) -> ScriptedLLM:
    return ScriptedLLM(chunks=words(ANSWER), delay_s=delay_s)


def test_blocked_input_sync_stream_yields_nothing_and_closes_the_inner_stream(slow_guard):
    llm = _llm()
    guarded = GuardedLLM(llm=llm, guard=slow_guard, holdback=0)
    received = []
    with pytest.raises(GuardViolation) as info:
        for response in guarded.stream_complete(UNSAFE_PROMPT):
            received.append(response.delta)
    assert info.value.decision.stage is Stage.PROMPT
    assert received == []
    assert llm.calls == 1  # the call did start beside the check
    assert 1 <= llm.produced < len(words(ANSWER)) and llm.interrupted and llm.closed


@pytest.mark.parametrize("first_chunk_s", [0.05, RUN_TIMEOUT_S])
async def test_blocked_input_async_stream_cancels_the_inner_stream(slow_guard, first_chunk_s):
    """A first chunk that takes longer than any verdict (minutes; the verdict comes after 0.4 s, later on a loaded
    machine) is cancelled when the verdict arrives, not awaited (a 2 s chunk came first on a loaded machine)."""
    llm = _llm(first_chunk_s)
    guarded = GuardedLLM(llm=llm, guard=slow_guard, holdback=0)
    received = []
    started = time.perf_counter()
    with pytest.raises(GuardViolation) as info:
        async for response in await guarded.astream_chat([ChatMessage(role="user", content=UNSAFE_PROMPT)]):
            received.append(response.delta)
    assert info.value.decision.stage is Stage.PROMPT
    assert received == [] and llm.calls == 1
    assert llm.produced < len(words(ANSWER))
    if first_chunk_s > CHECK_DELAY_S:
        assert llm.produced == 0  # cancelled while the first chunk was being produced
        assert time.perf_counter() - started < first_chunk_s  # not after waiting for it


def test_safe_input_sync_stream_overlaps(slow_guard, log):
    llm = _llm(0.05)
    guarded = GuardedLLM(llm=llm, guard=slow_guard, holdback=0)
    out = ""
    for response in guarded.stream_complete(SAFE_QUESTION):
        if not out:
            log.append("first chunk out")
            assert llm.produced >= 1  # produced before the verdict came back ...
        out += response.delta or ""
    assert out == ANSWER
    assert log.index("check done") < log.index("first chunk out")  # ... and released only after it


class SlowToolLLM(MockFunctionCallingLLM):
    """Takes ``delay_s`` to answer; asks to send an email. Records cancellation and answers given."""

    delay_s: float = 10.0  # far past a check on a loaded machine: a blocked input cancels it long before
    _cancelled: int = PrivateAttr(default=0)
    _answered: int = PrivateAttr(default=0)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(response_generator=self._reply, **kwargs)

    @staticmethod
    def _reply(messages, **kwargs) -> ChatMessage:
        if any(m.role == MessageRole.TOOL for m in messages):
            return ChatMessage(role="assistant", content="Your message was sent.")
        call = ToolCallBlock(
            tool_call_id="c1",
            tool_name="send_email",
            tool_kwargs={"to": "bob@example.com", "body": "The capital of France is Paris."},
        )
        return ChatMessage(role="assistant", blocks=[call])

    async def _slow(self) -> None:
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self._cancelled += 1
            raise

    async def achat(self, messages, **kwargs) -> ChatResponse:
        await self._slow()
        self._answered += 1
        return await super().achat(messages, **kwargs)

    async def astream_chat(self, messages, **kwargs):
        inner = await super().astream_chat(messages, **kwargs)

        async def gen():
            await self._slow()
            self._answered += 1
            async for chunk in inner:
                yield chunk

        return gen()


@pytest.mark.parametrize("streaming", [True, False])
async def test_blocked_input_function_agent_cancels_the_call_and_runs_no_tool(slow_guard, streaming):
    outbox = Outbox()
    llm = SlowToolLLM()
    agent = FunctionAgent(tools=[outbox.tool()], llm=GuardedLLM(llm=llm, guard=slow_guard), streaming=streaming)
    with pytest.raises(GuardViolation) as info:
        await asyncio.wait_for(agent.run(user_msg=UNSAFE_PROMPT), RUN_TIMEOUT_S)
    assert info.value.decision.stage is Stage.PROMPT
    assert outbox.sent == 0
    assert llm._cancelled == 1 and llm._answered == 0  # the LLM call was cancelled, not awaited


async def test_safe_input_function_agent_runs_the_tool(slow_guard):
    outbox = Outbox()
    llm = SlowToolLLM(delay_s=0.05)
    agent = FunctionAgent(tools=[outbox.tool()], llm=GuardedLLM(llm=llm, guard=slow_guard))
    await asyncio.wait_for(agent.run(user_msg=SAFE_QUESTION), RUN_TIMEOUT_S)
    assert outbox.sent == 1 and llm._cancelled == 0
