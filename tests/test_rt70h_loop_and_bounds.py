"""rt70h: a prompt check's final answer of markup read on the event loop, and a per-character bound that was not one.

F1: a prompt-stage conversation ending in an assistant turn of empty HTML tags ("<q>" * 16,633: 49,899 characters,
under ``PREPARE_ON_LOOP_CHARS``) was prepared on the loop by `Guard.acheck`, and `answer_or_prefill` renders that
answer as a reader sees it (about 20 us a tag): 0.4-0.5 s of loop lag where plain text of the same size holds it
tens of ms. On ``qwenguard serve`` a body under ``LARGE_BODY_BYTES`` was normalized on the loop the same way: every
other client waited 0.3 s a request. Loop lag is measured against plain text of the same size in the same run
(tests/loop_lag.py, rounds re-measured while over), and where the rendering runs is recorded too.
F2: ``MAX_TOKENS_PER_CHAR = 4`` is no bound for Qwen3's tokenizer, whose NFC normalizer makes 5 tokens of U+FB2C
and 6 of U+1D160: a text the planner refuses was read in every reading first. A reading spy says whether the
refusal came before them.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from faults import ScriptedBackend
from loop_lag import ROUNDS, compare, in_thread
from qwenguard.core import Guard, InputTooLarge
from qwenguard.core.formats import windows as windows_module
from qwenguard.core.formats.encoding import ConversationEncoder
from qwenguard.core.formats.windows import MAX_TOKENS_PER_CHAR, WindowPlanner
from qwenguard.core.server import service as service_module
from qwenguard.core.server.limits import LARGE_BODY_BYTES
from realshape import real_tokenizer
from test_server_hostile import guarded, safe_backend

P_SAFE = "Safety: Safe\nCategories: None"
R_SAFE = "Safety: Safe\nCategories: None\nRefusal: No"
ASK = {"role": "user", "content": "Tell me a story."}
#: Just under `PREPARE_ON_LOOP_CHARS` (50,000): what `acheck` prepared on the loop.
N = 49_899


def _guard() -> Guard:
    return Guard(ScriptedBackend(lambda c: R_SAFE if c[-1]["role"] == "assistant" else P_SAFE), cache_size=0)


def _prefilled(answer: str) -> list[dict[str, str]]:
    return [ASK, {"role": "assistant", "content": answer}]


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False  # a worker thread: the loop serves others meanwhile
    return True


# -- F1, the library --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("markup", ["<q>", "<a><i>"], ids=["q-tags", "a-i-tags"])
def test_a_prefill_of_empty_tags_holds_the_loop_no_longer_than_plain_text(markup: str) -> None:
    """The attack: ``acheck`` of a request and a 49,899-character prefill of empty tags (under the on-loop size). The
    loop is held at most `loop_lag.RATIO` times what a plain prefill of the same size, or the same check on a worker
    thread, holds it; the decision is the sync twin's."""
    guard = _guard()
    attack = _prefilled(markup * (N // len(markup)))
    plain = _prefilled(("a " * N)[:N])

    async def main() -> str | None:
        assert await guard.acheck(attack) == guard.check(attack)
        return await compare(
            lambda: guard.acheck(attack), lambda: guard.acheck(plain), in_thread(lambda: guard.check(attack))
        )

    assert asyncio.run(main()) is None


def _where_prepared(guard: Guard, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records, per `Guard._prepare` call, whether it ran on the event loop."""
    seen: list[bool] = []
    prepare = guard._prepare

    def recording(*args: Any) -> Any:
        seen.append(_on_loop())
        return prepare(*args)

    monkeypatch.setattr(guard, "_prepare", recording)
    return seen


def test_a_long_markup_prefill_is_prepared_off_the_loop_and_a_short_one_on_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where `_prepare` runs: 2,000 characters of tags (ten times a short request's) off the loop; a short request,
    a short prefill of markup, and a long plain prefill stay on it, with no thread hop (controls: so before too)."""
    guard = _guard()
    seen = _where_prepared(guard, monkeypatch)
    asyncio.run(guard.acheck(_prefilled("<q>" * 700)))
    assert seen == [False], "2,100 characters of tags were rendered on the event loop"
    seen.clear()
    for conversation in ([ASK], _prefilled("<think>\n\n</think>\n\n"), _prefilled("a " * 20_000)):
        asyncio.run(guard.acheck(conversation))
    assert seen == [True, True, True]
    # A response check never renders its answer as a prefill: its markup is read by the planner, off the loop.
    seen.clear()
    asyncio.run(guard.acheck(_prefilled("<q>" * 700), "response"))
    assert seen == [True]


def test_a_gate_session_prepares_a_long_markup_prefill_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """`GateSession.acheck` (the decode engine's session, demo guard) prepares as `acheck` does: a prompt-stage
    conversation ending in 2,100 characters of tags off the loop; its decision is the guard's own."""
    from live_server import demo_guard
    from qwenguard.core.streaming.gate_session import GateSession

    guard = demo_guard(cache_size=0)
    try:
        gate = GateSession(guard, "prompt")
        assert gate.session is not None  # the session's own path, not `acheck_many`
        seen = _where_prepared(guard, monkeypatch)
        decision = asyncio.run(gate.acheck(_prefilled("<q>" * 700)))
        assert seen == [False], "2,100 characters of tags were rendered on the event loop"
        assert decision.allowed and decision.stage.value == "prompt"
        gate.close()
    finally:
        guard.close()


# -- F1, the server ---------------------------------------------------------------------------------------------------


def _moderation_body(answer: str) -> bytes:
    return json.dumps({"conversations": [[ASK, {"role": "assistant", "content": answer}]]}).encode()


#: A /v1/moderate body under `LARGE_BODY_BYTES` (what the gate leaves on the loop), as the report sent it.
SIZE = LARGE_BODY_BYTES - 200


def _fill(unit: str) -> str:
    """A final answer of ``unit``s whose body is about `SIZE` bytes."""
    return unit * ((SIZE - len(_moderation_body(""))) // len(unit))


def _worst_wait(url: str, body: bytes) -> float:
    """The longest a ``GET /v1/models`` probe, sent every 5 ms from another client, waited while ``body`` was served."""
    done, ready = threading.Event(), threading.Event()
    waits: list[float] = []
    failed: list[BaseException] = []

    def probe() -> None:
        try:
            with httpx.Client(timeout=30) as client:
                while not done.is_set():
                    start = time.perf_counter()
                    assert client.get(url + "/v1/models").status_code == 200
                    waits.append(time.perf_counter() - start)
                    ready.set()
                    time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - said by the caller
            failed.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        ready.wait(30)  # the probe's client is connected: its first answer is in
        waits.clear()
        time.sleep(0.02)
        with httpx.Client(timeout=60) as client:
            r = client.post(url + "/v1/moderate", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["decision"]["allowed"]
    finally:
        done.set()
        thread.join()
    assert not failed, f"the probe failed: {failed[0]!r}"
    return max(waits, default=0.0)


def test_a_small_body_with_a_markup_prefill_holds_the_server_no_longer_than_plain_text() -> None:
    """The attack on ``qwenguard serve``: a 32,568-byte /v1/moderate body whose final answer is empty ``<q>`` tags.
    Another client's requests wait at most `loop_lag.RATIO` times what they wait for a plain body of the same size
    (best of two each, measured again up to `loop_lag.ROUNDS` times while over: a load burst is no finding)."""
    attack = _moderation_body(_fill("<q>"))
    plain = _moderation_body(_fill("a "))
    assert len(attack) <= LARGE_BODY_BYTES and len(plain) <= LARGE_BODY_BYTES
    failures = []
    with guarded(safe_backend()) as url:
        _worst_wait(url, _moderation_body("<b>warm up</b> " * 10))
        for _ in range(ROUNDS):
            base = min(_worst_wait(url, plain), _worst_wait(url, plain))
            lag = min(_worst_wait(url, attack), _worst_wait(url, attack))
            if lag <= 4 * max(base, 0.02):  # 20 ms: the floor of two threads' HTTP round trips on a loaded machine
                return
            failures.append(f"{lag * 1000:.0f} ms against {base * 1000:.0f} ms")
    pytest.fail("a client waited behind the markup body: " + "; then ".join(failures))


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Per `answer_or_prefill` call of the server's, whether it ran on the event loop."""
    seen: list[bool] = []
    original = service_module.answer_or_prefill

    def recording(*args: Any) -> Any:
        seen.append(_on_loop())
        return original(*args)

    monkeypatch.setattr(service_module, "answer_or_prefill", recording)
    return seen


def _chat(answer: str) -> dict[str, Any]:
    return {"messages": [ASK, {"role": "assistant", "content": answer}]}


def _completion(answer: str) -> dict[str, Any]:
    from qwenguard.core import render_prompt

    return {"prompt": render_prompt([ASK, {"role": "assistant", "content": answer}])}


ROUTES: list[tuple[str, Callable[[str], Any]]] = [
    ("/v1/moderate", lambda a: {"conversations": [[ASK, {"role": "assistant", "content": a}]]}),
    ("/v1/chat/completions", _chat),
    ("/v1/completions", _completion),
]


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=[p for p, _ in ROUTES])
def test_each_route_renders_a_small_bodys_markup_answer_off_the_loop(renders: list[bool], path: str, body: Any) -> None:
    """Every route that normalizes a body on the loop (under `LARGE_BODY_BYTES`): a final answer of 3,000 characters
    of tags is rendered in a thread; a short request and a long plain answer stay on the loop (controls)."""
    with guarded(safe_backend()) as url:

        def post(answer: str) -> None:
            content = json.dumps(body(answer)).encode()
            assert len(content) <= LARGE_BODY_BYTES
            r = httpx.post(url + path, content=content, headers={"content-type": "application/json"}, timeout=60)
            assert r.status_code == 200, r.text

        post("<q>" * 1_000)
        assert renders == [False], f"{path}: a small body's markup answer was rendered on the event loop"
        renders.clear()
        post("Once upon a time.")
        post("a " * 10_000)
        assert renders == [True, True]


def test_a_markup_body_waiting_past_its_deadline_is_answered_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendering takes a turn as a large body does: with none given in time, 503 ``overloaded`` (never an
    unjudged allow), and the next body is served."""
    from qwenguard.core.server.turns import ParseTurns, TurnTimeout

    refuse = [True]
    in_thread = ParseTurns.in_thread

    async def no_turn(self: ParseTurns, *args: Any) -> Any:
        if refuse[0]:
            raise TurnTimeout("no turn")
        return await in_thread(self, *args)

    monkeypatch.setattr(ParseTurns, "in_thread", no_turn)
    with guarded(safe_backend()) as url:
        post = lambda: httpx.post(  # noqa: E731
            url + "/v1/moderate", content=_moderation_body("<q>" * 1_000), headers={"content-type": "application/json"}
        )
        r = post()
        assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded"
        refuse[0] = False
        assert post().status_code == 200


# -- F2 ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> ConversationEncoder:
    return ConversationEncoder(real_tokenizer())


@pytest.fixture
def readings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of each text the planner takes its readings of (`as_seen_pieces`)."""
    taken: list[int] = []
    original = windows_module.as_seen_pieces

    def spy(text: str, *args: Any) -> Any:
        taken.append(len(text))
        return original(text, *args)

    monkeypatch.setattr(windows_module, "as_seen_pieces", spy)
    return taken


def _longest_uncounted(planner: WindowPlanner) -> int:
    """The most characters the planner took to need no count at `MAX_TOKENS_PER_CHAR`."""
    room = planner.budget - planner._empty_prompt("user")
    return planner.max_windows * room // MAX_TOKENS_PER_CHAR


@pytest.mark.parametrize("char", ["\ufb2c", "\U0001d160"], ids=["U+FB2C", "U+1D160"])
def test_a_text_nfc_expands_past_max_windows_is_refused_before_any_reading(
    encoder: ConversationEncoder, readings: list[int], char: str
) -> None:
    """The attack: a judged turn of a character NFC expands (5 and 6 tokens each), just under the length the old
    bound never counted. It needs more windows than allowed: refused before the readings, as the text one character
    longer (control: counted before too) is."""
    planner = WindowPlanner(encoder, max_prompt_tokens=4096, max_windows=8)
    n = _longest_uncounted(planner)
    assert len(encoder.content_token_starts(char * 100)) >= 500  # what the bound missed: more than 4 a character
    for length in (n + 1, n):
        with pytest.raises(InputTooLarge):
            planner.plan([{"role": "user", "content": char * length}])
        assert readings == [], f"{length:,} x U+{ord(char):04X}: readings taken before the refusal"


def test_ordinary_text_is_still_not_counted_before_its_readings(encoder: ConversationEncoder) -> None:
    """Control: prose, CJK, and text not in NFC too short for NFC to take it past the windows, are not tokenized
    for the bound (no cost added to them)."""
    planner = WindowPlanner(encoder, max_prompt_tokens=4096, max_windows=8)
    n = _longest_uncounted(planner)
    for text in (("the cat sat on a mat " * n)[:n], "拼多多" * (n // 3), "e\u0301" * (n // 6)):
        assert planner._starts_if_too_many(text, "user") is None


def test_a_long_text_not_in_nfc_that_fits_is_counted_and_planned(encoder: ConversationEncoder) -> None:
    """The count never refuses what fits: decomposed accents (not in NFC, few tokens once composed), as long as
    the old bound left uncounted, are counted first and planned."""
    planner = WindowPlanner(encoder, max_prompt_tokens=4096, max_windows=8)
    fits = "e\u0301" * (_longest_uncounted(planner) // 2)
    assert planner._starts_if_too_many(fits, "user") is not None
    assert planner.plan([{"role": "user", "content": fits}])
