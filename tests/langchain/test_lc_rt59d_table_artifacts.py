"""A tool's artifact that is a table or an array, read by the values a consumer shows (red team rt59d F4).

A ``response_format="content_and_artifact"`` tool returning ``pd.DataFrame({"source": ["forum"], "text": [PAGE]})``
(a SQL or search tool's raw results) was judged as "source\\ntext": the artifact walk iterated the DataFrame, which
yields its column labels only, and the cell text reached the agent's streams unjudged. A Series, an Index and a numpy
array of strings or objects were read no better (row labels, a record's fields). And a numeric matrix (no text at all)
cost every number a visit, so that a 500x500 one was refused as too large at small budgets.

Each test is the attack on a real `create_agent` agent (the harness of test_lc_rt59g_tool_writes.py), guarded by
`GuardMiddleware` or `GuardCallbackHandler`, sync and async, counted in characters over the ``"updates"``,
``"values"``, ``"tasks"``, ``"debug"`` and ``"checkpoints"`` streams. No checkpointer: LangGraph's serializer
refuses a DataFrame. pandas and numpy come with the test extra (``qwenguard[all]``); the reader imports neither, and
the bound on its work is checked with a duck-typed stand-in that counts what is pulled from it.
"""

# No `from __future__ import annotations`: LangChain reads the tools' annotations.

import asyncio
from typing import Any

import numpy as np
import pandas as pd
import pytest
import test_lc_rt59g_tool_writes as rt59g
from faults import ScriptedBackend, keyword_verdict
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage
from lc_fakes import SAFE_ANSWER, scripted, tool_call
from qwenguard.core import Guard, InputTooLarge
from qwenguard.integrations.langchain import AsyncGuardCallbackHandler, GuardCallbackHandler, GuardMiddleware
from qwenguard.integrations.langchain._messages import artifact_text

PAGE, SAFE_PAGE, WORD = rt59g.PAGE, rt59g.SAFE_PAGE, rt59g.WORD

TABLES = {
    "DataFrame cell": lambda text: pd.DataFrame({"source": ["forum"], "text": [text]}),
    "DataFrame row label": lambda text: pd.DataFrame({"hits": [1]}, index=[text]),
    "DataFrame MultiIndex label": lambda text: pd.DataFrame(
        {"hits": [1]}, index=pd.MultiIndex.from_tuples([("forum", text)], names=["site", "quote"])
    ),
    "DataFrame string dtype": lambda text: pd.DataFrame({"text": pd.Series([text], dtype="string")}),
    "DataFrame category": lambda text: pd.DataFrame({"text": pd.Series([text, "x"], dtype="category")}),
    "Series value": lambda text: pd.Series(["forum", text]),
    "Series label": lambda text: pd.Series([1.0], index=[text]),
    "Index": lambda text: pd.Index(["forum", text]),
    "ndarray of str": lambda text: np.array([["forum", text]]),
    "ndarray of objects": lambda text: np.array([{"text": text}, None], dtype=object),
    "structured ndarray": lambda text: np.array([(1, text)], dtype=[("hits", "i4"), ("text", "U200")]),
}


@pytest.fixture
def kw() -> Guard:
    return Guard(ScriptedBackend(keyword_verdict, name="kw"), cache_size=0)


def guarded(guard: Guard, artifact: Any, piece: str, mode: str, exit_behavior: str) -> tuple[Any, Any]:
    """An agent whose model calls a tool returning ``artifact`` once, guarded by ``piece``; and its run's config."""
    middleware = [GuardMiddleware(guard, exit_behavior=exit_behavior)] if piece == "middleware" else []
    model = scripted(tool_call("fetch_page", {"url": "http://x"}, "c1"), SAFE_ANSWER, SAFE_ANSWER)
    agent = create_agent(model, [rt59g.artifact_tool(artifact)], state_schema=rt59g.State, middleware=middleware)
    config: dict[str, Any] = {}
    if piece == "callback":
        config["callbacks"] = [(GuardCallbackHandler if mode == "sync" else AsyncGuardCallbackHandler)(guard)]
    return agent, config


@pytest.mark.parametrize("mode", rt59g.MODES)
@pytest.mark.parametrize(("piece", "exit_behavior"), rt59g.PIECES)
@pytest.mark.parametrize("shape", list(TABLES))
def test_an_unsafe_table_artifact_never_reaches_the_streams(kw, mode, piece, exit_behavior, shape):
    agent, config = guarded(kw, TABLES[shape](PAGE), piece, mode, exit_behavior or "end")
    seen, error = rt59g.run(agent, config, mode)
    assert [item[:120] for item in seen if WORD in item.lower()] == []
    assert rt59g.stopped_or_withheld(piece, exit_behavior, seen, error)


@pytest.mark.parametrize("shape", list(TABLES))
def test_a_table_artifact_is_read_by_its_labels_and_values(shape):
    assert PAGE in artifact_text(TABLES[shape](PAGE), 10_000)


@pytest.mark.parametrize("mode", rt59g.MODES)
def test_a_safe_table_artifact_passes_whole(kw, mode):
    table = pd.DataFrame({"source": ["forum"], "text": [SAFE_PAGE]})
    agent, config = guarded(kw, table, "middleware", mode, "end")
    if mode == "sync":
        state = agent.invoke(rt59g.INPUTS, config)
    else:
        state = asyncio.run(agent.ainvoke(rt59g.INPUTS, config))
    [message] = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    assert rt59g.NOTICE not in message.text
    assert message.artifact is table  # the artifact reached the state as the tool wrote it


def test_numbers_carry_no_text_and_cost_a_table_no_budget():
    # A numeric matrix is one visit, whatever its size: read (as nothing) at a small budget, where every number
    # counted against it before; a sentence next to it is read.
    matrix = np.arange(250_000, dtype=float).reshape(500, 500)
    assert artifact_text(matrix, 10) == ""
    assert artifact_text(pd.Series(matrix[0]), 10) == ""
    assert artifact_text(np.int64(7), 10) == ""
    assert PAGE in artifact_text([matrix, {"note": PAGE}], 1000)
    frame = pd.DataFrame(matrix[:, :20], columns=[f"c{i}" for i in range(20)])
    assert artifact_text(frame, 1000).split("\n") == [f"c{i}" for i in range(20)]


class Kind:
    kind = "O"


class CountingArray:
    """An array of objects as an application holds it (no numpy): a dtype, a length, and values pulled one by one;
    counts how many were pulled."""

    dtype = Kind()
    ndim = 1

    def __init__(self, values: list[Any]) -> None:
        self.items, self.pulled = values, 0

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, value: Any) -> bool:
        return value in self.items

    def __iter__(self) -> Any:
        for value in self.items:
            self.pulled += 1
            yield value


class CountingFrame:
    """A DataFrame as the reader knows one (no pandas): labels, dtypes and columns pulled one by one."""

    dtypes = None
    columns: list[str] = []
    index: list[str] = []

    def __init__(self, columns: dict[Any, list[Any]]) -> None:
        self.data, self.pulled = columns, 0
        self.columns, self.index = list(columns), []

    def __len__(self) -> int:
        return len(self.columns)

    def __contains__(self, label: Any) -> bool:
        return label in self.data

    def __iter__(self) -> Any:
        return iter(self.columns)  # as a DataFrame iterates: its column labels only

    def items(self) -> Any:
        for name, values in self.data.items():
            self.pulled += 1
            yield name, CountingArray(values)


def test_a_duck_typed_table_is_read_by_its_values_and_refused_past_the_budget():
    frame = CountingFrame({"source": ["forum"], "text": [PAGE]})
    assert PAGE in artifact_text(frame, 1000)
    # Past the budget the walk stops where it stops for a list (`_VISITS` items a character): the work is linear in
    # the budget, not in the table, and what was not read whole is refused, never judged as its start.
    for size in (10_000, 100_000):
        values = CountingArray([0] * size + [PAGE])
        with pytest.raises(InputTooLarge):
            artifact_text(values, 100)
        assert values.pulled <= 4 * 101 + 1
        wide = CountingFrame({i: [] for i in range(size)})
        with pytest.raises(InputTooLarge):
            artifact_text(wide, 100)
        assert wide.pulled <= 4 * 101 + 1
