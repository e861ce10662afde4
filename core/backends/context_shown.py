"""What an engine's answer shows of its context: a prompt it cut, or refused for being past it.

An engine whose context is smaller than the one a request was planned for either cuts the prompt silently and
judges what is left (Ollama; llama.cpp before ~b5500; SGLang with ``--allow-auto-truncate``) or refuses it with a
400 that names its context (vLLM, SGLang, llama.cpp's ``exceed_context_size_error``). Neither answer is a verdict
(`SmallerContext`): `openai_gen.OpenAIGen` plans the check again for the context shown. Every engine counts the
prompt it read in ``usage.prompt_tokens`` (after a cut; cached tokens included), which is how a cut is seen.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import VerdictParseError
from .base import Outcome

__all__ = ["SmallerContext", "PromptCut", "ContextRefused", "Unsure", "context_named", "prompt_tokens"]


class SmallerContext(VerdictParseError):
    """No verdict, because the engine's context is smaller than the one the request was planned for; it showed
    ``context``. The check is planned again for it (`OpenAIGen._run`)."""

    def __init__(self, message: str, context: int) -> None:
        self.context = context
        super().__init__(f"{message} (pass max_context= the engine's real context, or raise it)")


class PromptCut(SmallerContext):
    """An answer that counts fewer prompt tokens (``usage.prompt_tokens``) than its request must have had: the
    engine cut the prompt to its context (Ollama does so silently) and judged only what it kept."""

    def __init__(self, url: str, kept: int, least: int) -> None:
        super().__init__(
            f"guard server at {url} read {kept} tokens of a prompt of at least {least}: it cut the prompt to its "
            f"context (Ollama: num_ctx; llama.cpp: -c), so its verdict is not about the whole text",
            kept,
        )


class ContextRefused(SmallerContext):
    """A 400 that names the engine's context: the prompt was longer (vLLM, SGLang, llama.cpp's
    ``exceed_context_size_error``)."""

    def __init__(self, url: str, context: int, why: str) -> None:
        super().__init__(f"guard server at {url} refused a prompt longer than its context: {why}", context)


#: What vLLM, SGLang and llama.cpp write in the message of a 400 for a prompt past the context.
_CONTEXT_IN_MESSAGE = re.compile(
    r"maximum context length (?:is|of) (\d+) tokens|context length \((\d+) tokens\)"
    r"|available context size \((\d+) tokens\)|maximum allowed length \((\d+) tokens\)"
)


def context_named(body: bytes) -> int | None:
    """The context a 400's body names (llama.cpp's ``n_ctx`` field, or the number in the message), or None."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    err = payload.get("error", payload) if isinstance(payload, dict) else None
    if not isinstance(err, dict):
        return None
    n_ctx = err.get("n_ctx")
    if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx > 0:
        return n_ctx
    found = _CONTEXT_IN_MESSAGE.search(str(err.get("message", ""))[:1000])
    return int(next(g for g in found.groups() if g)) if found else None


class Unsure(Exception):
    """An answer counting fewer prompt tokens than the official prompt has, but not fewer than its messages'
    text: a cut, or an engine whose template or tokenizer is not ours (the demo's holds its template as added
    tokens). `OpenAIGen._settle` asks which, once per client."""

    def __init__(self, outcome: Outcome, kept: int, full: int) -> None:
        self.outcome, self.kept, self.full = outcome, kept, full


def prompt_tokens(payload: Any) -> int | None:
    """``usage.prompt_tokens`` of a reply when it is a positive int (0 and absent: not counted, as Ollama
    has answered a cached prompt)."""
    usage = payload.get("usage") if isinstance(payload, Mapping) else None
    count = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else None
