"""Overhead of main.py's training loop over a bare forward/backward/step loop, measured side by side.

Both loops train the same model (``build_model`` of the config) on the same in-memory batches of
random tensors, with the same loss, optimizer and gradient clipping; only the loop differs
(engine.train_one_epoch: AMP context, accumulation logic, NaN check, grad-norm, tqdm, logging,
scheduler, stop checks). Repeats are interleaved so that machine load hits both alike.

    python bench/train_overhead.py [--cfg configs/demo_cpu.yaml] [--batch-size 32] [--steps 5] [--repeats 6]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from config import get_config
from data.labels import NUM_CLASSES
from models import build_model
from training.engine import build_optimizer, train_one_epoch
from training.run import build_trainer
from utils.log import create_logger
from utils.runtime import select_device
from utils.seeding import seed_everything

ACCEPTANCE = 0.95


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", default="configs/demo_cpu.yaml", help="config whose model is measured")
    parser.add_argument("--batch-size", type=int, help="default: DATA.BATCH_SIZE of the config")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per measurement")
    parser.add_argument("--repeats", type=int, default=6, help="interleaved measurements of each loop")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--opts", nargs="+", default=None, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def bare_loop(model, criterion, optimizer, loader, device, clip_grad: float) -> None:
    """The minimal loop with the same arithmetic: forward, loss, backward, clip, step."""
    model.train()
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        loss = criterion(model(images, targets), targets)
        loss.backward()
        if clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = get_config(argparse.Namespace(cfg=args.cfg, opts=args.opts, batch_size=args.batch_size,
                                           device=args.device, output=tempfile.mkdtemp(prefix="overhead_")))
    device = select_device(config.DEVICE)
    seed_everything(config.SEED)
    batch, size = config.DATA.BATCH_SIZE, config.DATA.IMG_SIZE
    images = torch.randn(args.steps * batch, 3, size, size)
    targets = (torch.rand(args.steps * batch, NUM_CLASSES) < 0.3).float()
    loader = DataLoader(TensorDataset(images, targets), batch_size=batch, drop_last=True)
    logger = create_logger(config.OUTPUT, 0, name="train_overhead")

    model = build_model(config).to(device)
    trainer = build_trainer(config, model, device, len(loader), mixup_fn=None, logger=logger)
    bare_optimizer = build_optimizer(config, model)

    def run_engine() -> None:
        train_one_epoch(trainer, loader, 0, 1, logger)

    def run_bare() -> None:
        bare_loop(model, trainer.criterion, bare_optimizer, loader, device, config.TRAIN.CLIP_GRAD)

    loops = {"main.py engine": run_engine, "bare loop": run_bare}
    rates: dict[str, list[float]] = {name: [] for name in loops}
    run_engine(), run_bare()  # warm-up: allocator, kernels, optimizer state
    for repeat in range(args.repeats):
        # Alternate which loop goes first, so that drifting machine load favours neither.
        for name in sorted(loops, reverse=repeat % 2 == 1):
            start = time.perf_counter()
            loops[name]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            rates[name].append(len(loader) * batch / (time.perf_counter() - start))
    engine_rate, bare_rate = (statistics.median(r) for r in rates.values())
    # Each repeat ran both loops back to back: the median of those paired ratios resists load changes.
    ratio = statistics.median(e / b for e, b in zip(rates["main.py engine"], rates["bare loop"]))
    print(f"model {config.MODEL.TYPE} ({config.MODEL.HEAD} head, PSA {config.MODEL.PSA.ENABLE}), "
          f"batch {batch}, {size}px, {device}, {args.steps} steps x {args.repeats} interleaved repeats")
    runs = {name: ", ".join(f"{r:.2f}" for r in values) for name, values in rates.items()}
    print(f"main.py training : {engine_rate:8.2f} img/s   (runs: {runs['main.py engine']})")
    print(f"bare timm loop   : {bare_rate:8.2f} img/s   (runs: {runs['bare loop']})")
    print(f"ratio            : {ratio:.3f}  (median of paired runs; {'ok' if ratio >= ACCEPTANCE else 'BELOW'} "
          f"the {ACCEPTANCE} acceptance)")


if __name__ == "__main__":
    main()
