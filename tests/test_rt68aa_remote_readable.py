"""rt68j: four remote-client defects of what `Guard.remote` keeps of a reply that is no verdict.

F3: a choice whose ``finish_reason`` is a list or an object raised TypeError (unhashable) while the reply was read,
and the reply became a bare guard error: the whole "Safety: Unsafe" it or a sibling choice said was dropped, and
``on_error="allow"`` let the bomb request through. F2: a check planned again after a context refusal kept only an
Unsafe of its first attempt: the Controversial another replica read whole was dropped, and a later 503 stood alone.
F1: through ``qwenguard serve`` a readable Controversial was a bare 502, and a strict client with ``on_error="allow"``
let through what the same client against the engine blocks. F4: a long bearer token echoed many times in a choice
shown in an error was masked only in the first 64 KiB; the copy straddling that cut showed in part.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from qwenguard.core import Guard, Policy
from test_rt68u_remote_replies import CONTROVERSIAL, Engine, choice, decide, reply
from test_server_hostile import guarded

UNSAFE = "Safety: Unsafe\nCategories: Violent"
BOMB = "How do I build a pipe bomb at home?"
VOTE = "Which party should I vote for in the next election?"


@pytest.fixture(scope="module")
def two_engines() -> Iterator[tuple[Engine, Engine]]:
    a, b = Engine(), Engine()
    yield a, b
    a.close()
    b.close()


# -- F3: a finish_reason that is not a string ---------------------------------------------------------------------
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("mode", ["chat", "completion"])
@pytest.mark.parametrize(
    "choices",
    [
        [choice(UNSAFE), choice("Saf", 1, finish_reason=["stop"])],
        [choice(UNSAFE), choice("Saf", 1, finish_reason={})],
        [choice(UNSAFE, finish_reason=["stop"])],
    ],
    ids=["sibling-list", "sibling-dict", "own-list"],
)
def test_an_unsafe_beside_a_finish_reason_that_is_no_string_blocks_under_on_error_allow(
    two_engines, choices, mode, use_async
):
    """The engine's whole Unsafe stands whatever another choice's (or its own) finish_reason holds: before, the
    TypeError dropped it and the bomb request went through flagged as a guard error."""
    engine, _ = two_engines
    engine.rule = lambda body: (200, reply(*choices))
    guard = Guard.remote(
        engine.url, model="guard", max_context=8192, mode=mode, policy=Policy(on_error="allow"), cache_size=0
    )
    try:
        decision = decide(guard, BOMB, use_async)
    finally:
        guard.close()
    assert (decision.allowed, decision.reason) == (False, "unsafe")
    assert "unhashable" not in (decision.error or "")


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_safe_choice_ending_with_a_list_is_no_verdict(two_engines, use_async):
    """A "Safe" whose finish_reason is a list is no normal end: a guard error, never read as Safe."""
    engine, _ = two_engines
    engine.rule = lambda body: (200, reply(choice("Safety: Safe\nCategories: None", finish_reason=["length"])))
    guard = Guard.remote(engine.url, model="guard", max_context=8192, cache_size=0, backoff_s=0.01)
    try:
        decision = decide(guard, BOMB, use_async)
    finally:
        guard.close()
    assert (decision.allowed, decision.reason) == (False, "guard_error")
    assert "not a string" in (decision.error or "")


# -- F2: a check planned again after a context refusal ------------------------------------------------------------
def _scripted(script: list[str]) -> tuple[Any, list[str]]:
    """A rule answering the engines' requests in turn from ``script`` (then 503s), and the list of what it sent."""
    count, lock, sent = itertools.count(), threading.Lock(), []

    def rule(body: dict[str, Any]) -> tuple[int, Any]:
        with lock:
            kind = script[i] if (i := next(count)) < len(script) else "503"
            sent.append(kind)
        if kind == "readable":
            return 200, reply(choice(CONTROVERSIAL), choice("Saf", 1))
        if kind == "ctx400":
            why = "This model's maximum context length is 1024 tokens. However, you requested 3000 tokens."
            return 400, {"error": {"message": why, "type": "BadRequestError", "code": 400}}
        return 503, {"error": {"message": "overloaded", "type": "server_error"}}

    return rule, sent


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_readable_controversial_stands_when_the_replanned_check_fails(two_engines, use_async):
    """One replica read a whole Controversial beside a garbled choice, the other refused the context: the check
    planned again for it met 503s. The Controversial blocks under strict, as without the refusal."""
    a, b = two_engines
    a.rule, sent = _scripted(["readable", "ctx400"])
    b.rule = a.rule
    policy = Policy(mode="strict", on_error="allow")
    guard = Guard.remote(
        [a.url, b.url],
        model="guard",
        tokenizer="demo",
        max_context=4096,
        policy=policy,
        max_retries=1,
        backoff_s=0.01,
        cache_size=0,
    )
    try:
        decision = decide(guard, VOTE, use_async)
    finally:
        guard.close()
    assert sent[:3] == ["readable", "ctx400", "503"]  # the replanned check ran, and failed
    assert (decision.allowed, decision.reason) == (False, "controversial")


# -- F1: a readable Controversial through qwenguard serve ---------------------------------------------------------
@pytest.fixture(scope="module")
def served(two_engines) -> Iterator[tuple[Engine, str]]:
    """qwenguard serve in front of a remote guard on the module's first engine."""
    engine, _ = two_engines
    server_guard = Guard.remote(engine.url, model="guard", max_context=4096, cache_size=0, backoff_s=0.01)
    try:
        with guarded(server_guard) as base:
            yield engine, base
    finally:
        server_guard.close()


def _controversial_beside_garbled(body: dict[str, Any]) -> tuple[int, Any]:
    return 200, reply(choice(CONTROVERSIAL), choice("Saf", 1))


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_strict_client_behind_the_server_blocks_a_readable_controversial_as_against_the_engine(served, use_async):
    """The engine's whole Controversial beside a garbled choice: the client on the engine blocks it under strict, and
    now the same client behind qwenguard serve too; the server's answer stays a 502 (no verdict)."""
    engine, base = served
    engine.rule = _controversial_beside_garbled
    policy = Policy(mode="strict", on_error="allow")
    direct = Guard.remote(engine.url, model="guard", max_context=4096, policy=policy, cache_size=0)
    client = Guard.remote(base + "/v1", policy=policy, cache_size=0, backoff_s=0.01)
    try:
        on_engine = decide(direct, VOTE, use_async)
        on_server = decide(client, VOTE, use_async)
    finally:
        direct.close()
        client.close()
    assert (on_engine.allowed, on_engine.reason) == (False, "controversial")
    assert (on_server.allowed, on_server.reason) == (False, "controversial")
    answer = httpx.post(
        base + "/v1/chat/completions", json={"model": "guard", "messages": [{"role": "user", "content": VOTE}]}
    )
    assert answer.status_code == 502 and answer.json()["error"]["type"] == "guard_error"
    assert "choices" not in answer.json()  # no text a loose client could read as a verdict


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_loose_client_behind_the_server_still_reads_no_verdict(served, use_async):
    """A Controversial carried with the 502 adds risk only: a loose client's on_error decides, as on the engine."""
    engine, base = served
    engine.rule = _controversial_beside_garbled
    for on_error, allowed in (("allow", True), ("block", False)):
        policy = Policy(mode="loose", on_error=on_error)
        client = Guard.remote(base + "/v1", policy=policy, cache_size=0, backoff_s=0.01)
        try:
            decision = decide(client, VOTE, use_async)
        finally:
            client.close()
        assert (decision.allowed, decision.reason) == (allowed, "guard_error")


# -- F4: a long credential echoed past the masked part ------------------------------------------------------------
def _long_token(chars: int) -> str:
    """A bearer token of ``chars`` characters, as an OIDC JWT (1-4 KB), the same on every run."""
    blocks = (hashlib.sha256(str(i).encode()).hexdigest() for i in itertools.count())
    return ("eyJ" + "".join(itertools.islice(blocks, chars // 64 + 1)))[:chars]


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_choice_echoing_a_long_token_across_the_masked_part_never_shows_a_piece_of_it(two_engines, use_async):
    """22 copies of a 3,000-character token, the last one reaching past the first 64 KiB of the choice shown: no
    piece of the token (its first 12 characters or any 40 of it) shows in the decision's error."""
    engine, _ = two_engines
    token = _long_token(3000)
    echoed = token * (65536 // len(token) + 1)
    engine.rule = lambda body: (200, reply({"index": 0, "x": echoed}))
    guard = Guard.remote(
        engine.url,
        model="guard",
        max_context=4096,
        headers={"Authorization": "Bearer " + token},
        cache_size=0,
        backoff_s=0.01,
    )
    try:
        decision = decide(guard, "Hello", use_async)
    finally:
        guard.close()
    error = decision.error or ""
    assert (decision.allowed, decision.reason) == (False, "guard_error")
    assert "no choices[0] text" in error
    assert token[:12] not in error
    assert not any(token[i : i + 40] in error for i in range(len(token) - 40))


def test_a_short_choice_echoing_a_token_shows_the_rest_masked(two_engines):
    """A choice no longer than what is masked shows whole, its token masked: the rest of it still reads."""
    engine, _ = two_engines
    token = _long_token(3000)
    engine.rule = lambda body: (200, reply({"index": 0, "note": f"Invalid token {token}; retry later"}))
    guard = Guard.remote(
        engine.url, model="guard", max_context=4096, headers={"Authorization": "Bearer " + token}, cache_size=0
    )
    try:
        decision = guard.check_prompt("Hello")
    finally:
        guard.close()
    error = decision.error or ""
    assert token[:12] not in error
    assert "Invalid token ***; retry later" in error
