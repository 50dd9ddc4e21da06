"""Pool K-fold results saved fold by fold into what scripts/cv.py writes, without the checkpoints.

    python scripts/pool_folds.py --data-path dataset \
        --oof runs/fold0/val/predictions.csv ... --test runs/fold0/test/predictions.csv ... --output output/pooled

For folds trained apart (other machines, other days) whose checkpoints are gone, only their predictions kept.
Each ``--oof`` file is test.py's ``predictions.csv`` of one fold's held-out leaves (``--split val`` of a
``main.py --fold k`` run); its fold is read from the tree's ``folds.csv``, and together the files must
cover every fold once. Each ``--test`` file is one member's ``predictions.csv`` of the test split (with TTA
when the out-of-fold ones had it). Writes to --output: ``oof.csv`` (as scripts/cv.py's), ``test.csv``
(the members' test probabilities averaged leaf by leaf, as the ensemble.json of the folds gives), and
``cv_metrics.md``; then ``scripts/blend.py --oof OUT/oof.csv --test OUT/test.csv`` tunes the thresholds on
the out-of-fold leaves and scores the test split once, alone or blended with other models.
Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
from argparse import Namespace
from pathlib import Path

from data.folds import read_folds
from data.labels import CLASSES
from evaluation.oof import (
    fold_metrics,
    fold_of_each,
    mean_probabilities,
    pool_folds,
    probabilities_of,
    read_probabilities,
    targets_of,
)
from evaluation.reports import markdown_table
from evaluation.thresholds import tune_thresholds
from training.rundir import CvDir
from utils.cli import run_cli
from utils.errors import EXIT_OK
from utils.files import atomic_write_text


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-path", type=Path, required=True, help="the tree prepared with --folds K")
    parser.add_argument("--oof", type=Path, nargs="+", required=True, help="each fold's held-out predictions.csv")
    parser.add_argument("--test", type=Path, nargs="+", required=True, help="each member's test predictions.csv")
    parser.add_argument("--output", type=Path, required=True, help="folder of oof.csv, test.csv, cv_metrics.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folds = read_folds(args.data_path)
    frames = fold_of_each([read_probabilities(p) for p in args.oof], [str(p) for p in args.oof], folds)
    oof = pool_folds(frames)
    test = mean_probabilities([read_probabilities(p) for p in args.test])
    per_fold = fold_metrics(oof, tune_thresholds(targets_of(oof), probabilities_of(oof)))

    args.output.mkdir(parents=True, exist_ok=True)
    files = CvDir(args.output)
    atomic_write_text(oof.to_csv(index=False), files.oof)
    atomic_write_text(test[["image", *CLASSES, "true"]].to_csv(index=False), files.test_predictions)
    atomic_write_text(f"{len(frames)} folds pooled, at thresholds tuned on all {len(oof)} out-of-fold leaves:\n\n"
                      + markdown_table(per_fold), files.metrics_md)
    print(f"out-of-fold ({len(oof)} leaves, {len(frames)} folds; {len(args.test)} test members averaged):\n"
          f"{per_fold.to_string(index=False)}")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
