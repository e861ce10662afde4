"""qwenguard for LangChain and LangGraph (extra: ``pip install -e ".[langchain]"`` in a clone).

- `GuardMiddleware`: for ``langchain.agents.create_agent``; streams out only judged text and tool
  calls (it wraps the model call), turns violations into a policy action (``exit_behavior`` "error" |
  "end" | "replace"); blocked tool calls never execute.
- `GuardedChatModel`: a chat model that screens its input and streams out only judged text and tool
  calls, its raw tokens hidden from every callback and event stream: the drop-in for a model called in
  a hand-built LangGraph node (whose ``stream_mode="messages"`` reports every model's own tokens).
- `GuardRunnable`, `guard_input`, `guard_output`: LCEL pieces, ``guard_input(g) | prompt | model |
  guard_output(g)``; the output step passes chunks on only once they are judged.
- `GuardCallbackHandler` / `AsyncGuardCallbackHandler`: pass in ``config={"callbacks": [...]}`` of any
  chain, model or agent; screens inputs, the streamed answer and tool-call arguments, answers, tool
  calls (before the tool runs), tool results and retrieved documents, and raises `GuardViolation`. A
  callback cannot hold text back: it stops the stream (see ``_streaming.py`` for the trade).
- `GuardDocumentCompressor`, `GuardedRetriever`: drop (or raise on) unsafe or injected documents.
- `retryable`: ``chain.with_retry(retry_if_exception_type=retryable)`` retries anything but the guard's stop
  (`GuardRunnable` and `GuardedChatModel`'s own ``with_retry`` / ``with_fallbacks`` keep their stops already).

User documentation: docs/langchain.md.
"""

from __future__ import annotations

from typing import Any

from qwenguard.core import MissingDependency

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise MissingDependency.for_extra("langchain", "langchain-core") from exc

from ._keep_stops import retryable
from .callbacks import AsyncGuardCallbackHandler, GuardCallbackHandler
from .chat_model import GuardedChatModel
from .documents import GuardDocumentCompressor, GuardedRetriever
from .runnables import GuardRunnable, guard_input, guard_output

__all__ = [
    "AsyncGuardCallbackHandler",
    "GuardCallbackHandler",
    "GuardDocumentCompressor",
    "GuardMiddleware",
    "GuardRunnable",
    "GuardedChatModel",
    "GuardedRetriever",
    "guard_input",
    "guard_output",
    "retryable",
]


def __getattr__(name: str) -> Any:
    # The agent middleware needs `langchain` and `langgraph` on top of langchain-core: import it on
    # first use so that callbacks, runnables and retrieval work with langchain-core alone.
    if name == "GuardMiddleware":
        try:
            from .middleware import GuardMiddleware
        except ImportError as exc:
            if isinstance(exc, MissingDependency) or not (exc.name or "").startswith(("langchain", "langgraph")):
                raise
            raise MissingDependency.for_extra("langchain", exc.name or "langchain") from exc
        return GuardMiddleware
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
