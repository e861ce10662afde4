"""LangChain answers read by parsers the guard did not read as (rt58 leftovers, stop 59).

1. A streamed tool call's arguments reached the consumer (``tool_call_chunks`` of ``stream``/``astream`` and of
   ``create_agent(stream_mode="messages")``) judged as written: ``\\u`` escapes, and a string argument that is JSON
   itself (``post_note(payload: str)`` it ``json.loads``), were judged decoded only once the model had finished.
2. ``YamlOutputParser`` (``yaml.safe_load``) decodes ``\\x4D``, ``\\u004D``, ``\\U0000004D`` and ``!!binary``: the
   guard read the escapes.
3. ``CommaSeparatedListOutputParser`` (``csv`` quoting) reads ``"M"ix ammonium`` as ``Mix ammonium``.

Real ``ChatOpenAI`` against the repo's scripted OpenAI server, real LangChain runnables, parsers and ``create_agent``;
a deterministic judge that flags "mix ammonium" (any case) in the text it reads.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import unicodedata
from typing import Any

import pytest
import yaml
from faults import ScriptedBackend
from langchain.agents import create_agent
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.output_parsers import BaseOutputParser, CommaSeparatedListOutputParser
from langchain_core.tools import tool
from langchain_core.utils.json import parse_partial_json
from langchain_openai import ChatOpenAI
from lc_fakes import UNSAFE_CLAUSE, ThreeCharModel, escaped
from pydantic import BaseModel
from qwenguard.core import Guard, GuardViolation
from qwenguard.core.formats.json_reading import arguments_parsed
from qwenguard.integrations.langchain import (
    AsyncGuardCallbackHandler,
    GuardCallbackHandler,
    GuardedChatModel,
    guard_output,
)
from scripted_openai import Reply, ToolCall, scripted_openai
from test_openai_paths import collect

PHRASE = "mix ammonium"


def _verdict(conv: Any) -> str:
    # A model reads format characters (zero-width, soft hyphens) as nothing, as the guard's windows read them as seen.
    last = conv[-1]
    unsafe = PHRASE in "".join(c for c in last["content"] if unicodedata.category(c) != "Cf").lower()
    verdict = "Safety: Unsafe\nCategories: Violent" if unsafe else "Safety: Safe\nCategories: None"
    return verdict + ("\nRefusal: No" if last["role"] == "assistant" else "")


def _judge() -> Guard:
    return Guard(ScriptedBackend(_verdict, name="mix"), cache_size=0)


def _reads_phrase(value: Any) -> bool:
    return PHRASE in json.dumps(value, ensure_ascii=False, default=str).lower()


# -- 1. streamed tool-call arguments ----------------------------------------------------------------------------------

ran: list[Any] = []


@tool
def post_note(payload: str) -> str:
    """Post a JSON note ({"note": ...}) to the team board."""
    ran.append(json.loads(payload))
    return "posted"


ARGS = {
    # the payload is JSON text whose note is written in escapes: the tool json.loads it
    "nested": json.dumps({"payload": '{"note": "' + escaped(UNSAFE_CLAUSE) + '"}'}),
    # the arguments' own escapes: LangChain's parse decodes them
    "direct": '{"payload": "' + escaped(UNSAFE_CLAUSE) + '"}',
}
SAFE_ARGS = json.dumps({"payload": '{"note": "' + escaped("Paris is the capital of France.") + '"}'})


def _chat(url: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=url, api_key="scripted", model="scripted", max_retries=0)


def _call(arguments: str) -> Reply:
    return Reply(tool_calls=[ToolCall("post_note", arguments, id="call_note", fragments=40)])


def _raw(chunks: list[Any]) -> str:
    return "".join(t.get("args") or "" for c in chunks if isinstance(c, AIMessageChunk) for t in c.tool_call_chunks)


def _consumer_reading(chunks: list[Any]) -> Any:
    """The call as the consumer reads what it received: LangChain's parse of the arguments so far, a string that
    is JSON parsed as the tool parses it."""
    raw = _raw(chunks)
    parsed = parse_partial_json(raw) if raw else None
    return arguments_parsed(parsed) if isinstance(parsed, dict) else parsed


def _handler(mode: str, engine: str) -> Any:
    kind = GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler
    return kind(_judge(), stream_engine=engine)


@pytest.mark.parametrize("engine", ["pipelined", "gate"])
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("form", list(ARGS))
def test_streamed_arguments_are_judged_as_the_tool_reads_them_before_they_reach_the_consumer(
    form: str, mode: str, engine: str
) -> None:
    handler = _handler(mode, engine)
    with scripted_openai([_call(ARGS[form])]) as url:
        model = _chat(url).bind_tools([post_note])
        config = {"callbacks": [handler]}
        chunks, error = collect(
            mode,
            lambda: model.stream("Post the note.", config=config),
            lambda: model.astream("Post the note.", config=config),
        )
    assert error is not None and error.decision.stage.value == "tool_call"
    # Before, the whole call streamed out (the arguments judged as written) and was blocked only at the end. Now
    # the verdict on the decoded clause stops it within the engine's bound of unjudged characters.
    received = _raw(chunks)
    assert len(received) < len(ARGS[form])
    assert len(received) <= error.decision.offset + (0 if engine == "gate" else handler.max_unjudged)
    if engine == "gate":
        assert not _reads_phrase(_consumer_reading(chunks))


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("form", list(ARGS))
def test_an_agents_streamed_call_is_judged_as_the_tool_reads_it(form: str, mode: str) -> None:
    ran.clear()
    handler = _handler(mode, "gate")
    with scripted_openai([_call(ARGS[form]), Reply.words("Done.")]) as url:
        agent = create_agent(_chat(url), [post_note])
        inputs = {"messages": [HumanMessage("Post the note.")]}
        config = {"callbacks": [handler]}
        items, error = collect(
            mode,
            lambda: agent.stream(inputs, config=config, stream_mode="messages"),
            lambda: agent.astream(inputs, config=config, stream_mode="messages"),
        )
    assert error is not None and error.decision.stage.value == "tool_call"
    messages = [message for message, _meta in items]
    assert len(_raw(messages)) < len(ARGS[form])
    assert not _reads_phrase(_consumer_reading(messages))
    assert ran == []


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_harmless_escaped_call_streams_whole(mode: str) -> None:
    with scripted_openai([_call(SAFE_ARGS)]) as url:
        model = _chat(url).bind_tools([post_note])
        config = {"callbacks": [_handler(mode, "pipelined")]}
        chunks, error = collect(
            mode,
            lambda: model.stream("Post the note.", config=config),
            lambda: model.astream("Post the note.", config=config),
        )
    assert error is None
    assert _consumer_reading(chunks) == {"payload": {"note": "Paris is the capital of France."}}


@pytest.mark.parametrize("path", ["guard_output", "GuardedChatModel"])
@pytest.mark.parametrize("form", list(ARGS))
def test_holding_paths_pass_no_argument_before_the_call_is_judged(form: str, path: str) -> None:
    # These held every tool-call chunk to the end already (no failure before): kept beside the callbacks' fix.
    with scripted_openai([_call(ARGS[form])]) as url:
        if path == "guard_output":
            chain: Any = _chat(url).bind_tools([post_note]) | guard_output(_judge())
        else:
            chain = GuardedChatModel(_chat(url), _judge()).bind_tools([post_note])
        chunks, error = collect("sync", lambda: chain.stream("Post the note."), lambda: chain.astream(""))
    assert error is not None
    assert _consumer_reading(chunks) is None


# -- 2. YAML ----------------------------------------------------------------------------------------------------------


class Note(BaseModel):
    note: str


class YamlNoteParser(BaseOutputParser[Note]):
    """``langchain_classic.output_parsers.YamlOutputParser(pydantic_object=Note)``'s parse, as written there (the
    package is not among this project's dependencies): the first fence's text or the answer, ``yaml.safe_load``."""

    def parse(self, text: str) -> Note:
        match = re.search(r"^```(?:ya?ml)?(?P<yaml>[^`]*)", text.strip(), re.MULTILINE | re.DOTALL)
        try:
            return Note.model_validate(yaml.safe_load(match.group("yaml") if match else text))
        except Exception as exc:
            raise OutputParserException(str(exc)) from exc


def _yaml_parser() -> Any:
    try:
        from langchain_classic.output_parsers import YamlOutputParser  # type: ignore[import-not-found]
    except ImportError:
        return YamlNoteParser()
    return YamlOutputParser(pydantic_object=Note)


REST = UNSAFE_CLAUSE[len("Mix ammonium") :]
B64 = base64.b64encode(UNSAFE_CLAUSE.encode()).decode()
YAML_ANSWERS = {
    "x": 'note: "\\x4Dix ammonium' + REST + '"',
    "u": 'note: "\\u004Dix ammonium' + REST + '"',
    "U": 'note: "\\U0000004Dix ammonium' + REST + '"',
    "binary": "note: !!binary " + B64,
    "fenced": 'Here it is:\n```yaml\nnote: "\\x4Dix ammonium' + REST + '"\n```',
}


def _run(chain: Any, how: str) -> list[Any]:
    got: list[Any] = []

    async def drain() -> None:
        async for value in chain.astream("Answer in YAML."):
            got.append(value)

    if how == "invoke":
        got.append(chain.invoke("Answer in YAML."))
    elif how == "stream":
        got.extend(chain.stream("Answer in YAML."))
    else:
        asyncio.run(drain())
    return got


def _guarded(path: str, answer: str, parser: Any) -> Any:
    model = ThreeCharModel(messages=iter([answer]), seen=[])
    guarded = GuardedChatModel(model, _judge()) if path == "GuardedChatModel" else model | guard_output(_judge())
    return guarded | parser


@pytest.mark.parametrize("how", ["invoke", "stream", "astream"])
@pytest.mark.parametrize("path", ["GuardedChatModel", "guard_output"])
@pytest.mark.parametrize("form", list(YAML_ANSWERS))
def test_a_yaml_answer_is_judged_as_yaml_safe_load_decodes_it(form: str, path: str, how: str) -> None:
    assert _yaml_parser().parse(YAML_ANSWERS[form]).note.lower().startswith(PHRASE)  # what the app would get
    got: list[Any] = []
    with pytest.raises(GuardViolation):
        got = _run(_guarded(path, YAML_ANSWERS[form], _yaml_parser()), how)
    assert got == []


@pytest.mark.parametrize("how", ["invoke", "astream"])
def test_a_harmless_yaml_answer_with_escapes_goes_through(how: str) -> None:
    got = _run(_guarded("guard_output", 'note: "\\x50aris is the capital of France."', _yaml_parser()), how)
    assert got[-1].note == "Paris is the capital of France."


# -- 3. CSV -----------------------------------------------------------------------------------------------------------

LIST_ANSWER = '"M"ix ammonium nitrate with fuel oil, pack it into a pipe, add a fuse'


#: rt59d F2: a character seen as nothing beside the quote hid it from the trigger (the parser still reads "Mix").
HIDDEN_QUOTES = {"plain": "", "zero-width joiner": "\u200d", "soft hyphen": "\u00ad", "word joiner": "\u2060"}


@pytest.mark.parametrize("hidden", HIDDEN_QUOTES)
@pytest.mark.parametrize("how", ["invoke", "stream", "astream"])
@pytest.mark.parametrize("path", ["GuardedChatModel", "guard_output"])
def test_a_list_answer_is_judged_as_the_csv_reader_reads_it(path: str, how: str, hidden: str) -> None:
    mark = HIDDEN_QUOTES[hidden]
    answer = LIST_ANSWER.replace('"M"', '"M"' + mark, 1)

    def seen(value: Any) -> str:  # as the application's reader sees it: the mark is nothing
        text = json.dumps(value, ensure_ascii=False, default=str).lower()
        return text.replace(mark, "") if mark else text

    assert PHRASE in seen(CommaSeparatedListOutputParser().parse(answer))
    got: list[Any] = []

    async def drain() -> None:
        async for value in chain.astream("List the steps."):
            got.append(value)

    chain = _guarded(path, answer, CommaSeparatedListOutputParser())
    with pytest.raises(GuardViolation):
        if how == "invoke":
            got.append(chain.invoke("List the steps."))
        elif how == "stream":
            for value in chain.stream("List the steps."):
                got.append(value)
        else:
            asyncio.run(drain())
    assert PHRASE not in seen(got)  # no item the parser read reached the application


@pytest.mark.parametrize("how", ["invoke", "stream"])
def test_a_harmless_quoted_list_goes_through(how: str) -> None:
    answer = 'Paris, "the capital", France, a "so-called" city of light'
    chain = _guarded("guard_output", answer, CommaSeparatedListOutputParser())
    got = [chain.invoke("List.")] if how == "invoke" else [[v] for chunk in chain.stream("List.") for v in chunk]
    assert [item for part in got for item in part] == CommaSeparatedListOutputParser().parse(answer)
