"""Train a multi-label leaf-disease classifier (timm backbone, PSA neck, linear or ArcFace head) on a prepared tree.

    python main.py --cfg configs/arcpsa_swin.yaml --data-path dataset --batch-size 32
    torchrun --nproc_per_node=2 main.py --cfg configs/arcpsa_swin.yaml --data-path dataset
    python main.py --cfg ... --eval [--checkpoint FILE]  # validation table of a checkpoint (the fork: --resume FILE)
    python main.py --cfg ... --data-path dataset --fold 2  # K-fold: validate on fold 2 of folds.csv

Everything goes to OUTPUT/MODEL.NAME/TAG/ (TAG-fold<k>/ with --fold k). Running the same command again resumes from its
ckpt_latest.pth. SIGINT/SIGTERM finish the current optimizer step, save ckpt_latest.pth (mid-epoch
position included) and exit with code 130; a second Ctrl-C aborts at once. While a run trains, its
run dir is locked: a second start on it exits with code 1, naming the process that holds it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist
from yacs.config import CfgNode

from config import get_config
from data.dataset import TreeSplit
from data.transforms import resolve_normalization
from evaluation.evaluate import evaluate_checkpoint
from evaluation.reports import coloured_table
from training.engine import NonFiniteLossError
from training.run import train
from training.rundir import RunDir
from training.stop import sigterm_interrupts
from utils.cli import run_cli
from utils.distributed import init_distributed, lost_ranks_message
from utils.errors import EXIT_FAILED, EXIT_OK
from utils.faults import pause_at
from utils.files import atomic_write_text
from utils.log import create_logger
from utils.runlock import hold_run_lock
from utils.runtime import keep_freed_memory, select_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", metavar="FILE", help="config yaml (BASE: includes allowed)")
    parser.add_argument("--opts", nargs="+", default=None, help="KEY VALUE pairs overriding the config")
    parser.add_argument("--batch-size", type=int, help="batch size per process")
    parser.add_argument("--data-path", help="prepared tree with train/ and val/ (process/prepare.py)")
    parser.add_argument("--fold", type=int, help="K-fold: train on the other folds of folds.csv, validate on this one")
    parser.add_argument("--pretrained", help="official Microsoft .pth, timm .pth/.bin/.safetensors, or packaged "
                                             "weights by name: efficientnet_lite0 (1, 2)")
    parser.add_argument("--resume", help="checkpoint to train from (ckpt_latest.pth of the run dir wins); with --eval, "
                                         "the upstream fork's name for --checkpoint")
    parser.add_argument("--checkpoint", help="with --eval: the checkpoint to evaluate (default: ckpt_best.pth)")
    parser.add_argument("--accumulation-steps", type=int, help="gradient accumulation steps")
    parser.add_argument("--use-checkpoint", action="store_true", help="gradient checkpointing")
    parser.add_argument("--output", metavar="PATH", help="root of the run dirs (OUTPUT)")
    parser.add_argument("--tag", help="run tag: the run dir is OUTPUT/MODEL.NAME/TAG")
    parser.add_argument("--eval", action="store_true", help="evaluate a checkpoint on val only")
    parser.add_argument("--print-run-dir", action="store_true", help="print the run dir of these arguments and exit")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: DEVICE of the config")
    parser.add_argument("--amp-opt-level", choices=("O0", "O1", "O2"), help="upstream flag: O0 disables AMP")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help="set by torch.distributed")
    args = parser.parse_args(argv)
    if args.checkpoint:
        if not args.eval:
            parser.error("--checkpoint is the file --eval reads; to train from a checkpoint, give --resume FILE")
        args.resume = args.checkpoint  # MODEL.RESUME: the checkpoint --eval reads, as in the fork
    return args


def run_eval(config: CfgNode, device: torch.device, rank: int, logger: logging.Logger) -> int:
    """--eval: the validation table of MODEL.RESUME (or the run's ckpt_best.pth / ckpt_latest.pth)."""
    folder = RunDir.of(config)
    candidates = ([Path(config.MODEL.RESUME)] if config.MODEL.RESUME
                  else [folder.best_checkpoint, folder.latest_checkpoint])
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"--eval: no checkpoint at {candidates[0]} (train first or give --checkpoint FILE)")
    split = TreeSplit(Path(config.DATA.DATA_PATH), "val", config.DATA.FOLD)
    result, thresholds, loss = evaluate_checkpoint(path, split, device, config.DATA.BATCH_SIZE,
                                                   config.DATA.NUM_WORKERS)
    if rank == 0:
        logger.info(f"{path} on {len(result.targets)} val images (thresholds of the checkpoint):\n"
                    + coloured_table(result.table))
        summary = {"checkpoint": str(path), "num_images": len(result.targets), "val_loss": loss,
                   **result.summary(thresholds)}
        atomic_write_text(json.dumps(summary, indent=2) + "\n", folder.eval_metrics)
        logger.info(f"wrote {folder.eval_metrics}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    # A SIGTERM at any moment exits 130 like Ctrl-C and releases the lock; the epochs' GracefulStop saves first.
    with sigterm_interrupts():
        args = parse_args(argv)
        config = get_config(args)
        if args.print_run_dir:
            print(RunDir.of(config).path)
            return EXIT_OK
        # One writer per run dir, taken before anything in it is touched (rank 0 holds it for torchrun).
        lock = not config.EVAL_MODE and int(os.environ.get("RANK", "0")) == 0
        with hold_run_lock(RunDir.of(config).path, "main.py training") if lock else contextlib.nullcontext():
            pause_at("start-up")
            return run(resolve_normalization(config))


def run(config: CfgNode) -> int:
    """Train or evaluate, as the config says; returns the exit code."""
    device = select_device(config.DEVICE, config.LOCAL_RANK)
    keep_freed_memory()
    rank, world_size = init_distributed(device)
    folder = RunDir.of(config)
    logger = create_logger(folder.path, rank)
    logger.info(f"device {device}, {world_size} process(es); run dir {folder.path}")
    try:
        if config.EVAL_MODE:
            return run_eval(config, device, rank, logger)
        return train(config, device, rank, logger)
    except NonFiniteLossError as err:
        latest = folder.latest_checkpoint
        kept = latest if latest.is_file() else "none (it diverged before its first checkpoint)"
        logger.error(f"{err}; the last good checkpoint is kept: {kept}")
        return EXIT_FAILED
    except RuntimeError as err:
        lost = lost_ranks_message(err) if world_size > 1 else None
        if lost is None:
            raise
        logger.error(lost)
        return EXIT_FAILED
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
