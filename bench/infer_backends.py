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

How far from the machine: each model's FLOPs per image (``torch.utils.flop_counter``, a multiply-add
counted as two) times its img/s is the backend's achieved GFLOP/s, printed as a share of the
machine's FP32 peak, measured here as the best of a large float32 GEMM (``torch.mm``, all threads)
timed before and after the models. INT8 rows are shares of that FP32 peak too (INT8 arithmetic has a
higher one), so they may pass 100%.

Then the end-to-end row: a 5-member ensemble of the CPU recipe (EfficientNet-Lite0, 256 px, random
weights) with TTA, 3 flips per member = 15 forward passes per photo, through ``test.py --images`` on
full-size synthetic JPEGs (4000 x 2672, decode included) on each backend; photos/s from the
difference between a run on N photos and one on a single photo (which is also the start-up time:
imports, loading, export, first call).

    python bench/infer_backends.py [--batch-sizes 1 32] [--repeats 3] [--seconds 3] [--models Lite0] [--no-int8]
                                   [--photos 24] [--no-ensemble]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from config import get_config
from deploy.onnx_backend import OnnxModel, OnnxPredictor, info_to_metadata, open_session
from deploy.onnx_export import export_checked, parity_images
from deploy.openvino_backend import OpenVinoPredictor
from deploy.quantize import quantize_int8, with_metadata
from evaluation.ensemble_file import Ensemble
from evaluation.inference import Predictor
from models import build_model
from training.checkpoint import model_state
from utils.files import atomic_save

REPO = Path(__file__).resolve().parents[1]
RECIPE = "configs/effnet_lite0_cpu.yaml"
ENSEMBLE_MEMBERS = 5
PHOTO_SIZE = (4000, 2672)  # Kaggle's photos
# (label, config, opts): the demo's Swin, and EfficientNet-Lite0 (the CNN with packaged weights) at 224 px
# and at the 256 px of its CPU recipe (configs/effnet_lite0_cpu.yaml)
MODELS = (
    ("demo Swin 160px", "configs/demo_cpu.yaml", []),
    ("Swin-T 224px", "configs/swin_tiny_patch4_window7_224.yaml", []),
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
    parser.add_argument("--photos", type=int, default=24, help="full-size photos of the end-to-end ensemble runs")
    parser.add_argument("--no-ensemble", action="store_true", help="skip the end-to-end ensemble rows")
    return parser.parse_args(argv)


def peak_gflops(seconds: float, size: int = 2048) -> float:
    """GFLOP/s of the best of several float32 ``size`` x ``size`` matrix products on all threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):  # warm-up: thread pool, caches, clock
        torch.mm(a, b)
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tick = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - tick) / 1e9)
    return best


@torch.inference_mode()
def gflops_per_image(model: nn.Module, image: torch.Tensor) -> float:
    """Forward FLOPs of one image, a multiply-add counted as two (convolutions, matrix products, attention)."""
    with FlopCounterMode(display=False) as counter:
        model(image[None])
    return counter.get_total_flops() / 1e9


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
        int8 = with_metadata(quantize_int8(data, calibration),
                             {**info_to_metadata(predictor.info), "quantization": json.dumps({"method": "bench"})})
        found["ort int8"] = OnnxPredictor.from_bytes(int8, predictor.path).model
        try:
            found["openvino int8"] = OpenVinoPredictor.from_bytes(int8, predictor.path).model
        except ValueError as error:  # its compiler crashed (in a child process): reported, not fatal
            found["openvino int8"] = str(error).split(": ", 1)[1]
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
            args: argparse.Namespace, gflops: float, peak: float) -> list[str]:
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
    return [row if isinstance(row, str) else result_row(label, batch_size, row[0], max(rates[row[0]]), eager, ort,
                                                        row[1], gflops, peak) for row in rows]


def result_row(label: str, batch_size: int, name: str, rate: float, eager: float, ort: float, difference: float,
               gflops: float, peak: float) -> str:
    achieved = rate * gflops
    return (f"{label:26s} {batch_size:5d}  {name:14s} {rate:8.1f}  {rate / eager:7.2f}x  {rate / ort:6.2f}x  "
            f"{achieved:7.1f} {100 * achieved / peak:5.1f}%   {difference:.1e}")


def write_ensemble(folder: Path) -> Path:
    """ensemble.json of ENSEMBLE_MEMBERS checkpoints of the CPU recipe with seeded random weights, TTA on."""
    config = get_config(argparse.Namespace(cfg=RECIPE, opts=None))
    members = []
    for seed in range(ENSEMBLE_MEMBERS):
        torch.manual_seed(seed)
        path = folder / f"member{seed}.pth"
        atomic_save(model_state(config, build_model(config), None), path)
        members.append(path)
    ensemble = Ensemble(folder / "ensemble.json", tuple(members), (1.0,) * len(members), True, None)
    ensemble.write()
    return ensemble.path


def write_photos(folder: Path, count: int) -> Path:
    """``count`` full-size JPEGs (Kaggle's 4000 x 2672, smooth colour fields with grain) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    field = Image.fromarray(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)).resize(PHOTO_SIZE, Image.BICUBIC)
    grain = rng.normal(0, 6, (PHOTO_SIZE[1], PHOTO_SIZE[0], 3))
    photo = Image.fromarray(np.clip(np.asarray(field, dtype=np.float64) + grain, 0, 255).astype(np.uint8))
    for index in range(count):
        photo.save(folder / f"leaf{index:03d}.jpg", quality=90)
    return folder


def timed_test_py(model: Path, photos: Path, backend: str, output: Path) -> float:
    """Seconds of one ``test.py --images`` run, start-up included."""
    command = [sys.executable, str(REPO / "test.py"), "--checkpoint", str(model), "--images", str(photos),
               "--backend", backend, "--output", str(output)]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - start


def ensemble_rows(count: int) -> list[str]:
    """End to end, per backend: start-up (one photo) and photos/s (N photos minus one photo)."""
    rows = [f"\n{ENSEMBLE_MEMBERS}-member ensemble of {RECIPE} with TTA (15 passes per photo), test.py --images on "
            f"{PHOTO_SIZE[0]} x {PHOTO_SIZE[1]} JPEGs, decode included",
            f"{'model file':28s} {'backend':10s} {'start-up + 1 photo':>18s} {'photos/s':>9s}"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ensemble = write_ensemble(folder)
        graph = folder / "ensemble.onnx"
        subprocess.run([sys.executable, str(REPO / "export.py"), "--checkpoint", str(ensemble), "--output", str(graph)],
                       check=True, capture_output=True, cwd=REPO)
        one, many = write_photos(folder / "one", 1), write_photos(folder / "many", count)
        for model, backend in ((ensemble, "torch"), (ensemble, "onnx"), (graph, "onnx"), (graph, "openvino")):
            single = timed_test_py(model, one, backend, folder / "out")
            batch = timed_test_py(model, many, backend, folder / "out")
            label = "ensemble.json" if model == ensemble else "ensemble.onnx (export.py)"
            rows.append(f"{label:28s} {backend:10s} {single:17.1f}s {(count - 1) / (batch - single):9.2f}")
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print(f"{cpu_name()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
          f"onnxruntime {version('onnxruntime')}, openvino {version('openvino')}")
    peak = peak_gflops(args.seconds)
    print(f"FP32 peak (best 2048 x 2048 float32 GEMM, {torch.get_num_threads()} threads): {peak:.1f} GFLOP/s")
    print(f"{'model':26s} {'batch':>5s}  {'backend':14s} {'img/s':>8s}  {'vs eager':>8s}  {'vs ORT':>7s}  "
          f"{'GFLOP/s':>7s} {'peak':>6s}   max |prob diff|")
    for label, cfg, opts in MODELS:
        if args.models and not any(text in label for text in args.models):
            continue
        # A fresh compiler per model: compiling a second model after the first one's graphs stalled for
        # more than ten minutes here (torch 2.14, CPU); after a reset it takes seconds.
        torch._dynamo.reset()
        predictor = random_predictor(cfg, opts)
        found = backends(predictor, not args.no_compile, not args.no_int8)
        images = parity_images(predictor.info.preprocessing)
        gflops = gflops_per_image(predictor.model, images[0])
        print(f"{label}: {gflops:.2f} GFLOP per image", flush=True)
        for batch_size in args.batch_sizes:
            print("\n".join(measure(label, found, images, batch_size, args, gflops, peak)), flush=True)
    if not args.no_ensemble:
        print("\n".join(ensemble_rows(args.photos)), flush=True)
    print(f"FP32 peak again after the models: {peak_gflops(args.seconds):.1f} GFLOP/s")


if __name__ == "__main__":
    main()
