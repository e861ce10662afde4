"""`GuardedChatModel.with_structured_output` with the inner model's own methods, `ChatOpenAI` against the scripted
server (rt47a: BaseChatModel's default dropped ``method`` and asked for a tool call whatever was asked, so a model
asked for JSON text got tools, and its JSON answer parsed to None).

The inner model builds the structured output (``response_format`` for ``json_schema`` / ``json_mode``, a tool for
``function_calling``); its model step is the guarded model, so every call is judged: an unsafe JSON answer is
stopped before the parser reads it, whole or streamed, with ``include_raw`` too.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI
from lc_fakes import UNSAFE_CLAUSE
from pydantic import BaseModel
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import GuardedChatModel
from scripted_openai import Reply, ToolCall, scripted_openai

SAFE_BODY = "See you at noon."
WORD = "ammonium"
QUESTION = "Write the e-mail."


class Email(BaseModel):
    to: str
    body: str


def arguments(body: str) -> str:
    return json.dumps({"to": "a@example.com", "body": body})


def chat(url: str, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=url, api_key="x", model="scripted", max_retries=0, **options)


def guard() -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(keyword_verdict, name="kw")
    return Guard(backend, cache_size=0), backend


def run(structured: Any, how: str) -> Any:
    """The structured output, invoked or streamed (the last streamed value), sync or async."""
    if how == "invoke":
        return structured.invoke(QUESTION)
    if how == "ainvoke":
        return asyncio.run(structured.ainvoke(QUESTION))
    if how == "stream":
        return list(structured.stream(QUESTION))[-1]

    async def drain() -> list[Any]:
        return [value async for value in structured.astream(QUESTION)]

    return asyncio.run(drain())[-1]


HOWS = ["invoke", "ainvoke", "stream", "astream"]
TEXT_METHODS = ["json_schema", "json_mode"]


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("method", TEXT_METHODS)
def test_a_json_text_method_asks_for_json_and_parses_the_answer(method: str, how: str) -> None:
    judge, backend = guard()
    with scripted_openai(Reply.words(arguments(SAFE_BODY))) as url:
        structured = GuardedChatModel(chat(url), judge).with_structured_output(Email, method=method)
        assert run(structured, how) == Email(to="a@example.com", body=SAFE_BODY)
        [request] = [r.body for r in url.requests]
    expected = "json_schema" if method == "json_schema" else "json_object"
    assert request["response_format"]["type"] == expected and "tools" not in request
    judged = [c[-1]["content"] for batch in backend.calls for c in batch]
    assert any(SAFE_BODY in turn for turn in judged)  # the JSON answer was judged


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("method", TEXT_METHODS)
def test_an_unsafe_json_answer_is_stopped(method: str, how: str) -> None:
    judge, _ = guard()
    got: list[Any] = []
    with scripted_openai(Reply.words(arguments(UNSAFE_CLAUSE))) as url:
        structured = GuardedChatModel(chat(url), judge).with_structured_output(Email, method=method)
        with pytest.raises(GuardViolation):
            if how.endswith("stream"):
                for value in structured.stream(QUESTION) if how == "stream" else []:
                    got.append(value)
                if how == "astream":

                    async def drain() -> None:
                        async for value in structured.astream(QUESTION):
                            got.append(value)

                    asyncio.run(drain())
            else:
                got.append(run(structured, how))
    assert WORD not in repr(got)


@pytest.mark.parametrize("method", TEXT_METHODS)
def test_include_raw(method: str) -> None:
    judge, _ = guard()
    with scripted_openai(Reply.words(arguments(SAFE_BODY))) as url:
        structured = GuardedChatModel(chat(url), judge).with_structured_output(Email, method=method, include_raw=True)
        result = structured.invoke(QUESTION)
        assert result["parsed"] == Email(to="a@example.com", body=SAFE_BODY) and result["parsing_error"] is None
        assert isinstance(result["raw"], AIMessage)
        streamed = list(structured.stream(QUESTION))
        assert any(isinstance(v, dict) and v.get("raw") is not None for v in streamed)
        assert "response_format" in url.requests[0].body and "tools" not in url.requests[0].body
    judge, _ = guard()
    with scripted_openai(Reply.words(arguments(UNSAFE_CLAUSE))) as url:
        structured = GuardedChatModel(chat(url), judge).with_structured_output(Email, method=method, include_raw=True)
        with pytest.raises(GuardViolation):
            structured.invoke(QUESTION)
        got: list[Any] = []
        with pytest.raises(GuardViolation):
            for value in structured.stream(QUESTION):
                got.append(value)
        assert WORD not in repr(got)


def test_function_calling_still_asks_for_the_schemas_tool() -> None:
    judge, _ = guard()
    reply = Reply(tool_calls=[ToolCall("Email", arguments(SAFE_BODY), id="c3", fragments=4)])
    with scripted_openai(reply) as url:
        structured = GuardedChatModel(chat(url), judge).with_structured_output(Email, method="function_calling")
        assert structured.invoke(QUESTION) == Email(to="a@example.com", body=SAFE_BODY)
        body = url.requests[0].body
    assert [t["function"]["name"] for t in body["tools"]] == ["Email"] and "response_format" not in body
    judge, _ = guard()
    reply = Reply(tool_calls=[ToolCall("Email", arguments(UNSAFE_CLAUSE), id="c3", fragments=4)])
    with scripted_openai(reply) as url:
        structured = GuardedChatModel(chat(url), judge).with_structured_output(Email, method="function_calling")
        with pytest.raises(GuardViolation):
            structured.invoke(QUESTION)


def test_the_inner_binding_still_applies() -> None:
    """A bound inner model (``model.bind(temperature=0)``) keeps its arguments beside the structured output's."""
    judge, _ = guard()
    with scripted_openai(Reply.words(arguments(SAFE_BODY))) as url:
        guarded = GuardedChatModel(chat(url).bind(temperature=0), judge)
        assert guarded.with_structured_output(Email, method="json_schema").invoke(QUESTION).body == SAFE_BODY
        body = url.requests[0].body
    assert body["temperature"] == 0 and body["response_format"]["type"] == "json_schema"


def test_an_unsafe_request_never_reaches_the_provider() -> None:
    judge, _ = guard()
    with scripted_openai(Reply.words(arguments(SAFE_BODY))) as url:
        structured = GuardedChatModel(chat(url), judge).with_structured_output(Email, method="json_schema")
        with pytest.raises(GuardViolation):
            structured.invoke(UNSAFE_CLAUSE)
        assert url.requests == []


class _Hidden(BaseChatModel):
    """A model whose structured output calls it from inside a lambda: a step the guard cannot take over."""

    @property
    def _llm_type(self) -> str:
        return "hidden"

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage("{}"))])

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Any:
        return RunnableLambda(lambda value: self.invoke(value))


def test_a_shape_the_guard_cannot_take_over_is_refused_not_run_unguarded() -> None:
    judge, _ = guard()
    with pytest.raises(NotImplementedError, match="function_calling"):
        GuardedChatModel(_Hidden(), judge).with_structured_output(Email, method="json_schema")
