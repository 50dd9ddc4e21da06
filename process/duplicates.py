"""Near-duplicate photos: a perceptual hash per photo, the pair search, groups, label policies, the report.

Why: Plant Pathology 2021 holds the same leaf photographed twice and single photos saved twice, and
about half of those pairs carry different labels. A split that ignores them scores a model on photos it
trained on. ``process.tree`` hashes every photo from the image it already decodes (``image_hash``), and
this module joins close pairs into groups, which the splits and folds (``process.splits``) keep whole.

The hash is imagehash's horizontal and vertical difference hash, 16x16 each: 512 bits of "is the next
pixel brighter" on a 17x16 grey thumbnail, so re-encoding, resizing and brightness barely move it. The
distance is the number of differing bits. The default threshold (``DEFAULT_DISTANCE``) was chosen on
4,878 real leaves: their 4 confirmed duplicate pairs are at 0, 0, 0 and 35 bits, the closest distinct
leaves at 163; real leaves re-encoded at quality 60, resized to 60 %, brightened 1.2x, or cropped by 3 %
on every side move at most 15, 7, 23 and 111 bits (docs/data.md#duplicates).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from data.labels import labels_to_string
from utils.figures import Tile, tile_sheet

HASH_SIZE = 16
HASH_BITS = 2 * HASH_SIZE * HASH_SIZE
DEFAULT_DISTANCE = 128  # bits of HASH_BITS: between the edits above (<= 111) and distinct leaves (>= 163)
POLICIES = ("keep", "union", "drop", "off")
NO_GROUP = -1
REPORT_CSV, SHEET_PNG = "duplicates.csv", "duplicates.png"  # in DST, beside stats.json
PAIR_BLOCK = 2048  # rows of the distance matrix computed at once (2048 x N float32)


# ----------------------------------------------------------------------------- hashing and the pair search


def image_hash(image: Image.Image) -> str:
    """The 512-bit perceptual hash of a decoded photo, as 128 hex digits."""
    grey = image.convert("L")
    bits = np.concatenate([imagehash.dhash(grey, HASH_SIZE).hash.ravel(),
                           imagehash.dhash_vertical(grey, HASH_SIZE).hash.ravel()])
    return np.packbits(bits).tobytes().hex()


def _signs(hashes: Sequence[str]) -> np.ndarray:
    """(N, HASH_BITS) float32 of +-1: the Hamming distance of two rows is (HASH_BITS - dot) / 2."""
    packed = np.frombuffer(bytes.fromhex("".join(hashes)), dtype=np.uint8).reshape(len(hashes), -1)
    return np.unpackbits(packed, axis=1).astype(np.float32) * 2 - 1


def hash_distance(a: str, b: str) -> int:
    """Differing bits of two hashes."""
    signs = _signs([a, b])
    return int(round((HASH_BITS - float(signs[0] @ signs[1])) / 2))


def close_pairs(hashes: Sequence[str], max_distance: int) -> np.ndarray:
    """Every pair (i < j) within ``max_distance`` bits, as rows (i, j, distance).

    Every pair is compared, as a matrix product of +-1 bits in blocks of rows: N^2/2 x 512 multiply-adds
    done by BLAS, about 4 s for the 18,632 Kaggle photos on 2 cores (and 4x that at twice the photos).
    """
    signs = _signs(hashes)
    found = []
    for start in range(0, len(signs), PAIR_BLOCK):
        block = signs[start:start + PAIR_BLOCK]
        distance = np.rint((HASH_BITS - block @ signs[start:].T) / 2).astype(np.int32)
        rows, cols = np.nonzero(distance <= max_distance)
        upper = cols > rows  # column index is relative to ``start``: j > i, each pair once
        found.append(np.stack([rows[upper] + start, cols[upper] + start, distance[rows[upper], cols[upper]]], 1))
    return np.concatenate(found) if found else np.zeros((0, 3), np.int32)


# ----------------------------------------------------------------------------- groups


def mark_groups(rows: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """``rows`` (with a ``hash`` column) plus ``group`` (NO_GROUP for a photo without a near-copy) and
    ``distance`` (bits to its group's first image, by name).

    Close pairs are joined transitively; groups are numbered in the order of their first image's name.
    """
    rows = rows.sort_values("output").reset_index(drop=True)
    pairs = close_pairs(rows["hash"].tolist(), max_distance)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(rows), len(rows)))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    grouped = sizes[component] > 1
    first_of = {c: i for i, c in reversed(list(enumerate(component)))}  # rows are in name order
    numbers = {c: n for n, c in enumerate(sorted({c for c, g in zip(component, grouped) if g}, key=first_of.get))}
    rows["group"] = [numbers[c] if g else NO_GROUP for c, g in zip(component, grouped)]
    rows["distance"] = [hash_distance(h, rows.at[first_of[c], "hash"]) if g else 0
                        for h, c, g in zip(rows["hash"], component, grouped)]
    return rows


def no_groups(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` marked as holding no duplicates (the finder is off)."""
    return rows.assign(group=NO_GROUP, distance=0)


def conflicting(rows: pd.DataFrame) -> pd.Series:
    """True for each row of a group whose images do not all carry the same labels."""
    grouped = rows["group"] != NO_GROUP
    kinds = rows[grouped].groupby("group")["labels"].transform("nunique")
    return (kinds > 1).reindex(rows.index, fill_value=False)


def union_labels(labels: Sequence[str]) -> str:
    """The labels of every copy together; ``healthy`` goes when a disease is among them (never both)."""
    names = {name for text in labels for name in text.split()}
    if len(names) > 1:
        names.discard("healthy")
    return labels_to_string(names)


# ----------------------------------------------------------------------------- label policies


def apply_policy(rows: pd.DataFrame, policy: str) -> tuple[pd.DataFrame, pd.Series]:
    """The rows to write under ``policy``, and what was done to every row (its ``action``).

    keep: every copy with its own labels. union: each group becomes its first image carrying the
    union of the group's labels. drop: conflicting groups are left out, agreeing ones kept whole.
    """
    action = pd.Series("", index=rows.index, dtype=object)
    grouped = rows["group"] != NO_GROUP
    action[grouped] = "kept"
    if policy == "union":
        first = grouped & ~rows.sort_values("output").duplicated("group").reindex(rows.index)
        merged = rows[grouped].groupby("group")["labels"].agg(union_labels)
        rows = rows.copy()
        rows.loc[first, "labels"] = rows.loc[first, "group"].map(merged)
        names = rows[first].set_index("group")["output"]
        action[first] = "merged: " + rows.loc[first, "labels"]
        action[grouped & ~first] = "merged into " + rows.loc[grouped & ~first, "group"].map(names)
        return rows[~grouped | first], action
    if policy == "drop":
        conflict = conflicting(rows)
        action[conflict] = "dropped: conflicting labels"
        return rows[~conflict], action
    return rows, action


# ----------------------------------------------------------------------------- leaks across splits


def leak_pairs(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """Pairs of copies that sit in different splits, as ``("a.jpg (train)", "b.jpg (test)")``."""
    pairs = []
    for _, group in rows[rows["group"] != NO_GROUP].groupby("group"):
        members = list(group[["output", "split"]].itertuples(index=False))
        pairs += [(f"{a.output} ({a.split})", f"{b.output} ({b.split})")
                  for i, a in enumerate(members) for b in members[i + 1:] if a.split != b.split]
    return pairs


def move_leaks(rows: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Each group that crosses splits moved whole into the first of its splits in ``order``."""
    grouped = rows["group"] != NO_GROUP
    rank = rows["split"].map({name: i for i, name in enumerate(order)})
    target = rank[grouped].groupby(rows.loc[grouped, "group"]).transform("min")
    moved = rows.copy()
    moved.loc[grouped, "split"] = target.map(dict(enumerate(order)))
    return moved


# ----------------------------------------------------------------------------- the report


def report_frame(rows: pd.DataFrame, action: pd.Series) -> pd.DataFrame:
    """duplicates.csv: one row per image in a group, with its labels as given and what was done."""
    grouped = rows["group"] != NO_GROUP
    frame = rows.loc[grouped, ["group", "output", "split", "labels", "distance"]].rename(columns={"output": "image"})
    frame.insert(4, "conflicting", conflicting(rows)[grouped])
    frame["action"] = action[grouped]
    return frame.sort_values(["group", "distance", "image"], ignore_index=True)


def duplicate_stats(report: pd.DataFrame, leaks: list[tuple[str, str]], policy: str, max_distance: int,
                    moved: bool) -> dict:
    """The counts of stats.json's ``duplicates`` entry."""
    groups = report.groupby("group")["conflicting"].first()
    return {"policy": policy, "hash": f"dhash + dhash_vertical, {HASH_SIZE}x{HASH_SIZE} ({HASH_BITS} bits)",
            "max_distance": max_distance, "groups": int(len(groups)), "images_in_groups": int(len(report)),
            "conflicting_groups": int(groups.sum()), "leaks": len(leaks), "leaks_moved": moved,
            "leak_pairs": [list(pair) for pair in leaks],
            "dropped": int(report["action"].str.startswith("dropped").sum()),
            "merged_away": int(report["action"].str.startswith("merged into").sum())}


def summary_line(stats: dict) -> str:
    """Prepare's one line on what the finder found."""
    if not stats["groups"]:
        return f"duplicates: no near-identical photos (at most {stats['max_distance']} of {HASH_BITS} bits apart)"
    leaks = f"{stats['leaks']} pair(s) across splits" + (" (moved)" if stats["leaks_moved"] and stats["leaks"] else "")
    return (f"duplicates: {stats['groups']} group(s) of near-identical photos ({stats['images_in_groups']} images), "
            f"{stats['conflicting_groups']} with conflicting labels, {leaks}; policy {stats['policy']} "
            f"({REPORT_CSV}, {SHEET_PNG})")


SHEET_GROUPS = 40  # groups drawn in duplicates.png (conflicting ones first); duplicates.csv lists all
SHEET_COLUMNS = 4  # copies drawn per group


def contact_sheet(report: pd.DataFrame, image_of: dict[str, Path]) -> bytes:
    """duplicates.png: one row per group, its copies side by side with their labels; conflicting groups
    first, titled in red."""
    order = report.groupby("group")["conflicting"].first().sort_values(ascending=False, kind="stable")
    shown = list(order.index[:SHEET_GROUPS])
    rows, titles = [], []
    for group in shown:
        members = report[report["group"] == group].head(SHEET_COLUMNS)
        conflict = bool(members["conflicting"].iloc[0])
        titles.append((f"group {group}: " + ("CONFLICTING LABELS" if conflict else "same labels"),
                       "red" if conflict else "black"))
        rows.append([Tile(image_of[m.image], f"{m.image} ({m.split}, {m.distance} bits)\n{m.labels}")
                     for m in members.itertuples()])
    more = f"first {len(shown)} of {len(order)} groups (all in duplicates.csv)" if len(order) > len(shown) else ""
    return tile_sheet(rows, more, titles)
