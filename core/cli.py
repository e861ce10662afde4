"""The ``qwenguard`` command line: ``check``, ``serve``, ``eval``.

Exit codes are a contract: 0 allowed, 1 blocked, 2 every error (usage, missing extra, missing model,
device, guard failure, standard input that is not UTF-8 or over ``max_chars``, a closed standard output). An
error is one line on stderr, its control characters escaped (``--json``: one JSON object on stdout too, a usage
error that Typer reports included); ``qwenguard --debug ...`` prints the full traceback instead.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import json
import math
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from .cache import DEFAULT_CACHE_BYTES, DEFAULT_CACHE_SIZE
from .formats.printable import printable
from .guard import DEFAULT_MAX_CHARS
from .policy import Policy

#: click's UsageError, what Typer reports as a usage error (exit 2): the base of typer.BadParameter, found by
#: name so that this works with typer's vendored click (0.29+) and with click itself (older typer).
_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_JSON_META = "qwenguard.json"


def _wants_json(args: list[str]) -> bool:
    """``--json`` is on the command line (before a ``--``, after which it would be TEXT)."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json" or arg.startswith("--json="):
            return True
    return False


def _usage_json(exc: Any) -> None:
    try:
        typer.echo(
            json.dumps({"error": {"type": type(exc).__name__, "message": exc.format_message()}}, ensure_ascii=False)
        )
    except BrokenPipeError:
        _stdout_to_devnull()  # Typer's usage error (exit 2) follows; click's EPIPE handler would exit 1


class _Group(TyperGroup):
    """The root command, whose ``--help`` shows no type: typer 0.29 writes ``<bool>`` beside it (see `FLAG`).

    With ``--json`` anywhere on the command line, a usage error Typer reports itself (a missing TEXT, an
    unknown option or command, an extra argument: raised while parsing, before any command runs) also
    prints `{"error": ...}` on stdout, as every other error does; Typer's message stays on stderr (rt55c F4).
    """

    def get_help_option(self, ctx: Any) -> Any:
        return _untyped(super().get_help_option(ctx))

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        as_json = _wants_json(args)
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except _USAGE_ERROR as exc:
            if as_json:
                _usage_json(exc)
            raise
        ctx.meta[_JSON_META] = as_json
        return ctx

    def invoke(self, ctx: Any) -> Any:
        # The command's own errors are reported in `reports_errors`; what arrives here as a usage error is the
        # subcommand's name or its arguments failing to parse.
        try:
            return super().invoke(ctx)
        except _USAGE_ERROR as exc:
            if ctx.meta.get(_JSON_META):
                _usage_json(exc)
            raise


class _Command(TyperCommand):
    """A command whose ``--help`` shows no type, as `_Group`'s."""

    def get_help_option(self, ctx: Any) -> Any:
        return _untyped(super().get_help_option(ctx))


def _untyped(option: Any) -> Any:
    if option is not None:
        option.metavar = FLAG
    return option


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Qwen3Guard safety checks for LLM applications.",
)


class _StdoutClosed(Exception):
    """Standard output was closed under a write (EPIPE: the reader exited, ``| head -c0``), or before the start."""


class _Console(Console):
    """A rich console whose write to a closed stream never exits 1, the "blocked" code (rich's own handler
    does: rt56f F7). On stdout it raises `_StdoutClosed`, which `reports_errors` makes exit 2; on stderr the
    line is dropped, since a closed stderr must not change a verdict's exit code."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if not self.stderr and sys.stdout is None:  # closed before start (``>&-``): rich would drop the line
            raise _StdoutClosed
        super().print(*objects, **kwargs)

    def on_broken_pipe(self) -> None:
        self.quiet = True
        if not self.stderr:
            raise _StdoutClosed
        _devnull_onto(sys.stderr)


def _devnull_onto(stream: Any) -> None:
    """Point ``stream``'s file descriptor at /dev/null: the flush at exit of what a closed pipe refused then
    succeeds (else Python prints "Exception ignored ... BrokenPipeError" and exits 120)."""
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation: an in-memory stream (tests)
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)


def _stdout_to_devnull() -> None:
    _devnull_onto(sys.stdout)


console = _Console()
err_console = _Console(stderr=True)

EXIT_ALLOWED, EXIT_BLOCKED, EXIT_ERROR = 0, 1, 2
#: The metavar of a flag: none. typer 0.29 shows "<bool>" beside a flag, which reads as if it took a value
#: (``--json true`` then checks the text "true").
FLAG = ""

_state = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Print full tracebacks on errors.", metavar=FLAG)) -> None:
    """Qwen3Guard safety checks for LLM applications."""
    _state["debug"] = debug


def fail(exc: BaseException | str, *, as_json: bool = False, kind: str | None = None) -> typer.Exit:
    """Report an error the CLI way (one line, or a JSON object with ``--json``) and return the exit to raise."""
    if isinstance(exc, typer.BadParameter):
        # str() of a BadParameter is the bare message; format_message() names the option (its param_hint):
        # "Invalid value for '--limit': must be at least 1".
        message = exc.format_message()
    else:
        message = str(exc) if not isinstance(exc, str) else exc
    kind = kind or (type(exc).__name__ if not isinstance(exc, str) else "error")
    if _state["debug"] and isinstance(exc, BaseException):
        traceback.print_exception(exc, file=sys.stderr)
    else:
        # escape(): messages carry install hints such as 'pip install -e ".[local]"' that rich would eat.
        # printable(): and names from outside (a dataset's file name) whose ESC sequences would drive the
        # operator's terminal (rt56f F9).
        err_console.print(f"[red]error:[/red] {_line(message)}", soft_wrap=True)
    if as_json:
        try:
            typer.echo(json.dumps({"error": {"type": kind, "message": message}}, ensure_ascii=False))
        except BrokenPipeError:
            _stdout_to_devnull()  # still exit 2 (the error line is on stderr): click's handler would exit 1
    return typer.Exit(EXIT_ERROR)


def _line(text: str) -> str:
    """``text`` in one console line: control characters escaped, never read as rich markup."""
    return escape(printable(text))


def _stdout_closed() -> typer.Exit:
    """Exit 2 for a standard output that was closed under a write: an error, not the 1 of "blocked"."""
    _stdout_to_devnull()
    err_console.print("[red]error:[/red] standard output is closed: nothing was written", soft_wrap=True)
    return typer.Exit(EXIT_ERROR)


def _echo(line: str) -> None:
    """`typer.echo` to standard output, a closed one raising `_StdoutClosed` (click's own handler exits 1). A
    standard output closed before the start (``>&-``: Python's ``sys.stdout`` is then ``None``) too: the line
    would be dropped without a word (rt61a F4)."""
    if sys.stdout is None:
        raise _StdoutClosed
    try:
        typer.echo(line)
    except BrokenPipeError:
        raise _StdoutClosed from None


def reports_errors(command: F) -> F:
    """Any exception out of a command becomes exit 2 with one line (or a JSON object with ``--json``)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        # No `import click`: typer 0.29+ vendors it and no core dependency installs it (a usage error
        # raised here, typer.BadParameter, is reported like any other error: one line, exit 2).
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except _StdoutClosed:
            raise _stdout_closed() from None
        except Exception as exc:  # noqa: BLE001 - the contract: every error is exit 2, one line
            raise fail(exc, as_json=bool(kwargs.get("as_json"))) from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def _gen_model_advice(command: str) -> Iterator[None]:
    """A Qwen3Guard-Stream checkpoint given as ``--model`` is refused in this command's own words: only
    ``serve`` has ``--stream-model``, and advice naming it elsewhere ends in "No such option" (rt64a F2)."""
    from .backends.transformers_gen import StreamCheckpointAsGen

    try:
        yield
    except StreamCheckpointAsGen as exc:
        label, flag = exc.label, shlex.quote(exc.label)
        if command == "serve":
            advice = f"pass it as --stream-model {flag}, with a Qwen3Guard-Gen checkpoint such as demo as --model"
        else:
            advice = (
                f"qwenguard {command} judges with a Qwen3Guard-Gen model (--model demo, or a Gen hub id or "
                f"directory); a Stream checkpoint goes to 'qwenguard serve --stream-model {flag}' (in Python: "
                f"stream_model={label!r})"
            )
        raise ValueError(f"{label!r} is a Qwen3Guard-Stream checkpoint, not a Gen one: {advice}") from exc


def _policy(name: str) -> Policy:
    if name not in ("strict", "loose"):
        raise typer.BadParameter("policy must be 'strict' or 'loose'")
    return Policy.strict() if name == "strict" else Policy.loose()


@app.command(cls=_Command)
@reports_errors
def check(
    text: str = typer.Argument(..., help="Text to check, or '-' to read standard input."),
    model: str = typer.Option("demo", "--model", "-m", help="'demo', a hub id or a checkpoint directory."),
    response: str | None = typer.Option(
        None,
        "--response",
        "-r",
        help="Check this response to TEXT instead of TEXT itself ('-' reads it from standard input).",
    ),
    policy: str = typer.Option("strict", "--policy", help="strict (controversial blocks) or loose."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object.", metavar=FLAG),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps."),
    max_chars: int = typer.Option(
        DEFAULT_MAX_CHARS,
        "--max-chars",
        min=1,
        help="Refuse (exit 2) a text or standard input longer than this many characters.",
    ),
) -> None:
    """Check a prompt (or a response to it). Exit 0 allowed, 1 blocked, 2 error."""
    from .backends.torch_runtime import disable_progress_bars
    from .guard import Guard

    if text == "-" and response == "-":
        raise typer.BadParameter(
            "only one of TEXT and --response can be '-' (both would read the one standard input)",
            param_hint="--response",
        )
    if text == "-":
        text = _read_stdin(max_chars)
    else:
        _hint_if_file(text, "TEXT")
    if response == "-":
        response = _read_stdin(max_chars)
    elif response is not None:
        _hint_if_file(response, "--response")
    pol = _policy(policy)
    disable_progress_bars()
    with _gen_model_advice("check"):
        guard = Guard.from_pretrained(model, policy=pol, device=device, max_chars=max_chars)
    decision = guard.check_prompt(text) if response is None else guard.check_response(text, response)
    if decision.reason in ("guard_error", "timeout"):
        err_console.print(f"[red]guard error:[/red] {_line(str(decision.error))}", soft_wrap=True)
    if as_json:
        _echo(json.dumps(decision.to_dict(), ensure_ascii=False))
    elif decision.reason == "empty":
        console.print(f"[bold green]ALLOW[/bold green]  stage={decision.stage.value}  empty input: nothing to check")
    else:
        color = {"allow": "green", "flag": "yellow", "block": "red"}[decision.action.value]
        risk = decision.risk.value if decision.risk else "-"
        cats = ", ".join(decision.categories) or "-"
        console.print(
            f"[bold {color}]{decision.action.value.upper()}[/bold {color}]  stage={decision.stage.value} "
            f"risk={risk} categories={cats}"
            + (
                f" refusal={decision.verdict.refusal}"
                if decision.verdict and decision.verdict.refusal is not None
                else ""
            )
            + (f"  ({decision.verdict.latency_ms:.0f} ms)" if decision.verdict else "")
        )
    if decision.reason in ("guard_error", "timeout"):
        raise typer.Exit(EXIT_ERROR)
    raise typer.Exit(EXIT_ALLOWED if decision.allowed else EXIT_BLOCKED)


class InputNotText(ValueError):
    """Standard input is not text in its encoding (not UTF-8, or a broken UTF-16/32 after its byte-order mark)."""


#: Bytes ``check -`` reads from standard input at a time.
_STDIN_CHUNK = 1 << 16
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16's: FF FE 00 00 starts with FF FE
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _read_stdin(max_chars: int) -> str:
    """Standard input as the text to check (``check -``, ``--response -``).

    Read in chunks and decoded as they come, never past ``max_chars`` characters: more is `InputTooLarge`
    after at most 4 bytes a character and a chunk (``yes | qwenguard check -`` read until the OOM killer:
    rt56f F5). UTF-8, strictly, a byte-order mark dropped; UTF-16 or UTF-32 with a byte-order mark (what
    Windows PowerShell's ``>`` writes) decoded as such; any other bytes are `InputNotText` naming the byte, as
    ``qwenguard eval`` names it (they were judged as mojibake, and allowed: rt56f F1)."""
    stream = sys.stdin
    if stream is None:  # started with stdin closed (`<&-`): Python sets sys.stdin to None
        raise InputNotText("standard input is closed: nothing to read for '-'")
    binary = getattr(stream, "buffer", None)
    if binary is None:  # a text-only stream put in sys.stdin by an embedding: already decoded
        text = stream.read(max_chars + 1)
        if len(text) > max_chars:
            raise _stdin_too_large(max_chars)
        return str(text)
    read = getattr(binary, "read1", binary.read)  # read1: what the pipe has, not a full chunk's wait
    head = b""
    while len(head) < 4 and (more := read(_STDIN_CHUNK)):
        head += more
    encoding = next((enc for bom, enc in _BOMS if head.startswith(bom)), "utf-8")
    offset = 0  # stdin's bytes before `chunk`
    if head.startswith(codecs.BOM_UTF8):
        head, offset = head[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
    decoder = codecs.getincrementaldecoder(encoding)("strict")  # utf-16/32 read and drop their BOM
    parts: list[str] = []
    chars = lines = line_start = 0  # newlines before `chunk`, and where the last line began
    chunk = head
    while True:
        pending = len(decoder.getstate()[0])  # an incomplete sequence held from the chunk before
        try:
            part = decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            raise _not_text(encoding, exc, chunk, offset, pending, lines, line_start) from None
        if encoding == "utf-8" and (nul := chunk.find(b"\x00")) >= 0:
            raise _nul_in(offset + nul)
        chars += len(part)
        if chars > max_chars:
            raise _stdin_too_large(max_chars)
        parts.append(part)
        if not chunk:
            return "".join(parts)
        lines += chunk.count(b"\n")
        if (nl := chunk.rfind(b"\n")) >= 0:
            line_start = offset + nl + 1
        offset += len(chunk)
        chunk = read(_STDIN_CHUNK)


def _nul_in(at: int) -> InputNotText:
    # Valid UTF-8, but no text holds NUL: UTF-16 without a byte-order mark reads as every other byte NUL
    # ("H\0e\0..."), which a judge sees as noise and allows (rt56f's note).
    return InputNotText(
        f"standard input: a NUL byte at byte {at + 1} (UTF-16 without a byte-order mark?); re-save the text as UTF-8"
    )


def _stdin_too_large(max_chars: int) -> Exception:
    from .errors import InputTooLarge

    return InputTooLarge(
        f"standard input: over max_chars={max_chars:,} characters (reading stopped there); split the text"
    )


def _not_text(
    encoding: str, exc: UnicodeDecodeError, chunk: bytes, offset: int, pending: int, lines: int, line_start: int
) -> InputNotText:
    at = offset - pending + exc.start  # the bad byte's offset in stdin (exc.object: the held bytes + chunk)
    byte = exc.object[exc.start]
    if encoding != "utf-8":
        return InputNotText(
            f"standard input: not {encoding.upper()} after its byte-order mark ({exc.reason} at byte {at + 1}); "
            "re-save the text as UTF-8"
        )
    # As `qwenguard eval` says it (core/eval/data.py): line, and the byte's column in it, 1-based.
    before = chunk[: max(0, exc.start - pending)]
    line = lines + before.count(b"\n") + 1
    if (nl := before.rfind(b"\n")) >= 0:
        line_start = offset + nl + 1
    return InputNotText(
        f"standard input line {line}: not UTF-8 (byte 0x{byte:02x} at column {at - line_start + 1}); "
        "re-save the text as UTF-8"
    )


def _hint_if_file(value: str, where: str) -> None:
    """Say on stderr when the text to judge is the name of an existing file: ``check prompt.txt`` judges the
    ten characters "prompt.txt", not the file (``check - < prompt.txt`` reads it). The text is still judged as
    given (a short text may happen to name a file), so the hint changes no verdict or exit code."""
    import os

    if "\n" in value or len(value) > 4096:
        return
    try:
        is_file = os.path.isfile(value)
    except (OSError, ValueError):
        return
    if is_file:
        how = "qwenguard check - < FILE" if where == "TEXT" else "qwenguard check TEXT --response - < FILE"
        err_console.print(
            f"[yellow]note:[/yellow] {where} {escape(repr(value))} names a file: its name was checked, not its "
            f"contents (to check a file's contents: {escape(how)})",
            soft_wrap=True,
        )


def _count_or_none(value: str) -> int | None:
    return None if value.lower() == "none" else int(value)


def _seconds(value: str) -> float:
    """A number of seconds: finite (``float("nan")`` parses, and passed every ``< 0`` check: rt53d F5)."""
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite number of seconds, got {value!r}")
    return seconds


def _seconds_or_none(value: str) -> float | None:
    return None if value.lower() == "none" else _seconds(value)


def _flag(value: str) -> bool:
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    if value.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


#: Local Gen backend options ``serve --backend KEY=VALUE`` passes to `Guard.from_pretrained` (docs/guard.md),
#: each with how its value is read.
BACKEND_OPTIONS: dict[str, Callable[[str], Any]] = {
    "max_batch": int,
    "max_batch_tokens": int,
    "max_wait_s": _seconds,
    "target_step_s": _seconds_or_none,
    "width_floor": int,
    "max_new_tokens": int,
    "max_context": int,
    "max_window_tokens": int,
    "window_overlap": int,
    "max_windows": int,
    "engine": _flag,
    "max_session_tokens": _count_or_none,
    "label_branches": _flag,
}


#: Stream model options ``serve --stream-backend KEY=VALUE`` passes to `TransformersStream.load` (docs/streaming.md).
STREAM_BACKEND_OPTIONS: dict[str, Callable[[str], Any]] = {
    "max_session_tokens": _count_or_none,
    "max_positions": int,
    "step_tokens": int,
    "max_sessions_per_forward": int,
}


def _backend_options(
    values: list[str], known: dict[str, Callable[[str], Any]] = BACKEND_OPTIONS, flag: str = "--backend"
) -> dict[str, Any]:
    """``serve --backend KEY=VALUE`` (repeatable) as keyword arguments; unknown keys and bad values raise."""
    options: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE with KEY one of {', '.join(known)}")
        try:
            options[key] = known[key](raw.strip())
        except ValueError as exc:
            raise ValueError(f"{flag} {item!r}: {exc}") from exc
    return options


def _served_policy(value: str) -> Policy:
    """``serve --policy``: ``strict``, ``loose``, or a JSON file of ``Policy.to_dict()``."""
    if value in ("strict", "loose"):
        return _policy(value)
    from pathlib import Path

    path = Path(value)
    if not path.is_file():
        raise ValueError(f"--policy must be 'strict', 'loose' or a JSON file of Policy.to_dict(); no file {value!r}")

    from .formats.json_keys import unique_keys  # a key twice ("mode") is refused, not read as its last copy (rt57c F9)

    try:
        return Policy.from_dict(json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=unique_keys))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"--policy {value}: {exc}") from exc


#: ``serve``'s flag for each `Limits` field, where it is not the field's name as a flag.
_LIMIT_FLAGS = {"request_timeout_s": "--timeout"}


def _limits(**values: Any) -> Any:
    """`Limits` from ``serve``'s flags, its error naming the flag (``--timeout nan``), not the field."""
    from .server import Limits

    try:
        return Limits(**values)
    except ValueError as exc:
        field = str(exc).split(" ", 1)[0]
        flag = _LIMIT_FLAGS.get(field, "--" + field.removesuffix("_s").replace("_", "-"))
        raise ValueError(f"{flag}: {str(exc).split(' ', 1)[1].replace(' (None: no limit)', '')}") from None


def _url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets (``http://[::1]:8000``)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _check_port_free(host: str, port: int) -> None:
    """Fail (one line, exit 2) when ``host:port`` cannot be bound, before minutes of model loading.

    Bound the way the server binds (SO_REUSEADDR, so a port in TIME_WAIT is not taken for busy), then
    released at once; a server that takes the port in between still fails, later, in the server's words."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn picks it
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host.strip("[]"), port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise fail(f"port {port} on {host} is in use; pass --port") from None
        raise fail(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from None


@app.command(cls=_Command)
@reports_errors
def serve(
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="A Qwen3Guard-Gen hub id or checkpoint directory, or 'demo' (the default on loopback only: "
        "the demo guard is a test fixture, not a safety model).",
    ),
    stream_model: str | None = typer.Option(
        None, "--stream-model", help="A Qwen3Guard-Stream checkpoint for /v1/stream."
    ),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Interface to bind. Other than loopback, an API key is required (or --allow-unauthenticated).",
    ),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="QWENGUARD_API_KEY",
        help="Require 'Authorization: Bearer KEY' (or set QWENGUARD_API_KEY). Empty is an error.",
    ),
    allow_unauthenticated: bool = typer.Option(
        False,
        "--allow-unauthenticated",
        metavar=FLAG,
        help="Serve a non-loopback --host without an API key (anyone who can reach it can use it).",
    ),
    policy: str = typer.Option(
        "strict",
        "--policy",
        help="The operator's policy, pinned for every client: strict, loose, "
        "or a JSON file of Policy.to_dict(). Clients can only make it stricter.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps."),
    backend: list[str] = typer.Option(  # noqa: B008 - typer's way to declare a repeatable option
        [],
        "--backend",
        help="A local model option as KEY=VALUE (repeatable): max_batch, max_batch_tokens, target_step_s, "
        "max_session_tokens, label_branches, max_window_tokens, ... (docs/guard.md).",
    ),
    stream_backend: list[str] = typer.Option(  # noqa: B008 - typer's way to declare a repeatable option
        [],
        "--stream-backend",
        help="A Stream model option as KEY=VALUE (repeatable, with --stream-model): max_session_tokens "
        "(KV positions all stream sessions hold together), max_positions, step_tokens, "
        "max_sessions_per_forward (docs/streaming.md).",
    ),
    cache_size: int = typer.Option(
        DEFAULT_CACHE_SIZE,
        "--cache-size",
        help="Verdicts the cache keeps, shared by every client (a client learns whether the same conversation "
        "was checked recently: docs/security.md); 0 turns the cache off.",
    ),
    cache_bytes: int = typer.Option(
        DEFAULT_CACHE_BYTES, "--cache-bytes", help="Bytes the verdict cache may hold; 0 turns the cache off."
    ),
    max_concurrency: int = typer.Option(64, "--max-concurrency", help="HTTP requests served at once; more get 503."),
    max_body_bytes: int = typer.Option(
        1_000_000, "--max-body-bytes", help="Largest request body or stream frame (413 / close 1009)."
    ),
    timeout: float = typer.Option(
        30.0, "--timeout", help="Per-request deadline in seconds (504; 408 for a body that arrives too slowly)."
    ),
    max_conversations: int = typer.Option(
        256, "--max-conversations", help="Conversations per /v1/moderate request (413 past it)."
    ),
    max_messages: int = typer.Option(
        256, "--max-messages", help="Messages per conversation (413 / close 1009 past it)."
    ),
    max_chars: int = typer.Option(
        200_000, "--max-chars", help="Characters of content per request or stream session (413 / close 1009)."
    ),
    max_windows_per_request: int = typer.Option(
        1024,
        "--max-windows-per-request",
        help="Guard windows one request may need over all its conversations (413 past it, before any model work).",
    ),
    max_streams: int | None = typer.Option(
        None, "--max-streams", help="Stream sessions at once (default: --max-concurrency); more get 503."
    ),
    max_streams_per_client: int | None = typer.Option(
        None,
        "--max-streams-per-client",
        help="Stream sessions at once per client address (default: 16, or half of --max-streams when "
        "that is smaller); more get 429.",
    ),
    max_requests_per_client: int | None = typer.Option(
        None,
        "--max-requests-per-client",
        help="Requests served at once per client address (default: half of --max-concurrency); "
        "more wait for a turn (within --timeout; 429 past it).",
    ),
    max_bodies_per_client: int = typer.Option(
        16,
        "--max-bodies-per-client",
        help="Request bodies arriving at once per client address; as many more wait for a turn (within --timeout), then 429.",
    ),
    stream_idle_timeout: float = typer.Option(
        60.0, "--stream-idle-timeout", help="Close a stream session that feeds no text for this many seconds (4408)."
    ),
    stream_max_session: float = typer.Option(
        600.0, "--stream-max-session", help="Close a stream session after this many seconds (4408)."
    ),
    stream_max_windows_in_flight: int = typer.Option(
        4,
        "--stream-max-windows-in-flight",
        help="Gen-window checks one stream session runs at once (without --stream-model); its other text "
        "waits and is judged in longer segments.",
    ),
    head_timeout: float = typer.Option(
        10.0, "--head-timeout", help="Seconds a client has to send a request head or a stream's open frame."
    ),
    keep_alive: float = typer.Option(10.0, "--keep-alive", help="Seconds an idle keep-alive connection stays open."),
    max_connections: int = typer.Option(
        1024, "--max-connections", help="Open sockets (lowered under a small ulimit -n); idle ones make room first."
    ),
    drain_delay: float = typer.Option(
        0.0,
        "--drain-delay",
        help="On SIGTERM: seconds to keep serving with /health at 503 before "
        "the listener closes (for balancers that route by probe).",
    ),
    shutdown_timeout: float = typer.Option(
        20.0,
        "--shutdown-timeout",
        help="On SIGTERM: seconds to finish requests in flight (stream sessions are handed back at once, close 1012).",
    ),
) -> None:
    """Serve a guard over HTTP: OpenAI-compatible /v1/chat/completions, /v1/moderate, /v1/stream.

    Limits and the security model: docs/security.md."""
    import os

    from .backends.openai_wire import api_key_problem

    # What a client could exploit is checked before the model loads, so a mistake fails in a second.
    if api_key is None and os.environ.get("QWENGUARD_API_KEY") is not None:
        api_key = os.environ["QWENGUARD_API_KEY"]  # typer reads an empty variable as unset: it is a mistake
    if api_key is not None and not api_key.strip():
        raise fail(
            "the API key is empty (--api-key or QWENGUARD_API_KEY): set a key, or leave both unset "
            "to serve without authentication on loopback"
        )
    if api_key is not None and (problem := api_key_problem(api_key)):
        raise fail(f"{problem} (--api-key or QWENGUARD_API_KEY): no client could send it")
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if api_key is None and not loopback and not allow_unauthenticated:
        raise fail(
            f"--host {host} without an API key would let anyone who can reach it use the guard; "
            "set --api-key (or QWENGUARD_API_KEY), or pass --allow-unauthenticated to mean it"
        )
    if model is None:
        # The demo guard is a test fixture, not a safety model: a deployment that forgot --model (or whose
        # MODEL variable was unset) served it looking healthy (rt53d F11). On loopback it is the first hour's.
        if not loopback:
            raise fail(
                f"--host {host} without --model would serve the demo guard, a test fixture and not a safety "
                "model; pass --model with a Qwen3Guard-Gen hub id or checkpoint directory (or --model demo to "
                "mean it)"
            )
        model = "demo"
    from .server.limits import MAX_SECONDS

    for flag, value, least in (("--drain-delay", drain_delay, "0"), ("--shutdown-timeout", shutdown_timeout, None)):
        # NaN passed `< 0` (rt53d F5).
        if not (math.isfinite(value) and (value >= 0 if least else value > 0) and value <= MAX_SECONDS):
            raise fail(
                f"{flag} must be a finite number of seconds, {'>= 0' if least else '> 0'} and at most "
                f"{MAX_SECONDS:.0e}, got {value!r}"
            )
    if cache_size < 0 or cache_bytes < 0:
        raise fail("--cache-size and --cache-bytes must be >= 0 (0 turns the verdict cache off)")
    from .demo import DEMO_NAMES
    from .server import serve as run_server

    pinned = _served_policy(policy)
    backend_options = _backend_options(backend)
    stream_options = _backend_options(stream_backend, STREAM_BACKEND_OPTIONS, "--stream-backend")
    if stream_options and stream_model is None:
        raise fail("--stream-backend without --stream-model: there is no Stream model to apply it to")
    limits = _limits(
        max_concurrency=max_concurrency,
        max_body_bytes=max_body_bytes,
        request_timeout_s=timeout,
        max_conversations=max_conversations,
        max_messages=max_messages,
        max_chars=max_chars,
        max_windows_per_request=max_windows_per_request,
        max_streams=max_streams,
        max_streams_per_client=max_streams_per_client,
        max_bodies_per_client=max_bodies_per_client,
        max_requests_per_client=max_requests_per_client,
        stream_idle_timeout_s=stream_idle_timeout,
        stream_max_session_s=stream_max_session,
        stream_max_windows_in_flight=stream_max_windows_in_flight,
        head_timeout_s=head_timeout,
        keep_alive_s=keep_alive,
        max_connections=max_connections,
    )
    if model in DEMO_NAMES and not loopback:
        err_console.print(
            "[yellow]warning:[/yellow] serving the demo guard, a test fixture and not a safety model, on a "
            "non-loopback interface",
            soft_wrap=True,
        )
    _check_port_free(host, port)  # before the model loads: a busy port fails in a second, in one line
    # OpenMP's wait policy stays the operator's (OMP_WAIT_POLICY in the environment). Forcing PASSIVE, as
    # this once did to leave the event loop its cores, made every torch operation wake sleeping threads:
    # the demo's forwards took 2-3x as long and a long document's steps kept short checks waiting longer
    # (bench/hostile.py, docs/performance.md "Under hostile traffic").
    from .backends.torch_runtime import disable_progress_bars
    from .guard import Guard

    disable_progress_bars()
    with _gen_model_advice("serve"):
        guard = Guard.from_pretrained(
            model,
            policy=pinned,
            stream_model=stream_model,
            device=device,
            stream_options=stream_options,
            cache_size=cache_size,
            cache_bytes=cache_bytes,
            **backend_options,
        )
    if api_key is None and not loopback:
        err_console.print(
            "[yellow]warning:[/yellow] serving without an API key on a non-loopback interface "
            "(--allow-unauthenticated)",
            soft_wrap=True,
        )
    err_console.print(
        f"qwenguard serving {escape(repr(model))} on http://{_url_host(host)}:{port}/v1 "
        f"(auth {'on' if api_key else 'off'}, policy {escape(policy)}"
        f"{'' if cache_size and cache_bytes else ', verdict cache off'})",
        soft_wrap=True,
    )
    if guard.stream_backend is not None:
        budget = guard.stream_backend.max_session_tokens
        held = (
            "unbounded"
            if budget is None
            else f"at most {budget:,} KV positions together, "
            f"{budget * guard.stream_backend.bytes_per_position / 2**30:.1f} GiB"
        )
        err_console.print(f"stream sessions: {held} (--stream-backend max_session_tokens=N)", soft_wrap=True)
    run_server(
        guard,
        host=host,
        port=port,
        api_key=api_key,
        allow_unauthenticated=allow_unauthenticated,
        limits=limits,
        drain_delay_s=drain_delay,
        shutdown_timeout_s=shutdown_timeout,
    )


@app.command("eval", cls=_Command)
@reports_errors
def eval_(
    ctx: typer.Context,
    data: str = typer.Argument(
        ...,
        help="Labelled data: .jsonl, .csv or .parquet (columns: text or messages, label; "
        "optional response, category, source). 'sample' = the shipped demo sample.",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        help="Local checkpoint ('demo', hub id, directory); "
        "with --remote, the served model name (default: the server's only model).",
    ),
    remote: str | None = typer.Option(
        None,
        "--remote",
        help="Evaluate a served model: OpenAI-compatible base URL, "
        "e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang, qwenguard serve); replicas of one model "
        "separated by commas.",
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="QWENGUARD_API_KEY", help="Bearer token for --remote."
    ),
    stage: str | None = typer.Option(
        None,
        "--stage",
        help="Only rows of this stage: prompt, response, tool_call, tool_result, retrieval (default: all).",
    ),
    policy: str = typer.Option(
        "strict", "--policy", help="Primary mapping: strict or loose (both are always reported)."
    ),
    out: str | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Output directory (report.json, report.md, PNGs, "
        "prediction cache). Default: qwenguard-eval/<dataset>-<run id>, one per dataset and "
        "model: --stage, --policy and --limit share it (the last run writes the report).",
    ),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate only the first N rows."),
    batch_size: int = typer.Option(16, "--batch-size", help="Rows per guard call."),
    concurrency: int = typer.Option(
        0, "--concurrency", show_default=False, help="Batches in flight (default: 1 local, 4 remote)."
    ),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        metavar=FLAG,
        help="Replace what --out holds (another run's predictions and report) and start over.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps (local models)."),
    timeout: float | None = typer.Option(
        None,
        "--timeout",
        help="Seconds before a row counts as a guard error: per "
        "batch locally; with --remote, per request from when it is sent (default 30).",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar.", metavar=FLAG),
    mode: str = typer.Option(
        "chat",
        "--mode",
        help="With --remote: chat (the engine applies its chat template) or "
        "completion (qwenguard sends the prompt: Ollama, llama.cpp).",
    ),
    tokenizer: str | None = typer.Option(
        None,
        "--tokenizer",
        help="With --remote: the served checkpoint's tokenizer "
        "(hub id or directory): exact windows, token ids in completion mode.",
    ),
    max_context: int | None = typer.Option(
        None,
        "--max-context",
        help="With --remote: the engine's context in tokens, "
        "if it does not publish it (transformers serve, llama.cpp, Ollama; default 4096).",
    ),
    max_in_flight: int = typer.Option(
        8,
        "--max-in-flight",
        help="With --remote: requests in flight at once (match the "
        "engine's batch size; more only queue there and time out).",
    ),
    allow_errors: bool = typer.Option(
        False,
        "--allow-errors",
        metavar=FLAG,
        help="Exit 0 even when rows got no verdict (guard errors); they are left out of the metrics "
        "either way. Without it such a run exits 2 (after writing the report).",
    ),
) -> None:
    """Measure a guard on labelled data: recall, precision, F1, MCC, ROC-AUC, strict vs loose, breakdowns, plots."""
    from .eval.cli import RemoteOptions, run_eval

    source = ctx.get_parameter_source("api_key")
    if remote is None and api_key is not None and source is not None and source.name == "COMMANDLINE":
        # Silently ignored before, while --mode/--tokenizer/--max-context without --remote are refused. The
        # environment's QWENGUARD_API_KEY is no mistake here: it may be set for other commands.
        raise typer.BadParameter("applies to --remote only (a local model takes no key)", param_hint="--api-key")
    with _gen_model_advice("eval"):
        run_eval(
            data=data,
            model=model,
            remote=remote,
            api_key=api_key,
            stage=stage,
            policy=policy,
            out=out,
            limit=limit,
            batch_size=batch_size,
            concurrency=concurrency,
            fresh=fresh,
            device=device,
            timeout=timeout,
            progress=progress,
            console=console,
            err_console=err_console,
            remote_options=RemoteOptions(
                mode=mode, tokenizer=tokenizer, max_context=max_context, max_in_flight=max_in_flight
            ),
            allow_errors=allow_errors,
        )


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
