"""rt61b F2: a tool call's arguments given as a JSON string are judged as the executor parses them.

The OpenAI API sends a tool call's arguments as a JSON string; the tool (or any executor) runs ``json.loads`` on it.
Written with ``\\u`` escapes (``"\\u004dix \\u0061mmonium nitrate..."``), the string reached the guard as written
and the tool as "Mix ammonium nitrate...": allowed by ``Guard.check_tool_call``, by ``Guard.check`` on an assistant
message with ``tool_calls``, and by ``qwenguard serve`` (``/v1/moderate``, ``/v1/chat/completions``), while the same
call passed as a dict was blocked. Every as-seen hiding can be written as escapes (``json.dumps`` writes them so by
default). Now the call is judged as written and, beside it, as read (`render_tool_call`, `arguments_reading`).

The judge is `phrase_judge`: a deterministic engine inside the real demo Gen backend that sees every window the
guard plans (as-seen readings included) and calls a window Unsafe when it holds the phrase. The server is a real
uvicorn server on loopback (`live_server.serving`), one for the module."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live_server import serving
from phrase_judge import phrase_guard, reads_from_now
from qwenguard.core import Guard, InputTooLarge
from qwenguard.core.formats.conversations import render_tool_call
from qwenguard.core.formats.json_reading import NESTED_MAX_CHARS
from timing import least_seconds_within
from tool_args import ASK, CLAUSE, PHRASE, TIMEOUT, openai_call


def escaped(text: str) -> str:
    """``text`` with its first letters of "Mix" and "ammonium" written as ``\\u`` escapes (the attack's form)."""
    return text.replace("Mix", "\\u004dix").replace("ammonium", "\\u0061mmonium")


ARGS = escaped(json.dumps({"to": "bob@example.com", "body": CLAUSE}))
# Every as-seen hiding of the clause, as json.dumps writes it by default (ensure_ascii: every such character an
# escape, a character past the BMP a surrogate pair).
HIDDEN = {
    "zero-width space inside a word": CLAUSE.replace("Mix", "M\u200bix").replace("ammonium", "amm\u200bonium"),
    "right-to-left override": "\u202e" + CLAUSE[::-1] + "\u202c",
    "tag characters": "".join(chr(0xE0000 + ord(c)) for c in CLAUSE),
    "full-width letters": CLAUSE.replace(
        "Mix ammonium", "\uff2d\uff49\uff58 \uff41\uff4d\uff4d\uff4f\uff4e\uff49\uff55\uff4d"
    ),
}


@pytest.fixture(scope="module")
def guard() -> Iterator[Guard]:
    g = phrase_guard(PHRASE)
    yield g
    g.close()


# -- the core -------------------------------------------------------------------------------------------------------


def test_check_tool_call_judges_a_json_string_as_the_tool_parses_it(guard: Guard) -> None:
    assert json.loads(ARGS)["body"] == CLAUSE  # what the tool receives
    assert not guard.check_tool_call("send_email", json.loads(ARGS), ASK).allowed  # the dict: blocked
    read = reads_from_now(guard)
    decision = guard.check_tool_call("send_email", ARGS, ASK)
    assert not decision.allowed, f"a JSON string written with \\u escapes was allowed; judged: {read}"
    assert any(CLAUSE in r for r in read) and any("\\u004dix" in r for r in read)  # as read and as written


def test_acheck_tool_call_too(guard: Guard) -> None:
    assert not asyncio.run(guard.acheck_tool_call("send_email", ARGS, ASK)).allowed


@pytest.mark.parametrize(
    "message",
    [
        openai_call(ARGS),
        {"role": "assistant", "content": None, "function_call": {"name": "send_email", "arguments": ARGS}},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "send_email", "args": ARGS, "id": "c1"}]},
    ],
    ids=["openai-tool_calls", "openai-legacy-function_call", "langchain-shape-string-args"],
)
def test_guard_check_on_an_assistant_message_with_tool_calls(guard: Guard, message: dict[str, Any]) -> None:
    assert not guard.check([*ASK, message], "tool_call").allowed
    assert not asyncio.run(guard.acheck([*ASK, message], "tool_call")).allowed


@pytest.mark.parametrize("hiding", sorted(HIDDEN))
def test_every_hiding_written_as_escapes(guard: Guard, hiding: str) -> None:
    body = HIDDEN[hiding]
    assert not guard.check_tool_call("send_email", {"body": body}, ASK).allowed  # the content readings read it
    arguments = json.dumps({"body": body})
    assert arguments.isascii() and "\\u" in arguments
    assert not guard.check_tool_call("send_email", arguments, ASK).allowed, hiding
    assert not guard.check([*ASK, openai_call(arguments)], "tool_call").allowed, hiding


def test_a_key_written_twice_is_read_with_each_value(guard: Guard) -> None:
    """json.loads keeps the last value, other parsers the first: the escaped one hides in the first."""
    arguments = escaped(json.dumps({"body": CLAUSE}))[:-1] + ', "body": "Hello"}'
    assert json.loads(arguments)["body"] == "Hello"
    assert not guard.check_tool_call("send_email", arguments, ASK).allowed


def test_a_string_argument_that_is_json_text_is_read_parsed(guard: Guard) -> None:
    """A tool whose ``payload: str`` it ``json.loads`` (as the integrations read it: `arguments_parsed`)."""
    payload = escaped(json.dumps({"body": CLAUSE}))
    assert not guard.check_tool_call("post", {"payload": payload}, ASK).allowed
    assert not guard.check_tool_call("post", json.dumps({"payload": payload}), ASK).allowed


def test_a_truncated_or_invalid_json_string_is_read_with_its_escapes_decoded(guard: Guard) -> None:
    """No JSON parser reads it; a repair (LangChain's parse_partial_json) or a lenient parser does: decoded."""
    cut = ARGS[: ARGS.index("pipe")]
    with pytest.raises(ValueError):
        json.loads(cut)
    assert not guard.check_tool_call("send_email", cut, ASK).allowed


def test_a_normal_call_is_rendered_as_before() -> None:
    """No escape a parse decodes: one line, as written (no second reading, no parse)."""
    for arguments in ('{"city": "Paris"}', '{"a":"x\\ny", "q": "say \\"hi\\""}', '{"path": "C:\\\\Users\\\\x"}', "ls"):
        assert render_tool_call("f", arguments) == f"Tool call: f({arguments})"
    assert render_tool_call("f", {"path": "C:\\Users"}) == 'Tool call: f({"path": "C:\\\\Users"})'
    assert (
        render_tool_call("f", ARGS)
        == f"Tool call: f({ARGS})\nTool call: f({json.dumps(json.loads(ARGS), ensure_ascii=False)})"
    )


def test_a_lone_surrogate_escape_reads_as_a_replacement_character(guard: Guard) -> None:
    line = render_tool_call("f", '{"b": "\\ud800 \\udb40\\udc71"}')
    assert line.endswith('({"b": "\ufffd \U000e0071"})')
    line.encode("utf-8")  # no lone surrogate reaches an encoder
    assert guard.check_tool_call("f", '{"b": "\\ud800 hello"}', ASK).allowed


def test_the_reading_counts_toward_max_chars() -> None:
    """The check judges both texts: within ``max_chars`` together, else refused (never judged as written alone)."""
    g = phrase_guard(PHRASE)
    try:
        size = len(render_tool_call("send_email", ARGS).split("\n")[0]) + len(ASK[0]["content"])
        g.max_chars = size + 20  # the call as written fits; with its reading it does not
        with pytest.raises(InputTooLarge):
            g.check_tool_call("send_email", ARGS, ASK)
        with pytest.raises(InputTooLarge):
            g.check([*ASK, openai_call(ARGS)], "tool_call")
    finally:
        g.close()
    # render_tool_call's own bound: cut just past it, for a caller that refuses.
    assert len(render_tool_call("send_email", ARGS, max_chars=size)) > size


def test_deep_nesting_and_huge_strings_stay_linear(guard: Guard) -> None:
    """No RecursionError out of a check, and work linear in the text: twice the text, about twice the time."""

    def deep(n: int) -> str:
        return "[" * n + escaped(json.dumps(CLAUSE)) + "]" * n

    assert not guard.check_tool_call("f", deep(5_000), ASK).allowed  # past the recursion limit: read decoded
    assert not guard.check_tool_call("f", '{"a":' * 900 + escaped(json.dumps(CLAUSE)) + "}" * 900, ASK).allowed

    def wide(n: int) -> str:
        return escaped(json.dumps({"items": [CLAUSE] * n}))

    def nested_json(n: int) -> str:  # a string of JSON text within a string of JSON text..., escapes innermost
        value = escaped(json.dumps([CLAUSE] * n))
        for _ in range(3):
            value = json.dumps({"payload": value})
        return value

    assert CLAUSE in render_tool_call("f", nested_json(2))
    for make in (deep, wide, nested_json):
        small, large = (make(300), make(600)) if make is nested_json else (make(20_000), make(40_000))
        took = least_seconds_within(lambda text: render_tool_call("f", text), small, large, ratio=3.5, floor=1e-4)
        assert took[1] < 3.5 * max(took[0], 1e-4), f"{make.__name__}: twice the text took {took[1] / took[0]:.1f}x"


# -- qwenguard serve ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def url(guard: Guard) -> Iterator[str]:
    with serving(guard) as base:
        yield base


def test_serve_moderate_judges_the_arguments_as_read(url: str) -> None:
    body = {"conversations": [[*ASK, openai_call(ARGS)]]}
    decision = httpx.post(url + "/v1/moderate", json=body, timeout=TIMEOUT).json()["results"][0]["decision"]
    assert not decision["allowed"], decision
    for hiding, text in HIDDEN.items():
        body = {"conversations": [[*ASK, openai_call(json.dumps({"body": text}))]]}
        decision = httpx.post(url + "/v1/moderate", json=body, timeout=TIMEOUT).json()["results"][0]["decision"]
        assert not decision["allowed"], hiding


def test_serve_chat_completions_judges_the_arguments_as_read(url: str) -> None:
    body = {"model": "demo", "messages": [*ASK, openai_call(ARGS)]}
    answer = httpx.post(url + "/v1/chat/completions", json=body, timeout=TIMEOUT).json()
    content = answer["choices"][0]["message"]["content"]
    assert content.startswith("Safety: Unsafe"), content


@pytest.mark.parametrize("route", ["http", "stream"])
def test_serve_refuses_past_the_bound_on_json_text_read_parsed(guard: Guard, route: str) -> None:
    """Strings of JSON text past NESTED_MAX_CHARS (read parsed) are refused: 413 / close 1009, not a 500 and not
    judged as written. (A server whose --max-chars is above that bound: the default is not.)"""
    from qwenguard.core.server.app import create_app
    from qwenguard.core.server.schemas import ApiError, Message
    from qwenguard.core.server.stream_protocol import CLOSE_TOO_BIG, SessionEnd, _open_args

    service = create_app(guard, max_chars=2_000_000).state.service
    # json.dumps writes each "\u00e9" as an escape (6 characters): NESTED_MAX_CHARS of them and the clause.
    payload = escaped(json.dumps({"body": CLAUSE + " " + "\u00e9" * (NESTED_MAX_CHARS // 6)}))
    turns = [*ASK, openai_call(json.dumps({"payload": payload}))]
    if route == "http":
        with pytest.raises(ApiError) as info:
            service.judged([[Message.model_validate(t) for t in turns]])
        assert info.value.status == 413
    else:
        with pytest.raises(SessionEnd) as caught:
            _open_args(service, {"type": "open", "messages": turns})
        assert caught.value.code == CLOSE_TOO_BIG
    # Under the bound the same shape is read parsed and judged.
    small = json.dumps({"payload": escaped(json.dumps({"body": CLAUSE}))})
    (turns,) = service.judged([[Message.model_validate(t) for t in [*ASK, openai_call(small)]]])
    assert CLAUSE in turns[-1]["content"]


def test_serve_stream_session_prompt_holds_the_reading(guard: Guard) -> None:
    """A stream session's ``open`` frame renders its messages' tool calls as the routes do."""
    from qwenguard.core.server.app import create_app
    from qwenguard.core.server.stream_protocol import _open_args

    service = create_app(guard).state.service
    prompt = _open_args(service, {"type": "open", "messages": [*ASK, openai_call(ARGS)]})[1]
    assert CLAUSE in json.dumps(prompt, ensure_ascii=False), prompt
