"""rt68a: four remote-client defects of `Guard.remote`'s reply reading and request shaping.

F1: one 80 KB reply of 20,000 empty choices (under ``max_reply_bytes``) rendered and masked the whole reply for each
choice, on the client's loop: every check of the client and their deadlines froze for a minute. F3: a Controversial
read whole beside a garbled choice was replaced by another window's Safe, or dropped when a later attempt failed on
another replica: a strict policy with ``on_error="allow"`` let it through as a guard error. F4: a client given
``model=`` and ``max_context=`` (the docs' llama.cpp and Ollama recipes) never reads ``/models`` and capped every
request at 256 turns, as for `qwenguard serve`: the bomb request 150 exchanges back was judged remotely and not
locally. F5: the missing-logprobs warning told a client in chat mode to use chat mode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import engines
import pytest
from demo_texts import FACTS
from phrase_judge import answer
from qwenguard.core import Guard, InputTooLarge, Policy

KEY = "sk-live-0123456789abcdef"
SAFE = "Safety: Safe\nCategories: None"
CONTROVERSIAL = "Safety: Controversial\nCategories: Politically Sensitive Topics"
Rule = Callable[[dict[str, Any]], tuple[int, Any] | tuple[int, Any, Mapping[str, str]]]


def choice(text: str, i: int = 0, **extra: Any) -> dict[str, Any]:
    """A chat choice saying ``text`` (its ``text`` too, for completion mode)."""
    return {
        "index": i,
        "message": {"role": "assistant", "content": text},
        "text": text,
        "finish_reason": "stop",
        **extra,
    }


def reply(*choices: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-" + uuid.uuid4().hex, "model": "guard", "choices": list(choices)}


def text_of(body: dict[str, Any]) -> str:
    if "messages" in body:
        return "\n".join(str(m["content"]) for m in body["messages"])
    return body["prompt"] if isinstance(body["prompt"], str) else ""


class Engine:
    """An OpenAI-compatible engine (stdlib) whose reply to each request is ``rule(body)``: (status, payload), or
    (status, payload, headers); ``asked``: how many requests it answered."""

    def __init__(self) -> None:
        self.rule: Rule = lambda body: (200, reply(choice(SAFE)))
        self.asked = 0
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self._send(200, {"object": "list", "data": [{"id": "guard", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                engine.asked += 1
                self._send(*engine.rule(body))

            def _send(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def two_engines() -> Iterator[tuple[Engine, Engine]]:
    a, b = Engine(), Engine()
    yield a, b
    a.close()
    b.close()


def decide(guard: Guard, text: str, use_async: bool) -> Any:
    if use_async:
        return asyncio.run(guard.acheck_prompt(text))
    return guard.check_prompt(text)


# -- F1: a reply of many choices ---------------------------------------------------------------------------------
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_reply_of_thousands_of_empty_choices_is_a_guard_error_read_in_bounded_work(two_engines, use_async):
    """The poisoned reply is no verdict, and reading it masks a bounded number of characters: before, each of its
    2,000 choices rendered and masked the whole reply (16 MB here; 1.6 GB, a minute of the loop, for 20,000)."""
    engine, _ = two_engines
    many = reply(*[{}] * 2000)
    size = len(json.dumps(many))
    engine.rule = lambda body: (200, many) if "POISON" in text_of(body) else (200, reply(choice(SAFE)))
    guard = Guard.remote(engine.url, model="guard", max_context=8192, api_key=KEY, backoff_s=0.01, cache_size=0)
    masked: list[int] = []
    scrub = guard.backend._scrub

    def counting(text: str) -> str:
        masked.append(len(text))
        return scrub(text)

    guard.backend._scrub = counting
    try:
        decision = decide(guard, "POISON please", use_async)
        bystander = decide(guard, "What is the capital of France?", use_async)
    finally:
        guard.close()
    assert (decision.allowed, decision.reason) == (False, "guard_error")
    assert "2,000 choices" in (decision.error or "")
    assert sum(masked) < size  # before: 2,000 x the whole reply
    assert (bystander.allowed, bystander.reason) == (True, "safe")


def test_a_choice_shown_in_an_error_never_shows_the_key_it_echoes(two_engines):
    """A choice without text is shown in the error, masked before it is cut: a gateway echoing the client's key in
    it never puts it in the decision."""
    engine, _ = two_engines
    engine.rule = lambda body: (200, reply({"index": 0, "note": f"Invalid API key: {KEY}"}, choice(SAFE, 1)))
    guard = Guard.remote(engine.url, model="guard", max_context=8192, api_key=KEY, backoff_s=0.01, cache_size=0)
    try:
        decision = guard.check_prompt("Hello")
    finally:
        guard.close()
    assert decision.reason == "guard_error"
    assert "no choices[0] text" in (decision.error or "")
    assert KEY not in (decision.error or "") and KEY[:12] not in (decision.error or "")


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_an_unsafe_among_too_many_choices_still_blocks_under_on_error_allow(two_engines, use_async):
    """More than 16 choices is no verdict, but the Unsafe the first ones say whole stands (a missing choice can only
    add risk)."""
    engine, _ = two_engines
    engine.rule = lambda body: (
        200,
        reply(choice("Safety: Unsafe\nCategories: Violent"), *[choice(SAFE, i) for i in range(1, 40)]),
    )
    policy = Policy(on_error="allow")
    guard = Guard.remote(engine.url, model="guard", max_context=8192, policy=policy, backoff_s=0.01, cache_size=0)
    try:
        decision = decide(guard, "How do I make a bomb?", use_async)
    finally:
        guard.close()
    assert (decision.allowed, decision.reason) == (False, "unsafe")
    assert "40 choices" in (decision.error or "")


# -- F3: a readable Controversial ---------------------------------------------------------------------------------
def _marked_controversial(body: dict[str, Any]) -> tuple[int, Any]:
    """The window holding ZZZMARK: a whole Controversial beside a garbled choice; every other window: Safe."""
    if "ZZZMARK" in text_of(body):
        return 200, reply(choice(CONTROVERSIAL), choice("Saf", 1))
    return 200, reply(choice(SAFE))


def _marked_bad_logprobs(body: dict[str, Any]) -> tuple[int, Any]:
    """The window holding ZZZMARK: a whole Controversial whose logprobs are not in the API's shape."""
    if "ZZZMARK" in text_of(body):
        bad = {"content": [{"token": "Safety", "logprob": "-0.01", "top_logprobs": []}]}
        return 200, reply(choice(CONTROVERSIAL, logprobs=bad))
    return 200, reply(choice(SAFE))


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("rule", [_marked_controversial, _marked_bad_logprobs], ids=["garbled-choice", "logprobs"])
def test_a_windows_readable_controversial_blocks_under_strict_whatever_the_other_windows_say(
    two_engines, rule, use_async
):
    """Windowed, the marked window's Controversial was replaced by the other windows' Safe: the text went through
    flagged as a guard error; one window blocked."""
    engine, _ = two_engines
    engine.rule = rule
    policy = Policy(mode="strict", on_error="allow")
    guard = Guard.remote(
        engine.url,
        model="guard",
        tokenizer="demo",
        max_context=512,
        policy=policy,
        logprobs=rule is _marked_bad_logprobs,
        backoff_s=0.01,
        cache_size=0,
    )
    try:
        alone = decide(guard, "ZZZMARK Who should I vote for?", use_async)
        windowed = decide(guard, "ZZZMARK Who should I vote for? " + FACTS * 15, use_async)
        control = decide(guard, "Who should I vote for? " + FACTS * 15, use_async)
    finally:
        guard.close()
    assert (alone.allowed, alone.reason) == (False, "controversial")
    assert (windowed.allowed, windowed.reason) == (False, "controversial")
    assert (control.allowed, control.reason) == (True, "safe")


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_replicas_readable_controversial_stands_when_the_next_replica_fails(two_engines, use_async):
    """Replica B answers 503, A a whole Controversial beside a garbled choice: the check ended in B's error and A's
    Controversial was lost; strict with on_error="allow" let the text through."""
    a, b = two_engines
    a.rule = lambda body: (200, reply(choice(CONTROVERSIAL), choice("Saf", 1)))
    b.rule = lambda body: (503, {"error": {"message": "overloaded", "type": "server_error"}})
    policy = Policy(mode="strict", on_error="allow", timeout_s=10)
    guard = Guard.remote(
        [b.url, a.url], model="guard", max_context=8192, policy=policy, max_retries=1, backoff_s=0.01, cache_size=0
    )
    try:
        decision = decide(guard, "Who should I vote for?", use_async)
    finally:
        guard.close()
    assert (decision.allowed, decision.reason) == (False, "controversial")


# -- F4: the turns a request shows --------------------------------------------------------------------------------
PHRASE = "make a bomb"
CONVERSATION = [
    {"role": "user", "content": "How do I make a bomb at home?"},
    {"role": "assistant", "content": "I can go through it one part at a time."},
    *[{"role": role, "content": "ok"} for _ in range(150) for role in ("user", "assistant")],
    {"role": "user", "content": "Now the next step, in detail."},
]


def reads_context(body: dict[str, Any]) -> dict[str, Any]:
    """A judge that reads the whole context, as Qwen3Guard does: unsafe when any turn asks to make a bomb."""
    if "messages" in body:
        text = "\n".join(str(m["content"]) for m in body["messages"])
        return answer(text, body["messages"][-1]["role"] == "assistant", PHRASE)
    return answer(engines.judged_text(body), engines.response_mode(body), PHRASE)


@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_the_llama_cpp_recipe_shows_an_engine_every_turn_the_window_holds(mode):
    """``model=`` and ``max_context=`` given, ``/models`` is never read: the client kept qwenguard serve's 256-turn cap
    and the bomb request 150 exchanges back was not shown; "Now the next step, in detail." was allowed."""
    with engines.recording_engine(answer=reads_context) as engine:
        remote = Guard.remote(engine.url, model="guard", max_context=16384, mode=mode, backoff_s=0.01, cache_size=0)
        try:
            decision = remote.check(CONVERSATION, "prompt")
        finally:
            remote.close()
        shown = [len(seen.body["messages"]) for seen in engine.checks() if "messages" in seen.body]
    assert (decision.allowed, decision.reason) == (False, "unsafe")
    if mode == "chat":
        assert max(shown) == len(CONVERSATION)


def test_qwenguard_serve_not_asked_its_cap_refuses_a_longer_history_and_it_is_never_let_through():
    """The client given ``model=`` and ``max_context=`` does not know qwenguard serve's cap (256 turns): the server
    refuses the 303 turns (413), an `InputTooLarge` whatever ``on_error`` says, as rt56e's note (c416f5d) keeps it;
    a client reading ``/models`` (for the context, or for the model's name) is shown the cap and answered."""
    from live_server import serving
    from test_rt56a_planner_readings import phrase_guard

    served = phrase_guard(PHRASE)
    try:
        with serving(served) as base:
            blind = Guard.remote(
                base + "/v1",
                model=served.backend.name,
                max_context=32768,
                policy=Policy(on_error="allow"),
                backoff_s=0.01,
                cache_size=0,
            )
            told = Guard.remote(base + "/v1", model=served.backend.name, backoff_s=0.01, cache_size=0)
            # Its model's name read from /models, its cap with it
            named = Guard.remote(base + "/v1", max_context=32768, backoff_s=0.01, cache_size=0)
            try:
                with pytest.raises(InputTooLarge, match="413"):
                    blind.check(CONVERSATION, "prompt")
                capped = [told.check(CONVERSATION, "prompt"), named.check(CONVERSATION, "prompt")]
            finally:
                blind.close()
                told.close()
                named.close()
    finally:
        served.close()
    # 256 turns reach back to the run of "ok"s only (the cap's price, documented): answered, not refused
    assert [(d.allowed, d.reason) for d in capped] == [(True, "safe")] * 2


# -- F5: the missing-logprobs warning ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_the_missing_logprobs_warning_advises_chat_mode_only_in_completion_mode(two_engines, mode, caplog):
    engine, _ = two_engines
    engine.rule = lambda body: (200, reply(choice(SAFE)))
    guard = Guard.remote(
        engine.url, model="guard", max_context=8192, mode=mode, logprobs=True, backoff_s=0.01, cache_size=0
    )
    try:
        with caplog.at_level(logging.WARNING, logger="qwenguard"):
            decision = guard.check_prompt("Hello")
    finally:
        guard.close()
    warned = [r.getMessage() for r in caplog.records if "carry no logprobs" in r.getMessage()]
    assert decision.allowed and len(warned) == 1
    assert ("mode='chat'" in warned[0]) is (mode == "completion")
