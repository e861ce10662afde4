"""How a stream's pieces of a block read whole say what they say once LangChain adds them up (`StreamReading`,
rt60c F1): ``AIMessageChunk.__add__`` joins the strings of blocks with one ``index`` and of one ``additional_kwargs``
key, so the pieces are read joined, key names once, not each piece with its keys between every two words."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from qwenguard.core.streaming.gen_windows import ends_sentence

__all__ = ["ID_KEYS", "Runs", "StreamReading"]

#: Keys whose value is opaque to a reader when it is one token: ids (up to 64 identifier characters, as a tool
#: call's, `_messages.sent_labels`) and a block's kind; signatures and encrypted data are `_messages.SEALED_KEYS`.
#: Only ids here, not the reply's labels of `_common.LABEL_KEYS` (a status, a role, a model): a block is sent to the
#: model as it is, and an underscored phrase under such a key is words it reads.
ID_KEYS = frozenset({"type", "id", "call_id", "tool_call_id", "tool_use_id", "file_id", "container_id"})


def _mergeable(index: Any) -> bool:
    """Does LangChain add a list item with this ``index`` to an earlier item with the same one (``merge_lists``: an
    int, ``True`` too, or an ``lc_`` string)?"""
    return isinstance(index, int) or (isinstance(index, str) and index[:3] == "lc_")


def _unset(ident: Any) -> bool:
    return ident is None or (isinstance(ident, str) and not ident)


#: Keys whose value LangChain keeps once where a later piece's equals the value added up (``merge_dicts``).
_KEPT_ONCE = frozenset({"id", "output_version", "model_provider"})


class Runs(NamedTuple):
    """What the pieces read since the last `StreamReading.runs` did to the strings' runs (paths, as `StreamReading`
    numbers them)."""

    extended: frozenset[int]  # strings a piece of which was read
    continued: frozenset[int]  # broken strings read on with a word: their last word is now judged with the next
    broken: frozenset[int]  # strings whose run another text broke mid-sentence, not read on since


#: A chunk's `Runs` when it read no string whole.
_NO_RUNS = Runs(frozenset(), frozenset(), frozenset())


class StreamReading:
    """What a stream's pieces of a block read whole (`_passed_text`) say once LangChain adds them up (rt60c F1).

    A provider streams a block of a kind the guard does not know (a ``non_standard`` block, an ``additional_kwargs``
    key no provider class writes, such as OpenRouter's ``reasoning_details``) in pieces, and ``AIMessageChunk.__add__``
    joins the pieces' strings under each key (list items by their ``index``). Each piece read whole put its key names
    and kind between every two words (``"Mix\nreasoning_details\n ammonium"``), and the clause was never judged as it
    reads. Read through one `StreamReading` per stream, a key name is read once, where its value starts; a piece
    that continues the last string read joins it with nothing between; an id, a kind or a signature is told by its
    value added up (`_opaque`); a value LangChain keeps once (an equal id, an ``lc_`` index) is read once, any
    other piece as it adds up, a repeated one too (`_repeat`, rt60e F3). A piece that goes back to a string read
    before another is read after that string's last `_TAIL_CHARS` characters again, so the words across the break
    are read together; once that string is longer, the stream is `interleaved`: it no longer reads as the sum does (a
    held stream then judges the sum whole, as for interleaved blocks).

    Paths are numbered: a key of a mapping is the same path in every piece; a list item is the path of the item
    LangChain adds it to, exactly as ``merge_lists`` does (rt60e F2): the first earlier item with its ``index`` whose
    ``id`` is not another (a piece with another id is an item of its own), never one of the first list at a place
    (LangChain copies that list as it is); any other item is new. Where the reading cannot follow the sum (a piece
    of a content block read otherwise than the block it joins, a plain text block's piece read whole; a first list
    whose items share an index), the stream is `interleaved`.

    A string whose run another string breaks mid-sentence is `broken` (`runs`) until a piece of it is read on with a
    word, after its last characters again (rt66 G): its last word was read before a line of other text (OpenRouter's
    ``format`` after each piece's ``text``), which a window takes for the line's end, and not with the next words of
    its own string. A held stream keeps the chunks that wrote such a word until then (`_holding.HeldStream`)."""

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
        "_slots",
        "_batches",
        "_gen",
        "_chunk",
        "_filled",
        "_content",
        "_ahead",
        "_open",
        "_extended",
        "_continued",
        "_broken",
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
        # (list path, index) -> its items as LangChain adds them up: [id so far, path, how its first piece is read].
        self._slots: dict[tuple[int, Any], list[list[Any]]] = {}
        self._batches: dict[int, tuple[int, bool]] = {}  # list path -> (the list being read, is it the first there)
        self._gen = 0  # one per `take`: a value read whole is one piece, its lists one each
        self._chunk = 0  # one per chunk's content list (`contents`)
        self._filled: dict[int, str] = {}  # path -> the repeated piece read ahead there (`_repeat`)
        self._content = self.child(0, "content")  # the message's content list
        self._ahead = False  # is the last path's run a label read ahead (`_repeat`): it breaks off no word
        self._open: dict[int, int] = {}  # broken path -> where its last word before the break starts
        self._extended: set[int] = set()  # `runs`: paths a piece of which was read since the last call
        self._continued: set[int] = set()
        self._broken: set[int] = set()
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
        """The path of an item of the list at ``parent`` (every item of one list in turn): the earlier item's when
        LangChain adds them up (`_join`), else a new one."""
        return self._join(parent, self._gen, item, "item")

    def contents(self) -> None:
        """A chunk's content list starts: its blocks (`block`) are added to the blocks before as one list."""
        self._chunk += 1

    def _join(self, parent: int, batch: int, item: Any, how: str | None) -> int:
        """``item``'s path in the list at ``parent`` (``batch``: which piece's list it is in), as ``merge_lists``
        adds it up; ``how`` its piece is read (``None``: not by this reading, a plain text block)."""
        seen = self._batches.get(parent)
        if seen is None or seen[0] != batch:
            seen = self._batches[parent] = (batch, seen is None)
        if not isinstance(item, Mapping) or "index" not in item or not _mergeable(item["index"]):
            return self._new() if how is not None else 0
        ident = item.get("id")
        slots = self._slots.setdefault((parent, item["index"]), [])
        for slot in slots:
            if not (_unset(slot[0]) or _unset(ident) or slot[0] == ident):
                continue  # another id: LangChain keeps the piece apart
            if seen[1]:
                # The first list at this place: LangChain copies it as it is, unless an empty one came before,
                # which a reading is not shown.
                self.interleaved |= slot[2] is not None or how is not None
                break
            if slot[2] != how and not (slot[2] == "unknown" and how == "kindless"):
                # The sum reads the item as its first piece's kind says, not as this one's (a piece without a kind
                # after one of a kind read whole is read the same, its ids as words: no less than the sum).
                self.interleaved = True
            if _unset(slot[0]) and ident is not None:
                slot[0] = ident  # the id the item added up has (``merge_dicts``)
            return slot[1]
        path = self.item(self._new())
        slots.append([ident, path, how])
        return path

    def item(self, path: int) -> int:
        """Mark ``path`` as a list item LangChain adds up: a later piece's ``type`` there is dropped (``merge_lists``)."""
        self._labels.add(self.child(path, "type"))
        return path

    def block(self, block: Any, how: str | None) -> int:
        """The path of a content block of this chunk's content list (`contents`), as LangChain adds it to the
        blocks before (`_join`); ``how`` it is read whole (``None``: a block read otherwise, only placed)."""
        return self._join(self._content, self._chunk, block, how)

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
        if key == "index":
            if first:
                self._values[path] = text
            elif self._values.get(path, "")[:3] == "lc_":
                return  # LangChain keeps an ``lc_`` index as it first came; any other it adds up
        elif key in _KEPT_ONCE:
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

    def runs(self) -> Runs:
        """What the pieces read since the last call did to the strings' runs (`Runs`)."""
        if not (self._extended or self._continued or self._broken):
            return _NO_RUNS  # the common chunk (no string read whole): nothing built for it
        runs = Runs(frozenset(self._extended), frozenset(self._continued), frozenset(self._broken & self._open.keys()))
        self._extended.clear()
        self._continued.clear()
        self._broken.clear()
        return runs

    def _close(self, broken: bool = False) -> None:
        """Keep the tail of the last path's text (`_TAIL_CHARS`) before another is read; ``broken``: a line of other
        text is read next, so a last word of the run not ending a sentence is `broken` (a label read ahead is not:
        its own copies followed it)."""
        if self._last >= 0 and self._run:
            path, run, self._run = self._last, "".join(self._run), []
            tail = self._tails[path] = (self._tails.get(path, "") + run)[-self._TAIL_CHARS :]
            # A list item's kind is whole at its first piece (LangChain keeps it): it breaks off no word either.
            whole = self._ahead or path in self._labels or path in self._open
            if broken and not whole and tail.strip() and not ends_sentence(tail):
                words = tail.rstrip()
                start = max(words.rfind(" "), words.rfind("\n"), words.rfind("\t")) + 1
                self._open[path] = self._sizes[path] - len(tail) + start
                self._broken.add(path)

    def _read_on(self, path: int, text: str, again: str | None, size: int) -> None:
        """A piece ``text`` of a broken string, ``size`` characters read before it, is read after ``again``, its
        last characters (``None``: in the run that read them): once the word it broke off is among them and a word
        follows, that word is judged with the next; once it is not, the stream no longer reads as its sum
        (`interleaved`)."""
        start = self._open.get(path)
        if start is None:
            return
        if again is not None and size - len(again) > start:
            del self._open[path]  # never `continued`: what it wrote waits for the sum judged whole
            self.interleaved = True
        elif text.strip():
            del self._open[path]
            self._continued.add(path)

    def _emit(self, path: int, text: str) -> None:
        if path >= 0:
            if self._filled and self._filled.get(path) != text:
                self._filled.pop(path, None)  # not a repeat: nothing is read ahead of it
            if path == self._last:
                self._run.append(text)  # the same string, continued: nothing between, as LangChain joins it
                self._out.append(text)
                self._prev[path] = text
                self._extended.add(path)
                self._ahead = False
                if self._open:
                    self._read_on(path, text, None, self._sizes[path])
                self._sizes[path] += len(text)
                return
            if path in self._texts and self._prev.get(path) == text:
                self._repeat(path, text)
                return
        self._close(broken=True)
        self._ahead = False
        again = ""
        if path >= 0 and path in self._texts:
            # Back to a string read before another: its last characters again, so the words across the break are
            # judged together; past them the stream no longer reads as its sum.
            again = self._tails.get(path, "")
            self.interleaved |= self._sizes[path] > self._TAIL_CHARS
        self._out.append("\n" + again + text)
        self._last = path
        if path >= 0:
            self._extended.add(path)
            if self._open:
                self._read_on(path, text, again, self._sizes.get(path, 0))
            self._texts.add(path)
            self._prev[path] = text
            self._sizes[path] = self._sizes.get(path, 0) + len(text)
            self._run = [text]

    def _repeat(self, path: int, text: str) -> None:
        """A piece that repeats its string's last one, another string read between: a label every piece carries
        (OpenRouter's ``format``), which LangChain adds up like any string (rt60e F3: never left out). Read at its
        first repeat after the string's tail, as many times over as fill `_TAIL_CHARS` (the words across every
        copy); a later repeat adds no words, and is left out so that the other string goes on unbroken."""
        tail = self._tails.get(path, "")
        self._sizes[path] += len(text)
        if self._filled.get(path) == text:
            self._tails[path] = (tail + text)[-self._TAIL_CHARS :]  # the string as it is, if it goes on otherwise
            return
        self._close(broken=True)
        self.interleaved |= self._sizes[path] - len(text) > self._TAIL_CHARS
        self._out.append("\n" + tail + text * -(-self._TAIL_CHARS // len(text)))
        self._filled[path] = text
        self._extended.add(path)
        if self._open:
            self._read_on(path, text, tail, self._sizes[path] - len(text))
        self._last = path
        self._ahead = True
        self._run = [text]

    def take(self) -> str:
        """The text read since the last call."""
        out, self._out = "".join(self._out), []
        self._gen += 1
        return out
