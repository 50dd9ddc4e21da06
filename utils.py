"""Small shared helpers: atomic files, logging, checkpoints, pretrained weights, devices, RNG, DDP."""
from __future__ import annotations

import logging
import os
import pickle
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

import numpy as np
import torch
import torch.distributed as dist
from termcolor import colored
from tqdm import tqdm

# ---------------------------------------------------------------------------------------------
# Atomic writes: a reader (test.py, a resumed run) never sees half a file.
# ---------------------------------------------------------------------------------------------


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write(file)`` into a temp file of the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs should be readable like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that replaces ``path`` only once the whole file is written."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Replace ``path`` with ``data`` atomically (figures rendered in memory)."""
    _atomic_write(path, lambda f: f.write(data))


# ---------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------


class _ColouredFormatter(logging.Formatter):
    """``[12:03:04] message``: green time, yellow/red level name for warnings and errors."""

    _LEVEL_COLOURS = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "red"}

    def format(self, record: logging.LogRecord) -> str:
        stamp = colored(f"[{self.formatTime(record, '%H:%M:%S')}]", "green")
        message = record.getMessage()
        colour = self._LEVEL_COLOURS.get(record.levelno)
        if colour:
            message = colored(f"{record.levelname}: {message}", colour, attrs=["bold"])
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return f"{stamp} {message}"


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints above a running tqdm bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never kill training
            self.handleError(record)


def create_logger(output_dir: str | Path, dist_rank: int = 0, name: str = "") -> logging.Logger:
    """Logger with a coloured console on rank 0 and a plain ``output_dir/log.txt`` (appended).

    Other ranks only print warnings and errors. Calling it again replaces the handlers, so a
    second run in the same process does not log twice.
    """
    logger = logging.getLogger(name or "swin_pp")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = _TqdmHandler(sys.stdout)
    console.setLevel(logging.INFO if dist_rank == 0 else logging.WARNING)
    console.setFormatter(_ColouredFormatter())
    logger.addHandler(console)
    if dist_rank == 0:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / "log.txt", mode="a")
        file_handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        )
        logger.addHandler(file_handler)
    return logger


# ---------------------------------------------------------------------------------------------
# Checkpoints and pretrained weights
# ---------------------------------------------------------------------------------------------


def run_cli(main: Callable[[], int]) -> None:
    """Exit with ``main()``'s code; bad input (ValueError, FileNotFoundError) is one line, no traceback."""
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")


def load_checkpoint_file(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` on CPU; a file that is not a checkpoint is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({first_line})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a checkpoint (a {type(obj).__name__}, expected a dict)")
    return obj


def inference_weights(ckpt: dict, config: Any) -> dict:
    """EMA weights when the checkpoint has them and MODEL.EMA.EVAL is on, else the raw ones."""
    return ckpt["ema"] if ckpt.get("ema") is not None and config.MODEL.EMA.EVAL else ckpt["model"]


def _read_weights_file(path: Path) -> dict:
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


def load_pretrained(config: Any, model: torch.nn.Module, logger: logging.Logger) -> None:
    """Load ``MODEL.PRETRAINED`` (official Microsoft ``.pth`` or timm ``.pth``/``.bin``/``.safetensors``).

    Heads are dropped and Swin tables resized by ``models.pretrained``; a file of another
    architecture raises ValueError there. Missing/unexpected keys are logged, not hidden.
    """
    from models.pretrained import check_compatible, convert_pretrained_state_dict, unwrap_state_dict

    path = Path(config.MODEL.PRETRAINED)
    logger.info(f"loading pretrained weights from {path}")
    try:
        converted = convert_pretrained_state_dict(unwrap_state_dict(_read_weights_file(path)), model)
        missing_backbone, unexpected = check_compatible(converted, model)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    result = model.load_state_dict({k: v for k, v in converted.items() if k not in unexpected}, strict=False)
    fresh = [k for k in result.missing_keys if k not in missing_backbone]
    logger.info(f"pretrained: loaded {len(converted) - len(unexpected)} tensors from {path.name}; "
                f"initialised fresh (not in the file): {_short(fresh)}")
    if missing_backbone:
        logger.warning(f"pretrained: {len(missing_backbone)} missing backbone keys: {_short(missing_backbone)}")
    if unexpected:
        logger.warning(f"pretrained: {len(unexpected)} unexpected keys (ignored): {_short(unexpected)}")


def _short(keys: list[str], limit: int = 8) -> str:
    """``a, b, c, ... (+12 more)``: key lists stay one readable log line."""
    keys = list(keys)
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def run_dir(config: Any) -> Path:
    """``OUTPUT/MODEL.NAME/TAG``: where a run writes everything."""
    return Path(config.OUTPUT) / config.MODEL.NAME / config.TAG


# ---------------------------------------------------------------------------------------------
# Devices and distributed runs
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


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the torchrun group when ``WORLD_SIZE > 1`` (NCCL on CUDA, gloo on CPU); returns (rank, world)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


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


def get_rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA) generator states as tensors, ints, floats and lists."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`get_rng_state`."""
    py_version, py_internal, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_internal), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
