"""Run a Guard over labelled examples: batches, concurrency, a progress bar, and a resumable cache.

Each finished batch is appended to a JSONL *prediction cache* (one line per example, keyed by the
model name, the stage and the exact conversation), flushed at once. A run that is interrupted
(Ctrl-C, a crash, a closed laptop) resumes from that file: examples already in it are not sent to
the guard again. Guard errors and timeouts are reported but not cached, so a rerun retries them: a partial verdict
(a text judged in windows, some unreadable) is such an error, not a judged row.

The model's name is known before any row is keyed: a remote guard given none learns it from ``/models`` first
(`_model_name`). When it cannot, rows are neither answered from the cache nor written to it, and a batch
finished after the name changed (a rolling upgrade) is not written: keyed by the class's name, one model's rows
answered another's (rt62b F6)."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InputTooLarge, QwenGuardError
from ..policy import Decision, Policy
from ..verdict import Risk, Verdict
from .data import EvalExample, printable
from .identity import open_owned, refuse_link

__all__ = [
    "Prediction",
    "RunResult",
    "PredictionCache",
    "run_guard",
    "arun_guard",
    "example_key",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CONCURRENCY",
]

DEFAULT_BATCH_SIZE = 16
#: Distinct guard error messages the progress bar prints as they happen (the count keeps going).
_ERROR_KINDS_SHOWN = 5
#: Batches in flight at once. Local models coalesce concurrent batches themselves; servers gain more.
DEFAULT_CONCURRENCY = 1
_CACHE_VERSION = 1
#: How long a run waits for a remote guard given no model name to list its models (the CLI's wait too).
_LIST_MODELS_TIMEOUT_S = 10.0


def example_key(model: str, example: EvalExample) -> str:
    """A stable key for one guard call: model name + stage + the exact conversation."""
    payload = json.dumps(
        [model, example.stage.value, [[m["role"], m["content"]] for m in example.conversation]],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    # surrogatepass: an example built by hand may hold a lone surrogate (`load_dataset` writes them as U+FFFD).
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True)
class Prediction:
    """What the guard said about one example: a verdict's fields, or the error that replaced it.

    ``beneath``: the risk and categories of the verdict's `Verdict.beneath` (the windows below its risk, of a text
    judged in windows), no more: a policy that excuses the top's categories decides them, as a live check does."""

    key: str
    risk: Risk | None
    categories: tuple[str, ...] = ()
    refusal: bool | None = None
    probs: Mapping[Risk, float] | None = None
    error: str | None = None
    timeout: bool = False
    latency_ms: float = 0.0
    cached: bool = False
    beneath: Verdict | None = None

    @property
    def ok(self) -> bool:
        return self.risk is not None

    @property
    def verdict(self) -> Verdict | None:
        if self.risk is None:
            return None
        return Verdict(
            self.risk, self.categories, self.refusal, "", self.latency_ms, None, self.probs, beneath=self.beneath
        )

    @classmethod
    def from_decision(cls, key: str, decision: Decision) -> Prediction:
        """The decision's verdict; an error when the guard failed, even where it carries a *partial* verdict (a
        text judged in windows, some unreadable: the verdict of those read, which `Policy.decide_error` blocks
        on). Scored, that row would count as judged on windows the guard never read, be cached and never
        retried, and a run on an engine that garbles most windows would pass (rt63e F3).

        ``decision`` is one of a policy that ignores no category (`run_guard` asks under one): under one that does,
        a decision blocked by the windows beneath holds their verdict, not the text's (`Policy.decide`)."""
        v = decision.verdict
        if decision.error is not None or v is None:
            error = decision.error or f"no verdict (reason: {decision.reason})"
            if v is not None:
                error += f" (partial verdict {v.risk.value}: not every window was read)"
            return cls(key, None, error=error, timeout=decision.reason == "timeout")
        probs = None if v.probs is None else {Risk(r): float(p) for r, p in v.probs.items()}
        return cls(
            key, v.risk, tuple(v.categories), v.refusal, probs, latency_ms=v.latency_ms, beneath=_kept(v.beneath)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "v": _CACHE_VERSION,
            "key": self.key,
            "risk": self.risk.value if self.risk else None,
            "categories": list(self.categories),
            "refusal": self.refusal,
            "probs": None if self.probs is None else {r.value: p for r, p in self.probs.items()},
            "latency_ms": round(self.latency_ms, 3),
            "beneath": _beneath_json(self.beneath),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Prediction:
        """A cache line's prediction: one written before ``beneath`` was kept has none."""
        probs = data.get("probs")
        risk = Risk(data["risk"])
        return cls(
            key=str(data["key"]),
            risk=risk,
            categories=tuple(data.get("categories") or ()),
            refusal=data.get("refusal"),
            probs=None if probs is None else {Risk(k): float(p) for k, p in probs.items()},
            latency_ms=float(data.get("latency_ms") or 0.0),
            cached=True,
            beneath=_beneath_from_json(data.get("beneath"), risk),
        )


def _kept(beneath: Verdict | None) -> Verdict | None:
    """What a prediction keeps of a verdict's ``beneath``: its risk and categories, and its own beneath (no raw
    text: a windowed document's answers, held for every row of a run)."""
    if beneath is None:
        return None
    return Verdict(beneath.risk, tuple(beneath.categories), beneath=_kept(beneath.beneath))


def _beneath_json(beneath: Verdict | None) -> dict[str, Any] | None:
    if beneath is None:
        return None
    return {
        "risk": beneath.risk.value,
        "categories": list(beneath.categories),
        "beneath": _beneath_json(beneath.beneath),
    }


def _beneath_from_json(data: Any, above: Risk) -> Verdict | None:
    """``beneath`` as `_beneath_json` wrote it under a verdict of risk ``above``; ValueError for one that is not below
    it, or safe (no `worst` keeps such a one: a line of another writer's)."""
    if data is None:
        return None
    risk = Risk(data["risk"])
    if not 0 < risk.rank < above.rank:
        raise ValueError(f"a verdict beneath one {above.value} is not {risk.value}")
    categories = data.get("categories") or ()
    if not isinstance(categories, list):
        raise ValueError("categories beneath are not a list")
    return Verdict(risk, tuple(map(str, categories)), beneath=_beneath_from_json(data.get("beneath"), risk))


class PredictionCache:
    """Append-only JSONL of predictions. Unreadable lines (a write cut short) are skipped."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        self.entries: dict[str, Prediction] = {}
        self.skipped_lines = 0
        self._needs_newline = False
        if self.path is not None and self.path.is_symlink():
            refuse_link(self.path)  # a planted link would feed eval predictions it never made, or take its writes
        if self.path is not None and self.path.exists():
            with self.path.open("rb") as fb:
                fb.seek(0, 2)
                if fb.tell():
                    fb.seek(-1, 2)
                    # A write cut short ends without a newline: start the next line on its own.
                    self._needs_newline = fb.read(1) != b"\n"
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        data = json.loads(line)
                        if data.get("v") != _CACHE_VERSION or data.get("risk") is None:
                            raise ValueError
                        p = Prediction.from_json(data)
                    except (ValueError, KeyError, TypeError, AttributeError):
                        self.skipped_lines += 1
                        continue
                    self.entries[p.key] = p

    def get(self, key: str) -> Prediction | None:
        return self.entries.get(key)

    def add(self, predictions: Sequence[Prediction]) -> None:
        fresh = [p for p in predictions if p.ok]
        for p in fresh:
            self.entries[p.key] = p
        if self.path is None or not fresh:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open_owned(self.path, "a") as f:
            # One write per batch; if it is cut short, the partial last line is skipped on reload.
            lead = "\n" if self._needs_newline else ""
            f.write(lead + "".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in fresh))
            self._needs_newline = False
            f.flush()


@dataclass
class RunResult:
    """Predictions in the order of the examples, and how the run went."""

    predictions: list[Prediction]
    model: str
    from_cache: int = 0
    ran: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    cache_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float | None:
        return None if self.elapsed_s <= 0 or self.ran == 0 else self.ran / self.elapsed_s

    def summary(self) -> dict[str, Any]:
        rate = self.rows_per_s
        return {
            "model": self.model,
            "rows": len(self.predictions),
            "from_cache": self.from_cache,
            "ran": self.ran,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
            "rows_per_s": None if rate is None else round(rate, 2),
            "cache": self.cache_path,
        }


def _named(guard: Any) -> str:
    """The name the guard's backend goes by now, or the guard's class name for a backend with none."""
    return str(getattr(getattr(guard, "backend", None), "name", None) or type(guard).__name__)


def _unnamed_remote(guard: Any) -> Any:
    """The guard's backend when it is one that learns its model's name (``served_model``) and has none yet."""
    backend = getattr(guard, "backend", None)
    return backend if callable(getattr(backend, "served_model", None)) and not getattr(backend, "name", "") else None


def _model_name(guard: Any) -> str | None:
    """The name the run's rows are keyed by: a remote guard's served model learned now when it was given none
    (blocking: `_amodel_name` off the loop); None when it cannot be learned (its checks say why)."""
    backend = _unnamed_remote(guard)
    if backend is not None:
        try:
            return str(backend.served_model(timeout=_LIST_MODELS_TIMEOUT_S))
        except QwenGuardError:
            return None
    return _named(guard)


async def _amodel_name(guard: Any) -> str | None:
    """Async twin of `_model_name` (the ``/models`` read waited for on a worker thread)."""
    if _unnamed_remote(guard) is None:
        return _named(guard)
    return await asyncio.to_thread(_model_name, guard)


def _unexcused(guard: Any) -> Any:
    """The guard the rows are asked of: ``guard``, or where its policy ignores categories a copy of it (sharing its
    backend and cache) whose policy ignores none. Under an ignore list, a decision blocked by the windows beneath an
    excused Unsafe holds their verdict (`Policy.decide`): the row would be recorded as read Controversial, its Unsafe
    lost to every mapping. The report applies each mapping's ignore list itself."""
    policy = getattr(guard, "policy", None)
    if not isinstance(policy, Policy) or not (
        policy.ignore_categories or any(s.ignore_categories for s in policy.stages.values())
    ):
        return guard
    asked = copy.copy(guard)
    # Only the ignore lists go: its timeouts, on_error and stages turned off still apply, as to the guard's own checks.
    stages = {stage: replace(s, ignore_categories=None) for stage, s in policy.stages.items()}
    asked.policy = replace(policy, ignore_categories=frozenset(), stages=stages)
    return asked


def _plan(
    model: str | None, examples: Sequence[EvalExample], cache: PredictionCache, batch_size: int
) -> tuple[list[str], list[list[tuple[str, EvalExample]]]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = [example_key("" if model is None else model, e) for e in examples]
    todo: dict[str, EvalExample] = {}
    for k, e in zip(keys, examples):
        if cache.get(k) is None and k not in todo:  # duplicates in the data are asked once
            todo[k] = e
    items = list(todo.items())
    return keys, [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def _items(batch: list[tuple[str, EvalExample]]) -> list[tuple[Any, list[dict[str, str]]]]:
    return [(e.stage, e.messages()) for _, e in batch]


def _to_predictions(batch: list[tuple[str, EvalExample]], decisions: Sequence[Decision]) -> list[Prediction]:
    return [Prediction.from_decision(k, d) for (k, _), d in zip(batch, decisions)]


def _too_large(batch: list[tuple[str, EvalExample]], exc: InputTooLarge) -> list[Prediction] | None:
    """A batch the guard refused for its size: the rows refused alone each an error, the others as the call decided
    them (``exc.decided``: judged and heard once, not asked again: rt64n F3); refused as a whole, ``None`` (ask its
    rows one by one, so that only a row too large is an error, not its neighbours nor the run), or that row's
    error when the batch is one row."""
    error = f"{type(exc).__name__}: {exc}"
    if exc.too_large and len(exc.decided) == len(batch):
        return [
            Prediction(key, None, error=error) if d is None else Prediction.from_decision(key, d)
            for (key, _), d in zip(batch, exc.decided)
        ]
    if len(batch) > 1:
        return None
    return [Prediction(batch[0][0], None, error=error)]


def _judge(guard: Any, batch: list[tuple[str, EvalExample]]) -> list[Prediction]:
    try:
        return _to_predictions(batch, guard.check_many(_items(batch)))
    except InputTooLarge as exc:
        alone = _too_large(batch, exc)
    return alone if alone is not None else [p for row in batch for p in _judge(guard, [row])]


async def _ajudge(guard: Any, batch: list[tuple[str, EvalExample]]) -> list[Prediction]:
    try:
        return _to_predictions(batch, await guard.acheck_many(_items(batch)))
    except InputTooLarge as exc:
        alone = _too_large(batch, exc)
    return alone if alone is not None else [p for row in batch for p in await _ajudge(guard, [row])]


class _NewErrors:
    """Prints each new kind of guard error once, when it first happens (a few kinds at most): a failing server is
    seen at once, not at the end. ``advance`` as the progress bar's."""

    def __init__(self, console: Any) -> None:
        self.console, self.told = console, set[str]()

    def advance(self, n: int, errors: int = 0, last_error: str | None = None) -> None:
        if last_error and last_error not in self.told and len(self.told) < _ERROR_KINDS_SHOWN:
            from rich.markup import escape

            self.told.add(last_error)
            # A server's error body is its own text: controls escaped (an ESC sequence must not reach the terminal).
            self.console.print(
                f"[red]guard error:[/red] {escape(printable(last_error))}", highlight=False, soft_wrap=True
            )


@contextmanager
def _progress(total: int, done: int, enabled: bool, label: str, show_errors: bool = False) -> Iterator[Any]:
    """A rich progress bar (count, rate, guard errors so far, elapsed, ETA) on stderr, or a no-op. Errors show
    as they happen (each new kind printed above the bar, `_NewErrors`). Without the bar, ``show_errors`` still
    prints each new kind (the CLI's ``--no-progress``, a CI log)."""
    from rich.console import Console

    if not enabled:

        class _Nop:
            def advance(self, n: int, errors: int = 0, last_error: str | None = None) -> None:
                pass

        yield _NewErrors(Console(stderr=True)) if show_errors else _Nop()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text("  -  rows/s" if task.speed is None else f"{task.speed:6.1f} rows/s", style="cyan")

    class ErrorColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            errors = task.fields.get("errors", 0)
            return Text(f"{errors} errors", style="red" if errors else "green")

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        ErrorColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    with progress:
        task = progress.add_task(label, total=total, completed=done, errors=0)
        count = [0]
        said = _NewErrors(progress.console)  # printed above the bar

        class _Bar:
            def advance(self, n: int, errors: int = 0, last_error: str | None = None) -> None:
                count[0] += errors
                said.advance(n, errors, last_error)
                progress.update(task, advance=n, errors=count[0])

        yield _Bar()


def _finish(
    model: str,
    examples: Sequence[EvalExample],
    keys: list[str],
    cache: PredictionCache,
    fresh: dict[str, Prediction],
    from_cache: int,
    elapsed: float,
) -> RunResult:
    preds = []
    for k in keys:
        p = fresh.get(k) or cache.get(k)
        if p is None:  # pragma: no cover - every key was either cached or asked
            raise RuntimeError(f"no prediction for key {k}")
        preds.append(p)
    ran = len(fresh)
    errors = sum(1 for p in fresh.values() if not p.ok)
    return RunResult(
        preds,
        model,
        from_cache=from_cache,
        ran=ran,
        errors=errors,
        elapsed_s=elapsed,
        cache_path=None if cache.path is None else str(cache.path),
    )


@dataclass
class _Run:
    """What `run_guard` and `arun_guard` share: the plan, and the predictions made so far."""

    store: PredictionCache
    model: str | None  # what the rows are keyed by; None: not known, the cache not used (`_model_name`)
    keys: list[str]
    batches: list[list[tuple[str, EvalExample]]]
    from_cache: int  # rows answered from the prediction cache
    unique_total: int
    unique_done: int  # distinct rows already in the cache when the run starts (the progress bar's start)
    fresh: dict[str, Prediction] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    @classmethod
    def plan(
        cls,
        guard: Any,
        examples: Sequence[EvalExample],
        cache: str | Path | PredictionCache | None,
        batch_size: int,
        concurrency: int,
        model: str | None,
    ) -> _Run:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        store = cache if isinstance(cache, PredictionCache) else PredictionCache(cache)
        # A model not known: its rows are judged, none answered from the cache nor written to it.
        keys, batches = _plan(model, examples, store if model is not None else PredictionCache(None), batch_size)
        asked = {k for b in batches for k, _ in b}
        unique_total = len(dict.fromkeys(keys))
        return cls(
            store,
            model,
            keys,
            batches,
            from_cache=sum(1 for k in keys if k not in asked),
            unique_total=unique_total,
            unique_done=unique_total - sum(len(b) for b in batches),
        )

    def record(self, guard: Any, preds: list[Prediction], bar: Any) -> None:
        if self.model is not None and _named(guard) == self.model:  # another model answered: not under this name
            self.store.add(preds)
        self.fresh.update((p.key, p) for p in preds)
        failed = [p for p in preds if not p.ok]
        bar.advance(len(preds), errors=len(failed), last_error=failed[-1].error if failed else None)

    def finish(self, guard: Any, examples: Sequence[EvalExample]) -> RunResult:
        model = _named(guard) if self.model is None else self.model
        elapsed = time.perf_counter() - self.start
        return _finish(model, examples, self.keys, self.store, self.fresh, self.from_cache, elapsed)


def run_guard(
    guard: Any,
    examples: Sequence[EvalExample],
    *,
    cache: str | Path | PredictionCache | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: bool = False,
    show_errors: bool = False,
) -> RunResult:
    """Classify every example with ``guard.check_many`` in batches; resume from ``cache`` if given.

    ``concurrency`` batches run at once (threads; a local backend coalesces them into larger forwards).
    An interrupt (KeyboardInterrupt) propagates after the finished batches are safely in the cache.
    ``progress``: a progress bar on stderr, which prints each new kind of guard error as it happens;
    ``show_errors``: those lines without the bar. A guard whose policy ignores categories is asked under a copy
    that ignores none (`_unexcused`): each row records the verdict judged, not the one its policy decided on.
    """
    guard = _unexcused(guard)
    run = _Run.plan(guard, examples, cache, batch_size, concurrency, _model_name(guard))
    with _progress(run.unique_total, run.unique_done, progress, "qwenguard eval", show_errors) as bar:
        if concurrency == 1:
            for batch in run.batches:
                run.record(guard, _judge(guard, batch), bar)
        else:
            pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="qwenguard-eval")
            queue = iter(run.batches)
            running: dict[Future[Any], list[tuple[str, EvalExample]]] = {}
            try:
                for batch in queue:
                    running[pool.submit(_judge, guard, batch)] = batch
                    if len(running) >= concurrency:
                        break
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        running.pop(fut)
                        run.record(guard, fut.result(), bar)
                        nxt = next(queue, None)
                        if nxt is not None:
                            running[pool.submit(_judge, guard, nxt)] = nxt
            finally:
                # On an interrupt, drop what has not started; batches in flight finish in the background.
                pool.shutdown(wait=not running, cancel_futures=True)
    return run.finish(guard, examples)


async def arun_guard(
    guard: Any,
    examples: Sequence[EvalExample],
    *,
    cache: str | Path | PredictionCache | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: bool = False,
    show_errors: bool = False,
) -> RunResult:
    """Async twin of `run_guard` (``guard.acheck_many``; ``concurrency`` batches awaited at once). Reading the
    prediction cache, keying the rows and writing each batch to the cache run in a worker thread: a resumed run of
    50,000 rows held the event loop for seconds (rt69g F2)."""
    guard = _unexcused(guard)
    model = await _amodel_name(guard)
    run = await asyncio.to_thread(_Run.plan, guard, examples, cache, batch_size, concurrency, model)
    gate = asyncio.Semaphore(concurrency)

    async def one(batch: list[tuple[str, EvalExample]]) -> list[Prediction]:
        async with gate:
            return await _ajudge(guard, batch)

    with _progress(run.unique_total, run.unique_done, progress, "qwenguard eval", show_errors) as bar:
        tasks = [asyncio.ensure_future(one(b)) for b in run.batches]
        try:
            for next_done in asyncio.as_completed(tasks):
                # One batch at a time: `record` is never run twice at once. A cancel (Ctrl-C) waits for the batch's
                # write to end, so what was judged is cached, as on the sync path (a thread cannot be stopped, and
                # the next run read the cache while it was still being written).
                write = asyncio.ensure_future(asyncio.to_thread(run.record, guard, await next_done, bar))
                try:
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    await asyncio.wait({write})
                    raise
        finally:
            for t in tasks:
                t.cancel()
    return run.finish(guard, examples)
