"""Turn a conversation into guard token ids without letting content become control tokens.

The template's own structure (``<|im_start|>``, ``<|im_end|>``, ``<think>``) yields special tokens;
the same strings inside user, assistant, tool or document text are tokenized as plain text
(DESIGN.md decision 2). For benign content the ids equal plain ``tokenizer(render(messages))``.

How: render the conversation with sentinels in place of each content, split that render at the
template's added-token strings, then substitute the contents back and tokenize each text segment.
Contents first pass through the one content rule (`content.prepare_content`: cleaned, special-token
strings and turn labels neutralised, exactly as `render_prompt` and remote engines see them); any
added-token string of this checkpoint still left in them is then broken in two before tokenizing,
so it cannot match.

The template check: a checkpoint's chat template is used only if it renders the Qwen3Guard-Gen task
exactly as `render_prompt` does (probed on a prompt-mode and a response-mode conversation). A
template that does not (the stock Qwen3 chat template, say, which renders ``<|im_start|>user\n...``
with no task at all) is not used: `render_prompt` is, with a `GuardTemplateWarning`. Asking for
such a template explicitly (``use_chat_template=True``) is one clear ``ValueError``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

from .content import clean_text, prepare_content
from .prompts import normalize_messages, render_prompt

__all__ = ["ConversationEncoder", "GuardTemplateWarning", "template_mismatch", "token_spans"]

_SENTINEL = "\ue000{}\ue001"
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")
#: Role sequences whose rendered skeleton `ConversationEncoder` keeps (`_skeleton`).
_SKELETONS_KEPT = 256

# Conversations the template check renders: both moderation modes, and a multi-turn one.
_PROBES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "How do I bake bread?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
)


class GuardTemplateWarning(UserWarning):
    """A checkpoint's chat template does not render the Qwen3Guard-Gen task; `render_prompt` is used."""


def template_mismatch(tokenizer: Any) -> str | None:
    """``None`` if ``tokenizer``'s chat template renders exactly what `render_prompt` renders, else why not."""
    if not getattr(tokenizer, "chat_template", None):
        return "it has no chat template"
    for probe in _PROBES:
        expected = render_prompt(probe)
        try:
            got = tokenizer.apply_chat_template(probe, tokenize=False)
        except Exception as exc:  # noqa: BLE001 - any template failure means "not the guard template"
            return f"it fails to render a {len(probe)}-turn conversation ({type(exc).__name__}: {exc})"
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            return (
                f"it renders {got[max(0, at - 20) : at + 40]!r} where the Qwen3Guard-Gen prompt has "
                f"{expected[max(0, at - 20) : at + 40]!r} (character {at})"
            )
    return None


def check_use_chat_template(value: object) -> None:
    """``use_chat_template`` is None, True or False: the checks above test ``is True`` / ``is None``, so a str from a
    config file ("false", "0") or 1 passed neither, skipped the template check and rendered with a template that
    ``True`` refuses (rt57c F1: the stock ChatML template, no guard task, every check a parse error)."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"use_chat_template must be None, True or False, got {value!r} ({type(value).__name__})")


class ConversationEncoder:
    """Encodes conversations for one tokenizer, with its chat template when that renders the guard task.

    ``use_chat_template``: ``None`` (default) uses the template if it passes the template check and
    `render_prompt` otherwise (warning if a template was there but wrong); ``False`` always uses
    `render_prompt` (no check); ``True`` requires a template that passes (``ValueError`` if not).
    """

    def __init__(self, tokenizer: Any, *, use_chat_template: bool | None = None) -> None:
        check_use_chat_template(use_chat_template)
        self.tokenizer = tokenizer
        self.template_problem: str | None = None
        if use_chat_template is not False:
            self.template_problem = template_mismatch(tokenizer)
        if use_chat_template is True and self.template_problem is not None:
            raise ValueError(
                f"use_chat_template=True, but this tokenizer's chat template does not render the "
                f"Qwen3Guard-Gen task: {self.template_problem}. Leave use_chat_template unset to use "
                f"qwenguard's render_prompt (the official prompt, byte for byte)."
            )
        if (
            use_chat_template is None
            and self.template_problem is not None
            and getattr(tokenizer, "chat_template", None)
        ):
            warnings.warn(
                f"the checkpoint's chat template does not render the Qwen3Guard-Gen task: {self.template_problem}. "
                f"qwenguard renders the official prompt itself (render_prompt) instead.",
                GuardTemplateWarning,
                stacklevel=3,
            )
        self.use_chat_template = self.template_problem is None if use_chat_template is None else use_chat_template
        added = [t.content if hasattr(t, "content") else str(t) for t in tokenizer.added_tokens_decoder.values()]
        self.added_tokens = sorted({a for a in added if a}, key=len, reverse=True)
        self._added_re = re.compile("|".join(re.escape(a) for a in self.added_tokens)) if self.added_tokens else None
        self._ids = {a: tokenizer.convert_tokens_to_ids(a) for a in self.added_tokens}
        self._skeletons: dict[tuple[str, ...], tuple[str | tuple[int, ...], ...]] = {}

    # -- rendering ----------------------------------------------------------------------------
    def render(self, messages: Sequence[dict[str, str]]) -> str:
        if self.use_chat_template:
            return str(self.tokenizer.apply_chat_template(list(messages), tokenize=False))
        return render_prompt(messages)

    def _text_ids(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _content_ids(self, text: str) -> list[int]:
        """Content tokens: added-token strings are split so they stay plain text."""
        return [i for p in self._content_pieces(text) for i in self._text_ids(p)]

    def encode(self, messages: Sequence[dict[str, Any]] | str) -> list[int]:
        """Token ids of the full guard prompt for ``messages``."""
        msgs = normalize_messages(messages)
        contents = [prepare_content(m["content"]) for m in msgs]
        ids: list[int] = []
        for part in self._skeleton(tuple(m["role"] for m in msgs)):
            if isinstance(part, str):
                ids.extend(self._segment_ids(part, contents))
            else:
                ids.extend(part)
        return ids

    def _skeleton(self, roles: tuple[str, ...]) -> tuple[str | tuple[int, ...], ...]:
        """The prompt for this sequence of roles, contents left as sentinels: template-only parts already
        tokenized (ids), parts with content inside as text. It depends on the roles alone, so it is
        rendered and tokenized once per role sequence (most of a short check's encoding time)."""
        cached = self._skeletons.get(roles)
        if cached is not None:
            return cached
        skeleton = self.render([{"role": r, "content": _SENTINEL.format(i)} for i, r in enumerate(roles)])
        parts: list[str | tuple[int, ...]] = []
        for part in self._split_added(skeleton):
            if isinstance(part, int):
                parts.append((part,))
            elif _SENTINEL_RE.search(part):
                # A template text segment with content sentinels inside: template text is tokenized
                # together with the content around it, like plain tokenization would.
                parts.append(part)
            else:
                parts.append(tuple(self._text_ids(part)))
        if len(self._skeletons) >= _SKELETONS_KEPT:  # one entry per conversation shape: a client's many
            self._skeletons.clear()  # different turn counts cannot grow it without bound
        self._skeletons[roles] = built = tuple(parts)
        return built

    def _segment_ids(self, part: str, contents: list[str]) -> list[int]:
        # Substitute the contents; if a content holds added-token strings, tokenize around them.
        text = _SENTINEL_RE.sub(lambda m: contents[int(m.group(1))], part)
        return self._content_ids(text)

    def _split_added(self, skeleton: str) -> list[str | int]:
        if self._added_re is None:
            return [skeleton]
        out: list[str | int] = []
        last = 0
        for m in self._added_re.finditer(skeleton):
            if m.start() > last:
                out.append(skeleton[last : m.start()])
            out.append(self._ids[m.group(0)])
            last = m.end()
        if last < len(skeleton):
            out.append(skeleton[last:])
        return out

    # -- content tokens and where they start (for windows) -------------------------------------
    def content_token_count(self, text: str) -> int:
        """Tokens of ``text`` as content (after `clean_text`; call `prepare_content` first for the exact
        count inside a Gen conversation)."""
        return len(self._content_ids(clean_text(text)))

    def content_token_starts(self, text: str) -> list[int]:
        """For each content token of ``text`` (as given: no cleaning), the character offset where it starts.

        Several tokens can start at the same offset (a byte-level BPE splits one character into
        several tokens); a cut at ``text[starts[i]:]`` therefore never splits a character.
        """
        starts: list[int] = []
        base = 0
        for piece in self._content_pieces(text):
            starts.extend(base + s for s in self._piece_starts(piece))
            base += len(piece)
        return starts

    def _content_pieces(self, text: str) -> list[str]:
        """``text`` cut right after the first character of each added-token string (as `_content_ids`)."""
        if self._added_re is None or not self._added_re.search(text):
            return [text] if text else []
        pieces: list[str] = []
        last = 0
        for m in self._added_re.finditer(text):
            pieces.append(text[last : m.start() + 1])
            last = m.start() + 1
        pieces.append(text[last:])
        return [p for p in pieces if p]

    def _piece_starts(self, text: str) -> list[int]:
        try:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            return [start for start, _ in enc["offset_mapping"]]
        except (NotImplementedError, TypeError, ValueError, KeyError):
            return self._decoded_starts(text)

    def _decoded_starts(self, text: str) -> list[int]:
        # Tokenizers without offsets: decode token by token; a token that ends inside a character
        # (decodes to U+FFFD) shares the start of the character it belongs to.
        ids = self._text_ids(text)
        starts: list[int] = []
        pos = 0
        pending: list[int] = []
        for tok in ids:
            pending.append(tok)
            piece = self.tokenizer.decode(pending)
            starts.append(pos)
            if not piece.endswith("\ufffd") or len(pending) > 4:
                pos += len(piece)
                pending = []
        return [min(s, max(0, len(text) - 1)) for s in starts]

    def split_content(self, text: str, window: int, overlap: int) -> list[str]:
        """Overlapping pieces of about ``window`` content tokens each, cut between characters.

        Pieces are slices of ``clean_text(text)`` (never decoded from token ids, so never a broken
        character); consecutive pieces share about ``overlap`` tokens. A piece may re-encode a token
        longer or shorter than ``window`` where BPE merges differ at its edges: callers that need a
        hard bound (`WindowPlanner`) fit each window by encoding it.
        """
        if window < 1 or overlap < 0:
            raise ValueError("window must be >= 1 and overlap >= 0")
        text = clean_text(text)
        starts = self.content_token_starts(text)
        if len(starts) <= window:
            return [text]
        return [text[a:b] for a, b in token_spans(starts, len(text), window, overlap)]


def token_spans(starts: Sequence[int], length: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of overlapping windows of ``window`` tokens (``starts``: each token's start)."""
    n = len(starts)
    overlap = min(overlap, window - 1)
    spans: list[tuple[int, int]] = []
    i = 0
    while True:
        j = i + window
        end = starts[j] if j < n else length
        spans.append((starts[i], end))
        if j >= n:
            return spans
        k = max(i + 1, j - overlap)
        while k < n and starts[k] <= starts[i]:  # tokens inside one character share its start
            k += 1
        if k >= n:
            return spans
        i = k
