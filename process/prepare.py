"""Turn a Plant Pathology dataset into the one-hot ImageNet-style tree, decoding every photo once.

    python process/prepare.py --src SRC --dst DST [--size 384] [--val 0.15] [--test 0.15] [--seed 0]
                              [--workers N] [--force] [--max-pixels 100000000]

SRC is the Kaggle layout (``train.csv`` + ``train_images/``; split here, stratified by label
combination) or a pre-split layout (``SRC/{train,val,test}/``, each with one CSV and its images in
``images/`` or beside it; the split is kept). The CSV holds ``image``/``images`` and a ``labels``
string, or one 0/1 column per class. DST gets ``{train,val,test}/<code>/<image>.jpg`` (a multi-label
image hard-linked into the folder of each of its labels), ``{train,val,test}.csv`` (``images`` + six
0/1 columns in CLASSES order), ``stats.json`` and ``label_distribution.png``.

Why it is built this way: training reads small JPEGs instead of 4000x2672 photos, and the tree alone
carries the multi-label truth. All CSVs are checked before anything is written; an unreadable image
is skipped and reported. ``stats.json`` is written last and records a fingerprint of the inputs and
settings: a finished DST with the same fingerprint is left untouched, and a killed run is redone.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image
from termcolor import colored
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.images import load_image  # noqa: E402
from data.labels import CLASS_INDEX, CLASSES, labels_to_codes, labels_to_string  # noqa: E402
from utils import atomic_write_bytes, atomic_write_text  # noqa: E402

SPLITS = ("train", "val", "test")
KAGGLE, PRE_SPLIT = "kaggle", "pre-split"
IMAGE_COLUMNS = ("image", "images")
MAX_PIXELS = 100_000_000  # a 4000x2672 photo has 10.7 MP; far beyond this is a decompression bomb
JPEG_QUALITY = 95
RESAMPLE = Image.Resampling.LANCZOS
FORMAT_VERSION = 1  # part of the fingerprint: bump when the output of the same inputs changes
IN_PROGRESS = ".prepare-in-progress"  # holds the fingerprint of a run that has not finished
SHOW_ROWS = 5  # offending rows named in an input error


class InputError(ValueError):
    """Bad input (CSV, labels, image names, settings) found before anything is written."""


class NoUsableImages(RuntimeError):
    """Every image was skipped: there is nothing to train on."""


# ----------------------------------------------------------------------------- reading the input


def _name_problem(name: str) -> str | None:
    """Why an image name cannot be used as a file name inside DST, or None."""
    if not name:
        return "empty image name"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "absolute image name"
    if ".." in parts:
        return "image name with '..'"
    if len(parts) != 1:
        return "image name with a folder"
    return None


def _rows_message(problem: str, rows: pd.DataFrame) -> str:
    """``unknown label 'blight' in lines 3, 17 (a.jpg, b.jpg)``, naming the first rows only."""
    more = ", ..." if len(rows) > SHOW_ROWS else ""
    lines = ", ".join(str(n) for n in rows["line"].head(SHOW_ROWS)) + more
    names = ", ".join(rows["image"].head(SHOW_ROWS)) + more
    return f"{problem} in line{'s' if len(rows) > 1 else ''} {lines} ({names})"


def _labels_from_strings(raw: pd.DataFrame) -> tuple[pd.Series, list[tuple[str, pd.Series]]]:
    """Canonical label strings of a ``labels`` column, and (problem, bad-row mask) pairs."""
    tokens = raw["labels"].str.split()
    unknown = tokens.map(lambda names: [n for n in names if n not in CLASS_INDEX])
    bad_names = sorted({n for names in unknown for n in names})
    problems = [
        (f"unknown label {', '.join(map(repr, bad_names[:SHOW_ROWS]))}", unknown.str.len() > 0),
        ("no label", tokens.str.len() == 0),
    ]
    valid = (unknown.str.len() == 0) & (tokens.str.len() > 0)
    return tokens.where(valid, None).map(labels_to_string, na_action="ignore"), problems


def _labels_from_columns(raw: pd.DataFrame, image_column: str, csv: Path
                         ) -> tuple[pd.Series, list[tuple[str, pd.Series]]]:
    """Canonical label strings of one 0/1 column per class (any order), and the bad rows."""
    others = [c for c in raw.columns if c != image_column]
    unknown = [c for c in others if c not in CLASS_INDEX]
    missing = [c for c in CLASSES if c not in raw.columns]
    if unknown or missing:
        found = f"found columns {', '.join(raw.columns)}"
        raise InputError(f"{csv}: needs '{image_column}' and either a 'labels' column or one 0/1 column per "
                         f"class ({', '.join(CLASSES)}); {found}")
    values = raw[list(CLASSES)].apply(lambda column: column.str.strip().map(_binary))
    not_binary = values.isna().any(axis=1)
    positive = values.fillna(0).astype(int)
    none = (positive.sum(axis=1) == 0) & ~not_binary
    labels = positive.apply(lambda row: labels_to_string(c for c in CLASSES if row[c]) if row.sum() else None,
                            axis=1)
    problems = [("value other than 0 or 1", not_binary), ("no label", none)]
    return labels.where(~not_binary & ~none, None), problems


def _binary(text: str) -> int | None:
    """'1' / '1.0' -> 1, '0' / '0.0' -> 0, anything else -> None."""
    return {"0": 0, "1": 1, "0.0": 0, "1.0": 1}.get(text)


def read_labels_csv(csv: Path, image_dir: Path) -> pd.DataFrame:
    """One CSV's rows: ``image`` (as written), ``labels`` (canonical string), ``line``, ``source`` path
    and ``output`` file name (``<stem>.jpg``). Raises InputError naming every kind of bad row."""
    try:
        raw = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(f"{csv}: not a readable CSV ({error})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    image_column = next((c for c in IMAGE_COLUMNS if c in raw.columns), None)
    if image_column is None:
        raise InputError(f"{csv}: no image column ('image' or 'images'); found columns {', '.join(raw.columns)}")
    if raw.empty:
        raise InputError(f"{csv}: no rows")
    if "labels" in raw.columns:
        labels, problems = _labels_from_strings(raw)
    else:
        labels, problems = _labels_from_columns(raw, image_column, csv)
    names = raw[image_column].str.strip()
    rows = pd.DataFrame({"image": names, "labels": labels, "line": raw.index + 2,
                         "source": [str(image_dir / n) for n in names],
                         "output": [PurePosixPath(n).stem + ".jpg" for n in names]})
    name_problems = names.map(_name_problem)
    problems += [(p, name_problems == p) for p in name_problems.dropna().unique()]
    problems.append(("duplicate image name", rows["output"].duplicated(keep=False)))
    messages = [_rows_message(p, rows[mask]) for p, mask in problems if mask.any()]
    if messages:
        raise InputError(f"{csv}: {'; '.join(messages)}")
    return rows


def read_split_folder(folder: Path) -> pd.DataFrame:
    """One split of a pre-split layout: its single CSV, images in ``images/`` or beside the CSV."""
    csvs = sorted(folder.glob("*.csv"))
    if len(csvs) != 1:
        raise InputError(f"{folder}: expected exactly one CSV, found {len(csvs)}")
    images = folder / "images" if (folder / "images").is_dir() else folder
    return read_labels_csv(csvs[0], images).assign(split=folder.name)


def read_source(src: Path) -> tuple[pd.DataFrame, str]:
    """Every row of SRC (``split`` empty for the Kaggle layout) and the layout's name."""
    if not src.is_dir():
        raise InputError(f"{src}: no such folder")
    if (src / "train.csv").is_file() and (src / "train_images").is_dir():
        rows = read_labels_csv(src / "train.csv", src / "train_images")
        return rows.assign(split=""), KAGGLE
    if all((src / s).is_dir() for s in SPLITS):
        rows = pd.concat([read_split_folder(src / s) for s in SPLITS], ignore_index=True)
        twice = rows[rows["output"].duplicated(keep=False)]
        if not twice.empty:
            where = ", ".join(f"{r.image} ({r.split} line {r.line})" for r in twice.head(SHOW_ROWS).itertuples())
            raise InputError(f"{src}: image names in more than one split: {where}")
        return rows, PRE_SPLIT
    raise InputError(f"{src}: neither the Kaggle layout (train.csv + train_images/) nor a pre-split layout "
                     f"({', '.join(SPLITS)} folders, each with one CSV)")


# ----------------------------------------------------------------------------- splitting


def allocate(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Split ``n`` items by ``fractions`` (summing to 1) with the largest-remainder method."""
    exact = np.asarray(fractions) * n
    counts = np.floor(exact).astype(int)
    by_remainder = np.argsort(-(exact - counts), kind="stable")
    counts[by_remainder[: n - counts.sum()]] += 1
    return counts.tolist()


def assign_splits(rows: pd.DataFrame, val: float, test: float, seed: int) -> pd.Series:
    """Split each label combination by itself, so rare combinations reach val and test too.

    Deterministic in ``seed`` and independent of the CSV's row order.
    """
    rng = np.random.default_rng(seed)
    split = pd.Series("", index=rows.index)
    for _, group in rows.sort_values("output").groupby("labels", sort=True):
        shuffled = group.index[rng.permutation(len(group))]
        counts = allocate(len(group), (1 - val - test, val, test))
        for name, start, count in zip(SPLITS, np.cumsum([0] + counts[:-1]), counts):
            split.loc[shuffled[start:start + count]] = name
    return split


# ----------------------------------------------------------------------------- one image


def target_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """The size whose shorter side is ``shorter``, same aspect; the size itself if already that small."""
    width, height = size
    if min(width, height) <= shorter:
        return size
    scale = shorter / min(width, height)
    return max(shorter, round(width * scale)), max(shorter, round(height * scale))


def load_resized(path: str | Path, shorter: int) -> Image.Image:
    """Decode once, upright (EXIF orientation) and RGB, with the shorter side at most ``shorter``.

    ``load_image`` lets the JPEG decoder scale by 1/2, 1/4 or 1/8 while decoding, never below the
    target, which is most of the speed-up on full-size photos; the filter then does the rest.
    """
    upright = load_image(path, shorter)
    wanted = target_size(upright.size, shorter)
    return upright if wanted == upright.size else upright.resize(wanted, RESAMPLE)


@dataclass(frozen=True)
class Task:
    """One image to convert: its source and every output path (one per label)."""

    image: str
    source: str
    outputs: tuple[str, ...]
    size: int


def _failure(error: Exception) -> str:
    """A short reason for the summary and stats.json."""
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"over the pixel limit: {error}"
    if "truncated" in str(error):
        return "truncated image"
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image Pillow can read"
    return f"cannot decode: {type(error).__name__}: {error}"


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temp path)``, then rename: a killed run never leaves half a file under its final name."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.unlink(missing_ok=True)
    write(temp)
    os.replace(temp, path)


def _link_or_copy(first: Path, other: Path) -> None:
    """Hard link (no extra space), or a copy where the file system cannot link."""
    try:
        os.link(first, other)
    except OSError:
        shutil.copyfile(first, other)


def process_image(task: Task) -> tuple[str, bool, str]:
    """Convert one image into all its outputs; returns (image, ok, reason it was skipped)."""
    source = Path(task.source)
    if not source.is_file():
        return task.image, False, "missing file"
    if source.stat().st_size == 0:
        return task.image, False, "empty file (0 bytes)"
    try:
        image = load_resized(source, task.size)
    except Exception as error:  # Pillow raises many types on corrupt data; any of them means skip
        return task.image, False, _failure(error)
    first, *others = map(Path, task.outputs)
    _write_atomically(first, lambda temp: image.save(temp, "JPEG", quality=JPEG_QUALITY))
    for other in others:
        _write_atomically(other, lambda temp: _link_or_copy(first, temp))
    return task.image, True, ""


def _init_worker(max_pixels: int) -> None:
    """Make an image over the pixel limit an error in this worker (Pillow only warns below 2x)."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def run_tasks(tasks: list[Task], workers: int, max_pixels: int) -> list[tuple[str, bool, str]]:
    """All tasks on ``workers`` processes, in order, with a progress bar."""
    workers = max(1, min(workers, len(tasks)))
    chunk = max(1, min(32, len(tasks) // (workers * 4)))
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(max_pixels,)) as pool:
        results = pool.map(process_image, tasks, chunksize=chunk)
        return list(tqdm(results, total=len(tasks), desc="prepare", unit="img"))


# ----------------------------------------------------------------------------- the output tree


def _file_size(path: str) -> int | None:
    """Size of a source file: a cheap stand-in for its content in the fingerprint.

    Not the mtime: regenerating identical files (synthesize.py with the same seed) must not make a
    finished tree look stale, and re-encoding an image practically always changes its size.
    """
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def fingerprint(rows: pd.DataFrame, settings: dict, src: Path) -> str:
    """Hash of the settings and of every row with its source file's size."""
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, settings], sort_keys=True).encode())
    for row in rows.sort_values("output").itertuples():
        state = [row.split, row.output, row.labels, os.path.relpath(row.source, src), _file_size(row.source)]
        digest.update(json.dumps(state).encode())
    return digest.hexdigest()


def read_stats(dst: Path) -> dict | None:
    """The stats of a finished DST, or None."""
    try:
        return json.loads((dst / "stats.json").read_text())
    except (OSError, ValueError):
        return None


def clear_outputs(dst: Path) -> None:
    """Remove what an earlier run wrote, stats.json first so a half-cleared DST never looks finished."""
    (dst / "stats.json").unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(dst / split, ignore_errors=True)
        (dst / f"{split}.csv").unlink(missing_ok=True)
    (dst / "label_distribution.png").unlink(missing_ok=True)


def claim(dst: Path, key: str, force: bool) -> None:
    """Make DST ours for a run with fingerprint ``key``, refusing to mix with other content.

    An unfinished run (its marker is there) is redone without --force: it holds nothing of value.
    """
    unfinished = (dst / IN_PROGRESS).is_file()
    if dst.is_dir() and any(dst.iterdir()) and not (force or unfinished):
        what = "a dataset prepared from other inputs or settings" if (dst / "stats.json").exists() else "other files"
        raise InputError(f"{dst}: already holds {what}; use --force to rebuild it")
    dst.mkdir(parents=True, exist_ok=True)
    atomic_write_text(key, dst / IN_PROGRESS)
    clear_outputs(dst)


def make_tasks(rows: pd.DataFrame, dst: Path, size: int) -> list[Task]:
    """One task per row; creates the code folders first so workers never race on mkdir."""
    tasks = []
    for row in rows.itertuples():
        outputs = tuple(dst / row.split / code / row.output for code in labels_to_codes(row.labels))
        for output in outputs:
            output.parent.mkdir(parents=True, exist_ok=True)
        tasks.append(Task(row.image, row.source, tuple(map(str, outputs)), size))
    return tasks


def one_hot(rows: pd.DataFrame) -> pd.DataFrame:
    """``images`` + six 0/1 columns in CLASSES order, sorted by image name."""
    table = pd.DataFrame({"images": rows["output"].to_numpy()})
    for name in CLASSES:
        table[name] = rows["labels"].str.split().map(lambda labels: int(name in labels)).to_numpy()
    return table.sort_values("images", ignore_index=True)


def split_stats(rows: pd.DataFrame) -> dict:
    """Images, per-label and per-combination counts of the rows of one split."""
    table = one_hot(rows)
    return {"images": len(rows),
            "labels": {name: int(table[name].sum()) for name in CLASSES},
            "combinations": {k: int(v) for k, v in rows["labels"].value_counts().sort_index().items()}}


def plot_distribution(stats: dict) -> bytes:
    """PNG of per-split label counts as grouped bars."""
    figure = Figure(figsize=(10, 5), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(SPLITS)
    x = np.arange(len(CLASSES))
    for i, split in enumerate(SPLITS):
        counts = [stats["splits"][split]["labels"][name] for name in CLASSES]
        bars = axes.bar(x + (i - 1) * width, counts, width, label=f"{split} ({stats['splits'][split]['images']})")
        axes.bar_label(bars, fontsize=7)
    axes.set_xticks(x, CLASSES, rotation=15)
    axes.set_ylabel("images")
    axes.set_title("Label counts per split (a multi-label image counts once per label)")
    axes.legend(title="split (images)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def summary_table(stats: dict) -> str:
    """Aligned per-split table (images, per-label counts, skipped files) with a coloured header."""
    skipped = pd.Series([item["split"] for item in stats["skipped"]], dtype=str).value_counts()
    table = pd.DataFrame({split: {"images": s["images"], **s["labels"], "skipped": skipped.get(split, 0)}
                          for split, s in stats["splits"].items()}).T
    table.loc["total"] = table.sum()
    header, *body = table.to_string().splitlines()
    return "\n".join([colored(header, "cyan", attrs=["bold"]), *body])


def report_skipped(skipped: list[dict], limit: int = 10) -> None:
    """Print the skipped files with their reasons (the first ``limit``)."""
    if not skipped:
        return
    print(colored(f"skipped {len(skipped)} image(s):", "yellow"))
    for item in skipped[:limit]:
        print(f"  {item['source']}: {item['reason']}")
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more (see stats.json)")


def write_outputs(dst: Path, rows: pd.DataFrame, stats: dict) -> None:
    """CSVs and the chart, then stats.json: its presence means the tree is complete."""
    for split in SPLITS:
        atomic_write_text(one_hot(rows[rows["split"] == split]).to_csv(index=False), dst / f"{split}.csv")
    atomic_write_bytes(plot_distribution(stats), dst / "label_distribution.png")
    atomic_write_text(json.dumps(stats, indent=2), dst / "stats.json")
    (dst / IN_PROGRESS).unlink()


# ----------------------------------------------------------------------------- entry points


def check_settings(size: int, val: float, test: float, workers: int | None, max_pixels: int) -> None:
    """InputError on settings that cannot work."""
    if size < 1:
        raise InputError(f"--size must be positive, got {size}")
    if val < 0 or test < 0 or val + test >= 1:
        raise InputError(f"--val and --test must be >= 0 and leave images for training, got {val} and {test}")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be positive, got {workers}")
    if max_pixels < 1:
        raise InputError(f"--max-pixels must be positive, got {max_pixels}")


def prepare(src: str | Path, dst: str | Path, size: int = 384, val: float = 0.15, test: float = 0.15,
            seed: int = 0, workers: int | None = None, force: bool = False,
            max_pixels: int = MAX_PIXELS) -> dict:
    """Build the one-hot tree of SRC in DST and return its stats (see the module docstring).

    Raises InputError before writing anything on bad input, NoUsableImages when every image fails.
    """
    src, dst = Path(src), Path(dst)
    check_settings(size, val, test, workers, max_pixels)
    rows, layout = read_source(src)
    split_here = layout == KAGGLE
    if split_here:
        rows["split"] = assign_splits(rows, val, test, seed)
    settings = {"layout": layout, "size": size, "quality": JPEG_QUALITY, "max_pixels": max_pixels,
                "val": val if split_here else None, "test": test if split_here else None,
                "seed": seed if split_here else None}
    key = fingerprint(rows, settings, src)
    finished = read_stats(dst)
    if not force and finished and finished.get("fingerprint") == key and not (dst / IN_PROGRESS).exists():
        print(colored(f"{dst}: already prepared from these inputs and settings; nothing to do", "green"))
        return finished
    claim(dst, key, force)
    results = run_tasks(make_tasks(rows, dst, size), workers or os.cpu_count() or 1, max_pixels)
    ok = np.array([good for _, good, _ in results])
    skipped = [{"image": r.image, "split": r.split, "source": r.source, "reason": reason}
               for r, (_, good, reason) in zip(rows.itertuples(), results) if not good]
    report_skipped(skipped)
    if not ok.any():
        raise NoUsableImages(f"no usable image: all {len(rows)} images of {src} were skipped")
    kept = rows[ok]
    stats = {"fingerprint": key, "settings": {"src": str(src.resolve()), **settings},
             "splits": {split: split_stats(kept[kept["split"] == split]) for split in SPLITS},
             "total": split_stats(kept), "skipped": skipped}
    write_outputs(dst, kept, stats)
    print(summary_table(stats))
    print(colored(f"wrote {len(kept)} images to {dst} ({len(skipped)} skipped)", "green"))
    return stats


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: exit 2 on bad input, 1 when nothing usable remains."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, type=Path, help="Kaggle or pre-split dataset folder")
    parser.add_argument("--dst", required=True, type=Path, help="output folder of the one-hot tree")
    parser.add_argument("--size", type=int, default=384, help="shorter side in pixels (never upscaled)")
    parser.add_argument("--val", type=float, default=0.15, help="validation fraction (Kaggle layout)")
    parser.add_argument("--test", type=float, default=0.15, help="test fraction (Kaggle layout)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (Kaggle layout)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--force", action="store_true", help="rebuild DST even if it holds other content")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="larger images are skipped")
    args = parser.parse_args(argv)
    try:
        prepare(args.src, args.dst, args.size, args.val, args.test, args.seed, args.workers, args.force,
                args.max_pixels)
    except InputError as error:
        print(f"prepare: error: {error}", file=sys.stderr)
        return 2
    except NoUsableImages as error:
        print(f"prepare: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
