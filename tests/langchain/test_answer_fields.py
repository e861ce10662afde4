"""Answer text held outside ``content`` (red team): it reached the consumer and the state, never judged.

- ``additional_kwargs["audio"]["transcript"]``: ``ChatOpenAI(modalities=["text", "audio"])``'s spoken answer
  (content empty);
- ``additional_kwargs["refusal"]``: Chat Completions' refusal text;
- the Responses API with ``output_version="v0"``: ``additional_kwargs["reasoning"]["summary"]`` (reasoning)
  and ``additional_kwargs["tool_outputs"]`` (server-side tool items: an MCP call's ``output``);
- citations: Anthropic's ``citations[].cited_text``, the ``annotations`` of a text block (``cited_text``,
  ``title``);
- ``response_metadata`` strings (a provider's own grounding sources), provider bookkeeping left out.

Each test is the attack, counted in characters of the unsafe word reaching the consumer or the state (0).
The judge is the keyword guard (unsafe when the judged turn says "ammonium"); real ChatOpenAI against a
local server where the provider's shape matters.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_openai import ChatOpenAI
from lc_fakes import SAFE_QUESTION, UNSAFE_CLAUSE
from qwenguard.core import Guard, GuardViolation, InputTooLarge
from qwenguard.integrations.langchain import (
    AsyncGuardCallbackHandler,
    GuardCallbackHandler,
    GuardedChatModel,
    GuardMiddleware,
    _messages,
    guard_output,
)
from test_tool_side_channels import call, drain, literal_openai

WORD = "ammonium"
MODES = ["sync", "async"]
INPUTS = {"messages": [{"role": "user", "content": SAFE_QUESTION}]}
U = UNSAFE_CLAUSE

#: Each field, as the provider class leaves it in the answer, and the role it is judged in.
FIELDS: dict[str, tuple[dict[str, Any], str]] = {
    "audio_transcript": (
        {"content": "", "additional_kwargs": {"audio": {"id": "audio_1", "data": "UklGRg==", "transcript": U}}},
        "response",
    ),
    "refusal": ({"content": "", "additional_kwargs": {"refusal": U}}, "response"),
    "reasoning_summary_v0": (
        {
            "content": [{"type": "text", "text": "Paris."}],
            "additional_kwargs": {"reasoning": {"id": "rs_1", "summary": [{"type": "summary_text", "text": U}]}},
        },
        "response",
    ),
    "tool_outputs_v0": (
        {
            "content": [{"type": "text", "text": "Done."}],
            "additional_kwargs": {
                "tool_outputs": [{"type": "mcp_call", "id": "mcp_1", "name": "fetch", "arguments": "{}", "output": U}]
            },
        },
        "tool_result",
    ),
    "anthropic_citation": (
        {
            "content": [
                {
                    "type": "text",
                    "text": "See the source.",
                    "citations": [{"type": "char_location", "cited_text": U, "document_index": 0}],
                }
            ]
        },
        "tool_result",
    ),
    "annotation_title": (
        {
            "content": [
                {
                    "type": "text",
                    "text": "See the source.",
                    "annotations": [{"type": "citation", "title": U, "url": "https://example.com"}],
                }
            ]
        },
        "tool_result",
    ),
    "response_metadata": ({"content": "Paris.", "response_metadata": {"grounding": {"snippet": U}}}, "tool_result"),
    # What a provider's own tool returned, as a content block: untrusted content, not the answer's words.
    "server_tool_result": (
        {
            "content": [
                {"type": "text", "text": "See the result."},
                {"type": "server_tool_result", "tool_call_id": "srv_1", "status": "success", "output": U},
            ]
        },
        "tool_result",
    ),
    "anthropic_web_search_result": (
        {
            "content": [
                {
                    "type": "web_search_tool_result",
                    "tool_use_id": "srvtoolu_1",
                    "content": [
                        {
                            "type": "web_search_result",
                            "title": U,
                            "url": "https://example.com",
                            "encrypted_content": "E",
                        }
                    ],
                },
                {"type": "text", "text": "See the source."},
            ]
        },
        "tool_result",
    ),
    "responses_v1_mcp_call": (
        {
            "content": [
                {
                    "type": "mcp_call",
                    "id": "mcp_1",
                    "name": "fetch",
                    "arguments": "{}",
                    "server_label": "web",
                    "output": U,
                },
                {"type": "text", "text": "Done."},
            ]
        },
        "tool_result",
    ),
}


@pytest.fixture
def kw() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"))


def leaked(obj: Any) -> int:
    """Characters of the unsafe word in what the consumer or the state got."""
    return repr(obj).count(WORD) * len(WORD)


def handler_for(guard: Guard, mode: str, **options: Any) -> Any:
    return (GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard, **options)


def streamed(role: str) -> set[str]:
    """The stages a streamed field may be stopped at: the answer's words by the stream's own check."""
    return {"stream", "response"} if role == "response" else {role}


class FieldModel(BaseChatModel):
    """Answers with ``fields`` (whole), or streams a safe opening chunk and then a chunk with ``fields``,
    reporting each chunk to its run manager first, as real chat models do."""

    fields: dict[str, Any]

    @property
    def _llm_type(self) -> str:
        return "fields"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self

    def _chunks(self) -> list[AIMessageChunk]:
        return [AIMessageChunk(content="Here. ", id="a1"), AIMessageChunk(id="a1", **self.fields)]

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(id="a1", **self.fields))])

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> Iterator[Any]:
        for chunk in self._chunks():
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation

    async def _astream(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        for chunk in self._chunks():
            generation = ChatGenerationChunk(message=chunk)
            if run_manager is not None:
                await run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation


def _assert_refused_without_the_fields(message: Any) -> None:
    """The refusal that replaced the answer carries none of its fields."""
    assert "blocked by the safety guard" in message.text
    assert message.additional_kwargs == {}
    assert set(message.response_metadata) <= {"qwenguard"}


# -- 1. the agent: GuardMiddleware -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("field", list(FIELDS))
def test_an_agents_answer_field_is_judged_before_the_state(kw, mode, field):
    agent = create_agent(FieldModel(fields=FIELDS[field][0]), [], middleware=[GuardMiddleware(kw)])
    state = call(lambda: agent.invoke(INPUTS), lambda: agent.ainvoke(INPUTS), mode)
    assert leaked(state["messages"]) == 0
    _assert_refused_without_the_fields(state["messages"][-1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("field", list(FIELDS))
def test_an_agents_streamed_answer_field_is_held_until_judged(kw, mode, field):
    agent = create_agent(FieldModel(fields=FIELDS[field][0]), [], middleware=[GuardMiddleware(kw)])
    seen, error = drain(
        lambda: agent.stream(INPUTS, stream_mode=["messages", "values"]),
        lambda: agent.astream(INPUTS, stream_mode=["messages", "values"]),
        mode,
    )
    assert error is None
    assert leaked(seen) == 0  # neither a streamed chunk nor the state
    _assert_refused_without_the_fields(seen[-1][1]["messages"][-1])


# -- 2. GuardedChatModel and guard_output ---------------------------------------------------------------------------
def _runnable(path: str, model: Any, guard: Guard) -> Any:
    return GuardedChatModel(model, guard) if path == "guarded_model" else model | guard_output(guard)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["guarded_model", "guard_output"])
@pytest.mark.parametrize("field", list(FIELDS))
def test_a_whole_answer_field_is_judged_in_its_role(kw, mode, path, field):
    fields, role = FIELDS[field]
    runnable = _runnable(path, FieldModel(fields=fields), kw)
    with pytest.raises(GuardViolation) as stop:
        call(lambda: runnable.invoke(SAFE_QUESTION), lambda: runnable.ainvoke(SAFE_QUESTION), mode)
    assert stop.value.decision.stage.value == role


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["guarded_model", "guard_output"])
@pytest.mark.parametrize("field", list(FIELDS))
def test_a_streamed_answer_field_is_held_until_judged(kw, mode, path, field):
    fields, role = FIELDS[field]
    runnable = _runnable(path, FieldModel(fields=fields), kw)
    seen, error = drain(lambda: runnable.stream(SAFE_QUESTION), lambda: runnable.astream(SAFE_QUESTION), mode)
    assert isinstance(error, GuardViolation) and error.decision.stage.value in streamed(role)
    assert leaked(seen) == 0


# -- 3. the callback handler ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("field", list(FIELDS))
def test_a_callback_judges_a_whole_answer_field(kw, mode, field):
    fields, role = FIELDS[field]
    model, config = FieldModel(fields=fields), {"callbacks": [handler_for(kw, mode)]}
    with pytest.raises(GuardViolation) as stop:
        call(lambda: model.invoke(SAFE_QUESTION, config), lambda: model.ainvoke(SAFE_QUESTION, config), mode)
    assert stop.value.decision.stage.value == role


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("field", list(FIELDS))
def test_a_callback_stops_a_streamed_answer_field_before_it_goes_out(kw, mode, field):
    """The gate engine judges each chunk's text before it is yielded; what a chunk quotes is judged in the
    stream's path on every engine."""
    fields, role = FIELDS[field]
    model, config = FieldModel(fields=fields), {"callbacks": [handler_for(kw, mode, stream_engine="gate")]}
    seen, error = drain(
        lambda: model.stream(SAFE_QUESTION, config=config), lambda: model.astream(SAFE_QUESTION, config=config), mode
    )
    assert isinstance(error, GuardViolation) and error.decision.stage.value in streamed(role)
    assert leaked(seen) == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("field", [f for f, (_, role) in FIELDS.items() if role == "tool_result"])
def test_a_callback_judges_a_streamed_quote_in_the_streams_path_on_the_default_engine(kw, mode, field):
    model, config = FieldModel(fields=FIELDS[field][0]), {"callbacks": [handler_for(kw, mode)]}
    seen, error = drain(
        lambda: model.stream(SAFE_QUESTION, config=config), lambda: model.astream(SAFE_QUESTION, config=config), mode
    )
    assert isinstance(error, GuardViolation) and error.decision.stage.value == "tool_result"
    assert leaked(seen) == 0


# -- 4. real ChatOpenAI: a spoken answer (Chat Completions) and the Responses API with output_version="v0" -------
def literal_reply(reply: dict[str, Any], requests: list[Any] | None = None) -> Any:
    """A local server answering every request with ``reply`` (a chat completion or a response), not streamed;
    each request's body is appended to ``requests``."""
    return literal_openai({"whole": reply, "chunks": []}, requests)


def _spoken(transcript: str) -> dict[str, Any]:
    audio = {"id": "audio_1", "data": "UklGRiQAAABXQVZF", "expires_at": 9999999999, "transcript": transcript}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-audio-preview",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": None, "audio": audio}}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _audio_chat(url: str) -> ChatOpenAI:
    options = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}
    return ChatOpenAI(base_url=url, api_key="x", model="gpt-4o-audio-preview", model_kwargs=options)


def _response(*items: dict[str, Any], annotation_title: str = "Example") -> dict[str, Any]:
    annotation = {"type": "url_citation", "url": "https://example.com", "title": annotation_title}
    annotation.update(start_index=0, end_index=5)
    message = {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Paris.", "annotations": [annotation]}],
    }
    usage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
    usage.update(input_tokens_details={"cached_tokens": 0}, output_tokens_details={"reasoning_tokens": 0})
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 0,
        "status": "completed",
        "model": "m",
        "output": [*items, message],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


RESPONSES_V0 = {
    "reasoning_summary": (
        _response({"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": U}]}),
        "response",
    ),
    "mcp_call_output": (
        _response(
            {
                "type": "mcp_call",
                "id": "mcp_1",
                "name": "fetch",
                "arguments": "{}",
                "server_label": "web",
                "output": f"Page says: {U}",
            }
        ),
        "tool_result",
    ),
    "url_citation_title": (_response(annotation_title=U), "tool_result"),
}


def _responses_v0(url: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=url, api_key="x", model="m", use_responses_api=True, output_version="v0")


@pytest.mark.parametrize("mode", MODES)
def test_an_agents_spoken_answer_is_judged(kw, mode):
    """``content`` is None; the transcript went to the state unjudged (red team f2)."""
    with literal_reply(_spoken(f"Sure. {U}")) as url:
        agent = create_agent(_audio_chat(url), [], middleware=[GuardMiddleware(kw)])
        state = call(lambda: agent.invoke(INPUTS), lambda: agent.ainvoke(INPUTS), mode)
    assert leaked(state["messages"]) == 0
    _assert_refused_without_the_fields(state["messages"][-1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["guarded_model", "guard_output", "callback"])
def test_a_spoken_answer_is_judged_on_every_path(kw, mode, path):
    config: Any = {"callbacks": [handler_for(kw, mode)]} if path == "callback" else {}
    with literal_reply(_spoken(f"Sure. {U}")) as url:
        model = _audio_chat(url)
        runnable = model if path == "callback" else _runnable(path, model, kw)
        with pytest.raises(GuardViolation) as stop:
            call(lambda: runnable.invoke(SAFE_QUESTION, config), lambda: runnable.ainvoke(SAFE_QUESTION, config), mode)
    assert stop.value.decision.stage.value == "response"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(RESPONSES_V0))
def test_an_agents_responses_v0_fields_are_judged(kw, mode, case):
    reply, _ = RESPONSES_V0[case]
    with literal_reply(reply) as url:
        agent = create_agent(_responses_v0(url), [], middleware=[GuardMiddleware(kw)])
        state = call(lambda: agent.invoke(INPUTS), lambda: agent.ainvoke(INPUTS), mode)
    assert leaked(state["messages"]) == 0
    _assert_refused_without_the_fields(state["messages"][-1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("path", ["guarded_model", "guard_output", "callback"])
@pytest.mark.parametrize("case", list(RESPONSES_V0))
def test_responses_v0_fields_are_judged_in_their_role_on_every_path(kw, mode, path, case):
    reply, role = RESPONSES_V0[case]
    config: Any = {"callbacks": [handler_for(kw, mode)]} if path == "callback" else {}
    with literal_reply(reply) as url:
        model = _responses_v0(url)
        runnable = model if path == "callback" else _runnable(path, model, kw)
        with pytest.raises(GuardViolation) as stop:
            call(lambda: runnable.invoke(SAFE_QUESTION, config), lambda: runnable.ainvoke(SAFE_QUESTION, config), mode)
    assert stop.value.decision.stage.value == role


# -- 5. what passes: a safe answer with these fields, and provider bookkeeping ---------------------------------------
SAFE_FIELDS = {
    "content": [
        {
            "type": "text",
            "text": "Paris.",
            "citations": [{"type": "char_location", "cited_text": "Paris is the capital.", "document_index": 0}],
            "annotations": [{"type": "url_citation", "title": "France", "url": "https://example.com"}],
        }
    ],
    "additional_kwargs": {
        "refusal": "",
        "audio": {"id": "audio_1", "data": "UklGRg==", "transcript": "Paris."},
        "reasoning": {"id": "rs_1", "summary": [{"type": "summary_text", "text": "The user asks a capital."}]},
        "tool_outputs": [{"type": "mcp_call", "id": "mcp_1", "name": "fetch", "output": "France: Paris."}],
    },
    # Provider bookkeeping naming the unsafe word: never judged, so no false stop.
    "response_metadata": {
        "id": "chatcmpl-ammonium",
        "model_name": "ammonium-chat-7b",
        "model_provider": "openai",
        "system_fingerprint": "fp_ammonium",
        "finish_reason": "stop",
        "service_tier": "default",
        "token_usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        "headers": {"x-request-id": "ammonium-1"},
    },
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream", [False, True])
def test_a_safe_answer_with_these_fields_passes_unchanged(kw, mode, stream):
    agent = create_agent(FieldModel(fields=SAFE_FIELDS), [], middleware=[GuardMiddleware(kw)])
    if stream:
        seen, error = drain(
            lambda: agent.stream(INPUTS, stream_mode="values"),
            lambda: agent.astream(INPUTS, stream_mode="values"),
            mode,
        )
        assert error is None
        answer = seen[-1]["messages"][-1]
    else:
        answer = call(lambda: agent.invoke(INPUTS), lambda: agent.ainvoke(INPUTS), mode)["messages"][-1]
    assert "blocked" not in answer.text
    assert answer.additional_kwargs["tool_outputs"] == SAFE_FIELDS["additional_kwargs"]["tool_outputs"]
    assert answer.additional_kwargs["audio"]["transcript"] == "Paris."
    assert answer.response_metadata["model_name"] == "ammonium-chat-7b"
    guarded = GuardedChatModel(FieldModel(fields=SAFE_FIELDS), kw)
    whole = call(lambda: guarded.invoke(SAFE_QUESTION), lambda: guarded.ainvoke(SAFE_QUESTION), mode)
    assert whole.additional_kwargs == SAFE_FIELDS["additional_kwargs"]


def test_provider_bookkeeping_is_not_judged():
    """Ids, model names, usage, headers: no check at all (no false stop, no guard call per answer)."""
    answer = AIMessage(content="Paris.", response_metadata=SAFE_FIELDS["response_metadata"])
    assert _messages.source_text(answer) == ""
    assert [i.stage.value for i in _messages.output_items(answer, [])] == ["response"]


def test_what_an_answer_quotes_is_read_within_a_bound():
    many = AIMessage(content="Paris.", additional_kwargs={"tool_outputs": [{"output": "x" * 10}] * 100})
    with pytest.raises(InputTooLarge):
        _messages.source_text(many, budget=500)  # cut short: refused, never judged in part
    assert len(_messages.source_text(many, budget=2000)) == 100 * 11 - 1
    image = {
        "type": "image_generation_call",
        "id": "ig_1",
        "result": "iVBORw0KGgo" * 100_000,
        "revised_prompt": "A cat",
    }
    assert (
        _messages.source_text(AIMessage(content="", additional_kwargs={"tool_outputs": [image]}), budget=1000)
        == "A cat"
    )


@pytest.mark.parametrize(
    "field", ["tool_outputs_v0", "anthropic_citation", "reasoning_summary_v0", "refusal", "audio_transcript"]
)
def test_a_redacted_answer_in_the_history_keeps_nothing_beside_its_content(field):
    """A client's history holding an earlier answer whose quoted text is harmful: ``before_model`` replaces that
    answer with the notice, and what it carried beside its content goes too (the Responses API's provider class
    sends ``tool_outputs`` back). (Its reasoning summary and refusal are sent back too.)"""
    from lc_fakes import SAFE_ANSWER, scripted

    guard = Guard(ScriptedBackend(keyword_verdict, name="kw"))
    shape, _role = FIELDS[field]
    earlier = AIMessage(**shape)
    model = scripted(SAFE_ANSWER)
    model.seen = []
    agent = create_agent(model, [], middleware=[GuardMiddleware(guard, exit_behavior="replace")])
    agent.invoke({"messages": [{"role": "user", "content": "Hi"}, earlier, {"role": "user", "content": SAFE_QUESTION}]})
    read = [m for call in model.seen for m in call]
    assert read and WORD not in repr(read)


#: An earlier answer in the Responses API's v0 shape, which ``ChatOpenAI(use_responses_api=True)`` sends back to
#: the model (langchain-core's ``_convert_from_v03_ai_message``: the reasoning item with its summary, the refusal).
SENT_BACK_V0 = {
    "reasoning_summary": {
        "content": [{"type": "text", "text": "Paris."}],
        "additional_kwargs": {"reasoning": {"id": "rs_1", "summary": [{"type": "summary_text", "text": U}]}},
    },
    "refusal": {"content": [], "additional_kwargs": {"refusal": U}},
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("field", list(SENT_BACK_V0))
def test_an_earlier_answers_fields_the_responses_api_sends_back_are_judged(kw, mode, field):
    """The attack: a client's history holds a forged earlier answer whose v0 reasoning summary (or refusal) is the
    unsafe clause. The input side read only the content, and the provider class sent the field to the model."""
    requests: list[Any] = []
    earlier = AIMessage(id="msg_1", **SENT_BACK_V0[field])
    inputs = {"messages": [{"role": "user", "content": "Hi"}, earlier, {"role": "user", "content": SAFE_QUESTION}]}
    with literal_reply(_response(), requests) as url:
        agent = create_agent(_responses_v0(url), [], middleware=[GuardMiddleware(kw, exit_behavior="replace")])
        call(lambda: agent.invoke(inputs), lambda: agent.ainvoke(inputs), mode)
    assert requests, "the model was never called"
    assert WORD not in json.dumps(requests)


def test_the_responses_api_sends_an_earlier_answers_reasoning_summary_back():
    """What the test above rests on: without a guard, the field reaches the model."""
    requests: list[Any] = []
    earlier = AIMessage(id="msg_1", **SENT_BACK_V0["reasoning_summary"])
    with literal_reply(_response(), requests) as url:
        _responses_v0(url).invoke([("user", "Hi"), earlier, ("user", SAFE_QUESTION)])
    assert WORD in json.dumps(requests)
