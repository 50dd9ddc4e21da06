"""test.py's batched prediction against one-image-at-a-time loops, measured side by side.

The batched side is test.py's own unlabelled mode (``predict_files``: reduced-size JPEG decoding,
DataLoader workers, batches, CSVs written). It is compared with two loops that decode, transform
and predict one photo after another with the same checkpoint and validation transform:
- "reference loop": ``Image.open(...).convert('RGB')`` in full, as the reference scripts did
  (the acceptance ratio, >= 3);
- "same-decode loop": test.py's own ``load_image``, so its ratio is what batching alone buys.
Photos default to Kaggle's 4000x2672, what users predict on. Repeats are interleaved so that
machine load hits every side alike; the best repeat of each is reported.

    python bench/infer_speed.py [--cfg configs/demo_cpu.yaml | --checkpoint FILE] [--num-images 64]
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from config import get_config
from data.images import load_image
from data.labels import CLASSES
from data.transforms import resolve_normalization
from evaluation.evaluate import predict_files
from evaluation.inference import Predictor, sigmoid
from evaluation.thresholds import DEFAULT_THRESHOLD
from models import build_model
from process.synthesize import parse_size, synthesize
from training.checkpoint import model_state
from training.rundir import RunDir
from utils.files import atomic_save
from utils.runtime import select_device

ACCEPTANCE = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", default="configs/demo_cpu.yaml", help="config of the (untrained) model measured")
    parser.add_argument("--opts", nargs="+", default=None, help="KEY VALUE overrides of --cfg")
    parser.add_argument("--checkpoint", type=Path, help="measure this checkpoint instead")
    parser.add_argument("--num-images", type=int, default=64, help="synthetic photos to predict")
    parser.add_argument("--size", default="4000x2672", help="photo size WIDTHxHEIGHT (Kaggle's by default)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements of each side")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    return parser.parse_args(argv)


def make_checkpoint(cfg: str, opts: list[str] | None, folder: Path) -> Path:
    """A checkpoint of the config's model (seeded random weights) in the format main.py writes."""
    config = resolve_normalization(get_config(argparse.Namespace(cfg=cfg, opts=opts)))
    torch.manual_seed(0)
    path = RunDir(folder).best_checkpoint
    atomic_save(model_state(config, build_model(config), [DEFAULT_THRESHOLD] * len(CLASSES)), path)
    return path


def reference_decode(path: Path) -> Image.Image:
    """What the reference scripts did: a full decode of the photo."""
    with Image.open(path) as image:
        return image.convert("RGB")


@torch.inference_mode()
def one_at_a_time(predictor: Predictor, paths: list[Path], device: torch.device,
                  decode: Callable[[Path], Image.Image]) -> np.ndarray:
    """Decode, transform and predict each photo on its own: the naive loop."""
    transform = predictor.transform
    probs = []
    for path in paths:
        image = transform(decode(path))[None].to(device)
        probs.append(sigmoid(predictor.model(image).float().cpu().numpy().astype(np.float64)))
    return np.concatenate(probs)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="infer_speed_") as work:
        measure(args, Path(work))


def measure(args: argparse.Namespace, work: Path) -> None:
    """Photos and checkpoint in ``work``, then both sides timed and the ratio printed."""
    device = select_device(args.device)
    predictor = Predictor.from_checkpoint(args.checkpoint or make_checkpoint(args.cfg, args.opts, work), device)
    synthesize(work / "raw", args.num_images, seed=0, size=parse_size(args.size))
    paths = sorted((work / "raw" / "train_images").glob("*.jpg"))
    logger = logging.getLogger("infer_speed")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    thresholds = np.full(len(CLASSES), 0.5)

    def batched() -> np.ndarray:
        frame = predict_files(predictor, [str(p) for p in paths], thresholds, args.batch_size, args.num_workers, logger)
        return frame[list(CLASSES)].to_numpy()

    def reference_loop() -> np.ndarray:
        return one_at_a_time(predictor, paths, device, reference_decode)

    decode_size = predictor.info.preprocessing.decode_size

    def same_decode_loop() -> np.ndarray:
        return one_at_a_time(predictor, paths, device, lambda p: load_image(p, decode_size))

    sides = {"test.py (batched)": batched, "reference loop": reference_loop, "same-decode loop": same_decode_loop}
    for run in sides.values():  # warm-up: first-call allocations, oneDNN kernel choice
        run()
    rates: dict[str, list[float]] = {name: [] for name in sides}
    outputs = {}
    for _ in range(args.repeats):
        for name, run in sides.items():
            start = time.perf_counter()
            outputs[name] = run()
            rates[name].append(len(paths) / (time.perf_counter() - start))
    np.testing.assert_allclose(outputs["test.py (batched)"], outputs["same-decode loop"], atol=1e-4,
                               err_msg="batched and looped predictions disagree")
    decode_diff = np.abs(outputs["test.py (batched)"] - outputs["reference loop"]).max()
    best = {name: max(values) for name, values in rates.items()}
    ratio = best["test.py (batched)"] / best["reference loop"]
    batching_ratio = best["test.py (batched)"] / best["same-decode loop"]
    config = predictor.config
    print(f"{config.MODEL.NAME} ({config.MODEL.TYPE}, {config.DATA.IMG_SIZE}px) on {device}, "
          f"{len(paths)} photos of {args.size}, batch {args.batch_size}, {args.num_workers} workers, "
          f"{torch.get_num_threads()} torch threads")
    for name, rate in best.items():
        print(f"  {name:18s} {rate:8.1f} img/s   (repeats: {', '.join(f'{r:.1f}' for r in rates[name])})")
    verdict = "ok" if ratio >= ACCEPTANCE else f"BELOW {ACCEPTANCE}"
    print(f"  ratio vs reference loop   {ratio:.2f} ({verdict}; max |prob difference| from reduced decoding "
          f"{decode_diff:.4f})")
    print(f"  ratio vs same-decode loop {batching_ratio:.2f} (batching and workers alone; identical predictions)")


if __name__ == "__main__":
    main()
