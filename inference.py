"""Inference: a checkpoint loaded into a ready predictor, batched prediction (with TTA), labelled evaluation.

A :class:`Predictor` holds everything a prediction needs — the model in eval mode, its evaluation
transform, the classes and the checkpoint's thresholds — rebuilt from the checkpoint alone (its
config travels inside it). ``main.py --eval``, the end-of-training report, ``test.py`` and
``visual.py`` all go through it, so a checkpoint is scored the same way everywhere.

The jobs below take any :class:`Backend`: a :class:`Predictor` (PyTorch) or ``deploy.onnx_backend``'s
OnnxPredictor (ONNX Runtime). Both describe their model with a :class:`ModelInfo` and share the
preprocessing, batching and tables here, so the two backends differ only in who computes the logits.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, ContextManager, Iterable, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm
from yacs.config import CfgNode

from checkpoint import inference_weights, load_checkpoint_file, require_keys
from config import config_from_string
from data.dataset import ImageFiles, MultiLabelImageFolder, collect_images
from data.labels import CLASS_INDEX, CLASSES, vector_to_labels
from data.loader import build_inference_loader
from data.transforms import EvalPreprocessing
from metrics import multilabel_metrics, summarize
from models import build_loss, build_model
from reports import write_report
from runtime import amp_dtype, autocast_factory, place_model
from utils import atomic_write_text

HEALTHY = CLASS_INDEX["healthy"]
DEFAULT_THRESHOLD = 0.5
# Thresholds of the best checkpoint tuned on validation with TTA (main.py writes them beside thresholds.json)
TTA_THRESHOLDS = "thresholds_tta.json"


# ---------------------------------------------------------------------------------------------
# The predictor
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What predicting with a model needs besides its weights, and what a report says about it.

    Read from a checkpoint's config (:meth:`from_config`) or from an exported file's metadata, so
    a model travels without its training config.
    """

    name: str  # MODEL.NAME
    model_type: str  # MODEL.TYPE (the timm backbone)
    head: str  # MODEL.HEAD
    preprocessing: EvalPreprocessing
    thresholds: tuple[float, ...] | None  # those of the checkpoint, if any
    classes: tuple[str, ...] = CLASSES
    # defaults of test.py: the prepared tree, batch size and loader processes the run used
    data_path: str = "dataset"
    batch_size: int = 32
    num_workers: int = 8

    @classmethod
    def from_config(cls, config: CfgNode, thresholds: Sequence[float] | None) -> "ModelInfo":
        return cls(config.MODEL.NAME, config.MODEL.TYPE, config.MODEL.HEAD, EvalPreprocessing.from_config(config),
                   tuple(map(float, thresholds)) if thresholds else None, tuple(config.CLASSES),
                   config.DATA.DATA_PATH, config.DATA.BATCH_SIZE, config.DATA.NUM_WORKERS)

    def describe(self) -> str:
        return f"{self.name} ({self.model_type}, {self.head} head, {self.preprocessing.img_size} px)"


class Backend(Protocol):
    """What the jobs below need of a predictor, whichever library computes its logits."""

    backend: ClassVar[str]  # "torch", "onnx": for logs and reports
    path: Path  # the model file (its folder is the run: thresholds.json, default outputs)
    device: torch.device

    @property
    def info(self) -> ModelInfo: ...

    @property
    def thresholds(self) -> Sequence[float] | None: ...

    @property
    def transform(self) -> Callable: ...

    def logits(self, loader: Iterable, tta: bool = False) -> tuple[np.ndarray, list]: ...


@dataclass
class Predictor:
    """A model rebuilt from a checkpoint, in eval mode on its device, with what predicting needs."""

    model: nn.Module
    config: CfgNode  # the checkpoint's own config (frozen)
    path: Path
    device: torch.device
    thresholds: list[float] | None  # those saved in the checkpoint, if any
    classes: tuple[str, ...] = CLASSES
    backend: ClassVar[str] = "torch"

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device) -> "Predictor":
        """Rebuild the model of ``path`` from its own config and load its inference weights.

        Anything that is not a checkpoint of this project (another class list, a plain tensor,
        random bytes) is a ValueError naming the file.
        """
        path = Path(path)
        ckpt = require_keys(load_checkpoint_file(path), path, ("model", "config"))
        classes = list(ckpt.get("classes") or CLASSES)
        if classes != list(CLASSES):
            raise ValueError(f"{path}: the checkpoint's classes {classes} are not this code's {list(CLASSES)}")
        try:
            config = config_from_string(ckpt["config"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: its config does not load here ({err})") from None
        model = build_model(config)
        try:
            model.load_state_dict(inference_weights(ckpt, config))
        except RuntimeError as err:
            raise ValueError(f"{path}: weights do not fit the model of its own config "
                             f"({str(err).splitlines()[0]})") from None
        thresholds = ckpt.get("thresholds")
        model = place_model(model, config, device).eval()
        return cls(model, config, path, device, list(thresholds) if thresholds else None)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo.from_config(self.config, self.thresholds)

    @property
    def transform(self) -> Callable:
        """The evaluation transform of the checkpoint's config (PIL image -> normalised tensor)."""
        return self.info.preprocessing.transform()

    @property
    def autocast(self) -> Callable[[], ContextManager]:
        return autocast_factory(self.device, amp_dtype(self.config, self.device))

    def logits(self, loader: Iterable, tta: bool = False) -> tuple[np.ndarray, list]:
        """Logits (N, 6) in loader order, and the second item of every sample (targets or load errors)."""
        return predict_logits(self.model, loader, self.device, tta, self.autocast)


def tta_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Mean logits over the image, its horizontal and its vertical flip.

    Logits, not probabilities, are averaged for both heads: for ArcFace that is the mean of
    ``s * cos theta``; no label is involved either way.
    """
    return torch.stack([model(images), model(images.flip(-1)), model(images.flip(-2))]).mean(0)


@torch.inference_mode()
def predict_logits(model: nn.Module, loader: Iterable, device: torch.device, tta: bool = False,
                   autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> tuple[np.ndarray, list]:
    """Logits (N, 6) in loader order, and the second item of every sample (targets or load errors).

    The model is called without targets in eval mode: exactly its evaluation logits.
    """
    model.eval()
    logits, extras = [], []
    for images, extra in tqdm(loader, desc="predict", unit="batch", leave=False, dynamic_ncols=True):
        images = images.to(device, non_blocking=True)
        with autocast():
            out = tta_logits(model, images) if tta else model(images)
        logits.append(out.float().cpu())
        extras.extend(extra)
    return torch.cat(logits).numpy().astype(np.float64), extras


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


# ---------------------------------------------------------------------------------------------
# Thresholds
# ---------------------------------------------------------------------------------------------


def read_thresholds(path: Path) -> np.ndarray:
    """``{class: threshold}`` with every class, each in [0, 1], in CLASSES order."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable thresholds JSON ({err})") from None
    if not isinstance(values, dict) or set(values) != set(CLASSES):
        raise ValueError(f"{path}: thresholds must map exactly the classes {list(CLASSES)}")
    thresholds = np.array([values[name] for name in CLASSES], dtype=np.float64)
    if not ((thresholds >= 0) & (thresholds <= 1)).all():
        raise ValueError(f"{path}: thresholds must lie in [0, 1]")
    return thresholds


def write_thresholds(thresholds: Sequence[float], path: Path) -> None:
    atomic_write_text(json.dumps(dict(zip(CLASSES, map(float, thresholds))), indent=2) + "\n", path)


def resolve_thresholds(file: Path | None, run: Path, predictor: Backend, logger: logging.Logger,
                       tta: bool = False) -> np.ndarray:
    """``file``, else the run's (``TTA_THRESHOLDS`` with ``tta``, else ``thresholds.json``), else the model
    file's (checkpoint or .onnx), else 0.5 (warned).

    Averaging over flips changes the probabilities, so TTA predictions take the thresholds tuned on
    validation with TTA (main.py writes them at the end of training); without them the plain ones are used, warned.
    """
    if file is None and tta:
        if (run / TTA_THRESHOLDS).is_file():
            file = run / TTA_THRESHOLDS
        else:
            logger.warning(f"no {TTA_THRESHOLDS} in {run}: TTA with thresholds tuned without it")
    if file is None and (run / "thresholds.json").is_file():
        file = run / "thresholds.json"
    if file is not None:
        logger.info(f"thresholds from {file}")
        return read_thresholds(file)
    if predictor.thresholds is not None:
        logger.info(f"thresholds from the model file {predictor.path}")
        return np.asarray(predictor.thresholds, dtype=np.float64)
    logger.warning(f"no thresholds.json in {run} and none in the model file: using {DEFAULT_THRESHOLD} for every class")
    return np.full(len(CLASSES), DEFAULT_THRESHOLD)


# ---------------------------------------------------------------------------------------------
# Decisions and tables
# ---------------------------------------------------------------------------------------------


def submission_labels(probs: np.ndarray, thresholds: np.ndarray) -> list[str]:
    """Kaggle label strings: the classes over their thresholds, with two rules.

    - Never empty: an image with no class over its threshold gets its most likely class.
    - ``healthy`` never comes with a disease: whichever clears its threshold by the larger margin
      (probability minus threshold) wins, healthy alone or the diseases without healthy.
    """
    margins = probs - thresholds
    rows = []
    for margin, prob in zip(margins, probs):
        chosen = margin >= 0
        if not chosen.any():
            chosen[np.argmax(prob)] = True
        diseases = chosen.copy()
        diseases[HEALTHY] = False
        if chosen[HEALTHY] and diseases.any():
            keep_healthy = margin[HEALTHY] > margin[diseases].max()
            chosen = np.eye(len(CLASSES), dtype=bool)[HEALTHY] if keep_healthy else diseases
        rows.append(" ".join(vector_to_labels(chosen)))
    return rows


def predictions_frame(names: Sequence[str], probs: np.ndarray, thresholds: np.ndarray,
                      targets: np.ndarray | None = None) -> pd.DataFrame:
    """image, the six probabilities, the thresholded labels and (labelled mode) the true labels."""
    frame = pd.DataFrame(probs, columns=list(CLASSES))
    frame.insert(0, "image", list(names))
    frame["predicted"] = [" ".join(vector_to_labels(row)) for row in probs >= thresholds]
    if targets is not None:
        frame["true"] = [" ".join(vector_to_labels(row)) for row in targets]
    return frame


def submission_frame(names: Sequence[str], probs: np.ndarray, thresholds: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"image": list(names), "labels": submission_labels(probs, thresholds)})


# ---------------------------------------------------------------------------------------------
# The two jobs: a labelled split, or loose files
# ---------------------------------------------------------------------------------------------


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


def evaluate_split(predictor: Backend, split_dir: Path, thresholds: np.ndarray, batch_size: int,
                   num_workers: int, tta: bool = False) -> SplitEvaluation:
    """Every image of ``split_dir`` (a prepared tree's split) once, in name order, scored at ``thresholds``."""
    dataset = MultiLabelImageFolder(split_dir, predictor.transform)
    loader = build_inference_loader(dataset, batch_size, num_workers, predictor.device)
    logits, _ = predictor.logits(loader, tta)
    targets = dataset.targets.astype(int)
    names = [Path(path).name for path, _ in dataset.samples]
    return SplitEvaluation(multilabel_metrics(targets, sigmoid(logits), thresholds), names, targets, logits)


def evaluate_checkpoint(path: Path, split_dir: Path, device: torch.device, batch_size: int, num_workers: int,
                        tta: bool = False) -> tuple[SplitEvaluation, np.ndarray, float]:
    """(evaluation, thresholds, loss) of checkpoint ``path`` on ``split_dir`` at the checkpoint's own thresholds.

    The one way a saved checkpoint is scored on a split without threshold files: ``main.py --eval``
    and the end-of-training report use it; ``test.py`` adds threshold files on top.
    """
    predictor = Predictor.from_checkpoint(path, device)
    thresholds = np.asarray(predictor.thresholds or [predictor.config.TEST.THRESHOLD] * len(CLASSES))
    result = evaluate_split(predictor, split_dir, thresholds, batch_size, num_workers, tta)
    criterion = build_loss(predictor.config)
    loss = criterion(torch.from_numpy(result.logits).float(), torch.from_numpy(result.targets).float()).item()
    return result, thresholds, loss


def write_split_results(result: SplitEvaluation, thresholds: np.ndarray, out: Path, meta: dict) -> None:
    """predictions.csv, submission.csv, metrics.csv/.json and the figures of a labelled evaluation."""
    probs = result.probs
    predictions = predictions_frame(result.names, probs, thresholds, result.targets)
    atomic_write_text(predictions.to_csv(index=False), out / "predictions.csv")
    atomic_write_text(submission_frame(result.names, probs, thresholds).to_csv(index=False), out / "submission.csv")
    write_report(out, result.table, result.targets, probs, thresholds, meta)


def file_logits(predictor: Backend, paths: Sequence[Path], batch_size: int, num_workers: int, tta: bool = False
                ) -> tuple[np.ndarray, list[str]]:
    """Logits of each file (zeros where unreadable) and why each could not be read ('' when it could).

    Large JPEGs are decoded at reduced size (never below what the transform needs); the web app
    goes through here too, so a photo gets the same probabilities there as with ``test.py``.
    """
    preprocessing = predictor.info.preprocessing
    dataset = ImageFiles(paths, predictor.transform, preprocessing.img_size, preprocessing.decode_size)
    return predictor.logits(build_inference_loader(dataset, batch_size, num_workers, predictor.device), tta)


def predict_files(predictor: Backend, patterns: Sequence[str], thresholds: np.ndarray, batch_size: int,
                  num_workers: int, logger: logging.Logger, tta: bool = False) -> pd.DataFrame:
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
    frame = predictions_frame([p.name for p in kept], sigmoid(logits[good]), thresholds)
    frame.insert(1, "path", [str(p) for p in kept])
    logger.info(f"predicted {len(kept)} images ({len(paths) - len(kept)} skipped)")
    return frame


def write_file_predictions(frame: pd.DataFrame, thresholds: np.ndarray, out: Path) -> None:
    """predictions.csv and submission.csv of :func:`predict_files`."""
    atomic_write_text(frame.to_csv(index=False), out / "predictions.csv")
    probs = frame[list(CLASSES)].to_numpy(dtype=np.float64)
    atomic_write_text(submission_frame(frame["image"], probs, thresholds).to_csv(index=False), out / "submission.csv")
