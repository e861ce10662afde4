"""qwenguard for LlamaIndex: screen LLM calls, retrieval, ingestion and agent tools with Qwen3Guard.

- `GuardedLLM`: wrap any LLM (``Settings.llm = GuardedLLM(llm=..., guard=guard)``): inputs by role,
  streams through a StreamMonitor, tool calls before an agent can run them.
- `GuardedMemory`: chat-engine or agent memory that stores no blocked user message.
- `GuardNodePostprocessor`, `GuardedRetriever`: drop unsafe or injected retrieved nodes.
- `GuardedObjectRetriever`: an agent's tool retriever that drops the tools whose descriptions carry harm.
- `GuardTransform`: keep them out of the index at ingestion.
- `guard_tool` / `guard_tools`: replace injected tool outputs with a refusal note.
- `GuardCallbackHandler`: blocking legacy callbacks; `GuardEventHandler`: audit only (cannot block).

Blocked content raises `qwenguard.core.GuardViolation`.
"""

from qwenguard.core.errors import MissingDependency

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency.for_extra("llamaindex", "llama-index-core") from exc

from .callbacks import GuardCallbackHandler
from .instrumentation import GuardEventHandler
from .llm import GuardedLLM
from .memory import GuardedMemory, GuardMissing
from .postprocessor import GuardNodePostprocessor
from .retriever import GuardedRetriever
from .tool_retriever import GuardedObjectRetriever
from .tools import DEFAULT_REFUSAL, GuardedFunctionTool, GuardedTool, GuardedToolError, guard_tool, guard_tools
from .transform import GuardTransform

__all__ = [
    "DEFAULT_REFUSAL",
    "GuardCallbackHandler",
    "GuardEventHandler",
    "GuardNodePostprocessor",
    "GuardTransform",
    "GuardedFunctionTool",
    "GuardedLLM",
    "GuardedMemory",
    "GuardedObjectRetriever",
    "GuardedRetriever",
    "GuardedTool",
    "GuardedToolError",
    "GuardMissing",
    "guard_tool",
    "guard_tools",
]
