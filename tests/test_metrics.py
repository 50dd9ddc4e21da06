"""evaluation/metrics.py against scikit-learn on fixed arrays, including degenerate classes."""
import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from config import get_default_config
from data.labels import CLASSES
from evaluation import metrics, thresholds


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    y = (rng.random((80, 6)) < 0.3).astype(int)
    y[:, 3] = 0  # a class with no positives
    p = np.clip(y * 0.35 + rng.random((80, 6)) * 0.7, 0, 1)
    return y, p


def test_per_class_rows_equal_sklearn(arrays):
    y, p = arrays
    thr = np.array([0.3, 0.4, 0.5, 0.6, 0.45, 0.55])
    table = metrics.multilabel_metrics(y, p, thr)
    pred = (p >= thr).astype(int)
    for c, name in enumerate(CLASSES):
        row = table.loc[name]
        assert row.threshold == thr[c]
        assert row.precision == pytest.approx(precision_score(y[:, c], pred[:, c], zero_division=0))
        assert row.recall == pytest.approx(recall_score(y[:, c], pred[:, c], zero_division=0))
        assert row.f1 == pytest.approx(f1_score(y[:, c], pred[:, c], zero_division=0))
        assert row.accuracy == pytest.approx((pred[:, c] == y[:, c]).mean())
        assert row.support == y[:, c].sum()
        if y[:, c].any():
            assert row.ap == pytest.approx(average_precision_score(y[:, c], p[:, c]))
            assert row.auc == pytest.approx(roc_auc_score(y[:, c], p[:, c]))
        else:
            assert np.isnan(row.ap) and np.isnan(row.auc)


def test_averages_equal_sklearn(arrays):
    y, p = arrays
    table = metrics.multilabel_metrics(y, p, 0.5)
    pred = (p >= 0.5).astype(int)
    for average in ("macro", "micro", "samples"):
        assert table.loc[average].f1 == pytest.approx(f1_score(y, pred, average=average, zero_division=0))
        assert table.loc[average].precision == pytest.approx(
            precision_score(y, pred, average=average, zero_division=0))
    defined = y.any(0)
    assert table.loc["macro"].ap == pytest.approx(average_precision_score(y[:, defined], p[:, defined]))
    assert table.loc["micro"].auc == pytest.approx(roc_auc_score(y, p, average="micro"))
    assert table.loc["exact_match"].accuracy == pytest.approx((pred == y).all(1).mean())


def test_all_predictions_negative():
    y = np.eye(6, dtype=int)[np.arange(12) % 6]
    p = np.full((12, 6), 0.1)
    table = metrics.multilabel_metrics(y, p, 0.5)
    assert (table.loc[list(CLASSES), "f1"] == 0).all()
    assert table.loc["macro"].f1 == 0 and table.loc["exact_match"].accuracy == 0
    summary = metrics.summarize(y, p, thresholds=[0.5] * 6)
    assert summary["macro_f1"] == 0 and summary["micro_f1_tuned"] == 0


def test_tuned_thresholds_are_f1_optimal(arrays):
    y, p = arrays
    thr = thresholds.tune_thresholds(y, p)
    for c in range(6):
        if not y[:, c].any():
            assert thr[c] == 0.5
            continue
        scores = [f1_score(y[:, c], p[:, c] >= t, zero_division=0) for t in thresholds.THRESHOLD_GRID]
        assert f1_score(y[:, c], p[:, c] >= thr[c]) == pytest.approx(max(scores))


def test_saturated_cosine_scores_get_thresholds_beyond_0_99():
    """ArcFace's sigmoid(30 cos) puts positives at 0.9999 and negatives at 0.995: 0.99 cannot part them."""
    y = np.zeros((40, 6), dtype=int)
    y[:20, 0] = 1
    p = np.full((40, 6), 0.5)
    p[:, 0] = np.where(y[:, 0] == 1, 0.9999, 0.995)
    thr = thresholds.tune_thresholds(y, p)
    assert 0.995 < thr[0] <= 0.9999
    assert f1_score(y[:, 0], p[:, 0] >= thr[0]) == 1.0
    assert f1_score(y[:, 0], p[:, 0] >= 0.99) == pytest.approx(2 / 3)  # the old grid's best: everything positive
    low = thresholds.tune_thresholds(1 - y, 1 - p)[0]  # the same near 0: positives at 0.005, negatives at 0.0001
    assert 0.0001 < low <= 0.005 and f1_score(1 - y[:, 0], 1 - p[:, 0] >= low) == 1.0


def test_summary_keys_and_tuning_helps(arrays):
    y, p = arrays
    s = metrics.summarize(y, p)
    assert s["macro_f1_tuned"] >= s["macro_f1"]
    assert s["macro_f1"] == pytest.approx(f1_score(y, p >= 0.5, average="macro", zero_division=0))
    assert np.isnan(s["ap_powdery_mildew"]) and not np.isnan(s["ap_scab"])
    assert {f"auc_{c}" for c in CLASSES} <= s.keys()


def test_every_averaged_cell_equals_sklearn(arrays):
    """Each summary row, column by column; AP/AUC averages over the classes (samples) where defined."""
    y, p = arrays
    thr = np.array([0.3, 0.4, 0.5, 0.6, 0.45, 0.55])
    table = metrics.multilabel_metrics(y, p, thr)
    pred = (p >= thr).astype(int)
    classes, samples = y.min(0) != y.max(0), y.min(1) != y.max(1)
    defined = {"macro": (y[:, classes], p[:, classes]), "micro": (y, p), "samples": (y[samples], p[samples])}
    for average, (y_def, p_def) in defined.items():
        row = table.loc[average]
        assert np.isnan(row.threshold) and row.support == y.sum()
        assert row.precision == pytest.approx(precision_score(y, pred, average=average, zero_division=0))
        assert row.recall == pytest.approx(recall_score(y, pred, average=average, zero_division=0))
        assert row.f1 == pytest.approx(f1_score(y, pred, average=average, zero_division=0))
        assert row.ap == pytest.approx(average_precision_score(y_def, p_def, average=average))
        assert row.auc == pytest.approx(roc_auc_score(y_def, p_def, average=average))
    assert table.loc["macro"].accuracy == pytest.approx((pred == y).mean())
    assert np.isnan(table.loc["micro"].accuracy) and np.isnan(table.loc["samples"].accuracy)
    exact = table.loc["exact_match"]
    assert exact.accuracy == pytest.approx(accuracy_score(y, pred)) and exact.support == len(y)
    assert exact[["threshold", "precision", "recall", "f1", "ap", "auc"]].isna().all()


def test_tuned_thresholds_match_a_brute_force_search_with_middle_ties(arrays):
    y, p = arrays
    grid = np.round(np.linspace(0.05, 0.95, 19), 2)
    thr = thresholds.tune_thresholds(y, p, grid)
    for c in np.flatnonzero(y.any(0)):
        scores = np.array([f1_score(y[:, c], p[:, c] >= t, zero_division=0) for t in grid])
        best = np.flatnonzero(np.isclose(scores, scores.max()))
        assert thr[c] == grid[best[len(best) // 2]]


def test_accuracy_and_exact_match_are_scikit_learns():
    """Label-wise accuracy (1 - Hamming loss), exact match (subset accuracy) and per-class accuracy, at 0.5 and
    at the given thresholds, equal scikit-learn's on the same decisions; any of them can be TRAIN.BEST_METRIC."""
    from sklearn.metrics import accuracy_score, hamming_loss

    from training.run import check_best_metric

    rng = np.random.default_rng(4)
    targets = (rng.random((40, len(CLASSES))) < 0.3).astype(int)
    probs = np.clip(targets * 0.6 + rng.random(targets.shape) * 0.5, 0, 1)
    thresholds = np.linspace(0.3, 0.7, len(CLASSES))
    out = metrics.summarize(targets, probs, thresholds)
    for suffix, cut in (("", 0.5), ("_tuned", thresholds)):
        predicted = (probs >= cut).astype(int)
        assert out[f"exact_match{suffix}"] == pytest.approx(accuracy_score(targets, predicted))
        assert out[f"accuracy{suffix}"] == pytest.approx(1 - hamming_loss(targets, predicted))
    tuned = (probs >= thresholds).astype(int)
    for c, name in enumerate(CLASSES):
        assert out[f"acc_{name}"] == pytest.approx(accuracy_score(targets[:, c], tuned[:, c]))
    config = get_default_config()
    config.merge_from_list(["TRAIN.BEST_METRIC", "exact_match_tuned"])
    check_best_metric(config)
