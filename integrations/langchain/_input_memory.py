"""What `GuardMiddleware` need not judge again among the messages a model is given.

- `AllowedChecks`: the checks it allowed, by fingerprint. The model call judges the messages it is given again
  (a middleware may have changed them since ``before_model``); without this, every model call judged the whole
  history twice more, and with the verdict cache off (``cache_size=0``, or a busy shared guard evicting entries)
  an agent's cost grew with the square of its turns. Fingerprints, not texts: nothing said is kept.
- `judged_content`: what a text check of an answer reads, by fingerprint. An answer whose text was judged (as it
  streamed, or whole in the model call) is not judged again only while it still says what was judged: a middleware
  that rewrites it (a footer, a translation: ``model_copy`` keeps its id) has it judged again.
- `RaisedChecks`: the blocks it raised `GuardViolation` for (``exit_behavior="error"``), by fingerprint. With a
  checkpointer LangGraph writes the input to the thread before any node runs, so a blocked prompt stays there: judged
  again on the thread's next turn, it raised again, every turn (one user's message refused a shared thread for good).
  A block raised before is replaced by its notice in the state instead, and the turn goes on.
- `OwnNotices`: the texts it writes in place of what it blocked (its notices and its refusal). Judged again as a
  user's prompt and as context, the next turn of the thread was refused (the demo guard reads a withheld-message
  notice as unsafe). A message is left out only when its text is exactly one of them, with only category names,
  reasons and a tool's identifier filled in: then it carries nothing but the guard's own words, whoever sent it.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Sequence

from langchain_core.messages import BaseMessage
from qwenguard.core import Action, Decision
from qwenguard.core.policy import REASONS
from qwenguard.core.verdict import CATEGORIES

from .._common import Bounded
from ._messages import Item, answer_text, message_text, source_text

#: How many allowed checks a middleware remembers (fingerprints of 64 hex characters).
MAX_ALLOWED_CHECKS = 16_384
_FINGERPRINT = "qwenguard_fingerprint"  # where an item keeps its own (`Item.extra`)

_WORD = "|".join(re.escape(w) for w in sorted({*CATEGORIES, *REASONS}, key=len, reverse=True))
#: What a notice's fields may hold: category names and reasons (`_fill`), a tool's identifier.
_FIELDS = {
    "categories": rf"(?:{_WORD})(?:, (?:{_WORD}))*",
    "reason": rf"(?:{'|'.join(re.escape(r) for r in REASONS)})",
    "tool": r"[A-Za-z0-9_.-]{1,64}",
}


def _pattern(template: str) -> re.Pattern[str]:
    """The texts ``template`` fills to (`middleware._fill`); a template with other fields is used as it is."""
    parts: list[str] = []
    try:
        for literal, field, _spec, _conversion in string.Formatter().parse(template):
            parts.append(re.escape(literal))
            if field is not None:
                if field not in _FIELDS:
                    raise KeyError(field)
                parts.append(_FIELDS[field])
    except (KeyError, ValueError):
        return re.compile(re.escape(template))
    return re.compile("".join(parts))


class OwnNotices:
    """The texts a middleware writes in place of what it blocked."""

    def __init__(self, templates: Sequence[str]) -> None:
        self._patterns = [_pattern(t) for t in templates]

    def wrote(self, message: BaseMessage) -> bool:
        text = message_text(message)
        return bool(text) and any(p.fullmatch(text) for p in self._patterns)


def _fingerprint(item: Item) -> str:
    """The check's stage and conversation, hashed; kept on the item (`unjudged` and `remember` both ask)."""
    found = item.extra.get(_FINGERPRINT)
    if found is None:
        data = json.dumps([item.stage.value, item.conversation], ensure_ascii=False, sort_keys=True)
        found = item.extra[_FINGERPRINT] = hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()
    return str(found)


def judged_content(message: BaseMessage, budget: int) -> str:
    """What a text check of the answer ``message`` reads (`output_items`: its words, `answer_text`, and what it
    quotes, `source_text`, within ``budget``), hashed."""
    data = json.dumps([answer_text(message), source_text(message, budget)], ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


class AllowedChecks:
    """Fingerprints of the checks a middleware allowed (stage and conversation: the same check gets the same
    decision from the same guard and policy)."""

    def __init__(self, maxsize: int = MAX_ALLOWED_CHECKS) -> None:
        self._allowed: Bounded[str, bool] = Bounded(maxsize)

    def unjudged(self, items: Sequence[Item]) -> list[Item]:
        return [item for item in items if self._allowed.get(_fingerprint(item)) is None]

    def trust(self, items: Sequence[Item]) -> None:
        """Take these checks as allowed without judging them: what the application itself wrote."""
        for item in items:
            self._allowed[_fingerprint(item)] = True

    def remember(self, items: Sequence[Item], decisions: Sequence[Decision]) -> None:
        for item, decision in zip(items, decisions):
            if decision.action is Action.ALLOW:  # a flag (a failed-open check, an ignored category) is told again
                self._allowed[_fingerprint(item)] = True


class RaisedChecks:
    """Fingerprints of the blocked checks a middleware raised `GuardViolation` for (stage and conversation: the same
    message, read with the same earlier turns). Kept in the process: another process raises once more for one."""

    def __init__(self, maxsize: int = MAX_ALLOWED_CHECKS) -> None:
        self._raised: Bounded[str, bool] = Bounded(maxsize)

    # Keyed by the message's id too: LangGraph gives each input message its own id, so the same text sent again
    # (on another thread, by another user) is a new block that raises, not an old one healed into a notice, which
    # turned "error" into "replace" for anyone who resent a blocked prompt (rt50f F5).
    def raised(self, item: Item) -> bool:
        return self._raised.get(_key(item)) is not None

    def remember(self, items: Sequence[Item]) -> None:
        for item in items:
            self._raised[_key(item)] = True


def _key(item: Item) -> str:
    message_id = getattr(item.message, "id", None)
    return f"{message_id if isinstance(message_id, str) else ''}\x00{_fingerprint(item)}"
