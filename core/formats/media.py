"""Bytes sent as media that are text all the same: a text file labelled ``application/octet-stream`` or given with no
type, one a framework relabels as a PDF. A provider sends the bytes and a model reads text as text, whatever the
label, so the integrations judge such bytes as text. Only the start of a file is read to tell (an image's or a
PDF's first bytes are neither UTF-8 nor mostly printable); a file whose start is not text is media."""

from __future__ import annotations

import codecs
import re

__all__ = ["SNIFF_BYTES", "text_encoding", "bytes_as_text"]

#: How much of a file's start is read to tell text from media.
SNIFF_BYTES = 3072
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_PRINTABLE = frozenset(range(0x20, 0x7F)) | frozenset(range(0xA0, 0x100)) | {0x09, 0x0A, 0x0D}


def text_encoding(sample: bytes, whole: bool) -> str | None:
    """The encoding ``sample`` (the start of a file, or all of it with ``whole``) is text in: UTF-16 with its byte
    order mark, UTF-8, or Latin-1 when nearly every byte is printable; ``None`` for media. One control character,
    and one more in every hundred, is text still (an ANSI escape, a stray NUL)."""
    if not sample:
        return None
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        try:
            codecs.getincrementaldecoder("utf-8")().decode(sample, final=whole)  # a cut start may end mid-character
            encoding = "utf-8"
        except UnicodeDecodeError:
            if sum(b in _PRINTABLE for b in sample) < 0.95 * len(sample):
                return None
            encoding = "latin-1"
    text = sample.decode(encoding, errors="replace")
    return encoding if len(_CONTROL.findall(text)) <= 1 + len(text) // 100 else None


def bytes_as_text(raw: bytes) -> str | None:
    """``raw`` decoded when it is text (`text_encoding` of its start), else ``None``."""
    encoding = text_encoding(raw[:SNIFF_BYTES], whole=len(raw) <= SNIFF_BYTES)
    return None if encoding is None else raw.decode(encoding, errors="replace")
