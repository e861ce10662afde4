"""A window budget too small for the guard prompt is refused when the guard is built (rt59b note).

Before, ``max_window_tokens`` (or ``max_context``) too small to hold the guard's template and a few tokens of text
failed at every check, and under ``on_error="allow"`` every check was let through, flagged: one typo in an operator's
setting turned the guard off. Now the guard refuses to be built, naming the option and the least value it needs."""

from __future__ import annotations

import pytest
from qwenguard.core import Guard, Policy

UNREACHABLE = "http://127.0.0.1:9/v1"  # never contacted: the budget is checked before any request


def test_a_local_guard_with_no_room_for_text_is_refused_when_built():
    with pytest.raises(ValueError, match="max_window_tokens"):
        Guard.from_pretrained("demo", max_window_tokens=8, policy=Policy(on_error="allow"))


def test_a_remote_guard_with_no_room_for_text_is_refused_when_built():
    # Without a tokenizer the budget is a byte bound: the official template alone is over 1,600 bytes.
    with pytest.raises(ValueError, match="max_window_tokens"):
        Guard.remote(UNREACHABLE, model="m", max_window_tokens=64, policy=Policy(on_error="allow"))


def test_the_least_budget_named_in_the_error_is_enough():
    with pytest.raises(ValueError, match=r"at least (\d+)") as info:
        Guard.from_pretrained("demo", max_window_tokens=8)
    least = int(info.value.args[0].rsplit(" ", 1)[-1])
    guard = Guard.from_pretrained("demo", max_window_tokens=least, cache_size=0)
    try:
        assert guard.check_prompt("What is the capital of France?").allowed
    finally:
        guard.close()
