"""Several configs x several seeds: each trained by ``main.py`` and scored by ``test.py`` in a subprocess.

A run is ``OUTPUT/<MODEL.NAME>/seed<N>`` (``--opts SEED N``), trained as ``main.py`` always trains
(it resumes its own ``ckpt_latest.pth``), then its ``ckpt_best.pth`` is scored on the test split with
its validation-tuned ``thresholds.json``. Only then is ``experiment.json`` written (atomically) in the
run dir: its presence is what "finished" means, so a stopped batch, started again, skips the finished
runs and resumes the interrupted one.
"""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from checkpoint import load_checkpoint_file
from config import get_config
from reports import markdown_table, seeds_markdown, seeds_png, seeds_summary
from training.stop import GracefulStop
from utils import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, atomic_write_bytes, atomic_write_text, run_dir

RESULT_FILE = "experiment.json"
TEST_SPLIT = "test"


@dataclass(frozen=True)
class Experiment:
    """One (config, seed) run and where it lives."""

    config_file: Path
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        """How tables name the setting: the config file's stem."""
        return self.config_file.stem

    @property
    def tag(self) -> str:
        return f"seed{self.seed}"

    @property
    def result_file(self) -> Path:
        return self.run_dir / RESULT_FILE


def plan(config_files: Sequence[Path], seeds: int, output: Path, opts: Sequence[str]) -> list[Experiment]:
    """Every (config, seed) with its run dir, seed by seed: a runner stopped early has compared every config.

    Configs that would share run dirs are an error.
    """
    folders, owners = {}, {}
    for config_file in map(Path, config_files):
        folder = run_dir(get_config(Namespace(cfg=str(config_file), opts=list(opts), output=str(output)))).parent
        if folder in owners:
            raise ValueError(f"{config_file} and {owners[folder]} have the same MODEL.NAME: their runs would "
                             f"share {folder}")
        owners[folder] = config_file
        folders[config_file] = folder
    return [Experiment(config_file, seed, folder / f"seed{seed}")
            for seed in range(seeds) for config_file, folder in folders.items()]


def is_finished(experiment: Experiment, opts: Sequence[str]) -> bool:
    """True when the run was trained and scored with these ``opts`` (other opts are an error: another --output)."""
    if not experiment.result_file.is_file():
        return False
    recorded = json.loads(experiment.result_file.read_text())["opts"]
    if recorded != list(opts):
        raise ValueError(f"{experiment.result_file}: made with --opts {recorded}, not {list(opts)}; "
                         "give these runs another --output")
    return True


def train_command(experiment: Experiment, repo: Path, data_path: Path, output: Path, opts: Sequence[str]) -> list[str]:
    """``main.py`` for the run (the same command resumes it)."""
    return [sys.executable, str(repo / "main.py"), "--cfg", str(experiment.config_file), "--data-path", str(data_path),
            "--output", str(output), "--tag", experiment.tag, "--opts", *opts, "SEED", str(experiment.seed)]


def test_command(experiment: Experiment, repo: Path, data_path: Path) -> list[str]:
    """``test.py`` on the test split, with the run's validation-tuned thresholds (its default)."""
    return [sys.executable, str(repo / "test.py"), "--checkpoint", str(experiment.run_dir / "ckpt_best.pth"),
            "--data-path", str(data_path), "--split", TEST_SPLIT]


def run_command(command: list[str], stop: GracefulStop, logger: logging.Logger) -> int:
    """Run ``command`` and return its exit code; a stop request is passed on to it as SIGTERM.

    main.py saves its position on SIGTERM and exits 130; a stop before the child started returns 130.
    """
    if stop.requested:
        return EXIT_INTERRUPTED
    logger.info("$ " + " ".join(command))
    with subprocess.Popen(command) as child:
        forwarded = False
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if stop.requested and not forwarded:
                    child.send_signal(signal.SIGTERM)
                    forwarded = True
    return EXIT_INTERRUPTED if stop.requested and code != EXIT_OK else code


def run_experiment(experiment: Experiment, repo: Path, data_path: Path, output: Path, opts: Sequence[str],
                   stop: GracefulStop, logger: logging.Logger) -> int:
    """Train (or resume) one run, score it on the test split, record its scores; returns the first non-zero exit."""
    for command in (train_command(experiment, repo, data_path, output, opts),
                    test_command(experiment, repo, data_path)):
        code = run_command(command, stop, logger)
        if code != EXIT_OK:
            return code
    record = {"config": experiment.name, "config_file": str(experiment.config_file), "seed": experiment.seed,
              "opts": list(opts), "run_dir": str(experiment.run_dir), **run_scores(experiment.run_dir)}
    atomic_write_text(json.dumps(record, indent=2) + "\n", experiment.result_file)
    return EXIT_OK


def run_plan(experiments: Sequence[Experiment], repo: Path, data_path: Path, output: Path, opts: Sequence[str],
             logger: logging.Logger) -> int:
    """Every unfinished run in order; 0 all done, 1 some failed (the others still ran), 130 stopped."""
    failed = 0
    with GracefulStop() as stop:
        for number, experiment in enumerate(experiments, 1):
            where = f"[{number}/{len(experiments)}] {experiment.name} seed {experiment.seed}"
            if is_finished(experiment, opts):
                logger.info(f"{where}: finished earlier, skipped ({experiment.result_file})")
                continue
            logger.info(f"{where}: {experiment.run_dir}")
            code = run_experiment(experiment, repo, data_path, output, opts, stop, logger)
            if code == EXIT_INTERRUPTED:
                logger.warning(f"{where}: stopped; run the same command to carry on")
                return EXIT_INTERRUPTED
            if code != EXIT_OK:
                logger.error(f"{where}: failed with exit code {code} (see {experiment.run_dir / 'log.txt'})")
                failed += 1
    return EXIT_FAILED if failed else EXIT_OK


def run_scores(folder: Path) -> dict:
    """Test scores of the run's test.py report, and the validation facts of its best epoch."""
    test = json.loads((folder / f"test_{TEST_SPLIT}" / "metrics.json").read_text())["metrics"]
    best = load_checkpoint_file(folder / "ckpt_best.pth")
    history = pd.read_csv(folder / "history.csv")
    return {"macro_f1": test["macro"]["f1"], "micro_f1": test["micro"]["f1"], "mAP": test["macro"]["ap"],
            "best_epoch": best["best_epoch"], "val_macro_f1_tuned": best["metrics"]["macro_f1_tuned"],
            "train_minutes": round(float(history["time_s"].sum()) / 60, 1)}


def read_results(experiments: Sequence[Experiment]) -> pd.DataFrame:
    """One row per finished run, in plan order."""
    rows = [json.loads(e.result_file.read_text()) for e in experiments if e.result_file.is_file()]
    return pd.DataFrame(rows)


def write_results(runs: pd.DataFrame, output: Path, command: str) -> pd.DataFrame:
    """results.csv (a row per run), summary.csv, results.png and results.md (ready for docs/results.md)."""
    summary = seeds_summary(runs)
    atomic_write_text(runs.drop(columns=["opts"]).to_csv(index=False), output / "results.csv")
    atomic_write_text(summary.to_csv(index=False), output / "summary.csv")
    atomic_write_bytes(seeds_png(runs, summary), output / "results.png")
    per_run = runs[["config", "seed", "macro_f1", "micro_f1", "mAP", "val_macro_f1_tuned", "best_epoch",
                    "train_minutes"]]
    text = (f"Made by:\n\n```bash\n{command}\n```\n\n"
            "Test split, scored with each run's validation-tuned thresholds; mean ± half-width of the 95% "
            "confidence interval of the mean over seeds (Student t). Two settings whose intervals overlap "
            "are not shown apart by these runs.\n\n"
            f"{seeds_markdown(summary)}\n![test scores per seed](results.png)\n\nPer run:\n\n"
            f"{markdown_table(per_run)}")
    atomic_write_text(text, output / "results.md")
    return summary
