"""LlamaIndex ``ChatMessage`` lists, sorted by role into what the guard must judge.

An LLM call's input mixes text of different trust: the user's own turn, earlier turns, the
application's system prompt, tool outputs, and (in RAG) retrieved context. Only the user's turn is a
*prompt*; tool outputs are untrusted content that may carry injected instructions (DESIGN.md
decision 12). A naive "check the last message" fires on tool output as if the user wrote it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.llms.llm import ToolSelection

from qwenguard.core.formats.conversations import prompt_conversation, untrusted_conversation
from qwenguard.core.verdict import Stage

__all__ = ["Turn", "split_turn", "message_text", "with_text", "tool_calls_in", "role_of"]

GuardMessage = dict[str, str]


def role_of(message: ChatMessage) -> str:
    return getattr(message.role, "value", str(message.role))


def message_text(message: ChatMessage) -> str:
    """The text blocks of a message, joined (images and tool-call blocks are not text)."""
    return "\n".join(b.text for b in message.blocks if isinstance(b, TextBlock))


def with_text(message: ChatMessage, text: str) -> ChatMessage:
    """A copy of ``message`` whose text is ``text``; non-text blocks (tool calls, images) are kept."""
    others = [b for b in message.blocks if not isinstance(b, TextBlock)]
    blocks = ([TextBlock(text=text)] if text or not others else []) + others
    return message.model_copy(update={"blocks": blocks})


@dataclass
class Turn:
    """One LLM call's input, sorted by trust.

    ``history``: earlier user/assistant text turns; ``user``: the latest user turn (``None`` when the
    input has none, e.g. a bare system prompt); ``tool_outputs``: ``(tool name, text)`` for tool
    messages after the latest user turn; ``system``: system prompt texts.
    """

    history: list[GuardMessage] = field(default_factory=list)
    user: str | None = None
    tool_outputs: list[tuple[str, str]] = field(default_factory=list)
    system: list[str] = field(default_factory=list)

    @property
    def prompt(self) -> list[GuardMessage]:
        """The conversation an answer is judged against: history and the user's turn."""
        return prompt_conversation(self.user or "", self.history)

    def checks(self, *, screen_system: bool = False) -> list[tuple[Stage, list[GuardMessage]]]:
        """The guard checks this input needs, as ``(stage, conversation)`` pairs for one batch."""
        items: list[tuple[Stage, list[GuardMessage]]] = []
        if self.user is not None and self.user.strip():
            items.append((Stage.PROMPT, self.prompt))
        for name, text in self.tool_outputs:
            if text.strip():
                items.append((Stage.TOOL_RESULT, untrusted_conversation(text, f"output of tool {name}")))
        if screen_system:
            items.extend((Stage.PROMPT, untrusted_conversation(t, "system prompt")) for t in self.system if t.strip())
        return items


def _tool_names(messages: Sequence[ChatMessage]) -> dict[str, str]:
    """Tool call id → tool name, from the assistant messages that asked for the calls."""
    names: dict[str, str] = {}
    for m in messages:
        for b in m.blocks:
            if isinstance(b, ToolCallBlock) and b.tool_call_id:
                names[b.tool_call_id] = b.tool_name
        for call in m.additional_kwargs.get("tool_calls") or ():
            call_id = getattr(call, "tool_id", None) or getattr(call, "id", None)
            name = getattr(call, "tool_name", None) or getattr(getattr(call, "function", None), "name", None)
            if call_id and name:
                names[str(call_id)] = str(name)
    return names


def split_turn(messages: Sequence[ChatMessage]) -> Turn:
    """Sort an LLM call's messages by role. Tool messages are taken only after the latest user
    turn: earlier ones were screened when they were new (and the guard's cache makes repeats free)."""
    turn = Turn()
    last_user = max((i for i, m in enumerate(messages) if role_of(m) == MessageRole.USER.value), default=None)
    names = _tool_names(messages)
    for i, m in enumerate(messages):
        role, text = role_of(m), message_text(m)
        if role in (MessageRole.SYSTEM.value, MessageRole.DEVELOPER.value):
            turn.system.append(text)
        elif i == last_user:
            turn.user = text
        elif role in (MessageRole.TOOL.value, MessageRole.FUNCTION.value):
            if last_user is None or i > last_user:
                call_id = str(m.additional_kwargs.get("tool_call_id") or "")
                name = names.get(call_id) or str(m.additional_kwargs.get("name") or "tool")
                turn.tool_outputs.append((name, text))
        elif role in (MessageRole.USER.value, MessageRole.ASSISTANT.value, MessageRole.CHATBOT.value, MessageRole.MODEL.value):
            if text.strip() and (last_user is None or i < last_user):
                turn.history.append({"role": "user" if role == MessageRole.USER.value else "assistant", "content": text})
    return turn


def tool_calls_in(llm: Any, response: ChatResponse) -> list[ToolSelection]:
    """The tool calls a chat response asks for, read the way the agent will read them."""
    getter = getattr(llm, "get_tool_calls_from_response", None)
    if getter is not None:
        try:
            return list(getter(response, error_on_no_tool_call=False) or [])
        except NotImplementedError:
            pass
    # An LLM that cannot parse its own tool calls: read the standard blocks directly.
    return [
        ToolSelection(tool_id=b.tool_call_id or "", tool_name=b.tool_name, tool_kwargs=b.tool_kwargs)
        for b in response.message.blocks
        if isinstance(b, ToolCallBlock)
    ]
