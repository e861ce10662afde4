"""The Gen-window stream engine checks its windows through a `GenSession` (core/streaming/gen_windows.py:
`WindowJudge`): a long request (a pasted document, a RAG context) is read once per stream, not once per
window, and the monitor decides exactly as with full checks.

Cost is counted in tokens the model runs (not time): the windows' conversations are recorded where the
backend plans them, then each is run again as a full check for the reference."""

from __future__ import annotations

import time

import pytest
from gen_script import record_plans
from qwenguard.core import Guard, GuardViolation
from qwenguard.core.backends.gen_engine import SessionState, SessionStep
from qwenguard.core.backends.transformers_gen import TransformersGen
from qwenguard.core.formats.conversations import response_conversation

# A benign request with a pasted document: ~230 demo tokens that every window of the answer repeats.
DOCUMENT = " ".join(
    [
        "The museum opens at nine and closes at six.",
        "Tickets are cheaper for students and free for children.",
        "The north wing holds paintings from the last two centuries.",
        "Guided tours leave from the main hall every hour.",
        "The cafe on the top floor serves lunch until three.",
    ]
    * 3
)
REQUEST = f"Here are my notes from the museum visit:\n{DOCUMENT}\nCan you summarise them for me?"
SAFE_ANSWER = (
    "The museum is open from nine to six. Students pay less and children enter for free. "
    "The north wing shows paintings. Tours start every hour from the main hall. "
    "Lunch is served upstairs until three. Enjoy your visit."
)
UNSAFE_ANSWER = (
    "The museum is open from nine to six. Students pay less and children enter for free. "
    "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
)


@pytest.fixture(scope="module")
def demo():
    """The demo model behind two guards: the decode engine (window sessions) and transformers' generate."""
    fast = TransformersGen.load("demo", device="cpu")
    slow = TransformersGen(fast.model, fast.tokenizer, name="demo", engine=False)
    yield Guard(fast, cache_size=0), Guard(slow, cache_size=0)
    fast.close()
    slow.close()


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def _stream(guard: Guard, answer: str) -> tuple[str, object]:
    """Feed ``answer`` word by word through ``guard.stream``; (released text, the violation's decision or None)."""
    monitor = guard.stream(REQUEST)
    released = ""
    try:
        for word in _words(answer):
            released += monitor.feed(word)
        released += monitor.finish()
    except GuardViolation as violation:
        return released, violation.decision
    return released, None


async def _astream(guard: Guard, answer: str) -> tuple[str, object]:
    monitor = await guard.astream(REQUEST).aopen()
    released = ""
    try:
        for word in _words(answer):
            released += await monitor.afeed(word)
        released += await monitor.afinish()
    except GuardViolation as violation:
        return released, violation.decision
    finally:
        await monitor.aclose()
    return released, None


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_long_request_is_read_once_per_stream_not_once_per_window(demo, monkeypatch, mode) -> None:
    guard, _ = demo
    backend, engine = guard.backend, guard.backend.engine
    seen = record_plans(backend, monkeypatch)
    before = engine.tokens_run
    released, decision = _stream(guard, SAFE_ANSWER) if mode == "sync" else await _astream(guard, SAFE_ANSWER)
    streamed = engine.tokens_run - before
    assert decision is None and released == SAFE_ANSWER
    windows = [c for c in seen if c[-1]["role"] == "assistant"]
    assert len(windows) >= 4, len(windows)  # one window per sentence or so
    monkeypatch.undo()
    before = engine.tokens_run
    for conversation in seen:  # the reference: the prompt check and each window as a full check
        backend.classify([conversation])
    full = engine.tokens_run - before
    request_tokens = len(backend.tokenizer(REQUEST, add_special_tokens=False)["input_ids"])
    # Full checks read the request once per window; the stream's sessions read it once in all (their
    # first check), however the windows were batched.
    saved = full - streamed
    assert saved >= 0.8 * request_tokens * (len(windows) - 1), (full, streamed, request_tokens, len(windows))


@pytest.mark.parametrize("answer", [SAFE_ANSWER, UNSAFE_ANSWER], ids=["safe", "unsafe"])
def test_window_sessions_decide_as_full_checks(demo, answer) -> None:
    fast, slow = demo
    released, decision = _stream(fast, answer)
    released_full, decision_full = _stream(slow, answer)
    assert released == released_full
    assert (decision is None) == (decision_full is None)
    if decision is not None:
        assert (decision.risk, decision.categories, decision.offset) == (
            decision_full.risk,
            decision_full.categories,
            decision_full.offset,
        )
        assert "ammonium" not in released  # and the clause was stopped: not one of its words went out
        assert len(released) <= answer.index("Mix")


async def test_async_window_sessions_decide_as_the_sync_ones(demo) -> None:
    fast, _ = demo
    for answer in (SAFE_ANSWER, UNSAFE_ANSWER):
        sync_released, sync_decision = _stream(fast, answer)
        async_released, async_decision = await _astream(fast, answer)
        assert async_released == sync_released
        assert (async_decision is None) == (sync_decision is None)


def test_a_closed_monitor_frees_its_window_session(demo) -> None:
    guard, _ = demo
    monitor = guard.stream(REQUEST)
    released = monitor.feed("The museum is open from nine to six. ")
    for _ in range(1000):  # until the sentence's window check is back (it is checked in the background)
        if released:
            break
        time.sleep(0.01)
        released += monitor.release_judged()
    assert released.strip() == "The museum is open from nine to six."
    judge = monitor._window_judge
    assert judge is not None and judge.pool is not None and judge.pool.sessions
    monitor.close()
    assert monitor._window_judge is None and not any(session.incremental for session in judge.pool.sessions)
    assert judge.pool.siblings == []  # no cache is kept alive for other sessions either


# -- the pool's waiting is bounded ---------------------------------------------------------------------
def _conversation() -> list[dict[str, str]]:
    return [{"role": "user", "content": REQUEST}, {"role": "assistant", "content": "The museum opens at nine."}]


def test_a_check_waiting_for_a_busy_session_gives_up_at_its_timeout(demo) -> None:
    from qwenguard.core.backends.gen_session_pool import GenSessionPool
    from qwenguard.core.errors import GuardTimeout

    guard, _ = demo
    pool = GenSessionPool(guard.backend, 1)
    held, _first = pool._take(None)  # the only session, busy (as if its check were running)
    assert held is not None
    started = time.monotonic()
    with pytest.raises(GuardTimeout):  # no session came free: a full check with no time left
        pool.classify(_conversation(), timeout=0.3)
    assert time.monotonic() - started >= 0.29 and pool.full_checks == 1
    pool._give_back(held, True)
    assert pool.classify(_conversation(), timeout=30).is_safe  # a free session: answered through it
    assert pool.steps == 1
    pool.close()


async def test_async_check_waiting_for_a_busy_session_gives_up_at_its_timeout(demo) -> None:
    from qwenguard.core.backends.gen_session_pool import GenSessionPool
    from qwenguard.core.errors import GuardTimeout

    guard, _ = demo
    pool = GenSessionPool(guard.backend, 1)
    held, _first = await pool._atake(None)
    assert held is not None
    with pytest.raises(GuardTimeout):
        await pool.aclassify(_conversation(), timeout=0.3)
    assert pool.full_checks == 1
    pool._give_back(held, True)
    assert (await pool.aclassify(_conversation(), timeout=30)).is_safe
    pool.close()


def test_closing_the_pool_wakes_a_waiting_check(demo) -> None:
    """A stream closed while its window waits for a session: the wait ends at once, not at its timeout."""
    import threading

    from qwenguard.core.backends.gen_session_pool import GenSessionPool

    guard, _ = demo
    pool = GenSessionPool(guard.backend, 1)
    held, _first = pool._take(None)
    assert held is not None
    outcome: list[object] = []
    waiter = threading.Thread(target=lambda: outcome.append(pool.classify(_conversation(), timeout=60)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.2)
    pool.close()
    waiter.join(30)
    assert not waiter.is_alive() and time.monotonic() - started < 30
    assert outcome and outcome[0].is_safe  # answered by a full check once the pool closed
    assert pool.full_checks == 1


def test_a_sliding_window_is_priced_at_the_tokens_it_runs(demo) -> None:
    """The batcher leads each step with the cheapest waiting item and lets in only items up to twice its
    cost. A session step was priced at how much its prompt grew; a stream's next window is as long as the
    last one but slides (a new start, a new end), so it was priced at a token or two while it ran its whole
    text again, and led steps that a short check could not join."""
    guard, _ = demo
    backend = guard.backend
    first, second = (
        backend._plan([response_conversation(REQUEST, window)])[0][0]
        for window in (SAFE_ANSWER[:150], SAFE_ANSWER[60:210])
    )
    state = SessionState()
    backend._batcher.run([SessionStep(state, first)])  # the session's cache now holds the first window
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    step = SessionStep(state, second)
    assert len(step) == len(second) - shared > 20, (len(step), len(second), shared)
    grown = SessionStep(state, first + second[shared:])  # a growing prompt: still priced at its growth
    assert len(grown) == len(second) - shared
