"""What a config's training pipeline does to a leaf: N leaves x M draws of its training transform, and the batch
mixup/cutmix makes of them, as one sheet with the settings written on it (scripts/augmentation_sheet.py).

Why: a recipe's augmentation is a list of keys; whether it keeps a lesion visible, or crops it away, is seen
in a picture before hours of training. The draws are seeded: the same config and seed give the same sheet.
"""
from __future__ import annotations

import random
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from yacs.config import CfgNode

from data.labels import CLASSES, labels_to_string, vector_to_labels
from data.loader import build_mixup
from data.transforms import build_transform, normalization, unnormalised
from utils.figures import Tile, tile_sheet

MIXED_LABEL = 0.005  # a class shown in a mixed image's title when its target is at least this


def augmentation_settings(config: CfgNode) -> str:
    """The AUG.* keys and the input size, as lines for the sheet's title."""
    keys = ", ".join(f"{key} {value}" for key, value in sorted(config.AUG.items()))
    return "\n".join(textwrap.wrap(f"DATA.IMG_SIZE {config.DATA.IMG_SIZE}; AUG: {keys}", 150))


def seed_draws(seed: int) -> None:
    """The random sources timm's and torchvision's transforms draw from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def augmentation_rows(config: CfgNode, leaves: Sequence[tuple[Path, np.ndarray]], draws: int, seed: int
                      ) -> tuple[list[list[Tile]], list[tuple[str, str]]]:
    """One row per leaf (the photo, then ``draws`` draws of the training transform), and, when the config
    mixes, one row per draw index of the batch that mixup/cutmix makes of the first draws; with row titles."""
    transform, (mean, std, _) = build_transform(True, config), normalization(config)
    seed_draws(seed)
    rows, titles, batches = [], [], []
    for path, target in leaves:
        with Image.open(path) as photo:
            photo = photo.convert("RGB")
        drawn = [transform(photo) for _ in range(draws)]
        batches.append(drawn)
        labels = labels_to_string(vector_to_labels(target))
        titles.append((f"{Path(path).name}: {labels}", "black"))
        pictures = [Tile(np.asarray(unnormalised(t, mean, std)), f"draw {i + 1}") for i, t in enumerate(drawn)]
        rows.append([Tile(photo, "photo"), *pictures])
    mixup = build_mixup(config)
    if mixup is not None and len(leaves) >= 2:
        even = len(leaves) - len(leaves) % 2
        images = torch.stack([batch[0] for batch in batches[:even]])
        targets = torch.tensor(np.stack([target for _, target in leaves[:even]]), dtype=torch.float32)
        mixed, soft = mixup(images.clone(), targets)
        titles.append(("the first draws as one batch through mixup/cutmix (targets mixed alike)", "black"))
        rows.append([Tile(np.asarray(unnormalised(image, mean, std)), _soft_labels(target))
                     for image, target in zip(mixed, soft)])
    return rows, titles


def _soft_labels(target: torch.Tensor) -> str:
    """``rust 0.62, scab 0.38``: the classes of a mixed target."""
    return ", ".join(f"{name} {float(v):.2f}" for name, v in zip(CLASSES, target) if v >= MIXED_LABEL)


def augmentation_sheet(config: CfgNode, leaves: Sequence[tuple[Path, np.ndarray]], draws: int = 6,
                       seed: int = 0, name: str = "") -> bytes:
    """The sheet as PNG: :func:`augmentation_rows` under the settings."""
    rows, titles = augmentation_rows(config, leaves, draws, seed)
    heading = f"training augmentation of {name}" if name else "training augmentation"
    return tile_sheet(rows, f"{heading} (seed {seed})\n{augmentation_settings(config)}", titles, side=224,
                      inches=2.0, fontsize=6)
