"""Datasets: a split of the one-hot folder tree (``root/<code>/<image>.jpg``), or loose photos to predict."""
from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.folds import FOLDS_FILE, IN_PROGRESS, NO_FOLD, read_folds
from data.images import IMAGE_SUFFIXES, image_failure, load_image
from data.labels import NUM_CLASSES, code_to_vector, is_code


def read_image_list(path: str | Path) -> frozenset[str]:
    """Image file names listed in ``path``: a CSV with an ``image`` column (scripts/label_issues.py's
    ``exclude.csv``), or plain text with one name per line (``#`` starts a comment)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise FileNotFoundError(f"{path}: cannot read the image list ({err.strerror or err})") from None
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if lines and lines[0].split(",")[0].strip() == "image":  # a CSV: the first column of every row
        lines = [line.split(",")[0].strip() for line in lines[1:]]
    if not lines:
        raise ValueError(f"{path}: lists no image")
    return frozenset(Path(line).name for line in lines)


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
        raise ValueError(f"{root}: empty split: no images in any class-code folder")
    return [found[name] for name in sorted(found)]


@dataclass(frozen=True)
class TreeSplit:
    """A split of a prepared tree: the folder ``data_path/name``, or, with ``fold`` >= 0, a fold of
    ``data_path/folds.csv``: ``val`` is that fold and ``train`` the rest of the pool (K-fold training)."""

    data_path: Path
    name: str
    fold: int = NO_FOLD
    exclude: str = ""  # a file listing image names to leave out (DATA.EXCLUDE, training only); '' = none

    def __post_init__(self) -> None:
        """Refuse a tree that a killed or failed prepare left half-written, before a single image is read."""
        if (Path(self.data_path) / IN_PROGRESS).exists():
            raise ValueError(f"{self.data_path}: prepare did not finish: re-run it")

    def __str__(self) -> str:
        if self.fold == NO_FOLD or self.name not in ("train", "val"):
            return str(Path(self.data_path) / self.name)
        held_out = f"fold {self.fold}" if self.name == "val" else f"every fold but {self.fold}"
        return f"{Path(self.data_path) / FOLDS_FILE} ({held_out})"

    def samples(self) -> list[tuple[str, np.ndarray]]:
        """(path, target) of every image not listed in ``exclude``, sorted by name."""
        found = self._all_samples()
        if not self.exclude:
            return found
        listed = read_image_list(self.exclude)
        kept = [s for s in found if Path(s[0]).name not in listed]
        if len(kept) == len(found):
            raise ValueError(f"{self.exclude}: none of its {len(listed)} images is in {self} "
                             "(a list made for another tree?)")
        return kept

    def _all_samples(self) -> list[tuple[str, np.ndarray]]:
        if self.fold == NO_FOLD or self.name not in ("train", "val"):
            return scan_tree(Path(self.data_path) / self.name)
        folds = read_folds(Path(self.data_path))
        if self.fold not in set(folds["fold"]):
            raise ValueError(f"{Path(self.data_path) / FOLDS_FILE}: no fold {self.fold} "
                             f"(folds {sorted(set(folds['fold']))})")
        wanted = set(folds.loc[(folds["fold"] == self.fold) == (self.name == "val"), "image"])
        pool = [s for split in sorted(set(folds["split"])) for s in scan_tree(Path(self.data_path) / split)]
        return sorted((s for s in pool if Path(s[0]).name in wanted), key=lambda s: Path(s[0]).name)


class MultiLabelImageFolder(Dataset):
    """``samples`` [(path, multi-hot float32 target)] and ``targets`` (N x 6), from the tree (a split
    folder, or a ``TreeSplit``)."""

    def __init__(self, root: str | Path | TreeSplit, transform: Callable | None = None):
        split = root if isinstance(root, TreeSplit) else TreeSplit(Path(root).parent, Path(root).name)
        self.transform = transform
        self.samples = split.samples()
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


def first_leaf_of_each_class(data_path: str | Path, split: str = "test") -> list[tuple[str, np.ndarray]]:
    """The first image (by name) of ``split`` carrying each class, once each, with its target: the leaves
    ``make demo`` explains and the web page offers as examples."""
    folder = Path(data_path) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no {split} split to take example leaves from")
    samples = sorted(TreeSplit(Path(data_path), split).samples(), key=lambda sample: Path(sample[0]).name)
    chosen: list[tuple[str, np.ndarray]] = []
    for c in range(NUM_CLASSES):
        first = next((sample for sample in samples if sample[1][c] > 0.5), None)
        if first is not None and all(first[0] != path for path, _ in chosen):
            chosen.append(first)
    return chosen


def collect_images(patterns: Iterable[str], logger: logging.Logger) -> list[Path]:
    """Files as given, image files of folders (recursively) and glob matches, sorted, each file once.

    "Once" is by file identity, so a prepared tree's multi-label image, hard-linked into several
    class folders, is predicted (and submitted) once.
    """
    found: dict[tuple[int, int], Path] = {}
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not matches:
            logger.warning(f"{pattern}: no such file, or no image in it")
        for match in matches:
            stat = match.stat()
            found.setdefault((stat.st_dev, stat.st_ino), match)
    if not found:
        raise FileNotFoundError(f"no image found in {' '.join(patterns)}")
    return list(found.values())


class ImageFiles(Dataset):
    """Image files for prediction: (tensor, '') per readable file, (zeros, reason) per unreadable one.

    Failures travel through the loader as data, so one bad file neither stops the workers nor needs
    a second pass over the images.
    """

    def __init__(self, paths: Sequence[Path], transform: Callable, size: int, min_size: int | None = None):
        self.paths = list(paths)
        self.transform = transform
        self.size = size
        self.min_size = min_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            return self.transform(load_image(self.paths[index], self.min_size)), ""
        except Exception as error:  # noqa: BLE001 - Pillow raises many types on bad data; all mean "skip"
            return torch.zeros(3, self.size, self.size), image_failure(error)
