"""The files of a prepared tree that its readers look for: ``folds.csv`` (image, split, fold), written by
``process/prepare.py --folds K`` and read for K-fold training, and the marker of a prepare that has not
finished. Torch-free, so that prepare can name them without importing torch."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

FOLDS_FILE = "folds.csv"
NO_FOLD = -1  # DATA.FOLD of a run on the train/val split; the fold of an image outside the pool
IN_PROGRESS = ".prepare-in-progress"  # in the tree from a prepare's first write until its stats.json is written


def read_folds(data_path: Path) -> pd.DataFrame:
    """``folds.csv`` of a prepared tree, or a FileNotFoundError saying how to make it."""
    path = Path(data_path) / FOLDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no folds (prepare the tree with process/prepare.py --folds K)")
    return pd.read_csv(path)
