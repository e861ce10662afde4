"""An async retrieval reads its documents off the event loop (rt55b F4).

`GuardDocumentCompressor.acompress_documents` (and so `GuardedRetriever.ainvoke`) read every retrieved document and
its metadata into text on the loop thread: a page of 4,000 documents with 200 metadata entries each held the loop
0.6-1.2 s, while every other request the app serves waited. Now a large page is read on a worker thread (a small
one stays on the loop). Shown two ways: which thread reads, and a loop-lag probe whose worst lateness is compared
with the time the same reading takes, measured in the same run (on the loop it was held for all of it: ratio ~1.0;
off it, 0.02-0.1 measured)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from qwenguard.core import Guard
from qwenguard.integrations.langchain import GuardDocumentCompressor, GuardedRetriever, documents

PAGE = [
    Document(f"Document {i} about Paris.", metadata={f"field{k}": f"value {k} of {i}" for k in range(200)})
    for i in range(2_000)
]
SMALL = [Document("Paris is the capital of France.", metadata={"source": "atlas"})]


class Pages(BaseRetriever):
    """A vector store's page of results: the same documents every time."""

    docs: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager) -> list[Document]:
        return list(self.docs)


def _guard() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict))


async def _retrieve(path: str, docs: list[Document]) -> list[Document]:
    if path == "compressor":
        return list(await GuardDocumentCompressor(guard=_guard()).acompress_documents(docs, "Paris"))
    return await GuardedRetriever.wrap(Pages(docs=docs), _guard()).ainvoke("Paris")


async def _worst_lag(coro) -> tuple[object, float]:
    """``await coro``, and the most a 1 ms sleep beside it was late: how long the loop was held at once."""
    worst = 0.0
    done = False

    async def probe() -> None:
        nonlocal worst
        while not done:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - start - 0.001)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.01)
    try:
        return await coro, worst
    finally:
        done = True
        await task


@pytest.fixture()
def readers(monkeypatch):
    """The threads the documents are read on."""
    threads: list[threading.Thread] = []
    real = documents._texts

    def recording(*args, **kwargs):
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(documents, "_texts", recording)
    return threads


@pytest.mark.parametrize("path", ["compressor", "retriever"])
async def test_a_large_page_is_read_off_the_event_loop(readers, path):
    loop_thread = threading.current_thread()
    assert len(await _retrieve(path, PAGE)) == len(PAGE)
    assert readers and loop_thread not in readers
    readers.clear()
    assert len(await _retrieve(path, SMALL)) == 1  # a small page: no thread hop
    assert readers == [loop_thread]


@pytest.mark.parametrize("path", ["compressor", "retriever"])
async def test_the_event_loop_answers_while_a_large_page_is_read(path):
    start = time.perf_counter()
    texts = documents._texts(PAGE, _guard().max_chars)
    reading = time.perf_counter() - start  # what the loop was held for when the page was read on it
    assert len(texts) == len(PAGE)
    # The least of three tries: reading on the loop holds it every time, a busy machine or a GC pass only now and then.
    lags = []
    for _ in range(3):
        kept, lag = await _worst_lag(_retrieve(path, PAGE))
        assert len(kept) == len(PAGE)  # type: ignore[arg-type]
        lags.append(lag)
    held = min(lags)
    assert held < reading / 5, f"the loop was held {held * 1000:.0f} ms; reading the page takes {reading * 1000:.0f} ms"
