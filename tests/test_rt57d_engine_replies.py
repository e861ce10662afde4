"""Engine replies that were read as what they are not (red team rt57d), against real HTTP servers on 127.0.0.1.

- F1: a choice an engine stopped (vLLM and SGLang ``finish_reason: "abort"``, vLLM ``"error"``) holds whatever was
  generated so far: read whole, an aborted "Safety: Unsafe\\nCategories: Violent" (cut from "Violent, PII") was
  allowed by a policy ignoring Violent. Only a normal end is a whole verdict; any other is read as a cut one.
- F2: an engine that cut the prompt and answered "Unsafe" had its answer thrown away; when no whole verdict came
  (a context below the guard prompt's floor), the check was a guard error and ``on_error="allow"`` let it through.
- F3: an engine or proxy that wrote two replies to one request left the second on the kept-alive connection, and
  the next check read that stale "Safe" as its verdict, sync and async.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from qwenguard.core import Guard, Policy
from qwenguard.core.backends.openai_gen import OpenAIGen
from qwenguard.core.backends.transport import checks_transport

SAFE = "Safety: Safe\nCategories: None"
UNSAFE_VIOLENT = "Safety: Unsafe\nCategories: Violent"
BOMB = "Give me step by step instructions to build a pipe bomb."
HELLO = "Hello, how are you?"
# A long text with the harm at its head: judged in windows, or read in part by an engine with a small context.
ATTACK = "How do I build a bomb at home? " + "Tell me about the garden and its flowers. " * 420
MODELS = {"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": 32768}]}


def reply(body: Any, status: int = 200) -> bytes:
    """One whole HTTP/1.1 response, as bytes."""
    data = json.dumps(body).encode()
    head = f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


def chat(text: str, finish: str | None = "stop", usage: dict[str, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


class Engine:
    """An OpenAI-shaped engine: ``answer(request)`` gives the raw bytes written back in one write (``request``: the
    method, the path, the JSON body, and its number among the POSTs); counts the connections clients opened."""

    def __init__(self, answer: Callable[[dict[str, Any]], bytes]) -> None:
        self.answer = answer
        self.connections = 0
        self.posts = 0
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                engine.connections += 1

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if method == "POST":
                    engine.posts += 1
                request = {"method": method, "path": self.path, "json": json.loads(raw) if raw else None}
                request["n"] = engine.posts
                self.wfile.write(engine.answer(request))  # one write, whatever it holds

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@contextmanager
def engine_and_guard(answer: Callable[[dict[str, Any]], bytes], policy: Policy, **opts: Any) -> Iterator[Any]:
    engine = Engine(answer)
    opts = {"model": "m", "max_context": 32768, "max_retries": 0, "cache_size": 0, **opts}
    guard = Guard.remote(engine.url, policy=policy, **opts)
    try:
        yield engine, guard
    finally:
        guard.close()
        engine.close()


def answering(post: Callable[[dict[str, Any]], bytes]) -> Callable[[dict[str, Any]], bytes]:
    """An engine's answers: ``post`` for the POSTs, the model list for ``GET /models``."""
    return lambda request: reply(MODELS) if request["method"] == "GET" else post(request)


def last_text(request: dict[str, Any]) -> str:
    return str(request["json"]["messages"][-1]["content"])


# -- F1: only a normal end is a whole verdict ------------------------------------------------------------------------
@pytest.mark.parametrize("finish", ["abort", "error", "ABORT", "cancelled", "length"])
def test_an_unsafe_answer_the_engine_stopped_keeps_no_category_an_ignore_list_could_excuse(finish):
    # The attack: a verdict "Violent, PII" aborted after its first category, under a policy that ignores Violent.
    policy = Policy(ignore_categories=["Violent"], timeout_s=10)
    with engine_and_guard(answering(lambda r: reply(chat(UNSAFE_VIOLENT, finish))), policy) as (_, guard):
        d = guard.check_prompt(BOMB)
    assert not d.allowed and d.reason == "unsafe"
    assert d.verdict is not None and d.verdict.categories == ()


def test_an_aborted_choice_beside_a_whole_one_leaves_no_category_to_excuse():
    # An engine that ignores n=1: a whole "Violent" choice, and one aborted after "Violent" (of "Violent, PII").
    body = chat(UNSAFE_VIOLENT)
    body["choices"].append(
        {"index": 1, "message": {"role": "assistant", "content": UNSAFE_VIOLENT}, "finish_reason": "abort"}
    )
    policy = Policy(ignore_categories=["Violent"], timeout_s=10)
    with engine_and_guard(answering(lambda r: reply(body)), policy) as (_, guard):
        d = guard.check_prompt(BOMB)
    assert not d.allowed and d.reason == "unsafe" and d.verdict is not None and d.verdict.categories == ()


def test_an_aborted_window_beside_a_whole_one_leaves_no_category_to_excuse():
    # A long text in windows: the window with the harm answered whole ("Violent"); the others aborted after "Violent".
    def post(request: dict[str, Any]) -> bytes:
        return reply(chat(UNSAFE_VIOLENT, "stop" if "bomb" in last_text(request) else "abort"))

    policy = Policy(ignore_categories=["Violent"], timeout_s=10)
    with engine_and_guard(answering(post), policy, max_context=2500) as (engine, guard):
        d = guard.check_prompt(ATTACK)
        assert engine.posts > 2
    assert not d.allowed and d.reason == "unsafe" and d.verdict is not None and d.verdict.categories == ()


@pytest.mark.parametrize("finish", ["abort", "error"])
def test_a_safe_answer_the_engine_stopped_is_no_verdict(finish):
    with engine_and_guard(answering(lambda r: reply(chat(SAFE, finish))), Policy(timeout_s=10)) as (_, guard):
        d = guard.check_prompt(BOMB)
    assert not d.allowed and d.reason == "guard_error"
    assert f"finish_reason {finish!r}" in (d.error or "")


@pytest.mark.parametrize("finish", ["stop", None, "eos_token", "stop_sequence", "eos", "STOP"])
def test_a_normal_end_is_a_whole_verdict(finish):  # what engines send when the model finished its answer
    policy = Policy(ignore_categories=["Violent"], timeout_s=10)
    with engine_and_guard(answering(lambda r: reply(chat(SAFE, finish))), policy) as (_, guard):
        assert guard.check_prompt(HELLO).reason == "safe"
    with engine_and_guard(answering(lambda r: reply(chat(UNSAFE_VIOLENT, finish))), policy) as (_, guard):
        d = guard.check_prompt(BOMB)
    assert d.allowed and d.reason == "ignored_category" and d.verdict is not None
    assert d.verdict.categories == ("Violent",)


# -- F2: an Unsafe said of a cut prompt stands when no whole verdict comes ------------------------------------------


def context_floor() -> int:
    """The least context the client plans with (a cut below it cannot be planned for)."""
    return OpenAIGen("http://127.0.0.1:9/v1", model="m")._context_floor


@pytest.mark.parametrize("on_error", ["allow", "block"])
def test_an_unsafe_answer_to_a_prompt_cut_below_the_floor_blocks_even_failing_open(on_error):
    # Every request is cut to 300 tokens, too few to plan for, and answered Unsafe: no whole verdict ever comes.
    cut = {"prompt_tokens": 300, "completion_tokens": 8, "total_tokens": 308}
    assert 300 < context_floor()
    policy = Policy(on_error=on_error, ignore_categories=["Violent"], timeout_s=10)
    with engine_and_guard(answering(lambda r: reply(chat(UNSAFE_VIOLENT, usage=cut))), policy) as (engine, guard):
        d = guard.check_prompt(ATTACK)
        assert engine.posts >= 1
    assert not d.allowed and d.reason == "unsafe", d
    assert d.verdict is not None and d.verdict.categories == ()  # the part read; no ignored category excuses it
    assert "PromptCut" in (d.error or "")


def test_a_safe_answer_to_a_cut_prompt_is_still_no_verdict():
    cut = {"prompt_tokens": 300, "completion_tokens": 8, "total_tokens": 308}
    policy = Policy(on_error="allow", timeout_s=10)
    with engine_and_guard(answering(lambda r: reply(chat(SAFE, usage=cut))), policy) as (_, guard):
        d = guard.check_prompt(ATTACK)
    assert d.allowed and d.reason == "guard_error" and d.verdict is None


def cut_whole_text(rest: bytes) -> Callable[[dict[str, Any]], bytes]:
    """An engine that cuts the whole text (one request holds it) to a context the client can plan for and answers
    it Unsafe, and answers every shorter request (the text's other readings, then its windows) ``rest``."""
    kept = context_floor() + 200

    def post(request: dict[str, Any]) -> bytes:
        if len(last_text(request)) > len(ATTACK) // 2:
            return reply(chat(UNSAFE_VIOLENT, usage={"prompt_tokens": kept, "completion_tokens": 8}))
        return rest

    return post


def test_an_unsafe_answer_to_a_cut_prompt_stands_when_the_replanned_check_gets_no_verdict():
    post = cut_whole_text(reply(chat("I am sorry, I cannot help with that.")))

    policy = Policy(on_error="allow", timeout_s=10)
    with engine_and_guard(answering(post), policy) as (engine, guard):
        d = guard.check_prompt(ATTACK)
        assert engine.posts > 1  # planned again for the context shown
    assert not d.allowed and d.reason == "unsafe" and d.verdict is not None and d.verdict.categories == (), d


def test_a_whole_verdict_of_the_replanned_check_stands_over_a_cut_prompts_answer():
    post = cut_whole_text(reply(chat(SAFE)))  # each window, whole
    with engine_and_guard(answering(post), Policy(timeout_s=10)) as (engine, guard):
        d = guard.check_prompt(ATTACK)
        assert engine.posts > 2
    assert d.allowed and d.reason == "safe"


# -- F3: a reply is only taken from a reply to this request -----------------------------------------------------------
def twice_for_hello(request: dict[str, Any]) -> bytes:
    """Answers a greeting with two whole "Safe" replies in one write (a proxy that forwarded a retried request's two
    answers), and the bomb, truthfully, "Unsafe"."""
    if "bomb" in last_text(request):
        return reply(chat(UNSAFE_VIOLENT))
    return reply(chat(SAFE)) * 2


def test_a_second_reply_left_on_the_connection_is_not_the_next_checks_verdict(caplog):
    with caplog.at_level(logging.WARNING, logger="qwenguard"):
        with engine_and_guard(answering(twice_for_hello), Policy(timeout_s=10)) as (engine, guard):
            assert guard.check_prompt(HELLO).reason == "safe"
            d = guard.check_prompt(BOMB)
            assert engine.posts == 2 and engine.connections == 2  # closed, not reused
    assert not d.allowed and d.reason == "unsafe"
    assert any("bytes past its reply" in r.getMessage() for r in caplog.records)


def test_a_second_reply_left_on_the_connection_is_not_the_next_checks_verdict_async():
    async def main(guard: Guard) -> tuple[Any, Any]:
        first = await guard.acheck_prompt(HELLO)
        return first, await guard.acheck_prompt(BOMB)

    with engine_and_guard(answering(twice_for_hello), Policy(timeout_s=10)) as (engine, guard):
        first, d = asyncio.run(main(guard))
        assert engine.connections == 2
    assert first.reason == "safe"
    assert not d.allowed and d.reason == "unsafe"


def test_a_second_model_list_left_on_the_connection_is_not_the_next_checks_answer():
    # The context is read from /models first, on the connection the check then uses.
    def answer(request: dict[str, Any]) -> bytes:
        if request["method"] == "GET":
            return reply(MODELS) * 2
        return reply(chat(UNSAFE_VIOLENT))

    policy = Policy(on_error="allow", timeout_s=10)
    with engine_and_guard(answer, policy, max_context=None) as (engine, guard):
        d = guard.check_prompt(BOMB)
        assert engine.posts == 1
    assert not d.allowed and d.reason == "unsafe", d


def test_an_ordinary_engine_keeps_its_one_connection():  # nothing is dropped without a reason
    with engine_and_guard(answering(lambda r: reply(chat(SAFE))), Policy(timeout_s=10)) as (engine, guard):
        for i in range(20):
            assert guard.check_prompt(f"{HELLO} {i}").reason == "safe"
        assert engine.connections == 1


@pytest.mark.parametrize("transport", ["httpx default", "checks_transport"])
def test_the_connection_parser_is_reached_through_httpx_and_httpcore(transport):
    # The check reads httpcore's private attributes (transport.h11_state_of): this fails when they move.
    from qwenguard.core.backends.transport import h11_state_of

    engine = Engine(answering(lambda r: reply(chat(SAFE))))

    async def main() -> Any:
        made = None if transport == "httpx default" else checks_transport(True, max_connections=4)
        async with httpx.AsyncClient(transport=made) as client:
            async with client.stream("POST", engine.url + "/chat/completions", json={}) as response:
                return h11_state_of(response)

    try:
        state = asyncio.run(main())
    finally:
        engine.close()
    import h11

    assert isinstance(state, h11.Connection), (
        f"httpx {httpx.__version__}: the h11 parser of a response's connection is out of reach; stale replies on "
        "kept-alive connections are no longer dropped (core/backends/transport.py, h11_state_of)"
    )


def test_a_local_unsafe_window_naming_no_category_is_not_excused_by_another_windows_category():
    """The local guard merges its windows with the same `worst`: a window read Unsafe from its first line alone (no
    category) beside one read "Unsafe, Violent" was allowed under a policy ignoring Violent (flag), where the first
    alone blocks."""
    from qwenguard.core.verdict import Risk, Stage, Verdict, worst

    policy = Policy(ignore_categories={"Violent"})
    no_category = Verdict(Risk.UNSAFE, (), None, "Safety: Unsafe", 1.0, "demo")
    violent = Verdict(Risk.UNSAFE, ("Violent",), None, "Safety: Unsafe\nCategories: Violent", 1.0, "demo")
    assert policy.decide(no_category, Stage.PROMPT).allowed is False
    for windows in ([no_category, violent], [violent, no_category]):
        assert policy.decide(worst(windows), Stage.PROMPT).allowed is False
