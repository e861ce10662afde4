"""Arrow's tables, arrays, chunked arrays and scalars read by value within the walk's bound (`arrow_parts`), for
`_tool_errors.object_text`: one row of a list, map or struct column can hold any number of values and one string any
length, so nothing is converted (``to_pylist``, ``as_py``) before its size is known to fit; never read by repr (it
shows the first and last values only, with escapes). pyarrow is never imported here: the caller passes the module
once an application has loaded it."""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import Any

from qwenguard.core.formats.media import SNIFF_BYTES

__all__ = ["arrow_parts"]


def arrow_parts(pa: Any, item: Any, room: int, chars: int, leaf: Callable[[Any], Any] | None) -> tuple[list[Any], bool]:
    """An Arrow object's parts (`_tool_errors._table_parts`; ``pa`` is pyarrow, loaded), each read within the walk's bound whatever
    its shape: one row of a list, map or struct column can hold any number of values, one string any length (rt60t).

    A table or a record batch: its column names, then its columns. A chunked array: its chunks. An array, sliced to
    ``room`` rows first: a list's (list, large, fixed-size, view, map) by the one run of child values its rows span (a
    map's keys, then its items), a struct's by its field names and children, a dictionary's by the entries its rows
    use, a run-end encoded one's by its runs' values, a union's and an extension's by their children and storage (each
    read again as an array, bounded again), strings and bytes by value (`_arrow_values`). A scalar (an array's
    element, ``pa.scalar``) the same way, by value (``as_py``), never by its repr. None where the type holds no text
    (numbers, booleans, dates: a million cost nothing). What cannot be read within the bound is not read whole."""
    if isinstance(item, (pa.Table, pa.RecordBatch)):
        width = min(item.num_columns, room + 1)
        names = [item.schema.field(i).name for i in range(width)]
        return [*names, *(item.column(i) for i in range(width))], item.num_columns > room
    kind = _arrow_kind(pa, item.type)
    if not _arrow_text(pa, item.type, room):
        return [], False
    if isinstance(item, pa.Scalar):
        return _arrow_scalar_parts(pa, item, kind, room, chars, leaf)
    if isinstance(item, pa.ChunkedArray):
        chunks, rows = [], 0
        for chunk in islice(item.iterchunks(), room + 1):
            if rows > room:
                break
            chunks.append(chunk)
            rows += len(chunk)
        return chunks, len(item) > room or len(chunks) < item.num_chunks
    part, over = item.slice(0, room + 1), len(item) > room
    t = item.type
    if kind in ("string", "binary"):
        values, cut = _arrow_values(pa, part, kind, chars, leaf)
        return values, over or cut
    if kind == "list" and pa.types.is_fixed_size_list(t):
        size = t.list_size
        return [part.values.slice(part.offset * size, len(part) * size)], over
    if kind in ("list", "map"):
        offsets = part.offsets  # absolute, into the child of the whole array
        first, last = offsets[0].as_py(), offsets[-1].as_py()
        child = part.values.slice(first, last - first)
        return ([child.field(0), child.field(1)] if kind == "map" else [child]), over
    if kind == "view":  # each row its own window into the child, in any order
        spans = zip(part.offsets.to_pylist(), part.sizes.to_pylist())
        return [part.values.slice(start, size) for start, size in spans if start is not None and size], over
    if kind in ("struct", "union"):
        width = min(t.num_fields, room + 1)
        names = [t.field(i).name for i in range(width)] if kind == "struct" else []
        return [*names, *(part.field(i) for i in range(width))], over or t.num_fields > room
    if kind == "dictionary":  # the entries its rows use, each once: never decoded (a row per use of a long entry)
        used = dict.fromkeys(i for i in part.indices.to_pylist() if i is not None)
        return [part.dictionary.slice(i, 1) for i in used], over
    if kind == "runs":
        return [part.values.slice(part.find_physical_offset(), part.find_physical_length())], over
    return [part.storage], over  # an extension type's


def _arrow_scalar_parts(
    pa: Any, item: Any, kind: str, room: int, chars: int, leaf: Callable[[Any], Any] | None
) -> tuple[list[Any], bool]:
    """An Arrow scalar's parts (`arrow_parts`): its value (``as_py``) where its bytes fit the bound, its children or
    its one value where it is nested."""
    if not item.is_valid:
        return [], False
    if kind in ("string", "binary"):
        size = item.as_buffer().size  # the value's own bytes, never copied to tell
        if size <= 4 * (chars + 1):
            return [item.as_py()], False
        return [], not (kind == "binary" and _arrow_media(item, leaf))
    if kind in ("list", "map", "view"):
        values = item.values
        return ([values.field(0), values.field(1)] if kind == "map" else [values]), False
    if kind == "struct":
        width = min(item.type.num_fields, room + 1)
        names = [item.type.field(i).name for i in range(width)]
        return [*names, *(item[i] for i in range(width))], item.type.num_fields > room
    return [item.value], False  # a dictionary's, a run's, a union's, an extension's one value


def _arrow_values(
    pa: Any, part: Any, kind: str, chars: int, leaf: Callable[[Any], Any] | None
) -> tuple[list[Any], bool]:
    """The values of an Arrow array of strings or bytes (``room`` rows at most), converted (``to_pylist``) only where
    their bytes fit the walk's bound: UTF-8 (or any text reading of bytes) has at least a character for every four
    bytes, so that more than ``4 * (chars + 1)`` bytes cannot be read whole. Bytes past it that the walk's ``leaf``
    reads as media (an image: none of its bytes are text, told by their start, `_arrow_media`) are left out, not
    refused; any other value past it is."""
    bound = 4 * (chars + 1)
    if _arrow_sizes(pa, part, whole=True)[0] <= bound:
        return part.to_pylist(), False
    if kind != "binary" or leaf is None:
        return [], True
    sizes = _arrow_sizes(pa, part)
    runs, start, used = [], 0, 0
    for row, size in enumerate(sizes):
        if used + size <= bound:
            used += size
        elif _arrow_media(part[row], leaf):
            runs.append((start, row))
            start = row + 1
        else:
            return [], True
    runs.append((start, len(sizes)))
    return [value for a, b in runs if b > a for value in part.slice(a, b - a).to_pylist()], False


def _arrow_sizes(pa: Any, part: Any, whole: bool = False) -> list[int]:
    """The byte length of each value of an Arrow array of strings or bytes, from its offsets (or views): no value is
    copied to tell; with ``whole``, their sum alone (from the first and last offsets: no row is looked at)."""
    rows, t = len(part), part.type
    if not rows:
        return [0] if whole else []
    if pa.types.is_fixed_size_binary(t):
        return [t.byte_width * rows] if whole else [t.byte_width] * rows
    buffer = part.buffers()[1]
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):  # 16-byte views, the length first
        words = pa.Array.from_buffers(pa.int32(), 4 * rows, [None, buffer], offset=4 * part.offset).to_pylist()
        return [sum(words[::4])] if whole else words[::4]
    width = pa.int64() if pa.types.is_large_string(t) or pa.types.is_large_binary(t) else pa.int32()
    offsets = pa.Array.from_buffers(width, rows + 1, [None, buffer], offset=part.offset)
    if whole:
        return [offsets[rows].as_py() - offsets[0].as_py()]
    listed = offsets.to_pylist()
    return [end - start for start, end in zip(listed, listed[1:])]


def _arrow_media(scalar: Any, leaf: Callable[[Any], Any] | None) -> bool:
    """Does the walk's ``leaf`` read this Arrow bytes value as media (no text: ``""``)? Told by its start, as the leaf
    tells it (`core.formats.media.SNIFF_BYTES`), so that a long image costs no more than its start."""
    if leaf is None or not scalar.is_valid:
        return False
    buffer = scalar.as_buffer()
    return buffer.size > SNIFF_BYTES and leaf(buffer.slice(0, SNIFF_BYTES + 1).to_pybytes()) == ""


def _arrow_kind(pa: Any, t: Any) -> str:
    """How `_arrow_parts` reads values of Arrow type ``t``: "string", "binary", "list", "view", "map", "struct",
    "union", "dictionary", "runs", "extension", or "" (numbers, booleans, nulls, dates, times, durations, decimals:
    no text)."""
    types = pa.types
    if types.is_string(t) or types.is_large_string(t) or types.is_string_view(t):
        return "string"
    if types.is_binary(t) or types.is_large_binary(t) or types.is_binary_view(t) or types.is_fixed_size_binary(t):
        return "binary"
    if types.is_map(t):
        return "map"
    if types.is_list(t) or types.is_large_list(t) or types.is_fixed_size_list(t):
        return "list"
    if types.is_list_view(t) or types.is_large_list_view(t):
        return "view"
    for kind, test in (("struct", types.is_struct), ("union", types.is_union), ("dictionary", types.is_dictionary)):
        if test(t):
            return kind
    if types.is_run_end_encoded(t):
        return "runs"
    return "extension" if isinstance(t, pa.BaseExtensionType) else ""


def _arrow_text(pa: Any, t: Any, room: int) -> bool:
    """Can values of Arrow type ``t`` hold text (strings or bytes anywhere in it)? Its children's types are looked
    at, at most ``room`` of them (a type past that is taken to hold text)."""
    stack, seen = [t], 0
    while stack:
        seen += 1
        if seen > room + 1:
            return True
        current = stack.pop()
        kind = _arrow_kind(pa, current)
        if kind in ("string", "binary"):
            return True
        if kind in ("list", "view"):
            stack.append(current.value_type)
        elif kind == "map":
            stack.extend((current.key_type, current.item_type))
        elif kind in ("struct", "union"):
            stack.extend(current.field(i).type for i in range(min(current.num_fields, room + 1)))
        elif kind in ("dictionary", "runs"):
            stack.append(current.value_type)
        elif kind == "extension":
            stack.append(current.storage_type)
    return False
