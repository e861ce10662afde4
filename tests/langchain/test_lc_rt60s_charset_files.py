"""rt60e F6: a file labelled as text with a charset (``text/plain; charset=utf-16le``, ``windows-1251``, ``koi8-r``)
is read in that charset, and in the encoding its bytes are sniffed in too (a label that lies hides nothing). The
bytes were decoded by sniffing alone: BOM-less UTF-16 in a non-Latin script and the legacy code pages read as
mojibake, and a Russian instruction in a file whose label says how to read it reached the model unjudged
(`GuardedChatModel.invoke`: the model got the file). Judge: deterministic, flags the Russian phrase."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from urllib.parse import quote_from_bytes

import pytest
from faults import ScriptedBackend
from langchain_core.messages import HumanMessage
from lc_fakes import scripted
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.langchain import GuardedChatModel
from russian_files import TEXT, phrase_verdict

SAFE = "Париж - столица Франции. Это короткая справка о городе."


@pytest.fixture
def judge() -> Iterator[Guard]:
    guard = Guard(ScriptedBackend(phrase_verdict), Policy(timeout_s=None))
    yield guard
    guard.close()


CHARSETS = {  # Python's codec: the label a client writes
    "utf-16-le": "text/plain; charset=utf-16le",
    "utf-16-be": "text/plain; charset=UTF-16BE",
    "cp1251": "text/plain; charset=windows-1251",
    "koi8_r": "text/plain; charset=koi8-r",
    "cp866": 'text/csv; charset="cp866"',
}


def _parts(raw: bytes, mime: str) -> dict[str, dict]:
    data = base64.b64encode(raw).decode()
    url_type = mime.replace(" ", "").replace('"', "")
    return {
        "file block": {"type": "file", "mime_type": mime, "base64": data, "filename": "notes.txt"},
        "file block, data": {"type": "file", "mime_type": mime, "data": data, "source_type": "base64"},
        "data URL": {"type": "file", "url": f"data:{url_type};base64,{data}"},
        "data URL, percent-encoded": {"type": "file", "url": f"data:{url_type}," + quote_from_bytes(raw)},
    }


def _ask(part: dict) -> list[HumanMessage]:
    return [HumanMessage(content=[{"type": "text", "text": "Summarise the attached file."}, part])]


CASES = [(codec, shape) for codec in CHARSETS for shape in _parts(b"", "text/plain")]


@pytest.mark.parametrize(("codec", "shape"), CASES)
def test_a_text_file_in_its_declared_charset_is_judged_before_the_model_gets_it(judge, codec, shape):
    model = scripted("ok")
    part = _parts(TEXT.encode(codec), CHARSETS[codec])[shape]
    with pytest.raises(GuardViolation):
        GuardedChatModel(model, judge).invoke(_ask(part))
    assert model.seen == []


def test_a_text_file_in_its_declared_charset_is_judged_async(judge):
    model = scripted("ok")
    part = _parts(TEXT.encode("koi8_r"), CHARSETS["koi8_r"])["file block"]

    async def main() -> None:
        with pytest.raises(GuardViolation):
            await GuardedChatModel(model, judge).ainvoke(_ask(part))

    asyncio.run(main())
    assert model.seen == []


@pytest.mark.parametrize("label", ["text/plain; charset=koi8-r", "text/plain; charset=utf-16le"])
def test_a_label_that_lies_hides_nothing_its_bytes_show(judge, label):
    """UTF-8 bytes under another charset: the bytes' own reading is judged too."""
    model = scripted("ok")
    with pytest.raises(GuardViolation):
        GuardedChatModel(model, judge).invoke(_ask(_parts(TEXT.encode(), label)["file block"]))
    assert model.seen == []


@pytest.mark.parametrize("label", ["text/plain; charset=no-such-charset", "text/plain; charset=base64"])
def test_a_charset_that_is_none_falls_back_to_the_bytes(judge, label):
    model = scripted("ok")
    with pytest.raises(GuardViolation):
        GuardedChatModel(model, judge).invoke(_ask(_parts(TEXT.encode(), label)["file block"]))


@pytest.mark.parametrize("codec", CHARSETS)
def test_a_safe_file_in_its_declared_charset_reaches_the_model(judge, codec):
    model = scripted("ok")
    part = _parts(SAFE.encode(codec), CHARSETS[codec])["file block"]
    assert GuardedChatModel(model, judge).invoke(_ask(part)).content == "ok"
    assert len(model.seen) == 1
