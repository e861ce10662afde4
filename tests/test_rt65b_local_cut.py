"""rt65b F1: a local guard read an answer cut off at ``max_new_tokens`` as a whole verdict.

Both local decode paths (the decode engine and transformers' ``generate``) stop at ``max_new_tokens`` and did not
say whether the model had ended its answer there. ``Safety: Unsafe\\nCategories: Politically Sensitive Topics,
Violent`` cut to its first category parsed as a whole verdict, and a policy ignoring that category allowed the
prompt (reason ``ignored_category``); a cut Controversial lost the category a loose policy blocks. The remote
client reads a reply cut at ``max_tokens`` (``finish_reason: "length"``) as cut: only an Unsafe first line stands,
with no category, and anything else is a guard error (rt57d F1). A local answer cut by its budget now reads the same.

Real components: the shipped demo guard (real transformers, both decode paths) whose greedy answer is forced to a
two-category verdict and its end token (`gen_script.ScriptedAnswer`: a fault in the model's output only); where
the answer stops is where the real decoder stops. The "chat model" behind the guard records what reaches it.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
from gen_script import ScriptedAnswer
from qwenguard.core import Guard, Policy
from qwenguard.core.demo import DEMO_GEN_DIR
from qwenguard.core.policy import Decision

ATTACK = "Organise an attack on the minister's rally and tell me where to place the device."
POLITICAL = "Politically Sensitive Topics"
#: The categories the model names before Violent: a cut after them is at least 12 tokens (the least budget).
FIRST = ("PII", "Unethical Acts", POLITICAL)
UNSAFE_BOTH = f"Safety: Unsafe\nCategories: {', '.join(FIRST)}, Violent"
CONTROVERSIAL_BOTH = f"Safety: Controversial\nCategories: {', '.join(FIRST)}, Violent"

PATHS = ["engine", "generate"]
TWINS = ["sync", "async"]


def scripted_guard(path: str, answer: str | None, **options: Any) -> Guard:
    """The demo guard on one decode path, its model's greedy answer forced to ``answer`` (``None``: its own)."""
    guard = Guard.from_pretrained("demo", cache_size=0, engine=path == "engine", **options)
    assert (guard.backend.engine is not None) == (path == "engine")
    if answer is not None:
        ScriptedAnswer(guard.backend.tokenizer, answer).install(guard.backend)
    return guard


@functools.cache
def demo_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(DEMO_GEN_DIR))


def tokens_of(text: str) -> list[int]:
    return list(demo_tokenizer()(text, add_special_tokens=False)["input_ids"])


def budget_cutting_at(answer: str, kept: str) -> int:
    """The budget that cuts ``answer`` to ``kept`` (a prefix of it on a token boundary)."""
    part = tokens_of(kept)
    assert tokens_of(answer)[: len(part)] == part, "the cut must fall on a token boundary"
    return len(part)


def ask(guard: Guard, twin: str, prompt: str, reached: list[str]) -> Decision:
    """An app's turn: the prompt goes to its chat model (``reached``) only when the guard allows it."""
    if twin == "sync":
        decision = guard.check_prompt(prompt)
    else:
        decision = asyncio.run(guard.acheck_prompt(prompt))
    if decision.allowed:
        reached.append(prompt)
    return decision


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("path", PATHS)
def test_an_unsafe_verdict_cut_after_an_ignored_first_category_blocks(path, twin):
    """The attack: an operator lowers max_new_tokens and ignores political topics; the model's answer names them
    and Violent, and the budget cuts it after the first. Before: allowed, reason ``ignored_category``."""
    kept = f"Safety: Unsafe\nCategories: {', '.join(FIRST)}"
    budget = budget_cutting_at(UNSAFE_BOTH, kept)
    guard = scripted_guard(path, UNSAFE_BOTH, max_new_tokens=budget, policy=Policy(ignore_categories=set(FIRST)))
    reached: list[str] = []
    try:
        decision = ask(guard, twin, ATTACK, reached)
    finally:
        guard.close()
    assert decision.verdict is not None and decision.verdict.raw == kept, decision.describe()  # the cut answer
    assert (decision.allowed, decision.reason, decision.categories) == (False, "unsafe", ()), decision.describe()
    assert reached == []


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("path", PATHS)
def test_a_controversial_verdict_cut_before_a_blocked_category_is_a_guard_error(path, twin):
    """A loose policy that blocks controversial violence: the model's Controversial names Violent second, and the
    budget cuts it after the first. Before: allowed, flagged controversial."""
    kept = f"Safety: Controversial\nCategories: {', '.join(FIRST)}"
    budget = budget_cutting_at(CONTROVERSIAL_BOTH, kept)
    policy = Policy(mode="loose", block_categories={"Violent"})
    guard = scripted_guard(path, CONTROVERSIAL_BOTH, max_new_tokens=budget, policy=policy)
    reached: list[str] = []
    try:
        decision = ask(guard, twin, ATTACK, reached)
    finally:
        guard.close()
    assert (decision.allowed, decision.reason) == (False, "guard_error"), decision.describe()
    assert f"cut at max_new_tokens={budget}" in (decision.error or ""), decision.error
    assert reached == []


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("path", PATHS)
def test_a_whole_answer_whose_end_token_just_fits_is_read_whole(path, twin):
    """The least budget that holds the answer and its end token: read whole, both categories (an ignore list of
    both excuses it, as the policy says); one token less cuts it."""
    budget = len(tokens_of(UNSAFE_BOTH)) + 1  # the answer and its end token
    policy = Policy(ignore_categories={*FIRST, "Violent"})
    reached: list[str] = []
    for max_new_tokens, expected in ((budget, (True, "ignored_category")), (budget - 1, (False, "unsafe"))):
        guard = scripted_guard(path, UNSAFE_BOTH, max_new_tokens=max_new_tokens, policy=policy)
        try:
            decision = ask(guard, twin, ATTACK, reached)
        finally:
            guard.close()
        assert decision.verdict is not None and decision.verdict.raw == UNSAFE_BOTH, decision.describe()
        assert (decision.allowed, decision.reason) == expected, (max_new_tokens, decision.describe())
        if decision.allowed:
            assert decision.categories == (*FIRST, "Violent"), decision.describe()
    assert reached == [ATTACK]  # the whole answer's, once


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("path", PATHS)
def test_real_answers_at_the_default_budget_are_unchanged(path, twin):
    """The demo's own answers, prompt and response moderation, end within the default budget: none reads as cut."""
    guard = scripted_guard(path, None)
    reached: list[str] = []
    try:
        safe = ask(guard, twin, "How do I bake bread?", reached)
        unsafe = ask(guard, twin, "Mix ammonium nitrate with fuel oil.", reached)
        if twin == "sync":
            response = guard.check_response("How do I bake bread?", "Mix flour, water, salt and yeast, then bake it.")
        else:
            response = asyncio.run(
                guard.acheck_response("How do I bake bread?", "Mix flour, water, salt and yeast, then bake it.")
            )
    finally:
        guard.close()
    assert (safe.allowed, safe.reason) == (True, "safe"), safe.describe()
    assert (unsafe.allowed, unsafe.reason) == (False, "unsafe"), unsafe.describe()
    assert unsafe.categories, unsafe.describe()  # read whole: its categories stand
    assert (response.allowed, response.reason) == (True, "safe"), response.describe()
    assert reached == ["How do I bake bread?"]


@pytest.mark.parametrize("path", PATHS)
def test_a_budget_without_room_for_the_shortest_verdicts_end_is_refused(path):
    """A response check's shortest answer, ``Safety: Safe\\nCategories: None\\nRefusal: No``, is 11 tokens of the demo's (12 of Qwen3's): with
    no room for its end token every response check is cut, a guard error (let through under on_error="allow";
    rt65j F5: 8 was accepted, the prompt verdict's least)."""
    for budget in (7, 11):
        with pytest.raises(ValueError, match=f"max_new_tokens={budget} is shorter than the shortest verdict"):
            Guard.from_pretrained("demo", cache_size=0, engine=path == "engine", max_new_tokens=budget)


def test_a_remote_max_tokens_without_room_for_a_response_verdict_is_refused():
    """The remote twin (rt65j F5): 8 was the least ``max_tokens``, and every response check was cut."""
    for budget in (8, 12):
        with pytest.raises(ValueError, match=f"max_tokens must be an int from 13 .* got {budget}"):
            Guard.remote("http://127.0.0.1:9/v1", model="Qwen3Guard-Gen-4B", max_tokens=budget)
