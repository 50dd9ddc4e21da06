"""test.py on a tiny trained checkpoint: labelled and unlabelled modes, thresholds, submission rules, bad input."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from data.images import load_image
from data.labels import CLASSES, labels_to_vector
from data.transforms import build_transform
from evaluation import inference, reports
from evaluation.metrics import multilabel_metrics
from evaluation.reports import BAR_METRICS, class_bars_figure
from evaluation.thresholds import read_thresholds, tune_thresholds, write_thresholds
from helpers import ROOT, draw_leaf, load_script, make_tree, save_run, tiny_swin_config, train_a_little, val_thresholds
from models import build_model

test_script = load_script("test.py")

REPORT_FILES = ("metrics.csv", "metrics.json", "predictions.csv", "submission.csv", "metrics_heatmap.png",
                "metrics_bars.png", "pr_curves.png", "roc_curves.png", "confusion_matrices.png")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def eval_logits(model: torch.nn.Module, images: list[Image.Image], config) -> torch.Tensor:
    """The model's evaluation logits, one image at a time (no loader, no batching)."""
    transform = build_transform(False, config)
    with torch.no_grad():
        return torch.cat([model.eval()(transform(image)[None]) for image in images])


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"), {"train": 40, "val": 16, "test": 16})


@pytest.fixture(scope="session")
def run(tmp_path_factory, tree) -> Path:
    """A tiny linear-head Swin trained a few steps, saved like main.py's best checkpoint."""
    config = tiny_swin_config(tmp_path_factory.mktemp("output"), "tiny", tree)
    torch.manual_seed(0)  # the same weights every run
    model = train_a_little(build_model(config), tree / "train", config, steps=15)
    return save_run(config, model, val_thresholds(model, tree / "val", config))


@pytest.fixture(scope="session")
def evaluated(run) -> Path:
    """The bare command after training: ``python test.py --cfg <run config>``."""
    assert test_script.main(["--cfg", str(run / "config.yaml"), "--device", "cpu"]) == 0
    return run / "test_test"


@pytest.fixture
def photos(tmp_path) -> Path:
    """New photos of every kind, plus a corrupt file and a text file."""
    rng = random.Random(1)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    draw_leaf("scab", rng).save(folder / "plain.png")
    draw_leaf("rust", rng).convert("RGBA").save(folder / "rgba.png")
    draw_leaf("healthy", rng).convert("L").save(folder / "sub" / "gray.jpg")
    draw_leaf("complex", rng).convert("CMYK").save(folder / "cmyk.jpg")
    upright = draw_leaf("frog_eye_leaf_spot", rng, size=(96, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    upright.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", exif=exif, quality=98)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


# ---------------------------------------------------------------------------------------------
# Labelled mode
# ---------------------------------------------------------------------------------------------


def test_labelled_mode_writes_every_file(evaluated):
    """Each file is what its name says: tables of the 16 test images, the metrics JSON, PNG figures."""
    for name in REPORT_FILES:
        path = evaluated / name
        if name.endswith(".png"):
            with Image.open(path) as figure:
                assert figure.format == "PNG" and min(figure.size) >= 100, name
        elif name.endswith(".json"):
            assert json.loads(path.read_text())["num_images"] == 16
        else:
            table = pd.read_csv(path)
            assert len(table) == (len(CLASSES) + 4 if name == "metrics.csv" else 16), name


def test_metrics_csv_equals_metrics_recomputed_from_predictions_csv(evaluated, run):
    predictions = pd.read_csv(evaluated / "predictions.csv", keep_default_na=False)
    thresholds = read_thresholds(run / "thresholds.json")
    truth = np.stack([labels_to_vector(labels) for labels in predictions["true"]])
    probs = predictions[list(CLASSES)].to_numpy()
    expected = multilabel_metrics(truth, probs, thresholds)
    written = pd.read_csv(evaluated / "metrics.csv", index_col="row")
    assert list(written.index) == [*CLASSES, "macro", "micro", "samples", "exact_match"]
    assert list(written.columns) == ["threshold", "precision", "recall", "f1", "ap", "auc", "accuracy", "support"]
    pd.testing.assert_frame_equal(written, expected, check_dtype=False, check_names=False)
    assert predictions["predicted"].tolist() == [" ".join(c for c, on in zip(CLASSES, row) if on)
                                                 for row in probs >= thresholds]
    report = json.loads((evaluated / "metrics.json").read_text())
    assert report["num_images"] == len(predictions) == 16
    assert report["metrics"]["macro"]["f1"] == pytest.approx(expected.loc["macro", "f1"])


def test_the_bar_chart_draws_metrics_csv(evaluated):
    """One group of bars per class, one bar per metric of BAR_METRICS at its metrics.csv value; the averages'
    F1 as lines."""
    table = pd.read_csv(evaluated / "metrics.csv", index_col="row")
    axes = class_bars_figure(table).axes[0]
    assert len(axes.containers) == len(BAR_METRICS)
    for bars, metric in zip(axes.containers, BAR_METRICS):
        heights = [bar.get_height() for bar in bars]
        np.testing.assert_allclose(heights, np.nan_to_num(table.loc[list(CLASSES), metric].to_numpy(dtype=float)))
    lines = sorted(line.get_ydata()[0] for line in axes.get_lines())
    assert lines == pytest.approx(sorted(table.loc[["macro", "micro", "samples"], "f1"]))
    with Image.open(evaluated / "metrics_bars.png") as image:
        assert image.width > image.height > 300


def test_predictions_csv_holds_the_split_truth_and_the_models_probabilities(evaluated, run, tree):
    predictions = pd.read_csv(evaluated / "predictions.csv", keep_default_na=False)
    split = pd.read_csv(tree / "test.csv").set_index("images")
    assert sorted(predictions["image"]) == sorted(split.index)
    truth = split.loc[predictions["image"], list(CLASSES)].to_numpy()
    assert predictions["true"].tolist() == [" ".join(c for c, on in zip(CLASSES, row) if on) for row in truth]
    loaded = inference.Predictor.from_checkpoint(run / "ckpt_best.pth", torch.device("cpu"))
    images = [load_image(next((tree / "test").glob(f"*/{name}"))) for name in predictions["image"]]
    expected = torch.sigmoid(eval_logits(loaded.model, images, loaded.config)).numpy()
    np.testing.assert_allclose(predictions[list(CLASSES)].to_numpy(), expected, atol=1e-5)


def test_submission_csv_is_the_submission_rule_on_the_predicted_probabilities(evaluated, run):
    predictions = pd.read_csv(evaluated / "predictions.csv", keep_default_na=False)
    submission = pd.read_csv(evaluated / "submission.csv", keep_default_na=False)
    assert submission["image"].tolist() == predictions["image"].tolist()
    thresholds = read_thresholds(run / "thresholds.json")
    expected = reports.submission_labels(predictions[list(CLASSES)].to_numpy(), thresholds)
    assert submission["labels"].tolist() == expected


def test_submission_is_kaggle_format_never_empty_and_healthy_alone(evaluated):
    submission = pd.read_csv(evaluated / "submission.csv", keep_default_na=False)
    assert list(submission.columns) == ["image", "labels"]
    for labels in submission["labels"]:
        names = labels.split()
        assert names and set(names) <= set(CLASSES)
        assert "healthy" not in names or names == ["healthy"]


@pytest.mark.slow
def test_thresholds_follow_the_runs_thresholds_json(run, tmp_path, capsys):
    other = tmp_path / "copy"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("test_*"))
    edited = [0.3, 0.35, 0.4, 0.45, 0.5, 0.55]
    write_thresholds(edited, other / "thresholds.json")
    args = ["--checkpoint", str(other / "ckpt_best.pth"), "--device", "cpu", "--split", "val"]
    assert test_script.main(args) == 0
    table = pd.read_csv(other / "test_val" / "metrics.csv", index_col="row")
    np.testing.assert_allclose(table.loc[list(CLASSES), "threshold"], edited)

    (other / "thresholds.json").unlink()  # next: the checkpoint's own (validation) thresholds
    assert test_script.main([*args, "--output", str(tmp_path / "from_ckpt")]) == 0
    table = pd.read_csv(tmp_path / "from_ckpt" / "metrics.csv", index_col="row")
    ckpt = torch.load(other / "ckpt_best.pth", weights_only=True)
    np.testing.assert_allclose(table.loc[list(CLASSES), "threshold"], ckpt["thresholds"])

    torch.save({**ckpt, "thresholds": None}, other / "ckpt_best.pth")  # last: 0.5, with a warning
    capsys.readouterr()
    assert test_script.main([*args, "--output", str(tmp_path / "none")]) == 0
    assert "using 0.5 for every class" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "none" / "metrics.csv", index_col="row")
    assert (table.loc[list(CLASSES), "threshold"] == 0.5).all()


def test_tune_thresholds_writes_f1_optimal_thresholds_of_the_split(run, tmp_path, capsys):
    out = tmp_path / "val"
    assert test_script.main(["--checkpoint", str(run / "ckpt_best.pth"), "--split", "val", "--tune-thresholds",
                            "--output", str(out), "--device", "cpu"]) == 0
    assert str(out / "thresholds_val.json") in capsys.readouterr().out
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    truth = np.stack([labels_to_vector(labels) for labels in predictions["true"]])
    expected = tune_thresholds(truth, predictions[list(CLASSES)].to_numpy())
    np.testing.assert_allclose(read_thresholds(out / "thresholds_val.json"), expected)
    assert not (run / "thresholds_val.json").exists()


# ---------------------------------------------------------------------------------------------
# Unlabelled mode
# ---------------------------------------------------------------------------------------------


def test_unlabelled_mode_predicts_good_images_and_reports_the_bad_one(run, photos, tmp_path, capsys):
    out = tmp_path / "pred"
    args = ["--checkpoint", str(run / "ckpt_best.pth"), "--images", str(photos), "--output", str(out),
            "--device", "cpu", "--num-workers", "2", "--batch-size", "2"]
    assert test_script.main(args) == 0
    printed = capsys.readouterr().out
    assert "broken.jpg: skipped (not an image of an accepted format: JPEG, PNG, WebP, BMP or TIFF)" in printed
    predictions = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert sorted(predictions["image"]) == ["cmyk.jpg", "gray.jpg", "plain.png", "rgba.png", "rotated.jpg"]
    probs = predictions[list(CLASSES)].to_numpy()
    assert np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert submission["image"].tolist() == predictions["image"].tolist()
    assert all(labels and ("healthy" not in labels or labels == "healthy") for labels in submission["labels"])
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".txt") == ["predictions.csv", "submission.csv"]


def test_images_accepts_files_and_globs_and_equals_one_image_at_a_time(run, photos, tmp_path):
    out = tmp_path / "pred"
    args = ["--checkpoint", str(run / "ckpt_best.pth"), "--images", str(photos / "plain.png"),
            str(photos / "*.jpg"), "--output", str(out), "--device", "cpu"]
    assert test_script.main(args) == 0
    predictions = pd.read_csv(out / "predictions.csv")
    assert predictions["image"].tolist() == ["plain.png", "cmyk.jpg", "rotated.jpg"]
    loaded = inference.Predictor.from_checkpoint(run / "ckpt_best.pth", torch.device("cpu"))
    images = [load_image(p) for p in predictions["path"]]
    expected = torch.sigmoid(eval_logits(loaded.model, images, loaded.config)).numpy()
    np.testing.assert_allclose(predictions[list(CLASSES)].to_numpy(), expected, atol=1e-5)



def test_images_of_a_prepared_tree_are_predicted_once_each(run, tree, tmp_path):
    """A multi-label image hard-linked into several class folders gets one prediction row."""
    out = tmp_path / "pred"
    assert test_script.main(["--checkpoint", str(run / "ckpt_best.pth"), "--images", str(tree / "test"),
                            "--output", str(out), "--device", "cpu"]) == 0
    expected = pd.read_csv(tree / "test.csv")["images"]
    assert sum(1 for _ in (tree / "test").glob("*/*.jpg")) > len(expected)  # the tree has links
    submission = pd.read_csv(out / "submission.csv")
    assert sorted(submission["image"]) == sorted(expected)

def test_load_image_makes_any_photo_upright_rgb(photos):
    rotated = load_image(photos / "rotated.jpg")
    assert rotated.mode == "RGB" and rotated.size == (96, 64)  # stored as 64 x 96, EXIF orientation 6
    for name in ("rgba.png", "cmyk.jpg", "sub/gray.jpg"):
        assert load_image(photos / name).mode == "RGB"
    large = Image.new("RGB", (1200, 800), (30, 120, 30))
    large.save(photos / "large.jpg")
    assert min(load_image(photos / "large.jpg", min_size=64).size) >= 64


def test_tta_averages_logits_over_the_image_and_its_flips(run, photos, tmp_path):
    out = tmp_path / "tta"
    args = ["--checkpoint", str(run / "ckpt_best.pth"), "--images", str(photos / "plain.png"),
            str(photos / "rgba.png"), "--output", str(out), "--device", "cpu", "--tta"]
    assert test_script.main(args) == 0
    loaded = inference.Predictor.from_checkpoint(run / "ckpt_best.pth", torch.device("cpu"))
    images = [load_image(photos / name) for name in ("plain.png", "rgba.png")]
    flips = [images, [i.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for i in images],
             [i.transpose(Image.Transpose.FLIP_TOP_BOTTOM) for i in images]]
    expected = torch.sigmoid(torch.stack([eval_logits(loaded.model, x, loaded.config) for x in flips]).mean(0))
    predictions = pd.read_csv(out / "predictions.csv")
    np.testing.assert_allclose(predictions[list(CLASSES)].to_numpy(), expected.numpy(), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Rules and bad input
# ---------------------------------------------------------------------------------------------


def test_submission_rules():
    thresholds = np.array([0.5, 0.5, 0.6, 0.5, 0.5, 0.4])
    probs = np.array([
        [0.1, 0.2, 0.3, 0.1, 0.45, 0.1],  # nothing passes -> the most likely class alone
        [0.1, 0.9, 0.7, 0.1, 0.1, 0.6],  # healthy +0.1 < frog_eye +0.4 -> the diseases, without healthy
        [0.1, 0.55, 0.95, 0.1, 0.1, 0.1],  # healthy +0.35 > frog_eye +0.05 -> healthy alone
        [0.9, 0.1, 0.1, 0.1, 0.8, 0.41],  # plain multi-label
    ])
    assert reports.submission_labels(probs, thresholds) == [
        "rust", "frog_eye_leaf_spot scab", "healthy", "complex rust scab"]


def test_read_thresholds_rejects_incomplete_files(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"scab": 0.3}))
    with pytest.raises(ValueError, match="t.json: thresholds must map exactly"):
        read_thresholds(path)


@pytest.fixture
def bad_checkpoints(run, tmp_path) -> dict[str, Path]:
    ckpt = torch.load(run / "ckpt_best.pth", weights_only=True)
    files = {name: tmp_path / f"{name}.pth" for name in ("garbage", "tensor", "no_model", "classes")}
    files["garbage"].write_bytes(b"\x00\x01 definitely not a checkpoint" * 10)
    torch.save(torch.zeros(3), files["tensor"])
    torch.save({"state_dict": ckpt["model"]}, files["no_model"])
    torch.save({**ckpt, "classes": ["cat", "dog"]}, files["classes"])
    return files


@pytest.mark.parametrize("name, message", [
    ("garbage", "not a readable PyTorch checkpoint"), ("tensor", "not a checkpoint"),
    ("no_model", "not a checkpoint of main.py"), ("classes", "classes \\['cat', 'dog'\\] are not"),
])
def test_bad_checkpoint_is_a_clear_error_naming_the_file(bad_checkpoints, name, message):
    with pytest.raises(ValueError, match=f"{name}.pth: .*{message}"):
        inference.Predictor.from_checkpoint(bad_checkpoints[name], torch.device("cpu"))


@pytest.mark.slow
def test_cli_bad_checkpoint_is_one_line(bad_checkpoints):
    result = subprocess.run([sys.executable, "test.py", "--checkpoint", str(bad_checkpoints["classes"])],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and "classes.pth" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
