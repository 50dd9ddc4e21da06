"""The loops: one epoch of training, validation, and the optimizer (its schedule: training.schedule)."""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable

import numpy as np
import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from yacs.config import CfgNode

from data.labels import NUM_CLASSES
from evaluation.inference import forward_batches
from evaluation.metrics import summarize
from evaluation.thresholds import DEFAULT_THRESHOLD
from utils.distributed import get_rank, get_world_size, is_distributed


class NonFiniteLossError(RuntimeError):
    """The training loss, or the validation after an epoch's updates, became NaN or infinite; nothing
    computed after it may be saved."""

    def __init__(self, epoch: int, step: int | None, value: float, what: str = "training loss") -> None:
        where = f"epoch {epoch} step {step}" if step is not None else f"the end of epoch {epoch}"
        super().__init__(
            f"non-finite {what} ({value}) at {where}: stopping "
            "(lower TRAIN.BASE_LR, keep TRAIN.CLIP_GRAD on, or check the data)"
        )


@dataclass
class Trainer:
    """Everything one optimisation step needs; ``num_updates`` counts optimizer steps since the start."""

    model: nn.Module  # possibly DistributedDataParallel
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any  # training.schedule: step_update per update, step per validation
    device: torch.device
    autocast: Callable[[], ContextManager]
    scaler: torch.amp.GradScaler | None = None
    ema: Any = None  # timm ModelEmaV3
    mixup_fn: Callable | None = None
    accumulation_steps: int = 1
    clip_grad: float = 0.0
    print_freq: int = 10
    num_updates: int = 0

    @property
    def module(self) -> nn.Module:
        """The model without its DDP wrapper."""
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model


@dataclass
class TrainOutputs:
    """Probabilities and labels of the epoch's training batches, for its training macro-F1 and mAP.

    They are the outputs the loss saw: augmented images, dropout on, ArcFace's margin at the
    positives (so its training F1 reads low). Batches mixed by Mixup/CutMix have no hard labels and
    are left out. Kept in a mid-epoch checkpoint, so a resumed epoch scores all of its batches.
    """

    probs: list[torch.Tensor] = field(default_factory=list)
    targets: list[torch.Tensor] = field(default_factory=list)

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.probs.append(torch.sigmoid(logits.detach().float()).cpu())
        self.targets.append(targets.detach().cpu().to(torch.uint8))

    def state_dict(self) -> dict[str, torch.Tensor]:
        empty = torch.empty(0, NUM_CLASSES)
        return {"probs": torch.cat(self.probs) if self.probs else empty,
                "targets": torch.cat(self.targets) if self.targets else empty.to(torch.uint8)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor] | None) -> "TrainOutputs":
        if not state or not len(state["probs"]):
            return cls()
        return cls([state["probs"]], [state["targets"]])

    def metrics(self) -> dict[str, float]:
        """``train_macro_f1``, ``train_exact_match`` (at the 0.5 threshold: tuning on the training batches would
        flatter) and ``train_mAP``; nan when no batch had hard labels."""
        if not self.probs:
            return {"train_macro_f1": math.nan, "train_exact_match": math.nan, "train_mAP": math.nan}
        state = self.state_dict()
        summary = summarize(state["targets"].numpy(), state["probs"].numpy(), [DEFAULT_THRESHOLD] * NUM_CLASSES)
        return {"train_macro_f1": summary["macro_f1"], "train_exact_match": summary["exact_match"],
                "train_mAP": summary["mAP"]}


@dataclass
class EpochResult:
    loss: float  # mean training loss of the steps run in this call
    steps_done: int  # batches of the epoch done so far (including those before a resume)
    interrupted: bool  # stopped early on request; the epoch is not finished
    outputs: TrainOutputs = field(default_factory=TrainOutputs)  # every batch of the epoch so far


def no_weight_decay_patterns(model: nn.Module) -> list[str]:
    """fnmatch patterns of parameters kept out of weight decay (position tables, ...).

    The names a model reports may or may not carry the wrapper's ``backbone.`` prefix, so both
    spellings are matched; keywords match anywhere in the name. Norms and biases (1-d) are
    excluded by timm already.
    """
    names = set(getattr(model, "no_weight_decay", set)())
    keywords = set(getattr(model, "no_weight_decay_keywords", set)())
    return sorted(names | {f"*.{n}" for n in names} | {f"*{k}*" for k in keywords})


def param_groups(config: CfgNode, model: nn.Module) -> list[dict]:
    """Optimizer groups of ``model`` (a ``MultiLabelNet``): neck and head first, then the backbone.

    Every group carries ``lr_scale``, which timm's schedulers multiply into the group's lr at each
    step: 1 for the new neck and head (so ``param_groups[0]['lr']`` is the schedule's own lr),
    ``TRAIN.BACKBONE_LR_SCALE`` for the backbone, times timm's layer-wise decay when
    ``TRAIN.LAYER_DECAY`` < 1. Call it while every parameter is trainable (timm's helpers skip frozen
    ones): freezing later only withholds gradients, so the groups never change during a run.
    """
    train = config.TRAIN
    new = nn.ModuleDict({name: child for name, child in model.named_children() if name != "backbone"})
    groups = param_groups_weight_decay(new, train.WEIGHT_DECAY, no_weight_decay_list=no_weight_decay_patterns(model))
    backbone_no_decay = no_weight_decay_patterns(model.backbone)
    if train.LAYER_DECAY < 1:
        backbone_groups = param_groups_layer_decay(model.backbone, train.WEIGHT_DECAY, backbone_no_decay,
                                                   layer_decay=train.LAYER_DECAY)
    else:
        backbone_groups = param_groups_weight_decay(model.backbone, train.WEIGHT_DECAY,
                                                    no_weight_decay_list=backbone_no_decay)
    scale = train.BACKBONE_LR_SCALE
    return ([{**group, "lr_scale": 1.0} for group in groups]
            + [{**group, "lr_scale": group.get("lr_scale", 1.0) * scale} for group in backbone_groups])


def build_optimizer(config: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """timm optimizer ``TRAIN.OPTIMIZER.NAME`` at ``TRAIN.BASE_LR`` (used as given, no batch-size scaling)
    over :func:`param_groups`."""
    train = config.TRAIN
    name = train.OPTIMIZER.NAME.lower()
    extra = {} if name in ("sgd", "momentum") else dict(eps=train.OPTIMIZER.EPS, betas=tuple(train.OPTIMIZER.BETAS))
    return create_optimizer_v2(
        param_groups(config, model), opt=name, lr=train.BASE_LR, weight_decay=train.WEIGHT_DECAY,
        momentum=train.OPTIMIZER.MOMENTUM, **extra,
    )


def memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or this process's resident memory on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: peak resident memory instead
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def _all_ranks_stop(local: bool, device: torch.device) -> bool:
    """True when any rank asked to stop, so that all ranks stop after the same step."""
    if not is_distributed():
        return local
    flag = torch.tensor([float(local)], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _optimizer_step(trainer: Trainer, log_grad_norm: bool) -> float:
    """Unscale, clip, step, zero the gradients and advance the schedule/EMA; returns the grad norm (or nan)."""
    model, optimizer, scaler = trainer.model, trainer.optimizer, trainer.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = float("nan")
    if trainer.clip_grad > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.clip_grad).item()
    elif log_grad_norm:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]).item()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    trainer.num_updates += 1
    trainer.lr_scheduler.step_update(num_updates=trainer.num_updates)
    if trainer.ema is not None:
        trainer.ema.update(trainer.module, step=trainer.num_updates)
    return grad_norm


def _backward(trainer: Trainer, images: torch.Tensor, targets: torch.Tensor, sync: bool,
              where: tuple[int, int]) -> tuple[float, torch.Tensor]:
    """Forward and backward of one micro-batch (its loss divided by the accumulation steps); returns the loss
    and the logits.

    Only the last micro-batch of an accumulation group (``sync``) all-reduces gradients under DDP.
    """
    model = trainer.model
    no_sync = isinstance(model, DistributedDataParallel) and not sync
    with model.no_sync() if no_sync else contextlib.nullcontext():
        with trainer.autocast():
            # Targets reach the model in training only: the ArcFace head puts its margin at positives.
            logits = model(images, targets)
            loss = trainer.criterion(logits, targets)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(*where, loss_value)
        loss = loss / trainer.accumulation_steps
        (trainer.scaler.scale(loss) if trainer.scaler is not None else loss).backward()
    return loss_value, logits


def train_one_epoch(
    trainer: Trainer,
    loader: Iterable,
    epoch: int,
    num_epochs: int,
    logger: Any,
    start_step: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
    outputs: TrainOutputs | None = None,
) -> EpochResult:
    """Train over ``loader`` (the batches of ``epoch`` from ``start_step`` on; ``outputs``: those of the
    batches before ``start_step``, from the checkpoint).

    ``should_stop()`` is asked after every optimizer step; when it (on any rank) says
    yes, the epoch ends there with ``interrupted=True``. Raises :class:`NonFiniteLossError`
    before a NaN/inf loss is back-propagated.
    """
    model, accum = trainer.model, trainer.accumulation_steps
    outputs = outputs if outputs is not None else TrainOutputs()
    model.train()
    total_steps = start_step + len(loader)
    batch_size = getattr(loader, "batch_size", None) or 1
    world = get_world_size()
    bar = tqdm(
        total=total_steps, initial=start_step, desc=f"epoch {epoch}/{num_epochs - 1}", leave=False,
        disable=get_rank() != 0, dynamic_ncols=True, mininterval=1.0, unit="step",
    )
    loss_sum, loss_count, grad_norm = 0.0, 0, float("nan")
    start = time.perf_counter()
    with bar:
        for step, (images, targets) in enumerate(loader, start=start_step):
            images = images.to(trainer.device, non_blocking=True)
            targets = targets.to(trainer.device, non_blocking=True)
            if trainer.mixup_fn is not None:
                images, targets = trainer.mixup_fn(images, targets)
            update = (step + 1) % accum == 0 or step + 1 == total_steps
            loss_value, logits = _backward(trainer, images, targets, sync=update, where=(epoch, step))
            if trainer.mixup_fn is None:
                outputs.add(logits, targets)
            loss_sum, loss_count = loss_sum + loss_value, loss_count + 1
            log_now = (step + 1) % trainer.print_freq == 0 or step + 1 == total_steps
            if update:
                grad_norm = _optimizer_step(trainer, log_grad_norm=log_now)
            elapsed = time.perf_counter() - start
            images_per_s = loss_count * batch_size * world / max(elapsed, 1e-9)
            lr = trainer.optimizer.param_groups[0]["lr"]
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}", refresh=False)
            if log_now:
                eta = datetime.timedelta(seconds=int(elapsed / loss_count * (total_steps - step - 1)))
                logger.info(
                    f"train [{epoch}/{num_epochs - 1}][{step + 1}/{total_steps}] eta {eta} lr {lr:.3e} "
                    f"loss {loss_value:.4f} ({loss_sum / loss_count:.4f}) grad_norm {grad_norm:.3f} "
                    f"mem {memory_mb(trainer.device):.0f}MB {images_per_s:.1f} img/s"
                )
            if update and _all_ranks_stop(should_stop(), trainer.device):
                return EpochResult(loss_sum / max(loss_count, 1), step + 1, interrupted=True, outputs=outputs)
    return EpochResult(loss_sum / max(loss_count, 1), total_steps, interrupted=False, outputs=outputs)


@dataclass
class Evaluation:
    loss: float
    targets: np.ndarray  # (N, 6) multi-hot, in dataset order
    probs: np.ndarray  # (N, 6) sigmoid probabilities, in dataset order


def evaluate(
    model: nn.Module,
    loader: Any,
    criterion: nn.Module,
    device: torch.device,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
) -> Evaluation:
    """Validation loss and probabilities of every image exactly once, gathered from all ranks
    (``inference.forward_batches``: the loop every prediction runs through)."""
    logits, targets = forward_batches(model, loader, device, autocast=autocast, desc="val", gather=True)
    targets = torch.stack(targets).float() if targets else torch.empty(0, NUM_CLASSES)
    loss = criterion(logits, targets).item()
    return Evaluation(loss, targets.numpy(), torch.sigmoid(logits).numpy())
