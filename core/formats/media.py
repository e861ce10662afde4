"""Bytes sent as media that are text all the same: a text file labelled ``application/octet-stream`` or given with no
type, one a framework relabels as a PDF. A provider sends the bytes and a model reads text as text, whatever the
label, so the integrations judge such bytes as text. Only the start of a file is read to tell (an image's or a
PDF's first bytes are neither UTF-8 nor mostly printable); a file whose start is not text is media.

A file travels encoded: as a ``data:`` URL (`data_url_text`), under a file block's data key (`file_data_text`:
``base64``, ``data``, ``file_data``, read by the block's label), under any key of a dict labelled text
(`labelled_file_text`: a mail API's attachment), as a bare base64 string (`base64_text`), or as a mail message's
encoded part (`mime_parts_text`). The LangChain integration reads a message's blocks and an application's payloads
by these rules, and `render_tool_call` a tool call's arguments (a tool decodes an attachment as a provider does a
block)."""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.errors
import email.header
import email.message
import email.utils
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputTooLarge
from .identifiers import is_opaque_id

__all__ = [
    "SNIFF_BYTES",
    "DATA_KEYS",
    "BASE64_ONLY",
    "text_encoding",
    "bytes_as_text",
    "declared_charset",
    "labelled_text",
    "base64_bytes",
    "base64_as_text",
    "base64_text_over",
    "base64_text",
    "text_mime",
    "block_mime",
    "is_text_media",
    "says_base64",
    "labelled_base64_text",
    "data_text",
    "file_data_text",
    "text_label",
    "labelled_file_text",
    "DataUrl",
    "data_url",
    "data_url_text",
    "without_controls",
    "names_media",
    "mime_parts_text",
]

#: How much of a file's start is read to tell text from media.
SNIFF_BYTES = 3072
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_PRINTABLE = frozenset(range(0x20, 0x7F)) | frozenset(range(0xA0, 0x100)) | {0x09, 0x0A, 0x0D}


#: How media files start (an image's, a PDF's, an archive's, audio's, video's) in bytes no text starts with: never
#: text, whatever follows (a JPEG's or a PNG's XMP metadata is text, and its start says it is an image).
_MEDIA_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG",
    b"II*\x00",  # TIFF
    b"MM\x00*",
    b"PK\x03\x04",  # ZIP, DOCX, XLSX
    b"\x1a\x45\xdf\xa3",  # Matroska, WebM
)
#: How media files start in printable letters (with an MP4's ``ftyp`` after four bytes): media where a reader opens the
#: file as such (a PDF sent labelled as one is parsed, and its bytes after ``%PDF`` are no text it shows). A text may
#: start with them too: where nothing says the file is media (a tool's argument, which the tool decodes and sends
#: whatever its bytes; a file labelled ``application/octet-stream`` or not at all) they say nothing, and what follows
#: tells (rt66b F1: "ID3 " or "%PDF-1.7" before a clause hid it).
_PRINTABLE_SIGNATURES = (
    b"GIF8",
    b"RIFF",  # WebP, WAV, AVI
    b"%PDF",
    b"ID3",  # MP3
    b"OggS",
    b"fLaC",
)
#: A terminal's colour and cursor codes: part of a text (a coloured log), not a sign of media.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def text_encoding(sample: bytes, whole: bool, *, printable_signatures: bool = True) -> str | None:
    """The encoding ``sample`` (the start of a file, or all of it with ``whole``) is text in: UTF-16 with its byte
    order mark or by its zero bytes, UTF-8, or Latin-1 when nearly every byte is printable; ``None`` for media (a
    known media signature first, `_MEDIA_SIGNATURES`, and `_PRINTABLE_SIGNATURES` unless ``printable_signatures``
    is false). One control character, and one more in every hundred, is text still (a stray NUL); a terminal's
    colour codes are not counted."""
    if not sample or sample.startswith(_MEDIA_SIGNATURES):
        return None
    if printable_signatures and (sample.startswith(_PRINTABLE_SIGNATURES) or sample[4:12].startswith(b"ftyp")):
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


#: The control characters `text_encoding` counts (`_CONTROL`), as bytes.
_CONTROL_BYTES = bytes([*range(0x09), 0x0B, *range(0x0E, 0x20), 0x7F])


def without_controls(raw: bytes) -> bytes:
    """``raw`` with its control characters dropped (`_CONTROL_BYTES`): the text a reader shows of a file that holds
    them, read so where a label or a key says it is a file (rt66b F1: three before a note passed a short text's
    budget of one, and the file was judged as media, not at all, while the tool that decoded it sent the note)."""
    return raw.translate(None, _CONTROL_BYTES)


def _controls_stripped(raw: bytes) -> bytes:
    """``raw`` without the control characters it starts or ends with (`without_controls`): what a bare string's
    bytes show (`base64_text`) where those within are counted still, as a binary format's bytes hold them throughout
    (a protobuf's lengths, a signature's bytes after a JWT's header)."""
    return raw.strip(_CONTROL_BYTES)


def base64_text_over(encoded: str, budget: int | None) -> InputTooLarge | None:
    """`InputTooLarge` when base64 ``encoded`` holds more bytes than a text of ``budget`` characters can (four a
    character at most), known from its length alone (blanks aside; every other character counted as a letter), so
    bytes that are text are not decoded whole only to be refused (rt71 BC: 10 MB of it was); else ``None``."""
    if budget is None:
        return None
    letters = len(encoded) - sum(encoded.count(blank) for blank in " \t\r\n")
    size = letters * 3 // 4
    return (
        InputTooLarge(f"inline data of {size:,} bytes: text over {budget:,} characters") if size > 4 * budget else None
    )


def _raise_over(encoded: str, budget: int | None) -> None:
    if (over := base64_text_over(encoded, budget)) is not None:
        raise over


def base64_as_text(
    encoded: str, *, labelled_media: bool = True, drop_controls: bool = False, budget: int | None = None
) -> str | None:
    """Base64 media data decoded when it is text all the same (`text_encoding` of its start; UTF-8, UTF-16 or
    Latin-1, line-wrapped or not), else ``None``. Only the start is decoded to tell: an image costs no more. A
    printable signature (`_PRINTABLE_SIGNATURES`) says media only for a file ``labelled_media``. With
    ``drop_controls`` (a file in a tool's argument: the tool decodes it whatever its bytes), bytes that are text
    once their control characters are dropped (`without_controls`) are read so too. ``budget``: `InputTooLarge`
    instead of decoding text too long for it whole (`base64_text_over`)."""
    chunk = encoded[: SNIFF_BYTES * 2]  # more than the sample's base64, with its line breaks
    whole = len(chunk) == len(encoded)
    compact = "".join(chunk.split())
    try:
        decoded = base64_bytes(compact if whole else compact[: len(compact) - len(compact) % 4])
        sample, whole = decoded[:SNIFF_BYTES], whole and len(decoded) <= SNIFF_BYTES
        encoding = text_encoding(sample, whole, printable_signatures=labelled_media)
        if encoding is not None:
            _raise_over(encoded, budget)
            return base64_bytes(encoded).decode(encoding, errors="replace")
        if not drop_controls:
            return None
        encoding = text_encoding(without_controls(sample), whole, printable_signatures=labelled_media)
        if encoding is None:
            return None
        _raise_over(encoded, budget)
        return without_controls(base64_bytes(encoded)).decode(encoding, errors="replace")
    except InputTooLarge:
        raise  # a ValueError too, but no bad base64
    except (binascii.Error, ValueError):
        return None


def names_media(mime: Any) -> bool:
    """Does a label name a media type a reader opens as such (``application/pdf``, ``image/gif``), rather than none,
    text, or bytes of any kind (``application/octet-stream``)?"""
    if not isinstance(mime, str):
        return False
    kind = mime.split(";")[0].strip().lower()
    return bool(kind) and kind not in _ANY_BYTES and not text_mime(kind)


#: Labels that name no format: bytes of any kind.
_ANY_BYTES = frozenset({"application/octet-stream", "binary/octet-stream", "application/binary", "application/unknown"})


#: Fewest letters of a bare string read as base64 (9 bytes): shorter, it is a word more often than a file.
_LEAST_BARE_BASE64 = 12
#: What is no letter of base64, padding aside: a lenient decoder (Python's ``b64decode``) drops it wherever it is.
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]+")
#: The URL-safe alphabet's letters as the standard one's (Gmail's ``raw`` message): ``urlsafe_b64decode`` reads both.
_URL_SAFE = str.maketrans("-_", "+/")
#: The least share of a string's characters (blanks aside) that must be base64 letters for it to be read as a
#: lenient decoder reads it (rt66b F3: one ``.``, ``|`` or ``-`` between groups of eight hid a clause from a reading
#: of tokens alone). Below it, a string is no base64 a tool takes (a sentence, a path, a list).
_LEAST_LETTER_SHARE = 0.75
#: Fewest letters of base64 read where more than blanks is dropped between them (12 bytes): an identifier's words
#: (``CERT_REQUIRED``, ``CAN_RAW_FILTER``) are letters of 12 or 14 between underscores.
_LEAST_SEPARATED_BASE64 = 16
#: ASCII blanks: a lenient decoder skips them anywhere in base64 (Python's ``b64decode``, a browser's ``atob``, Node's
#: ``Buffer``), as MIME's line breaks.
_BLANKS = re.compile(r"[ \t\n\r\f\v]+")
#: Printable ASCII and a text's blanks (`base64_text`'s Latin-1 reading).
_ASCII_TEXT = bytes(range(0x20, 0x7F)) + b"\t\n\r"
#: The share of a bare string's bytes that must be printable ASCII for it to be read as Latin-1 text: a text in a
#: Western language has an accented letter here and there, random bytes (a token, a key) a third in ASCII's range.
_LEAST_ASCII_SHARE = 0.9


def _base64_readings(value: str) -> list[tuple[bytes, bool]]:
    """The bytes a lenient decoder reads a string as, in each alphabet (``b64decode``, and ``urlsafe_b64decode`` where
    it holds ``-`` or ``_``): its letters (what is not one dropped, rt66b F3; blanks, rt65j F2) at least
    `_LEAST_LETTER_SHARE` of it, up to its padding (where Python's decoder stops), 12 at least
    (`_LEAST_SEPARATED_BASE64` where more than blanks was dropped) and not an id (`is_opaque_id`: a digest, digits,
    blanks or not); each with whether more than blanks was dropped. Empty for any other string."""
    compact = _BLANKS.sub("", value)
    if len(compact) < _LEAST_BARE_BASE64 or is_opaque_id(compact):
        return []
    alphabets = (compact, compact.translate(_URL_SAFE)) if "-" in compact or "_" in compact else (compact,)
    readings: list[tuple[bytes, bool]] = []
    for written in alphabets:
        letters = _NOT_BASE64.sub("", written)
        if len(letters) < _LEAST_LETTER_SHARE * len(compact):
            continue
        letters = letters.split("=", 1)[0]
        if len(letters) < _LEAST_BARE_BASE64 or len(letters) % 4 == 1:
            continue
        separated = len(letters) < len(compact.rstrip("="))
        if separated and (len(letters) < _LEAST_SEPARATED_BASE64 or is_opaque_id(letters)):  # a UUID, dashes dropped
            continue
        try:
            readings.append((base64.b64decode(letters + "=="), separated))
        except (binascii.Error, ValueError):
            continue
    return readings


def _bare_text(raw: bytes) -> str | None:
    """Bytes read from a bare string (`base64_text`) decoded when they are text by its strict rule; else ``None``."""
    sample, whole = raw[:SNIFF_BYTES], len(raw) <= SNIFF_BYTES
    mostly_ascii = len(sample.translate(None, _ASCII_TEXT)) <= (1 - _LEAST_ASCII_SHARE) * len(sample)
    if not mostly_ascii and 0 not in sample and not sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        # Only UTF-8 may read it now: random bytes (a token, a key) fail here at once, before `text_encoding`'s count.
        try:
            codecs.getincrementaldecoder("utf-8")().decode(sample, final=whole)
        except UnicodeDecodeError:
            return None
    encoding = text_encoding(sample, whole=whole, printable_signatures=False)  # a tool sends it whatever its start
    if encoding is None or (encoding == "latin-1" and not mostly_ascii):
        return None
    return raw.decode(encoding, errors="replace")


def base64_text(value: str) -> str | None:
    """A string that is the base64 of a text (an attachment's content a tool decodes), decoded; ``None`` for any
    other. Stricter than a file's data (`base64_as_text`, which a key or a label says is encoded): base64 as a
    lenient decoder reads it (`_base64_readings`: what is no letter dropped, rt65j F2, rt66b F3), 12 letters at
    least, not an id, and bytes that are UTF-8 or UTF-16 text (`text_encoding`), or Latin-1 text that is nearly all
    ASCII (`_LEAST_ASCII_SHARE`, rt65j F3: one accented letter hid a clause) rather than the Latin-1 guess a file's
    bytes get: three bytes of four in random data are printable Latin-1, so a quarter of four-letter words would pass
    it ("search" is the base64 of "±æ«r"). Bytes that are such text once their control characters are dropped
    (`_controls_dropped_text`, rt66b F1) are read so; letters with more than blanks between them only as UTF-8
    (`_separated_text`). Each alphabet's reading that is text is read."""
    texts = [
        text
        for raw, separated in _base64_readings(value)
        if (text := _separated_text(raw) if separated else _bare_text(raw) or _controls_dropped_text(raw))
    ]
    return "\n".join(texts) if texts else None


#: Fewest bytes of a bare string's text for each control character within it that is dropped (`_controls_dropped`):
#: a NUL in every line of a note is; a binary format's lengths and numbers (a protobuf's) are more often than that.
_BYTES_PER_CONTROL = 32


def _controls_dropped_text(raw: bytes) -> str | None:
    """Bytes read from a bare string (`base64_text`) that hold control characters, as the text they are without
    them: those they start or end with (`_controls_stripped`), and those within when they are few
    (`_BYTES_PER_CONTROL`); ``None`` when that leaves no text, or leaves ``raw`` as it is."""
    if len(without_controls(raw)) == len(raw):
        return None
    kept = _controls_stripped(raw)
    within = len(kept) - len(without_controls(kept))
    if within * _BYTES_PER_CONTROL > len(kept):
        return None
    kept = without_controls(kept)
    return None if kept == raw else _bare_text(kept)


def _separated_text(raw: bytes) -> str | None:
    """Bytes read from letters with more than blanks between them (`base64_text`) decoded when they are UTF-8 of
    printable characters and blanks alone, else ``None``: the words and tokens such a string may be (a JWT's parts
    between dots, read as one: its header's JSON and its signature's bytes) are not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.translate(_TEXT_BLANKS).isprintable() else None


#: A text's blanks, which `str.isprintable` does not count as printable (`_separated_text`).
_TEXT_BLANKS = str.maketrans("\t\n\r", "   ")


#: Keys whose value is a file's data in a block: text only when the block says its media is text, or its bytes are.
DATA_KEYS = frozenset({"base64", "data", "file_data"})
#: Base64 letters, padding and blanks, and nothing else.
BASE64_ONLY = re.compile(r"[A-Za-z0-9+/=\s]*")
#: Media types whose bytes are text a model reads (a JSON, XML or YAML file is as readable as a text one).
_TEXT_MEDIA = ("text/", "application/json", "application/xml", "application/x-yaml", "application/yaml")


def text_mime(mime: Any) -> bool:
    """Does a media type (``text/plain; charset=utf-8``, ``application/ld+json``) name text (`_TEXT_MEDIA`)?"""
    if not isinstance(mime, str):
        return False
    kind = mime.split(";")[0].strip().lower()
    return kind.startswith(_TEXT_MEDIA) or kind.endswith(("+json", "+xml"))


def block_mime(block: Mapping[str, Any]) -> Any:
    """A block's media type, under any key a provider class reads it by."""
    # ChatBedrockConverse camel-cases a block's keys and reads ``mimeType`` (a client may write it so).
    return block.get("mime_type") or block.get("media_type") or block.get("mimeType") or block.get("mediaType")


def is_text_media(block: Mapping[str, Any]) -> bool:
    """Does a block say its media is text (a ``text-plain`` block, a text media type)?"""
    return block.get("type") == "text-plain" or text_mime(block_mime(block))


def labelled_base64_text(value: str, mime: Any = None) -> str:
    """Base64 of a file labelled as text (``mime``), decoded in the encoding its bytes are in (`text_encoding`:
    UTF-16 by its mark or its zero bytes, UTF-8, Latin-1), as a file labelled as media is read: a text label never
    reads worse (rt60c F2: a UTF-16 file labelled ``text/plain`` was judged as UTF-8 mojibake); and in the charset
    its label names too (`labelled_text`, rt60e F6: ``charset=utf-16le`` or ``windows-1251`` text read as mojibake)."""
    try:
        raw = base64_bytes(value)  # unpadded too, as a lenient decoder reads it
    except (binascii.Error, ValueError):
        return value  # not base64 after all: judge the string itself rather than nothing
    return labelled_text(raw, mime)


def says_base64(block: Mapping[str, Any]) -> bool:
    """Does a block say its ``data`` is base64, in any way a provider class reads it: a ``base64`` key at all (empty
    too: ChatBedrockConverse decodes ``block.get("base64") or block.get("data")``), or ``"base64"`` as its ``type``
    (Anthropic's source), ``source_type`` (LangChain's v0 data blocks) or ``sourceType`` (their camelCase form)?"""
    return "base64" in block or "base64" in (block.get("type"), block.get("source_type"), block.get("sourceType"))


def data_text(value: str, block: Mapping[str, Any]) -> str:
    """Text media's ``data`` as any provider class could send it, every reading judged (classes differ on which):
    its decoding when the block says base64 (`says_base64`; decoded leniently, as Python's decoder skips what is not
    base64) or when it is base64 of text all the same, and the string as it is unless it is the base64 its block
    says it is (Anthropic's ``"type": "text"`` source holds plain text in ``data``)."""
    said = says_base64(block)
    pure = BASE64_ONLY.fullmatch(value) is not None
    mime = block_mime(block)
    # A charset the label names reads the bytes its way: base64 of text in it is not text to a sniffer.
    decoded = labelled_base64_text(value, mime) if said or (pure and declared_charset(mime)) else None
    decoded = decoded or (base64_as_text(value) if pure else None)
    plain = None if said and pure else value
    return "\n".join(r for r in (plain, decoded) if r)


def file_data_text(value: str, block: Mapping[str, Any] | None, key: str) -> str | None:
    """The text of a file's data under a data key (`DATA_KEYS`) of ``block``: decoded by the block's text label
    (``base64`` is always encoded; ``data`` may be either: `data_text`), or media bytes that are text all the same
    (`base64_as_text`); ``None`` for media."""
    if block is None or not is_text_media(block):
        return base64_as_text(value, labelled_media=block is not None and names_media(block_mime(block)))
    return data_text(value, block) if key == "data" else labelled_base64_text(value, block_mime(block))


#: Keys a dict's media type is under, as `_key_word` writes them: a block's, and a mail API's attachment's (SendGrid's
#: ``type``, Microsoft Graph's ``contentType``, Postmark's ``ContentType``, Resend's ``content_type``).
_MEDIA_TYPE_WORDS = frozenset({"mimetype", "mediatype", "contenttype", "type"})
#: Keys a dict names, labels or describes its file by (`_key_word`): never the file, whatever letters they hold.
_LABEL_WORDS = _MEDIA_TYPE_WORDS | {
    "sourcetype",
    "encoding",
    "charset",
    "filename",
    "name",
    "title",
    "description",
    "id",
    "contentid",
    "cid",
    "path",
    "filepath",
    "url",
    "uri",
    "disposition",
    "contentdisposition",
    "odatatype",
}


def _key_word(key: Any) -> str:
    """A key as one lower-case word (``content_type``, ``contentType``, ``Content-Type``: ``contenttype``); empty for
    a key longer than any such word."""
    if not isinstance(key, str) or len(key) > 32:
        return ""
    return "".join(c for c in key.lower() if c.isalnum())


def text_label(block: Mapping[Any, Any]) -> str | None:
    """The text media type (`text_mime`) a dict says its file is, under any key a block or a mail API's attachment
    names it by (`_MEDIA_TYPE_WORDS`); ``text/plain`` for a ``text-plain`` block; ``None`` where it says none."""
    if block.get("type") == "text-plain":
        return "text/plain"
    for key, value in block.items():
        if _key_word(key) in _MEDIA_TYPE_WORDS and text_mime(value):
            return str(value)
    return None


def labelled_file_text(value: str, key: Any, mime: str) -> str | None:
    """The text a string under ``key`` of a dict labelled ``mime`` (`text_label`) holds as that file: its base64
    (`_base64_readings`) where its bytes are text in any encoding a labelled file's are (`text_encoding`: Latin-1
    too), decoded as `labelled_text` reads them (the label's charset too), their control characters dropped where
    only that leaves text (`without_controls`, rt66b F1). rt65j F3: a mail API's ``{"mime_type": "text/plain",
    "content_base64": ...}`` keeps its file under a key of its own. ``None`` for a key that names or labels the file
    (`_LABEL_WORDS`: its name, its type) and for any string that is no base64 of text."""
    if _key_word(key) in _LABEL_WORDS:
        return None
    texts = []
    for raw, _ in _base64_readings(value):
        for read in (raw, without_controls(raw)):
            if text_encoding(read[:SNIFF_BYTES], len(read) <= SNIFF_BYTES, printable_signatures=False) is not None:
                texts.append(labelled_text(read, mime))
                break
    return "\n".join(texts) if texts else None


@dataclass(frozen=True)
class DataUrl:
    """A ``data:`` URL's parts (`data_url`)."""

    mime: str  # its media type, lower case
    head: str  # its type and parameters as written: a charset too
    base64: bool
    body: str  # what follows the comma: percent-decoded when it is base64


#: What ``urllib.parse.unwrap`` cuts off before a URL: blanks, a ``<`` (with its ``>`` at the end), ``URL:``.
_URL_WRAPPER = re.compile(r"\s*(<\s*)?(?:URL:\s*)?")


def data_url(value: str) -> DataUrl | None:
    """The parts of a ``data:`` URL as Python's ``urllib.request.urlopen`` opens one (scheme and parameters in any
    case, spaces around them): blanks around it and a ``<URL:...>`` wrapper cut off (`urllib.parse.unwrap`), and a
    base64 body percent-decoded before it is decoded (``DataHandler``: a URL may quote its ``+``, ``/`` and ``=``).
    rt63h F2: a percent-encoded base64 body, or a newline before ``data:``, was judged as its base64 while a tool that
    opened it sent the text. ``None`` for any other string."""
    wrapper = _URL_WRAPPER.match(value)
    start = wrapper.end() if wrapper is not None else 0  # it matches every string
    if value[start : start + 5].lower() != "data:":
        return None
    # The first comma wherever it is, as ``urlopen`` splits the URL (rt66b F5: parameters of 4,100 characters hid
    # the URL from a search of its first 4,096); one linear search, once for each string.
    comma = value.find(",", start + 5)
    if comma < 0:
        return None
    head = value[start + 5 : comma]
    params = [p.strip().lower() for p in head.split(";")]
    encoded = "base64" in params[1:]
    body = value[comma + 1 :].rstrip()
    if wrapper is not None and wrapper.group(1):  # "<...>": read within it; a "<" left open is no URL to urlopen
        if not body.endswith(">"):
            return None
        body = body[:-1].rstrip()
    return DataUrl(params[0], head, encoded, urllib.parse.unquote(body) if encoded else body)


def data_url_text(value: str) -> str | None:
    """The text of a ``data:`` URL: its body with a text type (`text_mime`) or when it is not base64 (text on
    the wire, percent-decoded as a reader would), or base64 media data that is text (`base64_as_text`); ``None``
    for media or when ``value`` is no data URL."""
    parsed = data_url(value)
    if parsed is None:
        return None
    if not parsed.base64:
        # percent-encoded bytes: UTF-16 ones too
        return labelled_text(urllib.parse.unquote_to_bytes(parsed.body), parsed.head)
    if text_mime(parsed.mime):
        return labelled_base64_text(parsed.body, parsed.head)
    return base64_as_text(parsed.body, labelled_media=names_media(parsed.mime))


#: The Content-Transfer-Encodings Python's ``email`` package decodes (``get_payload(decode=True)``), as a mail client
#: does: base64, quoted-printable and uuencode by each of its names (rt66q F1: an ``x-uuencode`` part was not read).
_DECODED_ENCODINGS = ("base64", "quoted-printable", "x-uuencode", "uuencode", "x-uue", "uue")
#: What says a mail message holds encoded text (`mime_parts_text`): a part's body in one of `_DECODED_ENCODINGS`, a
#: header's encoded word (RFC 2047's ``=?utf-8?b?...?=``), or a parameter's encoded value (RFC 2231's
#: ``filename*=utf-8''%4D...``). A message of plain parts is read as written.
_MIME_ENCODED = re.compile(
    rf"(?im)^content-transfer-encoding:[ \t]*(?:{'|'.join(_DECODED_ENCODINGS)})\b|=\?[^?\s]+\?[bq]\?|;\s*[\w.-]+\*(?:\d+\*?)?="
)
#: Most parts of a mail message read (`mime_parts_text`); past them the call is refused, not judged as written.
MIME_MAX_PARTS = 256


def mime_parts_text(value: str) -> str | None:
    """The text an RFC 2822 / MIME message (a mail tool's raw message, rt66b F2) shows its reader, where it is
    encoded (`_MIME_ENCODED`): each part's body decoded as Python's ``email`` package decodes it (by its
    Content-Transfer-Encoding, as a mail client does), a text part as its label reads it (`labelled_text`), any other
    when it is text (`bytes_as_text`, control characters dropped where only that leaves text), each header's encoded
    words, and each parameter's encoded value (`_encoded_params_text`: an attachment's name). ``None`` when it holds
    none; `InputTooLarge` past `MIME_MAX_PARTS` parts or nesting the parser cannot follow."""
    if _MIME_ENCODED.search(value) is None:
        return None
    texts: list[str] = []
    try:
        for count, part in enumerate(email.message_from_string(value).walk()):
            if count >= MIME_MAX_PARTS:
                raise InputTooLarge(f"a mail message of more than {MIME_MAX_PARTS} parts (MIME_MAX_PARTS)")
            texts.extend(_header_text(v) for v in part.values() if isinstance(v, str) and "=?" in v)
            texts.extend(_encoded_params_text(part))
            encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
            if part.is_multipart() or encoding not in _DECODED_ENCODINGS:
                continue
            raw = part.get_payload(decode=True)
            if not isinstance(raw, bytes):
                continue
            if text_mime(part.get_content_type()):
                texts.append(labelled_text(raw, part.get("Content-Type")))
            else:
                texts.append(bytes_as_text(raw) or bytes_as_text(without_controls(raw)) or "")
    except RecursionError:
        raise InputTooLarge("a mail message nested deeper than its parser reads") from None
    read = "\n".join(t for t in texts if t)
    return read or None


def _encoded_params_text(part: email.message.Message) -> list[str]:
    """A part's RFC 2231 parameters (``filename*=utf-8''%4D...``, ``name*0*=...``) as a mail client shows them
    (``get_filename``), ``name=value``; those written plainly are read as written (rt66q F2)."""
    texts: list[str] = []
    for header in ("Content-Type", "Content-Disposition"):
        if "*=" not in str(part.get(header, "")):
            continue
        for name, param in part.get_params([], header=header)[1:]:
            if isinstance(param, tuple):  # RFC 2231: (charset, language, value)
                try:
                    texts.append(f"{name}={email.utils.collapse_rfc2231_value(param)}")
                except (LookupError, UnicodeError):
                    continue
    return texts


def _header_text(value: str) -> str:
    """A header's encoded words decoded (``=?utf-8?b?...?=``), as a mail client shows them; "" when none decodes."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return ""
