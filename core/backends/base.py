"""The backend protocol: the one seam between the Guard and a Qwen3Guard-Gen model.

A backend classifies conversations and returns, per conversation, a `Verdict` or the
`QwenGuardError` that stopped it (one bad answer must not fail a whole batch). Whole-call failures
(timeout, server down) raise. Sync and async twins; shaped like httpx transports.

One per-conversation error is not the model's: `InputTooLarge` (the conversation exceeds a limit of
the backend, such as ``max_windows``). It comes back before any model work on that conversation, and
callers must not treat it as a guard error that ``on_error="allow"`` may let through: the `Guard`
raises it to its caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..errors import QwenGuardError
from ..verdict import Verdict

__all__ = ["GenBackend", "Conversation", "Outcome"]

Conversation = Sequence[dict[str, str]]
Outcome = Verdict | QwenGuardError


@runtime_checkable
class GenBackend(Protocol):
    """What `Guard` needs from a Gen model (local, remote, or a test double)."""

    #: Model identifier, used in verdicts and cache keys.
    name: str

    def classify(self, conversations: Sequence[Conversation], *, timeout: float | None = None) -> list[Outcome]:
        """Classify each conversation; raise `GuardTimeout`/`GuardUnavailable` if the call as a whole fails."""
        ...

    async def aclassify(self, conversations: Sequence[Conversation], *, timeout: float | None = None) -> list[Outcome]:
        """Async twin of `classify`."""
        ...

    def close(self) -> None: ...
