"""`GuardEventHandler`: shadow moderation and audit through LlamaIndex instrumentation.

**It cannot block.** LlamaIndex's dispatcher runs event handlers inside ``except BaseException:
pass``, so nothing a handler raises reaches the application. This handler therefore only judges
what it sees (queries, retrieved nodes, LLM answers, and a synthesizer's response that no LLM answer
was: ``accumulate`` joins its answers) and records the Decisions for audit logs and metrics. It does
not judge an LLM's input (a chat engine's history among it). To stop content, use `GuardedLLM`,
`GuardNodePostprocessor`, `GuardedRetriever`, `GuardTransform` or `GuardCallbackHandler`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]  # re-exported, no __all__
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.exception import ExceptionEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatInProgressEvent,
    LLMCompletionEndEvent,
)
from llama_index.core.instrumentation.events.query import QueryEndEvent, QueryStartEvent
from llama_index.core.instrumentation.events.retrieval import RetrievalEndEvent
from llama_index.core.instrumentation.events.synthesis import SynthesizeEndEvent
from llama_index.core.schema import QueryBundle
from qwenguard.core import Decision, Guard
from qwenguard.core.formats.conversations import response_conversation

from .._common import Bounded, require_guard
from ._component import GuardComponent
from ._messages import message_text, plan_inputs
from .postprocessor import node_decisions

__all__ = ["GuardEventHandler", "AuditRecord"]

logger = logging.getLogger("qwenguard.llamaindex")

#: (event class name, span id, Decision)
AuditRecord = tuple[str, "str | None", Decision]
#: Streamed answers whose text the handler keeps until their end event (every request's together).
MAX_OPEN_STREAMS = 1024
#: Fingerprints of the latest answers judged, so that a response that is one of them is not judged twice.
MAX_ANSWERS = 1024


class GuardEventHandler(GuardComponent, BaseEventHandler):
    """Judge queries, retrieved nodes and LLM answers as they pass, and record the Decisions.

    Audit and metrics only: **it cannot block anything**, because LlamaIndex swallows every
    exception an instrumentation handler raises. Register it with `attach` (or
    ``get_dispatcher().add_event_handler``):

    >>> audit = GuardEventHandler(guard=guard).attach()             # doctest: +SKIP
    >>> audit.counts[("response", "block")]                         # doctest: +SKIP

    ``records``: the latest ``max_records`` ``(event, span_id, Decision)``; ``counts``: a Counter
    of ``(stage, action)``; ``on_record``: optional callable given each record (e.g. a log
    shipper). Checks run synchronously in the dispatching thread: they add the guard's latency.
    """

    guard: Any = Field(exclude=True, description="The qwenguard Guard.")
    max_records: int = Field(default=1000, gt=0)
    on_record: Callable[[AuditRecord], None] | None = Field(default=None, exclude=True)
    screen_queries: bool = True
    screen_retrievals: bool = True
    screen_responses: bool = True

    _records: deque = PrivateAttr()
    _counts: Counter = PrivateAttr(default_factory=Counter)
    # span id -> the parts streamed so far and their length; bounded (`MAX_OPEN_STREAMS`, at most the guard's
    # max_chars + 1 characters each) and dropped at the stream's end or exception event.
    _streams: Any = PrivateAttr(default_factory=lambda: Bounded(MAX_OPEN_STREAMS))
    _answers: Any = PrivateAttr(default_factory=lambda: Bounded(MAX_ANSWERS))
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, guard: Guard, **kwargs: Any) -> None:
        require_guard(guard)
        super().__init__(guard=guard, **kwargs)
        self._records = deque(maxlen=self.max_records)

    @classmethod
    def class_name(cls) -> str:
        return "GuardEventHandler"

    def attach(self, dispatcher_name: str = "root") -> GuardEventHandler:
        """Register with a dispatcher (the root one sees every event); returns ``self``."""
        get_dispatcher(dispatcher_name).add_event_handler(self)
        return self

    @property
    def records(self) -> list[AuditRecord]:
        with self._lock:
            return list(self._records)

    @property
    def counts(self) -> Counter:
        with self._lock:
            return Counter(self._counts)

    def _record(self, event: BaseEvent, decision: Decision) -> None:
        record: AuditRecord = (event.class_name(), event.span_id, decision)
        with self._lock:
            self._records.append(record)
            self._counts[(decision.stage.value, decision.action.value)] += 1
        if self.on_record is not None:
            self.on_record(record)

    def _streamed(self, span_id: str | None, delta: str) -> None:
        """Keep a delta of a streamed answer (as parts: no copy of the whole text per delta), up to the
        guard's ``max_chars`` + 1 characters, so that a longer answer is refused at its end as any check is."""
        if not delta:
            return
        with self._lock:
            entry = self._streams.get(span_id)
            if entry is None:
                entry = [[], 0]
                self._streams[span_id] = entry
            parts, size = entry
            room = self.guard.max_chars + 1 - size
            if room > 0:
                parts.append(delta[:room])
                entry[1] = size + min(len(delta), room)

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        # Our own failures would be swallowed silently by the dispatcher; log them instead.
        try:
            self._handle(event)
        except Exception:  # noqa: BLE001
            logger.exception("qwenguard GuardEventHandler failed on %s", type(event).__name__)

    def _handle(self, event: BaseEvent) -> None:
        if isinstance(event, QueryStartEvent) and self.screen_queries:
            query = event.query.query_str if isinstance(event.query, QueryBundle) else event.query
            if isinstance(query, str) and query.strip():
                self._record(event, self.guard.check_prompt(query))
        elif isinstance(event, RetrievalEndEvent) and self.screen_retrievals:
            # With the metadata a window swap shows the LLM, and what the app gets with the node; in batches, as the
            # postprocessor judges them (`node_decisions`): a node too large to judge is recorded blocked unjudged.
            for decision in node_decisions(self.guard, [n.node for n in event.nodes], "drop"):
                self._record(event, decision)
        elif isinstance(event, LLMChatInProgressEvent) and self.screen_responses:
            self._streamed(event.span_id, event.response.delta or "")
        elif isinstance(event, ExceptionEvent):
            self._streams.pop(event.span_id)  # a stream closed early, cancelled or stopped: no end event comes
        elif isinstance(event, LLMChatEndEvent) and self.screen_responses:
            parts = self._streams.pop(event.span_id)
            streamed = "".join(parts[0]) if parts else ""
            text = streamed if streamed else (message_text(event.response.message) if event.response else "")
            if text.strip():
                prompt = plan_inputs(event.messages).prompt
                self._record(event, self.guard.check(response_conversation(prompt, text), "response"))
                self._answers[_answer_key(text)] = True
        elif isinstance(event, LLMCompletionEndEvent) and self.screen_responses:
            text = event.response.text or ""
            if text.strip():
                self._record(event, self.guard.check(response_conversation(event.prompt, text), "response"))
                self._answers[_answer_key(text)] = True
        elif isinstance(event, (SynthesizeEndEvent, QueryEndEvent)) and self.screen_responses:
            # A text response (a stream's answer is judged at its LLM end event) that no judged answer was: an
            # ``accumulate`` synthesizer joins its answers, each judged alone. Judged whole, as the answer to the query.
            said = getattr(event.response, "response", None)
            if isinstance(said, str) and said.strip():
                key = _answer_key(said)
                if self._answers.get(key) is None:
                    query = event.query.query_str if isinstance(event.query, QueryBundle) else event.query
                    asked = query if isinstance(query, str) else ""
                    self._record(event, self.guard.check(response_conversation(asked, said), "response"))
                    self._answers[key] = True


def _answer_key(text: str) -> bytes:
    return hashlib.blake2b(text.strip().encode("utf-8", "surrogatepass"), digest_size=16).digest()
