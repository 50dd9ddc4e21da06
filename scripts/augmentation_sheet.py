"""Picture what a config's training augmentation does: N leaves x M seeded draws, and the batch mixup/cutmix makes.

    python scripts/augmentation_sheet.py --cfg configs/demo_cpu.yaml --data-path demo/dataset [--draws 6] [--seed 0]
    python scripts/augmentation_sheet.py --cfg configs/demo_cpu.yaml --images leaf1.jpg leaf2.jpg --output aug.png

Without ``--images``, the leaves are the first training leaf of each class of the tree (``--data-path``, else
the config's DATA.DATA_PATH), with their labels. Written to ``--output`` (default: ``augmentations.png`` in the
config's run dir). The same config and seed give the same sheet.
Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
from argparse import Namespace
from pathlib import Path

import numpy as np

from config import get_config
from data.dataset import first_leaf_of_each_class
from data.labels import CLASSES
from explain.augmentations import augmentation_sheet
from training.rundir import RunDir
from utils.cli import run_cli
from utils.errors import EXIT_OK
from utils.files import atomic_write_bytes


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", required=True, metavar="FILE", help="config yaml whose training transform is drawn")
    parser.add_argument("--opts", nargs="+", default=None, help="KEY VALUE pairs overriding the config")
    parser.add_argument("--data-path", help="prepared tree (default: the config's DATA.DATA_PATH)")
    parser.add_argument("--images", nargs="+", type=Path, help="these photos instead of the tree's (no labels)")
    parser.add_argument("--draws", type=int, default=6, help="draws of the transform per leaf (default: 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    parser.add_argument("--output", type=Path, help="PNG to write (default: RUN_DIR/augmentations.png)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.draws < 1:
        raise ValueError(f"--draws must be at least 1, got {args.draws}")
    config = get_config(Namespace(cfg=args.cfg, opts=args.opts, data_path=args.data_path))
    if args.images:
        leaves = [(path, np.zeros(len(CLASSES), np.float32)) for path in args.images]
    else:
        leaves = first_leaf_of_each_class(config.DATA.DATA_PATH, "train")
    output = args.output or RunDir.of(config).path / "augmentations.png"
    atomic_write_bytes(augmentation_sheet(config, leaves, args.draws, args.seed, Path(args.cfg).name), output)
    print(f"wrote {output}")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
