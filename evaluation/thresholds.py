"""Decision thresholds, in one place: the default, the tuning grid and rule, and threshold files.

A model's probabilities become labels by one threshold per class. They are tuned on validation
(per class, for that class's F1) and stored as ``{class: threshold}`` JSON in the run dir
(``thresholds.json``; ``thresholds_tta.json`` for flip-averaged predictions), in checkpoints and
in exported files. Without any, every class uses :data:`DEFAULT_THRESHOLD`.
"""
from __future__ import annotations

import json
import logging
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from data.labels import CLASS_INDEX, CLASSES
from utils.files import atomic_write_text, read_json

if TYPE_CHECKING:
    from evaluation.inference import Backend
    from training.rundir import RunDir

DEFAULT_THRESHOLD = 0.5
HEALTHY = CLASS_INDEX["healthy"]
# How probabilities and thresholds become labels (measured on out-of-fold predictions in experiments/results.md):
# "thresholds" each class on its own; "at_least_one" also gives a leaf with no class over its threshold its
# most probable class (every leaf has a label: healthy is one); "kaggle" adds "healthy never with a disease".
DECISION_RULES = ("thresholds", "at_least_one", "kaggle")


def _threshold_grid() -> np.ndarray:
    """0.01 ... 0.99, then steps of 0.5 in logit space out to 1e-6 from 0 and 1.

    A cosine head's probability, sigmoid(SCALE * cos), crowds against 0 and 1 (with ArcFace's 30,
    most validation scores of a trained model are above 0.99 or below 0.01), so its best thresholds
    lie beyond the linear grid.
    """
    linear = np.round(np.linspace(0.01, 0.99, 99), 2)
    tail = 1.0 / (1.0 + np.exp(-np.arange(5.0, 14.0, 0.5)))  # 0.9933 ... 0.9999986
    return np.concatenate([1.0 - tail[::-1], linear, tail])


THRESHOLD_GRID = _threshold_grid()


def as_thresholds(thresholds: float | Sequence[float] | np.ndarray | None, num_classes: int) -> np.ndarray:
    """One float64 threshold per class: a scalar is broadcast, None is the default."""
    if thresholds is None:
        thresholds = DEFAULT_THRESHOLD
    return np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (num_classes,)).copy()


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Per-class thresholds maximising that class's F1 on (validation) data.

    Where several grid points tie, the middle one is taken, which is the least sensitive to the
    exact scores; a class with no positives keeps the default.
    """
    y_true = np.asarray(y_true) > 0.5
    probs = np.asarray(probs)
    grid = np.asarray(grid, dtype=np.float64)
    best = np.full(y_true.shape[1], DEFAULT_THRESHOLD)
    for c in range(y_true.shape[1]):
        if not y_true[:, c].any():
            continue
        pred = probs[None, :, c] >= grid[:, None]  # (G, N)
        tp = (pred & y_true[None, :, c]).sum(1)
        fp = (pred & ~y_true[None, :, c]).sum(1)
        fn = (~pred & y_true[None, :, c]).sum(1)
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        ties = np.flatnonzero(f1 == f1.max())
        best[c] = grid[ties[len(ties) // 2]]
    return best


def decide(probs: np.ndarray, thresholds: np.ndarray, rule: str = "thresholds") -> np.ndarray:
    """(N, C) booleans: the labels of each row under ``rule`` (see :data:`DECISION_RULES`).

    "kaggle": where healthy and a disease both clear their thresholds, whichever clears it by the larger
    margin (probability minus threshold) wins: healthy alone, or the diseases without healthy.
    """
    if rule not in DECISION_RULES:
        raise ValueError(f"unknown decision rule {rule!r} (known: {', '.join(DECISION_RULES)})")
    probs = np.asarray(probs, dtype=np.float64)
    margins = probs - np.asarray(thresholds, dtype=np.float64)
    chosen = margins >= 0
    if rule == "thresholds":
        return chosen
    empty = ~chosen.any(1)
    chosen[empty, probs[empty].argmax(1)] = True
    if rule == "kaggle":
        diseases = np.delete(chosen, HEALTHY, 1)
        both = chosen[:, HEALTHY] & diseases.any(1)
        best_disease = np.where(diseases, np.delete(margins, HEALTHY, 1), -np.inf).max(1)
        healthy_wins = both & (margins[:, HEALTHY] > best_disease)
        chosen[both & ~healthy_wins, HEALTHY] = False
        chosen[healthy_wins] = np.eye(len(CLASSES), dtype=bool)[HEALTHY]
    return chosen


def samples_f1(y_true: np.ndarray, pred: np.ndarray) -> float:
    """Mean over rows of each row's F1 (scikit-learn's samples-F1 with zero_division=0), without its overhead."""
    y_true, pred = np.asarray(y_true, dtype=bool), np.asarray(pred, dtype=bool)
    both = (y_true & pred).sum(1)
    return float(np.mean(2 * both / np.maximum(y_true.sum(1) + pred.sum(1), 1)))


def tune_thresholds_for_samples(y_true: np.ndarray, probs: np.ndarray, rule: str = "at_least_one",
                                rounds: int = 2, grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Thresholds maximising samples-F1 of ``rule``'s decisions, by coordinate ascent from the per-class ones.

    Samples-F1 scores each leaf's label set as a whole, so one class's threshold moves the others' best:
    each round sweeps one class at a time over ``grid`` with the rest held.
    """
    y_true = np.asarray(y_true) > 0.5
    thresholds = tune_thresholds(y_true, probs, grid)
    for _ in range(rounds):
        for c in range(y_true.shape[1]):
            scores = []
            for value in grid:
                thresholds[c] = value
                scores.append(samples_f1(y_true, decide(probs, thresholds, rule)))
            ties = np.flatnonzero(np.asarray(scores) == max(scores))
            thresholds[c] = grid[ties[len(ties) // 2]]
    return thresholds


def check_thresholds(values: object, source: str | Path) -> np.ndarray:
    """``values`` as float64 thresholds in CLASSES order, else a ValueError naming ``source``: the one check of
    thresholds read from any file (thresholds.json, a checkpoint, an exported file's metadata, an ensemble file).

    ``values``: a map of every class to its threshold, or one threshold per class in CLASSES order. Each must be a
    finite number within [0, 1]: -1 would give every leaf every class, 5 or NaN none, silently.
    """
    if isinstance(values, Mapping):
        if set(values) != set(CLASSES):
            raise ValueError(f"{source}: thresholds must map exactly the classes {list(CLASSES)}")
        values = [values[name] for name in CLASSES]
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != len(CLASSES):
        raise ValueError(f"{source}: thresholds must be one number per class ({len(CLASSES)}), not {values!r:.60}")
    for name, value in zip(CLASSES, values):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise ValueError(f"{source}: the threshold of {name} is {value!r:.40}, not a number")
        if not 0 <= value <= 1:  # False for NaN too
            raise ValueError(f"{source}: the threshold of {name} is {value}, not within [0, 1]")
    return np.array(values, dtype=np.float64)


def read_thresholds(path: Path) -> np.ndarray:
    """``{class: threshold}`` with every class, each in [0, 1], in CLASSES order."""
    values = read_json(path, "thresholds JSON")
    if not isinstance(values, dict):
        raise ValueError(f"{path}: thresholds must map exactly the classes {list(CLASSES)}")
    return check_thresholds(values, path)


def write_thresholds(thresholds: Sequence[float], path: Path) -> None:
    atomic_write_text(json.dumps(dict(zip(CLASSES, map(float, thresholds))), indent=2) + "\n", path)


def resolve_thresholds(file: Path | None, run: RunDir, predictor: Backend, logger: logging.Logger,
                       tta: bool = False) -> np.ndarray:
    """``file``, else the run's (``thresholds_tta.json`` with ``tta``, else ``thresholds.json``), else the
    model file's (checkpoint or .onnx), else the default (warned). A model file whose thresholds were
    tuned for it (an INT8 export's, ``ModelInfo.thresholds_from``) comes before the run's, without TTA.

    Averaging over flips changes the probabilities, so TTA predictions take the thresholds tuned on
    validation with TTA (main.py writes them at the end of training); without them the plain ones are used, warned.
    """
    if file is None and tta:
        if run.thresholds(tta=True).is_file():
            file = run.thresholds(tta=True)
        else:
            logger.warning(f"no {run.thresholds(tta=True).name} in {run.path}: TTA with thresholds tuned without it")
    if file is None and not tta and predictor.info.thresholds_from:
        logger.info(f"thresholds from the model file {predictor.path} ({predictor.info.thresholds_from})")
        return np.asarray(predictor.thresholds, dtype=np.float64)
    if file is None and run.thresholds().is_file():
        file = run.thresholds()
    if file is not None:
        logger.info(f"thresholds from {file}")
        return read_thresholds(file)
    if predictor.thresholds is not None:
        logger.info(f"thresholds from the model file {predictor.path}")
        return np.asarray(predictor.thresholds, dtype=np.float64)
    logger.warning(f"no {run.thresholds().name} in {run.path} and none in the model file: "
                   f"using {DEFAULT_THRESHOLD} for every class")
    return np.full(len(CLASSES), DEFAULT_THRESHOLD)
