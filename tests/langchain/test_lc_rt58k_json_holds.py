"""rt58g F5: a LangChain stream holds its chunks only where a JSON parser may read an escape as a value's.

The stream watch held every chunk from the first ``\\u`` after any ``"`` to the end: prose that quotes a Windows
path (``"C:\\users\\me\\notes.txt"``) reached a streaming app only once the model had finished. Now an escape counts
where LangChain's parsers may read it decoded: in a value that opens the answer (past blanks and backticks) or a
fence's text, ``{``, ``[`` or a bare JSON string, and in a string literal after a bracket. Real LangChain runnables
and parsers, the repo's scripted chat model, deterministic judges; the rule itself checked against LangChain's own
``parse_json_markdown`` over a seeded set of generated answers.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from faults import ScriptedBackend, keyword_verdict
from langchain_core.output_parsers import JsonOutputParser
from lc_fakes import UNSAFE_CLAUSE, ThreeCharModel, escaped
from qwenguard.core import Guard, GuardViolation
from qwenguard.core.formats.json_reading import EscapeWatch
from qwenguard.integrations.langchain import GuardedChatModel, guard_output
from qwenguard.integrations.langchain._json_reading import parsed_reading
from value_strings import strings_in

TAIL = " ".join(f"Step {i}: keep the units consistent and check the sign of each term." for i in range(30))
PATH_ANSWER = 'The file is "C:\\users\\me\\notes.txt", as you asked. ' + TAIL
CONTROL = "The file is in your notes folder, as you asked. " + TAIL


def _judge() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0)


def _early(path: str, how: str, answer: str) -> tuple[int, str]:
    """How many characters of ``answer`` reached the consumer before the model finished, and all it got."""
    model = ThreeCharModel(messages=iter([answer]), seen=[])
    guarded: Any = GuardedChatModel(model, _judge()) if path == "GuardedChatModel" else model | guard_output(_judge())
    early, got = 0, []

    def note(chunk: Any) -> None:
        nonlocal early
        text = str(getattr(chunk, "content", chunk))
        got.append(text)
        if not model.done:
            early += len(text)

    async def drain() -> None:
        async for chunk in guarded.astream("Where is it?"):
            note(chunk)

    if how == "stream":
        for chunk in guarded.stream("Where is it?"):
            note(chunk)
    else:
        asyncio.run(drain())
    return early, "".join(got)


@pytest.mark.parametrize("path", ["GuardedChatModel", "guard_output"])
@pytest.mark.parametrize("how", ["stream", "astream"])
def test_prose_quoting_a_windows_path_streams_as_plain_prose_does(path: str, how: str) -> None:
    early, got = _early(path, how, PATH_ANSWER)
    control_early, _ = _early(path, how, CONTROL)
    assert got == PATH_ANSWER
    # Before, 15 of 2,066 characters went out before the model finished; now as much as of the same answer without
    # the path (what the monitor's last window keeps back), measured in this run.
    assert early / len(PATH_ANSWER) >= 0.9 * control_early / len(CONTROL)
    assert control_early > len(CONTROL) // 2


# JSON a parser reads decoded, after prose: fenced, and a fence's text that is a bare string.
AFTER_PROSE = {
    "fenced_object": 'Here it is:\n```json\n{"note": "' + escaped(UNSAFE_CLAUSE) + '"}\n```',
    "fenced_string": 'Here it is:\n```\n"' + escaped(UNSAFE_CLAUSE) + '"\n```',
}


@pytest.mark.parametrize("form", list(AFTER_PROSE))
@pytest.mark.parametrize("how", ["stream", "astream"])
def test_json_a_parser_reads_after_prose_is_still_held_and_judged_decoded(form: str, how: str) -> None:
    answer = AFTER_PROSE[form]
    chain = GuardedChatModel(ThreeCharModel(messages=iter([answer]), seen=[]), _judge()) | JsonOutputParser()
    got: list[Any] = []

    async def drain() -> None:
        async for value in chain.astream("Answer in JSON."):
            got.append(value)

    assert "ammonium" in json.dumps(JsonOutputParser().parse(answer))  # the premise: the parser decodes it
    with pytest.raises(GuardViolation):
        if how == "stream":
            got.extend(chain.stream("Answer in JSON."))
        else:
            asyncio.run(drain())
    assert not any("ammonium" in str(v).lower() for v in got)


# -- the rule, against LangChain's own parse ------------------------------------------------------------------------

PIECES = ['"', '\\"', "\\u0041", "\\/", "`", "```", "```json", "{", "}", "[", "]", " ", "\n", "a", ":", ",", '"k": ']
PIECES += ["C:\\users", "\\\\", "x"]


def _shown(s: str, text: str) -> bool:
    # The raw text shows the string as it is, or as JSON writes it (LangChain's parser reads a raw line break in a
    # string as an escaped one).
    written = json.dumps(s, ensure_ascii=False)[1:-1]
    return s in text or written.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r") in text


def test_every_answer_langchain_reads_otherwise_is_held_however_it_is_chunked() -> None:
    rng = random.Random(58)
    decoded = 0
    for _ in range(6000):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
        reading = parsed_reading(text)
        if reading is None:
            continue
        if all(_shown(s, text) for line in reading.split("\n") for s in strings_in(json.loads(line))):
            continue  # the parse reads as the raw text does
        decoded += 1
        for size in (1, 2, 3, len(text)):
            watch = EscapeWatch()
            held = [watch.feed(text[i : i + size]) for i in range(0, len(text), size)]
            assert held[-1], (text, size, reading)
    assert decoded > 20  # the generated answers did exercise the rule
