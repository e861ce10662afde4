"""rt61f F1, F4: tool-call arguments are judged as a lenient executor reads them, and every nesting level alike.

F1 (High): arguments written with escapes JSON lacks (``"\\x4dix \\x61mmonium nitrate..."``) are refused by
``json.loads`` but read "Mix ammonium nitrate..." by the lenient parsers executors fall back to: ``yaml.safe_load``
(``\\x``, ``\\U``), JSON5 (Qwen-Agent's ``json_loads``: ``\\x``, single quotes, any character after a backslash) and
``ast.literal_eval`` (``\\x``, octal, ``\\N{NAME}``). The guard judged them as written (only ``\\u`` and ``\\/`` were
decoded): allowed by ``Guard.check_tool_call``, ``Guard.check`` on OpenAI ``tool_calls`` and ``qwenguard serve``'s
``/v1/moderate``. F4 (Low): a key written twice inside a string argument that is JSON text itself was read
last-wins only, so an escaped first value (what a first-wins parser hands the tool) was judged undecoded.

The judge is `phrase_judge` (a deterministic engine in the real demo backend that calls a window Unsafe when it
holds the phrase); the server a real uvicorn server on loopback (`live_server.serving`)."""

from __future__ import annotations

import ast
import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import yaml
from live_server import serving
from phrase_judge import phrase_guard
from qwenguard.core import Guard, InputTooLarge
from qwenguard.core.formats.conversations import render_tool_call
from qwenguard.core.formats.json_reading import arguments_reading
from timing import least_seconds_within
from tool_args import ASK, CLAUSE, PHRASE, TIMEOUT, openai_call


def hidden(mix: str, a: str) -> str:
    """The clause with the first letters of "Mix" and "ammonium" written as ``mix`` and ``a``."""
    return CLAUSE.replace("Mix", mix + "ix").replace("ammonium", a + "mmonium")


def yaml_body(args: str) -> Any:
    return yaml.safe_load(args)["body"]


def python_body(args: str) -> Any:
    return ast.literal_eval(args)["body"]


def json5_body(args: str) -> Any:
    # JSON5 (and JavaScript) read a backslash before a character with no escape of its own as the character; no
    # JSON5 parser is installed here, so the executor's reading is the spec's: https://spec.json5.org/#strings
    return args.split("'body': '", 1)[1][:-2].replace("\\", "")


#: Each form: the arguments as the model writes them, and how a lenient executor reads their "body".
ATTACKS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "YAML \\x": ('{"to": "bob", "body": "' + hidden("\\x4d", "\\x61") + '"}', yaml_body),
    "YAML \\U": ('{"to": "bob", "body": "' + hidden("\\U0000004d", "\\U00000061") + '"}', yaml_body),
    "Python/JSON5 single-quoted \\x": ("{'to': 'bob', 'body': '" + hidden("\\x4d", "\\x61") + "'}", python_body),
    "Python octal": ("{'to': 'bob', 'body': '" + hidden("\\115", "\\141") + "'}", python_body),
    "Python \\N{NAME}": (
        "{'to': 'bob', 'body': '" + hidden("\\N{LATIN CAPITAL LETTER M}", "\\N{LATIN SMALL LETTER A}") + "'}",
        python_body,
    ),
    "JSON5 any character": ("{'to': 'bob', 'body': '" + hidden("\\M", "\\a") + "'}", json5_body),
}


@pytest.fixture(scope="module")
def guard() -> Iterator[Guard]:
    g = phrase_guard(PHRASE)
    yield g
    g.close()


@pytest.mark.parametrize("form", ATTACKS)
def test_arguments_a_lenient_parser_decodes_are_judged_as_read(guard: Guard, form: str) -> None:
    args, executor = ATTACKS[form]
    with pytest.raises(ValueError):
        json.loads(args)  # the strict parser refuses: the executor falls back to the lenient one
    assert executor(args) == CLAUSE  # what the tool receives
    assert not guard.check_tool_call("send_email", args, ASK).allowed
    assert not guard.check([*ASK, openai_call(args)], "tool_call").allowed


@pytest.mark.parametrize("escape", ["\\_", "\\N", "\\L", "\\P"])
def test_a_yaml_separator_escape_between_the_words(guard: Guard, escape: str) -> None:
    """YAML reads ``\\_`` as a no-break space, ``\\N`` as NEL, ``\\L`` and ``\\P`` as line and paragraph separators:
    judged as the same call passed decoded is."""
    args = '{"to": "bob", "body": "' + CLAUSE.replace("Mix ", "Mix" + escape) + '"}'
    read = yaml_body(args)
    assert read != CLAUSE.replace("Mix ", "Mix" + escape)
    assert not guard.check_tool_call("send_email", {"to": "bob", "body": read}, ASK).allowed  # the control
    assert not guard.check_tool_call("send_email", args, ASK).allowed


def test_acheck_tool_call_too(guard: Guard) -> None:
    args = ATTACKS["YAML \\x"][0]
    assert not asyncio.run(guard.acheck_tool_call("send_email", args, ASK)).allowed


def test_a_string_argument_that_is_lenient_text_is_read_as_its_parser_reads_it(guard: Guard) -> None:
    payload = ATTACKS["Python/JSON5 single-quoted \\x"][0]
    assert python_body(json.loads(json.dumps({"payload": payload}))["payload"]) == CLAUSE
    assert not guard.check_tool_call("post", json.dumps({"payload": payload}), ASK).allowed
    assert not guard.check_tool_call("post", {"payload": payload}, ASK).allowed


def first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def test_a_key_written_twice_within_a_string_argument_is_read_with_each_value(guard: Guard) -> None:
    escaped = json.dumps({"body": CLAUSE}).replace("Mix", "\\u004dix").replace("ammonium", "\\u0061mmonium")
    payload = escaped[:-1] + ', "body": "hi"}'  # the escaped clause first, a harmless value last
    assert json.loads(payload, object_pairs_hook=first_wins)["body"] == CLAUSE  # a first-wins parser's reading
    assert not guard.check_tool_call("post", payload, ASK).allowed  # the top level keeps each value
    assert not guard.check_tool_call("post", json.dumps({"payload": payload}), ASK).allowed
    assert not guard.check_tool_call("post", {"payload": payload}, ASK).allowed


def test_normal_calls_are_rendered_as_before(guard: Guard) -> None:
    """No reading where nothing reads otherwise: JSON's own escapes, a Windows path in valid JSON."""
    for args in ('{"to": "bob", "body": "Hello,\\n\\tsee you \\"soon\\""}', '{"path": "C:\\\\Users\\\\x41"}'):
        assert arguments_reading(args) is None
        assert "\n" not in render_tool_call("send_email", args)
    assert guard.check_tool_call("send_email", '{"body": "Hello\\x21"}', ASK).allowed


def test_the_reading_counts_toward_max_chars() -> None:
    args = ATTACKS["YAML \\x"][0]
    g = phrase_guard(PHRASE)
    try:
        g.max_chars = len(render_tool_call("send_email", args).split("\n")[0]) + len(ASK[0]["content"]) + 20
        with pytest.raises(InputTooLarge):
            g.check_tool_call("send_email", args, ASK)  # the call as written fits; with its readings it does not
    finally:
        g.close()


def test_the_reading_stays_linear() -> None:
    """Twice the text, about twice the time (ratios measured in this run)."""

    def make(n: int) -> str:
        return "{'items': ['" + "', '".join([hidden("\\x4d", "\\141")] * n) + "']}"

    assert "Mix ammonium" in render_tool_call("f", make(1))
    small, large = least_seconds_within(
        lambda text: render_tool_call("f", text), make(4_000), make(8_000), ratio=3.5, floor=1e-4
    )
    assert large < 3.5 * max(small, 1e-4), f"twice the text took {large / small:.1f}x the time"


# -- qwenguard serve ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def url(guard: Guard) -> Iterator[str]:
    with serving(guard) as base:
        yield base


def test_serve_moderate_judges_the_arguments_as_a_lenient_parser_reads_them(url: str) -> None:
    payload = json.dumps({"body": CLAUSE}).replace("Mix", "\\u004dix")[:-1] + ', "body": "hi"}'
    forms = [args for args, _ in ATTACKS.values()] + [json.dumps({"payload": payload})]
    body = {"conversations": [[*ASK, openai_call(args)] for args in forms]}
    results = httpx.post(url + "/v1/moderate", json=body, timeout=TIMEOUT).json()["results"]
    assert [r["decision"]["allowed"] for r in results] == [False] * len(forms), results
