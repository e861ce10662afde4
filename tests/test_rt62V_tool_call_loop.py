"""rt62a F1 F3 F6: a tool call's arguments read on the event loop.

Rendering a tool call reads its arguments as YAML, JSON5 and Python literals would (microseconds a character for
escapes such as ``\\q``), so the async checks must not render a large one on the loop: `Guard.acheck_tool_call`
rendered it before any off-loop step (F1), `Guard.acheck` of messages with ``tool_calls`` stayed on the loop under
50,000 characters (F3), and `text_size` counted a list nested 200,000 deep as nothing (F6). Loop lag is measured
against the same check on a worker thread, in the same run (tests/loop_lag.py). The lenient readings stop when a
pass changes nothing, and their results are those of the reading that ran every pass.
"""

from __future__ import annotations

import asyncio

import pytest
from faults import ScriptedBackend
from loop_lag import compare, in_thread
from qwenguard.core import Guard, InputTooLarge
from qwenguard.core.formats import json_reading
from qwenguard.core.formats.conversations import render_tool_call
from qwenguard.core.formats.json_reading import lenient_read
from qwenguard.core.formats.prompts import text_size

P_SAFE = "Safety: Safe\nCategories: None"
R_SAFE = "Safety: Safe\nCategories: None\nRefusal: No"
ASK = [{"role": "user", "content": "Send the note."}]


def _guard(**kwargs: object) -> Guard:
    return Guard(ScriptedBackend(lambda c: R_SAFE if c[-1]["role"] == "assistant" else P_SAFE), cache_size=0, **kwargs)


def test_acheck_tool_call_renders_a_large_argument_off_the_loop() -> None:
    # F1: a 200 KB string argument of "\q" escapes, well inside max_chars, rendered by acheck_tool_call.
    guard = _guard()
    args = "{'body': '" + "\\q" * 100_000 + "'}"

    async def main() -> str | None:
        decision = await guard.acheck_tool_call("send_email", args, ASK)
        assert decision.allowed
        return await compare(
            lambda: guard.acheck_tool_call("send_email", args, ASK),
            in_thread(lambda: guard.check_tool_call("send_email", args, ASK)),
        )

    assert asyncio.run(main()) is None


def test_acheck_of_a_tool_call_under_the_text_threshold_prepares_off_the_loop() -> None:
    # F3: one 48,012-character argument of "\e", under PREPARE_ON_LOOP_CHARS, in an OpenAI assistant turn.
    guard = _guard()
    args = "{'body': '" + "\\e" * 24_000 + "'}"
    conv = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "send_note", "arguments": args}}],
        },
    ]

    async def main() -> str | None:
        assert (await guard.acheck(conv, "tool_call")).allowed
        return await compare(lambda: guard.acheck(conv, "tool_call"), in_thread(lambda: guard.check(conv, "tool_call")))

    assert asyncio.run(main()) is None


def _nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def test_deeply_nested_arguments_are_not_tiny() -> None:
    # F6: a list nested 200,000 deep renders 400,000 characters; text_size counted it as one string.
    assert text_size({"a": _nested(200_000)}, 50_000) > 50_000
    assert text_size([""] * 60_000, 50_000) > 50_000  # empty strings render too ('"", ' each)
    assert text_size({"a": "x" * 10}, 1 << 62) >= 10  # text still counts its characters


def test_acheck_of_deeply_nested_arguments_prepares_off_the_loop() -> None:
    guard = _guard()
    conv = [
        {"role": "user", "content": "Store this."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "store", "arguments": {"a": _nested(30_000)}}}
            ],
        },
    ]

    async def main() -> str | None:
        return await compare(lambda: guard.acheck(conv, "tool_call"), in_thread(lambda: guard.check(conv, "tool_call")))

    assert asyncio.run(main()) is None


def _old_lenient_read(text: str, depth: int = json_reading.NESTED_DEPTH, max_chars: int | None = None) -> str | None:
    # The stop-61 reading, every pass run: the reference the early stop must equal.
    readings: list[str] = []
    total = 0
    for reader in json_reading._LENIENT_READERS:
        read = text
        for _ in range(depth):
            read = reader(read)
            if "\\u" not in read and "\\/" not in read and not json_reading.has_lenient_escape(read):
                break
        if read != text and read not in readings:
            readings.append(read)
            total += len(read) + 1
            if max_chars is not None and total > max_chars:
                break
    return "\n".join(readings) if readings else None


LENIENT_TEXTS = [
    "{'body': '" + "\\q" * 50 + "'}",
    '{"a": "\\x4dix \\x61mmonium"}',
    '{"a": "\\\\x4dix"}',  # an escaped backslash: a second pass reads \x4d
    '{"a": "\\\\\\\\x4d \\\\u0041 \\N{LATIN SMALL LETTER A}"}',
    '{"a": "\\101\\e\\_\\q\\0 \\U0000004d"}',
    "{'a': '\\'quoted\\' \\\\q'}",
    '{"a": "plain \\z"}',
]


@pytest.mark.parametrize("text", LENIENT_TEXTS)
def test_lenient_reading_unchanged_by_the_early_stop(text: str) -> None:
    assert lenient_read(text) == _old_lenient_read(text)
    assert lenient_read(text, max_chars=10) == _old_lenient_read(text, max_chars=10)


def test_a_reader_never_reads_the_text_it_kept_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    # F1: a Python literal keeps "\q" as written: each of four passes re-read the same 400 KB.
    calls: list[tuple[int, str]] = []

    def counted(i: int, reader):  # type: ignore[no-untyped-def]
        def read(text: str) -> str:
            calls.append((i, text))
            return reader(text)

        return read

    readers = tuple(counted(i, r) for i, r in enumerate(json_reading._LENIENT_READERS))
    monkeypatch.setattr(json_reading, "_LENIENT_READERS", readers)
    text = "{'body': '" + "\\q" * 1_000 + "'}"
    assert lenient_read(text) is not None
    assert len(calls) == len(set(calls)), "a reader read the same text again"


def test_render_tool_call_past_max_chars_reads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # F2's core half: with max_chars, a call longer than it is not read as the parsers would (the caller refuses it).
    ran: list[int] = []

    def counted(reader):  # type: ignore[no-untyped-def]
        def read(text: str) -> str:
            ran.append(len(text))
            return reader(text)

        return read

    monkeypatch.setattr(json_reading, "_LENIENT_READERS", tuple(counted(r) for r in json_reading._LENIENT_READERS))
    body = "{'a': '" + "\\q" * 100_000 + "'}"
    line = render_tool_call("send_note", body, max_chars=50_000)
    assert len(line) > 50_000 and not ran
    line = render_tool_call("send_note", {"body": body}, max_chars=50_000)
    assert len(line) > 50_000 and not ran
    with pytest.raises(InputTooLarge):
        _guard(max_chars=50_000).check_tool_call("send_note", {"body": body})
    assert not ran
