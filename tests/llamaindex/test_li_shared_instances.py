"""One `GuardedLLM`, one callback handler, one event handler shared by every request of a server (red team):
one request's guard failure never lets its text through for the others, and requests that go away early
leave no state behind."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from li_scripted import SAFE_OPENING, UNSAFE_CLAUSE, ScriptedLLM, words
from llama_index.core.base.llms.types import CompletionResponse
from llama_index.core.callbacks import CallbackManager
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.llms import ChatMessage
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.mock import MockFunctionCallingLLM
from qwenguard.core import Guard, GuardViolation, Policy
from qwenguard.core.errors import GuardTimeout
from qwenguard.integrations.llamaindex import GuardCallbackHandler, GuardedLLM, GuardEventHandler
from qwenguard.integrations.llamaindex import callbacks as li_callbacks

UNSAFE = [ChatMessage(role="user", content=UNSAFE_CLAUSE)]
UNSAFE_IN_HISTORY = [*UNSAFE, ChatMessage(role="assistant", content="OK."), ChatMessage(role="user", content="Go on.")]


def _reply(messages: Any, **kwargs: Any) -> ChatMessage:
    return ChatMessage(role="assistant", content="Sure.")


async def _ask(llm: GuardedLLM, how: str, messages: list[ChatMessage]) -> str:
    if how == "chat":
        return llm.chat(messages).message.content or ""
    if how == "achat":
        return (await llm.achat(messages)).message.content or ""
    return "".join(r.delta or "" for r in llm.stream_chat(messages))


# -- a check that failed open is not remembered as judged ------------------------------------------------
@pytest.mark.parametrize("parallel_input", [False, True], ids=["first", "parallel"])
@pytest.mark.parametrize("how", ["chat", "achat", "stream_chat"])
async def test_a_prompt_let_through_by_a_guard_failure_is_judged_again_for_the_next_request(how, parallel_input):
    backend = ScriptedBackend(keyword_verdict)
    # cache_size=0: what is tested is GuardedLLM's own memory of judged inputs, not the verdict cache.
    guard = Guard(backend, Policy(on_error="allow", timeout_s=1.0), cache_size=0)
    llm = GuardedLLM(llm=MockFunctionCallingLLM(response_generator=_reply), guard=guard, parallel_input=parallel_input)
    backend.fail = GuardTimeout("no answer within 1.0 s")  # one request meets a failing guard ...
    assert await _ask(llm, how, UNSAFE) == "Sure."  # ... and the policy fails open for it
    backend.fail = None  # the guard is healthy again: every later request is judged
    for messages in (UNSAFE, UNSAFE_IN_HISTORY):
        with pytest.raises(GuardViolation):
            await _ask(llm, how, messages)


def test_a_prompt_judged_and_allowed_is_still_remembered():
    """The memory still saves work: a judged turn that comes back as history is not judged again."""
    backend = ScriptedBackend(keyword_verdict)
    llm = GuardedLLM(llm=MockFunctionCallingLLM(response_generator=_reply), guard=Guard(backend, cache_size=0))
    first = [ChatMessage(role="user", content="Tell me about Paris.")]
    llm.chat(first)
    before = len(backend.calls)
    llm.chat([*first, ChatMessage(role="assistant", content="Sure."), ChatMessage(role="user", content="More.")])
    judged = [c[-1]["content"] for call in backend.calls[before:] for c in call]
    assert "Tell me about Paris." not in judged and "More." in judged


# -- requests that go away early -------------------------------------------------------------------------
@pytest.fixture
def audit() -> Any:
    handler = GuardEventHandler(guard=Guard(ScriptedBackend(keyword_verdict))).attach()
    yield handler
    get_dispatcher().event_handlers.remove(handler)


def test_the_event_handler_forgets_streams_that_end_without_their_end_event(audit):
    guard = Guard(ScriptedBackend(keyword_verdict))
    safe = GuardedLLM(llm=ScriptedLLM(chunks=words(SAFE_OPENING * 20)), guard=guard)
    unsafe = GuardedLLM(llm=ScriptedLLM(chunks=words(SAFE_OPENING + UNSAFE_CLAUSE + " More.")), guard=guard)
    for _ in range(10):
        stream = safe.stream_chat([ChatMessage(role="user", content="Tell me about Paris.")])
        next(stream)
        stream.close()  # the client left
        with pytest.raises(GuardViolation):  # the guard stopped it
            for _ in unsafe.stream_chat([ChatMessage(role="user", content="Tell me about Paris.")]):
                pass
    assert len(audit._streams) == 0
    list(safe.stream_chat([ChatMessage(role="user", content="Tell me about Paris.")]))  # one read to its end
    assert len(audit._streams) == 0 and audit.counts[("response", "allow")] >= 1


def test_the_event_handler_keeps_a_streams_text_without_copying_it_per_delta(audit):
    # 4,000 deltas: kept as parts (a copy of the whole text per delta made a long stream quadratic).
    stream = ScriptedLLM(chunks=["Paris "] * 4000).stream_chat(
        [ChatMessage(role="user", content="Tell me about Paris.")]
    )
    for _ in range(3000):
        next(stream)
    ((parts, size),) = audit._streams._data.values()
    assert size == 3000 * len("Paris ") and len(parts) == 3000
    stream.close()


async def test_the_callback_handler_forgets_streams_nobody_read(monkeypatch):
    # LlamaIndex ends a streamed LLM event only once the stream is read to its end.
    monkeypatch.setattr(li_callbacks, "MAX_OPEN_EVENTS", 8, raising=False)
    handler = GuardCallbackHandler(Guard(ScriptedBackend(keyword_verdict)))
    llm = ScriptedLLM(chunks=words(SAFE_OPENING), callback_manager=CallbackManager([handler]))
    question = [ChatMessage(role="user", content="Tell me about Paris. " + "x" * 2000)]
    for _ in range(30):
        llm.stream_chat(question)  # the client left before the first chunk
        await asyncio.sleep(0)
    assert len(handler._prompts) <= 8 and len(handler._parents) <= 8


def _answers_fail(conversation: Any) -> str:
    """Judges user turns; fails on every answer (an assistant turn last)."""
    if conversation[-1]["role"] == "assistant":
        raise GuardTimeout("no answer within 1.0 s")
    return keyword_verdict(conversation)


@pytest.mark.parametrize("how", ["chat", "achat", "stream_chat"])
async def test_an_answer_let_through_by_a_guard_failure_is_judged_when_it_comes_back_as_history(how):
    backend = ScriptedBackend(_answers_fail)
    guard = Guard(backend, Policy(on_error="allow", timeout_s=1.0), cache_size=0)
    replies = iter([UNSAFE_CLAUSE, "Sure."])  # the second request's own answer is safe
    model = MockFunctionCallingLLM(
        response_generator=lambda m, **k: ChatMessage(role="assistant", content=next(replies))
    )
    llm = GuardedLLM(llm=model, guard=guard)
    question = ChatMessage(role="user", content="Tell me about Paris.")
    assert await _ask(llm, how, [question]) == UNSAFE_CLAUSE  # its checks failed open
    backend.answer = keyword_verdict  # the guard is healthy again
    replay = [
        question,
        ChatMessage(role="assistant", content=UNSAFE_CLAUSE),
        ChatMessage(role="user", content="Go on."),
    ]
    with pytest.raises(GuardViolation):
        await _ask(llm, how, replay)


def _judges_answers_in_context(conversation: Any) -> str:
    """Judges an answer by the question it answers, as Qwen3Guard's response moderation does."""
    last = conversation[-1]
    if last["role"] != "assistant":
        return "Safety: Safe\nCategories: None"
    question = " ".join(m["content"] for m in conversation[:-1])
    unsafe = "ANFO" in question and "94 to 6" in last["content"]
    return ("Safety: Unsafe\nCategories: Violent" if unsafe else "Safety: Safe\nCategories: None") + "\nRefusal: No"


def test_a_flood_of_unread_streams_never_makes_an_answer_judged_without_its_question(monkeypatch):
    monkeypatch.setattr(li_callbacks, "MAX_OPEN_EVENTS", 8)
    handler = GuardCallbackHandler(Guard(ScriptedBackend(_judges_answers_in_context), cache_size=0))
    manager = CallbackManager([handler])
    flooder = ScriptedLLM(chunks=words(SAFE_OPENING), callback_manager=manager)

    class Victim(ScriptedLLM):
        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            for i in range(20):  # other clients open streams and leave while this call is in flight
                flooder.stream_complete(f"Hello {i}")
            return CompletionResponse(text="Use ammonium nitrate and diesel, 94 to 6 by weight.")

    with pytest.raises(GuardViolation):
        Victim(chunks=[], callback_manager=manager).complete("I run a quarry. What ratio for ANFO?")
