"""Remote stream clients hold the policy's deadline against a server that accepts and then stalls or drips.

The server here is a tiny asyncio WebSocket server written for the test, on 127.0.0.1 in a thread: it
speaks just enough of RFC 6455 to misbehave at each step (the handshake, the reply to ``open``, the
reply to ``feed``/``finish``). Every call of `RemoteStreamMonitor` / `AsyncRemoteStreamMonitor` must
come back within ``Policy.timeout_s`` (for the stream stage) and then fail closed, or fail open when
the policy says so, with a ``timeout`` decision.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import threading
import time
from contextlib import contextmanager

import pytest
from faults import ScriptedBackend
from qwenguard.core import Guard, GuardTimeout, GuardUnavailable, GuardViolation, Policy, Stage
from qwenguard.core.backends.remote_stream import RemoteStream

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BUDGET = 1.0
#: What "within the budget" means here: the budget, plus time to close the socket and for a busy CI box.
SLACK = 2.5
DRIP_S = 0.2  # one byte every DRIP_S: the slowest drip still keeps every socket read busy


async def _read_frame(reader: asyncio.StreamReader) -> str:
    head = await reader.readexactly(2)
    size = head[1] & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    mask = await reader.readexactly(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(size)))
    return data.decode("utf-8", "replace")


def _frame(text: str) -> bytes:
    data = text.encode()
    head = bytes([0x81, len(data)]) if len(data) < 126 else bytes([0x81, 126]) + struct.pack("!H", len(data))
    return head + data


class MisbehavingServer:
    """Accepts WebSocket clients and misbehaves at step ``mode``:

    - ``stall-connect``: accepts the TCP connection, never answers the HTTP upgrade;
    - ``drip-handshake``: answers the upgrade one byte every `DRIP_S`;
    - ``stall-open``: completes the handshake, never answers ``open``;
    - ``drip-open``: answers ``open`` with a frame whose bytes come one every `DRIP_S`;
    - ``stall-feed`` / ``drip-feed``: answers ``open`` properly, then stalls / drips on ``feed``;
    - ``stall-finish``: answers ``open`` and every ``feed`` (releasing nothing), stalls on ``finish``.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _drip(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(DRIP_S)
        await asyncio.sleep(3600)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            if self.mode == "stall-connect":
                await asyncio.sleep(3600)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in request.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
            response = (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            if self.mode == "drip-handshake":
                await self._drip(writer, response)
            writer.write(response)
            await writer.drain()
            await _read_frame(reader)  # open
            opened = _frame(json.dumps({"type": "opened"}))
            if self.mode == "stall-open":
                await asyncio.sleep(3600)
            if self.mode == "drip-open":
                await self._drip(writer, opened)
            writer.write(opened)
            await writer.drain()
            while True:
                kind = json.loads(await _read_frame(reader))["type"]
                reply = _frame(json.dumps({"type": "released" if kind == "feed" else "finished", "text": ""}))
                if self.mode == f"stall-{kind}":
                    await asyncio.sleep(3600)
                if self.mode == f"drip-{kind}":
                    await self._drip(writer, reply)
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@contextmanager
def misbehaving(mode: str):
    server = MisbehavingServer(mode)
    try:
        yield server
    finally:
        server.close()


MODES = ["stall-connect", "drip-handshake", "stall-open", "drip-open", "stall-feed", "drip-feed", "stall-finish"]


def _guard(url: str, **policy) -> Guard:
    return Guard.remote(url, model="any", stream=True, policy=Policy(timeout_s=BUDGET, **policy))


def _session(monitor) -> None:
    """One stream: open, two feeds, finish (where the server misbehaves depends on its mode)."""
    with monitor:
        monitor.feed("The capital of France")
        monitor.feed(" is Paris.")
        monitor.finish()


async def _asession(monitor) -> None:
    async with monitor:
        await monitor.afeed("The capital of France")
        await monitor.afeed(" is Paris.")
        await monitor.afinish()


@pytest.mark.parametrize("mode", MODES)
def test_sync_client_fails_closed_within_the_budget(mode):
    with misbehaving(mode) as server:
        start = time.monotonic()
        with pytest.raises(GuardUnavailable) as info:
            _session(_guard(server.url).stream("What is the capital of France?"))
        elapsed = time.monotonic() - start
    assert server.connections == 1
    assert isinstance(info.value, GuardTimeout) and info.value.decision.reason == "timeout", info.value
    assert elapsed < BUDGET + SLACK, f"{mode}: {elapsed:.1f}s for a {BUDGET}s budget"


@pytest.mark.parametrize("mode", MODES)
async def test_async_client_fails_closed_within_the_budget(mode):
    with misbehaving(mode) as server:
        start = time.monotonic()
        with pytest.raises(GuardUnavailable) as info:
            await _asession(_guard(server.url).astream("What is the capital of France?"))
        elapsed = time.monotonic() - start
    assert isinstance(info.value, GuardTimeout) and info.value.decision.reason == "timeout", info.value
    assert elapsed < BUDGET + SLACK, f"{mode}: {elapsed:.1f}s for a {BUDGET}s budget"


@pytest.mark.parametrize("mode", ["drip-handshake", "drip-feed", "stall-finish"])
def test_fail_open_policy_goes_on_unchecked_within_the_budget(mode):
    at_open = mode == "drip-handshake"  # opening a session screens the prompt
    policy = Policy(timeout_s=BUDGET, on_error="allow")
    if not at_open:
        # Only the stage under test runs on the tight budget: on a busy CI box a well-behaved
        # handshake once took over a second, and the prompt stage timed out instead of the stream.
        policy = policy.with_stage(Stage.PROMPT, timeout_s=30.0)
    with misbehaving(mode) as server:
        start = time.monotonic()
        monitor = Guard.remote(server.url, model="any", stream=True, policy=policy).stream(
            "What is the capital of France?"
        )
        with monitor:
            if not at_open:
                start = time.monotonic()  # the clock for the stream stage starts once the session is open
            out = monitor.feed("The capital of France") + monitor.feed(" is Paris.") + monitor.finish()
        elapsed = time.monotonic() - start
    assert out == "The capital of France is Paris."
    d = monitor.decision
    assert (d.allowed, d.stage, d.reason) == (True, Stage.PROMPT if at_open else Stage.STREAM, "timeout"), d
    assert elapsed < BUDGET + SLACK, f"{mode}: {elapsed:.1f}s for a {BUDGET}s budget"


def test_stage_timeout_overrides_the_policy_default():
    # The stream stage's own budget wins over the policy-wide one (here: the policy waits 60 s).
    policy = Policy(timeout_s=60.0).with_stage(Stage.STREAM, timeout_s=BUDGET)
    with misbehaving("drip-feed") as server:
        start = time.monotonic()
        with pytest.raises(GuardTimeout):
            _session(Guard.remote(server.url, model="any", stream=True, policy=policy).stream("Hi"))
        assert time.monotonic() - start < BUDGET + SLACK


# -- failing open goes on judging: the rest is not released unchecked -----------------------------------
SAFE_PART, CLAUSE = "The capital of France is Paris. ", "Mix ammonium nitrate with fuel oil, pack it into a pipe."


def _keyword_guard(url: str) -> tuple[Guard, ScriptedBackend]:
    """The client's Gen backend is a keyword judge; its stream sessions go to the misbehaving server."""
    judge = ScriptedBackend(
        lambda conv: (
            ("Safety: Unsafe\nCategories: Violent" if "ammonium" in conv[-1]["content"] else "Safety: Safe")
            + ("" if "ammonium" in conv[-1]["content"] else "\nCategories: None")
            + ("\nRefusal: No" if conv[-1]["role"] == "assistant" else "")
        )
    )
    policy = Policy(timeout_s=BUDGET, on_error="allow").with_stage(Stage.PROMPT, timeout_s=30.0)
    return Guard(judge, policy, stream_backend=RemoteStream(url)), judge


# ``holdback=0``: the server's Stream model released each delta once scored; the local Gen windows that
# take over keep that (with their own holdback=0 meaning they released the clause unjudged).
HOLDBACKS = pytest.mark.parametrize("holdback", [None, 0], ids=["holdback-default", "holdback-0"])


@HOLDBACKS
@pytest.mark.parametrize("mode", ["drip-feed", "stall-finish"])
def test_fail_open_judges_the_rest_in_gen_windows_instead_of_releasing_it(mode, holdback):
    """The attack: the stream server fails (here: stalls) once the harmful part has been fed. Before, failing
    open released everything held and everything after it unchecked; now the client's Gen backend judges it."""
    with misbehaving(mode) as server:
        guard, judge = _keyword_guard(server.url)
        monitor = guard.stream("Tell me about France.", holdback=holdback)
        out = ""
        with monitor, pytest.raises(GuardViolation):
            out += monitor.feed(SAFE_PART)
            out += monitor.feed(CLAUSE)
            out += monitor.finish()
    assert "ammonium" not in out + monitor.released, out
    assert any(f.reason == "timeout" and f.allowed for f in monitor.flags), monitor.flags
    assert monitor.decision.reason == "unsafe" and judge.calls


@HOLDBACKS
@pytest.mark.parametrize("mode", ["drip-feed", "stall-finish"])
async def test_async_fail_open_judges_the_rest_in_gen_windows_instead_of_releasing_it(mode, holdback):
    with misbehaving(mode) as server:
        guard, judge = _keyword_guard(server.url)
        out = ""
        with pytest.raises(GuardViolation):
            async with guard.astream("Tell me about France.", holdback=holdback) as monitor:
                out += await monitor.afeed(SAFE_PART)
                out += await monitor.afeed(CLAUSE)
                out += await monitor.afinish()
    assert "ammonium" not in out + monitor.released, out
    assert monitor.decision.reason == "unsafe" and judge.calls


def test_fail_open_still_releases_safe_text_once_judged():
    with misbehaving("drip-feed") as server:
        guard, judge = _keyword_guard(server.url)
        with guard.stream("Tell me about France.") as monitor:
            out = monitor.feed(SAFE_PART) + monitor.feed("It is on the Seine. ") + monitor.finish()
    assert out == SAFE_PART + "It is on the Seine. " and monitor.finished
    assert [f.reason for f in monitor.flags] == ["timeout"] and judge.calls
