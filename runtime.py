"""Where and how tensors compute: device, mixed precision, torchrun processes, random state.

One AMP rule for training and inference (nanoGPT / timm style): autocast only on CUDA and only when
``AMP_ENABLE``; bfloat16 where the GPU has it, else float16 with a GradScaler (training); CPU runs fp32.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import random
import socket
from pathlib import Path
from typing import Any, Callable, ContextManager

import numpy as np
import torch
import torch.distributed as dist
from yacs.config import CfgNode

# ---------------------------------------------------------------------------------------------
# Devices and precision
# ---------------------------------------------------------------------------------------------


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


# glibc's mallopt() parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD")


def keep_freed_memory() -> bool:
    """Let glibc keep the memory of freed tensors for the next step instead of returning it to the kernel.

    By default every tensor above glibc's mmap threshold (at most 32 MB) is mapped and unmapped
    again each step, and the kernel zero-fills its pages anew: on 2 CPU cores that page-faulting took
    most of an EfficientNet-Lite0 training step (5.7 of 7.7 s, bench/cpu_train_speed.py). Linux/glibc only;
    a no-op where the user chose an allocator or its MALLOC_* settings. Returns whether it applied.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or any(map(os.environ.get, _MALLOC_ENV)):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def place_model(model: torch.nn.Module, config: CfgNode, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device``, in channels-last memory format when ``CHANNELS_LAST`` (faster convolutions)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if config.CHANNELS_LAST else model


def amp_dtype(config: CfgNode, device: torch.device, logger: logging.Logger | None = None) -> torch.dtype | None:
    """The autocast dtype of ``config`` on ``device``, or None for plain fp32 (CPU, or AMP off).

    ``AMP_DTYPE`` bfloat16 falls back to float16 (logged) on a GPU without bfloat16.
    """
    if config.AMP_DTYPE not in ("bfloat16", "float16"):
        raise ValueError(f"AMP_DTYPE must be bfloat16 or float16, got {config.AMP_DTYPE!r}")
    if not config.AMP_ENABLE or device.type != "cuda":
        return None
    if config.AMP_DTYPE == "bfloat16" and not torch.cuda.is_bf16_supported():
        if logger is not None:
            logger.warning("this GPU has no bfloat16: using float16 autocast")
        return torch.float16
    return torch.bfloat16 if config.AMP_DTYPE == "bfloat16" else torch.float16


def autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], ContextManager]:
    """``torch.autocast`` on ``device`` at ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Distributed runs (torchrun)
# ---------------------------------------------------------------------------------------------


_peers: list[tuple[str, int]] = []  # (host, pid) of every rank, in rank order


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the torchrun group when ``WORLD_SIZE > 1`` (NCCL on CUDA, gloo on CPU); returns (rank, world)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    _peers[:] = all_gather_objects((socket.gethostname(), os.getpid()))
    return dist.get_rank(), dist.get_world_size()


def _is_gone(host: str, pid: int) -> bool:
    """True when ``pid`` is known to have ended (only decidable on this host; a zombie has ended)."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # Linux: a process killed a moment ago is a zombie until torchrun reaps it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def lost_ranks_message(error: RuntimeError) -> str | None:
    """Why a collective failed when another rank died or is unreachable (None for any other error).

    Ranks of this host that died are named (torchrun's summary names the others); gloo and NCCL
    report a dead peer as a plain RuntimeError, so the dead process is what tells it apart.
    """
    gone = [f"rank {rank} (pid {pid})" for rank, (host, pid) in enumerate(_peers) if _is_gone(host, pid)]
    if not gone and not isinstance(error, dist.DistError):
        return None
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    who = f"{', '.join(gone)} died" if gone else "lost contact with another rank"
    return f"rank {get_rank()}: {who}; stopping this rank too ({cause})"


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (just ``[obj]`` without torch.distributed)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


# ---------------------------------------------------------------------------------------------
# Random state as plain data (loadable with weights_only=True)
# ---------------------------------------------------------------------------------------------


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
