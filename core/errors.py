"""qwenguard's exceptions. One root, so ``except QwenGuardError`` catches everything we raise.

    QwenGuardError(Exception)
    ├── GuardViolation        a check decided to block; carries the Decision (also a RuntimeError)
    ├── GuardUnavailable      the guard could not answer and the policy fails closed
    │   └── GuardTimeout      ... because it ran past the policy's timeout
    ├── StreamClosed          a stream monitor/session was fed after finish() or close()
    ├── VerdictParseError     the model's answer is not in the Qwen3Guard format
    ├── InputTooLarge         a check exceeds an operator limit (characters, messages, windows); also a ValueError
    ├── ModelNotFound         a checkpoint cannot be found (offline, bad path)
    └── MissingDependency     an optional extra is not installed (also an ImportError)

All are plain ``Exception`` subclasses on purpose: a ``BaseException`` subclass hangs LlamaIndex
workflows, and LangChain never re-raises ``NotImplementedError`` from callback handlers. A retry that re-runs a
guarded step after a stop asks the model again (a re-roll) or runs a tool again: `retryable` is the predicate for
retry policies that retry every error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .policy import Decision
    from .verdict import Verdict

__all__ = [
    "QwenGuardError",
    "GuardViolation",
    "GuardUnavailable",
    "GuardTimeout",
    "StreamClosed",
    "VerdictParseError",
    "InputTooLarge",
    "ModelNotFound",
    "MissingDependency",
    "retryable",
]


class QwenGuardError(Exception):
    """Root of every exception qwenguard raises."""

    #: A check judged in windows, some read and some not: the worst verdict of those read (none of them unsafe,
    #: or it would be the outcome). A policy that blocks it blocks the check whatever ``on_error`` says: a window
    #: that could not be read can only add risk (`Policy.decide_error`; rt53f F2).
    readable: Verdict | None = None


class GuardViolation(QwenGuardError, RuntimeError):
    """A check blocked the content. ``decision`` says what, where and why.

    Also a ``RuntimeError``: LangGraph's default ``RetryPolicy`` retries a node on any error but those it names as
    permanent (``ValueError``, ``RuntimeError``...), and a node re-run after a stop asked the model again or ran a
    blocked tool again (rt60b F1)."""

    def __init__(self, decision: Decision, message: str | None = None) -> None:
        self.decision = decision
        super().__init__(message or decision.describe())


class GuardUnavailable(QwenGuardError):
    """The guard could not produce a verdict. ``decision`` is set when a Guard raised it."""

    def __init__(self, message: str, decision: Decision | None = None) -> None:
        self.decision = decision
        super().__init__(message)


class GuardTimeout(GuardUnavailable):
    """The guard did not answer within ``Policy.timeout_s``."""


class StreamClosed(QwenGuardError, RuntimeError):
    """A stream monitor or session was fed after `finish()` or `close()`."""


class VerdictParseError(QwenGuardError, ValueError):
    """The guard model's output is not a valid Qwen3Guard answer. ``raw`` holds the text."""

    def __init__(self, message: str, raw: str = "") -> None:
        self.raw = raw
        super().__init__(f"{message} (raw output: {raw[:200]!r})")


class InputTooLarge(QwenGuardError, ValueError):
    """A check is larger than a limit the operator set (``max_chars``, ``max_messages``, ``max_windows``).

    Raised to the caller before any model work on that text; never turned into a verdict and never
    subject to ``on_error="allow"``, so size alone can never get text through unjudged.

    ``too_large``: where a batch was refused for some of its checks alone (each over its own limit), their
    positions in the batch (the call's items, in order); the other checks were judged: ``decided`` holds each
    item's Decision (``None`` at the refused positions), so a caller that leaves those out pays no model work
    twice. Both empty when the batch as a whole was over a limit (``max_checks``, ``max_windows_per_call``)."""

    too_large: tuple[int, ...] = ()
    decided: tuple[Decision | None, ...] = ()
    #: A remote guard server's refusal (its HTTP 413 to `Guard.remote`, its close 1009 to a remote stream), not a limit
    #: of this process: the message names that server or quotes its reply, which a ``qwenguard serve`` in front of it
    #: logs and does not send on.
    upstream: bool = False


class ModelNotFound(QwenGuardError):
    """The checkpoint named could not be found or loaded."""


class MissingDependency(QwenGuardError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    @classmethod
    def for_extra(cls, extra: str, package: str) -> MissingDependency:
        # The README's install path: qwenguard is installed from a clone, not the package registry. The
        # local extra's torch comes first and by hand (an unpinned torch pulls a multi-GB CUDA build).
        install = f'pip install -e ".[{extra}]" in your qwenguard clone'
        if extra == "local":
            install = f"install torch first, the build for your machine (README, Install), then {install}"
        return cls(f"{package} is not installed: {install}")


def retryable(error: BaseException) -> bool:
    """Any ``Exception`` but the guard's stop, for retry policies that retry every error (LangChain's
    ``with_retry(retry_if_exception_type=retryable)``, LangGraph's ``RetryPolicy(retry_on=retryable)``, a LlamaIndex
    step's ``retry_policy(retry=retry_if_exception(retryable))``). The stop is any `QwenGuardError` (a
    `GuardViolation`, an `InputTooLarge`...) but `GuardUnavailable` (`GuardTimeout` too): a guard that could not
    answer may answer on a retry, and the new answer is judged."""
    if isinstance(error, GuardUnavailable):
        return True
    return isinstance(error, Exception) and not isinstance(error, QwenGuardError)
