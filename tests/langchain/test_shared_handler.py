"""One callback handler shared by every request of a server: one user's blocked input, disconnect or tool-call
id never reaches another user's run.

Application servers build one `GuardCallbackHandler` and pass it in every request's config. These tests are the
attacks a red-team pass found on that setup: an attacker's blocked prompt stopping everyone's tool calls (for good,
once the attacker disconnects), disconnected requests leaving their state (and a Stream model's session memory)
held, and two users' models sending the same tool-call id."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from faults import DelayedBackend, ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import RunnableConfig, RunnableLambda, RunnableParallel
from langchain_core.tools import tool
from lc_fakes import (
    SAFE_ANSWER,
    SAFE_QUESTION,
    UNSAFE_PROMPT,
    RecordingBackend,
    ScriptedChatModel,
    scripted,
    tool_call,
)
from qwenguard.core import Guard, GuardViolation, Stage
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

CHECK_DELAY_S = 0.4  # every check takes this long: the attacker's input check is pending while others run
EMAIL = {"to": "bob@example.com", "body": "The capital of France is Paris."}


class SlowChatModel(ScriptedChatModel):
    """A model call that takes ``hold_s`` (a real provider request in flight), then answers its script."""

    hold_s: float = 1.0

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        time.sleep(self.hold_s)
        return super()._generate(messages, stop=stop, **kw)

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        await asyncio.sleep(self.hold_s)
        return super()._generate(messages, stop=stop, **kw)


def _slow(hold_s: float = 1.0) -> SlowChatModel:
    return SlowChatModel(messages=iter([SAFE_ANSWER]), seen=[], hold_s=hold_s)


@pytest.fixture
def slow_guard(guard: Guard) -> Guard:
    # cache_size=0: every check pays the delay, whatever ran before in this session.
    return Guard(DelayedBackend(guard.backend, CHECK_DELAY_S, []), guard.policy, cache_size=0, parallel_input=True)


# -- another user's blocked input ------------------------------------------------------------------------
async def test_another_users_blocked_input_does_not_stop_my_tool_async(slow_guard, tools):
    handler = AsyncGuardCallbackHandler(slow_guard)
    config: Any = {"callbacks": [handler]}
    attacker = asyncio.create_task(_slow().ainvoke([HumanMessage(UNSAFE_PROMPT)], config=config))
    await asyncio.sleep(0.05)  # the attacker's input check is pending
    assert await tools.send_email.ainvoke(EMAIL, config=config) == "Message delivered."
    assert tools.calls["send_email"] == 1
    with pytest.raises(GuardViolation) as stopped:
        await attacker
    assert stopped.value.decision.stage is Stage.PROMPT  # the attacker's own run is still stopped
    assert handler.active_runs == 0


def test_another_users_blocked_input_does_not_stop_my_tool_sync(slow_guard, tools):
    handler = GuardCallbackHandler(slow_guard)
    config: Any = {"callbacks": [handler]}
    errors: list[BaseException] = []

    def attack() -> None:
        try:
            _slow().invoke([HumanMessage(UNSAFE_PROMPT)], config=config)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            errors.append(exc)

    attacker = threading.Thread(target=attack)
    attacker.start()
    time.sleep(0.05)
    try:
        assert tools.send_email.invoke(EMAIL, config=config) == "Message delivered."
    finally:
        attacker.join()
    assert tools.calls["send_email"] == 1
    assert len(errors) == 1 and isinstance(errors[0], GuardViolation)


async def test_a_disconnected_users_blocked_input_never_stops_later_tool_calls(slow_guard, tools):
    handler = AsyncGuardCallbackHandler(slow_guard)
    config: Any = {"callbacks": [handler]}
    attacker = asyncio.create_task(_slow(30).ainvoke([HumanMessage(UNSAFE_PROMPT)], config=config))
    await asyncio.sleep(0.05)
    attacker.cancel()  # the attacker disconnects while its input check is pending
    with pytest.raises(asyncio.CancelledError):
        await attacker
    await asyncio.sleep(CHECK_DELAY_S + 0.2)  # its check has blocked by now
    for _ in range(3):  # later requests, other users
        assert await tools.send_email.ainvoke(EMAIL, config=config) == "Message delivered."
    assert tools.calls["send_email"] == 3
    assert handler.active_runs == 0


async def test_a_tool_beside_the_model_in_one_call_still_waits_for_its_input(slow_guard, tools):
    """The reason tools wait at all: in one async call, a tool running beside the model does not run on a blocked
    input. (In a sync call the branches start in threads: a tool that starts before the model has registered its
    check runs, as it does without parallel input; documented in docs/langchain.md.)"""
    handler = AsyncGuardCallbackHandler(slow_guard)
    both = RunnableParallel(answer=_slow(0.05), mail=RunnableLambda(lambda _: EMAIL) | tools.send_email)
    with pytest.raises(GuardViolation) as stopped:
        await both.ainvoke([HumanMessage(UNSAFE_PROMPT)], config={"callbacks": [handler]})
    assert stopped.value.decision.stage is Stage.PROMPT
    assert tools.calls["send_email"] == 0


# -- disconnected requests -------------------------------------------------------------------------------
@pytest.fixture
def keyword_guard() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict))


@pytest.mark.parametrize("parallel_input", [False, True])
async def test_requests_cancelled_during_the_model_call_leave_no_state(keyword_guard, parallel_input):
    # LangChain's agenerate is cancelled at its gather and never reports on_llm_error: nothing else drops them.
    handler = AsyncGuardCallbackHandler(keyword_guard, parallel_input=parallel_input)
    requests = [
        asyncio.create_task(_slow(30).ainvoke([HumanMessage(f"{SAFE_QUESTION} {i}")], config={"callbacks": [handler]}))
        for i in range(10)
    ]
    await asyncio.sleep(0.1)
    for request in requests:
        request.cancel()
    await asyncio.gather(*requests, return_exceptions=True)
    await asyncio.sleep(0)  # done callbacks run on the loop's next turn
    assert handler.active_runs == 0


ANSWER = "Paris is the capital of France and it is known for the Eiffel Tower and its museums. " * 3


class PacedChatModel(ScriptedChatModel):
    """A model that streams a word every 10 ms: a client that leaves after a few words leaves mid-answer."""

    def _stream(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> Any:
        for chunk in super()._stream(messages, stop=stop, run_manager=run_manager, **kw):
            time.sleep(0.01)
            yield chunk


def _agent() -> Any:
    return create_agent(PacedChatModel(messages=iter([ANSWER]), seen=[]), tools=[])


async def _disconnect_after(agent: Any, handler: Any, question: str, chunks: int) -> int:
    stream = agent.astream(
        {"messages": [HumanMessage(question)]}, config={"callbacks": [handler]}, stream_mode="messages"
    )
    received = 0
    async for _ in stream:
        received += 1
        if received == chunks:
            break
    await stream.aclose()  # the client is gone: the server closes the stream
    return received


async def test_agent_streams_closed_by_disconnected_clients_leave_no_state(keyword_guard):
    handler = AsyncGuardCallbackHandler(keyword_guard)
    for i in range(20):
        assert await _disconnect_after(_agent(), handler, f"Tell me about Paris, request {i}.", 4) == 4
    await asyncio.sleep(0.05)
    assert handler.active_runs == 0


async def test_disconnected_clients_give_back_the_stream_models_session_memory():
    # The Stream model's session memory is shared by every stream: held sessions refuse everyone else's.
    guard = Guard.from_pretrained("demo", stream_model="demo-stream")
    try:
        sessions = guard.stream_backend
        handler = AsyncGuardCallbackHandler(guard)
        for i in range(6):
            await _disconnect_after(_agent(), handler, f"Tell me about Paris, request {i}.", 4)
        await asyncio.sleep(0.05)
        assert handler.active_runs == 0
        assert sessions.open_sessions == 0 and sessions.session_tokens == 0
    finally:
        guard.close()


# -- the same tool-call id from two users' models --------------------------------------------------------
@tool
def send_email(to: str, body: str) -> str:
    """Send an e-mail."""
    return "Message delivered."


def _judged_context(recording: RecordingBackend) -> str:
    (judged,) = [c for c in recording.conversations if "send_email" in c[-1]["content"]]
    return " ".join(m["content"] for m in judged[:-1])


async def test_two_users_tool_calls_with_the_same_id_are_judged_each_in_its_own_conversation(guard):
    # Deterministic ids ("functions.web_search:0", TGI's "0") repeat across users.
    recording = RecordingBackend(guard.backend)
    handler = AsyncGuardCallbackHandler(Guard(recording, guard.policy, cache_size=0))
    questions = {"A": "User A: please e-mail Bob the capital of France.", "B": "User B: what's the weather in Paris?"}
    both_answered, a_done = asyncio.Barrier(2), asyncio.Event()
    contexts: dict[str, str] = {}

    async def request(user: str, config: RunnableConfig) -> None:  # one user's agent loop, one call
        reply = tool_call("send_email", {**EMAIL, "body": f"Reply to {user}."}, call_id="functions.send_email:0")
        answer = await scripted(reply).ainvoke([HumanMessage(questions[user])], config=config)
        await both_answered.wait()  # both models answered before either tool starts
        if user == "B":
            await a_done.wait()  # one tool after the other: the recording is shared
        recording.conversations.clear()
        await send_email.ainvoke(answer.tool_calls[0], config=config)
        contexts[user] = _judged_context(recording)
        a_done.set()

    await asyncio.gather(
        *(RunnableLambda(request).ainvoke(user, config={"callbacks": [handler]}) for user in questions)  # type: ignore[arg-type]
    )
    assert questions["A"] in contexts["A"] and questions["B"] not in contexts["A"]
    assert questions["B"] in contexts["B"] and questions["A"] not in contexts["B"]


def test_a_hand_written_loop_still_judges_the_tool_call_in_its_conversation(guard):
    # The model and the tool called one after the other at the top level: two calls, one unique id.
    recording = RecordingBackend(guard.backend)
    config: Any = {"callbacks": [GuardCallbackHandler(Guard(recording, guard.policy, cache_size=0))]}
    question = "Please e-mail Bob the capital of France."
    answer = scripted(tool_call("send_email", EMAIL, call_id="call_8f2c")).invoke(
        [HumanMessage(question)], config=config
    )
    recording.conversations.clear()
    send_email.invoke(answer.tool_calls[0], config=config)
    assert question in _judged_context(recording)


def _two_word_verdict(conversation: Any) -> str:
    """Unsafe when the judged turn says "ammonium nitrate": one chunk alone never does."""
    last = conversation[-1]
    verdict = (
        "Safety: Unsafe\nCategories: Violent"
        if "ammonium nitrate" in last["content"]
        else "Safety: Safe\nCategories: None"
    )
    return verdict + ("\nRefusal: No" if last["role"] == "assistant" else "")


async def test_a_stream_pulled_one_chunk_per_task_is_judged_as_one_stream():
    # RunnableParallel.astream pulls each chunk in a task of its own: the run outlives the task it started in, and
    # its stream is judged whole (judged chunk by chunk, "ammonium" and " nitrate" would each look safe).
    handler = AsyncGuardCallbackHandler(Guard(ScriptedBackend(_two_word_verdict)))
    model = ScriptedChatModel(messages=iter(["ammonium nitrate with fuel oil, packed into a pipe."]), seen=[])
    with pytest.raises(GuardViolation) as stopped:
        async for _ in RunnableParallel(answer=model).astream(
            [HumanMessage(SAFE_QUESTION)], config={"callbacks": [handler]}
        ):
            pass
    assert stopped.value.decision.stage is Stage.STREAM
    assert handler.active_runs == 0


# -- a branch beside the model goes on after the block ----------------------------------------------------
async def _prepare_email(_: Any) -> dict[str, str]:
    await asyncio.sleep(CHECK_DELAY_S + 0.4)  # a lookup before the tool call: the input is blocked meanwhile
    return EMAIL


@pytest.mark.parametrize("parallel_input", [True, False], ids=["parallel", "first"])
async def test_a_tool_beside_the_model_does_not_run_after_its_calls_input_was_blocked(
    slow_guard, tools, parallel_input
):
    # asyncio.gather does not cancel the other branches when one raises: the mail branch reaches its tool later.
    handler = AsyncGuardCallbackHandler(slow_guard, parallel_input=parallel_input)
    both = RunnableParallel(answer=_slow(0.05), mail=RunnableLambda(_prepare_email) | tools.send_email)
    with pytest.raises(GuardViolation) as stopped:
        await both.ainvoke([HumanMessage(UNSAFE_PROMPT)], config={"callbacks": [handler]})
    assert stopped.value.decision.stage is Stage.PROMPT
    await asyncio.sleep(CHECK_DELAY_S + 0.8)  # the orphaned branch has reached its tool by now
    assert tools.calls["send_email"] == 0


def test_a_tool_beside_the_model_does_not_run_after_its_calls_input_was_blocked_sync(slow_guard, tools):
    handler = GuardCallbackHandler(slow_guard)
    prepare = RunnableLambda(lambda _: time.sleep(CHECK_DELAY_S + 0.4) or EMAIL)
    both = RunnableParallel(answer=_slow(0.05), mail=prepare | tools.send_email)
    with pytest.raises(GuardViolation):
        both.invoke([HumanMessage(UNSAFE_PROMPT)], config={"callbacks": [handler]})
    assert tools.calls["send_email"] == 0  # the thread pool waits for every branch before invoke raises
