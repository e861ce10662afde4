"""The ``qwenguard`` command line: ``check``, ``serve``, ``eval``.

Exit codes are a contract: 0 allowed, 1 blocked, 2 every error (usage, missing extra, missing model,
device, guard failure). An error is one line on stderr (``--json``: one JSON object on stdout too);
``qwenguard --debug ...`` prints the full traceback instead.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any, Optional, TypeVar

import click
import typer
from rich.console import Console
from rich.markup import escape

from .errors import QwenGuardError
from .policy import Policy

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Qwen3Guard safety checks for LLM applications.")
console = Console()
err_console = Console(stderr=True)

EXIT_ALLOWED, EXIT_BLOCKED, EXIT_ERROR = 0, 1, 2

_state = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Print full tracebacks on errors.")) -> None:
    """Qwen3Guard safety checks for LLM applications."""
    _state["debug"] = debug


def fail(exc: BaseException | str, *, as_json: bool = False, kind: str | None = None) -> typer.Exit:
    """Report an error the CLI way (one line, or a JSON object with ``--json``) and return the exit to raise."""
    message = str(exc) if not isinstance(exc, str) else exc
    kind = kind or (type(exc).__name__ if not isinstance(exc, str) else "error")
    if _state["debug"] and isinstance(exc, BaseException):
        traceback.print_exception(exc, file=sys.stderr)
    else:
        # escape(): messages carry install hints such as "pip install 'qwenguard[local]'" that rich would eat.
        err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    if as_json:
        typer.echo(json.dumps({"error": {"type": kind, "message": message}}, ensure_ascii=False))
    return typer.Exit(EXIT_ERROR)


def reports_errors(command: F) -> F:
    """Any exception out of a command becomes exit 2 with one line (or a JSON object with ``--json``)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - the contract: every error is exit 2, one line
            raise fail(exc, as_json=bool(kwargs.get("as_json"))) from None

    return wrapper  # type: ignore[return-value]


def _policy(name: str) -> Policy:
    if name not in ("strict", "loose"):
        raise typer.BadParameter("policy must be 'strict' or 'loose'")
    return Policy.strict() if name == "strict" else Policy.loose()


@app.command()
@reports_errors
def check(
    text: str = typer.Argument(..., help="Text to check, or '-' to read standard input."),
    model: str = typer.Option("demo", "--model", "-m", help="'demo', a hub id or a checkpoint directory."),
    response: Optional[str] = typer.Option(None, "--response", "-r", help="Check this response to TEXT instead of TEXT itself."),
    policy: str = typer.Option("strict", "--policy", help="strict (controversial blocks) or loose."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps."),
) -> None:
    """Check a prompt (or a response to it). Exit 0 allowed, 1 blocked, 2 error."""
    from .backends.torch_runtime import disable_progress_bars
    from .guard import Guard

    if text == "-":
        text = sys.stdin.read()
    pol = _policy(policy)
    disable_progress_bars()
    guard = Guard.from_pretrained(model, policy=pol, device=device)
    decision = guard.check_prompt(text) if response is None else guard.check_response(text, response)
    if decision.reason in ("guard_error", "timeout"):
        err_console.print(f"[red]guard error:[/red] {escape(str(decision.error))}", soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(decision.to_dict(), ensure_ascii=False))
    else:
        color = {"allow": "green", "flag": "yellow", "block": "red"}[decision.action.value]
        risk = decision.risk.value if decision.risk else "-"
        cats = ", ".join(decision.categories) or "None"
        console.print(f"[bold {color}]{decision.action.value.upper()}[/bold {color}]  stage={decision.stage.value} "
                      f"risk={risk} categories={cats}" + (f" refusal={decision.verdict.refusal}" if decision.verdict and decision.verdict.refusal is not None else "")
                      + (f"  ({decision.verdict.latency_ms:.0f} ms)" if decision.verdict else ""))
    if decision.reason in ("guard_error", "timeout"):
        raise typer.Exit(EXIT_ERROR)
    raise typer.Exit(EXIT_ALLOWED if decision.allowed else EXIT_BLOCKED)


@app.command()
@reports_errors
def serve(
    model: str = typer.Option("demo", "--model", "-m", help="'demo', a Qwen3Guard-Gen hub id or a checkpoint directory."),
    stream_model: Optional[str] = typer.Option(None, "--stream-model", help="A Qwen3Guard-Stream checkpoint for /v1/stream."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (0.0.0.0 exposes the server; set --api-key)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="QWENGUARD_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' (or set QWENGUARD_API_KEY)."),
    policy: str = typer.Option("strict", "--policy", help="Default policy for /v1/moderate and streams: strict or loose."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps."),
    max_concurrency: int = typer.Option(64, "--max-concurrency", help="Requests served at once; more get 503."),
    max_body_bytes: int = typer.Option(1_000_000, "--max-body-bytes", help="Largest request body; larger gets 413."),
    timeout: float = typer.Option(30.0, "--timeout", help="Per-request deadline in seconds (504 past it)."),
) -> None:
    """Serve a guard over HTTP: OpenAI-compatible /v1/chat/completions, /v1/moderate, /v1/stream."""
    import os

    # On a CPU box, OpenMP threads that spin after each forward steal the cores the event loop needs to
    # answer requests. Only effective before torch loads (it is not loaded yet here).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .backends.torch_runtime import disable_progress_bars
    from .guard import Guard
    from .server import serve as run_server

    try:
        guard = Guard.from_pretrained(model, policy=_policy(policy), stream_model=stream_model, device=device)
    except typer.BadParameter:
        raise
    except (QwenGuardError, ValueError, TypeError, ImportError) as exc:
        raise fail(exc) from None
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print("[yellow]warning:[/yellow] serving on a public interface without --api-key")
    err_console.print(f"qwenguard serving {model!r} on http://{host}:{port}/v1 (auth {'on' if api_key else 'off'})")
    run_server(guard, host=host, port=port, api_key=api_key, max_concurrency=max_concurrency,
               max_body_bytes=max_body_bytes, request_timeout_s=timeout)


@app.command("eval")
@reports_errors
def eval_(
    data: str = typer.Argument(..., help="Labelled data: .jsonl, .csv or .parquet (columns: text or messages, label; "
                                         "optional response, category, source). 'sample' = the shipped demo sample."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Local checkpoint ('demo', hub id, directory); "
                                        "with --remote, the served model name (default: the server's only model)."),
    remote: Optional[str] = typer.Option(None, "--remote", help="Evaluate a served model: OpenAI-compatible base URL, "
                                         "e.g. http://127.0.0.1:8000/v1 (vLLM, SGLang, qwenguard serve)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="QWENGUARD_API_KEY", help="Bearer token for --remote."),
    stage: Optional[str] = typer.Option(None, "--stage", help="Only rows of this stage: prompt, response, tool_call, tool_result, retrieval (default: all)."),
    policy: str = typer.Option("strict", "--policy", help="Primary mapping: strict or loose (both are always reported)."),
    out: str = typer.Option("qwenguard-eval", "--out", "-o", help="Output directory (report.json, report.md, PNGs, cache)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N rows."),
    batch_size: int = typer.Option(16, "--batch-size", help="Rows per guard call."),
    concurrency: int = typer.Option(0, "--concurrency", help="Batches in flight (default: 1 local, 4 remote)."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore the prediction cache in --out and start over."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps (local models)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds per batch before rows count as guard errors."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Measure a guard on labelled data: recall, precision, F1, MCC, ROC-AUC, strict vs loose, breakdowns, plots."""
    from .eval.cli import run_eval

    run_eval(data=data, model=model, remote=remote, api_key=api_key, stage=stage, policy=policy, out=out, limit=limit,
             batch_size=batch_size, concurrency=concurrency, fresh=fresh, device=device, timeout=timeout,
             progress=progress, console=console, err_console=err_console)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
