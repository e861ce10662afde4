"""rt63b's lead, made a test: a check with context whose answer is no verdict but carries a readable Unsafe (a whole
"Unsafe" beside a broken choice, an Unsafe of a cut prompt) is judged once more on its turn alone, as a fail-open
policy asks (`Guard._without_context_after`); that turn alone read Controversial, and the retry's verdict replaced the
error, readable Unsafe and all: a policy that lets Controversial through allowed what `Policy.decide_error` blocks.
The worse of the two stands."""

from __future__ import annotations

import asyncio

import pytest
from qwenguard.core import Guard, Policy
from qwenguard.core.errors import VerdictParseError
from qwenguard.core.verdict import Risk, Verdict

REQUEST = [{"role": "user", "content": "Tell me about elections."}, {"role": "assistant", "content": "Sure."}]


class ReadableUnsafeWithContext:
    """Answers a conversation with context with no verdict carrying a readable Unsafe, a turn alone Controversial."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls: list[list] = []

    def _one(self, conversation):
        if any(turn["content"] for turn in conversation[:-1]):  # with its context (the retry empties it)
            error = VerdictParseError("choices[1] cut at max_tokens")
            error.readable = Verdict(Risk.UNSAFE, ("Violent",), None, "Safety: Unsafe\nCategories: Violent")
            return error
        return Verdict(Risk.CONTROVERSIAL, ("Politically Sensitive Topics",), None, "Safety: Controversial")

    def classify(self, conversations, *, timeout=None):
        self.calls.append(list(conversations))
        return [self._one(c) for c in conversations]

    async def aclassify(self, conversations, *, timeout=None):
        return self.classify(conversations, timeout=timeout)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_readable_unsafe_is_not_replaced_by_the_turn_alones_controversial(use_async):
    backend = ReadableUnsafeWithContext()
    guard = Guard(backend, Policy(mode="loose", on_error="allow", timeout_s=None), cache_size=0)
    d = asyncio.run(guard.acheck(REQUEST, "response")) if use_async else guard.check(REQUEST, "response")
    assert len(backend.calls) == 2  # judged once more, on the turn alone
    assert (d.allowed, d.reason) == (False, "unsafe"), d
