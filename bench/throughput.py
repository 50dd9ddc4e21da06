"""Model-only and loader-only images per second of a config, each measured on its own.

The model runs inference on one synthetic batch (no data loading); the loader decodes and augments
the training split (no model). Their ratio says whether training waits on the data.

    python bench/throughput.py --cfg configs/demo_cpu.yaml --data-path demo/dataset [--batch-size 32]
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, ContextManager, Iterable

import torch
from torch import nn

from config import get_config
from data.loader import build_loader
from models import build_model
from utils.cli import run_cli
from utils.errors import EXIT_OK
from utils.runtime import amp_dtype, autocast_factory, place_model, select_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", required=True, help="config whose model and loader are measured")
    parser.add_argument("--data-path", help="prepared tree (default: the config's DATA.DATA_PATH)")
    parser.add_argument("--batch-size", type=int, help="default: DATA.BATCH_SIZE of the config")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: DEVICE of the config")
    parser.add_argument("--opts", nargs="+", default=None, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def model_throughput(model: nn.Module, images: torch.Tensor, autocast: Callable[[], ContextManager],
                     warmup: int = 5, iterations: int = 20) -> float:
    """Model-only inference images/s on a fixed batch (no data loading)."""
    model.eval()
    for _ in range(warmup):
        with autocast():
            model(images)
    synchronize(images.device)
    start = time.perf_counter()
    for _ in range(iterations):
        with autocast():
            model(images)
    synchronize(images.device)
    return iterations * len(images) / (time.perf_counter() - start)


def loader_throughput(loader: Iterable, max_batches: int = 50) -> float:
    """Loader-only images/s (decode + augmentation), timed from the second batch on (after worker start-up)."""
    counts, times = [], [time.perf_counter()]
    for images, _ in loader:
        counts.append(len(images))
        times.append(time.perf_counter())
        if len(counts) >= max_batches:
            break
    if len(counts) > 1:
        return sum(counts[1:]) / max(times[-1] - times[1], 1e-9)
    return sum(counts) / max(times[-1] - times[0], 1e-9)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = get_config(args)
    device = select_device(config.DEVICE)
    model = place_model(build_model(config), config, device)
    size = config.DATA.IMG_SIZE
    images = torch.randn(config.DATA.BATCH_SIZE, 3, size, size, device=device)
    model_rate = model_throughput(model, images, autocast_factory(device, amp_dtype(config, device)))
    print(f"model throughput: {model_rate:.1f} img/s ({config.MODEL.TYPE}, batch {len(images)}, {size} px, "
          f"{device}, inference)")
    _, _, loader_train, _, _ = build_loader(config)
    loader_rate = loader_throughput(loader_train)
    print(f"loader throughput: {loader_rate:.1f} img/s ({config.DATA.NUM_WORKERS} workers, training transforms)")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
