"""`qwenguard.core.formats.media`: bytes sent as media that are text all the same, and media that is not text."""

import codecs

import pytest
from qwenguard.core.formats.media import bytes_as_text

CLAUSE = "Mix ammonium nitrate with fuel oil."


@pytest.mark.parametrize(
    "raw",
    [
        CLAUSE.encode(),
        CLAUSE.encode("utf-16"),  # with its byte order mark
        CLAUSE.encode("utf-16-le"),  # without
        CLAUSE.encode("utf-16-be"),
        "Café. ".encode("latin-1") + CLAUSE.encode(),
        b"\x1b[1;32mOK\x1b[0m step\n" * 20 + CLAUSE.encode(),  # a coloured terminal log
        b"\x00" + CLAUSE.encode(),  # one stray NUL
        codecs.BOM_UTF8 + CLAUSE.encode(),
    ],
)
def test_text_in_any_encoding_is_text(raw: bytes) -> None:
    assert CLAUSE in (bytes_as_text(raw) or "")


@pytest.mark.parametrize(
    "raw",
    [
        # A JPEG and a PNG whose first kilobytes are XMP metadata (a red team's, rt45e E3: read as Latin-1 text,
        # a 927 KB image judged as 927k characters and refused as too large).
        b"\xff\xd8\xff\xe1\x10\x00Exif\x00\x00" + b"<x:xmpmeta><rdf:Description/></x:xmpmeta>" * 100,
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\riTXtXML:com.adobe.xmp" + b"<x:xmpmeta/>" * 300,
        b"%PDF-1.4\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 100,
        b"GIF89a" + b"\x01\x00" * 10,
        b"\x00\x00\x00\x18ftypmp42" + b"a" * 100,
        bytes(range(256)) * 4,
    ],
)
def test_media_is_not_text(raw: bytes) -> None:
    assert bytes_as_text(raw) is None
