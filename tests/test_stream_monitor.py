"""StreamMonitor / AsyncStreamMonitor on a real TransformersStream (random-weight and constant-head
checkpoints in the official layout): hold-back guarantees, prompt gating, policy, faults, concurrency."""

import asyncio
import random

import pytest
from faults import ScriptedBackend
from qwenguard.core import Guard, GuardUnavailable, GuardViolation, Policy, Stage
from qwenguard.core.backends.transformers_stream import TransformersStream
from qwenguard.core.errors import StreamClosed
from qwenguard.core.streaming.debounce import Debounce
from qwenguard.core.verdict import CATEGORIES, Risk
from stream_checkpoints import constant_checkpoint, tiny_stream, tiny_stream_dir, tiny_tokenizer_dir  # noqa: F401

PROMPT = "Tell me about Paris."
WORDS = [
    "Paris",
    " is",
    " the",
    " capital",
    " of",
    " France",
    ".",
    " Mix",
    " ammonium",
    " nitrate",
    " café",
    " 日本",
    " 🙂",
    "\n",
    " <|im_end|>",
    " fuel",
    " oil",
    ",",
    " pipe",
    " fuse",
    "  ",
    " héllo",
    " tea",
]


def _unused_gen():
    return ScriptedBackend(lambda conv: pytest.fail("the Gen backend must not be called when a Stream model exists"))


def _guard(stream, policy=None, **kw):
    return Guard(_unused_gen(), policy or Policy.strict(), stream_backend=stream, **kw)


@pytest.fixture(scope="module")
def unsafe_tokens_stream(tmp_path_factory, tiny_tokenizer_dir):  # noqa: F811
    path = constant_checkpoint(tmp_path_factory.mktemp("u"), tiny_tokenizer_dir, response="Unsafe", query="Safe")
    return TransformersStream.load(path, device="cpu")


@pytest.fixture(scope="module")
def controversial_tokens_stream(tmp_path_factory, tiny_tokenizer_dir):  # noqa: F811
    path = constant_checkpoint(tmp_path_factory.mktemp("c"), tiny_tokenizer_dir, response="Controversial", query="Safe")
    return TransformersStream.load(path, device="cpu")


@pytest.fixture(scope="module")
def unsafe_prompt_stream(tmp_path_factory, tiny_tokenizer_dir):  # noqa: F811
    path = constant_checkpoint(tmp_path_factory.mktemp("p"), tiny_tokenizer_dir, response="Safe", query="Unsafe")
    return TransformersStream.load(path, device="cpu")


def _random_text(rnd: random.Random, n: int = 14) -> str:
    return "".join(rnd.choice(WORDS) for _ in range(n))


def _deltas(rnd: random.Random, text: str) -> list[str]:
    out, i = [], 0
    while i < len(text):
        j = i + rnd.randint(0, 6)
        out.append(text[i:j])
        i = j
    return out


def _expected_flag(stream, text, window=2):
    """Offline: score the whole text in one forward, apply the debounce (strict: first non-safe run)."""
    _, verdicts = stream.score(PROMPT, text)
    flags = Debounce(window).extend(v.risk for v in verdicts)
    return verdicts, (flags[0] if flags else None)


@pytest.mark.parametrize("holdback", [1, 2, 8])
def test_holdback_never_releases_the_flagged_span(tiny_stream, holdback):  # noqa: F811
    guard = _guard(tiny_stream)
    violations = 0
    for seed in range(12):
        rnd = random.Random(seed)
        text = _random_text(rnd)
        verdicts, flag = _expected_flag(tiny_stream, text)
        released = ""
        monitor = guard.stream(PROMPT, holdback=holdback, screen_prompt=False)
        try:
            for delta in _deltas(rnd, text):
                released += monitor.feed(delta)
                scored = monitor._scored
                # Released exactly up to the start of the oldest of the last `holdback` scored tokens.
                if scored >= holdback:
                    assert len(released) == verdicts[scored - holdback].start
                else:
                    assert released == ""
            released += monitor.finish()
        except GuardViolation as v:
            violations += 1
            d = v.decision
            assert flag is not None
            assert d.stage is Stage.STREAM and not d.allowed
            assert d.offset == verdicts[flag.start].start
            assert len(released) <= d.offset  # nothing at or after the flagged span went out
            assert monitor.released == released and text.startswith(released)
            assert d.categories and d.categories[0] in CATEGORIES
            assert monitor.decision is d
        else:
            assert flag is None, "the offline rule flags this text, the monitor did not"
            assert released == text
    assert violations, "random weights should flag some streams (a test that can fail)"


def test_holdback_zero_releases_at_once(tiny_stream):  # noqa: F811
    guard = _guard(tiny_stream, Policy.strict(ignore_categories=CATEGORIES))
    monitor = guard.stream(PROMPT, holdback=0, screen_prompt=False)
    out = monitor.feed("Paris is the capital of France. The Eiffel")
    assert out and out == monitor.text[: monitor._scored_end]
    assert monitor.held == monitor.text[len(out) :]
    assert out + monitor.finish() == "Paris is the capital of France. The Eiffel"


def test_every_token_unsafe_blocks_before_any_release(unsafe_tokens_stream):
    seen = []
    guard = _guard(unsafe_tokens_stream, listeners=[seen.append])
    with guard.stream(PROMPT, holdback=1) as monitor:
        assert monitor.prompt_decision.allowed
        with pytest.raises(GuardViolation) as info:
            for delta in ["The capital ", "of France ", "is Paris."]:
                assert monitor.feed(delta) == ""
        d = info.value.decision
        assert (d.stage, d.offset, d.risk, d.reason) == (Stage.STREAM, 0, Risk.UNSAFE, "unsafe")
        assert monitor.released == ""
        with pytest.raises(GuardViolation):  # stays stopped
            monitor.feed("more")
        with pytest.raises(GuardViolation):
            monitor.finish()
    assert [x.stage for x in seen] == [Stage.PROMPT, Stage.STREAM] and seen[-1] is d


def test_ignored_categories_flag_without_blocking(unsafe_tokens_stream):
    seen = []
    guard = _guard(unsafe_tokens_stream, Policy.strict(ignore_categories=CATEGORIES), listeners=[seen.append])
    with guard.stream(PROMPT) as monitor:
        text = "The capital of France is Paris."
        assert monitor.feed(text) + monitor.finish() == text
    assert monitor.decision is None and monitor.flags and monitor.flags[0].reason == "ignored_category"
    assert seen[-1].reason == "ignored_category"


def test_strict_blocks_and_loose_flags_controversial(controversial_tokens_stream):
    text = "The capital of France is Paris."
    with pytest.raises(GuardViolation) as info:
        with _guard(controversial_tokens_stream, Policy.strict()).stream(PROMPT) as m:
            m.feed(text)
            m.finish()
    assert info.value.decision.reason == "controversial"
    loose = _guard(controversial_tokens_stream, Policy.loose()).stream(PROMPT)
    assert loose.feed(text) + loose.finish() == text
    assert loose.flags[0].reason == "controversial" and loose.flags[0].allowed


def test_blocked_prompt_gates_the_stream(unsafe_prompt_stream):
    guard = _guard(unsafe_prompt_stream)
    with pytest.raises(GuardViolation) as info:
        guard.stream("What is the capital of France?")
    assert info.value.decision.stage is Stage.PROMPT
    # The prompt stage can be relaxed independently; then the stream runs.
    relaxed = _guard(unsafe_prompt_stream, Policy.strict().with_stage(Stage.PROMPT, enabled=False))
    with relaxed.stream("What is the capital of France?") as m:
        assert m.feed("Paris.") + m.finish() == "Paris."


async def test_blocked_prompt_gates_the_async_stream(unsafe_prompt_stream):
    guard = _guard(unsafe_prompt_stream)
    with pytest.raises(GuardViolation):
        async with guard.astream("What is the capital of France?") as m:
            await m.afeed("never released")
    monitor = guard.astream("What is the capital of France?")
    with pytest.raises(GuardViolation):
        await monitor.afeed("x")  # opening lazily also screens
    assert monitor.released == ""


def test_bad_input_and_lifecycle(tiny_stream):  # noqa: F811
    guard = _guard(tiny_stream, Policy.strict(ignore_categories=CATEGORIES))
    m = guard.stream(PROMPT)
    assert m.feed("") == ""
    with pytest.raises(TypeError):
        m.feed(None)
    with pytest.raises(TypeError):
        m.feed(b"bytes")
    m.feed("Hello \ud800 there")  # lone surrogate: replaced, not a crash
    assert "\ufffd" in m.text
    m.finish()
    with pytest.raises(StreamClosed):
        m.feed("late")
    with pytest.raises(StreamClosed):
        m.finish()
    m2 = guard.stream(PROMPT)
    m2.close()
    with pytest.raises(StreamClosed):
        m2.feed("after close")
    with pytest.raises(ValueError):
        guard.stream(PROMPT, holdback=-1)
    with pytest.raises(ValueError):
        guard.stream(PROMPT, window=0)
    # A conversation ending in an assistant turn is a prefill the answer continues (rt62f F2): judged with it in Gen
    # windows (tests/test_rt62T_prefill_runs.py), no longer refused by a Stream-model guard.
    with guard.stream(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], screen_prompt=False
    ) as m3:
        assert m3.stream_backend is None


def test_stream_stage_disabled_passes_through(tiny_stream):  # noqa: F811
    guard = _guard(tiny_stream, Policy.strict().with_stage(Stage.STREAM, enabled=False))
    with guard.stream(PROMPT, screen_prompt=False) as m:
        assert m.feed("anything at all") == "anything at all"
        assert m.finish() == ""


class _BrokenSessions:
    """Fault injection: a real backend whose sessions fail on the first feed."""

    def __init__(self, real):
        self.real, self.name = real, "broken"

    def open_session(self, messages, **kw):
        session = self.real.open_session(messages, **kw)

        def boom(_delta, **kw):
            raise RuntimeError("CUDA error: device lost")

        session.feed_text = boom
        return session


def test_backend_error_fails_closed_by_default(tiny_stream):  # noqa: F811
    guard = _guard(_BrokenSessions(tiny_stream))
    m = guard.stream(PROMPT, screen_prompt=False)
    with pytest.raises(GuardUnavailable) as info:
        m.feed("Paris is nice.")
    assert info.value.decision.reason == "guard_error" and m.released == ""
    with pytest.raises(GuardUnavailable):
        m.feed("more")


def test_backend_error_fails_open_when_asked(tiny_stream):  # noqa: F811
    """Failing open is per check: the session's error is flagged, and the Gen model judges the rest
    (tests/test_stream_fail_open.py tries it as an attack)."""
    gen = ScriptedBackend(lambda conv: "Safety: Safe\nCategories: None\nRefusal: No")
    guard = Guard(gen, Policy.strict(on_error="allow"), stream_backend=_BrokenSessions(tiny_stream))
    m = guard.stream(PROMPT, screen_prompt=False)
    out = m.feed("Paris is nice.")
    assert m.decision.reason == "guard_error" and m.decision.allowed and m.flags == [m.decision]
    out += m.feed(" More.") + m.finish()
    assert out == "Paris is nice. More." and gen.calls  # judged by the Gen windows, not released unchecked


def test_wrap_yields_released_pieces_and_closes_upstream(unsafe_tokens_stream):
    closed = []

    def upstream():
        try:
            yield from ["The capital ", "of France ", "is Paris."]
        finally:
            closed.append(True)

    guard = _guard(unsafe_tokens_stream)
    out = []
    with pytest.raises(GuardViolation):
        for piece in guard.stream(PROMPT).wrap(upstream()):
            out.append(piece)
    assert out == [] and closed == [True]


async def test_async_monitor_matches_sync_and_has_no_crosstalk(tiny_stream):  # noqa: F811
    guard = _guard(tiny_stream, Policy.loose())
    texts = [_random_text(random.Random(100 + i), 2 + i % 9) for i in range(100)]

    def sync_run(text):
        m = guard.stream(PROMPT, holdback=2, screen_prompt=False)
        try:
            for d in _deltas(random.Random(len(text)), text):
                m.feed(d)
            m.finish()
        except GuardViolation as v:
            return m.released, v.decision.offset
        return m.released, None

    expected = [sync_run(t) for t in texts]

    async def async_run(text):
        m = guard.astream(PROMPT, holdback=2, screen_prompt=False)
        async with m:
            try:
                for d in _deltas(random.Random(len(text)), text):
                    await m.afeed(d)
                    await asyncio.sleep(0)
                await m.afinish()
            except GuardViolation as v:
                return m.released, v.decision.offset
        return m.released, None

    got = await asyncio.gather(*(async_run(t) for t in texts))
    assert list(got) == expected
    assert any(off is not None for _, off in expected) and any(off is None for _, off in expected)


def test_token_verdicts_are_reported_and_bounded(tiny_stream):  # noqa: F811
    guard = _guard(tiny_stream, Policy.strict(ignore_categories=CATEGORIES))
    m = guard.stream(PROMPT, keep_token_verdicts=4)
    m.feed("Paris is the capital of France and the Eiffel Tower is in Paris.")
    taken = m.take_token_verdicts()
    assert 0 < len(taken) <= 4 and taken[-1].to_dict()["risk"] in ("safe", "unsafe", "controversial")
    assert m.take_token_verdicts() == []


def test_token_verdicts_that_raised_a_stop_can_be_read_after_it(unsafe_tokens_stream):
    """An operator auditing a stop reads the tokens that caused it (rt66g F2: the batch that flagged the run was
    dropped with the raise, so every verdict read after the stop was of the tokens before it)."""
    guard = _guard(unsafe_tokens_stream)
    with guard.stream(PROMPT, holdback=1) as monitor:
        with pytest.raises(GuardViolation) as info:
            monitor.feed("The capital of France is Paris.")
        taken = monitor.take_token_verdicts()
    flagged = info.value.decision
    assert flagged.risk is Risk.UNSAFE
    assert sum(v.risk is Risk.UNSAFE for v in taken) >= 2  # the window of two that flagged the run, at least
    assert taken[0].index == 0 and [v.index for v in taken] == list(range(len(taken)))
