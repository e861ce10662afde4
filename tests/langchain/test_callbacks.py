"""GuardCallbackHandler / AsyncGuardCallbackHandler on real chat models, agents, tools and retrievers."""

from __future__ import annotations

import asyncio

import pytest
from langchain.agents import create_agent
from langchain_core.documents import Document
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.vectorstores import InMemoryVectorStore
from lc_fakes import (
    INJECTION,
    SAFE_ANSWER,
    SAFE_QUESTION,
    UNSAFE_CLAUSE,
    UNSAFE_PROMPT,
    scripted,
    store_of,
    tool_call,
)
from qwenguard.core import Guard, GuardUnavailable, GuardViolation
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

# A reply whose start is safe and whose second sentence is not.
MIXED = f"{SAFE_ANSWER} {UNSAFE_CLAUSE}"


def _assert_cut_before_the_clause(received: str, error: GuardViolation, handler=None) -> None:
    """The stream stopped inside the reply. With the strict ``"gate"`` engine before the clause was
    complete; with the default ``"pipelined"`` engine no more than ``max_unjudged`` characters after
    the text the guard had judged safe (the documented bound of a callback, which cannot hold text)."""
    assert MIXED.startswith(received)  # the consumer got a prefix, in order, nothing invented
    assert error.decision.stage.value == "stream"
    offset = error.decision.offset
    assert offset is not None and offset < len(MIXED)  # an offset in the answer as streamed (once)
    if handler is None or handler.stream_engine == "gate":
        assert UNSAFE_CLAUSE not in received  # ... and never the whole unsafe clause
        assert len(received) < len(MIXED) and offset <= len(received)
    else:
        assert len(received) <= offset + handler.max_unjudged


def _message_chunks_text(chunks) -> str:
    return "".join(c.text for c in chunks if isinstance(c, AIMessageChunk))


@pytest.mark.parametrize("handler_class", [GuardCallbackHandler, AsyncGuardCallbackHandler])
def test_messages_stream_never_receives_the_unsafe_clause_sync(guard, tools, handler_class):
    """The async handler too: LangChain swallows async-handler errors on its sync path, so the handler
    switches to sync checks there."""
    handler = handler_class(guard)
    agent = create_agent(scripted(MIXED), tools.all)
    received = []
    with pytest.raises(GuardViolation) as info:
        for chunk, _meta in agent.stream(
            {"messages": [HumanMessage(SAFE_QUESTION)]}, config={"callbacks": [handler]}, stream_mode="messages"
        ):
            received.append(chunk)
    _assert_cut_before_the_clause(_message_chunks_text(received), info.value, handler)
    assert handler.active_runs == 0


async def test_messages_stream_never_receives_the_unsafe_clause_async(guard, tools):
    handler = AsyncGuardCallbackHandler(guard)
    agent = create_agent(scripted(MIXED), tools.all)
    received = []
    with pytest.raises(GuardViolation) as info:
        async for chunk, _meta in agent.astream(
            {"messages": [HumanMessage(SAFE_QUESTION)]}, config={"callbacks": [handler]}, stream_mode="messages"
        ):
            received.append(chunk)
    _assert_cut_before_the_clause(_message_chunks_text(received), info.value, handler)
    assert handler.active_runs == 0


def _v3_text(event) -> str:
    if event.get("method") != "messages":
        return ""
    data = event["params"]["data"][0]
    if data.get("event") == "content-block-delta":
        return data["delta"].get("text", "")
    if data.get("event") == "content-block-finish" and data["content"].get("type") == "text":
        raise AssertionError("a finished text block reached the consumer")  # it repeats the whole text
    return ""


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
def test_v3_stream_events_sync(guard, tools):
    handler = GuardCallbackHandler(guard)
    agent = create_agent(scripted(MIXED), tools.all)
    received = []
    with pytest.raises(GuardViolation) as info:
        run = agent.stream_events(
            {"messages": [HumanMessage(SAFE_QUESTION)]}, config={"callbacks": [handler]}, version="v3"
        )
        for event in run:
            received.append(_v3_text(event))
    _assert_cut_before_the_clause("".join(received), info.value, handler)


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
async def test_v3_stream_events_async(guard, tools):
    handler = AsyncGuardCallbackHandler(guard)
    agent = create_agent(scripted(MIXED), tools.all)
    received = []
    with pytest.raises(GuardViolation) as info:
        run = await agent.astream_events(
            {"messages": [HumanMessage(SAFE_QUESTION)]}, config={"callbacks": [handler]}, version="v3"
        )
        async for event in run:
            received.append(_v3_text(event))
    _assert_cut_before_the_clause("".join(received), info.value, handler)


def test_chat_model_stream_sync_and_safe_answer_passes(guard):
    handler = GuardCallbackHandler(guard)
    chunks = list(scripted(SAFE_ANSWER).stream([HumanMessage(SAFE_QUESTION)], config={"callbacks": [handler]}))
    assert _message_chunks_text(chunks) == SAFE_ANSWER
    received = []
    with pytest.raises(GuardViolation) as info:
        for chunk in scripted(MIXED).stream([HumanMessage(SAFE_QUESTION)], config={"callbacks": [handler]}):
            received.append(chunk)
    _assert_cut_before_the_clause(_message_chunks_text(received), info.value, handler)
    assert handler.active_runs == 0


async def test_chat_model_astream(guard):
    handler = AsyncGuardCallbackHandler(guard)
    received = []
    with pytest.raises(GuardViolation) as info:
        async for chunk in scripted(MIXED).astream([HumanMessage(SAFE_QUESTION)], config={"callbacks": [handler]}):
            received.append(chunk)
    _assert_cut_before_the_clause(_message_chunks_text(received), info.value, handler)


def test_unsafe_prompt_stops_the_model_before_it_runs(guard):
    model = scripted(SAFE_ANSWER)
    with pytest.raises(GuardViolation) as info:
        model.invoke([HumanMessage(UNSAFE_PROMPT)], config={"callbacks": [GuardCallbackHandler(guard)]})
    assert info.value.decision.stage.value == "prompt" and "Violent" in info.value.decision.categories
    assert model.seen == []


async def test_unsafe_prompt_async(guard):
    model = scripted(SAFE_ANSWER)
    handler = AsyncGuardCallbackHandler(guard)
    with pytest.raises(GuardViolation):
        await model.ainvoke([HumanMessage(UNSAFE_PROMPT)], config={"callbacks": [handler]})
    assert model.seen == [] and handler.active_runs == 0


def test_unsafe_answer_without_streaming_is_caught_at_the_end(guard):
    with pytest.raises(GuardViolation) as info:
        scripted(UNSAFE_CLAUSE).invoke(
            [HumanMessage(SAFE_QUESTION)], config={"callbacks": [GuardCallbackHandler(guard)]}
        )
    assert info.value.decision.stage.value == "response"


def test_unsafe_tool_call_never_executes(guard, tools):
    agent = create_agent(
        scripted(tool_call("send_email", {"to": "friend@example.com", "body": UNSAFE_CLAUSE}), "Done."), tools.all
    )
    with pytest.raises(GuardViolation) as info:
        agent.invoke(
            {"messages": [HumanMessage("What is the capital of France?")]},
            config={"callbacks": [GuardCallbackHandler(guard)]},
        )
    assert info.value.decision.stage.value == "tool_call"
    assert tools.calls["send_email"] == 0


async def test_on_tool_start_blocks_a_direct_tool_call(guard, tools):
    args = {"to": "friend@example.com", "body": UNSAFE_CLAUSE}
    with pytest.raises(GuardViolation):
        tools.send_email.invoke(args, config={"callbacks": [GuardCallbackHandler(guard)]})
    handler = AsyncGuardCallbackHandler(guard)
    with pytest.raises(GuardViolation):
        await tools.send_email.ainvoke(args, config={"callbacks": [handler]})
    assert tools.calls["send_email"] == 0 and handler.active_runs == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_injected_tool_result_is_caught_before_the_model_sees_it(guard, tools, mode):
    model = scripted(tool_call("web_search", {"query": "capital of France"}), SAFE_ANSWER)
    agent = create_agent(model, tools.all)
    inputs = {"messages": [HumanMessage(SAFE_QUESTION)]}
    with pytest.raises(GuardViolation) as info:
        if mode == "sync":
            agent.invoke(inputs, config={"callbacks": [GuardCallbackHandler(guard)]})
        else:
            await agent.ainvoke(inputs, config={"callbacks": [AsyncGuardCallbackHandler(guard)]})
    assert info.value.decision.stage.value == "tool_result" and "Jailbreak" in info.value.decision.categories
    assert tools.calls["web_search"] == 1
    assert len(model.seen) == 1  # the model was never called with the injected result


def _store() -> InMemoryVectorStore:
    store = store_of([Document("Paris is the capital of France."), Document(INJECTION)])
    return store


async def test_retriever_end_raises_on_injected_document(guard):
    retriever = _store().as_retriever(search_kwargs={"k": 2})
    with pytest.raises(GuardViolation) as info:
        retriever.invoke(SAFE_QUESTION, config={"callbacks": [GuardCallbackHandler(guard)]})
    assert info.value.decision.stage.value == "retrieval"
    with pytest.raises(GuardViolation):
        await retriever.ainvoke(SAFE_QUESTION, config={"callbacks": [AsyncGuardCallbackHandler(guard)]})


async def test_one_handler_serves_concurrent_runs(guard, tools):
    handler = AsyncGuardCallbackHandler(guard)

    async def run(reply: str) -> str:
        agent = create_agent(scripted(reply), tools.all)
        text = ""
        async for chunk, _meta in agent.astream(
            {"messages": [HumanMessage(SAFE_QUESTION)]}, config={"callbacks": [handler]}, stream_mode="messages"
        ):
            text += chunk.text if isinstance(chunk, AIMessageChunk) else ""
        return text

    results = await asyncio.gather(run(SAFE_ANSWER), run(MIXED), run(SAFE_ANSWER), return_exceptions=True)
    assert results[0] == SAFE_ANSWER and results[2] == SAFE_ANSWER
    assert isinstance(results[1], GuardViolation)
    assert handler.active_runs == 0


class _BrokenBackend:
    """Fault injection: a backend whose every call fails."""

    name = "broken"

    def classify(self, conversations, *, timeout=None):
        raise ConnectionError("guard server down")

    async def aclassify(self, conversations, *, timeout=None):
        raise ConnectionError("guard server down")

    def close(self) -> None:
        pass


def test_guard_failure_fails_closed():
    model = scripted(SAFE_ANSWER)
    with pytest.raises(GuardUnavailable):
        model.invoke(
            [HumanMessage(SAFE_QUESTION)], config={"callbacks": [GuardCallbackHandler(Guard(_BrokenBackend()))]}
        )
    assert model.seen == []


def test_handler_settings():
    handler = GuardCallbackHandler.__new__(GuardCallbackHandler)
    assert GuardCallbackHandler.raise_error and GuardCallbackHandler.run_inline
    assert AsyncGuardCallbackHandler.raise_error and AsyncGuardCallbackHandler.run_inline
    assert isinstance(handler, GuardCallbackHandler)
    with pytest.raises(TypeError, match="Guard"):
        GuardCallbackHandler(object())


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_monitor_engine_stops_the_run(guard, tools, mode):
    """The StreamMonitor engine: cheaper, but it may raise a chunk or a sentence later (documented)."""
    reply = MIXED + " Then wait for the right moment." * 4
    agent = create_agent(scripted(reply), tools.all)
    inputs = {"messages": [HumanMessage(SAFE_QUESTION)]}
    received = ""
    with pytest.raises(GuardViolation) as info:
        if mode == "sync":
            handler = GuardCallbackHandler(guard, stream_engine="monitor")
            for chunk, _meta in agent.stream(inputs, config={"callbacks": [handler]}, stream_mode="messages"):
                received += chunk.text
        else:
            handler = AsyncGuardCallbackHandler(guard, stream_engine="monitor")
            async for chunk, _meta in agent.astream(inputs, config={"callbacks": [handler]}, stream_mode="messages"):
                received += chunk.text
    assert info.value.decision.stage.value == "stream"
    assert reply.startswith(received)
    assert handler.active_runs == 0
    with pytest.raises(ValueError, match="stream_engine"):
        GuardCallbackHandler(guard, stream_engine="fast")
    with pytest.raises(ValueError, match="max_unjudged"):
        GuardCallbackHandler(guard, max_unjudged=-1)


async def test_sync_handler_in_an_async_run(guard, tools):
    """And the strict engine: every chunk judged before it is yielded (the clause is never complete)."""
    agent = create_agent(scripted(MIXED), tools.all)
    handler = GuardCallbackHandler(guard, stream_engine="gate")
    received = []
    with pytest.raises(GuardViolation) as info:
        async for chunk, _meta in agent.astream(
            {"messages": [HumanMessage(SAFE_QUESTION)]},
            config={"callbacks": [handler]},
            stream_mode="messages",
        ):
            received.append(chunk)
    _assert_cut_before_the_clause(_message_chunks_text(received), info.value, handler)


@pytest.mark.parametrize("backend", ["demo", "recording"])
def test_the_gate_judges_each_chunk_on_the_streams_own_thread(guard, monkeypatch, backend):
    """The ``"gate"`` engine waits for every check before the chunk goes on: it runs the check where
    the chunk arrived (a worker thread it would only block on cost two thread switches a chunk, five
    times the engine's own cost with a fast guard: `python bench/overhead.py`)."""
    import threading

    from lc_fakes import RecordingBackend
    from qwenguard.core.streaming.gate_session import GateSession

    judged_on: list[str] = []
    session_check = GateSession.check

    def recording_check(self, conversation):
        judged_on.append(threading.current_thread().name)
        return session_check(self, conversation)

    monkeypatch.setattr(GateSession, "check", recording_check)
    judge = guard if backend == "demo" else Guard(RecordingBackend(guard.backend), cache_size=0)
    handler = GuardCallbackHandler(judge, stream_engine="gate")
    received = ""
    with pytest.raises(GuardViolation) as info:
        for chunk in scripted(MIXED).stream(SAFE_QUESTION, config={"callbacks": [handler]}):
            received += chunk.text
    _assert_cut_before_the_clause(received, info.value, handler)
    assert len(judged_on) > 3
    assert set(judged_on) == {threading.current_thread().name}


def test_a_check_no_worker_has_started_runs_on_the_stream_when_it_must_wait(guard, monkeypatch):
    """Every worker of the shared pool is busy (other streams' slow checks): when this stream must wait for
    its check (more than ``max_unjudged`` characters unjudged), it judges the queued check itself instead of
    waiting for a worker to come free first."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from qwenguard.integrations.langchain import _streaming

    pool = ThreadPoolExecutor(max_workers=1)
    release, freed = threading.Event(), threading.Event()

    def busy() -> None:  # the pool's only worker is taken until the test ends (60 s: a hang detector)
        release.wait(60)
        freed.set()

    pool.submit(busy)
    monkeypatch.setattr(_streaming, "_executor", lambda: pool)
    handler = GuardCallbackHandler(guard)  # the default engine with a Gen guard: "pipelined"
    try:
        received = "".join(c.text for c in scripted(SAFE_ANSWER).stream(SAFE_QUESTION, config={"callbacks": [handler]}))
        held = not freed.is_set()  # no clock: an elapsed-time bound fails on a loaded machine
    finally:
        release.set()
        pool.shutdown()
    assert handler.stream_engine == "pipelined"
    assert received == SAFE_ANSWER
    assert held  # the stream ended while the busy worker was still taken: not held until it came free


_LONG_SAFE_ANSWER = " ".join([SAFE_ANSWER] * 40)


class _RuleBackend:
    """A guard with no model (a rule): every check safe in microseconds, never releasing the GIL; or,
    from check ``slow_from`` on, 20 ms a check (a remote engine under load). Records where each ran."""

    name = "rule"

    def __init__(self, slow_from: int | None = None) -> None:
        self.slow_from = slow_from
        self.ran: list[tuple[bool, str]] = []  # (slow, thread name) per check

    def _one(self, conversation):
        from qwenguard.core.formats.prompts import moderation_mode, parse_verdict

        mode = moderation_mode(conversation)
        raw = "Safety: Safe\nCategories: None" + ("\nRefusal: No" if mode != "prompt" else "")
        return parse_verdict(raw, mode=mode, model=self.name)

    def classify(self, conversations, *, timeout=None):
        import threading
        import time

        slow = self.slow_from is not None and len(self.ran) >= self.slow_from
        if slow:
            time.sleep(0.02)
        self.ran.append((slow, threading.current_thread().name))
        return [self._one(c) for c in conversations]

    async def aclassify(self, conversations, *, timeout=None):
        return self.classify(conversations, timeout=timeout)

    def close(self) -> None:
        pass


class _CountingPool:
    """The callbacks' worker pool, counting the checks handed to it (each one a thread hand-off)."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="qwenguard-lc-stream")
        self.handed: list[int] = []  # the backend's check count at each hand-off

    def submit(self, fn, *args, **kwargs):
        self.handed.append(1)
        return self.pool.submit(fn, *args, **kwargs)


def _stream_through(monkeypatch, backend: _RuleBackend):
    """Stream the long safe answer through the default callback on ``backend``; the pool counts hand-offs."""
    from qwenguard.integrations.langchain import _streaming

    pool = _CountingPool()
    monkeypatch.setattr(_streaming, "_executor", lambda: pool)
    # The bar is a hand-off's cost on a quiet machine; a loaded one (a CI runner) can make this guard's
    # checks as slow. What is tested is the engine's choice for a guard under the bar.
    monkeypatch.setattr(_streaming, "INLINE_BELOW_S", 0.002, raising=False)
    handler = GuardCallbackHandler(Guard(backend, cache_size=0))
    try:
        received = "".join(
            c.text for c in scripted(_LONG_SAFE_ANSWER).stream(SAFE_QUESTION, config={"callbacks": [handler]})
        )
    finally:
        pool.pool.shutdown()
    return handler, backend, pool, received


def test_the_pipelined_engine_judges_a_guard_that_answers_at_once_on_the_streams_own_thread(monkeypatch):
    """A guard faster than a thread hand-off (a rule-based backend): handing each check to a worker only
    adds thread switches, 2-3x the engine's own cost a chunk (`python bench/overhead.py`). Once the checks
    the stream waited for showed that, the engine judges each due chunk where it arrived."""
    import threading

    handler, backend, pool, received = _stream_through(monkeypatch, _RuleBackend())
    assert handler.stream_engine == "pipelined"
    assert received == _LONG_SAFE_ANSWER
    assert len(backend.ran) > 100  # the prompt and most chunks were judged
    assert len(pool.handed) <= 0.25 * len(backend.ran), (len(pool.handed), len(backend.ran))
    here = threading.current_thread().name
    assert sum(name == here for _, name in backend.ran) >= 0.75 * len(backend.ran)


def test_the_pipelined_engine_moves_checks_beside_the_stream_when_the_guard_slows_down(monkeypatch):
    """The other way: a guard that was fast and now takes 20 ms a check is judged beside the stream again
    (its latency hidden) after the second slow check the stream waited for."""
    import threading

    _, backend, _, received = _stream_through(monkeypatch, _RuleBackend(slow_from=40))
    assert received == _LONG_SAFE_ANSWER
    here = threading.current_thread().name
    fast = [name for slow, name in backend.ran if not slow]
    slow = [name for slow, name in backend.ran if slow]
    assert sum(name == here for name in fast) >= 20  # judged where the chunks arrived while fast
    assert len(slow) >= 5
    assert sum(name.startswith("qwenguard-lc-stream") for name in slow) >= 0.5 * len(slow), slow


async def test_the_async_pipelined_engine_awaits_a_guard_that_answers_at_once_in_the_stream(monkeypatch):
    """The async twin: a check the stream would not wait for is a task of its own; with a guard that
    answers at once the stream awaits each check itself, no task per chunk."""
    from qwenguard.integrations.langchain import _streaming
    from qwenguard.integrations.langchain._streaming import PipelinedScreen

    monkeypatch.setattr(_streaming, "INLINE_BELOW_S", 0.002, raising=False)  # see the sync test
    tasks: list[int] = []
    start = PipelinedScreen._astart

    async def counting_start(self):
        tasks.append(1)
        await start(self)

    monkeypatch.setattr(PipelinedScreen, "_astart", counting_start)
    backend = _RuleBackend()
    handler = AsyncGuardCallbackHandler(Guard(backend, cache_size=0))
    model = scripted(_LONG_SAFE_ANSWER)
    received = "".join([c.text async for c in model.astream(SAFE_QUESTION, config={"callbacks": [handler]})])
    assert received == _LONG_SAFE_ANSWER
    assert len(backend.ran) > 100
    assert len(tasks) <= 0.25 * len(backend.ran), (len(tasks), len(backend.ran))


@pytest.mark.parametrize(("option", "value"), [("max_unjudged", "16"), ("max_in_flight", "2"), ("max_in_flight", 0)])
def test_a_count_option_of_the_wrong_type_or_range_names_itself(guard, option, value):
    """rt50a F2: a value read from an environment variable is a str: it failed as "'<' not supported between
    instances of 'str' and 'int'", naming no option."""
    with pytest.raises((TypeError, ValueError), match=option):
        GuardCallbackHandler(guard, **{option: value})
