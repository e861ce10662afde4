"""The Stream model's sessions are bounded together (``TransformersStream(max_session_tokens=...)``).

Every open Stream session keeps a KV cache of its prompt and its answer so far, up to the model's context
(8,192 positions for Qwen3Guard-Stream: 0.9 GiB in bfloat16 at 0.6B). Without a bound, clients of a
server that open long streams add up to any amount of memory; with it, a session that would take the
caches past the budget slides to its fair share first, and one whose prompt cannot fit fails closed.
On the demo Stream model (a 512-position context)."""

from __future__ import annotations

import gc
import threading

import pytest
from qwenguard.core import Guard, GuardUnavailable, Policy, QwenGuardError
from qwenguard.core.backends.transformers_stream import DEFAULT_STREAM_SESSION_TOKENS, TransformersStream
from qwenguard.core.verdict import Risk

PROMPT = "Tell me about Paris."
SAFE = "Paris is the capital of France and its largest city. "
CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."


@pytest.fixture(scope="module")
def stream():
    # load() is how an operator sets the options (the server's --stream-backend goes through it).
    backend = TransformersStream.load("demo-stream", device="cpu", max_session_tokens=1_200)
    yield backend
    backend.close()


def _held(sessions) -> int:
    """KV positions the sessions' caches hold now, read from the caches themselves."""
    return sum(s.cached_tokens for s in sessions)


def test_many_long_streams_stay_within_the_budget(stream) -> None:
    """The attack: eight clients stream long answers at once. Without a bound they hold eight contexts
    (about 8 x 500 positions here); with it, never more than the budget, and every token is still scored."""
    assert stream.max_session_tokens == 1_200
    slides = stream.room_slides
    sessions = [stream.open_session(f"{PROMPT} ({i})") for i in range(8)]
    peak = _held(sessions)
    scored = [0] * len(sessions)
    lock = threading.Lock()

    def run(i: int) -> None:
        nonlocal peak
        for _ in range(12):
            scored[i] += len(sessions[i].feed_text(SAFE * 2))
            with lock:
                peak = max(peak, _held(sessions))
        scored[i] += len(sessions[i].finish())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert peak <= stream.max_session_tokens, peak
        assert stream.room_slides > slides  # the budget, not the context, is what bounded them
        tokens = len(stream.codec.encode(SAFE * 24))
        assert scored == [tokens] * len(sessions)  # sliding never skips a token
        assert stream.session_tokens <= stream.max_session_tokens
    finally:
        for s in sessions:
            s.close()
    assert (stream.session_tokens, stream.open_sessions) == (0, 0)  # closed sessions give their share back


def test_a_stream_that_slid_for_room_still_stops_the_clause(stream) -> None:
    """Sliding keeps the prompt and the most recent tokens: the clause at the end is still flagged."""
    tight = TransformersStream(stream.model, stream.tokenizer, name="tight", max_session_tokens=400)
    hog, victim = tight.open_session(PROMPT), tight.open_session(PROMPT)
    try:
        hog.feed_text(SAFE * 12)  # about 140 positions: the budget is crowded with what follows
        verdicts = []
        for _ in range(12):
            verdicts += victim.feed_text(SAFE)
            hog.feed_text(SAFE)
        assert victim.cached_tokens + hog.cached_tokens <= tight.max_session_tokens
        assert tight.room_slides >= 2
        verdicts += victim.feed_text(CLAUSE) + victim.finish()
        assert any(v.risk is Risk.UNSAFE for v in verdicts[-20:])
        assert all(v.risk is not Risk.UNSAFE for v in verdicts[:-20])
    finally:
        tight.close()


def test_a_session_over_its_share_slides_down_when_crowded(stream) -> None:
    """One long stream may use the whole budget while alone; once others arrive and the budget is crowded,
    its next step slides it down to at most its fair share, so the newcomers find room."""
    big = stream.open_session(PROMPT)
    others: list = []
    try:
        for _ in range(30):
            big.feed_text(SAFE)
        alone = big.cached_tokens
        others = [stream.open_session(f"{PROMPT} ({i})") for i in range(3)]
        for s in others:
            s.feed_text(SAFE * 14)
        big.feed_text(SAFE)
        share = stream.max_session_tokens // stream.open_sessions
        assert big.cached_tokens <= share < alone, (big.cached_tokens, share, alone)
    finally:
        for s in [big, *others]:
            s.close()


def test_a_session_dropped_without_close_gives_its_share_back(stream) -> None:
    session = stream.open_session(PROMPT)
    session.feed_text(SAFE)
    assert stream.session_tokens > 0
    del session
    gc.collect()
    assert (stream.session_tokens, stream.open_sessions) == (0, 0)


def test_a_prompt_that_cannot_fit_fails_closed_and_is_not_cut(stream) -> None:
    """A newcomer whose prompt does not fit in what the others hold, and is over its fair share, is refused
    (GuardUnavailable naming the budget), never judged on a cut prompt; the refused session leaves no share
    behind. (A newcomer within its share is judged: an idle session over its share gives up its cache, rt49c M3.)"""
    first_prompt, harmful = "What is the capital of France? ", "How can I make a bomb at home? " * 12
    budget = len(stream.encode_prompt(first_prompt)[0]) + len(stream.encode_prompt(harmful)[0]) - 1
    tight = TransformersStream(stream.model, stream.tokenizer, name="tight", max_session_tokens=budget)
    try:
        first = tight.open_session(first_prompt)
        before = tight.session_tokens
        with pytest.raises(GuardUnavailable, match=f"max_session_tokens={budget:,}"):
            tight.open_session(harmful)
        assert (tight.session_tokens, tight.open_sessions) == (before, 1)
        assert tight.sessions_refused == 1
        first.close()
    finally:
        tight.close()


def test_a_step_that_finds_no_room_fails_closed(stream) -> None:
    """A session whose next step cannot fit even with nothing but its prompt kept, and is over its fair share,
    is refused (the tokens it was fed are not scored, so the session is unusable), never run past the budget."""
    first_prompt, second_prompt = PROMPT, "What is the capital of France? " * 10
    budget = len(stream.encode_prompt(first_prompt)[0]) + len(stream.encode_prompt(second_prompt)[0]) + 3
    tight = TransformersStream(stream.model, stream.tokenizer, name="tight", max_session_tokens=budget)
    try:
        first = tight.open_session(first_prompt)  # kept open: a collected session gives its share back
        second = tight.open_session(second_prompt)
        with pytest.raises(GuardUnavailable, match=f"max_session_tokens={budget:,}"):
            second.feed_text(SAFE)
        assert tight.session_tokens <= budget and tight.sessions_refused == 1
        with pytest.raises(QwenGuardError, match="unusable"):
            second.feed_text(SAFE)
        assert first.cached_tokens == len(stream.encode_prompt(first_prompt)[0])
    finally:
        tight.close()


def test_the_monitor_fails_closed_when_the_budget_refuses_it(stream) -> None:
    """Through `guard.stream`: the refusal is the guard being unable to answer, so the strict policy blocks."""
    guard = Guard.from_pretrained(
        "demo",
        policy=Policy.strict(),
        stream_model="demo-stream",
        device="cpu",
        stream_options={"max_session_tokens": 8},
    )
    try:
        assert guard.stream_backend.max_session_tokens == 8
        with pytest.raises(GuardUnavailable, match="max_session_tokens=8") as refused:
            guard.stream(PROMPT)
        decision = refused.value.decision
        assert (decision.allowed, decision.reason) == (False, "guard_error"), decision
        assert guard.stream_backend.open_sessions == 0
    finally:
        guard.close()


def test_load_takes_every_constructor_option_and_refuses_unknown_ones() -> None:
    """``load`` took ``step_tokens`` and ``max_sessions_per_forward`` into ``**kwargs`` and dropped them."""
    backend = TransformersStream.load(
        "demo-stream", device="cpu", step_tokens=8, max_sessions_per_forward=4, max_session_tokens=None
    )
    try:
        assert (backend.step_tokens, backend.batcher._batcher.max_batch, backend.max_session_tokens) == (8, 4, None)
        s = backend.open_session(PROMPT)
        s.feed_text(SAFE * 20)  # unbounded: one session alone may fill its context
        assert s.cached_tokens > 200
        s.close()
    finally:
        backend.close()
    with pytest.raises(TypeError):
        TransformersStream.load("demo-stream", device="cpu", step_token=8)


def test_the_budget_is_bounded_by_default_and_checked() -> None:
    assert DEFAULT_STREAM_SESSION_TOKENS == 65_536
    with pytest.raises(ValueError, match="max_session_tokens"):
        TransformersStream.load("demo-stream", device="cpu", max_session_tokens=0)
    with pytest.raises(ValueError, match="stream_options without stream_model"):
        Guard.from_pretrained("demo", device="cpu", stream_options={"max_session_tokens": 8})
