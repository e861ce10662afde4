"""rt62b F4, F5: IngestionPipeline's cache must not answer for `GuardTransform` with output no check judged, nor
with another model's: a real pipeline, a real remote guard on a scripted OpenAI-compatible server; the outage is
the server answering 503 (a fault injected in its handler)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import scripted_openai
from live_server import QuietHandler
from llama_index.core import Document
from llama_index.core.ingestion import IngestionCache, IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from qwenguard.core import Guard, Policy
from qwenguard.integrations.llamaindex import GuardTransform
from scripted_openai import Reply, ScriptedURL

UNSAFE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
SAFE = "The Eiffel Tower is in Paris."
UNSAFE_VERDICT = Reply.words("Safety: Unsafe\nCategories: Violent")
SAFE_VERDICT = Reply.words("Safety: Safe\nCategories: None")


class _Down(QuietHandler):
    """The guard server in an outage: every request answered 503, its connection closed (a kept-alive one would
    stay with this handler after the outage)."""

    def _down(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"error": {"message": "overloaded", "type": "server_error"}}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _down


@contextmanager
def outage(url: ScriptedURL) -> Iterator[None]:
    handler = url.server.RequestHandlerClass
    url.server.RequestHandlerClass = _Down
    try:
        yield
    finally:
        url.server.RequestHandlerClass = handler


def remote(url: str, **options: object) -> Guard:
    return Guard.remote(url, api_key="x", max_context=32768, max_retries=0, **options)  # type: ignore[arg-type]


def chats(url: ScriptedURL) -> int:
    return sum(1 for r in url.requests if r.path.rstrip("/").endswith("completions"))


def texts(nodes: object) -> list[str]:
    return [n.get_content() for n in nodes]  # type: ignore[attr-defined]


def test_a_failed_open_run_is_judged_again_when_the_guard_is_back() -> None:
    """F4: the guard fails open for documents during an outage; the unsafe chunk is kept, flagged. The same
    documents run again once the server is back: they are judged (the chunk dropped), not served from the cache."""
    with scripted_openai.scripted_openai([UNSAFE_VERDICT]) as url:
        guard = remote(url, model="scripted", policy=Policy(on_error="allow"))
        pipeline = IngestionPipeline(transformations=[SentenceSplitter(), GuardTransform(guard=guard)])
        docs = [Document(text=UNSAFE, id_="d1")]
        with outage(url):
            first = pipeline.run(documents=docs)
        assert texts(first) == [UNSAFE]
        assert first[0].metadata["qwenguard_decision"]["reason"] == "guard_error"
        asked = chats(url)
        assert pipeline.run(documents=docs) == []
        assert chats(url) > asked
        guard.close()


async def test_a_failed_open_async_run_is_judged_again_when_the_guard_is_back() -> None:
    """F4, `arun`: the same."""
    with scripted_openai.scripted_openai([UNSAFE_VERDICT]) as url:
        guard = remote(url, model="scripted", policy=Policy(on_error="allow"))
        pipeline = IngestionPipeline(transformations=[SentenceSplitter(), GuardTransform(guard=guard)])
        docs = [Document(text=UNSAFE, id_="d1")]
        with outage(url):
            assert texts(await pipeline.arun(documents=docs)) == [UNSAFE]
        asked = chats(url)
        assert await pipeline.arun(documents=docs) == []
        assert chats(url) > asked
        await guard.aclose()


def test_a_failed_closed_run_is_judged_again_too() -> None:
    """F4 ("otherwise unjudged"): failing closed, the outage drops a safe chunk; the next run judges it and keeps
    it, instead of the cache answering with nothing."""
    with scripted_openai.scripted_openai([SAFE_VERDICT]) as url:
        guard = remote(url, model="scripted", policy=Policy(on_error="block"))
        pipeline = IngestionPipeline(transformations=[SentenceSplitter(), GuardTransform(guard=guard)])
        docs = [Document(text=SAFE, id_="d1")]
        with outage(url):
            assert pipeline.run(documents=docs) == []
        assert texts(pipeline.run(documents=docs)) == [SAFE]
        guard.close()


def test_a_judged_run_is_still_answered_from_the_cache() -> None:
    """Control: a run whose every node was judged answers the same documents again (no request)."""
    with scripted_openai.scripted_openai([SAFE_VERDICT]) as url:
        guard = remote(url, model="scripted")
        pipeline = IngestionPipeline(transformations=[SentenceSplitter(), GuardTransform(guard=guard)])
        docs = [Document(text=SAFE, id_="d1")]
        assert texts(pipeline.run(documents=docs)) == [SAFE]
        asked = chats(url)
        assert texts(pipeline.run(documents=docs)) == [SAFE]
        assert chats(url) == asked
        guard.close()


_OTHER_PROCESS = """
import json, sys
from llama_index.core import Document
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from qwenguard.core import Guard, Policy
from qwenguard.integrations.llamaindex import GuardTransform

url, persist_dir, text = sys.argv[1:4]
guard = Guard.remote(url, model="scripted", api_key="x", max_context=32768, max_retries=0, policy=Policy(on_error="allow"))
pipeline = IngestionPipeline(transformations=[SentenceSplitter(), GuardTransform(guard=guard)])
pipeline.load(persist_dir)
nodes = pipeline.run(documents=[Document(text=text, id_="d1")])
guard.close()
print(json.dumps([n.get_content() for n in nodes]))
"""


def test_a_persisted_failed_open_run_is_judged_again_in_another_process(tmp_path: Path) -> None:
    """F4, persisted: the failed-open output, persisted, does not answer another process's run with the guard back."""
    with scripted_openai.scripted_openai([UNSAFE_VERDICT]) as url:
        guard = remote(url, model="scripted", policy=Policy(on_error="allow"))
        pipeline = IngestionPipeline(transformations=[SentenceSplitter(), GuardTransform(guard=guard)])
        with outage(url):
            assert texts(pipeline.run(documents=[Document(text=UNSAFE, id_="d1")])) == [UNSAFE]
        guard.close()
        pipeline.persist(str(tmp_path))
        asked = chats(url)
        done = subprocess.run(
            [sys.executable, "-c", _OTHER_PROCESS, str(url), str(tmp_path), UNSAFE],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1]) == []
        assert chats(url) > asked


def test_a_cache_filled_by_one_unnamed_remote_guard_does_not_answer_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """F5: Guard.remote(url) without model= learns the name at its first check, after the pipeline formed its key. A
    cache shared with a guard on a lenient model does not answer the first run of a guard on a strict one."""
    shared = IngestionCache()
    docs = [Document(text=UNSAFE, id_="d1")]

    def run(name: str, verdict: Reply) -> tuple[list[str], int]:
        monkeypatch.setattr(scripted_openai, "MODEL", name)  # what /v1/models lists
        with scripted_openai.scripted_openai([verdict]) as url:
            guard = remote(url)
            transform = GuardTransform(guard=guard)
            nodes = IngestionPipeline(transformations=[SentenceSplitter(), transform], cache=shared).run(documents=docs)
            guard.close()
            return texts(nodes), chats(url)

    assert run("lenient-guard", SAFE_VERDICT) == ([UNSAFE], 1)
    kept, asked = run("strict-guard", UNSAFE_VERDICT)
    assert (kept, asked) == ([], 1)


def test_a_closed_guard_is_not_answered_from_the_cache() -> None:
    """After guard.close() every check is a guard error decided by on_error (docs/api.md): the pipeline's cache
    does not keep answering for the closed guard (here failing closed: the chunk is dropped)."""
    with scripted_openai.scripted_openai([SAFE_VERDICT]) as url:
        guard = remote(url, model="scripted")
        pipeline = IngestionPipeline(transformations=[SentenceSplitter(), GuardTransform(guard=guard)])
        docs = [Document(text=SAFE, id_="d1")]
        assert texts(pipeline.run(documents=docs)) == [SAFE]
        guard.close()
        assert pipeline.run(documents=docs) == []
