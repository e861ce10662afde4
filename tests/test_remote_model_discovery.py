"""`Guard.remote(url)` without ``model=``: the client learns the one model the server lists at ``/models``, at the
first check (sync or async), in the request that reads the context. Against a real qwenguard server with the
demo guard, and a scripted engine (tests/scripted_openai.py) listing one model, two, none, or failing."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import scripted_openai
from demo_texts import FACTS
from live_server import QuietHandler, demo_guard, http_serving, serving
from qwenguard.core import Guard, GuardUnavailable, Policy, Risk
from qwenguard.core.backends import openai_gen
from qwenguard.core.backends.openai_gen import OpenAIGen
from qwenguard.core.cli import app
from qwenguard.core.policy import StagePolicy
from qwenguard.core.verdict import Stage
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


@pytest.mark.parametrize("model", [None, "demo"])
def test_the_readmes_remote_guard_against_qwenguard_serve_warns_of_nothing(url, local, model, caplog):
    """rt50a F1: the README's own remote example (`Guard.remote(url, model="demo")` against `qwenguard serve`) told
    the user to pass max_context "(Ollama: num_ctx; llama.cpp: -c per slot)": the server published no context.
    It publishes its backend's (as vLLM does), and a client knows `qwenguard serve` windows long inputs itself."""
    caplog.set_level("WARNING", logger="qwenguard")
    remote = Guard.remote(url, model=model) if model else Guard.remote(url)
    try:
        assert not remote.check_prompt(BOMB).allowed
        assert remote.check_response("Tell me about France.", FACTS * 8).allowed  # past one demo window
    finally:
        remote.close()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []
    listed = json.loads(urllib.request.urlopen(url + "/models", timeout=10).read())["data"][0]
    assert listed["max_model_len"] == local.backend.max_context and listed["owned_by"] == "qwenguard"


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


def test_the_check_that_learns_the_name_caches_its_verdict_under_it(listing):
    """The first check's verdict was cached under the name '' (unknown when the check began), where no later
    check looks: the same text cost a second request (rt47e R6)."""
    listing.set(models("m"))
    with scripted(SAFE) as base:
        remote = Guard.remote(base)
        decisions = [remote.check_prompt("same text") for _ in range(3)]
        remote.close()
        assert [d.cached for d in decisions] == [False, True, True]
        assert len(base.requests) == 1


def test_with_max_context_given_the_model_is_still_learned_once(listing):
    with scripted(SAFE) as base:
        backend = OpenAIGen(base, max_context=2048)
        conversation = [{"role": "user", "content": "hello"}]
        assert backend.classify([conversation])[0].risk is Risk.SAFE
        assert backend.classify([conversation])[0].model == scripted_openai.MODEL
        backend.close()
        assert listing.requests == ["/v1/models"]


@pytest.mark.parametrize(
    ("served", "said", "advice"),
    [
        (models("guard-a", "guard-b"), "serves 2 models ['guard-a', 'guard-b']", "model="),
        (models(), "serves 0 models []", "model="),
        # No /models route at all: a wrong base URL, not a missing name (rt69f F1: a name made every check a 404).
        (
            lambda: (404, {"error": {"message": "no such route", "type": "not_found"}}),
            "HTTP 404: no such route",
            "check the base URL",
        ),
        (lambda: (200, {"models": "?"}), "not an OpenAI model list", "model="),
    ],
)
async def test_a_server_that_does_not_name_one_model_is_a_clear_error(listing, served, said, advice):
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
        assert said in str(err.value) and advice in str(err.value)
    assert not decision.allowed and said in decision.error and advice in decision.error


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
        (
            lambda: (401, {"error": {"message": "bad key", "type": "auth"}}),
            "HTTP 401: bad key); pass the server's API key with --api-key",
        ),
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


# -- replicas that do not all name the model (rt47e) ------------------------------------------------
UNSAFE_TEXT = "Safety: Unsafe\nCategories: Violent"


class Replica:
    """A plain http.server replica of a guard engine: ``GET /models`` answers ``listing`` (a body of bytes
    goes out as is); a POST for another model than ``serves`` is 404 ``model_not_found``, as vLLM and
    qwenguard serve answer; ``hold`` (when set) is waited for before ``/models`` answers; ``down`` drops
    every connection unanswered (a retired replica)."""

    def __init__(self, serves: str | None, listing: Listing | None = None) -> None:
        self.serves = serves
        self.listing = listing or models(serves or "none")
        self.gets = 0
        self.posted: list[str | None] = []  # the model asked for by each POST
        self.down = False
        self.asked = threading.Event()  # a GET /models came in
        self.hold: threading.Event | None = None
        self.url = ""

    @contextmanager
    def running(self) -> Iterator[Replica]:
        me = self

        class Handler(QuietHandler):
            def handle_one_request(self) -> None:
                if me.down:
                    self.close_connection = True
                    return
                super().handle_one_request()

            def _send(self, status: int, body: object) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if me.down:  # a kept-alive connection was already waiting for this request
                    self.close_connection = True
                    return
                me.gets += 1
                me.asked.set()
                if me.hold is not None:
                    me.hold.wait(30)
                self._send(*me.listing())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if me.down:
                    self.close_connection = True
                    return
                me.posted.append(body.get("model"))
                if body.get("model") != me.serves:
                    error = {"message": f"The model {body.get('model')!r} does not exist.", "type": "model_not_found"}
                    return self._send(404, {"error": error})
                choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": UNSAFE_TEXT}}
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{uuid.uuid4().hex}",
                        "object": "chat.completion",
                        "model": me.serves,
                        "choices": [choice],
                    },
                )

        with http_serving(Handler) as base:
            self.url = base + "/v1"
            yield self


NAMES_NONE: dict[str, Listing] = {
    "404": lambda: (404, {"error": {"message": "no such route", "type": "not_found"}}),
    "401": lambda: (401, {"error": {"message": "bad key", "type": "auth"}}),
    "html-200": lambda: (200, b"<html><body>gateway</body></html>"),
    "empty-list": models(),
}


@pytest.mark.parametrize("fault", list(NAMES_NONE))
def test_a_replica_whose_models_names_none_is_passed_over(fault):
    """R1: a replica whose ``/models`` names no model (a proxy that routes only the completion routes, one with
    another key, a gateway page) must not end discovery while another replica names one: both orders judge."""
    with Replica("guard", NAMES_NONE[fault]).running() as a, Replica("guard").running() as b:
        decisions = []
        for order in ([a.url, b.url], [b.url, a.url]):  # the first /models read goes to either one
            guard = Guard.remote(order, cache_size=0, policy=Policy(on_error="allow"))
            decisions.append(guard.check_prompt(BOMB))
            guard.close()
    assert a.gets >= 1  # asked, and passed over
    for d in decisions:
        assert d.verdict is not None and d.risk is Risk.UNSAFE and not d.allowed, d


def test_served_model_passes_over_a_replica_that_names_none():
    """R1, as `qwenguard eval --remote` learns the name before its first row: `served_model()` on replicas."""
    with Replica("guard", NAMES_NONE["404"]).running() as a, Replica("guard").running() as b:
        names = []
        for order in ([a.url, b.url], [b.url, a.url]):
            backend = OpenAIGen(order)
            names.append(backend.served_model(timeout=10))
            backend.close()
    assert names == ["guard", "guard"] and a.gets == 1 and b.gets == 2


def test_a_replica_listing_several_models_is_still_an_error_and_none_naming_one_too():
    """Several models listed by the replica asked is the caller's to pick (at once); when no replica names one,
    the error is the first replica's reason."""
    with Replica("a", models("a", "b")).running() as several, Replica("a").running() as one:
        backend = OpenAIGen([one.url, several.url])  # the first read goes to the second replica
        with pytest.raises(openai_gen.ServedModelUnknown, match=r"serves 2 models \['a', 'b'\]"):
            backend.served_model(timeout=10)
        backend.close()
    with Replica("g", NAMES_NONE["404"]).running() as a, Replica("g", NAMES_NONE["401"]).running() as b:
        backend = OpenAIGen([a.url, b.url])
        with pytest.raises(openai_gen.ServedModelUnknown, match="HTTP 401: bad key") as err:
            backend.classify([[{"role": "user", "content": "hello"}]])
        backend.close()
        assert a.gets == b.gets == 1 and a.posted == b.posted == []
    assert err.value.models is None


def test_a_learned_name_is_learned_again_after_a_rolling_upgrade():
    """R2: the name learned from the old replica is refused (404 model_not_found) by the new one once the old
    is retired: the check that finds it so is a guard error, the next ones learn the new name and are judged."""
    with Replica("guard-old").running() as old, Replica("guard-new").running() as new:
        new.listing = lambda: (503, {"error": {"message": "loading", "type": "unavailable"}})  # old names it first
        guard = Guard.remote([old.url, new.url], cache_size=0, max_retries=1, policy=Policy(on_error="allow"))
        first = guard.check_prompt(BOMB)
        assert guard.backend.model == "guard-old" and first.verdict is not None
        new.listing = models("guard-new")
        old.down = True  # retired
        after = [guard.check_prompt(f"{BOMB} ({i})") for i in range(4)]
        guard.close()
    assert [d.verdict is not None for d in after] == [False, True, True, True], after
    assert all(d.risk is Risk.UNSAFE and d.verdict.model == "guard-new" for d in after[1:])
    assert guard.backend.model == "guard-new" and new.posted[-3:] == ["guard-new"] * 3
    assert None not in old.posted + new.posted  # no request ever went out without a name


def test_a_name_listed_and_refused_is_read_again_once_not_per_check():
    """R2's bound: a server that lists a name and refuses it (404 model_not_found) is asked ``/models`` once more,
    not once per check; a name given by the caller is never read again."""
    with Replica(None, models("m")).running() as broken:
        guard = Guard.remote(broken.url, cache_size=0, max_retries=0)
        decisions = [guard.check_prompt(f"hello {i}") for i in range(5)]
        guard.close()
        assert broken.gets == 2 and broken.posted == ["m"] * 5
        given = Guard.remote(broken.url, model="m", cache_size=0, max_retries=0)
        assert not any(given.check_prompt(f"hello {i}").allowed for i in range(3))
        given.close()
        assert broken.gets == 3 and given.backend.model == "m"  # its one read is for the context
    assert all(d.verdict is None and not d.allowed for d in decisions)


def test_served_model_closed_meanwhile_is_guard_unavailable():
    """R4: another thread closes the guard while `served_model()` waits for ``/models``: GuardUnavailable, as
    `classify` says it, not concurrent.futures.CancelledError."""
    with Replica("guard").running() as slow:
        slow.hold = threading.Event()
        guard = Guard.remote(slow.url)
        got: dict[str, BaseException | str] = {}

        def learn() -> None:
            try:
                got["name"] = guard.backend.served_model(timeout=30)
            except BaseException as exc:  # noqa: BLE001 - what escapes is the point
                got["error"] = exc

        thread = threading.Thread(target=learn)
        thread.start()
        assert slow.asked.wait(10)
        guard.close()
        slow.hold.set()
        thread.join(10)
    assert isinstance(got.get("error"), GuardUnavailable), got
    assert "closed during the call" in str(got["error"])


@pytest.mark.parametrize("listed", ["none", "one"])
def test_checks_queued_behind_a_models_read_share_its_outcome(monkeypatch, listed):
    """R5: checks that come while ``/models`` is being read take that read's outcome, its failure included,
    instead of each reading it again in turn; a check after a failed read reads it again. The read is held
    until all the checks are waiting on it (counted where they enter the lookup)."""
    n = 10
    replica = Replica("guard", NAMES_NONE["404"] if listed == "none" else None)
    with replica.running():
        replica.hold = threading.Event()
        guard = Guard.remote(replica.url, cache_size=0, policy=Policy(timeout_s=60))
        backend = guard.backend
        entered = 0
        all_in = threading.Event()
        original = backend._context

        async def counted(wire, deadline):
            nonlocal entered
            entered += 1  # on the client's loop: no lock needed
            if entered == n:
                all_in.set()
            return await original(wire, deadline)

        monkeypatch.setattr(backend, "_context", counted)
        results: list[object] = []

        def check(i: int) -> None:
            results.append(guard.check_prompt(f"{BOMB} ({i})"))

        threads = [threading.Thread(target=check, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        assert all_in.wait(30)
        replica.hold.set()
        for t in threads:
            t.join(30)
        gets_together = replica.gets
        later = guard.check_prompt(BOMB)
        guard.close()
    assert gets_together == 1 and len(results) == n
    if listed == "none":
        assert all(d.verdict is None and "HTTP 404" in d.error for d in results)
        assert replica.gets == 2 and later.verdict is None  # asked again after the failure
    else:
        assert all(d.risk is Risk.UNSAFE for d in results) and later.risk is Risk.UNSAFE
        assert replica.gets == 1


async def test_a_short_deadline_that_starts_the_models_read_ends_no_other_check():
    """rt49c H1: the shared ``/models`` read ran on the deadline of the check that started it. A tool result with a
    0.3 s stage timeout came first; a prompt check with 20 s came next and took the read's timeout at 0.3 s though
    ``/models`` answered at 1 s (under ``on_error="allow"`` the unsafe prompt would go out unjudged), and the
    replica was marked failed. The read has its own bound; each check waits for it within its own deadline."""
    policy = Policy(timeout_s=20, stages={Stage.TOOL_RESULT: StagePolicy(timeout_s=0.3)})
    replica = Replica("guard")
    with replica.running():
        replica.hold = threading.Event()
        guard = Guard.remote(replica.url, cache_size=0, policy=policy)
        try:
            first = asyncio.ensure_future(guard.acheck_tool_result("search", "The weather is sunny."))
            assert await asyncio.to_thread(replica.asked.wait, 10)
            second = asyncio.ensure_future(guard.acheck_prompt(BOMB))
            await asyncio.sleep(1.0)
            replica.hold.set()
            tool_result, prompt = await asyncio.wait_for(asyncio.gather(first, second), 30)
        finally:
            await guard.aclose()
    assert tool_result.reason == "timeout"
    assert (prompt.risk, prompt.allowed) == (Risk.UNSAFE, False), prompt
    assert replica.gets == 1


@pytest.mark.parametrize("calls", ["sync", "async"])
def test_a_models_route_that_hangs_fails_no_check_when_the_name_is_given(calls):
    """rt49c M4: with ``model=`` given and no ``max_context``, ``/models`` is read only for the engine's context.
    Behind a proxy that never answers that route, every check waited for it to its whole deadline and ended a
    timeout (under ``on_error="allow"``: let through unjudged) though the engine answered checks at once. A
    check waits for the read a share of its deadline, then plans for the fallback context, which is safe: a
    smaller context shows in the engine's answers."""
    replica = Replica("guard")
    with replica.running():
        replica.hold = threading.Event()  # /models never answers while the checks run
        guard = Guard.remote(replica.url, model="guard", cache_size=0, policy=Policy(timeout_s=3))
        try:
            if calls == "sync":
                decisions = [guard.check_prompt(f"{BOMB} ({i})") for i in range(3)]
            else:

                async def run() -> list:
                    return [await guard.acheck_prompt(f"{BOMB} ({i})") for i in range(3)]

                decisions = asyncio.run(run())
        finally:
            replica.hold.set()
            guard.close()
    assert [(d.risk, d.allowed) for d in decisions] == [(Risk.UNSAFE, False)] * 3, decisions
    assert replica.gets == 1  # one read, shared; the checks did not each start another
