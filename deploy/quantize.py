"""Static INT8 quantisation of an exported model, and the decision check that admits it (``export.py --int8``).

The FP32 graph of ``deploy.onnx_export`` goes through ONNX Runtime's own tools: ``quant_pre_process``
(shape inference and graph optimisation, as its documentation advises before quantising), then
``quantize_static`` in QDQ format with per-channel INT8 weights and UINT8 activations, whose ranges
are calibrated (MinMax) on leaves of the run's tree put through the model's own evaluation
transform. UINT8 activations (U8S8) rather than the default INT8 (S8S8): on this machine's CPU
ONNX Runtime ran S8S8 no faster than FP32 and U8S8 1.4x to 2.4x faster (docs/deploy.md#int8).

An INT8 model is judged by its decisions, not by a probability tolerance: on the validation split
its macro-F1 at the file's thresholds must stay within :data:`F1_TOLERANCE` of the FP32 model's.
Thresholds re-tuned on the INT8 validation probabilities are kept when they raise its macro-F1.
"""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from data.dataset import MultiLabelImageFolder, TreeSplit
from data.transforms import EvalPreprocessing
from deploy.onnx_backend import INPUT_NAME
from evaluation.metrics import multilabel_metrics
from evaluation.thresholds import tune_thresholds
from utils.errors import RunError

F1_TOLERANCE = 0.005  # how far INT8's validation macro-F1 may fall below FP32's
CALIBRATION_BATCH = 8
QUANTISATION = "static INT8 (ONNX Runtime quantize_static, QDQ, per-channel INT8 weights, UINT8 activations, MinMax)"


class DecisionError(RunError):
    """The INT8 model decides worse than FP32 beyond F1_TOLERANCE on validation (or its check measured NaN):
    it is not to be used."""


class LeafBatches:
    """Calibration leaves fed to quantize_static in batches of CALIBRATION_BATCH (a CalibrationDataReader:
    ONNX Runtime recognises one by its ``get_next``)."""

    def __init__(self, images: np.ndarray):
        self.batches = iter(np.array_split(images, max(1, -(-len(images) // CALIBRATION_BATCH))))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def calibration_images(split: TreeSplit, preprocessing: EvalPreprocessing, count: int) -> np.ndarray:
    """``count`` leaves spread evenly over ``split``'s name order (so not one class's names only), through
    the model's evaluation transform: float32 (count, 3, H, W); all of them when the split has fewer."""
    dataset = MultiLabelImageFolder(split, preprocessing.transform())
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int))
    return np.stack([dataset[i][0].numpy() for i in indices]).astype(np.float32)


def quantize_int8(fp32: bytes, images: np.ndarray) -> bytes:
    """The statically quantised model of the FP32 ``fp32`` bytes, calibrated on ``images`` (metadata unset)."""
    # ONNX Runtime's quantisation tools import its transformers package, which appends its own folder to
    # sys.path; its models/ would then shadow this project's ``models`` package (the one top-level name they
    # share) wherever the project is not first on the path (an installed package). The path is put back.
    path = list(sys.path)
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    sys.path[:] = path
    with tempfile.TemporaryDirectory(prefix="int8_") as folder:
        source, prepared, target = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(fp32)
        quant_pre_process(source, prepared)
        quantize_static(prepared, target, LeafBatches(images), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return target.read_bytes()


def with_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    """``data`` with exactly ``metadata`` as its metadata_props (the quantiser adds keys of its own)."""
    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def macro_f1(targets: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> float:
    """test.py's macro-F1 (metrics.csv's ``macro`` row) of ``probs`` at ``thresholds``."""
    return float(multilabel_metrics(targets, probs, thresholds).loc["macro", "f1"])


@dataclass(frozen=True)
class DecisionCheck:
    """INT8 against FP32 on the validation split."""

    fp32_f1: float  # at the FP32 file's thresholds
    int8_f1: float  # at the same thresholds
    retuned_f1: float  # at thresholds re-tuned on the INT8 probabilities
    retuned: np.ndarray
    max_difference: float  # largest |probability difference|
    leaves: int

    @property
    def keeps_retuned(self) -> bool:
        """Re-tuned thresholds help: they raise INT8's macro-F1 on validation."""
        return self.retuned_f1 > self.int8_f1

    @property
    def f1(self) -> float:
        """INT8's macro-F1 at the thresholds the file keeps."""
        return max(self.int8_f1, self.retuned_f1)


def check_decisions(targets: np.ndarray, fp32_probs: np.ndarray, int8_probs: np.ndarray,
                    thresholds: np.ndarray) -> DecisionCheck:
    """How INT8 decides against FP32 on the same labelled leaves, at ``thresholds`` and at its own re-tuned ones."""
    retuned = tune_thresholds(targets, int8_probs)
    return DecisionCheck(macro_f1(targets, fp32_probs, thresholds), macro_f1(targets, int8_probs, thresholds),
                         macro_f1(targets, int8_probs, retuned), retuned,
                         float(np.abs(int8_probs - fp32_probs).max()), len(targets))


def require_decisions(check: DecisionCheck, name: Path) -> None:
    """Raises :class:`DecisionError`, naming the model file ``name``, when INT8's macro-F1 falls more than
    F1_TOLERANCE below FP32's (doing better than FP32 is no reason to refuse it), or when a number of the
    check is NaN or infinite (every comparison with NaN is false: it would pass)."""
    measured = (check.fp32_f1, check.f1, check.max_difference)
    if not all(np.isfinite(measured)):
        raise DecisionError(f"{name}: the INT8 decision check measured non-finite numbers (macro-F1 FP32 "
                            f"{check.fp32_f1}, INT8 {check.f1}, max |prob difference| {check.max_difference})")
    if check.f1 < check.fp32_f1 - F1_TOLERANCE:
        raise DecisionError(f"{name}: INT8 macro-F1 on validation {check.f1:.4f} is {check.fp32_f1 - check.f1:.4f} "
                            f"below FP32's {check.fp32_f1:.4f} (tolerance {F1_TOLERANCE})")
