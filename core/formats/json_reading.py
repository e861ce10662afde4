"""A JSON answer as the application reads it: parsed, its strings decoded (rt57b F3, rt58a, rt58e F4 F5, rt58g).

A structured answer in text reaches the application through a JSON parser, which turns ``"\\u0061mmonium"`` into
``"ammonium"``. A guard that judged the raw text never read words written as ``\\uXXXX`` escapes (or ``\\/``). An
answer holding such an escape is judged parsed too: `parsed_reading` writes the parse back with its strings decoded
(``json.dumps(value, ensure_ascii=False)``). Every other escape (``\\n``, ``\\"``, ``\\\\``...) is how ``json.dumps``
writes the parse again: an answer with none of the rewritten kind reads the same both ways and costs one scan.
Some parsers read more: a YAML fallback (LlamaIndex's ``parse_json_markdown``) also decodes ``\\x4D``,
``\\U0000004D``, ``\\N``... and ``!!binary`` (`has_decoded_escape`, `yaml_value`; past a bound, or where libyaml
refuses what the application's pure-Python loader reads, every scalar decoded: `yaml_stand_in`, rt58g F4 F8); a
truncated stream is repaired (`repaired`); text no parser reads is still read as its string literals, decoded
(`literals_reading`); a string that is itself JSON is read parsed too (`json_strings_parsed`: a tool's
``payload: str`` it ``json.loads``); a tool call's arguments given as a JSON string are read as its executor's
``json.loads`` reads them (`arguments_reading`, rt61b F2), or where JSON refuses an escape a lenient parser
decodes (``\\x4d``, octal, ``\\N{...}``), as YAML, JSON5 and Python literals read them (`lenient_read`, rt61f F1);
a streamed tool call's arguments are read a window at a time with their escapes decoded, within too
(`escapes_read`).
Framework-free: each adapter passes the parsers its framework reads with; `EscapeWatch` follows a stream, counting
escapes only where a parser may read them as a value's (not LaTeX or a Windows path in prose: rt58g F5).

    >>> parsed_reading('{"a": "\\\\u0061mmonium"}')
    '{"a": "ammonium"}'
    >>> parsed_reading('{"a": "plain\\\\n"}') is None
    True
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from ..errors import InputTooLarge
from .blank_runs import has_escaped_blank_run

__all__ = [
    "EscapeWatch",
    "Written",
    "arguments_parsed",
    "arguments_reading",
    "escapes_read",
    "has_decoded_escape",
    "has_lenient_escape",
    "has_yaml_only_escape",
    "has_rewritten_escape",
    "json_strings_parsed",
    "lenient_read",
    "literals",
    "literals_reading",
    "parsed_reading",
    "repaired",
    "yaml_scalars",
    "yaml_stand_in",
    "yaml_value",
]

#: A backslash escape that ``json.dumps`` never writes for what it decodes to (``\\uXXXX``, ``\\/``): after an even
#: run of backslashes (an odd run ends in an escaped backslash, not an escape).
_REWRITTEN_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\[u/]")
#: An escape a YAML double-quoted string decodes otherwise than the raw text reads: those beyond ``json.dumps``'s
#: own (``\\x4D``, ``\\U0000004D``, ``\\N``, ``\\_``, ``\\e``, ``\\0``, a backslash before a line break,
#: which joins the lines...). Any other (``\\d``) is an error to YAML in a quoted string, literal outside one.
_DECODED_ESCAPE = re.compile("\\\\[xuUN_LPeav0 \t/\r\n\x85\u2028\u2029]")
#: How a JSON value that holds text opens. A bare JSON string (``"\\u004dix..."``) is a value LangChain's parsers
#: read too (rt58a F2).
_JSON_OPENERS = ("{", "[", '"')
#: The most text a YAML reading parses (libyaml's scanner, PyYAML's Python constructor: up to some 2 microseconds a
#: character here): past it, or where libyaml refuses text the application's pure-Python ``yaml.safe_load`` may
#: read, the text's scalars are read decoded instead (`yaml_stand_in`, linear), so the cost stays bounded.
YAML_MAX_CHARS = 32_768
#: How deep and how much `json_strings_parsed` reads strings that are themselves JSON (past it, a call is refused).
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


#: An escape YAML decodes and JSON refuses (``\\x4D``, ``\\U0000004D``, ``\\N``...): `has_yaml_only_escape`.
_YAML_ONLY_ESCAPE = re.compile("\\\\[xUN_LPeav0 \t\r\n\x85\u2028\u2029]")


def has_yaml_only_escape(text: str) -> bool:
    """Does ``text`` hold what a YAML reading decodes and a JSON parse would refuse: an escape beyond JSON's, or a
    tag? (A text without one that parses as JSON reads as JSON reads it to YAML too.)"""
    return ("\\" in text and _escape_at_even(text, _YAML_ONLY_ESCAPE)) or "!!" in text or "!<" in text


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
    # An escaped backslash ("\\\\") may belong to a string that is JSON text itself, whose own escapes the app decodes
    # on its second parse (rt59e F2: "\\\\n" * 3000 padding a nested note apart): parsed too, its strings read in turn.
    if (
        "\\u" not in text
        and "\\/" not in text
        and "\\\\" not in text
        and (trigger is has_rewritten_escape or not trigger(text))
    ):
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
    `YAML_MAX_CHARS`, or where libyaml refuses the text (the application's ``yaml.safe_load`` is pure Python, which
    reads a lone surrogate escape libyaml refuses: rt58g F8), its scalars decoded (`yaml_stand_in`). Raises when
    YAML reads none, or none otherwise than the raw text does."""
    if len(text) > YAML_MAX_CHARS:
        return yaml_stand_in(text)
    import yaml  # noqa: PLC0415 - LlamaIndex's fallback needs PyYAML; only the texts that reach it import it

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        value = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader (C where libyaml is there)
    except Exception:
        if loader is yaml.SafeLoader:
            raise  # the application's own loader refuses it: it reads nothing
        return yaml_stand_in(text)  # libyaml refuses what the pure-Python loader may read
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


#: PyYAML's blanks and line breaks (no others: a no-break space is text to it).
_YAML_WS = " \t\r\n\x85\u2028\u2029"
#: A character of a plain scalar in a flow collection: not a blank, not ``,?[]{}``; a ``:`` only before text.
_PLAIN_CHAR = f"(?:[^{_YAML_WS}:,?\\[\\]{{}}]|:(?![{_YAML_WS},\\[\\]{{}}]|\\Z))"
#: One token of a YAML flow collection as PyYAML's scanner takes it, from where a token may start: a double-quoted,
#: single-quoted or plain scalar (words over blanks and line breaks, up to a comment or an indicator), a tag, a
#: comment, an anchor or alias. A character that starts none (``,:?[]{}``, blanks) is passed over.
_YAML_TOKEN = re.compile(
    r'"(?P<double>(?:[^"\\]|\\.)*)"?'
    r"|'(?P<single>(?:[^']|'')*)'?"
    f"|(?P<tag>!<[^>]*>?|![^{_YAML_WS}]*)"
    "|#[^\r\n\x85\u2028\u2029]*"
    "|[&*][0-9A-Za-z_-]*"
    f"|(?P<plain>(?:[^{_YAML_WS}\\-?:,\\[\\]{{}}#&*!|>'\"%@`]|-(?![{_YAML_WS}]|\\Z))"
    f"{_PLAIN_CHAR}*(?:[{_YAML_WS}]+(?!#){_PLAIN_CHAR}+)*)",
    re.DOTALL,
)
#: One escape of a YAML double-quoted scalar, as PyYAML decodes it; anything else after a backslash it refuses.
_YAML_ESCAPE = re.compile(
    '\\\\(?:([0abt\tnvfre "\\\\/N_LP])|x([0-9A-Fa-f]{2})|u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})'
    "|(\r\n|[\r\n\x85\u2028\u2029])[ \t]*|(.|\\Z))",
    re.DOTALL,
)


def _yaml_unescaped(body: str) -> str | None:
    # A double-quoted scalar's body as PyYAML decodes it; None where it refuses an escape (the whole text then).
    refused = False

    def one(m: re.Match[str]) -> str:
        nonlocal refused
        if m.group(1) is not None:
            return _YAML_SIMPLE[m.group(1)]
        code = m.group(2) or m.group(3) or m.group(4)
        if code is not None and int(code, 16) <= 0x10FFFF:
            return chr(int(code, 16))
        if m.group(5) is not None:
            return ""  # an escaped line break joins the lines
        refused = True
        return m.group(0)

    decoded = _YAML_ESCAPE.sub(one, body)
    return None if refused else _no_lone_surrogates(decoded)


_FOLDED_BREAKS = {0x85: 10, 0x2028: 10, 0x2029: 10}


def _binary(decoded: str) -> str | None:
    # A ``!!binary`` scalar as PyYAML's constructor reads it (``base64.decodebytes``: characters outside base64
    # passed over; a plain scalar's line breaks folded first), the bytes as UTF-8; None where it refuses.
    try:
        folded = decoded.translate(_FOLDED_BREAKS).encode("ascii")
        return base64.decodebytes(folded).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return None


def yaml_scalars(text: str) -> Iterator[tuple[str, bool]]:
    """Each scalar of the YAML flow collection ``text`` (a JSON-like answer), decoded as PyYAML's pure-Python
    ``yaml.safe_load`` decodes it, with whether it reads otherwise than the raw text (an escape decoded past
    ``json.dumps``'s own, a joined line, ``!!binary`` base64). Single-quoted and plain scalars (which may hold
    ``"``) are taken whole, as its scanner takes them, comments passed over. Linear in the text."""
    binary = False  # a ``!!binary`` tag (or its verbatim or %-escaped spelling) before the next scalar
    for m in _YAML_TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "tag":
            binary = "binary" in unquote(m.group("tag"), errors="replace")
            continue
        if kind is None:
            continue  # a comment, an anchor or an alias
        body = m.group(kind)
        if kind == "double":
            strict = _yaml_unescaped(body)
            decoded = _unescaped(body) if strict is None else strict
            otherwise = strict is not None and "\\" in body and _escape_at_even(body, _DECODED_ESCAPE)
        else:
            decoded = body.replace("''", "'") if kind == "single" else body
            otherwise = False
        yield decoded, otherwise
        if binary and (read := _binary(decoded)):
            yield read, True
        binary = False


def yaml_stand_in(text: str) -> Written:
    """What ``yaml.safe_load`` may hand over of ``text`` where it is not parsed here (past `YAML_MAX_CHARS`, or
    refused by libyaml): its scalars decoded (`yaml_scalars`) and its double-quoted literals (`literals`), each
    distinct string once, one a line, so every string the parse holds is among them (rt58g F4). Raises when
    none reads otherwise than the raw text does (no second check for nothing)."""
    lines: dict[str, None] = {}  # insertion-ordered, each string once
    otherwise = False
    for decoded, differs in itertools.chain(_literals(text, strict=True), yaml_scalars(text)):
        otherwise = otherwise or differs
        lines.setdefault(decoded)
    if not otherwise:
        raise ValueError("the YAML scalars read as the text does")
    return Written("\n".join(lines))


# -- string literals --------------------------------------------------------------------------------------------------

#: A double-quoted literal from where the text's tokens start (its last one may be cut short by the stream's end).
_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)(?:"|\Z)', re.DOTALL)
#: One escape as JSON or YAML decodes it.
_ESCAPE = re.compile(
    r"\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|x([0-9a-fA-F]{2})|(\r\n|[\r\n\x85\u2028\u2029])[ \t]*|(.))", re.DOTALL
)
_SIMPLE_ESCAPES = {
    "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "0": "\0", "a": "\a", "v": "\v", "e": "\x1b",
    "N": "\x85", "_": "\xa0", "L": "\u2028", "P": "\u2029", " ": " ", "\t": "\t",
}  # fmt: skip
#: What PyYAML writes for an escape of one character.
_YAML_SIMPLE = {**_SIMPLE_ESCAPES, '"': '"', "\\": "\\", "/": "/"}
#: ``!!binary`` (or its verbatim tag) before a literal: base64 the application reads decoded.
_BINARY_TAGS = ("!!binary", "!<tag:yaml.org,2002:binary>")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_lone_surrogates(decoded: str) -> str:
    # A pair of surrogate escapes is one character to a JSON parser; a lone one is written as U+FFFD (it cannot be
    # encoded to send).
    if _SURROGATE.search(decoded) is None:
        return decoded
    return decoded.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _unescaped(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        code = m.group(1) or m.group(2) or m.group(3)
        if code is not None:
            point = int(code, 16)
            return chr(point) if point <= 0x10FFFF else m.group(0)
        if m.group(4) is not None:
            return ""  # an escaped line break joins the lines (YAML)
        char = m.group(5)
        return _SIMPLE_ESCAPES.get(char, char)

    decoded = _ESCAPE.sub(one, body)
    return _no_lone_surrogates(decoded) if "\\u" in body or "\\U" in body else decoded


def _literals(text: str, *, strict: bool = False) -> Iterator[tuple[str, bool]]:
    # Each double-quoted literal decoded, with whether it reads otherwise (``strict``: as YAML decodes it; a literal
    # YAML refuses reads as nothing decoded).
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    for m in _LITERAL.finditer(text, min(starts) if starts else 0):
        body = m.group(1)
        decoded = _unescaped(body)
        otherwise = (
            "\\" in body
            and _escape_at_even(body, _DECODED_ESCAPE)
            and (not strict or _yaml_unescaped(body) is not None)
        )
        yield decoded, otherwise
        if text[max(0, m.start() - 40) : m.start()].rstrip().endswith(_BINARY_TAGS) and (read := _binary(decoded)):
            yield read, True


def literals(text: str) -> Iterator[str]:
    """The double-quoted string literals of ``text`` (tokens from its first ``{`` or ``[``), decoded as JSON or YAML decodes
    them; a ``!!binary`` one's base64 as UTF-8 too. Linear in the text."""
    for decoded, _ in _literals(text):
        yield decoded


def literals_reading(text: str) -> str:
    """``text``'s string literals decoded, one a line (`literals`): what any JSON parser (or a repair of a cut
    answer, or a prefix of it a stream parsed) hands over of the text is among them."""
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


def arguments_reading(arguments: Any, max_chars: int | None = None) -> Any:
    """A tool call's arguments as its executor reads them, where that may differ from what is written (rt61b F2);
    ``None`` where it does not. A JSON string as ``json.loads`` parses it (escapes decoded, surrogate pairs joined;
    an object that writes a key twice as its ``[key, value]`` pairs, each kept: parsers keep either), then its
    strings that are JSON text themselves (`json_strings_parsed`), as for a mapping's. Text that is not JSON (cut
    short, or nested past the recursion limit) is read with its escapes decoded (`escapes_read`: a repair reads
    them so), as `Written`; text with an escape JSON lacks and a lenient parser decodes (``\\x4d``, ``\\U0000004d``,
    octal, ``\\N{...}``, single quotes: YAML, JSON5, ``ast.literal_eval``) as each of those reads it (`lenient_read`,
    rt61f F1), and a string argument that is such text likewise. Only a string with a ``\\u``, ``\\/``,
    ``\\\\`` or such an escape is parsed (most calls: four scans); `InputTooLarge` as `json_strings_parsed`. Linear
    in the text; past ``max_chars`` (the room left to the reading) no further lenient reading is made."""
    if isinstance(arguments, Mapping):
        within = _parsed_within(arguments, NESTED_DEPTH, [NESTED_MAX_CHARS], 0, lenient=True)
        return None if within is arguments else within
    if not isinstance(arguments, str):
        return None
    lenient = has_lenient_escape(arguments)
    if not lenient and "\\u" not in arguments and "\\/" not in arguments and "\\\\" not in arguments:
        return None
    try:
        value = json.loads(arguments, object_pairs_hook=_pairs_kept)
    except (ValueError, RecursionError):  # not JSON to the executor's parser: read as a lenient one reads it
        read = lenient_read(arguments, max_chars=max_chars) if lenient else escapes_read(arguments)
        return None if read is None else Written(read)
    if not isinstance(value, str | list | dict):
        return None
    within = _parsed_within(value, NESTED_DEPTH, [NESTED_MAX_CHARS], 0, lenient=True)
    if within is value and not has_rewritten_escape(arguments):
        return None  # escaped backslashes only: written back, it reads as the text does
    return within


def _pairs_kept(pairs: list[tuple[str, Any]]) -> Any:
    # ``json.loads`` keeps a key's last value, other parsers its first: a key written twice keeps every pair.
    found = dict(pairs)
    return found if len(found) == len(pairs) else [list(pair) for pair in pairs]


def _parsed_within(value: Any, depth: int, budget: list[int], level: int, *, lenient: bool = False) -> Any:
    # ``lenient``: a string that is not JSON but holds an escape a lenient parser decodes is read as one reads it
    # (a tool call's arguments: `arguments_reading`).
    if depth <= 0:
        return value
    if level > _MAX_LEVEL:
        # Deeper than any tool's arguments: refused if it holds a string to parse (never judged as written, rt59a F4).
        if _holds_json_text(value):
            raise InputTooLarge(f"a JSON-text string nested more than {_MAX_LEVEL} levels deep; not read parsed")
        return value
    if isinstance(value, str):
        if not _json_text(value):
            return value
        try:
            # A key written twice keeps each value, as at the top (rt61f F4: the first, escaped, was read only raw).
            inner = json.loads(value, object_pairs_hook=_pairs_kept)
        except Exception:  # noqa: BLE001 - not JSON (or nested past the recursion limit): read as written
            if lenient and has_lenient_escape(value):
                read = lenient_read(value, depth)  # linear in the string, read once: no charge to the budget
                if read is not None:
                    return read
            return value
        if not isinstance(inner, str | list | dict):
            return value
        within = _parsed_within(inner, depth - 1, budget, level + 1, lenient=lenient)
        if within is inner and not has_rewritten_escape(value) and not has_escaped_blank_run(value):
            # Its parse reads as it is written (escaped backslashes, quotes, a line break here and there): no reading,
            # and nothing charged (rt59e F4: a 447 KB notebook argument holding "\\\\underline" was refused).
            return value
        budget[0] -= len(value)
        if budget[0] < 0:
            # Past the bound the strings would be judged as written while the tool reads them decoded: refused,
            # whatever ``on_error`` says (rt59a F4: a 200,001-character filler argument let the next one through).
            raise InputTooLarge(
                f"more than {NESTED_MAX_CHARS:,} characters of JSON-text strings to read parsed (NESTED_MAX_CHARS)"
            )
        return within
    if isinstance(value, Mapping):
        pairs = [(k, _parsed_within(v, depth, budget, level + 1, lenient=lenient)) for k, v in value.items()]
        if all(new is old for (_, new), old in zip(pairs, value.values(), strict=True)):
            return value
        return dict(pairs)
    if isinstance(value, list | tuple):
        items = [_parsed_within(v, depth, budget, level + 1, lenient=lenient) for v in value]
        return value if all(n is o for n, o in zip(items, value, strict=True)) else items
    return value


#: How deep `_parsed_within` follows containers before it only looks for a string to parse (and refuses one).
_MAX_LEVEL = 64


def _json_text(value: Any) -> bool:
    # Any escape: one the app's parse decodes (a "\\u" escape, or "\\n" padding: rt59e F2), or one of a JSON text
    # within it, reached only through this layer's parse (rt59d F5: a plain outer layer hid it).
    return isinstance(value, str) and value.lstrip()[:1] in _JSON_OPENERS and "\\" in value


def _holds_json_text(value: Any) -> bool:
    """Does ``value`` hold, at any depth, a string `_parsed_within` would parse? (A stack, not recursion: parsed JSON
    may be nested as deep as the recursion limit.)"""
    stack = [value]
    while stack:
        item = stack.pop()
        if _json_text(item):
            return True
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _json_unescape(m: re.Match[str]) -> str:
    code = m.group(1)
    if code is not None:
        return chr(int(code, 16))
    char = m.group(2)
    return _JSON_SIMPLE.get(char, m.group(0))


#: One JSON string escape (any other backslash is kept as written).
_JSON_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|(.))", re.DOTALL)
_JSON_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "/": "/"}


def escapes_read(text: str, depth: int = NESTED_DEPTH) -> str | None:
    """A piece of JSON text (a window of a tool call's streamed arguments) with its string escapes decoded as the
    tool reads them: once (LangChain's ``parse_partial_json`` of the arguments), and again while the result holds a
    ``\\u`` or ``\\/`` escape (a string argument that is itself JSON, which the tool ``json.loads``:
    `arguments_parsed`), to ``depth``. ``None`` when the text holds neither escape (it reads as written). Linear in
    the text per level; context-free (a piece may start inside a string), so a string that is not JSON but holds
    such an escape is read decoded too: a stricter reading, never a looser one."""
    if "\\u" not in text and "\\/" not in text:
        return None
    read = text
    for _ in range(depth):
        if "\\" not in read:
            break
        read = _no_lone_surrogates(_JSON_ESCAPE.sub(_json_unescape, read))
        if "\\u" not in read and "\\/" not in read:
            break
    return read if read != text else None


#: A backslash before what JSON has no escape for (``\\x``, ``\\U``, ``\\N``, ``\\'``, ``\\0``, a line break...): an escape
#: some lenient parser decodes, where JSON refuses the text (`has_lenient_escape`).
_LENIENT_ESCAPE = re.compile('\\\\[^"\\\\/bfnrtu]')
#: One escape as JSON5 reads it (and JavaScript): any other character after a backslash is itself.
_JSON5_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|x([0-9a-fA-F]{2})|(\r\n|[\r\n\u2028\u2029])|(.))", re.DOTALL)
_JSON5_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "0": "\0"}
#: One escape as a Python literal reads it (``ast.literal_eval``): an unknown one is kept, backslash and all.
_PYTHON_ESCAPE = re.compile(
    r"\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|x([0-9a-fA-F]{2})|([0-7]{1,3})|N\{([^{}\r\n]{1,100})\}|(\r?\n)|(.))",
    re.DOTALL,
)
_PYTHON_SIMPLE = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", "'": "'", '"': '"',
}  # fmt: skip


def has_lenient_escape(text: str) -> bool:
    """Does ``text`` hold an escape JSON lacks (so that ``json.loads`` refuses it) and a lenient parser decodes:
    YAML's ``\\x4d``, ``\\U0000004d``, ``\\N``, ``\\_``, ``\\e``...; JSON5's ``\\x``, ``\\0``, ``\\'``, any character;
    a Python literal's ``\\x``, octal, ``\\N{NAME}``? One scan where the text has no backslash."""
    return "\\" in text and _escape_at_even(text, _LENIENT_ESCAPE)


def _json5_unescape(m: re.Match[str]) -> str:
    code = m.group(1) or m.group(2)
    if code is not None:
        return chr(int(code, 16))
    if m.group(3) is not None:
        return ""  # an escaped line break continues the string
    char = m.group(4)
    return _JSON5_SIMPLE.get(char, char)


def _python_unescape(m: re.Match[str]) -> str:
    code = m.group(1) or m.group(2) or m.group(3)
    if code is not None:
        point = int(code, 16)
        return chr(point) if point <= 0x10FFFF else m.group(0)
    if m.group(4) is not None:
        return chr(int(m.group(4), 8))
    if m.group(5) is not None:
        try:
            return unicodedata.lookup(m.group(5))
        except KeyError:
            return m.group(0)
    if m.group(6) is not None:
        return ""  # a backslash before a line break continues the literal
    char = m.group(7)
    return _PYTHON_SIMPLE.get(char, m.group(0))


def _json5_unescape_all(text: str) -> str:
    return _no_lone_surrogates(_JSON5_ESCAPE.sub(_json5_unescape, text))


def _python_unescape_all(text: str) -> str:
    return _no_lone_surrogates(_PYTHON_ESCAPE.sub(_python_unescape, text))


#: How lenient parsers read a text's escapes: YAML's double-quoted scalars (LlamaIndex's fallback, a YAML tool
#: config), JSON5 (Qwen-Agent's ``json_loads`` falls back to it), Python literals (``ast.literal_eval``).
_LENIENT_READERS = (_unescaped, _json5_unescape_all, _python_unescape_all)


def lenient_read(text: str, depth: int = NESTED_DEPTH, max_chars: int | None = None) -> str | None:
    """``text`` (arguments JSON refuses) with its escapes decoded as each lenient parser reads them (YAML, JSON5,
    Python literals: rt61f F1, ``"\\x4dix"`` read "Mix"), the distinct readings one a line; each read again while
    it holds an escape (a string argument that is such text itself, parsed in turn), to ``depth``. ``None`` when
    none reads otherwise. Context-free, as `escapes_read`: a stricter reading, never a looser one. Linear in the
    text (three readings, each ``depth`` passes at most, and none after a pass that changed nothing); past
    ``max_chars`` of readings no further one is made (the caller refuses the call)."""
    readings: list[str] = []
    total = 0
    for reader in _LENIENT_READERS:
        read = text
        for _ in range(depth):
            again = reader(read)
            # A pass that changed nothing (a Python literal keeps ``\\q`` as written) changes nothing the next time:
            # the text is not read again (rt62a F1: each of four passes re-read 400 KB of "\\q").
            if again == read:
                break
            read = again
            if "\\u" not in read and "\\/" not in read and not has_lenient_escape(read):
                break
        if read != text and read not in readings:
            readings.append(read)
            total += len(read) + 1
            if max_chars is not None and total > max_chars:
                break
    return "\n".join(readings) if readings else None


#: What a JSON parser passes over before the value it reads (LangChain's strip backticks too), and the text a stream
#: watches for where its value has not opened yet: a fence's backticks, a bracket, a quote.
_NOT_LEAD = re.compile("[^ \t\r\n`]")
_MARKS = re.compile('["`{\\[]')
#: A fence's info string (``json``, ``python``...), then the blanks (and backticks) before the fenced text.
_INFO = re.compile('[^ \t\r\n`{\\["]*')
_BLANKS = re.compile("[ \t\r\n`]*")
#: A string literal's body up to its closing quote (or the piece's end; a backslash there escapes what comes next).
_BODY = re.compile(r'(?:[^"\\]|\\.)*', re.DOTALL)


def _end_of(pattern: re.Pattern[str], text: str, i: int) -> int:
    # Where ``pattern`` (which matches the empty text too) stops, from ``i``.
    m = pattern.match(text, i)
    return i if m is None else m.end()


class EscapeWatch:
    """Follows a streamed answer, chunk by chunk, in linear time: `seen` turns true at the first escape ``trigger``
    finds (or backslash before ``u`` or ``/``: a string that is JSON within) where a parser may read it as a value,
    and stays true. Where: from a ``{`` or ``[`` that opens the answer (past blanks and backticks) or a fence's text
    (past its info string) on; inside a ``"`` literal that opens either; and inside ``"`` literals after a ``{`` or
    ``[`` elsewhere (a JSON value after prose). Prose that quotes ``C:\\\\Users`` or writes LaTeX (``\\\\alpha``)
    outside such a literal is not held (rt58g F5). An escape split over two chunks counts."""

    __slots__ = ("_all", "_bracket", "_carry", "_fence", "_lead", "_literal", "_odd", "_ticks", "_trigger", "seen")

    def __init__(self, trigger: Callable[[str], bool] = has_rewritten_escape) -> None:
        self._trigger = trigger
        self._lead = True  # before the answer's first character past blanks and backticks
        self._fence = 0  # 1: in a fence's info string, 2: in the blanks after it (the fenced text opens next)
        self._ticks = 0  # the backticks the text so far ends in (three open a fence)
        self._all = False  # a value opened with ``{`` or ``[``: every escape from there on counts
        self._bracket = False  # a ``{`` or ``[`` streamed: a literal after it may be a value's
        self._literal = False  # inside a literal that counts
        self._odd = False  # ... whose text so far ends in an odd run of backslashes (its next character escaped)
        self._carry = ""  # the counted text's last backslashes or ``!``: an escape or tag split over two chunks
        self.seen = False

    def feed(self, text: str) -> bool:
        """Note ``text``, the stream's next piece; `seen` after it."""
        if self.seen or not text:
            return self.seen
        if not self._all:
            start = self._scan(text)
            if self.seen or start < 0:
                return self.seen
            self._all, self._carry, text = True, "", text[start:]
        self._count(text)
        return self.seen

    def _count(self, piece: str) -> None:
        # A piece of text where escapes count, the last counted character before it.
        scanned = self._carry + piece
        self.seen = "\\u" in scanned or "\\/" in scanned or self._trigger(scanned)
        run = len(scanned) - len(scanned.rstrip("\\"))
        # A run of backslashes is carried by its parity (one, or two: an escaped backslash), a tag's ``!`` as it is.
        self._carry = ("\\" if run % 2 else "\\\\") if run else ("!" if scanned[-1] == "!" else "")

    def _scan(self, text: str) -> int:
        # Follows ``text`` until a value opens with ``{`` or ``[`` (returns where: all of it counts from there), or
        # to its end (-1), counting the literals that count on the way.
        i, n = 0, len(text)
        while i < n:
            if self._literal:
                i = self._in_literal(text, i)
                if i < 0:  # a fence in it: a parser may read the text after it, counted from the literal on
                    return ~i
            elif self._lead:
                m = _NOT_LEAD.search(text, i)
                j = n if m is None else m.start()
                self._backticks(text[i:j])
                if m is None:
                    return -1
                self._lead, i = False, j
                if text[j] in "{[":
                    return j
                if text[j] == '"':
                    self._open()
                    i = j + 1
            elif self._fence:
                i = _end_of(_INFO if self._fence == 1 else _BLANKS, text, i)
                self._ticks = 0
                if i == n:
                    return -1
                if self._fence == 1:
                    self._fence = 2
                    continue
                self._fence = 0
                if text[i] in "{[":
                    return i
                if text[i] == '"':
                    self._open()
                    i += 1
            else:
                m = _MARKS.search(text, i)
                if m is None:
                    self._ticks = 0
                    return -1
                j, c = m.start(), m.group()
                if c == "`":
                    self._ticks = self._ticks if j == i else 0  # backticks before it, in a row
                    self._backticks(c)
                elif c == '"':
                    if self._bracket:
                        self._open()
                else:
                    self._bracket = True
                if c != "`":
                    self._ticks = 0
                i = j + 1
            if self.seen:
                return -1
        return -1

    def _backticks(self, run: str) -> None:
        # Backticks (and blanks) just followed: three in a row open a fence, whose text is read as a value.
        for c in run:
            self._ticks = self._ticks + 1 if c == "`" else 0
            if self._ticks == 3:
                self._fence, self._ticks = 1, 0

    def _open(self) -> None:
        self._literal, self._odd, self._carry, self._ticks = True, False, "", 0

    def _in_literal(self, text: str, i: int) -> int:
        # Counts the literal's text from ``i`` to its closing quote (returns where it ends) or the piece's end;
        # ``~i`` where a fence is in it (LangChain's parser looks for one anywhere).
        start = i
        if self._odd:  # the piece opens with a character the last one's backslash escapes
            i, self._odd = i + 1, False
        end = _end_of(_BODY, text, i)
        closed = end < len(text) and text[end] == '"'
        stop = end if closed else len(text)
        piece = text[start:stop]
        if "```" in "`" * self._ticks + piece:
            return ~start
        trail = len(piece) - len(piece.rstrip("`"))
        self._ticks = 0 if closed else trail + (self._ticks if trail == len(piece) else 0)
        if piece:
            self._count(piece)
        if closed:
            self._literal, self._carry = False, ""
            return end + 1
        self._odd = end < len(text)  # stopped at a backslash that ends the piece
        return len(text)
