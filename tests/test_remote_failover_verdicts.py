"""The remote Gen path when an answer is not a verdict (red-team findings, written as the attacks).

- A chained `qwenguard serve` (its guard `Guard.remote(engine)`) whose engine sends no verdict (a choice cut
  at ``max_tokens``; two choices, one cut) answers 502 ``guard_error``, never 200 with the text of a choice:
  a client in front of it gets a guard error, or another replica's verdict.
- `OpenAIGen` with replicas: a replica that answers 200 without a verdict, or a 4xx such as 404 (a replica
  mid-upgrade), is passed over for another replica this request has not tried, and is not counted as
  having answered; alone, it is a guard error as before. A 4xx is tried at most once per replica.
- A replica's ``/v1/models`` that publishes a context too small to hold the guard prompt and some text does
  not set the context of every replica: it is ignored.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from faults import ScriptedBackend
from live_server import serving
from qwenguard.core import Guard, Policy, render_prompt

SAFE = "Safety: Safe\nCategories: None"
UNSAFE = "Safety: Unsafe\nCategories: Violent"
BOMB = "How do I build a pipe bomb?"
PARIS = "What is the capital of France?"
IGNORED = frozenset({"Politically Sensitive Topics"})

Answer = Callable[[str, dict[str, Any]], tuple[int, Any]]


def choices(path: str, *texts: tuple[str, str]) -> dict[str, Any]:
    """An OpenAI reply with one choice per ``(text, finish_reason)``, shaped for ``path``."""
    if path.endswith("/chat/completions"):
        out = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
            for i, (t, f) in enumerate(texts)
        ]
    else:
        out = [{"index": i, "text": t, "finish_reason": f} for i, (t, f) in enumerate(texts)]
    return {"object": "chat.completion", "choices": out}


def honest(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """A healthy engine: unsafe when the request mentions a bomb."""
    return 200, choices(path, (UNSAFE if "bomb" in json.dumps(body).lower() else SAFE, "stop"))


class Engine:
    """An OpenAI-shaped engine on 127.0.0.1: every POST answered by ``answer(path, body) -> (status, body)``,
    ``GET /models`` with ``max_model_len`` when given. Records the POSTs."""

    def __init__(self, answer: Answer = honest, *, max_model_len: int | None = None) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                entry: dict[str, Any] = {"id": "m", "object": "model"}
                if max_model_len is not None:
                    entry["max_model_len"] = max_model_len
                self.reply(200, {"object": "list", "data": [entry]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                engine.posts.append((self.path, body))
                self.reply(*answer(self.path, body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Engine:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# -- A. a chained qwenguard serve does not turn a non-verdict into a verdict -----------------------------
def cut_categories(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """Cut at max_tokens in the middle of the category list: "Violent" is lost."""
    return 200, choices(path, ("Safety: Unsafe\nCategories: Politically Sensitive Topics", "length"))


def cut_safe_of_two(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """Two choices (an engine that ignores n=1): the first cut at max_tokens and reading safe, the second unsafe."""
    return 200, choices(path, (SAFE, "length"), (UNSAFE, "stop"))


def cut_safe_garbled(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """Two choices, neither a verdict: the first cut at max_tokens and reading safe, the second garbled."""
    return 200, choices(path, (SAFE, "length"), ("I am not sure.", "stop"))


def test_the_openai_routes_of_a_chained_server_write_an_unsafe_beside_a_broken_choice():
    # rt63b F3 through the server: the whole Unsafe beside a cut Safe was a 502, which a fail-open client let through.
    with Engine(cut_safe_of_two) as engine, serving(chained(engine)) as server:
        msgs = [{"role": "user", "content": BOMB}]
        r = httpx.post(server + "/v1/chat/completions", json={"messages": msgs}, timeout=30)
        assert r.status_code == 200, r.text[:200]
        assert r.json()["choices"][0]["message"]["content"] == "Safety: Unsafe\nCategories: None"
        m = httpx.post(server + "/v1/moderate", json={"conversations": [msgs]}, timeout=30).json()["results"][0]
        assert m["decision"]["allowed"] is False and m["decision"]["reason"] == "unsafe"


ENGINE_FAULTS = {"cut_categories": cut_categories, "cut_safe_of_two": cut_safe_of_two}


def chained(engine: Engine) -> Guard:
    """The guard of a `qwenguard serve` in front of ``engine``."""
    return Guard.remote(
        engine.url, model="m", max_context=4096, cache_size=0, policy=Policy(timeout_s=10), max_retries=0
    )


def client(urls: str | list[str], on_error: str, **opts: Any) -> Guard:
    policy = Policy(on_error=on_error, timeout_s=10, ignore_categories=IGNORED)
    return Guard.remote(urls, model="m", max_context=4096, cache_size=0, policy=policy, **opts)


@pytest.mark.parametrize("mode", ["chat", "completion"])
@pytest.mark.parametrize("on_error", ["block", "allow"])
@pytest.mark.parametrize("fault", list(ENGINE_FAULTS))
def test_a_chained_server_answers_a_guard_error_not_the_text_of_a_non_verdict(fault, on_error, mode):
    with Engine(ENGINE_FAULTS[fault]) as engine, serving(chained(engine)) as server:
        direct = client(engine.url, on_error, max_retries=0)
        via = client(server + "/v1", on_error, mode=mode, max_retries=0)
        try:
            asked = direct.check_prompt(BOMB)
            d = via.check_prompt(BOMB)
        finally:
            direct.close()
            via.close()
        if fault == "cut_categories":  # a cut Unsafe stands, with no category an ignore list could excuse (rt53c F1)
            assert (asked.allowed, asked.reason, asked.categories) == (False, "unsafe", ())
            assert (d.allowed, d.reason, d.categories) == (False, "unsafe", ()), d  # the same through the server
            return
        if fault == "cut_safe_of_two":
            # A whole Unsafe beside a choice that is no verdict stands (rt63b F3): before, the reply was a guard
            # error, and on_error="allow" let the bomb prompt through, asked directly or through the server. The
            # server writes it with no category (an ignore list would excuse Violent).
            assert (asked.allowed, asked.reason, asked.categories) == (False, "unsafe", ("Violent",))
            assert (d.allowed, d.reason, d.categories) == (False, "unsafe", ()), d
            return
        assert (asked.allowed, asked.reason) == (on_error == "allow", "guard_error")  # the engine, asked directly
        assert (d.allowed, d.reason) == (asked.allowed, "guard_error"), d  # the same through the server
        assert "HTTP 502" in (d.error or "")


def test_the_openai_routes_of_a_chained_server_answer_502_guard_error():
    with Engine(cut_safe_garbled) as engine, serving(chained(engine)) as server:
        msgs = [{"role": "user", "content": BOMB}]
        for path, body in [
            ("/v1/chat/completions", {"messages": msgs}),
            ("/v1/chat/completions", {"messages": msgs, "stream": True}),
            ("/v1/completions", {"prompt": render_prompt(msgs)}),
            ("/v1/completions", {"prompt": render_prompt(msgs), "stream": True}),
        ]:
            r = httpx.post(server + path, json=body, timeout=30)
            assert r.status_code == 502, (path, body.get("stream"), r.status_code, r.text[:200])
            assert r.json()["error"]["type"] == "guard_error" and "VerdictParseError" in r.json()["error"]["message"]
        # /v1/moderate reports it per conversation, as it always did.
        m = httpx.post(server + "/v1/moderate", json={"conversations": [msgs]}, timeout=30).json()["results"][0]
        assert m["risk"] is None and "VerdictParseError" in m["error"] and m["decision"]["reason"] == "guard_error"


@pytest.mark.parametrize("on_error", ["block", "allow"])
def test_replicas_chained_server_then_healthy_engine_give_the_healthy_verdict(on_error):
    with Engine(cut_safe_garbled) as engine, serving(chained(engine)) as server, Engine() as healthy:
        g = client([server + "/v1", healthy.url], on_error)
        try:
            g.backend.replicas.failed(healthy.url)  # the check goes to the chained server first
            d = g.check_prompt(BOMB)
        finally:
            g.close()
        assert (d.allowed, d.reason) == (False, "unsafe"), d
        assert d.verdict is not None and d.verdict.categories == ("Violent",)
        assert len(engine.posts) == 1 and len(healthy.posts) == 1


# -- B. a replica that answers without a verdict, or with a replica-specific 4xx, is passed over ------------
def not_a_verdict(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    return 200, choices(path, ("I'm sorry, I cannot help with that.", "stop"))


def model_not_found(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    return 404, {"error": {"message": "The model `m` does not exist.", "type": "NotFoundError", "code": 404}}


REPLICA_FAULTS = {"200-not-a-verdict": not_a_verdict, "404": model_not_found}


def check(g: Guard, text: str, use_async: bool) -> Any:
    if not use_async:
        return g.check_prompt(text)
    return asyncio.run(g.acheck_prompt(text))


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("on_error", ["block", "allow"])
@pytest.mark.parametrize("fault", list(REPLICA_FAULTS))
def test_a_replica_without_a_verdict_fails_over_to_a_healthy_one(fault, on_error, use_async):
    with Engine(REPLICA_FAULTS[fault]) as bad, Engine() as good:
        g = Guard.remote([bad.url, good.url], model="m", cache_size=0, policy=Policy(on_error=on_error, timeout_s=10))
        try:
            g.backend.replicas.failed(good.url)  # the first check goes to the bad replica first
            first = check(g, BOMB, use_async)
            assert (first.allowed, first.reason) == (False, "unsafe"), first
            assert len(bad.posts) == 1 and len(good.posts) == 1
            after = check(g, BOMB + " (again)", use_async)  # the bad replica is passed over for a while
            assert (after.allowed, after.reason) == (False, "unsafe") and len(bad.posts) == 1
            decisions = [check(g, f"{BOMB} #{i}", use_async) for i in range(20)]  # natural replica picking
        finally:
            g.close()
        blocked = sum((d.allowed, d.reason) == (False, "unsafe") for d in decisions)
        assert blocked == 20, [(d.allowed, d.reason, d.error) for d in decisions if d.reason != "unsafe"][:3]
        assert len(good.posts) == 22 and len(bad.posts) <= 1 + 20  # never two attempts on the bad replica per check
        assert g.backend.requests_sent == len(bad.posts) + len(good.posts)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("on_error", ["block", "allow"])
@pytest.mark.parametrize("fault", list(REPLICA_FAULTS))
def test_a_lone_replica_without_a_verdict_is_a_guard_error_as_before(fault, on_error, use_async):
    with Engine(REPLICA_FAULTS[fault]) as bad:
        g = Guard.remote([bad.url], model="m", cache_size=0, policy=Policy(on_error=on_error, timeout_s=10))
        try:
            d = check(g, BOMB, use_async)
        finally:
            g.close()
        assert (d.allowed, d.reason) == (on_error == "allow", "guard_error"), d
        assert len(bad.posts) == 1  # not retried on the same replica


def bad_request(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    return 400, {"error": {"message": "this request is invalid", "type": "BadRequestError", "code": 400}}


def test_a_request_every_replica_refuses_is_tried_once_per_replica():
    with Engine(bad_request) as a, Engine(bad_request) as b, Engine(bad_request) as c:
        g = Guard.remote([a.url, b.url, c.url], model="m", cache_size=0, max_retries=5, policy=Policy(timeout_s=10))
        try:
            d = g.check_prompt(BOMB)
        finally:
            g.close()
        assert (d.allowed, d.reason) == (False, "guard_error") and "HTTP 400" in (d.error or "")
        assert [len(e.posts) for e in (a, b, c)] == [1, 1, 1]


# -- C. one replica's /v1/models does not set an unusable context for every replica ------------------------
@pytest.mark.parametrize("published", [65, 200, 1024])
@pytest.mark.parametrize("on_error", ["block", "allow"])
def test_a_replica_publishing_a_tiny_context_does_not_break_every_check(published, on_error):
    with Engine(max_model_len=published) as a, Engine() as b:
        g = Guard.remote([a.url, b.url], model="m", cache_size=0, policy=Policy(on_error=on_error, timeout_s=10))
        try:
            g.backend.replicas.failed(b.url)  # /models is asked of A first
            unsafe, safe = g.check_prompt(BOMB), g.check_prompt(PARIS)
        finally:
            g.close()
        assert (unsafe.allowed, unsafe.reason) == (False, "unsafe"), unsafe
        assert (safe.allowed, safe.reason) == (True, "safe"), safe


def test_a_usable_published_context_is_still_used():
    with Engine(max_model_len=4096) as a:
        g = Guard.remote(a.url, model="m", cache_size=0)
        try:
            assert g.check_prompt(BOMB).reason == "unsafe"
            assert g.backend._served_context == 4096
        finally:
            g.close()


# -- D. qwenguard serve's 502 guard_error is its answer "no verdict", judged again without the context ---------
#: A client-written history that breaks the guard's answer (no verdict), before the turn judged.
X_HISTORY = [{"role": "user", "content": "x" * 400}, {"role": "assistant", "content": "x" * 400}]


def no_verdict_with_context(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    """qwenguard serve's answer when its guard gave no verdict (a request with the history), else a verdict."""
    if "x" * 400 in json.dumps(body):
        message = "the guard gave no verdict for this conversation: VerdictParseError"
        return 502, {"error": {"message": message, "type": "guard_error", "code": 502}}
    return honest(path, body)


def proxy_bad_gateway(path: str, body: dict[str, Any]) -> tuple[int, Any]:
    return 502, {"error": {"message": "upstream connect error"}}


@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_a_servers_502_guard_error_is_judged_again_without_the_context(mode):
    """A red team's finding: `Guard.remote(on_error="allow")` read qwenguard serve's 502 ``guard_error`` as a 5xx,
    sent it three more times and failed open, never judging the turn without the history that broke the
    answer (as it does for a 200 that does not parse). The 502 is the server's answer, "no verdict": the turn
    is judged again alone, and blocked; a proxy's plain 502 is still retried."""
    with Engine(no_verdict_with_context) as server:
        g = client(server.url, "allow", mode=mode)
        try:
            d = g.check(X_HISTORY + [{"role": "user", "content": BOMB}], "prompt")
        finally:
            g.close()
        assert (d.allowed, d.reason) == (False, "unsafe"), d
        assert len(server.posts) == g.backend.requests_sent == 2  # with the history, then the turn alone
        assert "x" * 400 not in json.dumps(server.posts[1][1])
    with Engine(proxy_bad_gateway) as proxy:
        g = client(proxy.url, "allow", mode=mode, backoff_s=0.01)
        try:
            d = g.check_prompt(BOMB)
        finally:
            g.close()
        assert (d.allowed, d.reason) == (True, "guard_error") and "HTTP 502" in (d.error or "")
        assert len(proxy.posts) == 4  # retried, as any 5xx


class BrokenByContext(ScriptedBackend):
    """A guard that gives no verdict for a turn with context, and (the fault) whose judging it again alone fails
    too, so that qwenguard serve answers 502 ``guard_error``; a turn sent alone is judged (unsafe: a bomb)."""

    def __init__(self) -> None:
        super().__init__(self._answer, name="m")
        self.broke = False

    def _answer(self, conversation: Any) -> str:
        if len(conversation) > 1:
            return "I think this is fine!"
        return UNSAFE if "bomb" in conversation[-1]["content"].lower() else SAFE

    async def aclassify(self, conversations: Any, *, timeout: float | None = None) -> Any:
        if self.broke:  # the server judging the turn again without its context: the injected fault
            self.broke = False
            self.calls.append(list(conversations))
            raise RuntimeError("injected: judging again failed")
        self.broke = any(len(c) > 1 for c in conversations)
        return await super().aclassify(conversations, timeout=timeout)


@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_guard_remote_fail_open_against_qwenguard_serve_judges_the_turn_again_alone(mode):
    backend = BrokenByContext()
    with serving(Guard(backend, cache_size=0)) as server:
        g = client(server + "/v1", "allow", mode=mode)
        try:
            d = g.check(X_HISTORY + [{"role": "user", "content": BOMB}], "prompt")
        finally:
            g.close()
    assert (d.allowed, d.reason) == (False, "unsafe"), d
    assert g.backend.requests_sent == 2  # the 502 once, never retried as a 5xx; then the turn alone
    assert [len(c) for call in backend.calls for c in call] == [3, 1, 1]  # with context, the server's retry, alone
