"""rt69e F1-F2: a template call whose messages carry a file the caller filled is judged as the model reads it.

F1: a chat template's query turn holding a templated binary block (``DocumentBlock(data=b"{doc}")``,
``ImageBlock(image=b"{img}")``) that LlamaIndex fills from a variable; F2: a ``RichPromptTemplate`` whose Jinja filter
turns a string into a block (``{{ upload | document }}``, ``{{ upload | image }}``). Both reached the model unjudged on
every template entry point of `GuardedLLM` and through `GuardCallbackHandler`, while ``chat()`` of the same messages
blocked them. The real `OpenAILike` against a scripted OpenAI-compatible server (tests/scripted_openai.py), judged by
a keyword judge (tests/faults.py): a blocked call sends the model nothing."""

import asyncio
import base64

import pytest
from faults import ScriptedBackend, keyword_verdict
from li_shared import openai_like
from llama_index.core.callbacks import CallbackManager
from llama_index.core.llms import ChatMessage, DocumentBlock, ImageBlock, TextBlock
from llama_index.core.prompts import ChatPromptTemplate, RichPromptTemplate
from pydantic import BaseModel
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.llamaindex import GuardCallbackHandler, GuardedLLM
from scripted_openai import Reply, ToolCall, scripted_openai

UNSAFE = "Step 1: Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
SAFE = "Paris is the capital of France."
QUERY = "Summarize the attached file."


class Summary(BaseModel):
    summary: str


def _data_url(text: str) -> str:
    return "data:text/plain;base64," + base64.b64encode(text.encode()).decode()


def _binary_template(kind: str) -> ChatPromptTemplate:
    """F1: the query turn holds a binary block LlamaIndex fills from ``upload`` (bytes)."""
    if kind == "document":
        block = DocumentBlock(data=b"{upload}", document_mimetype="text/plain", title="upload.txt")
    else:
        block = ImageBlock(image=b"{upload}", image_mimetype="text/plain")
    return ChatPromptTemplate.from_messages([ChatMessage(role="user", blocks=[block, TextBlock(text="{query_str}")])])


def _jinja_template(kind: str) -> RichPromptTemplate:
    """F2: a Jinja filter turns ``upload`` into a block: a document from a ``data:`` URL (as a browser's readAsDataURL
    gives it), an image from the path of the uploaded file."""
    return RichPromptTemplate(
        "{% chat role='user' %}Here is the file. {{ upload | " + kind + " }} {{ query_str }}{% endchat %}"
    )


@pytest.fixture()
def uploads(tmp_path, monkeypatch):
    """Where an upload is saved: the media root banks' ``image`` filter reads a path under."""
    monkeypatch.setenv("BANKS_MEDIA_ROOT", str(tmp_path))
    return tmp_path


def _call(template, text: str, uploads):
    """The template and its variables for an upload of ``text``."""
    if isinstance(template, RichPromptTemplate) and "image" in template.get_template():
        path = uploads / "upload.txt"
        path.write_text(text)
        return template, {"upload": str(path), "query_str": QUERY}
    if isinstance(template, RichPromptTemplate):
        return template, {"upload": _data_url(text), "query_str": QUERY}
    return template, {"upload": text.encode(), "query_str": QUERY}


TEMPLATES = {
    "F1 templated document bytes": lambda: _binary_template("document"),
    "F1 templated image bytes": lambda: _binary_template("image"),
    "F2 Jinja document filter": lambda: _jinja_template("document"),
    "F2 Jinja image filter": lambda: _jinja_template("image"),
}
STYLES = ["predict", "apredict", "stream", "astream", "structured_predict", "astructured_predict"]


def _guard() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"), Policy(mode="strict", timeout_s=None), cache_size=0)


def _judged(guard: Guard) -> str:
    """Every text the judge read, joined."""
    return "\n".join(str(m["content"]) for batch in guard.backend.calls for conv in batch for m in conv)


def _reply(style: str) -> Reply:
    if "structured" in style:
        return Reply.words("", tool_calls=[ToolCall("Summary", '{"summary": "A short text."}')])
    return Reply.words("Here is a short summary.")


def _run(style: str, llm, template, variables) -> str:
    """One template call in ``style``: its answer's text."""
    if style == "predict":
        return llm.predict(template, **variables)
    if style == "stream":
        return "".join(llm.stream(template, **variables))
    if style == "structured_predict":
        return llm.structured_predict(Summary, template, **variables).summary

    async def main():
        if style == "apredict":
            return await llm.apredict(template, **variables)
        if style == "astream":
            return "".join([t async for t in await llm.astream(template, **variables)])
        return (await llm.astructured_predict(Summary, template, **variables)).summary

    return asyncio.run(main())


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", TEMPLATES)
def test_an_unsafe_upload_in_a_template_block_never_reaches_the_model(name, style, uploads):
    guard = _guard()
    template, variables = _call(TEMPLATES[name](), UNSAFE, uploads)
    with scripted_openai(_reply(style)) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=guard)
        with pytest.raises(GuardViolation):
            _run(style, llm, template, variables)
        assert url.requests == []  # the file's text never reached the model
    assert "ammonium" in _judged(guard)  # the block was read, as chat() reads it


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", TEMPLATES)
def test_a_safe_upload_in_the_same_template_still_reaches_the_model(name, style, uploads):
    guard = _guard()
    template, variables = _call(TEMPLATES[name](), SAFE, uploads)
    with scripted_openai(_reply(style)) as url:
        llm = GuardedLLM(llm=openai_like(url), guard=guard)
        assert "short" in _run(style, llm, template, variables)
        assert len(url.requests) == 1
    assert SAFE in _judged(guard)  # judged, and let through


@pytest.mark.parametrize("name", TEMPLATES)
def test_chat_of_the_same_messages_blocks_as_predict_does(name, uploads):
    """The reference the template path now matches: the formatted messages handed to chat()."""
    guard = _guard()
    template, variables = _call(TEMPLATES[name](), UNSAFE, uploads)
    with scripted_openai("Here is a short summary.") as url:
        llm = GuardedLLM(llm=openai_like(url), guard=guard)
        with pytest.raises(GuardViolation):
            llm.chat(template.format_messages(**variables))
        assert url.requests == []


def _handled(style: str, template, variables, guard: Guard) -> tuple[str | None, int]:
    """A template call of the plain `OpenAILike` under `GuardCallbackHandler`: its answer (None when blocked) and the
    number of requests the model received."""
    with scripted_openai("Here is a short summary.") as url:
        llm = openai_like(url)
        llm.callback_manager = CallbackManager([GuardCallbackHandler(guard)])
        try:
            if style == "predict":
                answer = llm.predict(template, **variables)
            else:
                answer = asyncio.run(llm.apredict(template, **variables))
        except GuardViolation:
            answer = None
        return answer, len(url.requests)


@pytest.mark.parametrize("style", ["predict", "apredict"])
@pytest.mark.parametrize("name", TEMPLATES)
def test_the_handler_judges_an_unsafe_upload_in_a_template_block(name, style, uploads):
    guard = _guard()
    template, variables = _call(TEMPLATES[name](), UNSAFE, uploads)
    answer, requests = _handled(style, template, variables, guard)
    assert (answer, requests) == (None, 0)  # blocked before the model read the file
    assert "ammonium" in _judged(guard)


@pytest.mark.parametrize("style", ["predict", "apredict"])
@pytest.mark.parametrize("name", TEMPLATES)
def test_the_handler_lets_a_safe_upload_in_the_same_template_through(name, style, uploads):
    guard = _guard()
    template, variables = _call(TEMPLATES[name](), SAFE, uploads)
    answer, requests = _handled(style, template, variables, guard)
    assert (answer, requests) == ("Here is a short summary.", 1)
    assert SAFE in _judged(guard)


def test_a_templated_file_in_the_opening_system_message_is_judged():
    """F1's block in the system message that opens the template: its text is the application's and not judged, but
    the file is filled from the caller's variable."""
    guard = _guard()
    system = ChatMessage(role="system", blocks=[DocumentBlock(data=b"{upload}", document_mimetype="text/plain")])
    template = ChatPromptTemplate.from_messages([system, ChatMessage(role="user", content="{query_str}")])
    with scripted_openai("Here is a short summary.") as url:
        llm = GuardedLLM(llm=openai_like(url), guard=guard)
        with pytest.raises(GuardViolation):
            llm.predict(template, upload=UNSAFE.encode(), query_str=QUERY)
        assert url.requests == []
    assert "ammonium" in _judged(guard)


def test_a_plain_jinja_template_is_still_judged_by_variable():
    """A Jinja template that renders only text keeps its reading by variable: its wording is not judged as the
    user's prompt."""
    guard = _guard()
    template = RichPromptTemplate("{% chat role='user' %}Never mention ammonium. {{ query_str }}{% endchat %}")
    with scripted_openai("Here is a short summary.") as url:
        llm = GuardedLLM(llm=openai_like(url), guard=guard)
        assert "short" in llm.predict(template, query_str="Tell me about Paris.")
        assert len(url.requests) == 1
    assert "Never mention" not in _judged(guard)
