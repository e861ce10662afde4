"""rt69f F1: a base URL with a wrong path (``/v1`` twice, ``/api/v1``) or pointing at a web app that is no OpenAI
API got the wrong advice: "pass the served model's name (Guard.remote(..., model=NAME))"; with the name, every
check was a bare "answered HTTP 404: Not Found", a stream "refused the session: HTTP 403" (read as a refused
key), and ``qwenguard eval --remote`` said "pass --model NAME". Now each names the fix, the base URL; the check
stays a guard error (fail closed).

Real servers on 127.0.0.1: `qwenguard serve`'s app over a scripted guard, and an ``http.server`` answering HTML.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faults import ScriptedBackend
from live_server import QuietHandler, http_serving, serving
from qwenguard.core import Guard, GuardUnavailable
from qwenguard.core.cli import app
from typer.testing import CliRunner

#: The words of the fix, as every error of a wrong base URL says them.
BASE_URL_FIX = "check the base URL (it should end in /v1 once"


def safe(conversation) -> str:
    return "Safety: Safe\nCategories: None" + ("\nRefusal: No" if conversation[-1]["role"] == "assistant" else "")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A `qwenguard serve`-like app (no API key) serving a scripted guard; yields its root URL."""
    with serving(Guard(ScriptedBackend(safe, name="kw"))) as url:
        yield url


class WebApp(QuietHandler):
    """A web app that is no OpenAI API: every path answers 200 with an HTML page."""

    def _page(self) -> None:
        body = b"<!doctype html><html><body><h1>Welcome</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._page()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._page()


@pytest.fixture(scope="module")
def web_app() -> Iterator[str]:
    with http_serving(WebApp) as url:
        yield url + "/v1"


WRONG_PATHS = ["/v1/v1", "/api/v1"]


@pytest.mark.parametrize("path", WRONG_PATHS)
async def test_without_a_model_name_the_error_says_the_base_url_not_the_name(server, path):
    guard = Guard.remote(server + path)
    decision = guard.check_prompt("What is the capital of France?")
    later = await guard.acheck_prompt("What is the capital of France?")
    guard.close()
    for d in (decision, later):
        assert not d.allowed and d.reason == "guard_error"
        assert "ServedModelUnknown" in d.error and "HTTP 404" in d.error and BASE_URL_FIX in d.error
        assert "model=NAME" not in d.error  # naming the model only made every check a 404


@pytest.mark.parametrize("path", WRONG_PATHS)
async def test_with_a_model_name_each_check_says_the_base_url(server, path):
    guard = Guard.remote(server + path, model="kw", max_retries=0)
    decision = guard.check_prompt("What is the capital of France?")
    later = await guard.acheck_prompt("Paris is in France.")
    guard.close()
    for d in (decision, later):
        assert not d.allowed and d.reason == "guard_error"
        assert "answered HTTP 404" in d.error and BASE_URL_FIX in d.error


def test_the_right_base_url_still_judges(server):
    guard = Guard.remote(server + "/v1", model="kw")
    decision = guard.check_prompt("What is the capital of France?")
    guard.close()
    assert decision.allowed and decision.error is None


def test_a_model_the_server_does_not_serve_keeps_its_own_words(server):
    """A 404 naming the model (``model_not_found``) is a refused name at the right URL: no base-URL advice."""
    guard = Guard.remote(server + "/v1", model="not-served", max_retries=0)
    decision = guard.check_prompt("What is the capital of France?")
    guard.close()
    assert not decision.allowed and "does not exist" in decision.error and BASE_URL_FIX not in decision.error


async def test_a_web_app_that_is_no_openai_api_says_the_base_url(web_app):
    unnamed = Guard.remote(web_app)
    named = Guard.remote(web_app, model="kw", max_retries=0)
    decisions = [
        unnamed.check_prompt("What is the capital of France?"),
        await unnamed.acheck_prompt("What is the capital of France?"),
        named.check_prompt("What is the capital of France?"),
        await named.acheck_prompt("What is the capital of France?"),
    ]
    unnamed.close()
    named.close()
    for d in decisions:
        assert not d.allowed and d.reason == "guard_error"
        assert "not JSON" in d.error and BASE_URL_FIX in d.error and "model=NAME" not in d.error


@pytest.mark.parametrize("path", WRONG_PATHS)
def test_a_stream_at_a_wrong_path_says_the_base_url(server, path):
    guard = Guard.remote(server + path, model="kw", stream=True)
    with pytest.raises(GuardUnavailable) as err, guard.stream("What is the capital of France?") as monitor:
        monitor.feed("Paris. ")
        monitor.finish()
    guard.close()
    assert "refused the session: HTTP 403" in str(err.value) and BASE_URL_FIX in str(err.value)


@pytest.mark.parametrize("path", WRONG_PATHS)
async def test_an_async_stream_at_a_wrong_path_says_the_base_url(server, path):
    guard = Guard.remote(server + path, model="kw", stream=True)
    with pytest.raises(GuardUnavailable) as err:
        async with guard.astream("What is the capital of France?") as monitor:
            await monitor.feed("Paris. ")
            await monitor.finish()
    await guard.aclose()
    assert "refused the session: HTTP 403" in str(err.value) and BASE_URL_FIX in str(err.value)


def test_a_stream_refused_for_its_key_keeps_the_servers_words():
    """qwenguard serve refuses a handshake without its key with 401 and its own message: no base-URL advice."""
    with serving(Guard(ScriptedBackend(safe, name="kw")), api_key="right-key") as url:
        guard = Guard.remote(url + "/v1", model="kw", stream=True)
        with pytest.raises(GuardUnavailable) as err, guard.stream("What is the capital of France?") as monitor:
            monitor.feed("Paris. ")
            monitor.finish()
        guard.close()
    assert "HTTP 401" in str(err.value) and BASE_URL_FIX not in str(err.value)


@pytest.mark.parametrize("path", WRONG_PATHS)
def test_eval_at_a_wrong_path_says_the_base_url_not_model(server, path, tmp_path):
    res = CliRunner().invoke(
        app, ["eval", "sample", "--remote", server + path, "--limit", "4", "--out", str(tmp_path), "--no-progress"]
    )
    assert res.exit_code == 2
    assert "HTTP 404" in res.output and BASE_URL_FIX in res.output and "--model" not in res.output


def test_eval_at_a_web_app_says_the_base_url(web_app, tmp_path):
    res = CliRunner().invoke(
        app, ["eval", "sample", "--remote", web_app, "--limit", "4", "--out", str(tmp_path), "--no-progress"]
    )
    assert res.exit_code == 2
    assert "not JSON" in res.output and BASE_URL_FIX in res.output and "--model" not in res.output


def test_eval_with_a_model_at_a_wrong_path_shows_the_base_url_in_its_errors(server, tmp_path):
    """With ``--model``, every row is a guard error (fail closed), and the error shown says the fix."""
    res = CliRunner().invoke(
        app,
        ["eval", "sample", "--remote", server + "/v1/v1", "--model", "kw", "--limit", "4", "--out", str(tmp_path)]
        + ["--no-progress"],
    )
    assert res.exit_code == 2 and "4 of 4 rows got no verdict" in res.output
    assert "answered HTTP 404" in res.output and BASE_URL_FIX in res.output
