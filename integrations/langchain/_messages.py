"""LangChain messages → guard conversations, by role.

DESIGN.md decision 12: the user's own turns are prompts; the assistant's text is a response and the
tool calls it asks for are actions; tool results (and retrieved context) are untrusted content from
outside. This module decides *what* to check in a list of LangChain messages; the callers decide
when, and what a violation does.

Context kept for a check: the last few user/assistant text turns (`DEFAULT_HISTORY_TURNS`). Tool
messages are never used as context of another check: untrusted text must not colour the verdict on
the user's own words.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from qwenguard.core import Stage
from qwenguard.core.formats.conversations import (
    prompt_conversation,
    response_conversation,
    tool_call_conversation,
    untrusted_conversation,
)

__all__ = [
    "DEFAULT_HISTORY_TURNS",
    "Item",
    "message_text",
    "guard_history",
    "pending_inputs",
    "output_items",
    "prompt_items",
]

#: How many earlier user/assistant text turns a check sees as context.
DEFAULT_HISTORY_TURNS = 6


@dataclass
class Item:
    """One check to run: ``stage`` + ``conversation`` (for `Guard.check_many`), and what it came from."""

    stage: Stage
    conversation: list[dict[str, str]]
    message: BaseMessage | None = None
    index: int | None = None  # position of ``message`` in the list it came from
    tool_call: Mapping[str, Any] | None = None
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pair(self) -> tuple[Stage, list[dict[str, str]]]:
        return self.stage, self.conversation


def message_text(message: BaseMessage | str | Any) -> str:
    """The text of a message (string content or its text blocks); ``""`` when it has none."""
    if isinstance(message, str):
        return message
    if isinstance(message, BaseMessage):
        return str(message.text)
    content = getattr(message, "content", message)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and block.get("type") == "text" and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return "".join(parts)
    return "" if content is None else str(content)


def _role(message: BaseMessage) -> str | None:
    if isinstance(message, HumanMessage) or message.type == "human":
        return "user"
    if isinstance(message, AIMessage) or message.type == "ai":
        return "assistant"
    return None  # system, tool, function, ...: not conversation context


def guard_history(messages: Sequence[BaseMessage], turns: int = DEFAULT_HISTORY_TURNS) -> list[dict[str, str]]:
    """The last ``turns`` user/assistant text turns of ``messages`` as ``{"role", "content"}`` dicts."""
    out: list[dict[str, str]] = []
    for message in messages:
        role = _role(message)
        text = message_text(message) if role else ""
        if role and text.strip():
            out.append({"role": role, "content": text})
    return out[-turns:] if turns > 0 else []


def tool_arguments(tool_call: Mapping[str, Any]) -> Mapping[str, Any] | str:
    """A tool call's arguments as a mapping (or the raw JSON text when it is not an object)."""
    args = tool_call.get("args")
    if isinstance(args, Mapping):
        return args
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except ValueError:
            return args
        return parsed if isinstance(parsed, Mapping) else args
    return {} if args is None else str(args)


def _last_ai_index(messages: Sequence[BaseMessage]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if _role(messages[i]) == "assistant":
            return i
    return -1


def pending_inputs(
    messages: Sequence[BaseMessage], turns: int = DEFAULT_HISTORY_TURNS, *, since: int | None = None
) -> list[Item]:
    """What is new for the model since its last turn: user turns (prompts) and tool results (untrusted).

    ``since``: index of the first new message; default: everything after the last AI message. Human
    messages become prompt checks (with the earlier turns as history); `ToolMessage`s become
    tool-result checks. Empty texts are skipped (nothing to judge).
    """
    start = _last_ai_index(messages) + 1 if since is None else since
    items: list[Item] = []
    for i in range(start, len(messages)):
        message = messages[i]
        text = message_text(message)
        if not text.strip():
            continue
        if isinstance(message, ToolMessage) or message.type == "tool":
            name = getattr(message, "name", None) or "tool"
            conversation = untrusted_conversation(text, "tool output")
            items.append(Item(Stage.TOOL_RESULT, conversation, message, i, label=f"tool result of {name}"))
        elif _role(message) == "user":
            history = guard_history(messages[:i], turns)
            items.append(Item(Stage.PROMPT, prompt_conversation(text, history), message, i, label="user input"))
    return items


def prompt_items(prompts: Sequence[str]) -> list[Item]:
    """Plain-text LLM prompts (``on_llm_start``): each one is the user's input."""
    return [
        Item(Stage.PROMPT, prompt_conversation(p), None, i, label="prompt") for i, p in enumerate(prompts) if p.strip()
    ]


def output_items(
    message: BaseMessage,
    context: Sequence[BaseMessage] | Sequence[Mapping[str, str]],
    turns: int = DEFAULT_HISTORY_TURNS,
    *,
    text: bool = True,
    tool_calls: bool = True,
) -> list[Item]:
    """The model's answer: its text as a response check and each tool call it asks for as an action.

    ``context``: the messages the model saw (LangChain messages or guard dicts).
    """
    history = _as_history(context, turns)
    items: list[Item] = []
    body = message_text(message)
    if text and body.strip():
        items.append(Item(Stage.RESPONSE, response_conversation(history, body), message, label="model response"))
    if tool_calls:
        for call in getattr(message, "tool_calls", None) or ():
            name = call.get("name") or ""
            items.append(
                Item(
                    Stage.TOOL_CALL,
                    tool_call_conversation(name, tool_arguments(call), history),
                    message,
                    tool_call=call,
                    label=f"tool call {name}",
                )
            )
    return items


def _as_history(context: Sequence[Any], turns: int) -> list[dict[str, str]]:
    if context and isinstance(context[0], BaseMessage):
        return guard_history(context, turns)
    return [dict(m) for m in context][-turns:] if turns > 0 else []
