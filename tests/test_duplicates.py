"""Near-duplicate photos and folds (process.duplicates, process.splits, through process.tree.prepare):
edited copies are found and distinct leaves are not, groups never cross a split or a fold, folds are
stratified and stable, each label policy does what it says and the tree agrees with it."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from data.labels import CLASSES, labels_to_string
from process import duplicates
from process.duplicates import HASH_BITS, close_pairs, union_labels
from process.sources import InputError
from process.synthesize import synthesize
from process.tree import SPLITS, DataOptions, prepare

ROOT = Path(__file__).resolve().parents[1]


def reencoded(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=50)
    return Image.open(buffer)


def cropped(image: Image.Image, share: float = 0.03) -> Image.Image:
    dx, dy = int(image.width * share), int(image.height * share)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


EDITS = {
    "reencoded": reencoded,
    "resized": lambda image: image.resize((image.width * 3 // 5, image.height * 3 // 5), Image.Resampling.BILINEAR),
    "cropped": cropped,
    "brightened": lambda image: ImageEnhance.Brightness(image).enhance(1.2),
}


def add_copies(src: Path, original: str, copies: dict[str, str]) -> None:
    """Append ``name -> labels`` rows to a Kaggle layout, each an edit (EDITS, by the name's prefix) of
    ``original``."""
    table = pd.read_csv(src / "train.csv")
    with Image.open(src / "train_images" / original) as image:
        for name in copies:
            EDITS[name.split("_")[0]](image.convert("RGB")).save(src / "train_images" / name, "JPEG", quality=90)
    extra = pd.DataFrame({"image": list(copies), "labels": list(copies.values())})
    pd.concat([table, extra]).to_csv(src / "train.csv", index=False)


def labels_of(src: Path) -> pd.Series:
    """image -> its labels as given, in CLASSES order (as the tree writes them)."""
    return pd.read_csv(src / "train.csv").set_index("image")["labels"].map(lambda text: labels_to_string(text.split()))


def tree_rows(dst: Path) -> pd.DataFrame:
    """image -> split and label string, read from the split CSVs."""
    frames = []
    for split in SPLITS:
        table = pd.read_csv(dst / f"{split}.csv")
        labels = table[list(CLASSES)].apply(lambda r: " ".join(c for c in CLASSES if r[c]), axis=1)
        frames.append(pd.DataFrame({"image": table["images"], "split": split, "labels": labels}))
    return pd.concat(frames).set_index("image")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """60 synthetic 320x240 leaves, plus four edited copies of the first (two disagreeing on labels) and a
    re-encoded copy of the second with the same labels."""
    src = tmp_path_factory.mktemp("raw")
    synthesize(src, 60, seed=11, size=(320, 240))
    first, second = labels_of(src).index[:2]
    add_copies(src, first, {"reencoded_a.jpg": labels_of(src)[first], "resized_a.jpg": labels_of(src)[first],
                            "cropped_a.jpg": "rust", "brightened_a.jpg": "scab frog_eye_leaf_spot"})
    add_copies(src, second, {"reencoded_b.jpg": labels_of(src)[second]})
    return src


@pytest.fixture(scope="module")
def kept(raw, tmp_path_factory) -> tuple[Path, dict]:
    dst = tmp_path_factory.mktemp("kept") / "ds"
    return dst, prepare(raw, dst, size=128, workers=2, options=DataOptions(folds=3))


# ----------------------------------------------------------------------------- the finder


def test_edited_copies_are_found_and_distinct_leaves_are_not(raw, kept):
    dst, stats = kept
    first, second = labels_of(raw).index[:2]
    copies_of_first = {first, "reencoded_a.jpg", "resized_a.jpg", "cropped_a.jpg", "brightened_a.jpg"}
    report = pd.read_csv(dst / "duplicates.csv", keep_default_na=False)
    groups = report.groupby("group")["image"].apply(frozenset)
    assert set(groups) == {frozenset(copies_of_first), frozenset({second, "reencoded_b.jpg"})}
    assert (report.groupby("group")["distance"].min() == 0).all()
    assert (report["distance"] <= stats["duplicates"]["max_distance"]).all()
    assert set(report.loc[report["conflicting"], "image"]) == copies_of_first
    found = stats["duplicates"]
    assert (found["groups"], found["images_in_groups"], found["conflicting_groups"], found["leaks"]) == (2, 7, 1, 0)
    with Image.open(dst / "duplicates.png") as sheet:
        assert sheet.width > 400 and sheet.height > 400


def test_close_pairs_equals_comparing_every_pair(monkeypatch):
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (300, HASH_BITS), dtype=np.uint8)
    bits[1::7] = bits[::7][: len(bits[1::7])] ^ (rng.random((len(bits[1::7]), HASH_BITS)) < 0.1)  # near copies
    hashes = [np.packbits(row).tobytes().hex() for row in bits]
    monkeypatch.setattr(duplicates, "PAIR_BLOCK", 64)  # several blocks, pairs across their edges
    found = {(i, j): d for i, j, d in close_pairs(hashes, 100)}
    every = {(i, j): int((bits[i] != bits[j]).sum()) for i in range(300) for j in range(i + 1, 300)}
    assert found == {pair: d for pair, d in every.items() if d <= 100} and len(found) > 30


def test_union_of_labels_never_calls_a_diseased_leaf_healthy():
    assert union_labels(["rust", "complex rust"]) == "complex rust"
    assert union_labels(["healthy", "scab"]) == "scab"
    assert union_labels(["healthy", "healthy"]) == "healthy"


# ----------------------------------------------------------------------------- splits and folds


def test_no_group_crosses_a_split_or_a_fold(kept):
    dst, _ = kept
    report = pd.read_csv(dst / "duplicates.csv")
    folds = pd.read_csv(dst / "folds.csv").set_index("image")
    tree = tree_rows(dst)
    for _, group in report.groupby("group"):
        assert tree.loc[group["image"], "split"].nunique() == 1
        pooled = group["image"][group["image"].isin(folds.index)]
        assert folds.loc[pooled, "fold"].nunique() <= 1
    assert set(folds.index) == set(tree.index[tree["split"].isin(["train", "val"])])
    assert (folds["split"] == tree.loc[folds.index, "split"]).all()


def test_each_label_keeps_its_share_in_every_fold(tmp_path):
    src = tmp_path / "src"
    synthesize(src, 400, seed=2, size=(96, 64))
    stats = prepare(src, tmp_path / "ds", size=48, workers=2, options=DataOptions(folds=5, fold_pool=("train",)))
    folds = pd.read_csv(tmp_path / "ds" / "folds.csv").set_index("image")
    labels = tree_rows(tmp_path / "ds").loc[folds.index, "labels"].str.split()
    for name in CLASSES:
        has = labels.map(lambda ls, n=name: n in ls)
        shares = has.groupby(folds["fold"]).mean()
        assert (shares - has.mean()).abs().max() <= 0.03, (name, shares.to_dict())
        assert sum(f["labels"][name] for f in stats["folds"]["folds"].values()) == has.sum()
    assert set(folds["split"]) == {"train"} and stats["folds"]["k"] == 5


def test_folds_are_seeded_and_stable_across_reruns(raw, kept, tmp_path):
    dst, _ = kept
    again = tmp_path / "again"
    prepare(raw, again, size=128, workers=2, options=DataOptions(folds=3))
    assert (again / "folds.csv").read_bytes() == (dst / "folds.csv").read_bytes()
    other = tmp_path / "other"
    prepare(raw, other, size=128, workers=2, seed=1, options=DataOptions(folds=3))
    assert (other / "folds.csv").read_bytes() != (dst / "folds.csv").read_bytes()


def test_bad_fold_settings_are_errors_before_any_work(raw, tmp_path):
    for options, message in [(DataOptions(folds=1), "--folds must be 0"),
                             (DataOptions(fold_pool=("train", "tset")), "--fold-pool takes splits"),
                             (DataOptions(duplicates="merge"), "--duplicates must be one of"),
                             (DataOptions(folds=500), "--folds 500: the pool")]:
        with pytest.raises(InputError, match=message):
            prepare(raw, tmp_path / "ds", size=32, workers=1, options=options)
    assert not (tmp_path / "ds" / "train").exists()


# ----------------------------------------------------------------------------- label policies


@pytest.mark.parametrize("policy", ["union", "drop"])
def test_label_policy_does_what_it_says_and_the_tree_agrees(raw, kept, policy, tmp_path):
    dst = tmp_path / policy
    stats = prepare(raw, dst, size=128, workers=2, options=DataOptions(duplicates=policy))
    report = pd.read_csv(dst / "duplicates.csv", keep_default_na=False)
    tree = tree_rows(dst)
    given = labels_of(raw)
    alone = given.index.difference(report["image"])
    assert (tree.loc[alone, "labels"] == given[alone]).all()  # photos without copies: untouched
    for _, group in report.groupby("group"):
        names = group["image"].tolist()
        if policy == "union":
            first = min(names)
            assert [n for n in names if n in tree.index] == [first]
            assert tree.loc[first, "labels"] == union_labels(given[names])
            assert group.set_index("image")["action"][first].startswith("merged: ")
        elif group["conflicting"].iloc[0]:
            assert not tree.index.isin(names).any() and (group["action"] == "dropped: conflicting labels").all()
        else:
            assert (tree.loc[names, "labels"] == given[names]).all()
    on_disk = {p.name for p in dst.glob("*/*/*.jpg")}
    assert on_disk == set(tree.index)
    assert stats["total"]["images"] == len(tree) == len(given) - stats["duplicates"]["dropped"] \
        - stats["duplicates"]["merged_away"]


def test_keep_policy_keeps_every_copy_with_its_own_labels(raw, kept):
    dst, _ = kept
    tree = tree_rows(dst)
    given = labels_of(raw)
    assert (tree.loc[given.index, "labels"] == given).all()


# ----------------------------------------------------------------------------- a pre-split layout


def pre_split(root: Path, raw: Path, placement: dict[str, list[str]]) -> Path:
    for split, names in placement.items():
        (root / split / "images").mkdir(parents=True)
        for name in names:
            os.link(raw / "train_images" / name, root / split / "images" / name)
        pd.DataFrame({"image": names, "labels": labels_of(raw)[names].tolist()}).to_csv(
            root / split / f"{split}.csv", index=False)
    return root


def test_pre_split_leaks_are_reported_and_moved_only_when_asked(raw, tmp_path):
    first = labels_of(raw).index[0]
    others = list(labels_of(raw).index[2:14])
    src = pre_split(tmp_path / "src", raw, {"train": [first, *others[:8]], "val": ["resized_a.jpg", *others[8:10]],
                                             "test": ["cropped_a.jpg", *others[10:]]})
    stats = prepare(src, tmp_path / "kept", size=128, workers=1)
    assert stats["duplicates"]["leaks"] == 3  # first~resized, first~cropped, resized~cropped
    assert stats["splits"]["test"]["images"] == 3 and (tmp_path / "kept" / "test.csv").read_text().count("cropped_a")
    moved = prepare(src, tmp_path / "moved", size=128, workers=1, options=DataOptions(move_leaks=True))
    tree = tree_rows(tmp_path / "moved")
    assert tree.loc[[first, "resized_a.jpg", "cropped_a.jpg"], "split"].tolist() == ["train"] * 3
    assert moved["duplicates"]["leaks"] == 3 and moved["duplicates"]["leaks_moved"]


def test_prepare_says_in_one_line_what_it_found(raw, tmp_path):
    result = subprocess.run([sys.executable, "process/prepare.py", "--src", str(raw), "--dst", str(tmp_path / "ds"),
                             "--size", "96", "--workers", "2", "--duplicates", "drop"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("duplicates:"))
    assert "2 group(s)" in line and "7 images" in line and "1 with conflicting labels" in line and "drop" in line
    assert json.loads((tmp_path / "ds" / "stats.json").read_text())["duplicates"]["dropped"] == 5


# ----------------------------------------------------------------------------- real leaves


CONFIRMED_PAIRS = [  # looked at side by side: the same photo, or the same leaf photographed twice
    ("82ba3e933947b097.jpg", "cdf892b5b4865859.jpg"),  # plant_dataset train (rust complex) ~ pp2021-sample (rust)
    ("85897ea7f064b26a.jpg", "ec83c7c04a1e9db9.jpg"),  # plant_dataset train: complex ~ rust
    ("a3bb604d8a55995d.jpg", "e7ecc583d571d202.jpg"),  # plant_dataset train: complex ~ rust
    ("ab91d1a9d4b49a6c.jpg", "abb0d5a9d4b4985c.jpg"),  # plant_dataset train: rust, the leaf photographed twice
]


@pytest.mark.slow
def test_real_leaves_confirmed_pairs_are_found_and_nothing_else(real_data, tmp_path):
    """Both real datasets as one Kaggle layout: exactly the confirmed pairs, and no group crosses a split."""
    src = tmp_path / "src"
    (src / "train_images").mkdir(parents=True)
    rows = []
    for split in SPLITS:
        table = pd.read_csv(real_data / "plant_dataset" / split / f"{split}_label.csv")
        rows += [(r["images"], " ".join(c for c in CLASSES if r[c])) for r in table.to_dict("records")]
        for name in table["images"]:
            os.symlink(real_data / "plant_dataset" / split / "images" / name, src / "train_images" / name)
    sample = pd.read_csv(real_data / "pp2021-sample" / "train.csv")
    rows += list(sample.itertuples(index=False, name=None))
    for name in sample["image"]:
        os.symlink(real_data / "pp2021-sample" / "train_images" / name, src / "train_images" / name)
    pd.DataFrame(rows, columns=["image", "labels"]).to_csv(src / "train.csv", index=False)

    stats = prepare(src, tmp_path / "ds", size=256, workers=2, options=DataOptions(folds=5))
    report = pd.read_csv(tmp_path / "ds" / "duplicates.csv")
    found = sorted(tuple(sorted(g)) for g in report.groupby("group")["image"].apply(list))
    assert found == sorted(CONFIRMED_PAIRS)
    assert stats["duplicates"]["conflicting_groups"] == 3 and stats["duplicates"]["leaks"] == 0
    folds = pd.read_csv(tmp_path / "ds" / "folds.csv").set_index("image")
    for pair in CONFIRMED_PAIRS:
        assert folds.loc[list(pair), "fold"].nunique() == 1
