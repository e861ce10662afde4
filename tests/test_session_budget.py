"""The decode engine's session caches are bounded together (``max_session_tokens``).

Every stream judged check by check keeps a KV cache of its guard prompt (a window session, the gate):
without a bound, a server with many long streams open at once grows without limit (two caches of ~4,100
positions for a 2,000-token prompt, ~450 MiB each at Qwen3Guard-Gen-0.6B in bf16, per stream). Past the
budget a stream's checks run in full, with the same verdicts; a closed stream gives its share back."""

from __future__ import annotations

import pytest
from qwenguard.core import Guard, GuardViolation
from qwenguard.core.backends.gen_session import GenSession
from qwenguard.core.backends.transformers_gen import DEFAULT_MAX_SESSION_TOKENS, TransformersGen

NOTES = " ".join(
    [
        "The library opens at eight and closes at eight.",
        "Members may borrow ten books for three weeks.",
        "The reading room on the first floor is quiet.",
    ]
    * 3
)


def _conversation(i: int, answer: str = "The library opens at eight.") -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"Visitor {i} asks about these notes:\n{NOTES}\nWhen can I come?"},
        {"role": "assistant", "content": answer},
    ]


def _held(sessions: list[GenSession]) -> int:
    """KV positions the sessions' caches hold now (read from the caches themselves)."""
    return sum(s._state.cache.capacity for s in sessions if s._state.cache is not None)


@pytest.fixture(scope="module")
def demo():
    backend = TransformersGen.load("demo", device="cpu")
    yield backend
    backend.close()


def _budgeted(demo: TransformersGen, budget: int | None) -> TransformersGen:
    return TransformersGen(demo.model, demo.tokenizer, name="demo", max_session_tokens=budget)


def test_many_open_streams_keep_their_caches_within_the_budget(demo) -> None:
    # One stream's cache here is ~320 positions: a budget of 1,000 keeps two, not eight.
    backend = _budgeted(demo, 1_000)
    try:
        sessions = [GenSession(backend) for _ in range(8)]
        for i, session in enumerate(sessions):
            verdict = session.classify(_conversation(i))
            assert verdict.risk == backend.classify([_conversation(i)])[0].risk
            assert _held(sessions) <= 1_000, (i, _held(sessions))
        assert 0 < _held(sessions) and backend.engine.sessions_declined >= 5
        assert backend.engine.session_tokens == _held(sessions)
    finally:
        backend.close()
    backend = _budgeted(demo, None)  # unbounded: every stream keeps its cache, and it is still counted
    try:
        sessions = [GenSession(backend) for _ in range(3)]
        for i, session in enumerate(sessions):
            session.classify(_conversation(i))
        assert backend.engine.session_tokens == _held(sessions) > 0 and backend.engine.sessions_declined == 0
    finally:
        backend.close()


def test_a_session_that_grows_in_a_batch_is_counted_at_its_new_size(demo) -> None:
    """Two streams whose checks share a forward, one of which outgrows its buffers in that forward: the
    other is counted against what the first may grow to, not against the buffers it had before it."""
    from qwenguard.core.backends.gen_engine import SessionState, SessionStep

    backend = _budgeted(demo, None)
    engine = backend.engine
    try:
        grows, fresh = SessionState(), SessionState()
        backend._batcher.run([SessionStep(grows, backend.encoder.encode(_conversation(1)))])
        have = grows.cache.capacity
        answer = "The library opens at eight."  # a longer answer: the prompt no longer fits the buffers
        while len(backend.encoder.encode(_conversation(1, answer))) + 16 <= have:
            answer += " Come any day."
        longer = backend.encoder.encode(_conversation(1, answer))
        other = backend.encoder.encode([{"role": "user", "content": f"{NOTES}\n{NOTES}\nWhen?"}])
        # Enough for both as the engine saw them before this change (the first at its old buffers), and
        # for the first alone at its new size; not for both at their sizes after the forward.
        grown = 2 * (len(longer) + backend.max_new_tokens)
        budget = engine.max_session_tokens = max(grown, have + 2 * (len(other) + backend.max_new_tokens))
        steps = [SessionStep(grows, longer), SessionStep(fresh, other)]
        answers = backend._batcher.run(steps)
        assert [a[0] for a in answers] == [a[0] for a in backend._batcher.run([s.ids for s in steps])]
        held = sum(s.cache.capacity for s in (grows, fresh) if s.cache is not None)
        assert held <= budget and engine.sessions_declined == 1, (held, budget)
    finally:
        backend.close()


def test_a_stream_past_the_budget_answers_as_a_full_check(demo) -> None:
    backend = _budgeted(demo, 0)  # no session may keep a cache
    try:
        session = GenSession(backend)
        for answer in ("The library opens", "The library opens at eight.", "Mix ammonium nitrate with fuel oil."):
            outcome = session.classify(_conversation(1, answer))
            full = backend.classify([_conversation(1, answer)])[0]
            assert (outcome.risk, outcome.categories) == (full.risk, full.categories)
            assert session._state.cache is None
        assert backend.engine.session_tokens == 0 and backend.engine.sessions_declined == 3
    finally:
        backend.close()


def test_a_closed_session_gives_its_share_back(demo) -> None:
    backend = _budgeted(demo, 1_000)
    try:
        first, second = GenSession(backend), GenSession(backend)
        first.classify(_conversation(1))
        second.classify(_conversation(2))
        third = GenSession(backend)
        third.classify(_conversation(3))
        assert third._state.cache is None  # the budget is spent
        first.close()
        third.classify(_conversation(3))
        assert third._state.cache is not None  # first's share came back
        # and the kept cache pays: the next check of the growing answer runs only what is new
        engine = backend.engine
        before = engine.tokens_run
        third.classify(_conversation(3, "The library opens at eight. Come any day."))
        assert engine.tokens_run - before < 40, engine.tokens_run - before
    finally:
        backend.close()


def test_the_monitor_decides_the_same_past_the_budget(demo) -> None:
    unsafe = "The library opens at eight. Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
    results = []
    for budget in (None, 0):
        guard = Guard(_budgeted(demo, budget), cache_size=0)
        monitor = guard.stream(_conversation(1)[0]["content"])
        released = ""
        try:
            for word in unsafe.split(" "):
                released += monitor.feed(word + " ")
            released += monitor.finish()
            results.append((released, None))
        except GuardViolation as violation:
            results.append((released, (violation.decision.risk, violation.decision.offset)))
        finally:
            guard.close()
    assert results[0] == results[1]
    assert results[0][1] is not None and "Mix" not in results[0][0]


def test_the_budget_is_bounded_by_default_and_checked() -> None:
    import inspect

    assert inspect.signature(TransformersGen).parameters["max_session_tokens"].default == DEFAULT_MAX_SESSION_TOKENS
    assert DEFAULT_MAX_SESSION_TOKENS is not None
    for bad in (-1, True):
        with pytest.raises(ValueError, match="max_session_tokens"):
            TransformersGen.load("demo", device="cpu", max_session_tokens=bad)
    guard = Guard.from_pretrained("demo", device="cpu", max_session_tokens=1_000)
    try:
        assert guard.backend.engine.max_session_tokens == 1_000
    finally:
        guard.close()
