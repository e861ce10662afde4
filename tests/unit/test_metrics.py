"""Eval metrics against scikit-learn (the independent reference) on fixed and random predictions."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qwenguard.core.eval.metrics import (
    average_precision,
    best_threshold,
    binary_metrics,
    confusion_matrix,
    roc_auc,
    threshold_sweep,
)
from sklearn import metrics as skm

NAN = float("nan")
# sklearn warns on single-class inputs, which are exactly the degenerate cases under test.
pytestmark = pytest.mark.filterwarnings("ignore:A single label:UserWarning")


def _same(ours, ref):
    """None (undefined) matches sklearn's nan (zero_division=np.nan)."""
    if ours is None:
        return ref is None or math.isnan(ref)
    return ref is not None and not math.isnan(ref) and ours == pytest.approx(ref, abs=1e-12)


def _check_against_sklearn(y, p):
    m = binary_metrics(y, p)
    assert _same(m.recall, skm.recall_score(y, p, zero_division=np.nan))
    assert _same(m.precision, skm.precision_score(y, p, zero_division=np.nan))
    assert _same(m.f1, skm.f1_score(y, p, zero_division=np.nan))
    assert _same(m.accuracy, skm.accuracy_score(y, p))
    assert m.mcc == pytest.approx(skm.matthews_corrcoef(y, p), abs=1e-12)
    tn, fp, fn, tp = skm.confusion_matrix(y, p, labels=[0, 1]).ravel()
    assert (m.tn, m.fp, m.fn, m.tp) == (tn, fp, fn, tp)
    assert m.n == len(y)


FIXED = [
    ([1, 1, 0, 0, 1, 0, 1, 0], [1, 0, 0, 1, 1, 0, 1, 0]),  # ordinary
    ([1, 1, 1, 1], [1, 0, 1, 1]),  # one class only (all harmful)
    ([0, 0, 0, 0], [0, 1, 0, 0]),  # one class only (all harmless)
    ([0, 0, 0], [0, 0, 0]),  # all harmless, nothing predicted
    ([1, 0, 1, 0], [0, 0, 0, 0]),  # no positives predicted
    ([1, 0, 1, 0], [1, 1, 1, 1]),  # everything blocked
    ([1, 1], [1, 1]),  # perfect, single class
    ([1, 0], [0, 1]),  # all wrong
]


@pytest.mark.parametrize("y,p", FIXED)
def test_binary_metrics_match_sklearn_on_fixed_predictions(y, p):
    _check_against_sklearn(y, p)


def test_degenerate_cases_are_undefined_not_zero():
    none_predicted = binary_metrics([1, 0, 1], [0, 0, 0])
    assert none_predicted.precision is None and none_predicted.recall == 0.0 and none_predicted.f1 == 0.0
    no_positives = binary_metrics([0, 0], [0, 1])
    assert no_positives.recall is None and no_positives.fnr is None and no_positives.fpr == 0.5
    all_negative = binary_metrics([0, 0], [0, 0])
    assert all_negative.f1 is None and all_negative.accuracy == 1.0 and all_negative.mcc == 0.0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_binary_metrics_match_sklearn_on_random_predictions(pairs):
    y = [int(a) for a, _ in pairs]
    p = [int(b) for _, b in pairs]
    _check_against_sklearn(y, p)


def test_mcc_does_not_overflow_on_large_counts():
    n = 3_000_000
    y = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    p = np.r_[np.ones(n - 1000, bool), np.zeros(1000, bool), np.zeros(n - 5, bool), np.ones(5, bool)]
    assert binary_metrics(y, p).mcc == pytest.approx(skm.matthews_corrcoef(y, p), rel=1e-9)


def test_confusion_matrix_three_classes_matches_sklearn():
    labels = ["safe", "controversial", "unsafe"]
    y = ["safe", "unsafe", "controversial", "unsafe", "safe", "safe"]
    p = ["safe", "controversial", "controversial", "unsafe", "unsafe", "safe"]
    assert confusion_matrix(y, p, labels) == skm.confusion_matrix(y, p, labels=labels).tolist()


def test_confusion_matrix_rejects_unknown_values():
    with pytest.raises(ValueError, match="maybe"):
        confusion_matrix(["safe"], ["maybe"], ["safe", "unsafe"])


def test_binary_metrics_rejects_non_binary_input():
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics([0, 2], [0, 1])
    with pytest.raises(ValueError, match="length"):
        binary_metrics([0, 1], [0])


SCORED = [
    ([1, 0, 1, 0, 1, 0], [0.9, 0.1, 0.8, 0.4, 0.35, 0.7]),
    ([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]),  # all tied
    ([1, 0, 1, 0, 0, 1, 1], [0.2, 0.2, 0.9, 0.9, 0.1, 0.6, 0.2]),  # partial ties
    ([0, 1], [1.0, 0.0]),  # perfectly wrong
]


@pytest.mark.parametrize("y,s", SCORED)
def test_roc_auc_and_average_precision_match_sklearn(y, s):
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=2, max_size=80))
def test_roc_auc_and_ap_match_sklearn_on_random_scores(rows):
    y = [int(a) for a, _ in rows]
    s = [b / 20 for _, b in rows]  # coarse scores: many ties
    if len(set(y)) < 2:
        assert roc_auc(y, s) is None
        return
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-9)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-9)


def test_scores_with_one_class_are_undefined():
    assert roc_auc([1, 1, 1], [0.2, 0.5, 0.9]) is None
    assert roc_auc([0, 0], [0.2, 0.5]) is None
    assert average_precision([0, 0], [0.2, 0.5]) is None
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0, 1], [0.2, NAN])


def test_threshold_sweep_matches_sklearn_at_every_threshold():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200)
    s = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1).round(3)
    points = threshold_sweep(y, s)
    assert [p.threshold for p in points][:3] == [0.0, 0.01, 0.02] and points[-1].threshold == 1.0
    for pt in points:
        pred = (s >= pt.threshold).astype(int)
        assert _same(pt.recall, skm.recall_score(y, pred, zero_division=np.nan))
        assert _same(pt.precision, skm.precision_score(y, pred, zero_division=np.nan))
        assert _same(pt.f1, skm.f1_score(y, pred, zero_division=np.nan))
    # The sweep's points lie on sklearn's precision-recall curve.
    prec, rec, thr = skm.precision_recall_curve(y, s)
    curve = {round(t, 9): (p, r) for p, r, t in zip(prec, rec, thr)}
    for pt in points:
        at = [t for t in curve if t >= pt.threshold - 1e-12]
        if pt.precision is not None and at:
            p_ref, r_ref = curve[min(at)]
            assert (pt.precision, pt.recall) == (pytest.approx(p_ref), pytest.approx(r_ref))


def test_best_threshold_by_f1_and_by_recall_floor():
    y = [1, 1, 1, 0, 0, 0]
    s = [0.9, 0.8, 0.3, 0.6, 0.2, 0.1]
    pts = threshold_sweep(y, s, thresholds=[0.1, 0.3, 0.5, 0.7, 0.85])
    best = best_threshold(pts)
    assert best.f1 == max(p.f1 for p in pts)
    floor = best_threshold(pts, min_recall=1.0)
    assert floor.threshold == 0.3 and floor.recall == 1.0
    assert best_threshold(threshold_sweep([0, 0], [0.1, 0.2], thresholds=[0.5])) is None  # F1 undefined
