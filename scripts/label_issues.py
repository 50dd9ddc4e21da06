"""Label-issue review: rank pooled leaves whose given labels disagree most with their out-of-fold probabilities.

    python scripts/label_issues.py output/cv/effnet_lite0_cpu/default-cv/oof.csv --data-path dataset [--top 50]
                                   [--thresholds FILE] [--output DIR]

``oof.csv`` (written by ``scripts/cv.py``) holds each pooled leaf's probabilities from the model that
never saw it, which is what confident learning needs. cleanlab's multi-label API scores every leaf
(``get_label_quality_scores``: low = the given labels look wrong) and flags the leaves whose labels
are likely wrong (``find_label_issues``, confident learning's noise-rate pruning). Written into DIR
(default: ``label_issues/`` beside oof.csv):

- ``label_issues.csv``: every leaf, worst first: rank, quality score, flagged, given and predicted
  labels (at the ensemble's out-of-fold thresholds, else ``--thresholds``, else 0.5), what they
  disagree on;
- ``label_issues.png``: a contact sheet of the top N, flagged leaves titled in red;
- ``exclude.csv``: the flagged leaves among the top N. Look at the sheet, delete the lines of leaves
  whose labels are right, then train without the rest (``--opts DATA.EXCLUDE exclude.csv``: left
  out of training only) or prepare without them (``process/prepare.py --exclude exclude.csv``).

Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
from argparse import Namespace
from pathlib import Path

import numpy as np
import pandas as pd
from cleanlab.multilabel_classification import get_label_quality_scores
from cleanlab.multilabel_classification.filter import find_label_issues

from data.labels import CLASSES, vector_to_labels
from evaluation.ensemble_file import read_ensemble_thresholds
from evaluation.oof import probabilities_of, read_probabilities, targets_of
from evaluation.thresholds import as_thresholds, read_thresholds
from training.rundir import CvDir
from utils.cli import run_cli
from utils.errors import EXIT_OK
from utils.figures import Tile, in_rows, tile_sheet
from utils.files import atomic_write_bytes, atomic_write_text

SHEET_COLUMNS = 10


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("oof", type=Path, help="oof.csv of scripts/cv.py (image, fold, six probabilities, true)")
    parser.add_argument("--data-path", type=Path, required=True, help="the prepared tree (images of the sheet)")
    parser.add_argument("--top", type=int, default=50, help="leaves on the contact sheet and candidates to exclude")
    parser.add_argument("--thresholds", type=Path, help="thresholds JSON (default: ensemble.json beside oof.csv)")
    parser.add_argument("--output", type=Path, help="folder of the results (default: label_issues/ beside oof.csv)")
    return parser.parse_args(argv)


def oof_thresholds(args: Namespace) -> tuple[np.ndarray, str]:
    """``--thresholds``, else the thresholds of the ensemble file beside oof.csv, else 0.5 (and where from)."""
    if args.thresholds:
        return read_thresholds(args.thresholds), str(args.thresholds)
    beside = CvDir(args.oof.parent).ensemble  # scripts/cv.py's, beside oof.csv: the out-of-fold thresholds
    if beside.is_file():
        thresholds = read_ensemble_thresholds(beside)
        if thresholds is not None:
            return thresholds, str(beside)
    return as_thresholds(0.5, len(CLASSES)), "0.5 (no thresholds found)"


def disagreement(given: np.ndarray, predicted: np.ndarray) -> str:
    """'+rust -scab': labels the model adds to, and removes from, the given ones."""
    added = [f"+{c}" for c, g, p in zip(CLASSES, given, predicted) if p and not g]
    removed = [f"-{c}" for c, g, p in zip(CLASSES, given, predicted) if g and not p]
    return " ".join(added + removed)


def rank_issues(oof: pd.DataFrame, thresholds: np.ndarray) -> pd.DataFrame:
    """Every leaf, worst label quality first, with cleanlab's flag and the given vs predicted labels."""
    probs, given = probabilities_of(oof), targets_of(oof).astype(bool)
    labels = [np.flatnonzero(g).tolist() for g in given]  # cleanlab's form: the class indices of each leaf
    quality = get_label_quality_scores(labels, probs)
    flagged = find_label_issues(labels, probs)
    predicted = probs >= thresholds
    table = pd.DataFrame({
        "image": oof["image"], "fold": oof["fold"] if "fold" in oof else -1, "quality": quality.round(5),
        "flagged": flagged, "given": [" ".join(vector_to_labels(g)) for g in given],
        "predicted": [" ".join(vector_to_labels(p)) for p in predicted],
        "disagreement": [disagreement(g, p) for g, p in zip(given, predicted)],
        **{f"p_{c}": probs[:, i].round(4) for i, c in enumerate(CLASSES)},
    })
    table = table.sort_values(["quality", "image"], kind="stable", ignore_index=True)
    return table.assign(rank=np.arange(1, len(table) + 1))[["rank", *table.columns]]


def image_paths(data_path: Path) -> dict[str, Path]:
    """Image name -> one copy of it in the prepared tree (any split, any class folder)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(data_path).glob("*/*/*")):
        if path.is_file():
            found.setdefault(path.name, path)
    if not found:
        raise FileNotFoundError(f"{data_path}: no images (--data-path must be the tree prepared by process/prepare.py)")
    return found


def contact_sheet(top: pd.DataFrame, image_of: dict[str, Path]) -> bytes:
    """The top leaves side by side, titled with rank, given and predicted labels; flagged ones in red."""
    tiles = [Tile(image_of.get(leaf.image), f"#{leaf.rank} {leaf.image[:16]}\ngiven: {leaf.given}\n"
                  f"pred: {leaf.predicted or '-'}", "red" if leaf.flagged else "black") for leaf in top.itertuples()]
    return tile_sheet(in_rows(tiles, SHEET_COLUMNS), f"{len(top)} leaves whose labels disagree most with their "
                      "out-of-fold probabilities (red: flagged by confident learning)", side=200, inches=2.2,
                      fontsize=5.5, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.top < 1:
        raise ValueError(f"--top must be positive, got {args.top}")
    oof = read_probabilities(args.oof)
    image_of = image_paths(args.data_path)
    thresholds, source = oof_thresholds(args)
    table = rank_issues(oof, thresholds)
    top = table.head(args.top)
    output = args.output or args.oof.parent / "label_issues"
    atomic_write_text(table.to_csv(index=False), output / "label_issues.csv")
    atomic_write_bytes(contact_sheet(top, image_of), output / "label_issues.png")
    atomic_write_text(top.loc[top["flagged"], ["image", "given", "predicted", "quality"]].to_csv(index=False),
                      output / "exclude.csv")
    print(f"{int(table['flagged'].sum())} of {len(table)} leaves flagged by confident learning; "
          f"{int(top['flagged'].sum())} of the top {len(top)} (predicted labels at thresholds from {source})")
    print(f"wrote {output / 'label_issues.csv'}, {output / 'label_issues.png'} and {output / 'exclude.csv'}: "
          "review the sheet, keep in exclude.csv the leaves to leave out")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
