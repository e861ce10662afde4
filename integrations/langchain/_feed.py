"""What one streamed model run feeds the guard, from whichever hook carries it — never from both.

LangChain reports a streamed chunk through two hooks. Classic streaming (``stream``, LangGraph's
``stream_mode="messages"``) calls ``on_llm_new_token``. ``stream_events(version="v3")`` calls
``on_stream_event`` with protocol events *and*, for every provider whose ``_stream`` reports its own
tokens (``ChatOpenAI`` and most real models do), ``on_llm_new_token`` for the same chunk. Feeding both
into one check made the guard read every word twice ("The The capital capital ..."), pay twice the
checks and report doubled offsets. So the first hook that speaks for a run is its source, and the other
is ignored for content: a v3 run of a real model is judged from its tokens, a v3 run of a model that
only emits protocol events from its events.

Finish events matter either way: a ``content-block-finish`` repeats the whole block to the consumer,
so everything fed must be judged by then (`StreamFeed.flush` at every finish event). A block that
arrives only whole in its finish event (no deltas: server-side tool results, a finished tool call) is
fed there.

A run judged from its events is judged one event late: LangChain hands each v3 event to the consumer
*before* ``on_stream_event`` runs (langchain-core's ``_iter_v2_events``), so the event a stop is found in (a
text delta, a tool call's name in its ``content-block-start``, a block whole in its finish) is already out,
under ``"pipelined"`` as under ``"gate"``. The callback handler refuses such a run where nothing may go out
unjudged (``"gate"``, ``max_unjudged=0``: rt69k F1); a run judged from its tokens is judged before its events.

Tool-call arguments stream as text too: each call (by its index) has its own screen, judged as the
assistant's action (``Tool call: name({...``). So does a call's name: it reaches the consumer with the first
piece (a v3 ``content-block-start``), and a model may write a sentence there, in pieces LangChain adds up; each
piece is unjudged text of the call's screen (`ToolCallGate.rename`), judged (or waited for) before the hook
returns, as arguments are (rt69d F1): before its chunk goes out when judged from tokens, with its event when
judged from events (above). An answer's own ``name`` (a chunk's ``name``) is fed to the text's screen.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .._common import Kinds
from ._messages import StreamReading, answer_text, answer_tool_calls, block_text, message_text
from ._streaming import Screen, ToolCallGate

__all__ = ["StreamFeed", "Piece"]

#: ``(screen, delta)``: one piece of text to judge, and the screen that judges it.
Piece = tuple[Screen, str]

_TOOL_BLOCKS = Kinds({"tool_call_chunk", "server_tool_call_chunk", "tool_call", "server_tool_call"})
_SERVER_BLOCKS = Kinds({"server_tool_call_chunk", "server_tool_call"})
_FINISH = Kinds({"content-block-finish", "message-finish"})


def _args_text(args: Any) -> str:
    if args is None:
        return ""
    return args if isinstance(args, str) else json.dumps(args, ensure_ascii=False, default=str)


class StreamFeed:
    """One model run's stream as pieces of text for the guard's screens (opened lazily).

    ``open_text()`` opens the screen of the answer's text (``None``: text is not screened);
    ``open_tool(name)`` the screen of one tool call's arguments (``None``: tool calls are not screened).
    """

    def __init__(self, open_text: Callable[[], Screen | None], open_tool: Callable[[str], Screen | None]) -> None:
        self._open_text = open_text
        self._open_tool = open_tool
        self.source: str | None = None  # "token" or "event": the hook this run is judged from
        self.text: Screen | None = None
        self._text_opened = False
        self.tools: dict[Any, Screen | None] = {}
        self._names: dict[Any, str] = {}  # each call's name as it streamed so far
        self._answer_name = ""  # the answer's own name, as fed to the text's screen
        self._fed_blocks: set[Any] = set()  # event block indexes that had deltas
        self._reading = StreamReading()  # the chunks' blocks read whole, joined as LangChain adds them up

    @property
    def streamed(self) -> bool:
        """Did any text reach the answer's screen (the whole answer needs no second check then)?"""
        return self.text is not None

    def screens(self) -> list[Screen]:
        out = [self.text] if self.text is not None else []
        return out + [s for s in self.tools.values() if s is not None]

    # -- the screens ----------------------------------------------------------------------------
    def _text_piece(self, text: str) -> list[Piece]:
        if not text:
            return []
        if not self._text_opened:
            self._text_opened = True
            self.text = self._open_text()
        return [(self.text, text)] if self.text is not None else []

    def _tool_piece(self, key: Any, args: str) -> list[Piece]:
        """The call's new arguments, and its name as streamed so far: a piece whenever either is unjudged text."""
        if key not in self.tools:
            self.tools[key] = self._open_tool(self._names.get(key) or "tool")
        screen = self.tools[key]
        if screen is None:
            return []
        gate = getattr(screen, "gate", None)
        named = False
        if isinstance(gate, ToolCallGate):
            gate.rename(self._names.get(key, ""))
            named = gate.name_unjudged > 0
        return [(screen, args)] if args or named else []

    def _name_piece(self, message: Any) -> list[Piece]:
        """An answer's ``name`` (ChatOpenAI sends it back with the turn; the consumer reads it): judged as the text
        it streams with, once each time it changes (rt69d F3)."""
        name = getattr(message, "name", None)
        if not isinstance(name, str) or not name.strip() or name == self._answer_name:
            return []
        self._answer_name = name
        return self._text_piece(name + "\n")

    def _claim(self, source: str) -> bool:
        if self.source is None:
            self.source = source
        return self.source == source

    # -- on_llm_new_token -----------------------------------------------------------------------
    def token_pieces(self, token: Any, chunk: Any) -> list[Piece]:
        """What an ``on_llm_new_token`` call adds ([] when this run is judged from its events)."""
        if not self._claim("token"):
            return []
        message = getattr(chunk, "message", None)
        if message is not None:
            text = answer_text(message, self._reading)
        elif chunk is not None and isinstance(getattr(chunk, "text", None), str):
            text = chunk.text
        else:
            text = token if isinstance(token, str) else message_text(token)
        pieces = self._name_piece(message) + self._text_piece(text)
        for key, call in self._calls(message):
            piece = call.get("name")
            if isinstance(piece, str) and piece:  # a piece of the name: LangChain adds them up, as it shows them
                self._names[key] = self._names.get(key, "") + piece
            pieces += self._tool_piece(key, _args_text(call.get("args")))
        return pieces

    @staticmethod
    def _calls(message: Any) -> list[tuple[Any, Mapping[str, Any]]]:
        """A chunk's tool-call pieces, by the call they belong to: ``tool_call_chunks``, a legacy
        ``function_call`` (``{"name", "arguments"}`` in ``additional_kwargs``), server tool-call blocks and
        tool-call blocks that mirror no ``tool_call_chunks`` entry (`answer_tool_calls` leaves mirrors out)."""
        out: list[tuple[Any, Mapping[str, Any]]] = []
        for call in getattr(message, "tool_call_chunks", None) or ():
            out.append((call.get("index") if call.get("index") is not None else call.get("id"), call))
        for call in answer_tool_calls(message):
            where = call.get("index") if call.get("index") is not None else call.get("id")
            if call.get("block"):  # a tool-call content block of its own
                out.append((("block", where), call))
            elif call.get("type") == "function_call":
                out.append(("function_call", call))
            elif call.get("type") in _SERVER_BLOCKS:  # a tool the provider runs itself, in the content
                out.append((("server", where), call))
        return out

    # -- on_stream_event ------------------------------------------------------------------------
    def event_pieces(self, event: Any) -> tuple[list[Piece], bool]:
        """``(pieces, finish)`` of a v3 protocol event; ``finish``: flush every screen (the event itself is out already)."""
        if not isinstance(event, Mapping):
            return [], False
        kind = event.get("event")
        mine = self._claim("event")
        if not mine:
            return [], kind in _FINISH
        index = ("event", event.get("index"))
        if kind == "content-block-start":
            content = event.get("content") or {}
            if content.get("type") in _TOOL_BLOCKS and isinstance(content.get("name"), str) and content["name"]:
                # The name went out with this event (LangChain dispatches it first): judged as this hook returns.
                self._names[index] = content["name"]
                return self._tool_piece(index, ""), False
            return [], False
        if kind == "content-block-delta":
            delta = event.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text-delta":
                self._fed_blocks.add(index)
                return self._text_piece(delta.get("text") or ""), False
            if dtype == "reasoning-delta":
                self._fed_blocks.add(index)
                return self._text_piece(delta.get("reasoning") or ""), False
            if dtype == "tool-call-delta":
                self._fed_blocks.add(index)
                return self._tool_piece(index, _args_text(delta.get("args"))), False
            return [], False  # media data: not text
        if kind == "content-block-finish":
            content = event.get("content") or {}
            whole = index not in self._fed_blocks  # the block arrives whole, in this event: judged with it
            self._fed_blocks.add(index)
            if content.get("type") in _TOOL_BLOCKS:
                if isinstance(content.get("name"), str) and content["name"]:
                    self._names[index] = content["name"]  # whole: a name that grew after its start is read here
                if whole or index in self.tools:
                    return self._tool_piece(index, _args_text(content.get("args")) if whole else ""), True
                return [], True
            return (self._text_piece(block_text(content)) if whole else []), True
        return [], kind in _FINISH
