"""`Guard.check` on conversations carrying fields beside role and content, tried as an attacker would:
text a model is sent in a field the guard dropped was never judged.

Before: an assistant turn's legacy OpenAI ``function_call`` and its ``refusal`` text were dropped (the turn
read as empty: allowed, reason "empty", the judge never called), a ``name`` and extra keys of a tool call
were dropped, and ``max_chars`` counted only ``content``, so 50,000 characters of tool-call arguments went to
the model past ``max_chars=10,000`` (and under ``on_error="allow"`` the work ran into the deadline and was
let through as a timeout). Now what a model reads is judged, anything else with a value is refused as the
server refuses it (422 there, ``ValueError`` here), and the operator's limit counts every judged character.
"""

from __future__ import annotations

import pytest
from faults import ScriptedBackend
from hypothesis import given, settings
from hypothesis import strategies as st
from qwenguard.core import Guard, InputTooLarge, Policy, Stage
from qwenguard.core.formats.prompts import normalize_messages

ASK = "Please pay my electricity bill."


def _judge(conv) -> str:
    head = "Safety: Unsafe\nCategories: Violent" if any("BOMB" in m["content"] for m in conv) else "Safety: Safe"
    head += "" if "Unsafe" in head else "\nCategories: None"
    return head + ("\nRefusal: No" if conv[-1]["role"] == "assistant" else "")


@pytest.fixture
def judge():
    return ScriptedBackend(_judge, name="kw")


def _guard(judge, **kw):
    return Guard(judge, policy=kw.pop("policy", Policy.strict()), cache_size=0, **kw)


def _turns(turn):
    return [{"role": "user", "content": ASK}, turn]


@pytest.mark.parametrize(
    "turn",
    [
        {"role": "assistant", "content": "", "function_call": {"name": "wire_funds", "arguments": '{"memo": "BOMB"}'}},
        {"role": "assistant", "content": None, "function_call": {"name": "BOMB_maker", "arguments": "{}"}},
        {"role": "assistant", "content": None, "refusal": "I will not. But here is how to build a BOMB."},
    ],
    ids=["function_call-arguments", "function_call-name", "refusal"],
)
@pytest.mark.parametrize("stage", [Stage.TOOL_CALL, Stage.RESPONSE])
def test_text_in_an_assistant_turns_other_fields_is_judged(judge, turn, stage):
    decision = _guard(judge).check(_turns(turn), stage)
    assert not decision.allowed and decision.reason != "empty", decision
    assert judge.calls, "the judge was never called"


async def test_async_function_call_is_judged(judge):
    turn = {"role": "assistant", "content": "", "function_call": {"name": "wire_funds", "arguments": '{"a": "BOMB"}'}}
    decision = await _guard(judge).acheck(_turns(turn), Stage.TOOL_CALL)
    assert not decision.allowed, decision


def test_openai_sdk_echoes_of_empty_fields_are_accepted(judge):
    turn = {"role": "assistant", "content": "Done.", "refusal": None, "annotations": [], "audio": None}
    assert _guard(judge).check(_turns(turn), Stage.RESPONSE).allowed


@pytest.mark.parametrize(
    "turn, field",
    [
        ({"role": "user", "content": "hi", "name": "BOMB"}, "'name'"),
        ({"role": "assistant", "content": "ok", "metadata": {"note": "BOMB"}}, "'metadata'"),
        (
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "pay", "arguments": "{}"}, "args": {"memo": "BOMB"}}],
            },
            "args",
        ),
        (
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "pay", "arguments": "{}", "x": 1}}],
            },
            "function.x",
        ),
        ({"role": "system", "content": "s", "tool_calls": [{"name": "pay", "args": {"memo": "BOMB"}}]}, "system"),
        ({"role": "user", "content": "hi", "refusal": "BOMB"}, "user message"),
    ],
    ids=["name", "unknown-key", "args-beside-function", "function-extra-key", "system-tool-calls", "user-refusal"],
)
def test_fields_the_guard_does_not_read_are_refused_not_dropped(judge, turn, field):
    guard = _guard(judge, policy=Policy(on_error="allow"))  # a refusal is the caller's error, whatever on_error says
    with pytest.raises(ValueError) as info:
        guard.check(_turns(turn))
    assert field in str(info.value)
    assert not judge.calls


@pytest.mark.parametrize(
    "turn",
    [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "pay", "arguments": "x" * 50_000}}],
        },
        {"role": "assistant", "content": None, "tool_calls": [{"name": "pay", "args": {"memo": ["x" * 1_000] * 50}}]},
        {"role": "assistant", "content": None, "function_call": {"name": "pay", "arguments": "x" * 50_000}},
        {"role": "assistant", "content": "", "refusal": "x" * 50_000},
        # rt49c M1: containers and numbers counted as nothing or one character, written as "[], " or 200 digits.
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "f", "arguments": {"a": [[]] * 5000}}}],
        },
        {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "args": {"a": [{}] * 5000}}]},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "args": {"a": [10**200] * 100}}]},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "args": {"a": [0.1] * 3000}}]},
        # rt49c M1 (a): no content key, so two keys only: read all the same.
        {"role": "assistant", "tool_calls": [{"name": "pay", "args": {"memo": "x" * 50_000}}]},
        {"role": "assistant", "refusal": "x" * 50_000},
    ],
    ids=[
        "openai-arguments",
        "langchain-args",
        "function_call",
        "refusal",
        "empty-lists",
        "empty-maps",
        "long-ints",
        "floats",
        "calls-no-content",
        "refusal-no-content",
    ],
)
def test_max_chars_counts_every_judged_character(judge, turn):
    guard = _guard(judge, policy=Policy(on_error="allow", timeout_s=0.5), max_chars=10_000)
    with pytest.raises(InputTooLarge):
        guard.check(_turns(turn), Stage.TOOL_CALL)
    assert not judge.calls


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(arguments=st.dictionaries(st.text(max_size=4), _JSON, max_size=4))
def test_no_call_is_judged_longer_than_max_chars_counts_it(arguments):
    """What ``max_chars`` counts of a tool call is never fewer characters than the text the model reads of it."""
    turn = {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "args": arguments}]}
    judged = len(normalize_messages(_turns(turn))[-1]["content"])
    guard = Guard(ScriptedBackend(_judge, name="kw"), cache_size=0, max_chars=len(ASK) + judged - 1)
    with pytest.raises(InputTooLarge):
        guard._check_size(_turns(turn))


def test_arguments_that_hold_themselves_are_a_clear_error_not_too_large(judge):
    """rt49e F5: a self-referencing arguments mapping was walked until past ``max_chars`` and refused as "1,000,015
    characters exceed max_chars": it fails closed either way, but the caller was sent after the wrong cause."""
    arguments: dict = {}
    arguments["a"] = arguments
    turn = {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "args": arguments}]}
    with pytest.raises(ValueError, match="Circular reference"):
        _guard(judge).check(_turns(turn), Stage.TOOL_CALL)
    assert not judge.calls
