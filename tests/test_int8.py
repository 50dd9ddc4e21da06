"""export.py --int8 (static INT8, admitted by its decisions on validation) and the OpenVINO backend against ORT."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

import deploy.quantize
from data.labels import CLASSES
from deploy.backends import load_predictor
from deploy.onnx_backend import OnnxPredictor, info_to_metadata
from deploy.openvino_backend import OpenVinoPredictor
from deploy.quantize import WEIGHT_OPS, DecisionError, check_decisions, float_tail, require_decisions
from evaluation.ensemble_file import Ensemble
from evaluation.evaluate import split_logits
from evaluation.inference import Predictor, sigmoid
from evaluation.thresholds import read_thresholds, resolve_thresholds, tune_thresholds, write_thresholds
from helpers import CNN, ROOT, load_script, make_tree, tiny_runs
from training.rundir import RunDir

pytestmark = pytest.mark.slow  # ONNX export, quantisation and test.py on tiny models

export_script = load_script("export.py")
test_script = load_script("test.py")
app_script = load_script("app.py")

# A tiny CNN (convolutions are what INT8 quantises per channel), trained enough to be confident.
# 120 steps: a model whose INT8 file passes export's decision check (tolerance 0.005 on 16 validation leaves)
MODELS = {"cnn": ((*CNN, "DATA.IMG_SIZE", "64", "TEST.CROP", "True"), 120)}
CPU = torch.device("cpu")
CALIBRATION = 8  # leaves
OWN_KEYS = ("thresholds", "thresholds_from", "quantization")  # the metadata an INT8 file may hold apart from FP32's


@pytest.fixture(scope="session")
def int8_tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("int8_tree"), {"train": 24, "val": 16, "test": 16})


@pytest.fixture(scope="session")
def run(tmp_path_factory, int8_tree) -> Path:
    """A saved run whose config points at the tree (export.py's default --data-path), with thresholds.json
    tuned on validation as main.py leaves it (so FP32 and re-tuned INT8 thresholds are compared alike)."""
    found = tiny_runs(tmp_path_factory.mktemp("int8_output"), int8_tree, MODELS, None)["cnn"]
    predictor = Predictor.from_checkpoint(found / "ckpt_best.pth", CPU)
    _, targets, logits = split_logits(predictor, int8_tree / "val", 8, 0)
    write_thresholds(tune_thresholds(targets, sigmoid(logits)), found / "thresholds.json")
    return found


@pytest.fixture(scope="session")
def files(run) -> dict[str, Path]:
    """``export.py`` and ``export.py --int8 --calib-images 8`` on the run: its FP32 and INT8 files."""
    checkpoint = str(run / "ckpt_best.pth")
    assert export_script.main(["--checkpoint", checkpoint]) == 0
    assert export_script.main(["--checkpoint", checkpoint, "--int8", "--calib-images", str(CALIBRATION)]) == 0
    return {"fp32": run / "ckpt_best.onnx", "int8": run / "ckpt_best.int8.onnx"}


def props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def test_int8_export_writes_a_quantised_model_with_the_fp32_metadata(files, run, int8_tree):
    model = onnx.load(files["int8"])
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert weights, "no INT8 convolution weights"
    scales = {n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in
              {w.name for w in weights}}
    assert any(len(t.dims) == 1 and t.dims[0] > 1 for t in model.graph.initializer if t.name in scales)  # per channel
    assert files["int8"].stat().st_size < files["fp32"].stat().st_size
    fp32, int8 = props(files["fp32"]), props(files["int8"])
    assert {k: v for k, v in int8.items() if k not in OWN_KEYS} == {k: v for k, v in fp32.items() if k not in OWN_KEYS}
    fp32_info, int8_info = (OnnxPredictor.from_file(files[kind]).info for kind in ("fp32", "int8"))
    assert dataclasses.replace(int8_info, thresholds=None, thresholds_from="") == \
        dataclasses.replace(fp32_info, thresholds=None)
    record = json.loads(int8["quantization"])
    assert "QDQ, per-channel" in record["method"] and record["calibration"] == f"8 leaves of {int8_tree.name}/train"
    assert record["validation_leaves"] == 16 and record["int8_macro_f1"] >= record["fp32_macro_f1"] - 0.005
    # the same check on OpenVINO's INT8 kernels, which decides where --backend auto runs the file
    assert record["openvino_admitted"] == (record["openvino_macro_f1"] >= record["fp32_macro_f1"] - 0.005)
    log = (run / "log.txt").read_text()
    check = re.search(r"INT8 decision check on (\S+) \(16 leaves\): macro-F1 FP32 ([0-9.]+), INT8 ([0-9.]+) at the "
                      r"file's thresholds; max \|prob difference\| INT8 vs FP32 ([0-9.e+-]+)", log)
    assert check and check.group(1) == str(int8_tree / "val") and 0 < float(check.group(4)) < 0.2
    assert float(check.group(2)) == pytest.approx(record["fp32_macro_f1"], abs=1e-4)
    if int8_info.thresholds_from:  # re-tuned: said so, and kept in the file
        assert "thresholds re-tuned on the INT8 validation probabilities raise its macro-F1" in log
        assert int8_info.thresholds != fp32_info.thresholds
    else:
        assert "would not raise its macro-F1" in log and int8_info.thresholds == fp32_info.thresholds


def test_int8_decision_check_refuses_a_model_beyond_the_tolerance(run, tmp_path, monkeypatch):
    """An impossible tolerance (INT8 must beat FP32 by 1): nothing written, exit 1, one error line naming the file."""
    monkeypatch.setattr(deploy.quantize, "F1_TOLERANCE", -1.0)
    output = tmp_path / "refused.onnx"
    assert export_script.main(["--checkpoint", str(run / "ckpt_best.pth"), "--int8", "--calib-images", "4",
                               "--calib-split", "val", "--output", str(output)]) == 1
    assert not output.exists() and not list(tmp_path.glob(".*.tmp"))
    errors = [line for line in (tmp_path / "log.txt").read_text().splitlines() if "ERROR" in line]
    assert len(errors) == 1
    assert re.search(rf"{re.escape(str(output))}: INT8 macro-F1 on validation [0-9.]+ is -?[0-9.]+ below FP32's "
                     r"[0-9.]+ \(tolerance -1.0\): nothing written", errors[0])


def test_decision_check_keeps_retuned_thresholds_only_when_they_help():
    """On made-up probabilities: INT8 shifted below the 0.5 thresholds loses F1 that re-tuning wins back."""
    targets = np.tile(np.eye(len(CLASSES), dtype=int), (4, 1))
    fp32 = np.where(targets, 0.8, 0.2)
    thresholds = np.full(len(CLASSES), 0.5)
    shifted = check_decisions(targets, fp32, fp32 - 0.35, thresholds)
    assert shifted.fp32_f1 == 1.0 and shifted.int8_f1 < 1.0 and shifted.keeps_retuned and shifted.f1 == 1.0
    assert (shifted.retuned < 0.45).all() and shifted.max_difference == pytest.approx(0.35)
    require_decisions(shifted, Path("m.onnx"))  # re-tuned, within the tolerance
    same = check_decisions(targets, fp32, fp32, thresholds)
    assert not same.keeps_retuned and same.f1 == same.fp32_f1 == 1.0
    worse = check_decisions(targets, fp32, np.where(targets, 0.2, 0.8), thresholds)
    with pytest.raises(DecisionError, match=r"m.onnx: INT8 macro-F1 on validation 0.[0-9]+ is 0.[0-9]+ below"):
        require_decisions(worse, Path("m.onnx"))


def test_thresholds_tuned_for_an_int8_file_win_over_the_runs(files, run, tmp_path):
    """A file whose thresholds were re-tuned for it (thresholds_from) gives them to test.py before thresholds.json."""
    own = (0.11, 0.22, 0.33, 0.44, 0.55, 0.66)
    info = dataclasses.replace(OnnxPredictor.from_file(files["int8"]).info, thresholds=own,
                               thresholds_from="tuned on the INT8 model's probabilities of val")
    retuned = run / "retuned.int8.onnx"
    retuned.write_bytes(deploy.quantize.with_metadata(files["int8"].read_bytes(), info_to_metadata(info)))
    logger = logging.getLogger("test_int8")
    predictor = load_predictor(retuned, "onnx", CPU, logger)
    assert tuple(resolve_thresholds(None, RunDir.of_checkpoint(retuned), predictor, logger)) == own
    fp32 = load_predictor(files["fp32"], "onnx", CPU, logger)  # the run's thresholds.json
    np.testing.assert_array_equal(resolve_thresholds(None, RunDir.of_checkpoint(files["fp32"]), fp32, logger),
                                  read_thresholds(run / "thresholds.json"))


def test_int8_export_of_an_ensemble_file(run, tmp_path):
    """An ensemble of two members with TTA inside, as one INT8 graph carrying the ensemble's metadata."""
    path = tmp_path / "ensemble.json"
    thresholds = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    Ensemble(path, (run / "ckpt_best.pth",) * 2, (1.0, 2.0), True, np.array(thresholds), "hand-made").write()
    assert export_script.main(["--checkpoint", str(path), "--int8", "--calib-images", "4"]) == 0
    info = OnnxPredictor.from_file(tmp_path / "ensemble.int8.onnx").info
    assert info.name == "ensemble of 2, TTA inside"
    assert info.thresholds == tuple(thresholds) or info.thresholds_from
    assert "INT8 decision check on" in (tmp_path / "log.txt").read_text()
    # the members are quantised; the ensemble's mean of probabilities and its logit stay in float (quantised, a
    # confident leaf's mean probability rounds to exactly 1 and its logit to infinity)
    assert export_script.main(["--checkpoint", str(path)]) == 0  # its FP32 graph, ensemble.onnx
    fp32, int8 = (onnx.load(tmp_path / name).graph for name in ("ensemble.onnx", "ensemble.int8.onnx"))
    tail = float_tail(onnx.load(tmp_path / "ensemble.onnx"))
    assert {"Sigmoid", "Clip"} <= {node.op_type for node in fp32.node if node.name in tail}
    assert not any(node.op_type in WEIGHT_OPS for node in fp32.node if node.name in tail)
    kept = [node for node in int8.node if node.name in tail]
    requantised = {name for node in int8.node if node.op_type == "QuantizeLinear" for name in node.input}
    assert len(kept) == len(tail) and not any(name in requantised for node in kept for name in node.output)
    assert any(node.op_type == "QuantizeLinear" for node in int8.node)  # the members are quantised


def scored(path: Path, backend: str, tree: Path, out: Path) -> tuple[pd.DataFrame, dict]:
    """test.py on the tree's test split: predictions.csv and metrics.json."""
    assert test_script.main(["--checkpoint", str(path), "--backend", backend, "--data-path", str(tree),
                             "--output", str(out), "--device", "cpu", "--num-workers", "0"]) == 0
    return pd.read_csv(out / "predictions.csv", keep_default_na=False), json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("kind, tolerance", [("fp32", 1e-4), ("int8", 0.05)])
def test_openvino_predicts_what_onnx_runtime_predicts(files, int8_tree, tmp_path, kind, tolerance):
    """The same file on both runtimes, test split: FP32 probabilities within 1e-4 (export's parity tolerance) and
    the same labels; INT8 within 0.05 (each runtime rounds its INT8 kernels its own way)."""
    (ort, ort_metrics), (ov, ov_metrics) = (scored(files[kind], backend, int8_tree, tmp_path / backend)
                                            for backend in ("onnx", "openvino"))
    assert len(ov) == 16 and ov_metrics["backend"] == "openvino" and ort_metrics["backend"] == "onnx"
    np.testing.assert_allclose(ov[list(CLASSES)], ort[list(CLASSES)], atol=tolerance, rtol=0)
    if kind == "fp32":
        assert ov["predicted"].tolist() == ort["predicted"].tolist()
        assert ov_metrics["metrics"]["macro"]["f1"] == ort_metrics["metrics"]["macro"]["f1"]


def test_openvino_backend_of_a_checkpoint_and_auto_says_what_it_picked(files, run, caplog):
    logger = logging.getLogger("test_int8")
    with caplog.at_level(logging.INFO, logger="test_int8"):
        exported = load_predictor(run / "ckpt_best.pth", "openvino", CPU, logger)
        auto = load_predictor(files["fp32"], "auto", CPU, logger)
    assert isinstance(exported, OpenVinoPredictor) and exported.backend == "openvino"
    assert exported.info == dataclasses.replace(auto.info, thresholds=None)  # the checkpoint has no thresholds
    assert auto.backend == "onnx" and "backend auto: ckpt_best.onnx on ONNX Runtime" in caplog.text
    with caplog.at_level(logging.INFO, logger="test_int8"):
        auto_int8 = load_predictor(files["int8"], "auto", CPU, logger)
    admitted = json.loads(props(files["int8"])["quantization"])["openvino_admitted"]
    assert auto_int8.backend == ("openvino" if admitted else "onnx")
    said = "ckpt_best.int8.onnx on OpenVINO (an INT8 file whose decisions were checked on it)" in caplog.text
    assert said == admitted
    assert re.search(r"INT8 on OpenVINO: macro-F1 [0-9.]+ on \S+ at the file's thresholds \((within|beyond) 0.005 of "
                     r"FP32's\): auto runs the file on (OpenVINO|ONNX Runtime)", (run / "log.txt").read_text())
    assert app_script.page_backend(run / "ckpt_best.pth", "auto") == "torch"  # Grad-CAM
    assert app_script.page_backend(files["fp32"], "auto") == "auto"
    assert app_script.page_backend(run / "ckpt_best.pth", "openvino") == "openvino"


def test_bad_onnx_file_on_openvino_is_a_one_line_error(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 not a protobuf model")
    result = subprocess.run([sys.executable, str(ROOT / "test.py"), "--checkpoint", str(garbage), "--backend",
                             "openvino", "--images", str(ROOT / "docs")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"{garbage}: not a readable ONNX model" in result.stderr


def test_an_int8_graph_that_crashes_openvinos_compiler_is_a_one_line_error_not_a_segfault():
    """OpenVINO 2026.4 segfaults compiling the demo Swin's QDQ graph; the backend compiles INT8 files in a
    child process first, so test.py and the web page report it and live on."""
    from config import get_config
    from deploy.onnx_export import export_checked, parity_images
    from deploy.quantize import quantize_int8, with_metadata
    from models import build_model

    config = get_config(argparse.Namespace(cfg=str(ROOT / "configs" / "demo_cpu.yaml"), opts=None))
    torch.manual_seed(0)
    predictor = Predictor(build_model(config).eval(), config, Path("demo_swin.pth"), torch.device("cpu"), None)
    fp32, _ = export_checked(predictor.model, predictor.info, predictor.path)
    int8 = quantize_int8(fp32, parity_images(predictor.info.preprocessing).numpy())
    data = with_metadata(int8, {**info_to_metadata(predictor.info), "quantization": json.dumps({"method": "static"})})
    with pytest.raises(ValueError, match=r"demo_swin\.int8\.onnx: OpenVINO .* crashed compiling this model "
                                         r"\(signal 11\); run it with --backend onnx"):
        OpenVinoPredictor.from_bytes(data, Path("demo_swin.int8.onnx"))
    assert OnnxPredictor.from_bytes(data, Path("demo_swin.int8.onnx")).model(parity_images(
        predictor.info.preprocessing)[:2]).shape == (2, len(CLASSES))  # ONNX Runtime runs it


def test_an_int8_file_that_failed_its_check_on_openvino_is_refused_there(files, tmp_path):
    """export.py records the OpenVINO check; a file that failed it runs on ONNX Runtime only."""
    metadata = props(files["int8"])
    record = {**json.loads(metadata["quantization"]), "openvino_admitted": False, "openvino_macro_f1": 0.5}
    data = deploy.quantize.with_metadata(files["int8"].read_bytes(), {**metadata, "quantization": json.dumps(record)})
    failed = tmp_path / "failed.int8.onnx"
    failed.write_bytes(data)
    with pytest.raises(ValueError, match=r"failed\.int8\.onnx: this INT8 file failed its decision check on OpenVINO "
                                         r"at export \(macro-F1 0\.5000 against FP32's [0-9.]+\); run it with "
                                         r"--backend onnx"):
        OpenVinoPredictor.from_file(failed)
    logger = logging.getLogger("test_int8")
    assert load_predictor(failed, "auto", CPU, logger).backend == "onnx"


def test_our_models_package_stays_ours_after_onnx_runtimes_quantisation_tools_load():
    """ONNX Runtime's quantisation tools append onnxruntime/transformers (which holds a ``models/``) to sys.path;
    deploy.quantize imports this project's ``models`` first, so no later import can pick up theirs."""
    code = ("import deploy.quantize, onnxruntime.quantization.shape_inference, models.ensemble, sys; "
            "print(models.__file__); print(sys.path[-1])")
    result = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=300)
    ours, appended = result.stdout.split()
    assert appended.endswith("onnxruntime/transformers") and ours == str(ROOT / "models" / "__init__.py")
