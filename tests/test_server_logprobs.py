"""Logprobs from qwenguard serve's OpenAI routes, as a client asks for them: the real `Guard.remote` client, the
real ``openai`` client (chat and completions, streamed and not) and ``qwenguard eval --remote``, against a real
server with the demo guard. The server's probabilities are the verdict's (`/v1/moderate` answers them)."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest
from faults import ScriptedBackend
from live_server import demo_guard, serving
from qwenguard.core import Guard, Risk, render_prompt
from qwenguard.core.backends.openai_wire import read_logprobs
from qwenguard.core.cli import app
from typer.testing import CliRunner

BOMB = "How can I make a bomb at home?"
PARIS_Q = "What is the capital of France?"
LABEL_TOKENS = {" Safe", " Unsafe", " Controversial"}
#: The demo model's first call on a busy shared CPU can take tens of seconds.
TIMEOUT = 120


@pytest.fixture(scope="module")
def guard():
    g = demo_guard()
    yield g
    g.close()


@pytest.fixture(scope="module")
def url(guard):
    with serving(guard) as base:
        yield base + "/v1"


def moderated_probs(url: str, text: str) -> dict[Risk, float]:
    """The verdict's probs as the server's /v1/moderate answers them."""
    body = {"conversations": [[{"role": "user", "content": text}]]}
    result = httpx.post(url + "/moderate", json=body, timeout=TIMEOUT).json()["results"][0]
    assert result["probs"] is not None
    return {Risk(k): v for k, v in result["probs"].items()}


def assert_same_probs(got, want) -> None:
    assert got is not None
    assert set(got) == set(want)
    for risk in want:
        assert got[risk] == pytest.approx(want[risk], rel=1e-9, abs=1e-12)


# -- our own client ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_guard_remote_with_logprobs_gets_the_servers_probs(url, guard, mode):
    want = moderated_probs(url, BOMB)
    remote = Guard.remote(url, model=guard.backend.name, mode=mode, logprobs=True, cache_size=0)
    try:
        verdict = remote.check_prompt(BOMB).verdict
        assert verdict is not None and verdict.risk is Risk.UNSAFE
        assert_same_probs(verdict.probs, want)
    finally:
        remote.close()


async def test_guard_remote_async_with_logprobs_gets_the_servers_probs(url, guard):
    want = moderated_probs(url, PARIS_Q)
    remote = Guard.remote(url, model=guard.backend.name, logprobs=True, cache_size=0)
    try:
        verdict = (await remote.acheck_prompt(PARIS_Q)).verdict
        assert verdict is not None and verdict.risk is Risk.SAFE
        assert_same_probs(verdict.probs, want)
    finally:
        await remote.aclose()


def test_eval_remote_against_qwenguard_serve_has_roc_auc(url, tmp_path):
    runner = CliRunner()
    args = ["--limit", "24", "--no-progress"]
    remote = runner.invoke(app, ["eval", "sample", "--remote", url, "--out", str(tmp_path / "remote"), *args])
    assert remote.exit_code == 0, remote.output
    local = runner.invoke(app, ["eval", "sample", "--out", str(tmp_path / "local"), *args])
    assert local.exit_code == 0, local.output
    got = json.loads((tmp_path / "remote" / "report.json").read_text())
    want = json.loads((tmp_path / "local" / "report.json").read_text())
    for name in ("strict", "loose"):
        assert got["mappings"][name]["scored_rows"] == 24
        assert got["mappings"][name]["roc_auc"] is not None
        assert got["mappings"][name]["roc_auc"] == pytest.approx(want["mappings"][name]["roc_auc"])
        assert got["mappings"][name]["best_f1_threshold"] is not None


# -- the openai client: chat ------------------------------------------------------------------------
def test_the_openai_client_asks_for_logprobs_and_gets_the_verdicts_probs(url, guard):
    want = moderated_probs(url, BOMB)
    client = openai.OpenAI(base_url=url, api_key="unused", timeout=TIMEOUT)
    out = client.chat.completions.create(
        model=guard.backend.name, messages=[{"role": "user", "content": BOMB}], logprobs=True, top_logprobs=5
    )
    choice = out.choices[0]
    steps = choice.logprobs.content
    assert "".join(s.token for s in steps) == choice.message.content
    assert all(bytes(s.bytes) == s.token.encode() for s in steps)
    (label,) = [s for s in steps if s.logprob is not None]  # only the label's logprob is known
    assert label.token == " Unsafe" and label.logprob == pytest.approx(math.log(want[Risk.UNSAFE]))
    assert {t.token for t in label.top_logprobs} == LABEL_TOKENS  # three alternatives, not the five asked
    logprobs = [t.logprob for t in label.top_logprobs]
    assert logprobs == sorted(logprobs, reverse=True)
    for top in label.top_logprobs:
        risk = Risk(top.token.strip().lower())
        assert top.logprob == pytest.approx(math.log(want[risk])) and bytes(top.bytes) == top.token.encode()
    assert all(s.top_logprobs == [] for s in steps if s is not label)
    assert_same_probs(read_logprobs(choice.model_dump()), want)


def test_top_logprobs_lists_that_many_label_alternatives(url, guard):
    client = openai.OpenAI(base_url=url, api_key="unused", timeout=TIMEOUT)
    for n in (0, 1, 2):
        out = client.chat.completions.create(
            model=guard.backend.name, messages=[{"role": "user", "content": BOMB}], logprobs=True, top_logprobs=n
        )
        (label,) = [s for s in out.choices[0].logprobs.content if s.logprob is not None]
        assert len(label.top_logprobs) == n
    plain = client.chat.completions.create(model=guard.backend.name, messages=[{"role": "user", "content": BOMB}])
    assert plain.choices[0].logprobs is None  # not asked: none, as before


async def test_the_openai_client_streams_logprobs(url, guard):
    want = moderated_probs(url, PARIS_Q)
    client = openai.AsyncOpenAI(base_url=url, api_key="unused", timeout=TIMEOUT)
    stream = await client.chat.completions.create(
        model=guard.backend.name,
        messages=[{"role": "user", "content": PARIS_Q}],
        logprobs=True,
        top_logprobs=3,
        stream=True,
    )
    text, steps = "", []
    async for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        if chunk.choices[0].logprobs is not None:
            steps += chunk.choices[0].logprobs.content
    await client.close()
    assert "".join(s.token for s in steps) == text and text.startswith("Safety: Safe")
    choice = {"logprobs": {"content": [s.model_dump() for s in steps]}}
    assert_same_probs(read_logprobs(choice), want)


# -- the openai client: completions -----------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_the_openai_client_gets_completion_logprobs(url, guard, stream):
    want = moderated_probs(url, BOMB)
    client = openai.OpenAI(base_url=url, api_key="unused", timeout=TIMEOUT)
    prompt = render_prompt([{"role": "user", "content": BOMB}])
    out = client.completions.create(model=guard.backend.name, prompt=prompt, logprobs=5, stream=stream)
    chunks = list(out) if stream else [out]
    text = "".join(c.choices[0].text for c in chunks)
    (lp,) = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs is not None]
    assert "".join(lp.tokens) == text
    assert lp.text_offset == [text.index(t, at) for t, at in zip(lp.tokens, lp.text_offset)]
    at = lp.tokens.index(" Unsafe")
    assert [i for i, v in enumerate(lp.token_logprobs) if v is not None] == [at]
    assert set(lp.top_logprobs[at]) == LABEL_TOKENS
    for token, logprob in lp.top_logprobs[at].items():
        assert logprob == pytest.approx(math.log(want[Risk(token.strip().lower())]))
    assert_same_probs(read_logprobs({"logprobs": lp.model_dump()}), want)


# -- no probs, bounds ---------------------------------------------------------------------------------
def test_a_verdict_without_probs_answers_null_logprobs():
    """A backend that cannot read probabilities: the server says none, never made-up ones."""
    scripted = Guard(ScriptedBackend(lambda c: "Safety: Unsafe\nCategories: Violent"), cache_size=0)
    with serving(scripted) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=TIMEOUT)
        chat = client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": BOMB}], logprobs=True, top_logprobs=5
        )
        assert chat.choices[0].message.content.startswith("Safety: Unsafe") and chat.choices[0].logprobs is None
        prompt = render_prompt([{"role": "user", "content": BOMB}])
        completion = client.completions.create(model="scripted", prompt=prompt, logprobs=5)
        assert completion.choices[0].logprobs is None
        remote = Guard.remote(base + "/v1", model="scripted", logprobs=True)
        verdict = remote.check_prompt(BOMB).verdict
        assert verdict is not None and verdict.risk is Risk.UNSAFE and verdict.probs is None
        remote.close()


def test_a_verdict_judged_in_windows_answers_its_probs():
    windowed = demo_guard(max_context=160)  # force several windows
    long_text = " ".join(["The Eiffel Tower is in Paris."] * 40) + " " + BOMB
    with serving(windowed) as base:
        want = moderated_probs(base + "/v1", long_text)
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", timeout=TIMEOUT)
        out = client.chat.completions.create(
            model=windowed.backend.name,
            messages=[{"role": "user", "content": long_text}],
            logprobs=True,
            top_logprobs=3,
        )
        assert "---" not in out.choices[0].message.content
        assert_same_probs(read_logprobs(out.choices[0].model_dump()), want)
    windowed.close()


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/chat/completions", {"logprobs": True, "top_logprobs": 21}),
        ("/chat/completions", {"logprobs": True, "top_logprobs": -1}),
        ("/chat/completions", {"top_logprobs": 3}),  # alternatives without logprobs, as OpenAI refuses them
        ("/completions", {"logprobs": 21}),
        ("/completions", {"logprobs": -1}),
    ],
)
def test_logprobs_past_their_bounds_are_refused(url, guard, path, extra):
    if path == "/chat/completions":
        body = {"model": guard.backend.name, "messages": [{"role": "user", "content": BOMB}], **extra}
    else:
        body = {"model": guard.backend.name, "prompt": render_prompt([{"role": "user", "content": BOMB}]), **extra}
    r = httpx.post(url + path, json=body, timeout=TIMEOUT)
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error"
    assert "logprobs" in r.json()["error"]["message"]
