"""Untrusted-content families (tool results, retrieved documents): injections, harmful and safe documents, and long
documents whose only unsafe sentence sits near the end, and long lists of ordinary questions."""

from __future__ import annotations

from ...formats.conversations import prompt_conversation, untrusted_conversation
from .document_texts import DOC_HARM_FRAMES, INJECTIONS, UNTRUSTED_PREFIXES
from .everyday import SAFE_TWINS, _benign, _prose, _scramble, _unfamiliar
from .example import JAILBREAK, Example, _slug
from .maker import _Maker
from .parts import (
    LONG_DOC_MAX_CHARS,
    _ex,
    _filler,
    _harmful,
    _pick_harm_category,
    _safe_doc_text,
    _safe_qa,
    _unsafe_prompt_text,
    _window_start,
)


def _wrap_untrusted(m: _Maker, body: str) -> tuple[str, str, int]:
    """Optionally put a tool/search prefix before the content; returns (text, stage, offset of body)."""
    if m.chance(0.5):
        prefix, stage = m.choice(UNTRUSTED_PREFIXES)  # wrappers are structure, shared by both splits
        return prefix + body, stage, len(prefix)
    return body, m.choice(["tool_result", "retrieval"]), 0


def untrusted_injection(m: _Maker) -> Example:
    inj = m.fill(m.pick(INJECTIONS))
    roll = m.rng.random()
    if roll < 0.35:
        body, start = inj, 0
    else:
        before = _safe_doc_text(m, m.choice([1, 1, 2, 3])) if roll < 0.8 else ""
        after = _safe_doc_text(m, m.choice([1, 2])) if roll >= 0.65 else ""
        sep = m.choice([" ", "\n", "\n\n"])
        body = (before + sep if before else "") + inj + (sep + after if after else "")
        start = len(before + sep) if before else 0
    text, stage, offset = _wrap_untrusted(m, body)
    return _ex(
        untrusted_conversation(text),
        "unsafe",
        [JAILBREAK],
        None,
        stage,
        "untrusted.injection",
        [offset + start, offset + start + len(inj)],
    )


def untrusted_harmful(m: _Maker) -> Example:
    cat = _pick_harm_category(m)
    harm = _harmful(m, cat)
    frame = m.choice(DOC_HARM_FRAMES)
    body = frame.replace("{harmful}", harm)
    start = body.find(harm)
    if m.chance(0.4):
        lead = _safe_doc_text(m, 1) + " "
        body, start = lead + body, start + len(lead)
    text, stage, offset = _wrap_untrusted(m, body)
    return _ex(
        untrusted_conversation(text),
        "unsafe",
        [cat],
        None,
        stage,
        f"untrusted.harmful.{_slug(cat)}",
        [offset + start, offset + start + len(harm)],
    )


def untrusted_safe(m: _Maker) -> Example:
    body = _safe_doc_text(m, m.choice([1, 1, 1, 2, 3, 4]))
    if m.chance(0.3):
        body = _scramble(m, body, m.rng.uniform(0.2, 0.6))
    text, stage, _ = _wrap_untrusted(m, body)
    return _ex(untrusted_conversation(text), "safe", [], None, stage, "untrusted.safe")


def long_document(m: _Maker) -> Example:
    """Most of the context window of harmless prose, with (usually) one harmful or injected sentence near the end."""
    kind = m.choice(["safe", "safe", "safe", "harm", "harm", "harm", "injection"])
    filler = _window_start(m, _filler(m, m.rng.randint(500, LONG_DOC_MAX_CHARS - 200)))
    stage = m.choice(["tool_result", "retrieval"])
    if kind == "safe":
        if m.chance(0.5):  # end on a sentence the model has never seen, harmlessly: where harm usually sits
            last = m.choice(
                [
                    _scramble(m, _prose(m), 0.4),
                    m.choice(SAFE_TWINS),
                    _unfamiliar(m),
                    _scramble(m, _benign(m, False), 0.5),
                ]
            )
            filler += m.choice([" ", "\n\n"]) + last
        elif m.chance(0.3):  # a window may also end mid-sentence
            filler = filler[: len(filler) - m.rng.randint(1, 80)]
        return _ex(untrusted_conversation(filler), "safe", [], None, stage, "untrusted.long.safe")
    cat = JAILBREAK if kind == "injection" else _pick_harm_category(m)
    bad = m.fill(m.pick(INJECTIONS)) if kind == "injection" else _harmful(m, cat)
    where = m.rng.random()
    paragraphs = filler.split("\n\n")
    if where < 0.65:  # the very end
        body = filler + m.choice([" ", " ", "\n\n", "\n"]) + bad
    elif where < 0.85:  # start of the last paragraph
        paragraphs[-1] = bad + " " + paragraphs[-1]
        body = "\n\n".join(paragraphs)
    else:  # anywhere
        paragraphs.insert(m.rng.randrange(len(paragraphs)), bad)
        body = "\n\n".join(paragraphs)
    start = body.find(bad)
    return _ex(
        untrusted_conversation(body), "unsafe", [cat], None, stage, f"untrusted.long.{kind}", [start, start + len(bad)]
    )


def long_questions(m: _Maker) -> Example:
    """A long text of ordinary questions (an FAQ page, a forum thread, a pasted list) up to the context: harmless,
    or with one harmful request somewhere inside. A document (untrusted content) or, less often, a prompt."""
    target = m.rng.randint(200, LONG_DOC_MAX_CHARS - 100)
    questions: list[str] = []
    size = 0
    while size < target:
        q = _safe_qa(m)[0] if m.chance(0.6) else _benign(m, question=True)
        questions.append(m.noisy(q, 0.3))
        size += len(q) + 2
    sep = m.choice([" ", " ", "\n", "\n\n", "\n- "])
    as_prompt = m.chance(0.3)
    stage = "prompt" if as_prompt else m.choice(["tool_result", "retrieval"])
    if m.chance(0.75):
        text = _window_start(m, sep.join(questions))
        conv = prompt_conversation(text) if as_prompt else untrusted_conversation(text)
        return _ex(conv, "safe", [], None, stage, "untrusted.long.questions.safe")
    cat = _pick_harm_category(m)
    bad = _unsafe_prompt_text(m, cat)
    at = m.rng.randrange(len(questions) + 1)
    questions.insert(at, bad)
    text = sep.join(questions)
    start = text.find(bad)
    conv = prompt_conversation(text) if as_prompt else untrusted_conversation(text)
    return _ex(conv, "unsafe", [cat], None, stage, f"untrusted.long.questions.{_slug(cat)}", [start, start + len(bad)])
