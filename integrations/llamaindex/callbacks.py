"""`GuardCallbackHandler`: screening through LlamaIndex's legacy callback system.

Legacy callback handlers run inline and their exceptions propagate, so this handler *can* stop a
query: at the query string, at the retrieved nodes, at the LLM's input and at its answer. It is
coarser than `GuardedLLM`: the callback payloads carry no stream chunks and no tool calls, an LLM's
input is the formatted prompt (retrieved context and question in one user message), and callbacks
are synchronous, so async paths wait on the guard inside the event loop. Prefer `GuardedLLM` plus
`GuardNodePostprocessor`; use this handler where changing the LLM object is not an option.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from qwenguard.core import Guard, enforce
from qwenguard.core.formats.conversations import response_conversation

from .._common import require_guard
from ._messages import message_text, split_turn

__all__ = ["GuardCallbackHandler", "SCREENED_EVENTS"]

#: What the handler screens by default: (event type, "start"/"end").
SCREENED_EVENTS = frozenset(
    {
        (CBEventType.QUERY, "start"),
        (CBEventType.RETRIEVE, "end"),
        (CBEventType.LLM, "start"),
        (CBEventType.LLM, "end"),
    }
)


class GuardCallbackHandler(BaseCallbackHandler):
    """Raise `GuardViolation` from inside LlamaIndex when a query, retrieved node, LLM input or LLM
    answer is blocked.

    >>> Settings.callback_manager = CallbackManager([GuardCallbackHandler(guard)])  # doctest: +SKIP

    ``events``: which ``(CBEventType, "start"|"end")`` points to screen (default `SCREENED_EVENTS`).
    A blocked retrieved node stops the query (callbacks cannot drop nodes; use
    `GuardNodePostprocessor` for that). A streamed answer is screened once, when the stream ends,
    after its text was delivered: for streams use `GuardedLLM`.
    """

    def __init__(self, guard: Guard, events: Iterable[tuple[CBEventType, str]] = SCREENED_EVENTS) -> None:
        require_guard(guard)
        self.guard = guard
        self.events = frozenset((CBEventType(t), w) for t, w in events)
        for _, when in self.events:
            if when not in ("start", "end"):
                raise ValueError(f"event points are 'start' or 'end', got {when!r}")
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        # The LLM input of each open event: the answer at its end is judged against it.
        self._prompts: dict[str, list[dict[str, str]]] = {}

    def on_event_start(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        parent_id: str = "",
        **kwargs: Any,
    ) -> str:
        payload = payload or {}
        if event_type is CBEventType.LLM:
            prompt = self._llm_prompt(payload)
            if prompt is not None:
                self._prompts[event_id] = prompt
        if (event_type, "start") not in self.events:
            return event_id
        if event_type is CBEventType.QUERY:
            query = _query_text(payload.get(EventPayload.QUERY_STR))
            if query:
                enforce(self.guard.check_prompt(query))
        elif event_type is CBEventType.LLM:
            self._screen_llm_input(payload)
        return event_id

    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        payload = payload or {}
        prompt = self._prompts.pop(event_id, None) if event_type is CBEventType.LLM else None
        # An EXCEPTION payload reports a failure (possibly our own GuardViolation): never raise again.
        if EventPayload.EXCEPTION in payload or (event_type, "end") not in self.events:
            return
        if event_type is CBEventType.RETRIEVE:
            nodes: list[NodeWithScore] = list(payload.get(EventPayload.NODES) or [])
            texts = [n.node.get_content(metadata_mode=MetadataMode.LLM) for n in nodes]
            if texts:
                for decision in self.guard.check_documents(None, texts):
                    enforce(decision)
        elif event_type is CBEventType.LLM:
            text = _answer_text(payload)
            if text and text.strip():
                enforce(self.guard.check(response_conversation(prompt or "", text), "response"))

    # -- LLM payloads -------------------------------------------------------------------------
    @staticmethod
    def _llm_prompt(payload: dict[str, Any]) -> list[dict[str, str]] | None:
        messages = payload.get(EventPayload.MESSAGES)
        if messages:
            return split_turn(messages).prompt
        prompt = payload.get(EventPayload.PROMPT)
        if isinstance(prompt, str):
            return [{"role": "user", "content": prompt}]
        return None

    def _screen_llm_input(self, payload: dict[str, Any]) -> None:
        messages = payload.get(EventPayload.MESSAGES)
        if messages:
            checks = split_turn(messages).checks()
            if checks:
                for decision in self.guard.check_many(checks):
                    enforce(decision)
            return
        prompt = payload.get(EventPayload.PROMPT)
        if isinstance(prompt, str) and prompt.strip():
            enforce(self.guard.check_prompt(prompt))

    def start_trace(self, trace_id: str | None = None) -> None:
        return None

    def end_trace(self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None) -> None:
        return None


def _query_text(query: Any) -> str | None:
    if isinstance(query, QueryBundle):
        return query.query_str
    return query if isinstance(query, str) else None


def _answer_text(payload: dict[str, Any]) -> str | None:
    response = payload.get(EventPayload.RESPONSE)
    if response is not None and getattr(response, "message", None) is not None:
        return message_text(response.message)
    completion = payload.get(EventPayload.COMPLETION)
    if completion is not None:
        return getattr(completion, "text", None) or (completion if isinstance(completion, str) else None)
    return None
