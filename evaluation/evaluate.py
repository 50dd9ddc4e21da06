"""Scoring a model: a labelled split of the prepared tree, or loose photos, through any backend.

``main.py --eval``, the end-of-training report, ``test.py``, the web page and the benchmarks all go
through here, so a model file is scored the same way everywhere.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from data.dataset import ImageFiles, MultiLabelImageFolder, TreeSplit, collect_images
from data.labels import CLASSES
from data.loader import build_inference_loader
from evaluation.ensemble_file import EnsemblePredictor
from evaluation.inference import Backend, Predictor, sigmoid
from evaluation.metrics import multilabel_metrics, summarize
from evaluation.reports import predictions_frame, write_split_results
from evaluation.thresholds import as_thresholds
from models import build_loss


@dataclass
class SplitEvaluation:
    """A checkpoint scored on a labelled split: per-class table, truth, probabilities, logits."""

    table: pd.DataFrame
    names: list[str]
    targets: np.ndarray
    logits: np.ndarray

    @property
    def probs(self) -> np.ndarray:
        return sigmoid(self.logits)

    def summary(self, thresholds: np.ndarray) -> dict:
        """The averaged metrics of the per-epoch validation summary (metrics.summarize)."""
        return summarize(self.targets, self.probs, thresholds)

    def write(self, folder: Path, thresholds: np.ndarray, meta: dict) -> None:
        """predictions.csv, submission.csv, metrics.csv/.json and the figures, in ``folder``."""
        write_split_results(folder, self.table, self.names, self.targets, self.probs, thresholds, meta)


def split_logits(predictor: Backend | EnsemblePredictor, split: TreeSplit | Path, batch_size: int,
                 num_workers: int, tta: bool = False) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, targets, logits) of every image of ``split`` once, in name order. An ensemble runs each
    member with its own preprocessing and averages their probabilities."""
    if isinstance(predictor, EnsemblePredictor):
        tta = tta or predictor.ensemble.tta
        parts = [split_logits(m, split, batch_size, num_workers, tta) for m in predictor.members]
        names, targets, _ = parts[0]
        return names, targets, predictor.combine([logits for _, _, logits in parts])
    dataset = MultiLabelImageFolder(split, predictor.transform)
    loader = build_inference_loader(dataset, batch_size, num_workers, predictor.device)
    logits, _ = predictor.logits(loader, tta)
    return [Path(path).name for path, _ in dataset.samples], dataset.targets.astype(int), logits


def evaluate_split(predictor: Backend | EnsemblePredictor, split: TreeSplit | Path, thresholds: np.ndarray,
                   batch_size: int, num_workers: int, tta: bool = False) -> SplitEvaluation:
    """Every image of ``split`` (a prepared tree's split folder, or a fold) once, in name order, scored at
    ``thresholds``."""
    names, targets, logits = split_logits(predictor, split, batch_size, num_workers, tta)
    return SplitEvaluation(multilabel_metrics(targets, sigmoid(logits), thresholds), names, targets, logits)


def evaluate_checkpoint(path: Path, split: TreeSplit | Path, device: torch.device, batch_size: int,
                        num_workers: int, tta: bool = False) -> tuple[SplitEvaluation, np.ndarray, float]:
    """(evaluation, thresholds, loss) of checkpoint ``path`` on ``split`` at the checkpoint's own thresholds.

    The one way a saved checkpoint is scored on a split without threshold files: ``main.py --eval``
    and the end-of-training report use it; ``test.py`` adds threshold files on top.
    """
    predictor = Predictor.from_checkpoint(path, device)
    thresholds = as_thresholds(predictor.thresholds, len(CLASSES))
    result = evaluate_split(predictor, split, thresholds, batch_size, num_workers, tta)
    criterion = build_loss(predictor.config)
    loss = criterion(torch.from_numpy(result.logits).float(), torch.from_numpy(result.targets).float()).item()
    return result, thresholds, loss


def file_logits(predictor: Backend | EnsemblePredictor, paths: Sequence[Path], batch_size: int, num_workers: int,
                tta: bool = False) -> tuple[np.ndarray, list[str]]:
    """Logits of each file (zeros where unreadable) and why each could not be read ('' when it could).

    Large JPEGs are decoded at reduced size (never below what the transform needs); the web app
    goes through here too, so a photo gets the same probabilities there as with ``test.py``.
    """
    if isinstance(predictor, EnsemblePredictor):
        tta = tta or predictor.ensemble.tta
        parts = [file_logits(m, paths, batch_size, num_workers, tta) for m in predictor.members]
        return predictor.combine([logits for logits, _ in parts]), parts[0][1]
    preprocessing = predictor.info.preprocessing
    dataset = ImageFiles(paths, predictor.transform, preprocessing.img_size, preprocessing.decode_size)
    return predictor.logits(build_inference_loader(dataset, batch_size, num_workers, predictor.device), tta)


def predict_files(predictor: Backend | EnsemblePredictor, patterns: Sequence[str], thresholds: np.ndarray,
                  batch_size: int, num_workers: int, logger: logging.Logger, tta: bool = False) -> pd.DataFrame:
    """Predictions of the readable images among ``patterns`` (files, folders, globs); bad ones are logged."""
    paths = collect_images(patterns, logger)
    logits, errors = file_logits(predictor, paths, batch_size, num_workers, tta)
    for path, error in zip(paths, errors):
        if error:
            logger.warning(f"{path}: skipped ({error})")
    good = np.array([not error for error in errors])
    if not good.any():
        raise ValueError(f"none of the {len(paths)} images could be read")
    kept = [p for p, ok in zip(paths, good) if ok]
    frame = predictions_frame(file_keys(kept, logger), sigmoid(logits[good]), thresholds)
    frame.insert(1, "path", [str(p) for p in kept])
    logger.info(f"predicted {len(kept)} images ({len(paths) - len(kept)} skipped)")
    return frame


def file_keys(paths: Sequence[Path], logger: logging.Logger) -> list[str]:
    """The ``image`` keys of predicted files: their names, as Kaggle's submission wants; when two files share
    a name (``a/x.jpg``, ``b/x.jpg``), every file's path relative to the folder that holds them all, so that
    no two rows of submission.csv have the same key."""
    names = [path.name for path in paths]
    if len(set(names)) == len(names):
        return names
    absolute = [Path(os.path.abspath(path)) for path in paths]
    root = Path(os.path.commonpath([path.parent for path in absolute]))
    logger.warning(f"some file names occur more than once: the image keys are paths relative to {root}")
    return [path.relative_to(root).as_posix() for path in absolute]
