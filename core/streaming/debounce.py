"""The official Qwen3Guard-Stream decision rule, as a pure function and an online detector.

A single noisy token must not stop a stream. Qwen3Guard's rule (technical report §4.4, and the
``consecutive_unsafe`` function of the official ``eval_stream.py``): a response is flagged from token
``i`` when token ``i`` and its predecessor are both unsafe; failing that, when two consecutive tokens
are controversial. The category of token ``i`` becomes the category of the response.

Two details the official code settles and this module keeps:

- A pair of one unsafe and one controversial token does not trigger the *unsafe* rule. Here it is
  reported as *controversial* (``Risk.CONTROVERSIAL``), so a strict policy (which treats controversial
  as unsafe, like the official strict mode) blocks it and a loose one only flags it — exactly what the
  official strict/loose mappings produce.
- The window length is configurable (``window=2`` is the official rule; ``window=1`` flags the first
  non-safe token; longer windows trade detection latency for fewer false alarms).

`flag_position` judges a whole list of per-token risks at once (the offline rule of the evaluation
script); `Debounce` is the same rule fed one token at a time, as a stream needs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..verdict import Risk

__all__ = ["DEFAULT_WINDOW", "Debounce", "Flag", "flag_position"]

#: The official rule: two consecutive non-safe tokens.
DEFAULT_WINDOW = 2


@dataclass(frozen=True, slots=True)
class Flag:
    """A debounce trigger: ``risk`` of the run, at token ``index``; the run started at ``start``."""

    risk: Risk
    index: int
    start: int


def _check_window(window: int) -> int:
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"debounce window must be an integer >= 1, got {window!r}")
    return window


def flag_position(risks: Sequence[Risk | str], window: int = DEFAULT_WINDOW) -> Flag | None:
    """The official offline rule over a whole response: the first run of ``window`` unsafe tokens;
    if there is none, the first run of ``window`` non-safe tokens (reported as controversial).

    Returns ``None`` when nothing triggers.

    >>> from qwenguard.core.verdict import Risk
    >>> flag_position([Risk.SAFE, Risk.UNSAFE, Risk.UNSAFE])
    Flag(risk=<Risk.UNSAFE: 'unsafe'>, index=2, start=1)
    """
    _check_window(window)
    values = [Risk(r) for r in risks]
    for wanted in (Risk.UNSAFE, None):
        run = 0
        for i, risk in enumerate(values):
            hit = risk is Risk.UNSAFE if wanted is Risk.UNSAFE else risk is not Risk.SAFE
            run = run + 1 if hit else 0
            if run >= window:
                return Flag(wanted or Risk.CONTROVERSIAL, i, i - window + 1)
    return None


class Debounce:
    """The rule applied online: call `push` with each token's risk, in order.

    `push` returns a `Flag` at the first token that completes a run of ``window`` non-safe tokens
    (``Risk.UNSAFE`` when the whole run is unsafe, else ``Risk.CONTROVERSIAL``), and ``None``
    otherwise. After a flag the run keeps counting, so a controversial run that turns unsafe
    flags again (a loose policy lets the first through and must still stop the second).

    >>> d = Debounce()
    >>> [d.push(r) for r in ("safe", "unsafe", "unsafe")][-1].risk
    <Risk.UNSAFE: 'unsafe'>
    """

    __slots__ = ("window", "_index", "_run", "_unsafe_run", "_flagged")

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = _check_window(window)
        self.reset()

    def reset(self) -> None:
        self._index = -1
        self._run = 0  # consecutive non-safe tokens ending here
        self._unsafe_run = 0  # consecutive unsafe tokens ending here
        self._flagged: Risk | None = None  # strongest risk already flagged in the current run

    def push(self, risk: Risk | str) -> Flag | None:
        risk = risk if isinstance(risk, Risk) else Risk(risk)
        self._index += 1
        if risk is Risk.SAFE:
            self._run = self._unsafe_run = 0
            self._flagged = None
            return None
        self._run += 1
        self._unsafe_run = self._unsafe_run + 1 if risk is Risk.UNSAFE else 0
        if self._unsafe_run >= self.window and self._flagged is not Risk.UNSAFE:
            self._flagged = Risk.UNSAFE
            return Flag(Risk.UNSAFE, self._index, self._index - self.window + 1)
        if self._run >= self.window and self._flagged is None:
            self._flagged = Risk.CONTROVERSIAL
            return Flag(Risk.CONTROVERSIAL, self._index, self._index - self.window + 1)
        return None

    def extend(self, risks: Iterable[Risk | str]) -> list[Flag]:
        """Push several risks; return the flags they raised, in order."""
        return [f for r in risks if (f := self.push(r)) is not None]
