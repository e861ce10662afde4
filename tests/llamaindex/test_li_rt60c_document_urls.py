"""rt60c F3: a `DocumentBlock` given as a ``data:`` URL is inline data (LlamaIndex decodes it locally, the OpenAI
classes send its bytes as a file part), so its text is judged like ``data=``'s. The real `OpenAILike` against a
scripted OpenAI-compatible server on 127.0.0.1 (tests/scripted_openai.py): a blocked call sends it nothing."""

import asyncio
import base64
from urllib.parse import quote

import pytest
from li_scripted import UNSAFE_CLAUSE
from li_shared import openai_like
from llama_index.core.base.llms.types import ChatMessage, DocumentBlock, TextBlock
from qwenguard.core import GuardViolation
from qwenguard.integrations.llamaindex import GuardedLLM
from qwenguard.integrations.llamaindex._messages import block_text
from scripted_openai import scripted_openai


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


DATA_URLS = {
    "text/plain base64": "data:text/plain;base64," + _b64(UNSAFE_CLAUSE.encode()),
    "UTF-16 with its mark": "data:text/plain;base64," + _b64(UNSAFE_CLAUSE.encode("utf-16")),
    "octet-stream, text all the same": "data:application/octet-stream;base64," + _b64(UNSAFE_CLAUSE.encode()),
    "percent-encoded": "data:text/plain," + quote(UNSAFE_CLAUSE),
}


def _ask(url: str) -> list[ChatMessage]:
    block = DocumentBlock(url=url, document_mimetype="text/plain", title="notes.txt")
    return [ChatMessage(role="user", blocks=[TextBlock(text="Summarise the attached file."), block])]


@pytest.mark.parametrize("name", DATA_URLS)
def test_a_document_as_a_data_url_is_judged_before_the_model_gets_it(patient_guard, name):
    with scripted_openai("Here is a summary.") as url:
        llm = GuardedLLM(llm=openai_like(url), guard=patient_guard)
        with pytest.raises(GuardViolation):
            llm.chat(_ask(DATA_URLS[name]))
        assert url.requests == []  # the file's bytes never reached the model


def test_a_document_as_a_data_url_is_judged_async(patient_guard):
    async def main():
        with scripted_openai("Here is a summary.") as url:
            llm = GuardedLLM(llm=openai_like(url), guard=patient_guard)
            with pytest.raises(GuardViolation):
                await llm.achat(_ask(DATA_URLS["text/plain base64"]))
            assert url.requests == []

    asyncio.run(main())


def test_a_safe_document_data_url_still_reaches_the_model(patient_guard):
    safe = "data:text/plain;base64," + _b64(b"Paris is the capital of France.")
    with scripted_openai("Here is a summary.") as url:
        llm = GuardedLLM(llm=openai_like(url), guard=patient_guard)
        assert "summary" in str(llm.chat(_ask(safe)).message.content)
        assert len(url.requests) == 1


def test_a_document_data_url_reads_as_its_data_twin():
    """The same bytes read the same whether given as ``data=`` or as a ``data:`` URL; any other URL is not fetched."""
    raw = UNSAFE_CLAUSE.encode("utf-16")
    inline = DocumentBlock(data=raw, document_mimetype="text/plain")
    as_url = DocumentBlock(url="data:text/plain;base64," + _b64(raw), document_mimetype="text/plain")
    assert block_text(as_url) == block_text(inline)
    assert block_text(as_url).endswith("\n" + UNSAFE_CLAUSE)  # after its title, the default "input_document"
    remote = DocumentBlock(url="http://127.0.0.1:9/notes.txt", document_mimetype="text/plain", title="notes.txt")
    assert block_text(remote) == "notes.txt"
