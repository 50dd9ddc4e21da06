"""K-fold cross-validation: train every fold of a prepared tree's folds.csv, then pool the out-of-fold predictions.

    python scripts/cv.py configs/effnet_lite0_cpu.yaml --data-path dataset [--output output/cv]
                         [--opts KEY VALUE ...] [--gpus 0,1,2,3] [--folds 0,2]
    python scripts/cv.py configs/effnet_lite0_cpu.yaml configs/effnet_lite1_cpu.yaml --data-path dataset

The tree must have been prepared with ``process/prepare.py --folds K``. Fold k is
``main.py --cfg CONFIG --fold k`` (its run dir ``OUTPUT/MODEL.NAME/TAG-fold<k>``), then ``test.py`` on
its own held-out fold with TTA: each leaf of the pool is predicted by the model that never saw it.
A fold is finished once ``fold.json`` is in its run dir, so the same command after a stop skips the
finished folds and resumes the interrupted one. With ``--gpus``, one fold runs on each listed GPU at a
time; without, the folds run one after another. ``--folds`` runs only the listed folds now (say, half of
them on another machine sharing the output folder); the pooled results wait until every fold is finished.

Then ``OUTPUT/MODEL.NAME/TAG-cv/`` gets ``oof.csv`` (every pooled leaf: its fold, six out-of-fold
probabilities, its labels), ``cv_metrics.json`` and ``cv_metrics.md`` (per fold and pooled) and
``ensemble.json`` (the K best checkpoints, equal weights, TTA, the thresholds tuned on all of oof.csv),
which ``test.py --checkpoint`` scores like one model, and ``thresholds_samples.json``: thresholds tuned
for samples-F1 of leaves that always get a label (``thresholds.tune_thresholds_for_samples``; on real
leaves +0.003 samples- and micro-F1 over the per-class ones, macro-F1 level: experiments/results.md), to pass
as ``test.py --thresholds`` when samples-F1 is what counts.
With several configs, each config's folds are run and summarised in turn, and then
``OUTPUT/<NAME1>+<NAME2>/TAG-cv/`` gets the same files for the ensemble of all their members: out-of-fold
probabilities averaged over the configs leaf by leaf (every config's fold k model left fold k out), the
thresholds tuned on them, and one ensemble.json listing every member with equal weights.
Exit codes: 0 all folds done, 1 a fold failed, 2 bad input, 130 stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from argparse import Namespace
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from config import get_config
from data.folds import FOLDS_FILE, NO_FOLD, read_folds
from data.labels import CLASSES
from evaluation.ensemble_file import Ensemble
from evaluation.oof import (
    fold_metrics,
    mean_probabilities,
    pool_folds,
    probabilities_of,
    read_probabilities,
    targets_of,
)
from evaluation.reports import PREDICTIONS_CSV, markdown_table
from evaluation.thresholds import tune_thresholds, tune_thresholds_for_samples, write_thresholds
from training.rundir import CvDir, RunDir
from training.stop import GracefulStop
from utils.cli import run_cli, run_job
from utils.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from utils.files import atomic_write_text
from utils.log import create_logger
from utils.runlock import hold_run_lock

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", type=Path, nargs="+", metavar="CONFIG",
                        help="config yaml of every fold; several: an ensemble of all of them")
    parser.add_argument("--data-path", type=Path, required=True, help="tree prepared with --folds K")
    parser.add_argument("--output", type=Path, default=Path("output/cv"), help="root of the runs (OUTPUT)")
    parser.add_argument("--opts", nargs="+", default=[], help="KEY VALUE pairs for every fold")
    parser.add_argument("--gpus", default="", help="comma-separated GPU ids: one fold on each at a time")
    parser.add_argument("--folds", default="", help="comma-separated fold ids to run now (default: every fold)")
    return parser.parse_args(argv)


def chosen_folds(args: Namespace, folds: list[int]) -> list[int]:
    """The folds of ``--folds`` (all when empty); an id that folds.csv lacks is an error before any work."""
    if not args.folds.strip():
        return folds
    try:
        chosen = sorted({int(f) for f in args.folds.split(",") if f.strip()})
    except ValueError:
        raise ValueError(f"--folds {args.folds!r}: expected comma-separated fold ids such as 0,2") from None
    unknown = [f for f in chosen if f not in folds]
    if unknown:
        raise ValueError(f"--folds: no fold {unknown[0]} in {args.data_path / FOLDS_FILE} (folds {folds})")
    return chosen


def fold_run(args: Namespace, config_file: Path, fold: int) -> RunDir:
    config = get_config(Namespace(cfg=str(config_file), opts=list(args.opts), output=str(args.output), fold=fold))
    return RunDir.of(config)


def fold_commands(args: Namespace, config_file: Path, fold: int, run: RunDir) -> list[list[str]]:
    """main.py for the fold (the same command resumes it), then test.py on its held-out fold with TTA."""
    train = [sys.executable, str(REPO / "main.py"), "--cfg", str(config_file), "--data-path", str(args.data_path),
             "--output", str(args.output), "--fold", str(fold), *(["--opts", *args.opts] if args.opts else [])]
    oof = [sys.executable, str(REPO / "test.py"), "--checkpoint", str(run.best_checkpoint), "--data-path",
           str(args.data_path), "--split", "val", "--tta", "--backend", "torch"]
    return [train, oof]


def run_fold(args: Namespace, config_file: Path, fold: int, stop: GracefulStop, logger, gpu: str | None) -> int:
    """Train and predict one fold unless finished earlier; returns the first non-zero exit code."""
    run = fold_run(args, config_file, fold)
    result = run.fold_record
    if result.is_file():
        logger.info(f"fold {fold}: finished earlier, skipped ({result})")
        return EXIT_OK
    env = None if gpu is None else {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
    record = {"fold": fold, "opts": list(args.opts), "checkpoint": str(run.best_checkpoint),
              "predictions": str(run.split_results("val") / PREDICTIONS_CSV)}
    return run_job(fold_commands(args, config_file, fold, run), lambda: record, result, stop, logger, env)


def run_folds(args: Namespace, config_file: Path, folds: list[int], logger) -> int:
    """Every fold, one after another or one per GPU; 0 all done, 1 some failed, 130 stopped."""
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    with GracefulStop() as stop:
        if not gpus:
            codes = [run_fold(args, config_file, fold, stop, logger, None) for fold in folds]
        else:
            slots = {fold: gpus[i % len(gpus)] for i, fold in enumerate(folds)}
            with ThreadPoolExecutor(len(gpus)) as pool:  # threads only wait on their child processes
                codes = list(pool.map(lambda f: run_fold(args, config_file, f, stop, logger, slots[f]), folds))
    if EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(codes) else EXIT_OK


def out_of_fold(runs: dict[int, RunDir]) -> pd.DataFrame:
    """Every pooled leaf once: image, fold, the six out-of-fold probabilities and its true labels."""
    return pool_folds({fold: read_probabilities(run.split_results("val") / PREDICTIONS_CSV)
                       for fold, run in runs.items()})


def cv_folder(args: Namespace, config_files: list[Path]) -> Path:
    """OUTPUT/MODEL.NAME/TAG-cv (several configs: OUTPUT/NAME1+NAME2/TAG-cv): the log, the pooled results and
    the ensemble file."""
    runs = [fold_run(args, config_file, NO_FOLD).path for config_file in config_files]
    name = "+".join(run.parent.name for run in runs)
    return runs[0].parent.with_name(name) / f"{runs[0].name}-cv"


def write_summary(args: Namespace, configs: list[Path], oof: pd.DataFrame, members: list[Path], folder: Path,
                  logger) -> None:
    """oof.csv, cv_metrics.json/.md, ensemble.json (with the thresholds tuned on all of oof.csv) and
    thresholds_samples.json."""
    thresholds = tune_thresholds(targets_of(oof), probabilities_of(oof))
    metrics = fold_metrics(oof, thresholds)
    files = CvDir(folder)
    atomic_write_text(oof.to_csv(index=False), files.oof)
    atomic_write_text(json.dumps({"configs": [str(c) for c in configs], "opts": list(args.opts),
                                  "thresholds": dict(zip(CLASSES, map(float, thresholds))),
                                  "metrics": metrics.to_dict("records")}, indent=2) + "\n", files.metrics_json)
    atomic_write_text(f"Out-of-fold predictions (TTA) at thresholds tuned on all {len(oof)} of them:\n\n"
                      + markdown_table(metrics), files.metrics_md)
    write_thresholds(tune_thresholds_for_samples(targets_of(oof), probabilities_of(oof)),
                     files.samples_thresholds)
    Ensemble(files.ensemble, tuple(members), (1.0,) * len(members), True, thresholds,
             f"out-of-fold predictions with TTA ({len(oof)} leaves, {len(members)} members)").write()
    logger.info(f"out-of-fold, {len(oof)} leaves:\n" + metrics.to_string(index=False))


def run_config(args: Namespace, config_file: Path, folds: list[int]) -> tuple[int, pd.DataFrame | None, list[Path]]:
    """One config's chosen folds, then its pooled results once every fold is finished:
    (exit code, its out-of-fold frame or None while folds wait, its member checkpoints)."""
    runs = {fold: fold_run(args, config_file, fold) for fold in folds}
    folder = cv_folder(args, [config_file])
    with hold_run_lock(folder, "scripts/cv.py"):  # one runner per cv folder; main.py locks each fold
        logger = create_logger(folder, name="cv")
        logger.info(f"{config_file}: {len(folds)} folds of {args.data_path / FOLDS_FILE}: "
                    f"{[str(r.path) for r in runs.values()]}")
        code = run_folds(args, config_file, chosen_folds(args, folds), logger)
        if code != EXIT_OK:
            return code, None, []
        waiting = [fold for fold, run in runs.items() if not run.fold_record.is_file()]
        if waiting:
            logger.info(f"folds {waiting} not finished yet: the pooled results wait for them")
            return EXIT_OK, None, []
        oof, members = out_of_fold(runs), [run.best_checkpoint for run in runs.values()]
        write_summary(args, [config_file], oof, members, folder, logger)
        logger.info(f"ensemble: {CvDir(folder).ensemble} (score it: test.py --checkpoint {CvDir(folder).ensemble})")
    return EXIT_OK, oof, members


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folds = sorted(read_folds(args.data_path)["fold"].unique().tolist())
    if not (args.data_path / "test").is_dir():
        raise FileNotFoundError(f"{args.data_path / 'test'}: no test split (--data-path must be a prepared tree)")
    folders = [cv_folder(args, [c]) for c in args.configs]
    if len(set(folders)) < len(folders):
        raise ValueError(f"two configs share a run folder ({folders}): give them different MODEL.NAMEs")
    frames, members = [], []
    for config_file in args.configs:
        code, oof, config_members = run_config(args, config_file, folds)
        if code != EXIT_OK:
            return code
        frames.append(oof)
        members += config_members
    if len(args.configs) > 1 and all(frame is not None for frame in frames):
        folder = cv_folder(args, list(args.configs))
        with hold_run_lock(folder, "scripts/cv.py"):
            logger = create_logger(folder, name="cv")
            write_summary(args, list(args.configs), mean_probabilities(frames), members, folder, logger)
            logger.info(f"ensemble of {len(args.configs)} configs: {CvDir(folder).ensemble}")
    return EXIT_OK


if __name__ == "__main__":
    run_cli(main)
