"""The shipped evaluation sample (``core/demo/data/sample.jsonl``): `sample_rows`, `write_sample`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .mix import generate

# ---------------------------------------------------------------------------------------------------------------
# The shipped evaluation sample.
# ---------------------------------------------------------------------------------------------------------------

SAMPLE_MIX: dict[str, float] = {
    "prompt_unsafe": 16,
    "prompt_jailbreak": 4,
    "prompt_special_tokens": 1,
    "prompt_controversial": 6,
    "prompt_safe": 18,
    "response_refusal": 5,
    "response_harmful": 5,
    "response_safe": 5,
    "response_turns_unsafe": 3,
    "response_controversial": 1,
    "tool_call_safe": 3,
    "tool_call_unsafe": 3,
    "untrusted_injection": 5,
    "untrusted_harmful": 2,
    "untrusted_safe": 6,
    "long_document": 1,
}


def sample_rows(n: int = 300, seed: int = 7) -> list[dict[str, Any]]:
    """Flat rows for ``sample.jsonl`` (columns in the module docstring), single-turn held-out examples only."""
    rows = []
    for ex in generate(n, seed=seed, split="heldout", families=SAMPLE_MIX):
        last = ex.messages[-1]["content"]
        paired = ex.stage in ("response", "tool_call")
        rows.append(
            {
                "text": last,
                "label": ex.risk,
                "category": ex.categories[0] if ex.categories else None,
                "source": ex.source,
                "stage": ex.stage,
                "prompt": ex.messages[-2]["content"] if paired else None,
                "response": last if paired else None,
                "refusal": ex.refusal if paired else None,
            }
        )
    return rows


def write_sample(path: Path | str, n: int = 300, seed: int = 7) -> Path:
    """Write the evaluation sample as JSON lines and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in sample_rows(n, seed):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
