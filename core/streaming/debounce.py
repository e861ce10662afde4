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
script); `Debounce` is the same rule fed one token at a time, as a stream needs it. A stream's policy may let
a flagged run go on (an ignored category, a controversial run under a loose policy), so `Debounce` keeps
judging the run: it flags again where the run becomes one no flag of it was judged as (a category new to it,
or unsafe after controversial), naming every category of the run. Both changes need ``window`` consecutive
tokens, as the first flag does: a category joins the run once ``window`` tokens in a row carry it, so one
noisy token of another category inside an allowed run decides nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..verdict import Risk

__all__ = ["DEFAULT_WINDOW", "Debounce", "Flag", "flag_position"]

#: The official rule: two consecutive non-safe tokens.
DEFAULT_WINDOW = 2
#: Categories one run keeps (a model's category head has about ten): a remote server's token verdicts, which may
#: name any category, cannot make every token of a run a flag judged over an ever larger set.
MAX_RUN_CATEGORIES = 64


@dataclass(frozen=True, slots=True)
class Flag:
    """A debounce trigger: ``risk`` of the run, at token ``index``; the window that completed it started at
    ``start``. ``categories``: those the run has held for ``window`` consecutive tokens so far (or the flagging
    token's, for a run's first flag before any has), in the order they joined it (empty when the tokens were
    pushed without one)."""

    risk: Risk
    index: int
    start: int
    categories: tuple[str, ...] = ()


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
    Flag(risk=<Risk.UNSAFE: 'unsafe'>, index=2, start=1, categories=())
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
    """The rule applied online: call `push` with each token's risk (and category), in order.

    `push` returns a `Flag` at the first token that completes a run of ``window`` non-safe tokens
    (``Risk.UNSAFE`` when the whole window is unsafe, else ``Risk.CONTROVERSIAL``), and ``None``
    otherwise. A flag that the policy allows does not end the run's judging: the run flags again at a
    token that makes it one its flags were not judged as, so a policy that let the first flag through
    still judges the rest of the run:

    - a controversial run that turns unsafe (a loose policy lets the first through and must stop the second);
    - a category the run had not had, once ``window`` consecutive tokens carry it (a run allowed for an
      ignored category that flows into another one, with no safe token between). The flag names every
      category of the run so far.

    A category joins the run only on ``window`` consecutive tokens of it, not on ``window`` tokens of it
    anywhere in the run: the official rule's own reading of noise (one token decides nothing), so a long
    allowed run in which the category head now and then misreads a token is not stopped by the misreadings
    adding up. The first flag of a run in which no category has held for ``window`` tokens yet names the
    category of the token that raised it (the official rule: token ``i``'s category is the response's).

    Neither repeats within a run: a long run of one category flags once (twice when it turns unsafe). A
    safe token ends the run, and what its flags named with it.

    >>> d = Debounce()
    >>> [d.push(r) for r in ("safe", "unsafe", "unsafe")][-1].risk
    <Risk.UNSAFE: 'unsafe'>
    """

    __slots__ = ("window", "_index", "_run", "_unsafe_run", "_flagged", "_categories", "_streak_category", "_streak")

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = _check_window(window)
        self.reset()

    def reset(self) -> None:
        self._index = -1
        self._run = 0  # consecutive non-safe tokens ending here
        self._unsafe_run = 0  # consecutive unsafe tokens ending here
        # Strongest risk flagged in the current run since its categories were last added to (None: not flagged
        # as the run is now). The policy judges a risk and a set of categories; with the same set, a weaker or
        # equal risk decides no differently, so it is not flagged again.
        self._flagged: Risk | None = None
        self._categories: dict[str, None] = {}  # the current run's categories, in the order they joined it
        self._streak_category: str | None = None  # the category of the consecutive tokens ending here ...
        self._streak = 0  # ... and how many they are

    def push(self, risk: Risk | str, category: str | None = None) -> Flag | None:
        """One token's risk and its category (``None``: none given); the flag it raises, or ``None``."""
        risk = risk if isinstance(risk, Risk) else Risk(risk)
        self._index += 1
        if risk is Risk.SAFE:
            self._run = self._unsafe_run = self._streak = 0
            self._streak_category = self._flagged = None
            if self._categories:
                self._categories = {}
            return None
        self._run += 1
        self._unsafe_run = self._unsafe_run + 1 if risk is Risk.UNSAFE else 0
        self._streak = self._streak + 1 if category and category == self._streak_category else 1
        self._streak_category = category or None
        if (
            category
            and self._streak >= self.window
            and category not in self._categories
            and len(self._categories) < MAX_RUN_CATEGORIES
        ):
            self._categories[category] = None
            self._flagged = None  # no flag of this run was judged with this category
        if self._unsafe_run >= self.window and self._flagged is not Risk.UNSAFE:
            return self._flag(Risk.UNSAFE, category)
        if self._run >= self.window and self._flagged is None:
            return self._flag(Risk.CONTROVERSIAL, category)
        return None

    @property
    def pending(self) -> int:
        """The last tokens that may yet flag their run again (fewer than ``window`` in a row of a category new to a
        run flagged already), else 0: text a release must not run into before the next tokens decide it."""
        if self._flagged is None or not self._streak_category or self._streak_category in self._categories:
            return 0
        return self._streak

    def _flag(self, risk: Risk, category: str | None) -> Flag:
        if not self._categories and category:
            # No category has held for a window yet: the official rule's, the flagging token's. It joins the run,
            # so its own next tokens do not flag the run again as judged already.
            self._categories[category] = None
        self._flagged = risk
        return Flag(risk, self._index, self._index - self.window + 1, tuple(self._categories))

    def extend(self, risks: Iterable[Risk | str]) -> list[Flag]:
        """Push several risks; return the flags they raised, in order."""
        return [f for r in risks if (f := self.push(r)) is not None]
