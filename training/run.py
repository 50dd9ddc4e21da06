"""One training run: build it from the config, resume it, run its epochs, save and report.

Everything goes to the run dir OUTPUT/MODEL.NAME/TAG (its files: ``rundir.RunDir``).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from yacs.config import CfgNode

from data.dataset import TreeSplit
from data.labels import CLASSES
from data.loader import build_loader, oversampling_summary
from evaluation.evaluate import evaluate_checkpoint
from evaluation.metrics import summarize
from evaluation.reports import coloured_table, training_curves_png
from evaluation.thresholds import DEFAULT_THRESHOLD, tune_thresholds, write_thresholds
from models import build_loss, build_model
from models.build import counted_pos_weight
from training.checkpoint import (
    load_pretrained,
    load_resume_checkpoint,
    restore_training,
    save_latest,
    training_state,
)
from training.engine import (
    EpochResult,
    NonFiniteLossError,
    Trainer,
    TrainOutputs,
    build_optimizer,
    evaluate,
    train_one_epoch,
)
from training.history import read_history, write_history
from training.rundir import RunDir
from training.schedule import build_scheduler
from training.stop import GracefulStop
from utils.errors import EXIT_INTERRUPTED, EXIT_OK
from utils.faults import pause_at
from utils.files import atomic_save, atomic_write_bytes, atomic_write_text, remove_partial_writes
from utils.log import short_list
from utils.runtime import amp_dtype, autocast_factory, place_model
from utils.seeding import seed_epoch, seed_everything, set_rng_state


@dataclass
class Best:
    """The best validation epoch so far (by TRAIN.BEST_METRIC, higher is better)."""

    value: float = -math.inf
    epoch: int = -1
    thresholds: list[float] = field(default_factory=lambda: [DEFAULT_THRESHOLD] * len(CLASSES))

    def improves(self, value: float) -> bool:
        return not math.isnan(value) and value > self.value


def build_trainer(config: CfgNode, model: torch.nn.Module, device: torch.device, updates_per_epoch: int,
                  mixup_fn: Any, logger: logging.Logger) -> Trainer:
    """Loss, optimizer, per-update schedule, autocast and (CUDA fp16 only) a GradScaler around ``model``."""
    dtype = amp_dtype(config, device, logger)
    optimizer = build_optimizer(config, model)
    return Trainer(
        model=model,
        criterion=build_loss(config).to(device),
        optimizer=optimizer,
        lr_scheduler=build_scheduler(config, optimizer, updates_per_epoch),
        device=device,
        autocast=autocast_factory(device, dtype),
        scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None,
        mixup_fn=mixup_fn,
        accumulation_steps=config.TRAIN.ACCUMULATION_STEPS,
        clip_grad=config.TRAIN.CLIP_GRAD,
        print_freq=config.PRINT_FREQ,
    )


def check_best_metric(config: CfgNode) -> None:
    """Fail before training when TRAIN.BEST_METRIC is not a key of the per-epoch summary."""
    targets = np.eye(len(CLASSES), dtype=np.float32)
    keys = summarize(targets, np.full_like(targets, 0.5)).keys()
    if config.TRAIN.BEST_METRIC not in keys:
        raise ValueError(f"TRAIN.BEST_METRIC {config.TRAIN.BEST_METRIC!r} is not one of: {', '.join(keys)}")


@dataclass
class Run:
    """One training run: what the epoch loop reads and updates."""

    config: CfgNode
    trainer: Trainer
    loader_train: Any
    loader_val: Any
    rank: int
    logger: logging.Logger
    best: Best = field(default_factory=Best)
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # validation summary of the last completed epoch
    resumed_outputs: TrainOutputs | None = None  # a mid-epoch checkpoint's training outputs of its epoch

    @property
    def dir(self) -> RunDir:
        return RunDir.of(self.config)

    def eval_model(self) -> torch.nn.Module:
        """EMA weights when MODEL.EMA.EVAL, else the raw module: the weights that are selected and saved as best."""
        use_ema = self.trainer.ema is not None and self.config.MODEL.EMA.EVAL
        return self.trainer.ema.module if use_ema else self.trainer.module


def with_counted_pos_weight(config: CfgNode, targets: np.ndarray, logger: logging.Logger) -> CfgNode:
    """LOSS.POS_WEIGHT_AUTO: the config with LOSS.POS_WEIGHT counted on the training split (before
    DATA.OVERSAMPLE), so that config.yaml and every checkpoint carry the numbers used."""
    if not config.LOSS.POS_WEIGHT_AUTO or config.LOSS.POS_WEIGHT:
        return config
    config = config.clone()
    config.defrost()
    config.LOSS.POS_WEIGHT = counted_pos_weight(targets, config.LOSS.POS_WEIGHT_POWER)
    config.freeze()
    logger.info(f"LOSS.POS_WEIGHT from the {len(targets)} training images: "
                + ", ".join(f"{c} {w:g}" for c, w in zip(CLASSES, config.LOSS.POS_WEIGHT)))
    return config


def train(config: CfgNode, device: torch.device, rank: int, logger: logging.Logger) -> int:
    """Build everything, resume if there is a checkpoint, run the epochs; returns the exit code."""
    check_best_metric(config)
    seed_everything(config.SEED + rank)
    dataset_train, dataset_val, loader_train, loader_val, mixup_fn = build_loader(config)
    config = with_counted_pos_weight(config, dataset_train.targets, logger)
    logger.info(
        f"data: {len(dataset_train)} train images ({len(loader_train.sampler.indices)} samples with "
        f"DATA.OVERSAMPLE), {len(dataset_val)} val images, {len(loader_train)} steps/epoch"
    )
    oversampled = oversampling_summary(dataset_train.targets, loader_train.sampler.indices)
    if oversampled:
        logger.info(f"oversampling (images with the label, per epoch): {oversampled}")
    model = place_model(build_model(config), config, device)
    logger.info(f"model: {config.MODEL.TYPE} head={config.MODEL.HEAD} psa={config.MODEL.PSA.ENABLE}, "
                f"{parameter_summary(model)}")
    updates_per_epoch = math.ceil(len(loader_train) / config.TRAIN.ACCUMULATION_STEPS)
    trainer = build_trainer(config, model, device, updates_per_epoch, mixup_fn, logger)
    run = Run(config, trainer, loader_train, loader_val, rank, logger)

    if rank == 0:
        remove_killed_writes(run)
    resume_file, ckpt = load_resume_checkpoint(config, run.dir, logger) or (None, None)
    if ckpt is not None:
        restore_or_refuse(resume_file, ckpt, trainer, config)
    elif config.MODEL.PRETRAINED:
        load_pretrained(config, model, logger)
    if dist.is_initialized():
        # a frozen backbone has no gradients to reduce: DDP must be told that some parameters go unused
        trainer.model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                find_unused_parameters=config.TRAIN.FREEZE_BACKBONE_EPOCHS > 0)
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
        atomic_write_text(config.dump(), run.dir.config_file)
        atomic_write_text(f"{model}\n", run.dir.model_file)

    with GracefulStop() as stop:
        code = train_epochs(run, start_epoch, start_step, stop)
    if code == EXIT_OK and rank == 0:
        report_best(run)
    return code


def parameter_summary(model: torch.nn.Module) -> str:
    """``28.29M parameters, 28.29M trainable (backbone 27.52M, neck 0.77M, head 0.00M)``: the model's parts
    with parameters, in millions."""
    def millions(parameters) -> str:
        return f"{sum(p.numel() for p in parameters) / 1e6:.2f}M"

    parts = ", ".join(f"{name} {millions(part.parameters())}" for name, part in model.named_children()
                      if any(True for _ in part.parameters()))
    trainable = millions(p for p in model.parameters() if p.requires_grad)
    return f"{millions(model.parameters())} parameters, {trainable} trainable ({parts})"


def restore_or_refuse(path: Path, ckpt: dict, trainer: Trainer, config: CfgNode) -> None:
    """``restore_training``; a checkpoint of another model or optimizer layout (the config changed since it
    was saved, e.g. the model's size or head) is one line naming it, not torch's size-mismatch traceback."""
    try:
        restore_training(ckpt, trainer)
    except (RuntimeError, ValueError) as error:  # load_state_dict: size mismatch, missing or unexpected keys
        changed = changed_model_keys(ckpt.get("config", ""), config)
        detail = f"changed: {short_list(changed, 4)}" if changed else str(error).strip().splitlines()[-1].strip()
        raise ValueError(f"{path}: the config changed since this checkpoint was saved, it cannot resume it "
                         f"({detail}); train this config under another --tag, or move the run dir away") from None


# The keys that decide the shapes of the weights and of the optimizer's parameter groups.
_SHAPE_KEYS = ("MODEL.", "DATA.IMG_SIZE", "TRAIN.LAYER_DECAY", "TRAIN.BACKBONE_LR_SCALE", "TRAIN.OPTIMIZER.")
# MODEL keys that name files or the run, not the model
_NOT_SHAPE_KEYS = ("MODEL.NAME", "MODEL.RESUME", "MODEL.PRETRAINED")


def changed_model_keys(saved: str, config: CfgNode) -> list[str]:
    """``KEY old -> new`` for each key of _SHAPE_KEYS that differs between a checkpoint's saved config
    (its yaml text) and ``config``."""
    try:
        old = _flat(yaml.safe_load(saved) or {})
    except yaml.YAMLError:
        return []
    new = _flat(yaml.safe_load(config.dump()))
    return [f"{key} {old.get(key)} -> {value}" for key, value in new.items()
            if key.startswith(_SHAPE_KEYS) and key not in _NOT_SHAPE_KEYS and old.get(key) != value]


def _flat(tree: dict, prefix: str = "") -> dict:
    """A nested dict as ``{"A.B": value}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def remove_killed_writes(run: Run) -> None:
    """Delete the temp files of writes a kill cut short (the run dir's lock says no other writer runs)."""
    removed = remove_partial_writes(run.dir.path)
    if removed:
        run.logger.warning(f"removed {len(removed)} partial file(s) of a killed run: "
                           f"{short_list([path.name for path in removed])}")


def resume_from(run: Run, ckpt: dict, updates_per_epoch: int) -> None:
    """Best-so-far, history, update count and RNG of the checkpoint (weights are loaded by the caller)."""
    config, trainer = run.config, run.trainer
    run.best = Best(ckpt["best_metric"], ckpt["best_epoch"], list(ckpt["thresholds"]))
    run.metrics = dict(ckpt.get("metrics") or {})
    run.history = read_history(run.dir.history, ckpt["epoch"])
    run.resumed_outputs = TrainOutputs.from_state(ckpt.get("train_outputs"))
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
        if step == 0:  # a run resumed mid-epoch continues from the checkpoint's RNG state instead
            seed_epoch(config.SEED, run.rank, epoch)
        loader.sampler.set_epoch(epoch, skip=step * loader.batch_size)
        stage_backbone(run, epoch)
        started = time.time()
        result = train_one_epoch(run.trainer, loader, epoch, config.TRAIN.EPOCHS, logger, step, should_stop=stop,
                                 outputs=run.resumed_outputs if step else None)
        if result.interrupted:
            return save_interrupted(run, epoch, result, stop)
        metrics, thresholds = validate_epoch(run, epoch)
        improved = best.improves(metrics[config.TRAIN.BEST_METRIC])
        if improved:
            best.value, best.epoch, best.thresholds = metrics[config.TRAIN.BEST_METRIC], epoch, thresholds
        run.metrics = metrics
        run.history.append({"epoch": epoch, "train_loss": result.loss,
                            **result.outputs.metrics(), "lr": run.trainer.optimizer.param_groups[0]["lr"],
                            "time_s": round(time.time() - started, 1), **metrics})
        log_epoch(run, epoch, improved)
        step_schedule_on_validation(run, epoch, metrics[config.TRAIN.BEST_METRIC])
        if run.rank == 0:
            save_epoch(run, epoch, improved)
        if stop.requested:
            logger.warning(f"{stop.requested}: stopped after epoch {epoch}; run the same command to resume")
            return EXIT_INTERRUPTED
    if best.epoch >= 0:
        logger.info(f"done: best {config.TRAIN.BEST_METRIC} {best.value:.4f} at epoch {best.epoch} "
                    f"({run.dir.best_checkpoint})")
    return EXIT_OK


def step_schedule_on_validation(run: Run, epoch: int, metric: float) -> None:
    """The epoch's step of the schedule (``plateau`` lowers the lr here), before the epoch is saved."""
    optimizer = run.trainer.optimizer
    before = optimizer.param_groups[0]["lr"]
    run.trainer.lr_scheduler.step(epoch + 1, metric)
    after = optimizer.param_groups[0]["lr"]
    if after < before:
        run.logger.info(f"epoch {epoch}: {run.config.TRAIN.BEST_METRIC} on a plateau: lr {before:.3e} -> {after:.3e}")


def stage_backbone(run: Run, epoch: int) -> None:
    """Staged unfreezing: the backbone is frozen during the first TRAIN.FREEZE_BACKBONE_EPOCHS epochs.

    A function of the epoch alone, so a run resumed in (or after) the frozen epochs is in the right stage.
    """
    frozen = epoch < run.config.TRAIN.FREEZE_BACKBONE_EPOCHS
    model = run.trainer.module
    if frozen != model.backbone_frozen:
        model.freeze_backbone(frozen)
        run.logger.info(f"epoch {epoch}: backbone {'frozen: only the neck and head learn' if frozen else 'unfrozen'}")


def validate_epoch(run: Run, epoch: int) -> tuple[dict, list[float]]:
    """(summary with val_loss, thresholds tuned on val) of the selection weights.

    Weights that diverged during the epoch (a finite training loss, then NaN weights) stop the run here as
    a non-finite loss does, before anything of the epoch is saved."""
    trainer = run.trainer
    pause_at("validation")
    evaluation = evaluate(run.eval_model(), run.loader_val, trainer.criterion, trainer.device, trainer.autocast)
    if not (math.isfinite(evaluation.loss) and np.isfinite(evaluation.probs).all()):
        raise NonFiniteLossError(epoch, None, evaluation.loss, what="validation loss")
    thresholds = [float(t) for t in tune_thresholds(evaluation.targets, evaluation.probs)]
    summary = summarize(evaluation.targets, evaluation.probs, thresholds)
    return {"val_loss": evaluation.loss, **summary}, thresholds


def log_epoch(run: Run, epoch: int, improved: bool) -> None:
    """One line per epoch: the training loss and metrics, then validation's (history's last row)."""
    keys = ("train_loss", "train_macro_f1", "train_exact_match", "train_mAP", "val_loss", "macro_f1", "macro_f1_tuned",
            "micro_f1", "samples_f1", "exact_match_tuned", "mAP", run.config.TRAIN.BEST_METRIC)
    row = run.history[-1]
    shown = " ".join(f"{k} {row[k]:.4f}" for k in dict.fromkeys(keys) if k in row)
    mark = " *best*" if improved else f" (best {run.best.value:.4f} at epoch {run.best.epoch})"
    run.logger.info(f"epoch {epoch}: {shown}{mark}")


def save_epoch(run: Run, epoch: int, improved: bool) -> None:
    """History, curves, then checkpoints: a crash in between only makes the resumed run redo this epoch."""
    folder, config = run.dir, run.config
    write_history(run.history, folder.history)
    atomic_write_bytes(training_curves_png(run.history, config.TRAIN.BEST_METRIC), folder.curves)
    state = training_state(config, run.trainer, epoch, 0, run.best, run.metrics)
    if improved:
        folder.thresholds(tta=True).unlink(missing_ok=True)  # those of the checkpoint being replaced
        atomic_save(state, folder.best_checkpoint)
        write_thresholds(run.best.thresholds, folder.thresholds())
    if config.SAVE_FREQ and (epoch + 1) % config.SAVE_FREQ == 0:
        atomic_save(state, folder.epoch_checkpoint(epoch))
    save_latest(state, folder)
    pause_at("saved")


def save_interrupted(run: Run, epoch: int, result: EpochResult, stop: GracefulStop) -> int:
    """Mid-epoch ckpt_latest.pth: the last completed epoch plus the steps done in this one (and their outputs)."""
    if run.rank == 0:
        state = training_state(run.config, run.trainer, epoch - 1, result.steps_done, run.best, run.metrics)
        save_latest({**state, "train_outputs": result.outputs.state_dict()}, run.dir)
    run.logger.warning(f"{stop.requested}: saved {run.dir.latest_checkpoint} at epoch {epoch} step "
                       f"{result.steps_done}; run the same command to resume")
    return EXIT_INTERRUPTED


def report_best(run: Run) -> None:
    """Score ckpt_best.pth on validation again, from the file, and log its per-class table; then tune
    its thresholds for TTA (``test.py --tta``) on validation predictions averaged over flips."""
    best_file = run.dir.best_checkpoint
    if not best_file.is_file():
        return
    config = run.config
    split_dir = TreeSplit(Path(config.DATA.DATA_PATH), "val", config.DATA.FOLD)
    device, batch_size, workers = run.trainer.device, config.DATA.BATCH_SIZE, config.DATA.NUM_WORKERS
    result, thresholds, _ = evaluate_checkpoint(best_file, split_dir, device, batch_size, workers)
    run.logger.info(f"validation of the best epoch ({run.best.epoch}, thresholds tuned on val):\n"
                    + coloured_table(result.table))
    result.write(run.dir.best_validation, thresholds, {"checkpoint": str(best_file), "split": "val",
                                                        "best_epoch": run.best.epoch, "num_images": len(result.names)})
    flipped, _, _ = evaluate_checkpoint(best_file, split_dir, device, batch_size, workers, tta=True)
    tta_thresholds = tune_thresholds(flipped.targets, flipped.probs)
    write_thresholds(tta_thresholds, run.dir.thresholds(tta=True))
    plain, tta = result.summary(thresholds), flipped.summary(tta_thresholds)
    run.logger.info(f"validation with TTA (flips), thresholds tuned on it: macro-F1 {tta['macro_f1_tuned']:.4f}, "
                    f"mAP {tta['mAP']:.4f} (without TTA {plain['macro_f1_tuned']:.4f}, {plain['mAP']:.4f}); "
                    f"test.py --tta uses {run.dir.thresholds(tta=True)}")
