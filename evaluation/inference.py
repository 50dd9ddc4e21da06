"""Running a model: a checkpoint loaded into a ready predictor, and the one prediction loop (with TTA).

A :class:`Predictor` holds everything a prediction needs — the model in eval mode, its evaluation
transform, the classes and the checkpoint's thresholds — rebuilt from the checkpoint alone (its
config travels inside it). Training's validation and every inference job run their batches
through :func:`forward_batches`, so a model is scored the same way everywhere.

The jobs of ``evaluation`` take any :class:`Backend`: a :class:`Predictor` (PyTorch) or
``deploy.onnx_backend``'s OnnxPredictor (ONNX Runtime). Both describe their model with a
:class:`ModelInfo` and share the preprocessing, batching and tables, so the two backends differ
only in who computes the logits.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, ContextManager, Iterable, Protocol, Sequence

import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm
from yacs.config import CfgNode

from config import config_from_string
from data.labels import CLASSES, NUM_CLASSES
from data.transforms import EvalPreprocessing
from evaluation.thresholds import check_thresholds
from models import build_model
from models.ensemble import tta_logits
from training.checkpoint import inference_weights, load_checkpoint_file, require_finite_weights, require_keys
from utils.distributed import all_gather_objects, get_rank, is_distributed
from utils.errors import RunError
from utils.runtime import amp_dtype, autocast_factory, place_model


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
    fold: int = -1  # DATA.FOLD: the fold a K-fold member was validated on (its out-of-fold split)
    # '' : the thresholds are the run's; else how they were tuned for this very file (an INT8 export's
    # own, on its validation probabilities), so that they win over the run's thresholds.json
    thresholds_from: str = ""

    @classmethod
    def from_config(cls, config: CfgNode, thresholds: Sequence[float] | None) -> "ModelInfo":
        return cls(config.MODEL.NAME, config.MODEL.TYPE, config.MODEL.HEAD, EvalPreprocessing.from_config(config),
                   tuple(map(float, thresholds)) if thresholds else None, tuple(config.CLASSES),
                   config.DATA.DATA_PATH, config.DATA.BATCH_SIZE, config.DATA.NUM_WORKERS, config.DATA.FOLD)

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
    backend: ClassVar[str] = "torch"

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device) -> "Predictor":
        """Rebuild the model of ``path`` from its own config and load its inference weights.

        Anything that is not a checkpoint of this project (another class list, a plain tensor,
        random bytes, a config that is not YAML, non-finite weights or thresholds) is a ValueError naming the file.
        """
        path = Path(path)
        ckpt = require_keys(load_checkpoint_file(path), path, ("model", "config"))
        classes = list(ckpt.get("classes") or CLASSES)
        if classes != list(CLASSES):
            raise ValueError(f"{path}: the checkpoint's classes {classes} are not this code's {list(CLASSES)}")
        config = checkpoint_config(ckpt, path)
        saved = ckpt.get("thresholds")
        thresholds = None if saved is None else check_thresholds(saved, path).tolist()
        model = build_model(config)
        try:
            model.load_state_dict(require_finite_weights(inference_weights(ckpt, config), path))
        except RuntimeError as err:
            raise ValueError(f"{path}: weights do not fit the model of its own config "
                             f"({str(err).splitlines()[0]})") from None
        model = place_model(model, config, device).eval()
        return cls(model, config, path, device, thresholds)

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
        logits, extras = predict_logits(self.model, loader, self.device, tta, self.autocast)
        return require_finite(logits, self.path), extras


def checkpoint_config(ckpt: dict, path: Path) -> CfgNode:
    """The config a checkpoint carries; one that does not load here (not YAML, unknown keys) is a ValueError
    naming the file, with the first line of what went wrong."""
    try:
        return config_from_string(ckpt["config"])
    except (ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path}: its config does not load here ({reason})") from None


def require_finite(logits: np.ndarray, path: Path) -> np.ndarray:
    """``logits`` when every one is finite, else a :class:`cli.RunError` naming the model file: a NaN would
    label a leaf by whatever a comparison with NaN gives, so no prediction of such a batch is kept."""
    bad = ~np.isfinite(logits).all(axis=-1)
    if bad.any():
        raise RunError(f"{path}: the model computed non-finite logits (NaN or inf) for {int(bad.sum())} of "
                       f"{len(logits)} images; its predictions are not to be used")
    return logits


@torch.no_grad()
def forward_batches(model: nn.Module, loader: Iterable, device: torch.device, tta: bool = False,
                    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                    desc: str = "predict", gather: bool = False) -> tuple[torch.Tensor, list]:
    """float32 logits (N, 6) in dataset order, and the second item of every sample (targets or load errors).

    The model is called without targets in eval mode: exactly its evaluation logits. ``gather``: under
    torchrun the loader's sampler gives each rank a share (training's validation), and the shares are
    gathered so that every rank returns all N; ``model`` must then be the unwrapped module (ranks hold
    different numbers of batches, so no collective may run per batch).
    """
    model.eval()
    logits, extras = [], []
    for images, extra in tqdm(loader, desc=desc, unit="batch", leave=False, disable=get_rank() != 0,
                              dynamic_ncols=True):
        images = images.to(device, non_blocking=True)
        with autocast():
            out = tta_logits(model, images) if tta else model(images)
        logits.append(out.float().cpu())
        extras.extend(extra)
    local = torch.cat(logits) if logits else torch.empty(0, NUM_CLASSES)
    if not (gather and is_distributed()):
        return local, extras
    parts = [part for part in all_gather_objects((list(loader.sampler), local, extras)) if len(part[0])]
    order = np.argsort(np.concatenate([part[0] for part in parts]), kind="stable")
    gathered = [extra for part in parts for extra in part[2]]
    return torch.cat([part[1] for part in parts])[order], [gathered[i] for i in order]


def predict_logits(model: nn.Module, loader: Iterable, device: torch.device, tta: bool = False,
                   autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> tuple[np.ndarray, list]:
    """:func:`forward_batches` as float64 NumPy logits (what inference scores and writes)."""
    logits, extras = forward_batches(model, loader, device, tta, autocast)
    return logits.numpy().astype(np.float64), extras


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))
