"""The fewest tokens a Qwen tokenizer can make of a text, counted without the tokenizer.

An engine that silently cuts a prompt longer than its context (Ollama does, to a part of ``num_ctx``,
keeping the start's first few tokens and the tail) judges what is left, and what is left can be the
padding after an unsafe request: "safe". Its answer still counts the prompt it read (``usage.
prompt_tokens``), so a count below what the request must have had is a cut prompt (`OpenAIGen`).

What a request must have had, without the served tokenizer: Qwen's tokenizer (Qwen2/Qwen3, Qwen3Guard's
too) normalises to NFC, takes its added tokens out whole (one token each), splits the rest with one
regular expression (words, single digits, punctuation runs, whitespace runs) and encodes each piece on
its own with byte-level BPE, so every piece is at least one token: the pieces are a lower bound. For
English it is about 0.9 of the real count; for scripts written without spaces (a run of Chinese is one
piece) it is far lower, so a cut there is seen only when the tokenizer is given (token ids are counted
exactly). The expression is the tokenizer's own (``pre_tokenizer`` of Qwen3's ``tokenizer.json``); the
``regex`` module's Unicode tables may be newer than the tokenizer's, which can split a piece of characters
assigned since in two: `lower_bound` keeps a margin for that (1/32), far below any cut worth seeing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from ..errors import MissingDependency
from ..formats.content import normalized

__all__ = ["pieces", "lower_bound", "QWEN_ADDED_TOKENS"]

#: Qwen3's pre-tokenizer split (``tokenizer.json``, ``pre_tokenizer.pretokenizers[0].pattern.Regex``).
_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: The added tokens of Qwen3's vocabulary (each one token when the engine parses them; more when not).
#: Only these count as one: any other ``<|...|>`` is pieces, as the tokenizer splits it.
QWEN_ADDED_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)


@functools.cache
def _patterns() -> tuple[Any, Any]:
    """(the split, the added tokens), compiled once; ``regex`` for ``\\p{L}`` (the ``remote`` extra)."""
    try:
        import regex
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependency.for_extra("remote", "regex") from exc
    added = "|".join(regex.escape(t) for t in sorted(QWEN_ADDED_TOKENS, key=len, reverse=True))
    return regex.compile(_SPLIT), regex.compile(added)


def pieces(text: str) -> int:
    """The pieces Qwen's tokenizer encodes ``text`` in (added tokens one each): at most its token count, whether
    the engine's tokenizer normalises to NFC first (Hugging Face's: vLLM, SGLang) or reads the raw text (llama.cpp,
    Ollama): U+FB2C is one token read raw and two pieces once NFC writes it as two characters."""
    if text.isascii():
        return _pieces(text)
    # Not unicodedata.is_normalized: marks out of order fail its quick check, and the full check that follows
    # reorders them as normalize does, quadratic in a run's length (rt61b F4).
    written = normalized("NFC", text)
    return _pieces(text) if written == text else min(_pieces(text), _pieces(written))


def _pieces(text: str) -> int:
    split, added = _patterns()
    count, start = 0, 0
    if "<" in text:
        for match in added.finditer(text):
            count += 1 + _count(split, text[start : match.start()])
            start = match.end()
    return count + _count(split, text[start:])


def _count(split: Any, text: str) -> int:
    return sum(1 for _ in split.finditer(text)) if text else 0


def lower_bound(texts: Iterable[str], *, slack_per_text: int = 0) -> int:
    """Tokens the texts make at least, together, each encoded as a part of one prompt: their pieces less a
    1/32 margin and ``slack_per_text`` for each (a piece merged with the template's text at its edges)."""
    total = 0
    for text in texts:
        total += max(0, pieces(text) - slack_per_text)
    return total - total // 32
