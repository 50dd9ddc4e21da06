"""Numbers that are not numbers never pass (issue 30): NaN/inf weights, logits and ensemble weights, thresholds out of
range from every source (checkpoint, ONNX metadata, ensemble.json, thresholds.json), hand-edited model files.
test.py, visual.py, export.py and app.py refuse each with one ``error: <file>: ...`` line and the documented exit
code (2: bad input; 1: a model whose finite weights compute non-finite logits), and write nothing.

Every bad file is made once from one tiny untrained Swin and its export. The wide table runs each script's ``main``
through ``utils.cli.run_cli`` in this process (the exit code and stderr a process would give, without a second of
start-up per row); a narrower table runs the scripts as real processes, one row per script and kind of failure."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from data.labels import CLASSES
from deploy.onnx_backend import info_to_metadata
from deploy.onnx_export import ParityError, check_parity
from deploy.quantize import DecisionCheck, DecisionError, require_decisions
from evaluation.inference import Predictor
from evaluation.thresholds import check_thresholds
from helpers import ROOT, draw_leaf, load_script, make_tree, run_script, save_run, tiny_swin_config
from models import build_model
from utils.cli import run_cli

NAN, INF = float("nan"), float("inf")
FIRST_WEIGHT = "backbone.patch_embed.proj.weight"  # the first tensor of the tiny Swin's state dict
# Finite weights whose logits overflow: features all exactly 1 (norm weight 0, bias 1), head weights near float32's
# largest, so every logit is a sum of 32 x 3e38 = inf whatever the order of the sum.
OVERFLOW = {"backbone.norm.weight": 0.0, "backbone.norm.bias": 1.0, "head.weight": 3e38}


# ---------------------------------------------------------------------------------------------
# Building the files
# ---------------------------------------------------------------------------------------------


def filled(state: dict, values: dict[str, float]) -> dict:
    """``state`` with each named tensor filled with its value."""
    return {name: tensor.clone().fill_(values[name]) if name in values else tensor for name, tensor in state.items()}


def edited_checkpoint(source: Path, target: Path, **changes: object) -> Path:
    """A copy of checkpoint ``source`` with some of its top-level keys replaced."""
    torch.save({**torch.load(source, weights_only=True), **changes}, target)
    return target


def edited_onnx(source: Path, target: Path, props: dict[str, str]) -> Path:
    """A copy of ``source`` with metadata values replaced or added, as a hand edit would leave them."""
    model = onnx.load(source)
    values = {prop.key: prop.value for prop in model.metadata_props} | props
    del model.metadata_props[:]
    helper.set_model_props(model, values)
    onnx.save(model, target)
    return target


def nan_initializer(source: Path, target: Path) -> Path:
    """A copy of ``source`` with one value of its first float weight NaN."""
    model = onnx.load(source)
    weight = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    array = numpy_helper.to_array(weight).copy()
    array.flat[0] = NAN
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(model, target)
    return target


def nan_output_onnx(source: Path, target: Path) -> Path:
    """A graph with finite weights and ``source``'s metadata whose logits are NaN for every image (the square root
    of a negative number): only the check of what a runtime computed can catch it."""
    float_ = onnx.TensorProto.FLOAT
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Concat", ["flat", "flat"], ["six"], axis=1),
             helper.make_node("Abs", ["six"], ["size"]),
             helper.make_node("Neg", ["size"], ["negative"]),
             helper.make_node("Sub", ["negative", "one"], ["below_zero"]),
             helper.make_node("Sqrt", ["below_zero"], ["logits"])]
    graph = helper.make_graph(nodes, "nan", [helper.make_tensor_value_info("images", float_, ["batch", 3, 64, 64])],
                              [helper.make_tensor_value_info("logits", float_, ["batch", len(CLASSES)])],
                              initializer=[numpy_helper.from_array(np.ones(1, np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {prop.key: prop.value for prop in onnx.load(source).metadata_props})
    onnx.save(model, target)
    return target


def per_class(value: object) -> str:
    """A thresholds map giving every class ``value``, as JSON text (NaN as Python writes it)."""
    return json.dumps(dict.fromkeys(CLASSES, value))


def ensemble_file(target: Path, member: Path, weight: str = "1.0", thresholds: str = "null") -> Path:
    """An ensemble.json of one member, written as text, so that NaN, Infinity and strings go in as a hand edit
    would put them."""
    target.write_text(f'{{"members": [{{"checkpoint": "{os.path.relpath(member, target.parent)}", '
                      f'"weight": {weight}}}], "tta": false, "thresholds": {thresholds}}}')
    return target


# ONNX metadata as a hand edit may leave it: (file, {key: JSON text}).
ONNX_EDITS = {
    "img_size_text.onnx": {"img_size": '"abc"'},
    "img_size_65.onnx": {"img_size": "65"},
    "interpolation.onnx": {"interpolation": '"cubic"'},
    "crop.onnx": {"crop": '"yes"'},
    "mean_text.onnx": {"mean": '["a", 0, 0]'},
    "std_zero.onnx": {"std": "[0, 0, 0]"},
    "std_nan.onnx": {"std": "[NaN, 1, 1]"},
    "quantization_junk.onnx": {"quantization": "junk"},
    "quantization_admitted.onnx": {"quantization": '{"openvino_admitted": "yes"}'},
    "thresholds_three.onnx": {"thresholds": "[0.5, 0.5, 0.5]"},
    "thresholds_text.onnx": {"thresholds": '"abc"'},
    "thresholds_negative.onnx": {"thresholds": json.dumps([-1.0] * len(CLASSES))},
    "thresholds_five.onnx": {"thresholds": json.dumps([5.0] * len(CLASSES))},
    "thresholds_nan.onnx": {"thresholds": json.dumps([NAN] * len(CLASSES))},
}
# thresholds.json files: (file, content).
THRESHOLD_FILES = {
    "negative.json": per_class(-1), "five.json": per_class(5), "nan.json": per_class(NAN), "list.json": "[0.5]",
    "text.json": '"abc"', "missing.json": '{"scab": 0.3}',
}
# ensemble.json files: (file, (weight, thresholds)).
ENSEMBLES = {
    "weight_nan.json": ("NaN", "null"), "weight_inf.json": ("Infinity", "null"), "weight_negative.json": ("-1", "null"),
    "weight_zero.json": ("0", "null"), "weight_heavy.json": ('"heavy"', "null"), "weight_true.json": ("true", "null"),
    "ensemble_thresholds_negative.json": ("1", per_class(-1)), "ensemble_thresholds_nan.json": ("1", per_class(NAN)),
    "ensemble_thresholds_missing.json": ("1", '{"scab": 0.3}'), "weight_two.json": ("2", per_class(0.4)),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every file of the tables by name: the good run (``good.pth``, ``good.onnx``), photos, and each bad file."""
    folder = tmp_path_factory.mktemp("nonfinite")
    tree = make_tree(folder / "tree", {"train": 4})
    torch.manual_seed(0)
    config = tiny_swin_config(folder / "runs", "good", tree)
    run = save_run(config, build_model(config).eval(), [0.5] * len(CLASSES))
    assert load_script("export.py").main(["--checkpoint", str(run / "ckpt_best.pth")]) == 0
    found = {"good.pth": run / "ckpt_best.pth", "good.onnx": run / "ckpt_best.onnx", "tree": tree,
             "photos": folder / "photos", "bad": folder / "bad"}
    found["photos"].mkdir()
    for index, labels in enumerate(("scab", "rust complex")):
        draw_leaf(labels, random.Random(index)).save(found["photos"] / f"leaf{index}.jpg")
    bad = found["bad"]
    bad.mkdir()
    state = torch.load(found["good.pth"], weights_only=True)["model"]
    for name, changes in {
        "nan_weights.pth": {"model": filled(state, {FIRST_WEIGHT: NAN})},
        "inf_weights.pth": {"model": filled(state, {FIRST_WEIGHT: -INF})},
        "overflow.pth": {"model": filled(state, OVERFLOW)},
        "thresholds_negative.pth": {"thresholds": [-1.0] * len(CLASSES)},
        "thresholds_five.pth": {"thresholds": [5.0] * len(CLASSES)},
        "thresholds_nan.pth": {"thresholds": [NAN] * len(CLASSES)},
        "thresholds_one.pth": {"thresholds": [0.5]},
        "config_not_yaml.pth": {"config": "{[ not: yaml"},
        "config_a_list.pth": {"config": "- a\n- b\n"},
    }.items():
        found[name] = edited_checkpoint(found["good.pth"], bad / name, **changes)
    found["not_a_checkpoint.pth"] = bad / "not_a_checkpoint.pth"
    found["not_a_checkpoint.pth"].write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/bin/sh\n")
    for name, props in ONNX_EDITS.items():
        found[name] = edited_onnx(found["good.onnx"], bad / name, props)
    found["nan_initializer.onnx"] = nan_initializer(found["good.onnx"], bad / "nan_initializer.onnx")
    found["nan_output.onnx"] = nan_output_onnx(found["good.onnx"], bad / "nan_output.onnx")
    for name, text in THRESHOLD_FILES.items():
        found[name] = bad / "thresholds" / name
        found[name].parent.mkdir(exist_ok=True)
        found[name].write_text(text)
    found["binary.json"] = bad / "thresholds" / "binary.json"
    found["binary.json"].write_bytes(bytes(range(256)))
    for name, (weight, thresholds) in ENSEMBLES.items():
        found[name] = ensemble_file(bad / name, found["good.pth"], weight, thresholds)
    found["nan_member.json"] = ensemble_file(bad / "nan_member.json", found["nan_weights.pth"])
    return found


# ---------------------------------------------------------------------------------------------
# Running a script and reading its refusal
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A script run on a model file (and maybe a thresholds file), and how it must end."""

    script: str  # test, visual, export, app
    model: str  # a key of ``files``
    code: int
    message: str  # a regex of the error line after "error: <file>: "
    thresholds: str = ""  # a key of ``files``: given as --thresholds
    backend: str = ""
    named: str = ""  # the file the error names (default: thresholds or model)

    def __str__(self) -> str:
        extra = "".join(f" {flag} {value}" for flag, value in (("--thresholds", self.thresholds),
                                                               ("--backend", self.backend)) if value)
        return f"{self.script}.py {self.model}{extra}"

    def argv(self, files: dict[str, Path], out: Path) -> list[str]:
        """The script's command line; whatever it writes goes under ``out``."""
        extra = [*(["--thresholds", str(files[self.thresholds])] if self.thresholds else []),
                 *(["--backend", self.backend] if self.backend else [])]
        common = ["--checkpoint", str(files[self.model]), *extra]
        return {
            "test": [*common, "--images", str(files["photos"]), "--output", str(out), "--device", "cpu",
                     "--num-workers", "0"],
            "visual": [*common, "--images", str(files["photos"]), "--output", str(out), "--device", "cpu"],
            "export": [*common, "--output", str(out / "model.onnx")],
            "app": [*common, "--device", "cpu", "--port", str(free_port())],
        }[self.script]

    def named_file(self, files: dict[str, Path]) -> Path:
        return files[self.named or self.thresholds or self.model]


def free_port() -> int:
    """A port nothing listens on now (app.py may check its port before loading the model)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def visible_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that stay on a terminal: each as left after its last carriage return, colours
    removed, blank lines and progress bars (tqdm clears them there, not in a pipe) dropped."""
    shown = (re.sub(r"\x1b\[[0-9;]*m", "", line.rsplit("\r", 1)[-1]).strip() for line in stderr.split("\n"))
    return [line for line in shown if line and not re.match(r"[\w ]+: +\d+%\|", line)]


def run_in_process(case: Case, files: dict[str, Path], out: Path, capsys) -> tuple[int, str]:
    """(exit code, stderr) of the script's ``main`` under ``utils.cli.run_cli``, as its process would end."""
    main = load_script(f"{case.script}.py").main
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        run_cli(lambda: main(case.argv(files, out)))
    return ended.value.code, capsys.readouterr().err


def assert_refused(case: Case, files: dict[str, Path], code: int, stderr: str, out: Path) -> None:
    """The case's exit code, one ``error: <file>: <message>`` line, and nothing written but the log."""
    lines = visible_lines(stderr)
    assert code == case.code, stderr
    assert len(lines) == 1, stderr
    prefix = f"error: {case.named_file(files)}: "
    assert lines[0].startswith(prefix) and re.search(case.message, lines[0][len(prefix):]), lines[0]
    written = {path.name for path in out.rglob("*") if path.is_file()} - {"log.txt"} if out.exists() else set()
    assert not written


# ---------------------------------------------------------------------------------------------
# The bad-input table, in this process
# ---------------------------------------------------------------------------------------------

WEIGHTS = r"\d+ non-finite values in its weights \(first: "
NOT_IN_RANGE = r"the threshold of complex is .*, not within \[0, 1\]"
ONE_PER_CLASS = r"thresholds must be one number per class \(6\)"
NOT_FINITE_LOGITS = r"the model computed non-finite logits \(NaN or inf\) for 2 of 2 images"

TABLE = [
    # checkpoints
    Case("test", "nan_weights.pth", 2, WEIGHTS + FIRST_WEIGHT),
    Case("test", "inf_weights.pth", 2, WEIGHTS + FIRST_WEIGHT),
    Case("visual", "inf_weights.pth", 2, WEIGHTS + FIRST_WEIGHT),
    Case("test", "overflow.pth", 1, NOT_FINITE_LOGITS),
    Case("test", "not_a_checkpoint.pth", 2, "not a readable PyTorch checkpoint"),
    Case("test", "config_not_yaml.pth", 2, "its config does not load here"),
    Case("test", "config_a_list.pth", 2, "its config does not load here"),
    Case("test", "thresholds_negative.pth", 2, NOT_IN_RANGE),
    Case("test", "thresholds_five.pth", 2, NOT_IN_RANGE),
    Case("test", "thresholds_nan.pth", 2, NOT_IN_RANGE),
    Case("test", "thresholds_one.pth", 2, ONE_PER_CLASS),
    Case("export", "thresholds_nan.pth", 2, NOT_IN_RANGE),
    # ONNX metadata and weights, on ONNX Runtime
    Case("test", "img_size_text.onnx", 2, "its metadata's img_size is 'abc', not an integer"),
    Case("test", "img_size_65.onnx", 2, "its metadata's img_size 65 does not fit its graph's input"),
    Case("test", "interpolation.onnx", 2, "its metadata's interpolation is 'cubic', not an interpolation"),
    Case("test", "crop.onnx", 2, "its metadata's crop is 'yes', not true or false"),
    Case("test", "mean_text.onnx", 2, "its metadata's mean is .*, not 3 finite numbers"),
    Case("test", "std_zero.onnx", 2, r"its metadata's std is \[0, 0, 0\], not 3 finite numbers above 0"),
    Case("test", "std_nan.onnx", 2, r"its metadata's std is \[nan, 1, 1\], not 3 finite numbers above 0"),
    Case("test", "quantization_junk.onnx", 2, "its metadata's quantization is 'junk', not a JSON object"),
    Case("test", "quantization_admitted.onnx", 2, "its metadata's quantization record has openvino_admitted 'yes'"),
    Case("test", "thresholds_three.onnx", 2, ONE_PER_CLASS),
    Case("test", "thresholds_text.onnx", 2, ONE_PER_CLASS + ", not 'abc'"),
    Case("test", "thresholds_negative.onnx", 2, NOT_IN_RANGE),
    Case("test", "thresholds_five.onnx", 2, NOT_IN_RANGE),
    Case("test", "thresholds_nan.onnx", 2, NOT_IN_RANGE),
    Case("test", "nan_initializer.onnx", 2, WEIGHTS),
    Case("test", "nan_output.onnx", 1, NOT_FINITE_LOGITS),
    # the same file on OpenVINO
    Case("test", "std_zero.onnx", 2, "its metadata's std is", backend="openvino"),
    Case("test", "quantization_junk.onnx", 2, "its metadata's quantization is 'junk'", backend="openvino"),
    Case("test", "img_size_65.onnx", 2, "its metadata's img_size 65 does not fit", backend="openvino"),
    Case("test", "nan_initializer.onnx", 2, WEIGHTS, backend="openvino"),
    Case("test", "nan_output.onnx", 1, NOT_FINITE_LOGITS, backend="openvino"),
    # ensemble files
    Case("test", "weight_nan.json", 2, "the weight of member 1 is nan, not a finite number above 0"),
    Case("test", "weight_inf.json", 2, "the weight of member 1 is inf, not a finite number above 0"),
    Case("test", "weight_negative.json", 2, "the weight of member 1 is -1, not a finite number above 0"),
    Case("test", "weight_zero.json", 2, "the weight of member 1 is 0, not a finite number above 0"),
    Case("test", "weight_heavy.json", 2, "the weight of member 1 is 'heavy', not a finite number above 0"),
    Case("test", "weight_true.json", 2, "the weight of member 1 is True, not a finite number above 0"),
    Case("visual", "weight_nan.json", 2, "the weight of member 1 is nan"),
    Case("test", "ensemble_thresholds_negative.json", 2, NOT_IN_RANGE),
    Case("test", "ensemble_thresholds_nan.json", 2, NOT_IN_RANGE),
    Case("test", "ensemble_thresholds_missing.json", 2, "thresholds must map exactly the classes"),
    Case("test", "nan_member.json", 2, WEIGHTS + FIRST_WEIGHT, named="nan_weights.pth"),
    # thresholds.json given with --thresholds
    *(Case("test", "good.pth", 2, message, thresholds=name) for name, message in (
        ("negative.json", NOT_IN_RANGE), ("five.json", NOT_IN_RANGE), ("nan.json", NOT_IN_RANGE),
        ("list.json", "thresholds must map exactly the classes"),
        ("text.json", "thresholds must map exactly the classes"),
        ("missing.json", "thresholds must map exactly the classes"),
        ("binary.json", "not a readable thresholds JSON"))),
    Case("visual", "good.pth", 2, NOT_IN_RANGE, thresholds="nan.json"),
    Case("export", "good.pth", 2, NOT_IN_RANGE, thresholds="negative.json"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", TABLE, ids=str)
def test_bad_input_is_refused_with_one_line(files, case, tmp_path, capsys):
    out = tmp_path / "out"
    code, stderr = run_in_process(case, files, out, capsys)
    assert_refused(case, files, code, stderr, out)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["good.pth", "good.onnx", "weight_two.json"])
def test_the_good_files_the_bad_ones_were_made_from_pass(files, model, tmp_path):
    """The refusals above come from what was edited, not from a setup that fails anyway."""
    out = tmp_path / "out"
    assert load_script("test.py").main(Case("test", model, 0, "").argv(files, out)) == 0
    assert (out / "submission.csv").is_file()


# ---------------------------------------------------------------------------------------------
# The same refusals from real processes: one row per script and kind of failure
# ---------------------------------------------------------------------------------------------

PROCESSES = [
    Case("test", "nan_weights.pth", 2, WEIGHTS + FIRST_WEIGHT),
    Case("visual", "nan_weights.pth", 2, WEIGHTS + FIRST_WEIGHT),
    Case("export", "nan_weights.pth", 2, WEIGHTS + FIRST_WEIGHT),
    Case("app", "nan_weights.pth", 2, WEIGHTS + FIRST_WEIGHT),
    Case("test", "overflow.pth", 1, NOT_FINITE_LOGITS),
    Case("visual", "overflow.pth", 1, r"non-finite logits or Grad-CAM maps \(NaN or inf\) for leaf0"),
    Case("export", "overflow.pth", 1, r"the model computed non-finite logits \(NaN or inf\) for 8 of 8 images"),
    Case("export", "weight_heavy.json", 2, "the weight of member 1 is 'heavy'"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", PROCESSES, ids=str)
def test_bad_input_is_refused_by_the_process(files, case, tmp_path):
    out = tmp_path / "out"
    result = run_script(case.argv(files, out), module=(f"{case.script}.py",))
    assert "Traceback" not in result.stderr
    assert_refused(case, files, result.returncode, result.stderr, out)


# ---------------------------------------------------------------------------------------------
# export.py: inputs of --int8 checked first, no absolute path in the file
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("tree", ["missing", "without val"])
def test_int8_checks_its_data_before_the_fp32_export(files, tmp_path, capsys, tree):
    """A missing tree, or one without the validation split the decision check needs: exit 2 naming it, before
    any export work (the log never says it is exporting)."""
    data_path = tmp_path / "missing" if tree == "missing" else files["tree"]  # the tree has a train split only
    out = tmp_path / "out"
    argv = ["--checkpoint", str(files["good.pth"]), "--int8", "--data-path", str(data_path), "--output",
            str(out / "model.int8.onnx")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as ended:
        run_cli(lambda: load_script("export.py").main(argv))
    captured = capsys.readouterr()
    assert ended.value.code == 2 and visible_lines(captured.err)[0].startswith(f"error: {data_path}"), captured.err
    assert "exporting" not in captured.out and not (out / "model.int8.onnx").exists()


@pytest.mark.slow
def test_exported_file_holds_no_absolute_path(files):
    """Neither the training tree's absolute path nor this machine's source or environment folders (the
    exporter's stack traces) end up in the file; a relative data path stays (test.py's default)."""
    data = files["good.onnx"].read_bytes()
    for folder in (files["tree"], ROOT, Path(torch.__file__).parent):
        assert str(folder).encode() not in data
    props = {prop.key for prop in onnx.load(files["good.onnx"]).metadata_props}
    assert "data_path" not in props and "img_size" in props
    info = Predictor.from_checkpoint(files["good.pth"], torch.device("cpu")).info
    assert json.loads(info_to_metadata(dataclasses.replace(info, data_path="dataset"))["data_path"]) == "dataset"


# ---------------------------------------------------------------------------------------------
# The checks themselves
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, message", [
    ([0.5] * 5, ONE_PER_CLASS), ("abc", ONE_PER_CLASS + ", not 'abc'"), (None, ONE_PER_CLASS + ", not None"),
    ([0.5] * 5 + ["x"], "the threshold of scab is 'x', not a number"),
    ([0.5] * 5 + [True], "the threshold of scab is True, not a number"),
    ([-0.01] + [0.5] * 5, r"the threshold of complex is -0.01, not within \[0, 1\]"),
    ([0.5] * 5 + [1.5], r"the threshold of scab is 1.5, not within \[0, 1\]"),
    ([0.5] * 5 + [NAN], r"the threshold of scab is nan, not within \[0, 1\]"),
    ([0.5] * 5 + [INF], r"the threshold of scab is inf, not within \[0, 1\]"),
    ({"scab": 0.5}, "thresholds must map exactly the classes"),
])
def test_one_validator_refuses_every_bad_thresholds(values, message):
    with pytest.raises(ValueError, match=rf"^somewhere\.json: {message}"):
        check_thresholds(values, Path("somewhere.json"))


def test_one_validator_takes_a_map_or_a_list_in_class_order():
    values = [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]
    np.testing.assert_array_equal(check_thresholds(dict(zip(CLASSES[::-1], values[::-1])), "x"), values)
    np.testing.assert_array_equal(check_thresholds(np.array(values), "x"), values)


@pytest.mark.parametrize("difference", [NAN, 2e-4])
def test_parity_check_fails_on_nan_as_on_a_large_difference(difference):
    """``difference > tolerance`` is false for NaN: the check must not be written that way."""
    with pytest.raises(ParityError, match=r"^model\.pth: ONNX Runtime differs from PyTorch by"):
        check_parity(difference, Path("model.pth"))
    check_parity(5e-5, Path("model.pth"))


@pytest.mark.parametrize("fp32_f1, int8_f1, difference", [(0.8, NAN, 0.01), (NAN, 0.8, 0.01), (0.8, 0.8, NAN)])
def test_int8_decision_check_fails_on_nan(fp32_f1, int8_f1, difference):
    check = DecisionCheck(fp32_f1, int8_f1, int8_f1, np.full(len(CLASSES), 0.5), difference, 16)
    with pytest.raises(DecisionError, match=r"^m\.int8\.onnx: the INT8 decision check measured non-finite numbers"):
        require_decisions(check, Path("m.int8.onnx"))
    require_decisions(DecisionCheck(0.8, 0.8, 0.8, np.full(len(CLASSES), 0.5), 0.01, 16), Path("m.int8.onnx"))
