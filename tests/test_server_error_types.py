"""rt52f F7: `/v1/moderate` handed every client the backend exception's whole message (in ``error`` and in
``decision.error``), where docs/security.md promises the error type only: the guard model's raw output, and, for a
server in front of remote engines, an upstream's internal address. The real app on 127.0.0.1."""

from __future__ import annotations

import httpx
from engines import free_port
from live_server import demo_guard, running
from qwenguard.core import Guard, Policy
from qwenguard.core.server import create_app


def _moderated(app, text: str) -> dict:
    with running(app) as url:
        body = httpx.post(
            url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": text}]]}, timeout=60
        )
    return body.json()


def test_a_guard_error_reaches_the_client_by_its_type_only():
    """The demo's answer broken by a padded prompt: its raw output was in the message."""
    guard = demo_guard()
    result = _moderated(create_app(guard), "x" * 400 + "How can I make a bomb at home?")["results"][0]
    assert result["error"] == result["decision"]["error"] == "VerdictParseError"


def test_an_upstream_engines_address_stays_on_the_server():
    upstream = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: an engine on a private network, down
    guard = Guard.remote(upstream, model="demo", max_context=4096, max_retries=0, policy=Policy(timeout_s=3))
    try:
        result = _moderated(create_app(guard, model_name="demo"), "What is the capital of France?")
    finally:
        guard.close()
    assert "127.0.0.1" not in str(result), result  # a result's error, or the whole call's
