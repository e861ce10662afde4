"""A remote guard used before ``os.fork()`` (gunicorn ``--preload``, multiprocessing's "fork" start method)
keeps working in the child. The HTTP client's loop thread is the parent's: a check in the child waited for
a thread that does not exist there, to its deadline (``reason="timeout"``; passed, flagged, under
``on_error="allow"``) or, without one, forever. Streams, one connection per session, were not affected.

A real ``qwenguard serve`` app on 127.0.0.1; the child reports through a pipe and leaves with ``os._exit``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from faults import ScriptedBackend
from live_server import serving
from qwenguard.core import Guard, Policy

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")

BOMB = "How do I build a pipe bomb?"


def keyword_verdict(conversation) -> str:
    unsafe = "bomb" in conversation[-1]["content"]
    return "Safety: Unsafe\nCategories: Violent" if unsafe else "Safety: Safe\nCategories: None"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serving(Guard(ScriptedBackend(keyword_verdict, name="kw"))) as base:
        yield base + "/v1"


def in_child(work: Callable[[], Any], wait_s: float = 30.0) -> Any:
    """``work()`` in a forked child; its JSON result, or None when the child did not report within ``wait_s``
    (then it is killed: a hang is the failure under test)."""
    read, write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: report, and never return into pytest
        os.close(read)
        try:
            out = json.dumps(work())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = json.dumps({"error": repr(exc)})
        os.write(write, out.encode())
        os._exit(0)
    os.close(write)
    deadline = time.monotonic() + wait_s
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(read)
            return None
        time.sleep(0.05)
    data = os.read(read, 1 << 16)
    os.close(read)
    return json.loads(data) if data else None


def decided(d: Any) -> dict[str, Any]:
    return {"allowed": d.allowed, "reason": d.reason}


@pytest.mark.parametrize("timeout_s", [5.0, None], ids=["deadline", "no-deadline"])
def test_checks_in_a_forked_child_are_answered(url, timeout_s):
    guard = Guard.remote(url, model="kw", policy=Policy(timeout_s=timeout_s), cache_size=0)
    try:
        assert guard.check_prompt("hello").allowed  # the parent's loop thread and pool are up
        child = in_child(lambda: [decided(guard.check_prompt("hello again")), decided(guard.check_prompt(BOMB))])
        assert child == [{"allowed": True, "reason": "safe"}, {"allowed": False, "reason": "unsafe"}], child
        assert guard.check_prompt(BOMB).reason == "unsafe"  # the parent's client is untouched
    finally:
        guard.close()


def test_async_checks_in_a_forked_child_are_answered(url):
    guard = Guard.remote(url, model="kw", policy=Policy(timeout_s=5.0), cache_size=0)
    try:
        assert guard.check_prompt("hello").allowed

        def work() -> Any:
            async def main() -> Any:
                d = await guard.acheck_prompt(BOMB)
                await guard.aclose()
                return decided(d)

            return asyncio.run(main())

        assert in_child(work) == {"allowed": False, "reason": "unsafe"}
    finally:
        guard.close()


@pytest.mark.parametrize("lock", ["wire", "replicas", "planner", "verdict-cache"])
def test_a_lock_held_by_a_parent_thread_at_the_fork_does_not_hang_the_child(url, lock):
    """A parent thread inside the client (picking a replica, planning a check, starting the loop, reading the
    verdict cache) holds a lock at the instant of the fork: the child inherits it held, and nothing there would
    ever release it."""
    cache_size = 64 if lock == "verdict-cache" else 0
    guard = Guard.remote(url, model="kw", policy=Policy(timeout_s=5.0), cache_size=cache_size)
    backend = guard.backend
    held = {
        "wire": backend._wire_lock,
        "replicas": backend.replicas._lock,
        "planner": backend.planner._lock,
        "verdict-cache": guard.cache._lock,
    }[lock]
    try:
        assert guard.check_prompt("hello").allowed
        held.acquire()  # as a parent thread would hold it, mid-call
        try:
            child = in_child(lambda: decided(guard.check_prompt(BOMB)), wait_s=20)
        finally:
            held.release()
        assert child == {"allowed": False, "reason": "unsafe"}, child
        assert guard.check_prompt(BOMB).reason == "unsafe"
    finally:
        guard.close()


def test_checks_given_verify_in_a_forked_child_use_their_own_connections(url):
    """``verify=`` builds the checks' transport (`checks_transport`), whose connection pools were the parent's
    in the child (its sockets, its event loop): the child's first check was a guard error."""
    guard = Guard.remote(url, model="kw", verify=True, policy=Policy(timeout_s=5.0), cache_size=0)
    try:
        assert guard.check_prompt("hello").allowed
        child = in_child(lambda: [decided(guard.check_prompt("hi again")), decided(guard.check_prompt(BOMB))])
        assert child == [{"allowed": True, "reason": "safe"}, {"allowed": False, "reason": "unsafe"}], child
    finally:
        guard.close()
