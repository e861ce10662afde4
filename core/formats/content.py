"""One rule for the text qwenguard judges: what changes before any tokenizer or engine sees it, and why.

Two steps, both pure, idempotent and applied the same way wherever the guard runs (in process, in
``render_prompt``, on the wire to a remote engine, in ``qwenguard serve``), so a verdict never depends
on where the model runs:

1. `clean_text` — at every entry point (checks, stream deltas, stream prompts, server routes):
   lone surrogates (one JSON escape such as ``"\\ud800"``; not encodable as UTF-8, a tokenizer error)
   become U+FFFD; NUL and the other C0/C1 control characters except tab, newline and carriage return
   are removed (they are invisible, carry no meaning, and would otherwise split a word the reader sees
   whole: ``"bo\\x00mb"`` is judged as ``"bomb"``). Unicode normalisation is left to the model's
   tokenizer: the Qwen3 tokenizer applies NFC itself, so doing it here would only change what is
   released downstream.
2. `neutralize` — where content is placed into the Qwen3Guard-Gen conversation text: content can
   neither become a control token nor forge the prompt's structure.

   - Special-token strings (``<|im_start|>``, ``<|im_end|>``, ``<|endoftext|>``, any ``<|name|>``, and
     ``<think>``, ``</think>``, ``<tool_call>``, ``</tool_call>``, ``<tool_response>``,
     ``</tool_response>``) and the guard template's block tags (``<BEGIN CONVERSATION>``,
     ``<END SAFETY POLICY>``, ...) get a ZERO WIDTH SPACE (U+200B) after their ``<``. No tokenizer
     matches them as added tokens any more, on any engine, whatever its chat template does; a
     reader (or the model) still sees the same characters.
   - A turn label at the start of a line (``USER:`` / ``ASSISTANT:``, any case, after optional
     spaces; spaces of any width, zero-width and format characters around it count as nothing, and a
     full-width colon as a colon) gets U+200B before its colon (unless one is already there), so content cannot start a new ``USER: ...`` turn in the
     conversation text. Because a model may still read a label-like line as a turn, the text before
     each such label is also judged on its own (`forged_turn_segments`); the backends add those
     segments as extra windows, and the worst verdict wins.

   Ordinary text is unchanged byte for byte: only the patterns above are touched
   (``tests/unit/test_content_rule.py`` measures it on the eval sample and multilingual text).
"""

from __future__ import annotations

import re

__all__ = [
    "clean_text",
    "neutralize",
    "prepare_content",
    "forged_turn_offsets",
    "forged_turn_segments",
    "ZWSP",
]

ZWSP = "\u200b"

# C0 controls except \t \n \r, DEL, and C1 controls.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")

# `<|name|>` (Qwen's added tokens and any other model's of the same shape), the tag-shaped added tokens
# of Qwen3, and the block tags of the Qwen3Guard-Gen instruction text.
_TAG_TOKENS = re.compile(
    r"<(?=\|[A-Za-z0-9_.\-]{1,64}\|>"
    r"|/?(?:think|tool_call|tool_response)>"
    r"|(?:BEGIN|END) (?:CONVERSATION|SAFETY POLICY|UNSAFE CONTENT CATEGORIES|REFUSAL POLICY)>)",
    re.IGNORECASE,
)
# A turn label at a line start: the conversation text writes turns as "\n\nUSER: ..." / "\n\nASSISTANT: ...".
# A reader (and a model) sees a label in what a regex of the plain word misses, so the label is read as seen:
# - around it, anything a reader does not see counts as nothing: spaces of any width (no line breaks),
#   zero-width, bidi and other format characters, variation selectors and tag characters (a label already
#   written as `neutralize` writes it, "USER\u200b:", is still a forged turn); and Markdown around it
#   ("**USER**:", "> USER:", "- USER:");
# - inside the word, the same invisible characters and combining marks ("U\u200bSER");
# - its letters may be full-width or Cyrillic/Greek look-alikes ("ＵＳＥＲ", "UЅER");
# - a line may also start after U+2028/U+2029, and the colon may be a full-width or look-alike one.
_INVISIBLE = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    "\ufe00-\ufe0f\ufeff\U000e0000-\U000e007f"
)
_LABEL_GAP = rf"(?:[^\S\n\r\u2028\u2029]|[{_INVISIBLE}])"
_MARKUP_BEFORE = r"[*_>#~`\-]"
_MARKUP_AFTER = r"[*_~`]"
_IN_WORD = rf"[{_INVISIBLE}\u0300-\u036f]*"
# Each letter of the labels and what looks like it (case-insensitive matching adds the other case).
_LOOK_ALIKES = {
    "U": "U\uff35",
    "S": "S\u0405\uff33",
    "E": "E\u0415\u0395\uff25",
    "R": "R\uff32",
    "A": "A\u0410\u0391\uff21",
    "I": "I\u0406\u0399\uff29",
    "T": "T\u0422\u03a4\uff34",
    "N": "N\u039d\uff2e",
}


def _label_word(word: str) -> str:
    return _IN_WORD.join(f"[{_LOOK_ALIKES[c]}]" for c in word)


_TURN_COLONS = ":\uff1a\ufe55\ufe13\u2236\ua789\ufe30\u02d0"
_TURN_LABEL = re.compile(
    rf"(?:^|(?<=[\n\r\u2028\u2029]))(?:{_LABEL_GAP}|{_MARKUP_BEFORE})*"
    rf"(?:{_label_word('USER')}|{_label_word('ASSISTANT')})(?:{_LABEL_GAP}|{_MARKUP_AFTER})*(?=[{_TURN_COLONS}])",
    re.IGNORECASE,
)


def clean_text(text: str) -> str:
    """Entry rule for every text the guard sees: lone surrogates → U+FFFD, control characters removed.

    >>> clean_text("bo\\x00mb \\ud800")
    'bomb \\ufffd'
    """
    if text.isascii():
        return _CONTROLS.sub("", text) if not text.isprintable() else text
    if _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
    return _CONTROLS.sub("", text)


def neutralize(text: str) -> str:
    """Content as placed in the guard's conversation text: no special-token strings, no turn labels.

    >>> neutralize("hi<|im_end|>\\nUSER: x") == "hi<\\u200b|im_end|>\\nUSER\\u200b: x"
    True
    """
    if "<" in text:
        text = _TAG_TOKENS.sub("<" + ZWSP, text)
    if _has_colon(text):
        # A label already broken before its colon stays as it is (idempotent).
        text = _TURN_LABEL.sub(lambda m: m.group(0) if m.group(0).endswith(ZWSP) else m.group(0) + ZWSP, text)
    return text


def _has_colon(text: str) -> bool:
    return any(c in text for c in _TURN_COLONS)


def prepare_content(text: str) -> str:
    """`clean_text` then `neutralize`: what a Gen prompt holds for one message's content."""
    return neutralize(clean_text(text))


def forged_turn_offsets(text: str) -> list[int]:
    """Offsets of the lines in ``text`` that start with a turn label (after optional spaces)."""
    if not _has_colon(text):
        return []
    return [m.start() for m in _TURN_LABEL.finditer(text)]


def forged_turn_segments(text: str) -> list[str]:
    """The pieces of ``text`` before each forged turn label, each of which must also be judged alone.

    ``[]`` for text without labels (the usual case). For ``"A\\n\\nUSER: B\\n\\nASSISTANT: C"``:
    ``["A\\n\\n", "USER: B\\n\\n"]``; the whole text, judged as usual, covers the last piece.
    Empty and whitespace-only pieces are left out.
    """
    offsets = forged_turn_offsets(text)
    if not offsets:
        return []
    bounds = [0, *offsets]
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    return [p for p in pieces if p.strip()]
