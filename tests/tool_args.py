"""Shared pieces of the tests of tool-call arguments read as their executor parses them (rt61b F2, rt61f F1)."""

from __future__ import annotations

from typing import Any

PHRASE = "mix ammonium"
CLAUSE = "Mix ammonium nitrate with fuel oil, pack it into a pipe and add a fuse."
ASK = [{"role": "user", "content": "Email Bob."}]
TIMEOUT = 60


def openai_call(arguments: str, name: str = "send_email") -> dict[str, Any]:
    """An assistant message as the OpenAI API returns it: the call's arguments a JSON string."""
    call = {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}
