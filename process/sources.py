"""Reading a Plant Pathology dataset: the Kaggle layout or a pre-split one, every CSV checked first.

Why a module of its own: all input errors (unreadable CSV, unknown or missing labels, unsafe, hidden,
overlong or duplicate image names, an image without read permission, an image in two splits) are
found here, before anything is written, and each is one InputError naming the file, the problem and
the first offending lines.

The Kaggle layout is ``train.csv`` + ``train_images/``. A pre-split layout is ``{train,val,test}/``,
each with one CSV and its images in ``images/`` or beside it. A CSV holds ``image``/``images`` and a
``labels`` string, or one 0/1 column per class.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from data.labels import CLASS_INDEX, CLASSES, labels_to_string

SPLITS = ("train", "val", "test")
KAGGLE, PRE_SPLIT = "kaggle", "pre-split"
IMAGE_COLUMNS = ("image", "images")
SHOW_ROWS = 5  # offending rows named in an input error
SHOW_CHARS = 60  # longest image name shown in an input error
# The tree's <stem>.jpg under an atomic write's temp name ('.' + name + '.XXXXXXXX.tmp') fits NAME_MAX (255 bytes).
MAX_NAME_BYTES = 240


class InputError(ValueError):
    """Bad input (CSV, labels, image names, settings) found before anything is written."""


def output_name(name: str) -> str:
    """The file name of an image in the tree: ``<stem>.jpg``."""
    return PurePosixPath(name).stem + ".jpg"


def _name_problem(name: str) -> str | None:
    """Why an image name cannot be used as a file name inside DST, or None.

    A hidden name (``.x.jpg``) would be written but skipped by the tree's readers, which ignore
    dot-files as temp files; an overlong one would fail in a worker, half-way through.
    """
    if not name:
        return "empty image name"
    if "\0" in name:
        return "image name with a NUL byte"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "absolute image name"
    if ".." in parts:
        return "image name with '..'"
    if len(parts) != 1:
        return "image name with a folder"
    if parts[0].startswith("."):
        return "hidden image name (starting with '.')"
    if len(output_name(name).encode()) > MAX_NAME_BYTES:
        return f"image name over {MAX_NAME_BYTES} bytes"
    return None


def _shown(name: str) -> str:
    """An image name fit for a one-line message: control characters escaped, long names cut."""
    shown = name if name.isprintable() else repr(name)[1:-1]
    return shown if len(shown) <= SHOW_CHARS else shown[:SHOW_CHARS] + "..."


def _rows_message(problem: str, rows: pd.DataFrame) -> str:
    """``unknown label 'blight' in lines 3, 17 (a.jpg, b.jpg)``, naming the first rows only."""
    more = ", ..." if len(rows) > SHOW_ROWS else ""
    lines = ", ".join(str(n) for n in rows["line"].head(SHOW_ROWS)) + more
    names = ", ".join(rows["image"].head(SHOW_ROWS).map(_shown)) + more
    return f"{problem} in line{'s' if len(rows) > 1 else ''} {lines} ({names})"


def _check_readable(rows: pd.DataFrame, csv: Path) -> None:
    """InputError for an image that exists but cannot be read: a permission to fix, not a photo to skip."""
    locked = rows[[os.path.exists(s) and not os.access(s, os.R_OK) for s in rows["source"]]]
    if locked.empty:
        return
    first = locked.iloc[0]
    more = f"; {len(locked) - 1} more image(s) likewise" if len(locked) > 1 else ""
    raise InputError(f"{first.source}: cannot read it (permission denied; line {first.line} of {csv}{more})")


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
                         "output": names.map(output_name)})
    name_problems = names.map(_name_problem)
    problems += [(p, name_problems == p) for p in name_problems.dropna().unique()]
    problems.append(("duplicate image name", rows["output"].duplicated(keep=False)))
    messages = [_rows_message(p, rows[mask]) for p, mask in problems if mask.any()]
    if messages:
        raise InputError(f"{csv}: {'; '.join(messages)}")
    _check_readable(rows, csv)
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

