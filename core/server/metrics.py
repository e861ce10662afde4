"""Prometheus metrics of one server app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..backends.base import Outcome
from ..policy import Decision
from ..verdict import Verdict
from .schemas import client_error

#: The paths the server answers. Metrics and logs name any other path "other": a client can put any text in
#: a path, and neither may carry request content (nor grow a label per path).
SERVED_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/moderate",
        "/v1/stream",
        "/health",
        "/ready",
        "/metrics",
    }
)


class Metrics:
    """Prometheus metrics on a registry of this app's own (several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("qwenguard_requests", "HTTP requests answered", ["path", "status"], registry=r)
        self.latency = Histogram(
            "qwenguard_request_latency_seconds",
            "HTTP request latency",
            ["path"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.verdicts = Counter("qwenguard_verdicts", "Guard verdicts by risk", ["risk"], registry=r)
        self.blocked = Counter("qwenguard_blocked", "Decisions that blocked, by stage", ["stage"], registry=r)
        self.guard_errors = Counter("qwenguard_guard_errors", "Guard calls that failed, by kind", ["kind"], registry=r)
        self.rejected = Counter("qwenguard_rejected", "Requests refused before the guard ran", ["reason"], registry=r)
        self.in_flight = Gauge("qwenguard_in_flight_requests", "HTTP requests being served", registry=r)
        self.streams = Gauge("qwenguard_stream_sessions", "Open /v1/stream sessions", registry=r)

    def verdict(self, outcome: Outcome) -> None:
        if isinstance(outcome, Verdict):
            self.verdicts.labels(outcome.risk.value).inc()
        else:
            self.guard_errors.labels(type(outcome).__name__).inc()

    def heard(self, decision: Decision) -> None:
        """A decision a stream session's guard made (its listener, `Guard.on_decision`), counted as `verdict` counts a
        check's outcome: the guard error it was made of, by kind, else its verdict."""
        if decision.error is not None:
            kind = client_error(decision.error) or ""  # the error's type name, as a client is told it
            self.guard_errors.labels(kind if kind.isidentifier() else "GuardError").inc()
        elif decision.verdict is not None:
            self.verdicts.labels(decision.verdict.risk.value).inc()

    def decision(self, decision: Decision) -> None:
        if not decision.allowed:
            self.blocked.labels(decision.stage.value).inc()
