"""CPU training speed of a config's model: glibc's default allocator vs kept memory, NCHW vs channels-last.

Each of the four variants trains the config's model (``build_model``, BCE, AdamW) on one in-memory
batch of random tensors for ``--steps`` optimizer steps, in a process of its own (``keep_freed_memory``
is process-wide). Repeats are interleaved, so that machine load hits every variant alike; the table
gives the median seconds per step, the system (kernel) time per step and the ratio to the default.

    python bench/cpu_train_speed.py [--cfg configs/effnet_lite0_cpu.yaml] [--steps 4] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from config import get_config
from data.labels import NUM_CLASSES
from models import build_model
from utils.runtime import keep_freed_memory, place_model

VARIANTS = {  # name: (keep freed memory, channels-last)
    "default": (False, False),
    "kept memory": (True, False),
    "channels-last": (False, True),
    "kept memory + channels-last": (True, True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", default="configs/effnet_lite0_cpu.yaml", help="config whose model is measured")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per measurement (after a warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements of each variant")
    parser.add_argument("--opts", nargs="+", default=[], help="KEY VALUE config overrides")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one measurement, in a child
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> dict:
    """Seconds and kernel seconds per training step of one variant, in this process."""
    keep_memory, channels_last = VARIANTS[args.variant]
    if keep_memory and not keep_freed_memory():
        raise SystemExit("keep_freed_memory() does not apply here (not glibc, or MALLOC_*/LD_PRELOAD set)")
    config = get_config(argparse.Namespace(cfg=args.cfg, opts=[*args.opts, "CHANNELS_LAST", str(channels_last),
                                                               "MODEL.PRETRAINED", ""],
                                           output=tempfile.mkdtemp(prefix="cpu_speed_")))
    torch.manual_seed(0)
    model = place_model(build_model(config), config, torch.device("cpu")).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size, batch = config.DATA.IMG_SIZE, config.DATA.BATCH_SIZE
    images, targets = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch, NUM_CLASSES)).float()

    def step() -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images, targets), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"s_per_step": seconds / args.steps, "sys_per_step": (after.ru_stime - before.ru_stime) / args.steps}


def child_command(args: argparse.Namespace, variant: str) -> list[str]:
    return [sys.executable, __file__, "--cfg", args.cfg, "--steps", str(args.steps), "--variant", variant,
            *(["--opts", *args.opts] if args.opts else [])]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(measure(args)))
        return
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name in VARIANTS:
            out = subprocess.run(child_command(args, name), check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"repeat {repeat + 1}/{args.repeats} {name}: {runs[name][-1]['s_per_step']:.2f} s/step", flush=True)
    base = statistics.median(r["s_per_step"] for r in runs["default"])
    print(f"\n{args.cfg} {' '.join(args.opts)}: training step on {torch.get_num_threads()} threads, median of "
          f"{args.repeats}")
    print(f"{'variant':30} {'s/step':>7} {'sys s/step':>10} {'speed-up':>8}")
    for name, results in runs.items():
        seconds = statistics.median(r["s_per_step"] for r in results)
        kernel = statistics.median(r["sys_per_step"] for r in results)
        print(f"{name:30} {seconds:7.2f} {kernel:10.2f} {base / seconds:7.2f}x")


if __name__ == "__main__":
    main()
