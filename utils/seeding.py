"""Random state: seeding every generator, and saving it as plain data (loadable with weights_only=True)."""
from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_epoch(seed: int, rank: int, epoch: int) -> None:
    """Seed every generator from (seed, rank, epoch) alone.

    Called at the start of each training epoch, so that nothing run before it (validation, saving,
    a restart of the process) can shift the epoch's drop-path masks or mixup draws.
    """
    seed_everything(int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0]))


def get_rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA) generator states as tensors, ints, floats and lists."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`get_rng_state`."""
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block under ``seed`` (Python, NumPy, torch CPU) and restore the previous states after."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
