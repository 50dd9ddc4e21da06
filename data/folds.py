"""The folds file of a prepared tree: ``folds.csv`` (image, split, fold), written by ``process/prepare.py
--folds K`` and read for K-fold training. Torch-free, so that prepare can name it without importing torch."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

FOLDS_FILE = "folds.csv"
NO_FOLD = -1  # DATA.FOLD of a run on the train/val split; the fold of an image outside the pool


def read_folds(data_path: Path) -> pd.DataFrame:
    """``folds.csv`` of a prepared tree, or a FileNotFoundError saying how to make it."""
    path = Path(data_path) / FOLDS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no folds (prepare the tree with process/prepare.py --folds K)")
    return pd.read_csv(path)
