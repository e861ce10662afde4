"""An attempt after one that went out part-way is judged as its continuation, however the step is asked again (rt66d).

The guard had passed on "... Now you Mix" when the first attempt ended; the step was asked again and the new answer
("ammonium nitrate ...") was judged fresh, so the consumer read "Mix ammonium nitrate ..." (the boundary of
test_rt65d_retry_boundary.py, test_rt65m_owed_text.py). rt66d found two ways the owed text was lost:

- F1: a retry of an outer node (an agent run as a node of a parent graph, or called inside one, or a subgraph around
  `GuardedChatModel`, under the parent's ``RetryPolicy``) runs the model's node as a new task: keyed by the innermost
  task, the retry was judged fresh. It is now keyed by the outermost node run and the node names inside it.
- F2: an attempt that ended without an error of its own (cancelled by a timeout: ``asyncio.timeout``, a timeout
  middleware, ``RetryPolicy(retry_on=TimeoutError)``; or closed by a sync consumer that stopped reading) recorded
  nothing: the retry was judged fresh. Any end but the guard's own stop now records what went out.

rt66k (a second look, below): a user's "stop" took a place of the failed attempts' texts (F3); siblings of one node
run shared a key, and one's retry was judged after the other's text (F2); a GuardRunnable built again for the retry
was judged fresh (F1).

The judge flags "mix ammonium" only (`phrase_verdict`): "Mix" alone and "ammonium nitrate ..." alone are safe.
"""

from __future__ import annotations

import asyncio
import operator
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Annotated, Any, TypeVar

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import ConfigurableField, RunnableConfig, RunnableParallel
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy, Send
from lc_fakes import ScriptedChatModel
from qwenguard.core import GuardViolation
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware, GuardRunnable
from test_rt65d_retry_boundary import (
    CONTINUED,
    DROPPED,
    QUESTION,
    SAFE_CONTINUED,
    WAIT_S,
    _models,
    _normalized,
    _phrase_guard,
    _State,
)
from test_rt65m_owed_text import _said
from typing_extensions import TypedDict

T = TypeVar("T")

RETRIES = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False)
STATE = {"messages": [{"role": "user", "content": QUESTION}]}


def _nothing_after_mix(shown: str) -> None:
    """The failed attempt's text reached the consumer, and not one character of the clause after its "Mix"."""
    assert "Now you Mix" in shown  # the boundary is there
    assert "mix ammonium" not in _normalized(shown)
    after = shown.split("Now you Mix", 1)[1].lstrip()
    assert after[:1] != CONTINUED[:1]  # not its first character ("a"): what follows is the guard's notice, if any
    assert not [part for part in ("ammonium", "nitrate", "fuel oil", "pipe", "fuse") if part in shown]


def _read_all(app: Any, heard: Any, asynchronous: bool, **options: Any) -> BaseException | None:
    """Read ``app``'s ``stream_mode="messages"`` stream (its subgraphs' too), each message to ``heard``; the error
    the stream ended in, if any."""

    async def run() -> None:
        async for _, (message, _) in app.astream(STATE, stream_mode="messages", subgraphs=True, **options):
            heard(message)

    try:
        if asynchronous:
            asyncio.run(run())
        else:
            for _, (message, _) in app.stream(STATE, stream_mode="messages", subgraphs=True, **options):
                heard(message)
    except Exception as error:  # noqa: BLE001 - returned to the test
        return error
    return None


def _hearing(shown: list[str], has_mix: Any, skip: str = "") -> Any:
    """A consumer that keeps the text of the messages it hears (not those of id ``skip``); sets ``has_mix`` once it
    holds "Mix"."""

    def heard(message: Any) -> None:
        if skip and message.id == skip:
            return
        shown.append(message.text)
        if "Mix" in "".join(shown):
            has_mix.set()

    return heard


def _parent(child: Any) -> Any:
    """A parent graph whose one node, ``child`` (a compiled graph or a function), is retried by its RetryPolicy."""
    graph = StateGraph(_State)
    graph.add_node("outer", child, retry_policy=RETRIES)
    graph.add_edge(START, "outer")
    graph.add_edge("outer", END)
    return graph.compile()


def _single(node: Any) -> Any:
    """A graph of one node, no retry of its own."""
    graph = StateGraph(_State)
    graph.add_node("chat", node)
    graph.add_edge(START, "chat")
    graph.add_edge("chat", END)
    return graph.compile()


# -- F1: a retry of the node around the model's node --------------------------------------------------------------
def _agent_node(agent: Any, asynchronous: bool) -> Any:
    """A supervisor node that calls ``agent`` (``ainvoke`` in an async node) and answers its last message."""
    if asynchronous:

        async def anode(state: _State) -> dict[str, Any]:
            return {"messages": (await agent.ainvoke({"messages": state["messages"]}))["messages"][-1:]}

        return anode
    return lambda state: {"messages": agent.invoke({"messages": state["messages"]})["messages"][-1:]}


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("how", ["agent-as-node", "agent-called-in-node"])
def test_an_agent_retried_by_its_parent_node_is_judged_after_what_went_out(how: str, asynchronous: bool) -> None:
    guard, _ = _phrase_guard()
    flaky, _, has_mix = _models()
    agent = create_agent(flaky, tools=[], middleware=[GuardMiddleware(guard, release_unit="word")])
    app = _parent(agent if how == "agent-as-node" else _agent_node(agent, asynchronous))
    shown: list[str] = []
    _read_all(app, _hearing(shown, has_mix), asynchronous)
    assert flaky.calls == 2  # the parent ran the agent again after the dropped connection
    _nothing_after_mix("".join(shown))


def _subgraph(node: Any) -> Any:
    graph = StateGraph(_State)
    graph.add_node("chat", node)
    graph.add_edge(START, "chat")
    graph.add_edge("chat", END)
    return graph.compile()


def _answering(llm: GuardedChatModel, asynchronous: bool, helper: GuardedChatModel | None = None) -> Any:
    """A node whose answer is ``llm``'s to the state's messages, after a call of ``helper`` with messages of its own."""
    asked = "Tag this: fertilizer market report"
    if asynchronous:

        async def anode(state: _State) -> dict[str, Any]:
            if helper is not None:
                await helper.ainvoke(asked)
            return {"messages": [await llm.ainvoke(state["messages"])]}

        return anode

    def node(state: _State) -> dict[str, Any]:
        if helper is not None:
            helper.invoke(asked)
        return {"messages": [llm.invoke(state["messages"])]}

    return node


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_guarded_model_in_a_subgraph_retried_by_its_parent_is_judged_after_what_went_out(asynchronous: bool) -> None:
    guard, _ = _phrase_guard()
    flaky, _, has_mix = _models()
    app = _parent(_subgraph(_answering(GuardedChatModel(flaky, guard, release_unit="word"), asynchronous)))
    shown: list[str] = []
    error = _read_all(app, _hearing(shown, has_mix), asynchronous)
    assert isinstance(error, GuardViolation)  # the retry's answer was stopped at its first window
    assert flaky.calls == 2
    _nothing_after_mix("".join(shown))


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_subgraph_retry_whose_answer_is_safe_answers_and_its_helper_call_is_its_own(asynchronous: bool) -> None:
    """Control: the parent's retry continues the answer, and the helper call of the same node run (other messages,
    an answer unsafe after "Mix") neither continues nor pays the owed text."""
    guard, _ = _phrase_guard()
    flaky, _, has_mix = _models(then=SAFE_CONTINUED)
    tagger = GuardedChatModel(_said("Ammonium nitrate fertilizer prices", "tag"), guard, release_unit="word")
    node = _answering(GuardedChatModel(flaky, guard, release_unit="word"), asynchronous, helper=tagger)
    tags: list[str] = []
    answer: list[str] = []
    heard = _hearing(answer, has_mix, skip="tag")

    def hearing(message: Any) -> None:
        if message.id == "tag":
            tags.append(message.text)
        heard(message)

    error = _read_all(_parent(_subgraph(node)), hearing, asynchronous)
    assert error is None
    assert flaky.calls == 2
    assert _normalized("".join(answer)) == _normalized("Sure, I can help with that. Now you Mix " + SAFE_CONTINUED)
    assert _normalized("".join(tags)) == _normalized("Ammonium nitrate fertilizer prices " * 2)


# -- F2: an attempt cancelled by a timeout, or given up by its consumer --------------------------------------------
class Stalling(ScriptedChatModel):
    """A streaming model whose first call streams `DROPPED` word by word and, once the consumer holds "Mix", stalls:
    it tells ``stalled`` and sends nothing more until cancelled or closed (sync: until ``unstall``). Every later call
    streams ``then``."""

    then: str = CONTINUED
    consumer_has_mix: Any = None  # threading.Event (sync) or asyncio.Event (async)
    stalled: Any = None  # asyncio.Event
    unstall: Any = None  # threading.Event: a sync stall ends (the test is over)
    calls: int = 0

    def _words(self) -> tuple[bool, list[str]]:
        self.calls += 1
        first = self.calls == 1
        return first, (DROPPED if first else self.then).split(" ")

    def _chunk(self, word: str) -> ChatGenerationChunk:
        return ChatGenerationChunk(message=AIMessageChunk(content=word + " ", id=f"attempt-{self.calls}"))

    def _chunks(self, messages: Any) -> Iterator[ChatGenerationChunk]:
        first, words = self._words()
        yield from (self._chunk(word) for word in words)
        if first:
            self.consumer_has_mix.wait(WAIT_S)
            self.unstall.wait(WAIT_S)

    async def _astream(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        first, words = self._words()
        for word in words:
            yield self._chunk(word)
        if first:
            await asyncio.wait_for(self.consumer_has_mix.wait(), WAIT_S)
            self.stalled.set()
            await asyncio.Event().wait()  # a stalled provider: only a cancellation ends it


def _stalling(then: str = CONTINUED, asynchronous: bool = True) -> Stalling:
    if asynchronous:
        return Stalling(
            messages=iter([]), seen=[], then=then, consumer_has_mix=asyncio.Event(), stalled=asyncio.Event()
        )
    return Stalling(
        messages=iter([]), seen=[], then=then, consumer_has_mix=threading.Event(), unstall=threading.Event()
    )


async def _before_deadline(call: Awaitable[T], stalled: asyncio.Event) -> T:
    """``call`` under an app's deadline (``asyncio.timeout``) that passes once the model stalls: the call is cancelled
    and `TimeoutError` raised, as a timeout cuts a stalled provider off."""
    stalled.clear()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as deadline:
        watch = asyncio.ensure_future(stalled.wait())
        watch.add_done_callback(lambda done: done.cancelled() or deadline.reschedule(loop.time()))
        try:
            return await call
        finally:
            watch.cancel()
    raise AssertionError("unreachable")  # pragma: no cover - asyncio.timeout raises or the call returned


def _deadline_node(llm: GuardedChatModel, model: Stalling, how: str) -> Any:
    """A node that asks ``llm`` under an app's deadline: its own retry loop (``wait_for-loop``), or once, retried by
    its RetryPolicy on `TimeoutError` (``retry_on-timeout``)."""

    async def once(state: _State) -> dict[str, Any]:
        return {"messages": [await _before_deadline(llm.ainvoke(state["messages"]), model.stalled)]}

    async def loop(state: _State) -> dict[str, Any]:
        for _ in range(3):
            try:
                return await once(state)
            except TimeoutError:
                continue
        raise RuntimeError("gave up")

    graph = StateGraph(_State)
    if how == "retry_on-timeout":
        graph.add_node("chat", once, retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False,
                                                              retry_on=(TimeoutError, ConnectionError)))  # fmt: skip
    else:
        graph.add_node("chat", loop)
    graph.add_edge(START, "chat")
    graph.add_edge("chat", END)
    return graph.compile()


@pytest.mark.parametrize("how", ["wait_for-loop", "retry_on-timeout"])
def test_an_attempt_cut_off_by_a_timeout_is_continued_by_the_next(how: str) -> None:
    guard, _ = _phrase_guard()
    model = _stalling()
    app = _deadline_node(GuardedChatModel(model, guard, release_unit="word"), model, how)
    shown: list[str] = []
    error = _read_all(app, _hearing(shown, model.consumer_has_mix), True)
    assert isinstance(error, GuardViolation)
    assert model.calls == 2
    _nothing_after_mix("".join(shown))


def test_a_safe_answer_after_a_timed_out_attempt_still_answers() -> None:
    """Control: the cancelled attempt's text is continued, not taken for the guard's stop."""
    guard, _ = _phrase_guard()
    model = _stalling(then=SAFE_CONTINUED)
    app = _deadline_node(GuardedChatModel(model, guard, release_unit="word"), model, "retry_on-timeout")
    shown: list[str] = []
    error = _read_all(app, _hearing(shown, model.consumer_has_mix), True)
    assert error is None
    assert model.calls == 2
    assert _normalized("".join(shown)) == _normalized("Sure, I can help with that. Now you Mix " + SAFE_CONTINUED)


class DeadlineRetry(AgentMiddleware):
    """An app's timeout middleware: each model call under a deadline that passes once ``model`` stalls, asked again
    after a timeout."""

    def __init__(self, model: Stalling) -> None:
        super().__init__()
        self.model = model

    async def awrap_model_call(self, request: Any, handler: Any) -> Any:
        for _ in range(3):
            try:
                return await _before_deadline(handler(request), self.model.stalled)
            except TimeoutError:
                continue
        raise RuntimeError("gave up")


@pytest.mark.parametrize("guard_first", [True, False], ids=["guard-first", "guard-last"])
def test_an_agent_model_call_cut_off_by_a_timeout_middleware_is_continued(guard_first: bool) -> None:
    guard, _ = _phrase_guard()
    model = _stalling()
    middleware: list[Any] = [GuardMiddleware(guard, release_unit="word"), DeadlineRetry(model)]
    agent = create_agent(model, tools=[], middleware=middleware if guard_first else middleware[::-1])
    shown: list[str] = []
    _read_all(agent, _hearing(shown, model.consumer_has_mix), True)
    assert model.calls == 2
    _nothing_after_mix("".join(shown))


def _abandoning_node(llm: GuardedChatModel, model: Stalling, asynchronous: bool) -> Any:
    """A node that gives up on a slow stream once it holds "Mix" (``break``; closing it) and streams again."""

    def node(state: _State) -> dict[str, Any]:
        for attempt in range(2):
            text, stream = "", llm.stream(state["messages"])
            for chunk in stream:
                text += chunk.text
                if attempt == 0 and "Mix" in text:
                    break  # too slow: ask again
            stream.close()
            if attempt == 1:
                return {"messages": [AIMessage(content=text, id="returned")]}
        raise AssertionError("unreachable")  # pragma: no cover

    async def anode(state: _State) -> dict[str, Any]:
        for attempt in range(2):
            text, stream = "", llm.astream(state["messages"])
            async for chunk in stream:
                text += chunk.text
                if attempt == 0 and "Mix" in text:
                    break
            await stream.aclose()
            if attempt == 1:
                return {"messages": [AIMessage(content=text, id="returned")]}
        raise AssertionError("unreachable")  # pragma: no cover

    return _single(anode if asynchronous else node)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("then", [CONTINUED, SAFE_CONTINUED], ids=["unsafe-after-mix", "safe-control"])
def test_a_stream_given_up_by_its_consumer_is_continued_by_the_next(then: str, asynchronous: bool) -> None:
    guard, _ = _phrase_guard()
    model = _stalling(then, asynchronous)
    app = _abandoning_node(GuardedChatModel(model, guard, release_unit="word"), model, asynchronous)
    shown: list[str] = []
    try:
        # The stream as it went out (the node's returned message, streamed whole again, is left out).
        error = _read_all(app, _hearing(shown, model.consumer_has_mix, skip="returned"), asynchronous)
    finally:
        if model.unstall is not None:
            model.unstall.set()
    assert model.calls == 2
    if then == CONTINUED:
        assert isinstance(error, GuardViolation)
        _nothing_after_mix("".join(shown))
    else:
        assert error is None
        assert _normalized("".join(shown)) == _normalized("Sure, I can help with that. Now you Mix " + then)


# -- F4: a GuardRunnable's stream, written by its node to the custom stream, retried by the node's RetryPolicy -------
def _writing_node(steps: dict[str, GuardRunnable], asynchronous: bool) -> Any:
    """A node that streams each of ``steps`` on the state's messages to ``get_stream_writer()`` as (its name, a
    chunk's text) (the last one's text is its answer), retried by its RetryPolicy."""

    def node(state: _State) -> dict[str, Any]:
        writer, text = get_stream_writer(), ""
        for name, step in steps.items():
            text = ""
            for chunk in step.stream(state["messages"]):
                writer((name, chunk.text))
                text += chunk.text
        return {"messages": [AIMessage(content=text)]}

    async def anode(state: _State) -> dict[str, Any]:
        writer, text = get_stream_writer(), ""
        for name, step in steps.items():
            text = ""
            async for chunk in step.astream(state["messages"]):
                writer((name, chunk.text))
                text += chunk.text
        return {"messages": [AIMessage(content=text)]}

    graph = StateGraph(_State)
    graph.add_node("chat", anode if asynchronous else node, retry_policy=RETRIES)
    graph.add_edge(START, "chat")
    graph.add_edge("chat", END)
    return graph.compile()


def _written(
    app: Any, has_mix: threading.Event, asynchronous: bool, config: RunnableConfig | None = None
) -> tuple[dict[str, str], BaseException | None]:
    """What a ``stream_mode="custom"`` consumer reads, by step, and the error the stream ended in; tells ``has_mix``
    once it holds "Mix" of the answer."""
    shown: dict[str, str] = {}

    def heard(part: tuple[str, str]) -> None:
        name, text = part
        shown[name] = shown.get(name, "") + text
        if "Mix" in shown.get("answer", ""):
            has_mix.set()

    async def run() -> None:
        async for part in app.astream(STATE, config, stream_mode="custom"):
            heard(part)

    try:
        if asynchronous:
            asyncio.run(run())
        else:
            for part in app.stream(STATE, config, stream_mode="custom"):
                heard(part)
    except Exception as error:  # noqa: BLE001 - returned to the test
        return shown, error
    return shown, None


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("then", [CONTINUED, SAFE_CONTINUED], ids=["unsafe-after-mix", "safe-control"])
def test_a_guard_runnable_stream_retried_by_its_node_is_judged_after_what_went_out(
    then: str, asynchronous: bool
) -> None:
    """The node first streams another step given the same question (a tagger whose answer is unsafe after "Mix"): it
    neither takes the answer's owed text (it is not stopped) nor pays it (the answer's retry is still stopped)."""
    guard, _ = _phrase_guard()
    flaky, _, has_mix = _models(then=then)
    steps = {
        "tag": GuardRunnable(_said("Ammonium nitrate fertilizer prices", "tag"), guard, release_unit="word"),
        "answer": GuardRunnable(flaky, guard, release_unit="word"),
    }
    shown, error = _written(_writing_node(steps, asynchronous), has_mix, asynchronous)
    assert flaky.calls == 2  # the node ran again after the dropped connection
    assert _normalized(shown["tag"]) == _normalized("Ammonium nitrate fertilizer prices " * 2)  # never stopped
    if then == CONTINUED:
        assert isinstance(error, GuardViolation)
        _nothing_after_mix(shown["answer"])
    else:
        assert error is None
        assert _normalized(shown["answer"]) == _normalized("Sure, I can help with that. Now you Mix " + then)


# == rt66k: a second look ===========================================================================================
# F3: a user's "stop" (a cancelled request, a closed stream) took one of the places a failed attempt's text is owed
# in: 256 hang-ups inside an honest retry's backoff pushed its text out (the retry refused), and 256 + 262,144 (437 a
# second for ten minutes, one client) refused every call of the process. Cut-off attempts now owe their text in a
# pool of their own, pushed out with no mark. The store is scaled down here: 4 places in each pool, 8 marks.
def _scaled_store(monkeypatch: pytest.MonkeyPatch) -> Any:
    from qwenguard.integrations.langchain import _held_model
    from qwenguard.integrations.langchain._held_model import OwedTexts

    store = OwedTexts(kept=4, marks=8)
    store.cut_kept = 4
    monkeypatch.setattr(_held_model, "_OWED", store)
    return store


_HANG_UPS = 4 + 8 + 1  # past the places and the marks of the scaled store


def _hang_up(asynchronous: bool, question: str) -> None:
    """A user who asks, reads the first words and stops: async, the server cancels the request's task; sync, the node
    that reads the model's stream stops reading and closes it."""
    guard, _ = _phrase_guard()
    llm = GuardedChatModel(_said("Paris is the capital of France and a lovely city " * 3, "paris"), guard,
                           release_unit="word")  # fmt: skip
    state = {"messages": [{"role": "user", "content": question}]}
    if not asynchronous:

        def node(state: _State) -> dict[str, Any]:
            stream = llm.stream(state["messages"])
            first = next(stream)
            stream.close()  # stop generating
            return {"messages": [AIMessage(content=first.text)]}

        _single(node).invoke(state)
        return

    async def stop_after_first_word() -> None:
        app, heard = _single(_answering(llm, True)), asyncio.Event()

        async def read() -> None:
            async for _ in app.astream(state, stream_mode="messages"):
                heard.set()

        task, hearing = asyncio.ensure_future(read()), asyncio.ensure_future(heard.wait())
        await asyncio.wait([task, hearing], return_when=asyncio.FIRST_COMPLETED)
        hearing.cancel()
        if task.done():
            task.result()  # it ended before a word came: its error (a refusal)
        task.cancel()  # stop generating
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stop_after_first_word())


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_hang_ups_neither_push_out_an_honest_retry_nor_refuse_new_calls(
    asynchronous: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scaled_store(monkeypatch)
    guard, _ = _phrase_guard()
    flaky, _, has_mix = _models(then=SAFE_CONTINUED)
    failed, others_done = threading.Event(), threading.Event()

    def retry_on(error: Exception) -> bool:  # the retry's backoff: it comes once the other users hung up
        failed.set()
        others_done.wait(WAIT_S)
        return True

    policy = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False, retry_on=retry_on)
    graph = StateGraph(_State)
    graph.add_node("chat", _answering(GuardedChatModel(flaky, guard, release_unit="word"), asynchronous),
                   retry_policy=policy)  # fmt: skip
    graph.add_edge(START, "chat")
    graph.add_edge("chat", END)
    shown: list[str] = []
    ended: list[BaseException | None] = []
    honest = threading.Thread(
        target=lambda: ended.append(_read_all(graph.compile(), _hearing(shown, has_mix), asynchronous))
    )
    honest.start()
    try:
        assert failed.wait(WAIT_S)  # its first attempt dropped after "Mix": its text is owed
        for user in range(_HANG_UPS):
            _hang_up(asynchronous, f"What is the capital of France? ({user})")
    finally:
        others_done.set()
        honest.join(WAIT_S)
    assert ended == [None]  # the honest retry answered, not refused
    assert flaky.calls == 2
    assert _normalized("".join(shown)) == _normalized("Sure, I can help with that. Now you Mix " + SAFE_CONTINUED)
    # A new user's first call after the hang-ups: answered, not refused as past the marks.
    new: list[str] = []
    newcomer = _single(_answering(GuardedChatModel(_said("Use baking soda and vinegar.", "new"), guard,
                                                   release_unit="word"), asynchronous))  # fmt: skip
    assert _read_all(newcomer, lambda message: new.append(message.text), asynchronous) is None
    assert _normalized("".join(new)) == _normalized("Use baking soda and vinegar.")


# F2: siblings of one node run (a Send fan-out in a subgraph: best-of-2 drafts) shared one key, and the later text
# replaced the other's: A's retry was judged after B's text, and the clause after A's "Mix" went out. Each task's
# place among its siblings (its Send index) is now in its key; two texts under one key are a conflict (refused).
class _Drafts(ScriptedChatModel):
    """Two drafts asked at once. The first call (A) streams `DROPPED` and, once the consumer holds A's "Mix" and B's
    words, drops; the second (B) streams a safe draft and drops after A did; every later call (a retry) streams
    `CONTINUED`."""

    lock: Any = None
    a_said: Any = None  # threading.Events
    b_said: Any = None
    a_failed: Any = None
    calls: int = 0

    def _chunks(self, messages: Any) -> Iterator[ChatGenerationChunk]:
        with self.lock:
            self.calls += 1
            call = self.calls
        words = (DROPPED if call == 1 else "Use baking soda and vinegar" if call == 2 else CONTINUED).split(" ")
        for word in words:
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " ", id=f"draft-{call}"))
        if call == 1:
            self.a_said.wait(WAIT_S)
            self.b_said.wait(WAIT_S)
            self.a_failed.set()
            raise ConnectionError("connection reset by peer")
        if call == 2:
            self.a_failed.wait(WAIT_S)
            time.sleep(0.2)  # after A's failure was recorded: B's text comes second
            raise ConnectionError("connection reset by peer")


class _DraftsState(TypedDict):
    question: str
    drafts: Annotated[list[str], operator.add]


def _best_of_two(llm: GuardedChatModel, asynchronous: bool) -> Any:
    """An app whose node is a subgraph that sends its "draft" node twice with the same question; a draft whose stream
    dropped asks again once both drafts' streams dropped (an outage: each waits for the other), and a draft the guard
    stopped is dropped, the other kept."""
    both_failed = threading.Barrier(2, timeout=WAIT_S)
    asked = [{"role": "user", "content": QUESTION}]

    def draft(state: _DraftsState) -> dict[str, Any]:
        for _ in range(2):
            try:
                return {"drafts": [llm.invoke(asked).text]}
            except ConnectionError:
                both_failed.wait()
            except GuardViolation:
                break
        return {"drafts": []}

    async def adraft(state: _DraftsState) -> dict[str, Any]:
        for _ in range(2):
            try:
                return {"drafts": [(await llm.ainvoke(asked)).text]}
            except ConnectionError:
                await asyncio.to_thread(both_failed.wait)
            except GuardViolation:
                break
        return {"drafts": []}

    sub = StateGraph(_DraftsState)
    sub.add_node("draft", adraft if asynchronous else draft)
    sub.add_conditional_edges(START, lambda state: [Send("draft", state), Send("draft", state)])
    sub.add_edge("draft", END)
    top = StateGraph(_DraftsState)
    top.add_node("answer", sub.compile())
    top.add_edge(START, "answer")
    top.add_edge("answer", END)
    return top.compile()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_each_draft_of_a_fan_out_is_judged_after_its_own_text(asynchronous: bool) -> None:
    guard, _ = _phrase_guard()
    model = _Drafts(messages=iter([]), seen=[], lock=threading.Lock(), a_said=threading.Event(),
                    b_said=threading.Event(), a_failed=threading.Event())  # fmt: skip
    app = _best_of_two(GuardedChatModel(model, guard, release_unit="word"), asynchronous)
    by_task: dict[str, str] = {}  # what a consumer shows in each draft's place (its task, across its attempts)

    def heard(message: Any, metadata: dict[str, Any]) -> None:
        task = metadata["langgraph_checkpoint_ns"]
        by_task[task] = by_task.get(task, "") + message.text
        if any("Mix" in text for text in by_task.values()):
            model.a_said.set()
        if any("baking soda" in text for text in by_task.values()):
            model.b_said.set()

    state = {"question": QUESTION, "drafts": []}

    async def run() -> None:
        async for _, (message, metadata) in app.astream(state, stream_mode="messages", subgraphs=True):
            heard(message, metadata)

    if asynchronous:
        asyncio.run(run())
    else:
        for _, (message, metadata) in app.stream(state, stream_mode="messages", subgraphs=True):
            heard(message, metadata)
    assert model.calls == 4  # each draft asked again once: A's retry stopped, B's answered
    drafts = {text.split(" ", 1)[0]: text for text in by_task.values()}
    _nothing_after_mix(drafts["Sure,"])
    # B's retry continued B's own text (safe after it), not refused as a conflict.
    assert _normalized(drafts["Use"]) == _normalized("Use baking soda and " + CONTINUED)  # "vinegar": never passed on


def _two_agents(agent_a: Any, agent_b: Any, asynchronous: bool) -> Any:
    """A supervisor node that asks two agents the same question at once (their model nodes both named "model"), waits
    for both and answers with A's; retried by its RetryPolicy."""

    async def anode(state: _State) -> dict[str, Any]:
        given = {"messages": state["messages"]}
        ended = await asyncio.gather(agent_a.ainvoke(given), agent_b.ainvoke(given), return_exceptions=True)
        for outcome in ended:
            if isinstance(outcome, BaseException):
                raise outcome
        return {"messages": ended[0]["messages"][-1:]}

    def node(state: _State) -> dict[str, Any]:
        both = RunnableParallel(a=agent_a, b=agent_b).invoke({"messages": state["messages"]})
        return {"messages": both["a"]["messages"][-1:]}

    graph = StateGraph(_State)
    graph.add_node("supervisor", anode if asynchronous else node, retry_policy=RETRIES)
    graph.add_edge(START, "supervisor")
    graph.add_edge("supervisor", END)
    return graph.compile()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_two_agents_of_one_node_that_owe_texts_under_one_key_are_refused_not_crossed(asynchronous: bool) -> None:
    """Siblings above the model's node share a key (nothing LangGraph hands them tells them apart across a retry):
    both dropped, A after "Mix" and B after its own words; before, B's text replaced A's and A's retry was judged after
    it. Now the conflict refuses the retry (fail closed)."""
    guard, _ = _phrase_guard()
    model = _Drafts(messages=iter([]), seen=[], lock=threading.Lock(), a_said=threading.Event(),
                    b_said=threading.Event(), a_failed=threading.Event())  # fmt: skip
    agents = [create_agent(model, tools=[], middleware=[GuardMiddleware(guard, release_unit="word")]) for _ in "ab"]
    by_id: dict[str, str] = {}  # each answer's text as its consumer holds it

    def heard(message: Any) -> None:
        by_id[message.id] = by_id.get(message.id, "") + message.text
        if "Mix" in by_id.get("draft-1", ""):
            model.a_said.set()
        if "baking soda" in by_id.get("draft-2", ""):
            model.b_said.set()

    assert _read_all(_two_agents(*agents, asynchronous), heard, asynchronous) is None
    assert model.calls == 2  # each retry refused before the model ran again: the agents' refusal notices answer
    assert "blocked by the safety guard" in " ".join(by_id.values())
    _nothing_after_mix(by_id["draft-1"] + " ".join(text for key, text in by_id.items() if key != "draft-1"))


# F1: GuardRunnable's key held a token of the instance: a step built for each call (inside the node, or by
# configurable_fields for a request that sets a field) is another instance on the retry, which was judged fresh.
def _built_steps(how: str, flaky: Any, guard: Any) -> Any:
    """What the node streams on each attempt, as (its name, the step): ``per-call``, a GuardRunnable built there;
    ``configurable``, one built once with a field the request sets (LangChain builds a new instance each call);
    ``with_config``, one bound with a config. A tagger given the same question first, built the same way."""
    tag = _said("Ammonium nitrate fertilizer prices", "tag")
    if how == "per-call":
        return lambda: {name: GuardRunnable(model, guard, release_unit="word")
                        for name, model in (("tag", tag), ("answer", flaky))}  # fmt: skip
    built = {
        name: GuardRunnable(model, guard, release_unit="word") for name, model in (("tag", tag), ("answer", flaky))
    }
    if how == "configurable":
        steps = {
            name: step.configurable_fields(window_chars=ConfigurableField(id="window")) for name, step in built.items()
        }
    else:
        steps = {name: step.with_config(tags=[name]) for name, step in built.items()}
    return lambda: steps


def _rebuilding_node(steps: Any, asynchronous: bool) -> Any:
    """`_writing_node` whose steps are ``steps()`` on each attempt, called with the request's config."""

    def node(state: _State, config: RunnableConfig) -> dict[str, Any]:
        writer, text = get_stream_writer(), ""
        for name, step in steps().items():
            text = ""
            for chunk in step.stream(state["messages"], config):
                writer((name, chunk.text))
                text += chunk.text
        return {"messages": [AIMessage(content=text)]}

    async def anode(state: _State, config: RunnableConfig) -> dict[str, Any]:
        writer, text = get_stream_writer(), ""
        for name, step in steps().items():
            text = ""
            async for chunk in step.astream(state["messages"], config):
                writer((name, chunk.text))
                text += chunk.text
        return {"messages": [AIMessage(content=text)]}

    graph = StateGraph(_State)
    graph.add_node("chat", anode if asynchronous else node, retry_policy=RETRIES)
    graph.add_edge(START, "chat")
    graph.add_edge("chat", END)
    return graph.compile()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("how", ["per-call", "configurable", "with_config"])
@pytest.mark.parametrize("then", [CONTINUED, SAFE_CONTINUED], ids=["unsafe-after-mix", "safe-control"])
def test_a_guard_runnable_built_again_for_the_retry_is_judged_after_what_went_out(
    then: str, how: str, asynchronous: bool
) -> None:
    guard, _ = _phrase_guard()
    flaky, _, has_mix = _models(then=then)
    app = _rebuilding_node(_built_steps(how, flaky, guard), asynchronous)
    config: RunnableConfig = {"configurable": {"window": 2000}}  # the request's value of the configurable field
    shown, error = _written(app, has_mix, asynchronous, config)
    assert flaky.calls == 2  # the node ran again after the dropped connection
    assert _normalized(shown["tag"]) == _normalized("Ammonium nitrate fertilizer prices " * 2)  # its own step
    if then == CONTINUED:
        assert isinstance(error, GuardViolation)
        _nothing_after_mix(shown["answer"])
    else:
        assert error is None
        assert _normalized(shown["answer"]) == _normalized("Sure, I can help with that. Now you Mix " + then)
