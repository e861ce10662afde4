"""A structured answer is judged as the application reads it (rt57b F3).

The attack: the model writes its JSON answer's string values as ``\\uXXXX`` escapes (valid JSON). The guard judged the
escaped text; the parser (``with_structured_output(method="json_mode" | "json_schema")``, ``JsonOutputParser``,
``create_agent``'s ``ProviderStrategy``) hands the application the decoded words. A keyword judge flags "ammonium".
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain.agents.structured_output import ProviderStrategy
from langchain_core.output_parsers import JsonOutputParser, StrOutputParser
from langchain_openai import ChatOpenAI
from lc_fakes import UNSAFE_CLAUSE, ThreeCharModel, escaped, scripted
from pydantic import BaseModel
from qwenguard.core import Guard, GuardViolation
from qwenguard.integrations.langchain import GuardedChatModel, GuardMiddleware, guard_output
from scripted_openai import Reply, scripted_openai

WORD = "ammonium"
QUESTION = "Answer in JSON."
SAFE = "Paris is the capital of France."


class Answer(BaseModel):
    answer: str


def answer_json(text: str) -> str:
    body = '{"answer": "' + escaped(text) + '"}'
    assert json.loads(body) == {"answer": text}
    return body


def shown(got: list[Any]) -> str:
    """What the application received, lower-cased: decoded or as escapes."""
    return repr(got).replace("\\\\", "\\").lower()


def clean(got: list[Any]) -> bool:
    """Nothing of the unsafe clause reached the application: neither its words nor their escapes."""
    return WORD not in shown(got) and escaped(WORD) not in shown(got)


def guard() -> tuple[Guard, ScriptedBackend]:
    backend = ScriptedBackend(keyword_verdict, name="kw")
    return Guard(backend, cache_size=0), backend


def drained(runnable: Any, how: str, got: list[Any], question: Any = QUESTION, **streamed: Any) -> Any:
    """Run ``runnable`` the way ``how`` says, appending every value the application receives to ``got``
    (``streamed``: the stream's options)."""
    if how == "invoke":
        got.append(runnable.invoke(question))
    elif how == "ainvoke":
        got.append(asyncio.run(runnable.ainvoke(question)))
    elif how == "stream":
        for value in runnable.stream(question, **streamed):
            got.append(value)
    else:

        async def drain() -> None:
            async for value in runnable.astream(question, **streamed):
                got.append(value)

        asyncio.run(drain())
    return got[-1] if got else None


HOWS = ["invoke", "ainvoke", "stream", "astream"]
TEXT_METHODS = ["json_schema", "json_mode"]


def chat(url: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=url, api_key="x", model="scripted", max_retries=0)


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("method", TEXT_METHODS)
def test_an_answer_written_in_escapes_is_judged_as_parsed(method: str, how: str) -> None:
    judge, _ = guard()
    got: list[Any] = []
    with scripted_openai(Reply.words(answer_json(UNSAFE_CLAUSE))) as url:
        structured = GuardedChatModel(chat(url), judge).with_structured_output(Answer, method=method)
        with pytest.raises(GuardViolation):
            drained(structured, how, got)
    assert clean(got)


@pytest.mark.parametrize("how", HOWS)
def test_include_raw_answer_in_escapes_is_judged_as_parsed(how: str) -> None:
    judge, _ = guard()
    got: list[Any] = []
    with scripted_openai(Reply.words(answer_json(UNSAFE_CLAUSE))) as url:
        model = GuardedChatModel(chat(url), judge)
        structured = model.with_structured_output(Answer, method="json_mode", include_raw=True)
        with pytest.raises(GuardViolation):
            drained(structured, how, got)
    assert clean(got)


@pytest.mark.parametrize("how", HOWS)
def test_a_json_parser_after_the_model_gets_no_unjudged_words(how: str) -> None:
    # The plain chain: the model's answer parsed by the application's own parser, escapes split over chunks.
    judge, _ = guard()
    got: list[Any] = []
    opening = '{"note": "' + SAFE + " " * 40 + '", "answer": "'  # streamed (and judged) before any escape
    model = ThreeCharModel(messages=iter([opening + escaped(UNSAFE_CLAUSE) + '"}']), seen=[])
    chain = GuardedChatModel(model, judge) | JsonOutputParser()
    with pytest.raises(GuardViolation):
        drained(chain, how, got)
    assert clean(got)


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("strings", [False, True])
def test_a_parser_after_guard_output_gets_no_unjudged_words(how: str, strings: bool) -> None:
    # guard_output between the model (its messages, or its text after StrOutputParser) and the app's JSON parser.
    judge, _ = guard()
    got: list[Any] = []
    model = ThreeCharModel(messages=iter(['{"answer": "' + escaped(UNSAFE_CLAUSE) + '"}']), seen=[])
    chain = (model | StrOutputParser() if strings else model) | guard_output(judge) | JsonOutputParser()
    with pytest.raises(GuardViolation):
        drained(chain, how, got)
    assert clean(got)


@pytest.mark.parametrize("how", HOWS)
def test_a_safe_answer_in_escapes_still_goes_through(how: str) -> None:
    judge, _ = guard()
    got: list[Any] = []
    with scripted_openai(Reply.words(answer_json(SAFE))) as url:
        structured = GuardedChatModel(chat(url), judge).with_structured_output(Answer, method="json_mode")
        last = drained(structured, how, got)
    assert (last.answer if isinstance(last, Answer) else last["answer"]) == SAFE


def test_an_answer_without_rewritten_escapes_is_judged_once() -> None:
    # "\n" and '\\"' are how json.dumps writes the parse again: the raw text reads as the parsed one, no second check.
    judge, backend = guard()
    text = json.dumps({"answer": 'Paris,\n"the capital"\tof France.'})
    with scripted_openai(Reply.words(text)) as url:
        structured = GuardedChatModel(chat(url), judge).with_structured_output(Answer, method="json_mode")
        assert structured.invoke(QUESTION) == Answer(answer='Paris,\n"the capital"\tof France.')
    answers = [c for batch in backend.calls for c in batch if c[-1]["role"] == "assistant"]
    assert len(answers) == 1 and answers[0][-1]["content"] == text


@pytest.mark.parametrize("how", ["invoke", "ainvoke", "stream"])
def test_provider_strategy_with_a_guarded_model(how: str) -> None:
    # create_agent(response_format=ProviderStrategy): LangChain json.loads the answer into structured_response.
    judge, _ = guard()
    agent = create_agent(
        GuardedChatModel(scripted(answer_json(UNSAFE_CLAUSE)), judge), [], response_format=ProviderStrategy(Answer)
    )
    got: list[Any] = []
    with pytest.raises(GuardViolation):
        drained(agent, how, got, {"messages": [{"role": "user", "content": QUESTION}]})
    assert clean(got)


# GuardMiddleware judges the answer in middleware.py and streams it through _held_model.py, guard_output in
# runnables.py, none of which this fix could edit: the lead applies the small patches of the rt57s report (the calls
# of `reading_items` and `ReadingHeldStream` there), then drops these marks (strict: the tests fail once they pass).
@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("mode", ["updates", "messages"])
def test_provider_strategy_with_the_middleware(how: str, mode: str) -> None:
    # The finding as reported: GuardMiddleware, ProviderStrategy; the app reads result["structured_response"].
    judge, _ = guard()
    agent = create_agent(
        scripted(answer_json(UNSAFE_CLAUSE)),
        [],
        response_format=ProviderStrategy(Answer),
        middleware=[GuardMiddleware(judge)],
    )
    request = {"messages": [{"role": "user", "content": QUESTION}]}
    got: list[Any] = []
    drained(agent, how, got, request, **({"stream_mode": ["values", mode]} if how.endswith("stream") else {}))
    assert clean(got)  # the default exit_behavior ends with a notice, nothing of the answer


def test_the_escapes_that_read_otherwise() -> None:
    from qwenguard.core.formats.json_reading import EscapeWatch, has_rewritten_escape
    from qwenguard.integrations.langchain._json_reading import parsed_reading

    assert has_rewritten_escape(r"\u0061") and has_rewritten_escape(r"a\/b") and has_rewritten_escape(r"\\\u0061")
    assert not has_rewritten_escape(r"\\u0061") and not has_rewritten_escape(r'"a\nb\t\"c\\"')
    assert parsed_reading(r'{"a": "\u0061mmonium"}') == '{"a": "ammonium"}'
    assert parsed_reading('```json\n{"a": "\\u0061"}\n```') == '{"a": "a"}'  # fenced, as JsonOutputParser reads it
    assert parsed_reading(r'{"a": "\u0061mmon') == '{"a": "ammon"}'  # partial, as a streamed parse reads it
    assert parsed_reading(r"See C:\users\me for the file.") is None  # prose: no parser hands it over decoded
    assert parsed_reading('{"a": "plain"}') is None
    assert parsed_reading("[" * 100_000 + r'"\u0061"' + "]" * 100_000) is None  # too deep for any parser
    # A stream: the escape split over chunks counts; one before any "{" or "[" (prose) does not.
    split = EscapeWatch()
    assert [split.feed(piece) for piece in ('{"a": "x\\', "\\", "\\u00", "61")] == [False, False, True, True]
    prose = EscapeWatch()
    assert not prose.feed(r"C:\users is the folder") and not prose.feed(" and then") and prose.feed(r'{"\u0061"')
