"""Parallel input screening in the LangChain callback handlers: the model starts at once, but with a
blocked input no token reaches the consumer, no tool runs, and the model's stream is stopped.

The demo guard gives the verdicts; a fixed delay on its backend makes the race deterministic (the
model's first token is ready while the input check is still running)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from faults import DelayedBackend
from langchain.agents import create_agent
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import RunnableLambda
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_PROMPT, ScriptedChatModel, tool_call
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardRunnable

CHECK_DELAY_S = 0.4  # the input check takes this long ...
FIRST_TOKEN_S = 0.1  # ... while the model's first token is ready after this
REPLY = tool_call(
    "send_email", {"to": "bob@example.com", "body": "The capital of France is Paris."}, text="Let me send that for you."
)


class SlowChatModel(ScriptedChatModel):
    """`ScriptedChatModel` with a delay before its first token; logs each chunk it produces."""

    log: Any = None  # Any: pydantic would copy a list, and the test shares this one with the guard

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        self.log.append("model start")
        time.sleep(FIRST_TOKEN_S)
        for chunk in super()._stream(messages, stop=stop, **kwargs):
            self.log.append("chunk")
            yield chunk


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def slow_guard(guard: Guard, log: list[str]) -> Guard:
    # cache_size=0: every check pays the delay, whatever ran before in this session.
    return Guard(DelayedBackend(guard.backend, CHECK_DELAY_S, log), guard.policy, cache_size=0, parallel_input=True)


def _model(log: list[str]) -> SlowChatModel:
    return SlowChatModel(messages=iter([REPLY, "Paris is the capital of France."]), seen=[], log=log)


def _text(chunks: list[Any]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, AIMessageChunk))


def _assert_stopped_before_anything_left(
    log: list[str], received: list[Any], tools: Any, error: GuardViolation
) -> None:
    assert error.decision.stage is Stage.PROMPT
    assert received == []  # not one token reached the consumer
    assert tools.calls == {"send_email": 0, "web_search": 0}  # no tool ran
    assert log[0] == "model start"  # the model did start beside the check (parallel, not sequential)
    # ... and its stream was stopped at the first token: the reply has ~12 chunks plus a tool call.
    assert log.count("chunk") == 1


def test_blocked_input_agent_stream_sync(slow_guard, tools, log):
    handler = GuardCallbackHandler(slow_guard)
    assert handler.parallel_input  # follows the guard
    model = _model(log)
    agent = create_agent(model, tools.all)
    received: list[Any] = []
    with pytest.raises(GuardViolation) as info:
        for chunk, _meta in agent.stream(
            {"messages": [HumanMessage(UNSAFE_PROMPT)]}, config={"callbacks": [handler]}, stream_mode="messages"
        ):
            received.append(chunk)
    assert info.value.decision.stage is Stage.PROMPT
    _assert_stopped_before_anything_left(log, received, tools, info.value)
    assert len(model.seen) == 1 and handler.active_runs == 0


async def test_blocked_input_agent_stream_async(slow_guard, tools, log):
    handler = AsyncGuardCallbackHandler(slow_guard)
    model = _model(log)
    agent = create_agent(model, tools.all)
    received: list[Any] = []
    with pytest.raises(GuardViolation) as info:
        async for chunk, _meta in agent.astream(
            {"messages": [HumanMessage(UNSAFE_PROMPT)]}, config={"callbacks": [handler]}, stream_mode="messages"
        ):
            received.append(chunk)
    assert info.value.decision.stage is Stage.PROMPT
    _assert_stopped_before_anything_left(log, received, tools, info.value)
    assert handler.active_runs == 0


def test_blocked_input_plain_invoke_discards_the_answer(slow_guard, log):
    """Without streaming, a callback cannot interrupt the call; the answer never reaches the caller."""
    model = _model(log)
    with pytest.raises(GuardViolation) as info:
        model.invoke(UNSAFE_PROMPT, config={"callbacks": [GuardCallbackHandler(slow_guard)]})
    assert info.value.decision.stage is Stage.PROMPT
    assert log[0] == "model start"


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_safe_input_overlaps_and_runs_the_tool(slow_guard, tools, log, mode):
    model = _model(log)
    agent = create_agent(model, tools.all)
    inputs = {"messages": [HumanMessage(SAFE_QUESTION)]}
    received: list[Any] = []
    if mode == "sync":
        config = {"callbacks": [GuardCallbackHandler(slow_guard)]}
        received = [c for c, _ in agent.stream(inputs, config=config, stream_mode="messages")]
    else:
        config = {"callbacks": [AsyncGuardCallbackHandler(slow_guard)]}
        received = [c async for c, _ in agent.astream(inputs, config=config, stream_mode="messages")]
    # The model started and produced its first chunk before the input check came back ...
    assert log.index("model start") < log.index("chunk") < log.index("check done")
    # ... and nothing was lost: the whole answer, the tool, and the final answer went through.
    assert "Let me send that for you." in _text(received)
    assert "Paris is the capital of France." in _text(received)
    assert tools.calls["send_email"] == 1


def test_parallel_off_never_calls_the_model(guard, tools, log):
    """The sequential default: a blocked input stops the run before the model is asked at all."""
    model = _model(log)
    agent = create_agent(model, tools.all)
    handler = GuardCallbackHandler(guard, parallel_input=False)
    with pytest.raises(GuardViolation):
        agent.invoke({"messages": [HumanMessage(UNSAFE_PROMPT)]}, config={"callbacks": [handler]})
    assert model.seen == [] and "model start" not in log and tools.calls["send_email"] == 0


# -- GuardRunnable(runnable=model): the input check beside the model --------------------------------
PACE_S = 0.05  # between the paced model's chunks: its ~60 chunks take ~3 s, far past the input check
LONG_REPLY = " ".join(["Paris is the capital of France."] * 10)


class PacedChatModel(SlowChatModel):
    """`SlowChatModel` that also waits between chunks, like a model generating token by token."""

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in super()._stream(messages, stop=stop, run_manager=run_manager, **kwargs):
            yield chunk
            time.sleep(PACE_S)


def _paced(log: list[str], reply: str = LONG_REPLY) -> PacedChatModel:
    return PacedChatModel(messages=iter([reply]), seen=[], log=log)


class PacedPastTheVerdict(PacedChatModel):
    """`PacedChatModel` whose second chunk comes only once the input's check is done ("check done" in the log):
    on a loaded machine the check took longer than the whole answer (91 of 91 chunks were made before it), and a
    model that had already finished could not show that it was stopped. Logs "asked" when asked for its next
    chunk (the ask ends with that "chunk" logged, or the stream's end)."""

    def _stream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        for i, chunk in enumerate(super()._stream(messages, stop=stop, run_manager=run_manager, **kwargs)):
            yield chunk
            self.log.append("asked")
            for _ in range(int(HANG_S / PACE_S)):  # a hang detector, not a timing bound
                if i or "check done" in self.log:
                    break
                time.sleep(PACE_S)


HANG_S = 60.0


def _asked_and_not_answered(log: list[str]) -> bool:
    """A chunk is being made (the async fake makes each on a worker thread: one ask in flight may still finish)."""
    return [e for e in log if e in ("asked", "chunk")][-1:] == ["asked"]


def _chunks_after_the_verdict(log: list[str]) -> int:
    return log[log.index("check done") :].count("chunk")


async def _drain(chain: GuardRunnable, question: str, mode: str, log: list[str]) -> list[Any]:
    received: list[Any] = []
    if mode == "sync":
        for chunk in chain.stream(question):
            log.append("received")
            received.append(chunk)
    else:
        async for chunk in chain.astream(question):
            log.append("received")
            received.append(chunk)
    return received


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_runnable_blocked_input_stops_the_model_and_releases_nothing(slow_guard, log, mode):
    model = PacedPastTheVerdict(messages=iter([LONG_REPLY]), seen=[], log=log)
    chain = GuardRunnable(guard=slow_guard, runnable=model)  # parallel_input follows the guard
    received: list[Any] = []
    with pytest.raises(GuardViolation) as info:
        received = await _drain(chain, UNSAFE_PROMPT, mode, log)
    assert info.value.decision.stage is Stage.PROMPT
    assert received == [] and "received" not in log  # not one character reached the consumer
    assert log[0] == "model start" and log.index("chunk") < log.index("check done")  # beside the check
    # ... and was stopped soon after the verdict: a few chunks of the ~60 it would have made after it.
    for _ in range(int(HANG_S / PACE_S)):  # a hang detector, not a timing bound
        if not _asked_and_not_answered(log):
            break
        time.sleep(PACE_S)
    produced = log.count("chunk")
    time.sleep(4 * PACE_S)  # a model that was not stopped would be asked again and go on producing meanwhile
    assert log.count("chunk") == produced and _chunks_after_the_verdict(log) < 30, log


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_runnable_safe_input_overlaps_and_holds_the_answer_until_the_verdict(slow_guard, log, mode):
    chain = GuardRunnable(guard=slow_guard, runnable=_paced(log, SAFE_ANSWER))
    received = await _drain(chain, SAFE_QUESTION, mode, log)
    assert _text(received) == SAFE_ANSWER  # the whole answer, once judged
    # The model produced its first chunks before the input check came back; nothing went out before it.
    assert log.index("model start") < log.index("chunk") < log.index("check done") < log.index("received")


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_runnable_invoke_blocked_input_discards_the_answer(slow_guard, log, mode):
    chain = GuardRunnable(guard=slow_guard, runnable=_model(log))
    with pytest.raises(GuardViolation) as info:
        if mode == "sync":
            chain.invoke(UNSAFE_PROMPT)
        else:
            await chain.ainvoke(UNSAFE_PROMPT)
    assert info.value.decision.stage is Stage.PROMPT
    assert log[0] == "model start"


def test_runnable_parallel_off_never_calls_the_model(slow_guard, log):
    model = _paced(log)
    with pytest.raises(GuardViolation):
        list(GuardRunnable(guard=slow_guard, runnable=model, parallel_input=False).stream(UNSAFE_PROMPT))
    assert model.seen == [] and "model start" not in log


def test_runnable_model_error_while_the_input_is_pending_reports_the_blocked_input(slow_guard, log):
    """The input's verdict decides what is reported: a model that fails on a blocked prompt raises the violation."""

    def broken(value: Any) -> str:
        log.append("model start")
        raise RuntimeError("provider refused")

    chain = GuardRunnable(guard=slow_guard, runnable=RunnableLambda(broken))
    with pytest.raises(GuardViolation) as info:
        chain.invoke(UNSAFE_PROMPT)
    assert info.value.decision.stage is Stage.PROMPT
    with pytest.raises(RuntimeError, match="provider refused"):  # a safe input: the model's own error
        chain.invoke(SAFE_QUESTION)
