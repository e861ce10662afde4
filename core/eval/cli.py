"""The body of ``qwenguard eval`` (the command itself is declared in ``qwenguard.core.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import QwenGuardError
from ..policy import Policy

__all__ = ["run_eval", "EXIT_INTERRUPTED", "REMOTE_CONCURRENCY"]

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 2, 130
#: Batches in flight against a server by default: enough to keep it busy, few enough not to flood it.
REMOTE_CONCURRENCY = 4
_STAGES = ("prompt", "response", "tool_call", "tool_result", "retrieval")


def _served_model(base_url: str, api_key: str | None) -> str:
    """The one model a server lists at ``/models`` (so ``--remote URL`` alone works against it)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=10.0)
        resp.raise_for_status()
        ids = [m["id"] for m in resp.json().get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise QwenGuardError(f"cannot list the models at {base_url}/models ({exc}); pass --model NAME") from None
    if len(ids) != 1:
        raise QwenGuardError(f"{base_url} serves {len(ids)} models {ids}; pick one with --model NAME")
    return ids[0]


def _guard(model: str | None, remote: str | None, api_key: str | None, device: str, timeout: float | None) -> Any:
    from ..guard import Guard

    # The guard's own policy matters only for timeouts here: the report applies strict and loose itself.
    policy = Policy(timeout_s=timeout)
    if remote is None:
        return Guard.from_pretrained(model or "demo", policy=policy, device=device)
    if not hasattr(Guard, "remote"):  # pragma: no cover - the remote backend ships with the core
        raise QwenGuardError("this qwenguard has no remote backend (Guard.remote); install qwenguard[remote]")
    name = model or _served_model(remote, api_key)
    # logprobs give P(unsafe) for ROC-AUC and the threshold sweep where the server returns them.
    return Guard.remote(remote, model=name, api_key=api_key, policy=policy, logprobs=True)


def run_eval(*, data: str, model: str | None, remote: str | None, api_key: str | None, stage: str | None,
             policy: str, out: str, limit: int | None, batch_size: int, concurrency: int, fresh: bool, device: str,
             timeout: float | None, progress: bool, console: Any, err_console: Any) -> None:
    from . import CACHE_FILE, compute_report, load_dataset, run_guard, sample_path
    from .runner import PredictionCache

    if policy not in ("strict", "loose"):
        raise typer.BadParameter("policy must be 'strict' or 'loose'", param_hint="--policy")
    if stage not in (None, *_STAGES):
        raise typer.BadParameter(f"stage must be one of {', '.join(_STAGES)}", param_hint="--stage")
    for value, name in ((batch_size, "--batch-size"), (limit, "--limit")):
        if value is not None and value < 1:
            raise typer.BadParameter("must be at least 1", param_hint=name)
    if concurrency < 0:
        raise typer.BadParameter("must be at least 1 (0: automatic)", param_hint="--concurrency")
    if timeout is not None and timeout <= 0:
        raise typer.BadParameter("must be positive", param_hint="--timeout")
    path = sample_path() if data == "sample" else Path(data)
    out_dir = Path(out)
    cache_path = out_dir / CACHE_FILE
    guard = None
    try:
        examples = load_dataset(path, stage=stage, limit=limit)  # bad data fails before a model loads
        guard = _guard(model, remote, api_key, device, timeout)
        if fresh and cache_path.exists():
            cache_path.unlink()
        cache = PredictionCache(cache_path)
        if cache.entries:
            err_console.print(f"resuming: {len(cache.entries)} predictions cached in {cache_path}")
        run = run_guard(guard, examples, cache=cache, batch_size=batch_size,
                        concurrency=concurrency or (REMOTE_CONCURRENCY if remote else 1), progress=progress)
        meta = {"data": str(path), "stage_filter": stage, "limit": limit, "remote": remote}
        report = compute_report(examples, run, primary=policy, meta=meta)
        paths = report.write(out_dir)
    except KeyboardInterrupt:
        done = len(PredictionCache(cache_path).entries)
        err_console.print(f"\n[yellow]interrupted[/yellow]: {done} predictions are saved in {cache_path}; "
                          f"run the same command again to resume.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (QwenGuardError, ValueError, TypeError, OSError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(EXIT_ERROR) from None
    finally:
        if guard is not None:
            guard.close()
    console.print(report.table())
    errors = report.data["meta"]["errors"]
    if errors:
        err_console.print(f"[yellow]{errors} rows got no verdict (guard errors); they count as the policy's "
                          f"on_error outcome (blocked). See report.md.[/yellow]")
    console.print(f"wrote {len(paths)} files to {out_dir}/: " + ", ".join(p.name for p in paths.values()))
    raise typer.Exit(EXIT_OK)
