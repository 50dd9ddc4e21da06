"""Blend saved predictions of several models or ensembles, without their checkpoints.

    python scripts/blend.py --oof A-cv/oof.csv B-cv/oof.csv \
        [--test A_test/predictions.csv B_test/predictions.csv] [--weights 1 1] --output output/blend

Each ``--oof`` file (scripts/cv.py's ``oof.csv``: the same leaves and folds in every file) goes with the
``--test`` file in the same place: test.py's ``predictions.csv`` of the test split by the same model or
ensemble (for a cv run, test.py on its ``ensemble.json``; with TTA when its out-of-fold predictions had
it). The out-of-fold probabilities are averaged leaf by leaf with ``--weights``, the six thresholds are
tuned on the blend, and the averaged test probabilities are scored once at them: what ``scripts/cv.py``
with several configs gives, for runs made apart (other machines, other days) or whose checkpoints are gone.
Writes to --output: ``oof.csv``, ``cv_metrics.md`` (per fold and pooled), ``thresholds.json`` and
``test/`` (predictions.csv, submission.csv, metrics.csv/.json and the figures, as test.py writes them).
Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
import json
from argparse import Namespace
from pathlib import Path

from evaluation.metrics import multilabel_metrics, summarize
from evaluation.oof import fold_metrics, mean_probabilities, probabilities_of, read_probabilities, targets_of
from evaluation.reports import markdown_table, write_split_results
from evaluation.thresholds import tune_thresholds, write_thresholds
from training.rundir import CvDir
from utils.cli import run_cli
from utils.errors import EXIT_OK
from utils.files import atomic_write_text


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--oof", type=Path, nargs="+", required=True, help="oof.csv of each model or ensemble")
    parser.add_argument("--test", type=Path, nargs="+",
                        help="the test split's predictions.csv of each, in the order of --oof "
                             "(default: out of fold only, test not scored)")
    parser.add_argument("--weights", type=float, nargs="+", help="weight of each (default: equal)")
    parser.add_argument("--output", type=Path, required=True, help="folder of the blend's files")
    return parser.parse_args(argv)


def check_args(args: Namespace) -> None:
    """Matching counts and positive weights, before any file is read."""
    if args.test is not None and len(args.oof) != len(args.test):
        raise ValueError(f"--oof has {len(args.oof)} files and --test {len(args.test)}: "
                         "give one test file per oof file")
    if args.weights is not None and (len(args.weights) != len(args.oof) or min(args.weights) <= 0):
        raise ValueError(f"--weights: expected {len(args.oof)} positive numbers, got {args.weights}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    oof = mean_probabilities([read_probabilities(path, folds=True) for path in args.oof], args.weights)
    test = None if args.test is None else mean_probabilities([read_probabilities(p) for p in args.test], args.weights)
    thresholds = tune_thresholds(targets_of(oof), probabilities_of(oof))
    per_fold = fold_metrics(oof, thresholds)

    args.output.mkdir(parents=True, exist_ok=True)
    files = CvDir(args.output)
    atomic_write_text(oof.to_csv(index=False), files.oof)
    atomic_write_text(f"Blend of {len(args.oof)} at thresholds tuned on all {len(oof)} out-of-fold leaves:\n\n"
                      + markdown_table(per_fold), files.metrics_md)
    write_thresholds(thresholds, files.thresholds)
    print(f"out-of-fold ({len(oof)} leaves, thresholds tuned on them):\n{per_fold.to_string(index=False)}")
    if test is None:
        print("test split not scored (no --test)")
        return EXIT_OK
    folder = args.output / "test"
    folder.mkdir(exist_ok=True)
    targets, probs = targets_of(test), probabilities_of(test)
    meta = {"blend": {"oof": [str(p) for p in args.oof], "test": [str(p) for p in args.test],
                      "weights": args.weights or [1.0] * len(args.oof)}}
    write_split_results(folder, multilabel_metrics(targets, probs, thresholds), test["image"].tolist(), targets,
                        probs, thresholds, meta)
    scores = summarize(targets, probs, thresholds)
    print(f"test ({len(test)} leaves) at those thresholds: " + json.dumps(
        {k: round(scores[k], 4) for k in ("macro_f1_tuned", "micro_f1_tuned", "samples_f1_tuned", "mAP")}))
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
