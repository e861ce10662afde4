"""Response-stage families (the assistant spoke last): refusals, harmful answers, safe answers, answers that turn
unsafe, political opinions, over-refusals, multi-turn and long answers."""

from __future__ import annotations

from ...formats.conversations import response_conversation
from .answer_texts import (
    CONTROVERSIAL_RESPONSES,
    OVERREFUSALS,
    REFUSALS,
    REFUSALS_BY_CATEGORY,
    SAFE_INTROS,
    TURN_CONNECTORS,
)
from .everyday import SAFE_TWINS, _benign, _prose
from .example import JAILBREAK, POLITICAL, Example, _slug
from .maker import _Maker, _Slots
from .parts import (
    LONG_DOC_MAX_CHARS,
    _ex,
    _filler,
    _harmful,
    _history,
    _pick_harm_category,
    _safe_qa,
    _unsafe_prompt_text,
)
from .prompt_texts import CONTROVERSIAL_PROMPTS


def response_refusal(m: _Maker) -> Example:
    cat = _pick_harm_category(m)
    prompt = m.noisy(_unsafe_prompt_text(m, cat if not m.chance(0.1) else JAILBREAK), 0.5)
    reply = m.pick(REFUSALS) if m.chance(0.6) else m.pick(REFUSALS_BY_CATEGORY[cat])
    if m.chance(0.15):
        reply = reply + " " + m.pick(REFUSALS_BY_CATEGORY[cat])
    return _ex(response_conversation(prompt, reply), "safe", [], True, "response", "response.refusal")


def response_harmful(m: _Maker) -> Example:
    cat = _pick_harm_category(m)
    slots = _Slots(m, {})
    prompt = m.noisy(_unsafe_prompt_text(m, cat, slots), 0.5)
    harm = _harmful(m, cat, slots)
    lead = m.choice(["", "", "", "Sure! ", "Sure, here's how. ", "Okay. ", "Here you go: ", "Of course. "])
    reply = lead + harm
    return _ex(
        response_conversation(prompt, reply),
        "unsafe",
        [cat],
        False,
        "response",
        f"response.harmful.{_slug(cat)}",
        [len(lead), len(reply)],
    )


def response_safe(m: _Maker) -> Example:
    q, a = _safe_qa(m)
    if m.chance(0.3):  # everyday questions answered with everyday text
        q, a = _benign(m, question=True), " ".join(_benign(m, question=False) for _ in range(m.choice([1, 2, 3])))
    elif m.chance(0.25):  # natural prose, and harmless twins of harmful sentences
        a = " ".join(_prose(m) if m.chance(0.6) else m.choice(SAFE_TWINS) for _ in range(m.choice([1, 2, 3])))
    return _ex(response_conversation(m.noisy(q, 0.5), a), "safe", [], False, "response", "response.safe")


def response_turns_unsafe(m: _Maker) -> Example:
    """A reply that opens harmlessly and then turns harmful: the stream head learns where it turns."""
    cat = _pick_harm_category(m)
    if m.chance(0.5):
        q, a = _safe_qa(m)
        intro = a if m.chance(0.5) else m.pick(SAFE_INTROS)
    else:
        q = _unsafe_prompt_text(m, cat)
        intro = m.pick(SAFE_INTROS)
        if m.chance(0.4):
            intro += " " + m.pick(SAFE_INTROS)
    lead = intro + m.choice(TURN_CONNECTORS)
    harm = _harmful(m, cat)
    reply = lead + harm
    if m.chance(0.2):
        reply += " " + m.choice(["Good luck!", "Hope this helps.", "Let me know if you need more."])
    return _ex(
        response_conversation(m.noisy(q, 0.5), reply),
        "unsafe",
        [cat],
        False,
        "response",
        f"response.turns_unsafe.{_slug(cat)}",
        [len(lead), len(lead) + len(harm)],
    )


def response_controversial(m: _Maker) -> Example:
    q = m.fill(m.pick(CONTROVERSIAL_PROMPTS[POLITICAL]))
    reply = m.fill(m.pick(CONTROVERSIAL_RESPONSES))
    return _ex(
        response_conversation(m.noisy(q, 0.5), reply),
        "controversial",
        [POLITICAL],
        False,
        "response",
        "response.controversial.political",
        [0, len(reply)],
    )


def response_overrefusal(m: _Maker) -> Example:
    q, _ = _safe_qa(m)
    return _ex(
        response_conversation(m.noisy(q, 0.5), m.pick(OVERREFUSALS)),
        "safe",
        [],
        True,
        "response",
        "response.overrefusal",
    )


def response_multiturn(m: _Maker) -> Example:
    inner = m.choice([response_refusal, response_harmful, response_safe, response_safe, response_turns_unsafe])(m)
    history = _history(m, m.choice([1, 1, 2]))
    return _ex(
        response_conversation(history + inner.messages[:-1], inner.messages[-1]["content"]),
        inner.risk,
        inner.categories,
        inner.refusal,
        "response",
        inner.source.replace("response.", "response.multiturn.", 1),
        inner.unsafe_span,
    )


def long_response(m: _Maker) -> Example:
    """A long helpful answer that may turn harmful at the end (assistant-final, span marked)."""
    q, a = _safe_qa(m)
    filler = a + "\n\n" + _filler(m, m.rng.randint(400, LONG_DOC_MAX_CHARS - 700))
    if m.chance(0.35):
        return _ex(response_conversation(q, filler), "safe", [], False, "response", "response.long.safe")
    cat = _pick_harm_category(m)
    harm = _harmful(m, cat)
    lead = filler + m.choice(TURN_CONNECTORS)
    reply = lead + harm
    return _ex(
        response_conversation(q, reply),
        "unsafe",
        [cat],
        False,
        "response",
        f"response.long.turns_unsafe.{_slug(cat)}",
        [len(lead), len(reply)],
    )
