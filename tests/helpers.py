"""Tiny prepared trees for the tests: coloured leaves whose spots a tiny model can learn in seconds."""
from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
from PIL import Image, ImageDraw

from data.labels import CLASSES, labels_to_codes, labels_to_vector
from faults import PAUSE_ENV, PAUSED

ROOT = Path(__file__).resolve().parents[1]

# Label strings cycled over the images of a split: singles and the multi-label combinations.
COMBINATIONS = (
    "healthy", "scab", "rust", "complex", "frog_eye_leaf_spot", "powdery_mildew",
    "scab frog_eye_leaf_spot complex", "rust complex",
)
CLASS_COLOURS = {
    "complex": (120, 70, 30), "frog_eye_leaf_spot": (90, 40, 40), "healthy": (40, 160, 40),
    "powdery_mildew": (230, 230, 230), "rust": (230, 120, 20), "scab": (60, 60, 30),
}


def draw_leaf(labels: str, rng: random.Random, size: tuple[int, int] = (72, 64)) -> Image.Image:
    """A green ellipse with one coloured spot per label (enough signal for a tiny model)."""
    image = Image.new("RGB", size, (rng.randint(90, 130), rng.randint(70, 100), rng.randint(40, 70)))
    draw = ImageDraw.Draw(image)
    draw.ellipse((6, 6, size[0] - 6, size[1] - 6), fill=(50, 140 + rng.randint(-20, 20), 50))
    for name in labels.split():
        x, y = rng.randint(12, size[0] - 24), rng.randint(12, size[1] - 24)
        draw.ellipse((x, y, x + 12, y + 12), fill=CLASS_COLOURS[name])
    return image


def make_tree(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """A prepared tree like process/prepare.py's: root/<split>/<code>/<name>.jpg (+ <split>.csv)."""
    rng = random.Random(seed)
    for split, count in counts.items():
        rows = []
        for i in range(count):
            labels = COMBINATIONS[i % len(COMBINATIONS)]
            name = f"{split}{i:04d}.jpg"
            codes = labels_to_codes(labels)
            first = root / split / codes[0] / name
            first.parent.mkdir(parents=True, exist_ok=True)
            draw_leaf(labels, rng).save(first, quality=95)
            for code in codes[1:]:
                (root / split / code).mkdir(parents=True, exist_ok=True)
                (root / split / code / name).hardlink_to(first)
            rows.append({"images": name, **dict(zip(CLASSES, labels_to_vector(labels).astype(int)))})
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    return root


def load_script(name: str) -> ModuleType:
    """A top-level script (``main.py``, ``test.py``, ...) as a module, to drive it through ``main(argv)``.

    Loaded by path under another name, so ``test.py`` never shadows the standard library's ``test``.
    """
    spec = importlib.util.spec_from_file_location(f"script_{Path(name).stem}", ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(args: list[str], env: dict | None = None, module: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``python main.py ARGS`` (or ``python -m MODULE ARGS``) in a subprocess at the repo root, output captured."""
    command = [sys.executable, *module, *([] if module else ["main.py"]), *args]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=300)


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``root`` (hidden ones too) with its inode, mtime and size."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(root.rglob("*")) if p.is_file()}


def start_script(script: str, args: list[str], pause_at: str | None = None) -> subprocess.Popen:
    """``python SCRIPT ARGS`` in its own process group, stdout and stderr merged into one text pipe.

    ``pause_at``: the faults.py point where it waits for a signal (PP_PAUSE_AT).
    """
    env = {**os.environ, **({PAUSE_ENV: pause_at} if pause_at else {})}
    return subprocess.Popen([sys.executable, script, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_until_paused(process: subprocess.Popen) -> str:
    """Read the output of ``process`` up to its ``paused at`` line; fails if it ends first."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if PAUSED in line:  # after a progress bar of stderr, maybe
            return "".join(seen)
    raise AssertionError(f"exited with {process.wait()} before pausing:\n{''.join(seen)[-3000:]}")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc; none once it has ended)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def has_ended(pid: int) -> bool:
    """True when ``pid`` no longer runs (gone, or a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
