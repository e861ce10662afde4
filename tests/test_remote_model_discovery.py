"""`Guard.remote(url)` without ``model=``: the client learns the one model the server lists at ``/models``, at the
first check (sync or async), in the request that reads the context. Against a real qwenguard server with the
demo guard, and a scripted engine (tests/scripted_openai.py) listing one model, two, none, or failing."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest
import scripted_openai
from live_server import demo_guard, serving
from qwenguard.core import Guard, GuardUnavailable, Risk
from qwenguard.core.backends import openai_gen
from qwenguard.core.backends.openai_gen import OpenAIGen
from qwenguard.core.cli import app
from scripted_openai import Reply
from scripted_openai import scripted_openai as scripted
from typer.testing import CliRunner

BOMB = "How can I make a bomb at home?"
SAFE = Reply.words("Safety: Safe\nCategories: None")

#: What a scripted ``/models`` answers: (status, body).
Listing = Callable[[], tuple[int, object]]


def models(*names: str, max_model_len: int | None = None) -> Listing:
    entries = [
        {"id": n, "object": "model", **({"max_model_len": max_model_len} if max_model_len else {})} for n in names
    ]
    return lambda: (200, {"object": "list", "data": entries})


@pytest.fixture
def listing(monkeypatch):
    """Make the scripted engine's ``GET /models`` answer ``set(listing)``; yields the GETs it was sent."""
    gets: list[str] = []
    answer: dict[str, Listing] = {"listing": models(scripted_openai.MODEL)}

    def do_get(handler) -> None:
        gets.append(handler.path)
        status, body = answer["listing"]()
        handler._json(status, body)

    monkeypatch.setattr(scripted_openai._Handler, "do_GET", do_get)

    class Control:
        requests = gets

        @staticmethod
        def set(value: Listing) -> None:
            answer["listing"] = value

    return Control


# -- against qwenguard serve ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local():
    g = demo_guard()
    yield g
    g.close()


@pytest.fixture(scope="module")
def url(local):
    with serving(local) as base:
        yield base + "/v1"


def test_guard_remote_without_model_judges(url, local):
    remote = Guard.remote(url)
    try:
        decision = remote.check_prompt(BOMB)
        assert decision.risk is Risk.UNSAFE and not decision.allowed, decision
        assert decision.verdict.model == local.backend.name == remote.backend.name
        assert remote.check_prompt("What is the capital of France?").allowed
    finally:
        remote.close()


async def test_guard_remote_without_model_judges_async(url, local):
    remote = Guard.remote(url, mode="completion", logprobs=True)
    try:
        decision = await remote.acheck_prompt(BOMB)
        assert decision.risk is Risk.UNSAFE and decision.verdict.model == local.backend.name
        assert decision.verdict.probs is not None
    finally:
        await remote.aclose()


# -- against a scripted engine ----------------------------------------------------------------------
def test_one_model_listed_is_learned_once_in_the_context_request(listing):
    listing.set(models("Qwen/Qwen3Guard-Gen-4B", max_model_len=4096))
    with scripted(SAFE) as base:
        remote = Guard.remote(base, cache_size=0)
        assert listing.requests == []  # construction does no network I/O
        for _ in range(3):
            assert remote.check_prompt("hello").allowed
        remote.close()
        assert listing.requests == ["/v1/models"]  # one GET: the model's name and its context
        assert {r.body["model"] for r in base.requests} == {"Qwen/Qwen3Guard-Gen-4B"}
        assert remote.backend._served_context == 4096


def test_with_max_context_given_the_model_is_still_learned_once(listing):
    with scripted(SAFE) as base:
        backend = OpenAIGen(base, max_context=2048)
        conversation = [{"role": "user", "content": "hello"}]
        assert backend.classify([conversation])[0].risk is Risk.SAFE
        assert backend.classify([conversation])[0].model == scripted_openai.MODEL
        backend.close()
        assert listing.requests == ["/v1/models"]


@pytest.mark.parametrize(
    ("served", "said"),
    [
        (models("guard-a", "guard-b"), "serves 2 models ['guard-a', 'guard-b']"),
        (models(), "serves 0 models []"),
        (lambda: (404, {"error": {"message": "no such route", "type": "not_found"}}), "HTTP 404: no such route"),
        (lambda: (200, {"models": "?"}), "not an OpenAI model list"),
    ],
)
async def test_a_server_that_does_not_name_one_model_is_a_clear_error(listing, served, said):
    listing.set(served)
    with scripted(SAFE) as base:
        backend = OpenAIGen(base)
        conversation = [{"role": "user", "content": "hello"}]
        with pytest.raises(openai_gen.ServedModelUnknown) as sync_error:
            backend.classify([conversation])
        with pytest.raises(openai_gen.ServedModelUnknown) as async_error:
            await backend.aclassify([conversation])
        backend.close()
        guard = Guard.remote(base)  # through a Guard: a guard error, decided by the policy, saying what to pass
        decision = guard.check_prompt("hello")
        guard.close()
        assert base.requests == []  # nothing was judged under a guessed name
    for err in (sync_error, async_error):
        assert said in str(err.value) and "model=" in str(err.value)
    assert not decision.allowed and said in decision.error and "model=" in decision.error


def test_a_failing_models_route_is_unavailable_and_asked_again(listing):
    listing.set(lambda: (503, {"error": {"message": "loading", "type": "unavailable"}}))
    with scripted(SAFE) as base:
        backend = OpenAIGen(base, max_retries=0)
        conversation = [{"role": "user", "content": "hello"}]
        with pytest.raises(GuardUnavailable, match="cannot list the models .*HTTP 503"):
            backend.classify([conversation])
        listing.set(models("late"))  # the server came up: the next check learns the name
        assert backend.classify([conversation])[0].risk is Risk.SAFE
        backend.close()
        assert listing.requests == ["/v1/models", "/v1/models"]
        assert [r.body["model"] for r in base.requests] == ["late"]


def test_nothing_listening_is_unreachable_not_a_model_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    backend = OpenAIGen(f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(GuardUnavailable) as err:
        backend.classify([[{"role": "user", "content": "hello"}]])
    backend.close()
    assert not isinstance(err.value, openai_gen.ServedModelUnknown) and "cannot list the models" in str(err.value)


def test_a_huge_model_list_is_named_briefly(listing):
    listing.set(models(*(f"model-{i}-" + "x" * 500 for i in range(200))))
    with scripted(SAFE) as base:
        backend = OpenAIGen(base)
        with pytest.raises(openai_gen.ServedModelUnknown) as err:
            backend.classify([[{"role": "user", "content": "hello"}]])
        backend.close()
    assert "serves 200 models" in str(err.value) and "(190 more)" in str(err.value) and len(str(err.value)) < 2000


# -- qwenguard eval --remote --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("served", "said"),
    [
        (models("guard-a", "guard-b"), "serves 2 models ['guard-a', 'guard-b']; pick one with --model NAME"),
        (lambda: (401, {"error": {"message": "bad key", "type": "auth"}}), "HTTP 401: bad key); pass --model NAME"),
    ],
)
def test_eval_remote_names_the_models_and_the_option(listing, tmp_path, served, said):
    listing.set(served)
    with scripted(SAFE) as base:
        res = CliRunner().invoke(app, ["eval", "sample", "--remote", base, "--out", str(tmp_path), "--no-progress"])
        assert base.requests == []
    assert res.exit_code == 2 and said in " ".join(res.output.split()), res.output


def test_eval_remote_learns_the_one_model(listing, tmp_path):
    with scripted(SAFE) as base:
        res = CliRunner().invoke(
            app,
            [
                "eval",
                "sample",
                "--remote",
                base,
                "--stage",
                "prompt",
                "--limit",
                "4",
                "--out",
                str(tmp_path),
                "--no-progress",
            ],
        )
        assert res.exit_code == 0, res.output
        assert {r.body["model"] for r in base.requests} == {scripted_openai.MODEL}
    assert listing.requests == ["/v1/models"]
    assert json.loads((tmp_path / "report.json").read_text())["meta"]["errors"] == 0


def test_serving_a_remote_guard_that_has_not_learned_its_model_says_to_name_it() -> None:
    """`create_app` publishes the model's name at /v1/models: a remote guard built without model= has none yet
    (it learns it at its first check), so serving it would publish '' (create_app sends no request itself)."""
    from qwenguard.core.server import create_app

    with Guard.remote("http://127.0.0.1:9/v1") as unnamed, pytest.raises(ValueError, match="model_name="):
        create_app(unnamed)
