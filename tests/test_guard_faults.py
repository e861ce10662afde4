"""Guard behaviour under faults: timeouts, crashes, malformed answers; fail closed unless told otherwise."""

import pytest
from faults import ScriptedBackend
from qwenguard.core import Action, Guard, GuardUnavailable, GuardViolation, Policy, Stage, enforce

SAFE = "Safety: Safe\nCategories: None"


@pytest.fixture(params=["sync", "async"])
def run(request):
    """Run a Guard method by name in its sync or async form."""
    import asyncio

    def call(guard, method, *args, **kwargs):
        if request.param == "sync":
            return getattr(guard, method)(*args, **kwargs)
        return asyncio.run(getattr(guard, "a" + method)(*args, **kwargs))

    return call


def test_timeout_fails_closed_by_default(run):
    guard = Guard(ScriptedBackend(lambda c: SAFE, delay_s=1.0), Policy(timeout_s=0.05))
    d = run(guard, "check_prompt", "hello")
    assert (d.allowed, d.action, d.reason) == (False, Action.BLOCK, "timeout")
    with pytest.raises(GuardUnavailable):
        enforce(d)


def test_timeout_fails_open_when_the_policy_says_so(run):
    guard = Guard(ScriptedBackend(lambda c: SAFE, delay_s=1.0), Policy(timeout_s=0.05, on_error="allow"))
    d = run(guard, "check_prompt", "hello")
    assert (d.allowed, d.action, d.reason) == (True, Action.FLAG, "timeout")


def test_backend_crash_is_a_guard_error(run):
    guard = Guard(ScriptedBackend(lambda c: SAFE, fail=RuntimeError("CUDA out of memory")))
    d = run(guard, "check_response", "q", "a")
    assert (d.allowed, d.reason) == (False, "guard_error")
    assert "CUDA out of memory" in d.error


def test_malformed_model_output_is_never_safe(run):
    guard = Guard(ScriptedBackend(lambda c: "Sure! It's safe."))
    d = run(guard, "check_prompt", "hello")
    assert (d.allowed, d.reason) == (False, "guard_error")
    assert "VerdictParseError" in d.error


def test_one_bad_answer_does_not_poison_the_batch(run):
    def answer(conv):
        return "garbage" if "bad" in conv[-1]["content"] else SAFE

    guard = Guard(ScriptedBackend(answer))
    ds = run(guard, "check_documents", None, ["good one", "bad one", "good two"])
    assert [d.reason for d in ds] == ["safe", "guard_error", "safe"]


def test_violation_exception_carries_the_decision():
    guard = Guard(ScriptedBackend(lambda c: "Safety: Unsafe\nCategories: Violent"))
    d = guard.check_prompt("x")
    with pytest.raises(GuardViolation) as info:
        enforce(d)
    assert info.value.decision is d
    assert info.value.decision.categories == ("Violent",)


def test_cache_and_events(run):
    backend = ScriptedBackend(lambda c: "Safety: Controversial\nCategories: PII")
    seen = []
    guard = Guard(backend, Policy.loose())
    guard.on_decision(seen.append)
    first = run(guard, "check_prompt", "same text")
    second = run(guard, "check_prompt", "same text")
    assert len(backend.calls) == 1
    assert (first.cached, second.cached) == (False, True)
    assert first.action is second.action is Action.FLAG
    assert seen == [first, second]


def test_stream_windows_are_not_cached(run):
    """A stream window never repeats: caching it would only evict useful verdicts."""
    backend = ScriptedBackend(lambda c: SAFE)
    guard = Guard(backend)
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Paris is"}]
    first = run(guard, "check", conversation, Stage.STREAM)
    second = run(guard, "check", conversation, Stage.STREAM)
    assert len(backend.calls) == 2 and not first.cached and not second.cached
    assert len(guard.cache) == 0
    run(guard, "check", conversation[:1], Stage.PROMPT)  # other stages still are
    assert len(guard.cache) == 1


def test_listener_errors_do_not_change_outcomes():
    guard = Guard(ScriptedBackend(lambda c: SAFE))
    guard.on_decision(lambda d: 1 / 0)
    assert guard.check_prompt("hi").allowed


def test_disabled_stage_and_empty_text_skip_the_model(run):
    backend = ScriptedBackend(lambda c: SAFE)
    guard = Guard(backend, Policy().with_stage(Stage.RETRIEVAL, enabled=False))
    assert run(guard, "check_documents", "q", ["x"])[0].reason == "disabled"
    assert run(guard, "check_prompt", "   \n").reason == "empty"
    assert backend.calls == []


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["list"]])
def test_non_string_input_raises_type_error(bad):
    guard = Guard(ScriptedBackend(lambda c: SAFE))
    with pytest.raises(TypeError):
        guard.check_prompt(bad)
    with pytest.raises(TypeError):
        guard.check_tool_result("search", bad)


def test_oversized_text_raises_value_error():
    guard = Guard(ScriptedBackend(lambda c: SAFE), max_chars=1000)
    with pytest.raises(ValueError, match="max_chars"):
        guard.check_prompt("x" * 1001)


def test_lone_surrogates_are_replaced_not_crashing():
    backend = ScriptedBackend(lambda c: SAFE)
    guard = Guard(backend)
    assert guard.check_prompt("bad \ud800 text").allowed
    assert backend.calls[0][0][-1]["content"] == "bad \ufffd text"


def test_size_limits_raise_whatever_on_error_says(run):
    """A check over an operator limit is refused before the model runs, also under on_error="allow":
    size alone must never get text through unjudged."""
    from qwenguard.core.errors import InputTooLarge

    backend = ScriptedBackend(lambda c: SAFE)
    guard = Guard(backend, Policy(on_error="allow"), max_chars=1000, max_messages=3)
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(InputTooLarge, match="max_messages=3"):
        run(guard, "check_prompt", "again", history=history * 2)
    with pytest.raises(InputTooLarge, match="max_chars=1,000"):
        run(guard, "check_prompt", "x" * 600, history=[{"role": "user", "content": "y" * 600}])
    assert backend.calls == []
    assert run(guard, "check_prompt", "again", history=history).allowed


class _TooLargeBackend(ScriptedBackend):
    """Answers every conversation but the ones holding "huge" with a verdict; those exceed its window limit."""

    def classify(self, conversations, *, timeout=None):
        from qwenguard.core.errors import InputTooLarge

        out = super().classify(conversations, timeout=timeout)
        return [
            InputTooLarge("needs more than max_windows=2 windows") if "huge" in c[-1]["content"] else o
            for c, o in zip(conversations, out)
        ]

    async def aclassify(self, conversations, *, timeout=None):
        return self.classify(conversations, timeout=timeout)


def test_a_backend_limit_reaches_the_caller_not_on_error(run):
    from qwenguard.core.errors import InputTooLarge

    guard = Guard(_TooLargeBackend(lambda c: SAFE), Policy(on_error="allow"))
    with pytest.raises(InputTooLarge, match="max_windows=2"):
        run(guard, "check_documents", None, ["fine", "huge document"])
    assert [d.allowed for d in run(guard, "check_documents", None, ["fine", "also fine"])] == [True, True]
    whole = Guard(ScriptedBackend(lambda c: SAFE, fail=InputTooLarge("too many windows")), Policy(on_error="allow"))
    with pytest.raises(InputTooLarge):
        run(whole, "check_prompt", "x")
