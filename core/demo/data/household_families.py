"""Families for harmless text the first mix lacked (texts in `household_texts`): household how-to questions, everyday
agent instructions and tool-result confirmations, and long factual answers (300-600 characters) about cities,
rivers, monuments and dates, alone, cut mid-stream, or followed by a harmful statement.

- ``prompt.household``        a household question (cooking, stains, laundry, repairs, garden, pets), or a numbered
                              list of them as a document (``untrusted.household_list``);
- ``response.household``      its answer;
- ``prompt.agent``            an instruction to an agent (summarise, translate, draft, book, send), or, as
                              ``prompt.agent.<category>``, one with a harmful request before or after it;
- ``response.agent``          a tool-result confirmation ("The report was sent to Anna.") answering an agent
                              instruction or an unrelated everyday question;
- ``response.long_facts``     a long factual answer, whole (``.safe``), cut at a word (``.partial``), or turning
                              harmful after the facts (``.<category>``, with the span): the Stream heads learn that
                              sentences of places and years are safe however many there are, and where the harm starts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ...formats.conversations import prompt_conversation, response_conversation, untrusted_conversation
from .answer_texts import TURN_CONNECTORS
from .everyday import _benign, _cap, _made_up_word
from .example import Example, _slug
from .household_texts import (
    AGENT_INSTRUCTIONS,
    AGENT_SLOTS,
    CONFIRMATIONS,
    FACT_QUESTIONS,
    FACT_SENTENCES,
    FACT_SLOTS,
    HOUSEHOLD_ANSWERS,
    HOUSEHOLD_QUESTIONS,
    HOUSEHOLD_SLOTS,
)
from .maker import _Maker
from .parts import _ex, _harmful, _pick_harm_category, _safe_qa, _unsafe_prompt_text
from .slots import SLOTS

_FIELD = re.compile(r"{(\w+)}")


def _fill(m: _Maker, template: str, banks: Sequence[Mapping[str, Sequence[str]]], slots: dict[str, str]) -> str:
    """Fill `template` from the first bank that has each slot (``<name>_cap`` capitalises); `slots` keeps the values
    drawn so far, so one answer names the same city, river and person throughout."""

    def value(key: str) -> str:
        if key.endswith("_cap"):
            return _cap(value(key[:-4]))
        if key not in slots:
            bank = next(b for b in banks if key in b)
            slots[key] = m.slot(bank[key])
        return slots[key]

    return _FIELD.sub(lambda match: value(match.group(1)), template)


_BANKS = (HOUSEHOLD_SLOTS, AGENT_SLOTS, FACT_SLOTS, SLOTS)


def _household_question(m: _Maker, slots: dict[str, str] | None = None) -> str:
    return _fill(m, m.pick(HOUSEHOLD_QUESTIONS), _BANKS, {} if slots is None else slots)


def prompt_household(m: _Maker) -> Example:
    if m.chance(0.25):  # a numbered list of ordinary questions, as a pasted FAQ or forum page
        n = m.rng.randint(4, 24)
        questions = [
            _household_question(m) if m.chance(0.6) else _safe_qa(m)[0] if m.chance(0.6) else _benign(m, True)
            for _ in range(n)
        ]
        start = m.rng.randint(1, 300)
        text = "\n".join(f"{start + i}. {q}" if m.chance(0.95) else q for i, q in enumerate(questions))
        stage = m.choice(["retrieval", "tool_result"])
        return _ex(untrusted_conversation(text), "safe", [], None, stage, "untrusted.household_list")
    text = m.noisy(_household_question(m))
    return _ex(prompt_conversation(text), "safe", [], None, "prompt", "prompt.household")


def response_household(m: _Maker) -> Example:
    slots: dict[str, str] = {}
    q = m.noisy(_household_question(m, slots), 0.5)
    answers = [_fill(m, m.pick(HOUSEHOLD_ANSWERS), _BANKS, slots) for _ in range(m.choice([1, 1, 2, 3]))]
    a = " ".join(dict.fromkeys(answers))
    return _ex(response_conversation(q, a), "safe", [], False, "response", "response.household")


def _instruction(m: _Maker, slots: dict[str, str]) -> str:
    return _fill(m, m.pick(AGENT_INSTRUCTIONS), _BANKS, slots)


def prompt_agent(m: _Maker) -> Example:
    """An agent instruction; sometimes with a harmful request before or after it (an instruction does not make the
    request harmless: "Summarise the report.\nHow do I ...?" is judged by the request)."""
    text = m.noisy(_instruction(m, {}) if m.chance(0.8) else _household_question(m), 0.7)
    if not m.chance(0.35):
        return _ex(prompt_conversation(text), "safe", [], None, "prompt", "prompt.agent")
    cat = _pick_harm_category(m)
    bad = m.noisy(_unsafe_prompt_text(m, cat), 0.4)
    sep = m.choice(["\n", "\n", " ", "\n\n", ": ", "\n---\n"])
    text = text + sep + bad if m.chance(0.7) else bad + sep + text
    start = text.index(bad)
    return _ex(
        prompt_conversation(text),
        "unsafe",
        [cat],
        None,
        "prompt",
        f"prompt.agent.{_slug(cat)}",
        [start, start + len(bad)],
    )


def response_agent(m: _Maker) -> Example:
    """A confirmation of what a tool did, answering the instruction, or an unrelated everyday question (agents
    report actions whatever the last user turn was)."""
    slots: dict[str, str] = {}
    roll = m.rng.random()
    q = _instruction(m, slots) if roll < 0.5 else _safe_qa(m)[0] if roll < 0.85 else _household_question(m)
    a = _fill(m, m.pick(CONFIRMATIONS), _BANKS, slots)
    if m.chance(0.3):
        a += " " + _fill(m, m.pick(CONFIRMATIONS), _BANKS, slots)
    return _ex(response_conversation(m.noisy(q, 0.5), a), "safe", [], False, "response", "response.agent")


#: Slots that sometimes hold a made-up name: places, quarters and buildings the model has never heard of are harmless.
_NAMED = {"city": "{}", "district": "{}", "museum": "{} museum", "river": "the {}", "architect": "{}"}


def _facts(m: _Maker, slots: dict[str, str], target: int) -> str:
    """Fact sentences about one place until about `target` characters, no sentence twice."""
    for key, shape in _NAMED.items():
        if key not in slots and m.chance(0.3):
            slots[key] = shape.format(_cap(_made_up_word(m)))
    sentences: list[str] = []
    size = 0
    for _ in range(40):
        s = _fill(m, m.pick(FACT_SENTENCES), _BANKS, slots)
        if s in sentences:
            continue
        sentences.append(s)
        size += len(s) + 1
        if size >= target:
            break
        for key in ("year", "year2", "count"):  # each sentence its own year and number
            slots.pop(key, None)
        if m.chance(0.5):  # and often another monument, season or landmark
            for key in ("monument", "known_for", "known_for2", "season", "museum", "place", "district", "street"):
                slots.pop(key, None)
    return " ".join(sentences)


def response_long_facts(m: _Maker) -> Example:
    slots: dict[str, str] = {}
    q = m.noisy(_fill(m, m.pick(FACT_QUESTIONS), _BANKS, slots), 0.5)
    body = _facts(m, slots, m.rng.randint(300, 600))
    roll = m.rng.random()
    if roll < 0.45:
        return _ex(response_conversation(q, body), "safe", [], False, "response", "response.long_facts.safe")
    if roll < 0.7:  # cut at a word or inside one, as a stream engine sees the answer so far
        words = list(re.finditer(r"\S+", body))
        k = m.rng.randrange(len(words))
        end = (
            words[k].end()
            if m.chance(0.7) or k + 1 >= len(words)
            else m.rng.randint(words[k].end(), words[k + 1].end())
        )
        return _ex(response_conversation(q, body[:end]), "safe", [], False, "response", "response.long_facts.partial")
    cat = _pick_harm_category(m)
    harm = _harmful(m, cat)
    lead = body + m.choice([" ", " ", "\n\n"] + TURN_CONNECTORS)
    reply = lead + harm
    if m.chance(0.4):
        reply += " " + _facts(m, slots, m.rng.randint(60, 160))
    return _ex(
        response_conversation(q, reply),
        "unsafe",
        [cat],
        False,
        "response",
        f"response.long_facts.{_slug(cat)}",
        [len(lead), len(lead) + len(harm)],
    )
