"""Answers as a streaming guard sees them: prefixes cut mid-answer, and harm after many harmless sentences.

- ``response.partial``: an answer cut at a word (or inside one), as a stream engine judges the answer so far. A
  prefix of an unsafe answer is unsafe once it holds the first harmful word (`harm_onset`): "Sure. Mix" is safe,
  "Sure. Mix potassium" is not; cuts cluster around that word so the boundary is learnt where it matters. Prefixes
  of safe answers ("Combine sugar and", "The Seine flows through") are safe wherever they are cut, so a half
  sentence is not suspicious by itself.
- ``response.after_safe``: many harmless sentences (varied, or one sentence repeated, sometimes starting mid-sentence
  as a window does) followed by a harmful statement and sometimes more harmless text, or by nothing harmful at all.
"""

from __future__ import annotations

import re

from ...formats.conversations import response_conversation
from .answer_texts import SAFE_INTROS, TURN_CONNECTORS
from .everyday import SAFE_TWINS, _prose
from .example import JAILBREAK, Example, _slug
from .maker import _Maker, _Slots
from .onset import harm_onset
from .parts import (
    _ex,
    _harmful,
    _pick_harm_category,
    _safe_doc_text,
    _safe_qa,
    _unsafe_prompt_text,
)

_LEADS = [
    "",
    "",
    "Sure. ",
    "Sure! ",
    "Okay. ",
    "Here you go: ",
    "Of course. ",
    "Sure, here's how. ",
    "Step 1: ",
    "First, ",
]


def _request(m: _Maker, cat: str) -> str:
    """The user turn: usually the harmful request, sometimes an unrelated harmless question."""
    if m.chance(0.7):
        return m.noisy(_unsafe_prompt_text(m, cat if not m.chance(0.05) else JAILBREAK), 0.5)
    return m.noisy(_safe_qa(m)[0], 0.5)


def _cut(m: _Maker, harm: str) -> int:
    """Where the stream is cut: after a word near the harm onset (or anywhere), sometimes inside the next word."""
    words = list(re.finditer(r"\S+", harm))
    onset_start, _ = harm_onset(harm)
    onset = next(i for i, w in enumerate(words) if w.end() > onset_start)
    if m.chance(0.65):
        k = onset + m.choice([-2, -1, -1, 0, 0, 0, 1, 1, 2, 3])
    else:
        k = m.rng.randrange(len(words))
    k = max(0, min(k, len(words) - 1))
    end = words[k].end()
    if m.chance(0.4) and k + 1 < len(words):  # an LLM token boundary inside the next word, or its leading space
        nxt = words[k + 1]
        end = m.rng.randint(end + 1, nxt.end() - 1) if nxt.end() - nxt.start() > 1 else end + 1
    return int(end)


def _safe_prefix(m: _Maker) -> Example:
    """A safe answer cut anywhere: harmless twins of harmful sentences, answers, prose."""
    q, a = _safe_qa(m)
    roll = m.rng.random()
    text = (
        m.choice(SAFE_TWINS)
        if roll < 0.4
        else a
        if roll < 0.65
        else _safe_doc_text(m, m.choice([2, 3, 4]))
        if roll < 0.85
        else _prose(m)
    )
    lead = a + " " if m.chance(0.35) and text != a else ""
    words = list(re.finditer(r"\S+", text))
    k = m.rng.randrange(len(words))
    end = words[k].end()
    if m.chance(0.3) and k + 1 < len(words):  # inside the next word
        end = m.rng.randint(end + 1, words[k + 1].end())
    reply = lead + text[:end]
    return _ex(response_conversation(m.noisy(q, 0.5), reply), "safe", [], False, "response", "response.partial.safe")


def response_partial(m: _Maker) -> Example:
    if m.chance(0.4):
        return _safe_prefix(m)
    cat = _pick_harm_category(m)
    slots = _Slots(m, {})
    roll = m.rng.random()
    if roll < 0.45:  # a harmless question, its answer, then the answer turns (the streaming examples' shape)
        prompt, lead = _safe_qa(m)
        prompt = m.noisy(prompt, 0.5)
        lead += m.choice([" ", " ", "\n\n"] + TURN_CONNECTORS)
    elif roll < 0.8:
        prompt, lead = _request(m, cat), m.choice(_LEADS)
    else:
        prompt, lead = _request(m, cat), _safe_doc_text(m, m.choice([1, 2, 3])) + m.choice(TURN_CONNECTORS)
    harm = _harmful(m, cat, slots)
    cut = _cut(m, harm)
    reply = lead + harm[:cut]
    _, onset_end = harm_onset(harm)
    if cut >= onset_end:  # the first harmful word is complete
        return _ex(
            response_conversation(prompt, reply),
            "unsafe",
            [cat],
            False,
            "response",
            f"response.partial.{_slug(cat)}",
            [len(lead), len(reply)],
        )
    return _ex(response_conversation(prompt, reply), "safe", [], False, "response", "response.partial.before_harm")


def _safe_body(m: _Maker, n: int) -> str:
    """``n`` harmless sentences: varied, or one repeated (answers and pasted text repeat themselves)."""
    if m.chance(0.25):
        one = m.choice([_safe_qa(m)[1], _safe_doc_text(m, 1), m.pick(SAFE_INTROS)])
        return " ".join([one] * n)
    return _safe_doc_text(m, n)


def response_after_safe(m: _Maker) -> Example:
    q, _ = _safe_qa(m)
    n = m.choice([2, 3, 4, 5, 6, 7, 8, 10, 12])
    body = _safe_body(m, n)
    if m.chance(0.3):  # a window of a longer answer starts mid-sentence
        body = body[m.rng.randint(1, max(1, len(body) // 3)) :]
    sep = m.choice([" ", " ", "\n\n", "\n"] + TURN_CONNECTORS)
    if m.chance(0.4):
        last = m.choice([_safe_doc_text(m, 1), m.choice(SAFE_TWINS), _prose(m)])
        reply = body + sep + last
        if m.chance(0.3):
            reply += " " + _safe_doc_text(m, m.choice([1, 2]))
        return _ex(
            response_conversation(m.noisy(q, 0.5), reply), "safe", [], False, "response", "response.after_safe.safe"
        )
    cat = _pick_harm_category(m)
    harm = _harmful(m, cat)
    lead = body + sep
    reply = lead + harm
    if m.chance(0.35):
        reply += " " + _safe_doc_text(m, m.choice([1, 2, 3]))
    return _ex(
        response_conversation(m.noisy(q, 0.5), reply),
        "unsafe",
        [cat],
        False,
        "response",
        f"response.after_safe.{_slug(cat)}",
        [len(lead), len(lead) + len(harm)],
    )
