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
    """Flat per-epoch numbers: F1, accuracy (label-wise) and exact match (all six labels right: subset accuracy)
    at the default threshold (0.5) and at tuned ones, mAP, per-class AP, AUC and accuracy (tuned thresholds).

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
        out[f"accuracy{suffix}"] = float((pred == y_true).mean())
        out[f"exact_match{suffix}"] = float((pred == y_true).all(axis=1).mean())
    right = (probs >= tuned).astype(int) == y_true
    out["mAP"] = _average_score(average_precision_score, y_true, probs, "macro")
    for c, name in enumerate(CLASSES):
        out[f"ap_{name}"] = _safe_score(average_precision_score, y_true[:, c], probs[:, c])
        out[f"auc_{name}"] = _safe_score(roc_auc_score, y_true[:, c], probs[:, c])
        out[f"acc_{name}"] = float(right[:, c].mean())
    return out


def table_text(table: pd.DataFrame) -> str:
    """A metrics table as aligned text, 4 decimals, '-' where a metric does not apply."""
    return table.to_string(float_format=lambda v: f"{v:.4f}", na_rep="-")
