"""What both framework integrations share."""

from __future__ import annotations

from qwenguard.core import Guard

__all__ = ["require_guard"]


def require_guard(guard: object) -> Guard:
    """``guard`` itself, or a clear `TypeError` when it is not a `qwenguard.core.Guard`."""
    if not isinstance(guard, Guard):
        raise TypeError(
            f"guard must be a qwenguard.core.Guard (e.g. Guard.from_pretrained('demo')), got {type(guard).__name__}"
        )
    return guard
