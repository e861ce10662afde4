"""Bytes sent as media that are text all the same: a text file labelled ``application/octet-stream`` or given with no
type, one a framework relabels as a PDF. A provider sends the bytes and a model reads text as text, whatever the
label, so the integrations judge such bytes as text. Only the start of a file is read to tell (an image's or a
PDF's first bytes are neither UTF-8 nor mostly printable); a file whose start is not text is media.

A file travels encoded: as a ``data:`` URL (`data_url_text`), under a file block's data key (`file_data_text`:
``base64``, ``data``, ``file_data``, read by the block's label), under any key of a dict labelled text
(`labelled_file_text`: a mail API's attachment), or as a bare base64 string (`base64_text`). The
LangChain integration reads a message's blocks and an application's payloads by these rules, and `render_tool_call`
a tool call's arguments (a tool decodes an attachment as a provider does a block)."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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


#: Fewest characters of a bare string read as base64 (9 bytes): shorter, it is a word more often than a file.
_LEAST_BARE_BASE64 = 12
#: One base64 token in either alphabet (standard, or URL-safe as Gmail's ``raw`` message is), its padding at its end.
_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/]+={0,2}|[A-Za-z0-9_-]+={0,2}")
#: ASCII blanks: a lenient decoder skips them anywhere in base64 (Python's ``b64decode``, a browser's ``atob``, Node's
#: ``Buffer``), as MIME's line breaks.
_BLANKS = re.compile(r"[ \t\n\r\f\v]+")
#: Printable ASCII and a text's blanks (`base64_text`'s Latin-1 reading).
_ASCII_TEXT = bytes(range(0x20, 0x7F)) + b"\t\n\r"
#: The share of a bare string's bytes that must be printable ASCII for it to be read as Latin-1 text: a text in a
#: Western language has an accented letter here and there, random bytes (a token, a key) a third in ASCII's range.
_LEAST_ASCII_SHARE = 0.9


def _base64_token(value: str) -> bytes | None:
    """The bytes of a string that is one base64 token and nothing else (blanks aside, padded or not, either alphabet),
    12 characters at least and not an id (`is_opaque_id`: a digest, digits, blanks or not); ``None`` for any other."""
    compact = _BLANKS.sub("", value)
    letters = len(compact.rstrip("="))
    if letters < _LEAST_BARE_BASE64 or letters % 4 == 1 or _BASE64_TOKEN.fullmatch(compact) is None:
        return None
    if is_opaque_id(compact):
        return None
    url_safe = "-" in compact or "_" in compact
    try:
        return base64.b64decode(compact.rstrip("=") + "==", altchars=b"-_" if url_safe else None)
    except (binascii.Error, ValueError):
        return None


def base64_text(value: str) -> str | None:
    """A string that is the base64 of a text and nothing else (an attachment's content a tool decodes), decoded;
    ``None`` for any other. Stricter than a file's data (`base64_as_text`, which a key or a label says is encoded):
    one base64 token (`_base64_token`: blanks aside, as a lenient decoder skips them, rt65j F2), 12 characters at
    least, not an id, and bytes that are UTF-8 or UTF-16 text (`text_encoding`), or Latin-1 text that is nearly all
    ASCII (`_LEAST_ASCII_SHARE`, rt65j F3: one accented letter hid a clause) rather than the Latin-1 guess a file's
    bytes get: three bytes of four in random data are printable Latin-1, so a quarter of four-letter words would pass
    it ("search" is the base64 of "±æ«r")."""
    raw = _base64_token(value)
    if raw is None:
        return None
    sample, whole = raw[:SNIFF_BYTES], len(raw) <= SNIFF_BYTES
    mostly_ascii = len(sample.translate(None, _ASCII_TEXT)) <= (1 - _LEAST_ASCII_SHARE) * len(sample)
    if not mostly_ascii and 0 not in sample and not sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        # Only UTF-8 may read it now: random bytes (a token, a key) fail here at once, before `text_encoding`'s count.
        try:
            codecs.getincrementaldecoder("utf-8")().decode(sample, final=whole)
        except UnicodeDecodeError:
            return None
    encoding = text_encoding(sample, whole=whole)
    if encoding is None or (encoding == "latin-1" and not mostly_ascii):
        return None
    return raw.decode(encoding, errors="replace")


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
        return base64_as_text(value)
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
    (`_base64_token`) where its bytes are text in any encoding a labelled file's are (`text_encoding`: Latin-1 too),
    decoded as `labelled_text` reads them (the label's charset too). rt65j F3: a mail API's ``{"mime_type":
    "text/plain", "content_base64": ...}`` keeps its file under a key of its own. ``None`` for a key that names or
    labels the file (`_LABEL_WORDS`: its name, its type) and for any string that is no base64 of text."""
    if _key_word(key) in _LABEL_WORDS:
        return None
    raw = _base64_token(value)
    if raw is None or text_encoding(raw[:SNIFF_BYTES], whole=len(raw) <= SNIFF_BYTES) is None:
        return None
    return labelled_text(raw, mime)


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
    comma = value.find(",", start + 5, start + 4096)
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
    return base64_as_text(parsed.body)
