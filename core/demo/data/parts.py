"""Pieces several families share: an unsafe request, a safe question and answer, a harmful statement, a chat history,
harmless document text and long filler."""

from __future__ import annotations

from typing import Any

from .answer_texts import HARMFUL_STATEMENTS, REFUSALS
from .document_texts import FILLER, SAFE_FACTS
from .everyday import SAFE_TWINS, _benign, _prose, _scramble, _unfamiliar
from .example import HARM_CATEGORIES, JAILBREAK, POLITICAL, Example
from .maker import _Maker, _Slots
from .prompt_texts import JAILBREAK_PROMPTS, UNSAFE_PROMPTS
from .qa import _QA_FAMILIES

# Each family returns one Example. Names (the `source`) are stable: sample.jsonl and metrics use them.


def _unsafe_prompt_text(m: _Maker, cat: str, slots: dict[str, str] | None = None) -> str:
    if cat == JAILBREAK:
        return m.fill(m.pick(JAILBREAK_PROMPTS), slots)
    return m.fill(m.pick(UNSAFE_PROMPTS[cat]), slots)


def _safe_qa(m: _Maker) -> tuple[str, str]:
    fam = m.choice(_QA_FAMILIES)
    slots = _Slots(m, dict(m.slot(fam.rows)))
    return m.fill(m.pick(fam.questions), slots), m.fill(m.pick(fam.answers), slots)


def _harmful(m: _Maker, cat: str, slots: dict[str, str] | None = None) -> str:
    return m.fill(m.pick(HARMFUL_STATEMENTS[cat]), slots)


def _pick_harm_category(m: _Maker, response: bool = False) -> str:
    # Political harm is mostly controversial, so unsafe political content is drawn a little less often.
    cats = [c for c in HARM_CATEGORIES if c != POLITICAL] * 3 + [POLITICAL] * 2
    return m.rng.choice(cats)


def _ex(
    messages: Any, risk: str, cats: Any, refusal: Any, stage: str, source: str, span: list[int] | None = None
) -> Example:
    return Example(
        messages=messages,
        risk=risk,
        categories=list(cats),
        refusal=refusal,
        stage=stage,
        source=source,
        unsafe_span=span,
    )


def _history(m: _Maker, turns: int) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for _ in range(turns):
        if m.chance(0.15):  # an earlier unsafe request that was refused
            q, a = _unsafe_prompt_text(m, _pick_harm_category(m)), m.pick(REFUSALS)
        else:
            q, a = _safe_qa(m)
        out += [{"role": "user", "content": m.noisy(q, 0.5)}, {"role": "assistant", "content": a}]
    return out


def _safe_doc_text(m: _Maker, n: int) -> str:
    """`n` harmless sentences: facts, answers to everyday questions, everyday text or prose."""
    parts = []
    for _ in range(n):
        roll = m.rng.random()
        if roll < 0.4:
            parts.append(m.fill(m.pick(SAFE_FACTS)))
        elif roll < 0.6:
            parts.append(_safe_qa(m)[1])
        elif roll < 0.7:
            parts.append(_benign(m, question=False))
        elif roll < 0.78:
            parts.append(_unfamiliar(m))
        elif roll < 0.86:
            parts.append(_prose(m) if m.chance(0.7) else m.choice(SAFE_TWINS))
        else:
            parts.append(m.choice(FILLER[m.choice(sorted(FILLER))]))
    return " ".join(parts)


def _filler(m: _Maker, target_chars: int) -> str:
    """Safe prose of about `target_chars` characters: paragraphs of one topic each, or one paragraph repeated
    (pasted and scraped text often repeats itself)."""
    if m.chance(0.15):
        para = " ".join(m.rng.sample(FILLER[m.choice(sorted(FILLER))], k=m.rng.randint(2, 5))) + " "
        return (para * (target_chars // len(para) + 1))[:target_chars].rstrip()
    paragraphs: list[str] = []
    size = 0
    while size < target_chars:
        # Filler is shared by both splits: held-out documents differ in the harmful sentence, not in the prose.
        # Mixing topic prose with everyday sentences and facts keeps long documents lexically varied, so the
        # model learns to look past any amount of unfamiliar harmless text.
        roll = m.rng.random()
        if roll < 0.45:
            para = " ".join(m.rng.sample(FILLER[m.choice(sorted(FILLER))], k=m.rng.randint(3, 6)))
        elif roll < 0.55:
            para = " ".join(_benign(m, question=m.chance(0.1)) for _ in range(m.rng.randint(3, 6)))
        elif roll < 0.7:
            para = " ".join(_unfamiliar(m) for _ in range(m.rng.randint(3, 6)))
        elif roll < 0.85:
            para = " ".join(_prose(m) if m.chance(0.85) else m.choice(SAFE_TWINS) for _ in range(m.rng.randint(3, 6)))
        else:
            para = _safe_doc_text(m, m.rng.randint(3, 5))
        if m.chance(0.5):
            para = _scramble(m, para, m.rng.uniform(0.2, 0.6))
        paragraphs.append(para)
        size += len(para) + 2
    return "\n\n".join(paragraphs)


def _window_start(m: _Maker, text: str) -> str:
    """Sometimes start mid-sentence, as a window cut out of a longer text does."""
    if m.chance(0.3):
        return text[m.rng.randint(1, min(160, len(text) // 4)) :]
    return text


#: Long documents stay under this many characters (about 450 tokens with the demo tokenizer): the rendered prompt,
#: the document and the answer then fit the demo model's 512-token context (train.MODEL_SHAPE), as a backend's
#: windows do. The model is trained on inputs up to its whole context, so no window is longer than what it saw.
LONG_DOC_MAX_CHARS = 1900
