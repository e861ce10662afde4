"""Text a provider class hands the caller outside the answer's message, and a thinking block's signature sent back
(a differential red team with the real `BedrockConverse` against a recording Bedrock server, rt47b B4 and B5).

BedrockConverse maps a Converse reply's ``text``, ``reasoningContent`` and ``toolUse`` blocks into the message;
the rest of the reply lives only in the response's ``raw`` (the whole reply dict; in a stream, the last event,
``metadata``): a ``citationsContent`` block's text (with citations on, the answer's own), the cited
``sourceContent``, a ``guardContent`` block, ``trace.guardrail.modelOutput`` (the unmasked model output),
``additionalModelResponseFields``. `ConverseLLM` builds the responses exactly so (llama-index-llms-bedrock-converse
0.x ``_get_content_and_tool_calls``, ``chat``, ``stream_chat``; ``complete`` through LlamaIndex's decorators, as
the class does), without boto. The keyword judge blocks any judged text holding the unsafe clause; the guard had
judged none of these, and GuardedLLM returned them. The same shapes with safe text cost no guard call more (raw
repeats the answer's text: not judged twice), and neither does an answer of the real `OpenAILike`."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

import asyncio
import copy
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from li_scripted import UNSAFE_CLAUSE
from li_shared import openai_like
from llama_index.core.base.llms.generic_utils import (
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms.custom import CustomLLM
from qwenguard.core import Guard, GuardViolation, InputTooLarge, Stage
from qwenguard.integrations.llamaindex import GuardedLLM
from scripted_openai import Reply, ToolCall, scripted_openai

ASK = [ChatMessage(role="user", content="Tell me about Paris.")]
LOCATION = {"documentChar": {"documentIndex": 0, "start": 0, "end": 3}}
USAGE = {"inputTokens": 8, "outputTokens": 4, "totalTokens": 12}


def converse_reply(content: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """A Converse API reply as boto returns it (``dict(response)``)."""
    return {
        "ResponseMetadata": {"RequestId": "4f6c1d2e-0000", "HTTPStatusCode": 200, "HTTPHeaders": {}},
        "output": {"message": {"role": "assistant", "content": content or [{"text": "Paris."}]}},
        "stopReason": extra.pop("stopReason", "end_turn"),
        "usage": USAGE,
        "metrics": {"latencyMs": 120},
        **extra,
    }


def converse_events(text: str = "Paris.", **metadata: Any) -> list[dict[str, Any]]:
    """A ConverseStream's events for ``text``; ``metadata``: fields of the last event besides usage and metrics."""
    pieces = [text[i : i + 8] for i in range(0, len(text), 8)]
    return [
        {"messageStart": {"role": "assistant"}},
        *({"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": p}}} for p in pieces),
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {"messageStop": {"stopReason": "end_turn"}},
        {"metadata": {"usage": USAGE, "metrics": {"latencyMs": 120}, **metadata}},
    ]


class ConverseLLM(CustomLLM):
    """Answers as BedrockConverse does with a Converse ``reply`` (chat) or ConverseStream ``events`` (streams)."""

    reply: dict[str, Any]
    events: list[dict[str, Any]] = []
    _calls: int = PrivateAttr(default=0)

    @classmethod
    def class_name(cls) -> str:
        return "ConverseLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="anthropic.claude-3-5-sonnet-20240620-v1:0", is_chat_model=True)

    @property
    def calls(self) -> int:
        return self._calls

    @staticmethod
    def _counts(usage: dict[str, int]) -> dict[str, int]:
        return {
            "prompt_tokens": usage["inputTokens"],
            "completion_tokens": usage["outputTokens"],
            "total_tokens": usage["totalTokens"],
        }

    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        self._calls += 1
        response = copy.deepcopy(self.reply)
        blocks: list[Any] = []
        ids, status = [], []
        for block in response["output"]["message"]["content"]:
            if text := block.get("text"):
                blocks.append(TextBlock(text=text))
            if reasoning := block.get("reasoningContent"):
                thought = reasoning.get("reasoningText", {})
                blocks.append(
                    ThinkingBlock(
                        content=thought.get("text"), additional_information={"signature": thought.get("signature")}
                    )
                )
            if use := block.get("toolUse"):
                blocks.append(
                    ToolCallBlock(tool_name=use["name"], tool_call_id=use["toolUseId"], tool_kwargs=use["input"])
                )
            if result := block.get("toolResult"):
                ids.append(result.get("toolUseId", ""))
                status.append(result.get("status", ""))
        return ChatResponse(
            message=ChatMessage(
                role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs={"tool_call_id": ids, "status": status}
            ),
            raw=response,
            additional_kwargs=self._counts(response["usage"]),
        )

    def _chunks(self) -> list[ChatResponse]:
        chunks, text = [], ""
        for event in copy.deepcopy(self.events):
            if delta := event.get("contentBlockDelta"):
                piece = delta["delta"].get("text", "")
                text += piece
                message = ChatMessage(role="assistant", blocks=[TextBlock(text=text)], additional_kwargs={})
                chunks.append(ChatResponse(message=message, delta=piece, raw=event))
            elif metadata := event.get("metadata"):
                message = ChatMessage(
                    role="assistant",
                    blocks=[TextBlock(text=text)],
                    additional_kwargs={"tool_call_id": [], "status": []},
                )
                counts = self._counts(metadata["usage"])
                chunks.append(ChatResponse(message=message, delta="", raw=event, additional_kwargs=counts))
        return chunks

    def stream_chat(self, messages: Any, **kwargs: Any) -> Any:
        self._calls += 1
        return iter(self._chunks())

    async def achat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        return self.chat(messages, **kwargs)

    async def astream_chat(self, messages: Any, **kwargs: Any) -> Any:
        self._calls += 1

        async def gen() -> Any:
            for chunk in self._chunks():
                await asyncio.sleep(0)
                yield chunk

        return gen()

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return chat_to_completion_decorator(self.chat)(prompt, **kwargs)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        return stream_chat_to_completion_decorator(self.stream_chat)(prompt, **kwargs)


def recording_guard(**kwargs: Any) -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(keyword_verdict, name="kw")
    return Guard(backend, cache_size=0, **kwargs), backend


def judged(backend: ScriptedBackend) -> list[str]:
    """The text of every conversation the judge was given (its last turn)."""
    return [conversation[-1]["content"] for call in backend.calls for conversation in call]


# -- B4: the reply's text outside the message ------------------------------------------------------------
#: name -> a Converse reply holding ``clause`` where BedrockConverse maps no block
REPLIES = {
    # With citations on, the answer's own text comes in citationsContent, which the class drops from the message.
    "a citationsContent block's text": lambda clause: converse_reply(
        [
            {"text": "Per the file, "},
            {
                "citationsContent": {
                    "content": [{"text": clause}],
                    "citations": [{"title": "notes", "sourceContent": [{"text": "x"}], "location": LOCATION}],
                }
            },
        ]
    ),
    "a citation's sourceContent": lambda clause: converse_reply(
        [
            {"text": "Per the file, "},
            {
                "citationsContent": {
                    "content": [{"text": "it is fine."}],
                    "citations": [{"title": "notes", "sourceContent": [{"text": clause}], "location": LOCATION}],
                }
            },
        ]
    ),
    "a guardContent block": lambda clause: converse_reply(
        [{"text": "Paris."}, {"guardContent": {"text": {"text": clause}}}]
    ),
    # Bedrock Guardrails with trace="enabled": the model's output before the guardrail masked it.
    "trace.guardrail.modelOutput": lambda clause: converse_reply(trace={"guardrail": {"modelOutput": [clause]}}),
    "additionalModelResponseFields": lambda clause: converse_reply(additionalModelResponseFields={"note": clause}),
}


@pytest.mark.parametrize("name", list(REPLIES))
@pytest.mark.parametrize("mode", ["chat", "achat", "complete", "acomplete"])
async def test_text_in_a_reply_s_raw_is_judged_before_it_is_returned(name: str, mode: str) -> None:
    guard, backend = recording_guard()
    llm = GuardedLLM(llm=ConverseLLM(reply=REPLIES[name](UNSAFE_CLAUSE)), guard=guard)
    with pytest.raises(GuardViolation) as info:
        if mode == "chat":
            llm.chat(ASK)
        elif mode == "achat":
            await llm.achat(ASK)
        elif mode == "complete":
            llm.complete("Tell me about Paris.")
        else:
            await llm.acomplete("Tell me about Paris.")
    assert info.value.decision.stage is Stage.TOOL_RESULT  # judged as quoted content, not as the model's words
    assert any(UNSAFE_CLAUSE in t for t in judged(backend))


@pytest.mark.parametrize("mode", ["stream_chat", "astream_chat", "stream_complete"])
async def test_the_last_chunk_s_raw_is_judged_before_it_goes_out(mode: str) -> None:
    guard, backend = recording_guard()
    events = converse_events("Paris is lovely.", trace={"guardrail": {"modelOutput": [UNSAFE_CLAUSE]}})
    llm = GuardedLLM(llm=ConverseLLM(reply=converse_reply(), events=events), guard=guard)
    received: list[Any] = []
    with pytest.raises(GuardViolation):
        if mode == "stream_chat":
            received.extend(llm.stream_chat(ASK))
        elif mode == "stream_complete":
            received.extend(llm.stream_complete("Tell me about Paris."))
        else:
            async for chunk in await llm.astream_chat(ASK):
                received.append(chunk)
    assert all(c.raw is None for c in received)  # the last chunk, the one with raw, never went out
    assert any(UNSAFE_CLAUSE in t for t in judged(backend))


def test_text_in_a_response_s_additional_kwargs_is_judged() -> None:
    class Annotated(ConverseLLM):
        def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
            response = super().chat(messages, **kwargs)
            response.additional_kwargs["transcript"] = UNSAFE_CLAUSE
            return response

    guard, backend = recording_guard()
    with pytest.raises(GuardViolation):
        GuardedLLM(llm=Annotated(reply=converse_reply()), guard=guard).chat(ASK)
    assert any(UNSAFE_CLAUSE in t for t in judged(backend))


@pytest.mark.parametrize("name", list(REPLIES))
def test_the_same_replies_with_safe_text_are_returned_whole(name: str) -> None:
    guard, _ = recording_guard()
    inner = ConverseLLM(reply=REPLIES[name]("The Louvre is a museum."))
    response = GuardedLLM(llm=inner, guard=guard).chat(ASK)
    assert response.raw == REPLIES[name]("The Louvre is a museum.")  # raw is kept: usage is read there
    assert response.raw["usage"] == USAGE


def test_a_reply_s_raw_past_max_chars_is_refused() -> None:
    guard, _ = recording_guard(max_chars=2_000)
    reply = converse_reply(additionalModelResponseFields={"notes": ["A safe note about Paris."] * 200})
    with pytest.raises(InputTooLarge):
        GuardedLLM(llm=ConverseLLM(reply=reply), guard=guard).chat(ASK)


# -- no guard call more for what raw repeats ----------------------------------------------------------
SIGNATURE = "EqQBCkgIARABGAIiQL2bWm1Q1J4f0vVYq0yZk1xR4nV0nJ3o0kqv8Q1oZfM2t0c0N1bVJ3R0pPZ3c9PQ=="
ORDINARY = {
    "text": converse_reply([{"text": "Paris is the capital of France."}]),
    "reasoning": converse_reply(
        [
            {"reasoningContent": {"reasoningText": {"text": "They ask about Paris.", "signature": SIGNATURE}}},
            {"text": "Paris is the capital of France."},
        ]
    ),
    "a tool call": converse_reply(
        [
            {"text": "Let me look."},
            {"toolUse": {"toolUseId": "tooluse_kZJ", "name": "weather", "input": {"city": "Paris", "note": 'a\n"b"'}}},
        ],
        stopReason="tool_use",
    ),
}


@pytest.mark.parametrize("name", list(ORDINARY))
def test_an_ordinary_bedrock_reply_costs_no_guard_call_more(name: str) -> None:
    guard, backend = recording_guard()
    GuardedLLM(llm=ConverseLLM(reply=ORDINARY[name]), guard=guard).chat(ASK)
    # The prompt, the answer (its reasoning with it), and the tool call: raw repeats them, judged once; an answer's
    # text with a call is also read joined once (rt71b F1).
    assert len(judged(backend)) == (4 if name == "a tool call" else 2)


def test_an_ordinary_bedrock_stream_costs_no_guard_call_more() -> None:
    guard, backend = recording_guard()
    llm = GuardedLLM(llm=ConverseLLM(reply=converse_reply(), events=converse_events("Paris is lovely.")), guard=guard)
    chunks = list(llm.stream_chat(ASK))
    assert chunks[-1].raw["metadata"]["usage"] == USAGE
    assert judged(backend) == ["Tell me about Paris.", "Paris is lovely."]


OPENAI_REPLIES = {
    "text": Reply.words("The capital of France is Paris."),
    "a tool call": Reply.words("Let me look.", [ToolCall("get_weather", '{"city": "Paris", "note": "a\\n\\"b\\""}')]),
}


OPENAI_CASES = [(n, m) for n in OPENAI_REPLIES for m in ("chat", "stream_chat", "complete", "stream_complete")]


@pytest.mark.parametrize(("name", "mode"), [(n, m) for n, m in OPENAI_CASES if n == "text" or "chat" in m])
def test_an_openai_like_answer_costs_no_guard_call_more(name: str, mode: str) -> None:
    """The real `OpenAILike`: its raw (a ChatCompletion object, or the last chunk) repeats the answer only."""
    guard, backend = recording_guard()
    with scripted_openai(OPENAI_REPLIES[name]) as url:
        llm = GuardedLLM(llm=openai_like(url, chat="chat" in mode), guard=guard)
        if mode == "chat":
            response: Any = llm.chat(ASK)
        elif mode == "stream_chat":
            response = list(llm.stream_chat(ASK))[-1]
        elif mode == "complete":
            response = llm.complete("Tell me about Paris.")
        else:
            response = list(llm.stream_complete("Tell me about Paris."))[-1]
    assert response.raw is not None
    # The prompt, the answer, and the tool call: the same count as before raw was read.
    # A tool call: + the joined reading of the answer's text and call (rt71b F1), a streamed answer's too (rt71j F2).
    assert len(judged(backend)) == (4 if name == "a tool call" else 2), judged(backend)


# -- a provider's tool-call id (rt47a M5, with the real MistralAI) ----------------------------------------
class MistralLikeLLM(CustomLLM):
    """Streams as llama-index-llms-mistralai's `MistralAI` does with a tool call: the call's block, with the id
    the provider gave it, on the last chunk, whose ``raw`` is the last SSE event (which does not hold the call)."""

    call_id: str

    @classmethod
    def class_name(cls) -> str:
        return "MistralLikeLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="mistral-small-latest", is_chat_model=True, is_function_calling_model=True)

    def _message(self) -> ChatMessage:
        call = ToolCallBlock(tool_name="lookup", tool_call_id=self.call_id, tool_kwargs={"q": "x"})
        return ChatMessage(role=MessageRole.ASSISTANT, blocks=[TextBlock(text="Let me look."), call])

    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        return ChatResponse(message=self._message(), raw={"choices": [{"finish_reason": "tool_calls"}]})

    def stream_chat(self, messages: Any, **kwargs: Any) -> Any:
        yield ChatResponse(message=ChatMessage(role="assistant", content="Let me look."), delta="Let me look.")
        yield ChatResponse(message=self._message(), delta="", raw={"choices": [{"delta": {"content": ""}}]})

    async def achat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        return self.chat(messages)

    async def astream_chat(self, messages: Any, **kwargs: Any) -> Any:
        async def gen() -> Any:
            for chunk in self.stream_chat(messages):
                yield chunk

        return gen()

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text="Let me look.")

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        yield CompletionResponse(text="Let me look.", delta="Let me look.")

    def get_tool_calls_from_response(self, response: ChatResponse, error_on_no_tool_call: bool = True) -> Any:
        from llama_index.core.llms.llm import ToolSelection

        return [
            ToolSelection(tool_id=b.tool_call_id or "", tool_name=b.tool_name, tool_kwargs=b.tool_kwargs)
            for b in response.message.blocks
            if isinstance(b, ToolCallBlock)
        ]


def answer_of(llm: GuardedLLM, mode: str) -> list[Any]:
    """What the caller gets from ``llm`` for `ASK`: the response, or every chunk of the stream."""
    if mode == "chat":
        return [llm.chat(ASK)]
    if mode == "stream_chat":
        return list(llm.stream_chat(ASK))

    async def collect() -> list[Any]:
        return [c async for c in await llm.astream_chat(ASK)]

    return asyncio.run(collect())


@pytest.mark.parametrize("mode", ["chat", "stream_chat", "astream_chat"])
def test_a_tool_call_id_holding_words_is_judged_on_every_path(mode: str) -> None:
    """A call's id comes from the provider and the consumer gets it with the call. A stream's last chunk has no
    raw repeating it (only chat's raw did, so only chat judged it); an identifier id stays unjudged."""
    words = UNSAFE_CLAUSE.replace(" ", "_")
    guard, backend = recording_guard()
    with pytest.raises(GuardViolation):
        answer_of(GuardedLLM(llm=MistralLikeLLM(call_id=words), guard=guard), mode)
    assert any(words in t for t in judged(backend))
    guard, backend = recording_guard()
    got = answer_of(GuardedLLM(llm=MistralLikeLLM(call_id="a1B2c3D4e"), guard=guard), mode)
    assert got[-1].message.blocks[-1].tool_call_id == "a1B2c3D4e"
    assert not any("a1B2c3D4e" in t for t in judged(backend))


# -- B5: a thinking block's signature ------------------------------------------------------------------
def history(signature: str) -> list[ChatMessage]:
    """An earlier answer whose reasoning BedrockConverse sends back with its signature (``reasoningText.signature``)."""
    thought = ThinkingBlock(content="Let me think.", additional_information={"signature": signature})
    return [
        ChatMessage(role="user", content="Hi."),
        ChatMessage(role="assistant", blocks=[thought, TextBlock(text="Hello.")]),
        ChatMessage(role="user", content="Go on."),
    ]


@pytest.mark.parametrize("mode", ["chat", "stream_chat"])
def test_words_in_a_thinking_signature_are_judged_before_they_are_sent(mode: str) -> None:
    guard, backend = recording_guard()
    inner = ConverseLLM(reply=converse_reply(), events=converse_events())
    llm = GuardedLLM(llm=inner, guard=guard)
    with pytest.raises(GuardViolation):
        llm.chat(history(UNSAFE_CLAUSE)) if mode == "chat" else list(llm.stream_chat(history(UNSAFE_CLAUSE)))
    assert inner.calls == 0  # stopped before the provider was asked
    assert any(UNSAFE_CLAUSE in t for t in judged(backend))


def test_a_signature_that_is_one_base64_token_is_not_judged() -> None:
    guard, backend = recording_guard()
    GuardedLLM(llm=ConverseLLM(reply=converse_reply()), guard=guard).chat(history(SIGNATURE))
    assert not any(SIGNATURE in t for t in judged(backend))


def test_words_in_an_answer_s_thinking_signature_are_judged() -> None:
    guard, _ = recording_guard()
    reply = converse_reply(
        [{"reasoningContent": {"reasoningText": {"text": "Hm.", "signature": UNSAFE_CLAUSE}}}, {"text": "Paris."}]
    )
    with pytest.raises(GuardViolation):
        GuardedLLM(llm=ConverseLLM(reply=reply), guard=guard).chat(ASK)


def test_a_reply_of_many_strings_beside_a_long_answer_is_judged_past_the_search_budget() -> None:
    """Telling raw's strings from the judged answer is a search of the answer per string: a reply repeating
    thousands of its pieces beside a long answer would make that a scan of it per string, unbounded in the
    reply. Past a budget (64 scans of the answer) the rest is judged instead of searched, never skipped."""
    answer = " ".join(f"Paris has museum number {i} and cafe number {i}." for i in range(2_000))  # ~90k characters
    pieces = [{"text": f"museum number {i} and cafe"} for i in range(1_000)]  # each found in the answer
    reply = converse_reply([{"text": answer}], additionalModelResponseFields={"quotes": pieces})
    guard, backend = recording_guard()
    GuardedLLM(llm=ConverseLLM(reply=reply), guard=guard).chat(ASK)
    provider = [t for t in judged(backend) if "museum number 999 and cafe" in t and "Paris has" not in t]
    assert provider, "the pieces past the search budget were skipped unread"
    assert "museum number 0 and cafe" not in provider[0]  # the first ones were found in the answer, not judged again
