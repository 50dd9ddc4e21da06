"""history.csv: one row per completed epoch, rewritten whole (atomically) after each epoch."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from utils.files import atomic_write_text


def read_history(path: Path, last_epoch: int) -> list[dict]:
    """Rows of epochs <= last_epoch (a row written after the checkpoint it belongs to is redone)."""
    if not path.is_file() or last_epoch < 0:
        return []
    frame = pd.read_csv(path)
    return frame[frame["epoch"] <= last_epoch].to_dict("records")


def write_history(rows: list[dict], path: Path) -> None:
    atomic_write_text(pd.DataFrame(rows).to_csv(index=False), path)
