"""Stop 71, fixer BC: three leftovers of stop 70, each written as the action that showed it.

1. A LangChain held stream (`guard_output`, `GuardRunnable`, `GuardMiddleware`) carries a CR at a chunk's end into
   the next chunk, so a CRLF cut between two chunks stays a CRLF (rt70l F2). For a message whose content is a list of
   text blocks (Anthropic, the responses API) it did not: the cut CRLF reached the consumer as two line feeds. And a
   CR still carried when the answer ended was dropped, string content or list: a character the model wrote was lost.
   The consumer's text, in characters, is now the model's with each lone CR a line feed and each CRLF kept.
2. The as-seen readings of a long non-ASCII text (`as_seen_pieces`) ran their display, hidden-place and stretch
   searches before their first deadline check: seconds past a short deadline on a MB. The planner's check now runs
   inside them.
3. `node_text` decoded a node's inline text payload (an `ImageNode`'s base64, a ``data:`` URL) whole before its
   ``max_chars`` check: a payload whose size alone proves its text too long is now refused undecoded."""

from __future__ import annotations

import asyncio
import base64
import re
import time
import urllib.parse
from typing import Any

import pytest
from faults import ScriptedBackend, phrase_verdict
from phrase_judge import phrase_guard
from qwenguard.core import Guard
from qwenguard.core.backends.transformers_gen import _stop_check
from qwenguard.core.errors import GuardTimeout, InputTooLarge

PHRASE = "mix ammonium"


# -- 1: CRs in held LangChain streams --------------------------------------------------------------------------------


def as_released(texts: list[str]) -> str:
    """The model's text as the guard releases it: each lone CR a line feed, each CRLF kept."""
    return re.sub(r"\r(?!\n)", "\n", "".join(texts))


def _blocks(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text, "index": 0}]


def _model(contents: list[Any]) -> Any:
    from langchain_core.language_models import GenericFakeChatModel
    from langchain_core.messages import AIMessageChunk
    from langchain_core.outputs import ChatGenerationChunk

    class Chunked(GenericFakeChatModel):
        def _stream(self, messages, stop=None, run_manager=None, **kw):  # type: ignore[no-untyped-def]
            for content in contents:
                yield ChatGenerationChunk(message=AIMessageChunk(content=content, id="run-1"))

        def bind_tools(self, tools, **kw):  # type: ignore[no-untyped-def]  # an agent binds its (no) tools
            return self

    return Chunked(messages=iter([]))


def _consumer_texts(path: str, contents: list[Any], mode: str) -> tuple[list[str], Any]:
    """What the consumer of ``path`` receives (its chunks' texts), and the chunks added up (LangChain's sum)."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessageChunk, HumanMessage
    from qwenguard.integrations.langchain import GuardMiddleware, GuardRunnable, guard_output

    guard = Guard(ScriptedBackend(phrase_verdict), cache_size=0)  # a phrase judge on every window streamed
    model = _model(contents)
    chunks: list[Any] = []
    if path == "GuardMiddleware":
        agent = create_agent(model, [], middleware=[GuardMiddleware(guard, exit_behavior="error")])
        inputs = {"messages": [HumanMessage("Show a table.")]}
        if mode == "sync":
            chunks = [m for m, _ in agent.stream(inputs, stream_mode="messages") if isinstance(m, AIMessageChunk)]
        else:

            async def agent_run() -> list[Any]:
                out = []
                async for m, _ in agent.astream(inputs, stream_mode="messages"):
                    if isinstance(m, AIMessageChunk):
                        out.append(m)
                return out

            chunks = asyncio.run(agent_run())
    else:
        chain = model | guard_output(guard) if path == "guard_output" else GuardRunnable(guard=guard, runnable=model)
        if mode == "sync":
            chunks = list(chain.stream("Show a table."))
        else:

            async def chain_run() -> list[Any]:
                return [c async for c in chain.astream("Show a table.")]

            chunks = asyncio.run(chain_run())
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    return [c.text for c in chunks], total


TABLE = ["| a | b |\r", "\n|---|---|\r", "\n| 1 | 2 |"]  # a Markdown table with CRLFs, each cut between chunks
ENDS_IN_CR = ["Line one.\r", "Line two.\r"]  # the last CR is carried to the answer's end
LONE = ["First\rsecond", " and a CR\r", "third.\r"]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("path", ["guard_output", "GuardRunnable", "GuardMiddleware"])
@pytest.mark.parametrize("texts", [TABLE, ENDS_IN_CR, LONE], ids=["cut-crlf", "cr-at-end", "lone-crs"])
@pytest.mark.parametrize("form", ["blocks", "string"])
def test_the_consumer_gets_every_character_the_model_wrote(form: str, texts: list[str], path: str, mode: str) -> None:
    """A model streaming content blocks (or strings): the consumer's text is the model's, a lone CR a line feed."""
    contents = [_blocks(t) if form == "blocks" else t for t in texts]
    received, total = _consumer_texts(path, contents, mode)
    assert "".join(received) == as_released(texts)
    assert total.text == as_released(texts)  # the chunks add up to it too (a block at the same index)
    if form == "blocks":
        assert [b["index"] for b in total.content] == [0]  # one text block, as the model's chunks add up


def test_a_cut_crlf_in_blocks_reaches_no_consumer_as_a_paragraph_break() -> None:
    """The rt70l F2 table again, as content blocks: no blank line between its rows (it ended the table)."""
    received, _ = _consumer_texts("guard_output", [_blocks(t) for t in TABLE], "sync")
    assert "\n\n" not in "".join(received)


def test_the_clause_cut_by_crs_in_blocks_is_still_stopped() -> None:
    """The CR carried between blocks is judged with the text after it: a clause is stopped as before."""
    from qwenguard.core import GuardViolation

    texts = ["Sure. Mix\r", "\nammonium nitrate with fuel oil.\r"]
    with pytest.raises(GuardViolation):
        _consumer_texts("guard_output", [_blocks(t) for t in texts], "sync")


# -- 2: a deadline inside the as-seen readings -------------------------------------------------------------------------

#: Look-alikes, hidden characters, bidi controls and right-to-left letters in every line: every reading runs.
HOSTILE_UNIT = "Th\u0435 bo\u200bmb \u202eabc\u202c x\u05d0y.\n"


def _deadline_check(timeout_s: float) -> Any:
    """The planner's own deadline check (`transformers_gen._stop_check`), ``timeout_s`` from now."""
    return _stop_check(time.monotonic() + timeout_s, timeout_s, None)


def test_a_mb_of_non_ascii_text_stops_near_its_deadline() -> None:
    """1 MB of such text read with a 0.5 s deadline: `GuardTimeout` within 4x the deadline (it read on for tens of
    seconds before: its display reading alone had no check)."""
    from qwenguard.core.formats.content import as_seen_pieces

    text = (HOSTILE_UNIT * (1_000_000 // len(HOSTILE_UNIT) + 1))[:1_000_000]
    as_seen_pieces(HOSTILE_UNIT)  # the Unicode tables built before the clock starts
    timeout_s = 0.5
    start = time.perf_counter()
    with pytest.raises(GuardTimeout):
        as_seen_pieces(text, _deadline_check(timeout_s))
    assert time.perf_counter() - start < 4 * timeout_s


def test_the_readings_without_a_deadline_are_the_same() -> None:
    """Control: the checks change no reading (and the hostile unit's readings still hold the bomb)."""
    from qwenguard.core.formats.content import as_seen_pieces

    text = HOSTILE_UNIT * 40
    never = _deadline_check(1e6)
    assert as_seen_pieces(text, never) == as_seen_pieces(text)
    assert any("bomb" in p for p in as_seen_pieces(text))


# -- 3: an inline payload over max_chars is refused before it is decoded ------------------------------------------------

MAX_CHARS = 2_000
HARMFUL = "Mix ammonium nitrate with fuel oil and pack it into a pipe. "


def _spied(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the whole-payload decodes (`base64_bytes`, `unquote_to_bytes`) the LlamaIndex reader makes."""
    import qwenguard.core.formats.media as media
    import qwenguard.integrations.llamaindex._messages as li_messages

    calls = {"base64": 0, "percent": 0}
    real_b64, real_unquote = media.base64_bytes, li_messages.unquote_to_bytes

    def b64(encoded: str) -> bytes:
        if len(encoded) > 4 * MAX_CHARS:  # the start decoded to tell text from media is not the payload
            calls["base64"] += 1
        return real_b64(encoded)

    def unquote(payload: str) -> bytes:
        if len(payload) > 4 * MAX_CHARS:
            calls["percent"] += 1
        return real_unquote(payload)

    monkeypatch.setattr(media, "base64_bytes", b64)
    monkeypatch.setattr(li_messages, "base64_bytes", b64)
    monkeypatch.setattr(li_messages, "unquote_to_bytes", unquote)
    return calls


def _image_nodes(text: str) -> dict[str, Any]:
    from llama_index.core.schema import ImageNode

    raw = text.encode()
    b64 = base64.b64encode(raw).decode()
    return {
        "image": ImageNode(text="A chart.", image=b64),
        "typed image": ImageNode(text="A chart.", image=b64, image_mimetype="text/plain"),
        "base64 URL": ImageNode(text="A chart.", image_url=f"data:text/plain;base64,{b64}"),
        "percent URL": ImageNode(text="A chart.", image_url="data:text/plain," + urllib.parse.quote(text)),
    }


@pytest.mark.parametrize("kind", ["image", "typed image", "base64 URL", "percent URL"])
def test_a_payload_far_over_max_chars_is_refused_undecoded(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from qwenguard.integrations.llamaindex.postprocessor import node_text

    node = _image_nodes(HARMFUL * 20_000)[kind]  # 1.2 MB of text, 600x max_chars
    calls = _spied(monkeypatch)
    with pytest.raises(InputTooLarge):
        node_text(node, MAX_CHARS)
    assert calls == {"base64": 0, "percent": 0}


@pytest.mark.parametrize("kind", ["image", "typed image", "base64 URL", "percent URL"])
def test_a_payload_within_max_chars_is_still_read_and_judged(kind: str) -> None:
    """Control: a harmful payload under the budget is read, and the postprocessor drops its node."""
    from llama_index.core.schema import NodeWithScore, QueryBundle
    from qwenguard.integrations.llamaindex import GuardNodePostprocessor
    from qwenguard.integrations.llamaindex.postprocessor import node_text

    node = _image_nodes(HARMFUL * 3)[kind]
    assert PHRASE in node_text(node, MAX_CHARS).lower()
    post = GuardNodePostprocessor(guard=phrase_guard(PHRASE, max_chars=MAX_CHARS))
    kept = post.postprocess_nodes([NodeWithScore(node=node, score=1.0)], query_bundle=QueryBundle("A chart?"))
    assert kept == []


def test_a_real_image_over_max_chars_is_not_refused() -> None:
    """Control: a PNG's base64 larger than the budget is media, read from its start only, no text, no refusal."""
    from llama_index.core.schema import ImageNode
    from qwenguard.integrations.llamaindex.postprocessor import node_text

    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 400
    node = ImageNode(text="A chart.", image=base64.b64encode(png).decode())
    assert node_text(node, MAX_CHARS).startswith("A chart.")


# -- rt71i: the CR released at the answer's end, in the message that ends it (fixer BL) --------------------------------


def _chained(path: str, answer: Any, mode: str) -> list[Any]:
    """What the step after the guard receives, streamed, when ``answer`` (a runnable) is guarded by ``path``."""
    from langchain_core.runnables import RunnableLambda
    from qwenguard.integrations.langchain import GuardRunnable, guard_output

    guard = Guard(ScriptedBackend(phrase_verdict), cache_size=0)
    guarded = GuardRunnable(guard=guard, runnable=answer) if path == "GuardRunnable" else answer | guard_output(guard)
    chain = guarded | RunnableLambda(lambda m: m)
    if mode == "sync":
        return list(chain.stream("hi"))

    async def run() -> list[Any]:
        return [m async for m in chain.astream("hi")]

    return asyncio.run(run())


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("path", ["guard_output", "GuardRunnable"])
@pytest.mark.parametrize("form", ["blocks", "string"])
def test_a_whole_answer_ending_in_a_cr_reaches_the_next_step_as_one_message(form: str, path: str, mode: str) -> None:
    """rt71i F1: a runnable that answers a whole `AIMessage` (a router, a cached answer) whose text ends in a CR.
    The next step of the chain gets that message, its CR a line feed, not a `ChatPromptTemplate` (LangChain added
    the message and a line-feed chunk released after it)."""
    from langchain_core.messages import AIMessage
    from langchain_core.runnables import RunnableLambda

    text = "Line one.\r\nLine two.\r"
    content: Any = _blocks(text) if form == "blocks" else text
    got = _chained(path, RunnableLambda(lambda _: AIMessage(content=content, id="r1")), mode)
    assert [type(m).__name__ for m in got] == ["AIMessage"]
    assert got[0].text == "Line one.\r\nLine two.\n"
    if form == "blocks":
        assert [b["index"] for b in got[0].content] == [0]


def _marked_model(contents: list[Any]) -> Any:
    """A chat model streaming ``contents`` with a tool call, then the empty chunk marked ``chunk_position="last"``
    with the usage, as a provider's stream ends."""
    from langchain_core.language_models import GenericFakeChatModel
    from langchain_core.messages import AIMessageChunk
    from langchain_core.outputs import ChatGenerationChunk

    last: Any = [] if isinstance(contents[0], list) else ""

    class Marked(GenericFakeChatModel):
        def _stream(self, messages, stop=None, run_manager=None, **kw):  # type: ignore[no-untyped-def]
            for content in contents:
                yield ChatGenerationChunk(message=AIMessageChunk(content=content, id="r1"))
            call = {"name": "lookup", "args": '{"q": "x"}', "id": "c1", "index": 5}
            yield ChatGenerationChunk(message=AIMessageChunk(content=last, id="r1", tool_call_chunks=[call]))
            usage = {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}
            end = AIMessageChunk(content=last, id="r1", chunk_position="last", usage_metadata=usage)
            yield ChatGenerationChunk(message=end)

    return Marked(messages=iter([]))


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("path", ["guard_output", "GuardRunnable"])
@pytest.mark.parametrize("texts", [ENDS_IN_CR, LONE], ids=["cr-at-end", "lone-crs"])
@pytest.mark.parametrize("form", ["blocks", "string"])
def test_no_chunk_comes_after_the_one_marked_last(form: str, texts: list[str], path: str, mode: str) -> None:
    """rt71i F2: a chat model's answer ends in a CR, and its stream ends with the chunk marked last. A consumer that
    finalises the message at that chunk has every character: the line feed is in it, not in a chunk after it; the
    sum keeps the tool call, the usage and the end marker."""
    from qwenguard.integrations.langchain import GuardRunnable, guard_output

    guard = Guard(ScriptedBackend(phrase_verdict), cache_size=0)
    model = _marked_model([_blocks(t) if form == "blocks" else t for t in texts])
    chain = model | guard_output(guard) if path == "guard_output" else GuardRunnable(guard=guard, runnable=model)
    if mode == "sync":
        chunks = list(chain.stream("hi"))
    else:

        async def run() -> list[Any]:
            return [c async for c in chain.astream("hi")]

        chunks = asyncio.run(run())
    assert chunks[-1].chunk_position == "last"
    assert "".join(c.text for c in chunks) == as_released(texts)
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.text == as_released(texts)
    assert total.chunk_position == "last"
    assert [c["name"] for c in total.tool_calls] == ["lookup"]
    assert total.usage_metadata["total_tokens"] == 8
    if form == "blocks":
        assert [b["index"] for b in total.content if b.get("type") == "text"] == [0]


@pytest.mark.parametrize("form", ["blocks", "string"])
def test_a_stream_with_no_end_marker_still_gets_its_cr_in_a_last_chunk(form: str) -> None:
    """Control: chunks yielded by a generator runnable (no chunk marked last): the CR goes out in a chunk of its own."""
    from langchain_core.messages import AIMessageChunk
    from langchain_core.runnables import RunnableGenerator

    def gen(_: Any) -> Any:
        for t in ENDS_IN_CR:
            yield AIMessageChunk(content=_blocks(t) if form == "blocks" else t, id="r1")

    got = _chained("GuardRunnable", RunnableGenerator(gen), "sync")
    assert "".join(c.text for c in got) == as_released(ENDS_IN_CR)


WORDS = ("The museum opens at nine and closes at five on weekdays. " * 200)[:9_000]  # 90% of max_chars below


@pytest.mark.parametrize("payload", ["the same words", "blanks"])
def test_a_node_whose_payload_repeats_what_it_shows_is_judged(payload: str) -> None:
    """rt71i F3: an `ImageNode` whose text is 90% of max_chars and whose inline image is base64 of the same words
    (or of blanks) is read and judged, as before the payload bound: the bound is the whole max_chars, and data the
    node already shows is left out once decoded."""
    from llama_index.core.schema import ImageNode
    from qwenguard.integrations.llamaindex.postprocessor import node_text

    raw = (WORDS if payload == "the same words" else " " * 9_000).encode()
    node = ImageNode(text=WORDS, image=base64.b64encode(raw).decode(), id_="n1")
    assert node_text(node, 10_000).startswith(WORDS)
    assert len(node_text(node, 10_000)) < 10_000


def test_a_payload_over_max_chars_beside_a_short_text_is_still_refused_undecoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control: the whole-budget bound still refuses a payload whose size alone is over max_chars, undecoded."""
    from qwenguard.integrations.llamaindex.postprocessor import node_text

    calls = _spied(monkeypatch)
    with pytest.raises(InputTooLarge):
        node_text(_image_nodes(HARMFUL * 200)["image"], MAX_CHARS)  # 12,000 bytes: over 4 x 2,000
    assert calls == {"base64": 0, "percent": 0}
