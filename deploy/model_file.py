"""A model file, whichever kind: a checkpoint, an ``.onnx`` or an ``ensemble.json``, loaded as one predictor.

The one place that tells the kinds apart, so that test.py, export.py, visual.py and app.py take any of
them without asking which: an ensemble file is its members (each loaded by ``deploy.backends``, on
the backend asked for) whose probabilities are averaged (``evaluation.ensemble_file``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from deploy.backends import load_predictor
from evaluation.ensemble_file import ENSEMBLE_SUFFIX, Ensemble, EnsemblePredictor, ensemble_module
from evaluation.inference import Backend, ModelInfo, Predictor


def is_ensemble_file(path: Path) -> bool:
    return Path(path).suffix == ENSEMBLE_SUFFIX


def _load(path: Path, load_one: Callable[[Path], Backend]) -> Backend | EnsemblePredictor:
    """``load_one(path)``, or for an ensemble file its members each loaded so, averaged."""
    if is_ensemble_file(path):
        ensemble = Ensemble.read(path)
        return EnsemblePredictor(ensemble, [load_one(m) for m in ensemble.members])
    return load_one(path)


def load_model_file(path: Path, backend: str, device: torch.device, logger: logging.Logger
                    ) -> Backend | EnsemblePredictor:
    """The predictor of ``path`` on ``backend``: one model, or an ensemble file's members on it."""
    return _load(path, lambda p: load_predictor(p, backend, device, logger))


def load_network_file(path: Path, device: torch.device) -> Predictor | EnsemblePredictor:
    """A checkpoint, or an ensemble file of checkpoints, as PyTorch networks (what export needs)."""
    return _load(path, lambda p: Predictor.from_checkpoint(p, device))


def describe(predictor: Backend | EnsemblePredictor, path: Path, tta: bool) -> str:
    """The log line naming what predicts: an ensemble names its members, backends and TTA itself."""
    if isinstance(predictor, EnsemblePredictor):
        return f"{predictor.describe()} from {path}"
    return (f"model {predictor.info.describe()} from {path} on {predictor.backend} ({predictor.device})"
            f"{', TTA' if tta else ''}")


def uses_tta_thresholds(predictor: Backend | EnsemblePredictor, tta: bool) -> bool:
    """Whether ``--tta`` takes the run's thresholds_tta.json: not for an ensemble file, whose thresholds were
    tuned on its members' TTA probabilities already."""
    return tta and not isinstance(predictor, EnsemblePredictor)


def network_of(predictor: Backend | EnsemblePredictor) -> tuple[nn.Module, ModelInfo, Sequence[Predictor]]:
    """(one network, how it is fed, its member predictors) for export: an ensemble becomes one graph that
    averages its members' probabilities; a model is its own only member."""
    if isinstance(predictor, EnsemblePredictor):
        model, info = ensemble_module(predictor.ensemble, predictor.members)
        return model, info, predictor.members
    return predictor.model, predictor.info, [predictor]


def explained_checkpoint(path: Path, member: int) -> tuple[Path, str]:
    """(the checkpoint Grad-CAM explains, a note for the log): ``path`` itself, or an ensemble file's ``member``
    (1-based), whose own probabilities and thresholds are then shown."""
    if not is_ensemble_file(path):
        return Path(path), ""
    members = Ensemble.read(path).members
    if not 1 <= member <= len(members):
        raise ValueError(f"{path}: --member {member}, but the ensemble has members 1 to {len(members)}")
    checkpoint = members[member - 1]
    return checkpoint, (f"{path} is an ensemble: Grad-CAM of member {member} ({checkpoint}), with its own "
                        "probabilities and thresholds")
