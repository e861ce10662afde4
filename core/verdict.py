"""What the guard model said: risk levels, categories, stages, and the `Verdict` record."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

__all__ = [
    "Risk",
    "Stage",
    "Category",
    "CATEGORIES",
    "PROMPT_CATEGORIES",
    "RESPONSE_CATEGORIES",
    "Verdict",
    "worst",
]


class Risk(str, enum.Enum):
    """Qwen3Guard's three severity levels."""

    SAFE = "safe"
    CONTROVERSIAL = "controversial"
    UNSAFE = "unsafe"

    @property
    def rank(self) -> int:
        return _RISK_RANK[self]


_RISK_RANK = {Risk.SAFE: 0, Risk.CONTROVERSIAL: 1, Risk.UNSAFE: 2}


class Stage(str, enum.Enum):
    """Where in an application a check happens; the Policy can treat each differently."""

    PROMPT = "prompt"
    RESPONSE = "response"
    STREAM = "stream"
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"
    RETRIEVAL = "retrieval"


class Category(str, enum.Enum):
    """The official Qwen3Guard category names, exactly as the model writes them."""

    VIOLENT = "Violent"
    NON_VIOLENT_ILLEGAL_ACTS = "Non-violent Illegal Acts"
    SEXUAL_CONTENT = "Sexual Content or Sexual Acts"
    PII = "PII"
    SUICIDE_SELF_HARM = "Suicide & Self-Harm"
    UNETHICAL_ACTS = "Unethical Acts"
    POLITICALLY_SENSITIVE = "Politically Sensitive Topics"
    COPYRIGHT_VIOLATION = "Copyright Violation"
    JAILBREAK = "Jailbreak"


CATEGORIES: tuple[str, ...] = tuple(c.value for c in Category)
#: Prompt moderation knows all nine; Jailbreak is "only for input".
PROMPT_CATEGORIES: tuple[str, ...] = CATEGORIES
RESPONSE_CATEGORIES: tuple[str, ...] = CATEGORIES[:-1]


@dataclass(frozen=True)
class Verdict:
    """One guard answer.

    ``probs`` maps each Risk to the model's probability for it when the backend can read it
    (local logits, or server logprobs); ``None`` otherwise.

    ``beneath``: for a verdict combined of several (`worst`), the worst of them that is neither safe nor at its
    risk, combined the same way; ``None`` otherwise. A policy that excuses the top's categories decides it too
    (`Policy.decide`): an Unsafe window of an ignored category must not hide a Controversial one it blocks.
    """

    risk: Risk
    categories: tuple[str, ...] = ()
    refusal: bool | None = None
    raw: str = ""
    latency_ms: float = 0.0
    model: str | None = None
    probs: Mapping[Risk, float] | None = field(default=None, compare=False)
    beneath: Verdict | None = field(default=None, compare=False)

    @property
    def is_safe(self) -> bool:
        return self.risk is Risk.SAFE

    @property
    def unsafe_probability(self) -> float | None:
        """P(unsafe) when scores exist: the number threshold sweeps and ROC-AUC use."""
        return None if self.probs is None else float(self.probs.get(Risk.UNSAFE, 0.0))

    def with_latency(self, latency_ms: float) -> Verdict:
        return replace(self, latency_ms=latency_ms)

    def to_dict(self) -> dict[str, object]:
        return {
            "risk": self.risk.value,
            "categories": list(self.categories),
            "refusal": self.refusal,
            "latency_ms": round(self.latency_ms, 3),
            "model": self.model,
            "probs": None if self.probs is None else {r.value: p for r, p in self.probs.items()},
        }


def worst(verdicts: list[Verdict]) -> Verdict:
    """Combine verdicts of windows of one text: the highest risk wins; categories of the windows at
    that risk are merged in order, except that an Unsafe window naming none (a verdict read from its first line:
    its categories may be lost) leaves the result with none, so that no ignored category of another window may
    excuse it (rt57d F1); the refusal of the first window is kept (a refusal opens a reply). The non-safe windows
    below that risk (and what the verdicts combined kept beneath) are combined as ``beneath`` (rt68a F2)."""
    if not verdicts:
        raise ValueError("worst() needs at least one verdict")
    top = max(v.risk.rank for v in verdicts)
    at_top = [v for v in verdicts if v.risk.rank == top]
    cats = tuple(dict.fromkeys(c for v in at_top for c in v.categories))
    # Kept apart, not merged into the top's categories: merged, a loose policy would block a Controversial window
    # it flags as Unsafe; dropped, an ignored category at the top hid a window the policy blocks.
    below = [u for v in verdicts for u in (v, v.beneath) if u is not None and 0 < u.risk.rank < top]
    if at_top[0].risk is Risk.UNSAFE and any(not v.categories for v in at_top):
        cats = ()
    probs = None

    def _prob(verdict: Verdict, risk: Risk) -> float:
        return float((verdict.probs or {}).get(risk, 0.0))

    if all(v.probs is not None for v in verdicts):
        # Each score at its worst window: the most P(unsafe) (what loose blocks) and the least P(safe) (strict
        # blocks the rest), so a window read controversial is not scored from a window read safe.
        # P(controversial) is what remains: never below 0, since no window's P(unsafe) + P(safe) exceeds 1.
        least_safe = min(verdicts, key=lambda v: _prob(v, Risk.SAFE))
        most_unsafe = max(verdicts, key=lambda v: _prob(v, Risk.UNSAFE))
        probs = most_unsafe.probs
        if _prob(least_safe, Risk.SAFE) < _prob(most_unsafe, Risk.SAFE):
            safe, unsafe = _prob(least_safe, Risk.SAFE), _prob(most_unsafe, Risk.UNSAFE)
            probs = {Risk.SAFE: safe, Risk.CONTROVERSIAL: max(0.0, 1.0 - safe - unsafe), Risk.UNSAFE: unsafe}
    return replace(
        at_top[0],
        categories=cats,
        refusal=verdicts[0].refusal,
        probs=probs,
        raw="\n---\n".join(v.raw for v in verdicts),
        beneath=worst(below) if below else None,
    )
