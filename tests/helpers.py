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
