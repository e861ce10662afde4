"""`Guard.remote` mistakes of a newcomer's first hour (rt50a F10, F14), against a real ``qwenguard serve`` app:
the comma-separated replica list ``qwenguard eval --remote`` takes, and the route URL a curl example shows,
are refused when the guard is built (every check was an unexplained HTTP 404); a server that wants an API
key the client did not send is answered with "pass the API key", not "pass the model's name"."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import test_remote_urls
from faults import ScriptedBackend
from live_server import serving
from qwenguard.core import Guard, Policy
from qwenguard.core.cli import app
from test_remote_urls import BOMB, keyword_verdict
from typer.testing import CliRunner

KEY = "sekrit-key-for-tests"
root = test_remote_urls.root  # the same served guard (a fixture)


@pytest.fixture(scope="module")
def keyed() -> Iterator[str]:
    with serving(Guard(ScriptedBackend(keyword_verdict, name="kw")), api_key=KEY) as url:
        yield url + "/v1"


def test_a_comma_separated_url_string_is_refused_with_the_list_form(root):
    with pytest.raises(ValueError, match=r"holds several URLs: pass a list of URLs"):
        Guard.remote(f"{root}/v1,{root}/v1", model="kw", policy=Policy(on_error="allow"))
    with pytest.raises(ValueError, match=r"holds several URLs"):
        Guard.remote("http://a:8000/v1,http://b:8000/v1", model="kw")


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions", "/v1/moderate", "/v1/models/"])
def test_a_route_url_is_refused_naming_the_base_url(root, route):
    with pytest.raises(ValueError, match=r"not the base URL") as caught:
        Guard.remote(root + route, model="kw", policy=Policy(on_error="allow"))
    assert repr(root + "/v1") in str(caught.value), str(caught.value)


def test_the_list_form_and_the_base_url_work(root):
    guard = Guard.remote([f"{root}/v1", root], model="kw", cache_size=0)
    try:
        assert guard.check_prompt(BOMB).reason == "unsafe"
    finally:
        guard.close()


def test_a_missing_api_key_is_answered_with_the_key_not_the_model_name(keyed):
    guard = Guard.remote(keyed, policy=Policy(on_error="block"))  # no api_key=, no model=
    try:
        d = guard.check_prompt("hello")
    finally:
        guard.close()
    assert d.reason == "guard_error" and "401" in (d.error or ""), d
    advice = (d.error or "").rsplit("):", 1)[-1]
    assert "api_key=" in advice and "model=" not in advice, d.error


def test_the_key_given_the_model_is_learned(keyed):
    guard = Guard.remote(keyed, api_key=KEY, cache_size=0)
    try:
        assert guard.check_prompt(BOMB).reason == "unsafe"
    finally:
        guard.close()


def test_eval_remote_without_the_key_says_pass_the_key(keyed, tmp_path, monkeypatch):
    monkeypatch.delenv("QWENGUARD_API_KEY", raising=False)
    res = CliRunner().invoke(app, ["eval", "sample", "--remote", keyed, "--out", str(tmp_path), "--no-progress"])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "HTTP 401" in said, said
    assert "--api-key" in said and "--model" not in said, said
