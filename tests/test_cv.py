"""K-fold training and ensembles: fold splits of folds.csv, the fold run dirs, scripts/cv.py's out-of-fold
bookkeeping, ensemble files and their averaging, test.py on an ensemble."""
from __future__ import annotations

import json
import shutil
from argparse import Namespace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from config import get_config
from data.dataset import MultiLabelImageFolder, TreeSplit
from data.labels import CLASSES
from evaluation.ensemble_file import Ensemble, average_probs, probs_to_logits
from evaluation.inference import sigmoid
from evaluation.oof import fold_metrics, targets_of
from evaluation.thresholds import decide, read_thresholds, samples_f1
from helpers import TINY_YAML, load_script
from models.ensemble import MeanOfProbabilities, MemberInput
from process.synthesize import synthesize
from process.tree import DataOptions, prepare
from training.rundir import RunDir

cv = load_script("scripts/cv.py")



@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """60 synthetic leaves prepared at 64 px with 2 folds of train + val."""
    raw = tmp_path_factory.mktemp("raw")
    synthesize(raw, 60, seed=1, size=(96, 64))
    dst = tmp_path_factory.mktemp("tree") / "ds"
    prepare(raw, dst, size=64, workers=2, options=DataOptions(folds=2))
    return dst


def names(split) -> set[str]:
    return {Path(path).name for path, _ in MultiLabelImageFolder(split).samples}


def test_a_fold_validates_on_itself_and_trains_on_the_rest_of_the_pool(tree):
    folds = pd.read_csv(tree / "folds.csv")
    pool = names(tree / "train") | names(tree / "val")
    assert set(folds["image"]) == pool
    for fold in range(2):
        train, val = names(TreeSplit(tree, "train", fold)), names(TreeSplit(tree, "val", fold))
        assert val == set(folds.loc[folds["fold"] == fold, "image"]) and not train & val and train | val == pool
    assert names(TreeSplit(tree, "test", 1)) == names(tree / "test")  # the test split is never a fold's
    targets = MultiLabelImageFolder(TreeSplit(tree, "val", 0)).targets
    whole = {Path(p).name: t for p, t in MultiLabelImageFolder(tree / "val").samples + MultiLabelImageFolder(
        tree / "train").samples}
    for (path, target), row in zip(MultiLabelImageFolder(TreeSplit(tree, "val", 0)).samples, targets):
        np.testing.assert_array_equal(target, whole[Path(path).name])
        np.testing.assert_array_equal(row, target)


def test_a_missing_fold_or_folds_file_says_what_to_do(tree, tmp_path):
    with pytest.raises(ValueError, match="no fold 7"):
        TreeSplit(tree, "val", 7).samples()
    shutil.copytree(tree / "train", tmp_path / "train")
    with pytest.raises(FileNotFoundError, match="prepare.py --folds K"):
        TreeSplit(tmp_path, "train", 0).samples()


def test_cv_folds_option_picks_fold_ids_and_refuses_unknown_ones(tmp_path):
    args = Namespace(folds="", data_path=tmp_path)
    assert cv.chosen_folds(args, [0, 1, 2]) == [0, 1, 2]
    assert cv.chosen_folds(Namespace(folds="2, 0", data_path=tmp_path), [0, 1, 2]) == [0, 2]
    with pytest.raises(ValueError, match="no fold 5"):
        cv.chosen_folds(Namespace(folds="0,5", data_path=tmp_path), [0, 1, 2])
    with pytest.raises(ValueError, match="comma-separated fold ids"):
        cv.chosen_folds(Namespace(folds="a", data_path=tmp_path), [0, 1, 2])


def test_fold_runs_get_their_own_run_dir(tmp_path):
    config = get_config(Namespace(opts=["OUTPUT", str(tmp_path)], fold=2))
    assert RunDir.of(config).path == tmp_path / config.MODEL.NAME / "default-fold2"
    assert RunDir.of(get_config(Namespace(opts=["OUTPUT", str(tmp_path)]))).path.name == "default"
    with pytest.raises(ValueError, match="DATA.FOLD must be"):
        get_config(Namespace(opts=["DATA.FOLD", "-2"]))


# ----------------------------------------------------------------------------- ensembles


def test_ensemble_averages_probabilities_with_weights():
    a, b = np.array([[0.9, 0.2]]), np.array([[0.5, 0.4]])
    np.testing.assert_allclose(average_probs([a, b], [1, 1]), [[0.7, 0.3]])
    np.testing.assert_allclose(average_probs([a, b], [3, 1]), [[0.8, 0.25]])
    np.testing.assert_allclose(sigmoid(probs_to_logits(np.array([[0.7, 0.3, 0.0, 1.0]]))),
                               [[0.7, 0.3, 1e-7, 1 - 1e-7]], atol=1e-9)


class PixelMean(torch.nn.Module):
    """Logits = each channel's mean input value, twice: shows what a member was fed."""

    def forward(self, images):
        means = images.mean((-2, -1))
        return torch.cat([means, means], 1)


def test_ensemble_module_feeds_each_member_its_own_input_and_averages_probabilities():
    """Input normalised with mean 0.5 / std 0.5 at 8 px; member 1 wants mean 0 / std 1 at 4 px, member 2 the
    source's own: both see the right pixels, and the output is the logit of the 1:3 weighted mean probability."""
    pixels = torch.full((1, 3, 8, 8), 0.8)
    source = MemberInput(8, (0.5,) * 3, (0.5,) * 3)
    module = MeanOfProbabilities([PixelMean(), PixelMean()], [MemberInput(4, (0.0,) * 3, (1.0,) * 3), source],
                                 [1.0, 3.0], source)
    images = (pixels - 0.5) / 0.5
    torch.testing.assert_close(module.member_input(images, 0), torch.full((1, 3, 4, 4), 0.8))
    torch.testing.assert_close(module.member_input(images, 1), images)
    expected = 0.25 * torch.sigmoid(torch.tensor(0.8)) + 0.75 * torch.sigmoid(torch.tensor(0.6))
    torch.testing.assert_close(torch.sigmoid(module(images)), torch.full((1, 6), float(expected)))


def test_ensemble_file_round_trips_and_survives_a_move(tmp_path):
    members = []
    for k in range(2):
        members.append(tmp_path / "out" / f"run-fold{k}" / "ckpt_best.pth")
        members[-1].parent.mkdir(parents=True)
        members[-1].write_bytes(b"x")
    thresholds = np.array([0.3, 0.4, 0.5, 0.35, 0.45, 0.25])
    (tmp_path / "out" / "run-cv").mkdir()
    Ensemble(tmp_path / "out" / "run-cv" / "ensemble.json", tuple(members), (1.0, 2.0), True, thresholds,
             "out-of-fold").write()
    shutil.move(tmp_path / "out", tmp_path / "moved")
    read = Ensemble.read(tmp_path / "moved" / "run-cv" / "ensemble.json")
    assert [m.resolve() for m in read.members] == [(tmp_path / "moved" / f"run-fold{k}" / "ckpt_best.pth").resolve()
                                                   for k in range(2)]
    assert read.weights == (1.0, 2.0) and read.tta and read.thresholds_from == "out-of-fold"
    np.testing.assert_allclose(read.thresholds, thresholds)
    (tmp_path / "moved" / "run-fold1" / "ckpt_best.pth").unlink()
    with pytest.raises(FileNotFoundError, match="run-fold1"):
        Ensemble.read(tmp_path / "moved" / "run-cv" / "ensemble.json")
    (tmp_path / "bad.json").write_text("{\"members\": 3}")
    with pytest.raises(ValueError, match="bad.json: not a readable ensemble file"):
        Ensemble.read(tmp_path / "bad.json")


def test_out_of_fold_metrics_on_known_predictions(tmp_path):
    runs = {}
    for fold, (image, prob, true) in enumerate([("a.jpg", 0.9, "complex"), ("b.jpg", 0.2, "scab")]):
        run = RunDir(tmp_path / f"r-fold{fold}")
        run.split_results("val").mkdir(parents=True)
        probs = {c: (prob if c == "complex" else 0.1) for c in CLASSES}
        pd.DataFrame([{"image": image, **probs, "predicted": "", "true": true}]).to_csv(
            run.split_results("val") / "predictions.csv", index=False)
        runs[fold] = run
    oof = cv.out_of_fold(runs)
    assert oof["image"].tolist() == ["a.jpg", "b.jpg"] and oof["fold"].tolist() == [0, 1]
    metrics = fold_metrics(oof, np.full(len(CLASSES), 0.5)).set_index("part")
    assert list(metrics.index) == ["fold 0", "fold 1", "pooled"] and metrics.loc["pooled", "images"] == 2
    # complex: a.jpg found (TP), b.jpg not (TN); scab never predicted (FN on b.jpg): micro-F1 = 2*1/(2*1+1) = 2/3
    assert metrics.loc["pooled", "micro_f1_tuned"] == pytest.approx(2 / 3, abs=1e-4)


# ----------------------------------------------------------------------------- the runner, end to end


@pytest.mark.slow
def test_cv_trains_every_fold_pools_out_of_fold_predictions_and_the_ensemble_scores(tree, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    # scripts/cv.py in this process (its folds' main.py and test.py are its child processes, as always)
    command = [str(cfg), "--data-path", str(tree), "--output", str(tmp_path / "out")]
    assert cv.main([*command, "--folds", "1"]) == 0
    folder = tmp_path / "out" / "tiny" / "default-cv"
    assert not (folder / "oof.csv").exists() and "folds [0] not finished yet" in (folder / "log.txt").read_text()
    assert cv.main(command) == 0
    assert (folder / "log.txt").read_text().count("finished earlier, skipped") == 1  # fold 1 not trained again
    oof = pd.read_csv(folder / "oof.csv")
    folds = pd.read_csv(tree / "folds.csv").set_index("image")
    assert sorted(oof["image"]) == sorted(folds.index)  # each pooled leaf once
    assert (oof.set_index("image")["fold"] == folds["fold"]).all()  # by the model that never saw it
    member0 = pd.read_csv(tmp_path / "out" / "tiny" / "default-fold0" / "test_val" / "predictions.csv")
    np.testing.assert_allclose(oof.set_index("image").loc[member0["image"], list(CLASSES)], member0[list(CLASSES)])
    summary = json.loads((folder / "cv_metrics.json").read_text())
    assert [row["part"] for row in summary["metrics"]] == ["fold 0", "fold 1", "pooled"]
    probs, targets = oof[list(CLASSES)].to_numpy(), targets_of(oof)
    samples = read_thresholds(folder / "thresholds_samples.json")
    assert samples_f1(targets, decide(probs, samples, "at_least_one")) >= samples_f1(
        targets, decide(probs, np.array(list(summary["thresholds"].values())), "at_least_one"))

    assert load_script("scripts/label_issues.py").main([str(folder / "oof.csv"), "--data-path", str(tree),
                                                        "--top", "5"]) == 0
    ranked = pd.read_csv(folder / "label_issues" / "label_issues.csv")
    assert sorted(ranked["image"]) == sorted(oof["image"]) and ranked["quality"].is_monotonic_increasing

    assert cv.main(command) == 0 and (folder / "log.txt").read_text().count("finished earlier, skipped") == 1 + 2

    test_script = load_script("test.py")
    assert test_script.main(["--checkpoint", str(folder / "ensemble.json"), "--data-path", str(tree), "--split",
                             "test"]) == 0
    ensemble = pd.read_csv(folder / "test_test" / "predictions.csv")
    members = []
    for k in range(2):
        out = tmp_path / f"member{k}"
        assert test_script.main(["--checkpoint", str(tmp_path / "out" / "tiny" / f"default-fold{k}" / "ckpt_best.pth"),
                                 "--data-path", str(tree), "--split", "test", "--tta", "--output", str(out)]) == 0
        members.append(pd.read_csv(out / "predictions.csv")[list(CLASSES)].to_numpy())
    np.testing.assert_allclose(ensemble[list(CLASSES)].to_numpy(), np.mean(members, axis=0), atol=2e-6)
    thresholds = json.loads((folder / "ensemble.json").read_text())["thresholds"]
    expected = [" ".join(c for c in CLASSES if row[c] >= thresholds[c]) for _, row in ensemble.iterrows()]
    assert ensemble["predicted"].fillna("").tolist() == expected  # at the ensemble's out-of-fold thresholds

    # A second config on the same tree: its folds, then the ensemble of both configs' members.
    other = tmp_path / "other.yaml"
    other.write_text(TINY_YAML.replace("NAME: tiny", "NAME: other") + "SEED: 7\n")
    assert cv.main([str(cfg), str(other), "--data-path", str(tree), "--output", str(tmp_path / "out")]) == 0
    combined = tmp_path / "out" / "tiny+other" / "default-cv"
    mixed = pd.read_csv(combined / "oof.csv")
    second = pd.read_csv(tmp_path / "out" / "other" / "default-cv" / "oof.csv")
    np.testing.assert_allclose(mixed[list(CLASSES)], (oof[list(CLASSES)] + second[list(CLASSES)]) / 2, atol=1e-9)
    spec = Ensemble.read(combined / "ensemble.json")
    assert len(spec.members) == 4 and {m.parent.parent.name for m in spec.members} == {"tiny", "other"}
    assert (combined / "thresholds_samples.json").is_file()
