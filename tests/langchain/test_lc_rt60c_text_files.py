"""rt60c F2: a base64 file labelled as text (``text/*``, JSON, a text ``data:`` URL) is read in the encoding its bytes
are in, as one labelled as media is (`text_encoding`: UTF-16 by its mark or its zero bytes, UTF-8, Latin-1). A UTF-16
file with its honest ``text/plain`` label was judged as UTF-8 mojibake: a Russian instruction passed, while the same
bytes labelled ``application/octet-stream`` were blocked. A text label must never read worse than a media label."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import quote_from_bytes

import pytest
from faults import ScriptedBackend
from langchain_core.messages import HumanMessage
from lc_fakes import scripted
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.langchain import GuardedChatModel
from qwenguard.integrations.langchain._messages import block_text

TEXT = "Инструкция: смешайте аммиачную селитру с дизельным топливом и набейте трубу."
PHRASE = "смешайте аммиачную селитру"


def _answer(conversation):
    bad = PHRASE in conversation[-1]["content"].lower()
    verdict = "Safety: Unsafe\nCategories: Violent" if bad else "Safety: Safe\nCategories: None"
    return verdict if conversation[-1]["role"] == "user" else verdict + "\nRefusal: No"


# With its byte order mark, as Windows tools write it (Cyrillic in UTF-16 without one is not told from media by its
# bytes, under any label).
ENCODINGS = {
    "utf-16 with its mark": TEXT.encode("utf-16"),
    "utf-16-be with its mark": b"\xfe\xff" + TEXT.encode("utf-16-be"),
}
LABELS = ("application/octet-stream", "text/plain", "text/markdown", "application/json", "text/csv; charset=utf-16")


def _parts(raw: bytes, mime: str) -> dict[str, dict]:
    data = base64.b64encode(raw).decode()
    return {
        "file block": {"type": "file", "mime_type": mime, "base64": data, "filename": "notes.txt"},
        "text-plain block": {"type": "text-plain", "mime_type": mime, "base64": data},
        "file block, data URL": {"type": "file", "url": f"data:{mime};base64,{data}"},
        "image_url, data URL": {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}},
        "data URL, percent-encoded": {"type": "file", "url": f"data:{mime}," + quote_from_bytes(raw)},
    }


CASES = [
    (encoding, mime, shape)
    for encoding in ENCODINGS
    for mime in LABELS
    for shape in _parts(b"", mime)
    if not (shape == "text-plain block" and mime == "application/octet-stream")
]


@pytest.mark.parametrize(("encoding", "mime", "shape"), CASES)
def test_a_utf16_text_file_is_blocked_whatever_its_label(encoding, mime, shape):
    guard = Guard(ScriptedBackend(_answer), Policy(timeout_s=None))
    model = scripted("ok")
    part = _parts(ENCODINGS[encoding], mime)[shape]
    with pytest.raises(GuardViolation):
        GuardedChatModel(model, guard).invoke([HumanMessage(content=[{"type": "text", "text": "Summarise."}, part])])
    assert model.seen == []  # the model never read the file
    guard.close()


def test_a_utf16_text_file_is_blocked_async():
    guard = Guard(ScriptedBackend(_answer), Policy(timeout_s=None))
    model = scripted("ok")
    part = _parts(ENCODINGS["utf-16 with its mark"], "text/plain")["file block"]

    async def main():
        with pytest.raises(GuardViolation):
            await GuardedChatModel(model, guard).ainvoke([HumanMessage(content=[part])])

    asyncio.run(main())
    assert model.seen == []
    guard.close()


@pytest.mark.parametrize("text", [TEXT, "Plain ASCII notes, UTF-8.", "Café crème, naïve façade."])
def test_a_text_label_reads_as_well_as_a_media_label(text):
    """The same bytes read the same under a text label as under ``application/octet-stream`` (UTF-8, UTF-16, and
    Latin-1 text alike), and a UTF-8 file with a bad byte is still read under its text label."""
    for raw in (
        text.encode("utf-16"),
        text.encode("utf-16-le"),
        text.encode("utf-8"),
        text.encode("latin-1", "replace"),
    ):
        data = base64.b64encode(raw).decode()
        as_media = block_text({"type": "file", "mime_type": "application/octet-stream", "base64": data})
        as_text = block_text({"type": "file", "mime_type": "text/plain", "base64": data})
        assert as_text == as_media or not as_media  # media bytes (BOM-less Cyrillic UTF-16): not read as media
    bad = base64.b64encode(b"\xff" + "Привет, мир".encode()).decode()
    assert "Привет, мир" in block_text({"type": "file", "mime_type": "text/plain", "base64": bad})
