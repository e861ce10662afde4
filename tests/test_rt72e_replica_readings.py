"""rt72e F1: with several replicas, what replica A read of the whole prompt was replaced by replica B's Safe.

A answers a reply the client cannot take as a verdict that still says a risk whole: an Unsafe beside a garbled
second choice (an engine ignoring ``n=1``), an Unsafe whose logprobs are not in the API's shape, a Controversial
beside a garbled choice under a strict policy, or `qwenguard serve`'s 502 ``guard_error`` carrying it in
``X-Qwenguard-Readable``. Against A alone the check blocks on that reading. With ``Guard.remote([b, a])`` the request
failed over to B, B answered Safe, and the check was allowed with reason "safe" and no error: the same replies were
decided by topology. A cut prompt's Unsafe (an Ollama-style short ``usage.prompt_tokens``) still gives way to B's
whole verdict, as a replanned check's whole verdict stands over it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from qwenguard.core import Guard, Policy
from test_rt68u_remote_replies import CONTROVERSIAL, SAFE, Engine, choice, decide, reply

UNSAFE = "Safety: Unsafe\nCategories: Violent"
BOMB = "How can I make a bomb at home?"
Answer = tuple[int, Any, dict[str, str]]


class Replica(Engine):
    """`Engine` answering every POST ``answer()``: (status, payload, headers); its ``asked`` count shows which replica
    a check reached."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: Callable[[], Answer] = lambda: (200, reply(choice(SAFE)), {})
        self.rule = lambda body: self.answer()


@pytest.fixture
def replicas() -> Iterator[tuple[Replica, Replica]]:
    a, b = Replica(), Replica()
    yield a, b
    a.close()
    b.close()


BAD_LOGPROBS = {"content": [{"token": "Safety", "logprob": "abc"}]}
READABLE = json.dumps({"risk": "controversial", "categories": ["Politically Sensitive Topics"]})
GUARD_ERROR = {"error": {"message": "no verdict for this conversation", "type": "guard_error"}}
STRICT_OPEN = Policy(mode="strict", on_error="allow")

#: A's answer, the client's options, its policy, and the decision both topologies must reach.
SHAPES: dict[str, tuple[Answer, dict[str, Any], Policy, tuple[bool, str]]] = {
    "unsafe-beside-a-garbled-choice": (
        (200, reply(choice(UNSAFE), choice("I am not sure", 1)), {}),
        {},
        Policy(),
        (False, "unsafe"),
    ),
    "unsafe-with-ill-shaped-logprobs": (
        (200, reply(choice(UNSAFE, logprobs=BAD_LOGPROBS)), {}),
        {"logprobs": True},
        Policy(),
        (False, "unsafe"),
    ),
    "controversial-beside-a-garbled-choice-strict": (
        (200, reply(choice(CONTROVERSIAL), choice("I am not sure", 1)), {}),
        {},
        STRICT_OPEN,
        (False, "controversial"),
    ),
    "serve-502-guard-error-readable": (
        (502, GUARD_ERROR, {"X-Qwenguard-Readable": READABLE}),
        {},
        STRICT_OPEN,
        (False, "controversial"),
    ),
}


def _guard(urls: list[str], policy: Policy, **options: Any) -> Guard:
    return Guard.remote(urls, model="guard", max_context=32768, policy=policy, cache_size=0, backoff_s=0.01, **options)


def _asked_a_then_b(a: Replica, b: Replica, use_async: bool, guard: Guard) -> Any:
    """One check of BOMB through ``guard`` (replicas [b, a]: the first pick is the second URL), which must ask A, then
    fail over to B: a test that never reaches A proves nothing."""
    try:
        decision = decide(guard, BOMB, use_async)
    finally:
        guard.close()
    assert (a.asked, b.asked) == (1, 1)
    return decision


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_what_replica_a_read_whole_blocks_with_two_replicas_as_with_one(replicas, shape, use_async):
    """A alone blocks on its reading; A then B (Safe) blocked too, where B's Safe let the bomb request through."""
    a, b = replicas
    answer, options, policy, expected = SHAPES[shape]
    a.answer = lambda: answer
    alone = _guard([a.url], policy, **options)
    try:
        one = decide(alone, BOMB, use_async)
    finally:
        alone.close()
    assert (one.allowed, one.reason) == expected
    a.asked = 0
    two = _asked_a_then_b(a, b, use_async, _guard([b.url, a.url], policy, **options))
    assert (two.allowed, two.reason) == expected
    if expected[1] == "unsafe":  # `worst` keeps the Unsafe's own categories
        assert two.categories == ("Violent",)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_whole_reading_is_merged_with_the_next_replicas_controversial(replicas, use_async):
    """A's Unsafe (beside a garbled choice) and B's Controversial: the check is Unsafe, as windows are merged."""
    a, b = replicas
    a.answer = lambda: (200, reply(choice(UNSAFE), choice("I am not sure", 1)), {})
    b.answer = lambda: (200, reply(choice(CONTROVERSIAL)), {})
    decision = _asked_a_then_b(a, b, use_async, _guard([b.url, a.url], Policy()))
    assert (decision.allowed, decision.reason, decision.categories) == (False, "unsafe", ("Violent",))


# -- controls: what gives way to B's whole Safe, as before ------------------------------------------------------------
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_control_a_cut_prompts_unsafe_gives_way_to_the_next_replicas_whole_safe(replicas, use_async):
    """A counts 2 prompt tokens (Ollama cut the prompt to its context) and says Unsafe: no verdict about the text,
    only an Unsafe that stands when no whole verdict comes. B read it whole: Safe stands."""
    a, b = replicas
    a.answer = lambda: (200, {**reply(choice(UNSAFE)), "usage": {"prompt_tokens": 2, "total_tokens": 9}}, {})
    decision = _asked_a_then_b(a, b, use_async, _guard([b.url, a.url], Policy()))
    assert (decision.allowed, decision.reason, decision.error) == (True, "safe", None)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    "answer",
    [
        (503, {"error": {"message": "overloaded", "type": "server_error"}}, {}),
        (200, reply(choice(SAFE), choice("I am not sure", 1)), {}),
        (502, GUARD_ERROR, {}),
    ],
    ids=["a-503", "a-safe-beside-a-garbled-choice", "a-502-without-readable"],
)
def test_control_a_failover_that_read_no_risk_is_allowed_on_the_next_replicas_safe(replicas, answer, use_async):
    """Ordinary failover (A 503), and A's answers that read no risk: B's Safe allows, under a strict policy too."""
    a, b = replicas
    a.answer = lambda: answer
    decision = _asked_a_then_b(a, b, use_async, _guard([b.url, a.url], Policy(mode="strict")))
    assert (decision.allowed, decision.reason, decision.error) == (True, "safe", None)
