"""A deterministic judge inside the real demo Gen backend: every window the backend plans (forged-turn, as-seen,
rendered and joined-run readings included) is decoded and judged by whether it holds a phrase, so a test sees what
the guard reads, not what the toy model happens to flag. `judged_text` and `response_mode` read a remote request
(tests/engines.py) the same way, for engines and servers."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import engines
from qwenguard.core import Guard, GuardViolation

SAFE_R = "Safety: Safe\nCategories: None\nRefusal: No"
UNSAFE_R = "Safety: Unsafe\nCategories: Violent\nRefusal: No"
SAFE_P, UNSAFE_P = "Safety: Safe\nCategories: None", "Safety: Unsafe\nCategories: Violent"


def answer(text: str, response: bool, phrase: str) -> str:
    """The verdict for a judged text: unsafe when it holds ``phrase`` (any case)."""
    hit = phrase.lower() in text.lower()
    return (UNSAFE_R if hit else SAFE_R) if response else (UNSAFE_P if hit else SAFE_P)


def _judged(prompt: str) -> str:
    found = re.search(r"<BEGIN CONVERSATION>(.*)<END CONVERSATION>", prompt, re.S)
    return found.group(1) if found else prompt


class PhraseEngine:
    """A Gen engine for the demo backend (`backend.engine`): records each window's conversation in ``read``;
    ``reading``: how the model reads a window before the phrase is looked for (default: as written)."""

    def __init__(self, tokenizer: Any, phrase: str, reading: Callable[[str], str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.phrase = phrase
        self.reading = reading
        self.read: list[str] = []

    def run(self, prompts):
        out = []
        for ids in prompts:
            conversation = _judged(self.tokenizer.decode(ids, skip_special_tokens=False))
            self.read.append(conversation)
            seen = conversation if self.reading is None else self.reading(conversation)
            out.append((answer(seen, "ASSISTANT:" in conversation, self.phrase), None))
        return out


def phrase_guard(phrase: str, **options: Any) -> Guard:
    """The demo guard (cache off unless ``options`` say) whose model is `PhraseEngine`; ``guard.backend.engine.read``."""
    guard = Guard.from_pretrained("demo", **{"cache_size": 0, **options})
    guard.backend.engine = PhraseEngine(guard.backend.tokenizer, phrase)
    return guard


def reads_from_now(guard: Guard) -> list[str]:
    """What a `phrase_guard`'s model is asked to read from here on (the list fills as it reads)."""
    guard.backend.engine.read.clear()
    return guard.backend.engine.read


@contextmanager
def remote_phrase_guard(phrase: str, mode: str) -> Iterator[Guard]:
    """`Guard.remote` (``mode``: "chat" or "completion") on a scripted engine that answers by `answer`."""

    def rule(body: dict[str, Any]) -> str:
        return answer(engines.judged_text(body), engines.response_mode(body), phrase)

    with engines.recording_engine(answer=rule) as engine:
        remote = Guard.remote(engine.url, model="guard", mode=mode, backoff_s=0.01, cache_size=0)
        try:
            yield remote
        finally:
            remote.close()


def streamed(guard: Guard, prompt: str, text: str, step: int = 5) -> tuple[str, bool]:
    """What a consumer of ``guard.stream(prompt)`` was shown of ``text`` fed ``step`` characters at a time, and
    whether the stream was stopped (`GuardViolation`)."""
    shown = ""
    try:
        with guard.stream(prompt) as monitor:
            for i in range(0, len(text), step):
                shown += monitor.feed(text[i : i + step])
            shown += monitor.finish()
    except GuardViolation:
        return shown, True
    return shown, False


async def astreamed(guard: Guard, prompt: str, text: str, step: int = 5) -> tuple[str, bool]:
    """Async twin of `streamed`."""
    shown = ""
    try:
        async with guard.astream(prompt) as monitor:
            for i in range(0, len(text), step):
                shown += await monitor.afeed(text[i : i + step])
            shown += await monitor.afinish()
    except GuardViolation:
        return shown, True
    return shown, False
