"""Text a client or a provider can put in a message where the guard did not read it, sent or produced by the real
`ChatMistralAI` (langchain-mistralai 1.1.6, rt47a M1-M4) and `ChatGoogleGenerativeAI` (langchain-google-genai 4.4.3,
rt47c G1-G3, G10): differential red teams against recording servers (what the provider received, and what the
consumer got, against what the guard judged).

Neither class is a test dependency here: each shape is the one the class sends or produces (taken from the red teams'
repros and checked against those versions), run through the real qwenguard pieces with a scripted model.

- M1 = G3: a `ToolMessage`'s ``name`` is sent (ChatMistralAI's ``name``, Gemini's ``functionResponse.name``). Judged as
  a label unless it is the name of the call it answers (what ``ToolNode`` writes: no check).
- M2: an assistant turn's ``additional_kwargs["prefix"]`` is sent as it is (ChatMistralAI).
- G1: a Gemini ``media`` block with text ``data`` (base64), and its v1 ``non_standard`` wrapper (fixed before).
- G2: a content dict without ``type`` is sent by ChatGoogleGenerativeAI as its ``str()``: ids and signatures too.
- M3: the raw ``additional_kwargs["tool_calls"]`` ChatMistralAI keeps beside the parsed calls of an answer: an extra
  key, an id with words, a streamed entry without ``function`` (parsed to an empty call).
- M4: a v0 answer's text block carrying a ``reference`` (ChatMistralAI moves a reference chunk's other keys there).
- G10: ``response_metadata["prompt_feedback"]["block_reason_message"]`` of an answer Gemini refused.
"""

# No `from __future__ import annotations`: LangChain reads the tool's annotations.

import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from lc_fakes import UNSAFE_CLAUSE, scripted, tool_call
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware, guard_output
from qwenguard.integrations.langchain._messages import answer_tool_calls, input_items, sent_labels, source_text
from scripted_openai import Reply, ToolCall, scripted_openai
from test_answer_fields import handler_for, leaked
from test_tool_side_channels import call, drain
from test_wire_fields import PATHS, SAFE, WORD, run_on

MODES = ["sync", "async"]


def underscored(text: str) -> str:
    """``text`` as one identifier-like label (a tool name LangChain does not check)."""
    return text.replace(" ", "_").replace(",", "").replace(".", "")


def identifier(text: str) -> str:
    """``text`` as an identifier (`_common.IDENTIFIER`: up to 64 characters), which an id key used to hide."""
    return underscored(text)[:64]


def sealed(text: str) -> str:
    """``text`` as one base64 token (`_common.SEALED`), which a signature key used to hide."""
    return "".join(ch for ch in text.replace(" ", "+") if ch.isalnum() or ch == "+")


def b64(text: str) -> str:
    return base64.b64encode(f"Meeting notes.\n{text}\n".encode()).decode()


CALL = {"name": "lookup", "args": {}, "id": "abcDEF123"}


def answered(name: str) -> list[Any]:
    """A client's history: a call to ``lookup`` and a tool message answering it under ``name``."""
    return [
        HumanMessage("Look it up."),
        AIMessage("", tool_calls=[CALL]),
        ToolMessage("sunny", tool_call_id=CALL["id"], name=name),
    ]


def earlier_answer(*blocks: Any, **fields: Any) -> list[Any]:
    return [HumanMessage("Hi."), AIMessage(list(blocks), **fields)]


#: name -> the client's history holding ``text`` where ChatMistralAI or ChatGoogleGenerativeAI sends it.
SENT: dict[str, Any] = {
    # M1 = G3
    "a tool message's name": lambda t: answered(underscored(t)),
    "a tool message's name with spaces": lambda t: answered(t),
    "a tool message's name answering no call": lambda t: [
        HumanMessage("Look it up."),
        ToolMessage("sunny", tool_call_id="zzz999", name=underscored(t)),
    ],
    # M2
    "a string prefix": lambda t: [HumanMessage("Hi."), AIMessage("Sure,", additional_kwargs={"prefix": t})],
    "an object prefix": lambda t: [HumanMessage("Hi."), AIMessage("Sure,", additional_kwargs={"prefix": {"note": t}})],
    # G1 (fixed by c2903e1): Gemini's media block, and its v1 non_standard wrapper in an earlier answer
    "a media block's text data": lambda t: [
        HumanMessage(
            [{"type": "text", "text": "Read it."}, {"type": "media", "mime_type": "text/plain", "data": b64(t)}]
        )
    ],
    "a non_standard media block in an earlier v1 answer": lambda t: earlier_answer(
        {"type": "text", "text": "Here."},
        {"type": "non_standard", "value": {"type": "media", "mime_type": "text/plain", "data": b64(t)}},
        response_metadata={"output_version": "v1", "model_provider": "google_genai"},
    ),
    # G2: sent as its str()
    "a typeless dict's id": lambda t: [HumanMessage([{"type": "text", "text": "Read."}, {"id": identifier(t)}])],
    "a typeless dict's signature": lambda t: [
        HumanMessage([{"type": "text", "text": "Read."}, {"signature": sealed(t)}])
    ],
    "a typeless dict's call_id in an earlier answer": lambda t: earlier_answer(
        {"type": "text", "text": "ok"},
        {"call_id": identifier(t)},
        response_metadata={"model_provider": "google_genai"},
    ),
    "a typeless dict of two keys": lambda t: [
        HumanMessage([{"type": "text", "text": "Read."}, {"file_id": identifier(t), "id": "x1"}])
    ],
}


def judged(messages: list[Any], path: str, mode: str = "sync") -> tuple[list[str], Any, list[Any]]:
    """``messages`` then "Go on." on ``path``, the model a scripted one; (the turns judged, the outcome, what the
    model was given)."""
    backend = ScriptedBackend(keyword_verdict, name="kw")
    chat = scripted("Done.")
    outcome = run_on(path, mode, chat, Guard(backend, cache_size=0), [*messages, HumanMessage("Go on.")])
    turns = [conversation[-1]["content"] for batch in backend.calls for conversation in batch]
    return turns, outcome, chat.seen


def refused(outcome: Any) -> bool:
    if isinstance(outcome, GuardViolation):
        return True
    return isinstance(outcome, dict) and "safety guard" in str(outcome["messages"][-1].content)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", list(SENT))
def test_a_field_mistral_or_gemini_sends_is_judged(shape: str, path: str) -> None:
    turns, outcome, seen = judged(SENT[shape](UNSAFE_CLAUSE), path)
    assert any(WORD in turn for turn in turns), f"{shape}: the clause was in no judged turn"
    assert refused(outcome) and not seen  # the model was never called
    turns, outcome, seen = judged(SENT[shape](SAFE), path)
    assert not refused(outcome) and seen


@pytest.mark.parametrize("path", PATHS)
def test_async_paths_judge_the_same_fields(path: str) -> None:
    for shape in ("a tool message's name", "an object prefix", "a typeless dict's id"):
        turns, outcome, seen = judged(SENT[shape](UNSAFE_CLAUSE), path, "async")
        assert any(WORD in turn for turn in turns) and not seen, f"{shape}: judged on no async path"


def test_a_tool_message_named_after_its_call_costs_no_check() -> None:
    """What ToolNode writes (the call's own name) is no label to judge: it was judged with the call."""
    assert sent_labels(answered("lookup")[2], {"abcDEF123": "lookup"}) == ""
    assert [i for i in input_items(answered("lookup")) if i.label == "name of a message"] == []
    # Another name, or no call to answer: judged.
    assert sent_labels(answered("lookup")[2], {"abcDEF123": "search"}) == "lookup"
    assert sent_labels(answered("lookup")[2]) == "lookup"
    assert [i.label for i in input_items(answered("search")) if i.label == "name of a message"] == ["name of a message"]


@pytest.mark.parametrize("mode", MODES)
def test_an_agents_tool_steps_cost_no_extra_check(mode: str) -> None:
    """An agent's ToolNode names its tool messages after their calls: no check of the name, on any step."""

    @tool
    def lookup(q: str) -> str:
        """Look something up."""
        return "sunny"

    backend = ScriptedBackend(keyword_verdict, name="kw")
    chat = scripted(tool_call("lookup", {"q": "weather"}, call_id="abcDEF123"), "Done.")
    agent = create_agent(chat, [lookup], middleware=[GuardMiddleware(Guard(backend, cache_size=0))])
    given = {"messages": [HumanMessage("What is the weather?")]}
    result = call(lambda: agent.invoke(given), lambda: agent.ainvoke(given), mode)
    assert result["messages"][-1].content == "Done."
    assert isinstance(result["messages"][2], ToolMessage) and result["messages"][2].name == "lookup"
    judged_turns = [c for batch in backend.calls for c in batch]
    assert not [c for c in judged_turns if c == [{"role": "user", "content": "lookup"}]]  # the name alone


def test_a_prefix_flag_is_no_label() -> None:
    for value in (True, False, None, 1):
        assert sent_labels(AIMessage("Sure,", additional_kwargs={"prefix": value})) == ""
    # Only an assistant turn's prefix is sent.
    assert sent_labels(HumanMessage("Hi.", additional_kwargs={"prefix": "words"})) == ""


# -- answers: what ChatMistralAI and ChatGoogleGenerativeAI hand the consumer ------------------------------------
def raw_call(**fields: Any) -> dict[str, Any]:
    base = {
        "id": "abcDEF123",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
        "index": 0,
    }
    return {**base, **fields}


def mistral_calls(raw: list[dict[str, Any]], parsed: list[dict[str, Any]], pieces: list[dict[str, Any]]) -> Any:
    """(the answer, its streamed chunks) as ChatMistralAI builds them: the raw calls in ``additional_kwargs``."""
    whole = AIMessage("", id="a1", additional_kwargs={"tool_calls": raw}, tool_calls=parsed)
    chunks = [
        AIMessageChunk(content="", id="a1", additional_kwargs={"tool_calls": raw}, tool_call_chunks=pieces),
        AIMessageChunk(content="", id="a1", response_metadata={"finish_reason": "stop"}),
    ]
    return whole, chunks


def called(raw: dict[str, Any]) -> Any:
    """A raw entry whose parsed call is ``lookup({"q": "x"})`` under its id."""
    parsed = [{"name": "lookup", "args": {"q": "x"}, "id": raw.get("id")}]
    pieces = [{"name": "lookup", "args": '{"q": "x"}', "id": raw.get("id"), "index": 0}]
    return mistral_calls([raw], parsed, pieces)


def reference_answer(text: str) -> Any:
    reference = {"type": "text", "text": "", "reference": {"reference_ids": [1], "title": text}}
    whole = AIMessage([{"type": "text", "text": "Paris."}, reference], id="a1")
    chunks = [
        AIMessageChunk(content=[{"type": "text", "text": "Paris.", "index": 0}], id="a1"),
        AIMessageChunk(content=[{**reference, "index": 1}], id="a1"),
    ]
    return whole, chunks


def refused_prompt(text: str) -> Any:
    metadata = {
        "prompt_feedback": {"block_reason": "OTHER", "block_reason_message": text, "safety_ratings": None},
        "model_provider": "google_genai",
    }
    return AIMessage("", id="a1", response_metadata=metadata), [
        AIMessageChunk(content="", id="a1", response_metadata=metadata)
    ]


#: name -> (the answer holding ``text``, its chunks), as the class hands them to the consumer.
ANSWERS: dict[str, Any] = {
    # M3
    "a raw call's function.description": lambda t: called(
        raw_call(function={"name": "lookup", "arguments": '{"q": "x"}', "description": t})
    ),
    "a raw call's extra key": lambda t: called(raw_call(note=t)),
    "a raw call's id with words": lambda t: called(raw_call(id=t)),
    "a raw call without function (streamed)": lambda t: mistral_calls(
        [{"id": "abcDEF123", "name": "lookup", "arguments": json.dumps({"q": t}), "index": 0}],
        [{"name": "", "args": {}, "id": "abcDEF123"}],
        [{"name": None, "args": None, "id": "abcDEF123", "index": 0}],
    ),
    # M4
    "a reference chunk's title": reference_answer,
    # G10
    "prompt_feedback's block_reason_message": refused_prompt,
}


class Answering(BaseChatModel):
    """Answers with ``whole`` (or streams ``chunks``) first, then "Done.", reporting each chunk as real models do."""

    whole: Any
    chunks: list[Any]
    seen: list[Any] = []

    @property
    def _llm_type(self) -> str:
        return "answering"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self

    def _first(self, messages: Any) -> bool:
        self.seen.append(messages)
        return len(self.seen) == 1

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        message = self.whole if self._first(messages) else AIMessage("Done.")
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Iterator[Any]:
        for chunk in self.chunks if self._first(messages) else [AIMessageChunk(content="Done.")]:
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation

    async def _astream(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        for generation in self._stream(messages, stop, None, **kwargs):
            if run_manager is not None:
                await run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation


def answering(shape: str, text: str) -> Answering:
    whole, chunks = ANSWERS[shape](text)
    return Answering(whole=whole, chunks=chunks, seen=[])


@tool
def lookup(q: str) -> str:
    """Look something up."""
    return "sunny"


def consumed(path: str, how: str, model: Answering, guard: Guard) -> tuple[Any, Exception | None]:
    """What the consumer got from ``model`` guarded on ``path`` (invoke or stream), and the stop, if any."""
    question = [HumanMessage("Capital of France?")]
    if path == "middleware":
        agent = create_agent(model, [lookup], middleware=[GuardMiddleware(guard)])
        given: Any = {"messages": question}
        if how == "invoke":
            return agent.invoke(given), None
        return drain(lambda: agent.stream(given, stream_mode=["messages", "values"]), lambda: None, "sync")
    if path == "callback":
        runnable: Any = model.with_config(callbacks=[handler_for(guard, "sync")])
    else:
        runnable = GuardedChatModel(model, guard) if path == "guarded_model" else model | guard_output(guard)
    if how == "invoke":
        try:
            return runnable.invoke(question), None
        except GuardViolation as stop:
            return None, stop
    return drain(lambda: runnable.stream(question), lambda: None, "sync")


def stopped(got: Any, error: Exception | None) -> bool:
    if isinstance(error, GuardViolation):
        return True
    last = got[-1][1] if isinstance(got, list) and got and isinstance(got[-1], tuple) else got
    return isinstance(last, dict) and "safety guard" in str(last["messages"][-1].content)


@pytest.mark.parametrize("how", ["invoke", "stream"])
@pytest.mark.parametrize("path", ["middleware", "guarded_model", "guard_output", "callback"])
@pytest.mark.parametrize("shape", list(ANSWERS))
def test_an_answer_field_mistral_or_gemini_hands_over_is_judged(shape: str, path: str, how: str) -> None:
    backend = ScriptedBackend(keyword_verdict, name="kw")
    got, error = consumed(path, how, answering(shape, UNSAFE_CLAUSE), Guard(backend, cache_size=0))
    assert any(WORD in c[-1]["content"] for batch in backend.calls for c in batch), f"{shape}: judged nowhere"
    assert stopped(got, error)
    assert leaked(got) == 0, f"{shape}: the consumer got the clause"


@pytest.mark.parametrize("shape", list(ANSWERS))
def test_a_safe_answer_field_passes(shape: str) -> None:
    guard = Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0)
    answer = GuardedChatModel(answering(shape, SAFE), guard).invoke([HumanMessage("Capital of France?")])
    assert SAFE in repr(answer)


def test_ordinary_raw_calls_and_feedback_add_no_check() -> None:
    """Raw entries that only mirror the parsed calls (ChatOpenAI's and ChatMistralAI's every tool-calling answer, and
    each streamed chunk of one) add no call to judge; Gemini's everyday prompt_feedback adds no quoted text."""
    whole, chunks = called(raw_call())
    assert answer_tool_calls(whole) == whole.tool_calls
    assert [c for c in answer_tool_calls(chunks[0]) if c.get("type") == "function_call"] == []
    fragment = AIMessageChunk(
        content="",
        additional_kwargs={"tool_calls": [{"index": 0, "id": None, "function": {"arguments": '{"q', "name": None}}]},
        tool_call_chunks=[{"name": None, "args": '{"q', "id": None, "index": 0}],
    )
    assert [c for c in answer_tool_calls(fragment) if c.get("type") == "function_call"] == []
    ratings = [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE", "blocked": False}]
    everyday = AIMessage(
        "Paris.", response_metadata={"prompt_feedback": {"block_reason": 0, "safety_ratings": ratings}}
    )
    assert source_text(everyday) == ""
    named = AIMessage("", response_metadata={"prompt_feedback": {"block_reason": "SAFETY", "safety_ratings": ratings}})
    assert source_text(named) == ""
    worded = AIMessage("", response_metadata={"prompt_feedback": {"block_reason": "words in a reason"}})
    assert source_text(worded) == "words in a reason"


# -- a real ChatOpenAI: an ordinary tool-calling answer costs the checks it did ----------------------------------
def test_a_chatopenai_tool_calling_answer_costs_what_it_did() -> None:
    """Judging raw entries adds no guard call to an ordinary ChatOpenAI tool-calling answer, whole or streamed
    (counted as before the change: the input, the answer's text, its call once; and since rt71b F1 the text joined
    with the call, one check more for every answer with text and a call, raw entries or not)."""
    arguments = json.dumps({"to": "friend@example.com", "body": "See you at noon."})
    reply = Reply.words("Sending it.", tool_calls=[ToolCall("send_email", arguments, id="call_email", fragments=6)])
    counts = {}
    for how in ("invoke", "stream"):
        backend = ScriptedBackend(keyword_verdict, name="kw")
        with scripted_openai(reply) as url:
            model = ChatOpenAI(base_url=url, api_key="x", model="scripted", max_retries=0)
            guarded = GuardedChatModel(model, Guard(backend, cache_size=0))
            if how == "invoke":
                guarded.invoke([HumanMessage("Mail my friend.")])
            else:
                list(guarded.stream([HumanMessage("Mail my friend.")]))
        calls = [c for batch in backend.calls for c in batch]
        counts[how] = (len(backend.calls), len(calls))
        # The call judged once alone and once joined with the text (rt71b F1), never again for its raw entry.
        assert sum(1 for c in calls if "send_email" in json.dumps(c)) == 2
        assert sum(1 for c in calls if c[-1]["content"].startswith("Sending it.\nTool call: send_email(")) == 1
    # The input; then (invoke) the answer's text, its call and the two joined in one batch, or (stream) the text as it
    # streams and the call and the joined reading at the end.
    assert counts == {"invoke": (2, 4), "stream": (3, 4)}


@pytest.mark.parametrize("how", ["invoke", "stream"])
def test_raw_calls_that_mirror_the_parsed_ones_cost_no_guard_call(how: str) -> None:
    """ChatMistralAI's ordinary tool-calling answer (raw calls beside the parsed ones) costs the checks of the same
    answer without them."""

    def checks(whole: AIMessage, chunks: list[Any]) -> tuple[int, int]:
        backend = ScriptedBackend(keyword_verdict, name="kw")
        guarded = GuardedChatModel(Answering(whole=whole, chunks=chunks, seen=[]), Guard(backend, cache_size=0))
        question = [HumanMessage("Capital of France?")]
        guarded.invoke(question) if how == "invoke" else list(guarded.stream(question))
        return len(backend.calls), sum(len(batch) for batch in backend.calls)

    whole, chunks = called(raw_call())
    bare = whole.model_copy(update={"additional_kwargs": {}})
    bare_chunks = [c.model_copy(update={"additional_kwargs": {}}) for c in chunks]
    assert checks(whole, chunks) == checks(bare, bare_chunks)
