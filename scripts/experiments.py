"""Train every config with several seeds, score each best checkpoint on the test split, tabulate mean ± 95% CI.

    python scripts/experiments.py configs/effnet_lite0_cpu.yaml configs/arcpsa_effnet_lite0_cpu.yaml \
        --seeds 3 --data-path dataset [--opts DATA.IMG_SIZE 160 TRAIN.EPOCHS 4] [--tta] [--output output/experiments]
        [--baseline output/other_experiments]

Each run is ``main.py --cfg CONFIG --tag seed<N> --opts ... SEED <N>`` then ``test.py`` on its
``ckpt_best.pth`` (test split, thresholds tuned on validation; with ``--tta``, flips averaged and the
thresholds the run tuned on validation with them), both as subprocesses; runs land in
``OUTPUT/<MODEL.NAME>/seed<N>/``. Only when both are done is ``experiment.json`` written (atomically)
in the run dir: its presence is what "finished" means, so the same command after a stop (Ctrl-C,
SIGTERM: the run in progress saves its position) skips the finished runs and resumes the interrupted one.
Writes ``results.csv`` (a row per run), ``summary.csv``, ``results.png`` and ``results.md`` to OUTPUT;
with two or more configs, results.md also pairs them by seed (each config minus the first), and with
``--baseline OTHER`` (another OUTPUT of this script, e.g. the same recipe without an ``--opts`` change)
each config minus the same config's runs there. Exit codes: 0 all
runs done, 1 some run failed (the others are still run and tabulated), 2 bad input, 130 stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from config import get_config
from evaluation.reports import markdown_table
from evaluation.statistics import paired_by_seed, paired_markdown, seeds_markdown, seeds_png, seeds_summary
from training.checkpoint import load_checkpoint_file
from training.rundir import RunDir
from training.stop import GracefulStop
from utils.cli import run_cli, run_job
from utils.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from utils.files import atomic_write_bytes, atomic_write_text
from utils.log import create_logger
from utils.runlock import hold_run_lock

REPO = Path(__file__).resolve().parents[1]
RESULT_FILE = "experiment.json"
RESULTS_CSV = "results.csv"
TEST_SPLIT = "test"


@dataclass(frozen=True)
class Experiment:
    """One (config, seed) run and where it lives."""

    config_file: Path
    seed: int
    run: RunDir

    @property
    def name(self) -> str:
        """How tables name the setting: the config file's stem."""
        return self.config_file.stem

    @property
    def tag(self) -> str:
        return f"seed{self.seed}"

    @property
    def result_file(self) -> Path:
        return self.run.path / RESULT_FILE


def plan(config_files: Sequence[Path], seeds: int, output: Path, opts: Sequence[str]) -> list[Experiment]:
    """Every (config, seed) with its run dir, seed by seed: a runner stopped early has compared every config.

    Configs that would share run dirs are an error.
    """
    folders, owners = {}, {}
    for config_file in map(Path, config_files):
        folder = RunDir.of(get_config(Namespace(cfg=str(config_file), opts=list(opts), output=str(output)))).path.parent
        if folder in owners:
            raise ValueError(f"{config_file} and {owners[folder]} have the same MODEL.NAME: their runs would "
                             f"share {folder}")
        owners[folder] = config_file
        folders[config_file] = folder
    return [Experiment(config_file, seed, RunDir(folder / f"seed{seed}"))
            for seed in range(seeds) for config_file, folder in folders.items()]


def is_finished(experiment: Experiment, opts: Sequence[str], tta: bool = False) -> bool:
    """True when the run was trained and scored with these ``opts`` and TTA setting (others are an error:
    another --output)."""
    if not experiment.result_file.is_file():
        return False
    record = json.loads(experiment.result_file.read_text())
    recorded, recorded_tta = record["opts"], record.get("tta", False)
    if recorded != list(opts) or recorded_tta != tta:
        raise ValueError(f"{experiment.result_file}: made with --opts {recorded} and tta {recorded_tta}, not "
                         f"{list(opts)} and {tta}; give these runs another --output")
    return True


def train_command(experiment: Experiment, repo: Path, data_path: Path, output: Path, opts: Sequence[str]) -> list[str]:
    """``main.py`` for the run (the same command resumes it)."""
    return [sys.executable, str(repo / "main.py"), "--cfg", str(experiment.config_file), "--data-path", str(data_path),
            "--output", str(output), "--tag", experiment.tag, "--opts", *opts, "SEED", str(experiment.seed)]


def test_command(experiment: Experiment, repo: Path, data_path: Path, tta: bool = False) -> list[str]:
    """``test.py`` on the test split, with the run's validation-tuned thresholds (its default; with TTA, those
    tuned on validation with TTA)."""
    return [sys.executable, str(repo / "test.py"), "--checkpoint", str(experiment.run.best_checkpoint),
            "--data-path", str(data_path), "--split", TEST_SPLIT, *(["--tta"] if tta else [])]


def run_experiment(experiment: Experiment, repo: Path, data_path: Path, output: Path, opts: Sequence[str],
                   stop: GracefulStop, logger: logging.Logger, tta: bool = False) -> int:
    """Train (or resume) one run, score it on the test split, record its scores; returns the first non-zero exit."""
    commands = (train_command(experiment, repo, data_path, output, opts),
                test_command(experiment, repo, data_path, tta))

    def record() -> dict:  # the scores exist once test.py has run
        return {"config": experiment.name, "config_file": str(experiment.config_file), "seed": experiment.seed,
                "opts": list(opts), "tta": tta, "run_dir": str(experiment.run.path), **run_scores(experiment.run)}

    return run_job(commands, record, experiment.result_file, stop, logger)


def run_plan(experiments: Sequence[Experiment], repo: Path, data_path: Path, output: Path, opts: Sequence[str],
             logger: logging.Logger, tta: bool = False) -> int:
    """Every unfinished run in order; 0 all done, 1 some failed (the others still ran), 130 stopped."""
    failed = 0
    with GracefulStop() as stop:
        for number, experiment in enumerate(experiments, 1):
            where = f"[{number}/{len(experiments)}] {experiment.name} seed {experiment.seed}"
            if is_finished(experiment, opts, tta):
                logger.info(f"{where}: finished earlier, skipped ({experiment.result_file})")
                continue
            logger.info(f"{where}: {experiment.run.path}")
            code = run_experiment(experiment, repo, data_path, output, opts, stop, logger, tta)
            if code == EXIT_INTERRUPTED:
                logger.warning(f"{where}: stopped; run the same command to carry on")
                return EXIT_INTERRUPTED
            if code != EXIT_OK:
                logger.error(f"{where}: failed with exit code {code} (see {experiment.run.path / 'log.txt'})")
                failed += 1
    return EXIT_FAILED if failed else EXIT_OK


def run_scores(run: RunDir) -> dict:
    """Test scores of the run's test.py report, and the validation facts of its best epoch."""
    test = json.loads((run.split_results(TEST_SPLIT) / "metrics.json").read_text())["metrics"]
    best = load_checkpoint_file(run.best_checkpoint)
    history = pd.read_csv(run.history)
    return {"macro_f1": test["macro"]["f1"], "micro_f1": test["micro"]["f1"], "samples_f1": test["samples"]["f1"],
            "mAP": test["macro"]["ap"],
            "best_epoch": best["best_epoch"], "val_macro_f1_tuned": best["metrics"]["macro_f1_tuned"],
            "train_minutes": round(float(history["time_s"].sum()) / 60, 1)}


def read_results(experiments: Sequence[Experiment]) -> pd.DataFrame:
    """One row per finished run, in plan order."""
    rows = [json.loads(e.result_file.read_text()) for e in experiments if e.result_file.is_file()]
    return pd.DataFrame(rows)


def scored_with_tta(runs: pd.DataFrame) -> bool:
    """Whether the runs' test scores averaged flips (records made before ``--tta`` existed did not)."""
    return "tta" in runs and bool(runs["tta"].fillna(False).astype(bool).any())


def read_baseline(folder: Path) -> pd.DataFrame:
    """The runs of another experiments output (``--baseline``), checked before any work."""
    path = folder / RESULTS_CSV
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results of scripts/experiments.py (--baseline must be its --output)")
    return pd.read_csv(path)


def paired_text(runs: pd.DataFrame, baseline: pd.DataFrame | None = None, baseline_name: str = "") -> str:
    """Markdown of the seed-paired differences: each config minus the first; with ``baseline`` (another
    output's runs), also each config minus the same config's runs there."""
    configs = list(dict.fromkeys(runs["config"]))
    sections = []
    if len(configs) > 1:
        first = runs[runs["config"] == configs[0]]
        paired = paired_by_seed(runs[runs["config"] != configs[0]], first)
        sections.append(paired.assign(config=[f"`{c}` − `{configs[0]}`" for c in paired["config"]]))
    if baseline is not None:
        for config in configs:
            theirs = baseline[baseline["config"] == config]
            if len(theirs):
                paired = paired_by_seed(runs[runs["config"] == config], theirs)
                sections.append(paired.assign(config=[f"`{config}` − `{config}` of {baseline_name}"]))
    if not sections:
        return ""
    return ("\n\nPaired by seed (the same seed: the same initialisation and batch order), mean difference ± "
            "half-width of its 95% confidence interval over the pairs; **bold**: the interval leaves out 0, "
            "outside the noise.\n\n" + paired_markdown(pd.concat(sections, ignore_index=True)))


def write_results(runs: pd.DataFrame, output: Path, command: str, baseline: pd.DataFrame | None = None,
                  baseline_name: str = "") -> pd.DataFrame:
    """results.csv (a row per run), summary.csv, results.png and results.md (ready for experiments/results.md)."""
    summary = seeds_summary(runs)
    atomic_write_text(runs.drop(columns=["opts"]).to_csv(index=False), output / RESULTS_CSV)
    atomic_write_text(summary.to_csv(index=False), output / "summary.csv")
    atomic_write_bytes(seeds_png(runs, summary), output / "results.png")
    per_run = runs[[c for c in ("config", "seed", "macro_f1", "micro_f1", "samples_f1", "mAP", "val_macro_f1_tuned",
                                "best_epoch", "train_minutes") if c in runs]]
    text = (f"Made by:\n\n```bash\n{command}\n```\n\n"
            f"Test split{' with TTA (flips)' if scored_with_tta(runs) else ''}, scored with each run's "
            "validation-tuned thresholds; mean ± half-width of the 95% "
            "confidence interval of the mean over seeds (Student t). Two settings whose intervals overlap "
            "are not shown apart by these runs.\n\n"
            f"{seeds_markdown(summary)}\n![test scores per seed](results.png)\n\nPer run:\n\n"
            f"{markdown_table(per_run)}{paired_text(runs, baseline, baseline_name)}")
    atomic_write_text(text, output / "results.md")
    return summary



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, metavar="CONFIG", help="config yaml files")
    parser.add_argument("--seeds", type=int, default=3, help="runs per config, with SEED 0, 1, ... (default 3)")
    parser.add_argument("--data-path", type=Path, required=True, help="prepared tree with train/, val/ and test/")
    parser.add_argument("--opts", nargs="+", default=[], help="KEY VALUE pairs for every run (e.g. a smaller budget)")
    parser.add_argument("--tta", action="store_true", help="score the test split with flips averaged (test.py --tta)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another --output of this script: each config's runs paired by seed with the same "
                             "config's runs there (e.g. the same recipe without an --opts change)")
    parser.add_argument("--output", type=Path, default=Path("output/experiments"),
                        help="root of the runs and the tables (default: output/experiments)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if not (args.data_path / "test").is_dir():
        raise FileNotFoundError(f"{args.data_path / 'test'}: no test split (--data-path must be a prepared tree)")
    baseline = read_baseline(args.baseline) if args.baseline else None
    with hold_run_lock(args.output, "scripts/experiments.py"):  # one runner per --output; main.py locks each run
        logger = create_logger(args.output, name="experiments")
        experiments = plan(args.configs, args.seeds, args.output, args.opts)
        code = run_plan(experiments, REPO, args.data_path, args.output, args.opts, logger, args.tta)
        runs = read_results(experiments)
        if len(runs):
            command = shlex.join(["python", "scripts/experiments.py", *(sys.argv[1:] if argv is None else argv)])
            summary = write_results(runs, args.output, command, baseline, str(args.baseline))
            logger.info(f"{len(runs)} of {len(experiments)} runs finished; tables in {args.output / 'results.md'}:\n"
                        + summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return code


if __name__ == "__main__":
    run_cli(main)
