"""Decision rules measured on out-of-fold predictions: which way of turning probabilities into labels wins?

    python scripts/decision_rules.py RUN-cv/oof.csv [--output DIR] [--resamples 2000] [--seed 0]

``oof.csv`` is scripts/cv.py's (every pooled leaf: its fold, six out-of-fold probabilities, its labels).
Each rule is scored the honest way: its thresholds are tuned on the other folds' leaves and applied to
the held-out fold's, fold by fold, so no leaf is decided by thresholds tuned on itself. Rules:

- ``thresholds``: each class over its own F1-tuned threshold (what metrics.csv scores);
- ``at_least_one``: and a leaf with no class over its threshold takes its most probable class;
- ``kaggle``: and healthy never with a disease (submission.csv's rules, ``thresholds.decide``);
- ``samples_tuned``: ``at_least_one`` with thresholds tuned for samples-F1 by coordinate ascent.

Writes ``decision_rules.csv`` (F1s per rule) and ``decision_rules.md`` (with each rule's paired bootstrap
difference against ``thresholds``, and how many folds it wins) to --output (default: beside oof.csv).
Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
from argparse import Namespace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from evaluation.oof import probabilities_of, read_probabilities, targets_of
from evaluation.reports import markdown_table
from evaluation.statistics import paired_bootstrap
from evaluation.thresholds import decide, tune_thresholds, tune_thresholds_for_samples
from utils.cli import run_cli
from utils.errors import EXIT_OK
from utils.files import atomic_write_text

BASELINE = "thresholds"
# rule name -> (how its thresholds are tuned on the training folds, the decision rule applied with them)
RULES: dict[str, tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], str]] = {
    "thresholds": (tune_thresholds, "thresholds"),
    "at_least_one": (tune_thresholds, "at_least_one"),
    "kaggle": (tune_thresholds, "kaggle"),
    "samples_tuned": (tune_thresholds_for_samples, "at_least_one"),
}


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("oof", type=Path, help="scripts/cv.py's oof.csv")
    parser.add_argument("--output", type=Path, help="folder for the tables (default: beside oof.csv)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the leaves")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples")
    return parser.parse_args(argv)


def read_oof(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Folds (N,), probabilities (N, C) and multi-hot truths (N, C) of an oof.csv."""
    frame = read_probabilities(path, folds=True)
    if frame["fold"].nunique() < 2:
        raise ValueError(f"{path}: needs leaves of at least two folds to tune on some and decide others")
    return frame["fold"].to_numpy(), probabilities_of(frame), targets_of(frame)


def held_out_decisions(folds: np.ndarray, probs: np.ndarray, truths: np.ndarray, rule: str) -> np.ndarray:
    """(N, C) labels of every leaf, decided with thresholds tuned on the other folds only."""
    tune, decision = RULES[rule]
    labels = np.zeros_like(truths, dtype=bool)
    for fold in np.unique(folds):
        held = folds == fold
        thresholds = tune(truths[~held], probs[~held])
        labels[held] = decide(probs[held], thresholds, decision)
    return labels


def folds_won(folds: np.ndarray, truths: np.ndarray, labels: np.ndarray, baseline: np.ndarray, average: str) -> int:
    """Folds whose held-out F1 (``average``) is higher under ``labels`` than under ``baseline``."""
    def f1(pred: np.ndarray, rows: np.ndarray) -> float:
        return f1_score(truths[rows], pred[rows], average=average, zero_division=0)

    return sum(f1(labels, folds == f) > f1(baseline, folds == f) for f in np.unique(folds))


def compare_rules(folds: np.ndarray, probs: np.ndarray, truths: np.ndarray, resamples: int,
                  seed: int) -> pd.DataFrame:
    """Per rule and F1 average: held-out F1, the difference against the baseline, its interval, folds won."""
    decided = {rule: held_out_decisions(folds, probs, truths, rule) for rule in RULES}
    rows = []
    for rule, labels in decided.items():
        table = paired_bootstrap(truths, labels.astype(int), decided[BASELINE].astype(int), resamples, seed)
        for row in table.to_dict("records"):
            rows.append({"rule": rule, "f1": row["f1"], "score": row["a"], "minus_thresholds": row["a_minus_b"],
                         "low": row["low"], "high": row["high"], "outside_noise": row["outside_noise"],
                         "folds_won": folds_won(folds, truths, labels, decided[BASELINE], row["f1"])})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.resamples < 100:
        raise ValueError(f"--resamples must be at least 100, got {args.resamples}")
    folds, probs, truths = read_oof(args.oof)
    output = args.output or args.oof.parent
    table = compare_rules(folds, probs, truths, args.resamples, args.seed)
    atomic_write_text(table.to_csv(index=False), output / "decision_rules.csv")
    text = (f"Decision rules on {len(folds)} out-of-fold leaves of {args.oof.name} ({len(np.unique(folds))} folds): "
            "each fold decided with thresholds tuned on the others. `minus_thresholds`: the difference against "
            f"per-class thresholds, with its 95% interval over {args.resamples} paired resamples of the leaves.\n\n"
            + markdown_table(table.round(4)))
    atomic_write_text(text, output / "decision_rules.md")
    print(table.round(4).to_string(index=False))
    print(f"tables in {output / 'decision_rules.md'}")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
