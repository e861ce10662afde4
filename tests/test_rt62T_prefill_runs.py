"""rt62f F2 and F2b: an answer that continues a trailing assistant turn (a prefill, which a provider reads as the start
of its answer and returns with it as one turn) was judged apart from it, and a run of consecutive assistant turns (one
answer to a provider that combines turns of a role) turn by turn: "Step 1: Mix" | " ammonium nitrate with fuel oil."
was let through by every path. Judges: the real demo Gen backend with a phrase engine reading each window whole
(`phrase_judge`), and `faults.phrase_verdict` for streams (unsafe when the judged turn says "mix ammonium")."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from faults import ScriptedBackend, phrase_verdict
from live_server import serving
from phrase_judge import phrase_guard, reads_from_now
from qwenguard.core import Guard, GuardViolation
from qwenguard.core.formats.conversations import response_conversation
from websockets.sync.client import connect

PREFILL, CONT = "Step 1: Mix", " ammonium nitrate with fuel oil."
SAFE_CONT = " flour and water, then knead."
ASKED = [{"role": "user", "content": "Explain the recipe."}]
PROMPT = [*ASKED, {"role": "assistant", "content": PREFILL}]


def scripted_guard() -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(phrase_verdict, name="phrase")
    return Guard(backend, cache_size=0), backend


def test_answer_after_a_prefill_is_judged_with_it() -> None:
    guard = phrase_guard("mix ammonium")
    read = reads_from_now(guard)
    assert guard.check_response(PROMPT, CONT).blocked
    assert any("ASSISTANT: Step 1: Mix ammonium nitrate" in r for r in read)
    assert asyncio.run(guard.acheck_response(PROMPT, CONT)).blocked
    # Control: a safe continuation of the same prefill passes.
    assert guard.check_response(PROMPT, SAFE_CONT).allowed


def test_normal_answers_are_judged_as_before() -> None:
    # What reaches the backend for an answer to a user turn is unchanged (the verdict cache depends on it).
    assert response_conversation(ASKED, "Hi.") == [*ASKED, {"role": "assistant", "content": "Hi."}]
    assert response_conversation("Q?", "A.") == [
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "A."},
    ]
    # A turn with tool calls is an action, not a prefill.
    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
    assert response_conversation([*ASKED, call], "Done.")[-2:] == [call, {"role": "assistant", "content": "Done."}]


def test_a_prefill_and_its_continuation_are_one_turn() -> None:
    assert response_conversation(PROMPT, CONT) == [*ASKED, {"role": "assistant", "content": PREFILL + CONT}]
    # A caller whose turns leave out a tool's result between the two says the answer is a turn of its own.
    assert response_conversation(PROMPT, CONT, continues=False) == [*PROMPT, {"role": "assistant", "content": CONT}]


def test_a_run_of_assistant_turns_is_judged_joined() -> None:
    guard = phrase_guard("mix ammonium")
    run = [*PROMPT, {"role": "assistant", "content": CONT}]
    assert guard.check(run, "response").blocked
    # Two consecutive assistant turns in a history before the next answer: judged as one answer.
    assert guard.check_response(run, " Then wait.").blocked
    # Control: the same turns with a user turn between them are two answers, each safe.
    apart = [*PROMPT, {"role": "user", "content": "And?"}, {"role": "assistant", "content": CONT}]
    assert guard.check(apart, "response").allowed


def test_stream_judges_the_prefill_with_the_continuation() -> None:
    guard, backend = scripted_guard()
    released = ""
    with pytest.raises(GuardViolation), guard.stream(PROMPT) as monitor:
        released += monitor.feed(CONT)
        released += monitor.finish()
    assert "ammonium" not in released
    assert any(c[-1]["content"].startswith("Step 1: Mix ammonium") for call in backend.calls for c in call)
    # Control: a safe continuation is released, and only it (the consumer has the prefill).
    with guard.stream(PROMPT) as monitor:
        out = monitor.feed(SAFE_CONT) + monitor.finish()
    assert out == SAFE_CONT and monitor.text == SAFE_CONT


def test_async_stream_judges_the_prefill_with_the_continuation() -> None:
    guard, _ = scripted_guard()

    async def run(text: str) -> str:
        async with guard.astream(PROMPT) as monitor:
            return await monitor.afeed(text) + await monitor.afinish()

    with pytest.raises(GuardViolation):
        asyncio.run(run(CONT))
    assert asyncio.run(run(SAFE_CONT)) == SAFE_CONT


def test_serve_stream_judges_the_prefill_with_the_continuation() -> None:
    guard, _ = scripted_guard()

    def frames(text: str) -> list[dict]:
        with serving(guard) as url, connect(url.replace("http://", "ws://") + "/v1/stream") as conn:
            conn.send(json.dumps({"type": "open", "messages": PROMPT}))
            got = [json.loads(conn.recv(timeout=10))]
            conn.send(json.dumps({"type": "feed", "text": text}))
            conn.send(json.dumps({"type": "finish"}))
            try:
                while True:
                    got.append(json.loads(conn.recv(timeout=10)))
            except websockets.exceptions.ConnectionClosed:
                pass
        return got

    blocked = frames(CONT)
    assert "violation" in [f["type"] for f in blocked]
    assert "ammonium" not in "".join(f.get("text", "") for f in blocked if f["type"] in ("released", "finished"))
    allowed = frames(SAFE_CONT)
    assert "violation" not in [f["type"] for f in allowed]
    assert "".join(f.get("text", "") for f in allowed if f["type"] in ("released", "finished")) == SAFE_CONT


def test_stream_after_a_prefill_with_a_stream_model_is_judged_in_windows() -> None:
    # The Stream model scores an answer after a user turn (a prefill was a ValueError): the windows judge it instead.
    from stream_judges import phrase_oracle_stream_guard

    guard = phrase_oracle_stream_guard(lambda text: text.lower())
    guard.backend = ScriptedBackend(phrase_verdict, name="phrase")  # the Gen judge the windows use
    with pytest.raises(GuardViolation), guard.stream(PROMPT) as monitor:
        assert "ammonium" not in monitor.feed(CONT) + monitor.finish()
    with guard.stream(PROMPT) as monitor:
        assert monitor.feed(SAFE_CONT) + monitor.finish() == SAFE_CONT
    assert guard.fed == []  # not one token went to the Stream model
