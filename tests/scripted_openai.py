"""A real OpenAI-compatible HTTP server on loopback that plays a script: the upstream LLM of the streaming tests.

::

    script = [Reply.words("The capital of France is Paris."),
              Reply(tool_calls=[ToolCall("get_weather", '{"city": "Paris"}')])]
    with scripted_openai(script, pace=0.02) as url:          # "http://127.0.0.1:PORT/v1"
        llm = ChatOpenAI(base_url=url, api_key="x", model="scripted")
        ...
        url.responses[-1].wait()                             # the server side of the last answer
        assert url.responses[-1].closed_early                # the client hung up mid-stream

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions``, ``stream`` true (server-sent
events shaped as the OpenAI API sends them: ``chat.completion.chunk`` objects, a first chunk with the
role, text in ``choices[0].delta.content``, tool calls in ``choices[0].delta.tool_calls`` — index, id,
type and name first, then argument fragments —, a last chunk with ``finish_reason``, a usage chunk when
``stream_options.include_usage`` is set, then ``data: [DONE]``) or false (one ``chat.completion`` /
``text_completion``). ``GET /v1/models`` lists the one model.

Request *i* gets reply ``script[i % len(script)]``. Every piece (a text token or a tool-call argument
fragment) after the first waits ``pace`` seconds. Before each piece the server looks whether the client
has closed the connection, so ``Response.sent`` is the number of pieces actually written before the
client went away: the proof that a guard closed the upstream stream early.

Standard library only (``http.server``); one thread per connection, HTTP/1.1 keep-alive, chunked streams.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "Reply",
    "ToolCall",
    "Request",
    "Response",
    "ScriptedURL",
    "ScriptedServer",
    "scripted_openai",
    "word_pieces",
]

MODEL = "scripted"
_PIECE = re.compile(r"\s*\S+")


def word_pieces(text: str) -> list[str]:
    """``text`` cut into word pieces the way LLM tokens look: each word with the space before it.

    >>> word_pieces("The capital of France")
    ['The', ' capital', ' of', ' France']

    Joining the pieces gives ``text`` back (less trailing whitespace)."""
    return _PIECE.findall(text)


def prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens the scripted model counts for a request (``usage.prompt_tokens``): its text's UTF-8
    bytes, the most a byte-level BPE makes of it, and for messages the official guard template's too (the
    server stands in for a guard engine as well), so that it never counts fewer tokens than an engine that
    read the whole prompt (a guard client takes a count below that for a cut prompt)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        return max(1, len(prompt))
    if isinstance(prompt, str):
        return max(1, len(prompt.encode("utf-8", "surrogatepass")))
    messages = body.get("messages") or []
    return len(json.dumps(messages, ensure_ascii=False).encode("utf-8", "surrogatepass")) + _template_bytes()


@functools.cache
def _template_bytes() -> int:
    from qwenguard.core.formats.prompts import render_prompt

    empty = [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]
    return len(render_prompt(empty).encode("utf-8"))


@dataclass(frozen=True)
class ToolCall:
    """One tool call of a reply; ``arguments`` (a JSON string) streams in ``fragments`` pieces."""

    name: str
    arguments: str = "{}"
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")
    fragments: int = 3

    def pieces(self) -> list[str]:
        n = max(1, min(self.fragments, len(self.arguments)))
        size = -(-len(self.arguments) // n) if self.arguments else 1
        return [self.arguments[i : i + size] for i in range(0, len(self.arguments), size)] or [""]


@dataclass(frozen=True)
class Reply:
    """One scripted answer: reasoning pieces (``delta.reasoning_content``, as DeepSeek's API and vLLM's
    reasoning parsers send a thinking model's reasoning), then text token pieces, then tool calls."""

    tokens: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: tuple[str, ...] = ()

    def __init__(
        self, tokens: Sequence[str] = (), tool_calls: Sequence[ToolCall] = (), reasoning: Sequence[str] = ()
    ) -> None:
        if isinstance(tokens, str) or isinstance(reasoning, str):
            raise TypeError("tokens and reasoning are sequences of pieces; use Reply.words(text) to split a text")
        object.__setattr__(self, "tokens", tuple(tokens))
        object.__setattr__(self, "tool_calls", tuple(tool_calls))
        object.__setattr__(self, "reasoning", tuple(reasoning))

    @classmethod
    def words(cls, text: str, tool_calls: Sequence[ToolCall] = (), reasoning: str = "") -> Reply:
        """A reply streaming ``reasoning`` then ``text`` word by word (see `word_pieces`)."""
        return cls(word_pieces(text), tool_calls, word_pieces(reasoning))

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def pieces(self) -> int:
        """Pieces a full stream of this reply sends (tokens + argument fragments)."""
        return len(self.reasoning) + len(self.tokens) + sum(len(c.pieces()) for c in self.tool_calls)


@dataclass
class Request:
    """One request as the server received it."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.perf_counter() on arrival


@dataclass
class Response:
    """What the server did for one request. ``sent``: pieces written before the client left."""

    request: Request
    reply: Reply
    stream: bool
    planned: int  # pieces in the full reply
    sent: int = 0
    closed_early: bool = False  # the client hung up before the last piece
    completed: bool = False  # the whole reply, finish chunk and [DONE] went out
    piece_times: list[float] = field(default_factory=list)  # perf_counter() when each piece was written
    started: float = 0.0
    ended: float = 0.0
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait(self, timeout: float | None = 10.0) -> bool:
        """Block until the server finished this response (completed or saw the client leave)."""
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()


class ScriptedURL(str):
    """The base URL (``http://127.0.0.1:PORT/v1``), carrying the server's records.

    A plain ``str`` for every client; ``requests`` and ``responses`` are the server's lists."""

    server: ScriptedServer

    def __new__(cls, value: str, server: ScriptedServer) -> ScriptedURL:
        self = super().__new__(cls, value)
        self.server = server
        return self

    @property
    def requests(self) -> list[Request]:
        return self.server.requests

    @property
    def responses(self) -> list[Response]:
        return self.server.responses


class _ClientGone(Exception):
    pass


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, script: Sequence[Reply], *, pace: float, first_delay: float, host: str = "127.0.0.1") -> None:
        if not script:
            raise ValueError("a script needs at least one reply")
        self.script = list(script)
        self.pace = pace
        self.first_delay = first_delay
        self.requests: list[Request] = []
        self.responses: list[Response] = []
        self._lock = threading.Lock()
        super().__init__((host, 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-stream or between keep-alive requests is what the tests provoke.
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def next_reply(self, request: Request, stream: bool) -> Response:
        with self._lock:
            self.requests.append(request)
            reply = self.script[(len(self.responses)) % len(self.script)]
            response = Response(request, reply, stream, reply.pieces, started=time.perf_counter())
            self.responses.append(response)
            return response


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ScriptedServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------------
    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _client_gone(self) -> bool:
        """Has the client closed its end? (EOF readable without blocking.)"""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _event(self, payload: Any) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        chunk = f"data: {data}\n\n".encode()
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise _ClientGone from exc

    def _piece(self, response: Response, payload: Any) -> None:
        """Write one scripted piece, after the pace, unless the client has gone."""
        delay = self.server.first_delay if response.sent == 0 else self.server.pace
        if delay > 0:
            time.sleep(delay)
        if self._client_gone():
            raise _ClientGone
        self._event(payload)
        response.sent += 1
        response.piece_times.append(time.perf_counter())

    # -- routes -----------------------------------------------------------------------------------
    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "scripted"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        path = self.path.split("?")[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        chat = path.endswith("chat/completions")
        stream = bool(body.get("stream"))
        request = Request(path, body, dict(self.headers.items()), time.perf_counter())
        response = self.server.next_reply(request, stream)
        try:
            if stream:
                self._stream(response, body, chat)
            else:
                self._whole(response, body, chat)
        finally:
            response.ended = time.perf_counter()
            response._done.set()

    # -- answers ----------------------------------------------------------------------------------
    def _whole(self, response: Response, body: dict[str, Any], chat: bool) -> None:
        reply = response.reply
        delay = self.server.first_delay + self.server.pace * max(0, reply.pieces - 1)
        if delay > 0:
            time.sleep(delay)
        created = int(time.time())
        read = prompt_tokens(body)
        usage = {"prompt_tokens": read, "completion_tokens": reply.pieces, "total_tokens": read + reply.pieces}
        if chat:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": reply.text if reply.tokens or not reply.tool_calls else None,
            }
            if reply.reasoning:
                message["reasoning_content"] = "".join(reply.reasoning)
            if reply.tool_calls:
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in reply.tool_calls
                ]
            payload = {
                "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
                "object": "chat.completion",
                "created": created,
                "model": body.get("model") or MODEL,
                "system_fingerprint": "fp_scripted",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                    }
                ],
                "usage": usage,
            }
        else:
            payload = {
                "id": f"cmpl-{uuid.uuid4().hex[:16]}",
                "object": "text_completion",
                "created": created,
                "model": body.get("model") or MODEL,
                "choices": [{"index": 0, "text": reply.text, "logprobs": None, "finish_reason": "stop"}],
                "usage": usage,
            }
        self._json(200, payload)
        response.sent = response.planned
        response.completed = True

    def _stream(self, response: Response, body: dict[str, Any], chat: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        reply = response.reply
        base = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or MODEL,
        }
        if chat:
            base["system_fingerprint"] = "fp_scripted"

        def chunk(
            delta: dict[str, Any] | None = None, finish: str | None = None, text: str | None = None
        ) -> dict[str, Any]:
            if chat:
                choice = {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice]}

        try:
            if chat:
                self._event(chunk({"role": "assistant", "content": "", "refusal": None}))
            for piece in reply.reasoning if chat else ():
                self._piece(response, chunk({"reasoning_content": piece}))
            for token in reply.tokens:
                self._piece(response, chunk({"content": token}) if chat else chunk(text=token))
            if chat:
                for index, call in enumerate(reply.tool_calls):
                    head = {
                        "index": index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                    self._event(chunk({"tool_calls": [head]}))
                    for fragment in call.pieces():
                        self._piece(
                            response, chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
                        )
            finish = "tool_calls" if chat and reply.tool_calls else "stop"
            self._event(chunk({}, finish) if chat else chunk(text="", finish=finish))
            if (body.get("stream_options") or {}).get("include_usage"):
                read = prompt_tokens(body)
                usage = {
                    "prompt_tokens": read,
                    "completion_tokens": response.sent,
                    "total_tokens": read + response.sent,
                }
                self._event({**base, "choices": [], "usage": usage})
            self._event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            response.completed = True
        except _ClientGone:
            response.closed_early = response.sent < response.planned
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            response.closed_early = True
            self.close_connection = True


@contextlib.contextmanager
def scripted_openai(
    script: Sequence[Reply] | Reply | str, *, pace: float = 0.0, first_delay: float = 0.0
) -> Iterator[ScriptedURL]:
    """Serve ``script`` on a free loopback port in a background thread; yield the base URL (``.../v1``).

    ``script``: replies, one per request, cycling (a single `Reply` or a text is a one-reply script).
    ``pace``: seconds before each piece after the first; ``first_delay``: seconds before the first.
    The yielded `ScriptedURL` is a ``str`` carrying ``requests`` and ``responses``."""
    if isinstance(script, str):
        script = [Reply.words(script)]
    elif isinstance(script, Reply):
        script = [script]
    server = ScriptedServer(script, pace=pace, first_delay=first_delay)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-openai", daemon=True
    )
    thread.start()
    try:
        yield ScriptedURL(server.base_url, server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
