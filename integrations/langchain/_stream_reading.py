"""How a stream's pieces of a block read whole say what they say once LangChain adds them up (`StreamReading`,
rt60c F1): ``AIMessageChunk.__add__`` joins the strings of blocks with one ``index`` and of one ``additional_kwargs``
key, so the pieces are read joined, key names once, not each piece with its keys between every two words."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ID_KEYS", "StreamReading"]

#: Keys whose value is opaque to a reader when it is one token: ids (up to 64 identifier characters, as a tool
#: call's, `_messages.sent_labels`) and a block's kind; signatures and encrypted data are `_messages.SEALED_KEYS`.
#: Only ids here, not the reply's labels of `_common.LABEL_KEYS` (a status, a role, a model): a block is sent to the
#: model as it is, and an underscored phrase under such a key is words it reads.
ID_KEYS = frozenset({"type", "id", "call_id", "tool_call_id", "tool_use_id", "file_id", "container_id"})


def _mergeable(index: Any) -> bool:
    """Does LangChain add a list item with this ``index`` to the earlier item with the same one (``merge_lists``)?"""
    return (isinstance(index, int) and not isinstance(index, bool)) or (isinstance(index, str) and index[:3] == "lc_")


class StreamReading:
    """What a stream's pieces of a block read whole (`_passed_text`) say once LangChain adds them up (rt60c F1).

    A provider streams a block of a kind the guard does not know (a ``non_standard`` block, an ``additional_kwargs``
    key no provider class writes, such as OpenRouter's ``reasoning_details``) in pieces, and ``AIMessageChunk.__add__``
    joins the pieces' strings under each key (list items by their ``index``). Each piece read whole put its key names
    and kind between every two words (``"Mix\nreasoning_details\n ammonium"``), and the clause was never judged as it
    reads. Read through one `StreamReading` per stream, a key name is read once, where its value starts; a piece
    that continues the last string read joins it with nothing between; an id, a kind or a signature is told by its
    value added up (`_opaque`); a piece that repeats the last one of a string other than the last read (a
    ``format`` or ``status`` every chunk carries) is read once. A piece that goes back to a string read before
    another is read after that string's last `_TAIL_CHARS` characters again, so the words across the break are
    read together; once that string is longer, the stream is `interleaved`: it no longer reads as the sum does (a
    held stream then judges the sum whole, as for interleaved blocks).

    Paths are numbered: a key of a mapping, or a list item LangChain adds up by its ``index``, is the same path in
    every piece; any other list item is new."""

    __slots__ = (
        "_ids",
        "_said",
        "_read",
        "_texts",
        "_pending",
        "_values",
        "_labels",
        "_prev",
        "_sizes",
        "_tails",
        "_run",
        "_last",
        "_out",
        "interleaved",
    )

    #: How long an ``id`` added up is kept to tell a repeated piece (LangChain keeps an equal id once).
    _ID_CHARS = 4096
    #: How much of a string is read again before a piece that goes back to it.
    _TAIL_CHARS = 256

    def __init__(self) -> None:
        self._ids: dict[tuple[int, Any], int] = {}
        self._said: set[int] = set()  # paths whose key name was read
        self._read: set[int] = set()  # paths a piece of whose value came
        self._texts: set[int] = set()  # paths whose text was read
        self._pending: dict[int, list[str]] = {}  # an id or a signature so far: no words yet
        self._values: dict[int, str] = {}  # an ``id``'s value added up (a short one)
        self._labels: set[int] = set()  # a list item's ``type``: LangChain keeps the first piece's
        self._prev: dict[int, str] = {}  # each path's last piece read
        self._sizes: dict[int, int] = {}  # each path's text read, in characters
        self._tails: dict[int, str] = {}  # each path's last characters read, up to the last path's run
        self._run: list[str] = []  # the last path's pieces since it became the last
        self._last = -1
        self._out: list[str] = []
        #: Whether a piece went back to a string read before another, past `_TAIL_CHARS`: the sum reads otherwise.
        self.interleaved = False

    def _new(self) -> int:
        path = self._ids[(-1, len(self._ids))] = len(self._ids) + 1
        return path

    def child(self, parent: int, key: Any) -> int:
        """The path of ``key`` in the mapping at ``parent``."""
        path = self._ids.get((parent, key))
        if path is None:
            path = self._ids[(parent, key)] = len(self._ids) + 1
        return path

    def element(self, parent: int, item: Any) -> int:
        """The path of a list item: the earlier item's when LangChain adds them up (by ``index``), else a new one."""
        if isinstance(item, Mapping) and _mergeable(item.get("index")):
            return self.item(self.child(parent, ("index", item["index"])))
        return self._new()

    def item(self, path: int) -> int:
        """Mark ``path`` as a list item LangChain adds up: a later piece's ``type`` there is dropped (``merge_lists``)."""
        self._labels.add(self.child(path, "type"))
        return path

    def block(self, block: Mapping[str, Any]) -> int:
        """The path of a content block (by its ``index``, as LangChain adds blocks up)."""
        index = block.get("index")
        return self.item(self.child(0, ("block", index)) if _mergeable(index) else self._new())

    def key(self, path: int, name: str) -> None:
        """A key name, read once: where its value is first read."""
        if path not in self._said:
            self._said.add(path)
            self._emit(-1, name)

    def leaf(self, path: int, key: str, text: str, opaque: Callable[[str, str], bool] | None) -> None:
        """A streamed piece ``text`` of the string at ``path`` (under ``key``; ``opaque`` tells an id or a signature
        from words, ``None`` where all of it is words)."""
        first = path not in self._read
        self._read.add(path)
        if path in self._labels and not first:
            return  # a later piece's kind: LangChain keeps the first
        if key in ("id", "index"):
            value = self._values.get(path)
            if value == text:
                return  # LangChain keeps an equal id once
            if first or value is not None:
                joined = (value or "") + text
                if len(joined) <= self._ID_CHARS:
                    self._values[path] = joined
                else:
                    self._values.pop(path, None)
        pending = self._pending.get(path)
        if opaque is not None and (first or pending is not None):
            # Told by the value added up: an id is one identifier (64 characters at most), a signature one base64
            # token, so a piece that is not one makes the whole none either.
            whole = "".join(pending) + text if pending is not None and key in ID_KEYS else text
            if opaque(key, whole):
                self._pending.setdefault(path, []).append(text)
                return
            if pending is not None:
                text = "".join(self._pending.pop(path)) + text
        self._emit(path, text)

    def touch(self) -> None:
        """Other text was read after the last piece: the next piece starts a line of its own."""
        if self._last >= 0:  # every chunk of an ordinary text stream comes here: nothing to do
            self._close()
            self._last = -1

    def _close(self) -> None:
        """Keep the tail of the last path's text (`_TAIL_CHARS`) before another is read."""
        if self._last >= 0 and self._run:
            run, self._run = "".join(self._run), []
            self._tails[self._last] = (self._tails.get(self._last, "") + run)[-self._TAIL_CHARS :]

    def _emit(self, path: int, text: str) -> None:
        if path >= 0:
            if path == self._last:
                self._run.append(text)  # the same string, continued: nothing between, as LangChain joins it
                self._out.append(text)
                self._prev[path] = text
                self._sizes[path] += len(text)
                return
            if path in self._texts and self._prev.get(path) == text:
                return  # a label every piece repeats (a ``format``, a ``status``): read once
        self._close()
        again = ""
        if path >= 0 and path in self._texts:
            # Back to a string read before another: its last characters again, so the words across the break are
            # judged together; past them the stream no longer reads as its sum.
            again = self._tails.get(path, "")
            self.interleaved |= self._sizes[path] > self._TAIL_CHARS
        self._out.append("\n" + again + text)
        self._last = path
        if path >= 0:
            self._texts.add(path)
            self._prev[path] = text
            self._sizes[path] = self._sizes.get(path, 0) + len(text)
            self._run = [text]

    def take(self) -> str:
        """The text read since the last call."""
        out, self._out = "".join(self._out), []
        return out
