"""Which library computes the logits: ``--backend auto|torch|onnx|openvino`` for test.py and app.py.

- ``torch``: the checkpoint's network in PyTorch (CPU or CUDA); what Grad-CAM needs.
- ``onnx``: ONNX Runtime on the CPU, from an ``.onnx`` written by export.py, or from a checkpoint
  exported in memory first (parity-checked against PyTorch; nothing written).
- ``openvino``: OpenVINO on the CPU, from the same files (``deploy.openvino_backend``).
- ``auto`` (the default): the fastest correct backend without paying an export on every run. An
  ``.onnx`` runs on the runtime :func:`fastest_runtime` picks (OpenVINO for transformers and for INT8
  files checked on it, ONNX Runtime otherwise); a checkpoint on a GPU runs on PyTorch; a checkpoint on
  the CPU runs the same way when export.py's file for it sits beside it (same name, ``.onnx``, written
  after the checkpoint, same model and preprocessing), else on PyTorch. Either runtime is several
  times PyTorch's speed on a CPU (``bench/infer_backends.py``), so ``export.py`` once is the way.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from deploy.onnx_backend import OnnxPredictor, read_quantization
from evaluation.inference import Backend, ModelInfo, Predictor
from models.family import TRANSFORMERS, family
from training.rundir import onnx_file

RUNTIMES = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}  # the CPU runtimes of an exported file
BACKENDS = ("auto", "torch", *RUNTIMES)
# auto's runtime, as measured by bench/infer_backends.py (experiments/benchmarks.md): OpenVINO ran Swin and ViT graphs
# 1.75x to 2x ONNX Runtime's speed in FP32, and INT8 graphs 1.5x; CNNs in FP32 no faster (0.9x to 1.2x).
AUTO_RUNTIME = "onnx"


def is_onnx_file(path: Path) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def load_predictor(path: Path, backend: str, device: torch.device, logger: logging.Logger) -> Backend:
    """The predictor of ``path`` (a checkpoint or an ``.onnx``) on ``backend``."""
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if is_onnx_file(path):
        if backend == "torch":
            raise ValueError(f"{path}: an ONNX file runs on --backend {' or '.join(RUNTIMES)} (or auto), not torch")
        if backend == "auto":
            return auto_runtime(path, logger)
        return runtime(backend).from_file(path)
    predictor = Predictor.from_checkpoint(path, device)
    if backend in RUNTIMES:
        if device.type != "cpu":
            logger.warning(f"the {backend} backend runs on the CPU ({RUNTIMES[backend]}), not on {device}")
        return exported(predictor, backend, logger)
    if backend == "auto" and device.type == "cpu":
        return export_beside(predictor, logger) or predictor
    return predictor


def auto_runtime(path: Path, logger: logging.Logger) -> OnnxPredictor:
    """An exported file on the runtime :func:`fastest_runtime` names, which the log says."""
    predictor = OnnxPredictor.from_file(path)
    name, reason = fastest_runtime(predictor)
    logger.info(f"backend auto: {path.name} on {RUNTIMES[name]}{reason}")
    return predictor if name == "onnx" else runtime(name).from_file(path)


def fastest_runtime(predictor: OnnxPredictor) -> tuple[str, str]:
    """(runtime, why) for an exported file: OpenVINO for a transformer's FP32 graph (exact to 1e-7 there) and
    for an INT8 file whose decisions export.py also checked on OpenVINO; ONNX Runtime for the rest."""
    record = read_quantization(predictor.model.session.get_modelmeta().custom_metadata_map, predictor.path)
    if record is not None:
        if record.get("openvino_admitted"):
            return "openvino", " (an INT8 file whose decisions were checked on it)"
        return AUTO_RUNTIME, ""
    if family(predictor.info.model_type) in TRANSFORMERS:
        return "openvino", f" (faster than ONNX Runtime for {predictor.info.model_type} in FP32)"
    return AUTO_RUNTIME, ""


def runtime(backend: str) -> type[OnnxPredictor]:
    """The predictor class of a runtime of :data:`RUNTIMES`; OpenVINO is imported only when asked for."""
    if backend == "openvino":
        from deploy.openvino_backend import OpenVinoPredictor

        return OpenVinoPredictor
    return OnnxPredictor


def exported(predictor: Predictor, backend: str, logger: logging.Logger) -> OnnxPredictor:
    """``predictor``'s network exported to ONNX in memory and opened in ``backend``'s runtime (parity-checked).

    The exporter (onnx, onnxscript, torch.onnx) is imported here: a run that predicts from a checkpoint
    or an exported file never pays for it at start-up.
    """
    from deploy.onnx_export import export_checked

    data, parity = export_checked(predictor.model, predictor.info, predictor.path)
    logger.info(f"exported {predictor.path.name} to ONNX in memory: max |prob difference| from PyTorch {parity:.1e}")
    return runtime(backend).from_bytes(data, predictor.path)


def export_beside(predictor: Predictor, logger: logging.Logger) -> OnnxPredictor | None:
    """export.py's default output for this checkpoint, when it is up to date and describes the same model."""
    path = onnx_file(predictor.path)
    if not path.is_file() or path.stat().st_mtime < predictor.path.stat().st_mtime:
        return None
    candidate = OnnxPredictor.from_file(path)
    if model_identity(candidate.info) != model_identity(predictor.info):
        logger.warning(f"{path} describes another model than {predictor.path.name}: predicting with PyTorch")
        return None
    name, reason = fastest_runtime(candidate)
    logger.info(f"backend auto: {path.name}, export.py's file for {predictor.path.name}, on {RUNTIMES[name]}{reason}")
    return candidate if name == "onnx" else runtime(name).from_file(path)


def model_identity(info: ModelInfo) -> ModelInfo:
    """What must match for two files to be one model: thresholds may be re-chosen at export, and an absolute
    data path is left out of the exported file; everything else."""
    return dataclasses.replace(info, thresholds=None, thresholds_from="", data_path="")
