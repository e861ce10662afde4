"""`Policy.tightened`: a served guard's policy (the operator's) made stricter by a client, never looser.

The properties are checked over generated policies and verdicts (hypothesis), plus one example per
field so a reader sees each rule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qwenguard.core import Action, Policy, Risk, Stage, StagePolicy, Verdict
from qwenguard.core.verdict import CATEGORIES

SEVERITY = {Action.ALLOW: 0, Action.FLAG: 1, Action.BLOCK: 2}

categories = st.frozensets(st.sampled_from(CATEGORIES), max_size=4)
timeouts = st.one_of(st.none(), st.floats(min_value=0.01, max_value=60, allow_nan=False))
stage_settings = st.fixed_dictionaries(
    {
        "enabled": st.booleans(),
        "mode": st.sampled_from([None, "strict", "loose"]),
        "block_categories": st.one_of(st.none(), categories),
        "ignore_categories": st.one_of(st.none(), categories),
        "on_error": st.sampled_from([None, "block", "allow"]),
        "timeout_s": timeouts,
    }
)


def _policy(top: dict, stages: dict) -> Policy:
    """A Policy of these settings, with no category both blocked and ignored as any stage resolves them (refused
    at construction since rt53d F3): such a category is dropped from the ignore list that holds it."""
    top = {**top, "ignore_categories": top["ignore_categories"] - top["block_categories"]}
    built = {}
    for stage, settings_ in stages.items():
        block = settings_["block_categories"]
        block = top["block_categories"] if block is None else block
        ignore = settings_["ignore_categories"]
        if ignore is not None or block & top["ignore_categories"]:
            ignore = (top["ignore_categories"] if ignore is None else ignore) - block
        built[stage] = StagePolicy(**{**settings_, "ignore_categories": ignore})
    return Policy(**top, stages=built)


policies = st.builds(
    _policy,
    st.fixed_dictionaries(
        {
            "mode": st.sampled_from(["strict", "loose"]),
            "block_categories": categories,
            "ignore_categories": categories,
            "on_error": st.sampled_from(["block", "allow"]),
            "timeout_s": timeouts,
        }
    ),
    st.dictionaries(st.sampled_from(list(Stage)), stage_settings, max_size=3),
)
verdicts = st.builds(Verdict, st.sampled_from(list(Risk)), st.lists(st.sampled_from(CATEGORIES), max_size=3).map(tuple))


def _limit(t: float | None) -> float:
    return math.inf if t is None else t


@settings(max_examples=200, deadline=None)
@given(operator=policies, client=policies, verdict=verdicts, stage=st.sampled_from(list(Stage)))
def test_a_client_policy_never_lets_through_what_the_operators_blocks(operator, client, verdict, stage):
    pinned = operator.tightened(client)
    got = pinned.decide(verdict, stage)
    # at least as severe as either side: nothing the operator (or the client) blocks or flags is allowed
    assert SEVERITY[got.action] >= SEVERITY[operator.decide(verdict, stage).action]
    assert SEVERITY[got.action] >= SEVERITY[client.decide(verdict, stage).action]
    if operator.decide(verdict, stage).blocked:
        assert got.blocked
    if operator.decide_error(stage, RuntimeError("x")).blocked:
        assert pinned.decide_error(stage, RuntimeError("x")).blocked
    if operator.enabled(stage):
        assert pinned.enabled(stage)
    assert pinned.enabled(stage) == (operator.enabled(stage) or client.enabled(stage))


@settings(max_examples=200, deadline=None)
@given(operator=policies, client=policies, stage=st.sampled_from(list(Stage)))
def test_timeouts_only_shorten_where_the_result_fails_closed(operator, client, stage):
    pinned = operator.tightened(client)
    if pinned.on_error_for(stage) == "block":
        assert _limit(pinned.timeout_for(stage)) == min(
            _limit(operator.timeout_for(stage)), _limit(client.timeout_for(stage))
        )
    else:  # fails open: a client's shorter budget would let text through unchecked, so the operator's stays
        assert pinned.timeout_for(stage) == operator.timeout_for(stage)


@settings(max_examples=100, deadline=None)
@given(operator=policies, client=policies, verdict=verdicts, stage=st.sampled_from(list(Stage)))
def test_tightening_is_idempotent_and_survives_the_wire(operator, client, verdict, stage):
    pinned = operator.tightened(client)
    assert Policy.from_dict(pinned.to_dict()) == pinned
    again = pinned.tightened(client)
    assert again.decide(verdict, stage) == pinned.decide(verdict, stage)
    assert operator.tightened(operator).decide(verdict, stage) == operator.decide(verdict, stage)


# -- one example per rule -------------------------------------------------------------------------------
UNSAFE_PII = Verdict(Risk.UNSAFE, ("PII",))
POLITICS = Verdict(Risk.CONTROVERSIAL, ("Politically Sensitive Topics",))


def test_each_field_takes_the_stricter_side():
    operator = Policy.loose(ignore_categories=["PII", "Violent"], on_error="allow", timeout_s=10)
    # a client asking to ignore everything and fail open changes nothing
    everything = Policy.loose(ignore_categories=CATEGORIES, on_error="allow", timeout_s=0.01)
    assert operator.tightened(everything) == operator
    # a strict client: controversial now blocks; an ignore list shrinks to what both ignore
    strict = Policy.strict(ignore_categories=["PII"], block_categories=["Politically Sensitive Topics"])
    pinned = operator.tightened(strict)
    assert (pinned.mode, pinned.ignore_categories, pinned.block_categories) == (
        "strict",
        frozenset({"PII"}),
        frozenset({"Politically Sensitive Topics"}),
    )
    assert pinned.decide(POLITICS, Stage.PROMPT).blocked
    assert pinned.decide(UNSAFE_PII, Stage.PROMPT).action is Action.FLAG  # both ignore PII
    assert pinned.decide(Verdict(Risk.UNSAFE, ("Violent",)), Stage.PROMPT).blocked
    # fail closed wins, and then the shorter budget
    closed = operator.tightened(Policy(on_error="block", timeout_s=2))
    assert (closed.on_error, closed.timeout_s) == ("block", 2)


def test_stages_a_client_can_switch_on_but_never_off():
    operator = Policy.strict().with_stage("retrieval", enabled=False)
    off = Policy().with_stage("stream", enabled=False).with_stage("prompt", enabled=False)
    pinned = operator.tightened(off)
    assert pinned.enabled(Stage.STREAM) and pinned.enabled(Stage.PROMPT)
    assert pinned.enabled(Stage.RETRIEVAL)  # the client turned it back on (its default: every stage on)
    both_off = operator.tightened(Policy().with_stage("retrieval", enabled=False))
    assert not both_off.enabled(Stage.RETRIEVAL)


def test_a_stage_without_a_timeout_keeps_waiting_when_it_fails_open():
    operator = Policy(on_error="allow", timeout_s=None, stages={Stage.PROMPT: StagePolicy(timeout_s=5)})
    pinned = operator.tightened(Policy(on_error="allow", timeout_s=1))
    assert pinned.timeout_for(Stage.STREAM) is None and pinned.timeout_for(Stage.PROMPT) == 5


def test_from_dict_names_what_is_wrong():
    with pytest.raises(ValueError, match="unknown policy fields"):
        Policy.from_dict({"ignore_everything": True})
    with pytest.raises(ValueError, match="unknown fields"):
        Policy.from_dict({"stages": {"stream": {"disabled": True}}})
    with pytest.raises(TypeError, match="enabled"):
        Policy.from_dict({"stages": {"stream": {"enabled": "false"}}})
    with pytest.raises(ValueError):
        Policy.from_dict({"stages": {"everywhere": {}}})
    with pytest.raises(ValueError):
        Policy.from_dict({"mode": None})
    with pytest.raises(ValueError):
        Policy.from_dict({"timeout_s": True})
    assert Policy.from_dict({"ignore_categories": "PII"}).ignore_categories == frozenset({"PII"})
    with pytest.raises(TypeError):
        Policy().tightened({"mode": "loose"})
