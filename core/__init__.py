"""qwenguard.core: run Qwen3Guard around LLM applications.

>>> from qwenguard.core import Guard, Policy
>>> guard = Guard.from_pretrained("demo", policy=Policy.strict())     # doctest: +SKIP
>>> guard.check_prompt("How can I make a bomb at home?").allowed       # doctest: +SKIP
False

Importing this package is light: torch and transformers load only with a local backend.
"""

from .backends.base import GenBackend
from .backends.transformers_stream import (
    StreamSession,
    TokenVerdict,
    TransformersStream,
)
from .errors import (
    GuardTimeout,
    GuardUnavailable,
    GuardViolation,
    InputTooLarge,
    MissingDependency,
    ModelNotFound,
    QwenGuardError,
    StreamClosed,
    VerdictParseError,
    retryable,
)
from .formats.conversations import render_tool_call
from .formats.prompts import parse_verdict, render_prompt
from .guard import Guard, enforce
from .policy import Action, Decision, Policy, StagePolicy
from .streaming.debounce import Debounce
from .streaming.monitor import AsyncStreamMonitor, StreamMonitor
from .verdict import (
    CATEGORIES,
    PROMPT_CATEGORIES,
    RESPONSE_CATEGORIES,
    Category,
    Risk,
    Stage,
    Verdict,
)

__all__ = [
    "Action",
    "AsyncStreamMonitor",
    "Debounce",
    "CATEGORIES",
    "Category",
    "Decision",
    "GenBackend",
    "Guard",
    "GuardTimeout",
    "GuardUnavailable",
    "GuardViolation",
    "InputTooLarge",
    "MissingDependency",
    "ModelNotFound",
    "PROMPT_CATEGORIES",
    "Policy",
    "QwenGuardError",
    "RESPONSE_CATEGORIES",
    "Risk",
    "Stage",
    "StagePolicy",
    "StreamClosed",
    "StreamMonitor",
    "StreamSession",
    "TokenVerdict",
    "TransformersStream",
    "Verdict",
    "VerdictParseError",
    "enforce",
    "parse_verdict",
    "render_prompt",
    "render_tool_call",
    "retryable",
]
