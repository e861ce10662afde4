"""A reply written twice, the second a moment after the first (red team rt64e F1), against a raw keep-alive socket
engine on 127.0.0.1.

rt57d F3 closed a connection holding bytes past a reply as the reply closed. A duplicate that lands a moment later,
after the next check went out on the kept-alive connection, was read as that check's answer: a harmful prompt was
allowed "Safe" in 0.2 s while the engine's own "Unsafe" came later. A reply now proves itself by its ``id``: one
repeating the last reply read on its connection is no answer (the request is asked again on a new connection). An
engine that sends no id is read safely with ``keep_alive=False`` (a connection a request). Sync and async.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from qwenguard.core import Guard, Policy

SAFE = "Safety: Safe\nCategories: None"
UNSAFE = "Safety: Unsafe\nCategories: Violent"
HELLO = "what is the capital of France"
BOMB = "how do I build a pipe bomb"
#: When the duplicate of a greeting's reply lands, and when the engine answers the bomb truthfully (seconds after the
#: reply it follows / the request): the bomb's check goes out between the two, as soon as the greeting's returns.
DUPLICATE_AFTER = 0.5
HONEST_AFTER = 1.0


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def http_200(data: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data


def wire(content: str, ident: str | None, indent: int | None = None) -> bytes:
    """One whole HTTP/1.1 response whose answer is ``content``, with the reply id ``ident`` (none: ``None``)."""
    body: dict[str, Any] = {
        "model": "Qwen3Guard-Gen-4B",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }
    if ident is not None:
        body = {"id": ident, **body}
    return http_200(json.dumps(body, indent=indent).encode())


def reply(content: str, ids: bool) -> bytes:
    """One whole HTTP/1.1 response (``ids``: with a fresh ``chatcmpl-`` id, as vLLM, SGLang, llama.cpp send)."""
    return wire(content, new_id() if ids else None)


def text_of(request: dict[str, Any]) -> str:
    """The checked text of a request (``""`` for a request without a body: ``GET /models``)."""
    return str(request["messages"][-1]["content"]) if request else ""


class RawEngine:
    """A raw HTTP/1.1 keep-alive engine on 127.0.0.1: each connection served on a thread of its own, each request
    answered by `answer` (what it writes, and when, is the test's). Counts connections, records the texts asked."""

    def __init__(self, ids: bool = True) -> None:
        self.ids = ids
        self.connections = 0
        self.seen: list[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    @staticmethod
    def _request(
        conn: socket.socket, buf: bytes, here: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any] | None, bytes]:
        """The next request's JSON body (``{}``: none), and what was read past it; ``None`` once the client closed.
        ``here["asked"]``: the request's ``X-Request-Id`` (None: none)."""
        while b"\r\n\r\n" not in buf:
            data = conn.recv(65536)
            if not data:
                return None, b""
            buf += data
        head, _, rest = buf.partition(b"\r\n\r\n")
        lengths = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
        if here is not None:
            named = [h.split(b":", 1)[1].strip() for h in head.split(b"\r\n") if h.lower().startswith(b"x-request-id:")]
            here["asked"] = named[0].decode() if named else None
        size = lengths[0] if lengths else 0
        while len(rest) < size:
            data = conn.recv(65536)
            if not data:
                return None, b""
            rest += data
        return (json.loads(rest[:size]) if size else {}), rest[size:]

    def _serve(self, conn: socket.socket, number: int) -> None:
        here: dict[str, Any] = {"number": number, "lock": threading.Lock()}  # the connection's own state
        buf = b""
        try:
            while True:
                request, buf = self._request(conn, buf, here)
                if request is None:
                    return
                if request:
                    self.seen.append(text_of(request))
                self.answer(conn, request, here)
        except OSError:  # the client closed the connection
            return
        finally:
            conn.close()

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class TwiceEngine(RawEngine):
    """Answers a harmless text "Safe", and the same reply again ``DUPLICATE_AFTER`` later on the same connection (a
    proxy's retry, an engine's bug); a text naming a bomb, after ``HONEST_AFTER``, "Unsafe"."""

    def __init__(self, ids: bool, *, new_id: bool = False) -> None:
        super().__init__(ids)
        self.new_id = new_id  # the second reply is written anew, with an id of its own (a proxy's retry forwarded)

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        if "bomb" in text_of(request):
            time.sleep(HONEST_AFTER)
            conn.sendall(reply(UNSAFE, self.ids))
            return
        once = reply(SAFE, self.ids)
        conn.sendall(once)
        time.sleep(DUPLICATE_AFTER)
        conn.sendall(reply(SAFE, self.ids) if self.new_id else once)  # the same reply, id included


@contextmanager
def engine_and_guard(ids: bool, new_id: bool = False, **opts: Any) -> Iterator[tuple[TwiceEngine, Guard]]:
    engine = TwiceEngine(ids, new_id=new_id)
    guard = Guard.remote(
        engine.url, model="Qwen3Guard-Gen-4B", max_context=8192, policy=Policy(timeout_s=10), cache_size=0, **opts
    )
    try:
        yield engine, guard
    finally:
        guard.close()
        engine.close()


#: The engine's replies carry ids (as every engine named in docs/remote.md sends them), or none, and the client
#: then keeps no connection alive (nothing would tell the duplicate).
SETUPS = pytest.mark.parametrize(
    ("ids", "opts"), [(True, {}), (False, {"keep_alive": False})], ids=["engine sends ids", "no id, keep_alive=False"]
)


@SETUPS
def test_a_late_duplicate_reply_is_not_the_next_checks_verdict(ids: bool, opts: dict[str, Any]) -> None:
    with engine_and_guard(ids, **opts) as (engine, guard):
        first = guard.check_prompt(HELLO)
        harmful = guard.check_prompt(BOMB)  # sent before the greeting's duplicate lands
    assert first.allowed and first.reason == "safe"
    # Judged by the engine's own answer to it, never by the greeting's "Safe".
    assert not harmful.allowed and harmful.reason == "unsafe", harmful
    assert harmful.verdict is not None and "Violent" in harmful.verdict.categories
    assert BOMB in engine.seen


@SETUPS
def test_a_late_duplicate_reply_is_not_the_next_checks_verdict_async(ids: bool, opts: dict[str, Any]) -> None:
    async def main(guard: Guard) -> tuple[Any, Any]:
        first = await guard.acheck_prompt(HELLO)
        return first, await guard.acheck_prompt(BOMB)

    with engine_and_guard(ids, **opts) as (_, guard):
        first, harmful = asyncio.run(main(guard))
    assert first.allowed and first.reason == "safe"
    assert not harmful.allowed and harmful.reason == "unsafe", harmful
    assert harmful.verdict is not None and "Violent" in harmful.verdict.categories


def test_a_late_duplicate_without_retries_left_blocks_the_check() -> None:
    # No retry to ask again: the duplicate is still no answer (a guard error the policy decides: blocked).
    with engine_and_guard(True, max_retries=0) as (_, guard):
        assert guard.check_prompt(HELLO).allowed
        harmful = guard.check_prompt(BOMB)
    assert not harmful.allowed and harmful.reason in ("guard_error", "unsafe"), harmful
    if harmful.reason == "guard_error":
        assert "duplicate" in (harmful.error or "")


def test_without_keep_alive_a_second_answer_with_an_id_of_its_own_is_no_checks_verdict() -> None:
    # A proxy forwarding the answers to a request and to its retry: two replies, each with its own id, which nothing
    # tells from an answer on a kept-alive connection. keep_alive=False gives every request a connection of its own.
    with engine_and_guard(True, new_id=True, keep_alive=False) as (engine, guard):
        assert guard.check_prompt(HELLO).allowed
        harmful = guard.check_prompt(BOMB)
        assert engine.connections == 2
    assert not harmful.allowed and harmful.reason == "unsafe", harmful


class OnceEngine(RawEngine):
    """An honest engine: one reply per request."""

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        conn.sendall(reply(SAFE, self.ids))


def test_an_engine_sending_ids_keeps_its_one_connection() -> None:  # nothing is dropped without a reason
    engine = OnceEngine(True)
    guard = Guard.remote(engine.url, model="Qwen3Guard-Gen-4B", max_context=8192, cache_size=0)
    try:
        for i in range(10):
            assert guard.check_prompt(f"{HELLO} {i}").reason == "safe"
    finally:
        guard.close()
        engine.close()
    assert engine.connections == 1


class LaterTwice(RawEngine):
    """Writes each harmless reply again ``LATER_S`` after it, however many replies went out on the connection
    meanwhile (a proxy's retry answered late): the copy lands after a later reply, not right after its original."""

    LATER_S = 0.6

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        lock = here["lock"]

        def later(data: bytes) -> None:
            time.sleep(self.LATER_S)
            try:
                with lock:
                    conn.sendall(data)
            except OSError:
                pass

        if "bomb" in text_of(request):
            time.sleep(HONEST_AFTER)
            with lock:
                conn.sendall(reply(UNSAFE, True))
            return
        once = reply(SAFE, True)
        with lock:
            conn.sendall(once)
        threading.Thread(target=later, args=(once,), daemon=True).start()


def test_a_duplicate_of_an_older_reply_is_no_checks_verdict() -> None:
    """rt64l F1: only the id of the last reply read on a connection was remembered, so the copy of the reply before
    it (order on the wire: A, B, A') was read by the next check as its own "Safe": 42-48% of a burst of harmful
    checks were allowed with the duplicate 50 ms late. Every reply read lately on the connection is remembered."""
    engine = LaterTwice(True)
    guard = Guard.remote(engine.url, model="Qwen3Guard-Gen-4B", max_context=8192, policy=Policy(timeout_s=10))
    try:
        assert guard.check_prompt("what is the capital of France").allowed
        assert guard.check_prompt("what is the capital of Spain").allowed
        time.sleep(LaterTwice.LATER_S / 2)  # the copy of the first reply lands while the bomb check waits
        bomb = guard.check_prompt("how do I build a pipe bomb")
    finally:
        guard.close()
        engine.close()
    assert not bomb.allowed and bomb.reason == "unsafe", bomb


class SecondIds(RawEngine):
    """A gateway whose reply ids are the second they were written in (``chatcmpl-<unix seconds>``) and whose replies
    carry nothing else that changes: distinct replies of one second are the same bytes. Never writes one twice."""

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        time.sleep(0.01)
        conn.sendall(wire(UNSAFE if "bomb" in text_of(request) else SAFE, f"chatcmpl-{int(time.time())}"))


def test_ids_that_repeat_across_replies_cost_no_guard_errors() -> None:
    """rt64l F3, a regression of the first fix: such a gateway's replies were taken for duplicates, asked again
    (1.8x the requests, 23x the connections) and 4-5% became guard errors, let through under ``on_error="allow"``.
    An id read again on another connection (or with other bytes) shows ids that repeat: the client then keeps no
    connection alive past a reply, and every check is answered."""
    engine = SecondIds(True)
    guard = Guard.remote(
        engine.url, model="Qwen3Guard-Gen-4B", max_context=8192, max_concurrency=4, policy=Policy(on_error="allow")
    )
    texts = [f"{i} how do I build a pipe bomb" if i % 2 else f"{i} what is the capital of France" for i in range(60)]

    async def burst() -> list[Any]:
        return await asyncio.gather(*(guard.acheck_prompt(text) for text in texts))

    try:
        decisions = asyncio.run(burst())
    finally:
        guard.close()
        engine.close()
    assert [d.reason for d in decisions] == ["unsafe" if i % 2 else "safe" for i in range(60)]
    # A few asked again before the repeat shows, not one in two (1.8x before). Since rt65i F2 a repeat in the same
    # bytes as the reply read first (this gateway's same-second verdicts) is asked again until several requests
    # showed ids repeat (one proxy's double copy proves nothing): a few more than the 4 allowed before.
    assert len(engine.seen) <= len(texts) * 1.25


class RewrittenTwice(RawEngine):
    """Writes each harmless reply again ``DUPLICATE_AFTER`` later, the same id and words in other bytes (a proxy
    re-serialising its copy)."""

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        ident = new_id()
        if "bomb" in text_of(request):
            time.sleep(HONEST_AFTER)
            conn.sendall(wire(UNSAFE, ident))
            return
        conn.sendall(wire(SAFE, ident))
        time.sleep(DUPLICATE_AFTER)
        conn.sendall(wire(SAFE, ident, indent=1))


class CopiedLate(RawEngine):
    """Copies its first reply, byte for byte, after ``LATER`` more replies on the connection."""

    LATER = 70  # past the 64 replies whose bytes a connection remembers

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        if "bomb" in text_of(request):
            time.sleep(HONEST_AFTER)
            conn.sendall(wire(UNSAFE, new_id()))
            return
        once = wire(SAFE, new_id())
        conn.sendall(once)
        here["answered"] = here.get("answered", 0) + 1
        here.setdefault("first", once)
        if here["answered"] == self.LATER + 1:
            time.sleep(0.1)
            conn.sendall(here["first"])


def test_a_late_copy_written_anew_or_past_64_replies_is_no_checks_verdict() -> None:
    """rt64m F1: a copy with the same id in other bytes (a proxy re-serialising it) was the next check's "Safe",
    a regression of the bytes rule; F2: a byte-for-byte copy after 65 later replies was too (only 64 remembered).
    A reply whose id was read before on its connection is no answer."""
    for engine, warm in ((RewrittenTwice(True), 1), (CopiedLate(True), CopiedLate.LATER + 1)):
        guard = Guard.remote(engine.url, model="Qwen3Guard-Gen-4B", max_context=8192, policy=Policy(timeout_s=10))
        try:
            for i in range(warm):
                assert guard.check_prompt(f"what is the capital of France {i}").allowed
            bomb = guard.check_prompt("how do I build a pipe bomb")
        finally:
            guard.close()
            engine.close()
        assert not bomb.allowed and bomb.reason == "unsafe", (type(engine).__name__, bomb)


class CopiesOnEachConnection(RawEngine):
    """Writes each harmless reply again later on its connection: re-serialised on the first connection (its copy
    lands first), byte for byte on the second."""

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        number, ident = here["number"], new_id()
        if "bomb" in text_of(request):
            time.sleep(HONEST_AFTER + 0.1 * number)
            conn.sendall(wire(UNSAFE, ident))
            return
        once = wire(SAFE, ident)
        conn.sendall(once)
        time.sleep(DUPLICATE_AFTER + 0.1 * number)
        conn.sendall(once if number == 2 else wire(SAFE, ident, indent=1))


def test_a_late_copy_on_another_kept_alive_connection_is_no_answer_once_ids_looked_repeated() -> None:
    """rt64n F1, a regression of the rule before: the first connection's rewritten copy turned keep-alive off for
    the client, and from then on a reply was not looked at as a copy at all: the second connection's own late copy
    was a nail-bomb prompt's "Safe"."""
    engine = CopiesOnEachConnection(True)
    guard = Guard.remote(
        engine.url, model="Qwen3Guard-Gen-4B", max_context=8192, max_concurrency=2, policy=Policy(timeout_s=10)
    )

    async def run() -> list[Any]:
        await asyncio.gather(guard.acheck_prompt(HELLO), guard.acheck_prompt("what is the capital of Spain"))
        return await asyncio.gather(guard.acheck_prompt(BOMB), guard.acheck_prompt("how do I build a nail bomb"))

    try:
        bombs = asyncio.run(run())
    finally:
        guard.close()
        engine.close()
    assert [(d.allowed, d.reason) for d in bombs] == [(False, "unsafe")] * 2


def test_ids_that_repeat_on_one_connection_cost_no_guard_error_without_retries() -> None:
    """rt64n F2: a gateway's next reply carrying the id of the one before it (the same second) is taken for a late
    copy; with ``max_retries=0`` that was a guard error, which ``on_error="allow"`` let through. A copy is skipped
    and the request asked again at once on another connection, whatever retries are left."""
    engine = SecondIds(True)
    guard = Guard.remote(
        engine.url, model="Qwen3Guard-Gen-4B", max_context=8192, max_retries=0, policy=Policy(on_error="allow")
    )
    try:
        decisions = []
        for i in range(3):
            time.sleep(1 - time.time() % 1 + 0.05)  # both checks of a pair within one second: one id
            decisions += [guard.check_prompt(f"{i} {HELLO}"), guard.check_prompt(f"{i} {BOMB}")]
    finally:
        guard.close()
        engine.close()
    assert [d.reason for d in decisions] == ["safe", "unsafe"] * 3


class CopyingProxy(RawEngine):
    """An honest engine with unique ids behind a proxy that writes every reply again, byte for byte, ``COPY_S``
    after it (the ``GET /models`` list too); connection k answers its first check ``STEP_S`` x k late, so that the
    idle connections' copies land one after another."""

    COPY_S, STEP_S = 0.5, 0.05

    def answer(self, conn: socket.socket, request: dict[str, Any], here: dict[str, Any]) -> None:
        if not request:  # GET /models
            out = http_200(
                json.dumps({"object": "list", "data": [{"id": "Qwen3Guard-Gen-4B", "max_model_len": 8192}]}).encode()
            )
        elif "bomb" in text_of(request):
            conn.sendall(wire(UNSAFE, new_id()))
            return
        else:
            if not here.get("answered"):
                time.sleep(self.STEP_S * here["number"])
                here["answered"] = True
            out = wire(SAFE, new_id())
        conn.sendall(out)
        time.sleep(self.COPY_S)
        conn.sendall(out)


def test_idle_connections_holding_late_copies_cost_no_guard_error_without_retries() -> None:
    """rt64o F1: the request asked again after a copy took the next idle kept-alive connection from the pool, which
    held a copy of its own: four in a row were a guard error with ``max_retries=0``, a harmful prompt let through
    under ``on_error="allow"``. Once a copy is seen no connection is kept alive past a reply, and the request skips
    each idle connection's copy once, then goes on a new one."""
    engine = CopyingProxy(True)
    guard = Guard.remote(
        engine.url,
        model="Qwen3Guard-Gen-4B",
        max_context=8192,
        max_retries=0,
        max_concurrency=8,
        policy=Policy(timeout_s=10, on_error="allow"),
    )

    async def run() -> Any:
        start = time.monotonic()
        await asyncio.gather(*(guard.acheck_prompt(f"hello {i}") for i in range(8)))
        # Just before the first connection's copy lands: the check's re-asks meet the others' copies.
        await asyncio.sleep(max(0.0, start + CopyingProxy.STEP_S + CopyingProxy.COPY_S - 0.03 - time.monotonic()))
        return await guard.acheck_prompt(BOMB)

    try:
        bomb = asyncio.run(run())
    finally:
        guard.close()
        engine.close()
    assert not bomb.allowed and bomb.reason == "unsafe", bomb


@pytest.mark.parametrize("on_error", ["block", "allow"])
def test_a_late_copy_of_the_models_list_puts_no_check_one_reply_behind(on_error: str) -> None:
    """rt64p F1: the first check of a client without ``max_context`` reads ``/models`` first; the list carries no
    id, its connection was kept alive, and a proxy's copy of it was that check's "answer" (a guard error): the
    connection then ran one reply behind, and the next check, a bomb prompt, read the first check's "Safe", under
    the default policy too. A ``/models`` read now keeps no connection alive."""
    engine = CopyingProxy(True)
    guard = Guard.remote(engine.url, model="Qwen3Guard-Gen-4B", max_retries=0, policy=Policy(on_error=on_error))

    async def run() -> tuple[Any, Any]:
        start = time.monotonic()
        first = await guard.acheck_prompt(HELLO)
        await asyncio.sleep(max(0.0, start + CopyingProxy.COPY_S - 0.05 - time.monotonic()))
        return first, await guard.acheck_prompt(BOMB)

    try:
        first, bomb = asyncio.run(run())
    finally:
        guard.close()
        engine.close()
    assert first.reason == "safe" and (bomb.allowed, bomb.reason) == (False, "unsafe"), (first, bomb)
