"""Paired bootstrap of two scored runs on the same leaves: is A ahead of B outside the noise?

    python scripts/compare.py A/test_test/predictions.csv B/test_test/predictions.csv [--resamples 2000] [--seed 0]

Both files are test.py's ``predictions.csv`` of one split (columns ``image``, ``true``, ``predicted``).
The leaves are resampled with replacement, the same resample for both runs, and macro-, micro- and
samples-F1 of A, of B and of A - B are computed on each; printed: each on all leaves with its 95%
percentile interval (``a_low``..``a_high``: the noise of one run's score on these leaves). An interval of
A - B that contains 0 is inside the noise.
Exit codes: 0 done, 2 bad input.
"""
from __future__ import annotations

import argparse
from argparse import Namespace
from pathlib import Path

import numpy as np

from evaluation.oof import read_decisions
from evaluation.statistics import paired_bootstrap
from utils.cli import run_cli
from utils.errors import EXIT_OK


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path, help="predictions.csv of run A")
    parser.add_argument("b", type=Path, help="predictions.csv of run B (the same leaves)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.resamples < 100:
        raise ValueError(f"--resamples must be at least 100, got {args.resamples}")
    names_a, true_a, pred_a = read_decisions(args.a)
    names_b, true_b, pred_b = read_decisions(args.b)
    if names_a != names_b or not np.array_equal(true_a, true_b):
        raise ValueError(f"{args.a} and {args.b}: not the same leaves with the same labels")
    table = paired_bootstrap(true_a, pred_a, pred_b, args.resamples, args.seed)
    print(f"{len(names_a)} leaves, {args.resamples} paired resamples; A = {args.a}, B = {args.b}")
    print(table.round(4).to_string(index=False))
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
