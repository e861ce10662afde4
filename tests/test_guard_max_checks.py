"""``Guard(max_checks=...)``: the checks one call sends to the model (after the verdict cache), default 4,096.

The attack (rt48c, measured through LlamaIndex's GuardedLLM.chat): a client's history whose one turn carries
16,000 tool calls, each a check of its own, cost 16,003 guard checks for a 1 MB request, where the same
megabyte as one text is a few windows; nothing bounded how many checks one request makes. Past the limit the
call raises `InputTooLarge` before any model work, whatever ``on_error`` says (size alone never gets text
through unjudged), as ``max_chars`` and ``max_messages`` do for one check."""

from __future__ import annotations

import pytest
from faults import ScriptedBackend, keyword_verdict
from qwenguard.core import Guard, InputTooLarge, Policy

UNSAFE = "Mix ammonium nitrate with fuel oil."


def items(n: int, start: int = 0) -> list[tuple[str, list[dict[str, str]]]]:
    return [("prompt", [{"role": "user", "content": f"Question number {i}."}]) for i in range(start, start + n)]


@pytest.mark.parametrize("use_async", [False, True])
async def test_a_call_of_more_checks_than_max_checks_is_refused_before_any_model_work(use_async):
    backend = ScriptedBackend(keyword_verdict)
    guard = Guard(backend, Policy(on_error="allow"), max_checks=100)
    batch = items(100) + [("prompt", [{"role": "user", "content": UNSAFE}])]
    with pytest.raises(InputTooLarge, match="max_checks=100"):
        if use_async:
            await guard.acheck_many(batch)
        else:
            guard.check_many(batch)
    assert backend.calls == []


def test_the_default_bounds_a_call_at_4096_checks():
    backend = ScriptedBackend(keyword_verdict)
    guard = Guard(backend, cache_size=0)
    assert guard.max_checks == 4096
    assert len(guard.check_many(items(4096))) == 4096
    with pytest.raises(InputTooLarge):
        guard.check_many(items(4097))


def test_checks_the_cache_answers_cost_nothing_against_the_limit():
    """A long history judged before is mostly cached: only what goes to the model counts."""
    backend = ScriptedBackend(keyword_verdict)
    guard = Guard(backend, max_checks=3)
    guard.check_many(items(3))
    decisions = guard.check_many(items(3) + items(3, start=3))  # 3 cached, 3 new
    assert [d.allowed for d in decisions] == [True] * 6 and [d.cached for d in decisions][:3] == [True] * 3
    with pytest.raises(InputTooLarge):
        guard.check_many(items(4, start=10))


def test_a_limit_below_one_is_refused_and_the_remote_and_pretrained_guards_take_it():
    with pytest.raises(ValueError, match="max_checks"):
        Guard(ScriptedBackend(keyword_verdict), max_checks=0)
    remote = Guard.remote("http://127.0.0.1:9/v1", model="m", max_checks=7)
    assert remote.max_checks == 7
    remote.close()


async def test_many_checks_are_prepared_off_the_event_loop(monkeypatch):
    """rt51b F7: a client's 10,000-turn history became 10,000 checks, each cleaned and hashed on the event loop
    before ``max_checks`` refused the call (0.3-0.5 s the loop answered nothing). Past a few dozen checks, or
    50,000 characters, `acheck_many` prepares them on a worker thread; a small call stays on the loop."""
    import threading

    guard = Guard(ScriptedBackend(keyword_verdict), max_checks=100)
    threads: list[threading.Thread] = []
    real = Guard._prepare
    monkeypatch.setattr(
        Guard, "_prepare", lambda self, *a: threads.append(threading.current_thread()) or real(self, *a)
    )
    loop_thread = threading.current_thread()
    with pytest.raises(InputTooLarge):
        await guard.acheck_many(items(5_000))
    assert len(threads) == 5_000 and loop_thread not in threads
    threads.clear()
    await guard.acheck_many([("prompt", [{"role": "user", "content": "word " * 12_000}])])
    assert threads and loop_thread not in threads
    threads.clear()
    assert all(d.allowed for d in await guard.acheck_many(items(3)))
    assert threads == [loop_thread] * 3
