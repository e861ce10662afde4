"""rt70c F1: a retrieved image whose image data is text is judged as the model reads it.

An attacker plants an "image" that is text in a multimodal index: an `ImageNode` whose base64 ``image`` decodes to
UTF-8 text, or whose ``image_url`` is a ``data:text/plain;base64,...`` URL, or a multimodal `Node` whose media
resource holds such data. Its caption is harmless. LlamaIndex's multimodal engines send it to the model as an
`ImageBlock` (``image_node_to_image_block``), which `GuardedLLM` reads as text, yet every node reader
(`GuardNodePostprocessor`, `GuardedRetriever`, `GuardTransform`, the callback and event handlers' retrieval checks)
read only the caption and kept it. And `GuardCallbackHandler` judged only the query of an LLM call made under a
QUERY event, never the files its messages carry (a user's upload sent by a query engine that a router picked).

The demo guard; real LlamaIndex objects; the real `OpenAILike` against a scripted OpenAI-compatible server
(tests/scripted_openai.py): a blocked request sends the model nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import re
import struct
import zlib
from typing import Any

import pytest
from li_shared import UNSAFE_DOC, openai_like
from llama_index.core.base.base_selector import BaseSelector, SelectorResult, SingleSelection
from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.llms import ChatMessage, ImageBlock, TextBlock
from llama_index.core.query_engine import CustomQueryEngine, RetrieverQueryEngine, RouterQueryEngine
from llama_index.core.query_engine.multi_modal import SimpleMultiModalQueryEngine
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import ImageNode, MediaResource, Node, NodeWithScore, QueryBundle, TextNode
from llama_index.core.tools import QueryEngineTool
from qwenguard.core import Guard, GuardViolation
from qwenguard.core.verdict import Stage
from qwenguard.integrations.llamaindex import (
    GuardCallbackHandler,
    GuardedRetriever,
    GuardEventHandler,
    GuardNodePostprocessor,
    GuardTransform,
)
from scripted_openai import Reply, scripted_openai

HARM = UNSAFE_DOC  # "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
HARM_B64 = base64.b64encode(HARM.encode()).decode()
CAPTION = "A photo of a park."
QUESTION = "What is shown?"
ANSWER = "It shows a park."


def _png(width: int, height: int) -> bytes:
    """A real PNG of random pixels (stored, not compressed: its size is about width * height * 3 bytes)."""
    rows = random.Random(7).randbytes(height * (width * 3 + 1))
    raw = b"".join(b"\x00" + rows[i * (width * 3 + 1) + 1 : (i + 1) * (width * 3 + 1)] for i in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 0)) + chunk(b"IEND", b"")


PNG_B64 = base64.b64encode(_png(32, 32)).decode()

#: The planted "images": each holds HARM as the model would read it, behind a harmless caption.
ATTACKS = {
    "ImageNode image=base64(text)": lambda: ImageNode(text=CAPTION, image=HARM_B64, image_mimetype="text/plain"),
    "ImageNode image=base64(text), typed as a PNG": lambda: ImageNode(
        text=CAPTION, image=HARM_B64, image_mimetype="image/png"
    ),
    "ImageNode image_url=data:text/plain": lambda: ImageNode(
        text=CAPTION, image_url="data:text/plain;base64," + HARM_B64
    ),
    "Node image_resource data": lambda: Node(image_resource=MediaResource(text=CAPTION, data=HARM.encode())),
    "Node image_resource data: URL": lambda: Node(
        image_resource=MediaResource(text=CAPTION, url="data:text/plain;base64," + HARM_B64)
    ),
    "Node audio_resource data": lambda: Node(
        audio_resource=MediaResource(text=CAPTION, data=HARM.encode(), mimetype="audio/mpeg")
    ),
}


class Fixed(BaseRetriever):
    """A retriever that finds the planted nodes (a vector store's similarity search, without the embeddings)."""

    def __init__(self, nodes: list[Any], callback_manager: CallbackManager | None = None) -> None:
        super().__init__(callback_manager=callback_manager)
        self.nodes = nodes

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [NodeWithScore(node=n, score=1.0) for n in self.nodes]


def _sent(url: Any) -> str:
    """Every request body the model got, with the base64 payloads decoded."""
    body = json.dumps([r.body for r in url.requests])
    decoded = [base64.b64decode(p).decode(errors="replace") for p in re.findall(r"base64,([A-Za-z0-9+/=]+)", body)]
    return body + "\n".join(decoded)


# -- the node readers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_postprocessor_drops_an_image_that_is_text(guard: Guard, attack: str) -> None:
    post = GuardNodePostprocessor(guard=guard)
    nodes = [NodeWithScore(node=ATTACKS[attack](), score=1.0)]
    assert post.postprocess_nodes(nodes, query_bundle=QueryBundle(QUESTION)) == []
    assert asyncio.run(post.apostprocess_nodes(nodes, query_bundle=QueryBundle(QUESTION))) == []


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_guarded_retriever_drops_an_image_that_is_text(guard: Guard, attack: str) -> None:
    retriever = GuardedRetriever(Fixed([ATTACKS[attack]()]), guard)
    assert retriever.retrieve(QUESTION) == []
    assert asyncio.run(retriever.aretrieve(QUESTION)) == []


def test_the_transform_drops_an_image_that_is_text(guard: Guard) -> None:
    transform = GuardTransform(guard=guard)
    nodes = [TextNode(text=HARM), *(make() for make in ATTACKS.values())]
    assert transform(nodes) == []
    assert asyncio.run(transform.acall(nodes)) == []


def test_the_event_handler_records_an_image_that_is_text_blocked(guard: Guard) -> None:
    audit = GuardEventHandler(guard=guard).attach()
    try:
        Fixed([ATTACKS["ImageNode image=base64(text)"]()]).retrieve(QUESTION)
    finally:
        get_dispatcher().event_handlers.remove(audit)
    assert audit.counts[("retrieval", "block")] == 1


# -- a multimodal engine, as the report ran it -------------------------------------------------------------------
@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.startswith("ImageNode")])
def test_a_multimodal_engine_behind_the_postprocessor_sends_the_model_no_planted_text(
    guard: Guard, attack: str
) -> None:
    with scripted_openai([Reply.words(ANSWER)]) as url:
        engine = SimpleMultiModalQueryEngine(
            Fixed([ATTACKS[attack]()]),
            multi_modal_llm=openai_like(url),
            node_postprocessors=[GuardNodePostprocessor(guard=guard)],
        )
        assert str(engine.query(QUESTION)) == ANSWER
    assert len(url.requests) == 1
    assert "ammonium nitrate" not in _sent(url)


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a.startswith("ImageNode")])
@pytest.mark.parametrize("run", ["query", "aquery"])
def test_the_callback_handler_stops_a_multimodal_query_that_retrieves_an_image_that_is_text(
    guard: Guard, attack: str, run: str
) -> None:
    manager = CallbackManager([GuardCallbackHandler(guard=guard)])
    with scripted_openai([Reply.words(ANSWER)]) as url:
        llm = openai_like(url)
        llm.callback_manager = manager
        engine = SimpleMultiModalQueryEngine(
            Fixed([ATTACKS[attack]()], manager), multi_modal_llm=llm, callback_manager=manager
        )
        with pytest.raises(GuardViolation) as info:
            engine.query(QUESTION) if run == "query" else asyncio.run(engine.aquery(QUESTION))
    assert info.value.decision.stage is Stage.RETRIEVAL
    assert url.requests == []


@pytest.mark.parametrize("guarded_by", ["postprocessor", "callback handler"])
def test_the_current_multimodal_engine_sends_the_model_no_planted_text(guard: Guard, guarded_by: str) -> None:
    """``RetrieverQueryEngine.from_args(multimodal=True)``, which replaces the deprecated engine, renders an image
    node's bytes as an image part under its declared type (one typed as a PNG here: banks rejects text/plain)."""
    node = ATTACKS["ImageNode image=base64(text), typed as a PNG"]()
    manager = CallbackManager([GuardCallbackHandler(guard=guard)] if guarded_by == "callback handler" else [])
    posts = [GuardNodePostprocessor(guard=guard)] if guarded_by == "postprocessor" else []
    with scripted_openai([Reply.words(ANSWER)]) as url:
        llm = openai_like(url)
        llm.callback_manager = manager
        engine = RetrieverQueryEngine.from_args(
            retriever=Fixed([node], manager),
            llm=llm,
            multimodal=True,
            node_postprocessors=posts,
            callback_manager=manager,
        )
        if guarded_by == "postprocessor":
            engine.query(QUESTION)  # no node left: LlamaIndex answers "Empty Response" without the model
        else:
            with pytest.raises(GuardViolation):
                engine.query(QUESTION)
    assert "ammonium nitrate" not in _sent(url)


# -- the callback handler under a QUERY event: the call's files --------------------------------------------------
class PhotoQA(CustomQueryEngine):
    """Answers about the photo the user uploaded with the question: sends it to the model as an image."""

    llm: Any
    photo: str  # base64, as the upload form gives it

    def custom_query(self, query_str: str) -> str:
        block = ImageBlock(image=self.photo.encode(), image_mimetype="image/png")
        reply = self.llm.chat([ChatMessage(role="user", blocks=[block, TextBlock(text=query_str)])])
        return str(reply.message.content)

    async def acustom_query(self, query_str: str) -> str:
        block = ImageBlock(image=self.photo.encode(), image_mimetype="image/png")
        reply = await self.llm.achat([ChatMessage(role="user", blocks=[block, TextBlock(text=query_str)])])
        return str(reply.message.content)


class First(BaseSelector):
    """Picks the first engine (a router whose choice needs no model here)."""

    def _get_prompts(self) -> dict[str, Any]:
        return {}

    def _update_prompts(self, prompts: Any) -> None:
        return None

    def _select(self, choices: Any, query: QueryBundle) -> SelectorResult:
        return SelectorResult(selections=[SingleSelection(index=0, reason="the only one")])

    async def _aselect(self, choices: Any, query: QueryBundle) -> SelectorResult:
        return self._select(choices, query)


def _router(url: str, guard: Guard, photo: str) -> RouterQueryEngine:
    manager = CallbackManager([GuardCallbackHandler(guard=guard)])
    llm = openai_like(url)
    llm.callback_manager = manager
    tool = QueryEngineTool.from_defaults(PhotoQA(llm=llm, photo=photo), description="Questions about the photo.")
    router = RouterQueryEngine(selector=First(), query_engine_tools=[tool], llm=llm)
    router.callback_manager = manager  # the constructor takes Settings' manager
    return router


@pytest.mark.parametrize("run", ["query", "aquery"])
def test_the_callback_handler_judges_an_uploaded_image_that_is_text_under_a_query(guard: Guard, run: str) -> None:
    with scripted_openai([Reply.words(ANSWER)]) as url:
        engine = _router(url, guard, HARM_B64)
        with pytest.raises(GuardViolation) as info:
            engine.query(QUESTION) if run == "query" else asyncio.run(engine.aquery(QUESTION))
    assert info.value.decision.stage is Stage.PROMPT
    assert url.requests == []


# -- controls: a real image is no text; a text node with harm is still dropped -----------------------------------
def test_control_a_real_png_image_node_is_kept_and_sent(guard: Guard) -> None:
    node = ImageNode(text=CAPTION, image=PNG_B64, image_mimetype="image/png")
    post = GuardNodePostprocessor(guard=guard)
    assert len(post.postprocess_nodes([NodeWithScore(node=node, score=1.0)], query_bundle=QueryBundle(QUESTION))) == 1
    assert len(GuardedRetriever(Fixed([node]), guard).retrieve(QUESTION)) == 1
    resource = Node(image_resource=MediaResource(text=CAPTION, data=base64.b64decode(PNG_B64)))
    assert len(GuardTransform(guard=guard)([node, resource])) == 2
    manager = CallbackManager([GuardCallbackHandler(guard=guard)])
    with scripted_openai([Reply.words(ANSWER)]) as url:
        llm = openai_like(url)
        llm.callback_manager = manager
        engine = SimpleMultiModalQueryEngine(Fixed([node], manager), multi_modal_llm=llm, callback_manager=manager)
        assert str(engine.query(QUESTION)) == ANSWER
    assert PNG_B64 in json.dumps([r.body for r in url.requests])


def test_control_a_real_png_upload_under_a_router_is_answered(guard: Guard) -> None:
    with scripted_openai([Reply.words(ANSWER)]) as url:
        assert str(_router(url, guard, PNG_B64).query(QUESTION)) == ANSWER
    assert len(url.requests) == 1


def test_control_a_text_node_with_harm_is_still_dropped(guard: Guard) -> None:
    post = GuardNodePostprocessor(guard=guard)
    kept = post.postprocess_nodes(
        [NodeWithScore(node=TextNode(text=HARM), score=1.0), NodeWithScore(node=TextNode(text=CAPTION), score=1.0)],
        query_bundle=QueryBundle(QUESTION),
    )
    assert [n.node.get_content() for n in kept] == [CAPTION]


# -- second look (rt70n): a real image costs no more than its start, however it is labelled ----------------------
def test_a_real_png_labelled_text_is_read_as_llamaindex_sends_it() -> None:
    """rt70n F2: LlamaIndex sends an `ImageNode`'s inline image untyped (the block guesses image/png from the bytes);
    the node readers decoded a real PNG labelled text/plain whole as text (300 KB of noise judged, the node dropped)."""
    from qwenguard.integrations.llamaindex.postprocessor import node_text

    node = ImageNode(text=CAPTION, image=base64.b64encode(_png(200, 200)).decode(), image_mimetype="text/plain")
    assert node_text(node).strip() == CAPTION


def test_a_percent_encoded_real_png_data_url_is_decoded_only_at_its_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """rt70n F1: ``data:image/png,<percent-encoded PNG>`` (legal, no ``;base64``) was decoded whole by every node reader
    before it turned out to be an image (0.7 s a MB); its start tells, as for base64. Text so encoded is still read."""
    from urllib.parse import quote_from_bytes

    from qwenguard.integrations.llamaindex import _messages
    from qwenguard.integrations.llamaindex.postprocessor import node_text

    decoded: list[int] = []
    unquote = _messages.unquote_to_bytes

    def spied(payload: Any) -> bytes:
        decoded.append(len(payload))
        return unquote(payload)

    monkeypatch.setattr(_messages, "unquote_to_bytes", spied)
    png = ImageNode(text=CAPTION, image_url="data:image/png," + quote_from_bytes(_png(200, 200)))
    assert node_text(png).strip() == CAPTION
    assert decoded and max(decoded) <= 3 * _messages.SNIFF_BYTES
    text = ImageNode(text=CAPTION, image_url="data:image/png," + quote_from_bytes(HARM.encode() * 100))
    assert HARM in node_text(text)
