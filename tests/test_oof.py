"""evaluation/oof.py (saved probabilities read checked, scored per fold, averaged), scripts/blend.py on made files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.labels import CLASSES
from evaluation.oof import fold_metrics, mean_probabilities, read_probabilities
from evaluation.thresholds import read_thresholds
from helpers import load_script

blend = load_script("scripts/blend.py")
pool_folds = load_script("scripts/pool_folds.py")

TRUE = ["complex", "healthy", "complex", "healthy"]


def probabilities_csv(path: Path, complex_: list[float], healthy: list[float], folds: bool = True,
                      true: list[str] = TRUE) -> Path:
    """A file of len(complex_) leaves, named in reverse order (the reader sorts them), other classes at 0.05."""
    names = [f"{chr(ord('a') + i)}.jpg" for i in range(len(complex_))]
    frame = pd.DataFrame({"image": names, **{c: 0.05 for c in CLASSES}, "true": true[:len(names)]})
    frame["complex"], frame["healthy"] = complex_, healthy
    if folds:
        frame.insert(1, "fold", [0, 0, 1, 1][:len(names)])
    frame.iloc[::-1].to_csv(path, index=False)
    return path


def test_read_probabilities_sorts_and_refuses_bad_files_in_one_line(tmp_path):
    path = probabilities_csv(tmp_path / "oof.csv", [0.9, 0.1, 0.8, 0.3], [0.1, 0.9, 0.2, 0.8])
    frame = read_probabilities(path, folds=True)
    assert frame["image"].tolist() == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"] and frame["fold"].tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"test.csv: missing column\(s\) fold"):
        read_probabilities(probabilities_csv(tmp_path / "test.csv", [0.9], [0.1], folds=False), folds=True)
    bad = pd.read_csv(path)
    for change, message in [({"scab": 1.5}, "probabilities must lie in"), ({"true": "mildew"}, "line 2: .*mildew"),
                            ({"image": "a.jpg"}, "image a.jpg appears twice"),
                            ({"rust": "x"}, "the probability columns must be numbers")]:
        bad.assign(**change).to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(ValueError, match=f"bad.csv: {message}"):
            read_probabilities(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="empty.csv: not a readable CSV"):
        read_probabilities(tmp_path / "empty.csv")


def test_mean_probabilities_weights_leaf_by_leaf_and_needs_the_same_leaves(tmp_path):
    a = read_probabilities(probabilities_csv(tmp_path / "a.csv", [0.9, 0.1, 0.8, 0.3], [0.1, 0.9, 0.2, 0.8]), True)
    b = read_probabilities(probabilities_csv(tmp_path / "b.csv", [0.7, 0.3, 0.2, 0.1], [0.3, 0.7, 0.2, 0.4]), True)
    mean = mean_probabilities([a, b], [3, 1])
    np.testing.assert_allclose(mean["complex"], [0.85, 0.15, 0.65, 0.25])
    np.testing.assert_allclose(mean["healthy"], [0.15, 0.85, 0.2, 0.7])
    np.testing.assert_allclose(mean_probabilities([a, b])["complex"], [0.8, 0.2, 0.5, 0.2])
    with pytest.raises(ValueError, match="not of the same leaves, labels and folds"):
        mean_probabilities([a, b.assign(fold=[1, 1, 0, 0])])
    with pytest.raises(ValueError, match="not of the same leaves, labels and folds"):
        mean_probabilities([a, b.iloc[:3]])
    # complex found on both folds at 0.5: F1 1 where the blend separates them (fold 0), 2/3 on fold 1 (d.jpg 0.2 < 0.5)
    per_fold = fold_metrics(mean_probabilities([a, b]), np.full(len(CLASSES), 0.5)).set_index("part")
    assert list(per_fold.index) == ["fold 0", "fold 1", "pooled"] and per_fold.loc["pooled", "images"] == 4


def test_blend_tunes_on_the_blended_out_of_fold_and_scores_the_blended_test_once(tmp_path):
    # complex separates only in the blend: A ranks d.jpg over c.jpg, B ranks a.jpg under b.jpg
    oof_a = probabilities_csv(tmp_path / "oof_a.csv", [0.9, 0.1, 0.3, 0.4], [0.1, 0.9, 0.2, 0.8])
    oof_b = probabilities_csv(tmp_path / "oof_b.csv", [0.2, 0.3, 0.9, 0.1], [0.1, 0.9, 0.2, 0.8])
    test_a = probabilities_csv(tmp_path / "test_a.csv", [0.6, 0.2], [0.1, 0.9], folds=False)
    test_b = probabilities_csv(tmp_path / "test_b.csv", [0.6, 0.0], [0.1, 0.7], folds=False)
    out = tmp_path / "blend"
    assert blend.main(["--oof", str(oof_a), str(oof_b), "--test", str(test_a), str(test_b), "--output", str(out)]) == 0
    oof = pd.read_csv(out / "oof.csv")
    np.testing.assert_allclose(oof["complex"], [0.55, 0.2, 0.6, 0.25])
    thresholds = read_thresholds(out / "thresholds.json")
    assert 0.25 < thresholds[CLASSES.index("complex")] <= 0.55  # the only cut with complex F1 1 on the blend
    predictions = pd.read_csv(out / "test" / "predictions.csv")
    np.testing.assert_allclose(predictions["complex"], [0.6, 0.1])
    assert predictions["predicted"].tolist() == ["complex", "healthy"]
    metrics = json.loads((out / "test" / "metrics.json").read_text())
    assert metrics["blend"]["weights"] == [1.0, 1.0]
    assert metrics["metrics"]["complex"]["f1"] == metrics["metrics"]["healthy"]["f1"] == pytest.approx(1.0)
    assert "pooled" in (out / "cv_metrics.md").read_text()
    # without --test: the same out-of-fold blend and thresholds, and the test split left unscored
    oof_only = tmp_path / "oof_only"
    assert blend.main(["--oof", str(oof_a), str(oof_b), "--output", str(oof_only)]) == 0
    assert (oof_only / "oof.csv").read_text() == (out / "oof.csv").read_text()
    np.testing.assert_allclose(read_thresholds(oof_only / "thresholds.json"), thresholds)
    assert not (oof_only / "test").exists()


def test_blend_refuses_mismatched_arguments_before_reading(tmp_path):
    oof = probabilities_csv(tmp_path / "oof.csv", [0.9, 0.1, 0.8, 0.3], [0.1, 0.9, 0.2, 0.8])
    with pytest.raises(ValueError, match="--oof has 2 files and --test 1"):
        blend.main(["--oof", str(oof), str(oof), "--test", str(oof), "--output", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--weights: expected 1 positive numbers"):
        blend.main(["--oof", str(oof), "--test", str(oof), "--weights", "0", "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_pool_folds_keys_each_fold_file_by_folds_csv_and_averages_the_test_members(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    pd.DataFrame({"image": ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "t.jpg"], "split": ["train"] * 4 + ["test"],
                  "fold": [0, 0, 1, 1, -1]}).to_csv(tree / "folds.csv", index=False)
    oof = pd.read_csv(probabilities_csv(tmp_path / "all.csv", [0.9, 0.1, 0.8, 0.3], [0.1, 0.9, 0.2, 0.8]),
                      keep_default_na=False).sort_values("image", ignore_index=True)
    fold0, fold1 = tmp_path / "fold0.csv", tmp_path / "fold1.csv"
    oof[oof["fold"] == 0].drop(columns="fold").to_csv(fold0, index=False)
    oof[oof["fold"] == 1].drop(columns="fold").to_csv(fold1, index=False)
    test_a = probabilities_csv(tmp_path / "test_a.csv", [0.6], [0.1], folds=False)
    test_b = probabilities_csv(tmp_path / "test_b.csv", [0.2], [0.3], folds=False)
    out = tmp_path / "pooled"
    args = ["--data-path", str(tree), "--test", str(test_a), str(test_b), "--output", str(out)]
    assert pool_folds.main(["--oof", str(fold1), str(fold0), *args]) == 0  # any order
    pooled = read_probabilities(out / "oof.csv", folds=True)
    assert pooled["fold"].tolist() == [0, 0, 1, 1]
    np.testing.assert_allclose(pooled["complex"], [0.9, 0.1, 0.8, 0.3])
    test = read_probabilities(out / "test.csv")
    np.testing.assert_allclose(test[["complex", "healthy"]].to_numpy(), [[0.4, 0.2]])
    assert "pooled" in (out / "cv_metrics.md").read_text()

    both = tmp_path / "both.csv"
    oof.iloc[1:3].drop(columns="fold").to_csv(both, index=False)  # b.jpg (fold 0) and c.jpg (fold 1)
    test_leaf = tmp_path / "test_leaf.csv"
    pd.read_csv(test_a).assign(image="t.jpg").to_csv(test_leaf, index=False)  # fold -1
    half = tmp_path / "half.csv"
    oof.iloc[:1].drop(columns="fold").to_csv(half, index=False)  # a.jpg alone of fold 0
    for files, message in [([fold0], r"no predictions for fold\(s\) \[1\]"),
                           ([fold0, fold0], "fold0.csv: fold 0 is given twice"),
                           ([both, fold1], r"both.csv: its leaves are not the held-out leaves of one fold"),
                           ([test_leaf, fold1], r"test_leaf.csv: its leaves are not the held-out leaves"),
                           ([half, fold1], "half.csv: 1 leaves, but fold 0 of folds.csv holds 2")]:
        with pytest.raises(ValueError, match=message):
            pool_folds.main(["--oof", *map(str, files), *args])
