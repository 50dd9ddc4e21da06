"""Ensembles: several checkpoints whose probabilities are averaged, with thresholds of their own.

An ensemble file (``ensemble.json``, written by ``scripts/cv.py``) lists member checkpoints (paths
relative to the file), their weights, whether each member is run with TTA, and the thresholds tuned
on the ensemble's own out-of-fold (or validation) probabilities. Members may differ in backbone and
input size: each is run with its own preprocessing, and their probabilities are averaged.

Why probabilities and not logits: a member's logit scale depends on its head and loss (ArcFace's
scale s = 30 against a linear head's), so averaging logits lets the most confident head decide;
averaged probabilities weigh every member alike.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from data.labels import CLASSES
from evaluation.inference import Backend, ModelInfo, Predictor, require_finite, sigmoid
from evaluation.thresholds import check_thresholds
from models.ensemble import PROB_EPS, MeanOfProbabilities, MemberInput
from utils.files import atomic_write_text, read_json

ENSEMBLE_SUFFIX = ".json"


@dataclass(frozen=True)
class Ensemble:
    """Member checkpoints with weights, TTA, and the ensemble's thresholds (None: not tuned)."""

    path: Path
    members: tuple[Path, ...]
    weights: tuple[float, ...]
    tta: bool
    thresholds: np.ndarray | None
    thresholds_from: str = ""

    @classmethod
    def read(cls, path: Path) -> "Ensemble":
        """An ensemble file; bad content (weights that are not finite positive numbers, thresholds out of range)
        is a ValueError naming the file."""
        spec = read_spec(path)
        try:
            members = tuple(Path(path).parent / m["checkpoint"] for m in spec["members"])
            weights = tuple(check_weight(m.get("weight", 1.0), index, path) for index, m in enumerate(spec["members"]))
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: not a readable ensemble file ({err!r})") from None
        if not members:
            raise ValueError(f"{path}: an ensemble needs at least one member")
        missing = [str(m) for m in members if not m.is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: member checkpoint(s) not found: {', '.join(missing)}")
        return cls(Path(path), members, weights, bool(spec.get("tta", False)), spec_thresholds(spec, path),
                   str(spec.get("thresholds_from", "")))

    def write(self) -> None:
        folder = self.path.parent.resolve()  # members relative to the file: a moved output folder still works
        spec = {"members": [{"checkpoint": os.path.relpath(Path(m).resolve(), folder), "weight": w}
                            for m, w in zip(self.members, self.weights)],
                "tta": self.tta, "combine": "mean of probabilities",
                "thresholds": None if self.thresholds is None else dict(zip(CLASSES, map(float, self.thresholds))),
                "thresholds_from": self.thresholds_from}
        atomic_write_text(json.dumps(spec, indent=2) + "\n", self.path)


def read_spec(path: Path) -> dict:
    """The JSON object of an ensemble file; anything else is a ValueError naming it."""
    spec = read_json(path, "ensemble file")
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: not a readable ensemble file (a JSON {type(spec).__name__}, not an object)")
    return spec


def check_weight(value: object, index: int, path: Path) -> float:
    """A member's weight as a float; one that is not a finite number above 0 is a ValueError naming the file
    (NaN or Infinity would make every averaged probability NaN, a negative one would subtract a member)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"{path}: the weight of member {index + 1} is {value!r:.40}, not a finite number above 0")
    return float(value)


def spec_thresholds(spec: dict, path: Path) -> np.ndarray | None:
    """The thresholds of an ensemble file's object (None: not tuned), checked as every file's are."""
    thresholds = spec.get("thresholds")
    return None if thresholds is None else check_thresholds(thresholds, path)


def read_ensemble_thresholds(path: Path) -> np.ndarray | None:
    """Only the thresholds of an ensemble file (None: not tuned), whether or not its member checkpoints are at hand."""
    return spec_thresholds(read_spec(path), path)


def average_probs(member_probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The weighted mean of the members' (N, C) probabilities."""
    weights = np.asarray(weights, dtype=np.float64)
    return np.tensordot(weights / weights.sum(), np.stack(member_probs).astype(np.float64), axes=1)


def probs_to_logits(probs: np.ndarray) -> np.ndarray:
    """The logits whose sigmoid is ``probs`` (clipped into (0, 1)): an ensemble reports as one model."""
    clipped = np.clip(probs, PROB_EPS, 1 - PROB_EPS)
    return np.log(clipped / (1 - clipped))


class EnsemblePredictor:
    """The members of an ensemble file, loaded on one backend: what test.py scores as one model."""

    backend = "ensemble"

    def __init__(self, ensemble: Ensemble, members: Sequence[Backend]) -> None:
        self.ensemble = ensemble
        self.members = list(members)
        self.path = ensemble.path
        self.device = members[0].device
        self.info = dataclasses.replace(members[0].info, name=f"ensemble of {len(members)}")
        self.thresholds = None if ensemble.thresholds is None else tuple(ensemble.thresholds)

    def describe(self) -> str:
        kinds = ", ".join(f"{m.info.describe()} x{w:g} on {m.backend}"
                          for m, w in zip(self.members, self.ensemble.weights))
        return f"ensemble of {len(self.members)} ({kinds}){', TTA per member' if self.ensemble.tta else ''}"

    def combine(self, member_logits: Sequence[np.ndarray]) -> np.ndarray:
        """Logits of the weighted mean of the members' probabilities (finite, or a RunError naming the file)."""
        averaged = average_probs([sigmoid(x) for x in member_logits], self.ensemble.weights)
        return require_finite(probs_to_logits(averaged), self.path)


def member_input(info: ModelInfo) -> MemberInput:
    pre = info.preprocessing
    return MemberInput(pre.img_size, tuple(pre.mean), tuple(pre.std))


def ensemble_info(ensemble: Ensemble, members: Sequence[ModelInfo]) -> ModelInfo:
    """How the one-graph ensemble is fed and described: the preprocessing of its largest member (the
    others are resized inside the graph), the ensemble's thresholds, the members' types and heads."""
    largest = max(members, key=lambda info: info.preprocessing.img_size)
    types = " + ".join(f"{n} x {t}" for t, n in Counter(info.model_type for info in members).items())
    heads = "/".join(Counter(info.head for info in members))
    tta = ", TTA inside" if ensemble.tta else ""
    thresholds = None if ensemble.thresholds is None else tuple(map(float, ensemble.thresholds))
    return dataclasses.replace(largest, name=f"ensemble of {len(members)}{tta}", model_type=types, head=heads,
                               thresholds=thresholds, fold=-1)


def ensemble_module(ensemble: Ensemble, members: Sequence[Predictor]) -> tuple[MeanOfProbabilities, ModelInfo]:
    """The members' networks as one module (TTA inside when the file says so) and its :class:`ModelInfo`."""
    infos = [m.info for m in members]
    info = ensemble_info(ensemble, infos)
    module = MeanOfProbabilities([m.model for m in members], [member_input(i) for i in infos], ensemble.weights,
                                 member_input(info), ensemble.tta)
    return module.eval(), info
