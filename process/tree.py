"""Writing the one-hot ImageNet-style tree of a dataset, decoding every photo once.

DST gets ``{train,val,test}/<code>/<image>.jpg`` (a multi-label image hard-linked into the folder of
each of its labels), ``{train,val,test}.csv`` (``images`` + six 0/1 columns in CLASSES order),
``stats.json``, and pictures of the data: ``label_distribution.png`` (labels per split),
``labels_per_image.png`` (images carrying 1, 2, 3... labels per split) and ``samples.png`` (a few leaves of
every label combination, with their labels and split).

Why it is built this way: training reads small JPEGs instead of 4000x2672 photos, and the tree alone
carries the multi-label truth. An unreadable image is skipped and reported. ``stats.json`` is written
last and records a fingerprint of the inputs and settings: a finished DST with the same fingerprint is
left untouched, and a killed run is redone. Every file appears whole under its final name or not at all.
One process writes a DST at a time (``runlock``). DST never overlaps SRC: prepare clears its outputs in
DST, which must never touch a source file.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image
from termcolor import colored
from tqdm import tqdm

from data.folds import FOLDS_FILE, IN_PROGRESS, NO_FOLD
from data.images import MAX_PIXELS, image_failure, load_image
from data.labels import CLASSES, labels_to_codes
from process.duplicates import (
    DEFAULT_DISTANCE,
    HASH_BITS,
    POLICIES,
    REPORT_CSV,
    SHEET_PNG,
    apply_policy,
    contact_sheet,
    duplicate_stats,
    image_hash,
    leak_pairs,
    mark_groups,
    move_leaks,
    no_groups,
    report_frame,
    summary_line,
)
from process.sources import KAGGLE, SPLITS, InputError, read_source
from process.splits import assign_folds, assign_splits, folds_frame
from utils.errors import RunError
from utils.figures import Tile, png_bytes, tile_sheet
from utils.files import DiskFullError, atomic_write, atomic_write_bytes, atomic_write_text, remove_partial_writes
from utils.runlock import LOCK_NAME, hold_run_lock

logger = logging.getLogger("prepare")

JPEG_QUALITY = 95
RESAMPLE = Image.Resampling.LANCZOS
FORMAT_VERSION = 2  # part of the fingerprint: bump when the output of the same inputs changes
STAGING = ".staged"  # resized JPEGs before the split is known (every hash is needed first)
DISTRIBUTION_PNG, LABELS_PER_IMAGE_PNG, SAMPLES_PNG = "label_distribution.png", "labels_per_image.png", "samples.png"
REPORTS = (DISTRIBUTION_PNG, LABELS_PER_IMAGE_PNG, SAMPLES_PNG, REPORT_CSV, SHEET_PNG, FOLDS_FILE)
SAMPLES_PER_COMBINATION = 4  # leaves drawn per label combination in samples.png


class NoUsableImages(RuntimeError):
    """Every image was skipped: there is nothing to train on."""


# ----------------------------------------------------------------------------- one image


def target_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """The size whose shorter side is ``shorter``, same aspect; the size itself if already that small."""
    width, height = size
    if min(width, height) <= shorter:
        return size
    scale = shorter / min(width, height)
    return max(shorter, round(width * scale)), max(shorter, round(height * scale))


def load_resized(path: str | Path, shorter: int, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode once, upright (EXIF orientation) and RGB, with the shorter side at most ``shorter``.

    ``load_image`` lets the JPEG decoder scale by 1/2, 1/4 or 1/8 while decoding, never below the
    target, which is most of the speed-up on full-size photos; the filter then does the rest.
    """
    upright = load_image(path, shorter, max_pixels)
    wanted = target_size(upright.size, shorter)
    return upright if wanted == upright.size else upright.resize(wanted, RESAMPLE)


@dataclass(frozen=True)
class Task:
    """One image to convert: its source, where the resized JPEG is staged, and whether to hash it."""

    image: str
    source: str
    staged: str
    size: int
    find_duplicates: bool = True
    max_pixels: int = MAX_PIXELS  # larger images are skipped (data.images)


def _link_or_copy(first: Path, other: Path) -> None:
    """Hard link (no extra space), or a copy where the file system cannot link; atomic either way.

    The link is made under a temp name of the same folder and renamed, like every other output.
    """
    temp = other.with_name(f".{other.name}.tmp")
    temp.unlink(missing_ok=True)
    try:
        os.link(first, temp)
    except OSError:
        atomic_write(other, lambda f: f.write(first.read_bytes()))
        return
    os.replace(temp, other)


def jpeg_bytes(image: Image.Image) -> bytes:
    """The JPEG in memory: Pillow's encoder writes to a file's descriptor itself and ignores a short write
    (a disk filling up, ``ulimit -f``), leaving a truncated image; Python's write of the bytes raises."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def process_image(task: Task) -> tuple[str, bool, str, str]:
    """Convert one image into its staged JPEG; returns (image, ok, reason it was skipped, its hash)."""
    source = Path(task.source)
    if not source.is_file():
        return task.image, False, "missing file", ""
    if source.stat().st_size == 0:
        return task.image, False, "empty file (0 bytes)", ""
    try:
        image = load_resized(source, task.size, task.max_pixels)
    except Exception as error:  # noqa: BLE001 - Pillow raises many types on corrupt data; any means skip
        return task.image, False, image_failure(error), ""
    try:
        atomic_write_bytes(jpeg_bytes(image), Path(task.staged))
    except DiskFullError as error:  # its own type does not survive the trip back to prepare (pickling)
        raise RunError(str(error)) from None
    return task.image, True, "", image_hash(image) if task.find_duplicates else ""


def _exit_with(parent: int) -> None:
    """End this worker once ``parent`` is gone: a killed prepare.py would otherwise leave it blocked forever."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def die_with_parent() -> None:
    """A pool worker's initializer: the worker ends within half a second of its parent (even a SIGKILLed one)."""
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()


def _init_worker(max_pixels: int) -> None:
    """Keep Pillow's own bomb check (an error at twice its limit) above the task's limit; die with prepare."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    die_with_parent()


def run_tasks(tasks: list[Task], workers: int, max_pixels: int) -> list[tuple[str, bool, str, str]]:
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
    remove_partial_writes(dst)
    for folder in (*SPLITS, STAGING):
        shutil.rmtree(dst / folder, ignore_errors=True)
    for name in (*(f"{split}.csv" for split in SPLITS), *REPORTS):
        (dst / name).unlink(missing_ok=True)


def claim(dst: Path, key: str, force: bool) -> None:
    """Make DST ours for a run with fingerprint ``key``, refusing to mix with other content.

    An unfinished run (its marker is there) is redone without --force: it holds nothing of value.
    """
    unfinished = (dst / IN_PROGRESS).is_file()
    if dst.is_dir() and any(p.name != LOCK_NAME for p in dst.iterdir()) and not (force or unfinished):
        what = "a dataset prepared from other inputs or settings" if (dst / "stats.json").exists() else "other files"
        raise InputError(f"{dst}: already holds {what}; use --force to rebuild it")
    dst.mkdir(parents=True, exist_ok=True)
    atomic_write_text(key, dst / IN_PROGRESS)
    clear_outputs(dst)


def stage(rows: pd.DataFrame, dst: Path, size: int, workers: int, max_pixels: int, find_duplicates: bool
          ) -> tuple[pd.DataFrame, list[dict]]:
    """Decode and resize every row's image once into DST/STAGING, hashing it on the way.

    Returns the rows kept (with their ``hash``) and the skipped ones (reported). The tree itself is
    written by ``place`` once the splits are known, which needs every hash.
    """
    (dst / STAGING).mkdir(parents=True, exist_ok=True)
    tasks = [Task(row.image, row.source, str(dst / STAGING / row.output), size, find_duplicates, max_pixels)
             for row in rows.itertuples()]
    results = run_tasks(tasks, workers, max_pixels)
    ok = np.array([good for _, good, _, _ in results], dtype=bool)
    skipped = [{"image": r.image, "split": r.split, "source": r.source, "reason": reason}
               for r, (_, good, reason, _) in zip(rows.itertuples(), results) if not good]
    report_skipped(skipped)
    return rows[ok].assign(hash=[h for _, good, _, h in results if good]), skipped


def place(rows: pd.DataFrame, dst: Path) -> None:
    """Move each staged JPEG into the folder of its split and first label, hard-linked into the others.

    Every split gets its folder, an empty one too: its readers then name it as empty, not as missing.
    """
    for split in SPLITS:
        (dst / split).mkdir(exist_ok=True)
    for row in tqdm(rows.itertuples(), total=len(rows), desc="place", unit="img", leave=False):
        first, *others = (dst / row.split / code / row.output for code in labels_to_codes(row.labels))
        first.parent.mkdir(parents=True, exist_ok=True)
        os.replace(dst / STAGING / row.output, first)
        for other in others:
            other.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(first, other)


def one_hot(rows: pd.DataFrame) -> pd.DataFrame:
    """``images`` + six 0/1 columns in CLASSES order, sorted by image name."""
    table = pd.DataFrame({"images": rows["output"].to_numpy()})
    for name in CLASSES:
        table[name] = rows["labels"].str.split().map(lambda labels, name=name: int(name in labels)).to_numpy()
    return table.sort_values("images", ignore_index=True)


def split_stats(rows: pd.DataFrame) -> dict:
    """Images, per-label and per-combination counts of the rows of one split."""
    table = one_hot(rows)
    counts = rows["labels"].str.split().str.len().value_counts().sort_index()
    return {"images": len(rows),
            "labels": {name: int(table[name].sum()) for name in CLASSES},
            "combinations": {k: int(v) for k, v in rows["labels"].value_counts().sort_index().items()},
            "labels_per_image": {str(k): int(v) for k, v in counts.items()}}


def plot_distribution(stats: dict) -> bytes:
    """PNG of per-split label counts as grouped bars."""
    return split_bars(stats, CLASSES, lambda split: [split["labels"][name] for name in CLASSES], (10, 5),
                      "Label counts per split (a multi-label image counts once per label)", rotation=15)


def plot_labels_per_image(stats: dict) -> bytes:
    """PNG of how many images carry 1, 2, 3... labels, per split (grouped bars)."""
    counts = sorted({int(k) for split in SPLITS for k in stats["splits"][split]["labels_per_image"]}) or [1]
    return split_bars(stats, [f"{k} label{'s' if k > 1 else ''}" for k in counts],
                      lambda split: [split["labels_per_image"].get(str(k), 0) for k in counts], (7, 4.5),
                      "Labels per image")


def split_bars(stats: dict, ticks: Sequence[str], counts_of: Callable[[dict], list[int]], size: tuple[float, float],
               title: str, rotation: float = 0) -> bytes:
    """PNG of grouped bars: per tick, one bar per split of ``counts_of(stats["splits"][split])``, counts on top."""
    figure = Figure(figsize=size, layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(SPLITS)
    x = np.arange(len(ticks))
    for i, split in enumerate(SPLITS):
        bars = axes.bar(x + (i - 1) * width, counts_of(stats["splits"][split]), width,
                        label=f"{split} ({stats['splits'][split]['images']})")
        axes.bar_label(bars, fontsize=7)
    axes.set_xticks(x, ticks, rotation=rotation)
    axes.set_ylabel("images")
    axes.set_title(title)
    axes.legend(title="split (images)")
    return png_bytes(figure, dpi=120)


def sample_tiles(rows: pd.DataFrame, dst: Path, per_combination: int = SAMPLES_PER_COMBINATION
                 ) -> tuple[list[list[Tile]], list[tuple[str, str]]]:
    """samples.png's rows: the first leaves (by name) of every label combination in the tree, most frequent
    combination first, each titled with its name and split; and each row's title (labels, count)."""
    rows = rows.sort_values("output")
    sheet, titles = [], []
    for labels, count in rows["labels"].value_counts(sort=True).items():
        chosen = rows[rows["labels"] == labels].head(per_combination)
        titles.append((f"{labels} ({count} image{'s' if count > 1 else ''})", "black"))
        sheet.append([Tile(dst / row.split / labels_to_codes(labels)[0] / row.output, f"{row.output[:20]}\n{row.split}")
                      for row in chosen.itertuples()])
    return sheet, titles


def sample_sheet(rows: pd.DataFrame, dst: Path) -> bytes:
    """samples.png: a few leaves of every label combination with their labels and split."""
    sheet, titles = sample_tiles(rows, dst)
    return tile_sheet(sheet, "A few leaves of each label combination", titles, side=160, inches=2.0)


def summary_table(stats: dict) -> str:
    """Aligned per-split table (images, per-label counts, skipped files) with a coloured header."""
    skipped = pd.Series([item["split"] for item in stats["skipped"]], dtype=str).value_counts()
    table = pd.DataFrame({split: {"images": s["images"], **s["labels"], "skipped": skipped.get(split, 0)}
                          for split, s in stats["splits"].items()}).T
    table.loc["total"] = table.sum()
    table.loc["total", "skipped"] = len(stats["skipped"])  # a Kaggle layout's skipped photos had no split yet
    header, *body = table.to_string().splitlines()
    return "\n".join([colored(header, "cyan", attrs=["bold"]), *body])


def warn_empty_splits(stats: dict, wanted: tuple[str, ...], dst: Path) -> None:
    """A warning for each split asked for that came out empty (too few images): the commands refuse it."""
    for split in wanted:
        if not stats["splits"][split]["images"]:
            logger.warning(f"{dst / split}: empty split (none of the {stats['total']['images']} usable "
                           "images went there); main.py and test.py refuse it where they need it")


def report_skipped(skipped: list[dict], limit: int = 10) -> None:
    """Log the skipped files with their reasons (the first ``limit``)."""
    if not skipped:
        return
    more = [f"  ... and {len(skipped) - limit} more (see stats.json)"] if len(skipped) > limit else []
    logger.info("\n".join([colored(f"skipped {len(skipped)} image(s):", "yellow"),
                           *(f"  {item['source']}: {item['reason']}" for item in skipped[:limit]), *more]))


def write_outputs(dst: Path, rows: pd.DataFrame, stats: dict, reports: dict[str, str | bytes]) -> None:
    """CSVs, the chart and the duplicate and fold reports, then stats.json: its presence means the tree
    is complete."""
    for split in SPLITS:
        atomic_write_text(one_hot(rows[rows["split"] == split]).to_csv(index=False), dst / f"{split}.csv")
    atomic_write_bytes(plot_distribution(stats), dst / DISTRIBUTION_PNG)
    atomic_write_bytes(plot_labels_per_image(stats), dst / LABELS_PER_IMAGE_PNG)
    atomic_write_bytes(sample_sheet(rows, dst), dst / SAMPLES_PNG)
    for name, content in reports.items():
        (atomic_write_bytes if isinstance(content, bytes) else atomic_write_text)(content, dst / name)
    atomic_write_text(json.dumps(stats, indent=2), dst / "stats.json")
    shutil.rmtree(dst / STAGING, ignore_errors=True)
    (dst / IN_PROGRESS).unlink()


# ----------------------------------------------------------------------------- entry points


@dataclass(frozen=True)
class DataOptions:
    """What prepare does about duplicates and folds (see process/prepare.py's options)."""

    duplicates: str = "keep"
    max_distance: int = DEFAULT_DISTANCE
    move_leaks: bool = False
    folds: int = 0
    fold_pool: tuple[str, ...] = ("train", "val")
    exclude: tuple[str, ...] = ()  # image names left out of the tree (--exclude), sorted


def check_settings(size: int, val: float, test: float, workers: int | None, max_pixels: int,
                   options: DataOptions) -> None:
    """InputError on settings that cannot work."""
    if size < 1:
        raise InputError(f"--size must be positive, got {size}")
    if val < 0 or test < 0 or val + test >= 1:
        raise InputError(f"--val and --test must be >= 0 and leave images for training, got {val} and {test}")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be positive, got {workers}")
    if max_pixels < 1:
        raise InputError(f"--max-pixels must be positive, got {max_pixels}")
    if options.duplicates not in POLICIES:
        raise InputError(f"--duplicates must be one of {', '.join(POLICIES)}, got {options.duplicates!r}")
    if not 0 <= options.max_distance < HASH_BITS:
        raise InputError(f"--duplicate-distance must be in 0..{HASH_BITS - 1} bits, got {options.max_distance}")
    if options.folds == 1 or options.folds < 0:
        raise InputError(f"--folds must be 0 (none) or at least 2, got {options.folds}")
    unknown = sorted(set(options.fold_pool) - set(SPLITS))
    if unknown or not options.fold_pool:
        raise InputError(f"--fold-pool takes splits among {', '.join(SPLITS)}, got {','.join(options.fold_pool)}")


def _identity(path: Path) -> tuple[int, int]:
    """What a folder is, whatever its name (symbolic links, bind mounts): its device and inode."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _existing_folders_up(path: Path) -> set[tuple[int, int]]:
    """The identities of ``path`` (symbolic links followed) and of every existing folder above it."""
    resolved = path.resolve()
    return {_identity(p) for p in (resolved, *resolved.parents) if p.exists()}


def check_destination(src: Path, dst: Path) -> None:
    """InputError when DST cannot be a folder of its own, apart from SRC, before anything is written.

    prepare clears and rewrites its outputs in DST (``train/``, ``train.csv``, ...): a DST that is SRC,
    lies inside it or holds it would lose the user's source files, so no option overrides this.
    """
    first = next(p for p in (dst, *dst.absolute().parents) if p.exists() or p.is_symlink())
    if not first.is_dir():
        raise InputError(f"{dst}: {'exists' if first == dst else f'{first} exists'} and is not a folder")
    source = _identity(src)
    if dst.exists() and _identity(dst) == source:
        where = "is the same folder as --src"
    elif source in _existing_folders_up(dst):
        where = "is inside --src"
    elif dst.exists() and _identity(dst) in _existing_folders_up(src):
        where = "holds --src"
    else:
        return
    raise InputError(f"{dst}: {where} {src}: prepare never writes where its source is; choose a --dst apart from it")


def resolve_duplicates(rows: pd.DataFrame, layout: str, split: tuple[float, float, int], options: DataOptions,
                       staged: Path) -> tuple[pd.DataFrame, dict, dict[str, str | bytes]]:
    """Group near-copies, apply the label policy, split (Kaggle layout) or check the given split for leaks.

    Returns the rows to write (with ``split``), stats.json's ``duplicates`` entry and the report files.
    """
    finding = options.duplicates != "off"
    rows = mark_groups(rows, options.max_distance) if finding else no_groups(rows)
    kept, action = apply_policy(rows, options.duplicates)
    if layout == KAGGLE:
        kept = kept.assign(split=assign_splits(kept, *split))
    leaks = leak_pairs(kept if layout == KAGGLE else rows)
    if leaks and options.move_leaks:
        kept = move_leaks(kept, SPLITS)
    if not finding:
        return kept, {"policy": "off"}, {}
    where = rows["split"].mask(rows.index.isin(kept.index), kept["split"].reindex(rows.index))
    report = report_frame(rows.assign(split=where), action)
    stats = duplicate_stats(report, leaks, options.duplicates, options.max_distance, options.move_leaks)
    files: dict[str, str | bytes] = {REPORT_CSV: report.to_csv(index=False)}
    if len(report):
        files[SHEET_PNG] = contact_sheet(report, {name: staged / name for name in report["image"]})
    return kept, stats, files


def drop_excluded(rows: pd.DataFrame, exclude: tuple[str, ...]) -> pd.DataFrame:
    """The rows whose image (the CSV's name, its stem or the tree's ``<stem>.jpg``) is not in ``exclude``."""
    if not exclude:
        return rows
    names = set(exclude) | {Path(n).stem for n in exclude}
    hit = rows["image"].isin(names) | rows["output"].isin(names) | rows["output"].map(lambda n: Path(n).stem in names)
    if not hit.any():
        raise InputError(f"--exclude: none of its {len(exclude)} images is in the source (a list for another dataset?)")
    logger.info(colored(f"--exclude: {int(hit.sum())} image(s) left out of the tree "
                        f"({len(exclude) - int(hit.sum())} listed name(s) not found)", "yellow"))
    return rows[~hit]


def make_folds(rows: pd.DataFrame, options: DataOptions, seed: int) -> tuple[dict, dict[str, str]]:
    """stats.json's ``folds`` entry (images and label counts per fold) and folds.csv, when --folds asks."""
    if not options.folds:
        return {}, {}
    folds = assign_folds(rows, options.folds, seed, options.fold_pool)
    per_fold = {str(fold): split_stats(rows[folds == fold]) for fold in sorted(set(folds) - {NO_FOLD})}
    stats = {"k": len(per_fold), "seed": seed, "pool": list(options.fold_pool), "folds": per_fold}
    return stats, {FOLDS_FILE: folds_frame(rows, folds).to_csv(index=False)}


def prepare(src: str | Path, dst: str | Path, size: int = 384, val: float = 0.15, test: float = 0.15,
            seed: int = 0, workers: int | None = None, force: bool = False,
            max_pixels: int = MAX_PIXELS, options: DataOptions = DataOptions()) -> dict:
    """Build the one-hot tree of SRC in DST and return its stats (see the module docstring).

    Raises InputError before writing anything on bad input, NoUsableImages when every image fails.
    """
    src, dst = Path(src), Path(dst)
    check_settings(size, val, test, workers, max_pixels, options)
    rows, layout = read_source(src)
    check_destination(src, dst)
    rows = drop_excluded(rows, options.exclude)
    split_here = layout == KAGGLE
    settings = {"layout": layout, "size": size, "quality": JPEG_QUALITY, "max_pixels": max_pixels,
                "val": val if split_here else None, "test": test if split_here else None,
                "seed": seed if split_here or options.folds else None, **asdict(options)}
    key = fingerprint(rows, settings, src)
    finished = read_stats(dst)
    if not force and finished and finished.get("fingerprint") == key and not (dst / IN_PROGRESS).exists():
        logger.info(colored(f"{dst}: already prepared from these inputs and settings; nothing to do", "green"))
        return finished
    with hold_run_lock(dst, "prepare.py"):  # one writer per DST; a second start fails, naming this one
        claim(dst, key, force)
        staged, skipped = stage(rows, dst, size, workers or os.cpu_count() or 1, max_pixels,
                                options.duplicates != "off")
        if staged.empty:
            raise NoUsableImages(f"no usable image: all {len(rows)} images of {src} were skipped")
        kept, duplicates, reports = resolve_duplicates(staged, layout, (val, test, seed), options, dst / STAGING)
        folds, fold_files = make_folds(kept, options, seed)
        place(kept, dst)
        stats = {"fingerprint": key, "settings": {"src": str(src.resolve()), **settings},
                 "splits": {split: split_stats(kept[kept["split"] == split]) for split in SPLITS},
                 "total": split_stats(kept), "skipped": skipped, "duplicates": duplicates}
        stats.update({"folds": folds} if folds else {})
        write_outputs(dst, kept.drop(columns="hash"), stats, {**reports, **fold_files})
    logger.info(summary_table(stats))
    asked = tuple(s for s, share in zip(SPLITS, (1, val, test)) if share) if split_here else SPLITS
    warn_empty_splits(stats, asked, dst)
    if duplicates["policy"] != "off":
        logger.info(colored(summary_line(duplicates), "yellow" if duplicates["groups"] else "green"))
    logger.info(colored(f"wrote {len(kept)} images to {dst} ({len(skipped)} skipped)", "green"))
    return stats
