"""Turn a Plant Pathology dataset into the one-hot ImageNet-style tree, decoding every photo once.

    python process/prepare.py --src SRC --dst DST [--size 384] [--val 0.15] [--test 0.15] [--seed 0]
                              [--workers N] [--force] [--max-pixels 64000000]
                              [--duplicates keep|union|drop|off] [--duplicate-distance 128] [--move-leaks]
                              [--folds K] [--fold-pool train,val] [--exclude FILE]

SRC is the Kaggle layout (``train.csv`` + ``train_images/``; split here, stratified by label
combination) or a pre-split layout (``SRC/{train,val,test}/``, each with one CSV and its images in
``images/`` or beside it; the split is kept). The CSV holds ``image``/``images`` and a ``labels``
string, or one 0/1 column per class. DST gets ``{train,val,test}/<code>/<image>.jpg`` (a multi-label
image hard-linked into the folder of each of its labels), ``{train,val,test}.csv`` (``images`` + six
0/1 columns in CLASSES order), ``stats.json`` and ``label_distribution.png``.

Near-identical photos (``process.duplicates``) are found from the image already decoded, kept in one
split (and one fold), listed in ``duplicates.csv`` and drawn in ``duplicates.png``; ``--duplicates``
says what to do with copies whose labels disagree. ``--folds K`` writes ``folds.csv``: K folds of the
``--fold-pool`` splits by iterative multi-label stratification (``process.splits``). ``--exclude FILE``
leaves the listed images out of the tree (a CSV with an ``image`` column, such as the ``exclude.csv`` of
``scripts/label_issues.py``, or one name per line); to leave them out of training only, keep the tree
and train with ``--opts DATA.EXCLUDE FILE``.

All CSVs are checked before anything is written (``process.sources``); the tree is written by
``process.tree``. Exit codes: 0 done (or already done), 2 bad input (one line naming the file and
the problem), 1 when every image had to be skipped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from termcolor import colored

from data.images import MAX_PIXELS
from process.duplicates import DEFAULT_DISTANCE, HASH_BITS, POLICIES
from process.tree import DataOptions, NoUsableImages, prepare
from utils.cli import run_cli
from utils.errors import EXIT_FAILED
from utils.log import console_logger


def read_exclude(path: Path | None) -> tuple[str, ...]:
    """--exclude's image names, sorted; data.dataset (torch) is imported only then, so prepare starts fast."""
    if path is None:
        return ()
    from data.dataset import read_image_list

    return tuple(sorted(read_image_list(path)))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: bad input raises InputError (a ValueError) for ``run_cli``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, type=Path, help="Kaggle or pre-split dataset folder")
    parser.add_argument("--dst", required=True, type=Path, help="output folder of the one-hot tree")
    parser.add_argument("--size", type=int, default=384, help="shorter side in pixels (never upscaled)")
    parser.add_argument("--val", type=float, default=0.15, help="validation fraction (Kaggle layout)")
    parser.add_argument("--test", type=float, default=0.15, help="test fraction (Kaggle layout)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (Kaggle layout) and of the folds")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--force", action="store_true", help="rebuild DST even if it holds other content")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="larger images are skipped")
    parser.add_argument("--duplicates", default="keep", choices=POLICIES,
                        help="near-identical photos: keep every copy with its labels (default), union (one image "
                             "with the group's labels), drop (groups whose labels disagree), off (don't look)")
    parser.add_argument("--duplicate-distance", type=int, default=DEFAULT_DISTANCE,
                        help=f"most differing bits of {HASH_BITS} for two photos to count as copies")
    parser.add_argument("--move-leaks", action="store_true",
                        help="pre-split layout: move each group that crosses splits into its first split")
    parser.add_argument("--folds", type=int, default=0, help="write folds.csv with K folds (default: none)")
    parser.add_argument("--fold-pool", default="train,val", help="splits the folds are made of (comma-separated)")
    parser.add_argument("--exclude", type=Path, help="file listing images to leave out (CSV 'image' column or lines)")
    args = parser.parse_args(argv)
    console_logger("prepare")
    exclude = read_exclude(args.exclude)
    options = DataOptions(args.duplicates, args.duplicate_distance, args.move_leaks, args.folds,
                          tuple(s.strip() for s in args.fold_pool.split(",") if s.strip()), exclude)
    try:
        prepare(args.src, args.dst, args.size, args.val, args.test, args.seed, args.workers, args.force,
                args.max_pixels, options)
    except NoUsableImages as error:  # the input was valid, the run failed: exit 1, not 2
        print(colored(f"error: {error}", "red"), file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    run_cli(main)
