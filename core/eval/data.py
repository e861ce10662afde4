"""Labelled evaluation data: JSONL, CSV or Parquet rows → `EvalExample`s.

Accepted columns (a name is matched without case or surrounding blanks: ``Response`` and `` response`` are
``response``):

- the content: ``text`` (or ``prompt``) — a user prompt; or ``messages`` — a conversation, a list of
  ``{"role", "content"}`` (a JSON string in CSV). A row with a non-empty ``response`` is a response
  check: the response is the assistant's answer to the text/prompt/messages.
- ``label``: ``safe`` / ``unsafe`` / ``controversial`` (any case), or ``0`` / ``1`` (1 = unsafe; not a boolean).
- optional ``category`` (one official category name, or several separated by commas; ``None`` or empty
  for none), ``source`` (where the row came from), ``id``, ``refusal`` (true/false, response rows), and
  ``stage`` (prompt, response, tool_call, tool_result, retrieval; default: ``response`` when the row has
  a response, else ``prompt``). ``response`` and ``tool_call`` rows must end with the assistant's turn.
- with a ``response``, the user turn is ``prompt`` when present (``text`` may repeat the response, as in
  the shipped sample), else ``text``.
- a row holding more than one of ``text``, ``prompt`` and ``messages`` holds copies of its judged text (the last
  user turn, or ``text`` repeating the response); different texts are refused, as one would go unjudged.
- a key written twice in one JSON object is refused (JSON alone reads its last copy), as CSV refuses a column twice.

A column whose name is close to one of these (``respones``, ``lable``, ``Categroy``) is refused, naming the
column it looks like: read as a column of the user's own it would drop the response, stage or category without
a word. Other columns are kept in `EvalExample.extra`.

Every problem is reported as a `DataError` naming the file and the row (1-based data row; for JSONL
and CSV also the line), never as a crash further down.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MissingDependency, QwenGuardError
from ..formats.json_keys import DuplicateKey, unique_keys
from ..formats.printable import printable
from ..verdict import CATEGORIES, Risk, Stage

__all__ = [
    "DataError",
    "EvalExample",
    "load_dataset",
    "examples_from_records",
    "parse_label",
    "printable",
    "SUPPORTED_SUFFIXES",
]

SUPPORTED_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".pq")

_LABELS: dict[str, Risk] = {
    "safe": Risk.SAFE,
    "0": Risk.SAFE,
    "unsafe": Risk.UNSAFE,
    "1": Risk.UNSAFE,
    "controversial": Risk.CONTROVERSIAL,
}
_NONE_CATEGORY = {"", "none", "null", "nan", "n/a", "-"}
_CATEGORY_BY_LOWER = {c.lower(): c for c in CATEGORIES}
#: Stages whose checked turn is the assistant's (response moderation); the others end with a user-side turn.
_ASSISTANT_STAGES = frozenset({Stage.RESPONSE, Stage.TOOL_CALL})


class DataError(QwenGuardError, ValueError):
    """A dataset file or row cannot be used; the message names the file and row."""


@dataclass(frozen=True)
class EvalExample:
    """One labelled check: the conversation shown to the guard, at a stage, with its gold label."""

    id: str
    stage: Stage
    conversation: tuple[Mapping[str, str], ...]
    label: Risk
    categories: tuple[str, ...] = ()
    source: str | None = None
    refusal: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def text(self) -> str:
        """The judged turn (the prompt for prompt checks, the response for response checks)."""
        return self.conversation[-1]["content"]

    def messages(self) -> list[dict[str, str]]:
        return [dict(m) for m in self.conversation]


def parse_label(value: Any) -> Risk:
    """``safe``/``unsafe``/``controversial`` (any case) or 0/1 (1 = unsafe) → `Risk`; `ValueError` otherwise. Not a
    boolean, nor ``"true"``/``"false"``: a set's ``is_safe`` column renamed ``label`` ran with every gold label
    inverted (rt66a F1), and nothing in a boolean says which way it points."""
    if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("true", "false")):
        raise ValueError(
            f"label {value!r} is a boolean, which does not say whether it means safe or unsafe: "
            "write safe / unsafe, or 0 / 1 (1 = unsafe)"
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value in (0, 1):
            return Risk.UNSAFE if value == 1 else Risk.SAFE
        raise ValueError(f"numeric label must be 0 or 1, got {value!r}")
    if isinstance(value, str):
        key = value.strip().lower()
        if key.endswith(".0") and key[:-2] in ("0", "1"):  # "1.0" from spreadsheets
            key = key[:-2]
        if key in _LABELS:
            return _LABELS[key]
    raise ValueError(f"label {value!r} is not one of safe, unsafe, controversial, 0, 1 (1 = unsafe)")


#: A lone surrogate: what a JSON escape such as ``"\\ud800"`` parses to, a character no encoder writes.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _written(text: str) -> str:
    """``text`` with each lone surrogate as U+FFFD, the guard's own entry rule (`clean_text`): a row's text is
    judged as a live check of it is, and its key, report lines and cache entries can be written (rt69g F1)."""
    if text.isascii() or _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub("\ufffd", text)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:  # NaN from pandas/parquet
        return True
    return isinstance(value, str) and not value.strip()


def _parse_categories(value: Any) -> tuple[str, ...]:
    if _is_missing(value):
        return ()
    items: Iterable[Any]
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            items = _json(text, "category")
        else:
            items = text.split(",")
    elif isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        items = value.tolist() if hasattr(value, "tolist") else value
    else:
        raise ValueError(f"category must be a string or a list, got {type(value).__name__}")
    out: list[str] = []
    for item in items:
        name = _written(str(item)).strip()
        if name.lower() in _NONE_CATEGORY:
            continue
        # Official names are kept as the model writes them; other names (a dataset's own taxonomy)
        # are kept verbatim so per-category breakdowns still work.
        out.append(_CATEGORY_BY_LOWER.get(name.lower(), name))
    return tuple(dict.fromkeys(out))


def _parse_messages(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        value = _json(value, "messages")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ("user", "assistant", "system"):
            raise ValueError(f"messages[{i}].role must be user, assistant or system, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": _written(content)})
    return out


def _json(text: str, column: str) -> Any:
    """A JSON cell; a `ValueError` naming the column when it is not JSON, names a key twice or is nested too deeply
    to parse."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{column} is not valid JSON: {exc.msg}") from None
    except DuplicateKey as exc:  # a message's "content" twice: read as its last copy, unlike the cell a reader sees
        raise ValueError(f"{column}: {exc}") from None
    except RecursionError:
        raise ValueError(f"{column} is JSON nested too deeply") from None


def _found(record: Mapping[str, Any]) -> str:
    """`` (columns found: a, b)``: what a row with the wrong columns has instead."""
    # A name with control characters is quoted with them escaped: it is printed to a terminal.
    names = [
        str(k) if str(k).isprintable() else repr(str(k)) for k in record if k is not None
    ]  # None: csv's extra cells
    return f" (columns found: {', '.join(names)})" if names else " (the row has no columns)"


#: The columns eval reads (the module's docstring); every other column is the user's own (`EvalExample.extra`).
KNOWN_COLUMNS = (
    "text",
    "prompt",
    "messages",
    "response",
    "label",
    "category",
    "categories",
    "source",
    "id",
    "stage",
    "refusal",
)


def _edit_distance(a: str, b: str) -> int:
    """Edits from ``a`` to ``b`` (insert, delete or replace a character, swap two neighbours): ``respones`` is one
    from ``response``, ``lable`` one from ``label``."""
    before: list[int] = []
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        earlier, before, row = before, row, [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(before[j] + 1, row[j - 1] + 1, before[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], earlier[j - 2] + 1)
    return row[-1]


def _looks_like(name: str, present: Iterable[str] = ()) -> str | None:
    """The known column that ``name`` (stripped, lower-case, not itself known) looks like a misspelling of; not one
    the row has (``present``: ``state`` beside ``stage``, ``labels`` beside ``label``, ``response_a`` beside
    ``response`` are the user's own), nor the plural ``name`` is the singular of (``message``): a dataset's own
    columns (rt64k F2). ``responses``, ``response_x`` or a pair's ``response_a`` without a ``response`` column is
    refused: read as the user's own, the rows' responses would go unjudged, measured as prompts (rt64m F5)."""
    best: tuple[int, str] | None = None
    for column in KNOWN_COLUMNS:
        if column == "id":  # `idx`, `uid`: common columns of a dataset's own, and a lost id costs only the row's name
            continue
        if column in present or column == name + "s":
            continue
        # One edit from a short name (`test` is no misspelt `text`, `level` no `label`), two from a longer one.
        limit = 1 if len(column) <= 5 else 2
        if abs(len(name) - len(column)) > limit:  # too far by length alone (a huge key costs nothing)
            continue
        distance = _edit_distance(name, column)
        if distance <= limit and (best is None or distance < best[0]):
            best = (distance, column)
    return None if best is None else best[1]


def _column_key(name: str) -> str:
    """A column name as eval matches it: without format characters ("text\u200b"), in NFKC ("ｔｅｘｔ"), without case
    or surrounding blanks. A reader sees "text" in each, and a second one beside "text" was read as the user's own
    column while "text" held other words (rt71m F3)."""
    visible = "".join(c for c in name if unicodedata.category(c) != "Cf")
    return unicodedata.normalize("NFKC", visible).strip().lower()


def _column_names(names: Iterable[Any]) -> dict[Any, Any]:
    """Each of a row's column names → the column eval reads it as: a known column matched without case or
    surrounding blanks (`` response``, ``Stage``), else the name itself (a column of the user's own). A name that
    looks like a misspelt known column (``respones``), or two names of one column, is a `ValueError`: read as a
    column of the user's own, the response, stage or category would be dropped without a word (rt64a F1)."""
    out: dict[Any, Any] = {}
    first: dict[str, Any] = {}
    names = list(names)
    present = {key for name in names if isinstance(name, str) and (key := _column_key(name)) in KNOWN_COLUMNS}
    for name in names:
        if not isinstance(name, str):
            out[name] = name
            continue
        key = _column_key(name)
        if key in KNOWN_COLUMNS:
            if key in first:
                other = first[key]
                raise ValueError(
                    f"column {name!r} appears twice"
                    if other == name
                    else f"columns {other!r} and {name!r} are both the {key!r} column; keep one"
                )
            first[key] = name
            out[name] = key
        elif (column := _looks_like(key, present)) is not None:
            raise ValueError(
                f"column {name!r} looks like a misspelt {column!r}, which eval reads: rename it to {column!r} (or, "
                f"if it is a column of your own, to a name unlike {', '.join(repr(c) for c in KNOWN_COLUMNS)})"
            )
        else:
            out[name] = name
    return out


def _at(index: int, lines: Sequence[int] | None) -> str:
    """`` (line N)``: where data row ``index`` (0-based) starts in its file, when that is known."""
    return f" (line {lines[index]})" if lines is not None and index < len(lines) else ""


#: Distinct sets of column names whose reading is remembered while rows are read (a CSV has one, JSONL a few).
_NAME_SETS_KEPT = 64


def _with_known_columns(records: Iterable[Any], *, where: str, lines: Sequence[int] | None) -> list[Mapping[str, Any]]:
    """The rows with their column names as eval reads them (`_column_names`); a `DataError` names the first row
    that is not an object or whose names are wrong."""
    out: list[Mapping[str, Any]] = []
    readings: dict[tuple[Any, ...], dict[Any, Any] | None] = {}
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise DataError(f"{where} row {i + 1}: expected an object, got {type(record).__name__}")
        names = tuple(record)
        if names in readings:
            renamed = readings[names]
        else:
            try:
                reading = _column_names(names)
            except ValueError as exc:
                raise DataError(f"{where} row {i + 1}{_at(i, lines)}: {exc}") from None
            renamed = None if all(k == v for k, v in reading.items()) else reading  # None: the row as it is
            if len(readings) < _NAME_SETS_KEPT:
                readings[names] = renamed
        out.append(record if renamed is None else {renamed[k]: v for k, v in record.items()})
    return out


def _text(value: Any, column: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"column {column!r} must be text, got {type(value).__name__}")
    return _written(value)


def _example(record: Mapping[str, Any], index: int) -> EvalExample:
    """Build one example from a row; raises ValueError with a message that does not yet name the row."""
    if "label" not in record:
        raise ValueError(f"missing column 'label'{_found(record)}")
    label = parse_label(record["label"])
    response = record.get("response")
    has_response = not _is_missing(response)
    if not _is_missing(record.get("messages")):
        conversation = _parse_messages(record["messages"])
        if has_response:
            conversation.append({"role": "assistant", "content": _text(response, "response")})
    else:
        # With a response, the user turn is `prompt` (where `text` may repeat the response); else `text`.
        order = ("prompt", "text") if has_response else ("text", "prompt")
        column = next((c for c in order if not _is_missing(record.get(c))), None)
        if column is None:
            present = [c for c in ("text", "prompt", "messages") if c in record]
            what = (
                f"columns {present} are empty"
                if present
                else f"no 'text', 'prompt' or 'messages' column{_found(record)}"
            )
            raise ValueError(f"nothing to check: {what}")
        conversation = [{"role": "user", "content": _text(record[column], column)}]
        if has_response:
            conversation.append({"role": "assistant", "content": _text(response, "response")})
    _one_text(record, conversation, has_response)
    if not conversation[-1]["content"].strip():
        raise ValueError("the checked text is empty")
    if conversation[-1]["role"] == "system":
        raise ValueError("the last message is a system message; end with the user or assistant turn to check")
    assistant_final = conversation[-1]["role"] == "assistant"
    stage = Stage.RESPONSE if assistant_final else Stage.PROMPT
    if not _is_missing(record.get("stage")):
        try:
            stage = Stage(str(record["stage"]).strip().lower())
        except ValueError:
            valid = [s.value for s in Stage if s is not Stage.STREAM]  # 'stream' is refused just below
            raise ValueError(f"stage {record['stage']!r} is not one of {valid}") from None
        if stage is Stage.STREAM:
            raise ValueError("stage 'stream' cannot be evaluated row by row; use 'response'")
        if (stage in _ASSISTANT_STAGES) != assistant_final:
            need = "a response (the assistant's turn)" if stage in _ASSISTANT_STAGES else "no response"
            raise ValueError(f"stage {stage.value!r} needs {need}")
    refusal = record.get("refusal")
    if _is_missing(refusal):
        refusal = None
    elif isinstance(refusal, str):
        if refusal.strip().lower() not in ("true", "false", "yes", "no", "1", "0"):
            raise ValueError(f"refusal {refusal!r} is not true/false")
        refusal = refusal.strip().lower() in ("true", "yes", "1")
    else:
        refusal = bool(refusal)
    source = record.get("source")
    rid = record.get("id")
    # `category` empty or null beside a `categories` list: the list is the row's (rt69g F5).
    category = record.get("category")
    return EvalExample(
        id=str(index) if _is_missing(rid) else _written(str(rid)),
        stage=stage,
        conversation=tuple(conversation),
        label=label,
        categories=_parse_categories(record.get("categories") if _is_missing(category) else category),
        source=None if _is_missing(source) else _written(str(source)),
        refusal=refusal,
        extra={k: v for k, v in record.items() if k not in KNOWN_COLUMNS},
    )


def _one_text(record: Mapping[str, Any], conversation: Sequence[Mapping[str, str]], has_response: bool) -> None:
    """A `ValueError` when the row's ``text`` or ``prompt`` holds a text that is not judged: no turn of the conversation
    checked (the user turn, an earlier one read as its context, the response). Only one of them is read, and the other
    was dropped without a word (rt71g F2); a copy (a dataset that repeats the prompt, the sample's ``text`` repeating
    the response, ultrachat's ``prompt`` repeating the first user turn of ``messages``) is fine, in any line-break or
    normalization form. Beside ``messages``, a ``prompt`` that is no string (a TRL list of turns) is not a text."""
    judged = {_as_compared(m["content"]) for m in conversation}
    beside_messages = not _is_missing(record.get("messages"))
    for column in ("text", "prompt"):
        value = record.get(column)
        if _is_missing(value) or beside_messages and not isinstance(value, str):
            continue
        if _as_compared(_text(value, column)) in judged:
            continue
        if beside_messages:
            what = "a turn of 'messages'"
        elif has_response:
            what = "the 'prompt' (the user turn) nor the 'response'"
        else:  # a prompt row: `text` is judged, `prompt` differs
            raise ValueError(
                "columns 'text' and 'prompt' hold different texts, and only 'text' would be judged: keep one (or "
                "give the row a 'response', which makes 'prompt' the user turn it answers)"
            )
        raise ValueError(
            f"column {column!r} is not {what}, and would not be judged: keep one, or rename {column!r} to a column "
            "of your own"
        )


def _as_compared(text: str) -> str:
    """``text`` as two copies of one text compare: line breaks as LF, NFC, without surrounding blanks."""
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def examples_from_records(
    records: Iterable[Mapping[str, Any]], *, where: str = "data", lines: Sequence[int] | None = None
) -> list[EvalExample]:
    """Rows (dicts) → examples. ``where`` names the source in errors; ``lines`` maps rows to file lines."""
    return _examples(_with_known_columns(records, where=where, lines=lines), where=where, lines=lines)


def _examples(records: Sequence[Mapping[str, Any]], *, where: str, lines: Sequence[int] | None) -> list[EvalExample]:
    """Rows whose column names are read (`_with_known_columns`) → examples."""
    out: list[EvalExample] = []
    for i, record in enumerate(records):
        try:
            out.append(_example(record, i + 1))
        except (ValueError, TypeError) as exc:
            raise DataError(f"{where} row {i + 1}{_at(i, lines)}: {exc}") from None
    return out


def _not_utf8(path: Path, line: int, raw: bytes, exc: UnicodeDecodeError) -> DataError:
    return DataError(
        f"{path} line {line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
        "re-save the file as UTF-8"
    )


def _decoded_lines(path: Path) -> Iterator[str]:
    """The file's lines as text, read and decoded one at a time (a file is never held whole: a huge line costs
    its own size, not the file's several times over). UTF-8, a byte-order mark (Windows editors, Excel's "CSV
    UTF-8") dropped; bytes that are not UTF-8 (a Latin-1 or Windows-1252 export) are one `DataError` naming the
    file, line and column."""
    with path.open("rb") as f:
        n = 0
        for raw in f:  # not enumerate: its reused tuple would keep each line's bytes alive while it is parsed
            n += 1
            if n == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, n, raw, exc) from None
            del raw  # before the caller parses the line
            yield text


def _read_text(path: Path) -> str:
    """The whole file as text (a JSON array), decoded as `_decoded_lines` decodes it."""
    return "".join(_decoded_lines(path))


def _universal(text: str) -> list[str]:
    """A line read up to its ``\\n``, as the lines a text-mode file reads: a lone ``\\r`` ends one too."""
    if "\r" not in text:
        return [text]
    parts = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return parts[:-1] if parts[-1] == "" else parts


def _read_jsonl(path: Path) -> tuple[list[Any], list[int]]:
    rows, lines = [], []
    n = 0
    for text in _decoded_lines(path):
        for line in _universal(text):
            n += 1
            if not line or line.isspace():  # not strip(): a copy of a huge line
                continue
            try:
                rows.append(json.loads(line, object_pairs_hook=unique_keys))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {n}: not valid JSON ({exc.msg})") from None
            except DuplicateKey as exc:  # json.loads alone judges the last copy; CSV refuses a column twice (rt71g F1)
                raise DataError(f"{path} row {len(rows) + 1} (line {n}): {exc}") from None
            except RecursionError:
                raise DataError(f"{path} line {n}: JSON nested too deeply to read") from None
            except ValueError as exc:  # an integer of more digits than Python converts (4,300): rt69g F3
                raise DataError(f"{path} line {n}: {exc}") from None
            lines.append(n)
    return rows, lines


def _read_json(path: Path) -> tuple[list[Any], list[int] | None]:
    with path.open("rb") as f:
        head = f.read(4096).decode("utf-8-sig", errors="replace")
    if head.lstrip().startswith("["):
        text = _read_text(path)
        try:
            return json.loads(text, object_pairs_hook=unique_keys), None
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        except DuplicateKey as exc:  # json.loads alone judges the last copy; CSV refuses a column twice (rt71g F1)
            raise DataError(f"{path}{_element_at(text)}: {exc}") from None
        except RecursionError:
            raise DataError(f"{path}: JSON nested too deeply to read") from None
        except ValueError as exc:  # an integer of more digits than Python converts (4,300): rt69g F3
            raise DataError(f"{path}{_long_number_line(text)}: {exc}") from None
    return _read_jsonl(path)


def _element_at(text: str) -> str:
    """`` row N (line L)``: the element of a JSON array text that names a key twice, or nothing (the error path
    only: the array is read again an element at a time, to name the row)."""
    decoder = json.JSONDecoder(object_pairs_hook=unique_keys)

    def past_blanks(at: int) -> int:  # JSON's four whitespace characters
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        return at

    at = past_blanks(text.index("[") + 1)
    row = 0
    while at < len(text) and text[at] != "]":
        row += 1
        try:
            _, end = decoder.raw_decode(text, at)
        except DuplicateKey:
            return f" row {row} (line {text.count(chr(10), 0, at) + 1})"
        except (ValueError, RecursionError):  # not reached: the whole text parsed up to the duplicate
            return ""
        at = past_blanks(end)
        if at < len(text) and text[at] == ",":
            at = past_blanks(at + 1)
    return ""


def _long_number_line(text: str) -> str:
    """`` line N``: where the first number too long for Python to convert (a value of more digits than
    ``sys.get_int_max_str_digits()``) starts in a JSON text, or nothing."""
    digits = getattr(sys, "get_int_max_str_digits", lambda: 4300)() or 4300
    found = re.search(rf"[:,\[]\s*-?([0-9]{{{digits + 1},}})", text)
    return "" if found is None else f" line {text.count(chr(10), 0, found.start(1)) + 1}"


#: The largest CSV cell read: csv's own default (128 KiB) refuses a retrieved document the guard could judge; the
#: guard's ``max_chars`` is what bounds a check.
_CSV_FIELD_LIMIT = 2**31 - 1


def _read_csv(path: Path) -> tuple[list[Any], list[int]]:
    rows: list[Any] = []
    lines: list[int] = []
    previous = csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        # _decoded_lines drops a byte-order mark: Excel's "CSV UTF-8" starts with one, which would become part of
        # the first column's name ("\ufefftext") and hide the `text` column.
        reader = csv.DictReader(_decoded_lines(path))
        try:
            if not reader.fieldnames:
                raise DataError(f"{path}: empty CSV (no header row)")
            try:
                _column_names(reader.fieldnames)  # the header's mistakes are the header's, not row 1's
            except ValueError as exc:
                raise DataError(f"{path} line {reader.line_num} (the header): {exc}") from None
            start = 2
            for row in reader:
                # DictReader files cells past the header under None and fills missing ones with None: an unquoted
                # comma would cut the text silently, a missing cell read as empty.
                if None in row or any(v is None for v in row.values()):
                    width = len(reader.fieldnames)
                    extra = row.get(None)
                    if isinstance(extra, list):
                        cells, hint = width + len(extra), '; quote a cell that holds a comma ("a, b")'
                    else:
                        cells, hint = sum(1 for v in row.values() if v is not None), ""
                    raise DataError(
                        f"{path} row {len(rows) + 1} (line {start}): {cells} cell(s), the header has {width}{hint}"
                    )
                rows.append(row)
                lines.append(start)  # the line where this (possibly multi-line) row starts
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num}: not valid CSV ({exc})") from None
    finally:
        csv.field_size_limit(previous)
    return rows, lines


def _read_parquet(path: Path) -> list[Any]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependency.for_extra("eval", "pyarrow") from exc
    try:
        rows: list[Any] = pq.read_table(path).to_pylist()
        return rows
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(f"{path}: cannot read as Parquet ({exc})") from exc


def read_records(path: str | Path) -> tuple[list[Any], list[int] | None]:
    """The raw rows of a file, and (JSONL/CSV) the line each row starts on."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path), None
    raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")


def load_dataset(
    path: str | Path,
    *,
    stage: Stage | str | None = None,
    limit: int | None = None,
    notes: list[str] | None = None,
) -> list[EvalExample]:
    """Load labelled examples from a JSONL, CSV or Parquet file.

    ``stage`` keeps only prompt rows or only response rows (a row is a response check when it has a
    response, or when its messages end with the assistant). ``limit`` keeps the first N after that.
    ``notes``: warnings about the data (rows that are not what they seem) are appended to it.

    >>> examples = load_dataset("sample.jsonl", stage="prompt", limit=50)   # doctest: +SKIP
    """
    records, lines = read_records(path)
    if not records:
        raise DataError(f"{path}: no rows")
    rows = _with_known_columns(records, where=str(path), lines=lines)
    del records  # the renamed rows replace them
    examples = _examples(rows, where=str(path), lines=lines)
    if notes is not None and (note := _restaged(rows, examples, lines, str(path))):
        notes.append(note)
    return select(examples, stage=stage, limit=limit, where=str(path))


def _restaged(
    records: Sequence[Mapping[str, Any]], examples: Sequence[EvalExample], lines: Sequence[int] | None, where: str
) -> str | None:
    """A note on rows whose ``response`` cell is empty in a file of responses, without a ``stage`` saying so:
    each is checked as a prompt (its label judged against the prompt), which is seldom what was meant."""
    if not any(not _is_missing(r.get("response")) for r in records):
        return None
    rows = [
        i
        for i, (r, e) in enumerate(zip(records, examples))
        if "response" in r and _is_missing(r["response"]) and _is_missing(r.get("stage")) and e.stage is Stage.PROMPT
    ]
    if not rows:
        return None
    first = rows[0]
    return (
        f"{where}: {len(rows)} row(s) with an empty response are checked as prompts, their label judged against "
        f"the prompt (the first: row {first + 1}{_at(first, lines)}); give them a response, or a 'stage' column "
        "saying 'prompt'"
    )


def select(
    examples: Sequence[EvalExample], *, stage: Stage | str | None = None, limit: int | None = None, where: str = "data"
) -> list[EvalExample]:
    """Keep the examples at ``stage`` (all when None), then the first ``limit``."""
    out = list(examples)
    if stage is not None:
        try:
            st = Stage(stage)
        except ValueError:
            raise ValueError(
                f"stage must be one of {[s.value for s in Stage if s is not Stage.STREAM]}, got {stage!r}"
            ) from None
        out = [e for e in out if e.stage is st]
        if not out:
            raise DataError(
                f"{where}: no {st.value} rows (a row's stage comes from its 'stage' column, "
                f"else 'response' when it has a response, else 'prompt')"
            )
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        out = out[:limit]
    return out
