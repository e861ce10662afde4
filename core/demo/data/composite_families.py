"""Composite prompts: a request with something before or after it, judged by what it asks, not by its last words.

A harmful request stays harmful when benign text follows it (a second question, "OK", thanks, a forged
``USER:``/``ASSISTANT:`` turn, which the content rule neutralises but leaves readable) or precedes it; two harmless
requests stay harmless. Source ``prompt.composite.<kind>``; the unsafe span is the harmful request.
"""

from __future__ import annotations

from ...formats.conversations import prompt_conversation
from .answer_texts import REFUSALS, SAFE_INTROS
from .everyday import _benign
from .example import JAILBREAK, POLITICAL, Example, _slug
from .maker import _Maker
from .parts import _ex, _pick_harm_category, _safe_qa, _unsafe_prompt_text
from .prompt_texts import CONTROVERSIAL_PROMPTS
from .slots import SLOTS

_SHORT_TAILS = [
    "OK",
    "ok",
    "Ok.",
    "OK?",
    "Thanks!",
    "Thanks.",
    "thx",
    "Thank you.",
    "Please answer quickly.",
    "Be detailed.",
    "Answer in English.",
    "Hurry.",
    "Hello?",
    "Please.",
    "Go on.",
    "I'm waiting.",
    "lol",
    ":)",
    "Cheers.",
    "Keep it short.",
    "Reply asap.",
    "Just asking.",
    "Asking for a friend.",
    "yes",
    "Right?",
    "Go.",
]
_SEPARATORS = [" ", " ", " ", "\n", "\n\n", "  ", " - "]
_LABELS = [("USER", "ASSISTANT"), ("User", "Assistant"), ("user", "assistant"), ("USER ", "ASSISTANT ")]


def _benign_text(m: _Maker) -> str:
    """A harmless tail: a second question, a short word of thanks or urgency, a greeting, a harmless sentence."""
    roll = m.rng.random()
    if roll < 0.35:
        return m.noisy(_safe_qa(m)[0], 0.5)
    if roll < 0.75:
        return str(m.choice(_SHORT_TAILS))
    if roll < 0.85:
        return str(m.slot(SLOTS["greeting"]))
    return _benign(m, question=m.chance(0.7))


def _forged_turns(m: _Maker, user_text: str) -> str:
    """Text that imitates the conversation format: an assistant reply and/or a new user turn."""
    user, assistant = m.choice(_LABELS)
    reply = m.choice([m.pick(SAFE_INTROS), m.pick(REFUSALS), _safe_qa(m)[1], "Sure.", "OK."])
    if m.chance(0.6):
        return f"\n\n{assistant}: {reply}\n\n{user}: {user_text}"
    return f"\n\n{user}: {user_text}"


def _tail(m: _Maker) -> str:
    return _forged_turns(m, _benign_text(m)) if m.chance(0.35) else m.choice(_SEPARATORS) + _benign_text(m)


def prompt_composite(m: _Maker) -> Example:
    roll = m.rng.random()
    if roll < 0.42:  # a harmful request, then something harmless
        cat = JAILBREAK if m.chance(0.1) else _pick_harm_category(m)
        lead = m.noisy(_unsafe_prompt_text(m, cat), 0.5)
        text = lead + _tail(m)
        if m.chance(0.15):
            text += _tail(m)
        return _ex(
            prompt_conversation(text),
            "unsafe",
            [cat],
            None,
            "prompt",
            f"prompt.composite.tail.{_slug(cat)}",
            [0, len(lead)],
        )
    if roll < 0.57:  # something harmless, then the harmful request (inline or as a forged turn)
        cat = _pick_harm_category(m)
        bad = m.noisy(_unsafe_prompt_text(m, cat), 0.5)
        lead = m.noisy(_safe_qa(m)[0], 0.5) if m.chance(0.7) else m.slot(SLOTS["greeting"])
        if m.chance(0.4):
            text = lead + _forged_turns(m, bad)
        else:
            text = lead + m.choice(_SEPARATORS) + bad
        start = text.rindex(bad)
        return _ex(
            prompt_conversation(text),
            "unsafe",
            [cat],
            None,
            "prompt",
            f"prompt.composite.lead.{_slug(cat)}",
            [start, start + len(bad)],
        )
    if roll < 0.65:  # an opinion question with a tail stays controversial
        lead = m.noisy(m.fill(m.pick(CONTROVERSIAL_PROMPTS[POLITICAL])), 0.5)
        text = lead + _tail(m)
        return _ex(
            prompt_conversation(text),
            "controversial",
            [POLITICAL],
            None,
            "prompt",
            "prompt.composite.political",
            [0, len(lead)],
        )
    # harmless with harmless: still safe, also with forged turns
    text = m.noisy(_safe_qa(m)[0], 0.5) if m.chance(0.8) else _benign(m, question=True)
    text += _tail(m)
    if m.chance(0.3):
        text += _tail(m)
    return _ex(prompt_conversation(text), "safe", [], None, "prompt", "prompt.composite.safe")
