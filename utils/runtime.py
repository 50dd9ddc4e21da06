"""Where and how tensors compute: device, mixed precision, memory format, and glibc's kept memory.

One AMP rule for training and inference (nanoGPT / timm style): autocast only on CUDA and only when
``AMP_ENABLE``; bfloat16 where the GPU has it, else float16 with a GradScaler (training); CPU runs fp32.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
from typing import Callable, ContextManager

import torch
from yacs.config import CfgNode


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
