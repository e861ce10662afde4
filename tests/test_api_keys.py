"""An API key that cannot work is refused where it is given, with the reason (a red-team audit): a key read
from a secret file keeps its trailing newline, and an ``Authorization`` header cannot carry it. The client
took it and every check failed as "unreachable" (streams: a 401); a non-ASCII key raised a bare
``UnicodeEncodeError`` from the HTTP client; a server given such a key could never be reached by anyone.
"""

from __future__ import annotations

import pytest
from faults import ScriptedBackend
from live_server import serving
from qwenguard.core import Guard
from qwenguard.core.cli import app
from qwenguard.core.server import create_app
from typer.testing import CliRunner

KEY = "s3cret-key"
BAD = {
    "newline from a file": (KEY + "\n", "trailing whitespace"),
    "space inside": ("s3cret key", "visible ASCII"),
    "not ASCII": ("clé-secrète", "visible ASCII"),
}


def safe(conversation) -> str:
    return "Safety: Safe\nCategories: None"


@pytest.mark.parametrize("key, says", BAD.values(), ids=list(BAD))
def test_a_client_given_a_key_no_header_can_carry_is_refused_when_built(key, says):
    with serving(Guard(ScriptedBackend(safe, name="kw")), api_key=KEY) as url:
        with pytest.raises(ValueError, match=says):
            Guard.remote(url + "/v1", model="kw", api_key=key)  # was: every check "unreachable"
        guard = Guard.remote(url + "/v1", model="kw", api_key=KEY)  # the key itself works
        try:
            assert guard.check_prompt("hello").reason == "safe"
        finally:
            guard.close()


@pytest.mark.parametrize("key, says", BAD.values(), ids=list(BAD))
def test_a_server_given_a_key_no_client_can_send_is_refused_when_built(key, says):
    with pytest.raises(ValueError, match=says):
        create_app(Guard(ScriptedBackend(safe, name="kw")), api_key=key)


def test_serve_with_a_key_read_from_a_secret_file_says_so_in_one_line(monkeypatch):
    from qwenguard.core import server

    monkeypatch.setattr(server, "serve", lambda guard, **kw: None)  # it would have served, unreachable
    monkeypatch.setenv("QWENGUARD_API_KEY", KEY + "\n")
    result = CliRunner().invoke(app, ["serve", "--model", "demo"])
    assert result.exit_code != 0 and "newline" in result.output, result.output
    assert "Traceback" not in result.output


def test_eval_against_a_server_with_such_a_key_says_so_in_one_line(tmp_path):
    args = ["eval", "sample", "--remote", "http://127.0.0.1:9/v1", "--no-progress", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--api-key", KEY + "\n"])
    assert result.exit_code != 0 and "newline" in result.output, result.output
