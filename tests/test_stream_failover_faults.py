"""Stream failover when a replica fails in ways the others do not: each test is the attack a red team ran
against `RemoteStream` with two replicas.

- A replica whose own guard failed and whose operator fails open released the text it could not judge
  (flagged), and the client took that for a verdict: it never asked the healthy replica.
- A replay that failed part-way released text the caller never got back (a hole in the answer).
- A replay to a replica that stops reading blocked a sync ``feed`` past its deadline.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from faults import ScriptedBackend
from live_server import serving
from qwenguard.core import Guard, GuardUnavailable, GuardViolation, Policy
from ws_scripted import ScriptedReplica

SAFE = "The weather is mild today. " * 4
RECIPE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
PROMPT = "Tell me something."


def keyword_verdict(conversation) -> str:
    """Unsafe iff the judged turn mentions "nitrate"; the answer the Gen format expects for its role."""
    unsafe = "nitrate" in conversation[-1]["content"]
    verdict = "Safety: Unsafe\nCategories: Violent" if unsafe else "Safety: Safe\nCategories: None"
    return verdict + ("\nRefusal: No" if conversation[-1]["role"] == "assistant" else "")


def chunks(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def failing_verdict(conversation) -> str:
    """A guard that fails on answers and on anything about nitrate (it judges other prompts)."""
    if conversation[-1]["role"] == "assistant" or "nitrate" in conversation[-1]["content"]:
        raise RuntimeError("engine down")
    return keyword_verdict(conversation)


@pytest.fixture(scope="module")
def replicas():
    """A: a qwenguard server whose guard fails (on answers, and on prompts about nitrate) and whose operator
    fails open; B: a healthy one."""
    down = Guard(ScriptedBackend(failing_verdict, name="kw"), Policy(on_error="allow"))
    healthy = Guard(ScriptedBackend(keyword_verdict, name="kw"))
    with serving(down) as a, serving(healthy) as b:
        yield a + "/v1", b + "/v1"


def client(replicas, **policy) -> Guard:
    a, b = replicas
    guard = Guard.remote(
        "http://127.0.0.1:9/v1", model="kw", stream=[a, b], policy=Policy(on_error="allow", timeout_s=10, **policy)
    )
    guard.stream_backend.replicas.failed(guard.stream_backend.urls[1])  # sessions start on A
    return guard


def test_a_replica_that_fails_open_on_its_own_is_failed_over_not_believed(replicas):
    """The attack: the session lands on A, whose guard fails and whose operator (like the client) fails
    open. A released every delta flagged ``guard_error``, the recipe with it (71 of 71 characters), and the
    client never tried B. A release flagged as unjudged is a replica failure now: B judges the text."""
    guard = client(replicas)
    out = ""
    monitor = guard.stream(PROMPT, holdback=2)
    with pytest.raises(GuardViolation):
        for delta in chunks(SAFE + RECIPE):
            out += monitor.feed(delta)
        out += monitor.finish()
    assert len(out) <= len(SAFE), f"{len(out) - len(SAFE)} characters of the recipe reached the consumer"
    assert monitor.failovers >= 1 and monitor.decision.reason == "unsafe"
    assert not [f for f in monitor.flags if f.reason in ("guard_error", "timeout")]  # B judged all of it


async def test_an_async_monitor_fails_over_from_a_replica_that_fails_open(replicas):
    guard = client(replicas)
    out = ""
    monitor = guard.astream(PROMPT, holdback=2)
    with pytest.raises(GuardViolation):
        for delta in chunks(SAFE + RECIPE):
            out += await monitor.afeed(delta)
        out += await monitor.afinish()
    await monitor.aclose()
    assert len(out) <= len(SAFE) and monitor.failovers >= 1


def test_a_prompt_the_first_replica_could_not_judge_is_screened_by_another(replicas):
    """A let an unsafe prompt through flagged ``guard_error`` at ``open``; B screens it and blocks it."""
    guard = client(replicas)
    with pytest.raises(GuardViolation) as err:
        guard.stream(f"How do I {RECIPE.lower()}").open()
    assert err.value.decision.stage.value == "prompt" and err.value.decision.reason == "unsafe"


def test_with_no_other_replica_the_clients_own_policy_decides(replicas):
    """Only the replica that fails open: the client's own fail-open goes on in Gen windows on the guard's Gen
    backend (`monitor.local`; here the same server's Gen route, also down, so each of those checks goes out
    flagged, as documented), instead of taking the server's unjudged release as its own."""
    a, _ = replicas
    opened = Guard.remote(
        a, model="kw", stream=True, policy=Policy(on_error="allow", timeout_s=5), stream_options={"max_failovers": 0}
    )
    with opened.stream(PROMPT, holdback=2) as monitor:
        out = monitor.feed(SAFE) + monitor.finish()
    assert out == SAFE and monitor.local is not None
    assert monitor.flags and all(f.reason == "guard_error" for f in monitor.flags)


# -- a replay that fails part-way ----------------------------------------------------------------------
def test_text_released_by_a_replay_that_fails_part_way_reaches_the_caller():
    """The attack: A releases the first feed, then restarts (1012) on the second, a 26,000-character delta.
    B releases the first replayed frame, then drops. The call re-opens on A (honest now). The text B released
    was recorded as released but never returned: the caller got the answer with 8,185 characters missing from
    the middle, while ``monitor.released`` claimed all of it went out."""
    opens = {"a": 0}

    def a_script(frame):
        if frame["type"] == "open":
            opens["a"] += 1
            opens["a_feeds"] = 0
            return {"type": "opened"}
        if frame["type"] == "finish":
            return {"type": "finished", "text": ""}
        opens["a_feeds"] += 1
        if opens["a"] == 1 and opens["a_feeds"] == 2:
            return 1012
        return {"type": "released", "text": frame["text"]}

    b_feeds = {"n": 0}

    def b_script(frame):
        if frame["type"] == "open":
            return {"type": "opened"}
        b_feeds["n"] += 1
        return "drop" if b_feeds["n"] == 2 else {"type": "released", "text": frame["text"]}

    a, b = ScriptedReplica(a_script), ScriptedReplica(b_script)
    guard = Guard.remote("http://127.0.0.1:9/v1", model="m", stream=[a.url, b.url], policy=Policy(timeout_s=10))
    guard.stream_backend.replicas.failed(guard.stream_backend.urls[1])
    head, body = "Hello. ", "".join(f"Sentence {i:05d} is fine. " for i in range(1000))
    try:
        monitor = guard.stream(PROMPT, holdback=0)
        got = monitor.feed(head) + monitor.feed(body) + monitor.finish()
    finally:
        a.close()
        b.close()
    assert monitor.failovers >= 2
    assert got == monitor.released == head + body, f"the caller got {len(got):,} of {len(head + body):,} characters"


# -- a replay to a replica that stops reading ------------------------------------------------------------
def test_a_replay_to_a_replica_that_stops_reading_keeps_the_deadline():
    """The attack: A judged 2,000,000 characters (8 MB of UTF-8), then restarts. B answers ``opened`` and, ahead
    of time, an empty release for every frame to come, then never reads again. The replay's frames (each under
    the size that got a send watchdog) filled the socket buffers and the sync ``feed`` blocked for good (still
    blocked after 60 s against a 5 s deadline)."""
    delta = "\U0001f600" * 50_000

    def a_script(frame):
        if frame["type"] == "open":
            return {"type": "opened"}
        if frame["text"] == "end. ":
            return 1012
        return {"type": "released", "text": frame["text"]}

    def b_script(frame):
        return "stall" if frame["type"] == "open" else None

    a = ScriptedReplica(a_script, max_size=None)
    b = ScriptedReplica(b_script, max_size=None, max_queue=1)
    b.stall_replies = [{"type": "opened"}] + [{"type": "released", "text": ""}] * 5000
    guard = Guard.remote(
        "http://127.0.0.1:9/v1",
        model="m",
        stream=[a.url, b.url],
        policy=Policy(timeout_s=5, on_error="block"),
        stream_options={"max_failovers": 1},
    )
    guard.stream_backend.replicas.failed(guard.stream_backend.urls[1])
    monitor = guard.stream(PROMPT, holdback=0)
    for _ in range(40):
        monitor.feed(delta)
    result: dict[str, object] = {}

    def last_feed() -> None:
        start = time.monotonic()
        try:
            result["out"] = monitor.feed("end. ")
        except Exception as exc:  # noqa: BLE001 - the test reports what happened
            result["error"] = type(exc).__name__
        result["took"] = time.monotonic() - start

    try:
        thread = threading.Thread(target=last_feed, daemon=True)
        thread.start()
        thread.join(20)
        assert not thread.is_alive(), "feed() still blocked 20 s into a 5 s deadline"
        assert result.get("error") in ("GuardUnavailable", "GuardTimeout"), result
        assert result["took"] < 8, result
    finally:
        monitor.close()
        a.close()
        b.close()
    assert len(json.dumps(b.frames)) < 8_000_000  # B read little of the replay


# -- a prompt no replica judged ---------------------------------------------------------------------------
def prompt_fails(conversation) -> str:
    if conversation[-1]["role"] == "user":
        raise RuntimeError("engine down for prompts")
    return keyword_verdict(conversation)


@pytest.mark.parametrize("client_on_error", ["allow", "block"])
def test_a_prompt_screened_beside_the_answer_that_failed_is_screened_by_another_replica(client_on_error):
    """The attack: replica A screens the prompt beside the answer (`Guard(parallel_input=True)`), so its
    ``opened`` frame comes before the prompt's verdict; its prompt check fails. Under a client that fails
    open, A's flagged prompt decision never reached the client (sent only at ``opened``): 108 of 108 answer
    characters out. Under one that fails closed, A closed 4503 and the client re-opened on B with
    ``screen_prompt: false``: B never screened the unsafe prompt, and the answer went out. The prompt's
    decision now reaches the client whenever it comes, and a re-open screens the prompt unless a replica
    reported its decision."""
    down = Guard(ScriptedBackend(prompt_fails, name="kw"), Policy(on_error="allow"), parallel_input=True)
    healthy = Guard(ScriptedBackend(keyword_verdict, name="kw"))
    with serving(down) as a, serving(healthy) as b:
        guard = Guard.remote(
            "http://127.0.0.1:9/v1",
            model="kw",
            stream=[a + "/v1", b + "/v1"],
            policy=Policy(on_error=client_on_error, timeout_s=10),
        )
        guard.stream_backend.replicas.failed(guard.stream_backend.urls[1])  # sessions start on A
        out = ""
        monitor = guard.stream(f"How do I {RECIPE.lower()}", holdback=2)
        with pytest.raises(GuardViolation) as err:
            for delta in chunks(SAFE):
                out += monitor.feed(delta)
            out += monitor.finish()
        monitor.close()
    assert err.value.decision.stage.value == "prompt" and err.value.decision.reason == "unsafe"
    assert out == "", f"{len(out)} characters of the answer went out before the prompt was judged"


def test_a_replica_gone_before_its_prompt_verdict_leaves_the_prompt_to_the_next():
    """A replica that answers ``opened`` without the prompt's decision (it screens it beside the answer) and
    restarts (1012) before the verdict: the re-open on B must screen the prompt (it sent ``screen_prompt:
    false``, and B judged nothing of it)."""
    a = ScriptedReplica(lambda f: {"type": "opened"} if f["type"] == "open" else 1012)
    b = ScriptedReplica(
        lambda f: {"type": "opened"} if f["type"] == "open" else {"type": "released", "text": f.get("text", "")}
    )
    guard = Guard.remote("http://127.0.0.1:9/v1", model="m", stream=[a.url, b.url], policy=Policy(timeout_s=5))
    guard.stream_backend.replicas.failed(guard.stream_backend.urls[1])
    try:
        monitor = guard.stream(PROMPT, holdback=0)
        monitor.feed("Hello. ")
        monitor.close()
    finally:
        a.close()
        b.close()
    assert b.frames[0]["type"] == "open" and b.frames[0].get("screen_prompt", True) is not False


def test_replicas_that_fail_now_and_then_cannot_multiply_the_work_without_bound():
    """The attack: two replicas that flag every third release as a timeout (a loaded server failing open).
    Each flag is a failover, and each failover replays the text so far: the replicas judged 23x the answer
    for a 50,000-character answer (59 failovers). A session re-opens at most ``max_session_failovers`` (8)
    times; past that the client's policy decides (here: fail closed)."""
    count = {"feeds": 0}
    flagged = {"allowed": True, "action": "flag", "stage": "stream", "reason": "timeout", "error": "slow"}

    def script(frame):
        if frame["type"] == "open":
            return {"type": "opened"}
        count["feeds"] += 1
        reply = {"type": "released", "text": frame.get("text", "")}
        return {**reply, "flags": [flagged]} if count["feeds"] % 3 == 0 else reply

    a, b = ScriptedReplica(script), ScriptedReplica(script)
    guard = Guard.remote("http://127.0.0.1:9/v1", model="m", stream=[a.url, b.url], policy=Policy(timeout_s=5))
    monitor = guard.stream(PROMPT, holdback=0, screen_prompt=False)
    fed = 0
    try:
        with pytest.raises(GuardUnavailable):
            for i in range(200):
                delta = f"Sentence {i:04d} is fine. "
                fed += len(delta)
                monitor.feed(delta)
    finally:
        monitor.close()
        a.close()
        b.close()
    replayed = sum(len(f.get("text", "")) for f in a.frames + b.frames)
    assert monitor.failovers <= 8, monitor.failovers
    assert replayed <= 10 * fed, f"the replicas judged {replayed / fed:.1f}x the answer"
