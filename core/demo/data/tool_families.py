"""Tool-call families: ``Tool call: name({json})`` with safe or unsafe argument values, after a (usually safe) request."""

from __future__ import annotations

import json

from ...formats.conversations import tool_call_conversation
from .example import HARM_CATEGORIES, POLITICAL, VIOLENT, Example, _slug
from .maker import _Maker, _Slots
from .parts import _ex, _harmful, _history, _safe_qa, _unsafe_prompt_text
from .tool_texts import TOOLS_SAFE, TOOLS_UNSAFE


def _tool_request(m: _Maker) -> list[dict[str, str]] | None:
    """The user's latest request before a tool call: usually safe and unrelated to the call. The shipped demo was
    trained on calls after that request alone (`tool_call_conversation` read no earlier turn then, rt71b F2): the
    earlier exchange is still drawn, so that the data stays the same, and left out."""
    if m.chance(0.08):
        return None  # tool_call_conversation then shows an empty user turn
    q, _ = _safe_qa(m)
    if m.chance(0.15):
        _history(m, 1)  # drawn, not shown: the draws after it stay those the shipped demo's data was made with
    return [{"role": "user", "content": m.noisy(q, 0.5)}]


def _tool_args(m: _Maker, template: dict[str, str], slots: _Slots) -> dict[str, str]:
    return {k: m.fill(v, slots) for k, v in template.items()}


def tool_call_safe(m: _Maker) -> Example:
    name, args = m.choice(TOOLS_SAFE)  # tools are structure, shared by both splits; their content is split
    messages = tool_call_conversation(name, _tool_args(m, args, _Slots(m, {})), _tool_request(m))
    return _ex(messages, "safe", [], False, "tool_call", "tool_call.safe")


def tool_call_unsafe(m: _Maker) -> Example:
    name, args, fixed = m.choice(TOOLS_UNSAFE)
    cat = fixed if fixed != "*" else m.choice([c for c in HARM_CATEGORIES if c != POLITICAL] + [VIOLENT, VIOLENT])
    slots = _Slots(m, {})
    slots["harmful"] = _harmful(m, cat, slots)
    slots["unsafe_prompt"] = _unsafe_prompt_text(m, cat, slots)
    messages = tool_call_conversation(name, _tool_args(m, args, slots), _tool_request(m))
    action = messages[-1]["content"]
    # The unsafe part is the argument value as it appears JSON-escaped in the call; else the whole argument list.
    escaped = [json.dumps(v, ensure_ascii=False)[1:-1] for v in (slots["harmful"], slots["unsafe_prompt"])]
    key = next((e for e in escaped if e in action), None)
    start = action.find(key) if key else action.find("(") + 1
    end = start + len(key) if key else len(action) - 1
    return _ex(messages, "unsafe", [cat], False, "tool_call", f"tool_call.unsafe.{_slug(cat)}", [start, end])
