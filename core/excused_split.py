"""A text the policy excused because its one answer named only ignored categories, judged again in parts.

Qwen3Guard names one primary category per answer (QwenLM/Qwen3Guard#7). A window holding an SSN and bomb
instructions read as "Unsafe, PII" alone was excused whole by a policy ignoring PII (rt68i F2): the SSN switched
the guard off for the rest of the window. Such a check is judged again with its judged turn cut in parts
(`formats.halves`), the parts still excused cut again, `EXCUSED_SPLIT_LEVELS` times at most; what the parts are
read as is merged with the first answer (`worst`) and decided again, so the check blocks where a part names a
category the policy blocks, and stays excused where every part names only ignored ones (or is safe). Each level is
one call of at most ``max_checks`` conversations at a time; a part the guard could not read is decided by
``on_error``, as a window would be. An ignored category's text written inside the same few words as the rest still
excuses them (a part is never cut below `formats.halves.MIN_SPLIT_CHARS`). The logic lives here; `Guard` and a
stream's `WindowJudge` run the calls (sync and async).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from .errors import GuardTimeout, GuardUnavailable, InputTooLarge
from .formats.halves import cut_conversation
from .policy import Decision, Policy
from .verdict import Stage, Verdict, worst

__all__ = ["EXCUSED_PARTS", "EXCUSED_SPLIT_LEVELS", "ExcusedSplit", "is_excused"]

#: An excused text is cut into this many parts (three times in two), each judged; a part excused again is cut as
#: often, `EXCUSED_SPLIT_LEVELS` times in all: a part is then a 64th of the text (or a few words), each level one
#: call, at most 8 + 64 parts for a text (one long window of SSNs), and about the text's own size a level.
EXCUSED_PARTS = 8
EXCUSED_SPLIT_LEVELS = 2


def is_excused(decision: Decision | None) -> bool:
    """``decision`` allowed a text only because the categories its verdict names are all ignored."""
    return decision is not None and decision.reason == "ignored_category" and decision.verdict is not None


@dataclass
class _Root:
    """One excused check: what its parts were read as, and the errors of the parts not read."""

    stage: Stage
    decision: Decision
    also: tuple[Stage, ...] = ()  # more stages the check is decided at, the strictest decision standing (the server)
    found: list[Verdict] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    blocked: bool = False


@dataclass
class ExcusedSplit:
    """The parts to judge of excused checks, level by level. ``pieces()`` gives the next level's conversations
    (``[]``: done), ``take()`` what they were judged as; ``decision(i)`` is then the i-th root's decision."""

    policy: Policy
    roots: list[_Root]
    _level: list[tuple[int, list[dict[str, str]]]] = field(default_factory=list)
    _asked: list[int] = field(default_factory=list)  # the root of each part asked, in order
    _parts: list[list[dict[str, str]]] = field(default_factory=list)
    _levels: int = 0

    @classmethod
    def of(
        cls,
        policy: Policy,
        checks: Sequence[tuple[Stage | Sequence[Stage], Sequence[dict[str, str]], Decision]],
    ) -> ExcusedSplit:
        """The plan for ``(stage, conversation, its excused decision)`` of each root; ``stage`` may be several stages,
        the first the parts are asked under, the strictest decision standing. A root is asked at most
        `EXCUSED_PARTS` + `EXCUSED_PARTS` squared parts (and its earlier turns): a bound of its own, not a budget
        shared first come, first served, which made a full batch of ordinary PII documents fail closed (rt69i F4);
        `Guard` and the server bound the parts' calls by a deadline."""
        roots = []
        for stage, _, decision in checks:
            first, *more = (stage,) if isinstance(stage, Stage) else stage
            roots.append(_Root(first, decision, tuple(more)))
        plan = cls(policy, roots)
        plan._level = [(i, list(conversation)) for i, (_, conversation, _) in enumerate(checks)]
        return plan

    def decide(self, i: int, outcome: Verdict | BaseException) -> Decision:
        """The i-th root's policy decision on ``outcome`` (a part's verdict or error) at its stages: the strictest."""
        root = self.roots[i]
        timeout = isinstance(outcome, BaseException) and _timed_out(outcome)
        decisions = [
            self.policy.decide(outcome, stage)
            if isinstance(outcome, Verdict)
            else self.policy.decide_error(stage, _error_of(outcome), timeout=timeout)
            for stage in (root.stage, *root.also)
        ]
        return max(decisions, key=_severity)

    def pieces(self) -> list[tuple[int, Stage, list[dict[str, str]]]]:
        """The next level's parts as ``(root, stage, conversation)``; ``[]`` once every root is decided or cut as
        often as `EXCUSED_SPLIT_LEVELS` allows."""
        out: list[tuple[int, Stage, list[dict[str, str]]]] = []
        if self._levels < EXCUSED_SPLIT_LEVELS:
            self._levels += 1
            for i, conversation in self._level:
                if self.roots[i].blocked:
                    continue
                if _emptied(conversation):
                    # The earlier turns read with the last one emptied were excused again (an SSN in them too):
                    # the newest user turn among them is cut, with the turns before it (rt69n F2).
                    asked = _before_last_ask(conversation)
                    parts = [asked, *cut_conversation(asked, EXCUSED_PARTS.bit_length() - 1)]
                else:
                    parts = cut_conversation(conversation, EXCUSED_PARTS.bit_length() - 1)
                if self._levels == 1 and (alone := _earlier_turns(conversation)) is not None:
                    parts.append(alone)
                out += [(i, self.roots[i].stage, part) for part in parts]
        self._level = []
        self._asked = [i for i, _, _ in out]
        self._parts = [part for _, _, part in out]
        return out

    def take(self, decisions: list[Decision | BaseException]) -> None:
        """What the parts ``pieces`` gave were decided as (a decision, or the error of a part not judged)."""
        for i, part, decided in zip(self._asked, self._parts, decisions):
            root = self.roots[i]
            if isinstance(decided, BaseException):
                root.errors.append(decided)
                continue
            verdict = decided.judged or decided.verdict
            if decided.reason in ("guard_error", "timeout"):
                message = decided.error or decided.reason
                root.errors.append(GuardTimeout(message) if decided.reason == "timeout" else GuardUnavailable(message))
            elif verdict is not None and verdict.risk.rank > 0:
                root.found.append(verdict)
                if not decided.allowed:
                    root.blocked = True
                elif is_excused(decided):
                    self._level.append((i, part))

    def decision(self, i: int) -> Decision:
        """The i-th root's decision: its first, or the stricter one its parts' readings and errors give."""
        root = self.roots[i]
        first = root.decision
        verdict: Verdict = first.judged or first.verdict  # type: ignore[assignment]
        decided = first
        if root.found:
            # Kept as what was judged even where this stage's policy lets it through: another stage's policy
            # deciding this decision again (`Policy.decide_again`) reads the parts too.
            merged = worst([verdict, *root.found])
            again = self.decide(i, merged)
            decided = again if _severity(again) > _severity(first) else replace(first, judged=merged)
        for error in root.errors:
            failed = self.decide(i, error)
            if _severity(failed) > _severity(decided):
                decided = failed
        return decided if decided is first else replace(decided, cached=False)

    def outcome(self, i: int) -> Verdict | BaseException:
        """The i-th root as one outcome, for a caller that decides outcomes itself (a stream's window): the first
        verdict with what its parts were read as (`worst`), or the error of a part not read where the policy
        decides that error more strictly."""
        root = self.roots[i]
        first: Verdict = root.decision.judged or root.decision.verdict  # type: ignore[assignment]
        verdict = worst([first, *root.found]) if root.found else first
        decided = self.decide(i, verdict)
        for error in root.errors:
            failed = self.decide(i, error)
            if _severity(failed) > _severity(decided):
                return error
        return verdict


def _earlier_turns(conversation: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """The conversation with its last turn, a user's, emptied: what the earlier turns are read as without it. Only
    the last turn is cut; a short one (an SSN alone, too short to cut) excused a harmful request in the turns before
    it, read with it as PII alone (rt69i F1). ``None`` for a single turn or an answer (judged at its own stage)."""
    *context, last = conversation
    if not context or last["role"] != "user":
        return None
    return [*context, {**last, "content": ""}]


def _emptied(conversation: list[dict[str, str]]) -> bool:
    """``conversation`` is an `_earlier_turns` reading: a user's last turn emptied after earlier turns."""
    return len(conversation) > 1 and conversation[-1]["role"] == "user" and not conversation[-1]["content"]


def _before_last_ask(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """The turns up to the newest user turn that says something, before an emptied last one."""
    for end in range(len(conversation) - 2, -1, -1):
        if conversation[end]["role"] == "user" and conversation[end]["content"].strip():
            return conversation[: end + 1]
    return conversation[:-1]


_SEVERITY: dict[str, int] = {"allow": 0, "flag": 1, "block": 2}


def _severity(decision: Decision) -> int:
    return _SEVERITY[decision.action.value]


def _timed_out(error: BaseException) -> bool:
    return isinstance(error, GuardTimeout)


def _error_of(error: BaseException) -> BaseException | str:
    if isinstance(error, InputTooLarge):
        return f"a part of an excused text was too large to judge ({error})"
    return error
