"""Inference backends side by side: PyTorch eager, ONNX Runtime, OpenVINO (FP32 and INT8) and torch.compile.

Each model (the demo Swin, and EfficientNet-Lite0 at 224 and 256 px) is timed on a batch of synthetic
leaves put through its own evaluation transform (the model alone: decoding and loading are
bench/infer_speed.py's subject), at batch 1 and batch 32. Repeats are interleaved so that machine
load hits every backend alike (on shared cores only such ratios mean anything); the best repeat is
reported, with its ratios to eager and to ONNX Runtime FP32 and its largest probability difference
from eager (a backend is only worth picking when it is correct). The INT8 rows quantise the file
as ``export.py --int8`` does, calibrated on the same synthetic leaves: their speed is the point (with
random weights their difference from FP32 says nothing about a trained model's; export.py's decision
check does). torch.compile needs a C++ compiler on the CPU; where it fails, the table says why.

    python bench/infer_backends.py [--batch-sizes 1 32] [--repeats 3] [--seconds 3] [--models Lite0] [--no-int8]
"""
from __future__ import annotations

import argparse
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from config import get_config
from deploy.export import export_checked, parity_images
from deploy.onnx_backend import OnnxModel, OnnxPredictor, info_to_metadata, open_session
from deploy.openvino_backend import OpenVinoPredictor
from deploy.quantize import quantize_int8, with_metadata
from inference import Predictor
from models import build_model

# (label, config, opts): the demo's Swin, and EfficientNet-Lite0 (the CNN with packaged weights) at 224 px
# and at the 256 px of its CPU recipe (configs/effnet_lite0_cpu.yaml)
MODELS = (
    ("demo Swin 160px", "configs/demo_cpu.yaml", []),
    ("EfficientNet-Lite0 224px", "", ["MODEL.TYPE", "tf_efficientnet_lite0", "DATA.IMG_SIZE", "224"]),
    ("EfficientNet-Lite0 256px", "", ["MODEL.TYPE", "tf_efficientnet_lite0", "DATA.IMG_SIZE", "256"]),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements of each backend")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measurement")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compilation takes minutes)")
    parser.add_argument("--no-int8", action="store_true", help="skip the INT8 rows (quantisation takes seconds)")
    parser.add_argument("--models", nargs="+", default=[], metavar="TEXT",
                        help="only the models whose label contains one of these (e.g. Lite0)")
    return parser.parse_args(argv)


def cpu_name() -> str:
    """The processor's model name (platform.processor() is empty on Linux)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def random_predictor(cfg: str, opts: list[str]) -> Predictor:
    """The config's model with seeded random weights (speed and parity do not depend on training)."""
    config = get_config(argparse.Namespace(cfg=cfg, opts=opts or None))
    torch.manual_seed(0)
    return Predictor(build_model(config).eval(), config, Path(cfg or "cnn"), torch.device("cpu"), None)


def backends(predictor: Predictor, compile_too: bool, int8_too: bool) -> dict[str, nn.Module | str]:
    """name -> callable model, or the reason it is not available."""
    data, _ = export_checked(predictor.model, predictor.info, predictor.path)
    found: dict[str, nn.Module | str] = {
        "torch eager": predictor.model, "onnxruntime": OnnxModel(open_session(data, predictor.path)),
        "openvino": OpenVinoPredictor.from_bytes(data, predictor.path).model}
    if int8_too:
        calibration = parity_images(predictor.info.preprocessing).numpy()
        int8 = with_metadata(quantize_int8(data, calibration), info_to_metadata(predictor.info))
        found["ort int8"] = OnnxPredictor.from_bytes(int8, predictor.path).model
        found["openvino int8"] = OpenVinoPredictor.from_bytes(int8, predictor.path).model
    found["torch.compile"] = torch.compile(predictor.model) if compile_too else "skipped (--no-compile)"
    return found


@torch.inference_mode()
def run_for(model: Callable, batch: torch.Tensor, seconds: float) -> float:
    """img/s of ``model`` on ``batch`` over about ``seconds`` (at least two calls)."""
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        model(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - start)


@torch.inference_mode()
def prob_difference(model: Callable, reference: nn.Module, batch: torch.Tensor) -> float:
    return (torch.sigmoid(model(batch)) - torch.sigmoid(reference(batch))).abs().max().item()


def measure(label: str, found: dict[str, nn.Module | str], images: torch.Tensor, batch_size: int,
            args: argparse.Namespace) -> list[str]:
    """Table rows of one model at one batch size."""
    batch = images.repeat(-(-batch_size // len(images)), 1, 1, 1)[:batch_size]
    ready: dict[str, Callable] = {}
    rows = []
    for name, model in found.items():
        if isinstance(model, str):
            rows.append(f"{label:26s} {batch_size:5d}  {name:14s} {'n/a':>8s}  {model}")
            continue
        try:
            difference = prob_difference(model, found["torch eager"], batch)  # also the warm-up / compilation
        except Exception as error:  # noqa: BLE001 - a backend that fails here is reported, not fatal
            rows.append(f"{label:26s} {batch_size:5d}  {name:14s} {'n/a':>8s}  {type(error).__name__}: "
                        f"{str(error).splitlines()[0][:80]}")
            continue
        ready[name] = model
        rows.append((name, difference))
    rates = {name: [] for name in ready}
    for _ in range(args.repeats):
        for name, model in ready.items():
            rates[name].append(run_for(model, batch, args.seconds))
    eager, ort = max(rates["torch eager"]), max(rates["onnxruntime"])
    return [row if isinstance(row, str) else
            f"{label:26s} {batch_size:5d}  {row[0]:14s} {max(rates[row[0]]):8.1f}  {max(rates[row[0]]) / eager:7.2f}x"
            f"  {max(rates[row[0]]) / ort:6.2f}x   {row[1]:.1e}" for row in rows]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"{cpu_name()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
          f"onnxruntime {version('onnxruntime')}, openvino {version('openvino')}")
    print(f"{'model':26s} {'batch':>5s}  {'backend':14s} {'img/s':>8s}  {'vs eager':>8s}  {'vs ORT':>7s}  "
          f"max |prob diff|")
    for label, cfg, opts in MODELS:
        if args.models and not any(text in label for text in args.models):
            continue
        # A fresh compiler per model: compiling a second model after the first one's graphs stalled for
        # more than ten minutes here (torch 2.14, CPU); after a reset it takes seconds.
        torch._dynamo.reset()
        predictor = random_predictor(cfg, opts)
        found = backends(predictor, not args.no_compile, not args.no_int8)
        images = parity_images(predictor.info.preprocessing)
        for batch_size in args.batch_sizes:
            print("\n".join(measure(label, found, images, batch_size, args)), flush=True)


if __name__ == "__main__":
    main()
