"""export.py and the ONNX backend: parity with PyTorch (Swin, ArcFace + PSA, a CNN), metadata, test.py on both."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from PIL import Image

import deploy.onnx_export
from data.labels import CLASSES
from deploy.backends import load_predictor
from deploy.onnx_backend import OnnxPredictor, info_from_metadata, info_to_metadata
from evaluation.ensemble_file import Ensemble
from evaluation.inference import Predictor
from evaluation.thresholds import read_thresholds
from helpers import CNN, ROOT, copy_runs, load_script, tiny_runs
from process.leaves import render_leaf

pytestmark = pytest.mark.slow  # ONNX export of every model (the Swin's takes the longest), test.py in processes

export_script = load_script("export.py")
test_script = load_script("test.py")

MODELS = {"cnn": ((*CNN, "DATA.IMG_SIZE", "64", "TEST.CROP", "True"), 5)}  # (opts, training steps), beside the Swins
THRESHOLDS = [0.3, 0.35, 0.4, 0.45, 0.5, 0.55]
CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def deploy_tree(tiny_tree) -> Path:
    return tiny_tree


@pytest.fixture(scope="session")
def runs(tmp_path_factory, tiny_tree, tiny_swin_runs) -> dict[str, Path]:
    """One saved run per model kind (copies of the shared Swins, and a CNN); thresholds.json differs from the
    checkpoint's thresholds (it wins)."""
    output = tmp_path_factory.mktemp("deploy_output")
    found = {**copy_runs(tiny_swin_runs, output), **tiny_runs(output, tiny_tree, MODELS, [0.5] * len(CLASSES))}
    for run in found.values():
        (run / "thresholds.json").write_text(json.dumps(dict(zip(CLASSES, THRESHOLDS))))
    return found


@pytest.fixture(scope="session")
def exported(runs) -> dict[str, Path]:
    """``python export.py --checkpoint RUN/ckpt_best.pth`` for every run: RUN/ckpt_best.onnx."""
    for run in runs.values():
        assert export_script.main(["--checkpoint", str(run / "ckpt_best.pth")]) == 0
    return {name: run / "ckpt_best.onnx" for name, run in runs.items()}


@pytest.fixture(scope="session")
def leaves(tmp_path_factory) -> Path:
    """Synthetic leaf photos of odd sizes and kinds (JPEG, PNG, CMYK): pixels the models never saw."""
    folder = tmp_path_factory.mktemp("leaves")
    for index, (labels, size) in enumerate([("scab", (300, 200)), ("rust complex", (180, 240)),
                                            ("healthy", (97, 131)), ("powdery_mildew", (256, 256))]):
        image = Image.fromarray(render_leaf(labels, np.random.default_rng(index), size))
        image.save(folder / f"leaf{index}.jpg", quality=92)
    image.save(folder / "leaf_png.png")
    image.convert("CMYK").save(folder / "leaf_cmyk.jpg")
    return folder


def printed_parity(run: Path) -> float:
    """The max |prob difference| export.py printed (its log.txt holds the same lines)."""
    found = re.findall(r"max \|prob difference\| .*: ([0-9.e+-]+) \(tolerance", (run / "log.txt").read_text())
    assert found, "export.py printed no parity"
    return float(found[-1])


@pytest.mark.parametrize("name", MODELS)
def test_export_writes_a_checked_model_and_prints_parity(exported, runs, name):
    model = onnx.load(exported[name])
    onnx.checker.check_model(model, full_check=True)
    assert printed_parity(runs[name]) <= 1e-4
    (images,), (logits,) = model.graph.input, model.graph.output
    dims = images.type.tensor_type.shape.dim
    size = 64
    assert images.name == "images" and logits.name == "logits"
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, size, size]  # dynamic batch, fixed H x W
    assert model.opset_import[0].version >= 18


@pytest.mark.parametrize("name", MODELS)
def test_onnx_file_predicts_what_the_checkpoint_predicts(exported, runs, leaves, tmp_path, name):
    """test.py --images on both files: same probabilities (1e-4), same labels, same submission."""
    frames = {}
    for kind, path in (("torch", runs[name] / "ckpt_best.pth"), ("onnx", exported[name])):
        out = tmp_path / kind
        assert test_script.main(["--checkpoint", str(path), "--backend", kind, "--images", str(leaves),
                                 "--output", str(out), "--device", "cpu", "--num-workers", "0",
                                 "--batch-size", "3"]) == 0
        frames[kind] = (pd.read_csv(out / "predictions.csv", keep_default_na=False),
                        pd.read_csv(out / "submission.csv", keep_default_na=False))
    (torch_pred, torch_sub), (onnx_pred, onnx_sub) = frames["torch"], frames["onnx"]
    assert len(torch_pred) == 6
    np.testing.assert_allclose(onnx_pred[list(CLASSES)], torch_pred[list(CLASSES)], atol=1e-4, rtol=0)
    assert onnx_pred["predicted"].tolist() == torch_pred["predicted"].tolist()
    pd.testing.assert_frame_equal(onnx_sub, torch_sub)


def test_metadata_carries_what_predicting_needs(exported, runs):
    """Classes, the run's thresholds, size, crop, interpolation, mean and std: the checkpoint's, read back."""
    for name, path in exported.items():
        expected = Predictor.from_checkpoint(runs[name] / "ckpt_best.pth", CPU).info
        # the run's absolute data path is left out of the file: it reads back as test.py's default
        expected = dataclasses.replace(expected, thresholds=tuple(read_thresholds(runs[name] / "thresholds.json")),
                                       data_path="dataset")
        assert OnnxPredictor.from_file(path).info == expected
    cnn = OnnxPredictor.from_file(exported["cnn"]).info.preprocessing
    assert cnn.crop and cnn.decode_size == 74  # TEST.CROP travels: resize to 64 / 0.875, then crop
    props = {p.key: p.value for p in onnx.load(exported["swin"]).metadata_props}
    assert json.loads(props["classes"]) == list(CLASSES) and json.loads(props["thresholds"]) == THRESHOLDS
    assert json.loads(props["mean"]) == [0.485, 0.456, 0.406] and json.loads(props["interpolation"]) == "bicubic"
    no_thresholds = dataclasses.replace(expected, thresholds=None)
    assert info_from_metadata(info_to_metadata(no_thresholds), Path("x.onnx")) == no_thresholds


def test_onnx_backend_gives_the_metrics_of_the_torch_backend(runs, deploy_tree, tmp_path):
    """Labelled mode, checkpoint exported in memory: metrics.json F1s equal to 4 decimals."""
    reports = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / backend
        assert test_script.main(["--checkpoint", str(runs["arcpsa"] / "ckpt_best.pth"), "--backend", backend,
                                 "--data-path", str(deploy_tree), "--output", str(out), "--device", "cpu",
                                 "--num-workers", "0"]) == 0
        reports[backend] = json.loads((out / "metrics.json").read_text())
        assert not any(p.suffix == ".onnx" for p in out.parent.rglob("*"))  # in memory: nothing written
    assert reports["onnx"]["backend"] == "onnx" and reports["torch"]["backend"] == "torch"
    for row in (*CLASSES, "macro", "micro", "samples"):
        assert round(reports["onnx"]["metrics"][row]["f1"], 4) == round(reports["torch"]["metrics"][row]["f1"], 4)


def test_auto_backend_takes_an_up_to_date_export_beside_the_checkpoint(runs, exported, tmp_path):
    """On the CPU: export.py's file when it is newer than the checkpoint and the same model, else PyTorch."""
    logger = logging.getLogger("test_deploy")
    run = tmp_path / "run"
    shutil.copytree(runs["swin"], run)
    checkpoint = run / "ckpt_best.pth"
    auto = load_predictor(checkpoint, "auto", CPU, logger)
    # a Swin's FP32 file runs on OpenVINO, measured faster for transformers (a CNN's on ONNX Runtime: below)
    assert auto.backend == "openvino" and auto.path == run / "ckpt_best.onnx"
    assert load_predictor(checkpoint, "torch", CPU, logger).backend == "torch"
    assert load_predictor(run / "ckpt_best.onnx", "auto", CPU, logger).backend == "openvino"
    assert load_predictor(exported["cnn"], "auto", CPU, logger).backend == "onnx"
    os.utime(checkpoint, (time.time() + 10, time.time() + 10))  # retrained after the export: stale
    assert load_predictor(checkpoint, "auto", CPU, logger).backend == "torch"
    os.utime(run / "ckpt_best.onnx", (time.time() + 20, time.time() + 20))  # exported again: up to date
    assert load_predictor(checkpoint, "auto", CPU, logger).backend == "openvino"
    shutil.copy(exported["cnn"], run / "ckpt_best.onnx")  # up to date, but another model
    os.utime(run / "ckpt_best.onnx", (time.time() + 20, time.time() + 20))
    assert load_predictor(checkpoint, "auto", CPU, logger).backend == "torch"
    with pytest.raises(ValueError, match="runs on --backend onnx"):
        load_predictor(run / "ckpt_best.onnx", "torch", CPU, logger)


# ----------------------------------------------------------------------------- ensembles in one graph

ENSEMBLE_THRESHOLDS = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


def write_ensemble(folder: Path, members: list[Path], weights: tuple[float, ...]) -> Path:
    path = folder / "ensemble.json"
    Ensemble(path, tuple(members), weights, True, np.array(ENSEMBLE_THRESHOLDS), "hand-made").write()
    return path


def test_ensemble_exports_to_one_graph_that_predicts_what_test_py_predicts(runs, deploy_tree, tmp_path):
    """Two members of one preprocessing, weights 1 and 2, TTA inside: the .onnx scores the test split with
    the probabilities of test.py on ensemble.json (1e-4) at the file's thresholds, and carries them."""
    path = write_ensemble(tmp_path, [runs["swin"] / "ckpt_best.pth", runs["arcpsa"] / "ckpt_best.pth"], (1.0, 2.0))
    assert export_script.main(["--checkpoint", str(path)]) == 0
    assert printed_parity(tmp_path) <= 1e-4
    info = OnnxPredictor.from_file(tmp_path / "ensemble.onnx").info
    assert info.name == "ensemble of 2, TTA inside" and info.thresholds == tuple(ENSEMBLE_THRESHOLDS)
    assert info.model_type == "2 x swin_tiny_patch4_window7_224" and info.head == "linear/arcface"
    probs = {}
    for kind, model in (("json", path), ("onnx", tmp_path / "ensemble.onnx")):
        out = tmp_path / f"scored_{kind}"
        assert test_script.main(["--checkpoint", str(model), "--data-path", str(deploy_tree), "--output", str(out),
                                 "--device", "cpu", "--num-workers", "0"]) == 0
        probs[kind] = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    np.testing.assert_allclose(probs["onnx"][list(CLASSES)], probs["json"][list(CLASSES)], atol=1e-4, rtol=0)
    assert probs["onnx"]["predicted"].tolist() == probs["json"]["predicted"].tolist()


def test_ensemble_of_different_preprocessing_is_fed_as_its_largest_member(runs, tmp_path):
    """A Swin (squashed, ImageNet mean) and a CNN (centre crop, its own mean) of one size: the graph is fed as the
    first largest member (the Swin) and renormalises for the CNN; export.py says how far that moves the
    probabilities from each member's own preprocessing (the crop is not redone in the graph)."""
    path = write_ensemble(tmp_path, [runs["swin"] / "ckpt_best.pth", runs["cnn"] / "ckpt_best.pth"], (1.0, 1.0))
    assert export_script.main(["--checkpoint", str(path), "--output", str(tmp_path / "mixed.onnx")]) == 0
    pre = OnnxPredictor.from_file(tmp_path / "mixed.onnx").info.preprocessing
    assert pre == Predictor.from_checkpoint(runs["swin"] / "ckpt_best.pth", CPU).info.preprocessing
    log = (tmp_path / "log.txt").read_text()
    assert printed_parity(tmp_path) <= 1e-4
    moved = re.search(r"moves probabilities by at most ([0-9.e+-]+) from test.py's per-member", log)
    assert moved and 0 < float(moved.group(1)) < 1


def test_export_writes_nothing_when_parity_fails(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(deploy.onnx_export, "PARITY_TOLERANCE", -1.0)  # any difference, even 0, now fails
    output = tmp_path / "model.onnx"
    assert export_script.main(["--checkpoint", str(runs["cnn"] / "ckpt_best.pth"), "--output", str(output)]) == 1
    assert not output.exists()
    assert "nothing written" in (tmp_path / "log.txt").read_text()


@pytest.fixture
def bad_models(tmp_path) -> dict[str, Path]:
    files = {"garbage.onnx": tmp_path / "garbage.onnx", "foreign.onnx": tmp_path / "foreign.onnx"}
    files["garbage.onnx"].write_bytes(b"\x08\x07 not a protobuf model")
    node = onnx.helper.make_node("Identity", ["images"], ["logits"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [value("images", onnx.TensorProto.FLOAT, [1, 6])],
                                   [value("logits", onnx.TensorProto.FLOAT, [1, 6])])
    onnx.save(onnx.helper.make_model(graph), files["foreign.onnx"])
    return files


@pytest.mark.parametrize("name, message", [("garbage.onnx", "not a readable ONNX model"),
                                           ("foreign.onnx", "not a model written by export.py")])
def test_bad_onnx_files_are_one_line_errors(bad_models, name, message):
    result = subprocess.run([sys.executable, str(ROOT / "test.py"), "--checkpoint", str(bad_models[name]),
                             "--images", str(ROOT / "docs")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert str(bad_models[name]) in result.stderr and message in result.stderr


def test_onnx_file_predicts_real_leaves_like_the_checkpoint(real_data, exported, runs, tmp_path):
    """Real Plant Pathology photos (PP_REAL_DATA): both backends give the same probabilities and labels."""
    photos = sorted((real_data / "plant_dataset" / "test" / "images").glob("*.jpg"))[:12]
    folder = tmp_path / "real"
    folder.mkdir()
    for photo in photos:
        (folder / photo.name).symlink_to(photo)
    frames = []
    for kind, path in (("torch", runs["arcpsa"] / "ckpt_best.pth"), ("onnx", exported["arcpsa"])):
        assert test_script.main(["--checkpoint", str(path), "--backend", kind, "--images", str(folder),
                                 "--output", str(tmp_path / kind), "--device", "cpu", "--num-workers", "0"]) == 0
        frames.append(pd.read_csv(tmp_path / kind / "predictions.csv", keep_default_na=False))
    assert len(frames[0]) == len(photos) == 12
    np.testing.assert_allclose(frames[1][list(CLASSES)], frames[0][list(CLASSES)], atol=1e-4, rtol=0)
    assert frames[1]["predicted"].tolist() == frames[0]["predicted"].tolist()


def test_deployment_does_not_import_the_synthetic_leaf_renderer():
    """Exporting and serving a model needs no part of the data synthesis (process/)."""
    code = ("import sys; import deploy.onnx_export, deploy.backends, deploy.onnx_backend; "
            "print(sorted(m for m in sys.modules if m == 'process' or m.startswith('process.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip().splitlines()[-1] == "[]"
