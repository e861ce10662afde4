"""Bytes sent as media that are text all the same: a text file labelled ``application/octet-stream`` or given with no
type, one a framework relabels as a PDF. A provider sends the bytes and a model reads text as text, whatever the
label, so the integrations judge such bytes as text. Only the start of a file is read to tell (an image's or a
PDF's first bytes are neither UTF-8 nor mostly printable); a file whose start is not text is media."""

from __future__ import annotations

import base64
import binascii
import codecs
import re

__all__ = [
    "SNIFF_BYTES",
    "text_encoding",
    "bytes_as_text",
    "declared_charset",
    "labelled_text",
    "base64_bytes",
    "base64_as_text",
]

#: How much of a file's start is read to tell text from media.
SNIFF_BYTES = 3072
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_PRINTABLE = frozenset(range(0x20, 0x7F)) | frozenset(range(0xA0, 0x100)) | {0x09, 0x0A, 0x0D}


#: How media files start (an image's, a PDF's, an archive's, audio's, video's): never text, whatever follows (a
#: JPEG's or a PNG's XMP metadata is text, and its start says it is an image).
_MEDIA_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG",
    b"GIF8",
    b"RIFF",  # WebP, WAV, AVI
    b"%PDF",
    b"II*\x00",  # TIFF
    b"MM\x00*",
    b"PK\x03\x04",  # ZIP, DOCX, XLSX
    b"ID3",  # MP3
    b"OggS",
    b"fLaC",
    b"\x1a\x45\xdf\xa3",  # Matroska, WebM
)
#: A terminal's colour and cursor codes: part of a text (a coloured log), not a sign of media.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def text_encoding(sample: bytes, whole: bool) -> str | None:
    """The encoding ``sample`` (the start of a file, or all of it with ``whole``) is text in: UTF-16 with its byte
    order mark or by its zero bytes, UTF-8, or Latin-1 when nearly every byte is printable; ``None`` for media (a
    known media signature first, `_MEDIA_SIGNATURES`). One control character, and one more in every hundred, is
    text still (a stray NUL); a terminal's colour codes are not counted."""
    if not sample or sample.startswith(_MEDIA_SIGNATURES) or sample[4:12].startswith(b"ftyp"):  # ftyp: MP4, MOV
        return None
    zeros_even, zeros_odd = sample[0::2].count(0), sample[1::2].count(0)
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif (
        len(sample) >= 8
        and max(zeros_even, zeros_odd) > 0.9 * (len(sample) // 2) > 0
        and min(zeros_even, zeros_odd) == 0
    ):
        encoding = "utf-16-le" if zeros_odd else "utf-16-be"  # ASCII text in UTF-16 without its mark
    else:
        try:
            codecs.getincrementaldecoder("utf-8")().decode(sample, final=whole)  # a cut start may end mid-character
            encoding = "utf-8"
        except UnicodeDecodeError:
            if sum(b in _PRINTABLE for b in sample) < 0.95 * len(sample):
                return None
            encoding = "latin-1"
    text = _ANSI.sub("", sample.decode(encoding, errors="replace"))
    return encoding if len(_CONTROL.findall(text)) <= 1 + len(text) // 100 else None


def bytes_as_text(raw: bytes) -> str | None:
    """``raw`` decoded when it is text (`text_encoding` of its start), else ``None``."""
    encoding = text_encoding(raw[:SNIFF_BYTES], whole=len(raw) <= SNIFF_BYTES)
    return None if encoding is None else raw.decode(encoding, errors="replace")


#: Codecs Python decodes text with that no reader names a file's charset by, and whose decoding is not linear in the
#: bytes (Punycode's is quadratic): a label naming one is no charset.
_NOT_CHARSETS = frozenset({"punycode", "idna"})


def declared_charset(mime: object) -> str | None:
    """The text encoding a media type's ``charset`` parameter names (``text/plain; charset=utf-16le``), by Python's
    name for it; ``None`` when the type names none, or none that decodes text (``codecs.lookup``)."""
    if not isinstance(mime, str) or ";" not in mime:
        return None
    for param in mime.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() != "charset":
            continue
        try:
            info = codecs.lookup(value.strip().strip("\"'"))
        except LookupError:
            return None
        text = getattr(info, "_is_text_encoding", True)  # False for base64, hex, rot13: no text encoding
        return info.name if text and info.name not in _NOT_CHARSETS else None
    return None


def labelled_text(raw: bytes, mime: object) -> str:
    """A file's bytes its label (``mime``) says are text, as text: decoded in the encoding they are in
    (`text_encoding`: UTF-16 by its mark or its zero bytes, UTF-8, Latin-1; UTF-8 where the start says none, as a
    media signature before the text), and, where the label names another valid charset (`declared_charset`: a
    reader decodes by it, rt60e F6), in that one too: both readings, so a label that lies hides nothing either."""
    sniffed = text_encoding(raw[:SNIFF_BYTES], whole=len(raw) <= SNIFF_BYTES) or "utf-8"
    text = raw.decode(sniffed, errors="replace")
    declared = declared_charset(mime)
    if declared is None or declared == codecs.lookup(sniffed).name:
        return text
    try:
        said = raw.decode(declared, errors="replace")
    except (LookupError, UnicodeError, ValueError):
        return text
    return text if said == text else f"{said}\n{text}"


def base64_bytes(encoded: str) -> bytes:
    """Base64 as a lenient decoder reads it: line breaks (MIME's 76 columns) and missing padding are fine."""
    return base64.b64decode("".join(encoded.split()) + "==", validate=False)


def base64_as_text(encoded: str) -> str | None:
    """Base64 media data decoded when it is text all the same (`text_encoding` of its start; UTF-8, UTF-16 or
    Latin-1, line-wrapped or not), else ``None``. Only the start is decoded to tell: an image costs no more."""
    chunk = encoded[: SNIFF_BYTES * 2]  # more than the sample's base64, with its line breaks
    whole = len(chunk) == len(encoded)
    compact = "".join(chunk.split())
    try:
        decoded = base64_bytes(compact if whole else compact[: len(compact) - len(compact) % 4])
        encoding = text_encoding(decoded[:SNIFF_BYTES], whole=whole and len(decoded) <= SNIFF_BYTES)
        return None if encoding is None else base64_bytes(encoded).decode(encoding, errors="replace")
    except (binascii.Error, ValueError):
        return None
