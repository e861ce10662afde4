"""The ``qwenguard`` command line: ``check`` (and ``serve``, ``eval`` as they land)."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console

from .errors import QwenGuardError
from .policy import Policy

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Qwen3Guard safety checks for LLM applications.")
console = Console()
err_console = Console(stderr=True)

EXIT_ALLOWED, EXIT_BLOCKED, EXIT_ERROR = 0, 1, 2


@app.callback()
def _root() -> None:
    """Qwen3Guard safety checks for LLM applications."""


def _policy(name: str) -> Policy:
    if name not in ("strict", "loose"):
        raise typer.BadParameter("policy must be 'strict' or 'loose'")
    return Policy.strict() if name == "strict" else Policy.loose()


@app.command()
def check(
    text: str = typer.Argument(..., help="Text to check, or '-' to read standard input."),
    model: str = typer.Option("demo", "--model", "-m", help="'demo', a hub id or a checkpoint directory."),
    response: Optional[str] = typer.Option(None, "--response", "-r", help="Check this response to TEXT instead of TEXT itself."),
    policy: str = typer.Option("strict", "--policy", help="strict (controversial blocks) or loose."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps."),
) -> None:
    """Check a prompt (or a response to it). Exit 0 allowed, 1 blocked, 2 error."""
    from .guard import Guard

    if text == "-":
        text = sys.stdin.read()
    try:
        pol = _policy(policy)
        guard = Guard.from_pretrained(model, policy=pol, device=device)
        decision = guard.check_prompt(text) if response is None else guard.check_response(text, response)
    except typer.BadParameter:
        raise
    except (QwenGuardError, ValueError, TypeError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(EXIT_ERROR) from None
    if decision.reason in ("guard_error", "timeout"):
        err_console.print(f"[red]guard error:[/red] {decision.error}")
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


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
