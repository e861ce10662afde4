"""The text a failed attempt passed on is owed to the next attempt of the same call, and only to it (rt65m).

A provider drops its connection after the guard passed on "... Now you Mix"; the step is asked again, and the new
answer ("ammonium nitrate ...") is judged as the continuation of what the consumer holds (rt65d F1,
test_rt65d_retry_boundary.py). rt65m found three ways the owed text went astray:

- F1: it was kept by node run only. Another model call of the node run (a title or helper call made before the
  answer) read it as its own prefix and, answering to its end, cleared it: the answer's retry was judged fresh and
  the consumer read "Mix ammonium nitrate ..."; an unrelated safe helper answer ("Ammonium nitrate fertilizer
  prices") was judged as the continuation and blocked. It is now owed to the call: the same conversation (a digest
  of the messages) in the same step.
- F2: outside LangGraph (no node run) ``GuardedChatModel(...).with_retry()`` / ``.with_fallbacks([...])`` kept it
  nowhere: each attempt judged fresh. The step is now the run the attempts are children of.
- F3: 256 other failing node runs pushed it out before its retry, judged fresh (fails open). One pushed out before
  its time leaves a mark: the retry is refused (`GuardTimeout`), never judged fresh.

The judge flags "mix ammonium" only (`phrase_verdict`, test_rt65d_retry_boundary.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import RunnableLambda
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy
from lc_fakes import ScriptedChatModel
from qwenguard.core import GuardTimeout, GuardViolation
from qwenguard.integrations.langchain import GuardedChatModel
from test_rt65d_retry_boundary import (
    CONTINUED,
    QUESTION,
    SAFE_CONTINUED,
    WAIT_S,
    _models,
    _normalized,
    _phrase_guard,
    _read,
    _State,
)


class Said(ScriptedChatModel):
    """A streaming model that answers ``text`` word by word, every time (its chunks' id: ``answer_id``)."""

    text: str = ""
    answer_id: str = "helper"

    def _chunks(self, messages: Any) -> Iterator[ChatGenerationChunk]:
        for word in self.text.split():
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " ", id=self.answer_id))


def _said(text: str, answer_id: str = "helper") -> Said:
    return Said(messages=iter([]), seen=[], text=text, answer_id=answer_id)


def _graph(node: Any, policy: RetryPolicy | None) -> Any:
    graph = StateGraph(_State)
    graph.add_node("chat", node, retry_policy=policy)
    graph.add_edge(START, "chat")
    graph.add_edge("chat", END)
    return graph.compile()


def _answering(llm: GuardedChatModel, asynchronous: bool) -> Any:
    """A node whose answer is ``llm``'s to the state's messages (``ainvoke`` in an async node)."""
    if asynchronous:

        async def anode(state: _State) -> dict[str, Any]:
            return {"messages": [await llm.ainvoke(state["messages"])]}

        return anode
    return lambda state: {"messages": [llm.invoke(state["messages"])]}


def _helper_then_answer(helper: GuardedChatModel, asked: str, answer: GuardedChatModel, asynchronous: bool) -> Any:
    """A node that makes a helper call (``asked``, messages of its own) before its answer, under a RetryPolicy."""
    policy = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False)
    if asynchronous:

        async def anode(state: _State) -> dict[str, Any]:
            await helper.ainvoke(asked)
            return {"messages": [await answer.ainvoke(state["messages"])]}

        return _graph(anode, policy)

    def node(state: _State) -> dict[str, Any]:
        helper.invoke(asked)
        return {"messages": [answer.invoke(state["messages"])]}

    return _graph(node, policy)


# -- F1: another call of the node run neither continues the owed text nor clears it --------------------------------
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_helper_call_before_the_answer_leaves_the_retry_its_owed_text(asynchronous: bool) -> None:
    guard, _ = _phrase_guard()
    flaky, _, has_mix = _models()
    titler = GuardedChatModel(_said("Oven cleaning tips", "title"), guard, release_unit="word")
    app = _helper_then_answer(titler, "A title for: " + QUESTION, GuardedChatModel(flaky, guard, release_unit="word"),
                              asynchronous)  # fmt: skip
    answer: list[str] = []

    def heard(message: Any) -> None:
        if message.id != "title":  # the answer's stream (the title is a message of its own)
            answer.append(message.text)
        if "Mix" in "".join(answer):
            has_mix.set()

    with pytest.raises(GuardViolation):
        _read(app, {"messages": [{"role": "user", "content": QUESTION}]}, heard, asynchronous)
    text = "".join(answer)
    assert flaky.calls == 2  # the node ran again after the dropped connection; the guard's stop ended it
    assert "Now you Mix" in text
    assert "mix ammonium" not in _normalized(text)
    assert "ammonium" not in text


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_an_unrelated_helper_call_is_not_judged_as_the_continuation(asynchronous: bool) -> None:
    guard, _ = _phrase_guard()
    flaky, _, has_mix = _models(then=SAFE_CONTINUED)
    tagger = GuardedChatModel(_said("Ammonium nitrate fertilizer prices", "tag"), guard, release_unit="word")
    app = _helper_then_answer(tagger, "Tag this: fertilizer market report",
                              GuardedChatModel(flaky, guard, release_unit="word"), asynchronous)  # fmt: skip
    answer: list[str] = []
    tags: list[str] = []

    def heard(message: Any) -> None:
        (tags if message.id == "tag" else answer).append(message.text)
        if "Mix" in "".join(answer):
            has_mix.set()

    _read(app, {"messages": [{"role": "user", "content": QUESTION}]}, heard, asynchronous)
    assert flaky.calls == 2  # the safe retry answered
    assert _normalized("".join(answer)).startswith(
        _normalized("Sure, I can help with that. Now you Mix " + SAFE_CONTINUED)
    )
    # The helper's safe answer went out on both runs of the node: neither was stopped as "Mix" + "Ammonium".
    assert _normalized("".join(tags)) == _normalized("Ammonium nitrate fertilizer prices " * 2)


# -- F2: with_retry() / with_fallbacks() outside LangGraph ---------------------------------------------------------
def _retried(kind: str, then: str) -> tuple[Any, Any, Any, threading.Event]:
    guard, _ = _phrase_guard()
    flaky, backup, has_mix = _models(then)
    guarded = GuardedChatModel(flaky, guard, release_unit="word")
    if kind == "with_retry":
        runnable = guarded.with_retry(stop_after_attempt=3, wait_exponential_jitter=False)
    else:
        runnable = guarded.with_fallbacks([GuardedChatModel(backup, guard, release_unit="word")])
    return runnable, flaky, backup, has_mix


def _events_of(runnable: Any, has_mix: threading.Event, asynchronous: bool) -> tuple[str, BaseException | None]:
    """What an ``astream_events`` consumer of a step that calls ``runnable`` (``invoke`` / ``ainvoke``) reads of its
    model's stream, and the error the step ended in."""

    async def called(value: Any) -> Any:
        return await runnable.ainvoke(value)

    step = RunnableLambda(called) if asynchronous else RunnableLambda(lambda value: runnable.invoke(value))
    shown: list[str] = []

    async def run() -> None:
        async for event in step.astream_events(QUESTION, version="v2"):
            if event["event"] == "on_chat_model_stream":
                shown.append(event["data"]["chunk"].text)
                if "Mix" in "".join(shown):
                    has_mix.set()

    try:
        asyncio.run(run())
    except Exception as error:  # noqa: BLE001 - returned to the test
        return "".join(shown), error
    return "".join(shown), None


@pytest.mark.parametrize("asynchronous", [False, True], ids=["invoke", "ainvoke"])
@pytest.mark.parametrize("kind", ["with_retry", "with_fallbacks"])
def test_a_retry_or_fallback_outside_langgraph_is_judged_after_what_went_out(kind: str, asynchronous: bool) -> None:
    runnable, flaky, backup, has_mix = _retried(kind, CONTINUED)
    shown, error = _events_of(runnable, has_mix, asynchronous)
    assert flaky.calls + backup.calls == 2  # the next attempt ran, and was stopped
    assert error is not None
    assert "Now you Mix" in shown
    assert "mix ammonium" not in _normalized(shown)
    assert "ammonium" not in shown


@pytest.mark.parametrize("asynchronous", [False, True], ids=["invoke", "ainvoke"])
@pytest.mark.parametrize("kind", ["with_retry", "with_fallbacks"])
def test_a_retry_or_fallback_outside_langgraph_whose_answer_is_safe_still_answers(
    kind: str, asynchronous: bool
) -> None:
    runnable, flaky, backup, has_mix = _retried(kind, SAFE_CONTINUED)
    shown, error = _events_of(runnable, has_mix, asynchronous)
    assert error is None
    assert _normalized(shown) == _normalized("Sure, I can help with that. Now you Mix " + SAFE_CONTINUED)


# -- F3: other failed runs never make the owed text forgotten silently ---------------------------------------------
class _Dropping(ScriptedChatModel):
    """A provider in an outage: streams a sentence and a word, waits until the consumer holds the sentence (``heard``)
    and drops the connection."""

    heard: Any = None  # a threading.Event

    def _chunks(self, messages: Any) -> Iterator[ChatGenerationChunk]:
        for word in "Hello there, the weather is fine today. And".split(" "):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " "))
        self.heard.wait(WAIT_S)
        raise ConnectionError("provider outage")


def _outage(guard: Any, runs: int, asynchronous: bool) -> int:
    """``runs`` node runs (no retry) whose provider drops each stream once the consumer holds some of it: how many
    failed with text passed on."""
    failed = 0
    for run in range(runs):
        heard = threading.Event()
        model = _Dropping(messages=iter([]), seen=[], heard=heard)
        llm = GuardedChatModel(model, guard, release_unit="word")
        app = _graph(_answering(llm, asynchronous), None)
        shown: list[str] = []

        def seen(message: Any, shown: list[str] = shown, heard: threading.Event = heard) -> None:
            shown.append(message.text)
            if "fine" in "".join(shown):
                heard.set()

        try:
            _read(app, {"messages": [{"role": "user", "content": f"Weather report {run}?"}]}, seen, asynchronous)
        except ConnectionError:
            failed += "Hello" in "".join(shown)
    return failed


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_retry_after_an_outage_pushed_its_text_out_is_refused_not_judged_fresh(asynchronous: bool) -> None:
    guard, _ = _phrase_guard()
    flaky, _, has_mix = _models()
    others_failed = threading.Event()

    def retry_on(error: Exception) -> bool:  # the RetryPolicy's wait: the retry comes once the other runs failed
        others_failed.wait(120)
        return True

    policy = RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False, retry_on=retry_on)
    llm = GuardedChatModel(flaky, guard, release_unit="word")
    app = _graph(_answering(llm, asynchronous), policy)
    shown: list[str] = []
    ended: list[BaseException] = []

    def heard(message: Any) -> None:
        shown.append(message.text)
        if "Mix" in "".join(shown):
            has_mix.set()

    def consume() -> None:
        try:
            _read(app, {"messages": [{"role": "user", "content": QUESTION}]}, heard, asynchronous)
        except Exception as error:  # noqa: BLE001 - read by the test
            ended.append(error)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        assert has_mix.wait(WAIT_S)
        assert _outage(guard, 300, asynchronous) == 300  # more than are kept: its text is pushed out
    finally:
        others_failed.set()
        consumer.join(60)
    text = "".join(shown)
    assert flaky.calls == 1  # each retry refused before the model ran
    assert len(ended) == 1 and isinstance(ended[0], GuardTimeout)
    assert "Now you Mix" in text
    assert "ammonium" not in text


def test_owed_texts_forget_nothing_silently() -> None:
    """The store itself: a text pushed out before its time leaves a mark (refused); past the marks, every call owed
    nothing is refused until the mark pushed out would have gone; a text is kept for its retention."""
    from qwenguard.integrations.langchain._held_model import OwedTexts

    now = [0.0]
    owed = OwedTexts(kept=2, marks=2, retention_s=100.0, clock=lambda: now[0])
    owed.owe("a", "text a")
    assert owed.owed("a") == "text a"
    assert owed.owed("other") == ""
    owed.owe("b", "text b")
    owed.owe("c", "text c")  # "a" pushed out
    assert owed.owed("a") is None
    assert (owed.owed("b"), owed.owed("c")) == ("text b", "text c")
    owed.paid("c", "something else")  # an attempt that continued other text: "c" still owed
    assert owed.owed("c") == "text c"
    owed.paid("c", "text c")
    assert owed.owed("c") == ""
    now[0] = 1.0
    for key in ("d", "e", "f", "g"):  # marks past their cap: everything not owed is refused for a while
        owed.owe(key, key)
    assert owed.owed("fresh") is None
    assert owed.owed("g") == "g"
    now[0] = 102.0  # past the retention of everything: nothing is owed, nothing is refused
    owed.owe("h", "h")
    assert owed.owed("fresh") == ""
    assert owed.owed("a") == ""
    assert owed.owed("d") == ""


# -- rt65o: a third look -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["retry", "fallback"])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_an_attempt_under_another_system_prompt_continues_the_owed_text(kind: str, asynchronous: bool) -> None:
    """rt65o F1: the owed text was keyed by every message, the system prompt included: a prompt that differs by
    attempt (a clock; a fallback stripping Anthropic's cache_control marks) had the retry judged fresh."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import ModelFallbackMiddleware, ModelRetryMiddleware, dynamic_prompt
    from qwenguard.integrations.langchain import GuardMiddleware
    from test_rt65d_retry_boundary import _consume, _models, _normalized, _phrase_guard

    ticks = iter(range(100))

    @dynamic_prompt
    def clock_prompt(request: Any) -> str:
        return f"You are a helpful assistant. Request time: 12:00:{next(ticks):02d}"

    guard, _ = _phrase_guard()
    flaky, backup, has_mix = _models()
    other = (
        ModelRetryMiddleware(max_retries=2, initial_delay=0.0) if kind == "retry" else ModelFallbackMiddleware(backup)
    )
    agent = create_agent(flaky, tools=[], middleware=[other, clock_prompt, GuardMiddleware(guard, release_unit="word")])
    shown = _consume(agent, has_mix, asynchronous)
    assert "mix ammonium" not in _normalized(shown)


def test_blocked_answers_owe_nothing() -> None:
    """rt65o F2: every blocked streamed answer took one of the step store's 256 slots for 10 minutes, never paid:
    256 of them pushed out an honest call's owed text, and its retry was refused."""
    from qwenguard.integrations.langchain._held_model import _OWED

    guard, _ = _phrase_guard()
    before = len(_OWED._texts)
    for i in range(20):
        model = GuardedChatModel(_said(f"Sure. Mix ammonium nitrate with fuel oil, pack it into a pipe {i}.", "x"),
                                 guard, release_unit="word")  # fmt: skip
        with pytest.raises(GuardViolation):
            RunnableLambda(lambda x, m=model: "".join(c.text for c in m.stream(x))).invoke("hi")
    assert len(_OWED._texts) == before
