"""A tool's artifact that is an Arrow table or array, read by every value a consumer shows (red team rt59e F3).

A ``response_format="content_and_artifact"`` tool returning ``pa.table({"text": rows})`` (a query engine's raw
results) was judged as its repr, which shows the first and last few values only: the unsafe row at position 60 of
121 reached the agent's streams unjudged, as did a RecordBatch's, an Array's and a ChunkedArray's. Each test is the
attack on a real `create_agent` agent (the harness of test_lc_rt59d_table_artifacts.py), guarded by `GuardMiddleware`
or `GuardCallbackHandler`, sync and async; the streamed artifacts are read whole, as an application reads them
(``to_pylist``), not by their repr. pyarrow comes with the eval extra; the reader never imports it.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import asyncio
from typing import Any

import pyarrow as pa
import pytest
import test_lc_rt59g_tool_writes as rt59g
from faults import ScriptedBackend, keyword_verdict
from langchain_core.messages import BaseMessage
from qwenguard.core import Guard, GuardViolation, InputTooLarge
from qwenguard.integrations.langchain._messages import artifact_text
from qwenguard.integrations.langchain._tool_errors import interrupt_text
from test_lc_rt59d_table_artifacts import guarded

PAGE, SAFE_PAGE, WORD = rt59g.PAGE, rt59g.SAFE_PAGE, rt59g.WORD
FILLER = "forum says hello"


def rows(text: str) -> list[str]:
    # Past what the repr shows of either end (and of a dictionary's: each value its own)
    return [f"{FILLER} {i}" for i in range(60)] + [text] + [f"{FILLER} {i}" for i in range(61, 121)]


SHAPES = {
    "Table": lambda text: pa.table({"source": ["forum"] * 121, "text": rows(text)}),
    "Table column name": lambda text: pa.table({text: list(range(121))}),
    "RecordBatch": lambda text: pa.record_batch({"hits": list(range(121)), "text": rows(text)}),
    "Array": lambda text: pa.array(rows(text)),
    "large_string Array": lambda text: pa.array(rows(text), type=pa.large_string()),
    "dictionary Array": lambda text: pa.array(rows(text)).dictionary_encode(),
    "struct Array": lambda text: pa.array([{"quote": row} for row in rows(text)]),
    "ChunkedArray": lambda text: pa.chunked_array([rows(text)[:30], rows(text)[30:91], rows(text)[91:]]),
}


@pytest.fixture
def kw() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0)


def refused(artifact: Any, budget: int) -> bool:
    """Whether the guard refuses ``artifact`` at ``budget`` (`artifact_text`: it raises, or returns a text past the
    budget, which ``max_chars`` refuses)."""
    try:
        return len(artifact_text(artifact, budget)) > budget
    except InputTooLarge:
        return True


def shown(item: Any) -> str:
    """A stream item as an application shows it: artifacts read whole (``to_pylist``), not by their repr."""
    texts, stack = [], [item]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, BaseMessage):
            texts.append(repr(item))
            stack.append(getattr(item, "artifact", None))
        elif callable(getattr(item, "to_pylist", None)):
            texts.append(str(item.to_pylist()))
        else:
            texts.append(repr(item))
    return "\n".join(texts)


def run(agent: Any, config: Any, mode: str) -> tuple[list[str], Exception | None]:
    """Every item of every stream mode, as shown, and the guard's stop the run ended with (rt59g.run, read whole)."""
    seen: list[str] = []

    async def drain() -> None:
        async for item in agent.astream(rt59g.INPUTS, config, stream_mode=rt59g.STREAM_MODES):
            seen.append(shown(item))

    try:
        if mode == "sync":
            seen.extend(shown(item) for item in agent.stream(rt59g.INPUTS, config, stream_mode=rt59g.STREAM_MODES))
        else:
            asyncio.run(drain())
    except GuardViolation as error:
        return seen, error
    return seen, None


@pytest.mark.parametrize("mode", rt59g.MODES)
@pytest.mark.parametrize(("piece", "exit_behavior"), rt59g.PIECES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_an_unsafe_arrow_artifact_never_reaches_the_streams(kw, mode, piece, exit_behavior, shape):
    agent, config = guarded(kw, SHAPES[shape](PAGE), piece, mode, exit_behavior or "end")
    seen, error = run(agent, config, mode)
    assert [item[:120] for item in seen if WORD in item.lower()] == []
    assert rt59g.stopped_or_withheld(piece, exit_behavior, seen, error)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_an_arrow_artifact_is_read_by_every_value(shape):
    assert PAGE in artifact_text(SHAPES[shape](PAGE), 100_000)


@pytest.mark.parametrize("mode", rt59g.MODES)
def test_a_safe_arrow_artifact_passes_whole(kw, mode):
    table = SHAPES["Table"](SAFE_PAGE)
    agent, config = guarded(kw, table, "middleware", mode, "end")
    seen, error = run(agent, config, mode)
    assert error is None
    assert not any(rt59g.NOTICE in item for item in seen)
    assert any(SAFE_PAGE in item for item in seen)  # the artifact reached the streams as the tool wrote it


def test_a_long_arrow_table_is_refused_never_judged_as_its_start_and_numbers_cost_no_budget():
    # Sliced before it is converted: a million rows at a small budget are refused (not read whole), the unsafe
    # row last; a million numbers, or dates, carry no text and are read as nothing at any budget.
    many = 1_000_000
    long = pa.table({"text": pa.array([FILLER] * many + [PAGE]), "hits": pa.array(range(many + 1))})
    assert refused(long, 100)
    assert PAGE in artifact_text(long.slice(many - 3), 1000)
    numbers = pa.table({"hits": pa.array(range(many)), "ok": pa.array([True] * many)})
    assert artifact_text(numbers, 10).split("\n") == ["hits", "ok"]
    assert artifact_text(pa.array(range(many)), 10) == ""
    assert artifact_text(pa.array(range(many)).cast(pa.timestamp("ms")), 10) == ""


class SlicedRows:
    """An Arrow array as the reader knows one (no pyarrow): a type, ``slice`` and ``to_pylist``; counts the values
    converted."""

    type = "string"

    def __init__(self, values: list[Any]) -> None:
        self.values, self.converted = values, 0

    def __len__(self) -> int:
        return len(self.values)

    def slice(self, offset: int = 0, length: int | None = None) -> "SlicedRows":
        part = SlicedRows(self.values[offset : None if length is None else offset + length])
        part.converted = -1  # a view: converting it counts on the original
        part.whole = self  # type: ignore[attr-defined]
        return part

    def to_pylist(self) -> list[Any]:
        owner = getattr(self, "whole", self)
        owner.converted += len(self.values)
        return list(self.values)


def test_a_duck_typed_arrow_array_is_converted_only_as_far_as_the_budget():
    for size in (10_000, 100_000):
        values = SlicedRows([FILLER] * size + [PAGE])
        assert refused(values, 100)
        assert (
            0 < values.converted <= 4 * 101 + 1
        )  # read through to_pylist, bounded by the walk's bound (`_VISITS` items a character), not the array's


def results(values: list[str], sized: bool = True) -> Any:
    """Query results as a C type keeps them (no instance dict, no slots: no fields to read), shown through
    ``to_list``; its repr elides the middle."""

    class Results:
        __slots__ = ()

        def __repr__(self) -> str:
            return f"Results([{values[0]!r}, ..., {values[-1]!r}])"

        def to_list(self) -> list[str]:
            return list(values)

    if sized:
        Results.__len__ = lambda self: len(values)  # type: ignore[attr-defined]
    return Results()


def test_an_object_with_a_bulk_data_api_is_never_read_by_its_repr():
    # Read by what it hands over whole, where its length bounds that; refused past the budget or without a length.
    assert PAGE in artifact_text(results(rows(PAGE)), 100_000)
    assert refused(results([FILLER] * 10_000 + [PAGE]), 100)
    with pytest.raises(InputTooLarge):
        artifact_text(results(rows(PAGE), sized=False), 100_000)


@pytest.mark.parametrize("mode", rt59g.MODES)
@pytest.mark.parametrize(("piece", "exit_behavior"), rt59g.PIECES)
def test_an_unsafe_row_of_results_read_through_to_list_never_reaches_the_streams(kw, mode, piece, exit_behavior):
    agent, config = guarded(kw, results(rows(PAGE)), piece, mode, exit_behavior or "end")
    seen, error = run(agent, config, mode)
    assert rt59g.stopped_or_withheld(piece, exit_behavior, seen, error)


def test_a_memoryview_in_an_interrupt_is_read_as_the_bytes_it_shows():
    # It has a bulk-data API (``tolist``) and no fields: read as bytes are, never as "<memory at 0x...>".
    text, whole = interrupt_text([{"page": memoryview(PAGE.encode())}], 10_000)
    assert PAGE in text and whole
