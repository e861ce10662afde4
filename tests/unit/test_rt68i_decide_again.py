"""rt68i F3: a decision blocked through the windows beneath an excused Unsafe (`Verdict.beneath`) holds their
Controversial verdict; re-decided under another stage (`Policy.decide_again`, which the integrations use to decide
a client's text under two stages) it forgot the Unsafe above them: a stage that ignores nothing allowed it."""

from __future__ import annotations

from qwenguard.core import Policy, Risk, Stage, Verdict

CONTROVERSIAL = Verdict(Risk.CONTROVERSIAL, ("Politically Sensitive Topics",))
COMBINED = Verdict(Risk.UNSAFE, ("PII",), beneath=CONTROVERSIAL)
# The prompt stage ignores PII (strict); the tool-result stage ignores nothing and is loose.
POLICY = Policy.strict(ignore_categories={"PII"}).with_stage("tool_result", mode="loose", ignore_categories=[])


def test_a_decision_blocked_beneath_is_decided_again_on_the_whole_verdict() -> None:
    as_prompt = POLICY.decide(COMBINED, Stage.PROMPT)
    assert not as_prompt.allowed and as_prompt.reason == "controversial"  # what blocked, named
    assert as_prompt.verdict == CONTROVERSIAL and as_prompt.judged == COMBINED
    again = POLICY.decide_again(as_prompt, Stage.TOOL_RESULT)
    assert not again.allowed and again.reason == "unsafe" and again.categories == ("PII",)


def test_a_plain_decision_keeps_no_second_verdict() -> None:
    decided = POLICY.decide(Verdict(Risk.UNSAFE, ("Violent",)), Stage.PROMPT)
    assert decided.judged is None and not POLICY.decide_again(decided, Stage.TOOL_RESULT).allowed
