"""The family mix and the data sets: `generate`, `training_set`, `heldout_set`."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from .composite_families import prompt_composite
from .document_families import (
    long_document,
    long_questions,
    untrusted_harmful,
    untrusted_injection,
    untrusted_safe,
)
from .example import EVAL_PROBES, PARTIAL_PROBES, TEST_SENTENCE_PROBES, Example
from .household_families import (
    prompt_agent,
    prompt_household,
    response_agent,
    response_household,
    response_long_facts,
)
from .maker import _Maker
from .prompt_families import (
    prompt_benign,
    prompt_controversial,
    prompt_framed,
    prompt_jailbreak,
    prompt_multiturn,
    prompt_safe,
    prompt_safe_meta,
    prompt_special_tokens,
    prompt_unsafe,
)
from .response_families import (
    long_response,
    response_controversial,
    response_harmful,
    response_multiturn,
    response_overrefusal,
    response_refusal,
    response_safe,
    response_turns_unsafe,
)
from .stream_families import response_after_safe, response_partial
from .tool_families import tool_call_safe, tool_call_unsafe

#: Family -> relative weight in the generated mix.
FAMILIES: dict[str, tuple[Callable[[_Maker], Example], float]] = {
    "prompt_unsafe": (prompt_unsafe, 14.0),
    "prompt_framed": (prompt_framed, 16.0),
    "prompt_safe_meta": (prompt_safe_meta, 1.0),
    "prompt_benign": (prompt_benign, 6.0),
    "prompt_jailbreak": (prompt_jailbreak, 4.0),
    "prompt_special_tokens": (prompt_special_tokens, 2.5),
    "prompt_controversial": (prompt_controversial, 5.0),
    "prompt_safe": (prompt_safe, 15.0),
    "prompt_multiturn": (prompt_multiturn, 4.0),
    "response_refusal": (response_refusal, 6.0),
    "response_harmful": (response_harmful, 6.0),
    "response_safe": (response_safe, 6.0),
    "response_turns_unsafe": (response_turns_unsafe, 4.0),
    "response_controversial": (response_controversial, 1.0),
    "response_overrefusal": (response_overrefusal, 0.8),
    "response_multiturn": (response_multiturn, 2.0),
    "tool_call_safe": (tool_call_safe, 3.5),
    "tool_call_unsafe": (tool_call_unsafe, 4.0),
    "untrusted_injection": (untrusted_injection, 4.5),
    "untrusted_harmful": (untrusted_harmful, 2.5),
    "untrusted_safe": (untrusted_safe, 8.0),
    "long_document": (long_document, 2.5),
    "long_response": (long_response, 0.7),
    # What the README's streaming and composite claims need (composite_families.py, stream_families.py), and inputs
    # up to the whole context (long_questions).
    "prompt_composite": (prompt_composite, 10.0),
    "response_partial": (response_partial, 10.0),
    "response_after_safe": (response_after_safe, 7.0),
    "long_questions": (long_questions, 2.0),
    # Harmless text the mix above lacked (household_families.py): household questions, agent instructions and
    # tool-result confirmations, long factual answers (whole, cut, or turning harmful after the facts).
    "prompt_household": (prompt_household, 6.0),
    "response_household": (response_household, 2.0),
    "prompt_agent": (prompt_agent, 2.5),
    "response_agent": (response_agent, 3.0),
    "response_long_facts": (response_long_facts, 5.0),
}
#: The families added by the second round of retraining (a fine-tune draws them `boost` times as often).
EVERYDAY_ADDED = ("prompt_household", "response_household", "prompt_agent", "response_agent", "response_long_facts")
_ADDED = ("prompt_composite", "response_partial", "response_after_safe", "long_questions", *EVERYDAY_ADDED)
#: The mix before those families: metrics.json also reports the held-out figures on it, to compare checkpoints.
BASE_MIX: dict[str, float] = {name: w for name, (_, w) in FAMILIES.items() if name not in _ADDED}


def boosted_mix(boost: float) -> dict[str, float]:
    """The full mix with the families of `EVERYDAY_ADDED` drawn `boost` times as often (fine-tuning)."""
    return {name: w * (boost if name in EVERYDAY_ADDED else 1.0) for name, (_, w) in FAMILIES.items()}


_BLOCKED_STRINGS = tuple(p.lower() for p in EVAL_PROBES + PARTIAL_PROBES + TEST_SENTENCE_PROBES)
# Tool-call arguments are JSON-escaped: compare the escaped probes too.
_BLOCKED_STRINGS += tuple(e for e in (json.dumps(p)[1:-1] for p in _BLOCKED_STRINGS) if e not in _BLOCKED_STRINGS)


def _blocked(example: Example) -> bool:
    """True when a message of the example contains an evaluation probe (case-insensitive)."""
    for message in example.messages:
        content = message["content"].lower()
        if any(p in content for p in _BLOCKED_STRINGS):
            return True
    return False


def generate(n: int, *, seed: int = 0, split: str = "train", families: dict[str, float] | None = None) -> list[Example]:
    """`n` distinct examples drawn from the family mix (deterministic for a given seed and split)."""
    rng = random.Random(f"{split}:{seed}")
    maker = _Maker(rng, split)
    weights = families or {name: w for name, (_, w) in FAMILIES.items()}
    names = sorted(weights)
    cum = [weights[k] for k in names]
    seen: set[str] = set()
    out: list[Example] = []
    attempts = 0
    while len(out) < n and attempts < n * 20:
        attempts += 1
        name = rng.choices(names, weights=cum)[0]
        example = FAMILIES[name][0](maker)
        key = json.dumps(example.messages, sort_keys=True)
        if key in seen or _blocked(example):
            continue
        seen.add(key)
        out.append(example)
    return out


def training_set(n: int = 16000, seed: int = 0, families: dict[str, float] | None = None) -> list[Example]:
    """The demo guard's training examples (train templates and fillers only), from `families` (default: the mix)."""
    return generate(n, seed=seed, split="train", families=families)


def heldout_set(n: int = 800, seed: int = 0) -> list[Example]:
    """Examples built only from held-out templates and fillers, for the metrics in ``gen/metrics.json``."""
    return generate(n, seed=seed + 1000, split="heldout")
