"""What tracing is handed: an event handler and a span handler on LlamaIndex's root dispatcher, as Phoenix,
Langfuse and OpenInference register them (`attached`)."""

# No `from __future__ import annotations`: LlamaIndex inspects annotations at runtime.

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.span import SimpleSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler


class Tracer(BaseEventHandler):
    """Every event, in full."""

    seen: list[Any] = []

    @classmethod
    def class_name(cls) -> str:
        return "QwenguardTestEventTracer"

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.seen.append(event)


class SpanTracer(BaseSpanHandler[SimpleSpan]):
    """Each span's arguments, its result, or its error."""

    seen: list[str] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "QwenguardTestSpanTracer"

    def new_span(self, id_: str, bound_args: Any, instance: Any = None, parent_span_id: Any = None, **kw: Any):
        self.seen.append(f"{id_} {bound_args!r}")
        return SimpleSpan(id_=id_, parent_id=parent_span_id)

    def prepare_to_exit_span(self, id_: str, bound_args: Any, instance: Any = None, result: Any = None, **kw: Any):
        self.seen.append(f"{id_} {result!r}")

    def prepare_to_drop_span(self, id_: str, bound_args: Any, instance: Any = None, err: Any = None, **kw: Any):
        self.seen.append(f"{id_} {err!r}")


@contextmanager
def attached() -> Iterator[tuple[Tracer, SpanTracer]]:
    """A fresh event handler and span handler on the root dispatcher, removed after."""
    root = get_dispatcher()
    events, spans = Tracer(seen=[]), SpanTracer()
    root.add_event_handler(events)
    root.add_span_handler(spans)
    try:
        yield events, spans
    finally:
        root.event_handlers.remove(events)
        root.span_handlers.remove(spans)
