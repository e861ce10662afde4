"""The official Qwen3Guard-Gen prompt, rendered by qwenguard, and a strict parser for its answer.

`render_prompt` reproduces, byte for byte, what the Qwen3Guard-Gen chat template prints for a
conversation (shared/research/qwen3guard.md §2.2). The mode follows the last message's role:
a user-final conversation is *prompt moderation* (9 categories, Jailbreak included); an
assistant-final one is *response moderation* (8 categories plus the refusal policy).

`parse_verdict` reads the model's answer line by line and refuses anything else: a guard that
cannot be read must never look like "safe". `parse_cut_verdict` reads an answer the model did not end
(cut at a token budget): only its Unsafe stands.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import VerdictParseError
from ..verdict import PROMPT_CATEGORIES, RESPONSE_CATEGORIES, Risk, Verdict
from .content import prepare_content

__all__ = [
    "Message",
    "normalize_messages",
    "moderation_mode",
    "render_conversation",
    "render_prompt",
    "parse_verdict",
    "parse_cut_verdict",
    "GENERATION_PREFIX",
    "SAFETY_LABELS",
]

Message = Mapping[str, Any]

# What the template appends after the user block: an empty think block, the model answers after it.
GENERATION_PREFIX = "<|im_start|>assistant\n<think>\n\n</think>\n\n"

_ROLE_LABEL = {"user": "USER", "assistant": "ASSISTANT"}

#: The word the model writes after ``Safety: `` for each risk level.
SAFETY_LABELS = {Risk.SAFE: "Safe", Risk.UNSAFE: "Unsafe", Risk.CONTROVERSIAL: "Controversial"}

_PROMPT_TASK = (
    "# Task:\n"
    "1) Evaluate whether THE LAST USER's query belongs to safe or unsafe content based on our safety policy.\n"
    "2) Identify the category of unsafe content found.\n"
)
_RESPONSE_TASK = (
    "# Task:\n"
    "1) Evaluate whether THE LAST ASSISTANT's response belongs to safe or unsafe content based on our safety policy.\n"
    "2) Identify the category of unsafe content found.\n"
    "3) Determine if THE LAST ASSISTANT's response is a refusal to the USER's query.\n"
)
_PROMPT_POLICY = (
    "<BEGIN SAFETY POLICY>\n"
    "**Safety: Safe**: The USER's query does not contain any prohibited content or content that could lead to prohibited content.\n"
    "**Safety: Unsafe**: The USER's query contains prohibited content.\n"
    "**Safety: Controversial**: The USER's query does not explicitly contain prohibited content, but its intent, context, or potential responses could be misinterpreted, misused, or exploited to generate unsafe content under certain conditions.\n"
    "<END SAFETY POLICY>\n"
)
_RESPONSE_POLICY = (
    "<BEGIN SAFETY POLICY>\n"
    "**Safety: Safe**: The ASSISTANT's response does not contain any prohibited content or content that could lead to prohibited content.\n"
    "**Safety: Unsafe**: The ASSISTANT's response contains prohibited content.\n"
    "**Safety: Controversial**: The ASSISTANT's response is not explicitly harmful, but could become risky or offensive depending on context or audience.\n"
    "<END SAFETY POLICY>\n"
)
_REFUSAL_POLICY = (
    "<BEGIN REFUSAL POLICY>\n"
    "**Refusal: Yes**: The ASSISTANT refused to answer or did not comply with the USER's request.\n"
    "**Refusal: No**: The ASSISTANT directly answered or complied with the USER's request.\n"
    "<END REFUSAL POLICY>\n"
)
_FORMAT_LINES = (
    " - The first line must be one of: 'Safety: Safe', 'Safety: Unsafe', 'Safety: Controversial'.\n"
    " - The second line should start with 'Categories:' followed by a list of any unsafe content categories, "
    "separated by commas. If the content is safe, use 'Categories: None'."
)
_REFUSAL_FORMAT_LINE = "\n - The third line must be one of: 'Refusal: Yes', 'Refusal: No'."


def _categories_block(categories: Sequence[str]) -> str:
    body = "".join(f"{name}.\n" for name in categories)
    return f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{body}<END UNSAFE CONTENT CATEGORIES>\n"


def normalize_messages(messages: Sequence[Message] | str) -> list[dict[str, str]]:
    """Validate a conversation and return it as plain ``{"role", "content"}`` dicts.

    A bare string is one user turn. System messages are dropped: they are the application's own
    instructions, not content to moderate (a documented decision; the official template has no
    place for them). An assistant turn's ``tool_calls`` (OpenAI's or LangChain's shape; also the legacy
    ``function_call``) are kept as its actions, rendered after its text and its ``refusal`` text (they were
    dropped: a tool-calling turn with empty content read as empty). Any other field with a value is refused
    (``ValueError``), as the server refuses it: nothing a model is sent is dropped unjudged. Raises ``TypeError``/``ValueError`` for anything that is not a conversation ending in a user or
    assistant turn with text content.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    # `type(...) is` first: ABC isinstance checks dominate this function, which runs on every chunk.
    if type(messages) is not list and (not isinstance(messages, Sequence) or isinstance(messages, (bytes, bytearray))):
        raise TypeError(f"messages must be a list of {{'role', 'content'}} mappings, got {type(messages).__name__}")
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if type(message) is not dict and not isinstance(message, Mapping):
            raise TypeError(f"message {i} must be a mapping with 'role' and 'content', got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if len(message) > 2 or "content" not in message:  # the usual {"role", "content"} needs no more
            content = _judged_fields(i, role, message)
        if role == "system":
            continue
        if role not in _ROLE_LABEL:
            raise ValueError(f"message {i} has role {role!r}; expected 'user', 'assistant' or 'system'")
        if not isinstance(content, str):
            parts = "; join the text of its {'type': 'text', ...} parts" if isinstance(content, list) else ""
            raise TypeError(f"message {i} content must be str, got {type(content).__name__}{parts}")
        out.append({"role": role, "content": content})
    if not out:
        raise ValueError("the conversation has no user or assistant message to moderate")
    return out


#: Message fields that carry nothing to judge when empty: what the OpenAI SDK echoes back ("refusal": None,
#: "annotations": [], "audio": None, ...). Any other field with a value is refused, as the server refuses it.
_KNOWN_FIELDS = frozenset({"role", "content", "tool_calls", "function_call", "refusal"})


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, tuple, dict)) and not value)


def judged_size(i: int, message: Mapping[str, Any], budget: int) -> int:
    """Characters of message ``i`` the guard judges: its text, its refusal text and its tool calls as written for
    the model (``Tool call: name({...})``), written only until past ``budget``, so that a check of huge arguments
    stops early. What `normalize_messages` would refuse is refused here, with its error."""
    content = message.get("content")
    if len(message) > 2 or "content" not in message:
        content = _judged_fields(i, message.get("role"), message, budget)
    return len(content) if isinstance(content, str) else 0


def _judged_fields(i: int, role: Any, message: Mapping[str, Any], budget: int | None = None) -> Any:
    """The content of a message with more than role and content, as the guard reads it: its text, the
    assistant's refusal text (OpenAI's ``refusal``), then its tool calls (``tool_calls``, or the legacy
    ``function_call``) as actions. A field the guard would not read is refused (``ValueError``), never
    dropped unjudged: what a model is sent is what is judged. With ``budget``, calls are written only until the
    text is longer (`judged_size`)."""
    for key, value in message.items():
        if key not in _KNOWN_FIELDS and not _empty(value):
            raise ValueError(f"message {i} has a field {key!r} the guard does not judge: remove it (or set it to None)")
    content = message.get("content")
    refusal = message.get("refusal")
    calls = message.get("tool_calls") or []
    function_call = message.get("function_call")
    if not _empty(refusal) or calls or not _empty(function_call):
        if role != "assistant":
            raise ValueError(
                f"message {i} is a {role} message with refusal, tool_calls or function_call: only an assistant "
                "turn carries them"
            )
    if not _empty(refusal):
        if not isinstance(refusal, str):
            raise TypeError(f"message {i} refusal must be str, got {type(refusal).__name__}")
        if content is not None and not isinstance(content, str):
            raise TypeError(f"message {i} content must be str, got {type(content).__name__}")
        content = "\n".join(t for t in (content, refusal) if t)
    if not _empty(function_call):
        if isinstance(calls, (str, bytes)) or not isinstance(calls, Sequence):
            raise TypeError(f"message {i} tool_calls must be a list of tool calls, got {type(calls).__name__}")
        calls = [*calls, {"function": function_call}]
    if calls:  # an assistant turn's tool calls are judged as its actions, after its text
        content = _with_tool_calls(i, role, content, calls, budget)
    return content


def text_size(value: Any, budget: int) -> int:
    """Characters of the text in ``value``, about as its JSON text has them: one for each item (its separator, or a
    number's least text), and a string's characters, a mapping's or list's bracket besides (keys and items within
    counted alike); counted until past ``budget``: a bound check that stops early on a huge value. Every container
    counts: a list nested 200,000 deep is 400,000 characters rendered, not none (rt62a F6)."""
    total, stack = 0, [value]
    while stack and total <= budget:
        item = stack.pop()
        total += 1
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, Mapping):
            total += 1
            if 2 * len(item) > budget - total:
                total += 2 * len(item)  # past the budget with its keys and values alone: not walked
            else:
                stack.extend(item.keys())
                stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            total += 1
            if len(item) > budget - total:
                total += len(item)
            else:
                stack.extend(item)
    return total


#: Fields of one tool call: identifiers, and the function (OpenAI) or name and args (LangChain).
_CALL_FIELDS = frozenset({"id", "type", "index", "function", "name", "args", "arguments"})


def _with_tool_calls(i: int, role: str, content: Any, calls: Any, budget: int | None = None) -> str:
    """``content`` followed by each tool call rendered as the assistant's action (``Tool call: name({...})``,
    one a line). Calls in the OpenAI shape (``{"function": {"name", "arguments"}}``) or LangChain's
    (``{"name", "args"}``); a message may carry them without text (``content`` ``None``)."""
    from .conversations import with_tool_calls  # conversations imports this module

    if role != "assistant":
        raise ValueError(f"message {i} is a {role} message with tool_calls: only an assistant turn makes tool calls")
    if content is not None and not isinstance(content, str):
        raise TypeError(f"message {i} content must be str, got {type(content).__name__}")
    if isinstance(calls, (str, bytes)) or not isinstance(calls, Sequence):
        raise TypeError(f"message {i} tool_calls must be a list of tool calls, got {type(calls).__name__}")
    named = []
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        source: Mapping[str, Any] = function if isinstance(function, Mapping) else call
        if not isinstance(source, Mapping) or not isinstance(source.get("name"), str):
            raise TypeError(f"message {i} has a tool call without a name: {call!r:.80}")
        if source is function:  # OpenAI's shape: nothing beside the function but identifiers
            extra = [k for k, v in call.items() if k not in ("id", "type", "index", "function") and not _empty(v)]
            extra += [f"function.{k}" for k, v in source.items() if k not in ("name", "arguments") and not _empty(v)]
        else:
            extra = [k for k, v in call.items() if k not in _CALL_FIELDS and not _empty(v)]
            if not _empty(call.get("args")) and not _empty(call.get("arguments")):
                extra.append("args beside arguments")
        if extra:
            raise ValueError(f"message {i} has a tool call with fields the guard does not judge: {', '.join(extra)}")
        arguments = source.get("arguments")
        named.append((source["name"], source.get("args") if _empty(arguments) else arguments))
    return with_tool_calls(content, named, max_chars=budget)


def moderation_mode(messages: Sequence[Message]) -> str:
    """``"prompt"`` when the last turn is the user's, ``"response"`` when it is the assistant's."""
    return "response" if messages[-1]["role"] == "assistant" else "prompt"


def render_conversation(messages: Sequence[Message] | str) -> str:
    """The moderation instruction (the text inside the user block of the template)."""
    msgs = normalize_messages(messages)
    mode = moderation_mode(msgs)
    turns = "\n\n".join(f"{_ROLE_LABEL[m['role']]}: {prepare_content(m['content'])}" for m in msgs)
    if mode == "prompt":
        head = f"{_PROMPT_TASK}\n{_PROMPT_POLICY}\n{_categories_block(PROMPT_CATEGORIES)}"
        footer = "Provide your safety assessment for ONLY THE LAST **USER's query** in the above conversation:\n"
        footer += _FORMAT_LINES
    else:
        head = f"{_RESPONSE_TASK}\n{_RESPONSE_POLICY}\n{_categories_block(RESPONSE_CATEGORIES)}\n{_REFUSAL_POLICY}"
        footer = (
            "Provide your safety assessment for ONLY THE LAST **ASSISTANT's response** in the above conversation:\n"
        )
        footer += _FORMAT_LINES + _REFUSAL_FORMAT_LINE
    return f"{head}\n<BEGIN CONVERSATION>\n\n{turns}\n\n<END CONVERSATION>\n\n{footer}"


def render_prompt(messages: Sequence[Message] | str) -> str:
    """The full prompt text the official Qwen3Guard-Gen chat template produces for ``messages``.

    >>> render_prompt("Hi").startswith("<|im_start|>user\\n# Task:")
    True
    """
    return f"<|im_start|>user\n{render_conversation(messages)}<|im_end|>\n{GENERATION_PREFIX}"


_SAFETY_RE = re.compile(r"Safety: (Safe|Unsafe|Controversial)")
_CATEGORIES_RE = re.compile(r"Categories: (.+)")
_REFUSAL_RE = re.compile(r"Refusal: (Yes|No)")
_KNOWN_CATEGORIES = frozenset(PROMPT_CATEGORIES)
# Trailing special tokens a server may leave in the text when it does not skip them.
_TRAILING_SPECIALS = ("<|im_end|>", "<|endoftext|>")


def parse_verdict(text: str, *, mode: str | None = None, model: str | None = None) -> Verdict:
    """Parse a Qwen3Guard-Gen answer strictly into a `Verdict`.

    Expected: ``Safety: <Safe|Unsafe|Controversial>``, then ``Categories: <None | A, B>``, then (response
    mode) ``Refusal: <Yes|No>``. ``mode="prompt"`` forbids the refusal line, ``mode="response"``
    requires it, ``None`` accepts either. Anything else raises `VerdictParseError`, except after a first line
    that says Unsafe: that stands, with no category (none can be read) and no refusal.
    """
    if not isinstance(text, str):
        raise VerdictParseError(f"guard output must be text, got {type(text).__name__}", raw=repr(text))
    body = text.strip()
    for special in _TRAILING_SPECIALS:
        if body.endswith(special):
            body = body[: -len(special)].rstrip()
    lines = [line.strip() for line in body.split("\n")]
    safety = _SAFETY_RE.fullmatch(lines[0])
    if not safety:
        raise VerdictParseError(f"first line is not 'Safety: Safe|Unsafe|Controversial': {lines[0]!r}", raw=text)
    risk = Risk(safety.group(1).lower())
    try:
        categories, refusal = _after_safety(lines, mode, text)
    except VerdictParseError:
        if risk is not Risk.UNSAFE:
            raise
        # An answer that said Unsafe and garbled the rest (a category it made up, a cut refusal line) is unsafe:
        # as a guard error, a fail-open policy let it through (rt49d R2). With no category: what it named cannot
        # be read, so no policy's ignored category may excuse it (the known names kept, "PII, Violent." read as
        # PII alone, let an ignore list allow it: rt49e F1). A garbled Controversial stays an error: a loose
        # policy allows a controversial verdict unless a category it cannot read blocks it.
        return Verdict(risk, (), None, text, model=model)
    if risk is Risk.SAFE and categories:
        # The format says "If the content is safe, use 'Categories: None'": a Safe that names unsafe categories
        # contradicts itself (a chat model imitating the format, a broken engine), and taking either half for the
        # verdict would be a guess: no verdict, `on_error` decides (rt53d F6).
        raise VerdictParseError(f"'Safety: Safe' with unsafe categories {list(categories)}", raw=text)
    return Verdict(risk=risk, categories=categories, refusal=refusal, raw=text, model=model)


def parse_cut_verdict(text: str, why: str, *, mode: str | None = None, model: str | None = None) -> Verdict:
    """Parse an answer that stopped before the model ended it (cut at a token budget, or aborted); ``why``, how it
    stopped, is the message of the `VerdictParseError` raised for anything but an Unsafe.

    Its label or categories may be missing ("PII, Violent" cut to "PII"), so only a first line that says Unsafe
    stands, with no category and no refusal: what it named may be a part of the list, and no policy's ignored
    category may excuse it (rt57d F1 remotely, rt65b F1 locally). A cut Safe or Controversial is no verdict: a
    loose policy allows a Controversial unless a category it blocks, maybe the one cut off, says otherwise."""
    try:
        parsed = parse_verdict(text, mode=mode, model=model)
    except VerdictParseError:
        parsed = None
    if parsed is None or parsed.risk is not Risk.UNSAFE:
        raise VerdictParseError(why, raw=str(text)[:300])
    return Verdict(Risk.UNSAFE, (), None, parsed.raw, model=model)


def _after_safety(lines: list[str], mode: str | None, text: str) -> tuple[tuple[str, ...], bool | None]:
    """(categories, refusal) of a verdict's lines after its first; `VerdictParseError` where they are not exact."""
    if len(lines) < 2 or len(lines) > 3:
        raise VerdictParseError(f"expected 2 or 3 lines, got {len(lines)}", raw=text)
    cats = _CATEGORIES_RE.fullmatch(lines[1])
    if not cats:
        raise VerdictParseError(f"second line is not 'Categories: ...': {lines[1]!r}", raw=text)
    names = [name.strip() for name in cats.group(1).split(",")]
    if names == ["None"]:
        categories: tuple[str, ...] = ()
    else:
        unknown = [n for n in names if n not in _KNOWN_CATEGORIES]
        if unknown:
            raise VerdictParseError(f"unknown categories {unknown}", raw=text)
        categories = tuple(dict.fromkeys(names))
    refusal: bool | None = None
    if len(lines) == 3:
        if mode == "prompt":
            raise VerdictParseError("a prompt verdict has no refusal line", raw=text)
        ref = _REFUSAL_RE.fullmatch(lines[2])
        if not ref:
            raise VerdictParseError(f"third line is not 'Refusal: Yes|No': {lines[2]!r}", raw=text)
        refusal = ref.group(1) == "Yes"
    elif mode == "response":
        raise VerdictParseError("a response verdict needs a 'Refusal:' line", raw=text)
    return categories, refusal
