"""What the Qwen3Guard-Gen answer format fixes, token by token, and when an answer can no longer parse.

A Qwen3Guard-Gen answer is ``Safety: <label>`` / ``Categories: <list>`` / (response mode)
``Refusal: <Yes|No>`` (research/qwen3guard.md §2.3). Given the answer tokens so far, `VerdictFormat`
says which tokens to feed next instead of generating them one step each: ``Safety:`` at the start; the
rest of a label once its first token is written (`` Cont`` -> ``rovers``, ``ial``), then the line break
+ ``Categories:``; the rest of a category name once its first tokens leave only one known name (`` Viol``
-> ``ent``); ``Refusal:`` after the line break that ends the categories. The decode engine
(`gen_engine`) also runs the other labels' ways on beside its guess (`label_branches`), and checks the
model's own choice at every fed position: where the model would have written
something else, its choice wins, the rest is dropped and decoding goes on from there, so the answer is
exactly the greedy answer whatever is fed (feeding is speculation, verified; a wrong guess costs only
the positions it occupied in a forward that runs anyway).

`hopeless` says when no continuation of a partial answer can pass `parse_verdict` (its first line can
no longer become ``Safety: Safe|Unsafe|Controversial``): decoding such an answer further cannot change
the outcome, a parse error (fail closed), so the engine stops there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..formats.prompts import SAFETY_LABELS
from ..verdict import PROMPT_CATEGORIES, RESPONSE_CATEGORIES

__all__ = ["VerdictFormat", "hopeless"]

_FIRST_LINES = tuple(f"Safety: {label}" for label in SAFETY_LABELS.values())
# Category lists the tokenization check runs over (single, multi-word, several, none).
_CATEGORY_PROBES = ("None", "Violent", "Non-violent Illegal Acts", "PII, Jailbreak", "Suicide & Self-Harm")
_REFUSALS = ("Yes", "No")
# Most tokens fed after one answer token (a whole canonical answer is shorter).
_MAX_FED = 32


class VerdictFormat:
    """The fixed pieces of the answer format in one tokenizer's ids.

    Built by `for_tokenizer`, which returns ``None`` unless every canonical answer tokenizes as the
    concatenation of its pieces (then forcing a piece is forcing exactly the tokens the model writes).
    """

    def __init__(
        self,
        lead: list[int],
        labels: list[list[int]],
        categories_head: list[int],
        refusal_head: list[int],
        categories: Sequence[list[int]] = (),
        comma: int | None = None,
        no: int | None = None,
    ) -> None:
        self.lead = lead  # "Safety:"
        self.labels = labels  # " Safe", " Unsafe", " Controversial"
        self.categories_head = categories_head  # "\nCategories:"
        self.refusal_head = refusal_head  # "\nRefusal:" (its first token is the line break alone)
        self.categories = [list(c) for c in categories]  # " Violent", " PII", ..., " None"
        self.comma = comma  # the "," between two categories, when it is one token
        self.no = no  # " No" (the refusal guessed), when it is one token
        self.none = self.categories[-1] if self.categories else []  # " None" (the categories of a Safe label)

    def safe_answer(self, *, refusal: bool) -> list[int]:
        """``Safety: Safe`` / ``Categories: None`` (/ ``Refusal: No`` with ``refusal``, response moderation):
        the engine's guess of a check's whole answer before it has one (most checks are safe)."""
        tail = [*self.refusal_head, self.no] if refusal and self.no is not None else []
        return [*self.lead, *self.labels[0], *self.categories_head, *self.none, *tail]

    def label_branches(self, guess: Sequence[int], *, refusal: bool) -> list[list[int]]:
        """The answer's other ways on at the label, for a ``guess`` that starts ``Safety: <label>``: for each
        other label, its tokens and what the format fixes after it (the line break + ``Categories:``; for
        ``Safe``, the rest of the safe answer). The engine runs them beside the guess in the prompt's forward,
        so a check whose label is not the guessed one reads its first category there too. Empty when the
        guess has no label, or when two labels start with the same token (the label's first token then
        could not say which way was taken)."""
        n = len(self.lead)
        rest = list(guess[n:])
        if list(guess[:n]) != self.lead or len({label[0] for label in self.labels}) != len(self.labels):
            return []
        taken = [i for i, label in enumerate(self.labels) if rest[: len(label)] == label]
        if not taken:
            return []
        return [
            self.safe_answer(refusal=refusal)[n:] if i == 0 else [*label, *self.categories_head]
            for i, label in enumerate(self.labels)
            if i != taken[0]
        ]

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> VerdictFormat | None:
        def ids(text: str) -> list[int]:
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])

        lead, head, refusal = ids("Safety:"), ids("\nCategories:"), ids("\nRefusal:")
        newline = ids("\n")
        labels = [ids(f" {label}") for label in SAFETY_LABELS.values()]
        if not lead or not head or len(newline) != 1 or refusal[:1] != newline:
            return None
        for label, label_ids in zip(SAFETY_LABELS.values(), labels, strict=True):
            for cats in _CATEGORY_PROBES:
                base = lead + label_ids + head + ids(f" {cats}")
                if ids(f"Safety: {label}\nCategories: {cats}") != base:
                    return None
                for answer in _REFUSALS:
                    if ids(f"Safety: {label}\nCategories: {cats}\nRefusal: {answer}") != base + refusal + ids(
                        f" {answer}"
                    ):
                        return None
        names = [*dict.fromkeys(c for c in (*PROMPT_CATEGORIES, *RESPONSE_CATEGORIES) if c != "None"), "None"]
        comma, no = ids(","), ids(" No")
        return cls(
            lead,
            labels,
            head,
            refusal,
            [ids(f" {name}") for name in names],
            comma[0] if len(comma) == 1 else None,
            no[0] if len(no) == 1 else None,
        )

    def forced_next(self, answer: Sequence[int], stop_ids: Sequence[int] = (), *, refusal: bool = True) -> list[int]:
        """The tokens to feed right after ``answer`` (empty when the next token is the model's choice alone):
        what the format fixes, then, where the format leaves a choice, the likely one (see `_next`).
        ``refusal=False`` (prompt moderation, whose answer ends after the categories): no refusal line guessed."""
        out: list[int] = []
        while len(out) < _MAX_FED:
            nxt = self._next([*answer, *out], stop_ids, refusal)
            if not nxt:
                break
            out += nxt
        return out[:_MAX_FED]

    def _next(self, answer: list[int], stop_ids: Sequence[int], refusal: bool) -> list[int]:
        """One piece to feed after ``answer``. Fixed by the format: ``Safety:``, a label's rest, the line
        break + ``Categories:``, a category name's rest, ``Refusal:``. Guessed (verified like the rest; a
        wrong guess is dropped): `` None`` after ``Safe``, the line break after a complete category name
        (response moderation only: a prompt check's answer ends there), `` No`` after ``Refusal:``."""
        if not answer:
            return list(self.lead)
        n = len(self.lead)
        if answer[:n] != self.lead:
            return []
        rest = answer[n:]
        if not rest:
            return []
        started = [label for label in self.labels if len(label) > len(rest) and label[: len(rest)] == rest]
        if started:  # a label begun: its rest (if only one label starts so), then the categories line's head
            tail = _common_prefix([label[len(rest) :] for label in started])
            return tail + (list(self.categories_head) if len(started) == 1 else [])
        for index, label in enumerate(self.labels):
            if rest == label:
                return list(self.categories_head)
            k = len(label) + len(self.categories_head)
            if rest[:k] != label + self.categories_head:
                continue
            # The categories are the model's; the line break that ends them starts the refusal line.
            cats = rest[k:]
            newline = self.refusal_head[0]
            if set(cats) & set(stop_ids):
                return []
            if newline in cats[:-1]:
                line = cats[cats.index(newline) + 1 :]
                return [self.no] if self.no is not None and line == self.refusal_head[1:] else []
            if cats and cats[-1] == newline:
                return list(self.refusal_head[1:])
            if not cats:
                return list(self.none) if index == 0 else []  # after "Safe", guess " None"
            return self._category_rest(cats, refusal)
        return []

    def _category_rest(self, cats: list[int], refusal: bool) -> list[int]:
        """The rest of the category name being written, when every known name it can still be agrees on it."""
        item = cats
        if self.comma is not None and self.comma in cats:
            item = cats[len(cats) - cats[::-1].index(self.comma) :]
        if not item:
            return []
        if any(name == item for name in self.categories):
            # A complete name: guess the line ends (a comma may follow; in prompt moderation the answer ends).
            return [self.refusal_head[0]] if refusal else []
        matches = [name[len(item) :] for name in self.categories if len(name) > len(item) and name[: len(item)] == item]
        return _common_prefix(matches) if matches else []


def _common_prefix(seqs: list[list[int]]) -> list[int]:
    out: list[int] = []
    for column in zip(*seqs, strict=False):
        if len(set(column)) != 1:
            break
        out.append(column[0])
    return out


def hopeless(text: str) -> bool:
    """True when no continuation of the partial answer ``text`` can pass `parse_verdict`.

    `parse_verdict` strips the answer, splits it into lines and requires the first stripped line to be
    exactly ``Safety: Safe|Unsafe|Controversial``. Only that first line is judged here: a complete first
    line must be one of the three; an open one must still be able to become one.
    """
    body = text.lstrip()
    line, newline, _ = body.partition("\n")
    if newline:
        return line.strip() not in _FIRST_LINES
    # A trailing U+FFFD is a character whose bytes are not all written yet (byte-level BPE splits some
    # characters over tokens): it may still become whitespace, which `parse_verdict` strips.
    line = line.rstrip("\ufffd")
    if any(full.startswith(line) for full in _FIRST_LINES):
        return False
    complete = line.rstrip()
    return complete not in _FIRST_LINES  # a complete label followed by spaces still parses
