"""Saved probabilities: out-of-fold files (scripts/cv.py's ``oof.csv``) and test.py's ``predictions.csv``.

One home for reading them checked, scoring them per fold, and averaging several of them leaf by leaf:
what cv.py pools, what decision_rules.py and label_issues.py read, and what blend.py combines.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from data.labels import CLASSES, labels_to_vector
from evaluation.ensemble_file import average_probs
from evaluation.metrics import summarize

# the scores of a per-fold table (at thresholds tuned before, so the F1s are the "tuned" ones)
SUMMARY_KEYS = ("macro_f1_tuned", "micro_f1_tuned", "samples_f1_tuned", "mAP")


def read_probabilities(path: Path, folds: bool = False) -> pd.DataFrame:
    """A CSV with an ``image`` column, the six probability columns in [0, 1] and known ``true`` labels
    (and a ``fold`` column when ``folds``), sorted by image; any flaw is a one-line error naming the file."""
    kind = "an oof.csv of scripts/cv.py" if folds else "a predictions.csv of test.py"
    frame = _read_labelled_csv(path, (*(["fold"] if folds else []), *CLASSES), kind)
    try:
        probs = frame[list(CLASSES)].to_numpy(dtype=np.float64)
    except ValueError:
        raise ValueError(f"{path}: the probability columns must be numbers") from None
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        raise ValueError(f"{path}: probabilities must lie in [0, 1]")
    return frame


def read_decisions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Image names, true and predicted multi-hot labels of a test.py ``predictions.csv``, sorted by image."""
    frame = _read_labelled_csv(path, ("predicted",), "a predictions.csv of test.py")
    predicted = []
    for line, labels in enumerate(frame["predicted"], start=2):
        try:
            predicted.append(labels_to_vector(labels) if str(labels).strip() else np.zeros(len(CLASSES), np.float32))
        except ValueError as err:
            raise ValueError(f"{path}: line {line}: {err}") from None
    return frame["image"].tolist(), targets_of(frame), np.stack(predicted).astype(int)


def _read_labelled_csv(path: Path, columns: Sequence[str], kind: str) -> pd.DataFrame:
    """A CSV of one row per image with known ``true`` labels and ``columns``, sorted by image."""
    try:
        frame = pd.read_csv(path, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable CSV ({err})") from None
    missing = [c for c in ("image", *columns, "true") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} ({kind}?)")
    for line, labels in enumerate(frame["true"], start=2):
        try:
            labels_to_vector(labels)
        except ValueError as err:
            raise ValueError(f"{path}: line {line}: {err}") from None
    if frame["image"].duplicated().any():
        raise ValueError(f"{path}: image {frame['image'][frame['image'].duplicated()].iloc[0]} appears twice")
    return frame.sort_values("image", ignore_index=True)


def probabilities_of(frame: pd.DataFrame) -> np.ndarray:
    """(N, C) probabilities in class order."""
    return frame[list(CLASSES)].to_numpy(dtype=np.float64)


def targets_of(frame: pd.DataFrame) -> np.ndarray:
    """(N, C) multi-hot truths of the ``true`` column."""
    return np.stack([labels_to_vector(labels) for labels in frame["true"]]).astype(int)


def pool_folds(frames: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Each fold's held-out predictions as one out-of-fold frame (image, fold, the six probabilities,
    true), sorted by image; a leaf predicted by two folds is an error."""
    parts = [frame[["image", *CLASSES, "true"]].assign(fold=fold) for fold, frame in frames.items()]
    oof = pd.concat(parts, ignore_index=True).sort_values("image", ignore_index=True)
    if oof["image"].duplicated().any():
        raise ValueError(f"images predicted by more than one fold: {oof['image'][oof['image'].duplicated()].head(3)}")
    return oof[["image", "fold", *CLASSES, "true"]]


def fold_of_each(frames: Sequence[pd.DataFrame], names: Sequence[str], folds: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """The frames keyed by the fold their leaves hold out (``folds``: a tree's folds.csv), checked: each
    frame is exactly one whole fold, and together they are every fold of the pool."""
    fold_of = dict(zip(folds["image"], folds["fold"]))
    sizes = folds.loc[folds["fold"] >= 0, "fold"].value_counts()
    keyed: dict[int, pd.DataFrame] = {}
    for frame, name in zip(frames, names):
        found = {fold_of.get(image) for image in frame["image"]}
        if len(found) != 1 or None in found or min(found) < 0:
            raise ValueError(f"{name}: its leaves are not the held-out leaves of one fold of folds.csv "
                             f"(folds found: {sorted(found, key=str)})")
        fold = found.pop()
        if fold in keyed:
            raise ValueError(f"{name}: fold {fold} is given twice")
        if len(frame) != sizes[fold]:
            raise ValueError(f"{name}: {len(frame)} leaves, but fold {fold} of folds.csv holds {sizes[fold]}")
        keyed[fold] = frame
    missing = sorted(set(sizes.index) - set(keyed))
    if missing:
        raise ValueError(f"no predictions for fold(s) {missing} of folds.csv")
    return keyed


def fold_metrics(oof: pd.DataFrame, thresholds: np.ndarray) -> pd.DataFrame:
    """Per fold and pooled: F1s at ``thresholds`` (the pooled out-of-fold ones), and mAP."""
    rows = []
    for name, part in [*((f"fold {f}", oof[oof["fold"] == f]) for f in sorted(oof["fold"].unique())), ("pooled", oof)]:
        scores = summarize(targets_of(part), probabilities_of(part), thresholds)
        rows.append({"part": name, "images": len(part), **{k: round(scores[k], 4) for k in SUMMARY_KEYS}})
    return pd.DataFrame(rows)


def mean_probabilities(frames: Sequence[pd.DataFrame], weights: Sequence[float] | None = None) -> pd.DataFrame:
    """Several models' frames of the same leaves (sorted by image) as one: each leaf's probabilities
    averaged with ``weights`` (equal when None); the leaves, their labels and folds must agree."""
    first = frames[0]
    for frame in frames[1:]:
        same = frame["image"].tolist() == first["image"].tolist() and frame["true"].tolist() == first["true"].tolist()
        if "fold" in first:
            same = same and "fold" in frame and (frame["fold"].to_numpy() == first["fold"].to_numpy()).all()
        if not same:
            raise ValueError("the predictions are not of the same leaves, labels and folds")
    mean = average_probs([probabilities_of(f) for f in frames], [1.0] * len(frames) if weights is None else weights)
    return first.assign(**{c: mean[:, i] for i, c in enumerate(CLASSES)})
