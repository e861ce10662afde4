import pytest
from qwenguard.core import Action, Policy, Risk, Stage, StagePolicy, Verdict

UNSAFE = Verdict(Risk.UNSAFE, ("Violent",))
CONTRO = Verdict(Risk.CONTROVERSIAL, ("Politically Sensitive Topics",))
SAFE = Verdict(Risk.SAFE)


def test_strict_blocks_controversial_loose_flags_it():
    assert Policy.strict().decide(CONTRO, Stage.PROMPT).action is Action.BLOCK
    d = Policy.loose().decide(CONTRO, Stage.PROMPT)
    assert (d.allowed, d.action, d.reason) == (True, Action.FLAG, "controversial")


def test_unsafe_blocks_in_both_modes_and_safe_allows():
    for policy in (Policy.strict(), Policy.loose()):
        assert policy.decide(UNSAFE, Stage.RESPONSE).blocked
        assert policy.decide(SAFE, Stage.RESPONSE).action is Action.ALLOW


def test_ignore_and_block_lists():
    p = Policy.loose(ignore_categories={"Violent"}, block_categories=["Politically Sensitive Topics"])
    assert p.decide(UNSAFE, Stage.PROMPT).action is Action.FLAG
    assert p.decide(UNSAFE, Stage.PROMPT).reason == "ignored_category"
    assert p.decide(CONTRO, Stage.PROMPT).action is Action.BLOCK
    mixed = Verdict(Risk.UNSAFE, ("Violent", "PII"))
    assert p.decide(mixed, Stage.PROMPT).blocked  # only fully-ignored verdicts pass


def test_stage_overrides():
    p = Policy.strict(stages={Stage.RETRIEVAL: StagePolicy(mode="loose", on_error="allow")})
    assert p.decide(CONTRO, Stage.RETRIEVAL).allowed
    assert p.decide(CONTRO, Stage.PROMPT).blocked
    assert p.decide_error(Stage.RETRIEVAL, RuntimeError("x")).allowed
    assert p.decide_error(Stage.PROMPT, RuntimeError("x")).blocked
    assert p.with_stage("tool_call", enabled=False).enabled(Stage.TOOL_CALL) is False


def test_errors_are_their_own_outcome():
    d = Policy().decide_error(Stage.PROMPT, TimeoutError("slow"), timeout=True)
    assert (d.allowed, d.action, d.reason, d.verdict) == (False, Action.BLOCK, "timeout", None)
    d = Policy(on_error="allow").decide_error(Stage.PROMPT, "boom")
    assert (d.allowed, d.action, d.reason, d.error) == (True, Action.FLAG, "guard_error", "boom")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "lenient"},
        {"on_error": "ignore"},
        {"timeout_s": 0},
        {"timeout_s": -1},
        {"ignore_categories": ["Bombs"]},
    ],
)
def test_bad_policy_values_raise(kwargs):
    with pytest.raises(ValueError):
        Policy(**kwargs)


def test_to_dict_is_stable_and_json_able():
    import json

    p = Policy.loose(ignore_categories={"PII", "Violent"}, stages={Stage.PROMPT: StagePolicy(mode="strict")})
    d = p.to_dict()
    assert d["ignore_categories"] == ["PII", "Violent"]
    assert d["stages"]["prompt"]["mode"] == "strict"
    assert json.dumps(d) == json.dumps(
        Policy.loose(ignore_categories=["Violent", "PII"], stages={"prompt": StagePolicy(mode="strict")}).to_dict()
    )


def test_unknown_categories_are_named_a_few_and_counted():
    """A second red team (rt44c): a client's policy of 90,000 made-up category names got a 400 of 889 KB that
    echoed them all (and the stream's error frame the same)."""
    with pytest.raises(ValueError) as info:
        Policy.from_dict({"block_categories": [f"made-up {i}" for i in range(90_000)]})
    message = str(info.value)
    assert "89995 more" in message and len(message) < 1_000


def test_a_category_that_is_not_a_name_is_refused_before_reading_the_rest():
    """A second red team (rt44c F2): a stream's open frame whose policy lists 40,000 floats as block_categories
    spent ~70 ms turning each into a string (holding the GIL) to name it unknown. A category is a name: anything
    else is refused at once."""
    seen = []

    class Number(float):
        def __str__(self) -> str:
            seen.append(self)
            return float.__repr__(self)

    with pytest.raises(TypeError, match="a category is a name"):
        Policy.from_dict({"block_categories": [Number(1.5)] * 40_000})
    assert seen == []
    with pytest.raises(TypeError, match="ignore_categories: a category is a name"):
        Policy(ignore_categories=[1])  # type: ignore[list-item]
    assert Policy(block_categories=["Violent"]).block_categories == {"Violent"}
