"""Train every config with several seeds, score each best checkpoint on the test split, tabulate mean ± 95% CI.

    python scripts/experiments.py configs/effnet_lite0_cpu.yaml configs/arcpsa_effnet_lite0_cpu.yaml \
        --seeds 3 --data-path dataset [--opts DATA.IMG_SIZE 160 TRAIN.EPOCHS 4] [--output output/experiments]

Each run is ``main.py --cfg CONFIG --tag seed<N> --opts ... SEED <N>`` then ``test.py`` on its
``ckpt_best.pth`` (test split, thresholds tuned on validation), both as subprocesses; runs land in
``OUTPUT/<MODEL.NAME>/seed<N>/``. Finished runs are skipped, so the same command after a stop (Ctrl-C,
SIGTERM: the run in progress saves its position) carries on where it was. Writes ``results.csv``
(a row per run), ``summary.csv``, ``results.png`` and ``results.md`` to OUTPUT. Exit codes: 0 all
runs done, 1 some run failed (the others are still run and tabulated), 2 bad input, 130 stopped.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from runlock import hold_run_lock
from training.experiments import plan, read_results, run_plan, write_results
from utils import create_logger, run_cli

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, metavar="CONFIG", help="config yaml files")
    parser.add_argument("--seeds", type=int, default=3, help="runs per config, with SEED 0, 1, ... (default 3)")
    parser.add_argument("--data-path", type=Path, required=True, help="prepared tree with train/, val/ and test/")
    parser.add_argument("--opts", nargs="+", default=[], help="KEY VALUE pairs for every run (e.g. a smaller budget)")
    parser.add_argument("--output", type=Path, default=Path("output/experiments"),
                        help="root of the runs and the tables (default: output/experiments)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if not (args.data_path / "test").is_dir():
        raise FileNotFoundError(f"{args.data_path / 'test'}: no test split (--data-path must be a prepared tree)")
    with hold_run_lock(args.output, "scripts/experiments.py"):  # one runner per --output; main.py locks each run
        logger = create_logger(args.output, name="experiments")
        experiments = plan(args.configs, args.seeds, args.output, args.opts)
        code = run_plan(experiments, REPO, args.data_path, args.output, args.opts, logger)
        runs = read_results(experiments)
        if len(runs):
            command = shlex.join(["python", "scripts/experiments.py", *(sys.argv[1:] if argv is None else argv)])
            summary = write_results(runs, args.output, command)
            logger.info(f"{len(runs)} of {len(experiments)} runs finished; tables in {args.output / 'results.md'}:\n"
                        + summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return code


if __name__ == "__main__":
    run_cli(main)
