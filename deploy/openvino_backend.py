"""OpenVINO as a second CPU runtime for the same ``.onnx`` export.py writes (``--backend openvino``).

OpenVINO reads the ONNX file itself (no conversion step, no second file) and keeps its
``metadata_props`` in the model's ``rt_info["framework"]``, so the :class:`inference.ModelInfo`
comes back exactly as ONNX Runtime reads it and test.py's preprocessing, batching and TTA run
unchanged. Two settings differ from OpenVINO's defaults, both for the same reasons as ONNX
Runtime's session options:

- ``INFERENCE_PRECISION_HINT f32``: on CPUs with AMX or AVX-512 BF16 OpenVINO computes FP32 models
  in bfloat16 by default (probabilities 2e-3 to 6e-3 away from FP32 on EfficientNet-Lite0): fast,
  but not the model that was validated. An INT8 file runs its quantised operators in INT8 either way.
- ``ENABLE_CPU_PINNING False``: threads pinned to cores that a training job shares ran at 0.7x here.

Importing this module also keeps OpenVINO's usage telemetry out: ``import openvino`` imports its
converter, whose telemetry writes a client id into ``~/intel`` (the official opt-out writes there
too); without the ``openvino_telemetry`` package the converter takes its own no-op stub.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import ClassVar, Self

import numpy as np

from deploy.onnx_backend import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportedModel,
    OnnxPredictor,
    check_input_size,
    info_from_metadata,
    read_quantization,
    require_finite_initializers,
)

sys.modules.setdefault("openvino_telemetry", None)  # an ImportError for openvino's converter: its no-op stub
import openvino as ov  # noqa: E402 - after the telemetry opt-out above

COMPILE_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False, "PERFORMANCE_HINT": "LATENCY"}
# One Core for the process, alive as long as any model it compiled: a compiled model outliving the Core
# (and the CPU plugin it loaded) is what OpenVINO's documentation warns against.
CORE = ov.Core()


class OpenVinoModel(ExportedModel):
    """A model compiled by OpenVINO for the CPU, as a module."""

    def __init__(self, compiled: ov.CompiledModel):
        super().__init__()
        self.compiled = compiled
        self.output = compiled.output(OUTPUT_NAME)

    def run(self, images: np.ndarray) -> np.ndarray:
        # A request per call: a compiled model's own request is not safe for the app's concurrent requests.
        return self.compiled.create_infer_request().infer({INPUT_NAME: images})[self.output]


def read_model(data: bytes, name: Path) -> ov.Model:
    """OpenVINO's model of serialised ONNX bytes; unreadable ones are a ValueError naming ``name``."""
    try:
        return CORE.read_model(data)
    except RuntimeError as err:  # OpenVINO raises RuntimeError with its C++ call stack as the message
        lines = [line for line in str(err).splitlines() if line.strip() and not line.startswith("Exception from")]
        reason = lines[0] if lines else "OpenVINO could not read it"
        raise ValueError(f"{name}: not a readable ONNX model ({reason})") from None


def framework_metadata(model: ov.Model) -> dict[str, str]:
    """The ONNX file's ``metadata_props``, as OpenVINO's ONNX reader keeps them."""
    info = model.get_rt_info()
    return {key: value.astype(str) for key, value in info["framework"].items()} if "framework" in info else {}


# Compiles a model file in a child process (telemetry kept out as above); only its exit status matters.
COMPILE_PROBE = ("import sys; sys.modules.setdefault('openvino_telemetry', None); import openvino as ov; "
                 "core = ov.Core(); core.compile_model(core.read_model(sys.argv[1]), 'CPU', eval(sys.argv[2]))")


def check_compiles_apart(data: bytes, path: Path) -> None:
    """Compile ``data`` in a child process first, so that a crash of OpenVINO's compiler is an error here.

    OpenVINO 2026.4 dies of a segfault compiling some INT8 (QDQ) graphs, the demo Swin's among them,
    which would take test.py or the web page down without a word; EfficientNet-Lite's and ViT's compile.
    """
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "model.onnx"
        probe.write_bytes(data)
        child = subprocess.run([sys.executable, "-c", COMPILE_PROBE, str(probe), repr(COMPILE_CONFIG)],
                               capture_output=True, text=True)
    if child.returncode < 0:
        raise ValueError(f"{path}: OpenVINO {ov.__version__} crashed compiling this model (signal "
                         f"{-child.returncode}); run it with --backend onnx")


def refuse_unchecked_int8(record: dict, path: Path) -> None:
    """An INT8 file whose decision check failed on OpenVINO at export is refused here: its INT8 kernels
    can decide very differently from ONNX Runtime's (EfficientNet-Lite0 on real leaves: validation
    macro-F1 0.58 against 0.89), and nothing else would say so."""
    if record.get("openvino_admitted") is False:
        found, fp32 = record.get("openvino_macro_f1"), record.get("fp32_macro_f1")
        measured = f" (macro-F1 {found:.4f} against FP32's {fp32:.4f})" if None not in (found, fp32) else ""
        raise ValueError(f"{path}: this INT8 file failed its decision check on OpenVINO at export{measured}; "
                         "run it with --backend onnx")


class OpenVinoPredictor(OnnxPredictor):
    """An exported model in OpenVINO (CPU), with the interface of ``inference.Predictor``."""

    backend: ClassVar[str] = "openvino"

    @classmethod
    def from_bytes(cls, data: bytes, path: Path) -> Self:
        """A serialised export compiled by OpenVINO, checked as ONNX Runtime's are; ``path`` names it in errors."""
        model = read_model(data, path)
        metadata = framework_metadata(model)
        info = info_from_metadata(metadata, path)
        check_input_size(info, input_dims(model), path)
        require_finite_initializers(data, path)
        record = read_quantization(metadata, path)
        if record is not None:
            refuse_unchecked_int8(record, path)
            check_compiles_apart(data, path)  # where OpenVINO's compiler has been seen to crash
        return cls(OpenVinoModel(CORE.compile_model(model, "CPU", COMPILE_CONFIG)), info, Path(path))


def input_dims(model: ov.Model) -> list[int | None]:
    """The dimensions of the model's image input (None where dynamic); [] when it has no such input."""
    found = [port for port in model.inputs if INPUT_NAME in port.get_names()]
    if not found:
        return []
    return [dim.get_length() if dim.is_static else None for dim in found[0].get_partial_shape()]
