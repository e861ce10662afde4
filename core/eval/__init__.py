"""qwenguard.core.eval: measure a guard configuration on labelled data before deploying it.

>>> from qwenguard.core import Guard
>>> from qwenguard.core.eval import evaluate, sample_path
>>> guard = Guard.from_pretrained("demo")                                    # doctest: +SKIP
>>> report = evaluate(guard, sample_path(), out="qwenguard-eval")            # doctest: +SKIP
>>> report.metric("recall", "strict"), report.metric("recall", "loose")     # doctest: +SKIP

The same steps one by one: `load_dataset` → `run_guard` (or `arun_guard`) → `compute_report` →
`EvalReport.write`. Needs the ``eval`` extra (numpy, matplotlib; pyarrow for Parquet).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..policy import Policy
from ..verdict import Stage
from .data import (
    DataError,
    EvalExample,
    examples_from_records,
    load_dataset,
    parse_label,
    select,
)
from .metrics import (
    BinaryMetrics,
    ThresholdPoint,
    average_precision,
    best_threshold,
    binary_metrics,
    confusion_matrix,
    roc_auc,
    threshold_sweep,
)
from .plots import require_matplotlib
from .report import EvalReport, compute_report, default_policies
from .runner import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    Prediction,
    PredictionCache,
    RunResult,
    arun_guard,
    run_guard,
)

__all__ = [
    "BinaryMetrics",
    "DataError",
    "EvalExample",
    "EvalReport",
    "Prediction",
    "PredictionCache",
    "RunResult",
    "ThresholdPoint",
    "aevaluate",
    "arun_guard",
    "average_precision",
    "best_threshold",
    "binary_metrics",
    "compute_report",
    "confusion_matrix",
    "default_policies",
    "evaluate",
    "examples_from_records",
    "load_dataset",
    "parse_label",
    "roc_auc",
    "run_guard",
    "sample_path",
    "select",
    "threshold_sweep",
    "CACHE_FILE",
]

#: Name of the prediction cache inside the output directory.
CACHE_FILE = "predictions.jsonl"


def sample_path() -> Path:
    """The labelled sample shipped with the demo guard (synthetic, written for qwenguard)."""
    from ..demo import DEMO_SAMPLE_PATH

    return DEMO_SAMPLE_PATH


def _prepare(
    data: str | Path | Sequence[EvalExample],
    stage: Stage | str | None,
    limit: int | None,
    out: str | Path | None,
    cache: str | Path | bool | None,
    resume: bool,
) -> tuple[list[EvalExample], Path | None, dict[str, Any]]:
    if isinstance(data, (str, Path)):
        examples = load_dataset(data, stage=stage, limit=limit)
        meta: dict[str, Any] = {"data": str(data)}
    else:
        examples = select(list(data), stage=stage, limit=limit)
        meta = {}
    if stage is not None:
        meta["stage_filter"] = Stage(stage).value
    if cache is True or (cache is None and out is not None):
        if out is None:
            raise ValueError("cache=True needs out= (the cache lives in the output directory)")
        cache_path: Path | None = Path(out) / CACHE_FILE
    elif cache in (None, False):
        cache_path = None
    else:
        cache_path = Path(cache)  # type: ignore[arg-type]
    if cache_path is not None and not resume and cache_path.exists():
        cache_path.unlink()
    return examples, cache_path, meta


def _policies(policy: str, policies: Mapping[str, Policy] | None) -> dict[str, Policy]:
    chosen = dict(policies) if policies is not None else default_policies()
    if policy not in chosen:
        raise ValueError(f"policy {policy!r} is not one of {list(chosen)}")
    return chosen


def evaluate(
    guard: Any,
    data: str | Path | Sequence[EvalExample],
    *,
    stage: Stage | str | None = None,
    limit: int | None = None,
    policy: str = "strict",
    policies: Mapping[str, Policy] | None = None,
    out: str | Path | None = None,
    cache: str | Path | bool | None = None,
    resume: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: bool = False,
    plots: bool = True,
) -> EvalReport:
    """Run ``guard`` over labelled ``data`` (a file or `EvalExample`s) and report strict and loose side by side.

    ``policy`` names the primary mapping (breakdowns are computed for every mapping). With ``out``,
    the report files and plots are written there and predictions are cached in
    ``out/predictions.jsonl``, so an interrupted call resumes (``resume=False`` starts over). Plots to write need
    the ``eval`` extra: checked first, not after every row is scored (rt66a F2).
    """
    if out is not None and plots:
        require_matplotlib()
    examples, cache_path, meta = _prepare(data, stage, limit, out, cache, resume)
    chosen = _policies(policy, policies)
    run = run_guard(
        guard, examples, cache=cache_path, batch_size=batch_size, concurrency=concurrency, progress=progress
    )
    report = compute_report(examples, run, policies=chosen, primary=policy, meta=meta)
    if out is not None:
        report.write(out, plots=plots)
    return report


async def aevaluate(
    guard: Any,
    data: str | Path | Sequence[EvalExample],
    *,
    stage: Stage | str | None = None,
    limit: int | None = None,
    policy: str = "strict",
    policies: Mapping[str, Policy] | None = None,
    out: str | Path | None = None,
    cache: str | Path | bool | None = None,
    resume: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: bool = False,
    plots: bool = True,
) -> EvalReport:
    """Async twin of `evaluate` (batches through ``guard.acheck_many``). Reading the data, computing the report and
    writing its files and plots run in a worker thread: seconds that must not hold the event loop."""
    if out is not None and plots:
        await asyncio.to_thread(require_matplotlib)  # an import: off the loop
    examples, cache_path, meta = await asyncio.to_thread(_prepare, data, stage, limit, out, cache, resume)
    chosen = _policies(policy, policies)
    run = await arun_guard(
        guard, examples, cache=cache_path, batch_size=batch_size, concurrency=concurrency, progress=progress
    )
    report = await asyncio.to_thread(compute_report, examples, run, policies=chosen, primary=policy, meta=meta)
    if out is not None:
        await asyncio.to_thread(report.write, out, plots=plots)
    return report
