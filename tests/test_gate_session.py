"""The incremental streaming gate (core/streaming/gate_session.py) and the LangChain ``"gate"`` engine that
uses it (issue 16 item 4).

- `GateSession` decides as a full ``guard.check_many`` does on the same conversations, chunk by chunk:
  on the demo guard and on a Qwen3Guard-shaped random model with the real tokenizer (its labels scored by
  the model itself), sync and async, through a backend fault, with a remote guard (full checks).
- Its cost per chunk, counted in tokens the model runs (not time), stays flat as the answer grows, where
  a full check per chunk re-reads the whole window; the LangChain gate engines (callback and
  ``guard_output``) pay the flat cost.
- `GrowingWindow`: the text a gate reads.
"""

from __future__ import annotations

import re
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gen_script import ScriptedAnswer, record_plans
from qwenguard.core import Guard, Policy, Risk, Stage
from qwenguard.core.backends.gen_engine import SessionState, SessionStep
from qwenguard.core.backends.transformers_gen import TransformersGen
from qwenguard.core.formats.conversations import response_conversation
from qwenguard.core.streaming.gate_session import GateSession, GrowingWindow
from qwenguard.core.streaming.gen_windows import WindowJudge
from realshape import TINY, build_gen
from scripted_openai import Reply, scripted_openai

sys.path.insert(0, str(Path(__file__).parent / "langchain"))  # the LangChain tests' fake chat model
from lc_fakes import SAFE_ANSWER, SAFE_QUESTION, UNSAFE_CLAUSE, scripted  # noqa: E402

REQUEST = "Tell me about Paris."
# A safe answer, then an unsafe clause, then more text: the gate blocks somewhere in the middle.
ANSWER = " ".join([SAFE_ANSWER] * 8 + [UNSAFE_CLAUSE] + [SAFE_ANSWER] * 6)


def _chunks(text: str) -> list[str]:
    """One word (with its leading space) per chunk, as an LLM streams."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def _windows(text: str, window_chars: int) -> list[str]:
    window = GrowingWindow(window_chars)
    return [window.add(chunk) for chunk in _chunks(text)]


def _same(a, b) -> None:
    """Two decisions agree: outcome, reason, verdict (label, categories, refusal, text), probabilities."""
    assert (a.allowed, a.action, a.stage, a.reason) == (b.allowed, b.action, b.stage, b.reason)
    assert (a.verdict is None) == (b.verdict is None)
    if a.verdict is not None:
        va, vb = a.verdict, b.verdict
        assert (va.risk, va.categories, va.refusal, va.raw) == (vb.risk, vb.categories, vb.refusal, vb.raw)
        assert (va.probs is None) == (vb.probs is None)
        if va.probs is not None:
            assert max(abs(va.probs[r] - vb.probs[r]) for r in Risk) <= 1e-3, (va.probs, vb.probs)


@pytest.fixture(scope="module")
def demo():
    """The demo model behind two guards: the decode engine (sessions) and transformers' generate."""
    fast = TransformersGen.load("demo", device="cpu")
    slow = TransformersGen(fast.model, fast.tokenizer, name="demo", engine=False)
    yield Guard(fast, cache_size=0), Guard(slow, cache_size=0)
    fast.close()
    slow.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A Qwen3Guard-Gen-shaped random model (real tokenizer), engine and generate, the label the model's own."""
    path = build_gen(tmp_path_factory.mktemp("realshape-gate"), shape=TINY, max_positions=4096)
    fast = TransformersGen.load(str(path), device="cpu")
    slow = TransformersGen(fast.model, fast.tokenizer, name=str(path), engine=False)
    script = ScriptedAnswer(fast.tokenizer, "Safety: Safe\nCategories: None\nRefusal: No", free_label=True)
    script.install(fast)
    script.install(slow)
    yield Guard(fast, cache_size=0), Guard(slow, cache_size=0)
    fast.close()
    slow.close()


# -- the same decisions as full checks ---------------------------------------------------------------
def test_gate_session_decides_as_full_checks_chunk_by_chunk_on_the_demo(demo) -> None:
    guard, reference = demo
    gate = GateSession(guard)
    assert gate.session is not None and gate.session.incremental
    windows = _windows(ANSWER, 300)
    decisions = []
    for text in windows:
        conversation = response_conversation(REQUEST, text)
        decision = gate.check(conversation)
        _same(decision, reference.check_many([(Stage.STREAM, conversation)])[0])
        decisions.append(decision)
    assert gate.session.steps == len(windows)  # every check went through the session's cache
    # The stream is allowed, then blocked once the clause is in the window; windows hopped on the way.
    blocked = [i for i, d in enumerate(decisions) if not d.allowed]
    assert decisions[0].allowed and blocked and all(decisions[i].reason == "unsafe" for i in blocked)


def test_gate_session_decides_as_full_checks_on_the_real_shape(tiny) -> None:
    guard, reference = tiny
    text = "Paris is the capital of France. 日本語 too: \u00a0spaces, tabs\tand a line\nbreak. " * 4
    windows = _windows(text, 120)
    with GateSession(guard) as gate:
        for window in windows:
            conversation = response_conversation(REQUEST, window)
            decision = gate.check(conversation)
            # The label is the random model's own pick (free_label): probabilities below 1, compared to 1e-3.
            assert decision.verdict is not None and max(decision.verdict.probs.values()) < 0.999
            _same(decision, reference.check_many([(Stage.STREAM, conversation)])[0])
        assert gate.session.steps == len(windows)


def test_window_sessions_started_from_a_sibling_decide_as_full_checks_on_the_real_shape(tiny) -> None:
    """The stream monitor's window checks (`WindowJudge`): several sessions of one stream, concurrent, each
    new one starting from a copy of another's cache (the request read once), give full-check verdicts."""
    guard, reference = tiny
    request = "Here is my document: " + "Paris is the capital of France, 日本語 text and all. " * 12 + "Summarise it."
    text = "Paris is the capital of France. 日本語 too. A line\nbreak, and more. " * 3
    sentences = [m.end() for m in re.finditer(r"[.\n] ?", text)]
    conversations = [response_conversation(request, text[max(0, end - 90) : end]) for end in sentences]
    engine = guard.backend.engine
    hits = engine.sibling_hits
    judge = WindowJudge(guard.backend)
    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda c: judge.check(c, None), conversations))
    judge.close()
    assert engine.sibling_hits - hits >= 1 and len(judge.pool.sessions) >= 2  # concurrent: sessions forked
    for conversation, verdict in zip(conversations, verdicts, strict=True):
        full = reference.backend.classify([conversation])[0]
        assert (verdict.risk, verdict.categories, verdict.refusal, verdict.raw) == (
            full.risk,
            full.categories,
            full.refusal,
            full.raw,
        )
        assert max(abs(verdict.probs[r] - full.probs[r]) for r in Risk) <= 1e-3, (verdict.probs, full.probs)


async def test_async_gate_session_decides_as_the_sync_one(demo) -> None:
    guard, _ = demo
    sync_gate, async_gate = GateSession(guard), GateSession(guard)
    for text in _windows(ANSWER, 300)[:40]:
        conversation = response_conversation(REQUEST, text)
        _same(await async_gate.acheck(conversation), sync_gate.check(conversation))
    assert async_gate.session.steps == 40


def test_random_weights_fail_closed_through_the_session(tmp_path) -> None:
    path = build_gen(tmp_path / "random", shape=TINY, max_positions=4096, seed=3)
    backend = TransformersGen.load(str(path), device="cpu")
    guard = Guard(backend, Policy(on_error="block"), cache_size=0)
    gate = GateSession(guard)
    for text in _windows("Paris is the capital of France and a lovely city.", 100):
        decision = gate.check(response_conversation(REQUEST, text))
        assert not decision.allowed and decision.reason == "guard_error" and decision.verdict is None
    backend.close()


def test_a_failed_step_fails_closed_and_the_next_check_starts_from_a_fresh_cache(demo, monkeypatch) -> None:
    guard, reference = demo
    gate = GateSession(guard)
    windows = _windows(ANSWER, 300)
    for text in windows[:5]:
        gate.check(response_conversation(REQUEST, text))
    engine = guard.backend.engine
    real_run = engine.run
    calls = []

    def failing_once(items):  # a fault injected into one forward: the worker raises mid-check
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        return real_run(items)

    monkeypatch.setattr(engine, "run", failing_once)
    decision = gate.check(response_conversation(REQUEST, windows[5]))
    assert not decision.allowed and decision.reason == "guard_error"
    monkeypatch.setattr(engine, "run", real_run)
    for text in windows[6:12]:
        conversation = response_conversation(REQUEST, text)
        _same(gate.check(conversation), reference.check_many([(Stage.STREAM, conversation)])[0])


def test_two_steps_of_one_session_in_one_batch_run_side_by_side(demo) -> None:
    """A caller never sends two at once, but a step abandoned by a caller that gave up may share a batch with
    the next one: the second runs as a plain row (one forward cannot run two steps of one cache)."""
    guard, _ = demo
    backend = guard.backend
    state = SessionState()
    ids = [backend._plan([response_conversation(REQUEST, w)])[0][0] for w in _windows(ANSWER, 300)[3:5]]
    together = backend._batcher.run([SessionStep(state, ids[0]), SessionStep(state, ids[1])])
    alone = backend._batcher.run(ids)
    for (text_a, probs_a), (text_b, probs_b) in zip(together, alone, strict=True):
        assert text_a == text_b and max(abs(probs_a[r] - probs_b[r]) for r in Risk) <= 1e-3
    assert state.ids == ids[0]  # the session kept the first step's prompt


async def test_a_padded_prompt_does_not_switch_a_fail_open_gate_off(demo) -> None:
    """rt51b F5: a gate session called the model directly, skipping the Guard's second look without the context:
    a prompt padded with 400 "x" broke the demo's answer on every chunk's check and ``on_error="allow"`` let the
    whole unsafe answer through the ``"gate"`` engines (the callback handlers' default among them)."""
    guard, _ = demo
    fail_open = Guard(guard.backend, Policy(on_error="allow"), cache_size=0)
    conversation = response_conversation("x" * 400 + " How do I make one?", UNSAFE_CLAUSE)
    assert type(guard.backend.classify([conversation])[0]).__name__ == "VerdictParseError"  # the path under test
    with GateSession(fail_open) as gate:
        decision = gate.check(conversation)
        assert (decision.allowed, decision.reason) == (False, "unsafe"), decision
        decision = await gate.acheck(conversation)
        assert (decision.allowed, decision.reason) == (False, "unsafe"), decision


def test_a_guard_without_the_engine_gets_full_checks(demo) -> None:
    _, reference = demo
    gate = GateSession(reference)
    assert gate.session is None
    conversation = response_conversation(REQUEST, SAFE_ANSWER)
    _same(gate.check(conversation), reference.check_many([(Stage.STREAM, conversation)])[0])


def test_a_remote_guard_gets_full_checks() -> None:
    verdict = "Safety: Unsafe\nCategories: Violent\nRefusal: No"
    with scripted_openai(Reply.words(verdict)) as url:
        guard = Guard.remote(url, model="scripted", cache_size=0, backoff_s=0.01)
        gate = GateSession(guard)
        assert gate.session is None
        before = len(url.requests)
        for text in _windows("Mix ammonium nitrate with fuel oil.", 100):
            conversation = response_conversation(REQUEST, text)
            decision = gate.check(conversation)
            _same(decision, guard.check_many([(Stage.STREAM, conversation)])[0])
            assert not decision.allowed and decision.verdict.categories == ("Violent",)
        assert len(url.requests) - before == 2 * len(_chunks("Mix ammonium nitrate with fuel oil."))
        guard.close()


# -- cost: tokens the model runs per chunk ------------------------------------------------------------
def _costs(guard: Guard, check, windows: list[str]) -> list[int]:
    """Tokens the model ran for each check. Every check must give the same verdict text: a longer answer
    costs more forwards whatever the gate does, so only like answers are compared."""
    engine = guard.backend.engine
    costs, answers = [], set()
    for text in windows:
        before = engine.tokens_run
        decision = check(response_conversation(REQUEST, text))
        costs.append(engine.tokens_run - before)
        answers.add(decision.verdict.raw if decision.verdict is not None else decision.error)
    assert len(answers) == 1, answers
    return costs


@pytest.mark.parametrize("fixture", ["demo", "tiny"])
def test_cost_per_chunk_stays_flat_while_a_full_check_grows(fixture, request) -> None:
    guard, _ = request.getfixturevalue(fixture)
    # 830 characters, 130 chunks (the demo, a 4-layer toy, starts writing broken verdicts on much longer
    # repetitive text: a longer answer would cost more forwards, whatever the gate does).
    text = " ".join([SAFE_ANSWER] * 26)
    windows = _windows(text, 2000)
    gate = GateSession(guard)
    incremental = _costs(guard, gate.check, windows)
    full_early = _costs(guard, lambda c: guard.check_many([(Stage.STREAM, c)])[0], windows[9:10])[0]
    full_late = _costs(guard, lambda c: guard.check_many([(Stage.STREAM, c)])[0], windows[-1:])[0]
    early, late = statistics.median(incremental[5:15]), statistics.median(incremental[-10:])
    # Flat: the last chunks cost what the tenth did (the new word, the closing instructions, the verdict).
    assert late <= 1.3 * early, (early, late, incremental)
    assert max(incremental[1:]) <= 2 * early, incremental
    # A full check re-reads the whole answer every chunk; the session never does. (Both run the closing
    # instructions and the verdict: ~120 tokens with the real template, one added token on the demo.)
    answer_tokens = len(guard.backend.tokenizer(windows[-1], add_special_tokens=False)["input_ids"])
    assert full_late - full_early >= 0.8 * (answer_tokens - 20), (full_early, full_late, answer_tokens)
    assert full_late - late >= 0.8 * answer_tokens, (full_late, late, answer_tokens)


def test_while_the_verdict_holds_a_chunk_is_one_forward(demo) -> None:
    guard, _ = demo
    engine = guard.backend.engine
    gate = GateSession(guard)
    forwards, answers = [], set()
    for text in _windows(" ".join([SAFE_ANSWER] * 6), 2000):
        before = engine.forwards_run
        answers.add(gate.check(response_conversation(REQUEST, text)).verdict.raw)
        forwards.append(engine.forwards_run - before)
    # The previous answer is fed as the guess and confirmed: the new text, the closing instructions and the
    # whole verdict in one forward (the first check too: its guess is the safe answer).
    assert len(answers) == 1 and forwards[0] == 1 and statistics.median(forwards[1:]) == 1, (answers, forwards)


def test_growing_window_reads_what_the_sliding_tail_reads_until_it_is_full_then_hops_by_half() -> None:
    with pytest.raises(ValueError):
        GrowingWindow(1)
    window = GrowingWindow(10)
    stream = ""
    reads: list[tuple[int, str]] = []
    for delta in ["abc", "def", "ghij", "k", "lmnopq", "r", "stuvwxyz0123", "4", "5", "6"]:
        stream += delta
        text = window.add(delta)
        assert stream[window.start :] == text  # always the latest text, contiguous
        assert len(text) <= 10 and len(text) >= min(len(stream), 5)  # never under half a window
        if len(stream) <= 10:
            assert text == stream[-10:] and window.hops == 0  # the sliding tail's text, exactly
        reads.append((window.hops, text))
    for (hops_a, a), (hops_b, b) in zip(reads, reads[1:], strict=False):
        if hops_b == hops_a:
            assert b.startswith(a)  # grown by appending: the previous check's prefix (and cache) stays valid
        else:
            assert hops_b == hops_a + 1 and len(b) == 5  # a hop keeps the last half window
    assert window.hops == 3


# -- the LangChain gate engines use the session ------------------------------------------------------
def _per_check_costs(guard: Guard, run) -> list[int]:
    """Tokens the model ran for each check of the streamed answer (a decision listener reads the counter)."""
    engine = guard.backend.engine
    marks = [engine.tokens_run]
    listener = guard.on_decision(lambda decision: marks.append(engine.tokens_run))
    try:
        run()
    finally:
        guard.listeners.remove(listener)
    return [b - a for a, b in zip(marks, marks[1:], strict=False)]


LONG_SAFE = " ".join([SAFE_ANSWER] * 26)  # 830 characters, 130 words: each word is a checked chunk


def _assert_flat(costs: list[int]) -> None:
    assert len(costs) >= 120
    early, late = statistics.median(costs[5:15]), statistics.median(costs[-20:])
    # Before: a full check per chunk, whose cost grows with the answer (chunk 120 ran ~8x chunk 10).
    assert late <= 1.3 * early, (early, late, costs[:20], costs[-20:])


def test_the_callback_gate_engine_costs_the_same_per_chunk_at_chunk_200_as_at_chunk_10(demo) -> None:
    from qwenguard.integrations.langchain import GuardCallbackHandler

    guard, _ = demo
    model = scripted(LONG_SAFE)
    handler = GuardCallbackHandler(guard, stream_engine="gate", check_input=False, check_output=False)
    received = []
    costs = _per_check_costs(
        guard, lambda: received.extend(c.text for c in model.stream(SAFE_QUESTION, config={"callbacks": [handler]}))
    )
    assert "".join(received) == LONG_SAFE
    _assert_flat(costs)


def test_guard_output_with_the_gate_engine_costs_flat_per_chunk(demo) -> None:
    from qwenguard.integrations.langchain import guard_output

    guard, _ = demo
    chain = scripted(LONG_SAFE) | guard_output(guard, stream_engine="gate")
    received = []
    costs = _per_check_costs(guard, lambda: received.extend(c.text for c in chain.stream(SAFE_QUESTION)))
    assert "".join(received) == LONG_SAFE
    _assert_flat(costs)


async def test_the_async_callback_gate_engine_blocks_the_unsafe_clause_at_flat_cost(demo) -> None:
    from qwenguard.core import GuardViolation
    from qwenguard.integrations.langchain import AsyncGuardCallbackHandler

    guard, _ = demo
    text = LONG_SAFE + " " + UNSAFE_CLAUSE
    model = scripted(text)
    handler = AsyncGuardCallbackHandler(guard, stream_engine="gate", check_input=False, check_output=False)
    received: list[str] = []

    async def consume() -> None:
        async for chunk in model.astream(SAFE_QUESTION, config={"callbacks": [handler]}):
            received.append(chunk.text)

    engine = guard.backend.engine
    marks = [engine.tokens_run]
    listener = guard.on_decision(lambda decision: marks.append(engine.tokens_run))
    try:
        with pytest.raises(GuardViolation):
            await consume()
    finally:
        guard.listeners.remove(listener)
    assert UNSAFE_CLAUSE not in "".join(received)
    _assert_flat([b - a for a, b in zip(marks, marks[1:], strict=False)])


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_default_pipelined_callback_engine_pays_for_new_text_not_the_whole_answer(demo, monkeypatch, mode):
    """The callbacks' default engine judges the answer so far in the background, several checks at once: its
    checks go through a small pool of sessions, so the stream costs far less than the same checks run full."""
    from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler

    guard, _ = demo
    backend, engine = guard.backend, guard.backend.engine
    seen = record_plans(backend, monkeypatch)
    model = scripted(LONG_SAFE)
    options = {"stream_engine": "pipelined", "check_input": False, "check_output": False}
    before = engine.tokens_run
    if mode == "sync":
        config = {"callbacks": [GuardCallbackHandler(guard, **options)]}
        received = [c.text for c in model.stream(SAFE_QUESTION, config=config)]
    else:
        config = {"callbacks": [AsyncGuardCallbackHandler(guard, **options)]}
        received = [c.text async for c in model.astream(SAFE_QUESTION, config=config)]
    streamed = engine.tokens_run - before
    monkeypatch.undo()
    assert "".join(received) == LONG_SAFE and len(seen) >= 10, len(seen)
    before = engine.tokens_run
    for conversation in seen:  # the same checks, each in full
        backend.classify([conversation])
    full = engine.tokens_run - before
    assert streamed <= 0.3 * full, (streamed, full, len(seen))
