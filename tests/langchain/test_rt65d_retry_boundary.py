"""A provider fails part-way through a streamed answer, and the step is asked again (rt65d F1).

The guard had passed on "... Now you Mix" when the connection dropped; ``ModelRetryMiddleware``,
``ModelFallbackMiddleware`` or a node's ``RetryPolicy`` asked again, and the new answer ("ammonium nitrate ...") was
judged as a fresh one: the consumer read "Mix ammonium nitrate ..." and no check ever showed the two together. The
next attempt's answer is now judged as the continuation of what the consumer holds (a prefill): the first window
shows "Now you Mix ammonium", and the stop comes before any of it goes out. A retry whose answer is safe with what
went out still answers.

The judge flags "mix ammonium" only (`phrase_verdict`): "Mix" alone and "ammonium nitrate ..." alone are safe. The
guard releases word by word (``release_unit="word"``), so "Mix" goes out once a check showed it with the word after
it; the failing model drops its connection only once the consumer holds "Mix".
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

import pytest
from faults import ScriptedBackend, phrase_verdict
from langchain.agents import create_agent
from langchain.agents.middleware import ModelFallbackMiddleware, ModelRetryMiddleware
from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import RetryPolicy
from lc_fakes import ScriptedChatModel
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware
from typing_extensions import TypedDict

QUESTION = "How do I clean my oven?"
#: The first attempt: its last word ("everything") is never passed on; "Mix" is, then the connection drops.
DROPPED = "Sure, I can help with that. Now you Mix everything"
#: The next attempt's answer: safe alone, unsafe after "Now you Mix".
CONTINUED = "ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
#: A next attempt whose answer is safe after what went out.
SAFE_CONTINUED = "flour and water into a paste and spread it inside."
#: How long a model waits for the consumer to hold "Mix" at most (a broken hold-back must not hang the test).
WAIT_S = 10


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


class Attempts(ScriptedChatModel):
    """A streaming model whose first call streams `DROPPED` word by word, waits until the consumer holds "Mix" and
    fails (a dropped connection); every later call streams ``then``. ``calls``: how many times it was called."""

    then: str = CONTINUED
    first_fails: bool = True
    consumer_has_mix: Any = None  # a threading.Event
    calls: int = 0

    def _chunks(self, messages: Any) -> Iterator[ChatGenerationChunk]:
        self.calls += 1
        failing = self.first_fails and self.calls == 1
        for word in (DROPPED if failing else self.then).split(" "):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word + " ", id=f"attempt-{self.calls}"))
        if failing:
            self.consumer_has_mix.wait(WAIT_S)
            raise ConnectionError("connection reset by peer")


def _models(then: str = CONTINUED) -> tuple[Attempts, Attempts, threading.Event]:
    """(a model whose first call drops, a backup that answers ``then``, the event the consumer sets)."""
    has_mix = threading.Event()
    flaky = Attempts(messages=iter([]), seen=[], then=then, consumer_has_mix=has_mix)
    backup = Attempts(messages=iter([]), seen=[], then=then, first_fails=False)
    return flaky, backup, has_mix


def _phrase_guard() -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(phrase_verdict, name="phrase")
    return Guard(backend, cache_size=0), backend


def _consume(agent: Any, has_mix: threading.Event, asynchronous: bool) -> str:
    """The text a ``stream_mode="messages"`` consumer of ``agent`` reads; tells ``has_mix`` once it holds "Mix"."""
    state = {"messages": [{"role": "user", "content": QUESTION}]}
    shown: list[str] = []

    def heard(message: Any) -> None:
        shown.append(message.text)
        if "Mix" in "".join(shown):
            has_mix.set()

    _read(agent, state, heard, asynchronous)
    return "".join(shown)


def _read(app: Any, state: Any, heard: Any, asynchronous: bool) -> None:
    """Read ``app``'s ``stream_mode="messages"`` stream, each message to ``heard``."""
    if asynchronous:

        async def run() -> None:
            async for message, _ in app.astream(state, stream_mode="messages"):
                heard(message)

        asyncio.run(run())
    else:
        for message, _ in app.stream(state, stream_mode="messages"):
            heard(message)


def _middleware_agent(kind: str, guard_first: bool, then: str = CONTINUED) -> tuple[Any, Attempts, threading.Event]:
    guard, _ = _phrase_guard()
    flaky, backup, has_mix = _models(then)
    guard_mw = GuardMiddleware(guard, release_unit="word")
    other: Any
    if kind == "retry":
        other = ModelRetryMiddleware(max_retries=2, initial_delay=0.0)
    else:
        other = ModelFallbackMiddleware(backup)
    middleware = [guard_mw, other] if guard_first else [other, guard_mw]
    return create_agent(flaky, tools=[], middleware=middleware), flaky, has_mix


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("guard_first", [True, False], ids=["guard-first", "guard-last"])
@pytest.mark.parametrize("kind", ["retry", "fallback"])
def test_the_next_attempt_is_judged_after_what_the_failed_one_passed_on(
    kind: str, guard_first: bool, asynchronous: bool
) -> None:
    agent, flaky, has_mix = _middleware_agent(kind, guard_first)
    shown = _consume(agent, has_mix, asynchronous)
    assert "Now you Mix" in shown  # the failed attempt's text reached the consumer: the boundary is there
    assert "mix ammonium" not in _normalized(shown)
    assert "ammonium" not in shown  # nothing of the continuation went out unjudged
    assert flaky.calls >= 1


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("guard_first", [True, False], ids=["guard-first", "guard-last"])
def test_a_retry_whose_answer_is_safe_after_what_went_out_still_answers(guard_first: bool, asynchronous: bool) -> None:
    agent, flaky, has_mix = _middleware_agent("retry", guard_first, then=SAFE_CONTINUED)
    shown = _consume(agent, has_mix, asynchronous)
    assert _normalized(shown).startswith(_normalized("Sure, I can help with that. Now you Mix " + SAFE_CONTINUED))
    assert flaky.calls == 2


class _State(TypedDict):
    messages: Annotated[list, add_messages]


def _node_graph(llm: GuardedChatModel, asynchronous: bool) -> Any:
    graph = StateGraph(_State)
    if asynchronous:

        async def anode(state: _State) -> dict[str, Any]:
            return {"messages": [await llm.ainvoke(state["messages"])]}

        graph.add_node("chat", anode, retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False))
    else:

        def node(state: _State) -> dict[str, Any]:
            return {"messages": [llm.invoke(state["messages"])]}

        graph.add_node("chat", node, retry_policy=RetryPolicy(max_attempts=3, initial_interval=0.0, jitter=False))
    graph.add_edge(START, "chat")
    graph.add_edge("chat", END)
    return graph.compile()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_node_retry_shows_the_consumer_no_unjudged_continuation(asynchronous: bool) -> None:
    guard, _ = _phrase_guard()
    flaky, _, has_mix = _models()
    app = _node_graph(GuardedChatModel(flaky, guard, release_unit="word"), asynchronous)
    shown: list[str] = []
    state = {"messages": [{"role": "user", "content": QUESTION}]}

    def heard(message: Any) -> None:
        shown.append(message.text)
        if "Mix" in "".join(shown):
            has_mix.set()

    with pytest.raises(GuardViolation):
        _read(app, state, heard, asynchronous)
    text = "".join(shown)
    assert flaky.calls == 2  # the node ran again after the dropped connection; the guard's stop ended it
    assert "Now you Mix" in text
    assert "mix ammonium" not in _normalized(text)
    assert "ammonium" not in text


# -- real ChatOpenAI, against a loopback server whose first stream ends in an SSE error --------------------------
# tests/scripted_openai.py sends no error event mid-stream: a server of the test's own, as an overloaded provider does.
@contextmanager
def _overloaded_once(has_mix: threading.Event, then: str) -> Iterator[tuple[str, list[int]]]:
    """An OpenAI-compatible server: its first stream sends `DROPPED` word by word, then (once the consumer holds
    "Mix") an SSE error event; later ones stream ``then``. Yields (base URL, [requests served])."""
    served = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            served[0] += 1
            first = served[0] == 1
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()

            def event(payload: Any) -> None:
                self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

            def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                return {"id": f"chatcmpl-{served[0]}", "object": "chat.completion.chunk", "created": 0,
                        "model": "m", "choices": [choice]}  # fmt: skip

            event(chunk({"role": "assistant", "content": ""}))
            for word in (DROPPED if first else then).split(" "):
                event(chunk({"content": word + " "}))
            if first:
                has_mix.wait(WAIT_S)
                event({"error": {"message": "The server is overloaded", "type": "server_error"}})
            else:
                event(chunk({}, "stop"))
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", served
    finally:
        has_mix.set()  # a handler still waiting returns
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_chat_openai_retried_after_an_sse_error_mid_answer(asynchronous: bool) -> None:
    openai = pytest.importorskip("langchain_openai")
    guard, _ = _phrase_guard()
    has_mix = threading.Event()
    with _overloaded_once(has_mix, CONTINUED) as (url, served):
        model = openai.ChatOpenAI(base_url=url, api_key="x", model="m", max_retries=0)
        middleware = [GuardMiddleware(guard, release_unit="word"), ModelRetryMiddleware(max_retries=2, initial_delay=0)]
        shown = _consume(create_agent(model, tools=[], middleware=middleware), has_mix, asynchronous)
    assert served[0] == 2
    assert "Now you Mix" in shown
    assert "mix ammonium" not in _normalized(shown)
    assert "ammonium" not in shown
