"""The seeded drawing machinery: `_Maker` (templates, fillers and structure per split) and `_Slots` (lazy slot values)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .document_texts import INJECTION_GOALS
from .everyday import SAFE_TWINS, _benign, _cap, _prose
from .example import SPLITS
from .qa import _CODING, _DISHES, _HISTORY, _MISC, _SCIENCE
from .slots import COUNTRIES, SLOTS
from .tool_texts import SAFE_TEXTS

# ---------------------------------------------------------------------------------------------------------------
# The generator.
# ---------------------------------------------------------------------------------------------------------------


def _portion(items: Sequence[Any], heldout: bool) -> Sequence[Any]:
    """Index 3, 8, 13, ... of a list are held out; lists shorter than four are shared."""
    if len(items) < 4:
        return items
    return [x for i, x in enumerate(items) if (i % 5 == 3) == heldout]


_ROW_SOURCES: dict[str, list[dict[str, str]]] = {
    **{k: COUNTRIES for k in ("country", "capital", "landmark", "city", "food")},
    **{k: _SCIENCE for k in ("thing", "fact")},
    **{k: _DISHES for k in ("dish", "tip")},
    **{k: _HISTORY for k in ("event", "when")},
}


class _Slots(dict[str, str]):
    """A format mapping that picks a filler the first time a slot is read, and derives a few computed slots."""

    def __init__(self, maker: _Maker, fixed: dict[str, str]):
        super().__init__(fixed)
        self.maker = maker

    def __missing__(self, key: str) -> str:
        m = self.maker
        if key.endswith("_cap"):
            value = _cap(self[key[:-4]])
        elif key.endswith("_up"):
            value = self[key[:-3]].upper()
        elif key == "inj_goal":
            value = m.fill(m.pick(INJECTION_GOALS), self)
        elif key == "capital2":
            value = m.slot(COUNTRIES)["capital"]
        elif key in _ROW_SOURCES:
            for k, v in m.slot(_ROW_SOURCES[key]).items():  # keep the values of one row together
                self.setdefault(k, v)
            value = dict.__getitem__(self, key)
        elif key == "how":
            value = m.slot(_CODING + _MISC)["how"]
        elif key == "question_short":
            value = m.choice(
                [
                    "weather in {capital} tomorrow",
                    "capital of {country}",
                    "best {food} recipe",
                    "how does {thing} work",
                    "{landmark} opening hours",
                    "train times {capital} to {capital2}",
                    "{event} summary",
                    "cheap flights to {capital}",
                    "python list comprehension",
                    "{dish} recipe",
                ]
            )
            value = m.fill(value, self)
        elif key == "safe_text":
            value = (
                m.fill(m.pick(SAFE_TEXTS), self)
                if m.chance(0.6)
                else m.choice([_benign(m, question=False), _prose(m), m.choice(SAFE_TWINS)])
            )
        else:
            base = key.rstrip("0123456789")
            options = SLOTS[base]
            value = m.slot(options)
            if base != key:  # a second draw from the same list: make it differ from the first
                for _ in range(8):
                    if value != self.get(base):
                        break
                    value = m.slot(options)
        self[key] = value
        return value


class _Maker:
    """Draws templates, fillers and structural choices for one split with one seeded `random.Random`.

    Three kinds of draw keep the split honest: `pick` for templates (train and held-out never share one),
    `slot` for fillers (training never sees a held-out filler; held-out examples mix seen and unseen ones),
    and `choice` for structure (which family, how many sentences), which must not depend on the split.
    """

    def __init__(self, rng: random.Random, split: str):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.rng = rng
        self.split = split

    def pick(self, templates: Sequence[Any]) -> Any:
        return self.rng.choice(_portion(templates, self.split == "heldout"))

    def slot(self, fillers: Sequence[Any]) -> Any:
        return self.rng.choice(fillers if self.split == "heldout" else _portion(fillers, False))

    def choice(self, options: Sequence[Any]) -> Any:
        return self.rng.choice(options)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def fill(self, template: str, slots: dict[str, str] | None = None) -> str:
        mapping = slots if isinstance(slots, _Slots) else _Slots(self, dict(slots or {}))
        return template.format_map(mapping)

    def noisy(self, text: str, strength: float = 1.0) -> str:
        """Casing, punctuation, small typos and chatty prefixes/suffixes, as real users write."""
        r = self.rng.random
        if r() < 0.12 * strength:
            text = (
                self.choice(
                    [
                        "Hey, ",
                        "Hi! ",
                        "Quick question: ",
                        "Please, ",
                        "Hello. ",
                        "ok so ",
                        "Question: ",
                        "Hi there, ",
                        "Be honest: ",
                        "I was wondering: ",
                    ]
                )
                + text[:1].lower()
                + text[1:]
            )
        if r() < 0.08 * strength:
            text = text + self.choice(
                [
                    " Thanks!",
                    " Please answer quickly.",
                    " Be detailed.",
                    " thx",
                    " Keep it short.",
                    " It's urgent.",
                    " :)",
                    " Answer in English.",
                ]
            )
        x = r()
        if x < 0.08 * strength:
            text = text.lower()
        elif x < 0.10 * strength:
            text = text.upper()
        elif x < 0.13 * strength:
            text = text[:1].lower() + text[1:]
        if r() < 0.12 * strength and text[-1:] in ".?!":
            text = text[:-1]
        elif r() < 0.04 * strength:
            text = text + self.choice(["!!", "??", "?!", "..."])
        if r() < 0.05 * strength:
            text = self._typo(text)
        return text

    def _typo(self, text: str) -> str:
        words = text.split(" ")
        idx = [i for i, w in enumerate(words) if len(w) > 4 and w.isalpha()]
        if not idx:
            return text
        i = self.rng.choice(idx)
        w = words[i]
        j = self.rng.randrange(1, len(w) - 2)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
        return " ".join(words)
