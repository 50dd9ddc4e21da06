"""Splits and folds that keep every duplicate group on one side.

Why a module of its own: the train/val/test split of a Kaggle layout and the K folds of the training
pool are where a leak would be made. Both work on *units* (a duplicate group of ``process.duplicates``,
or one photo), so near-identical photos always land together; with no duplicates a unit is a photo.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from data.folds import NO_FOLD
from data.labels import labels_to_vector
from process.duplicates import NO_GROUP
from process.sources import SPLITS, InputError


def largest_remainder(exact: np.ndarray) -> list[int]:
    """Integer counts summing to ``round(exact.sum())``: each quota's floor, plus one for the largest
    remainders (ties: in order)."""
    counts = np.floor(exact).astype(int)
    by_remainder = np.argsort(-(exact - counts), kind="stable")
    counts[by_remainder[: int(round(exact.sum())) - counts.sum()]] += 1
    return counts.tolist()


def allocate(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Split ``n`` items by ``fractions`` (summing to 1) with the largest-remainder method."""
    return largest_remainder(np.asarray(fractions) * n)


def units(rows: pd.DataFrame) -> pd.Series:
    """The unit of every row: ``g<group>`` for a duplicate group, the image's own name otherwise."""
    group = rows["group"] if "group" in rows else pd.Series(NO_GROUP, index=rows.index)
    return rows["output"].where(group == NO_GROUP, "g" + group.astype(str))


def first_of_units(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per unit (its first image by name), in name order, with a ``unit`` column."""
    return rows.assign(unit=units(rows)).sort_values("output").drop_duplicates("unit")


def assign_splits(rows: pd.DataFrame, val: float, test: float, seed: int) -> pd.Series:
    """Split each label combination by itself, so rare combinations reach val and test too; a unit goes
    whole, by the labels of its first image.

    Deterministic in ``seed`` and independent of the CSV's row order.
    """
    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    for _, group in first_of_units(rows).groupby("labels", sort=True):
        shuffled = group["unit"].to_numpy()[rng.permutation(len(group))]
        counts = allocate(len(group), (1 - val - test, val, test))
        for name, start, count in zip(SPLITS, np.cumsum([0] + counts[:-1]), counts):
            split_of.update(dict.fromkeys(shuffled[start:start + count], name))
    return units(rows).map(split_of)


def assign_folds(rows: pd.DataFrame, k: int, seed: int, pool: Sequence[str]) -> pd.Series:
    """The fold (0..k-1) of every row of the ``pool`` splits, NO_FOLD for the rest.

    Iterative multi-label stratification (iterative-stratification's MultilabelStratifiedKFold) over
    units, each carrying the union of its images' labels; seeded, and stable for the same rows.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # imports scikit-learn: only for --folds

    pooled = rows[rows["split"].isin(pool)]
    first = first_of_units(pooled)
    if len(first) < k:
        raise InputError(f"--folds {k}: the pool ({', '.join(pool)}) holds only {len(first)} separate images")
    unit = units(pooled)
    targets = pd.DataFrame(np.stack([labels_to_vector(text) for text in pooled["labels"]]), index=pooled.index)
    per_unit = targets.groupby(unit).max().loc[first["unit"]].to_numpy()
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    fold_of = {}
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(first)), per_unit)):
        fold_of.update(dict.fromkeys(first["unit"].to_numpy()[held_out], fold))
    return unit.map(fold_of).reindex(rows.index, fill_value=NO_FOLD).astype(int)


def folds_frame(rows: pd.DataFrame, folds: pd.Series) -> pd.DataFrame:
    """folds.csv: ``image``, ``split`` (where it lives in the tree) and ``fold``, by image name."""
    pooled = folds != NO_FOLD
    return (pd.DataFrame({"image": rows.loc[pooled, "output"], "split": rows.loc[pooled, "split"],
                          "fold": folds[pooled]}).sort_values("image", ignore_index=True))
