"""Multi-label metrics shared by training (every epoch), test.py and the benchmarks.

Everything is computed by scikit-learn on (N, C) arrays of 0/1 truths and sigmoid probabilities;
this module only decides which numbers are reported (thresholds are chosen in ``thresholds``).
scikit-learn is imported by the functions that score (about 0.7 s): predicting unlabelled photos
(``test.py --images``, the web page) never imports it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from data.labels import CLASSES
from evaluation.thresholds import DEFAULT_THRESHOLD, as_thresholds, tune_thresholds

SUMMARY_ROWS = ("macro", "micro", "samples")


def _safe_score(score_fn, y: np.ndarray, p: np.ndarray) -> float:
    """AP / AUC of one class, or nan where the class has only one kind of truth."""
    if y.min() == y.max():
        return float("nan")
    return float(score_fn(y, p))


def multilabel_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    thresholds: float | Sequence[float] | np.ndarray | None = None,
    classes: Sequence[str] = CLASSES,
) -> pd.DataFrame:
    """The report table: one row per class, then macro, micro, samples and exact_match.

    Columns: threshold, precision, recall, f1, ap, auc, accuracy, support.
    """
    from sklearn.metrics import accuracy_score, average_precision_score, precision_recall_fscore_support, roc_auc_score

    y_true = (np.asarray(y_true) > 0.5).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    thr = as_thresholds(thresholds, y_true.shape[1])
    pred = (probs >= thr).astype(int)
    p, r, f, s = precision_recall_fscore_support(y_true, pred, average=None, zero_division=0)
    ap = [_safe_score(average_precision_score, y_true[:, c], probs[:, c]) for c in range(len(classes))]
    auc = [_safe_score(roc_auc_score, y_true[:, c], probs[:, c]) for c in range(len(classes))]
    acc = (pred == y_true).mean(0)
    rows = {
        name: dict(threshold=thr[c], precision=p[c], recall=r[c], f1=f[c], ap=ap[c], auc=auc[c],
                   accuracy=acc[c], support=int(s[c]))
        for c, name in enumerate(classes)
    }
    for average in SUMMARY_ROWS:
        ap_avg = _average_score(average_precision_score, y_true, probs, average)
        auc_avg = _average_score(roc_auc_score, y_true, probs, average)
        pa, ra, fa, _ = precision_recall_fscore_support(y_true, pred, average=average, zero_division=0)
        rows[average] = dict(threshold=np.nan, precision=pa, recall=ra, f1=fa, ap=ap_avg, auc=auc_avg,
                             accuracy=float(acc.mean()) if average == "macro" else np.nan,
                             support=int(y_true.sum()))
    rows["exact_match"] = dict(threshold=np.nan, precision=np.nan, recall=np.nan, f1=np.nan, ap=np.nan,
                               auc=np.nan, accuracy=accuracy_score(y_true, pred), support=len(y_true))
    return pd.DataFrame.from_dict(rows, orient="index")


def _average_score(score_fn, y_true: np.ndarray, probs: np.ndarray, average: str) -> float:
    """Averaged AP/AUC over the classes (or samples) where it is defined."""
    if average == "macro":
        keep = y_true.min(0) != y_true.max(0)
        if not keep.any():
            return float("nan")
        return float(score_fn(y_true[:, keep], probs[:, keep], average="macro"))
    if average == "samples":
        keep = y_true.min(1) != y_true.max(1)
        if not keep.any():
            return float("nan")
        return float(score_fn(y_true[keep], probs[keep], average="samples"))
    if y_true.min() == y_true.max():
        return float("nan")
    return float(score_fn(y_true, probs, average=average))


def summarize(
    y_true: np.ndarray, probs: np.ndarray, thresholds: Sequence[float] | np.ndarray | None = None
) -> dict[str, float]:
    """Flat per-epoch numbers: F1 at the default threshold (0.5) and at tuned ones, mAP, per-class AP and AUC.

    ``thresholds=None`` tunes them on these very arrays (what training does on validation).
    """
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    y_true = (np.asarray(y_true) > 0.5).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    tuned = tune_thresholds(y_true, probs) if thresholds is None else as_thresholds(thresholds, y_true.shape[1])
    out: dict[str, float] = {}
    for suffix, thr in (("", DEFAULT_THRESHOLD), ("_tuned", tuned)):
        pred = (probs >= thr).astype(int)
        for average in SUMMARY_ROWS:
            out[f"{average}_f1{suffix}"] = float(f1_score(y_true, pred, average=average, zero_division=0))
    out["mAP"] = _average_score(average_precision_score, y_true, probs, "macro")
    for c, name in enumerate(CLASSES):
        out[f"ap_{name}"] = _safe_score(average_precision_score, y_true[:, c], probs[:, c])
        out[f"auc_{name}"] = _safe_score(roc_auc_score, y_true[:, c], probs[:, c])
    return out


def mean_confidence_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the Student-t confidence interval of the mean of ``values``.

    What several seeds of one setting allow: ``mean +- half-width`` covers the true mean score of
    the setting with probability ``confidence`` (for roughly normal scores). One value has no
    spread to measure: its half-width is nan.
    """
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("no values to average")
    if len(values) == 1:
        return float(values[0]), float("nan")
    sem = values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * sem)


def table_text(table: pd.DataFrame) -> str:
    """A metrics table as aligned text, 4 decimals, '-' where a metric does not apply."""
    return table.to_string(float_format=lambda v: f"{v:.4f}", na_rep="-")


def paired_bootstrap(true: np.ndarray, a: np.ndarray, b: np.ndarray, resamples: int = 2000,
                     seed: int = 0) -> pd.DataFrame:
    """Macro-, micro- and samples-F1 of decisions A and B on the same leaves, each with its 95% interval
    (``a_low``/``a_high``, ``b_low``/``b_high``), and A - B with its own (``low``/``high``).

    The leaves are resampled with replacement, the same resample for A and B; an interval of A - B that
    holds 0 is inside the noise (``outside_noise`` False).
    """
    from sklearn.metrics import f1_score

    def f1(rows_: np.ndarray | slice, pred: np.ndarray, average: str) -> float:
        return float(f1_score(true[rows_], pred[rows_], average=average, zero_division=0))

    draws = np.random.default_rng(seed).integers(0, len(true), (resamples, len(true)))
    rows = []
    for average in SUMMARY_ROWS:
        scores_a = np.array([f1(i, a, average) for i in draws])
        scores_b = np.array([f1(i, b, average) for i in draws])
        (a_low, a_high), (b_low, b_high) = np.percentile(scores_a, [2.5, 97.5]), np.percentile(scores_b, [2.5, 97.5])
        low, high = np.percentile(scores_a - scores_b, [2.5, 97.5])
        all_a, all_b = f1(slice(None), a, average), f1(slice(None), b, average)
        rows.append({"f1": average, "a": all_a, "a_low": a_low, "a_high": a_high, "b": all_b, "b_low": b_low,
                     "b_high": b_high, "a_minus_b": all_a - all_b, "low": low, "high": high,
                     "outside_noise": bool(low > 0 or high < 0)})
    return pd.DataFrame(rows)
