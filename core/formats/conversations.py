"""How each kind of check is shown to the guard model, as a conversation.

Roles matter (DESIGN.md decision 12): the user's own turn is a prompt; the assistant's text and
the tool calls it asks for are responses; tool results and retrieved documents are untrusted
content from outside, shown as a user-side turn so the Jailbreak category can catch injected
instructions.
"""

from __future__ import annotations

import json
import re
import string
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from ..errors import InputTooLarge
from .content import is_blank
from .json_reading import NESTED_DEPTH, NESTED_MAX_CHARS, Written, _no_lone_surrogates, arguments_reading
from .media import (
    DATA_KEYS,
    base64_as_text,
    base64_text,
    block_mime,
    data_url,
    data_url_text,
    file_data_text,
    labelled_file_text,
    mime_parts_text,
    says_base64,
    text_label,
)
from .prompts import Message
from .rendered import MARKUP, Rendered, may_render_differently

__all__ = [
    "RunsJudged",
    "prompt_conversation",
    "response_conversation",
    "answer_prefill",
    "tool_call_conversation",
    "answer_calls_conversation",
    "untrusted_conversation",
    "render_tool_call",
    "files_read",
    "json_text",
    "with_tool_calls",
    "last_user_text",
    "without_blank_context",
    "answer_or_prefill",
    "rendered_answer_size",
    "least_contexts",
]


def without_blank_context(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` (cleaned) without the earlier turns that show nothing (`is_blank`); the judged turn, last,
    stays, and so does the user turn right before a judged answer (response mode reads user turn + answer,
    the request empty when unknown). Such a turn carries nothing to judge, and hundreds of them broke the
    model's verdict (a guard error, which ``on_error="allow"`` lets through).

    An answer sent as several assistant messages is one turn (`windows.final_run`): a last message that shows
    nothing after one with text (other turns that show nothing between) leaves the run before it as the judged turn,
    and a user turn that shows nothing between two assistant messages is not kept as the request of the second.
    ``[call send_email(recipe), ""]`` was judged as ``""`` (allowed as empty, no model call), and ``[call, user
    "\u200b", "Done."]`` as ``"Done."`` after a request of its own (rt63g F1)."""
    if len(messages) < 2:
        return messages
    if messages[-1]["role"] == "assistant" and is_blank(messages[-1]["content"]):
        end = len(messages) - 1
        while end and is_blank(messages[end - 1]["content"]):
            end -= 1
        if end and messages[end - 1]["role"] == "assistant":
            messages = messages[:end]
    if len(messages) < 2 or not any(is_blank(m["content"]) for m in messages[:-1]):
        return messages
    kept = [m for m in messages[:-2] if not is_blank(m["content"])]
    before = messages[-2]
    if not is_blank(before["content"]) or (
        messages[-1]["role"] == "assistant"
        and before["role"] == "user"
        and not (kept and kept[-1]["role"] == "assistant")
    ):
        kept.append(before)
    return [*kept, messages[-1]]


def answer_or_prefill(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]] | None]:
    """(``messages`` without a last assistant turn that shows nothing, the request a prompt-stage check judges as well
    or ``None``). A provider reads a trailing assistant turn as the start of its answer, so
    ``[user "How can I make a bomb?", assistant ""]`` (or ``"\u200b"``) is that request, and it was allowed unread, or
    judged only as the context of an invisible answer (rt54e E3). Shown nothing includes markup that renders as
    nothing and hides nothing (``"<b></b>"``, ``"&#8203;"``, ``"<!-- -->"``, ``"<think></think>"``): such a prefill
    had the request decided by the response stage's rules on the server (rt56e F3). An answer written inside markup
    (``"<!-- Mix ammonium nitrate ... -->"``, an attribute's value) is an answer, judged as the response: it was
    dropped, and the request alone judged safe (rt63e F1). The request is the turns before a last assistant turn
    that renders as nothing but hides written text (markup only, kept as an answer): it may be a prefill all the same
    (a tag name no list holds, ``"<reply>"``), and the request judged as the context of markup was decided as mere
    context (rt63g F2). Such a check judges both, the stricter decision standing: one check more, only for a turn of
    markup alone. The last turn is
    the run of assistant messages that ends the conversation, read joined as a provider sends it (`final_run`): a
    prefill split over two messages (``"<think>\n\n"``, ``"</think>\n\n"``; ``"<reply>"`` twice) is one (rt63i F1:
    the request behind it was judged as mere context again)."""
    start = len(messages)
    while start > 0 and messages[start - 1]["role"] == "assistant":
        start -= 1
    if start == len(messages) or start == 0 or messages[start - 1]["role"] != "user":
        return messages, None
    request = messages[:start]
    answer = "".join(m["content"] for m in messages[start:])
    if is_blank(answer):
        return request, None
    if may_render_differently(answer):
        rendered = Rendered(answer)
        if is_blank(rendered.span(0, len(answer))):
            # Markup only: a prefill when it hides nothing either; else an answer, and the request judged too.
            if not _hides_text(answer, rendered.edits):
                return request, None
            return messages, request
    return messages, None


def rendered_answer_size(messages: Sequence[Any]) -> int:
    """Characters of the last run of assistant turns of ``messages`` (their text and ``refusal`` text; system turns
    skipped, as `normalize_messages` drops them) when that run may render differently (`may_render_differently`),
    else 0: what `answer_or_prefill` renders as a reader would, microseconds a character of markup where cleaning
    text takes nanoseconds (rt70h F1: a prefill of 16,633 empty ``<q>`` tags, 0.4 s). An upper bound (the run is
    counted whatever precedes it); linear in the run."""
    size = 0
    renders = False
    for message in reversed(messages):
        role = message.get("role") if isinstance(message, Mapping) else None
        if role == "system":
            continue
        if role != "assistant":
            break
        for key in ("content", "refusal"):
            if isinstance(text := message.get(key), str):
                size += len(text)
                renders = renders or may_render_differently(text)
    return size if renders else 0


#: HTML's element names: a tag of one hides nothing but its attributes; any other name ("<Mix><ammonium>") is
#: written text a renderer drops (but `_REASONING_TAGS`).
_HTML_ELEMENTS = frozenset(
    """a abbr address area article aside audio b base bdi bdo big blockquote body br button canvas caption center
    cite code col colgroup data datalist dd del details dfn dialog div dl dt em embed fieldset figcaption figure font
    footer form h1 h2 h3 h4 h5 h6 head header hgroup hr html i iframe img input ins kbd label legend li link main map
    mark menu meta meter nav noscript object ol optgroup option output p param picture pre progress q rp rt ruby s
    samp script search section select slot small source span strike strong style sub summary sup table tbody td
    template textarea tfoot th thead time title tr track tt u ul var video wbr""".split()
)
#: The tags a model's reasoning and answer are written in, and a prefill opens or skips (Qwen3's own non-thinking
#: prefill is ``"<think>\n\n</think>\n\n"``): fixed words, no text of the writer's. Blank between them, such a tag
#: shows nothing and hides nothing, as an HTML element's does (rt63g F2: the request behind it was judged as context).
_REASONING_TAGS = frozenset(
    """think thinking thought thoughts reasoning reason reflection analysis scratchpad answer final output response
    result solution""".split()
)
_SHOWS_NOTHING = _HTML_ELEMENTS | _REASONING_TAGS
_TAG_NAME = re.compile(r"</?([A-Za-z][A-Za-z0-9-]*)")
#: (opener, closer) lengths of the raw HTML constructs whose body a renderer drops.
_BODY_DELIMITERS = {"comment": (4, 3), "pi": (2, 2), "cdata": (9, 3), "declaration": (2, 1)}
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _hides_text(text: str, edits: list[tuple[int, int, str, str]]) -> bool:
    """Whether one of ``text``'s markup ``edits`` (`Rendered.edits`) leaves unshown written text that is more than
    punctuation and blanks: a comment's (processing instruction's, CDATA section's, declaration's) body, a tag's
    attributes or a name no HTML element (nor reasoning tag) has, a link's address or what its text's own markup hides. A paragraph
    also read as an HTML parser reads it (kind ``"html"``) is taken to hide some. Linear: a link's text is read
    once more, and a link inside it (the deepest `MARKUP` finds) once more again."""
    for a, b, _, kind in edits:
        hidden = ""
        if kind == "html":
            return True
        if kind in _BODY_DELIMITERS:
            opener, closer = _BODY_DELIMITERS[kind]
            hidden = text[a + opener : b - closer] if b - a >= opener + closer else ""  # "<!-->" has no body
        elif kind == "tag" and (name := _TAG_NAME.match(text, a, b)) is not None:
            hidden = text[name.end() : b] + ("" if name.group(1).lower() in _SHOWS_NOTHING else name.group(1))
        elif kind == "link" and (link := MARKUP.match(text, a, b)) is not None and link.lastgroup == "link":
            label = link.group("link_text")
            if may_render_differently(label) and _hides_text(label, Rendered(label).edits):
                return True
            hidden = text[link.end("link_text") + 2 : b - 1]  # the address and title: after "](", before ")"
        if hidden and not is_blank(hidden.translate(_NO_PUNCTUATION)):
            return True
    return False


def least_contexts(conversation: Sequence[Mapping[str, str]]) -> list[list[dict[str, str]]]:
    """The judged (last) turn with less context, each way its mode allows: a user-side turn alone; an assistant turn
    after the user turn before it, and after an empty request (the user's turns are the client's to write: padded,
    the request broke the model's answer on every check of the LLM's answer, with or without turns before it, and a
    fail-open policy let a harmful answer through; the answer's harm does not need the request to be seen). Each one
    shorter than ``conversation``; none when there is nothing to leave out. What a check whose answer was no verdict
    is judged on once more, by `Guard`, the server (`Service.classify`) and stream windows: only a verdict that is
    not safe is kept from them, the worst."""
    last = dict(conversation[-1])
    out = [[last]] if last["role"] != "assistant" else []
    if last["role"] == "assistant":
        before = next((m for m in reversed(conversation[:-1]) if m["role"] == "user"), None)
        if before is None:
            out.append([last])
        else:
            out.append([dict(before), last])
            if before["content"].strip():
                out.append([{"role": "user", "content": ""}, last])
    return [least for least in out if len(least) < len(conversation) or least[0] != dict(conversation[0])]


def framework_hint(value: object) -> str:
    """What to pass instead of a framework's object handed to the core API (a newcomer's first mistake, rt69f F2):
    "" where ``value`` is none the hint knows. Read by shape, so neither framework is imported."""
    item = value[0] if isinstance(value, (list, tuple)) and value else value
    kind = type(item).__module__.split(".")[0]
    if kind.startswith("langchain") and hasattr(item, "page_content"):
        return (
            "; pass its text (doc.page_content), or guard a retriever with GuardedRetriever / GuardDocumentCompressor"
        )
    if kind.startswith("langchain") and hasattr(item, "content") and hasattr(item, "type"):
        return (
            "; pass a message's text (message.text), a history as {'role', 'content'} dicts "
            "(langchain_core.messages.convert_to_openai_messages), or guard the app with the LangChain integration "
            "(GuardMiddleware, GuardCallbackHandler)"
        )
    if kind.startswith("llama_index") and hasattr(item, "get_content"):
        return "; pass its text (node.get_content()), or guard retrieval with GuardNodePostprocessor / GuardedRetriever"
    if kind.startswith("llama_index") and hasattr(item, "role") and hasattr(item, "blocks"):
        return "; pass a message's text (message.content), or guard the LLM with GuardedLLM"
    if isinstance(value, Mapping):
        return "; pass text: json.dumps(value) judges structured data as the model reads it"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return "; pass one string (earlier turns go in history=[{'role': ..., 'content': ...}, ...])"
    return ""


def _require_text(value: object, what: str) -> str:
    if value is None:
        raise TypeError(f"{what} is None; pass a string")
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, got {type(value).__name__}{framework_hint(value)}")
    return value


def _require_turns(value: object, what: str, *, text_too: bool = False) -> Sequence[Mapping[str, Any]]:
    """``value``, checked to be a list of message mappings (``None``: none), else a `TypeError` naming ``what``
    and the shape expected: a bare string or a list of strings became "dictionary update sequence element #0
    has length 1; 2 is required" or "'str' object has no attribute 'get'" (rt50a F13)."""
    if value is None:
        return ()
    expected = "a str or " if text_too else ""
    shape = "a list of {'role': ..., 'content': ...} mappings"
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Sequence):
        example = " (a string is one turn: [{'role': 'user', 'content': ...}])" if isinstance(value, str) else ""
        raise TypeError(f"{what} must be {expected}{shape}, got {type(value).__name__}{example}")
    for i, message in enumerate(value):
        if not isinstance(message, Mapping):
            raise TypeError(
                f"{what}[{i}] must be a mapping with 'role' and 'content', got {type(message).__name__}"
                f"{framework_hint(message)}"
            )
    return value


class RunsJudged(list):  # type: ignore[type-arg]
    """A conversation whose caller judges each run of consecutive user turns joined itself (the LangChain and
    LlamaIndex integrations, with their own rules for what a provider merges and what a blocked run withholds): the
    Gen planner does not judge its final run joined again (`windows.final_run`). A plain list is joined."""


def prompt_conversation(text: str, history: Sequence[Message] | None = None) -> list[dict[str, str]]:
    """The user's turn, after optional earlier turns."""
    text = _require_text(text, "prompt")
    turns = [dict(m) for m in _require_turns(history, "history")]
    return [*turns, {"role": "user", "content": text}]


def response_conversation(
    prompt: str | Sequence[Message], response: str, *, continues: bool = True
) -> list[dict[str, str]]:
    """The assistant's answer to a prompt (a string, or the conversation that led to it). A conversation that ends
    in assistant turns (a prefill, `answer_prefill`) is answered by their continuation: judged as one turn, the
    prefill's text then the answer's, the way a provider returns it. ``continues=False``: a caller whose turns leave
    out what came between (a tool's result after an answer's call) says the answer is a turn of its own."""
    response = _require_text(response, "response")
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    if prompt is None:
        raise TypeError("prompt is None; pass the prompt's text (a str) or the conversation before the answer")
    turns = [dict(m) for m in _require_turns(prompt, "prompt", text_too=True)]
    if continues and turns and _plain_answer(turns[-1]):
        # A provider reads a trailing assistant turn as the start of its answer and returns the two as one turn:
        # "Step 1: Mix" | " ammonium nitrate ..." was judged as two turns, each safe (rt62f F2).
        before, prefill = answer_prefill(turns)
        return [*before, {"role": "assistant", "content": (prefill or "") + response}]
    return [*turns, {"role": "assistant", "content": response}]


def answer_prefill(turns: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    """(the turns before ``turns``' trailing assistant turns, those turns' texts joined), or (``turns``, ``None``)
    when it does not end in one. The run is what an answer to ``turns`` continues (a prefill): a provider reads a
    trailing assistant turn as the start of its answer, and consecutive assistant turns as one (the Anthropic API
    combines consecutive turns of a role, as `windows.final_run` reads a run). Only plain text turns (``role`` and
    a ``str`` ``content``) are joined: a turn with tool calls is an action, not the start of an answer. Linear."""
    k = len(turns)
    while k and _plain_answer(turns[k - 1]):
        k -= 1
    if k == len(turns):
        return [dict(m) for m in turns], None
    return [dict(m) for m in turns[:k]], "".join(str(m["content"]) for m in turns[k:])


def _plain_answer(turn: Mapping[str, Any]) -> bool:
    """An assistant turn of text alone (a field with no value, as the OpenAI SDK echoes back, carries nothing)."""
    if turn.get("role") != "assistant" or not isinstance(turn.get("content"), str):
        return False
    return all(key in ("role", "content") or not value for key, value in turn.items())


def render_tool_call(name: str, arguments: Mapping[str, Any] | str | None, max_chars: int | None = None) -> str:
    """A tool call as the assistant's action: ``Tool call: name({...json...})``, and where its executor reads the
    arguments otherwise than they are written (a JSON string's ``\\u`` escapes, which ``json.loads`` decodes; a
    string argument that is JSON text itself: `arguments_reading`), the same line again with the arguments as read,
    so that both are judged (rt61b F2: ``"\\u004dix \\u0061mmonium..."`` reached the tool as "Mix ammonium...").
    Where an argument holds a file, one line more with each such file as the text it holds, by its key path
    (``Tool call: name(attachments[0]="...")``, `files_read`): a tool decodes an attachment as a provider does a
    message's file (rt65e F1: a text file's base64 was judged as its letters while the tool decoded and sent the
    text). Only the files are written again, not the call (rt65j F4: one base64 id doubled a 500 KB call).

    With ``max_chars``, rendering stops once the text is longer: what comes back is cut just past the limit,
    for a caller that refuses such a call. Arguments of thousands of floats cost as much as ``max_chars``
    characters of them, not all of them (``json.dumps`` holds the GIL for its whole run)."""
    name = _require_text(name, "tool name")
    if arguments is None:
        args = "{}"
    elif isinstance(arguments, str):
        args = arguments
    elif isinstance(arguments, Mapping):
        args = _json_text(dict(arguments), None if max_chars is None else max_chars - len(name))
    else:
        raise TypeError(f"tool arguments must be a mapping or a JSON string, got {type(arguments).__name__}")
    line = f"Tool call: {name}({args})"
    if max_chars is not None and len(line) > max_chars:
        return line  # refused by the caller: no reading is worth its work
    # What the executor reads: the arguments as parsed, where that differs from what is written.
    parsed: Any = dict(arguments) if isinstance(arguments, Mapping) else arguments
    # A mapping is rendered decoded already; only a string in it with a backslash (written "\\\\") may be JSON text.
    if isinstance(arguments, str) or (arguments is not None and "\\\\" in args):
        # What is left of max_chars after this line, a line break and the next line's "Tool call: name()".
        room = None if max_chars is None else max(max_chars - 2 * len(line) + len(args) - 1, 0)
        reading = arguments_reading(arguments, room)
        if reading is not None:
            # A lone surrogate escape parses to a character no encoder writes: U+FFFD, as the content rules read it.
            read = reading.text if isinstance(reading, Written) else _no_lone_surrogates(_json_text(reading, room))
            if read != args:
                line += f"\nTool call: {name}({read})"
            if not isinstance(reading, Written):
                parsed = reading
    if parsed is None or (max_chars is not None and len(line) > max_chars) or not _may_hold_file(args):
        return line
    if isinstance(parsed, str) and parsed is arguments:
        try:
            parsed = json.loads(arguments)
        except (ValueError, RecursionError):
            pass  # not JSON: the string is the one argument (a tool that takes its input whole)
    files = files_read(parsed)
    if files:
        # Only the files, each by its key path: the reading costs what they hold, not the call again (rt65j F4).
        room = None if max_chars is None else max(max_chars - len(line) - len(name) - 14, 0)  # "\nTool call: ", "()"
        # A key a JSON text's escape spelled may hold a lone surrogate: U+FFFD, as the arguments' reading writes it.
        line += f"\nTool call: {name}({_no_lone_surrogates(_files_text(files, room))})"
    return line


#: What a tool call's arguments show where one may hold a file (`files_read`): a ``data:`` URL, a data key, a run of
#: base64 as long as a bare file's least (`media.base64_text`), a percent-encoded byte (`_percent_read`).
_MAY_HOLD_FILE = re.compile(r"(?i:data:)|\"(?:base64|data|file_data)\"|[A-Za-z0-9+/_-]{12}|%[0-9A-Fa-f]{2}")
#: What is no base64 letter and no string's end: a lenient decoder drops it between letters (a blank, a JSON escape's
#: backslash, a ``.`` or ``|`` between groups: rt66b F3).
_NOT_LETTER = re.compile(r'[^A-Za-z0-9+/_"-]+')


def _may_hold_file(args: str) -> bool:
    """May a call's arguments (as written) hold a file (`_MAY_HOLD_FILE`)? Most calls of a few short values do not,
    and are not walked again. What is no letter is dropped for a second scan (a pattern that allowed it between
    letters would try each letter's dozen neighbours again)."""
    if _MAY_HOLD_FILE.search(args) is not None:
        return True
    return _MAY_HOLD_FILE.search(_NOT_LETTER.sub("", args)) is not None


def files_read(arguments: Any) -> list[tuple[str, str]]:
    """Each file a tool call's (parsed) arguments hold, as (its key path, the text it holds: `_file_text`), in the
    order written; empty when none does. Only what the JSON encoder writes as containers (dicts, lists, tuples) is
    walked, without recursion (arguments nest as deep as a client writes them), and a string that is a JSON array
    or object, which a tool parses (rt65j F1: ``'["TWl4..."]'``), as `arguments_reading` reads JSON text; a file's
    text is read again for the files it holds (rt66b F2: a mail message in base64 whose part is base64, a JSON
    manifest of files, a ``data:`` URL in base64). Both at most `NESTED_DEPTH` strings deep and `NESTED_MAX_CHARS`
    (a JSON text holding a file charged its length, a file's text the text of the files within it: `_ReadWithinEnd`),
    past which the call is refused (`InputTooLarge`) rather than judged as written."""
    found: list[tuple[str, str]] = []
    budget = NESTED_MAX_CHARS
    # (a value, the dict it was read from or None, its key there, that dict's text label, its key path, how many
    # strings it is read within): a dict's label is read once, for all its keys.
    stack: list[_Walked | _ReadWithinEnd] = [(arguments, None, None, None, None, 0)]
    while stack:
        entry = stack.pop()
        if isinstance(entry, _ReadWithinEnd):
            if len(found) > entry.found_before:  # it held a file: charged, as `arguments_reading` charges a reading
                budget -= entry.charged(found)
                if budget < 0:
                    raise InputTooLarge(
                        f"more than {NESTED_MAX_CHARS:,} characters of strings holding files to read (NESTED_MAX_CHARS)"
                    )
            continue
        item, parent, key, label, path, layers = entry
        if isinstance(item, str):
            # JSON text first: a tool parses it, and its brackets and quotes are no base64 letters to drop.
            inner = _json_container(item)
            if inner is not None:
                if layers >= NESTED_DEPTH:
                    raise InputTooLarge(f"a JSON-text string within more than {NESTED_DEPTH} others; not read parsed")
                stack.append(_ReadWithinEnd(len(item), len(found)))
                stack.append((inner, None, None, None, path, layers + 1))
                continue
            read = _file_text(item, parent, key, label)
            if read is None:
                continue
            if layers > NESTED_DEPTH:
                raise InputTooLarge(f"a file within more than {NESTED_DEPTH} strings; not read")
            found.append((_path_text(path), read.text))
            # Files within the file: only they are charged, not its text again (rt66q F3: a Gmail message of a
            # 150 KB PDF and a base64 note was refused for its own length).
            stack.append(_ReadWithinEnd(None, len(found)))
            stack.extend((within, None, None, None, path, layers + 1) for within in reversed(read.within))
        elif isinstance(item, dict):
            label = text_label(item)
            stack.extend(
                (v, item, k, label, (path, f".{str(k)[:_KEY_CHARS]}"), layers) for k, v in reversed(item.items())
            )
        elif isinstance(item, (list, tuple)):
            stack.extend((v, None, None, None, (path, f"[{i}]"), layers) for i, v in reversed(list(enumerate(item))))
    return found


@dataclass(frozen=True)
class _ReadWithinEnd:
    """Where the walk of what a string holds (a JSON text's parse, a file's text) ends (`files_read`): the JSON
    text's length (``None`` for a file's text), and the files found before it."""

    length: int | None
    found_before: int

    def charged(self, found: list[tuple[str, str]]) -> int:
        """What reading within the string cost: a JSON text's length, as `arguments_reading` charges its parse; for
        a file's text, the text of the files found within it (what the reading added)."""
        if self.length is not None:
            return self.length
        return sum(len(text) for _, text in found[self.found_before :])


#: A key path, innermost part last: (the path above, ``.key`` or ``[index]``), ``None`` at the top.
_Path = Any
#: One value `files_read` walks: (it, the dict it is in, its key there, that dict's `text_label`, its path, layers).
_Walked = tuple[Any, "dict[Any, Any] | None", Any, "str | None", _Path, int]
#: How many of a path's innermost parts are written (`_path_text`), and of each key's characters: a file nested
#: thousands deep, or under a key of a megabyte, costs no more (the written line spells them).
_PATH_PARTS = 16
_KEY_CHARS = 64


def _path_text(path: _Path) -> str:
    """A key path as written in a reading: ``attachments[0].base64``, its innermost `_PATH_PARTS` parts."""
    parts: list[str] = []
    while path is not None and len(parts) < _PATH_PARTS:
        path, part = path
        parts.append(part)
    text = "".join(reversed(parts))
    return ("…" + text) if path is not None else text.removeprefix(".")


def _json_container(value: str) -> Any:
    """A string that is a JSON array or object, parsed (a tool's ``json.loads``); ``None`` for any other."""
    stripped = value.strip()
    if stripped[:1] not in ("[", "{") or stripped[-1:] not in ("]", "}"):
        return None
    try:
        inner = json.loads(stripped)
    except (ValueError, RecursionError):
        return None
    return inner if isinstance(inner, list | dict) else None


def _files_text(files: list[tuple[str, str]], room: int | None) -> str:
    """The files a call's arguments hold (`files_read`) as a reading: ``path=<text as JSON>``, comma-separated (the
    text alone for arguments that are one string), a file after one in the same list by its text alone
    (``items[0]="...", "..."``: rt66b F6, thousands of short files cost their paths again); with ``room``, cut just
    past it."""
    parts: list[str] = []
    size = 0
    last_list: str | None = None
    for path, text in files:
        within = path[: path.rfind("[")] if path.endswith("]") else None
        named = "" if within is not None and within == last_list else f"{path}{'=' if path else ''}"
        last_list = within
        part = f"{', ' if parts else ''}{named}{_ENCODER.encode(text)}"
        parts.append(part)
        size += len(part)
        if room is not None and size > room:
            break
    written = "".join(parts)
    return written if room is None else written[: room + 1]


@dataclass(frozen=True)
class _FileRead:
    """A file one argument holds (`_file_text`): its text, and what is read again for the files within it (the
    text, or a URL's or a form's decoded values by their keys: `_percent_read`)."""

    text: str
    within: list[Any]


def _file_text(value: str, parent: dict[Any, Any] | None, key: Any, label: str | None) -> _FileRead | None:
    """The text a file in one argument holds, read as a message's file is (`core.formats.media`): a ``data:`` URL's,
    the data of a block that says it is a file (a media type, or base64: `file_data_text`), a string under any other
    key of a dict labelled text (``label``: `labelled_file_text`); else, each of these that reads it, joined (rt66q F2:
    the first alone hid an attachment's encoded name behind a base64 part): a bare string that is the base64 of a
    text (`base64_text`, as strict as words need), a mail message's encoded parts (`mime_parts_text`), and a URL's or
    a form's values percent-decoded (`_percent_read`). ``None`` for anything else, or a text that is ``value`` as
    written. A tool decodes a file whatever its bytes (`_sent_text`, rt66b F1)."""
    url = data_url(value)
    text: str | None
    if url is not None:
        text = data_url_text(value)
        text = text if text is not None or not url.base64 else _sent_text(url.body)
    elif parent is not None and key in DATA_KEYS and (block_mime(parent) or says_base64(parent)):
        text = file_data_text(value, parent, key) or _sent_text(value)
    else:
        text = labelled_file_text(value, key, label) if label is not None else None
        if text is None:
            # Each reader's gate is its own (letters, a mail header, a URL or form): most strings pass none.
            read = [t for t in (base64_text(value), mime_parts_text(value)) if t is not None and t != value]
            within: list[Any] = list(read)
            values = _percent_read(value)
            if values:
                read.append("\n".join(f"{k}={v}" for k, v in values))
                within.append(_by_key(values))
            return _FileRead("\n".join(read), within) if read else None
    return None if text is None or text == value else _FileRead(text, [text])


def _sent_text(encoded: str) -> str | None:
    """A file in an argument as its tool sends it, whatever its bytes: text after a printable media signature, and
    once its control characters are dropped (rt66b F1: "ID3 " or three control characters before a note)."""
    return base64_as_text(encoded, labelled_media=False, drop_controls=True)


#: A percent-encoded byte (``%4D``), or a ``+`` for a blank: what a URL's or a form's value may be changed by.
_PERCENT_ENCODED = re.compile(r"%[0-9A-Fa-f]{2}|\+")
#: A form's key as a client writes one (``q``, ``utm_source``, ``user[name]``, ``a%5Bb%5D``): code's ``for(i=0`` or
#: ``x<y`` is none.
_FORM_KEY = re.compile(r"[\w.\-\[\]%]+")
#: A blank: no URL or form body as a client writes it holds one.
_BLANK = re.compile(r"\s")


def _percent_read(value: str) -> list[tuple[str, str]]:
    """The values of a string that IS a URL (a scheme with a host, a query or an encoded path; no blank) or a form body (``key=value`` pairs
    between ``&``, no blank) as the server that takes it reads them (``parse_qsl``: percent-decoded, ``+`` a blank),
    ``(key, value)``, for those that decoding changes: a URL's path and each query value, a form's values. Empty for
    any other string: a document with one ``%20`` link, code's ``i=i+1``, SQL's ``'%ab%'`` (rt66q F4: each was read
    whole again). rt66b F4: a query's ``text=%4D%69%78...`` reached the tool as the clause."""
    if _PERCENT_ENCODED.search(value) is None or _BLANK.search(value) is not None:
        return []
    try:
        url = urllib.parse.urlsplit(value)
    except ValueError:
        return []
    # A URL with a query and no host is one too ("mailto:bob@x.test?body=...", "sms:+1555...?body="): the mail or SMS
    # app the tool opens decodes its values (RFC 6068, RFC 5724; rt70f F3: read as a form, it was refused whole).
    # One with neither has its values in the path: iOS's "sms:+1555&body=...", "sms:+1555;body=...", an encoded
    # mailto address (rt70m F4); decoded whole, as the app reads it. Only with a "%": "a:b+c" stays a form's.
    if url.scheme and (url.netloc or url.query or "%" in url.path):
        changed = [("path", urllib.parse.unquote(url.path))] if "%" in url.path else []
        return [(k, v) for k, v in changed if v != url.path] + _changed_values(url.query, strict=False)
    return _changed_values(value, strict=True)


def _changed_values(query: str, *, strict: bool) -> list[tuple[str, str]]:
    """A query's or a form's ``(key, value)`` pairs that percent-decoding changes, as ``parse_qsl`` reads them (keys
    decoded too); ``strict``, a form body: every pair ``key=value`` (`_FORM_KEY`), else none is read."""
    pairs = [pair.partition("=") for pair in query.split("&") if pair]
    if strict and not all(sep and _FORM_KEY.fullmatch(k) for k, sep, _ in pairs):
        return []
    return [
        (urllib.parse.unquote_plus(k), read)
        for k, _, v in pairs
        if _PERCENT_ENCODED.search(v) and (read := urllib.parse.unquote_plus(v)) != v
    ]


def _by_key(values: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Decoded values by their keys, as ``parse_qs`` gives them: read again for the files within them (rt66q F5: a
    query value's base64)."""
    keyed: dict[str, list[str]] = {}
    for k, v in values:
        keyed.setdefault(k, []).append(v)
    return keyed


_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)


def _json_text(value: Any, max_chars: int | None) -> str:
    """``value`` as JSON; with ``max_chars``, text longer than that is not all written (`render_tool_call`): a value
    whose text cannot fit (`_least_chars`) is not rendered at all (as many characters as the limit and one more
    stand for it), and one of many floats (each a few microseconds to write) is written piece by piece until past
    the limit. Anything else goes to the C encoder at once: it writes deep nesting in linear time, which a
    piecewise writer does not."""
    if max_chars is None:
        return _encoded(value)
    least, floats = _least_chars(value, max_chars)
    if least > max_chars:
        return "\ufffd" * (max_chars + 1)
    if floats <= _MANY_FLOATS:
        return _encoded(value)
    parts: list[str] = []
    size = 0
    for part in _json_parts(value):
        parts.append(part)
        size += len(part)
        if size > max_chars:
            break
    return "".join(parts)


def _encoded(value: Any) -> str:
    """The C encoder's text, or for a value nested past Python's recursion limit (the C encoder counts its levels
    against it: 2,000 deep raised RecursionError out of a check) the same text from the stack-based writer."""
    try:
        return _ENCODER.encode(value)
    except RecursionError:
        return "".join(_json_parts(value))


#: Floats a value may hold and still be written by the C encoder at once (`_json_text`).
_MANY_FLOATS = 4096


def _least_chars(value: Any, limit: int) -> tuple[int, int]:
    """(the fewest characters ``value``'s JSON text can have, how many floats it holds), from a walk without
    recursion that stops once past ``limit`` characters: a string takes its length and quotes, a number or
    ``null`` one character at least, a container its brackets and a separator between items (a key its quotes:
    strings are quick to write whatever their length)."""
    least = floats = 0
    stack: list[tuple[Any, bool]] = [(value, False)]
    path: set[int] = set()  # the containers being walked: one inside itself is refused, as json does
    while stack and least <= limit:
        item, leaving = stack.pop()
        if leaving:
            path.discard(id(item))
        elif isinstance(item, str):
            least += len(item) + 2
        elif isinstance(item, (dict, list, tuple)):
            if id(item) in path:
                # Not "too large": the caller is told what json.dumps says (rt49e F5).
                raise ValueError("Circular reference detected")
            path.add(id(item))
            stack.append((item, True))
            if isinstance(item, dict):
                least += 2 + 2 * max(0, len(item) - 1) + 4 * len(item)  # ", " between pairs; quotes and ": " in each
                stack.extend(zip(item.values(), repeat(False)))  # no Python frame per item
            else:
                least += 2 + 2 * max(0, len(item) - 1)
                stack.extend(zip(item, repeat(False)))
        else:
            floats += isinstance(item, float)
            least += 1
    return least, floats


def json_text(value: Any) -> str:
    """``value`` as ``json.dumps(value, ensure_ascii=False, default=str)`` writes it, at any nesting (`_json_parts`);
    ``ValueError`` for a value that holds itself."""
    return "".join(_json_parts(value))


def _json_key(key: Any) -> str:
    """A mapping key as ``json.dumps`` writes it (a string; numbers, booleans and ``None`` as their JSON text)."""
    if isinstance(key, str):
        return key
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, (int, float)):
        return _ENCODER.encode(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _json_parts(value: Any) -> Iterator[str]:
    """The text ``json.dumps(value, ensure_ascii=False, default=str)`` writes, piece by piece, from a stack rather
    than nested generators: the standard library's incremental encoder pays for each piece once per level of
    nesting (arguments nested 900 deep took seconds), this one once. Scalars go through the C encoder."""
    stack: list[tuple[Iterator[tuple[str, Any]], str, int]] = []  # (the open container's items, closer, its id)
    path: set[int] = set()  # the containers being written: one that holds itself is refused, as json does
    prefix, item = "", value
    while True:
        opened: tuple[Iterator[tuple[str, Any]], str] | None = None
        if not isinstance(item, (dict, list, tuple)):
            yield prefix + _ENCODER.encode(item)
        elif isinstance(item, dict):
            keys = ((", " if i else "") + _ENCODER.encode(_json_key(k)) + ": " for i, k in enumerate(item))
            opened = (zip(keys, item.values()), "}")
        else:
            opened = (((", " if i else "", v) for i, v in enumerate(item)), "]")
        if opened is not None:
            if id(item) in path:
                raise ValueError("Circular reference detected")
            path.add(id(item))
            stack.append((*opened, id(item)))
            yield prefix + ("{" if opened[1] == "}" else "[")
        while stack:
            step = next(stack[-1][0], None)
            if step is not None:
                prefix, item = step
                break
            _, closer, ident = stack.pop()
            path.discard(ident)
            yield closer
        else:
            return


#: How much of the calls the model made since the user's latest request a new call is read after (characters, the
#: newest first): a clause split over calls close together is read whole (rt71j F2), and a long agent run does not
#: make every call's check carry every earlier call (up to ``max_chars``: 18 times the text judged on a 40-step run
#: of 1 KB calls, rt72m F2). A split over calls further apart than this runs.
CALLS_CONTEXT_CHARS = 8_000


def calls_context_room(max_chars: int | None) -> int:
    """The characters of earlier calls a call is read after: `CALLS_CONTEXT_CHARS`, or ``max_chars`` if smaller."""
    return CALLS_CONTEXT_CHARS if max_chars is None else min(max_chars, CALLS_CONTEXT_CHARS)


def with_tool_calls(
    text: str | None, calls: Iterable[tuple[str, Mapping[str, Any] | str | None]], *, max_chars: int | None = None
) -> str:
    """An assistant turn as the guard reads it: its text, then each ``(name, arguments)`` call as its action
    (`render_tool_call`), one a line. With ``max_chars``, written only until longer (for a size check)."""
    lines = [text] if text else []
    if max_chars is None:
        lines += [render_tool_call(name, arguments) for name, arguments in calls]
        return "\n".join(lines)
    room = max_chars - len(text or "")
    for name, arguments in calls:
        if room < 0:
            break
        lines.append(render_tool_call(name, arguments, max(room, 0)))
        room -= len(lines[-1]) + 1
    return "\n".join(lines)


def last_user_text(messages: Sequence[Message] | None) -> str | None:
    for message in reversed(_require_turns(messages, "messages")):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return None


def tool_call_conversation(
    name: str,
    arguments: Mapping[str, Any] | str | None,
    messages: Sequence[Message] | None = None,
    *,
    max_chars: int | None = None,
    max_messages: int | None = None,
) -> list[dict[str, str]]:
    """The call as the assistant's action after the conversation that asked for it: ``messages``' user and assistant
    turns of text, the assistant's after the user's latest request too (an answer is read after its history too: a
    call read after that request alone sent what the same words as an answer were blocked for, rt71b F2, rt71j F1),
    with the calls they asked for where the caller renders them in (`with_tool_calls`: a clause split over two
    successive answers' calls ran when each was read after text alone, rt71j F2).
    The request and the call are kept whole; the other turns only while all of it fits ``max_chars`` and
    ``max_messages`` (a caller's bounds: history never makes a call too large to judge), as `_action_conversation`
    trims them. With ``max_chars``, the call is rendered only until past it (`render_tool_call`): the caller refuses
    it."""
    action = render_tool_call(name, arguments, max_chars)
    return _action_conversation(action, messages, max_chars, max_messages)


def answer_calls_conversation(
    text: str | None,
    calls: Sequence[tuple[str, Mapping[str, Any] | str | None]],
    messages: Sequence[Message] | None = None,
    *,
    max_chars: int | None = None,
    max_messages: int | None = None,
) -> list[dict[str, str]] | None:
    """One answer's text and every call it asks for, in order, as one assistant action after the conversation
    (`tool_call_conversation`'s reading); ``None`` where that is one call alone, already judged whole. A clause split
    over two parallel calls (two e-mails' bodies, two appends to one file), or over an answer's text and its call,
    ran when each call was judged alone (rt71b F1).

    With ``max_chars``: where the text, the calls and the user's request together are longer, the text is cut to its
    tail that fits, the part next to the calls (its head was judged as the answer's text; an answer whose text and
    call each fit was refused whole, rt71j F3), and left out where none fits (``None`` then for one call). The calls
    themselves are written only until past it (`with_tool_calls`): the caller refuses them, as a single call that
    long."""
    words = text if (text or "").strip() else None
    if not calls or (len(calls) == 1 and words is None):
        return None
    if max_chars is None:
        return _action_conversation(with_tool_calls(words, calls), messages, max_chars, max_messages)
    acts = with_tool_calls(None, calls, max_chars=max_chars)
    if words is not None:
        room = max_chars - len(acts) - 1 - len(last_user_text(messages) or "")
        if len(words) > room:
            words = words[-room:] if room > 0 and words[-room:].strip() else None
    if words is None and len(calls) == 1:
        return None  # the call alone: judged so already
    return _action_conversation(acts if words is None else f"{words}\n{acts}", messages, max_chars, max_messages)


def _action_conversation(
    action: str, messages: Sequence[Message] | None, max_chars: int | None, max_messages: int | None
) -> list[dict[str, str]]:
    """``action`` as the assistant's turn after ``messages``' user and assistant text turns: the user's latest request
    kept whole, the assistant's turns after it (the model's own text earlier in the run, which an answer's history
    holds too: rt71j F1), then the turns before the request, while all fits the bounds. Trimmed, the turns before the
    request are left out first (the oldest first), then the oldest turns after it."""
    turns = [
        {"role": str(m["role"]), "content": m["content"]}
        for m in _require_turns(messages, "messages")
        if m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)
    ]
    last = {"role": "assistant", "content": action}
    end = next((i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == "user"), None)
    if end is None:
        return [{"role": "user", "content": ""}, last]
    room = None if max_chars is None else max_chars - len(action) - len(turns[end]["content"])
    most = len(turns) - 1 if max_messages is None else max(0, max_messages - 2)  # besides the request and the action
    # Newest first: the turns after the request, then those before it, each kept only while all of them fit.
    order = [*range(len(turns) - 1, end, -1), *range(end - 1, -1, -1)]
    kept = 0
    for i in order[:most]:
        if room is not None and len(turns[i]["content"]) > room:
            break
        room = None if room is None else room - len(turns[i]["content"])
        kept += 1
    after = len(turns) - 1 - end
    if kept <= after:  # some of the turns after the request left out: none before it
        return [turns[end], *turns[len(turns) - kept :], last]
    return [*turns[end - (kept - after) :], last]


def untrusted_conversation(text: str, what: str = "content") -> list[dict[str, str]]:
    """External text (tool output, retrieved document) as a user-side turn."""
    return [{"role": "user", "content": _require_text(text, what)}]
