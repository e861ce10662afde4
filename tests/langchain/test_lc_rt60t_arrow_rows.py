"""A tool's Arrow artifact whose one row holds any number of values, and Arrow scalars (rt60 leftover, Fixer T).

The artifact walk sliced an Arrow table or array to its room in rows before ``to_pylist()``, but one row of a list,
map or struct column (a ListArray, a ChunkedArray of lists, a nested struct) can hold any number of values, and one
string any length: a row of a million list elements, or a string of ten million characters, was converted whole on
the hook's thread, whatever the operator's ``max_chars``. And an Arrow scalar (``pa.scalar``, an array's element) was
judged as its repr: ``<pyarrow.BinaryScalar: b'\\xff\\xfeP\\x00...'>`` is not the text its bytes hold, so that a
UTF-16 page reached the agent's streams unjudged.

The bound is checked by what the walk allocates (``tracemalloc``: the Python objects a conversion makes), a row of a
million values against a row of a thousand at the same budget in one run; the text judged is checked against what
``to_pylist()`` / ``as_py()`` give. pyarrow comes with the eval extra; the reader never imports it.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import tracemalloc
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import test_lc_rt59g_tool_writes as rt59g
from faults import ScriptedBackend, keyword_verdict
from qwenguard.core import Guard, InputTooLarge
from qwenguard.core.formats.media import bytes_as_text
from qwenguard.integrations.langchain._messages import artifact_text, payload_leaf
from qwenguard.integrations.langchain._tool_errors import interrupt_text
from test_lc_rt59d_table_artifacts import guarded
from test_lc_rt59r_arrow_artifacts import FILLER, refused, rows, run

PAGE, SAFE_PAGE, WORD = rt59g.PAGE, rt59g.SAFE_PAGE, rt59g.WORD


@pytest.fixture
def kw() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0)


# -- the walk's work is bounded by its budget, whatever one row holds ----------------------------------------------


def filler(n: int) -> list[str]:
    return [FILLER] * n + [PAGE]


def list_view(values: list[str]) -> pa.Array:
    return pa.ListViewArray.from_arrays(pa.array([0], pa.int32()), pa.array([len(values)], pa.int32()), values)


#: Each takes n and holds about n values (or n characters) in one row, the unsafe page last.
ONE_ROW = {
    "list row": lambda n: pa.array([["hello"], filler(n)]),
    "large_list row": lambda n: pa.array([filler(n)], type=pa.large_list(pa.string())),
    "fixed_size_list row": lambda n: pa.array([filler(n)], type=pa.list_(pa.string(), n + 1)),
    "list_view row": lambda n: list_view(filler(n)),
    "nested list row": lambda n: pa.array([[filler(n)]]),
    "map row": lambda n: pa.array([[(f"k{i}", v) for i, v in enumerate(filler(n))]], pa.map_(pa.string(), pa.string())),
    "struct of a list": lambda n: pa.array([{"quotes": filler(n), "hits": 1}]),
    "ChunkedArray of lists": lambda n: pa.chunked_array([[["hello"]], [filler(n)]]),
    "table of a list column": lambda n: pa.table({"source": ["forum"], "quotes": [filler(n)]}),
    "large_string row": lambda n: pa.array([FILLER * (n // 16) + PAGE], type=pa.large_string()),
    "string_view row": lambda n: pa.array([FILLER * (n // 16) + PAGE], type=pa.string_view()),
    "binary row of text": lambda n: pa.array([(FILLER * (n // 16) + PAGE).encode()]),
    "dictionary of a long entry": lambda n: pa.array([FILLER * (n // 16) + PAGE] * 3).dictionary_encode(),
    "list scalar": lambda n: pa.scalar(filler(n)),
    "string scalar": lambda n: pa.scalar(FILLER * (n // 16) + PAGE),
}


def peak(artifact: Any, budget: int) -> int:
    """The most memory the walk of ``artifact`` held at once (Python objects: what converting its values makes)."""
    tracemalloc.start()
    try:
        artifact_text(artifact, budget)
    except InputTooLarge:
        pass
    finally:
        _, most = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return most


@pytest.mark.parametrize("shape", list(ONE_ROW))
def test_one_row_of_a_million_values_costs_the_walk_no_more_than_one_of_a_thousand(shape):
    # The same budget, in one run: the walk reads as far as its budget, never a row whole; past it, refused
    small, big = ONE_ROW[shape](1_000), ONE_ROW[shape](1_000_000)
    assert refused(big, 1_000)
    peak(small, 1_000)  # warm: the first walk imports and caches
    assert peak(big, 1_000) < 10 * peak(small, 1_000) + 100_000


def test_a_row_past_the_budget_is_refused_and_within_it_read_whole():
    for shape in ("list row", "map row", "large_string row", "list scalar", "dictionary of a long entry"):
        assert refused(ONE_ROW[shape](1_000_000), 100_000), shape
        assert PAGE in artifact_text(ONE_ROW[shape](100), 100_000), shape


def test_an_image_in_a_binary_column_is_left_out_not_refused_and_text_bytes_are_not():
    # Media bytes are no text to an artifact's reader (the blob rule): told by their start, whatever their length
    image = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40_000
    assert bytes_as_text(image) is None
    table = pa.table({"caption": ["a cat", PAGE], "image": pa.array([image, image])})
    assert artifact_text(table, 1_000).split("\n") == ["caption", "image", "a cat", PAGE]
    assert artifact_text(pa.scalar(image), 1_000) == ""
    assert refused(pa.array([b"caption", PAGE.encode() * 10_000]), 1_000)
    # A walk without the integrations' reader reads every byte as UTF-8: there an image is refused; the integrations
    # read an interrupt's payload as an artifact (`payload_leaf`, rt63d F1): no text, as above
    assert not interrupt_text([pa.array([image])], 1_000)[1]
    assert interrupt_text([pa.array([image])], 1_000, payload_leaf) == ("", True)


# -- the text judged is the values, never a repr -----------------------------------------------------------------------


def strings(value: Any) -> set[str]:
    """The strings in a converted Arrow value (``to_pylist`` / ``as_py``): mapping keys too, bytes as the text they
    hold."""
    found, stack = set(), [value]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend([*value, *value.values()])
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
        elif isinstance(value, bytes):
            found.add(bytes_as_text(value) or "")
        elif isinstance(value, str):
            found.add(value)
    return found - {""}


def converted(item: Any) -> Any:
    return item.as_py() if isinstance(item, pa.Scalar) else item.to_pylist()


SHAPES = {
    "list column": lambda text: pa.array([[row] for row in rows(text)]),
    "list row": lambda text: pa.array([rows(text)]),
    "sliced list": lambda text: pa.array([["before"], *[[row] for row in rows(text)], ["after"]]).slice(1, 121),
    "large_list": lambda text: pa.array([rows(text)], type=pa.large_list(pa.string())),
    "fixed_size_list": lambda text: pa.array([[row, "x"] for row in rows(text)], type=pa.list_(pa.string(), 2)),
    "list_view": lambda text: list_view(rows(text)),
    "nested list": lambda text: pa.array([[[row]] for row in rows(text)]),
    "map": lambda text: pa.array([[("source", row)] for row in rows(text)], type=pa.map_(pa.string(), pa.string())),
    "struct of lists": lambda text: pa.array([{"quotes": [row], "hits": 1} for row in rows(text)]),
    "ChunkedArray of lists": lambda text: pa.chunked_array([[[row] for row in rows(text)[:70]], [rows(text)[70:]]]),
    "Table of lists": lambda text: pa.table({"quotes": [[row] for row in rows(text)]}),
    "list of dictionary": lambda text: pa.array(
        [[row] for row in rows(text)], pa.list_(pa.dictionary(pa.int8(), pa.string()))
    ),
    "run-end encoded": lambda text: pc.run_end_encode(pa.array(rows(text))),
    "union": lambda text: pa.UnionArray.from_sparse(
        pa.array([0] * 121, pa.int8()), [pa.array(rows(text)), pa.array(range(121))]
    ),
    "json extension": lambda text: pa.array(rows(text), type=pa.json_()),
    "string_view": lambda text: pa.array(rows(text), type=pa.string_view()),
    "binary": lambda text: pa.array([row.encode() for row in rows(text)]),
    "string scalar": lambda text: pa.scalar(text),
    "array element": lambda text: pa.array(rows(text))[60],
    "bytes scalar": lambda text: pa.scalar(text.encode()),
    "UTF-16 bytes scalar": lambda text: pa.scalar(text.encode("utf-16")),
    "list scalar": lambda text: pa.scalar(rows(text)),
    "struct scalar": lambda text: pa.scalar({"quote": text, "hits": 3}),
    "map scalar": lambda text: pa.scalar([("quote", text)], type=pa.map_(pa.string(), pa.string())),
    "dictionary scalar": lambda text: pa.array(rows(text)).dictionary_encode()[60],
    "nested list element": lambda text: pa.array([[[row]] for row in rows(text)])[60],
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_text_judged_is_what_the_values_convert_to(shape):
    item = SHAPES[shape](PAGE)
    assert set(artifact_text(item, 100_000).split("\n")) - {""} == strings(converted(item))


@pytest.mark.parametrize("mode", rt59g.MODES)
@pytest.mark.parametrize(("piece", "exit_behavior"), rt59g.PIECES)
@pytest.mark.parametrize("shape", ["UTF-16 bytes scalar", "list scalar"])
def test_an_unsafe_arrow_scalar_never_reaches_the_streams(kw, mode, piece, exit_behavior, shape):
    # Its repr escapes a UTF-16 page's every other byte ("a\\x00m\\x00..."): the keyword is in no text the judge saw
    agent, config = guarded(kw, SHAPES[shape](PAGE), piece, mode, exit_behavior or "end")
    seen, error = run(agent, config, mode)
    assert rt59g.stopped_or_withheld(piece, exit_behavior, seen, error)


@pytest.mark.parametrize("mode", rt59g.MODES)
def test_a_safe_nested_arrow_artifact_passes_whole(kw, mode):
    agent, config = guarded(kw, SHAPES["struct of lists"](SAFE_PAGE), "middleware", mode, "end")
    seen, error = run(agent, config, mode)
    assert error is None
    assert not any(rt59g.NOTICE in item for item in seen)
    assert any(SAFE_PAGE in item for item in seen)
