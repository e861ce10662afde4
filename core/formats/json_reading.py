"""A JSON answer as the application reads it: parsed, its strings decoded (rt57b F3, rt58a F1 F2, rt58e F4 F5).

A structured answer in text reaches the application through a JSON parser, which turns ``"\\u0061mmonium"`` into
``"ammonium"``. A guard that judged the raw text never read words written as ``\\uXXXX`` escapes (or ``\\/``). An
answer holding such an escape is judged parsed too: `parsed_reading` writes the parse back with its strings decoded
(``json.dumps(value, ensure_ascii=False)``). Every other escape (``\\n``, ``\\"``, ``\\\\``...) is how ``json.dumps``
writes the parse again: an answer with none of the rewritten kind reads the same both ways and costs one scan.
Some parsers read more: a YAML fallback (LlamaIndex's ``parse_json_markdown``) also decodes ``\\x4D``,
``\\U0000004D``, ``\\N``... and ``!!binary`` (`has_decoded_escape`, `yaml_value`); a truncated stream is repaired
(`repaired`); text no parser reads is still read as its string literals, decoded (`literals_reading`); a string
that is itself JSON is read parsed too (`json_strings_parsed`: a tool's ``payload: str`` it ``json.loads``).
Framework-free: each adapter passes the parsers its framework reads with; `EscapeWatch` follows a stream.

    >>> parsed_reading('{"a": "\\\\u0061mmonium"}')
    '{"a": "ammonium"}'
    >>> parsed_reading('{"a": "plain\\\\n"}') is None
    True
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "EscapeWatch",
    "Written",
    "arguments_parsed",
    "has_decoded_escape",
    "has_rewritten_escape",
    "json_strings_parsed",
    "literals",
    "literals_reading",
    "parsed_reading",
    "repaired",
    "yaml_value",
]

#: A backslash escape that ``json.dumps`` never writes for what it decodes to (``\\uXXXX``, ``\\/``): after an even
#: run of backslashes (an odd run ends in an escaped backslash, not an escape).
_REWRITTEN_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\[u/]")
#: An escape a YAML double-quoted string decodes otherwise than the raw text reads: those beyond ``json.dumps``'s
#: own (``\\x4D``, ``\\U0000004D``, ``\\N``, ``\\_``, ``\\e``, ``\\0``, a backslash before a line break,
#: which joins the lines...). Any other (``\\d``) is an error to YAML in a quoted string, literal outside one.
_DECODED_ESCAPE = re.compile(r"\\[xuUN_LPeav0 \t/\r\n]")
#: Where a JSON value may start: a stream's escape counts only after one (prose quoting ``C:\\users`` unquoted is
#: not held). A bare JSON string (``"\\u004dix..."``) is a value LangChain's parsers read too (rt58a F2).
_JSON_OPENERS = ("{", "[", '"')
#: The most text a YAML reading parses (PyYAML's constructor is Python, some 6 microseconds a character here): past
#: it the string literals are read decoded instead (`literals_reading`, about a seventh of that), so the cost stays
#: bounded.
YAML_MAX_CHARS = 32_768
#: How deep and how much `json_strings_parsed` reads strings that are themselves JSON.
NESTED_DEPTH = 4
NESTED_MAX_CHARS = 200_000


def has_rewritten_escape(text: str) -> bool:
    """Does ``text`` hold an escape whose decoded reading ``json.dumps`` would write otherwise?"""
    # The substring tests first: an answer without either pair (most) costs two scans in C, not the pattern's.
    return ("\\u" in text or "\\/" in text) and _REWRITTEN_ESCAPE.search(text) is not None


def has_decoded_escape(text: str) -> bool:
    """Does ``text`` hold anything a YAML reading decodes otherwise than the raw text reads: an escape beyond
    ``json.dumps``'s own, or a tag (``!!binary``, ``!<tag:...>``)?"""
    return ("\\" in text and _escape_at_even(text, _DECODED_ESCAPE)) or "!!" in text or "!<" in text


def _escape_at_even(text: str, pattern: re.Pattern[str]) -> bool:
    # A match of ``pattern`` (a backslash first) after an even run of backslashes: an escape, not an escaped
    # backslash. The pattern has a literal start, which the engine scans for in C (a lookbehind makes it try every
    # position); each run is counted back once: linear.
    for m in pattern.finditer(text):
        start = run = m.start()
        while run > 0 and text[run - 1] == "\\":
            run -= 1
        if (start - run) % 2 == 0:
            return True
    return False


def parsed_reading(
    text: str,
    parsers: Sequence[Callable[[str], Any]] = (json.loads,),
    trigger: Callable[[str], bool] = has_rewritten_escape,
) -> str | None:
    """``text`` as each of ``parsers`` that reads it hands it to the application, written back with its strings
    decoded (the distinct readings, one a line: the application may read with any of them); ``None`` when
    ``trigger`` finds nothing a parse would read otherwise, or no parser reads a JSON value holding text (a number,
    ``true``, ``null``). A parser may return `Written` (its reading, written already) or raise when it reads none."""
    # Any backslash before ``u`` or ``/``: an escape, or (after an escaped backslash) a string that is itself JSON
    # holding one, read parsed in turn. The default trigger finds no more: an answer without either costs two scans.
    if "\\u" not in text and "\\/" not in text and (trigger is has_rewritten_escape or not trigger(text)):
        return None
    direct = has_rewritten_escape(text)
    readings: list[str] = []
    for parse in parsers:
        try:
            value = parse(text)
        except Exception:  # noqa: BLE001, S112 - not JSON to this parser (deep nesting: RecursionError)
            continue
        if isinstance(value, Written):
            reading = value.text
        elif value is None or isinstance(value, bool | int | float):
            continue
        else:
            within = json_strings_parsed(value)
            if within is value and not direct:
                continue  # written back, it reads as the text does
            reading = json.dumps(within, ensure_ascii=False)
        if reading and reading not in readings:
            readings.append(reading)
    return "\n".join(readings) if readings else None


class Written:
    """A parser's reading, written already (a YAML value, shared nodes once: `yaml_value`)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def repaired(text: str) -> str:
    """``text`` as LlamaIndex's streaming programs repair a truncated JSON answer before they parse it
    (``program.utils._repair_incomplete_json``): an odd count of ``"`` closed, missing ``}`` added."""
    if not text.strip():
        return "{}"
    if text.count('"') % 2 == 1:
        text += '"'
    return text + "}" * max(0, text.count("{") - text.count("}"))


# -- YAML -----------------------------------------------------------------------------------------------------------


def yaml_value(text: str) -> Written:
    """``text`` as ``yaml.safe_load`` reads it, written back (`Written`): strings decoded, ``!!binary`` bytes read
    as UTF-8 (as a ``str`` field takes them), a node that aliases repeat written once (no billion laughs). Past
    `YAML_MAX_CHARS` the text's string literals, decoded (`literals_reading`). Raises when YAML reads none."""
    if len(text) > YAML_MAX_CHARS:
        return Written(literals_reading(text))
    import yaml  # noqa: PLC0415 - LlamaIndex's fallback needs PyYAML; only the texts that reach it import it

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    value = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader (C where libyaml is there)
    if value is None or isinstance(value, bool | int | float):
        raise ValueError("no text in the YAML value")
    plain = _plain(value, set(), 0)
    if not _reads_otherwise(plain, text):
        raise ValueError("the YAML value reads as the text does")  # most: no second check for nothing
    return Written(json.dumps(plain, ensure_ascii=False, default=str))


def _reads_otherwise(value: Any, text: str) -> bool:
    # Does the value hold a string the raw text does not show as it is (a decoded escape, binary, a joined line)?
    # Strings are looked for from where the last was found (document order): linear in the text.
    at = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = text.find(item, at)
            if found < 0 and item not in text:
                return True
            at = found if found >= 0 else at
        elif isinstance(item, dict):
            for k, v in reversed(item.items()):
                stack += [v, k]
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return False


def _plain(value: Any, seen: set[int], depth: int) -> Any:
    # JSON-writable, each shared container or string once (an alias repeats what was read where it was anchored).
    if depth > 200:
        raise ValueError("too deep")
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        if len(value) > 1:  # the empty string and one-character strings are shared by Python itself
            if id(value) in seen:
                return None
            seen.add(id(value))
        return value
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        if id(value) in seen:
            return None
        seen.add(id(value))
        if isinstance(value, Mapping):
            return {str(_plain(k, seen, depth + 1)): _plain(v, seen, depth + 1) for k, v in value.items()}
        return [_plain(v, seen, depth + 1) for v in value]
    return value if value is None or isinstance(value, bool | int | float) else str(value)


# -- string literals --------------------------------------------------------------------------------------------------

#: A double-quoted literal from where the text's tokens start (its last one may be cut short by the stream's end).
_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)(?:"|\Z)', re.DOTALL)
#: One escape as JSON or YAML decodes it.
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|x([0-9a-fA-F]{2})|(\r\n|[\r\n])[ \t]*|(.))", re.DOTALL)
_SIMPLE = {
    "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "0": "\0", "a": "\a", "v": "\v", "e": "\x1b",
    "N": "\x85", "_": "\xa0", "L": "\u2028", "P": "\u2029", " ": " ", "\t": "\t",
}  # fmt: skip
#: ``!!binary`` (or its verbatim tag) before a literal: base64 the application reads decoded.
_BINARY_TAGS = ("!!binary", "!<tag:yaml.org,2002:binary>")


def _unescaped(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        code = m.group(1) or m.group(2) or m.group(3)
        if code is not None:
            point = int(code, 16)
            return chr(point) if point <= 0x10FFFF else m.group(0)
        if m.group(4) is not None:
            return ""  # an escaped line break joins the lines (YAML)
        char = m.group(5)
        return _SIMPLE.get(char, char)

    decoded = _ESCAPE.sub(one, body)
    # A pair of surrogate escapes is one character to a JSON parser.
    return decoded.encode("utf-16", "surrogatepass").decode("utf-16", "replace") if "\\u" in body else decoded


def literals(text: str) -> Iterator[str]:
    """The double-quoted string literals of ``text`` (tokens from its first ``{`` or ``[``), decoded as JSON or YAML decodes
    them; a ``!!binary`` one's base64 as UTF-8. Linear in the text."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    for m in _LITERAL.finditer(text, min(starts) if starts else 0):
        decoded = _unescaped(m.group(1))
        if text[max(0, m.start() - 40) : m.start()].rstrip().endswith(_BINARY_TAGS):
            try:
                decoded = base64.b64decode("".join(decoded.split()), validate=True).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                pass
        yield decoded


def literals_reading(text: str) -> str:
    """``text``'s string literals decoded, one a line (`literals`): what any JSON or YAML parser (or a repair of a
    cut answer, or a prefix of it a stream parsed) hands over of the text is among them."""
    return "\n".join(literals(text))


# -- strings that are JSON ---------------------------------------------------------------------------------------------


def json_strings_parsed(value: Any, depth: int = NESTED_DEPTH) -> Any:
    """``value`` (a tool call's arguments, a parsed answer) with each string that is itself JSON holding a rewritten
    escape replaced by its parse, decoded (a tool's ``payload: str`` it ``json.loads``), and so on within, to
    ``depth``; bounded by `NESTED_MAX_CHARS` of such strings. ``value`` itself when none is there."""
    budget = [NESTED_MAX_CHARS]
    return _parsed_within(value, depth, budget, 0)


def arguments_parsed(arguments: Any) -> Any:
    """A tool call's arguments as a reader that ``json.loads`` a string argument gets them: a mapping's such strings
    parsed (`json_strings_parsed`); anything else (the raw JSON text of the call) as it is."""
    return json_strings_parsed(arguments) if isinstance(arguments, Mapping) else arguments


def _parsed_within(value: Any, depth: int, budget: list[int], level: int) -> Any:
    if depth <= 0 or budget[0] <= 0 or level > 64:
        return value
    if isinstance(value, str):
        if value.lstrip()[:1] not in _JSON_OPENERS or not has_rewritten_escape(value):
            return value
        budget[0] -= len(value)
        if budget[0] < 0:
            return value
        try:
            inner = json.loads(value)
        except Exception:  # noqa: BLE001 - not JSON (or nested past the recursion limit): read as written
            return value
        return _parsed_within(inner, depth - 1, budget, level + 1) if isinstance(inner, str | list | dict) else value
    if isinstance(value, Mapping):
        pairs = [(k, _parsed_within(v, depth, budget, level + 1)) for k, v in value.items()]
        if all(new is old for (_, new), old in zip(pairs, value.values(), strict=True)):
            return value
        return dict(pairs)
    if isinstance(value, list | tuple):
        items = [_parsed_within(v, depth, budget, level + 1) for v in value]
        return value if all(n is o for n, o in zip(items, value, strict=True)) else items
    return value


class EscapeWatch:
    """Follows a streamed answer, chunk by chunk, in linear time: `seen` turns true at the first escape ``trigger``
    finds, or backslash before ``u`` or ``/`` (a string that is JSON within), after a ``{``, ``[`` or ``"`` (one
    split over two chunks counts), and stays true."""

    __slots__ = ("_bang", "_opened", "_slash", "_trigger", "seen")

    def __init__(self, trigger: Callable[[str], bool] = has_rewritten_escape) -> None:
        self._trigger = trigger
        self._opened = False  # a ``{``, ``[`` or ``"`` streamed so far
        self._slash = False  # the text so far ends in a backslash (an odd run, or an even one: held either way)
        self._bang = False  # the text so far ends in ``!`` (a ``!!binary`` tag split over two chunks)
        self.seen = False

    def feed(self, text: str) -> bool:
        """Note ``text``, the stream's next piece; `seen` after it."""
        if self.seen or not text:
            return self.seen
        scanned = ("\\" if self._slash else "") + ("!" if self._bang else "") + text
        self._opened = self._opened or any(o in text for o in _JSON_OPENERS)
        self.seen = self._opened and ("\\u" in scanned or "\\/" in scanned or self._trigger(scanned))
        self._slash = scanned.endswith("\\")
        self._bang = scanned.endswith("!")
        return self.seen
