"""Graceful shutdown of a replica (SIGTERM, SIGINT): drain, hand stream sessions back, exit within a bound.

What uvicorn (0.54) already does when it stops: it closes the listening sockets, lets each HTTP request
in flight finish and closes idle keep-alive connections, and closes every WebSocket with code 1012
(Service Restart), which the stream client (`RemoteStream`) takes as "re-open the session elsewhere and
replay it". What it does not do, and `DrainingServer` adds:

- ``/health`` and ``/ready`` answer 503 (``"status": "draining"``) from the moment the signal arrives,
  and new stream sessions are refused with 503, so a balancer (HAProxy's check, a Kubernetes readiness
  probe) takes the replica out while it still answers;
- ``drain_delay_s`` (default 0): keep serving that long before the listener closes, for platforms whose
  routing lags the probe (a Kubernetes Service keeps sending new connections for a moment after a pod
  is told to stop). HAProxy needs none: a closed listener fails its check at once, and its ``retry-on
  conn-failure`` sends the request to another replica;
- a bound: uvicorn waits for requests in flight forever by default; here at most ``shutdown_timeout_s``
  (`DEFAULT_SHUTDOWN_TIMEOUT_S`), after which what still runs is cancelled (its clients retry it elsewhere:
  checks are idempotent). Keep drain delay plus this bound under the platform's kill deadline
  (Kubernetes ``terminationGracePeriodSeconds``, compose ``stop_grace_period``).
"""

from __future__ import annotations

import time
from typing import Any

import uvicorn

__all__ = ["DEFAULT_SHUTDOWN_TIMEOUT_S", "DrainingServer"]

#: Longer than a normal check takes under load, shorter than Kubernetes' default 30 s grace period.
DEFAULT_SHUTDOWN_TIMEOUT_S = 20.0


class DrainingServer(uvicorn.Server):
    """`uvicorn.Server` that drains on a stop signal: see the module docs. ``load`` is the app's `Load`."""

    def __init__(self, config: Any, *, load: Any, drain_delay_s: float = 0.0) -> None:
        if drain_delay_s < 0:
            raise ValueError("drain_delay_s must be >= 0")
        super().__init__(config)
        self.load = load
        self.drain_delay_s = drain_delay_s
        self._drain_until: float | None = None

    def begin_drain(self) -> None:
        """Report unhealthy and refuse new stream sessions from now on (idempotent)."""
        if not self.load.draining:
            self.load.draining = True
            self._drain_until = time.monotonic() + self.drain_delay_s

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.begin_drain()  # a plain attribute write: safe in a signal handler
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        stop = await super().on_tick(counter)
        if stop and not self.force_exit and self._drain_until is not None and time.monotonic() < self._drain_until:
            return False  # still draining: keep serving while balancers notice the 503
        return stop

    async def shutdown(self, sockets: Any = None) -> None:
        self.begin_drain()
        await super().shutdown(sockets=sockets)
