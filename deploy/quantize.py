"""Static INT8 quantisation of an exported model, and the decision check that admits it (``export.py --int8``).

The FP32 graph of ``deploy.onnx_export`` goes through ONNX Runtime's own tools: ``quant_pre_process``
(shape inference and graph optimisation, as its documentation advises before quantising), then
``quantize_static`` in QDQ format with per-channel INT8 weights and UINT8 activations, whose ranges
are calibrated (MinMax) on leaves of the run's tree put through the model's own evaluation
transform. UINT8 activations (U8S8) rather than the default INT8 (S8S8): on this machine's CPU
ONNX Runtime ran S8S8 no faster than FP32 and U8S8 1.4x to 2.4x faster (experiments/int8.md).

An INT8 model is judged by its decisions, not by a probability tolerance: on the validation split
its macro-F1 at the file's thresholds must stay within :data:`F1_TOLERANCE` of the FP32 model's.
Thresholds re-tuned on the INT8 validation probabilities are kept when they raise its macro-F1.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from data.dataset import MultiLabelImageFolder, TreeSplit
from data.transforms import EvalPreprocessing
from deploy.onnx_backend import INPUT_NAME, OnnxPredictor, info_to_metadata
from evaluation.evaluate import split_logits
from evaluation.inference import ModelInfo, sigmoid
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


WEIGHT_OPS = ("Conv", "MatMul", "Gemm")  # the layers INT8 is for


def float_tail(model: onnx.ModelProto) -> list[str]:
    """The nodes after the graph's last weight layers (no weight layer downstream of them, one upstream): the
    logits' arithmetic, and an ensemble's sigmoid, weighted mean and logit. Left in float: quantised, a mean
    probability near 1 rounds to exactly 1 and its logit to infinity."""
    nodes = list(model.graph.node)  # ONNX keeps them in topological order
    op_of = {node.name: node.op_type for node in nodes}
    producer = {output: node.name for node in nodes for output in node.output}
    consumers: dict[str, list[str]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    after_weights: dict[str, bool] = {}
    for node in nodes:
        after_weights[node.name] = node.op_type in WEIGHT_OPS or any(
            after_weights.get(producer.get(name, ""), False) for name in node.input)
    before_weights: dict[str, bool] = {}
    for node in reversed(nodes):
        before_weights[node.name] = any(
            next_node in before_weights and (before_weights[next_node] or op_of[next_node] in WEIGHT_OPS)
            for output in node.output for next_node in consumers.get(output, []))
    return [node.name for node in nodes
            if after_weights[node.name] and node.op_type not in WEIGHT_OPS and not before_weights[node.name]]


def quantize_int8(fp32: bytes, images: np.ndarray) -> bytes:
    """The statically quantised model of the FP32 ``fp32`` bytes, calibrated on ``images`` (metadata unset);
    the arithmetic after its last weight layers stays in float (:func:`float_tail`)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="int8_") as folder:
        source, prepared, target = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(fp32)
        quant_pre_process(source, prepared)
        quantize_static(prepared, target, LeafBatches(images), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=float_tail(onnx.load(prepared)))
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


# ---------------------------------------------------------------------------------------------
# export.py --int8: calibrate, quantise, admit
# ---------------------------------------------------------------------------------------------


def int8_splits(data_path: Path | None, calib_split: str, info: ModelInfo) -> tuple[TreeSplit, TreeSplit]:
    """(calibration, validation) splits of ``data_path`` (``--data-path``; default: the model's), each checked to
    hold leaves: a missing or half-prepared tree is bad input, said before minutes of FP32 export and quantisation."""
    data_path = Path(data_path or info.data_path)
    if not data_path.is_dir():
        raise FileNotFoundError(f"{data_path}: no such prepared tree (--int8 calibrates and checks on one: "
                                "give --data-path)")
    splits = TreeSplit(data_path, calib_split, info.fold), TreeSplit(data_path, "val", info.fold)
    for split in splits:
        split.samples()  # FileNotFoundError or ValueError naming the split
    return splits


def described(split: TreeSplit) -> str:
    """``split`` named from its tree's folder name on: what a file's metadata says, free of this machine's folders."""
    return str(dataclasses.replace(split, data_path=Path(Path(split.data_path).name)))


def int8_export(fp32: bytes, info: ModelInfo, path: Path, output: Path, splits: tuple[TreeSplit, TreeSplit],
                count: int, logger: logging.Logger) -> bytes:
    """The INT8 model of the FP32 bytes, calibrated on ``count`` leaves of the calibration split and admitted by its
    decisions on the validation split (a :class:`deploy.DecisionError` otherwise), with the FP32 file's
    metadata and, when they help, thresholds re-tuned on its own validation probabilities."""
    calibration, val = splits
    images = calibration_images(calibration, info.preprocessing, count)
    logger.info(f"quantising: {QUANTISATION}, calibrated on {len(images)} leaves of {calibration}")
    int8 = with_metadata(quantize_int8(fp32, images), info_to_metadata(info))
    workers = min(info.num_workers, os.cpu_count() or 1)
    (_, targets, fp32_logits), (_, _, int8_logits) = (
        split_logits(OnnxPredictor.from_bytes(data, path), val, info.batch_size, workers) for data in (fp32, int8))
    check = check_decisions(targets, sigmoid(fp32_logits), sigmoid(int8_logits), np.asarray(info.thresholds))
    logger.info(f"INT8 decision check on {val} ({check.leaves} leaves): macro-F1 FP32 {check.fp32_f1:.4f}, "
                f"INT8 {check.int8_f1:.4f} at the file's thresholds; max |prob difference| INT8 vs FP32 "
                f"{check.max_difference:.2e}")
    if check.keeps_retuned:
        info = dataclasses.replace(info, thresholds=tuple(map(float, check.retuned)),
                                   thresholds_from=f"tuned on the INT8 model's probabilities of {described(val)}")
        logger.info(f"thresholds re-tuned on the INT8 validation probabilities raise its macro-F1 to "
                    f"{check.retuned_f1:.4f}: the file keeps them ({np.round(check.retuned, 4).tolist()}), and "
                    f"test.py and app.py take them before the run's thresholds.json")
    else:
        logger.info(f"thresholds re-tuned on the INT8 validation probabilities would not raise its macro-F1 "
                    f"({check.retuned_f1:.4f}): the file keeps the FP32 file's")
    require_decisions(check, output)
    record = quantization_record(check, images, calibration)
    int8 = with_metadata(int8, {**info_to_metadata(info), "quantization": json.dumps(record)})
    record.update(openvino_check(int8, info, path, val, workers, targets, check.fp32_f1, logger))
    return with_metadata(int8, {**info_to_metadata(info), "quantization": json.dumps(record)})


def quantization_record(check: DecisionCheck, images: np.ndarray, calibration: TreeSplit) -> dict:
    """The ``quantization`` metadata: how the file was quantised and what its decision check found."""
    return {"method": QUANTISATION, "calibration": f"{len(images)} leaves of {described(calibration)}",
            "validation_leaves": check.leaves, "fp32_macro_f1": round(check.fp32_f1, 6),
            "int8_macro_f1": round(check.f1, 6), "max_prob_difference": check.max_difference}


def openvino_check(int8: bytes, info: ModelInfo, path: Path, val: TreeSplit, workers: int, targets: np.ndarray,
                   fp32_f1: float, logger: logging.Logger) -> dict:
    """The same decision check on OpenVINO's INT8 kernels (they round their own way): when it passes too,
    ``--backend auto`` runs the file on OpenVINO, the faster INT8 runtime here (docs/deploy.md#openvino)."""
    from deploy.openvino_backend import OpenVinoPredictor

    try:
        predictor = OpenVinoPredictor.from_bytes(int8, path)
    except ValueError as err:  # its compiler crashed (in a child process)
        logger.warning(f"INT8 on OpenVINO: {str(err).split(': ', 1)[1]}; auto keeps the file on ONNX Runtime")
        return {"openvino_admitted": False}
    _, _, logits = split_logits(predictor, val, info.batch_size, workers)
    f1 = macro_f1(targets, sigmoid(logits), np.asarray(info.thresholds))
    admitted = f1 >= fp32_f1 - F1_TOLERANCE
    logger.info(f"INT8 on OpenVINO: macro-F1 {f1:.4f} on {val} at the file's thresholds "
                f"({'within' if admitted else 'beyond'} {F1_TOLERANCE} of FP32's): auto runs the file on "
                f"{'OpenVINO' if admitted else 'ONNX Runtime'}")
    return {"openvino_macro_f1": round(f1, 6), "openvino_admitted": bool(admitted)}
