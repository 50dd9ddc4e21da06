"""Shared test helpers: tiny prepared trees of coloured leaves whose spots a tiny model learns in seconds,
tiny saved runs, main.py command lines, and processes driven from outside."""
from __future__ import annotations

import importlib.util
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from config import get_default_config
from data.dataset import MultiLabelImageFolder
from data.labels import CLASSES, labels_to_codes, labels_to_vector
from data.transforms import build_transform
from evaluation import inference
from evaluation.thresholds import tune_thresholds, write_thresholds
from models import build_model
from training.checkpoint import model_state
from training.rundir import RunDir
from utils.faults import PAUSE_ENV, PAUSED
from utils.files import atomic_save, atomic_write_text

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

    Loaded by path under another name, so ``test.py`` never shadows the standard library's ``test``;
    registered in ``sys.modules`` under that name, as an imported module is (dataclasses need it).
    """
    module_name = f"script_{Path(name).with_suffix('').as_posix().replace('/', '_')}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
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

    ``pause_at``: the utils/faults.py point where it waits for a signal (PP_PAUSE_AT).
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


# ---------------------------------------------------------------------------------------------
# Tiny saved runs (what test.py, visual.py, export.py and app.py read), trained here in a few steps
# ---------------------------------------------------------------------------------------------

# The design's tiny Swin at 64 px: the model, then as the saved runs below use it.
TINY_SWIN_MODEL = [
    "MODEL.TYPE", "swin_tiny_patch4_window7_224", "MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.DEPTHS", "[1,1]",
    "MODEL.SWIN.NUM_HEADS", "[1,2]", "MODEL.SWIN.WINDOW_SIZE", "4", "DATA.IMG_SIZE", "64", "MODEL.PSA.OUT_DIM", "32",
    "DATA.NUM_WORKERS", "0", "SEED", "0",
]
TINY_SWIN = [*TINY_SWIN_MODEL, "DATA.BATCH_SIZE", "8"]
# The ArcPSA head and neck, as opts.
ARCPSA = ("MODEL.HEAD", "arcface", "MODEL.PSA.ENABLE", "True")
# A tiny CNN instead (the Swin keys emptied): opts to put after TINY_SWIN.
CNN = ["MODEL.TYPE", "test_resnet", "MODEL.SWIN.EMBED_DIM", "0", "MODEL.SWIN.DEPTHS", "[]",
       "MODEL.SWIN.NUM_HEADS", "[]", "MODEL.SWIN.WINDOW_SIZE", "0", "DATA.IMG_SIZE", "96"]
# A tiny ViT instead (timm's test_vit: 16 px patches, 64 channels, 6 blocks), likewise.
VIT = ["MODEL.TYPE", "test_vit", "MODEL.SWIN.EMBED_DIM", "0", "MODEL.SWIN.DEPTHS", "[]", "MODEL.SWIN.NUM_HEADS", "[]",
       "MODEL.SWIN.WINDOW_SIZE", "0", "DATA.IMG_SIZE", "64"]
# ViT-family configs have no width or depth keys: at tiny size their backbone is swapped for its family's
# smallest timm model, as Swin configs are shrunk by the MODEL.SWIN overrides.
TINY_VIT_TYPES = {"eva02_base_patch16_clip_224": "eva02_tiny_patch14_224"}


def tiny_swin_config(output: Path, tag: str, data_path: Path | str = "dataset", *opts: str):
    """The tiny Swin's frozen config, with its run dir at output/<MODEL.NAME>/<tag>."""
    config = get_default_config()
    config.merge_from_list([*TINY_SWIN, "OUTPUT", str(output), "TAG", tag, "DATA.DATA_PATH", str(data_path), *opts])
    config.freeze()
    return config


def train_a_little(model: torch.nn.Module, train_dir: Path, config, steps: int) -> torch.nn.Module:
    """A few AdamW steps of BCE on the (un-augmented) training images: weights that mean something. On one
    thread, so that they are the same weights however many cores pytest-xdist gives this worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(model, train_dir, config, steps)
    finally:
        torch.set_num_threads(threads)


def _train(model: torch.nn.Module, train_dir: Path, config, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    loader = DataLoader(MultiLabelImageFolder(train_dir, build_transform(False, config)), batch_size=8, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    done = 0
    while done < steps:
        for images, targets in loader:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images, targets), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return model.eval()


def save_run(config, model: torch.nn.Module, thresholds: list[float] | None) -> Path:
    """ckpt_best.pth (checkpoint contract), thresholds.json and config.yaml as main.py leaves them."""
    run = RunDir.of(config)
    atomic_save(model_state(config, model, thresholds), run.best_checkpoint)
    atomic_write_text(config.dump(), run.config_file)
    if thresholds is not None:
        write_thresholds(thresholds, run.thresholds())
    return run.path


def copy_runs(runs: dict[str, Path], folder: Path) -> dict[str, Path]:
    """Copies of saved runs in ``folder`` (a test that writes into a run writes into its own copy)."""
    return {name: Path(shutil.copytree(run, folder / name)) for name, run in runs.items()}


def tiny_runs(output: Path, tree: Path, models: dict[str, tuple[tuple[str, ...], int]],
              thresholds: list[float] | None) -> dict[str, Path]:
    """One saved run per ``name -> (opts, training steps)`` of ``models`` (seeded), tagged ``name``."""
    found = {}
    for name, (opts, steps) in models.items():
        config = tiny_swin_config(output, name, tree, *opts)
        torch.manual_seed(0)
        found[name] = save_run(config, train_a_little(build_model(config), tree / "train", config, steps), thresholds)
    return found


def val_thresholds(model: torch.nn.Module, val_dir: Path, config) -> list[float]:
    """Per-class F1-optimal thresholds on validation, as main.py keeps them."""
    dataset = MultiLabelImageFolder(val_dir, build_transform(False, config))
    logits, _ = inference.predict_logits(model, DataLoader(dataset, batch_size=8), torch.device("cpu"))
    return [float(t) for t in tune_thresholds(dataset.targets, inference.sigmoid(logits))]


# ---------------------------------------------------------------------------------------------
# main.py on the tiny Swin
# ---------------------------------------------------------------------------------------------

# The tiny Swin as main.py trains it: two epochs, one of them warm-up.
TINY_TRAINING = [*TINY_SWIN_MODEL, "TRAIN.EPOCHS", "2", "TRAIN.WARMUP_EPOCHS", "1", "PRINT_FREQ", "2"]


def cli(tree: Path, output: Path, tag: str, *opts: str, extra: tuple[str, ...] = ()) -> list[str]:
    """main.py's arguments for the tiny Swin on ``tree``, batch 4 on the CPU; ``opts`` after TINY_TRAINING."""
    return ["--data-path", str(tree), "--output", str(output), "--tag", tag, "--batch-size", "4",
            "--device", "cpu", *extra, "--opts", *TINY_TRAINING, *opts]


def run_dir(output: Path, tag: str) -> Path:
    """The run dir of ``cli(tree, output, tag, ...)``: OUTPUT/MODEL.NAME/TAG, as main.py makes it."""
    config = get_default_config()
    config.merge_from_list([*TINY_TRAINING, "OUTPUT", str(output), "TAG", tag])
    return RunDir.of(config).path


# The tiny Swin as a config file, for the scripts that take one (scripts/experiments.py, scripts/cv.py).
TINY_YAML = """\
MODEL:
  TYPE: swin_tiny_patch4_window7_224
  NAME: tiny
  SWIN: {EMBED_DIM: 16, DEPTHS: [1, 1], NUM_HEADS: [1, 2], WINDOW_SIZE: 4}
DATA: {IMG_SIZE: 64, NUM_WORKERS: 0, BATCH_SIZE: 4}
TRAIN: {EPOCHS: 1, WARMUP_EPOCHS: 0}
AUG: {AUTO_AUGMENT: none}
DEVICE: cpu
"""


# An odd-sized leaf photo (not square, not any model's size): maps and pictures must come back at its size.
ODD_PHOTO_SIZE = (90, 70)


def odd_leaf_photo(folder: Path) -> Path:
    """A scab + rust leaf at ODD_PHOTO_SIZE, as a JPEG in ``folder``."""
    path = folder / "leaf.jpg"
    draw_leaf("scab rust", random.Random(3), size=ODD_PHOTO_SIZE).save(path, quality=95)
    return path


def load_run(run: Path):
    """The run's ckpt_best.pth as an ``inference.Predictor`` on the CPU."""
    from evaluation import inference

    return inference.Predictor.from_checkpoint(run / "ckpt_best.pth", torch.device("cpu"))


# ---------------------------------------------------------------------------------------------
# Files a user cannot read or write, for a test that runs as root too
# ---------------------------------------------------------------------------------------------

PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2  # <linux/prctl.h>, <linux/capability.h>


def obey_file_modes() -> None:
    """``preexec_fn`` of a child that file modes must bind as they bind any user: under root, it drops the
    capabilities that bypass them from its bounding set before exec (for anyone else, nothing to do)."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
