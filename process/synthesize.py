"""Synthetic Plant Pathology 2021 data in the exact Kaggle layout.

Why this exists: the Kaggle data cannot be downloaded here (no internet, and a Kaggle account is
needed anyway), yet the demo and the tests need leaf photos with the real label structure. This
generator is the project's embedded default: it writes ``DIR/train.csv`` (``image,labels``, labels
space-separated) and ``DIR/train_images/<16 hex>.jpg`` exactly like Kaggle's ``train.csv`` and
``train_images/``, with the 12 label combinations at their real frequencies. The photos are drawn
by ``process.leaves.render_leaf``. The labels are shuffled by ``seed`` and every draw for image
``i`` comes from a generator seeded by ``(seed, i)``: same seed, same bytes.

    python process/synthesize.py --out DIR --num N --seed S [--size 600x400] [--quality 90]
"""
from __future__ import annotations

import argparse
import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from termcolor import colored
from tqdm import tqdm

from process.leaves import render_leaf
from process.splits import largest_remainder
from process.tree import die_with_parent
from utils.cli import run_cli
from utils.files import atomic_write, atomic_write_text

# Images per label combination in the full Kaggle train.csv (18,632 images), in Kaggle's spelling.
COMBINATION_COUNTS: dict[str, int] = {
    "scab": 4826,
    "healthy": 4624,
    "frog_eye_leaf_spot": 3181,
    "rust": 1860,
    "complex": 1602,
    "powdery_mildew": 1184,
    "scab frog_eye_leaf_spot": 686,
    "scab frog_eye_leaf_spot complex": 200,
    "frog_eye_leaf_spot complex": 165,
    "rust frog_eye_leaf_spot": 120,
    "rust complex": 97,
    "powdery_mildew complex": 87,
}
MAX_SIDE = 8192
MIN_SIDE = 32


# ----------------------------------------------------------------------------- labels and names


def allocate_counts(num: int) -> dict[str, int]:
    """Images per combination for ``num`` images: largest remainder, at least 1 each when possible.

    The minimum of one keeps every combination present from 12 images on; it is taken from the
    largest combination, so frequencies stay as close to Kaggle's as integers allow.
    """
    total = sum(COMBINATION_COUNTS.values())
    exact = np.array([num * n / total for n in COMBINATION_COUNTS.values()])
    counts = dict(zip(COMBINATION_COUNTS, largest_remainder(exact)))
    if num >= len(counts):
        for combo in [c for c, n in counts.items() if n == 0]:
            counts[max(counts, key=counts.__getitem__)] -= 1
            counts[combo] = 1
    return counts


def assign_labels(num: int, seed: int) -> list[str]:
    """The label string of each image index: the allocated combinations, shuffled by ``seed``."""
    labels = [c for c, n in allocate_counts(num).items() for _ in range(n)]
    order = np.random.default_rng(seed).permutation(num)
    return [labels[i] for i in order]


def image_name(seed: int, index: int) -> str:
    """Kaggle-style file name: 16 lowercase hex digits derived from ``(seed, index)``."""
    return hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).hexdigest() + ".jpg"


# ----------------------------------------------------------------------------- the dataset


def _check_args(num: int, seed: int, size: tuple[int, int], quality: int) -> None:
    """Raise ``ValueError`` with a clear message for any unusable argument."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if len(size) != 2 or not all(MIN_SIDE <= s <= MAX_SIDE for s in size):
        raise ValueError(f"size must be (width, height) with each side in {MIN_SIDE}..{MAX_SIDE}, got {size}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")


def write_leaf(job: tuple[Path, int, int, str, tuple[int, int], int]) -> str:
    """Render leaf ``index`` of ``seed`` (its own generator: any order, any process) and write it; its name."""
    folder, seed, index, labels, size, quality = job
    name = image_name(seed, index)
    image = Image.fromarray(render_leaf(labels, np.random.default_rng([seed, index]), size), "RGB")
    atomic_write(folder / name, lambda f: image.save(f, format="JPEG", quality=quality))  # never half a file
    return name


def write_leaves(jobs: list[tuple], workers: int) -> list[str]:
    """:func:`write_leaf` of every job, on ``workers`` processes, with a progress bar; names in job order."""
    bar = dict(total=len(jobs), desc="synthesize", unit="img")
    if workers <= 1:
        return [write_leaf(job) for job in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(workers, initializer=die_with_parent) as pool:
        return list(tqdm(pool.map(write_leaf, jobs, chunksize=8), **bar))


def synthesize(out: Path | str, num: int, seed: int = 0, size: tuple[int, int] = (600, 400),
               quality: int = 90, workers: int | None = None) -> pd.DataFrame:
    """Write ``num`` synthetic leaf photos and their ``train.csv`` into ``out`` (Kaggle layout).

    Returns the rows written (columns ``image``, ``labels``), sorted by image name like Kaggle's. Leaves
    are rendered on ``workers`` processes (default: one per core); each has its own seed, so the files
    are the same whatever the number.
    """
    _check_args(num, seed, size, quality)
    out = Path(out)
    images = out / "train_images"
    images.mkdir(parents=True, exist_ok=True)
    (out / "train.csv").unlink(missing_ok=True)  # a stale CSV must not vouch for a new, unfinished run
    labels = assign_labels(num, seed)
    jobs = [(images, seed, index, text, size, quality) for index, text in enumerate(labels)]
    names = write_leaves(jobs, max(1, min(workers or os.cpu_count() or 1, num)))
    frame = pd.DataFrame({"image": names, "labels": labels}).sort_values("image", ignore_index=True)
    # Last, so that its presence means the dataset is complete.
    atomic_write_text(frame.to_csv(index=False, lineterminator="\n"), out / "train.csv")
    return frame


# ----------------------------------------------------------------------------- command line


def parse_size(text: str) -> tuple[int, int]:
    """``'600x400'`` -> ``(600, 400)``; raises ``ValueError`` on anything else."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size must look like WIDTHxHEIGHT, e.g. 600x400, got {text!r}")
    return int(parts[0]), int(parts[1])


def _summary(frame: pd.DataFrame) -> str:
    """A small table of images per label combination."""
    counts = frame["labels"].value_counts()
    width = max(len(c) for c in counts.index)
    lines = [f"  {combo:<{width}}  {n:>6}" for combo, n in counts.items()]
    return "\n".join(lines + [f"  {'total':<{width}}  {len(frame):>6}"])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; a bad argument is a ValueError, one line and exit 2 under ``run_cli``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (Kaggle layout)")
    parser.add_argument("--num", required=True, type=int, help="number of images")
    parser.add_argument("--seed", required=True, type=int, help="random seed (same seed, same files)")
    parser.add_argument("--size", default="600x400", help="image size WIDTHxHEIGHT (default 600x400)")
    parser.add_argument("--quality", default=90, type=int, help="JPEG quality 1..100 (default 90)")
    args = parser.parse_args(argv)
    frame = synthesize(args.out, args.num, args.seed, parse_size(args.size), args.quality)
    print(colored(f"wrote {len(frame)} images to {args.out}", "green"))
    print(_summary(frame))
    return 0


if __name__ == "__main__":
    run_cli(main)
