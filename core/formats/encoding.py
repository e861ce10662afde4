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
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .content import clean_text, prepare_content
from .prompts import normalize_messages, render_prompt

__all__ = ["ConversationEncoder"]

_SENTINEL = "\ue000{}\ue001"
_SENTINEL_RE = re.compile("\ue000(\\d+)\ue001")


class ConversationEncoder:
    """Encodes conversations for one tokenizer, with its chat template when it has one."""

    def __init__(self, tokenizer: Any, *, use_chat_template: bool | None = None) -> None:
        self.tokenizer = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = has_template if use_chat_template is None else use_chat_template
        added = [t.content if hasattr(t, "content") else str(t) for t in tokenizer.added_tokens_decoder.values()]
        self.added_tokens = sorted({a for a in added if a}, key=len, reverse=True)
        self._added_re = re.compile("|".join(re.escape(a) for a in self.added_tokens)) if self.added_tokens else None
        self._ids = {a: tokenizer.convert_tokens_to_ids(a) for a in self.added_tokens}

    # -- rendering ----------------------------------------------------------------------------
    def render(self, messages: Sequence[dict[str, str]]) -> str:
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False)
        return render_prompt(messages)

    def _text_ids(self, text: str) -> list[int]:
        if not text:
            return []
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _content_ids(self, text: str) -> list[int]:
        """Content tokens: added-token strings are split so they stay plain text."""
        if self._added_re is None or not self._added_re.search(text):
            return self._text_ids(text)
        pieces: list[str] = []
        last = 0
        for m in self._added_re.finditer(text):
            pieces.append(text[last : m.start() + 1])
            last = m.start() + 1
        pieces.append(text[last:])
        return [i for p in pieces for i in self._text_ids(p)]

    def encode(self, messages: Sequence[dict[str, Any]] | str) -> list[int]:
        """Token ids of the full guard prompt for ``messages``."""
        msgs = normalize_messages(messages)
        contents = [prepare_content(m["content"]) for m in msgs]
        skeleton = self.render([{"role": m["role"], "content": _SENTINEL.format(i)} for i, m in enumerate(msgs)])
        ids: list[int] = []
        for part in self._split_added(skeleton):
            if isinstance(part, int):
                ids.append(part)
                continue
            # A template text segment with content sentinels inside: template text is tokenized
            # together with the content around it, like plain tokenization would.
            if not _SENTINEL_RE.search(part):
                ids.extend(self._text_ids(part))
                continue
            ids.extend(self._segment_ids(part, contents))
        return ids

    def _segment_ids(self, part: str, contents: list[str]) -> list[int]:
        # Substitute the contents; if a content holds added-token strings, tokenize around them.
        text = _SENTINEL_RE.sub(lambda m: contents[int(m.group(1))], part)
        if self._added_re is None or not self._added_re.search(text):
            return self._text_ids(text)
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

    def content_token_count(self, text: str) -> int:
        return len(self._content_ids(clean_text(text)))

    def split_content(self, text: str, window: int, overlap: int) -> list[str]:
        """Overlapping windows of ``window`` content tokens, decoded back to text."""
        ids = self._content_ids(clean_text(text))
        if len(ids) <= window:
            return [text]
        step = max(1, window - overlap)
        starts = range(0, max(1, len(ids) - overlap), step)
        return [self.tokenizer.decode(ids[s : s + window]) for s in starts]

