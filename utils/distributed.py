"""torchrun processes: joining the group, ranks, gathering objects, and naming a rank that died."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

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
