"""Fixtures for the LangChain integration tests: the demo guard, loaded once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lc_fakes import ToolBox
from qwenguard.core import Guard


@pytest.fixture(scope="session")
def guard() -> Iterator[Guard]:
    g = Guard.from_pretrained("demo")
    yield g
    g.close()


@pytest.fixture
def tools() -> ToolBox:
    return ToolBox()
