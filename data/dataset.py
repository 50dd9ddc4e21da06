"""One split of the one-hot folder tree (``root/<code>/<image>.jpg``) as a multi-label dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.labels import CLASSES, NUM_CLASSES, code_to_vector, is_code


def scan_tree(root: Path) -> list[tuple[str, np.ndarray]]:
    """(path of one copy, OR of its folders' codes) per image name, sorted by name.

    A multi-label image is linked into one folder per label, so its target is rebuilt from the
    folders alone: the tree carries the multi-label truth.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such split folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        if not is_code(folder.name):
            raise ValueError(f"{folder}: folder name is not a class code of {NUM_CLASSES} binary digits")
    found: dict[str, tuple[str, np.ndarray]] = {}
    for folder in folders:
        code = code_to_vector(folder.name)
        for file in sorted(folder.iterdir()):
            if file.is_file() and not file.name.startswith("."):  # skip a killed run's temp files
                path, target = found.get(file.name, (str(file), np.zeros(NUM_CLASSES, np.float32)))
                found[file.name] = (path, np.maximum(target, code))
    if not found:
        raise ValueError(f"{root}: no images in any class-code folder")
    return [found[name] for name in sorted(found)]


class MultiLabelImageFolder(Dataset):
    """``samples`` [(path, multi-hot float32 target)], ``targets`` (N x 6) and ``classes``, from the tree."""

    def __init__(self, root: str | Path, transform: Callable | None = None):
        self.root = Path(root)
        self.transform = transform
        self.classes = list(CLASSES)
        self.samples = scan_tree(self.root)
        self.targets = np.stack([target for _, target in self.samples])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[object, torch.Tensor]:
        path, target = self.samples[index]
        with open(path, "rb") as f:
            image = Image.open(f).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.tensor(target)
