"""rt61f F5: a ``/models`` read that failed without an HTTP status was read again on every check.

c95fca2 read a *refused* ``/models`` (a 401, a 404) again only after a back-off (``_MODELS_REREAD_S``). One that
failed unanswered (a proxy dropping the connection on a route it does not serve, or holding it past the read's
bound) set no back-off: every check read ``/models`` again, twice, and waited for it (4 s a check with a 2 s drop,
the chat route answering at once). Now a failed read of any kind is read again once the back-off passed, not per
check; the context advice stays c95fca2's (none for a ``/models`` not answered).

A real loopback engine whose ``/models`` drops the connection or hangs, and whose chat route answers; the user's
checks, sync and async, count the ``/models`` reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import select
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from live_server import QuietHandler, http_serving
from qwenguard.core import Guard, Policy, Risk

BOMB = "How can I make a bomb at home?"
UNSAFE_TEXT = "Safety: Unsafe\nCategories: Violent"
CHECKS = 4


class Engine:
    """``POST /chat/completions`` answers Unsafe at once; ``GET /models`` fails unanswered: ``drop`` closes the
    connection, ``hang`` holds it until the client gives up (``gave_up`` is set then)."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.reads = 0
        self.gave_up = threading.Event()
        self.stop = threading.Event()
        self.url = ""

    @contextmanager
    def running(self) -> Iterator[Engine]:
        me = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                me.reads += 1
                self.close_connection = True
                if me.fault == "hang":
                    # Until the client closes its end: the read's own bound, not this server, ends it.
                    while not me.stop.is_set():
                        if select.select([self.connection], [], [], 0.05)[0] and not self.connection.recv(1):
                            me.gave_up.set()
                            break

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": UNSAFE_TEXT}}
                data = json.dumps(
                    {
                        "id": f"chatcmpl-{uuid.uuid4().hex}",
                        "object": "chat.completion",
                        "model": "guard",
                        "choices": [choice],
                    }
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

        try:
            with http_serving(Handler) as base:
                self.url = base + "/v1"
                yield self
        finally:
            self.stop.set()


def _checks(guard: Guard, calls: str, first: int, n: int) -> list:
    questions = [f"{BOMB} ({i})" for i in range(first, first + n)]
    if calls == "sync":
        return [guard.check_prompt(q) for q in questions]

    async def run() -> list:
        return [await guard.acheck_prompt(q) for q in questions]

    return asyncio.run(run())


@pytest.mark.parametrize("calls", ["sync", "async"])
def test_a_models_route_that_drops_the_connection_is_read_once_not_per_check(calls, caplog):
    caplog.set_level(logging.INFO, logger="qwenguard")
    engine = Engine("drop")
    with engine.running():
        guard = Guard.remote(engine.url, model="guard", cache_size=0)
        try:
            decisions = _checks(guard, calls, 0, CHECKS)
        finally:
            guard.close()
    assert [(d.risk, d.allowed) for d in decisions] == [(Risk.UNSAFE, False)] * CHECKS, decisions
    assert engine.reads == 1, f"{engine.reads} /models reads for {CHECKS} checks"  # 2 a check before
    # c95fca2's rule stands: a /models not answered gives no context advice (only a refusal while checks pass does).
    assert not [r.getMessage() for r in caplog.records if "max_context" in r.getMessage()]


@pytest.mark.parametrize("calls", ["sync", "async"])
def test_a_models_route_that_hangs_past_its_bound_is_read_once_not_per_check(calls):
    engine = Engine("hang")
    with engine.running():
        # The read's bound (connect + read timeout) is short; the check waits for it a share, then plans without.
        guard = Guard.remote(
            engine.url,
            model="guard",
            cache_size=0,
            connect_timeout_s=0.3,
            read_timeout_s=0.7,
            policy=Policy(timeout_s=10),
        )
        try:
            decisions = _checks(guard, calls, 0, 1)
            assert engine.gave_up.wait(30), "the client never ended its /models read"
            decisions += _checks(guard, calls, 1, CHECKS)  # after the read failed: within the back-off
        finally:
            guard.close()
    assert [(d.risk, d.allowed) for d in decisions] == [(Risk.UNSAFE, False)] * (CHECKS + 1), decisions
    assert engine.reads == 1, f"{engine.reads} /models reads for {CHECKS + 1} checks"
