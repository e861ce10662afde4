"""Incremental re-tokenization: text deltas from any LLM in, committed guard tokens out.

An upstream LLM streams text in pieces that do not line up with the guard's tokens: a delta can end
in the middle of a word, a multi-byte character or a special-token string, and a BPE merge can change
the last tokens when more text arrives. `IncrementalTokenizer` therefore keeps an uncommitted tail and
commits a token only once text after it can no longer change it, so that the committed sequence equals
tokenizing the whole text at once (DESIGN.md decision 5).

A boundary is committed when all of these hold:
- it is a pre-tokenizer boundary with at least ``hold_chunks`` pre-token chunks after it (BPE never
  merges across chunks, and appending text changes only the last chunks);
- no added-token string (``<|im_end|>``, ``<think>``, ...) crosses it, nor could one that is still
  being typed (a suffix of the text that is a prefix of such a string stays uncommitted);
- tokenizing the uncommitted text and its prefix agree on the tokens before it (a cheap self-check
  that also covers normalizers such as NFC).

Content is tokenized as plain text: added-token strings inside it are broken in two exactly like
`ConversationEncoder` does (DESIGN.md decision 2), so the ids match `ConversationEncoder._content_ids`.

Documented limit: text with no pre-tokenizer boundary for ``max_pending_chars`` characters (one
giant "word") is force-committed up to its last ``force_keep_tokens`` tokens, which bounds memory and
latency; in that rare case the split may differ from whole-text tokenization by a merge.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["IncrementalTokenizer", "TokenSpan"]

#: (token id, start char, end char) in the text fed so far.
TokenSpan = tuple[int, int, int]

DEFAULT_HOLD_CHUNKS = 2
DEFAULT_MAX_PENDING_CHARS = 1024
DEFAULT_FORCE_KEEP_TOKENS = 8
#: New characters needed before the next commit attempt. Each attempt tokenizes the pending tail; LLM
#: deltas are ~4 chars, so this amortizes the work over a few deltas at the cost of a few chars of delay.
DEFAULT_MIN_COMMIT_CHARS = 8


def _backend_of(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None and hasattr(tokenizer, "encode_batch"):
        backend = tokenizer  # a raw `tokenizers.Tokenizer`
    if backend is None:
        raise TypeError(
            f"incremental re-tokenization needs a fast (Rust `tokenizers`) tokenizer; got {type(tokenizer).__name__}"
        )
    if backend.truncation is not None or backend.padding is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())  # private copy: never truncate or pad content
        backend.no_truncation()
        backend.no_padding()
    return backend


def added_token_strings(tokenizer: Any) -> list[str]:
    """All added-token strings of a tokenizer (transformers or raw `tokenizers`), longest first."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    if decoder is None and hasattr(tokenizer, "get_added_tokens_decoder"):
        decoder = tokenizer.get_added_tokens_decoder()
    values = decoder.values() if decoder else ()
    found = {t.content if hasattr(t, "content") else str(t) for t in values}
    return sorted((a for a in found if a), key=len, reverse=True)


class ContentCodec:
    """Plain-text tokenization of content with char offsets; added-token strings stay plain text."""

    def __init__(self, tokenizer: Any) -> None:
        self.backend = _backend_of(tokenizer)
        self.added = added_token_strings(tokenizer)
        self.added_re = re.compile("|".join(re.escape(a) for a in self.added)) if self.added else None
        # Every proper prefix of an added-token string: a text ending in one may still grow into it.
        self.added_prefixes = {a[:k] for a in self.added for k in range(1, len(a))}
        self.longest_added = max((len(a) for a in self.added), default=0)
        self.added_first_chars = {a[0] for a in self.added}

    def encode(self, text: str, base: int = 0) -> list[TokenSpan]:
        """Token ids and char spans (shifted by ``base``) of ``text`` tokenized as content."""
        if not text:
            return []
        if self.added_re is None or not self.added_re.search(text):
            return self._plain(text, base)
        out: list[TokenSpan] = []
        last = 0
        for m in self.added_re.finditer(text):
            # Break the string after its first character, like ConversationEncoder.
            out.extend(self._plain(text[last : m.start() + 1], base + last))
            last = m.start() + 1
        out.extend(self._plain(text[last:], base + last))
        return out

    def _plain(self, text: str, base: int) -> list[TokenSpan]:
        if not text:
            return []
        enc = self.backend.encode(text, add_special_tokens=False)
        return [(i, base + s, base + e) for i, (s, e) in zip(enc.ids, enc.offsets)]

    def ids(self, text: str) -> list[int]:
        return [t[0] for t in self.encode(text)]

    def chunk_starts(self, text: str) -> list[int]:
        """Char offsets where the pre-tokenizer starts a chunk (BPE never merges across them)."""
        pre = self.backend.pre_tokenizer
        if pre is None:
            return [m.start() for m in re.finditer(r"\S+|\s+", text)]
        return [start for _, (start, _) in pre.pre_tokenize_str(text)]

    def open_added_suffix(self, text: str) -> int | None:
        """Start of the longest suffix of ``text`` that is a proper prefix of an added-token string."""
        if not self.added_prefixes:
            return None
        tail_from = max(0, len(text) - self.longest_added + 1)
        for i in range(tail_from, len(text)):
            if text[i] in self.added_first_chars and text[i:] in self.added_prefixes:
                return i
        return None


class IncrementalTokenizer:
    """Feed text with `push`; get back the tokens that are now final. `flush` ends the text.

    >>> inc = IncrementalTokenizer(tokenizer)           # doctest: +SKIP
    >>> inc.push("The capi") + inc.push("tal of France") + inc.flush()   # doctest: +SKIP
    [(785, 0, 3), ...]
    """

    __slots__ = (
        "codec",
        "hold_chunks",
        "max_pending_chars",
        "force_keep_tokens",
        "min_commit_chars",
        "_pending",
        "_base",
        "_finished",
        "_unseen",
    )

    def __init__(
        self,
        tokenizer_or_codec: Any,
        *,
        hold_chunks: int = DEFAULT_HOLD_CHUNKS,
        max_pending_chars: int = DEFAULT_MAX_PENDING_CHARS,
        force_keep_tokens: int = DEFAULT_FORCE_KEEP_TOKENS,
        min_commit_chars: int = DEFAULT_MIN_COMMIT_CHARS,
    ) -> None:
        codec = tokenizer_or_codec
        self.codec = codec if isinstance(codec, ContentCodec) else ContentCodec(codec)
        if hold_chunks < 1:
            raise ValueError("hold_chunks must be >= 1")
        self.hold_chunks = hold_chunks
        self.max_pending_chars = max_pending_chars
        self.force_keep_tokens = force_keep_tokens
        self.min_commit_chars = min_commit_chars
        self._unseen = 0  # chars added since the last commit attempt
        self._pending = ""
        self._base = 0
        self._finished = False

    @property
    def committed_chars(self) -> int:
        """How many characters of the text have been turned into committed tokens."""
        return self._base

    @property
    def pending(self) -> str:
        """The uncommitted tail."""
        return self._pending

    def push(self, delta: str) -> list[TokenSpan]:
        if self._finished:
            raise RuntimeError("IncrementalTokenizer.push after flush")
        if not delta:
            return []
        self._pending += delta
        self._unseen += len(delta)
        if self._unseen < self.min_commit_chars:
            return []
        self._unseen = 0
        cut, head = self._commit_point()
        if cut <= 0:
            return []
        if head is None:
            return self._commit(cut)
        self._pending = self._pending[cut:]
        base, self._base = self._base, self._base + cut
        return [(t, s + base, e + base) for t, s, e in head] if base else head

    def flush(self) -> list[TokenSpan]:
        """Commit the rest: the text is complete."""
        self._finished = True
        return self._commit(len(self._pending)) if self._pending else []

    def _commit(self, cut: int) -> list[TokenSpan]:
        out = self.codec.encode(self._pending[:cut], self._base)
        self._pending = self._pending[cut:]
        self._base += cut
        return out

    def _commit_point(self) -> tuple[int, list[TokenSpan] | None]:
        """Where to commit, and the tokens of the text before it when already computed."""
        text = self._pending
        starts = self.codec.chunk_starts(text)
        if len(starts) <= self.hold_chunks:
            return self._forced(text), None
        limit = starts[-self.hold_chunks]
        open_at = self.codec.open_added_suffix(text)
        if open_at is not None:
            limit = min(limit, open_at)
        if self.codec.added_re is not None:
            for m in self.codec.added_re.finditer(text):
                if m.start() < limit < m.end():
                    limit = m.start()
        candidates = [s for s in starts if 0 < s <= limit]
        if not candidates:
            return self._forced(text), None
        whole = self.codec.encode(text)
        # Try the latest boundary first, then two earlier ones; the self-check rarely fails.
        for cut in reversed(candidates[-3:]):
            head = self.codec.encode(text[:cut])
            n = len(head)
            if n and whole[:n] == head and (n == len(whole) or whole[n][1] >= cut):
                return cut, head
        return self._forced(text), None

    def _forced(self, text: str) -> int:
        if len(text) <= self.max_pending_chars:
            return 0
        spans = self.codec.encode(text)
        if len(spans) <= self.force_keep_tokens:
            return 0
        return spans[-self.force_keep_tokens][1]
