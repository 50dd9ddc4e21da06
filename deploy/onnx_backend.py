"""ONNX Runtime as a second inference backend: an exported file is enough to predict.

An ``.onnx`` written by ``deploy.export`` has one input ``images`` (float32, N x 3 x H x W,
normalised RGB, any N) and one output ``logits`` (N x 6; sigmoid gives the probabilities), and
carries its :class:`inference.ModelInfo` in ``metadata_props``: classes, thresholds, input size,
resize/crop, interpolation, mean and std (every value JSON-encoded). ``OnnxPredictor`` reads
them back, so test.py's preprocessing, batching, TTA and tables run unchanged on it.
``ExportedModel`` and ``OnnxPredictor`` are also the base of the OpenVINO backend
(``deploy.openvino_backend``), which reads the same file: only who runs the graph differs.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Mapping, Self

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from data.labels import CLASSES
from data.transforms import EvalPreprocessing
from inference import ModelInfo, predict_logits

INPUT_NAME, OUTPUT_NAME = "images", "logits"
# Marks a file written by deploy.export; bumped when the keys below change meaning.
FORMAT_KEY, FORMAT_VERSION = "leaf_swin_format", "1"
_PREPROCESSING_KEYS = tuple(f.name for f in dataclasses.fields(EvalPreprocessing))
_INFO_KEYS = tuple(f.name for f in dataclasses.fields(ModelInfo) if f.name != "preprocessing")
_LATER_KEYS = ("fold", "thresholds_from")  # added since FORMAT_VERSION 1: a file without them takes the default


def info_to_metadata(info: ModelInfo) -> dict[str, str]:
    """``ModelInfo`` as flat ONNX metadata: one key per field, preprocessing fields at top level, JSON values."""
    values = dataclasses.asdict(info)
    values.update(values.pop("preprocessing"))
    return {FORMAT_KEY: FORMAT_VERSION, **{key: json.dumps(value) for key, value in values.items()}}


def info_from_metadata(props: Mapping[str, str], path: Path) -> ModelInfo:
    """The inverse of :func:`info_to_metadata`; a file without it, or for other classes, is a ValueError."""
    if props.get(FORMAT_KEY) != FORMAT_VERSION:
        raise ValueError(f"{path}: not a model written by export.py (no {FORMAT_KEY}={FORMAT_VERSION} metadata)")
    missing = [key for key in (*_PREPROCESSING_KEYS, *_INFO_KEYS) if key not in props and key not in _LATER_KEYS]
    if missing:
        raise ValueError(f"{path}: its metadata lacks {', '.join(missing)}")
    try:
        values = {key: json.loads(props[key]) for key in (*_PREPROCESSING_KEYS, *_INFO_KEYS) if key in props}
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: unreadable metadata ({err})") from None
    preprocessing = EvalPreprocessing(**{key: _tuples(values.pop(key)) for key in _PREPROCESSING_KEYS})
    info = ModelInfo(preprocessing=preprocessing, **{key: _tuples(value) for key, value in values.items()})
    if info.classes != CLASSES:
        raise ValueError(f"{path}: the model's classes {list(info.classes)} are not this code's {list(CLASSES)}")
    return info


def _tuples(value: object) -> object:
    """JSON lists back to the tuples of the frozen dataclasses."""
    return tuple(value) if isinstance(value, list) else value


class ExportedModel(nn.Module):
    """An exported graph in a CPU runtime as a module (images -> logits), so that
    ``inference.predict_logits`` and its TTA drive it exactly as they drive the PyTorch network."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(images.detach().cpu().numpy().astype(np.float32, copy=False)))

    def run(self, images: np.ndarray) -> np.ndarray:
        """float32 logits (N, 6) of float32 ``images`` (N, 3, H, W)."""
        raise NotImplementedError


class OnnxModel(ExportedModel):
    """An ONNX Runtime session as a module."""

    def __init__(self, session: ort.InferenceSession):
        super().__init__()
        self.session = session

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]


def open_session(model: str | bytes, name: Path, threads: int = 0) -> ort.InferenceSession:
    """A CPU session of an ONNX file or of serialised bytes; unreadable models are a ValueError naming ``name``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: one per core
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers
    # Idle threads sleep instead of spinning: on a few shared cores the spin steals the time of the
    # DataLoader workers and of other programs (on 2 busy cores it halved ONNX Runtime's own img/s too).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped Fail/InvalidProtobuf errors
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{name}: not a readable ONNX model ({first_line})") from None


@dataclass
class OnnxPredictor:
    """An exported model in ONNX Runtime (CPU), with the interface of ``inference.Predictor``."""

    model: ExportedModel
    info: ModelInfo
    path: Path  # the .onnx, or the checkpoint it was exported from in memory
    device: torch.device = torch.device("cpu")
    backend: ClassVar[str] = "onnx"

    @classmethod
    def from_file(cls, path: Path) -> Self:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        return cls.from_bytes(path.read_bytes(), path)

    @classmethod
    def from_bytes(cls, data: bytes, path: Path) -> Self:
        """A serialised export opened in this backend's runtime; ``path`` names it in errors."""
        return cls.from_session(open_session(data, path), path)

    @classmethod
    def from_session(cls, session: ort.InferenceSession, path: Path) -> "OnnxPredictor":
        info = info_from_metadata(session.get_modelmeta().custom_metadata_map, path)
        return cls(OnnxModel(session), info, Path(path))

    @property
    def thresholds(self) -> tuple[float, ...] | None:
        return self.info.thresholds

    @property
    def transform(self) -> Callable:
        return self.info.preprocessing.transform()

    def logits(self, loader: Iterable, tta: bool = False) -> tuple[np.ndarray, list]:
        """Logits (N, 6) in loader order, and the second item of every sample (targets or load errors)."""
        return predict_logits(self.model, loader, self.device, tta)
