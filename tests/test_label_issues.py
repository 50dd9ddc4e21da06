"""Label-issue review (scripts/label_issues.py on out-of-fold probabilities) and the exclusion lists that
main.py (DATA.EXCLUDE, training only) and process/prepare.py (--exclude) accept."""
from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from config import get_config
from data.dataset import read_image_list
from data.labels import CLASSES
from data.loader import build_loader
from helpers import load_script
from process.sources import InputError
from process.synthesize import synthesize
from process.tree import DataOptions, prepare

label_issues = load_script("scripts/label_issues.py")
FLIPPED = {"scab": "healthy", "rust": "powdery_mildew", "healthy": "frog_eye_leaf_spot"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    synthesize(folder, 60, seed=3, size=(64, 48))
    return folder


@pytest.fixture(scope="module")
def tree(raw, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("tree") / "ds"
    prepare(raw, dst, size=48, workers=2)
    return dst


def pooled(tree: Path) -> pd.DataFrame:
    frames = [pd.read_csv(tree / f"{split}.csv").assign(fold=i) for i, split in enumerate(("train", "val"))]
    return pd.concat(frames, ignore_index=True)


def confident_oof(tree: Path, flips: int) -> tuple[pd.DataFrame, list[str]]:
    """oof.csv of a model that is right and sure about every leaf; the given labels of ``flips`` single-label
    leaves are then swapped for a wrong one, so those leaves, and only those, disagree with their probabilities."""
    frame = pooled(tree)
    targets = frame[list(CLASSES)].to_numpy(float)
    probs = np.clip(0.92 * targets + 0.04 + np.random.default_rng(0).uniform(-0.02, 0.02, targets.shape), 0, 1)
    true = [" ".join(c for c in CLASSES if row[c]) for _, row in frame.iterrows()]
    flipped = []
    for i, labels in enumerate(true):
        if labels in FLIPPED and len(flipped) < flips:
            true[i] = FLIPPED[labels]
            flipped.append(frame["images"][i])
    oof = pd.DataFrame({"image": frame["images"], "fold": frame["fold"], **dict(zip(CLASSES, probs.T)), "true": true})
    return oof, flipped


def test_label_issues_ranks_the_flipped_leaves_first_and_lists_them_to_exclude(tree, tmp_path):
    oof, flipped = confident_oof(tree, flips=3)
    oof.to_csv(tmp_path / "oof.csv", index=False)
    assert label_issues.main([str(tmp_path / "oof.csv"), "--data-path", str(tree), "--top", "8"]) == 0
    out = tmp_path / "label_issues"
    table = pd.read_csv(out / "label_issues.csv", keep_default_na=False)
    assert len(table) == len(oof) and table["rank"].tolist() == list(range(1, len(oof) + 1))
    assert set(table["image"][:3]) == set(flipped)
    assert table.set_index("image").loc[flipped, "flagged"].all()
    assert table["flagged"].sum() == 3  # a sure and right model flags nothing else
    first = table.iloc[0]
    assert first["predicted"] != first["given"] and first["disagreement"].startswith("+")
    assert set(pd.read_csv(out / "exclude.csv")["image"]) == set(flipped)
    assert (out / "label_issues.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_image_list(out / "exclude.csv") == frozenset(flipped)


def test_label_issues_uses_the_ensemble_thresholds_beside_oof_csv(tree, tmp_path):
    oof, _ = confident_oof(tree, flips=0)
    oof.to_csv(tmp_path / "oof.csv", index=False)
    high = {c: 0.99 for c in CLASSES}  # nothing reaches them: every predicted label set is empty
    (tmp_path / "ensemble.json").write_text(json.dumps({"members": [], "thresholds": high}))
    label_issues.main([str(tmp_path / "oof.csv"), "--data-path", str(tree), "--output", str(tmp_path / "out")])
    table = pd.read_csv(tmp_path / "out" / "label_issues.csv", keep_default_na=False)
    assert (table["predicted"] == "").all() and not table["flagged"].any()


def test_label_issues_refuses_a_bad_oof_file_naming_it(tree, tmp_path):
    oof, _ = confident_oof(tree, flips=0)
    oof.assign(true=["scab"] * 3 + ["mosaic"] + ["scab"] * (len(oof) - 4)).to_csv(tmp_path / "oof.csv", index=False)
    with pytest.raises(ValueError, match=r"oof.csv: line 5: unknown label 'mosaic'"):
        label_issues.main([str(tmp_path / "oof.csv"), "--data-path", str(tree)])
    oof.drop(columns="rust").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv: missing column"):
        label_issues.main([str(tmp_path / "bad.csv"), "--data-path", str(tree)])


def test_image_lists_read_csv_and_plain_text(tmp_path):
    (tmp_path / "a.txt").write_text("# leaves to drop\nx.jpg\n\ndir/y.jpg  # a path: its name counts\n")
    assert read_image_list(tmp_path / "a.txt") == frozenset({"x.jpg", "y.jpg"})
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty.txt: lists no image"):
        read_image_list(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="missing.txt: cannot read"):
        read_image_list(tmp_path / "missing.txt")


def config_of(tree: Path, exclude: Path | None):
    opts = ["DATA.DATA_PATH", str(tree), "DATA.BATCH_SIZE", "2", "DATA.NUM_WORKERS", "0", "DATA.IMG_SIZE", "32"]
    return get_config(Namespace(opts=opts + (["DATA.EXCLUDE", str(exclude)] if exclude else [])))


def test_data_exclude_leaves_images_out_of_training_only(tree, tmp_path):
    train_names = pd.read_csv(tree / "train.csv")["images"].tolist()
    val_names = pd.read_csv(tree / "val.csv")["images"].tolist()
    (tmp_path / "drop.txt").write_text("\n".join([*train_names[:4], val_names[0]]) + "\n")
    whole_train, whole_val, *_ = build_loader(config_of(tree, None))
    train, val, *_ = build_loader(config_of(tree, tmp_path / "drop.txt"))
    kept = {Path(p).name for p, _ in train.samples}
    assert len(train) == len(whole_train) - 4 and not kept & set(train_names[:4])
    assert len(val) == len(whole_val)  # validation is scored on every leaf, listed or not
    (tmp_path / "other.txt").write_text("not-in-this-tree.jpg\n")
    with pytest.raises(ValueError, match="none of its 1 images is in"):
        build_loader(config_of(tree, tmp_path / "other.txt"))


def test_prepare_exclude_leaves_images_out_of_the_tree(raw, tmp_path):
    names = pd.read_csv(raw / "train.csv")["image"].tolist()
    stats = prepare(raw, tmp_path / "ds", size=32, workers=2, options=DataOptions(exclude=tuple(names[:2])))
    written = {p.name for p in (tmp_path / "ds").glob("*/*/*.jpg")}
    assert stats["total"]["images"] == len(names) - 2
    assert not written & {Path(n).stem + ".jpg" for n in names[:2]}
    with pytest.raises(InputError, match="none of its 1 images"):
        prepare(raw, tmp_path / "ds2", size=32, workers=2, options=DataOptions(exclude=("nope.jpg",)))
