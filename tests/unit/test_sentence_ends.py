"""Where the Gen-window engine finds sentence ends (`core/streaming/gen_windows.py`).

The engine's patterns are written to run in linear time on hostile text (runs of thousands of dots, which
the plain patterns backtracked over at every position: 325 ms a delta at 4,096 dots). These properties pin
that they still find exactly what the plain patterns find."""

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from qwenguard.core.streaming.gen_windows import _CLOSING, _SENTENCE_END, _TERMINAL, ends_clause

T, C = re.escape(_TERMINAL), re.escape(_CLOSING)
#: The plain (backtracking) forms: a sentence end, and a text that ends a clause. A line break alone ends neither, a
#: blank line does (5ca80ff: hard-wrapped prose was a sentence a line).
PLAIN_SENTENCE_END = re.compile(f"[{T}]+[{C}]*(?=\\s)|\n[^\\S\n]*\n")
PLAIN_CLAUSE_END = re.compile(f"(?:[{T}]+[{C}]*|\n\\s*\n)\\s*$")

hostile_text = st.text(alphabet=list(_TERMINAL + _CLOSING + "ab \n\t\u3000"), max_size=40)


@settings(max_examples=3_000, deadline=None)
@given(hostile_text, st.integers(min_value=0, max_value=41))
def test_sentence_ends_are_the_plain_patterns(text, end):
    found = [m.span() for m in _SENTENCE_END.finditer(text, 0, end)]
    assert found == [m.span() for m in PLAIN_SENTENCE_END.finditer(text, 0, end)]


#: A list marker ending the text ("b." alone on its line): it ends no clause, the item after it runs on (rt72a F1).
LIST_MARKER_LAST = re.compile("(?:^|\n)[ \t]*[ab][.\uff0e]\\s*$")


@settings(max_examples=3_000, deadline=None)
@given(hostile_text)
def test_a_clause_end_is_the_plain_pattern(text):
    assert ends_clause(text) == (bool(PLAIN_CLAUSE_END.search(text)) and not LIST_MARKER_LAST.search(text))


def test_a_long_run_of_dots_has_no_sentence_end_until_a_space_follows():
    dots = "." * 20_000
    assert list(_SENTENCE_END.finditer(dots)) == [] and not ends_clause(dots + "x") and ends_clause(dots)
    assert [m.span() for m in _SENTENCE_END.finditer("Go" + dots + " on")] == [(2, 20_002)]
