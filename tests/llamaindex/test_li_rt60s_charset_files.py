"""rt60e F6 (LlamaIndex): a `DocumentBlock` whose type names a charset (``text/plain; charset=koi8-r``) is read in that
charset and in the encoding its bytes are sniffed in (`_file_text`): it was read by sniffing alone, so a Russian
instruction in KOI8-R or BOM-less UTF-16 passed as mojibake. The real `OpenAILike` against a scripted
OpenAI-compatible server on 127.0.0.1 (tests/scripted_openai.py): a blocked call sends it nothing."""

import asyncio
import base64
from collections.abc import Iterator

import pytest
from faults import ScriptedBackend
from li_shared import openai_like
from llama_index.core.base.llms.types import ChatMessage, DocumentBlock, TextBlock
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.llamaindex import GuardedLLM
from russian_files import TEXT, phrase_verdict
from scripted_openai import scripted_openai

CHARSETS = {"koi8_r": "koi8-r", "cp1251": "windows-1251", "utf-16-le": "utf-16le", "utf-16-be": "UTF-16BE"}


@pytest.fixture
def judge() -> Iterator[Guard]:
    guard = Guard(ScriptedBackend(phrase_verdict), Policy(timeout_s=None))
    yield guard
    guard.close()


def _ask(text: str, codec: str) -> list[ChatMessage]:
    block = DocumentBlock(
        data=text.encode(codec), document_mimetype=f"text/plain; charset={CHARSETS[codec]}", title="notes.txt"
    )
    return [ChatMessage(role="user", blocks=[TextBlock(text="Summarise the attached file."), block])]


@pytest.mark.parametrize("codec", CHARSETS)
def test_a_document_in_its_declared_charset_is_judged_before_the_model_gets_it(judge, codec):
    with scripted_openai("Here is a summary.") as url:
        llm = GuardedLLM(llm=openai_like(url), guard=judge)
        with pytest.raises(GuardViolation):
            llm.chat(_ask(TEXT, codec))
        assert url.requests == []  # the file's bytes never reached the model


def test_a_document_in_its_declared_charset_is_judged_async(judge):
    async def main() -> None:
        with scripted_openai("Here is a summary.") as url:
            llm = GuardedLLM(llm=openai_like(url), guard=judge)
            with pytest.raises(GuardViolation):
                await llm.achat(_ask(TEXT, "koi8_r"))
            assert url.requests == []

    asyncio.run(main())


def test_a_safe_document_in_its_declared_charset_still_reaches_the_model(judge):
    with scripted_openai("Here is a summary.") as url:
        llm = GuardedLLM(llm=openai_like(url), guard=judge)
        assert "summary" in str(llm.chat(_ask("Париж - столица Франции.", "koi8_r")).message.content)


@pytest.mark.parametrize("codec", ["koi8_r", "utf-16-le"])
def test_a_data_url_in_its_declared_charset_is_judged_before_the_model_gets_it(judge, codec):
    """The charset a ``data:`` URL names (``data:text/plain;charset=koi8-r;base64,...``) counts as a document's type's
    does: the URL's parameters were cut off before its bytes were read."""
    payload = base64.b64encode(TEXT.encode(codec)).decode()
    block = DocumentBlock(url=f"data:text/plain;charset={CHARSETS[codec]};base64,{payload}", title="notes.txt")
    ask = [ChatMessage(role="user", blocks=[TextBlock(text="Summarise the attached file."), block])]
    with scripted_openai("Here is a summary.") as url:
        llm = GuardedLLM(llm=openai_like(url), guard=judge)
        with pytest.raises(GuardViolation):
            llm.chat(ask)
        assert url.requests == []
