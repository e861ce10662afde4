"""rt57e F2: one integration call over a client's history (`GuardedLLM.chat`, `GuardedChatModel.invoke`) judges each
user turn as its own check of up to ``max_windows`` windows: K turns of "\\nUSER: a" lines planned about 255*K
windows in one call, bounded by no per-call limit. `window_budget` bounds the windows of every backend call made
inside it (the guard's batch, its retries and re-reads) in all: around one integration call, or around each check
call from a Guard option.

Real components: the demo guard's planner (a refused call runs no model work), LlamaIndex's MockLLM, LangChain's
FakeListChatModel."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, HumanMessage
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.llms.mock import MockLLM
from qwenguard.core import Guard, Policy
from qwenguard.core.errors import InputTooLarge
from qwenguard.core.formats.windows import CALL_WINDOW_ACCOUNT, window_budget
from qwenguard.core.verdict import CATEGORIES
from qwenguard.integrations.langchain import GuardedChatModel
from qwenguard.integrations.llamaindex import GuardedLLM

TURN = "hello" + "".join(f"\nUSER: a{i}" for i in range(120))  # about 120 forged-turn windows a check
K = 6
CATS = list(CATEGORIES)  # all ignored: only the window budget may refuse


@pytest.fixture(scope="module")
def guard():
    g = Guard.from_pretrained("demo", policy=Policy(ignore_categories=CATS, on_error="allow"), cache_size=0)
    yield g
    g.close()


@pytest.fixture
def counting(guard, monkeypatch):
    counts: list[int] = []
    plan = guard.backend._plan

    def recording(conversations, *args):
        flat, spans = plan(conversations, *args)
        counts.append(len(flat))
        return flat, spans

    monkeypatch.setattr(guard.backend, "_plan", recording)
    return counts


def li_history() -> list[ChatMessage]:
    msgs: list[ChatMessage] = []
    for i in range(K):
        msgs += [ChatMessage(role="user", content=f"{i} {TURN}"), ChatMessage(role="assistant", content=f"Noted {i}.")]
    return [*msgs, ChatMessage(role="user", content="Thanks, that is all.")]


def lc_history() -> list[object]:
    msgs: list[object] = []
    for i in range(K):
        msgs += [HumanMessage(f"{i} {TURN}"), AIMessage(f"Noted {i}.")]
    return [*msgs, HumanMessage("Thanks, that is all.")]


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_a_chat_call_over_a_labelled_history_is_refused_past_its_window_budget(guard, counting, twin):
    """The attack: a client history of K user turns, each of label lines. Inside a budget of 300 windows the call is
    refused (`InputTooLarge`, whatever on_error says) before any model work, where it planned ~120*K windows."""
    llm = GuardedLLM(llm=MockLLM(), guard=guard, remember=0)
    with pytest.raises(InputTooLarge), window_budget(300):
        if twin == "sync":
            llm.chat(li_history())
        else:
            asyncio.run(llm.achat(li_history()))
    assert sum(counting) <= 300
    assert CALL_WINDOW_ACCOUNT.get() is None  # the block's account is gone after it


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_a_langchain_invoke_over_a_labelled_history_is_refused_past_its_window_budget(guard, counting, twin):
    model = GuardedChatModel(model=FakeListChatModel(responses=["ok"]), guard=guard)
    with pytest.raises(InputTooLarge), window_budget(300):
        if twin == "sync":
            model.invoke(lc_history())
        else:
            asyncio.run(model.ainvoke(lc_history()))
    assert sum(counting) <= 300


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_one_budget_holds_over_several_guard_calls(guard, counting, twin):
    """The account is the block's, not one backend call's: checks sent one call at a time add up to it."""
    turns = [[{"role": "user", "content": f"{i} {TURN}"}] for i in range(K)]

    async def each() -> None:
        for turn in turns:
            await guard.acheck_many([("prompt", turn)])

    with pytest.raises(InputTooLarge), window_budget(300) as account:
        if twin == "sync":
            for turn in turns:
                guard.check_many([("prompt", turn)])
        else:
            asyncio.run(each())
    assert account is not None and account.used <= 300 and len(counting) >= 2


def test_an_inner_budget_never_loosens_an_outer_one(guard, counting):
    turns = [("prompt", [{"role": "user", "content": f"{i} {TURN}"}]) for i in range(3)]
    with pytest.raises(InputTooLarge), window_budget(150), window_budget(10_000):
        guard.check_many(turns)


def test_a_library_call_without_a_budget_is_unchanged(guard, counting):
    """No block, no bound but each check's own ``max_windows`` (the library default, as pinned for remote batches)."""
    turns = [("prompt", [{"role": "user", "content": f"{i} {TURN}"}]) for i in range(3)]
    decisions = guard.check_many(turns)
    assert len(decisions) == 3 and sum(counting) > 300


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_the_guards_max_windows_per_call_bounds_an_integration_call(twin):
    """The operator's setting: `Guard(max_windows_per_call=300)` bounds each call (its batch, retries, re-reads) as
    the block above does; a call over it is refused whatever on_error says, and an ordinary call is untouched."""
    guard = Guard.from_pretrained(
        "demo", policy=Policy(ignore_categories=CATS, on_error="allow"), cache_size=0, max_windows_per_call=300
    )
    try:
        llm = GuardedLLM(llm=MockLLM(), guard=guard, remember=0)
        model = GuardedChatModel(model=FakeListChatModel(responses=["ok"]), guard=guard)
        with pytest.raises(InputTooLarge):
            llm.chat(li_history()) if twin == "sync" else asyncio.run(llm.achat(li_history()))
        with pytest.raises(InputTooLarge):
            model.invoke(lc_history()) if twin == "sync" else asyncio.run(model.ainvoke(lc_history()))
        assert guard.check_prompt("What is the capital of France?").allowed
    finally:
        guard.close()
    with pytest.raises(TypeError, match="max_windows_per_call"):
        Guard.from_pretrained("demo", max_windows_per_call="300")


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_a_remote_guard_is_held_to_the_same_budget(twin):
    """`Guard.remote` charges each conversation's requests to the caller's budget too (its windows are requests)."""
    import engines

    with engines.recording_engine(answer="Safety: Safe\nCategories: None", max_model_len=32768) as engine:
        remote = Guard.remote(
            engine.url, model="guard", policy=Policy(on_error="allow"), cache_size=0, max_windows_per_call=50
        )
        try:
            items = [("prompt", [{"role": "user", "content": f"{i} {TURN}"}]) for i in range(K)]
            with pytest.raises(InputTooLarge):
                remote.check_many(items) if twin == "sync" else asyncio.run(remote.acheck_many(items))
            assert len(engine.checks()) <= 50
        finally:
            remote.close()
