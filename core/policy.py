"""What the application wants done with a verdict: `Policy` (pure data) and its `Decision`.

>>> from qwenguard.core import Policy, Verdict, Risk, Stage
>>> Policy.loose().decide(Verdict(Risk.CONTROVERSIAL, ("Politically Sensitive Topics",)), Stage.PROMPT).action
<Action.FLAG: 'flag'>
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Literal

from .verdict import CATEGORIES, Risk, Stage, Verdict

__all__ = ["DEFAULT_TIMEOUT_S", "MAX_TIMEOUT_S", "Action", "Decision", "Mode", "OnError", "Policy", "StagePolicy"]

OnError = Literal["block", "allow"]
Mode = Literal["strict", "loose"]

#: Default per-check budget. Generous enough for a cold CPU model, short enough to notice a hang.
DEFAULT_TIMEOUT_S = 30.0
#: The longest finite per-check budget, about three years. Waits on locks and futures take at most
#: ``threading.TIMEOUT_MAX`` (about 292 years on Linux) and some add a grace to the budget: a longer one (1e10,
#: inf, a JSON 1e999) made every sync check an OverflowError in threading, a guard error let through under
#: ``on_error="allow"`` (rt53d F1). No limit is ``None``.
MAX_TIMEOUT_S = min(1e8, threading.TIMEOUT_MAX / 8)


class Action(str, enum.Enum):
    ALLOW = "allow"
    FLAG = "flag"  # let through, but tell the application (controversial in loose mode, fail-open errors)
    BLOCK = "block"


_PAST = {Action.ALLOW: "allowed", Action.FLAG: "flagged", Action.BLOCK: "blocked"}
_SEVERITY = {Action.ALLOW: 0, Action.FLAG: 1, Action.BLOCK: 2}

# Reasons a Decision can carry. Guard errors and timeouts are their own outcome, never a disguised verdict.
REASONS = ("safe", "unsafe", "controversial", "ignored_category", "guard_error", "timeout", "empty", "disabled")


@dataclass(frozen=True)
class Decision:
    """The outcome of one check.

    ``offset`` is set by streams: the character offset in the streamed text where the flagged span
    starts. ``error`` holds the guard error message when ``reason`` is ``guard_error``/``timeout``.
    ``verdict`` is the verdict decided on: for a text judged in windows whose worst window's categories are all
    ignored, the worse of its decision and that of the windows beneath it (`Verdict.beneath`), so a Controversial
    window blocked beside an ignored category's Unsafe gives ``reason`` "controversial" and its own verdict.
    ``judged`` is then the whole verdict judged (the Unsafe with the windows beneath it), which `Policy.decide_again`
    decides under another stage; ``None`` where ``verdict`` is it.
    """

    allowed: bool
    action: Action
    stage: Stage
    reason: str
    verdict: Verdict | None = None
    error: str | None = None
    offset: int | None = None
    cached: bool = False
    judged: Verdict | None = field(default=None, compare=False, repr=False)

    def __bool__(self) -> bool:
        # Every object is truthy by default, so `if guard.check_prompt(text): call_llm(text)` would let blocked
        # text through and `all(guard.check_documents(q, docs))` would pass an injected page. Refused, as
        # numpy refuses an array's truth value: returning `allowed` instead would make `if not decision:`
        # mean something else in versions before this one.
        raise TypeError(
            "a Decision is not a condition: test decision.allowed (or decision.blocked), "
            "or call enforce(decision) to raise when it is blocked"
        )

    @property
    def blocked(self) -> bool:
        return not self.allowed

    @property
    def failed_open(self) -> bool:
        """Allowed without a verdict: the guard failed or timed out and the policy fails open."""
        return self.allowed and self.reason in ("guard_error", "timeout")

    @property
    def risk(self) -> Risk | None:
        return None if self.verdict is None else self.verdict.risk

    @property
    def categories(self) -> tuple[str, ...]:
        return () if self.verdict is None else self.verdict.categories

    def describe(self) -> str:
        what = f"{self.stage.value} {_PAST[self.action]} ({self.reason}"
        if self.categories:
            what += f": {', '.join(self.categories)}"
        if self.offset is not None:
            what += f", at offset {self.offset}"
        if self.error:
            what += f"; {self.error}"
        return what + ")"

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "action": self.action.value,
            "stage": self.stage.value,
            "reason": self.reason,
            "risk": None if self.verdict is None else self.verdict.risk.value,
            "categories": list(self.categories),
            "refusal": None if self.verdict is None else self.verdict.refusal,
            "latency_ms": None if self.verdict is None else round(self.verdict.latency_ms, 3),
            "error": self.error,
            "offset": self.offset,
            "cached": self.cached,
        }


#: Characters of a value that an error message quotes (`quoted`): enough to tell which value it was, never a copy of
#: it. A served guard's clients write the policies and stream options these messages name: a 5,000-character
#: policy key came back whole in a 400 (rt66f F3).
QUOTED_CHARS = 80


def quoted(value: Any) -> str:
    """``value`` as an error message quotes it: repr'd, at most its first `QUOTED_CHARS` characters (and how long it
    was, when cut)."""
    if not isinstance(value, str):
        shown = repr(value)
        return shown if len(shown) <= QUOTED_CHARS else f"{shown[:QUOTED_CHARS]}…"
    if len(value) <= QUOTED_CHARS:
        return repr(value)
    return f"{value[:QUOTED_CHARS]!r}… ({len(value):,} characters)"


def _named(values: list[Any]) -> str:
    """A few of ``values`` as an error message names them (`quoted`), and how many more there are."""
    shown = f"[{', '.join(quoted(v) for v in values[:5])}]"
    return shown + (f" and {len(values) - 5} more" if len(values) > 5 else "")


def require_count(name: str, value: Any, minimum: int = 1, *, optional: bool = False) -> None:
    """An option that is a count: an int (not a bool) ``>= minimum`` (``None`` too when ``optional``), else an error
    naming the option. A value read from an environment variable or a config file is a str: without this check
    it failed as "'<' not supported between instances of 'str' and 'int'", naming no option (rt50a F2)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        expected = f"an int >= {minimum}" + (" or None" if optional else "")
        raise TypeError(f"{name} must be {expected}, got {quoted(value)} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {quoted(value)}")


def require_switch(name: str, value: object, *, optional: bool = False) -> None:
    """An on/off option: True or False (``None`` too when ``optional``: then the documented default, never "off"),
    else a TypeError naming it. ``bool(value)`` read "false" from a config file or an environment variable as on,
    and None as off: ``screen_prompt=None`` skipped the prompt check (rt57c F2, F3)."""
    if not isinstance(value, bool) and not (optional and value is None):
        expected = "True, False or None" if optional else "True or False"
        raise TypeError(f"{name} must be {expected}, got {quoted(value)} ({type(value).__name__})")


def _tighten(mine: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """One level of `Policy.tightened`: resolved settings in, the stricter of each out."""
    on_error = "block" if "block" in (mine["on_error"], theirs["on_error"]) else "allow"
    timeout = mine["timeout_s"]
    if on_error == "block":
        known = [t for t in (mine["timeout_s"], theirs["timeout_s"]) if t is not None]
        timeout = min(known) if known else None
    return {
        "enabled": mine["enabled"] or theirs["enabled"],
        "mode": "strict" if "strict" in (mine["mode"], theirs["mode"]) else "loose",
        "block_categories": mine["block_categories"] | theirs["block_categories"],
        "ignore_categories": mine["ignore_categories"] & theirs["ignore_categories"],
        "on_error": on_error,
        "timeout_s": timeout,
    }


def _categories(values: Iterable[str] | None, what: str) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    elif not isinstance(values, (list, tuple, set, frozenset)):
        # Any other iterable was read as its items: a mapping as its keys, so {"Violent": false} ("do not
        # ignore Violent", a YAML/JSON habit) ignored Violent (rt53d F8).
        shape = "a mapping" if isinstance(values, Mapping) else f"a {type(values).__name__}"
        raise TypeError(
            f"{what} must be a list of category names (or one name), got {shape}"
            + (f": {_named(sorted(map(str, values)))}" if isinstance(values, Mapping) else "")
        )
    names = [getattr(v, "value", v) for v in values]
    # Names only: str() of anything else is no category, and of thousands of floats a client sends costs ~2 us each.
    wrong = next((n for n in names if not isinstance(n, str)), None)
    if wrong is not None:
        raise TypeError(f"{what}: a category is a name (a string), got {type(wrong).__name__}")
    out = frozenset(names)
    unknown = sorted(out - set(CATEGORIES))
    if unknown:
        # A few named, and how many: a client's policy can hold as many as its body allows (a 400 echoed them all).
        named = f"{[v[:64] for v in unknown[:5]]}" + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ValueError(f"{what}: unknown categories {named}; known: {list(CATEGORIES)}")
    return out


def _check_on_error(value: str | None) -> None:
    if value is not None and value not in ("block", "allow"):
        raise ValueError(f"on_error must be 'block' or 'allow', got {quoted(value)}")


def _check_mode(value: str | None) -> None:
    if value is not None and value not in ("strict", "loose"):
        raise ValueError(f"mode must be 'strict' or 'loose', got {quoted(value)}")


def _check_timeout(value: float | None) -> None:
    if value is None:
        return
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"timeout_s must be a positive number or None, got {quoted(value)}")
    if not math.isfinite(value) or value > MAX_TIMEOUT_S:
        raise ValueError(
            f"timeout_s must be a finite number of seconds, at most {MAX_TIMEOUT_S:.0e}, got {quoted(value)}; "
            f"use None for no limit"
        )


def _overlap(block: frozenset[str] | None, ignore: frozenset[str] | None) -> list[str]:
    return sorted((block or frozenset()) & (ignore or frozenset()))


def _contradiction(names: list[str], where: str) -> ValueError:
    return ValueError(
        f"{', '.join(repr(n) for n in names)} {'is' if len(names) == 1 else 'are'} both blocked and ignored "
        f"({where}): block_categories and ignore_categories contradict each other; keep each category in one "
        f"of them"
    )


@dataclass(frozen=True)
class StagePolicy:
    """Overrides for one stage; ``None`` inherits the Policy's value. ``enabled=False`` skips the stage."""

    enabled: bool = True
    mode: Mode | None = None
    block_categories: frozenset[str] | None = None
    ignore_categories: frozenset[str] | None = None
    on_error: OnError | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise TypeError(f"enabled must be true or false, got {quoted(self.enabled)}")
        _check_mode(self.mode)
        _check_on_error(self.on_error)
        _check_timeout(self.timeout_s)
        object.__setattr__(self, "block_categories", _categories(self.block_categories, "block_categories"))
        object.__setattr__(self, "ignore_categories", _categories(self.ignore_categories, "ignore_categories"))
        # Both at once was accepted and "ignore" won: an unsafe category let through (rt53d F3).
        if both := _overlap(self.block_categories, self.ignore_categories):
            raise _contradiction(both, "in one StagePolicy")


_POLICY_FIELDS = frozenset({"mode", "block_categories", "ignore_categories", "on_error", "timeout_s"})
_STAGE_FIELDS = _POLICY_FIELDS | {"enabled"}


@dataclass(frozen=True)
class Policy:
    """How verdicts become decisions.

    - ``mode``: ``"strict"`` blocks controversial content, ``"loose"`` lets it through flagged.
    - ``block_categories``: categories that block even when only controversial.
    - ``ignore_categories``: categories that never block (flagged instead), even when unsafe.
    - ``stages``: per-stage `StagePolicy` overrides, e.g. ``{Stage.RETRIEVAL: StagePolicy(mode="loose")}``.
    - ``on_error``: ``"block"`` (default, fail closed) or ``"allow"`` (fail open, flagged) when the guard
      errs or times out.
    - ``timeout_s``: per-check time budget (``None``: wait forever).
    """

    mode: Mode = "strict"
    block_categories: frozenset[str] = frozenset()
    ignore_categories: frozenset[str] = frozenset()
    on_error: OnError = "block"
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    stages: Mapping[Stage, StagePolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("mode", "on_error", "block_categories", "ignore_categories"):
            if getattr(self, name) is None:  # None means "inherit" only inside a StagePolicy
                raise ValueError(f"{name} must be set, got None")
        _check_mode(self.mode)
        _check_on_error(self.on_error)
        _check_timeout(self.timeout_s)
        object.__setattr__(self, "block_categories", _categories(self.block_categories, "block_categories"))
        object.__setattr__(self, "ignore_categories", _categories(self.ignore_categories, "ignore_categories"))
        stages: dict[Stage, StagePolicy] = {}
        for key, value in dict(self.stages).items():
            if not isinstance(value, StagePolicy):
                raise TypeError(f"stages[{quoted(key)}] must be a StagePolicy, got {type(value).__name__}")
            stages[Stage(key)] = value
        object.__setattr__(self, "stages", MappingProxyType(stages))
        self._check_contradictions()

    def _check_contradictions(self) -> None:
        """A category both blocked and ignored, as any stage resolves them, is refused: "ignore" used to win, so
        "ignore violence in retrieved news, block it in prompts" written as a top-level ignore and a prompt
        stage's block let unsafe prompts through (rt53d F3). A stage that means it overrides the other list."""
        if both := _overlap(self.block_categories, self.ignore_categories):
            raise _contradiction(both, "at the top level")
        for stage, override in self.stages.items():
            block, ignore = self._get(stage, "block_categories"), self._get(stage, "ignore_categories")
            if both := _overlap(block, ignore):
                b = "stages." + stage.value + "." if override.block_categories is not None else "top-level "
                i = "stages." + stage.value + "." if override.ignore_categories is not None else "top-level "
                raise _contradiction(
                    both,
                    f"stage {stage.value!r}: {b}block_categories and {i}ignore_categories; to block "
                    f"{'it' if len(both) == 1 else 'them'} there, give that stage its own ignore_categories",
                )

    # -- named constructors -------------------------------------------------------------------
    @classmethod
    def strict(cls, **overrides: Any) -> Policy:
        """Controversial blocks (the safety-first default; recall over precision)."""
        return cls(mode="strict", **overrides)

    @classmethod
    def loose(cls, **overrides: Any) -> Policy:
        """Controversial passes, flagged."""
        return cls(mode="loose", **overrides)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """The Policy that ``to_dict()`` described (any subset of its fields; the rest default).

        Raises ``TypeError`` / ``ValueError`` naming the bad field (unknown fields included)."""
        if not isinstance(data, Mapping):
            raise TypeError("policy must be an object")
        fields_ = dict(data)
        stages = fields_.pop("stages", None)
        stages = {} if stages is None else stages  # `or {}` took "stages": [] (or 0, "") for no stages
        unknown = sorted(set(fields_) - _POLICY_FIELDS)
        if unknown:
            raise ValueError(f"unknown policy fields {_named(unknown)}")
        if not isinstance(stages, Mapping):
            raise TypeError("policy.stages must be an object")
        parsed: dict[Stage, StagePolicy] = {}
        for stage, overrides in stages.items():
            if not isinstance(overrides, Mapping):
                raise TypeError(f"policy.stages[{quoted(stage)}] must be an object")
            unknown = sorted(set(overrides) - _STAGE_FIELDS)
            if unknown:
                raise ValueError(f"unknown fields {_named(unknown)} in policy.stages[{quoted(stage)}]")
            if stage not in {s.value for s in Stage}:
                raise ValueError(f"policy.stages: unknown stage {quoted(stage)}; stages: {[s.value for s in Stage]}")
            parsed[Stage(stage)] = StagePolicy(**overrides)
        return cls(**fields_, stages=parsed)

    def with_stage(self, stage: Stage | str, **overrides: Any) -> Policy:
        stages = dict(self.stages)
        stages[Stage(stage)] = StagePolicy(**overrides)
        return replace(self, stages=stages)

    # -- resolution ---------------------------------------------------------------------------
    def _get(self, stage: Stage, name: str) -> Any:
        override = self.stages.get(stage)
        value = getattr(override, name, None) if override is not None else None
        return getattr(self, name) if value is None else value

    def enabled(self, stage: Stage) -> bool:
        override = self.stages.get(stage)
        return True if override is None else override.enabled

    def timeout_for(self, stage: Stage) -> float | None:
        timeout: float | None = self._get(stage, "timeout_s")
        return timeout

    def on_error_for(self, stage: Stage) -> OnError:
        on_error: OnError = self._get(stage, "on_error")
        return on_error

    def _resolved(self, stage: Stage | None) -> dict[str, Any]:
        """Every setting as it applies to ``stage`` (``None``: the top level)."""
        if stage is None:
            return {"enabled": True, **{name: getattr(self, name) for name in _POLICY_FIELDS}}
        return {"enabled": self.enabled(stage), **{name: self._get(stage, name) for name in _POLICY_FIELDS}}

    # -- a served guard: the operator's policy, made stricter by a client ---------------------
    def tightened(self, other: Policy) -> Policy:
        """This policy (the operator's), made stricter wherever ``other`` (a client's) is stricter.

        Nothing in ``other`` can loosen it; per stage, as each stage resolves:

        - ``mode``: ``"strict"`` if either is strict;
        - ``block_categories``: the union; ``ignore_categories``: only what *both* ignore;
        - ``enabled``: a stage stays off only if both turned it off (a client may turn a stage on);
        - ``on_error``: ``"block"`` if either fails closed;
        - ``timeout_s``: the smaller one (``None`` = no limit) when the result fails closed, where a
          shorter budget can only block more; this policy's own when it fails open, where a client's
          shorter budget would let more through unchecked.

        >>> Policy.loose(ignore_categories=["PII"]).tightened(Policy.strict()).mode
        'strict'
        """
        if not isinstance(other, Policy):
            raise TypeError(f"other must be a Policy, got {type(other).__name__}")
        top = _tighten(self._resolved(None), other._resolved(None))
        top.pop("enabled")
        if not (self.stages or other.stages):
            return Policy(**top)
        # Every stage written out in full: a StagePolicy's None means "inherit", so a resolved
        # "no timeout" could not otherwise be told apart from the top level's timeout.
        stages = {stage: StagePolicy(**_tighten(self._resolved(stage), other._resolved(stage))) for stage in Stage}
        if any(sp.timeout_s is None for sp in stages.values()):
            top["timeout_s"] = None
        return Policy(**top, stages=stages)

    # -- decisions ----------------------------------------------------------------------------
    def decide(self, verdict: Verdict, stage: Stage) -> Decision:
        """Turn a verdict into a Decision for ``stage``. Pure: no I/O, no state."""
        stage = Stage(stage)
        if verdict.risk is Risk.SAFE:
            return Decision(True, Action.ALLOW, stage, "safe", verdict)
        cats = set(verdict.categories)
        ignore: frozenset[str] = self._get(stage, "ignore_categories")
        block: frozenset[str] = self._get(stage, "block_categories")
        if cats and cats <= ignore and not cats & block:  # never both (refused at construction): block wins
            excused = Decision(True, Action.FLAG, stage, "ignored_category", verdict)
            if verdict.beneath is None:
                return excused
            # The top's categories excuse only the windows read as them: a window beneath (a Controversial beside an
            # ignored category's Unsafe) is decided too, and blocks as it would alone (rt68a F2).
            below = self.decide(verdict.beneath, stage)
            return replace(below, judged=verdict) if _SEVERITY[below.action] > _SEVERITY[excused.action] else excused
        if verdict.risk is Risk.UNSAFE:
            return Decision(False, Action.BLOCK, stage, "unsafe", verdict)
        if self._get(stage, "mode") == "strict" or cats & block:
            return Decision(False, Action.BLOCK, stage, "controversial", verdict)
        return Decision(True, Action.FLAG, stage, "controversial", verdict)

    def decide_error(self, stage: Stage, error: BaseException | str, *, timeout: bool = False) -> Decision:
        """The outcome when the guard could not answer: blocked (fail closed) or flagged (fail open)."""
        stage = Stage(stage)
        reason = "timeout" if timeout else "guard_error"
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        readable = getattr(error, "readable", None)
        if isinstance(readable, Verdict):  # the windows read already block: a missing one could only add risk
            decided = self.decide(readable, stage)
            if not decided.allowed:
                return replace(decided, error=message)
        if self.on_error_for(stage) == "allow":
            return Decision(True, Action.FLAG, stage, reason, None, error=message)
        return Decision(False, Action.BLOCK, stage, reason, None, error=message)

    def decide_again(self, decision: Decision, stage: Stage) -> Decision:
        """The decision ``stage``'s policy makes of what ``decision`` (another stage's) was made of: its verdict, or
        its guard error (``on_error``). An integration decides a client's text in a tool's role under two stages'
        policies on one check. Unchanged where ``stage`` is its own or disabled, or nothing was judged ("empty")."""
        if decision.stage is stage or not self.enabled(stage):
            return decision
        if decision.verdict is not None:
            # The whole verdict judged, not the windows beneath it that blocked under this decision's policy: under
            # another stage's, the Unsafe above them may be the one that blocks (rt68i F3).
            decided = self.decide(decision.judged or decision.verdict, stage)
        elif decision.reason in ("guard_error", "timeout"):
            decided = self.decide_error(stage, decision.error or decision.reason, timeout=decision.reason == "timeout")
        else:
            return decision
        return replace(decided, cached=decision.cached)

    def decide_stricter(self, decision: Decision, first: Stage, second: Stage) -> Decision:
        """The stricter of the decisions ``first``'s and ``second``'s policies make of ``decision`` (`decide_again`):
        ``second``'s only where it blocks, or flags what ``first``'s allows. Text whose role a client or a tool
        writes is decided under both stages it could be read as, so the looser one cannot let it through."""
        own, other = self.decide_again(decision, first), self.decide_again(decision, second)
        return other if _SEVERITY[other.action] > _SEVERITY[own.action] else own

    def decide_unjudged(self, stage: Stage, message: str) -> Decision:
        """The outcome for an item the guard never got to judge because of other items (a failed batch's
        retry ran out of time before its call started): blocked whatever ``on_error`` says, since failing
        open is for a check that fails on its own, and a page of items that stall could otherwise carry any
        item after them through."""
        return Decision(False, Action.BLOCK, Stage(stage), "timeout", None, error=message)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (stable: used as a cache key by ingestion pipelines)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "stages":
                value = {
                    s.value: {
                        g.name: sorted(v) if isinstance(v := getattr(sp, g.name), frozenset) else v for g in fields(sp)
                    }
                    for s, sp in sorted(value.items(), key=lambda kv: kv[0].value)
                }
            elif isinstance(value, frozenset):
                value = sorted(value)
            out[f.name] = value
        return out
