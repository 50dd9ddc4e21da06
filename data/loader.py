"""Datasets, samplers and loaders for training and validation.

Training order and augmentation are functions of (SEED, epoch, position in the epoch): the
sampler draws each epoch's permutation and one seed per sample from a generator seeded with
(SEED, epoch), and every image is transformed under its own seed. A run stopped mid-epoch and
resumed therefore sees exactly the images and crops it would have seen, whatever the number of
workers. ``DATA.OVERSAMPLE`` only ever touches the training split.
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from timm.data import Mixup
from torch.utils.data import DataLoader, Dataset, Sampler
from yacs.config import CfgNode

from data.dataset import MultiLabelImageFolder, TreeSplit
from data.folds import NO_FOLD
from data.labels import CLASSES
from data.transforms import build_transform
from utils.distributed import get_rank, get_world_size
from utils.seeding import seeded

# ---------------------------------------------------------------------------------------------
# Oversampling (training split only)
# ---------------------------------------------------------------------------------------------


def oversample_indices(targets: np.ndarray, factors: Mapping[str, int]) -> list[int]:
    """Each image index repeated as often as the largest factor among its labels."""
    weights = np.array([int(factors.get(name, 1)) for name in CLASSES])
    repeats = np.where(targets > 0, weights, 1).max(axis=1)
    return np.repeat(np.arange(len(targets)), repeats).tolist()


def oversampling_summary(targets: np.ndarray, indices: Sequence[int]) -> str:
    """``complex 355 -> 2,130, scab ...``: each class's training images before and after oversampling (the
    classes whose count changed; empty when none did)."""
    before, after = targets.sum(axis=0).astype(int), targets[np.asarray(indices, dtype=int)].sum(axis=0).astype(int)
    return ", ".join(f"{name} {b:,} -> {a:,}" for name, b, a in zip(CLASSES, before, after) if a != b)


def balance_weights(targets: np.ndarray, power: float) -> np.ndarray:
    """Each image's sampling weight: the largest 1 / count ** power among its labels (counts of ``targets``)."""
    counts = np.maximum(targets.sum(axis=0), 1)
    return np.where(targets > 0, counts.astype(np.float64) ** -power, 0).max(axis=1)


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator that depends on (seed, epoch) only."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class EpochSampler(Sampler):
    """Shuffled training sampler that yields ``(dataset index, sample seed)`` pairs.

    The epoch's order and seeds come from (seed, epoch); with several ranks the order is padded
    to a multiple of the world size and each rank takes every ``world``-th entry (as
    DistributedSampler does). ``set_epoch(epoch, skip)`` drops the first ``skip`` samples of
    this rank, to resume mid-epoch.
    """

    def __init__(self, indices: list[int], seed: int, rank: int = 0, world_size: int = 1,
                 weights: np.ndarray | None = None, weighted_until: int = -1) -> None:
        self.indices = list(indices)
        # with ``weights`` (one per entry of ``indices``), epochs before ``weighted_until`` (-1: every
        # epoch) draw as many entries with replacement, in proportion to them, instead of a permutation
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.weighted_until = weighted_until
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0
        self.samples_per_rank = -(-len(self.indices) // world_size)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip

    def epoch_order(self) -> list[tuple[int, int]]:
        """This rank's full ``(index, seed)`` list for the current epoch (before ``skip``)."""
        generator = _epoch_generator(self.seed, self.epoch)
        if self.weights is not None and (self.weighted_until < 0 or self.epoch < self.weighted_until):
            order = torch.multinomial(self.weights, len(self.indices), replacement=True, generator=generator).tolist()
        else:
            order = torch.randperm(len(self.indices), generator=generator).tolist()
        seeds = torch.randint(0, 2**31 - 1, (len(order),), generator=generator).tolist()
        pairs = [(self.indices[i], s) for i, s in zip(order, seeds)]
        total = self.samples_per_rank * self.world_size
        pairs += pairs[: total - len(pairs)]
        return pairs[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.epoch_order()[self.skip :])

    def __len__(self) -> int:
        return max(self.samples_per_rank - self.skip, 0)


class ShardSampler(Sampler):
    """Validation sampler: rank r gets indices ``r, r + world, ...`` in order, no padding duplicates."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(length))[rank::world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SeededSamples(Dataset):
    """``dataset[(index, seed)]``: the sample transformed under its own seed (see EpochSampler)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with seeded(seed):
            return self.dataset[index]

    def __len__(self) -> int:
        return len(self.dataset)


# ---------------------------------------------------------------------------------------------
# Mixup / CutMix on multi-hot targets
# ---------------------------------------------------------------------------------------------


class MultiHotMixup(Mixup):
    """timm Mixup/CutMix whose targets are already multi-hot floats: ``lam*t + (1-lam)*t.flip(0)``.

    timm's ``mixup_target`` one-hot encodes integer labels, which would destroy multi-label targets.
    """

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(x) % 2:
            raise ValueError(f"mixup/cutmix needs an even batch size, got {len(x)}")
        mix = {"elem": self._mix_elem, "pair": self._mix_pair}.get(self.mode, self._mix_batch)
        lam = mix(x)
        if isinstance(lam, torch.Tensor):
            lam = lam.to(target.dtype).view(-1, 1)
        return x, lam * target + (1.0 - lam) * target.flip(0)


def build_mixup(config: CfgNode) -> MultiHotMixup | None:
    """The mixup/cutmix function of ``AUG.*``, or None when both are off."""
    aug = config.AUG
    if not (aug.MIXUP > 0 or aug.CUTMIX > 0 or aug.CUTMIX_MINMAX is not None):
        return None
    return MultiHotMixup(
        mixup_alpha=aug.MIXUP,
        cutmix_alpha=aug.CUTMIX,
        cutmix_minmax=aug.CUTMIX_MINMAX,
        prob=aug.MIXUP_PROB,
        switch_prob=aug.MIXUP_SWITCH_PROB,
        mode=aug.MIXUP_MODE,
        label_smoothing=0.0,
        num_classes=len(CLASSES),
    )


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------


def _split(config: CfgNode, name: str, is_train: bool) -> MultiLabelImageFolder:
    """A split of DATA.DATA_PATH; with DATA.FOLD >= 0, train and val are that fold's (folds.csv).

    DATA.EXCLUDE's images are left out of training only: validation and test stay whole, so that
    runs with and without the exclusions are scored on the same leaves.
    """
    split = TreeSplit(Path(config.DATA.DATA_PATH), name, config.DATA.FOLD, config.DATA.EXCLUDE if is_train else "")
    if split.fold == NO_FOLD and not (split.data_path / name).is_dir():
        raise FileNotFoundError(
            f"{split}: no '{name}' split (DATA.DATA_PATH / --data-path must be a tree made by process/prepare.py)"
        )
    return MultiLabelImageFolder(split, transform=build_transform(is_train, config))


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT and SIGTERM to the main process, which stops after the step and saves.

    A stop sent to the whole process group (Ctrl-C, systemd's stop, Slurm's scancel, ``kill -- -PGID``)
    reaches the workers too; PyTorch's own SIGTERM handler in a worker kills it, and the main process
    then dies of the lost worker before it can save. Workers still end when the loader shuts them down
    or when the main process is gone (PyTorch's watchdog).
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _loader_args(config: CfgNode) -> dict:
    workers = config.DATA.NUM_WORKERS
    return dict(
        batch_size=config.DATA.BATCH_SIZE,
        num_workers=workers,
        pin_memory=config.DATA.PIN_MEMORY and torch.cuda.is_available(),
        persistent_workers=workers > 0,
        worker_init_fn=ignore_stop_signals,
        # Every new iterator draws its workers' base seed from this generator. Without one it draws
        # from the global torch RNG that stochastic depth uses: once per epoch with no workers, once
        # per process with persistent ones, so the number of workers and a restart (resume) would
        # shift every later drop-path mask.
        generator=torch.Generator().manual_seed(config.SEED),
    )


def build_val_loader(config: CfgNode) -> tuple[Dataset, DataLoader]:
    """``(dataset, loader)`` of the validation split: each image once across all ranks, in order."""
    dataset = _split(config, "val", is_train=False)
    sampler = ShardSampler(len(dataset), get_rank(), get_world_size())
    return dataset, DataLoader(dataset, sampler=sampler, drop_last=False, **_loader_args(config))


def build_loader(config: CfgNode) -> tuple[Dataset, Dataset, DataLoader, DataLoader, MultiHotMixup | None]:
    """``(dataset_train, dataset_val, loader_train, loader_val, mixup_fn)`` for DATA_PATH/{train,val}.

    The training loader yields ``(images, targets)`` of full batches over the oversampled index list;
    its sampler is an :class:`EpochSampler` (call ``loader_train.sampler.set_epoch``). The
    validation loader visits each image once across all ranks (:class:`ShardSampler`).
    """
    rank, world_size = get_rank(), get_world_size()
    dataset_train = _split(config, "train", is_train=True)
    indices = oversample_indices(dataset_train.targets, dict(config.DATA.OVERSAMPLE))
    batch_size = config.DATA.BATCH_SIZE
    if -(-len(indices) // world_size) < batch_size:
        raise ValueError(
            f"{config.DATA.DATA_PATH}/train: {len(indices)} training samples over {world_size} process(es) "
            f"do not fill one batch of {batch_size} (lower --batch-size)"
        )
    power = config.DATA.SAMPLER_POWER
    weights = balance_weights(dataset_train.targets, power)[indices] if power > 0 else None
    loader_train = DataLoader(
        SeededSamples(dataset_train),
        sampler=EpochSampler(indices, config.SEED, rank, world_size, weights, config.DATA.SAMPLER_UNTIL_EPOCH),
        drop_last=True,
        **_loader_args(config),
    )
    dataset_val, loader_val = build_val_loader(config)
    return dataset_train, dataset_val, loader_train, loader_val, build_mixup(config)


def build_inference_loader(dataset: Dataset, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    """In-order batches for prediction (one process; no sampler, no shuffling)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)
