"""A failed tool's error as the LangChain callback reads it: what a ``ToolNode`` writes from it, what a
``handle_tool_errors`` callable may write from what it carries, and the messages a run writes for failed calls.
Also what LangGraph's control flow carries out of a tool past its caller (`bubbled_command`, `interrupt_values`):
not an error, but written to a graph's state or handed to the run's caller all the same.

Bounded everywhere: exceptions are walked breadth first without recursion (`.._error_reading`), objects and
characters by a budget; nothing is read through a property, and whatever fails to read is left out.
"""

from __future__ import annotations

import hashlib
import re
import sys
import types
from collections.abc import Callable, Collection, Mapping
from itertools import islice
from typing import Any

from langchain_core.messages import BaseMessage
from qwenguard.core import QwenGuardError

from .._error_reading import error_texts
from ._arrow_reading import arrow_parts

__all__ = [
    "MAX_ERROR_CHARS",
    "TOOL_NODE_HINT",
    "bubbled_command",
    "control_flow",
    "digest",
    "error_text",
    "error_texts",
    "interrupt_text",
    "interrupt_values",
    "object_fields",
    "object_text",
    "written_messages",
]

#: Characters of a failed tool's error texts `on_tool_error` judges (its own repr and str() always): a longer
#: text it carries is left to the check of the message a ToolNode writes (`_failed_call_items`).
MAX_ERROR_CHARS = 100_000
#: What a `ToolNode` with ``handle_tool_errors=True`` adds after ``"Error: " + repr(error)``
#: (langgraph.prebuilt.tool_node.TOOL_CALL_ERROR_TEMPLATE).
TOOL_NODE_HINT = "\n Please fix your mistakes."


def error_text(error: BaseException, budget: int = sys.maxsize) -> str:
    """What a failed tool's error says (`error_texts`), one text a line."""
    return "\n".join(error_texts(error, budget))


def digest(text: str) -> bytes:
    """A text judged already, kept without its characters (a page in an error can be long)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


#: How deep `written_messages` looks into a run's output (a Command's update's list of messages is 3 down).
_MAX_OUTPUT_DEPTH = 4


def written_messages(outputs: Any) -> list[BaseMessage]:
    """The messages in a run's output, where LangGraph finds a node's messages to stream and its update:
    the output itself, the values of a dict (a state update) and the items of a list, a ``Command``'s
    ``update``, down to `_MAX_OUTPUT_DEPTH` levels (walked without recursion)."""
    found: list[BaseMessage] = []
    stack: list[tuple[Any, int]] = [(outputs, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, BaseMessage):
            found.append(value)
        elif depth >= _MAX_OUTPUT_DEPTH:
            continue
        elif isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)
        elif any(cls.__name__ == "Command" for cls in type(value).__mro__):  # duck-typed: no langgraph import
            stack.append((getattr(value, "update", None), depth + 1))
    return found


def control_flow(error: BaseException) -> bool:
    """Not a failure a `ToolNode` writes as a message: a cancellation, a LangGraph ``interrupt()``
    (``GraphBubbleUp``: always re-raised), or the guard's own stop (no content in its text)."""
    if not isinstance(error, Exception) or isinstance(error, QwenGuardError):
        return True
    return any(cls.__name__ == "GraphBubbleUp" for cls in type(error).__mro__)


def _is(error: BaseException, name: str) -> bool:
    """Is ``error`` LangGraph's exception class ``name``, or a subclass (duck-typed: no langgraph import here)?"""
    return any(cls.__name__ == name for cls in type(error).__mro__)


def bubbled_command(error: BaseException) -> Any | None:
    """The ``Command`` a LangGraph ``ParentCommand`` carries out of a tool to a graph above it: a sub-agent the tool
    ran handed back with ``Command(graph=Command.PARENT, update=...)``, and LangGraph writes its ``update`` (messages
    too) to that graph's state. ``None`` for any other exception."""
    if not _is(error, "ParentCommand"):
        return None
    args = error.args
    command = args[0] if len(args) == 1 else None
    return command if hasattr(command, "update") and hasattr(command, "goto") else None


def interrupt_values(error: BaseException) -> list[Any] | None:
    """The values of the interrupts a LangGraph ``GraphInterrupt`` carries out of a tool to the run's caller
    (``result["__interrupt__"]``, the ``"updates"`` stream): ``interrupt()`` in the tool, or in a sub-agent it runs
    (``HumanInTheLoopMiddleware``'s review request quotes its model's tool call). ``None`` for any other exception."""
    if not _is(error, "GraphInterrupt"):
        return None
    args = error.args
    interrupts = args[0] if args else ()
    if not isinstance(interrupts, (list, tuple)):
        return None
    return [getattr(i, "value", i) for i in interrupts]


def interrupt_text(values: list[Any], budget: int, leaf: Callable[[Any], Any] | None = None) -> tuple[str, bool]:
    """What the interrupts' values say (`interrupt_values`), one text a line, and whether all of it was read within
    ``budget`` characters (`object_text`; ``leaf``: how its bytes, messages and files are read, the integrations'
    `_messages.payload_leaf`, else bytes as UTF-8): a payload not read whole is not judged whole, and the caller
    blocks it (size alone never gets text through unjudged)."""
    return object_text(values, budget, leaf)


def object_text(values: list[Any], budget: int, leaf: Callable[[Any], Any] | None = None) -> tuple[str, bool]:
    """What ``values`` say as an application reads them, one text a line, and whether all of it was read within
    ``budget`` characters: the strings in them, through mappings (keys too), any container by its items, and the
    fields of any other object (`object_fields`: a pydantic model's, a dataclass's, a slotted object's, a message's);
    a table or an array by its labels and values (`_table_parts`: a DataFrame, a Series, an ndarray, Arrow's, an Arrow
    scalar by value; one of numbers is one item); an object with no fields but a bulk-data method (`_BULK_READS`) by what it returns, where its
    length is within the walk's bound (refused otherwise); the repr only of an object with neither (escapes decoded,
    `_repr_read`); numbers, booleans, ``None`` and empty strings are not text. ``leaf`` reads an item (a string too: a
    ``data:`` URL) its own way first: what to read in its place (a text, "" for none, a list of its parts, a mapping),
    or ``None`` to walk it as above; bytes (a memoryview too) it leaves are read as UTF-8. Shared by a tool's
    interrupts, its artifact and a client's resume values (`_messages.payload_leaf`).

    Walked without recursion, each container or object once; only until past ``budget`` characters of text and
    `_VISITS` times ``budget`` items visited (every item, a repeated, empty or non-text one too: the work stays linear
    in ``budget``, whatever a shared list holds). The caller refuses what was not read whole."""
    texts: list[str] = []
    limit = _VISITS * (budget + 1)
    total, visits, cut = 0, 0, False
    stack = list(reversed(values))
    read: dict[int, Any] = {}  # containers and objects read already (kept, so that their ids stay theirs)
    while stack and total <= budget and visits <= limit:
        item = stack.pop()
        visits += 1
        own = leaf(item) if leaf is not None else None
        if own is not None:
            item = own
        elif isinstance(item, (bytes, bytearray, memoryview)):
            try:
                item = bytes(item).decode("utf-8", "replace")
            except ValueError:  # a released memoryview: nothing left to show
                item = ""
        if isinstance(item, str):
            if item:
                texts.append(item)
                total += len(item)
            continue
        if item is None or isinstance(item, (bool, int, float)) or id(item) in read:
            continue
        read[id(item)] = item
        room = limit - visits + 1  # items beyond it cannot be visited before the walk stops
        parts: list[Any] | None = None
        if not isinstance(item, dict) and (table := _table_parts(item, room, budget - total, leaf)) is not None:
            # Before Mappings: Arrow's struct and map scalars are ones, and a map scalar's ``items()`` fails (pyarrow 26)
            parts, over = table
            cut |= over
        elif isinstance(item, Mapping):
            parts = [x for pair in islice(item.items(), room + 1) for x in pair]
            cut |= len(parts) > 2 * room
        elif isinstance(item, Collection) and not isinstance(item, memoryview):
            # Any container by its items (a deque, a dict's views, an array: their repr wrote hidden characters as
            # escapes, rt58f F3)
            try:
                parts = list(islice(iter(item), room + 1))
            except Exception:  # noqa: BLE001 - a container that fails to iterate: read by its repr below
                parts = [_repr_read(item)]
            cut |= len(parts) > room
        elif fields := object_fields(item, room):
            parts = fields
        elif bulk := next((m for m in _BULK_READS if callable(getattr(type(item), m, None))), None):
            # An object with a bulk-data API and no fields: read by it, never by its repr (which shows an array's
            # or a table's first and last values only, rt59e F3), where its length bounds the work; else refused.
            try:
                size = len(item)
                parts = [getattr(item, bulk)()] if size <= room else []
                cut |= size > room
            except Exception:  # noqa: BLE001 - no length to bound it by, or a read that fails: not read whole
                parts, cut = [], True
        else:
            # The last resort, for an object that keeps no text where the application reads it: repr writes a hidden
            # character as its escape ("\\u200b"), which no reading as seen undoes: read decoded too (rt58a F3).
            parts = [_repr_read(item)]
        stack.extend(reversed(parts))
    return "\n".join(texts), not stack and not cut and total <= budget


#: How many items `object_text` visits per character of its budget, at most.
_VISITS = 4

#: The dtype kinds of values that carry no text (booleans, numbers, dates and durations): numpy's and pandas'.
_NUMERIC_KINDS = frozenset("biufcmM")
#: The Arrow types whose values carry no text (numbers, booleans, nulls, dates, times, durations), by their names.
_ARROW_NO_TEXT = re.compile(
    r"(?:u?int\d+|halffloat|float|double|bool|null|date\d+|time\d+|timestamp|duration|decimal\d+|\w+_interval)(?:[\[(]|$)"
)
#: The methods that hand over an object's data whole (Arrow's, numpy's, pandas', polars'): read by, never by repr.
_BULK_READS = ("to_pylist", "tolist", "to_list", "to_dict")


def _table_parts(
    item: Any, room: int, chars: int = sys.maxsize, leaf: Callable[[Any], Any] | None = None
) -> tuple[list[Any], bool] | None:
    """A table's or an array's parts as an application shows them (`object_text`), and whether there were more than
    ``room`` or they hold more than ``chars`` characters (not read whole); ``None`` for anything else. Duck-typed on
    the type's attributes, so that pandas, numpy and pyarrow are never imported (an object is one only where they are
    loaded), and read through their public data API:

    - Arrow's tables, arrays, chunked arrays and scalars (`_arrow_reading.arrow_parts`): by their values, a nested one by its
      children, never converted past the walk's bound;

    - a DataFrame (``columns``, ``index``, ``dtypes``, ``items()``): its column and row labels and each column's
      values (iterating it yields its column labels only, rt59d F4);
    - a Series (``dtype`` and an ``index``): its name, its index labels and its values; an Index (``dtype`` and
      ``names``): its names and its labels;
    - another table or array with Arrow's API (``to_pylist``, ``slice``, ``column``): its column names and each
      column's values, sliced to ``room`` rows before it is converted, none where its type holds no text;
    - an array with a ``dtype`` (an ndarray, a pandas extension array, a numpy scalar): its values, the items of a
      0-d one; none where the dtype's kind holds no text (numbers, booleans, dates: a numeric matrix costs one
      visit, never its size against the budget)."""
    cls = type(item)
    arrow = sys.modules.get("pyarrow")
    if arrow is not None and isinstance(
        item, (arrow.Array, arrow.ChunkedArray, arrow.Scalar, arrow.Table, arrow.RecordBatch)
    ):
        try:
            return arrow_parts(arrow, item, room, chars, leaf)
        except Exception:  # noqa: BLE001 - an Arrow object that fails to read as one: not read whole (refused)
            return [], True
    try:
        if callable(getattr(cls, "to_pylist", None)) and callable(getattr(cls, "slice", None)):
            # Arrow's API elsewhere: sliced to ``room`` before it is converted (its repr shows its first and last values
            # only, rt59e F3), so that a long one costs what the walk can visit
            if not callable(getattr(cls, "column", None)):  # an array or a chunked array
                if _ARROW_NO_TEXT.match(str(item.type)):
                    return [], False
                values = item.slice(0, room + 1).to_pylist()
                return values, len(values) > room
            width = min(item.num_columns, room + 1)  # a table or a record batch: its column names, then values
            parts = [item.schema.field(i).name for i in range(width)]
            for i in range(width):
                if len(parts) > room:
                    break
                column = item.column(i)
                if not _ARROW_NO_TEXT.match(str(column.type)):
                    parts.extend(column.slice(0, room + 1 - len(parts)).to_pylist())
            return parts, len(parts) > room
        if all(hasattr(cls, a) for a in ("columns", "index", "dtypes")) and callable(getattr(cls, "items", None)):
            columns = list(islice(item.items(), room + 1))
            values = [getattr(column, "values", column) for _, column in columns]
            return [item.columns, item.index, *values], len(columns) > room
        if not hasattr(cls, "dtype"):
            return None
        labels: list[Any] = []
        if not callable(index := getattr(cls, "index", None)) and index is not None:  # a Series (a list's: a method)
            labels = [getattr(item, "name", None), item.index]
        elif hasattr(cls, "names"):  # an Index
            labels = list(islice(item.names, room))
        kind = getattr(item.dtype, "kind", None)
        if isinstance(kind, str) and kind in _NUMERIC_KINDS:
            return labels, False
        if getattr(item, "ndim", 1) == 0:  # a numpy scalar or a 0-d array: a record's fields, an object
            return [*labels, item.tolist()], False
        values = list(islice(item.flat if hasattr(cls, "flat") else iter(item), room + 1))
        return [*labels, *values], len(values) > room
    except Exception:  # noqa: BLE001 - a table that fails to read as one: read as any other object
        return None


_REPR_ESCAPE = re.compile(r"\\(?:x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))")


def _repr_read(item: Any) -> str:
    """``repr(item)``, and again with the escapes repr writes for unprintable characters decoded (empty when the repr
    itself fails: nothing the caller can show either)."""
    try:
        written = repr(item)
    except Exception:  # noqa: BLE001 - a broken repr
        return ""
    if "\\" not in written:
        return written
    decoded = _REPR_ESCAPE.sub(lambda m: _char(int(m.group(1) or m.group(2) or m.group(3), 16)), written)
    return written if decoded == written else f"{written}\n{decoded}"


def _char(point: int) -> str:
    return chr(point) if point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF else "\ufffd"


# Slots that hold no content: a pydantic model's record of which fields were set.
_NOT_CONTENT = frozenset({"__dict__", "__weakref__", "__pydantic_fields_set__"})
_CODE = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType)


def object_fields(item: Any, limit: int) -> list[Any]:
    """The values an object keeps (at most about ``limit``): its instance dict (a pydantic model's fields, a
    dataclass's, a message's; names with two leading underscores left out) and its slots (a slotted dataclass's, a
    pydantic model's extra fields and private attributes). Read from the instance, never through a property or
    ``__getattr__``: what fails to read is left out. Empty for a class, a module or a function (code, not content)
    and for an object with neither."""
    if isinstance(item, _CODE):
        return []
    values: list[Any] = []
    try:
        attributes = object.__getattribute__(item, "__dict__")
        if isinstance(attributes, Mapping):
            values.extend(
                v for k, v in islice(attributes.items(), limit) if not (isinstance(k, str) and k.startswith("__"))
            )
    except Exception:  # noqa: BLE001 - no instance dict, or a broken one
        pass
    try:
        for cls in type(item).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for name in islice([slots] if isinstance(slots, str) else slots, limit):
                slot = cls.__dict__.get(name)
                if name in _NOT_CONTENT or not isinstance(slot, types.MemberDescriptorType):
                    continue
                try:
                    values.append(slot.__get__(item, type(item)))
                except AttributeError:  # a slot never set
                    continue
    except Exception:  # noqa: BLE001 - broken slots: what was read so far
        pass
    # A pydantic model's computed fields: in what model_dump and the application show, computed from the others.
    computed = getattr(type(item), "model_computed_fields", None)
    if isinstance(computed, Mapping):
        for name in islice(computed, limit):
            try:
                values.append(getattr(item, name))
            except Exception:  # noqa: BLE001 - a computed field that fails: nothing shown of it either
                continue
    return values
