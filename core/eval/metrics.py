"""Classification metrics for guard evaluation, in plain numpy.

Conventions (the positive class is "should be blocked"):

- A ratio whose denominator is zero is *undefined* and returned as ``None`` (JSON ``null``, a dash in
  tables): recall with no positive rows, precision with no positive predictions. F1 is
  ``2·TP / (2·TP + FP + FN)``, undefined only when there is neither a positive row nor a positive
  prediction. These match scikit-learn with ``zero_division=np.nan``.
- MCC is 0.0 when a row or column of the confusion matrix is empty (the usual limit, and what
  scikit-learn returns).
- ROC-AUC and average precision need both classes; otherwise ``None``. Ties in scores count half
  (ROC-AUC by average ranks, the Mann-Whitney statistic).
- Threshold sweeps predict positive when ``score >= threshold``.

scikit-learn is used only in the test-suite, as the independent reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import MissingDependency

try:
    import numpy as np
except ImportError as exc:  # pragma: no cover - numpy comes with the eval and local extras
    raise MissingDependency.for_extra("eval", "numpy") from exc

__all__ = [
    "BinaryMetrics",
    "ThresholdPoint",
    "binary_metrics",
    "confusion_matrix",
    "roc_auc",
    "average_precision",
    "threshold_sweep",
    "best_threshold",
    "DEFAULT_THRESHOLDS",
]

#: 0.00, 0.01, ..., 1.00
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(i / 100, 2) for i in range(101))


def _bools(values: Sequence[Any] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional")
    if arr.dtype != bool:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{what} must hold booleans or 0/1")
        arr = arr.astype(bool)
    return arr


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


@dataclass(frozen=True)
class BinaryMetrics:
    """Counts and rates for one binary confusion matrix (positive = should be blocked)."""

    n: int
    tp: int
    fp: int
    tn: int
    fn: int
    recall: float | None
    precision: float | None
    f1: float | None
    accuracy: float | None
    mcc: float
    specificity: float | None
    fpr: float | None
    fnr: float | None

    @property
    def positives(self) -> int:
        return self.tp + self.fn

    @property
    def negatives(self) -> int:
        return self.tn + self.fp

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def binary_metrics(y_true: Sequence[Any] | np.ndarray, y_pred: Sequence[Any] | np.ndarray) -> BinaryMetrics:
    """Recall, precision, F1, accuracy, MCC, specificity and error rates of boolean predictions."""
    t, p = _bools(y_true, "y_true"), _bools(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({t.size} vs {p.size})")
    tp = int(np.sum(t & p))
    fp = int(np.sum(~t & p))
    tn = int(np.sum(~t & ~p))
    fn = int(np.sum(t & ~p))
    n = tp + fp + tn + fn
    den = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    # Python ints: the product overflows int64 for a few million rows.
    mcc = 0.0 if den == 0 else (tp * tn - fp * fn) / math.sqrt(den)
    return BinaryMetrics(
        n=n,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        recall=_ratio(tp, tp + fn),
        precision=_ratio(tp, tp + fp),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        accuracy=_ratio(tp + tn, n),
        mcc=float(mcc),
        specificity=_ratio(tn, tn + fp),
        fpr=_ratio(fp, tn + fp),
        fnr=_ratio(fn, tp + fn),
    )


def confusion_matrix(y_true: Sequence[Any], y_pred: Sequence[Any], labels: Sequence[Any]) -> list[list[int]]:
    """Counts with rows = true label, columns = predicted label, in the order of ``labels``.

    Values outside ``labels`` are an error (a silently dropped row would skew every rate)."""
    index = {label: i for i, label in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError("labels must be distinct")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true and y_pred differ in length ({len(y_true)} vs {len(y_pred)})")
    m = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for a, b in zip(y_true, y_pred):
        if a not in index or b not in index:
            raise ValueError(f"value {a if a not in index else b!r} is not one of labels {list(labels)}")
        m[index[a], index[b]] += 1
    return m.tolist()


def _scores(y_true: Sequence[Any], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    t = _bools(y_true, "y_true")
    s = np.asarray(scores, dtype=float)
    if s.shape != t.shape:
        raise ValueError(f"y_true and scores differ in length ({t.size} vs {s.size})")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite numbers (drop rows without a score first)")
    return t, s


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks."""
    uniq, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each tie group
    return (ends - (counts - 1) / 2.0)[inverse]


def roc_auc(y_true: Sequence[Any], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve; ``None`` unless both classes are present."""
    t, s = _scores(y_true, scores)
    pos, neg = int(t.sum()), int((~t).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = _average_ranks(s)
    u = float(ranks[t].sum()) - pos * (pos + 1) / 2.0
    return u / (pos * neg)


def average_precision(y_true: Sequence[Any], scores: Sequence[float]) -> float | None:
    """Area under the precision-recall step curve (sum over thresholds of ΔRecall · Precision);
    ``None`` when there is no positive row."""
    t, s = _scores(y_true, scores)
    pos = int(t.sum())
    if pos == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s_sorted, t_sorted = s[order], t[order]
    tps = np.cumsum(t_sorted)
    fps = np.cumsum(~t_sorted)
    # One point per distinct score: the last index of each run of equal scores.
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tp, fp = tps[last], fps[last]
    precision = tp / (tp + fp)
    recall = tp / pos
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))


@dataclass(frozen=True)
class ThresholdPoint:
    """The binary metrics of ``score >= threshold``."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None
    fpr: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def threshold_sweep(
    y_true: Sequence[Any], scores: Sequence[float], thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> list[ThresholdPoint]:
    """Precision, recall, F1 and FPR at each threshold (predict positive when ``score >= threshold``)."""
    t, s = _scores(y_true, scores)
    points = []
    for th in thresholds:
        m = binary_metrics(t, s >= th)
        points.append(ThresholdPoint(float(th), m.tp, m.fp, m.tn, m.fn, m.precision, m.recall, m.f1, m.fpr))
    return points


def best_threshold(points: Sequence[ThresholdPoint], *, min_recall: float | None = None) -> ThresholdPoint | None:
    """The point with the highest F1 (ties: the higher threshold), or, with ``min_recall``, the
    highest threshold whose recall still reaches it (the least blocking that keeps recall)."""
    if min_recall is not None:
        ok = [p for p in points if p.recall is not None and p.recall >= min_recall]
        return max(ok, key=lambda p: p.threshold) if ok else None
    scored = [p for p in points if p.f1 is not None]
    return max(scored, key=lambda p: (p.f1, p.threshold)) if scored else None
