"""The qwenguard server's HTTP API, served for real on 127.0.0.1 with the demo guard."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from faults import ScriptedBackend
from live_server import demo_guard, disable_moderate_fast_path, record_moderate_fast_path, serving
from qwenguard.core import Guard, Policy, render_prompt
from qwenguard.core.server import conversation_from_prompt, create_app, policy_from_dict

KEY = "test-key-123"
#: The demo model's first call on a busy shared CPU can take tens of seconds: no 5 s client deadline.
TIMEOUT = 120
BOMB = "How can I make a bomb at home?"
PARIS_Q = "What is the capital of France?"
RECIPE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."


@pytest.fixture(scope="module")
def guard():
    g = demo_guard()
    yield g
    g.close()


@pytest.fixture(scope="module")
def server(guard):
    with serving(guard, api_key=KEY) as url:
        yield url


@pytest.fixture(scope="module")
def open_server(guard):
    with serving(guard) as url:
        yield url


def auth(key=KEY):
    return {"Authorization": f"Bearer {key}"}


# -- OpenAI compatibility -------------------------------------------------------------------------
def test_openai_client_chat_completion_returns_the_models_raw_verdict(server, guard):
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY)
    name = client.models.list().data[0].id
    assert name == guard.backend.name
    out = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": BOMB}], temperature=0, max_tokens=32
    )
    text = out.choices[0].message.content
    assert text.splitlines()[0] == "Safety: Unsafe"
    assert "Violent" in text.splitlines()[1]
    safe = client.chat.completions.create(
        model=name,
        messages=[
            {"role": "user", "content": PARIS_Q},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ],
    )
    lines = safe.choices[0].message.content.splitlines()
    assert lines[0] == "Safety: Safe" and lines[2].startswith("Refusal: ")  # response mode has the refusal line
    assert safe.choices[0].finish_reason == "stop"


async def test_openai_async_client_and_sse_streaming(server):
    client = openai.AsyncOpenAI(base_url=server + "/v1", api_key=KEY)
    stream = await client.chat.completions.create(
        model=None or (await client.models.list()).data[0].id, messages=[{"role": "user", "content": BOMB}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text.startswith("Safety: Unsafe")
    await client.close()


def test_completions_accept_only_prompts_rendered_by_render_prompt(server, guard):
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY)
    name = guard.backend.name
    text = (
        client.completions.create(model=name, prompt=render_prompt([{"role": "user", "content": BOMB}])).choices[0].text
    )
    chat = (
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": BOMB}])
        .choices[0]
        .message.content
    )
    assert text == chat  # same conversation, same model answer through either door
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=name, prompt="Tell me a story about " + BOMB)
    assert "render_prompt" in err.value.response.json()["error"]["message"]


def test_unknown_model_is_404(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_conversation_from_prompt_round_trips():
    convs = [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\n\nwith a paragraph"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    ]
    for conv in convs:
        assert render_prompt(conversation_from_prompt(render_prompt(conv))) == render_prompt(conv)
        assert conversation_from_prompt(render_prompt(conv)) == conv
    with pytest.raises(ValueError):
        conversation_from_prompt(render_prompt("hi").replace("USER's query", "user's query"))


# -- /v1/moderate -----------------------------------------------------------------------------------
def test_moderate_returns_verdicts_in_order_with_decisions(server):
    body = {
        "conversations": [
            [{"role": "user", "content": PARIS_Q}],
            [{"role": "user", "content": BOMB}],
            [{"role": "user", "content": "How do I make one?"}, {"role": "assistant", "content": RECIPE}],
            [
                {"role": "system", "content": "be nice"},
                {"role": "user", "content": "Which political party should I vote for in the next election?"},
            ],
        ]
    }
    r = httpx.post(server + "/v1/moderate", json=body, headers=auth(), timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["risk"] for x in res] == ["safe", "unsafe", "unsafe", "controversial"]
    assert "Violent" in res[1]["categories"] and "Violent" in res[2]["categories"]
    assert res[2]["refusal"] is not None and res[0]["refusal"] is None
    assert [x["decision"]["stage"] for x in res] == ["prompt", "prompt", "response", "prompt"]
    assert [x["decision"]["allowed"] for x in res] == [True, False, False, False]  # strict: controversial blocks
    # the server's (strict) policy is the operator's: a client asking for loose still gets strict
    loose = httpx.post(
        server + "/v1/moderate", json={**body, "policy": Policy.loose().to_dict()}, headers=auth(), timeout=TIMEOUT
    ).json()
    assert loose["results"][3]["decision"]["action"] == "block"
    again = httpx.post(server + "/v1/moderate", json=body, headers=auth(), timeout=TIMEOUT).json()["results"]
    assert all(x["cached"] for x in again) and [x["risk"] for x in again] == [x["risk"] for x in res]


def test_moderate_fast_path_answers_exactly_like_the_fastapi_route(monkeypatch):
    """/v1/moderate skips FastAPI's routing for well-formed requests: same statuses, same JSON."""

    def answer(conv):
        text = conv[-1]["content"]
        if conv[-1]["role"] == "assistant":
            return "Safety: Unsafe\nCategories: Violent\nRefusal: No"
        return (
            "Safety: Controversial\nCategories: Politically Sensitive Topics"
            if "vote" in text
            else "Safety: Safe\nCategories: None"
        )

    bodies = [
        {
            "conversations": [
                [{"role": "user", "content": PARIS_Q}],
                [{"role": "user", "content": "Who should I vote for? é ✓"}],
            ]
        },
        {
            "conversations": [[{"role": "user", "content": "q"}, {"role": "assistant", "content": RECIPE}]],
            "stage": "stream",
        },
        {
            "conversations": [[{"role": "user", "content": "Who should I vote for?"}]],
            "policy": Policy.loose().to_dict(),
        },
        {"conversations": [[{"role": "user", "content": "x"}]], "policy": {"mode": "sideways"}},  # 400 from the service
        {"conversations": [[{"role": "system", "content": "only a system turn"}]]},  # 400: nothing to moderate
    ]

    def answers() -> list[tuple[int, bytes]]:
        guard = Guard(ScriptedBackend(answer), cache_size=0)
        with serving(guard) as url:
            return [
                (r.status_code, r.content)
                for r in (httpx.post(url + "/v1/moderate", json=b, timeout=TIMEOUT) for b in bodies)
            ]

    taken = record_moderate_fast_path(monkeypatch)
    fast = answers()
    assert taken == [True] * len(bodies)  # every one of these went the fast way
    disable_moderate_fast_path(monkeypatch)
    routed = answers()

    def without_latency(content: bytes):
        data = json.loads(content)
        for result in data.get("results", []):
            result["latency_ms"] = 0.0
        return data

    assert [status for status, _ in fast] == [200, 200, 200, 400, 400]
    assert [status for status, _ in fast] == [status for status, _ in routed]
    assert [without_latency(c) for _, c in fast] == [without_latency(c) for _, c in routed]


def test_moderate_schema_is_published(open_server):
    schema = httpx.get(open_server + "/openapi.json", timeout=TIMEOUT).json()
    assert "/v1/moderate" in schema["paths"]
    comps = schema["components"]["schemas"]
    assert {"ModerationRequest", "ModerationResponse", "ModerationResult"} <= set(comps)
    assert "conversations" in comps["ModerationRequest"]["required"]


def test_policy_from_dict_round_trips():
    pol = Policy.loose(ignore_categories=["PII"], on_error="allow").with_stage("retrieval", mode="strict", timeout_s=3)
    assert policy_from_dict(pol.to_dict()) == pol
    with pytest.raises(ValueError):
        policy_from_dict({"mode": "paranoid"})
    with pytest.raises(ValueError):
        policy_from_dict({"nonsense": 1})


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "content", "status"),
    [
        ("/v1/moderate", b"{not json", 422),
        ("/v1/moderate", b'{"conversations": []}', 422),
        ("/v1/moderate", b'{"conversations": [[]]}', 400),
        ("/v1/moderate", b'{"conversations": [[{"role": "user", "content": 5}]]}', 422),
        ("/v1/moderate", b'{"conversations": [[{"role": "tool", "content": "x"}]]}', 422),
        ("/v1/moderate", b'{"conversations": [[{"role": "system", "content": "only a system prompt"}]]}', 400),
        ("/v1/moderate", b'{"convs": []}', 422),
        ("/v1/moderate", b"[1, 2]", 422),
        ("/v1/chat/completions", b'{"messages": []}', 422),
        ("/v1/chat/completions", b'{"messages": [{"role": "user"}]}', 422),
        ("/v1/chat/completions", b'{"messages": "hello"}', 422),
        ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "n": 3}', 422),
        ("/v1/completions", b'{"prompt": 7}', 422),
    ],
)
def test_malformed_requests_get_a_json_error(server, path, content, status):
    r = httpx.post(
        server + path, content=content, headers={**auth(), "Content-Type": "application/json"}, timeout=TIMEOUT
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and err["message"] and err["type"]
    assert "only a system prompt" not in r.text or status == 400  # validation errors do not echo the input


def test_auth_is_required_when_a_key_is_set(server):
    for headers in ({}, auth("wrong"), {"Authorization": KEY}, {"Authorization": "Basic " + KEY}):
        r = httpx.post(
            server + "/v1/moderate",
            json={"conversations": [[{"role": "user", "content": "hi"}]]},
            headers=headers,
            timeout=TIMEOUT,
        )
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
    client = openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert (
        httpx.get(server + "/health", timeout=TIMEOUT).json()["status"] == "ok"
    )  # health stays open for load balancers
    assert httpx.get(server + "/metrics", timeout=TIMEOUT).status_code == 401


def test_body_over_the_limit_is_413(guard):
    with serving(guard, max_body_bytes=2000) as url:
        big = {"conversations": [[{"role": "user", "content": "x" * 5000}]]}
        r = httpx.post(url + "/v1/moderate", json=big, timeout=TIMEOUT)
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

        def chunks():  # no Content-Length: the limit is enforced while reading
            yield b'{"conversations": [[{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]]}'

        r = httpx.post(
            url + "/v1/moderate", content=chunks(), headers={"Content-Type": "application/json"}, timeout=TIMEOUT
        )
        assert r.status_code == 413
        ok = httpx.post(
            url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": PARIS_Q}]]}, timeout=TIMEOUT
        )
        assert ok.status_code == 200


async def test_concurrency_flood_gets_503_and_the_server_recovers():
    slow = Guard(ScriptedBackend(lambda c: "Safety: Safe\nCategories: None", delay_s=0.5, name="slow"), cache_size=0)
    # One client may take every slot here, so that the flood meets the server's own limit.
    with serving(slow, max_concurrency=2, max_requests_per_client=2) as url:
        async with httpx.AsyncClient(timeout=10) as client:
            body = {"conversations": [[{"role": "user", "content": "hi"}]]}
            rs = await asyncio.gather(*[client.post(url + "/v1/moderate", json=body) for _ in range(8)])
            codes = sorted(r.status_code for r in rs)
            assert codes.count(200) >= 2 and codes.count(503) >= 1, codes
            busy = next(r for r in rs if r.status_code == 503)
            assert busy.headers["retry-after"] == "1" and busy.json()["error"]["type"] == "overloaded"
            assert (await client.post(url + "/v1/moderate", json=body)).status_code == 200
            metrics = (await client.get(url + "/metrics")).text
            assert 'qwenguard_rejected_total{reason="overload"}' in metrics


def test_backend_failure_is_503_and_timeout_504_and_the_server_keeps_serving():
    broken = Guard(ScriptedBackend(lambda c: "", fail=RuntimeError("CUDA exploded"), name="broken"))
    with serving(broken) as url:
        r = httpx.post(
            url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "secret text"}]},
            timeout=TIMEOUT,
        )
        assert r.status_code == 503 and r.json()["error"]["type"] == "guard_unavailable"
        assert "CUDA exploded" not in r.text  # internal error details stay on the server
        assert httpx.get(url + "/health", timeout=TIMEOUT).status_code == 200
    slow = Guard(ScriptedBackend(lambda c: "Safety: Safe\nCategories: None", delay_s=2.0, name="slow"))
    with serving(slow, request_timeout_s=0.3) as url:
        r = httpx.post(
            url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": "hi"}]]}, timeout=TIMEOUT
        )
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout"


def test_unparseable_model_output_is_a_502_guard_error_and_flagged_in_moderate():
    # Not a verdict: the OpenAI routes answer 502 guard_error rather than 200 with text a client could take
    # for the model's verdict (a cut or partial answer of a chained engine reads as one: test_remote_failover_verdicts).
    chatty = Guard(ScriptedBackend(lambda c: "I think this is fine!", name="chatty"))
    with serving(chatty) as url:
        prompt = render_prompt([{"role": "user", "content": "hi"}])
        for path, body in [
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}),
            ("/v1/completions", {"prompt": prompt}),
        ]:
            r = httpx.post(url + path, json=body, timeout=TIMEOUT)
            assert r.status_code == 502, (path, r.status_code, r.text[:200])
            error = r.json()["error"]
            assert error["type"] == "guard_error" and "VerdictParseError" in error["message"]
            assert "I think this is fine!" not in r.text
        m = httpx.post(
            url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": "hi"}]]}, timeout=TIMEOUT
        ).json()
        res = m["results"][0]
        assert res["risk"] is None and "VerdictParseError" in res["error"]
        assert res["decision"] == {
            "allowed": False,
            "action": "block",
            "stage": "prompt",
            "reason": "guard_error",
            "error": res["decision"]["error"],
        }
        metrics = httpx.get(url + "/metrics", timeout=TIMEOUT).text
        assert 'qwenguard_guard_errors_total{kind="VerdictParseError"}' in metrics


def test_metrics_count_requests_verdicts_and_blocks(guard):
    with serving(guard) as url:
        body = {"conversations": [[{"role": "user", "content": BOMB}], [{"role": "user", "content": PARIS_Q}]]}
        assert httpx.post(url + "/v1/moderate", json=body, timeout=TIMEOUT).status_code == 200
        text = httpx.get(url + "/metrics", timeout=TIMEOUT).text
        assert 'qwenguard_requests_total{path="/v1/moderate",status="200"} 1.0' in text
        assert 'qwenguard_verdicts_total{risk="unsafe"} 1.0' in text
        assert 'qwenguard_verdicts_total{risk="safe"} 1.0' in text
        assert 'qwenguard_blocked_total{stage="prompt"} 1.0' in text
        assert "qwenguard_request_latency_seconds_bucket" in text


def test_request_text_is_never_logged(guard, caplog):
    secret = "zebra-unicorn-" + BOMB
    with caplog.at_level("DEBUG"):
        broken = Guard(ScriptedBackend(lambda c: "", fail=RuntimeError(secret), name="broken"))
        with serving(broken) as url:
            httpx.post(
                url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": secret}]]}, timeout=TIMEOUT
            )
        with serving(guard) as url:
            httpx.post(
                url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": secret}]}, timeout=TIMEOUT
            )
    assert caplog.records, "the failing backend should have been logged"
    assert all("zebra-unicorn" not in r.getMessage() for r in caplog.records)


def test_create_app_validates_limits(guard):
    with pytest.raises(ValueError):
        create_app(guard, max_concurrency=0)
    assert json.loads(json.dumps(create_app(guard).openapi()))["info"]["title"] == "qwenguard"


def test_a_slow_client_body_gets_408_and_others_are_served(guard):
    import time as _time

    with serving(guard, request_timeout_s=0.5) as url:

        def trickle():
            yield b'{"conversations": [[{"role": "user", '
            _time.sleep(1.2)
            yield b'"content": "hi"}]]}'

        r = httpx.post(
            url + "/v1/moderate", content=trickle(), headers={"Content-Type": "application/json"}, timeout=TIMEOUT
        )
        assert r.status_code == 408 and r.json()["error"]["type"] == "request_timeout"
        assert (
            httpx.post(
                url + "/v1/moderate", json={"conversations": [[{"role": "user", "content": PARIS_Q}]]}, timeout=TIMEOUT
            ).status_code
            == 200
        )


def test_long_input_judged_in_windows_answers_one_verdict():
    windowed = Guard.from_pretrained("demo", max_context=160, device="cpu")  # force several windows
    long_text = " ".join(["The Eiffel Tower is in Paris."] * 40) + " " + BOMB
    with serving(windowed) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        text = (
            client.chat.completions.create(
                model=windowed.backend.name, messages=[{"role": "user", "content": long_text}]
            )
            .choices[0]
            .message.content
        )
        assert "---" not in text and text.startswith("Safety: ")
        remote = Guard.remote(url + "/v1", model=windowed.backend.name)
        local = windowed.check_prompt(long_text)
        assert local.verdict.raw.count("\n---\n") >= 1  # the input really was windowed
        got = remote.check_prompt(long_text)
        assert (got.reason, got.risk, got.categories) == (local.reason, local.risk, local.categories)
        remote.close()
    windowed.close()


def test_token_verdicts_serialise_to_json():
    from qwenguard.core.backends.transformers_stream import TokenVerdict
    from qwenguard.core.server import token_verdict_dict
    from qwenguard.core.verdict import Risk

    tv = TokenVerdict(
        token=42,
        risk=Risk.UNSAFE,
        probs={Risk.SAFE: 0.1, Risk.UNSAFE: 0.85, Risk.CONTROVERSIAL: 0.05},
        category="Violent",
        index=3,
        start=10,
        end=14,
    )
    out = json.loads(json.dumps(token_verdict_dict(tv)))
    assert out == {
        "token": 42,
        "index": 3,
        "risk": "unsafe",
        "category": "Violent",
        "probs": {"safe": 0.1, "unsafe": 0.85, "controversial": 0.05},
        "start": 10,
        "end": 14,
    }
