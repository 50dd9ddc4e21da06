"""Train a multi-label Swin (linear or ArcFace head, optional PSA) on the prepared Plant Pathology 2021 tree.

    python main.py --cfg configs/arcpsa_swin.yaml --data-path dataset --batch-size 32
    torchrun --nproc_per_node=2 main.py --cfg configs/arcpsa_swin.yaml --data-path dataset
    python main.py --cfg ... --eval [--resume FILE]      # validation table of a checkpoint
    python main.py --cfg ... --throughput                # model-only and loader-only img/s

Everything goes to OUTPUT/MODEL.NAME/TAG/. Running the same command again resumes from its
ckpt_latest.pth. SIGINT/SIGTERM finish the current optimizer step, save ckpt_latest.pth (mid-epoch
position included) and exit with code 130; a second Ctrl-C aborts at once.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from config import get_config
from data.labels import CLASSES
from data.loader import build_loader, build_val_loader
from engine import (
    Evaluation, NonFiniteLossError, Trainer, autocast_factory, build_optimizer, build_scheduler, evaluate,
    loader_throughput, throughput, train_one_epoch,
)
from metrics import multilabel_metrics, summarize, table_text, tune_thresholds
from models import build_loss, build_model
from utils import (
    atomic_save, atomic_write_bytes, atomic_write_text, create_logger, get_rng_state, init_distributed,
    inference_weights, load_checkpoint_file, load_pretrained, run_cli, run_dir, seed_everything, select_device,
    set_rng_state,
)

EXIT_INTERRUPTED = 130
# Test hook: the process sends itself SIGTERM right after this optimizer update (a real interruption).
INTERRUPT_ENV = "PP_SIGTERM_AT_UPDATE"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cfg", metavar="FILE", help="config yaml (BASE: includes allowed)")
    parser.add_argument("--opts", nargs="+", default=None, help="KEY VALUE pairs overriding the config")
    parser.add_argument("--batch-size", type=int, help="batch size per process")
    parser.add_argument("--data-path", help="prepared tree with train/ and val/ (process/prepare.py)")
    parser.add_argument("--pretrained", help="official Microsoft .pth or timm .pth/.bin/.safetensors")
    parser.add_argument("--resume", help="checkpoint to resume from (ckpt_latest.pth of the run dir wins)")
    parser.add_argument("--accumulation-steps", type=int, help="gradient accumulation steps")
    parser.add_argument("--use-checkpoint", action="store_true", help="gradient checkpointing")
    parser.add_argument("--output", metavar="PATH", help="root of the run dirs (OUTPUT)")
    parser.add_argument("--tag", help="run tag: the run dir is OUTPUT/MODEL.NAME/TAG")
    parser.add_argument("--eval", action="store_true", help="evaluate a checkpoint on val only")
    parser.add_argument("--throughput", action="store_true", help="measure img/s only")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: DEVICE of the config")
    parser.add_argument("--amp-opt-level", choices=("O0", "O1", "O2"), help="upstream flag: O0 disables AMP")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help="set by torch.distributed")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Interruptions
# ---------------------------------------------------------------------------------------------


class GracefulStop:
    """While active, SIGINT/SIGTERM only set ``requested``; the loop saves and exits after the step."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}
        self._interrupt_at = int(os.environ.get(INTERRUPT_ENV, "0"))

    def __enter__(self) -> "GracefulStop":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: the user does not want to wait
        self.requested = signal.Signals(signum).name

    def __call__(self, num_updates: int) -> bool:
        """Asked by the training loop after each optimizer update."""
        if num_updates == self._interrupt_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.requested is not None


# ---------------------------------------------------------------------------------------------
# Run state, checkpoints, history
# ---------------------------------------------------------------------------------------------


@dataclass
class Best:
    """The best validation epoch so far (by TRAIN.BEST_METRIC, higher is better)."""

    value: float = -math.inf
    epoch: int = -1
    thresholds: list[float] = field(default_factory=lambda: [0.5] * len(CLASSES))

    def improves(self, value: float) -> bool:
        return not math.isnan(value) and value > self.value


def checkpoint_state(config: Any, trainer: Trainer, epoch: int, step: int, best: Best, metrics: dict) -> dict:
    """The checkpoint contract of the design: plain data only (``torch.load(weights_only=True)``)."""
    return {
        "model": trainer.module.state_dict(),
        "ema": trainer.ema.module.state_dict() if trainer.ema is not None else None,
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "epoch": epoch,
        "step": step,
        "best_metric": float(best.value),
        "best_epoch": best.epoch,
        "rng": get_rng_state(),
        "thresholds": [float(t) for t in best.thresholds],
        "classes": list(CLASSES),
        "config": config.dump(),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }


def find_resume_file(config: Any, out: Path, logger: Any) -> Path | None:
    """ckpt_latest.pth of the run dir (AUTO_RESUME) wins over MODEL.RESUME, as upstream: reruns continue."""
    latest = out / "ckpt_latest.pth"
    if config.TRAIN.AUTO_RESUME and latest.is_file():
        if config.MODEL.RESUME and Path(config.MODEL.RESUME).resolve() != latest.resolve():
            logger.warning(f"auto-resume: {latest} takes over from MODEL.RESUME {config.MODEL.RESUME}")
        return latest
    return Path(config.MODEL.RESUME) if config.MODEL.RESUME else None


def load_training_checkpoint(path: Path) -> dict:
    ckpt = load_checkpoint_file(path)
    missing = {"model", "optimizer", "lr_scheduler", "epoch", "step"} - set(ckpt)
    if missing:
        raise ValueError(f"{path}: not a training checkpoint of main.py (no {', '.join(sorted(missing))})")
    return ckpt


def read_history(path: Path, last_epoch: int) -> list[dict]:
    """Rows of epochs <= last_epoch (a row written after the checkpoint it belongs to is redone)."""
    if not path.is_file() or last_epoch < 0:
        return []
    frame = pd.read_csv(path)
    return frame[frame["epoch"] <= last_epoch].to_dict("records")


def write_history(rows: list[dict], path: Path) -> None:
    atomic_write_text(pd.DataFrame(rows).to_csv(index=False), path)


def plot_curves(rows: list[dict], path: Path, best_metric: str) -> None:
    """curves.png: train/val loss, validation F1s and the learning rate per epoch."""
    from matplotlib.figure import Figure

    frame = pd.DataFrame(rows)
    fig = Figure(figsize=(15, 4), tight_layout=True)
    ax_loss, ax_f1, ax_lr = fig.subplots(1, 3)
    for column in ("train_loss", "val_loss"):
        ax_loss.plot(frame["epoch"], frame[column], marker=".", label=column)
    for column in dict.fromkeys(("macro_f1", "macro_f1_tuned", "micro_f1", "mAP", best_metric)):
        if column in frame:
            ax_f1.plot(frame["epoch"], frame[column], marker=".", label=column)
    ax_lr.plot(frame["epoch"], frame["lr"], marker=".")
    for ax, title in ((ax_loss, "loss"), (ax_f1, "validation"), (ax_lr, "learning rate (end of epoch)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_f1.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(buffer.getvalue(), path)


def format_table(evaluation: Evaluation, thresholds: list[float]) -> str:
    table = multilabel_metrics(evaluation.targets, evaluation.probs, thresholds)
    return table_text(table)


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def amp_settings(config: Any, device: torch.device, logger: Any) -> tuple[bool, torch.dtype]:
    """(enabled, dtype): bf16 where the GPU has it, else fp16 (with a GradScaler); never on CPU."""
    enabled = config.AMP_ENABLE and device.type == "cuda"
    if config.AMP_DTYPE not in ("bfloat16", "float16"):
        raise ValueError(f"AMP_DTYPE must be bfloat16 or float16, got {config.AMP_DTYPE!r}")
    dtype = torch.bfloat16 if config.AMP_DTYPE == "bfloat16" else torch.float16
    if enabled and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        logger.warning("this GPU has no bfloat16: using float16 autocast with a GradScaler")
        dtype = torch.float16
    return enabled, dtype


def build_trainer(config: Any, model: torch.nn.Module, device: torch.device, updates_per_epoch: int,
                  mixup_fn: Any, logger: Any) -> Trainer:
    amp_enabled, amp_dtype = amp_settings(config, device, logger)
    optimizer = build_optimizer(config, model)
    return Trainer(
        model=model,
        criterion=build_loss(config).to(device),
        optimizer=optimizer,
        lr_scheduler=build_scheduler(config, optimizer, updates_per_epoch),
        device=device,
        autocast=autocast_factory(device, amp_enabled, amp_dtype),
        scaler=torch.amp.GradScaler("cuda") if amp_enabled and amp_dtype == torch.float16 else None,
        mixup_fn=mixup_fn,
        accumulation_steps=config.TRAIN.ACCUMULATION_STEPS,
        clip_grad=config.TRAIN.CLIP_GRAD,
        print_freq=config.PRINT_FREQ,
    )


def check_best_metric(config: Any) -> None:
    """Fail before training when TRAIN.BEST_METRIC is not a key of the per-epoch summary."""
    targets = np.eye(len(CLASSES), dtype=np.float32)
    keys = summarize(targets, np.full_like(targets, 0.5)).keys()
    if config.TRAIN.BEST_METRIC not in keys:
        raise ValueError(f"TRAIN.BEST_METRIC {config.TRAIN.BEST_METRIC!r} is not one of: {', '.join(keys)}")


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One training run: what the epoch loop reads and updates."""

    config: Any
    trainer: Trainer
    loader_train: Any
    loader_val: Any
    rank: int
    logger: Any
    best: Best = field(default_factory=Best)
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # validation summary of the last completed epoch

    @property
    def out(self) -> Path:
        return run_dir(self.config)

    def eval_model(self) -> torch.nn.Module:
        """EMA weights when MODEL.EMA.EVAL, else the raw module: the weights that are selected and saved as best."""
        use_ema = self.trainer.ema is not None and self.config.MODEL.EMA.EVAL
        return self.trainer.ema.module if use_ema else self.trainer.module


def train(config: Any, device: torch.device, rank: int, logger: Any) -> int:
    """Build everything, resume if there is a checkpoint, run the epochs; returns the exit code."""
    check_best_metric(config)
    seed_everything(config.SEED + rank)
    dataset_train, dataset_val, loader_train, loader_val, mixup_fn = build_loader(config)
    logger.info(
        f"data: {len(dataset_train)} train images ({len(loader_train.sampler.indices)} samples with "
        f"DATA.OVERSAMPLE), {len(dataset_val)} val images, {len(loader_train)} steps/epoch"
    )
    model = build_model(config).to(device)
    logger.info(f"model: {config.MODEL.TYPE} head={config.MODEL.HEAD} psa={config.MODEL.PSA.ENABLE} "
                f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    updates_per_epoch = math.ceil(len(loader_train) / config.TRAIN.ACCUMULATION_STEPS)
    trainer = build_trainer(config, model, device, updates_per_epoch, mixup_fn, logger)
    run = Run(config, trainer, loader_train, loader_val, rank, logger)

    resume_file = find_resume_file(config, run.out, logger)
    ckpt = load_training_checkpoint(resume_file) if resume_file else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        trainer.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if trainer.scaler is not None and ckpt.get("scaler"):
            trainer.scaler.load_state_dict(ckpt["scaler"])
    elif config.MODEL.PRETRAINED:
        load_pretrained(config, model, logger)
    if dist.is_initialized():
        trainer.model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.MODEL.EMA.ENABLE:
        # After loading and the DDP broadcast, so every rank averages the same starting weights.
        trainer.ema = ModelEmaV3(model, decay=config.MODEL.EMA.DECAY)
        if ckpt is not None and ckpt.get("ema") is not None:
            trainer.ema.module.load_state_dict(ckpt["ema"])

    start_epoch, start_step = 0, 0
    if ckpt is not None:
        start_epoch, start_step = ckpt["epoch"] + 1, ckpt["step"]
        resume_from(run, ckpt, updates_per_epoch)
        logger.info(f"resumed from {resume_file}: epoch {start_epoch} step {start_step} "
                    f"(best {config.TRAIN.BEST_METRIC} {run.best.value:.4f} at epoch {run.best.epoch})")
    if rank == 0:
        atomic_write_text(config.dump(), run.out / "config.yaml")

    with GracefulStop() as stop:
        code = train_epochs(run, start_epoch, start_step, stop)
    if code == 0:
        report_best(run)
    return code


def resume_from(run: Run, ckpt: dict, updates_per_epoch: int) -> None:
    """Best-so-far, history, update count and RNG of the checkpoint (weights are loaded by the caller)."""
    config, trainer = run.config, run.trainer
    run.best = Best(ckpt["best_metric"], ckpt["best_epoch"], list(ckpt["thresholds"]))
    run.metrics = dict(ckpt.get("metrics") or {})
    run.history = read_history(run.out / "history.csv", ckpt["epoch"])
    trainer.num_updates = ((ckpt["epoch"] + 1) * updates_per_epoch
                           + math.ceil(ckpt["step"] / config.TRAIN.ACCUMULATION_STEPS))
    if dist.is_initialized():  # exact replay is a single-process promise; keep the ranks decorrelated
        seed_everything(config.SEED + run.rank + trainer.num_updates)
    else:
        set_rng_state(ckpt["rng"])


def train_epochs(run: Run, start_epoch: int, start_step: int, stop: GracefulStop) -> int:
    """Epochs from ``start_epoch`` (its first ``start_step`` batches already done); 0 done, 130 interrupted."""
    config, logger, best, loader = run.config, run.logger, run.best, run.loader_train
    patience = config.TRAIN.PATIENCE
    for epoch in range(start_epoch, config.TRAIN.EPOCHS):
        if patience and epoch - 1 - best.epoch >= patience:
            logger.info(f"early stop: no better {config.TRAIN.BEST_METRIC} for {patience} epochs "
                        f"(best {best.value:.4f} at epoch {best.epoch})")
            break
        step = start_step if epoch == start_epoch else 0
        loader.sampler.set_epoch(epoch, skip=step * loader.batch_size)
        started = time.time()
        result = train_one_epoch(run.trainer, loader, epoch, config.TRAIN.EPOCHS, logger, step, should_stop=stop)
        if result.interrupted:
            return save_interrupted(run, epoch, result.steps_done, stop)
        metrics, thresholds = validate_epoch(run)
        improved = best.improves(metrics[config.TRAIN.BEST_METRIC])
        if improved:
            best.value, best.epoch, best.thresholds = metrics[config.TRAIN.BEST_METRIC], epoch, thresholds
        run.metrics = metrics
        run.history.append({"epoch": epoch, "train_loss": result.loss,
                            "lr": run.trainer.optimizer.param_groups[0]["lr"],
                            "time_s": round(time.time() - started, 1), **metrics})
        log_epoch(run, epoch, result.loss, improved)
        if run.rank == 0:
            save_epoch(run, epoch, improved)
        if stop.requested:
            logger.warning(f"{stop.requested}: stopped after epoch {epoch}; run the same command to resume")
            return EXIT_INTERRUPTED
    if best.epoch >= 0:
        logger.info(f"done: best {config.TRAIN.BEST_METRIC} {best.value:.4f} at epoch {best.epoch} "
                    f"({run.out / 'ckpt_best.pth'})")
    return 0


def validate_epoch(run: Run) -> tuple[dict, list[float]]:
    """(summary with val_loss, thresholds tuned on val) of the selection weights."""
    trainer = run.trainer
    evaluation = evaluate(run.eval_model(), run.loader_val, trainer.criterion, trainer.device, trainer.autocast)
    thresholds = [float(t) for t in tune_thresholds(evaluation.targets, evaluation.probs)]
    summary = summarize(evaluation.targets, evaluation.probs, thresholds)
    return {"val_loss": evaluation.loss, **summary}, thresholds


def log_epoch(run: Run, epoch: int, train_loss: float, improved: bool) -> None:
    keys = ("val_loss", "macro_f1", "macro_f1_tuned", "micro_f1", "samples_f1", "mAP", run.config.TRAIN.BEST_METRIC)
    shown = " ".join(f"{k} {run.metrics[k]:.4f}" for k in dict.fromkeys(keys) if k in run.metrics)
    mark = " *best*" if improved else f" (best {run.best.value:.4f} at epoch {run.best.epoch})"
    run.logger.info(f"epoch {epoch}: train_loss {train_loss:.4f} {shown}{mark}")


def save_epoch(run: Run, epoch: int, improved: bool) -> None:
    """History, curves, then checkpoints: a crash in between only makes the resumed run redo this epoch."""
    out, config = run.out, run.config
    write_history(run.history, out / "history.csv")
    plot_curves(run.history, out / "curves.png", config.TRAIN.BEST_METRIC)
    state = checkpoint_state(config, run.trainer, epoch, 0, run.best, run.metrics)
    if improved:
        atomic_save(state, out / "ckpt_best.pth")
        thresholds = dict(zip(CLASSES, run.best.thresholds))
        atomic_write_text(json.dumps(thresholds, indent=2) + "\n", out / "thresholds.json")
    if config.SAVE_FREQ and (epoch + 1) % config.SAVE_FREQ == 0:
        atomic_save(state, out / f"ckpt_epoch_{epoch}.pth")
    atomic_save(state, out / "ckpt_latest.pth")


def save_interrupted(run: Run, epoch: int, steps_done: int, stop: GracefulStop) -> int:
    """Mid-epoch ckpt_latest.pth: the last completed epoch plus the steps done in this one."""
    latest = run.out / "ckpt_latest.pth"
    if run.rank == 0:
        atomic_save(checkpoint_state(run.config, run.trainer, epoch - 1, steps_done, run.best, run.metrics), latest)
    run.logger.warning(f"{stop.requested}: saved {latest} at epoch {epoch} step {steps_done}; "
                       "run the same command to resume")
    return EXIT_INTERRUPTED


def report_best(run: Run) -> None:
    """Re-evaluate ckpt_best.pth and print its per-class validation table."""
    best_file = run.out / "ckpt_best.pth"
    if not best_file.is_file():
        return
    ckpt = load_checkpoint_file(best_file)
    trainer = run.trainer
    trainer.module.load_state_dict(inference_weights(ckpt, run.config))
    evaluation = evaluate(trainer.module, run.loader_val, trainer.criterion, trainer.device, trainer.autocast)
    if run.rank == 0:
        run.logger.info(f"validation of the best epoch ({ckpt['epoch']}, thresholds tuned on val):\n"
                        + format_table(evaluation, ckpt["thresholds"]))


def run_eval(config: Any, device: torch.device, rank: int, logger: Any) -> int:
    """--eval: the validation table of MODEL.RESUME (or the run's ckpt_best.pth / ckpt_latest.pth)."""
    out = run_dir(config)
    candidates = [Path(config.MODEL.RESUME)] if config.MODEL.RESUME else [out / "ckpt_best.pth", out / "ckpt_latest.pth"]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"--eval: no checkpoint at {candidates[0]} (train first or give --resume FILE)")
    ckpt = load_checkpoint_file(path)
    if "model" not in ckpt:
        raise ValueError(f"{path}: not a checkpoint of main.py (no 'model')")
    model = build_model(config).to(device)
    model.load_state_dict(inference_weights(ckpt, config))
    dataset_val, loader_val = build_val_loader(config)
    amp_enabled, amp_dtype = amp_settings(config, device, logger)
    autocast = autocast_factory(device, amp_enabled, amp_dtype)
    evaluation = evaluate(model, loader_val, build_loss(config).to(device), device, autocast)
    thresholds = list(ckpt.get("thresholds") or [config.TEST.THRESHOLD] * len(CLASSES))
    summary = {"val_loss": evaluation.loss, **summarize(evaluation.targets, evaluation.probs, thresholds)}
    if rank == 0:
        logger.info(f"{path} on {len(evaluation.targets)} val images (thresholds of the checkpoint):\n"
                    + format_table(evaluation, thresholds))
        report = {"checkpoint": str(path), "num_images": len(evaluation.targets), **summary}
        atomic_write_text(json.dumps(report, indent=2) + "\n", out / "eval_metrics.json")
        logger.info(f"wrote {out / 'eval_metrics.json'}")
    return 0


def run_throughput(config: Any, device: torch.device, logger: Any) -> int:
    """--throughput: model-only img/s on a synthetic batch, then loader-only img/s, reported separately."""
    model = build_model(config).to(device)
    amp_enabled, amp_dtype = amp_settings(config, device, logger)
    images = torch.randn(config.DATA.BATCH_SIZE, 3, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE, device=device)
    model_rate = throughput(model, images, autocast_factory(device, amp_enabled, amp_dtype))
    logger.info(f"model throughput: {model_rate:.1f} img/s (batch {len(images)}, {config.DATA.IMG_SIZE}px, "
                f"{device}, inference)")
    _, _, loader_train, _, _ = build_loader(config)
    loader_rate = loader_throughput(loader_train)
    logger.info(f"loader throughput: {loader_rate:.1f} img/s ({config.DATA.NUM_WORKERS} workers, "
                "training transforms)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = get_config(args)
    device = select_device(config.DEVICE, config.LOCAL_RANK)
    rank, world_size = init_distributed(device)
    logger = create_logger(run_dir(config), rank)
    logger.info(f"device {device}, {world_size} process(es); run dir {run_dir(config)}")
    try:
        if config.THROUGHPUT_MODE:
            return run_throughput(config, device, logger)
        if config.EVAL_MODE:
            return run_eval(config, device, rank, logger)
        return train(config, device, rank, logger)
    except NonFiniteLossError as err:
        logger.error(f"{err}; the last good checkpoint is kept: {run_dir(config) / 'ckpt_latest.pth'}")
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
