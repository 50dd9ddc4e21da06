"""ONNX Runtime as a second inference backend: an exported file is enough to predict.

An ``.onnx`` written by ``deploy.onnx_export`` has one input ``images`` (float32, N x 3 x H x W,
normalised RGB, any N) and one output ``logits`` (N x 6; sigmoid gives the probabilities), and
carries its :class:`inference.ModelInfo` in ``metadata_props``: classes, thresholds, input size,
resize/crop, interpolation, mean and std (every value JSON-encoded; no absolute path of the machine
that exported it). ``OnnxPredictor`` reads them back, checked (a file edited by hand is refused
with one line, as is one whose weights are not finite), so test.py's preprocessing, batching, TTA
and tables run unchanged on it.
``ExportedModel`` and ``OnnxPredictor`` are also the base of the OpenVINO backend
(``deploy.openvino_backend``), which reads the same file: only who runs the graph differs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Mapping, Self, Sequence

import numpy as np
import onnxruntime as ort
import torch
from timm.data.transforms import str_to_interp_mode
from torch import nn

from data.labels import CLASSES
from data.transforms import EvalPreprocessing
from evaluation.inference import ModelInfo, predict_logits, require_finite
from evaluation.thresholds import check_thresholds

INPUT_NAME, OUTPUT_NAME = "images", "logits"
# Marks a file written by deploy.onnx_export; bumped when the keys below change meaning.
FORMAT_KEY, FORMAT_VERSION = "leaf_swin_format", "1"
_PREPROCESSING_KEYS = tuple(f.name for f in dataclasses.fields(EvalPreprocessing))
_INFO_KEYS = tuple(f.name for f in dataclasses.fields(ModelInfo) if f.name != "preprocessing")
# Keys a file may lack, read as ModelInfo's default: fold and thresholds_from were added since FORMAT_VERSION 1,
# and data_path is left out when it is absolute (the exporting machine's folders, no use on another machine).
_OPTIONAL_KEYS = ("fold", "thresholds_from", "data_path")
# Numbers of the ``quantization`` record of an INT8 file (export.py's quantization_record and OpenVINO check).
_RECORD_NUMBERS = ("fp32_macro_f1", "int8_macro_f1", "openvino_macro_f1", "max_prob_difference")


def info_to_metadata(info: ModelInfo) -> dict[str, str]:
    """``ModelInfo`` as flat ONNX metadata: one key per field, preprocessing fields at top level, JSON values;
    an absolute ``data_path`` is left out."""
    values = dataclasses.asdict(info)
    values.update(values.pop("preprocessing"))
    if Path(values["data_path"]).is_absolute():
        del values["data_path"]
    return {FORMAT_KEY: FORMAT_VERSION, **{key: json.dumps(value) for key, value in values.items()}}


def info_from_metadata(props: Mapping[str, str], path: Path) -> ModelInfo:
    """The inverse of :func:`info_to_metadata`; a file without it, for other classes, or with a value that
    could not have been exported (an unknown interpolation, a std of 0, thresholds out of range, a quantization
    record that is not one) is a ValueError naming the file."""
    if props.get(FORMAT_KEY) != FORMAT_VERSION:
        raise ValueError(f"{path}: not a model written by export.py (no {FORMAT_KEY}={FORMAT_VERSION} metadata)")
    missing = [key for key in (*_PREPROCESSING_KEYS, *_INFO_KEYS) if key not in props and key not in _OPTIONAL_KEYS]
    if missing:
        raise ValueError(f"{path}: its metadata lacks {', '.join(missing)}")
    try:
        values = {key: json.loads(props[key]) for key in (*_PREPROCESSING_KEYS, *_INFO_KEYS) if key in props}
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: unreadable metadata ({err})") from None
    for key, (valid, expected) in _FIELD_CHECKS.items():
        if key in values and not valid(values[key]):
            raise ValueError(f"{path}: its metadata's {key} is {values[key]!r:.60}, not {expected}")
    if values["thresholds"] is not None:
        values["thresholds"] = check_thresholds(values["thresholds"], path).tolist()
    read_quantization(props, path)
    preprocessing = EvalPreprocessing(**{key: _tuples(values.pop(key)) for key in _PREPROCESSING_KEYS})
    info = ModelInfo(preprocessing=preprocessing, **{key: _tuples(value) for key, value in values.items()})
    if info.classes != CLASSES:
        raise ValueError(f"{path}: the model's classes {list(info.classes)} are not this code's {list(CLASSES)}")
    return info


def read_quantization(props: Mapping[str, str], path: Path) -> dict | None:
    """The ``quantization`` record of an INT8 file (None for FP32): a JSON object whose measured numbers are
    finite and whose ``openvino_admitted`` is true or false, else a ValueError naming the file."""
    if "quantization" not in props:
        return None
    try:
        record = json.loads(props["quantization"])
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        raise ValueError(f"{path}: its metadata's quantization is {props['quantization']!r:.60}, not a JSON object")
    bad = [key for key in _RECORD_NUMBERS if key in record and not _finite_number(record[key])]
    if bad or not isinstance(record.get("openvino_admitted", False), bool):
        key = bad[0] if bad else "openvino_admitted"
        raise ValueError(f"{path}: its metadata's quantization record has {key} {record[key]!r:.40}")
    return record


def check_input_size(info: ModelInfo, dims: Sequence[int | str | None], path: Path) -> None:
    """A ValueError naming the file when its metadata's img_size is not its graph's input height and width
    (each image would otherwise fail in the runtime, as if every photo were bad). ``dims``: [] when the graph
    has no input INPUT_NAME."""
    if not dims:
        raise ValueError(f"{path}: its graph has no input {INPUT_NAME!r}")
    size = info.preprocessing.img_size
    if len(dims) != 4 or any(isinstance(d, int) and d != size for d in dims[2:]):
        raise ValueError(f"{path}: its metadata's img_size {size} does not fit its graph's input "
                         f"{' x '.join(map(str, dims))}")


def require_finite_initializers(data: bytes, path: Path) -> None:
    """A ValueError naming the file when a floating-point weight of the graph is NaN or infinite, as a
    checkpoint's are checked: such a file would label every leaf from NaN probabilities."""
    import onnx  # only here: importing it costs a second that predicting does not need otherwise
    from onnx.numpy_helper import to_array

    proto = onnx.load_from_string(data)
    constants = [a.t for node in proto.graph.node if node.op_type == "Constant" for a in node.attribute
                 if a.type == onnx.AttributeProto.TENSOR]
    counts = {}
    for tensor in (*proto.graph.initializer, *constants):
        array = to_array(tensor)
        if np.issubdtype(array.dtype, np.floating):
            counts[tensor.name] = int((~np.isfinite(array)).sum())
    bad = [name for name, count in counts.items() if count]
    if bad:
        raise ValueError(f"{path}: {sum(counts.values())} non-finite values in its weights (first: {bad[0]})")


def _finite_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _integer(minimum: int) -> Callable[[object], bool]:
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _channels(value: object, positive: bool = False) -> bool:
    """Three finite numbers (above 0 with ``positive``): a mean or a std."""
    return (isinstance(value, list) and len(value) == 3 and all(_finite_number(v) for v in value)
            and (not positive or all(v > 0 for v in value)))


def _interpolation(value: object) -> bool:
    try:
        str_to_interp_mode(value)
    except (KeyError, TypeError):
        return False
    return True


# Every metadata value whose type or range the code relies on: (check, what it must be).
_FIELD_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    **{key: (lambda v: isinstance(v, str), "a string")
       for key in ("name", "model_type", "head", "data_path", "thresholds_from")},
    "batch_size": (_integer(1), "an integer of at least 1"),
    "num_workers": (_integer(0), "an integer of at least 0"),
    "fold": (_integer(-1), "an integer of at least -1"),
    "img_size": (_integer(1), "an integer of at least 1"),
    "crop": (lambda v: isinstance(v, bool), "true or false"),
    "interpolation": (_interpolation, "an interpolation timm knows (bicubic, bilinear, ...)"),
    "mean": (_channels, "3 finite numbers"),
    "std": (lambda v: _channels(v, positive=True), "3 finite numbers above 0"),
}


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
        """A serialised export opened in this backend's runtime, checked; ``path`` names it in errors."""
        session = open_session(data, path)
        info = info_from_metadata(session.get_modelmeta().custom_metadata_map, path)
        inputs = {node.name: node.shape for node in session.get_inputs()}
        check_input_size(info, inputs.get(INPUT_NAME, []), path)
        require_finite_initializers(data, path)
        return cls(OnnxModel(session), info, Path(path))

    @property
    def thresholds(self) -> tuple[float, ...] | None:
        return self.info.thresholds

    @property
    def transform(self) -> Callable:
        return self.info.preprocessing.transform()

    def logits(self, loader: Iterable, tta: bool = False) -> tuple[np.ndarray, list]:
        """Logits (N, 6) in loader order, and the second item of every sample (targets or load errors)."""
        logits, extras = predict_logits(self.model, loader, self.device, tta)
        return require_finite(logits, self.path), extras
