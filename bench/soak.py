"""Kill-and-resume soak: stop a run from outside at random moments, resume it, compare with the uninterrupted run.

One uninterrupted run of the config, then N runs of the same command, each stopped once by SIGTERM or
SIGKILL (random, as is the moment: after the first ckpt_latest.pth, before the uninterrupted run's
end) and started again until it finishes. Prints, per run, how it stopped and how many of the final
tensors (model and EMA) equal the uninterrupted run's, then how many runs ended identical (goal: all).

    python bench/soak.py --runs 10                                      # 400 synthetic leaves, the issue's run
    python bench/soak.py --runs 10 --num 200 --opts TRAIN.EPOCHS 3 SEED 5   # smaller and shorter

Without --data-path it synthesizes ``--num`` leaves (seed 11) and prepares them at 160 px in WORK.
"""
from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from process.synthesize import synthesize
from process.tree import prepare
from training.checkpoint import load_checkpoint_file
from training.rundir import RunDir
from utils.errors import EXIT_INTERRUPTED

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = (signal.SIGTERM, signal.SIGKILL)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", default="configs/demo_cpu.yaml", help="config of the runs")
    parser.add_argument("--data-path", type=Path, help="a prepared tree (default: synthesized and prepared in WORK)")
    parser.add_argument("--num", type=int, default=400, help="synthetic leaves when there is no --data-path")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=10, help="stopped-and-resumed runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the moments and signals")
    parser.add_argument("--work", type=Path, help="folder for the data and the runs (default: a new temp folder)")
    parser.add_argument("--opts", nargs="+", default=["TRAIN.EPOCHS", "4", "SEED", "5"],
                        help="KEY VALUE config overrides (default: TRAIN.EPOCHS 4 SEED 5)")
    return parser.parse_args(argv)


def command(args: argparse.Namespace, data: Path, tag: str) -> list[str]:
    return [sys.executable, "main.py", "--cfg", args.cfg, "--data-path", str(data), "--batch-size",
            str(args.batch_size), "--output", str(args.work / "output"), "--tag", tag, "--opts", *args.opts]


def run_dir(args: argparse.Namespace, data: Path, tag: str) -> RunDir:
    printed = subprocess.run([*command(args, data, tag), "--print-run-dir"], cwd=ROOT, capture_output=True,
                             text=True, check=True)
    return RunDir(Path(printed.stdout.strip().splitlines()[-1]))


def run_to_end(cmd: list[str]) -> None:
    subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)


def uninterrupted(cmd: list[str], latest: Path) -> tuple[float, float]:
    """Run to the end; returns (seconds until the first ckpt_latest.pth, seconds in all)."""
    start = time.monotonic()
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not latest.exists() and process.poll() is None:
        time.sleep(0.05)
    first = time.monotonic() - start
    if process.wait():
        raise SystemExit(f"the uninterrupted run failed (exit {process.returncode}): {' '.join(cmd)}")
    return first, time.monotonic() - start


def stop_once(cmd: list[str], latest: Path, delay: float, signum: int, log: Path) -> str:
    """Start ``cmd``, send ``signum`` ``delay`` s after its first ckpt_latest.pth; returns how it ended."""
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        while not latest.exists() and process.poll() is None:
            time.sleep(0.05)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signum)
        process.wait()
    saved = [line.split("saved ")[-1].split(";")[0] for line in log.read_text().splitlines() if ": saved " in line]
    if process.returncode == EXIT_INTERRUPTED:
        return f"exit 130 ({saved[-1] if saved else 'stopped after an epoch'})"
    return f"exit {process.returncode}" + (" (finished before the signal)" if process.returncode == 0 else "")


def identical_tensors(a: Path, b: Path) -> tuple[int, int]:
    """(equal tensors, tensors) over the model and EMA weights of two checkpoints."""
    first, second = load_checkpoint_file(a), load_checkpoint_file(b)
    pairs = [(first[part][k], second[part].get(k)) for part in ("model", "ema") if first.get(part) for k in first[part]]
    return sum(y is not None and torch.equal(x, y) for x, y in pairs), len(pairs)


def prepared_tree(args: argparse.Namespace) -> Path:
    if args.data_path:
        return args.data_path
    raw, data = args.work / "raw", args.work / "dataset"
    if not (raw / "train.csv").exists():
        synthesize(raw, args.num, seed=11)
    prepare(raw, data, size=160)
    return data


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="soak_"))).resolve()
    data = prepared_tree(args)
    shutil.rmtree(args.work / "output", ignore_errors=True)  # every run starts from nothing
    rng = random.Random(args.seed)
    reference = run_dir(args, data, "whole").latest_checkpoint
    first, total = uninterrupted(command(args, data, "whole"), reference)
    print(f"uninterrupted run: {total:.0f} s, first {reference.name} after {first:.0f} s ({args.work})")
    identical = 0
    for i in range(args.runs):
        cmd, signum = command(args, data, f"stopped{i}"), rng.choice(SIGNALS)
        delay = rng.uniform(0, max(total - first, 1.0))
        latest = run_dir(args, data, f"stopped{i}").latest_checkpoint
        how = stop_once(cmd, latest, delay, signum, args.work / f"stopped{i}.log")
        run_to_end(cmd)  # the same command again
        same, count = identical_tensors(reference, latest)
        identical += same == count
        print(f"run {i + 1}: {signal.Signals(signum).name} {delay:.1f} s after the first {reference.name}: {how}; "
              f"resumed: {same}/{count} tensors identical", flush=True)
    print(f"identical: {identical}/{args.runs} resumed runs")


if __name__ == "__main__":
    main()
