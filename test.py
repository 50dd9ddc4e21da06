"""Evaluate a trained checkpoint on a prepared split, or predict the labels of new photos.

    python test.py --cfg configs/demo_cpu.yaml --data-path demo/dataset          # the test split
    python test.py --checkpoint RUN/ckpt_best.pth --images photos/ extra/*.jpg  # new photos
    python test.py --cfg ... --split val --tune-thresholds                      # retune on validation

The model, its preprocessing (the validation transform) and the class names come from the
checkpoint's own config, so a checkpoint alone is enough. Decision thresholds come from
``--thresholds FILE``, else the run's ``thresholds.json`` (tuned on validation by main.py, never on
the split being tested), else the checkpoint's, else 0.5 with a warning.

Labelled mode writes to ``<run>/test_<split>/`` (or ``--output``): metrics.csv/.json, predictions.csv,
submission.csv and plots. Unlabelled mode (``--images``) writes predictions.csv and submission.csv to
``<run>/predict/``. ``predictions.csv``'s ``predicted`` column is plain thresholding (what metrics.csv
scores); ``submission.csv`` applies Kaggle's rules on top (see :func:`submission_labels`).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import json
import os
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from termcolor import colored
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from config import config_from_string, get_config
from data.dataset import MultiLabelImageFolder
from data.images import load_image
from data.labels import CLASS_INDEX, CLASSES, vector_to_labels
from data.transforms import TEST_CROP_PCT, build_transform
from engine import autocast_factory
from metrics import multilabel_metrics, table_text, tune_thresholds
from models import build_model
from utils import (
    atomic_write_bytes, atomic_write_text, create_logger, inference_weights, load_checkpoint_file, run_cli, run_dir,
    select_device,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
HEALTHY = CLASS_INDEX["healthy"]
DEFAULT_THRESHOLD = 0.5


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that find a trained run and its checkpoint (shared with visual.py)."""
    parser.add_argument("--cfg", metavar="FILE", help="config of the run (finds OUTPUT/MODEL.NAME/TAG)")
    parser.add_argument("--opts", nargs="+", default=None, help="KEY VALUE pairs overriding --cfg")
    parser.add_argument("--tag", help="run tag (default: the config's TAG)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file (default: the run's ckpt_best.pth)")


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--data-path", type=Path, help="prepared tree (default: the checkpoint's DATA.DATA_PATH)")
    parser.add_argument("--split", default="test", help="split folder of the tree to evaluate (default: test)")
    parser.add_argument("--images", nargs="+", metavar="PATH", help="image files, folders or globs: predict only")
    parser.add_argument("--thresholds", type=Path, metavar="FILE", help="thresholds JSON {class: value}")
    parser.add_argument("--tune-thresholds", action="store_true",
                        help="also write per-class F1-optimal thresholds of this labelled split")
    parser.add_argument("--tta", action="store_true", help="average the logits over the image and its flips")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: the checkpoint's)")
    parser.add_argument("--num-workers", type=int, help="loader processes (default: the checkpoint's)")
    parser.add_argument("--output", type=Path, help="folder for the results (default: in the run dir)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Checkpoint and thresholds
# ---------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """A model rebuilt from a checkpoint, in eval mode on its device."""

    model: nn.Module
    config: Any  # the checkpoint's own config (frozen)
    path: Path
    thresholds: list[float] | None  # those saved in the checkpoint, if any


def find_checkpoint(args: Namespace) -> Path:
    """``--checkpoint``, else the ckpt_best.pth of the run named by --cfg/--tag/--opts."""
    if args.checkpoint:
        return args.checkpoint
    config = get_config(Namespace(cfg=args.cfg, opts=args.opts, tag=args.tag))
    path = run_dir(config) / "ckpt_best.pth"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint (train with main.py first, or give --checkpoint FILE)")
    return path


def load_model(path: Path, device: torch.device) -> Loaded:
    """Rebuild the model of ``path`` from its own config and load its inference weights.

    Anything that is not a checkpoint of this project (another class list, a plain tensor, random
    bytes) is a ValueError naming the file.
    """
    ckpt = load_checkpoint_file(path)
    missing = {"model", "config"} - set(ckpt)
    if missing:
        raise ValueError(f"{path}: not a checkpoint of main.py (no {', '.join(sorted(missing))})")
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
    return Loaded(model.to(device).eval(), config, path, list(thresholds) if thresholds else None)


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


def resolve_thresholds(file: Path | None, run: Path, loaded: Loaded, logger: Any) -> np.ndarray:
    """``file``, else ``run/thresholds.json``, else the checkpoint's, else 0.5 (with a warning)."""
    if file is None and (run / "thresholds.json").is_file():
        file = run / "thresholds.json"
    if file is not None:
        logger.info(f"thresholds from {file}")
        return read_thresholds(file)
    if loaded.thresholds is not None:
        logger.info(f"thresholds from the checkpoint {loaded.path}")
        return np.asarray(loaded.thresholds, dtype=np.float64)
    logger.warning(f"no thresholds.json in {run} and none in the checkpoint: using {DEFAULT_THRESHOLD} for every class")
    return np.full(len(CLASSES), DEFAULT_THRESHOLD)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def collect_images(patterns: Iterable[str], logger: Any) -> list[Path]:
    """Files as given, image files of folders (recursively) and glob matches, sorted, each file once.

    "Once" is by file identity, so a prepared tree's multi-label image, hard-linked into several
    class folders, is predicted (and submitted) once.
    """
    found: dict[tuple[int, int], Path] = {}
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not matches:
            logger.warning(f"{pattern}: no such file, or no image in it")
        for match in matches:
            stat = match.stat()
            found.setdefault((stat.st_dev, stat.st_ino), match)
    if not found:
        raise FileNotFoundError(f"no image found in {' '.join(patterns)}")
    return list(found.values())


def decode_size(config: Any) -> int:
    """The smallest side the evaluation transform needs before its own resize."""
    size = config.DATA.IMG_SIZE
    return int(np.ceil(size / TEST_CROP_PCT)) if config.TEST.CROP else size


def read_failure(error: Exception) -> str:
    """Why an image could not be used, in a few words."""
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image Pillow can read"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class ImageFiles(Dataset):
    """Image files for prediction: (tensor, '') per readable file, (zeros, reason) per unreadable one.

    Failures travel through the loader as data, so one bad file neither stops the workers nor needs
    a second pass over the images.
    """

    def __init__(self, paths: Sequence[Path], transform: Callable, size: int, min_size: int | None = None):
        self.paths = list(paths)
        self.transform = transform
        self.size = size
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            return self.transform(load_image(self.paths[index], self.min_size)), ""
        except Exception as error:  # noqa: BLE001 - Pillow raises many types on bad data; all mean "skip"
            return torch.zeros(3, self.size, self.size), read_failure(error)


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------


def inference_autocast(config: Any, device: torch.device) -> Callable[[], ContextManager]:
    """Autocast on CUDA when the run used AMP (bf16 where supported, else fp16); nothing on CPU."""
    bf16 = config.AMP_DTYPE == "bfloat16" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    return autocast_factory(device, config.AMP_ENABLE, torch.bfloat16 if bf16 else torch.float16)


def tta_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Mean logits over the image, its horizontal and its vertical flip.

    Logits, not probabilities, are averaged for both heads: for ArcFace that is the mean of
    ``s * cos theta``; no label is involved either way.
    """
    return torch.stack([model(images), model(images.flip(-1)), model(images.flip(-2))]).mean(0)


@torch.inference_mode()
def predict(model: nn.Module, loader: Iterable, device: torch.device, tta: bool = False,
            autocast: Callable[[], ContextManager] | None = None) -> tuple[np.ndarray, list]:
    """Logits (N, 6) in loader order, and the second item of every sample (targets or load errors).

    The model is called without targets in eval mode: exactly its evaluation logits.
    """
    model.eval()
    autocast = autocast or contextlib.nullcontext
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
# Reports
# ---------------------------------------------------------------------------------------------


def format_table(table: pd.DataFrame) -> str:
    """The metrics table as text: bold header, summary rows in cyan."""
    header, *lines = table_text(table).splitlines()
    rows = [line if name in CLASSES else colored(line, "cyan") for name, line in zip(table.index, lines)]
    return "\n".join([colored(header, attrs=["bold"]), *rows])


def metrics_json(table: pd.DataFrame, **meta: Any) -> str:
    """The table as {row: {column: value}} (nan -> null), after the run's facts in ``meta``."""
    return json.dumps({**meta, "metrics": json.loads(table.to_json(orient="index"))}, indent=2) + "\n"


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def plot_heatmap(table: pd.DataFrame) -> bytes:
    """Per-class precision, recall, F1, AP, AUC and accuracy as an annotated heatmap."""
    from matplotlib.figure import Figure

    columns = ["precision", "recall", "f1", "ap", "auc", "accuracy"]
    values = table.loc[list(CLASSES) + ["macro"], columns].to_numpy(dtype=float)
    fig = Figure(figsize=(8, 5), tight_layout=True)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(values)), list(CLASSES) + ["macro"])
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                color="black" if v > 0.6 else "white")
    fig.colorbar(image, ax=ax)
    ax.set_title("per-class metrics at the decision thresholds")
    return _png(fig)


def plot_curves(targets: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, kind: str) -> bytes:
    """One PR (``kind='pr'``) or ROC (``kind='roc'``) curve per class, the decision threshold marked."""
    from matplotlib.figure import Figure
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    fig = Figure(figsize=(13, 8), tight_layout=True)
    for ax, c, name in zip(fig.subplots(2, 3).flat, range(len(CLASSES)), CLASSES):
        y, p = targets[:, c], probs[:, c]
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if y.min() == y.max():
            ax.text(0.5, 0.5, "undefined: one kind of truth only", ha="center", transform=ax.transAxes)
            continue
        pred = p >= thresholds[c]
        if kind == "pr":
            precision, recall, _ = precision_recall_curve(y, p)
            ax.plot(recall, precision, label=f"AP {average_precision_score(y, p):.3f}")
            point = (pred[y > 0].mean(), y[pred].mean() if pred.any() else 1.0)
            ax.set(xlabel="recall", ylabel="precision")
        else:
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(y, p):.3f}")
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
            point = (pred[y == 0].mean(), pred[y > 0].mean())
            ax.set(xlabel="false positive rate", ylabel="true positive rate")
        ax.plot(*point, "o", color="red", label=f"threshold {thresholds[c]:.2f}")
        ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax.legend(loc="lower left" if kind == "pr" else "lower right")
    return _png(fig)


def plot_confusion(targets: np.ndarray, predicted: np.ndarray) -> bytes:
    """Per-class 2x2 confusion matrices (rows: truth, columns: prediction)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import multilabel_confusion_matrix

    matrices = multilabel_confusion_matrix(targets, predicted, labels=list(range(len(CLASSES))))
    fig = Figure(figsize=(12, 7), tight_layout=True)
    for ax, matrix, name in zip(fig.subplots(2, 3).flat, matrices, CLASSES):
        ax.imshow(matrix, cmap="Blues")
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(v), ha="center", va="center", color="black" if v < matrix.max() / 2 else "white")
        ax.set_xticks([0, 1], ["no", "yes"])
        ax.set_yticks([0, 1], ["no", "yes"])
        ax.set(title=name, xlabel="predicted", ylabel="true")
    return _png(fig)


def write_report(out: Path, table: pd.DataFrame, targets: np.ndarray, probs: np.ndarray,
                 thresholds: np.ndarray, meta: dict) -> None:
    """metrics.csv/.json and the four figures of a labelled evaluation."""
    atomic_write_text(table.to_csv(index_label="row"), out / "metrics.csv")
    atomic_write_text(metrics_json(table, **meta), out / "metrics.json")
    atomic_write_bytes(plot_heatmap(table), out / "metrics_heatmap.png")
    atomic_write_bytes(plot_curves(targets, probs, thresholds, "pr"), out / "pr_curves.png")
    atomic_write_bytes(plot_curves(targets, probs, thresholds, "roc"), out / "roc_curves.png")
    atomic_write_bytes(plot_confusion(targets, (probs >= thresholds).astype(int)), out / "confusion_matrices.png")


# ---------------------------------------------------------------------------------------------
# The two modes
# ---------------------------------------------------------------------------------------------


@dataclass
class Job:
    """What both modes share: the model, where things go, how to batch."""

    loaded: Loaded
    device: torch.device
    batch_size: int
    num_workers: int
    tta: bool
    logger: Any

    def predict(self, dataset: Dataset) -> tuple[np.ndarray, list]:
        loader = make_loader(dataset, self.batch_size, self.num_workers, self.device)
        autocast = inference_autocast(self.loaded.config, self.device)
        logits, extras = predict(self.loaded.model, loader, self.device, self.tta, autocast)
        return sigmoid(logits), extras


def evaluate_split(job: Job, split_dir: Path, thresholds: np.ndarray, out: Path
                   ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Labelled mode: writes metrics, predictions, submission and plots; returns (table, targets, probs)."""
    transform = build_transform(False, job.loaded.config)
    dataset = MultiLabelImageFolder(split_dir, transform)
    job.logger.info(f"{len(dataset)} images in {split_dir}")
    probs, _ = job.predict(dataset)
    targets = dataset.targets.astype(int)
    names = [Path(path).name for path, _ in dataset.samples]
    table = multilabel_metrics(targets, probs, thresholds)
    meta = dict(checkpoint=str(job.loaded.path), split_dir=str(split_dir), num_images=len(dataset), tta=job.tta)
    atomic_write_text(predictions_frame(names, probs, thresholds, targets).to_csv(index=False), out / "predictions.csv")
    atomic_write_text(submission_frame(names, probs, thresholds).to_csv(index=False), out / "submission.csv")
    write_report(out, table, targets, probs, thresholds, meta)
    return table, targets, probs


def predict_files(job: Job, patterns: Sequence[str], thresholds: np.ndarray, out: Path) -> pd.DataFrame:
    """Unlabelled mode: predictions.csv and submission.csv of the readable images; bad ones reported."""
    config = job.loaded.config
    paths = collect_images(patterns, job.logger)
    dataset = ImageFiles(paths, build_transform(False, config), config.DATA.IMG_SIZE, decode_size(config))
    probs, errors = job.predict(dataset)
    for path, error in zip(paths, errors):
        if error:
            job.logger.warning(f"{path}: skipped ({error})")
    good = np.array([not error for error in errors])
    if not good.any():
        raise ValueError(f"none of the {len(paths)} images could be read")
    kept, probs = [p for p, ok in zip(paths, good) if ok], probs[good]
    names = [p.name for p in kept]
    frame = predictions_frame(names, probs, thresholds)
    frame.insert(1, "path", [str(p) for p in kept])
    atomic_write_text(frame.to_csv(index=False), out / "predictions.csv")
    atomic_write_text(submission_frame(names, probs, thresholds).to_csv(index=False), out / "submission.csv")
    job.logger.info(f"predicted {len(kept)} images ({len(paths) - len(kept)} skipped)")
    return frame


def default_output(run: Path, args: Namespace) -> Path:
    return args.output or (run / "predict" if args.images else run / f"test_{args.split}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.images and args.tune_thresholds:
        raise ValueError("--tune-thresholds needs a labelled split, not --images")
    device = select_device(args.device)
    loaded = load_model(find_checkpoint(args), device)
    run = loaded.path.parent
    out = default_output(run, args)
    logger = create_logger(out, name="test")
    logger.info(f"model {loaded.config.MODEL.NAME} ({loaded.config.MODEL.TYPE}, {loaded.config.MODEL.HEAD} head) "
                f"from {loaded.path} on {device}{', TTA' if args.tta else ''}")
    thresholds = resolve_thresholds(args.thresholds, run, loaded, logger)
    workers = args.num_workers
    if workers is None:
        workers = min(loaded.config.DATA.NUM_WORKERS, os.cpu_count() or 1)
    job = Job(loaded, device, args.batch_size or loaded.config.DATA.BATCH_SIZE, workers, args.tta, logger)
    if args.images:
        predict_files(job, args.images, thresholds, out)
    else:
        split_dir = (args.data_path or Path(loaded.config.DATA.DATA_PATH)) / args.split
        table, targets, probs = evaluate_split(job, split_dir, thresholds, out)
        logger.info(f"{args.split} split, thresholds {np.round(thresholds, 2).tolist()}:\n{format_table(table)}")
        if args.tune_thresholds:
            if args.split == "test":
                logger.warning("tuning thresholds on the test split: report test metrics with validation thresholds")
            tune_file = (args.output or run) / f"thresholds_{args.split}.json"
            write_thresholds(tune_thresholds(targets, probs), tune_file)
            logger.info(f"wrote per-class F1-optimal thresholds of the {args.split} split to {tune_file} "
                        f"(use with --thresholds on another split)")
    logger.info(f"results in {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
