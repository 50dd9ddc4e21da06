"""The learning-rate schedule: timm's per-update schedules, and ``plateau`` stepped on the validation metric.

Both answer the loop's two calls: ``step_update(num_updates)`` after every optimizer step, and
``step(epoch, metric)`` after every validation (a no-op for timm's per-update schedules). Every
parameter group's lr is the schedule's lr times its ``lr_scale`` (see ``training.engine.param_groups``).
"""
from __future__ import annotations

from typing import Any

import torch
from timm.scheduler import create_scheduler_v2
from torch.optim.lr_scheduler import ReduceLROnPlateau
from yacs.config import CfgNode

PLATEAU = "plateau"


class PlateauSchedule:
    """Linear warmup per update, then PyTorch's ``ReduceLROnPlateau`` on a higher-is-better metric.

    timm's own plateau schedule needs epoch-stepped warmup and keeps no state of its own across a
    resume; this one checkpoints the plateau counters with the run, so a resumed run lowers the lr at
    the same epoch as an uninterrupted one. Torch's patience: the lr is multiplied by ``factor`` at
    the end of the (``patience`` + 1)-th epoch in a row without improvement, never below ``min_lr``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, warmup_lr: float, warmup_updates: int,
                 factor: float, patience: int, min_lr: float):
        self.optimizer = optimizer
        self.base_lr, self.warmup_lr, self.warmup_updates = base_lr, warmup_lr, warmup_updates
        scales = [group.get("lr_scale", 1.0) for group in optimizer.param_groups]
        self.plateau = ReduceLROnPlateau(optimizer, mode="max", factor=factor, patience=patience,
                                         min_lr=[min_lr * scale for scale in scales])
        self.num_updates = 0
        self._set_lr(self._lr_at(0))

    def _lr_at(self, num_updates: int) -> float:
        if num_updates >= self.warmup_updates:
            return self.base_lr
        return self.warmup_lr + (self.base_lr - self.warmup_lr) * num_updates / self.warmup_updates

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        """The warmup lr until its last update sets the base lr; after it, the plateau's lr is left alone."""
        self.num_updates = num_updates
        if num_updates <= self.warmup_updates:
            self._set_lr(self._lr_at(num_updates))

    def step(self, epoch: int, metric: float | None = None) -> None:
        """After validation (once warmup is over): count an epoch without a better ``metric``; lower the lr on
        a plateau."""
        if metric is not None and self.num_updates >= self.warmup_updates:
            self.plateau.step(metric)

    def state_dict(self) -> dict[str, Any]:
        return {"plateau": self.plateau.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau.load_state_dict(state["plateau"])


def build_scheduler(config: CfgNode, optimizer: torch.optim.Optimizer, updates_per_epoch: int) -> Any:
    """The schedule of TRAIN.LR_SCHEDULER.NAME: warmup for WARMUP_EPOCHS, then a timm decay stepped per update
    (EPOCHS in all), or ``plateau`` (:class:`PlateauSchedule`, DECAY_RATE per plateau of PATIENCE_EPOCHS)."""
    train = config.TRAIN
    schedule = train.LR_SCHEDULER
    if schedule.NAME == PLATEAU:
        return PlateauSchedule(optimizer, train.BASE_LR, train.WARMUP_LR, train.WARMUP_EPOCHS * updates_per_epoch,
                               schedule.DECAY_RATE, schedule.PATIENCE_EPOCHS, train.MIN_LR)
    try:
        scheduler, _ = create_scheduler_v2(
            optimizer,
            sched=schedule.NAME,
            num_epochs=max(train.EPOCHS - train.WARMUP_EPOCHS, 1),
            decay_epochs=schedule.DECAY_EPOCHS,
            # multistep: timm counts its milestones after the warmup prefix, ours from the start of training
            decay_milestones=[m - train.WARMUP_EPOCHS for m in schedule.MILESTONES],
            decay_rate=schedule.DECAY_RATE,
            min_lr=train.MIN_LR,
            warmup_lr=train.WARMUP_LR,
            warmup_epochs=train.WARMUP_EPOCHS,
            warmup_prefix=True,
            step_on_epochs=False,
            updates_per_epoch=updates_per_epoch,
        )
    except ValueError:  # timm: "Unknown scheduler"
        scheduler = None
    if scheduler is None:
        raise ValueError(f"TRAIN.LR_SCHEDULER.NAME {schedule.NAME!r} is not a timm schedule "
                         "(cosine, step, multistep, tanh, poly, constant, ...) or plateau")
    return scheduler
