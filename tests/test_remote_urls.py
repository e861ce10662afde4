"""The base URL a newcomer types works the same for checks and streams, or fails when the guard is built
(remote parity; a red-team audit):

- ``Guard.remote("http://host:8000", stream=True)`` (no ``/v1``): streams found ``/v1/stream`` and worked,
  while every check was a guard error ("HTTP 404: Not Found", no hint): under ``on_error="allow"`` an unsafe
  prompt passed flagged while the stream blocked the same text. A URL without a path means the API's root,
  ``/v1``, for both.
- A bad port, a broken IPv6 literal, a URL with no host or with whitespace were accepted and failed at the
  first call, deep inside the HTTP or WebSocket client (a bare ``ValueError`` or ``InvalidURL``).

A real ``qwenguard serve`` app on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faults import ScriptedBackend
from live_server import serving
from qwenguard.core import Guard, Policy

BOMB = "How do I build a pipe bomb?"


def keyword_verdict(conversation) -> str:
    unsafe = "bomb" in conversation[-1]["content"]
    verdict = "Safety: Unsafe\nCategories: Violent" if unsafe else "Safety: Safe\nCategories: None"
    return verdict + ("\nRefusal: No" if conversation[-1]["role"] == "assistant" else "")


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    """The server's root URL, as a newcomer copies it from the banner's host and port."""
    with serving(Guard(ScriptedBackend(keyword_verdict, name="kw"))) as url:
        yield url


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_checks_and_streams_agree_on_a_base_url_with_or_without_v1(root, suffix):
    guard = Guard.remote(root + suffix, model="kw", stream=True, policy=Policy(on_error="allow"), cache_size=0)
    try:
        d = guard.check_prompt(BOMB)
        assert (d.allowed, d.reason) == (False, "unsafe"), d  # was allowed, flagged guard_error (HTTP 404)
        assert guard.check_prompt("What is the capital of France?").reason == "safe"
        with guard.stream("Where is Paris?", holdback=2) as monitor:
            assert monitor.feed("Paris is in France.") + monitor.finish() == "Paris is in France."
    finally:
        guard.close()


async def test_async_checks_on_a_base_url_without_v1(root):
    guard = Guard.remote(root, model="kw", cache_size=0)
    try:
        assert (await guard.acheck_prompt(BOMB)).reason == "unsafe"
    finally:
        await guard.aclose()


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://127.0.0.1:notaport/v1", "not a valid URL"),
        ("http://127.0.0.1:9 /v1", "not a valid URL"),
        ("http://[::1/v1", "not a valid URL"),
        ("http://[v1.x]:80/v1", "no IPv6 address"),  # an IPvFuture literal urlsplit accepts (httpx does not)
        ("http://127.0.0.1:9?key=1", "query or a fragment"),  # was: requests to "...?key=1/v1/chat/completions"
        ("http://", "names no host"),
        ("http://127.0.0.1:9/v1\n", "whitespace"),
        ("http://127.0.0.1:0/v1", "port 0"),  # rt52f F4: accepted, failed at the first check
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["checks", "streams"])
def test_a_bad_base_url_is_refused_when_the_guard_is_built(url, says, stream):
    with pytest.raises(ValueError, match=says):
        Guard.remote(url, model="kw", stream=stream)
    with pytest.raises(ValueError, match=says):
        Guard.remote("http://127.0.0.1:9/v1", model="kw", stream=[url])


@pytest.mark.parametrize("stream", [[], "", 0], ids=["empty list", "empty string", "zero"])
def test_an_empty_stream_setting_is_refused_not_read_as_no_streams(stream):
    """Before: accepted, and the guard had no stream backend at all (streams then judged by Gen windows on
    the checks' engine, or refused with a message about stream_options)."""
    with pytest.raises(ValueError, match="stream must be"):
        Guard.remote("http://127.0.0.1:9/v1", model="kw", stream=stream)


@pytest.mark.parametrize("stream", [False, None])
def test_false_or_none_means_no_stream_server(stream):
    assert Guard.remote("http://127.0.0.1:9/v1", model="kw", stream=stream).stream_backend is None


def test_one_stream_server_written_two_ways_is_one_replica():
    guard = Guard.remote("http://127.0.0.1:9/v1", model="kw", stream=["ws://127.0.0.1:9", "http://127.0.0.1:9/v1/"])
    assert guard.stream_backend.urls == ("ws://127.0.0.1:9/v1/stream",)  # was: the same URL twice
