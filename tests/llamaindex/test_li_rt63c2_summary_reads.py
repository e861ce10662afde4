"""Reads of a summary memory that writes as it reads: one at a time, and a summary not plainly allowed is not kept.

- rt63h F3: two reads of one `GuardedMemory(ChatSummaryMemoryBuffer(...))` at once. Read A stored the summary it made
  and waited for its check; read B, started in that window, took the stored messages (the summary among them) as
  stored before it, judged nothing and returned the summary; A was blocked and put the store back, too late. Now
  such reads take turns (threads, tasks, and a thread and a task of one memory), and a task waits on the loop.
- rt63h F5: under ``on_error="allow"`` a guard error on the read that made the summary let it through, flagged, and
  the summary stayed stored: every later read counted it as stored, never judged nor flagged again. A flag (an
  ignored category) was so too. Now a read that is not a plain allow puts the store back: the read returns what was
  let through for it, and the next read makes the summary again and judges it again.

Real ChatSummaryMemoryBuffer, the summarizer a real CustomLLM (`ScriptedLLM`), a deterministic keyword judge; a
judge held on a gate where a check must stay pending."""

from __future__ import annotations

import asyncio
import pickle
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from li_scripted import UNSAFE_CLAUSE, ScriptedLLM
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.memory import ChatSummaryMemoryBuffer, Memory, StaticMemoryBlock
from llama_index.core.storage.chat_store import SimpleChatStore
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.integrations.llamaindex import GuardedMemory

TRIGGER = "ammonium"
SUMMARY = "Summary: the user wants to know this. " + UNSAFE_CLAUSE
HISTORY = [
    ChatMessage(role="user", content="Tell me about Paris and its long history, please, in detail."),
    ChatMessage(role="assistant", content="Paris is the capital of France; it has a long history. " * 3),
    ChatMessage(role="user", content="And Lyon?"),
]
#: How long a second read is given to get through while the first one's check is held: under the fix it waits for
#: its turn (the whole time); before it, it returned the summary well within it. Bounds a wait, asserts nothing.
GRACE_S = 1.5
RUN_TIMEOUT_S = 30


class GatedJudge(ScriptedBackend):
    """A keyword judge that holds every check of the summary until ``gate`` is set (threads and tasks alike); the
    first such check sets ``pending``."""

    def __init__(self) -> None:
        super().__init__(keyword_verdict)
        self.gate = threading.Event()
        self.pending = threading.Event()

    def _holds_summary(self, conversations: Sequence[list[dict]]) -> bool:
        return any(SUMMARY in c[-1]["content"] for c in conversations)

    def classify(self, conversations, *, timeout=None):
        if self._holds_summary(conversations):
            self.pending.set()
            self.gate.wait(RUN_TIMEOUT_S)
        return super().classify(conversations, timeout=timeout)

    async def aclassify(self, conversations, *, timeout=None):
        if self._holds_summary(conversations):
            self.pending.set()
            while not self.gate.is_set():
                await asyncio.sleep(0.005)
        return await super().aclassify(conversations, timeout=timeout)


def summary_memory(guard: Guard) -> GuardedMemory:
    summarizer = ScriptedLLM(chunks=[SUMMARY])  # the buffer's own summarizing model: the same summary every time
    memory = GuardedMemory(ChatSummaryMemoryBuffer.from_defaults(llm=summarizer, token_limit=40), guard)
    memory.put_messages(HISTORY)
    return memory


def unsafe_chars(messages: Sequence[ChatMessage] | str) -> int:
    """Characters of the unsafe clause a read handed on ("blocked": none)."""
    if isinstance(messages, str):
        return 0
    return sum(len(UNSAFE_CLAUSE) for m in messages if TRIGGER in (m.content or ""))


def stored_clause(memory: GuardedMemory) -> int:
    return sum(TRIGGER in (m.content or "") for m in memory.get_all())


def judged_with(backend: ScriptedBackend, text: str) -> int:
    return sum(text in c[-1]["content"] for batch in backend.calls for c in batch)


def read_sync(memory: GuardedMemory, out: list) -> None:
    try:
        out.append(memory.get())
    except GuardViolation:
        out.append("blocked")


async def read_async(memory: GuardedMemory) -> list[ChatMessage] | str:
    try:
        return await memory.aget()
    except GuardViolation:
        return "blocked"


# -- F3: reads one at a time --------------------------------------------------------------------------------------
def test_two_concurrent_async_reads_never_return_the_unjudged_summary() -> None:
    backend = GatedJudge()
    memory = summary_memory(Guard(backend, Policy(timeout_s=None), cache_size=0))

    async def main() -> list:
        first = asyncio.create_task(read_async(memory))
        while not backend.pending.is_set():  # A stored the summary and waits for its check
            await asyncio.sleep(0.005)
        second = asyncio.create_task(read_async(memory))
        await asyncio.wait([second], timeout=GRACE_S)
        backend.gate.set()
        return [await first, await second]

    results = asyncio.run(asyncio.wait_for(main(), RUN_TIMEOUT_S))
    assert [unsafe_chars(r) for r in results] == [0, 0]
    assert results == ["blocked", "blocked"]
    assert stored_clause(memory) == 0


def test_two_concurrent_sync_reads_never_return_the_unjudged_summary() -> None:
    backend = GatedJudge()
    memory = summary_memory(Guard(backend, Policy(timeout_s=None), cache_size=0))
    first_out: list = []
    second_out: list = []
    first = threading.Thread(target=read_sync, args=(memory, first_out))
    first.start()
    assert backend.pending.wait(RUN_TIMEOUT_S)
    second = threading.Thread(target=read_sync, args=(memory, second_out))
    second.start()
    second.join(GRACE_S)
    backend.gate.set()
    first.join(RUN_TIMEOUT_S)
    second.join(RUN_TIMEOUT_S)
    assert [unsafe_chars(r) for r in first_out + second_out] == [0, 0]
    assert first_out + second_out == ["blocked", "blocked"]
    assert stored_clause(memory) == 0


def test_a_thread_read_during_a_pending_async_read_waits_its_turn() -> None:
    backend = GatedJudge()
    memory = summary_memory(Guard(backend, Policy(timeout_s=None), cache_size=0))
    thread_out: list = []

    async def main() -> list:
        first = asyncio.create_task(read_async(memory))
        while not backend.pending.is_set():
            await asyncio.sleep(0.005)
        thread = threading.Thread(target=read_sync, args=(memory, thread_out))
        thread.start()
        await asyncio.to_thread(thread.join, GRACE_S)
        backend.gate.set()
        result = await first
        await asyncio.to_thread(thread.join, RUN_TIMEOUT_S)
        return [result, *thread_out]

    results = asyncio.run(asyncio.wait_for(main(), RUN_TIMEOUT_S))
    assert [unsafe_chars(r) for r in results] == [0, 0]
    assert results == ["blocked", "blocked"]


def test_an_async_read_waits_for_a_thread_read_without_holding_the_loop() -> None:
    backend = GatedJudge()
    memory = summary_memory(Guard(backend, Policy(timeout_s=None), cache_size=0))
    thread_out: list = []
    thread = threading.Thread(target=read_sync, args=(memory, thread_out))
    thread.start()
    assert backend.pending.wait(RUN_TIMEOUT_S)

    async def main() -> tuple[list[ChatMessage] | str, int]:
        second = asyncio.create_task(read_async(memory))
        ticks = 0
        for _ in range(20):  # the loop runs other tasks while the read waits for its turn
            await asyncio.sleep(0.005)
            ticks += not second.done()
        backend.gate.set()
        return await second, ticks

    result, ticks = asyncio.run(asyncio.wait_for(main(), RUN_TIMEOUT_S))
    thread.join(RUN_TIMEOUT_S)
    assert [unsafe_chars(r) for r in [*thread_out, result]] == [0, 0]
    assert [*thread_out, result] == ["blocked", "blocked"]
    assert ticks == 20  # it waited for its turn, and the loop went on meanwhile


def test_a_sync_read_on_the_loop_of_a_pending_async_read_refuses_instead_of_returning_or_hanging() -> None:
    backend = GatedJudge()
    memory = summary_memory(Guard(backend, Policy(timeout_s=None), cache_size=0))

    async def main() -> tuple[list[ChatMessage] | str, list[ChatMessage] | str]:
        first = asyncio.create_task(read_async(memory))
        while not backend.pending.is_set():
            await asyncio.sleep(0.005)
        try:
            on_loop: list[ChatMessage] | str = memory.get()  # waiting would hold the loop the first read needs
        except RuntimeError as exc:
            assert "aget" in str(exc)
            on_loop = "refused"
        finally:
            backend.gate.set()
        return on_loop, await first

    on_loop, first = asyncio.run(asyncio.wait_for(main(), RUN_TIMEOUT_S))
    assert unsafe_chars(on_loop) == 0
    assert (on_loop, first) == ("refused", "blocked")


def test_the_read_turn_survives_a_pickled_memory() -> None:
    guard = Guard(ScriptedBackend(keyword_verdict), Policy(timeout_s=None), cache_size=0)
    memory = summary_memory(guard)
    restored = pickle.loads(pickle.dumps(memory))
    restored.guard = guard
    with pytest.raises(GuardViolation):
        restored.get()
    assert stored_clause(restored) == 0


# -- F5: a summary that is not a plain allow is not kept -----------------------------------------------------------
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_summary_let_through_by_a_guard_error_is_judged_again_when_the_guard_is_back(mode: str) -> None:
    backend = ScriptedBackend(keyword_verdict)
    memory = summary_memory(Guard(backend, Policy(timeout_s=None, on_error="allow"), cache_size=0))

    def read() -> list[ChatMessage] | str:
        if mode == "async":
            return asyncio.run(read_async(memory))
        out: list = []
        read_sync(memory, out)
        return out[0]

    backend.fail = RuntimeError("guard server restarting")  # fail-open: flagged, let through for this read
    during = read()
    assert unsafe_chars(during) == len(UNSAFE_CLAUSE)  # the documented fail-open, for this read only
    assert stored_clause(memory) == 0  # not kept: nothing judged it
    backend.fail = None
    before = len(backend.calls)
    after = [read(), read()]
    assert [unsafe_chars(r) for r in after] == [0, 0]
    assert after == ["blocked", "blocked"]
    assert sum(SUMMARY in c[-1]["content"] for b in backend.calls[before:] for c in b) == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_flagged_summary_is_told_again_on_every_read(mode: str) -> None:
    backend = ScriptedBackend(keyword_verdict)
    guard = Guard(backend, Policy(timeout_s=None, ignore_categories=frozenset({"Violent"})), cache_size=0)
    memory = summary_memory(guard)

    def read() -> list[ChatMessage]:
        return asyncio.run(memory.aget()) if mode == "async" else memory.get()

    reads = [list(read()) for _ in range(3)]  # a copy: the buffer's next read pops the list it returned
    assert [unsafe_chars(r) for r in reads] == [len(UNSAFE_CLAUSE)] * 3  # flagged: let through, as the policy says
    assert judged_with(backend, SUMMARY) == 3  # each read judges it again (a flag is told again)
    assert stored_clause(memory) == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_safe_summary_is_kept_and_judged_once(mode: str) -> None:
    backend = ScriptedBackend(keyword_verdict)
    safe = "Summary: the user asked about Paris and its history."
    memory = GuardedMemory(
        ChatSummaryMemoryBuffer.from_defaults(llm=ScriptedLLM(chunks=[safe]), token_limit=40),
        Guard(backend, Policy(timeout_s=None), cache_size=0),
    )
    memory.put_messages(HISTORY)

    def read() -> list[ChatMessage]:
        return asyncio.run(memory.aget()) if mode == "async" else memory.get()

    reads = [list(read()) for _ in range(3)]  # a copy: the buffer's next read pops the list it returned
    assert all(safe in (r[0].content or "") for r in reads)
    assert judged_with(backend, safe) == 1
    assert any(safe in (m.content or "") for m in memory.get_all())


def test_a_memory_whose_read_only_reads_takes_no_turn() -> None:
    guard = Guard(ScriptedBackend(keyword_verdict), Policy(timeout_s=None), cache_size=0)
    block = StaticMemoryBlock(name="facts", static_content="The user's city is Lyon.")
    memory = GuardedMemory(Memory.from_defaults(memory_blocks=[block], token_limit=4000), guard)
    memory.put_messages(HISTORY)
    memory._turn._lock.acquire()  # another read's turn, held: a Memory's read (it writes nothing) does not wait
    try:
        read = memory.get()
    finally:
        memory._turn._lock.release()
    assert any("Lyon" in (m.content or "") for m in read)
    assert unsafe_chars(read) == 0


# -- a read cancelled while the buffer summarizes ----------------------------------------------------------------
class HeldSummarizer(ScriptedLLM):
    """The buffer's summarizer, held in its call until ``resume`` is set; ``entered`` is set when the call starts."""

    entered: Any = None

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        self.entered.set()
        self.resume.wait(RUN_TIMEOUT_S)
        return super().complete(prompt, formatted=formatted, **kwargs)


class WatchedStore(SimpleChatStore):
    """A chat store that sets ``written`` when a summary is stored in it."""

    written: Any = None

    def set_messages(self, key: str, messages: list[ChatMessage]) -> None:
        super().set_messages(key, messages)
        if any(SUMMARY == m.content for m in messages):
            self.written.set()


def test_a_read_cancelled_while_the_buffer_summarizes_leaves_no_unjudged_summary() -> None:
    backend = ScriptedBackend(keyword_verdict)
    summarizer = HeldSummarizer(chunks=[SUMMARY], resume=threading.Event(), entered=threading.Event())
    store = WatchedStore(written=threading.Event())
    memory = GuardedMemory(
        ChatSummaryMemoryBuffer.from_defaults(llm=summarizer, token_limit=40, chat_store=store),
        Guard(backend, Policy(timeout_s=None), cache_size=0),
    )
    memory.put_messages(HISTORY)

    async def main() -> list[ChatMessage] | str:
        first = asyncio.create_task(memory.aget())  # the client goes away while the buffer summarizes
        await asyncio.to_thread(summarizer.entered.wait, RUN_TIMEOUT_S)
        first.cancel()
        await asyncio.sleep(0)
        summarizer.resume.set()  # the buffer's worker thread goes on and stores the summary
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.to_thread(store.written.wait, RUN_TIMEOUT_S)  # the cancelled read's thread stored it
        return await read_async(memory)  # the next request's read

    after = asyncio.run(asyncio.wait_for(main(), RUN_TIMEOUT_S))
    assert unsafe_chars(after) == 0
    assert after == "blocked"
    assert stored_clause(memory) == 0


def test_tasks_waiting_for_the_turn_are_woken_not_polling():
    # rt63i F3: each waiting aget asked for the turn every 2 ms: 500 of them behind one slow read burned a core for
    # over a minute. They wait in line now, and the read that hands the turn back wakes the first: counted in asks
    # for the turn (a wall clock would measure the machine), 200 tasks behind a thread's read held for 0.5 s.
    import threading

    backend = ScriptedBackend(keyword_verdict, name="kw")
    memory = GuardedMemory(
        ChatSummaryMemoryBuffer.from_defaults(llm=ScriptedLLM(chunks=["Summary: Paris."]), token_limit=40),
        Guard(backend, cache_size=0),
    )
    turn = memory._turn
    asks = 0

    class CountingLock:
        def __init__(self, lock):
            self._lock = lock

        def acquire(self, blocking=True, timeout=-1):
            nonlocal asks
            asks += not blocking
            return self._lock.acquire(blocking, timeout)

        def release(self):
            self._lock.release()

        def locked(self):
            return self._lock.locked()

    turn._lock = CountingLock(turn._lock)
    held, release = threading.Event(), threading.Event()

    def hold():
        with turn.held():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)

    async def waiters():
        async def one():
            async with turn.aheld():
                pass

        tasks = [asyncio.ensure_future(one()) for _ in range(200)]
        await asyncio.sleep(0.5)
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(waiters())
    holder.join(10)
    # Polling every 2 ms: about 200 x 250 asks in 0.5 s; woken in line: an ask each, and one each 50 ms at most.
    assert asks < 200 * (0.5 / 0.05 + 4), asks
